/* bench/lt_algos.cu: every algorithm cuBLASLt's heuristic offers for the
 * dense products of configs P and S (qkv and the attention's projection:
 * forward, input gradient, weight gradient), each timed alone against
 * cublasGemmEx's default, and whether its output has the same bits
 * (notes-gpu.md item 101). bf16 operands, fp32 accumulation, beta 0;
 * the mean of 50 runs after 3, the operands hot in L2 (as a product's
 * inputs often are in the step).
 *
 *   nvcc -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a bench/lt_algos.cu -lcublasLt -lcublas -o lt_algos
 *   ./lt_algos [MAX_ALGOS]          (default 8) */
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#define CK(x)                                                                                                        \
    do {                                                                                                             \
        cudaError_t e_ = (x);                                                                                        \
        if (e_ != cudaSuccess) {                                                                                     \
            fprintf(stderr, "lt_algos: %s: %s\n", #x, cudaGetErrorString(e_));                                      \
            exit(1);                                                                                                 \
        }                                                                                                            \
    } while (0)
#define BK(x)                                                                                                        \
    do {                                                                                                             \
        cublasStatus_t s_ = (x);                                                                                     \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                           \
            fprintf(stderr, "lt_algos: %s: status %d\n", #x, (int)s_);                                               \
            exit(1);                                                                                                 \
        }                                                                                                            \
    } while (0)

/* column-major d [m, n] = op(a) [m, k] op(b) [k, n]; the trainer's
 * row-major out [rows, cols] is d [cols, rows] */
struct product {
    const char *name;
    cublasOperation_t ta, tb;
    int m, n, k;
    cudaDataType_t dtype;
};

/* microseconds a call of f, the mean of reps after 3 */
template <typename F> static float time_us(cudaStream_t st, int reps, F f)
{
    for (int i = 0; i < 3; i++)
        f();
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    CK(cudaEventRecord(a, st));
    for (int i = 0; i < reps; i++)
        f();
    CK(cudaEventRecord(b, st));
    CK(cudaEventSynchronize(b));
    float ms = 0.0f;
    CK(cudaEventElapsedTime(&ms, a, b));
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    return 1000.0f * ms / (float)reps;
}

template <typename T> static int algo_attr(const cublasLtMatmulAlgo_t &algo, cublasLtMatmulAlgoConfigAttributes_t attr)
{
    T v = 0;
    size_t got = 0;
    return cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, &v, sizeof v, &got) == CUBLAS_STATUS_SUCCESS ? (int)v
                                                                                                           : -1;
}

