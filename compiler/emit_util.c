/* emit_util.c: what the CPU and CUDA emitters share (emit_int.h). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emit_int.h"

/* ---- a growing string ---------------------------------------------------- */

void sb_printf(sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->cap - b->len;
        int n = vsnprintf(b->s ? b->s + b->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        b->cap = (b->cap + (size_t)n + 1) * 2;
        b->s = mc_xrealloc(b->s, b->cap);
    }
}

void sb_free(sbuf *b)
{
    free(b->s);
    memset(b, 0, sizeof *b);
}

/* ---- the plan and the code ------------------------------------------------ */

int64_t alloc_act(gen *g, const char *name, int64_t floats, const char *what)
{
    int64_t off = g->act_floats;
    g->act_floats += ROOM_FLOATS(floats);
    if (floats > g->max_act)
        g->max_act = floats;
    sb_printf(&g->defs, "#define %-16s %12lldL /* %s */\n", name, (long long)off, what);
    return off;
}

void alloc_int(gen *g, const char *name, int64_t n, const char *what)
{
    int64_t off = g->int_slots;
    g->int_slots += (n + 15) & ~(int64_t)15;
    sb_printf(&g->defs, "#define %-16s %12lldL /* int32 %s */\n", name, (long long)off, what);
}

int64_t tnumel(const gen *g, const mc_tensor *t)
{
    return t->expert ? t->numel / g->shard : t->numel;
}

/* the offset of tensor j of op i in the whole (checkpoint's) layout */
int64_t toff_whole(const gen *g, int i, int j)
{
    int64_t off = 0;
    for (int q = 0; q < i; q++)
        for (int k = 0; k < g->m->ops[q].ntensors; k++)
            off += g->m->ops[q].tensors[k].numel;
    for (int k = 0; k < j; k++)
        off += g->m->ops[i].tensors[k].numel;
    return off;
}

/* the offset of tensor j of op i in the parameter arena */
int64_t toff(const gen *g, int i, int j)
{
    int64_t off = g->param_off[i];
    for (int k = 0; k < j; k++)
        off += tnumel(g, &g->m->ops[i].tensors[k]);
    return off;
}

int tokens_of(const mc_shape *s)
{
    return s->kind == SHAPE_TOKENS ? s->tokens : 1;
}

const char *act_code(mc_act a)
{
    switch (a) {
    case ACT_RELU: return "ACT_RELU";
    case ACT_SILU: return "ACT_SILU";
    default: return "ACT_GELU";
    }
}

/* "A(V3)" for value v, or "x" for the image */
void val_ref(char *buf, size_t n, int v, bool grad)
{
    if (v < 0)
        snprintf(buf, n, "x");
    else
        snprintf(buf, n, "%s(V%d)", grad ? "G" : "A", v);
}

/* Whether op i is the first (in backward order) to write the gradient of
 * value v: then it overwrites, otherwise it accumulates. */
int acc_flag(const gen *g, int i, int v)
{
    return g->last_use[v] == i ? 0 : 1;
}

static void plan_values(gen *g)
{
    const mc_model *m = g->m;
    int cur = -1;
    int stack[64], sp = 0;
    for (int i = 0; i < m->nops; i++) {
        const mc_op *op = &m->ops[i];
        g->input[i] = cur;
        g->skip[i] = -1;
        switch (op->kind) {
        case OP_INPUT:
            g->value[i] = -1;
            break;
        case OP_RESIDUAL_BEGIN:
            stack[sp++] = cur;
            g->value[i] = cur;
            break;
        case OP_RESIDUAL_END:
            g->skip[i] = stack[--sp];
            g->value[i] = i;
            break;
        default:
            g->value[i] = i;
            break;
        }
        cur = g->value[i];
    }
    for (int i = 0; i < m->nops; i++)
        g->last_use[i] = g->last_reader[i] = -1;
    for (int i = 0; i < m->nops; i++) {
        if (m->ops[i].kind == OP_RESIDUAL_BEGIN || m->ops[i].kind == OP_INPUT)
            continue;
        if (g->input[i] >= 0) {
            g->last_use[g->input[i]] = g->last_reader[g->input[i]] = i;
            g->uses[g->input[i]]++;
        }
        if (g->skip[i] >= 0) {
            g->last_use[g->skip[i]] = i;
            g->uses[g->skip[i]]++;
        }
    }
}

