/* ast.h: the syntax tree of a .moe program, and the source/diagnostic
 * machinery every phase shares.
 *
 * A .moe program is a list of statements. The grammar is deliberately
 * uniform (see dsl/parser.y and doc/language.md):
 *
 *   const NAME = expr                     a named constant
 *   NAME = expr                           a setting (inside train { ... })
 *   KIND [NAME] (args) [{ stmts }]        a node: dataset, model, a layer...
 *   KIND [NAME] { stmts }
 *
 * The parser knows no layer or parameter names: sema (compiler/sema.c)
 * checks every node against the schema table (compiler/schema.c). Every
 * node keeps the location of its representative token so any phase can
 * point at the source. */
#ifndef MOECC_AST_H
#define MOECC_AST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- memory: allocation failure ends moecc with exit code 2 ------------- */

void *mc_xmalloc(size_t n);
void *mc_xcalloc(size_t n, size_t size);
void *mc_xrealloc(void *p, size_t n);
char *mc_xstrdup(const char *s);
char *mc_xstrndup(const char *s, size_t n);

/* ---- source files and locations -------------------------------------- */

typedef struct mc_source {
    char *path;       /* as given on the command line */
    char *text;       /* whole file, NUL-terminated (embedded NULs possible) */
    size_t len;       /* bytes in text, not counting the final NUL */
    size_t *lines;    /* byte offset of the start of each line */
    int nlines;
} mc_source;

/* Lines and columns are 1-based; columns count bytes. */
typedef struct mc_loc {
    int line, col;         /* first character */
    int end_line, end_col; /* one past the last character */
} mc_loc;

mc_source *mc_source_load(const char *path, char *errbuf, size_t errlen);
mc_source *mc_source_from_string(const char *path, const char *text, size_t len);
void mc_source_free(mc_source *src);

/* ---- diagnostics -------------------------------------------------------- */

typedef enum { MC_ERROR, MC_WARNING, MC_NOTE } mc_severity;

/* Reports are collected and printed by mc_diag_flush in source order, so
 * that the phases, which walk the program in different orders, still
 * print their findings top to bottom. */
typedef struct mc_diag_rec {
    mc_severity sev;
    mc_loc loc;
    char *msg;
    char *hints;        /* "   = hint: ...\n" lines, or NULL */
    int seq;            /* arrival order, to keep the sort stable */
} mc_diag_rec;

typedef struct mc_diag {
    const mc_source *src;
    void *out;          /* FILE * where diagnostics go (stderr by default) */
    int errors, warnings;
    int max_errors;     /* print at most this many errors (0: no limit) */
    bool werror;        /* treat warnings as errors */
    int quiet;          /* > 0: drop reports (speculative evaluation) */
    mc_diag_rec *recs;
    int nrecs, cap;
    int last;           /* the record hints attach to, or -1 */
    uint64_t seen[256]; /* reports already made, so a repeated one is dropped */
    int nseen;
} mc_diag;

void mc_diag_init(mc_diag *d, const mc_source *src, void *out);
/* Print the collected reports in source order and forget them. */
void mc_diag_flush(mc_diag *d);

/* Report "file:line:col: error: msg", the source line, and a caret under
 * loc (printed by mc_diag_flush). Returns true when the report was kept. */
#if defined(__GNUC__)
#define MC_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MC_PRINTF(a, b)
#endif
bool mc_report(mc_diag *d, mc_severity sev, mc_loc loc, const char *fmt, ...)
    MC_PRINTF(4, 5);
/* A hint attached to the last report: "   = hint: ...". */
void mc_hint(mc_diag *d, const char *fmt, ...) MC_PRINTF(2, 3);

/* ---- expressions -------------------------------------------------------- */

typedef enum {
    EXPR_INT,    /* 42, 60_000 */
    EXPR_FLOAT,  /* 1e-3, 0.1 */
    EXPR_STRING, /* "fashion-mnist" */
    EXPR_BOOL,   /* true, false */
    EXPR_NAME,   /* an identifier: a constant, a dataset, an enum word */
    EXPR_LIST,   /* [a, b, c] */
    EXPR_MAP,    /* {key: value, ...} */
    EXPR_CALL,   /* every(2), adamw(lr = 1e-3) */
    EXPR_BINARY, /* a + b, a * b ... */
    EXPR_NEG,    /* -a */
} mc_expr_kind;

