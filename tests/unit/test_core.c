/* test_core.c: unit tests of libmoert's core (moert_core.h). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <math.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "moert_core.h"

#ifndef MOERT_TOP_SRCDIR
#define MOERT_TOP_SRCDIR "."
#endif

/* ---- helpers ------------------------------------------------------------- */

static char *make_tmpdir(void)
{
	const char *base = getenv("TMPDIR");
	char *dir;

	if (!base || !*base)
		base = "/tmp";
	dir = malloc(strlen(base) + 32);
	assert_non_null(dir);
	sprintf(dir, "%s/moert_test_XXXXXX", base);
	assert_non_null(mkdtemp(dir));
	return dir;
}

static int remove_entry(const char *path, const struct stat *st, int flag,
			struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	chmod(path, 0700);
	return remove(path);
}

static void remove_tmpdir(char *dir)
{
	chmod(dir, 0700);
	nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(dir);
}

static char *path_in(const char *dir, const char *name)
{
	char *p = malloc(strlen(dir) + strlen(name) + 2);

	assert_non_null(p);
	sprintf(p, "%s/%s", dir, name);
	return p;
}

static void write_bytes(const char *path, const void *data, size_t n)
{
	FILE *f = fopen(path, "wb");

	assert_non_null(f);
	if (n)
		assert_int_equal(fwrite(data, 1, n, f), n);
	assert_int_equal(fclose(f), 0);
}

