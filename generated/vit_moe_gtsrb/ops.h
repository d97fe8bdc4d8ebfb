/* ops.h: the CPU reference kernels of moecc's generated trainers.
 * Copied into the trainer of vit_moe_gtsrb by moecc 0.1.0 from templates/cpu/ops.h.
 * Do not edit: it is written again each time moecc runs.
 *
 * Plain C, fp32, row-major. This is the reference every CUDA kernel is
 * tested against: correct first, readable second, fast third. The
 * generated model.c calls each kernel with compile-time constant shapes;
 * the kernels are static, so the compiler specialises them.
 *
 * Shape legend:
 *   B = batch, T = tokens per sample, N = B * T rows, D = width (channels),
 *   H = hidden width, E = experts, K = experts per token (top-k),
 *   NH = attention heads, HD = head width, C = classes.
 *
 * Backward convention: a kernel's `acc` argument says whether it adds into
 * the gradient of its input (another consumer wrote it already) or
 * overwrites it (it is the first). Parameter gradients always accumulate;
 * the driver zeroes them once per step. */
#ifndef MOE_OPS_H
#define MOE_OPS_H

#include <stdint.h>

/* ---- the types the CUDA backend shares (it includes only these: model.h
 * defines MOE_OPS_TYPES_ONLY there) ---------------------------------------- */

/* activation codes (templates/cuda/kernels.cuh uses the same) */
enum { ACT_GELU = 0, ACT_RELU = 1, ACT_SILU = 2 };

/* Routing statistics of one MoE layer, summed over forward passes. */
typedef struct moe_stats {
    int64_t *load;        /* [E] choices kept per expert */
    int64_t *ds_expert;   /* [datasets, E] top-1 choices per dataset */
    int64_t assigned;     /* choices made */
    int64_t dropped;      /* choices over capacity */
    int64_t tokens;
    double entropy;       /* sum over tokens of the router entropy (nats) */
} moe_stats;

#ifndef MOE_OPS_TYPES_ONLY

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <moert.h>

#ifdef MOE_USE_CBLAS
#include <cblas.h>
#endif

/* ---- matrix products --------------------------------------------------- */

/* The matrix products run on the OpenMP threads: each thread multiplies
 * its own block of output rows with a single-threaded BLAS (the trainer
 * sets OpenBLAS to one thread), so BLAS and the other kernels never
 * compete for the cores. */
#ifdef _OPENMP
#include <omp.h>
#define MOE_THREAD() omp_get_thread_num()
#define MOE_NTHREADS() omp_get_num_threads()
#else
#define MOE_THREAD() 0
#define MOE_NTHREADS() 1
#endif

/* rows [*lo, *hi) of M for thread t of nt, in blocks of 8 */
static inline void split_rows(int M, int t, int nt, int *lo, int *hi)
{
    int blocks = (M + 7) / 8;
    *lo = (int)((long)blocks * t / nt) * 8;
    *hi = (int)((long)blocks * (t + 1) / nt) * 8;
    if (*lo > M)
        *lo = M;
    if (*hi > M)
        *hi = M;
}

/* out[M,N] (+)= a[M,K] @ b[N,K]^T (+ bias[N]) : a linear layer's forward. */
static inline void mm_nt(float *out, const float *a, const float *b, const float *bias,
                         int M, int N, int K, int acc)
{
#pragma omp parallel if ((long)M * N * K > 65536)
    {
        int lo, hi;
        split_rows(M, MOE_THREAD(), MOE_NTHREADS(), &lo, &hi);
        if (hi > lo) {
#ifdef MOE_USE_CBLAS
            float *o = out + (size_t)lo * N;
            if (bias && !acc)
                for (int i = lo; i < hi; i++)
                    memcpy(out + (size_t)i * N, bias, (size_t)N * sizeof(float));
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, hi - lo, N, K, 1.0f, a + (size_t)lo * K, K,
                        b, K, (acc || bias) ? 1.0f : 0.0f, o, N);
            if (bias && acc)
                for (int i = lo; i < hi; i++)
                    for (int j = 0; j < N; j++)
                        out[(size_t)i * N + j] += bias[j];
#else
            for (int i = lo; i < hi; i++) {
                const float *ai = a + (size_t)i * K;
                float *oi = out + (size_t)i * N;
                for (int j = 0; j < N; j++) {
                    const float *bj = b + (size_t)j * K;
                    float s = 0.0f;
                    for (int k = 0; k < K; k++)
                        s += ai[k] * bj[k];
                    if (bias)
                        s += bias[j];
                    oi[j] = acc ? oi[j] + s : s;
                }
            }
#endif
        }
    }
}

/* out[M,K] (+)= a[M,N] @ b[N,K] : the input gradient of a linear layer. */
static inline void mm_nn(float *out, const float *a, const float *b, int M, int N, int K, int acc)
{
#pragma omp parallel if ((long)M * N * K > 65536)
    {
        int lo, hi;
        split_rows(M, MOE_THREAD(), MOE_NTHREADS(), &lo, &hi);
        if (hi > lo) {
#ifdef MOE_USE_CBLAS
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, hi - lo, K, N, 1.0f, a + (size_t)lo * N, N,
                        b, K, acc ? 1.0f : 0.0f, out + (size_t)lo * K, K);
#else
            for (int i = lo; i < hi; i++) {
                float *oi = out + (size_t)i * K;
                if (!acc)
                    memset(oi, 0, (size_t)K * sizeof(float));
                const float *ai = a + (size_t)i * N;
                for (int j = 0; j < N; j++) {
                    const float aij = ai[j];
                    const float *bj = b + (size_t)j * K;
                    for (int k = 0; k < K; k++)
                        oi[k] += aij * bj[k];
                }
            }
#endif
        }
    }
}

/* out[N,K] += a[M,N]^T @ b[M,K] : the weight gradient of a linear layer.
 * Threads split the N output rows (the reduction over M stays whole). */
static inline void mm_tn(float *out, const float *a, const float *b, int M, int N, int K)
{
#pragma omp parallel if ((long)M * N * K > 65536)
    {
        int lo, hi;
        split_rows(N, MOE_THREAD(), MOE_NTHREADS(), &lo, &hi);
        if (hi > lo) {
#ifdef MOE_USE_CBLAS
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, hi - lo, K, M, 1.0f, a + lo, N, b, K, 1.0f,
                        out + (size_t)lo * K, K);
#else
            for (int j = lo; j < hi; j++) {
                float *oj = out + (size_t)j * K;
                for (int i = 0; i < M; i++) {
                    const float aij = a[(size_t)i * N + j];
                    if (aij == 0.0f)
                        continue;
                    const float *bi = b + (size_t)i * K;
                    for (int k = 0; k < K; k++)
                        oj[k] += aij * bi[k];
                }
            }
#endif
        }
    }
}

/* db[N] += sum over rows of dout[M,N] */
static inline void bias_grad(float *db, const float *dout, int M, int N)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++)
            db[j] += dout[(size_t)i * N + j];
}

/* ---- linear ------------------------------------------------------------ */

/* out[M,N] = inp[M,K] @ w[N,K]^T + b[N] */
static inline void linear_forward(float *out, const float *inp, const float *w, const float *b,
                           int M, int K, int N)
{
    mm_nt(out, inp, w, b, M, N, K, 0);
}

/* dinp[M,K] (+)= dout @ w ; dw[N,K] += dout^T @ inp ; db[N] += sum dout */
static inline void linear_backward(float *dinp, float *dw, float *db, const float *dout,
                            const float *inp, const float *w, int M, int K, int N, int acc)
{
    if (dinp)
        mm_nn(dinp, dout, w, M, N, K, acc);
    mm_tn(dw, dout, inp, M, N, K);
    if (db)
        bias_grad(db, dout, M, N);
}

