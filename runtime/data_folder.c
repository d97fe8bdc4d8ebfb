/* data_folder.c: image files in folders - ImageNet-style class folders and
 * the GTSRB layout with its GT-*.csv annotations.
 *
 * Both loaders first list the files (with label and optional ROI), then
 * decode them in that order into the set, so the order is deterministic:
 * byte order of folder and file names, and CSV row order for GTSRB. */
#include "data_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define GT_MAX_BYTES ((size_t)64 << 20)
#define GT_MAX_INT 1000000

typedef struct entry {
    char *path;
    int32_t label;
    int has_roi, x1, y1, x2, y2;   /* crop [x1, x2) x [y1, y2) */
    int has_size, width, height;   /* size the annotation claims */
    const char *gt;                /* annotation file and line, for messages */
    long line;
} entry;

typedef struct entry_list {
    entry *v;
    size_t n, cap;
} entry_list;

static void entries_free(entry_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].path);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* Appends e (taking its path); frees the path on failure. */
static int entries_push(entry_list *l, const entry *e)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 256;
        entry *nv = realloc(l->v, nc * sizeof *nv);
        if (!nv) {
            free(e->path);
            return -1;
        }
        l->v = nv;
        l->cap = nc;
    }
    l->v[l->n++] = *e;
    return 0;
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int has_image_ext(const char *name)
{
    static const char *const exts[] = {".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".pnm"};
    size_t len = strlen(name);
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++) {
        size_t le = strlen(exts[i]);
        if (len > le && strcasecmp(name + len - le, exts[i]) == 0)
            return 1;
    }
    return 0;
}

/* Decodes e's file into raw (freeing what raw held) and makes v the view
 * of its image, cropped to its ROI; checks the annotation's size. gt
 * names the annotation for messages (NULL: the file alone). */
static int decode_entry(const entry *e, data_raw *raw, data_view *v, char *errbuf, size_t errlen)
{
    free(raw->px);
    raw->px = NULL;
    if (data_decode_file(e->path, raw, errbuf, errlen) != 0)
        return -1;
    if (e->has_size && (raw->w != e->width || raw->h != e->height)) {
        if (e->gt)
            data_errf(errbuf, errlen, "%s:%ld: %s is %dx%d (width x height), the annotation says %dx%d", e->gt,
                      e->line, e->path, raw->w, raw->h, e->width, e->height);
        else
            data_errf(errbuf, errlen, "%s: the image is %dx%d (width x height), its annotation says %dx%d",
                      e->path, raw->w, raw->h, e->width, e->height);
        return -1;
    }
    *v = (data_view){raw->px, raw->c, raw->h, raw->w, 1, (ptrdiff_t)raw->w * raw->c, raw->c};
    if (e->has_roi) {
        if (e->x1 < 0 || e->y1 < 0 || e->x2 <= e->x1 || e->y2 <= e->y1 || e->x2 > raw->w || e->y2 > raw->h) {
            if (e->gt)
                data_errf(errbuf, errlen, "%s:%ld: ROI (%d,%d)-(%d,%d) is empty or outside the %dx%d image %s",
                          e->gt, e->line, e->x1, e->y1, e->x2, e->y2, raw->w, raw->h, e->path);
            else
                data_errf(errbuf, errlen, "%s: its annotation's ROI (%d,%d)-(%d,%d) is empty or outside the %dx%d image",
                          e->path, e->x1, e->y1, e->x2, e->y2, raw->w, raw->h);
            return -1;
        }
        v->px += (ptrdiff_t)e->y1 * v->ystride + (ptrdiff_t)e->x1 * v->xstride;
        v->w = e->x2 - e->x1;
        v->h = e->y2 - e->y1;
    }
    return 0;
}

/* Where e's image comes from, for messages: its annotation's file and
 * line with the image's path, or the path alone. */
static const char *entry_where(const entry *e, char *buf, size_t len)
{
    if (!e->gt)
        return e->path;
    snprintf(buf, len, "%s:%ld (%s)", e->gt, e->line, e->path);
    return buf;
}