static unsigned char *read_bytes(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	unsigned char *buf;
	long size;

	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	size = ftell(f);
	assert_true(size >= 0);
	rewind(f);
	buf = malloc((size_t)size + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
	fclose(f);
	buf[size] = 0;
	*n = (size_t)size;
	return buf;
}

static int count_dir_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

static void assert_contains(const char *haystack, const char *needle)
{
	if (!strstr(haystack, needle)) {
		print_error("expected \"%s\" in \"%s\"\n", needle, haystack);
		fail();
	}
}

static void assert_starts_with(const char *s, const char *prefix)
{
	if (strncmp(s, prefix, strlen(prefix)) != 0) {
		print_error("expected \"%s\" to start with \"%s\"\n", s, prefix);
		fail();
	}
}

/* ---- errors -------------------------------------------------------------- */

static void test_error_set(void **state)
{
	moert_error e;
	char big[1000];

	(void)state;
	moert_error_set(NULL, "ignored %d", 1);
	moert_error_clear(NULL);
	moert_error_set(&e, "x=%d %s", 5, "y");
	assert_string_equal(e.msg, "x=5 y");
	moert_error_set(&e, "prefix: %s", e.msg);
	assert_string_equal(e.msg, "prefix: x=5 y");
	moert_error_clear(&e);
	assert_string_equal(e.msg, "");

	memset(big, 'a', sizeof big - 1);
	big[sizeof big - 1] = 0;
	moert_error_set(&e, "%s", big);
	assert_int_equal(strlen(e.msg), sizeof e.msg - 1);
	assert_string_equal(e.msg + strlen(e.msg) - 3, "...");

	/* Cut at a character boundary: 2-byte characters throughout. */
	for (size_t i = 0; i + 2 < sizeof big; i += 2)
		memcpy(big + i, "\xc3\xa9", 2);
	big[sizeof big - 2] = 0;
	moert_error_set(&e, "%s", big);
	assert_true(moert_utf8_valid(e.msg, strlen(e.msg)));
	assert_string_equal(e.msg + strlen(e.msg) - 3, "...");
}

/* ---- random numbers ------------------------------------------------------ */

static void test_rng_philox_kat(void **state)
{
	/* Random123 tests/kat_vectors, "philox4x32 10": ctr, key, expected. */
	static const uint32_t kat[3][10] = {
		{0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c,
		 0x9b00dbd8},
		{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
		 0xffffffff, 0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
		{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822,
		 0x299f31d0, 0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1},
	};
	(void)state;
	for (int v = 0; v < 3; v++) {
		uint32_t out[4];
		moert_philox4x32_10(kat[v], kat[v] + 4, out);
		for (int i = 0; i < 4; i++)
			assert_int_equal(out[i], kat[v][6 + i]);
	}
	/* The mapping of (seed, stream, counter) onto key and counter. */
	{
		uint32_t out[4];
		moert_philox4x32_10(kat[2], kat[2] + 4, out);
		assert_true(moert_rng_u64(0x299f31d0a4093822ull,
					  0x0370734413198a2eull,
					  0x85a308d3243f6a88ull) ==
			    ((uint64_t)out[1] << 32 | out[0]));
	}
}

static void test_rng_determinism(void **state)
{
	moert_rng r, r2;
	float a[15], b[15];

	(void)state;
	moert_rng_init(&r, 42, 7);
	for (uint64_t i = 0; i < 100; i++)
		assert_true(moert_rng_next_u64(&r) == moert_rng_u64(42, 7, i));
	assert_true(r.counter == 100);
	assert_true(moert_rng_u64(42, 7, 0) != moert_rng_u64(42, 8, 0));
	assert_true(moert_rng_u64(42, 7, 0) != moert_rng_u64(43, 7, 0));
	assert_true(moert_rng_u64(42, 7, 0) != moert_rng_u64(42, 7, 1));
	/* Streams that differ only in the high word differ too. */
	assert_true(moert_rng_u64(1, 1, 0) != moert_rng_u64(1, 1ull << 32 | 1, 0));

	/* Fills are element-wise pure and resume where they stopped. */
	moert_rng_init(&r, 5, 3);
	moert_rng_fill_normal(&r, a, 15, 0.0f, 1.0f);
	moert_rng_init(&r2, 5, 3);
	moert_rng_fill_normal(&r2, b, 10, 0.0f, 1.0f);
	moert_rng_fill_normal(&r2, b + 10, 5, 0.0f, 1.0f);
	assert_memory_equal(a, b, sizeof a);
	assert_true(r.counter == 15 && r2.counter == 15);
	for (int i = 0; i < 15; i++)
		assert_true(a[i] == (float)moert_rng_normal(5, 3, (uint64_t)i));

	/* The state is the three numbers: copy them and continue. */
	moert_rng_init(&r, 9, 1);
	moert_rng_fill_uniform(&r, a, 7, -1.0f, 1.0f);
	r2 = (moert_rng){r.seed, r.stream, r.counter};
	assert_true(moert_rng_next_u64(&r) == moert_rng_next_u64(&r2));
	assert_true(moert_rng_next_normal(&r) == moert_rng_next_normal(&r2));
	assert_true(moert_rng_next_uniform(&r) == moert_rng_next_uniform(&r2));
}

static void test_rng_moments(void **state)
{
	const size_t n = 1000000;
	double s1 = 0, s2 = 0, s3 = 0, s4 = 0, lag = 0, prev = 0;
	float *x = malloc(n * sizeof *x);
	moert_rng r;

	(void)state;
	assert_non_null(x);
	/* Uniform [0, 1): mean 1/2, variance 1/12, no lag-1 correlation. */
	for (size_t i = 0; i < n; i++) {
		double u = moert_rng_uniform(11, 0, i);
		assert_true(u >= 0.0 && u < 1.0);
		s1 += u;
		s2 += u * u;
		lag += (u - 0.5) * (prev - 0.5);
		prev = u;
	}
	s1 /= n;
	assert_true(fabs(s1 - 0.5) < 0.002);
	assert_true(fabs(s2 / n - s1 * s1 - 1.0 / 12) < 0.001);
	assert_true(fabs(lag / n * 12) < 0.01);
	for (size_t i = 0; i < 1000; i++) {
		double u = moert_rng_uniform_f64(11, 1, i);
		assert_true(u >= 0.0 && u < 1.0);
	}

	/* Normal: mean 0, variance 1, skewness 0, kurtosis 3. */
	moert_rng_init(&r, 12, 0);
	moert_rng_fill_normal(&r, x, n, 0.0f, 1.0f);
	s1 = s2 = s3 = s4 = 0;
	for (size_t i = 0; i < n; i++) {
		double z = x[i];
		assert_true(isfinite(z));
		s1 += z;
		s2 += z * z;
		s3 += z * z * z;
		s4 += z * z * z * z;
	}
	assert_true(fabs(s1 / n) < 0.005);
	assert_true(fabs(s2 / n - 1) < 0.01);
	assert_true(fabs(s3 / n) < 0.02);
	assert_true(fabs(s4 / n - 3) < 0.05);

	/* mean + std * normal. */
	moert_rng_fill_normal(&r, x, n, 3.0f, 0.5f);
	s1 = s2 = 0;
	for (size_t i = 0; i < n; i++) {
		s1 += x[i];
		s2 += (double)x[i] * x[i];
	}
	s1 /= n;
	assert_true(fabs(s1 - 3) < 0.005);
	assert_true(fabs(sqrt(s2 / n - s1 * s1) - 0.5) < 0.005);

	/* Truncated at mean +- 2 std: sd = 0.8796 std, nothing outside. */
	moert_rng_init(&r, 13, 0);
	moert_rng_fill_trunc_normal(&r, x, n, 1.0f, 0.02f);
	assert_true(r.counter > n && r.counter < n + n / 10);
	s1 = s2 = 0;
	for (size_t i = 0; i < n; i++) {
		assert_true(x[i] >= 1.0f - 0.04f - 1e-6f &&
			    x[i] <= 1.0f + 0.04f + 1e-6f);
		s1 += x[i];
		s2 += (double)x[i] * x[i];
	}
	s1 /= n;
	assert_true(fabs(s1 - 1) < 0.0002);
	assert_true(fabs(sqrt(s2 / n - s1 * s1) / 0.02 - 0.87962) < 0.005);

	/* Uniform [a, b). */
	moert_rng_init(&r, 14, 0);
	moert_rng_fill_uniform(&r, x, n, -3.0f, 5.0f);
	s1 = 0;
	for (size_t i = 0; i < n; i++) {
		assert_true(x[i] >= -3.0f && x[i] < 5.0f);
		s1 += x[i];
	}
	assert_true(fabs(s1 / n - 1) < 0.02);
	free(x);

	/* Bounded integers: unbiased over [0, 10). */
	{
		int counts[10] = {0};
		moert_rng_init(&r, 15, 0);
		for (int i = 0; i < 100000; i++) {
			uint64_t v = moert_rng_next_below(&r, 10);
			assert_true(v < 10);
			counts[v]++;
		}
		for (int i = 0; i < 10; i++)
			assert_true(abs(counts[i] - 10000) < 500);
		assert_true(moert_rng_next_below(&r, 0) == 0);
		assert_true(moert_rng_next_below(&r, 1) == 0);
		assert_true(moert_rng_next_below(&r, UINT64_MAX) < UINT64_MAX);
	}
}

/* ---- checkpoints: a sample with every dtype ------------------------------ */

typedef struct spec {
	const char *name;
	moert_dtype dtype;
	int ndim;
	int64_t shape[3];
	const void *data;
} spec;

enum { N_SPECS = 16 };

typedef struct sample {
	uint8_t b[3];
	uint8_t u8[5];
	int8_t i8[4];
	uint16_t u16[3];
	int16_t i16[3];
	uint16_t f16[2];
	uint16_t bf16[4];
	uint32_t u32[2];
	int32_t i32[6];
	float f32[12];
	uint64_t u64[2];
	int64_t i64[3];
	double f64[2];
	float scalar;
	float odd[1];
	spec specs[N_SPECS];
} sample;

static void sample_init(sample *s)
{
	static const float bf[4] = {1.5f, -0.25f, 3.0f, 100.0f};

	memset(s, 0, sizeof *s);
	memcpy(s->b, "\1\0\1", 3);
	memcpy(s->u8, "\0\1\177\200\377", 5);
	s->i8[0] = -128, s->i8[1] = -1, s->i8[2] = 0, s->i8[3] = 127;
	s->u16[0] = 0, s->u16[1] = 1, s->u16[2] = 65535;
	s->i16[0] = -32768, s->i16[1] = 5, s->i16[2] = 32767;
	s->f16[0] = 0x3C00, s->f16[1] = 0xC000; /* 1.0, -2.0 */
	for (int i = 0; i < 4; i++)
		s->bf16[i] = moert_bf16_from_f32(bf[i]);
	s->u32[0] = 7, s->u32[1] = 4000000000u;
	for (int i = 0; i < 6; i++)
		s->i32[i] = (i - 3) * 1000003;
	for (int i = 0; i < 12; i++)
		s->f32[i] = (float)i * 0.25f - 1.0f;
	s->u64[0] = 1, s->u64[1] = 1ull << 40;
	s->i64[0] = -5, s->i64[1] = 1ll << 40, s->i64[2] = 7;
	s->f64[0] = 0.5, s->f64[1] = -1e300;
	s->scalar = 42.0f;
	s->odd[0] = 1.0f;

	spec specs[N_SPECS] = {
		{"flags", MOERT_DTYPE_BOOL, 1, {3}, s->b},
		{"u8", MOERT_DTYPE_U8, 1, {5}, s->u8},
		{"i8", MOERT_DTYPE_I8, 2, {2, 2}, s->i8},
		{"u16", MOERT_DTYPE_U16, 1, {3}, s->u16},
		{"i16", MOERT_DTYPE_I16, 1, {3}, s->i16},
		{"f16", MOERT_DTYPE_F16, 1, {2}, s->f16},
		{"bf16", MOERT_DTYPE_BF16, 2, {2, 2}, s->bf16},
		{"u32", MOERT_DTYPE_U32, 1, {2}, s->u32},
		{"blocks.0.i32", MOERT_DTYPE_I32, 2, {3, 2}, s->i32},
		{"blocks.0.moe.w1", MOERT_DTYPE_F32, 3, {2, 3, 2}, s->f32},
		{"u64", MOERT_DTYPE_U64, 1, {2}, s->u64},
		{"rng.state", MOERT_DTYPE_I64, 1, {3}, s->i64},
		{"f64", MOERT_DTYPE_F64, 1, {2}, s->f64},
		{"scalar", MOERT_DTYPE_F32, 0, {0}, &s->scalar},
		{"empty", MOERT_DTYPE_F32, 2, {0, 3}, NULL},
		{"na\xc3\xafve \"quoted\" \\ name", MOERT_DTYPE_F32, 1, {1},
		 s->odd},
	};
	memcpy(s->specs, specs, sizeof specs);
}

static size_t spec_bytes(const spec *p)
{
	size_t n = moert_dtype_size(p->dtype);

	for (int i = 0; i < p->ndim; i++)
		n *= (size_t)p->shape[i];
	return n;
}

static void write_sample(const char *path, const sample *s)
{
	moert_error err;
	moert_ckpt_writer *w = moert_ckpt_begin(path, &err);

	assert_non_null(w);
	for (int i = 0; i < N_SPECS; i++) {
		const spec *p = &s->specs[i];
		assert_int_equal(moert_ckpt_add(w, p->name, p->dtype, p->ndim,
						p->shape, p->data),
				 0);
	}
	assert_int_equal(moert_ckpt_meta(w, "step", "1200"), 0);
	assert_int_equal(moert_ckpt_meta(w, "model", "d\xc3\xa9mo \"x\"\n"), 0);
	if (moert_ckpt_finish(w, &err) != 0) {
		print_error("%s\n", err.msg);
		fail();
	}
}

static void check_sample(const char *path, const sample *s)
{
	moert_error err;
	moert_ckpt *c = moert_ckpt_open(path, &err);
	unsigned char buf[256];

	if (!c) {
		print_error("%s\n", err.msg);
		fail();
	}
	assert_int_equal(moert_ckpt_count(c), N_SPECS);
	for (int i = 0; i < N_SPECS; i++) {
		const spec *p = &s->specs[i];
		moert_dtype dt = MOERT_DTYPE_COUNT;
		int ndim = -1;
		const int64_t *shape = NULL;

		assert_string_equal(moert_ckpt_name(c, (size_t)i), p->name);
		assert_true(moert_ckpt_has(c, p->name));
		assert_int_equal(moert_ckpt_info(c, p->name, &dt, &ndim, &shape),
				 0);
		assert_int_equal(dt, p->dtype);
		assert_int_equal(ndim, p->ndim);
		for (int d = 0; d < ndim; d++)
			assert_true(shape[d] == p->shape[d]);
		memset(buf, 0xAA, sizeof buf);
		if (moert_ckpt_get(c, p->name, p->dtype, p->ndim, p->shape, buf,
				   &err) != 0) {
			print_error("%s\n", err.msg);
			fail();
		}
		if (spec_bytes(p))
			assert_memory_equal(buf, p->data, spec_bytes(p));
		assert_int_equal(buf[spec_bytes(p)], 0xAA);
	}
	assert_null(moert_ckpt_name(c, N_SPECS));
	assert_false(moert_ckpt_has(c, "nope"));
	assert_int_equal(moert_ckpt_info(c, "nope", NULL, NULL, NULL), -1);
	assert_string_equal(moert_ckpt_meta_get(c, "step"), "1200");
	assert_string_equal(moert_ckpt_meta_get(c, "model"), "d\xc3\xa9mo \"x\"\n");
	assert_non_null(moert_ckpt_meta_get(c, "moert.crc32c"));
	assert_null(moert_ckpt_meta_get(c, "absent"));
	assert_int_equal(moert_ckpt_meta_count(c), 3);
	assert_string_equal(moert_ckpt_meta_key(c, 0), "step");
	assert_null(moert_ckpt_meta_key(c, 3));
	moert_ckpt_close(c);
}

static unsigned char *sample_file(const char *dir, size_t *n)
{
	sample s;
	char *path = path_in(dir, "sample.safetensors");
	unsigned char *bytes;

	sample_init(&s);
	write_sample(path, &s);
	bytes = read_bytes(path, n);
	unlink(path);
	free(path);
	return bytes;
}

static void test_ckpt_roundtrip(void **state)
{
	char *dir = make_tmpdir();
	char *path = path_in(dir, "ckpt.safetensors");
	sample s;
	unsigned char *bytes;
	size_t n;
	uint64_t hlen = 0;

	(void)state;
	sample_init(&s);
	write_sample(path, &s);
	check_sample(path, &s);

	/* The layout: header length, JSON padded with spaces to 8, data. */
	bytes = read_bytes(path, &n);
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | bytes[i];
	assert_true(hlen % 8 == 0 && 8 + hlen <= n);
	assert_memory_equal(bytes + 8, "{\"__metadata__\":{\"step\":\"1200\"", 30);
	assert_true(bytes[8 + hlen - 1] == '}' || bytes[8 + hlen - 1] == ' ');
	assert_memory_equal(bytes + 8 + hlen, s.b, 3); /* first tensor */
	free(bytes);

	/* bf16 helpers. */
	assert_true(moert_bf16_to_f32(moert_bf16_from_f32(1.5f)) == 1.5f);
	assert_int_equal(moert_bf16_from_f32(1.0f), 0x3F80);
	assert_int_equal(moert_bf16_from_f32(1.00390625f), 0x3F80); /* tie: even */
	assert_int_equal(moert_bf16_from_f32(1.01171875f), 0x3F82); /* tie: even */
	assert_true(isnan(moert_bf16_to_f32(moert_bf16_from_f32(NAN))));
	assert_string_equal(moert_dtype_name(MOERT_DTYPE_BF16), "BF16");
	assert_string_equal(moert_dtype_name(MOERT_DTYPE_COUNT), "?");
	assert_int_equal(moert_dtype_size(MOERT_DTYPE_F64), 8);
	{
		moert_dtype d = MOERT_DTYPE_COUNT;
		assert_int_equal(moert_dtype_parse("I32", &d), 0);
		assert_int_equal(d, MOERT_DTYPE_I32);
		assert_int_equal(moert_dtype_parse("F8_E4M3", &d), -1);
	}
	free(path);
	remove_tmpdir(dir);
}

static void test_ckpt_empty_and_crc(void **state)
{
	char *dir = make_tmpdir();
	char *path = path_in(dir, "c.safetensors");
	moert_error err;
	moert_ckpt_writer *w;
	moert_ckpt *c;
	int64_t nine = 9;

	(void)state;
	/* No tensors at all. */
	w = moert_ckpt_begin(path, &err);
	assert_int_equal(moert_ckpt_finish(w, &err), 0);
	c = moert_ckpt_open(path, &err);
	assert_non_null(c);
	assert_int_equal(moert_ckpt_count(c), 0);
	moert_ckpt_close(c);

	/* CRC-32C("123456789") = e3069283, the standard check value. */
	w = moert_ckpt_begin(path, &err);
	moert_ckpt_add(w, "digits", MOERT_DTYPE_U8, 1, &nine, "123456789");
	assert_int_equal(moert_ckpt_finish(w, &err), 0);
	c = moert_ckpt_open(path, &err);
	assert_non_null(c);
	assert_string_equal(moert_ckpt_meta_get(c, "moert.crc32c"), "e3069283");
	moert_ckpt_close(c);

	/* A larger tensor: the checksum over several chunks. */
	{
		size_t n = 3u << 20;
		int64_t shape = (int64_t)n;
		unsigned char *big = malloc(n), *back = malloc(n);
		assert_non_null(big);
		assert_non_null(back);
		for (size_t i = 0; i < n; i++)
			big[i] = (unsigned char)(i * 2654435761u >> 13);
		w = moert_ckpt_begin(path, &err);
		moert_ckpt_add(w, "big", MOERT_DTYPE_U8, 1, &shape, big);
		assert_int_equal(moert_ckpt_finish(w, &err), 0);
		c = moert_ckpt_open(path, &err);
		assert_non_null(c);
		assert_int_equal(moert_ckpt_get(c, "big", MOERT_DTYPE_U8, 1,
						&shape, back, &err),
				 0);
		assert_memory_equal(big, back, n);
		moert_ckpt_close(c);
		free(big);
		free(back);
	}
	free(path);
	remove_tmpdir(dir);
}

static void test_ckpt_get_rows(void **state)
{
	char *dir = make_tmpdir();
	char *path = path_in(dir, "experts.safetensors");
	float w1[4][3][2], back[2][3][2];
	int64_t shape[3] = {4, 3, 2};
	moert_error err;
	moert_ckpt_writer *w;
	moert_ckpt *c;

	(void)state;
	for (int e = 0; e < 4; e++)
		for (int i = 0; i < 3; i++)
			for (int k = 0; k < 2; k++)
				w1[e][i][k] = (float)(100 * e + 10 * i + k);
	w = moert_ckpt_begin(path, &err);
	moert_ckpt_add(w, "experts.w1", MOERT_DTYPE_F32, 3, shape, w1);
	assert_int_equal(moert_ckpt_finish(w, &err), 0);
	c = moert_ckpt_open(path, &err);
	assert_non_null(c);
	assert_int_equal(moert_ckpt_get_rows(c, "experts.w1", MOERT_DTYPE_F32, 3,
					     shape, 1, 2, back, &err),
			 0);
	assert_memory_equal(back, w1[1], sizeof back);
	assert_int_equal(moert_ckpt_get_rows(c, "experts.w1", MOERT_DTYPE_F32, 3,
					     shape, 4, 0, back, &err),
			 0);
	assert_int_equal(moert_ckpt_get_rows(c, "experts.w1", MOERT_DTYPE_F32, 3,
					     shape, 3, 2, back, &err),
			 -1);
	assert_contains(err.msg, "tensor 'experts.w1': rows [3, 5) are out of "
				 "range for a first dimension of 4");
	assert_int_equal(moert_ckpt_get_rows(c, "experts.w1", MOERT_DTYPE_F32, 3,
					     shape, -1, 1, back, &err),
			 -1);
	moert_ckpt_close(c);
	free(path);
	remove_tmpdir(dir);
}

static void test_ckpt_mismatch_messages(void **state)
{
	char *dir = make_tmpdir();
	char *path = path_in(dir, "m.safetensors");
	float data[32] = {0};
	int64_t shape[2] = {4, 8}, other[2] = {4, 6}, flat[1] = {32};
	char expect[600];
	moert_error err;
	moert_ckpt_writer *w;
	moert_ckpt *c;

	(void)state;
	w = moert_ckpt_begin(path, &err);
	moert_ckpt_add(w, "w", MOERT_DTYPE_F32, 2, shape, data);
	assert_int_equal(moert_ckpt_finish(w, &err), 0);
	c = moert_ckpt_open(path, &err);
	assert_non_null(c);

	assert_int_equal(moert_ckpt_get(c, "w", MOERT_DTYPE_F32, 2, other, data,
					&err),
			 -1);
	snprintf(expect, sizeof expect,
		 "%s: tensor 'w': expected F32 [4, 6], found F32 [4, 8]", path);
	assert_string_equal(err.msg, expect);

	assert_int_equal(moert_ckpt_get(c, "w", MOERT_DTYPE_BF16, 2, shape, data,
					&err),
			 -1);
	snprintf(expect, sizeof expect,
		 "%s: tensor 'w': expected BF16 [4, 8], found F32 [4, 8]", path);
	assert_string_equal(err.msg, expect);

	assert_int_equal(moert_ckpt_get(c, "w", MOERT_DTYPE_F32, 1, flat, data,
					&err),
			 -1);
	snprintf(expect, sizeof expect,
		 "%s: tensor 'w': expected F32 [32], found F32 [4, 8]", path);
	assert_string_equal(err.msg, expect);

	assert_int_equal(moert_ckpt_get(c, "v", MOERT_DTYPE_F32, 2, shape, data,
					&err),
			 -1);
	snprintf(expect, sizeof expect, "%s: no tensor 'v' in the checkpoint",
		 path);
	assert_string_equal(err.msg, expect);
	moert_ckpt_close(c);
	free(path);
	remove_tmpdir(dir);
}

static void test_ckpt_writer_errors(void **state)
{
	char *dir = make_tmpdir();
	char *path = path_in(dir, "w.safetensors");
	float x[2] = {1, 2};
	int64_t two = 2, neg[2] = {2, -1}, huge[2] = {INT64_MAX, 4};
	moert_error err;
	moert_ckpt_writer *w;

	(void)state;
	w = moert_ckpt_begin(path, &err);
	assert_int_equal(moert_ckpt_add(w, "x", MOERT_DTYPE_F32, 1, &two, x), 0);
	assert_int_equal(moert_ckpt_add(w, "x", MOERT_DTYPE_F32, 1, &two, x), 0);
	assert_int_equal(moert_ckpt_finish(w, &err), -1);
	assert_contains(err.msg, ": duplicate tensor name 'x'");
	assert_starts_with(err.msg, path);
	assert_int_equal(count_dir_entries(dir), 0);

	struct {
		const char *name;
		moert_dtype dtype;
		int ndim;
		const int64_t *shape;
		const void *data;
		const char *expect;
	} bad[] = {
		{"", MOERT_DTYPE_F32, 1, &two, x, "tensor with an empty name"},
		{"__metadata__", MOERT_DTYPE_F32, 1, &two, x,
		 "reserved tensor name '__metadata__'"},
		{"bad\xff", MOERT_DTYPE_F32, 1, &two, x, "not valid UTF-8"},
		{"t", MOERT_DTYPE_COUNT, 1, &two, x, "bad dtype for tensor 't'"},
		{"t", MOERT_DTYPE_F32, -1, &two, x, "bad number of dimensions"},
		{"t", MOERT_DTYPE_F32, 65, &two, x, "bad number of dimensions"},
		{"t", MOERT_DTYPE_F32, 2, neg, x, "negative or oversized shape"},
		{"t", MOERT_DTYPE_F32, 2, huge, x, "negative or oversized shape"},
		{"t", MOERT_DTYPE_F32, 1, &two, NULL, "no data for tensor 't'"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		w = moert_ckpt_begin(path, &err);
		assert_int_equal(moert_ckpt_add(w, bad[i].name, bad[i].dtype,
						bad[i].ndim, bad[i].shape,
						bad[i].data),
				 -1);
		/* A later good call does not hide the first problem. */
		moert_ckpt_add(w, "ok", MOERT_DTYPE_F32, 1, &two, x);
		assert_int_equal(moert_ckpt_finish(w, &err), -1);
		assert_contains(err.msg, bad[i].expect);
		assert_int_equal(count_dir_entries(dir), 0);
	}

	w = moert_ckpt_begin(path, &err);
	assert_int_equal(moert_ckpt_meta(w, "moert.crc32c", "x"), -1);
	assert_int_equal(moert_ckpt_finish(w, &err), -1);
	assert_contains(err.msg, "reserved metadata key 'moert.crc32c'");
	w = moert_ckpt_begin(path, &err);
	assert_int_equal(moert_ckpt_meta(w, "k", "1"), 0);
	assert_int_equal(moert_ckpt_meta(w, "k", "2"), -1);
	moert_ckpt_abort(w);
	moert_ckpt_abort(NULL);
	assert_null(moert_ckpt_begin("", &err));
	assert_string_equal(err.msg, "checkpoint: empty path");
	assert_int_equal(moert_ckpt_add(NULL, "x", MOERT_DTYPE_F32, 1, &two, x),
			 -1);
	assert_int_equal(moert_ckpt_meta(NULL, "k", "v"), -1);
	assert_int_equal(moert_ckpt_finish(NULL, &err), -1);
	assert_contains(err.msg, "moert_ckpt_begin failed");
	assert_int_equal(count_dir_entries(dir), 0);
	free(path);
	remove_tmpdir(dir);
}

/* ---- checkpoints: atomicity ---------------------------------------------- */

static void write_one(const char *path, float value, moert_error *err,
		      int *rc)
{
	float x[4] = {value, value, value, value};
	int64_t four = 4;
	moert_ckpt_writer *w = moert_ckpt_begin(path, err);

	assert_non_null(w);
	moert_ckpt_add(w, "x", MOERT_DTYPE_F32, 1, &four, x);
	*rc = moert_ckpt_finish(w, err);
}

static float read_one(const char *path)
{
	moert_error err;
	moert_ckpt *c = moert_ckpt_open(path, &err);
	int64_t four = 4;
	float x[4];

	if (!c) {
		print_error("%s\n", err.msg);
		fail();
	}
	assert_int_equal(moert_ckpt_get(c, "x", MOERT_DTYPE_F32, 1, &four, x,
					&err),
			 0);
	moert_ckpt_close(c);
	return x[0];
}

static void test_ckpt_atomic_replace(void **state)
{
	char *dir = make_tmpdir();
	char *path = path_in(dir, "ckpt.safetensors");
	moert_error err;
	int rc;

	(void)state;
	write_one(path, 1.0f, &err, &rc);
	assert_int_equal(rc, 0);
	write_one(path, 2.0f, &err, &rc);
	assert_int_equal(rc, 0);
	assert_true(read_one(path) == 2.0f);
	assert_int_equal(count_dir_entries(dir), 1); /* no temporary left */
	free(path);
	remove_tmpdir(dir);
}

static void test_ckpt_atomic_failures(void **state)
{
	char *dir = make_tmpdir();
	char *path = path_in(dir, "ckpt.safetensors");
	char *missing = path_in(dir, "no/such/dir/ckpt.safetensors");
	char *isdir = path_in(dir, "taken");
	moert_error err;
	int rc;

	(void)state;
	write_one(path, 1.0f, &err, &rc);
	assert_int_equal(rc, 0);

	/* The directory does not exist. */
	write_one(missing, 2.0f, &err, &rc);
	assert_int_equal(rc, -1);
	assert_starts_with(err.msg, missing);
	assert_contains(err.msg, "(No such file or directory)");

	/* The target is a directory: the rename fails after all was written;
	 * the temporary file must go. */
	assert_int_equal(mkdir(isdir, 0755), 0);
	write_one(isdir, 2.0f, &err, &rc);
	assert_int_equal(rc, -1);
	assert_starts_with(err.msg, isdir);
	assert_contains(err.msg, "rename temporary file failed (");
	assert_int_equal(count_dir_entries(dir), 2);

	/* The disk fills up half-way (RLIMIT_FSIZE, in a child process): the
	 * old checkpoint stays intact and no temporary file is left. */
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct rlimit lim = {4096, 4096};
		size_t n = 1 << 16;
		float *big = calloc(n, sizeof *big);
		int64_t shape = (int64_t)n;
		moert_ckpt_writer *w;
		signal(SIGXFSZ, SIG_IGN);
		setrlimit(RLIMIT_FSIZE, &lim);
		w = moert_ckpt_begin(path, &err);
		moert_ckpt_add(w, "x", MOERT_DTYPE_F32, 1, &shape, big);
		rc = moert_ckpt_finish(w, &err);
		_exit(rc == -1 && strstr(err.msg, "write failed (File too large)")
			      ? 0
			      : 1);
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_true(read_one(path) == 1.0f);
	assert_int_equal(count_dir_entries(dir), 2);

	/* A directory we may not write to (meaningless as root). */
	if (geteuid() != 0) {
		assert_int_equal(chmod(dir, 0555), 0);
		write_one(path, 3.0f, &err, &rc);
		assert_int_equal(chmod(dir, 0755), 0);
		assert_int_equal(rc, -1);
		assert_contains(err.msg, "(Permission denied)");
		assert_true(read_one(path) == 1.0f);
		assert_int_equal(count_dir_entries(dir), 2);
	}
	free(path);
	free(missing);
	free(isdir);
	remove_tmpdir(dir);
}

/* ---- checkpoints: hostile files ------------------------------------------ */

/* Opens path, which must be refused with a message naming it; returns the
 * message. */
static const char *refused(const char *path, moert_error *err)
{
	moert_ckpt *c = moert_ckpt_open(path, err);

	if (c) {
		print_error("%s: accepted, should be refused\n", path);
		moert_ckpt_close(c);
		fail();
	}
	assert_starts_with(err->msg, path);
	assert_true(strlen(err->msg) > strlen(path) + 5);
	return err->msg;
}

static void test_ckpt_truncated(void **state)
{
	char *dir = make_tmpdir();
	char *path = path_in(dir, "ckpt.safetensors");
	size_t n, hlen = 0;
	unsigned char *bytes = sample_file(dir, &n);
	moert_error err;
	char expect[200];

	(void)state;
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | bytes[i];
	for (size_t len = 0; len < n; len++) {
		write_bytes(path, bytes, len);
		refused(path, &err);
		if (len == 0)
			assert_contains(err.msg, "(empty file)");
		else if (len < 8)
			assert_contains(err.msg, "too short for the 8-byte header");
		else if (len < 8 + hlen)
			assert_contains(err.msg, "exceeds file size)");
		else {
			snprintf(expect, sizeof expect,
				 ": truncated: header says %zu bytes of tensor "
				 "data, file has %zu",
				 n - 8 - hlen, len - 8 - hlen);
			assert_contains(err.msg, expect);
		}
	}
	/* One byte too many is refused too. */
	bytes = realloc(bytes, n + 1);
	bytes[n] = 0;
	write_bytes(path, bytes, n + 1);
	assert_contains(refused(path, &err), "(1 bytes after the last tensor)");
	write_bytes(path, bytes, n);
	moert_ckpt_close(moert_ckpt_open(path, &err));
	free(bytes);
	free(path);
	remove_tmpdir(dir);
}

/* Opens path; if it is accepted, every tensor must read back with the shape
 * the checkpoint reports. Returns whether it was accepted. */
static bool open_consistently(const char *path)
{
	moert_error err;
	moert_ckpt *c = moert_ckpt_open(path, &err);
	static unsigned char buf[1 << 16];

	if (!c) {
		assert_starts_with(err.msg, path);
		return false;
	}
	for (size_t i = 0; i < moert_ckpt_count(c); i++) {
		const char *name = moert_ckpt_name(c, i);
		moert_dtype dt = MOERT_DTYPE_COUNT;
		int ndim = -1;
		const int64_t *shape = NULL;
		size_t bytes;

		assert_int_equal(moert_ckpt_info(c, name, &dt, &ndim, &shape), 0);
		bytes = moert_dtype_size(dt);
		for (int d = 0; d < ndim; d++)
			bytes *= (size_t)shape[d];
		assert_true(bytes <= sizeof buf);
		assert_int_equal(moert_ckpt_get(c, name, dt, ndim, shape, buf,
						&err),
				 0);
	}
	moert_ckpt_close(c);
	return true;
}

static void test_ckpt_corrupted(void **state)
{
	static const unsigned char subst[] = {'"', '\\', '{', '}', '[', ']',
					      ',', ':', '0', '9', 'u', ' ',
					      0, 0x80, 0xff, '-'};
	char *dir = make_tmpdir();
	char *path = path_in(dir, "ckpt.safetensors");
	size_t n, hlen = 0;
	unsigned char *bytes = sample_file(dir, &n);
	unsigned char *copy = malloc(n);
	int accepted = 0, trials = 0;
	moert_rng r;

	(void)state;
	assert_non_null(copy);
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | bytes[i];

	/* Every header byte replaced by each JSON-significant character. */
	for (size_t at = 0; at < 8 + hlen; at++) {
		for (size_t k = 0; k < sizeof subst; k++) {
			if (bytes[at] == subst[k])
				continue;
			memcpy(copy, bytes, n);
			copy[at] = subst[k];
			write_bytes(path, copy, n);
			accepted += open_consistently(path);
			trials++;
		}
	}
	/* Random flips of 1 to 3 bytes anywhere. A flip in the data must be
	 * caught by the checksum. */
	moert_rng_init(&r, 2024, 0);
	for (int t = 0; t < 3000; t++) {
		int flips = 1 + (int)moert_rng_next_below(&r, 3);
		bool data_only = true;
		memcpy(copy, bytes, n);
		for (int f = 0; f < flips; f++) {
			size_t at = (size_t)moert_rng_next_below(&r, n);
			copy[at] ^= (unsigned char)(1 + moert_rng_next_below(&r, 255));
			data_only &= at >= 8 + hlen;
		}
		write_bytes(path, copy, n);
		if (open_consistently(path)) {
			accepted++;
			assert_false(data_only);
		}
		trials++;
	}
	/* Some header edits keep a valid file (a changed letter in a name),
	 * most do not. */
	assert_true(accepted > 0 && accepted < trials / 2);
	free(copy);
	free(bytes);
	free(path);
	remove_tmpdir(dir);
}

static void test_ckpt_foreign_files(void **state)
{
	static const unsigned char png[] = {
		0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13,
		'I',  'H', 'D', 'R', 0,    0,    0,    1,    0, 0, 0, 1,
		8,    2,   0,   0,   0,    0x90, 0x77, 0x53, 0xde};
	static const char text[] = "hello, this is a text file\nwith lines\n";
	char *dir = make_tmpdir();
	char *path = path_in(dir, "x.bin");
	char expect[300];
	moert_error err;

	(void)state;
	write_bytes(path, png, sizeof png);
	assert_contains(refused(path, &err),
			": not a safetensors checkpoint (header length ");
	assert_contains(err.msg, "exceeds file size)");

	write_bytes(path, text, strlen(text));
	snprintf(expect, sizeof expect,
		 "%s: not a safetensors checkpoint (header length "
		 "8367736964726416744 exceeds file size)", /* "hello, t" */
		 path);
	assert_string_equal(refused(path, &err), expect);

	write_bytes(path, "", 0);
	snprintf(expect, sizeof expect,
		 "%s: not a safetensors checkpoint (empty file)", path);
	assert_string_equal(refused(path, &err), expect);

	assert_contains(refused(dir, &err), "(a directory)");

	unlink(path);
	snprintf(expect, sizeof expect,
		 "%s: cannot open checkpoint (No such file or directory)", path);
	assert_string_equal(refused(path, &err), expect);
	free(path);
	remove_tmpdir(dir);
}

/* Writes a file with the given header text (padded to 8) and data_len zero
 * bytes of data (or `data` if given). */
static void write_raw_ckpt(const char *path, const char *header, size_t hlen,
			   size_t data_len, const void *data)
{
	size_t padded = (hlen + 7) / 8 * 8;
	unsigned char *buf = calloc(1, 8 + padded + data_len + 1);

	assert_non_null(buf);
	for (int i = 0; i < 8; i++)
		buf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
	memcpy(buf + 8, header, hlen);
	memset(buf + 8 + hlen, ' ', padded - hlen);
	if (data)
		memcpy(buf + 8 + padded, data, data_len);
	write_bytes(path, buf, 8 + padded + data_len);
	free(buf);
}

static void test_ckpt_bad_headers(void **state)
{
#define T(name, shape, offs) \
	"\"" name "\":{\"dtype\":\"F32\",\"shape\":" shape \
	",\"data_offsets\":" offs "}"
	static const struct {
		const char *header;
		size_t data;
		const char *expect; /* NULL: accepted */
	} cases[] = {
		{"{" T("a", "[2]", "[0,8]") "}", 8, NULL},
		{" {" T("a", "[2]", "[0,8]") "}", 8,
		 "(header does not start with '{')"},
		{"{ \"a\" : { \"shape\" : [ 2 ] , \"dtype\" : \"F32\" ,"
		 " \"data_offsets\" : [ 0 , 8 ] } }\n",
		 8, NULL},
		{"{}", 0, NULL},
		{"{\"__metadata__\":{}}", 0, NULL},
		{"{" T("a", "[2]", "[0,8]") "}", 4,
		 ": truncated: header says 8 bytes of tensor data, file has 4"},
		{"{" T("a", "[2]", "[0,8]") "}", 12,
		 "(4 bytes after the last tensor)"},
		{"{" T("a", "[3]", "[0,8]") "}", 8,
		 "tensor 'a' (F32 [3]) needs 12 bytes but data_offsets [0, 8] "
		 "hold 8"},
		{"{\"a\":{\"dtype\":\"F99\",\"shape\":[2],\"data_offsets\":[0,8]}}",
		 8, "tensor 'a': unknown dtype 'F99'"},
		{"{" T("a", "[2]", "[0,8]") "," T("b", "[2]", "[4,12]") "}", 12,
		 "tensor 'b' overlaps tensor 'a'"},
		{"{" T("a", "[2]", "[0,8]") "," T("b", "[1]", "[12,16]") "}", 16,
		 "4 bytes of data before tensor 'b' belong to no tensor"},
		{"{" T("b", "[1]", "[4,8]") "}", 8,
		 "4 bytes of data before tensor 'b' belong to no tensor"},
		{"{" T("a", "[2]", "[8,0]") "}", 8,
		 "data_offsets [8, 0] that end before they begin"},
		{"{" T("a", "[-1]", "[0,8]") "}", 8, "negative number at byte"},
		{"{" T("a", "[1.5]", "[0,8]") "}", 8, "expected an integer"},
		{"{" T("a", "[1e1]", "[0,8]") "}", 8, "expected an integer"},
		{"{" T("a", "[02]", "[0,8]") "}", 8,
		 "not JSON: number with a leading zero"},
		{"{" T("a", "[4294967296,4294967296]", "[0,0]") "}", 0,
		 "tensor 'a' of shape [4294967296, 4294967296] is too large"},
		{"{" T("a", "[18446744073709551616]", "[0,0]") "}", 0,
		 "number too large"},
		{"{" T("a", "[9223372036854775808]", "[0,0]") "}", 0,
		 "tensor 'a': dimension too large"},
		{"{" T("a", "[2]", "[0,8]") "," T("a", "[2]", "[8,16]") "}", 16,
		 "duplicate tensor 'a'"},
		{"{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0,
		 "duplicate metadata key 'k'"},
		{"{\"__metadata__\":{\"k\":1}}", 0, "metadata 'k' is not a string"},
		{"{\"__metadata__\":{},\"__metadata__\":{}}", 0,
		 "repeated __metadata__"},
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4],"
		 "\"x\":1}}",
		 4, "tensor 'a': unexpected or repeated field 'x'"},
		{"{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[],"
		 "\"data_offsets\":[0,4]}}",
		 4, "unexpected or repeated field 'dtype'"},
		{"{\"a\":{\"dtype\":\"F32\",\"shape\":[]}}", 0,
		 "tensor 'a': missing data_offsets"},
		{"{\"a\":{}}", 0, "tensor 'a': missing dtype"},
		{"{" T("a", "[2]", "[0,4,8]") "}", 8,
		 "data_offsets has more than 2 entries"},
		{"{" T("a", "[2]", "[0]") "}", 8,
		 "tensor 'a': data_offsets needs 2 entries"},
		{"{" T("a", "[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,"
			    "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,"
			    "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]",
		       "[0,4]") "}",
		 4, "shape has more than 64 entries"},
		{"{}x", 0, "unexpected text after the header object"},
		{"{} {}", 0, "unexpected text after the header object"},
		{"{\"a\" 1}", 0, "not JSON: expected ':'"},
		{"{\"a\":[]}", 0, "not JSON: expected '{'"},
		{"{\"a\":{\"dtype\":\"F32\"", 0,
		 "not JSON: expected ',' but the header ended"},
		{"{\"a\":{\"dtype\":\"F32\",}}", 0, "not JSON: expected '\"'"},
		{"{\"\\q\":{}}", 0, "not JSON: bad escape '\\q'"},
		{"{\"\\u12\":{}}", 0, "not JSON: bad \\u escape"},
		{"{\"\\udc00\":{}}", 0, "lone low surrogate"},
		{"{\"\\ud800x\":{}}", 0, "high surrogate without a low surrogate"},
		{"{\"\\ud800\\u0041\":{}}", 0,
		 "high surrogate without a low surrogate"},
		{"{\"\xff\":{}}", 0, "not JSON: string is not valid UTF-8"},
		{"{\"\xc0\x80\":{}}", 0, "not JSON: string is not valid UTF-8"},
		{"{\"\xed\xa0\x80\":{}}", 0, "not JSON: string is not valid UTF-8"},
		{"{\"a\tb\":{}}", 0, "not JSON: control character in string"},
		{"{\"abc", 0, "not JSON: unterminated string"},
		{"{\"abc\\", 0, "not JSON: unterminated string"},
		{"{\"a\\u0000b\":{}}", 0, "tensor name contains a NUL"},
		{"{\"__metadata__\":{\"k\":\"a\\u0000\"}}", 0,
		 "metadata 'k' contains a NUL"},
		{"{\"a\":{\"dtype\":\"F\\u00332\",\"shape\":[2],"
		 "\"data_offsets\":[0,8]}}",
		 8, NULL},
		{"{\"\\u00e9\\ud83d\\ude00\\n\\/\":{\"dtype\":\"U8\",\"shape\":"
		 "[1],\"data_offsets\":[0,1]}}",
		 1, NULL},
		{"{\"__metadata__\":{\"moert.crc32c\":\"00000000\"},"
		 "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
		 1, ": corrupted: tensor data does not match its checksum "
		    "(moert.crc32c 00000000, data 527d5351)"},
		{"{\"__metadata__\":{\"moert.crc32c\":\"xyz\"}}", 0,
		 ": corrupted: bad moert.crc32c 'xyz'"},
		{"{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
		 "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
		 0, "not JSON: expected '{'"},
	};
#undef T
	char *dir = make_tmpdir();
	char *path = path_in(dir, "h.safetensors");
	moert_error err;

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		moert_ckpt *c;
		write_raw_ckpt(path, cases[i].header, strlen(cases[i].header),
			       cases[i].data, NULL);
		c = moert_ckpt_open(path, &err);
		if (!cases[i].expect) {
			if (!c) {
				print_error("case %zu: %s\n", i, err.msg);
				fail();
			}
			assert_true(open_consistently(path));
			moert_ckpt_close(c);
			continue;
		}
		if (c) {
			print_error("case %zu accepted: %s\n", i, cases[i].header);
			moert_ckpt_close(c);
			fail();
		}
		assert_starts_with(err.msg, path);
		if (!strstr(err.msg, cases[i].expect)) {
			print_error("case %zu: expected \"%s\" in \"%s\"\n", i,
				    cases[i].expect, err.msg);
			fail();
		}
	}

	/* The escaped name decodes to UTF-8. */
	write_raw_ckpt(path,
		       "{\"\\u00e9\\ud83d\\ude00\":{\"dtype\":\"U8\",\"shape\":[1],"
		       "\"data_offsets\":[0,1]}}",
		       strlen("{\"\\u00e9\\ud83d\\ude00\":{\"dtype\":\"U8\","
			      "\"shape\":[1],\"data_offsets\":[0,1]}}"),
		       1, "\x2a");
	{
		moert_ckpt *c = moert_ckpt_open(path, &err);
		unsigned char v = 0;
		int64_t one = 1;
		assert_non_null(c);
		assert_string_equal(moert_ckpt_name(c, 0),
				    "\xc3\xa9\xf0\x9f\x98\x80");
		assert_int_equal(moert_ckpt_get(c, "\xc3\xa9\xf0\x9f\x98\x80",
						MOERT_DTYPE_U8, 1, &one, &v,
						&err),
				 0);
		assert_int_equal(v, 0x2a);
		moert_ckpt_close(c);
	}

	/* A header length above the 100 MB limit, in a sparse file. */
	{
		unsigned char len_le[8];
		uint64_t big = (uint64_t)MOERT_CKPT_MAX_HEADER + 8;
		int fd;
		for (int i = 0; i < 8; i++)
			len_le[i] = (unsigned char)(big >> (8 * i));
		write_bytes(path, len_le, 8);
		fd = open(path, O_WRONLY);
		assert_true(fd >= 0);
		assert_int_equal(ftruncate(fd, (off_t)(big + 16)), 0);
		close(fd);
		assert_contains(refused(path, &err),
				"(header length 100000008 exceeds the limit of "
				"100000000 bytes)");
	}
	free(path);
	remove_tmpdir(dir);
}

