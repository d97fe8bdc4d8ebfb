## compiler/compiler.mk: moecc itself: semantic checks, the checked model,
## the summary, code generation and the command line.
libmoecc_la_SOURCES += compiler/schema.c compiler/schema.h compiler/sema.c \
	compiler/model.h compiler/summary.c compiler/emit.c compiler/emit.h
nodist_libmoecc_la_SOURCES = compiler/templates.c

## The templates are compiled into moecc (templates/embed.sh).
TEMPLATE_NAMES = cpu/ops.h cpu/train.c cpu/Makefile cpu/README.md
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
