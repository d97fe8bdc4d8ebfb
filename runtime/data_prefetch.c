/* data_prefetch.c: a producer thread that assembles the next batches while
 * the consumer trains.
 *
 * Ring of `depth` preallocated batches. Slots, in ring order from `head`:
 * `filled` ready batches, then free ones; the slot just before head is
 * `held` by the consumer (the batch it is using) until its next call. The
 * producer is the only caller of moert_mixture_next, in step order, so the
 * batches are the synchronous sequence. With every batch the producer also
 * stores the sampler state after it, so a checkpoint can record exactly
 * the batches consumed, not those made ahead. */
#include "data_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define PREFETCH_MAX_DEPTH 64

struct moert_prefetch {
    moert_mixture *m;
    int depth;
    moert_batch *ring;      /* (depth) */
    int64_t *states;        /* (depth, state_len): sampler state after each slot's batch */
    int64_t *start_state;   /* (state_len): state at create */
    size_t state_len;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t produced; /* a slot became ready, or stop */
    pthread_cond_t freed;    /* a slot became free, or stop */
    int head;                /* next slot to hand out */
    int filled;              /* ready slots from head on */
    int held;                /* slot the consumer holds, or -1 */
    int last;                /* slot of the last batch handed out, or -1 */
    int stop;
    int failed;              /* moert_mixture_next failed: no more batches */
};

static void *producer(void *arg)
{
    moert_prefetch *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->filled + (p->held >= 0) == p->depth)
            pthread_cond_wait(&p->freed, &p->mu);
        if (p->stop)
            break;
        int slot = (p->head + p->filled) % p->depth;
        pthread_mutex_unlock(&p->mu);

        const int got = moert_mixture_next(p->m, &p->ring[slot]);
        moert_mixture_state_export(p->m, p->states + (size_t)slot * p->state_len,
                                   p->state_len, NULL, 0);

        pthread_mutex_lock(&p->mu);
        if (got < 0) {
            p->failed = 1;
            pthread_cond_signal(&p->produced);
            break;
        }
        p->filled++;
        pthread_cond_signal(&p->produced);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void free_ring(moert_prefetch *p)
{
    if (p->ring)
        for (int i = 0; i < p->depth; i++)
            moert_batch_free(&p->ring[i]);
    free(p->ring);
    free(p->states);
    free(p->start_state);
    free(p);
}

moert_prefetch *moert_prefetch_create(moert_mixture *m, int batch_size, int depth,
                                      char *errbuf, size_t errlen)
{
    if (!m || batch_size < 1 || depth < 2 || depth > PREFETCH_MAX_DEPTH) {
        data_errf(errbuf, errlen, "prefetch: need a sampler, batch size >= 1 and depth 2..%d "
                  "(got %d, %d)", PREFETCH_MAX_DEPTH, batch_size, depth);
        return NULL;
    }
    moert_prefetch *p = calloc(1, sizeof *p);
    if (!p) {
        data_errf(errbuf, errlen, "prefetch: out of memory");
        return NULL;
    }
    p->m = m;
    p->depth = depth;
    p->held = -1;
    p->last = -1;
    p->state_len = moert_mixture_state_len(m);
    p->ring = calloc((size_t)depth, sizeof *p->ring);
    p->states = calloc((size_t)depth * p->state_len, sizeof *p->states);
    p->start_state = calloc(p->state_len, sizeof *p->start_state);
    if (!p->ring || !p->states || !p->start_state) {
        free_ring(p);
        data_errf(errbuf, errlen, "prefetch: out of memory");
        return NULL;
    }
    moert_shape shape;
    data_mixture_shape(m, &shape);
    for (int i = 0; i < depth; i++) {
        if (moert_batch_init(&p->ring[i], batch_size, shape, errbuf, errlen) != 0) {
            free_ring(p);
            return NULL;
        }
    }
    moert_mixture_state_export(m, p->start_state, p->state_len, NULL, 0);
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free_ring(p);
        data_errf(errbuf, errlen, "prefetch: cannot create a mutex");
        return NULL;
    }
    if (pthread_cond_init(&p->produced, NULL) != 0) {
        pthread_mutex_destroy(&p->mu);
        free_ring(p);
        data_errf(errbuf, errlen, "prefetch: cannot create a condition variable");
        return NULL;
    }
    if (pthread_cond_init(&p->freed, NULL) != 0) {
        pthread_cond_destroy(&p->produced);
        pthread_mutex_destroy(&p->mu);
        free_ring(p);
        data_errf(errbuf, errlen, "prefetch: cannot create a condition variable");
        return NULL;
    }
    if (pthread_create(&p->thread, NULL, producer, p) != 0) {
        pthread_cond_destroy(&p->freed);
        pthread_cond_destroy(&p->produced);
        pthread_mutex_destroy(&p->mu);
        free_ring(p);
        data_errf(errbuf, errlen, "prefetch: cannot start the producer thread");
        return NULL;
    }
    return p;
}

const moert_batch *moert_prefetch_next(moert_prefetch *p)
{
    pthread_mutex_lock(&p->mu);
    if (p->held >= 0) {
        p->held = -1; /* the previous batch goes back to the producer */
        pthread_cond_signal(&p->freed);
    }
    while (p->filled == 0 && !p->failed)
        pthread_cond_wait(&p->produced, &p->mu);
    if (p->filled == 0) {
        pthread_mutex_unlock(&p->mu);
        return NULL;
    }
    int slot = p->head;
    p->head = (p->head + 1) % p->depth;
    p->filled--;
    p->held = slot;
    p->last = slot;
    pthread_mutex_unlock(&p->mu);
    return &p->ring[slot];
}

int moert_prefetch_state_export(const moert_prefetch *p, int64_t *state, size_t len,
                                char *errbuf, size_t errlen)
{
    if (!state || len < p->state_len) {
        data_errf(errbuf, errlen, "prefetch state: buffer of %zu values, need %zu", len,
                  p->state_len);
        return -1;
    }
    /* the slot of the last batch is held by the caller: the producer does
     * not write its state until the caller's next call */
    const int64_t *s = p->last >= 0 ? p->states + (size_t)p->last * p->state_len : p->start_state;
    memcpy(state, s, p->state_len * sizeof *state);
    return 0;
}

void moert_prefetch_destroy(moert_prefetch *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->freed);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    /* rewind the sampler to just after the last batch consumed */
    const int64_t *s = p->last >= 0 ? p->states + (size_t)p->last * p->state_len : p->start_state;
    moert_mixture_state_import(p->m, s, p->state_len, NULL, 0);
    pthread_cond_destroy(&p->freed);
    pthread_cond_destroy(&p->produced);
    pthread_mutex_destroy(&p->mu);
    free_ring(p);
}