/* ---- checkpoints: PyTorch reads ours, we read PyTorch's ------------------ */

static bool have_torch(void)
{
	return access("/usr/bin/python3", X_OK) == 0 &&
	       system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0;
}

static char *tool_path(void)
{
	const char *top = getenv("MOERT_TOP_SRCDIR");
	char *p;

	if (!top || !*top)
		top = MOERT_TOP_SRCDIR;
	p = malloc(strlen(top) + 40);
	assert_non_null(p);
	sprintf(p, "%s/tests/tools/ckpt_check.py", top);
	return p;
}

static double spec_sum(const spec *p)
{
	size_t n = spec_bytes(p) / moert_dtype_size(p->dtype);
	double s = 0;

	for (size_t i = 0; i < n; i++) {
		const unsigned char *b = p->data;
		switch (p->dtype) {
		case MOERT_DTYPE_BOOL:
		case MOERT_DTYPE_U8: s += ((const uint8_t *)b)[i]; break;
		case MOERT_DTYPE_I8: s += ((const int8_t *)b)[i]; break;
		case MOERT_DTYPE_U16: s += ((const uint16_t *)b)[i]; break;
		case MOERT_DTYPE_I16: s += ((const int16_t *)b)[i]; break;
		case MOERT_DTYPE_F16:
			s += ((const uint16_t *)b)[i] == 0x3C00 ? 1.0 : -2.0;
			break;
		case MOERT_DTYPE_BF16:
			s += moert_bf16_to_f32(((const uint16_t *)b)[i]);
			break;
		case MOERT_DTYPE_U32: s += ((const uint32_t *)b)[i]; break;
		case MOERT_DTYPE_I32: s += ((const int32_t *)b)[i]; break;
		case MOERT_DTYPE_F32: s += ((const float *)b)[i]; break;
		case MOERT_DTYPE_U64: s += (double)((const uint64_t *)b)[i]; break;
		case MOERT_DTYPE_I64: s += (double)((const int64_t *)b)[i]; break;
		case MOERT_DTYPE_F64: s += ((const double *)b)[i]; break;
		case MOERT_DTYPE_COUNT: break;
		}
	}
	return s;
}

