/* emit_cuda.c: the CUDA backend - from the checked model to model.cu.
 *
 * The plan is the CPU's (emit.c): one float arena of activations laid out
 * for the compiled batch, their gradients at the same offsets of a second
 * one, the parameter arenas in the order of the tensor table. It differs
 * where the GPU wants static shapes: a MoE layer's expert rows are laid
 * out [E, capacity, *] (the rows past an expert's count are zeros), so
 * that the experts' products are one batched launch whose shape does not
 * depend on the routing, and the step never waits for the host.
 *
 * model.cu calls the templates of kernels.cuh with every shape a
 * compile-time constant; backend.cu (a template) owns the device memory,
 * the streams and the CUDA graph of the step. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emit_int.h"

/* The most the kernels of kernels.cuh take (their static_asserts, checked
 * here with a located error instead). */
#define CUDA_MAX_EXPERTS 256
#define CUDA_MAX_LN_WIDTH 1024          /* layernorm backward: a warp per row, 32 values a lane */
#define CUDA_LN_DEFAULT_WIDTH 512       /* up to here its 8 rows of 3*D floats fit in 48 KiB; wider
                                         * widths ask for more (layernorm_setup) */
#define CUDA_MAX_ATTN_SMEM (227 * 1024) /* one block's shared memory on a Hopper SM */

/* kernels.cuh: attn_bwd_smem (rows of HD + 4 floats): a (sample, head) in
 * one block */
static int64_t attn_bwd_smem(int T, int HD)
{
    return 4 * (4 * (int64_t)T * (HD + 4) + 2 * (int64_t)T * T);
}

static int kernel_const(const char *name);

/* kernels.cuh: attn_tiled_smem, the row tiles' block for longer
 * sequences: R rows, their R rows of scores (attn_srow), a tile of ATTN_KT
 * rows */
static int64_t attn_tiled_smem(int T, int HD)
{
    const int R = T <= 256 ? 32 : T <= 1024 ? 16 : 8, srow = T % 32 == 0 ? T + 1 : T;
    return 4 * ((int64_t)R * (HD + 4) + (int64_t)R * srow + (int64_t)kernel_const("ATTN_KT") * (HD + 4));
}

/* kernels.cuh: attn_qkv16_ok, whether attention over a (sample, head) of
 * T tokens in heads of HD takes the bf16 fragment kernels in bf16
 * precision: a whole (sample, head) a block (attn_bwd_smem) and the
 * fragments' backward's shared memory (attn_frag_bwd_smem). model.cu
 * asserts the same where it relies on it (gen_op_cuda, OP_ATTENTION). */
static bool attn_qkv16_ok(int T, int HD)
{
    const int64_t TP = (T + 15) / 16 * 16, L = HD + 8, LT = TP + 8;
    return attn_bwd_smem(T, HD) <= CUDA_MAX_ATTN_SMEM && HD % 16 == 0 && T <= 128 &&
           2 * (4 * TP * L + 3 * HD * LT + 2 * TP * LT) <= CUDA_MAX_ATTN_SMEM;
}

/* kernels.cuh: attn_half_ok, whether attention over a (sample, head) of
 * T tokens in heads of HD writes its output in bf16 alone in bf16
 * precision (attn_half): a whole (sample, head) a block, on tensor cores
 * (heads a multiple of 16, attn_tc_bwd_smem). model.cu asserts the same
 * where it relies on it. */
static bool attn_half_ok(int T, int HD)
{
    const int64_t TP = (T + 15) / 16 * 16, ld = HD + 4, lds = TP + 4;
    const int64_t tc_bwd = 4 * (2 * TP * ld + TP * (lds > ld ? lds : ld) + TP * lds);
    return attn_bwd_smem(T, HD) <= CUDA_MAX_ATTN_SMEM && HD % 16 == 0 && tc_bwd <= CUDA_MAX_ATTN_SMEM;
}

/* whether the CUDA attention kernels take sequences of T tokens in heads
 * of HD: 0, or 1 with the error reported at op */
static int check_attention(mc_diag *d, const mc_op *op, int T, int HD)
{
    if (HD % 4 != 0) {
        mc_report(d, MC_ERROR, op->loc,
                  "the CUDA backend's attention takes head widths that are multiples of 4, not %d (%d / %d heads)", HD,
                  op->in.dim, op->in.dim / HD);
        mc_hint(d, "choose the width and the heads so that width / heads is a multiple of 4");
        return 1;
    }
    if (attn_bwd_smem(T, HD) > CUDA_MAX_ATTN_SMEM && attn_tiled_smem(T, HD) > CUDA_MAX_ATTN_SMEM) {
        mc_report(d, MC_ERROR, op->loc,
                  "the CUDA backend's attention keeps rows of a (sample, head)'s scores in shared memory: %d tokens "
                  "of head width %d need %lld KiB, more than the %d KiB of a Hopper SM",
                  T, HD, (long long)(attn_tiled_smem(T, HD) / 1024), CUDA_MAX_ATTN_SMEM / 1024);
        mc_hint(d, op->kind == OP_WINDOW_ATTENTION
                       ? "use smaller windows; --target cpu has no such limit"
                       : "use fewer tokens (a larger patch); --target cpu has no such limit");
        return 1;
    }
    return 0;
}

/* the width op's layer norm normalises: its own, or a merge's 4 x width; 0
 * for other ops */
static int ln_width(const mc_op *op)
{
    return op->kind == OP_LAYERNORM ? op->in.dim : op->kind == OP_DOWNSAMPLE ? 4 * op->in.dim : 0;
}

/* the shape op's attention kernels run at: T tokens (a window's for window
 * attention) in NH heads of HD; false for ops without attention */
static bool attn_shape(const mc_op *op, int *T, int *HD, int *NH)
{
    if (op->kind == OP_ATTENTION) {
        *T = tokens_of(&op->in);
        *NH = op->u.attn.heads;
    } else if (op->kind == OP_WINDOW_ATTENTION) {
        *T = op->u.wattn.window * op->u.wattn.window;
        *NH = op->u.wattn.heads;
    } else {
        return false;
    }
    *HD = op->in.dim / *NH;
    return true;
}

int mc_emit_check_cuda(const mc_model *m, mc_diag *d)
{
    int errors = 0;
    for (int i = 0; i < m->nops && !errors; i++) {
        const mc_op *op = &m->ops[i];
        int T, HD, NH;
        if (attn_shape(op, &T, &HD, &NH))
            errors += check_attention(d, op, T, HD);
        switch (op->kind) {
        case OP_DOWNSAMPLE:
            /* the merged tokens' layer norm */
            if (ln_width(op) > CUDA_MAX_LN_WIDTH) {
                mc_report(d, MC_ERROR, op->loc,
                          "the CUDA backend's layer norm takes widths up to %d, not the %d of the merged tokens",
                          CUDA_MAX_LN_WIDTH, ln_width(op));
                errors++;
            }
            break;
        case OP_MOE: {
            const mc_moe *x = &op->u.moe;
            if (x->router == ROUTER_EXPERT_CHOICE && m->parallel.expert > 1) {
                mc_report(d, MC_ERROR, op->loc,
                          "the CUDA backend does not generate router = %s() with expert parallelism yet",
                          mc_router_name(x->router));
                mc_hint(d, "one GPU, or data parallelism alone, generates it; or use a token-choice router");
                errors++;
            } else if (x->experts > CUDA_MAX_EXPERTS) {
                mc_report(d, MC_ERROR, op->loc, "the CUDA backend routes to at most %d experts, not %d",
                          CUDA_MAX_EXPERTS, x->experts);
                errors++;
            }
            break;
        }
        case OP_LAYERNORM:
            if (ln_width(op) > CUDA_MAX_LN_WIDTH) {
                mc_report(d, MC_ERROR, op->loc, "the CUDA backend's layer norm takes widths up to %d, not %d",
                          CUDA_MAX_LN_WIDTH, op->in.dim);
                errors++;
            }
            break;
        default:
            break;
        }
    }
    return errors;
}

/* ---- the plan of the device arenas beyond activations ---------------------------------- */

/* doubles: the step's sums (read by backend.cu), then per MoE layer its
 * entropy sum and the [2E] sums its router's backward reads */
enum { DACC_CE = 0, DACC_AUX = 1, DACC_NORM = 2, DACC_FIXED = 3 };

typedef struct cuda_plan {
    int64_t dacc;            /* doubles */
    int64_t stats;           /* u64: per MoE layer [E] + [ND, E] + 3 */
    int64_t red;             /* floats of reduction scratch */
    int64_t eval_batch;      /* the largest evaluation batch the arenas hold */
    int64_t *ent, *sums, *st; /* per MoE layer: offsets */
    /* the gradient arena: the values' gradients (plan_grad_rooms), then one
     * scratch region that every op's backward reuses for the gradients of
     * its insides */
    int64_t grad, scr, scr_max;
    int64_t *goff, *gsize;   /* per op: its value's gradient room (-1: none) */
    int64_t xchg;            /* the most floats a MoE layer's exchange buffer holds */
    int *galias;             /* per value: the value whose gradient buffer it shares, or -1 */
    int *groot;              /* per value: the value whose buffer its gradient finally is (galias
                              * followed to its end: grad_roots) */
    int *ln_sum;             /* per op: for a layer norm, the op whose output bias's gradient its
                              * backward sums (plan_ln_sums), or -1 */
    int *sum_by_ln;          /* per op: the layer norm i with ln_sum[i] = this op, or -1 */
    sbuf gdefs;
    /* kernels.cuh's launch constants that size the scratch (kernel_const) */
    int red_chunks;  /* RED_CHUNKS: partial sums per column */
    int ln_blocks;   /* LN_BLOCKS: layer norm backward, partial sums of dw, db */
    int aux_blocks;  /* AUX_BLOCKS: MoE auxiliary-loss partials */
    int route_block; /* ROUTE_BLOCK: routing choices per block */
    /* the values bf16 precision keeps in bf16 alone (alloc_half), and the
     * activation arena's floats in that layout */
    /* recompute = all (plan_remake): per op, the shared room its value
     * takes, as the backward makes it again before reading it (a layer
     * norm's output, the residual stream before a MoE layer), or NULL;
     * per attention op, the MoE op whose backward makes it again (its
     * input's layer norm, q, k, v, heads' outputs and output), or -1, and
     * per MoE op that attention op, or -1; per op, its forward code, which
     * those backwards repeat */
    const char **vkey;
    int *remade_by, *remake_of;
    char **fwd_text;
    struct half_room {
        char name[32];
        int64_t floats, floats16; /* in the fp32 layout, in the bf16 one */
        char what[224];
        char key[8];              /* alloc_room16's kind of shared room, or "" */
        int root;                 /* the room it shares (index in halves), or -1 */
    } *halves;
    int nhalves, halves_cap;
    int64_t act16;
    /* per op: bit t set where the backward's one writer of tensor t's
     * gradient stores it whole (the experts' w1 and w2: moe_experts_backward),
     * so that the step need not zero it first (GRAD_STORED) */
    unsigned *grad_stored;
} cuda_plan;

/* The floats of op i's value's gradient room, as gen_op_cuda asks for it
 * (op_begin's c.floats; the classifier's logits): 0 for none */
static int64_t grad_floats_of(const gen *g, int i)
{
    const mc_op *op = &g->m->ops[i];
    const mc_shape *so = &op->out;
    if (op->kind == OP_INPUT || op->kind == OP_RESIDUAL_BEGIN)
        return 0;
    if (op->kind == OP_CLASSIFIER)
        return (int64_t)g->m->train.batch * op->u.cls.classes;
    return (int64_t)g->m->train.batch * tokens_of(so) * (so->kind == SHAPE_IMAGE ? so->c * so->h * so->w : so->dim);
}

/* plan_grad_rooms' order of the rooms: by first write, latest first, then
 * by value */
typedef struct room_key {
    int first, value;
} room_key;

static int room_key_cmp(const void *pa, const void *pb)
{
    const room_key *a = pa, *b = pb;
    if (a->first != b->first)
        return a->first > b->first ? -1 : 1;
    return (a->value > b->value) - (a->value < b->value);
}

/* The values' gradient rooms, reused as their lives allow. The backward
 * runs the ops in reverse; value v's gradient is first written by the
 * backward of its last reader (the loss, for the logits) and last read by
 * the backward of v's own op. A room shared by plan_grad_alias lives from
 * the first write of any of its values to the last read. Two rooms whose
 * lives meet at an op (one op's dout, the next one's din) never overlap;
 * first fit in the order of their first writes, 256-byte aligned. As every
 * first writer overwrites (acc_flag), a reused room needs no zeroing.
 * p->grad: the floats of the region. */
static void plan_grad_rooms(const gen *g, cuda_plan *p)
{
    const mc_model *m = g->m;
    const int n = m->nops;
    int *first = mc_xcalloc((size_t)n, sizeof *first), *last = mc_xcalloc((size_t)n, sizeof *last);
    room_key *order = mc_xcalloc((size_t)n, sizeof *order);
    int nroot = 0;
    p->goff = mc_xcalloc((size_t)n, sizeof *p->goff);
    p->gsize = mc_xcalloc((size_t)n, sizeof *p->gsize);
    for (int i = 0; i < n; i++) {
        p->goff[i] = -1;
        first[i] = -1;
        last[i] = n;
    }
    /* each room's life: [last, first] in op indices (first >= last) */
    for (int v = 0; v < n; v++) {
        const int64_t floats = grad_floats_of(g, v);
        if (!floats)
            continue;
        const int r = p->groot[v];
        const int w = g->last_use[v] >= 0 ? g->last_use[v] : n; /* n: the loss */
        if (w > first[r])
            first[r] = w;
        if (v < last[r])
            last[r] = v;
        if (r == v)
            p->gsize[r] = ROOM_FLOATS(floats);
    }
    /* by first write, latest first; rooms written first by the same op in
     * value order */
    for (int r = 0; r < n; r++)
        if (p->gsize[r] > 0)
            order[nroot++] = (room_key){ first[r], r };
    qsort(order, (size_t)nroot, sizeof *order, room_key_cmp);
    p->grad = 0;
    for (int a = 0; a < nroot; a++) {
        const int r = order[a].value;
        /* the rooms placed so far that are still live at r's first write,
         * ordered by offset; r takes the lowest gap that holds it */
        int64_t off = 0;
        for (bool moved = true; moved;) {
            moved = false;
            for (int b = 0; b < a; b++) {
                const int q = order[b].value;
                if (last[q] <= first[r] && off < p->goff[q] + p->gsize[q] && p->goff[q] < off + p->gsize[r]) {
                    off = p->goff[q] + p->gsize[q];
                    moved = true;
                }
            }
        }
        p->goff[r] = off;
        if (off + p->gsize[r] > p->grad)
            p->grad = off + p->gsize[r];
    }
    free(first);
    free(last);
    free(order);
}

