/* data_common.c: image sets (allocation, statistics, split), error text,
 * whole-file reads and directory listings shared by the loaders. */
#include "data_internal.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void data_errf(char *errbuf, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!errbuf || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------ */
/* Image sets                                                          */
/* ------------------------------------------------------------------ */

void moert_images_free(moert_images *set)
{
    if (!set)
        return;
    data_free_names(set->class_names, (size_t)(set->num_classes > 0 ? set->num_classes : 0));
    data_free_names(set->files, (size_t)(set->n > 0 ? set->n : 0));
    free(set->regions);
    free(set->pixels);
    free(set->labels);
    memset(set, 0, sizeof *set);
}

size_t moert_images_stride(const moert_images *set)
{
    return (size_t)set->c * (size_t)set->h * (size_t)set->w;
}

int data_check_shape(moert_shape want, const char *what, char *errbuf, size_t errlen)
{
    if (want.c != 0 && want.c != 1 && want.c != 3) {
        data_errf(errbuf, errlen, "%s: cannot make %d-channel images (channels must be 1 or 3)",
                  what, want.c);
        return -1;
    }
    if ((want.h == 0) != (want.w == 0) || want.h < 0 || want.w < 0 ||
        want.h > MOERT_IMAGE_MAX_DIM || want.w > MOERT_IMAGE_MAX_DIM) {
        data_errf(errbuf, errlen,
                  "%s: bad requested size %dx%d (both 0 for the native size, or both in 1..%d)",
                  what, want.h, want.w, MOERT_IMAGE_MAX_DIM);
        return -1;
    }
    return 0;
}

int data_images_begin(moert_images *out, moert_shape want, int src_c, int src_h, int src_w,
                      const char *path, char *errbuf, size_t errlen)
{
    int c = want.c ? want.c : src_c;
    int h = want.h ? want.h : src_h;
    int w = want.w ? want.w : src_w;
    if (c != 1 && c != 3) {
        data_errf(errbuf, errlen, "%s: %d-channel images are not supported (1 or 3)", path, c);
        return -1;
    }
    if (h < 1 || w < 1 || h > MOERT_IMAGE_MAX_DIM || w > MOERT_IMAGE_MAX_DIM) {
        data_errf(errbuf, errlen, "%s: image size %dx%d out of range 1..%d", path, h, w,
                  MOERT_IMAGE_MAX_DIM);
        return -1;
    }
    memset(out, 0, sizeof *out);
    out->c = c;
    out->h = h;
    out->w = w;
    return 0;
}

int data_images_reserve(moert_images *set, int64_t n, const char *path, char *errbuf,
                        size_t errlen)
{
    if (n <= set->capacity)
        return 0;
    if (n > MOERT_IMAGES_MAX) {
        data_errf(errbuf, errlen, "%s: more than %d images", path, MOERT_IMAGES_MAX);
        return -1;
    }
    size_t stride = moert_images_stride(set), bytes;
    /* start at about 16 MiB (so a lying header costs little), then double */
    int64_t cap = set->capacity;
    if (cap == 0) {
        size_t first = stride ? ((size_t)16 << 20) / stride : 64;
        cap = first < 1 ? 1 : first > 64 ? 64 : (int64_t)first;
    }
    while (cap < n)
        cap = cap > MOERT_IMAGES_MAX / 2 ? MOERT_IMAGES_MAX : cap * 2;
    if (!data_mul((size_t)cap, stride, &bytes)) {
        data_errf(errbuf, errlen, "%s: %lld images of %zu bytes overflow memory sizes", path,
                  (long long)cap, stride);
        return -1;
    }
    uint8_t *px = realloc(set->pixels, bytes ? bytes : 1);
    if (!px)
        goto oom;
    set->pixels = px;
    int32_t *lb = realloc(set->labels, (size_t)cap * sizeof *lb);
    if (!lb)
        goto oom;
    set->labels = lb;
    set->capacity = cap;
    return 0;
oom:
    data_errf(errbuf, errlen, "%s: out of memory for %lld images of %dx%dx%d", path,
              (long long)cap, set->c, set->h, set->w);
    return -1;
}

