/* summary.c: `moecc --summary`, the checked model in words and numbers:
 * datasets, every op with its output shape, every learned tensor with its
 * shape, parameter counts, FLOPs, routing and training settings. */
#include <stdio.h>
#include <string.h>

#include "emit.h"
#include "model.h"

static void print_shape(FILE *out, const mc_shape *sh)
{
    char buf[64];
    switch (sh->kind) {
    case SHAPE_IMAGE: snprintf(buf, sizeof buf, "[%d, %d, %d]", sh->c, sh->h, sh->w); break;
    case SHAPE_TOKENS: snprintf(buf, sizeof buf, "[%d, %d]%s", sh->tokens, sh->dim, sh->cls ? " +cls" : ""); break;
    case SHAPE_VECTOR: snprintf(buf, sizeof buf, "[%d]", sh->dim); break;
    case SHAPE_LOGITS: snprintf(buf, sizeof buf, "[%d] logits", sh->dim); break;
    }
    fprintf(out, "%-18s", buf);
}

static void print_count(FILE *out, int64_t n)
{
    char digits[32], grouped[48];
    snprintf(digits, sizeof digits, "%lld", (long long)n);
    int len = (int)strlen(digits), j = 0;
    for (int i = 0; i < len; i++) {
        if (i > 0 && (len - i) % 3 == 0)
            grouped[j++] = ',';
        grouped[j++] = digits[i];
    }
    grouped[j] = '\0';
    fputs(grouped, out);
}

static const char *precision_name(mc_precision p)
{
    return p == PREC_FP32 ? "fp32" : p == PREC_TF32 ? "tf32" : "bf16";
}

/* " random_crop(padding N)" and " flip" where they are on; whether any was */
static bool print_crop_flip(FILE *out, int crop_padding, bool flip)
{
    if (crop_padding)
        fprintf(out, " random_crop(padding %d)", crop_padding);
    if (flip)
        fputs(" flip", out);
    return crop_padding || flip;
}

static void print_op_detail(FILE *out, const mc_model *m, const mc_op *op)
{
    switch (op->kind) {
    case OP_CONV_STEM:
        fprintf(out, "kernel %d, stride %d, %d layer(s)", op->u.conv.kernel, op->u.conv.stride, op->u.conv.layers);
        break;
    case OP_PATCH_EMBED: fprintf(out, "patch %d", op->u.patch.patch); break;
    case OP_POS_EMBED: fputs(op->u.pos.learned ? "learned" : "sincos", out); break;
    case OP_LAYERNORM: fprintf(out, "eps %g", op->u.ln.eps); break;
    case OP_ATTENTION:
        fprintf(out, "%d heads x %d", op->u.attn.heads, op->u.attn.head_dim);
        break;
    case OP_WINDOW_ATTENTION:
        fprintf(out, "%d heads x %d, window %d%s", op->u.wattn.heads, op->u.wattn.head_dim, op->u.wattn.window,
                op->u.wattn.global_query ? ", global query" : "");
        break;
    case OP_MLP: fprintf(out, "hidden %d, %s", op->u.mlp.hidden, mc_act_name(op->u.mlp.act)); break;
    case OP_MOE: {
        const mc_moe *x = &op->u.moe;
        fprintf(out, "%d experts x hidden %d, %s, router %s", x->experts, x->hidden, mc_act_name(x->act),
                mc_router_name(x->router));
        if (x->router != ROUTER_SOFT && x->router != ROUTER_EXPERT_CHOICE)
            fprintf(out, ", top-%d", x->top_k);
        if (x->router != ROUTER_SOFT) {
            if (x->dropless)
                fputs(", dropless", out);
            else
                fprintf(out, ", capacity %g", x->capacity_factor);
        }
        if (x->batch_priority)
            fputs(", batch priority", out);
        if (x->gate_noise > 0)
            fprintf(out, ", gate noise %g", x->gate_noise);
        if (x->router == ROUTER_SOFT || x->router == ROUTER_LOSS_BASED || x->router == ROUTER_COSINE)
            fprintf(out, ", temperature %g", x->temperature);
        if (x->balance_loss > 0)
            fprintf(out, ", balance %g", x->balance_loss);
        if (x->importance_loss > 0)
            fprintf(out, ", importance %g", x->importance_loss);
        if (x->load_loss > 0)
            fprintf(out, ", load %g", x->load_loss);
        if (x->z_loss > 0)
            fprintf(out, ", z %g", x->z_loss);
        if (x->dataset_loss > 0)
            fprintf(out, ", dataset %g", x->dataset_loss);
        if (x->dataset_expert) {
            fputs(", map {", out);
            for (int i = 0; i < m->ndatasets; i++)
                fprintf(out, "%s%s: %d", i ? ", " : "", m->datasets[i].name, x->dataset_expert[i]);
            fputc('}', out);
        }
        break;
    }
    case OP_DROPOUT:
    case OP_DROP_PATH: fprintf(out, "p %.4g", op->u.drop.p); break;
    case OP_POOL: fputs(op->u.pool.kind == POOL_CLS ? "class token" : "mean", out); break;
    case OP_CLASSIFIER:
        if (op->u.cls.heads == HEADS_PER_DATASET)
            fprintf(out, "one head per dataset");
        else
            fprintf(out, "shared head, %d classes", op->u.cls.classes);
        break;
    default: break;
    }
}

