/* test_gradcheck.c: finite-difference checks of every backward kernel of
 * templates/cpu/ops.h, the CPU reference of moecc's generated trainers.
 *
 * ops.h is compiled here in double precision (`float' is defined to
 * `double' around its #include), so central differences with a step of
 * 1e-6 are accurate to about 1e-9 and any real mistake in a gradient stands
 * out. Each op gets random inputs and parameters from a fixed-seed PRNG and
 * small shapes; its loss is L = sum_i r_i * out_i with random r, so the
 * analytic gradients come from the backward kernel called with dout = r,
 * as the generated model.c calls it (compiler/emit.c, gen_op). Every
 * element of every input and parameter is perturbed; the check is
 *
 *     max |analytic - numeric| <= 1e-6 + 1e-5 * max |numeric|
 *
 * per tensor. Then the `acc' convention: a backward called with acc = 0
 * overwrites its input gradient (a junk-filled buffer gives the same bits as
 * a zeroed one), with acc = 1 adds to it, and parameter gradients always
 * add. Scratch buffers the kernels are said to write before reading are
 * filled with NaN first.
 *
 * The MoE layer is checked as gen_op builds it (router linear, a fixed gate
 * noise tensor, router_softmax, moe_route, the experts, the weighted
 * auxiliary losses; backward: moe_experts_backward, moe_router_backward,
 * the router's linear_backward with acc = 1) for top-1 and top-2, gates
 * normalised or not, capacities that drop tokens, batch priority, dropless,
 * with and without a dataset target, and an idle expert. Inputs with a near
 * tie (in a token's top-k, or in the batch-priority order) are drawn again,
 * and every perturbed forward pass must route exactly as the unperturbed
 * one. The routing itself is compared with an independent implementation.
 *
 * Also: a whole ViT block with an MoE, mirroring gen_op's call sequence and
 * acc flags (patch embedding -> class token -> position embedding ->
 * [layer norm -> attention -> drop path] + residual -> [layer norm -> MoE ->
 * dropout] + residual -> mean pool -> linear head -> label-smoothed
 * cross-entropy + auxiliary losses), and adamw_update / sgd_update against
 * PyTorch's formulas written out by hand.
 *
 * The hierarchical models' kernels: the convolution stem chained as gen_op's
 * OP_CONV_STEM chains it (conv_im2col, linear, GELU per layer, transpose_rc
 * to channels first; its forward against the direct convolution) and
 * patch_embed_input_backward, by central differences; each data-movement
 * kernel (conv_im2col, transpose_rc, window_permute,
 * grid_pool, global_window_qkv, merge2x2) against an independent layout
 * where it has one and, with its backward, by the dot-product test
 * <P x, y> == <x, P^T y>, on non-square grids and window grids; and each
 * one's acc flag.
 *
 * The gradient checks run on one thread (with OpenMP, a parallel region
 * per kernel call would cost more than the kernels, and much more on a busy
 * machine); test_threads and test_threads_hier then require the kernels'
 * threaded results to be the single-threaded ones, bit for bit. The worst error of each op is
 * printed at the end. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <moert.h>

#include <stdbool.h>
/* the compiler's capacity (compiler/sema.c; declared in model.h, whose
 * ACT_ names are the compiler's own and clash with ops.h's) */
int mc_moe_capacity(int N, int E, int K, double cf, bool dropless);
#ifdef _OPENMP
#include <omp.h>
#endif

/* ops.h in double precision. Its #includes above are already done, so their
 * declarations keep their real types; none of moert's functions is called
 * from here (gate noise and dropout masks are built by the test). Its float
 * literals keep float precision: GELU's 0.70710678118654752f and
 * 0.39894228040143268f make its forward and its derivative disagree by
 * about 1e-8 relative here, far inside the tolerance. */
#define float double
#define expf exp
#define erff erf
#define sqrtf sqrt
#define powf pow
#define logf log
#define fabsf fabs
#ifndef _OPENMP /* built without OpenMP: ops.h's `omp' pragmas are ignored, on purpose */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#endif
#include "../../templates/cpu/ops.h"
#ifndef _OPENMP
#pragma GCC diagnostic pop
#endif
#undef float
#undef expf
#undef erff
#undef sqrtf
#undef powf
#undef logf
#undef fabsf

#define FD_EPS 1e-6
#define TOL_ABS 1e-6
#define TOL_REL 1e-5
/* a near tie: probabilities closer than this are drawn again */
#define TIE_MARGIN 1e-4
/* ReLU inputs closer to 0 than this are drawn again */
#define KINK_MARGIN 1e-4

/* ---- random numbers (splitmix64) ----------------------------------------------- */

static uint64_t rng_state;

static void rng_seed(uint64_t s)
{
    rng_state = s * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
}

static uint64_t rng_u64(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* uniform in [0, 1) */
static double urand(void)
{
    return (double)(rng_u64() >> 11) * 0x1.0p-53;
}

/* uniform in [-1, 1) */
static double srand1(void)
{
    return 2.0 * urand() - 1.0;
}

static double nrand(void)
{
    double u = urand(), v = urand();
    return sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v);
}

/* ---- vectors ------------------------------------------------------------------- */

static double *vnew(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof *p);
    assert_non_null(p);
    return p;
}

static double *vrand(size_t n, double scale)
{
    double *p = vnew(n);
    for (size_t i = 0; i < n; i++)
        p[i] = scale * srand1();
    return p;
}

static double *vdup(const double *a, size_t n)
{
    double *p = vnew(n);
    memcpy(p, a, n * sizeof *p);
    return p;
}

static void vfill(double *p, size_t n, double v)
{
    for (size_t i = 0; i < n; i++)
        p[i] = v;
}

static double dot(const double *a, const double *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static int *inew(size_t n)
{
    int *p = calloc(n ? n : 1, sizeof *p);
    assert_non_null(p);
    return p;
}

/* ---- the report of worst errors ----------------------------------------------- */

typedef struct report_row {
    char op[48];
    char tensor[24]; /* where the worst error was */
    size_t elements;
    double err, maxnum, ratio; /* ratio: err / tolerance */
} report_row;

static report_row report_rows[96];
static int n_report;

static void report(const char *op, const char *tensor, size_t n, double err, double maxnum)
{
    report_row *r = NULL;
    for (int i = 0; i < n_report; i++)
        if (strcmp(report_rows[i].op, op) == 0)
            r = &report_rows[i];
    if (!r) {
        assert_true(n_report < (int)(sizeof report_rows / sizeof report_rows[0]));
        r = &report_rows[n_report++];
        memset(r, 0, sizeof *r);
        snprintf(r->op, sizeof r->op, "%s", op);
    }
    r->elements += n;
    const double ratio = err / (TOL_ABS + TOL_REL * maxnum);
    if (maxnum > r->maxnum)
        r->maxnum = maxnum;
    if (err >= r->err) {
        r->err = err;
        snprintf(r->tensor, sizeof r->tensor, "%s", tensor);
    }
    if (ratio > r->ratio)
        r->ratio = ratio;
}

static int print_report(void **state)
{
    (void)state;
    printf("\n%-38s %8s %-10s %10s %10s %9s\n", "op", "elements", "worst in", "max err", "max|num|", "err/tol");
    for (int i = 0; i < n_report; i++) {
        const report_row *r = &report_rows[i];
        printf("%-38s %8zu %-10s %10.2e %10.2e %9.2e\n", r->op, r->elements, r->tensor, r->err, r->maxnum, r->ratio);
    }
    return 0;
}

/* ---- the finite-difference check ------------------------------------------------- */

typedef double (*loss_fn)(void *ctx);

/* Central differences of f over x[0, n) (every stride-th element) against
 * the analytic gradient g. */
static void fd_check_stride(const char *op, const char *tname, loss_fn f, void *ctx, double *x, const double *g,
                            size_t n, size_t stride)
{
    double maxerr = 0.0, maxnum = 0.0, worst_a = 0.0, worst_n = 0.0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i += stride) {
        const double x0 = x[i];
        x[i] = x0 + FD_EPS;
        const double lp = f(ctx);
        x[i] = x0 - FD_EPS;
        const double lm = f(ctx);
        x[i] = x0;
        const double num = (lp - lm) / (2.0 * FD_EPS);
        const double err = fabs(num - g[i]);
        if (fabs(num) > maxnum)
            maxnum = fabs(num);
        if (!(err <= maxerr)) { /* NaN too */
            maxerr = err;
            worst = i;
            worst_a = g[i];
            worst_n = num;
        }
    }
    report(op, tname, (n + stride - 1) / stride, maxerr, maxnum);
    const double tol = TOL_ABS + TOL_REL * maxnum;
    if (!(maxerr <= tol))
        fail_msg("%s: d%s[%zu]: analytic %.12g, numeric %.12g: error %.3g > tolerance %.3g", op, tname, worst,
                 worst_a, worst_n, maxerr, tol);
    if (!(maxnum > 1e-3))
        fail_msg("%s: d%s is (almost) zero everywhere (max %.3g): the check proves nothing", op, tname, maxnum);
}

static void fd_check(const char *op, const char *tname, loss_fn f, void *ctx, double *x, const double *g, size_t n)
{
    fd_check_stride(op, tname, f, ctx, x, g, n, 1);
}

/* got == ref, bit for bit (an overwriting backward ignores what was there) */
static void expect_same(const char *op, const char *what, const double *got, const double *ref, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(got[i] == ref[i]))
            fail_msg("%s: %s[%zu] is %.17g, expected %.17g (overwritten)", op, what, i, got[i], ref[i]);
}

/* got == junk + ref (an accumulating backward adds to what was there) */
static void expect_sum(const char *op, const char *what, const double *got, const double *junk, const double *ref,
                       size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const double want = junk[i] + ref[i];
        if (!(fabs(got[i] - want) <= 1e-12 * (1.0 + fabs(junk[i]) + fabs(ref[i]))))
            fail_msg("%s: %s[%zu] is %.17g, expected %.17g + %.17g (accumulated)", op, what, i, got[i], junk[i],
                     ref[i]);
    }
}

/* ---- a generic op check ------------------------------------------------------------ */

/* How a backward treats each gradient it writes. */
enum {
    G_INPUT, /* the input's gradient: overwritten with acc = 0, added to with acc = 1 */
    G_PARAM, /* a parameter's gradient: always added to */
    G_WHOLE  /* written whole whatever acc says */
};

/* grads[t] receives the gradient of tensor t */
typedef void (*bwd_fn)(void *ctx, double *const *grads, int acc);

#define MAX_T 12

typedef struct op_check {
    const char *name;
    loss_fn loss; /* the forward pass at the current inputs, and L */
    bwd_fn bwd;   /* called right after loss(ctx) at the unperturbed inputs */
    int has_acc;
    int nt;
    const char *tname[MAX_T];
    double *x[MAX_T];
    size_t n[MAX_T];
    int kind[MAX_T];
    size_t stride; /* 0 or 1: every element */
} op_check;

static void run_op_check(const op_check *c, void *ctx)
{
    double *g[MAX_T], *junk[MAX_T], *h[MAX_T];
    for (int t = 0; t < c->nt; t++)
        g[t] = vnew(c->n[t]);
    c->loss(ctx);
    c->bwd(ctx, g, 0);
    for (int t = 0; t < c->nt; t++)
        fd_check_stride(c->name, c->tname[t], c->loss, ctx, c->x[t], g[t], c->n[t], c->stride ? c->stride : 1);

    /* acc = 0 over junk, then acc = 1 over junk */
    for (int t = 0; t < c->nt; t++) {
        junk[t] = vrand(c->n[t], 3.0);
        h[t] = vdup(junk[t], c->n[t]);
    }
    c->loss(ctx);
    c->bwd(ctx, h, 0);
    for (int t = 0; t < c->nt; t++) {
        if (c->kind[t] == G_PARAM)
            expect_sum(c->name, c->tname[t], h[t], junk[t], g[t], c->n[t]);
        else
            expect_same(c->name, c->tname[t], h[t], g[t], c->n[t]);
        memcpy(h[t], junk[t], c->n[t] * sizeof(double));
    }
    if (c->has_acc) {
        c->loss(ctx);
        c->bwd(ctx, h, 1);
        for (int t = 0; t < c->nt; t++) {
            if (c->kind[t] == G_WHOLE)
                expect_same(c->name, c->tname[t], h[t], g[t], c->n[t]);
            else
                expect_sum(c->name, c->tname[t], h[t], junk[t], g[t], c->n[t]);
        }
    }
    for (int t = 0; t < c->nt; t++) {
        free(g[t]);
        free(junk[t]);
        free(h[t]);
    }
}

/* ---- linear ------------------------------------------------------------------------ */

typedef struct lin_ctx {
    int M, K, N;
    double *inp, *w, *b, *r, *out;
} lin_ctx;

static double lin_loss(void *vc)
{
    lin_ctx *c = vc;
    linear_forward(c->out, c->inp, c->w, c->b, c->M, c->K, c->N);
    return dot(c->r, c->out, (size_t)c->M * c->N);
}

static void lin_bwd(void *vc, double *const *g, int acc)
{
    lin_ctx *c = vc;
    linear_backward(g[0], g[1], c->b ? g[2] : NULL, c->r, c->inp, c->w, c->M, c->K, c->N, acc);
}

static void check_linear(const char *name, int M, int K, int N, int bias, size_t stride)
{
    lin_ctx c = { M, K, N, vrand((size_t)M * K, 1.0), vrand((size_t)N * K, 1.0),
                  bias ? vrand((size_t)N, 1.0) : NULL, vrand((size_t)M * N, 1.0), vnew((size_t)M * N) };
    op_check oc = { name, lin_loss, lin_bwd, 1, bias ? 3 : 2, { "inp", "w", "b" }, { c.inp, c.w, c.b },
                    { (size_t)M * K, (size_t)N * K, (size_t)N }, { G_INPUT, G_PARAM, G_PARAM }, stride };
    run_op_check(&oc, &c);

    /* dinp = NULL (patch embedding): the same weight gradients */
    double *dw = vnew((size_t)N * K), *db = vnew((size_t)N), *dw2 = vnew((size_t)N * K), *db2 = vnew((size_t)N),
           *dx = vnew((size_t)M * K);
    lin_loss(&c);
    linear_backward(dx, dw, bias ? db : NULL, c.r, c.inp, c.w, M, K, N, 0);
    linear_backward(NULL, dw2, bias ? db2 : NULL, c.r, c.inp, c.w, M, K, N, 0);
    expect_same(name, "w (dinp NULL)", dw2, dw, (size_t)N * K);
    expect_same(name, "b (dinp NULL)", db2, db, (size_t)N);
    free(dw), free(db), free(dw2), free(db2), free(dx);
    free(c.inp), free(c.w), free(c.b), free(c.r), free(c.out);
}

static void test_linear(void **state)
{
    (void)state;
    rng_seed(1);
    check_linear("linear", 10, 8, 12, 1, 1);
    check_linear("linear (no bias)", 10, 8, 24, 0, 1);
    /* above mm_*'s OpenMP threshold (M*N*K > 65536), rows not a multiple
     * of 8; every 5th element */
    check_linear("linear (threaded size)", 41, 40, 41, 1, 5);
}

/* ---- activations ---------------------------------------------------------------------- */

typedef struct act_ctx {
    size_t n;
    int act;
    double *x, *r, *out;
} act_ctx;

static double act_loss(void *vc)
{
    act_ctx *c = vc;
    act_forward(c->out, c->x, c->n, c->act);
    return dot(c->r, c->out, c->n);
}

static void act_bwd(void *vc, double *const *g, int acc)
{
    act_ctx *c = vc;
    act_backward(g[0], c->r, c->x, c->n, c->act, acc);
}

