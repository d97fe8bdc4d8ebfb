/* data_randaug.c: RandAugment (Cubuk et al., 2020) on uint8 CHW images, as
 * torchvision's RandAugment(num_ops = n, magnitude = m,
 * num_magnitude_bins = 31) does on uint8 tensors (torchvision 0.14):
 *
 *   - the same 14 operations in the same order (op_index draws index it),
 *     the same magnitudes (torch.linspace in float32) and signs;
 *   - geometric ones by the inverse affine map torchvision builds, sampled
 *     at the nearest pixel (grid_sample, align_corners = False), zero
 *     outside; the colour ones by torchvision's float32 blends, truncated
 *     to uint8 as its .to(uint8) does.
 *
 * tests/data/randaug_check.py compares every operation with torchvision's
 * own where torchvision is installed: every pixel equal. The magnitudes
 * follow torch.linspace's formula; its vectorised CPU kernel rounds a few
 * bins one float32 ulp otherwise (bin 20 with 8-wide vectors), which the
 * check allows. The draws are the loader's (seed, step, sample), not
 * torch's generator. */
#include "data_internal.h"

#include <math.h>
#include <string.h>

#define RA_BINS 31

static const char *const RA_NAMES[MOERT_RA_OPS] = {
    "identity", "shear_x",  "shear_y",   "translate_x", "translate_y",  "rotate",  "brightness",
    "color",    "contrast", "sharpness", "posterize",   "solarize",     "autocontrast", "equalize",
};

const char *moert_randaug_name(int op)
{
    return op >= 0 && op < MOERT_RA_OPS ? RA_NAMES[op] : NULL;
}

/* torch.linspace(start, end, RA_BINS)[m] in float32 (its CPU kernel: the
 * first half from start, the second from end) */
static float linspace_at(float start, float end, int m)
{
    const float step = (end - start) / (float)(RA_BINS - 1);
    return m < RA_BINS / 2 ? start + step * (float)m : end - step * (float)(RA_BINS - 1 - m);
}

double moert_randaug_magnitude(int op, int m, int h, int w)
{
    switch (op) {
    case MOERT_RA_SHEAR_X:
    case MOERT_RA_SHEAR_Y:
        return linspace_at(0.0f, 0.3f, m);
    case MOERT_RA_TRANSLATE_X:
        return linspace_at(0.0f, (float)(150.0 / 331.0 * w), m);
    case MOERT_RA_TRANSLATE_Y:
        return linspace_at(0.0f, (float)(150.0 / 331.0 * h), m);
    case MOERT_RA_ROTATE:
        return linspace_at(0.0f, 30.0f, m);
    case MOERT_RA_BRIGHTNESS:
    case MOERT_RA_COLOR:
    case MOERT_RA_CONTRAST:
    case MOERT_RA_SHARPNESS:
        return linspace_at(0.0f, 0.9f, m);
    case MOERT_RA_POSTERIZE: /* 8 - round(m / 7.5) bits */
        return 8 - (int)nearbyintf((float)m / 7.5f);
    case MOERT_RA_SOLARIZE:
        return linspace_at(255.0f, 0.0f, m);
    default:
        return 0.0;
    }
}

int moert_randaug_signed(int op)
{
    return op >= MOERT_RA_SHEAR_X && op <= MOERT_RA_SHARPNESS;
}

/* ---- geometry ----------------------------------------------------------------------- */

/* img = img sampled through the inverse map mt (torchvision's
 * _get_inverse_affine_matrix, output pixel centres relative to the image
 * centre -> input), nearest pixel, zero outside */
static void warp(uint8_t *img, int c, int h, int w, const double mt[6], uint8_t *scratch)
{
    const size_t plane = (size_t)h * (size_t)w;
    memcpy(scratch, img, plane * (size_t)c);
    /* theta in float32, divided by half the size (rescaled_theta), then
     * the grid's x * r0 + y * r1 + r2 and grid_sample's ((g + 1) * size - 1) / 2 */
    const float hw = 0.5f * (float)w, hh = 0.5f * (float)h;
    const float r0 = (float)mt[0] / hw, r1 = (float)mt[1] / hw, r2 = (float)mt[2] / hw;
    const float r3 = (float)mt[3] / hh, r4 = (float)mt[4] / hh, r5 = (float)mt[5] / hh;
    for (int oy = 0; oy < h; oy++) {
        const float y = -(float)h * 0.5f + 0.5f + (float)oy;
        for (int ox = 0; ox < w; ox++) {
            const float x = -(float)w * 0.5f + 0.5f + (float)ox;
            const float gx = x * r0 + y * r1 + r2, gy = x * r3 + y * r4 + r5;
            const float fx = ((gx + 1.0f) * (float)w - 1.0f) / 2.0f, fy = ((gy + 1.0f) * (float)h - 1.0f) / 2.0f;
            const float ix = nearbyintf(fx), iy = nearbyintf(fy);
            const int in = ix >= 0.0f && ix < (float)w && iy >= 0.0f && iy < (float)h;
            const size_t at = in ? (size_t)iy * (size_t)w + (size_t)ix : 0;
            for (int ch = 0; ch < c; ch++)
                img[ch * plane + (size_t)oy * w + ox] = in ? scratch[ch * plane + at] : 0;
        }
    }
}