static void test_ckpt_pytorch_reads_ours(void **state)
{
	char *dir, *path, *tool, cmd[1200], line[1024];
	sample s;
	FILE *p;
	int i = 0, status;
	bool ok = false;

	(void)state;
	if (!have_torch()) {
		print_message("/usr/bin/python3 has no torch: skipped\n");
		skip();
	}
	dir = make_tmpdir();
	path = path_in(dir, "ours.safetensors");
	tool = tool_path();
	sample_init(&s);
	write_sample(path, &s);
	snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' '%s'", tool, path);
	p = popen(cmd, "r");
	assert_non_null(p);
	while (fgets(line, sizeof line, p)) {
		if (strncmp(line, "tensor ", 7) == 0) {
			const spec *sp = &s.specs[i++];
			char want[200], *at, *sum;
			size_t used;
			assert_true(i <= N_SPECS);
			/* "tensor NAME DTYPE [D0, D1] sum=X": compare from
			 * the dtype on (names may be \u-escaped). */
			used = (size_t)snprintf(want, sizeof want, " %s [",
						moert_dtype_name(sp->dtype));
			for (int d = 0; d < sp->ndim; d++)
				used += (size_t)snprintf(want + used,
							 sizeof want - used,
							 "%s%" PRId64,
							 d ? ", " : "",
							 sp->shape[d]);
			snprintf(want + used, sizeof want - used, "] sum=");
			at = strstr(line, want);
			if (!at) {
				print_error("expected \"%s\" in %s", want, line);
				fail();
			}
			sum = at + strlen(want);
			assert_true(strtod(sum, NULL) == spec_sum(sp));
		} else if (strncmp(line, "OK ", 3) == 0) {
			ok = true;
		}
	}
	status = pclose(p);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_true(ok);
	assert_int_equal(i, N_SPECS);
	free(tool);
	free(path);
	remove_tmpdir(dir);
}