/* NAME_G: the gradient of an op's inside buffer NAME, a place in the op's
 * scratch (dead once the op's backward is done) */
static void grad_scratch(cuda_plan *p, const char *name, int64_t floats)
{
    sb_printf(&p->gdefs, "#define %-16s (GSCRATCH + %lldL)\n", name, (long long)p->scr);
    p->scr += ROOM_FLOATS(floats);
    if (p->scr > p->scr_max)
        p->scr_max = p->scr;
}

/* V<i>_G: the gradient of op i's value, in the room plan_grad_rooms gave it */
static void grad_value(cuda_plan *p, int i, int64_t floats)
{
    if (p->goff[i] < 0 || floats > p->gsize[i]) {
        fprintf(stderr, "moecc: internal error: op %d's gradient (%lld floats) has no room planned\n", i,
                (long long)floats);
        abort();
    }
    char name[32];
    snprintf(name, sizeof name, "V%d_G", i);
    sb_printf(&p->gdefs, "#define %-16s %12lldL\n", name, (long long)p->goff[i]);
}

/* The forward's residual adds folded into the ops that make the branch's
 * output: attention, window attention and a dense MLP (their last
 * product: cuBLASLt adds the skip as its C) and a MoE layer (its combine
 * adds it), when the residual end is the only reader of that output,
 * which is then never made: the op writes the block's output, and the
 * add's pass over three values is gone (g->fuse_into). */
static void plan_fused_adds(gen *g, const int *galias)
{
    const mc_model *m = g->m;
    free(g->fuse_into);
    g->fuse_into = mc_xcalloc((size_t)m->nops, sizeof *g->fuse_into);
    for (int i = 0; i < m->nops; i++)
        g->fuse_into[i] = -1;
    for (int i = 0; i < m->nops; i++) {
        const int x = g->input[i];
        if (m->ops[i].kind != OP_RESIDUAL_END || x < 0 || galias[x] != i || g->skip[i] < 0)
            continue;
        const mc_op_kind kind = m->ops[x].kind;
        if (kind == OP_ATTENTION || kind == OP_WINDOW_ATTENTION || kind == OP_MLP || kind == OP_MOE)
            g->fuse_into[x] = i;
    }
}

/* Residual gradients that share a buffer instead of being copied. At the
 * end o = s + x of a residual block, dL/dx and dL/ds both start as dL/do,
 * which the backward would copy twice (grad_pass: a pass over the block's
 * output each). Instead:
 *   - x's gradient is o's buffer when the end is x's only reader: that
 *     buffer holds dL/do before the branch's backward starts, and nothing
 *     else writes it until the branch's ops have read it;
 *   - s's gradient is o's buffer too when, besides the end, s has one
 *     reader j, the branch's first op, with the rest of the branch after
 *     it and no residual end inside: j's backward, the branch's last,
 *     adds its part to dL/do there once every reader of dL/dx is done.
 * galias[v]: the value whose buffer v's gradient is (its define names
 * that one's), or -1. */
static void plan_grad_alias(const gen *g, int *galias)
{
    const mc_model *m = g->m;
    const int *readers = g->uses; /* plan_values */
    for (int i = 0; i < m->nops; i++)
        galias[i] = -1;
    for (int i = 0; i < m->nops; i++) {
        const int s = g->skip[i], x = g->input[i];
        if (m->ops[i].kind != OP_RESIDUAL_END || x < 0 || x == s || readers[x] != 1)
            continue;
        galias[x] = i;
        if (s < 0 || readers[s] != 2 || g->last_use[s] != i)
            continue;
        /* s's other reader: as s's last reader is i, which reads it as its skip */
        const int j = g->last_reader[s];
        bool nested = false;
        for (int q = j + 1; q < i; q++)
            nested = nested || m->ops[q].kind == OP_RESIDUAL_END;
        if (j >= 0 && j < x && !nested)
            galias[s] = i;
    }
}

/* the parameter offset of the bias of op i's last product, whose gradient
 * is the column sums of its output's gradient (attention's output
 * projection, a dense MLP's second product), or -1 */
static int64_t out_bias_off(const gen *g, int i)
{
    const mc_op *op = &g->m->ops[i];
    if (op->kind == OP_ATTENTION)
        return toff(g, i, op->u.attn.qkv_bias ? 3 : 2);
    if (op->kind == OP_MLP)
        return toff(g, i, 3);
    return -1;
}

/* groot[v]: the value whose buffer v's gradient finally is, galias
 * followed to its end (an alias is always a later op's) */
static void grad_roots(const gen *g, const int *galias, int *groot)
{
    for (int v = g->m->nops - 1; v >= 0; v--)
        groot[v] = galias[v] > v ? groot[galias[v]] : v;
}

/* Output biases whose gradient a layer norm's backward sums. Op j's
 * output bias gradient is the column sums of dL/d(its output), which its
 * backward read again after the op before it in the backward had written
 * them (P: 68 MB a layer). When that op is a layer norm reading j's output
 * (through the residual ends between them, whose gradients all share one
 * buffer: nothing between them writes it), the layer norm's backward sums
 * the values as it writes them (layernorm_backward's dsum), and j's
 * backward skips the sums. ln_sum[i] = j for such a layer norm i. */
static void plan_ln_sums(const gen *g, const int *galias, const int *groot, int *ln_sum, int *sum_by_ln)
{
    const mc_model *m = g->m;
    for (int i = 0; i < m->nops; i++)
        ln_sum[i] = sum_by_ln[i] = -1;
    for (int j = 0; j < m->nops; j++) {
        if (out_bias_off(g, j) < 0)
            continue;
        int i = j + 1;
        while (i < m->nops &&
               (m->ops[i].kind == OP_RESIDUAL_BEGIN ||
                (m->ops[i].kind == OP_RESIDUAL_END && g->input[i] >= 0 && galias[g->input[i]] == i &&
                 g->skip[i] >= 0 && galias[g->skip[i]] == i)))
            i++;
        if (i < m->nops && m->ops[i].kind == OP_LAYERNORM && g->input[i] >= 0 && groot[g->input[i]] == groot[j]) {
            ln_sum[i] = j;
            sum_by_ln[j] = i;
        }
    }
}

/* whether a layer norm's backward sums op j's output bias's gradient */
static bool bias_summed_by_ln(const cuda_plan *p, int j)
{
    return p->sum_by_ln[j] >= 0;
}

/* NAME_G: the gradient of an op's inside buffer NAME, in the scratch */
static void grad_inside(cuda_plan *p, const char *name, int64_t floats)
{
    char gname[48];
    snprintf(gname, sizeof gname, "%s_G", name);
    grad_scratch(p, gname, floats);
}

/* whether an op of kind after op i exists: the last op of a kind keeps
 * its shared rooms (recompute) as its forward left them */
static bool later_op(const mc_model *m, int i, mc_op_kind kind)
{
    for (int q = i + 1; q < m->nops; q++)
        if (m->ops[q].kind == kind)
            return true;
    return false;
}

/* whether attention op op keeps q, k, v and its heads' outputs in bf16
 * rooms (the fragment kernels: attn_qkv16_ok, attn_half_ok), which
 * recompute = all shares */
static bool attn_bf16_rooms(const mc_op *op)
{
    int T, HD, NH;
    return op->kind == OP_ATTENTION && attn_shape(op, &T, &HD, &NH) && attn_qkv16_ok(T, HD) && attn_half_ok(T, HD);
}

/* whether op j's backward makes its insides again before its last
 * product's backward (recompute = all, but for the last layer of its
 * kind, whose shared rooms still hold them): gen_op_cuda emits that code
 * where this says so, and it may round operands into the operand
 * scratch */
static bool recomputes_in_backward(const mc_model *m, int j)
{
    const mc_op *op = &m->ops[j];
    if (m->train.recompute != RECOMPUTE_ALL)
        return false;
    if (op->kind == OP_MLP)
        return later_op(m, j, OP_MLP);
    if (op->kind != OP_ATTENTION || !attn_bf16_rooms(op))
        return false;
    for (int q = j + 1; q < m->nops; q++)
        if (attn_bf16_rooms(&m->ops[q]))
            return true;
    return false;
}

/* whether op j's output product takes its output gradient's bf16 copy
 * from the layer norm's backward that sums its bias (layernorm_backward's
 * copy16, linear_backward's dout_kept): the copy waits at the start of
 * the operand scratch, which nothing between them may use */
static bool dout_kept(const gen *g, const cuda_plan *p, int j)
{
    return bias_summed_by_ln(p, j) && !recomputes_in_backward(g->m, j);
}

/* the reads of value v, as an op's input or as a residual's skip; *user
 * (or NULL): the last op that takes it as its input, or -1 (plan_values
 * counted them) */
static int value_uses(const gen *g, int v, int *user)
{
    if (user)
        *user = g->last_reader[v];
    return g->uses[v];
}

/* whether op u's backward makes its insides again from its input, which
 * it reads (recompute): attention on the fragment kernels, window
 * attention, a dense MLP, and a MoE layer on one GPU's experts, but for
 * the last of their kind */
static bool remakes_from_input(const gen *g, int u)
{
    const mc_model *m = g->m;
    switch (m->ops[u].kind) {
    case OP_ATTENTION:
    case OP_MLP: return recomputes_in_backward(m, u);
    case OP_WINDOW_ATTENTION: return m->train.recompute == RECOMPUTE_ALL && later_op(m, u, OP_WINDOW_ATTENTION);
    case OP_MOE:
        return m->train.recompute != RECOMPUTE_NONE && m->parallel.expert == 1 && later_op(m, u, OP_MOE);
    default: return false;
    }
}

/* recompute = all: the room kind of layer norm l's output when the op
 * right after it alone reads it, and that op makes its insides again
 * from it: attention on the fragment kernels ("LNA"; bf16 in bf16
 * precision, ln_feeds_product), a MoE layer on one GPU ("LNM"; fp32, as
 * the router reads it), window attention ("LNW") or a dense MLP ("LNF";
 * both bf16 or fp32 as ln_feeds_product says: a room takes the larger);
 * else NULL */
static const char *ln_room_kind(const gen *g, int l)
{
    const mc_model *m = g->m;
    if (m->train.recompute != RECOMPUTE_ALL || m->ops[l].kind != OP_LAYERNORM || l + 1 >= m->nops ||
        g->input[l + 1] != l || value_uses(g, l, NULL) != 1)
        return NULL;
    const mc_op *u = &m->ops[l + 1];
    if (u->kind == OP_ATTENTION && attn_bf16_rooms(u))
        return "LNA";
    if (u->kind == OP_MOE && m->parallel.expert == 1)
        return "LNM";
    if (u->kind == OP_WINDOW_ATTENTION)
        return "LNW";
    if (u->kind == OP_MLP)
        return "LNF";
    return NULL;
}

/* Layer norms' outputs and the residual stream before a MoE layer,
 * made again in the backward (recompute = all), so that one room holds
 * every layer's:
 * - a layer norm's output whose reader (ln_room_kind) makes its insides
 *   again: that backward first runs the norm's forward again, from its
 *   input, kept (the same bits: the same kernel on the same values). The
 *   last such norm of each kind keeps its room as its forward left it,
 *   as its reader does not make anything again, and no later layer
 *   writes the room before that reader's backward.
 * - in a block `norm, attention or window attention (its output product
 *   adding the block's input: plan_fused_adds), norm, MoE or dense MLP',
 *   the stream value between the two halves, which the second norm
 *   alone reads (its backward too): the second half's backward runs the
 *   first half's forward again (the norm, the attention's insides, the
 *   output product with the add) and then the second norm's, and the
 *   attention's backward makes nothing again (remade_by). Again the last
 *   such block keeps its room.
 * The rooms' kinds and the rule that the last keeps its room are
 * alloc_room16's. */
static void plan_remake(const gen *g, cuda_plan *p)
{
    const mc_model *m = g->m;
    const int n = m->nops;
    p->vkey = mc_xcalloc((size_t)n, sizeof *p->vkey);
    p->remade_by = mc_xcalloc((size_t)n, sizeof *p->remade_by);
    p->remake_of = mc_xcalloc((size_t)n, sizeof *p->remake_of);
    p->fwd_text = mc_xcalloc((size_t)n, sizeof *p->fwd_text);
    for (int i = 0; i < n; i++)
        p->remade_by[i] = p->remake_of[i] = -1;
    /* the norms: each whose reader makes its insides again, and the last of each kind */
    for (int l = n - 1; l >= 0; l--) {
        const char *kind = ln_room_kind(g, l);
        if (!kind)
            continue;
        bool last = true;
        for (int q = l + 1; q < n && last; q++)
            if (p->vkey[q] && strcmp(p->vkey[q], kind) == 0)
                last = false;
        if (last || remakes_from_input(g, l + 1))
            p->vkey[l] = kind;
    }
    /* the blocks' stream values, first to last: the last (its second
     * half makes nothing again) joins the room of those before it. A
     * block's first half is attention or window attention, its second a
     * MoE layer (room "RESM") or a dense MLP ("RESF") */
    for (int u = 1; u < n; u++) {
        const mc_op_kind ku = m->ops[u].kind;
        if (ku != OP_MOE && ku != OP_MLP)
            continue;
        const int l2 = u - 1, r = g->input[l2], a = r - 1, l1 = a - 1; /* r < 2: no such block */
        const char *k2 = ku == OP_MOE ? "LNM" : "LNF";
        if (!p->vkey[l2] || strcmp(p->vkey[l2], k2) != 0 || g->input[u] != l2 || r < 2 ||
            m->ops[r].kind != OP_RESIDUAL_END || g->fuse_into[a] != r || !p->vkey[l1] || g->input[a] != l1 ||
            g->fuse_into[u] < 0 || g->skip[g->fuse_into[u]] != r || value_uses(g, r, NULL) != 2)
            continue;
        if (!(m->ops[a].kind == OP_ATTENTION && strcmp(p->vkey[l1], "LNA") == 0) &&
            !(m->ops[a].kind == OP_WINDOW_ATTENTION && strcmp(p->vkey[l1], "LNW") == 0))
            continue;
        const char *room = ku == OP_MOE ? "RESM" : "RESF";
        if (remakes_from_input(g, u) && remakes_from_input(g, a)) {
            p->remade_by[a] = u;
            p->remake_of[u] = a;
            p->vkey[r] = room;
        } else if (!later_op(m, u, ku)) {
            p->vkey[r] = room;
        }
    }
    /* the stem's values that no backward reads (a patch embedding's or a
     * class token's output read by a class token or positions' add, whose
     * backwards take the gradient alone): the same two rooms, which hold
     * nothing yet; one after the other alternate, as each op reads the
     * one before while it writes its own */
    if (m->train.recompute != RECOMPUTE_ALL)
        return;
    bool alt = false;
    for (int v = 0; v < n; v++) {
        const mc_op_kind kv = m->ops[v].kind;
        if ((kv != OP_PATCH_EMBED && kv != OP_CLS_TOKEN && kv != OP_POS_EMBED) || g->fuse_into[v] >= 0 || p->vkey[v])
            continue;
        int user;
        if (value_uses(g, v, &user) == 1 && user >= 0 &&
            (m->ops[user].kind == OP_CLS_TOKEN || m->ops[user].kind == OP_POS_EMBED)) {
            p->vkey[v] = alt ? "LNM" : "RESM";
            alt = !alt;
        }
    }
}

