/* schema.h: what each construct of the language accepts.
 *
 * One table (schema.c) lists every node kind, call and setting with its
 * parameters: type, default, range, allowed words and a one-line doc.
 * sema checks programs against it, `moecc --list` prints it, and a test
 * checks that doc/language.md documents every entry. */
#ifndef MOECC_SCHEMA_H
#define MOECC_SCHEMA_H

#include <stdbool.h>

typedef enum {
    PT_INT,      /* integer, with a range */
    PT_FLOAT,    /* number (integers accepted), with a range */
    PT_BOOL,
    PT_STRING,
    PT_WORD,     /* one word of `choices` */
    PT_SIZE,     /* an integer N (meaning N x N) or [height, width] */
    PT_LABELS,   /* a list of strings */
    PT_DSMAP,    /* {dataset: expert, ...} */
    PT_CALL,     /* a call (or bare word) of the context `choices` names */
    PT_CALLS,    /* a list of such calls */
    PT_SELECT,   /* all | none | every(n, start) | [i, j, ...] */
    PT_FLOATS,   /* a list of numbers */
    PT_CHANNELS, /* a number, or one per channel: [r, g, b] */
} mc_ptype;

typedef struct mc_param_spec {
    const char *name;
    mc_ptype type;
    const char *def;     /* default as written in the docs; NULL: required */
    double lo, hi;       /* inclusive range of PT_INT / PT_FLOAT values */
    const char *choices; /* PT_WORD: "a|b|c"; PT_CALL(S): the call context */
    const char *doc;
} mc_param_spec;

/* Where a construct may appear. */
enum {
    CTX_TOP = 1 << 0,       /* the file's top level */
    CTX_LAYER = 1 << 1,     /* inside model { }, repeat { }, residual { } */
    CTX_TRAIN = 1 << 2,     /* a setting inside train { } */
    CTX_ROUTER = 1 << 3,    /* a call given as moe(router = ...) */
    CTX_OPTIMIZER = 1 << 4, /* train { optimizer = ... } */
    CTX_SCHEDULE = 1 << 5,  /* train { schedule = ... } */
    CTX_AUGMENT = 1 << 6,   /* train { augment = [...] } */
    CTX_SELECT = 1 << 7,    /* repeat(moe_blocks = ...) */
};

typedef enum { BODY_NONE, BODY_STMTS, BODY_SETTINGS } mc_body_kind;

typedef struct mc_kind_spec {
    const char *name;
    unsigned ctx;
    bool named;          /* takes a name: dataset NAME (...) */
    mc_body_kind body;
    bool args;           /* takes an argument list */
    const mc_param_spec *params;
    const char *doc;
} mc_kind_spec;

/* All constructs; the list ends with a zeroed entry. */
extern const mc_kind_spec mc_kinds[];

/* The construct called name in context ctx, or NULL. */
const mc_kind_spec *mc_kind_find(const char *name, unsigned ctx);
/* The parameter called name of kind, or NULL; *index is set. */
const mc_param_spec *mc_param_find(const mc_kind_spec *kind, const char *name, int *index);
int mc_param_count(const mc_kind_spec *kind);

/* The closest of the candidates to word (edit distance), or NULL when
 * nothing is close enough to suggest. */
const char *mc_suggest(const char *word, const char *const *candidates, int n);
/* The same over the '|'-separated words of list; result in buf. */
const char *mc_suggest_word(const char *word, const char *list, char *buf, int buflen);
/* A context's name for messages: "layer", "train setting"... */
const char *mc_ctx_name(unsigned ctx);

/* `moecc --list`: every construct and parameter. */
void mc_schema_print(void *out);

#endif /* MOECC_SCHEMA_H */
