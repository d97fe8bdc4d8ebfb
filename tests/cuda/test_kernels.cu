/* test_kernels.cu: every CUDA kernel of templates/cuda/kernels.cuh against
 * its CPU reference in templates/cpu/ops.h (through kernel_ref.c), one by
 * one, forward and backward, on fresh random inputs.
 *
 * - Each test draws its own data from a fixed seed (xorshift64*, seeded by
 *   the test's name and variant): reproducible, and different per test.
 * - Every output the GPU should write is poisoned first (NaN bytes 0xFF for
 *   floats, doubles and bf16, 0x80808080 for ints), so a kernel that leaves an
 *   element unwritten fails. Outputs that accumulate (parameter gradients,
 *   acc = 1 inputs) start from the same random values on both sides.
 * - The error of one output tensor is max |gpu - cpu| / max(max |cpu|, 1e-6);
 *   a NaN or Inf anywhere fails (the comparison is !(err <= tol)). The
 *   tolerance is 1e-5 in fp32 (kctx.compute = CUBLAS_COMPUTE_32F), and 1e-2
 *   for the cuBLAS kernels (linear, patch embedding, MoE experts) in the
 *   reduced-precision modes: tf32 (CUBLAS_COMPUTE_32F_FAST_16BF on fp32
 *   operands) and bf16 (operands rounded to bf16, kctx.cast); 3e-3 for
 *   attention on tensor cores (TF32 tiles in both). Integer outputs (routing) must
 *   match exactly.
 * - The random-number kernels (gate_noise, dropout_mask) are not tested
 *   here: their CPU versions need libmoert's Philox.
 *
 * Prints one line per check, `ok - <kernel> <what> (err X, tol Y)` or
 * `not ok - ...`, then `N passed, M failed`. Exit status 0 when all pass, 1
 * otherwise, 77 (skip) without a CUDA device. A CUDA error exits at once
 * with status 1 (kernels.cuh's CUDA_CHECK). */
#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels.cuh"

#include "kernel_ref.h"

static_assert(ACT_GELU == 0 && ACT_RELU == 1 && ACT_SILU == 2, "kernel_ref.h passes ops.h's activation codes");

static const double TOL32 = 1e-5; /* fp32 */
static const double TOL16 = 1e-2; /* the cuBLAS kernels in tf32 and bf16 modes */
/* attention on tensor cores (TF32 tiles), tf32 and bf16 modes: the worst error seen
 * on an H200 was 6.1e-4 (TF32 keeps 10 mantissa bits: 4.9e-4 a rounding) */
static const double TOL_ATTN_TC = 3e-3;
/* attention on bf16 fragments (bf16 precision: q, k, v, the weights and
 * their gradient rounded to bf16 before each product; 2^-9 a rounding): the
 * worst error seen on an H200 was 6.0e-3 (T=49, HD=16), so the issue's bf16
 * tolerance holds */
static const double TOL_ATTN_FRAG = TOL16;

static kctx g_k;
static bool g_bf16; /* a reduced-precision mode: tf32 or bf16 */
static const char *g_mode = "fp32";
static int g_pass, g_fail;

static const char *mode()
{
    return g_mode;
}

/* the tolerance of a kernel that multiplies through cuBLAS */
static double tol_blas()
{
    return g_bf16 ? TOL16 : TOL32;
}

/* ---- random numbers ------------------------------------------------------------------------------ */

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed ^ 0x9E3779B97F4A7C15ull)
    {
        if (!s)
            s = 1;
        for (int i = 0; i < 8; i++)
            next();
    }
    uint64_t next() /* xorshift64* */
    {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        return s * 0x2545F4914F6CDD1Dull;
    }
    float uni(float lo, float hi) /* [lo, hi) */
    {
        return lo + (hi - lo) * (float)((double)(next() >> 40) * (1.0 / 16777216.0));
    }
    int below(int n) /* [0, n) */
    {
        return (int)(next() % (uint64_t)n);
    }
};

/* a test's seed: its name and variant */
static uint64_t seed_of(const char *name, int variant)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return h ^ ((uint64_t)(unsigned)variant * 0x9E3779B97F4A7C15ull);
}

typedef std::vector<float> fvec;
typedef std::vector<int> ivec;

static fvec rnd(Rng &r, size_t n, float lo, float hi)
{
    fvec v(n);
    for (size_t i = 0; i < n; i++)
        v[i] = r.uni(lo, hi);
    return v;
}

/* ---- device memory ------------------------------------------------------------------------------ */

static std::vector<void *> g_allocs; /* freed at the end of each test */

template <class T> static T *dalloc(size_t n)
{
    void *p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, (n ? n : 1) * sizeof(T)));
    g_allocs.push_back(p);
    return static_cast<T *>(p);
}

static void dfree_all()
{
    CUDA_CHECK(cudaStreamSynchronize(g_k.stream));
    for (void *p : g_allocs)
        CUDA_CHECK(cudaFree(p));
    g_allocs.clear();
}

/* a device copy of h */
template <class T> static T *dup(const std::vector<T> &h)
{
    T *d = dalloc<T>(h.size());
    if (!h.empty())
        CUDA_CHECK(cudaMemcpyAsync(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice, g_k.stream));
    CUDA_CHECK(cudaStreamSynchronize(g_k.stream));
    return d;
}

/* n values from the device, after everything queued so far */
template <class T> static std::vector<T> down(const T *d, size_t n)
{
    std::vector<T> h(n);
    CUDA_CHECK(cudaStreamSynchronize(g_k.stream));
    if (n)
        CUDA_CHECK(cudaMemcpyAsync(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost, g_k.stream));
    CUDA_CHECK(cudaStreamSynchronize(g_k.stream));
    return h;
}

/* n values that fail any comparison: NaN floats, doubles and bf16 (which
 * std::is_floating_point does not count: its 0x8080 would be -1.2e-38, a
 * finite value), 0x80808080 ints */
template <class T> static T *dpoison(size_t n)
{
    T *d = dalloc<T>(n);
    const int byte = std::is_floating_point<T>::value || std::is_same<T, __nv_bfloat16>::value ? 0xFF : 0x80;
    CUDA_CHECK(cudaMemsetAsync(d, byte, (n ? n : 1) * sizeof(T), g_k.stream));
    return d;
}

template <class T> static T *dzero(size_t n)
{
    T *d = dalloc<T>(n);
    CUDA_CHECK(cudaMemsetAsync(d, 0, (n ? n : 1) * sizeof(T), g_k.stream));
    return d;
}

/* ---- comparisons ---------------------------------------------------------------------------------- */

static std::string fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static std::string fmt(const char *f, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return std::string(buf);
}

/* a comment line naming the test that runs next (a CUDA error exits at once) */
static void note(const std::string &test)
{
    printf("# %s\n", test.c_str());
    fflush(stdout);
}

static void report(bool ok, const std::string &kernel, const std::string &what, double err, double tol)
{
    if (ok)
        g_pass++;
    else
        g_fail++;
    printf("%s - %s %s (err %.3g, tol %.3g)\n", ok ? "ok" : "not ok", kernel.c_str(), what.c_str(), err, tol);
    fflush(stdout);
}

/* one output tensor: max |gpu - cpu| / max(max |cpu|, 1e-6) <= tol, all finite */
static void check(const std::string &kernel, const std::string &what, const float *gpu, const float *cpu, size_t n,
                  double tol)
{
    const size_t none = (size_t)-1;
    double maxdiff = 0.0, maxref = 0.0;
    size_t worst = 0, bad = none, nbad = 0;
    for (size_t i = 0; i < n; i++) {
        const double g = gpu[i], c = cpu[i];
        if (!std::isfinite(g) || !std::isfinite(c)) {
            if (bad == none)
                bad = i;
            nbad++;
            continue;
        }
        const double d = std::fabs(g - c);
        if (d > maxdiff) {
            maxdiff = d;
            worst = i;
        }
        maxref = std::max(maxref, std::fabs(c));
    }
    const double err = (n == 0 || nbad) ? NAN : maxdiff / std::max(maxref, 1e-6);
    const bool ok = err <= tol; /* false for NaN */
    report(ok, kernel, what, err, tol);
    if (!ok && n) {
        const size_t i = bad != none ? bad : worst;
        printf("#   %zu of %zu not finite; at [%zu]: gpu %.9g, cpu %.9g; max |cpu| %.6g\n", nbad, n, i, (double)gpu[i],
               (double)cpu[i], maxref);
    }
}

static void check(const std::string &kernel, const std::string &what, const fvec &gpu, const fvec &cpu, double tol)
{
    if (gpu.size() != cpu.size()) {
        report(false, kernel, what + " (the test's sizes differ)", NAN, tol);
        return;
    }
    check(kernel, what, gpu.data(), cpu.data(), gpu.size(), tol);
}

/* one scalar, relative to max(|cpu|, 1e-6) */
static void check_scalar(const std::string &kernel, const std::string &what, double gpu, double cpu, double tol)
{
    const double err =
        std::isfinite(gpu) && std::isfinite(cpu) ? std::fabs(gpu - cpu) / std::max(std::fabs(cpu), 1e-6) : NAN;
    const bool ok = err <= tol;
    report(ok, kernel, what, err, tol);
    if (!ok)
        printf("#   gpu %.12g, cpu %.12g\n", gpu, cpu);
}

/* integers: every element equal (err = the number of mismatches) */
template <class TG, class TC>
static void check_exact(const std::string &kernel, const std::string &what, const TG *gpu, const TC *cpu, size_t n)
{
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if ((long long)gpu[i] != (long long)cpu[i]) {
            if (!bad)
                first = i;
            bad++;
        }
    report(bad == 0 && n > 0, kernel, what, (double)bad, 0.0);
    if (bad)
        printf("#   %zu of %zu differ; first at [%zu]: gpu %lld, cpu %lld\n", bad, n, first, (long long)gpu[first],
               (long long)cpu[first]);
}

/* bf16 rounding (to nearest, ties to even) on the host, for the conversions */
static float round_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    u &= 0xFFFF0000u;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* n bf16 values on the device, widened to floats on the host */
static fvec widen16(const __nv_bfloat16 *d16, size_t n)
{
    const std::vector<__nv_bfloat16> h16 = down(d16, n);
    fvec f(n);
    for (size_t i = 0; i < n; i++)
        f[i] = __bfloat162float(h16[i]);
    return f;
}

/* how many of a poisoned (NaN) output's values a kernel wrote */
static size_t written_count(const fvec &v)
{
    size_t n = 0;
    for (float x : v)
        n += !std::isnan(x);
    return n;
}

/* init[n] + the sum over the rows of x[row * cols + n], in double: the
 * CPU's side of a bias gradient summed from its output's gradient */
static fvec ref_col_sums(const fvec &init, const fvec &x, size_t cols)
{
    fvec out(cols);
    for (size_t n = 0; n < cols; n++) {
        double sum = init[n];
        for (size_t at = n; at < x.size(); at += cols)
            sum += x[at];
        out[n] = (float)sum;
    }
    return out;
}

/* a bf16 copy the kernel wrote: each value the fp32 one it wrote, rounded
 * to bf16 exactly (a NaN from the poison never passes) */
static void check_copy16(const std::string &kernel, const std::string &what, const __nv_bfloat16 *d16, const float *d32,
                         size_t n)
{
    fvec want = down(d32, n);
    for (float &w : want)
        w = round_bf16(w);
    check(kernel, what, widen16(d16, n), want, 0.0);
}

/* ---- linear layers --------------------------------------------------------------------------------- */

