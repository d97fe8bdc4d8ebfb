/* emit.c: the CPU backend - from the checked model to model.h and model.c.
 *
 * The plan: every value flowing between ops gets a buffer in one float
 * arena (activations), laid out at compile time for the compiled batch;
 * the gradient of each value lives at the same offset of a second arena.
 * Parameters, their gradients and the optimizer state are three more
 * arenas with the layout of the tensor table. The forward pass is the ops
 * in order, the backward pass the ops in reverse; a gradient buffer is
 * overwritten by the first op that produces it and accumulated into by
 * the others, so nothing is zeroed in the step. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "emit_int.h"

/* ---- what the CPU backend generates ------------------------------------------ */

int mc_emit_check(const mc_model *m, mc_diag *d)
{
    int errors = 0;
    for (int i = 0; i < m->nops; i++) {
        const mc_op *op = &m->ops[i];
        const char *what = NULL;
        switch (op->kind) {
        case OP_ATTENTION:
            /* checked by sema, not generated: refused rather than dropped */
            if (op->u.attn.dropout > 0) {
                mc_report(d, MC_ERROR, op->loc, "the CPU backend does not generate attention(dropout = ...) yet");
                mc_hint(d, "a dropout(p = %g) layer after it is generated (on the attention's output, not its weights)",
                        op->u.attn.dropout);
                errors++;
            }
            break;
        case OP_MOE: {
            const mc_moe *x = &op->u.moe;
            if (x->router == ROUTER_LOSS_BASED) {
                mc_report(d, MC_ERROR, op->loc, "the CPU backend does not generate router = %s() yet",
                          mc_router_name(x->router));
                mc_hint(d, "every other router is generated; loss_based is checked but not compiled yet");
                errors++;
            }
            break;
        }
        default:
            break;
        }
        if (what) {
            mc_report(d, MC_ERROR, op->loc, "the CPU backend does not generate %s yet", what);
            mc_hint(d, "the model is checked, but this layer is not compiled yet");
            errors++;
        }
        if (errors)
            break; /* one place is enough to say why */
    }
    return errors;
}

/* A layer norm of rows rows per sample, D wide: out from in, its means and
 * 1/std kept in MEAN<i> and RSTD<i>; weight and bias at w and bias of the
 * parameter arena. The forward line goes to g->fwd, the backward's to b. */
static void gen_layernorm(gen *g, int i, sbuf *b, const char *out, const char *in, const char *din, const char *dout,
                          int64_t w, int64_t bias, int rows, int D, double eps, int acc)
{
    char mean[32], rstd[32];
    snprintf(mean, sizeof mean, "MEAN%d", i);
    snprintf(rstd, sizeof rstd, "RSTD%d", i);
    alloc_act(g, mean, (int64_t)g->m->train.batch * rows, "layer norm means");
    alloc_act(g, rstd, (int64_t)g->m->train.batch * rows, "layer norm 1/std");
    sb_printf(&g->fwd, "    layernorm_forward(%s, A(%s), A(%s), %s, P(%lldL), P(%lldL), B * %d, %d, %s);\n", out, mean,
              rstd, in, (long long)w, (long long)bias, rows, D, flit(eps).s);
    sb_printf(b, "    layernorm_backward(%s, DP(%lldL), DP(%lldL), %s, %s, P(%lldL), A(%s), A(%s), B * %d, %d, %d);\n",
              din, (long long)w, (long long)bias, dout, in, (long long)w, mean, rstd, rows, D, acc);
}

/* Window attention (Swin without the shift, and GCViT's global form): the
 * tokens' projections are put in window order, each window is a sequence of
 * attention_forward's, and the heads' outputs go back to grid order. The
 * global form's queries are attn.global_query of the grid averaged to one
 * window (grid_pool), the same for every window of a sample. */
static void gen_window_attention(gen *g, int i, const op_ctx *c, sbuf *b)
{
    sbuf *f = &g->fwd;
    const int64_t BATCH = g->m->train.batch;
    const int T = c->T, D = c->D;
    wattn_plan w;
    wattn_plan_init(g, i, &w, "NULL");
    const int GH = w.GH, GW = w.GW, WS = w.WS, NW = w.NW, WT = w.WT, NH = w.NH;
    alloc_act(g, w.kv, BATCH * T * w.proj, w.gq ? "keys, values (grid order)" : "queries, keys, values (grid order)");
    alloc_act(g, w.qkvw, BATCH * T * 3 * D, "queries, keys, values (window order)");
    alloc_act(g, w.att, BATCH * NW * NH * WT * WT, "attention weights");
    alloc_act(g, w.yw, BATCH * T * D, "heads' outputs (window order)");
    alloc_act(g, w.y, BATCH * T * D, "heads' outputs (grid order)");

    sb_printf(f, "    linear_forward(A(%s), %s, P(%lldL), %s, B * %d, %d, %d);\n", w.kv, c->in, w.w_in, w.bi, T, D,
              w.proj);
    if (w.gq) {
        alloc_act(g, w.gt, BATCH * WT * D, "global tokens (the grid pooled to a window)");
        alloc_act(g, w.q, BATCH * WT * D, "global queries");
        sb_printf(f, "    grid_pool_forward(A(%s), %s, B, %d, %d, %d, %d);\n", w.gt, c->in, GH, GW, WS, D);
        sb_printf(f, "    linear_forward(A(%s), A(%s), P(%lldL), P(%lldL), B * %d, %d, %d);\n", w.q, w.gt, w.w_gq,
                  w.b_gq, WT, D, D);
        sb_printf(f, "    global_window_qkv(A(%s), A(%s), A(%s), B, %d, %d, %d, %d);\n", w.qkvw, w.q, w.kv, GH, GW, WS,
                  D);
    } else {
        sb_printf(f, "    window_permute(A(%s), A(%s), B, %d, %d, %d, %d, 1, 0);\n", w.qkvw, w.kv, GH, GW, WS, 3 * D);
    }
    sb_printf(f, "    attention_forward(A(%s), A(%s), A(%s), B * %d, %d, %d, %d);\n", w.yw, w.att, w.qkvw, NW, WT, D,
              NH);
    sb_printf(f, "    window_permute(A(%s), A(%s), B, %d, %d, %d, %d, 0, 0);\n", w.y, w.yw, GH, GW, WS, D);
    sb_printf(f, "    linear_forward(%s, A(%s), P(%lldL), P(%lldL), B * %d, %d, %d);\n", c->out, w.y, w.w_p, w.b_p, T,
              D, D);

    sb_printf(b, "    linear_backward(G(%s), DP(%lldL), DP(%lldL), %s, A(%s), P(%lldL), B * %d, %d, %d, 0);\n", w.y,
              w.w_p, w.b_p, c->dout, w.y, w.w_p, T, D, D);
    sb_printf(b, "    window_permute(G(%s), G(%s), B, %d, %d, %d, %d, 1, 0);\n", w.yw, w.y, GH, GW, WS, D);
    sb_printf(b, "    attention_backward(G(%s), G(%s), G(%s), A(%s), A(%s), B * %d, %d, %d, %d);\n", w.qkvw, w.att,
              w.yw, w.qkvw, w.att, NW, WT, D, NH);
    if (w.gq) {
        sb_printf(b, "    global_window_qkv_backward(G(%s), G(%s), G(%s), B, %d, %d, %d, %d);\n", w.q, w.kv, w.qkvw,
                  GH, GW, WS, D);
        sb_printf(b, "    linear_backward(G(%s), DP(%lldL), DP(%lldL), G(%s), A(%s), P(%lldL), B * %d, %d, %d, 0);\n",
                  w.gt, w.w_gq, w.b_gq, w.q, w.gt, w.w_gq, WT, D, D);
    } else {
        sb_printf(b, "    window_permute(G(%s), G(%s), B, %d, %d, %d, %d, 0, 0);\n", w.kv, w.qkvw, GH, GW, WS, 3 * D);
    }
    sb_printf(b, "    linear_backward(%s, DP(%lldL), %s, G(%s), %s, P(%lldL), B * %d, %d, %d, %d);\n", c->din, w.w_in,
              w.dbi, w.kv, c->in, w.w_in, T, D, w.proj, c->acc);
    if (w.gq) /* the queries' share of the input's gradient, added */
        sb_printf(b, "    grid_pool_backward(%s, G(%s), B, %d, %d, %d, %d, 1);\n", c->din, w.gt, GH, GW, WS, D);
}