int data_check_memory(const moert_images *set, int64_t n, const char *path, char *errbuf, size_t errlen)
{
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    if (pages <= 0 || page <= 0 || n <= 0)
        return 0;
    const double need = (double)n * (double)moert_images_stride(set), have = (double)pages * (double)page;
    if (need <= have)
        return 0;
    data_errf(errbuf, errlen,
              "%s: %lld images of %dx%dx%d take %.1f GiB decoded, more than this machine's %.1f GiB of memory "
              "(list the files instead, to decode each as it is drawn)",
              path, (long long)n, set->c, set->h, set->w, need / 1073741824.0, have / 1073741824.0);
    return -1;
}

void data_images_finish(moert_images *set)
{
    if (set->n < set->capacity && set->n > 0) {
        uint8_t *px = realloc(set->pixels, (size_t)set->n * moert_images_stride(set));
        if (px)
            set->pixels = px;
        int32_t *lb = realloc(set->labels, (size_t)set->n * sizeof *lb);
        if (lb)
            set->labels = lb;
        set->capacity = set->n;
    }
    if (set->num_classes == 0) {
        int32_t mx = -1;
        for (int64_t i = 0; i < set->n; i++)
            if (set->labels[i] > mx)
                mx = set->labels[i];
        set->num_classes = mx + 1;
    }
}

int data_images_append(moert_images *set, data_work *wk, const data_view *src, int32_t label,
                       const char *path, char *errbuf, size_t errlen)
{
    if (src->c != 1 && src->c != 3) {
        data_errf(errbuf, errlen, "%s: %d-channel image (only gray or RGB)", path, src->c);
        return -1;
    }
    if (data_images_reserve(set, set->n + 1, path, errbuf, errlen) != 0)
        return -1;
    uint8_t *dst = set->pixels + (size_t)set->n * moert_images_stride(set);
    if (data_convert(wk, src, set->c, set->h, set->w, dst) != 0) {
        data_errf(errbuf, errlen, "%s: out of memory while resizing", path);
        return -1;
    }
    set->labels[set->n] = label;
    set->n++;
    return 0;
}

void moert_images_mean_std(const moert_images *set, float mean[MOERT_MAX_CHANNELS],
                           float std[MOERT_MAX_CHANNELS])
{
    size_t plane = (size_t)set->h * (size_t)set->w;
    for (int ch = 0; ch < MOERT_MAX_CHANNELS; ch++) {
        mean[ch] = 0.0f;
        std[ch] = 0.0f;
    }
    for (int ch = 0; ch < set->c && ch < MOERT_MAX_CHANNELS; ch++) {
        /* exact integer sums per image (at most 2^28 * 255^2 < 2^44), then double */
        double s = 0.0, ss = 0.0;
        for (int64_t i = 0; i < set->n; i++) {
            const uint8_t *p = set->pixels + (size_t)i * moert_images_stride(set) + ch * plane;
            uint64_t a = 0, b = 0;
            for (size_t j = 0; j < plane; j++) {
                a += p[j];
                b += (uint64_t)p[j] * p[j];
            }
            s += (double)a;
            ss += (double)b;
        }
        double cnt = (double)set->n * (double)plane;
        if (cnt > 0) {
            double m = s / cnt;
            double var = ss / cnt - m * m;
            mean[ch] = (float)(m / 255.0);
            std[ch] = (float)(sqrt(var > 0 ? var : 0) / 255.0);
        }
    }
}

/* A copy of the n names (a NULL stays NULL), or NULL when out of memory. */
static char **names_dup(const char *const *names, int n)
{
    char **v = calloc((size_t)n, sizeof *v);
    for (int k = 0; v && k < n; k++) {
        if (names[k] && !(v[k] = strdup(names[k]))) {
            data_free_names(v, (size_t)k);
            v = NULL;
        }
    }
    return v;
}

/* Copies the images of src listed in idx (ascending) into dst: their
 * pixels, or a list's files and regions. */
