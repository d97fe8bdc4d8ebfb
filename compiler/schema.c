/* schema.c: the table of every construct of the .moe language.
 *
 * Keep doc/language.md in step with this file: tests/docs.sh
 * fails when a construct or parameter here is not documented there. */
#include <stdio.h>
#include <string.h>

#include "schema.h"

#define BIG 1e18
#define END_PARAMS { NULL, 0, NULL, 0, 0, NULL, NULL }

/* ---- top level ----------------------------------------------------------- */

static const mc_param_spec dataset_params[] = {
    { "format", PT_WORD, NULL, 0, 0, "idx|mnist_json|csv|cifar10|image_folder|gtsrb",
      "file format of the dataset" },
    { "path", PT_STRING, NULL, 0, 0, NULL,
      "file or directory, relative to the trainer's --data directory" },
    { "channels", PT_INT, "by format", 1, 4, NULL,
      "channels as stored: 1 for idx, mnist_json and csv, 3 otherwise" },
    { "size", PT_SIZE, "by format", 1, 4096, NULL,
      "stored image size, N or [height, width]: 28 for idx and mnist_json, 32 for cifar10" },
    { "resize", PT_WORD, "none", 0, 0, "none|bilinear|nearest",
      "how images of another size than the model input are resized" },
    { "classes", PT_INT, "from labels", 1, 1000000, NULL, "number of classes" },
    { "labels", PT_LABELS, "none", 0, 0, NULL, "class names, in label order" },
    { "weight", PT_FLOAT, "1.0", 0, 1e6, NULL,
      "mixture weight: the share of each batch drawn from this dataset" },
    { "test_split", PT_FLOAT, "0", 0, 0.9, NULL,
      "fraction held out for testing; required where the format has no test set" },
    { "max_value", PT_FLOAT, "255", 1, 65535, NULL, "largest pixel value in the file (16 for digits)" },
    { "mean", PT_CHANNELS, "0.5", -10, 10, NULL,
      "normalisation mean of pixels scaled to [0, 1]: one number, or one per channel" },
    { "std", PT_CHANNELS, "0.5", 1e-6, 10, NULL, "normalisation standard deviation: one number, or one per channel" },
    { "augment", PT_CALLS, "train's", 0, 0, "augment",
      "this dataset's training augmentations (random_crop, flip), instead of train's augment" },
    { "train_images", PT_STRING, "\"train-images-idx3-ubyte.gz\"", 0, 0, NULL, "idx: training images" },
    { "train_labels", PT_STRING, "\"train-labels-idx1-ubyte.gz\"", 0, 0, NULL, "idx: training labels" },
    { "test_images", PT_STRING, "\"t10k-images-idx3-ubyte.gz\"", 0, 0, NULL, "idx: test images" },
    { "test_labels", PT_STRING, "\"t10k-labels-idx1-ubyte.gz\"", 0, 0, NULL, "idx: test labels" },
    { "train_folder", PT_STRING, "\"train\"", 0, 0, NULL, "image_folder: the training class folders, in path" },
    { "test_folder", PT_STRING, "by format", 0, 0, NULL,
      "image_folder (\"test\") and gtsrb (none): the test set's folder, in path" },
    { "in_memory", PT_BOOL, "true", 0, 0, NULL,
      "image_folder, gtsrb: decode every image at start-up and hold them; false: decode each as it is drawn" },
    END_PARAMS
};

static const mc_param_spec parallel_params[] = {
    { "data", PT_INT, "1", 1, 65536, NULL, "data-parallel degree" },
    { "expert", PT_INT, "1", 1, 65536, NULL, "expert-parallel degree; divides every MoE layer's expert count" },
    { "bucket_mib", PT_FLOAT, "16", 0.001, 4096, NULL,
      "data parallelism: the least MiB of gradients averaged over the GPUs in one all-reduce" },
    END_PARAMS
};

