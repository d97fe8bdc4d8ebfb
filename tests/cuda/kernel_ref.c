/* kernel_ref.c: the CPU reference of tests/cuda/test_kernels.cu, the
 * kernels of templates/cpu/ops.h behind plain C functions (kernel_ref.h).
 *
 * Built without OpenMP: ops.h's `#pragma omp` lines are then ignored
 * (-Wno-unknown-pragmas), and everything runs on one thread. ops.h's
 * random-number kernels (gate_noise, dropout_mask) are not called, so
 * nothing here needs libmoert. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

#include "kernel_ref.h"

_Static_assert(ACT_GELU == 0 && ACT_RELU == 1 && ACT_SILU == 2, "kernel_ref.h documents these activation codes");

/* ---- linear layers and activations ---- */

void ref_linear_forward(float *out, const float *inp, const float *w, const float *b, int M, int K, int N)
{
    linear_forward(out, inp, w, b, M, K, N);
}

void ref_linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w, int M,
                         int K, int N, int acc)
{
    linear_backward(dinp, dw, db, dout, inp, w, M, K, N, acc);
}

void ref_bias_act(float *a, float *h, const float *bias, int M, int N, int G, int act)
{
    for (int g = 0; g < G; g++)
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++)
                h[((size_t)g * M + m) * N + n] += bias[(size_t)g * N + n];
    act_forward(a, h, (size_t)G * M * N, act);
}

void ref_act_backward(float *dinp, const float *dout, const float *inp, size_t n, int act, int acc)
{
    act_backward(dinp, dout, inp, n, act, acc);
}

/* ---- element-wise ---- */

void ref_add_forward(float *out, const float *a, const float *b, size_t n)
{
    add_forward(out, a, b, n);
}

void ref_grad_pass(float *dst, const float *src, size_t n, int acc)
{
    grad_pass(dst, src, n, acc);
}

void ref_scale_inplace(float *x, size_t n, float a)
{
    scale_inplace(x, n, a);
}

void ref_mask_forward(float *out, const float *inp, const float *mask, size_t n)
{
    mask_forward(out, inp, mask, n);
}

void ref_mask_backward(float *dinp, const float *dout, const float *mask, size_t n, int acc)
{
    mask_backward(dinp, dout, mask, n, acc);
}

void ref_rowmask_forward(float *out, const float *inp, const float *keep, int B, size_t R)
{
    rowmask_forward(out, inp, keep, B, R);
}

void ref_rowmask_backward(float *dinp, const float *dout, const float *keep, int B, size_t R, int acc)
{
    rowmask_backward(dinp, dout, keep, B, R, acc);
}

/* ---- embeddings ---- */

void ref_patch_embed_forward(float *out, float *cols, const float *img, const float *w, const float *b, int B, int C,
                             int IH, int IW, int P, int D)
{
    patch_embed_forward(out, cols, img, w, b, B, C, IH, IW, P, D);
}

void ref_patch_embed_backward(float *dw, float *db, const float *dout, const float *cols, int B, int C, int IH, int IW,
                              int P, int D)
{
    patch_embed_backward(dw, db, dout, cols, B, C, IH, IW, P, D);
}

void ref_cls_token_forward(float *out, const float *inp, const float *cls, int B, int T, int D)
{
    cls_token_forward(out, inp, cls, B, T, D);
}

void ref_cls_token_backward(float *dinp, float *dcls, const float *dout, int B, int T, int D, int acc)
{
    cls_token_backward(dinp, dcls, dout, B, T, D, acc);
}

void ref_pos_embed_forward(float *out, const float *inp, const float *pos, int B, int T, int D)
{
    pos_embed_forward(out, inp, pos, B, T, D);
}

void ref_pos_embed_backward(float *dinp, float *dpos, const float *dout, int B, int T, int D, int acc)
{
    pos_embed_backward(dinp, dpos, dout, B, T, D, acc);
}

void ref_sincos_table(float *pos, int GH, int GW, int D, int cls)
{
    sincos_table(pos, GH, GW, D, cls);
}

