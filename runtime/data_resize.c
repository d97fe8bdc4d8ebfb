/* data_resize.c: channel conversion and resizing of uint8 images.
 *
 * Resizing is PIL's BILINEAR resampling, so that a model trained here sees
 * the pixels a torchvision pipeline on PIL images would give it:
 *   scale = in / out, fs = max(scale, 1), support = fs
 *   output pixel x has its centre at (x + 0.5) * scale in input coordinates
 *   and takes the inputs i in [(int)(centre - support + 0.5),
 *   (int)(centre + support + 0.5)) clamped to the image, with weights
 *   tri((i + 0.5 - centre) / fs), tri(t) = max(0, 1 - |t|), normalized to
 *   sum 1 and stored as round(w * 2^22).
 * Enlarging (fs = 1) is bilinear interpolation with half-pixel centres;
 * shrinking widens the triangle so every covered input pixel counts
 * (antialiasing). A horizontal pass (if the width changes) then a vertical
 * one (if the height changes), each rounding to uint8 - bit-identical to
 * Pillow's ImagingResample with the BILINEAR filter. */
#include "data_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PREC_BITS 22 /* fixed-point weight precision (as Pillow: 32 - 8 - 2) */

static int grow(void **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 256;
    while (nc < need)
        nc = nc > SIZE_MAX / 2 ? need : nc * 2;
    void *np = realloc(*p, nc);
    if (!np)
        return -1;
    *p = np;
    *cap = nc;
    return 0;
}

void data_work_free(data_work *wk)
{
    free(wk->plane);
    free(wk->tmp);
    free(wk->kx);
    free(wk->ky);
    free(wk->bx);
    free(wk->by);
    memset(wk, 0, sizeof *wk);
}

static double tri(double t)
{
    if (t < 0.0)
        t = -t;
    return t < 1.0 ? 1.0 - t : 0.0;
}

/* Weights for resampling in -> out along one axis. Fills bounds[2*o] (first
 * input), bounds[2*o+1] (count) and k[o*ksize ...]; returns ksize or -1. */
static int coeffs(int in, int out, int32_t **k, size_t *kcap, int **bounds, size_t *bcap)
{
    double scale = (double)in / (double)out;
    double fs = scale < 1.0 ? 1.0 : scale;
    double support = fs;
    double inv = 1.0 / fs; /* multiplied, not divided, as Pillow does */
    int ksize = (int)ceil(support) * 2 + 1;
    size_t kbytes, bbytes;
    if (!data_mul((size_t)out, (size_t)ksize * sizeof(int32_t), &kbytes) ||
        !data_mul((size_t)out, 2 * sizeof(int), &bbytes))
        return -1;
    if (grow((void **)k, kcap, kbytes) != 0 || grow((void **)bounds, bcap, bbytes) != 0)
        return -1;
    double *w = malloc((size_t)ksize * sizeof *w);
    if (!w)
        return -1;
    for (int o = 0; o < out; o++) {
        double centre = (o + 0.5) * scale;
        int lo = (int)(centre - support + 0.5);
        int hi = (int)(centre + support + 0.5);
        if (lo < 0)
            lo = 0;
        if (hi > in)
            hi = in;
        int cnt = hi - lo;
        if (cnt > ksize)
            cnt = ksize; /* cannot happen; keeps the writes in bounds */
        double sum = 0.0;
        for (int i = 0; i < cnt; i++) {
            w[i] = tri((i + lo - centre + 0.5) * inv);
            sum += w[i];
        }
        int32_t *ko = *k + (size_t)o * ksize;
        for (int i = 0; i < ksize; i++) {
            double v = i < cnt ? (sum != 0.0 ? w[i] / sum : w[i]) : 0.0;
            ko[i] = (int32_t)(0.5 + v * (1 << PREC_BITS));
        }
        (*bounds)[2 * o] = lo;
        (*bounds)[2 * o + 1] = cnt;
    }
    free(w);
    return ksize;
}