static const mc_param_spec train_params[] = {
    { "batch", PT_INT, "128", 1, 1 << 20, NULL, "global batch size" },
    { "steps", PT_INT, "1000", 1, 1e12, NULL, "training steps (or give epochs)" },
    { "epochs", PT_INT, "none", 1, 1e6, NULL, "epochs over the mixture's training samples" },
    { "optimizer", PT_CALL, "adamw()", 0, 0, "optimizer", "adamw(...) or sgd(...)" },
    { "schedule", PT_CALL, "constant", 0, 0, "schedule", "learning-rate schedule" },
    { "label_smoothing", PT_FLOAT, "0", 0, 0.999, NULL, "label smoothing of the cross-entropy" },
    { "clip_grad", PT_FLOAT, "0", 0, 1e6, NULL, "clip the global gradient norm to this; 0: off" },
    { "precision", PT_WORD, "bf16", 0, 0, "fp32|bf16|tf32",
      "GPU compute precision (fp32 master weights either way); the CPU backend computes in fp32" },
    { "recompute", PT_WORD, "none", 0, 0, "none|experts|all",
      "GPU memory: experts: the MoE layers' expert rows, hidden values, activations and outputs share one room, "
      "and the backward makes each layer's again; all: attention's and window attention's insides and dense MLPs' "
      "hidden values too; the CPU backend keeps every value" },
    { "augment", PT_CALLS, "[]", 0, 0, "augment", "training augmentations, applied in order" },
    { "eval_every", PT_INT, "500", 0, 1e12, NULL, "evaluate every N steps; 0: at the end only" },
    { "checkpoint_every", PT_INT, "0", 0, 1e12, NULL, "checkpoint every N steps; 0: at the end only" },
    { "log_every", PT_INT, "50", 1, 1e12, NULL, "write a metrics record every N steps" },
    { "seed", PT_INT, "0", 0, 9.2e18, NULL, "seed of every random choice" },
    END_PARAMS
};

static const mc_param_spec model_params[] = { END_PARAMS };

/* ---- layers -------------------------------------------------------------- */

static const mc_param_spec input_params[] = {
    { "channels", PT_INT, NULL, 1, 4, NULL, "image channels" },
    { "height", PT_INT, NULL, 1, 4096, NULL, "image height" },
    { "width", PT_INT, NULL, 1, 4096, NULL, "image width" },
    END_PARAMS
};

static const mc_param_spec conv_stem_params[] = {
    { "dim", PT_INT, NULL, 1, 65536, NULL, "output channels" },
    { "kernel", PT_INT, "3", 1, 15, NULL, "kernel size (odd: padding keeps the size before stride)" },
    { "stride", PT_INT, "2", 1, 8, NULL, "stride of the first convolution" },
    { "layers", PT_INT, "1", 1, 8, NULL, "convolutions, each followed by GELU" },
    END_PARAMS
};

static const mc_param_spec patch_embed_params[] = {
    { "patch", PT_INT, NULL, 1, 256, NULL, "patch size; divides the image height and width" },
    { "dim", PT_INT, NULL, 1, 65536, NULL, "embedding width" },
    END_PARAMS
};

static const mc_param_spec no_params[] = { END_PARAMS };

static const mc_param_spec pos_embed_params[] = {
    { "kind", PT_WORD, "learned", 0, 0, "learned|sincos", "learned or fixed sine-cosine" },
    END_PARAMS
};

static const mc_param_spec layernorm_params[] = {
    { "eps", PT_FLOAT, "1e-5", 1e-12, 1, NULL, "added to the variance" },
    END_PARAMS
};

static const mc_param_spec attention_params[] = {
    { "heads", PT_INT, NULL, 1, 1024, NULL, "attention heads; divides the width" },
    { "qkv_bias", PT_BOOL, "true", 0, 0, NULL, "bias in the query/key/value projection" },
    { "dropout", PT_FLOAT, "0", 0, 0.99, NULL, "dropout on the attention weights" },
    END_PARAMS
};

static const mc_param_spec window_attention_params[] = {
    { "heads", PT_INT, NULL, 1, 1024, NULL, "attention heads; divides the width" },
    { "window", PT_INT, NULL, 1, 1024, NULL, "window size; divides the token grid" },
    { "global_query", PT_BOOL, "false", 0, 0, NULL,
      "GCViT global attention: queries come from global tokens of the whole image" },
    { "qkv_bias", PT_BOOL, "true", 0, 0, NULL, "bias in the query/key/value projection" },
    END_PARAMS
};

static const mc_param_spec mlp_params[] = {
    { "hidden", PT_INT, NULL, 1, 1 << 20, NULL, "hidden width" },
    { "act", PT_WORD, "gelu", 0, 0, "gelu|relu|silu", "activation" },
    { "dropout", PT_FLOAT, "0", 0, 0.99, NULL, "dropout after the activation" },
    END_PARAMS
};

