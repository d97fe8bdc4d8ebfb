/* main.c: the moecc command line.
 *
 * Exit codes: 0 success, 1 errors in the input program, 2 usage or I/O
 * errors. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "emit.h"
#include "model.h"
#include "schema.h"

enum { EXIT_INPUT = 1, EXIT_USAGE = 2 };

static void usage(FILE *out)
{
    fputs("Usage: moecc [OPTION]... FILE.moe\n"
          "Compile a Mixture-of-Experts model description into a C/CUDA trainer.\n"
          "\n"
          "  -o, --output DIR     write the generated trainer to DIR\n"
          "  -c, --check          check FILE and report errors; write nothing (with\n"
          "                       --target, also what that backend does not generate)\n"
          "  -s, --summary        print the checked model: every op, shape, tensor\n"
          "                       and parameter count\n"
          "      --dump-tokens    print the tokens of FILE\n"
          "      --dump-ast       print the syntax tree of FILE\n"
          "      --list           print every construct of the language and its\n"
          "                       parameters\n"
          "      --target T       generate for cpu or cuda only (default: both when the model\n"
          "                       has a CUDA form; the Makefile builds CUDA where nvcc is)\n"
          "  -W, --werror         treat warnings as errors\n"
          "      --max-errors N   stop after N errors (default 20; 0: no limit)\n"
          "  -h, --help           print this help and exit\n"
          "  -V, --version        print the version and exit\n"
          "\n"
          "Exit status: 0 success, 1 errors in FILE, 2 usage or I/O errors.\n"
          "The language: doc/language.md, man moecc.\n",
          out);
}

int main(int argc, char **argv)
{
    enum { OPT_TOKENS = 256, OPT_AST, OPT_LIST, OPT_TARGET, OPT_MAX_ERRORS };
    static const struct option longopts[] = {
        { "output", required_argument, NULL, 'o' },
        { "check", no_argument, NULL, 'c' },
        { "summary", no_argument, NULL, 's' },
        { "dump-tokens", no_argument, NULL, OPT_TOKENS },
        { "dump-ast", no_argument, NULL, OPT_AST },
        { "list", no_argument, NULL, OPT_LIST },
        { "target", required_argument, NULL, OPT_TARGET },
        { "werror", no_argument, NULL, 'W' },
        { "max-errors", required_argument, NULL, OPT_MAX_ERRORS },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    const char *output = NULL, *target = NULL;
    bool check = false, summary = false, tokens = false, ast = false, werror = false;
    long max_errors = 20;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:csWhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'o': output = optarg; break;
        case 'c': check = true; break;
        case 's': summary = true; break;
        case OPT_TOKENS: tokens = true; break;
        case OPT_AST: ast = true; break;
        case OPT_LIST: mc_schema_print(stdout); return 0;
        case OPT_TARGET:
            if (strcmp(optarg, "cpu") != 0 && strcmp(optarg, "cuda") != 0) {
                fprintf(stderr, "moecc: --target must be cpu or cuda, not '%s'\n", optarg);
                return EXIT_USAGE;
            }
            target = optarg;
            break;
        case 'W': werror = true; break;
        case OPT_MAX_ERRORS: {
            char *end;
            max_errors = strtol(optarg, &end, 10);
            if (*end || end == optarg || max_errors < 0 || max_errors > 1000000) {
                fprintf(stderr, "moecc: --max-errors needs a number from 0 to 1000000, not '%s'\n", optarg);
                return EXIT_USAGE;
            }
            break;
        }
        case 'h': usage(stdout); return 0;
        case 'V':
            printf("moecc %s\n", PACKAGE_VERSION);
            return 0;
        case ':':
            fprintf(stderr, "moecc: option '%s' needs a value\n", argv[optind - 1]);
            return EXIT_USAGE;
        default:
            if (optopt)
                fprintf(stderr, "moecc: unknown option '-%c'\n", optopt);
            else
                fprintf(stderr, "moecc: unknown option '%s'\n", argv[optind - 1]);
            fputs("Try 'moecc --help'.\n", stderr);
            return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        fputs("moecc: no input file\nTry 'moecc --help'.\n", stderr);
        return EXIT_USAGE;
    }
    if (optind + 1 < argc) {
        fprintf(stderr, "moecc: one input file at a time ('%s' and '%s' given)\n", argv[optind], argv[optind + 1]);
        return EXIT_USAGE;
    }
    if (!output && !check && !summary && !tokens && !ast) {
        fputs("moecc: nothing to do: give -o DIR, --check or --summary\nTry 'moecc --help'.\n", stderr);
        return EXIT_USAGE;
    }

    char errbuf[512];
    mc_source *src = mc_source_load(argv[optind], errbuf, sizeof errbuf);
    if (!src) {
        fprintf(stderr, "moecc: %s\n", errbuf);
        return EXIT_USAGE;
    }
    mc_diag d;
    mc_diag_init(&d, src, stderr);
    d.werror = werror;
    d.max_errors = (int)max_errors;

    if (tokens) {
        int rc = mc_dump_tokens(src, &d, stdout);
        mc_diag_flush(&d);
        mc_source_free(src);
        return rc ? EXIT_INPUT : 0;
    }
    mc_program prog;
    mc_parse(src, &d, &prog);
    mc_diag_flush(&d);
    if (ast)
        mc_ast_dump(&prog, stdout);
    int rc = 0;
    if (d.errors == 0 && !ast) {
        mc_model model;
        mc_sema(&prog, &d, &model);
        mc_diag_flush(&d);
        if (d.errors == 0 && summary) {
            mc_model_summary(&model, stdout);
            /* what the CUDA trainer allocates, where the CUDA backend generates the model */
            if (!target || strcmp(target, "cuda") == 0) {
                d.quiet++;
                const bool cuda = mc_emit_check(&model, &d) == 0 && mc_emit_check_cuda(&model, &d) == 0;
                d.quiet--;
                if (cuda) {
                    mc_gpu_memory mem;
                    mc_gpu_memory_plan(&model, &mem);
                    mc_gpu_memory_print(&mem, &model, stdout);
                }
            }
        }
        mc_target tgt = !target ? MC_TARGET_BOTH : strcmp(target, "cuda") == 0 ? MC_TARGET_CUDA : MC_TARGET_CPU;
        /* with -o, or --check with a --target: whether the backends generate the model */
        if (d.errors == 0 && (output || (check && target))) {
            /* the driver, ops.h and the CPU backend are part of every target */
            mc_emit_check(&model, &d);
            if (tgt == MC_TARGET_CUDA) {
                mc_emit_check_cuda(&model, &d);
            } else if (tgt == MC_TARGET_BOTH) {
                /* without --target, the CUDA sources come along when the model has them */
                d.quiet++;
                if (mc_emit_check_cuda(&model, &d) != 0)
                    tgt = MC_TARGET_CPU;
                d.quiet--;
            }
            mc_diag_flush(&d);
        }
        if (d.errors == 0 && output) {
            mc_emit_opts eo = { .outdir = output, .moecc_version = PACKAGE_VERSION, .target = tgt };
            char emit_err[1024];
            if (mc_emit(&model, &eo, emit_err, sizeof emit_err) != 0) {
                fprintf(stderr, "moecc: %s\n", emit_err);
                rc = EXIT_USAGE;
            }
        }
        mc_model_free(&model);
    }
    if (d.errors > 0) {
        fprintf(stderr, "%d error%s", d.errors, d.errors == 1 ? "" : "s");
        if (d.warnings)
            fprintf(stderr, ", %d warning%s", d.warnings, d.warnings == 1 ? "" : "s");
        fputs(" generated.\n", stderr);
        rc = EXIT_INPUT;
    }
    mc_program_free(&prog);
    mc_source_free(src);
    return rc;
}