/* The code of op i: forward into g->fwd, backward into g->bwd[i]. */
static void gen_op(gen *g, int i)
{
    const mc_model *m = g->m;
    const mc_op *op = &m->ops[i];
    sbuf *f = &g->fwd;
    sbuf b = { 0 };
    op_ctx c;
    if (!op_begin(g, i, &c, &b))
        return;
    const char *in = c.in, *din = c.din, *out = c.out, *dout = c.dout, *name = c.name;
    const mc_shape *si = &op->in, *so = &op->out;
    const int T = c.T, D = c.D, acc = c.acc;
    const int64_t BATCH = m->train.batch;

    switch (op->kind) {
    case OP_PATCH_EMBED: {
        const int P = op->u.patch.patch, CPP = si->c * P * P, TT = so->tokens;
        char cols[32];
        snprintf(cols, sizeof cols, "COLS%d", i);
        alloc_act(g, cols, BATCH * TT * CPP, "patches (im2col)");
        sb_printf(f, "    patch_embed_forward(%s, A(%s), %s, P(%lldL), P(%lldL), B, %d, %d, %d, %d, %d);\n",
                  out, cols, in, (long long)toff(g, i, 0), (long long)toff(g, i, 1), si->c, si->h, si->w, P, so->dim);
        sb_printf(&b, "    patch_embed_backward(DP(%lldL), DP(%lldL), %s, A(%s), B, %d, %d, %d, %d, %d);\n",
                  (long long)toff(g, i, 0), (long long)toff(g, i, 1), dout, cols, si->c, si->h, si->w, P, so->dim);
        if (g->input[i] >= 0) /* the image a convolution stem made has a gradient */
            sb_printf(&b, "    patch_embed_input_backward(%s, G(%s), %s, P(%lldL), B, %d, %d, %d, %d, %d, %d);\n", din,
                      cols, dout, (long long)toff(g, i, 0), si->c, si->h, si->w, P, so->dim, acc);
        break;
    }
    case OP_CONV_STEM: {
        /* each convolution: im2col rows (channels-last between the layers),
         * one product, GELU; the last layer's output turned channels-first */
        const int K = op->u.conv.kernel, L = op->u.conv.layers, OH = so->h, OW = so->w, C = so->c;
        const int64_t rows = BATCH * OH * OW;
        for (int l = 0; l < L; l++) {
            char cols[32], pre[32], post[32], prev[32];
            const int cin = l == 0 ? si->c : C;
            snprintf(cols, sizeof cols, "COLS%d_%d", i, l + 1);
            snprintf(pre, sizeof pre, "CONV%d_%d", i, l + 1);
            snprintf(post, sizeof post, "GELU%d_%d", i, l + 1);
            snprintf(prev, sizeof prev, "A(GELU%d_%d)", i, l);
            alloc_act(g, cols, rows * cin * K * K, "convolution inputs (im2col)");
            alloc_act(g, pre, rows * C, "convolution outputs, channels last");
            alloc_act(g, post, rows * C, "after GELU, channels last");
            if (l == 0)
                sb_printf(f, "    conv_im2col(A(%s), %s, B, %d, %d, %d, %d, %d, %d, 0);\n", cols, in, cin, si->h, si->w,
                          K, op->u.conv.stride, K / 2);
            else
                sb_printf(f, "    conv_im2col(A(%s), %s, B, %d, %d, %d, %d, 1, %d, 1);\n", cols, prev, cin, OH, OW, K,
                          K / 2);
            sb_printf(f, "    linear_forward(A(%s), A(%s), P(%lldL), P(%lldL), B * %d, %d, %d);\n", pre, cols,
                      (long long)toff(g, i, 2 * l), (long long)toff(g, i, 2 * l + 1), OH * OW, cin * K * K, C);
            sb_printf(f, "    act_forward(A(%s), A(%s), (size_t)B * %d, ACT_GELU);\n", post, pre, OH * OW * C);
        }
        sb_printf(f, "    transpose_rc(%s, A(GELU%d_%d), B, %d, %d, 0);\n", out, i, L, OH * OW, C);
        sb_printf(&b, "    transpose_rc(G(GELU%d_%d), %s, B, %d, %d, 0);\n", i, L, dout, C, OH * OW);
        for (int l = L - 1; l >= 0; l--) {
            const int cin = l == 0 ? si->c : C;
            const bool dinput = l > 0 || g->input[i] >= 0;
            sb_printf(&b, "    act_backward(G(CONV%d_%d), G(GELU%d_%d), A(CONV%d_%d), (size_t)B * %d, ACT_GELU, 0);\n",
                      i, l + 1, i, l + 1, i, l + 1, OH * OW * C);
            char dcols[40];
            snprintf(dcols, sizeof dcols, dinput ? "G(COLS%d_%d)" : "NULL", i, l + 1);
            sb_printf(&b,
                      "    linear_backward(%s, DP(%lldL), DP(%lldL), G(CONV%d_%d), A(COLS%d_%d), P(%lldL), B * %d, %d, "
                      "%d, 0);\n",
                      dcols, (long long)toff(g, i, 2 * l), (long long)toff(g, i, 2 * l + 1), i, l + 1, i, l + 1,
                      (long long)toff(g, i, 2 * l), OH * OW, cin * K * K, C);
            if (l > 0)
                sb_printf(&b, "    conv_col2im(G(GELU%d_%d), G(COLS%d_%d), B, %d, %d, %d, %d, 1, %d, 1, 0);\n", i, l,
                          i, l + 1, cin, OH, OW, K, K / 2);
            else if (dinput)
                sb_printf(&b, "    conv_col2im(%s, G(COLS%d_1), B, %d, %d, %d, %d, %d, %d, 0, %d);\n", din, i, cin,
                          si->h, si->w, K, op->u.conv.stride, K / 2, acc);
        }
        break;
    }
    case OP_WINDOW_ATTENTION:
        gen_window_attention(g, i, &c, &b);
        break;
    case OP_DOWNSAMPLE: {
        const int GH = si->gh, GW = si->gw, T4 = so->tokens, D4 = 4 * D;
        char mrg[32], nrm[32];
        snprintf(mrg, sizeof mrg, "MERGE%d", i);
        snprintf(nrm, sizeof nrm, "MNORM%d", i);
        alloc_act(g, mrg, BATCH * T4 * D4, "2x2 neighbourhoods, concatenated");
        alloc_act(g, nrm, BATCH * T4 * D4, "normalised");
        const long long rw = toff(g, i, 2);
        char a_mrg[40], a_nrm[40], g_mrg[40], g_nrm[40];
        snprintf(a_mrg, sizeof a_mrg, "A(%s)", mrg);
        snprintf(a_nrm, sizeof a_nrm, "A(%s)", nrm);
        snprintf(g_mrg, sizeof g_mrg, "G(%s)", mrg);
        snprintf(g_nrm, sizeof g_nrm, "G(%s)", nrm);
        sb_printf(f, "    merge2x2_forward(A(%s), %s, B, %d, %d, %d);\n", mrg, in, GH, GW, D);
        /* the norm's backward lines come after the reduction's (below) */
        sbuf nb = { 0 };
        gen_layernorm(g, i, &nb, a_nrm, a_mrg, g_mrg, g_nrm, toff(g, i, 0), toff(g, i, 1), T4, D4, 1e-5, 0);
        sb_printf(f, "    linear_forward(%s, A(%s), P(%lldL), NULL, B * %d, %d, %d);\n", out, nrm, rw, T4, D4, so->dim);
        sb_printf(&b, "    linear_backward(G(%s), DP(%lldL), NULL, %s, A(%s), P(%lldL), B * %d, %d, %d, 0);\n", nrm, rw,
                  dout, nrm, rw, T4, D4, so->dim);
        sb_printf(&b, "%s", nb.s ? nb.s : "");
        sb_free(&nb);
        sb_printf(&b, "    merge2x2_backward(%s, G(%s), B, %d, %d, %d, %d);\n", din, mrg, GH, GW, D, acc);
        break;
    }
    case OP_CLS_TOKEN:
        sb_printf(f, "    cls_token_forward(%s, %s, P(%lldL), B, %d, %d);\n", out, in, (long long)toff(g, i, 0), T, D);
        sb_printf(&b, "    cls_token_backward(%s, DP(%lldL), %s, B, %d, %d, %d);\n", din, (long long)toff(g, i, 0),
                  dout, T, D, acc);
        break;
    case OP_POS_EMBED:
        if (op->u.pos.learned) {
            sb_printf(f, "    pos_embed_forward(%s, %s, P(%lldL), B, %d, %d);\n", out, in, (long long)toff(g, i, 0), T, D);
            sb_printf(&b, "    pos_embed_backward(%s, DP(%lldL), %s, B, %d, %d, %d);\n", din, (long long)toff(g, i, 0),
                      dout, T, D, acc);
        } else {
            char tab[32];
            snprintf(tab, sizeof tab, "POS%d", i);
            alloc_act(g, tab, (int64_t)T * D, "fixed sine-cosine positions");
            sb_printf(f, "    pos_embed_forward(%s, %s, A(%s), B, %d, %d);\n", out, in, tab, T, D);
            sb_printf(&b, "    pos_embed_backward(%s, NULL, %s, B, %d, %d, %d);\n", din, dout, T, D, acc);
        }
        break;
    case OP_LAYERNORM:
        gen_layernorm(g, i, &b, out, in, din, dout, toff(g, i, 0), toff(g, i, 1), T, D, op->u.ln.eps, acc);
        break;
    case OP_ATTENTION: {
        const int NH = op->u.attn.heads;
        const bool qb = op->u.attn.qkv_bias;
        char qkv[32], att[32], y[32];
        snprintf(qkv, sizeof qkv, "QKV%d", i);
        snprintf(att, sizeof att, "ATT%d", i);
        snprintf(y, sizeof y, "Y%d", i);
        alloc_act(g, qkv, BATCH * T * 3 * D, "queries, keys, values");
        alloc_act(g, att, BATCH * NH * T * T, "attention weights");
        alloc_act(g, y, BATCH * T * D, "heads' outputs");
        int64_t w_qkv = toff(g, i, 0), b_qkv = qb ? toff(g, i, 1) : -1;
        int64_t w_proj = toff(g, i, qb ? 2 : 1), b_proj = toff(g, i, qb ? 3 : 2);
        char bq[40], dbq[40];
        if (qb) {
            snprintf(bq, sizeof bq, "P(%lldL)", (long long)b_qkv);
            snprintf(dbq, sizeof dbq, "DP(%lldL)", (long long)b_qkv);
        } else {
            snprintf(bq, sizeof bq, "NULL");
            snprintf(dbq, sizeof dbq, "NULL");
        }
        sb_printf(f, "    linear_forward(A(%s), %s, P(%lldL), %s, B * %d, %d, %d);\n", qkv, in, (long long)w_qkv, bq,
                  T, D, 3 * D);
        sb_printf(f, "    attention_forward(A(%s), A(%s), A(%s), B, %d, %d, %d);\n", y, att, qkv, T, D, NH);
        sb_printf(f, "    linear_forward(%s, A(%s), P(%lldL), P(%lldL), B * %d, %d, %d);\n", out, y, (long long)w_proj,
                  (long long)b_proj, T, D, D);
        sb_printf(&b, "    linear_backward(G(%s), DP(%lldL), DP(%lldL), %s, A(%s), P(%lldL), B * %d, %d, %d, 0);\n", y,
                  (long long)w_proj, (long long)b_proj, dout, y, (long long)w_proj, T, D, D);
        sb_printf(&b, "    attention_backward(G(%s), G(%s), G(%s), A(%s), A(%s), B, %d, %d, %d);\n", qkv, att, y, qkv,
                  att, T, D, NH);
        sb_printf(&b, "    linear_backward(%s, DP(%lldL), %s, G(%s), %s, P(%lldL), B * %d, %d, %d, %d);\n", din,
                  (long long)w_qkv, dbq, qkv, in, (long long)w_qkv, T, D, 3 * D, acc);
        break;
    }
    case OP_MLP: {
        const int H = op->u.mlp.hidden;
        char hh[32], aa[32];
        snprintf(hh, sizeof hh, "H%d", i);
        snprintf(aa, sizeof aa, "ACTV%d", i);
        alloc_act(g, hh, BATCH * T * H, "hidden, before the activation");
        alloc_act(g, aa, BATCH * T * H, "hidden, after the activation");
        sb_printf(f, "    linear_forward(A(%s), %s, P(%lldL), P(%lldL), B * %d, %d, %d);\n", hh, in,
                  (long long)toff(g, i, 0), (long long)toff(g, i, 1), T, D, H);
        sb_printf(f, "    act_forward(A(%s), A(%s), (size_t)B * %d, %s);\n", aa, hh, T * H, act_code(op->u.mlp.act));
        /* dropout on the activations, in place: fc2 and its weights'
         * gradient take the dropped values */
        char mask[32];
        snprintf(mask, sizeof mask, "MMASK%d", i);
        const bool drop = op->u.mlp.dropout > 0;
        if (drop) {
            alloc_act(g, mask, BATCH * T * H, "dropout mask of the activations");
            sb_printf(f, "    dropout_mask(A(%s), (size_t)B * %d, train ? %s : 0.0f, m->seed, %d, m->step);\n", mask,
                      T * H, flit(op->u.mlp.dropout).s, 1000 + i);
            sb_printf(f, "    mask_forward(A(%s), A(%s), A(%s), (size_t)B * %d);\n", aa, aa, mask, T * H);
        }
        sb_printf(f, "    linear_forward(%s, A(%s), P(%lldL), P(%lldL), B * %d, %d, %d);\n", out, aa,
                  (long long)toff(g, i, 2), (long long)toff(g, i, 3), T, H, D);
        sb_printf(&b, "    linear_backward(G(%s), DP(%lldL), DP(%lldL), %s, A(%s), P(%lldL), B * %d, %d, %d, 0);\n", aa,
                  (long long)toff(g, i, 2), (long long)toff(g, i, 3), dout, aa, (long long)toff(g, i, 2), T, H, D);
        if (drop)
            sb_printf(&b, "    mask_backward(G(%s), G(%s), A(%s), (size_t)B * %d, 0);\n", aa, aa, mask, T * H);
        sb_printf(&b, "    act_backward(G(%s), G(%s), A(%s), (size_t)B * %d, %s, 0);\n", hh, aa, hh, T * H,
                  act_code(op->u.mlp.act));
        sb_printf(&b, "    linear_backward(%s, DP(%lldL), DP(%lldL), G(%s), %s, P(%lldL), B * %d, %d, %d, %d);\n", din,
                  (long long)toff(g, i, 0), (long long)toff(g, i, 1), hh, in, (long long)toff(g, i, 0), T, D, H, acc);
        break;
    }
    case OP_MOE: {
        const mc_moe *x = &op->u.moe;
        /* expert choice: every token lists all experts, the experts choose */
        const bool ec = x->router == ROUTER_EXPERT_CHOICE;
        const int E = x->experts, H = x->hidden, K = ec ? x->experts : x->top_k, j = g->moe_index[i];
        const int64_t NB = BATCH * T;
        char nm[12][32];
        static const char *const fl[] = { "LOGITS", "PROBS", "LSE", "TOPP", "GATE", "PRIO", "XE", "HE", "AE", "YE" };
        const int64_t ROWS = NB * K; /* kept choices, packed expert after expert */
        const int64_t fsz[] = { NB * E, NB * E, NB, NB * K, NB * K, NB, ROWS * D, ROWS * H, ROWS * H, ROWS * D };
        static const char *const fwhat[] = { "router logits", "router probabilities", "log-sum-exp of the logits",
                                             "top-k probabilities", "gates", "routing priority",
                                             "expert inputs [N*K, D]", "expert hidden [N*K, H]",
                                             "expert hidden, activated", "expert outputs [N*K, D]" };
        for (int k = 0; k < 10; k++) {
            snprintf(nm[k], sizeof nm[k], "%s%d", fl[k], i);
            alloc_act(g, nm[k], fsz[k], fwhat[k]);
        }
        static const char *const il[] = { "TOPK", "SLOT", "COUNT", "TOKEN", "ORDER", "TARGET", "OFFSET" };
        const int64_t isz[] = { NB * K, NB * K, E, NB * K, 2 * NB, NB, E };
        static const char *const iwhat[] = { "chosen experts", "slot of each choice", "tokens per expert",
                                             "token of each expert row", "routing order", "mapped expert",
                                             "first row of each expert" };
        char in_[7][32];
        for (int k = 0; k < 7; k++) {
            snprintf(in_[k], sizeof in_[k], "%s%d", il[k], i);
            alloc_int(g, in_[k], isz[k], iwhat[k]);
        }
        /* the load loss: its buffers, and here the loads for its backward */
        load_plan lp;
        const bool load = load_plan_init(g, i, NB, &lp);
        const char *clean = lp.clean, *ldens = lp.dens, *lthr = lp.thr;
        char lsum[32];
        snprintf(lsum, sizeof lsum, "LOAD%d", i);
        if (load)
            alloc_act(g, lsum, E, "load loss: each expert's smooth load");
        /* the router's tensors come first: gate.weight [E, D], or for the
         * attention router gate.query.weight [R, D] and gate.expert_tokens [E, R] */
        const bool attn = x->router == ROUTER_ATTENTION, cosine = x->router == ROUTER_COSINE;
        const int nr = attn || cosine ? 2 : 1, R = x->router_dim;
        const int64_t wg = toff(g, i, 0), tok = nr == 2 ? toff(g, i, 1) : 0, w1 = toff(g, i, nr),
                      b1 = toff(g, i, nr + 1), w2 = toff(g, i, nr + 2), b2 = toff(g, i, nr + 3);
        char query[32];
        snprintf(query, sizeof query, "QUERY%d", i);
        char qn[32], qnorm[32], en[32], enorm[32];
        snprintf(qn, sizeof qn, "QN%d", i);
        snprintf(qnorm, sizeof qnorm, "QNORM%d", i);
        snprintf(en, sizeof en, "EN%d", i);
        snprintf(enorm, sizeof enorm, "ENORM%d", i);
        if (attn)
            alloc_act(g, query, NB * R, "attention router queries [N, R]");
        if (cosine) {
            alloc_act(g, query, NB * R, "cosine router projections [N, R]");
            alloc_act(g, qn, NB * R, "the projections, normalised");
            alloc_act(g, qnorm, NB, "their norms");
            alloc_act(g, en, (int64_t)E * R, "expert embeddings, normalised [E, R]");
            alloc_act(g, enorm, E, "their norms");
        }
        const bool ds = x->router == ROUTER_DATASET_AWARE;
        char routing[512];
        snprintf(routing, sizeof routing,
                 "        moe_routing r = { IA(%s), A(%s), A(%s), IA(%s), IA(%s), IA(%s), IA(%s), IA(%s), A(%s) };\n",
                 in_[0], nm[3], nm[4], in_[1], in_[2], in_[6], in_[3], in_[4], nm[5]);
        sb_printf(f, "    {\n        const int N = B * %d;\n", T);
        /* evaluation is dropless: a batch of one dataset would overflow its expert */
        if (ec)
            sb_printf(f, "        const int cap = moe_capacity(N, %d, 1, %.17g, 0); /* tokens each expert chooses */\n", E,
                      x->capacity_factor);
        else if (x->dropless)
            sb_printf(f, "        const int cap = N; /* dropless */\n");
        else
            sb_printf(f, "        const int cap = moe_capacity(N, %d, %d, %.17g, !train); /* dropless in evaluation */\n",
                      E, K, x->capacity_factor);
        sb_printf(f, "%s", routing);
        if (attn) {
            /* logits = (x Wq^T) tokens^T / sqrt(R): each token queries the experts' tokens */
            sb_printf(f, "        linear_forward(A(%s), %s, P(%lldL), NULL, N, %d, %d);\n", query, in, (long long)wg, D, R);
            sb_printf(f, "        linear_forward(A(%s), A(%s), P(%lldL), NULL, N, %d, %d);\n", nm[0], query,
                      (long long)tok, R, E);
            sb_printf(f, "        scale_inplace(A(%s), (size_t)N * %d, %s); /* 1 / sqrt(R) */\n", nm[0], E,
                      flit(1.0 / sqrt((double)R)).s);
        } else if (cosine) {
            /* logits = cos(x Wp^T, expert embedding) / temperature (X-MoE) */
            sb_printf(f, "        linear_forward(A(%s), %s, P(%lldL), NULL, N, %d, %d);\n", query, in, (long long)wg, D, R);
            sb_printf(f, "        l2norm_forward(A(%s), A(%s), A(%s), N, %d);\n", qn, qnorm, query, R);
            sb_printf(f, "        l2norm_forward(A(%s), A(%s), P(%lldL), %d, %d);\n", en, enorm, (long long)tok, E, R);
            sb_printf(f, "        linear_forward(A(%s), A(%s), A(%s), NULL, N, %d, %d);\n", nm[0], qn, en, R, E);
        } else {
            sb_printf(f, "        linear_forward(A(%s), %s, P(%lldL), NULL, N, %d, %d);\n", nm[0], in, (long long)wg, D,
                      E);
        }
        /* soft and cosine routers divide their logits by a temperature */
        const bool temper = (x->router == ROUTER_SOFT || cosine) && x->temperature != 1.0;
        if (temper)
            sb_printf(f, "        scale_inplace(A(%s), (size_t)N * %d, %s); /* 1 / temperature */\n", nm[0], E,
                      flit(1.0 / x->temperature).s);
        if (load)
            sb_printf(f, "        memcpy(A(%s), A(%s), sizeof(float) * N * %d); /* the load loss's clean logits */\n", clean,
                      nm[0], E);
        if (x->gate_noise > 0)
            sb_printf(f, "        if (train)\n            gate_noise(A(%s), (size_t)N * %d, %s, m->seed, %d, m->step);\n",
                      nm[0], E, flit(x->gate_noise / E).s, 1000 + i);
        sb_printf(f, "        router_softmax(A(%s), A(%s), A(%s), N, %d);\n", nm[1], nm[2], nm[0], E);
        if (ec)
            sb_printf(f, "        moe_route_expert_choice(&r, A(%s), N, %d, cap);\n", nm[1], E);
        else
            sb_printf(f, "        moe_route(&r, A(%s), N, %d, %d, cap, %d, %d);\n", nm[1], E, K,
                      x->normalize_gates ? 1 : 0, x->batch_priority ? 1 : 0);
        if (ds) {
            sb_printf(f, "        for (int n = 0; n < N; n++)\n            IA(%s)[n] = MOE%d_MAP[dataset[n / %d]];\n",
                      in_[5], j, T);
        }
        sb_printf(f, "        moe_experts_forward(%s, A(%s), A(%s), A(%s), A(%s), %s, &r, P(%lldL), P(%lldL), P(%lldL), "
                     "P(%lldL),\n                            N, %d, %d, %d, %d, %s);\n",
                  out, nm[6], nm[7], nm[8], nm[9], in, (long long)w1, (long long)b1, (long long)w2, (long long)b2, D,
                  H, E, K, act_code(x->act));
        char target[48];
        if (ds)
            snprintf(target, sizeof target, "IA(%s)", in_[5]);
        else
            snprintf(target, sizeof target, "NULL");
        sb_printf(f, "        moe_aux_losses(m->aux[%d], A(%s), A(%s), &r, %s, N, %d, %d);\n", j, nm[1], nm[2],
                  target, E, K);
        if (load)
            sb_printf(f, "        m->aux[%d][4] = moe_load_forward(A(%s), A(%s), IA(%s), A(%s), A(%s), IA(%s), N, %d, %d, %s);\n",
                      j, lsum, ldens, lthr, clean, nm[0], in_[0], E, K, flit(x->gate_noise / E).s);
        sb_printf(f, "        moe_stats_add(&m->stats[%d], &r, A(%s), dataset, N, %d, %d, %d);\n", j, nm[1], T, E, K);
        sb_printf(f, "        m->cap[%d] = cap;\n    }\n", j);
        /* backward */
        sb_printf(&b, "    {\n        const int N = B * %d;\n", T);
        sb_printf(&b, "%s", routing);
        sb_printf(&b, "        moe_experts_backward(%s, G(%s), G(%s), G(%s), G(%s), %s, A(%s), A(%s), A(%s), A(%s), &r,\n"
                      "                             P(%lldL), P(%lldL), DP(%lldL), DP(%lldL), DP(%lldL), DP(%lldL),\n"
                      "                             N, %d, %d, %d, %d, %s, %d);\n",
                  din, nm[4], nm[9], nm[7], nm[6], dout, nm[6], nm[7], nm[8], nm[9], (long long)w1, (long long)w2,
                  (long long)w1, (long long)b1, (long long)w2, (long long)b2, D, H, E, K, act_code(x->act), acc);
        sb_printf(&b, "        moe_router_backward(G(%s), G(%s), G(%s), A(%s), A(%s), &r, %s, N, %d, %d, %d,\n"
                      "                            %s, %s, %s, %s);\n",
                  nm[0], nm[1], nm[4], nm[1], nm[2], target, E, K,
                  x->normalize_gates && !ec ? 1 : 0, flit(x->balance_loss).s, flit(x->z_loss).s,
                  flit(ds ? x->dataset_loss : 0.0).s, flit(x->importance_loss).s);
        if (load)
            sb_printf(&b, "        moe_load_backward(G(%s), A(%s), A(%s), IA(%s), IA(%s), N, %d, %d, %s);\n", nm[0], lsum,
                      ldens, lthr, in_[0], E, K, flit(x->load_loss).s);
        if (temper)
            sb_printf(&b, "        scale_inplace(G(%s), (size_t)N * %d, %s);\n", nm[0], E, flit(1.0 / x->temperature).s);
        if (attn) {
            sb_printf(&b, "        scale_inplace(G(%s), (size_t)N * %d, %s);\n", nm[0], E, flit(1.0 / sqrt((double)R)).s);
            sb_printf(&b, "        linear_backward(G(%s), DP(%lldL), NULL, G(%s), A(%s), P(%lldL), N, %d, %d, 0);\n", query,
                      (long long)tok, nm[0], query, (long long)tok, R, E);
            sb_printf(&b, "        linear_backward(%s, DP(%lldL), NULL, G(%s), %s, P(%lldL), N, %d, %d, 1);\n    }\n", din,
                      (long long)wg, query, in, (long long)wg, D, R);
        } else if (cosine) {
            /* through logits = qn en^T: dqn = dlogits en, den = dlogits^T qn */
            sb_printf(&b, "        mm_nn(G(%s), G(%s), A(%s), N, %d, %d, 0);\n", qn, nm[0], en, E, R);
            sb_printf(&b, "        memset(G(%s), 0, sizeof(float) * %d);\n", en, E * R);
            sb_printf(&b, "        mm_tn(G(%s), G(%s), A(%s), N, %d, %d);\n", en, nm[0], qn, E, R);
            sb_printf(&b, "        l2norm_backward(DP(%lldL), G(%s), A(%s), A(%s), %d, %d, 1);\n", (long long)tok, en, en,
                      enorm, E, R);
            sb_printf(&b, "        l2norm_backward(G(%s), G(%s), A(%s), A(%s), N, %d, 0);\n", query, qn, qn, qnorm, R);
            sb_printf(&b, "        linear_backward(%s, DP(%lldL), NULL, G(%s), %s, P(%lldL), N, %d, %d, 1);\n    }\n", din,
                      (long long)wg, query, in, (long long)wg, D, R);
        } else {
            sb_printf(&b, "        linear_backward(%s, DP(%lldL), NULL, G(%s), %s, P(%lldL), N, %d, %d, 1);\n    }\n",
                      din, (long long)wg, nm[0], in, (long long)wg, D, E);
        }
        break;
    }
    case OP_DROPOUT: {
        char mask[32];
        snprintf(mask, sizeof mask, "MASK%d", i);
        alloc_act(g, mask, BATCH * T * D, "dropout mask");
        sb_printf(f, "    dropout_mask(A(%s), (size_t)B * %d, train ? %s : 0.0f, m->seed, %d, m->step);\n", mask,
                  T * D, flit(op->u.drop.p).s, 1000 + i);
        sb_printf(f, "    mask_forward(%s, %s, A(%s), (size_t)B * %d);\n", out, in, mask, T * D);
        sb_printf(&b, "    mask_backward(%s, %s, A(%s), (size_t)B * %d, %d);\n", din, dout, mask, T * D, acc);
        break;
    }
    case OP_DROP_PATH: {
        char keep[32];
        snprintf(keep, sizeof keep, "KEEP%d", i);
        alloc_act(g, keep, BATCH, "stochastic depth: kept samples");
        sb_printf(f, "    dropout_mask(A(%s), (size_t)B, train ? %s : 0.0f, m->seed, %d, m->step);\n", keep,
                  flit(op->u.drop.p).s, 1000 + i);
        sb_printf(f, "    rowmask_forward(%s, %s, A(%s), B, %d);\n", out, in, keep, T * D);
        sb_printf(&b, "    rowmask_backward(%s, %s, A(%s), B, %d, %d);\n", din, dout, keep, T * D, acc);
        break;
    }
    case OP_RESIDUAL_END: {
        char skip[32], dskip[32];
        val_ref(skip, sizeof skip, g->skip[i], false);
        val_ref(dskip, sizeof dskip, g->skip[i], true);
        int acc_skip = acc_flag(g, i, g->skip[i]);
        if (g->skip[i] == g->input[i])
            acc_skip = 1; /* an empty branch: the same value twice */
        sb_printf(f, "    add_forward(%s, %s, %s, (size_t)B * %d);\n", out, skip, in, T * D);
        sb_printf(&b, "    grad_pass(%s, %s, (size_t)B * %d, %d);\n", din, dout, T * D, acc);
        sb_printf(&b, "    grad_pass(%s, %s, (size_t)B * %d, %d);\n", dskip, dout, T * D, acc_skip);
        break;
    }
    case OP_POOL: {
        const int cls = op->u.pool.kind == POOL_CLS;
        sb_printf(f, "    pool_forward(%s, %s, B, %d, %d, %d);\n", out, in, T, D, cls);
        sb_printf(&b, "    pool_backward(%s, %s, B, %d, %d, %d, %d);\n", din, dout, T, D, cls, acc);
        break;
    }
    case OP_CLASSIFIER: {
        const int C = op->u.cls.classes;
        alloc_act(g, name, BATCH * C, "logits");
        if (op->u.cls.heads == HEADS_SHARED) {
            sb_printf(f, "    linear_forward(%s, %s, P(%lldL), P(%lldL), B, %d, %d);\n", out, in, (long long)toff(g, i, 0),
                      (long long)toff(g, i, 1), D, C);
            sb_printf(&b, "    linear_backward(%s, DP(%lldL), DP(%lldL), %s, %s, P(%lldL), B, %d, %d, %d);\n", din,
                      (long long)toff(g, i, 0), (long long)toff(g, i, 1), dout, in, (long long)toff(g, i, 0), D, C, acc);
        } else {
            /* one head per dataset: each sample goes through its dataset's head */
            sb_printf(f, "    for (int b = 0; b < B; b++) {\n        const int d = dataset[b];\n");
            sb_printf(f, "        linear_forward(%s + (size_t)b * %d, %s + (size_t)b * %d, P(HEAD_W[d]), P(HEAD_B[d]), 1, "
                         "%d, DATASET_CLASSES[d]);\n    }\n",
                      out, C, in, D, D);
            sb_printf(&b, "    for (int b = 0; b < B; b++) {\n        const int d = dataset[b];\n");
            sb_printf(&b, "        linear_backward(%s + (size_t)b * %d, DP(HEAD_W[d]), DP(HEAD_B[d]), %s + (size_t)b * %d,\n"
                          "                        %s + (size_t)b * %d, P(HEAD_W[d]), 1, %d, DATASET_CLASSES[d], %d);\n    }\n",
                      din, D, dout, C, in, D, D, acc);
        }
        break;
    }
    default:
        break;
    }
    g->bwd[i] = sb_take(&b);
}

