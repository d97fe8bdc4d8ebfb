## compiler/compiler.mk: moecc itself: semantic checks, the checked model,
## the summary and the command line.
libmoecc_la_SOURCES += compiler/schema.c compiler/schema.h compiler/sema.c \
	compiler/model.h compiler/summary.c

bin_PROGRAMS += moecc
moecc_SOURCES = compiler/main.c
moecc_LDADD = libmoecc.la