static const mc_param_spec moe_params[] = {
    { "experts", PT_INT, NULL, 1, 4096, NULL, "number of experts" },
    { "hidden", PT_INT, NULL, 1, 1 << 20, NULL, "hidden width of each expert" },
    { "act", PT_WORD, "gelu", 0, 0, "gelu|relu|silu", "expert activation" },
    { "top_k", PT_INT, "1", 1, 4096, NULL, "experts per token (softmax_topk, cosine, attention, dataset_aware)" },
    { "capacity", PT_FLOAT, "1.25", 0.01, 1024, NULL,
      "capacity factor: each expert takes top_k * floor(capacity * ceil(tokens / experts)) tokens" },
    { "dropless", PT_BOOL, "false", 0, 0, NULL, "no capacity limit: no token is dropped" },
    { "batch_priority", PT_BOOL, "false", 0, 0, NULL,
      "batch-prioritized routing: tokens with the highest gates claim capacity first" },
    { "normalize_gates", PT_BOOL, "true", 0, 0, NULL, "renormalise the top-k gates to sum to 1" },
    { "gate_noise", PT_FLOAT, "0", 0, 100, NULL, "std of Gaussian noise on router logits in training" },
    { "fp32_gate", PT_BOOL, "true", 0, 0, NULL, "compute the router in fp32" },
    { "router", PT_CALL, "softmax_topk", 0, 0, "router", "the router" },
    { "balance_loss", PT_FLOAT, "0.01", 0, 100, NULL, "weight of the GShard load-balancing loss" },
    { "importance_loss", PT_FLOAT, "0", 0, 100, NULL, "weight of the importance loss (Shazeer et al.)" },
    { "load_loss", PT_FLOAT, "0", 0, 100, NULL, "weight of the load loss (Shazeer et al.)" },
    { "z_loss", PT_FLOAT, "0", 0, 100, NULL, "weight of the router z-loss (ST-MoE)" },
    { "dataset_loss", PT_FLOAT, "0.1 with dataset_aware, else 0", 0, 100, NULL,
      "weight of the DAMEX routing loss: cross-entropy of the gate logits against the dataset's expert" },
    END_PARAMS
};

static const mc_param_spec dropout_params[] = {
    { "p", PT_FLOAT, NULL, 0, 0.99, NULL, "probability of zeroing an element" },
    END_PARAMS
};

static const mc_param_spec drop_path_params[] = {
    { "rate", PT_FLOAT, NULL, 0, 0.99, NULL, "stochastic depth: probability of skipping the residual branch" },
    { "schedule", PT_WORD, "linear", 0, 0, "linear|constant",
      "linear: 0 in the first block rising to rate in the last" },
    END_PARAMS
};

static const mc_param_spec repeat_params[] = {
    { "depth", PT_INT, NULL, 1, 4096, NULL, "how many blocks" },
    { "moe_blocks", PT_SELECT, "all", 0, 0, "select",
      "which blocks (from 0) make their moe() layers MoE; the others use a dense MLP of the same hidden width" },
    END_PARAMS
};

static const mc_param_spec downsample_params[] = {
    { "dim", PT_INT, NULL, 1, 65536, NULL, "output width; the 2x2 token neighbourhoods are merged" },
    END_PARAMS
};

static const mc_param_spec pool_params[] = {
    { "kind", PT_WORD, "mean", 0, 0, "cls|mean", "the class token, or the mean of the tokens" },
    END_PARAMS
};

static const mc_param_spec classifier_params[] = {
    { "heads", PT_WORD, "shared", 0, 0, "shared|per_dataset",
      "one head over a shared label space, or one head per dataset" },
    { "classes", PT_INT, "largest dataset's", 1, 1000000, NULL, "classes of the shared head" },
    END_PARAMS
};

/* ---- routers: moe(router = ...) --------------------------------------------- */

static const mc_param_spec temperature_params[] = {
    { "temperature", PT_FLOAT, "1.0", 1e-4, 1e4, NULL, "divides the logits before the softmax" },
    END_PARAMS
};

static const mc_param_spec cosine_params[] = {
    { "dim", PT_INT, "256", 1, 65536, NULL, "width of the projection the similarity is taken in" },
    { "temperature", PT_FLOAT, "0.07", 1e-4, 1e4, NULL, "divides the similarities" },
    END_PARAMS
};

static const mc_param_spec attention_router_params[] = {
    { "dim", PT_INT, "64", 1, 65536, NULL, "width of the expert tokens and the router queries" },
    END_PARAMS
};

static const mc_param_spec dataset_aware_params[] = {
    { "map", PT_DSMAP, NULL, 0, 0, NULL, "each dataset's expert, {dataset: expert, ...}; datasets may share one" },
    END_PARAMS
};

