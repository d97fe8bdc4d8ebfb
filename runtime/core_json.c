/* core_json.c: a JSON text writer (for metrics lines and checkpoint headers)
 * and UTF-8 validation. */
#include "moert_core.h"

#include <inttypes.h>
#include <locale.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- UTF-8 ------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (1 to 4), 0 when s[0..len) does not
 * start with one (bad lead byte, truncated, overlong, surrogate, > U+10FFFF). */
static size_t utf8_sequence(const unsigned char *s, size_t len)
{
	unsigned char c = s[0];
	size_t n;
	uint32_t cp, min;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF) {
		n = 2; cp = c & 0x1F; min = 0x80;
	} else if (c >= 0xE0 && c <= 0xEF) {
		n = 3; cp = c & 0x0F; min = 0x800;
	} else if (c >= 0xF0 && c <= 0xF4) {
		n = 4; cp = c & 0x07; min = 0x10000;
	} else {
		return 0;
	}
	if (len < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3F);
	}
	if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return n;
}

bool moert_utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;

	while (len > 0) {
		size_t n = utf8_sequence(p, len);
		if (n == 0)
			return false;
		p += n;
		len -= n;
	}
	return true;
}

/* ---- buffer ------------------------------------------------------------ */

void moert_jw_init(moert_jw *j)
{
	memset(j, 0, sizeof *j);
}

void moert_jw_free(moert_jw *j)
{
	free(j->buf);
	moert_jw_init(j);
}

void moert_jw_reset(moert_jw *j)
{
	char *buf = j->buf;
	size_t cap = j->cap;

	moert_jw_init(j);
	j->buf = buf;
	j->cap = cap;
	if (buf)
		buf[0] = '\0';
}

const char *moert_jw_error(const moert_jw *j)
{
	return j->error;
}

static void fail(moert_jw *j, const char *why)
{
	if (!j->error)
		j->error = why;
}

static void append(moert_jw *j, const char *s, size_t n)
{
	if (j->error)
		return;
	if (n >= j->cap - j->len || !j->buf) {
		size_t cap = j->cap ? j->cap : 256;
		while (cap - j->len <= n) {
			if (cap > SIZE_MAX / 2) {
				fail(j, "JSON writer: out of memory");
				return;
			}
			cap *= 2;
		}
		char *buf = realloc(j->buf, cap);
		if (!buf) {
			fail(j, "JSON writer: out of memory");
			return;
		}
		j->buf = buf;
		j->cap = cap;
	}
	memcpy(j->buf + j->len, s, n);
	j->len += n;
	j->buf[j->len] = '\0';
}

static void append_str(moert_jw *j, const char *s)
{
	append(j, s, strlen(s));
}

static void append_escaped(moert_jw *j, const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, run = 0; /* p[run..i) is pending verbatim output */

	append(j, "\"", 1);
	while (i < len) {
		unsigned char c = p[i];
		const char *esc = NULL;
		char hex[8];
		size_t n = 1;

		if (c == '"')
			esc = "\\\"";
		else if (c == '\\')
			esc = "\\\\";
		else if (c == '\n')
			esc = "\\n";
		else if (c == '\r')
			esc = "\\r";
		else if (c == '\t')
			esc = "\\t";
		else if (c == '\b')
			esc = "\\b";
		else if (c == '\f')
			esc = "\\f";
		else if (c < 0x20) {
			snprintf(hex, sizeof hex, "\\u%04x", c);
			esc = hex;
		} else if (c >= 0x80) {
			n = utf8_sequence(p + i, len - i);
			if (n == 0) {
				esc = "\\ufffd";
				n = 1;
			}
		}
		if (esc) {
			append(j, (const char *)p + run, i - run);
			append_str(j, esc);
			run = i + n;
		}
		i += n;
	}
	append(j, (const char *)p + run, len - run);
	append(j, "\"", 1);
}

/* ---- structure --------------------------------------------------------- */

/* Writes the comma and key that go before a value at the current level. */
static bool prefix(moert_jw *j, const char *key)
{
	int d = j->depth;

	if (j->error)
		return false;
	if (d < 0 || d >= MOERT_JW_MAX_DEPTH) {
		fail(j, "JSON writer: corrupted state");
		return false;
	}
	if (d == 0) {
		if (j->has_items[0]) {
			fail(j, "JSON writer: a second value at the top level");
			return false;
		}
		if (key) {
			fail(j, "JSON writer: a key given at the top level");
			return false;
		}
	} else if (j->in_array[d] && key) {
		fail(j, "JSON writer: a key given inside an array");
		return false;
	} else if (!j->in_array[d] && !key) {
		fail(j, "JSON writer: a value without a key inside an object");
		return false;
	}
	if (d > 0 && j->has_items[d])
		append(j, ",", 1);
	j->has_items[d] = 1;
	if (key) {
		append_escaped(j, key, strlen(key));
		append(j, ":", 1);
	}
	return !j->error;
}

static void open_level(moert_jw *j, const char *key, bool array)
{
	if (!prefix(j, key))
		return;
	if (j->depth + 1 >= MOERT_JW_MAX_DEPTH) {
		fail(j, "JSON writer: nested too deep");
		return;
	}
	append(j, array ? "[" : "{", 1);
	j->depth++;
	j->in_array[j->depth] = array;
	j->has_items[j->depth] = 0;
}