static void test_linear()
{
    const int M = 300, K = 96, N = 160;
    const double tol = tol_blas();
    note(fmt("linear [%s]", mode()));
    Rng r(seed_of("linear", g_bf16));
    const fvec inp = rnd(r, (size_t)M * K, -1, 1), w = rnd(r, (size_t)N * K, -0.5f, 0.5f), b = rnd(r, N, -1, 1);
    float *d_inp = dup(inp), *d_w = dup(w), *d_b = dup(b);
    for (int bias = 1; bias >= 0; bias--) {
        float *d_out = dpoison<float>((size_t)M * N);
        linear_forward(&g_k, d_out, d_inp, d_w, bias ? d_b : nullptr, M, K, N);
        fvec out((size_t)M * N);
        ref_linear_forward(out.data(), inp.data(), w.data(), bias ? b.data() : nullptr, M, K, N);
        check("linear_forward", fmt("out, %s [%s]", bias ? "bias" : "no bias", mode()), down(d_out, out.size()), out,
              tol);
        /* a residual block's output: + res (cuBLASLt's C in bf16 precision
         * with the bias, else an add after the product) */
        const fvec res = rnd(r, out.size(), -2, 2);
        float *d_res = dup(res), *d_outr = dpoison<float>(out.size());
        linear_forward(&g_k, d_outr, d_inp, d_w, bias ? d_b : nullptr, M, K, N, d_res);
        fvec outr(out.size());
        for (size_t i = 0; i < out.size(); i++)
            outr[i] = out[i] + res[i];
        check("linear_forward", fmt("out + res, %s [%s]", bias ? "bias" : "no bias", mode()),
              down(d_outr, outr.size()), outr, tol);
        check("linear_forward", fmt("res left as it was, %s [%s]", bias ? "bias" : "no bias", mode()),
              down(d_res, res.size()), res, 0.0);
        /* bf16 precision: the output in bf16 alone (out16, as attention's
         * qkv: attn_qkv16), the fp32 room left alone: within a bf16
         * rounding (2^-8 of a value: 3.9e-3) of the product's tolerance */
        if (g_k.cast) {
            __nv_bfloat16 *d_out16 = dpoison<__nv_bfloat16>(out.size());
            float *d_room = dpoison<float>(out.size());
            linear_forward(&g_k, d_room, d_inp, d_w, bias ? d_b : nullptr, M, K, N, nullptr, d_out16);
            check("linear_forward", fmt("out in bf16 alone (out16), %s [%s]", bias ? "bias" : "no bias", mode()),
                  widen16(d_out16, out.size()), out, tol + 4e-3);
            const size_t written = written_count(down(d_room, out.size()));
            report(written == 0, "linear_forward", fmt("out16: the fp32 output not written, %s", bias ? "bias" : "no bias"),
                   (double)written, 0.0);
        }
        /* cuBLASLt's bias epilogue with a bf16 output and the bias in bf16
         * (lt_linear_bias's second try): within the product's tolerance
         * and two bf16 roundings (the bias's and the output's); where
         * cuBLASLt offers no algorithm, nothing written */
        if (g_k.cast && g_k.lt && bias) {
            std::vector<__nv_bfloat16> x16(inp.size()), w16(w.size()), b16(b.size());
            for (size_t i = 0; i < inp.size(); i++)
                x16[i] = __float2bfloat16_rn(inp[i]);
            for (size_t i = 0; i < w.size(); i++)
                w16[i] = __float2bfloat16_rn(w[i]);
            for (size_t i = 0; i < b.size(); i++)
                b16[i] = __float2bfloat16_rn(b[i]);
            const __nv_bfloat16 *d_x16 = dup(x16), *d_w16 = dup(w16), *d_b16 = dup(b16);
            __nv_bfloat16 *d_out16 = dpoison<__nv_bfloat16>(out.size());
            const bool took = lt_linear_bias_as(&g_k, d_out16, CUDA_R_16BF, d_x16, d_w16, d_b16, CUDA_R_16BF, M, K, N,
                                                nullptr);
            const fvec got = widen16(d_out16, out.size());
            if (took) {
                check("linear_forward", fmt("cuBLASLt, bf16 bias into bf16 out [%s]", mode()), got, out, tol + 8e-3);
            } else {
                const size_t written = written_count(got);
                report(written == 0, "linear_forward",
                       "cuBLASLt offers no bf16 bias into bf16 out: nothing written", (double)written, 0.0);
            }
        }
    }
    const fvec dout = rnd(r, (size_t)M * N, -1, 1);
    float *d_dout = dup(dout);
    for (int acc = 0; acc <= 1; acc++) {
        fvec dinp = rnd(r, (size_t)M * K, -1, 1), dw = rnd(r, (size_t)N * K, -1, 1), db = rnd(r, N, -1, 1);
        float *d_dinp = acc ? dup(dinp) : dpoison<float>(dinp.size());
        float *d_dw = dup(dw), *d_db = dup(db);
        linear_backward(&g_k, d_dinp, d_dw, d_db, d_dout, d_inp, d_w, M, K, N, acc);
        ref_linear_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), M, K, N, acc);
        const std::string c = fmt("acc=%d [%s]", acc, mode());
        check("linear_backward", "dinp, " + c, down(d_dinp, dinp.size()), dinp, tol);
        check("linear_backward", "dw, " + c, down(d_dw, dw.size()), dw, tol);
        check("linear_backward", "db, " + c, down(d_db, db.size()), db, tol);
    }
    /* bf16 precision: operands a producer wrote in bf16 (bf16_half) give
     * the products the bits that rounding them here gives */
    if (g_k.cast) {
        float *d_in16 = dup(inp), *d_g16 = dup(dout);
        to_bf16(&g_k, bf16_half(&g_k, d_in16), d_inp, (int64_t)inp.size());
        to_bf16(&g_k, bf16_half(&g_k, d_g16), d_dout, (int64_t)dout.size());
        /* without cuBLASLt's bias epilogue (below): one product kernel for both */
        kctx plain = g_k;
        plain.lt = nullptr;
        float *d_o32 = dpoison<float>((size_t)M * N), *d_o16 = dpoison<float>((size_t)M * N);
        linear_forward(&plain, d_o32, d_inp, d_w, d_b, M, K, N);
        linear_forward(&plain, d_o16, mm_half(&g_k, d_in16), d_w, d_b, M, K, N);
        check("linear_forward", "out from a bf16 input, against rounding it [bf16]", down(d_o16, (size_t)M * N),
              down(d_o32, (size_t)M * N), 0.0);
        float *d_di32 = dpoison<float>((size_t)M * K), *d_di16 = dpoison<float>((size_t)M * K);
        float *d_dw32 = dup(fvec((size_t)N * K, 0.0f)), *d_dw16 = dup(fvec((size_t)N * K, 0.0f));
        linear_backward(&g_k, d_di32, d_dw32, nullptr, d_dout, d_inp, d_w, M, K, N, 0);
        linear_backward(&g_k, d_di16, d_dw16, nullptr, mm_half(&g_k, d_g16), mm_half(&g_k, d_in16), d_w, M, K, N, 0);
        check("linear_backward", "dinp from a bf16 gradient, against rounding it [bf16]", down(d_di16, (size_t)M * K),
              down(d_di32, (size_t)M * K), 0.0);
        check("linear_backward", "dw from bf16 operands, against rounding them [bf16]", down(d_dw16, (size_t)N * K),
              down(d_dw32, (size_t)N * K), 0.0);
        /* dinp in bf16 alone (dinp16, attention's output gradient): within
         * a bf16 rounding of the product's tolerance, dw the same bits,
         * the rest of the room (its second half) not written */
        {
            float *d_dih = dpoison<float>((size_t)M * K), *d_dwh = dup(fvec((size_t)N * K, 0.0f));
            linear_backward(&g_k, d_dih, d_dwh, nullptr, d_dout, d_inp, d_w, M, K, N, 0, true);
            fvec want((size_t)M * K), dwr((size_t)N * K), dbr(N);
            ref_linear_backward(want.data(), dwr.data(), dbr.data(), dout.data(), inp.data(), w.data(), M, K, N, 0);
            check("linear_backward", "dinp in bf16 alone (dinp16) [bf16]",
                  widen16(bf16_half(&g_k, d_dih), (size_t)M * K), want, tol + 4e-3);
            check("linear_backward", "dw with dinp16: the same bits [bf16]", down(d_dwh, (size_t)N * K),
                  down(d_dw32, (size_t)N * K), 0.0);
            const fvec room = down(d_dih, (size_t)M * K);
            const size_t written = written_count(fvec(room.begin() + ((size_t)M * K + 1) / 2, room.end()));
            report(written == 0, "linear_backward", "dinp16: the room's second half not written [bf16]",
                   (double)written, 0.0);
        }
        /* dout's bf16 copy at the operand scratch's start already (dout_kept:
         * a layer norm's copy16 made it): the bits of rounding it here */
        {
            to_bf16(&g_k, g_k.cast, d_dout, (int64_t)dout.size());
            float *d_dik = dpoison<float>((size_t)M * K), *d_dwk = dup(fvec((size_t)N * K, 0.0f));
            linear_backward(&g_k, d_dik, d_dwk, nullptr, d_dout, d_inp, d_w, M, K, N, 0, false, true);
            check("linear_backward", "dinp from dout's kept bf16 copy (dout_kept): the same bits [bf16]",
                  down(d_dik, (size_t)M * K), down(d_di32, (size_t)M * K), 0.0);
            check("linear_backward", "dw from dout's kept bf16 copy (dout_kept): the same bits [bf16]",
                  down(d_dwk, (size_t)N * K), down(d_dw32, (size_t)N * K), 0.0);
        }
        /* cuBLASLt's bias epilogue (linear_forward with a bias in bf16
         * precision): taken, and the sums of the product and a pass */
        float *d_lt = dpoison<float>((size_t)M * N), *d_pass = dpoison<float>((size_t)M * N);
        report(lt_linear_bias(&g_k, d_lt, d_inp, d_w, d_b, M, K, N), "lt_linear_bias", "taken [bf16]", 0.0, 0.0);
        linear_forward(&plain, d_pass, d_inp, d_w, d_b, M, K, N);
        check("lt_linear_bias", "out, against the product and a bias pass [bf16]", down(d_lt, (size_t)M * N),
              down(d_pass, (size_t)M * N), TOL32);
        /* the output 16 bytes past 256 (cuBLASLt's heuristic is told the
         * matrices' alignment: ptr_alignment) */
        float *d_lt16 = dpoison<float>((size_t)M * N + 4);
        report(lt_linear_bias(&g_k, d_lt16 + 4, d_inp, d_w, d_b, M, K, N), "lt_linear_bias",
               "taken, the output 16 bytes past 256 [bf16]", 0.0, 0.0);
        check("lt_linear_bias", "out 16 bytes past 256, against the product and a bias pass [bf16]",
              down(d_lt16 + 4, (size_t)M * N), down(d_pass, (size_t)M * N), TOL32);
        /* a bias not 16-byte aligned: not taken (linear_forward's pass) */
        fvec b_off(N + 1, 0.0f);
        std::copy(b.begin(), b.end(), b_off.begin() + 1);
        float *d_b_off = dup(b_off);
        report(!lt_linear_bias(&g_k, d_lt, d_inp, d_w, d_b_off + 1, M, K, N), "lt_linear_bias",
               "not taken: the bias 4 bytes past 16 [bf16]", 0.0, 0.0);
        /* the bias's gradient from a gradient in bf16 alone (attention's
         * dqkv): the column sums of its rounded values */
        float *d_db16 = dup(fvec(N, 0.0f));
        linear_backward(&g_k, nullptr, d_dw16, d_db16, mm_half(&g_k, d_g16), mm_half(&g_k, d_in16), d_w, M, K, N, 0);
        fvec db16(N);
        for (int n = 0; n < N; n++) {
            double t = 0.0;
            for (int m = 0; m < M; m++)
                t += round_bf16(dout[(size_t)m * N + n]);
            db16[n] = (float)t;
        }
        check("linear_backward", "db from a bf16 gradient: the sums of its rounded values [bf16]", down(d_db16, N),
              db16, TOL32);
    }
    dfree_all();
}

/* kctx.w16 (bf16 precision): an operand inside the weights' arena w32 is
 * read from its bf16 copy, not rounded again; the copy here holds other
 * weights than w32, so the product shows which one it took. An operand
 * outside the arena (the input) is still rounded from fp32. */
static void test_weight_copy()
{
    if (!g_k.cast)
        return;
    const int M = 300, K = 96, N = 160, PAD = 64;
    note("weights' bf16 copy [bf16]");
    Rng r(seed_of("weight_copy", 0));
    const fvec inp = rnd(r, (size_t)M * K, -1, 1), w = rnd(r, (size_t)N * K, -0.5f, 0.5f),
               other = rnd(r, (size_t)N * K, -0.5f, 0.5f);
    const size_t elems = PAD + (size_t)N * K + PAD;
    float *d_arena = dpoison<float>(elems), *d_inp = dup(inp), *d_other = dup(other);
    CUDA_CHECK(cudaMemcpyAsync(d_arena + PAD, w.data(), sizeof(float) * w.size(), cudaMemcpyHostToDevice, g_k.stream));
    __nv_bfloat16 *d_w16 = dalloc<__nv_bfloat16>(elems);
    to_bf16(&g_k, d_w16 + PAD, d_other, (int64_t)other.size());
    kctx kw = g_k;
    kw.w32 = d_arena;
    kw.w16 = d_w16;
    kw.w_elems = (int64_t)elems;
    float *d_out = dpoison<float>((size_t)M * N);
    linear_forward(&kw, d_out, d_inp, d_arena + PAD, nullptr, M, K, N);
    fvec out((size_t)M * N);
    ref_linear_forward(out.data(), inp.data(), other.data(), nullptr, M, K, N);
    check("mm_rows", "a weight operand read from kctx.w16 [bf16]", down(d_out, out.size()), out, tol_blas());
    dfree_all();
}

/* fp32_ctx (a router with fp32_gate): plain fp32 products in every
 * precision, held to fp32's tolerance (this layer's bf16 products are 2e-3
 * off the CPU's on an H200: 200 times that) */
static void test_fp32_ctx()
{
    const int M = 300, K = 96, N = 160;
    Rng r(seed_of("fp32_ctx", 0));
    const fvec inp = rnd(r, (size_t)M * K, -1, 1), w = rnd(r, (size_t)N * K, -0.5f, 0.5f), b = rnd(r, N, -1, 1);
    float *d_inp = dup(inp), *d_w = dup(w), *d_b = dup(b), *d_out = dpoison<float>((size_t)M * N);
    const kctx k32 = fp32_ctx(&g_k);
    linear_forward(&k32, d_out, d_inp, d_w, d_b, M, K, N);
    fvec out((size_t)M * N);
    ref_linear_forward(out.data(), inp.data(), w.data(), b.data(), M, K, N);
    check("fp32_ctx", fmt("linear_forward out [%s]", mode()), down(d_out, out.size()), out, TOL32);
    dfree_all();
}

/* The narrow fp32 products (a router's logits): linear_forward and
 * linear_backward through narrow_forward / narrow_backward in an fp32
 * context (fp32_ctx; the mode's own in fp32), for each accumulator count
 * (N up to 8, 16, 32) and rows of several widths; then the weights'
 * gradient twice from the same inputs, the same bits (fixed-order sums). */
static void test_narrow(int M, int K, int N, bool want_narrow)
{
    const kctx k32 = fp32_ctx(&g_k);
    Rng r(seed_of("narrow", M * 100000 + K * 100 + N));
    const fvec inp = rnd(r, (size_t)M * K, -1, 1), w = rnd(r, (size_t)N * K, -0.5f, 0.5f), b = rnd(r, N, -1, 1);
    const fvec dout = rnd(r, (size_t)M * N, -1, 1);
    float *d_inp = dup(inp), *d_w = dup(w), *d_b = dup(b), *d_dout = dup(dout);
    const bool narrow = narrow_ok(&k32, d_inp, d_w, N, K);
    const std::string c = fmt("M=%d K=%d N=%d%s [%s]", M, K, N, narrow ? "" : " (cuBLAS)", mode());
    note("narrow products " + c);
    report(narrow == want_narrow, "narrow_ok", fmt("%s, ", want_narrow ? "taken" : "not taken") + c, 0.0, 0.0);
    for (int bias = 0; bias <= 1; bias++) {
        float *d_out = dpoison<float>((size_t)M * N);
        linear_forward(&k32, d_out, d_inp, d_w, bias ? d_b : nullptr, M, K, N);
        fvec out((size_t)M * N);
        ref_linear_forward(out.data(), inp.data(), w.data(), bias ? b.data() : nullptr, M, K, N);
        check("linear_forward", fmt("narrow out, %s, ", bias ? "bias" : "no bias") + c, down(d_out, out.size()), out,
              TOL32);
    }
    for (int acc = 0; acc <= 1; acc++) {
        fvec dinp = rnd(r, (size_t)M * K, -1, 1), dw = rnd(r, (size_t)N * K, -1, 1), db = rnd(r, N, -1, 1);
        float *d_dinp = acc ? dup(dinp) : dpoison<float>(dinp.size());
        float *d_dw = dup(dw), *d_db = dup(db);
        linear_backward(&k32, d_dinp, d_dw, d_db, d_dout, d_inp, d_w, M, K, N, acc);
        ref_linear_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), M, K, N, acc);
        const std::string ca = fmt("acc=%d, ", acc) + c;
        check("linear_backward", "narrow dinp, " + ca, down(d_dinp, dinp.size()), dinp, TOL32);
        check("linear_backward", "narrow dw, " + ca, down(d_dw, dw.size()), dw, TOL32);
        check("linear_backward", "narrow db, " + ca, down(d_db, db.size()), db, TOL32);
    }
    float *d_dw1 = dup(fvec((size_t)N * K, 0.0f)), *d_dw2 = dup(fvec((size_t)N * K, 0.0f));
    linear_backward(&k32, nullptr, d_dw1, nullptr, d_dout, d_inp, d_w, M, K, N, 0);
    linear_backward(&k32, nullptr, d_dw2, nullptr, d_dout, d_inp, d_w, M, K, N, 0);
    check("linear_backward", "narrow dw twice, the same bits, " + c, down(d_dw2, (size_t)N * K),
          down(d_dw1, (size_t)N * K), 0.0);
    dfree_all();
}

static void test_patch_embed()
{
    constexpr int C = 3, IH = 32, IW = 32, P = 4, D = 64, T = (IH / P) * (IW / P), CPP = C * P * P;
    const int B = 5;
    const double tol = tol_blas();
    note(fmt("patch_embed [%s]", mode()));
    Rng r(seed_of("patch_embed", g_bf16));
    const fvec img = rnd(r, (size_t)B * C * IH * IW, -1, 1), w = rnd(r, (size_t)D * CPP, -0.5f, 0.5f),
               b = rnd(r, D, -1, 1);
    float *d_img = dup(img), *d_w = dup(w), *d_b = dup(b);
    float *d_out = dpoison<float>((size_t)B * T * D), *d_cols = dpoison<float>((size_t)B * T * CPP);
    patch_embed_forward<C, IH, IW, P, D>(&g_k, d_out, d_cols, d_img, d_w, d_b, B);
    fvec out((size_t)B * T * D), cols((size_t)B * T * CPP);
    ref_patch_embed_forward(out.data(), cols.data(), img.data(), w.data(), b.data(), B, C, IH, IW, P, D);
    check("patch_embed_forward", fmt("cols (im2col) [%s]", mode()), down(d_cols, cols.size()), cols, TOL32);
    check("patch_embed_forward", fmt("out [%s]", mode()), down(d_out, out.size()), out, tol);

    const fvec dout = rnd(r, out.size(), -1, 1);
    fvec dw = rnd(r, w.size(), -1, 1), db = rnd(r, D, -1, 1);
    float *d_dout = dup(dout), *d_cols_ref = dup(cols), *d_dw = dup(dw), *d_db = dup(db);
    patch_embed_backward<C, IH, IW, P, D>(&g_k, d_dw, d_db, d_dout, d_cols_ref, B);
    ref_patch_embed_backward(dw.data(), db.data(), dout.data(), cols.data(), B, C, IH, IW, P, D);
    check("patch_embed_backward", fmt("dw [%s]", mode()), down(d_dw, dw.size()), dw, tol);
    check("patch_embed_backward", fmt("db [%s]", mode()), down(d_db, db.size()), db, tol);
    dfree_all();
}

/* ---- activations ------------------------------------------------------------------------------------ */

/* N = 160: the kernels' 8-value path; 164: the 4-value one; 157: the
 * 1-value one (rows not a multiple of 4) */
