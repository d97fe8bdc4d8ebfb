/* data_csv.c: images as CSV rows (scikit-learn digits and the like).
 *
 * Each line: c*h*w pixel values and one integer label, comma-separated,
 * spaces around fields allowed, "\n" or "\r\n" line ends, blank lines
 * skipped. Plain or gzip (zlib reads both). Read as a stream through a
 * fixed buffer, a field at a time, so no line length limit applies beyond
 * the 63 characters of one field. */
#include "data_internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#define CSV_MAX_FIELDS (1 << 24)
#define CSV_MAX_LABEL (1 << 24)

typedef struct csv_rd {
    gzFile f;
    int len, pos;
    int failed;
    unsigned char buf[1 << 16];
} csv_rd;

/* next byte, -1 at the end, -2 on a read error */
static int rd_get(csv_rd *r)
{
    if (r->pos == r->len) {
        int n = gzread(r->f, r->buf, sizeof r->buf);
        if (n < 0) {
            r->failed = 1;
            return -2;
        }
        if (n == 0)
            return -1;
        r->len = n;
        r->pos = 0;
    }
    return r->buf[r->pos++];
}

static int rd_peek(csv_rd *r)
{
    int c = rd_get(r);
    if (c >= 0)
        r->pos--;
    return c;
}

static int load_csv(moert_images *out, csv_rd *r, const char *path, const moert_csv_format *fmt,
                    char *errbuf, size_t errlen)
{
    int pix = fmt->c * fmt->h * fmt->w; /* checked <= CSV_MAX_FIELDS */
    int ncols = pix + 1;
    int label_col = fmt->label_first ? 0 : pix;
    uint8_t *row = malloc((size_t)pix);
    data_work wk = {0};
    int rc = -1;
    long long line = 1;
    if (!row) {
        data_errf(errbuf, errlen, "%s: out of memory", path);
        return -1;
    }
    data_view v;
    v.px = row;
    v.c = fmt->c;
    v.h = fmt->h;
    v.w = fmt->w;
    if (fmt->planar) {
        v.cstride = (ptrdiff_t)fmt->h * fmt->w;
        v.ystride = fmt->w;
        v.xstride = 1;
    } else {
        v.cstride = 1;
        v.ystride = (ptrdiff_t)fmt->w * fmt->c;
        v.xstride = fmt->c;
    }
    double scale = 255.0 / fmt->max_value;

    if (fmt->header) {
        int c;
        while ((c = rd_get(r)) >= 0 && c != '\n')
            ;
        if (c == -2)
            goto read_error;
        line++;
    }
    for (;; line++) {
        int c = rd_peek(r);
        if (c == -2)
            goto read_error;
        if (c == -1)
            break;
        if (c == '\n' || c == '\r') { /* blank line */
            rd_get(r);
            if (c == '\r' && rd_peek(r) == '\n')
                rd_get(r);
            continue;
        }
        int32_t label = 0;
        for (int col = 0;; col++) {
            char tok[64];
            size_t n = 0;
            while ((c = rd_get(r)) == ' ' || c == '\t')
                ;
            while (c >= 0 && c != ',' && c != '\n' && c != '\r') {
                if (n + 1 >= sizeof tok) {
                    data_errf(errbuf, errlen, "%s:%lld: field %d is too long (not a number)",
                              path, line, col + 1);
                    goto done;
                }
                tok[n++] = (char)c;
                c = rd_get(r);
            }
            if (c == -2)
                goto read_error;
            while (n > 0 && (tok[n - 1] == ' ' || tok[n - 1] == '\t'))
                n--;
            tok[n] = 0;
            if (col >= ncols) {
                data_errf(errbuf, errlen, "%s:%lld: more than %d fields (%d pixels + label)",
                          path, line, ncols, pix);
                goto done;
            }
            if (n == 0) {
                data_errf(errbuf, errlen, "%s:%lld: field %d is empty", path, line, col + 1);
                goto done;
            }
            char *end;
            errno = 0;
            if (col == label_col) {
                long lv = strtol(tok, &end, 10);
                if (*end || errno || lv < 0 || lv >= CSV_MAX_LABEL) {
                    data_errf(errbuf, errlen,
                              "%s:%lld: label \"%s\" (field %d) is not an integer in 0..%d", path,
                              line, tok, col + 1, CSV_MAX_LABEL - 1);
                    goto done;
                }
                label = (int32_t)lv;
            } else {
                double x = strtod(tok, &end);
                if (*end || errno || !isfinite(x)) {
                    data_errf(errbuf, errlen, "%s:%lld: field %d \"%s\" is not a number", path,
                              line, col + 1, tok);
                    goto done;
                }
                if (x < 0.0 || x > fmt->max_value) {
                    data_errf(errbuf, errlen, "%s:%lld: field %d value %s out of range [0, %g]",
                              path, line, col + 1, tok, fmt->max_value);
                    goto done;
                }
                int p = fmt->label_first ? col - 1 : col;
                long q = lround(x * scale);
                row[p] = (uint8_t)(q > 255 ? 255 : q);
            }
            if (c == ',')
                continue;
            /* end of line or of file */
            if (c == '\r' && rd_peek(r) == '\n')
                rd_get(r);
            if (col + 1 != ncols) {
                data_errf(errbuf, errlen, "%s:%lld: %d fields, expected %d (%d pixels + label)",
                          path, line, col + 1, ncols, pix);
                goto done;
            }
            break;
        }
        if (data_images_append(out, &wk, &v, label, path, errbuf, errlen) != 0)
            goto done;
    }
    if (out->n == 0) {
        data_errf(errbuf, errlen, "%s: no data rows", path);
        goto done;
    }
    rc = 0;
    goto done;
read_error: {
    int errnum;
    const char *msg = gzerror(r->f, &errnum);
    data_errf(errbuf, errlen, "%s:%lld: read error: %s", path, line,
              errnum == Z_ERRNO ? strerror(errno) : msg);
}
done:
    free(row);
    data_work_free(&wk);
    return rc;
}