/* torchvision's _get_inverse_affine_matrix: rotation `angle` and shear
 * (degrees) about centre (cx, cy) (relative to the image centre), then the
 * translation (tx, ty); scale 1 */
static void inverse_affine(double mt[6], double cx, double cy, double angle, double tx, double ty, double shx,
                           double shy)
{
    const double pi = 3.14159265358979323846;
    const double rot = angle * pi / 180.0, sx = shx * pi / 180.0, sy = shy * pi / 180.0;
    const double a = cos(rot - sy) / cos(sy);
    const double b = -cos(rot - sy) * tan(sx) / cos(sy) - sin(rot);
    const double c = sin(rot - sy) / cos(sy);
    const double d = -sin(rot - sy) * tan(sx) / cos(sy) + cos(rot);
    mt[0] = d, mt[1] = -b, mt[2] = 0.0, mt[3] = -c, mt[4] = a, mt[5] = 0.0;
    mt[2] += mt[0] * (-cx - tx) + mt[1] * (-cy - ty);
    mt[5] += mt[3] * (-cx - tx) + mt[4] * (-cy - ty);
    mt[2] += cx;
    mt[5] += cy;
}

/* ---- colour --------------------------------------------------------------------------- */

/* a float32 result as torchvision stores it in uint8: clamped to [0, 255],
 * truncated */
static uint8_t to_u8(float v)
{
    return (uint8_t)(v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v);
}

/* torchvision's _blend of a pixel: ratio * x + (1 - ratio) * y in float32 */
static uint8_t blend(float ratio, float rest, float x, float y)
{
    return to_u8(ratio * x + rest * y);
}

/* rgb_to_grayscale of pixel i: (0.2989 r + 0.587 g + 0.114 b) in float32, truncated */
static uint8_t gray_at(const uint8_t *img, size_t plane, size_t i)
{
    return (uint8_t)(0.2989f * (float)img[i] + 0.587f * (float)img[plane + i] + 0.114f * (float)img[2 * plane + i]);
}

/* torchvision's equalize of one channel (integer arithmetic) */
static void equalize_plane(uint8_t *p, size_t n)
{
    int64_t hist[256] = { 0 };
    for (size_t i = 0; i < n; i++)
        hist[p[i]]++;
    int last = 255;
    while (last > 0 && hist[last] == 0)
        last--;
    int64_t total = 0;
    for (int v = 0; v < last; v++) /* every nonzero count but the last */
        total += hist[v];
    const int64_t step = total / 255;
    if (step == 0)
        return;
    uint8_t lut[256];
    int64_t cum = 0;
    lut[0] = 0;
    for (int v = 0; v < 255; v++) {
        cum += hist[v];
        const int64_t x = (cum + step / 2) / step;
        lut[v + 1] = (uint8_t)(x > 255 ? 255 : x);
    }
    for (size_t i = 0; i < n; i++)
        p[i] = lut[p[i]];
}