template <int ACT> static void test_act(const char *name, int N)
{
    const int M = 300;
    note(fmt("activations: %s, rows of %d", name, N));
    Rng r(seed_of("act", ACT * 1000 + N));
    /* bias_act: h += bias, a = act(h), for one group and for three; and
     * for one of 4133 rows, 65 a chunk of the backward's column sums, so
     * that each of its lanes takes two batches of rows, the second short */
    const struct {
        int G, MG;
    } shapes[3] = { { 1, M }, { 3, 50 }, { 1, 4133 } };
    for (const auto &shape : shapes) {
        const int G = shape.G, MG = shape.MG;
        const size_t ng = (size_t)G * MG * N;
        const fvec h0 = rnd(r, ng, -3, 3), bias = rnd(r, (size_t)G * N, -1, 1);
        float *d_h = dup(h0), *d_bias = dup(bias), *d_a = dpoison<float>(ng);
        bias_act<ACT>(&g_k, d_a, d_h, d_bias, MG, N, G);
        fvec h = h0, a(ng);
        ref_bias_act(a.data(), h.data(), bias.data(), MG, N, G, ACT);
        check("bias_act", fmt("%s h, G=%d, M=%d, N=%d", name, G, MG, N), down(d_h, ng), h, TOL32);
        check("bias_act", fmt("%s a, G=%d, M=%d, N=%d", name, G, MG, N), down(d_a, ng), a, TOL32);
        /* grad_h: the same activations, to the bit (act_f is
         * act_f_grad's formula), and h gets act'(h + bias), the
         * backward's factor */
        float *d_hk = dup(h0), *d_ak = dpoison<float>(ng);
        bias_act<ACT>(&g_k, d_ak, d_hk, d_bias, MG, N, G, nullptr, true);
        const fvec ones(ng, 1.0f);
        fvec gh(ng);
        ref_act_backward(gh.data(), ones.data(), h.data(), ng, ACT, 0);
        check("bias_act", fmt("%s grad_h a: the bits without grad_h, G=%d, M=%d, N=%d", name, G, MG, N),
              down(d_ak, ng), down(d_a, ng), 0.0);
        check("bias_act", fmt("%s grad_h h, G=%d, M=%d, N=%d", name, G, MG, N), down(d_hk, ng), gh, TOL32);

        /* act_bias_backward on that factor: dh = da * act'(h + bias) in
         * place of da (fp32) or into a bf16 copy, db += its column sums
         * (the CPU's dh: act_backward's product, da times the factor) */
        const fvec da = rnd(r, ng, -1, 1), db0 = rnd(r, (size_t)G * N, -1, 1);
        fvec dh(ng), db = db0;
        for (size_t i = 0; i < ng; i++)
            dh[i] = da[i] * gh[i];
        for (int g = 0; g < G; g++)
            for (int m = 0; m < MG; m++)
                for (int c = 0; c < N; c++)
                    db[(size_t)g * N + c] += dh[((size_t)g * MG + m) * N + c];
        for (int b16 = 0; b16 <= 1; b16++) {
            float *d_da = dup(da), *d_db = dup(db0);
            __nv_bfloat16 *d_dh16 = nullptr;
            if (b16) {
                d_dh16 = dalloc<__nv_bfloat16>(ng);
                CUDA_CHECK(cudaMemsetAsync(d_dh16, 0xFF, ng * sizeof(__nv_bfloat16), g_k.stream)); /* NaN */
            }
            act_bias_backward(&g_k, d_da, d_dh16, d_db, d_da, d_hk, MG, N, G);
            const fvec got = b16 ? widen16(d_dh16, ng) : down(d_da, ng);
            /* bf16: the fp32 value rounded, within half a unit of 8 bits */
            const std::string c = fmt("%s, G=%d, M=%d, N=%d", b16 ? " bf16" : "", G, MG, N);
            check("act_bias_backward", fmt("%s dh", name) + c, got, dh, b16 ? 4e-3 : TOL32);
            check("act_bias_backward", fmt("%s db", name) + c, down(d_db, db.size()), db, TOL32);
        }
    }

    /* the experts' pass on one GPU in bf16 precision (moe_h16, live): h
     * and da in bf16, a, h's factor act'(h + bias) and dh written in bf16,
     * and group g's rows from live[g] on padding: NaN in h and da there,
     * which the passes must neither read nor write; a and dh get zeros
     * there and db skips them. The factor is checked against the CPU's
     * (one rounding to bf16), then dh and db against the products with the
     * factor the GPU wrote (dh: one rounding more) */
    const int G = 3, MG = 50;
    const size_t ng = (size_t)G * MG * N;
    const std::vector<int> live = { MG, 17, 0 };
    const auto pad = [&](size_t i) { return (int)(i / N % MG) >= live[i / N / MG]; };
    fvec h = rnd(r, ng, -3, 3), da = rnd(r, ng, -1, 1);
    const fvec bias = rnd(r, (size_t)G * N, -1, 1), db0 = rnd(r, (size_t)G * N, -1, 1);
    std::vector<__nv_bfloat16> h16(ng), da16(ng);
    for (size_t i = 0; i < ng; i++) {
        h[i] = pad(i) ? NAN : round_bf16(h[i]);
        da[i] = pad(i) ? NAN : round_bf16(da[i]);
        h16[i] = __float2bfloat16_rn(h[i]);
        da16[i] = __float2bfloat16_rn(da[i]);
    }
    const fvec ones(ng, 1.0f);
    fvec hb = h, a(ng), gh(ng);
    ref_bias_act(a.data(), hb.data(), bias.data(), MG, N, G, ACT);
    ref_act_backward(gh.data(), ones.data(), hb.data(), ng, ACT, 0);
    __nv_bfloat16 *d_h16 = dup(h16), *d_a16 = dpoison<__nv_bfloat16>(ng), *d_dh16 = dpoison<__nv_bfloat16>(ng);
    const __nv_bfloat16 *d_da16 = dup(da16);
    float *d_bias = dup(bias), *d_db = dup(db0);
    const int *d_live = dup(live);
    bias_act<ACT>(&g_k, nullptr, d_h16, d_bias, MG, N, G, d_a16, true, d_live);
    act_bias_backward(&g_k, nullptr, d_dh16, d_db, d_da16, d_h16, MG, N, G, d_live);
    fvec gh_gpu = widen16(d_h16, ng), dh(ng), db = db0;
    size_t touched = 0; /* padding rows of h the pass wrote */
    for (size_t i = 0; i < ng; i++) {
        if (pad(i)) {
            touched += !std::isnan(gh_gpu[i]);
            a[i] = dh[i] = gh[i] = gh_gpu[i] = 0.0f;
        } else {
            dh[i] = da[i] * gh_gpu[i];
            db[i / N / MG * N + i % N] += dh[i];
        }
    }
    const std::string c = fmt("%s bf16, live rows 50/17/0 of %d, N=%d", name, MG, N);
    check("bias_act", c + " a", widen16(d_a16, ng), a, 4e-3);
    check("bias_act", c + " h's factor act'(h + bias)", gh_gpu, gh, 4e-3);
    report(touched == 0, "bias_act", c + ": the padding rows of h left as they were", (double)touched, 0.0);
    check("act_bias_backward", c + " dh", widen16(d_dh16, ng), dh, 4e-3);
    check("act_bias_backward", c + " db", down(d_db, db.size()), db, TOL32);
    dfree_all();
}

/* act_f_grad's GELU, exact (erff) and FAST (gelu_grad_fast: the bf16
 * experts' bias_act), at every x of a grid over [-14, 14] (8 per 1e-3)
 * and at zeros, +-40 and +-3.4e38, against erfc in double: GELU and its
 * derivative within 1e-6 max(1, |x|) (fp32 keeps 6e-8 |x|), and the fast
 * form's GELU within 4e-5 relative where it is tiny, x < 0 (erff's form
 * loses it there: 1 + erff cancels); a NaN gives NaNs. A coefficient
 * wrong in its third digit moves them by 1e-4. */
template <bool FAST> static __global__ void gelu_grid_kernel(float *g, float *d, const float *x, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        g[i] = act_f_grad<ACT_GELU, FAST>(x[i], &d[i]);
}

static void test_gelu_forms()
{
    note("GELU: erff's form and the fast one against erfc in double");
    fvec x;
    for (int i = -112000; i <= 112000; i++)
        x.push_back((float)i / 8000.0f);
    for (const float v : { -0.0f, 1e-30f, -1e-30f, 40.0f, -40.0f, 3.4e38f, -3.4e38f })
        x.push_back(v);
    const size_t n = x.size();
    x.push_back(NAN);
    const float *d_x = dup(x);
    for (const bool fast : { false, true }) {
        float *d_g = dpoison<float>(x.size()), *d_d = dpoison<float>(x.size());
        const unsigned blocks = (unsigned)((x.size() + 255) / 256);
        if (fast)
            gelu_grid_kernel<true><<<blocks, 256, 0, g_k.stream>>>(d_g, d_d, d_x, (int)x.size());
        else
            gelu_grid_kernel<false><<<blocks, 256, 0, g_k.stream>>>(d_g, d_d, d_x, (int)x.size());
        CUDA_CHECK(cudaGetLastError());
        const fvec g = down(d_g, x.size()), d = down(d_d, x.size());
        double eg = 0, ed = 0, rg = 0; /* NaN or Inf: Inf */
        const auto worse = [](double e, double m) { return std::isfinite(e) ? std::max(e, m) : INFINITY; };
        for (size_t i = 0; i < n; i++) {
            const double X = x[i], cdf = 0.5 * std::erfc(-X / std::sqrt(2.0));
            const double gr = X * cdf, dr = cdf + X * std::exp(-0.5 * X * X) / std::sqrt(2.0 * M_PI);
            const double scale = std::max(1.0, std::fabs(X));
            eg = worse(std::fabs(g[i] - gr) / scale, eg);
            ed = worse(std::fabs(d[i] - dr) / scale, ed);
            if (X < 0 && std::fabs(gr) > 1e-30)
                rg = worse(std::fabs(g[i] - gr) / std::fabs(gr), rg);
        }
        const char *form = fast ? "fast" : "erff";
        report(eg <= 1e-6, "act_f_grad", fmt("gelu (%s): error / max(1, |x|)", form), eg, 1e-6);
        report(ed <= 1e-6, "act_f_grad", fmt("gelu' (%s): error / max(1, |x|)", form), ed, 1e-6);
        if (fast)
            report(rg <= 4e-5, "act_f_grad", "gelu (fast): relative error at x < 0", rg, 4e-5);
        report(std::isnan(g[n]) && std::isnan(d[n]), "act_f_grad", fmt("gelu (%s): a NaN gives NaNs", form), 0.0,
               0.0);
    }
    dfree_all();
}

/* ---- element-wise, masks ------------------------------------------------------------------------------ */

/* to_bf16 then from_bf16 (the products' operand casts, the exchange's
 * rows): each value rounded to bf16 exactly as the host rounds it; n and
 * n - 1 from the second float: the 4-value and the 1-value kernels */
static void test_bf16_convert()
{
    const size_t n = 4096;
    note("bf16 conversions");
    Rng r(seed_of("bf16", 0));
    const fvec x = rnd(r, n, -1000, 1000);
    float *d_x = dup(x), *d_y = dpoison<float>(n);
    __nv_bfloat16 *d_h = nullptr;
    CUDA_CHECK(cudaMalloc(&d_h, sizeof(__nv_bfloat16) * n));
    for (int off = 0; off <= 1; off++) {
        const size_t m = n - off;
        to_bf16(&g_k, d_h + off, d_x + off, (int64_t)m);
        from_bf16(&g_k, d_y + off, d_h + off, (int64_t)m);
        const fvec got = down(d_y, n);
        fvec want(m);
        for (size_t i = 0; i < m; i++)
            want[i] = round_bf16(x[i + off]);
        check("to_bf16, from_bf16", fmt("round trip, n=%zu", m), fvec(got.begin() + off, got.end()), want, 0.0);
    }
    CUDA_CHECK(cudaFree(d_h));
    dfree_all();
}

static void test_elementwise()
{
    const int B = 5, T = 17, D = 48;
    const size_t n = (size_t)B * T * D, R = (size_t)T * D;
    note("element-wise and masks");
    Rng r(seed_of("elementwise", 0));
    const fvec a = rnd(r, n, -1, 1), b = rnd(r, n, -1, 1);
    float *d_a = dup(a), *d_b = dup(b);
    /* n: 4 floats per thread; n - 1 and from the second float: 1 */
    for (int off = 0; off <= 1; off++) {
        const size_t m = n - off;
        float *d_out = dpoison<float>(n);
        add_forward(&g_k, d_out + off, d_a + off, d_b + off, (int64_t)m);
        fvec out(m), got = down(d_out, n);
        ref_add_forward(out.data(), a.data() + off, b.data() + off, m);
        check("add_forward", fmt("out, n=%zu", m), fvec(got.begin() + off, got.end()), out, TOL32);
    }
    for (int acc = 0; acc <= 1; acc++) {
        fvec dst = rnd(r, n, -1, 1);
        float *d_dst = acc ? dup(dst) : dpoison<float>(n);
        grad_pass(&g_k, d_dst, d_a, (int64_t)n, acc);
        ref_grad_pass(dst.data(), a.data(), n, acc);
        check("grad_pass", fmt("dst, acc=%d", acc), down(d_dst, n), dst, TOL32);
    }
    {
        float *d_x = dup(b);
        scale_inplace(&g_k, d_x, (int64_t)n, 0.37f);
        fvec x = b;
        ref_scale_inplace(x.data(), n, 0.37f);
        check("scale_inplace", "x", down(d_x, n), x, TOL32);
    }
    /* dropout (R = 1): a fixed mask of 0 and 1/(1-p) */
    const float p = 0.25f, keep = 1.0f / (1.0f - p);
    fvec mask(n);
    for (size_t i = 0; i < n; i++)
        mask[i] = r.below(4) == 0 ? 0.0f : keep;
    float *d_mask = dup(mask);
    {
        float *d_out = dpoison<float>(n);
        mask_forward(&g_k, d_out, d_a, d_mask, (int64_t)n);
        fvec out(n);
        ref_mask_forward(out.data(), a.data(), mask.data(), n);
        check("mask_forward", "out, R=1", down(d_out, n), out, TOL32);
    }
    for (int acc = 0; acc <= 1; acc++) {
        fvec dinp = rnd(r, n, -1, 1);
        float *d_dinp = acc ? dup(dinp) : dpoison<float>(n);
        mask_backward(&g_k, d_dinp, d_b, d_mask, (int64_t)n, acc);
        ref_mask_backward(dinp.data(), b.data(), mask.data(), n, acc);
        check("mask_backward", fmt("dinp, R=1, acc=%d", acc), down(d_dinp, n), dinp, TOL32);
    }
    /* a dense MLP's dropout on its activations, in place where its second
     * product reads them: fp32, or (a context with the cast scratch: bf16
     * precision) their bf16 half, rounded again */
    for (int half = 0; half <= 1; half++) {
        kctx k = g_k;
        k.cast = half ? dalloc<__nv_bfloat16>(n) : nullptr; /* bf16 precision's context */
        k.cast_elems = half ? (int64_t)n : 0;
        float *d_x = dup(a);
        if (half)
            to_bf16(&k, bf16_half(&k, d_x), d_a, (int64_t)n);
        mask_activations(&k, d_x, d_mask, (int64_t)n);
        fvec want(n), got(n);
        if (half) {
            const std::vector<__nv_bfloat16> g16 = down(bf16_half(&k, d_x), n);
            for (size_t i = 0; i < n; i++) {
                got[i] = __bfloat162float(g16[i]);
                want[i] = __bfloat162float(__float2bfloat16_rn(__bfloat162float(__float2bfloat16_rn(a[i])) * mask[i]));
            }
        } else {
            got = down(d_x, n);
            ref_mask_forward(want.data(), a.data(), mask.data(), n);
        }
        check("mask_activations", half ? "bf16 half" : "fp32", got, want, half ? 0.0 : TOL32);
    }
    /* drop path (R = a sample's T * D values): one keep value per sample */
    fvec kp(B);
    for (int i = 0; i < B; i++)
        kp[i] = i == 1 ? 0.0f : (i == 2 ? keep : (r.below(2) ? keep : 0.0f));
    float *d_kp = dup(kp);
    {
        float *d_out = dpoison<float>(n);
        mask_forward(&g_k, d_out, d_a, d_kp, (int64_t)n, (int64_t)R);
        fvec out(n);
        ref_rowmask_forward(out.data(), a.data(), kp.data(), B, R);
        check("mask_forward", "out, R=T*D (rowmask)", down(d_out, n), out, TOL32);
    }
    for (int acc = 0; acc <= 1; acc++) {
        fvec dinp = rnd(r, n, -1, 1);
        float *d_dinp = acc ? dup(dinp) : dpoison<float>(n);
        mask_backward(&g_k, d_dinp, d_b, d_kp, (int64_t)n, acc, (int64_t)R);
        ref_rowmask_backward(dinp.data(), b.data(), kp.data(), B, R, acc);
        check("mask_backward", fmt("dinp, R=T*D (rowmask), acc=%d", acc), down(d_dinp, n), dinp, TOL32);
    }
    dfree_all();
}