/* Decodes every entry into out (see moert_shape for zero fields of want). */
static int load_entries(moert_images *out, const entry_list *l, moert_shape want,
                        const char *root, char *errbuf, size_t errlen)
{
    data_work wk = {0};
    data_raw raw = {0};
    int rc = -1;
    for (size_t i = 0; i < l->n; i++) {
        const entry *e = &l->v[i];
        data_view v;
        if (decode_entry(e, &raw, &v, errbuf, errlen) != 0)
            goto done;
        if (i == 0) {
            if (data_images_begin(out, want, v.c, v.h, v.w, e->path, errbuf, errlen) != 0 ||
                data_check_memory(out, (int64_t)l->n, root, errbuf, errlen) != 0 ||
                data_images_reserve(out, (int64_t)l->n, root, errbuf, errlen) != 0)
                goto done;
        } else if (want.h == 0 && (v.h != out->h || v.w != out->w)) {
            char a[1024], b[1024];
            const char *what = e->has_roi ? "region" : "image";
            data_errf(errbuf, errlen,
                      "%s: the %s is %dx%d (width x height), but that of %s is %dx%d; ask for a fixed size "
                      "to resize them",
                      entry_where(e, a, sizeof a), what, v.w, v.h, entry_where(&l->v[0], b, sizeof b), out->w,
                      out->h);
            goto done;
        }
        if (data_images_append(out, &wk, &v, e->label, e->path, errbuf, errlen) != 0)
            goto done;
    }
    rc = 0;
done:
    free(raw.px);
    data_work_free(&wk);
    return rc;
}

/* Makes out the set of the entries' files, decoded as they are drawn
 * (want fixed); takes the entries' paths. */
static int list_entries(moert_images *out, entry_list *l, moert_shape want, const char *root, char *errbuf,
                        size_t errlen)
{
    if (want.c == 0 || want.h == 0) {
        data_errf(errbuf, errlen, "%s: images decoded as they are drawn need a fixed size and channels", root);
        return -1;
    }
    if (data_images_begin(out, want, want.c, want.h, want.w, root, errbuf, errlen) != 0)
        return -1;
    if (l->n > (size_t)MOERT_IMAGES_MAX) {
        data_errf(errbuf, errlen, "%s: more than %d images", root, MOERT_IMAGES_MAX);
        return -1;
    }
    out->files = calloc(l->n, sizeof *out->files);
    out->regions = calloc(l->n * MOERT_REGION_FIELDS, sizeof *out->regions);
    out->labels = calloc(l->n, sizeof *out->labels);
    if (!out->files || !out->regions || !out->labels) {
        moert_images_free(out);
        data_errf(errbuf, errlen, "%s: out of memory for a list of %zu files", root, l->n);
        return -1;
    }
    for (size_t i = 0; i < l->n; i++) {
        entry *e = &l->v[i];
        int32_t *r = out->regions + i * MOERT_REGION_FIELDS;
        if (e->has_roi) {
            r[0] = e->x1;
            r[1] = e->y1;
            r[2] = e->x2;
            r[3] = e->y2;
        }
        if (e->has_size) {
            r[4] = e->width;
            r[5] = e->height;
        }
        out->files[i] = e->path;
        e->path = NULL;
        out->labels[i] = e->label;
    }
    out->n = (int64_t)l->n;
    out->capacity = out->n;
    data_images_finish(out);
    return 0;
}

int moert_images_read(const moert_images *set, int64_t i, uint8_t *out, char *errbuf, size_t errlen)
{
    if (i < 0 || i >= set->n) {
        data_errf(errbuf, errlen, "image %lld of a set of %lld", (long long)i, (long long)set->n);
        return -1;
    }
    const size_t per = moert_images_stride(set);
    if (set->pixels) {
        memcpy(out, set->pixels + (size_t)i * per, per);
        return 0;
    }
    const int32_t *r = set->regions + (size_t)i * MOERT_REGION_FIELDS;
    entry e = {0};
    e.path = set->files[i];
    e.has_roi = r[2] > 0;
    e.x1 = r[0];
    e.y1 = r[1];
    e.x2 = r[2];
    e.y2 = r[3];
    e.has_size = r[4] > 0;
    e.width = r[4];
    e.height = r[5];
    data_raw raw = {0};
    data_work wk = {0};
    data_view v;
    int rc = decode_entry(&e, &raw, &v, errbuf, errlen);
    if (rc == 0 && v.c != 1 && v.c != 3) {
        data_errf(errbuf, errlen, "%s: %d-channel image (only gray or RGB)", e.path, v.c);
        rc = -1;
    }
    if (rc == 0 && data_convert(&wk, &v, set->c, set->h, set->w, out) != 0) {
        data_errf(errbuf, errlen, "%s: out of memory while resizing", e.path);
        rc = -1;
    }
    free(raw.px);
    data_work_free(&wk);
    return rc;
}

