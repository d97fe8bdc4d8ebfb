/* data_cifar.c: CIFAR-10 binary batches.
 *
 * A file is a sequence of 3073-byte records: one label byte (0..9) and
 * 3072 pixel bytes, the 32x32 red plane, then green, then blue (row-major).
 * The train set is data_batch_1.bin ... data_batch_5.bin (10000 records
 * each), the test set test_batch.bin. */
#include "data_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CIFAR_SIDE 32
#define CIFAR_PIXELS (3 * CIFAR_SIDE * CIFAR_SIDE)
#define CIFAR_RECORD (1 + CIFAR_PIXELS)
#define CIFAR_CLASSES 10

static const char *const cifar10_names[CIFAR_CLASSES] = {
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};

static int load_file(moert_images *out, data_work *wk, const char *path, char *errbuf,
                     size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        data_errf(errbuf, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    int rc = -1;
    uint8_t *rec = NULL;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        data_errf(errbuf, errlen, "%s: not a regular file", path);
        goto done;
    }
    if (st.st_size <= 0 || st.st_size % CIFAR_RECORD != 0) {
        data_errf(errbuf, errlen,
                  "%s: size %lld is not a positive multiple of the CIFAR-10 record size %d "
                  "(truncated, or not a CIFAR-10 binary batch?)",
                  path, (long long)st.st_size, CIFAR_RECORD);
        goto done;
    }
    long long records = (long long)(st.st_size / CIFAR_RECORD);
    if (records > MOERT_IMAGES_MAX - out->n) {
        data_errf(errbuf, errlen, "%s: too many images", path);
        goto done;
    }
    if (data_images_reserve(out, out->n + records, path, errbuf, errlen) != 0)
        goto done;
    if (!(rec = malloc(CIFAR_RECORD))) {
        data_errf(errbuf, errlen, "%s: out of memory", path);
        goto done;
    }
    data_view v = {rec + 1, 3, CIFAR_SIDE, CIFAR_SIDE, CIFAR_SIDE * CIFAR_SIDE, CIFAR_SIDE, 1};
    for (long long i = 0; i < records; i++) {
        if (fread(rec, 1, CIFAR_RECORD, f) != CIFAR_RECORD) {
            data_errf(errbuf, errlen, "%s: read error in record %lld: %s", path, i,
                      ferror(f) ? strerror(errno) : "file shrank while reading");
            goto done;
        }
        if (rec[0] >= CIFAR_CLASSES) {
            data_errf(errbuf, errlen,
                      "%s: record %lld has label %u, outside 0..9 (not a CIFAR-10 file?)", path,
                      i, rec[0]);
            goto done;
        }
        if (data_images_append(out, wk, &v, rec[0], path, errbuf, errlen) != 0)
            goto done;
    }
    rc = 0;
done:
    free(rec);
    fclose(f);
    return rc;
}

int moert_load_cifar10_files(moert_images *out, const char *const *paths, int npaths,
                             moert_shape want, char *errbuf, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!paths || npaths < 1) {
        data_errf(errbuf, errlen, "CIFAR-10: no files given");
        return -1;
    }
    if (data_check_shape(want, paths[0], errbuf, errlen) != 0)
        return -1;
    if (data_images_begin(out, want, 3, CIFAR_SIDE, CIFAR_SIDE, paths[0], errbuf, errlen) != 0)
        return -1;
    data_work wk = {0};
    int rc = 0;
    for (int i = 0; i < npaths && rc == 0; i++)
        rc = load_file(out, &wk, paths[i], errbuf, errlen);
    data_work_free(&wk);
    if (rc == 0) {
        out->class_names = calloc(CIFAR_CLASSES, sizeof *out->class_names);
        if (out->class_names) {
            out->num_classes = CIFAR_CLASSES;
            for (int k = 0; k < CIFAR_CLASSES; k++)
                if (!(out->class_names[k] = strdup(cifar10_names[k])))
                    rc = -1;
        } else {
            rc = -1;
        }
        if (rc != 0)
            data_errf(errbuf, errlen, "%s: out of memory", paths[0]);
    }
    if (rc != 0) {
        moert_images_free(out);
        return -1;
    }
    data_images_finish(out);
    return 0;
}

/* data_batch_<N>.bin -> N, or -1 */
static long batch_number(const char *name)
{
    static const char pre[] = "data_batch_", suf[] = ".bin";
    size_t len = strlen(name), lp = sizeof pre - 1, ls = sizeof suf - 1;
    if (len <= lp + ls || strncmp(name, pre, lp) != 0 || strcmp(name + len - ls, suf) != 0)
        return -1;
    long n = 0;
    for (size_t i = lp; i < len - ls; i++) {
        if (name[i] < '0' || name[i] > '9' || n > 100000)
            return -1;
        n = n * 10 + (name[i] - '0');
    }
    return n;
}

static int cmp_batch(const void *a, const void *b)
{
    const char *s = *(char *const *)a, *t = *(char *const *)b;
    long x = batch_number(s), y = batch_number(t);
    return x < y ? -1 : x > y ? 1 : strcmp(s, t);
}

int moert_load_cifar10(moert_images *out, const char *dir, int train, moert_shape want,
                       char *errbuf, size_t errlen)
{
    memset(out, 0, sizeof *out);
    char **names;
    size_t count;
    if (data_list_dir(dir, 0, &names, &count, errbuf, errlen) != 0)
        return -1;
    size_t m = 0;
    for (size_t i = 0; i < count; i++) {
        int keep = train ? batch_number(names[i]) >= 0 : strcmp(names[i], "test_batch.bin") == 0;
        if (keep) {
            char *t = names[m];
            names[m++] = names[i];
            names[i] = t;
        }
    }
    int rc = -1;
    if (m == 0) {
        data_errf(errbuf, errlen, "%s: no %s in the directory", dir,
                  train ? "data_batch_<N>.bin files" : "test_batch.bin");
        goto done;
    }
    qsort(names, m, sizeof *names, cmp_batch);
    char **paths = calloc(m, sizeof *paths);
    if (!paths) {
        data_errf(errbuf, errlen, "%s: out of memory", dir);
        goto done;
    }
    rc = 0;
    for (size_t i = 0; i < m && rc == 0; i++)
        if (!(paths[i] = data_path_join(dir, names[i])))
            rc = -1;
    if (rc == 0)
        rc = moert_load_cifar10_files(out, (const char *const *)paths, (int)m, want, errbuf,
                                      errlen);
    else
        data_errf(errbuf, errlen, "%s: out of memory", dir);
    for (size_t i = 0; i < m; i++)
        free(paths[i]);
    free(paths);
done:
    data_free_names(names, count);
    return rc;
}