bool op_begin(gen *g, int i, op_ctx *c, sbuf *b)
{
    const mc_op *op = &g->m->ops[i];
    if (op->kind == OP_INPUT || op->kind == OP_RESIDUAL_BEGIN)
        return false;
    const mc_shape *si = &op->in, *so = &op->out;
    memset(c, 0, sizeof *c);
    val_ref(c->in, sizeof c->in, g->input[i], false);
    val_ref(c->din, sizeof c->din, g->input[i], true);
    val_ref(c->out, sizeof c->out, i, false);
    val_ref(c->dout, sizeof c->dout, i, true);
    c->T = tokens_of(si);
    c->D = si->kind == SHAPE_IMAGE ? si->c : si->dim;
    c->acc = g->input[i] >= 0 ? acc_flag(g, i, g->input[i]) : 0;
    snprintf(c->what, sizeof c->what, "%s%s%s", mc_op_name(op->kind), op->prefix[0] ? " " : "", op->prefix);
    snprintf(c->name, sizeof c->name, "V%d", i);
    if (op->kind != OP_CLASSIFIER) {
        int64_t per = (int64_t)tokens_of(so) * (so->kind == SHAPE_IMAGE ? so->c * so->h * so->w : so->dim);
        c->floats = g->m->train.batch * per;
        if ((!g->fuse_into || g->fuse_into[i] < 0) && !(g->own_value && g->own_value[i]))
            alloc_act(g, c->name, c->floats, c->what);
    }
    sbuf *f = &g->fwd;
    sb_printf(f, "    /* %d: %s -> ", i, c->what);
    switch (so->kind) {
    case SHAPE_TOKENS: sb_printf(f, "[B, %d, %d] */\n", so->tokens, so->dim); break;
    case SHAPE_VECTOR: sb_printf(f, "[B, %d] */\n", so->dim); break;
    case SHAPE_LOGITS: sb_printf(f, "[B, %d] logits */\n", so->dim); break;
    case SHAPE_IMAGE: sb_printf(f, "[B, %d, %d, %d] */\n", so->c, so->h, so->w); break;
    }
    sb_printf(b, "    /* %d: %s */\n", i, c->what);
    return true;
}

/* A float literal for C: 0.02f, 1e-05f, 0.0f (shortest form that reads back). */

flit_buf flit(double v)
{
    flit_buf b;
    float f = (float)v;
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(b.s, sizeof b.s, "%.*g", prec, (double)f);
        if ((float)strtod(b.s, NULL) == f)
            break;
    }
    if (!strpbrk(b.s, ".eEn"))
        strcat(b.s, ".0");
    strcat(b.s, "f");
    return b;
}

char *sb_take(sbuf *b)
{
    char *s = b->s ? b->s : mc_xstrdup("");
    memset(b, 0, sizeof *b);
    return s;
}

/* ---- the files -------------------------------------------------------------------- */

void header_comment(sbuf *b, const mc_model *m, const char *file, const char *what,
                           const mc_emit_opts *o)
{
    sb_printf(b, "/* %s: %s\n * Generated by moecc %s from %s. Do not edit: change the .moe file and\n"
                 " * run moecc again. */\n",
              file, what, o->moecc_version, m->source_path);
}