/* ---- layer norm, attention, pooling ---- */

void ref_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b,
                           int N, int D, float eps)
{
    layernorm_forward(out, mean, rstd, inp, w, b, N, D, eps);
}

void ref_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w,
                            const float *mean, const float *rstd, int N, int D, int acc)
{
    layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, D, acc);
}

void ref_attention_forward(float *out, float *att, const float *qkv, int B, int T, int D, int NH)
{
    attention_forward(out, att, qkv, B, T, D, NH);
}

void ref_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att, int B,
                            int T, int D, int NH)
{
    attention_backward(dqkv, datt, dout, qkv, att, B, T, D, NH);
}

/* ---- hierarchical models ---- */
void ref_conv_im2col(float *cols, const float *img, int B, int C, int H, int W, int K, int S, int pad, int nhwc)
{
    conv_im2col(cols, img, B, C, H, W, K, S, pad, nhwc);
}

void ref_conv_col2im(float *dimg, const float *dcols, int B, int C, int H, int W, int K, int S, int pad, int nhwc,
                     int acc)
{
    conv_col2im(dimg, dcols, B, C, H, W, K, S, pad, nhwc, acc);
}

void ref_patch_embed_input_backward(float *dimg, float *dcols, const float *dout, const float *w, int B, int C, int IH,
                                    int IW, int P, int D, int acc)
{
    patch_embed_input_backward(dimg, dcols, dout, w, B, C, IH, IW, P, D, acc);
}

void ref_transpose_rc(float *out, const float *inp, int B, int R, int C, int acc)
{
    transpose_rc(out, inp, B, R, C, acc);
}

void ref_window_permute(float *dst, const float *src, int B, int GH, int GW, int WS, int C, int to_windows, int acc)
{
    window_permute(dst, src, B, GH, GW, WS, C, to_windows, acc);
}

void ref_grid_pool_forward(float *out, const float *inp, int B, int GH, int GW, int WS, int D)
{
    grid_pool_forward(out, inp, B, GH, GW, WS, D);
}

void ref_grid_pool_backward(float *dinp, const float *dout, int B, int GH, int GW, int WS, int D, int acc)
{
    grid_pool_backward(dinp, dout, B, GH, GW, WS, D, acc);
}

void ref_global_window_qkv(float *qkv, const float *q, const float *kv, int B, int GH, int GW, int WS, int D)
{
    global_window_qkv(qkv, q, kv, B, GH, GW, WS, D);
}

void ref_global_window_qkv_backward(float *dq, float *dkv, const float *dqkv, int B, int GH, int GW, int WS, int D)
{
    global_window_qkv_backward(dq, dkv, dqkv, B, GH, GW, WS, D);
}

void ref_merge2x2_forward(float *out, const float *inp, int B, int GH, int GW, int D)
{
    merge2x2_forward(out, inp, B, GH, GW, D);
}

void ref_merge2x2_backward(float *dinp, const float *dout, int B, int GH, int GW, int D, int acc)
{
    merge2x2_backward(dinp, dout, B, GH, GW, D, acc);
}

void ref_pool_forward(float *out, const float *inp, int B, int T, int D, int cls)
{
    pool_forward(out, inp, B, T, D, cls);
}

void ref_pool_backward(float *dinp, const float *dout, int B, int T, int D, int cls, int acc)
{
    pool_backward(dinp, dout, B, T, D, cls, acc);
}

void ref_l2norm_forward(float *out, float *norm, const float *in, int rows, int C)
{
    l2norm_forward(out, norm, in, rows, C);
}

void ref_l2norm_backward(float *din, const float *dout, const float *out, const float *norm, int rows, int C, int acc)
{
    l2norm_backward(din, dout, out, norm, rows, C, acc);
}

void ref_moe_topk_row(int *idx, float *val, const float *p, int E, int K)
{
    moe_topk_row(idx, val, p, E, K);
}