static void test_ckpt_we_read_pytorchs(void **state)
{
	char *dir, *path, *tool, cmd[1200];
	moert_error err;
	moert_ckpt *c;
	float f32[6], scalar;
	int64_t i64[4];
	uint16_t bf16[3];
	uint8_t u8[5];
	double f64[2];
	int32_t i32[4];
	const int64_t s23[2] = {2, 3}, s4[1] = {4}, s3[1] = {3}, s5[1] = {5},
		      s2[1] = {2}, s03[2] = {0, 3}, s22[2] = {2, 2};

	(void)state;
	if (!have_torch()) {
		print_message("/usr/bin/python3 has no torch: skipped\n");
		skip();
	}
	dir = make_tmpdir();
	path = path_in(dir, "theirs.safetensors");
	tool = tool_path();
	snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' --write '%s'", tool,
		 path);
	assert_int_equal(system(cmd), 0);
	c = moert_ckpt_open(path, &err);
	if (!c) {
		print_error("%s\n", err.msg);
		fail();
	}
	assert_int_equal(moert_ckpt_count(c), 8);
	assert_null(moert_ckpt_meta_get(c, "moert.crc32c"));
	assert_string_equal(moert_ckpt_meta_get(c, "format"), "pt");
	assert_string_equal(moert_ckpt_meta_get(c, "note"),
			    "caf\xc3\xa9 \"quoted\"\n");
	assert_int_equal(moert_ckpt_get(c, "a.f32", MOERT_DTYPE_F32, 2, s23, f32,
					&err),
			 0);
	for (int i = 0; i < 6; i++)
		assert_true(f32[i] == 0.5f * (float)i);
	assert_int_equal(moert_ckpt_get(c, "b.i64", MOERT_DTYPE_I64, 1, s4, i64,
					&err),
			 0);
	assert_true(i64[0] == -2 && i64[1] == -1 && i64[2] == 0 &&
		    i64[3] == 1ll << 40);
	assert_int_equal(moert_ckpt_get(c, "c.bf16", MOERT_DTYPE_BF16, 1, s3,
					bf16, &err),
			 0);
	assert_true(bf16[0] == 0x3F80 && bf16[1] == 0xC020 && bf16[2] == 0x3E20);
	assert_int_equal(moert_ckpt_get(c, "d.u8", MOERT_DTYPE_U8, 1, s5, u8,
					&err),
			 0);
	assert_memory_equal(u8, "\0\1\177\200\377", 5);
	assert_int_equal(moert_ckpt_get(c, "na\xc3\xafve/\xe5\x90\x8d",
					MOERT_DTYPE_F64, 1, s2, f64, &err),
			 0);
	assert_true(f64[0] == 3.25 && f64[1] == -1e300);
	assert_int_equal(moert_ckpt_get(c, "scalar", MOERT_DTYPE_F32, 0, NULL,
					&scalar, &err),
			 0);
	assert_true(scalar == 7.0f);
	assert_int_equal(moert_ckpt_get(c, "empty", MOERT_DTYPE_F32, 2, s03,
					NULL, &err),
			 0);
	assert_int_equal(moert_ckpt_get(c, "i32", MOERT_DTYPE_I32, 2, s22, i32,
					&err),
			 0);
	assert_true(i32[0] == 1 && i32[1] == -2 && i32[2] == 3 && i32[3] == -4);
	moert_ckpt_close(c);
	free(tool);
	free(path);
	remove_tmpdir(dir);
}