/* ---- activations --------------------------------------------------------- */

static inline float act_f(int act, float x)
{
    switch (act) {
    case ACT_RELU: return x > 0.0f ? x : 0.0f;
    case ACT_SILU: return x / (1.0f + expf(-x));
    default: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); /* exact, as nn.GELU() */
    }
}

static inline float act_grad(int act, float x)
{
    switch (act) {
    case ACT_RELU: return x > 0.0f ? 1.0f : 0.0f;
    case ACT_SILU: {
        float s = 1.0f / (1.0f + expf(-x));
        return s * (1.0f + x * (1.0f - s));
    }
    default: {
        float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
        float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
        return cdf + x * pdf;
    }
    }
}

/* out[n] = act(inp[n]) */
static inline void act_forward(float *out, const float *inp, size_t n, int act)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        out[i] = act_f(act, inp[i]);
}

/* dinp[n] (+)= dout[n] * act'(inp[n]) */
static inline void act_backward(float *dinp, const float *dout, const float *inp, size_t n, int act, int acc)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = dout[i] * act_grad(act, inp[i]);
        dinp[i] = acc ? dinp[i] + g : g;
    }
}

/* ---- element-wise ------------------------------------------------------ */

/* out = a + b */
static inline void add_forward(float *out, const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

/* dst (+)= src */
static inline void grad_pass(float *dst, const float *src, size_t n, int acc)
{
    if (!acc) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    for (size_t i = 0; i < n; i++)
        dst[i] += src[i];
}

/* ---- patch embedding: a P x P convolution with stride P ------------------ */

/* cols[B*OH*OW, C*K*K] = the K x K neighbourhoods (zero padding pad, stride
 * S) of img[B, C, H, W] (nhwc = 0) or img[B, H*W, C] (nhwc = 1), one row per
 * output position, columns in the order (c, ky, kx) of a [*, C, K, K] weight;
 * OH = (H + 2 pad - K) / S + 1, OW likewise. Patch embedding is the case
 * K = S = P, pad 0; the convolution stem's layers pad by K/2. Channels-first,
 * a kernel row inside the image is one copy. */
static inline void conv_im2col(float *cols, const float *img, int B, int C, int H, int W, int K, int S, int pad,
                               int nhwc)
{
    const int OH = (H + 2 * pad - K) / S + 1, OW = (W + 2 * pad - K) / S + 1, CKK = C * K * K;
#pragma omp parallel for schedule(static)
    for (int bo = 0; bo < B * OH; bo++) {
        const int b = bo / OH, oy = bo % OH;
        for (int ox = 0; ox < OW; ox++) {
            float *row = cols + ((size_t)bo * OW + ox) * CKK;
            const int x0 = ox * S - pad;
            for (int c = 0; c < C; c++)
                for (int ky = 0; ky < K; ky++) {
                    const int y = oy * S + ky - pad;
                    float *dst = row + (c * K + ky) * K;
                    if (!nhwc && y >= 0 && y < H && x0 >= 0 && x0 + K <= W) {
                        memcpy(dst, img + (((size_t)b * C + c) * H + y) * W + x0, (size_t)K * sizeof *dst);
                        continue;
                    }
                    for (int kx = 0; kx < K; kx++) {
                        const int x = x0 + kx;
                        float v = 0.0f;
                        if (y >= 0 && y < H && x >= 0 && x < W)
                            v = nhwc ? img[((size_t)b * H * W + (size_t)y * W + x) * C + c]
                                     : img[(((size_t)b * C + c) * H + y) * W + x];
                        dst[kx] = v;
                    }
                }
        }
    }
}

/* out[B, T, D] = patches @ w[D, C*P*P]^T + b */
static inline void patch_embed_forward(float *out, float *cols, const float *img, const float *w,
                                const float *b, int B, int C, int IH, int IW, int P, int D)
{
    const int T = (IH / P) * (IW / P);
    conv_im2col(cols, img, B, C, IH, IW, P, P, 0, 0);
    linear_forward(out, cols, w, b, B * T, C * P * P, D);
}

/* dw and db (the input image needs no gradient; patch_embed_input_backward,
 * with the convolution stem's kernels below, gives the gradient of an image
 * that a stem made) */
static inline void patch_embed_backward(float *dw, float *db, const float *dout, const float *cols,
                                 int B, int C, int IH, int IW, int P, int D)
{
    const int T = (IH / P) * (IW / P);
    linear_backward(NULL, dw, db, dout, cols, NULL, B * T, C * P * P, D, 0);
}

/* ---- class token and position embedding ---------------------------------- */

/* out[B, T+1, D]: the class token, then inp[B, T, D] */
static inline void cls_token_forward(float *out, const float *inp, const float *cls, int B, int T, int D)
{
    for (int b = 0; b < B; b++) {
        float *o = out + (size_t)b * (T + 1) * D;
        memcpy(o, cls, (size_t)D * sizeof(float));
        memcpy(o + D, inp + (size_t)b * T * D, (size_t)T * D * sizeof(float));
    }
}

static inline void cls_token_backward(float *dinp, float *dcls, const float *dout, int B, int T, int D, int acc)
{
    for (int b = 0; b < B; b++) {
        const float *g = dout + (size_t)b * (T + 1) * D;
        for (int d = 0; d < D; d++)
            dcls[d] += g[d];
        grad_pass(dinp + (size_t)b * T * D, g + D, (size_t)T * D, acc);
    }
}

/* out[B, T, D] = inp + pos[T, D] */
static inline void pos_embed_forward(float *out, const float *inp, const float *pos, int B, int T, int D)
{
    for (int b = 0; b < B; b++)
        add_forward(out + (size_t)b * T * D, inp + (size_t)b * T * D, pos, (size_t)T * D);
}

/* dpos may be NULL (a fixed sine-cosine table) */
static inline void pos_embed_backward(float *dinp, float *dpos, const float *dout, int B, int T, int D, int acc)
{
    grad_pass(dinp, dout, (size_t)B * T * D, acc);
    if (dpos)
        for (int b = 0; b < B; b++)
            for (size_t i = 0; i < (size_t)T * D; i++)
                dpos[i] += dout[(size_t)b * T * D + i];
}

/* The fixed 2-D sine-cosine table of MAE, for a GH x GW grid (plus a zero
 * row first when there is a class token). */
static inline void sincos_table(float *pos, int GH, int GW, int D, int cls)
{
    float *p = pos;
    if (cls) {
        memset(p, 0, (size_t)D * sizeof(float));
        p += D;
    }
    const int q = D / 4;
    for (int y = 0; y < GH; y++)
        for (int x = 0; x < GW; x++) {
            float *row = p + ((size_t)y * GW + x) * D;
            memset(row, 0, (size_t)D * sizeof(float));
            for (int i = 0; i < q; i++) {
                double omega = 1.0 / pow(10000.0, (double)i / q);
                row[i] = (float)sin(x * omega);
                row[q + i] = (float)cos(x * omega);
                row[2 * q + i] = (float)sin(y * omega);
                row[3 * q + i] = (float)cos(y * omega);
            }
        }
}

/* ---- layer norm -------------------------------------------------------- */

/* out[N, D] = (inp - mean) * rstd * w + b ; saves mean[N], rstd[N] */
static inline void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                              const float *w, const float *b, int N, int D, float eps)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * D;
        float m = 0.0f;
        for (int i = 0; i < D; i++)
            m += x[i];
        m /= D;
        float v = 0.0f;
        for (int i = 0; i < D; i++) {
            float d = x[i] - m;
            v += d * d;
        }
        v /= D;
        float s = 1.0f / sqrtf(v + eps);
        float *o = out + (size_t)n * D;
        for (int i = 0; i < D; i++)
            o[i] = (x[i] - m) * s * w[i] + b[i];
        mean[n] = m;
        rstd[n] = s;
    }
}