/* ---- the files -------------------------------------------------------------------- */

/* s as a C string literal (quotes and escapes), or NULL, in tmp */
static const char *c_string(sbuf *tmp, const char *s)
{
    tmp->len = 0;
    if (!s) {
        sb_printf(tmp, "NULL");
        return tmp->s;
    }
    sb_printf(tmp, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            sb_printf(tmp, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            sb_printf(tmp, "\\%03o", c);
        else
            sb_printf(tmp, "%c", c);
    }
    sb_printf(tmp, "\"");
    return tmp->s;
}

static void emit_model_h(sbuf *h, const gen *g, const mc_emit_opts *o)
{
    const mc_model *m = g->m;
    const mc_train *t = &m->train;
    int ntensors = 0, max_e = 1;
    for (int i = 0; i < m->nops; i++) {
        ntensors += m->ops[i].ntensors;
        if (m->ops[i].kind == OP_MOE && m->ops[i].u.moe.experts > max_e)
            max_e = m->ops[i].u.moe.experts;
    }
    sbuf tmp = { 0 };
    header_comment(h, m, "model.h", "the shapes, tensors and settings of the model.", o);
    sb_printf(h, "#ifndef MODEL_H\n#define MODEL_H\n\n#include <stdint.h>\n\n#include <moert.h>\n\n");
    sb_printf(h, "/* the CUDA sources take only ops.h's types; the CPU kernels are C */\n"
                 "#ifdef __CUDACC__\n#define MOE_OPS_TYPES_ONLY\n#endif\n#include \"ops.h\"\n\n");
    sb_printf(h, "#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n");
    sb_printf(h, "#define MODEL_NAME %s\n", c_string(&tmp, m->name));
    sb_printf(h, "#define MODEL_SOURCE %s\n", c_string(&tmp, m->source_path));
    sb_printf(h, "#define MOECC_VERSION %s\n\n", c_string(&tmp, o->moecc_version));
    sb_printf(h, "/* shapes */\n");
    sb_printf(h, "#define BATCH %d              /* compiled batch: the most a step takes */\n", t->batch);
    sb_printf(h, "/* parallel(data = ..., expert = ...): the CUDA trainer runs as PARALLEL_DATA\n"
                 " * processes, one per GPU, each on LOCAL_BATCH samples of every batch; the\n"
                 " * CPU trainer runs the whole batch in one process */\n");
    sb_printf(h, "#define PARALLEL_DATA %d\n#define PARALLEL_EXPERT %d\n", m->parallel.data, m->parallel.expert);
    sb_printf(h, "#define LOCAL_BATCH (BATCH / PARALLEL_DATA)\n");
    sb_printf(h, "#define IN_C %d\n#define IN_H %d\n#define IN_W %d\n", m->input_c, m->input_h, m->input_w);
    sb_printf(h, "#define N_CLASSES %d          /* logits per sample (the largest head) */\n", m->classes);
    sb_printf(h, "#define PER_DATASET_HEADS %d\n", m->heads == HEADS_PER_DATASET);
    sb_printf(h, "#define N_DATASETS %d\n", m->ndatasets);
    sb_printf(h, "#define N_MOE %d\n#define N_MOE_SLOTS %d  /* N_MOE, at least 1 for array sizes */\n",
              m->moe_layers, m->moe_layers > 0 ? m->moe_layers : 1);
    sb_printf(h, "#define MAX_EXPERTS %d\n", max_e);
    int max_t = 1;
    for (int i = 0; i < m->nops; i++)
        if (m->ops[i].out.kind == SHAPE_TOKENS && m->ops[i].out.tokens > max_t)
            max_t = m->ops[i].out.tokens;
    sb_printf(h, "#define MAX_TOKENS %d\n", max_t);
    sb_printf(h, "#define N_TENSORS %d\n#define N_PARAMS %lldL\n", ntensors, (long long)m->params);
    sb_printf(h, "#define ACT_FLOATS %lldL     /* activation arena, floats */\n", (long long)g->act_floats);
    sb_printf(h, "#define INT_SLOTS %lldL      /* routing arena, int32 */\n", (long long)(g->int_slots ? g->int_slots : 16));
    sb_printf(h, "#define FLOPS_PER_IMAGE %.6g /* forward, routed experts only */\n\n", m->flops);

    sb_printf(h, "/* training settings of the .moe file: the trainer's defaults */\n");
    sb_printf(h, "#define TRAIN_STEPS %lldL\n#define TRAIN_EPOCHS %d\n", (long long)t->steps, t->epochs);
    sb_printf(h, "#define OPT_ADAMW %d\n", t->optimizer == OPT_ADAMW);
    sb_printf(h, "#define TRAIN_LR %.17g\n#define ADAM_BETA1 %.17g\n#define ADAM_BETA2 %.17g\n#define ADAM_EPS %.17g\n",
              t->lr, t->beta1, t->beta2, t->eps);
    sb_printf(h, "#define WEIGHT_DECAY %.17g\n#define SGD_MOMENTUM %.17g\n#define SGD_NESTEROV %d\n", t->weight_decay,
              t->momentum, t->nesterov);
    sb_printf(h, "#define SCHEDULE %d /* 0 constant, 1 cosine, 2 step */\n", (int)t->schedule);
    sb_printf(h, "#define WARMUP_STEPS %lldL\n#define MIN_LR %.17g\n#define STEP_EVERY %lldL\n#define STEP_GAMMA %.17g\n",
              (long long)t->warmup, t->min_lr, (long long)t->step_size, t->gamma);
    sb_printf(h, "#define LABEL_SMOOTHING %.17g\n#define CLIP_GRAD %.17g\n", t->label_smoothing, t->clip_grad);
    sb_printf(h, "#define EVAL_EVERY %lldL\n#define CHECKPOINT_EVERY %lldL\n#define LOG_EVERY %lldL\n",
              (long long)t->eval_every, (long long)t->checkpoint_every, (long long)t->log_every);
    sb_printf(h, "#define SEED %lluULL\n", (unsigned long long)t->seed);
    sb_printf(h, "#define RANDAUG_N %d /* RandAugment: operations per training image (0: off) */\n",
              t->randaugment_n);
    sb_printf(h, "#define RANDAUG_M %d /* and their magnitude (0..30) */\n", t->randaugment_m);
    sb_printf(h, "#define CUTMIX_PROB %.17g /* CutMix: the probability a batch is mixed (0: off) */\n",
              t->cutmix_prob);
    sb_printf(h, "#define CUTMIX_ALPHA %.17g /* and the Beta(alpha, alpha) of its area */\n\n", t->cutmix_alpha);

    sb_printf(h, "/* the learned tensors, in the order of the parameter arena */\n");
    sb_printf(h, "typedef struct tensor_info {\n    const char *name;\n    int64_t offset, numel;\n    int ndim;\n"
                 "    int64_t shape[4];\n    int init;     /* 0 zeros, 1 ones, 2 truncated normal */\n"
                 "    float std;\n    int decay;    /* weight decay applies */\n    int expert;   /* first dimension: "
                 "the expert */\n} tensor_info;\n");
    sb_printf(h, "extern const tensor_info TENSORS[N_TENSORS];\n\n");
    sb_printf(h, "enum { FMT_IDX, FMT_MNIST_JSON, FMT_CSV, FMT_CIFAR10, FMT_IMAGE_FOLDER, FMT_GTSRB };\n");
    sb_printf(h, "typedef struct dataset_info {\n    const char *name;\n    int format;\n    const char *path;\n"
                 "    const char *train_images, *train_labels, *test_images, *test_labels;   /* idx */\n"
                 "    const char *train_folder, *test_folder;   /* image_folder, gtsrb: in path, or NULL */\n"
                 "    int listed;    /* image_folder, gtsrb: 1 files decoded as they are drawn, 0 decoded at start-up */\n"
                 "    int channels, height, width;   /* as stored; 0: any */\n    int classes;\n"
                 "    double weight, test_split, max_value;\n    double mean[3], std[3];   /* per channel, pixels in [0, 1] */\n    int resize;    /* 0 none, 1 bilinear, "
                 "2 nearest */\n    int crop_padding, flip;   /* training augmentations: random crop padding (0: off), "
                 "flip */\n    const char *const *labels; /* class names or NULL */\n} dataset_info;\n");
    sb_printf(h, "extern const dataset_info DATASETS[N_DATASETS];\n");
    sb_printf(h, "extern const int DATASET_CLASSES[N_DATASETS];\n\n");
    sb_printf(h, "typedef struct moe_info {\n    const char *name;\n    int experts, top_k, tokens;\n"
                 "    float w_balance, w_z, w_dataset, w_importance, w_load;\n    float noise_std;   /* gate noise added in training */\n"
                 "    int stream;        /* random stream of the gate noise */\n} moe_info;\n");
    sb_printf(h, "extern const moe_info MOE_LAYERS[N_MOE_SLOTS];\n\n");
    sb_printf(h, "/* sums over training steps, kept by the backend (on the GPU: read only\n"
                 " * when asked, so that the steps never wait for the host) */\n"
                 "typedef struct step_totals {\n    double loss, aux;   /* summed over the steps */\n"
                 "    int64_t steps;\n    double grad_norm;   /* of the last step with MODEL_STEP_NORM */\n} step_totals;\n\n");
    sb_printf(h, "typedef struct model {\n    float *param, *grad, *opt_m, *opt_v; /* N_PARAMS each */\n"
                 "    float *act, *dact;      /* ACT_FLOATS each: values and their gradients */\n"
                 "    int32_t *iact;          /* INT_SLOTS: routing */\n"
                 "    uint64_t seed;          /* random draws are a function of (seed, op, step, element) */\n"
                 "    int64_t step;\n    int cap[N_MOE_SLOTS];    /* capacity of each MoE layer in the last forward */\n"
                 "    float aux[N_MOE_SLOTS][5]; /* balance, z, dataset, importance and load losses of each MoE layer */\n"
                 "    moe_stats stats[N_MOE_SLOTS];\n    int64_t load[N_MOE_SLOTS][MAX_EXPERTS];\n"
                 "    int64_t ds_expert[N_MOE_SLOTS][N_DATASETS * MAX_EXPERTS];\n"
                 "    step_totals totals;     /* of the steps since model_totals */\n"
                 "    void *dev;              /* the backend's own state (CUDA: device arenas, graphs) */\n} model;\n\n");
    sb_printf(h, "/* ---- the backend: backend.c (CPU) or backend.cu (CUDA); train.c uses only these ---- */\n");
    sb_printf(h, "const char *model_backend_name(void);\n");
    sb_printf(h, "enum { PRECISION_FP32 = 0, PRECISION_BF16 = 1, PRECISION_TF32 = 2 };\n"
                 "#define PRECISION_NAME(p) ((p) == PRECISION_FP32 ? \"fp32\" : (p) == PRECISION_TF32 ? \"tf32\" : \"bf16\")\n"
                 "#define TRAIN_PRECISION %d /* of the .moe file */\n",
              m->train.precision == PREC_BF16 ? 1 : m->train.precision == PREC_TF32 ? 2 : 0);
    sb_printf(h, "/* allocates the arenas (zeroed) and the fixed tables; threads: CPU threads (0: default) */\n");
    sb_printf(h, "void model_open(model *m, uint64_t seed, int threads, int precision);\nvoid model_close(model *m);\n");
    sb_printf(h, "/* m->param, m->opt_m and m->opt_v are read and written on the host between these */\n");
    sb_printf(h, "void model_to_device(model *m);\nvoid model_to_host(model *m);\n");
    sb_printf(h, "enum { MODEL_STEP_UPDATE = 1, /* clip and update the weights (else only the gradients) */\n"
                 "       MODEL_STEP_NORM = 2    /* compute the gradient norm for the record */ };\n");
    sb_printf(h, "/* one step on batch (B samples) at learning rate lr; the loss goes into m->totals */\n");
    sb_printf(h, "void model_train_step(model *m, const moert_batch *batch, int B, double lr, int64_t step, int flags);\n");
    sb_printf(h, "/* the totals since the last call (then zeroed) */\nvoid model_totals(model *m, step_totals *t);\n");
    sb_printf(h, "/* the largest batch model_eval takes */\nint model_eval_batch(void);\n");
    sb_printf(h, "/* the device memory the backend holds (0 on the CPU) */\nint64_t model_device_bytes(void);\n");
    sb_printf(h, "/* expert parallelism: the bytes this GPU sends the others of its group in a\n"
                 " * training step's exchanges of expert rows (0 without, and on the CPU) */\n"
                 "int64_t model_exchange_bytes(void);\n");
    sb_printf(h, "/* before an evaluation's model_eval calls, by every process (expert\n"
                 " * parallelism: each GPU gathers every expert's weights) */\nvoid model_eval_begin(model *m);\n");
    sb_printf(h, "/* the logits [B, N_CLASSES] on the host, valid until the next call */\n");
    sb_printf(h, "const float *model_eval(model *m, const float *x, const int32_t *dataset, int B);\n");
    sb_printf(h, "/* routing statistics: zeroed, and brought to m->stats, m->load, m->ds_expert, m->aux\n"
                 " * (summed over the processes: every process calls model_stats_fetch) */\n");
    sb_printf(h, "void model_stats_reset(model *m);\nvoid model_stats_fetch(model *m);\n");
    sb_printf(h, "/* the processes of a data-parallel run (one per GPU): this one's rank and\n"
                 " * their number, 0 and 1 with one process; model_sum adds v[0..n) up over them\n"
                 " * in place and model_broadcast sends rank 0's bytes to all (both: every\n"
                 " * process, in the same order; nothing with one process) */\n");
    sb_printf(h, "int model_rank(void);\nint model_world(void);\n");
    sb_printf(h, "void model_sum(model *m, double *v, int n);\nvoid model_broadcast(model *m, void *buf, size_t bytes);\n\n");
    sb_printf(h, "/* ---- the CPU model (model.c) ---- */\n");
    sb_printf(h, "/* x: the images [B, IN_C, IN_H, IN_W]; dataset: each sample's dataset */\n");
    sb_printf(h, "void model_forward(model *m, const float *x, const int32_t *dataset, int B, int train);\n");
    sb_printf(h, "/* after model_forward and with model_dlogits() written; parameter\n * gradients are overwritten */\n");
    sb_printf(h, "void model_backward(model *m, const float *x, const int32_t *dataset, int B);\n");
    sb_printf(h, "float *model_logits(const model *m);   /* [B, N_CLASSES] */\nfloat *model_dlogits(const model *m);\n");
    sb_printf(h, "/* the weighted sum of the MoE layers' auxiliary losses of the last forward */\n");
    sb_printf(h, "float model_aux_loss(const model *m);\n");
    sb_printf(h, "/* fixed tables in the activation arena (sine-cosine positions) */\n");
    sb_printf(h, "void model_init_tables(model *m);\n");
    sb_printf(h, "\n#ifdef __CUDACC__\n/* ---- the CUDA model (model.cu), driven by backend.cu ---- */\n");
    sb_printf(h, "struct kctx;          /* kernels.cuh: stream, cuBLAS handle, scratch */\n"
                 "struct step_scalars;  /* kernels.cuh: learning rate and step, read on the device */\n");
    sb_printf(h, "typedef struct dev_model {\n    float *param, *grad, *opt_m, *opt_v; /* DEV_LAYOUT.params each */\n"
                 "    float *param_full;     /* expert parallelism, evaluation: every expert's weights (PF) */\n"
                 "    float *act;            /* DEV_LAYOUT.act_floats (act_floats16 with lay16) */\n"
                 "    int lay16;             /* bf16 precision: LAY16's buffers in their bf16 layout */\n"
                 "    float *dact;           /* DEV_LAYOUT.grad_floats */\n"
                 "    int *iact;             /* DEV_LAYOUT.int_slots */\n"
                 "    double *dacc;          /* the step's sums: [0] cross-entropy, [1] auxiliary, [2] gradient norm */\n"
                 "    unsigned long long *stats; /* routing counts */\n    struct step_scalars *sc;\n"
                 "    const float *x;        /* this step's images and datasets */\n    const int32_t *dataset;\n"
                 "    int *maps;             /* [N_MOE_SLOTS, N_DATASETS] dataset-to-expert maps */\n"
                 "    int64_t *head_off;     /* [2, N_DATASETS] per-dataset heads' offsets */\n"
                 "    int *classes;          /* [N_DATASETS] */\n    void *sort_tmp;        /* the routing sort's scratch */\n"
                 "    size_t sort_bytes;\n    uint64_t seed;\n"
                 "    int64_t row0;          /* this process's first sample of the batch (random draws) */\n"
                 "    int erank;             /* its place in its expert-parallel group: experts\n"
                 "                            * [erank * E / PARALLEL_EXPERT, ...) of each MoE layer */\n"
                 "    /* data parallelism: average the gradients of parameters [lo, hi) over\n"
                 "     * the processes (backend.cu) */\n"
                 "    void (*grad_ready)(const struct kctx *k, struct dev_model *d, int64_t lo, int64_t hi);\n"
                 "    void *comm;\n} dev_model;\n\n");
    sb_printf(h, "typedef struct dev_layout {\n"
                 "    int64_t params;        /* the parameter arena: N_PARAMS, less under expert parallelism */\n"
                 "    int64_t act_floats;    /* the activation arena; act_floats16 in bf16 precision */\n"
                 "    int64_t act_floats16, grad_floats, int_slots, dacc, stats, red_floats;\n"
                 "    int64_t cast_elems;    /* bf16 precision: the products' operands in bf16 (kctx.cast) */\n"
                 "    int64_t xchg_elems;    /* bf16 precision, expert parallelism: the exchanged rows in bf16 */\n"
                 "    int eval_batch;        /* the largest batch the arenas hold dropless */\n"
                 "    int64_t logits, dlogits, xent; /* offsets in act, dact, act */\n    int64_t stats_off[N_MOE_SLOTS], entropy[N_MOE_SLOTS], "
                 "aux[N_MOE_SLOTS];\n} dev_layout;\n");
    sb_printf(h, "extern const dev_layout DEV_LAYOUT;\n");
    sb_printf(h, "extern const int64_t DEV_TENSOR_OFF[N_TENSORS];\n");
    sb_printf(h, "extern const unsigned char GRAD_STORED[N_TENSORS];\n");
    sb_printf(h, "void dev_init_tables(const struct kctx *k, dev_model *d);\n");
    sb_printf(h, "void dev_forward(const struct kctx *k, dev_model *d, int B, int train);\n");
    sb_printf(h, "void dev_backward(const struct kctx *k, dev_model *d, int B);\n#endif\n");
    sb_printf(h, "\n#ifdef __cplusplus\n}\n#endif\n\n#endif /* MODEL_H */\n");
    sb_free(&tmp);
}

void emit_tables(sbuf *c, const gen *g)
{
    const mc_model *m = g->m;
    sbuf tmp = { 0 };
    sb_printf(c, "const tensor_info TENSORS[N_TENSORS] = {\n");
    int64_t off = 0;
    for (int i = 0; i < m->nops; i++)
        for (int j = 0; j < m->ops[i].ntensors; j++) {
            const mc_tensor *t = &m->ops[i].tensors[j];
            sb_printf(c, "    { %s, %lldL, %lldL, %d, {", c_string(&tmp, t->name), (long long)off, (long long)t->numel,
                      t->ndim);
            for (int k = 0; k < t->ndim; k++)
                sb_printf(c, "%s%lld", k ? ", " : " ", (long long)t->shape[k]);
            sb_printf(c, " }, %d, %s, %d, %d },\n", t->init == INIT_ZEROS ? 0 : t->init == INIT_ONES ? 1 : 2,
                      flit(t->init_std).s, !t->no_decay, t->expert);
            off += t->numel;
        }
    sb_printf(c, "};\n\n");
    for (int d = 0; d < m->ndatasets; d++) {
        const mc_dataset *ds = &m->datasets[d];
        if (!ds->labels)
            continue;
        sb_printf(c, "static const char *const LABELS_%d[] = {", d);
        for (int k = 0; ds->labels[k]; k++)
            sb_printf(c, "%s%s", k ? ", " : " ", c_string(&tmp, ds->labels[k]));
        sb_printf(c, ", NULL };\n");
    }
    sb_printf(c, "const dataset_info DATASETS[N_DATASETS] = {\n");
    for (int d = 0; d < m->ndatasets; d++) {
        const mc_dataset *ds = &m->datasets[d];
        sb_printf(c, "    { %s, %d, ", c_string(&tmp, ds->name), (int)ds->format);
        sb_printf(c, "%s, ", c_string(&tmp, ds->path));
        sb_printf(c, "%s, ", c_string(&tmp, ds->train_images));
        sb_printf(c, "%s, ", c_string(&tmp, ds->train_labels));
        sb_printf(c, "%s, ", c_string(&tmp, ds->test_images));
        sb_printf(c, "%s,\n      ", c_string(&tmp, ds->test_labels));
        sb_printf(c, "%s, ", c_string(&tmp, ds->train_folder));
        sb_printf(c, "%s, %d, ", c_string(&tmp, ds->test_folder), ds->listed);
        sb_printf(c, "%d, %d, %d, %d, %.17g, %.17g, %.17g,\n      { %.9g, %.9g, %.9g }, { %.9g, %.9g, %.9g }, %d, %d, %d, ",
                  ds->channels, ds->height, ds->width, ds->classes, ds->weight, ds->test_split, ds->max_value,
                  ds->mean[0], ds->mean[1], ds->mean[2], ds->std[0], ds->std[1], ds->std[2], ds->resize,
                  ds->crop_padding, ds->flip);
        if (ds->labels)
            sb_printf(c, "LABELS_%d },\n", d);
        else
            sb_printf(c, "NULL },\n");
    }
    sb_printf(c, "};\n\nconst int DATASET_CLASSES[N_DATASETS] = {");
    for (int d = 0; d < m->ndatasets; d++)
        sb_printf(c, "%s%d", d ? ", " : " ", m->heads == HEADS_PER_DATASET ? m->datasets[d].classes : m->classes);
    sb_printf(c, " };\n\n");
    sb_printf(c, "const moe_info MOE_LAYERS[N_MOE_SLOTS] = {\n");
    if (g->nmoe == 0)
        sb_printf(c, "    { \"\", 0, 0, 0, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0 },\n");
    for (int i = 0; i < m->nops; i++) {
        if (m->ops[i].kind != OP_MOE)
            continue;
        const mc_moe *x = &m->ops[i].u.moe;
        sb_printf(c, "    { %s, %d, %d, %d, %s, %s, %s, %s, %s, %s, %d },\n", c_string(&tmp, m->ops[i].prefix),
                  x->experts, x->top_k, m->ops[i].in.tokens, flit(x->balance_loss).s, flit(x->z_loss).s,
                  flit(x->router == ROUTER_DATASET_AWARE ? x->dataset_loss : 0.0).s, flit(x->importance_loss).s,
                  flit(x->load_loss).s, flit(x->gate_noise / x->experts).s, 1000 + i);
    }
    sb_printf(c, "};\n\n");
    for (int i = 0; i < m->nops; i++) {
        const mc_op *op = &m->ops[i];
        if (op->kind == OP_MOE && op->u.moe.dataset_expert) {
            sb_printf(c, "/* %s: each dataset's expert */\nstatic const int MOE%d_MAP[N_DATASETS] = {", op->prefix,
                      g->moe_index[i]);
            for (int d = 0; d < m->ndatasets; d++)
                sb_printf(c, "%s%d", d ? ", " : " ", op->u.moe.dataset_expert[d]);
            sb_printf(c, " };\n");
        }
        if (op->kind == OP_CLASSIFIER && op->u.cls.heads == HEADS_PER_DATASET) {
            sb_printf(c, "/* the offsets of each dataset's head */\nstatic const int64_t HEAD_W[N_DATASETS] = {");
            for (int d = 0; d < m->ndatasets; d++)
                sb_printf(c, "%s%lldL", d ? ", " : " ", (long long)toff(g, i, 2 * d));
            sb_printf(c, " };\nstatic const int64_t HEAD_B[N_DATASETS] = {");
            for (int d = 0; d < m->ndatasets; d++)
                sb_printf(c, "%s%lldL", d ? ", " : " ", (long long)toff(g, i, 2 * d + 1));
            sb_printf(c, " };\n");
        }
    }
    sb_free(&tmp);
}

static void emit_model_c(sbuf *c, gen *g, const mc_emit_opts *o)
{
    const mc_model *m = g->m;
    header_comment(c, m, "model.c", "the forward and backward pass of every op, for the CPU.", o);
    sb_printf(c, "#include <string.h>\n\n#include \"model.h\"\n\n");
    sb_printf(c, "/* B = the batch of this step (at most BATCH); every other shape is fixed.\n"
                 " * A(off)/G(off): a value and its gradient in the activation arenas,\n"
                 " * P(off)/DP(off): a parameter and its gradient, IA(off): routing ints. */\n");
    sb_printf(c, "#define A(off) (m->act + (off))\n#define G(off) (m->dact + (off))\n");
    sb_printf(c, "#define P(off) (m->param + (off))\n#define DP(off) (m->grad + (off))\n");
    sb_printf(c, "#define IA(off) (m->iact + (off))\n\n");
    sb_printf(c, "/* ---- the activation arena, laid out for BATCH (offsets in elements) ---- */\n");
    sb_printf(c, "%s\n", g->defs.s ? g->defs.s : "");
    emit_tables(c, g);
    int last = m->nops - 1;
    sb_printf(c, "\nfloat *model_logits(const model *m)\n{\n    return A(V%d);\n}\n\n", last);
    sb_printf(c, "float *model_dlogits(const model *m)\n{\n    return G(V%d);\n}\n\n", last);
    sb_printf(c, "float model_aux_loss(const model *m)\n{\n    float loss = 0.0f;\n");
    sb_printf(c, "    for (int j = 0; j < N_MOE; j++)\n        loss += MOE_LAYERS[j].w_balance * m->aux[j][0] + "
                 "MOE_LAYERS[j].w_z * m->aux[j][1] +\n                MOE_LAYERS[j].w_dataset * m->aux[j][2] + "
                 "MOE_LAYERS[j].w_importance * m->aux[j][3] +\n                MOE_LAYERS[j].w_load * m->aux[j][4];\n");
    sb_printf(c, "    (void)m;\n    return loss;\n}\n\n");
    sb_printf(c, "void model_stats_reset(model *m)\n{\n    for (int j = 0; j < N_MOE_SLOTS; j++) {\n"
                 "        memset(m->load[j], 0, sizeof m->load[j]);\n        memset(m->ds_expert[j], 0, sizeof m->ds_expert[j]);\n"
                 "        memset(&m->stats[j], 0, sizeof m->stats[j]);\n        m->stats[j].load = m->load[j];\n"
                 "        m->stats[j].ds_expert = m->ds_expert[j];\n    }\n}\n\n");
    sb_printf(c, "void model_init_tables(model *m)\n{\n");
    for (int i = 0; i < m->nops; i++) {
        const mc_op *op = &m->ops[i];
        if (op->kind == OP_POS_EMBED && !op->u.pos.learned)
            sb_printf(c, "    sincos_table(A(POS%d), %d, %d, %d, %d);\n", i, op->in.gh, op->in.gw, op->in.dim,
                      op->in.cls ? 1 : 0);
    }
    sb_printf(c, "    model_stats_reset(m);\n}\n\n");
    sb_printf(c, "void model_forward(model *m, const float *x, const int32_t *dataset, int B, int train)\n{\n");
    sb_printf(c, "    (void)dataset;\n    (void)train;\n");
    sb_printf(c, "%s", g->fwd.s ? g->fwd.s : "");
    sb_printf(c, "}\n\nvoid model_backward(model *m, const float *x, const int32_t *dataset, int B)\n{\n");
    sb_printf(c, "    (void)x;\n    (void)dataset;\n    memset(m->grad, 0, sizeof(float) * N_PARAMS);\n");
    for (int i = m->nops - 1; i >= 0; i--)
        if (g->bwd[i] && g->bwd[i][0])
            sb_printf(c, "%s", g->bwd[i]);
    sb_printf(c, "}\n");
}

/* ---- model.json: the ops and tensors, for tools ------------------------------------ */

static void json_str(sbuf *b, const char *s)
{
    sb_printf(b, "\"");
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            sb_printf(b, "\\%c", ch);
        else if (ch < 0x20)
            sb_printf(b, "\\u%04x", ch);
        else
            sb_printf(b, "%c", ch);
    }
    sb_printf(b, "\"");
}

