/* core_ckpt.c: checkpoints as safetensors files.
 *
 * File = u64 little-endian header length N | N bytes of JSON, space-padded to
 * a multiple of 8 | tensor bytes. The writer is atomic (temporary file, fsync,
 * rename, fsync of the directory); the reader trusts nothing: it parses the
 * header with a strict parser for exactly the JSON a safetensors header may
 * hold, checks that the tensors tile the data, and verifies the CRC-32C that
 * our writer stores in the metadata. */
#include "moert_core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CRC_KEY "moert.crc32c"
#define META_KEY "__metadata__"

/* ---- dtypes -------------------------------------------------------------- */

static const struct {
	const char *name;
	size_t size;
} dtype_table[MOERT_DTYPE_COUNT] = {
	[MOERT_DTYPE_BOOL] = {"BOOL", 1}, [MOERT_DTYPE_U8] = {"U8", 1},
	[MOERT_DTYPE_I8] = {"I8", 1},     [MOERT_DTYPE_U16] = {"U16", 2},
	[MOERT_DTYPE_I16] = {"I16", 2},   [MOERT_DTYPE_F16] = {"F16", 2},
	[MOERT_DTYPE_BF16] = {"BF16", 2}, [MOERT_DTYPE_U32] = {"U32", 4},
	[MOERT_DTYPE_I32] = {"I32", 4},   [MOERT_DTYPE_F32] = {"F32", 4},
	[MOERT_DTYPE_U64] = {"U64", 8},   [MOERT_DTYPE_I64] = {"I64", 8},
	[MOERT_DTYPE_F64] = {"F64", 8},
};

static bool dtype_ok(moert_dtype d)
{
	return (unsigned)d < MOERT_DTYPE_COUNT;
}

const char *moert_dtype_name(moert_dtype dtype)
{
	return dtype_ok(dtype) ? dtype_table[dtype].name : "?";
}

size_t moert_dtype_size(moert_dtype dtype)
{
	return dtype_ok(dtype) ? dtype_table[dtype].size : 0;
}

int moert_dtype_parse(const char *name, moert_dtype *dtype)
{
	for (int d = 0; d < MOERT_DTYPE_COUNT; d++) {
		if (strcmp(name, dtype_table[d].name) == 0) {
			*dtype = (moert_dtype)d;
			return 0;
		}
	}
	return -1;
}

uint16_t moert_bf16_from_f32(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof u);
	if ((u & 0x7FFFFFFFu) > 0x7F800000u) /* NaN: keep it quiet and NaN */
		return (uint16_t)((u >> 16) | 0x40);
	u += 0x7FFFu + ((u >> 16) & 1); /* round to nearest even */
	return (uint16_t)(u >> 16);
}

float moert_bf16_to_f32(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;

	memcpy(&f, &u, sizeof f);
	return f;
}

static bool host_is_little_endian(void)
{
	const uint16_t one = 1;
	unsigned char first;

	memcpy(&first, &one, 1);
	return first == 1;
}

/* "[2, 3]" into buf. */
static void format_shape(char *buf, size_t size, int ndim,
			 const int64_t *shape)
{
	size_t used = 0;

	used += (size_t)snprintf(buf, size, "[");
	for (int i = 0; i < ndim && used < size; i++)
		used += (size_t)snprintf(buf + used, size - used,
					 "%s%" PRId64, i ? ", " : "", shape[i]);
	if (used < size)
		snprintf(buf + used, size - used, "]");
}

/* Elements * element size, or -1 on overflow or a negative dimension. */
static int tensor_bytes(moert_dtype dtype, int ndim, const int64_t *shape,
			uint64_t *bytes)
{
	uint64_t n = moert_dtype_size(dtype);

	for (int i = 0; i < ndim; i++) {
		if (shape[i] < 0)
			return -1;
		if (shape[i] != 0 && n > UINT64_MAX / (uint64_t)shape[i])
			return -1;
		n *= (uint64_t)shape[i];
	}
	*bytes = n;
	return 0;
}

/* ---- CRC-32C (Castagnoli) ------------------------------------------------ */

typedef struct crc32c {
	uint32_t table[8][256];
	uint32_t crc;
	bool hw;
} crc32c;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_CRC32C_HW 1
__attribute__((target("sse4.2"))) static uint32_t
crc32c_hw(uint32_t crc, const unsigned char *p, size_t n)
{
	uint64_t c = crc;

	for (; n >= 8; n -= 8, p += 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		c = __builtin_ia32_crc32di(c, w);
	}
	crc = (uint32_t)c;
	for (; n > 0; n--, p++)
		crc = __builtin_ia32_crc32qi(crc, *p);
	return crc;
}
#endif

static void crc32c_init(crc32c *c)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t v = i;
		for (int k = 0; k < 8; k++)
			v = (v & 1) ? (v >> 1) ^ 0x82F63B78u : v >> 1;
		c->table[0][i] = v;
	}
	for (int t = 1; t < 8; t++)
		for (int i = 0; i < 256; i++)
			c->table[t][i] = (c->table[t - 1][i] >> 8) ^
					 c->table[0][c->table[t - 1][i] & 0xFF];
	c->crc = 0xFFFFFFFFu;
#ifdef HAVE_CRC32C_HW
	c->hw = __builtin_cpu_supports("sse4.2");
#else
	c->hw = false;
#endif
}

