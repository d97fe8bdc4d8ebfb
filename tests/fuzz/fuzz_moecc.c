/* fuzz_moecc.c: a libFuzzer target for the moecc front end.
 *
 * Each input is a .moe file. It goes through what `moecc --check` and
 * `moecc --summary` do - lex, parse, check, build the model, print the
 * summary - and through --dump-tokens and --dump-ast, with every message
 * and printout sent to /dev/null. Sanitizers (address, undefined) and
 * libFuzzer's own checks (leaks, timeouts, memory) find the faults.
 *
 *   make fuzz                      build and run it for FUZZ_SECONDS (60)
 *   tests/fuzz/fuzz_moecc DIR...   run the built target on a corpus
 *   tests/fuzz/fuzz_moecc FILE     replay one input
 *
 * The seed corpus is tests/fuzz/corpus/ (the examples and a few small
 * programs); `make fuzz` copies it to a scratch corpus that libFuzzer
 * grows, so the checked-in one stays small. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ast.h"
#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static FILE *devnull;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > MC_MAX_FILE)
        return 0; /* moecc refuses such files before reading them */
    if (!devnull) {
        devnull = fopen("/dev/null", "w");
        if (!devnull)
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
        if (d.errors == 0)
            mc_model_summary(&model, devnull);
        mc_model_free(&model);
    }
    mc_program_free(&prog);
    mc_source_free(src);
    return 0;
}