/* text, each line indented by pad more */
static void put_indented(sbuf *b, const char *text, const char *pad)
{
    for (const char *q = text; q && *q;) {
        const char *e = strchr(q, '\n');
        const int len = e ? (int)(e - q) : (int)strlen(q);
        sb_printf(b, "%s%.*s\n", len ? pad : "", len, q);
        q = e ? e + 1 : q + len;
    }
}

/* op i's backward, before it makes its insides again: its input's layer
 * norm's output again, where that shares a room (plan_remake); pad: the
 * backward's indent past the function body's */
static void remake_input_norm(const gen *g, const cuda_plan *p, int i, sbuf *b, const char *pad)
{
    const int l = g->input[i];
    if (l < 0 || !p->vkey[l] || g->m->ops[l].kind != OP_LAYERNORM)
        return;
    sb_printf(b, "%s    /* recompute = all: the layer norm's output, this layer's input, again (plan_remake) */\n", pad);
    put_indented(b, p->fwd_text[l], pad);
}

/* op u's backward (plan_remake's remake_of[u] = a): its block's first
 * half again (the norm, op a with its residual add) and then u's input,
 * the second norm's output */
static void remake_block_half(const gen *g, const cuda_plan *p, int u, sbuf *b, const char *pad)
{
    const int a = p->remake_of[u];
    sb_printf(b, "%s    /* recompute = all: the block's first half again, and this layer's input\n"
                 "%s     * (plan_remake) */\n", pad, pad);
    put_indented(b, p->fwd_text[g->input[a]], pad);
    put_indented(b, p->fwd_text[a], pad);
    put_indented(b, p->fwd_text[g->input[u]], pad);
}

/* A buffer whose room in bf16 precision is floats16 floats, not floats:
 * such buffers lie after every other one (place_halves), so that the
 * others keep one offset in both layouts; each of them has two,
 * LAY16(fp32 layout, bf16 layout), which model.cu picks by d->lay16.
 * key (recompute; NULL: none): one room for every buffer of that kind,
 * the largest's size, as the backward makes each layer's again before
 * reading them. */
static void alloc_room16(cuda_plan *p, const char *name, int64_t floats, int64_t floats16, const char *what,
                         const char *key)
{
    int root = -1;
    for (int j = 0; key && j < p->nhalves && root < 0; j++)
        if (p->halves[j].root < 0 && strcmp(p->halves[j].key, key) == 0)
            root = j;
    if (p->nhalves == p->halves_cap) {
        p->halves_cap = p->halves_cap ? 2 * p->halves_cap : 64;
        p->halves = mc_xrealloc(p->halves, (size_t)p->halves_cap * sizeof *p->halves);
    }
    struct half_room *h = &p->halves[p->nhalves++];
    snprintf(h->name, sizeof h->name, "%s", name);
    h->floats = floats;
    h->floats16 = floats16;
    snprintf(h->what, sizeof h->what, "%s", what);
    snprintf(h->key, sizeof h->key, "%s", key ? key : "");
    h->root = root;
    if (root < 0)
        return;
    struct half_room *r = &p->halves[root];
    if (h->floats > r->floats)
        r->floats = h->floats;
    if (h->floats16 > r->floats16)
        r->floats16 = h->floats16;
}

/* alloc_act's buffer, or with key (recompute; NULL: none) one in a room
 * shared by its kind (alloc_room16): fp32, as large in both layouts, which
 * products may take as an operand (g->max_act sizes their scratch) */
static void alloc_act_in(gen *g, cuda_plan *p, const char *name, int64_t floats, const char *what, const char *key)
{
    if (!key) {
        alloc_act(g, name, floats, what);
        return;
    }
    alloc_room16(p, name, floats, floats, what, key);
    if (floats > g->max_act)
        g->max_act = floats;
}

/* an inside buffer of the op (alloc_act_in's), and its gradient in the
 * scratch */
static void alloc_inside_in(gen *g, cuda_plan *p, const char *name, int64_t floats, const char *what, const char *key)
{
    alloc_act_in(g, p, name, floats, what, key);
    grad_inside(p, name, floats);
}

/* an inside buffer of the op, and its gradient in the scratch */
static void alloc_inside(gen *g, cuda_plan *p, const char *name, int64_t floats, const char *what)
{
    alloc_inside_in(g, p, name, floats, what, NULL);
}

/* A buffer whose producer, in bf16 precision, writes bf16 values alone,
 * into the first half of its room (the experts' inputs, hidden values and
 * activations: moe_x16, moe_h16, moe_a16; a dense MLP's activations; a
 * layer norm's output that feeds a product: ln_feeds_product; attention's
 * qkv on bf16 fragments: attn_qkv16, and its heads' outputs: attn_half),
 * and whose readers take them there: in that precision the arena gives it
 * half the room. key: as alloc_room16's. */
static void alloc_half(cuda_plan *p, const char *name, int64_t floats, const char *what, const char *key)
{
    char w[224]; /* what: an op_ctx's, 160 bytes at most */
    snprintf(w, sizeof w, "%.190s; bf16 alone in bf16 precision", what);
    alloc_room16(p, name, floats, (floats + 1) / 2, w, key);
}

/* an inside buffer of the op as alloc_half's, and its gradient (fp32) in
 * the scratch */
static void alloc_inside_half(cuda_plan *p, const char *name, int64_t floats, const char *what, const char *key)
{
    alloc_half(p, name, floats, what, key);
    grad_inside(p, name, floats);
}

/* alloc_room16's buffers at the end of the arena, in both layouts: each
 * 256-byte aligned, as alloc_act's; p->act16: the arena in bf16 precision */
static void place_halves(gen *g, cuda_plan *p)
{
    int64_t off = g->act_floats, off16 = g->act_floats;
    for (int j = 0; j < p->nhalves; j++) {
        const struct half_room *h = &p->halves[j];
        if (h->root >= 0) {
            sb_printf(&g->defs, "#define %-16s %s /* %s; the room of %s: recompute */\n", h->name,
                      p->halves[h->root].name, h->what, p->halves[h->root].name);
            continue;
        }
        sb_printf(&g->defs, "#define %-16s LAY16(%lldL, %lldL) /* %s */\n", h->name, (long long)off, (long long)off16,
                  h->what);
        off += ROOM_FLOATS(h->floats);
        off16 += ROOM_FLOATS(h->floats16);
    }
    g->act_floats = off;
    p->act16 = off16;
}

static void need_red(cuda_plan *p, int64_t floats)
{
    if (floats > p->red)
        p->red = floats;
}

/* A constant of a CUDA template that sizes the arenas (kernels.cuh's
 * launch constants, backend.cu's cuBLAS workspace), read from the template
 * itself (its `#define NAME value' lines) so that it has one home;
 * emit_model_cu reads each once into the plan. */
static int template_const(const char *tmpl, const char *name)
{
    const char *text = mc_template_get(tmpl);
    const size_t n = strlen(name);
    for (const char *q = text ? strstr(text, "#define ") : NULL; q; q = strstr(q + 1, "#define ")) {
        if (strncmp(q + 8, name, n) == 0 && q[8 + n] == ' ')
            return atoi(q + 8 + n);
    }
    fprintf(stderr, "moecc: internal error: %s does not define %s\n", tmpl, name);
    abort();
}

static int kernel_const(const char *name)
{
    return template_const("cuda/kernels.cuh", name);
}


/* Whether a layer norm's output (value v) feeds a product alone: its only
 * use is as the input of an attention, local window attention or MLP op,
 * whose first linear layer takes it (its forward and its weight gradient)
 * and nothing else. Then, in bf16 precision, the norm writes it in bf16
 * into the first half of its room (bf16_half), and the product reads it
 * there instead of rounding it twice a step. */
static bool ln_feeds_product(const gen *g, int v)
{
    const mc_model *m = g->m;
    if (v < 0 || m->ops[v].kind != OP_LAYERNORM)
        return false;
    int user;
    if (value_uses(g, v, &user) != 1 || user < 0)
        return false;
    const mc_op *op = &m->ops[user];
    return op->kind == OP_ATTENTION || op->kind == OP_MLP ||
           (op->kind == OP_WINDOW_ATTENTION && !op->u.wattn.global_query);
}

/* op i's input as its first product's operand: "mm_half(k, A(V3))" where
 * the layer norm before it writes bf16 (ln_feeds_product), else the input */
static void product_input(const gen *g, int i, const char *in, char *buf, size_t n)
{
    if (ln_feeds_product(g, g->input[i]))
        snprintf(buf, n, "mm_half(k, %s)", in);
    else
        snprintf(buf, n, "%s", in);
}

/* Window attention (local, or GCViT's global form) as emit.c's
 * gen_window_attention lays it out, with the CUDA kernels: the windows are
 * B * nW sequences of WS * WS tokens for attention_forward. */
static void gen_window_attention_cuda(gen *g, cuda_plan *p, int i, const op_ctx *c, const char *out, const char *res,
                                      sbuf *b)
{
    sbuf *f = &g->fwd;
    const int64_t BATCH = g->m->train.batch;
    const int T = c->T, D = c->D;
    wattn_plan w;
    wattn_plan_init(g, i, &w, "nullptr");
    const int GH = w.GH, GW = w.GW, WS = w.WS, NW = w.NW, WT = w.WT, NH = w.NH, HD = w.HD;
    /* recompute = all: every window attention layer's insides share one
     * room per kind, and the backward makes them again (all but the output
     * product, from the layer's input, kept); the last layer's are still
     * there */
    const bool ra = g->m->train.recompute == RECOMPUTE_ALL;
    alloc_inside_in(g, p, w.kv, BATCH * T * w.proj,
                    w.gq ? "keys, values (grid order)" : "queries, keys, values (grid order)", ra ? "WKV" : NULL);
    alloc_inside_in(g, p, w.qkvw, BATCH * T * 3 * D, "queries, keys, values (window order)", ra ? "WQKV" : NULL);
    alloc_act_in(g, p, w.att, BATCH * NW * NH * WT * WT, "attention weights", ra ? "WATT" : NULL);
    alloc_inside_in(g, p, w.yw, BATCH * T * D, "heads' outputs (window order)", ra ? "WYW" : NULL);
    alloc_inside_in(g, p, w.y, BATCH * T * D, "heads' outputs (grid order)", ra ? "WY" : NULL);
    need_red(p, (int64_t)p->red_chunks * 3 * D);

    char pin[48];
    product_input(g, i, c->in, pin, sizeof pin);
    sbuf fw = { 0 }; /* the forward up to the output product */
    sb_printf(&fw, "    linear_forward(k, A(%s), %s, P(%lldL), %s, B * %d, %d, %d);\n", w.kv, pin, w.w_in, w.bi, T, D,
              w.proj);
    if (w.gq) {
        alloc_inside_in(g, p, w.gt, BATCH * WT * D, "global tokens (the grid pooled to a window)", ra ? "WGT" : NULL);
        alloc_inside_in(g, p, w.q, BATCH * WT * D, "global queries", ra ? "WQ" : NULL);
        sb_printf(&fw, "    grid_pool_forward(k, A(%s), %s, B, %d, %d, %d, %d);\n", w.gt, c->in, GH, GW, WS, D);
        sb_printf(&fw, "    linear_forward(k, A(%s), A(%s), P(%lldL), P(%lldL), B * %d, %d, %d);\n", w.q, w.gt, w.w_gq,
                  w.b_gq, WT, D, D);
        sb_printf(&fw, "    global_window_qkv(k, A(%s), A(%s), A(%s), B, %d, %d, %d, %d);\n", w.qkvw, w.q, w.kv, GH,
                  GW, WS, D);
    } else {
        sb_printf(&fw, "    window_permute(k, A(%s), A(%s), B, %d, %d, %d, %d, 1, 0);\n", w.qkvw, w.kv, GH, GW, WS,
                  3 * D);
    }
    sb_printf(&fw, "    attention_forward<%d, %d, %d>(k, A(%s), A(%s), A(%s), B * %d);\n", WT, HD, NH, w.yw, w.att,
              w.qkvw, NW);
    sb_printf(&fw, "    window_permute(k, A(%s), A(%s), B, %d, %d, %d, %d, 0, 0);\n", w.y, w.yw, GH, GW, WS, D);
    sb_printf(f, "%s", fw.s);
    sb_printf(f, "    linear_forward(k, %s, A(%s), P(%lldL), P(%lldL), B * %d, %d, %d%s);\n", out, w.y, w.w_p, w.b_p,
              T, D, D, res);
    if (p->remade_by[i] >= 0) {
        sb_printf(b, "    /* recompute = all: op %d's backward made this layer's insides again (plan_remake) */\n",
                  p->remade_by[i]);
    } else if (ra && later_op(g->m, i, OP_WINDOW_ATTENTION)) {
        remake_input_norm(g, p, i, b, "");
        sb_printf(b, "    /* recompute = all: this layer's insides again (later layers wrote their shared rooms) */\n%s",
                  fw.s);
    }
    sb_free(&fw);

    sb_printf(b, "    linear_backward(k, G(%s), DP(%lldL), DP(%lldL), %s, A(%s), P(%lldL), B * %d, %d, %d, 0);\n", w.y,
              w.w_p, w.b_p, c->dout, w.y, w.w_p, T, D, D);
    sb_printf(b, "    window_permute(k, G(%s), G(%s), B, %d, %d, %d, %d, 1, 0);\n", w.yw, w.y, GH, GW, WS, D);
    sb_printf(b, "    attention_backward<%d, %d, %d>(k, G(%s), G(%s), A(%s), A(%s), B * %d);\n", WT, HD, NH, w.qkvw,
              w.yw, w.qkvw, w.att, NW);
    if (w.gq) {
        sb_printf(b, "    global_window_qkv_backward(k, G(%s), G(%s), G(%s), B, %d, %d, %d, %d);\n", w.q, w.kv, w.qkvw,
                  GH, GW, WS, D);
        sb_printf(b,
                  "    linear_backward(k, G(%s), DP(%lldL), DP(%lldL), G(%s), A(%s), P(%lldL), B * %d, %d, %d, 0);\n",
                  w.gt, w.w_gq, w.b_gq, w.q, w.gt, w.w_gq, WT, D, D);
    } else {
        sb_printf(b, "    window_permute(k, G(%s), G(%s), B, %d, %d, %d, %d, 0, 0);\n", w.kv, w.qkvw, GH, GW, WS,
                  3 * D);
    }
    sb_printf(b, "    linear_backward(k, %s, DP(%lldL), %s, G(%s), %s, P(%lldL), B * %d, %d, %d, %d);\n", c->din,
              w.w_in, w.dbi, w.kv, pin, w.w_in, T, D, w.proj, c->acc);
    if (w.gq) /* the queries' share of the input's gradient, added */
        sb_printf(b, "    grid_pool_backward(k, %s, G(%s), B, %d, %d, %d, %d, 1);\n", c->din, w.gt, GH, GW, WS, D);
}

