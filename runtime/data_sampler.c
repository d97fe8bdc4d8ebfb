/* data_sampler.c: batches, the mixture-of-datasets sampler and the
 * in-order evaluation iterator.
 *
 * Randomness is counter-based: every draw is data_hash(seed, stream, a, b)
 * of fixed arguments, never a sequential generator, so
 *   the source of sample i of step s  = f(seed, s, i),
 *   its crop offsets and flip         = f(seed, s, i),
 *   its RandAugment operations        = f(seed, s, i),
 *   step s's CutMix (whether, box)    = f(seed, s),
 *   the order of source j in epoch e  = f(seed, j, e),
 * and the only state is the step and a (epoch, cursor) pair per source. */
#include "data_internal.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* hash streams: one per kind of draw */
enum {
    STREAM_PICK = 1,  /* which source: (step, i) */
    STREAM_CROP_Y,    /* crop row offset: (step, i) */
    STREAM_CROP_X,    /* crop column offset: (step, i) */
    STREAM_FLIP,      /* mirror or not: (step, i) */
    STREAM_PERM,      /* + source index: (epoch, position) */
    STREAM_RANDAUG = 1 << 20, /* RandAugment's operations: (step, i); above every STREAM_PERM + j */
    STREAM_CUTMIX,            /* CutMix: (step, 0) whether, (step, 1) and (step, 2) the centre */
    STREAM_BETA               /* CutMix's Beta draw: (step, n) its n-th uniform */
};

#define STATE_MAGIC INT64_C(0x6d6f6572746d6978) /* "moertmix" */
#define STATE_VERSION 1
#define STATE_HEADER 5

typedef float norm_lut[MOERT_MAX_CHANNELS][256];

/* One thread's buffers while it assembles samples */
typedef struct sampler_scratch {
    uint8_t *ra_img, *ra_tmp; /* RandAugment: an image's copy and its scratch (c*h*w each), or NULL */
    float *cm_img;            /* CutMix: a partner another shard owns (c*h*w), or NULL */
    uint8_t *file_img;        /* an image decoded from a list's file (c*h*w), or NULL */
} sampler_scratch;

typedef struct sampler_worker {
    struct moert_mixture *m;
    int index;              /* its scratch: 1.. (0 is the caller's) */
    uint64_t gen0;          /* the jobs posted before it was started */
    pthread_t thread;
} sampler_worker;

struct moert_mixture {
    int k;
    int c, h, w;
    uint64_t seed;
    int64_t step;
    moert_mix_source *src;  /* (k) */
    double *cum;            /* (k) cumulative normalized weights, cum[k-1] = 1 */
    int64_t *epoch;         /* (k) */
    int64_t *cursor;        /* (k) position in the epoch's permutation */
    uint32_t **perm;        /* (k) permutation of each source for its epoch */
    norm_lut *lut;          /* (k) pixel -> normalized value, per channel */
    int shard_global;       /* data-parallel global batch size, 0 = unsharded */
    int shard_first;        /* first sample of the global batch that goes to b */
    /* the step's draws, for pick_cap samples (one block from pick_src) */
    int pick_cap;
    int32_t *pick_src;      /* (pick_cap) each sample's source */
    uint32_t *pick_idx;     /* (pick_cap) and image */
    /* CutMix (cm_prob 0: off) */
    double cm_alpha, cm_prob;
    int cm_by_source;
    int32_t *cm_partner;    /* (pick_cap) whose box each sample gets */
    int32_t *cm_order;      /* (pick_cap) the samples grouped by source */
    int32_t *cm_count;      /* (k) samples per source */
    /* the threads that assemble a batch: the caller and workers - 1 more */
    int workers;
    sampler_scratch *scratch; /* (scratch_n >= workers) */
    int scratch_n;
    sampler_worker *pool;     /* (workers - 1) */
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    uint64_t gen;           /* jobs posted */
    int running;            /* workers still on the current job */
    int stop;
    /* the current job: rows of job_b, handed out by job_next */
    int job;
    moert_batch *job_b;
    uint64_t job_step;
    int job_first;
    moert_cutmix_box job_box;
    int job_next;
    /* an image file that could not be read: the first message (under mu) */
    int failed;
    char error[512];
};

/* ------------------------------------------------------------------ */
/* Batches                                                             */
/* ------------------------------------------------------------------ */

int moert_batch_init(moert_batch *b, int capacity, moert_shape shape, char *errbuf,
                     size_t errlen)
{
    memset(b, 0, sizeof *b);
    if (capacity < 1 || (shape.c != 1 && shape.c != 3) || shape.h < 1 || shape.w < 1 ||
        shape.h > MOERT_IMAGE_MAX_DIM || shape.w > MOERT_IMAGE_MAX_DIM) {
        data_errf(errbuf, errlen, "batch: bad size %d x %dx%dx%d", capacity, shape.c, shape.h,
                  shape.w);
        return -1;
    }
    size_t per = (size_t)shape.c * (size_t)shape.h * (size_t)shape.w, elems, bytes;
    if (!data_mul(per, (size_t)capacity, &elems) || !data_mul(elems, sizeof(float), &bytes)) {
        data_errf(errbuf, errlen, "batch: %d x %zu floats overflow memory sizes", capacity, per);
        return -1;
    }
    void *x = NULL;
    if (posix_memalign(&x, 64, bytes) != 0)
        x = NULL;
    b->x = x;
    b->labels = calloc((size_t)capacity, sizeof *b->labels);
    b->dataset = calloc((size_t)capacity, sizeof *b->dataset);
    b->labels_mix = calloc((size_t)capacity, sizeof *b->labels_mix);
    if (!b->x || !b->labels || !b->dataset || !b->labels_mix) {
        moert_batch_free(b);
        data_errf(errbuf, errlen, "batch: out of memory for %d x %dx%dx%d floats", capacity,
                  shape.c, shape.h, shape.w);
        return -1;
    }
    memset(b->x, 0, bytes);
    b->capacity = capacity;
    b->c = shape.c;
    b->h = shape.h;
    b->w = shape.w;
    b->step = -1;
    moert_batch_unmix(b);
    return 0;
}