static void emit_json(sbuf *j, const mc_model *m)
{
    sb_printf(j, "{\n  \"name\": ");
    json_str(j, m->name);
    sb_printf(j, ",\n  \"source\": ");
    json_str(j, m->source_path);
    sb_printf(j, ",\n  \"input\": [%d, %d, %d],\n  \"batch\": %d,\n  \"label_smoothing\": %.17g,\n", m->input_c,
              m->input_h, m->input_w, m->train.batch, m->train.label_smoothing);
    sb_printf(j, "  \"datasets\": [");
    for (int d = 0; d < m->ndatasets; d++) {
        sb_printf(j, "%s\n    {\"name\": ", d ? "," : "");
        json_str(j, m->datasets[d].name);
        sb_printf(j, ", \"classes\": %d}", m->datasets[d].classes);
    }
    sb_printf(j, "\n  ],\n  \"ops\": [");
    for (int i = 0; i < m->nops; i++) {
        const mc_op *op = &m->ops[i];
        sb_printf(j, "%s\n    {\"op\": \"%s\", \"prefix\": ", i ? "," : "", mc_op_name(op->kind));
        json_str(j, op->prefix);
        sb_printf(j, ", \"tokens\": %d, \"dim\": %d", op->in.kind == SHAPE_TOKENS ? op->in.tokens : 0,
                  op->in.kind == SHAPE_IMAGE ? op->in.c : op->in.dim);
        switch (op->kind) {
        case OP_PATCH_EMBED: sb_printf(j, ", \"patch\": %d, \"out_dim\": %d", op->u.patch.patch, op->out.dim); break;
        case OP_CONV_STEM:
            sb_printf(j, ", \"out_dim\": %d, \"kernel\": %d, \"stride\": %d, \"layers\": %d", op->out.c,
                      op->u.conv.kernel, op->u.conv.stride, op->u.conv.layers);
            break;
        case OP_WINDOW_ATTENTION:
            sb_printf(j, ", \"heads\": %d, \"window\": %d, \"global_query\": %s, \"qkv_bias\": %s, \"grid\": [%d, %d]",
                      op->u.wattn.heads, op->u.wattn.window, op->u.wattn.global_query ? "true" : "false",
                      op->u.wattn.qkv_bias ? "true" : "false", op->in.gh, op->in.gw);
            break;
        case OP_DOWNSAMPLE:
            sb_printf(j, ", \"out_dim\": %d, \"grid\": [%d, %d]", op->out.dim, op->in.gh, op->in.gw);
            break;
        case OP_POS_EMBED: sb_printf(j, ", \"learned\": %s", op->u.pos.learned ? "true" : "false"); break;
        case OP_LAYERNORM: sb_printf(j, ", \"eps\": %.17g", op->u.ln.eps); break;
        case OP_ATTENTION:
            sb_printf(j, ", \"heads\": %d, \"qkv_bias\": %s", op->u.attn.heads, op->u.attn.qkv_bias ? "true" : "false");
            break;
        case OP_MLP:
            sb_printf(j, ", \"hidden\": %d, \"act\": \"%s\", \"dropout\": %.17g", op->u.mlp.hidden,
                      mc_act_name(op->u.mlp.act), op->u.mlp.dropout);
            break;
        case OP_MOE: {
            const mc_moe *x = &op->u.moe;
            sb_printf(j, ", \"experts\": %d, \"hidden\": %d, \"act\": \"%s\", \"top_k\": %d, \"capacity\": %.17g, "
                         "\"dropless\": %s, \"batch_priority\": %s, \"normalize_gates\": %s, \"gate_noise\": %.17g, "
                         "\"router\": \"%s\", \"router_dim\": %d, \"temperature\": %.17g, \"balance_loss\": %.17g, \"z_loss\": %.17g, "
                         "\"dataset_loss\": %.17g, \"importance_loss\": %.17g, \"load_loss\": %.17g",
                      x->experts, x->hidden, mc_act_name(x->act), x->top_k, x->capacity_factor,
                      x->dropless ? "true" : "false", x->batch_priority ? "true" : "false",
                      x->normalize_gates ? "true" : "false", x->gate_noise, mc_router_name(x->router), x->router_dim,
                      x->temperature,
                      x->balance_loss, x->z_loss, x->router == ROUTER_DATASET_AWARE ? x->dataset_loss : 0.0,
                      x->importance_loss, x->load_loss);
            if (x->dataset_expert) {
                sb_printf(j, ", \"map\": [");
                for (int d = 0; d < m->ndatasets; d++)
                    sb_printf(j, "%s%d", d ? ", " : "", x->dataset_expert[d]);
                sb_printf(j, "]");
            }
            break;
        }
        case OP_DROPOUT:
        case OP_DROP_PATH: sb_printf(j, ", \"p\": %.17g", op->u.drop.p); break;
        case OP_POOL: sb_printf(j, ", \"kind\": \"%s\"", op->u.pool.kind == POOL_CLS ? "cls" : "mean"); break;
        case OP_CLASSIFIER:
            sb_printf(j, ", \"heads\": \"%s\", \"classes\": %d",
                      op->u.cls.heads == HEADS_PER_DATASET ? "per_dataset" : "shared", op->u.cls.classes);
            break;
        default: break;
        }
        sb_printf(j, ", \"tensors\": [");
        for (int k = 0; k < op->ntensors; k++) {
            sb_printf(j, "%s", k ? ", " : "");
            json_str(j, op->tensors[k].name);
        }
        sb_printf(j, "], \"shapes\": [");
        for (int k = 0; k < op->ntensors; k++) {
            sb_printf(j, "%s[", k ? ", " : "");
            for (int d = 0; d < op->tensors[k].ndim; d++)
                sb_printf(j, "%s%lld", d ? ", " : "", (long long)op->tensors[k].shape[d]);
            sb_printf(j, "]");
        }
        sb_printf(j, "]}");
    }
    sb_printf(j, "\n  ]\n}\n");
}

