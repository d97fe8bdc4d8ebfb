/* kernel_ref.h: the CPU reference of tests/cuda/test_kernels.cu.
 *
 * Plain C wrappers (kernel_ref.c) around the kernels of templates/cpu/ops.h,
 * which is C with static inline functions and cannot be included from the
 * CUDA test itself. Every function here calls the ops.h function of the same
 * name (without the ref_ prefix), with the same argument order, except:
 *   - ref_bias_act: a linear layer's bias (as mm_nt adds it) and act_forward;
 *   - ref_moe_layer: one MoE layer's whole CPU sequence, as the generated
 *     model.c calls it (router_softmax, moe_route, moe_experts_forward,
 *     moe_aux_losses, moe_stats_add, moe_experts_backward,
 *     moe_router_backward);
 *   - ref_adamw_masked / ref_sgd_masked: gradient clipping as backend.c does
 *     it, then adamw_update / sgd_update element by element with a decay mask;
 *   - ref_head_forward / ref_head_backward / ref_grad_norm: ops.h has no
 *     per-dataset head (backend.c and model.c do it); plain loops in double.
 * The random-number kernels (gate_noise, dropout_mask) are not wrapped: they
 * would need libmoert's Philox, and the test keeps to ops.h alone.
 *
 * The activation codes are ops.h's: 0 GELU, 1 RELU, 2 SILU. */
#ifndef MOE_KERNEL_REF_H
#define MOE_KERNEL_REF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- linear layers and activations ---- */
void ref_linear_forward(float *out, const float *inp, const float *w, const float *b, int M, int K, int N);
void ref_linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w, int M,
                         int K, int N, int acc);
/* h[g][M,N] += bias[g][N]; a = act(h) */
void ref_bias_act(float *a, float *h, const float *bias, int M, int N, int G, int act);
void ref_act_backward(float *dinp, const float *dout, const float *inp, size_t n, int act, int acc);

/* ---- element-wise ---- */
void ref_add_forward(float *out, const float *a, const float *b, size_t n);
void ref_grad_pass(float *dst, const float *src, size_t n, int acc);
void ref_scale_inplace(float *x, size_t n, float a);
void ref_mask_forward(float *out, const float *inp, const float *mask, size_t n);
void ref_mask_backward(float *dinp, const float *dout, const float *mask, size_t n, int acc);
void ref_rowmask_forward(float *out, const float *inp, const float *keep, int B, size_t R);
void ref_rowmask_backward(float *dinp, const float *dout, const float *keep, int B, size_t R, int acc);

/* ---- embeddings ---- */
void ref_patch_embed_forward(float *out, float *cols, const float *img, const float *w, const float *b, int B, int C,
                             int IH, int IW, int P, int D);
void ref_patch_embed_backward(float *dw, float *db, const float *dout, const float *cols, int B, int C, int IH, int IW,
                              int P, int D);
void ref_cls_token_forward(float *out, const float *inp, const float *cls, int B, int T, int D);
void ref_cls_token_backward(float *dinp, float *dcls, const float *dout, int B, int T, int D, int acc);
void ref_pos_embed_forward(float *out, const float *inp, const float *pos, int B, int T, int D);
void ref_pos_embed_backward(float *dinp, float *dpos, const float *dout, int B, int T, int D, int acc);
void ref_sincos_table(float *pos, int GH, int GW, int D, int cls);

/* ---- layer norm, attention, pooling ---- */
void ref_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b,
                           int N, int D, float eps);
void ref_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w,
                            const float *mean, const float *rstd, int N, int D, int acc);
void ref_attention_forward(float *out, float *att, const float *qkv, int B, int T, int D, int NH);
void ref_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att, int B,
                            int T, int D, int NH);
void ref_pool_forward(float *out, const float *inp, int B, int T, int D, int cls);
void ref_pool_backward(float *dinp, const float *dout, int B, int T, int D, int cls, int acc);
void ref_l2norm_forward(float *out, float *norm, const float *in, int rows, int C);
void ref_l2norm_backward(float *din, const float *dout, const float *out, const float *norm, int rows, int C, int acc);
void ref_moe_topk_row(int *idx, float *val, const float *p, int E, int K);
float ref_moe_load_forward(float *load, float *dens, int *thr, const float *clean, const float *noisy, const int *topk,
                           int N, int E, int K, float std);
void ref_moe_load_backward(float *dlogits, const float *load, const float *dens, const int *thr, const int *topk, int N,
                           int E, int K, float w);

/* ---- heads and the loss ---- */
float ref_softmax_xent(float *dlogits, const float *logits, int C, int label, float eps, float scale);
float ref_softmax_xent_mix(float *dlogits, const float *logits, int C, int label, int label_mix, float lam, float eps,
                           float scale);