/* ---- class token, positions, pooling, sine-cosine table ---------------------------------------------- */

/* D = 48: the passes 4 values a thread; 30: one */
static void test_tokens(int D)
{
    const int B = 5, T = 16;
    note(fmt("class token, positions, pooling, sine-cosine table, D=%d", D));
    Rng r(seed_of("tokens", D));
    /* class token: [B, T, D] -> [B, T+1, D] */
    {
        const fvec inp = rnd(r, (size_t)B * T * D, -1, 1), cls = rnd(r, D, -1, 1);
        float *d_inp = dup(inp), *d_cls = dup(cls), *d_out = dpoison<float>((size_t)B * (T + 1) * D);
        cls_token_forward(&g_k, d_out, d_inp, d_cls, B, T, D);
        fvec out((size_t)B * (T + 1) * D);
        ref_cls_token_forward(out.data(), inp.data(), cls.data(), B, T, D);
        check("cls_token_forward", fmt("out, D=%d", D), down(d_out, out.size()), out, TOL32);
        const fvec dout = rnd(r, out.size(), -1, 1);
        float *d_dout = dup(dout);
        for (int acc = 0; acc <= 1; acc++) {
            fvec dinp = rnd(r, inp.size(), -1, 1), dcls = rnd(r, D, -1, 1);
            float *d_dinp = acc ? dup(dinp) : dpoison<float>(dinp.size()), *d_dcls = dup(dcls);
            cls_token_backward(&g_k, d_dinp, d_dcls, d_dout, B, T, D, acc);
            ref_cls_token_backward(dinp.data(), dcls.data(), dout.data(), B, T, D, acc);
            check("cls_token_backward", fmt("dinp, acc=%d, D=%d", acc, D), down(d_dinp, dinp.size()), dinp, TOL32);
            check("cls_token_backward", fmt("dcls, acc=%d, D=%d", acc, D), down(d_dcls, dcls.size()), dcls, TOL32);
        }
    }
    /* learned positions: [B, T+1, D] + pos[T+1, D] */
    {
        const int TT = T + 1;
        const fvec inp = rnd(r, (size_t)B * TT * D, -1, 1), pos = rnd(r, (size_t)TT * D, -1, 1);
        float *d_inp = dup(inp), *d_pos = dup(pos), *d_out = dpoison<float>(inp.size());
        pos_embed_forward(&g_k, d_out, d_inp, d_pos, B, TT, D);
        fvec out(inp.size());
        ref_pos_embed_forward(out.data(), inp.data(), pos.data(), B, TT, D);
        check("pos_embed_forward", fmt("out, D=%d", D), down(d_out, out.size()), out, TOL32);
        const fvec dout = rnd(r, out.size(), -1, 1);
        float *d_dout = dup(dout);
        for (int v = 0; v < 3; v++) {
            const int acc = v == 1, learned = v < 2; /* acc 0, acc 1, a fixed table (dpos NULL) */
            fvec dinp = rnd(r, inp.size(), -1, 1), dpos = rnd(r, pos.size(), -1, 1);
            float *d_dinp = acc ? dup(dinp) : dpoison<float>(dinp.size()), *d_dpos = dup(dpos);
            pos_embed_backward(&g_k, d_dinp, learned ? d_dpos : nullptr, d_dout, B, TT, D, acc);
            ref_pos_embed_backward(dinp.data(), learned ? dpos.data() : nullptr, dout.data(), B, TT, D, acc);
            const std::string c = fmt("acc=%d, %s, D=%d", acc, learned ? "learned" : "dpos NULL", D);
            check("pos_embed_backward", "dinp, " + c, down(d_dinp, dinp.size()), dinp, TOL32);
            check("pos_embed_backward", "dpos, " + c, down(d_dpos, dpos.size()), dpos, TOL32);
        }
    }
    /* pooling: the class token or the mean over tokens */
    {
        const fvec inp = rnd(r, (size_t)B * T * D, -1, 1);
        float *d_inp = dup(inp);
        for (int cls = 0; cls <= 1; cls++) {
            float *d_out = dpoison<float>((size_t)B * D);
            pool_forward(&g_k, d_out, d_inp, B, T, D, cls);
            fvec out((size_t)B * D);
            ref_pool_forward(out.data(), inp.data(), B, T, D, cls);
            check("pool_forward", fmt("out, cls=%d, D=%d", cls, D), down(d_out, out.size()), out, TOL32);
            const fvec dout = rnd(r, out.size(), -1, 1);
            float *d_dout = dup(dout);
            for (int acc = 0; acc <= 1; acc++) {
                fvec dinp = rnd(r, inp.size(), -1, 1);
                float *d_dinp = acc ? dup(dinp) : dpoison<float>(dinp.size());
                pool_backward(&g_k, d_dinp, d_dout, B, T, D, cls, acc);
                ref_pool_backward(dinp.data(), dout.data(), B, T, D, cls, acc);
                check("pool_backward", fmt("dinp, cls=%d, acc=%d, D=%d", cls, acc, D), down(d_dinp, dinp.size()), dinp,
                      TOL32);
            }
        }
    }
    /* the fixed sine-cosine table (its own widths) */
    if (D == 48) {
        const int shapes[3][4] = { { 8, 8, 64, 1 }, { 4, 7, 66, 0 }, { 14, 14, 192, 1 } }; /* GH, GW, D, cls */
        for (const auto &s : shapes) {
            const size_t n = (size_t)(s[0] * s[1] + s[3]) * s[2];
            float *d_pos = dpoison<float>(n);
            sincos_table(&g_k, d_pos, s[0], s[1], s[2], s[3]);
            fvec pos(n);
            ref_sincos_table(pos.data(), s[0], s[1], s[2], s[3]);
            check("sincos_table", fmt("%dx%d, D=%d, cls=%d", s[0], s[1], s[2], s[3]), down(d_pos, n), pos, TOL32);
        }
    }
    dfree_all();
}

/* ---- layer norm, l2 norm ---------------------------------------------------------------------------------- */

template <int D> static void test_layernorm()
{
    const int N = 517;
    const float eps = 1e-5f;
    note(fmt("layernorm D=%d", D));
    Rng r(seed_of("layernorm", D));
    fvec inp((size_t)N * D);
    for (int i = 0; i < N; i++) { /* rows of different means and spreads */
        const float mu = r.uni(-0.5f, 0.5f), sd = r.uni(0.5f, 2.0f);
        for (int j = 0; j < D; j++)
            inp[(size_t)i * D + j] = mu + sd * r.uni(-1, 1);
    }
    const fvec w = rnd(r, D, 0.5f, 1.5f), b = rnd(r, D, -0.5f, 0.5f);
    float *d_inp = dup(inp), *d_w = dup(w), *d_b = dup(b);
    float *d_out = dpoison<float>(inp.size()), *d_mean = dpoison<float>(N), *d_rstd = dpoison<float>(N);
    layernorm_forward<D>(&g_k, d_out, d_mean, d_rstd, d_inp, d_w, d_b, N, eps);
    fvec out(inp.size()), mean(N), rstd(N);
    ref_layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), N, D, eps);
    check("layernorm_forward", fmt("out, D=%d", D), down(d_out, out.size()), out, TOL32);
    check("layernorm_forward", fmt("mean, D=%d", D), down(d_mean, N), mean, TOL32);
    check("layernorm_forward", fmt("rstd, D=%d", D), down(d_rstd, N), rstd, TOL32);
    /* bf16 precision, before a product: the output in bf16 alone, the GPU's
     * fp32 output rounded */
    {
        __nv_bfloat16 *d_out16 = dpoison<__nv_bfloat16>(inp.size());
        float *d_out32 = dpoison<float>(inp.size());
        layernorm_forward<D>(&g_k, d_out32, d_mean, d_rstd, d_inp, d_w, d_b, N, eps, d_out16);
        check_copy16("layernorm_forward", fmt("out16 (the output rounded), D=%d", D), d_out16, d_out, inp.size());
        const fvec kept = down(d_out32, inp.size());
        size_t untouched = 0;
        for (size_t i = 0; i < inp.size(); i++) {
            uint32_t bits;
            memcpy(&bits, &kept[i], sizeof bits);
            untouched += bits == 0xFFFFFFFFu;
        }
        report(untouched == inp.size(), "layernorm_forward", fmt("out16: out left alone, D=%d", D),
               (double)(inp.size() - untouched), 0.0);
    }

    /* the backward pass from the CPU's saved statistics */
    const fvec dout = rnd(r, out.size(), -1, 1);
    float *d_dout = dup(dout), *d_mean_ref = dup(mean), *d_rstd_ref = dup(rstd);
    for (int acc = 0; acc <= 1; acc++) {
        fvec dinp = rnd(r, inp.size(), -1, 1), dw = rnd(r, D, -1, 1), db = rnd(r, D, -1, 1);
        const fvec dinp0 = dinp, dw0 = dw, db0 = db; /* the CPU reference overwrites them */
        float *d_dinp = acc ? dup(dinp) : dpoison<float>(dinp.size()), *d_dw = dup(dw), *d_db = dup(db);
        /* and the sums of dinp as written (dsum: an output bias's gradient) */
        const fvec ds0 = rnd(r, D, -1, 1);
        float *d_ds = dup(ds0);
        float *d_dinp2 = acc ? dup(dinp) : dpoison<float>(dinp.size()), *d_dw2 = dup(dw), *d_db2 = dup(db);
        layernorm_backward<D>(&g_k, d_dinp, d_dw, d_db, d_dout, d_inp, d_w, d_mean_ref, d_rstd_ref, N, acc);
        layernorm_backward<D>(&g_k, d_dinp2, d_dw2, d_db2, d_dout, d_inp, d_w, d_mean_ref, d_rstd_ref, N, acc, d_ds);
        ref_layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), mean.data(),
                               rstd.data(), N, D, acc);
        const fvec ds = ref_col_sums(ds0, dinp, D);
        const std::string c = fmt("D=%d, acc=%d", D, acc);
        check("layernorm_backward", "dinp, " + c, down(d_dinp, dinp.size()), dinp, TOL32);
        check("layernorm_backward", "dw, " + c, down(d_dw, D), dw, TOL32);
        check("layernorm_backward", "db, " + c, down(d_db, D), db, TOL32);
        check("layernorm_backward", "dsum (dinp's column sums), " + c, down(d_ds, D), ds, TOL32);
        check("layernorm_backward", "dinp with dsum: the same bits, " + c, down(d_dinp2, dinp.size()),
              down(d_dinp, dinp.size()), 0.0);
        check("layernorm_backward", "dw with dsum: the same bits, " + c, down(d_dw2, D), down(d_dw, D), 0.0);
        check("layernorm_backward", "db with dsum: the same bits, " + c, down(d_db2, D), down(d_db, D), 0.0);
        { /* bf16 precision: dinp's bf16 copy at the operand scratch's start (copy16) */
            kctx kb = g_k;
            kb.cast = dpoison<__nv_bfloat16>(dinp.size());
            kb.cast_elems = (int64_t)dinp.size();
            float *d_dinp3 = acc ? dup(dinp0) : dpoison<float>(dinp.size()), *d_dw3 = dup(dw0), *d_db3 = dup(db0);
            float *d_ds3 = dup(ds0);
            layernorm_backward<D>(&kb, d_dinp3, d_dw3, d_db3, d_dout, d_inp, d_w, d_mean_ref, d_rstd_ref, N, acc, d_ds3,
                                  true);
            check_copy16("layernorm_backward", "dinp's bf16 copy (copy16), " + c, kb.cast, d_dinp3, dinp.size());
            check("layernorm_backward", "dinp with copy16: the same bits, " + c, down(d_dinp3, dinp.size()),
                  down(d_dinp, dinp.size()), 0.0);
            check("layernorm_backward", "dsum with copy16: the same bits, " + c, down(d_ds3, D), down(d_ds, D), 0.0);
        }
    }
    dfree_all();
}

static void test_l2norm()
{
    const int rows = 123, C = 40;
    note("l2norm");
    Rng r(seed_of("l2norm", 0));
    const fvec in = rnd(r, (size_t)rows * C, -1, 1);
    float *d_in = dup(in), *d_out = dpoison<float>(in.size()), *d_norm = dpoison<float>(rows);
    l2norm_forward(&g_k, d_out, d_norm, d_in, rows, C);
    fvec out(in.size()), norm(rows);
    ref_l2norm_forward(out.data(), norm.data(), in.data(), rows, C);
    check("l2norm_forward", "out", down(d_out, out.size()), out, TOL32);
    check("l2norm_forward", "norm", down(d_norm, rows), norm, TOL32);
    const fvec dout = rnd(r, out.size(), -1, 1);
    float *d_dout = dup(dout), *d_out_ref = dup(out), *d_norm_ref = dup(norm);
    for (int acc = 0; acc <= 1; acc++) {
        fvec din = rnd(r, in.size(), -1, 1);
        float *d_din = acc ? dup(din) : dpoison<float>(din.size());
        l2norm_backward(&g_k, d_din, d_dout, d_out_ref, d_norm_ref, rows, C, acc);
        ref_l2norm_backward(din.data(), dout.data(), out.data(), norm.data(), rows, C, acc);
        check("l2norm_backward", fmt("din, acc=%d", acc), down(d_din, din.size()), din, TOL32);
    }
    dfree_all();
}

/* ---- attention ------------------------------------------------------------------------------------------ */

/* TILED: the row-tile kernels, called directly (the entry points take them
 * only for sequences too long for one block, attn_whole_ok) */