static inline void layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                               const float *inp, const float *w, const float *mean,
                               const float *rstd, int N, int D, int acc)
{
    for (int n = 0; n < N; n++) {
        const float *g = dout + (size_t)n * D, *x = inp + (size_t)n * D;
        float *dx = dinp + (size_t)n * D;
        const float m = mean[n], s = rstd[n];
        float sum_g = 0.0f, sum_gx = 0.0f;
        for (int i = 0; i < D; i++) {
            float xhat = (x[i] - m) * s;
            float gw = g[i] * w[i];
            sum_g += gw;
            sum_gx += gw * xhat;
            dw[i] += g[i] * xhat;
            db[i] += g[i];
        }
        sum_g /= D;
        sum_gx /= D;
        for (int i = 0; i < D; i++) {
            float xhat = (x[i] - m) * s;
            float v = (g[i] * w[i] - sum_g - xhat * sum_gx) * s;
            dx[i] = acc ? dx[i] + v : v;
        }
    }
}

/* ---- multi-head self-attention (non-causal) ---------------------------------- */

/* qkv[B, T, 3D] holds q, k, v of each token; att[B, NH, T, T] the softmax
 * weights (saved); out[B, T, D] the heads' outputs, concatenated. One
 * (sample, head) per iteration, on the OpenMP threads. */
static inline void attention_forward(float *out, float *att, const float *qkv, int B, int T, int D, int NH)
{
    const int HD = D / NH, D3 = 3 * D;
    const float scale = 1.0f / sqrtf((float)HD);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        const int b = bh / NH, h = bh % NH;
        float *a = att + (size_t)bh * T * T;
        const float *q = qkv + (size_t)b * T * D3 + h * HD, *k = q + D, *v = q + 2 * D;
        float *o = out + (size_t)b * T * D + h * HD;
#ifdef MOE_USE_CBLAS
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HD, scale, q, D3, k, D3, 0.0f, a, T);
#else
        for (int t = 0; t < T; t++)
            for (int s2 = 0; s2 < T; s2++) {
                float dot = 0.0f;
                for (int i = 0; i < HD; i++)
                    dot += q[(size_t)t * D3 + i] * k[(size_t)s2 * D3 + i];
                a[(size_t)t * T + s2] = dot * scale;
            }
#endif
        for (int t = 0; t < T; t++) {
            float *row = a + (size_t)t * T;
            float mx = row[0];
            for (int s2 = 1; s2 < T; s2++)
                mx = row[s2] > mx ? row[s2] : mx;
            float sum = 0.0f;
            for (int s2 = 0; s2 < T; s2++) {
                row[s2] = expf(row[s2] - mx);
                sum += row[s2];
            }
            const float inv = 1.0f / sum;
            for (int s2 = 0; s2 < T; s2++)
                row[s2] *= inv;
        }
#ifdef MOE_USE_CBLAS
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, HD, T, 1.0f, a, T, v, D3, 0.0f, o, D);
#else
        for (int t = 0; t < T; t++) {
            float *ot = o + (size_t)t * D;
            for (int i = 0; i < HD; i++)
                ot[i] = 0.0f;
            for (int s2 = 0; s2 < T; s2++) {
                const float w = a[(size_t)t * T + s2];
                for (int i = 0; i < HD; i++)
                    ot[i] += w * v[(size_t)s2 * D3 + i];
            }
        }
#endif
    }
}

/* dqkv[B, T, 3D] (written whole) from dout[B, T, D]; datt [B, NH, T, T]
 * is scratch for the weights' gradient. */
static inline void attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                                      const float *att, int B, int T, int D, int NH)
{
    const int HD = D / NH, D3 = 3 * D;
    const float scale = 1.0f / sqrtf((float)HD);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        const int b = bh / NH, h = bh % NH;
        const float *a = att + (size_t)bh * T * T;
        float *da = datt + (size_t)bh * T * T;
        const float *q = qkv + (size_t)b * T * D3 + h * HD, *k = q + D, *v = q + 2 * D;
        float *dq = dqkv + (size_t)b * T * D3 + h * HD, *dk = dq + D, *dv = dq + 2 * D;
        const float *g = dout + (size_t)b * T * D + h * HD;
#ifdef MOE_USE_CBLAS
        /* datt = g v^T ; dv = att^T g */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HD, 1.0f, g, D, v, D3, 0.0f, da, T);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, HD, T, 1.0f, a, T, g, D, 0.0f, dv, D3);
#else
        for (int t = 0; t < T; t++)
            for (int s2 = 0; s2 < T; s2++) {
                float dot = 0.0f;
                for (int i = 0; i < HD; i++)
                    dot += g[(size_t)t * D + i] * v[(size_t)s2 * D3 + i];
                da[(size_t)t * T + s2] = dot;
            }
        for (int s2 = 0; s2 < T; s2++)
            for (int i = 0; i < HD; i++) {
                float acc = 0.0f;
                for (int t = 0; t < T; t++)
                    acc += a[(size_t)t * T + s2] * g[(size_t)t * D + i];
                dv[(size_t)s2 * D3 + i] = acc;
            }
#endif
        /* through the softmax, and the scale, in place */
        for (int t = 0; t < T; t++) {
            const float *arow = a + (size_t)t * T;
            float *drow = da + (size_t)t * T;
            float sdot = 0.0f;
            for (int s2 = 0; s2 < T; s2++)
                sdot += arow[s2] * drow[s2];
            for (int s2 = 0; s2 < T; s2++)
                drow[s2] = arow[s2] * (drow[s2] - sdot) * scale;
        }
#ifdef MOE_USE_CBLAS
        /* dq = datt k ; dk = datt^T q */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, HD, T, 1.0f, da, T, k, D3, 0.0f, dq, D3);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, HD, T, 1.0f, da, T, q, D3, 0.0f, dk, D3);
#else
        for (int t = 0; t < T; t++)
            for (int i = 0; i < HD; i++) {
                float acc_q = 0.0f, acc_k = 0.0f;
                for (int s2 = 0; s2 < T; s2++) {
                    acc_q += da[(size_t)t * T + s2] * k[(size_t)s2 * D3 + i];
                    acc_k += da[(size_t)s2 * T + t] * q[(size_t)s2 * D3 + i];
                }
                dq[(size_t)t * D3 + i] = acc_q;
                dk[(size_t)t * D3 + i] = acc_k;
            }
#endif
    }
}

/* ---- pooling --------------------------------------------------------------- */

/* out[B, D] = token 0 (cls) or the mean of the T tokens of inp[B, T, D] */
static inline void pool_forward(float *out, const float *inp, int B, int T, int D, int cls)
{
    for (int b = 0; b < B; b++) {
        const float *x = inp + (size_t)b * T * D;
        float *o = out + (size_t)b * D;
        if (cls) {
            memcpy(o, x, (size_t)D * sizeof(float));
            continue;
        }
        for (int d = 0; d < D; d++)
            o[d] = 0.0f;
        for (int t = 0; t < T; t++)
            for (int d = 0; d < D; d++)
                o[d] += x[(size_t)t * D + d];
        for (int d = 0; d < D; d++)
            o[d] /= T;
    }
}

