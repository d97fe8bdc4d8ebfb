/* core_args.c: the generated trainer's command line, from a table. */
#include "moert_core.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- lookup ------------------------------------------------------------ */

static const moert_arg *find_long(const moert_arg *opts, size_t n,
				  const char *name, size_t len)
{
	for (size_t i = 0; i < n; i++)
		if (opts[i].name && strlen(opts[i].name) == len &&
		    memcmp(opts[i].name, name, len) == 0)
			return &opts[i];
	return NULL;
}

static const moert_arg *find_short(const moert_arg *opts, size_t n, char c)
{
	for (size_t i = 0; i < n; i++)
		if (opts[i].short_name && opts[i].short_name == c)
			return &opts[i];
	return NULL;
}

/* Optimal string alignment distance (Levenshtein plus transpositions of
 * neighbours), for names of up to 63 characters; SIZE_MAX beyond. */
static size_t edit_distance(const char *a, size_t la, const char *b, size_t lb)
{
	size_t d[64][64];

	if (la >= 64 || lb >= 64)
		return SIZE_MAX;
	for (size_t i = 0; i <= la; i++)
		d[i][0] = i;
	for (size_t k = 0; k <= lb; k++)
		d[0][k] = k;
	for (size_t i = 1; i <= la; i++) {
		for (size_t k = 1; k <= lb; k++) {
			size_t cost = a[i - 1] != b[k - 1];
			size_t best = d[i - 1][k - 1] + cost;
			if (d[i - 1][k] + 1 < best)
				best = d[i - 1][k] + 1;
			if (d[i][k - 1] + 1 < best)
				best = d[i][k - 1] + 1;
			if (i > 1 && k > 1 && a[i - 1] == b[k - 2] &&
			    a[i - 2] == b[k - 1] && d[i - 2][k - 2] + 1 < best)
				best = d[i - 2][k - 2] + 1;
			d[i][k] = best;
		}
	}
	return d[la][lb];
}

/* The long name closest to name[0..len), if close enough to be a typo. */
static const char *suggest(const moert_arg *opts, size_t n, const char *name,
			   size_t len)
{
	size_t limit = len < 4 ? 1 : len < 8 ? 2 : 3;
	size_t best = SIZE_MAX;
	const char *found = NULL;

	for (size_t i = 0; i <= n; i++) {
		const char *cand = i < n ? opts[i].name : "help";
		size_t dist;
		if (!cand)
			continue;
		dist = edit_distance(name, len, cand, strlen(cand));
		if (dist <= limit && dist < best) {
			best = dist;
			found = cand;
		}
	}
	return found;
}

/* ---- values ------------------------------------------------------------ */

static bool parse_bool(const char *s, bool *v)
{
	static const char *const yes[] = {"1", "true", "yes", "on"};
	static const char *const no[] = {"0", "false", "no", "off"};

	for (size_t i = 0; i < 4; i++) {
		if (strcmp(s, yes[i]) == 0) {
			*v = true;
			return true;
		}
		if (strcmp(s, no[i]) == 0) {
			*v = false;
			return true;
		}
	}
	return false;
}

/* Converts text for option o (shown as `opt`, e.g. "--steps") and stores it
 * when store is set. */
