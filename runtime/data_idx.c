/* data_idx.c: IDX files (MNIST, Fashion-MNIST), plain or gzip.
 *
 * IDX: a big-endian magic 0x0000TTDD (TT = element type, 0x08 = uint8;
 * DD = number of dimensions), DD big-endian uint32 sizes, then the
 * elements. Images are idx3 (n, rows, cols), labels idx1 (n). zlib's gzread
 * reads both plain and gzip files, so the same code serves both. */
#include "data_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define IDX_IMAGES_MAGIC 0x00000803u
#define IDX_LABELS_MAGIC 0x00000801u

static gzFile open_gz(const char *path, char *errbuf, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        data_errf(errbuf, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        data_errf(errbuf, errlen, "%s: not a regular file", path);
        return NULL;
    }
    errno = 0;
    gzFile f = gzopen(path, "rb");
    if (!f) {
        data_errf(errbuf, errlen, "%s: cannot open: %s", path,
                  errno ? strerror(errno) : "out of memory");
        return NULL;
    }
    gzbuffer(f, 1u << 17);
    return f;
}

/* Reads exactly n bytes; what names them in the message. */
static int gz_read_exact(gzFile f, const char *path, void *buf, size_t n, const char *what,
                         char *errbuf, size_t errlen)
{
    size_t got = 0;
    while (got < n) {
        size_t chunk = n - got;
        if (chunk > (size_t)INT_MAX)
            chunk = (size_t)INT_MAX;
        int r = gzread(f, (uint8_t *)buf + got, (unsigned)chunk);
        if (r < 0) {
            int errnum;
            const char *msg = gzerror(f, &errnum);
            data_errf(errbuf, errlen, "%s: gzip error reading %s: %s", path, what,
                      errnum == Z_ERRNO ? strerror(errno) : msg);
            return -1;
        }
        if (r == 0) {
            data_errf(errbuf, errlen, "%s: truncated: the file ends inside %s", path, what);
            return -1;
        }
        got += (size_t)r;
    }
    return 0;
}

