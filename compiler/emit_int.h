/* emit_int.h: what the CPU and CUDA emitters share (emit_util.c): a
 * growing string, the plan of values and arenas, literals and names. */
#ifndef MOECC_EMIT_INT_H
#define MOECC_EMIT_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "emit.h"

typedef struct sbuf {
    char *s;
    size_t len, cap;
} sbuf;

void sb_printf(sbuf *b, const char *fmt, ...) MC_PRINTF(2, 3);
void sb_free(sbuf *b);
char *sb_take(sbuf *b);   /* the text, owned by the caller; b is emptied */

/* A room of n floats in an arena, rounded up so that every room starts
 * a multiple of 256 bytes from the arena's start (cudaMalloc's
 * alignment), which cuBLAS's products prefer in their operands */
#define ROOM_FLOATS(n) (((int64_t)(n) + 63) & ~(int64_t)63)

/* The plan of one backend: every value flowing between ops gets a buffer
 * in the activation arena, its gradient the same offset of a second one. */
typedef struct gen {
    const mc_model *m;
    int64_t act_floats;   /* float slots of the activation arena (compiled batch) */
    int64_t max_act;      /* the largest buffer of it (floats) */
    int64_t int_slots;    /* int32 slots (routing) */
    int shard;            /* expert tensors hold 1/shard of their experts (the
                           * CUDA arena under expert parallelism), else 1 */
    int64_t params;       /* floats of the parameter arena so laid out */
    int64_t *param_off;   /* per op: offset of its first tensor */
    int *value;           /* per op: the value (op index) of its output */
    int *input;           /* per op: the value of its (main) input; -1: the image */
    int *skip;            /* RESIDUAL_END: the value at its BEGIN */
    int *last_use;        /* per value: the last op (forward order) that reads it */
    int *uses;            /* per value: its reads, as an op's input or a residual's skip */
    int *last_reader;     /* per value: the last op that takes it as its input, or -1 */
    sbuf defs;            /* offsets of the buffers */
    sbuf fwd;             /* forward code */
    char **bwd;           /* backward code of each op */
    int nmoe;
    int *moe_index;       /* per op: its MoE layer number, or -1 */
    int *fuse_into;       /* the CUDA plan's: per op, the residual end whose output
                           * it makes (adding the skip), its own value never
                           * made nor allocated; or -1. NULL: none (the CPU's) */
    bool *own_value;      /* the CUDA plan's: per op, whether the backend places
                           * its value itself (emit_cuda.c's alloc_half), which
                           * op_begin then leaves alone. NULL: none */
} gen;

/* shard: the expert-parallel degree of the parameter arena being laid out
 * (1: every tensor whole, as in the checkpoints) */
void gen_init(gen *g, const mc_model *m, int shard);
int64_t tnumel(const gen *g, const mc_tensor *t); /* its floats in this arena */
void gen_free(gen *g);
int64_t alloc_act(gen *g, const char *name, int64_t floats, const char *what);
void alloc_int(gen *g, const char *name, int64_t n, const char *what);
int64_t toff(const gen *g, int i, int j);       /* tensor j of op i in this parameter arena */
int64_t toff_whole(const gen *g, int i, int j); /* ... in the whole one, as in checkpoints */
int tokens_of(const mc_shape *s);
const char *act_code(mc_act a);
void val_ref(char *buf, size_t n, int v, bool grad);  /* "A(V3)", "G(V3)" or "x" */
int acc_flag(const gen *g, int i, int v);

/* What both emitters know of op i as they start its code. */
typedef struct op_ctx {
    char in[32], din[32], out[32], dout[32]; /* its input, output and their gradients */
    char name[32];     /* "V<i>": its output value */
    char what[160];    /* "attention blocks.0.attn" */
    int T, D;          /* tokens and width (channels) of its input */
    int acc;           /* whether its input's gradient is accumulated */
    int64_t floats;    /* floats of its output value for the compiled batch (0: the classifier's logits) */
} op_ctx;

/* Starts op i: fills c, allocates its output value (all but the classifier,
 * whose logits the op sizes) and writes the comment lines that head its
 * forward (g->fwd) and backward (b) code. False for ops with no code. */
bool op_begin(gen *g, int i, op_ctx *c, sbuf *b);

/* What both emitters name and place for window attention op i: its
 * buffers (QKVW<i>, ...), its tensors' offsets and its shapes. */
typedef struct wattn_plan {
    char qkvw[32], att[32], yw[32], y[32], kv[32], gt[32], q[32];
    long long w_in, b_in, w_gq, b_gq, w_p, b_p; /* -1: absent */
    char bi[40], dbi[40];  /* the input projection's bias and its gradient, or null_word */
    int NH, HD, WS, GH, GW, NW, WT, proj;
    bool gq, qb;
} wattn_plan;
void wattn_plan_init(const gen *g, int i, wattn_plan *w, const char *null_word);

/* The load loss's buffers of MoE op i, for both emitters (sema: a top-k
 * router with gate noise): the router logits before the noise (CLEAN<i>),
 * each choice's density at its threshold (LDENS<i>) and the experts at
 * each token's two thresholds (LTHR<i>), for NB tokens. Allocated only
 * with load_loss > 0, which it returns. */
typedef struct load_plan {
    char clean[32], dens[32], thr[32];
} load_plan;
bool load_plan_init(gen *g, int i, int64_t NB, load_plan *l);

/* A float literal for C: 0.02f, 1e-05f, 0.0f (shortest form that reads back). */
typedef struct flit_buf {
    char s[48];
} flit_buf;
flit_buf flit(double v);

void header_comment(sbuf *b, const mc_model *m, const char *file, const char *what, const mc_emit_opts *o);

/* the tables of model.h (TENSORS, DATASETS, ...) and the per-model statics
 * (MOEj_MAP, HEAD_W, HEAD_B), for model.c and model.cu */
void emit_tables(sbuf *c, const gen *g);

/* the CUDA backend: model.cu, and into mem (when not NULL) what its
 * backend will allocate */
void emit_model_cu(sbuf *c, gen *g, const mc_emit_opts *o, mc_gpu_memory *mem);
/* g: the CUDA plan of m, for one GPU's share of the batch and of the experts;
 * local holds that GPU's model, which g points to: it must outlive g */
void gen_init_cuda(gen *g, const mc_model *m, mc_model *local);

#endif /* MOECC_EMIT_INT_H */
