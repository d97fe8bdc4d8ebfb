/* bench/narrow.cu: the routers' narrow fp32 products alone (kernels.cuh's
 * narrow_forward and narrow_backward), on one shape: M rows of K inputs,
 * N outputs (default config S's router: 16640 384 8; P's: 66560 256 7).
 * Checks the weight gradient and the forward against double sums on the
 * host, then times each call: the mean of 96 launches after 8, over 8
 * copies of the inputs (on S's shape 205 MB: x is read from memory, not
 * from the 50 MB L2), and a device copy of x for the memory's rate
 * (notes-gpu.md item 96).
 *
 *   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I templates/cuda bench/narrow.cu \
 *       -lcublas -lcublasLt -lcuda -o narrow && ./narrow [M K N] */
#include "kernels.cuh"

#include <cmath>
#include <vector>

int main(int argc, char **argv)
{
    if (argc != 1 && argc != 4) {
        fprintf(stderr, "usage: narrow [M K N]\n");
        return 2;
    }
    const int M = argc > 1 ? atoi(argv[1]) : 16640, K = argc > 1 ? atoi(argv[2]) : 384,
              N = argc > 1 ? atoi(argv[3]) : 8;
    if (M < 1 || K < 1 || N < 1) {
        fprintf(stderr, "narrow: M, K and N must be positive (M=%d K=%d N=%d)\n", M, K, N);
        return 2;
    }
    const int copies = 8, reps = 12;
    kctx k;
    memset(&k, 0, sizeof k);
    CUDA_CHECK(cudaStreamCreate(&k.stream));
    k.compute = CUBLAS_COMPUTE_32F;
    k.red_floats = (int64_t)RED_CHUNKS * N * K;
    CUDA_CHECK(cudaMalloc(&k.red, sizeof(float) * (size_t)k.red_floats));
    std::vector<float> hx((size_t)M * K), hg((size_t)M * N), hw((size_t)N * K);
    unsigned seed = 1;
    auto rnd = [&]() {
        seed = seed * 1664525u + 1013904223u;
        return (float)((seed >> 8) & 0xffff) / 32768.0f - 1.0f;
    };
    for (float &v : hx)
        v = rnd();
    for (float &v : hg)
        v = rnd();
    for (float &v : hw)
        v = rnd();
    float *x[copies], *g[copies], *dx[copies], *out[copies], *w, *dw;
    for (int i = 0; i < copies; i++) {
        CUDA_CHECK(cudaMalloc(&x[i], sizeof(float) * hx.size()));
        CUDA_CHECK(cudaMalloc(&dx[i], sizeof(float) * hx.size()));
        CUDA_CHECK(cudaMalloc(&g[i], sizeof(float) * hg.size()));
        CUDA_CHECK(cudaMalloc(&out[i], sizeof(float) * hg.size()));
        CUDA_CHECK(cudaMemcpy(x[i], hx.data(), sizeof(float) * hx.size(), cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(g[i], hg.data(), sizeof(float) * hg.size(), cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemset(dx[i], 0, sizeof(float) * hx.size()));
    }
    CUDA_CHECK(cudaMalloc(&w, sizeof(float) * hw.size()));
    CUDA_CHECK(cudaMalloc(&dw, sizeof(float) * hw.size()));
    CUDA_CHECK(cudaMemcpy(w, hw.data(), sizeof(float) * hw.size(), cudaMemcpyHostToDevice));
    if (!narrow_ok(&k, mm_in(static_cast<const float *>(x[0])), w, N, K)) {
        fprintf(stderr, "narrow: M=%d K=%d N=%d does not take the narrow kernels (narrow_ok)\n", M, K, N);
        return 1;
    }

    /* the results against double sums, relative to the sums of magnitudes */
    CUDA_CHECK(cudaMemset(dw, 0, sizeof(float) * hw.size()));
    narrow_backward(&k, nullptr, dw, g[0], x[0], w, M, K, N, 0);
    narrow_forward(&k, out[0], x[0], w, nullptr, M, K, N);
    CUDA_CHECK(cudaStreamSynchronize(k.stream));
    std::vector<float> rdw(hw.size()), rout(hg.size());
    CUDA_CHECK(cudaMemcpy(rdw.data(), dw, sizeof(float) * rdw.size(), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(rout.data(), out[0], sizeof(float) * rout.size(), cudaMemcpyDeviceToHost));
    double err_dw = 0.0, err_out = 0.0;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < K; c++) {
            double t = 0.0, a = 0.0;
            for (int m = 0; m < M; m++) {
                const double p = (double)hg[(size_t)m * N + n] * hx[(size_t)m * K + c];
                t += p;
                a += fabs(p);
            }
            err_dw = fmax(err_dw, fabs(rdw[(size_t)n * K + c] - t) / a);
        }
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double t = 0.0, a = 0.0;
            for (int c = 0; c < K; c++) {
                const double p = (double)hw[(size_t)n * K + c] * hx[(size_t)m * K + c];
                t += p;
                a += fabs(p);
            }
            err_out = fmax(err_out, fabs(rout[(size_t)m * N + n] - t) / a);
        }
    printf("narrow products M=%d K=%d N=%d: relative error dw %.3g, forward %.3g\n", M, K, N, err_dw, err_out);
    if (!(err_dw < 1e-5 && err_out < 1e-5)) {
        fprintf(stderr, "narrow: the results are wrong\n");
        return 1;
    }

    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    auto time = [&](const char *name, auto f) {
        for (int i = 0; i < copies; i++)
            f(i);
        CUDA_CHECK(cudaEventRecord(e0, k.stream));
        for (int r = 0; r < reps; r++)
            for (int i = 0; i < copies; i++)
                f(i);
        CUDA_CHECK(cudaEventRecord(e1, k.stream));
        CUDA_CHECK(cudaEventSynchronize(e1));
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        printf("  %-40s %8.2f us\n", name, 1000.0 * ms / (reps * copies));
    };
    time("forward", [&](int i) { narrow_forward(&k, out[i], x[i], w, nullptr, M, K, N); });
    time("weight gradient (with the chunks' sum)",
         [&](int i) { narrow_backward(&k, nullptr, dw, g[i], x[i], w, M, K, N, 0); });
    time("input gradient (added) + weight gradient",
         [&](int i) { narrow_backward(&k, dx[i], dw, g[i], x[i], w, M, K, N, 1); });
    time("a copy of x (the memory's rate)", [&](int i) {
        CUDA_CHECK(cudaMemcpyAsync(dx[i], x[i], sizeof(float) * hx.size(), cudaMemcpyDeviceToDevice, k.stream));
    });
    return 0;
}