/* ---- JSON writer and metrics --------------------------------------------- */

static void test_jw_values(void **state)
{
	moert_jw j;
	const double d[] = {1.5, NAN, -INFINITY, 0.1};
	const float f[] = {0.1f, 1.0f / 3, 16777216.0f};
	const int64_t m[6] = {1, 2, 3, 4, 5, 6};
	const int32_t i32[2] = {-7, INT32_MAX};

	(void)state;
	moert_jw_init(&j);
	moert_jw_object_begin(&j, NULL);
	moert_jw_string(&j, "s", "q\"b\\n\nt\t\x01\x7f\xc3\xa9\xff!");
	moert_jw_string(&j, "k\"ey", NULL);
	moert_jw_string_len(&j, "nul", "a\0b", 3);
	moert_jw_int(&j, "i", INT64_MIN);
	moert_jw_uint(&j, "u", UINT64_MAX);
	moert_jw_double(&j, "nan", NAN);
	moert_jw_double(&j, "inf", INFINITY);
	moert_jw_double(&j, "third", 1.0 / 3);
	moert_jw_double(&j, "tenth", 0.1);
	moert_jw_double(&j, "negz", -0.0);
	moert_jw_double(&j, "big", 1e300);
	moert_jw_float(&j, "ft", 0.1f);
	moert_jw_float(&j, "fnan", NAN);
	moert_jw_bool(&j, "yes", true);
	moert_jw_null(&j, "none");
	moert_jw_doubles(&j, "ds", d, 4);
	moert_jw_floats(&j, "fs", f, 3);
	moert_jw_i32s(&j, "i32", i32, 2);
	moert_jw_ints(&j, "empty", NULL, 0);
	moert_jw_int_matrix(&j, "counts", m, 2, 3);
	moert_jw_object_begin(&j, "layer3");
	moert_jw_array_begin(&j, "load");
	moert_jw_object_begin(&j, NULL);
	moert_jw_object_end(&j);
	moert_jw_array_end(&j);
	moert_jw_object_end(&j);
	moert_jw_object_end(&j);
	assert_null(moert_jw_error(&j));
	assert_string_equal(
		j.buf,
		"{\"s\":\"q\\\"b\\\\n\\nt\\t\\u0001\x7f\xc3\xa9\\ufffd!\","
		"\"k\\\"ey\":null,\"nul\":\"a\\u0000b\","
		"\"i\":-9223372036854775808,\"u\":18446744073709551615,"
		"\"nan\":null,\"inf\":null,\"third\":0.3333333333333333,"
		"\"tenth\":0.1,\"negz\":-0,\"big\":1e+300,\"ft\":0.1,"
		"\"fnan\":null,\"yes\":true,\"none\":null,"
		"\"ds\":[1.5,null,null,0.1],\"fs\":[0.1,0.33333334,16777216],"
		"\"i32\":[-7,2147483647],\"empty\":[],"
		"\"counts\":[[1,2,3],[4,5,6]],\"layer3\":{\"load\":[{}]}}");
	assert_int_equal(j.len, strlen(j.buf));

	/* Misuse is reported, and sticks. */
	moert_jw_reset(&j);
	moert_jw_array_begin(&j, NULL);
	moert_jw_int(&j, "key", 1);
	assert_string_equal(moert_jw_error(&j),
			    "JSON writer: a key given inside an array");
	moert_jw_reset(&j);
	assert_null(moert_jw_error(&j));
	moert_jw_object_begin(&j, NULL);
	moert_jw_int(&j, NULL, 1);
	assert_string_equal(moert_jw_error(&j),
			    "JSON writer: a value without a key inside an object");
	moert_jw_reset(&j);
	moert_jw_int(&j, NULL, 1);
	moert_jw_int(&j, NULL, 2);
	assert_string_equal(moert_jw_error(&j),
			    "JSON writer: a second value at the top level");
	moert_jw_reset(&j);
	moert_jw_object_begin(&j, NULL);
	moert_jw_array_end(&j);
	assert_string_equal(moert_jw_error(&j),
			    "JSON writer: array_end without an open array");
	moert_jw_reset(&j);
	for (int i = 0; i < MOERT_JW_MAX_DEPTH; i++)
		moert_jw_array_begin(&j, NULL);
	assert_string_equal(moert_jw_error(&j), "JSON writer: nested too deep");
	moert_jw_free(&j);

	assert_true(moert_utf8_valid("", 0));
	assert_true(moert_utf8_valid("a\xc3\xa9\xe5\x90\x8d\xf0\x9f\x98\x80", 10));
	assert_false(moert_utf8_valid("\xc3", 1));
	assert_false(moert_utf8_valid("\xe0\x80\x80", 3)); /* overlong */
	assert_false(moert_utf8_valid("\xed\xa0\x80", 3)); /* surrogate */
	assert_false(moert_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
}

static void test_metrics_file(void **state)
{
	char *dir = make_tmpdir();
	char *path = path_in(dir, "metrics.jsonl");
	char *bad = path_in(dir, "no/such/metrics.jsonl");
	const int64_t counts[4] = {10, 0, 3, 7};
	moert_error err;
	moert_metrics *m;
	moert_jw *j;
	unsigned char *text;
	size_t n;

	(void)state;
	m = moert_metrics_open(path, false, &err);
	assert_non_null(m);
	j = moert_metrics_begin(m);
	moert_jw_int(j, "step", 1);
	moert_jw_double(j, "loss", 2.5);
	moert_jw_string(j, "dataset", "fashion\"mnist");
	moert_jw_int_matrix(j, "dataset_expert", counts, 2, 2);
	assert_int_equal(moert_metrics_end(m, &err), 0);
	j = moert_metrics_begin(m);
	moert_jw_int(j, "step", 2);
	moert_jw_double(j, "loss", NAN);
	assert_int_equal(moert_metrics_end(m, &err), 0);
	/* A record left open is refused, and the file is not touched. */
	j = moert_metrics_begin(m);
	moert_jw_array_begin(j, "x");
	assert_int_equal(moert_metrics_end(m, &err), -1);
	assert_contains(err.msg, "bad metrics record: an object or array was "
				 "left open");
	j = moert_metrics_begin(m);
	moert_jw_int(j, NULL, 3);
	assert_int_equal(moert_metrics_end(m, &err), -1);
	assert_contains(err.msg, "a value without a key inside an object");
	assert_int_equal(moert_metrics_end(m, &err), -1);
	assert_contains(err.msg, "moert_metrics_end without moert_metrics_begin");
	/* It is flushed per record: readable before close. */
	text = read_bytes(path, &n);
	assert_string_equal((char *)text,
			    "{\"step\":1,\"loss\":2.5,\"dataset\":\"fashion\\\"mnist\","
			    "\"dataset_expert\":[[10,0],[3,7]]}\n"
			    "{\"step\":2,\"loss\":null}\n");
	free(text);
	assert_int_equal(moert_metrics_close(m, &err), 0);
	assert_int_equal(moert_metrics_close(NULL, &err), 0);

	m = moert_metrics_open(path, true, &err);
	assert_non_null(m);
	j = moert_metrics_begin(m);
	moert_jw_int(j, "step", 3);
	assert_int_equal(moert_metrics_end(m, &err), 0);
	assert_int_equal(moert_metrics_close(m, &err), 0);
	text = read_bytes(path, &n);
	assert_non_null(strstr((char *)text, "{\"step\":2,\"loss\":null}\n"
					     "{\"step\":3}\n"));
	free(text);

	m = moert_metrics_open(path, false, &err);
	assert_int_equal(moert_metrics_close(m, &err), 0);
	text = read_bytes(path, &n);
	assert_int_equal(n, 0);
	free(text);

	assert_null(moert_metrics_open(bad, true, &err));
	assert_starts_with(err.msg, bad);
	assert_contains(err.msg, "(No such file or directory)");

	/* A full disk is reported on the record that did not fit. */
	if (access("/dev/full", W_OK) == 0) {
		m = moert_metrics_open("/dev/full", true, &err);
		assert_non_null(m);
		j = moert_metrics_begin(m);
		moert_jw_int(j, "step", 1);
		assert_int_equal(moert_metrics_end(m, &err), -1);
		assert_string_equal(err.msg, "/dev/full: cannot write metrics "
					     "(No space left on device)");
		moert_metrics_close(m, &err);
	}
	free(path);
	free(bad);
	remove_tmpdir(dir);
}

static void test_progress(void **state)
{
	moert_progress_line p;
	FILE *f = tmpfile();
	char buf[256];
	size_t n;
	int master, slave;

	(void)state;
	assert_non_null(f);
	moert_progress_init(&p, f);
	assert_false(p.tty);
	assert_true(p.interval >= 1.0);
	moert_progress(&p, false, "step %d", 1);
	moert_progress(&p, false, "step %d", 2); /* too soon: dropped */
	moert_progress(&p, true, "step %d\nloss", 3);
	moert_progress_clear(&p);
	moert_progress_end(&p);
	rewind(f);
	n = fread(buf, 1, sizeof buf - 1, f);
	buf[n] = 0;
	assert_string_equal(buf, "step 1\nstep 3\n");
	fclose(f);

	/* On a terminal: \r, padding over a longer previous line, and a
	 * newline at the end. */
	if (openpty(&master, &slave, NULL, NULL, NULL) == 0) {
		FILE *tty = fdopen(slave, "w");
		struct termios tio;
		ssize_t k;
		size_t got = 0;
		assert_non_null(tty);
		tcgetattr(slave, &tio);
		cfmakeraw(&tio);
		tcsetattr(slave, TCSANOW, &tio);
		moert_progress_init(&p, tty);
		assert_true(p.tty);
		moert_progress(&p, true, "step 10 loss 2.5");
		moert_progress(&p, true, "step 11");
		moert_progress_end(&p);
		fclose(tty);
		while (got < sizeof buf - 1 &&
		       (k = read(master, buf + got, sizeof buf - 1 - got)) > 0)
			got += (size_t)k;
		buf[got] = 0;
		close(master);
		assert_string_equal(buf, "\rstep 10 loss 2.5\rstep 11         \n");
	}
}

/* ---- command line -------------------------------------------------------- */

typedef struct cli {
	int steps;
	int64_t big;
	double lr;
	const char *data;
	bool resume;
	bool eval;
	moert_arg opts[6];
} cli;

static void cli_init(cli *c)
{
	c->steps = 3000;
	c->big = 1;
	c->lr = 1e-3;
	c->data = "data";
	c->resume = false;
	c->eval = true;
	moert_arg opts[6] = {
		{"steps", 's', MOERT_ARG_INT, &c->steps, "training steps", NULL},
		{"big", 0, MOERT_ARG_INT64, &c->big, "a 64-bit count", NULL},
		{"lr", 0, MOERT_ARG_DOUBLE, &c->lr, "peak learning rate", NULL},
		{"data", 'd', MOERT_ARG_STRING, &c->data, "dataset root", "DIR"},
		{"resume", 'r', MOERT_ARG_FLAG, &c->resume,
		 "resume from the last checkpoint", NULL},
		{"eval", 0, MOERT_ARG_FLAG, &c->eval, "evaluate", NULL},
	};
	memcpy(c->opts, opts, sizeof opts);
}

static int parse(cli *c, moert_error *err, ...)
{
	char *argv[32];
	int argc = 0;
	va_list ap;

	argv[argc++] = "train";
	va_start(ap, err);
	while (argc < 31 && (argv[argc] = va_arg(ap, char *)))
		argc++;
	va_end(ap);
	argv[argc] = NULL;
	return moert_args_parse(c->opts, 6, argc, argv, err);
}

static void assert_untouched(const cli *c)
{
	assert_int_equal(c->steps, 3000);
	assert_true(c->big == 1);
	assert_true(c->lr == 1e-3);
	assert_string_equal(c->data, "data");
	assert_false(c->resume);
	assert_true(c->eval);
}

static void test_args_ok(void **state)
{
	moert_error err;
	cli c;

	(void)state;
	cli_init(&c);
	assert_int_equal(parse(&c, &err, NULL), MOERT_ARGS_OK);
	assert_untouched(&c);
	assert_int_equal(parse(&c, &err, "--steps", "5", "--lr=0.5", "-d", "/x",
			       "--resume", "--big", "-9000000000", "--no-eval",
			       NULL),
			 MOERT_ARGS_OK);
	assert_int_equal(c.steps, 5);
	assert_true(c.lr == 0.5);
	assert_string_equal(c.data, "/x");
	assert_true(c.resume);
	assert_false(c.eval);
	assert_true(c.big == -9000000000ll);

	cli_init(&c);
	assert_int_equal(parse(&c, &err, "-s7", "--steps=8", "--data=--odd",
			       "--eval=off", "-r", "--lr", "-2e-3", "--", NULL),
			 MOERT_ARGS_OK);
	assert_int_equal(c.steps, 8); /* the last one wins */
	assert_string_equal(c.data, "--odd");
	assert_false(c.eval);
	assert_true(c.resume);
	assert_true(c.lr == -2e-3);

	cli_init(&c);
	assert_int_equal(parse(&c, &err, "--resume=yes", "--lr", "1e-310",
			       "--steps", "-2147483648", NULL),
			 MOERT_ARGS_OK);
	assert_true(c.resume);
	assert_true(c.lr > 0 && c.lr < 1e-300); /* subnormal is fine */
	assert_int_equal(c.steps, INT32_MIN);
}

static void test_args_errors(void **state)
{
	static const struct {
		const char *argv[4];
		const char *expect;
	} cases[] = {
		{{"--stpes", "5"}, "unknown option '--stpes' (did you mean '--steps'?)"},
		{{"--step=5"}, "unknown option '--step' (did you mean '--steps'?)"},
		{{"--learning-rate", "1"}, "unknown option '--learning-rate'"},
		{{"--hepl"}, "unknown option '--hepl' (did you mean '--help'?)"},
		{{"--no-steps"}, "unknown option '--no-steps' (did you mean "
				 "'--steps'?)"},
		{{"-x"}, "unknown option '-x'"},
		{{"--steps"}, "option '--steps' requires a value"},
		{{"--steps", "--lr", "1"}, "option '--steps' requires a value"},
		{{"-s"}, "option '-s' requires a value"},
		{{"--steps", "12x"}, "option '--steps' expects an integer, got '12x'"},
		{{"--steps", ""}, "option '--steps' expects an integer, got ''"},
		{{"--steps", " 12"}, "option '--steps' expects an integer, got ' 12'"},
		{{"--steps", "1e4"}, "option '--steps' expects an integer, got '1e4'"},
		{{"--steps", "2147483648"},
		 "option '--steps': 2147483648 is out of range (-2147483648 to "
		 "2147483647)"},
		{{"--big", "99999999999999999999"},
		 "option '--big': 99999999999999999999 is out of range "
		 "(-9223372036854775808 to 9223372036854775807)"},
		{{"--lr", "fast"}, "option '--lr' expects a number, got 'fast'"},
		{{"--lr", "nan"}, "option '--lr' expects a finite number, got 'nan'"},
		{{"--lr", "1e999"},
		 "option '--lr' expects a finite number, got '1e999'"},
		{{"--resume=maybe"},
		 "option '--resume' expects true or false, got 'maybe'"},
		{{"--no-resume=1"}, "option '--no-resume' takes no value"},
		{{"-rx"}, "option '-r' takes no value (in '-rx')"},
		{{"extra"}, "unexpected argument 'extra'"},
		{{"-"}, "unexpected argument '-'"},
		{{"--", "--steps"}, "unexpected argument '--steps'"},
		{{"--steps", "5", "--bogus", "--lr=x"}, "unknown option '--bogus'"},
	};
	moert_error err;
	cli c;

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		cli_init(&c);
		assert_int_equal(parse(&c, &err, cases[i].argv[0],
				       cases[i].argv[1], cases[i].argv[2],
				       cases[i].argv[3], NULL),
				 MOERT_ARGS_ERROR);
		assert_string_equal(err.msg, cases[i].expect);
		assert_untouched(&c); /* nothing stored on error */
	}
}