static int copy_subset(const moert_images *src, const int64_t *idx, int64_t n,
                       moert_images *dst, char *errbuf, size_t errlen)
{
    moert_shape s = {src->c, src->h, src->w};
    if (data_images_begin(dst, s, src->c, src->h, src->w, "split", errbuf, errlen) != 0)
        return -1;
    if (src->files) {
        dst->files = calloc((size_t)n, sizeof *dst->files);
        dst->regions = malloc((size_t)n * MOERT_REGION_FIELDS * sizeof *dst->regions);
        dst->labels = malloc((size_t)n * sizeof *dst->labels);
        if (!dst->files || !dst->regions || !dst->labels)
            goto oom;
        for (int64_t i = 0; i < n; i++) {
            dst->n = i + 1; /* what moert_images_free frees */
            if (!(dst->files[i] = strdup(src->files[idx[i]])))
                goto oom;
            memcpy(dst->regions + i * MOERT_REGION_FIELDS, src->regions + idx[i] * MOERT_REGION_FIELDS,
                   MOERT_REGION_FIELDS * sizeof *dst->regions);
            dst->labels[i] = src->labels[idx[i]];
        }
        dst->capacity = n;
    } else {
        if (data_images_reserve(dst, n, "split", errbuf, errlen) != 0)
            return -1;
        size_t stride = moert_images_stride(src);
        for (int64_t i = 0; i < n; i++) {
            memcpy(dst->pixels + (size_t)i * stride, src->pixels + (size_t)idx[i] * stride, stride);
            dst->labels[i] = src->labels[idx[i]];
        }
    }
    dst->n = n;
    dst->num_classes = src->num_classes;
    if (src->class_names && !(dst->class_names = names_dup((const char *const *)src->class_names, src->num_classes)))
        goto oom;
    data_images_finish(dst);
    return 0;
oom:
    moert_images_free(dst);
    data_errf(errbuf, errlen, "split: out of memory");
    return -1;
}

int moert_images_split(const moert_images *src, double test_fraction, uint64_t seed,
                       moert_images *train, moert_images *test, char *errbuf, size_t errlen)
{
    memset(train, 0, sizeof *train);
    memset(test, 0, sizeof *test);
    if (!(test_fraction > 0.0 && test_fraction < 1.0)) {
        data_errf(errbuf, errlen, "split: test fraction %g is not in (0, 1)", test_fraction);
        return -1;
    }
    int64_t n = src->n;
    int64_t n_test = (int64_t)llround(test_fraction * (double)n);
    if (n_test < 1 || n_test >= n) {
        data_errf(errbuf, errlen,
                  "split: a test fraction of %g of %lld images leaves an empty part", test_fraction,
                  (long long)n);
        return -1;
    }
    int64_t *perm = malloc((size_t)n * sizeof *perm);
    uint8_t *in_test = calloc((size_t)n, 1);
    int64_t *idx = calloc((size_t)n, sizeof *idx);
    if (!perm || !in_test || !idx) {
        free(perm);
        free(in_test);
        free(idx);
        data_errf(errbuf, errlen, "split: out of memory for %lld indices", (long long)n);
        return -1;
    }
    /* Fisher-Yates with a counter-based draw per position */
    for (int64_t i = 0; i < n; i++)
        perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)data_below(data_hash(seed, 0x5350u, (uint64_t)i, 0), (uint64_t)i + 1);
        int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int64_t i = 0; i < n_test; i++)
        in_test[perm[i]] = 1;
    int rc = 0;
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (!in_test[i])
            idx[m++] = i;
    rc = copy_subset(src, idx, m, train, errbuf, errlen);
    if (rc == 0) {
        m = 0;
        for (int64_t i = 0; i < n; i++)
            if (in_test[i])
                idx[m++] = i;
        rc = copy_subset(src, idx, m, test, errbuf, errlen);
        if (rc != 0)
            moert_images_free(train);
    }
    free(perm);
    free(in_test);
    free(idx);
    return rc;
}

typedef struct name_pos {
    const char *name;
    int pos;
} name_pos;

static int name_pos_cmp(const void *a, const void *b)
{
    return strcmp(((const name_pos *)a)->name, ((const name_pos *)b)->name);
}