/* ---- train: optimizer, schedule, augment --------------------------------------- */

static const mc_param_spec adamw_params[] = {
    { "lr", PT_FLOAT, "1e-3", 0, 100, NULL, "peak learning rate" },
    { "betas", PT_FLOATS, "[0.9, 0.999]", 0, 0.999999, NULL, "moment decay rates" },
    { "eps", PT_FLOAT, "1e-8", 0, 1, NULL, "added to the denominator" },
    { "weight_decay", PT_FLOAT, "0.05", 0, 10, NULL, "decoupled weight decay (not on norms, biases, tokens)" },
    END_PARAMS
};

static const mc_param_spec sgd_params[] = {
    { "lr", PT_FLOAT, "0.1", 0, 100, NULL, "peak learning rate" },
    { "momentum", PT_FLOAT, "0.9", 0, 0.999999, NULL, "momentum" },
    { "nesterov", PT_BOOL, "false", 0, 0, NULL, "Nesterov momentum" },
    { "weight_decay", PT_FLOAT, "5e-4", 0, 10, NULL, "L2 weight decay (not on norms, biases, tokens)" },
    END_PARAMS
};

static const mc_param_spec cosine_sched_params[] = {
    { "warmup", PT_INT, "0", 0, 1e12, NULL, "steps of linear warmup from 0" },
    { "min_lr", PT_FLOAT, "0", 0, 100, NULL, "learning rate at the end" },
    END_PARAMS
};

static const mc_param_spec step_sched_params[] = {
    { "warmup", PT_INT, "0", 0, 1e12, NULL, "steps of linear warmup from 0" },
    { "every", PT_INT, NULL, 1, 1e12, NULL, "multiply the learning rate by gamma every N steps" },
    { "gamma", PT_FLOAT, "0.1", 0, 1, NULL, "decay factor" },
    END_PARAMS
};

static const mc_param_spec constant_sched_params[] = {
    { "warmup", PT_INT, "0", 0, 1e12, NULL, "steps of linear warmup from 0" },
    END_PARAMS
};

static const mc_param_spec random_crop_params[] = {
    { "padding", PT_INT, "4", 0, 256, NULL, "zero padding on each side before the crop" },
    END_PARAMS
};

static const mc_param_spec cutmix_params[] = {
    { "alpha", PT_FLOAT, "1.0", 1e-3, 100, NULL, "Beta(alpha, alpha) of the mixed area" },
    { "prob", PT_FLOAT, "0.5", 0, 1, NULL, "probability a batch is mixed" },
    END_PARAMS
};

static const mc_param_spec randaugment_params[] = {
    { "n", PT_INT, "2", 1, 16, NULL, "operations per image" },
    { "m", PT_INT, "9", 0, 30, NULL, "magnitude" },
    END_PARAMS
};

/* ---- repeat(moe_blocks = ...) -------------------------------------------------- */

static const mc_param_spec every_params[] = {
    { "n", PT_INT, NULL, 1, 4096, NULL, "every n-th block" },
    { "start", PT_INT, "0", 0, 4095, NULL, "the first MoE block" },
    END_PARAMS
};