void moert_batch_unmix(moert_batch *b)
{
    memcpy(b->labels_mix, b->labels, (size_t)b->capacity * sizeof *b->labels);
    b->lam = 1.0f;
}

void moert_batch_free(moert_batch *b)
{
    if (!b)
        return;
    free(b->x);
    free(b->labels);
    free(b->dataset);
    free(b->labels_mix);
    memset(b, 0, sizeof *b);
}

/* ------------------------------------------------------------------ */
/* Sample assembly                                                     */
/* ------------------------------------------------------------------ */

static float normalize(int v, float mean, float std)
{
    return ((float)v / 255.0f - mean) / std;
}

static void build_lut(const moert_mix_source *s, int c, norm_lut lut)
{
    for (int ch = 0; ch < c; ch++)
        for (int v = 0; v < 256; v++)
            lut[ch][v] = normalize(v, s->mean[ch], s->std[ch]);
}

/* Writes image img (c x h x w) to out, normalized; the crop window starts
 * at (dy, dx) of the image padded by pad, then mirrored if flip. */
static void write_sample(const uint8_t *img, int c, int h, int w, const norm_lut lut, int pad,
                         int dy, int dx, int flip, float *out)
{
    size_t plane = (size_t)h * (size_t)w;
    for (int ch = 0; ch < c; ch++) {
        const uint8_t *src = img + ch * plane;
        const float *t = lut[ch];
        float *o = out + ch * plane;
        if (pad == 0 && !flip) {
            for (size_t i = 0; i < plane; i++)
                o[i] = t[src[i]];
            continue;
        }
        for (int y = 0; y < h; y++) {
            int sy = y + dy - pad;
            float *orow = o + (size_t)y * w;
            if (sy < 0 || sy >= h) {
                for (int x = 0; x < w; x++)
                    orow[x] = t[0];
                continue;
            }
            const uint8_t *row = src + (size_t)sy * w;
            for (int x = 0; x < w; x++) {
                int sx = (flip ? w - 1 - x : x) + dx - pad;
                orow[x] = (sx >= 0 && sx < w) ? t[row[sx]] : t[0];
            }
        }
    }
}

/* ------------------------------------------------------------------ */
/* Mixture                                                             */
/* ------------------------------------------------------------------ */

/* perm <- the permutation of source j for epoch e (Fisher-Yates). */
static void make_perm(const moert_mixture *m, int j)
{
    uint32_t *p = m->perm[j];
    int64_t n = m->src[j].images->n;
    for (int64_t i = 0; i < n; i++)
        p[i] = (uint32_t)i;
    for (int64_t i = n - 1; i > 0; i--) {
        uint64_t h = data_hash(m->seed, STREAM_PERM + (uint64_t)j, (uint64_t)m->epoch[j],
                               (uint64_t)i);
        uint64_t r = data_below(h, (uint64_t)i + 1);
        uint32_t t = p[i];
        p[i] = p[r];
        p[r] = t;
    }
}

static int need_randaug(const moert_mixture *m)
{
    for (int j = 0; j < m->k; j++)
        if (m->src[j].randaug_n > 0)
            return 1;
    return 0;
}

static int need_files(const moert_mixture *m)
{
    for (int j = 0; j < m->k; j++)
        if (!m->src[j].images->pixels)
            return 1;
    return 0;
}

/* every thread's buffers, as the sources and CutMix need them */
static int alloc_scratch(moert_mixture *m)
{
    const size_t per = (size_t)m->c * (size_t)m->h * (size_t)m->w;
    const int ra = need_randaug(m), cm = m->cm_prob > 0.0, files = need_files(m);
    for (int t = 0; t < m->scratch_n; t++) {
        sampler_scratch *sc = &m->scratch[t];
        if (ra && !sc->ra_img && (!(sc->ra_img = malloc(per)) || !(sc->ra_tmp = malloc(per))))
            return -1;
        if (cm && !sc->cm_img && !(sc->cm_img = malloc(per * sizeof *sc->cm_img)))
            return -1;
        if (files && !sc->file_img && !(sc->file_img = malloc(per)))
            return -1;
    }
    return 0;
}

static void free_scratch(moert_mixture *m)
{
    if (!m->scratch)
        return;
    for (int t = 0; t < m->scratch_n; t++) {
        free(m->scratch[t].ra_img);
        free(m->scratch[t].ra_tmp);
        free(m->scratch[t].cm_img);
        free(m->scratch[t].file_img);
    }
    free(m->scratch);
    m->scratch = NULL;
    m->scratch_n = 0;
}