float ref_moe_load_forward(float *load, float *dens, int *thr, const float *clean, const float *noisy, const int *topk,
                           int N, int E, int K, float std)
{
    return moe_load_forward(load, dens, thr, clean, noisy, topk, N, E, K, std);
}

void ref_moe_load_backward(float *dlogits, const float *load, const float *dens, const int *thr, const int *topk, int N,
                           int E, int K, float w)
{
    moe_load_backward(dlogits, load, dens, thr, topk, N, E, K, w);
}

/* ---- heads and the loss ---- */

float ref_softmax_xent(float *dlogits, const float *logits, int C, int label, float eps, float scale)
{
    return softmax_xent(dlogits, logits, C, label, eps, scale);
}

float ref_softmax_xent_mix(float *dlogits, const float *logits, int C, int label, int label_mix, float lam, float eps,
                           float scale)
{
    return softmax_xent_mix(dlogits, logits, C, label, label_mix, lam, eps, scale);
}

void ref_head_forward(float *out, const float *inp, const float *param, const int64_t *w_off, const int64_t *b_off,
                      const int *classes, const int32_t *dataset, int B, int D, int CMAX)
{
    for (int b = 0; b < B; b++) {
        const int d = dataset[b];
        for (int c = 0; c < CMAX; c++) {
            if (c >= classes[d]) {
                out[(size_t)b * CMAX + c] = 0.0f;
                continue;
            }
            const float *w = param + w_off[d] + (size_t)c * D;
            double s = param[b_off[d] + c];
            for (int j = 0; j < D; j++)
                s += (double)inp[(size_t)b * D + j] * w[j];
            out[(size_t)b * CMAX + c] = (float)s;
        }
    }
}

void ref_head_backward(float *dinp, float *grad, const float *dout, const float *inp, const float *param,
                       const int64_t *w_off, const int64_t *b_off, const int *classes, const int32_t *dataset, int B,
                       int D, int CMAX, int acc)
{
    /* the input's gradient */
    for (int b = 0; b < B; b++) {
        const int d = dataset[b];
        for (int j = 0; j < D; j++) {
            double s = 0.0;
            for (int c = 0; c < classes[d]; c++)
                s += (double)dout[(size_t)b * CMAX + c] * param[w_off[d] + (size_t)c * D + j];
            float *o = dinp + (size_t)b * D + j;
            *o = acc ? (float)((double)*o + s) : (float)s;
        }
    }
    /* the heads' weights and biases: every dataset that has a sample here */
    int ND = 0;
    for (int b = 0; b < B; b++)
        if (dataset[b] + 1 > ND)
            ND = dataset[b] + 1;
    for (int d = 0; d < ND; d++)
        for (int c = 0; c < classes[d]; c++) {
            for (int j = 0; j <= D; j++) {
                double s = 0.0;
                for (int b = 0; b < B; b++)
                    if (dataset[b] == d)
                        s += (double)dout[(size_t)b * CMAX + c] * (j < D ? (double)inp[(size_t)b * D + j] : 1.0);
                float *g = j < D ? grad + w_off[d] + (size_t)c * D + j : grad + b_off[d] + c;
                *g = (float)((double)*g + s);
            }
        }
}

/* ---- mixture of experts ---- */

int ref_moe_capacity(int N, int E, int K, double cf, int dropless)
{
    return moe_capacity(N, E, K, cf, dropless);
}

