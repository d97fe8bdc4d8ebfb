## runtime/core.mk: libmoert's core (errors, RNG, checkpoints, JSON metrics,
## progress line, command line, signals, clocks) and its unit test.

libmoert_la_SOURCES += \
	runtime/core_args.c \
	runtime/core_ckpt.c \
	runtime/core_error.c \
	runtime/core_json.c \
	runtime/core_metrics.c \
	runtime/core_rng.c \
	runtime/core_signal.c \
	runtime/core_timer.c
libmoert_la_LIBADD += -lm
include_HEADERS += runtime/moert.h runtime/moert_core.h

EXTRA_DIST += tests/tools/ckpt_check.py

if HAVE_CMOCKA
check_PROGRAMS += tests/unit/test_core
TESTS += tests/unit/test_core
tests_unit_test_core_SOURCES = tests/unit/test_core.c
tests_unit_test_core_CPPFLAGS = $(AM_CPPFLAGS) \
	-DMOERT_TOP_SRCDIR='"$(abs_top_srcdir)"'
tests_unit_test_core_CFLAGS = $(AM_CFLAGS) $(CMOCKA_CFLAGS)
tests_unit_test_core_LDADD = libmoert.la $(CMOCKA_LIBS) -lm
endif