static void test_activations(void **state)
{
    (void)state;
    static const char *const names[] = { "act gelu", "act relu", "act silu" };
    static const int acts[] = { ACT_GELU, ACT_RELU, ACT_SILU };
    rng_seed(2);
    for (int a = 0; a < 3; a++) {
        act_ctx c = { 40, acts[a], vrand(40, 4.0), vrand(40, 1.0), vnew(40) };
        for (size_t i = 0; i < c.n; i++) /* away from ReLU's kink */
            if (fabs(c.x[i]) < 0.01)
                c.x[i] = 0.5;
        op_check oc = { names[a], act_loss, act_bwd, 1, 1, { "x" }, { c.x }, { c.n }, { G_INPUT }, 1 };
        run_op_check(&oc, &c);
        /* in place, as moe_experts_backward calls it */
        double *g = vnew(c.n), *ip = vdup(c.r, c.n);
        act_backward(g, c.r, c.x, c.n, c.act, 0);
        act_backward(ip, ip, c.x, c.n, c.act, 0);
        expect_same(names[a], "x (in place)", ip, g, c.n);
        free(g), free(ip);
        free(c.x), free(c.r), free(c.out);
    }
}

/* ---- residual add (add_forward, grad_pass) -------------------------------------------- */

typedef struct res_ctx {
    size_t n;
    double *skip, *in, *r, *out;
    int same; /* an empty branch: skip and input are the same value */
} res_ctx;

static double res_loss(void *vc)
{
    res_ctx *c = vc;
    add_forward(c->out, c->skip, c->same ? c->skip : c->in, c->n);
    return dot(c->r, c->out, c->n);
}

/* as gen_op's OP_RESIDUAL_END: the input's gradient with acc, the skip's
 * with acc_skip (here the same flag; both are the values' last use) */
static void res_bwd(void *vc, double *const *g, int acc)
{
    res_ctx *c = vc;
    if (c->same) {
        grad_pass(g[0], c->r, c->n, acc);
        grad_pass(g[0], c->r, c->n, 1);
        return;
    }
    grad_pass(g[1], c->r, c->n, acc);
    grad_pass(g[0], c->r, c->n, acc);
}

static void test_residual(void **state)
{
    (void)state;
    rng_seed(3);
    res_ctx c = { 40, vrand(40, 1.0), vrand(40, 1.0), vrand(40, 1.0), vnew(40), 0 };
    op_check oc = { "residual add", res_loss, res_bwd, 1, 2, { "skip", "in" }, { c.skip, c.in }, { 40, 40 },
                    { G_INPUT, G_INPUT }, 1 };
    run_op_check(&oc, &c);
    c.same = 1;
    op_check oc2 = { "residual add (empty branch)", res_loss, res_bwd, 1, 1, { "x" }, { c.skip }, { 40 },
                     { G_INPUT }, 1 };
    run_op_check(&oc2, &c);
    free(c.skip), free(c.in), free(c.r), free(c.out);
}

/* ---- patch embedding ---------------------------------------------------------------- */

typedef struct patch_ctx {
    int B, C, IH, IW, P, D, T;
    double *img, *w, *b, *cols, *r, *out;
} patch_ctx;

static double patch_loss(void *vc)
{
    patch_ctx *c = vc;
    patch_embed_forward(c->out, c->cols, c->img, c->w, c->b, c->B, c->C, c->IH, c->IW, c->P, c->D);
    return dot(c->r, c->out, (size_t)c->B * c->T * c->D);
}

static void patch_bwd(void *vc, double *const *g, int acc)
{
    patch_ctx *c = vc;
    (void)acc;
    patch_embed_backward(g[0], g[1], c->r, c->cols, c->B, c->C, c->IH, c->IW, c->P, c->D);
}

static void test_patch_embed(void **state)
{
    (void)state;
    rng_seed(4);
    patch_ctx c = { 2, 3, 4, 6, 2, 8, 6, NULL, NULL, NULL, NULL, NULL, NULL };
    const int CPP = c.C * c.P * c.P;
    c.img = vrand((size_t)c.B * c.C * c.IH * c.IW, 1.0);
    c.w = vrand((size_t)c.D * CPP, 1.0);
    c.b = vrand((size_t)c.D, 1.0);
    c.cols = vnew((size_t)c.B * c.T * CPP);
    c.r = vrand((size_t)c.B * c.T * c.D, 1.0);
    c.out = vnew((size_t)c.B * c.T * c.D);
    /* the forward is the stride-P convolution with weight [D, C, P, P] */
    patch_loss(&c);
    const int GW = c.IW / c.P;
    for (int b = 0; b < c.B; b++)
        for (int t = 0; t < c.T; t++)
            for (int d = 0; d < c.D; d++) {
                double s = c.b[d];
                for (int ch = 0; ch < c.C; ch++)
                    for (int i = 0; i < c.P; i++)
                        for (int j = 0; j < c.P; j++)
                            s += c.w[(((size_t)d * c.C + ch) * c.P + i) * c.P + j] *
                                 c.img[(((size_t)b * c.C + ch) * c.IH + (size_t)(t / GW) * c.P + i) * c.IW +
                                       (size_t)(t % GW) * c.P + j];
                assert_true(fabs(c.out[((size_t)b * c.T + t) * c.D + d] - s) < 1e-12);
            }
    op_check oc = { "patch_embed", patch_loss, patch_bwd, 0, 2, { "w", "b" }, { c.w, c.b },
                    { (size_t)c.D * CPP, (size_t)c.D }, { G_PARAM, G_PARAM }, 1 };
    run_op_check(&oc, &c);
    free(c.img), free(c.w), free(c.b), free(c.cols), free(c.r), free(c.out);
}

/* ---- class token, position embedding ------------------------------------------------ */

typedef struct tok_ctx {
    int B, T, D, learned;
    double *inp, *par, *r, *out;
} tok_ctx;

static double cls_loss(void *vc)
{
    tok_ctx *c = vc;
    cls_token_forward(c->out, c->inp, c->par, c->B, c->T, c->D);
    return dot(c->r, c->out, (size_t)c->B * (c->T + 1) * c->D);
}

static void cls_bwd(void *vc, double *const *g, int acc)
{
    tok_ctx *c = vc;
    cls_token_backward(g[0], g[1], c->r, c->B, c->T, c->D, acc);
}

static double pos_loss(void *vc)
{
    tok_ctx *c = vc;
    pos_embed_forward(c->out, c->inp, c->par, c->B, c->T, c->D);
    return dot(c->r, c->out, (size_t)c->B * c->T * c->D);
}

static void pos_bwd(void *vc, double *const *g, int acc)
{
    tok_ctx *c = vc;
    pos_embed_backward(g[0], c->learned ? g[1] : NULL, c->r, c->B, c->T, c->D, acc);
}

static void test_cls_pos(void **state)
{
    (void)state;
    rng_seed(5);
    const int B = 2, T = 4, D = 8;
    tok_ctx c = { B, T, D, 1, vrand((size_t)B * T * D, 1.0), vrand((size_t)D, 1.0),
                  vrand((size_t)B * (T + 1) * D, 1.0), vnew((size_t)B * (T + 1) * D) };
    op_check oc = { "cls_token", cls_loss, cls_bwd, 1, 2, { "inp", "cls" }, { c.inp, c.par },
                    { (size_t)B * T * D, (size_t)D }, { G_INPUT, G_PARAM }, 1 };
    run_op_check(&oc, &c);
    free(c.par);

    tok_ctx p = { B, T + 1, D, 1, vrand((size_t)B * (T + 1) * D, 1.0), vrand((size_t)(T + 1) * D, 1.0), c.r, c.out };
    op_check op = { "pos_embed (learned)", pos_loss, pos_bwd, 1, 2, { "inp", "pos" }, { p.inp, p.par },
                    { (size_t)B * (T + 1) * D, (size_t)(T + 1) * D }, { G_INPUT, G_PARAM }, 1 };
    run_op_check(&op, &p);
    p.learned = 0; /* a fixed table: dpos = NULL */
    op_check of = { "pos_embed (fixed)", pos_loss, pos_bwd, 1, 1, { "inp" }, { p.inp }, { (size_t)B * (T + 1) * D },
                    { G_INPUT }, 1 };
    run_op_check(&of, &p);
    free(c.inp), free(c.r), free(c.out), free(p.inp), free(p.par);
}

/* ---- layer norm --------------------------------------------------------------------- */

typedef struct ln_ctx {
    int N, D;
    double eps;
    double *inp, *w, *b, *r, *out, *mean, *rstd;
} ln_ctx;

static double ln_loss(void *vc)
{
    ln_ctx *c = vc;
    layernorm_forward(c->out, c->mean, c->rstd, c->inp, c->w, c->b, c->N, c->D, c->eps);
    return dot(c->r, c->out, (size_t)c->N * c->D);
}

static void ln_bwd(void *vc, double *const *g, int acc)
{
    ln_ctx *c = vc;
    layernorm_backward(g[0], g[1], g[2], c->r, c->inp, c->w, c->mean, c->rstd, c->N, c->D, acc);
}

static void test_layernorm(void **state)
{
    (void)state;
    rng_seed(6);
    const int N = 10, D = 8;
    ln_ctx c = { N, D, 1e-5, vrand((size_t)N * D, 2.0), vrand((size_t)D, 0.5), vrand((size_t)D, 0.5),
                 vrand((size_t)N * D, 1.0), vnew((size_t)N * D), vnew((size_t)N), vnew((size_t)N) };
    for (int i = 0; i < N * D; i++)
        c.inp[i] += 0.3 * (i % D); /* rows with a non-zero mean */
    for (int i = 0; i < D; i++)
        c.w[i] += 1.0;
    ln_loss(&c);
    for (int n = 0; n < N; n++) { /* the saved statistics */
        double m = 0.0, v = 0.0;
        for (int i = 0; i < D; i++)
            m += c.inp[n * D + i] / D;
        for (int i = 0; i < D; i++)
            v += (c.inp[n * D + i] - m) * (c.inp[n * D + i] - m) / D;
        assert_true(fabs(c.mean[n] - m) < 1e-12);
        assert_true(fabs(c.rstd[n] - 1.0 / sqrt(v + c.eps)) < 1e-9);
    }
    op_check oc = { "layernorm", ln_loss, ln_bwd, 1, 3, { "inp", "w", "b" }, { c.inp, c.w, c.b },
                    { (size_t)N * D, (size_t)D, (size_t)D }, { G_INPUT, G_PARAM, G_PARAM }, 1 };
    run_op_check(&oc, &c);
    free(c.inp), free(c.w), free(c.b), free(c.r), free(c.out), free(c.mean), free(c.rstd);
}

/* ---- attention -------------------------------------------------------------------------- */

typedef struct attn_ctx {
    int B, T, D, NH;
    double *qkv, *att, *datt, *r, *out;
} attn_ctx;

static double attn_loss(void *vc)
{
    attn_ctx *c = vc;
    attention_forward(c->out, c->att, c->qkv, c->B, c->T, c->D, c->NH);
    return dot(c->r, c->out, (size_t)c->B * c->T * c->D);
}

static void attn_bwd(void *vc, double *const *g, int acc)
{
    attn_ctx *c = vc;
    (void)acc;
    vfill(c->datt, (size_t)c->B * c->NH * c->T * c->T, NAN); /* scratch */
    attention_backward(g[0], c->datt, c->r, c->qkv, c->att, c->B, c->T, c->D, c->NH);
}

static void test_attention(void **state)
{
    (void)state;
    static const int heads[] = { 1, 2, 4 };
    static const char *const names[] = { "attention NH=1", "attention NH=2", "attention NH=4" };
    rng_seed(7);
    for (int hh = 0; hh < 3; hh++) {
        const int B = 2, T = 5, D = 8, NH = heads[hh];
        attn_ctx c = { B, T, D, NH, vrand((size_t)B * T * 3 * D, 1.5), vnew((size_t)B * NH * T * T),
                       vnew((size_t)B * NH * T * T), vrand((size_t)B * T * D, 1.0), vnew((size_t)B * T * D) };
        attn_loss(&c);
        for (int i = 0; i < B * NH * T; i++) { /* rows of weights sum to 1 */
            double s = 0.0;
            for (int j = 0; j < T; j++)
                s += c.att[(size_t)i * T + j];
            assert_true(fabs(s - 1.0) < 1e-12);
        }
        op_check oc = { names[hh], attn_loss, attn_bwd, 0, 1, { "qkv" }, { c.qkv }, { (size_t)B * T * 3 * D },
                        { G_WHOLE }, 1 };
        run_op_check(&oc, &c);
        free(c.qkv), free(c.att), free(c.datt), free(c.r), free(c.out);
    }
}

/* The attention op as gen_op emits it: qkv linear (bias or not), attention,
 * the output projection. */
typedef struct attop_ctx {
    int B, T, D, NH, qb;
    double *inp, *wqkv, *bqkv, *wp, *bp, *r;
    double *qkv, *att, *y, *out, *dy, *dqkv, *datt;
} attop_ctx;

static double attop_loss(void *vc)
{
    attop_ctx *c = vc;
    const int N = c->B * c->T, D = c->D;
    linear_forward(c->qkv, c->inp, c->wqkv, c->qb ? c->bqkv : NULL, N, D, 3 * D);
    attention_forward(c->y, c->att, c->qkv, c->B, c->T, D, c->NH);
    linear_forward(c->out, c->y, c->wp, c->bp, N, D, D);
    return dot(c->r, c->out, (size_t)N * D);
}

static void attop_bwd(void *vc, double *const *g, int acc)
{
    attop_ctx *c = vc;
    const int N = c->B * c->T, D = c->D;
    vfill(c->dy, (size_t)N * D, NAN);
    vfill(c->dqkv, (size_t)N * 3 * D, NAN);
    vfill(c->datt, (size_t)c->B * c->NH * c->T * c->T, NAN);
    const int ip = c->qb ? 3 : 2; /* the gradients: inp, w_qkv, [b_qkv,] w_proj, b_proj */
    linear_backward(c->dy, g[ip], g[ip + 1], c->r, c->y, c->wp, N, D, D, 0);
    attention_backward(c->dqkv, c->datt, c->dy, c->qkv, c->att, c->B, c->T, D, c->NH);
    linear_backward(g[0], g[1], c->qb ? g[2] : NULL, c->dqkv, c->inp, c->wqkv, N, D, 3 * D, acc);
}

static void test_attention_op(void **state)
{
    (void)state;
    rng_seed(8);
    for (int qb = 0; qb < 2; qb++) {
        const int B = 2, T = 5, D = 8, NH = 2, N = B * T;
        attop_ctx c = { B, T, D, NH, qb, vrand((size_t)N * D, 1.0), vrand((size_t)3 * D * D, 0.5),
                        vrand((size_t)3 * D, 0.3), vrand((size_t)D * D, 0.5), vrand((size_t)D, 0.3),
                        vrand((size_t)N * D, 1.0), vnew((size_t)N * 3 * D), vnew((size_t)B * NH * T * T),
                        vnew((size_t)N * D), vnew((size_t)N * D), vnew((size_t)N * D), vnew((size_t)N * 3 * D),
                        vnew((size_t)B * NH * T * T) };
        op_check oc = { qb ? "attention op (qkv bias)" : "attention op (no qkv bias)", attop_loss, attop_bwd, 1,
                        5, { "inp", "w_qkv", "b_qkv", "w_proj", "b_proj" }, { c.inp, c.wqkv, c.bqkv, c.wp, c.bp },
                        { (size_t)N * D, (size_t)3 * D * D, (size_t)3 * D, (size_t)D * D, (size_t)D },
                        { G_INPUT, G_PARAM, G_PARAM, G_PARAM, G_PARAM }, 1 };
        if (!qb) { /* no b_qkv: leave it out of the check */
            oc.x[2] = c.wp, oc.x[3] = c.bp, oc.n[2] = (size_t)D * D, oc.n[3] = (size_t)D;
            oc.tname[2] = "w_proj", oc.tname[3] = "b_proj", oc.nt = 4;
        }
        run_op_check(&oc, &c);
        free(c.inp), free(c.wqkv), free(c.bqkv), free(c.wp), free(c.bp), free(c.r), free(c.qkv), free(c.att);
        free(c.y), free(c.out), free(c.dy), free(c.dqkv), free(c.datt);
    }
}

/* ---- the MLP op (gen_op's OP_MLP) ----------------------------------------------------- */

typedef struct mlp_ctx {
    int N, D, H, act;
    double *inp, *w1, *b1, *w2, *b2, *r, *h, *a, *out, *da, *dh;
    double *mask; /* mlp(dropout = p): a fixed mask of 0 and 1 / (1 - p), or NULL */
} mlp_ctx;