/* ---- writing the directory ------------------------------------------------------------ */

static int write_file(const char *dir, const char *name, const char *text, size_t len, char *errbuf, size_t errlen)
{
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        snprintf(errbuf, errlen, "%s: %s", tmp, strerror(errno));
        return -1;
    }
    size_t wrote = fwrite(text, 1, len, f);
    int bad = wrote != len || fflush(f) != 0;
    if (fclose(f) != 0 || bad) {
        snprintf(errbuf, errlen, "%s: write failed: %s", tmp, strerror(errno));
        remove(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        snprintf(errbuf, errlen, "%s: %s", path, strerror(errno));
        remove(tmp);
        return -1;
    }
    return 0;
}

/* A template with ${name} placeholders filled from vars (name, value pairs). */
static char *fill_template(const char *text, const char *const *vars, int nvars)
{
    sbuf b = { 0 };
    for (const char *p = text; *p;) {
        if (p[0] == '$' && p[1] == '{') {
            const char *end = strchr(p, '}');
            if (end) {
                size_t n = (size_t)(end - p - 2);
                int k;
                for (k = 0; k < nvars; k++)
                    if (strlen(vars[2 * k]) == n && strncmp(vars[2 * k], p + 2, n) == 0)
                        break;
                if (k < nvars) {
                    sb_printf(&b, "%s", vars[2 * k + 1]);
                    p = end + 1;
                    continue;
                }
            }
        }
        sb_printf(&b, "%c", *p++);
    }
    return sb_take(&b);
}