/* The code of op i: forward into g->fwd, backward into g->bwd[i]. */
static void gen_op_cuda(gen *g, cuda_plan *p, int i)
{
    const mc_model *m = g->m;
    const mc_op *op = &m->ops[i];
    sbuf *f = &g->fwd;
    sbuf b = { 0 };
    op_ctx c;
    p->scr = 0;
    if (!op_begin(g, i, &c, &b))
        return;
    const char *in = c.in, *din = c.din, *out = c.out, *dout = c.dout, *name = c.name;
    /* an op that makes its residual block's output (plan_fused_adds):
     * writes that value, adding res, the block's skip */
    char fout[32], res[48] = "";
    const int into = g->fuse_into[i];
    if (into >= 0) {
        char skip[32];
        val_ref(fout, sizeof fout, into, false);
        val_ref(skip, sizeof skip, g->skip[into], false);
        snprintf(res, sizeof res, ", %s", skip);
        out = fout;
    }
    /* a value in a room recompute = all shares (plan_remake; a layer
     * norm's bf16 one: alloc_half, below) */
    if (p->vkey[i] && !ln_feeds_product(g, i))
        alloc_act_in(g, p, name, c.floats, c.what, p->vkey[i]);
    const mc_shape *si = &op->in, *so = &op->out;
    const int T = c.T, D = c.D, acc = c.acc;
    const int64_t BATCH = m->train.batch;
    char gname[48];
    snprintf(gname, sizeof gname, "V%d_G", i);
    if (c.floats && p->galias[i] >= 0)
        sb_printf(&p->gdefs, "#define %-16s V%d_G /* shared: plan_grad_alias */\n", gname, p->galias[i]);
    else if (c.floats)
        grad_value(p, i, c.floats);
    const int64_t n_tok = (int64_t)T * D; /* values per sample */

    switch (op->kind) {
    case OP_PATCH_EMBED: {
        const int P = op->u.patch.patch, CPP = si->c * P * P, TT = so->tokens;
        char cols[32];
        snprintf(cols, sizeof cols, "COLS%d", i);
        alloc_act(g, cols, BATCH * TT * CPP, "patches (im2col)");
        need_red(p, (int64_t)p->red_chunks * so->dim);
        sb_printf(f, "    patch_embed_forward<%d, %d, %d, %d, %d>(k, %s, A(%s), %s, P(%lldL), P(%lldL), B);\n", si->c,
                  si->h, si->w, P, so->dim, out, cols, in, (long long)toff(g, i, 0), (long long)toff(g, i, 1));
        sb_printf(&b, "    patch_embed_backward<%d, %d, %d, %d, %d>(k, DP(%lldL), DP(%lldL), %s, A(%s), B);\n", si->c,
                  si->h, si->w, P, so->dim, (long long)toff(g, i, 0), (long long)toff(g, i, 1), dout, cols);
        if (g->input[i] >= 0) { /* the image a convolution stem made has a gradient */
            char gcols[48];
            snprintf(gcols, sizeof gcols, "%s_G", cols);
            grad_scratch(p, gcols, BATCH * TT * CPP);
            sb_printf(&b, "    patch_embed_input_backward(k, %s, G(%s), %s, P(%lldL), B, %d, %d, %d, %d, %d, %d);\n", din,
                      cols, dout, (long long)toff(g, i, 0), si->c, si->h, si->w, P, so->dim, acc);
        }
        break;
    }
    case OP_CONV_STEM: {
        /* each convolution: im2col rows (channels-last between the layers),
         * one product, the bias and GELU in one pass (h kept without the
         * bias, as the MLPs'); the last layer's output turned channels-first */
        const int K = op->u.conv.kernel, L = op->u.conv.layers, OH = so->h, OW = so->w, C = so->c;
        const int64_t rows = BATCH * OH * OW;
        need_red(p, (int64_t)p->red_chunks * C);
        for (int l = 0; l < L; l++) {
            char cols[32], pre[32], post[32], prev[40];
            const int cin = l == 0 ? si->c : C;
            snprintf(cols, sizeof cols, "COLS%d_%d", i, l + 1);
            snprintf(pre, sizeof pre, "CONV%d_%d", i, l + 1);
            snprintf(post, sizeof post, "GELU%d_%d", i, l + 1);
            snprintf(prev, sizeof prev, "A(GELU%d_%d)", i, l);
            alloc_inside(g, p, cols, rows * cin * K * K, "convolution inputs (im2col)");
            alloc_inside(g, p, pre, rows * C, "convolution outputs, channels last, then the GELU's derivative");
            alloc_inside(g, p, post, rows * C, "after the bias and GELU, channels last");
            if (l == 0)
                sb_printf(f, "    conv_im2col(k, A(%s), %s, B, %d, %d, %d, %d, %d, %d, 0);\n", cols, in, cin, si->h,
                          si->w, K, op->u.conv.stride, K / 2);
            else
                sb_printf(f, "    conv_im2col(k, A(%s), %s, B, %d, %d, %d, %d, 1, %d, 1);\n", cols, prev, cin, OH, OW,
                          K, K / 2);
            sb_printf(f, "    linear_forward(k, A(%s), A(%s), P(%lldL), nullptr, B * %d, %d, %d);\n", pre, cols,
                      (long long)toff(g, i, 2 * l), OH * OW, cin * K * K, C);
            sb_printf(f, "    bias_act<ACT_GELU>(k, A(%s), A(%s), P(%lldL), (int64_t)B * %d, %d, 1, nullptr, true);\n",
                      post, pre, (long long)toff(g, i, 2 * l + 1), OH * OW, C);
        }
        sb_printf(f, "    transpose_rc(k, %s, A(GELU%d_%d), B, %d, %d, 0);\n", out, i, L, OH * OW, C);
        sb_printf(&b, "    transpose_rc(k, G(GELU%d_%d), %s, B, %d, %d, 0);\n", i, L, dout, C, OH * OW);
        for (int l = L - 1; l >= 0; l--) {
            const int cin = l == 0 ? si->c : C;
            const bool dinput = l > 0 || g->input[i] >= 0;
            sb_printf(&b,
                      "    act_bias_backward(k, G(CONV%d_%d), nullptr, DP(%lldL), G(GELU%d_%d), A(CONV%d_%d), B * %d, "
                      "%d);\n",
                      i, l + 1, (long long)toff(g, i, 2 * l + 1), i, l + 1, i, l + 1, OH * OW, C);
            char dcols[40];
            snprintf(dcols, sizeof dcols, dinput ? "G(COLS%d_%d)" : "nullptr", i, l + 1);
            sb_printf(&b,
                      "    linear_backward(k, %s, DP(%lldL), nullptr, G(CONV%d_%d), A(COLS%d_%d), P(%lldL), B * %d, %d, "
                      "%d, 0);\n",
                      dcols, (long long)toff(g, i, 2 * l), i, l + 1, i, l + 1, (long long)toff(g, i, 2 * l), OH * OW,
                      cin * K * K, C);
            if (l > 0)
                sb_printf(&b, "    conv_col2im(k, G(GELU%d_%d), G(COLS%d_%d), B, %d, %d, %d, %d, 1, %d, 1, 0);\n", i, l,
                          i, l + 1, cin, OH, OW, K, K / 2);
            else if (dinput)
                sb_printf(&b, "    conv_col2im(k, %s, G(COLS%d_1), B, %d, %d, %d, %d, %d, %d, 0, %d);\n", din, i, cin,
                          si->h, si->w, K, op->u.conv.stride, K / 2, acc);
        }
        break;
    }
    case OP_DOWNSAMPLE: {
        const int GH = si->gh, GW = si->gw, T4 = so->tokens, D4 = 4 * D;
        char mrg[32], nrm[32], mean[32], rstd[32];
        snprintf(mrg, sizeof mrg, "MERGE%d", i);
        snprintf(nrm, sizeof nrm, "MNORM%d", i);
        snprintf(mean, sizeof mean, "MEAN%d", i);
        snprintf(rstd, sizeof rstd, "RSTD%d", i);
        alloc_inside(g, p, mrg, BATCH * T4 * D4, "2x2 neighbourhoods, concatenated");
        alloc_inside(g, p, nrm, BATCH * T4 * D4, "normalised");
        alloc_act(g, mean, BATCH * T4, "layer norm means");
        alloc_act(g, rstd, BATCH * T4, "layer norm 1/std");
        need_red(p, (int64_t)p->ln_blocks * 2 * D4);
        const long long nw = toff(g, i, 0), nb = toff(g, i, 1), rw = toff(g, i, 2);
        sb_printf(f, "    merge2x2_forward(k, A(%s), %s, B, %d, %d, %d);\n", mrg, in, GH, GW, D);
        sb_printf(f, "    layernorm_forward<%d>(k, A(%s), A(%s), A(%s), A(%s), P(%lldL), P(%lldL), B * %d, 1e-05f);\n",
                  D4, nrm, mean, rstd, mrg, nw, nb, T4);
        sb_printf(f, "    linear_forward(k, %s, A(%s), P(%lldL), nullptr, B * %d, %d, %d);\n", out, nrm, rw, T4, D4,
                  so->dim);
        sb_printf(&b, "    linear_backward(k, G(%s), DP(%lldL), nullptr, %s, A(%s), P(%lldL), B * %d, %d, %d, 0);\n",
                  nrm, rw, dout, nrm, rw, T4, D4, so->dim);
        sb_printf(&b,
                  "    layernorm_backward<%d>(k, G(%s), DP(%lldL), DP(%lldL), G(%s), A(%s), P(%lldL), A(%s), A(%s), B * "
                  "%d, 0);\n",
                  D4, mrg, nw, nb, nrm, mrg, nw, mean, rstd, T4);
        sb_printf(&b, "    merge2x2_backward(k, %s, G(%s), B, %d, %d, %d, %d);\n", din, mrg, GH, GW, D, acc);
        break;
    }
    case OP_WINDOW_ATTENTION:
        gen_window_attention_cuda(g, p, i, &c, out, res, &b);
        break;
    case OP_CLS_TOKEN:
        need_red(p, (int64_t)p->red_chunks * D);
        sb_printf(f, "    cls_token_forward(k, %s, %s, P(%lldL), B, %d, %d);\n", out, in, (long long)toff(g, i, 0), T,
                  D);
        sb_printf(&b, "    cls_token_backward(k, %s, DP(%lldL), %s, B, %d, %d, %d);\n", din, (long long)toff(g, i, 0),
                  dout, T, D, acc);
        break;
    case OP_POS_EMBED:
        if (op->u.pos.learned) {
            need_red(p, (int64_t)p->red_chunks * T * D);
            sb_printf(f, "    pos_embed_forward(k, %s, %s, P(%lldL), B, %d, %d);\n", out, in, (long long)toff(g, i, 0),
                      T, D);
            sb_printf(&b, "    pos_embed_backward(k, %s, DP(%lldL), %s, B, %d, %d, %d);\n", din,
                      (long long)toff(g, i, 0), dout, T, D, acc);
        } else {
            char tab[32];
            snprintf(tab, sizeof tab, "POS%d", i);
            alloc_act(g, tab, (int64_t)T * D, "fixed sine-cosine positions");
            sb_printf(f, "    pos_embed_forward(k, %s, %s, A(%s), B, %d, %d);\n", out, in, tab, T, D);
            sb_printf(&b, "    pos_embed_backward(k, %s, nullptr, %s, B, %d, %d, %d);\n", din, dout, T, D, acc);
        }
        break;
    case OP_LAYERNORM: {
        char mean[32], rstd[32];
        snprintf(mean, sizeof mean, "MEAN%d", i);
        snprintf(rstd, sizeof rstd, "RSTD%d", i);
        alloc_act(g, mean, BATCH * T, "layer norm means");
        alloc_act(g, rstd, BATCH * T, "layer norm 1/std");
        need_red(p, (int64_t)p->ln_blocks * 3 * D); /* dw, db and, with dsum, dinp's sums */
        char o16[48] = "";
        if (ln_feeds_product(g, i)) { /* bf16 alone in bf16 precision, its room halves */
            snprintf(o16, sizeof o16, ", bf16_half(k, %s)", out);
            alloc_half(p, name, c.floats, c.what, p->vkey[i]);
        }
        sb_printf(f, "    layernorm_forward<%d>(k, %s, A(%s), A(%s), %s, P(%lldL), P(%lldL), B * %d, %s%s);\n", D, out,
                  mean, rstd, in, (long long)toff(g, i, 0), (long long)toff(g, i, 1), T, flit(op->u.ln.eps).s, o16);
        char dsum[64] = "";
        const bool copy16 = p->ln_sum[i] >= 0 && dout_kept(g, p, p->ln_sum[i]);
        if (p->ln_sum[i] >= 0) /* plan_ln_sums; copy16 where dout_kept */
            snprintf(dsum, sizeof dsum, ", DP(%lldL)%s", (long long)out_bias_off(g, p->ln_sum[i]),
                     copy16 ? ", true" : "");
        if (dsum[0])
            sb_printf(&b, "    /* and op %d's output bias's gradient, the sums of %s (plan_ln_sums)%s */\n",
                      p->ln_sum[i], din, copy16 ? ", and its bf16 copy (dout_kept)" : "");
        sb_printf(&b,
                  "    layernorm_backward<%d>(k, %s, DP(%lldL), DP(%lldL), %s, %s, P(%lldL), A(%s), A(%s), B * %d, %d%s);\n",
                  D, din, (long long)toff(g, i, 0), (long long)toff(g, i, 1), dout, in, (long long)toff(g, i, 0), mean,
                  rstd, T, acc, dsum);
        break;
    }
    case OP_ATTENTION: {
        const int NH = op->u.attn.heads, HD = D / NH;
        const bool qb = op->u.attn.qkv_bias;
        char qkv[32], att[32], y[32];
        snprintf(qkv, sizeof qkv, "QKV%d", i);
        snprintf(att, sizeof att, "ATT%d", i);
        snprintf(y, sizeof y, "Y%d", i);
        /* on bf16 fragments, qkv feeds the attention kernels alone, which
         * stage it in bf16: in bf16 precision its product writes it in
         * bf16 alone (attn_qkv16), and its room halves; the weights get no
         * room there (frag16: the backward computes them again) */
        const bool q16 = attn_qkv16_ok(T, HD), y16 = attn_half_ok(T, HD);
        /* recompute = all: on the fragment kernels, q, k, v, the weights
         * (fp32 precision's) and the heads' outputs share one room per kind
         * with every such attention layer's, and the backward makes them
         * again from the layer's input (its layer norm's output, kept);
         * the last such layer's are still there */
        const bool ra = m->train.recompute == RECOMPUTE_ALL && attn_bf16_rooms(op);
        if (q16)
            alloc_inside_half(p, qkv, BATCH * T * 3 * D, "queries, keys, values", ra ? "QKV" : NULL);
        else
            alloc_inside(g, p, qkv, BATCH * T * 3 * D, "queries, keys, values");
        if (q16) /* the fragment kernels compute them again in the backward (frag16) */
            alloc_room16(p, att, BATCH * NH * T * T, 0, "attention weights; none in bf16 precision", ra ? "ATT" : NULL);
        else
            alloc_act(g, att, BATCH * NH * T * T, "attention weights");
        /* the heads' outputs, in bf16 alone in bf16 precision where the
         * kernels write them so (attn_half): the room halves */
        if (y16)
            alloc_inside_half(p, y, BATCH * T * D, "heads' outputs", ra ? "Y" : NULL);
        else
            alloc_inside(g, p, y, BATCH * T * D, "heads' outputs");
        need_red(p, (int64_t)p->red_chunks * 3 * D);
        need_red(p, BATCH * 3 * D); /* attention_backward's per-sample sums of the qkv bias's gradient */
        int64_t w_qkv = toff(g, i, 0), b_qkv = qb ? toff(g, i, 1) : -1;
        int64_t w_proj = toff(g, i, qb ? 2 : 1), b_proj = out_bias_off(g, i);
        char bq[40], dbq[40];
        if (qb) {
            snprintf(bq, sizeof bq, "P(%lldL)", (long long)b_qkv);
            snprintf(dbq, sizeof dbq, "DP(%lldL)", (long long)b_qkv);
        } else {
            snprintf(bq, sizeof bq, "nullptr");
            snprintf(dbq, sizeof dbq, "nullptr");
        }
        char pin[48];
        product_input(g, i, in, pin, sizeof pin);
        if (y16)
            sb_printf(f, "    static_assert(attn_half_ok<%d, %d>(), \"moecc: %s's bf16 room needs attention's bf16 output\");\n",
                      T, HD, y);
        /* q, k, v and the heads' outputs (the backward of recompute = all
         * makes them again the same way) */
        sbuf qy = { 0 };
        if (q16) {
            sb_printf(f, "    static_assert(attn_qkv16_ok<%d, %d>(), \"moecc: %s's bf16 room needs the fragment kernels\");\n",
                      T, HD, qkv);
            sb_printf(&qy, "    linear_forward(k, A(%s), %s, P(%lldL), %s, B * %d, %d, %d, nullptr, attn_qkv16<%d, %d>(k, A(%s)));\n",
                      qkv, pin, (long long)w_qkv, bq, T, D, 3 * D, T, HD, qkv);
        } else {
            sb_printf(&qy, "    linear_forward(k, A(%s), %s, P(%lldL), %s, B * %d, %d, %d);\n", qkv, pin,
                      (long long)w_qkv, bq, T, D, 3 * D);
        }
        /* the heads' outputs and dqkv feed products alone: in bf16
         * precision the tensor-core kernels write them in bf16 (attn_mm) */
        char ym[64], dqm[64];
        snprintf(ym, sizeof ym, "attn_mm<%d, %d>(k, A(%s))", T, HD, y);
        snprintf(dqm, sizeof dqm, "attn_mm<%d, %d>(k, G(%s))", T, HD, qkv);
        const char *q16s = q16 ? ", true" : "";
        sb_printf(&qy, "    attention_forward<%d, %d, %d>(k, A(%s), A(%s), A(%s), B, true%s);\n", T, HD, NH, y, att,
                  qkv, q16s);
        sb_printf(f, "%s", qy.s);
        sb_printf(f, "    linear_forward(k, %s, %s, P(%lldL), P(%lldL), B * %d, %d, %d%s);\n", out, ym,
                  (long long)w_proj, (long long)b_proj, T, D, D, res);
        if (p->remade_by[i] >= 0) {
            sb_printf(&b, "    /* recompute = all: op %d's backward made this layer's q, k, v and heads' outputs\n"
                          "     * again (plan_remake) */\n", p->remade_by[i]);
        } else if (recomputes_in_backward(m, i)) {
            remake_input_norm(g, p, i, &b, "");
            sb_printf(&b, "    /* recompute = all: this layer's q, k, v and heads' outputs again (later layers wrote\n"
                          "     * their shared rooms) */\n%s",
                      qy.s);
        }
        sb_free(&qy);
        char dbp[40] = "nullptr"; /* summed by a layer norm's backward (plan_ln_sums), or here */
        if (!bias_summed_by_ln(p, i))
            snprintf(dbp, sizeof dbp, "DP(%lldL)", (long long)b_proj);
        /* on the fragment kernels the heads' output gradient is written in
         * bf16 alone in bf16 precision (dinp16), which attention's backward
         * stages without rounding it again (dout16): half its bytes */
        const bool g16 = q16 && y16;
        char lbx[32] = ""; /* dinp16 (g16), dout_kept */
        if (dout_kept(g, p, i))
            snprintf(lbx, sizeof lbx, ", %s, true", g16 ? "true" : "false");
        else if (g16)
            snprintf(lbx, sizeof lbx, ", true");
        sb_printf(&b, "    linear_backward(k, G(%s), DP(%lldL), %s, %s, %s, P(%lldL), B * %d, %d, %d, 0%s);\n", y,
                  (long long)w_proj, dbp, dout, ym, (long long)w_proj, T, D, D, lbx);
        /* the qkv bias's gradient summed by attention's backward (on bf16
         * fragments in the kernel, from dqkv before its rounding), not by
         * a pass over dqkv in linear_backward */
        if (qb || g16)
            sb_printf(&b, "    attention_backward<%d, %d, %d>(k, G(%s), G(%s), A(%s), A(%s), B, true, %s, %s%s);\n",
                      T, HD, NH, qkv, y, qkv, att, q16 ? "true" : "false", qb ? dbq : "nullptr",
                      g16 ? ", true" : "");
        else
            sb_printf(&b, "    attention_backward<%d, %d, %d>(k, G(%s), G(%s), A(%s), A(%s), B, true%s);\n", T, HD,
                      NH, qkv, y, qkv, att, q16s);
        sb_printf(&b, "    linear_backward(k, %s, DP(%lldL), nullptr, %s, %s, P(%lldL), B * %d, %d, %d, %d);\n", din,
                  (long long)w_qkv, dqm, pin, (long long)w_qkv, T, D, 3 * D, acc);
        break;
    }
    case OP_MLP: {
        const int H = op->u.mlp.hidden;
        char hh[32], aa[32];
        snprintf(hh, sizeof hh, "H%d", i);
        snprintf(aa, sizeof aa, "ACTV%d", i);
        /* recompute = all: every dense MLP's hidden values and activations
         * share one room per kind, and the backward makes them again (the
         * first product and the activation, from the kept input); the last
         * MLP's are still there */
        const bool ra = m->train.recompute == RECOMPUTE_ALL;
        alloc_inside_in(g, p, hh, BATCH * T * H, "hidden, before the activation, then its derivative",
                        ra ? "MH" : NULL);
        /* in bf16 precision bias_act writes the activations in bf16 alone
         * (bf16_half), which the products take there: the room halves */
        alloc_inside_half(p, aa, BATCH * T * H, "hidden, after the activation", ra ? "MACTV" : NULL);
        need_red(p, (int64_t)p->red_chunks * (H > D ? H : D)); /* the two biases' gradients */
        const char *act = act_code(op->u.mlp.act);
        /* the bias and the activation in one pass over the hidden values,
         * which then hold the activation's derivative for the backward
         * (bias_act's grad_h, act_bias_backward); the activations and their
         * gradient feed products alone, so in bf16 precision they are
         * written in bf16 (bf16_half), not rounded again for each product */
        char pin[48];
        product_input(g, i, in, pin, sizeof pin);
        sbuf fh = { 0 }; /* the hidden values and activations */
        sb_printf(&fh, "    linear_forward(k, A(%s), %s, P(%lldL), nullptr, B * %d, %d, %d);\n", hh, pin,
                  (long long)toff(g, i, 0), T, D, H);
        sb_printf(&fh, "    bias_act<%s>(k, A(%s), A(%s), P(%lldL), (int64_t)B * %d, %d, 1, bf16_half(k, A(%s)), true);\n",
                  act, aa, hh, (long long)toff(g, i, 1), T, H, aa);
        /* dropout on the activations, in place where fc2 reads them (a
         * remake draws the same mask: the step's) */
        char mask[32];
        snprintf(mask, sizeof mask, "MMASK%d", i);
        const bool drop = op->u.mlp.dropout > 0;
        if (drop) {
            alloc_act(g, mask, BATCH * T * H, "dropout mask of the activations");
            sb_printf(&fh,
                      "    dropout_mask(k, A(%s), (int64_t)B * %d, train ? %s : 0.0f, d->seed, %d, &d->sc->step, "
                      "d->row0 * %d);\n",
                      mask, T * H, flit(op->u.mlp.dropout).s, 1000 + i, T * H);
            sb_printf(&fh, "    mask_activations(k, A(%s), A(%s), (int64_t)B * %d);\n", aa, mask, T * H);
        }
        sb_printf(f, "%s", fh.s);
        if (recomputes_in_backward(m, i)) {
            if (p->remake_of[i] >= 0)
                remake_block_half(g, p, i, &b, "");
            else
                remake_input_norm(g, p, i, &b, "");
            sb_printf(&b, "    /* recompute = all: this layer's hidden values and activations again (later layers\n"
                          "     * wrote their shared rooms) */\n%s",
                      fh.s);
        }
        sb_free(&fh);
        sb_printf(f, "    linear_forward(k, %s, mm_half(k, A(%s)), P(%lldL), P(%lldL), B * %d, %d, %d%s);\n", out,
                  aa, (long long)toff(g, i, 2), (long long)toff(g, i, 3), T, H, D, res);
        char db2[40] = "nullptr"; /* summed by a layer norm's backward (plan_ln_sums), or here */
        if (!bias_summed_by_ln(p, i))
            snprintf(db2, sizeof db2, "DP(%lldL)", (long long)out_bias_off(g, i));
        sb_printf(&b,
                  "    linear_backward(k, G(%s), DP(%lldL), %s, %s, mm_half(k, A(%s)), P(%lldL), B * %d, %d, %d, 0%s);\n",
                  aa, (long long)toff(g, i, 2), db2, dout, aa, (long long)toff(g, i, 2), T, H, D,
                  dout_kept(g, p, i) ? ", false, true" : "");
        if (drop)
            sb_printf(&b, "    mask_backward(k, G(%s), G(%s), A(%s), (int64_t)B * %d, 0);\n", aa, aa, mask, T * H);
        /* the activation's backward and the first bias's gradient in one pass */
        sb_printf(&b,
                  "    act_bias_backward(k, G(%s), bf16_half(k, G(%s)), DP(%lldL), G(%s), A(%s), B * %d, %d);\n", hh, hh,
                  (long long)toff(g, i, 1), aa, hh, T, H);
        sb_printf(&b, "    linear_backward(k, %s, DP(%lldL), nullptr, mm_half(k, G(%s)), %s, P(%lldL), B * %d, %d, %d, %d);\n",
                  din, (long long)toff(g, i, 0), hh, pin, (long long)toff(g, i, 0), T, D, H, acc);
        break;
    }
    case OP_MOE: {
        const mc_moe *x = &op->u.moe;
        /* expert choice: every token lists every expert (K = E), and each
         * expert takes its cap tokens, in training and evaluation alike */
        const bool ec = x->router == ROUTER_EXPERT_CHOICE;
        const int E = x->experts, H = x->hidden, K = ec ? x->experts : x->top_k, j = g->moe_index[i];
        const int ND = m->ndatasets;
        const int NB = (int)(BATCH * T);
        const int cap = ec ? mc_moe_capacity(NB, E, 1, x->capacity_factor, 0)
                           : mc_moe_capacity(NB, E, K, x->capacity_factor, x->dropless);
        /* evaluation is dropless (cap = N): the arenas hold E * cap rows, so
         * an evaluation batch has at most cap tokens */
        const int64_t eb = cap / T;
        if (eb < p->eval_batch)
            p->eval_batch = eb < 1 ? 1 : eb;
        const int64_t ROWS = (int64_t)E * cap;
        const int64_t nblk = ((int64_t)NB * K + p->route_block - 1) / p->route_block;
        char nm[14][32];
        static const char *const fl[] = { "LOGITS", "PROBS", "LSE", "TOPP", "GATE", "PRIO", "PRIOS", "ENT",
                                          "XE",     "HE",    "AE",  "YE",   "AUX" };
        const int64_t fsz[] = { (int64_t)NB * E, (int64_t)NB * E, NB, (int64_t)NB * K, (int64_t)NB * K, NB, NB, NB,
                                ROWS * D, ROWS * H, ROWS * H, ROWS * D, 5 };
        static const char *const fwhat[] = { "router logits", "router probabilities", "log-sum-exp of the logits",
                                             "top-k probabilities", "gates", "routing priority",
                                             "routing priority, sorted", "router entropy per token",
                                             "expert inputs [E, cap, D]",
                                             "expert hidden [E, cap, H], then the activation's derivative",
                                             "expert hidden, activated", "expert outputs [E, cap, D]",
                                             "auxiliary losses: balance, z, dataset, importance, load" };
        /* recompute = experts or all (one GPU's experts: sema.c): the
         * experts' rows, hidden values, activations and outputs share one
         * room per kind with every MoE layer's, and the backward makes
         * them again (remakes_from_input); the last MoE layer's are still
         * there */
        const bool rc = m->train.recompute != RECOMPUTE_NONE && m->parallel.expert == 1;
        for (int k = 0; k < 13; k++) {
            snprintf(nm[k], sizeof nm[k], "%s%d", fl[k], i);
            /* the backward needs the gradients of the logits, gates, and the experts' rows */
            /* bf16 precision keeps h and a in bf16 alone (moe_h16,
             * moe_a16), and xe and ye too on one GPU (moe_x16: expert
             * parallelism sends fp32 rows) */
            const char *room = rc && k >= 8 && k <= 11 ? fl[k] : NULL; /* one for every layer's */
            /* h and a have no gradient rooms: the backward writes da and
             * dh where a was (moe_ffn_backward_rows) */
            if ((k == 8 || k == 11) && m->parallel.expert == 1)
                alloc_inside_half(p, nm[k], fsz[k], fwhat[k], room);
            else if (k == 9 || k == 10)
                alloc_half(p, nm[k], fsz[k], fwhat[k], room);
            else if (k == 0 || k == 4 || k == 8 || k == 11)
                alloc_inside(g, p, nm[k], fsz[k], fwhat[k]);
            else
                alloc_act(g, nm[k], fsz[k], fwhat[k]);
        }
        static const char *const il[] = { "TOPK", "SLOT", "COUNT", "TOKEN", "ROWK", "ORDER", "IOTA", "TARGET",
                                          "BLKC", "BLKB" };
        const int64_t isz[] = { (int64_t)NB * K, (int64_t)NB * K, E, ROWS, ROWS, NB, NB, NB, nblk * E, nblk * E };
        static const char *const iwhat[] = { "chosen experts", "slot of each choice", "tokens per expert",
                                             "token of each expert row", "choice of each expert row", "routing order",
                                             "0, 1, ..., N-1", "mapped expert", "choices per block and expert",
                                             "first slot per block and expert" };
        char in_[10][32];
        for (int k = 0; k < 10; k++) {
            snprintf(in_[k], sizeof in_[k], "%s%d", il[k], i);
            alloc_int(g, in_[k], isz[k], iwhat[k]);
        }
        char eck[32], ecv[32];
        snprintf(eck, sizeof eck, "ECK%d", i);
        snprintf(ecv, sizeof ecv, "ECV%d", i);
        if (ec) {
            alloc_act(g, eck, 2 * (int64_t)NB * E, "expert choice: each expert's probabilities, sorted (two buffers)");
            alloc_int(g, ecv, 2 * (int64_t)NB * E + E + 1, "expert choice: their tokens (two buffers), offsets");
        }
        p->ent[j] = p->dacc++;
        p->sums[j] = p->dacc;
        p->dacc += 2 * E;
        p->st[j] = p->stats;
        p->stats += E + (int64_t)ND * E + 3;
        need_red(p, (int64_t)p->red_chunks * E * (H > D ? H : D));
        /* one GPU's experts in widths of whole 64-column tiles: the grouped
         * product's backward epilogue may sum db1, a partial sum per 64 rows
         * of each 128-row tile (kernels.cuh: gg_halves) */
        if (m->parallel.expert == 1 && D % 64 == 0 && H % 64 == 0) {
            const int bm = kernel_const("GG_BM");
            need_red(p, (int64_t)E * ((cap + bm - 1) / bm * 2) * H);
        }
        need_red(p, (int64_t)2 * ((p->aux_blocks + 1) * (2 * E + 3) + 1)); /* partials, then the totals */
        /* the load loss: its buffers; here also each choice's chance (the
         * sums' input) and the loads (doubles, for its backward) */
        load_plan lp;
        const bool load = load_plan_init(g, i, NB, &lp);
        const char *clean = lp.clean, *ldens = lp.dens, *lthr = lp.thr;
        char lprob[32];
        snprintf(lprob, sizeof lprob, "LPROB%d", i);
        int64_t lsum = 0;
        if (load) {
            alloc_act(g, lprob, (int64_t)NB * E, "load loss: each choice's chance under the noise");
            lsum = p->dacc;
            p->dacc += E;
            need_red(p, (int64_t)2 * ((p->aux_blocks + 1) * E + 1));
        }
        const bool attn = x->router == ROUTER_ATTENTION, cosine = x->router == ROUTER_COSINE;
        const int nr = attn || cosine ? 2 : 1, R = x->router_dim;
        const int64_t wg = toff(g, i, 0), tok = nr == 2 ? toff(g, i, 1) : 0, w1 = toff(g, i, nr),
                      b1 = toff(g, i, nr + 1), w2 = toff(g, i, nr + 2), b2 = toff(g, i, nr + 3);
        char query[32], qn[32], qnorm[32], en[32], enorm[32];
        snprintf(query, sizeof query, "QUERY%d", i);
        snprintf(qn, sizeof qn, "QN%d", i);
        snprintf(qnorm, sizeof qnorm, "QNORM%d", i);
        snprintf(en, sizeof en, "EN%d", i);
        snprintf(enorm, sizeof enorm, "ENORM%d", i);
        if (attn)
            alloc_inside(g, p, query, (int64_t)NB * R, "attention router queries [N, R]");
        if (cosine) {
            alloc_inside(g, p, query, (int64_t)NB * R, "cosine router projections [N, R]");
            alloc_inside(g, p, qn, (int64_t)NB * R, "the projections, normalised");
            alloc_act(g, qnorm, NB, "their norms");
            alloc_inside(g, p, en, (int64_t)E * R, "expert embeddings, normalised [E, R]");
            alloc_act(g, enorm, E, "their norms");
        }
        const bool ds = x->router == ROUTER_DATASET_AWARE;
        char target[64];
        if (ds)
            snprintf(target, sizeof target, "IA(%s)", in_[7]);
        else
            snprintf(target, sizeof target, "nullptr");
        char routing[768];
        snprintf(routing, sizeof routing,
                 "        moe_route_buf r = { A(%s), A(%s), A(%s), A(%s), A(%s), A(%s), A(%s),\n"
                 "                            IA(%s), IA(%s), IA(%s), IA(%s), IA(%s), IA(%s), IA(%s), IA(%s), IA(%s),\n"
                 "                            d->sort_tmp, d->sort_bytes };\n",
                 nm[1], nm[2], nm[3], nm[4], nm[5], nm[6], nm[7], in_[0], in_[1], in_[2], in_[3], in_[4], in_[5],
                 in_[6], in_[8], in_[9]);
        char capx[160];
        if (ec)
            snprintf(capx, sizeof capx, "moe_capacity(N, %d, 1, %.17g, 0); /* tokens each expert chooses */", E,
                     x->capacity_factor);
        else if (x->dropless)
            snprintf(capx, sizeof capx, "N; /* dropless */");
        else
            snprintf(capx, sizeof capx, "train ? moe_capacity(N, %d, %d, %.17g, 0) : N; /* dropless in evaluation */",
                     E, K, x->capacity_factor);
        sb_printf(f, "    {\n        const int N = B * %d;\n        const int cap = %s\n", T, capx);
        sb_printf(f, "%s", routing);
        /* fp32_gate: the router's products in fp32 whatever the precision */
        const char *kr = x->fp32_gate ? "&kg" : "k";
        if (x->fp32_gate)
            sb_printf(f, "        kctx kg = fp32_ctx(k); /* fp32_gate */\n");
        if (attn) {
            sb_printf(f, "        linear_forward(%s, A(%s), %s, P(%lldL), nullptr, N, %d, %d);\n", kr, query, in,
                      (long long)wg, D, R);
            sb_printf(f, "        linear_forward(%s, A(%s), A(%s), P(%lldL), nullptr, N, %d, %d);\n", kr, nm[0], query,
                      (long long)tok, R, E);
            sb_printf(f, "        scale_inplace(k, A(%s), (int64_t)N * %d, %s); /* 1 / sqrt(R) */\n", nm[0], E,
                      flit(1.0 / sqrt((double)R)).s);
        } else if (cosine) {
            sb_printf(f, "        linear_forward(%s, A(%s), %s, P(%lldL), nullptr, N, %d, %d);\n", kr, query, in,
                      (long long)wg, D, R);
            sb_printf(f, "        l2norm_forward(k, A(%s), A(%s), A(%s), N, %d);\n", qn, qnorm, query, R);
            sb_printf(f, "        l2norm_forward(k, A(%s), A(%s), P(%lldL), %d, %d);\n", en, enorm, (long long)tok, E, R);
            sb_printf(f, "        linear_forward(%s, A(%s), A(%s), A(%s), nullptr, N, %d, %d);\n", kr, nm[0], qn, en, R,
                      E);
        } else {
            sb_printf(f, "        linear_forward(%s, A(%s), %s, P(%lldL), nullptr, N, %d, %d);\n", kr, nm[0], in,
                      (long long)wg, D, E);
        }
        const bool temper = (x->router == ROUTER_SOFT || cosine) && x->temperature != 1.0;
        if (temper)
            sb_printf(f, "        scale_inplace(k, A(%s), (int64_t)N * %d, %s); /* 1 / temperature */\n", nm[0], E,
                      flit(1.0 / x->temperature).s);
        if (load)
            sb_printf(f, "        copy_floats(k, A(%s), A(%s), (int64_t)N * %d); /* the load loss's clean logits */\n",
                      clean, nm[0], E);
        if (x->gate_noise > 0)
            sb_printf(f, "        if (train)\n            gate_noise(k, A(%s), (int64_t)N * %d, %s, d->seed, %d, "
                         "&d->sc->step, d->row0 * %d);\n",
                      nm[0], E, flit(x->gate_noise / E).s, 1000 + i, T * E);
        if (ec)
            sb_printf(f,
                      "        ec_buf ec = { { A(%s), A(%s) + %lldL }, { IA(%s), IA(%s) + %lldL }, IA(%s) + %lldL };\n"
                      "        moe_route_expert_choice<%d>(k, &r, &ec, A(%s), N, cap);\n",
                      eck, eck, (long long)NB * E, ecv, ecv, (long long)NB * E, ecv, 2 * (long long)NB * E, E, nm[0]);
        else
            sb_printf(f, "        moe_route<%d, %d>(k, &r, A(%s), N, cap, %d, %d);\n", E, K, nm[0],
                      x->normalize_gates ? 1 : 0, x->batch_priority ? 1 : 0);
        if (ds)
            sb_printf(f, "        moe_target(k, IA(%s), dataset, d->maps + %d, N, %d);\n", in_[7], j * ND, T);
        /* expert parallelism (training): the rows of this GPU's experts,
         * from every GPU of its group, and their gradients; the arena holds
         * only this GPU's experts (w1 ... b2 are their offsets there) */
        const int EP = m->parallel.expert;
        char xr[32], yr[32];
        snprintf(xr, sizeof xr, "%s", nm[8]);
        snprintf(yr, sizeof yr, "%s", nm[11]);
        if (EP > 1) {
            snprintf(xr, sizeof xr, "XR%d", i);
            snprintf(yr, sizeof yr, "YR%d", i);
            alloc_inside(g, p, xr, ROWS * D, "this GPU's experts' inputs [E/P, P, cap, D]");
            alloc_inside(g, p, yr, ROWS * D, "this GPU's experts' outputs [E/P, P, cap, D]");
            if (ROWS * D > p->xchg)
                p->xchg = ROWS * D;
            sb_printf(f, "        if (train) /* expert parallelism: the %d GPUs of the group share the experts */\n"
                         "    ", EP);
        }
        sb_printf(f,
                  "        moe_experts_forward<%d, %d, %d, %d, %s, %d>(k, %s, A(%s), A(%s), A(%s), A(%s), A(%s), A(%s), %s, "
                  "&r,\n%s                                              P(%lldL), P(%lldL), P(%lldL), P(%lldL), N, cap%s);\n",
                  D, H, E, K, act_code(x->act), EP, out, nm[8], xr, nm[9], nm[10], yr, nm[11], in, EP > 1 ? "    " : "",
                  (long long)w1, (long long)b1, (long long)w2, (long long)b2, res);
        if (EP > 1) {
            /* evaluation: this GPU alone, with every expert's weights
             * gathered from the group (backend.cu, model_eval_begin) at
             * their offsets in the checkpoint's layout */
            sb_printf(f,
                      "        else /* evaluation: this GPU alone with every expert (model_eval_begin gathered them) */\n"
                      "            moe_experts_forward<%d, %d, %d, %d, %s, 1>(k, %s, A(%s), A(%s), A(%s), A(%s), A(%s), "
                      "A(%s), %s, &r,\n                                                  PF(%lldL), PF(%lldL), PF(%lldL), "
                      "PF(%lldL), N, cap%s);\n",
                      D, H, E, K, act_code(x->act), out, nm[8], nm[8], nm[9], nm[10], nm[11], nm[11], in,
                      (long long)toff_whole(g, i, nr), (long long)toff_whole(g, i, nr + 1),
                      (long long)toff_whole(g, i, nr + 2), (long long)toff_whole(g, i, nr + 3), res);
        }
        sb_printf(f,
                  "        moe_aux_losses<%d, %d>(k, A(%s), d->dacc + %lld, d->dacc + %d, d->stats + %lld, d->dacc + %lld, "
                  "&r, %s,\n                              dataset, %s, %s, %s, %s, N, %d, %d, train);\n",
                  E, K, nm[12], (long long)p->sums[j], DACC_AUX, (long long)p->st[j], (long long)p->ent[j], target,
                  flit(x->balance_loss).s, flit(x->z_loss).s, flit(ds ? x->dataset_loss : 0.0).s,
                  flit(x->importance_loss).s, T, ND);
        if (load)
            sb_printf(f,
                      "        moe_load_forward<%d, %d>(k, A(%s) + 4, d->dacc + %lld, d->dacc + %d, A(%s), IA(%s), A(%s), "
                      "A(%s), A(%s),\n                                IA(%s), %s, %s, N, train);\n",
                      E, K, nm[12], (long long)lsum, DACC_AUX, ldens, lthr, lprob, clean, nm[0], in_[0],
                      flit(x->gate_noise / E).s, flit(x->load_loss).s);
        sb_printf(f, "    }\n");
        /* backward (training only: the capacity of training) */
        sb_printf(&b, "    {\n        const int N = B * %d;\n", T);
        if (ec)
            sb_printf(&b, "        const int cap = %s\n", capx);
        else if (x->dropless)
            sb_printf(&b, "        const int cap = N; /* dropless */\n");
        else
            sb_printf(&b, "        const int cap = moe_capacity(N, %d, %d, %.17g, 0);\n", E, K, x->capacity_factor);
        sb_printf(&b, "%s", routing);
        if (x->fp32_gate)
            sb_printf(&b, "        kctx kg = fp32_ctx(k); /* fp32_gate */\n");
        const bool remake = remakes_from_input(g, i);
        if (remake && p->remake_of[i] >= 0)
            remake_block_half(g, p, i, &b, "    ");
        else if (remake)
            remake_input_norm(g, p, i, &b, "    ");
        if (remake)
            sb_printf(&b,
                      "        /* recompute: this layer's rows, hidden values, activations and outputs\n"
                      "         * again (later layers wrote their shared rooms), the combine left out */\n"
                      "        moe_experts_forward<%d, %d, %d, %d, %s, 1>(k, nullptr, A(%s), A(%s), A(%s), A(%s), A(%s), "
                      "A(%s), %s, &r,\n                                              P(%lldL), P(%lldL), P(%lldL), "
                      "P(%lldL), N, cap, nullptr, false);\n",
                      D, H, E, K, act_code(x->act), nm[8], nm[8], nm[9], nm[10], nm[11], nm[11], in, (long long)w1,
                      (long long)b1, (long long)w2, (long long)b2);
        /* it stores dw1 and dw2 (every expert's, once a step), adds to db1, db2 */
        p->grad_stored[i] |= 1u << nr | 1u << (nr + 2);
        sb_printf(&b,
                  "        moe_experts_backward<%d, %d, %d, %d, %d>(k, %s, G(%s), G(%s), G(%s), G(%s), G(%s), "
                  "%s,\n                                          A(%s), A(%s), A(%s), A(%s), &r, P(%lldL), "
                  "P(%lldL), P(%lldL),\n                                          DP(%lldL), "
                  "DP(%lldL), DP(%lldL), DP(%lldL), N, cap, %d);\n",
                  D, H, E, K, EP, din, nm[4], nm[11], yr, xr, nm[8], dout, xr, nm[9], nm[10], nm[11],
                  (long long)w1, (long long)w2, (long long)b2, (long long)w1, (long long)b1, (long long)w2,
                  (long long)b2, acc);
        sb_printf(&b,
                  "        moe_router_backward<%d, %d>(k, G(%s), G(%s), &r, %s, d->dacc + %lld, N, %d, %s, %s, %s, %s);\n",
                  E, K, nm[0], nm[4], target, (long long)p->sums[j], x->normalize_gates && !ec ? 1 : 0,
                  flit(x->balance_loss).s, flit(x->z_loss).s, flit(ds ? x->dataset_loss : 0.0).s,
                  flit(x->importance_loss).s);
        if (load)
            sb_printf(&b, "        moe_load_backward<%d, %d>(k, G(%s), d->dacc + %lld, A(%s), IA(%s), IA(%s), N, %s);\n", E,
                      K, nm[0], (long long)lsum, ldens, lthr, in_[0], flit(x->load_loss).s);
        if (temper)
            sb_printf(&b, "        scale_inplace(k, G(%s), (int64_t)N * %d, %s);\n", nm[0], E,
                      flit(1.0 / x->temperature).s);
        need_red(p, (int64_t)p->red_chunks * (R > E ? R : E));
        /* the narrow fp32 products' weight gradients (kernels.cuh,
         * narrow_backward): [E, D], or [R, D] and [E, R] */
        need_red(p, (int64_t)p->red_chunks * (nr == 2 ? (int64_t)R * (D > E ? D : E) : (int64_t)E * D));
        if (attn) {
            sb_printf(&b, "        scale_inplace(k, G(%s), (int64_t)N * %d, %s);\n", nm[0], E,
                      flit(1.0 / sqrt((double)R)).s);
            sb_printf(&b, "        linear_backward(%s, G(%s), DP(%lldL), nullptr, G(%s), A(%s), P(%lldL), N, %d, %d, 0);\n",
                      kr, query, (long long)tok, nm[0], query, (long long)tok, R, E);
            sb_printf(&b, "        linear_backward(%s, %s, DP(%lldL), nullptr, G(%s), %s, P(%lldL), N, %d, %d, 1);\n    }\n",
                      kr, din, (long long)wg, query, in, (long long)wg, D, R);
        } else if (cosine) {
            /* through logits = qn en^T: dqn = dlogits en, den = dlogits^T qn */
            sb_printf(&b, "        mm_nn(%s, G(%s), G(%s), A(%s), N, %d, %d, 0.0f);\n", kr, qn, nm[0], en, R, E);
            sb_printf(&b, "        mm_tn(%s, G(%s), G(%s), A(%s), %d, %d, N, 0.0f);\n", kr, en, nm[0], qn, E, R);
            sb_printf(&b, "        l2norm_backward(k, DP(%lldL), G(%s), A(%s), A(%s), %d, %d, 1);\n", (long long)tok, en,
                      en, enorm, E, R);
            sb_printf(&b, "        l2norm_backward(k, G(%s), G(%s), A(%s), A(%s), N, %d, 0);\n", query, qn, qn, qnorm, R);
            sb_printf(&b, "        linear_backward(%s, %s, DP(%lldL), nullptr, G(%s), %s, P(%lldL), N, %d, %d, 1);\n    }\n",
                      kr, din, (long long)wg, query, in, (long long)wg, D, R);
        } else {
            sb_printf(&b, "        linear_backward(%s, %s, DP(%lldL), nullptr, G(%s), %s, P(%lldL), N, %d, %d, 1);\n    }\n",
                      kr, din, (long long)wg, nm[0], in, (long long)wg, D, E);
        }
        break;
    }
    case OP_DROPOUT: {
        char mask[32];
        snprintf(mask, sizeof mask, "MASK%d", i);
        alloc_act(g, mask, BATCH * n_tok, "dropout mask");
        sb_printf(f,
                  "    dropout_mask(k, A(%s), (int64_t)B * %lld, train ? %s : 0.0f, d->seed, %d, &d->sc->step, "
                  "d->row0 * %lld);\n",
                  mask, (long long)n_tok, flit(op->u.drop.p).s, 1000 + i, (long long)n_tok);
        sb_printf(f, "    mask_forward(k, %s, %s, A(%s), (int64_t)B * %lld);\n", out, in, mask, (long long)n_tok);
        sb_printf(&b, "    mask_backward(k, %s, %s, A(%s), (int64_t)B * %lld, %d);\n", din, dout, mask, (long long)n_tok,
                  acc);
        break;
    }
    case OP_DROP_PATH: {
        char keep[32];
        snprintf(keep, sizeof keep, "KEEP%d", i);
        alloc_act(g, keep, BATCH, "stochastic depth: kept samples");
        sb_printf(f, "    dropout_mask(k, A(%s), B, train ? %s : 0.0f, d->seed, %d, &d->sc->step, d->row0);\n", keep,
                  flit(op->u.drop.p).s, 1000 + i);
        sb_printf(f, "    mask_forward(k, %s, %s, A(%s), (int64_t)B * %lld, %lld);\n", out, in, keep, (long long)n_tok,
                  (long long)n_tok);
        sb_printf(&b, "    mask_backward(k, %s, %s, A(%s), (int64_t)B * %lld, %d, %lld);\n", din, dout, keep,
                  (long long)n_tok, acc, (long long)n_tok);
        break;
    }
    case OP_RESIDUAL_END: {
        char skip[32], dskip[32];
        val_ref(skip, sizeof skip, g->skip[i], false);
        val_ref(dskip, sizeof dskip, g->skip[i], true);
        int acc_skip = acc_flag(g, i, g->skip[i]);
        if (g->skip[i] == g->input[i])
            acc_skip = 1; /* an empty branch: the same value twice */
        if (g->input[i] >= 0 && g->fuse_into[g->input[i]] == i)
            sb_printf(f, "    /* %s = %s + the branch's output: made by op %d (plan_fused_adds) */\n", out, skip,
                      g->input[i]);
        else
            sb_printf(f, "    add_forward(k, %s, %s, %s, (int64_t)B * %lld);\n", out, skip, in, (long long)n_tok);
        /* a gradient that shares dout's buffer is dL/dout already */
        if (g->input[i] < 0 || p->galias[g->input[i]] != i)
            sb_printf(&b, "    grad_pass(k, %s, %s, (int64_t)B * %lld, %d);\n", din, dout, (long long)n_tok, acc);
        if (g->skip[i] < 0 || p->galias[g->skip[i]] != i)
            sb_printf(&b, "    grad_pass(k, %s, %s, (int64_t)B * %lld, %d);\n", dskip, dout, (long long)n_tok,
                      acc_skip);
        else
            sb_printf(&b, "    /* the gradients of %s and %s are %s's (plan_grad_alias) */\n", din, dskip, dout);
        break;
    }
    case OP_POOL: {
        const int cls = op->u.pool.kind == POOL_CLS;
        sb_printf(f, "    pool_forward(k, %s, %s, B, %d, %d, %d);\n", out, in, T, D, cls);
        sb_printf(&b, "    pool_backward(k, %s, %s, B, %d, %d, %d, %d);\n", din, dout, T, D, cls, acc);
        break;
    }
    case OP_CLASSIFIER: {
        const int C = op->u.cls.classes;
        alloc_act(g, name, BATCH * C, "logits");
        grad_value(p, i, BATCH * C);
        need_red(p, (int64_t)p->red_chunks * C);
        if (op->u.cls.heads == HEADS_SHARED) {
            sb_printf(f, "    linear_forward(k, %s, %s, P(%lldL), P(%lldL), B, %d, %d);\n", out, in,
                      (long long)toff(g, i, 0), (long long)toff(g, i, 1), D, C);
            sb_printf(&b, "    linear_backward(k, %s, DP(%lldL), DP(%lldL), %s, %s, P(%lldL), B, %d, %d, %d);\n", din,
                      (long long)toff(g, i, 0), (long long)toff(g, i, 1), dout, in, (long long)toff(g, i, 0), D, C,
                      acc);
        } else {
            /* one head per dataset: each sample goes through its dataset's
             * head; the weight gradient's partial sums by chunks of samples
             * (kernels.cuh, head_chunks) */
            const int64_t n = (int64_t)m->ndatasets * C * (D + 1);
            int64_t chunks = (kernel_const("HEAD_THREADS") + n - 1) / n;
            if (chunks > kernel_const("HEAD_MAX_CHUNKS"))
                chunks = kernel_const("HEAD_MAX_CHUNKS");
            need_red(p, (chunks < 1 ? 1 : chunks) * n);
            sb_printf(f, "    head_forward(k, %s, %s, d->param, d->head_off, d->classes, dataset, B, %d, %d, N_DATASETS);\n", out,
                      in, D, C);
            sb_printf(&b,
                      "    head_backward(k, %s, d->grad, %s, %s, d->param, d->head_off, d->classes, dataset, B, %d, %d, "
                      "N_DATASETS, %d);\n",
                      din, dout, in, D, C, acc);
        }
        break;
    }
    default:
        break;
    }
    g->bwd[i] = sb_take(&b);
}