void mc_model_summary(const mc_model *m, void *outp)
{
    FILE *out = outp;
    fprintf(out, "model %s (%s)\n", m->name ? m->name : "?", m->source_path);
    fprintf(out, "input [%d, %d, %d]\n\n", m->input_c, m->input_h, m->input_w);

    double wsum = 0;
    for (int i = 0; i < m->ndatasets; i++)
        wsum += m->datasets[i].weight;
    fprintf(out, "datasets:\n  %-12s %-12s %-28s %-9s %-3s %-7s %-7s %s\n", "name", "format", "path", "size", "ch",
            "classes", "share", "test");
    for (int i = 0; i < m->ndatasets; i++) {
        const mc_dataset *ds = &m->datasets[i];
        char size[32], test[160];
        if (ds->height > 0)
            snprintf(size, sizeof size, "%dx%d", ds->height, ds->width);
        else
            snprintf(size, sizeof size, "any");
        if (ds->test_split > 0)
            snprintf(test, sizeof test, "%.0f%% held out", ds->test_split * 100);
        else if (ds->test_folder)
            snprintf(test, sizeof test, "folder %s", ds->test_folder);
        else
            snprintf(test, sizeof test, "its test set");
        fprintf(out, "  %-12s %-12s %-28s %-9s %-3d %-7d %-7.3f %s%s", ds->name, mc_format_name(ds->format),
                ds->path, size, ds->channels, ds->classes, wsum > 0 ? ds->weight / wsum : 0, test,
                ds->resize ? (ds->resize == 1 ? ", resized bilinear" : ", resized nearest") : "");
        if (ds->listed)
            fputs(", decoded as drawn", out);
        if (ds->own_augment) {
            fputs(", its own augment:", out);
            if (!print_crop_flip(out, ds->crop_padding, ds->flip))
                fputs(" none", out);
        }
        fputc('\n', out);
    }

    fprintf(out, "\nops:\n  %-4s %-17s %-5s %-18s %12s  %s\n", "#", "op", "block", "output", "params", "details");
    for (int i = 0; i < m->nops; i++) {
        const mc_op *op = &m->ops[i];
        char block[16] = "";
        if (op->block >= 0)
            snprintf(block, sizeof block, "%d", op->block);
        fprintf(out, "  %-4d %-17s %-5s ", i, mc_op_name(op->kind), block);
        print_shape(out, &op->out);
        char params[32];
        snprintf(params, sizeof params, "%lld", (long long)op->params);
        fprintf(out, " %12s  ", params);
        print_op_detail(out, m, op);
        fputc('\n', out);
        for (int j = 0; j < op->ntensors; j++) {
            const mc_tensor *t = &op->tensors[j];
            fprintf(out, "         %-44s [", t->name);
            for (int k = 0; k < t->ndim; k++)
                fprintf(out, "%s%lld", k ? ", " : "", (long long)t->shape[k]);
            fprintf(out, "]%s\n", t->expert ? " (per expert)" : "");
        }
    }

    int64_t expert_params = 0;
    for (int i = 0; i < m->nops; i++)
        for (int j = 0; j < m->ops[i].ntensors; j++)
            if (m->ops[i].tensors[j].expert)
                expert_params += m->ops[i].tensors[j].numel;
    fputs("\nparameters: ", out);
    print_count(out, m->params);
    fputs(" (experts ", out);
    print_count(out, expert_params);
    fputs(")\n", out);
    fprintf(out, "blocks: %d, MoE layers: %d\n", m->blocks, m->moe_layers);
    fprintf(out, "forward: %.4f GFLOP per image (routed experts only)\n", m->flops / 1e9);

    const mc_train *t = &m->train;
    fprintf(out, "\ntrain: batch %d, ", t->batch);
    if (t->epochs)
        fprintf(out, "%d epochs", t->epochs);
    else
        fprintf(out, "%lld steps", (long long)t->steps);
    if (t->optimizer == OPT_ADAMW)
        fprintf(out, ", adamw lr %g betas (%g, %g) eps %g weight decay %g", t->lr, t->beta1, t->beta2, t->eps,
                t->weight_decay);
    else
        fprintf(out, ", sgd lr %g momentum %g%s weight decay %g", t->lr, t->momentum,
                t->nesterov ? " nesterov" : "", t->weight_decay);
    static const char *const scheds[] = { "constant", "cosine", "step" };
    fprintf(out, ", %s schedule", scheds[t->schedule]);
    if (t->warmup)
        fprintf(out, " after %lld warmup steps", (long long)t->warmup);
    fprintf(out, "\n       precision %s%s%s, label smoothing %g, clip %g, seed %llu\n",
            precision_name(t->precision), t->recompute != RECOMPUTE_NONE ? ", recompute " : "",
            t->recompute != RECOMPUTE_NONE ? mc_recompute_name(t->recompute) : "", t->label_smoothing,
            t->clip_grad,
            (unsigned long long)t->seed);
    fputs("       augment:", out);
    bool any = print_crop_flip(out, t->crop_padding, t->flip);
    if (t->cutmix_prob > 0) {
        fprintf(out, " cutmix(alpha %g, prob %g)", t->cutmix_alpha, t->cutmix_prob);
        any = true;
    }
    if (t->randaugment_n) {
        fprintf(out, " randaugment(n %d, m %d)", t->randaugment_n, t->randaugment_m);
        any = true;
    }
    fprintf(out, "%s\n", any ? "" : " none");
    fprintf(out, "       evaluate every %lld, checkpoint every %lld, log every %lld steps\n",
            (long long)t->eval_every, (long long)t->checkpoint_every, (long long)t->log_every);
    fprintf(out, "parallel: data %d, expert %d", m->parallel.data, m->parallel.expert);
    if (m->parallel.data > 1)
        fprintf(out, "; %d samples of each batch per GPU, gradients averaged in buckets of %g MiB",
                m->train.batch / m->parallel.data, m->parallel.bucket_mib);
    fprintf(out, "\n");
}

static void print_mib(FILE *out, int64_t bytes)
{
    print_count(out, (bytes + (1 << 19)) >> 20);
}

void mc_gpu_memory_print(const mc_gpu_memory *mem, const mc_model *m, void *outp)
{
    FILE *out = outp;
    fprintf(out, "gpu memory: ");
    print_mib(out, mem->total);
    fprintf(out, " MiB per GPU for the CUDA trainer (%d samples a GPU, %s):\n       weights, gradients and "
                 "AdamW state ",
            mem->local_batch, precision_name(m->train.precision));
    print_mib(out, mem->weights);
    fputs("; activations ", out);
    print_mib(out, mem->activations);
    fputs("; their gradients ", out);
    print_mib(out, mem->gradients);
    fputs("; bf16 operands ", out);
    print_mib(out, mem->bf16);
    fputs("; other ", out);
    print_mib(out, mem->other);
    fputs("\n", out);
}