template <int T, int HD, int NH, bool TILED = false> static void test_attention(int B)
{
    constexpr int D = HD * NH;
    constexpr bool tiled = TILED || !attn_whole_ok<T, HD>();
    note(fmt("attention T=%d HD=%d NH=%d%s", T, HD, NH, tiled ? " (row tiles)" : ""));
    if constexpr (TILED)
        attention_tiled_setup<T, HD, NH>();
    else
        attention_setup<T, HD, NH>();
    Rng r(seed_of("attention", T * 1000 + HD * 10 + NH));
    const fvec qkv = rnd(r, (size_t)B * T * 3 * D, -2, 2);
    float *d_qkv = dup(qkv), *d_out = dpoison<float>((size_t)B * T * D), *d_att = dpoison<float>((size_t)B * NH * T * T);
    if constexpr (TILED)
        attention_tiled_forward<T, HD, NH>(&g_k, d_out, d_att, d_qkv, B);
    else
        attention_forward<T, HD, NH>(&g_k, d_out, d_att, d_qkv, B);
    fvec out((size_t)B * T * D), att((size_t)B * NH * T * T);
    ref_attention_forward(out.data(), att.data(), qkv.data(), B, T, D, NH);
    /* bf16 precision: the bf16 fragments where the shape allows; tf32 and
     * bf16: the tensor-core kernels (TF32 products) where it allows; else
     * the fp32 ones, held to fp32's tolerance */
    const bool frag = !tiled && g_k.cast && attn_frag_ok<T, HD>();
    const bool tc = !frag && g_bf16 && (tiled ? attn_rows_tc_ok<T, HD>() : attn_tc_ok<T, HD>());
    const std::string c = fmt("T=%d, HD=%d, NH=%d, B=%d [%s%s]", T, HD, NH, B, mode(),
                              frag    ? ", bf16 fragments"
                              : tiled ? (tc ? ", row tiles on tensor cores" : ", row tiles")
                              : tc    ? ", tensor cores"
                                      : "");
    const double tol = frag ? TOL_ATTN_FRAG : tc ? TOL_ATTN_TC : TOL32;
    check("attention_forward", "out, " + c, down(d_out, out.size()), out, tol);
    check("attention_forward", "att, " + c, down(d_att, att.size()), att, tol);
    /* bf16 precision: the output in bf16 (half), each value the fp32
     * kernel's rounded */
    const bool half = !TILED && attn_half<T, HD>(&g_k);
    if (half) {
        float *d_out16 = dpoison<float>(out.size()), *d_att16 = dpoison<float>(att.size());
        attention_forward<T, HD, NH>(&g_k, d_out16, d_att16, d_qkv, B, true);
        check_copy16("attention_forward", "out in bf16 (half), " + c, reinterpret_cast<__nv_bfloat16 *>(d_out16), d_out,
                     out.size());
    }
    /* bf16 precision on fragments, frag16: qkv made in bf16 alone
     * (attn_qkv16, as linear_forward's out16 writes it) gives the same bits
     * as fp32 qkv, which the kernels round the same way, and the weights
     * are not written (the backward computes them again) */
    const bool q16 = !TILED && attn_qkv16<T, HD>(&g_k, d_qkv) != nullptr;
    float *d_qkv16 = nullptr;
    if (q16) {
        std::vector<__nv_bfloat16> h16(qkv.size());
        for (size_t i = 0; i < qkv.size(); i++)
            h16[i] = __float2bfloat16_rn(qkv[i]);
        d_qkv16 = reinterpret_cast<float *>(dup(h16));
        float *d_outq = dpoison<float>(out.size()), *d_attq = dpoison<float>(att.size());
        attention_forward<T, HD, NH>(&g_k, d_outq, d_attq, d_qkv16, B, false, true);
        check("attention_forward", "out from qkv in bf16 (frag16), the same bits, " + c, down(d_outq, out.size()),
              down(d_out, out.size()), 0.0);
        const size_t written = written_count(down(d_attq, att.size()));
        report(written == 0, "attention_forward", "frag16: the weights not written, " + c, (double)written, 0.0);
    }
    /* the backward pass from the CPU's weights */
    const fvec dout = rnd(r, out.size(), -1, 1);
    float *d_dout = dup(dout), *d_att_ref = dup(att), *d_dqkv = dpoison<float>(qkv.size());
    /* with the qkv bias's gradient (dbias += dqkv's column sums): the
     * fragment kernel's own sums, or colsum_add over dqkv */
    const fvec db0 = rnd(r, (size_t)3 * D, -1, 1);
    float *d_db = dup(db0);
    if constexpr (TILED)
        attention_tiled_backward<T, HD, NH>(&g_k, d_dqkv, d_dout, d_qkv, d_att_ref, B);
    else
        attention_backward<T, HD, NH>(&g_k, d_dqkv, d_dout, d_qkv, d_att_ref, B, false, false, d_db);
    fvec dqkv(qkv.size()), datt(att.size());
    ref_attention_backward(dqkv.data(), datt.data(), dout.data(), qkv.data(), att.data(), B, T, D, NH);
    check("attention_backward", "dqkv, " + c, down(d_dqkv, dqkv.size()), dqkv, tol);
    const fvec db = ref_col_sums(db0, dqkv, (size_t)3 * D); /* the CPU's dqkv summed */
    if (!TILED) {
        check("attention_backward", "the qkv bias's gradient (dbias), " + c, down(d_db, db.size()), db, tol);
        /* the row tiles write the weights' gradient over att: the CPU's
         * weights again, and d_att_ref's gradient kept for its check below */
        float *d_dqkv0 = dpoison<float>(qkv.size()), *d_att0 = dup(att);
        attention_backward<T, HD, NH>(&g_k, d_dqkv0, d_dout, d_qkv, d_att0, B);
        check("attention_backward", "dqkv without dbias: the same bits, " + c, down(d_dqkv0, dqkv.size()),
              down(d_dqkv, dqkv.size()), 0.0);
    }
    if (q16) { /* frag16: the weights computed again, the bits of the forward's own */
        float *d_dqkvg = dpoison<float>(qkv.size()), *d_dqkvq = dpoison<float>(qkv.size());
        attention_backward<T, HD, NH>(&g_k, d_dqkvg, d_dout, d_qkv, d_att, B);
        attention_backward<T, HD, NH>(&g_k, d_dqkvq, d_dout, d_qkv16, nullptr, B, false, true);
        check("attention_backward",
              "dqkv from qkv in bf16, the weights computed again (frag16): the same bits as from the forward's, " + c,
              down(d_dqkvq, dqkv.size()), down(d_dqkvg, dqkv.size()), 0.0);
    }
    if (half) { /* with dbias, as the generated code calls it */
        float *d_dqkv16 = dpoison<float>(qkv.size()), *d_db16 = dup(db0);
        attention_backward<T, HD, NH>(&g_k, d_dqkv16, d_dout, d_qkv, d_att_ref, B, true, false, d_db16);
        check_copy16("attention_backward", "dqkv in bf16 (half), " + c, reinterpret_cast<__nv_bfloat16 *>(d_dqkv16),
                     d_dqkv, qkv.size());
        check("attention_backward", "dbias with dqkv in bf16 (half), " + c, down(d_db16, db.size()), db, tol);
        if (q16) { /* dout in bf16 alone (dout16): the kernel stages the same values */
            std::vector<__nv_bfloat16> g16(dout.size());
            for (size_t i = 0; i < dout.size(); i++)
                g16[i] = __float2bfloat16_rn(dout[i]);
            float *d_dout16 = reinterpret_cast<float *>(dup(g16)), *d_dqkvg = dpoison<float>(qkv.size());
            float *d_dbg = dup(db0);
            attention_backward<T, HD, NH>(&g_k, d_dqkvg, d_dout16, d_qkv, d_att_ref, B, true, false, d_dbg, true);
            check("attention_backward", "dqkv from dout in bf16 (dout16): the same bits, " + c,
                  widen16(reinterpret_cast<__nv_bfloat16 *>(d_dqkvg), qkv.size()),
                  widen16(reinterpret_cast<__nv_bfloat16 *>(d_dqkv16), qkv.size()), 0.0);
            check("attention_backward", "dbias from dout in bf16 (dout16): the same bits, " + c,
                  down(d_dbg, db.size()), down(d_db16, db.size()), 0.0);
        }
    }
    /* the row tiles leave the weights' gradient (through the softmax and
     * the scale) where the weights were */
    if (tiled)
        check("attention_backward", "att's room: the weights' gradient, " + c, down(d_att_ref, datt.size()), datt, tol);
    dfree_all();
}

/* ---- heads and the loss ------------------------------------------------------------------------------------ */

/* The auxiliary losses' sums over N tokens (moe_aux_partial_kernel and
 * moe_aux_total_kernel): [E] probabilities, [E] top-1 counts, z, the
 * routing loss and the entropy, against the host's sums in double. N large
 * enough that every thread of a block has tokens; E = 300 takes two passes
 * of its experts. The sums are in another order than the host's: 1e-10
 * (one token missed would be 1e-5 off). */
template <int E, int K>
static void test_moe_aux_sums(int N)
{
    constexpr int W = 2 * E + 3;
    note(fmt("moe_aux sums E=%d K=%d N=%d", E, K, N));
    Rng r(seed_of("moe_aux_sums", E * 100 + N % 97));
    fvec probs((size_t)N * E), lse(N), entropy(N);
    std::vector<int> topk((size_t)N * K), target(N);
    for (int n = 0; n < N; n++) {
        double sum = 0.0;
        for (int e = 0; e < E; e++)
            sum += probs[(size_t)n * E + e] = r.uni(0.01f, 1.0f);
        for (int e = 0; e < E; e++)
            probs[(size_t)n * E + e] = (float)(probs[(size_t)n * E + e] / sum);
        for (int k = 0; k < K; k++)
            topk[(size_t)n * K + k] = r.below(E);
        target[n] = r.below(E);
        lse[n] = r.uni(-3, 3);
        entropy[n] = r.uni(0, 2);
    }
    std::vector<double> want(W + 1, 0.0);
    for (int n = 0; n < N; n++) {
        for (int e = 0; e < E; e++)
            want[e] += probs[(size_t)n * E + e];
        want[E + topk[(size_t)n * K]] += 1.0;
        want[2 * E] += (double)lse[n] * lse[n];
        const float p = probs[(size_t)n * E + target[n]];
        want[2 * E + 1] -= log(p > 1e-30f ? p : 1e-30f);
        want[2 * E + 2] += entropy[n];
    }
    want[W] = N;
    float *d_probs = dup(probs), *d_lse = dup(lse), *d_entropy = dup(entropy);
    int *d_topk = dup(topk), *d_target = dup(target);
    double *d_part = dpoison<double>((size_t)AUX_BLOCKS * W), *d_tot = dpoison<double>(W + 1);
    const std::vector<double> zero = { 0.0 };
    double *d_ent_acc = dup(zero);
    moe_aux_partial_kernel<E, K><<<AUX_BLOCKS, AUX_THREADS, 0, g_k.stream>>>(d_part, d_probs, d_lse, d_topk, d_target,
                                                                             d_entropy, N);
    LAUNCH_CHECK();
    moe_aux_total_kernel<E><<<1, (W + 32) / 32 * 32, 0, g_k.stream>>>(d_tot, d_ent_acc, d_part, N);
    LAUNCH_CHECK();
    const std::vector<double> got = down(d_tot, W + 1);
    const std::string c = fmt("E=%d K=%d N=%d", E, K, N);
    /* the routing loss's terms are logf of floats on the device, log here:
     * 2.5e-9 to 3.5e-9 apart on an H200; the other sums 1e-10 */
    for (int i = 0; i <= W; i++)
        check_scalar("moe_aux_partial_kernel", fmt("sum %d of %d, ", i, W + 1) + c, got[i], want[i],
                     i == 2 * E + 1 ? 1e-7 : 1e-10);
    dfree_all();
}

/* The load loss (moe_load_forward, moe_load_backward) against ops.h's: the
 * loss, the loads, each choice's density and thresholds, and the logits'
 * gradient added to what the router's backward wrote. The choices are the
 * noisy logits' top K (ties to the lower expert), as moe_route makes them. */
template <int E, int K>
static void test_moe_load(int N)
{
    note(fmt("moe_load E=%d K=%d N=%d", E, K, N));
    Rng r(seed_of("moe_load", E * 100 + K));
    const float std = 1.0f / E, w = 0.3f;
    fvec clean = rnd(r, (size_t)N * E, -1, 1), noisy((size_t)N * E);
    std::vector<int> topk((size_t)N * K);
    fvec val(K);
    for (int n = 0; n < N; n++) {
        for (int e = 0; e < E; e++)
            noisy[(size_t)n * E + e] = clean[(size_t)n * E + e] + std * r.uni(-2, 2);
        ref_moe_topk_row(topk.data() + (size_t)n * K, val.data(), noisy.data() + (size_t)n * E, E, K);
    }
    fvec load(E), dens((size_t)N * E);
    std::vector<int> thr((size_t)N * 2);
    const float aux = ref_moe_load_forward(load.data(), dens.data(), thr.data(), clean.data(), noisy.data(),
                                           topk.data(), N, E, K, std);
    float *d_clean = dup(clean), *d_noisy = dup(noisy), *d_aux = dpoison<float>(1);
    float *d_dens = dpoison<float>(dens.size()), *d_prob = dpoison<float>(dens.size());
    int *d_topk = dup(topk), *d_thr = dpoison<int>(thr.size());
    double *d_load = dpoison<double>(E);
    const std::vector<double> zero = { 0.0 };
    double *d_loss = dup(zero);
    moe_load_forward<E, K>(&g_k, d_aux, d_load, d_loss, d_dens, d_thr, d_prob, d_clean, d_noisy, d_topk, std, w, N, 1);
    const std::string c = fmt("E=%d K=%d N=%d", E, K, N);
    check_scalar("moe_load_forward", "loss, " + c, down(d_aux, 1)[0], aux, TOL32);
    check_scalar("moe_load_forward", "weighted loss, " + c, down(d_loss, 1)[0], (double)w * aux, TOL32);
    const std::vector<double> gl = down(d_load, E);
    check("moe_load_forward", "loads, " + c, fvec(gl.begin(), gl.end()), load, TOL32);
    check("moe_load_forward", "densities, " + c, down(d_dens, dens.size()), dens, TOL32);
    check_exact("moe_load_forward", "thresholds, " + c, down(d_thr, thr.size()).data(), thr.data(), thr.size());
    /* the backward adds to the logits' gradient: from zeros (its own terms
     * alone), then over what the router's backward wrote */
    for (int from = 0; from < 2; from++) {
        fvec dl = from ? rnd(r, (size_t)N * E, -1, 1) : fvec((size_t)N * E, 0.0f);
        float *d_dl = dup(dl);
        moe_load_backward<E, K>(&g_k, d_dl, d_load, d_dens, d_thr, d_topk, N, w);
        ref_moe_load_backward(dl.data(), load.data(), dens.data(), thr.data(), topk.data(), N, E, K, w);
        check("moe_load_backward", fmt("dlogits from %s, ", from ? "the router's" : "zeros") + c,
              down(d_dl, dl.size()), dl, TOL32);
    }
    dfree_all();
}

/* lam < 1: CutMix's targets, lam of labels and the rest of labels_mix (another
 * label of the sample's dataset); lam = 1: the plain loss, labels_mix = labels */
static void test_softmax_xent(int B, int CMAX, int C0, int C1, float lam)
{
    const float eps = 0.1f, scale = 1.0f / (float)B;
    note(fmt("softmax_xent CMAX=%d, lam %g", CMAX, (double)lam));
    Rng r(seed_of("softmax_xent", CMAX));
    const ivec classes = { C0, C1 };
    std::vector<int32_t> dataset(B), labels(B), labels_mix(B);
    for (int b = 0; b < B; b++) {
        dataset[b] = b < 2 ? b : r.below(2);
        labels[b] = r.below(classes[dataset[b]]);
        labels_mix[b] = lam < 1.0f ? r.below(classes[dataset[b]]) : labels[b];
    }
    const fvec logits = rnd(r, (size_t)B * CMAX, -4, 4); /* columns past C too: ignored */
    const fvec lam_v = { lam };
    float *d_logits = dup(logits), *d_dl = dpoison<float>(logits.size()), *d_loss = dpoison<float>(B);
    float *d_lam = dup(lam_v);
    int32_t *d_labels = dup(labels), *d_labels_mix = dup(labels_mix), *d_dataset = dup(dataset);
    int *d_classes = dup(classes);
    softmax_xent_kernel<<<(unsigned)((B + 7) / 8), 256, 0, g_k.stream>>>(
        d_dl, d_loss, d_logits, d_labels, d_labels_mix, d_lam, d_dataset, d_classes, B, CMAX, eps, scale);
    LAUNCH_CHECK();
    fvec dl(logits.size()), loss(B);
    for (int b = 0; b < B; b++) {
        const int C = classes[dataset[b]];
        float *d = dl.data() + (size_t)b * CMAX;
        for (int c = C; c < CMAX; c++)
            d[c] = 0.0f;
        loss[b] = ref_softmax_xent_mix(d, logits.data() + (size_t)b * CMAX, C, labels[b], labels_mix[b], lam, eps,
                                       scale);
    }
    const std::string c = fmt("B=%d, CMAX=%d, classes {%d, %d}, lam %g", B, CMAX, C0, C1, (double)lam);
    check("softmax_xent_kernel", "dlogits, " + c, down(d_dl, dl.size()), dl, TOL32);
    check("softmax_xent_kernel", "loss, " + c, down(d_loss, B), loss, TOL32);
    /* the batch's mean loss, added to an accumulator as backend.cu does (of the CPU's losses) */
    const std::vector<double> acc0 = { 0.25 };
    double *d_acc = dup(acc0);
    float *d_loss_ref = dup(loss);
    mean_accumulate_kernel<<<1, 256, 0, g_k.stream>>>(d_acc, d_loss_ref, B);
    LAUNCH_CHECK();
    double mean = 0.0;
    for (int b = 0; b < B; b++)
        mean += loss[b];
    check_scalar("mean_accumulate_kernel", "0.25 + mean loss, " + c, down(d_acc, 1)[0], acc0[0] + mean / B, 1e-10);
    dfree_all();
}