static inline void pool_backward(float *dinp, const float *dout, int B, int T, int D, int cls, int acc)
{
    for (int b = 0; b < B; b++) {
        float *dx = dinp + (size_t)b * T * D;
        const float *g = dout + (size_t)b * D;
        for (int t = 0; t < T; t++)
            for (int d = 0; d < D; d++) {
                float v = cls ? (t == 0 ? g[d] : 0.0f) : g[d] / T;
                dx[(size_t)t * D + d] = acc ? dx[(size_t)t * D + d] + v : v;
            }
    }
}

/* ---- hierarchical models: convolution stem, windows, 2x2 token merge ------ */

/* the adjoint: dimg (+)= the neighbourhoods' gradients dcols, summed where
 * they overlap */
static inline void conv_col2im(float *dimg, const float *dcols, int B, int C, int H, int W, int K, int S, int pad,
                               int nhwc, int acc)
{
    const int OH = (H + 2 * pad - K) / S + 1, OW = (W + 2 * pad - K) / S + 1, CKK = C * K * K;
    if (!acc)
        memset(dimg, 0, sizeof(float) * (size_t)B * C * H * W);
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) /* a sample's positions only touch its own image */
        for (int oy = 0; oy < OH; oy++)
            for (int ox = 0; ox < OW; ox++) {
                const float *row = dcols + (((size_t)b * OH + oy) * OW + ox) * CKK;
                for (int c = 0; c < C; c++)
                    for (int ky = 0; ky < K; ky++)
                        for (int kx = 0; kx < K; kx++) {
                            const int y = oy * S + ky - pad, x = ox * S + kx - pad;
                            if (y < 0 || y >= H || x < 0 || x >= W)
                                continue;
                            const size_t at = nhwc ? ((size_t)b * H * W + (size_t)y * W + x) * C + c
                                                   : (((size_t)b * C + c) * H + y) * W + x;
                            dimg[at] += row[(c * K + ky) * K + kx];
                        }
            }
}

/* dimg[B, C, IH, IW] (+)= the gradient of the image under the patches of
 * patch_embed_forward (dcols: scratch, [B*T, C*P*P]) */
static inline void patch_embed_input_backward(float *dimg, float *dcols, const float *dout, const float *w, int B,
                                              int C, int IH, int IW, int P, int D, int acc)
{
    const int T = (IH / P) * (IW / P);
    mm_nn(dcols, dout, w, B * T, D, C * P * P, 0);
    conv_col2im(dimg, dcols, B, C, IH, IW, P, P, 0, 0, acc);
}

/* out[b, c, r] (+)= inp[b, r, c]: [B, R, C] to [B, C, R] (and, called with R
 * and C swapped, back) */
static inline void transpose_rc(float *out, const float *inp, int B, int R, int C, int acc)
{
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++)
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) {
                const float v = inp[((size_t)b * R + r) * C + c];
                float *o = &out[((size_t)b * C + c) * R + r];
                *o = acc ? *o + v : v;
            }
}

/* Swin's window partition of a GH x GW grid of C-wide tokens into WS x WS
 * windows: grid[B, GH*GW, C] (row-major) and win[B * nW, WS*WS, C], the
 * windows row-major over the (GH/WS) x (GW/WS) window grid, the tokens
 * row-major inside each. to_windows: win (+)= grid; else grid (+)= win. */
static inline void window_permute(float *dst, const float *src, int B, int GH, int GW, int WS, int C, int to_windows,
                                  int acc)
{
    const int NWX = GW / WS, T = GH * GW;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < B * GH; bt++) {
        const int b = bt / GH, y = bt % GH;
        for (int x = 0; x < GW; x++) {
            const size_t g = ((size_t)b * T + (size_t)y * GW + x) * C;
            const size_t w = (((size_t)b * (GH / WS) * NWX + (size_t)(y / WS) * NWX + x / WS) * WS * WS +
                              (size_t)(y % WS) * WS + x % WS) * C;
            const float *s = src + (to_windows ? g : w);
            float *d = dst + (to_windows ? w : g);
            for (int c = 0; c < C; c++)
                d[c] = acc ? d[c] + s[c] : s[c];
        }
    }
}

/* GCViT's global tokens: out[B, WS*WS, D], the grid inp[B, GH*GW, D]
 * averaged over cells of (GH/WS) x (GW/WS) tokens, row-major */
static inline void grid_pool_forward(float *out, const float *inp, int B, int GH, int GW, int WS, int D)
{
    const int CH = GH / WS, CW = GW / WS;
    const float inv = 1.0f / (float)(CH * CW);
    memset(out, 0, sizeof(float) * (size_t)B * WS * WS * D);
    for (int b = 0; b < B; b++)
        for (int y = 0; y < GH; y++)
            for (int x = 0; x < GW; x++) {
                const float *s = inp + ((size_t)b * GH * GW + (size_t)y * GW + x) * D;
                float *o = out + ((size_t)b * WS * WS + (size_t)(y / CH) * WS + x / CW) * D;
                for (int d = 0; d < D; d++)
                    o[d] += s[d];
            }
    for (size_t i = 0; i < (size_t)B * WS * WS * D; i++)
        out[i] *= inv;
}

static inline void grid_pool_backward(float *dinp, const float *dout, int B, int GH, int GW, int WS, int D, int acc)
{
    const int CH = GH / WS, CW = GW / WS;
    const float inv = 1.0f / (float)(CH * CW);
    for (int b = 0; b < B; b++)
        for (int y = 0; y < GH; y++)
            for (int x = 0; x < GW; x++) {
                float *dx = dinp + ((size_t)b * GH * GW + (size_t)y * GW + x) * D;
                const float *g = dout + ((size_t)b * WS * WS + (size_t)(y / CH) * WS + x / CW) * D;
                for (int d = 0; d < D; d++)
                    dx[d] = acc ? dx[d] + g[d] * inv : g[d] * inv;
            }
}

/* GCViT's global attention input: qkv[B * nW, WS*WS, 3D] of every window
 * holds its sample's global queries q[B, WS*WS, D] and its own tokens' keys
 * and values from kv[B, GH*GW, 2D] (grid order), for attention_forward */
static inline void global_window_qkv(float *qkv, const float *q, const float *kv, int B, int GH, int GW, int WS, int D)
{
    const int NW = (GH / WS) * (GW / WS), WT = WS * WS, NWX = GW / WS;
#pragma omp parallel for schedule(static)
    for (int bw = 0; bw < B * NW; bw++) {
        const int b = bw / NW, w = bw % NW, wy = w / NWX, wx = w % NWX;
        for (int t = 0; t < WT; t++) {
            const int y = wy * WS + t / WS, x = wx * WS + t % WS;
            float *o = qkv + ((size_t)bw * WT + t) * 3 * D;
            memcpy(o, q + ((size_t)b * WT + t) * D, sizeof(float) * (size_t)D);
            memcpy(o + D, kv + ((size_t)b * GH * GW + (size_t)y * GW + x) * 2 * D, sizeof(float) * 2 * (size_t)D);
        }
    }
}

/* its adjoint: dq[B, WS*WS, D] = the queries' gradients summed over the
 * sample's windows; dkv[B, GH*GW, 2D] the keys' and values' (both written) */