void gen_init_cuda(gen *g, const mc_model *m, mc_model *local)
{
    /* each GPU's arenas hold its share of the batch, and of the experts
     * under expert parallelism */
    *local = *m;
    local->train.batch = m->train.batch / m->parallel.data;
    gen_init(g, local, m->parallel.expert);
}

/* The sizes of DEV_LAYOUT's arenas (elements), as model.cu writes them */
typedef struct dev_sizes {
    int64_t params, act, act16, grad, ints, dacc, stats, red, cast, xchg;
} dev_sizes;

/* What backend.cu's model_init allocates with the arenas z for the local
 * model m (this GPU's batch): mem's fields, in the order it allocates them */
static void plan_memory(mc_gpu_memory *mem, const mc_model *m, const dev_sizes *z)
{
    const bool bf16 = m->train.precision == PREC_BF16, ep = m->parallel.expert > 1;
    const int64_t batch = m->train.batch, image = (int64_t)m->input_c * m->input_h * m->input_w;
    memset(mem, 0, sizeof *mem);
    mem->local_batch = m->train.batch;
    /* param, grad, opt_m, opt_v and the weight-decay mask (a byte each) */
    mem->weights = 4 * (int64_t)sizeof(float) * z->params + z->params;
    mem->activations = (int64_t)sizeof(float) * (bf16 ? z->act16 : z->act);
    /* sharded experts: the gradient arena also holds the whole layout */
    mem->gradients = (int64_t)sizeof(float) * (ep && z->grad < m->params ? m->params : z->grad);
    /* the products' operand scratch, the weights' copy, the exchange's staging */
    if (bf16)
        mem->bf16 = 2 * z->cast + 2 * z->params + (ep ? 2 * 2 * z->xchg : 0);
    /* cuBLAS's workspace, the reductions' partials, routing ints, double
     * sums, statistics (twice with data parallelism), two input slots of
     * images, datasets, labels and CutMix's partners' labels */
    mem->other = (int64_t)template_const("cuda/backend.cu", "BLAS_WORKSPACE_BYTES") + (int64_t)sizeof(float) * z->red +
                 (int64_t)sizeof(int32_t) * z->ints + 8 * z->dacc + 8 * z->stats * (m->parallel.data > 1 ? 2 : 1) +
                 2 * (batch * image * (int64_t)sizeof(float) + 3 * batch * (int64_t)sizeof(int32_t));
    mem->total = mem->weights + mem->activations + mem->gradients + mem->bf16 + mem->other;
}