static void test_args_help(void **state)
{
	moert_error err;
	cli c;
	FILE *f;
	char buf[2048];
	size_t n;

	(void)state;
	cli_init(&c);
	assert_int_equal(parse(&c, &err, "--steps", "5", "--help", NULL),
			 MOERT_ARGS_HELP);
	assert_untouched(&c);
	assert_int_equal(parse(&c, &err, "--bogus", "-h", NULL), MOERT_ARGS_HELP);
	assert_int_equal(parse(&c, &err, "--data", "--help", NULL),
			 MOERT_ARGS_HELP);
	assert_untouched(&c);

	f = tmpfile();
	assert_non_null(f);
	moert_args_help(f, "./train", "Train the damex model.", c.opts, 6);
	rewind(f);
	n = fread(buf, 1, sizeof buf - 1, f);
	buf[n] = 0;
	fclose(f);
	assert_string_equal(
		buf,
		"Usage: ./train [options]\n"
		"\n"
		"Train the damex model.\n"
		"\n"
		"Options:\n"
		"  -s, --steps N   training steps (default: 3000)\n"
		"      --big N     a 64-bit count (default: 1)\n"
		"      --lr X      peak learning rate (default: 0.001)\n"
		"  -d, --data DIR  dataset root (default: data)\n"
		"  -r, --resume    resume from the last checkpoint\n"
		"      --eval      evaluate (default: on; --no-eval to turn off)\n"
		"  -h, --help      show this help and exit\n");
}

