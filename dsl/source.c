/* source.c: source files, memory helpers and diagnostics.
 *
 * A diagnostic is printed the way modern compilers print them:
 *
 *   damex.moe:12:5: error: unknown layer 'layrnorm'
 *      12 |     layrnorm()
 *         |     ^~~~~~~~
 *         = hint: did you mean 'layernorm'?
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ast.h"

/* ---- memory -------------------------------------------------------------- */

static void out_of_memory(void)
{
    fputs("moecc: out of memory\n", stderr);
    exit(2);
}

void *mc_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        out_of_memory();
    return p;
}

void *mc_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        out_of_memory();
    return p;
}

void *mc_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        out_of_memory();
    return q;
}

char *mc_xstrdup(const char *s)
{
    return mc_xstrndup(s, strlen(s));
}

char *mc_xstrndup(const char *s, size_t n)
{
    char *p = mc_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* ---- sources ------------------------------------------------------------- */

static void index_lines(mc_source *src)
{
    size_t cap = 64;
    src->lines = mc_xmalloc(cap * sizeof *src->lines);
    src->nlines = 0;
    src->lines[src->nlines++] = 0;
    for (size_t i = 0; i < src->len; i++) {
        if (src->text[i] != '\n')
            continue;
        if ((size_t)src->nlines == cap) {
            cap *= 2;
            src->lines = mc_xrealloc(src->lines, cap * sizeof *src->lines);
        }
        src->lines[src->nlines++] = i + 1;
    }
}

mc_source *mc_source_from_string(const char *path, const char *text, size_t len)
{
    mc_source *src = mc_xcalloc(1, sizeof *src);
    src->path = mc_xstrdup(path);
    src->text = mc_xmalloc(len + 1);
    memcpy(src->text, text, len);
    src->text[len] = '\0';
    src->len = len;
    index_lines(src);
    return src;
}

mc_source *mc_source_load(const char *path, char *errbuf, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(errbuf, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(errbuf, errlen, "%s: is a directory", path);
        fclose(f);
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = mc_xmalloc(cap);
    for (;;) {
        if (len == cap) {
            if (cap >= MC_MAX_FILE) {
                snprintf(errbuf, errlen, "%s: file is larger than %u MiB", path,
                         MC_MAX_FILE >> 20);
                free(buf);
                fclose(f);
                return NULL;
            }
            cap *= 2;
            buf = mc_xrealloc(buf, cap);
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        snprintf(errbuf, errlen, "%s: read error: %s", path, strerror(errno));
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    mc_source *src = mc_source_from_string(path, buf, len);
    free(buf);
    return src;
}

void mc_source_free(mc_source *src)
{
    if (!src)
        return;
    free(src->path);
    free(src->text);
    free(src->lines);
    free(src);
}

/* ---- diagnostics ------------------------------------------------------- */

void mc_diag_init(mc_diag *d, const mc_source *src, void *out)
{
    memset(d, 0, sizeof *d);
    d->src = src;
    d->out = out ? out : stderr;
    d->max_errors = 20;
    d->last = -1;
}

/* Print the source line of loc with a caret under the span. */
static void show_line(FILE *out, const mc_source *src, mc_loc loc)
{
    if (!src || loc.line < 1 || loc.line > src->nlines)
        return;
    size_t start = src->lines[loc.line - 1];
    size_t end = start;
    while (end < src->len && src->text[end] != '\n')
        end++;
    if (end > start && src->text[end - 1] == '\r')
        end--;
    size_t width = end - start;
    if (width > 200)
        width = 200; /* keep enormous lines readable */

    char num[16];
    int gutter = snprintf(num, sizeof num, "%d", loc.line);
    fprintf(out, " %s | ", num);
    for (size_t i = 0; i < width; i++) {
        unsigned char c = (unsigned char)src->text[start + i];
        fputc((c == '\t' || (c >= 0x20 && c != 0x7f)) ? c : '?', out);
    }
    if (width < end - start)
        fputs("...", out);
    fputc('\n', out);

    fprintf(out, " %*s | ", gutter, "");
    size_t col = loc.col > 0 ? (size_t)loc.col - 1 : 0;
    if (col > width)
        col = width;
    for (size_t i = 0; i < col; i++)
        fputc(src->text[start + i] == '\t' ? '\t' : ' ', out);
    fputc('^', out);
    if (loc.end_line == loc.line && loc.end_col > loc.col + 1) {
        size_t last = (size_t)loc.end_col - 1;
        if (last > width)
            last = width;
        for (size_t i = col + 1; i < last; i++)
            fputc('~', out);
    }
    fputc('\n', out);
}

static uint64_t report_hash(mc_severity sev, mc_loc loc, const char *msg)
{
    uint64_t h = 1469598103934665603ull;
    h = (h ^ (uint64_t)sev) * 1099511628211ull;
    h = (h ^ (uint64_t)(uint32_t)loc.line) * 1099511628211ull;
    h = (h ^ (uint64_t)(uint32_t)loc.col) * 1099511628211ull;
    for (const char *p = msg; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return h;
}

/* Records kept at most; past it reports are only counted. */
#define MAX_RECORDS 1000

bool mc_report(mc_diag *d, mc_severity sev, mc_loc loc, const char *fmt, ...)
{
    d->last = -1;
    if (d->quiet > 0)
        return false;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (sev == MC_WARNING && d->werror)
        sev = MC_ERROR;
    /* the same report at the same place is made once (repeats are unrolled) */
    uint64_t h = report_hash(sev, loc, msg);
    int kept = d->nseen < 256 ? d->nseen : 256;
    for (int i = 0; i < kept; i++)
        if (d->seen[i] == h)
            return false;
    d->seen[d->nseen % 256] = h;
    if (d->nseen < 1 << 30)
        d->nseen++;
    if (sev == MC_ERROR)
        d->errors++;
    else if (sev == MC_WARNING)
        d->warnings++;
    if (d->nrecs >= MAX_RECORDS)
        return false;
    if (d->nrecs == d->cap) {
        d->cap = d->cap ? 2 * d->cap : 16;
        d->recs = mc_xrealloc(d->recs, (size_t)d->cap * sizeof *d->recs);
    }
    mc_diag_rec *r = &d->recs[d->nrecs];
    r->sev = sev;
    r->loc = loc;
    r->msg = mc_xstrdup(msg);
    r->hints = NULL;
    r->seq = d->nrecs;
    d->last = d->nrecs++;
    return true;
}

void mc_hint(mc_diag *d, const char *fmt, ...)
{
    if (d->last < 0)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    mc_diag_rec *r = &d->recs[d->last];
    size_t old = r->hints ? strlen(r->hints) : 0;
    r->hints = mc_xrealloc(r->hints, old + strlen(line) + 16);
    sprintf(r->hints + old, "   = hint: %s\n", line);
}

static int rec_cmp(const void *pa, const void *pb)
{
    const mc_diag_rec *a = pa, *b = pb;
    /* reports with no place (a missing model) come last */
    long la = a->loc.line > 0 ? a->loc.line : 0x7fffffffL;
    long lb = b->loc.line > 0 ? b->loc.line : 0x7fffffffL;
    if (la != lb)
        return la < lb ? -1 : 1;
    if (a->loc.col != b->loc.col)
        return a->loc.col < b->loc.col ? -1 : 1;
    return a->seq < b->seq ? -1 : (a->seq > b->seq);
}

void mc_diag_flush(mc_diag *d)
{
    FILE *out = d->out;
    if (d->nrecs > 1)
        qsort(d->recs, (size_t)d->nrecs, sizeof *d->recs, rec_cmp);
    static const char *const names[] = { "error", "warning", "note" };
    int shown = 0;
    bool cut = false;
    for (int i = 0; i < d->nrecs; i++) {
        mc_diag_rec *r = &d->recs[i];
        if (!cut && r->sev == MC_ERROR && d->max_errors > 0 && shown == d->max_errors) {
            if (d->max_errors == 1)
                fprintf(out, "%s: too many errors; only the first is shown\n", d->src ? d->src->path : "moecc");
            else
                fprintf(out, "%s: too many errors; the first %d are shown\n", d->src ? d->src->path : "moecc",
                        d->max_errors);
            cut = true;
        }
        if (!cut) {
            if (r->sev == MC_ERROR)
                shown++;
            if (d->src && r->loc.line > 0)
                fprintf(out, "%s:%d:%d: %s: %s\n", d->src->path, r->loc.line, r->loc.col, names[r->sev], r->msg);
            else
                fprintf(out, "%s: %s: %s\n", d->src ? d->src->path : "moecc", names[r->sev], r->msg);
            if (r->loc.line > 0)
                show_line(out, d->src, r->loc);
            if (r->hints)
                fputs(r->hints, out);
        }
        free(r->msg);
        free(r->hints);
    }
    free(d->recs);
    d->recs = NULL;
    d->nrecs = d->cap = 0;
    d->last = -1;
}
