/* core_rng.c: counter-based random numbers (Philox4x32-10).
 *
 * Key = the seed's two 32-bit halves; counter = (counter lo, counter hi,
 * stream lo, stream hi). Constants and round structure are those of
 * Random123 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as
 * 1, 2, 3", SC'11); tests/unit/test_core.c checks its known-answer vectors. */
#include "moert_core.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u
#define TWO_PI 6.283185307179586476925286766559

void moert_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2],
			 uint32_t out[4])
{
	uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
	uint32_t k0 = key[0], k1 = key[1];

	for (int round = 0; round < 10; round++) {
		uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
		uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
		uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
		uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;

		c0 = hi1 ^ c1 ^ k0;
		c1 = lo1;
		c2 = hi0 ^ c3 ^ k1;
		c3 = lo0;
		k0 += PHILOX_W0;
		k1 += PHILOX_W1;
	}
	out[0] = c0;
	out[1] = c1;
	out[2] = c2;
	out[3] = c3;
}

static void philox_block(uint64_t seed, uint64_t stream, uint64_t counter,
			 uint32_t out[4])
{
	const uint32_t ctr[4] = {(uint32_t)counter, (uint32_t)(counter >> 32),
				 (uint32_t)stream, (uint32_t)(stream >> 32)};
	const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};

	moert_philox4x32_10(ctr, key, out);
}

uint64_t moert_rng_u64(uint64_t seed, uint64_t stream, uint64_t counter)
{
	uint32_t x[4];

	philox_block(seed, stream, counter, x);
	return (uint64_t)x[0] | (uint64_t)x[1] << 32;
}

float moert_rng_uniform(uint64_t seed, uint64_t stream, uint64_t counter)
{
	uint32_t x[4];

	philox_block(seed, stream, counter, x);
	return (float)(x[0] >> 8) * 0x1.0p-24f;
}

double moert_rng_uniform_f64(uint64_t seed, uint64_t stream, uint64_t counter)
{
	return (double)(moert_rng_u64(seed, stream, counter) >> 11) * 0x1.0p-53;
}

double moert_rng_normal(uint64_t seed, uint64_t stream, uint64_t counter)
{
	uint32_t x[4];
	uint64_t a, b;
	double u1, u2;

	philox_block(seed, stream, counter, x);
	a = (uint64_t)x[0] | (uint64_t)x[1] << 32;
	b = (uint64_t)x[2] | (uint64_t)x[3] << 32;
	u1 = (double)((a >> 11) + 1) * 0x1.0p-53; /* (0, 1]: log is finite */
	u2 = (double)(b >> 11) * 0x1.0p-53;       /* [0, 1) */
	return sqrt(-2.0 * log(u1)) * cos(TWO_PI * u2);
}

void moert_rng_init(moert_rng *r, uint64_t seed, uint64_t stream)
{
	r->seed = seed;
	r->stream = stream;
	r->counter = 0;
}

uint64_t moert_rng_next_u64(moert_rng *r)
{
	return moert_rng_u64(r->seed, r->stream, r->counter++);
}

float moert_rng_next_uniform(moert_rng *r)
{
	return moert_rng_uniform(r->seed, r->stream, r->counter++);
}

double moert_rng_next_normal(moert_rng *r)
{
	return moert_rng_normal(r->seed, r->stream, r->counter++);
}

/* The high 64 bits of the 128-bit product a * b. */
static uint64_t mul_hi64(uint64_t a, uint64_t b, uint64_t *lo)
{
	uint64_t a_lo = (uint32_t)a, a_hi = a >> 32;
	uint64_t b_lo = (uint32_t)b, b_hi = b >> 32;
	uint64_t ll = a_lo * b_lo, lh = a_lo * b_hi;
	uint64_t hl = a_hi * b_lo, hh = a_hi * b_hi;
	uint64_t mid = (ll >> 32) + (uint32_t)lh + (uint32_t)hl;

	*lo = (mid << 32) | (uint32_t)ll;
	return hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
}

uint64_t moert_rng_next_below(moert_rng *r, uint64_t n)
{
	/* Lemire's multiply-and-reject: the high word of x * n is uniform
	 * on [0, n) once the few low words below 2^64 mod n are rejected. */
	uint64_t threshold;

	if (n == 0)
		return 0;
	threshold = (0 - n) % n;
	for (;;) {
		uint64_t lo, hi = mul_hi64(moert_rng_next_u64(r), n, &lo);
		if (lo >= threshold)
			return hi;
	}
}

void moert_rng_fill_normal(moert_rng *r, float *x, size_t n, float mean,
			   float std)
{
	for (size_t i = 0; i < n; i++)
		x[i] = (float)((double)mean +
			       (double)std * moert_rng_normal(r->seed, r->stream,
							      r->counter + i));
	r->counter += n;
}

void moert_rng_fill_trunc_normal(moert_rng *r, float *x, size_t n, float mean,
				 float std)
{
	for (size_t i = 0; i < n; i++) {
		double z;
		do
			z = moert_rng_next_normal(r);
		while (z < -2.0 || z > 2.0);
		x[i] = (float)((double)mean + (double)std * z);
	}
}

void moert_rng_fill_uniform(moert_rng *r, float *x, size_t n, float a, float b)
{
	for (size_t i = 0; i < n; i++) {
		double u = moert_rng_uniform_f64(r->seed, r->stream,
						 r->counter + i);
		float v = (float)((double)a + ((double)b - (double)a) * u);
		/* Rounding to float may land on b itself; keep [a, b). */
		if (v >= b && b > a)
			v = nextafterf(b, a);
		x[i] = v;
	}
	r->counter += n;
}