/* ---- signals and clocks -------------------------------------------------- */

static void test_signals(void **state)
{
	moert_error err;
	pid_t pid;
	int status;

	(void)state;
	assert_int_equal(moert_signal_install(&err), 0);
	assert_false(moert_signal_stop_requested());
	assert_int_equal(moert_signal_received(), 0);
	raise(SIGINT);
	assert_true(moert_signal_stop_requested());
	assert_int_equal(moert_signal_received(), SIGINT);
	assert_int_equal(moert_signal_install(&err), 0);
	assert_false(moert_signal_stop_requested());
	raise(SIGTERM);
	assert_true(moert_signal_stop_requested());
	assert_int_equal(moert_signal_received(), SIGTERM);
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);

	/* A second signal ends the process the default way. */
	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		moert_signal_install(NULL);
		raise(SIGINT);
		if (!moert_signal_stop_requested())
			_exit(3);
		raise(SIGINT);
		_exit(4); /* not reached */
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGINT);
}

static void test_clocks(void **state)
{
	struct timespec ts = {0, 20 * 1000 * 1000};
	double t0, t1;

	(void)state;
	t0 = moert_now();
	nanosleep(&ts, NULL);
	t1 = moert_now();
	assert_true(t1 - t0 >= 0.019 && t1 - t0 < 5);
	assert_true(moert_wall_time() > 1.6e9);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_error_set),
		cmocka_unit_test(test_rng_philox_kat),
		cmocka_unit_test(test_rng_determinism),
		cmocka_unit_test(test_rng_moments),
		cmocka_unit_test(test_ckpt_roundtrip),
		cmocka_unit_test(test_ckpt_empty_and_crc),
		cmocka_unit_test(test_ckpt_get_rows),
		cmocka_unit_test(test_ckpt_mismatch_messages),
		cmocka_unit_test(test_ckpt_writer_errors),
		cmocka_unit_test(test_ckpt_atomic_replace),
		cmocka_unit_test(test_ckpt_atomic_failures),
		cmocka_unit_test(test_ckpt_truncated),
		cmocka_unit_test(test_ckpt_corrupted),
		cmocka_unit_test(test_ckpt_foreign_files),
		cmocka_unit_test(test_ckpt_bad_headers),
		cmocka_unit_test(test_ckpt_pytorch_reads_ours),
		cmocka_unit_test(test_ckpt_we_read_pytorchs),
		cmocka_unit_test(test_jw_values),
		cmocka_unit_test(test_metrics_file),
		cmocka_unit_test(test_progress),
		cmocka_unit_test(test_args_ok),
		cmocka_unit_test(test_args_errors),
		cmocka_unit_test(test_args_help),
		cmocka_unit_test(test_signals),
		cmocka_unit_test(test_clocks),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