static double mlp_loss(void *vc)
{
    mlp_ctx *c = vc;
    linear_forward(c->h, c->inp, c->w1, c->b1, c->N, c->D, c->H);
    act_forward(c->a, c->h, (size_t)c->N * c->H, c->act);
    if (c->mask) /* in place, as gen_op's OP_MLP */
        mask_forward(c->a, c->a, c->mask, (size_t)c->N * c->H);
    linear_forward(c->out, c->a, c->w2, c->b2, c->N, c->H, c->D);
    return dot(c->r, c->out, (size_t)c->N * c->D);
}

static void mlp_bwd(void *vc, double *const *g, int acc)
{
    mlp_ctx *c = vc;
    vfill(c->da, (size_t)c->N * c->H, NAN);
    vfill(c->dh, (size_t)c->N * c->H, NAN);
    linear_backward(c->da, g[3], g[4], c->r, c->a, c->w2, c->N, c->H, c->D, 0);
    if (c->mask)
        mask_backward(c->da, c->da, c->mask, (size_t)c->N * c->H, 0);
    act_backward(c->dh, c->da, c->h, (size_t)c->N * c->H, c->act, 0);
    linear_backward(g[0], g[1], g[2], c->dh, c->inp, c->w1, c->N, c->D, c->H, acc);
}

static void test_mlp_op(void **state)
{
    (void)state;
    static const char *const names[] = { "mlp op (gelu)", "mlp op (relu)", "mlp op (silu)", "mlp op (gelu, dropout)" };
    static const int acts[] = { ACT_GELU, ACT_RELU, ACT_SILU, ACT_GELU };
    for (int k = 0; k < 4; k++) {
        const int N = 10, D = 8, H = 12;
        mlp_ctx c = { 0 };
        int ok = 0;
        for (int attempt = 0; attempt < 100 && !ok; attempt++) {
            rng_seed(900 + (uint64_t)attempt);
            c = (mlp_ctx){ N, D, H, acts[k], vrand((size_t)N * D, 1.0), vrand((size_t)H * D, 0.5),
                           vrand((size_t)H, 0.3), vrand((size_t)D * H, 0.5), vrand((size_t)D, 0.3),
                           vrand((size_t)N * D, 1.0), vnew((size_t)N * H), vnew((size_t)N * H), vnew((size_t)N * D),
                           vnew((size_t)N * H), vnew((size_t)N * H), NULL };
            mlp_loss(&c);
            ok = 1;
            for (int i = 0; i < N * H; i++)
                if (fabs(c.h[i]) < KINK_MARGIN)
                    ok = 0;
            if (!ok) {
                free(c.inp), free(c.w1), free(c.b1), free(c.w2), free(c.b2), free(c.r);
                free(c.h), free(c.a), free(c.out), free(c.da), free(c.dh);
            }
        }
        assert_true(ok);
        if (k == 3) { /* p = 0.3: about a third of the activations dropped, the rest scaled */
            c.mask = vnew((size_t)N * H);
            int dropped = 0;
            for (int i = 0; i < N * H; i++) {
                c.mask[i] = urand() < 0.3 ? 0.0 : 1.0 / 0.7;
                dropped += c.mask[i] == 0.0;
            }
            assert_true(dropped > 0 && dropped < N * H);
        }
        op_check oc = { names[k], mlp_loss, mlp_bwd, 1, 5, { "inp", "w1", "b1", "w2", "b2" },
                        { c.inp, c.w1, c.b1, c.w2, c.b2 },
                        { (size_t)N * D, (size_t)H * D, (size_t)H, (size_t)D * H, (size_t)D },
                        { G_INPUT, G_PARAM, G_PARAM, G_PARAM, G_PARAM }, 1 };
        run_op_check(&oc, &c);
        free(c.mask);
        free(c.inp), free(c.w1), free(c.b1), free(c.w2), free(c.b2), free(c.r);
        free(c.h), free(c.a), free(c.out), free(c.da), free(c.dh);
    }
}

/* ---- pooling, dropout, drop path ------------------------------------------------------ */

typedef struct pool_ctx {
    int B, T, D, cls;
    double *inp, *r, *out;
} pool_ctx;

static double pool_loss(void *vc)
{
    pool_ctx *c = vc;
    pool_forward(c->out, c->inp, c->B, c->T, c->D, c->cls);
    return dot(c->r, c->out, (size_t)c->B * c->D);
}

static void pool_bwd(void *vc, double *const *g, int acc)
{
    pool_ctx *c = vc;
    pool_backward(g[0], c->r, c->B, c->T, c->D, c->cls, acc);
}

static void test_pool(void **state)
{
    (void)state;
    rng_seed(9);
    const int B = 2, T = 5, D = 8;
    for (int cls = 0; cls < 2; cls++) {
        pool_ctx c = { B, T, D, cls, vrand((size_t)B * T * D, 1.0), vrand((size_t)B * D, 1.0), vnew((size_t)B * D) };
        op_check oc = { cls ? "pool (cls)" : "pool (mean)", pool_loss, pool_bwd, 1, 1, { "inp" }, { c.inp },
                        { (size_t)B * T * D }, { G_INPUT }, 1 };
        /* dinp of the tokens after the first is exactly 0 with cls: the
         * max |numeric| check still passes on the first token */
        run_op_check(&oc, &c);
        free(c.inp), free(c.r), free(c.out);
    }
}

/* The load loss (moe_load_forward, moe_load_backward): its value against
 * the definition written out (each choice's threshold found by sorting the
 * other experts' noisy logits), its gradient by central differences in the
 * clean logits. The noise is drawn again until no two noisy logits of a
 * token are within 1e-3, so that no perturbation changes a choice. */
typedef struct load_ctx {
    int N, E, K;
    double std, w;
    double *clean, *noise, *noisy, *dens, *load;
    int *topk, *thr;
} load_ctx;

static double load_loss(void *vc)
{
    load_ctx *c = vc;
    for (int i = 0; i < c->N * c->E; i++)
        c->noisy[i] = c->clean[i] + c->noise[i];
    /* each token's K best noisy logits, best first: moe_route's choice
     * (the softmax keeps their order) */
    double val[64];
    for (int n = 0; n < c->N; n++)
        moe_topk_row(c->topk + n * c->K, val, c->noisy + n * c->E, c->E, c->K);
    return c->w * moe_load_forward(c->load, c->dens, c->thr, c->clean, c->noisy, c->topk, c->N, c->E, c->K, c->std);
}

static void load_bwd(void *vc, double *const *g, int acc)
{
    load_ctx *c = vc;
    (void)acc; /* it adds to the logits' gradient, as the router's backward wrote it */
    moe_load_backward(g[0], c->load, c->dens, c->thr, c->topk, c->N, c->E, c->K, c->w);
}

/* the CV^2 of the loads by the definition */
static double load_expected(const load_ctx *c)
{
    const int N = c->N, E = c->E, K = c->K;
    double load[64] = { 0 }, mu = 0.0, var = 0.0;
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++) {
            /* the other experts' noisy logits, sorted down: the K-th is the threshold */
            double o[64];
            int m = 0;
            for (int j = 0; j < E; j++)
                if (j != e)
                    o[m++] = c->noisy[n * E + j];
            for (int a = 0; a < m; a++)
                for (int b = a + 1; b < m; b++)
                    if (o[b] > o[a]) {
                        const double t = o[a];
                        o[a] = o[b], o[b] = t;
                    }
            load[e] += K > m ? 1.0 : 0.5 * erfc(-(c->clean[n * E + e] - o[K - 1]) / (c->std * sqrt(2.0)));
        }
    for (int e = 0; e < E; e++)
        mu += load[e] / E;
    for (int e = 0; e < E; e++)
        var += (load[e] - mu) * (load[e] - mu) / E;
    return var / (mu * mu);
}

static void test_moe_load(void **state)
{
    (void)state;
    static const int shapes[][2] = { { 5, 1 }, { 5, 2 }, { 4, 3 }, { 3, 3 } }; /* E, K */
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = 12, E = shapes[s][0], K = shapes[s][1];
        load_ctx c = { N, E, K, 0.25, 0.7, vnew((size_t)N * E), vnew((size_t)N * E), vnew((size_t)N * E),
                       vnew((size_t)N * E), vnew((size_t)E), inew((size_t)N * K), inew((size_t)N * 2) };
        for (int attempt = 0;; attempt++) {
            assert_true(attempt < 500);
            rng_seed(700 + s * 1000 + (uint64_t)attempt);
            for (int i = 0; i < N * E; i++) {
                c.clean[i] = 0.5 * srand1();
                c.noise[i] = c.std * nrand();
            }
            int close = 0;
            for (int n = 0; n < N; n++)
                for (int a = 0; a < E; a++)
                    for (int b = a + 1; b < E; b++)
                        close |= fabs(c.clean[n * E + a] + c.noise[n * E + a] - c.clean[n * E + b] -
                                      c.noise[n * E + b]) < 1e-3;
            if (!close)
                break;
        }
        const double L = load_loss(&c);
        assert_true(fabs(L - c.w * load_expected(&c)) < 1e-12 * (1.0 + L));
        if (K == E) { /* every expert always chosen: no load to balance, no gradient */
            assert_true(L == 0.0);
            double *g = vnew((size_t)N * E);
            load_bwd(&c, &g, 0);
            for (int i = 0; i < N * E; i++)
                assert_true(g[i] == 0.0);
            free(g);
        } else {
            assert_true(L > 0.0);
            char name[48];
            snprintf(name, sizeof name, "moe load loss E%d K%d", E, K);
            op_check oc = { name, load_loss, load_bwd, 0, 1, { "clean logits" }, { c.clean }, { (size_t)N * E },
                            { G_PARAM }, 1 };
            run_op_check(&oc, &c);
        }
        free(c.clean), free(c.noise), free(c.noisy), free(c.dens), free(c.load), free(c.topk), free(c.thr);
    }
}

/* the cosine router's row normalisation: out = in / |in| */
typedef struct l2_ctx {
    int rows, C;
    double *inp, *r, *out, *norm;
} l2_ctx;

static double l2_loss(void *vc)
{
    l2_ctx *c = vc;
    l2norm_forward(c->out, c->norm, c->inp, c->rows, c->C);
    return dot(c->r, c->out, (size_t)c->rows * c->C);
}

static void l2_bwd(void *vc, double *const *g, int acc)
{
    l2_ctx *c = vc;
    l2norm_backward(g[0], c->r, c->out, c->norm, c->rows, c->C, acc);
}

static void test_l2norm(void **state)
{
    (void)state;
    rng_seed(17);
    const int rows = 6, C = 5;
    l2_ctx c = { rows, C, vrand((size_t)rows * C, 1.0), vrand((size_t)rows * C, 1.0), vnew((size_t)rows * C),
                 vnew((size_t)rows) };
    op_check oc = { "l2norm", l2_loss, l2_bwd, 1, 1, { "inp" }, { c.inp }, { (size_t)rows * C }, { G_INPUT }, 1 };
    run_op_check(&oc, &c);
    for (int r = 0; r < rows; r++) {
        double n = 0.0;
        for (int k = 0; k < C; k++)
            n += c.out[r * C + k] * c.out[r * C + k];
        assert_true(fabs(n - 1.0) < 1e-12);
    }
    free(c.inp), free(c.r), free(c.out), free(c.norm);
}

typedef struct mask_ctx {
    int B;
    size_t n, R;
    double *inp, *mask, *r, *out;
} mask_ctx;

static double mask_loss(void *vc)
{
    mask_ctx *c = vc;
    if (c->R)
        rowmask_forward(c->out, c->inp, c->mask, c->B, c->R);
    else
        mask_forward(c->out, c->inp, c->mask, c->n);
    return dot(c->r, c->out, c->n);
}

static void mask_bwd(void *vc, double *const *g, int acc)
{
    mask_ctx *c = vc;
    if (c->R)
        rowmask_backward(g[0], c->r, c->mask, c->B, c->R, acc);
    else
        mask_backward(g[0], c->r, c->mask, c->n, acc);
}

static void test_dropout(void **state)
{
    (void)state;
    rng_seed(10);
    const double p = 0.3;
    /* the masks dropout_mask makes: 0 with probability p, else 1 / (1 - p) */
    mask_ctx c = { 0, 40, 0, vrand(40, 1.0), vnew(40), vrand(40, 1.0), vnew(40) };
    for (int i = 0; i < 40; i++)
        c.mask[i] = (i % 3 == 1) ? 0.0 : 1.0 / (1.0 - p);
    op_check oc = { "dropout mask", mask_loss, mask_bwd, 1, 1, { "inp" }, { c.inp }, { 40 }, { G_INPUT }, 1 };
    run_op_check(&oc, &c);
    free(c.inp), free(c.mask), free(c.r), free(c.out);

    mask_ctx d = { 3, 30, 10, vrand(30, 1.0), vnew(3), vrand(30, 1.0), vnew(30) };
    d.mask[0] = 1.0 / (1.0 - p), d.mask[1] = 0.0, d.mask[2] = 1.0 / (1.0 - p);
    op_check od = { "drop path", mask_loss, mask_bwd, 1, 1, { "inp" }, { d.inp }, { 30 }, { G_INPUT }, 1 };
    run_op_check(&od, &d);
    free(d.inp), free(d.mask), free(d.r), free(d.out);
}

/* ---- softmax cross-entropy with label smoothing ------------------------------------- */

typedef struct xent_ctx {
    int B, C;
    double eps;
    const int *label;
    double *logits, *dl;
} xent_ctx;

/* the mean over the batch, as train.c's loss_and_grad */
static double xent_loss(void *vc)
{
    xent_ctx *c = vc;
    double s = 0.0;
    for (int b = 0; b < c->B; b++)
        s += softmax_xent(NULL, c->logits + (size_t)b * c->C, c->C, c->label[b], c->eps, 1.0 / c->B);
    return s / c->B;
}

static void xent_bwd(void *vc, double *const *g, int acc)
{
    xent_ctx *c = vc;
    (void)acc;
    for (int b = 0; b < c->B; b++)
        softmax_xent(g[0] + (size_t)b * c->C, c->logits + (size_t)b * c->C, c->C, c->label[b], c->eps, 1.0 / c->B);
}

static void test_softmax_xent(void **state)
{
    (void)state;
    rng_seed(11);
    static const int label[3] = { 2, 0, 6 };
    const int B = 3, C = 7;
    for (int k = 0; k < 2; k++) {
        const double eps = k ? 0.1 : 0.0;
        xent_ctx c = { B, C, eps, label, vrand((size_t)B * C, 3.0), NULL };
        for (int i = 0; i < C; i++) /* a row of large logits */
            c.logits[2 * C + i] += 60.0;
        /* the loss is PyTorch's: (1 - eps) * -log p[y] + eps * mean_c -log p[c] */
        for (int b = 0; b < B; b++) {
            const double *l = c.logits + (size_t)b * C;
            double mx = l[0], s = 0.0, mean_nlp = 0.0;
            for (int i = 1; i < C; i++)
                mx = l[i] > mx ? l[i] : mx;
            for (int i = 0; i < C; i++)
                s += exp(l[i] - mx);
            const double lse = mx + log(s);
            for (int i = 0; i < C; i++)
                mean_nlp += (lse - l[i]) / C;
            const double want = (1.0 - eps) * (lse - l[label[b]]) + eps * mean_nlp;
            double *dl = vnew((size_t)C);
            const double got = softmax_xent(dl, l, C, label[b], eps, 1.0);
            assert_true(fabs(got - want) < 1e-12 * (1.0 + fabs(want)));
            assert_true(softmax_xent(NULL, l, C, label[b], eps, 1.0) == got);
            free(dl);
        }
        op_check oc = { k ? "softmax_xent (smoothing 0.1)" : "softmax_xent", xent_loss, xent_bwd, 0, 1,
                        { "logits" }, { c.logits }, { (size_t)B * C }, { G_WHOLE }, 1 };
        run_op_check(&oc, &c);
        free(c.logits);
    }
}

/* ---- mixture of experts ---------------------------------------------------------------- */