void gen_init(gen *g, const mc_model *m, int shard)
{
    memset(g, 0, sizeof *g);
    g->m = m;
    g->shard = shard > 0 ? shard : 1;
    size_t n = (size_t)m->nops;
    g->param_off = mc_xcalloc(n, sizeof *g->param_off);
    g->value = mc_xcalloc(n, sizeof *g->value);
    g->input = mc_xcalloc(n, sizeof *g->input);
    g->skip = mc_xcalloc(n, sizeof *g->skip);
    g->last_use = mc_xcalloc(n, sizeof *g->last_use);
    g->uses = mc_xcalloc(n, sizeof *g->uses);
    g->last_reader = mc_xcalloc(n, sizeof *g->last_reader);
    g->bwd = mc_xcalloc(n, sizeof *g->bwd);
    g->moe_index = mc_xcalloc(n, sizeof *g->moe_index);
    int64_t off = 0;
    for (int i = 0; i < m->nops; i++) {
        g->param_off[i] = off;
        for (int j = 0; j < m->ops[i].ntensors; j++)
            off += tnumel(g, &m->ops[i].tensors[j]);
        g->moe_index[i] = m->ops[i].kind == OP_MOE ? g->nmoe++ : -1;
    }
    g->params = off;
    plan_values(g);
}

void gen_free(gen *g)
{
    sb_free(&g->defs);
    sb_free(&g->fwd);
    for (int i = 0; i < g->m->nops; i++)
        free(g->bwd[i]);
    free(g->bwd);
    free(g->param_off);
    free(g->value);
    free(g->input);
    free(g->skip);
    free(g->last_use);
    free(g->uses);
    free(g->last_reader);
    free(g->moe_index);
    free(g->fuse_into);
    free(g->own_value);
}

bool load_plan_init(gen *g, int i, int64_t NB, load_plan *l)
{
    const mc_moe *x = &g->m->ops[i].u.moe;
    const int E = x->experts;
    snprintf(l->clean, sizeof l->clean, "CLEAN%d", i);
    snprintf(l->dens, sizeof l->dens, "LDENS%d", i);
    snprintf(l->thr, sizeof l->thr, "LTHR%d", i);
    if (!(x->load_loss > 0))
        return false;
    alloc_act(g, l->clean, NB * E, "router logits before the gate noise");
    alloc_act(g, l->dens, NB * E, "load loss: each choice's density at its threshold");
    alloc_int(g, l->thr, NB * 2, "load loss: the experts at each token's two thresholds");
    return true;
}

void wattn_plan_init(const gen *g, int i, wattn_plan *w, const char *null_word)
{
    const mc_op *op = &g->m->ops[i];
    memset(w, 0, sizeof *w);
    w->NH = op->u.wattn.heads;
    w->HD = op->in.dim / w->NH;
    w->WS = op->u.wattn.window;
    w->GH = op->in.gh;
    w->GW = op->in.gw;
    w->NW = (w->GH / w->WS) * (w->GW / w->WS);
    w->WT = w->WS * w->WS;
    w->gq = op->u.wattn.global_query;
    w->qb = op->u.wattn.qkv_bias;
    w->proj = (w->gq ? 2 : 3) * op->in.dim;
    snprintf(w->qkvw, sizeof w->qkvw, "QKVW%d", i);
    snprintf(w->att, sizeof w->att, "ATT%d", i);
    snprintf(w->yw, sizeof w->yw, "YW%d", i);
    snprintf(w->y, sizeof w->y, "Y%d", i);
    snprintf(w->kv, sizeof w->kv, "%s%d", w->gq ? "KV" : "QKV", i);
    snprintf(w->gt, sizeof w->gt, "GTOK%d", i);
    snprintf(w->q, sizeof w->q, "GQ%d", i);
    int t = 0;
    w->w_in = toff(g, i, t++);
    w->b_in = w->qb ? toff(g, i, t++) : -1;
    w->w_gq = w->gq ? toff(g, i, t++) : -1;
    w->b_gq = w->gq ? toff(g, i, t++) : -1;
    w->w_p = toff(g, i, t++);
    w->b_p = toff(g, i, t++);
    if (w->qb) {
        snprintf(w->bi, sizeof w->bi, "P(%lldL)", w->b_in);
        snprintf(w->dbi, sizeof w->dbi, "DP(%lldL)", w->b_in);
    } else {
        snprintf(w->bi, sizeof w->bi, "%s", null_word);
        snprintf(w->dbi, sizeof w->dbi, "%s", null_word);
    }
}