/* B samples: 29, fewer than the weight gradient's chunks (one sample a
 * chunk, some empty), or 300 (10 a chunk) */
static void test_head(int B)
{
    const int D = 48, CMAX = 10, ND = 2;
    const ivec classes = { 10, 7 };
    note(fmt("head, %d samples", B));
    Rng r(seed_of("head", B));
    /* the parameter arena: padding around the heads, which must stay as it is */
    int64_t w_off[ND], b_off[ND], o = 7;
    for (int d = 0; d < ND; d++) {
        w_off[d] = o;
        o += (int64_t)classes[d] * D;
        b_off[d] = o;
        o += classes[d] + 3;
    }
    const size_t P = (size_t)o + 5;
    const std::vector<int64_t> head_off = { w_off[0], w_off[1], b_off[0], b_off[1] };
    std::vector<int32_t> dataset(B);
    for (int b = 0; b < B; b++)
        dataset[b] = b < ND ? b : r.below(ND);
    const fvec param = rnd(r, P, -1, 1), inp = rnd(r, (size_t)B * D, -1, 1);
    float *d_param = dup(param), *d_inp = dup(inp), *d_out = dpoison<float>((size_t)B * CMAX);
    int64_t *d_off = dup(head_off);
    int *d_classes = dup(classes);
    int32_t *d_dataset = dup(dataset);
    head_forward(&g_k, d_out, d_inp, d_param, d_off, d_classes, d_dataset, B, D, CMAX, ND);
    fvec out((size_t)B * CMAX);
    ref_head_forward(out.data(), inp.data(), param.data(), w_off, b_off, classes.data(), dataset.data(), B, D, CMAX);
    check("head_forward", fmt("out, B=%d", B), down(d_out, out.size()), out, TOL32);

    const fvec dout = rnd(r, out.size(), -1, 1); /* columns past C too: ignored */
    float *d_dout = dup(dout);
    for (int acc = 0; acc <= 1; acc++) {
        fvec dinp = rnd(r, inp.size(), -1, 1), grad = rnd(r, P, -1, 1);
        float *d_dinp = acc ? dup(dinp) : dpoison<float>(dinp.size()), *d_grad = dup(grad);
        head_backward(&g_k, d_dinp, d_grad, d_dout, d_inp, d_param, d_off, d_classes, d_dataset, B, D, CMAX, ND, acc);
        ref_head_backward(dinp.data(), grad.data(), dout.data(), inp.data(), param.data(), w_off, b_off,
                          classes.data(), dataset.data(), B, D, CMAX, acc);
        check("head_backward", fmt("dinp, B=%d, acc=%d", B, acc), down(d_dinp, dinp.size()), dinp, TOL32);
        check("head_backward", fmt("grad (whole arena), B=%d, acc=%d", B, acc), down(d_grad, P), grad, TOL32);
    }
    dfree_all();
}

/* ---- mixture of experts ------------------------------------------------------------------------------------ */

/* One MoE layer, forward and backward, as model.cu and model.c call it:
 * E experts, top K, N = 300 tokens of T = 20 per sample, two datasets
 * mapped to experts (the DAMEX loss), all four auxiliary losses weighted. */
/* H = 42: rows not a multiple of 4 wide, the element-wise passes' 1-wide
 * paths (bf16: the activations and dh in bf16 at 2-byte alignment) */
/* EC: expert choice (K = E: every token lists every expert; each expert
 * takes the cap tokens of highest probability; gates not normalised) */
/* D: the model width (32: the row passes 4 values a lane; 30: one) */
template <int E, int K, int ACT, int H = 48, bool EC = false, int D = 32>
static void test_moe(int variant, int dropless, int normalize, int batch_priority, int acc)
{
    static_assert(!EC || K == E, "expert choice lists every expert");
    constexpr int T = 20, ND = 2;
    const int N = 300, B = N / T;
    /* weights larger than a model's, so that each auxiliary gradient is well
     * above the tolerance in the router's gradient */
    const float w_bal = 0.5f, w_z = 0.5f, w_ds = 0.5f, w_imp = 0.5f;
    const double tolb = tol_blas();
    const char *act = ACT == ACT_GELU ? "gelu" : ACT == ACT_RELU ? "relu" : "silu";
    const int cap = EC ? moe_capacity(N, E, 1, 1.25, 0) : moe_capacity(N, E, K, 1.25, dropless);
    const int cap_ref = EC ? ref_moe_capacity(N, E, 1, 1.25, 0) : ref_moe_capacity(N, E, K, 1.25, dropless);
    /* bf16 precision on Hopper with widths in whole tiles: the experts'
     * four row products by gg_mm (the grouped product over the live rows) */
    const bool gg = g_k.cast && g_k.gg && gg_fits<D, H>() && gg_fits<H, D>();
    const std::string ggs = !gg ? "" : g_k.gg_grid ? fmt(" grouped product, %d blocks", g_k.gg_grid) : " grouped product";
    const std::string c = fmt("E=%d K=%d D=%d H=%d cap=%d normalize=%d batch_priority=%d acc=%d %s%s%s [%s]", E, K, D,
                              H, cap, normalize, batch_priority, acc, act, EC ? " expert_choice" : "", ggs.c_str(),
                              mode());
    note("moe " + c);
    check_exact("moe_capacity", c, &cap, &cap_ref, 1);
    if (cap != cap_ref)
        return;

    Rng r(seed_of("moe", variant * 2 + g_bf16));
    const fvec x = rnd(r, (size_t)N * D, -1, 1);
    fvec logits((size_t)N * E); /* expert 0 favoured, so that its capacity overflows */
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++)
            logits[(size_t)n * E + e] = r.uni(-2, 2) + (e == 0 ? 1.0f : -0.25f * (float)(e % 3));
    const fvec w1 = rnd(r, (size_t)E * H * D, -0.35f, 0.35f), b1 = rnd(r, (size_t)E * H, -0.5f, 0.5f);
    const fvec w2 = rnd(r, (size_t)E * D * H, -0.3f, 0.3f), b2 = rnd(r, (size_t)E * D, -0.5f, 0.5f);
    const fvec dout = rnd(r, (size_t)N * D, -1, 1);
    std::vector<int32_t> dataset(B);
    for (int b = 0; b < B; b++)
        dataset[b] = b < ND ? b : r.below(ND);
    const ivec map = { 1 % E, E - 1 };
    ivec target(N);
    for (int n = 0; n < N; n++)
        target[n] = map[dataset[n / T]];
    const fvec dx0 = rnd(r, (size_t)N * D, -1, 1);
    /* the biases' gradients are added to; dw1 and dw2 are stored (the
     * step's one writer of them: GRAD_STORED), so they start poisoned
     * here and from zeros on the CPU, which adds */
    const fvec db1_0 = rnd(r, b1.size(), -0.5f, 0.5f), db2_0 = rnd(r, b2.size(), -0.5f, 0.5f);

    /* ---- the GPU, in model.cu's order ---- */
    float *d_x = dup(x), *d_logits = dup(logits), *d_w1 = dup(w1), *d_b1 = dup(b1), *d_w2 = dup(w2), *d_b2 = dup(b2);
    float *d_dout = dup(dout);
    int32_t *d_dataset = dup(dataset);
    int *d_map = dup(map);
    const int nblk = (int)(((int64_t)N * K + ROUTE_BLOCK - 1) / ROUTE_BLOCK);
    moe_route_buf rb;
    memset(&rb, 0, sizeof rb);
    rb.probs = dpoison<float>((size_t)N * E);
    rb.lse = dpoison<float>(N);
    rb.topp = dpoison<float>((size_t)N * K);
    rb.gate = dpoison<float>((size_t)N * K);
    rb.prio = dpoison<float>(N);
    rb.prio_sorted = dpoison<float>(N);
    rb.entropy = dpoison<float>(N);
    rb.topk = dpoison<int>((size_t)N * K);
    rb.slot = dpoison<int>((size_t)N * K);
    rb.count = dpoison<int>(E);
    rb.row_token = dpoison<int>((size_t)E * cap);
    rb.row_k = dpoison<int>((size_t)E * cap);
    rb.order = dpoison<int>(N);
    rb.iota = dpoison<int>(N);
    rb.blk_count = dpoison<int>((size_t)nblk * E);
    rb.blk_base = dpoison<int>((size_t)nblk * E);
    size_t sort_bytes = 0;
    if (moe_prio_sort_dev(nullptr, &sort_bytes, nullptr, nullptr, nullptr, nullptr, N, g_k.stream) != 0) {
        report(false, "moe_route", c + " (cannot size the routing sort)", NAN, 0.0);
        dfree_all();
        return;
    }
    rb.sort_tmp = dalloc<char>(sort_bytes);
    rb.sort_bytes = sort_bytes;
    int *d_target = dpoison<int>(N);
    const size_t rows = (size_t)E * cap;
    float *d_out = dpoison<float>((size_t)N * D), *d_xe = dpoison<float>(rows * D), *d_h = dpoison<float>(rows * H);
    float *d_a = dpoison<float>(rows * H), *d_ye = dpoison<float>(rows * D);
    float *d_aux = dpoison<float>(4);
    double *d_sums = dpoison<double>(2 * E), *d_loss = dzero<double>(1), *d_entropy = dzero<double>(1);
    const size_t nst = (size_t)E + (size_t)ND * E + 3;
    unsigned long long *d_st = dzero<unsigned long long>(nst);

    if (EC) {
        ec_buf ec = { { dpoison<float>((size_t)N * E), dpoison<float>((size_t)N * E) },
                      { dpoison<int>((size_t)N * E), dpoison<int>((size_t)N * E) },
                      dpoison<int>((size_t)E + 1) };
        size_t ec_bytes = 0;
        if (ec_sort_dev(nullptr, &ec_bytes, &ec, (int64_t)N * E, E, g_k.stream) < 0) {
            report(false, "moe_route_expert_choice", c + " (cannot size the sort)", NAN, 0.0);
            dfree_all();
            return;
        }
        if (ec_bytes > sort_bytes) {
            rb.sort_tmp = dalloc<char>(ec_bytes);
            rb.sort_bytes = ec_bytes;
        }
        moe_route_expert_choice<E>(&g_k, &rb, &ec, d_logits, N, cap);
    } else {
        moe_route<E, K>(&g_k, &rb, d_logits, N, cap, normalize, batch_priority);
    }
    moe_target(&g_k, d_target, d_dataset, d_map, N, T);
    moe_experts_forward<D, H, E, K, ACT, 1>(&g_k, d_out, d_xe, d_xe, d_h, d_a, d_ye, d_ye, d_x, &rb, d_w1, d_b1, d_w2,
                                            d_b2, N, cap);
    /* again as a residual block's output (the same rows again: the
     * backward below takes them): + res, added after the gated sum */
    const fvec res = rnd(r, (size_t)N * D, -2, 2);
    float *d_res = dup(res), *d_outr = dpoison<float>((size_t)N * D);
    moe_experts_forward<D, H, E, K, ACT, 1>(&g_k, d_outr, d_xe, d_xe, d_h, d_a, d_ye, d_ye, d_x, &rb, d_w1, d_b1, d_w2,
                                            d_b2, N, cap, d_res);
    moe_aux_losses<E, K>(&g_k, d_aux, d_sums, d_loss, d_st, d_entropy, &rb, d_target, d_dataset, w_bal, w_z, w_ds,
                         w_imp, N, T, ND, 1);

    float *d_dx = acc ? dup(dx0) : dpoison<float>(dx0.size());
    float *d_dgate = dpoison<float>((size_t)N * K), *d_dye = dpoison<float>(rows * D);
    float *d_dxe = dpoison<float>(rows * D);
    float *d_dw1 = dpoison<float>(w1.size()), *d_db1 = dup(db1_0), *d_dw2 = dpoison<float>(w2.size());
    float *d_db2 = dup(db2_0);
    float *d_dlogits = dpoison<float>((size_t)N * E);
    moe_experts_backward<D, H, E, K, 1>(&g_k, d_dx, d_dgate, d_dye, d_dye, d_dxe, d_dxe, d_dout, d_xe, d_h, d_a,
                                        d_ye, &rb, d_w1, d_w2, d_b2, d_dw1, d_db1, d_dw2, d_db2, N, cap, acc);
    moe_router_backward<E, K>(&g_k, d_dlogits, d_dgate, &rb, d_target, d_sums, N, normalize, w_bal, w_z, w_ds, w_imp);
    CUDA_CHECK(cudaStreamSynchronize(g_k.stream));

    /* ---- the CPU, in model.c's order ---- */
    fvec probs((size_t)N * E), lse(N), topp((size_t)N * K), gate((size_t)N * K), out((size_t)N * D);
    ivec topk((size_t)N * K), slot((size_t)N * K), count(E);
    fvec dx = dx0, dgate((size_t)N * K), dw1(w1.size()), db1 = db1_0, dw2(w2.size()), db2 = db2_0;
    fvec dlogits((size_t)N * E);
    std::vector<int64_t> load(E), ds_expert((size_t)ND * E);
    ref_moe_io io;
    memset(&io, 0, sizeof io);
    io.N = N;
    io.D = D;
    io.H = H;
    io.E = E;
    io.K = K;
    io.T = T;
    io.ND = ND;
    io.cap = cap;
    io.normalize = normalize;
    io.batch_priority = batch_priority;
    io.expert_choice = EC;
    io.act = ACT;
    io.acc = acc;
    io.w_bal = w_bal;
    io.w_z = w_z;
    io.w_ds = w_ds;
    io.w_imp = w_imp;
    io.x = x.data();
    io.logits = logits.data();
    io.w1 = w1.data();
    io.b1 = b1.data();
    io.w2 = w2.data();
    io.b2 = b2.data();
    io.dout = dout.data();
    io.target = target.data();
    io.dataset = dataset.data();
    io.probs = probs.data();
    io.lse = lse.data();
    io.topp = topp.data();
    io.gate = gate.data();
    io.topk = topk.data();
    io.slot = slot.data();
    io.count = count.data();
    io.out = out.data();
    io.dx = dx.data();
    io.dgate = dgate.data();
    io.dw1 = dw1.data();
    io.db1 = db1.data();
    io.dw2 = dw2.data();
    io.db2 = db2.data();
    io.dlogits = dlogits.data();
    io.load = load.data();
    io.ds_expert = ds_expert.data();
    if (ref_moe_layer(&io) != 0) {
        report(false, "moe", c + " (the CPU reference ran out of memory)", NAN, 0.0);
        dfree_all();
        return;
    }
    printf("# moe %s: %lld of %lld choices dropped\n", c.c_str(), (long long)io.dropped, (long long)io.assigned);

    /* ---- routing (exact where discrete) ---- */
    check("moe_route", "probs, " + c, down(rb.probs, probs.size()), probs, TOL32);
    check("moe_route", "lse, " + c, down(rb.lse, lse.size()), lse, TOL32);
    const ivec g_topk = down(rb.topk, topk.size()), g_slot = down(rb.slot, slot.size()), g_count = down(rb.count, E);
    check_exact("moe_route", "topk, " + c, g_topk.data(), topk.data(), topk.size());
    check("moe_route", "topp, " + c, down(rb.topp, topp.size()), topp, TOL32);
    check("moe_route", "gate, " + c, down(rb.gate, gate.size()), gate, TOL32);
    check_exact("moe_route", "slot, " + c, g_slot.data(), slot.data(), slot.size());
    check_exact("moe_route", "count, " + c, g_count.data(), count.data(), count.size());
    const ivec g_target = down(d_target, N);
    check_exact("moe_target", "target, " + c, g_target.data(), target.data(), target.size());

    /* ---- the layer's output ---- */
    check("moe_experts_forward", "out, " + c, down(d_out, out.size()), out, tolb);
    {
        fvec want = down(d_out, out.size());
        for (size_t i = 0; i < want.size(); i++)
            want[i] += res[i];
        check("moe_experts_forward", "out + res, the sum's bits plus res, " + c, down(d_outr, want.size()), want, 0.0);
    }

    /* ---- auxiliary losses and statistics ---- */
    const fvec g_aux = down(d_aux, 4);
    const char *aux_name[4] = { "balance", "z", "dataset", "importance" };
    for (int i = 0; i < 4; i++)
        check_scalar("moe_aux_losses", fmt("aux[%d] %s, ", i, aux_name[i]) + c, g_aux[i], io.aux[i], TOL32);
    const float wsum = w_bal * io.aux[0] + w_z * io.aux[1] + w_ds * io.aux[2] + w_imp * io.aux[3];
    check_scalar("moe_aux_losses", "weighted loss, " + c, down(d_loss, 1)[0], (double)wsum, TOL32);
    check_scalar("moe_aux_losses", "entropy sum, " + c, down(d_entropy, 1)[0], io.entropy, TOL32);
    const std::vector<unsigned long long> st = down(d_st, nst);
    const long long totals[3] = { (long long)io.assigned, (long long)io.dropped, (long long)io.tokens };
    check_exact("moe_aux_losses", "stats load, " + c, st.data(), load.data(), (size_t)E);
    check_exact("moe_aux_losses", "stats ds_expert, " + c, st.data() + E, ds_expert.data(), (size_t)ND * E);
    check_exact("moe_aux_losses", "stats assigned/dropped/tokens, " + c, st.data() + E + ND * E, totals, 3);

    /* ---- the backward pass ---- */
    check("moe_experts_backward", "dx, " + c, down(d_dx, dx.size()), dx, tolb);
    check("moe_experts_backward", "dw1, " + c, down(d_dw1, dw1.size()), dw1, tolb);
    check("moe_experts_backward", "db1, " + c, down(d_db1, db1.size()), db1, tolb);
    check("moe_experts_backward", "dw2, " + c, down(d_dw2, dw2.size()), dw2, tolb);
    check("moe_experts_backward", "db2, " + c, down(d_db2, db2.size()), db2, tolb);
    if (!g_bf16) { /* the gates' and router's gradients: fp32 only (bf16's error there is not the products') */
        check("moe_experts_backward", "dgate, " + c, down(d_dgate, dgate.size()), dgate, TOL32);
        check("moe_router_backward", "dlogits, " + c, down(d_dlogits, dlogits.size()), dlogits, TOL32);
    }
    dfree_all();
}