/* The routing as ops.h documents it, written independently: top-k by
 * descending probability (ties: the lower expert); gates normalised over
 * the k when asked (k > 1); tokens claim slots choice by choice, within a
 * choice in token order or, with batch priority, by descending top-1
 * probability (ties: token order). */
static void ref_route(const double *probs, int N, int E, int K, int cap, int normalize, int bp, int *topk,
                      double *gate, int *slot, int *count, int *token, int *order)
{
    for (int n = 0; n < N; n++) {
        const double *p = probs + (size_t)n * E;
        int idx[64];
        for (int e = 0; e < E; e++) { /* insertion sort: descending p, ascending index */
            int j = e;
            while (j > 0 && p[idx[j - 1]] < p[e])
                idx[j] = idx[j - 1], j--;
            idx[j] = e;
        }
        double s = 0.0;
        for (int k = 0; k < K; k++)
            s += p[idx[k]];
        for (int k = 0; k < K; k++) {
            topk[n * K + k] = idx[k];
            gate[n * K + k] = normalize && K > 1 ? p[idx[k]] / s : p[idx[k]];
        }
    }
    for (int i = 0; i < N; i++) {
        int j = i;
        if (bp)
            while (j > 0 && probs[(size_t)order[j - 1] * E + topk[order[j - 1] * K]] < probs[(size_t)i * E + topk[i * K]])
                order[j] = order[j - 1], j--;
        order[j] = i;
    }
    for (int e = 0; e < E; e++)
        count[e] = 0;
    for (int k = 0; k < K; k++)
        for (int i = 0; i < N; i++) {
            const int n = order[i], e = topk[n * K + k];
            if (count[e] < cap) {
                slot[n * K + k] = count[e];
                token[e * cap + count[e]] = n;
                count[e]++;
            } else {
                slot[n * K + k] = -1;
            }
        }
}

/* moe_route's result is ref_route's */
static void expect_route(const moe_routing *r, const double *probs, int N, int E, int K, int cap, int normalize,
                         int bp)
{
    int *topk = inew((size_t)N * K), *slot = inew((size_t)N * K), *count = inew((size_t)E),
        *token = inew((size_t)E * cap), *order = inew((size_t)N);
    double *gate = vnew((size_t)N * K);
    ref_route(probs, N, E, K, cap, normalize, bp, topk, gate, slot, count, token, order);
    for (int i = 0; i < N; i++)
        if (r->order[i] != order[i])
            fail_msg("moe_route: order[%d] = %d, expected %d", i, r->order[i], order[i]);
    for (int i = 0; i < N * K; i++) {
        if (r->topk[i] != topk[i] || r->slot[i] != slot[i])
            fail_msg("moe_route: token %d choice %d: expert %d slot %d, expected expert %d slot %d", i / K, i % K,
                     r->topk[i], r->slot[i], topk[i], slot[i]);
        assert_true(fabs(r->gate[i] - gate[i]) <= 1e-15);
        assert_true(r->topp[i] == probs[(size_t)(i / K) * E + topk[i]]);
    }
    /* the experts' rows, packed expert after expert */
    for (int e = 0, rows = 0; e < E; rows += count[e], e++) {
        assert_int_equal(r->count[e], count[e]);
        assert_int_equal(r->offset[e], rows);
        for (int i = 0; i < count[e]; i++)
            assert_int_equal(r->token[rows + i], token[e * cap + i]);
    }
    free(topk), free(slot), free(count), free(token), free(order), free(gate);
}

/* No near tie that a perturbation of FD_EPS could flip: within each
 * token's top k (and the next expert), and, with batch priority, between
 * tokens' top-1 probabilities. */
static int route_margin_ok(const double *probs, int N, int E, int K, int bp)
{
    double top[256];
    for (int n = 0; n < N; n++) {
        const double *p = probs + (size_t)n * E;
        double s[64];
        for (int e = 0; e < E; e++) {
            int j = e;
            while (j > 0 && s[j - 1] < p[e])
                s[j] = s[j - 1], j--;
            s[j] = p[e];
        }
        for (int k = 0; k < K && k + 1 < E; k++)
            if (s[k] - s[k + 1] <= TIE_MARGIN)
                return 0;
        top[n] = s[0];
    }
    if (bp)
        for (int i = 0; i < N; i++)
            for (int j = i + 1; j < N; j++)
                if (fabs(top[i] - top[j]) <= TIE_MARGIN)
                    return 0;
    return 1;
}

typedef struct moe_cfg {
    const char *name;
    int K;
    double cf;
    int dropless, normalize, bp, target, act;
    double w_bal, w_z, w_ds;
    int idle;  /* expert E-1 gets a gate noise of -12: never chosen */
    int drops; /* 1: some choice must be dropped; 0: none may be; -1: either */
} moe_cfg;

typedef struct moe_ctx {
    int B, T, N, D, H, E, K, cap, normalize, bp, act;
    double w_bal, w_z, w_ds, w_imp;
    int *target; /* NULL or [N] */
    double *x, *wg, *w1, *b1, *w2, *b2, *noise, *r;
    double *logits, *probs, *lse, *topp, *gate, *prio, *xe, *h, *a, *ye, *out;
    int *topk, *slot, *count, *offset, *token, *order;
    moe_routing rt;
    double aux[4];
    int *topk0, *slot0, *order0, have_base;
    long route_changes;
    double *dgate, *dye, *dh, *dxe, *dlogits, *dprobs;
} moe_ctx;

static void moe_alloc(moe_ctx *c, int B, int T, int D, int H, int E, int K)
{
    const int N = B * T;
    memset(c, 0, sizeof *c);
    c->B = B, c->T = T, c->N = N, c->D = D, c->H = H, c->E = E, c->K = K;
    c->x = vnew((size_t)N * D), c->wg = vnew((size_t)E * D), c->w1 = vnew((size_t)E * H * D);
    c->b1 = vnew((size_t)E * H), c->w2 = vnew((size_t)E * D * H), c->b2 = vnew((size_t)E * D);
    c->noise = vnew((size_t)N * E), c->r = vnew((size_t)N * D);
    c->logits = vnew((size_t)N * E), c->probs = vnew((size_t)N * E), c->lse = vnew((size_t)N);
    c->topp = vnew((size_t)N * K), c->gate = vnew((size_t)N * K), c->prio = vnew((size_t)N);
    /* the experts' rows, packed: at most N * K (exactly that many here, so
     * that a sanitizer sees any row beyond) */
    const size_t R = (size_t)N * K;
    c->xe = vnew(R * D), c->h = vnew(R * H), c->a = vnew(R * H), c->ye = vnew(R * D), c->out = vnew((size_t)N * D);
    c->topk = inew(R), c->slot = inew(R), c->count = inew((size_t)E), c->offset = inew((size_t)E);
    c->token = inew(R), c->order = inew((size_t)2 * N);
    c->topk0 = inew((size_t)N * K), c->slot0 = inew((size_t)N * K), c->order0 = inew((size_t)N);
    c->target = inew((size_t)N);
    c->dgate = vnew(R), c->dye = vnew(R * D), c->dh = vnew(R * H), c->dxe = vnew(R * D);
    c->dlogits = vnew((size_t)N * E), c->dprobs = vnew((size_t)N * E);
    c->rt = (moe_routing){ c->topk, c->topp, c->gate, c->slot, c->count, c->offset, c->token, c->order, c->prio };
}

static void moe_free(moe_ctx *c)
{
    double *d[] = { c->x, c->wg, c->w1, c->b1, c->w2, c->b2, c->noise, c->r, c->logits, c->probs, c->lse,
                    c->topp, c->gate, c->prio, c->xe, c->h, c->a, c->ye, c->out, c->dgate, c->dye, c->dh,
                    c->dxe, c->dlogits, c->dprobs };
    int *ip[] = { c->topk, c->slot, c->count, c->offset, c->token, c->order, c->topk0, c->slot0, c->order0 };
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++)
        free(d[i]);
    for (size_t i = 0; i < sizeof ip / sizeof ip[0]; i++)
        free(ip[i]);
    free(c->target);
}

/* The router up to the routing: gen_op's forward until moe_route. */
static void moe_route_fwd(moe_ctx *c, const double *x)
{
    const int N = c->N, E = c->E;
    linear_forward(c->logits, x, c->wg, NULL, N, c->D, E);
    for (int i = 0; i < N * E; i++) /* the gate noise of a training step, fixed */
        c->logits[i] += c->noise[i];
    router_softmax(c->probs, c->lse, c->logits, N, E);
    moe_route(&c->rt, c->probs, N, E, c->K, c->cap, c->normalize, c->bp);
    if (c->have_base) {
        int same = 1;
        for (int i = 0; i < N * c->K; i++)
            same &= c->topk[i] == c->topk0[i] && c->slot[i] == c->slot0[i];
        for (int i = 0; i < N; i++)
            same &= c->order[i] == c->order0[i];
        if (!same)
            c->route_changes++;
    }
}

/* the MoE's output and the model loss: sum r * out plus the weighted
 * auxiliary losses, as model_aux_loss adds them */
static double moe_loss_at(moe_ctx *c, const double *x, double *out)
{
    moe_route_fwd(c, x);
    moe_experts_forward(out, c->xe, c->h, c->a, c->ye, x, &c->rt, c->w1, c->b1, c->w2, c->b2, c->N, c->D, c->H,
                        c->E, c->K, c->act);
    moe_aux_losses(c->aux, c->probs, c->lse, &c->rt, c->target, c->N, c->E, c->K);
    return c->w_bal * c->aux[0] + c->w_z * c->aux[1] + c->w_ds * c->aux[2] + c->w_imp * c->aux[3];
}

static double moe_loss(void *vc)
{
    moe_ctx *c = vc;
    const double aux = moe_loss_at(c, c->x, c->out);
    return dot(c->r, c->out, (size_t)c->N * c->D) + aux;
}

/* gen_op's backward of an MoE layer, dout = r: grads are x, wg, w1, b1,
 * w2, b2 and the gate noise (whose gradient is the logits'). */
static void moe_bwd_from(moe_ctx *c, const double *x, const double *dout, double *dx, double *dwg, double *dw1,
                         double *db1, double *dw2, double *db2, int acc)
{
    const int N = c->N, E = c->E;
    const size_t R = (size_t)N * c->K;
    vfill(c->dgate, R, NAN); /* scratch: written before read */
    vfill(c->dye, R * c->D, NAN);
    vfill(c->dh, R * c->H, NAN);
    vfill(c->dxe, R * c->D, NAN);
    vfill(c->dlogits, (size_t)N * E, NAN);
    vfill(c->dprobs, (size_t)N * E, NAN);
    moe_experts_backward(dx, c->dgate, c->dye, c->dh, c->dxe, dout, c->xe, c->h, c->a, c->ye, &c->rt, c->w1, c->w2,
                         dw1, db1, dw2, db2, N, c->D, c->H, E, c->K, c->act, acc);
    moe_router_backward(c->dlogits, c->dprobs, c->dgate, c->probs, c->lse, &c->rt, c->target, N, E, c->K,
                        c->normalize, c->w_bal, c->w_z, c->w_ds, c->w_imp);
    linear_backward(dx, dwg, NULL, c->dlogits, x, c->wg, N, c->D, E, 1);
}

static void moe_bwd(void *vc, double *const *g, int acc)
{
    moe_ctx *c = vc;
    moe_bwd_from(c, c->x, c->r, g[0], g[1], g[2], g[3], g[4], g[5], acc);
    memcpy(g[6], c->dlogits, (size_t)c->N * c->E * sizeof(double));
}

static const moe_cfg moe_cfgs[] = {
    /* name                                   K  cf    dl nrm bp tgt act        w_bal w_z   w_ds  idle drops */
    { "moe top1 cap1 drops",                  1, 0.5,  0, 0,  0, 0,  ACT_GELU, 0.5,  0.1,  0.0,  0,   1 },
    { "moe top1 cap1 drops bprio",            1, 0.5,  0, 0,  1, 0,  ACT_GELU, 0.5,  0.1,  0.0,  0,   1 },
    { "moe top1 cap3 bprio target",           1, 1.0,  0, 1,  1, 1,  ACT_SILU, 0.3,  0.05, 0.4,  0,   1 },
    { "moe top1 dropless target idle",        1, 1.0,  1, 0,  0, 1,  ACT_GELU, 0.5,  0.1,  0.3,  1,   0 },
    { "moe top2 norm cap4 drops",             2, 0.75, 0, 1,  0, 0,  ACT_GELU, 0.5,  0.1,  0.0,  0,   1 },
    { "moe top2 cap4 drops bprio",            2, 0.75, 0, 0,  1, 0,  ACT_GELU, 0.5,  0.1,  0.0,  0,   1 },
    { "moe top2 norm cap4 bprio target relu", 2, 0.75, 0, 1,  1, 1,  ACT_RELU, 0.2,  0.02, 0.5,  0,   1 },
    { "moe top2 norm dropless target silu",   2, 1.0,  1, 1,  0, 1,  ACT_SILU, 0.5,  0.1,  0.3,  0,   0 },
    { "moe top2 dropless no aux",             2, 1.0,  1, 0,  1, 0,  ACT_GELU, 0.0,  0.0,  0.0,  0,   0 },
    { "moe top2 norm cap6 idle target",       2, 1.25, 0, 1,  0, 1,  ACT_GELU, 0.5,  0.1,  0.3,  1,   -1 },
};

/* Draws the inputs of cfg again until the routing has no near tie, drops
 * as cfg says and, with ReLU, no hidden value sits at the kink. */
static void moe_setup(moe_ctx *c, const moe_cfg *cfg, uint64_t seed)
{
    const int B = 2, T = 5, D = 8, H = 12, E = 4;
    moe_alloc(c, B, T, D, H, E, cfg->K);
    const int N = c->N;
    c->cap = moe_capacity(N, E, cfg->K, cfg->cf, cfg->dropless);
    c->normalize = cfg->normalize, c->bp = cfg->bp, c->act = cfg->act;
    c->w_bal = cfg->w_bal, c->w_z = cfg->w_z, c->w_ds = cfg->target ? cfg->w_ds : 0.0;
    c->w_imp = cfg->w_bal > 0 ? 0.25 : 0.0; /* the importance loss rides along where the others are on */
    if (!cfg->target) {
        free(c->target);
        c->target = NULL;
    }
    for (int attempt = 0;; attempt++) {
        assert_true(attempt < 500);
        rng_seed(seed * 1000 + (uint64_t)attempt);
        double *t[] = { c->x, c->wg, c->w1, c->b1, c->w2, c->b2, c->r };
        const size_t n[] = { (size_t)N * D, (size_t)E * D, (size_t)E * H * D, (size_t)E * H, (size_t)E * D * H,
                             (size_t)E * D, (size_t)N * D };
        const double sc[] = { 1.0, 1.0, 0.5, 0.3, 0.5, 0.3, 1.0 };
        for (int k = 0; k < 7; k++)
            for (size_t i = 0; i < n[k]; i++)
                t[k][i] = sc[k] * srand1();
        for (int i = 0; i < N * E; i++)
            c->noise[i] = 0.3 * nrand();
        if (cfg->idle)
            for (int i = 0; i < N; i++)
                c->noise[i * E + E - 1] = -12.0;
        if (c->target) { /* each sample's dataset, mapped to an expert */
            const int map[2] = { (int)(rng_u64() % (uint64_t)E), (int)(rng_u64() % (uint64_t)E) };
            for (int i = 0; i < N; i++)
                c->target[i] = map[(i / T) % 2];
        }
        c->have_base = 0;
        moe_loss(c);
        if (!route_margin_ok(c->probs, N, E, cfg->K, cfg->bp))
            continue;
        int dropped = 0, kink = 0;
        for (int i = 0; i < N * cfg->K; i++)
            dropped += c->slot[i] < 0;
        if ((cfg->drops == 1 && !dropped) || (cfg->drops == 0 && dropped))
            continue;
        if (cfg->act == ACT_RELU) {
            int rows = 0;
            for (int e = 0; e < E; e++)
                rows += c->count[e];
            for (int i = 0; i < rows * H; i++)
                kink |= fabs(c->h[i]) < KINK_MARGIN;
        }
        if (kink)
            continue;
        if (cfg->idle && c->count[E - 1] != 0)
            continue;
        break;
    }
    memcpy(c->topk0, c->topk, (size_t)N * cfg->K * sizeof(int));
    memcpy(c->slot0, c->slot, (size_t)N * cfg->K * sizeof(int));
    memcpy(c->order0, c->order, (size_t)N * sizeof(int));
    c->have_base = 1;
    c->route_changes = 0;
}

