/* data_internal.h: helpers shared by the data_*.c files of libmoert. Not
 * installed; every symbol here is hidden from the library's ABI. */
#ifndef MOERT_DATA_INTERNAL_H
#define MOERT_DATA_INTERNAL_H

/* POSIX.1-2008 (strdup, posix_memalign, dirent, fstat...) even under a bare
 * -std=c11; included first by every data_*.c. */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include "moert_data.h"

#include <stdint.h>
#include <stddef.h>

#if defined(__GNUC__)
#define DATA_HIDDEN __attribute__((visibility("hidden")))
#define DATA_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define DATA_HIDDEN
#define DATA_PRINTF(a, b)
#endif

/* Largest file read whole into memory (JSON, image files). */
#define DATA_MAX_FILE_BYTES ((size_t)1 << 30)

/* errbuf <- printf(fmt, ...); NULL-safe, always terminated. */
DATA_HIDDEN void data_errf(char *errbuf, size_t errlen, const char *fmt, ...) DATA_PRINTF(3, 4);

/* a * b into *out, or 0 on size_t overflow. */
static inline int data_mul(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}

/* Validates want: c in {0,1,3}, h and w both 0 or both in 1..MAX_DIM. */
DATA_HIDDEN int data_check_shape(moert_shape want, const char *what, char *errbuf, size_t errlen);

/* Fixes out's shape (zero fields of want taken from the source) and makes
 * it an empty set. Returns -1 with a message if the result is not valid. */
DATA_HIDDEN int data_images_begin(moert_images *out, moert_shape want, int src_c, int src_h,
                                  int src_w, const char *path, char *errbuf, size_t errlen);

/* Makes room for at least n images (geometric growth). */
DATA_HIDDEN int data_images_reserve(moert_images *set, int64_t n, const char *path,
                                    char *errbuf, size_t errlen);

/* -1 with a message when n images of set's shape, decoded, would take
 * more than the machine's physical memory. */
DATA_HIDDEN int data_check_memory(const moert_images *set, int64_t n, const char *path, char *errbuf,
                                  size_t errlen);

/* Shrinks the allocation to n images and sets num_classes from the labels
 * when it is 0. */
DATA_HIDDEN void data_images_finish(moert_images *set);

/* ---- image conversion ---- */

/* A view of a source image: pixel (ch, y, x) at
 * px[ch*cstride + y*ystride + x*xstride]. */
typedef struct data_view {
    const uint8_t *px;
    int c, h, w;
    ptrdiff_t cstride, ystride, xstride;
} data_view;

/* Reusable scratch space for data_convert (grows, never shrinks). */
typedef struct data_work {
    uint8_t *plane;     /* one source-sized plane (a gray conversion's) */
    size_t plane_cap;
    uint8_t *tmp;       /* one channel's rows between the two resize passes */
    size_t tmp_cap;
    int32_t *kx, *ky;   /* fixed-point weights */
    int *bx, *by;       /* [first, count] per output column / row */
    int32_t *acc;       /* one output row's sums in the vertical pass */
    size_t kx_cap, ky_cap, bx_cap, by_cap, acc_cap;
} data_work;

DATA_HIDDEN void data_work_free(data_work *wk);

/* Converts src to dc channels and resizes it to dh x dw, writing CHW to dst.
 * dc is 1 or 3; src->c is 1 or 3. Returns -1 only when out of memory. */
DATA_HIDDEN int data_convert(data_work *wk, const data_view *src, int dc, int dh, int dw,
                             uint8_t *dst);

/* Converts src to the set's shape and appends it with label. */
DATA_HIDDEN int data_images_append(moert_images *set, data_work *wk, const data_view *src,
                                   int32_t label, const char *path, char *errbuf, size_t errlen);

/* ---- files ---- */

/* Reads a whole file (at most max bytes) into a malloc'd buffer with a NUL
 * after the data. */
DATA_HIDDEN int data_read_file(const char *path, size_t max, uint8_t **buf, size_t *len,
                               char *errbuf, size_t errlen);

/* A decoded image: h x w x c, interleaved (HWC). */
typedef struct data_raw {
    uint8_t *px;
    int c, h, w;
} data_raw;

/* Decodes PNG, JPEG or PPM/PGM (by content) from memory; path is for
 * messages. On failure raw->px is NULL. */
DATA_HIDDEN int data_decode(const char *path, const uint8_t *buf, size_t len, data_raw *raw,
                            char *errbuf, size_t errlen);

/* Reads and decodes a file. */
DATA_HIDDEN int data_decode_file(const char *path, data_raw *raw, char *errbuf, size_t errlen);

/* "a/b" into a new string (NULL when out of memory). */
DATA_HIDDEN char *data_path_join(const char *a, const char *b);

/* Lists the entries of dir that are directories (want_dirs) or regular
 * files, skipping names starting with '.', sorted in byte order. */
DATA_HIDDEN int data_list_dir(const char *dir, int want_dirs, char ***names, size_t *count,
                              char *errbuf, size_t errlen);
DATA_HIDDEN void data_free_names(char **names, size_t count);

/* ---- sampler ---- */

/* The shape of the sampler's batches. */
DATA_HIDDEN void data_mixture_shape(const moert_mixture *m, moert_shape *shape);

/* ---- counter-based randomness ---- */

static inline uint64_t data_mix64(uint64_t z)
{
    /* splitmix64 finalizer */
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* A 64-bit value that is a pure function of its four arguments. */
static inline uint64_t data_hash(uint64_t seed, uint64_t stream, uint64_t a, uint64_t b)
{
    const uint64_t g = UINT64_C(0x9e3779b97f4a7c15);
    uint64_t h = data_mix64(seed + g);
    h = data_mix64(h ^ (stream + 1) * g);
    h = data_mix64(h ^ (a + 2) * g);
    h = data_mix64(h ^ (b + 3) * g);
    return h;
}

/* Uniform integer in [0, n), n >= 1: the high 64 bits of h * n (bias
 * < n / 2^64). Portable 32-bit limbs, so every compiler draws the same. */
static inline uint64_t data_below(uint64_t h, uint64_t n)
{
    uint64_t a0 = h & 0xffffffffu, a1 = h >> 32, b0 = n & 0xffffffffu, b1 = n >> 32;
    uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    uint64_t mid = (p00 >> 32) + (p01 & 0xffffffffu) + (p10 & 0xffffffffu);
    return p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
}

/* Uniform double in [0, 1). */
static inline double data_unit(uint64_t h)
{
    return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}

#endif /* MOERT_DATA_INTERNAL_H */