/* the host's moe_capacity (kernels.cuh) against ops.h's over a grid of shapes */
static void test_capacity()
{
    ivec gpu, cpu;
    const int Ns[4] = { 1, 7, 300, 2048 }, Es[3] = { 3, 4, 8 }, Ks[2] = { 1, 2 };
    const double cfs[3] = { 1.0, 1.25, 2.0 };
    for (int N : Ns)
        for (int E : Es)
            for (int K : Ks)
                for (double cf : cfs)
                    for (int dropless = 0; dropless <= 1; dropless++) {
                        gpu.push_back(moe_capacity(N, E, K, cf, dropless));
                        cpu.push_back(ref_moe_capacity(N, E, K, cf, dropless));
                    }
    check_exact("moe_capacity", fmt("%zu shapes", gpu.size()), gpu.data(), cpu.data(), gpu.size());
}

/* ---- the optimizer --------------------------------------------------------------------------------------- */

static void test_optimizer()
{
    const int64_t n = 10003; /* AdamW: 2500 groups of 4, then 3 one by one */
    const float lr = 0.05f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f;
    note("optimizer");
    Rng r(seed_of("optimizer", 0));
    const fvec g = rnd(r, (size_t)n, -1, 1);
    std::vector<uint8_t> decay((size_t)n);
    for (auto &d : decay)
        d = (uint8_t)r.below(2);
    float *d_g = dup(g);
    uint8_t *d_decay = dup(decay);
    double *d_gn = dpoison<double>(1);
    grad_norm(&g_k, d_gn, d_g, n);
    const double gn = ref_grad_norm(g.data(), (size_t)n);
    check_scalar("grad_norm", fmt("|g| of %lld floats (vs a double sum)", (long long)n), down(d_gn, 1)[0], gn, 1e-10);
    printf("# |g| = %.6g\n", gn);
    {
        /* the 4-wide kernel's unrolled loop (n / 4 above the grid's
         * 65,536 threads), and the scalar kernel where g is not 16-byte
         * aligned (from its second float) */
        const int64_t nb = 1234567;
        const fvec gb = rnd(r, (size_t)nb, -1, 1);
        float *d_gb = dup(gb);
        double *d_n = dpoison<double>(2);
        grad_norm(&g_k, d_n, d_gb, nb);
        grad_norm(&g_k, d_n + 1, d_gb + 1, nb - 1);
        const std::vector<double> got = down(d_n, 2);
        check_scalar("grad_norm", fmt("|g| of %lld floats, 4 a load", (long long)nb), got[0],
                     ref_grad_norm(gb.data(), (size_t)nb), 1e-10);
        check_scalar("grad_norm", fmt("|g| of %lld floats not 16-byte aligned", (long long)nb - 1), got[1],
                     ref_grad_norm(gb.data() + 1, (size_t)nb - 1), 1e-10);
    }
    {
        /* the pieces of a sharded arena: two runs and the rest, which add
         * up to the whole; sqrt_sum_kernel joins two sums */
        const std::vector<int64_t> runs = { 100, 2600, 7001, 9000 }, rest = { 0, 100, 2600, 7001, 9000, n };
        int64_t *d_runs = dup(runs), *d_rest = dup(rest);
        double *d_sums = dpoison<double>(3);
        sumsq_runs(&g_k, d_sums, d_g, d_runs, 2);
        sumsq_runs(&g_k, d_sums + 1, d_g, d_rest, 3);
        sqrt_sum_kernel<<<1, 32, 0, g_k.stream>>>(d_sums + 2, d_sums, d_sums + 1);
        LAUNCH_CHECK();
        const std::vector<double> sums = down(d_sums, 3);
        double ref = 0.0;
        for (int q = 0; q < 2; q++)
            for (int64_t i = runs[2 * q]; i < runs[2 * q + 1]; i++)
                ref += (double)g[(size_t)i] * g[(size_t)i];
        check_scalar("sumsq_runs", "two runs of the floats (vs a double sum)", sums[0], ref, 1e-10);
        check_scalar("sqrt_sum_kernel", "the runs and the rest: |g|", sums[2], gn, 1e-10);
    }

    const float clips[3] = { 0.0f, 10.0f, 1e4f }; /* off, clipping (|g| ~ 58), not reached */
    for (float clip : clips) {
        const int t = 3;
        const std::vector<step_scalars> sc = { { lr, t, 7, 1.0f } };
        fvec p = rnd(r, (size_t)n, -1, 1), m = rnd(r, (size_t)n, -0.1f, 0.1f), v = rnd(r, (size_t)n, 0.0f, 0.01f);
        float *d_p = dup(p), *d_m = dup(m), *d_v = dup(v);
        step_scalars *d_sc = dup(sc);
        /* the weights' bf16 copy (bf16 precision) with clipping, none without */
        __nv_bfloat16 *d_p16 = clip > 0.0f ? dpoison<__nv_bfloat16>((size_t)n) : nullptr;
        adamw(&g_k, d_p, d_p16, d_g, d_m, d_v, d_decay, n, d_sc, d_gn, clip, b1, b2, eps, wd);
        if (ref_adamw_masked(p.data(), g.data(), m.data(), v.data(), decay.data(), (size_t)n, lr, b1, b2, eps, wd, t,
                             clip, gn) != 0) {
            report(false, "adamw_kernel", "(the CPU reference ran out of memory)", NAN, 0.0);
            continue;
        }
        const std::string c = fmt("clip=%g, t=%d", clip, t);
        check("adamw", "p, " + c, down(d_p, p.size()), p, TOL32);
        check("adamw", "m, " + c, down(d_m, m.size()), m, TOL32);
        check("adamw", "v, " + c, down(d_v, v.size()), v, TOL32);
        if (d_p16)
            check_copy16("adamw", "p16 (the new p rounded), " + c, d_p16, d_p, (size_t)n);
    }
    {
        /* without clipping, AdamW sums |g| itself (adamw_kernel<true>,
         * a partial sum a block, sumsq_final over them): the same weights,
         * moments and bf16 copy as the update alone, and |g| as a double
         * sum has it; on 10,003 floats (10 blocks, the last 3 floats one
         * by one), on 1,234,567 (1,206 partial sums: sumsq_final's
         * threads take two or more) and on the same from their second
         * float (not 16-byte aligned: every one one by one); then with
         * kctx.red too small for the partial sums (grad_norm first) */
        const int64_t nb = 1234567;
        const fvec gb = rnd(r, (size_t)nb, -1, 1);
        std::vector<uint8_t> decb((size_t)nb + 1);
        for (auto &d : decb)
            d = (uint8_t)r.below(2);
        float *d_gb = dup(gb);
        uint8_t *d_decb = dup(decb);
        const std::vector<step_scalars> sc = { { lr, 4, 7, 1.0f } };
        step_scalars *d_sc = dup(sc);
        kctx small = g_k;
        small.red_floats = 2;
        struct {
            int64_t n, off;
            const kctx *k;
            const char *what;
        } const cases[4] = { { n, 0, &g_k, "" }, { nb, 0, &g_k, "" }, { nb - 1, 1, &g_k, ", not 16-byte aligned" },
                             { nb, 0, &small, ", kctx.red too small" } };
        for (const auto &cs : cases) {
            const size_t sz = (size_t)cs.n + (size_t)cs.off;
            const float *d_gc = cs.n == n ? d_g : d_gb + cs.off;
            const uint8_t *d_dc = cs.n == n ? d_decay : d_decb + cs.off;
            const fvec p = rnd(r, sz, -1, 1), m = rnd(r, sz, -0.1f, 0.1f), v = rnd(r, sz, 0.0f, 0.01f);
            float *d_p[2] = { dup(p), dup(p) }, *d_m[2] = { dup(m), dup(m) }, *d_v[2] = { dup(v), dup(v) };
            __nv_bfloat16 *d_p16[2] = { dpoison<__nv_bfloat16>(sz), dpoison<__nv_bfloat16>(sz) };
            double *d_norm = dpoison<double>(1);
            for (int fused = 0; fused <= 1; fused++)
                adamw(cs.k, d_p[fused] + cs.off, d_p16[fused] + cs.off, d_gc, d_m[fused] + cs.off,
                      d_v[fused] + cs.off, d_dc, cs.n, d_sc, d_gn, 0.0f, b1, b2, eps, wd, fused ? d_norm : nullptr);
            const std::string c = fmt("%lld floats%s", (long long)cs.n, cs.what);
            check_scalar("adamw", "|g| summed by the update, " + c, down(d_norm, 1)[0],
                         ref_grad_norm(cs.n == n ? g.data() : gb.data() + cs.off, (size_t)cs.n), 1e-10);
            check("adamw", "p with |g| summed: the same bits, " + c, down(d_p[1], sz), down(d_p[0], sz), 0.0);
            check("adamw", "m with |g| summed: the same bits, " + c, down(d_m[1], sz), down(d_m[0], sz), 0.0);
            check("adamw", "v with |g| summed: the same bits, " + c, down(d_v[1], sz), down(d_v[0], sz), 0.0);
            check_copy16("adamw", "p16 with |g| summed (the new p rounded), " + c, d_p16[1] + cs.off,
                         d_p[1] + cs.off, (size_t)cs.n);
        }
    }
    struct {
        float mu;
        int nesterov, t;
        float clip;
    } const sgd[4] = { { 0.9f, 0, 1, 0.0f }, { 0.9f, 1, 2, 10.0f }, { 0.0f, 0, 5, 10.0f }, { 0.9f, 0, 3, 1e4f } };
    for (const auto &s : sgd) {
        const std::vector<step_scalars> sc = { { lr, s.t, 7, 1.0f } };
        fvec p = rnd(r, (size_t)n, -1, 1), buf = rnd(r, (size_t)n, -0.5f, 0.5f);
        float *d_p = dup(p), *d_buf = dup(buf);
        step_scalars *d_sc = dup(sc);
        __nv_bfloat16 *d_p16 = s.clip > 0.0f ? dpoison<__nv_bfloat16>((size_t)n) : nullptr;
        sgd_kernel<<<blocks_for(n, 256), 256, 0, g_k.stream>>>(d_p, d_p16, d_g, d_buf, d_decay, n, d_sc, d_gn, s.clip,
                                                               s.mu, s.nesterov, wd);
        LAUNCH_CHECK();
        if (ref_sgd_masked(p.data(), g.data(), buf.data(), decay.data(), (size_t)n, lr, s.mu, s.nesterov, wd, s.t,
                           s.clip, gn) != 0) {
            report(false, "sgd_kernel", "(the CPU reference ran out of memory)", NAN, 0.0);
            continue;
        }
        const std::string c = fmt("mu=%g, nesterov=%d, t=%d, clip=%g", s.mu, s.nesterov, s.t, s.clip);
        check("sgd_kernel", "p, " + c, down(d_p, p.size()), p, TOL32);
        check("sgd_kernel", "buf, " + c, down(d_buf, buf.size()), buf, TOL32);
        if (d_p16)
            check_copy16("sgd_kernel", "p16 (the new p rounded), " + c, d_p16, d_p, (size_t)n);
    }
    dfree_all();
}

/* ---- hierarchical models ------------------------------------------------------------------------------------ */

/* The convolution stem's im2col and its adjoint (channels-first input,
 * stride 2; channels-last, stride 1), the transposes, Swin's windows,
 * GCViT's global tokens and queries, the 2x2 merge: every layout against
 * ops.h, with acc both ways where there is one */
