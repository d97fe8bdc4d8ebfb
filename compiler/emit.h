/* emit.h: code generation from the checked model.
 *
 * mc_emit writes a directory that builds into a trainer:
 *   model.h      every shape as a compile-time constant, the tensor table
 *   model.c      the forward and backward pass of every op (CPU)
 *   model.json   the ops and tensors, for tools (the PyTorch reference)
 *   ops.h        the CPU kernels (templates/cpu/ops.h)
 *   train.c      the driver: data, loop, evaluation, checkpoints, metrics
 *   Makefile     `make` builds ./train
 *   README.md    what model it is and how to run it */
#ifndef MOECC_EMIT_H
#define MOECC_EMIT_H

#include "model.h"

typedef struct mc_emit_opts {
    const char *outdir;
    const char *moecc_version;
} mc_emit_opts;

/* Check that the backend generates everything the model uses; report what
 * it does not (at the construct's place) and return non-zero then. */
int mc_emit_check(const mc_model *m, mc_diag *d);

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