int ref_moe_layer(ref_moe_io *io)
{
    const int N = io->N, D = io->D, H = io->H, E = io->E, K = io->K;
    const size_t rows = (size_t)N * K; /* at most N * K rows are kept */
    float *xe = calloc(rows * D, sizeof(float)), *h = calloc(rows * H, sizeof(float));
    float *a = calloc(rows * H, sizeof(float)), *ye = calloc(rows * D, sizeof(float));
    float *dye = calloc(rows * D, sizeof(float)), *dh = calloc(rows * H, sizeof(float));
    float *dxe = calloc(rows * D, sizeof(float)), *dprobs = calloc((size_t)N * E, sizeof(float));
    float *prio = calloc((size_t)N, sizeof(float));
    int *offset = calloc((size_t)E, sizeof(int)), *token = calloc(rows, sizeof(int));
    int *order = calloc(2 * (size_t)N, sizeof(int));
    int rc = -1;
    if (xe && h && a && ye && dye && dh && dxe && dprobs && prio && offset && token && order) {
        moe_routing r = { io->topk, io->topp, io->gate, io->slot, io->count, offset, token, order, prio };
        /* the forward pass, as model.c */
        router_softmax(io->probs, io->lse, io->logits, N, E);
        if (io->expert_choice)
            moe_route_expert_choice(&r, io->probs, N, E, io->cap);
        else
            moe_route(&r, io->probs, N, E, K, io->cap, io->normalize, io->batch_priority);
        moe_experts_forward(io->out, xe, h, a, ye, io->x, &r, io->w1, io->b1, io->w2, io->b2, N, D, H, E, K,
                            io->act);
        moe_aux_losses(io->aux, io->probs, io->lse, &r, io->target, N, E, K);
        memset(io->load, 0, (size_t)E * sizeof(int64_t));
        memset(io->ds_expert, 0, (size_t)io->ND * E * sizeof(int64_t));
        moe_stats st = { io->load, io->ds_expert, 0, 0, 0, 0.0 };
        moe_stats_add(&st, &r, io->probs, io->dataset, N, io->T, E, K);
        io->assigned = st.assigned;
        io->dropped = st.dropped;
        io->tokens = st.tokens;
        io->entropy = st.entropy;
        /* the backward pass, as model.c */
        moe_experts_backward(io->dx, io->dgate, dye, dh, dxe, io->dout, xe, h, a, ye, &r, io->w1, io->w2, io->dw1,
                             io->db1, io->dw2, io->db2, N, D, H, E, K, io->act, io->acc);
        moe_router_backward(io->dlogits, dprobs, io->dgate, io->probs, io->lse, &r, io->target, N, E, K,
                            io->normalize, io->w_bal, io->w_z, io->w_ds, io->w_imp);
        rc = 0;
    }
    free(xe);
    free(h);
    free(a);
    free(ye);
    free(dye);
    free(dh);
    free(dxe);
    free(dprobs);
    free(prio);
    free(offset);
    free(token);
    free(order);
    return rc;
}

/* ---- the optimizer ---- */

double ref_grad_norm(const float *g, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)g[i] * g[i];
    return sqrt(s);
}

/* a copy of g, scaled as backend.c clips it */
static float *clipped(const float *g, size_t n, float clip, double gnorm)
{
    float *c = malloc((n ? n : 1) * sizeof(float));
    if (!c)
        return NULL;
    memcpy(c, g, n * sizeof(float));
    if (clip > 0.0f && gnorm > clip) {
        const float scale = (float)(clip / gnorm);
        for (size_t i = 0; i < n; i++)
            c[i] *= scale;
    }
    return c;
}

int ref_adamw_masked(float *p, const float *g, float *m, float *v, const uint8_t *decay, size_t n, float lr, float b1,
                     float b2, float eps, float wd, int t, float clip, double gnorm)
{
    float *gc = clipped(g, n, clip, gnorm);
    if (!gc)
        return -1;
    for (size_t i = 0; i < n; i++)
        adamw_update(p + i, gc + i, m + i, v + i, 1, lr, b1, b2, eps, decay[i] ? wd : 0.0f, t);
    free(gc);
    return 0;
}

int ref_sgd_masked(float *p, const float *g, float *buf, const uint8_t *decay, size_t n, float lr, float mu,
                   int nesterov, float wd, int t, float clip, double gnorm)
{
    float *gc = clipped(g, n, clip, gnorm);
    if (!gc)
        return -1;
    for (size_t i = 0; i < n; i++)
        sgd_update(p + i, gc + i, buf + i, 1, lr, mu, nesterov, decay[i] ? wd : 0.0f, t);
    free(gc);
    return 0;
}