static int parse_value(const moert_arg *o, const char *opt, const char *text,
		       bool store, moert_error *err)
{
	char *end;

	switch (o->kind) {
	case MOERT_ARG_INT:
	case MOERT_ARG_INT64: {
		long long v;
		long long lo = o->kind == MOERT_ARG_INT ? INT_MIN : INT64_MIN;
		long long hi = o->kind == MOERT_ARG_INT ? INT_MAX : INT64_MAX;
		errno = 0;
		v = strtoll(text, &end, 10);
		if (!*text || isspace((unsigned char)*text) || *end) {
			moert_error_set(err,
					"option '%s' expects an integer, got '%s'",
					opt, text);
			return -1;
		}
		if (errno == ERANGE || v < lo || v > hi) {
			moert_error_set(err,
					"option '%s': %s is out of range (%lld to "
					"%lld)",
					opt, text, lo, hi);
			return -1;
		}
		if (store && o->kind == MOERT_ARG_INT)
			*(int *)o->value = (int)v;
		else if (store)
			*(int64_t *)o->value = (int64_t)v;
		return 0;
	}
	case MOERT_ARG_DOUBLE: {
		double v;
		errno = 0;
		v = strtod(text, &end);
		if (!*text || isspace((unsigned char)*text) || *end) {
			moert_error_set(err,
					"option '%s' expects a number, got '%s'",
					opt, text);
			return -1;
		}
		if (!isfinite(v)) {
			moert_error_set(err,
					"option '%s' expects a finite number, got "
					"'%s'",
					opt, text);
			return -1;
		}
		/* ERANGE with a finite result is underflow: keep it. */
		if (store)
			*(double *)o->value = v;
		return 0;
	}
	case MOERT_ARG_STRING:
		if (store)
			*(const char **)o->value = text;
		return 0;
	case MOERT_ARG_FLAG: {
		bool v;
		if (!parse_bool(text, &v)) {
			moert_error_set(err,
					"option '%s' expects true or false, got "
					"'%s'",
					opt, text);
			return -1;
		}
		if (store)
			*(bool *)o->value = v;
		return 0;
	}
	}
	moert_error_set(err, "option '%s' has an unknown kind in the table",
			opt);
	return -1;
}

/* ---- parsing ----------------------------------------------------------- */

/* One pass over argv. With store unset it only checks, and keeps going after
 * an error so that a --help further on still wins; the first error is kept
 * in err. Returns MOERT_ARGS_*. */
static int parse_pass(const moert_arg *opts, size_t n, int argc,
		      char *const argv[], bool store, moert_error *err)
{
	bool help = false, failed = false, options_done = false;
	moert_error scratch;
	moert_error *e = err;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const moert_arg *o = NULL;
		const char *value = NULL;
		char opt[80];
		bool negated = false;

		if (failed)
			e = &scratch; /* keep the first message */
		if (options_done || a[0] != '-' || a[1] == '\0') {
			moert_error_set(e, "unexpected argument '%s'", a);
			failed = true;
			continue;
		}
		if (a[1] == '-' && a[2] == '\0') {
			options_done = true;
			continue;
		}
		if (a[1] == '-') {
			const char *name = a + 2;
			const char *eq = strchr(name, '=');
			size_t len = eq ? (size_t)(eq - name) : strlen(name);

			o = find_long(opts, n, name, len);
			if (!o && len > 3 && memcmp(name, "no-", 3) == 0) {
				o = find_long(opts, n, name + 3, len - 3);
				if (o && o->kind == MOERT_ARG_FLAG)
					negated = true;
				else
					o = NULL;
			}
			if (!o && len == 4 && memcmp(name, "help", 4) == 0) {
				help = true;
				continue;
			}
			snprintf(opt, sizeof opt, "--%.*s", (int)len, name);
			if (!o) {
				const char *s = suggest(opts, n, name, len);
				if (s)
					moert_error_set(e,
							"unknown option '%s' (did "
							"you mean '--%s'?)",
							opt, s);
				else
					moert_error_set(e, "unknown option '%s'",
							opt);
				failed = true;
				continue;
			}
			if (eq)
				value = eq + 1;
			if (negated && value) {
				moert_error_set(e, "option '%s' takes no value",
						opt);
				failed = true;
				continue;
			}
		} else {
			o = find_short(opts, n, a[1]);
			if (!o && a[1] == 'h' && a[2] == '\0') {
				help = true;
				continue;
			}
			snprintf(opt, sizeof opt, "-%c", a[1]);
			if (!o) {
				moert_error_set(e, "unknown option '%s'", a);
				failed = true;
				continue;
			}
			if (a[2] != '\0') {
				if (o->kind == MOERT_ARG_FLAG) {
					moert_error_set(e,
							"option '%s' takes no value "
							"(in '%s')",
							opt, a);
					failed = true;
					continue;
				}
				value = a + 2;
			}
		}
		if (o->kind == MOERT_ARG_FLAG && !value) {
			if (store)
				*(bool *)o->value = !negated;
			continue;
		}
		if (!value) {
			if (i + 1 >= argc ||
			    (argv[i + 1][0] == '-' && argv[i + 1][1] == '-')) {
				moert_error_set(e, "option '%s' requires a value",
						opt);
				failed = true;
				continue;
			}
			value = argv[++i];
		}
		if (parse_value(o, opt, value, store, e) != 0)
			failed = true;
	}
	if (help)
		return MOERT_ARGS_HELP;
	return failed ? MOERT_ARGS_ERROR : MOERT_ARGS_OK;
}