/* n threads' buffers (none yet) */
static int new_scratch(moert_mixture *m, int n)
{
    if (!(m->scratch = calloc((size_t)n, sizeof *m->scratch)))
        return -1;
    m->scratch_n = n;
    return alloc_scratch(m);
}

static void stop_workers(moert_mixture *m)
{
    if (!m->pool)
        return;
    pthread_mutex_lock(&m->mu);
    m->stop = 1;
    pthread_cond_broadcast(&m->go);
    pthread_mutex_unlock(&m->mu);
    for (int t = 0; t < m->workers - 1; t++)
        pthread_join(m->pool[t].thread, NULL);
    free(m->pool);
    m->pool = NULL;
    m->stop = 0;
}

void moert_mixture_free(moert_mixture *m)
{
    if (!m)
        return;
    if (m->perm)
        for (int j = 0; j < m->k; j++)
            free(m->perm[j]);
    free(m->perm);
    free(m->src);
    free(m->cum);
    free(m->epoch);
    free(m->cursor);
    free(m->lut);
    stop_workers(m);
    pthread_cond_destroy(&m->go);
    pthread_cond_destroy(&m->done);
    pthread_mutex_destroy(&m->mu);
    free_scratch(m);
    free(m->pick_src); /* and the other arrays of its block */
    free(m->cm_count);
    free(m);
}

static int check_source(const moert_mix_source *s, int j, const moert_mix_source *s0,
                        char *errbuf, size_t errlen)
{
    const moert_images *im = s->images;
    if (!im || im->n < 1 || !(im->pixels || im->files) || !im->labels) {
        data_errf(errbuf, errlen, "mixture: source %d has no images", j);
        return -1;
    }
    if ((im->c != 1 && im->c != 3) || im->h < 1 || im->w < 1) {
        data_errf(errbuf, errlen, "mixture: source %d has a bad shape %dx%dx%d", j, im->c, im->h,
                  im->w);
        return -1;
    }
    const moert_images *i0 = s0->images;
    if (im->c != i0->c || im->h != i0->h || im->w != i0->w) {
        data_errf(errbuf, errlen,
                  "mixture: source %d images are %dx%dx%d but source 0 images are %dx%dx%d "
                  "(load every source at the same size)",
                  j, im->c, im->h, im->w, i0->c, i0->h, i0->w);
        return -1;
    }
    if (!(s->weight > 0.0 && isfinite(s->weight))) {
        data_errf(errbuf, errlen, "mixture: source %d has weight %g (must be > 0)", j, s->weight);
        return -1;
    }
    for (int ch = 0; ch < im->c; ch++) {
        if (!(s->std[ch] > 0.0f && isfinite(s->std[ch])) || !isfinite(s->mean[ch])) {
            data_errf(errbuf, errlen,
                      "mixture: source %d channel %d: mean %g, std %g (std must be > 0)", j, ch,
                      (double)s->mean[ch], (double)s->std[ch]);
            return -1;
        }
    }
    if (s->aug & ~(unsigned)(MOERT_AUG_CROP | MOERT_AUG_FLIP)) {
        data_errf(errbuf, errlen, "mixture: source %d has unknown augmentation flags 0x%x", j,
                  s->aug);
        return -1;
    }
    if (s->label_offset < 0 || s->label_offset > (1 << 30)) {
        data_errf(errbuf, errlen, "mixture: source %d has label offset %d (0..2^30)", j,
                  (int)s->label_offset);
        return -1;
    }
    if (s->pad < 0 || s->pad > MOERT_IMAGE_MAX_DIM) {
        data_errf(errbuf, errlen, "mixture: source %d has crop padding %d (0..%d)", j, s->pad,
                  MOERT_IMAGE_MAX_DIM);
        return -1;
    }
    if (s->randaug_n < 0 || s->randaug_n > 16 || s->randaug_m < 0 || s->randaug_m > 30) {
        data_errf(errbuf, errlen, "mixture: source %d has RandAugment n %d, m %d (n 0..16, m 0..30)", j,
                  s->randaug_n, s->randaug_m);
        return -1;
    }
    return 0;
}

moert_mixture *moert_mixture_create(const moert_mix_source *sources, int k, uint64_t seed,
                                    char *errbuf, size_t errlen)
{
    if (!sources || k < 1 || k > 65536) {
        data_errf(errbuf, errlen, "mixture: %d sources (need 1..65536)", k);
        return NULL;
    }
    double total = 0.0;
    for (int j = 0; j < k; j++) {
        if (check_source(&sources[j], j, &sources[0], errbuf, errlen) != 0)
            return NULL;
        total += sources[j].weight;
    }
    moert_mixture *m = calloc(1, sizeof *m);
    if (!m)
        goto oom;
    /* first, so that moert_mixture_free may always destroy them */
    if (pthread_mutex_init(&m->mu, NULL) != 0 || pthread_cond_init(&m->go, NULL) != 0 ||
        pthread_cond_init(&m->done, NULL) != 0) {
        free(m);
        m = NULL;
        goto oom;
    }
    m->k = k;
    m->seed = seed;
    m->c = sources[0].images->c;
    m->h = sources[0].images->h;
    m->w = sources[0].images->w;
    m->src = calloc((size_t)k, sizeof *m->src);
    m->cum = calloc((size_t)k, sizeof *m->cum);
    m->epoch = calloc((size_t)k, sizeof *m->epoch);
    m->cursor = calloc((size_t)k, sizeof *m->cursor);
    m->perm = calloc((size_t)k, sizeof *m->perm);
    m->lut = calloc((size_t)k, sizeof *m->lut);
    if (!m->src || !m->cum || !m->epoch || !m->cursor || !m->perm || !m->lut)
        goto oom;
    memcpy(m->src, sources, (size_t)k * sizeof *m->src);
    double acc = 0.0;
    for (int j = 0; j < k; j++) {
        acc += sources[j].weight;
        m->cum[j] = acc / total;
        build_lut(&m->src[j], m->c, m->lut[j]);
        if (!(m->perm[j] = malloc((size_t)sources[j].images->n * sizeof(uint32_t))))
            goto oom;
        make_perm(m, j);
    }
    m->cum[k - 1] = 1.0;
    m->workers = 1;
    if (new_scratch(m, 1) != 0)
        goto oom;
    return m;
oom:
    moert_mixture_free(m);
    data_errf(errbuf, errlen, "mixture: out of memory");
    return NULL;
}