static void crc32c_update(crc32c *c, const void *data, size_t n)
{
	const unsigned char *p = data;
	uint32_t crc = c->crc;

#ifdef HAVE_CRC32C_HW
	if (c->hw) {
		c->crc = crc32c_hw(crc, p, n);
		return;
	}
#endif
	/* Slice-by-8 (the words are read little-endian). */
	for (; n >= 8; n -= 8, p += 8) {
		uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 |
				     (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
		crc = c->table[7][lo & 0xFF] ^ c->table[6][(lo >> 8) & 0xFF] ^
		      c->table[5][(lo >> 16) & 0xFF] ^ c->table[4][lo >> 24] ^
		      c->table[3][p[4]] ^ c->table[2][p[5]] ^
		      c->table[1][p[6]] ^ c->table[0][p[7]];
	}
	for (; n > 0; n--, p++)
		crc = c->table[0][(crc ^ *p) & 0xFF] ^ (crc >> 8);
	c->crc = crc;
}

static uint32_t crc32c_value(const crc32c *c)
{
	return ~c->crc;
}

/* ---- writer -------------------------------------------------------------- */

typedef struct wtensor {
	char *name;
	moert_dtype dtype;
	int ndim;
	int64_t shape[MOERT_CKPT_MAX_NDIM];
	const void *data;
	uint64_t bytes;
} wtensor;

typedef struct meta_entry {
	char *key;
	char *value;
} meta_entry;

struct moert_ckpt_writer {
	char *path;
	wtensor *tensors;
	size_t n_tensors, cap_tensors;
	meta_entry *meta;
	size_t n_meta, cap_meta;
	bool failed;
	moert_error err; /* the first problem, when failed */
};

moert_ckpt_writer *moert_ckpt_begin(const char *path, moert_error *err)
{
	moert_ckpt_writer *w;

	if (!path || !*path) {
		moert_error_set(err, "checkpoint: empty path");
		return NULL;
	}
	if (!host_is_little_endian()) {
		moert_error_set(err, "%s: checkpoints need a little-endian host",
				path);
		return NULL;
	}
	w = calloc(1, sizeof *w);
	if (!w || !(w->path = strdup(path))) {
		free(w);
		moert_error_set(err, "%s: out of memory", path);
		return NULL;
	}
	return w;
}

static int writer_fail(moert_ckpt_writer *w, const char *what,
		       const char *name)
{
	if (!w->failed) {
		w->failed = true;
		moert_error_set(&w->err, "%s: %s '%s'", w->path, what, name);
	}
	return -1;
}

int moert_ckpt_add(moert_ckpt_writer *w, const char *name, moert_dtype dtype,
		   int ndim, const int64_t *shape, const void *data)
{
	wtensor *t;
	uint64_t bytes;

	if (!w)
		return -1;
	if (!name || !*name)
		return writer_fail(w, "tensor with an empty name", "");
	if (!moert_utf8_valid(name, strlen(name)))
		return writer_fail(w, "tensor name is not valid UTF-8:", name);
	if (strcmp(name, META_KEY) == 0)
		return writer_fail(w, "reserved tensor name", name);
	if (!dtype_ok(dtype))
		return writer_fail(w, "bad dtype for tensor", name);
	if (ndim < 0 || ndim > MOERT_CKPT_MAX_NDIM || (ndim > 0 && !shape))
		return writer_fail(w, "bad number of dimensions for tensor",
				   name);
	if (tensor_bytes(dtype, ndim, shape, &bytes) != 0 ||
	    bytes > (uint64_t)SIZE_MAX)
		return writer_fail(w, "negative or oversized shape for tensor",
				   name);
	if (bytes > 0 && !data)
		return writer_fail(w, "no data for tensor", name);
	if (w->n_tensors == w->cap_tensors) {
		size_t cap = w->cap_tensors ? 2 * w->cap_tensors : 16;
		wtensor *grown = realloc(w->tensors, cap * sizeof *grown);
		if (!grown)
			return writer_fail(w, "out of memory adding tensor",
					   name);
		w->tensors = grown;
		w->cap_tensors = cap;
	}
	t = &w->tensors[w->n_tensors];
	memset(t, 0, sizeof *t);
	if (!(t->name = strdup(name)))
		return writer_fail(w, "out of memory adding tensor", name);
	t->dtype = dtype;
	t->ndim = ndim;
	for (int i = 0; i < ndim; i++)
		t->shape[i] = shape[i];
	t->data = data;
	t->bytes = bytes;
	w->n_tensors++;
	return 0;
}

int moert_ckpt_meta(moert_ckpt_writer *w, const char *key, const char *value)
{
	meta_entry *m;

	if (!w)
		return -1;
	if (!key || !value)
		return writer_fail(w, "NULL metadata key or value for",
				   key ? key : "(null)");
	if (!moert_utf8_valid(key, strlen(key)) ||
	    !moert_utf8_valid(value, strlen(value)))
		return writer_fail(w, "metadata is not valid UTF-8:", key);
	if (strcmp(key, CRC_KEY) == 0)
		return writer_fail(w, "reserved metadata key", key);
	for (size_t i = 0; i < w->n_meta; i++)
		if (strcmp(w->meta[i].key, key) == 0)
			return writer_fail(w, "duplicate metadata key", key);
	if (w->n_meta == w->cap_meta) {
		size_t cap = w->cap_meta ? 2 * w->cap_meta : 8;
		meta_entry *grown = realloc(w->meta, cap * sizeof *grown);
		if (!grown)
			return writer_fail(w, "out of memory adding metadata",
					   key);
		w->meta = grown;
		w->cap_meta = cap;
	}
	m = &w->meta[w->n_meta];
	m->key = strdup(key);
	m->value = strdup(value);
	if (!m->key || !m->value) {
		free(m->key);
		free(m->value);
		return writer_fail(w, "out of memory adding metadata", key);
	}
	w->n_meta++;
	return 0;
}

void moert_ckpt_abort(moert_ckpt_writer *w)
{
	if (!w)
		return;
	for (size_t i = 0; i < w->n_tensors; i++)
		free(w->tensors[i].name);
	for (size_t i = 0; i < w->n_meta; i++) {
		free(w->meta[i].key);
		free(w->meta[i].value);
	}
	free(w->tensors);
	free(w->meta);
	free(w->path);
	free(w);
}

static int cmp_wtensor_name(const void *a, const void *b)
{
	const wtensor *const *x = a, *const *y = b;

	return strcmp((*x)->name, (*y)->name);
}

/* The header JSON (unpadded). *crc_at is the offset of the 8 hex digits of
 * the checksum, filled in once the data is written. */
static int build_header(moert_ckpt_writer *w, moert_jw *j, size_t *crc_at,
			moert_error *err)
{
	uint64_t offset = 0;

	moert_jw_object_begin(j, NULL);
	moert_jw_object_begin(j, META_KEY);
	for (size_t i = 0; i < w->n_meta; i++)
		moert_jw_string(j, w->meta[i].key, w->meta[i].value);
	moert_jw_string(j, CRC_KEY, "00000000");
	*crc_at = j->len - 9;
	moert_jw_object_end(j);
	for (size_t i = 0; i < w->n_tensors; i++) {
		const wtensor *t = &w->tensors[i];
		moert_jw_object_begin(j, t->name);
		moert_jw_string(j, "dtype", moert_dtype_name(t->dtype));
		moert_jw_ints(j, "shape", t->shape, (size_t)t->ndim);
		moert_jw_array_begin(j, "data_offsets");
		moert_jw_uint(j, NULL, offset);
		moert_jw_uint(j, NULL, offset + t->bytes);
		moert_jw_array_end(j);
		moert_jw_object_end(j);
		offset += t->bytes;
	}
	moert_jw_object_end(j);
	if (moert_jw_error(j)) {
		moert_error_set(err, "%s: %s", w->path, moert_jw_error(j));
		return -1;
	}
	return 0;
}

/* Writes all of buf; -1 with errno set on failure. */
static int write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;

	while (n > 0) {
		ssize_t k = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -1;
		if (k == 0) {
			errno = EIO;
			return -1;
		}
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

/* fsync the directory holding path, so that the rename is durable.
 * Filesystems that cannot sync directories (EINVAL) are not an error. */
static int sync_parent_dir(const char *path)
{
	const char *slash = strrchr(path, '/');
	char *dir;
	int fd, rc = 0;

	if (!slash)
		dir = strdup(".");
	else if (slash == path)
		dir = strdup("/");
	else
		dir = strndup(path, (size_t)(slash - path));
	if (!dir) {
		errno = ENOMEM;
		return -1;
	}
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(dir);
	if (fd < 0)
		return -1;
	if (fsync(fd) != 0 && errno != EINVAL)
		rc = -1;
	if (close(fd) != 0 && rc == 0 && errno != EINTR)
		rc = -1;
	return rc;
}

int moert_ckpt_finish(moert_ckpt_writer *w, moert_error *err)
{
	moert_jw j;
	size_t crc_at = 0;
	char *tmp = NULL;
	char len_le[8], hex[9], spaces[8] = "       ";
	size_t hlen, pad;
	ssize_t k;
	const char *what = NULL; /* the step that failed */
	int fd = -1, e = 0, rc = -1;
	crc32c *crc = NULL;
	wtensor **sorted = NULL;

	if (!w) {
		moert_error_set(err, "checkpoint: no writer (moert_ckpt_begin "
				"failed)");
		return -1;
	}
	moert_jw_init(&j);
	if (w->failed) {
		moert_error_set(err, "%s", w->err.msg);
		goto done;
	}
	/* Duplicate names: sort pointers to the tensors by name. */
	sorted = malloc((w->n_tensors + 1) * sizeof *sorted);
	crc = malloc(sizeof *crc);
	if (!sorted || !crc) {
		moert_error_set(err, "%s: out of memory", w->path);
		goto done;
	}
	for (size_t i = 0; i < w->n_tensors; i++)
		sorted[i] = &w->tensors[i];
	qsort(sorted, w->n_tensors, sizeof *sorted, cmp_wtensor_name);
	for (size_t i = 1; i < w->n_tensors; i++) {
		if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0) {
			moert_error_set(err, "%s: duplicate tensor name '%s'",
					w->path, sorted[i]->name);
			goto done;
		}
	}
	if (build_header(w, &j, &crc_at, err) != 0)
		goto done;

	tmp = malloc(strlen(w->path) + 32);
	if (!tmp) {
		moert_error_set(err, "%s: out of memory", w->path);
		goto done;
	}
	sprintf(tmp, "%s.tmp.%ld", w->path, (long)getpid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
	if (fd < 0) {
		e = errno;
		moert_error_set(err, "%s: cannot create temporary file %s (%s)",
				w->path, tmp, strerror(e));
		goto done;
	}
	/* The header is padded with spaces so that the data starts at a
	 * multiple of 8 bytes. */
	pad = (8 - j.len % 8) % 8;
	hlen = j.len + pad;
	for (int i = 0; i < 8; i++)
		len_le[i] = (char)((uint64_t)hlen >> (8 * i));
	what = "write";
	if (write_all(fd, len_le, 8) != 0 || write_all(fd, j.buf, j.len) != 0 ||
	    write_all(fd, spaces, pad) != 0)
		goto io_error;
	crc32c_init(crc);
	for (size_t i = 0; i < w->n_tensors; i++) {
		const wtensor *t = &w->tensors[i];
		if (t->bytes == 0)
			continue;
		crc32c_update(crc, t->data, (size_t)t->bytes);
		if (write_all(fd, t->data, (size_t)t->bytes) != 0)
			goto io_error;
	}
	snprintf(hex, sizeof hex, "%08" PRIx32, crc32c_value(crc));
	k = pwrite(fd, hex, 8, (off_t)(8 + crc_at));
	if (k != 8) {
		if (k >= 0)
			errno = EIO;
		goto io_error;
	}
	what = "fsync";
	if (fsync(fd) != 0)
		goto io_error;
	what = "close";
	if (close(fd) != 0) {
		fd = -1;
		goto io_error;
	}
	fd = -1;
	what = "rename temporary file";
	if (rename(tmp, w->path) != 0)
		goto io_error;
	free(tmp);
	tmp = NULL; /* it is the checkpoint now */
	what = "fsync directory";
	if (sync_parent_dir(w->path) != 0)
		goto io_error;
	rc = 0;
	goto done;

io_error:
	e = errno;
	moert_error_set(err, "%s: %s failed (%s)", w->path, what, strerror(e));
done:
	if (fd >= 0)
		close(fd);
	if (tmp)
		unlink(tmp);
	free(tmp);
	free(crc);
	free(sorted);
	moert_jw_free(&j);
	moert_ckpt_abort(w);
	return rc;
}

/* ---- header parser ------------------------------------------------------- */

typedef struct rtensor {
	char *name;
	moert_dtype dtype;
	int ndim;
	int64_t *shape;
	uint64_t begin, end;
} rtensor;

struct moert_ckpt {
	char *path;
	int fd;
	uint64_t data_start; /* 8 + header length */
	uint64_t data_size;
	rtensor *tensors; /* in data order */
	size_t n_tensors, cap_tensors;
	size_t *by_name; /* indices into tensors, sorted by name */
	meta_entry *meta;
	size_t n_meta, cap_meta;
	size_t *meta_by_key;
};

/* A cursor over the header text. The first problem is kept in `why` along
 * with the byte where it was found. */
typedef struct hp {
	const char *s;
	size_t len, pos;
	char why[160];
	size_t why_at;
	bool bad_json; /* the problem is JSON syntax, not its content */
} hp;

static bool hp_fail(hp *h, bool syntax, const char *fmt, ...) MOERT_PRINTF(3, 4);

static bool hp_fail(hp *h, bool syntax, const char *fmt, ...)
{
	va_list ap;

	if (h->why[0])
		return false;
	va_start(ap, fmt);
	vsnprintf(h->why, sizeof h->why, fmt, ap);
	va_end(ap);
	h->why_at = h->pos;
	h->bad_json = syntax;
	return false;
}

static void hp_ws(hp *h)
{
	while (h->pos < h->len && (h->s[h->pos] == ' ' || h->s[h->pos] == '\t' ||
				   h->s[h->pos] == '\n' || h->s[h->pos] == '\r'))
		h->pos++;
}

static bool hp_peek(hp *h, char c)
{
	hp_ws(h);
	return h->pos < h->len && h->s[h->pos] == c;
}

static bool hp_expect(hp *h, char c)
{
	if (!hp_peek(h, c)) {
		if (h->pos >= h->len)
			return hp_fail(h, true, "expected '%c' but the header ended",
				       c);
		return hp_fail(h, true, "expected '%c'", c);
	}
	h->pos++;
	return true;
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static bool hp_hex4(hp *h, uint32_t *v)
{
	*v = 0;
	if (h->len - h->pos < 4)
		return hp_fail(h, true, "truncated \\u escape");
	for (int i = 0; i < 4; i++) {
		int d = hex_value(h->s[h->pos + (size_t)i]);
		if (d < 0)
			return hp_fail(h, true, "bad \\u escape");
		*v = *v << 4 | (uint32_t)d;
	}
	h->pos += 4;
	return true;
}

/* string = '"' chars '"'. The result is malloc'd, NUL-terminated UTF-8;
 * *len counts its bytes (a \u0000 makes it differ from strlen). */
static bool hp_string(hp *h, char **out, size_t *len)
{
	size_t start, n = 0;
	char *buf;

	*out = NULL;
	if (!hp_expect(h, '"'))
		return false;
	start = h->pos;
	/* The decoded text is never longer than the raw text. */
	while (h->pos < h->len && h->s[h->pos] != '"') {
		if (h->s[h->pos] == '\\')
			h->pos++;
		h->pos++;
	}
	if (h->pos >= h->len) {
		h->pos = start;
		return hp_fail(h, true, "unterminated string");
	}
	buf = malloc(h->pos - start + 1);
	if (!buf)
		return hp_fail(h, false, "out of memory");
	h->pos = start;
	while (h->s[h->pos] != '"') {
		unsigned char c = (unsigned char)h->s[h->pos];
		uint32_t cp;

		if (c < 0x20) {
			free(buf);
			return hp_fail(h, true, "control character in string");
		}
		if (c != '\\') {
			buf[n++] = (char)c;
			h->pos++;
			continue;
		}
		h->pos++;
		c = (unsigned char)h->s[h->pos++];
		switch (c) {
		case '"': buf[n++] = '"'; continue;
		case '\\': buf[n++] = '\\'; continue;
		case '/': buf[n++] = '/'; continue;
		case 'b': buf[n++] = '\b'; continue;
		case 'f': buf[n++] = '\f'; continue;
		case 'n': buf[n++] = '\n'; continue;
		case 'r': buf[n++] = '\r'; continue;
		case 't': buf[n++] = '\t'; continue;
		case 'u': break;
		default:
			h->pos--;
			free(buf);
			return hp_fail(h, true, "bad escape '\\%c'",
				       c >= 0x20 && c < 0x7F ? c : '?');
		}
		if (!hp_hex4(h, &cp)) {
			free(buf);
			return false;
		}
		if (cp >= 0xDC00 && cp <= 0xDFFF) {
			free(buf);
			return hp_fail(h, true, "lone low surrogate in \\u escape");
		}
		if (cp >= 0xD800 && cp <= 0xDBFF) {
			uint32_t lo;
			if (h->len - h->pos < 2 || h->s[h->pos] != '\\' ||
			    h->s[h->pos + 1] != 'u') {
				free(buf);
				return hp_fail(h, true,
					       "high surrogate without a low "
					       "surrogate");
			}
			h->pos += 2;
			if (!hp_hex4(h, &lo)) {
				free(buf);
				return false;
			}
			if (lo < 0xDC00 || lo > 0xDFFF) {
				free(buf);
				return hp_fail(h, true,
					       "high surrogate without a low "
					       "surrogate");
			}
			cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
		}
		/* Six raw bytes (\uXXXX) or twelve (a pair) always have room
		 * for the 1 to 4 bytes of UTF-8. */
		if (cp < 0x80) {
			buf[n++] = (char)cp;
		} else if (cp < 0x800) {
			buf[n++] = (char)(0xC0 | cp >> 6);
			buf[n++] = (char)(0x80 | (cp & 0x3F));
		} else if (cp < 0x10000) {
			buf[n++] = (char)(0xE0 | cp >> 12);
			buf[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
			buf[n++] = (char)(0x80 | (cp & 0x3F));
		} else {
			buf[n++] = (char)(0xF0 | cp >> 18);
			buf[n++] = (char)(0x80 | ((cp >> 12) & 0x3F));
			buf[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
			buf[n++] = (char)(0x80 | (cp & 0x3F));
		}
	}
	h->pos++;
	buf[n] = '\0';
	if (!moert_utf8_valid(buf, n)) {
		free(buf);
		h->pos = start;
		return hp_fail(h, true, "string is not valid UTF-8");
	}
	*out = buf;
	*len = n;
	return true;
}

/* A non-negative JSON integer that fits in 64 bits. */
static bool hp_uint(hp *h, uint64_t *v)
{
	uint64_t x = 0;
	size_t start;

	hp_ws(h);
	start = h->pos;
	if (h->pos < h->len && h->s[h->pos] == '-')
		return hp_fail(h, false, "negative number");
	if (h->pos >= h->len || h->s[h->pos] < '0' || h->s[h->pos] > '9')
		return hp_fail(h, true, "expected a number");
	while (h->pos < h->len && h->s[h->pos] >= '0' && h->s[h->pos] <= '9') {
		unsigned d = (unsigned)(h->s[h->pos] - '0');
		if (x > (UINT64_MAX - d) / 10) {
			h->pos = start;
			return hp_fail(h, false, "number too large");
		}
		x = x * 10 + d;
		h->pos++;
	}
	if (h->pos - start > 1 && h->s[start] == '0') {
		h->pos = start;
		return hp_fail(h, true, "number with a leading zero");
	}
	if (h->pos < h->len &&
	    (h->s[h->pos] == '.' || h->s[h->pos] == 'e' || h->s[h->pos] == 'E')) {
		h->pos = start;
		return hp_fail(h, false, "expected an integer");
	}
	*v = x;
	return true;
}

/* '[' uint (',' uint)* ']' with at most max entries (shape, data_offsets). */
static bool hp_uint_array(hp *h, uint64_t *v, int max, int *n,
			  const char *what)
{
	*n = 0;
	if (!hp_expect(h, '['))
		return false;
	if (hp_peek(h, ']')) {
		h->pos++;
		return true;
	}
	for (;;) {
		if (*n == max)
			return hp_fail(h, false, "%s has more than %d entries",
				       what, max);
		if (!hp_uint(h, &v[*n]))
			return false;
		(*n)++;
		if (hp_peek(h, ']')) {
			h->pos++;
			return true;
		}
		if (!hp_expect(h, ','))
			return false;
	}
}

static bool key_is(const char *key, size_t len, const char *want)
{
	return len == strlen(want) && memcmp(key, want, len) == 0;
}

/* tensor = '{' "dtype": string, "shape": [uint...], "data_offsets":
 * [uint, uint] '}' in any order, each exactly once. */
static bool hp_tensor(hp *h, moert_ckpt *c, char *name)
{
	uint64_t shape[MOERT_CKPT_MAX_NDIM], offs[2];
	int ndim = 0, noffs = 0;
	bool seen_dtype = false, seen_shape = false, seen_offsets = false;
	moert_dtype dtype = MOERT_DTYPE_U8;
	size_t at = h->pos;
	rtensor *t;

	if (!hp_expect(h, '{'))
		return false;
	if (!hp_peek(h, '}')) {
		for (;;) {
			char *key;
			size_t klen;
			if (!hp_string(h, &key, &klen))
				return false;
			if (!hp_expect(h, ':')) {
				free(key);
				return false;
			}
			if (key_is(key, klen, "dtype") && !seen_dtype) {
				char *dt;
				size_t dlen;
				seen_dtype = true;
				free(key);
				if (!hp_string(h, &dt, &dlen))
					return false;
				if (moert_dtype_parse(dt, &dtype) != 0 ||
				    dlen != strlen(dt)) {
					hp_fail(h, false,
						"tensor '%s': unknown dtype '%.20s'",
						name, dt);
					free(dt);
					return false;
				}
				free(dt);
			} else if (key_is(key, klen, "shape") && !seen_shape) {
				seen_shape = true;
				free(key);
				if (!hp_uint_array(h, shape, MOERT_CKPT_MAX_NDIM,
						   &ndim, "shape"))
					return false;
			} else if (key_is(key, klen, "data_offsets") &&
				   !seen_offsets) {
				seen_offsets = true;
				free(key);
				if (!hp_uint_array(h, offs, 2, &noffs,
						   "data_offsets"))
					return false;
				if (noffs != 2)
					return hp_fail(h, false,
						       "tensor '%s': data_offsets "
						       "needs 2 entries",
						       name);
			} else {
				hp_fail(h, false,
					"tensor '%s': unexpected or repeated "
					"field '%.40s'",
					name, key);
				free(key);
				return false;
			}
			if (hp_peek(h, '}'))
				break;
			if (!hp_expect(h, ','))
				return false;
		}
	}
	h->pos++;
	if (!seen_dtype || !seen_shape || !seen_offsets) {
		h->pos = at;
		return hp_fail(h, false, "tensor '%s': missing %s", name,
			       !seen_dtype ? "dtype"
			       : !seen_shape ? "shape" : "data_offsets");
	}
	if (c->n_tensors == c->cap_tensors) {
		size_t cap = c->cap_tensors ? 2 * c->cap_tensors : 16;
		rtensor *grown = realloc(c->tensors, cap * sizeof *grown);
		if (!grown)
			return hp_fail(h, false, "out of memory");
		c->tensors = grown;
		c->cap_tensors = cap;
	}
	t = &c->tensors[c->n_tensors];
	memset(t, 0, sizeof *t);
	t->shape = malloc((size_t)(ndim ? ndim : 1) * sizeof *t->shape);
	if (!t->shape)
		return hp_fail(h, false, "out of memory");
	for (int i = 0; i < ndim; i++) {
		if (shape[i] > (uint64_t)INT64_MAX) {
			free(t->shape);
			h->pos = at;
			return hp_fail(h, false,
				       "tensor '%s': dimension too large", name);
		}
		t->shape[i] = (int64_t)shape[i];
	}
	t->name = name;
	t->dtype = dtype;
	t->ndim = ndim;
	t->begin = offs[0];
	t->end = offs[1];
	c->n_tensors++;
	return true;
}

/* metadata = '{' (string ':' string),* '}' */
static bool hp_metadata(hp *h, moert_ckpt *c)
{
	if (!hp_expect(h, '{'))
		return false;
	if (hp_peek(h, '}')) {
		h->pos++;
		return true;
	}
	for (;;) {
		meta_entry *m;
		size_t klen, vlen;
		char *key, *value;

		if (!hp_string(h, &key, &klen))
			return false;
		if (!hp_expect(h, ':')) {
			free(key);
			return false;
		}
		if (!hp_peek(h, '"')) {
			hp_fail(h, false, "metadata '%.40s' is not a string", key);
			free(key);
			return false;
		}
		if (!hp_string(h, &value, &vlen)) {
			free(key);
			return false;
		}
		if (klen != strlen(key) || vlen != strlen(value)) {
			hp_fail(h, false, "metadata '%.40s' contains a NUL", key);
			free(key);
			free(value);
			return false;
		}
		if (c->n_meta == c->cap_meta) {
			size_t cap = c->cap_meta ? 2 * c->cap_meta : 8;
			meta_entry *grown = realloc(c->meta, cap * sizeof *grown);
			if (!grown) {
				free(key);
				free(value);
				return hp_fail(h, false, "out of memory");
			}
			c->meta = grown;
			c->cap_meta = cap;
		}
		m = &c->meta[c->n_meta++];
		m->key = key;
		m->value = value;
		if (hp_peek(h, '}')) {
			h->pos++;
			return true;
		}
		if (!hp_expect(h, ','))
			return false;
	}
}

/* header = '{' (string ':' (metadata | tensor)),* '}' whitespace* */
static bool hp_header(hp *h, moert_ckpt *c)
{
	bool seen_meta = false;

	if (!hp_expect(h, '{'))
		return false;
	if (hp_peek(h, '}')) {
		h->pos++;
	} else {
		for (;;) {
			char *key;
			size_t klen;
			size_t at;

			hp_ws(h);
			at = h->pos;
			if (!hp_string(h, &key, &klen))
				return false;
			if (!hp_expect(h, ':')) {
				free(key);
				return false;
			}
			if (key_is(key, klen, META_KEY)) {
				free(key);
				if (seen_meta) {
					h->pos = at;
					return hp_fail(h, false,
						       "repeated __metadata__");
				}
				seen_meta = true;
				if (!hp_metadata(h, c))
					return false;
			} else {
				if (klen != strlen(key)) {
					free(key);
					h->pos = at;
					return hp_fail(h, false,
						       "tensor name contains a "
						       "NUL");
				}
				if (!hp_tensor(h, c, key)) {
					free(key);
					return false;
				}
			}
			if (hp_peek(h, '}')) {
				h->pos++;
				break;
			}
			if (!hp_expect(h, ','))
				return false;
		}
	}
	hp_ws(h);
	if (h->pos != h->len)
		return hp_fail(h, true, "unexpected text after the header object");
	return true;
}

/* ---- reader -------------------------------------------------------------- */

static int cmp_rtensor_offset(const void *a, const void *b)
{
	const rtensor *x = a, *y = b;

	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return 0;
}

/* qsort has no context argument: sort index arrays through a small struct. */
typedef struct name_ref {
	const char *name;
	size_t index;
} name_ref;

static int cmp_name_ref(const void *a, const void *b)
{
	return strcmp(((const name_ref *)a)->name, ((const name_ref *)b)->name);
}

/* Fills *index with the indices of arr sorted by name and points *dup at a
 * name that occurs twice (NULL if none). -1 when out of memory. */
static int sort_names(size_t n, const char *(*name_of)(const void *, size_t),
		      const void *arr, size_t **index, const char **dup)
{
	name_ref *refs = malloc((n ? n : 1) * sizeof *refs);

	*dup = NULL;
	*index = malloc((n ? n : 1) * sizeof **index);
	if (!refs || !*index) {
		free(refs);
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		refs[i].name = name_of(arr, i);
		refs[i].index = i;
	}
	qsort(refs, n, sizeof *refs, cmp_name_ref);
	for (size_t i = 0; i < n; i++) {
		(*index)[i] = refs[i].index;
		if (i > 0 && !*dup && strcmp(refs[i - 1].name, refs[i].name) == 0)
			*dup = refs[i].name;
	}
	free(refs);
	return 0;
}

static const char *tensor_name_at(const void *arr, size_t i)
{
	return ((const rtensor *)arr)[i].name;
}

static const char *meta_key_at(const void *arr, size_t i)
{
	return ((const meta_entry *)arr)[i].key;
}

/* Reads exactly n bytes at offset; -1 with errno set (0 for end of file). */
static int read_at(int fd, void *buf, size_t n, uint64_t offset)
{
	char *p = buf;

	while (n > 0) {
		ssize_t k = pread(fd, p, n > (1u << 30) ? (1u << 30) : n,
				  (off_t)offset);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			if (k == 0)
				errno = 0;
			return -1;
		}
		p += k;
		n -= (size_t)k;
		offset += (uint64_t)k;
	}
	return 0;
}

void moert_ckpt_close(moert_ckpt *c)
{
	if (!c)
		return;
	if (c->fd >= 0)
		close(c->fd);
	for (size_t i = 0; i < c->n_tensors; i++) {
		free(c->tensors[i].name);
		free(c->tensors[i].shape);
	}
	for (size_t i = 0; i < c->n_meta; i++) {
		free(c->meta[i].key);
		free(c->meta[i].value);
	}
	free(c->tensors);
	free(c->by_name);
	free(c->meta);
	free(c->meta_by_key);
	free(c->path);
	free(c);
}

/* Checks that the tensors tile [0, data_size) exactly; sorts them by
 * offset. */
static int check_layout(moert_ckpt *c, moert_error *err)
{
	uint64_t at = 0;

	for (size_t i = 0; i < c->n_tensors; i++) {
		const rtensor *t = &c->tensors[i];
		uint64_t bytes;
		char shape[200];

		if (t->end < t->begin) {
			moert_error_set(err,
					"%s: bad safetensors header: tensor '%s' "
					"has data_offsets [%" PRIu64 ", %" PRIu64
					"] that end before they begin",
					c->path, t->name, t->begin, t->end);
			return -1;
		}
		format_shape(shape, sizeof shape, t->ndim, t->shape);
		if (tensor_bytes(t->dtype, t->ndim, t->shape, &bytes) != 0) {
			moert_error_set(err,
					"%s: bad safetensors header: tensor '%s' "
					"of shape %s is too large",
					c->path, t->name, shape);
			return -1;
		}
		if (bytes != t->end - t->begin) {
			moert_error_set(err,
					"%s: bad safetensors header: tensor '%s' "
					"(%s %s) needs %" PRIu64
					" bytes but data_offsets [%" PRIu64
					", %" PRIu64 "] hold %" PRIu64,
					c->path, t->name, moert_dtype_name(t->dtype),
					shape, bytes, t->begin, t->end,
					t->end - t->begin);
			return -1;
		}
	}
	if (c->n_tensors > 1)
		qsort(c->tensors, c->n_tensors, sizeof *c->tensors,
		      cmp_rtensor_offset);
	for (size_t i = 0; i < c->n_tensors; i++) {
		const rtensor *t = &c->tensors[i];
		if (t->begin > at) {
			moert_error_set(err,
					"%s: bad safetensors header: %" PRIu64
					" bytes of data before tensor '%s' belong "
					"to no tensor",
					c->path, t->begin - at, t->name);
			return -1;
		}
		if (t->begin < at) {
			moert_error_set(err,
					"%s: bad safetensors header: tensor '%s' "
					"overlaps tensor '%s'",
					c->path, t->name, c->tensors[i - 1].name);
			return -1;
		}
		at = t->end;
	}
	if (at > c->data_size) {
		moert_error_set(err,
				"%s: truncated: header says %" PRIu64
				" bytes of tensor data, file has %" PRIu64,
				c->path, at, c->data_size);
		return -1;
	}
	if (at < c->data_size) {
		moert_error_set(err,
				"%s: not a valid safetensors file (%" PRIu64
				" bytes after the last tensor)",
				c->path, c->data_size - at);
		return -1;
	}
	return 0;
}

static int verify_checksum(moert_ckpt *c, moert_error *err)
{
	const char *stored = moert_ckpt_meta_get(c, CRC_KEY);
	size_t chunk = 1u << 20;
	uint64_t done = 0;
	unsigned char *buf;
	crc32c *crc;
	char hex[9];

	if (!stored)
		return 0;
	if (strlen(stored) != 8 || strspn(stored, "0123456789abcdef") != 8) {
		moert_error_set(err, "%s: corrupted: bad %s '%.20s'", c->path,
				CRC_KEY, stored);
		return -1;
	}
	buf = malloc(chunk);
	crc = malloc(sizeof *crc);
	if (!buf || !crc) {
		free(buf);
		free(crc);
		moert_error_set(err, "%s: out of memory", c->path);
		return -1;
	}
	crc32c_init(crc);
	while (done < c->data_size) {
		size_t n = c->data_size - done < chunk ? (size_t)(c->data_size - done)
						       : chunk;
		if (read_at(c->fd, buf, n, c->data_start + done) != 0) {
			int e = errno;
			moert_error_set(err, "%s: read failed (%s)", c->path,
					e ? strerror(e) : "file shrank");
			free(buf);
			free(crc);
			return -1;
		}
		crc32c_update(crc, buf, n);
		done += n;
	}
	snprintf(hex, sizeof hex, "%08" PRIx32, crc32c_value(crc));
	free(buf);
	free(crc);
	if (strcmp(hex, stored) != 0) {
		moert_error_set(err,
				"%s: corrupted: tensor data does not match its "
				"checksum (%s %s, data %s)",
				c->path, CRC_KEY, stored, hex);
		return -1;
	}
	return 0;
}

moert_ckpt *moert_ckpt_open(const char *path, moert_error *err)
{
	moert_ckpt *c;
	struct stat st;
	unsigned char len_le[8];
	uint64_t size, hlen = 0;
	char *header = NULL;
	const char *dup;
	hp h;

	if (!host_is_little_endian()) {
		moert_error_set(err, "%s: checkpoints need a little-endian host",
				path);
		return NULL;
	}
	c = calloc(1, sizeof *c);
	if (!c || !(c->path = strdup(path))) {
		free(c);
		moert_error_set(err, "%s: out of memory", path);
		return NULL;
	}
	c->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (c->fd < 0) {
		moert_error_set(err, "%s: cannot open checkpoint (%s)", path,
				strerror(errno));
		goto fail;
	}
	if (fstat(c->fd, &st) != 0) {
		moert_error_set(err, "%s: cannot stat checkpoint (%s)", path,
				strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		moert_error_set(err, "%s: not a safetensors checkpoint (%s)", path,
				S_ISDIR(st.st_mode) ? "a directory"
						    : "not a regular file");
		goto fail;
	}
	size = (uint64_t)st.st_size;
	if (size < 8) {
		if (size == 0)
			moert_error_set(err,
					"%s: not a safetensors checkpoint (empty "
					"file)",
					path);
		else
			moert_error_set(err,
					"%s: not a safetensors checkpoint (%" PRIu64
					" bytes, too short for the 8-byte header "
					"length)",
					path, size);
		goto fail;
	}
	if (read_at(c->fd, len_le, 8, 0) != 0) {
		moert_error_set(err, "%s: read failed (%s)", path,
				errno ? strerror(errno) : "file shrank");
		goto fail;
	}
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | len_le[i];
	if (hlen > size - 8) {
		moert_error_set(err,
				"%s: not a safetensors checkpoint (header length "
				"%" PRIu64 " exceeds file size)",
				path, hlen);
		goto fail;
	}
	if (hlen > MOERT_CKPT_MAX_HEADER) {
		moert_error_set(err,
				"%s: not a safetensors checkpoint (header length "
				"%" PRIu64 " exceeds the limit of %u bytes)",
				path, hlen, MOERT_CKPT_MAX_HEADER);
		goto fail;
	}
	if (hlen < 2) {
		moert_error_set(err,
				"%s: not a safetensors checkpoint (header length "
				"%" PRIu64 ")",
				path, hlen);
		goto fail;
	}
	header = malloc((size_t)hlen);
	if (!header) {
		moert_error_set(err, "%s: out of memory", path);
		goto fail;
	}
	if (read_at(c->fd, header, (size_t)hlen, 8) != 0) {
		moert_error_set(err, "%s: read failed (%s)", path,
				errno ? strerror(errno) : "file shrank");
		goto fail;
	}
	if (header[0] != '{') {
		moert_error_set(err,
				"%s: not a safetensors checkpoint (header does not "
				"start with '{')",
				path);
		goto fail;
	}
	c->data_start = 8 + hlen;
	c->data_size = size - 8 - hlen;

	memset(&h, 0, sizeof h);
	h.s = header;
	h.len = (size_t)hlen;
	if (!hp_header(&h, c)) {
		moert_error_set(err, "%s: bad safetensors header: %s%s at byte %zu",
				path, h.bad_json ? "not JSON: " : "", h.why,
				8 + h.why_at);
		goto fail;
	}
	free(header);
	header = NULL;

	if (check_layout(c, err) != 0)
		goto fail;
	if (sort_names(c->n_tensors, tensor_name_at, c->tensors, &c->by_name,
		       &dup) != 0) {
		moert_error_set(err, "%s: out of memory", path);
		goto fail;
	}
	if (dup) {
		moert_error_set(err,
				"%s: bad safetensors header: duplicate tensor '%s'",
				path, dup);
		goto fail;
	}
	if (sort_names(c->n_meta, meta_key_at, c->meta, &c->meta_by_key,
		       &dup) != 0) {
		moert_error_set(err, "%s: out of memory", path);
		goto fail;
	}
	if (dup) {
		moert_error_set(err,
				"%s: bad safetensors header: duplicate metadata "
				"key '%s'",
				path, dup);
		goto fail;
	}
	if (verify_checksum(c, err) != 0)
		goto fail;
	return c;

fail:
	free(header);
	moert_ckpt_close(c);
	return NULL;
}

/* ---- lookups ------------------------------------------------------------- */

static const rtensor *find_tensor(const moert_ckpt *c, const char *name)
{
	size_t lo = 0, hi = c->n_tensors;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const rtensor *t = &c->tensors[c->by_name[mid]];
		int d = strcmp(name, t->name);
		if (d == 0)
			return t;
		if (d < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

size_t moert_ckpt_count(const moert_ckpt *c)
{
	return c->n_tensors;
}

const char *moert_ckpt_name(const moert_ckpt *c, size_t i)
{
	return i < c->n_tensors ? c->tensors[i].name : NULL;
}

bool moert_ckpt_has(const moert_ckpt *c, const char *name)
{
	return find_tensor(c, name) != NULL;
}

int moert_ckpt_info(const moert_ckpt *c, const char *name, moert_dtype *dtype,
		    int *ndim, const int64_t **shape)
{
	const rtensor *t = find_tensor(c, name);

	if (!t)
		return -1;
	if (dtype)
		*dtype = t->dtype;
	if (ndim)
		*ndim = t->ndim;
	if (shape)
		*shape = t->shape;
	return 0;
}

const char *moert_ckpt_meta_get(const moert_ckpt *c, const char *key)
{
	size_t lo = 0, hi = c->n_meta;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const meta_entry *m = &c->meta[c->meta_by_key[mid]];
		int d = strcmp(key, m->key);
		if (d == 0)
			return m->value;
		if (d < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

size_t moert_ckpt_meta_count(const moert_ckpt *c)
{
	return c->n_meta;
}

const char *moert_ckpt_meta_key(const moert_ckpt *c, size_t i)
{
	return i < c->n_meta ? c->meta[i].key : NULL;
}

/* The tensor `name` if its dtype and shape are exactly as expected. */
static const rtensor *checked_tensor(const moert_ckpt *c, const char *name,
				     moert_dtype dtype, int ndim,
				     const int64_t *shape, moert_error *err)
{
	const rtensor *t = find_tensor(c, name);
	char want[200], have[200];
	bool same;

	if (!t) {
		moert_error_set(err, "%s: no tensor '%s' in the checkpoint",
				c->path, name);
		return NULL;
	}
	same = t->dtype == dtype && t->ndim == ndim;
	for (int i = 0; same && i < ndim; i++)
		same = t->shape[i] == shape[i];
	if (same)
		return t;
	if (ndim < 0 || ndim > MOERT_CKPT_MAX_NDIM)
		ndim = 0;
	format_shape(want, sizeof want, ndim, shape);
	format_shape(have, sizeof have, t->ndim, t->shape);
	moert_error_set(err, "%s: tensor '%s': expected %s %s, found %s %s",
			c->path, name, moert_dtype_name(dtype), want,
			moert_dtype_name(t->dtype), have);
	return NULL;
}

static int read_tensor_bytes(const moert_ckpt *c, const rtensor *t,
			     uint64_t offset, uint64_t bytes, void *dst,
			     moert_error *err)
{
	if (bytes == 0)
		return 0;
	if (bytes > (uint64_t)SIZE_MAX ||
	    read_at(c->fd, dst, (size_t)bytes, c->data_start + t->begin + offset) !=
		    0) {
		int e = errno;
		moert_error_set(err, "%s: cannot read tensor '%s' (%s)", c->path,
				t->name, e ? strerror(e) : "file shrank");
		return -1;
	}
	return 0;
}

int moert_ckpt_get(const moert_ckpt *c, const char *name, moert_dtype dtype,
		   int ndim, const int64_t *shape, void *dst, moert_error *err)
{
	const rtensor *t = checked_tensor(c, name, dtype, ndim, shape, err);

	if (!t)
		return -1;
	return read_tensor_bytes(c, t, 0, t->end - t->begin, dst, err);
}

int moert_ckpt_get_rows(const moert_ckpt *c, const char *name,
			moert_dtype dtype, int ndim, const int64_t *shape,
			int64_t first, int64_t count, void *dst,
			moert_error *err)
{
	const rtensor *t = checked_tensor(c, name, dtype, ndim, shape, err);
	uint64_t row;

	if (!t)
		return -1;
	if (ndim < 1 || first < 0 || count < 0 || first > t->shape[0] ||
	    count > t->shape[0] - first) {
		moert_error_set(err,
				"%s: tensor '%s': rows [%" PRId64 ", %" PRId64
				") are out of range for a first dimension of "
				"%" PRId64,
				c->path, name, first, first + count,
				ndim >= 1 ? t->shape[0] : 0);
		return -1;
	}
	if (count == 0)
		return 0;
	row = (t->end - t->begin) / (uint64_t)t->shape[0];
	return read_tensor_bytes(c, t, row * (uint64_t)first,
				 row * (uint64_t)count, dst, err);
}
