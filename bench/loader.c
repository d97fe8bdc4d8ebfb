/* bench/loader.c: how many training images per second the loader assembles
 * (moert_mixture_next: pick, augment, normalize, CutMix), by number of
 * loader threads, for the augmentations of two examples:
 *
 *   gcvit: 224x224x3, flip, RandAugment(n = 2, m = 9), CutMix(1.0, 0.5),
 *          batches of 128 (examples/gcvit_moe.moe's share of one GPU);
 *   damex: 28x28x1, random crop (padding 2) and flip, batches of 1024;
 *   gcvit_files: gcvit's, from JPEG files of 500x375 (about ImageNet's
 *          typical size; quality 90) decoded and resized as they are
 *          drawn, as in_memory = false makes them (written here into a
 *          temporary folder).
 *
 * The images of the first two are random pixels held in memory, as the
 * trainer holds its decoded datasets. `make bench-loader` runs it; compare
 * the figures with the trainer's images/s on the GPU (`./train --bench`):
 * the loader keeps up when it assembles more.
 *
 *   loader [--steps N] [--threads 1,2,4,8] [--only gcvit|damex|gcvit_files] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>

#include "moert_core.h"
#include "moert_data.h"

typedef struct config {
    const char *name;
    int c, hw, batch;
    unsigned aug;
    int pad, ra_n, ra_m;
    double cm_prob;
} config;

static const config CONFIGS[] = {
    { "gcvit", 3, 224, 128, MOERT_AUG_FLIP, 0, 2, 9, 0.5 },
    { "damex", 1, 28, 1024, MOERT_AUG_CROP | MOERT_AUG_FLIP, 2, 0, 0, 0.0 },
    { "gcvit_files", 3, 224, 128, MOERT_AUG_FLIP, 0, 2, 9, 0.5 },
};

enum { FILES = 256, FILE_W = 500, FILE_H = 375, FILE_CLASSES = 4 };

static void fail(const char *what, const char *err)
{
    fprintf(stderr, "loader: %s: %s\n", what, err);
    exit(1);
}

/* images per second of `steps` batches with `threads` loader threads */
static double run(const config *cf, const moert_images *im, int threads, int steps)
{
    char err[256];
    moert_mix_source src;
    memset(&src, 0, sizeof src);
    src.images = im;
    src.weight = 1.0;
    for (int c = 0; c < MOERT_MAX_CHANNELS; c++) {
        src.mean[c] = 0.5f;
        src.std[c] = 0.25f;
    }
    src.aug = cf->aug;
    src.pad = cf->pad;
    src.randaug_n = cf->ra_n;
    src.randaug_m = cf->ra_m;
    moert_mixture *m = moert_mixture_create(&src, 1, 1, err, sizeof err);
    if (!m)
        fail("mixture", err);
    if (moert_mixture_set_cutmix(m, 1.0, cf->cm_prob, 0, err, sizeof err) != 0 ||
        moert_mixture_set_workers(m, threads, err, sizeof err) != 0)
        fail("mixture", err);
    moert_batch b;
    if (moert_batch_init(&b, cf->batch, (moert_shape){ cf->c, cf->hw, cf->hw }, err, sizeof err) != 0)
        fail("batch", err);
    moert_mixture_next(m, &b); /* the first call allocates */
    const double t0 = moert_now();
    for (int s = 0; s < steps; s++)
        moert_mixture_next(m, &b);
    const double t = moert_now() - t0;
    moert_batch_free(&b);
    moert_mixture_free(m);
    return (double)cf->batch * steps / t;
}

/* A w x h RGB JPEG at path: smooth gradients with noise, as a photo */
static void write_jpeg(const char *path, int w, int h, moert_rng *r)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        fail(path, "cannot write");
    struct jpeg_compress_struct ci;
    struct jpeg_error_mgr jerr;
    ci.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&ci);
    jpeg_stdio_dest(&ci, f);
    ci.image_width = (JDIMENSION)w;
    ci.image_height = (JDIMENSION)h;
    ci.input_components = 3;
    ci.in_color_space = JCS_RGB;
    jpeg_set_defaults(&ci);
    jpeg_set_quality(&ci, 90, TRUE);
    jpeg_start_compress(&ci, TRUE);
    uint8_t *row = malloc((size_t)w * 3);
    if (!row)
        fail(path, "out of memory");
    const int a = (int)moert_rng_next_below(r, 256), b = (int)moert_rng_next_below(r, 256);
    while (ci.next_scanline < ci.image_height) {
        const int y = (int)ci.next_scanline;
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                int v = (a * (c + 1) + x * (c + 1) / 2 + y * (3 - c) / 2 + b) % 256 +
                        (int)moert_rng_next_below(r, 33) - 16;
                row[x * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
        JSAMPROW rows[1] = {row};
        jpeg_write_scanlines(&ci, rows, 1);
    }
    jpeg_finish_compress(&ci);
    jpeg_destroy_compress(&ci);
    free(row);
    fclose(f);
}