static inline void global_window_qkv_backward(float *dq, float *dkv, const float *dqkv, int B, int GH, int GW, int WS,
                                              int D)
{
    const int NW = (GH / WS) * (GW / WS), WT = WS * WS, NWX = GW / WS;
    memset(dq, 0, sizeof(float) * (size_t)B * WT * D);
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) /* a sample's windows share its queries: one thread each */
        for (int w = 0; w < NW; w++) {
            const int wy = w / NWX, wx = w % NWX;
            for (int t = 0; t < WT; t++) {
                const int y = wy * WS + t / WS, x = wx * WS + t % WS;
                const float *g = dqkv + (((size_t)b * NW + w) * WT + t) * 3 * D;
                float *gq = dq + ((size_t)b * WT + t) * D;
                for (int d = 0; d < D; d++)
                    gq[d] += g[d];
                memcpy(dkv + ((size_t)b * GH * GW + (size_t)y * GW + x) * 2 * D, g + D, sizeof(float) * 2 * (size_t)D);
            }
        }
}

/* Swin's patch merging: out[B, (GH/2)*(GW/2), 4D] concatenates the tokens
 * (2y, 2x), (2y+1, 2x), (2y, 2x+1), (2y+1, 2x+1) of inp[B, GH*GW, D] */
static inline void merge2x2_forward(float *out, const float *inp, int B, int GH, int GW, int D)
{
    const int OH = GH / 2, OW = GW / 2;
    static const int dy[4] = { 0, 1, 0, 1 }, dx[4] = { 0, 0, 1, 1 };
    for (int b = 0; b < B; b++)
        for (int y = 0; y < OH; y++)
            for (int x = 0; x < OW; x++)
                for (int k = 0; k < 4; k++)
                    memcpy(out + (((size_t)b * OH * OW + (size_t)y * OW + x) * 4 + k) * D,
                           inp + ((size_t)b * GH * GW + (size_t)(2 * y + dy[k]) * GW + 2 * x + dx[k]) * D,
                           sizeof(float) * (size_t)D);
}

static inline void merge2x2_backward(float *dinp, const float *dout, int B, int GH, int GW, int D, int acc)
{
    const int OH = GH / 2, OW = GW / 2;
    static const int dy[4] = { 0, 1, 0, 1 }, dx[4] = { 0, 0, 1, 1 };
    for (int b = 0; b < B; b++)
        for (int y = 0; y < OH; y++)
            for (int x = 0; x < OW; x++)
                for (int k = 0; k < 4; k++) {
                    float *d = dinp + ((size_t)b * GH * GW + (size_t)(2 * y + dy[k]) * GW + 2 * x + dx[k]) * D;
                    const float *s = dout + (((size_t)b * OH * OW + (size_t)y * OW + x) * 4 + k) * D;
                    for (int c = 0; c < D; c++)
                        d[c] = acc ? d[c] + s[c] : s[c];
                }
}

/* ---- dropout and stochastic depth ---------------------------------------------- */

/* out = inp * mask, mask[i] in {0, 1/(1-p)} drawn by the caller */
static inline void mask_forward(float *out, const float *inp, const float *mask, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = inp[i] * mask[i];
}

static inline void mask_backward(float *dinp, const float *dout, const float *mask, size_t n, int acc)
{
    for (size_t i = 0; i < n; i++) {
        float v = dout[i] * mask[i];
        dinp[i] = acc ? dinp[i] + v : v;
    }
}

/* drop path: one keep/drop draw per sample; rows of R elements */
static inline void rowmask_forward(float *out, const float *inp, const float *keep, int B, size_t R)
{
    for (int b = 0; b < B; b++)
        for (size_t i = 0; i < R; i++)
            out[(size_t)b * R + i] = inp[(size_t)b * R + i] * keep[b];
}

static inline void rowmask_backward(float *dinp, const float *dout, const float *keep, int B, size_t R, int acc)
{
    for (int b = 0; b < B; b++)
        for (size_t i = 0; i < R; i++) {
            float v = dout[(size_t)b * R + i] * keep[b];
            dinp[(size_t)b * R + i] = acc ? dinp[(size_t)b * R + i] + v : v;
        }
}

/* ---- classifier heads and the loss ------------------------------------------ */

/* Cross-entropy with label smoothing eps over the C classes of one sample's
 * logits, against lam of label's smoothed one-hot and 1 - lam of
 * label_mix's (CutMix's target; lam = 1 is the plain loss, bit for bit).
 * Writes dlogits (multiplied by `scale`) unless NULL, returns the loss. */
static inline float softmax_xent_mix(float *dlogits, const float *logits, int C, int label, int label_mix,
                                     float lam, float eps, float scale)
{
    float mx = logits[0];
    for (int c = 1; c < C; c++)
        if (logits[c] > mx)
            mx = logits[c];
    double sum = 0.0;
    for (int c = 0; c < C; c++)
        sum += exp((double)(logits[c] - mx));
    double lse = mx + log(sum);
    double loss = 0.0;
    for (int c = 0; c < C; c++) {
        double logp = logits[c] - lse;
        double ta = (c == label ? 1.0 - eps : 0.0) + eps / C, tb = (c == label_mix ? 1.0 - eps : 0.0) + eps / C;
        double target = lam * ta + (1.0 - lam) * tb;
        loss -= target * logp;
        if (dlogits)
            dlogits[c] = (float)((exp(logp) - target) * scale);
    }
    return (float)loss;
}

/* the same against one label */
static inline float softmax_xent(float *dlogits, const float *logits, int C, int label, float eps, float scale)
{
    return softmax_xent_mix(dlogits, logits, C, label, label, 1.0f, eps, scale);
}

/* ---- mixture of experts -------------------------------------------------------------- */

/* The routing of one MoE layer for one batch: which tokens go to which
 * expert slot, and with what gate. Filled by moe_route, used by the
 * forward and backward passes. Sizes are the layer's constants. */
typedef struct moe_routing {
    int *topk;        /* [N, K] chosen experts, best first */
    float *topp;      /* [N, K] their router probabilities */
    float *gate;      /* [N, K] combine weights (normalised if asked) */
    int *slot;        /* [N, K] position in the expert's buffer, -1: dropped */
    int *count;       /* [E] tokens kept per expert */
    int *offset;      /* [E] first row of each expert in the packed buffers */
    int *token;       /* [N * K] the token of each row, experts one after another */
    int *order;       /* [2N] scratch: routing order */
    float *prio;      /* [N] scratch: priority of each token */
} moe_routing;

/* Sort order[0..n) by descending prio[order[i]], ties by ascending index:
 * a merge sort (stable, O(n log n)) using order[n..2n) as scratch. */
static inline void moe_prio_sort(int *order, const float *prio, int n)
{
    int *tmp = order + n;
    for (int width = 1; width < n; width *= 2) {
        for (int lo = 0; lo < n; lo += 2 * width) {
            int mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            int i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                tmp[k++] = prio[order[j]] > prio[order[i]] ? order[j++] : order[i++];
            while (i < mid)
                tmp[k++] = order[i++];
            while (j < hi)
                tmp[k++] = order[j++];
        }
        memcpy(order, tmp, (size_t)n * sizeof *order);
    }
}

/* probs[N, E] = softmax(logits); lse[N] = log-sum-exp of each row */
static inline void router_softmax(float *probs, float *lse, const float *logits, int N, int E)
{
    for (int n = 0; n < N; n++) {
        const float *l = logits + (size_t)n * E;
        float *p = probs + (size_t)n * E;
        float mx = l[0];
        for (int e = 1; e < E; e++)
            if (l[e] > mx)
                mx = l[e];
        double sum = 0.0;
        for (int e = 0; e < E; e++)
            sum += exp((double)(l[e] - mx));
        for (int e = 0; e < E; e++)
            p[e] = (float)(exp((double)(l[e] - mx)) / sum);
        lse[n] = (float)(mx + log(sum));
    }
}