static int image_folder(moert_images *out, const char *root, moert_shape want, int listed, char *errbuf,
                        size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (data_check_shape(want, root, errbuf, errlen) != 0)
        return -1;
    char **classes;
    size_t nclasses;
    if (data_list_dir(root, 1, &classes, &nclasses, errbuf, errlen) != 0)
        return -1;
    entry_list l = {0};
    int rc = -1;
    if (nclasses == 0) {
        data_errf(errbuf, errlen, "%s: no class folders (expected root/<class>/<image>)", root);
        goto done;
    }
    if (nclasses > (size_t)MOERT_IMAGES_MAX) {
        data_errf(errbuf, errlen, "%s: too many class folders", root);
        goto done;
    }
    for (size_t k = 0; k < nclasses; k++) {
        char *dir = data_path_join(root, classes[k]);
        char **files = NULL;
        size_t nfiles = 0, found = 0;
        if (!dir) {
            data_errf(errbuf, errlen, "%s: out of memory", root);
            goto done;
        }
        if (data_list_dir(dir, 0, &files, &nfiles, errbuf, errlen) != 0) {
            free(dir);
            goto done;
        }
        int ok = 1;
        for (size_t i = 0; i < nfiles && ok; i++) {
            if (!has_image_ext(files[i]))
                continue;
            entry e = {0};
            e.label = (int32_t)k;
            if (!(e.path = data_path_join(dir, files[i])) || entries_push(&l, &e) != 0) {
                data_errf(errbuf, errlen, "%s: out of memory", dir);
                ok = 0;
            }
            found++;
        }
        if (ok && found == 0) {
            data_errf(errbuf, errlen,
                      "%s: class folder without images (.png, .jpg, .jpeg, .ppm, .pgm, .pnm)",
                      dir);
            ok = 0;
        }
        data_free_names(files, nfiles);
        free(dir);
        if (!ok)
            goto done;
    }
    if ((listed ? list_entries(out, &l, want, root, errbuf, errlen) : load_entries(out, &l, want, root, errbuf,
                                                                                    errlen)) != 0)
        goto done;
    out->num_classes = (int)nclasses;
    out->class_names = classes; /* the set takes the names */
    classes = NULL;
    nclasses = 0;
    data_images_finish(out);
    rc = 0;
done:
    if (rc != 0)
        moert_images_free(out);
    data_free_names(classes, nclasses);
    entries_free(&l);
    return rc;
}

int moert_load_image_folder(moert_images *out, const char *root, moert_shape want, char *errbuf, size_t errlen)
{
    return image_folder(out, root, want, 0, errbuf, errlen);
}

int moert_list_image_folder(moert_images *out, const char *root, moert_shape want, char *errbuf, size_t errlen)
{
    return image_folder(out, root, want, 1, errbuf, errlen);
}

/* ------------------------------------------------------------------ */
/* GTSRB                                                               */
/* ------------------------------------------------------------------ */

enum { GT_FILENAME, GT_WIDTH, GT_HEIGHT, GT_X1, GT_Y1, GT_X2, GT_Y2, GT_CLASS, GT_NCOLS };
static const char *const gt_names[GT_NCOLS] = {"Filename", "Width",   "Height",  "Roi.X1",
                                               "Roi.Y1",   "Roi.X2",  "Roi.Y2",  "ClassId"};

#define GT_MAX_FIELDS 64

/* Splits line (modified in place) at ';' into fields, trimming spaces. */
static int split_fields(char *line, char **f, int max)
{
    int n = 0;
    for (char *p = line;;) {
        char *semi = strchr(p, ';');
        if (semi)
            *semi = 0;
        while (*p == ' ' || *p == '\t')
            p++;
        char *end = p + strlen(p);
        while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
            *--end = 0;
        if (n == max)
            return -1;
        f[n++] = p;
        if (!semi)
            return n;
        p = semi + 1;
    }
}