int64_t moert_mixture_step(const moert_mixture *m)
{
    return m->step;
}

int moert_mixture_set_shard(moert_mixture *m, int global_batch, int first, char *errbuf,
                            size_t errlen)
{
    if (global_batch < 0) {
        data_errf(errbuf, errlen,
                  "mixture shard: global batch %d (must be >= 1, or 0 for no sharding)",
                  global_batch);
        return -1;
    }
    if (global_batch > 0 && (first < 0 || first >= global_batch)) {
        data_errf(errbuf, errlen,
                  "mixture shard: first sample %d outside the global batch of %d (0..%d)", first,
                  global_batch, global_batch - 1);
        return -1;
    }
    m->shard_global = global_batch;
    m->shard_first = global_batch > 0 ? first : 0;
    return 0;
}

/* ------------------------------------------------------------------ */
/* CutMix                                                              */
/* ------------------------------------------------------------------ */

/* log of a Gamma(alpha) draw; *n counts the uniforms of (seed, step) used */
static double log_gamma_draw(uint64_t seed, uint64_t step, double alpha, uint64_t *n)
{
    /* Marsaglia and Tsang (2000) for alpha >= 1; below 1,
     * Gamma(alpha) = Gamma(alpha + 1) * U^(1 / alpha) */
    const double a = alpha < 1.0 ? alpha + 1.0 : alpha;
    const double d = a - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    double logv;
    for (;;) {
        /* a normal by Box and Muller, from two uniforms in (0, 1] and [0, 1) */
        const double u1 = 1.0 - data_unit(data_hash(seed, STREAM_BETA, step, (*n)++));
        const double u2 = data_unit(data_hash(seed, STREAM_BETA, step, (*n)++));
        const double x = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
        const double t = 1.0 + c * x;
        if (t <= 0.0)
            continue;
        const double v = t * t * t;
        const double u = 1.0 - data_unit(data_hash(seed, STREAM_BETA, step, (*n)++));
        if (u < 1.0 - 0.0331 * x * x * x * x || log(u) < 0.5 * x * x + d * (1.0 - v + log(v))) {
            logv = log(d) + log(v);
            break;
        }
    }
    if (alpha < 1.0) {
        const double u = 1.0 - data_unit(data_hash(seed, STREAM_BETA, step, (*n)++));
        logv += log(u) / alpha;
    }
    return logv;
}

double moert_beta_draw(uint64_t seed, int64_t step, double alpha)
{
    uint64_t n = 0;
    const double lx = log_gamma_draw(seed, (uint64_t)step, alpha, &n);
    const double ly = log_gamma_draw(seed, (uint64_t)step, alpha, &n);
    /* X / (X + Y) = 1 / (1 + exp(ly - lx)) */
    return 1.0 / (1.0 + exp(ly - lx));
}

int moert_cutmix_draw(uint64_t seed, int64_t step, double alpha, double prob, int h, int w,
                      moert_cutmix_box *box)
{
    const uint64_t st = (uint64_t)step;
    box->y0 = box->y1 = box->x0 = box->x1 = 0;
    box->lam0 = box->lam = 1.0;
    if (!(prob > 0.0) || !(data_unit(data_hash(seed, STREAM_CUTMIX, st, 0)) < prob))
        return 0;
    const double lam0 = moert_beta_draw(seed, step, alpha);
    /* timm's rand_bbox: a box of sqrt(1 - lam0) of each side, centred at a
     * uniform pixel, half-sides rounded down, clipped to the image */
    const double r = sqrt(1.0 - lam0);
    const int cut_h = (int)(h * r), cut_w = (int)(w * r);
    const int cy = (int)data_below(data_hash(seed, STREAM_CUTMIX, st, 1), (uint64_t)h);
    const int cx = (int)data_below(data_hash(seed, STREAM_CUTMIX, st, 2), (uint64_t)w);
    box->y0 = cy - cut_h / 2 < 0 ? 0 : cy - cut_h / 2;
    box->y1 = cy + cut_h / 2 > h ? h : cy + cut_h / 2;
    box->x0 = cx - cut_w / 2 < 0 ? 0 : cx - cut_w / 2;
    box->x1 = cx + cut_w / 2 > w ? w : cx + cut_w / 2;
    box->lam0 = lam0;
    box->lam = 1.0 - (double)(box->y1 - box->y0) * (double)(box->x1 - box->x0) / ((double)h * (double)w);
    return 1;
}

