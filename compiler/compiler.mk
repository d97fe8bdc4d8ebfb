## compiler/compiler.mk: moecc itself: semantic checks, the checked model,
## the summary, code generation and the command line.
libmoecc_la_SOURCES += compiler/schema.c compiler/schema.h compiler/sema.c \
	compiler/model.h compiler/summary.c compiler/emit.c compiler/emit.h \
	compiler/emit_int.h compiler/emit_util.c compiler/emit_cuda.c
nodist_libmoecc_la_SOURCES = compiler/templates.c

## The templates are compiled into moecc (templates/embed.sh).
TEMPLATE_NAMES = common/train.c common/Makefile common/README.md cpu/ops.h cpu/backend.c \
	cuda/kernels.cuh cuda/backend.cu
TEMPLATE_FILES = $(TEMPLATE_NAMES:%=templates/%)
EXTRA_DIST += templates/embed.sh $(TEMPLATE_FILES)
BUILT_SOURCES += compiler/templates.c
CLEANFILES += compiler/templates.c
compiler/templates.c: $(TEMPLATE_FILES:%=$(srcdir)/%) $(srcdir)/templates/embed.sh
	$(AM_V_GEN)$(MKDIR_P) compiler && \
	$(SHELL) $(srcdir)/templates/embed.sh $(srcdir)/templates $(TEMPLATE_NAMES) > $@.tmp && mv $@.tmp $@

bin_PROGRAMS += moecc
moecc_SOURCES = compiler/main.c
moecc_LDADD = libmoecc.la
