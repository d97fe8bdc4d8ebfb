## doc/doc.mk: the documentation: the moecc(1) man page, the language
## reference, the examples it refers to, and the test that keeps the
## reference in step with the compiler's schema (compiler/schema.c).
##
## tests/docs.sh reads the environment variables MOECC (the moecc to run)
## and top_srcdir; without them it runs ./moecc (the build tree, where
## `make check' runs tests) on $(srcdir)/doc/language.md ($srcdir is set by
## automake's test harness), so it needs no AM_TESTS_ENVIRONMENT of its own.
dist_man_MANS += doc/moecc.1

EXTRA_DIST += doc/language.md tests/docs.sh \
	examples/README.md examples/damex.moe examples/damex_gpu.moe examples/vit_moe_gtsrb.moe \
	examples/gcvit_moe.moe examples/soft_moe_mnist.moe examples/switch_cifar.moe

TESTS += tests/docs.sh
