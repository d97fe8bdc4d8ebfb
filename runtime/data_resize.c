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
#define COLUMN_BLOCK 16 /* the vertical pass's pixels a step */

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
    free(wk->acc);
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
    v = v < 0 ? 0 : v;
    return (uint8_t)(v > 255 ? 255 : v);
}

/* The horizontal pass: rows [y0, y1) of the plane at base (its rows
 * ystride bytes apart, its pixels xstride) resampled to dw columns, into
 * out (dw bytes a row). */
static void resize_rows(const data_work *wk, int ksize, const uint8_t *base, ptrdiff_t ystride,
                        ptrdiff_t xstride, int y0, int y1, int dw, uint8_t *out)
{
    for (int y = y0; y < y1; y++) {
        const uint8_t *row = base + (ptrdiff_t)y * ystride;
        uint8_t *orow = out + (size_t)(y - y0) * (size_t)dw;
        for (int x = 0; x < dw; x++) {
            const uint8_t *p = row + (ptrdiff_t)wk->bx[2 * x] * xstride;
            const int cnt = wk->bx[2 * x + 1];
            const int32_t *k = wk->kx + (size_t)x * (size_t)ksize;
            int32_t acc = 1 << (PREC_BITS - 1);
            for (int i = 0; i < cnt; i++)
                acc += p[(ptrdiff_t)i * xstride] * k[i];
            orow[x] = clip8(acc);
        }
    }
}

/* acc[x] += row[x] * k for x < w; in blocks of a fixed count, which
 * gcc -O2 vectorizes (its cost model wants no scalar remainder), and the
 * pointers restrict-qualified parameters, so that it needs no alias check */
static void add_row(int32_t *restrict acc, const uint8_t *restrict row, int32_t k, int w)
{
    int x = 0;
    for (; x + COLUMN_BLOCK <= w; x += COLUMN_BLOCK)
        for (int j = 0; j < COLUMN_BLOCK; j++)
            acc[x + j] += row[x + j] * k;
    for (; x < w; x++)
        acc[x] += row[x] * k;
}

/* out[x] = clip8(acc[x]) for x < w, as add_row */
static void clip_row(const int32_t *restrict acc, uint8_t *restrict out, int w)
{
    int x = 0;
    for (; x + COLUMN_BLOCK <= w; x += COLUMN_BLOCK)
        for (int j = 0; j < COLUMN_BLOCK; j++)
            out[x + j] = clip8(acc[x + j]);
    for (; x < w; x++)
        out[x] = clip8(acc[x]);
}

/* The vertical pass: dh rows of w bytes into out from the rows of in,
 * where in points at input row y0 (rows ystride bytes apart, pixels
 * xstride). Each output row sums its input rows whole, a weight at a
 * time, into wk->acc: the same integer sums as pixel by pixel, in an
 * order the compiler vectorizes. */
static void resize_columns(const data_work *wk, int ksize, const uint8_t *in, ptrdiff_t ystride,
                           ptrdiff_t xstride, int y0, int dh, int w, uint8_t *out)
{
    int32_t *acc = wk->acc;
    for (int y = 0; y < dh; y++) {
        const int32_t *k = wk->ky + (size_t)y * (size_t)ksize;
        const int lo = wk->by[2 * y] - y0, cnt = wk->by[2 * y + 1];
        for (int x = 0; x < w; x++)
            acc[x] = 1 << (PREC_BITS - 1);
        for (int i = 0; i < cnt; i++) {
            const uint8_t *row = in + (ptrdiff_t)(lo + i) * ystride;
            if (xstride == 1)
                add_row(acc, row, k[i], w);
            else
                for (int x = 0; x < w; x++)
                    acc[x] += row[(ptrdiff_t)x * xstride] * k[i];
        }
        clip_row(acc, out + (size_t)y * (size_t)w, w);
    }
}

/* resize_rows for the three channels of interleaved RGB at once (a
 * decoded JPEG or PNG): each weight loaded once for three pixels; channel
 * ch's rows go to out + ch*plane. */
static void resize_rows_rgb(const data_work *wk, int ksize, const uint8_t *base, ptrdiff_t ystride, int y0,
                            int y1, int dw, uint8_t *out, size_t plane)
{
    for (int y = y0; y < y1; y++) {
        const uint8_t *row = base + (ptrdiff_t)y * ystride;
        uint8_t *o = out + (size_t)(y - y0) * (size_t)dw;
        for (int x = 0; x < dw; x++) {
            const uint8_t *p = row + (ptrdiff_t)wk->bx[2 * x] * 3;
            const int cnt = wk->bx[2 * x + 1];
            const int32_t *k = wk->kx + (size_t)x * (size_t)ksize;
            int32_t r = 1 << (PREC_BITS - 1), g = r, b = r;
            for (int i = 0; i < cnt; i++, p += 3) {
                r += p[0] * k[i];
                g += p[1] * k[i];
                b += p[2] * k[i];
            }
            o[x] = clip8(r);
            o[plane + x] = clip8(g);
            o[2 * plane + x] = clip8(b);
        }
    }
}

/* Resizes channels 0..n-1 of src (PIL BILINEAR) to dh x dw, channel ch to
 * dst + ch*dh*dw. The weights of each axis are made once for all the
 * channels, and the horizontal pass reads the source in place, whatever
 * its strides (interleaved RGB, a region of a larger image). */