void mc_gpu_memory_plan(const mc_model *m, mc_gpu_memory *out)
{
    mc_model local;
    gen g;
    gen_init_cuda(&g, m, &local);
    const mc_emit_opts o = { "", "", MC_TARGET_CUDA };
    sbuf scratch = { 0 };
    emit_model_cu(&scratch, &g, &o, out);
    sb_free(&scratch);
    gen_free(&g);
}

void emit_model_cu(sbuf *c, gen *g, const mc_emit_opts *o, mc_gpu_memory *mem)
{
    const mc_model *m = g->m;
    cuda_plan p;
    memset(&p, 0, sizeof p);
    p.dacc = DACC_FIXED;
    p.red_chunks = kernel_const("RED_CHUNKS");
    p.ln_blocks = kernel_const("LN_BLOCKS");
    p.aux_blocks = kernel_const("AUX_BLOCKS");
    p.route_block = kernel_const("ROUTE_BLOCK");
    p.red = (int64_t)kernel_const("NORM_BLOCKS") * 2; /* the gradient norm's partials */
    {
        /* kernels.cuh: adamw_norm_blocks, AdamW's partial sums of |g| (as
         * doubles, one a block of 256 groups of 4) where it sums them itself */
        int64_t blocks = ((g->params + 3) / 4 + 255) / 256;
        blocks = blocks < 1 ? 1 : blocks > 65535 * 16 ? 65535 * 16 : blocks;
        if (2 * blocks > p.red)
            p.red = 2 * blocks;
    }
    p.eval_batch = m->train.batch;
    const int nmoe = g->nmoe > 0 ? g->nmoe : 1;
    p.ent = mc_xcalloc((size_t)nmoe, sizeof *p.ent);
    p.sums = mc_xcalloc((size_t)nmoe, sizeof *p.sums);
    p.st = mc_xcalloc((size_t)nmoe, sizeof *p.st);
    p.galias = mc_xcalloc((size_t)m->nops, sizeof *p.galias);
    p.grad_stored = mc_xcalloc((size_t)m->nops, sizeof *p.grad_stored);
    plan_grad_alias(g, p.galias);
    plan_fused_adds(g, p.galias);
    p.groot = mc_xcalloc((size_t)m->nops, sizeof *p.groot);
    grad_roots(g, p.galias, p.groot);
    p.ln_sum = mc_xcalloc((size_t)m->nops, sizeof *p.ln_sum);
    p.sum_by_ln = mc_xcalloc((size_t)m->nops, sizeof *p.sum_by_ln);
    plan_ln_sums(g, p.galias, p.groot, p.ln_sum, p.sum_by_ln);
    plan_grad_rooms(g, &p);
    plan_remake(g, &p);
    /* the layer norms whose output is bf16 alone in bf16 precision, and
     * the values recompute = all shares a room for (plan_remake): placed by
     * alloc_half or alloc_act_in (gen_op_cuda) */
    free(g->own_value);
    g->own_value = mc_xcalloc((size_t)m->nops, sizeof *g->own_value);
    for (int i = 0; i < m->nops; i++)
        g->own_value[i] = ln_feeds_product(g, i) || p.vkey[i];
    for (int i = 0; i < m->nops; i++) {
        const size_t at = g->fwd.len;
        gen_op_cuda(g, &p, i);
        p.fwd_text[i] = mc_xstrdup(g->fwd.s ? g->fwd.s + at : "");
    }
    /* the loss's scratch: one float per sample */
    alloc_act(g, "XENT", m->train.batch, "cross-entropy per sample");
    place_halves(g, &p);

    header_comment(c, m, "model.cu", "the forward and backward pass of every op, on the GPU.", o);
    sb_printf(c, "#include <string.h>\n\n#include \"model.h\"\n#include \"kernels.cuh\"\n\n");
    sb_printf(c, "/* B = the batch of this call (at most BATCH); every other shape is fixed.\n"
                 " * A(off): a value in the device activation arena, G(name): the gradient of\n"
                 " * buffer `name' in the gradient arena (name_G: its offset there),\n"
                 " * P(off)/DP(off): a parameter and its gradient, IA(off): routing ints. */\n");
    sb_printf(c, "#define A(off) (d->act + (off))\n#define G(name) (d->dact + name##_G)\n");
    if (p.nhalves)
        sb_printf(c, "/* a buffer kept in bf16 alone in bf16 precision: its offset in the fp32\n"
                     " * layout, and in the bf16 one (DEV_LAYOUT.act_floats16) */\n"
                     "#define LAY16(f, h) (d->lay16 ? (h) : (f))\n");
    sb_printf(c, "#define P(off) (d->param + (off))\n#define DP(off) (d->grad + (off))\n");
    if (m->parallel.expert > 1)
        sb_printf(c, "/* expert parallelism: the arena holds this GPU's experts alone (P's offsets\n"
                     " * are DEV_TENSOR_OFF's); in evaluation, every expert's weights, gathered at\n"
                     " * their offsets of the whole layout (TENSORS') */\n#define PF(off) (d->param_full + (off))\n");
    sb_printf(c, "#define IA(off) (d->iact + (off))\n\n");
    sb_printf(c, "/* ---- the activation arena, laid out for BATCH (offsets in elements) ---- */\n");
    sb_printf(c, "%s\n", g->defs.s ? g->defs.s : "");
    sb_printf(c, "/* ---- the gradient arena: each value's gradient, then the scratch that\n"
                 " * each op's backward reuses for the gradients of its insides ---- */\n");
    sb_printf(c, "%s#define GSCRATCH %lldL\n\n", p.gdefs.s ? p.gdefs.s : "", (long long)p.grad);
    emit_tables(c, g);
    sb_printf(c, "/* each tensor's offset in this GPU's parameter arena%s */\nconst int64_t DEV_TENSOR_OFF[N_TENSORS] = {",
              m->parallel.expert > 1 ? " (of its experts alone, for the experts' tensors)" : " (as in TENSORS)");
    int nt = 0;
    for (int i = 0; i < m->nops; i++)
        for (int t = 0; t < m->ops[i].ntensors; t++, nt++)
            sb_printf(c, "%s%s%lldL", nt ? "," : "", nt % 8 == 0 ? "\n    " : " ", (long long)toff(g, i, t));
    sb_printf(c, "\n};\n");
    sb_printf(c, "/* 1 where the backward's one writer of the tensor's gradient stores it whole\n"
                 " * (moe_experts_backward's dw1, dw2): the step zeroes the others' alone */\n"
                 "const unsigned char GRAD_STORED[N_TENSORS] = {");
    nt = 0;
    for (int i = 0; i < m->nops; i++)
        for (int t = 0; t < m->ops[i].ntensors; t++, nt++)
            sb_printf(c, "%s%s%d", nt ? "," : "", nt % 16 == 0 ? "\n    " : " ", (p.grad_stored[i] >> t) & 1u);
    sb_printf(c, "\n};\n");

    /* the layout backend.cu allocates. The operand scratch (bf16
     * precision) holds a product's fp32 operands rounded to bf16: each lies
     * in one buffer, each 256-byte aligned (kernels.cuh: CAST_ROUND). Such
     * an operand is an fp32 activation (alloc_act's: g->max_act), a
     * value's gradient (its room: plan_grad_rooms), an inside buffer's
     * gradient (as large as the buffer), or a parameter tensor (whole, in
     * evaluation under expert parallelism). The values alloc_half places
     * are bf16 in that precision, and so are their insides' gradients
     * where a product reads them (moe_x16, moe_a16, bf16_half: the
     * products take them as they are); bf16_operand stops the trainer
     * should one not fit. */
    int64_t largest = g->max_act;
    for (int i = 0; i < m->nops; i++) {
        if (p.gsize[i] > largest)
            largest = p.gsize[i];
        for (int t = 0; t < m->ops[i].ntensors; t++)
            if (m->ops[i].tensors[t].numel > largest)
                largest = m->ops[i].tensors[t].numel;
    }
    const dev_sizes z = { g->params, g->act_floats, p.act16, p.grad + p.scr_max, g->int_slots ? g->int_slots : 16,
                          p.dacc, p.stats ? p.stats : 1, p.red, 2 * largest + 128, p.xchg ? p.xchg : 1 };
    sb_printf(c, "\nconst dev_layout DEV_LAYOUT = {\n    %lldL, /* params */\n", (long long)z.params);
    sb_printf(c, "    %lldL, /* act_floats */\n    %lldL, /* act_floats16: in bf16 precision */\n", (long long)z.act,
              (long long)z.act16);
    sb_printf(c, "    %lldL, /* grad_floats */\n    %lldL, /* int_slots */\n", (long long)z.grad, (long long)z.ints);
    sb_printf(c, "    %lldL, /* dacc: doubles */\n    %lldL, /* stats: u64 */\n", (long long)z.dacc, (long long)z.stats);
    sb_printf(c, "    %lldL, /* red_floats */\n    %lldL, /* cast_elems */\n    %lldL, /* xchg_elems */\n",
              (long long)z.red, (long long)z.cast, (long long)z.xchg);
    if (mem)
        plan_memory(mem, m, &z);
    sb_printf(c, "    %lld, /* eval_batch */\n", (long long)p.eval_batch);
    sb_printf(c, "    V%d, /* logits */\n    V%d_G, /* their gradient */\n    XENT, /* per-sample loss */\n", m->nops - 1,
              m->nops - 1);
    sb_printf(c, "    {");
    for (int j = 0; j < nmoe; j++)
        sb_printf(c, "%s%lldL", j ? ", " : " ", (long long)(g->nmoe ? p.st[j] : 0));
    sb_printf(c, " }, /* stats of each MoE layer */\n    {");
    for (int j = 0; j < nmoe; j++)
        sb_printf(c, "%s%lldL", j ? ", " : " ", (long long)(g->nmoe ? p.ent[j] : 0));
    sb_printf(c, " }, /* entropy sum of each MoE layer (dacc) */\n    {");
    int j = 0;
    for (int i = 0; i < m->nops; i++)
        if (m->ops[i].kind == OP_MOE)
            sb_printf(c, "%sAUX%d", j++ ? ", " : " ", i);
    if (!g->nmoe)
        sb_printf(c, " 0");
    sb_printf(c, " }, /* auxiliary losses of each MoE layer (act) */\n};\n\n");

    /* the tables on the device */
    sb_printf(c, "void dev_init_tables(const kctx *k, dev_model *d)\n{\n");
    for (int i = 0; i < m->nops; i++) {
        const mc_op *op = &m->ops[i];
        if (op->kind == OP_POS_EMBED && !op->u.pos.learned)
            sb_printf(c, "    sincos_table(k, A(POS%d), %d, %d, %d, %d);\n", i, op->in.gh, op->in.gw, op->in.dim,
                      op->in.cls ? 1 : 0);
        if (op->kind == OP_MOE && op->u.moe.dataset_expert)
            sb_printf(c, "    CUDA_CHECK(cudaMemcpyAsync(d->maps + %d, MOE%d_MAP, sizeof MOE%d_MAP, "
                         "cudaMemcpyHostToDevice, k->stream));\n",
                      g->moe_index[i] * m->ndatasets, g->moe_index[i], g->moe_index[i]);
        if (op->kind == OP_CLASSIFIER && op->u.cls.heads == HEADS_PER_DATASET)
            sb_printf(c, "    CUDA_CHECK(cudaMemcpyAsync(d->head_off, HEAD_W, sizeof HEAD_W, cudaMemcpyHostToDevice, "
                         "k->stream));\n    CUDA_CHECK(cudaMemcpyAsync(d->head_off + N_DATASETS, HEAD_B, sizeof HEAD_B, "
                         "cudaMemcpyHostToDevice, k->stream));\n");
        /* the attention kernels' shared memory, once per shape (plain
         * and window attention alike) */
        int T, HD, NH;
        bool first = attn_shape(op, &T, &HD, &NH);
        for (int q = 0; q < i && first; q++) {
            int T2, HD2, NH2;
            if (attn_shape(&m->ops[q], &T2, &HD2, &NH2) && T2 == T && HD2 == HD && NH2 == NH)
                first = false;
        }
        if (first)
            sb_printf(c, "    attention_setup<%d, %d, %d>();\n", T, HD, NH);
        /* a layer norm wider than the default shared memory allows, once
         * per width */
        bool wide = ln_width(op) > CUDA_LN_DEFAULT_WIDTH;
        for (int q = 0; q < i && wide; q++)
            if (ln_width(&m->ops[q]) == ln_width(op))
                wide = false;
        if (wide)
            sb_printf(c, "    layernorm_setup<%d>();\n", ln_width(op));
    }
    sb_printf(c, "    CUDA_CHECK(cudaMemcpyAsync(d->classes, DATASET_CLASSES, sizeof DATASET_CLASSES, "
                 "cudaMemcpyHostToDevice, k->stream));\n");
    sb_printf(c, "    (void)d;\n}\n\n");
    sb_printf(c, "void dev_forward(const kctx *k, dev_model *d, int B, int train)\n{\n");
    sb_printf(c, "    [[maybe_unused]] const float *x = d->x;\n    [[maybe_unused]] const int32_t *dataset = d->dataset;\n");
    sb_printf(c, "    (void)train;\n");
    sb_printf(c, "%s", g->fwd.s ? g->fwd.s : "");
    sb_printf(c, "}\n\n/* after dev_forward(train) and with the logits' gradient written; the parameter\n"
                 " * gradients are accumulated (backend.cu zeroes them first) */\n");
    sb_printf(c, "void dev_backward(const kctx *k, dev_model *d, int B)\n{\n");
    sb_printf(c, "    [[maybe_unused]] const float *x = d->x;\n    [[maybe_unused]] const int32_t *dataset = d->dataset;\n");
    /* data parallelism: a range of parameter gradients is averaged over the
     * processes (backend.cu's grad_ready, on its own stream) as soon as the
     * backward pass is done with it - the parameters lie in op order and the
     * backward runs the ops in reverse - in buckets of at least
     * parallel(bucket_mib), overlapped with the rest of the backward */
    int64_t pending = g->params; /* gradients [lo, pending) are final */
    int64_t bucket = (int64_t)(m->parallel.bucket_mib * 1048576.0 / sizeof(float));
    if (bucket < 1)
        bucket = 1;
    for (int i = m->nops - 1; i >= 0; i--) {
        if (g->bwd[i] && g->bwd[i][0])
            sb_printf(c, "%s", g->bwd[i]);
        const int64_t lo = g->param_off[i];
        if (m->parallel.data > 1 && m->ops[i].ntensors > 0 && (pending - lo >= bucket || lo == 0)) {
            sb_printf(c, "    d->grad_ready(k, d, %lldL, %lldL); /* parameters [%lld, %lld): averaged over the GPUs */\n",
                      (long long)lo, (long long)pending, (long long)lo, (long long)pending);
            pending = lo;
        }
    }
    sb_printf(c, "}\n");
    sb_free(&p.gdefs);
    free(p.ent);
    free(p.sums);
    free(p.st);
    free(p.galias);
    free(p.grad_stored);
    free(p.ln_sum);
    free(p.sum_by_ln);
    free(p.groot);
    for (int i = 0; i < m->nops; i++)
        free(p.fwd_text[i]);
    free(p.fwd_text);
    free(p.vkey);
    free(p.remade_by);
    free(p.remake_of);
    free(p.goff);
    free(p.gsize);
    free(p.halves);
}