typedef struct mc_expr mc_expr;
typedef struct mc_arg mc_arg;

struct mc_arg {          /* an argument: name = value, or a positional value */
    char *name;          /* NULL for a positional argument */
    mc_loc name_loc;
    mc_expr *value;
    mc_arg *next;
};

struct mc_expr {
    mc_expr_kind kind;
    mc_loc loc;
    int depth;           /* nesting depth of this subtree (1 for a leaf) */
    union {
        int64_t i;                                  /* EXPR_INT */
        double f;                                   /* EXPR_FLOAT */
        bool b;                                     /* EXPR_BOOL */
        char *s;                                    /* EXPR_STRING, EXPR_NAME */
        struct { mc_expr *items; int n; } list;     /* EXPR_LIST: chained by next */
        struct { mc_arg *entries; int n; } map;     /* EXPR_MAP: key in name */
        struct { char *name; mc_arg *args; } call;  /* EXPR_CALL */
        struct { int op; mc_expr *lhs, *rhs; } bin; /* EXPR_BINARY: '+','-','*','/','%' */
        mc_expr *neg;                               /* EXPR_NEG */
    } u;
    mc_expr *next;       /* sibling in a list */
};

/* ---- statements --------------------------------------------------------- */

typedef enum {
    STMT_CONST,   /* const NAME = expr */
    STMT_SETTING, /* NAME = expr */
    STMT_NODE,    /* KIND [NAME] [(args)] [{ body }] */
} mc_stmt_kind;

typedef struct mc_stmt mc_stmt;
struct mc_stmt {
    mc_stmt_kind kind;
    mc_loc loc;          /* of the keyword / kind / setting name */
    char *kw;            /* constant name, setting name, or node kind */
    char *name;          /* node name (dataset fmnist ...) or NULL */
    mc_loc name_loc;
    mc_expr *value;      /* STMT_CONST, STMT_SETTING */
    mc_arg *args;        /* STMT_NODE */
    bool has_args;       /* written with parentheses */
    mc_loc args_loc;     /* the '(' */
    mc_stmt *body;       /* STMT_NODE children */
    bool has_body;       /* written with braces */
    mc_stmt *next;
};

typedef struct mc_program {
    mc_stmt *stmts;
} mc_program;

/* Constructors (used by the parser). Strings are taken over, not copied. */
mc_expr *mc_expr_new(mc_expr_kind kind, mc_loc loc);
mc_expr *mc_expr_binary(int op, mc_expr *lhs, mc_expr *rhs, mc_loc loc);
mc_arg *mc_arg_new(char *name, mc_loc name_loc, mc_expr *value);
mc_stmt *mc_stmt_new(mc_stmt_kind kind, mc_loc loc, char *kw);
void mc_expr_free(mc_expr *e);
void mc_args_free(mc_arg *a);
void mc_stmts_free(mc_stmt *s);
void mc_program_free(mc_program *p);

/* Printing, for `moecc --dump-ast`. */
void mc_ast_dump(const mc_program *p, void *out);
void mc_expr_print(const mc_expr *e, void *out);
const char *mc_expr_kind_name(mc_expr_kind k);

/* The deepest nesting the front end accepts, for brackets and expressions. */
#define MC_MAX_DEPTH 64
/* The longest identifier and string literal, in bytes. */
#define MC_MAX_IDENT 128
#define MC_MAX_STRING 4096
/* The largest input file, in bytes. */
#define MC_MAX_FILE (8u << 20)

/* ---- the front end ------------------------------------------------------ */

/* Parse src. Syntax errors go to d; the program holds whatever parsed.
 * Returns 0 when there were no errors. */
int mc_parse(const mc_source *src, mc_diag *d, mc_program *out);

/* Print the token stream, for `moecc --dump-tokens`. */
int mc_dump_tokens(const mc_source *src, mc_diag *d, void *out);

#endif /* MOECC_AST_H */
