/* data_decode.c: image file decoders into 8-bit gray or RGB (HWC).
 * PPM/PGM (P2, P3, P5, P6) are parsed here, bounded by the buffer; PNG goes
 * through libpng and JPEG through libjpeg, each with an error handler that
 * longjmps back so that a corrupt file is an error message, never an exit.
 * Alpha is dropped, palettes expand to RGB, 16-bit samples keep their high
 * byte, CMYK JPEGs are converted to RGB. */
#include "data_internal.h"

#include <limits.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

/* ------------------------------------------------------------------ */
/* PPM / PGM                                                           */
/* ------------------------------------------------------------------ */

typedef struct pnm_cursor {
    const uint8_t *p;
    size_t len, pos;
} pnm_cursor;

static int pnm_is_space(int ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

/* Skips whitespace and '#' comments (to the end of their line). */
static void pnm_skip(pnm_cursor *c)
{
    while (c->pos < c->len) {
        int ch = c->p[c->pos];
        if (pnm_is_space(ch)) {
            c->pos++;
        } else if (ch == '#') {
            while (c->pos < c->len && c->p[c->pos] != '\n' && c->p[c->pos] != '\r')
                c->pos++;
        } else {
            break;
        }
    }
}

/* A decimal number <= max after optional space/comments; -1 if none or too big. */
static int pnm_uint(pnm_cursor *c, unsigned max, unsigned *v)
{
    pnm_skip(c);
    unsigned x = 0;
    size_t start = c->pos;
    while (c->pos < c->len && c->p[c->pos] >= '0' && c->p[c->pos] <= '9') {
        x = x * 10 + (unsigned)(c->p[c->pos] - '0');
        if (x > max)
            return -1;
        c->pos++;
    }
    if (c->pos == start)
        return -1;
    /* a number must end at whitespace, a comment or the end of data */
    if (c->pos < c->len && !pnm_is_space(c->p[c->pos]) && c->p[c->pos] != '#')
        return -1;
    *v = x;
    return 0;
}

static int decode_pnm(const char *path, const uint8_t *buf, size_t len, data_raw *raw,
                      char *errbuf, size_t errlen)
{
    pnm_cursor c = {buf, len, 2};
    int kind = buf[1] - '0';
    if (kind == 1 || kind == 4) {
        data_errf(errbuf, errlen, "%s: PBM bitmaps (P%d) are not supported", path, kind);
        return -1;
    }
    if (kind != 2 && kind != 3 && kind != 5 && kind != 6) {
        data_errf(errbuf, errlen, "%s: unsupported PNM type P%c (expected P2, P3, P5 or P6)",
                  path, buf[1]);
        return -1;
    }
    if (len > 2 && !pnm_is_space(buf[2])) {
        data_errf(errbuf, errlen, "%s: bad PNM header: no whitespace after P%d", path, kind);
        return -1;
    }
    unsigned w, h, maxval;
    if (pnm_uint(&c, MOERT_IMAGE_MAX_DIM, &w) != 0 || w == 0) {
        data_errf(errbuf, errlen, "%s: bad PNM header: width missing or not in 1..%d", path,
                  MOERT_IMAGE_MAX_DIM);
        return -1;
    }
    if (pnm_uint(&c, MOERT_IMAGE_MAX_DIM, &h) != 0 || h == 0) {
        data_errf(errbuf, errlen, "%s: bad PNM header: height missing or not in 1..%d", path,
                  MOERT_IMAGE_MAX_DIM);
        return -1;
    }
    if (pnm_uint(&c, 65535, &maxval) != 0 || maxval == 0) {
        data_errf(errbuf, errlen, "%s: bad PNM header: maxval missing or not in 1..65535", path);
        return -1;
    }
    int ch = (kind == 3 || kind == 6) ? 3 : 1;
    size_t samples = (size_t)w * h * (size_t)ch; /* <= 2^14 * 2^14 * 3: no overflow */
    size_t bps = maxval < 256 ? 1 : 2;
    int binary = kind == 5 || kind == 6;
    /* check the data is there before allocating: exactly one whitespace
     * byte then samples * bps bytes (binary), at least 2 bytes a sample (plain) */
    size_t have = c.pos < len ? len - c.pos - 1 : 0;
    size_t need = binary ? samples * bps : 2 * samples - 1;
    if (binary && c.pos < len && !pnm_is_space(buf[c.pos])) {
        data_errf(errbuf, errlen, "%s: bad PNM header: no whitespace after maxval", path);
        return -1;
    }
    if (have < need) {
        data_errf(errbuf, errlen,
                  "%s: truncated PNM: the %ux%u raster needs %s%zu bytes, the file has %zu", path,
                  w, h, binary ? "" : "at least ", need, have);
        return -1;
    }
    uint8_t *px = malloc(samples);
    if (!px) {
        data_errf(errbuf, errlen, "%s: out of memory for a %ux%u image", path, w, h);
        return -1;
    }
    if (binary) {
        const uint8_t *r = buf + c.pos + 1;
        for (size_t i = 0; i < samples; i++) {
            unsigned v = bps == 1 ? r[i] : (unsigned)r[2 * i] << 8 | r[2 * i + 1];
            if (v > maxval) {
                data_errf(errbuf, errlen, "%s: sample %zu is %u, above maxval %u", path, i, v,
                          maxval);
                free(px);
                return -1;
            }
            px[i] = (uint8_t)(maxval == 255 ? v : (v * 255u + maxval / 2) / maxval);
        }
    } else {
        for (size_t i = 0; i < samples; i++) {
            unsigned v;
            if (pnm_uint(&c, maxval, &v) != 0) {
                data_errf(errbuf, errlen,
                          "%s: plain PNM sample %zu of %zu missing, malformed or above maxval %u",
                          path, i, samples, maxval);
                free(px);
                return -1;
            }
            px[i] = (uint8_t)(maxval == 255 ? v : (v * 255u + maxval / 2) / maxval);
        }
    }
    raw->px = px;
    raw->c = ch;
    raw->h = (int)h;
    raw->w = (int)w;
    return 0;
}

/* ------------------------------------------------------------------ */
/* PNG                                                                 */
/* ------------------------------------------------------------------ */

typedef struct png_ctx {
    const uint8_t *buf;
    size_t len, pos;
    char msg[256];
    uint8_t *px;        /* owned here until success */
    png_bytep *rows;
} png_ctx;

static void png_mem_read(png_structp png, png_bytep out, size_t n)
{
    png_ctx *ctx = png_get_io_ptr(png);
    if (n > ctx->len - ctx->pos)
        png_error(png, "file is truncated");
    memcpy(out, ctx->buf + ctx->pos, n);
    ctx->pos += n;
}

static void png_on_error(png_structp png, png_const_charp msg)
{
    png_ctx *ctx = png_get_error_ptr(png);
    snprintf(ctx->msg, sizeof ctx->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

/* Runs the decode under setjmp; everything it allocates lives in ctx (an
 * object of the caller), so nothing is lost by the longjmp. */
static int png_decode_inner(png_structp png, png_infop info, png_ctx *ctx, data_raw *raw)
{
    if (setjmp(png_jmpbuf(png)))
        return -1;
    png_set_user_limits(png, MOERT_IMAGE_MAX_DIM, MOERT_IMAGE_MAX_DIM);
    png_set_read_fn(png, ctx, png_mem_read);
    png_read_info(png, info);
    png_uint_32 w, h;
    int depth, ctype, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    if (ctype == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(png);
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8)
        png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16)
        png_set_strip_16(png);
    if (ctype & PNG_COLOR_MASK_ALPHA)
        png_set_strip_alpha(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int ch = png_get_channels(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    if ((ch != 1 && ch != 3) || rowbytes != (size_t)w * (size_t)ch || w == 0 || h == 0 ||
        w > MOERT_IMAGE_MAX_DIM || h > MOERT_IMAGE_MAX_DIM) {
        snprintf(ctx->msg, sizeof ctx->msg, "unexpected layout after conversion (%d channels)",
                 ch);
        return -1;
    }
    ctx->px = malloc(rowbytes * h);
    ctx->rows = malloc(h * sizeof *ctx->rows);
    if (!ctx->px || !ctx->rows) {
        snprintf(ctx->msg, sizeof ctx->msg, "out of memory for a %ux%u image", (unsigned)w,
                 (unsigned)h);
        return -1;
    }
    for (png_uint_32 y = 0; y < h; y++)
        ctx->rows[y] = ctx->px + (size_t)y * rowbytes;
    png_read_image(png, ctx->rows);
    raw->c = ch;
    raw->h = (int)h;
    raw->w = (int)w;
    return 0;
}

static int decode_png(const char *path, const uint8_t *buf, size_t len, data_raw *raw,
                      char *errbuf, size_t errlen)
{
    png_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.buf = buf;
    ctx.len = len;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, png_on_error,
                                             png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_read_struct(png ? &png : NULL, NULL, NULL);
        data_errf(errbuf, errlen, "%s: out of memory starting the PNG decoder", path);
        return -1;
    }
    int rc = png_decode_inner(png, info, &ctx, raw);
    png_destroy_read_struct(&png, &info, NULL);
    free(ctx.rows);
    if (rc != 0) {
        free(ctx.px);
        data_errf(errbuf, errlen, "%s: bad PNG: %s", path, ctx.msg);
        return -1;
    }
    raw->px = ctx.px;
    return 0;
}

/* ------------------------------------------------------------------ */
/* JPEG                                                                */
/* ------------------------------------------------------------------ */

typedef struct jpeg_ctx {
    struct jpeg_error_mgr pub; /* first: libjpeg hands us a pointer to it */
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX + 64];
    int truncated;
    uint8_t *px;   /* the output, owned here until success */
    uint8_t *row;  /* one CMYK scanline */
} jpeg_ctx;

static void jpeg_on_error(j_common_ptr cinfo)
{
    jpeg_ctx *ctx = (jpeg_ctx *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, ctx->msg);
    longjmp(ctx->jb, 1);
}

static void jpeg_on_message(j_common_ptr cinfo, int level)
{
    jpeg_ctx *ctx = (jpeg_ctx *)cinfo->err;
    if (level >= 0)
        return; /* trace messages */
    cinfo->err->num_warnings++;
    /* data ends early: libjpeg would fill the rest with gray */
    if (cinfo->err->msg_code == JWRN_JPEG_EOF || cinfo->err->msg_code == JWRN_HIT_MARKER) {
        if (!ctx->truncated)
            (*cinfo->err->format_message)(cinfo, ctx->msg);
        ctx->truncated = 1;
    }
}

static int jpeg_decode_inner(struct jpeg_decompress_struct *cinfo, jpeg_ctx *ctx,
                             const uint8_t *buf, size_t len, data_raw *raw)
{
    if (setjmp(ctx->jb))
        return -1;
    jpeg_create_decompress(cinfo);
    jpeg_mem_src(cinfo, (unsigned char *)buf, (unsigned long)len);
    jpeg_read_header(cinfo, TRUE);
    if (cinfo->image_width == 0 || cinfo->image_height == 0 ||
        cinfo->image_width > MOERT_IMAGE_MAX_DIM || cinfo->image_height > MOERT_IMAGE_MAX_DIM) {
        snprintf(ctx->msg, sizeof ctx->msg, "size %ux%u out of range 1..%d",
                 (unsigned)cinfo->image_width, (unsigned)cinfo->image_height,
                 MOERT_IMAGE_MAX_DIM);
        return -1;
    }
    int cmyk = cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK;
    if (cinfo->jpeg_color_space == JCS_GRAYSCALE)
        cinfo->out_color_space = JCS_GRAYSCALE;
    else if (cmyk)
        cinfo->out_color_space = JCS_CMYK;
    else
        cinfo->out_color_space = JCS_RGB;
    jpeg_start_decompress(cinfo);
    int comps = cinfo->output_components;
    unsigned w = cinfo->output_width, h = cinfo->output_height;
    int ch = cmyk ? 3 : comps;
    if ((cmyk && comps != 4) || (!cmyk && comps != 1 && comps != 3) || w == 0 || h == 0 ||
        w > MOERT_IMAGE_MAX_DIM || h > MOERT_IMAGE_MAX_DIM) {
        snprintf(ctx->msg, sizeof ctx->msg, "unexpected output layout (%d components)", comps);
        return -1;
    }
    size_t stride = (size_t)w * (size_t)ch;
    ctx->px = malloc(stride * h);
    ctx->row = cmyk ? malloc((size_t)w * 4) : NULL;
    if (!ctx->px || (cmyk && !ctx->row)) {
        snprintf(ctx->msg, sizeof ctx->msg, "out of memory for a %ux%u image", w, h);
        return -1;
    }
    int inverted = cinfo->saw_Adobe_marker; /* Adobe CMYK is stored inverted */
    while (cinfo->output_scanline < h) {
        uint8_t *dst = ctx->px + (size_t)cinfo->output_scanline * stride;
        JSAMPROW r = cmyk ? ctx->row : dst;
        if (jpeg_read_scanlines(cinfo, &r, 1) != 1)
            break;
        if (cmyk) {
            for (unsigned x = 0; x < w; x++) {
                const uint8_t *s = ctx->row + 4 * x;
                unsigned k = inverted ? s[3] : 255u - s[3]; /* 255 - K */
                for (int j = 0; j < 3; j++) {
                    unsigned cc = inverted ? 255u - s[j] : s[j];
                    unsigned t = cc * k + 128;
                    unsigned m = ((t >> 8) + t) >> 8; /* cc * k / 255 */
                    dst[3 * x + j] = (uint8_t)(k > m ? k - m : 0);
                }
            }
        }
    }
    if (ctx->truncated || cinfo->output_scanline < h) {
        if (!ctx->truncated)
            snprintf(ctx->msg, sizeof ctx->msg, "image data ends early");
        return -1;
    }
    jpeg_finish_decompress(cinfo);
    if (ctx->truncated)
        return -1;
    raw->c = ch;
    raw->h = (int)h;
    raw->w = (int)w;
    return 0;
}

static int decode_jpeg(const char *path, const uint8_t *buf, size_t len, data_raw *raw,
                       char *errbuf, size_t errlen)
{
    struct jpeg_decompress_struct cinfo;
    jpeg_ctx ctx;
    memset(&cinfo, 0, sizeof cinfo);
    memset(&ctx, 0, sizeof ctx);
    if (len > ULONG_MAX) {
        data_errf(errbuf, errlen, "%s: file too large for libjpeg", path);
        return -1;
    }
    cinfo.err = jpeg_std_error(&ctx.pub);
    ctx.pub.error_exit = jpeg_on_error;
    ctx.pub.emit_message = jpeg_on_message;
    int rc = jpeg_decode_inner(&cinfo, &ctx, buf, len, raw);
    jpeg_destroy_decompress(&cinfo);
    free(ctx.row);
    if (rc != 0) {
        free(ctx.px);
        data_errf(errbuf, errlen, "%s: bad JPEG: %s", path, ctx.msg);
        return -1;
    }
    raw->px = ctx.px;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Dispatch                                                            */
/* ------------------------------------------------------------------ */

int data_decode(const char *path, const uint8_t *buf, size_t len, data_raw *raw, char *errbuf,
                size_t errlen)
{
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memset(raw, 0, sizeof *raw);
    if (len == 0) {
        data_errf(errbuf, errlen, "%s: empty file", path);
        return -1;
    }
    if (len >= 8 && memcmp(buf, png_sig, 8) == 0)
        return decode_png(path, buf, len, raw, errbuf, errlen);
    if (len >= 3 && buf[0] == 0xFF && buf[1] == 0xD8 && buf[2] == 0xFF)
        return decode_jpeg(path, buf, len, raw, errbuf, errlen);
    if (len >= 2 && buf[0] == 'P' && buf[1] >= '1' && buf[1] <= '7')
        return decode_pnm(path, buf, len, raw, errbuf, errlen);
    data_errf(errbuf, errlen, "%s: unrecognized image format (expected PNG, JPEG or PPM/PGM)",
              path);
    return -1;
}

int data_decode_file(const char *path, data_raw *raw, char *errbuf, size_t errlen)
{
    uint8_t *buf;
    size_t len;
    memset(raw, 0, sizeof *raw);
    if (data_read_file(path, DATA_MAX_FILE_BYTES, &buf, &len, errbuf, errlen) != 0)
        return -1;
    int rc = data_decode(path, buf, len, raw, errbuf, errlen);
    free(buf);
    return rc;
}

int moert_image_load(const char *path, moert_shape want, uint8_t *out, char *errbuf,
                     size_t errlen)
{
    if (data_check_shape(want, path, errbuf, errlen) != 0)
        return -1;
    if (want.c == 0 || want.h == 0) {
        data_errf(errbuf, errlen, "%s: moert_image_load needs an explicit shape", path);
        return -1;
    }
    data_raw raw;
    if (data_decode_file(path, &raw, errbuf, errlen) != 0)
        return -1;
    data_view v = {raw.px, raw.c, raw.h, raw.w, 1, (ptrdiff_t)raw.w * raw.c, raw.c};
    data_work wk = {0};
    int rc = data_convert(&wk, &v, want.c, want.h, want.w, out);
    data_work_free(&wk);
    free(raw.px);
    if (rc != 0)
        data_errf(errbuf, errlen, "%s: out of memory while resizing", path);
    return rc;
}