/* The K experts of highest probability p[E] of one token, best first (ties
 * to the lower expert): idx[K] and their probabilities val[K]. */
static inline void moe_topk_row(int *idx, float *val, const float *p, int E, int K)
{
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int j = 0; j < k; j++)
                taken |= idx[j] == e;
            if (!taken && (best < 0 || p[e] > p[best]))
                best = e;
        }
        idx[k] = best;
        val[k] = p[best];
    }
}

/* Pack the experts' rows: expert e's kept choices from offset[e] on, and
 * the token of each row. */
static inline void moe_pack_rows(moe_routing *r, int N, int E, int K)
{
    int rows = 0;
    for (int e = 0; e < E; e++) {
        r->offset[e] = rows;
        rows += r->count[e];
    }
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            const int pos = r->slot[(size_t)n * K + k];
            if (pos >= 0)
                r->token[r->offset[r->topk[(size_t)n * K + k]] + pos] = n;
        }
}

/* Top-k, gates and capacity. Tokens claim slots choice by choice (every
 * token's first choice before any second choice, as GShard does); within
 * a choice in token order, or by descending top gate with batch priority.
 * cap >= N means dropless. */
static inline void moe_route(moe_routing *r, const float *probs, int N, int E, int K, int cap,
                      int normalize, int batch_priority)
{
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * E;
        float *val = r->topp + (size_t)n * K;
        moe_topk_row(r->topk + (size_t)n * K, val, p, E, K);
        float denom = 0.0f;
        for (int k = 0; k < K; k++)
            denom += val[k];
        for (int k = 0; k < K; k++)
            r->gate[(size_t)n * K + k] = (normalize && K > 1) ? val[k] / denom : val[k];
        r->order[n] = n;
        r->prio[n] = val[0];
    }
    if (batch_priority) {
        /* by descending top-1 probability; equal priorities keep token order */
        moe_prio_sort(r->order, r->prio, N);
    }
    for (int e = 0; e < E; e++)
        r->count[e] = 0;
    for (int k = 0; k < K; k++)
        for (int i = 0; i < N; i++) {
            int n = r->order[i];
            int e = r->topk[(size_t)n * K + k];
            int pos = r->count[e];
            if (pos < cap) {
                r->slot[(size_t)n * K + k] = pos;
                r->count[e] = pos + 1;
            } else {
                r->slot[(size_t)n * K + k] = -1;
            }
        }
    moe_pack_rows(r, N, E, K);
}

/* Expert choice (Zhou et al., 2022): each expert takes the cap tokens of
 * highest probability for it. Every token lists all E experts, best first
 * (K = E); a choice is kept when its expert chose the token, and its gate
 * is the probability. Ties go to the lower token index. */
static inline void moe_route_expert_choice(moe_routing *r, const float *probs, int N, int E, int cap)
{
    const int K = E;
    for (int n = 0; n < N; n++) {
        moe_topk_row(r->topk + (size_t)n * K, r->topp + (size_t)n * K, probs + (size_t)n * E, E, K);
        for (int k = 0; k < K; k++) {
            r->gate[(size_t)n * K + k] = r->topp[(size_t)n * K + k];
            r->slot[(size_t)n * K + k] = -1;
        }
    }
    for (int e = 0; e < E; e++) {
        for (int n = 0; n < N; n++) {
            r->order[n] = n;
            r->prio[n] = probs[(size_t)n * E + e];
        }
        moe_prio_sort(r->order, r->prio, N);
        r->count[e] = cap < N ? cap : N;
        for (int i = 0; i < r->count[e]; i++) {
            const int n = r->order[i];
            for (int k = 0; k < K; k++)
                if (r->topk[(size_t)n * K + k] == e)
                    r->slot[(size_t)n * K + k] = i;
        }
    }
    moe_pack_rows(r, N, E, K);
}

/* The experts' FFN on the kept choices, packed expert after expert (rows
 * offset[e] .. offset[e] + count[e] - 1 are expert e's): xe[rows, D]
 * gathered from x[N, D]; h[rows, H] = xe @ w1^T + b1, a = act(h),
 * ye[rows, D] = a @ w2^T + b2; out[N, D] = sum over kept choices of
 * gate * ye. rows <= N * K. */
static inline void moe_experts_forward(float *out, float *xe, float *h, float *a, float *ye,
                                const float *x, const moe_routing *r, const float *w1,
                                const float *b1, const float *w2, const float *b2,
                                int N, int D, int H, int E, int K, int act)
{
    for (int e = 0; e < E; e++) {
        const int cnt = r->count[e];
        if (cnt == 0)
            continue;
        const size_t row = (size_t)r->offset[e];
        float *xe_e = xe + row * D;
        for (int i = 0; i < cnt; i++)
            memcpy(xe_e + (size_t)i * D, x + (size_t)r->token[row + i] * D, (size_t)D * sizeof(float));
        float *h_e = h + row * H, *a_e = a + row * H;
        linear_forward(h_e, xe_e, w1 + (size_t)e * H * D, b1 + (size_t)e * H, cnt, D, H);
        act_forward(a_e, h_e, (size_t)cnt * H, act);
        linear_forward(ye + row * D, a_e, w2 + (size_t)e * D * H, b2 + (size_t)e * D, cnt, H, D);
    }
    memset(out, 0, (size_t)N * D * sizeof(float));
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            int pos = r->slot[(size_t)n * K + k];
            if (pos < 0)
                continue;
            int e = r->topk[(size_t)n * K + k];
            float g = r->gate[(size_t)n * K + k];
            const float *y = ye + ((size_t)r->offset[e] + pos) * D;
            float *o = out + (size_t)n * D;
            for (int d = 0; d < D; d++)
                o[d] += g * y[d];
        }
}

/* Backward of the experts and the combine. dgate[N, K] is written; dx[N, D]
 * (+)= the experts' input gradient; dye, dh, dxe are [rows, *] scratch. */
static inline void moe_experts_backward(float *dx, float *dgate, float *dye, float *dh, float *dxe,
                                 const float *dout, const float *xe, const float *h, const float *a,
                                 const float *ye, const moe_routing *r, const float *w1,
                                 const float *w2, float *dw1, float *db1, float *dw2, float *db2,
                                 int N, int D, int H, int E, int K, int act, int acc)
{
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            int pos = r->slot[(size_t)n * K + k];
            float *dg = dgate + (size_t)n * K + k;
            if (pos < 0) {
                *dg = 0.0f;
                continue;
            }
            int e = r->topk[(size_t)n * K + k];
            float g = r->gate[(size_t)n * K + k];
            const float *gy = dout + (size_t)n * D;
            const float *y = ye + ((size_t)r->offset[e] + pos) * D;
            float *dy = dye + ((size_t)r->offset[e] + pos) * D;
            float s = 0.0f;
            for (int d = 0; d < D; d++) {
                s += gy[d] * y[d];
                dy[d] = g * gy[d];
            }
            *dg = s;
        }
    if (!acc)
        memset(dx, 0, (size_t)N * D * sizeof(float));
    for (int e = 0; e < E; e++) {
        const int cnt = r->count[e];
        if (cnt == 0)
            continue;
        const size_t row = (size_t)r->offset[e], oD = row * D, oH = row * H;
        /* da (kept in dh) = dye @ w2 ; dw2 += dye^T @ a ; db2 += sum dye */
        linear_backward(dh + oH, dw2 + (size_t)e * D * H, db2 + (size_t)e * D, dye + oD, a + oH,
                        w2 + (size_t)e * D * H, cnt, H, D, 0);
        act_backward(dh + oH, dh + oH, h + oH, (size_t)cnt * H, act, 0);
        linear_backward(dxe + oD, dw1 + (size_t)e * H * D, db1 + (size_t)e * H, dh + oH, xe + oD,
                        w1 + (size_t)e * H * D, cnt, D, H, 0);
        for (int i = 0; i < cnt; i++) {
            float *g = dx + (size_t)r->token[row + i] * D;
            const float *s = dxe + oD + (size_t)i * D;
            for (int d = 0; d < D; d++)
                g[d] += s[d];
        }
    }
}