int moert_mixture_set_cutmix(moert_mixture *m, double alpha, double prob, int by_source,
                             char *errbuf, size_t errlen)
{
    if (!(prob >= 0.0 && prob <= 1.0)) {
        data_errf(errbuf, errlen, "mixture: CutMix probability %g (must be in [0, 1])", prob);
        return -1;
    }
    if (prob > 0.0 && !(alpha >= 1e-3 && alpha <= 100.0)) {
        data_errf(errbuf, errlen, "mixture: CutMix alpha %g (must be in [0.001, 100])", alpha);
        return -1;
    }
    /* alloc_scratch gives each thread its partner buffer once cm_prob > 0 */
    const double was = m->cm_prob;
    m->cm_prob = prob;
    if (prob > 0.0 && !m->cm_count)
        m->cm_count = calloc((size_t)m->k, sizeof *m->cm_count);
    if (prob > 0.0 && (!m->cm_count || alloc_scratch(m) != 0)) {
        m->cm_prob = was;
        data_errf(errbuf, errlen, "mixture: out of memory");
        return -1;
    }
    m->cm_alpha = alpha;
    m->cm_by_source = by_source != 0;
    return 0;
}

/* the step's draws for batches of n samples: one block of four arrays
 * (per-step scratch: nothing in them is kept across a growth) */
static int picks_reserve(moert_mixture *m, int n)
{
    if (n <= m->pick_cap)
        return 0;
    int32_t *block = malloc((size_t)n * 4 * sizeof *block);
    if (!block)
        return -1;
    free(m->pick_src);
    m->pick_src = block;
    m->pick_idx = (uint32_t *)(block + n);
    m->cm_partner = block + 2 * (size_t)n;
    m->cm_order = block + 3 * (size_t)n;
    m->pick_cap = n;
    return 0;
}

/* cm_partner <- each sample's partner among n: n - 1 - i, or within its
 * source's samples the same from the other end */
static void cutmix_pair(moert_mixture *m, int n)
{
    if (!m->cm_by_source) {
        for (int i = 0; i < n; i++)
            m->cm_partner[i] = n - 1 - i;
        return;
    }
    /* a counting sort by source keeps each source's samples in order */
    int32_t *count = m->cm_count;
    memset(count, 0, (size_t)m->k * sizeof *count);
    for (int i = 0; i < n; i++)
        count[m->pick_src[i]]++;
    int32_t at = 0;
    for (int j = 0; j < m->k; j++) {
        const int32_t c = count[j];
        count[j] = at; /* now where source j's samples start */
        at += c;
    }
    for (int i = 0; i < n; i++)
        m->cm_order[count[m->pick_src[i]]++] = i;
    /* count[j] is now where source j's samples end */
    int32_t lo = 0;
    for (int j = 0; j < m->k; j++) {
        const int32_t hi = count[j];
        for (int32_t t = lo; t < hi; t++)
            m->cm_partner[m->cm_order[t]] = m->cm_order[lo + hi - 1 - t];
        lo = hi;
    }
}

/* rows [y0, y1) and columns [x0, x1) of every plane of dst <- src's, or
 * swapped with them */
static void box_copy(float *dst, float *src, int c, int h, int w, const moert_cutmix_box *bx,
                     int swap)
{
    const size_t plane = (size_t)h * (size_t)w, len = (size_t)(bx->x1 - bx->x0);
    for (int ch = 0; ch < c; ch++)
        for (int y = bx->y0; y < bx->y1; y++) {
            const size_t o = (size_t)ch * plane + (size_t)y * (size_t)w + (size_t)bx->x0;
            if (swap)
                for (size_t x = 0; x < len; x++) {
                    const float t = dst[o + x];
                    dst[o + x] = src[o + x];
                    src[o + x] = t;
                }
            else
                memcpy(dst + o, src + o, len * sizeof *dst);
        }
}

/* ------------------------------------------------------------------ */
/* Batches of the mixture, assembled by one thread or several          */
/* ------------------------------------------------------------------ */

/* Sample i of the step: image idx of source j, augmented, normalized, to
 * out, with the buffers sc. */
static void render_sample(moert_mixture *m, const sampler_scratch *sc, uint64_t step, int i,
                          int j, uint32_t idx, float *out)
{
    const moert_mix_source *s = &m->src[j];
    const size_t per = (size_t)m->c * (size_t)m->h * (size_t)m->w;
    int pad = 0, dy = 0, dx = 0, flip = 0;
    if (s->aug & MOERT_AUG_CROP && s->pad > 0) {
        pad = s->pad;
        uint64_t span = 2 * (uint64_t)pad + 1;
        dy = (int)data_below(data_hash(m->seed, STREAM_CROP_Y, step, (uint64_t)i), span);
        dx = (int)data_below(data_hash(m->seed, STREAM_CROP_X, step, (uint64_t)i), span);
    }
    if (s->aug & MOERT_AUG_FLIP)
        flip = (int)(data_hash(m->seed, STREAM_FLIP, step, (uint64_t)i) >> 63);
    const uint8_t *img;
    if (s->images->pixels) {
        img = s->images->pixels + (size_t)idx * per;
    } else {
        char err[sizeof m->error];
        if (moert_images_read(s->images, idx, sc->file_img, err, sizeof err) != 0) {
            /* the batch is not used: moert_mixture_next fails */
            pthread_mutex_lock(&m->mu);
            if (!m->failed) {
                m->failed = 1;
                memcpy(m->error, err, sizeof err);
            }
            pthread_mutex_unlock(&m->mu);
            memset(sc->file_img, 0, per);
        }
        img = sc->file_img;
    }
    if (s->randaug_n > 0) {
        memcpy(sc->ra_img, img, per);
        moert_randaugment(sc->ra_img, m->c, m->h, m->w, s->randaug_n, s->randaug_m,
                          data_hash(m->seed, STREAM_RANDAUG, step, (uint64_t)i), sc->ra_tmp);
        img = sc->ra_img;
    }
    write_sample(img, m->c, m->h, m->w, (const float(*)[256])m->lut[j], pad, dy, dx, flip, out);
}

