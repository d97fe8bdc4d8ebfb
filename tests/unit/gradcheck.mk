## tests/unit/gradcheck.mk: tests/unit/test_gradcheck, the finite-difference
## check of every backward kernel of templates/cpu/ops.h (the CPU reference
## of the generated trainers), the MoE layer under each routing option, a
## whole block chained as compiler/emit.c chains the ops, and the
## optimizers against PyTorch's formulas. It compiles ops.h in double
## precision; with OpenMP (when configure found it) it also checks that the
## kernels' threaded results are bitwise the single-threaded ones.
## Included from tests/tests.mk.

if HAVE_CMOCKA
check_PROGRAMS += tests/unit/test_gradcheck
TESTS += tests/unit/test_gradcheck

tests_unit_test_gradcheck_SOURCES = tests/unit/test_gradcheck.c
tests_unit_test_gradcheck_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/runtime
tests_unit_test_gradcheck_CFLAGS = $(AM_CFLAGS) $(OPENMP_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_gradcheck_LDADD = libmoecc.la libmoert.la $(CMOCKA_LIBS) -lm
endif