static inline uint8_t clip8(int32_t acc)
{
    int32_t v = acc >> PREC_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

int data_resize_plane(data_work *wk, const uint8_t *src, int sh, int sw, uint8_t *dst, int dh,
                      int dw)
{
    if (sh == dh && sw == dw) {
        memcpy(dst, src, (size_t)dh * (size_t)dw);
        return 0;
    }
    int need_h = sw != dw, need_v = sh != dh;
    int ksv = coeffs(sh, dh, &wk->ky, &wk->ky_cap, &wk->by, &wk->by_cap);
    if (ksv < 0)
        return -1;
    const uint8_t *vin = src; /* input of the vertical pass */
    int vin_w = sw;
    int yfirst = 0;
    if (need_h) {
        int ksh = coeffs(sw, dw, &wk->kx, &wk->kx_cap, &wk->bx, &wk->bx_cap);
        if (ksh < 0)
            return -1;
        /* only the rows the vertical pass reads */
        yfirst = wk->by[0];
        int ylast = wk->by[2 * (dh - 1)] + wk->by[2 * (dh - 1) + 1];
        size_t rows = (size_t)(ylast - yfirst), bytes;
        if (!data_mul(rows, (size_t)dw, &bytes))
            return -1;
        uint8_t *out = need_v ? NULL : dst;
        if (need_v) {
            if (grow((void **)&wk->tmp, &wk->tmp_cap, bytes ? bytes : 1) != 0)
                return -1;
            out = wk->tmp;
        }
        for (int y = yfirst; y < ylast; y++) {
            const uint8_t *row = src + (size_t)y * sw;
            uint8_t *orow = out + (size_t)(y - yfirst) * dw;
            for (int x = 0; x < dw; x++) {
                int lo = wk->bx[2 * x], cnt = wk->bx[2 * x + 1];
                const int32_t *k = wk->kx + (size_t)x * ksh;
                int32_t acc = 1 << (PREC_BITS - 1);
                for (int i = 0; i < cnt; i++)
                    acc += row[lo + i] * k[i];
                orow[x] = clip8(acc);
            }
        }
        if (!need_v)
            return 0;
        vin = wk->tmp;
        vin_w = dw;
    }
    for (int y = 0; y < dh; y++) {
        int lo = wk->by[2 * y] - yfirst, cnt = wk->by[2 * y + 1];
        const int32_t *k = wk->ky + (size_t)y * ksv;
        uint8_t *orow = dst + (size_t)y * dw;
        for (int x = 0; x < vin_w; x++) {
            int32_t acc = 1 << (PREC_BITS - 1);
            for (int i = 0; i < cnt; i++)
                acc += vin[(size_t)(lo + i) * vin_w + x] * k[i];
            orow[x] = clip8(acc);
        }
    }
    return 0;
}

/* Copies channel ch of src (or its luma when src is RGB and gray = 1) into
 * a contiguous plane. */
static void gather_plane(const data_view *src, int ch, int gray, uint8_t *plane)
{
    for (int y = 0; y < src->h; y++) {
        const uint8_t *row = src->px + y * src->ystride;
        uint8_t *o = plane + (size_t)y * src->w;
        if (gray) {
            for (int x = 0; x < src->w; x++) {
                const uint8_t *p = row + x * src->xstride;
                uint32_t r = p[0], g = p[src->cstride], b = p[2 * src->cstride];
                o[x] = (uint8_t)((r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16);
            }
        } else {
            const uint8_t *p = row + ch * src->cstride;
            for (int x = 0; x < src->w; x++)
                o[x] = p[x * src->xstride];
        }
    }
}

int data_convert(data_work *wk, const data_view *src, int dc, int dh, int dw, uint8_t *dst)
{
    size_t splane = (size_t)src->h * (size_t)src->w;
    size_t dplane = (size_t)dh * (size_t)dw;
    if (grow((void **)&wk->plane, &wk->plane_cap, splane ? splane : 1) != 0)
        return -1;
    for (int oc = 0; oc < dc; oc++) {
        uint8_t *out = dst + (size_t)oc * dplane;
        if (dc == 3 && src->c == 1 && oc > 0) {
            memcpy(out, dst, dplane); /* gray -> RGB: the same plane thrice */
            continue;
        }
        int gray = dc == 1 && src->c == 3;
        const uint8_t *plane;
        if (!gray && src->xstride == 1 && src->ystride == src->w) {
            plane = src->px + (size_t)(src->c == 1 ? 0 : oc) * (size_t)src->cstride;
        } else {
            gather_plane(src, src->c == 1 ? 0 : oc, gray, wk->plane);
            plane = wk->plane;
        }
        if (data_resize_plane(wk, plane, src->h, src->w, out, dh, dw) != 0)
            return -1;
    }
    return 0;
}

int moert_image_resize(const uint8_t *src, int c, int sh, int sw, uint8_t *dst, int dh, int dw)
{
    if (!src || !dst || c < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1 ||
        sh > MOERT_IMAGE_MAX_DIM || sw > MOERT_IMAGE_MAX_DIM || dh > MOERT_IMAGE_MAX_DIM ||
        dw > MOERT_IMAGE_MAX_DIM)
        return -1;
    data_work wk = {0};
    size_t sp = (size_t)sh * (size_t)sw, dp = (size_t)dh * (size_t)dw;
    int rc = 0;
    for (int ch = 0; ch < c && rc == 0; ch++)
        rc = data_resize_plane(&wk, src + ch * sp, sh, sw, dst + ch * dp, dh, dw);
    data_work_free(&wk);
    return rc;
}