enum { JOB_RENDER, JOB_CUTMIX };

/* Row r of the job's batch (sample job_first + r of the step). Rows are
 * independent: JOB_CUTMIX swaps a pair's boxes from the pair's first row
 * alone, so threads may take rows in any order. */
static void job_row(moert_mixture *m, const sampler_scratch *sc, int r)
{
    moert_batch *b = m->job_b;
    const size_t per = (size_t)m->c * (size_t)m->h * (size_t)m->w;
    const int i = m->job_first + r;
    float *row = b->x + (size_t)r * per;
    if (m->job == JOB_RENDER) {
        render_sample(m, sc, m->job_step, i, m->pick_src[i], m->pick_idx[i], row);
        return;
    }
    const int p = m->cm_partner[i];
    const moert_mix_source *ps = &m->src[m->pick_src[p]];
    b->labels_mix[r] = ps->images->labels[m->pick_idx[p]] + ps->label_offset;
    if (p >= m->job_first && p < m->job_first + b->capacity) {
        /* both in b: swap their boxes once, from the first of the pair */
        if (p > i)
            box_copy(row, b->x + (size_t)(p - m->job_first) * per, m->c, m->h, m->w, &m->job_box, 1);
    } else {
        /* another shard's sample: made here as that shard makes it */
        render_sample(m, sc, m->job_step, p, m->pick_src[p], m->pick_idx[p], sc->cm_img);
        box_copy(row, sc->cm_img, m->c, m->h, m->w, &m->job_box, 0);
    }
}

/* takes rows of the current job until none is left */
static void job_rows(moert_mixture *m, int t)
{
    const sampler_scratch *sc = &m->scratch[t];
    for (;;) {
        const int r = __atomic_fetch_add(&m->job_next, 1, __ATOMIC_RELAXED);
        if (r >= m->job_b->capacity)
            return;
        job_row(m, sc, r);
    }
}