/* the auxiliary losses by their definitions */
static void expect_aux(const moe_ctx *c)
{
    const int N = c->N, E = c->E;
    double bal = 0.0, z = 0.0, ds = 0.0;
    for (int e = 0; e < E; e++) {
        double me = 0.0, ce = 0.0;
        for (int n = 0; n < N; n++) {
            me += c->probs[n * E + e] / N;
            ce += (c->topk[n * c->K] == e) / (double)N;
        }
        bal += E * me * ce;
    }
    for (int n = 0; n < N; n++) {
        double s = 0.0;
        for (int e = 0; e < E; e++)
            s += exp(c->logits[n * E + e]);
        z += log(s) * log(s) / N;
        if (c->target)
            ds -= log(c->probs[n * E + c->target[n]]) / N;
    }
    assert_true(fabs(c->aux[0] - bal) < 1e-12);
    assert_true(fabs(c->aux[1] - z) < 1e-12);
    assert_true(fabs(c->aux[2] - ds) < 1e-12);
    /* importance: (population) variance over squared mean of the experts'
     * summed probabilities */
    double imp[64] = { 0 }, mu = 0.0, var = 0.0;
    for (int e = 0; e < E; e++) {
        for (int n = 0; n < N; n++)
            imp[e] += c->probs[n * E + e];
        mu += imp[e] / E;
    }
    for (int e = 0; e < E; e++)
        var += (imp[e] - mu) * (imp[e] - mu) / E;
    assert_true(fabs(c->aux[3] - var / (mu * mu)) < 1e-12);
}

static void test_moe(void **state)
{
    const moe_cfg *cfg = *state;
    moe_ctx c;
    moe_setup(&c, cfg, (uint64_t)(cfg - moe_cfgs) + 100);
    const int N = c.N, D = c.D, H = c.H, E = c.E, K = c.K;

    moe_loss(&c);
    expect_route(&c.rt, c.probs, N, E, K, c.cap, c.normalize, c.bp);
    expect_aux(&c);
    if (cfg->dropless)
        assert_int_equal(c.cap, N);

    op_check oc = { cfg->name, moe_loss, moe_bwd, 1, 7, { "x", "w_gate", "w1", "b1", "w2", "b2", "noise" },
                    { c.x, c.wg, c.w1, c.b1, c.w2, c.b2, c.noise },
                    { (size_t)N * D, (size_t)E * D, (size_t)E * H * D, (size_t)E * H, (size_t)E * D * H,
                      (size_t)E * D, (size_t)N * E },
                    { G_INPUT, G_PARAM, G_PARAM, G_PARAM, G_PARAM, G_PARAM, G_WHOLE }, 1 };
    run_op_check(&oc, &c);
    if (c.route_changes)
        fail_msg("%s: %ld perturbed forward passes routed differently", cfg->name, c.route_changes);

    if (cfg->idle) { /* an expert without tokens gets exactly zero gradients */
        double *g[7];
        const size_t n[7] = { (size_t)N * D, (size_t)E * D, (size_t)E * H * D, (size_t)E * H, (size_t)E * D * H,
                              (size_t)E * D, (size_t)N * E };
        for (int t = 0; t < 7; t++)
            g[t] = vnew(n[t]);
        moe_loss(&c);
        moe_bwd(&c, g, 0);
        for (int i = 0; i < H * D; i++)
            assert_true(g[2][(size_t)(E - 1) * H * D + i] == 0.0 && g[4][(size_t)(E - 1) * D * H + i] == 0.0);
        for (int i = 0; i < H; i++)
            assert_true(g[3][(size_t)(E - 1) * H + i] == 0.0);
        for (int i = 0; i < D; i++)
            assert_true(g[5][(size_t)(E - 1) * D + i] == 0.0);
        for (int t = 0; t < 7; t++)
            free(g[t]);
    }
    moe_free(&c);
}

/* Routing order and ties, on hand-made probabilities. */
static void test_moe_route_ties(void **state)
{
    (void)state;
    /* 8 tokens, 3 experts; exact ties between tokens' top-1 probabilities
     * and within rows */
    static const double probs[8][3] = {
        { 0.2, 0.5, 0.3 }, { 0.5, 0.3, 0.2 }, { 0.4, 0.4, 0.2 }, { 0.1, 0.2, 0.7 },
        { 0.3, 0.2, 0.5 }, { 0.25, 0.5, 0.25 }, { 0.4, 0.2, 0.4 }, { 0.7, 0.1, 0.2 },
    };
    const int N = 8, E = 3;
    for (int K = 1; K <= 2; K++)
        for (int bp = 0; bp < 2; bp++)
            for (int cap = 1; cap <= N; cap++)
                for (int nrm = 0; nrm < 2; nrm++) {
                    int topk[16], slot[16], count[3], offset[3], token[16], order[16];
                    double topp[16], gate[16], prio[8];
                    moe_routing r = { topk, topp, gate, slot, count, offset, token, order, prio };
                    moe_route(&r, &probs[0][0], N, E, K, cap, nrm, bp);
                    expect_route(&r, &probs[0][0], N, E, K, cap, nrm, bp);
                }
    /* spelled out: top-1, capacity 2, batch priority: the order is 3, 7
     * (0.7, ties by index), 0, 1, 4, 5 (0.5), 2, 6 (0.4); token 2 picks
     * expert 0 over the tied expert 1, token 6 expert 0 over expert 2 */
    int topk[8], slot[8], count[3], offset[3], token[8], order[16];
    double topp[8], gate[8], prio[8];
    moe_routing r = { topk, topp, gate, slot, count, offset, token, order, prio };
    moe_route(&r, &probs[0][0], N, E, 1, 2, 0, 1);
    static const int want_order[8] = { 3, 7, 0, 1, 4, 5, 2, 6 };
    static const int want_topk[8] = { 1, 0, 0, 2, 2, 1, 0, 0 };
    static const int want_slot[8] = { 0, 1, -1, 0, 1, 1, -1, 0 };
    for (int i = 0; i < N; i++) {
        assert_int_equal(order[i], want_order[i]);
        assert_int_equal(topk[i], want_topk[i]);
        assert_int_equal(slot[i], want_slot[i]);
    }

    /* moe_prio_sort on longer lists full of ties: a stable descending sort */
    rng_seed(12);
    static const int lens[] = { 1, 2, 3, 7, 8, 16, 37, 100 };
    for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++) {
        const int n = lens[l];
        double pr[100];
        int ord[200], want[100];
        for (int i = 0; i < n; i++) {
            pr[i] = (double)(rng_u64() % 5) / 4.0;
            ord[i] = i;
            int j = i;
            while (j > 0 && pr[want[j - 1]] < pr[i])
                want[j] = want[j - 1], j--;
            want[j] = i;
        }
        moe_prio_sort(ord, pr, n);
        for (int i = 0; i < n; i++)
            assert_int_equal(ord[i], want[i]);
    }

    /* capacity: k * floor(cf * ceil(N / E)) within [1, N]; dropless N */
    assert_int_equal(moe_capacity(10, 4, 1, 1.0, 0), 3);
    assert_int_equal(moe_capacity(10, 4, 1, 0.5, 0), 1);
    assert_int_equal(moe_capacity(10, 4, 2, 0.75, 0), 4);
    assert_int_equal(moe_capacity(10, 4, 2, 1.25, 0), 6);
    assert_int_equal(moe_capacity(10, 4, 1, 0.1, 0), 1);
    assert_int_equal(moe_capacity(10, 4, 2, 10.0, 0), 10);
    assert_int_equal(moe_capacity(10, 4, 2, 0.5, 1), 10);
}

/* ---- hierarchical models: convolution stem, windows, 2x2 merge ---------------------- */

/* The convolution stem as gen_op's OP_CONV_STEM chains it: L layers of
 * K x K convolutions with CO channels (zero padding K/2), each one
 * conv_im2col -> linear_forward -> GELU; the first of stride S on the
 * channels-first image, the others of stride 1 on the channels-last output
 * of the one before; the last output transposed to channels first.
 * Backward: transpose_rc back, then per layer act_backward, linear_backward
 * (dinp into the columns' gradient), conv_col2im (acc 0 between the
 * layers, the op's acc into the image). The scratch gradients are NaN
 * before each backward: each must be written before it is read. */
#define STEM_MAXL 3

typedef struct stem_cfg {
    const char *name;
    int B, C, H, W, K, S, CO, L;
} stem_cfg;

typedef struct stem_ctx {
    stem_cfg g;
    int OH, OW;
    double *img, *w[STEM_MAXL], *b[STEM_MAXL], *r, *out;
    double *cols[STEM_MAXL], *pre[STEM_MAXL], *post[STEM_MAXL];
    double *dcols[STEM_MAXL], *dpre[STEM_MAXL], *dpost[STEM_MAXL];
} stem_ctx;

static int stem_cin(const stem_ctx *c, int l)
{
    return l == 0 ? c->g.C : c->g.CO;
}

static double stem_loss(void *vc)
{
    stem_ctx *c = vc;
    const stem_cfg *g = &c->g;
    const int M = g->B * c->OH * c->OW;
    for (int l = 0; l < g->L; l++) {
        const int cin = stem_cin(c, l);
        if (l == 0)
            conv_im2col(c->cols[0], c->img, g->B, cin, g->H, g->W, g->K, g->S, g->K / 2, 0);
        else
            conv_im2col(c->cols[l], c->post[l - 1], g->B, cin, c->OH, c->OW, g->K, 1, g->K / 2, 1);
        linear_forward(c->pre[l], c->cols[l], c->w[l], c->b[l], M, cin * g->K * g->K, g->CO);
        act_forward(c->post[l], c->pre[l], (size_t)M * g->CO, ACT_GELU);
    }
    transpose_rc(c->out, c->post[g->L - 1], g->B, c->OH * c->OW, g->CO, 0);
    return dot(c->r, c->out, (size_t)M * g->CO);
}

/* grads: the image, then each layer's weight and bias */
static void stem_bwd(void *vc, double *const *gr, int acc)
{
    stem_ctx *c = vc;
    const stem_cfg *g = &c->g;
    const int M = g->B * c->OH * c->OW;
    const size_t n = (size_t)M * g->CO;
    for (int l = 0; l < g->L; l++) {
        vfill(c->dcols[l], (size_t)M * stem_cin(c, l) * g->K * g->K, NAN);
        vfill(c->dpre[l], n, NAN);
        vfill(c->dpost[l], n, NAN);
    }
    transpose_rc(c->dpost[g->L - 1], c->r, g->B, g->CO, c->OH * c->OW, 0);
    for (int l = g->L - 1; l >= 0; l--) {
        const int cin = stem_cin(c, l);
        act_backward(c->dpre[l], c->dpost[l], c->pre[l], n, ACT_GELU, 0);
        linear_backward(c->dcols[l], gr[1 + 2 * l], gr[2 + 2 * l], c->dpre[l], c->cols[l], c->w[l], M,
                        cin * g->K * g->K, g->CO, 0);
        if (l > 0)
            conv_col2im(c->dpost[l - 1], c->dcols[l], g->B, g->CO, c->OH, c->OW, g->K, 1, g->K / 2, 1, 0);
        else
            conv_col2im(gr[0], c->dcols[0], g->B, g->C, g->H, g->W, g->K, g->S, g->K / 2, 0, acc);
    }
}

/* out[b, oy*OW + ox, o] = bias[o] + sum over (c, ky, kx) of w[o, c, ky, kx] *
 * in(b, c, oy*S + ky - K/2, ox*S + kx - K/2), zero outside the image; in
 * is [B, C, H, W] or (nhwc) [B, H*W, C] */
static void ref_conv(double *out, const double *in, int nhwc, const double *w, const double *bias, int B, int C,
                     int H, int W, int K, int S, int CO)
{
    const int OH = H / S, OW = W / S;
    for (int b = 0; b < B; b++)
        for (int oy = 0; oy < OH; oy++)
            for (int ox = 0; ox < OW; ox++)
                for (int o = 0; o < CO; o++) {
                    double s = bias[o];
                    for (int c = 0; c < C; c++)
                        for (int ky = 0; ky < K; ky++)
                            for (int kx = 0; kx < K; kx++) {
                                const int y = oy * S + ky - K / 2, x = ox * S + kx - K / 2;
                                if (y < 0 || y >= H || x < 0 || x >= W)
                                    continue;
                                const double v = nhwc ? in[(((size_t)b * H + y) * W + x) * C + c]
                                                      : in[(((size_t)b * C + c) * H + y) * W + x];
                                s += w[(((size_t)o * C + c) * K + ky) * K + kx] * v;
                            }
                    out[(((size_t)b * OH + oy) * OW + ox) * CO + o] = s;
                }
}

static const stem_cfg stem_cfgs[] = {
    { "conv stem 6x4 k3 s2", 2, 2, 6, 4, 3, 2, 3, 2 },
    { "conv stem 5x7 k5 s1 3 layers", 1, 3, 5, 7, 5, 1, 2, 3 },
    { "conv stem 9x6 k3 s3", 2, 1, 9, 6, 3, 3, 3, 2 },
};

static void test_conv_stem(void **state)
{
    (void)state;
    rng_seed(21);
    for (size_t k = 0; k < sizeof stem_cfgs / sizeof stem_cfgs[0]; k++) {
        stem_ctx c;
        memset(&c, 0, sizeof c);
        c.g = stem_cfgs[k];
        const stem_cfg *g = &c.g;
        assert_true(g->L <= STEM_MAXL);
        c.OH = g->H / g->S;
        c.OW = g->W / g->S;
        const int M = g->B * c.OH * c.OW;
        const size_t n = (size_t)M * g->CO, nimg = (size_t)g->B * g->C * g->H * g->W;
        c.img = vrand(nimg, 1.0);
        c.r = vrand(n, 1.0);
        c.out = vnew(n);
        op_check oc = { g->name, stem_loss, stem_bwd, 1, 1 + 2 * g->L, { "img" }, { c.img }, { nimg }, { G_INPUT },
                        1 };
        static const char *const pn[2 * STEM_MAXL] = { "w1", "b1", "w2", "b2", "w3", "b3" };
        for (int l = 0; l < g->L; l++) {
            const size_t ckk = (size_t)stem_cin(&c, l) * g->K * g->K;
            c.w[l] = vrand((size_t)g->CO * ckk, 0.6);
            c.b[l] = vrand((size_t)g->CO, 0.5);
            c.cols[l] = vnew((size_t)M * ckk);
            c.dcols[l] = vnew((size_t)M * ckk);
            c.pre[l] = vnew(n), c.post[l] = vnew(n), c.dpre[l] = vnew(n), c.dpost[l] = vnew(n);
            oc.tname[1 + 2 * l] = pn[2 * l], oc.tname[2 + 2 * l] = pn[2 * l + 1];
            oc.x[1 + 2 * l] = c.w[l], oc.x[2 + 2 * l] = c.b[l];
            oc.n[1 + 2 * l] = (size_t)g->CO * ckk, oc.n[2 + 2 * l] = (size_t)g->CO;
            oc.kind[1 + 2 * l] = oc.kind[2 + 2 * l] = G_PARAM;
        }
        /* the forward: each layer the direct convolution, the output its
         * last layer's GELU channels first */
        stem_loss(&c);
        double *ref = vnew(n);
        for (int l = 0; l < g->L; l++) {
            if (l == 0)
                ref_conv(ref, c.img, 0, c.w[0], c.b[0], g->B, g->C, g->H, g->W, g->K, g->S, g->CO);
            else
                ref_conv(ref, c.post[l - 1], 1, c.w[l], c.b[l], g->B, g->CO, c.OH, c.OW, g->K, 1, g->CO);
            for (size_t i = 0; i < n; i++)
                if (!(fabs(c.pre[l][i] - ref[i]) <= 1e-12 * (1.0 + fabs(ref[i]))))
                    fail_msg("%s: layer %d output [%zu] is %.17g, the direct convolution %.17g", g->name, l + 1, i,
                             c.pre[l][i], ref[i]);
        }
        for (int b = 0; b < g->B; b++)
            for (int p = 0; p < c.OH * c.OW; p++)
                for (int o = 0; o < g->CO; o++)
                    assert_true(c.out[((size_t)b * g->CO + o) * c.OH * c.OW + p] ==
                                c.post[g->L - 1][((size_t)b * c.OH * c.OW + p) * g->CO + o]);
        run_op_check(&oc, &c);
        free(ref), free(c.img), free(c.r), free(c.out);
        for (int l = 0; l < g->L; l++) {
            free(c.w[l]), free(c.b[l]), free(c.cols[l]), free(c.dcols[l]);
            free(c.pre[l]), free(c.post[l]), free(c.dpre[l]), free(c.dpost[l]);
        }
    }
}