int moert_args_parse(const moert_arg *opts, size_t n, int argc,
		     char *const argv[], moert_error *err)
{
	int rc = parse_pass(opts, n, argc, argv, false, err);

	if (rc != MOERT_ARGS_OK)
		return rc;
	return parse_pass(opts, n, argc, argv, true, err);
}

/* ---- --help ------------------------------------------------------------ */

static const char *metavar(const moert_arg *o)
{
	if (o->metavar)
		return o->metavar;
	switch (o->kind) {
	case MOERT_ARG_INT:
	case MOERT_ARG_INT64:
		return "N";
	case MOERT_ARG_DOUBLE:
		return "X";
	case MOERT_ARG_STRING:
		return "STR";
	case MOERT_ARG_FLAG:
		break;
	}
	return "";
}

static void left_column(const moert_arg *o, char *buf, size_t size)
{
	char shortpart[8] = "    ";

	if (o->short_name)
		snprintf(shortpart, sizeof shortpart, "-%c, ", o->short_name);
	if (o->kind == MOERT_ARG_FLAG)
		snprintf(buf, size, "  %s--%s", shortpart, o->name);
	else
		snprintf(buf, size, "  %s--%s %s", shortpart, o->name,
			 metavar(o));
}

static void default_text(const moert_arg *o, char *buf, size_t size)
{
	buf[0] = '\0';
	switch (o->kind) {
	case MOERT_ARG_INT:
		snprintf(buf, size, " (default: %d)", *(const int *)o->value);
		break;
	case MOERT_ARG_INT64:
		snprintf(buf, size, " (default: %" PRId64 ")",
			 *(const int64_t *)o->value);
		break;
	case MOERT_ARG_DOUBLE:
		snprintf(buf, size, " (default: %g)",
			 *(const double *)o->value);
		break;
	case MOERT_ARG_STRING:
		if (*(const char *const *)o->value)
			snprintf(buf, size, " (default: %s)",
				 *(const char *const *)o->value);
		break;
	case MOERT_ARG_FLAG:
		if (*(const bool *)o->value)
			snprintf(buf, size, " (default: on; --no-%s to turn off)",
				 o->name);
		break;
	}
}

void moert_args_help(FILE *out, const char *prog, const char *summary,
		     const moert_arg *opts, size_t n)
{
	const size_t max_col = 30;
	size_t col = 12;
	char left[128], def[300];
	const moert_arg help = {"help", 'h', MOERT_ARG_FLAG, NULL,
				"show this help and exit", NULL};

	fprintf(out, "Usage: %s [options]\n", prog);
	if (summary && *summary)
		fprintf(out, "\n%s\n", summary);
	fprintf(out, "\nOptions:\n");
	for (size_t i = 0; i < n; i++) {
		size_t len;
		left_column(&opts[i], left, sizeof left);
		len = strlen(left);
		if (len + 2 > col && len + 2 <= max_col)
			col = len + 2;
	}
	for (size_t i = 0; i <= n; i++) {
		const moert_arg *o = i < n ? &opts[i] : &help;
		size_t len;

		if (i == n && (find_long(opts, n, "help", 4) ||
			       find_short(opts, n, 'h')))
			break;
		left_column(o, left, sizeof left);
		if (i < n)
			default_text(o, def, sizeof def);
		else
			def[0] = '\0';
		len = strlen(left);
		if (len + 2 > col)
			fprintf(out, "%s\n%*s", left, (int)col, "");
		else
			fprintf(out, "%-*s", (int)col, left);
		fprintf(out, "%s%s\n", o->help ? o->help : "", def);
	}
}
