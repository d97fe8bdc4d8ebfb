/* test_sema.c: the checked model sema (compiler/sema.c) builds: constant
 * arithmetic, defaults, the op list with shapes, tensor names and shapes,
 * parameter counts worked out by hand, MoE block selection, dataset maps,
 * the stochastic-depth schedule, routers, training and parallel settings;
 * and a few of its messages (tests/golden has the rest, word for word). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ast.h"
#include "model.h"
#include "schema.h"

/* ---- helpers --------------------------------------------------------------- */

typedef struct checked {
    mc_model m;
    int errors, warnings;
    char *msgs;
} checked;

/* Parse and check text; the model is built even when there are errors. */
static void check_text(checked *c, const char *text, bool werror)
{
    memset(c, 0, sizeof *c);
    mc_source *src = mc_source_from_string("s.moe", text, strlen(text));
    size_t size = 0;
    FILE *f = open_memstream(&c->msgs, &size);
    assert_non_null(f);
    mc_diag d;
    mc_diag_init(&d, src, f);
    d.werror = werror;
    d.max_errors = 0;
    mc_program prog;
    int rc = mc_parse(src, &d, &prog);
    if (rc != 0) {
        mc_diag_flush(&d);
        fclose(f);
        fail_msg("syntax errors in a sema test:\n%s", c->msgs);
    }
    rc = mc_sema(&prog, &d, &c->m);
    c->errors = d.errors;
    c->warnings = d.warnings;
    assert_int_equal(rc != 0, d.errors > 0);
    mc_diag_flush(&d);
    fclose(f);
    mc_program_free(&prog);
    mc_source_free(src);
}

static void check_ok(checked *c, const char *text)
{
    check_text(c, text, false);
    if (c->errors || c->warnings)
        fail_msg("unexpected messages for:\n%s\n%s", text, c->msgs);
}

static void checked_free(checked *c)
{
    mc_model_free(&c->m);
    free(c->msgs);
}

static bool contains(const char *haystack, const char *needle)
{
    return haystack && strstr(haystack, needle) != NULL;
}

/* The i-th op of kind k (from 0), or NULL. */
static const mc_op *nth_op(const mc_model *m, mc_op_kind k, int i)
{
    for (int j = 0; j < m->nops; j++)
        if (m->ops[j].kind == k && i-- == 0)
            return &m->ops[j];
    return NULL;
}

static const mc_tensor *find_tensor(const mc_model *m, const char *name)
{
    for (int i = 0; i < m->nops; i++)
        for (int j = 0; j < m->ops[i].ntensors; j++)
            if (strcmp(m->ops[i].tensors[j].name, name) == 0)
                return &m->ops[i].tensors[j];
    return NULL;
}

/* The tensor exists with this shape (up to 4 dims; 0 ends the list). */
static void assert_tensor(const mc_model *m, const char *name, int64_t d0, int64_t d1, int64_t d2, int64_t d3)
{
    const mc_tensor *t = find_tensor(m, name);
    if (!t)
        fail_msg("no tensor %s", name);
    const int64_t want[4] = { d0, d1, d2, d3 };
    int ndim = 0;
    int64_t numel = 1;
    while (ndim < 4 && want[ndim] > 0)
        numel *= want[ndim++];
    assert_int_equal(t->ndim, ndim);
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != want[i])
            fail_msg("%s: dim %d is %lld, expected %lld", name, i, (long long)t->shape[i], (long long)want[i]);
    assert_int_equal(t->numel, numel);
}

/* A dataset and the model around a body of layers. */
#define DATASET "dataset a(format = idx, path = \"a\", classes = 3, resize = bilinear)\n"

/* ---- constants and arithmetic ------------------------------------------------- */

static void test_constants(void **state)
{
    (void)state;
    checked c;
    check_ok(&c, "const W = 4 * 2\n"            /* 8 */
                 "const H = W * 2 + W / 4\n"    /* 18: 8 / 4 is exact, so an integer */
                 "const LR = 3 / 4 * 1e-2\n"    /* 0.0075: 3 / 4 is inexact, so a number */
                 "const STEPS = -(-100) * 3 % 7 + 2_000\n" /* (300 % 7) + 2000 = 2006 */
                 "const NEG = -7 % 3\n"         /* C's remainder: -1 */
                 DATASET
                 "model m {\n"
                 "    input(channels = 1, height = 8, width = 8)\n"
                 "    patch_embed(patch = 4, dim = W)\n"
                 "    mlp(hidden = H)\n"
                 "    pool()\n"
                 "    classifier()\n"
                 "}\n"
                 "train {\n"
                 "    steps = STEPS\n"
                 "    optimizer = adamw(lr = LR)\n"
                 "    seed = NEG + 1 + 1\n"
                 "}\n");
    const mc_op *mlp = nth_op(&c.m, OP_MLP, 0);
    assert_non_null(mlp);
    assert_int_equal(mlp->u.mlp.hidden, 18);
    assert_int_equal(mlp->in.dim, 8);
    assert_int_equal(c.m.train.steps, 2006);
    assert_float_equal(c.m.train.lr, 0.0075, 1e-15);
    assert_int_equal(c.m.train.seed, 1);
    checked_free(&c);
}