/* The image's gradient under a patch embedding (after a convolution stem):
 * patch_embed_input_backward against central differences of
 * patch_embed_forward. */
typedef struct pin_ctx {
    patch_ctx p; /* first: patch_loss takes a pin_ctx */
    double *dcols;
} pin_ctx;

static void pin_bwd(void *vc, double *const *g, int acc)
{
    pin_ctx *c = vc;
    const patch_ctx *p = &c->p;
    vfill(c->dcols, (size_t)p->B * p->T * p->C * p->P * p->P, NAN);
    patch_embed_input_backward(g[0], c->dcols, p->r, p->w, p->B, p->C, p->IH, p->IW, p->P, p->D, acc);
}

static void test_patch_embed_input(void **state)
{
    (void)state;
    static const int shapes[][6] = { /* B, C, IH, IW, P, D */
                                     { 2, 3, 4, 6, 2, 5 },
                                     { 1, 2, 6, 3, 3, 4 } };
    rng_seed(22);
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const int *s = shapes[k];
        pin_ctx c;
        memset(&c, 0, sizeof c);
        patch_ctx *p = &c.p;
        p->B = s[0], p->C = s[1], p->IH = s[2], p->IW = s[3], p->P = s[4], p->D = s[5];
        p->T = (p->IH / p->P) * (p->IW / p->P);
        const size_t CPP = (size_t)p->C * p->P * p->P, nimg = (size_t)p->B * p->C * p->IH * p->IW;
        p->img = vrand(nimg, 1.0);
        p->w = vrand((size_t)p->D * CPP, 1.0);
        p->b = vrand((size_t)p->D, 1.0);
        p->cols = vnew((size_t)p->B * p->T * CPP);
        p->r = vrand((size_t)p->B * p->T * p->D, 1.0);
        p->out = vnew((size_t)p->B * p->T * p->D);
        c.dcols = vnew((size_t)p->B * p->T * CPP);
        op_check oc = { k ? "patch_embed input (P=3)" : "patch_embed input (P=2)", patch_loss, pin_bwd, 1, 1,
                        { "img" }, { p->img }, { nimg }, { G_INPUT }, 1 };
        run_op_check(&oc, &c);
        free(p->img), free(p->w), free(p->b), free(p->cols), free(p->r), free(p->out), free(c.dcols);
    }
}

/* ---- the data-movement kernels: adjoints, layouts, acc ----------------------------------- */

/* <P x, y> == <x, P^T y> (the sums taken in different orders) */
static void expect_adjoint(const char *op, double pxy, double xpty)
{
    if (!(fabs(pxy - xpty) <= 1e-12 * (1.0 + fabs(pxy) + fabs(xpty))))
        fail_msg("%s: <P x, y> = %.17g but <x, P^T y> = %.17g: the backward is not the forward's adjoint", op, pxy,
                 xpty);
}

static double *vnan(size_t n)
{
    double *p = vnew(n);
    vfill(p, n, NAN);
    return p;
}

/* token grids: B, GH, GW, WS, C; non-square grids and window grids (2x3,
 * 3x2, a 2x3 grid of 3x3 windows) */
static const int grid_shapes[][5] = { { 2, 4, 6, 2, 3 }, { 2, 6, 4, 2, 2 }, { 1, 6, 9, 3, 2 } };
#define N_GRID_SHAPES (sizeof grid_shapes / sizeof grid_shapes[0])

static void test_conv_adjoint(void **state)
{
    (void)state;
    static const int shapes[][7] = { /* B, C, H, W, K, S, nhwc */
                                     { 2, 2, 6, 4, 3, 2, 0 }, { 2, 3, 5, 7, 3, 1, 1 }, { 1, 2, 5, 3, 5, 1, 0 },
                                     { 2, 2, 9, 6, 3, 3, 1 } };
    rng_seed(23);
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const int *s = shapes[k], B = s[0], C = s[1], H = s[2], W = s[3], K = s[4], S = s[5], nhwc = s[6];
        const size_t nimg = (size_t)B * C * H * W, ncols = (size_t)B * (H / S) * (W / S) * C * K * K;
        double *x = vrand(nimg, 1.0), *y = vrand(ncols, 1.0), *px = vnan(ncols), *pty = vnan(nimg);
        conv_im2col(px, x, B, C, H, W, K, S, K / 2, nhwc);
        conv_col2im(pty, y, B, C, H, W, K, S, K / 2, nhwc, 0);
        expect_adjoint(nhwc ? "conv_im2col (nhwc)" : "conv_im2col", dot(px, y, ncols), dot(x, pty, nimg));
        free(x), free(y), free(px), free(pty);
    }
    /* the patches */
    const int B = 2, C = 3, IH = 6, IW = 9, P = 3;
    const size_t n = (size_t)B * C * IH * IW;
    double *x = vrand(n, 1.0), *y = vrand(n, 1.0), *px = vnan(n), *pty = vnan(n);
    conv_im2col(px, x, B, C, IH, IW, P, P, 0, 0); /* patch embedding's: K = S = P, no padding */
    conv_col2im(pty, y, B, C, IH, IW, P, P, 0, 0, 0);
    expect_adjoint("conv_im2col (patches)", dot(px, y, n), dot(x, pty, n));
    free(x), free(y), free(px), free(pty);
}

static void test_transpose_rc(void **state)
{
    (void)state;
    rng_seed(24);
    const int B = 2, R = 5, C = 3;
    const size_t n = (size_t)B * R * C;
    double *x = vrand(n, 1.0), *y = vrand(n, 1.0), *px = vnan(n), *pty = vnan(n), *back = vnan(n);
    transpose_rc(px, x, B, R, C, 0);
    for (int b = 0; b < B; b++)
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++)
                assert_true(px[((size_t)b * C + c) * R + r] == x[((size_t)b * R + r) * C + c]);
    transpose_rc(pty, y, B, C, R, 0);
    expect_adjoint("transpose_rc", dot(px, y, n), dot(x, pty, n));
    transpose_rc(back, px, B, C, R, 0);
    expect_same("transpose_rc", "there and back", back, x, n);
    free(x), free(y), free(px), free(pty), free(back);
}

static void test_window_permute(void **state)
{
    (void)state;
    rng_seed(25);
    for (size_t k = 0; k < N_GRID_SHAPES; k++) {
        const int *s = grid_shapes[k], B = s[0], GH = s[1], GW = s[2], WS = s[3], C = s[4];
        const int NWY = GH / WS, NWX = GW / WS;
        const size_t n = (size_t)B * GH * GW * C;
        double *x = vrand(n, 1.0), *y = vrand(n, 1.0), *px = vnan(n), *pty = vnan(n), *back = vnan(n);
        window_permute(px, x, B, GH, GW, WS, C, 1, 0);
        /* windows row-major over the window grid, tokens row-major inside */
        for (int b = 0; b < B; b++)
            for (int wy = 0; wy < NWY; wy++)
                for (int wx = 0; wx < NWX; wx++)
                    for (int ty = 0; ty < WS; ty++)
                        for (int tx = 0; tx < WS; tx++)
                            for (int c = 0; c < C; c++) {
                                const size_t wi = ((((size_t)b * NWY + wy) * NWX + wx) * WS * WS +
                                                   (size_t)ty * WS + tx) * C + c;
                                const size_t gi = (((size_t)b * GH + wy * WS + ty) * GW + wx * WS + tx) * C + c;
                                if (!(px[wi] == x[gi]))
                                    fail_msg("window_permute %dx%d/%d: window (%d, %d) token (%d, %d) is not grid "
                                             "token (%d, %d)",
                                             GH, GW, WS, wy, wx, ty, tx, wy * WS + ty, wx * WS + tx);
                            }
        window_permute(pty, y, B, GH, GW, WS, C, 0, 0);
        expect_adjoint("window_permute", dot(px, y, n), dot(x, pty, n));
        window_permute(back, px, B, GH, GW, WS, C, 0, 0);
        expect_same("window_permute", "to windows and back", back, x, n);
        free(x), free(y), free(px), free(pty), free(back);
    }
}

static void test_grid_pool(void **state)
{
    (void)state;
    rng_seed(26);
    for (size_t k = 0; k < N_GRID_SHAPES; k++) {
        const int *s = grid_shapes[k], B = s[0], GH = s[1], GW = s[2], WS = s[3], D = s[4];
        const int cellh = GH / WS, cellw = GW / WS;
        const size_t n = (size_t)B * GH * GW * D, m = (size_t)B * WS * WS * D;
        double *x = vrand(n, 1.0), *y = vrand(m, 1.0), *px = vnan(m), *pty = vnan(n);
        grid_pool_forward(px, x, B, GH, GW, WS, D);
        /* the mean of each cellh x cellw cell, the cells row-major */
        for (int b = 0; b < B; b++)
            for (int cy = 0; cy < WS; cy++)
                for (int cx = 0; cx < WS; cx++)
                    for (int d = 0; d < D; d++) {
                        double sum = 0.0;
                        for (int i = 0; i < cellh; i++)
                            for (int j = 0; j < cellw; j++)
                                sum += x[(((size_t)b * GH + cy * cellh + i) * GW + cx * cellw + j) * D + d];
                        const double want = sum / (cellh * cellw),
                                     got = px[(((size_t)b * WS + cy) * WS + cx) * D + d];
                        if (!(fabs(got - want) <= 1e-12))
                            fail_msg("grid_pool_forward %dx%d/%d: cell (%d, %d) [%d] is %.17g, the mean %.17g", GH,
                                     GW, WS, cy, cx, d, got, want);
                    }
        grid_pool_backward(pty, y, B, GH, GW, WS, D, 0);
        expect_adjoint("grid_pool", dot(px, y, m), dot(x, pty, n));
        free(x), free(y), free(px), free(pty);
    }
}

static void test_global_window_qkv(void **state)
{
    (void)state;
    rng_seed(27);
    for (size_t k = 0; k < N_GRID_SHAPES; k++) {
        const int *s = grid_shapes[k], B = s[0], GH = s[1], GW = s[2], WS = s[3], D = s[4];
        const int NWX = GW / WS, NW = (GH / WS) * NWX, WT = WS * WS;
        const size_t nq = (size_t)B * WT * D, nkv = (size_t)B * GH * GW * 2 * D, nqkv = (size_t)B * NW * WT * 3 * D;
        double *q = vrand(nq, 1.0), *kv = vrand(nkv, 1.0), *y = vrand(nqkv, 1.0), *px = vnan(nqkv),
               *dq = vnan(nq), *dkv = vnan(nkv);
        global_window_qkv(px, q, kv, B, GH, GW, WS, D);
        /* every window: the sample's queries, its own tokens' keys and values */
        for (int b = 0; b < B; b++)
            for (int w = 0; w < NW; w++)
                for (int t = 0; t < WT; t++) {
                    const double *row = px + (((size_t)b * NW + w) * WT + t) * 3 * D;
                    const int gy = (w / NWX) * WS + t / WS, gx = (w % NWX) * WS + t % WS;
                    for (int d = 0; d < D; d++)
                        assert_true(row[d] == q[((size_t)b * WT + t) * D + d]);
                    for (int d = 0; d < 2 * D; d++)
                        if (!(row[D + d] == kv[(((size_t)b * GH + gy) * GW + gx) * 2 * D + d]))
                            fail_msg("global_window_qkv %dx%d/%d: window %d token %d is not grid token (%d, %d)", GH,
                                     GW, WS, w, t, gy, gx);
                }
        global_window_qkv_backward(dq, dkv, y, B, GH, GW, WS, D);
        expect_adjoint("global_window_qkv", dot(px, y, nqkv), dot(q, dq, nq) + dot(kv, dkv, nkv));
        free(q), free(kv), free(y), free(px), free(dq), free(dkv);
    }
}

static void test_merge2x2(void **state)
{
    (void)state;
    rng_seed(28);
    static const int shapes[][4] = { { 2, 4, 6, 3 }, { 1, 6, 2, 2 }, { 2, 2, 2, 4 } }; /* B, GH, GW, D */
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const int *s = shapes[k], B = s[0], GH = s[1], GW = s[2], D = s[3], OH = GH / 2, OW = GW / 2;
        const size_t n = (size_t)B * GH * GW * D;
        double *x = vrand(n, 1.0), *y = vrand(n, 1.0), *px = vnan(n), *pty = vnan(n);
        merge2x2_forward(px, x, B, GH, GW, D);
        /* Swin's x0, x1, x2, x3: (row, column) offsets (0, 0), (1, 0), (0, 1), (1, 1) */
        for (int b = 0; b < B; b++)
            for (int oy = 0; oy < OH; oy++)
                for (int ox = 0; ox < OW; ox++)
                    for (int j = 0; j < 4; j++)
                        for (int d = 0; d < D; d++) {
                            const int gy = 2 * oy + (j & 1), gx = 2 * ox + (j >> 1);
                            if (!(px[(((size_t)b * OH + oy) * OW + ox) * 4 * D + (size_t)j * D + d] ==
                                  x[(((size_t)b * GH + gy) * GW + gx) * D + d]))
                                fail_msg("merge2x2_forward %dx%d: part %d of (%d, %d) is not token (%d, %d)", GH, GW,
                                         j, oy, ox, gy, gx);
                        }
        merge2x2_backward(pty, y, B, GH, GW, D, 0);
        expect_adjoint("merge2x2", dot(px, y, n), dot(x, pty, n));
        free(x), free(y), free(px), free(pty);
    }
}

/* The acc flag of each data-movement backward: acc = 0 overwrites what is
 * there (junk or NaN gives the bits a zeroed buffer gets), acc = 1 adds to
 * it. global_window_qkv_backward has no flag: it writes dq and dkv whole. */
enum { AC_CONV_NCHW, AC_CONV_NHWC, AC_TRANSPOSE, AC_COL2IM_PATCHES, AC_PATCH_INPUT, AC_TO_WINDOWS, AC_FROM_WINDOWS,
       AC_GRID_POOL, AC_MERGE, AC_N };

static const char *const ac_name[AC_N] = {
    "conv_col2im", "conv_col2im (nhwc)", "transpose_rc", "conv_col2im (patches)", "patch_embed_input_backward",
    "window_permute (to windows)", "window_permute (back)", "grid_pool_backward", "merge2x2_backward",
};

/* shapes: conv B 2, C 2, 6x4, K 3 (stride 2 channels first, 1 channels
 * last); transpose [2, 5, 3]; patches [2, 3, 4, 6], P 2, D 4; grids B 2,
 * 4x6, WS 2, C 3 */
static void ac_sizes(int k, size_t *nsrc, size_t *ndst)
{
    switch (k) {
    case AC_CONV_NCHW: *nsrc = (size_t)2 * 3 * 2 * 2 * 9, *ndst = (size_t)2 * 2 * 6 * 4; break;
    case AC_CONV_NHWC: *nsrc = (size_t)2 * 6 * 4 * 2 * 9, *ndst = (size_t)2 * 2 * 6 * 4; break;
    case AC_TRANSPOSE: *nsrc = *ndst = (size_t)2 * 5 * 3; break;
    case AC_COL2IM_PATCHES: *nsrc = *ndst = (size_t)2 * 3 * 4 * 6; break;
    case AC_PATCH_INPUT: *nsrc = (size_t)2 * 6 * 4, *ndst = (size_t)2 * 3 * 4 * 6; break;
    case AC_GRID_POOL: *nsrc = (size_t)2 * 4 * 3, *ndst = (size_t)2 * 4 * 6 * 3; break;
    default: *nsrc = *ndst = (size_t)2 * 4 * 6 * 3; break;
    }
}