/* FILES JPEG files in FILE_CLASSES class folders under a new temporary
 * folder (its path in dir), listed into im at cf's size */
static void list_files(const config *cf, moert_images *im, char *dir, size_t len)
{
    char err[256], path[512];
    snprintf(dir, len, "%s/moecc-loader.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir))
        fail(dir, "cannot make the folder");
    moert_rng r;
    moert_rng_init(&r, 3, 4);
    for (int i = 0; i < FILES; i++) {
        snprintf(path, sizeof path, "%s/c%d", dir, i % FILE_CLASSES);
        mkdir(path, 0700);
        snprintf(path, sizeof path, "%s/c%d/%04d.jpg", dir, i % FILE_CLASSES, i);
        write_jpeg(path, FILE_W, FILE_H, &r);
    }
    if (moert_list_image_folder(im, dir, (moert_shape){ cf->c, cf->hw, cf->hw }, err, sizeof err) != 0)
        fail("list", err);
}

static void remove_files(const char *dir)
{
    char path[512];
    for (int i = 0; i < FILES; i++) {
        snprintf(path, sizeof path, "%s/c%d/%04d.jpg", dir, i % FILE_CLASSES, i);
        unlink(path);
    }
    for (int k = 0; k < FILE_CLASSES; k++) {
        snprintf(path, sizeof path, "%s/c%d", dir, k);
        rmdir(path);
    }
    rmdir(dir);
}

/* run() for each count of the comma-separated list threads */
static void bench_threads(const config *cf, const moert_images *im, const char *threads, int steps)
{
    char list[256];
    snprintf(list, sizeof list, "%s", threads);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        const int t = atoi(tok);
        if (t < 1) {
            fprintf(stderr, "loader: --threads %s: counts of at least 1\n", threads);
            exit(2);
        }
        printf("  %3d loader threads: %10.0f images/s\n", t, run(cf, im, t, steps));
        fflush(stdout);
    }
}

int main(int argc, char **argv)
{
    int steps = 10;
    const char *threads = "1,2,4,8", *only = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--steps") == 0)
            steps = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--threads") == 0)
            threads = argv[i + 1];
        else if (strcmp(argv[i], "--only") == 0)
            only = argv[i + 1];
        else {
            fprintf(stderr, "usage: loader [--steps N] [--threads 1,2,4,8] [--only gcvit|damex|gcvit_files]\n");
            return 2;
        }
    }
    if (steps < 1) {
        fprintf(stderr, "loader: --steps %d: at least 1\n", steps);
        return 2;
    }
    for (size_t k = 0; k < sizeof CONFIGS / sizeof CONFIGS[0]; k++) {
        const config *cf = &CONFIGS[k];
        if (only && strcmp(only, cf->name) != 0)
            continue;
        moert_images im;
        memset(&im, 0, sizeof im);
        char dir[256] = "";
        if (strcmp(cf->name, "gcvit_files") == 0) {
            list_files(cf, &im, dir, sizeof dir);
            printf("%s: %d JPEG files of %dx%d to %dx%dx%d, batches of %d, %d steps\n", cf->name, FILES, FILE_W,
                   FILE_H, cf->hw, cf->hw, cf->c, cf->batch, steps);
            bench_threads(cf, &im, threads, steps);
            moert_images_free(&im);
            remove_files(dir);
            continue;
        }
        im.n = 2048;
        im.c = cf->c;
        im.h = im.w = cf->hw;
        im.num_classes = 10;
        im.capacity = im.n;
        const size_t per = (size_t)cf->c * cf->hw * cf->hw;
        im.pixels = malloc((size_t)im.n * per);
        im.labels = malloc((size_t)im.n * sizeof *im.labels);
        if (!im.pixels || !im.labels)
            fail("images", "out of memory");
        moert_rng r;
        moert_rng_init(&r, 1, 2);
        for (size_t i = 0; i < (size_t)im.n * per; i++)
            im.pixels[i] = (uint8_t)moert_rng_next_below(&r, 256);
        for (int64_t i = 0; i < im.n; i++)
            im.labels[i] = (int32_t)(i % 10);
        printf("%s: %dx%dx%d, batches of %d, %d steps\n", cf->name, cf->hw, cf->hw, cf->c, cf->batch, steps);
        bench_threads(cf, &im, threads, steps);
        moert_images_free(&im);
    }
    return 0;
}