const mc_kind_spec mc_kinds[] = {
    /* top level */
    { "dataset", CTX_TOP, true, BODY_NONE, true, dataset_params,
      "a dataset of the training mixture" },
    { "model", CTX_TOP, true, BODY_STMTS, false, model_params, "the model: a list of layers" },
    { "train", CTX_TOP, false, BODY_SETTINGS, false, train_params, "training settings" },
    { "parallel", CTX_TOP, false, BODY_NONE, true, parallel_params, "data- and expert-parallel degrees" },
    /* layers */
    { "input", CTX_LAYER, false, BODY_NONE, true, input_params, "the model input; the first layer" },
    { "conv_stem", CTX_LAYER, false, BODY_NONE, true, conv_stem_params, "convolution stem on the image" },
    { "patch_embed", CTX_LAYER, false, BODY_NONE, true, patch_embed_params,
      "split the image into patches and embed each as a token" },
    { "cls_token", CTX_LAYER, false, BODY_NONE, true, no_params, "prepend a learned class token" },
    { "pos_embed", CTX_LAYER, false, BODY_NONE, true, pos_embed_params, "add position embeddings" },
    { "layernorm", CTX_LAYER, false, BODY_NONE, true, layernorm_params, "layer normalisation" },
    { "attention", CTX_LAYER, false, BODY_NONE, true, attention_params, "global multi-head self-attention" },
    { "window_attention", CTX_LAYER, false, BODY_NONE, true, window_attention_params,
      "window attention, with GCViT global query tokens" },
    { "mlp", CTX_LAYER, false, BODY_NONE, true, mlp_params, "two-layer MLP" },
    { "moe", CTX_LAYER, false, BODY_NONE, true, moe_params, "mixture of expert MLPs" },
    { "dropout", CTX_LAYER, false, BODY_NONE, true, dropout_params, "dropout" },
    { "drop_path", CTX_LAYER, false, BODY_NONE, true, drop_path_params,
      "stochastic depth; inside residual { } only" },
    { "residual", CTX_LAYER, false, BODY_STMTS, false, no_params, "x + body(x)" },
    { "repeat", CTX_LAYER, false, BODY_STMTS, true, repeat_params, "depth blocks of the body" },
    { "downsample", CTX_LAYER, false, BODY_NONE, true, downsample_params,
      "merge 2x2 tokens (Swin/GCViT patch merging)" },
    { "pool", CTX_LAYER, false, BODY_NONE, true, pool_params, "tokens to one vector" },
    { "classifier", CTX_LAYER, false, BODY_NONE, true, classifier_params, "the classification head(s); the last layer" },
    /* routers */
    { "softmax_topk", CTX_ROUTER, false, BODY_NONE, true, no_params, "GShard/Tutel softmax top-k" },
    { "switch", CTX_ROUTER, false, BODY_NONE, true, no_params, "Switch Transformer top-1" },
    { "soft", CTX_ROUTER, false, BODY_NONE, true, temperature_params,
      "soft MoE: the expectation over all experts" },
    { "expert_choice", CTX_ROUTER, false, BODY_NONE, true, no_params,
      "each expert picks its capacity of top tokens" },
    { "cosine", CTX_ROUTER, false, BODY_NONE, true, cosine_params, "cosine router (X-MoE)" },
    { "attention", CTX_ROUTER, false, BODY_NONE, true, attention_router_params,
      "attention over learned expert tokens" },
    { "loss_based", CTX_ROUTER, false, BODY_NONE, true, temperature_params,
      "gated modular networks: the gate learns which expert has the lowest loss" },
    { "dataset_aware", CTX_ROUTER, false, BODY_NONE, true, dataset_aware_params,
      "DAMEX: each dataset is routed to its mapped expert" },
    /* optimizers */
    { "adamw", CTX_OPTIMIZER, false, BODY_NONE, true, adamw_params, "AdamW" },
    { "sgd", CTX_OPTIMIZER, false, BODY_NONE, true, sgd_params, "SGD with momentum" },
    /* schedules */
    { "constant", CTX_SCHEDULE, false, BODY_NONE, true, constant_sched_params, "constant after warmup" },
    { "cosine", CTX_SCHEDULE, false, BODY_NONE, true, cosine_sched_params, "cosine decay after warmup" },
    { "step", CTX_SCHEDULE, false, BODY_NONE, true, step_sched_params, "step decay after warmup" },
    /* augmentations */
    { "random_crop", CTX_AUGMENT, false, BODY_NONE, true, random_crop_params, "pad, then crop at random" },
    { "flip", CTX_AUGMENT, false, BODY_NONE, true, no_params, "horizontal flip with probability 0.5" },
    { "cutmix", CTX_AUGMENT, false, BODY_NONE, true, cutmix_params, "CutMix" },
    { "randaugment", CTX_AUGMENT, false, BODY_NONE, true, randaugment_params, "RandAugment" },
    /* block selectors */
    { "every", CTX_SELECT, false, BODY_NONE, true, every_params, "every n-th block from start" },
    { "all", CTX_SELECT, false, BODY_NONE, true, no_params, "every block" },
    { "none", CTX_SELECT, false, BODY_NONE, true, no_params, "no block" },
    { NULL, 0, false, BODY_NONE, false, NULL, NULL },
};

const mc_kind_spec *mc_kind_find(const char *name, unsigned ctx)
{
    for (const mc_kind_spec *k = mc_kinds; k->name; k++)
        if ((k->ctx & ctx) && strcmp(k->name, name) == 0)
            return k;
    return NULL;
}

const mc_param_spec *mc_param_find(const mc_kind_spec *kind, const char *name, int *index)
{
    for (int i = 0; kind->params[i].name; i++) {
        if (strcmp(kind->params[i].name, name) == 0) {
            if (index)
                *index = i;
            return &kind->params[i];
        }
    }
    return NULL;
}

