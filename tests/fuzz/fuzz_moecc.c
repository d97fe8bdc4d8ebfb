/* fuzz_moecc.c: a libFuzzer target for the moecc front end.
 *
 * Each input is a .moe file. It goes through what `moecc --check` and
 * `moecc --summary` do - lex, parse, check, build the model, print the
 * summary, plan the CUDA trainer's memory - and through --dump-tokens and
 * --dump-ast, with every message and printout sent to /dev/null; one
 * valid model in four is also generated, both backends, into a scratch
 * directory (moecc -o). Sanitizers (address, undefined) and
 * libFuzzer's own checks (leaks, timeouts, memory) find the faults.
 *
 *   make fuzz                      build and run it for FUZZ_SECONDS (60)
 *   tests/fuzz/fuzz_moecc DIR...   run the built target on a corpus
 *   tests/fuzz/fuzz_moecc FILE     replay one input
 *
 * The seed corpus is tests/fuzz/corpus/ (the examples and a few small
 * programs); `make fuzz` copies it to a scratch corpus that libFuzzer
 * grows, so the checked-in one stays small. */
#include <ftw.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ast.h"
#include "emit.h"
#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static FILE *devnull;
static char scratch[] = "/tmp/moecc-fuzz.XXXXXX"; /* moecc -o's directory */

/* the scratch directory and what mc_emit wrote there, at exit */
static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_scratch(void)
{
    nftw(scratch, remove_one, 8, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > MC_MAX_FILE)
        return 0; /* moecc refuses such files before reading them */
    if (!devnull) {
        devnull = fopen("/dev/null", "w");
        if (!devnull || !mkdtemp(scratch) || atexit(remove_scratch) != 0)
            abort();
    }
    mc_source *src = mc_source_from_string("fuzz.moe", (const char *)data, size);

    /* moecc --dump-tokens */
    mc_diag d;
    mc_diag_init(&d, src, devnull);
    mc_dump_tokens(src, &d, devnull);
    mc_diag_flush(&d);

    /* moecc --check / --summary, as main.c does them */
    mc_diag_init(&d, src, devnull);
    d.werror = size > 0 && (data[0] & 1); /* sometimes --werror */
    mc_program prog;
    mc_parse(src, &d, &prog);
    mc_diag_flush(&d);
    mc_ast_dump(&prog, devnull); /* --dump-ast */
    if (d.errors == 0) {
        mc_model model;
        mc_sema(&prog, &d, &model);
        mc_diag_flush(&d);
        if (d.errors == 0) {
            mc_model_summary(&model, devnull);
            /* --summary's GPU memory, where the CUDA backend generates the model */
            d.quiet++;
            const int cpu_errors = mc_emit_check(&model, &d);
            const bool cuda = cpu_errors == 0 && mc_emit_check_cuda(&model, &d) == 0;
            d.quiet--;
            if (cuda) {
                mc_gpu_memory mem;
                mc_gpu_memory_plan(&model, &mem);
                mc_gpu_memory_print(&mem, &model, devnull);
            }
            /* moecc -o, both backends (or the CPU's alone), for one input in four */
            if (cpu_errors == 0 && (data[size - 1] & 3) == 0) {
                mc_emit_opts eo = { .outdir = scratch, .moecc_version = "fuzz",
                                    .target = cuda ? MC_TARGET_BOTH : MC_TARGET_CPU };
                char emit_err[1024];
                if (mc_emit(&model, &eo, emit_err, sizeof emit_err) != 0)
                    abort(); /* the scratch directory is writable: no I/O error is expected */
            }
        }
        mc_model_free(&model);
    }
    mc_program_free(&prog);
    mc_source_free(src);
    return 0;
}