int main(int argc, char **argv)
{
    const int max_algos = argc > 1 ? atoi(argv[1]) : 8;
    if (max_algos < 1 || max_algos > 64) {
        fprintf(stderr, "lt_algos: MAX_ALGOS must be 1 to 64, not %s\n", argv[1]);
        return 2;
    }
    const int ts = 65 * 256, ds = 384, tp = 65 * 1024, dp = 256; /* tokens and widths of S and P */
    const product prods[] = {
        { "S qkv forward", CUBLAS_OP_T, CUBLAS_OP_N, 3 * ds, ts, ds, CUDA_R_16BF },
        { "S projection forward", CUBLAS_OP_T, CUBLAS_OP_N, ds, ts, ds, CUDA_R_32F },
        { "S qkv input gradient", CUBLAS_OP_N, CUBLAS_OP_N, ds, ts, 3 * ds, CUDA_R_32F },
        { "S projection input gradient", CUBLAS_OP_N, CUBLAS_OP_N, ds, ts, ds, CUDA_R_32F },
        { "S qkv weight gradient", CUBLAS_OP_N, CUBLAS_OP_T, ds, 3 * ds, ts, CUDA_R_32F },
        { "S projection weight gradient", CUBLAS_OP_N, CUBLAS_OP_T, ds, ds, ts, CUDA_R_32F },
        { "P qkv forward", CUBLAS_OP_T, CUBLAS_OP_N, 3 * dp, tp, dp, CUDA_R_16BF },
        { "P projection forward", CUBLAS_OP_T, CUBLAS_OP_N, dp, tp, dp, CUDA_R_32F },
        { "P qkv input gradient", CUBLAS_OP_N, CUBLAS_OP_N, dp, tp, 3 * dp, CUDA_R_32F },
        { "P projection input gradient", CUBLAS_OP_N, CUBLAS_OP_N, dp, tp, dp, CUDA_R_32F },
        { "P qkv weight gradient", CUBLAS_OP_N, CUBLAS_OP_T, dp, 3 * dp, tp, CUDA_R_32F },
        { "P projection weight gradient", CUBLAS_OP_N, CUBLAS_OP_T, dp, dp, tp, CUDA_R_32F },
    };
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    cublasLtHandle_t lt;
    BK(cublasLtCreate(&lt));
    cublasHandle_t blas;
    BK(cublasCreate(&blas));
    BK(cublasSetStream(blas, st));
    size_t ws_bytes = (size_t)32 << 20; /* the trainer's BLAS_WORKSPACE_BYTES */
    void *ws = nullptr, *ws_lt = nullptr;
    CK(cudaMalloc(&ws, ws_bytes));
    CK(cudaMalloc(&ws_lt, ws_bytes));
    BK(cublasSetWorkspace(blas, ws, ws_bytes));
    const size_t elems = (size_t)tp * 3 * dp; /* the largest operand and output */
    __nv_bfloat16 *a = nullptr, *b = nullptr;
    void *want = nullptr, *got = nullptr;
    CK(cudaMalloc(&a, elems * sizeof(__nv_bfloat16)));
    CK(cudaMalloc(&b, elems * sizeof(__nv_bfloat16)));
    CK(cudaMalloc(&want, elems * sizeof(float)));
    CK(cudaMalloc(&got, elems * sizeof(float)));
    {
        std::vector<__nv_bfloat16> h(elems);
        unsigned s = 1;
        for (auto &x : h) {
            s = s * 1664525u + 1013904223u;
            x = __float2bfloat16((float)((s >> 8) & 0xffff) / 65536.0f - 0.5f);
        }
        CK(cudaMemcpy(a, h.data(), elems * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
        CK(cudaMemcpy(b, h.data(), elems * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
    }
    const float one = 1.0f, zero = 0.0f;
    for (const product &p : prods) {
        const int lda = p.ta == CUBLAS_OP_N ? p.m : p.k, ldb = p.tb == CUBLAS_OP_N ? p.k : p.n;
        const size_t out_bytes = (size_t)p.m * p.n * (p.dtype == CUDA_R_32F ? 4 : 2);
        const double flop = 2.0 * p.m * p.n * p.k;
        const float t_ex = time_us(st, 50, [&] {
            BK(cublasGemmEx(blas, p.ta, p.tb, p.m, p.n, p.k, &one, a, CUDA_R_16BF, lda, b, CUDA_R_16BF, ldb, &zero,
                            want, p.dtype, p.m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        });
        std::vector<unsigned char> ref(out_bytes), out(out_bytes);
        CK(cudaMemcpy(ref.data(), want, out_bytes, cudaMemcpyDeviceToHost));
        printf("%s (m %d, n %d, k %d): cublasGemmEx %.2f us, %.0f TFLOP/s\n", p.name, p.m, p.n, p.k, t_ex,
               flop / t_ex * 1e-6);

        cublasLtMatmulDesc_t op;
        cublasLtMatrixLayout_t la, lb, ld;
        cublasLtMatmulPreference_t pref;
        BK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        BK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &p.ta, sizeof p.ta));
        BK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &p.tb, sizeof p.tb));
        BK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, p.ta == CUBLAS_OP_N ? p.m : p.k,
                                      p.ta == CUBLAS_OP_N ? p.k : p.m, lda));
        BK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, p.tb == CUBLAS_OP_N ? p.k : p.n,
                                      p.tb == CUBLAS_OP_N ? p.n : p.k, ldb));
        BK(cublasLtMatrixLayoutCreate(&ld, p.dtype, p.m, p.n, p.m));
        BK(cublasLtMatmulPreferenceCreate(&pref));
        BK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                                sizeof ws_bytes));
        std::vector<cublasLtMatmulHeuristicResult_t> res((size_t)max_algos);
        int found = 0;
        BK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, ld, ld, pref, max_algos, res.data(), &found));
        for (int i = 0; i < found; i++) {
            const cublasLtMatmulAlgo_t &algo = res[(size_t)i].algo;
            const float t = time_us(st, 50, [&] {
                BK(cublasLtMatmul(lt, op, &one, a, la, b, lb, &zero, got, ld, got, ld, &algo, ws_lt, ws_bytes, st));
            });
            CK(cudaMemcpy(out.data(), got, out_bytes, cudaMemcpyDeviceToHost));
            printf("  heuristic's %2d: %7.2f us, %4.0f TFLOP/s, tile %d, split-k %d, %s\n", i + 1, t,
                   flop / t * 1e-6, algo_attr<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_TILE_ID),
                   algo_attr<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
                   memcmp(out.data(), ref.data(), out_bytes) == 0 ? "the same bits" : "other bits");
        }
        BK(cublasLtMatmulPreferenceDestroy(pref));
        BK(cublasLtMatrixLayoutDestroy(ld));
        BK(cublasLtMatrixLayoutDestroy(lb));
        BK(cublasLtMatrixLayoutDestroy(la));
        BK(cublasLtMatmulDescDestroy(op));
    }
    CK(cudaFree(a));
    CK(cudaFree(b));
    CK(cudaFree(want));
    CK(cudaFree(got));
    CK(cudaFree(ws));
    CK(cudaFree(ws_lt));
    BK(cublasLtDestroy(lt));
    BK(cublasDestroy(blas));
    return 0;
}