static void ac_run(int k, double *dst, const double *src, const double *w, double *scratch, int acc)
{
    switch (k) {
    case AC_CONV_NCHW: conv_col2im(dst, src, 2, 2, 6, 4, 3, 2, 1, 0, acc); break;
    case AC_CONV_NHWC: conv_col2im(dst, src, 2, 2, 6, 4, 3, 1, 1, 1, acc); break;
    case AC_TRANSPOSE: transpose_rc(dst, src, 2, 5, 3, acc); break;
    case AC_COL2IM_PATCHES: conv_col2im(dst, src, 2, 3, 4, 6, 2, 2, 0, 0, acc); break;
    case AC_PATCH_INPUT: patch_embed_input_backward(dst, scratch, src, w, 2, 3, 4, 6, 2, 4, acc); break;
    case AC_TO_WINDOWS: window_permute(dst, src, 2, 4, 6, 2, 3, 1, acc); break;
    case AC_FROM_WINDOWS: window_permute(dst, src, 2, 4, 6, 2, 3, 0, acc); break;
    case AC_GRID_POOL: grid_pool_backward(dst, src, 2, 4, 6, 2, 3, acc); break;
    case AC_MERGE: merge2x2_backward(dst, src, 2, 4, 6, 3, acc); break;
    default: fail();
    }
}

static void test_acc_flags(void **state)
{
    (void)state;
    rng_seed(29);
    double *w = vrand((size_t)4 * 3 * 2 * 2, 1.0), *scratch = vnew((size_t)2 * 6 * 3 * 2 * 2);
    for (int k = 0; k < AC_N; k++) {
        size_t nsrc, ndst;
        ac_sizes(k, &nsrc, &ndst);
        double *src = vrand(nsrc, 1.0), *ref = vnew(ndst), *junk = vrand(ndst, 3.0), *h = vdup(junk, ndst);
        ac_run(k, ref, src, w, scratch, 0);
        size_t nz = 0;
        for (size_t i = 0; i < ndst; i++)
            nz += ref[i] != 0.0;
        if (nz < ndst / 2)
            fail_msg("%s: only %zu of %zu outputs non-zero: the check proves little", ac_name[k], nz, ndst);
        ac_run(k, h, src, w, scratch, 0);
        expect_same(ac_name[k], "acc 0 over junk", h, ref, ndst);
        vfill(h, ndst, NAN);
        ac_run(k, h, src, w, scratch, 0);
        expect_same(ac_name[k], "acc 0 over NaN", h, ref, ndst);
        memcpy(h, junk, ndst * sizeof *h);
        ac_run(k, h, src, w, scratch, 1);
        expect_sum(ac_name[k], "acc 1 over junk", h, junk, ref, ndst);
        free(src), free(ref), free(junk), free(h);
    }
    free(w), free(scratch);

    /* global_window_qkv_backward: dq and dkv written whole */
    const int B = 2, GH = 4, GW = 6, WS = 2, D = 3, NW = (GH / WS) * (GW / WS), WT = WS * WS;
    const size_t nq = (size_t)B * WT * D, nkv = (size_t)B * GH * GW * 2 * D, nqkv = (size_t)B * NW * WT * 3 * D;
    double *y = vrand(nqkv, 1.0), *rq = vnew(nq), *rkv = vnew(nkv), *hq = vrand(nq, 3.0), *hkv = vrand(nkv, 3.0);
    global_window_qkv_backward(rq, rkv, y, B, GH, GW, WS, D);
    global_window_qkv_backward(hq, hkv, y, B, GH, GW, WS, D);
    expect_same("global_window_qkv_backward", "dq over junk", hq, rq, nq);
    expect_same("global_window_qkv_backward", "dkv over junk", hkv, rkv, nkv);
    vfill(hq, nq, NAN), vfill(hkv, nkv, NAN);
    global_window_qkv_backward(hq, hkv, y, B, GH, GW, WS, D);
    expect_same("global_window_qkv_backward", "dq over NaN", hq, rq, nq);
    expect_same("global_window_qkv_backward", "dkv over NaN", hkv, rkv, nkv);
    free(y), free(rq), free(rkv), free(hq), free(hkv);
}

/* ---- a whole block, as gen_op chains the ops ------------------------------------------ */

/* model:
 *   1 patch_embed  image [B, 3, 4, 4], patch 2 -> V1 [B, 4, D]
 *   2 cls_token    V1 -> V2 [B, 5, D]
 *   3 pos_embed    V2 -> V3 (learned)
 *   4 residual_begin (V3)
 *   5 layernorm    V3 -> V5
 *   6 attention    V5 -> V6 (qkv bias)
 *   7 drop_path    V6 -> V7
 *   8 residual_end V3 + V7 -> V8
 *   9 residual_begin (V8)
 *  10 layernorm    V8 -> V10
 *  11 moe          V10 -> V11 (top-2, normalised, capacity with drops,
 *                  batch priority, dataset-aware)
 *  12 dropout      V11 -> V12
 *  13 residual_end V8 + V12 -> V13
 *  14 pool mean    V13 -> V14
 *  15 classifier   V14 -> V15 [B, C]
 * loss: mean label-smoothed cross-entropy + the weighted auxiliary losses.
 * acc flags as gen_op's acc_flag: the last consumer of a value (in forward
 * order) is the first to write its gradient in the backward pass. V3's
 * last use is op 8 (the skip), V8's is op 13. */
enum { CB = 2, CC = 3, CIH = 4, CIW = 4, CP = 2, CT0 = 4, CT = 5, CD = 8, CNH = 2, CH = 12, CE = 4, CK = 2,
       CCLS = 5, CN = CB * CT };

/* parameter tensors, in arena order */
enum { P_PE_W, P_PE_B, P_CLS, P_POS, P_LN1_W, P_LN1_B, P_QKV_W, P_QKV_B, P_PROJ_W, P_PROJ_B, P_LN2_W, P_LN2_B,
       P_GATE, P_W1, P_B1, P_W2, P_B2, P_HEAD_W, P_HEAD_B, N_PT };

static const char *const comp_pname[N_PT] = { "pe.w", "pe.b", "cls", "pos", "ln1.w", "ln1.b", "qkv.w",
                                              "qkv.b", "proj.w", "proj.b", "ln2.w", "ln2.b", "gate",
                                              "w1", "b1", "w2", "b2", "head.w", "head.b" };
static const size_t comp_psize[N_PT] = { CD * CC * CP * CP, CD, CD, CT * CD, CD, CD, 3 * CD * CD, 3 * CD,
                                         CD * CD, CD, CD, CD, CE * CD, CE * CH * CD, CE * CH, CE * CD * CH,
                                         CE * CD, CCLS * CD, CCLS };

typedef struct comp_ctx {
    double *param, *grad;
    size_t off[N_PT], nparam;
    double *img, keep[CB], *mask, ls;
    int label[CB], dataset[CB];
    moe_ctx moe; /* the MoE layer's buffers and routing; its weights point into param */
    /* values and their gradients */
    double *cols, *v1, *v2, *v3, *v5, *m5, *r5, *qkv, *att, *y, *v6, *v7, *v8, *v10, *m10, *r10, *v11, *v12,
        *v13, *v14, *v15;
    double *d1, *d2, *d3, *d5, *dqkv, *datt, *dy, *d6, *d7, *d8, *d10, *d11, *d12, *d13, *d14, *d15;
    double ce;
} comp_ctx;

#define CP_(c, t) ((c)->param + (c)->off[t])
#define CG_(c, t) ((c)->grad + (c)->off[t])

static double comp_loss_grad(comp_ctx *c, int want_grad)
{
    const int N = CN, D = CD;
    patch_embed_forward(c->v1, c->cols, c->img, CP_(c, P_PE_W), CP_(c, P_PE_B), CB, CC, CIH, CIW, CP, D);
    cls_token_forward(c->v2, c->v1, CP_(c, P_CLS), CB, CT0, D);
    pos_embed_forward(c->v3, c->v2, CP_(c, P_POS), CB, CT, D);
    layernorm_forward(c->v5, c->m5, c->r5, c->v3, CP_(c, P_LN1_W), CP_(c, P_LN1_B), N, D, 1e-6);
    linear_forward(c->qkv, c->v5, CP_(c, P_QKV_W), CP_(c, P_QKV_B), N, D, 3 * D);
    attention_forward(c->y, c->att, c->qkv, CB, CT, D, CNH);
    linear_forward(c->v6, c->y, CP_(c, P_PROJ_W), CP_(c, P_PROJ_B), N, D, D);
    rowmask_forward(c->v7, c->v6, c->keep, CB, (size_t)CT * D);
    add_forward(c->v8, c->v3, c->v7, (size_t)N * D);
    layernorm_forward(c->v10, c->m10, c->r10, c->v8, CP_(c, P_LN2_W), CP_(c, P_LN2_B), N, D, 1e-6);
    const double aux = moe_loss_at(&c->moe, c->v10, c->v11);
    mask_forward(c->v12, c->v11, c->mask, (size_t)N * D);
    add_forward(c->v13, c->v8, c->v12, (size_t)N * D);
    pool_forward(c->v14, c->v13, CB, CT, D, 0);
    linear_forward(c->v15, c->v14, CP_(c, P_HEAD_W), CP_(c, P_HEAD_B), CB, D, CCLS);
    double ce = 0.0;
    for (int b = 0; b < CB; b++)
        ce += softmax_xent(want_grad ? c->d15 + (size_t)b * CCLS : NULL, c->v15 + (size_t)b * CCLS, CCLS,
                           c->label[b], c->ls, 1.0 / CB);
    c->ce = ce / CB;
    return c->ce + aux;
}

static double comp_loss(void *vc)
{
    return comp_loss_grad(vc, 0);
}

static void comp_backward(comp_ctx *c)
{
    const int N = CN, D = CD;
    const size_t ND = (size_t)N * D;
    memset(c->grad, 0, c->nparam * sizeof(double)); /* model_backward */
    /* activation gradients are whatever the last step left: NaN here */
    double *dv[] = { c->d2, c->d3, c->d5, c->dy, c->d6, c->d7, c->d8, c->d10, c->d11, c->d12, c->d13 };
    for (size_t i = 0; i < sizeof dv / sizeof dv[0]; i++)
        vfill(dv[i], ND, NAN);
    vfill(c->d1, (size_t)CB * CT0 * D, NAN);
    vfill(c->dqkv, ND * 3, NAN);
    vfill(c->datt, (size_t)CB * CNH * CT * CT, NAN);
    vfill(c->d14, (size_t)CB * D, NAN);
    comp_loss_grad(c, 1); /* d15 */
    /* 15 classifier */
    linear_backward(c->d14, CG_(c, P_HEAD_W), CG_(c, P_HEAD_B), c->d15, c->v14, CP_(c, P_HEAD_W), CB, D, CCLS, 0);
    /* 14 pool */
    pool_backward(c->d13, c->d14, CB, CT, D, 0, 0);
    /* 13 residual_end: input V12 (last use), skip V8 (last use) */
    grad_pass(c->d12, c->d13, ND, 0);
    grad_pass(c->d8, c->d13, ND, 0);
    /* 12 dropout */
    mask_backward(c->d11, c->d12, c->mask, ND, 0);
    /* 11 moe (input V10, its only use) */
    moe_bwd_from(&c->moe, c->v10, c->d11, c->d10, CG_(c, P_GATE), CG_(c, P_W1), CG_(c, P_B1), CG_(c, P_W2),
                 CG_(c, P_B2), 0);
    /* 10 layernorm: input V8, not its last use */
    layernorm_backward(c->d8, CG_(c, P_LN2_W), CG_(c, P_LN2_B), c->d10, c->v8, CP_(c, P_LN2_W), c->m10, c->r10, N, D,
                       1);
    /* 8 residual_end: input V7, skip V3 (last use of both) */
    grad_pass(c->d7, c->d8, ND, 0);
    grad_pass(c->d3, c->d8, ND, 0);
    /* 7 drop_path */
    rowmask_backward(c->d6, c->d7, c->keep, CB, (size_t)CT * D, 0);
    /* 6 attention */
    linear_backward(c->dy, CG_(c, P_PROJ_W), CG_(c, P_PROJ_B), c->d6, c->y, CP_(c, P_PROJ_W), N, D, D, 0);
    attention_backward(c->dqkv, c->datt, c->dy, c->qkv, c->att, CB, CT, D, CNH);
    linear_backward(c->d5, CG_(c, P_QKV_W), CG_(c, P_QKV_B), c->dqkv, c->v5, CP_(c, P_QKV_W), N, D, 3 * D, 0);
    /* 5 layernorm: input V3, not its last use */
    layernorm_backward(c->d3, CG_(c, P_LN1_W), CG_(c, P_LN1_B), c->d5, c->v3, CP_(c, P_LN1_W), c->m5, c->r5, N, D, 1);
    /* 3 pos_embed, 2 cls_token, 1 patch_embed */
    pos_embed_backward(c->d2, CG_(c, P_POS), c->d3, CB, CT, D, 0);
    cls_token_backward(c->d1, CG_(c, P_CLS), c->d2, CB, CT0, D, 0);
    patch_embed_backward(CG_(c, P_PE_W), CG_(c, P_PE_B), c->d1, c->cols, CB, CC, CIH, CIW, CP, D);
}

static void comp_setup(comp_ctx *cp)
{
    comp_ctx c;
    memset(&c, 0, sizeof c);
    for (int t = 0; t < N_PT; t++) {
        c.off[t] = c.nparam;
        c.nparam += comp_psize[t];
    }
    c.param = vnew(c.nparam);
    c.grad = vnew(c.nparam);
    const size_t ND = (size_t)CN * CD;
    double **bufs[] = { &c.v5, &c.y, &c.v6, &c.v7, &c.v8, &c.v10, &c.v11, &c.v12, &c.v13, &c.d3, &c.d5, &c.dy,
                        &c.d6, &c.d7, &c.d8, &c.d10, &c.d11, &c.d12, &c.d13, &c.v3, &c.v2, &c.d2, &c.mask };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        *bufs[i] = vnew(ND);
    c.cols = vnew((size_t)CB * CT0 * CC * CP * CP);
    c.v1 = vnew((size_t)CB * CT0 * CD), c.d1 = vnew((size_t)CB * CT0 * CD);
    c.m5 = vnew(CN), c.r5 = vnew(CN), c.m10 = vnew(CN), c.r10 = vnew(CN);
    c.qkv = vnew(ND * 3), c.dqkv = vnew(ND * 3);
    c.att = vnew((size_t)CB * CNH * CT * CT), c.datt = vnew((size_t)CB * CNH * CT * CT);
    c.v14 = vnew((size_t)CB * CD), c.d14 = vnew((size_t)CB * CD);
    c.v15 = vnew((size_t)CB * CCLS), c.d15 = vnew((size_t)CB * CCLS);
    c.img = vnew((size_t)CB * CC * CIH * CIW);
    c.ls = 0.1;
    c.label[0] = 3, c.label[1] = 1;
    c.dataset[0] = 0, c.dataset[1] = 1;
    const double p_drop = 0.2, p_path = 0.25;
    c.keep[0] = 1.0 / (1.0 - p_path), c.keep[1] = 0.0; /* sample 1's attention branch dropped */

    /* the MoE: top-2, normalised, cap = 2 * floor(0.75 * 3) = 4 < 20
     * choices, batch priority, dataset-aware with the map { 2, 0 } */
    moe_ctx *m = &c.moe;
    moe_alloc(m, CB, CT, CD, CH, CE, CK);
    free(m->x), free(m->wg), free(m->w1), free(m->b1), free(m->w2), free(m->b2), free(m->r);
    m->x = NULL, m->r = NULL;
    m->wg = CP_(&c, P_GATE), m->w1 = CP_(&c, P_W1), m->b1 = CP_(&c, P_B1), m->w2 = CP_(&c, P_W2),
    m->b2 = CP_(&c, P_B2);
    m->cap = moe_capacity(CN, CE, CK, 0.75, 0);
    assert_int_equal(m->cap, 4);
    m->normalize = 1, m->bp = 1, m->act = ACT_GELU;
    m->w_bal = 0.1, m->w_z = 0.01, m->w_ds = 0.05, m->w_imp = 0.2;
    static const int ds_map[2] = { 2, 0 };
    for (int n = 0; n < CN; n++)
        m->target[n] = ds_map[c.dataset[n / CT]];

    int ok = 0;
    for (int attempt = 0; attempt < 500 && !ok; attempt++) {
        rng_seed(5000 + (uint64_t)attempt);
        for (size_t i = 0; i < c.nparam; i++)
            c.param[i] = 0.5 * srand1();
        for (size_t i = 0; i < comp_psize[P_LN1_W]; i++) {
            CP_(&c, P_LN1_W)[i] += 1.0;
            CP_(&c, P_LN2_W)[i] += 1.0;
        }
        for (size_t i = 0; i < comp_psize[P_GATE]; i++)
            CP_(&c, P_GATE)[i] *= 2.0;
        for (size_t i = 0; i < (size_t)CB * CC * CIH * CIW; i++)
            c.img[i] = srand1();
        for (size_t i = 0; i < ND; i++)
            c.mask[i] = urand() < p_drop ? 0.0 : 1.0 / (1.0 - p_drop);
        for (int i = 0; i < CN * CE; i++)
            m->noise[i] = 0.2 * nrand();
        m->have_base = 0;
        comp_loss(&c);
        int dropped = 0;
        for (int i = 0; i < CN * CK; i++)
            dropped += m->slot[i] < 0;
        ok = dropped > 0 && route_margin_ok(m->probs, CN, CE, CK, 1);
    }
    assert_true(ok);
    memcpy(m->topk0, m->topk, (size_t)CN * CK * sizeof(int));
    memcpy(m->slot0, m->slot, (size_t)CN * CK * sizeof(int));
    memcpy(m->order0, m->order, (size_t)CN * sizeof(int));
    m->have_base = 1;
    m->route_changes = 0;
    *cp = c;
}