int moert_images_relabel(moert_images *set, const char *const *names, int n, const char *where,
                         const char *among, char *errbuf, size_t errlen)
{
    if (!set->class_names) {
        data_errf(errbuf, errlen, "%s: its classes have no names to match with %s", where, among);
        return -1;
    }
    if (n <= 0) {
        data_errf(errbuf, errlen, "%s: %s name no classes", where, among);
        return -1;
    }
    name_pos *sorted = malloc((size_t)n * sizeof *sorted);
    int32_t *map = malloc((size_t)(set->num_classes > 0 ? set->num_classes : 1) * sizeof *map);
    char **copy = names_dup(names, n);
    int rc = -1;
    if (!sorted || !map || !copy) {
        data_errf(errbuf, errlen, "%s: out of memory for %d class names", where, n);
        goto done;
    }
    for (int k = 0; k < n; k++)
        sorted[k] = (name_pos){names[k] ? names[k] : "", k};
    qsort(sorted, (size_t)n, sizeof *sorted, name_pos_cmp);
    for (int k = 0; k < set->num_classes; k++) {
        const name_pos key = {set->class_names[k] ? set->class_names[k] : "", 0};
        const name_pos *hit = bsearch(&key, sorted, (size_t)n, sizeof *sorted, name_pos_cmp);
        if (!hit) {
            data_errf(errbuf, errlen, "%s: class '%s' is not among %s", where, key.name, among);
            goto done;
        }
        map[k] = hit->pos;
    }
    for (int64_t i = 0; i < set->n; i++)
        set->labels[i] = map[set->labels[i]];
    data_free_names(set->class_names, (size_t)set->num_classes);
    set->class_names = copy;
    set->num_classes = n;
    copy = NULL;
    rc = 0;
done:
    data_free_names(copy, (size_t)n);
    free(sorted);
    free(map);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Files and directories                                               */
/* ------------------------------------------------------------------ */

int data_read_file(const char *path, size_t max, uint8_t **buf, size_t *len, char *errbuf,
                   size_t errlen)
{
    *buf = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        data_errf(errbuf, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        data_errf(errbuf, errlen, "%s: not a regular file", path);
        fclose(f);
        return -1;
    }
    if ((uint64_t)st.st_size > (uint64_t)max) {
        data_errf(errbuf, errlen, "%s: file too large (%lld bytes, limit %zu)", path,
                  (long long)st.st_size, max);
        fclose(f);
        return -1;
    }
    size_t n = (size_t)st.st_size;
    uint8_t *b = malloc(n + 1);
    if (!b) {
        data_errf(errbuf, errlen, "%s: out of memory for %zu bytes", path, n);
        fclose(f);
        return -1;
    }
    size_t got = fread(b, 1, n, f);
    int err = ferror(f);
    fclose(f);
    if (err || got != n) {
        data_errf(errbuf, errlen, "%s: read error after %zu of %zu bytes", path, got, n);
        free(b);
        return -1;
    }
    b[n] = 0;
    *buf = b;
    *len = n;
    return 0;
}

char *data_path_join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    int slash = la > 0 && a[la - 1] != '/';
    char *s = malloc(la + (size_t)slash + lb + 1);
    if (!s)
        return NULL;
    memcpy(s, a, la);
    if (slash)
        s[la] = '/';
    memcpy(s + la + slash, b, lb + 1);
    return s;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void data_free_names(char **names, size_t count)
{
    if (!names)
        return;
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
}

int data_list_dir(const char *dir, int want_dirs, char ***names, size_t *count, char *errbuf,
                  size_t errlen)
{
    *names = NULL;
    *count = 0;
    DIR *d = opendir(dir);
    if (!d) {
        data_errf(errbuf, errlen, "%s: cannot open directory: %s", dir, strerror(errno));
        return -1;
    }
    char **v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char *full = data_path_join(dir, e->d_name);
        if (!full)
            goto oom;
        struct stat st;
        int ok = stat(full, &st) == 0 && (want_dirs ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode));
        free(full);
        if (!ok)
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            char **nv = realloc(v, nc * sizeof *nv);
            if (!nv)
                goto oom;
            v = nv;
            cap = nc;
        }
        if (!(v[n] = strdup(e->d_name)))
            goto oom;
        n++;
    }
    closedir(d);
    if (n > 1)
        qsort(v, n, sizeof *v, cmp_names);
    *names = v;
    *count = n;
    return 0;
oom:
    closedir(d);
    data_free_names(v, n);
    data_errf(errbuf, errlen, "%s: out of memory listing the directory", dir);
    return -1;
}