static void close_level(moert_jw *j, bool array)
{
	if (j->error)
		return;
	if (j->depth <= 0 || j->depth >= MOERT_JW_MAX_DEPTH ||
	    j->in_array[j->depth] != array) {
		fail(j, array ? "JSON writer: array_end without an open array"
			      : "JSON writer: object_end without an open object");
		return;
	}
	append(j, array ? "]" : "}", 1);
	j->depth--;
}

void moert_jw_object_begin(moert_jw *j, const char *key)
{
	open_level(j, key, false);
}

void moert_jw_object_end(moert_jw *j)
{
	close_level(j, false);
}

void moert_jw_array_begin(moert_jw *j, const char *key)
{
	open_level(j, key, true);
}

void moert_jw_array_end(moert_jw *j)
{
	close_level(j, true);
}

/* ---- values ------------------------------------------------------------ */

/* printf writes the locale's decimal point; JSON wants '.'. */
static void fix_decimal_point(char *s)
{
	const char *dp = localeconv()->decimal_point;

	if (!dp || (dp[0] == '.' && dp[1] == '\0') || dp[0] == '\0')
		return;
	for (char *p = s; *p; p++)
		if (*p == dp[0])
			*p = '.';
}

static void append_double(moert_jw *j, double v)
{
	char buf[40];

	if (!isfinite(v)) {
		append_str(j, "null");
		return;
	}
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(buf, sizeof buf, "%.*g", prec, v);
		if (strtod(buf, NULL) == v)
			break;
	}
	fix_decimal_point(buf);
	append_str(j, buf);
}

static void append_float(moert_jw *j, float v)
{
	char buf[40];

	if (!isfinite(v)) {
		append_str(j, "null");
		return;
	}
	for (int prec = 6; prec <= 9; prec++) {
		snprintf(buf, sizeof buf, "%.*g", prec, (double)v);
		if (strtof(buf, NULL) == v)
			break;
	}
	fix_decimal_point(buf);
	append_str(j, buf);
}

static void append_int(moert_jw *j, int64_t v)
{
	char buf[24];

	snprintf(buf, sizeof buf, "%" PRId64, v);
	append_str(j, buf);
}

void moert_jw_null(moert_jw *j, const char *key)
{
	if (prefix(j, key))
		append_str(j, "null");
}

void moert_jw_bool(moert_jw *j, const char *key, bool v)
{
	if (prefix(j, key))
		append_str(j, v ? "true" : "false");
}

void moert_jw_int(moert_jw *j, const char *key, int64_t v)
{
	if (prefix(j, key))
		append_int(j, v);
}

void moert_jw_uint(moert_jw *j, const char *key, uint64_t v)
{
	char buf[24];

	if (!prefix(j, key))
		return;
	snprintf(buf, sizeof buf, "%" PRIu64, v);
	append_str(j, buf);
}

void moert_jw_double(moert_jw *j, const char *key, double v)
{
	if (prefix(j, key))
		append_double(j, v);
}

void moert_jw_float(moert_jw *j, const char *key, float v)
{
	if (prefix(j, key))
		append_float(j, v);
}

void moert_jw_string_len(moert_jw *j, const char *key, const char *s,
			 size_t len)
{
	if (!prefix(j, key))
		return;
	if (!s)
		append_str(j, "null");
	else
		append_escaped(j, s, len);
}

void moert_jw_string(moert_jw *j, const char *key, const char *s)
{
	moert_jw_string_len(j, key, s, s ? strlen(s) : 0);
}

void moert_jw_doubles(moert_jw *j, const char *key, const double *v, size_t n)
{
	moert_jw_array_begin(j, key);
	for (size_t i = 0; i < n; i++)
		moert_jw_double(j, NULL, v[i]);
	moert_jw_array_end(j);
}

void moert_jw_floats(moert_jw *j, const char *key, const float *v, size_t n)
{
	moert_jw_array_begin(j, key);
	for (size_t i = 0; i < n; i++)
		moert_jw_float(j, NULL, v[i]);
	moert_jw_array_end(j);
}

void moert_jw_ints(moert_jw *j, const char *key, const int64_t *v, size_t n)
{
	moert_jw_array_begin(j, key);
	for (size_t i = 0; i < n; i++)
		moert_jw_int(j, NULL, v[i]);
	moert_jw_array_end(j);
}

void moert_jw_i32s(moert_jw *j, const char *key, const int32_t *v, size_t n)
{
	moert_jw_array_begin(j, key);
	for (size_t i = 0; i < n; i++)
		moert_jw_int(j, NULL, v[i]);
	moert_jw_array_end(j);
}

void moert_jw_int_matrix(moert_jw *j, const char *key, const int64_t *v,
			 size_t rows, size_t cols)
{
	moert_jw_array_begin(j, key);
	for (size_t r = 0; r < rows; r++)
		moert_jw_ints(j, NULL, v + r * cols, cols);
	moert_jw_array_end(j);
}
