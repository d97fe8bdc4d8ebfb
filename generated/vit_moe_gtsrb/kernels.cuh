/* kernels.cuh: the CUDA kernels of moecc's generated trainers.
 * Copied into the trainer of vit_moe_gtsrb by moecc 0.1.0 from templates/cuda/kernels.cuh.
 * Do not edit: it is written again each time moecc runs.
 *
 * Every kernel has the semantics of the function of the same name in
 * ops.h, the CPU reference (tests/cuda/test_kernels.cu checks each against
 * it). Shapes that decide the code (widths, heads, tokens, experts) are
 * template parameters, fixed by the generated model.cu; the batch is a
 * run-time argument, at most the compiled batch.
 *
 * Storage is fp32 (weights, activations, gradients, optimizer state), with
 * the bf16 exceptions below. The matrix products go through cuBLAS. In "tf32" mode with
 * CUBLAS_COMPUTE_32F_FAST_16BF on the fp32 operands, for which cuBLAS 13
 * picks TF32 tensor-core kernels on Hopper (sm90_xmma_gemm_f32f32_tf32f32,
 * seen with Nsight Compute). In "bf16" mode each product's operands are
 * rounded to bf16 into a scratch first (kctx.cast) and multiplied in bf16
 * with fp32 accumulation into fp32, except where a producer writes them in
 * bf16 itself (the experts' inputs, activations and their gradient:
 * moe_x16, moe_a16; their dy, written by the combine's backward; a dense
 * MLP's activations and their gradient, and a layer norm's output that
 * only a product takes: bf16_half; attention's output and dqkv: attn_mm),
 * where they are the weights (their copy, kctx.w16), or where two products
 * share one (a layer's output gradient: cast_keep). Some products write
 * bf16 too (mm_out: the experts' hidden values and their gradient, which
 * only element-wise passes read: moe_h16), and a linear layer's bias is
 * added in cuBLASLt's epilogue (lt_linear_bias). In fp32 mode the products
 * are plain fp32 (CUBLAS_COMPUTE_32F); fp32 products of at most 32 outputs
 * (the routers') take narrow_forward / narrow_backward. In both reduced
 * modes attention's four products run on tensor cores too (TF32 WMMA
 * tiles, attention_*_tc_kernel, and the row tiles'
 * attention_*_rows_tc_kernel). Everything else runs in fp32 (reductions
 * that the CPU does in double are done in double here too).
 *
 * Determinism: no kernel adds floats with atomics (only integer counts).
 * Sums over rows go through fixed-size partial sums (colsum_add, the
 * layer norm's and the gradient norm's partials, attention's per-sample
 * sums of the qkv bias's gradient) added up in a fixed order, so that
 * the same step gives the same bits every time (make check-cuda compares
 * two runs of 20 steps, from the session after 2026-12-01's ninth).
 *
 * Nothing here allocates or synchronises with the host: the training step
 * is captured as one CUDA graph (backend.cu). */
#ifndef MOE_KERNELS_CUH
#define MOE_KERNELS_CUH

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>
#include <type_traits>

/* ---- errors ------------------------------------------------------------------------ */

#define CUDA_CHECK(call)                                                                          \
    do {                                                                                          \
        cudaError_t err_ = (call);                                                                \
        if (err_ != cudaSuccess) {                                                                \
            fprintf(stderr, "train: CUDA error at %s:%d: %s (%s)\n", __FILE__, __LINE__,          \
                    cudaGetErrorString(err_), #call);                                             \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

#define CUBLAS_CHECK(call)                                                                        \
    do {                                                                                          \
        cublasStatus_t st_ = (call);                                                              \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                                       \
            fprintf(stderr, "train: cuBLAS error at %s:%d: status %d (%s)\n", __FILE__, __LINE__, \
                    (int)st_, #call);                                                             \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

/* launch errors are checked after each launch; in a graph capture they
 * surface at instantiation */
#define LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

static inline unsigned blocks_for(int64_t n, int threads)
{
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : (b > 65535 * 16 ? 65535 * 16 : b));
}

/* the current device's SMs (asked once: a process keeps its device) */
static inline int device_sms()
{
    static int sms = 0;
    if (!sms) {
        int dev = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    }
    return sms;
}

/* ---- the context every launch gets ------------------------------------------------- */

typedef struct kctx {
    cudaStream_t stream;
    cublasHandle_t blas;
    cublasComputeType_t compute; /* CUBLAS_COMPUTE_32F or CUBLAS_COMPUTE_32F_FAST_16BF */
    /* bf16 precision: each product's operands are rounded to bf16 here
     * first (cast_elems in all), then multiplied in bf16 with fp32
     * accumulation; NULL: the products take the fp32 operands (compute) */
    __nv_bfloat16 *cast;
    int64_t cast_elems;
    /* bf16 precision: the weights' bf16 copy, w16[i] = w32[i] rounded, for
     * i < w_elems (the optimizer writes it with the weights): a product's
     * operand inside w32 is read from it instead of rounded again. NULL:
     * none. */
    const float *w32;
    const __nv_bfloat16 *w16;
    int64_t w_elems;
    float *red;                  /* scratch for partial sums (reduce_*), RED_FLOATS */
    int64_t red_floats;
    /* data parallelism: sums v[0..n) over the processes in place, in order on
     * the stream (backend.cu, over NCCL); NULL with one process */
    void (*sum_across)(const struct kctx *k, double *v, int n);
    /* expert parallelism: moves a MoE layer's rows between the p GPUs of
     * this one's group, el experts per GPU, chunk floats per (expert, GPU)
     * (moe_exchange): with e < 0 every expert's, in order on the stream;
     * else local expert e's alone, on a stream of the backend's after the
     * work so far, and returns the event that marks its end. NULL without. */
    cudaEvent_t (*exchange)(const struct kctx *k, float *dst, const float *src, int64_t chunk, int el, int p, int dir,
                            int e);
    int overlap;                 /* exchange expert by expert, overlapped with their products */
    void *comm;                  /* backend.cu's state for both */
    /* bf16 precision: cuBLASLt, which adds a linear layer's bias in the
     * product's epilogue (linear_forward), with its workspace (cuBLAS's:
     * both run in order on the stream); NULL: a pass adds the bias */
    cublasLtHandle_t lt;
    void *lt_ws;
    size_t lt_ws_bytes;
    /* the experts' products over their live rows by gg_kernel (Hopper, bf16
     * precision, one GPU: gg_device) instead of cuBLAS's over the capacity */
    int gg;
    /* gg_kernel's grid: 0, a block an SM; the kernel tests ask for fewer,
     * so that each block takes several tiles (as on a model's shapes) */
    int gg_grid;
} kctx;

/* The element-wise passes' launch over n elements, in blocks of 256: kern4
 * (4 elements a thread, n / 4 threads) where v4 (the caller's test of the
 * widths' and the pointers' alignment, vec4_ok), else kern1 (one a thread) */
template <typename... P, typename... A>
static inline void launch_vec(const kctx *k, bool v4, int64_t n, void (*kern4)(P...), void (*kern1)(P...), A... args)
{
    if (v4)
        kern4<<<blocks_for(n / 4, 256), 256, 0, k->stream>>>(args...);
    else
        kern1<<<blocks_for(n, 256), 256, 0, k->stream>>>(args...);
    LAUNCH_CHECK();
}

/* ---- random numbers: Philox4x32-10, as runtime/core_rng.c --------------------------- */

__device__ static inline void philox_dev(uint64_t seed, uint64_t stream, uint64_t counter, uint32_t out[4])
{
    uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32), c2 = (uint32_t)stream,
             c3 = (uint32_t)(stream >> 32);
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int round = 0; round < 10; round++) {
        const uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        const uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        const uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* moert_rng_uniform: [0, 1) from 24 bits */
__device__ static inline float rng_uniform_dev(uint64_t seed, uint64_t stream, uint64_t counter)
{
    uint32_t x[4];
    philox_dev(seed, stream, counter, x);
    return (float)(x[0] >> 8) * 0x1.0p-24f;
}

/* moert_rng_normal: Box-Muller in double */
__device__ static inline double rng_normal_dev(uint64_t seed, uint64_t stream, uint64_t counter)
{
    uint32_t x[4];
    philox_dev(seed, stream, counter, x);
    const uint64_t a = (uint64_t)x[0] | (uint64_t)x[1] << 32, b = (uint64_t)x[2] | (uint64_t)x[3] << 32;
    const double u1 = (double)((a >> 11) + 1) * 0x1.0p-53, u2 = (double)(b >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925286766559 * u2);
}

/* ---- warp and block reductions --------------------------------------------------------- */

__device__ static inline float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ static inline double warp_sum_d(double v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ static inline float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* ---- matrix products (cuBLAS, row-major views) ------------------------------------------ */

/* dst[0, n) = src[0, n) rounded to bf16 (round to nearest even), V floats
 * per thread */
template <int V> static __global__ void to_bf16_kernel(__nv_bfloat16 *dst, const float *src, int64_t n)
{
    const int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i >= n)
        return;
    if constexpr (V == 4) {
        const float4 x = *reinterpret_cast<const float4 *>(src + i);
        __nv_bfloat162 *d = reinterpret_cast<__nv_bfloat162 *>(dst + i);
        d[0] = __floats2bfloat162_rn(x.x, x.y);
        d[1] = __floats2bfloat162_rn(x.z, x.w);
    } else {
        dst[i] = __float2bfloat16_rn(src[i]);
    }
}

static inline void to_bf16(const kctx *k, __nv_bfloat16 *dst, const float *src, int64_t n)
{
    launch_vec(k, n % 4 == 0 && ((uintptr_t)src & 15) == 0 && ((uintptr_t)dst & 7) == 0, n, to_bf16_kernel<4>,
               to_bf16_kernel<1>, dst, src, n);
}

/* dst[0, n) = src[0, n) widened to fp32, V values per thread */
template <int V> static __global__ void from_bf16_kernel(float *dst, const __nv_bfloat16 *src, int64_t n)
{
    const int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i >= n)
        return;
    if constexpr (V == 4) {
        const __nv_bfloat162 *s = reinterpret_cast<const __nv_bfloat162 *>(src + i);
        const float2 a = __bfloat1622float2(s[0]), b = __bfloat1622float2(s[1]);
        *reinterpret_cast<float4 *>(dst + i) = make_float4(a.x, a.y, b.x, b.y);
    } else {
        dst[i] = __bfloat162float(src[i]);
    }
}

static inline void from_bf16(const kctx *k, float *dst, const __nv_bfloat16 *src, int64_t n)
{
    launch_vec(k, n % 4 == 0 && ((uintptr_t)dst & 15) == 0 && ((uintptr_t)src & 7) == 0, n, from_bf16_kernel<4>,
               from_bf16_kernel<1>, dst, src, n);
}

/* the elements a row-major operand of `count` [rows, cols] matrices spans
 * (rows ld apart, matrices stride apart) */
static inline int64_t operand_span(int rows, int cols, int ld, int count, int64_t stride)
{
    return (int64_t)(count - 1) * stride + (int64_t)(rows - 1) * ld + cols;
}

/* A product's operand: fp32 values (rounded to bf16 into the scratch in
 * bf16 precision), or values already in bf16 (bf16 precision only: the
 * experts' inputs, activations and their gradient, written so by their
 * producers, and the operands cast_keep rounds once for two products;
 * each would otherwise be rounded once a product, at 6 bytes an element a
 * pass). */
struct mm_in {
    const float *f;
    const __nv_bfloat16 *h;
    mm_in(const float *p) : f(p), h(nullptr) {}
    mm_in(const __nv_bfloat16 *p) : f(nullptr), h(p) {}
};

/* A product's output: fp32, or bf16 (bf16 precision only, beta 0: the
 * experts' hidden values and their gradient, which only element-wise
 * passes read, at half the bytes) */
struct mm_out {
    float *f;
    __nv_bfloat16 *h;
    mm_out(float *p) : f(p), h(nullptr) {}
    mm_out(__nv_bfloat16 *p) : f(nullptr), h(p) {}
};

/* the bf16 values where a producer wrote them (h), else the fp32 ones */
static inline mm_in mm_pick(const __nv_bfloat16 *h, const float *f)
{
    return h ? mm_in(h) : mm_in(f);
}

/* that the bf16 operand scratch holds elems elements, or a clear stop */
static inline void cast_need(const kctx *k, int64_t elems)
{
    if (elems > k->cast_elems) {
        fprintf(stderr, "train: internal error: bf16 operand scratch too small (%lld < %lld)\n",
                (long long)k->cast_elems, (long long)elems);
        exit(1);
    }
}

/* an operand's place in the bf16 operand scratch: n elements rounded up to
 * 256 bytes, so that the next operand too starts as cuBLAS prefers (the
 * scratch, from cudaMalloc, holds two: emit_cuda.c sizes it so) */
#define CAST_ROUND(n) (((int64_t)(n) + 127) & ~(int64_t)127)

/* bf16 precision: a product's operand of n elements in bf16: as given (x.h),
 * the weights' copy for an operand inside the weights (addresses compared
 * as integers: x.f may lie in another allocation), else rounded into the
 * operand scratch after the *used elements a product's other operand took */
static inline const __nv_bfloat16 *bf16_operand(const kctx *k, mm_in x, int64_t n, int64_t *used)
{
    if (x.h)
        return x.h;
    const uintptr_t at = (uintptr_t)x.f, lo = (uintptr_t)k->w32;
    if (k->w16 && at >= lo && at + sizeof(float) * (size_t)n <= lo + sizeof(float) * (size_t)k->w_elems)
        return k->w16 + (at - lo) / sizeof(float);
    cast_need(k, *used + n);
    __nv_bfloat16 *dst = k->cast + *used;
    to_bf16(k, dst, x.f, n);
    *used += CAST_ROUND(n);
    return dst;
}

/* The products below in row-major views: cuBLAS is column-major, so
 * out[M,N] = op(a) op(b) is computed as out^T = op(b)^T op(a)^T, with
 * `count` products strided by sa, sb, so elements. With k->cast (bf16
 * precision) the fp32 operands are rounded to bf16 into it first (the
 * first at 0, the second after it, 8-aligned), or, for weights, taken from
 * their bf16 copy (k->w16), and multiplied in bf16 with fp32 accumulation
 * into the fp32 out. */
static inline void mm_rows(const kctx *k, cublasOperation_t ta, cublasOperation_t tb, mm_out out, mm_in a, int lda,
                           mm_in b, int ldb, int M, int N, int K, float beta, int count, int64_t sa, int64_t sb,
                           int64_t so)
{
    const float one = 1.0f;
    if (out.h && (!k->cast || beta != 0.0f)) {
        fprintf(stderr, "train: internal error: a bf16 product output outside bf16 precision or accumulated\n");
        exit(1);
    }
    if (k->cast) {
        int64_t used = 0;
        const __nv_bfloat16 *a16 = bf16_operand(
            k, a, ta == CUBLAS_OP_N ? operand_span(M, K, lda, count, sa) : operand_span(K, M, lda, count, sa), &used);
        const __nv_bfloat16 *b16 = bf16_operand(
            k, b, tb == CUBLAS_OP_N ? operand_span(K, N, ldb, count, sb) : operand_span(N, K, ldb, count, sb), &used);
        void *c = out.h ? static_cast<void *>(out.h) : static_cast<void *>(out.f);
        CUBLAS_CHECK(cublasGemmStridedBatchedEx(k->blas, tb, ta, N, M, K, &one, b16, CUDA_R_16BF, ldb, sb, a16,
                                                CUDA_R_16BF, lda, sa, &beta, c, out.h ? CUDA_R_16BF : CUDA_R_32F, N,
                                                so, count, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        return;
    }
    if (a.h || b.h) {
        fprintf(stderr, "train: internal error: a bf16 operand outside bf16 precision\n");
        exit(1);
    }
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(k->blas, tb, ta, N, M, K, &one, b.f, CUDA_R_32F, ldb, sb, a.f, CUDA_R_32F,
                                            lda, sa, &beta, out.f, CUDA_R_32F, N, so, count, k->compute,
                                            CUBLAS_GEMM_DEFAULT));
}

/* cast_keep's scratch for an operand of n elements whose bf16 copy is
 * there already (layernorm_backward's copy16 wrote it), or is about to be
 * (cast_keep): *rest past it */
static inline const __nv_bfloat16 *cast_kept(const kctx *k, kctx *rest, int64_t n)
{
    *rest = *k;
    if (!k->cast)
        return nullptr;
    const int64_t used = CAST_ROUND(n);
    cast_need(k, used);
    rest->cast = k->cast + used;
    rest->cast_elems = k->cast_elems - used;
    return k->cast;
}

/* An operand that several products take (a gradient: the input's
 * product and the weights'), in bf16 precision rounded once, at the start
 * of the scratch; *rest is k with the scratch after it, for those
 * products' other operands (each product has at most one left to round,
 * so both fit: the scratch holds two of the largest buffer). Returns NULL,
 * with *rest = *k, in the other precisions. */
static inline const __nv_bfloat16 *cast_keep(const kctx *k, kctx *rest, const float *src, int64_t n)
{
    const __nv_bfloat16 *h = cast_kept(k, rest, n);
    if (h)
        to_bf16(k, k->cast, src, n);
    return h;
}

/* a copy of k whose products are plain fp32 whatever the precision (a
 * router with fp32_gate) */
static inline kctx fp32_ctx(const kctx *k)
{
    kctx c = *k;
    c.compute = CUBLAS_COMPUTE_32F;
    c.cast = nullptr;
    return c;
}

/* out[M,N] = beta * out + a[M,K] @ b[N,K]^T */
static inline void mm_nt(const kctx *k, mm_out out, mm_in a, mm_in b, int M, int N, int K, float beta,
                         int count = 1, int64_t sa = 0, int64_t sb = 0, int64_t so = 0)
{
    if (M > 0)
        mm_rows(k, CUBLAS_OP_N, CUBLAS_OP_T, out, a, K, b, K, M, N, K, beta, count, sa, sb, so);
}

/* out[M,N] = beta * out + a[M,K] @ b[K,N] */
static inline void mm_nn(const kctx *k, mm_out out, mm_in a, mm_in b, int M, int N, int K, float beta,
                         int count = 1, int64_t sa = 0, int64_t sb = 0, int64_t so = 0)
{
    if (M > 0)
        mm_rows(k, CUBLAS_OP_N, CUBLAS_OP_N, out, a, K, b, N, M, N, K, beta, count, sa, sb, so);
}

/* out[M,N] = beta * out + a[K,M]^T @ b[K,N] (weight gradients); K = 0
 * with beta 0 stores zeros */
static inline void mm_tn(const kctx *k, mm_out out, mm_in a, mm_in b, int M, int N, int K, float beta,
                         int count = 1, int64_t sa = 0, int64_t sb = 0, int64_t so = 0)
{
    if (K > 0)
        mm_rows(k, CUBLAS_OP_T, CUBLAS_OP_N, out, a, M, b, N, M, N, K, beta, count, sa, sb, so);
    else if (beta == 0.0f && out.f)
        for (int i = 0; i < count; i++)
            CUDA_CHECK(cudaMemsetAsync(out.f + i * so, 0, sizeof(float) * (size_t)M * N, k->stream));
}

/* one value read as float, from float or bf16 */
__device__ static inline float get(const float *p)
{
    return *p;
}

__device__ static inline float get(const __nv_bfloat16 *p)
{
    return __bfloat162float(*p);
}

/* ---- sums over rows, deterministic ------------------------------------------------------- */

#define RED_CHUNKS 64 /* partial sums per column */

/* Each of the 32 x LANES threads of a block holds V partial sums v[0, V)
 * of its columns; lane y (threadIdx.x / 32) summed rows lo + y, lo + y +
 * LANES, ... of them. The lanes' sums are added in lane order (the same
 * bits every run) into lane 0's v; the other lanes' v become 0. Every
 * thread of the block calls it. */
template <int LANES, int V> __device__ static inline void lanes_sum(float (&v)[V])
{
    __shared__ float lanes[LANES][V][33];
    const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
#pragma unroll
    for (int j = 0; j < V; j++)
        lanes[ty][j][tx] = v[j];
    __syncthreads();
#pragma unroll
    for (int j = 0; j < V; j++) {
        float t = 0.0f;
        if (ty == 0)
            for (int y = 0; y < LANES; y++)
                t += lanes[y][j][tx];
        v[j] = t;
    }
}

/* A block of 32 x LANES threads sums 32 columns: lane y of column col[0]
 * adds col[m * ld] for m = lo + y, lo + y + LANES, ... below hi, and the
 * lanes' sums are added in order (lanes_sum). Returns the column's sum in
 * lane 0, 0 elsewhere; every thread of the block calls it (valid: whether
 * its column exists). Enough loads in flight for narrow columns, where one
 * thread per column left most of the GPU idle (the layer norm's partials;
 * colsum_partial_kernel lays out the bias gradients' sums the same way). */
template <int LANES, typename S>
__device__ static inline float lanes_col_sum(const S *col, int64_t ld, int lo, int hi, bool valid)
{
    float acc[1] = { 0.0f };
    if (valid) {
        /* 8 loads in flight a thread (the adds stay in order): the layer
         * norm's 1024 partials a column (LN_BLOCKS was 1024) were 32 a
         * lane (S: its final kernel 5.8 -> 4.7 us) */
#pragma unroll 8
        for (int m = lo + (int)threadIdx.x / 32; m < hi; m += LANES)
            acc[0] += get(col + (int64_t)m * ld);
    }
    lanes_sum<LANES, 1>(acc);
    return acc[0];
}

template <int V> __device__ static inline void vload(float (&x)[V], const __nv_bfloat16 *p);
template <int V> __device__ static inline void vload(float (&x)[V], const float *p);

/* part[g, c, n] = sum of src[g][m * ld + n] over the rows m of chunk c, on
 * COLSUM_LANES lanes of rows (S: float, or bf16 for a gradient its
 * producer wrote in bf16); V columns a thread (16-byte loads where the
 * rows allow: one 2-byte load a thread left the bias gradients from bf16
 * at a fraction of the memory's speed). Each column's rows are added in
 * the same order for every V: the same bits. */
#define COLSUM_LANES 8
template <typename S, int V>
static __global__ void colsum_partial_kernel(float *part, const S *src, int M, int N, int64_t ld, int64_t stride)
{
    const int n = (blockIdx.x * 32 + (int)threadIdx.x % 32) * V, c = blockIdx.y, g = blockIdx.z;
    const int per = (M + RED_CHUNKS - 1) / RED_CHUNKS, lo = c * per, hi = min(M, lo + per);
    float acc[V] = {};
    if (n < N) { /* V > 1: N is a multiple of V */
        const S *col = src + (int64_t)g * stride + n;
#pragma unroll 4
        for (int m = lo + (int)threadIdx.x / 32; m < hi; m += COLSUM_LANES) {
            float x[V];
            vload<V>(x, col + (int64_t)m * ld);
#pragma unroll
            for (int j = 0; j < V; j++)
                acc[j] += x[j];
        }
    }
    lanes_sum<COLSUM_LANES, V>(acc);
    if (threadIdx.x / 32 == 0 && n < N) {
#pragma unroll
        for (int j = 0; j < V; j++)
            part[((int64_t)g * RED_CHUNKS + c) * N + n + j] = acc[j];
    }
}

/* dst[g][n] += sum over chunks of part[g, c, n] */
static __global__ void colsum_final_kernel(float *dst, const float *part, int N, int G, int64_t dstride)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)G * N)
        return;
    const int g = (int)(i / N), n = (int)(i % N);
    float acc = 0.0f;
    for (int c = 0; c < RED_CHUNKS; c++)
        acc += part[((int64_t)g * RED_CHUNKS + c) * N + n];
    dst[(int64_t)g * dstride + n] += acc;
}

/* stops the trainer unless k->red holds `floats' partial sums (moecc
 * sizes it for every op's; a shortfall is a bug of the plan) */
static inline void red_need(const kctx *k, int64_t floats)
{
    if (floats > k->red_floats) {
        fprintf(stderr, "train: internal error: reduction scratch too small (%lld < %lld)\n",
                (long long)k->red_floats, (long long)floats);
        exit(1);
    }
}

/* the grid of the partial sums of G groups of N columns, 32 * V columns a
 * block, after checking that k->red holds them */
static inline dim3 colsum_grid(const kctx *k, int N, int G, int V)
{
    red_need(k, (int64_t)G * RED_CHUNKS * N);
    return dim3((unsigned)((N + 32 * V - 1) / (32 * V)), RED_CHUNKS, (unsigned)G);
}

/* dst[g * dstride + n] += the partial sums in k->red, added in chunk order */
static inline void colsum_final(const kctx *k, float *dst, int N, int G, int64_t dstride)
{
    colsum_final_kernel<<<blocks_for((int64_t)G * N, 256), 256, 0, k->stream>>>(dst, k->red, N, G, dstride);
    LAUNCH_CHECK();
}

/* dst[n] += the sum of part[r * N + n] over the rows r < rows, on
 * ROWS_SUM_LANES lanes of rows added in lane order (the same bits every
 * run): partial sums a kernel wrote one row per block (attention's bias
 * gradient, attention_bwd_frag_kernel's part) */
#define ROWS_SUM_LANES 32
static __global__ void rows_sum_kernel(float *dst, const float *part, int N, int rows)
{
    const int n = blockIdx.x * 32 + (int)threadIdx.x % 32;
    const float t = lanes_col_sum<ROWS_SUM_LANES>(part + n, N, 0, rows, n < N);
    if (threadIdx.x / 32 == 0 && n < N)
        dst[n] += t;
}

static inline void rows_sum(const kctx *k, float *dst, const float *part, int N, int rows)
{
    rows_sum_kernel<<<(unsigned)((N + 31) / 32), 32 * ROWS_SUM_LANES, 0, k->stream>>>(dst, part, N, rows);
    LAUNCH_CHECK();
}

/* dst[g][N] += the column sums of src[g][M, N] (rows ld apart; 0: N), for
 * g < G (bias gradients; G experts with strides). The sums are the same
 * bits on every run. */
template <typename S>
static inline void colsum_add(const kctx *k, float *dst, const S *src, int M, int N, int G = 1,
                              int64_t sstride = 0, int64_t dstride = 0, int64_t ld = 0)
{
    ld = ld ? ld : N;
    /* 16 bytes a thread: 8 bf16 or 4 floats, where every row starts aligned */
    constexpr int V = sizeof(S) == 2 ? 8 : 4;
    const bool wide = N % V == 0 && (ld * sizeof(S)) % 16 == 0 && (sstride * sizeof(S)) % 16 == 0 &&
                      ((uintptr_t)src & 15) == 0;
    const unsigned threads = 32 * COLSUM_LANES;
    if (wide)
        colsum_partial_kernel<S, V><<<colsum_grid(k, N, G, V), threads, 0, k->stream>>>(k->red, src, M, N, ld, sstride);
    else
        colsum_partial_kernel<S, 1><<<colsum_grid(k, N, G, 1), threads, 0, k->stream>>>(k->red, src, M, N, ld, sstride);
    LAUNCH_CHECK();
    colsum_final(k, dst, N, G, dstride);
}

/* ---- element-wise passes ------------------------------------------------------------------
 * Streaming passes (biases, activations, sums) move 4 floats per thread
 * with 16-byte loads and stores when their pointers are 16-byte aligned
 * and their rows a multiple of 4 wide (vec4_ok; the arenas align every
 * activation to 64 bytes), else one: 4 times the bytes in flight per
 * thread, and a quarter of the index arithmetic. The activation passes
 * (bias_act, act_bias_backward), bound by their instructions, move 8
 * where they can (vec8_ok: 16 bytes of bf16).
 * The passes that follow a per-row index (the MoE's gather, combine and
 * scatter) give each warp whole rows instead (a grid-stride loop over
 * ROW_WARPS rows a block: launch_rows), so that the row's token or expert
 * is looked up once per row, and move V = 4 values a lane where the rows
 * allow. A block of 128 threads a row (2 values a thread for rows of 256)
 * spent most of its issue slots on the lookups and the block's own start
 * (Nsight Compute on config P's gather: ALU the busiest pipe, DRAM at 28%
 * of its peak). */
#define ROW_WARPS 8

__device__ static inline int64_t row_warp()
{
    return (int64_t)blockIdx.x * ROW_WARPS + threadIdx.x / 32;
}

__device__ static inline int64_t row_warps()
{
    return (int64_t)gridDim.x * ROW_WARPS;
}

/* kern4 (4 values a lane) when v4, else kern1, over `rows` rows a warp each */
template <typename... P, typename... A>
static inline void launch_rows(const kctx *k, bool v4, int64_t rows, void (*kern4)(P...), void (*kern1)(P...),
                               A... args)
{
    const unsigned grid = blocks_for(rows, ROW_WARPS);
    if (v4)
        kern4<<<grid, 32 * ROW_WARPS, 0, k->stream>>>(args...);
    else
        kern1<<<grid, 32 * ROW_WARPS, 0, k->stream>>>(args...);
    LAUNCH_CHECK();
}

/* p, q and r 16-byte aligned (NULL passes) */
static inline bool aligned16(const void *p, const void *q = nullptr, const void *r = nullptr)
{
    const auto al = [](const void *x) { return ((uintptr_t)x & 15) == 0; };
    return al(p) && al(q) && al(r);
}

static inline bool vec4_ok(int64_t cols, const void *p, const void *q = nullptr, const void *r = nullptr)
{
    return cols % 4 == 0 && aligned16(p, q, r);
}

/* V bf16 values, widened: 16 bytes at a time where V is a multiple of 8,
 * 8 where V = 4 */
template <int V> __device__ static inline void vload(float (&x)[V], const __nv_bfloat16 *p)
{
    if constexpr (V % 8 == 0 || V == 4) {
        constexpr int W = V == 4 ? 2 : 4; /* 32-bit words a load */
#pragma unroll
        for (int c = 0; c < V; c += 2 * W) {
            uint32_t w[W];
            if constexpr (W == 4) {
                const uint4 t = *reinterpret_cast<const uint4 *>(p + c);
                w[0] = t.x, w[1] = t.y, w[2] = t.z, w[3] = t.w;
            } else {
                const uint2 t = *reinterpret_cast<const uint2 *>(p + c);
                w[0] = t.x, w[1] = t.y;
            }
#pragma unroll
            for (int q = 0; q < W; q++) {
                const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&w[q]));
                x[c + 2 * q] = f.x, x[c + 2 * q + 1] = f.y;
            }
        }
    } else {
#pragma unroll
        for (int j = 0; j < V; j++)
            x[j] = __bfloat162float(p[j]);
    }
}

/* V floats: 16 bytes at a time where V is a multiple of 4 */
template <int V> __device__ static inline void vload(float (&x)[V], const float *p)
{
    if constexpr (V % 4 == 0) {
#pragma unroll
        for (int c = 0; c < V; c += 4) {
            const float4 t = *reinterpret_cast<const float4 *>(p + c);
            x[c] = t.x, x[c + 1] = t.y, x[c + 2] = t.z, x[c + 3] = t.w;
        }
    } else {
#pragma unroll
        for (int j = 0; j < V; j++)
            x[j] = p[j];
    }
}

template <int V> __device__ static inline void vstore(float *p, const float (&x)[V])
{
    if constexpr (V % 4 == 0) {
#pragma unroll
        for (int c = 0; c < V; c += 4)
            *reinterpret_cast<float4 *>(p + c) = make_float4(x[c], x[c + 1], x[c + 2], x[c + 3]);
    } else {
#pragma unroll
        for (int j = 0; j < V; j++)
            p[j] = x[j];
    }
}

/* two floats rounded to bf16 (to nearest even), as one 32-bit word */
__device__ static inline uint32_t bf16x2_bits(float lo, float hi)
{
    const __nv_bfloat162 t = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t *>(&t);
}

/* x rounded to bf16 (to nearest even) at p: 16 bytes a store where V is a
 * multiple of 8, 8 where V = 4 */
template <int V> __device__ static inline void vstore(__nv_bfloat16 *p, const float (&x)[V])
{
    if constexpr (V % 8 == 0) {
#pragma unroll
        for (int c = 0; c < V; c += 8)
            *reinterpret_cast<uint4 *>(p + c) = make_uint4(bf16x2_bits(x[c], x[c + 1]), bf16x2_bits(x[c + 2], x[c + 3]),
                                                           bf16x2_bits(x[c + 4], x[c + 5]),
                                                           bf16x2_bits(x[c + 6], x[c + 7]));
    } else if constexpr (V == 4) {
        *reinterpret_cast<uint2 *>(p) = make_uint2(bf16x2_bits(x[0], x[1]), bf16x2_bits(x[2], x[3]));
    } else {
#pragma unroll
        for (int j = 0; j < V; j++)
            p[j] = __float2bfloat16_rn(x[j]);
    }
}

/* d[0, V) (+)= x[0, V) */
template <int V> __device__ static inline void vput(float *d, float (&x)[V], int acc)
{
    if (acc) {
        float o[V];
        vload<V>(o, d);
#pragma unroll
        for (int j = 0; j < V; j++)
            x[j] = o[j] + x[j];
    }
    vstore<V>(d, x);
}

/* d[0, V) (+)= s[0, V) */
template <int V> __device__ static inline void vcopy(float *d, const float *s, int acc)
{
    float x[V];
    vload<V>(x, s);
    vput<V>(d, x, acc);
}

/* d[0, V) (+)= s[0, V) * a */
template <int V> __device__ static inline void vcopy(float *d, const float *s, int acc, float a)
{
    float x[V];
    vload<V>(x, s);
#pragma unroll
    for (int j = 0; j < V; j++)
        x[j] *= a;
    vput<V>(d, x, acc);
}

/* a bf16 operand's alignment for the 4-wide passes */
static inline bool bf16_ok(const __nv_bfloat16 *p)
{
    return ((uintptr_t)p & 7) == 0;
}

/* ---- linear layers ----------------------------------------------------------------------- */

enum { ACT_NONE = -1 }; /* bias_act_kernel without an activation */
template <int ACT, bool FAST = false> __device__ static inline float act_f(float x);
template <int ACT, bool FAST = false> __device__ static inline float act_f_grad(float x, float *grad);

/* h[g][M,N] += bias[g][N] for g < G (rows strided by M*N), and a = act(h)
 * unless ACT is ACT_NONE (in bf16 into a16 instead when a16 is given): a
 * linear layer's bias and its activation in one pass; V values per thread.
 * grad_h (with an activation): h gets act'(h + bias) instead, the factor
 * of the activation's backward (act_bias_backward), which then needs no
 * transcendental of its own: the pass is bound by its instructions (erf
 * per value), and the backward's erf and exp cost more than this store.
 * In fp32 the factor is the one the backward computed from h + bias,
 * bits and all; where h is bf16 (moe_h16) it is rounded to bf16, as a
 * is, and GELU is gelu_grad_fast's (within 4e-7 of the exact). live
 * (with grad_h, or NULL): group g's rows from live[g] on are padding (an
 * expert's rows past its count): h is not read there (nor written) and a
 * gets zeros, so that the products that take a see finite values.
 * NC > 0: the rows are NC wide (N == NC, known when compiled: the
 * division by it a multiply) and bias 16-byte aligned (vector loads):
 * fewer instructions a value in a pass bound by them. */
template <int ACT, int V, typename HT, int NC = 0>
static __global__ void bias_act_kernel(float *__restrict__ a, __nv_bfloat16 *__restrict__ a16, HT *__restrict__ h,
                                       const float *__restrict__ bias, const int *__restrict__ live, int64_t M,
                                       int N_, int64_t n, bool grad_h)
{
    const int N = NC > 0 ? NC : N_;
    const int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i >= n)
        return;
    /* the bias's group and column: 32-bit divisions where the sizes allow
     * (a 64-bit one is a long software routine, and this pass is short) */
    int64_t g, row, col;
    if (n <= (int64_t)UINT32_MAX) {
        const uint32_t u = (uint32_t)i, r = u / (uint32_t)N;
        g = r / (uint32_t)M;
        row = r;
        col = u - r * (uint32_t)N;
    } else {
        row = i / N;
        g = row / M;
        col = i - row * N;
    }
    const auto store_a = [&](const float (&v)[V]) {
        if (a16)
            vstore<V>(a16 + i, v);
        else
            vstore<V>(a + i, v);
    };
    float x[V];
    if (live && row - g * M >= live[g]) {
        if constexpr (ACT != ACT_NONE) {
            const float z[V] = {};
            store_a(z);
        }
        return;
    }
    const float *b = bias + g * N + col;
    float bb[V];
    if constexpr (NC > 0)
        vload<V>(bb, b);
    else
        for (int j = 0; j < V; j++)
            bb[j] = b[j];
    vload<V>(x, h + i);
#pragma unroll
    for (int j = 0; j < V; j++)
        x[j] += bb[j];
    if constexpr (ACT != ACT_NONE) {
        /* bf16 hidden values: a and the factor are rounded to bf16 */
        constexpr bool fast = std::is_same<HT, __nv_bfloat16>::value;
        if (grad_h) {
            float d[V];
#pragma unroll
            for (int j = 0; j < V; j++)
                x[j] = act_f_grad<ACT, fast>(x[j], &d[j]);
            vstore<V>(h + i, d);
        } else {
            vstore<V>(h + i, x);
#pragma unroll
            for (int j = 0; j < V; j++)
                x[j] = act_f<ACT, fast>(x[j]);
        }
        store_a(x);
    } else {
        vstore<V>(h + i, x);
    }
}

/* the 4-wide passes' alignment of a row-major operand of rows `cols`
 * wide: 16 bytes for floats, 8 for bf16 */
static inline bool vec4_ok_as(int64_t cols, const float *p)
{
    return vec4_ok(cols, p);
}

static inline bool vec4_ok_as(int64_t cols, const __nv_bfloat16 *p)
{
    return cols % 4 == 0 && bf16_ok(p);
}

/* the 8-wide passes' (16 bytes of bf16, two 16-byte loads of floats):
 * rows a multiple of 8 wide, 16-byte aligned (NULL passes) */
static inline bool vec8_ok(int64_t cols, const void *p, const void *q = nullptr, const void *r = nullptr)
{
    return cols % 8 == 0 && aligned16(p, q, r);
}

/* h: fp32, or bf16 (the experts' hidden values as their product wrote
 * them in bf16 precision: moe_h16). 8 values a thread where the rows and
 * pointers allow (16-byte loads of bf16; the pass is bound by its
 * instructions, and 8 values share a thread's index arithmetic), else 4,
 * else 1. NC > 0: N is NC (asserted), and the 8-wide pass with bias
 * aligned takes the kernel compiled for that width. */
template <int ACT, typename HT = float, int NC = 0>
static inline void bias_act(const kctx *k, float *a, HT *h, const float *bias, int64_t M, int N, int G = 1,
                            __nv_bfloat16 *a16 = nullptr, bool grad_h = false, const int *live = nullptr)
{
    if ((live && !grad_h) || (grad_h && ACT == ACT_NONE)) {
        fprintf(stderr, "train: internal error: bias_act skips padding rows only with grad_h, which needs an "
                        "activation\n");
        exit(1);
    }
    const int64_t n = G * M * N;
    const float *out = ACT == ACT_NONE ? nullptr : a16 ? nullptr : a;
    if (NC > 0 && N != NC) {
        fprintf(stderr, "train: internal error: bias_act compiled for rows %d wide, given %d\n", NC, N);
        exit(1);
    }
    if constexpr (NC > 0 && NC % 8 == 0) {
        if (vec8_ok(N, h, out, a16) && aligned16(bias)) {
            bias_act_kernel<ACT, 8, HT, NC><<<blocks_for(n / 8, 256), 256, 0, k->stream>>>(a, a16, h, bias, live, M, N,
                                                                                          n, grad_h);
            LAUNCH_CHECK();
            return;
        }
    }
    if (vec8_ok(N, h, out, a16)) {
        bias_act_kernel<ACT, 8, HT><<<blocks_for(n / 8, 256), 256, 0, k->stream>>>(a, a16, h, bias, live, M, N, n,
                                                                                  grad_h);
        LAUNCH_CHECK();
        return;
    }
    launch_vec(k, vec4_ok_as(N, h) && vec4_ok(N, out) && bf16_ok(a16), n, bias_act_kernel<ACT, 4, HT>,
               bias_act_kernel<ACT, 1, HT>, a, a16, h, bias, live, M, N, n, grad_h);
}

/* out[g][M,N] += bias[g][N] for g < G */
static inline void bias_add(const kctx *k, float *out, const float *bias, int64_t M, int N, int G = 1)
{
    bias_act<ACT_NONE>(k, nullptr, out, bias, M, N, G);
}

/* bf16 precision: the bf16 values a producer writes into the first half
 * of an fp32 buffer in place of the fp32 ones, where only products take
 * them (a dense MLP's activations and their gradient, as moe_a16 for the
 * experts'); NULL in the other precisions */
static inline __nv_bfloat16 *bf16_half(const kctx *k, float *p)
{
    return k->cast ? reinterpret_cast<__nv_bfloat16 *>(p) : nullptr;
}

/* such a buffer as a product's operand: its bf16 half in bf16 precision */
static inline mm_in mm_half(const kctx *k, float *p)
{
    return mm_pick(bf16_half(k, p), p);
}

/* ---- narrow fp32 products: a router's logits (N <= 32 outputs) --------------------------------
 * For fp32 products with a handful of outputs (the routers' logits, which
 * fp32_gate keeps in fp32 in every precision) cuBLAS takes SIMT kernels
 * (config P: 1.18 ms a step for 9 routers, reading 68 MB a product).
 * Here each warp takes whole rows with the weights in shared memory:
 * forward out[m] = x[m] w^T and the input's gradient dx[m] (+)= dout[m] w,
 * a row per warp; the weights' gradient dw += dout^T x by chunks of rows,
 * RED_CHUNKS partial sums added in order (the same bits every run). The
 * kernels take NP accumulators (8, 16 or 32), the outputs past N zero.
 * Measured on config P: 1.26 ms a step at first, against cuBLAS's 1.18
 * (notes-gpu.md item 37); the seventeenth session's dW pass (V columns a
 * thread) and the forward's reduce-scatter of the sums are item 68. */
#define NARROW_MAX 32
#define NARROW_SMEM (48 * 1024) /* the weights' room: what a launch gets unasked */

/* whether out[M,N] = inp[M,K] w[N,K]^T takes the narrow kernels: plain
 * fp32, fp32 operands 16-byte aligned, rows a multiple of 4 wide, the
 * weights in shared memory and (backward) their partial sums in k->red */
static inline bool narrow_ok(const kctx *k, mm_in inp, const float *w, int N, int K)
{
    return !k->cast && k->compute == CUBLAS_COMPUTE_32F && inp.f && N >= 1 && N <= NARROW_MAX && K % 4 == 0 &&
           (int64_t)N * K * (int64_t)sizeof(float) <= NARROW_SMEM &&
           (int64_t)RED_CHUNKS * N * K <= k->red_floats && ((uintptr_t)inp.f & 15) == 0 && ((uintptr_t)w & 15) == 0;
}

/* w[N, K] into shared memory as float4, rows K/4 apart */
__device__ static inline void narrow_load_w(float4 *ws, const float *w, int N, int K)
{
    const float4 *w4 = reinterpret_cast<const float4 *>(w);
    for (int i = threadIdx.x; i < N * (K / 4); i += blockDim.x)
        ws[i] = w4[i];
    __syncthreads();
}

/* the blocks of a row-per-warp kernel: grid-stride over the rows, so that
 * each block loads the weights once for several rows */
static inline unsigned narrow_blocks(int64_t M)
{
    const int64_t b = (M + 7) / 8;
    return (unsigned)(b < 2048 ? (b > 0 ? b : 1) : 2048);
}

/* The warp's sums of v[0, NP) for NP = 8, 16 or 32, returned to lane l
 * for value l / (32 / NP): each round a lane keeps half of its values and
 * adds the other half of the lane o apart's (o = 16, 8, ...), then plain
 * butterfly rounds; 9 shuffles for NP = 8, where a warp sum of each
 * value took 40. */
template <int NP, int H = NP / 2, int O = 16> __device__ static inline void warp_halve(float (&v)[NP], int lane)
{
    if constexpr (H >= 1) {
        const bool upper = (lane & O) != 0;
#pragma unroll
        for (int j = 0; j < H; j++) {
            const float send = upper ? v[j] : v[j + H], keep = upper ? v[j + H] : v[j];
            v[j] = keep + __shfl_xor_sync(0xffffffffu, send, O);
        }
        warp_halve<NP, H / 2, O / 2>(v, lane);
    }
}

template <int NP> __device__ static inline float warp_sums_scatter(float (&v)[NP])
{
    static_assert(NP == 8 || NP == 16 || NP == 32, "warp_sums_scatter: 8, 16 or 32 values");
    warp_halve<NP>(v, (int)threadIdx.x % 32);
#pragma unroll
    for (int o = 16 / NP; o >= 1; o >>= 1)
        v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
    return v[0];
}

/* out[m] = x[m] w^T (+ b): a warp takes two rows at a time (rows m and m
 * + 1: x's loads of both in flight together, each read of w from shared
 * memory serving both), a lane 4 columns every 128; a block takes
 * NARROW_FWD_ROWS rows, half as many where that would leave fewer than
 * NARROW_FWD_BLOCKS blocks. A block of a row a warp (8 rows for each
 * copy of w into shared memory) took 14.7 us on config S's router
 * where this takes 12.4 (notes-gpu.md item 96). */
#define NARROW_FWD_ROWS 32
#define NARROW_FWD_BLOCKS 256
template <int NP>
static __global__ void __launch_bounds__(256)
    narrow_fwd_kernel(float *__restrict__ out, const float *__restrict__ x, const float *__restrict__ w,
                      const float *__restrict__ b, int64_t M, int N, int K)
{
    extern __shared__ float4 nws[];
    narrow_load_w(nws, w, N, K);
    const int K4 = K / 4, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    for (int64_t m = 2 * ((int64_t)blockIdx.x * warps + threadIdx.x / 32); m < M;
         m += 2 * (int64_t)gridDim.x * warps) {
        const bool two = m + 1 < M;
        const float4 *x4 = reinterpret_cast<const float4 *>(x + m * K);
        float acc[2][NP];
#pragma unroll
        for (int n = 0; n < NP; n++)
            acc[0][n] = acc[1][n] = 0.0f;
        for (int c = lane; c < K4; c += 32) {
            const float4 xa = x4[c], xb = two ? x4[K4 + c] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
            for (int n = 0; n < NP; n++)
                if (n < N) {
                    const float4 wv = nws[n * K4 + c];
                    acc[0][n] += xa.x * wv.x + xa.y * wv.y + xa.z * wv.z + xa.w * wv.w;
                    acc[1][n] += xb.x * wv.x + xb.y * wv.y + xb.z * wv.z + xb.w * wv.w;
                }
        }
        const int n = lane / (32 / NP);
#pragma unroll
        for (int u = 0; u < 2; u++) {
            const float t = warp_sums_scatter<NP>(acc[u]);
            if (lane % (32 / NP) == 0 && n < N && (u == 0 || two))
                out[(m + u) * N + n] = b ? t + b[n] : t;
        }
    }
}

template <int NP>
static __global__ void __launch_bounds__(256)
    narrow_dx_kernel(float *__restrict__ dx, const float *__restrict__ dout, const float *__restrict__ w, int64_t M,
                     int N, int K, int acc)
{
    extern __shared__ float4 nws[];
    narrow_load_w(nws, w, N, K);
    const int K4 = K / 4, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    for (int64_t m = (int64_t)blockIdx.x * warps + threadIdx.x / 32; m < M; m += (int64_t)gridDim.x * warps) {
        const float mine = lane < N ? dout[m * N + lane] : 0.0f;
        float g[NP];
#pragma unroll
        for (int n = 0; n < NP; n++)
            g[n] = __shfl_sync(0xffffffffu, mine, n);
        float4 *d4 = reinterpret_cast<float4 *>(dx + m * K);
        for (int c = lane; c < K4; c += 32) {
            float4 t = acc ? d4[c] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
            for (int n = 0; n < NP; n++)
                if (n < N) {
                    const float4 wv = nws[n * K4 + c];
                    t.x += g[n] * wv.x;
                    t.y += g[n] * wv.y;
                    t.z += g[n] * wv.z;
                    t.w += g[n] * wv.w;
                }
            d4[c] = t;
        }
    }
}

/* part[c, n * K + col] = sum over the rows m of chunk c (RED_CHUNKS chunks
 * of the M rows) of dout[m, n] x[m, col]: a block of 32 threads of V
 * columns each (V = 4, 2, 1 for NP = 8, 16, 32: NP x V = 32 sums a
 * thread) x L lanes of rows. The block first copies dout's rows of a
 * piece of its chunk (NARROW_DW_PIECE rows) into shared memory, so that
 * a thread holds only x's loads in flight, eight rows at a time; the
 * lanes' sums are added in lane order at the end (the same bits every
 * run). L is 8 (blocks of 256 threads, two an SM) where the grid has
 * NARROW_DW_WIDE blocks or more, else 16 (a block an SM): by the shapes
 * alone, so that the bits do not depend on the GPU. Where a thread loaded
 * dout's row beside x's and 32 lanes (one block an SM) took about 8 rows
 * each, config S's router's weight gradient took 25.5 us with the sum of
 * the chunks, 16.3 now (notes-gpu.md item 96). */
#define NARROW_DW_PIECE 256
#define NARROW_DW_WIDE 160
template <int NP> __host__ __device__ constexpr int narrow_dw_cols()
{
    return NP <= 8 ? 4 : NP <= 16 ? 2 : 1;
}

template <int NP, int L>
static __global__ void __launch_bounds__(32 * L, 16 / L)
    narrow_dw_partial_kernel(float *__restrict__ part, const float *__restrict__ dout, const float *__restrict__ x,
                             int M, int N, int K)
{
    constexpr int V = narrow_dw_cols<NP>(), H = NP / 2, W = 32 * V, GS = NARROW_DW_PIECE * NP, RS = L * H * W;
    __shared__ __align__(16) float sh[GS > RS ? GS : RS]; /* dout's piece, then the lanes' sums */
    const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
    const int col0 = blockIdx.x * W, col = col0 + tx * V, c = blockIdx.y; /* K: a multiple of 4 (narrow_ok) */
    const int per = (M + RED_CHUNKS - 1) / RED_CHUNKS, lo = min(M, c * per), hi = min(M, lo + per);
    float acc[NP][V];
#pragma unroll
    for (int n = 0; n < NP; n++)
#pragma unroll
        for (int j = 0; j < V; j++)
            acc[n][j] = 0.0f;
    for (int p0 = lo; p0 < hi; p0 += NARROW_DW_PIECE) {
        const int rows = min(NARROW_DW_PIECE, hi - p0);
        __syncthreads(); /* the last piece has been read */
        for (int i = threadIdx.x; i < rows * N; i += 32 * L)
            sh[i / N * NP + i % N] = dout[(int64_t)p0 * N + i];
        __syncthreads();
        if (col < K) {
            const float *xp = x + (int64_t)p0 * K + col;
#pragma unroll 8
            for (int r = ty; r < rows; r += L) {
                float xv[V], gv[NP];
                vload<V>(xv, xp + (int64_t)r * K);
                vload<NP>(gv, sh + r * NP);
#pragma unroll
                for (int n = 0; n < NP; n++)
                    if (n < N) /* sh holds nothing past N */
#pragma unroll
                        for (int j = 0; j < V; j++)
                            acc[n][j] += gv[n] * xv[j];
            }
        }
    }
    /* the lanes' sums, NP / 2 outputs at a time */
#pragma unroll
    for (int h = 0; h < 2; h++) {
        if (h * H >= N) /* the same for the whole block */
            break;
        __syncthreads(); /* sh has been read */
#pragma unroll
        for (int n = 0; n < H; n++)
            vstore<V>(sh + (ty * H + n) * W + tx * V, acc[h * H + n]);
        __syncthreads();
        for (int o = threadIdx.x; o < H * W; o += 32 * L) {
            const int n = o / W, q = o % W;
            float t = 0.0f;
#pragma unroll
            for (int y = 0; y < L; y++)
                t += sh[(y * H + n) * W + q];
            if (h * H + n < N && col0 + q < K)
                part[(int64_t)c * N * K + (int64_t)(h * H + n) * K + col0 + q] = t;
        }
    }
}

/* f(np) with np a std::integral_constant of the accumulators for N
 * outputs: 8, 16 or 32 */
template <typename F> static inline void narrow_pick(int N, F f)
{
    if (N <= 8)
        f(std::integral_constant<int, 8>());
    else if (N <= 16)
        f(std::integral_constant<int, 16>());
    else
        f(std::integral_constant<int, 32>());
}

static inline void narrow_forward(const kctx *k, float *out, const float *x, const float *w, const float *b, int M,
                                  int K, int N)
{
    const size_t sm = sizeof(float) * (size_t)N * K;
    const int rows = M >= (int64_t)NARROW_FWD_ROWS * NARROW_FWD_BLOCKS ? NARROW_FWD_ROWS : NARROW_FWD_ROWS / 2;
    const unsigned grid = (unsigned)((M + rows - 1) / rows);
    narrow_pick(N, [&](auto np) {
        narrow_fwd_kernel<decltype(np)::value><<<grid, 256, sm, k->stream>>>(out, x, w, b, M, N, K);
    });
    LAUNCH_CHECK();
}

static inline void narrow_backward(const kctx *k, float *dx, float *dw, const float *dout, const float *x,
                                   const float *w, int M, int K, int N, int acc)
{
    const size_t sm = sizeof(float) * (size_t)N * K;
    const unsigned grid = narrow_blocks(M);
    if (dx) {
        narrow_pick(N, [&](auto np) {
            narrow_dx_kernel<decltype(np)::value><<<grid, 256, sm, k->stream>>>(dx, dout, w, M, N, K, acc);
        });
        LAUNCH_CHECK();
    }
    red_need(k, (int64_t)RED_CHUNKS * N * K);
    narrow_pick(N, [&](auto np) {
        constexpr int P = decltype(np)::value, cols = 32 * narrow_dw_cols<P>();
        const dim3 pg((unsigned)((K + cols - 1) / cols), RED_CHUNKS);
        if (pg.x * pg.y >= NARROW_DW_WIDE)
            narrow_dw_partial_kernel<P, 8><<<pg, 32 * 8, 0, k->stream>>>(k->red, dout, x, M, N, K);
        else
            narrow_dw_partial_kernel<P, 16><<<pg, 32 * 16, 0, k->stream>>>(k->red, dout, x, M, N, K);
    });
    LAUNCH_CHECK();
    colsum_final(k, dw, N * K, 1, 0);
}

/* the largest power of two up to 256 that p is a multiple of (cuBLASLt
 * assumes 256 for a matrix unless told less: CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*) */
static inline uint32_t ptr_alignment(const void *p)
{
    uint32_t a = 256;
    while (a > 1 && (uintptr_t)p % a != 0)
        a /= 2;
    return a;
}

/* bf16 precision: out[M,N] = inp[M,K] w[N,K]^T + b[N] by cuBLASLt with the
 * bias added in the product's epilogue (CUBLASLT_EPILOGUE_BIAS: to the fp32
 * accumulator, before the fp32 store), where a pass over out added it
 * after the product (for config P's qkv: 400 MB read and written again a
 * layer). The heuristic is told each matrix's alignment (the bias's is not
 * among its preferences: a bias not 16-byte aligned is not taken). Returns
 * false where cuBLASLt is not set up, the bias is not 16-byte aligned, or
 * it offers no algorithm (the operands may have been rounded into the
 * scratch by then); the caller then takes cuBLAS and the pass. With a
 * bf16 output (out16), where cuBLASLt offers nothing for an fp32 bias, the
 * weights' bf16 copy of the bias is tried: the bias rounded to bf16, as
 * PyTorch's autocast rounds it. */
static inline bool lt_linear_bias_as(const kctx *k, void *d, cudaDataType_t dtype, const __nv_bfloat16 *x16,
                                     const __nv_bfloat16 *w16, const void *b, cudaDataType_t bias_type, int M, int K,
                                     int N, const float *res);

static inline bool lt_linear_bias(const kctx *k, float *out, mm_in inp, const float *w, const float *b, int M, int K,
                                  int N, const float *res = nullptr, __nv_bfloat16 *out16 = nullptr)
{
    if (!k->lt || !k->cast || ((uintptr_t)b & 15) != 0 || (out16 && res))
        return false;
    int64_t used = 0;
    const __nv_bfloat16 *w16 = bf16_operand(k, mm_in(w), (int64_t)N * K, &used);
    const __nv_bfloat16 *x16 = bf16_operand(k, inp, (int64_t)M * K, &used);
    if (!out16)
        return lt_linear_bias_as(k, out, CUDA_R_32F, x16, w16, b, CUDA_R_32F, M, K, N, res);
    if (lt_linear_bias_as(k, out16, CUDA_R_16BF, x16, w16, b, CUDA_R_32F, M, K, N, nullptr))
        return true;
    const __nv_bfloat16 *b16 = bf16_operand(k, mm_in(b), N, &used);
    return ((uintptr_t)b16 & 15) == 0 &&
           lt_linear_bias_as(k, out16, CUDA_R_16BF, x16, w16, b16, CUDA_R_16BF, M, K, N, nullptr);
}

/* lt_linear_bias's product of the bf16 operands into d (dtype), with the
 * bias b of bias_type */
static inline bool lt_linear_bias_as(const kctx *k, void *d, cudaDataType_t dtype, const __nv_bfloat16 *x16,
                                     const __nv_bfloat16 *w16, const void *b, cudaDataType_t bias_type, int M, int K,
                                     int N, const float *res)
{
    const uint32_t align_a = ptr_alignment(w16), align_b = ptr_alignment(x16),
                   align_c = ptr_alignment(res ? (const void *)res : d), align_d = ptr_alignment(d);
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    cublasLtMatmulHeuristicResult_t heur = {};
    int found = 0;
    const cublasOperation_t tw = CUBLAS_OP_T, tx = CUBLAS_OP_N;
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    /* column-major: out^T [N, M] = w (K x N stored, transposed) times inp^T (K x M) */
    bool ok = cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tw, sizeof tw) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tx, sizeof tx) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi) ==
                  CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof b) ==
                  CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type) ==
                  CUBLAS_STATUS_SUCCESS &&
              cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, K, N, K) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, K, M, K) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatrixLayoutCreate(&lc, dtype, N, M, N) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &k->lt_ws_bytes,
                                                   sizeof k->lt_ws_bytes) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                   sizeof align_a) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                   sizeof align_b) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                                   sizeof align_c) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                                   sizeof align_d) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulAlgoGetHeuristic(k->lt, op, la, lb, lc, lc, pref, 1, &heur, &found) ==
                  CUBLAS_STATUS_SUCCESS &&
              found > 0;
    if (ok) {
        const float one = 1.0f, zero = 0.0f;
        CUBLAS_CHECK(cublasLtMatmul(k->lt, op, &one, w16, la, x16, lb, res ? &one : &zero, res ? (const void *)res : d,
                                    lc, d, lc, &heur.algo, k->lt_ws, k->lt_ws_bytes, k->stream));
    }
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    for (cublasLtMatrixLayout_t l : { lc, lb, la })
        if (l)
            cublasLtMatrixLayoutDestroy(l);
    if (op)
        cublasLtMatmulDescDestroy(op);
    return ok;
}

static inline void add_forward(const kctx *k, float *out, const float *a, const float *b, int64_t n);

/* out[M,N] = inp[M,K] @ w[N,K]^T (+ b[N]) (+ res[M,N]: a residual block's
 * skip, when the product makes the block's output; cuBLASLt takes it as
 * its C, else a pass adds it). out16 (bf16 precision; not with res): the
 * output in bf16 alone there instead (attn_qkv16), the fp32 sum and bias
 * rounded once by cuBLASLt's epilogue (the bias itself in bf16 where
 * cuBLASLt takes no fp32 one; else the product's bf16 output plus the
 * bias, rounded again) */
static inline void linear_forward(const kctx *k, float *out, mm_in inp, const float *w, const float *b, int M, int K,
                                  int N, const float *res = nullptr, __nv_bfloat16 *out16 = nullptr)
{
    if (out16) {
        if (res) {
            fprintf(stderr, "train: internal error: linear_forward writes bf16 alone without a residual\n");
            exit(1);
        }
        if (M > 0 && !(b && lt_linear_bias(k, out, inp, w, b, M, K, N, nullptr, out16))) {
            mm_nt(k, out16, inp, w, M, N, K, 0.0f);
            if (b)
                bias_act<ACT_NONE>(k, nullptr, out16, b, M, N);
        }
        return;
    }
    const bool narrow = M > 0 && narrow_ok(k, inp, w, N, K);
    if (!narrow && M > 0 && b && lt_linear_bias(k, out, inp, w, b, M, K, N, res))
        return;
    if (narrow) {
        narrow_forward(k, out, inp.f, w, b, M, K, N);
    } else {
        mm_nt(k, out, inp, w, M, N, K, 0.0f);
        if (b)
            bias_add(k, out, b, M, N);
    }
    if (res && M > 0)
        add_forward(k, out, out, res, (int64_t)M * N);
}

/* dinp (+)= dout @ w (dinp may be NULL), dw += dout^T @ inp, db += colsum(dout)
 * (from the bf16 values where the producer wrote dout in bf16 alone: the
 * bias's gradient then sums rounded values, as under PyTorch's autocast) */
static inline void linear_backward(const kctx *k, float *dinp, float *dw, float *db, mm_in dout, mm_in inp,
                                   const float *w, int M, int K, int N, int acc, bool dinp16 = false,
                                   bool dout_kept = false)
{
    /* dinp16: in bf16 precision dinp is written in bf16 alone, into the
     * first half of its room (bf16_half), for a consumer that reads it so
     * (attention_backward's dout16); acc 0 only. dout_kept: dout's bf16
     * copy is at the start of the operand scratch already (the layer
     * norm's backward that wrote dout made it: layernorm_backward's
     * copy16) */
    dinp16 = dinp16 && dinp && k->cast;
    if (M > 0 && dout.f && !dinp16 && narrow_ok(k, inp, w, N, K) && ((uintptr_t)dout.f & 15) == 0 &&
        (!dinp || ((uintptr_t)dinp & 15) == 0)) {
        narrow_backward(k, dinp, dw, dout.f, inp.f, w, M, K, N, acc);
        if (db)
            colsum_add(k, db, dout.f, M, N);
        return;
    }
    kctx kr = *k; /* with dinp two products take dout: rounded once */
    const __nv_bfloat16 *g16 = dout.h  ? dout.h
                               : !dinp ? nullptr
                               : dout_kept ? cast_kept(k, &kr, (int64_t)M * N)
                                           : cast_keep(k, &kr, dout.f, (int64_t)M * N);
    if (dinp16)
        mm_nn(&kr, mm_out(bf16_half(k, dinp)), mm_pick(g16, dout.f), w, M, K, N, acc ? 1.0f : 0.0f);
    else if (dinp)
        mm_nn(&kr, dinp, mm_pick(g16, dout.f), w, M, K, N, acc ? 1.0f : 0.0f);
    mm_tn(&kr, dw, mm_pick(g16, dout.f), inp, N, K, M, 1.0f);
    if (db) {
        if (dout.f)
            colsum_add(k, db, dout.f, M, N);
        else
            colsum_add(k, db, dout.h, M, N);
    }
}

/* ---- activations and element-wise --------------------------------------------------------- */

#ifndef MOE_OPS_H /* ops.h (the CPU reference) has the same codes */
enum { ACT_GELU = 0, ACT_RELU = 1, ACT_SILU = 2 };
#endif

/* GELU(x) = x Phi(x), and its derivative Phi(x) + x phi(x) into *grad,
 * for values that are rounded to bf16 next (act_f_grad's FAST): Phi from
 * erfc(u) = t e^(-u^2) P(t), u = |x| / sqrt(2), t = 1 / (1 + 0.46 u), P
 * of degree 7 fitted (Lawson's algorithm) to erfc's relative error over
 * u >= 0: 6.8e-7 in exact arithmetic, 1.8e-5 in fp32 at the far tail
 * (where u^2 rounded moves e^(-u^2)), GELU within 3.8e-7 of the exact
 * value everywhere (erff's form: 4.5e-7), and bf16 keeps 2^-9. The
 * factor e^(-u^2) = e^(-x^2 / 2) is the normal density's too: two MUFU
 * instructions (EX2, RCP) and nine FMAs a value, where erff takes about
 * twenty instructions and a branch besides the density's EX2, in passes
 * bound by their instructions. */
__device__ static inline float gelu_grad_fast(float x, float *grad)
{
    /* e = e^(-x^2 / 2) by EX2 flushing subnormals (erfc's and the
     * density's below 1e-38 are 0), t with 0.46 u = 0.3252691 |x|, and q
     * P(t) / 2 (the coefficients halved, exactly) */
    float e, t;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(-0.72134752044448170f * (x * x)));
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(t) : "f"(fmaf(3.252691329e-01f, fabsf(x), 1.0f)));
    float q = 3.385730460e-02f;
    q = fmaf(q, t, -1.133150607e-01f);
    q = fmaf(q, t, 8.459603041e-02f);
    q = fmaf(q, t, 2.630498447e-02f);
    q = fmaf(q, t, 9.342399240e-02f);
    q = fmaf(q, t, 1.155909300e-01f);
    q = fmaf(q, t, 1.297786385e-01f);
    q = fmaf(q, t, 1.297635287e-01f);
    const float half_erfc = t * e * q; /* erfc(u) / 2 = Phi(-|x|) */
    const float cdf = x >= 0.0f ? 1.0f - half_erfc : half_erfc;
    *grad = fmaf(0.39894228040143268f * x, e, cdf);
    return x * cdf;
}

/* act(x), and act'(x) into *grad, with the erf or exp shared. FAST: GELU
 * by gelu_grad_fast, for passes whose results are rounded to bf16 (the
 * experts' hidden values in bf16 precision); else erff, as nn.GELU() and
 * the CPU reference */
template <int ACT, bool FAST> __device__ static inline float act_f_grad(float x, float *grad)
{
    if (ACT == ACT_RELU) {
        *grad = x > 0.0f ? 1.0f : 0.0f;
        return x > 0.0f ? x : 0.0f;
    }
    if (ACT == ACT_SILU) {
        const float den = 1.0f + expf(-x), s = 1.0f / den;
        *grad = s * (1.0f + x * (1.0f - s));
        return x / den;
    }
    if (FAST)
        return gelu_grad_fast(x, grad);
    const float z = x * 0.70710678118654752f, e = erff(z);
    const float cdf = 0.5f * (1.0f + e);
    /* exp(-x^2 / 2) = 2^(-z^2 log2(e)), z^2 shared with erff: exp2f is one
     * MUFU.EX2 (2 ulp), where expf's range reduction is about ten
     * instructions more a value, and the passes that call this are bound
     * by their instructions (P's bias + GELU pass: 80% issue slots) */
    const float pdf = 0.39894228040143268f * exp2f(-1.44269504088896341f * (z * z));
    *grad = cdf + x * pdf;
    return 0.5f * x * (1.0f + e);
}

/* act(x) alone: act_f_grad's formula, so the same bits (the compiler
 * drops the derivative's work, whose result is not used) */
template <int ACT, bool FAST> __device__ static inline float act_f(float x)
{
    float unused;
    return act_f_grad<ACT, FAST>(x, &unused);
}

/* dh[g][m, n] = da[g][m, n] * gh[g][m, n] (in bf16 into dh16 instead when
 * given; dh or dh16 may be da), gh the activation's derivative that bias_act's
 * grad_h wrote, and db[g][n] += its column sums, for g < G groups of M
 * rows: a linear layer's activation backward and its bias gradient in one
 * pass over the hidden values, instead of a pass that writes dh and one
 * that reads it again. Laid out as colsum_partial_kernel (a block: 32 x V
 * columns, RED_CHUNKS chunks of rows, COLSUM_LANES lanes), and its sums
 * are added in the same order: db gets the same bits as colsum_add on dh.
 * live (or NULL): group g's rows from live[g] on are padding, as in
 * bias_act_kernel: dh gets zeros there without reading da or gh (the
 * zeros da holds there, as the combine's backward leaves dy, would give
 * the same dh and sums; gh holds nothing there). */
template <int V, typename DT, typename HT>
static __global__ void act_bias_backward_kernel(float *dh, __nv_bfloat16 *dh16, float *__restrict__ part,
                                                const DT *da, const HT *__restrict__ gh,
                                                const int *__restrict__ live, int M, int N)
{
    const int n = (blockIdx.x * 32 + (int)threadIdx.x % 32) * V, c = blockIdx.y, g = blockIdx.z;
    const int per = (M + RED_CHUNKS - 1) / RED_CHUNKS, lo = c * per, hi = min(M, lo + per);
    const int end = live ? max(lo, min(hi, live[g])) : hi; /* the chunk's rows before the padding */
    const int lane = (int)threadIdx.x / 32;
    const bool valid = n < N; /* V > 1: N is a multiple of V */
    float acc[V] = {};
    if (valid) {
        const int64_t at = (int64_t)g * M * N + n;
        const auto store_dh = [&](int m, const float (&v)[V]) {
            if (dh16)
                vstore<V>(dh16 + at + (int64_t)m * N, v);
            else
                vstore<V>(dh + at + (int64_t)m * N, v);
        };
        /* ROWS of this lane's rows at a time, all loaded before any is
         * stored: dh (dh16) may be da, so the compiler cannot move the next
         * row's loads above this one's store, and one row's loads at a
         * time left the pass waiting on memory; the rows are still added
         * in order */
        constexpr int ROWS = 4;
        for (int m0 = lo + lane; m0 < end; m0 += ROWS * COLSUM_LANES) {
            float d[ROWS][V], f[ROWS][V];
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                const int m = m0 + r * COLSUM_LANES;
                if (m < end) {
                    vload<V>(d[r], da + at + (int64_t)m * N);
                    vload<V>(f[r], gh + at + (int64_t)m * N);
                }
            }
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                const int m = m0 + r * COLSUM_LANES;
                if (m >= end)
                    break;
#pragma unroll
                for (int j = 0; j < V; j++) {
                    d[r][j] *= f[r][j];
                    acc[j] += d[r][j];
                }
                store_dh(m, d[r]);
            }
        }
        /* the padding: this lane's rows from end on */
        const float z[V] = {};
        int m = lo + lane;
        if (m < end)
            m += (end - m + COLSUM_LANES - 1) / COLSUM_LANES * COLSUM_LANES;
        for (; m < hi; m += COLSUM_LANES)
            store_dh(m, z);
    }
    lanes_sum<COLSUM_LANES, V>(acc);
    if (lane == 0 && valid) {
#pragma unroll
        for (int j = 0; j < V; j++)
            part[((int64_t)g * RED_CHUNKS + c) * N + n + j] = acc[j];
    }
}

/* da, gh: fp32, or bf16 (the experts' as their products and bias_act wrote
 * them in bf16 precision: moe_h16); 8 values a thread where the rows and
 * pointers allow, else 4, else 1 (as bias_act) */
template <typename DT = float, typename HT = float>
static inline void act_bias_backward(const kctx *k, float *dh, __nv_bfloat16 *dh16, float *db, const DT *da,
                                     const HT *gh, int M, int N, int G = 1, const int *live = nullptr)
{
    const float *out = dh16 ? nullptr : dh;
    const unsigned threads = 32 * COLSUM_LANES;
    if (vec8_ok(N, da, gh, out) && vec8_ok(N, dh16))
        act_bias_backward_kernel<8, DT, HT><<<colsum_grid(k, N, G, 8), threads, 0, k->stream>>>(dh, dh16, k->red, da,
                                                                                               gh, live, M, N);
    else if (vec4_ok_as(N, da) && vec4_ok_as(N, gh) && vec4_ok(N, out) && bf16_ok(dh16))
        act_bias_backward_kernel<4, DT, HT><<<colsum_grid(k, N, G, 4), threads, 0, k->stream>>>(dh, dh16, k->red, da,
                                                                                               gh, live, M, N);
    else
        act_bias_backward_kernel<1, DT, HT><<<colsum_grid(k, N, G, 1), threads, 0, k->stream>>>(dh, dh16, k->red, da,
                                                                                               gh, live, M, N);
    LAUNCH_CHECK();
    colsum_final(k, db, N, G, N);
}

template <int V> static __global__ void add_kernel(float *out, const float *a, const float *b, int64_t n)
{
    const int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i >= n)
        return;
    float x[V], y[V];
    vload<V>(x, a + i);
    vload<V>(y, b + i);
#pragma unroll
    for (int j = 0; j < V; j++)
        x[j] += y[j];
    vstore<V>(out + i, x);
}

/* out = a + b */
static inline void add_forward(const kctx *k, float *out, const float *a, const float *b, int64_t n)
{
    launch_vec(k, vec4_ok(n, out, a, b), n, add_kernel<4>, add_kernel<1>, out, a, b, n);
}

static __global__ void accumulate_kernel(float *dst, const float *src, int64_t n)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        dst[i] += src[i];
}

/* dst = src, n floats, on the stream */
static inline void copy_floats(const kctx *k, float *dst, const float *src, int64_t n)
{
    CUDA_CHECK(cudaMemcpyAsync(dst, src, (size_t)n * sizeof(float), cudaMemcpyDeviceToDevice, k->stream));
}

/* dst (+)= src */
static inline void grad_pass(const kctx *k, float *dst, const float *src, int64_t n, int acc)
{
    if (!acc) {
        copy_floats(k, dst, src, n);
        return;
    }
    accumulate_kernel<<<blocks_for(n, 256), 256, 0, k->stream>>>(dst, src, n);
    LAUNCH_CHECK();
}

/* x *= a */
static __global__ void scale_kernel(float *x, int64_t n, float a)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] *= a;
}

static inline void scale_inplace(const kctx *k, float *x, int64_t n, float a)
{
    scale_kernel<<<blocks_for(n, 256), 256, 0, k->stream>>>(x, n, a);
    LAUNCH_CHECK();
}

/* ---- patch embedding, class token, positions ------------------------------------------------- */

/* cols[B*T, C*P*P] = the patches of img[B, C, IH, IW] */
template <int C, int IH, int IW, int P> static __global__ void im2col_kernel(float *cols, const float *img, int B)
{
    constexpr int GW = IW / P, T = (IH / P) * GW, CPP = C * P * P;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)B * T * CPP)
        return;
    const int j = (int)(i % CPP);
    const int64_t bt = i / CPP;
    const int b = (int)(bt / T), t = (int)(bt % T), gy = t / GW, gx = t % GW;
    const int c = j / (P * P), py = (j / P) % P, px = j % P;
    cols[i] = img[(((int64_t)b * C + c) * IH + gy * P + py) * IW + gx * P + px];
}

template <int C, int IH, int IW, int P, int D>
static inline void patch_embed_forward(const kctx *k, float *out, float *cols, const float *img, const float *w,
                                       const float *b, int B)
{
    constexpr int T = (IH / P) * (IW / P);
    im2col_kernel<C, IH, IW, P><<<blocks_for((int64_t)B * T * C * P * P, 256), 256, 0, k->stream>>>(cols, img, B);
    LAUNCH_CHECK();
    linear_forward(k, out, cols, w, b, B * T, C * P * P, D);
}

template <int C, int IH, int IW, int P, int D>
static inline void patch_embed_backward(const kctx *k, float *dw, float *db, const float *dout, const float *cols,
                                        int B)
{
    constexpr int T = (IH / P) * (IW / P);
    linear_backward(k, nullptr, dw, db, dout, cols, nullptr, B * T, C * P * P, D, 0);
}

/* out[b] = the class token, then inp[b]'s T rows; V values a thread (D a
 * multiple of V: launch_vec) */
template <int V>
static __global__ void cls_token_kernel(float *out, const float *inp, const float *cls, int B, int T, int D)
{
    const int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * V, TD1 = (int64_t)(T + 1) * D;
    if (i >= (int64_t)B * TD1)
        return;
    const int64_t b = i / TD1, r = i - b * TD1;
    float x[V];
    vload<V>(x, r < D ? cls + r : inp + b * T * D + r - D);
    vstore<V>(out + i, x);
}

template <int V>
static __global__ void cls_token_back_kernel(float *dinp, const float *dout, int B, int T, int D, int acc)
{
    const int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * V, TD = (int64_t)T * D;
    if (i >= (int64_t)B * TD)
        return;
    const int64_t b = i / TD;
    vcopy<V>(dinp + i, dout + b * (TD + D) + D + (i - b * TD), acc);
}

static inline void cls_token_forward(const kctx *k, float *out, const float *inp, const float *cls, int B, int T,
                                     int D)
{
    launch_vec(k, vec4_ok(D, out, inp, cls), (int64_t)B * (T + 1) * D, cls_token_kernel<4>, cls_token_kernel<1>, out,
               inp, cls, B, T, D);
}

/* dcls += the class-token rows summed over the batch */
static inline void cls_token_backward(const kctx *k, float *dinp, float *dcls, const float *dout, int B, int T, int D,
                                      int acc)
{
    launch_vec(k, vec4_ok(D, dinp, dout), (int64_t)B * T * D, cls_token_back_kernel<4>, cls_token_back_kernel<1>,
               dinp, dout, B, T, D, acc);
    /* the first D of each sample's (T+1)*D values are the class token's */
    colsum_add(k, dcls, dout, B, D, 1, 0, 0, (int64_t)(T + 1) * D);
}

/* out = inp + pos, pos repeated every TD values (a multiple of V) */
template <int V>
static __global__ void pos_add_kernel(float *out, const float *inp, const float *pos, int64_t n, int64_t TD)
{
    const int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i >= n)
        return;
    float x[V], p[V];
    vload<V>(x, inp + i);
    vload<V>(p, pos + i % TD);
#pragma unroll
    for (int j = 0; j < V; j++)
        x[j] += p[j];
    vstore<V>(out + i, x);
}

static inline void pos_embed_forward(const kctx *k, float *out, const float *inp, const float *pos, int B, int T,
                                     int D)
{
    const int64_t n = (int64_t)B * T * D;
    launch_vec(k, vec4_ok(D, out, inp, pos), n, pos_add_kernel<4>, pos_add_kernel<1>, out, inp, pos, n,
               (int64_t)T * D);
}

/* dpos may be NULL (a fixed table) */
static inline void pos_embed_backward(const kctx *k, float *dinp, float *dpos, const float *dout, int B, int T, int D,
                                      int acc)
{
    grad_pass(k, dinp, dout, (int64_t)B * T * D, acc);
    if (dpos)
        colsum_add(k, dpos, dout, B, T * D);
}

/* The fixed 2-D sine-cosine table of MAE for a GH x GW grid, a zero row
 * first with a class token (ops.h: sincos_table; sin and cos in double) */
static __global__ void sincos_table_kernel(float *pos, int GH, int GW, int D, int cls)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)(GH * GW + cls) * D)
        return;
    const int row = (int)(i / D) - cls, c = (int)(i % D), q = D / 4;
    if (row < 0 || c >= 4 * q) {
        pos[i] = 0.0f;
        return;
    }
    const int y = row / GW, x = row % GW, j = c % q, part = c / q;
    const double omega = 1.0 / pow(10000.0, (double)j / q);
    const double arg = (part < 2 ? x : y) * omega;
    pos[i] = (float)(part % 2 == 0 ? sin(arg) : cos(arg));
}

static inline void sincos_table(const kctx *k, float *pos, int GH, int GW, int D, int cls)
{
    sincos_table_kernel<<<blocks_for((int64_t)(GH * GW + cls) * D, 256), 256, 0, k->stream>>>(pos, GH, GW, D, cls);
    LAUNCH_CHECK();
}

/* ---- hierarchical models: convolution stem, windows, 2x2 token merge --------------------------------
 * One thread an element, in the layouts of ops.h's functions of the same
 * names (the CPU reference); sums in the order the CPU adds them where
 * there is one order, so that fp32 agrees to rounding. */

/* (b, y, x) of position t of row-major H x W grids laid one after another */
__device__ static inline void grid_pos(int64_t t, int H, int W, int &b, int &y, int &x)
{
    x = (int)(t % W);
    y = (int)(t / W % H);
    b = (int)(t / ((int64_t)W * H));
}

/* the same in 32 bits (t < 2^31) */
__device__ static inline void grid_pos(int t, int H, int W, int &b, int &y, int &x)
{
    x = t % W;
    y = t / W % H;
    b = t / (W * H);
}

/* the element of img[B, C, H, W] (nhwc = 0) or img[B, H*W, C] (nhwc = 1) */
__device__ static inline int64_t conv_at(int b, int c, int y, int x, int C, int H, int W, int nhwc)
{
    return nhwc ? ((int64_t)b * H * W + (int64_t)y * W + x) * C + c : (((int64_t)b * C + c) * H + y) * W + x;
}

static __global__ void conv_im2col_kernel(float *cols, const float *img, int B, int C, int H, int W, int K, int S,
                                          int pad, int nhwc, int OH, int OW)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, CKK = (int64_t)C * K * K;
    if (i >= (int64_t)B * OH * OW * CKK)
        return;
    const int j = (int)(i % CKK);
    int b, oy, ox;
    grid_pos(i / CKK, OH, OW, b, oy, ox);
    const int c = j / (K * K), ky = j / K % K, kx = j % K;
    const int y = oy * S + ky - pad, x = ox * S + kx - pad;
    cols[i] = y >= 0 && y < H && x >= 0 && x < W ? img[conv_at(b, c, y, x, C, H, W, nhwc)] : 0.0f;
}

/* cols[B*OH*OW, C*K*K]: the K x K neighbourhoods (zero padding pad, stride
 * S) of img, columns (c, ky, kx) as a [*, C, K, K] weight's */
static inline void conv_im2col(const kctx *k, float *cols, const float *img, int B, int C, int H, int W, int K, int S,
                               int pad, int nhwc)
{
    const int OH = (H + 2 * pad - K) / S + 1, OW = (W + 2 * pad - K) / S + 1;
    conv_im2col_kernel<<<blocks_for((int64_t)B * OH * OW * C * K * K, 256), 256, 0, k->stream>>>(
        cols, img, B, C, H, W, K, S, pad, nhwc, OH, OW);
    LAUNCH_CHECK();
}

/* one thread a pixel: the sum of the gradients of the neighbourhoods that
 * cover it, in the CPU's order (oy, then ox) */
static __global__ void conv_col2im_kernel(float *dimg, const float *dcols, int B, int C, int H, int W, int K, int S,
                                          int pad, int nhwc, int OH, int OW, int acc)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)B * C * H * W)
        return;
    int b, c, y, x;
    if (nhwc) {
        c = (int)(i % C);
        grid_pos(i / C, H, W, b, y, x);
    } else {
        x = (int)(i % W), y = (int)(i / W % H), c = (int)(i / ((int64_t)W * H) % C), b = (int)(i / ((int64_t)W * H * C));
    }
    const int64_t CKK = (int64_t)C * K * K;
    /* the neighbourhoods over the pixel: 0 <= y + pad - oy * S < K */
    const int yp = y + pad, xp = x + pad;
    const int oy0 = yp >= K ? (yp - K) / S + 1 : 0, oy1 = min(OH - 1, yp / S);
    const int ox0 = xp >= K ? (xp - K) / S + 1 : 0, ox1 = min(OW - 1, xp / S);
    float sum = acc ? dimg[i] : 0.0f;
    for (int oy = oy0; oy <= oy1; oy++) {
        const int ky = yp - oy * S;
        for (int ox = ox0; ox <= ox1; ox++) {
            const int kx = xp - ox * S;
            sum += dcols[(((int64_t)b * OH + oy) * OW + ox) * CKK + ((int64_t)c * K + ky) * K + kx];
        }
    }
    dimg[i] = sum;
}

/* dimg (+)= the adjoint of conv_im2col: each pixel's share of the
 * neighbourhoods' gradients dcols */
static inline void conv_col2im(const kctx *k, float *dimg, const float *dcols, int B, int C, int H, int W, int K, int S,
                               int pad, int nhwc, int acc)
{
    const int OH = (H + 2 * pad - K) / S + 1, OW = (W + 2 * pad - K) / S + 1;
    conv_col2im_kernel<<<blocks_for((int64_t)B * C * H * W, 256), 256, 0, k->stream>>>(dimg, dcols, B, C, H, W, K, S,
                                                                                        pad, nhwc, OH, OW, acc);
    LAUNCH_CHECK();
}

/* dimg[B, C, IH, IW] (+)= the gradient of the image under patch_embed's
 * patches (dcols: scratch, [B*T, C*P*P]): a convolution stem's output */
static inline void patch_embed_input_backward(const kctx *k, float *dimg, float *dcols, const float *dout,
                                              const float *w, int B, int C, int IH, int IW, int P, int D, int acc)
{
    const int T = (IH / P) * (IW / P);
    mm_nn(k, dcols, dout, w, B * T, C * P * P, D, 0.0f);
    conv_col2im(k, dimg, dcols, B, C, IH, IW, P, P, 0, 0, acc);
}

/* a block a 32 x 32 tile of one sample: read along c, written along r
 * (through shared memory, a column of padding against bank conflicts), so
 * that both sides move whole rows of 128 bytes */
static __global__ void transpose_rc_kernel(float *out, const float *inp, int R, int C, int acc)
{
    __shared__ float tile[32][33];
    const int c0 = (int)blockIdx.x * 32, r0 = (int)blockIdx.y * 32, tx = (int)threadIdx.x;
    const float *in = inp + (int64_t)blockIdx.z * R * C;
    float *o = out + (int64_t)blockIdx.z * R * C;
    for (int j = (int)threadIdx.y; j < 32; j += (int)blockDim.y)
        if (r0 + j < R && c0 + tx < C)
            tile[j][tx] = in[(int64_t)(r0 + j) * C + c0 + tx];
    __syncthreads();
    for (int j = (int)threadIdx.y; j < 32; j += (int)blockDim.y)
        if (c0 + j < C && r0 + tx < R) {
            float *p = o + (int64_t)(c0 + j) * R + r0 + tx;
            *p = acc ? *p + tile[tx][j] : tile[tx][j];
        }
}

/* out[b, c, r] (+)= inp[b, r, c]: [B, R, C] to [B, C, R] */
static inline void transpose_rc(const kctx *k, float *out, const float *inp, int B, int R, int C, int acc)
{
    const dim3 grid((unsigned)((C + 31) / 32), (unsigned)((R + 31) / 32), (unsigned)B);
    transpose_rc_kernel<<<grid, dim3(32, 8), 0, k->stream>>>(out, inp, R, C, acc);
    LAUNCH_CHECK();
}

/* the row of grid token (b, y, x) in the windows' layout */
__device__ static inline int64_t window_row(int b, int y, int x, int GH, int GW, int WS)
{
    const int NWX = GW / WS;
    return ((int64_t)b * (GH / WS) * NWX + (int64_t)(y / WS) * NWX + x / WS) * WS * WS + (int64_t)(y % WS) * WS +
           x % WS;
}

/* the passes below move rows of C floats V at a time (V = 4 where C is a
 * multiple of 4 and the buffers 16-byte aligned), their indices in 32 bits
 * (rows < 2^31) */
template <int V>
static __global__ void window_permute_kernel(float *dst, const float *src, int rows, int GH, int GW, int WS, int C,
                                             int to_windows, int acc)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int CV = C / V;
    if (i >= (int64_t)rows * CV)
        return;
    const int r = (int)(i / CV), c = (int)(i % CV) * V;
    int b, y, x;
    grid_pos(r, GH, GW, b, y, x);
    const int64_t w = window_row(b, y, x, GH, GW, WS) * C + c, g = (int64_t)r * C + c;
    vcopy<V>(dst + (to_windows ? w : g), src + (to_windows ? g : w), acc);
}

/* Swin's window partition of grid[B, GH*GW, C] into win[B * nW, WS*WS, C];
 * to_windows: win (+)= grid, else grid (+)= win */
static inline void window_permute(const kctx *k, float *dst, const float *src, int B, int GH, int GW, int WS, int C,
                                  int to_windows, int acc)
{
    const int rows = B * GH * GW;
    launch_vec(k, vec4_ok(C, dst, src), (int64_t)rows * C, window_permute_kernel<4>, window_permute_kernel<1>, dst, src,
               rows, GH, GW, WS, C, to_windows, acc);
}

static __global__ void grid_pool_fwd_kernel(float *out, const float *inp, int B, int GH, int GW, int WS, int D)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)B * WS * WS * D)
        return;
    const int d = (int)(i % D), t = (int)(i / D % (WS * WS)), b = (int)(i / ((int64_t)D * WS * WS));
    const int CH = GH / WS, CW = GW / WS, y0 = t / WS * CH, x0 = t % WS * CW;
    float sum = 0.0f;
    for (int y = y0; y < y0 + CH; y++)
        for (int x = x0; x < x0 + CW; x++)
            sum += inp[((int64_t)b * GH * GW + (int64_t)y * GW + x) * D + d];
    out[i] = sum * (1.0f / (float)(CH * CW));
}

/* GCViT's global tokens: out[B, WS*WS, D], the grid inp[B, GH*GW, D]
 * averaged over cells of (GH/WS) x (GW/WS) tokens */
static inline void grid_pool_forward(const kctx *k, float *out, const float *inp, int B, int GH, int GW, int WS, int D)
{
    grid_pool_fwd_kernel<<<blocks_for((int64_t)B * WS * WS * D, 256), 256, 0, k->stream>>>(out, inp, B, GH, GW, WS, D);
    LAUNCH_CHECK();
}

template <int V>
static __global__ void grid_pool_bwd_kernel(float *dinp, const float *dout, int rows, int GH, int GW, int WS, int D,
                                            int acc)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int DV = D / V;
    if (i >= (int64_t)rows * DV)
        return;
    const int r = (int)(i / DV), d = (int)(i % DV) * V;
    int b, y, x;
    grid_pos(r, GH, GW, b, y, x);
    const int CH = GH / WS, CW = GW / WS;
    const float inv = 1.0f / (float)(CH * CW);
    vcopy<V>(dinp + (int64_t)r * D + d, dout + ((int64_t)b * WS * WS + (int64_t)(y / CH) * WS + x / CW) * D + d, acc,
             inv);
}

static inline void grid_pool_backward(const kctx *k, float *dinp, const float *dout, int B, int GH, int GW, int WS,
                                      int D, int acc)
{
    const int rows = B * GH * GW;
    launch_vec(k, vec4_ok(D, dinp, dout), (int64_t)rows * D, grid_pool_bwd_kernel<4>, grid_pool_bwd_kernel<1>, dinp,
               dout, rows, GH, GW, WS, D, acc);
}

template <int V>
static __global__ void global_window_qkv_kernel(float *qkv, const float *q, const float *kv, int B, int GH, int GW,
                                                int WS, int D)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int NWX = GW / WS, NW = (GH / WS) * NWX, WT = WS * WS, JV = 3 * D / V;
    if (i >= (int64_t)B * NW * WT * JV)
        return;
    const int j = (int)(i % JV) * V, r = (int)(i / JV);
    int b, w, t; /* sample, window, token */
    grid_pos(r, NW, WT, b, w, t);
    const int y = w / NWX * WS + t / WS, x = w % NWX * WS + t % WS;
    vcopy<V>(qkv + (int64_t)r * 3 * D + j,
             j < D ? q + ((int64_t)b * WT + t) * D + j : kv + ((int64_t)b * GH * GW + (int64_t)y * GW + x) * 2 * D + j - D,
             0);
}

/* GCViT's global attention input: qkv[B * nW, WS*WS, 3D], every window
 * with its sample's global queries q[B, WS*WS, D] and its own tokens' keys
 * and values from kv[B, GH*GW, 2D] (grid order) */
static inline void global_window_qkv(const kctx *k, float *qkv, const float *q, const float *kv, int B, int GH, int GW,
                                     int WS, int D)
{
    const int64_t n = (int64_t)B * (GH / WS) * (GW / WS) * WS * WS * 3 * D;
    launch_vec(k, vec4_ok(D, qkv, q, kv), n, global_window_qkv_kernel<4>, global_window_qkv_kernel<1>, qkv, q, kv, B, GH,
               GW, WS, D);
}

/* dq[b, t, d]: the queries' gradients summed over the sample's windows, in
 * window order */
static __global__ void global_q_bwd_kernel(float *dq, const float *dqkv, int B, int NW, int WT, int D)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)B * WT * D)
        return;
    const int d = (int)(i % D), t = (int)(i / D % WT), b = (int)(i / ((int64_t)D * WT));
    float sum = 0.0f;
    for (int w = 0; w < NW; w++)
        sum += dqkv[(((int64_t)b * NW + w) * WT + t) * 3 * D + d];
    dq[i] = sum;
}

/* dkv[b, y*GW + x, j] = the gradient of the key or value at that token */
template <int V> static __global__ void global_kv_bwd_kernel(float *dkv, const float *dqkv, int rows, int GH, int GW, int WS, int D)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int JV = 2 * D / V;
    if (i >= (int64_t)rows * JV)
        return;
    const int r = (int)(i / JV), j = (int)(i % JV) * V;
    int b, y, x;
    grid_pos(r, GH, GW, b, y, x);
    vcopy<V>(dkv + (int64_t)r * 2 * D + j, dqkv + window_row(b, y, x, GH, GW, WS) * 3 * D + D + j, 0);
}

/* the adjoint of global_window_qkv: dq[B, WS*WS, D] and dkv[B, GH*GW, 2D],
 * both written */
static inline void global_window_qkv_backward(const kctx *k, float *dq, float *dkv, const float *dqkv, int B, int GH,
                                              int GW, int WS, int D)
{
    const int NW = (GH / WS) * (GW / WS), WT = WS * WS;
    global_q_bwd_kernel<<<blocks_for((int64_t)B * WT * D, 256), 256, 0, k->stream>>>(dq, dqkv, B, NW, WT, D);
    LAUNCH_CHECK();
    const int rows = B * GH * GW;
    launch_vec(k, vec4_ok(D, dkv, dqkv), (int64_t)rows * 2 * D, global_kv_bwd_kernel<4>, global_kv_bwd_kernel<1>, dkv,
               dqkv, rows, GH, GW, WS, D);
}

/* element i of the merged out[B, (GH/2)*(GW/2), 4D]: its source in
 * inp[B, GH*GW, D] (the neighbourhood's tokens in Swin's order (2y, 2x),
 * (2y+1, 2x), (2y, 2x+1), (2y+1, 2x+1)) */
__device__ static inline int64_t merge2x2_src(int64_t i, int GH, int GW, int D)
{
    const int OH = GH / 2, OW = GW / 2;
    const int c = (int)(i % D), q = (int)(i / D % 4);
    int b, y, x;
    grid_pos(i / (4 * D), OH, OW, b, y, x);
    return ((int64_t)b * GH * GW + (int64_t)(2 * y + q % 2) * GW + 2 * x + q / 2) * D + c;
}

static __global__ void merge2x2_fwd_kernel(float *out, const float *inp, int64_t n, int GH, int GW, int D)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = inp[merge2x2_src(i, GH, GW, D)];
}

static __global__ void merge2x2_bwd_kernel(float *dinp, const float *dout, int64_t n, int GH, int GW, int D, int acc)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    const int64_t s = merge2x2_src(i, GH, GW, D); /* each input element is one output's */
    dinp[s] = acc ? dinp[s] + dout[i] : dout[i];
}

/* Swin's patch merging: out[B, (GH/2)*(GW/2), 4D] */
static inline void merge2x2_forward(const kctx *k, float *out, const float *inp, int B, int GH, int GW, int D)
{
    const int64_t n = (int64_t)B * GH * GW * D;
    merge2x2_fwd_kernel<<<blocks_for(n, 256), 256, 0, k->stream>>>(out, inp, n, GH, GW, D);
    LAUNCH_CHECK();
}

static inline void merge2x2_backward(const kctx *k, float *dinp, const float *dout, int B, int GH, int GW, int D,
                                     int acc)
{
    const int64_t n = (int64_t)B * GH * GW * D;
    merge2x2_bwd_kernel<<<blocks_for(n, 256), 256, 0, k->stream>>>(dinp, dout, n, GH, GW, D, acc);
    LAUNCH_CHECK();
}

/* ---- layer norm -------------------------------------------------------------------------------- */

/* one warp per row; each lane keeps D/32 values in registers. out16: the
 * output in bf16 there instead of out (bf16 precision, where only a
 * product takes it) */
template <int D>
static __global__ void layernorm_fwd_kernel(float *out, __nv_bfloat16 *out16, float *mean, float *rstd,
                                            const float *inp, const float *w, const float *b, int N, float eps)
{
    constexpr int PER = (D + 31) / 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N)
        return;
    const float *x = inp + (int64_t)row * D;
    float v[PER];
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const int i = lane + 32 * j;
        v[j] = i < D ? x[i] : 0.0f;
        s += v[j];
    }
    const float m = warp_sum(s) / D;
    float q = 0.0f;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const int i = lane + 32 * j;
        const float d = i < D ? v[j] - m : 0.0f;
        q += d * d;
    }
    const float r = 1.0f / sqrtf(warp_sum(q) / D + eps);
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const int i = lane + 32 * j;
        if (i >= D)
            continue;
        const float y = (v[j] - m) * r * w[i] + b[i];
        if (out16)
            out16[(int64_t)row * D + i] = __float2bfloat16_rn(y);
        else
            out[(int64_t)row * D + i] = y;
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

/* The backward pass's blocks (ln_blocks): 8 rows a warp, at least two
 * blocks an SM, at most LN_BLOCKS (the partials' room); each block keeps
 * its sums of its rows in registers and writes them once. Fewer blocks
 * write and add fewer partials, more keep more loads in flight. On an
 * H200, ms a step: S (16,640 rows) 1024 blocks 12.29, 512 12.22 (one
 * call); 512 12.18, 264 (two an SM) 12.11, 528 12.11 (another); 512
 * 12.13, 264 12.07 (a third, where P (66,560 rows) took 18.60 with 512
 * and 18.77 with 264: this rule gives S 264 and P 512) */
#define LN_BLOCKS 512

static inline int ln_blocks(int N)
{
    const int want = (N + 63) / 64; /* 8 rows a warp */
    const int nb = want > device_sms() * 2 ? want : device_sms() * 2;
    return nb < LN_BLOCKS ? nb : LN_BLOCKS;
}

/* dx per row (a warp each); the block's partial sums of dw and db go to
 * part[block][NS D] and are added up in block order afterwards. NS 3:
 * also the column sums of dinp as written (after acc), the bias gradient
 * of the op whose output gradient dinp is (layernorm_backward's dsum) */
template <int D>
static __global__ void layernorm_bwd_kernel(float *dinp, float *part, const float *dout, const float *inp,
                                            const float *w, const float *mean, const float *rstd, int N, int acc,
                                            int NS, __nv_bfloat16 *dinp16)
{
    constexpr int PER = (D + 31) / 32;
    extern __shared__ float sm[]; /* [warps][NS D] */
    const int warps = blockDim.x / 32, wid = threadIdx.x / 32, lane = threadIdx.x % 32;
    float dw[PER], db[PER], ds[PER];
#pragma unroll
    for (int j = 0; j < PER; j++)
        dw[j] = db[j] = ds[j] = 0.0f;
    for (int row = blockIdx.x * warps + wid; row < N; row += gridDim.x * warps) {
        const float *g = dout + (int64_t)row * D, *x = inp + (int64_t)row * D;
        const float m = mean[row], s = rstd[row];
        float xh[PER], gw[PER], sg = 0.0f, sgx = 0.0f;
#pragma unroll
        for (int j = 0; j < PER; j++) {
            const int i = lane + 32 * j;
            if (i < D) {
                xh[j] = (x[i] - m) * s;
                const float gi = g[i];
                gw[j] = gi * w[i];
                dw[j] += gi * xh[j];
                db[j] += gi;
            } else {
                xh[j] = gw[j] = 0.0f;
            }
            sg += gw[j];
            sgx += gw[j] * xh[j];
        }
        sg = warp_sum(sg) / D;
        sgx = warp_sum(sgx) / D;
        float *dx = dinp + (int64_t)row * D;
        /* the row's old dinp loaded before any store: with a bf16 store
         * between them (dinp16, which the compiler must take as aliasing
         * dinp) each load waited for the store before it (S, the loads in
         * the store loop: this kernel 0.74 -> 1.54 ms a step) */
        float old[PER];
#pragma unroll
        for (int j = 0; j < PER; j++) {
            const int i = lane + 32 * j;
            old[j] = acc && i < D ? dx[i] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < PER; j++) {
            const int i = lane + 32 * j;
            if (i < D) {
                const float v = (gw[j] - sg - xh[j] * sgx) * s, y = acc ? old[j] + v : v;
                dx[i] = y;
                ds[j] += y;
                if (dinp16)
                    dinp16[(int64_t)row * D + i] = __float2bfloat16_rn(y);
            }
        }
    }
    const int W = NS * D;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const int i = lane + 32 * j;
        if (i < D) {
            sm[wid * W + i] = dw[j];
            sm[wid * W + D + i] = db[j];
            if (NS == 3)
                sm[wid * W + 2 * D + i] = ds[j];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < W; i += blockDim.x) {
        float a = 0.0f;
        for (int q = 0; q < warps; q++)
            a += sm[q * W + i];
        part[(int64_t)blockIdx.x * W + i] = a;
    }
}

/* dw, db (and dsum where NS is 3) += the sums of the partials
 * part[nblocks, NS D], on LN_FINAL_LANES lanes of partials (one thread
 * per column, summing all 1024 partials of LN_BLOCKS 1024, took 28 us
 * on config S) */
#define LN_FINAL_LANES 32
static __global__ void layernorm_bwd_final_kernel(float *dw, float *db, float *dsum, const float *part, int D,
                                                  int nblocks, int NS)
{
    const int i = blockIdx.x * 32 + (int)threadIdx.x % 32;
    const float t = lanes_col_sum<LN_FINAL_LANES>(part + i, NS * D, 0, nblocks, i < NS * D);
    if (threadIdx.x / 32 != 0 || i >= NS * D)
        return;
    if (i < D)
        dw[i] += t;
    else if (i < 2 * D)
        db[i - D] += t;
    else
        dsum[i - 2 * D] += t;
}

/* layernorm_fwd_kernel where D is a multiple of 128 and the arrays are
 * 16-byte aligned (out16 8-byte): each lane takes its values four at a
 * time (D / 128 loads of 16 bytes, stores of 16 or 8), where the scalar
 * kernel issued D / 32 loads and stores of 4 or 2 bytes (config S: its
 * 25 launches 0.373 -> 0.303 ms a step under ncu, the step 11.51 -> 11.30
 * ms; notes-gpu.md item 100) */
template <int D>
static __global__ void layernorm_fwd4_kernel(float *out, __nv_bfloat16 *out16, float *mean, float *rstd,
                                             const float *inp, const float *w, const float *b, int N, float eps)
{
    static_assert(D % 128 == 0, "layernorm_fwd4_kernel: 4 values a lane, 32 lanes");
    constexpr int PER = D / 128;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N)
        return;
    const float4 *x = reinterpret_cast<const float4 *>(inp + (int64_t)row * D);
    float4 v[PER];
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        v[j] = x[lane + 32 * j];
        s += v[j].x + v[j].y + v[j].z + v[j].w;
    }
    const float m = warp_sum(s) / D;
    float q = 0.0f;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const float a = v[j].x - m, c = v[j].y - m, d = v[j].z - m, e = v[j].w - m;
        q += a * a + c * c + d * d + e * e;
    }
    const float r = 1.0f / sqrtf(warp_sum(q) / D + eps);
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const int i4 = lane + 32 * j;
        const float4 wv = reinterpret_cast<const float4 *>(w)[i4], bv = reinterpret_cast<const float4 *>(b)[i4];
        const float4 y = make_float4((v[j].x - m) * r * wv.x + bv.x, (v[j].y - m) * r * wv.y + bv.y,
                                     (v[j].z - m) * r * wv.z + bv.z, (v[j].w - m) * r * wv.w + bv.w);
        if (out16)
            reinterpret_cast<uint2 *>(out16 + (int64_t)row * D)[i4] = make_uint2(bf16x2_bits(y.x, y.y),
                                                                                 bf16x2_bits(y.z, y.w));
        else
            reinterpret_cast<float4 *>(out + (int64_t)row * D)[i4] = y;
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

template <int D>
static inline void layernorm_forward(const kctx *k, float *out, float *mean, float *rstd, const float *inp,
                                     const float *w, const float *b, int N, float eps, __nv_bfloat16 *out16 = nullptr)
{
    const unsigned grid = (unsigned)((N + 7) / 8);
    if (D % 128 == 0 && aligned16(inp, w, b) && (out16 ? ((uintptr_t)out16 & 7) == 0 : aligned16(out)))
        layernorm_fwd4_kernel<D % 128 == 0 ? D : 128><<<grid, 256, 0, k->stream>>>(out, out16, mean, rstd, inp, w, b,
                                                                                   N, eps);
    else
        layernorm_fwd_kernel<D><<<grid, 256, 0, k->stream>>>(out, out16, mean, rstd, inp, w, b, N, eps);
    LAUNCH_CHECK();
}

/* the backward's shared memory: 8 warps' NS partial sums a column (dw,
 * db, and dinp's where it sums them: ln_sum_ok) */
template <int D> constexpr int ln_bwd_smem(int NS = 2)
{
    return 8 * NS * D * (int)sizeof(float);
}

template <int D> constexpr bool ln_sum_ok()
{
    return ln_bwd_smem<D>(3) <= 227 * 1024;
}

/* Widths above 512 with dinp's sums, above 768 without, need more than the
 * 48 KiB of shared memory a launch gets by default: model.cu's
 * dev_init_tables asks for it once per width, before any step is
 * captured. */
template <int D> static inline void layernorm_setup()
{
    static_assert(ln_bwd_smem<D>() <= 227 * 1024, "layer norm width too large for the backward kernel");
    CUDA_CHECK(cudaFuncSetAttribute(layernorm_bwd_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    ln_bwd_smem<D>(ln_sum_ok<D>() ? 3 : 2)));
}

/* dsum (NULL: none) += the column sums of dinp as written (after acc): the
 * bias gradient of the op whose output's gradient dinp is, when nothing
 * writes dinp after this (emit_cuda.c's plan_ln_sums), in the same pass,
 * instead of a pass of that op's backward over dinp. copy16: in bf16
 * precision, dinp as written is also rounded to bf16 at the start of the
 * operand scratch (k->cast), for that op's linear_backward (dout_kept),
 * which would otherwise read dinp again to round it (cast_keep) */
template <int D>
static inline void layernorm_backward(const kctx *k, float *dinp, float *dw, float *db, const float *dout,
                                      const float *inp, const float *w, const float *mean, const float *rstd, int N,
                                      int acc, float *dsum = nullptr, bool copy16 = false)
{
    static_assert(ln_bwd_smem<D>() <= 227 * 1024, "layer norm width too large for the backward kernel");
    const int NS = dsum && ln_sum_ok<D>() ? 3 : 2;
    const int nb = ln_blocks(N);
    red_need(k, (int64_t)nb * NS * D);
    __nv_bfloat16 *dinp16 = copy16 ? k->cast : nullptr;
    if (dinp16)
        cast_need(k, (int64_t)N * D);
    layernorm_bwd_kernel<D><<<nb, 256, ln_bwd_smem<D>(NS), k->stream>>>(dinp, k->red, dout, inp, w, mean, rstd, N,
                                                                         acc, NS, dinp16);
    LAUNCH_CHECK();
    layernorm_bwd_final_kernel<<<(unsigned)((NS * D + 31) / 32), 32 * LN_FINAL_LANES, 0, k->stream>>>(
        dw, db, dsum, k->red, D, nb, NS);
    LAUNCH_CHECK();
    if (dsum && NS == 2)
        colsum_add(k, dsum, static_cast<const float *>(dinp), N, D);
}

/* ---- attention: one block per (sample, head), everything in shared memory ------------------------ */

/* Rows of q, k, v, g in shared memory are HD + 4 floats apart: 16-byte
 * aligned for float4 loads along the head width, and rows of consecutive
 * threads fall in different banks. */
template <int HD> __host__ __device__ constexpr int attn_ld()
{
    return HD + 4;
}

template <int T, int HD> constexpr int attn_fwd_smem()
{
    return (int)sizeof(float) * (3 * T * attn_ld<HD>() + T * T);
}

template <int T, int HD> constexpr int attn_bwd_smem()
{
    return (int)sizeof(float) * (4 * T * attn_ld<HD>() + 2 * T * T);
}

/* x . y over HD floats, both 16-byte aligned */
template <int HD> __device__ static inline float dot_hd(const float *x, const float *y)
{
    float acc = 0.0f;
#pragma unroll
    for (int c = 0; c < HD; c += 4) {
        const float4 a = *reinterpret_cast<const float4 *>(x + c), b = *reinterpret_cast<const float4 *>(y + c);
        acc += a.x * b.x;
        acc += a.y * b.y;
        acc += a.z * b.z;
        acc += a.w * b.w;
    }
    return acc;
}

/* out[r][c..c+3] = sum over i < T of w(r, i) * m[i][c..c+3] (m: rows L
 * apart), for every r < T and c a multiple of 4: one thread per (r, c/4) */
template <int T, int HD, typename W>
__device__ static inline void attn_rows_times(W w, const float *m, float *out, int64_t ldo)
{
    constexpr int L = attn_ld<HD>(), C4 = HD / 4;
    for (int i = threadIdx.x; i < T * C4; i += blockDim.x) {
        const int r = i / C4, c = (i % C4) * 4;
        float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (int j = 0; j < T; j++) {
            const float x = w(r, j);
            const float4 v = *reinterpret_cast<const float4 *>(m + j * L + c);
            acc.x += x * v.x;
            acc.y += x * v.y;
            acc.z += x * v.z;
            acc.w += x * v.w;
        }
        float *o = out + (int64_t)r * ldo + c;
        o[0] = acc.x;
        o[1] = acc.y;
        o[2] = acc.z;
        o[3] = acc.w;
    }
}

#define ATTN_THREADS 256 /* every attention kernel's block */

/* dst(i, src(i)) for every i < N, the block's threads sharing the i: each
 * thread issues up to 16 loads before it stores any, so that the block
 * waits one memory latency per 16 elements a thread, where a loop of
 * load-store pairs waited for each (Nsight Compute: the attention kernels
 * were bound by it, on tensor cores as without). */
template <int N, typename Src, typename Dst> __device__ static inline void attn_stage(Src src, Dst dst)
{
    constexpr int PER = (N + ATTN_THREADS - 1) / ATTN_THREADS, per_batch = PER < 16 ? PER : 16;
    for (int j0 = 0; j0 < PER; j0 += per_batch) {
        float r[per_batch];
#pragma unroll
        for (int j = 0; j < per_batch; j++) {
            const int i = (int)threadIdx.x + (j0 + j) * ATTN_THREADS;
            r[j] = i < N ? src(i) : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < per_batch; j++) {
            const int i = (int)threadIdx.x + (j0 + j) * ATTN_THREADS;
            if (i < N)
                dst(i, r[j]);
        }
    }
}

/* rows t < ROWS of dst (attn_ld apart, HD wide) from src's rows (ld
 * apart); rows from T on zero */
template <int T, int HD, int ROWS> __device__ static inline void attn_load(float *dst, const float *src, int64_t ld)
{
    constexpr int L = attn_ld<HD>();
    attn_stage<ROWS * HD>([&](int i) { return i / HD < T ? src[(int64_t)(i / HD) * ld + i % HD] : 0.0f; },
                          [&](int i, float x) { dst[i / HD * L + i % HD] = x; });
}

/* dst[ROWS, ROWS] (rows LD apart) from the weights src[T, T]; zero past T */
template <int T, int ROWS, int LD> __device__ static inline void attn_load_weights(float *dst, const float *src)
{
    attn_stage<ROWS * ROWS>([&](int i) { return i / ROWS < T && i % ROWS < T ? src[i / ROWS * T + i % ROWS] : 0.0f; },
                            [&](int i, float x) { dst[i / ROWS * LD + i % ROWS] = x; });
}

/* The fp32 backward's inputs of sample b, head h (bh = b * NH + h) in
 * shared memory: q, k, v from qkv, g from dout (T rows attn_ld apart) and
 * the weights a (T x T) */
template <int T, int HD, int NH>
__device__ static inline void attn_bwd_load(float *q, float *kk, float *v, float *g, float *a, const float *qkv,
                                            const float *dout, const float *att, int bh)
{
    constexpr int D = NH * HD, D3 = 3 * D;
    const int b = bh / NH, h = bh % NH;
    const float *base = qkv + (int64_t)b * T * D3 + h * HD;
    attn_load<T, HD, T>(q, base, D3);
    attn_load<T, HD, T>(kk, base + D, D3);
    attn_load<T, HD, T>(v, base + 2 * D, D3);
    attn_load<T, HD, T>(g, dout + (int64_t)b * T * D + h * HD, D);
    attn_load_weights<T, T, T>(a, att + (int64_t)bh * T * T);
}

/* One row of the weights, by one warp: r[u] = the softmax of r over u < T,
 * copied to a[u]; r[u] = 0 for T <= u < W (the tensor-core kernels'
 * padding) */
template <int T, int W> __device__ static inline void attn_softmax_row(float *r, float *a, int lane)
{
    float mx = -INFINITY;
    for (int u = lane; u < T; u += 32)
        mx = fmaxf(mx, r[u]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int u = lane; u < T; u += 32) {
        const float e = expf(r[u] - mx);
        r[u] = e;
        sum += e;
    }
    const float inv = 1.0f / warp_sum(sum);
    for (int u = lane; u < W; u += 32) {
        if (u < T) {
            r[u] *= inv;
            a[u] = r[u];
        } else {
            r[u] = 0.0f;
        }
    }
}

/* One row back through the softmax and the scale, by one warp: ds[u] =
 * p[u] (ds[u] - p . ds) scale for u < T (ds: the weights' gradient) */
template <int T> __device__ static inline void attn_softmax_bwd_row(float *ds, const float *p, float scale, int lane)
{
    float sdot = 0.0f;
    for (int u = lane; u < T; u += 32)
        sdot += p[u] * ds[u];
    sdot = warp_sum(sdot);
    for (int u = lane; u < T; u += 32)
        ds[u] = p[u] * (ds[u] - sdot) * scale;
}

/* qkv[B, T, 3D] -> att[B, NH, T, T] (softmax weights, saved), out[B, T, D] */
template <int T, int HD, int NH> static __global__ void attention_fwd_kernel(float *out, float *att, const float *qkv)
{
    static_assert(HD % 4 == 0, "attention: the head width must be a multiple of 4");
    constexpr int D = NH * HD, D3 = 3 * D, L = attn_ld<HD>();
    extern __shared__ float4 sm4[];
    float *q = reinterpret_cast<float *>(sm4), *kk = q + T * L, *v = kk + T * L, *s = v + T * L;
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    const float *base = qkv + (int64_t)b * T * D3 + h * HD;
    attn_load<T, HD, T>(q, base, D3);
    attn_load<T, HD, T>(kk, base + D, D3);
    attn_load<T, HD, T>(v, base + 2 * D, D3);
    __syncthreads();
    const float scale = 1.0f / sqrtf((float)HD);
    for (int i = threadIdx.x; i < T * T; i += blockDim.x) {
        const int t = i / T, u = i % T;
        s[i] = dot_hd<HD>(q + t * L, kk + u * L) * scale;
    }
    __syncthreads();
    const int warps = blockDim.x / 32, wid = threadIdx.x / 32, lane = threadIdx.x % 32;
    float *a = att + (int64_t)bh * T * T;
    for (int t = wid; t < T; t += warps)
        attn_softmax_row<T, T>(s + t * T, a + t * T, lane);
    __syncthreads();
    /* out = att v */
    attn_rows_times<T, HD>([&](int t, int u) { return s[t * T + u]; }, v, out + (int64_t)b * T * D + h * HD, D);
}

/* dqkv[B, T, 3D] (written whole) from dout[B, T, D] */
template <int T, int HD, int NH>
static __global__ void attention_bwd_kernel(float *dqkv, const float *dout, const float *qkv, const float *att)
{
    constexpr int D = NH * HD, D3 = 3 * D, L = attn_ld<HD>();
    extern __shared__ float4 sm4[];
    float *q = reinterpret_cast<float *>(sm4), *kk = q + T * L, *v = kk + T * L, *g = v + T * L, *a = g + T * L,
          *ds = a + T * T;
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    attn_bwd_load<T, HD, NH>(q, kk, v, g, a, qkv, dout, att, bh);
    __syncthreads();
    float *dq = dqkv + (int64_t)b * T * D3 + h * HD, *dk = dq + D, *dv = dq + 2 * D;
    /* dv = att^T g ; datt = g v^T */
    attn_rows_times<T, HD>([&](int u, int t) { return a[t * T + u]; }, g, dv, D3);
    for (int i = threadIdx.x; i < T * T; i += blockDim.x) {
        const int t = i / T, u = i % T;
        ds[i] = dot_hd<HD>(g + t * L, v + u * L);
    }
    __syncthreads();
    /* through the softmax and the scale */
    const float scale = 1.0f / sqrtf((float)HD);
    const int warps = blockDim.x / 32, wid = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int t = wid; t < T; t += warps)
        attn_softmax_bwd_row<T>(ds + t * T, a + t * T, scale, lane);
    __syncthreads();
    /* dq = ds k ; dk = ds^T q */
    attn_rows_times<T, HD>([&](int t, int u) { return ds[t * T + u]; }, kk, dq, D3);
    attn_rows_times<T, HD>([&](int u, int t) { return ds[t * T + u]; }, q, dk, D3);
}

/* ---- attention on tensor cores (the reduced-precision mode) -----------------------------------------
 * The same sums as above with the four products of the forward and the
 * backward on tensor cores: WMMA tiles of 16 x 16 x 8 with TF32 operands
 * (the precision cuBLAS uses for the other products in this mode) and
 * fp32 accumulation; the softmax and its backward stay in fp32. The
 * sequence is padded with zero rows to TP, a multiple of 16; the padded
 * columns of the weights are zero, so they add nothing. fp32 mode keeps
 * the kernels above.
 * Shared memory bounds how many blocks share an SM, and with them how
 * much of a block's wait on its loads the others hide; so each kernel
 * loads an operand only when its phase comes, into the room of one that
 * is done with: the forward holds two of q, k, v at a time plus the
 * scores (3 blocks an SM for heads of 64 and 65 tokens, where all three
 * allowed 2), the backward two of q, k, v, g plus the weights and their
 * gradient (2 blocks an SM, where all four allowed 1). */

template <int T> __host__ __device__ constexpr int attn_tp()
{
    return (T + 15) / 16 * 16;
}

/* rows of the T x T weights and their gradients in shared memory */
template <int T> __host__ __device__ constexpr int attn_lds()
{
    return attn_tp<T>() + 4;
}

template <int T, int HD> constexpr int attn_tc_fwd_smem()
{
    return (int)sizeof(float) * (2 * attn_tp<T>() * attn_ld<HD>() + attn_tp<T>() * attn_lds<T>());
}

/* the backward's room for the weights, which q takes over: the larger of
 * the two (q's rows are the wider when the sequence is shorter than the
 * head, as DAMEX's 16 tokens with heads of 32) */
template <int T, int HD> __host__ __device__ constexpr int attn_tc_aq_room()
{
    return attn_tp<T>() * (attn_lds<T>() > attn_ld<HD>() ? attn_lds<T>() : attn_ld<HD>());
}

template <int T, int HD> constexpr int attn_tc_bwd_smem()
{
    return (int)sizeof(float) *
           (2 * attn_tp<T>() * attn_ld<HD>() + attn_tc_aq_room<T, HD>() + attn_tp<T>() * attn_lds<T>());
}

/* whether the shape runs on tensor cores: output tiles 16 wide along the
 * head, and the backward's operands in one block's shared memory */
template <int T, int HD> constexpr bool attn_tc_ok()
{
    return HD % 16 == 0 && attn_tc_bwd_smem<T, HD>() <= 227 * 1024;
}

namespace wmma = nvcuda::wmma;
typedef wmma::fragment<wmma::accumulator, 16, 16, 8, float> tc_acc;
template <typename Layout> using tc_a = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, Layout>;
template <typename Layout> using tc_b = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, Layout>;

template <typename F> __device__ static inline void tc_round(F &f)
{
#pragma unroll
    for (int i = 0; i < f.num_elements; i++)
        f.x[i] = wmma::__float_to_tf32(f.x[i]);
}

/* acc += A[16, K] B[K, 16], K a multiple of 8, in steps of 8 along K: A
 * in layout LA with leading dimension lda, its next 8 columns a_step
 * floats on (1 when row-major, lda when column-major); B likewise in LB */
template <int K, typename LA, typename LB>
__device__ static inline void tc_mma(tc_acc &acc, const float *a, int lda, int64_t a_step, const float *b, int ldb,
                                     int64_t b_step)
{
#pragma unroll
    for (int k = 0; k < K; k += 8) {
        tc_a<LA> fa;
        tc_b<LB> fb;
        wmma::load_matrix_sync(fa, a + k * a_step, (unsigned)lda);
        wmma::load_matrix_sync(fb, b + k * b_step, (unsigned)ldb);
        tc_round(fa);
        tc_round(fb);
        wmma::mma_sync(acc, fa, fb, acc);
    }
}

/* rows t < T of src (attn_ld apart) into dst (ld apart; O: float, or bf16
 * rounded to nearest even), two columns a thread (HD is a multiple of 16
 * here, ld even: 8- or 4-byte stores) */
__device__ static inline void put2(float *p, float x, float y)
{
    *reinterpret_cast<float2 *>(p) = make_float2(x, y);
}

__device__ static inline void put2(__nv_bfloat16 *p, float x, float y)
{
    *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(x, y);
}

template <int T, int HD, typename O> __device__ static inline void attn_store(O *dst, int64_t ld, const float *src)
{
    constexpr int L = attn_ld<HD>(), H2 = HD / 2;
    for (int i = threadIdx.x; i < T * H2; i += blockDim.x) {
        const int t = i / H2, c = 2 * (i % H2);
        put2(dst + (int64_t)t * ld + c, src[t * L + c], src[t * L + c + 1]);
    }
}

/* out[TP, HD] (attn_ld apart) = A[TP, TP] B[TP, HD]: A in layout LA with
 * rows (row-major) or columns (column-major) attn_lds apart, so that a
 * column-major A is the transpose of the row-major weights there; B
 * row-major attn_ld apart; warps share the 16 x 16 tiles */
template <int T, int HD, typename LA>
__device__ static inline void attn_tc_times(float *out, const float *a, const float *b)
{
    constexpr int L = attn_ld<HD>(), LS = attn_lds<T>(), TP = attn_tp<T>(), NT = TP / 16, NC = HD / 16;
    constexpr bool row = std::is_same<LA, wmma::row_major>::value;
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int tile = warp; tile < NT * NC; tile += warps) {
        const int i = tile / NC, c = tile % NC;
        tc_acc acc;
        wmma::fill_fragment(acc, 0.0f);
        tc_mma<TP, LA, wmma::row_major>(acc, row ? a + i * 16 * LS : a + i * 16, LS, row ? 1 : LS, b + c * 16, L, L);
        wmma::store_matrix_sync(out + i * 16 * L + c * 16, acc, L, wmma::mem_row_major);
    }
}

/* s[TP, TP] (attn_lds apart) = scale * x y^T, x and y [TP, HD] attn_ld apart */
template <int T, int HD> __device__ static inline void attn_tc_scores(float *s, const float *x, const float *y, float scale)
{
    constexpr int L = attn_ld<HD>(), LS = attn_lds<T>(), NT = attn_tp<T>() / 16;
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int tile = warp; tile < NT * NT; tile += warps) {
        const int i = tile / NT, j = tile % NT;
        tc_acc acc;
        wmma::fill_fragment(acc, 0.0f);
        tc_mma<HD, wmma::row_major, wmma::col_major>(acc, x + i * 16 * L, L, 1, y + j * 16 * L, L, 1);
#pragma unroll
        for (int e = 0; e < acc.num_elements; e++)
            acc.x[e] *= scale;
        wmma::store_matrix_sync(s + i * 16 * LS + j * 16, acc, LS, wmma::mem_row_major);
    }
}

template <int T, int HD, int NH, typename O>
static __global__ void __launch_bounds__(ATTN_THREADS) attention_fwd_tc_kernel(O *out, float *att, const float *qkv)
{
    constexpr int D = NH * HD, D3 = 3 * D, L = attn_ld<HD>(), TP = attn_tp<T>(), LS = attn_lds<T>();
    extern __shared__ __align__(128) float smtc[];
    /* v comes into q's room once the scores are made; the output is
     * staged in k's */
    float *q = smtc, *kk = q + TP * L, *s = kk + TP * L, *v = q, *o = kk;
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    const float *base = qkv + (int64_t)b * T * D3 + h * HD;
    attn_load<T, HD, TP>(q, base, D3);
    attn_load<T, HD, TP>(kk, base + D, D3);
    __syncthreads();
    attn_tc_scores<T, HD>(s, q, kk, 1.0f / sqrtf((float)HD));
    __syncthreads();
    attn_load<T, HD, TP>(v, base + 2 * D, D3);
    /* the softmax over u < T of each row t < T; the padding zero */
    const int warps = blockDim.x / 32, wid = threadIdx.x / 32, lane = threadIdx.x % 32;
    float *a = att + (int64_t)bh * T * T;
    for (int t = wid; t < TP; t += warps) {
        float *r = s + t * LS;
        if (t < T) {
            attn_softmax_row<T, TP>(r, a + t * T, lane);
        } else {
            for (int u = lane; u < TP; u += 32)
                r[u] = 0.0f;
        }
    }
    __syncthreads();
    /* out = att v */
    attn_tc_times<T, HD, wmma::row_major>(o, s, v);
    __syncthreads();
    attn_store<T, HD>(out + (int64_t)b * T * D + h * HD, D, o);
}

template <int T, int HD, int NH, typename O>
static __global__ void __launch_bounds__(ATTN_THREADS)
    attention_bwd_tc_kernel(O *dqkv, const float *dout, const float *qkv, const float *att)
{
    constexpr int D = NH * HD, D3 = 3 * D, L = attn_ld<HD>(), TP = attn_tp<T>(), LS = attn_lds<T>();
    extern __shared__ __align__(128) float smtc[];
    /* first v, g and the weights a; once dv is out and the softmax's
     * backward is done, k comes into v's room and q into a's */
    float *v = smtc, *g = v + TP * L, *a = g + TP * L, *ds = a + attn_tc_aq_room<T, HD>(), *kk = v, *q = a;
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    const float *base = qkv + (int64_t)b * T * D3 + h * HD;
    attn_load<T, HD, TP>(v, base + 2 * D, D3);
    attn_load<T, HD, TP>(g, dout + (int64_t)b * T * D + h * HD, D);
    attn_load_weights<T, TP, LS>(a, att + (int64_t)bh * T * T);
    __syncthreads();
    O *dq = dqkv + (int64_t)b * T * D3 + h * HD, *dk = dq + D, *dv = dq + 2 * D;
    /* datt = g v^T (into ds) */
    attn_tc_scores<T, HD>(ds, g, v, 1.0f);
    __syncthreads();
    /* dv = att^T g, staged in v's rows */
    attn_tc_times<T, HD, wmma::col_major>(v, a, g);
    __syncthreads();
    attn_store<T, HD>(dv, D3, v);
    /* through the softmax and the scale */
    const float scale = 1.0f / sqrtf((float)HD);
    const int warps = blockDim.x / 32, wid = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int t = wid; t < T; t += warps)
        attn_softmax_bwd_row<T>(ds + t * LS, a + t * LS, scale, lane);
    /* the padding of ds: rows from T on and the columns past T are zero
     * already (a is zero there, and so g's and v's padded rows make datt) */
    __syncthreads();
    attn_load<T, HD, TP>(kk, base + D, D3);
    attn_load<T, HD, TP>(q, base, D3);
    __syncthreads();
    /* dq = ds k (staged in g's rows), then dk = ds^T q (in k's, which dq
     * is done with) while dq goes out */
    attn_tc_times<T, HD, wmma::row_major>(g, ds, kk);
    __syncthreads();
    attn_tc_times<T, HD, wmma::col_major>(kk, ds, q);
    attn_store<T, HD>(dq, D3, g);
    __syncthreads();
    attn_store<T, HD>(dk, D3, kk);
}

/* ---- attention on bf16 fragments (bf16 precision) -----------------------------------------------------
 * In bf16 precision a whole (sample, head) of at most 128 tokens takes one
 * block of TP / 16 warps (TP: the sequence padded to a multiple of 16,
 * attn_tp),
 * each warp 16 rows of queries. The products are mma.sync m16n8k16 on bf16
 * operands with fp32 accumulation, and the scores, the softmax and the
 * weights stay in the warp's registers: a product's accumulator tile is,
 * two by two, the next product's operand tile, so the forward shares
 * nothing between warps but q, k and v, and the backward only the two
 * products that sum over queries (dk = ds^T q, dv = att^T dout), through
 * the transposed weights and their gradient. The TF32 kernels above staged
 * every product through shared memory and rounded each fragment as it
 * loaded it; Nsight Compute found their forward bound by issue (66% of its
 * slots on config P).
 * q, k, v and dout are rounded to bf16 as they are staged (as a product's
 * operands are in this precision), the weights before they multiply v and
 * their gradient before it multiplies k and q; the softmax and every sum
 * are fp32. The weights kept for the backward are fp32, as the other
 * kernels keep them. */

/* bf16 elements a row of the staged [TP, HD] operands (q, k, v, dout) and
 * of the backward's [TP, TP] weights and their gradient: 8 more than the
 * row, so that the 8 rows a fragment load touches fall in different banks
 * (and rows stay 16-byte aligned for ldmatrix) */
template <int HD> __host__ __device__ constexpr int attn_frag_lq()
{
    return HD + 8;
}

template <int T> __host__ __device__ constexpr int attn_frag_lt()
{
    return attn_tp<T>() + 8;
}

/* shared memory: the forward's q, k and v; the backward's q, k, v, dout,
 * the weights and their gradient. All row-major: the products that take
 * an operand by its columns load it transposed (ldmatrix .trans) */
template <int T, int HD> constexpr int attn_frag_fwd_smem()
{
    return 2 * 3 * attn_tp<T>() * attn_frag_lq<HD>();
}

template <int T, int HD> constexpr int attn_frag_bwd_smem()
{
    return 2 * (4 * attn_tp<T>() * attn_frag_lq<HD>() + 2 * attn_tp<T>() * attn_frag_lt<T>());
}

/* whether the shape takes these kernels: heads a multiple of 16 (the
 * products' k steps), at most 8 warps of query rows, the backward's
 * operands in one block's shared memory */
template <int T, int HD> constexpr bool attn_frag_ok()
{
    return HD % 16 == 0 && T <= 128 && attn_frag_bwd_smem<T, HD>() <= 227 * 1024;
}

/* d += a b on one m16n8k16 tile: a row-major 16 x 16, b 16 x 8 given by
 * columns, bf16 pairs in 32-bit words, fp32 accumulation (the PTX ISA's
 * fragment layouts: lane = 4 g + t holds rows g and g + 8, columns 2t and
 * 2t + 1, of a and of d, and rows 2t, 2t + 1 of column g of b, and the same
 * 8 columns or rows on) */
__device__ static inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* two bf16 at p (4-byte aligned) as one word */
__device__ static inline uint32_t lds_bf16x2(const __nv_bfloat16 *p)
{
    return *reinterpret_cast<const uint32_t *>(p);
}

/* the a tile at rows r0.., columns k0.. of row-major x (rows L apart) */
template <int L>
__device__ static inline void frag_a_rows(uint32_t (&a)[4], const __nv_bfloat16 *x, int r0, int k0, int g, int t)
{
    const __nv_bfloat16 *p = x + (r0 + g) * L + k0 + 2 * t;
    a[0] = lds_bf16x2(p);
    a[1] = lds_bf16x2(p + 8 * L);
    a[2] = lds_bf16x2(p + 8);
    a[3] = lds_bf16x2(p + 8 * L + 8);
}

/* d[n] += a y^T for the 8-column tiles n < N of y's rows 8n.. (rows L apart,
 * columns k0.. : b's columns are y's rows) */
template <int N, int L>
__device__ static inline void frag_times_rows(float (&d)[N][4], const uint32_t (&a)[4], const __nv_bfloat16 *y, int k0,
                                              int g, int t)
{
#pragma unroll
    for (int n = 0; n < N; n++) {
        const __nv_bfloat16 *p = y + (8 * n + g) * L + k0 + 2 * t;
        mma_bf16_16816(d[n], a, lds_bf16x2(p), lds_bf16x2(p + 8));
    }
}

/* four 8 x 8 bf16 matrices from shared memory, each transposed: lanes
 * 8i..8i+7 give the addresses of matrix i's rows (16-byte aligned), and
 * lane 4g + t gets r[i] = column g, rows 2t and 2t + 1 of matrix i */
__device__ static inline void ldmatrix_x4_trans(uint32_t (&r)[4], const __nv_bfloat16 *p)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

/* d[n] += a x for the 8-column tiles n < N (N even) of x's rows k0..k0 + 15
 * (x row-major, rows L apart: b's columns are x's columns), two tiles a
 * transposing load */
template <int N, int L>
__device__ static inline void frag_times_cols(float (&d)[N][4], const uint32_t (&a)[4], const __nv_bfloat16 *x, int k0,
                                              int lane)
{
    static_assert(N % 2 == 0, "frag_times_cols: tiles two by two");
    const int mi = lane / 8, r = lane % 8;
#pragma unroll
    for (int n = 0; n < N; n += 2) {
        uint32_t b[4]; /* tile n's rows 0-7, 8-15, then tile n + 1's */
        ldmatrix_x4_trans(b, x + (k0 + (mi & 1) * 8 + r) * L + 8 * n + (mi >> 1) * 8);
        mma_bf16_16816(d[n], a, b[0], b[1]);
        mma_bf16_16816(d[n + 1], a, b[2], b[3]);
    }
}

/* the a tile at rows m0.., columns k0.. of x^T, x row-major (rows L
 * apart): x's rows k0.. and columns m0.., by a transposing load */
template <int L> __device__ static inline void frag_a_cols(uint32_t (&a)[4], const __nv_bfloat16 *x, int m0, int k0, int lane)
{
    const int mi = lane / 8, r = lane % 8;
    ldmatrix_x4_trans(a, x + (k0 + (mi >> 1) * 8 + r) * L + m0 + (mi & 1) * 8);
}

/* the a tile of columns 16 kk.. of a warp's 16 x 8 NT accumulator tiles s,
 * rounded to bf16: tiles 2 kk and 2 kk + 1 are its two halves */
template <int NT>
__device__ static inline void frag_a_acc(uint32_t (&a)[4], const float (&s)[NT][4], int kk)
{
    a[0] = bf16x2_bits(s[2 * kk][0], s[2 * kk][1]);
    a[1] = bf16x2_bits(s[2 * kk][2], s[2 * kk][3]);
    a[2] = bf16x2_bits(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[3] = bf16x2_bits(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

/* Staging an operand: rows t < T of src (fp32, or bf16: attn_qkv16; rows
 * ld apart, HD wide) rounded to bf16 into dst [TP, L], rows from T on
 * zero, by a block of 2 TP threads (the fragment kernels'), 4 values a
 * chunk: a thread's j-th chunk is chunk threadIdx.x + 2 TP j. The loads
 * and the stores are apart (attn_frag_load, attn_frag_put) so that a
 * thread has all its loads of two operands in flight before it waits for
 * them. */
template <int T, int HD> __host__ __device__ constexpr int attn_frag_chunks()
{
    return (attn_tp<T>() * (HD / 4) + 2 * attn_tp<T>() - 1) / (2 * attn_tp<T>());
}

template <int T, int HD, typename S>
__device__ static inline void attn_frag_load(float (&x)[attn_frag_chunks<T, HD>()][4], const S *src, int64_t ld)
{
    constexpr int TP = attn_tp<T>(), C4 = HD / 4;
#pragma unroll
    for (int j = 0; j < attn_frag_chunks<T, HD>(); j++) {
        const int i = (int)threadIdx.x + 2 * TP * j, r = i / C4, c = 4 * (i % C4);
        x[j][0] = x[j][1] = x[j][2] = x[j][3] = 0.0f;
        if (i < TP * C4 && r < T)
            vload<4>(x[j], src + (int64_t)r * ld + c);
    }
}

template <int T, int HD>
__device__ static inline void attn_frag_put(__nv_bfloat16 *dst, const float (&x)[attn_frag_chunks<T, HD>()][4])
{
    constexpr int TP = attn_tp<T>(), L = attn_frag_lq<HD>(), C4 = HD / 4;
#pragma unroll
    for (int j = 0; j < attn_frag_chunks<T, HD>(); j++) {
        const int i = (int)threadIdx.x + 2 * TP * j, r = i / C4, c = 4 * (i % C4);
        if (i < TP * C4)
            *reinterpret_cast<uint2 *>(dst + r * L + c) =
                make_uint2(bf16x2_bits(x[j][0], x[j][1]), bf16x2_bits(x[j][2], x[j][3]));
    }
}

/* one operand staged */
template <int T, int HD, typename S> __device__ static inline void attn_frag_stage(__nv_bfloat16 *dst, const S *src, int64_t ld)
{
    float x[attn_frag_chunks<T, HD>()][4];
    attn_frag_load<T, HD>(x, src, ld);
    attn_frag_put<T, HD>(dst, x);
}

/* two operands staged, their loads together */
template <int T, int HD, typename S1, typename S2>
__device__ static inline void attn_frag_stage2(__nv_bfloat16 *d1, const S1 *s1, int64_t ld1, __nv_bfloat16 *d2,
                                               const S2 *s2, int64_t ld2)
{
    float x1[attn_frag_chunks<T, HD>()][4], x2[attn_frag_chunks<T, HD>()][4];
    attn_frag_load<T, HD>(x1, s1, ld1);
    attn_frag_load<T, HD>(x2, s2, ld2);
    attn_frag_put<T, HD>(d1, x1);
    attn_frag_put<T, HD>(d2, x2);
}

/* lane (g, t)'s column of element e of an accumulator tile's, and its row
 * offset from the tile's first */
__device__ static inline int frag_col(int t, int e)
{
    return 2 * t + (e & 1);
}

__device__ static inline int frag_row(int g, int e)
{
    return g + (e & 2 ? 8 : 0);
}

/* out's rows r0.. (< T) of a warp's accumulator tiles o, HD wide, at dst
 * (rows ld apart; O: float, or bf16 rounded to nearest even) */
template <int T, int HD, typename O>
__device__ static inline void attn_frag_store(O *dst, int64_t ld, const float (&o)[HD / 8][4], int r0, int g, int t)
{
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int r = r0 + g + 8 * half;
        if (r >= T)
            continue;
#pragma unroll
        for (int n = 0; n < HD / 8; n++)
            put2(dst + (int64_t)r * ld + 8 * n + 2 * t, o[n][2 * half], o[n][2 * half + 1]);
    }
}

/* The column sums of a warp's accumulator tiles o over its rows r0..
 * below T (rows past T may hold anything): every lane gets the sums of
 * its columns 8 n + 2 t and 8 n + 2 t + 1, added in the same order
 * every run */
template <int T, int NO>
__device__ static inline void frag_col_sums(float (&cs)[NO][2], const float (&o)[NO][4], int r0, int g)
{
    const bool lo = r0 + g < T, hi = r0 + g + 8 < T;
#pragma unroll
    for (int n = 0; n < NO; n++) {
#pragma unroll
        for (int c = 0; c < 2; c++) {
            float v = (lo ? o[n][c] : 0.0f) + (hi ? o[n][2 + c] : 0.0f);
            v += __shfl_xor_sync(0xffffffffu, v, 4);
            v += __shfl_xor_sync(0xffffffffu, v, 8);
            v += __shfl_xor_sync(0xffffffffu, v, 16);
            cs[n][c] = v;
        }
    }
}

/* a warp's column sums (frag_col_sums) into row w of sums[., HD], by the
 * lanes of g 0 */
template <int NO>
__device__ static inline void frag_col_sums_put(float *sums, const float (&cs)[NO][2], int w, int g, int t)
{
    if (g != 0)
        return;
#pragma unroll
    for (int n = 0; n < NO; n++) {
        sums[w * 8 * NO + 8 * n + 2 * t] = cs[n][0];
        sums[w * 8 * NO + 8 * n + 2 * t + 1] = cs[n][1];
    }
}

/* A warp's 16 rows (from r0) of the weights, in the accumulator's layout:
 * the scores q k^T of the staged q and k ([TP, L] each), scaled, masked
 * past T columns, and through the softmax. The forward and, where the
 * weights are not kept (frag16), the backward compute them with this
 * same code on the same staged values: the same bits. Rows from T on hold
 * a softmax of zero scores (the staged rows there are zero), which
 * nothing reads. */
template <int T, int HD>
__device__ static inline void attn_frag_probs(float (&s)[attn_tp<T>() / 8][4], const __nv_bfloat16 *q,
                                              const __nv_bfloat16 *kk, int r0, int g, int t)
{
    constexpr int TP = attn_tp<T>(), L = attn_frag_lq<HD>(), NT = TP / 8;
    /* scores s = q k^T, this warp's 16 rows by TP columns */
#pragma unroll
    for (int j = 0; j < NT; j++)
        s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int k0 = 0; k0 < HD; k0 += 16) {
        uint32_t a[4];
        frag_a_rows<L>(a, q, r0, k0, g, t);
        frag_times_rows<NT, L>(s, a, kk, k0, g, t);
    }
    /* the softmax over the columns u < T of rows g and g + 8 (elements 0, 1
     * and 2, 3), which the 4 lanes of a quad share */
    const float scale = 1.0f / sqrtf((float)HD);
    float mx[2] = { -INFINITY, -INFINITY }, sum[2] = { 0.0f, 0.0f };
#pragma unroll
    for (int j = 0; j < NT; j++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            s[j][e] = 8 * j + frag_col(t, e) < T ? s[j][e] * scale : -INFINITY;
            mx[e / 2] = fmaxf(mx[e / 2], s[j][e]);
        }
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
    }
#pragma unroll
    for (int j = 0; j < NT; j++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            s[j][e] = expf(s[j][e] - mx[e / 2]);
            sum[e / 2] += s[j][e];
        }
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 1);
        sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 2);
        sum[i] = 1.0f / sum[i];
    }
#pragma unroll
    for (int j = 0; j < NT; j++) {
#pragma unroll
        for (int e = 0; e < 4; e++)
            s[j][e] *= sum[e / 2];
    }
}

template <int T, int HD, int NH, typename O, typename Q>
static __global__ void __launch_bounds__(2 * attn_tp<T>())
    attention_fwd_frag_kernel(O *out, float *att, const Q *qkv)
{
    constexpr int D = NH * HD, D3 = 3 * D, TP = attn_tp<T>(), L = attn_frag_lq<HD>(), NT = TP / 8, NO = HD / 8;
    extern __shared__ __align__(16) __nv_bfloat16 smfr[];
    __nv_bfloat16 *q = smfr, *kk = q + TP * L, *v = kk + TP * L;
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    const Q *base = qkv + (int64_t)b * T * D3 + h * HD;
    /* q and k's loads together where they take at most 32 registers: with
     * more (S's heads of 64: 61 -> 91 registers) the registers, not the
     * shared memory, would cap the blocks an SM */
    if constexpr (attn_frag_chunks<T, HD>() <= 4) {
        attn_frag_stage2<T, HD>(q, base, D3, kk, base + D, D3);
    } else {
        attn_frag_stage<T, HD>(q, base, D3);
        attn_frag_stage<T, HD>(kk, base + D, D3);
    }
    attn_frag_stage<T, HD>(v, base + 2 * D, D3);
    __syncthreads();
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, r0 = 16 * (threadIdx.x / 32);
    float s[NT][4];
    attn_frag_probs<T, HD>(s, q, kk, r0, g, t);
    if (att) { /* NULL: the backward recomputes them (frag16) */
        float *a_out = att + (int64_t)bh * T * T;
#pragma unroll
        for (int j = 0; j < NT; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = r0 + frag_row(g, e), u = 8 * j + frag_col(t, e);
                if (r < T && u < T)
                    a_out[r * T + u] = s[j][e];
            }
        }
    }
    /* out = att v: the weights' tiles two by two as the a tiles, v's
     * columns as b's */
    float o[NO][4] = {};
#pragma unroll
    for (int k = 0; k < TP / 16; k++) {
        uint32_t a[4];
        frag_a_acc<NT>(a, s, k);
        frag_times_cols<NO, L>(o, a, v, 16 * k, lane);
    }
    attn_frag_store<T, HD>(out + (int64_t)b * T * D + h * HD, D, o, r0, g, t);
}

template <int T, int HD, int NH, typename O, typename Q, typename GO = float>
static __global__ void __launch_bounds__(2 * attn_tp<T>())
    attention_bwd_frag_kernel(O *dqkv, const GO *dout, const Q *qkv, const float *att, float *part)
{
    constexpr int D = NH * HD, D3 = 3 * D, TP = attn_tp<T>(), L = attn_frag_lq<HD>(), LT = attn_frag_lt<T>(),
                  NT = TP / 8, NO = HD / 8;
    extern __shared__ __align__(16) __nv_bfloat16 smfr[];
    __nv_bfloat16 *q = smfr, *kk = q + TP * L, *v = kk + TP * L, *go = v + TP * L, *dsm = go + TP * L,
                  *pm = dsm + TP * LT;
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    const Q *base = qkv + (int64_t)b * T * D3 + h * HD;
    attn_frag_stage2<T, HD>(q, base, D3, kk, base + D, D3);
    attn_frag_stage2<T, HD>(v, base + 2 * D, D3, go, dout + (int64_t)b * T * D + h * HD, D);
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, r0 = 16 * (threadIdx.x / 32);
    /* this warp's rows of the weights, in the accumulator's layout (zero
     * past T): loaded while the staging completes, or (att NULL: frag16)
     * computed again from the staged q and k, as the forward did */
    float p[NT][4];
    if (att) {
        const float *a_in = att + (int64_t)bh * T * T;
#pragma unroll
        for (int j = 0; j < NT; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = r0 + frag_row(g, e), u = 8 * j + frag_col(t, e);
                p[j][e] = r < T && u < T ? a_in[r * T + u] : 0.0f;
            }
        }
    }
    __syncthreads();
    if (!att) {
        attn_frag_probs<T, HD>(p, q, kk, r0, g, t);
#pragma unroll
        for (int j = 0; j < NT; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++)
                if (r0 + frag_row(g, e) >= T)
                    p[j][e] = 0.0f;
        }
    }
    /* the weights' gradient dp = dout v^T, then through the softmax and the
     * scale: ds = p (dp - p . dp) scale, row by row */
    float ds[NT][4] = {};
#pragma unroll
    for (int k0 = 0; k0 < HD; k0 += 16) {
        uint32_t a[4];
        frag_a_rows<L>(a, go, r0, k0, g, t);
        frag_times_rows<NT, L>(ds, a, v, k0, g, t);
    }
    float dot[2] = { 0.0f, 0.0f };
#pragma unroll
    for (int j = 0; j < NT; j++) {
#pragma unroll
        for (int e = 0; e < 4; e++)
            dot[e / 2] += p[j][e] * ds[j][e];
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        dot[i] += __shfl_xor_sync(0xffffffffu, dot[i], 1);
        dot[i] += __shfl_xor_sync(0xffffffffu, dot[i], 2);
    }
    const float scale = 1.0f / sqrtf((float)HD);
#pragma unroll
    for (int j = 0; j < NT; j++) {
#pragma unroll
        for (int e = 0; e < 4; e++)
            ds[j][e] = p[j][e] * (ds[j][e] - dot[e / 2]) * scale;
        /* into shared memory for dk and dv, which sum over queries */
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int at = (r0 + g + 8 * half) * LT + 8 * j + 2 * t;
            *reinterpret_cast<uint32_t *>(dsm + at) = bf16x2_bits(ds[j][2 * half], ds[j][2 * half + 1]);
            *reinterpret_cast<uint32_t *>(pm + at) = bf16x2_bits(p[j][2 * half], p[j][2 * half + 1]);
        }
    }
    /* dq = ds k (b: k's columns) */
    O *dq = dqkv + (int64_t)b * T * D3 + h * HD;
    float cs[NO][2]; /* part: the warp's column sums of dq, then dk, dv */
    {
        float acc[NO][4] = {};
#pragma unroll
        for (int k = 0; k < TP / 16; k++) {
            uint32_t a[4];
            frag_a_acc<NT>(a, ds, k);
            frag_times_cols<NO, L>(acc, a, kk, 16 * k, lane);
        }
        attn_frag_store<T, HD>(dq, D3, acc, r0, g, t);
        if (part)
            frag_col_sums<T>(cs, acc, r0, g);
    }
    __syncthreads();
    /* part: the warps' column sums of dq, dk and dv, [3][warps][HD], in
     * k's and v's rooms, which nothing reads from here on */
    constexpr int NW = TP / 16;
    float *sums = reinterpret_cast<float *>(kk);
    static_assert(3 * NW * HD * sizeof(float) <= 2 * TP * L * sizeof(__nv_bfloat16), "attention: bias sums' room");
    const int w = threadIdx.x / 32;
    if (part)
        frag_col_sums_put(sums, cs, w, g, t);
    /* this warp's 16 keys now: dk = ds^T q and dv = att^T dout, summed over
     * the queries (a: ds's and the weights' columns; b: q's and dout's) */
    float dk[NO][4] = {}, dv[NO][4] = {};
#pragma unroll
    for (int k = 0; k < TP / 16; k++) {
        uint32_t a[4];
        frag_a_cols<LT>(a, dsm, r0, 16 * k, lane);
        frag_times_cols<NO, L>(dk, a, q, 16 * k, lane);
        frag_a_cols<LT>(a, pm, r0, 16 * k, lane);
        frag_times_cols<NO, L>(dv, a, go, 16 * k, lane);
    }
    attn_frag_store<T, HD>(dq + D, D3, dk, r0, g, t);
    attn_frag_store<T, HD>(dq + 2 * D, D3, dv, r0, g, t);
    if (!part)
        return;
    /* the qkv bias's gradient: this (sample, head)'s sums of dq, dk and dv
     * over its tokens, the warps' added in warp order, into part[b, 3D]
     * (rows_sum adds the samples' up) */
    frag_col_sums<T>(cs, dk, r0, g);
    frag_col_sums_put(sums + NW * HD, cs, w, g, t);
    frag_col_sums<T>(cs, dv, r0, g);
    frag_col_sums_put(sums + 2 * NW * HD, cs, w, g, t);
    __syncthreads();
    for (int i = threadIdx.x; i < 3 * HD; i += blockDim.x) {
        const int sec = i / HD, col = i % HD;
        float sum = 0.0f;
        for (int y = 0; y < NW; y++)
            sum += sums[(sec * NW + y) * HD + col];
        part[(int64_t)b * D3 + sec * D + h * HD + col] = sum;
    }
}

/* ---- attention by tiles of rows (sequences too long for one block) -------------------------------------
 * When a (sample, head) does not fit in one block's shared memory (196-token
 * windows, ViT's 197 tokens at 224 x 224), a block takes R rows of one
 * (sample, head) and streams the other operand through shared memory ATTN_KT
 * rows at a time. The forward keeps the block's R rows of scores; the
 * backward is three kernels: dv = att^T g by tiles of keys, then by tiles of
 * queries the weights' gradient ds (written over att, which nothing reads
 * after) and dq = ds k, then dk = ds^T q by tiles of keys. The sums are the
 * fp32 kernels' own, in the same order; in the reduced-precision modes the
 * products run on tensor cores where the shape allows (below). */

#define ATTN_KT 32 /* rows of the streamed operand per tile */

/* rows a block takes: R rows of scores (R x T floats) stay in shared memory */
template <int T> __host__ __device__ constexpr int attn_rows()
{
    return T <= 256 ? 32 : T <= 1024 ? 16 : 8;
}

/* the rows of scores in shared memory: T floats apart, one more where T is
 * a multiple of 32 (the rows' same columns would share a bank) */
template <int T> __host__ __device__ constexpr int attn_srow()
{
    return T % 32 == 0 ? T + 1 : T;
}

/* the forward's and the row backward's shared memory (the larger of the
 * three kernels'): R rows, their R rows of scores, one tile of ATTN_KT rows */
template <int T, int HD> constexpr int attn_tiled_smem()
{
    return (int)sizeof(float) *
           (attn_rows<T>() * attn_ld<HD>() + attn_rows<T>() * attn_srow<T>() + ATTN_KT * attn_ld<HD>());
}

template <int HD> constexpr int attn_colprod_smem(int R)
{
    return (int)sizeof(float) * (ATTN_KT * attn_ld<HD>() + ATTN_KT * R);
}

/* rows t < ROWS of dst (attn_ld apart, HD wide) from src's rows (ld apart);
 * rows from n on zero */
template <int HD, int ROWS>
__device__ static inline void attn_load_rows(float *dst, const float *src, int64_t ld, int n)
{
    constexpr int L = attn_ld<HD>();
    attn_stage<ROWS * HD>([&](int i) { return i / HD < n ? src[(int64_t)(i / HD) * ld + i % HD] : 0.0f; },
                          [&](int i, float x) { dst[i / HD * L + i % HD] = x; });
}

/* acc(r, c..c+3) += sum over j < n of w(r, j) * m[j][c..c+3] (m: rows L
 * apart) for the block's R rows: item i of R * HD/4 is thread i % ATTN_THREADS's
 * slot i / ATTN_THREADS */
template <int R, int HD, typename W>
__device__ static inline void attn_tile_times(float4 *acc, W w, const float *m, int n)
{
    constexpr int L = attn_ld<HD>(), C4 = HD / 4, ITEMS = R * C4, PER = (ITEMS + ATTN_THREADS - 1) / ATTN_THREADS;
#pragma unroll
    for (int s = 0; s < PER; s++) {
        const int i = (int)threadIdx.x + s * ATTN_THREADS;
        if (ITEMS % ATTN_THREADS != 0 && i >= ITEMS)
            break;
        const int r = i / C4, c = (i % C4) * 4;
        float4 a = acc[s];
        for (int j = 0; j < n; j++) {
            const float x = w(r, j);
            const float4 v = *reinterpret_cast<const float4 *>(m + j * L + c);
            a.x += x * v.x;
            a.y += x * v.y;
            a.z += x * v.z;
            a.w += x * v.w;
        }
        acc[s] = a;
    }
}

/* rows r < n of the block's R rows from the accumulators into out (rows ldo apart) */
template <int R, int HD> __device__ static inline void attn_tile_store(float *out, int64_t ldo, const float4 *acc, int n)
{
    constexpr int C4 = HD / 4, ITEMS = R * C4, PER = (ITEMS + ATTN_THREADS - 1) / ATTN_THREADS;
#pragma unroll
    for (int s = 0; s < PER; s++) {
        const int i = (int)threadIdx.x + s * ATTN_THREADS;
        if (i >= ITEMS || i / C4 >= n)
            continue;
        float *o = out + (int64_t)(i / C4) * ldo + (i % C4) * 4;
        o[0] = acc[s].x;
        o[1] = acc[s].y;
        o[2] = acc[s].z;
        o[3] = acc[s].w;
    }
}

/* s[r][u] = scale * x[r] . y[u] (s: rows attn_srow apart) for the block's
 * rows r (x: R rows in shared memory) and every u < T, y's rows (src, ld apart) streamed through the
 * tile */
template <int T, int HD, int R>
__device__ static inline void attn_tile_scores(float *s, const float *x, float *tile, const float *src, int64_t ld,
                                               float scale)
{
    constexpr int L = attn_ld<HD>();
    for (int u0 = 0; u0 < T; u0 += ATTN_KT) {
        const int n = T - u0 < ATTN_KT ? T - u0 : ATTN_KT;
        attn_load_rows<HD, ATTN_KT>(tile, src + (int64_t)u0 * ld, ld, n);
        __syncthreads();
        for (int i = threadIdx.x; i < R * ATTN_KT; i += blockDim.x) {
            const int r = i / ATTN_KT, u = i % ATTN_KT;
            if (u < n)
                s[r * attn_srow<T>() + u0 + u] = dot_hd<HD>(x + r * L, tile + u * L) * scale;
        }
        __syncthreads();
    }
}

/* out[r] = sum over u < T of s[r][u] m[u] for the block's rows, m's rows
 * (src, ld apart) streamed through the tile; rows r < n stored (ldo apart) */
template <int T, int HD, int R>
__device__ static inline void attn_tile_rows_times(float *out, int64_t ldo, const float *s, float *tile,
                                                   const float *src, int64_t ld, int n)
{
    constexpr int PER = (R * HD / 4 + ATTN_THREADS - 1) / ATTN_THREADS;
    float4 acc[PER];
#pragma unroll
    for (int i = 0; i < PER; i++)
        acc[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int u0 = 0; u0 < T; u0 += ATTN_KT) {
        const int m = T - u0 < ATTN_KT ? T - u0 : ATTN_KT;
        attn_load_rows<HD, ATTN_KT>(tile, src + (int64_t)u0 * ld, ld, m);
        __syncthreads();
        attn_tile_times<R, HD>(acc, [&](int r, int j) { return s[r * attn_srow<T>() + u0 + j]; }, tile, m);
        __syncthreads();
    }
    attn_tile_store<R, HD>(out, ldo, acc, n);
}

/* A row tiles' block (grid (B * NH, tiles of R rows), the tensor-core
 * kernels' too): rows r0 .. r0 + n (n < R in the last tile) of sample b,
 * head h (bh = b * NH + h); the query rows for the row kernels, the key
 * rows for the column kernels */
template <int T, int HD, int NH, int R> struct attn_tile {
    int bh, b, h, r0, n;
    __device__ __forceinline__ attn_tile()
        : bh((int)blockIdx.x), b(bh / NH), h(bh % NH), r0((int)blockIdx.y * R), n(T - r0 < R ? T - r0 : R)
    {
    }
    /* the offset of the (sample, head)'s row 0 in x[B, T, *] (rows ld apart) */
    __device__ __forceinline__ int64_t head(int64_t ld) const
    {
        return (int64_t)b * T * ld + h * HD;
    }
    /* the offset of the block's row r0 there */
    __device__ __forceinline__ int64_t rows(int64_t ld) const
    {
        return ((int64_t)b * T + r0) * ld + h * HD;
    }
    /* the offset of the block's rows of the weights att[B, NH, T, T] */
    __device__ __forceinline__ int64_t weights() const
    {
        return ((int64_t)bh * T + r0) * T;
    }
};

/* The forward's softmax of the block's rows of scores s (rows SW apart), a
 * warp a row: rows r < n to their weights (W wide: zero from T on), copied
 * to att's rows a (T apart); with ZERO (the tensor-core kernels' padding)
 * rows n <= r < R of s zero too */
template <int T, int W, int SW, int R, bool ZERO>
__device__ static __forceinline__ void attn_tile_softmax(float *s, float *a, int n)
{
    const int warps = blockDim.x / 32, wid = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int r = wid; r < (ZERO ? R : n); r += warps) {
        if (!ZERO || r < n) {
            attn_softmax_row<T, W>(s + r * SW, a + (int64_t)r * T, lane);
        } else {
            for (int u = lane; u < W; u += 32)
                s[r * SW + u] = 0.0f;
        }
    }
}

/* The backward's rows r < n of the weights' gradient ds (rows SW apart), a
 * warp a row: back through the softmax and the scale, each copied over its
 * row of att's weights a (T apart; their last reader) */
template <int T, int HD, int SW> __device__ static __forceinline__ void attn_tile_softmax_bwd(float *ds, float *a, int n)
{
    const float scale = 1.0f / sqrtf((float)HD);
    const int warps = blockDim.x / 32, wid = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int r = wid; r < n; r += warps) {
        float *dr = ds + r * SW, *ar = a + (int64_t)r * T;
        attn_softmax_bwd_row<T>(dr, ar, scale, lane);
        for (int u = lane; u < T; u += 32) /* the lanes' own u: each read its p[u] above */
            ar[u] = dr[u];
    }
}

/* The column kernels' weights tile wt[KT, R] (rows WL apart): rows t0 ..
 * t0 + KT, columns u0 .. u0 + R of a (sample, head)'s weights w[T, T]; zero
 * from row m and column n on */
template <int T, int KT, int R, int WL>
__device__ static __forceinline__ void attn_load_wtile(float *wt, const float *w, int t0, int m, int u0, int n)
{
    attn_stage<KT * R>([&](int i) { return i / R < m && i % R < n ? w[(int64_t)(t0 + i / R) * T + u0 + i % R] : 0.0f; },
                       [&](int i, float v) {
                           if constexpr (WL == R)
                               wt[i] = v;
                           else
                               wt[i / R * WL + i % R] = v;
                       });
}

/* grid (B * NH, row tiles): rows t0 .. t0 + R of sample b, head h: the
 * weights' rows into att, the output's into out */
template <int T, int HD, int NH>
static __global__ void __launch_bounds__(ATTN_THREADS) attention_fwd_rows_kernel(float *out, float *att, const float *qkv)
{
    static_assert(HD % 4 == 0, "attention: the head width must be a multiple of 4");
    constexpr int D = NH * HD, D3 = 3 * D, L = attn_ld<HD>(), R = attn_rows<T>();
    extern __shared__ float4 sm4[];
    float *q = reinterpret_cast<float *>(sm4), *s = q + R * L, *tile = s + R * attn_srow<T>();
    const attn_tile<T, HD, NH, R> at;
    const float *base = qkv + at.head(D3);
    attn_load_rows<HD, R>(q, base + (int64_t)at.r0 * D3, D3, at.n);
    attn_tile_scores<T, HD, R>(s, q, tile, base + D, D3, 1.0f / sqrtf((float)HD));
    attn_tile_softmax<T, T, attn_srow<T>(), R, false>(s, att + at.weights(), at.n);
    __syncthreads();
    attn_tile_rows_times<T, HD, R>(out + at.rows(D), D, s, tile, base + 2 * D, D3, at.n);
}

/* grid (B * NH, row tiles): for the block's query rows, the weights'
 * gradient ds = att (g v^T - rowdot) scale, written over att's rows, and
 * dq = ds k */
template <int T, int HD, int NH>
static __global__ void __launch_bounds__(ATTN_THREADS)
    attention_bwd_rows_kernel(float *dqkv, float *att, const float *dout, const float *qkv)
{
    constexpr int D = NH * HD, D3 = 3 * D, L = attn_ld<HD>(), R = attn_rows<T>();
    extern __shared__ float4 sm4[];
    float *g = reinterpret_cast<float *>(sm4), *ds = g + R * L, *tile = ds + R * attn_srow<T>();
    const attn_tile<T, HD, NH, R> at;
    const float *base = qkv + at.head(D3);
    attn_load_rows<HD, R>(g, dout + at.rows(D), D, at.n);
    attn_tile_scores<T, HD, R>(ds, g, tile, base + 2 * D, D3, 1.0f);
    attn_tile_softmax_bwd<T, HD, attn_srow<T>()>(ds, att + at.weights(), at.n);
    __syncthreads();
    attn_tile_rows_times<T, HD, R>(dqkv + at.rows(D3), D3, ds, tile, base + D, D3, at.n);
}

/* grid (B * NH, column tiles): for the block's R key rows u, out[u] = sum
 * over t < T of w[t][u] x[t], w the (sample, head)'s T x T matrix and x's
 * rows streamed: dv = att^T g (DK false: x = dout, w = att) or dk = ds^T q
 * (DK true: x = q, w = ds in att's room) */
template <int T, int HD, int NH, bool DK>
static __global__ void __launch_bounds__(ATTN_THREADS) attention_bwd_cols_kernel(float *dqkv, const float *w, const float *src)
{
    constexpr int D = NH * HD, D3 = 3 * D, L = attn_ld<HD>(), R = attn_rows<T>(), PER = (R * HD / 4 + ATTN_THREADS - 1) / ATTN_THREADS;
    extern __shared__ float4 sm4[];
    float *x = reinterpret_cast<float *>(sm4), *wt = x + ATTN_KT * L;
    const attn_tile<T, HD, NH, R> at; /* key rows r0 .. r0 + n */
    const int64_t ldx = DK ? D3 : D;
    const float *xs = src + at.head(ldx), *wb = w + (int64_t)at.bh * T * T;
    float4 acc[PER];
#pragma unroll
    for (int i = 0; i < PER; i++)
        acc[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int t0 = 0; t0 < T; t0 += ATTN_KT) {
        const int m = T - t0 < ATTN_KT ? T - t0 : ATTN_KT;
        attn_load_rows<HD, ATTN_KT>(x, xs + (int64_t)t0 * ldx, ldx, m);
        attn_load_wtile<T, ATTN_KT, R, R>(wt, wb, t0, m, at.r0, at.n);
        __syncthreads();
        attn_tile_times<R, HD>(acc, [&](int u, int j) { return wt[j * R + u]; }, x, m);
        __syncthreads();
    }
    attn_tile_store<R, HD>(dqkv + at.rows(D3) + (DK ? D : 2 * D), D3, acc, at.n);
}

/* ---- the row tiles on tensor cores (the reduced-precision modes) ----------------------------------------
 * The same three products per kernel as the fp32 row tiles, on TF32 WMMA
 * tiles with fp32 accumulation (as attention_*_tc_kernel), the streamed
 * operand ATTN_KT_TC rows at a time and zero past the sequence, so that
 * the padded keys add nothing; the softmax and its backward stay in fp32.
 * Blocks of R = 32 or 16 rows (not the 8 of the longest sequences), heads
 * a multiple of 16 wide. */

#define ATTN_KT_TC 64 /* rows of the streamed operand per tile */

/* the keys padded to whole tiles, and the rows of scores (4 floats more) */
template <int T> __host__ __device__ constexpr int attn_tk()
{
    return (T + ATTN_KT_TC - 1) / ATTN_KT_TC * ATTN_KT_TC;
}

template <int T> __host__ __device__ constexpr int attn_sw()
{
    return attn_tk<T>() + 4;
}

/* the rows of the column kernel's weights tile: R + 4 */
template <int T> __host__ __device__ constexpr int attn_wl()
{
    return attn_rows<T>() + 4;
}

template <int T, int HD> constexpr int attn_rows_tc_smem()
{
    return (int)sizeof(float) * (attn_rows<T>() * attn_ld<HD>() + attn_rows<T>() * attn_sw<T>() +
                                 ATTN_KT_TC * attn_ld<HD>());
}

template <int T, int HD> constexpr int attn_cols_tc_smem()
{
    return (int)sizeof(float) * (ATTN_KT_TC * attn_ld<HD>() + ATTN_KT_TC * attn_wl<T>());
}

template <int T, int HD> constexpr bool attn_rows_tc_ok()
{
    return HD % 16 == 0 && attn_rows<T>() % 16 == 0 && attn_rows_tc_smem<T, HD>() <= 227 * 1024 &&
           attn_cols_tc_smem<T, HD>() <= 227 * 1024;
}

/* output tiles of 16 x 16 a warp holds: the block's R x HD over its 8 warps */
template <int R, int HD> __host__ __device__ constexpr int attn_tc_per_warp()
{
    return ((R / 16) * (HD / 16) + ATTN_THREADS / 32 - 1) / (ATTN_THREADS / 32);
}

/* s[R, TK] (rows attn_sw apart) = scale * x[R, HD] y^T for every key, y's
 * rows (src, ld apart; T of them, zero past) streamed through the tile */
template <int T, int HD, int R>
__device__ static inline void attn_tc_tile_scores(float *s, const float *x, float *tile, const float *src, int64_t ld,
                                                  float scale)
{
    constexpr int L = attn_ld<HD>(), SW = attn_sw<T>(), NJ = ATTN_KT_TC / 16, NT = (R / 16) * NJ;
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int u0 = 0; u0 < T; u0 += ATTN_KT_TC) {
        attn_load_rows<HD, ATTN_KT_TC>(tile, src + (int64_t)u0 * ld, ld, T - u0 < ATTN_KT_TC ? T - u0 : ATTN_KT_TC);
        __syncthreads();
        for (int t = warp; t < NT; t += warps) {
            const int i = t / NJ, j = t % NJ;
            tc_acc acc;
            wmma::fill_fragment(acc, 0.0f);
            tc_mma<HD, wmma::row_major, wmma::col_major>(acc, x + i * 16 * L, L, 1, tile + j * 16 * L, L, 1);
#pragma unroll
            for (int e = 0; e < acc.num_elements; e++)
                acc.x[e] *= scale;
            wmma::store_matrix_sync(s + i * 16 * SW + u0 + j * 16, acc, SW, wmma::mem_row_major);
        }
        __syncthreads();
    }
}

/* out[R, HD] = the accumulators' tiles (warp w holds tiles w, w + 8, ...)
 * staged in stage (R rows attn_ld apart), then rows r < n stored (ldo
 * apart) */
template <int R, int HD>
__device__ static inline void attn_tc_tiles_store(float *out, int64_t ldo, tc_acc *acc, float *stage, int n)
{
    constexpr int L = attn_ld<HD>(), NC = HD / 16, NT = (R / 16) * NC, PW = attn_tc_per_warp<R, HD>();
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
#pragma unroll
    for (int p = 0; p < PW; p++) {
        const int t = warp + p * warps;
        if (t < NT)
            wmma::store_matrix_sync(stage + t / NC * 16 * L + t % NC * 16, acc[p], L, wmma::mem_row_major);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n * HD; i += blockDim.x)
        out[(int64_t)(i / HD) * ldo + i % HD] = stage[i / HD * L + i % HD];
}

/* out[r] = sum over u of s[r][u] m[u] for the block's R rows (s: rows
 * attn_sw apart, zero past the sequence), m's rows (src, ld apart)
 * streamed; rows r < n stored (ldo apart), staged in stage */
template <int T, int HD, int R>
__device__ static inline void attn_tc_tile_times(float *out, int64_t ldo, const float *s, float *tile, float *stage,
                                                 const float *src, int64_t ld, int n)
{
    constexpr int L = attn_ld<HD>(), SW = attn_sw<T>(), NC = HD / 16, NT = (R / 16) * NC,
                  PW = attn_tc_per_warp<R, HD>();
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
    tc_acc acc[PW];
#pragma unroll
    for (int p = 0; p < PW; p++)
        wmma::fill_fragment(acc[p], 0.0f);
    for (int u0 = 0; u0 < T; u0 += ATTN_KT_TC) {
        attn_load_rows<HD, ATTN_KT_TC>(tile, src + (int64_t)u0 * ld, ld, T - u0 < ATTN_KT_TC ? T - u0 : ATTN_KT_TC);
        __syncthreads();
#pragma unroll
        for (int p = 0; p < PW; p++) {
            const int t = warp + p * warps;
            if (t < NT)
                tc_mma<ATTN_KT_TC, wmma::row_major, wmma::row_major>(acc[p], s + t / NC * 16 * SW + u0, SW, 1,
                                                                     tile + t % NC * 16, L, L);
        }
        __syncthreads();
    }
    attn_tc_tiles_store<R, HD>(out, ldo, acc, stage, n);
}

template <int T, int HD, int NH>
static __global__ void __launch_bounds__(ATTN_THREADS)
    attention_fwd_rows_tc_kernel(float *out, float *att, const float *qkv)
{
    constexpr int D = NH * HD, D3 = 3 * D, L = attn_ld<HD>(), R = attn_rows<T>(), SW = attn_sw<T>(), TK = attn_tk<T>();
    extern __shared__ __align__(128) float smtc[];
    float *q = smtc, *s = q + R * L, *tile = s + R * SW;
    const attn_tile<T, HD, NH, R> at;
    const float *base = qkv + at.head(D3);
    attn_load_rows<HD, R>(q, base + (int64_t)at.r0 * D3, D3, at.n);
    attn_tc_tile_scores<T, HD, R>(s, q, tile, base + D, D3, 1.0f / sqrtf((float)HD));
    /* the softmax of rows r < n (the weights out), zero past the keys and
     * in the rows past n */
    attn_tile_softmax<T, TK, SW, R, true>(s, att + at.weights(), at.n);
    __syncthreads();
    attn_tc_tile_times<T, HD, R>(out + at.rows(D), D, s, tile, q, base + 2 * D, D3, at.n);
}

template <int T, int HD, int NH>
static __global__ void __launch_bounds__(ATTN_THREADS)
    attention_bwd_rows_tc_kernel(float *dqkv, float *att, const float *dout, const float *qkv)
{
    constexpr int D = NH * HD, D3 = 3 * D, L = attn_ld<HD>(), R = attn_rows<T>(), SW = attn_sw<T>();
    extern __shared__ __align__(128) float smtc[];
    float *g = smtc, *ds = g + R * L, *tile = ds + R * SW;
    const attn_tile<T, HD, NH, R> at;
    const float *base = qkv + at.head(D3);
    attn_load_rows<HD, R>(g, dout + at.rows(D), D, at.n);
    /* datt = g v^T: zero past the keys (v's padding) and in the rows past
     * n (g's) */
    attn_tc_tile_scores<T, HD, R>(ds, g, tile, base + 2 * D, D3, 1.0f);
    attn_tile_softmax_bwd<T, HD, SW>(ds, att + at.weights(), at.n);
    __syncthreads();
    attn_tc_tile_times<T, HD, R>(dqkv + at.rows(D3), D3, ds, tile, g, base + D, D3, at.n);
}

/* as attention_bwd_cols_kernel: for the block's R key rows u, out[u] =
 * sum over t of w[t][u] x[t]; the weights' tile [ATTN_KT_TC, R] (rows
 * attn_wl apart) is the transposed operand, read column-major */
template <int T, int HD, int NH, bool DK>
static __global__ void __launch_bounds__(ATTN_THREADS)
    attention_bwd_cols_tc_kernel(float *dqkv, const float *w, const float *src)
{
    constexpr int D = NH * HD, D3 = 3 * D, L = attn_ld<HD>(), R = attn_rows<T>(), WL = attn_wl<T>(), NC = HD / 16,
                  NT = (R / 16) * NC, PW = attn_tc_per_warp<R, HD>();
    extern __shared__ __align__(128) float smtc[];
    float *x = smtc, *wt = x + ATTN_KT_TC * L;
    const attn_tile<T, HD, NH, R> at; /* key rows r0 .. r0 + n */
    const int64_t ldx = DK ? D3 : D;
    const float *xs = src + at.head(ldx), *wb = w + (int64_t)at.bh * T * T;
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
    tc_acc acc[PW];
#pragma unroll
    for (int p = 0; p < PW; p++)
        wmma::fill_fragment(acc[p], 0.0f);
    for (int t0 = 0; t0 < T; t0 += ATTN_KT_TC) {
        const int m = T - t0 < ATTN_KT_TC ? T - t0 : ATTN_KT_TC;
        attn_load_rows<HD, ATTN_KT_TC>(x, xs + (int64_t)t0 * ldx, ldx, m);
        attn_load_wtile<T, ATTN_KT_TC, R, WL>(wt, wb, t0, m, at.r0, at.n);
        __syncthreads();
#pragma unroll
        for (int p = 0; p < PW; p++) {
            const int t = warp + p * warps;
            if (t < NT)
                tc_mma<ATTN_KT_TC, wmma::col_major, wmma::row_major>(acc[p], wt + t / NC * 16, WL, WL, x + t % NC * 16,
                                                                     L, L);
        }
        __syncthreads();
    }
    attn_tc_tiles_store<R, HD>(dqkv + at.rows(D3) + (DK ? D : 2 * D), D3, acc, x, at.n);
}

/* whether a (sample, head) fits one block (the kernels above), or takes the
 * row tiles */
template <int T, int HD> constexpr bool attn_whole_ok()
{
    return attn_bwd_smem<T, HD>() <= 227 * 1024;
}

template <int T, int HD, int NH> static inline void attention_tiled_setup()
{
    static_assert(attn_tiled_smem<T, HD>() <= 227 * 1024, "attention: sequence too long for the row tiles");
    CUDA_CHECK(cudaFuncSetAttribute(attention_fwd_rows_kernel<T, HD, NH>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    attn_tiled_smem<T, HD>()));
    CUDA_CHECK(cudaFuncSetAttribute(attention_bwd_rows_kernel<T, HD, NH>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    attn_tiled_smem<T, HD>()));
    constexpr int cols = attn_colprod_smem<HD>(attn_rows<T>());
    static_assert(cols <= 227 * 1024, "attention: heads too wide for the column tiles");
    CUDA_CHECK(cudaFuncSetAttribute(attention_bwd_cols_kernel<T, HD, NH, false>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, cols));
    CUDA_CHECK(cudaFuncSetAttribute(attention_bwd_cols_kernel<T, HD, NH, true>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, cols));
    if constexpr (attn_rows_tc_ok<T, HD>()) {
        constexpr int rows = attn_rows_tc_smem<T, HD>(), cols_tc = attn_cols_tc_smem<T, HD>();
        CUDA_CHECK(cudaFuncSetAttribute(attention_fwd_rows_tc_kernel<T, HD, NH>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, rows));
        CUDA_CHECK(cudaFuncSetAttribute(attention_bwd_rows_tc_kernel<T, HD, NH>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, rows));
        CUDA_CHECK(cudaFuncSetAttribute(attention_bwd_cols_tc_kernel<T, HD, NH, false>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, cols_tc));
        CUDA_CHECK(cudaFuncSetAttribute(attention_bwd_cols_tc_kernel<T, HD, NH, true>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, cols_tc));
    }
}

template <int T, int HD, int NH>
static inline void attention_tiled_forward(const kctx *k, float *out, float *att, const float *qkv, int B)
{
    const dim3 grid((unsigned)(B * NH), (unsigned)((T + attn_rows<T>() - 1) / attn_rows<T>()));
    if constexpr (attn_rows_tc_ok<T, HD>()) {
        if (k->compute != CUBLAS_COMPUTE_32F) {
            attention_fwd_rows_tc_kernel<T, HD, NH>
                <<<grid, ATTN_THREADS, attn_rows_tc_smem<T, HD>(), k->stream>>>(out, att, qkv);
            LAUNCH_CHECK();
            return;
        }
    }
    attention_fwd_rows_kernel<T, HD, NH><<<grid, ATTN_THREADS, attn_tiled_smem<T, HD>(), k->stream>>>(out, att, qkv);
    LAUNCH_CHECK();
}

/* att: the forward's weights, overwritten by their gradient */
template <int T, int HD, int NH>
static inline void attention_tiled_backward(const kctx *k, float *dqkv, const float *dout, const float *qkv, float *att,
                                            int B)
{
    const dim3 grid((unsigned)(B * NH), (unsigned)((T + attn_rows<T>() - 1) / attn_rows<T>()));
    if constexpr (attn_rows_tc_ok<T, HD>()) {
        if (k->compute != CUBLAS_COMPUTE_32F) {
            constexpr int rows = attn_rows_tc_smem<T, HD>(), cols_tc = attn_cols_tc_smem<T, HD>();
            attention_bwd_cols_tc_kernel<T, HD, NH, false><<<grid, ATTN_THREADS, cols_tc, k->stream>>>(dqkv, att, dout);
            LAUNCH_CHECK();
            attention_bwd_rows_tc_kernel<T, HD, NH><<<grid, ATTN_THREADS, rows, k->stream>>>(dqkv, att, dout, qkv);
            LAUNCH_CHECK();
            attention_bwd_cols_tc_kernel<T, HD, NH, true><<<grid, ATTN_THREADS, cols_tc, k->stream>>>(dqkv, att, qkv);
            LAUNCH_CHECK();
            return;
        }
    }
    constexpr int cols = attn_colprod_smem<HD>(attn_rows<T>());
    attention_bwd_cols_kernel<T, HD, NH, false><<<grid, ATTN_THREADS, cols, k->stream>>>(dqkv, att, dout);
    LAUNCH_CHECK();
    attention_bwd_rows_kernel<T, HD, NH><<<grid, ATTN_THREADS, attn_tiled_smem<T, HD>(), k->stream>>>(dqkv, att, dout,
                                                                                                      qkv);
    LAUNCH_CHECK();
    attention_bwd_cols_kernel<T, HD, NH, true><<<grid, ATTN_THREADS, cols, k->stream>>>(dqkv, att, qkv);
    LAUNCH_CHECK();
}

/* ---- attention: the entry points ------------------------------------------------------------------ */

/* one block per (sample, head): fp32, or tensor cores in the reduced modes */
template <int T, int HD, int NH> static inline void attention_whole_setup()
{
    CUDA_CHECK(cudaFuncSetAttribute(attention_fwd_kernel<T, HD, NH>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    attn_fwd_smem<T, HD>()));
    CUDA_CHECK(cudaFuncSetAttribute(attention_bwd_kernel<T, HD, NH>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    attn_bwd_smem<T, HD>()));
    if constexpr (attn_tc_ok<T, HD>()) { /* fp32 output, and bf16 (attn_half) */
        const int fs = attn_tc_fwd_smem<T, HD>(), bs = attn_tc_bwd_smem<T, HD>();
        const cudaFuncAttribute dyn = cudaFuncAttributeMaxDynamicSharedMemorySize;
        CUDA_CHECK(cudaFuncSetAttribute(attention_fwd_tc_kernel<T, HD, NH, float>, dyn, fs));
        CUDA_CHECK(cudaFuncSetAttribute(attention_bwd_tc_kernel<T, HD, NH, float>, dyn, bs));
        CUDA_CHECK(cudaFuncSetAttribute(attention_fwd_tc_kernel<T, HD, NH, __nv_bfloat16>, dyn, fs));
        CUDA_CHECK(cudaFuncSetAttribute(attention_bwd_tc_kernel<T, HD, NH, __nv_bfloat16>, dyn, bs));
    }
    if constexpr (attn_frag_ok<T, HD>()) { /* bf16 precision */
        const int fs = attn_frag_fwd_smem<T, HD>(), bs = attn_frag_bwd_smem<T, HD>();
        const cudaFuncAttribute dyn = cudaFuncAttributeMaxDynamicSharedMemorySize;
        using bf = __nv_bfloat16;
        CUDA_CHECK(cudaFuncSetAttribute(attention_fwd_frag_kernel<T, HD, NH, float, float>, dyn, fs));
        CUDA_CHECK(cudaFuncSetAttribute(attention_bwd_frag_kernel<T, HD, NH, float, float>, dyn, bs));
        CUDA_CHECK(cudaFuncSetAttribute(attention_fwd_frag_kernel<T, HD, NH, bf, float>, dyn, fs));
        CUDA_CHECK(cudaFuncSetAttribute(attention_bwd_frag_kernel<T, HD, NH, bf, float>, dyn, bs));
        CUDA_CHECK(cudaFuncSetAttribute(attention_fwd_frag_kernel<T, HD, NH, float, bf>, dyn, fs));
        CUDA_CHECK(cudaFuncSetAttribute(attention_bwd_frag_kernel<T, HD, NH, float, bf>, dyn, bs));
        CUDA_CHECK(cudaFuncSetAttribute(attention_fwd_frag_kernel<T, HD, NH, bf, bf>, dyn, fs));
        CUDA_CHECK(cudaFuncSetAttribute(attention_bwd_frag_kernel<T, HD, NH, bf, bf>, dyn, bs));
        /* dout in bf16 (dout16) */
        CUDA_CHECK(cudaFuncSetAttribute(attention_bwd_frag_kernel<T, HD, NH, bf, float, bf>, dyn, bs));
        CUDA_CHECK(cudaFuncSetAttribute(attention_bwd_frag_kernel<T, HD, NH, bf, bf, bf>, dyn, bs));
    }
}

/* bf16 precision: whether the attention of a whole (sample, head) on
 * tensor cores writes its output (attention_forward) and dqkv
 * (attention_backward) in bf16, into the first half of their fp32 room
 * (bf16_half), when the caller's only use of them is as a product's
 * operand (half = true); attn_mm is then that operand */
template <int T, int HD> constexpr bool attn_half_ok()
{
    return attn_whole_ok<T, HD>() && attn_tc_ok<T, HD>();
}

template <int T, int HD> static inline bool attn_half(const kctx *k)
{
    if constexpr (attn_half_ok<T, HD>())
        return k->cast != nullptr;
    else
        return false;
}

template <int T, int HD> static inline mm_in attn_mm(const kctx *k, float *p)
{
    return attn_half<T, HD>(k) ? mm_half(k, p) : mm_in(p);
}

/* bf16 precision, attention on bf16 fragments: qkv in bf16 alone, in the
 * first half of its fp32 room, as the product that makes it writes it
 * there (linear_forward's out16) and the kernels stage it without
 * rounding it again: the same values as rounding fp32 qkv. NULL where
 * qkv is fp32 (other precisions, other kernels). The caller that passes
 * attention_forward and attention_backward frag16 = true makes qkv
 * through this, and gives the weights no room where it is not NULL: the
 * backward computes them again. */
template <int T, int HD> constexpr bool attn_qkv16_ok()
{
    return attn_whole_ok<T, HD>() && attn_frag_ok<T, HD>(); /* attention_whole_forward's fragment path */
}

template <int T, int HD> static inline __nv_bfloat16 *attn_qkv16(const kctx *k, float *qkv)
{
    if constexpr (attn_qkv16_ok<T, HD>())
        return bf16_half(k, qkv);
    else
        return nullptr;
}

/* the fragment kernels' launches: the output in fp32 or bf16 (half), qkv
 * in fp32 or bf16 (attn_qkv16) */
template <int T, int HD, int NH, typename Q>
static inline void attn_frag_forward(const kctx *k, float *out, float *att, const Q *qkv, int B, bool half)
{
    const unsigned grid = (unsigned)(B * NH), threads = 2 * attn_tp<T>();
    const int smem = attn_frag_fwd_smem<T, HD>();
    if (half && attn_half<T, HD>(k))
        attention_fwd_frag_kernel<T, HD, NH><<<grid, threads, smem, k->stream>>>(bf16_half(k, out), att, qkv);
    else
        attention_fwd_frag_kernel<T, HD, NH><<<grid, threads, smem, k->stream>>>(out, att, qkv);
    LAUNCH_CHECK();
}

/* dbias (NULL: none) += the qkv bias's gradient, the column sums of
 * dqkv: the kernel's per-sample sums, then rows_sum over the samples.
 * dout16: dout is bf16 alone in the first half of its room (with half
 * only) */
template <int T, int HD, int NH, typename Q>
static inline void attn_frag_backward(const kctx *k, float *dqkv, const float *dout, const Q *qkv, const float *att,
                                      int B, bool half, float *dbias, bool dout16)
{
    const unsigned grid = (unsigned)(B * NH), threads = 2 * attn_tp<T>();
    const int smem = attn_frag_bwd_smem<T, HD>();
    constexpr int D3 = 3 * NH * HD;
    if (dbias)
        red_need(k, (int64_t)B * D3);
    float *part = dbias ? k->red : nullptr;
    const bool h16 = half && attn_half<T, HD>(k);
    if (dout16 && !h16) {
        fprintf(stderr, "train: internal error: attention's output gradient in bf16 without its dqkv in bf16\n");
        exit(1);
    }
    if (dout16)
        attention_bwd_frag_kernel<T, HD, NH><<<grid, threads, smem, k->stream>>>(
            bf16_half(k, dqkv), reinterpret_cast<const __nv_bfloat16 *>(dout), qkv, att, part);
    else if (h16)
        attention_bwd_frag_kernel<T, HD, NH>
            <<<grid, threads, smem, k->stream>>>(bf16_half(k, dqkv), dout, qkv, att, part);
    else
        attention_bwd_frag_kernel<T, HD, NH><<<grid, threads, smem, k->stream>>>(dqkv, dout, qkv, att, part);
    LAUNCH_CHECK();
    if (dbias)
        rows_sum(k, dbias, part, D3, B);
}

template <int T, int HD, int NH>
static inline void attention_whole_forward(const kctx *k, float *out, float *att, const float *qkv, int B, bool half,
                                           bool frag16)
{
    if constexpr (attn_frag_ok<T, HD>()) {
        if (k->cast) { /* bf16 precision */
            if (frag16)
                attn_frag_forward<T, HD, NH>(k, out, nullptr, attn_qkv16<T, HD>(k, const_cast<float *>(qkv)), B,
                                             half);
            else
                attn_frag_forward<T, HD, NH>(k, out, att, qkv, B, half);
            return;
        }
    }
    if constexpr (attn_tc_ok<T, HD>()) {
        if (k->compute != CUBLAS_COMPUTE_32F) {
            const unsigned grid = (unsigned)(B * NH);
            if (half && attn_half<T, HD>(k))
                attention_fwd_tc_kernel<T, HD, NH><<<grid, ATTN_THREADS, attn_tc_fwd_smem<T, HD>(), k->stream>>>(
                    bf16_half(k, out), att, qkv);
            else
                attention_fwd_tc_kernel<T, HD, NH>
                    <<<grid, ATTN_THREADS, attn_tc_fwd_smem<T, HD>(), k->stream>>>(out, att, qkv);
            LAUNCH_CHECK();
            return;
        }
    }
    attention_fwd_kernel<T, HD, NH><<<(unsigned)(B * NH), ATTN_THREADS, attn_fwd_smem<T, HD>(), k->stream>>>(out, att, qkv);
    LAUNCH_CHECK();
}

/* true where it summed dqkv's columns into dbias too (the fragment
 * kernel; dbias NULL: none asked); dout16 as attention_backward's */
template <int T, int HD, int NH>
static inline bool attention_whole_backward(const kctx *k, float *dqkv, const float *dout, const float *qkv,
                                            const float *att, int B, bool half, bool frag16, float *dbias,
                                            bool dout16)
{
    if constexpr (attn_frag_ok<T, HD>()) {
        if (k->cast) { /* bf16 precision */
            if (frag16)
                attn_frag_backward<T, HD, NH>(k, dqkv, dout, attn_qkv16<T, HD>(k, const_cast<float *>(qkv)), nullptr,
                                              B, half, dbias, dout16);
            else
                attn_frag_backward<T, HD, NH>(k, dqkv, dout, qkv, att, B, half, dbias, dout16);
            return true;
        }
    }
    if constexpr (attn_tc_ok<T, HD>()) {
        if (k->compute != CUBLAS_COMPUTE_32F) {
            const unsigned grid = (unsigned)(B * NH);
            if (half && attn_half<T, HD>(k))
                attention_bwd_tc_kernel<T, HD, NH><<<grid, ATTN_THREADS, attn_tc_bwd_smem<T, HD>(), k->stream>>>(
                    bf16_half(k, dqkv), dout, qkv, att);
            else
                attention_bwd_tc_kernel<T, HD, NH>
                    <<<grid, ATTN_THREADS, attn_tc_bwd_smem<T, HD>(), k->stream>>>(dqkv, dout, qkv, att);
            LAUNCH_CHECK();
            return false;
        }
    }
    attention_bwd_kernel<T, HD, NH><<<(unsigned)(B * NH), ATTN_THREADS, attn_bwd_smem<T, HD>(), k->stream>>>(dqkv, dout, qkv,
                                                                                                   att);
    LAUNCH_CHECK();
    return false;
}

/* Once per shape before the first launch: the kernels' shared memory above
 * the 48 KiB a launch gets unasked. */
template <int T, int HD, int NH> static inline void attention_setup()
{
    if constexpr (attn_whole_ok<T, HD>())
        attention_whole_setup<T, HD, NH>();
    else
        attention_tiled_setup<T, HD, NH>();
}

/* qkv[B, T, 3D] -> att[B, NH, T, T] (the softmax weights, kept for the
 * backward), out[B, T, D] (in bf16 where half and attn_half). frag16:
 * qkv was made through attn_qkv16, and where that is bf16 the weights are
 * neither written nor read (the backward computes them again) */
template <int T, int HD, int NH>
static inline void attention_forward(const kctx *k, float *out, float *att, const float *qkv, int B,
                                     bool half = false, bool frag16 = false)
{
    if constexpr (attn_whole_ok<T, HD>())
        attention_whole_forward<T, HD, NH>(k, out, att, qkv, B, half, frag16);
    else
        attention_tiled_forward<T, HD, NH>(k, out, att, qkv, B);
}

/* dqkv[B, T, 3D] (written whole; in bf16 where half and attn_half) from
 * dout[B, T, D]; att: the forward's weights, which sequences that take the
 * row tiles overwrite with their gradient; frag16 as attention_forward's.
 * dbias (NULL: none) += the qkv bias's gradient, dqkv's column sums: on
 * bf16 fragments summed by the kernel in fp32 before dqkv is rounded (no
 * second pass over dqkv), else by colsum_add over dqkv as written.
 * dout16: in bf16 precision dout is bf16 alone in the first half of its
 * room, as linear_backward's dinp16 writes it (the kernel rounds it to
 * bf16 when it stages it anyway: the same values at half the bytes);
 * only with half, where the fragment kernels run (attn_qkv16_ok). */
template <int T, int HD, int NH>
static inline void attention_backward(const kctx *k, float *dqkv, const float *dout, const float *qkv, float *att, int B,
                                      bool half = false, bool frag16 = false, float *dbias = nullptr,
                                      bool dout16 = false)
{
    constexpr int D3 = 3 * NH * HD;
    dout16 = dout16 && k->cast;
    if (dout16 && !attn_qkv16_ok<T, HD>()) {
        fprintf(stderr, "train: internal error: attention's output gradient in bf16 outside the fragment kernels\n");
        exit(1);
    }
    if constexpr (attn_whole_ok<T, HD>()) {
        if (attention_whole_backward<T, HD, NH>(k, dqkv, dout, qkv, att, B, half, frag16, dbias, dout16) || !dbias)
            return;
        if (half && attn_half<T, HD>(k))
            colsum_add(k, dbias, static_cast<const __nv_bfloat16 *>(bf16_half(k, dqkv)), B * T, D3);
        else
            colsum_add(k, dbias, static_cast<const float *>(dqkv), B * T, D3);
    } else {
        attention_tiled_backward<T, HD, NH>(k, dqkv, dout, qkv, att, B);
        if (dbias)
            colsum_add(k, dbias, static_cast<const float *>(dqkv), B * T, D3);
    }
}

/* ---- pooling, dropout ---------------------------------------------------------------------------- */

static __global__ void pool_fwd_kernel(float *out, const float *inp, int B, int T, int D, int cls)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)B * D)
        return;
    const int64_t b = i / D;
    const int d = (int)(i % D);
    const float *x = inp + b * T * D + d;
    if (cls) {
        out[i] = x[0];
        return;
    }
    float s = 0.0f;
    for (int t = 0; t < T; t++)
        s += x[(int64_t)t * D];
    out[i] = s / T;
}

template <int V>
static __global__ void pool_bwd_kernel(float *dinp, const float *dout, int B, int T, int D, int cls, int acc)
{
    const int64_t i = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * V, TD = (int64_t)T * D;
    if (i >= (int64_t)B * TD)
        return;
    const int64_t b = i / TD;
    const int r = (int)(i - b * TD), t = r / D, d = r % D;
    float x[V];
    if (cls && t != 0) {
#pragma unroll
        for (int j = 0; j < V; j++)
            x[j] = 0.0f;
    } else {
        vload<V>(x, dout + b * D + d);
        if (!cls) {
#pragma unroll
            for (int j = 0; j < V; j++)
                x[j] /= T;
        }
    }
    vput<V>(dinp + i, x, acc);
}

static inline void pool_forward(const kctx *k, float *out, const float *inp, int B, int T, int D, int cls)
{
    pool_fwd_kernel<<<blocks_for((int64_t)B * D, 256), 256, 0, k->stream>>>(out, inp, B, T, D, cls);
    LAUNCH_CHECK();
}

static inline void pool_backward(const kctx *k, float *dinp, const float *dout, int B, int T, int D, int cls, int acc)
{
    launch_vec(k, vec4_ok(D, dinp, dout), (int64_t)B * T * D, pool_bwd_kernel<4>, pool_bwd_kernel<1>, dinp, dout, B, T,
               D, cls, acc);
}

/* mask[i] = 0 with probability p, else 1/(1-p), from (seed, stream, step, i0 + i): i0 is the
 * first element of this process's share of the batch; the step is read on the device */
static __global__ void dropout_mask_kernel(float *mask, int64_t n, float p, uint64_t seed, int stream,
                                           const int64_t *step, int64_t i0)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    const float keep = 1.0f / (1.0f - p);
    mask[i] = p <= 0.0f ? 1.0f
                        : (rng_uniform_dev(seed, (uint64_t)stream, ((uint64_t)*step << 32) + (uint64_t)(i0 + i)) < p
                               ? 0.0f
                               : keep);
}

static inline void dropout_mask(const kctx *k, float *mask, int64_t n, float p, uint64_t seed, int stream,
                                const int64_t *step, int64_t i0)
{
    dropout_mask_kernel<<<blocks_for(n, 256), 256, 0, k->stream>>>(mask, n, p, seed, stream, step, i0);
    LAUNCH_CHECK();
}

/* out[i] = inp[i] * mask[i / R] (R = 1: dropout; R = row: drop path) */
/* out[i] (+)= inp[i] * mask[i / R] (acc: out[i] + that), V elements a
 * thread (R a multiple of V); I: the index type, 32 bits where n allows */
template <int V, typename I>
static __global__ void mask_kernel(float *out, const float *inp, const float *mask, I n, I R, int acc)
{
    const I i = ((I)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i >= n)
        return;
    vcopy<V>(out + i, inp + i, acc, mask[i / R]);
}

static inline void mask_apply(const kctx *k, float *out, const float *inp, const float *mask, int64_t n, int64_t R,
                              int acc)
{
    /* 32-bit indices while the last thread's (up to 1,024 past n) stays
     * below 2^31 */
    const bool v4 = R % 4 == 0 && vec4_ok(n, out, inp);
    if (n < ((int64_t)1 << 30))
        launch_vec(k, v4, n, mask_kernel<4, int>, mask_kernel<1, int>, out, inp, mask, (int)n, (int)R, acc);
    else
        launch_vec(k, v4, n, mask_kernel<4, int64_t>, mask_kernel<1, int64_t>, out, inp, mask, n, R, acc);
}

static inline void mask_forward(const kctx *k, float *out, const float *inp, const float *mask, int64_t n,
                                int64_t R = 1)
{
    mask_apply(k, out, inp, mask, n, R, 0);
}

static inline void mask_backward(const kctx *k, float *dinp, const float *dout, const float *mask, int64_t n, int acc,
                                 int64_t R = 1)
{
    mask_apply(k, dinp, dout, mask, n, R, acc);
}

/* x[i] *= mask[i] on bf16 values (rounded again to bf16) */
static __global__ void mask_bf16_kernel(__nv_bfloat16 *x, const float *mask, int64_t n)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] = __float2bfloat16(__bfloat162float(x[i]) * mask[i]);
}

/* A dense MLP's dropout on its activations, in place, where its second
 * product reads them: their bf16 half in bf16 precision (bias_act wrote
 * them there alone: bf16_half), else the fp32 values */
static inline void mask_activations(const kctx *k, float *a, const float *mask, int64_t n)
{
    if (__nv_bfloat16 *a16 = bf16_half(k, a)) {
        mask_bf16_kernel<<<blocks_for(n, 256), 256, 0, k->stream>>>(a16, mask, n);
        LAUNCH_CHECK();
    } else {
        mask_forward(k, a, a, mask, n);
    }
}

/* ---- classifier heads and the loss -------------------------------------------------------------- */

/* one head per dataset: out[b, c] = inp[b] . w_d[c] + b_d[c] for c < C_d,
 * d = dataset[b]; w_off/b_off: each dataset's offsets in the parameters */
static __global__ void head_fwd_kernel(float *out, const float *inp, const float *param, const int64_t *w_off,
                                       const int64_t *b_off, const int *classes, const int32_t *dataset, int B, int D,
                                       int CMAX)
{
    const int warps = blockDim.x / 32;
    const int64_t id = (int64_t)blockIdx.x * warps + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (id >= (int64_t)B * CMAX)
        return;
    const int b = (int)(id / CMAX), c = (int)(id % CMAX), d = dataset[b];
    if (c >= classes[d]) {
        if (lane == 0)
            out[id] = 0.0f;
        return;
    }
    const float *w = param + w_off[d] + (int64_t)c * D, *x = inp + (int64_t)b * D;
    float s = 0.0f;
    for (int i = lane; i < D; i += 32)
        s += x[i] * w[i];
    s = warp_sum(s);
    if (lane == 0)
        out[id] = s + param[b_off[d] + c];
}

/* dinp[b] (+)= sum_c dout[b, c] w_d[c] */
static __global__ void head_bwd_input_kernel(float *dinp, const float *dout, const float *param, const int64_t *w_off,
                                             const int *classes, const int32_t *dataset, int B, int D, int CMAX,
                                             int acc)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)B * D)
        return;
    const int b = (int)(i / D), j = (int)(i % D), d = dataset[b];
    const float *w = param + w_off[d];
    float s = 0.0f;
    for (int c = 0; c < classes[d]; c++)
        s += dout[(int64_t)b * CMAX + c] * w[(int64_t)c * D + j];
    dinp[i] = acc ? dinp[i] + s : s;
}

/* The per-dataset heads' weight gradient is ND * CMAX * (D + 1) sums over
 * the samples, too few for the GPU one thread each (damex_gpu: 5,790
 * threads, 1,024 samples in a row, 0.15 ms): the samples are cut into
 * head_chunks(n) chunks, enough for about HEAD_THREADS threads (at most
 * HEAD_MAX_CHUNKS), each summed by a thread of its own; their partial sums
 * (in k->red) are then added in chunk order. */
#define HEAD_THREADS 131072
#define HEAD_MAX_CHUNKS 32
static inline int head_chunks(int64_t n)
{
    const int64_t c = (HEAD_THREADS + n - 1) / n;
    return c < 1 ? 1 : c > HEAD_MAX_CHUNKS ? HEAD_MAX_CHUNKS : (int)c;
}

/* (dataset d, class c, input column j; j = D: the bias) of cell i of the
 * heads' [ND, CMAX, D + 1] weight gradient */
__device__ static inline void head_cell(int64_t i, int D, int CMAX, int &d, int &c, int &j)
{
    d = (int)(i / ((int64_t)CMAX * (D + 1)));
    c = (int)(i / (D + 1) % CMAX);
    j = (int)(i % (D + 1));
}

/* part[ch][(d, c, j)] = sum over the samples b of dataset d in chunk ch of
 * dout[b, c] inp[b, j] (inp[b, D] = 1: the bias), in order; 0 for c beyond
 * dataset d's classes */
static __global__ void head_bwd_weight_partial_kernel(float *part, const float *dout, const float *inp,
                                                      const int *classes, const int32_t *dataset, int B, int D,
                                                      int CMAX, int ND)
{
    const int64_t n = (int64_t)ND * CMAX * (D + 1), i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    int d, c, j;
    head_cell(i, D, CMAX, d, c, j);
    const int per = (B + (int)gridDim.y - 1) / (int)gridDim.y, lo = (int)blockIdx.y * per, hi = min(B, lo + per);
    float s = 0.0f;
    if (c < classes[d])
        for (int b = lo; b < hi; b++)
            if (dataset[b] == d)
                s += dout[(int64_t)b * CMAX + c] * (j < D ? inp[(int64_t)b * D + j] : 1.0f);
    part[(int64_t)blockIdx.y * n + i] = s;
}

/* dw_d[c, j] += the chunks' sums in order; db_d[c] likewise */
static __global__ void head_bwd_weight_final_kernel(float *grad, const float *part, const int64_t *w_off,
                                                    const int64_t *b_off, const int *classes, int D, int CMAX, int ND,
                                                    int chunks)
{
    const int64_t n = (int64_t)ND * CMAX * (D + 1), i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    int d, c, j;
    head_cell(i, D, CMAX, d, c, j);
    if (c >= classes[d])
        return;
    float s = 0.0f;
    for (int ch = 0; ch < chunks; ch++)
        s += part[(int64_t)ch * n + i];
    if (j < D)
        grad[w_off[d] + (int64_t)c * D + j] += s;
    else
        grad[b_off[d] + c] += s;
}

/* head_off: the datasets' weight offsets, then their bias offsets */
static inline void head_forward(const kctx *k, float *out, const float *inp, const float *param,
                                const int64_t *head_off, const int *classes, const int32_t *dataset, int B, int D,
                                int CMAX, int ND)
{
    head_fwd_kernel<<<(unsigned)(((int64_t)B * CMAX + 7) / 8), 256, 0, k->stream>>>(
        out, inp, param, head_off, head_off + ND, classes, dataset, B, D, CMAX);
    LAUNCH_CHECK();
}

static inline void head_backward(const kctx *k, float *dinp, float *grad, const float *dout, const float *inp,
                                 const float *param, const int64_t *head_off, const int *classes,
                                 const int32_t *dataset, int B, int D, int CMAX, int ND, int acc)
{
    head_bwd_input_kernel<<<blocks_for((int64_t)B * D, 256), 256, 0, k->stream>>>(dinp, dout, param, head_off, classes,
                                                                                 dataset, B, D, CMAX, acc);
    LAUNCH_CHECK();
    const int64_t n = (int64_t)ND * CMAX * (D + 1);
    const int chunks = head_chunks(n);
    red_need(k, chunks * n);
    head_bwd_weight_partial_kernel<<<dim3(blocks_for(n, 256), (unsigned)chunks), 256, 0, k->stream>>>(
        k->red, dout, inp, classes, dataset, B, D, CMAX, ND);
    LAUNCH_CHECK();
    head_bwd_weight_final_kernel<<<blocks_for(n, 256), 256, 0, k->stream>>>(grad, k->red, head_off, head_off + ND,
                                                                            classes, D, CMAX, ND, chunks);
    LAUNCH_CHECK();
}

/* Cross-entropy with label smoothing, one warp per sample: dlogits =
 * (softmax - target) * scale over the sample's C classes, 0 beyond;
 * loss[b] the sample's loss. classes[d] per dataset. The target is *lam_p
 * of labels[b]'s smoothed one-hot and the rest of labels_mix[b]'s
 * (CutMix). */
static __global__ void softmax_xent_kernel(float *dlogits, float *loss, const float *logits, const int32_t *labels,
                                           const int32_t *labels_mix, const float *lam_p, const int32_t *dataset,
                                           const int *classes, int B, int CMAX, float eps, float scale)
{
    const int b = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (b >= B)
        return;
    const int C = classes[dataset[b]], label = labels[b], label_mix = labels_mix[b];
    const double lam = *lam_p; /* CutMix's share of label; 1: the plain loss, bit for bit */
    const float *l = logits + (int64_t)b * CMAX;
    float mx = -INFINITY;
    for (int c = lane; c < C; c += 32)
        mx = fmaxf(mx, l[c]);
    mx = warp_max(mx);
    double sum = 0.0;
    for (int c = lane; c < C; c += 32)
        sum += exp((double)(l[c] - mx));
    sum = warp_sum_d(sum);
    const double lse = mx + log(sum);
    double acc = 0.0;
    float *dl = dlogits + (int64_t)b * CMAX;
    for (int c = lane; c < CMAX; c += 32) {
        if (c >= C) {
            dl[c] = 0.0f;
            continue;
        }
        const double logp = l[c] - lse;
        const double ta = (c == label ? 1.0 - eps : 0.0) + (double)eps / C;
        const double tb = (c == label_mix ? 1.0 - eps : 0.0) + (double)eps / C;
        const double target = lam * ta + (1.0 - lam) * tb;
        acc -= target * logp;
        dl[c] = (float)((exp(logp) - target) * scale);
    }
    acc = warp_sum_d(acc);
    if (lane == 0)
        loss[b] = (float)acc;
}

/* acc[0] += sum of v[0..n) / n (one block, in a fixed order) */
static __global__ void mean_accumulate_kernel(double *acc, const float *v, int n)
{
    __shared__ double sm[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        s += v[i];
    s = warp_sum_d(s);
    if (threadIdx.x % 32 == 0)
        sm[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < (int)blockDim.x / 32; w++)
            t += sm[w];
        acc[0] += t / n;
    }
}

/* ---- mixture of experts -------------------------------------------------------------------------------
 *
 * The experts' rows are laid out [E, cap, *]: expert e's kept choices in
 * rows e*cap + slot, slot < count[e]; the rows past count[e] are zeros in
 * the forward and backward passes, so the expert products are one strided
 * batched product with shapes fixed for the step. (The CPU packs the
 * rows; the numbers are the same.) */

/* Tutel's capacity, as ops.h: K * floor(cf * ceil(N / E)) rows per expert,
 * at least 1, at most N; N when dropless */
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

/* logits[n, e] += std * N(0, 1) from (seed, stream, step, i0 + n*E + e); i0: the first
 * element of this process's share of the batch */
static __global__ void gate_noise_kernel(float *logits, int64_t n, float std, uint64_t seed, int stream,
                                         const int64_t *step, int64_t i0)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        logits[i] +=
            std * (float)rng_normal_dev(seed, (uint64_t)stream, ((uint64_t)*step << 32) + (uint64_t)(i0 + i));
}

static inline void gate_noise(const kctx *k, float *logits, int64_t n, float std, uint64_t seed, int stream,
                              const int64_t *step, int64_t i0)
{
    gate_noise_kernel<<<blocks_for(n, 256), 256, 0, k->stream>>>(logits, n, std, seed, stream, step, i0);
    LAUNCH_CHECK();
}

/* One warp per token: softmax (sums in double, as the CPU), log-sum-exp,
 * the top K experts (ties to the lower expert), their gates, the token's
 * priority (top-1 probability) and its router entropy. */
template <int E, int K>
static __global__ void router_kernel(float *probs, float *lse, int *topk, float *topp, float *gate, float *prio,
                                     float *entropy, int *iota, const float *logits, int N, int normalize)
{
    constexpr int PER = (E + 31) / 32;
    const int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N)
        return;
    const float *l = logits + (int64_t)n * E;
    float v[PER];
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const int e = lane + 32 * j;
        v[j] = e < E ? l[e] : -INFINITY;
        mx = fmaxf(mx, v[j]);
    }
    mx = warp_max(mx);
    double sum = 0.0;
#pragma unroll
    for (int j = 0; j < PER; j++)
        if (lane + 32 * j < E)
            sum += exp((double)(v[j] - mx));
    sum = warp_sum_d(sum);
    double h = 0.0;
    float *p = probs + (int64_t)n * E;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const int e = lane + 32 * j;
        if (e < E) {
            const float pe = (float)(exp((double)(v[j] - mx)) / sum);
            v[j] = pe;
            p[e] = pe;
            if (pe > 0.0f)
                h -= (double)pe * log((double)pe);
        } else {
            v[j] = -1.0f;
        }
    }
    h = warp_sum_d(h);
    /* top K: K rounds of a warp arg-max, ties to the lower expert */
    float val[K];
    int idx[K];
    float denom = 0.0f;
#pragma unroll
    for (int k = 0; k < K; k++) {
        float best = -2.0f;
        int be = 0x7fffffff;
#pragma unroll
        for (int j = 0; j < PER; j++) {
            const int e = lane + 32 * j;
            if (v[j] > best || (v[j] == best && e < be)) {
                best = v[j];
                be = e;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float ob = __shfl_xor_sync(0xffffffffu, best, o);
            const int oe = __shfl_xor_sync(0xffffffffu, be, o);
            if (ob > best || (ob == best && oe < be)) {
                best = ob;
                be = oe;
            }
        }
        val[k] = best;
        idx[k] = be;
        denom += best;
#pragma unroll
        for (int j = 0; j < PER; j++)
            if (lane + 32 * j == be)
                v[j] = -1.0f; /* taken */
    }
    if (lane == 0) {
        lse[n] = (float)(mx + log(sum));
        for (int k = 0; k < K; k++) {
            topk[(int64_t)n * K + k] = idx[k];
            topp[(int64_t)n * K + k] = val[k];
            gate[(int64_t)n * K + k] = (normalize && K > 1) ? val[k] / denom : val[k];
        }
        prio[n] = val[0];
        entropy[n] = (float)h;
        iota[n] = n;
    }
}

/* router_kernel for at most ROUTER_THREAD_E experts: a thread per token,
 * each sum in expert order as the CPU's (router_softmax, moe_topk_row).
 * A warp per token left most lanes idle at these widths (7 of 32 on
 * config P) and spent its issue on shuffles: 46 us a layer on P. */
#define ROUTER_THREAD_E 16
template <int E, int K>
static __global__ void router_thread_kernel(float *probs, float *lse, int *topk, float *topp, float *gate,
                                            float *prio, float *entropy, int *iota, const float *logits, int N,
                                            int normalize)
{
    static_assert(E <= ROUTER_THREAD_E && K <= E, "router_thread_kernel: a token's experts in registers");
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N)
        return;
    const float *l = logits + (int64_t)n * E;
    float v[E];
    float mx = -INFINITY;
#pragma unroll
    for (int e = 0; e < E; e++) {
        v[e] = l[e];
        mx = fmaxf(mx, v[e]);
    }
    double ex[E], sum = 0.0;
#pragma unroll
    for (int e = 0; e < E; e++) {
        ex[e] = exp((double)(v[e] - mx));
        sum += ex[e];
    }
    double h = 0.0;
    float *p = probs + (int64_t)n * E;
#pragma unroll
    for (int e = 0; e < E; e++) {
        const float pe = (float)(ex[e] / sum);
        v[e] = pe;
        p[e] = pe;
        if (pe > 0.0f)
            h -= (double)pe * log((double)pe);
    }
    /* top K, ties to the lower expert (a strict > in expert order) */
    float val[K], denom = 0.0f;
#pragma unroll
    for (int k = 0; k < K; k++) {
        float best = -2.0f;
        int be = 0x7fffffff;
#pragma unroll
        for (int e = 0; e < E; e++)
            if (v[e] > best) {
                best = v[e];
                be = e;
            }
#pragma unroll
        for (int e = 0; e < E; e++)
            if (e == be)
                v[e] = -1.0f; /* taken */
        topk[(int64_t)n * K + k] = be;
        topp[(int64_t)n * K + k] = best;
        val[k] = best;
        denom += best;
    }
#pragma unroll
    for (int k = 0; k < K; k++)
        gate[(int64_t)n * K + k] = (normalize && K > 1) ? val[k] / denom : val[k];
    prio[n] = val[0];
    lse[n] = (float)(mx + log(sum));
    entropy[n] = (float)h;
    iota[n] = n;
}

#define ROUTE_BLOCK 1024 /* choices per block of the slot assignment */

/* The choices in routing order: position p = k * N + i is token order[i]'s
 * k-th choice. Pass 1: how many choices of each block go to each expert. */
template <int E, int K>
static __global__ void route_count_kernel(int *blk_count, const int *topk, const int *order, int N)
{
    __shared__ int cnt[E];
    for (int e = threadIdx.x; e < E; e += blockDim.x)
        cnt[e] = 0;
    __syncthreads();
    const int64_t p = (int64_t)blockIdx.x * ROUTE_BLOCK + threadIdx.x;
    if (p < (int64_t)N * K) {
        const int k = (int)(p / N), n = order[p % N];
        atomicAdd(&cnt[topk[(int64_t)n * K + k]], 1); /* integer counts: exact in any order */
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x)
        blk_count[(int64_t)blockIdx.x * E + e] = cnt[e];
}

/* Pass 2 (one block, a warp per expert): each block's first rank per
 * expert, and the kept count of each expert, min(total, cap). A warp
 * loads ROUTE_SCAN_RUN blocks' counts a lane before it sums any (one
 * thread walking them in turn waited a load's latency per block: 30 us a
 * layer on config P's 195 blocks), then scans them 32 at a time. */
#define ROUTE_SCAN_WARPS 32
#define ROUTE_SCAN_RUN 8
template <int E>
static __global__ void __launch_bounds__(32 * ROUTE_SCAN_WARPS)
    route_scan_kernel(int *blk_base, int *count, const int *blk_count, int nblk, int cap)
{
    const int lane = threadIdx.x % 32;
    for (int e = threadIdx.x / 32; e < E; e += ROUTE_SCAN_WARPS) {
        int run = 0;
        for (int q0 = 0; q0 < nblk; q0 += 32 * ROUTE_SCAN_RUN) {
            int c[ROUTE_SCAN_RUN];
#pragma unroll
            for (int j = 0; j < ROUTE_SCAN_RUN; j++) {
                const int q = q0 + 32 * j + lane;
                c[j] = q < nblk ? blk_count[(int64_t)q * E + e] : 0;
            }
#pragma unroll
            for (int j = 0; j < ROUTE_SCAN_RUN; j++) {
                int incl = c[j]; /* the inclusive sum over this run's lanes */
                for (int o = 1; o < 32; o <<= 1) {
                    const int t = __shfl_up_sync(0xffffffffu, incl, o);
                    if (lane >= o)
                        incl += t;
                }
                const int q = q0 + 32 * j + lane;
                if (q < nblk)
                    blk_base[(int64_t)q * E + e] = run + incl - c[j];
                run += __shfl_sync(0xffffffffu, incl, 31);
            }
        }
        if (lane == 0)
            count[e] = run < cap ? run : cap;
    }
}

/* Pass 3: each choice's rank among the earlier choices of its expert (its
 * slot if below cap, else dropped: -1); the row -> token map of the kept
 * choices. The same slots as the CPU's sequential loop. */
template <int E, int K>
static __global__ void route_assign_kernel(int *slot, int *row_token, int *row_k, const int *blk_base, const int *topk,
                                           const int *order, int N, int cap)
{
    __shared__ int wcnt[ROUTE_BLOCK / 32][E];
    const int wid = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int i = threadIdx.x; i < (ROUTE_BLOCK / 32) * E; i += blockDim.x)
        wcnt[i / E][i % E] = 0;
    __syncthreads();
    const int64_t p = (int64_t)blockIdx.x * ROUTE_BLOCK + threadIdx.x;
    const bool live = p < (int64_t)N * K;
    int k = 0, n = 0, e = -1;
    if (live) {
        k = (int)(p / N);
        n = order[p % N];
        e = topk[(int64_t)n * K + k];
    }
    const unsigned same = __match_any_sync(0xffffffffu, e);
    const int before = __popc(same & ((1u << lane) - 1u));
    if (live && before == 0)
        wcnt[wid][e] = __popc(same);
    __syncthreads();
    if (!live)
        return;
    int rank = blk_base[(int64_t)blockIdx.x * E + e] + before;
    for (int w = 0; w < wid; w++)
        rank += wcnt[w][e];
    if (rank < cap) {
        slot[(int64_t)n * K + k] = rank;
        row_token[(int64_t)e * cap + rank] = n;
        row_k[(int64_t)e * cap + rank] = k;
    } else {
        slot[(int64_t)n * K + k] = -1;
    }
}

/* Device state of one MoE layer's routing (pointers into the arenas). */
typedef struct moe_route_buf {
    float *probs, *lse, *topp, *gate, *prio, *prio_sorted, *entropy;
    int *topk, *slot, *count, *row_token, *row_k, *order, *iota, *blk_count, *blk_base;
    void *sort_tmp;
    size_t sort_bytes;
} moe_route_buf;

/* order = the tokens by descending priority: cub's radix sort, which is
 * stable, so equal priorities keep token order as the CPU's merge sort.
 * With tmp NULL, *bytes is set to the scratch it needs. */
static inline int moe_prio_sort_dev(void *tmp, size_t *bytes, const float *keys_in, float *keys_out,
                                    const int *vals_in, int *vals_out, int n, cudaStream_t s)
{
    return cub::DeviceRadixSort::SortPairsDescending(tmp, *bytes, keys_in, keys_out, vals_in, vals_out, n, 0,
                                                     (int)sizeof(float) * 8, s) == cudaSuccess
               ? 0
               : -1;
}

/* router_kernel over N tokens, a warp each, into r */
template <int E, int K>
static inline void moe_router_softmax(const kctx *k, moe_route_buf *r, const float *logits, int N, int normalize)
{
    static_assert(E <= 256, "the CUDA backend routes to at most 256 experts");
    if constexpr (E <= ROUTER_THREAD_E && K <= E)
        router_thread_kernel<E, K><<<(unsigned)((N + 255) / 256), 256, 0, k->stream>>>(
            r->probs, r->lse, r->topk, r->topp, r->gate, r->prio, r->entropy, r->iota, logits, N, normalize);
    else
        router_kernel<E, K><<<(unsigned)((N + 7) / 8), 256, 0, k->stream>>>(r->probs, r->lse, r->topk, r->topp,
                                                                           r->gate, r->prio, r->entropy, r->iota,
                                                                           logits, N, normalize);
    LAUNCH_CHECK();
}

/* Softmax, top-k and capacity of one layer, every choice claiming its slot
 * in GShard order (first choices before second ones), by descending top-1
 * probability with batch priority. cap >= N: dropless. */
template <int E, int K>
static inline void moe_route(const kctx *k, moe_route_buf *r, const float *logits, int N, int cap, int normalize,
                             int batch_priority)
{
    moe_router_softmax<E, K>(k, r, logits, N, normalize);
    const int *order = r->iota;
    if (batch_priority) {
        size_t bytes = r->sort_bytes;
        if (moe_prio_sort_dev(r->sort_tmp, &bytes, r->prio, r->prio_sorted, r->iota, r->order, N, k->stream) != 0) {
            fprintf(stderr, "train: the routing sort failed\n");
            exit(1);
        }
        order = r->order;
    }
    const int nblk = (int)(((int64_t)N * K + ROUTE_BLOCK - 1) / ROUTE_BLOCK);
    route_count_kernel<E, K><<<(unsigned)nblk, ROUTE_BLOCK, 0, k->stream>>>(r->blk_count, r->topk, order, N);
    LAUNCH_CHECK();
    route_scan_kernel<E><<<1, 32 * (E < ROUTE_SCAN_WARPS ? E : ROUTE_SCAN_WARPS), 0, k->stream>>>(
        r->blk_base, r->count, r->blk_count, nblk, cap);
    LAUNCH_CHECK();
    route_assign_kernel<E, K><<<(unsigned)nblk, ROUTE_BLOCK, 0, k->stream>>>(r->slot, r->row_token, r->row_k,
                                                                             r->blk_base, r->topk, order, N, cap);
    LAUNCH_CHECK();
}

/* ---- expert choice (Zhou et al., 2022), as ops.h's moe_route_expert_choice ---- */

/* keys[e][n] = probs[n][e], vals[e][n] = n; off[e] = e * N for e <= E */
template <int E>
static __global__ void ec_keys_kernel(float *keys, int *vals, int *off, const float *probs, int N)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= E && blockIdx.x == 0)
        off[i] = (int)(i * N);
    if (i >= (int64_t)N * E)
        return;
    const int n = (int)(i / E), e = (int)(i % E);
    keys[(int64_t)e * N + n] = probs[i];
    vals[(int64_t)e * N + n] = n;
}

/* every choice dropped until its expert takes it; count[e] = min(cap, N) */
template <int E>
static __global__ void ec_clear_kernel(int *slot, int *count, int N, int cap)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < E && blockIdx.x == 0)
        count[i] = cap < N ? cap : N;
    if (i < (int64_t)N * E)
        slot[i] = -1;
}

/* expert e's first min(cap, N) tokens of its descending order take their
 * slots: the choice k of token n that names e (every token lists every
 * expert) gets slot i */
template <int E>
static __global__ void ec_assign_kernel(int *slot, int *row_token, int *row_k, const int *sorted, const int *topk,
                                        int N, int cap)
{
    const int take = cap < N ? cap : N;
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (int64_t)E * take)
        return;
    const int e = (int)(t / take), i = (int)(t % take);
    const int n = sorted[(int64_t)e * N + i];
    for (int k = 0; k < E; k++)
        if (topk[(int64_t)n * E + k] == e) {
            slot[(int64_t)n * E + k] = i;
            row_token[(int64_t)e * cap + i] = n;
            row_k[(int64_t)e * cap + i] = k;
            break;
        }
}

/* The scratch of expert choice's sort: keys and token indices twice
 * (cub's double buffer), E + 1 segment offsets. */
typedef struct ec_buf {
    float *keys[2];
    int *vals[2], *off;
} ec_buf;

/* cub's segmented sort, descending, stable: within an expert, equal
 * probabilities keep token order (ops.h: ties to the lower token). With
 * tmp NULL, *bytes is set to the scratch it needs. Returns the buffer
 * index the result is in, or -1. */
static inline int ec_sort_dev(void *tmp, size_t *bytes, ec_buf *b, int64_t items, int segments, cudaStream_t s)
{
    cub::DoubleBuffer<float> keys(b->keys[0], b->keys[1]);
    cub::DoubleBuffer<int> vals(b->vals[0], b->vals[1]);
    if (cub::DeviceSegmentedRadixSort::SortPairsDescending(tmp, *bytes, keys, vals, (int)items, segments, b->off,
                                                           b->off ? b->off + 1 : b->off, 0, (int)sizeof(float) * 8,
                                                           s) != cudaSuccess)
        return -1;
    return keys.selector;
}

/* Expert choice: the softmax with every expert listed per token, best
 * first (K = E, gates the probabilities), then each expert takes the cap
 * tokens of highest probability for it. */
template <int E>
static inline void moe_route_expert_choice(const kctx *k, moe_route_buf *r, ec_buf *ec, const float *logits, int N,
                                           int cap)
{
    moe_router_softmax<E, E>(k, r, logits, N, 0);
    const int64_t items = (int64_t)N * E;
    ec_keys_kernel<E><<<blocks_for(items > E + 1 ? items : E + 1, 256), 256, 0, k->stream>>>(
        ec->keys[0], ec->vals[0], ec->off, r->probs, N);
    LAUNCH_CHECK();
    size_t bytes = r->sort_bytes;
    const int sel = ec_sort_dev(r->sort_tmp, &bytes, ec, items, E, k->stream);
    if (sel < 0) {
        fprintf(stderr, "train: the expert-choice sort failed\n");
        exit(1);
    }
    ec_clear_kernel<E><<<blocks_for(items > E ? items : E, 256), 256, 0, k->stream>>>(r->slot, r->count, N, cap);
    LAUNCH_CHECK();
    const int take = cap < N ? cap : N;
    ec_assign_kernel<E><<<blocks_for((int64_t)E * take, 256), 256, 0, k->stream>>>(
        r->slot, r->row_token, r->row_k, ec->vals[sel], r->topk, N, cap);
    LAUNCH_CHECK();
}

/* xe[E, cap, D]: the kept tokens' rows, zeros past each expert's count (T:
 * float, or bf16 for the experts' first product: moe_x16) */
template <typename T, int V>
static __global__ void moe_gather_kernel(T *__restrict__ xe, const float *__restrict__ x,
                                         const int *__restrict__ row_token, const int *__restrict__ count, int E,
                                         int cap, int D)
{
    const int lane = threadIdx.x % 32;
    const int64_t rows = (int64_t)E * cap;
    for (int64_t row = row_warp(); row < rows; row += row_warps()) {
        const int e = (int)(row / cap), s = (int)(row - (int64_t)e * cap);
        T *o = xe + row * D;
        const float *src = s < count[e] ? x + (int64_t)row_token[row] * D : nullptr;
        /* two chunks' loads in flight at once (P: 0.75 -> 0.67 ms a step) */
#pragma unroll 2
        for (int c = lane * V; c < D; c += 32 * V) {
            float v[V] = {};
            if (src)
                vload<V>(v, src + c);
            vstore<V>(o + c, v);
        }
    }
}

/* out[n] = sum over kept choices of gate * (ye[row] + b2[expert]) (a
 * token's own rows, in choice order: no atomics); b2 NULL: ye has the
 * bias already (expert parallelism, where b2 lives on the expert's GPU).
 * YT: float, or bf16 (the rows as the second product wrote them in bf16
 * precision on one GPU: moe_x16) */
template <int K, int V, typename YT>
static __global__ void moe_combine_kernel(float *__restrict__ out, const YT *__restrict__ ye,
                                          const float *__restrict__ b2, const int *__restrict__ topk,
                                          const int *__restrict__ slot, const float *__restrict__ gate,
                                          const float *__restrict__ res, int N, int cap, int D)
{
    const int lane = threadIdx.x % 32;
    for (int64_t n = row_warp(); n < N; n += row_warps()) {
        const YT *src[K];
        const float *bias[K];
        float g[K];
#pragma unroll
        for (int k = 0; k < K; k++) {
            const int s = slot[n * K + k], e = topk[n * K + k];
            src[k] = s >= 0 ? ye + ((int64_t)e * cap + s) * D : nullptr;
            bias[k] = b2 && s >= 0 ? b2 + (int64_t)e * D : nullptr;
            g[k] = gate[n * K + k];
        }
        float *o = out + n * D;
        for (int d = lane * V; d < D; d += 32 * V) {
            float acc[V] = {};
#pragma unroll
            for (int k = 0; k < K; k++)
                if (src[k]) {
                    float y[V], b[V] = {};
                    vload<V>(y, src[k] + d);
                    if (bias[k])
                        vload<V>(b, bias[k] + d);
#pragma unroll
                    for (int j = 0; j < V; j++)
                        acc[j] += g[k] * (bias[k] ? y[j] + b[j] : y[j]);
                }
            if (res) { /* after the sum, as the residual's own add did */
                float x[V];
                vload<V>(x, res + n * D + d);
#pragma unroll
                for (int j = 0; j < V; j++)
                    acc[j] += x[j];
            }
            vstore<V>(o + d, acc);
        }
    }
}

/* Expert parallelism: the rows of a MoE layer travel between the P GPUs of
 * an expert-parallel group (kctx.exchange, over NCCL). Each GPU routes its
 * own tokens into [E, cap, *] rows; GPU q of the group computes experts
 * [q * E/P, (q+1) * E/P) on the rows every GPU of the group routed to them,
 * laid out [E/P, P, cap, *] (so that one expert's rows are contiguous).
 * Dispatch sends [E, cap, *] to [E/P, P, cap, *], combine the reverse. */
enum { EXCHANGE_DISPATCH = 0, EXCHANGE_COMBINE = 1 };

/* e < 0: every expert's rows, in order on k->stream (returns NULL); else
 * local expert e's, on the exchange stream (returns the event of its end) */
template <int P>
static inline cudaEvent_t moe_exchange(const kctx *k, float *dst, const float *src, int64_t chunk, int el, int dir,
                                       int e = -1)
{
    if (P > 1)
        return k->exchange(k, dst, src, chunk, el, P, dir, e);
    return nullptr;
}

/* k->stream waits for an exchange (NULL: nothing to wait for) */
static inline void moe_exchange_wait(const kctx *k, cudaEvent_t done)
{
    if (done)
        CUDA_CHECK(cudaStreamWaitEvent(k->stream, done, 0));
}

/* ---- The experts' grouped product on Hopper (bf16 precision, one GPU) ----
 *
 * out[e][m, :] = a[e][m, :] b[e]^T (b [n][N][K], a layer's weight as
 * stored: the forward's two products) or a[e][m, :] b[e] (NM: b [n][K][N],
 * the backward's da and dx) for the rows m < count[e] of experts e < n,
 * bf16 in, fp32 accumulation, bf16 out. cuBLAS's strided batched product
 * takes every expert's capacity of rows, padding and all, as the counts
 * live on the device; this product reads them there and skips each
 * expert's row tiles past its count (a fifth of P's and S's rows). Rows
 * past the count in the last live tile get the padding rows' products;
 * tiles past it are not written: the passes after read the live rows
 * alone (bias_act's and act_bias_backward's live, the combine's slots,
 * the scatter's backward).
 *
 * The kernel (notes-gpu.md item 80: what it and its variants measured):
 * a persistent grid, a block an SM, walking the live tiles of GG_BM x
 * BN; three warpgroups: a producer, one thread of which issues the bulk
 * tensor copies (TMA) of each 64-wide k-tile of a and b into a ring of
 * stages in the 128-byte swizzle, completing on the stage's "full"
 * mbarrier, and two consumers, each multiplying 64 of the tile's rows by
 * the BN columns with wgmma m64nBNk16 from shared memory and freeing the
 * stage on its "empty" mbarrier; each consumer's epilogue rounds its
 * rows to bf16 in shared memory (the same swizzle) and one thread stores
 * them by bulk tensor copies, which clip at the capacity.
 *
 * EPI (gg_mm's gh and db: the da product of moe_ffn_backward_rows) puts
 * the activation's backward in the epilogue, in place of
 * act_bias_backward's pass over the hidden values: out = (a b) * gh, gh
 * [n][rows][N] the activation's derivative as bias_act's grad_h left it
 * in bf16, and db += out's column sums. Each consumer's thread 0 copies
 * its 64 rows of gh's tile into its epilogue buffer halfway through the
 * tile's products; the epilogue multiplies in place (each thread its own
 * accumulators' elements), writes zeros in the rows past the count (gh
 * holds nothing there) and stores the rows; during the next tile's
 * first k-step (or after its last tile) it sums its 64 rows' columns of
 * out as rounded to bf16 (what the products after read) into a partial
 * sum of k->red a consumer and tile; gg_colsum_kernel then adds those in
 * row order (deterministic). The row tiles past each count are not
 * written: out is a's room there (moe_ffn_backward_rows), where bias_act
 * wrote zeros past the count, which the weight gradient's product after
 * reads (every row). Writing them again took 9 us a layer on S.
 * sm_90a only: elsewhere (the PTX target) gg_mm is not called (kctx.gg).
 */
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GG_SM90 1
#else
#define GG_SM90 0
#endif

#define GG_BM 128
#define GG_BK 64

/* the widest tile of columns that divides N (0: none; cuBLAS then) */
template <int N> __host__ __device__ constexpr int gg_bn()
{
    return N % 256 == 0 ? 256 : N % 192 == 0 ? 192 : N % 128 == 0 ? 128 : 0;
}

/* whether a product summing K terms into N columns comes in whole tiles */
template <int K, int N> __host__ __device__ constexpr bool gg_fits()
{
    return gg_bn<N>() != 0 && K % GG_BK == 0;
}

/* stages: as many as fit beside the epilogue's buffers (227 KB a block) */
template <int BN> __host__ __device__ constexpr int gg_stages()
{
    return BN == 256 ? 3 : 4;
}

template <int BN> struct gg_smem {
    __nv_bfloat16 a[gg_stages<BN>()][GG_BM * GG_BK]; /* 16 KB a stage, K-major rows of 128 bytes */
    __nv_bfloat16 b[gg_stages<BN>()][GG_BK * BN];    /* K-major: BN rows; N-major: BN / 64 boxes of 64 x 64 */
    __nv_bfloat16 c[2][64 * BN];                     /* each consumer's rows, BN / 64 boxes of 64 x 64 */
    uint64_t full[gg_stages<BN>()], empty[gg_stages<BN>()];
    uint64_t gfull[2]; /* EPI: each consumer's tile of gh, copied into its c */
};

/* EPI's partial column sums: two an output row tile (a consumer's 64
 * rows each), [n][gg_halves(rows)][N] */
__host__ __device__ constexpr int gg_halves(int rows)
{
    return (rows + GG_BM - 1) / GG_BM * 2;
}

__device__ static inline uint32_t gg_smem_at(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ static inline void gg_bar_init(uint64_t *bar, int count)
{
#if GG_SM90
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(gg_smem_at(bar)), "r"(count));
#else
    (void)bar, (void)count;
#endif
}

__device__ static inline void gg_bar_expect(uint64_t *bar, uint32_t bytes)
{
#if GG_SM90
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(gg_smem_at(bar)), "r"(bytes)
                 : "memory");
#else
    (void)bar, (void)bytes;
#endif
}

__device__ static inline void gg_bar_arrive(uint64_t *bar)
{
#if GG_SM90
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(gg_smem_at(bar)) : "memory");
#else
    (void)bar;
#endif
}

/* until the barrier's phase of this parity has completed */
__device__ static inline void gg_bar_wait(uint64_t *bar, uint32_t parity)
{
#if GG_SM90
    asm volatile("{\n"
                 ".reg .pred done;\n"
                 "GG_WAIT_%=:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra GG_WAIT_%=;\n"
                 "}\n" ::"r"(gg_smem_at(bar)),
                 "r"(parity)
                 : "memory");
#else
    (void)bar, (void)parity;
#endif
}

/* the box of a 2-D tensor map at (inner c0, outer c1) into dst */
__device__ static inline void gg_load(void *dst, const CUtensorMap *map, uint64_t *bar, int c0, int c1)
{
#if GG_SM90
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], "
                 "[%2];\n" ::"r"(gg_smem_at(dst)),
                 "l"((uint64_t)map), "r"(gg_smem_at(bar)), "r"(c0), "r"(c1)
                 : "memory");
#else
    (void)dst, (void)map, (void)bar, (void)c0, (void)c1;
#endif
}

/* the box of a 3-D tensor map at (c0, c1, c2) into dst */
__device__ static inline void gg_load3(void *dst, const CUtensorMap *map, uint64_t *bar, int c0, int c1, int c2)
{
#if GG_SM90
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, "
                 "%5}], [%2];\n" ::"r"(gg_smem_at(dst)),
                 "l"((uint64_t)map), "r"(gg_smem_at(bar)), "r"(c0), "r"(c1), "r"(c2)
                 : "memory");
#else
    (void)dst, (void)map, (void)bar, (void)c0, (void)c1, (void)c2;
#endif
}

/* src to the box of a 3-D tensor map at (c0, c1, c2) */
__device__ static inline void gg_store(const CUtensorMap *map, const void *src, int c0, int c1, int c2)
{
#if GG_SM90
    asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::"l"(
                     (uint64_t)map),
                 "r"(gg_smem_at(src)), "r"(c0), "r"(c1), "r"(c2)
                 : "memory");
#else
    (void)map, (void)src, (void)c0, (void)c1, (void)c2;
#endif
}

/* wgmma's descriptor of an operand in the 128-byte swizzle (layout 1):
 * start, leading and stride offsets in bytes. K-major: 8-row atoms 1024
 * bytes apart (the leading offset unused); N-major: the 64-column boxes
 * `lead` apart, groups of 8 rows 1024 */
__device__ static inline uint64_t gg_desc(const void *p, uint32_t lead, uint32_t stride)
{
    const uint64_t a = gg_smem_at(p);
    return ((a & 0x3FFFFu) >> 4) | ((uint64_t)(lead >> 4) << 16) | ((uint64_t)(stride >> 4) << 32) | (1ull << 62);
}

/* d (64 x BN, fp32, wgmma's accumulator layout) (+)= a (64 x 16) b (16 x
 * BN; NM: N-major, wgmma's transposed b), asynchronous until committed and
 * waited for; acc 0: d = a b */
template <int BN, bool NM> struct gg_mma;

#define GG_R8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
                 "+f"(d[i + 6]), "+f"(d[i + 7])

template <bool NM> struct gg_mma<128, NM> {
    __device__ static inline void run(float (&d)[64], uint64_t a, uint64_t b, int acc)
    {
#if GG_SM90
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                     "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                     "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                     "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
                     "%64, %65, p, 1, 1, 0, %67;\n}\n"
                     : GG_R8(0), GG_R8(8), GG_R8(16), GG_R8(24), GG_R8(32), GG_R8(40), GG_R8(48), GG_R8(56)
                     : "l"(a), "l"(b), "r"(acc), "n"(NM ? 1 : 0));
#else
        (void)d, (void)a, (void)b, (void)acc;
#endif
    }
};

template <bool NM> struct gg_mma<192, NM> {
    __device__ static inline void run(float (&d)[96], uint64_t a, uint64_t b, int acc)
    {
#if GG_SM90
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %98, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n192k16.f32.bf16.bf16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                     "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                     "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                     "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
                     "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
                     "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95}, "
                     "%96, %97, p, 1, 1, 0, %99;\n}\n"
                     : GG_R8(0), GG_R8(8), GG_R8(16), GG_R8(24), GG_R8(32), GG_R8(40), GG_R8(48), GG_R8(56),
                       GG_R8(64), GG_R8(72), GG_R8(80), GG_R8(88)
                     : "l"(a), "l"(b), "r"(acc), "n"(NM ? 1 : 0));
#else
        (void)d, (void)a, (void)b, (void)acc;
#endif
    }
};

template <bool NM> struct gg_mma<256, NM> {
    __device__ static inline void run(float (&d)[128], uint64_t a, uint64_t b, int acc)
    {
#if GG_SM90
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                     "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                     "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                     "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
                     "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
                     "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
                     "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
                     "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
                     "%128, %129, p, 1, 1, 0, %131;\n}\n"
                     : GG_R8(0), GG_R8(8), GG_R8(16), GG_R8(24), GG_R8(32), GG_R8(40), GG_R8(48), GG_R8(56),
                       GG_R8(64), GG_R8(72), GG_R8(80), GG_R8(88), GG_R8(96), GG_R8(104), GG_R8(112), GG_R8(120)
                     : "l"(a), "l"(b), "r"(acc), "n"(NM ? 1 : 0));
#else
        (void)d, (void)a, (void)b, (void)acc;
#endif
    }
};
#undef GG_R8

/* the live tiles in order: expert e's row tiles below its count (GG_BM
 * rows each) by NT column tiles; tile t's expert, first row and column
 * tile, or false past the last */
__device__ static inline bool gg_tile(int t, const int *count, int n, int rows, int NT, int *e, int *m0, int *nt)
{
    for (int g = 0; g < n; g++) {
        const int tiles = (min(count[g], rows) + GG_BM - 1) / GG_BM * NT;
        if (t < tiles) {
            *e = g;
            *m0 = t / NT * GG_BM;
            *nt = t % NT;
            return true;
        }
        t -= tiles;
    }
    return false;
}

/* The epilogue's accumulators in 8 x 8 blocks: wgmma's layout gives lane
 * l of warp w rows 16 w + l / 4 and that + 8, columns 2 (l % 4) and + 1 of
 * each 8-column block j, as d[4 j .. 4 j + 3]: the layout of ldmatrix's and
 * stmatrix's blocks. Four blocks an instruction (columns j and j + 1 by the
 * warp's rows 0-7 and 8-15, in that order), lane l giving the address of
 * row l % 8 of block l / 8 in c's boxes of 64 x 64 (the 128-byte swizzle):
 * a quarter of the stores of four bytes a lane */
__device__ static inline uint32_t gg_frag_at(const __nv_bfloat16 *out, int j, int warp, int lane)
{
    const int jj = j + lane / 16, row = warp * 16 + lane / 8 % 2 * 8 + lane % 8;
    return gg_smem_at(out + jj / 8 * 64 * 64 + row * 64 + (jj % 8 ^ row % 8) * 8);
}

__device__ static inline void gg_stmatrix(uint32_t at, const uint32_t (&v)[4])
{
#if GG_SM90
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(at), "r"(v[0]), "r"(v[1]),
                 "r"(v[2]), "r"(v[3])
                 : "memory");
#else
    (void)at, (void)v;
#endif
}

__device__ static inline void gg_ldmatrix(uint32_t (&v)[4], uint32_t at)
{
#if GG_SM90
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3])
                 : "r"(at)
                 : "memory");
#else
    (void)at;
    v[0] = v[1] = v[2] = v[3] = 0;
#endif
}

/* EPI: the column sums of a consumer's 64 rows of out as rounded (what
 * the products after read) to dst[0, BN), row by row: a thread a pair of
 * columns; a warp's 32 pairs are a row of a box, 32 banks */
template <int BN> __device__ static inline void gg_col_sums(float *dst, const __nv_bfloat16 *out, int tid)
{
    for (int pr = tid; pr < BN / 2; pr += 128) {
        const int c0 = 2 * pr, q = c0 % 64 / 8;
        const __nv_bfloat16 *src = out + c0 / 64 * 64 * 64 + c0 % 8;
        float sx = 0.0f, sy = 0.0f;
#pragma unroll 8
        for (int rr = 0; rr < 64; rr++) {
            const float2 v =
                __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(src + rr * 64 + (q ^ (rr % 8)) * 8));
            sx += v.x;
            sy += v.y;
        }
        *reinterpret_cast<float2 *>(dst + c0) = make_float2(sx, sy);
    }
}

template <int BN, bool NM, bool EPI>
static __global__ void __launch_bounds__(384, 1)
    gg_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
              const __grid_constant__ CUtensorMap map_c, const __grid_constant__ CUtensorMap map_g,
              float *__restrict__ part, const int *__restrict__ count, int n, int rows, int K, int N)
{
#if GG_SM90
    constexpr int S = gg_stages<BN>();
    extern __shared__ __align__(1024) unsigned char gg_raw[];
    /* the 128-byte swizzle's boxes want 1024-byte alignment */
    gg_smem<BN> &s =
        *reinterpret_cast<gg_smem<BN> *>((reinterpret_cast<uintptr_t>(gg_raw) + 1023) & ~(uintptr_t)1023);
    const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
    const int NT = N / BN, KT = K / GG_BK;
    if (threadIdx.x == 0) {
        for (int i = 0; i < S; i++) {
            gg_bar_init(&s.full[i], 1);
            gg_bar_init(&s.empty[i], 8); /* a lane of each consumer warp */
        }
        gg_bar_init(&s.gfull[0], 1);
        gg_bar_init(&s.gfull[1], 1);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    int stage = 0, e, m0, nt;
    uint32_t phase = 0;
    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (tid == 0)
            for (int t = blockIdx.x; gg_tile(t, count, n, rows, NT, &e, &m0, &nt); t += gridDim.x)
                for (int kt = 0; kt < KT; kt++) {
                    gg_bar_wait(&s.empty[stage], phase ^ 1);
                    gg_bar_expect(&s.full[stage], (GG_BM * GG_BK + GG_BK * BN) * 2);
                    gg_load(s.a[stage], &map_a, &s.full[stage], kt * GG_BK, e * rows + m0);
                    if (NM)
                        for (int j = 0; j < BN / 64; j++)
                            gg_load(s.b[stage] + j * GG_BK * 64, &map_b, &s.full[stage], nt * BN + 64 * j,
                                    e * K + kt * GG_BK);
                    else
                        gg_load(s.b[stage], &map_b, &s.full[stage], kt * GG_BK, e * N + nt * BN);
                    if (++stage == S) {
                        stage = 0;
                        phase ^= 1;
                    }
                }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    const int half = wg - 1, warp = tid / 32, lane = tid % 32;
    const int r = warp * 16 + lane / 4;
    __nv_bfloat16 *out = s.c[half];
    float d[BN / 2];
    uint32_t gphase = 0;
    /* EPI: where the last tile's column sums go in part (-1: none pending) */
    int64_t done_at = -1;
    for (int t = blockIdx.x; gg_tile(t, count, n, rows, NT, &e, &m0, &nt); t += gridDim.x) {
        int prev = -1;
        for (int kt = 0; kt < KT; kt++) {
            gg_bar_wait(&s.full[stage], phase);
            asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
            const __nv_bfloat16 *a = s.a[stage] + half * 64 * GG_BK, *b = s.b[stage];
#pragma unroll
            for (int kk = 0; kk < GG_BK / 16; kk++)
                gg_mma<BN, NM>::run(d, gg_desc(a + 16 * kk, 16, 1024),
                                    NM ? gg_desc(b + 16 * kk * 64, 64 * GG_BK * 2, 1024)
                                       : gg_desc(b + 16 * kk, 16, 1024),
                                    kt > 0 || kk > 0);
            asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
            if (EPI) {
                /* the last tile's column sums from c while this k-tile's
                 * products run (they read registers and shared memory
                 * the products do not touch): in the epilogue they kept
                 * the tensor cores idle */
                if (kt == 0 && done_at >= 0) {
                    gg_col_sums<BN>(part + done_at, out, tid);
                    done_at = -1;
                }
                /* this tile's gh into c, halfway through its products,
                 * once every thread's sums and the last tile's stores
                 * have read c */
                if (kt == KT / 2) {
                    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + half) : "memory");
                    if (tid == 0) {
                        asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
                        gg_bar_expect(&s.gfull[half], 64 * BN * 2);
                        for (int j = 0; j < BN / 64; j++)
                            gg_load3(out + j * 64 * 64, &map_g, &s.gfull[half], nt * BN + 64 * j,
                                     m0 + 64 * half, e);
                    }
                }
            }
            /* the previous k-tile's products are done: its stage is free */
            asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
            if (prev >= 0 && lane == 0)
                gg_bar_arrive(&s.empty[prev]);
            prev = stage;
            if (++stage == S) {
                stage = 0;
                phase ^= 1;
            }
        }
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        if (lane == 0)
            gg_bar_arrive(&s.empty[prev]);
        /* the epilogue: this consumer's 64 rows in bf16, boxes of 64 x 64
         * in the 128-byte swizzle (chunk q of row r at q ^ r % 8: a warp's
         * stores meet 32 banks) by stmatrix (gg_frag_at), once the last
         * tile's copies have read the buffer; then one thread's bulk
         * copies */
        if (EPI) {
            /* out = acc * gh, in place over gh (ldmatrix, then stmatrix
             * to the same blocks), each thread on its own elements; zeros
             * from the count on (gh holds nothing there) */
            gg_bar_wait(&s.gfull[half], gphase);
            gphase ^= 1;
            const int live = min(count[e], rows) - m0 - 64 * half; /* this consumer's rows below the count */
#pragma unroll
            for (int j = 0; j < BN / 8; j += 2) {
                const uint32_t at = gg_frag_at(out, j, warp, lane);
                uint32_t g[4], v[4];
                gg_ldmatrix(g, at);
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    const float2 gv = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&g[u]));
                    v[u] = (u % 2 ? r + 8 : r) < live
                               ? bf16x2_bits(d[4 * j + 2 * u] * gv.x, d[4 * j + 2 * u + 1] * gv.y)
                               : 0u;
                }
                gg_stmatrix(at, v);
            }
        } else {
            if (tid == 0)
                asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
            asm volatile("bar.sync %0, 128;\n" ::"r"(1 + half) : "memory");
#pragma unroll
            for (int j = 0; j < BN / 8; j += 2) {
                const uint32_t v[4] = { bf16x2_bits(d[4 * j], d[4 * j + 1]), bf16x2_bits(d[4 * j + 2], d[4 * j + 3]),
                                        bf16x2_bits(d[4 * j + 4], d[4 * j + 5]),
                                        bf16x2_bits(d[4 * j + 6], d[4 * j + 7]) };
                gg_stmatrix(gg_frag_at(out, j, warp, lane), v);
            }
        }
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        asm volatile("bar.sync %0, 128;\n" ::"r"(1 + half) : "memory");
        if (tid == 0) {
            for (int j = 0; j < BN / 64; j++)
                gg_store(&map_c, out + j * 64 * 64, nt * BN + 64 * j, m0 + 64 * half, e);
            asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
        }
        if (EPI)
            done_at = ((int64_t)e * gg_halves(rows) + m0 / 64 + half) * N + nt * BN;
    }
    if (EPI && done_at >= 0)
        gg_col_sums<BN>(part + done_at, out, tid);
    if (tid == 0)
        asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#else
    (void)map_a, (void)map_b, (void)map_c, (void)map_g, (void)part, (void)count, (void)n, (void)rows,
        (void)K, (void)N;
#endif
}

/* db[g][c] += the EPI kernel's partial sums of column c over expert g's
 * live row tiles. A block: 32 columns of one expert by GG_COLSUM_LANES
 * lanes, lane y adding the partials y, y + LANES, ... in row order, then
 * lane 0 the lanes' sums in lane order (deterministic); one thread a
 * column, adding its 60 or so partials alone, kept few blocks busy and
 * waited on each load (8.8 us a layer on config S) */
#define GG_COLSUM_LANES 8
static __global__ void __launch_bounds__(32 * GG_COLSUM_LANES)
    gg_colsum_kernel(float *__restrict__ db, const float *__restrict__ part, const int *__restrict__ count, int rows,
                     int N)
{
    __shared__ float sums[GG_COLSUM_LANES][33];
    const int x = (int)threadIdx.x % 32, y = (int)threadIdx.x / 32, g = (int)blockIdx.y;
    const int c = (int)blockIdx.x * 32 + x;
    const int halves = (min(count[g], rows) + GG_BM - 1) / GG_BM * 2;
    float acc = 0.0f;
    if (c < N) {
        const float *p = part + (int64_t)g * gg_halves(rows) * N + c;
        for (int h = y; h < halves; h += GG_COLSUM_LANES)
            acc += p[(int64_t)h * N];
    }
    sums[y][x] = acc;
    __syncthreads();
    if (y == 0 && c < N) {
        for (int l = 1; l < GG_COLSUM_LANES; l++)
            acc += sums[l][x];
        db[(int64_t)g * N + c] += acc;
    }
}

/* the driver's tensor-map encoder, through the runtime (no -lcuda) */
static inline PFN_cuTensorMapEncodeTiled_v12000 gg_encoder()
{
    static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
    if (!fn) {
        void *p = nullptr;
        cudaDriverEntryPointQueryResult q;
        CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q));
        if (!p || q != cudaDriverEntryPointSuccess) {
            fprintf(stderr, "train: the CUDA driver has no cuTensorMapEncodeTiled\n");
            exit(1);
        }
        fn = (PFN_cuTensorMapEncodeTiled_v12000)p;
    }
    return fn;
}

/* a bf16 tensor of `rank` dimensions (dim[0] innermost, strides in bytes
 * of dims 1..) in boxes of box[], 128-byte swizzle */
static inline CUtensorMap gg_map(const void *p, int rank, const cuuint64_t *dim, const cuuint64_t *stride,
                                 const cuuint32_t *box)
{
    CUtensorMap m;
    const cuuint32_t unit[3] = { 1, 1, 1 };
    const CUresult r = gg_encoder()(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, (cuuint32_t)rank, const_cast<void *>(p),
                                    dim, stride, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "train: internal error: cuTensorMapEncodeTiled failed (%d)\n", (int)r);
        exit(1);
    }
    return m;
}

/* whether this device runs gg_kernel (Hopper: sm_90a's wgmma), unless
 * MOECC_GG=0 (cuBLAS's products instead, to compare) */
static inline int gg_device(const cudaDeviceProp *prop)
{
    const char *v = getenv("MOECC_GG");
    return prop->major == 9 && prop->minor == 0 && !(v && strcmp(v, "0") == 0);
}

/* The grouped product above: out [n][rows][N] from a [n][rows][K] and the
 * weights w ([n][N][K], or [n][K][N] with NM; in bf16 from their copy,
 * bf16_operand), rows below count[e] alone. With gh and db (the EPI
 * kernel): out = (a w) * gh in the row tiles below each count (zeros in
 * their rows past it; the tiles after are left as they are: zeros where
 * out is a's room, see gg_kernel), and db [n][N] += out's column sums
 * (act_bias_backward's work). False (nothing done) where it does not
 * apply: no counts, not Hopper, not bf16 precision, a width not in whole
 * tiles, an operand not 16-byte aligned; the caller multiplies by cuBLAS
 * then (and runs act_bias_backward). */
template <int K, int N, bool NM>
static inline bool gg_mm(const kctx *k, __nv_bfloat16 *out, const __nv_bfloat16 *a, mm_in w, const int *count, int rows,
                         int n, const __nv_bfloat16 *gh = nullptr, float *db = nullptr)
{
    constexpr int BN = gg_bn<N>();
    if (!gg_fits<K, N>() || !k->gg || !k->cast || !count || !a || !out ||
        ((uintptr_t)a | (uintptr_t)out | (uintptr_t)gh) % 16 != 0 || (gh && (!db || !NM)))
        return false;
    int64_t used = 0;
    const __nv_bfloat16 *b = bf16_operand(k, w, (int64_t)n * K * N, &used); /* the weights' copy (k->w16) */
    if ((uintptr_t)b % 16 != 0)
        return false;
    if constexpr (BN != 0) {
        static int sms = 0;
        const size_t smem = sizeof(gg_smem<BN>) + 1024;
        if (!sms) {
            sms = device_sms();
            CUDA_CHECK(cudaFuncSetAttribute(gg_kernel<BN, NM, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)smem));
            if constexpr (NM) /* EPI: the backward's da product alone */
                CUDA_CHECK(cudaFuncSetAttribute(gg_kernel<BN, NM, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                (int)smem));
        }
        const cuuint64_t adim[2] = { (cuuint64_t)K, (cuuint64_t)n * rows }, astr[1] = { (cuuint64_t)K * 2 };
        const cuuint32_t abox[2] = { GG_BK, GG_BM };
        const cuuint64_t bdim[2] = { NM ? (cuuint64_t)N : (cuuint64_t)K, (cuuint64_t)n * (NM ? K : N) },
                         bstr[1] = { (NM ? (cuuint64_t)N : (cuuint64_t)K) * 2 };
        const cuuint32_t bbox[2] = { 64, NM ? (cuuint32_t)GG_BK : (cuuint32_t)BN };
        const cuuint64_t cdim[3] = { (cuuint64_t)N, (cuuint64_t)rows, (cuuint64_t)n },
                         cstr[2] = { (cuuint64_t)N * 2, (cuuint64_t)rows * N * 2 };
        const cuuint32_t cbox[3] = { 64, 64, 1 };
        const CUtensorMap ma = gg_map(a, 2, adim, astr, abox), mb = gg_map(b, 2, bdim, bstr, bbox),
                          mc = gg_map(out, 3, cdim, cstr, cbox);
        const int grid = k->gg_grid > 0 && k->gg_grid < sms ? k->gg_grid : sms;
        if (gh) {
            if constexpr (NM) {
                red_need(k, (int64_t)n * gg_halves(rows) * N);
                gg_kernel<BN, NM, true><<<grid, 384, smem, k->stream>>>(ma, mb, mc, gg_map(gh, 3, cdim, cstr, cbox),
                                                                         k->red, count, n, rows, K, N);
                CUDA_CHECK(cudaGetLastError());
                gg_colsum_kernel<<<dim3((unsigned)((N + 31) / 32), (unsigned)n), 32 * GG_COLSUM_LANES, 0,
                                   k->stream>>>(db, k->red, count, rows, N);
            }
        } else {
            gg_kernel<BN, NM, false><<<grid, 384, smem, k->stream>>>(ma, mb, mc, mc, nullptr, count, n, rows, K, N);
        }
        CUDA_CHECK(cudaGetLastError());
    }
    return true;
}

/* bf16 precision keeps the experts' activations a [EL, rows, H] in bf16,
 * in the first half of a's own memory (their only uses are as product
 * operands: the second layer's input and its weight gradient), so that
 * they are not rounded again for each product; the arena gives a half its
 * room in that precision. The backward puts da and then dh there in the
 * same form, once dw2 has read a (moe_ffn_backward_rows). moe_a16(k, a,
 * r, H): row r's. NULL in the other precisions (a holds fp32). */
static inline __nv_bfloat16 *moe_a16(const kctx *k, const float *a, int64_t r, int H)
{
    return k->cast ? reinterpret_cast<__nv_bfloat16 *>(const_cast<float *>(a)) + r * H : nullptr;
}

/* The same for the experts' rows [E, cap, D] on one GPU (P = 1): in bf16
 * precision the gather writes their inputs xe in bf16 into the first half
 * of xe's memory, as their only uses are product operands (the first
 * layer's input and its weight gradient), and the second product writes
 * their outputs ye so into ye's, as the combine and its backward alone
 * read them (PyTorch's autocast keeps them so too); in the backward, the
 * rows' dx so into dxe's, which the scatter alone reads. With expert
 * parallelism the rows travel as fp32, and NULL here: they are rounded
 * per product. */
template <int P> static inline __nv_bfloat16 *moe_x16(const kctx *k, const float *rows)
{
    return P == 1 ? bf16_half(k, const_cast<float *>(rows)) : nullptr;
}

/* bf16 precision: the experts' hidden values h [EL, rows, H] as their
 * product writes them, and then the activation's derivative (bias_act's
 * grad_h): in bf16, in the first half of their fp32 memory, as only the
 * element-wise passes read them (bias_act, act_bias_backward: half the
 * bytes of the two longest passes of the MoE layer). moe_h16(k, h, r, H):
 * row r's. NULL in the other precisions. */
static inline __nv_bfloat16 *moe_h16(const kctx *k, const float *h, int64_t r, int H)
{
    return moe_a16(k, h, r, H);
}

/* The FFN of this GPU's experts [e, e + n) on their rows (rows each, laid
 * out [expert, rows, *]): h = x w1^T, a = act(h + b1), then h holds
 * act'(h + b1) for the backward (bias_act's grad_h), y = a w2^T (+ b2 when
 * given; else the combine adds it).
 * x16: the rows in bf16 (moe_x16), or NULL; y16: where y goes in bf16
 * instead of yr (moe_x16; b2 NULL then), or NULL. count: the experts' counts of
 * rows (on one GPU, where an expert's rows past its count are zeros: the
 * activations skip them, bias_act's live), or NULL. */
template <int D, int H, int ACT>
static inline void moe_ffn_forward(const kctx *k, float *yr, __nv_bfloat16 *y16, float *h, float *a, const float *xr,
                                   const __nv_bfloat16 *x16, const float *w1, const float *b1, const float *w2,
                                   const float *b2, const int *count, int rows, int e, int n)
{
    const int64_t r = (int64_t)e * rows;
    __nv_bfloat16 *a16 = moe_a16(k, a, r, H), *h16 = moe_h16(k, h, r, H);
    const int *live = count ? count + e : nullptr;
    xr += r * D, h += r * H, a += r * H, yr += r * D;
    w1 += (int64_t)e * H * D, b1 += (int64_t)e * H, w2 += (int64_t)e * D * H;
    const mm_in xin = mm_pick(x16 ? x16 + r * D : nullptr, xr);
    if (h16) {
        if (!gg_mm<D, H, false>(k, h16, xin.h, mm_pick(nullptr, w1), live, rows, n))
            mm_nt(k, h16, xin, w1, rows, H, D, 0.0f, n, (int64_t)rows * D, (int64_t)H * D, (int64_t)rows * H);
        bias_act<ACT, __nv_bfloat16, H>(k, a, h16, b1, rows, H, n, a16, true, live);
    } else {
        mm_nt(k, h, xin, w1, rows, H, D, 0.0f, n, (int64_t)rows * D, (int64_t)H * D, (int64_t)rows * H);
        bias_act<ACT>(k, a, h, b1, rows, H, n, a16, true, live);
    }
    if (y16) {
        if (!gg_mm<H, D, false>(k, y16 + r * D, a16, mm_pick(nullptr, w2), live, rows, n))
            mm_nt(k, y16 + r * D, mm_pick(a16, a), w2, rows, D, H, 0.0f, n, (int64_t)rows * H, (int64_t)D * H,
                  (int64_t)rows * D);
        return;
    }
    mm_nt(k, yr, mm_pick(a16, a), w2, rows, D, H, 0.0f, n, (int64_t)rows * H, (int64_t)D * H, (int64_t)rows * D);
    if (b2)
        bias_add(k, yr, b2 + (int64_t)e * D, rows, D, n);
}

/* moe_combine_kernel's launch: ye in fp32 or bf16 (YT) */
template <int K, typename YT>
static inline void moe_combine(const kctx *k, float *out, const YT *ye, const float *b2, const moe_route_buf *r,
                               const float *res, int N, int cap, int D)
{
    launch_rows(k, vec4_ok(D, out, b2, res) && vec4_ok_as(D, ye), N, moe_combine_kernel<K, 4, YT>,
                moe_combine_kernel<K, 1, YT>, out, ye, b2, r->topk, r->slot, r->gate, res, N, cap, D);
}

/* The experts' FFN and the combine: h = xe w1^T + b1, a = act(h),
 * ye = a w2^T + b2 per expert, out = the gated sum (+ res, a residual
 * block's skip, when the layer makes the block's output). With expert
 * parallelism (P > 1): xe is dispatched to xr, this GPU's E/P experts (w1
 * ... b2: theirs alone) run on xr's P * cap rows per expert into yr, which
 * comes back to ye; with P = 1, xr = xe and yr = ye (in bf16 precision xe
 * and ye then hold the rows in bf16: moe_x16), and ye is kept without b2,
 * which the combine adds (and its backward). h is left holding act'(h + b1)
 * (bias_act's grad_h). With k->overlap, the rows travel expert by expert:
 * an expert's products start when its rows have come and its results
 * leave while the next one's products run. combine false: the rows alone,
 * out untouched (the backward of recompute = experts, which makes a
 * layer's rows again). */
template <int D, int H, int E, int K, int ACT, int P>
static inline void moe_experts_forward(const kctx *k, float *out, float *xe, float *xr, float *h, float *a, float *yr,
                                       float *ye, const float *x, const moe_route_buf *r, const float *w1,
                                       const float *b1, const float *w2, const float *b2, int N, int cap,
                                       const float *res = nullptr, bool combine = true)
{
    static_assert(E % P == 0, "moe_experts_forward: the group's GPUs share the experts evenly");
    constexpr int EL = E / P;
    const int rows = P * cap; /* per expert of this GPU */
    const int64_t chunk = (int64_t)cap * D;
    __nv_bfloat16 *x16 = moe_x16<P>(k, xe), *y16 = moe_x16<P>(k, ye);
    const int64_t erows = (int64_t)E * cap;
    if (x16)
        launch_rows(k, vec4_ok(D, x) && bf16_ok(x16), erows, moe_gather_kernel<__nv_bfloat16, 4>,
                    moe_gather_kernel<__nv_bfloat16, 1>, x16, x, r->row_token, r->count, E, cap, D);
    else
        launch_rows(k, vec4_ok(D, x, xe), erows, moe_gather_kernel<float, 4>, moe_gather_kernel<float, 1>, xe, x,
                    r->row_token, r->count, E, cap, D);
    if (P > 1 && k->overlap) {
        cudaEvent_t in[EL], done = nullptr;
        for (int e = 0; e < EL; e++)
            in[e] = moe_exchange<P>(k, xr, xe, chunk, EL, EXCHANGE_DISPATCH, e);
        for (int e = 0; e < EL; e++) {
            moe_exchange_wait(k, in[e]);
            moe_ffn_forward<D, H, ACT>(k, yr, nullptr, h, a, xr, nullptr, w1, b1, w2, b2, nullptr, rows, e, 1); /* P > 1 */
            done = moe_exchange<P>(k, ye, yr, chunk, EL, EXCHANGE_COMBINE, e);
        }
        moe_exchange_wait(k, done); /* the exchange stream runs in order */
    } else {
        moe_exchange<P>(k, xr, xe, chunk, EL, EXCHANGE_DISPATCH);
        moe_ffn_forward<D, H, ACT>(k, yr, y16, h, a, xr, x16, w1, b1, w2, P > 1 ? b2 : nullptr,
                                   P > 1 ? nullptr : r->count, rows, 0, EL);
        moe_exchange<P>(k, ye, yr, chunk, EL, EXCHANGE_COMBINE);
    }
    if (!combine)
        return;
    if (y16)
        moe_combine<K>(k, out, y16, b2, r, res, N, cap, D);
    else
        moe_combine<K>(k, out, ye, P > 1 ? nullptr : b2, r, res, N, cap, D);
}

/* V values of an expert row's backward through the combine: dy = t = g
 * dout (stored as O), and *dot += dout . (ye + b2) (bias NULL: ye has b2) */
template <int V, typename O, typename YT>
__device__ static inline void combine_bwd_values(O *dy, float (&t)[V], float *dot, const float *go, const YT *y,
                                                 const float *bias, float g)
{
    float o[V], yv[V], b[V] = {};
    vload<V>(o, go);
    vload<V>(yv, y);
    if (bias)
        vload<V>(b, bias);
#pragma unroll
    for (int j = 0; j < V; j++) {
        *dot += o[j] * (bias ? yv[j] + b[j] : yv[j]);
        t[j] = g * o[j];
    }
    vstore<V>(dy, t);
}

/* A kept expert row's place in the combine: where its choice's gate and
 * dgate live (token n's choice kk), the gate, the token's output gradient,
 * expert e's b2 (NULL: none, or ye has it) and the row's ye */
template <typename YT> struct combine_bwd_row {
    int64_t gk; /* n * K + kk */
    float g;
    const float *go, *bias;
    const YT *y;
};

template <typename YT>
__device__ static inline combine_bwd_row<YT> combine_bwd_at(int64_t row, int e, const int *row_token, const int *row_k,
                                                            const float *gate, const float *dout, const YT *ye,
                                                            const float *b2, int D, int K)
{
    const int n = row_token[row];
    const int64_t gk = (int64_t)n * K + row_k[row];
    return {gk, gate[gk], dout + (int64_t)n * D, b2 ? b2 + (int64_t)e * D : nullptr, ye + row * D};
}

/* One warp per expert row: dye[row] = gate * dout[token] (zeros past the
 * count; O: float, or bf16 where only products and the bias's sum read it),
 * and the kept choice's dgate = dout[token] . (ye[row] + b2[e]) (b2 NULL:
 * ye has it, as moe_combine_kernel; YT: as there). */
template <typename O, int V, typename YT>
static __global__ void moe_combine_bwd_kernel(O *__restrict__ dye, float *__restrict__ dgate,
                                              const float *__restrict__ dout, const YT *__restrict__ ye,
                                              const float *__restrict__ b2, const int *__restrict__ row_token,
                                              const int *__restrict__ row_k, const int *__restrict__ count,
                                              const float *__restrict__ gate, int E, int cap, int D, int K)
{
    const int lane = threadIdx.x % 32;
    const int64_t rows = (int64_t)E * cap;
    for (int64_t row = row_warp(); row < rows; row += row_warps()) {
        const int e = (int)(row / cap), s = (int)(row - (int64_t)e * cap);
        O *dy = dye + row * D;
        if (s >= count[e]) {
            const float z[V] = {};
            for (int d = lane * V; d < D; d += 32 * V)
                vstore<V>(dy + d, z);
            continue;
        }
        const combine_bwd_row<YT> w = combine_bwd_at(row, e, row_token, row_k, gate, dout, ye, b2, D, K);
        float dot = 0.0f;
        /* two chunks' loads in flight at once (P: 1.14 -> 1.06 ms a step) */
#pragma unroll 2
        for (int d = lane * V; d < D; d += 32 * V) {
            float t[V];
            combine_bwd_values<V>(dy + d, t, &dot, w.go + d, w.y + d, w.bias ? w.bias + d : nullptr, w.g);
        }
        dot = warp_sum(dot);
        if (lane == 0)
            dgate[w.gk] = dot;
    }
}

/* moe_combine_bwd_kernel on one GPU with the bias gradient's partial sums
 * (db2 = the column sums of dy per expert, which a pass over dy read
 * again: 128 MB a layer on config P): block (c, e) takes chunk c of
 * expert e's rows, as colsum_partial_kernel's chunks, COMBINE_SUM_WARPS
 * warps a row in turn; each lane sums the fp32 values it stores (before
 * any rounding to O), and the warps' sums are added in warp order into
 * part[e, c, D] for colsum_final (the same bits every run). */
#define COMBINE_SUM_WARPS 16
#define COMBINE_SUM_MAX_D 768 /* the warps' sums in the 48 KiB of shared memory a launch gets unasked */
template <typename O, int V, typename YT, int D>
static __global__ void __launch_bounds__(32 * COMBINE_SUM_WARPS)
    moe_combine_bwd_sum_kernel(O *__restrict__ dye, float *__restrict__ dgate, float *__restrict__ part,
                               const float *__restrict__ dout, const YT *__restrict__ ye,
                               const float *__restrict__ b2, const int *__restrict__ row_token,
                               const int *__restrict__ row_k, const int *__restrict__ count,
                               const float *__restrict__ gate, int cap, int K)
{
    constexpr int DC = (D + 32 * V - 1) / (32 * V); /* a lane's chunks of V columns */
    extern __shared__ float csum[];                 /* [COMBINE_SUM_WARPS][D] */
    const int lane = threadIdx.x % 32, wid = threadIdx.x / 32, e = blockIdx.y, c = blockIdx.x;
    const int per = (cap + RED_CHUNKS - 1) / RED_CHUNKS, lo = c * per, hi = min(cap, lo + per);
    const int live = min(count[e], hi);
    float cs[DC][V] = {};
    for (int s = lo + wid; s < hi; s += COMBINE_SUM_WARPS) {
        const int64_t row = (int64_t)e * cap + s;
        O *dy = dye + row * D;
        if (s >= live) {
            const float z[V] = {};
#pragma unroll
            for (int i = 0; i < DC; i++)
                if (lane * V + i * 32 * V < D)
                    vstore<V>(dy + lane * V + i * 32 * V, z);
            continue;
        }
        const combine_bwd_row<YT> w = combine_bwd_at(row, e, row_token, row_k, gate, dout, ye, b2, D, K);
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < DC; i++) {
            const int d = lane * V + i * 32 * V;
            if (d >= D)
                continue;
            float t[V];
            combine_bwd_values<V>(dy + d, t, &dot, w.go + d, w.y + d, w.bias ? w.bias + d : nullptr, w.g);
#pragma unroll
            for (int j = 0; j < V; j++)
                cs[i][j] += t[j];
        }
        dot = warp_sum(dot);
        if (lane == 0)
            dgate[w.gk] = dot;
    }
#pragma unroll
    for (int i = 0; i < DC; i++)
#pragma unroll
        for (int j = 0; j < V; j++) {
            const int d = lane * V + i * 32 * V + j;
            if (d < D)
                csum[wid * D + d] = cs[i][j];
        }
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float t = 0.0f;
        for (int w = 0; w < COMBINE_SUM_WARPS; w++)
            t += csum[w * D + d];
        part[((int64_t)e * RED_CHUNKS + c) * D + d] = t;
    }
}

/* its launch: dye and ye in fp32 or bf16 (O, YT) */
template <typename O, typename YT>
static inline void moe_combine_bwd(const kctx *k, O *dye, float *dgate, const float *dout, const YT *ye,
                                   const float *b2, const moe_route_buf *r, int E, int cap, int D, int K)
{
    const bool v4 = vec4_ok(D, dout, b2) && vec4_ok_as(D, ye) && vec4_ok_as(D, dye);
    launch_rows(k, v4, (int64_t)E * cap, moe_combine_bwd_kernel<O, 4, YT>, moe_combine_bwd_kernel<O, 1, YT>, dye,
                dgate, dout, ye, b2, r->row_token, r->row_k, r->count, r->gate, E, cap, D, K);
}

/* moe_combine_bwd_sum_kernel's launch, then db2 += its partial sums */
template <int D, typename O, typename YT>
static inline void moe_combine_bwd_sum(const kctx *k, O *dye, float *dgate, float *db2, const float *dout,
                                       const YT *ye, const float *b2, const moe_route_buf *r, int E, int cap, int K)
{
    static_assert(D <= COMBINE_SUM_MAX_D, "moe_combine_bwd_sum: the warps' sums in shared memory");
    red_need(k, (int64_t)E * RED_CHUNKS * D);
    const bool v4 = vec4_ok(D, dout, b2) && vec4_ok_as(D, ye) && vec4_ok_as(D, dye);
    const dim3 grid(RED_CHUNKS, (unsigned)E);
    const size_t sm = sizeof(float) * COMBINE_SUM_WARPS * D;
    if (v4)
        moe_combine_bwd_sum_kernel<O, 4, YT, D><<<grid, 32 * COMBINE_SUM_WARPS, sm, k->stream>>>(
            dye, dgate, k->red, dout, ye, b2, r->row_token, r->row_k, r->count, r->gate, cap, K);
    else
        moe_combine_bwd_sum_kernel<O, 1, YT, D><<<grid, 32 * COMBINE_SUM_WARPS, sm, k->stream>>>(
            dye, dgate, k->red, dout, ye, b2, r->row_token, r->row_k, r->count, r->gate, cap, K);
    LAUNCH_CHECK();
    colsum_final(k, db2, D, E, D);
}

/* dx[n] (+)= sum over the token's kept choices of dxe[row]; dgate of the
 * dropped choices = 0. XT: float, or bf16 (the rows as the experts'
 * first product's backward wrote them in bf16 precision on one GPU:
 * moe_x16) */
template <int K, int V, typename XT>
static __global__ void moe_scatter_bwd_kernel(float *__restrict__ dx, float *__restrict__ dgate,
                                              const XT *__restrict__ dxe, const int *__restrict__ topk,
                                              const int *__restrict__ slot, int N, int cap, int D, int acc)
{
    const int lane = threadIdx.x % 32;
    for (int64_t n = row_warp(); n < N; n += row_warps()) {
        const XT *src[K];
#pragma unroll
        for (int k = 0; k < K; k++) {
            const int sl = slot[n * K + k];
            src[k] = sl >= 0 ? dxe + ((int64_t)topk[n * K + k] * cap + sl) * D : nullptr;
            if (sl < 0 && lane == 0)
                dgate[n * K + k] = 0.0f;
        }
        float *o = dx + n * D;
        for (int d = lane * V; d < D; d += 32 * V) {
            float sum[V] = {}, prev[V];
#pragma unroll
            for (int k = 0; k < K; k++)
                if (src[k]) {
                    float y[V];
                    vload<V>(y, src[k] + d);
#pragma unroll
                    for (int j = 0; j < V; j++)
                        sum[j] += y[j];
                }
            if (acc) {
                vload<V>(prev, o + d);
#pragma unroll
                for (int j = 0; j < V; j++)
                    sum[j] = prev[j] + sum[j];
            }
            vstore<V>(o + d, sum);
        }
    }
}

/* dx[n] (+)= the token's kept rows of dxe (fp32 or bf16: XT), a warp a
 * token */
template <int K, typename XT>
static inline void moe_scatter_bwd(const kctx *k, float *dx, float *dgate, const XT *dxe, const moe_route_buf *r,
                                   int N, int cap, int D, int acc)
{
    launch_rows(k, vec4_ok(D, dx) && vec4_ok_as(D, dxe), N, moe_scatter_bwd_kernel<K, 4, XT>,
                moe_scatter_bwd_kernel<K, 1, XT>, dx, dgate, dxe, r->topk, r->slot, N, cap, D, acc);
}

/* The FFN's backward for this GPU's experts [e, e + n), in three parts:
 * moe_ffn_backward_dw2 (dw2 = dy^T a, db2 += colsum(dy)), the last
 * reader of the activations a; then moe_ffn_backward_rows, the rows'
 * gradients (da = dy w2 into a's room, dh = da * act'(h + b1) in place,
 * where the forward left act' in h, with db1 += colsum(dh) in the same
 * pass, dx = dh w1), which the combine waits for; then
 * moe_ffn_backward_dw1 (dw1 = dh^T x), which it need not. dh needs no
 * room of its own: it lives where a did (in bf16 precision in bf16, as
 * a: moe_a16). All take dy of experts [e, e + n): in bf16 precision dy16
 * has it rounded already (cast_keep), and k's scratch starts after it.
 * dx16: where dx goes in bf16 instead of dxr (moe_x16), or NULL. count:
 * as moe_ffn_forward's. dw1 and dw2 are stored, not added to: their
 * products are the step's one writer of them (GRAD_STORED: the step does
 * not zero them first, which took a pass over 94% of S's gradients, and
 * the products do not read them back), where the biases' sums add. */
template <int D, int H>
static inline void moe_ffn_backward_dw2(const kctx *k, float *dw2, float *db2, const float *dyr,
                                        const __nv_bfloat16 *dy16, const float *a, int rows, int e, int n)
{
    const int64_t r = (int64_t)e * rows;
    const __nv_bfloat16 *a16 = moe_a16(k, a, r, H);
    dyr = dyr ? dyr + r * D : nullptr; /* NULL: dy in bf16 alone (dy16) */
    a += r * H, dw2 += (int64_t)e * D * H;
    mm_tn(k, dw2, mm_pick(dy16, dyr), mm_pick(a16, a), D, H, rows, 0.0f, n, (int64_t)rows * D, (int64_t)rows * H,
          (int64_t)D * H);
    /* db2 NULL: summed by the combine's backward (moe_combine_bwd_sum) */
    if (db2 && dyr)
        colsum_add(k, db2 + (int64_t)e * D, dyr, rows, D, n, (int64_t)rows * D, D);
    else if (db2) /* dy in bf16 alone (moe_experts_backward) */
        colsum_add(k, db2 + (int64_t)e * D, dy16, rows, D, n, (int64_t)rows * D, D);
}

template <int D, int H>
static inline void moe_ffn_backward_rows(const kctx *k, float *dxr, __nv_bfloat16 *dx16, float *a, float *db1,
                                         const float *dyr, const __nv_bfloat16 *dy16, const float *h,
                                         const float *w1, const float *w2, const int *count, int rows, int e, int n)
{
    const int64_t r = (int64_t)e * rows;
    __nv_bfloat16 *dh16 = moe_a16(k, a, r, H); /* da, then dh, in bf16 precision */
    const __nv_bfloat16 *h16 = moe_h16(k, h, r, H);
    const int *live = count ? count + e : nullptr;
    float *dh = a + r * H; /* da, then dh, in the other precisions */
    dxr += r * D, h += r * H;
    dyr = dyr ? dyr + r * D : nullptr; /* NULL: dy in bf16 alone (dy16) */
    w1 += (int64_t)e * H * D, db1 += (int64_t)e * H, w2 += (int64_t)e * D * H;
    if (dh16) { /* bf16 precision: da and h in bf16 (moe_h16), dh over da */
        /* the grouped product makes dh and db1 in its epilogue (the
         * rows past each count it leaves as the forward's bias_act left
         * a there: zeros); else cuBLAS's da, then the pass */
        if (!gg_mm<D, H, true>(k, dh16, dy16, mm_pick(nullptr, w2), live, rows, n, h16, db1)) {
            mm_nn(k, dh16, mm_pick(dy16, dyr), w2, rows, H, D, 0.0f, n, (int64_t)rows * D, (int64_t)D * H,
                  (int64_t)rows * H);
            act_bias_backward(k, nullptr, dh16, db1, dh16, h16, rows, H, n, live);
        }
    } else {
        mm_nn(k, dh, mm_pick(dy16, dyr), w2, rows, H, D, 0.0f, n, (int64_t)rows * D, (int64_t)D * H,
              (int64_t)rows * H);
        act_bias_backward(k, dh, nullptr, db1, dh, h, rows, H, n, live);
    }
    if (dx16) {
        if (!gg_mm<H, D, true>(k, dx16 + r * D, dh16, mm_pick(nullptr, w1), live, rows, n))
            mm_nn(k, dx16 + r * D, mm_pick(dh16, dh), w1, rows, D, H, 0.0f, n, (int64_t)rows * H, (int64_t)H * D,
                  (int64_t)rows * D);
    }
    else
        mm_nn(k, dxr, mm_pick(dh16, dh), w1, rows, D, H, 0.0f, n, (int64_t)rows * H, (int64_t)H * D,
              (int64_t)rows * D);
}

/* dh: in a's room, as moe_ffn_backward_rows left it */
template <int D, int H>
static inline void moe_ffn_backward_dw1(const kctx *k, float *dw1, const float *dh, const float *xr,
                                        const __nv_bfloat16 *x16, int rows, int e, int n)
{
    const int64_t r = (int64_t)e * rows;
    const __nv_bfloat16 *dh16 = moe_a16(k, dh, r, H);
    dh += r * H, xr += r * D, dw1 += (int64_t)e * H * D;
    mm_tn(k, dw1, mm_pick(dh16, dh), mm_pick(x16 ? x16 + r * D : nullptr, xr), H, D, rows, 0.0f, n,
          (int64_t)rows * H, (int64_t)rows * D, (int64_t)H * D);
}

/* Backward of the experts and the combine: dgate[N, K] written, dx (+)=,
 * dw1 and dw2 stored, db1 and db2 added to (this GPU's experts alone).
 * dye, dxe: [E, cap, *] scratch; with expert parallelism dyr, dxr:
 * [E/P, P, cap, *] (else dyr = dye, dxr = dxe); xr, h, a: the forward's
 * rows of this GPU's experts, as moe_experts_forward left them (h: the
 * activation's derivative, bias_act's grad_h). a is overwritten: once
 * dw2 has read it, its room takes da and then dh (moe_ffn_backward_rows;
 * in bf16 precision in bf16, moe_a16), so the activations' gradient
 * needs no room of its own. On one GPU in bf16 precision dxe takes the
 * rows' dx in bf16 (moe_x16: the scatter alone reads them). k->overlap:
 * as in the forward. */
template <int D, int H, int E, int K, int P>
static inline void moe_experts_backward(const kctx *k, float *dx, float *dgate, float *dye, float *dyr,
                                        float *dxr, float *dxe, const float *dout, const float *xr, const float *h,
                                        float *a, const float *ye, const moe_route_buf *r, const float *w1,
                                        const float *w2, const float *b2, float *dw1, float *db1, float *dw2,
                                        float *db2, int N, int cap, int acc)
{
    constexpr int EL = E / P;
    const __nv_bfloat16 *x16 = moe_x16<P>(k, xr);
    __nv_bfloat16 *dx16 = moe_x16<P>(k, dxe); /* the rows' dx in bf16 on one GPU, which the scatter sums */
    const int rows = P * cap;
    const int64_t chunk = (int64_t)cap * D;
    kctx kr = *k; /* k with the scratch after the rounded dy (cast_keep) */
    /* bf16 precision on one GPU: dy feeds the products and db2's sum
     * alone, so the combine writes it in bf16 into the first half of its
     * room (the fp32 values are never made) */
    const bool dy_half = P == 1 && k->cast;
    float *db2_rows = db2; /* what the parameters' pass still sums: NULL when the combine's backward did */
    if constexpr (P == 1 && D <= COMBINE_SUM_MAX_D) {
        db2_rows = nullptr;
        if (dy_half) /* ye too is in bf16 (moe_x16) */
            moe_combine_bwd_sum<D>(k, bf16_half(k, dye), dgate, db2, dout, moe_x16<P>(k, ye), b2, r, E, cap, K);
        else
            moe_combine_bwd_sum<D>(k, dye, dgate, db2, dout, ye, b2, r, E, cap, K);
    } else if (dy_half) {
        moe_combine_bwd(k, bf16_half(k, dye), dgate, dout, moe_x16<P>(k, ye), b2, r, E, cap, D, K);
    } else {
        moe_combine_bwd(k, dye, dgate, dout, ye, P > 1 ? nullptr : b2, r, E, cap, D, K);
    }
    if (P > 1 && k->overlap) {
        cudaEvent_t in[EL], done = nullptr;
        for (int e = 0; e < EL; e++)
            in[e] = moe_exchange<P>(k, dyr, dye, chunk, EL, EXCHANGE_DISPATCH, e);
        for (int e = 0; e < EL; e++) {
            moe_exchange_wait(k, in[e]);
            const __nv_bfloat16 *dy16 = cast_keep(k, &kr, dyr + (int64_t)e * rows * D, (int64_t)rows * D);
            moe_ffn_backward_dw2<D, H>(&kr, dw2, db2, dyr, dy16, a, rows, e, 1);
            moe_ffn_backward_rows<D, H>(&kr, dxr, nullptr, a, db1, dyr, dy16, h, w1, w2, nullptr, rows, e, 1);
            done = moe_exchange<P>(k, dxe, dxr, chunk, EL, EXCHANGE_COMBINE, e);
            moe_ffn_backward_dw1<D, H>(&kr, dw1, a, xr, x16, rows, e, 1);
        }
        moe_exchange_wait(k, done);
    } else {
        moe_exchange<P>(k, dyr, dye, chunk, EL, EXCHANGE_DISPATCH);
        const __nv_bfloat16 *dy16 = dy_half ? bf16_half(k, dye) : cast_keep(k, &kr, dyr, (int64_t)EL * rows * D);
        const float *dyf = dy_half ? nullptr : dyr; /* NULL: dy in bf16 alone */
        moe_ffn_backward_dw2<D, H>(&kr, dw2, db2_rows, dyf, dy16, a, rows, 0, EL);
        moe_ffn_backward_rows<D, H>(&kr, dxr, dx16, a, db1, dyf, dy16, h, w1, w2, P > 1 ? nullptr : r->count, rows, 0,
                                    EL);
        moe_ffn_backward_dw1<D, H>(&kr, dw1, a, xr, x16, rows, 0, EL);
        moe_exchange<P>(k, dxe, dxr, chunk, EL, EXCHANGE_COMBINE);
    }
    if (dx16)
        moe_scatter_bwd<K>(k, dx, dgate, dx16, r, N, cap, D, acc);
    else
        moe_scatter_bwd<K>(k, dx, dgate, dxe, r, N, cap, D, acc);
}

#define AUX_BLOCKS 64

/* Partial sums over tokens for the auxiliary losses and the statistics:
 * per block, [E] summed probabilities, [E] top-1 counts, z (sum lse^2),
 * the routing loss (sum -log p[target]) and the entropy. Every thread of
 * the block works: for the per-expert sums, the block is LANES threads
 * per expert (a pass per group of 256 / LANES experts) striding over the
 * block's tokens; for the other three, all 256 threads stride. The
 * threads' sums are then added in a fixed order (deterministic). */
#define AUX_THREADS 256
template <int E, int K>
static __global__ void __launch_bounds__(AUX_THREADS) moe_aux_partial_kernel(double *part, const float *probs,
                                                                             const float *lse, const int *topk,
                                                                             const int *target,
                                                                             const float *entropy, int N)
{
    constexpr int W = 2 * E + 3;
    constexpr int LANES = E < AUX_THREADS ? AUX_THREADS / E : 1, GROUP = AUX_THREADS / LANES;
    __shared__ double red[3][AUX_THREADS];
    const int per = (N + AUX_BLOCKS - 1) / AUX_BLOCKS, lo = blockIdx.x * per, hi = min(N, lo + per);
    const int t = threadIdx.x, lane = t % LANES;
    double *out = part + (int64_t)blockIdx.x * W;
    for (int e0 = 0; e0 < E; e0 += GROUP) {
        const int e = e0 + t / LANES;
        double me = 0.0, ce = 0.0;
        if (e < E)
            for (int n = lo + lane; n < hi; n += LANES) {
                me += probs[(int64_t)n * E + e];
                ce += topk[(int64_t)n * K] == e ? 1.0 : 0.0;
            }
        red[0][t] = me;
        red[1][t] = ce;
        __syncthreads();
        if (lane == 0 && e < E) {
            double sm = 0.0, sc = 0.0;
            for (int l = 0; l < LANES; l++) {
                sm += red[0][t + l];
                sc += red[1][t + l];
            }
            out[e] = sm;
            out[E + e] = sc;
        }
        __syncthreads();
    }
    double z = 0.0, ds = 0.0, h = 0.0;
    for (int n = lo + t; n < hi; n += AUX_THREADS) {
        z += (double)lse[n] * lse[n];
        if (target) {
            const float p = probs[(int64_t)n * E + target[n]];
            ds -= log(p > 1e-30f ? p : 1e-30f);
        }
        h += entropy[n];
    }
    red[0][t] = z;
    red[1][t] = ds;
    red[2][t] = h;
    __syncthreads();
    for (int w = AUX_THREADS / 2; w > 0; w /= 2) {
        if (t < w)
            for (int q = 0; q < 3; q++)
                red[q][t] += red[q][t + w];
        __syncthreads();
    }
    if (t < 3)
        out[2 * E + t] = red[t][0];
}

/* The partials added up in block order: tot[0..W) the layer's sums over this
 * process's tokens, tot[W] = N its token count; the entropy (a statistic,
 * kept per process) goes to entropy_acc. */
template <int E>
static __global__ void moe_aux_total_kernel(double *tot, double *entropy_acc, const double *part, int N)
{
    constexpr int W = 2 * E + 3;
    const int i = threadIdx.x;
    if (i > W)
        return;
    double t = 0.0;
    if (i < W)
        for (int q = 0; q < AUX_BLOCKS; q++)
            t += part[(int64_t)q * W + i];
    else
        t = (double)N;
    tot[i] = t;
    if (i == 2 * E + 2)
        entropy_acc[0] += t;
}

/* A squared coefficient of variation's statistics (the importance loss's
 * over the summed probabilities, the load loss's over the loads): the
 * mean and (population) variance of x[0, E), added to *mu and *var
 * (zeroed first) */
template <int E> static __device__ __forceinline__ void cv2_stats(const double *x, double *mu, double *var)
{
    for (int e = 0; e < E; e++)
        *mu += x[e] / E;
    for (int e = 0; e < E; e++)
        *var += (x[e] - *mu) * (x[e] - *mu) / E;
}

/* d/dx[e] of w CV^2(x), from cv2_stats's mu and var */
template <int E>
static __device__ __forceinline__ float cv2_grad(const double *x, int e, double mu, double var, float w)
{
    return (float)(w * (2.0 * (x[e] - mu) / (E * mu * mu) - 2.0 * var / (E * mu * mu * mu)));
}

/* The losses of one MoE layer from tot (its sums over every process's
 * tokens, Ng of them: with data parallelism the losses are those of the
 * whole batch, as on one GPU), and its statistics on the device, summed
 * over forward passes: st[0..E) kept choices per expert, st[E..E+ND*E)
 * top-1 choices per (dataset, expert), then assigned, dropped, tokens -
 * this process's own. */
template <int E, int K>
static __global__ void moe_aux_final_kernel(float *aux, double *sums, double *loss_acc, unsigned long long *st,
                                            const double *tot, const int *count, float w_bal, float w_z, float w_ds,
                                            float w_imp, int N, int ND, int train)
{
    if (threadIdx.x != 0)
        return;
    const double Ng = tot[2 * E + 3];
    double bal = 0.0, mu = 0.0, var = 0.0;
    for (int e = 0; e < E; e++)
        bal += (tot[e] / Ng) * (tot[E + e] / Ng);
    cv2_stats<E>(tot, &mu, &var);
    aux[0] = (float)(bal * E);
    aux[1] = (float)(tot[2 * E] / Ng);
    aux[2] = (float)(tot[2 * E + 1] / Ng);
    aux[3] = mu > 0.0 ? (float)(var / (mu * mu)) : 0.0f;
    /* for the backward pass, which divides by this process's N: the
     * probabilities summed over all tokens scaled by N / Ng (the importance
     * loss is scale-free, so its gradient comes out Ng / N times the whole
     * batch's, as the gradient average over processes wants) and the top-1
     * fractions of all tokens */
    for (int e = 0; e < E; e++) {
        sums[e] = tot[e] * ((double)N / Ng);
        sums[E + e] = tot[E + e] / Ng;
    }
    if (train)
        loss_acc[0] += w_bal * aux[0] + w_z * aux[1] + w_ds * aux[2] + w_imp * aux[3];
    unsigned long long kept = 0;
    for (int e = 0; e < E; e++) {
        st[e] += (unsigned long long)count[e];
        kept += (unsigned long long)count[e];
    }
    st[E + ND * E] += (unsigned long long)N * K;
    st[E + ND * E + 1] += (unsigned long long)N * K - kept;
    st[E + ND * E + 2] += (unsigned long long)N;
}

/* top-1 choices per (dataset, expert): integer counts, exact in any
 * order. A block counts its tokens' choices that fall in its window of
 * DS_SMEM (dataset, expert) cells (blockIdx.y) in shared memory, a warp's
 * equal keys added once by their first lane, then adds its nonzero
 * counts to st: every token's atomic on the same few counters in global
 * memory took 27 us a layer on config P. */
#define DS_SMEM 4096
#define DS_BLOCKS 256
template <int K>
static __global__ void moe_ds_expert_kernel(unsigned long long *st, const int *topk, const int32_t *dataset, int N,
                                            int T, int E, int ND)
{
    __shared__ unsigned cnt[DS_SMEM];
    const int lo = blockIdx.y * DS_SMEM, cells = min(DS_SMEM, ND * E - lo);
    for (int i = threadIdx.x; i < cells; i += blockDim.x)
        cnt[i] = 0;
    __syncthreads();
    const int lane = threadIdx.x % 32;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t base = (int64_t)blockIdx.x * blockDim.x; base < N; base += stride) {
        const int64_t n = base + threadIdx.x;
        int key = n < N ? dataset[n / T] * E + topk[n * K] - lo : -1;
        key = key < cells ? key : -1;
        const unsigned same = __match_any_sync(0xffffffffu, key);
        if (key >= 0 && lane == __ffs(same) - 1)
            atomicAdd(&cnt[key], (unsigned)__popc(same));
    }
    __syncthreads();
    for (int i = threadIdx.x; i < cells; i += blockDim.x)
        if (cnt[i])
            atomicAdd(&st[E + lo + i], (unsigned long long)cnt[i]);
}

/* target[n] = the expert of token n's dataset (dataset-aware routing) */
static __global__ void moe_target_kernel(int *target, const int32_t *dataset, const int *map, int N, int T)
{
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n < N)
        target[n] = map[dataset[n / T]];
}

static inline void moe_target(const kctx *k, int *target, const int32_t *dataset, const int *map, int N, int T)
{
    moe_target_kernel<<<blocks_for(N, 256), 256, 0, k->stream>>>(target, dataset, map, N, T);
    LAUNCH_CHECK();
}

template <int E, int K>
static inline void moe_aux_losses(const kctx *k, float *aux, double *sums, double *loss_acc, unsigned long long *st,
                                  double *entropy_acc, const moe_route_buf *r, const int *target,
                                  const int32_t *dataset, float w_bal, float w_z, float w_ds, float w_imp, int N, int T,
                                  int ND, int train)
{
    constexpr int W = 2 * E + 3;
    static_assert(W + 1 <= 1024, "moe_aux_total_kernel: one thread per sum");
    double *part = (double *)k->red, *tot = part + (int64_t)AUX_BLOCKS * W;
    moe_aux_partial_kernel<E, K><<<AUX_BLOCKS, AUX_THREADS, 0, k->stream>>>(part, r->probs, r->lse, r->topk, target,
                                                                            r->entropy, N);
    LAUNCH_CHECK();
    moe_aux_total_kernel<E><<<1, (W + 32) / 32 * 32, 0, k->stream>>>(tot, entropy_acc, part, N);
    LAUNCH_CHECK();
    /* training with data parallelism: the losses of the whole batch */
    if (train && k->sum_across)
        k->sum_across(k, tot, W + 1);
    moe_aux_final_kernel<E, K><<<1, 32, 0, k->stream>>>(aux, sums, loss_acc, st, tot, r->count, w_bal, w_z, w_ds,
                                                        w_imp, N, ND, train);
    LAUNCH_CHECK();
    const dim3 ds_grid(blocks_for(N, 256) < DS_BLOCKS ? blocks_for(N, 256) : DS_BLOCKS,
                       (unsigned)((ND * E + DS_SMEM - 1) / DS_SMEM));
    moe_ds_expert_kernel<K><<<ds_grid, 256, 0, k->stream>>>(st, r->topk, dataset, N, T, E, ND);
    LAUNCH_CHECK();
}

/* The router's backward, per expert e, shared by its two kernels (a warp
 * per token, a thread per token), and the load loss's. cv2_stats and
 * cv2_grad (above moe_aux_final_kernel) give the importance loss's part.
 * d/dp[e] of the balance loss (sums[E + e]: expert e's top-1 count) */
template <int E> static __device__ __forceinline__ float router_bal_grad(const double *sums, int e, float w_bal, int N)
{
    return (float)(w_bal * E * sums[E + e] / N);
}

/* a token's dL/dp[e] through its gates: dg[k] for the choices k of e,
 * through the renormalisation when normalize (S, gs: the sums of the
 * token's kept probabilities and of dg times them) */
template <int K>
static __device__ __forceinline__ float router_gate_grad(const int *idx, const float *dg, int e, int normalize,
                                                         float S, float gs)
{
    float d = 0.0f;
#pragma unroll
    for (int k = 0; k < K; k++)
        if (idx[k] == e)
            d += (normalize && K > 1) ? dg[k] / S - gs / (S * S) : dg[k];
    return d;
}

/* dL/dlogit[e] through the softmax (s: the sum over experts of p dp),
 * with the z-loss (lse: the token's log-sum-exp) and the dataset loss
 * (w_ds: 0 where the batch has no dataset targets; is_target: e is the
 * token's dataset's expert) */
static __device__ __forceinline__ float router_dlogit(float p, float dp, float s, float lse, float w_z, float w_ds,
                                                      bool is_target, int N)
{
    float v = p * (dp - s);
    if (w_z != 0.0f)
        v += w_z * 2.0f * lse * p / N;
    if (w_ds != 0.0f)
        v += w_ds * (p - (is_target ? 1.0f : 0.0f)) / N;
    return v;
}

/* The gradient of everything that reaches the router logits (one warp per
 * token): the gates (renormalised if asked), GShard's balance loss, the
 * importance loss, the softmax Jacobian, the z-loss and DAMEX's routing
 * loss. sums: the summed probabilities and top-1 fractions of the forward. */
template <int E, int K>
static __global__ void moe_router_bwd_kernel(float *dlogits, const float *dgate, const float *probs, const float *lse,
                                             const int *topk, const float *topp, const int *target, const double *sums,
                                             int N, int normalize, float w_bal, float w_z, float w_ds, float w_imp)
{
    constexpr int PER = (E + 31) / 32;
    const int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N)
        return;
    double mu = 0.0, var = 0.0;
    if (w_imp != 0.0f)
        cv2_stats<E>(sums, &mu, &var);
    const int *idx = topk + (int64_t)n * K;
    const float *val = topp + (int64_t)n * K, *dg = dgate + (int64_t)n * K;
    float S = 0.0f, gs = 0.0f;
    if (normalize && K > 1)
        for (int k = 0; k < K; k++) {
            S += val[k];
            gs += dg[k] * val[k];
        }
    const float *p = probs + (int64_t)n * E;
    float dp[PER], pv[PER];
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const int e = lane + 32 * j;
        dp[j] = 0.0f;
        pv[j] = 0.0f;
        if (e >= E)
            continue;
        pv[j] = p[e];
        dp[j] = router_gate_grad<K>(idx, dg, e, normalize, S, gs);
        if (w_imp != 0.0f)
            dp[j] += cv2_grad<E>(sums, e, mu, var, w_imp);
        dp[j] += router_bal_grad<E>(sums, e, w_bal, N);
        s += pv[j] * dp[j];
    }
    s = warp_sum(s);
    float *dl = dlogits + (int64_t)n * E;
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const int e = lane + 32 * j;
        if (e >= E)
            continue;
        dl[e] = router_dlogit(pv[j], dp[j], s, w_z != 0.0f ? lse[n] : 0.0f, w_z, target ? w_ds : 0.0f,
                              target && e == target[n], N);
    }
}

/* moe_router_bwd_kernel for at most ROUTER_THREAD_E experts: a thread per
 * token (as router_thread_kernel), the sum over experts in their order,
 * and the per-expert terms of the auxiliary losses, the same for every
 * token, made once a block */
template <int E, int K>
static __global__ void moe_router_bwd_thread_kernel(float *dlogits, const float *dgate, const float *probs,
                                                    const float *lse, const int *topk, const float *topp,
                                                    const int *target, const double *sums, int N, int normalize,
                                                    float w_bal, float w_z, float w_ds, float w_imp)
{
    static_assert(E <= ROUTER_THREAD_E, "moe_router_bwd_thread_kernel: a token's experts in registers");
    __shared__ float imp[E], bal[E];
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        double mu = 0.0, var = 0.0;
        if (w_imp != 0.0f)
            cv2_stats<E>(sums, &mu, &var);
        imp[e] = w_imp != 0.0f ? cv2_grad<E>(sums, e, mu, var, w_imp) : 0.0f;
        bal[e] = router_bal_grad<E>(sums, e, w_bal, N);
    }
    __syncthreads();
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N)
        return;
    int idx[K];
    float val[K], dg[K];
    float S = 0.0f, gs = 0.0f;
#pragma unroll
    for (int k = 0; k < K; k++) {
        idx[k] = topk[(int64_t)n * K + k];
        val[k] = topp[(int64_t)n * K + k];
        dg[k] = dgate[(int64_t)n * K + k];
    }
    if (normalize && K > 1)
#pragma unroll
        for (int k = 0; k < K; k++) {
            S += val[k];
            gs += dg[k] * val[k];
        }
    const float *p = probs + (int64_t)n * E;
    float dp[E], pv[E];
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < E; e++) {
        pv[e] = p[e];
        dp[e] = router_gate_grad<K>(idx, dg, e, normalize, S, gs);
        if (w_imp != 0.0f)
            dp[e] += imp[e];
        dp[e] += bal[e];
        s += pv[e] * dp[e];
    }
    const float zl = w_z != 0.0f ? lse[n] : 0.0f;
    const int tn = target && w_ds != 0.0f ? target[n] : -1;
    float *dl = dlogits + (int64_t)n * E;
#pragma unroll
    for (int e = 0; e < E; e++)
        dl[e] = router_dlogit(pv[e], dp[e], s, zl, w_z, target ? w_ds : 0.0f, e == tn, N);
}

template <int E, int K>
static inline void moe_router_backward(const kctx *k, float *dlogits, const float *dgate, const moe_route_buf *r,
                                       const int *target, const double *sums, int N, int normalize, float w_bal,
                                       float w_z, float w_ds, float w_imp)
{
    if constexpr (E <= ROUTER_THREAD_E)
        moe_router_bwd_thread_kernel<E, K><<<(unsigned)((N + 255) / 256), 256, 0, k->stream>>>(
            dlogits, dgate, r->probs, r->lse, r->topk, r->topp, target, sums, N, normalize, w_bal, w_z, w_ds, w_imp);
    else
        moe_router_bwd_kernel<E, K><<<(unsigned)((N + 7) / 8), 256, 0, k->stream>>>(
            dlogits, dgate, r->probs, r->lse, r->topk, r->topp, target, sums, N, normalize, w_bal, w_z, w_ds, w_imp);
    LAUNCH_CHECK();
}

/* ---- the load loss (Shazeer et al., 2017) --------------------------------------------------------------- */

/* is expert e among a token's K choices? */
template <int K> static __device__ __forceinline__ bool moe_load_chosen(const int (&idx)[K], int e)
{
    bool in = false;
#pragma unroll
    for (int k = 0; k < K; k++)
        in |= idx[k] == e;
    return in;
}

/* One thread per token: the chance of each of its choices under the gate
 * noise, as ops.h's moe_load_forward: P(n, e) = Phi((clean[n, e] - t) /
 * std), t the K-th largest noisy logit of the other experts (the (K+1)-th
 * of all for a chosen expert, the K-th for one not chosen). Writes prob
 * (P, for the sums), dens (dP / dclean) and thr (the experts at the two
 * thresholds; -1: none, when K = E). */
template <int E, int K>
static __global__ void moe_load_prob_kernel(float *prob, float *dens, int *thr, const float *clean, const float *noisy,
                                            const int *topk, int N, float std)
{
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N)
        return;
    int idx[K];
#pragma unroll
    for (int k = 0; k < K; k++)
        idx[k] = topk[(int64_t)n * K + k];
    const float *z = clean + (int64_t)n * E, *h = noisy + (int64_t)n * E;
    int in_at = -1; /* the best noisy logit outside the choices */
    for (int j = 0; j < E; j++)
        if (!moe_load_chosen<K>(idx, j) && (in_at < 0 || h[j] > h[in_at]))
            in_at = j;
    const int out_at = idx[K - 1];
    thr[(int64_t)n * 2] = in_at;
    thr[(int64_t)n * 2 + 1] = out_at;
    const float hin = in_at >= 0 ? h[in_at] : 0.0f, hout = h[out_at];
    for (int e = 0; e < E; e++) {
        const bool in = moe_load_chosen<K>(idx, e);
        double p = 1.0, dp = 0.0;
        if (!in || in_at >= 0) {
            const double u = ((double)z[e] - (double)(in ? hin : hout)) / std;
            p = 0.5 * erfc(-u * 0.70710678118654752);
            dp = exp(-0.5 * u * u) * 0.39894228040143268 / std;
        }
        prob[(int64_t)n * E + e] = (float)p;
        dens[(int64_t)n * E + e] = (float)dp;
    }
}

/* Per block of AUX_BLOCKS, each expert's P summed over the block's tokens,
 * in a fixed order (moe_aux_partial_kernel's scheme) */
template <int E>
static __global__ void __launch_bounds__(AUX_THREADS) moe_load_partial_kernel(double *part, const float *prob, int N)
{
    constexpr int LANES = E < AUX_THREADS ? AUX_THREADS / E : 1, GROUP = AUX_THREADS / LANES;
    __shared__ double red[AUX_THREADS];
    const int per = (N + AUX_BLOCKS - 1) / AUX_BLOCKS, lo = blockIdx.x * per, hi = min(N, lo + per);
    const int t = threadIdx.x, lane = t % LANES;
    for (int e0 = 0; e0 < E; e0 += GROUP) {
        const int e = e0 + t / LANES;
        double s = 0.0;
        if (e < E)
            for (int n = lo + lane; n < hi; n += LANES)
                s += prob[(int64_t)n * E + e];
        red[t] = s;
        __syncthreads();
        if (lane == 0 && e < E) {
            double b = 0.0;
            for (int l = 0; l < LANES; l++)
                b += red[t + l];
            part[(int64_t)blockIdx.x * E + e] = b;
        }
        __syncthreads();
    }
}

/* tot[0, E) the loads over this process's tokens, in block order; tot[E] = N */
template <int E> static __global__ void moe_load_total_kernel(double *tot, const double *part, int N)
{
    const int e = threadIdx.x;
    if (e > E)
        return;
    double t = 0.0;
    if (e < E)
        for (int q = 0; q < AUX_BLOCKS; q++)
            t += part[(int64_t)q * E + e];
    else
        t = (double)N;
    tot[e] = t;
}

/* From the loads of every process's tokens (Ng of them): aux = their CV^2,
 * added to the step's loss with its weight in training; load[0, E) for the
 * backward, scaled by N / Ng as the importance loss's sums are (the loss is
 * scale-free: its gradient comes out as the gradient average wants) */
template <int E>
static __global__ void moe_load_final_kernel(float *aux, double *load, double *loss_acc, const double *tot, float w,
                                             int N, int train)
{
    if (threadIdx.x != 0)
        return;
    const double Ng = tot[E];
    double mu = 0.0, var = 0.0;
    cv2_stats<E>(tot, &mu, &var);
    aux[0] = mu > 0.0 ? (float)(var / (mu * mu)) : 0.0f;
    for (int e = 0; e < E; e++)
        load[e] = tot[e] * ((double)N / Ng);
    if (train)
        loss_acc[0] += w * aux[0];
}

/* The load loss of one MoE layer after its routing: aux (the layer's
 * aux[4]), load, dens and thr for the backward. prob: [N, E] scratch. The
 * partial sums use the reduction scratch, which moe_aux_losses has done
 * with on this stream. */
template <int E, int K>
static inline void moe_load_forward(const kctx *k, float *aux, double *load, double *loss_acc, float *dens, int *thr,
                                    float *prob, const float *clean, const float *noisy, const int *topk, float std,
                                    float w, int N, int train)
{
    static_assert(E + 1 <= 1024, "moe_load_total_kernel: one thread per expert");
    double *part = (double *)k->red, *tot = part + (int64_t)AUX_BLOCKS * E;
    moe_load_prob_kernel<E, K><<<blocks_for(N, 128), 128, 0, k->stream>>>(prob, dens, thr, clean, noisy, topk, N, std);
    LAUNCH_CHECK();
    moe_load_partial_kernel<E><<<AUX_BLOCKS, AUX_THREADS, 0, k->stream>>>(part, prob, N);
    LAUNCH_CHECK();
    moe_load_total_kernel<E><<<1, (E + 32) / 32 * 32, 0, k->stream>>>(tot, part, N);
    LAUNCH_CHECK();
    if (train && k->sum_across)
        k->sum_across(k, tot, E + 1);
    moe_load_final_kernel<E><<<1, 32, 0, k->stream>>>(aux, load, loss_acc, tot, w, N, train);
    LAUNCH_CHECK();
}

/* dlogits (+)= the load loss's gradient, a thread per token (its row is
 * its own): + c_e dens[n, e] to expert e, - the same to the expert at its
 * threshold, c_e = dL/dload[e] made once a block */
template <int E, int K>
static __global__ void moe_load_backward_kernel(float *dlogits, const double *load, const float *dens, const int *thr,
                                                const int *topk, int N, float w)
{
    __shared__ float c[E];
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        double mu = 0.0, var = 0.0;
        cv2_stats<E>(load, &mu, &var);
        c[e] = mu > 0.0 ? cv2_grad<E>(load, e, mu, var, w) : 0.0f;
    }
    __syncthreads();
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N)
        return;
    int idx[K];
#pragma unroll
    for (int k = 0; k < K; k++)
        idx[k] = topk[(int64_t)n * K + k];
    const int in_at = thr[(int64_t)n * 2], out_at = thr[(int64_t)n * 2 + 1];
    float *dl = dlogits + (int64_t)n * E;
    for (int e = 0; e < E; e++) {
        const int at = moe_load_chosen<K>(idx, e) ? in_at : out_at;
        if (at < 0)
            continue;
        const float v = c[e] * dens[(int64_t)n * E + e];
        dl[e] += v;
        dl[at] -= v;
    }
}

template <int E, int K>
static inline void moe_load_backward(const kctx *k, float *dlogits, const double *load, const float *dens,
                                     const int *thr, const int *topk, int N, float w)
{
    moe_load_backward_kernel<E, K><<<blocks_for(N, 128), 128, 0, k->stream>>>(dlogits, load, dens, thr, topk, N, w);
    LAUNCH_CHECK();
}

/* ---- l2 norm rows (the cosine router) ---------------------------------------------------------------- */

/* one warp per row: out = in / max(|in|, 1e-6), norm = that divisor */
static __global__ void l2norm_fwd_kernel(float *out, float *norm, const float *in, int rows, int C)
{
    const int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (r >= rows)
        return;
    const float *x = in + (int64_t)r * C;
    double s = 0.0;
    for (int c = lane; c < C; c += 32)
        s += (double)x[c] * x[c];
    s = warp_sum_d(s);
    const float n = (float)sqrt(s) > 1e-6f ? (float)sqrt(s) : 1e-6f;
    for (int c = lane; c < C; c += 32)
        out[(int64_t)r * C + c] = x[c] / n;
    if (lane == 0)
        norm[r] = n;
}

static __global__ void l2norm_bwd_kernel(float *din, const float *dout, const float *out, const float *norm, int rows,
                                         int C, int acc)
{
    const int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (r >= rows)
        return;
    const float *g = dout + (int64_t)r * C, *y = out + (int64_t)r * C;
    float dot = 0.0f;
    for (int c = lane; c < C; c += 32)
        dot += y[c] * g[c];
    dot = warp_sum(dot);
    for (int c = lane; c < C; c += 32) {
        const float v = (g[c] - y[c] * dot) / norm[r];
        din[(int64_t)r * C + c] = acc ? din[(int64_t)r * C + c] + v : v;
    }
}

static inline void l2norm_forward(const kctx *k, float *out, float *norm, const float *in, int rows, int C)
{
    l2norm_fwd_kernel<<<(unsigned)((rows + 7) / 8), 256, 0, k->stream>>>(out, norm, in, rows, C);
    LAUNCH_CHECK();
}

static inline void l2norm_backward(const kctx *k, float *din, const float *dout, const float *out, const float *norm,
                                   int rows, int C, int acc)
{
    l2norm_bwd_kernel<<<(unsigned)((rows + 7) / 8), 256, 0, k->stream>>>(din, dout, out, norm, rows, C, acc);
    LAUNCH_CHECK();
}

/* ---- the optimizer, over the whole parameter arena in one launch -------------------------------------------- */

#define NORM_BLOCKS 256

/* g = 0 over the ranges runs[2 r] to runs[2 r + 1], r < nruns: the
 * gradients the backward adds to (GRAD_STORED's others), blockIdx.y a run */
static __global__ void zero_runs_kernel(float *g, const int64_t *runs)
{
    const int64_t lo = runs[2 * blockIdx.y], hi = runs[2 * blockIdx.y + 1];
    for (int64_t i = lo + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < hi; i += (int64_t)gridDim.x * blockDim.x)
        g[i] = 0.0f;
}

/* runs: [lo, hi) pairs on the device; blocks: each run's blocks
 * (grad_zero_runs: 8 floats a thread of the longest run, at most 1024) */
static inline void zero_runs(const kctx *k, float *g, const int64_t *runs, int nruns, unsigned blocks)
{
    if (nruns <= 0)
        return;
    zero_runs_kernel<<<dim3(blocks, (unsigned)nruns), 256, 0, k->stream>>>(g, runs);
    LAUNCH_CHECK();
}

/* part[blockIdx.x] = the sum of every thread's s in the block */
__device__ static inline void block_sum_store(double *part, double s)
{
    __shared__ double sm[32];
    s = warp_sum_d(s);
    if (threadIdx.x % 32 == 0)
        sm[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < (int)blockDim.x / 32; w++)
            t += sm[w];
        part[blockIdx.x] = t;
    }
}

static __global__ void sumsq_partial_kernel(double *part, const float *g, int64_t n)
{
    double s = 0.0;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        s += (double)g[i] * g[i];
    block_sum_store(part, s);
}

/* sumsq_partial_kernel where g is 16-byte aligned: 4 floats a load and 4
 * loads in flight a thread (the scalar loop's one load at a time took
 * 0.24 ms a step on config S, 2.4 times the bytes' time); the n % 4 last
 * values on block 0 */
__device__ static inline double sumsq4(float4 v)
{
    return (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
}

static __global__ void sumsq_partial4_kernel(double *part, const float *g, int64_t n)
{
    const float4 *g4 = reinterpret_cast<const float4 *>(g);
    const int64_t n4 = n / 4, stride = (int64_t)gridDim.x * blockDim.x;
    double s = 0.0;
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n4; i += 4 * stride) {
        float4 v[4];
#pragma unroll
        for (int u = 0; u < 4; u++)
            v[u] = __ldcs(g4 + i + u * stride);
#pragma unroll
        for (int u = 0; u < 4; u++)
            s += sumsq4(v[u]);
    }
    for (; i < n4; i += stride)
        s += sumsq4(__ldcs(g4 + i));
    if (blockIdx.x == 0 && threadIdx.x < n - 4 * n4)
        s += (double)g[4 * n4 + threadIdx.x] * g[4 * n4 + threadIdx.x];
    block_sum_store(part, s);
}

/* the same over the ranges runs[2 r] to runs[2 r + 1], r < nruns (the
 * parameter arena's pieces under expert parallelism) */
static __global__ void sumsq_runs_partial_kernel(double *part, const float *g, const int64_t *runs, int nruns)
{
    double s = 0.0;
    for (int r = 0; r < nruns; r++)
        for (int64_t i = runs[2 * r] + (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < runs[2 * r + 1];
             i += (int64_t)gridDim.x * blockDim.x)
            s += (double)g[i] * g[i];
    block_sum_store(part, s);
}

/* out[0] = the total of part[0..nparts), or its square root, by one block
 * of SUMSQ_FINAL_THREADS: thread t adds part[t], part[t + threads], ...
 * in order (unrolled: the loads go out together, the adds stay in
 * order), then block_sum_store the threads' sums in a fixed order (the
 * same bits every run). AdamW's partial sums are one a block of its grid
 * (117,000 on config S): one thread alone took 52 us over them. */
#define SUMSQ_FINAL_THREADS 1024
static __global__ void __launch_bounds__(SUMSQ_FINAL_THREADS)
    sumsq_final_kernel(double *out, const double *part, int nparts, int root)
{
    double t = 0.0;
#pragma unroll 8
    for (int q = threadIdx.x; q < nparts; q += SUMSQ_FINAL_THREADS)
        t += part[q];
    block_sum_store(out, t);
    /* thread 0 wrote out[0] */
    if (root && threadIdx.x == 0)
        out[0] = sqrt(out[0]);
}

static inline void sumsq_final(const kctx *k, double *out, const double *part, int nparts, bool root)
{
    sumsq_final_kernel<<<1, SUMSQ_FINAL_THREADS, 0, k->stream>>>(out, part, nparts, root ? 1 : 0);
    LAUNCH_CHECK();
}

/* norm[0] = sqrt(a[0] + b[0]) */
static __global__ void sqrt_sum_kernel(double *norm, const double *a, const double *b)
{
    if (threadIdx.x == 0)
        norm[0] = sqrt(a[0] + b[0]);
}

/* sum[0] = the sum of squares over nruns ranges of g (runs: [lo, hi) pairs
 * on the device; deterministic) */
static inline void sumsq_runs(const kctx *k, double *sum, const float *g, const int64_t *runs, int nruns)
{
    double *part = (double *)k->red;
    sumsq_runs_partial_kernel<<<NORM_BLOCKS, 256, 0, k->stream>>>(part, g, runs, nruns);
    LAUNCH_CHECK();
    sumsq_final(k, sum, part, NORM_BLOCKS, false);
}

/* norm[0] = |g| over n values (deterministic) */
static inline void grad_norm(const kctx *k, double *norm, const float *g, int64_t n)
{
    double *part = (double *)k->red;
    if (((uintptr_t)g & 15) == 0)
        sumsq_partial4_kernel<<<NORM_BLOCKS, 256, 0, k->stream>>>(part, g, n);
    else
        sumsq_partial_kernel<<<NORM_BLOCKS, 256, 0, k->stream>>>(part, g, n);
    LAUNCH_CHECK();
    sumsq_final(k, norm, part, NORM_BLOCKS, true);
}

/* The step's scalars, read on the device so that the captured graph serves
 * every step. */
typedef struct step_scalars {
    float lr;
    int t;          /* optimizer step, from 1 */
    int64_t step;   /* training step, from 0: the random streams */
    float lam;      /* CutMix: the share of labels in the targets (1: unmixed) */
} step_scalars;

/* AdamW's constants of a step */
struct adamw_c {
    float lr, c1, c2, gs, b1, b2, eps, wd;
};

/* one parameter's AdamW update */
__device__ static inline void adamw_one(float &p, float &m, float &v, float g, uint8_t decay, const adamw_c &c)
{
    const float gi = g * c.gs;
    m = c.b1 * m + (1.0f - c.b1) * gi;
    v = c.b2 * v + (1.0f - c.b2) * gi * gi;
    const float mhat = m / c.c1, vhat = v / c.c2;
    p -= c.lr * (mhat / (sqrtf(vhat) + c.eps) + (decay ? c.wd : 0.0f) * p);
}

/* AdamW with decoupled weight decay where decay[i] (norms, biases, tokens
 * are exempt), gradients scaled by clip / |g| when |g| > clip > 0; with
 * p16, the new weights rounded to bf16 there too (kctx.w16). The
 * first n4 groups of 4 parameters go by 16-byte loads and stores (the
 * arrays 16-byte aligned, decay 4-byte; n4 = 0 otherwise), the rest one by
 * one. The arrays never overlap (__restrict__): each thread's loads go out
 * together, where the load of p had waited for the stores of m and v.
 *
 * NORM (clip = 0 alone: nothing waits for |g| before the update): the
 * kernel also sums g's squares, in double as grad_norm does, into
 * part[blockIdx.x], which spares grad_norm's separate read of the
 * gradient arena (482 MB a step on config S). The grid (blocks_for of the
 * groups of 4) depends on n alone, so the sum's order, and its bits, do
 * not depend on the GPU. */
template <bool NORM>
static __global__ void adamw_kernel(float *__restrict__ p, __nv_bfloat16 *__restrict__ p16, const float *__restrict__ g,
                                    float *__restrict__ m, float *__restrict__ v, const uint8_t *__restrict__ decay,
                                    int64_t n, int64_t n4, const step_scalars *sc, const double *gnorm, double *part,
                                    float clip, float b1, float b2, float eps, float wd)
{
    adamw_c c;
    c.lr = sc->lr;
    c.c1 = 1.0f - powf(b1, (float)sc->t);
    c.c2 = 1.0f - powf(b2, (float)sc->t);
    c.gs = clip > 0.0f && gnorm[0] > clip ? (float)(clip / gnorm[0]) : 1.0f;
    c.b1 = b1, c.b2 = b2, c.eps = eps, c.wd = wd;
    double s = 0.0;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x, first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (int64_t i = first; i < n4; i += stride) {
        float4 P = reinterpret_cast<float4 *>(p)[i], M = reinterpret_cast<float4 *>(m)[i];
        float4 V = reinterpret_cast<float4 *>(v)[i];
        const float4 G = reinterpret_cast<const float4 *>(g)[i];
        const uchar4 d = reinterpret_cast<const uchar4 *>(decay)[i];
        if (NORM)
            s += sumsq4(G);
        adamw_one(P.x, M.x, V.x, G.x, d.x, c);
        adamw_one(P.y, M.y, V.y, G.y, d.y, c);
        adamw_one(P.z, M.z, V.z, G.z, d.z, c);
        adamw_one(P.w, M.w, V.w, G.w, d.w, c);
        reinterpret_cast<float4 *>(p)[i] = P;
        reinterpret_cast<float4 *>(m)[i] = M;
        reinterpret_cast<float4 *>(v)[i] = V;
        if (p16) {
            __nv_bfloat162 *d16 = reinterpret_cast<__nv_bfloat162 *>(p16 + 4 * i);
            d16[0] = __floats2bfloat162_rn(P.x, P.y);
            d16[1] = __floats2bfloat162_rn(P.z, P.w);
        }
    }
    for (int64_t i = 4 * n4 + first; i < n; i += stride) {
        if (NORM)
            s += (double)g[i] * g[i];
        adamw_one(p[i], m[i], v[i], g[i], decay[i], c);
        if (p16)
            p16[i] = __float2bfloat16_rn(p[i]);
    }
    if (NORM)
        block_sum_store(part, s);
}

/* adamw_kernel<true>'s blocks over n parameters (a group of 4 a thread;
 * model.cu sizes kctx.red for as many doubles) */
static inline unsigned adamw_norm_blocks(int64_t n)
{
    return blocks_for((n + 3) / 4, 256);
}

/* norm: NULL, or (clip = 0 alone) where |g| goes, summed by the update
 * itself when kctx.red holds adamw_norm_blocks(n) doubles (else by
 * grad_norm first) */
static inline void adamw(const kctx *k, float *p, __nv_bfloat16 *p16, const float *g, float *m, float *v,
                         const uint8_t *decay, int64_t n, const step_scalars *sc, const double *gnorm, float clip,
                         float b1, float b2, float eps, float wd, double *norm = nullptr)
{
    const bool al = aligned16(p, g, m) && aligned16(v) && ((uintptr_t)decay & 3) == 0 && ((uintptr_t)p16 & 7) == 0;
    const int64_t n4 = al ? n / 4 : 0;
    const unsigned nb = adamw_norm_blocks(n);
    if (norm && clip == 0.0f && 2 * (int64_t)nb <= k->red_floats) {
        double *part = (double *)k->red;
        adamw_kernel<true><<<nb, 256, 0, k->stream>>>(p, p16, g, m, v, decay, n, n4, sc, gnorm, part, clip, b1, b2,
                                                      eps, wd);
        LAUNCH_CHECK();
        sumsq_final(k, norm, part, (int)nb, true);
        return;
    }
    if (norm)
        grad_norm(k, norm, g, n);
    adamw_kernel<false><<<blocks_for(n4 > 0 ? n4 : n, 256), 256, 0, k->stream>>>(
        p, p16, g, m, v, decay, n, n4, sc, gnorm, nullptr, clip, b1, b2, eps, wd);
    LAUNCH_CHECK();
}

/* SGD with momentum (PyTorch's semantics: L2 decay added to the gradient);
 * with p16, the new weights rounded to bf16 there too (kctx.w16) */
static __global__ void sgd_kernel(float *__restrict__ p, __nv_bfloat16 *__restrict__ p16, const float *__restrict__ g,
                                  float *__restrict__ buf,
                                  const uint8_t *__restrict__ decay, int64_t n,
                                  const step_scalars *sc, const double *gnorm, float clip, float mu, int nesterov,
                                  float wd)
{
    const float lr = sc->lr;
    const float gs = clip > 0.0f && gnorm[0] > clip ? (float)(clip / gnorm[0]) : 1.0f;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float d = g[i] * gs + (decay[i] ? wd : 0.0f) * p[i];
        if (mu != 0.0f) {
            buf[i] = sc->t == 1 ? d : mu * buf[i] + d;
            d = nesterov ? d + mu * buf[i] : buf[i];
        }
        p[i] -= lr * d;
        if (p16)
            p16[i] = __float2bfloat16_rn(p[i]);
    }
}

#endif /* MOE_KERNELS_CUH */