/* out[b, c] = inp[b] . w_d[c] + b_d[c] for c < classes[d], 0 beyond (d = dataset[b]);
 * w_d at param + w_off[d] ([classes[d], D]), b_d at param + b_off[d] */
void ref_head_forward(float *out, const float *inp, const float *param, const int64_t *w_off, const int64_t *b_off,
                      const int *classes, const int32_t *dataset, int B, int D, int CMAX);
/* dinp[b] (+)= sum_{c < C} dout[b, c] w_d[c]; grad += the heads' weight and bias gradients */
void ref_head_backward(float *dinp, float *grad, const float *dout, const float *inp, const float *param,
                       const int64_t *w_off, const int64_t *b_off, const int *classes, const int32_t *dataset, int B,
                       int D, int CMAX, int acc);

/* ---- mixture of experts ---- */
int ref_moe_capacity(int N, int E, int K, double cf, int dropless);

typedef struct ref_moe_io {
    /* shapes and options */
    int N, D, H, E, K;
    int T;  /* tokens per sample: dataset[n / T] */
    int ND; /* datasets */
    int cap, normalize, batch_priority, act, acc;
    int expert_choice; /* the experts choose (K = E, normalize 0) */
    float w_bal, w_z, w_ds, w_imp;
    /* inputs */
    const float *x;       /* [N, D] */
    const float *logits;  /* [N, E] */
    const float *w1, *b1; /* [E, H, D], [E, H] */
    const float *w2, *b2; /* [E, D, H], [E, D] */
    const float *dout;    /* [N, D] */
    const int *target;    /* [N] or NULL */
    const int32_t *dataset; /* [N / T] */
    /* outputs, allocated by the caller */
    float *probs, *lse;   /* [N, E], [N] */
    float *topp, *gate;   /* [N, K] */
    int *topk, *slot;     /* [N, K] */
    int *count;           /* [E] */
    float *out;           /* [N, D] */
    float aux[4];
    float *dx;            /* [N, D]: read when acc */
    float *dgate;         /* [N, K] */
    float *dw1, *db1, *dw2, *db2; /* accumulated */
    float *dlogits;       /* [N, E] */
    int64_t *load;        /* [E], written (zeroed first) */
    int64_t *ds_expert;   /* [ND, E], written (zeroed first) */
    int64_t assigned, dropped, tokens;
    double entropy;
} ref_moe_io;

/* 0, or -1 when out of memory */
int ref_moe_layer(ref_moe_io *io);

/* ---- the optimizer ---- */
/* sqrt of the sum of g[i]^2, in double */
double ref_grad_norm(const float *g, size_t n);
/* g scaled by clip / gnorm when clip > 0 and gnorm > clip (in a copy), then
 * one AdamW / SGD step; weight decay wd only where decay[i] */
int ref_adamw_masked(float *p, const float *g, float *m, float *v, const uint8_t *decay, size_t n, float lr, float b1,
                     float b2, float eps, float wd, int t, float clip, double gnorm);
int ref_sgd_masked(float *p, const float *g, float *buf, const uint8_t *decay, size_t n, float lr, float mu,
                   int nesterov, float wd, int t, float clip, double gnorm);

/* ---- hierarchical models ---- */
void ref_conv_im2col(float *cols, const float *img, int B, int C, int H, int W, int K, int S, int pad, int nhwc);
void ref_conv_col2im(float *dimg, const float *dcols, int B, int C, int H, int W, int K, int S, int pad, int nhwc,
                     int acc);
void ref_patch_embed_input_backward(float *dimg, float *dcols, const float *dout, const float *w, int B, int C, int IH,
                                    int IW, int P, int D, int acc);
void ref_transpose_rc(float *out, const float *inp, int B, int R, int C, int acc);
void ref_window_permute(float *dst, const float *src, int B, int GH, int GW, int WS, int C, int to_windows, int acc);
void ref_grid_pool_forward(float *out, const float *inp, int B, int GH, int GW, int WS, int D);
void ref_grid_pool_backward(float *dinp, const float *dout, int B, int GH, int GW, int WS, int D, int acc);
void ref_global_window_qkv(float *qkv, const float *q, const float *kv, int B, int GH, int GW, int WS, int D);
void ref_global_window_qkv_backward(float *dq, float *dkv, const float *dqkv, int B, int GH, int GW, int WS, int D);
void ref_merge2x2_forward(float *out, const float *inp, int B, int GH, int GW, int D);
void ref_merge2x2_backward(float *dinp, const float *dout, int B, int GH, int GW, int D, int acc);

#ifdef __cplusplus
}
#endif

#endif /* MOE_KERNEL_REF_H */
