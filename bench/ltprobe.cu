/* bench/ltprobe.cu: which bias types cuBLASLt's bias epilogue takes with a
 * bf16 output, and how fast, for the qkv products of configs P and S
 * (bf16 operands, fp32 accumulation; notes-gpu.md item 52). For each
 * shape: fp32 output and bias (the reference), bf16 output with an fp32
 * bias, and bf16 output with a bf16 bias 16-, 8- and 2-byte aligned; the
 * time is the heuristic's first algorithm, the mean of 20 runs.
 *
 *   nvcc -O2 -gencode=arch=compute_90a,code=sm_90a bench/ltprobe.cu -lcublasLt -o ltprobe && ./ltprobe */
#include <cstdio>
#include <cstdlib>
#include <cublasLt.h>
#include <cuda_runtime.h>

#define CK(x)                                                                                                        \
    do {                                                                                                             \
        cudaError_t e_ = (x);                                                                                        \
        if (e_ != cudaSuccess) {                                                                                     \
            fprintf(stderr, "ltprobe: %s: %s\n", #x, cudaGetErrorString(e_));                                        \
            exit(1);                                                                                                 \
        }                                                                                                            \
    } while (0)

struct bufs {
    void *ws, *w, *x, *d;
    char *bias;
    size_t ws_bytes;
};

static const char *type_name(cudaDataType_t t)
{
    return t == CUDA_R_16BF ? "bf16" : "fp32";
}

/* out^T [N, M] = w^T (w stored [N, K]) inp^T (inp [M, K]), column-major as
 * kernels.cuh's lt_linear_bias, with the bias at bias + boff bytes */
static void probe(cublasLtHandle_t lt, const bufs &b, int M, int K, int N, cudaDataType_t dt, cudaDataType_t bt,
                  size_t boff)
{
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulHeuristicResult_t heur = {};
    int found = 0;
    const cublasOperation_t tw = CUBLAS_OP_T, tx = CUBLAS_OP_N;
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    const void *bias = b.bias + boff;
    cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tw, sizeof tw);
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tx, sizeof tx);
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt);
    cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, K, N, K);
    cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, K, M, K);
    cublasLtMatrixLayoutCreate(&lc, dt, N, M, N);
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &b.ws_bytes,
                                         sizeof b.ws_bytes);
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 1, &heur, &found);
    float ms = -1.0f;
    if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
        const float one = 1.0f, zero = 0.0f;
        cudaEvent_t e0, e1;
        CK(cudaEventCreate(&e0));
        CK(cudaEventCreate(&e1));
        for (int i = 0; i < 23; i++) {
            if (i == 3)
                CK(cudaEventRecord(e0));
            cublasLtMatmul(lt, op, &one, b.w, la, b.x, lb, &zero, b.d, lc, b.d, lc, &heur.algo, b.ws, b.ws_bytes, 0);
        }
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        ms /= 20;
        CK(cudaEventDestroy(e0));
        CK(cudaEventDestroy(e1));
    }
    printf("M=%d K=%d N=%d: D %s, bias %s at +%zu bytes: heuristic status %d, %s", M, K, N, type_name(dt),
           type_name(bt), boff, (int)st, found > 0 ? "" : "no algorithm\n");
    if (found > 0)
        printf("%.4f ms\n", ms);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(op);
}

int main()
{
    cublasLtHandle_t lt;
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "ltprobe: cannot create a cuBLASLt handle\n");
        return 1;
    }
    bufs b;
    b.ws_bytes = (size_t)32 << 20;
    CK(cudaMalloc(&b.ws, b.ws_bytes));
    CK(cudaMalloc(&b.w, (size_t)64 << 20));
    CK(cudaMalloc(&b.x, (size_t)256 << 20));
    CK(cudaMalloc(&b.d, (size_t)512 << 20));
    CK(cudaMalloc((void **)&b.bias, (size_t)1 << 20));
    CK(cudaMemset(b.w, 0, (size_t)64 << 20));
    CK(cudaMemset(b.x, 0, (size_t)256 << 20));
    CK(cudaMemset(b.bias, 0, (size_t)1 << 20));
    const int shapes[2][3] = { { 66560, 256, 768 }, { 16640, 384, 1152 } }; /* P's and S's qkv */
    for (const auto &s : shapes) {
        probe(lt, b, s[0], s[1], s[2], CUDA_R_32F, CUDA_R_32F, 0);
        probe(lt, b, s[0], s[1], s[2], CUDA_R_16BF, CUDA_R_32F, 0);
        for (size_t off : { 0, 8, 2 })
            probe(lt, b, s[0], s[1], s[2], CUDA_R_16BF, CUDA_R_16BF, off);
    }
    cublasLtDestroy(lt);
    return 0;
}