/* A squared coefficient of variation's statistics (the importance loss's
 * over the summed probabilities, the load loss's over the loads): the mean
 * and (population) variance of x[0, E) */
static inline void moe_cv2_stats(const double *x, int E, double *mu, double *var)
{
    *mu = 0.0;
    *var = 0.0;
    for (int e = 0; e < E; e++)
        *mu += x[e] / E;
    for (int e = 0; e < E; e++)
        *var += (x[e] - *mu) * (x[e] - *mu) / E;
}

/* d/dx[e] of w CV^2(x), from moe_cv2_stats's mu and var */
static inline float moe_cv2_grad(const double *x, int E, int e, double mu, double var, double w)
{
    return (float)(w * (2.0 * (x[e] - mu) / (E * mu * mu) - 2.0 * var / (E * mu * mu * mu)));
}

/* The gradient of everything that reaches the router logits: the gates,
 * and the auxiliary losses with their weights. dlogits[N, E] is written.
 * `target` is the expert each token's dataset maps to (dataset-aware
 * routing) or NULL. */
static inline void moe_router_backward(float *dlogits, float *dprobs, const float *dgate, const float *probs,
                                const float *lse, const moe_routing *r, const int *target,
                                int N, int E, int K, int normalize, float w_bal, float w_z,
                                float w_ds, float w_imp)
{
    /* gate -> probabilities of the chosen experts */
    memset(dprobs, 0, (size_t)N * E * sizeof(float));
    for (int n = 0; n < N; n++) {
        const int *idx = r->topk + (size_t)n * K;
        const float *val = r->topp + (size_t)n * K;
        const float *dg = dgate + (size_t)n * K;
        float *dp = dprobs + (size_t)n * E;
        if (normalize && K > 1) {
            float S = 0.0f, gs = 0.0f;
            for (int k = 0; k < K; k++)
                S += val[k];
            for (int k = 0; k < K; k++)
                gs += dg[k] * val[k];
            for (int j = 0; j < K; j++)
                dp[idx[j]] += dg[j] / S - gs / (S * S);
        } else {
            for (int k = 0; k < K; k++)
                dp[idx[k]] += dg[k];
        }
    }
    /* GShard balance loss: E * sum_e mean_n(p[n,e]) * frac_e(top-1 == e) */
    double ce[4096] = { 0 };
    for (int n = 0; n < N; n++)
        ce[r->topk[(size_t)n * K]] += 1.0;
    for (int e = 0; e < E; e++)
        ce[e] /= N;
    /* importance loss: CV^2 of the experts' summed probabilities */
    if (w_imp != 0.0f) {
        double imp[4096] = { 0 }, mu, var;
        for (int n = 0; n < N; n++)
            for (int e = 0; e < E; e++)
                imp[e] += probs[(size_t)n * E + e];
        moe_cv2_stats(imp, E, &mu, &var);
        for (int e = 0; e < E; e++) {
            const float g = moe_cv2_grad(imp, E, e, mu, var, w_imp);
            for (int n = 0; n < N; n++)
                dprobs[(size_t)n * E + e] += g;
        }
    }
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++)
            dprobs[(size_t)n * E + e] += (float)(w_bal * E * ce[e] / N);
    /* probabilities -> logits (softmax Jacobian) */
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * E;
        const float *dp = dprobs + (size_t)n * E;
        float *dl = dlogits + (size_t)n * E;
        float s = 0.0f;
        for (int e = 0; e < E; e++)
            s += p[e] * dp[e];
        for (int e = 0; e < E; e++)
            dl[e] = p[e] * (dp[e] - s);
    }
    /* router z-loss: mean_n lse_n^2 */
    if (w_z != 0.0f)
        for (int n = 0; n < N; n++)
            for (int e = 0; e < E; e++)
                dlogits[(size_t)n * E + e] += w_z * 2.0f * lse[n] * probs[(size_t)n * E + e] / N;
    /* DAMEX routing loss: cross-entropy of the logits against the mapped expert */
    if (target && w_ds != 0.0f)
        for (int n = 0; n < N; n++) {
            const float *p = probs + (size_t)n * E;
            for (int e = 0; e < E; e++)
                dlogits[(size_t)n * E + e] += w_ds * (p[e] - (e == target[n] ? 1.0f : 0.0f)) / N;
        }
}

/* Tutel's capacity for N tokens: k * floor(cf * ceil(N / E)), within [1, N];
 * dropless: N (no token is ever dropped). */
static inline int moe_capacity(int N, int E, int K, double cf, int dropless)
{
    if (dropless)
        return N;
    long per = (N + E - 1) / E;
    long cap = (long)K * (long)floor(cf * (double)per);
    if (cap < 1)
        cap = 1;
    return cap > N ? N : (int)cap;
}

/* logits[n] += std * N(0, 1), drawn from (seed, stream, step, n) */
static inline void gate_noise(float *logits, size_t n, float std, uint64_t seed, int stream, int64_t step)
{
    for (size_t i = 0; i < n; i++)
        logits[i] += std * (float)moert_rng_normal(seed, (uint64_t)stream, ((uint64_t)step << 32) + i);
}

/* mask[i] = 0 with probability p, else 1 / (1 - p); p = 0: all ones */
static inline void dropout_mask(float *mask, size_t n, float p, uint64_t seed, int stream, int64_t step)
{
    const float keep = 1.0f / (1.0f - p);
    for (size_t i = 0; i < n; i++)
        mask[i] = p <= 0.0f ? 1.0f
                            : (moert_rng_uniform(seed, (uint64_t)stream, ((uint64_t)step << 32) + i) < p ? 0.0f : keep);
}

/* The auxiliary losses of one MoE layer, unweighted: aux[0] the GShard
 * balance loss, aux[1] the router z-loss, aux[2] the DAMEX routing loss
 * (0 without a target), aux[3] the importance loss of Shazeer et al., the
 * squared coefficient of variation of the experts' summed router
 * probabilities. Their gradients are in moe_router_backward. */
static inline void moe_aux_losses(float aux[4], const float *probs, const float *lse, const moe_routing *r,
                           const int *target, int N, int E, int K)
{
    double me[4096] = { 0 }, ce[4096] = { 0 }, z = 0.0, ds = 0.0;
    for (int n = 0; n < N; n++) {
        ce[r->topk[(size_t)n * K]] += 1.0;
        for (int e = 0; e < E; e++)
            me[e] += probs[(size_t)n * E + e];
        z += (double)lse[n] * lse[n];
        if (target) {
            float p = probs[(size_t)n * E + target[n]];
            ds -= log(p > 1e-30f ? p : 1e-30f);
        }
    }
    double bal = 0.0;
    for (int e = 0; e < E; e++)
        bal += (me[e] / N) * (ce[e] / N);
    aux[0] = (float)(bal * E);
    aux[1] = (float)(z / N);
    aux[2] = (float)(ds / N);
    /* me[e] is the summed probability of expert e */
    double mu, var;
    moe_cv2_stats(me, E, &mu, &var);
    aux[3] = mu > 0.0 ? (float)(var / (mu * mu)) : 0.0f;
}