int mc_emit(const mc_model *m, const mc_emit_opts *o, char *errbuf, size_t errlen)
{
    if (mkdir(o->outdir, 0777) != 0 && errno != EEXIST) {
        snprintf(errbuf, errlen, "%s: %s", o->outdir, strerror(errno));
        return -1;
    }
    struct stat st;
    if (stat(o->outdir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(errbuf, errlen, "%s: not a directory", o->outdir);
        return -1;
    }
    /* ops.h and the CPU backend are in every directory, the CUDA sources unless --target cpu */
    const bool cuda = o->target != MC_TARGET_CPU;
    gen g;
    gen_init(&g, m, 1);
    for (int i = 0; i < m->nops; i++)
        gen_op(&g, i);
    sbuf h = { 0 }, c = { 0 }, j = { 0 }, cu = { 0 };
    emit_model_h(&h, &g, o);
    emit_model_c(&c, &g, o);
    emit_json(&j, m);
    int rc = 0;
    rc |= write_file(o->outdir, "model.h", h.s, h.len, errbuf, errlen);
    rc |= rc ? 0 : write_file(o->outdir, "model.c", c.s, c.len, errbuf, errlen);
    rc |= rc ? 0 : write_file(o->outdir, "model.json", j.s, j.len, errbuf, errlen);
    if (cuda) {
        mc_model local;
        gen gc;
        gen_init_cuda(&gc, m, &local);
        emit_model_cu(&cu, &gc, o, NULL);
        rc |= rc ? 0 : write_file(o->outdir, "model.cu", cu.s, cu.len, errbuf, errlen);
        gen_free(&gc);
    } else {
        /* a CPU-only directory: no CUDA sources of an earlier run left behind */
        static const char *const stale[] = { "model.cu", "kernels.cuh", "backend.cu" };
        for (size_t k = 0; k < sizeof stale / sizeof stale[0]; k++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", o->outdir, stale[k]);
            remove(path);
        }
    }

    /* the templates, with their placeholders filled */
    char batch[32], params[32], flops[32];
    snprintf(batch, sizeof batch, "%d", m->train.batch);
    snprintf(params, sizeof params, "%lld", (long long)m->params);
    snprintf(flops, sizeof flops, "%.4f", m->flops / 1e9);
    const char *backends = cuda ? "cpu and cuda" : "cpu (the model uses what the CUDA backend does not generate)";
    const char *defb = o->target == MC_TARGET_CUDA ? "cuda" : o->target == MC_TARGET_CPU || !cuda ? "cpu" : "auto";
    /* the README's paragraph on GPUs */
    char par[1024], ex[32] = "";
    if (m->parallel.expert > 1)
        snprintf(ex, sizeof ex, ", expert = %d", m->parallel.expert);
    if (m->parallel.data > 1)
        snprintf(par, sizeof par,
                 "The CUDA trainer is compiled for %d GPUs (`parallel(data = %d%s)`): start it as %d\n"
                 "processes, one per GPU: `mpirun -np %d ./train ...` on one machine, or\n"
                 "`torchrun --nproc-per-node %d --no-python ./train ...`, or with RANK, WORLD_SIZE,\n"
                 "LOCAL_RANK, MASTER_ADDR and MASTER_PORT set for each process. Each GPU trains on\n"
                 "%d samples of every batch of %d%s. Rank 0 prints and writes the metrics and the\n"
                 "checkpoint, which resumes on any number of GPUs or on the CPU. It links NCCL\n"
                 "(`make NCCL_HOME=DIR` when NCCL is not with CUDA or in the system paths). The\n"
                 "CPU trainer trains the whole batch in one process.\n",
                 m->parallel.data, m->parallel.data, ex,
                 m->parallel.data, m->parallel.data, m->parallel.data, m->train.batch / m->parallel.data,
                 m->train.batch,
                 m->parallel.expert > 1 ? "; each GPU of an expert-parallel group holds its share of every\n"
                                          "MoE layer's experts and computes them on the rows the group routes to them"
                                        : "");
    else
        snprintf(par, sizeof par,
                 "The CUDA trainer runs on one GPU (`CUDA_VISIBLE_DEVICES` picks which). To train\n"
                 "on N GPUs, add `parallel(data = N)` to the .moe file and run moecc again.\n");
    const char *vars[] = {
        "model", m->name, "source", m->source_path, "version", o->moecc_version, "parallel", par,
        "batch", batch, "params", params, "gflops", flops,
        "backends", backends, "default_backend", defb,
        "nccl_libs", m->parallel.data > 1 ? "-lnccl" : "",
    };
    static const struct { const char *tmpl, *file; bool cuda; } files[] = {
        { "cpu/ops.h", "ops.h", false },       { "common/train.c", "train.c", false },
        { "cpu/backend.c", "backend.c", false }, { "common/Makefile", "Makefile", false },
        { "common/README.md", "README.md", false }, { "cuda/kernels.cuh", "kernels.cuh", true },
        { "cuda/backend.cu", "backend.cu", true },
    };
    for (size_t k = 0; k < sizeof files / sizeof files[0] && rc == 0; k++) {
        if (files[k].cuda && !cuda)
            continue;
        const char *text = mc_template_get(files[k].tmpl);
        if (!text) {
            snprintf(errbuf, errlen, "internal error: no template %s", files[k].tmpl);
            rc = -1;
            break;
        }
        char *filled = fill_template(text, vars, (int)(sizeof vars / sizeof vars[0] / 2));
        rc |= write_file(o->outdir, files[k].file, filled, strlen(filled), errbuf, errlen);
        free(filled);
    }
    sb_free(&h);
    sb_free(&c);
    sb_free(&j);
    sb_free(&cu);
    gen_free(&g);
    return rc ? -1 : 0;
}

const char *mc_template_get(const char *name)
{
    for (const mc_template *t = mc_templates; t->name; t++)
        if (strcmp(t->name, name) == 0)
            return t->text;
    return NULL;
}
