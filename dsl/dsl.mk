## dsl/dsl.mk: the .moe front end (lexer, parser, syntax tree, diagnostics).
## It and compiler/ form libmoecc, a convenience library that moecc and
## the unit tests link.
noinst_LTLIBRARIES += libmoecc.la
libmoecc_la_SOURCES = dsl/parser.y dsl/lexer.l dsl/ast.c dsl/source.c \
	dsl/ast.h dsl/lexstate.h
libmoecc_la_LIBADD = -lm
AM_YFLAGS = -d -Wall -Werror
BUILT_SOURCES += dsl/parser.h
