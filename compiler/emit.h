/* emit.h: code generation from the checked model.
 *
 * mc_emit writes a directory that builds into a trainer:
 *   model.h      every shape as a compile-time constant, the tensor table
 *   model.json   the ops and tensors, for tools (the PyTorch reference)
 *   train.c      the driver: data, loop, evaluation, checkpoints, metrics
 *                (templates/common/train.c), the same for both backends
 *   ops.h        the CPU kernels (templates/cpu/ops.h)
 *   model.c      the forward and backward pass of every op (CPU)
 *   backend.c    the CPU backend: arenas, one step, evaluation
 *   model.cu     the same on the GPU, calling kernels.cuh (CUDA)
 *   kernels.cuh  the CUDA kernels (templates/cuda/kernels.cuh)
 *   backend.cu   the CUDA backend: device arenas, the step as one CUDA graph
 *   Makefile     `make` builds ./train (CUDA where nvcc is, else the CPU)
 *   README.md    what model it is and how to run it */
#ifndef MOECC_EMIT_H
#define MOECC_EMIT_H

#include "model.h"

typedef enum {
    MC_TARGET_BOTH, /* both backends; the Makefile builds CUDA where nvcc is */
    MC_TARGET_CPU,
    MC_TARGET_CUDA,
} mc_target;

typedef struct mc_emit_opts {
    const char *outdir;
    const char *moecc_version;
    mc_target target;
} mc_emit_opts;

/* Check that the backend generates everything the model uses; report what
 * it does not (at the construct's place) and return the number of errors. */
int mc_emit_check(const mc_model *m, mc_diag *d);
/* The same for the CUDA backend (beyond what mc_emit_check asks). */
int mc_emit_check_cuda(const mc_model *m, mc_diag *d);

/* What the CUDA trainer of m allocates on each GPU, in bytes, by purpose,
 * in the .moe file's precision (the run's --precision changes `bf16`).
 * The routing sort's scratch, which CUB sizes when the trainer starts, and
 * a few fixed tables of bytes are not counted. */
typedef struct mc_gpu_memory {
    int64_t weights;     /* parameters, gradients, AdamW's m and v, the decay mask */
    int64_t activations; /* the activation arena, kept for the backward */
    int64_t gradients;   /* the gradient arena (and the gathered weights under expert parallelism) */
    int64_t bf16;        /* bf16 operands of the products, bf16 expert exchange buffers */
    int64_t other;       /* reduction partials, routing ints, cuBLAS's workspace, the input slots */
    int64_t total;
    int local_batch;     /* samples of each batch per GPU */
} mc_gpu_memory;
/* Plans the CUDA backend's arenas for m (which mc_emit_check_cuda accepts)
 * as mc_emit lays them out, and fills out. */
void mc_gpu_memory_plan(const mc_model *m, mc_gpu_memory *out);
/* `moecc --summary`'s lines on it (summary.c) */
void mc_gpu_memory_print(const mc_gpu_memory *mem, const mc_model *m, void *out);

/* Write the directory. Returns 0, or non-zero with errbuf set (I/O). */
int mc_emit(const mc_model *m, const mc_emit_opts *opts, char *errbuf, size_t errlen);

/* The embedded templates (templates.c, made from templates/ at build time). */
typedef struct mc_template {
    const char *name;
    const char *text;
} mc_template;
extern const mc_template mc_templates[];
const char *mc_template_get(const char *name);

#endif /* MOECC_EMIT_H */