static int parse_int(const char *s, int *v)
{
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (!*s || *end || errno || x < 0 || x > GT_MAX_INT)
        return -1;
    *v = (int)x;
    return 0;
}

/* Parses one GT csv in dir; appends its rows. Returns 1 if it has no
 * ClassId column (skipped), 0 on success, -1 on error. */
static int parse_gt(const char *dir, const char *gtpath, entry_list *l, char *errbuf,
                    size_t errlen)
{
    uint8_t *buf;
    size_t len;
    if (data_read_file(gtpath, GT_MAX_BYTES, &buf, &len, errbuf, errlen) != 0)
        return -1;
    if (memchr(buf, 0, len)) {
        data_errf(errbuf, errlen, "%s: binary data in a CSV file", gtpath);
        free(buf);
        return -1;
    }
    char *s = (char *)buf;
    if (len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
        s += 3; /* UTF-8 byte order mark */
    if (s[strspn(s, " \t\r\n")] == 0) {
        data_errf(errbuf, errlen, "%s: empty annotation file", gtpath);
        free(buf);
        return -1;
    }
    int col[GT_NCOLS];
    int ncols = 0, rc = -1;
    long line = 0;
    char *f[GT_MAX_FIELDS];
    char *next;
    for (char *ln = s; ln; ln = next) {
        next = strchr(ln, '\n');
        if (next)
            *next++ = 0;
        size_t ll = strlen(ln);
        if (ll > 0 && ln[ll - 1] == '\r')
            ln[--ll] = 0;
        line++;
        if (line > 1 && ll == 0)
            continue;
        int n = split_fields(ln, f, GT_MAX_FIELDS);
        if (line == 1) {
            if (n < 0) {
                data_errf(errbuf, errlen, "%s:1: more than %d columns", gtpath, GT_MAX_FIELDS);
                goto done;
            }
            ncols = n;
            for (int k = 0; k < GT_NCOLS; k++) {
                col[k] = -1;
                for (int i = 0; i < n; i++)
                    if (strcmp(f[i], gt_names[k]) == 0)
                        col[k] = i;
            }
            if (col[GT_FILENAME] < 0) {
                data_errf(errbuf, errlen,
                          "%s:1: no Filename column (expected a header like "
                          "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId)",
                          gtpath);
                goto done;
            }
            if (col[GT_CLASS] < 0) {
                rc = 1;
                goto done;
            }
            int roi = (col[GT_X1] >= 0) + (col[GT_Y1] >= 0) + (col[GT_X2] >= 0) + (col[GT_Y2] >= 0);
            if (roi != 0 && roi != 4) {
                data_errf(errbuf, errlen, "%s:1: some but not all of Roi.X1;Roi.Y1;Roi.X2;Roi.Y2",
                          gtpath);
                goto done;
            }
            continue;
        }
        if (n != ncols) {
            data_errf(errbuf, errlen, "%s:%ld: %d fields, the header has %d", gtpath, line,
                      n < 0 ? GT_MAX_FIELDS + 1 : n, ncols);
            goto done;
        }
        const char *name = f[col[GT_FILENAME]];
        if (!*name || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
            data_errf(errbuf, errlen, "%s:%ld: bad Filename \"%s\" (a plain file name in %s)",
                      gtpath, line, name, dir);
            goto done;
        }
        entry e = {0};
        int v[GT_NCOLS] = {0};
        for (int k = 1; k < GT_NCOLS; k++) {
            if (col[k] >= 0 && parse_int(f[col[k]], &v[k]) != 0) {
                data_errf(errbuf, errlen, "%s:%ld: %s \"%s\" is not an integer in 0..%d", gtpath,
                          line, gt_names[k], f[col[k]], GT_MAX_INT);
                goto done;
            }
        }
        e.label = v[GT_CLASS];
        e.has_roi = col[GT_X1] >= 0;
        e.x1 = v[GT_X1];
        e.y1 = v[GT_Y1];
        e.x2 = v[GT_X2];
        e.y2 = v[GT_Y2];
        e.has_size = col[GT_WIDTH] >= 0 && col[GT_HEIGHT] >= 0;
        e.width = v[GT_WIDTH];
        e.height = v[GT_HEIGHT];
        e.gt = gtpath;
        e.line = line;
        if (!(e.path = data_path_join(dir, name)) || entries_push(l, &e) != 0) {
            data_errf(errbuf, errlen, "%s: out of memory", gtpath);
            goto done;
        }
    }
    rc = 0;
done:
    free(buf);
    return rc;
}

static int is_gt_name(const char *name)
{
    size_t len = strlen(name);
    return len > 7 && strncmp(name, "GT-", 3) == 0 && strcmp(name + len - 4, ".csv") == 0;
}

/* Reads the GT-*.csv files of dir (those with a ClassId column) into l;
 * gtpaths keeps their paths alive for messages. */
static int gt_folder(const char *dir, entry_list *l, char ***gtpaths, size_t *ngt,
                     char *errbuf, size_t errlen)
{
    char **files;
    size_t nfiles;
    if (data_list_dir(dir, 0, &files, &nfiles, errbuf, errlen) != 0)
        return -1;
    int rc = 0, used = 0, seen = 0;
    for (size_t i = 0; i < nfiles && rc == 0; i++) {
        if (!is_gt_name(files[i]))
            continue;
        seen++;
        char *p = data_path_join(dir, files[i]);
        char **np = p ? realloc(*gtpaths, (*ngt + 1) * sizeof *np) : NULL;
        if (!np) {
            free(p);
            data_errf(errbuf, errlen, "%s: out of memory", dir);
            rc = -1;
            break;
        }
        *gtpaths = np;
        np[(*ngt)++] = p;
        int r = parse_gt(dir, p, l, errbuf, errlen);
        if (r < 0)
            rc = -1;
        else if (r == 0)
            used++;
    }
    if (rc == 0 && used == 0) {
        data_errf(errbuf, errlen, seen ? "%s: no GT-*.csv annotation file with a ClassId column"
                                       : "%s: no GT-*.csv annotation file",
                  dir);
        rc = -1;
    }
    data_free_names(files, nfiles);
    return rc;
}

static int gtsrb(moert_images *out, const char *root, moert_shape want, int listed, char *errbuf, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (data_check_shape(want, root, errbuf, errlen) != 0)
        return -1;
    entry_list l = {0};
    char **gtpaths = NULL, **classes = NULL;
    size_t ngt = 0, nclasses = 0;
    int rc = -1;
    char *base = data_path_join(root, "Final_Training/Images");
    if (!base) {
        data_errf(errbuf, errlen, "%s: out of memory", root);
        return -1;
    }
    if (!is_dir(base)) {
        free(base);
        if (!(base = strdup(root))) {
            data_errf(errbuf, errlen, "%s: out of memory", root);
            return -1;
        }
    }
    if (data_list_dir(base, 1, &classes, &nclasses, errbuf, errlen) != 0)
        goto done;
    if (nclasses == 0) {
        if (gt_folder(base, &l, &gtpaths, &ngt, errbuf, errlen) != 0)
            goto done;
    }
    for (size_t k = 0; k < nclasses; k++) {
        char *dir = data_path_join(base, classes[k]);
        if (!dir) {
            data_errf(errbuf, errlen, "%s: out of memory", base);
            goto done;
        }
        int r = gt_folder(dir, &l, &gtpaths, &ngt, errbuf, errlen);
        free(dir);
        if (r != 0)
            goto done;
    }
    if (l.n == 0) {
        data_errf(errbuf, errlen, "%s: the annotations list no images", base);
        goto done;
    }
    if ((listed ? list_entries(out, &l, want, base, errbuf, errlen) : load_entries(out, &l, want, base, errbuf,
                                                                                    errlen)) != 0)
        goto done;
    data_images_finish(out);
    rc = 0;
done:
    if (rc != 0)
        moert_images_free(out);
    entries_free(&l);
    data_free_names(gtpaths, ngt);
    data_free_names(classes, nclasses);
    free(base);
    return rc;
}

int moert_load_gtsrb(moert_images *out, const char *root, moert_shape want, char *errbuf, size_t errlen)
{
    return gtsrb(out, root, want, 0, errbuf, errlen);
}

int moert_list_gtsrb(moert_images *out, const char *root, moert_shape want, char *errbuf, size_t errlen)
{
    return gtsrb(out, root, want, 1, errbuf, errlen);
}