/* 0 at the end of the data, -1 (with a message) if more bytes follow. */
static int gz_expect_end(gzFile f, const char *path, const char *after, char *errbuf,
                         size_t errlen)
{
    uint8_t b;
    int r = gzread(f, &b, 1);
    if (r == 0)
        return 0;
    if (r < 0) {
        int errnum;
        const char *msg = gzerror(f, &errnum);
        data_errf(errbuf, errlen, "%s: gzip error after %s: %s", path, after,
                  errnum == Z_ERRNO ? strerror(errno) : msg);
    } else {
        data_errf(errbuf, errlen, "%s: unexpected data after %s (header count too small?)",
                  path, after);
    }
    return -1;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static const char *magic_hint(uint32_t magic)
{
    if (magic == IDX_IMAGES_MAGIC)
        return " (this is an idx3 images file)";
    if (magic == IDX_LABELS_MAGIC)
        return " (this is an idx1 labels file)";
    if ((magic >> 16) == 0x1f8b)
        return " (gzip data that did not decompress)";
    if ((magic & 0xffff0000u) == 0 && (magic >> 8 & 0xff) != 0x08)
        return " (IDX, but not unsigned bytes)";
    return "";
}

static int check_magic(uint32_t magic, uint32_t want, const char *path, const char *kind,
                       char *errbuf, size_t errlen)
{
    if (magic == want)
        return 0;
    data_errf(errbuf, errlen, "%s: bad IDX magic 0x%08X (expected 0x%08X for %s)%s", path,
              (unsigned)magic, (unsigned)want, kind, magic_hint(magic));
    return -1;
}

static int load_images(moert_images *out, const char *path, moert_shape want, char *errbuf,
                       size_t errlen)
{
    gzFile f = open_gz(path, errbuf, errlen);
    if (!f)
        return -1;
    uint8_t hdr[16], *img = NULL;
    data_work wk = {0};
    int rc = -1;
    if (gz_read_exact(f, path, hdr, 4, "the IDX magic", errbuf, errlen) != 0 ||
        check_magic(be32(hdr), IDX_IMAGES_MAGIC, path, "uint8 images", errbuf, errlen) != 0 ||
        gz_read_exact(f, path, hdr + 4, 12, "the IDX header", errbuf, errlen) != 0)
        goto done;
    uint32_t n = be32(hdr + 4), rows = be32(hdr + 8), cols = be32(hdr + 12);
    if (n == 0 || n > (uint32_t)MOERT_IMAGES_MAX) {
        data_errf(errbuf, errlen, "%s: bad image count %u in the IDX header", path, (unsigned)n);
        goto done;
    }
    if (rows == 0 || cols == 0 || rows > MOERT_IMAGE_MAX_DIM || cols > MOERT_IMAGE_MAX_DIM) {
        data_errf(errbuf, errlen, "%s: bad image size %ux%u in the IDX header (1..%d)", path,
                  (unsigned)rows, (unsigned)cols, MOERT_IMAGE_MAX_DIM);
        goto done;
    }
    if (data_images_begin(out, want, 1, (int)rows, (int)cols, path, errbuf, errlen) != 0)
        goto done;
    size_t bytes = (size_t)rows * cols; /* <= 2^28 */
    if (!(img = malloc(bytes))) {
        data_errf(errbuf, errlen, "%s: out of memory", path);
        goto done;
    }
    data_view v = {img, 1, (int)rows, (int)cols, (ptrdiff_t)bytes, (ptrdiff_t)cols, 1};
    for (uint32_t i = 0; i < n; i++) {
        char what[64];
        snprintf(what, sizeof what, "image %u of %u", (unsigned)i, (unsigned)n);
        if (gz_read_exact(f, path, img, bytes, what, errbuf, errlen) != 0)
            goto done;
        if (data_images_append(out, &wk, &v, 0, path, errbuf, errlen) != 0)
            goto done;
    }
    if (gz_expect_end(f, path, "the last image", errbuf, errlen) != 0)
        goto done;
    rc = 0;
done:
    gzclose(f);
    free(img);
    data_work_free(&wk);
    return rc;
}

static int load_labels(moert_images *out, const char *path, char *errbuf, size_t errlen)
{
    gzFile f = open_gz(path, errbuf, errlen);
    if (!f)
        return -1;
    uint8_t hdr[8], *lab = NULL;
    int rc = -1;
    if (gz_read_exact(f, path, hdr, 4, "the IDX magic", errbuf, errlen) != 0 ||
        check_magic(be32(hdr), IDX_LABELS_MAGIC, path, "uint8 labels", errbuf, errlen) != 0 ||
        gz_read_exact(f, path, hdr + 4, 4, "the IDX header", errbuf, errlen) != 0)
        goto done;
    uint32_t n = be32(hdr + 4);
    if ((int64_t)n != out->n) {
        data_errf(errbuf, errlen, "%s: %u labels for %lld images", path, (unsigned)n,
                  (long long)out->n);
        goto done;
    }
    if (!(lab = malloc(n))) {
        data_errf(errbuf, errlen, "%s: out of memory", path);
        goto done;
    }
    if (gz_read_exact(f, path, lab, n, "the labels", errbuf, errlen) != 0)
        goto done;
    if (gz_expect_end(f, path, "the last label", errbuf, errlen) != 0)
        goto done;
    for (uint32_t i = 0; i < n; i++)
        out->labels[i] = lab[i];
    rc = 0;
done:
    gzclose(f);
    free(lab);
    return rc;
}

int moert_load_idx(moert_images *out, const char *images_path, const char *labels_path,
                   moert_shape want, char *errbuf, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (data_check_shape(want, images_path, errbuf, errlen) != 0)
        return -1;
    if (load_images(out, images_path, want, errbuf, errlen) != 0 ||
        load_labels(out, labels_path, errbuf, errlen) != 0) {
        moert_images_free(out);
        return -1;
    }
    data_images_finish(out);
    return 0;
}

/* dir/<split>-<kind>-ubyte or, failing that, the same with .gz */
static char *find_idx(const char *dir, const char *split, const char *kind)
{
    char name[256];
    for (int gz = 0; gz < 2; gz++) {
        snprintf(name, sizeof name, "%s-%s-ubyte%s", split, kind, gz ? ".gz" : "");
        char *p = data_path_join(dir, name);
        if (!p || access(p, F_OK) == 0)
            return p;
        free(p);
    }
    return NULL;
}

int moert_load_idx_dir(moert_images *out, const char *dir, const char *split,
                       moert_shape want, char *errbuf, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!split || !*split || strchr(split, '/') || strlen(split) > 64) {
        data_errf(errbuf, errlen, "%s: bad IDX split name \"%s\" (e.g. train, t10k)", dir,
                  split ? split : "(null)");
        return -1;
    }
    char *img = find_idx(dir, split, "images-idx3");
    char *lab = find_idx(dir, split, "labels-idx1");
    int rc = -1;
    if (!img || !lab) {
        data_errf(errbuf, errlen, "%s: no %s-%s-ubyte or %s-%s-ubyte.gz", dir, split,
                  img ? "labels-idx1" : "images-idx3", split, img ? "labels-idx1" : "images-idx3");
    } else {
        rc = moert_load_idx(out, img, lab, want, errbuf, errlen);
    }
    free(img);
    free(lab);
    return rc;
}