/* Is expert e among a token's K choices? */
static inline int moe_chosen(const int *idx, int K, int e)
{
    for (int k = 0; k < K; k++)
        if (idx[k] == e)
            return 1;
    return 0;
}

/* The load loss of Shazeer et al. (2017), unweighted: the squared
 * coefficient of variation of the experts' smooth loads. With gate noise of
 * standard deviation std on the logits (noisy = clean + noise), the chance
 * that expert e is among token n's top K when e's own noise is drawn again
 * is P(n, e) = Phi((clean[n, e] - t) / std), where the threshold t is the
 * K-th largest noisy logit of the other experts: the (K+1)-th of all when e
 * is chosen, the K-th when it is not. load[e] = sum_n P(n, e) (written, for
 * the backward). Kept for the backward too: dens[n, e] = dP / dclean[n, e]
 * = phi(u) / std, and thr[n, 0..1] the experts whose noisy logits are the
 * threshold of a chosen expert and of one not chosen (-1: none, when K = E:
 * a chosen expert then stays chosen, P = 1). topk: the token's choices,
 * best first. */
static inline float moe_load_forward(float *load, float *dens, int *thr, const float *clean, const float *noisy,
                                     const int *topk, int N, int E, int K, float std)
{
    double sum[4096] = { 0 };
    for (int n = 0; n < N; n++) {
        const int *idx = topk + (size_t)n * K;
        const float *z = clean + (size_t)n * E, *h = noisy + (size_t)n * E;
        int in_at = -1; /* the best noisy logit outside the choices */
        for (int j = 0; j < E; j++)
            if (!moe_chosen(idx, K, j) && (in_at < 0 || h[j] > h[in_at]))
                in_at = j;
        const int out_at = idx[K - 1];
        thr[(size_t)n * 2] = in_at;
        thr[(size_t)n * 2 + 1] = out_at;
        for (int e = 0; e < E; e++) {
            const int at = moe_chosen(idx, K, e) ? in_at : out_at;
            double p = 1.0, dp = 0.0;
            if (at >= 0) {
                const double u = ((double)z[e] - (double)h[at]) / std;
                p = 0.5 * erfc(-u * 0.70710678118654752);
                dp = exp(-0.5 * u * u) * 0.39894228040143268 / std;
            }
            dens[(size_t)n * E + e] = (float)dp;
            sum[e] += (float)p; /* as the CUDA kernels keep it */
        }
    }
    for (int e = 0; e < E; e++)
        load[e] = (float)sum[e];
    double mu, var;
    moe_cv2_stats(sum, E, &mu, &var);
    return mu > 0.0 ? (float)(var / (mu * mu)) : 0.0f;
}

/* dlogits[N, E] += the gradient of w times the load loss, through each
 * P(n, e): + to expert e's clean logit, - to the logit of its threshold
 * (the noise only shifts it). load, dens, thr: as moe_load_forward left them. */
static inline void moe_load_backward(float *dlogits, const float *load, const float *dens, const int *thr,
                                     const int *topk, int N, int E, int K, float w)
{
    double x[4096], mu, var;
    float c[4096];
    for (int e = 0; e < E; e++)
        x[e] = load[e];
    moe_cv2_stats(x, E, &mu, &var);
    if (mu <= 0.0)
        return;
    for (int e = 0; e < E; e++)
        c[e] = moe_cv2_grad(x, E, e, mu, var, w);
    for (int n = 0; n < N; n++) {
        const int *idx = topk + (size_t)n * K;
        float *dl = dlogits + (size_t)n * E;
        for (int e = 0; e < E; e++) {
            const int at = thr[(size_t)n * 2 + (moe_chosen(idx, K, e) ? 0 : 1)];
            if (at < 0)
                continue;
            const float v = c[e] * dens[(size_t)n * E + e];
            dl[e] += v;
            dl[at] -= v;
        }
    }
}

/* out[rows, C] = in / |in| row by row; norm[rows] keeps |in| (at least
 * 1e-6, so that a zero row stays finite). The cosine router's inputs. */
static inline void l2norm_forward(float *out, float *norm, const float *in, int rows, int C)
{
    for (int r = 0; r < rows; r++) {
        const float *x = in + (size_t)r * C;
        double s = 0.0;
        for (int c = 0; c < C; c++)
            s += (double)x[c] * x[c];
        const float n = (float)sqrt(s) > 1e-6f ? (float)sqrt(s) : 1e-6f;
        norm[r] = n;
        for (int c = 0; c < C; c++)
            out[(size_t)r * C + c] = x[c] / n;
    }
}

/* din (+)= (dout - out * (out . dout)) / |in|, row by row */
static inline void l2norm_backward(float *din, const float *dout, const float *out, const float *norm, int rows,
                                   int C, int acc)
{
    for (int r = 0; r < rows; r++) {
        const float *g = dout + (size_t)r * C, *y = out + (size_t)r * C;
        float dot = 0.0f;
        for (int c = 0; c < C; c++)
            dot += y[c] * g[c];
        for (int c = 0; c < C; c++) {
            const float v = (g[c] - y[c] * dot) / norm[r];
            din[(size_t)r * C + c] = acc ? din[(size_t)r * C + c] + v : v;
        }
    }
}

/* x[i] *= a: the router's temperature (soft routing divides the logits) */
static inline void scale_inplace(float *x, size_t n, float a)
{
    for (size_t i = 0; i < n; i++)
        x[i] *= a;
}

static inline void moe_stats_add(moe_stats *s, const moe_routing *r, const float *probs, const int32_t *dataset,
                          int N, int T, int E, int K)
{
    if (!s->load)
        return;
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * E;
        double h = 0.0;
        for (int e = 0; e < E; e++)
            if (p[e] > 0.0f)
                h -= p[e] * log(p[e]);
        s->entropy += h;
        for (int k = 0; k < K; k++) {
            int e = r->topk[(size_t)n * K + k];
            if (r->slot[(size_t)n * K + k] >= 0)
                s->load[e]++;
            else
                s->dropped++;
            s->assigned++;
        }
        s->ds_expert[(size_t)dataset[n / T] * E + r->topk[(size_t)n * K]]++;
    }
    s->tokens += N;
}

/* ---- optimizers --------------------------------------------------------------------- */

/* AdamW (decoupled weight decay) on n parameters; t counts from 1 */
static inline void adamw_update(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
                         float b2, float eps, float wd, int t)
{
    const float c1 = 1.0f - powf(b1, (float)t), c2 = 1.0f - powf(b2, (float)t);
    for (size_t i = 0; i < n; i++) {
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
        v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        float mhat = m[i] / c1, vhat = v[i] / c2;
        p[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * p[i]);
    }
}

/* SGD with momentum, PyTorch's semantics (L2 decay added to the gradient) */
static inline void sgd_update(float *p, const float *g, float *buf, size_t n, float lr, float mu, int nesterov,
                       float wd, int t)
{
    for (size_t i = 0; i < n; i++) {
        float d = g[i] + wd * p[i];
        if (mu != 0.0f) {
            buf[i] = t == 1 ? d : mu * buf[i] + d;
            d = nesterov ? d + mu * buf[i] : buf[i];
        }
        p[i] -= lr * d;
    }
}

#endif /* MOE_OPS_TYPES_ONLY */
#endif /* MOE_OPS_H */