static void test_hier()
{
    note("hierarchical models: convolution im2col/col2im, transposes, windows, global queries, 2x2 merge");
    Rng r(seed_of("hier", 0));
    const int B = 3;
    /* C, H, W, K, S, pad, nhwc */
    const int convs[2][7] = { { 3, 14, 12, 3, 2, 1, 0 }, { 5, 8, 8, 3, 1, 1, 1 } };
    for (const auto &v : convs) {
        const int C = v[0], H = v[1], W = v[2], K = v[3], S = v[4], pad = v[5], nhwc = v[6];
        const int OH = (H + 2 * pad - K) / S + 1, OW = (W + 2 * pad - K) / S + 1;
        const size_t ncols = (size_t)B * OH * OW * C * K * K, nimg = (size_t)B * C * H * W;
        const std::string c = fmt("C=%d %dx%d K=%d S=%d nhwc=%d", C, H, W, K, S, nhwc);
        const fvec img = rnd(r, nimg, -1, 1);
        float *d_img = dup(img), *d_cols = dpoison<float>(ncols);
        conv_im2col(&g_k, d_cols, d_img, B, C, H, W, K, S, pad, nhwc);
        fvec cols(ncols);
        ref_conv_im2col(cols.data(), img.data(), B, C, H, W, K, S, pad, nhwc);
        check("conv_im2col", c, down(d_cols, ncols), cols, TOL32);
        const fvec dcols = rnd(r, ncols, -1, 1);
        float *d_dcols = dup(dcols);
        for (int acc = 0; acc <= 1; acc++) {
            fvec dimg = rnd(r, nimg, -1, 1);
            float *d_dimg = acc ? dup(dimg) : dpoison<float>(nimg);
            conv_col2im(&g_k, d_dimg, d_dcols, B, C, H, W, K, S, pad, nhwc, acc);
            ref_conv_col2im(dimg.data(), dcols.data(), B, C, H, W, K, S, pad, nhwc, acc);
            check("conv_col2im", fmt("%s, acc=%d", c.c_str(), acc), down(d_dimg, nimg), dimg, TOL32);
        }
    }
    /* [B, R, C] <-> [B, C, R]: one partial tile of 32 x 32, and 3 x 2 tiles
     * with partial ones at both edges */
    for (const auto &rc : { std::make_pair(37, 8), std::make_pair(70, 40) }) {
        const int R = rc.first, C = rc.second;
        const fvec inp = rnd(r, (size_t)B * R * C, -1, 1);
        float *d_inp = dup(inp);
        for (int acc = 0; acc <= 1; acc++) {
            fvec out = rnd(r, inp.size(), -1, 1);
            float *d_out = acc ? dup(out) : dpoison<float>(out.size());
            transpose_rc(&g_k, d_out, d_inp, B, R, C, acc);
            ref_transpose_rc(out.data(), inp.data(), B, R, C, acc);
            check("transpose_rc", fmt("R=%d, C=%d, acc=%d", R, C, acc), down(d_out, out.size()), out, TOL32);
        }
    }
    /* windows of a 14 x 21 grid (window 7: 2 x 3 windows), global queries;
     * rows of 12 (4 floats a thread) and of 7 (one) */
    for (const int D : { 12, 7 }) {
        const int GH = 14, GW = 21, WS = 7, T = GH * GW, WT = WS * WS, NW = (GH / WS) * (GW / WS);
        for (int to = 0; to <= 1; to++)
            for (int acc = 0; acc <= 1; acc++) {
                const fvec src = rnd(r, (size_t)B * T * D, -1, 1);
                fvec dst = rnd(r, src.size(), -1, 1);
                float *d_src = dup(src), *d_dst = acc ? dup(dst) : dpoison<float>(dst.size());
                window_permute(&g_k, d_dst, d_src, B, GH, GW, WS, D, to, acc);
                ref_window_permute(dst.data(), src.data(), B, GH, GW, WS, D, to, acc);
                check("window_permute", fmt("D=%d, to_windows=%d, acc=%d", D, to, acc), down(d_dst, dst.size()), dst,
                      TOL32);
            }
        const fvec grid = rnd(r, (size_t)B * T * D, -1, 1);
        float *d_grid = dup(grid), *d_pool = dpoison<float>((size_t)B * WT * D);
        grid_pool_forward(&g_k, d_pool, d_grid, B, GH, GW, WS, D);
        fvec pool((size_t)B * WT * D);
        ref_grid_pool_forward(pool.data(), grid.data(), B, GH, GW, WS, D);
        check("grid_pool_forward", fmt("out, D=%d", D), down(d_pool, pool.size()), pool, TOL32);
        const fvec dpool = rnd(r, pool.size(), -1, 1);
        float *d_dpool = dup(dpool);
        for (int acc = 0; acc <= 1; acc++) {
            fvec dgrid = rnd(r, grid.size(), -1, 1);
            float *d_dgrid = acc ? dup(dgrid) : dpoison<float>(dgrid.size());
            grid_pool_backward(&g_k, d_dgrid, d_dpool, B, GH, GW, WS, D, acc);
            ref_grid_pool_backward(dgrid.data(), dpool.data(), B, GH, GW, WS, D, acc);
            check("grid_pool_backward", fmt("D=%d, acc=%d", D, acc), down(d_dgrid, dgrid.size()), dgrid, TOL32);
        }
        const fvec q = rnd(r, (size_t)B * WT * D, -1, 1), kv = rnd(r, (size_t)B * T * 2 * D, -1, 1);
        const size_t nqkv = (size_t)B * NW * WT * 3 * D;
        float *d_q = dup(q), *d_kv = dup(kv), *d_qkv = dpoison<float>(nqkv);
        global_window_qkv(&g_k, d_qkv, d_q, d_kv, B, GH, GW, WS, D);
        fvec qkv(nqkv);
        ref_global_window_qkv(qkv.data(), q.data(), kv.data(), B, GH, GW, WS, D);
        check("global_window_qkv", fmt("qkv, D=%d", D), down(d_qkv, nqkv), qkv, TOL32);
        const fvec dqkv = rnd(r, nqkv, -1, 1);
        float *d_dqkv = dup(dqkv), *d_dq = dpoison<float>(q.size()), *d_dkv = dpoison<float>(kv.size());
        global_window_qkv_backward(&g_k, d_dq, d_dkv, d_dqkv, B, GH, GW, WS, D);
        fvec dq(q.size()), dkv(kv.size());
        ref_global_window_qkv_backward(dq.data(), dkv.data(), dqkv.data(), B, GH, GW, WS, D);
        check("global_window_qkv_backward", fmt("dq, D=%d", D), down(d_dq, dq.size()), dq, TOL32);
        check("global_window_qkv_backward", fmt("dkv, D=%d", D), down(d_dkv, dkv.size()), dkv, TOL32);
    }
    /* the 2x2 merge of a 6 x 10 grid */
    {
        const int GH = 6, GW = 10, D = 7;
        const size_t n = (size_t)B * GH * GW * D;
        const fvec inp = rnd(r, n, -1, 1);
        float *d_inp = dup(inp), *d_out = dpoison<float>(n);
        merge2x2_forward(&g_k, d_out, d_inp, B, GH, GW, D);
        fvec out(n);
        ref_merge2x2_forward(out.data(), inp.data(), B, GH, GW, D);
        check("merge2x2_forward", "out", down(d_out, n), out, TOL32);
        const fvec dout = rnd(r, n, -1, 1);
        float *d_dout = dup(dout);
        for (int acc = 0; acc <= 1; acc++) {
            fvec dinp = rnd(r, n, -1, 1);
            float *d_dinp = acc ? dup(dinp) : dpoison<float>(n);
            merge2x2_backward(&g_k, d_dinp, d_dout, B, GH, GW, D, acc);
            ref_merge2x2_backward(dinp.data(), dout.data(), B, GH, GW, D, acc);
            check("merge2x2_backward", fmt("acc=%d", acc), down(d_dinp, n), dinp, TOL32);
        }
    }
    dfree_all();
}

/* patch embedding of a convolution stem's output: the image's gradient
 * (one product, then col2im), in each precision */
static void test_patch_embed_input()
{
    const int B = 3, C = 8, IH = 12, IW = 16, P = 2, D = 24, T = (IH / P) * (IW / P), CPP = C * P * P;
    const double tol = tol_blas();
    note(fmt("patch_embed_input_backward [%s]", mode()));
    Rng r(seed_of("patch_embed_input", g_bf16));
    const fvec dout = rnd(r, (size_t)B * T * D, -1, 1), w = rnd(r, (size_t)D * CPP, -0.5f, 0.5f);
    float *d_dout = dup(dout), *d_w = dup(w), *d_dcols = dpoison<float>((size_t)B * T * CPP);
    for (int acc = 0; acc <= 1; acc++) {
        fvec dimg = rnd(r, (size_t)B * C * IH * IW, -1, 1), dcols((size_t)B * T * CPP);
        float *d_dimg = acc ? dup(dimg) : dpoison<float>(dimg.size());
        patch_embed_input_backward(&g_k, d_dimg, d_dcols, d_dout, d_w, B, C, IH, IW, P, D, acc);
        ref_patch_embed_input_backward(dimg.data(), dcols.data(), dout.data(), w.data(), B, C, IH, IW, P, D, acc);
        check("patch_embed_input_backward", fmt("dimg, acc=%d [%s]", acc, mode()), down(d_dimg, dimg.size()), dimg,
              tol);
    }
    dfree_all();
}

/* ---- main ---------------------------------------------------------------------------------------------------- */

int main(void)
{
    int ndev = 0;
    const cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess || ndev < 1) {
        printf("1..0 # SKIP no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        return 77;
    }
    CUDA_CHECK(cudaSetDevice(0));
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("# %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    g_k.gg = gg_device(&prop); /* the experts' grouped product (bf16 precision) */
    CUDA_CHECK(cudaStreamCreateWithFlags(&g_k.stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&g_k.blas));
    CUBLAS_CHECK(cublasSetStream(g_k.blas, g_k.stream));
    g_k.red_floats = (int64_t)4 << 20;
    CUDA_CHECK(cudaMalloc(&g_k.red, sizeof(float) * (size_t)g_k.red_floats));

    /* the kernels with products: fp32, tf32 (fp32 operands, TF32 tensor
     * cores), bf16 (operands rounded to bf16 into the cast scratch) */
    const int64_t cast_elems = (int64_t)16 << 20;
    __nv_bfloat16 *cast = nullptr;
    CUDA_CHECK(cudaMalloc(&cast, sizeof(__nv_bfloat16) * (size_t)cast_elems));
    g_k.cast_elems = cast_elems;
    /* bf16 mode: cuBLASLt for the products with a bias (lt_linear_bias) */
    cublasLtHandle_t lt = nullptr;
    CUBLAS_CHECK(cublasLtCreate(&lt));
    const size_t lt_ws_bytes = (size_t)32 << 20;
    void *lt_ws = nullptr;
    CUDA_CHECK(cudaMalloc(&lt_ws, lt_ws_bytes));
    for (int m = 0; m < 3; m++) {
        g_bf16 = m >= 1;
        g_k.lt = m == 2 ? lt : nullptr;
        g_k.lt_ws = lt_ws;
        g_k.lt_ws_bytes = lt_ws_bytes;
        g_mode = m == 0 ? "fp32" : m == 1 ? "tf32" : "bf16";
        g_k.compute = g_bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
        g_k.cast = m == 2 ? cast : nullptr;
        test_linear();
        test_patch_embed();
        test_patch_embed_input();
        /* variant, dropless, normalize, batch_priority, acc */
        test_moe<4, 2, ACT_GELU>(0, 0, 1, 1, 0);
        test_moe<4, 2, ACT_GELU>(1, 1, 1, 1, 0);
        test_moe<4, 2, ACT_GELU>(2, 0, 0, 0, 1);
        test_moe<4, 2, ACT_SILU>(3, 0, 1, 0, 0);
        if (!g_bf16) /* ReLU: a product rounded to tf32 or bf16 moves some h across 0, where the derivative
                      * jumps; measured on an H200, dx off by 6.8e-2 (tf32) and 1.6e-1 (bf16): fp32 only */
            test_moe<4, 2, ACT_RELU>(4, 0, 0, 1, 1);
        test_moe<4, 2, ACT_GELU>(5, 1, 0, 0, 1);
        test_moe<3, 1, ACT_GELU>(6, 0, 1, 1, 0);
        test_moe<4, 2, ACT_GELU, 42>(7, 0, 1, 1, 1);
        test_moe<4, 4, ACT_GELU, 48, true>(8, 0, 0, 0, 0); /* expert choice */
        test_moe<3, 3, ACT_GELU, 48, true>(9, 0, 0, 0, 1);
        test_moe<4, 2, ACT_GELU, 48, false, 30>(10, 0, 1, 1, 1); /* rows not a multiple of 4 wide */
        test_moe<20, 2, ACT_GELU>(11, 0, 1, 1, 0); /* more experts than router_thread_kernel takes */
        /* wider than moe_combine_bwd_sum takes: the combine's backward, then db2 by colsum_add */
        test_moe<4, 2, ACT_GELU, 48, false, 800>(12, 0, 1, 1, 1);
        /* widths in whole tiles of the grouped product (bf16 on Hopper):
         * columns of 128 and 192 a tile, then 256; row tiles partly live */
        test_moe<4, 2, ACT_GELU, 384, false, 128>(13, 0, 1, 1, 1);
        test_moe<3, 2, ACT_GELU, 512, false, 256>(14, 1, 0, 0, 0);
        if (g_k.cast && g_k.gg) {
            /* the same on 3 blocks, each taking several tiles in turn (a
             * model's shapes give each SM's block about 12): the stages'
             * phases and the epilogue's work carried into the next tile */
            g_k.gg_grid = 3;
            test_moe<4, 2, ACT_GELU, 384, false, 128>(13, 0, 1, 1, 1);
            test_moe<3, 2, ACT_GELU, 512, false, 256>(14, 1, 0, 0, 0);
            g_k.gg_grid = 0;
        }
        if (g_k.cast) {
            test_fp32_ctx();
            test_weight_copy();
        }
        if (m != 1) { /* fp32 and bf16: the narrow kernels (fp32_ctx); tf32's context is the same */
            test_narrow(4160, 256, 7, true);   /* config P's router: 65 tokens x 64 samples, width 256, 7 experts */
            test_narrow(1000, 384, 8, true);   /* config S's */
            test_narrow(20000, 1024, 7, true); /* two pieces of dout a chunk, 32-row blocks of two warp rounds */
            test_narrow(333, 100, 1, true);    /* rows of 25 float4, one output */
            test_narrow(517, 64, 13, true);    /* 16 accumulators */
            test_narrow(290, 132, 32, true);   /* 32 */
            test_narrow(200, 1600, 10, false); /* the weights past NARROW_SMEM: cuBLAS */
            test_narrow(150, 90, 7, false);    /* rows not a multiple of 4 wide: cuBLAS */
        }
        test_attention<65, 32, 4>(3);
        test_attention<16, 32, 4>(5);
        test_attention<65, 64, 6>(2); /* config S: heads of 64 */
        test_attention<49, 16, 4>(3);
        test_attention<50, 24, 2>(2); /* heads not a multiple of 16: the fp32 kernels in either mode */
        test_attention<128, 32, 2>(2); /* no padding rows; 8 warps of rows on bf16 fragments */
        /* the row tiles: directly on shapes that fit one block (partial tiles
         * of rows and of keys: 65 = 2 x 32 + 1), then through the entry
         * points on sequences that do not (GCViT's 14 x 14 windows, ViT's 197
         * tokens with heads of 64, rows of 16 and of 8 scores a block) */
        test_attention<65, 32, 4, true>(2);
        test_attention<16, 8, 2, true>(3);
        test_attention<196, 32, 2>(3);
        test_attention<197, 64, 1>(2);
        test_attention<300, 16, 2>(2);
        test_attention<1088, 4, 1>(1);
    }
    g_bf16 = false;
    g_mode = "fp32";
    g_k.compute = CUBLAS_COMPUTE_32F;
    g_k.cast = nullptr;
    g_k.lt = nullptr;
    CUDA_CHECK(cudaFree(cast));
    CUDA_CHECK(cudaFree(lt_ws));
    CUBLAS_CHECK(cublasLtDestroy(lt));

    for (const int N : { 160, 164, 157 }) {
        test_act<ACT_GELU>("gelu", N);
        test_act<ACT_RELU>("relu", N);
        test_act<ACT_SILU>("silu", N);
    }
    test_gelu_forms();
    test_elementwise();
    test_bf16_convert();
    test_tokens(48);
    test_tokens(30);
    test_hier();
    test_layernorm<96>();
    test_layernorm<256>();
    layernorm_setup<1024>(); /* 96 KiB of shared memory with dsum: more than a launch gets unasked */
    test_layernorm<1024>();
    test_l2norm();
    test_moe_aux_sums<7, 3>(66560); /* config P's layers */
    test_moe_aux_sums<8, 2>(1000);
    test_moe_aux_sums<300, 2>(20000);
    test_moe_load<3, 1>(1000);
    test_moe_load<8, 2>(4160);
    test_moe_load<4, 4>(500); /* every expert chosen: no thresholds */
    test_moe_load<20, 3>(3000);
    test_softmax_xent(37, 10, 10, 7, 1.0f);
    test_softmax_xent(21, 100, 100, 37, 1.0f);
    test_softmax_xent(37, 10, 10, 7, 0.37f);
    test_softmax_xent(21, 100, 100, 37, 0.81f);
    test_head(29);
    test_head(300);
    test_capacity();
    test_optimizer();

    CUDA_CHECK(cudaStreamSynchronize(g_k.stream));
    CUDA_CHECK(cudaFree(g_k.red));
    CUBLAS_CHECK(cublasDestroy(g_k.blas));
    CUDA_CHECK(cudaStreamDestroy(g_k.stream));
    printf("1..%d\n", g_pass + g_fail);
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