static void *worker_main(void *arg)
{
    sampler_worker *w = arg;
    moert_mixture *m = w->m;
    uint64_t seen = w->gen0;
    pthread_mutex_lock(&m->mu);
    for (;;) {
        while (!m->stop && m->gen == seen)
            pthread_cond_wait(&m->go, &m->mu);
        if (m->stop)
            break;
        seen = m->gen;
        pthread_mutex_unlock(&m->mu);
        job_rows(m, w->index);
        pthread_mutex_lock(&m->mu);
        if (--m->running == 0)
            pthread_cond_signal(&m->done);
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

/* runs job over the rows of b on every thread, the caller's included */
static void run_job(moert_mixture *m, int job, moert_batch *b)
{
    m->job = job;
    m->job_b = b;
    m->job_next = 0;
    if (m->pool) {
        pthread_mutex_lock(&m->mu);
        m->running = m->workers - 1;
        m->gen++;
        pthread_cond_broadcast(&m->go);
        pthread_mutex_unlock(&m->mu);
    }
    job_rows(m, 0);
    if (m->pool) {
        pthread_mutex_lock(&m->mu);
        while (m->running > 0)
            pthread_cond_wait(&m->done, &m->mu);
        pthread_mutex_unlock(&m->mu);
    }
}

int moert_mixture_set_workers(moert_mixture *m, int n, char *errbuf, size_t errlen)
{
    if (n < 1 || n > MOERT_MAX_LOADER_THREADS) {
        data_errf(errbuf, errlen, "mixture: %d loader threads (must be 1..%d)", n,
                  MOERT_MAX_LOADER_THREADS);
        return -1;
    }
    stop_workers(m);
    free_scratch(m);
    m->workers = 1;
    if (new_scratch(m, n) != 0 || (n > 1 && !(m->pool = calloc((size_t)n - 1, sizeof *m->pool)))) {
        data_errf(errbuf, errlen, "mixture: out of memory for %d loader threads", n);
        /* back to the caller's thread alone; without even its buffers,
         * moert_mixture_next fails */
        free_scratch(m);
        if (new_scratch(m, 1) != 0)
            free_scratch(m);
        return -1;
    }
    for (int t = 0; t < n - 1; t++) {
        m->pool[t].m = m;
        m->pool[t].index = t + 1;
        m->pool[t].gen0 = m->gen;
        if (pthread_create(&m->pool[t].thread, NULL, worker_main, &m->pool[t]) != 0) {
            /* the ones started stop; the caller's thread works alone */
            m->workers = t + 1;
            stop_workers(m);
            m->workers = 1;
            data_errf(errbuf, errlen, "mixture: cannot start loader thread %d of %d", t + 2, n);
            return -1;
        }
    }
    m->workers = n;
    return 0;
}

int moert_mixture_workers(const moert_mixture *m)
{
    return m->workers;
}

int moert_mixture_next(moert_mixture *m, moert_batch *b)
{
    if (!b || !b->x || b->capacity < 1 || b->c != m->c || b->h != m->h || b->w != m->w ||
        !m->scratch)
        return -1;
    /* The step draws samples [0, total) and b gets [first, end) of them.
     * Unsharded, that is all of them; sharded, every sample of the global
     * batch still picks its source and advances that source's cursor, so
     * the state is the unsharded one, but only b's rows are assembled. */
    int total = b->capacity, first = 0;
    if (m->shard_global > 0) {
        if (b->capacity > m->shard_global - m->shard_first)
            return -1;
        total = m->shard_global;
        first = m->shard_first;
    }
    if (picks_reserve(m, total) != 0)
        return -1;
    const int end = first + b->capacity;
    const uint64_t step = (uint64_t)m->step;
    /* the draws, in order (the cursors), then the images, in parallel */
    for (int i = 0; i < total; i++) {
        double u = data_unit(data_hash(m->seed, STREAM_PICK, step, (uint64_t)i));
        int j = 0;
        if (m->k > 1) { /* first j with u < cum[j]; cum[k-1] = 1 > u */
            int lo = 0, hi = m->k - 1;
            while (lo < hi) {
                int mid = (lo + hi) / 2;
                if (u < m->cum[mid])
                    hi = mid;
                else
                    lo = mid + 1;
            }
            j = lo;
        }
        const moert_images *im = m->src[j].images;
        uint32_t idx = m->perm[j][m->cursor[j]];
        if (++m->cursor[j] == im->n) {
            m->epoch[j]++;
            m->cursor[j] = 0;
            make_perm(m, j);
        }
        m->pick_src[i] = j;
        m->pick_idx[i] = idx;
        if (i >= first && i < end) {
            b->labels[i - first] = im->labels[idx] + m->src[j].label_offset;
            b->dataset[i - first] = j;
        }
    }
    m->job_step = step;
    m->job_first = first;
    run_job(m, JOB_RENDER, b);
    if (m->cm_prob > 0.0 &&
        moert_cutmix_draw(m->seed, (int64_t)step, m->cm_alpha, m->cm_prob, m->h, m->w, &m->job_box)) {
        cutmix_pair(m, total);
        run_job(m, JOB_CUTMIX, b);
        b->lam = (float)m->job_box.lam;
    } else {
        moert_batch_unmix(b);
    }
    if (m->failed)
        return -1;
    b->count = b->capacity;
    b->step = m->step;
    m->step++;
    return b->count;
}

const char *moert_mixture_error(const moert_mixture *m)
{
    return m->failed ? m->error : "";
}

size_t moert_mixture_state_len(const moert_mixture *m)
{
    return STATE_HEADER + 2 * (size_t)m->k;
}

int moert_mixture_state_export(const moert_mixture *m, int64_t *state, size_t len,
                               char *errbuf, size_t errlen)
{
    size_t need = moert_mixture_state_len(m);
    if (!state || len < need) {
        data_errf(errbuf, errlen, "mixture state: buffer of %zu values, need %zu", len, need);
        return -1;
    }
    state[0] = STATE_MAGIC;
    state[1] = STATE_VERSION;
    state[2] = m->k;
    state[3] = (int64_t)m->seed;
    state[4] = m->step;
    for (int j = 0; j < m->k; j++) {
        state[STATE_HEADER + 2 * j] = m->epoch[j];
        state[STATE_HEADER + 2 * j + 1] = m->cursor[j];
    }
    return 0;
}

int moert_mixture_state_import(moert_mixture *m, const int64_t *state, size_t len,
                               char *errbuf, size_t errlen)
{
    size_t need = moert_mixture_state_len(m);
    if (!state || len < STATE_HEADER || state[0] != STATE_MAGIC) {
        data_errf(errbuf, errlen, "mixture state: not a sampler state (bad magic)");
        return -1;
    }
    if (state[1] != STATE_VERSION) {
        data_errf(errbuf, errlen, "mixture state: version %lld, this library reads %d",
                  (long long)state[1], STATE_VERSION);
        return -1;
    }
    if (state[2] != m->k || len < need) {
        data_errf(errbuf, errlen,
                  "mixture state: saved for %lld sources (%zu values given), the sampler has %d",
                  (long long)state[2], len, m->k);
        return -1;
    }
    if ((uint64_t)state[3] != m->seed) {
        data_errf(errbuf, errlen, "mixture state: saved with seed %llu, the sampler has seed %llu",
                  (unsigned long long)state[3], (unsigned long long)m->seed);
        return -1;
    }
    if (state[4] < 0) {
        data_errf(errbuf, errlen, "mixture state: negative step %lld", (long long)state[4]);
        return -1;
    }
    for (int j = 0; j < m->k; j++) {
        int64_t e = state[STATE_HEADER + 2 * j], c = state[STATE_HEADER + 2 * j + 1];
        if (e < 0 || c < 0 || c >= m->src[j].images->n) {
            data_errf(errbuf, errlen,
                      "mixture state: source %d at epoch %lld, position %lld, but it has %lld "
                      "images (a different dataset?)",
                      j, (long long)e, (long long)c, (long long)m->src[j].images->n);
            return -1;
        }
    }
    m->step = state[4];
    for (int j = 0; j < m->k; j++) {
        int64_t e = state[STATE_HEADER + 2 * j];
        m->cursor[j] = state[STATE_HEADER + 2 * j + 1];
        if (e != m->epoch[j]) {
            m->epoch[j] = e;
            make_perm(m, j);
        }
    }
    return 0;
}

void data_mixture_shape(const moert_mixture *m, moert_shape *shape)
{
    shape->c = m->c;
    shape->h = m->h;
    shape->w = m->w;
}

/* ------------------------------------------------------------------ */
/* Evaluation                                                          */
/* ------------------------------------------------------------------ */

void moert_eval_init(moert_eval_iter *it, const moert_mix_source *src, int dataset)
{
    memset(it, 0, sizeof *it);
    it->src = *src;
    it->dataset = dataset;
    it->threads = 1;
}

/* One thread's rows of an evaluation batch from a list's files: rows t,
 * t + nt, ... of count */
typedef struct eval_rows {
    const moert_eval_iter *it;
    moert_batch *b;
    const float (*lut)[256];
    int count, t, nt;
    int failed;
    char error[sizeof ((moert_eval_iter *)0)->error];
    pthread_t thread;
} eval_rows;

static void *eval_rows_run(void *arg)
{
    eval_rows *r = arg;
    const moert_images *im = r->it->src.images;
    const size_t per = moert_images_stride(im);
    uint8_t *img = malloc(per);
    if (!img) {
        r->failed = 1;
        data_errf(r->error, sizeof r->error, "evaluation: out of memory for an image of %zu bytes", per);
        return NULL;
    }
    for (int i = r->t; i < r->count && !r->failed; i += r->nt) {
        if (moert_images_read(im, r->it->next + i, img, r->error, sizeof r->error) != 0)
            r->failed = 1;
        else
            write_sample(img, im->c, im->h, im->w, r->lut, 0, 0, 0, 0, r->b->x + (size_t)i * per);
    }
    free(img);
    return NULL;
}

/* The count images of a list's files from it->next into b, decoded by
 * it->threads threads (the caller's included) */
static int eval_files(moert_eval_iter *it, moert_batch *b, const float (*lut)[256], int count)
{
    int nt = it->threads < 1 ? 1 : it->threads > count ? count : it->threads;
    if (nt > MOERT_MAX_LOADER_THREADS)
        nt = MOERT_MAX_LOADER_THREADS;
    eval_rows *rows = calloc((size_t)nt, sizeof *rows);
    if (!rows) {
        data_errf(it->error, sizeof it->error, "evaluation: out of memory for %d threads", nt);
        return -1;
    }
    int started = 1;
    for (int t = 0; t < nt; t++)
        rows[t] = (eval_rows){ .it = it, .b = b, .lut = lut, .count = count, .t = t, .nt = nt };
    for (int t = 1; t < nt; t++, started++)
        if (pthread_create(&rows[t].thread, NULL, eval_rows_run, &rows[t]) != 0)
            break;
    /* rows a thread that did not start would take: the caller's */
    for (int t = started; t < nt; t++)
        eval_rows_run(&rows[t]);
    eval_rows_run(&rows[0]);
    for (int t = 1; t < started; t++)
        pthread_join(rows[t].thread, NULL);
    int rc = 0;
    for (int t = 0; t < nt && rc == 0; t++)
        if (rows[t].failed) {
            memcpy(it->error, rows[t].error, sizeof it->error);
            rc = -1;
        }
    free(rows);
    return rc;
}

int moert_eval_skip(moert_eval_iter *it, int n)
{
    if (!it || !it->src.images || n < 1)
        return -1;
    int64_t left = it->src.images->n - it->next;
    int count = left < n ? (int)(left > 0 ? left : 0) : n;
    it->next += count;
    return count;
}

int moert_eval_next(moert_eval_iter *it, moert_batch *b)
{
    const moert_images *im = it->src.images;
    if (!im || !b || !b->x || b->c != im->c || b->h != im->h || b->w != im->w ||
        b->capacity < 1)
        return -1;
    int64_t left = im->n - it->next;
    int count = left < b->capacity ? (int)(left > 0 ? left : 0) : b->capacity;
    norm_lut lut;
    build_lut(&it->src, im->c, lut);
    size_t per = moert_images_stride(im);
    if (!im->pixels && count > 0 && eval_files(it, b, (const float(*)[256])lut, count) != 0)
        return -1;
    for (int i = 0; i < count; i++) {
        int64_t idx = it->next + i;
        if (im->pixels)
            write_sample(im->pixels + (size_t)idx * per, im->c, im->h, im->w, (const float(*)[256])lut, 0, 0, 0,
                         0, b->x + (size_t)i * per);
        b->labels[i] = im->labels[idx] + it->src.label_offset;
        b->dataset[i] = it->dataset;
    }
    /* unused slots of a partial batch: zeros, label and dataset -1 */
    if (count < b->capacity) {
        memset(b->x + (size_t)count * per, 0, (size_t)(b->capacity - count) * per * sizeof *b->x);
        for (int i = count; i < b->capacity; i++) {
            b->labels[i] = -1;
            b->dataset[i] = -1;
        }
    }
    moert_batch_unmix(b);
    it->next += count;
    b->count = count;
    b->step = -1;
    return count;
}