void moert_randaug_op(uint8_t *img, int c, int h, int w, int op, double mag, uint8_t *scratch)
{
    const size_t plane = (size_t)h * (size_t)w, n = plane * (size_t)c;
    const double pi = 3.14159265358979323846;
    /* the colour operations' blend: factor 1 + mag, and 1 - factor, each
     * rounded to float32 as torch takes a Python float */
    const float r = (float)(1.0 + mag), rest = (float)(1.0 - (1.0 + mag));
    double mt[6];
    switch (op) {
    case MOERT_RA_SHEAR_X: /* affine(shear = [degrees(atan(mag)), 0], center = [0, 0]) */
        inverse_affine(mt, -0.5 * w, -0.5 * h, 0.0, 0.0, 0.0, atan(mag) * 180.0 / pi, 0.0);
        warp(img, c, h, w, mt, scratch);
        break;
    case MOERT_RA_SHEAR_Y:
        inverse_affine(mt, -0.5 * w, -0.5 * h, 0.0, 0.0, 0.0, 0.0, atan(mag) * 180.0 / pi);
        warp(img, c, h, w, mt, scratch);
        break;
    case MOERT_RA_TRANSLATE_X: /* translate = [int(mag), 0] */
        inverse_affine(mt, 0.0, 0.0, 0.0, (double)(int)mag, 0.0, 0.0, 0.0);
        warp(img, c, h, w, mt, scratch);
        break;
    case MOERT_RA_TRANSLATE_Y:
        inverse_affine(mt, 0.0, 0.0, 0.0, 0.0, (double)(int)mag, 0.0, 0.0);
        warp(img, c, h, w, mt, scratch);
        break;
    case MOERT_RA_ROTATE: /* rotate(mag): the inverse map of -mag about the centre */
        inverse_affine(mt, 0.0, 0.0, -mag, 0.0, 0.0, 0.0, 0.0);
        warp(img, c, h, w, mt, scratch);
        break;
    case MOERT_RA_BRIGHTNESS: /* blend with black */
        for (size_t i = 0; i < n; i++)
            img[i] = blend(r, rest, (float)img[i], 0.0f);
        break;
    case MOERT_RA_COLOR: /* blend with the grey image; nothing for one channel */
        if (c != 3)
            break;
        for (size_t i = 0; i < plane; i++) {
            const float g = (float)gray_at(img, plane, i);
            for (int ch = 0; ch < 3; ch++)
                img[ch * plane + i] = blend(r, rest, (float)img[ch * plane + i], g);
        }
        break;
    case MOERT_RA_CONTRAST: { /* blend with the mean of the grey image (of the image itself, one channel) */
        double sum = 0.0; /* exact: integers */
        if (c == 3)
            for (size_t i = 0; i < plane; i++)
                sum += (double)gray_at(img, plane, i);
        else
            for (size_t i = 0; i < n; i++)
                sum += (double)img[i];
        const float mean = (float)sum / (float)plane;
        for (size_t i = 0; i < n; i++)
            img[i] = blend(r, rest, (float)img[i], mean);
        break;
    }
    case MOERT_RA_SHARPNESS: { /* blend with the 3x3 smoothing (centre 5, the rest 1; the
                                * border pixels are their own smoothing, and blended too) */
        if (h <= 2 || w <= 2)
            break;
        memcpy(scratch, img, n);
        const float k1 = 1.0f / 13.0f, k5 = 5.0f / 13.0f;
        for (int ch = 0; ch < c; ch++) {
            const uint8_t *s = scratch + ch * plane;
            uint8_t *o = img + ch * plane;
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++) {
                    const float px = (float)s[(size_t)y * w + x];
                    float blur = px;
                    if (y > 0 && y < h - 1 && x > 0 && x < w - 1) {
                        float acc = 0.0f;
                        for (int dy = -1; dy <= 1; dy++)
                            for (int dx = -1; dx <= 1; dx++)
                                acc += (dy == 0 && dx == 0 ? k5 : k1) * (float)s[(size_t)(y + dy) * w + x + dx];
                        blur = nearbyintf(acc);
                    }
                    o[(size_t)y * w + x] = blend(r, rest, px, blur);
                }
        }
        break;
    }
    case MOERT_RA_POSTERIZE: { /* keep the top int(mag) bits */
        const uint8_t mask = (uint8_t)(0xFF << (8 - (int)mag));
        for (size_t i = 0; i < n; i++)
            img[i] &= mask;
        break;
    }
    case MOERT_RA_SOLARIZE: /* invert the pixels at or above the threshold */
        for (size_t i = 0; i < n; i++)
            if ((double)img[i] >= (double)(float)mag)
                img[i] = (uint8_t)(255 - img[i]);
        break;
    case MOERT_RA_AUTOCONTRAST: /* each channel stretched to [0, 255] */
        for (int ch = 0; ch < c; ch++) {
            uint8_t *p = img + ch * plane, lo = 255, hi = 0;
            for (size_t i = 0; i < plane; i++) {
                lo = p[i] < lo ? p[i] : lo;
                hi = p[i] > hi ? p[i] : hi;
            }
            if (hi == lo)
                continue; /* torchvision: min 0, scale 1 */
            const float scale = 255.0f / ((float)hi - (float)lo);
            for (size_t i = 0; i < plane; i++)
                p[i] = to_u8(((float)p[i] - (float)lo) * scale);
        }
        break;
    case MOERT_RA_EQUALIZE:
        for (int ch = 0; ch < c; ch++)
            equalize_plane(img + ch * plane, plane);
        break;
    default: /* identity */
        break;
    }
}

/* splitmix64: the draws of one image from its hash */
static uint64_t next_draw(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

void moert_randaugment(uint8_t *img, int c, int h, int w, int n, int m, uint64_t hash, uint8_t *scratch)
{
    uint64_t s = hash;
    for (int k = 0; k < n; k++) {
        const int op = (int)data_below(next_draw(&s), MOERT_RA_OPS);
        double mag = moert_randaug_magnitude(op, m, h, w);
        if (moert_randaug_signed(op) && (next_draw(&s) >> 63))
            mag = -mag;
        moert_randaug_op(img, c, h, w, op, mag, scratch);
    }
}