static int resize_channels(data_work *wk, const data_view *src, int n, int dh, int dw, uint8_t *dst)
{
    const int sh = src->h, sw = src->w, need_h = sw != dw, need_v = sh != dh;
    const size_t dplane = (size_t)dh * (size_t)dw;
    int ksh = 0, ksv = 0, y0 = 0, y1 = sh;
    if (need_v) {
        if ((ksv = coeffs(sh, dh, &wk->ky, &wk->ky_cap, &wk->by, &wk->by_cap)) < 0)
            return -1;
        /* only the input rows the vertical pass reads */
        y0 = wk->by[0];
        y1 = wk->by[2 * (dh - 1)] + wk->by[2 * (dh - 1) + 1];
        /* a row of sums, dw wide (sw = dw where the width stays) */
        if (grow((void **)&wk->acc, &wk->acc_cap, (size_t)dw * sizeof(int32_t)) != 0)
            return -1;
    }
    if (need_h && (ksh = coeffs(sw, dw, &wk->kx, &wk->kx_cap, &wk->bx, &wk->bx_cap)) < 0)
        return -1;
    /* interleaved RGB: the horizontal pass makes the three channels' rows at once */
    const int rgb = need_h && n == 3 && src->cstride == 1 && src->xstride == 3;
    size_t rows_bytes = 0;
    if (need_h && need_v &&
        (!data_mul((size_t)(y1 - y0), (size_t)dw, &rows_bytes) ||
         grow((void **)&wk->tmp, &wk->tmp_cap, (rows_bytes ? rows_bytes : 1) * (rgb ? 3 : 1)) != 0))
        return -1;
    if (rgb) {
        if (!need_v) {
            resize_rows_rgb(wk, ksh, src->px, src->ystride, 0, sh, dw, dst, dplane);
            return 0;
        }
        resize_rows_rgb(wk, ksh, src->px, src->ystride, y0, y1, dw, wk->tmp, rows_bytes);
        for (int ch = 0; ch < 3; ch++)
            resize_columns(wk, ksv, wk->tmp + (size_t)ch * rows_bytes, dw, 1, y0, dh, dw,
                           dst + (size_t)ch * dplane);
        return 0;
    }
    for (int ch = 0; ch < n; ch++) {
        const uint8_t *base = src->px + (ptrdiff_t)ch * src->cstride;
        uint8_t *out = dst + (size_t)ch * dplane;
        if (need_h && need_v) {
            resize_rows(wk, ksh, base, src->ystride, src->xstride, y0, y1, dw, wk->tmp);
            resize_columns(wk, ksv, wk->tmp, dw, 1, y0, dh, dw, out);
        } else if (need_h) {
            resize_rows(wk, ksh, base, src->ystride, src->xstride, 0, sh, dw, out);
        } else if (need_v) {
            resize_columns(wk, ksv, base + (ptrdiff_t)y0 * src->ystride, src->ystride, src->xstride, y0, dh,
                           sw, out);
        } else {
            for (int y = 0; y < sh; y++) {
                const uint8_t *row = base + (ptrdiff_t)y * src->ystride;
                uint8_t *orow = out + (size_t)y * (size_t)sw;
                if (src->xstride == 1)
                    memcpy(orow, row, (size_t)sw);
                else
                    for (int x = 0; x < sw; x++)
                        orow[x] = row[(ptrdiff_t)x * src->xstride];
            }
        }
    }
    return 0;
}

/* The luma of RGB src (Pillow's convert("L")) into a contiguous plane. */
static void luma_plane(const data_view *src, uint8_t *plane)
{
    for (int y = 0; y < src->h; y++) {
        const uint8_t *row = src->px + y * src->ystride;
        uint8_t *o = plane + (size_t)y * src->w;
        for (int x = 0; x < src->w; x++) {
            const uint8_t *p = row + x * src->xstride;
            uint32_t r = p[0], g = p[src->cstride], b = p[2 * src->cstride];
            o[x] = (uint8_t)((r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16);
        }
    }
}

int data_convert(data_work *wk, const data_view *src, int dc, int dh, int dw, uint8_t *dst)
{
    const size_t dplane = (size_t)dh * (size_t)dw;
    if (dc == 1 && src->c == 3) {
        /* gray from RGB: the luma first, then resized, as Pillow's
         * convert("L") then resize() */
        size_t splane = (size_t)src->h * (size_t)src->w;
        if (grow((void **)&wk->plane, &wk->plane_cap, splane ? splane : 1) != 0)
            return -1;
        luma_plane(src, wk->plane);
        const data_view luma = {wk->plane, 1, src->h, src->w, 0, src->w, 1};
        return resize_channels(wk, &luma, 1, dh, dw, dst);
    }
    /* RGB from gray: the one plane resized, then copied twice */
    const int n = src->c == 1 ? 1 : dc;
    if (resize_channels(wk, src, n, dh, dw, dst) != 0)
        return -1;
    for (int oc = n; oc < dc; oc++)
        memcpy(dst + (size_t)oc * dplane, dst, dplane);
    return 0;
}

int moert_image_resize(const uint8_t *src, int c, int sh, int sw, uint8_t *dst, int dh, int dw)
{
    if (!src || !dst || c < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1 ||
        sh > MOERT_IMAGE_MAX_DIM || sw > MOERT_IMAGE_MAX_DIM || dh > MOERT_IMAGE_MAX_DIM ||
        dw > MOERT_IMAGE_MAX_DIM)
        return -1;
    data_work wk = {0};
    const data_view v = {src, c, sh, sw, (ptrdiff_t)sh * sw, sw, 1};
    const int rc = resize_channels(&wk, &v, c, dh, dw, dst);
    data_work_free(&wk);
    return rc;
}