static void comp_free(comp_ctx *c)
{
    double *bufs[] = { c->v5, c->y, c->v6, c->v7, c->v8, c->v10, c->v11, c->v12, c->v13, c->d3, c->d5, c->dy,
                       c->d6, c->d7, c->d8, c->d10, c->d11, c->d12, c->d13, c->v3, c->v2, c->d2, c->mask,
                       c->cols, c->v1, c->d1, c->m5, c->r5, c->m10, c->r10, c->qkv, c->dqkv, c->att, c->datt,
                       c->v14, c->d14, c->v15, c->d15, c->img, c->param, c->grad };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    moe_ctx *m = &c->moe;
    m->wg = m->w1 = m->b1 = m->w2 = m->b2 = NULL;
    moe_free(m);
}

static void test_composition(void **state)
{
    (void)state;
    comp_ctx c;
    comp_setup(&c);
    comp_backward(&c);
    for (size_t i = 0; i < c.nparam; i++)
        assert_false(isnan(c.grad[i]));
    double *g = vdup(c.grad, c.nparam);
    for (int t = 0; t < N_PT; t++)
        fd_check("whole block", comp_pname[t], comp_loss, &c, CP_(&c, t), g + c.off[t], comp_psize[t]);
    if (c.moe.route_changes)
        fail_msg("whole block: %ld perturbed forward passes routed differently", c.moe.route_changes);
    free(g);
    comp_free(&c);
}

/* ---- threads ------------------------------------------------------------------------------- */

/* The checks above run on one thread. Each kernel splits its work so that
 * every output element is computed by one thread in the same order, so
 * the threaded results must be the same to the bit: the linear layer above
 * mm_*'s threshold (rows not a multiple of the blocks of 8, an uneven
 * split), and the whole block's forward and backward pass. */
static void test_threads(void **state)
{
    (void)state;
#ifndef _OPENMP
    print_message("built without OpenMP: nothing to compare\n");
    skip();
#else
    const int nthreads[2] = { 1, 4 };
    double *res[2][4];
    comp_ctx c;
    comp_setup(&c);
    rng_seed(14);
    const int M = 41, K = 40, N = 43;
    double *inp = vrand((size_t)M * K, 1.0), *w = vrand((size_t)N * K, 1.0), *b = vrand((size_t)N, 1.0),
           *dout = vrand((size_t)M * N, 1.0), *junk = vrand((size_t)M * K, 1.0);
    for (int r = 0; r < 2; r++) {
        omp_set_num_threads(nthreads[r]);
        comp_backward(&c);
        res[r][0] = vdup(c.grad, c.nparam);
        res[r][1] = vnew((size_t)M * N);
        linear_forward(res[r][1], inp, w, b, M, K, N);
        res[r][2] = vdup(junk, (size_t)M * K);
        res[r][3] = vnew((size_t)N * K + N);
        linear_backward(res[r][2], res[r][3], res[r][3] + (size_t)N * K, dout, inp, w, M, K, N, 1);
    }
    omp_set_num_threads(1);
    const size_t n[4] = { c.nparam, (size_t)M * N, (size_t)M * K, (size_t)N * K + N };
    static const char *const what[4] = { "whole block gradients", "linear out", "linear dinp", "linear dw, db" };
    for (int k = 0; k < 4; k++) {
        expect_same("threads", what[k], res[1][k], res[0][k], n[k]);
        free(res[0][k]), free(res[1][k]);
    }
    free(inp), free(w), free(b), free(dout), free(junk);
    comp_free(&c);
#endif
}

/* The same for the hierarchical models' threaded kernels, split over
 * samples or grid rows (uneven splits: 5 samples, 3 x 4 grid rows, on 4
 * threads): conv_col2im (both layouts, acc 0 and 1), window_permute (both
 * ways) and global_window_qkv_backward. */
static void test_threads_hier(void **state)
{
    (void)state;
#ifndef _OPENMP
    print_message("built without OpenMP: nothing to compare\n");
    skip();
#else
    enum { NRES = 7 };
    const int nthreads[2] = { 1, 4 };
    const int B = 5, C = 3, H = 8, W = 6, K = 3, GB = 3, GH = 4, GW = 6, WS = 2, D = 5;
    const int NW = (GH / WS) * (GW / WS), WT = WS * WS;
    const size_t nimg = (size_t)B * C * H * W, ncols2 = (size_t)B * (H / 2) * (W / 2) * C * K * K,
                 ncols1 = (size_t)B * H * W * C * K * K, ngrid = (size_t)GB * GH * GW * D,
                 nq = (size_t)B * WT * D, nkv = (size_t)B * GH * GW * 2 * D, nqkv = (size_t)B * NW * WT * 3 * D;
    rng_seed(30);
    double *cols2 = vrand(ncols2, 1.0), *cols1 = vrand(ncols1, 1.0), *junk = vrand(nimg, 1.0),
           *grid = vrand(ngrid, 1.0), *win = vrand(ngrid, 1.0), *gjunk = vrand(ngrid, 1.0),
           *dqkv = vrand(nqkv, 1.0);
    double *res[2][NRES];
    const size_t n[NRES] = { nimg, nimg, nimg, ngrid, ngrid, nq, nkv };
    static const char *const what[NRES] = { "conv_col2im", "conv_col2im (acc)", "conv_col2im (nhwc, acc)",
                                            "window_permute (to windows, acc)", "window_permute (back)",
                                            "global_window_qkv_backward dq", "global_window_qkv_backward dkv" };
    for (int r = 0; r < 2; r++) {
        omp_set_num_threads(nthreads[r]);
        res[r][0] = vnan(nimg);
        conv_col2im(res[r][0], cols2, B, C, H, W, K, 2, K / 2, 0, 0);
        res[r][1] = vdup(junk, nimg);
        conv_col2im(res[r][1], cols2, B, C, H, W, K, 2, K / 2, 0, 1);
        res[r][2] = vdup(junk, nimg);
        conv_col2im(res[r][2], cols1, B, C, H, W, K, 1, K / 2, 1, 1);
        res[r][3] = vdup(gjunk, ngrid);
        window_permute(res[r][3], grid, GB, GH, GW, WS, D, 1, 1);
        res[r][4] = vnan(ngrid);
        window_permute(res[r][4], win, GB, GH, GW, WS, D, 0, 0);
        res[r][5] = vnan(nq);
        res[r][6] = vnan(nkv);
        global_window_qkv_backward(res[r][5], res[r][6], dqkv, B, GH, GW, WS, D);
    }
    omp_set_num_threads(1);
    for (int k = 0; k < NRES; k++) {
        expect_same("threads", what[k], res[1][k], res[0][k], n[k]);
        free(res[0][k]), free(res[1][k]);
    }
    free(cols2), free(cols1), free(junk), free(grid), free(win), free(gjunk), free(dqkv);
#endif
}

/* ---- optimizers --------------------------------------------------------------------------- */

/* torch.optim.AdamW (amsgrad off), one tensor, written as PyTorch's
 * _single_tensor_adamw does it */
static void ref_adamw(double *p, const double *g, double *m, double *v, size_t n, double lr, double b1, double b2,
                      double eps, double wd, int t)
{
    const double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
    for (size_t i = 0; i < n; i++) {
        p[i] *= 1.0 - lr * wd;
        m[i] += (g[i] - m[i]) * (1.0 - b1); /* lerp */
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        const double denom = sqrt(v[i]) / sqrt(bc2) + eps;
        p[i] -= (lr / bc1) * m[i] / denom;
    }
}

/* torch.optim.SGD, dampening 0: the buffer starts as a copy of the first
 * step's gradient (weight decay included) */
static void ref_sgd(double *p, const double *g, double *buf, int *have_buf, size_t n, double lr, double mu,
                    int nesterov, double wd)
{
    for (size_t i = 0; i < n; i++) {
        double d = g[i] + wd * p[i];
        if (mu != 0.0) {
            buf[i] = *have_buf ? mu * buf[i] + d : d;
            d = nesterov ? d + mu * buf[i] : buf[i];
        }
        p[i] -= lr * d;
    }
    *have_buf = 1;
}

static void expect_close(const char *what, int step, const double *got, const double *want, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(fabs(got[i] - want[i]) <= 1e-13 * (1.0 + fabs(want[i]))))
            fail_msg("%s, step %d: [%zu] is %.17g, PyTorch's formula gives %.17g", what, step, i, got[i], want[i]);
}

static void test_optimizers(void **state)
{
    (void)state;
    enum { n = 16, steps = 6 };
    rng_seed(13);
    static const double wds[] = { 0.0, 0.05 };
    for (int w = 0; w < 2; w++) {
        double p[n], m[n] = { 0 }, v[n] = { 0 }, rp[n], rm[n] = { 0 }, rv[n] = { 0 }, g[n];
        for (int i = 0; i < n; i++)
            p[i] = rp[i] = srand1();
        for (int t = 1; t <= steps; t++) {
            const double lr = 1e-2 * (1.0 + 0.1 * t); /* a schedule */
            for (int i = 0; i < n; i++)
                g[i] = srand1() * (i % 4 == 0 ? 1e-3 : 1.0);
            adamw_update(p, g, m, v, n, lr, 0.9, 0.999, 1e-8, wds[w], t);
            ref_adamw(rp, g, rm, rv, n, lr, 0.9, 0.999, 1e-8, wds[w], t);
            expect_close("adamw p", t, p, rp, n);
            expect_close("adamw m", t, m, rm, n);
            expect_close("adamw v", t, v, rv, n);
        }
    }
    static const double mus[] = { 0.0, 0.9 };
    for (int w = 0; w < 2; w++)
        for (int mi = 0; mi < 2; mi++)
            for (int nes = 0; nes < 2; nes++) {
                if (mus[mi] == 0.0 && nes)
                    continue;
                double p[n], buf[n], rp[n], rbuf[n], g[n];
                int have = 0;
                for (int i = 0; i < n; i++) {
                    p[i] = rp[i] = srand1();
                    buf[i] = 1e30; /* t == 1 must not read it */
                    rbuf[i] = 0.0;
                }
                for (int t = 1; t <= steps; t++) {
                    const double lr = 0.1 / t;
                    for (int i = 0; i < n; i++)
                        g[i] = srand1();
                    sgd_update(p, g, buf, n, lr, mus[mi], nes, wds[w], t);
                    ref_sgd(rp, g, rbuf, &have, n, lr, mus[mi], nes, wds[w]);
                    expect_close(nes ? "sgd nesterov p" : "sgd p", t, p, rp, n);
                    if (mus[mi] != 0.0)
                        expect_close("sgd momentum buffer", t, buf, rbuf, n);
                    else
                        for (int i = 0; i < n; i++) /* no momentum: the buffer is not touched */
                            assert_true(buf[i] == 1e30);
                }
            }
}

/* one test per MoE configuration, named after it */
_Static_assert(sizeof moe_cfgs / sizeof moe_cfgs[0] == 10, "a MOE_TEST line per configuration in main");
#define MOE_TEST(i) { moe_cfgs[i].name, test_moe, NULL, NULL, (void *)&moe_cfgs[i] }

/* moecc sizes the CUDA arenas, and checks their rows, with its own copy
 * of the capacity formula (compiler/sema.c); the generated code computes it with ops.h's (and
 * kernels.cuh's, held to ops.h's by make check-cuda): every shape agrees. */
static void test_moe_capacity_compiler(void **state)
{
    (void)state;
    static const double factors[] = { 0.01, 0.5, 1.0, 1.25, 1.5, 2.0, 3.3333, 8.0 };
    int shapes = 0;
    for (int N = 1; N <= 4096; N = N < 70 ? N + 1 : N * 3 / 2)
        for (int E = 1; E <= 64; E = E < 10 ? E + 1 : E * 2)
            for (int K = 1; K <= E && K <= 4; K++)
                for (size_t f = 0; f < sizeof factors / sizeof factors[0]; f++)
                    for (int dropless = 0; dropless <= 1; dropless++) {
                        const int a = mc_moe_capacity(N, E, K, factors[f], dropless);
                        const int b = moe_capacity(N, E, K, factors[f], dropless);
                        if (a != b)
                            fail_msg("capacity of N %d, E %d, K %d, factor %g, dropless %d: moecc %d, ops.h %d", N,
                                     E, K, factors[f], dropless, a, b);
                        shapes++;
                    }
    assert_true(shapes > 10000);
}

int main(void)
{
#ifdef _OPENMP
    /* one thread but in test_threads: a parallel region costs more than
     * these kernels, and much more on a busy machine */
    omp_set_num_threads(1);
#endif
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_activations),
        cmocka_unit_test(test_residual),
        cmocka_unit_test(test_patch_embed),
        cmocka_unit_test(test_patch_embed_input),
        cmocka_unit_test(test_conv_stem),
        cmocka_unit_test(test_conv_adjoint),
        cmocka_unit_test(test_transpose_rc),
        cmocka_unit_test(test_window_permute),
        cmocka_unit_test(test_grid_pool),
        cmocka_unit_test(test_global_window_qkv),
        cmocka_unit_test(test_merge2x2),
        cmocka_unit_test(test_acc_flags),
        cmocka_unit_test(test_cls_pos),
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_op),
        cmocka_unit_test(test_mlp_op),
        cmocka_unit_test(test_pool),
        cmocka_unit_test(test_l2norm),
        cmocka_unit_test(test_dropout),
        cmocka_unit_test(test_softmax_xent),
        cmocka_unit_test(test_moe_route_ties),
        cmocka_unit_test(test_moe_capacity_compiler),
        cmocka_unit_test(test_moe_load),
        MOE_TEST(0),
        MOE_TEST(1),
        MOE_TEST(2),
        MOE_TEST(3),
        MOE_TEST(4),
        MOE_TEST(5),
        MOE_TEST(6),
        MOE_TEST(7),
        MOE_TEST(8),
        MOE_TEST(9),
        cmocka_unit_test(test_composition),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_threads_hier),
        cmocka_unit_test(test_optimizers),
    };
    return cmocka_run_group_tests(tests, NULL, print_report);
}