static void test_constant_errors(void **state)
{
    (void)state;
    static const struct { const char *text; const char *want; } cases[] = {
        { "const A = 1 / 0", "s.moe:1:13: error: division by zero in constant expression" },
        { "const A = 5 % 0", "error: division by zero in constant expression" },
        { "const A = 1.5 / 0", "error: division by zero in constant expression" },
        { "const A = 9223372036854775807 + 1", "error: integer overflow in constant expression" },
        { "const A = -9223372036854775807 - 2", "error: integer overflow in constant expression" },
        { "const A = 4294967296 * 4294967296", "error: integer overflow in constant expression" },
        { "const A = 1e308 * 10", "error: number out of range in constant expression" },
        { "const A = 1.5 % 2", "error: '%' needs integers" },
        { "const A = \"s\" + 1", "s.moe:1:11: error: '+' needs numbers, found a string" },
        { "const A = -true", "error: '-' needs a number, found a boolean" },
        { "const A = B + 1", "s.moe:1:11: error: unknown name 'B'" },
        { "const A = [1, 2]", "error: a constant is a number, a string or a boolean, not a list" },
        { "const A = 1\nconst A = 2", "s.moe:2:7: error: constant 'A' is defined twice" },
        { "const model = 1", "error: 'model' names a construct of the language and cannot be a constant" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        checked c;
        check_text(&c, cases[i].text, false);
        if (!contains(c.msgs, cases[i].want))
            fail_msg("for:\n%s\nexpected:\n%s\nin:\n%s", cases[i].text, cases[i].want, c.msgs);
        checked_free(&c);
    }
}

/* ---- defaults ---------------------------------------------------------------- */

static void test_defaults(void **state)
{
    (void)state;
    checked c;
    check_ok(&c, "dataset a(format = idx, path = \"fashion-mnist\", classes = 10)\n"
                 "model m {\n"
                 "    input(channels = 1, height = 28, width = 28)\n"
                 "    patch_embed(patch = 7, dim = 16)\n"
                 "    layernorm()\n"
                 "    attention(heads = 2)\n"
                 "    moe(experts = 4, hidden = 32)\n"
                 "    pool()\n"
                 "    classifier()\n"
                 "}\n");
    const mc_model *m = &c.m;
    /* train { } */
    assert_int_equal(m->train.batch, 128);
    assert_int_equal(m->train.steps, 1000);
    assert_int_equal(m->train.epochs, 0);
    assert_int_equal(m->train.optimizer, OPT_ADAMW);
    assert_float_equal(m->train.lr, 1e-3, 1e-18);
    assert_float_equal(m->train.beta1, 0.9, 1e-15);
    assert_float_equal(m->train.beta2, 0.999, 1e-15);
    assert_float_equal(m->train.eps, 1e-8, 1e-20);
    assert_float_equal(m->train.weight_decay, 0.05, 1e-15);
    assert_int_equal(m->train.schedule, SCHED_CONSTANT);
    assert_int_equal(m->train.warmup, 0);
    assert_int_equal(m->train.precision, PREC_BF16);
    assert_float_equal(m->train.label_smoothing, 0, 0);
    assert_float_equal(m->train.clip_grad, 0, 0);
    assert_int_equal(m->train.eval_every, 500);
    assert_int_equal(m->train.checkpoint_every, 0);
    assert_int_equal(m->train.log_every, 50);
    assert_int_equal(m->train.seed, 0);
    assert_int_equal(m->train.crop_padding, 0);
    assert_false(m->train.flip);
    /* parallel() */
    assert_int_equal(m->parallel.data, 1);
    assert_int_equal(m->parallel.expert, 1);
    /* the dataset */
    assert_int_equal(m->ndatasets, 1);
    const mc_dataset *ds = &m->datasets[0];
    assert_string_equal(ds->name, "a");
    assert_int_equal(ds->format, FMT_IDX);
    assert_string_equal(ds->path, "fashion-mnist");
    assert_int_equal(ds->channels, 1);
    assert_int_equal(ds->height, 28);
    assert_int_equal(ds->width, 28);
    assert_int_equal(ds->classes, 10);
    assert_null(ds->labels);
    assert_float_equal(ds->weight, 1.0, 0);
    assert_float_equal(ds->test_split, 0, 0);
    assert_float_equal(ds->max_value, 255, 0);
    for (int c = 0; c < 3; c++) {
        assert_float_equal(ds->mean[c], 0.5, 0);
        assert_float_equal(ds->std[c], 0.5, 0);
    }
    assert_int_equal(ds->nmean, 1);
    assert_int_equal(ds->nstd, 1);
    assert_int_equal(ds->resize, 0);
    assert_string_equal(ds->train_images, "train-images-idx3-ubyte.gz");
    assert_string_equal(ds->train_labels, "train-labels-idx1-ubyte.gz");
    assert_string_equal(ds->test_images, "t10k-images-idx3-ubyte.gz");
    assert_string_equal(ds->test_labels, "t10k-labels-idx1-ubyte.gz");
    /* the layers */
    assert_float_equal(nth_op(m, OP_LAYERNORM, 0)->u.ln.eps, 1e-5, 1e-20);
    const mc_op *attn = nth_op(m, OP_ATTENTION, 0);
    assert_true(attn->u.attn.qkv_bias);
    assert_float_equal(attn->u.attn.dropout, 0, 0);
    assert_int_equal(attn->u.attn.head_dim, 8);
    const mc_moe *moe = &nth_op(m, OP_MOE, 0)->u.moe;
    assert_int_equal(moe->top_k, 1);
    assert_int_equal(moe->act, ACT_GELU);
    assert_float_equal(moe->capacity_factor, 1.25, 0);
    assert_false(moe->dropless);
    assert_false(moe->batch_priority);
    assert_true(moe->normalize_gates);
    assert_true(moe->fp32_gate);
    assert_float_equal(moe->gate_noise, 0, 0);
    assert_int_equal(moe->router, ROUTER_SOFTMAX_TOPK);
    assert_float_equal(moe->balance_loss, 0.01, 1e-15);
    assert_float_equal(moe->importance_loss, 0, 0);
    assert_float_equal(moe->z_loss, 0, 0);
    assert_float_equal(moe->dataset_loss, 0, 0);
    assert_null(moe->dataset_expert);
    const mc_op *pool = nth_op(m, OP_POOL, 0);
    assert_int_equal(pool->u.pool.kind, POOL_MEAN);
    const mc_op *cls = nth_op(m, OP_CLASSIFIER, 0);
    assert_int_equal(cls->u.cls.heads, HEADS_SHARED);
    assert_int_equal(cls->u.cls.classes, 10); /* the largest dataset's */
    assert_int_equal(m->classes, 10);
    checked_free(&c);
}

/* ---- a tiny ViT-MoE, by hand ------------------------------------------------------ */

static const char tiny_vit_moe[] =
    DATASET
    "model tiny {\n"
    "    input(channels = 1, height = 8, width = 8)\n"
    "    patch_embed(patch = 4, dim = 8)\n"            /* 2 x 2 = 4 tokens of 8 */
    "    cls_token()\n"                                /* 5 tokens */
    "    pos_embed()\n"
    "    repeat(2, moe_blocks = every(2, start = 1)) {\n"  /* block 1 only is MoE */
    "        residual {\n"
    "            layernorm()\n"
    "            attention(heads = 2)\n"
    "        }\n"
    "        residual {\n"
    "            layernorm()\n"
    "            moe(experts = 2, hidden = 16)\n"
    "        }\n"
    "    }\n"
    "    layernorm()\n"
    "    pool(kind = cls)\n"
    "    classifier()\n"
    "}\n";

static void test_tiny_vit_moe(void **state)
{
    (void)state;
    checked c;
    check_ok(&c, tiny_vit_moe);
    const mc_model *m = &c.m;
    assert_string_equal(m->name, "tiny");
    assert_string_equal(m->source_path, "s.moe");
    assert_int_equal(m->input_c, 1);
    assert_int_equal(m->input_h, 8);
    assert_int_equal(m->input_w, 8);

    /* the op list, with the block each op belongs to */
    static const struct { mc_op_kind kind; int block; } ops[] = {
        { OP_INPUT, -1 }, { OP_PATCH_EMBED, -1 }, { OP_CLS_TOKEN, -1 }, { OP_POS_EMBED, -1 },
        { OP_RESIDUAL_BEGIN, 0 }, { OP_LAYERNORM, 0 }, { OP_ATTENTION, 0 }, { OP_RESIDUAL_END, 0 },
        { OP_RESIDUAL_BEGIN, 0 }, { OP_LAYERNORM, 0 }, { OP_MLP, 0 }, { OP_RESIDUAL_END, 0 },
        { OP_RESIDUAL_BEGIN, 1 }, { OP_LAYERNORM, 1 }, { OP_ATTENTION, 1 }, { OP_RESIDUAL_END, 1 },
        { OP_RESIDUAL_BEGIN, 1 }, { OP_LAYERNORM, 1 }, { OP_MOE, 1 }, { OP_RESIDUAL_END, 1 },
        { OP_LAYERNORM, -1 }, { OP_POOL, -1 }, { OP_CLASSIFIER, -1 },
    };
    int nops = (int)(sizeof ops / sizeof ops[0]);
    assert_int_equal(m->nops, nops);
    for (int i = 0; i < nops; i++) {
        if (m->ops[i].kind != ops[i].kind || m->ops[i].block != ops[i].block)
            fail_msg("op %d is %s in block %d, expected %s in block %d", i, mc_op_name(m->ops[i].kind),
                     m->ops[i].block, mc_op_name(ops[i].kind), ops[i].block);
    }
    assert_int_equal(m->blocks, 2);
    assert_int_equal(m->moe_layers, 1);
    /* a residual end knows its beginning */
    assert_int_equal(m->ops[7].u.res.begin, 4);
    assert_int_equal(m->ops[19].u.res.begin, 16);

    /* shapes */
    assert_int_equal(m->ops[0].out.kind, SHAPE_IMAGE);
    assert_int_equal(m->ops[0].out.c, 1);
    assert_int_equal(m->ops[0].out.h, 8);
    const mc_shape *pe = &m->ops[1].out;
    assert_int_equal(pe->kind, SHAPE_TOKENS);
    assert_int_equal(pe->tokens, 4);
    assert_int_equal(pe->dim, 8);
    assert_int_equal(pe->gh, 2);
    assert_int_equal(pe->gw, 2);
    assert_false(pe->cls);
    const mc_shape *ct = &m->ops[2].out;
    assert_int_equal(ct->tokens, 5);
    assert_true(ct->cls);
    assert_int_equal(ct->gh, 2); /* the grid leaves the class token out */
    assert_int_equal(m->ops[18].in.tokens, 5);
    assert_int_equal(m->ops[18].out.dim, 8);
    assert_int_equal(m->ops[21].out.kind, SHAPE_VECTOR);
    assert_int_equal(m->ops[21].out.dim, 8);
    assert_int_equal(m->ops[22].out.kind, SHAPE_LOGITS);
    assert_int_equal(m->ops[22].out.dim, 3);

    /* tensors: names in PyTorch's state_dict style, and shapes */
    assert_tensor(m, "patch_embed.proj.weight", 8, 1, 4, 4);
    assert_tensor(m, "patch_embed.proj.bias", 8, 0, 0, 0);
    assert_tensor(m, "cls_token", 1, 1, 8, 0);
    assert_tensor(m, "pos_embed", 1, 5, 8, 0);
    assert_tensor(m, "blocks.0.norm1.weight", 8, 0, 0, 0);
    assert_tensor(m, "blocks.0.norm1.bias", 8, 0, 0, 0);
    assert_tensor(m, "blocks.0.attn.qkv.weight", 24, 8, 0, 0);
    assert_tensor(m, "blocks.0.attn.qkv.bias", 24, 0, 0, 0);
    assert_tensor(m, "blocks.0.attn.proj.weight", 8, 8, 0, 0);
    assert_tensor(m, "blocks.0.attn.proj.bias", 8, 0, 0, 0);
    assert_tensor(m, "blocks.0.norm2.weight", 8, 0, 0, 0);
    assert_tensor(m, "blocks.0.mlp.fc1.weight", 16, 8, 0, 0); /* block 0 is dense */
    assert_tensor(m, "blocks.0.mlp.fc1.bias", 16, 0, 0, 0);
    assert_tensor(m, "blocks.0.mlp.fc2.weight", 8, 16, 0, 0);
    assert_tensor(m, "blocks.0.mlp.fc2.bias", 8, 0, 0, 0);
    assert_null(find_tensor(m, "blocks.0.moe.gate.weight"));
    assert_tensor(m, "blocks.1.attn.qkv.weight", 24, 8, 0, 0);
    assert_tensor(m, "blocks.1.moe.gate.weight", 2, 8, 0, 0);
    assert_tensor(m, "blocks.1.moe.experts.fc1.weight", 2, 16, 8, 0);
    assert_tensor(m, "blocks.1.moe.experts.fc1.bias", 2, 16, 0, 0);
    assert_tensor(m, "blocks.1.moe.experts.fc2.weight", 2, 8, 16, 0);
    assert_tensor(m, "blocks.1.moe.experts.fc2.bias", 2, 8, 0, 0);
    assert_null(find_tensor(m, "blocks.1.mlp.fc1.weight"));
    assert_tensor(m, "norm.weight", 8, 0, 0, 0);
    assert_tensor(m, "norm.bias", 8, 0, 0, 0);
    assert_tensor(m, "head.weight", 3, 8, 0, 0);
    assert_tensor(m, "head.bias", 3, 0, 0, 0);
    assert_true(find_tensor(m, "blocks.1.moe.experts.fc1.weight")->expert);
    assert_false(find_tensor(m, "blocks.1.moe.gate.weight")->expert);
    /* weight decay: not on norms, biases and tokens */
    assert_true(find_tensor(m, "blocks.0.norm1.weight")->no_decay);
    assert_true(find_tensor(m, "head.bias")->no_decay);
    assert_true(find_tensor(m, "blocks.1.moe.experts.fc1.bias")->no_decay);
    assert_false(find_tensor(m, "head.weight")->no_decay);
    assert_false(find_tensor(m, "blocks.1.moe.experts.fc2.weight")->no_decay);
    assert_int_equal(find_tensor(m, "norm.weight")->init, INIT_ONES);
    assert_int_equal(find_tensor(m, "norm.bias")->init, INIT_ZEROS);
    assert_int_equal(find_tensor(m, "head.weight")->init, INIT_TRUNC_NORMAL);

    /* parameter counts, by hand:
     *   patch_embed  8*1*4*4 + 8                  =  136
     *   cls_token    8                            =    8
     *   pos_embed    5*8                          =   40
     *   per block    norms 2 * 16, attention qkv 24*8 + 24 = 216 and
     *                proj 8*8 + 8 = 72            =  320   (x 2 blocks)
     *   block 0 MLP  fc1 16*8 + 16 = 144, fc2 8*16 + 8 = 136  =  280
     *   block 1 MoE  gate 2*8 = 16, experts 2 * 280 = 560    =  576
     *   final norm   16, head 3*8 + 3 = 27        =   43
     *   total        136 + 8 + 40 + 640 + 280 + 576 + 43    = 1723 */
    assert_int_equal(m->ops[1].params, 136);
    assert_int_equal(m->ops[2].params, 8);
    assert_int_equal(m->ops[3].params, 40);
    assert_int_equal(m->ops[5].params, 16);
    assert_int_equal(m->ops[6].params, 288);
    assert_int_equal(m->ops[10].params, 280);
    assert_int_equal(m->ops[18].params, 576);
    assert_int_equal(m->ops[22].params, 27);
    assert_int_equal(m->params, 1723);
    int64_t experts = 0;
    for (int i = 0; i < m->nops; i++)
        for (int j = 0; j < m->ops[i].ntensors; j++)
            if (m->ops[i].tensors[j].expert)
                experts += m->ops[i].tensors[j].numel;
    assert_int_equal(experts, 560);
    assert_true(m->flops > 0);
    checked_free(&c);
}

/* ---- which blocks are MoE -------------------------------------------------------------- */

/* The blocks of repeat(depth, moe_blocks = select) whose moe() is an MoE,
 * as a string of 'E' (MoE) and 'D' (dense MLP). */
static void moe_pattern(const char *select, int depth, const char *want)
{
    char text[1024];
    snprintf(text, sizeof text,
             DATASET "model m {\n input(channels = 1, height = 8, width = 8)\n patch_embed(patch = 4, dim = 8)\n"
             " repeat(%d%s%s) { moe(experts = 2, hidden = 8) }\n pool()\n classifier()\n}\n",
             depth, select ? ", moe_blocks = " : "", select ? select : "");
    checked c;
    check_ok(&c, text);
    char got[64] = "";
    for (int i = 0; i < c.m.nops; i++) {
        if (c.m.ops[i].kind == OP_MOE)
            strcat(got, "E");
        else if (c.m.ops[i].kind == OP_MLP)
            strcat(got, "D");
    }
    if (strcmp(got, want) != 0)
        fail_msg("moe_blocks = %s over %d blocks: %s, expected %s", select ? select : "(default)", depth, got,
                 want);
    int moe = 0;
    for (const char *p = want; *p; p++)
        moe += *p == 'E';
    assert_int_equal(c.m.moe_layers, moe);
    checked_free(&c);
}

static void test_moe_blocks(void **state)
{
    (void)state;
    moe_pattern(NULL, 4, "EEEE");
    moe_pattern("all", 4, "EEEE");
    moe_pattern("none", 4, "DDDD");
    moe_pattern("every(2)", 5, "EDEDE");
    moe_pattern("every(2, start = 1)", 6, "DEDEDE");
    moe_pattern("every(n = 3, start = 2)", 9, "DDEDDEDDE");
    moe_pattern("every(1)", 3, "EEE");
    moe_pattern("[0, 3]", 4, "EDDE");
    moe_pattern("[2, 1]", 4, "DEED");
    moe_pattern("[]", 2, "DD");

    /* dense blocks name their layer mlp, MoE blocks moe */
    checked c;
    check_ok(&c, DATASET "model m {\n input(channels = 1, height = 8, width = 8)\n patch_embed(patch = 4, dim = 8)\n"
                         " repeat(2, moe_blocks = [1]) { moe(experts = 2, hidden = 8) }\n pool()\n classifier()\n}\n");
    assert_non_null(find_tensor(&c.m, "blocks.0.mlp.fc1.weight"));
    assert_non_null(find_tensor(&c.m, "blocks.1.moe.experts.fc1.weight"));
    checked_free(&c);
}

/* ---- datasets and the routing map ---------------------------------------------------------- */

static const char three_datasets[] =
    "dataset fmnist(format = idx, path = \"fashion-mnist\", classes = 10, weight = 0.5)\n"
    "dataset mnist(format = mnist_json, path = \"mnist\", classes = 10, weight = 0.3, test_split = 0.2)\n"
    "dataset digits(format = csv, path = \"digits.csv.gz\", size = 8, max_value = 16, resize = bilinear,\n"
    "               labels = [\"0\", \"1\", \"2\", \"3\", \"4\", \"5\", \"6\", \"7\", \"8\", \"9\"],\n"
    "               weight = 0.2, test_split = 0.25)\n";

static void test_dataset_map(void **state)
{
    (void)state;
    char text[4096];
    snprintf(text, sizeof text,
             "%smodel m {\n input(channels = 1, height = 28, width = 28)\n patch_embed(patch = 7, dim = 8)\n"
             " moe(experts = 2, hidden = 8, router = dataset_aware(map = {digits: 1, fmnist: 0, mnist: 1}))\n"
             " pool()\n classifier(heads = per_dataset)\n}\n",
             three_datasets);
    checked c;
    check_ok(&c, text);
    const mc_model *m = &c.m;
    assert_int_equal(m->ndatasets, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(m->datasets[i].index, i);
    assert_string_equal(m->datasets[2].name, "digits");
    assert_int_equal(m->datasets[1].format, FMT_MNIST_JSON);
    assert_int_equal(m->datasets[2].format, FMT_CSV);
    assert_int_equal(m->datasets[2].height, 8);
    assert_int_equal(m->datasets[2].resize, 1);
    assert_float_equal(m->datasets[2].max_value, 16, 0);
    assert_float_equal(m->datasets[2].test_split, 0.25, 0);
    assert_float_equal(m->datasets[0].weight, 0.5, 0);
    assert_int_equal(m->datasets[2].classes, 10); /* from the labels */
    assert_string_equal(m->datasets[2].labels[3], "3");
    assert_null(m->datasets[2].labels[10]);

    const mc_moe *moe = &nth_op(m, OP_MOE, 0)->u.moe;
    assert_int_equal(moe->router, ROUTER_DATASET_AWARE);
    assert_non_null(moe->dataset_expert);
    assert_int_equal(moe->dataset_expert[0], 0); /* fmnist */
    assert_int_equal(moe->dataset_expert[1], 1); /* mnist */
    assert_int_equal(moe->dataset_expert[2], 1); /* digits */
    assert_float_equal(moe->dataset_loss, 0.1, 1e-15); /* the default with dataset_aware */

    /* per-dataset heads: one per dataset, in dataset order */
    const mc_op *cls = nth_op(m, OP_CLASSIFIER, 0);
    assert_int_equal(cls->u.cls.heads, HEADS_PER_DATASET);
    assert_int_equal(m->heads, HEADS_PER_DATASET);
    assert_int_equal(cls->ntensors, 6);
    assert_string_equal(cls->tensors[0].name, "heads.fmnist.weight");
    assert_string_equal(cls->tensors[5].name, "heads.digits.bias");
    assert_tensor(m, "heads.mnist.weight", 10, 8, 0, 0);
    assert_int_equal(cls->params, 3 * (10 * 8 + 10));
    checked_free(&c);

    /* the map's mistakes */
    static const struct { const char *map; const char *want; } bad[] = {
        { "{fmnist: 0, mnist: 1}", "error: dataset 'digits' is not mapped to an expert" },
        { "{fmnist: 0, mnist: 1, digits: 2}", "error: expert 2 is out of range: this layer has experts 0 to 1" },
        { "{fmnist: 0, mnist: 1, digit: 1}", "error: unknown dataset 'digit' in the routing map" },
        { "{fmnist: 0, mnist: 1, digits: 1, mnist: 0}", "error: dataset 'mnist' is mapped twice" },
        { "{fmnist: 0, mnist: 1, digits: \"one\"}", "error: an expert index must be an integer, found a string" },
        { "[0, 1]", "error: 'map' must be a map {dataset: expert, ...}, found a list" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text,
                 "%smodel m {\n input(channels = 1, height = 28, width = 28)\n patch_embed(patch = 7, dim = 8)\n"
                 " moe(experts = 2, hidden = 8, router = dataset_aware(map = %s))\n pool()\n classifier()\n}\n",
                 three_datasets, bad[i].map);
        check_text(&c, text, false);
        assert_int_equal(c.errors, 1);
        if (!contains(c.msgs, bad[i].want))
            fail_msg("map = %s: expected '%s' in:\n%s", bad[i].map, bad[i].want, c.msgs);
        checked_free(&c);
    }
}

/* ---- stochastic depth -------------------------------------------------------------------------- */

static void test_drop_path_schedule(void **state)
{
    (void)state;
    checked c;
    /* linear (the default): 0 in the first block of the model, rate in the
     * last, across every repeat */
    check_ok(&c, DATASET "model m {\n input(channels = 1, height = 8, width = 8)\n patch_embed(patch = 4, dim = 8)\n"
                         " repeat(2) { residual { mlp(hidden = 8) drop_path(rate = 0.4) } }\n"
                         " repeat(3) { residual { mlp(hidden = 8) drop_path(rate = 0.4) } }\n"
                         " residual { mlp(hidden = 8) drop_path(rate = 0.3) }\n"
                         " pool()\n classifier()\n}\n");
    static const double linear[] = { 0.0, 0.1, 0.2, 0.3, 0.4 };
    for (int i = 0; i < 5; i++) {
        const mc_op *dp = nth_op(&c.m, OP_DROP_PATH, i);
        assert_non_null(dp);
        assert_int_equal(dp->block, i);
        assert_float_equal(dp->u.drop.p, linear[i], 1e-12);
    }
    /* outside a repeat: the rate as given */
    assert_float_equal(nth_op(&c.m, OP_DROP_PATH, 5)->u.drop.p, 0.3, 1e-12);
    assert_int_equal(c.m.blocks, 5);
    checked_free(&c);

    check_ok(&c, DATASET "model m {\n input(channels = 1, height = 8, width = 8)\n patch_embed(patch = 4, dim = 8)\n"
                         " repeat(3) { residual { mlp(hidden = 8) drop_path(rate = 0.2, schedule = constant) } }\n"
                         " pool()\n classifier()\n}\n");
    for (int i = 0; i < 3; i++)
        assert_float_equal(nth_op(&c.m, OP_DROP_PATH, i)->u.drop.p, 0.2, 1e-12);
    checked_free(&c);
}

/* ---- routers ----------------------------------------------------------------------------------- */

/* The model with one moe(ARGS) layer on 4 tokens of 8. */
static void check_moe(checked *c, const char *args)
{
    char text[1024];
    snprintf(text, sizeof text,
             DATASET "model m {\n input(channels = 1, height = 8, width = 8)\n patch_embed(patch = 4, dim = 8)\n"
             " moe(%s)\n pool()\n classifier()\n}\n",
             args);
    check_text(c, text, false);
}

static void test_routers(void **state)
{
    (void)state;
    checked c;
    const mc_moe *x;

    check_moe(&c, "experts = 4, hidden = 8, router = switch, capacity = 2.0, z_loss = 0.001");
    assert_int_equal(c.errors + c.warnings, 0);
    x = &nth_op(&c.m, OP_MOE, 0)->u.moe;
    assert_int_equal(x->router, ROUTER_SWITCH);
    assert_int_equal(x->top_k, 1);
    assert_float_equal(x->capacity_factor, 2.0, 0);
    assert_float_equal(x->z_loss, 0.001, 1e-15);
    assert_tensor(&c.m, "moe.gate.weight", 4, 8, 0, 0);
    checked_free(&c);

    /* soft: every expert, no capacity, a temperature */
    check_moe(&c, "experts = 4, hidden = 8, router = soft(temperature = 0.5)");
    assert_int_equal(c.errors + c.warnings, 0);
    x = &nth_op(&c.m, OP_MOE, 0)->u.moe;
    assert_int_equal(x->router, ROUTER_SOFT);
    assert_int_equal(x->top_k, 4);
    assert_true(x->dropless);
    assert_float_equal(x->temperature, 0.5, 0);
    checked_free(&c);

    /* cosine: a projection and expert embeddings instead of a gate matrix */
    check_moe(&c, "experts = 4, hidden = 8, top_k = 2, router = cosine(dim = 16)");
    assert_int_equal(c.errors + c.warnings, 0);
    x = &nth_op(&c.m, OP_MOE, 0)->u.moe;
    assert_int_equal(x->router, ROUTER_COSINE);
    assert_int_equal(x->router_dim, 16);
    assert_float_equal(x->temperature, 0.07, 1e-15);
    assert_int_equal(x->top_k, 2);
    assert_tensor(&c.m, "moe.gate.proj.weight", 16, 8, 0, 0);
    assert_tensor(&c.m, "moe.gate.expert_emb", 4, 16, 0, 0);
    assert_null(find_tensor(&c.m, "moe.gate.weight"));
    assert_int_equal(nth_op(&c.m, OP_MOE, 0)->params, 16 * 8 + 4 * 16 + 4 * (8 * 8 + 8 + 8 * 8 + 8));
    checked_free(&c);

    /* attention: learned expert tokens, 64 wide by default */
    check_moe(&c, "experts = 3, hidden = 8, router = attention, act = relu, gate_noise = 1.0, batch_priority = true");
    assert_int_equal(c.errors + c.warnings, 0);
    x = &nth_op(&c.m, OP_MOE, 0)->u.moe;
    assert_int_equal(x->router, ROUTER_ATTENTION);
    assert_int_equal(x->router_dim, 64);
    assert_int_equal(x->act, ACT_RELU);
    assert_float_equal(x->gate_noise, 1.0, 0);
    assert_true(x->batch_priority);
    assert_tensor(&c.m, "moe.gate.query.weight", 64, 8, 0, 0);
    assert_tensor(&c.m, "moe.gate.expert_tokens", 3, 64, 0, 0);
    checked_free(&c);

    check_moe(&c, "experts = 2, hidden = 8, router = expert_choice, capacity = 2.0");
    assert_int_equal(c.errors + c.warnings, 0);
    assert_int_equal(nth_op(&c.m, OP_MOE, 0)->u.moe.router, ROUTER_EXPERT_CHOICE);
    checked_free(&c);

    check_moe(&c, "experts = 2, hidden = 8, router = loss_based(temperature = 2.0), dropless = true");
    assert_int_equal(c.errors + c.warnings, 0);
    x = &nth_op(&c.m, OP_MOE, 0)->u.moe;
    assert_int_equal(x->router, ROUTER_LOSS_BASED);
    assert_float_equal(x->temperature, 2.0, 0);
    assert_true(x->dropless);
    checked_free(&c);

    /* and their mistakes */
    static const struct { const char *args; const char *want; } bad[] = {
        { "experts = 4, hidden = 8, router = switch, top_k = 2", "top_k must be 1" },
        { "experts = 4, hidden = 8, top_k = 5", "error: top_k = 5 exceeds the 4 experts" },
        { "experts = 4, hidden = 8, router = soft, capacity = 1.0", "error: 'capacity' has no meaning with router = soft()" },
        { "experts = 4, hidden = 8, router = expert_choice, top_k = 2", "set capacity, not top_k" },
        { "experts = 4, hidden = 8, dataset_loss = 0.1", "error: dataset_loss needs router = dataset_aware" },
        { "experts = 4, hidden = 8, router = cosin", "error: unknown router 'cosin'" },
        { "experts = 4, hidden = 8, router = cosine(dims = 4)", "error: cosine has no parameter 'dims'" },
        { "experts = 4, hidden = 8, router = dataset_aware", "error: dataset_aware needs 'map'" },
        { "experts = 4, hidden = 8, router = 3", "error: 'router' must be a router, found an expression" },
        { "experts = 0, hidden = 8", "error: 'experts' must be at least 1, found 0" },
        { "hidden = 8", "error: moe needs 'experts'" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        check_moe(&c, bad[i].args);
        assert_int_equal(c.errors, 1);
        if (!contains(c.msgs, bad[i].want))
            fail_msg("moe(%s): expected '%s' in:\n%s", bad[i].args, bad[i].want, c.msgs);
        checked_free(&c);
    }
}

/* ---- train and parallel ------------------------------------------------------------------------ */

static void test_train_settings(void **state)
{
    (void)state;
    char text[4096];
    snprintf(text, sizeof text,
             "%s"
             "train {\n"
             "    batch = 256\n"
             "    epochs = 30\n"
             "    optimizer = sgd(lr = 0.05, momentum = 0.8, nesterov = true, weight_decay = 1e-4)\n"
             "    schedule = step(warmup = 10, every = 1000, gamma = 0.5)\n"
             "    label_smoothing = 0.1\n"
             "    clip_grad = 2.5\n"
             "    precision = fp32\n"
             "    augment = [random_crop(padding = 2), flip(), cutmix(alpha = 0.4), randaugment(m = 5)]\n"
             "    eval_every = 0\n"
             "    checkpoint_every = 5000\n"
             "    log_every = 10\n"
             "    seed = 1234567890123\n"
             "}\n"
             "parallel(data = 4, expert = 2)\n",
             tiny_vit_moe);
    checked c;
    check_ok(&c, text);
    const mc_train *t = &c.m.train;
    assert_int_equal(t->batch, 256);
    assert_int_equal(t->epochs, 30);
    assert_int_equal(t->optimizer, OPT_SGD);
    assert_float_equal(t->lr, 0.05, 0);
    assert_float_equal(t->momentum, 0.8, 0);
    assert_true(t->nesterov);
    assert_float_equal(t->weight_decay, 1e-4, 1e-18);
    assert_int_equal(t->schedule, SCHED_STEP);
    assert_int_equal(t->warmup, 10);
    assert_int_equal(t->step_size, 1000);
    assert_float_equal(t->gamma, 0.5, 0);
    assert_float_equal(t->label_smoothing, 0.1, 0);
    assert_float_equal(t->clip_grad, 2.5, 0);
    assert_int_equal(t->precision, PREC_FP32);
    assert_int_equal(t->crop_padding, 2);
    assert_true(t->flip);
    assert_float_equal(t->cutmix_alpha, 0.4, 0);
    assert_float_equal(t->cutmix_prob, 0.5, 0);
    assert_int_equal(t->randaugment_n, 2);
    assert_int_equal(t->randaugment_m, 5);
    assert_int_equal(t->eval_every, 0);
    assert_int_equal(t->checkpoint_every, 5000);
    assert_int_equal(t->log_every, 10);
    assert_true(t->seed == 1234567890123ull);
    assert_int_equal(c.m.parallel.data, 4);
    assert_int_equal(c.m.parallel.expert, 2);
    checked_free(&c);

    /* adamw with betas, a cosine schedule */
    snprintf(text, sizeof text,
             "%strain {\n    optimizer = adamw(lr = 3e-4, betas = [0.9, 0.95], eps = 1e-6, weight_decay = 0.1)\n"
             "    schedule = cosine(warmup = 50, min_lr = 1e-5)\n    steps = 500\n}\n",
             tiny_vit_moe);
    check_ok(&c, text);
    t = &c.m.train;
    assert_int_equal(t->optimizer, OPT_ADAMW);
    assert_float_equal(t->lr, 3e-4, 1e-18);
    assert_float_equal(t->beta2, 0.95, 1e-15);
    assert_float_equal(t->eps, 1e-6, 1e-20);
    assert_float_equal(t->weight_decay, 0.1, 1e-15);
    assert_int_equal(t->schedule, SCHED_COSINE);
    assert_int_equal(t->warmup, 50);
    assert_float_equal(t->min_lr, 1e-5, 1e-20);
    assert_int_equal(t->steps, 500);
    assert_int_equal(t->precision, PREC_BF16); /* the default */
    assert_int_equal(t->recompute, RECOMPUTE_NONE); /* the default */
    checked_free(&c);

    snprintf(text, sizeof text, "%strain {\n    recompute = experts\n}\n", tiny_vit_moe);
    check_ok(&c, text);
    assert_int_equal(c.m.train.recompute, RECOMPUTE_EXPERTS);
    checked_free(&c);
    snprintf(text, sizeof text, "%strain {\n    recompute = all\n}\n", tiny_vit_moe);
    check_ok(&c, text);
    assert_int_equal(c.m.train.recompute, RECOMPUTE_ALL);
    checked_free(&c);

    /* the three precisions by name */
    const struct {
        const char *word;
        mc_precision prec;
    } precs[] = { { "fp32", PREC_FP32 }, { "bf16", PREC_BF16 }, { "tf32", PREC_TF32 } };
    for (size_t i = 0; i < sizeof precs / sizeof precs[0]; i++) {
        snprintf(text, sizeof text, "%strain {\n    precision = %s\n}\n", tiny_vit_moe, precs[i].word);
        check_ok(&c, text);
        assert_int_equal(c.m.train.precision, precs[i].prec);
        checked_free(&c);
    }
}

static void test_parallel_checks(void **state)
{
    (void)state;
    static const struct { const char *tail; int errors; const char *want; } cases[] = {
        { "train { batch = 96 }\nparallel(data = 3, expert = 2)", 1,
          "error: expert-parallel degree 2 does not divide data = 3" },
        /* too many expert GPUs for the data GPUs, and for the 2 experts */
        { "parallel(data = 2, expert = 4)", 2, "error: expert-parallel degree 4 exceeds the 2 GPUs of data = 2" },
        { "parallel(data = 4, expert = 4)", 1, "s.moe:14:13: error: 2 experts do not split over expert = 4 GPUs" },
        { "train { batch = 100 }\nparallel(data = 8)", 1, "error: batch 100 does not split evenly over data = 8 GPUs" },
        { "parallel(data = 3)", 1, "s.moe:21:17: error: the default batch of 128 does not split evenly over data = 3" },
        { "parallel(data = 0)", 1, "error: 'data' must be at least 1, found 0" },
        /* recompute = experts: data parallelism alone */
        { "train { recompute = experts }\nparallel(data = 2, expert = 2)", 1,
          "s.moe:21:21: error: recompute = experts does not work with expert parallelism (expert = 2) yet" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[4096];
        snprintf(text, sizeof text, "%s%s\n", tiny_vit_moe, cases[i].tail);
        checked c;
        check_text(&c, text, false);
        assert_int_equal(c.errors, cases[i].errors);
        if (!contains(c.msgs, cases[i].want))
            fail_msg("%s: expected '%s' in:\n%s", cases[i].tail, cases[i].want, c.msgs);
        checked_free(&c);
    }
    /* a good split */
    char text[4096];
    snprintf(text, sizeof text, "%strain { batch = 96 }\nparallel(data = 4, expert = 2)\n", tiny_vit_moe);
    checked c;
    check_ok(&c, text);
    assert_int_equal(c.m.parallel.data, 4);
    assert_int_equal(c.m.parallel.expert, 2);
    checked_free(&c);
}

/* ---- warnings -------------------------------------------------------------------------------- */

static void test_warnings_and_werror(void **state)
{
    (void)state;
    char text[4096];
    snprintf(text, sizeof text, "const UNUSED = 3\n%s", tiny_vit_moe);
    checked c;
    check_text(&c, text, false);
    assert_int_equal(c.errors, 0);
    assert_int_equal(c.warnings, 1);
    assert_true(contains(c.msgs, "s.moe:1:7: warning: constant 'UNUSED' is never used"));
    checked_free(&c);
    check_text(&c, text, true);
    assert_int_equal(c.errors, 1);
    assert_int_equal(c.warnings, 0);
    assert_true(contains(c.msgs, "s.moe:1:7: error: constant 'UNUSED' is never used"));
    checked_free(&c);
}

/* ---- the schema's suggestions ------------------------------------------------------------------- */

static void test_suggestions(void **state)
{
    (void)state;
    const char *const layers[] = { "layernorm", "attention", "pool", "patch_embed", "moe", "model" };
    int n = (int)(sizeof layers / sizeof layers[0]);
    assert_string_equal(mc_suggest("layrnorm", layers, n), "layernorm");
    assert_string_equal(mc_suggest("atention", layers, n), "attention");
    assert_string_equal(mc_suggest("modle", layers, n), "model");   /* a swap is one edit */
    assert_string_equal(mc_suggest("patch_emebd", layers, n), "patch_embed");
    assert_string_equal(mc_suggest("mo", layers, n), "moe");
    assert_null(mc_suggest("foo1", layers, n));                      /* too far from pool */
    assert_null(mc_suggest("convolution", layers, n));
    char buf[32];
    assert_string_equal(mc_suggest_word("idxx", "idx|csv|cifar10", buf, sizeof buf), "idx");
    assert_null(mc_suggest_word("png", "idx|csv|cifar10", buf, sizeof buf));
}

/* A dataset's own augment replaces train's for its samples; the others
 * take train's; an empty list turns augmentation off for that dataset */
static void test_dataset_augment(void **state)
{
    (void)state;
    static const char text[] =
        "dataset clothes(format = idx, path = \"f\", classes = 10, augment = [random_crop(padding = 2), flip()])\n"
        "dataset plain(format = idx, path = \"p\", classes = 10, augment = [])\n"
        "dataset rest(format = idx, path = \"r\", classes = 10)\n"
        "model m {\n    input(channels = 1, height = 28, width = 28)\n    patch_embed(patch = 7, dim = 8)\n"
        "    pool(kind = mean)\n    classifier(heads = per_dataset)\n}\n"
        "train {\n    augment = [random_crop(padding = 4), cutmix()]\n}\n";
    checked c;
    check_ok(&c, text);
    const mc_dataset *ds = c.m.datasets;
    assert_true(ds[0].own_augment);
    assert_int_equal(ds[0].crop_padding, 2);
    assert_true(ds[0].flip);
    assert_true(ds[1].own_augment);
    assert_int_equal(ds[1].crop_padding, 0);
    assert_false(ds[1].flip);
    assert_false(ds[2].own_augment);
    assert_int_equal(ds[2].crop_padding, 4);
    assert_false(ds[2].flip);
    assert_int_equal(c.m.train.crop_padding, 4);
    assert_false(c.m.train.flip);
    assert_true(c.m.train.cutmix_prob > 0);
    checked_free(&c);
}

/* image_folder's train and test folders, gtsrb's test folder */
static void test_dataset_folders(void **state)
{
    (void)state;
    static const char text[] =
        "dataset net(format = image_folder, path = \"imagenet\", classes = 1000, test_folder = \"val\")\n"
        "dataset own(format = image_folder, path = \"o\", classes = 2)\n"
        "dataset held(format = image_folder, path = \"h/train\", classes = 2, test_split = 0.1)\n"
        "dataset signs(format = gtsrb, path = \"gtsrb\", classes = 43, test_folder = \"Final_Test/Images\")\n"
        "dataset signs2(format = gtsrb, path = \"gtsrb\", classes = 43, test_split = 0.2)\n"
        "dataset fm(format = idx, path = \"fm\", classes = 10, resize = bilinear)\n"
        "model m {\n    input(channels = 3, height = 32, width = 32)\n    patch_embed(patch = 8, dim = 8)\n"
        "    pool(kind = mean)\n    classifier(heads = per_dataset)\n}\n";
    checked c;
    check_ok(&c, text);
    const mc_dataset *ds = c.m.datasets;
    assert_string_equal(ds[0].train_folder, "train");
    assert_string_equal(ds[0].test_folder, "val");
    assert_string_equal(ds[1].train_folder, "train");
    assert_string_equal(ds[1].test_folder, "test");
    assert_null(ds[2].train_folder); /* path is the class folders' root */
    assert_null(ds[2].test_folder);
    assert_null(ds[3].train_folder);
    assert_string_equal(ds[3].test_folder, "Final_Test/Images");
    assert_null(ds[4].test_folder);
    assert_null(ds[5].train_folder);
    assert_null(ds[5].test_folder);
    checked_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_constants),
        cmocka_unit_test(test_constant_errors),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_tiny_vit_moe),
        cmocka_unit_test(test_moe_blocks),
        cmocka_unit_test(test_dataset_map),
        cmocka_unit_test(test_drop_path_schedule),
        cmocka_unit_test(test_routers),
        cmocka_unit_test(test_train_settings),
        cmocka_unit_test(test_dataset_augment),
        cmocka_unit_test(test_dataset_folders),
        cmocka_unit_test(test_parallel_checks),
        cmocka_unit_test(test_warnings_and_werror),
        cmocka_unit_test(test_suggestions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