int mc_param_count(const mc_kind_spec *kind)
{
    int n = 0;
    while (kind->params[n].name)
        n++;
    return n;
}

/* Edit distance counting a swap of two neighbours as one edit (optimal
 * string alignment): "modle" is one edit from "model". */
static int edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return 1000;
    int d[3][65]; /* rows i-2, i-1 and i, cycled */
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int *cur = d[i % 3], *up = d[(i - 1) % 3], *up2 = d[(i + 1) % 3];
        cur[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int cost = a[i - 1] == b[j - 1] ? 0 : 1;
            int best = up[j - 1] + cost;
            if (up[j] + 1 < best)
                best = up[j] + 1;
            if (cur[j - 1] + 1 < best)
                best = cur[j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && up2[j - 2] + 1 < best)
                best = up2[j - 2] + 1;
            cur[j] = best;
        }
    }
    return d[la % 3][lb];
}

const char *mc_suggest(const char *word, const char *const *candidates, int n)
{
    const char *best = NULL;
    int best_d = 1000;
    for (int i = 0; i < n; i++) {
        int d = edit_distance(word, candidates[i]);
        if (d < best_d) {
            best_d = d;
            best = candidates[i];
        }
    }
    /* about one edit in three letters: 'foo1' is not a misspelt 'pool' */
    int len = (int)strlen(word);
    int limit = len <= 4 ? 1 : (len <= 8 ? 2 : 3);
    return best_d <= limit ? best : NULL;
}

const char *mc_suggest_word(const char *word, const char *list, char *buf, int buflen)
{
    const char *cands[64];
    char copy[512];
    snprintf(copy, sizeof copy, "%s", list);
    int n = 0;
    for (char *save = NULL, *w = strtok_r(copy, "|", &save); w && n < 64; w = strtok_r(NULL, "|", &save))
        cands[n++] = w;
    const char *s = mc_suggest(word, cands, n);
    if (!s)
        return NULL;
    snprintf(buf, (size_t)buflen, "%s", s);
    return buf;
}

const char *mc_ctx_name(unsigned ctx)
{
    switch (ctx) {
    case CTX_TOP: return "top-level statement";
    case CTX_LAYER: return "layer";
    case CTX_TRAIN: return "train setting";
    case CTX_ROUTER: return "router";
    case CTX_OPTIMIZER: return "optimizer";
    case CTX_SCHEDULE: return "schedule";
    case CTX_AUGMENT: return "augmentation";
    case CTX_SELECT: return "block selector";
    }
    return "construct";
}

static const char *ptype_name(mc_ptype t)
{
    switch (t) {
    case PT_INT: return "integer";
    case PT_FLOAT: return "number";
    case PT_BOOL: return "boolean";
    case PT_STRING: return "string";
    case PT_WORD: return "word";
    case PT_SIZE: return "size";
    case PT_LABELS: return "list of strings";
    case PT_DSMAP: return "map";
    case PT_CALL: return "call";
    case PT_CALLS: return "list of calls";
    case PT_SELECT: return "selector";
    case PT_FLOATS: return "list of numbers";
    case PT_CHANNELS: return "number or list";
    }
    return "?";
}

void mc_schema_print(void *outp)
{
    FILE *out = outp;
    static const unsigned order[] = { CTX_TOP, CTX_LAYER, CTX_ROUTER, CTX_OPTIMIZER,
                                      CTX_SCHEDULE, CTX_AUGMENT, CTX_SELECT };
    for (size_t c = 0; c < sizeof order / sizeof order[0]; c++) {
        fprintf(out, "%ss:\n", mc_ctx_name(order[c]));
        for (const mc_kind_spec *k = mc_kinds; k->name; k++) {
            if (!(k->ctx & order[c]))
                continue;
            fprintf(out, "  %s%s - %s\n", k->name, k->named ? " NAME" : "", k->doc);
            for (const mc_param_spec *p = k->params; p->name; p++) {
                fprintf(out, "      %-16s %-8s ", p->name, ptype_name(p->type));
                if (p->def)
                    fprintf(out, "= %s", p->def);
                else
                    fputs("(required)", out);
                if (p->type == PT_WORD)
                    fprintf(out, "  {%s}", p->choices);
                fprintf(out, "  %s\n", p->doc);
            }
        }
        fputc('\n', out);
    }
}