int moert_load_csv(moert_images *out, const char *path, const moert_csv_format *fmt,
                   moert_shape want, char *errbuf, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (data_check_shape(want, path, errbuf, errlen) != 0)
        return -1;
    if (!fmt || (fmt->c != 1 && fmt->c != 3) || fmt->h < 1 || fmt->w < 1 ||
        fmt->h > MOERT_IMAGE_MAX_DIM || fmt->w > MOERT_IMAGE_MAX_DIM ||
        (long long)fmt->c * fmt->h * fmt->w >= CSV_MAX_FIELDS ||
        !(fmt->max_value > 0.0 && isfinite(fmt->max_value))) {
        data_errf(errbuf, errlen,
                  "%s: bad CSV format (need channels 1 or 3, height and width >= 1, fewer than "
                  "%d pixels, max_value > 0)",
                  path, CSV_MAX_FIELDS);
        return -1;
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        data_errf(errbuf, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        data_errf(errbuf, errlen, "%s: not a regular file", path);
        return -1;
    }
    csv_rd *r = calloc(1, sizeof *r);
    if (!r) {
        data_errf(errbuf, errlen, "%s: out of memory", path);
        return -1;
    }
    errno = 0;
    r->f = gzopen(path, "rb");
    if (!r->f) {
        data_errf(errbuf, errlen, "%s: cannot open: %s", path,
                  errno ? strerror(errno) : "out of memory");
        free(r);
        return -1;
    }
    int rc = data_images_begin(out, want, fmt->c, fmt->h, fmt->w, path, errbuf, errlen);
    if (rc == 0)
        rc = load_csv(out, r, path, fmt, errbuf, errlen);
    gzclose(r->f);
    free(r);
    if (rc != 0) {
        moert_images_free(out);
        return -1;
    }
    data_images_finish(out);
    return 0;
}
