/* sema.c: check a .moe program and build the model.
 *
 * Pass 1 walks the top level in source order: constants (evaluated where
 * they are defined), datasets, train and parallel. Pass 2 walks the model,
 * unrolling repeats, inferring the shape after every layer and laying out
 * every learned tensor. Cross-checks (expert-parallel degree, batch split,
 * dataset maps) come last. Every parameter is checked against the schema
 * (schema.c) for type and range. Errors say where, and sema keeps going so
 * one run reports as many as it can. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "schema.h"

#define MAX_PARAMS 24
/* The most ops a model may unroll to: far above any real model (DAMEX has
 * 55), low enough that a few lines of nested repeats cannot exhaust memory. */
#define MAX_OPS (1 << 18)

/* ---- values of constant expressions ------------------------------------- */

typedef enum { V_ERR, V_INT, V_FLOAT, V_BOOL, V_STRING, V_NAME, V_OTHER } vkind;

typedef struct val {
    vkind k;
    int64_t i;
    double f;
    bool b;
    const char *s;   /* V_STRING, V_NAME: points into the tree */
    mc_loc loc;
} val;

typedef struct constant {
    const char *name;
    mc_loc loc;
    val v;
    bool used;
} constant;

typedef struct sema {
    mc_diag *d;
    mc_model *m;
    constant *consts;
    int nconsts;
    /* pass 2 */
    mc_shape shape;
    bool have_input;
    bool done;              /* the classifier was seen */
    int residual_depth;
    int repeat_depth;
    int block;              /* current block, -1 outside repeats */
    bool block_is_moe;      /* the current block's moe() layers are MoE */
    bool shape_unknown;     /* an error left the shape unknown: check no more */
    int cap_ops;
    int downsamples;
    int total_blocks;       /* blocks in the model, counted before pass 2 */
    /* per-block naming */
    int n_norm, n_attn, n_mlp, n_moe;
    int parallel_expert;
    mc_loc recompute_loc;  /* train { recompute = ... }, when given */
    mc_loc parallel_loc;
    bool parallel_given;
    mc_loc batch_loc;
    mc_loc data_loc;        /* parallel(data = ...) */
    const mc_program *prog; /* the whole file, to find constants defined later */
    bool input_faked;       /* "must start with input" was reported */
    bool no_model_said;     /* an unknown statement was taken for a misspelt model */
    bool no_dataset_said;   /* ... for a misspelt dataset */
} sema;

/* ---- diagnostics -------------------------------------------------------- */

static void err(sema *s, mc_loc loc, const char *fmt, ...) MC_PRINTF(3, 4);
static void warn(sema *s, mc_loc loc, const char *fmt, ...) MC_PRINTF(3, 4);

static void err(sema *s, mc_loc loc, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    mc_report(s->d, MC_ERROR, loc, "%s", msg);
}

static void warn(sema *s, mc_loc loc, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    mc_report(s->d, MC_WARNING, loc, "%s", msg);
}

static const char *vkind_text(vkind k)
{
    switch (k) {
    case V_INT: return "an integer";
    case V_FLOAT: return "a number";
    case V_BOOL: return "a boolean";
    case V_STRING: return "a string";
    case V_NAME: return "a name";
    default: return "something else";
    }
}

static const char *expr_text(const mc_expr *e)
{
    switch (e->kind) {
    case EXPR_LIST: return "a list";
    case EXPR_MAP: return "a map";
    case EXPR_CALL: return "a call";
    case EXPR_STRING: return "a string";
    case EXPR_BOOL: return "a boolean";
    case EXPR_FLOAT: return "a number";
    default: return "an expression";
    }
}

/* ---- evaluation ----------------------------------------------------------- */

static constant *find_const(sema *s, const char *name)
{
    for (int i = 0; i < s->nconsts; i++)
        if (strcmp(s->consts[i].name, name) == 0)
            return &s->consts[i];
    return NULL;
}

static void suggest_const(sema *s, const char *name)
{
    const char *cands[256];
    int n = 0;
    for (int i = 0; i < s->nconsts && n < 256; i++)
        cands[n++] = s->consts[i].name;
    const char *best = mc_suggest(name, cands, n);
    if (best) {
        mc_hint(s->d, "did you mean '%s'?", best);
        find_const(s, best)->used = true; /* no "never used" for the misspelt one */
    }
}

/* A name that is no constant (yet): say so, and point at a later
 * definition or a near miss. */
static void unknown_name(sema *s, mc_loc loc, const char *name)
{
    for (const mc_stmt *st = s->prog ? s->prog->stmts : NULL; st; st = st->next) {
        if (st->kind == STMT_CONST && strcmp(st->kw, name) == 0 && !find_const(s, name)) {
            err(s, loc, "constant '%s' is used before its definition at line %d", name, st->loc.line);
            mc_hint(s->d, "move the definition up: a constant is known from where it is defined on");
            return;
        }
    }
    err(s, loc, "unknown name '%s'", name);
    suggest_const(s, name);
}

static val v_err(mc_loc loc)
{
    val v = { .k = V_ERR, .loc = loc };
    return v;
}

static bool is_num(val v)
{
    return v.k == V_INT || v.k == V_FLOAT;
}

static double num(val v)
{
    return v.k == V_INT ? (double)v.i : v.f;
}

/* Evaluate a scalar expression. Names that are not constants come back as
 * V_NAME for the caller to interpret (an enum word, a dataset). */
static val eval(sema *s, const mc_expr *e)
{
    val v = { .k = V_ERR, .loc = e->loc };
    switch (e->kind) {
    case EXPR_INT: v.k = V_INT; v.i = e->u.i; return v;
    case EXPR_FLOAT: v.k = V_FLOAT; v.f = e->u.f; return v;
    case EXPR_BOOL: v.k = V_BOOL; v.b = e->u.b; return v;
    case EXPR_STRING: v.k = V_STRING; v.s = e->u.s; return v;
    case EXPR_NAME: {
        constant *c = find_const(s, e->u.s);
        if (c) {
            c->used = true;
            v = c->v;
            v.loc = e->loc;
            return v;
        }
        v.k = V_NAME;
        v.s = e->u.s;
        return v;
    }
    case EXPR_NEG: {
        val a = eval(s, e->u.neg);
        if (a.k == V_ERR)
            return v_err(e->loc);
        if (a.k == V_NAME) {
            unknown_name(s, a.loc, a.s);
            return v_err(e->loc);
        }
        if (!is_num(a)) {
            err(s, e->loc, "'-' needs a number, found %s", vkind_text(a.k));
            return v_err(e->loc);
        }
        if (a.k == V_INT) {
            if (a.i == INT64_MIN) {
                err(s, e->loc, "integer overflow in constant expression");
                return v_err(e->loc);
            }
            a.i = -a.i;
        } else {
            a.f = -a.f;
        }
        a.loc = e->loc;
        return a;
    }
    case EXPR_BINARY: {
        val a = eval(s, e->u.bin.lhs);
        val b = eval(s, e->u.bin.rhs);
        int op = e->u.bin.op;
        if (a.k == V_ERR || b.k == V_ERR)
            return v_err(e->loc);
        for (int side = 0; side < 2; side++) {
            val x = side ? b : a;
            if (x.k == V_NAME) {
                unknown_name(s, x.loc, x.s);
                return v_err(e->loc);
            }
            if (!is_num(x)) {
                err(s, x.loc, "'%c' needs numbers, found %s", op, vkind_text(x.k));
                return v_err(e->loc);
            }
        }
        v.loc = e->loc;
        if (a.k == V_INT && b.k == V_INT) {
            int64_t r = 0;
            bool overflow = false;
            switch (op) {
            case '+': overflow = __builtin_add_overflow(a.i, b.i, &r); break;
            case '-': overflow = __builtin_sub_overflow(a.i, b.i, &r); break;
            case '*': overflow = __builtin_mul_overflow(a.i, b.i, &r); break;
            case '/':
            case '%':
                if (b.i == 0) {
                    err(s, e->loc, "division by zero in constant expression");
                    return v_err(e->loc);
                }
                if (a.i == INT64_MIN && b.i == -1) {
                    overflow = true;
                    break;
                }
                if (op == '%') {
                    r = a.i % b.i;
                } else if (a.i % b.i == 0) {
                    r = a.i / b.i;
                } else {
                    /* an inexact quotient is a number, not an integer */
                    v.k = V_FLOAT;
                    v.f = (double)a.i / (double)b.i;
                    return v;
                }
                break;
            }
            if (overflow) {
                err(s, e->loc, "integer overflow in constant expression");
                return v_err(e->loc);
            }
            v.k = V_INT;
            v.i = r;
            return v;
        }
        if (op == '%') {
            err(s, e->loc, "'%%' needs integers");
            return v_err(e->loc);
        }
        double x = num(a), y = num(b), r = 0;
        switch (op) {
        case '+': r = x + y; break;
        case '-': r = x - y; break;
        case '*': r = x * y; break;
        case '/':
            if (y == 0) {
                err(s, e->loc, "division by zero in constant expression");
                return v_err(e->loc);
            }
            r = x / y;
            break;
        }
        if (!isfinite(r)) {
            err(s, e->loc, "number out of range in constant expression");
            return v_err(e->loc);
        }
        v.k = V_FLOAT;
        v.f = r;
        return v;
    }
    default:
        v.k = V_OTHER;
        return v;
    }
}

/* ---- binding a node's arguments to its schema ------------------------------ */

typedef struct bind {
    const mc_kind_spec *kind;
    const mc_expr *val[MAX_PARAMS];
    mc_loc name_loc[MAX_PARAMS];
    mc_loc at;           /* the node, for defaults and messages */
    bool misspelt[MAX_PARAMS]; /* an unknown name was taken for this one */
    bool dropped;        /* a positional argument was refused */
} bind;

/* Returns the parameter suggested, or NULL. */
static const char *suggest_param(sema *s, const mc_kind_spec *kind, const char *name)
{
    const char *cands[MAX_PARAMS];
    int n = mc_param_count(kind);
    for (int i = 0; i < n; i++)
        cands[i] = kind->params[i].name;
    const char *best = mc_suggest(name, cands, n);
    if (best)
        mc_hint(s->d, "did you mean '%s'?", best);
    else if (n > 0) {
        char list[256] = "";
        size_t used = 0;
        for (int i = 0; i < n && used < sizeof list - 40; i++)
            used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", cands[i]);
        mc_hint(s->d, "%s takes: %s", kind->name, list);
    } else {
        mc_hint(s->d, "%s takes no arguments", kind->name);
    }
    return best;
}

/* Bind one named value; false when it was refused (reported). */
/* The optimizer or schedule that has a parameter called name (lr of
 * adamw...), for a train setting written at the wrong level. */
static const char *owner_call(const char *name, const char **setting)
{
    static const struct { unsigned ctx; const char *setting; } owners[] = {
        { CTX_OPTIMIZER, "optimizer" }, { CTX_SCHEDULE, "schedule" } };
    for (size_t i = 0; i < sizeof owners / sizeof owners[0]; i++)
        for (const mc_kind_spec *k = mc_kinds; k->name; k++)
            if ((k->ctx & owners[i].ctx) && mc_param_find(k, name, NULL)) {
                *setting = owners[i].setting;
                return k->name;
            }
    return NULL;
}

static bool bind_one(sema *s, bind *b, const char *name, mc_loc name_loc, const mc_expr *value)
{
    int idx;
    const char *setting = NULL;
    const char *owner = strcmp(b->kind->name, "train") == 0 ? owner_call(name, &setting) : NULL;
    if (!mc_param_find(b->kind, name, &idx) && owner) {
        err(s, name_loc, "%s has no parameter '%s'", b->kind->name, name);
        mc_hint(s->d, "'%s' belongs to the %s: %s = %s(%s = ...)", name, setting, setting, owner, name);
        return false;
    }
    if (!mc_param_find(b->kind, name, &idx)) {
        err(s, name_loc, "%s has no parameter '%s'", b->kind->name, name);
        const char *best = suggest_param(s, b->kind, name);
        if (best && mc_param_find(b->kind, best, &idx))
            b->misspelt[idx] = true;
        return false;
    }
    if (b->val[idx]) {
        err(s, name_loc, "'%s' is given twice", name);
        mc_hint(s->d, "the first is at line %d", b->name_loc[idx].line);
        return false;
    }
    b->val[idx] = value;
    b->name_loc[idx] = name_loc;
    return true;
}

static void bind_args(sema *s, bind *b, const mc_kind_spec *kind, const mc_arg *args, mc_loc at)
{
    memset(b, 0, sizeof *b);
    b->kind = kind;
    b->at = at;
    int nparams = mc_param_count(kind);
    int pos = 0;
    bool named_seen = false;
    for (const mc_arg *a = args; a; a = a->next) {
        if (a->name) {
            named_seen = true;
            bind_one(s, b, a->name, a->name_loc, a->value);
            continue;
        }
        if (named_seen) {
            err(s, a->value->loc, "positional argument after a named one");
            mc_hint(s->d, "write it as name = value");
            b->dropped = true;
            continue;
        }
        if (pos >= nparams) {
            if (nparams == 0)
                err(s, a->value->loc, "%s takes no arguments", kind->name);
            else
                err(s, a->value->loc, "%s takes at most %d positional argument%s", kind->name,
                    nparams, nparams == 1 ? "" : "s");
            continue;
        }
        bind_one(s, b, kind->params[pos].name, a->value->loc, a->value);
        pos++;
    }
}

static void bind_settings(sema *s, bind *b, const mc_kind_spec *kind, const mc_stmt *body, mc_loc at)
{
    memset(b, 0, sizeof *b);
    b->kind = kind;
    b->at = at;
    for (const mc_stmt *st = body; st; st = st->next) {
        if (st->kind != STMT_SETTING) {
            err(s, st->loc, "%s { } holds settings (name = value), not '%s'", kind->name, st->kw);
            if (st->kind == STMT_NODE && mc_param_find(kind, st->kw, NULL))
                mc_hint(s->d, "write %s = ...", st->kw);
            else if (st->kind == STMT_NODE && mc_kind_find(st->kw, CTX_OPTIMIZER))
                mc_hint(s->d, "write optimizer = %s(...)", st->kw);
            else if (st->kind == STMT_NODE && mc_kind_find(st->kw, CTX_SCHEDULE))
                mc_hint(s->d, "write schedule = %s(...)", st->kw);
            else if (st->kind == STMT_NODE && mc_kind_find(st->kw, CTX_AUGMENT))
                mc_hint(s->d, "write augment = [%s(...)]", st->kw);
            continue;
        }
        bind_one(s, b, st->kw, st->loc, st->value);
    }
}

static int pidx(const bind *b, const char *name)
{
    int idx = -1;
    if (!mc_param_find(b->kind, name, &idx)) {
        fprintf(stderr, "moecc: internal error: %s has no parameter %s\n", b->kind->name, name);
        abort();
    }
    return idx;
}

static bool given(const bind *b, const char *name)
{
    return b->val[pidx(b, name)] != NULL;
}

static mc_loc where(const bind *b, const char *name)
{
    int i = pidx(b, name);
    return b->val[i] ? b->val[i]->loc : b->at;
}

static void missing(sema *s, const bind *b, const char *name)
{
    if (b->dropped || b->misspelt[pidx(b, name)])
        return; /* the argument is there, misspelt or misplaced: reported */
    err(s, b->at, "%s needs '%s'", b->kind->name, name);
    const mc_param_spec *p = &b->kind->params[pidx(b, name)];
    mc_hint(s->d, "%s: %s", name, p->doc);
}

/* Parameter `name`'s value into *v; false when it is absent (reported
 * when it has no default) or could not be evaluated (reported). */
static bool arg_val(sema *s, const bind *b, const char *name, val *v)
{
    int i = pidx(b, name);
    if (!b->val[i]) {
        if (!b->kind->params[i].def)
            missing(s, b, name);
        return false;
    }
    *v = eval(s, b->val[i]);
    return v->k != V_ERR;
}

/* The same for a number: a bare name there is an unknown constant
 * (reported). */
static bool arg_num(sema *s, const bind *b, const char *name, val *v)
{
    if (!arg_val(s, b, name, v))
        return false;
    if (v->k == V_NAME) {
        unknown_name(s, v->loc, v->s);
        return false;
    }
    return true;
}

/* An integer parameter; fallback when absent or wrong (reported). */
static int64_t get_int(sema *s, const bind *b, const char *name, int64_t fallback)
{
    int i = pidx(b, name);
    const mc_param_spec *p = &b->kind->params[i];
    val v;
    if (!arg_num(s, b, name, &v))
        return fallback;
    if (v.k != V_INT) {
        err(s, v.loc, "'%s' must be an integer, found %s", name,
            v.k == V_OTHER ? expr_text(b->val[i]) : vkind_text(v.k));
        if (v.k == V_FLOAT)
            mc_hint(s->d, "the value is %g", v.f);
        return fallback;
    }
    if ((double)v.i < p->lo) {
        err(s, v.loc, "'%s' must be at least %.0f, found %lld", name, p->lo, (long long)v.i);
        return fallback;
    }
    if ((double)v.i > p->hi) {
        err(s, v.loc, "'%s' must be at most %.0f, found %lld", name, p->hi, (long long)v.i);
        return fallback;
    }
    return v.i;
}

static double get_float(sema *s, const bind *b, const char *name, double fallback)
{
    int i = pidx(b, name);
    const mc_param_spec *p = &b->kind->params[i];
    val v;
    if (!arg_num(s, b, name, &v))
        return fallback;
    if (!is_num(v)) {
        err(s, v.loc, "'%s' must be a number, found %s", name,
            v.k == V_OTHER ? expr_text(b->val[i]) : vkind_text(v.k));
        return fallback;
    }
    double x = num(v);
    if (x < p->lo) {
        err(s, v.loc, "'%s' must be at least %g, found %g", name, p->lo, x);
        return fallback;
    }
    if (x > p->hi) {
        err(s, v.loc, "'%s' must be at most %g, found %g", name, p->hi, x);
        return fallback;
    }
    return x;
}

static bool get_bool(sema *s, const bind *b, const char *name, bool fallback)
{
    int i = pidx(b, name);
    if (!b->val[i])
        return fallback;
    val v = eval(s, b->val[i]);
    if (v.k == V_ERR)
        return fallback;
    if (v.k != V_BOOL) {
        err(s, v.loc, "'%s' must be true or false, found %s", name,
            v.k == V_OTHER ? expr_text(b->val[i]) : vkind_text(v.k));
        return fallback;
    }
    return v.b;
}

static const char *get_string(sema *s, const bind *b, const char *name, const char *fallback)
{
    int i = pidx(b, name);
    val v;
    if (!arg_val(s, b, name, &v))
        return fallback;
    if (v.k != V_STRING) {
        err(s, v.loc, "'%s' must be a string, found %s", name,
            v.k == V_OTHER ? expr_text(b->val[i]) : vkind_text(v.k));
        if (v.k == V_NAME) {
            bool later = false;
            for (const mc_stmt *st = s->prog->stmts; st; st = st->next)
                later |= st->kind == STMT_CONST && strcmp(st->kw, v.s) == 0;
            if (later)
                mc_hint(s->d, "constant '%s' is defined further down; move its definition up", v.s);
            else
                mc_hint(s->d, "write it in double quotes: \"%s\"", v.s);
        }
        return fallback;
    }
    return v.s;
}

/* The index of word w in "a|b|c", or -1. */
static int word_index(const char *list, const char *w)
{
    size_t n = strlen(w);
    int i = 0;
    for (const char *p = list; *p; i++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, w, n) == 0)
            return i;
        if (!bar)
            break;
        p = bar + 1;
    }
    return -1;
}

/* A word parameter: the index of the chosen word in the choices. */
static int get_word(sema *s, const bind *b, const char *name, int fallback)
{
    int i = pidx(b, name);
    const mc_param_spec *p = &b->kind->params[i];
    if (!b->val[i]) {
        if (!p->def)
            missing(s, b, name);
        return fallback;
    }
    const mc_expr *e = b->val[i];
    const char *w = NULL;
    if (e->kind == EXPR_NAME && !find_const(s, e->u.s))
        w = e->u.s;
    else if (e->kind == EXPR_STRING)
        w = e->u.s;
    if (!w) {
        err(s, e->loc, "'%s' must be one of %s", name, p->choices);
        return fallback;
    }
    int k = word_index(p->choices, w);
    if (k < 0) {
        err(s, e->loc, "'%s' is not a %s of %s", w, name, b->kind->name);
        char buf[64];
        if (mc_suggest_word(w, p->choices, buf, sizeof buf))
            mc_hint(s->d, "did you mean '%s'?", buf);
        else
            mc_hint(s->d, "%s is one of: %s", name, p->choices);
        return fallback;
    }
    return k;
}

/* A number, or a list of one per channel (at most 3): out[3] is filled
 * (a single number for every channel); returns how many were given. */
static int get_channels(sema *s, const bind *b, const char *name, double fallback, double out[3])
{
    int i = pidx(b, name);
    const mc_param_spec *p = &b->kind->params[i];
    const mc_expr *e = b->val[i];
    out[0] = out[1] = out[2] = fallback;
    if (!e || e->kind != EXPR_LIST) {
        out[0] = out[1] = out[2] = get_float(s, b, name, fallback);
        return 1;
    }
    if (e->u.list.n != 1 && e->u.list.n != 3) {
        err(s, e->loc, "'%s' gives %d values: one, or one per channel of an RGB image (3)", name, e->u.list.n);
        return 1;
    }
    int n = 0;
    for (const mc_expr *x = e->u.list.items; x; x = x->next, n++) {
        val v = eval(s, x);
        if (v.k == V_ERR)
            continue;
        if (!is_num(v)) {
            err(s, x->loc, "'%s' must hold numbers, found %s", name, vkind_text(v.k));
            continue;
        }
        if (num(v) < p->lo || num(v) > p->hi) {
            err(s, x->loc, "'%s' values must be between %g and %g, found %g", name, p->lo, p->hi, num(v));
            continue;
        }
        out[n] = num(v);
    }
    if (e->u.list.n == 1)
        out[1] = out[2] = out[0];
    return e->u.list.n;
}

/* A size: N or [height, width]. */
static bool get_size(sema *s, const bind *b, const char *name, int *h, int *w)
{
    int i = pidx(b, name);
    const mc_param_spec *p = &b->kind->params[i];
    const mc_expr *e = b->val[i];
    if (!e)
        return false;
    int64_t v[2] = { 0, 0 };
    int n = 0;
    if (e->kind == EXPR_LIST) {
        if (e->u.list.n != 2) {
            err(s, e->loc, "'%s' must be N or [height, width], found a list of %d", name, e->u.list.n);
            return false;
        }
        for (const mc_expr *x = e->u.list.items; x; x = x->next) {
            val a = eval(s, x);
            if (a.k == V_ERR)
                return false;
            if (a.k != V_INT) {
                err(s, x->loc, "'%s' must hold integers, found %s", name, vkind_text(a.k));
                return false;
            }
            v[n++] = a.i;
        }
    } else {
        val a = eval(s, e);
        if (a.k == V_ERR)
            return false;
        if (a.k != V_INT) {
            err(s, e->loc, "'%s' must be N or [height, width], found %s", name,
                a.k == V_OTHER ? expr_text(e) : vkind_text(a.k));
            return false;
        }
        v[0] = v[1] = a.i;
    }
    for (int k = 0; k < 2; k++) {
        if (v[k] < p->lo || v[k] > p->hi) {
            err(s, e->loc, "'%s' must be between %.0f and %.0f, found %lld", name, p->lo, p->hi,
                (long long)v[k]);
            return false;
        }
    }
    *h = (int)v[0];
    *w = (int)v[1];
    return true;
}

/* A call of context ctx (or a bare word naming one); binds its arguments
 * into sub. NULL when absent (use the default) or wrong (reported). */
static const mc_kind_spec *bind_call(sema *s, const mc_expr *e, const char *param, unsigned ctx, bind *sub)
{
    const char *name;
    const mc_arg *args = NULL;
    if (e->kind == EXPR_CALL) {
        name = e->u.call.name;
        args = e->u.call.args;
    } else if (e->kind == EXPR_NAME && !find_const(s, e->u.s)) {
        name = e->u.s;
    } else {
        err(s, e->loc, "'%s' must be a %s, found %s", param, mc_ctx_name(ctx), expr_text(e));
        goto list_them;
    }
    const mc_kind_spec *k = mc_kind_find(name, ctx);
    if (!k) {
        err(s, e->loc, "unknown %s '%s'", mc_ctx_name(ctx), name);
        goto list_them;
    }
    bind_args(s, sub, k, args, e->loc);
    return k;
list_them: {
        const char *cands[32];
        int n = 0;
        for (const mc_kind_spec *q = mc_kinds; q->name && n < 32; q++)
            if (q->ctx & ctx)
                cands[n++] = q->name;
        const char *best = e->kind == EXPR_NAME || e->kind == EXPR_CALL
                               ? mc_suggest(e->kind == EXPR_CALL ? e->u.call.name : e->u.s, cands, n)
                               : NULL;
        if (best) {
            mc_hint(s->d, "did you mean '%s'?", best);
        } else {
            char list[256] = "";
            size_t used = 0;
            for (int i = 0; i < n && used < sizeof list - 40; i++)
                used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", cands[i]);
            mc_hint(s->d, "one of: %s", list);
        }
    }
    return NULL;
}

/* ---- pass 1: constants, datasets, train, parallel ---------------------------- */

/* An array of n elements of `size' bytes, with room for one more: it
 * doubles when n reaches a power of two, so that n appends copy O(n) bytes
 * in all (a per-dataset head over thousands of datasets must not copy its
 * tensors for every tensor). */
static void *grow(void *p, int n, size_t size)
{
    if (n & (n - 1))
        return p;
    return mc_xrealloc(p, (size_t)(n ? 2 * n : 1) * size);
}

static void do_const(sema *s, const mc_stmt *st)
{
    constant *prev = find_const(s, st->kw);
    if (prev) {
        err(s, st->loc, "constant '%s' is defined twice", st->kw);
        mc_hint(s->d, "the first definition is at line %d", prev->loc.line);
        return;
    }
    if (mc_kind_find(st->kw, CTX_TOP | CTX_LAYER)) {
        err(s, st->loc, "'%s' names a construct of the language and cannot be a constant", st->kw);
        return;
    }
    val v = eval(s, st->value);
    if (v.k == V_NAME) {
        unknown_name(s, v.loc, v.s);
        v.k = V_ERR;
    } else if (v.k == V_OTHER) {
        err(s, st->value->loc, "a constant is a number, a string or a boolean, not %s",
            expr_text(st->value));
        v.k = V_ERR;
    }
    s->consts = grow(s->consts, s->nconsts, sizeof *s->consts);
    constant *c = &s->consts[s->nconsts++];
    c->name = st->kw;
    c->loc = st->loc;
    c->v = v;
    c->used = false;
    if (v.k == V_ERR) /* already reported: uses of it should not report again */
        c->used = true;
}

/* A string parameter naming a file or folder that the trainer joins to a
 * directory (dir, for messages): not empty, and not absolute (it would be
 * read inside the directory all the same). */
static const char *get_relative(sema *s, const bind *b, const char *name, const char *fallback, const char *dir)
{
    const int errors = s->d->errors;
    const char *v = get_string(s, b, name, fallback);
    if (!given(b, name) || s->d->errors != errors)
        return v;
    if (!*v)
        err(s, where(b, name), "'%s' is empty", name);
    else if (*v == '/')
        err(s, where(b, name), "'%s' must be relative to %s, which it is joined to; \"%s\" is absolute", name, dir,
            v);
    return v;
}

/* Whether parameter name, where given, applies (ok); if not, an error at
 * it says it applies to format = formats only. */
static bool applies(sema *s, const bind *b, const char *name, bool ok, const char *formats)
{
    if (ok || !given(b, name))
        return true;
    err(s, b->name_loc[pidx(b, name)], "'%s' applies to format = %s only", name, formats);
    return false;
}

/* image_folder's train_folder and test_folder, gtsrb's test_folder */
static void do_folders(sema *s, const bind *b, mc_dataset *ds)
{
    const bool folders = ds->format == FMT_IMAGE_FOLDER, gtsrb = ds->format == FMT_GTSRB;
    static const char *const names[] = { "train_folder", "test_folder" };
    char **slots[] = { &ds->train_folder, &ds->test_folder };
    for (int k = 0; k < 2; k++) {
        if (!given(b, names[k])) {
            if (folders && ds->test_split <= 0)
                *slots[k] = mc_xstrdup(k == 0 ? "train" : "test");
            continue;
        }
        if (!applies(s, b, names[k], folders || (gtsrb && k == 1),
                     k == 0 ? "image_folder" : "image_folder or gtsrb"))
            continue;
        const char *v = get_relative(s, b, names[k], "", "the dataset's path");
        if (ds->test_split > 0) {
            err(s, b->name_loc[pidx(b, names[k])],
                "'%s' names a folder of its own, but test_split holds the test set out of path's images",
                names[k]);
            mc_hint(s->d, folders ? "give test_split (path is then the folder of class folders itself) or the "
                                    "folders, not both"
                                  : "give test_split or test_folder, not both");
        } else {
            *slots[k] = mc_xstrdup(v);
        }
    }
}

static bool has_test_set(const mc_dataset *ds)
{
    return ds->format == FMT_IDX || ds->format == FMT_CIFAR10 || ds->format == FMT_IMAGE_FOLDER ||
           ds->test_folder;
}

/* The augment list e: random_crop and flip into *crop and *flip; cutmix and
 * randaugment into t for train's list (t = NULL: a dataset's, which may not
 * hold them, since they work on whole batches) */
static void do_augment(sema *s, const mc_expr *e, int *crop, bool *flip, mc_train *t)
{
    if (e->kind != EXPR_LIST) {
        err(s, e->loc, "'augment' must be a list, like [random_crop(padding = 4), flip()]");
        return;
    }
    const char *seen[8] = { 0 };
    int nseen = 0;
    for (const mc_expr *x = e->u.list.items; x; x = x->next) {
        bind sub;
        const mc_kind_spec *a = bind_call(s, x, "augment", CTX_AUGMENT, &sub);
        if (!a)
            continue;
        bool dup = false;
        for (int i = 0; i < nseen; i++)
            dup |= seen[i] == a->name;
        if (dup) {
            err(s, x->loc, "augmentation '%s' is listed twice", a->name);
            continue;
        }
        if (nseen < 8)
            seen[nseen++] = a->name;
        if (strcmp(a->name, "random_crop") == 0) {
            *crop = (int)get_int(s, &sub, "padding", 4);
            if (*crop == 0)
                warn(s, x->loc, "random_crop with padding 0 leaves every image as it is");
        } else if (strcmp(a->name, "flip") == 0) {
            *flip = true;
        } else if (!t) {
            err(s, x->loc, "%s works on whole batches, not on one dataset's samples", a->name);
            mc_hint(s->d, "give it in train's augment; a dataset's augment takes random_crop and flip");
        } else if (strcmp(a->name, "cutmix") == 0) {
            t->cutmix_alpha = get_float(s, &sub, "alpha", 1.0);
            t->cutmix_prob = get_float(s, &sub, "prob", 0.5);
            t->cutmix_loc = x->loc;
        } else if (strcmp(a->name, "randaugment") == 0) {
            t->randaugment_n = (int)get_int(s, &sub, "n", 2);
            t->randaugment_m = (int)get_int(s, &sub, "m", 9);
            t->randaugment_loc = x->loc;
        }
    }
}

static void do_dataset(sema *s, const mc_stmt *st)
{
    mc_model *m = s->m;
    for (int i = 0; i < m->ndatasets; i++) {
        if (strcmp(m->datasets[i].name, st->name) == 0) {
            err(s, st->name_loc, "dataset '%s' is defined twice", st->name);
            mc_hint(s->d, "the first definition is at line %d", m->datasets[i].loc.line);
            return;
        }
    }
    bind b;
    bind_args(s, &b, mc_kind_find("dataset", CTX_TOP), st->args, st->loc);
    m->datasets = grow(m->datasets, m->ndatasets, sizeof *m->datasets);
    mc_dataset *ds = &m->datasets[m->ndatasets];
    memset(ds, 0, sizeof *ds);
    ds->index = m->ndatasets++;
    ds->name = mc_xstrdup(st->name);
    ds->loc = st->name_loc;
    ds->format = (mc_format)get_word(s, &b, "format", FMT_IDX);
    ds->path = mc_xstrdup(get_relative(s, &b, "path", "", "the trainer's --data directory"));
    bool small_gray = ds->format == FMT_IDX || ds->format == FMT_MNIST_JSON || ds->format == FMT_CSV;
    ds->channels = (int)get_int(s, &b, "channels", small_gray ? 1 : 3);
    ds->height = ds->width = ds->format == FMT_CIFAR10 ? 32 : 28;
    if (!get_size(s, &b, "size", &ds->height, &ds->width) && !given(&b, "size")) {
        if (ds->format == FMT_CSV && given(&b, "format"))
            missing(s, &b, "size");
        if (ds->format == FMT_IMAGE_FOLDER || ds->format == FMT_GTSRB)
            ds->height = ds->width = 0; /* any size: resized on load */
    }
    int resize = get_word(s, &b, "resize", 0);
    if (!given(&b, "resize") && (ds->format == FMT_IMAGE_FOLDER || ds->format == FMT_GTSRB))
        resize = 1;
    ds->max_value = get_float(s, &b, "max_value", 255);
    ds->nmean = get_channels(s, &b, "mean", 0.5, ds->mean);
    ds->nstd = get_channels(s, &b, "std", 0.5, ds->std);
    ds->weight = get_float(s, &b, "weight", 1.0);
    ds->test_split = get_float(s, &b, "test_split", 0);
    ds->classes = (int)get_int(s, &b, "classes", 0);

    if (given(&b, "labels")) {
        const mc_expr *e = b.val[pidx(&b, "labels")];
        if (e->kind != EXPR_LIST) {
            err(s, e->loc, "'labels' must be a list of strings, found %s", expr_text(e));
        } else {
            ds->labels = mc_xcalloc((size_t)e->u.list.n + 1, sizeof *ds->labels);
            int n = 0;
            for (const mc_expr *x = e->u.list.items; x; x = x->next) {
                val v = eval(s, x);
                if (v.k != V_STRING) {
                    if (v.k != V_ERR)
                        err(s, x->loc, "'labels' must hold strings, found %s", vkind_text(v.k));
                    continue;
                }
                for (int j = 0; j < n; j++)
                    if (strcmp(ds->labels[j], v.s) == 0)
                        err(s, x->loc, "label \"%s\" appears twice", v.s);
                ds->labels[n++] = mc_xstrdup(v.s);
            }
            if (ds->classes && n != ds->classes) {
                err(s, e->loc, "dataset '%s' has %d classes but %d labels", ds->name, ds->classes, n);
            } else if (!ds->classes) {
                ds->classes = n;
            }
        }
    }
    if (!ds->classes && !given(&b, "labels") && !given(&b, "classes")) {
        err(s, st->name_loc, "dataset '%s' needs 'classes' or 'labels'", ds->name);
    }

    static const char *const idx_files[] = { "train_images", "train_labels", "test_images", "test_labels" };
    char **slots[] = { &ds->train_images, &ds->train_labels, &ds->test_images, &ds->test_labels };
    for (int k = 0; k < 4; k++) {
        const mc_param_spec *p = mc_param_find(b.kind, idx_files[k], NULL);
        char def[128];
        snprintf(def, sizeof def, "%.*s", (int)strlen(p->def) - 2, p->def + 1);
        applies(s, &b, idx_files[k], ds->format == FMT_IDX, "idx");
        *slots[k] = mc_xstrdup(get_relative(s, &b, idx_files[k], def, "the dataset's path"));
    }
    do_folders(s, &b, ds);
    if (applies(s, &b, "in_memory", ds->format == FMT_IMAGE_FOLDER || ds->format == FMT_GTSRB,
                "image_folder or gtsrb"))
        ds->listed = !get_bool(s, &b, "in_memory", true);
    if (given(&b, "format") && !has_test_set(ds) && ds->test_split <= 0) {
        err(s, st->name_loc, "dataset '%s' has no test set: give test_split", ds->name);
        if (ds->format == FMT_GTSRB)
            mc_hint(s->d, "test_split = 0.2 holds out a fifth of the training images; test_folder = "
                          "\"Final_Test/Images\" reads GTSRB's test images (with GT-final_test.csv)");
        else
            mc_hint(s->d, "format = %s files hold one set of samples; test_split = 0.2 holds out a fifth",
                    mc_format_name(ds->format));
    }
    if (ds->weight == 0)
        warn(s, st->name_loc, "dataset '%s' has weight 0 and is never sampled for training", ds->name);
    /* the resize against the model input is checked in pass 2 */
    if (resize == 0 && ds->height == 0)
        resize = 1;
    ds->resize = resize;
    if (given(&b, "augment")) {
        ds->own_augment = true;
        do_augment(s, b.val[pidx(&b, "augment")], &ds->crop_padding, &ds->flip, NULL);
    }
}

static void do_train(sema *s, const mc_stmt *st)
{
    mc_train *t = &s->m->train;
    bind b;
    bind_settings(s, &b, mc_kind_find("train", CTX_TOP), st->body, st->loc);
    t->batch = (int)get_int(s, &b, "batch", 128);
    s->batch_loc = where(&b, "batch");
    if (given(&b, "steps") && given(&b, "epochs")) {
        err(s, where(&b, "epochs"), "give steps or epochs, not both");
    }
    t->steps = get_int(s, &b, "steps", 1000);
    t->epochs = (int)get_int(s, &b, "epochs", 0);
    t->label_smoothing = get_float(s, &b, "label_smoothing", 0);
    t->clip_grad = get_float(s, &b, "clip_grad", 0);
    t->precision = (mc_precision)get_word(s, &b, "precision", PREC_BF16);
    t->recompute = (mc_recompute)get_word(s, &b, "recompute", RECOMPUTE_NONE);
    s->recompute_loc = where(&b, "recompute");
    t->eval_every = get_int(s, &b, "eval_every", 500);
    t->checkpoint_every = get_int(s, &b, "checkpoint_every", 0);
    t->log_every = get_int(s, &b, "log_every", 50);
    t->seed = (uint64_t)get_int(s, &b, "seed", 0);

    /* optimizer */
    t->optimizer = OPT_ADAMW;
    t->lr = 1e-3;
    t->beta1 = 0.9;
    t->beta2 = 0.999;
    t->eps = 1e-8;
    t->weight_decay = 0.05;
    bind sub;
    const mc_kind_spec *k = given(&b, "optimizer")
                                ? bind_call(s, b.val[pidx(&b, "optimizer")], "optimizer", CTX_OPTIMIZER, &sub)
                                : NULL;
    if (k && strcmp(k->name, "adamw") == 0) {
        t->lr = get_float(s, &sub, "lr", 1e-3);
        t->eps = get_float(s, &sub, "eps", 1e-8);
        t->weight_decay = get_float(s, &sub, "weight_decay", 0.05);
        const mc_expr *e = sub.val[pidx(&sub, "betas")];
        if (e) {
            if (e->kind != EXPR_LIST || e->u.list.n != 2) {
                err(s, e->loc, "'betas' must be [beta1, beta2]");
            } else {
                double bv[2];
                int n = 0;
                for (const mc_expr *x = e->u.list.items; x; x = x->next) {
                    val v = eval(s, x);
                    bv[n] = is_num(v) ? num(v) : -1;
                    if (v.k != V_ERR && (!is_num(v) || bv[n] < 0 || bv[n] >= 1))
                        err(s, x->loc, "a beta must be a number in [0, 1)");
                    n++;
                }
                t->beta1 = bv[0] >= 0 && bv[0] < 1 ? bv[0] : 0.9;
                t->beta2 = bv[1] >= 0 && bv[1] < 1 ? bv[1] : 0.999;
            }
        }
    } else if (k && strcmp(k->name, "sgd") == 0) {
        t->optimizer = OPT_SGD;
        t->lr = get_float(s, &sub, "lr", 0.1);
        t->momentum = get_float(s, &sub, "momentum", 0.9);
        t->nesterov = get_bool(s, &sub, "nesterov", false);
        t->weight_decay = get_float(s, &sub, "weight_decay", 5e-4);
        if (t->nesterov && t->momentum == 0)
            err(s, where(&sub, "nesterov"), "Nesterov momentum needs momentum > 0");
    }

    /* schedule */
    t->schedule = SCHED_CONSTANT;
    k = given(&b, "schedule") ? bind_call(s, b.val[pidx(&b, "schedule")], "schedule", CTX_SCHEDULE, &sub) : NULL;
    if (k) {
        t->warmup = get_int(s, &sub, "warmup", 0);
        if (strcmp(k->name, "cosine") == 0) {
            t->schedule = SCHED_COSINE;
            t->min_lr = get_float(s, &sub, "min_lr", 0);
            if (t->min_lr > t->lr)
                err(s, where(&sub, "min_lr"), "min_lr %g is above the learning rate %g", t->min_lr, t->lr);
        } else if (strcmp(k->name, "step") == 0) {
            t->schedule = SCHED_STEP;
            t->step_size = get_int(s, &sub, "every", 1);
            t->gamma = get_float(s, &sub, "gamma", 0.1);
        }
        if (!t->epochs && t->warmup >= t->steps)
            warn(s, where(&sub, "warmup"), "warmup of %lld steps is not shorter than the %lld steps of training",
                 (long long)t->warmup, (long long)t->steps);
    }

    /* augmentations */
    if (given(&b, "augment"))
        do_augment(s, b.val[pidx(&b, "augment")], &t->crop_padding, &t->flip, t);
}

static void do_parallel(sema *s, const mc_stmt *st)
{
    bind b;
    bind_args(s, &b, mc_kind_find("parallel", CTX_TOP), st->args, st->loc);
    mc_parallel *p = &s->m->parallel;
    p->data = (int)get_int(s, &b, "data", 1);
    p->expert = (int)get_int(s, &b, "expert", 1);
    p->bucket_mib = get_float(s, &b, "bucket_mib", 16);
    s->parallel_loc = where(&b, "expert");
    s->data_loc = where(&b, "data");
    s->parallel_given = true;
    if (p->expert > p->data) {
        err(s, where(&b, "expert"), "expert-parallel degree %d exceeds the %d GPUs of data = %d",
            p->expert, p->data, p->data);
        mc_hint(s->d, "experts are sharded over groups of 'expert' of the 'data' ranks");
    } else if (p->data % p->expert != 0) {
        err(s, where(&b, "expert"), "expert-parallel degree %d does not divide data = %d", p->expert, p->data);
    }
}

/* ---- pass 2: the model --------------------------------------------------- */

static char *fmt_name(const char *fmt, ...) MC_PRINTF(1, 2);
static char *fmt_name(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return mc_xstrdup(buf);
}

static mc_op *add_op(sema *s, mc_op_kind kind, mc_loc loc, const char *local)
{
    mc_model *m = s->m;
    if (m->nops == s->cap_ops) {
        s->cap_ops = s->cap_ops ? 2 * s->cap_ops : 64;
        m->ops = mc_xrealloc(m->ops, (size_t)s->cap_ops * sizeof *m->ops);
    }
    mc_op *op = &m->ops[m->nops++];
    memset(op, 0, sizeof *op);
    op->kind = kind;
    op->loc = loc;
    op->block = s->block;
    op->in = s->shape;
    op->out = s->shape;
    if (!local)
        op->prefix = mc_xstrdup("");
    else if (s->block >= 0)
        op->prefix = fmt_name("blocks.%d.%s", s->block, local);
    else
        op->prefix = mc_xstrdup(local);
    return op;
}

static mc_tensor *add_tensor(mc_op *op, const char *name, int ndim, const int64_t *shape,
                             mc_init init, double std)
{
    op->tensors = grow(op->tensors, op->ntensors, sizeof *op->tensors);
    mc_tensor *t = &op->tensors[op->ntensors++];
    memset(t, 0, sizeof *t);
    t->name = op->prefix[0] ? fmt_name("%s.%s", op->prefix, name) : mc_xstrdup(name);
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->numel *= shape[i];
    }
    t->init = init;
    t->init_std = std;
    /* no weight decay on norms, biases, tokens and embeddings (timm's rule) */
    t->no_decay = ndim <= 1 || init == INIT_ONES || init == INIT_ZEROS || strstr(name, "token") != NULL ||
                  strstr(name, "pos_embed") != NULL || strstr(name, "expert_emb") != NULL;
    op->params += t->numel;
    return t;
}

#define SHAPE(...) ((const int64_t[]){ __VA_ARGS__ })
#define NDIM(...) ((int)(sizeof((int64_t[]){ __VA_ARGS__ }) / sizeof(int64_t)))
#define TENSOR(op, name, init, std, ...) \
    add_tensor((op), (name), NDIM(__VA_ARGS__), SHAPE(__VA_ARGS__), (init), (std))

/* A linear layer: weight (out, in) and optionally bias (out). */
static void linear(mc_op *op, const char *name, int64_t in, int64_t out, bool bias)
{
    char w[96], bn[96];
    snprintf(w, sizeof w, "%s.weight", name);
    snprintf(bn, sizeof bn, "%s.bias", name);
    TENSOR(op, w, INIT_TRUNC_NORMAL, 0.02, out, in);
    if (bias)
        TENSOR(op, bn, INIT_ZEROS, 0, out);
}

static void layernorm_tensors(mc_op *op, const char *name, int64_t dim)
{
    char w[96], bn[96];
    snprintf(w, sizeof w, "%s%sweight", name, name[0] ? "." : "");
    snprintf(bn, sizeof bn, "%s%sbias", name, name[0] ? "." : "");
    TENSOR(op, w, INIT_ONES, 0, dim);
    TENSOR(op, bn, INIT_ZEROS, 0, dim);
}

static void shape_text(const mc_shape *sh, char *buf, size_t n)
{
    switch (sh->kind) {
    case SHAPE_IMAGE: snprintf(buf, n, "image %dx%dx%d", sh->c, sh->h, sh->w); break;
    case SHAPE_TOKENS: snprintf(buf, n, "%d tokens x %d", sh->tokens, sh->dim); break;
    case SHAPE_VECTOR: snprintf(buf, n, "vector of %d", sh->dim); break;
    case SHAPE_LOGITS: snprintf(buf, n, "logits"); break;
    }
}

/* The layer needs tokens (and maybe a grid without a class token). */
static bool need_tokens(sema *s, mc_loc loc, const char *layer, bool grid)
{
    if (s->shape_unknown)
        return false;
    if (s->shape.kind == SHAPE_TOKENS) {
        if (grid && s->shape.cls) {
            err(s, loc, "%s needs a token grid, but a class token was added", layer);
            mc_hint(s->d, "add cls_token() after the %s layers, or pool with kind = mean", layer);
            return false;
        }
        return true;
    }
    char buf[64];
    shape_text(&s->shape, buf, sizeof buf);
    err(s, loc, "%s needs tokens, but its input is %s", layer, buf);
    if (s->shape.kind == SHAPE_IMAGE)
        mc_hint(s->d, "turn the image into tokens first with patch_embed(patch = ..., dim = ...)");
    s->shape_unknown = true;
    return false;
}

/* The local name of the n-th layer of a kind in a block: "attn", "attn2"...
 * (numbered always: "norm1", "norm2"). */
static void local_name(char *buf, size_t n, const char *base, int *counter, bool always)
{
    int k = ++*counter;
    if (k == 1 && !always)
        snprintf(buf, n, "%s", base);
    else
        snprintf(buf, n, "%s%d", base, k);
}

static int64_t act_flops(int64_t n)
{
    return n; /* counted as one op per element; small next to the GEMMs */
}

static void check_heads(sema *s, const bind *b, int heads, int dim)
{
    if (heads > 0 && dim % heads != 0) {
        err(s, where(b, "heads"), "%d heads do not divide the width %d", heads, dim);
        int lo = heads, hi = heads;
        while (lo > 1 && dim % lo)
            lo--;
        while (hi < dim && dim % hi)
            hi++;
        mc_hint(s->d, "the width %d splits evenly into %d or %d heads", dim, lo, hi);
    }
}

static void do_moe(sema *s, const mc_stmt *st, const bind *b);
static void walk(sema *s, const mc_stmt *body);

static void do_layer(sema *s, const mc_stmt *st)
{
    const mc_kind_spec *kind = mc_kind_find(st->kw, CTX_LAYER);
    if (!kind) {
        if (mc_kind_find(st->kw, CTX_TOP)) {
            err(s, st->loc, "'%s' belongs at the top level, not inside the model", st->kw);
            return;
        }
        err(s, st->loc, "unknown layer '%s'", st->kw);
        const char *cands[64];
        int n = 0;
        for (const mc_kind_spec *k = mc_kinds; k->name && n < 64; k++)
            if (k->ctx & CTX_LAYER)
                cands[n++] = k->name;
        const char *best = mc_suggest(st->kw, cands, n);
        if (best)
            mc_hint(s->d, "did you mean '%s'?", best);
        return;
    }
    if (st->name && st->name_loc.line > st->loc.line && mc_kind_find(st->name, CTX_LAYER)) {
        /* `layernorm` alone on a line, then `pool()`: the parser read the
         * second layer as the name of the first */
        err(s, st->loc, "'%s' without '()': layers are written %s()", st->kw, st->kw);
        mc_stmt first = { .kind = STMT_NODE, .loc = st->loc, .kw = st->kw, .name_loc = st->loc,
                          .args_loc = st->loc };
        mc_stmt second = *st;
        second.kw = st->name;
        second.loc = st->name_loc;
        second.name = NULL;
        second.next = NULL;
        s->d->quiet++; /* the first layer's own errors would only add noise */
        do_layer(s, &first);
        s->d->quiet--;
        do_layer(s, &second);
        return;
    }
    if (st->name) {
        err(s, st->name_loc, "layer '%s' does not take a name", st->kw);
        if (!st->has_args)
            mc_hint(s->d, "did you forget '()' after '%s'?", st->kw);
        return;
    }
    if (kind->body == BODY_NONE && st->has_body) {
        err(s, st->loc, "%s takes no body { }", st->kw);
        return;
    }
    if (kind->body == BODY_STMTS && !st->has_body) {
        err(s, st->loc, "%s needs a body { ... }", st->kw);
        return;
    }
    if (!kind->args && st->has_args && st->args) {
        err(s, st->args->value->loc, "%s takes no arguments", st->kw);
        return;
    }
    if (s->done) {
        err(s, st->loc, "%s after the classifier", st->kw);
        mc_hint(s->d, "classifier(...) is the last layer");
        return;
    }
    bool is_input = strcmp(kind->name, "input") == 0;
    if (!s->have_input && !is_input) {
        err(s, st->loc, "the model must start with input(channels = ..., height = ..., width = ...)");
        for (const mc_stmt *t = st->next; t; t = t->next)
            if (t->kind == STMT_NODE && strcmp(t->kw, "input") == 0) {
                mc_hint(s->d, "move the input(...) at line %d to the top", t->loc.line);
                break;
            }
        /* go on as if an input were there: no second report */
        s->input_faked = true;
        s->have_input = true;
        s->shape.kind = SHAPE_IMAGE;
        s->shape.c = 3;
        s->shape.h = s->shape.w = 32;
        s->m->input_c = 0;
    }
    bind b;
    bind_args(s, &b, kind, st->args, st->loc);
    mc_shape *sh = &s->shape;
    const char *name = kind->name;

    if (is_input) {
        if (s->have_input) {
            if (s->input_faked)
                s->input_faked = false; /* reported at the first layer */
            else
                err(s, st->loc, "input(...) must be the first layer, and only one");
            return;
        }
        s->have_input = true;
        sh->kind = SHAPE_IMAGE;
        sh->c = (int)get_int(s, &b, "channels", 1);
        sh->h = (int)get_int(s, &b, "height", 28);
        sh->w = (int)get_int(s, &b, "width", 28);
        s->m->input_c = sh->c;
        s->m->input_h = sh->h;
        s->m->input_w = sh->w;
        mc_op *op = add_op(s, OP_INPUT, st->loc, NULL);
        op->out = *sh;
        return;
    }
    if (strcmp(name, "conv_stem") == 0) {
        int dim = (int)get_int(s, &b, "dim", 64);
        int kernel = (int)get_int(s, &b, "kernel", 3);
        int stride = (int)get_int(s, &b, "stride", 2);
        int layers = (int)get_int(s, &b, "layers", 1);
        if (s->shape_unknown)
            return;
        if (sh->kind != SHAPE_IMAGE) {
            err(s, st->loc, "conv_stem needs an image, but patches were already embedded");
            s->shape_unknown = true;
            return;
        }
        if (kernel % 2 == 0)
            err(s, where(&b, "kernel"), "conv_stem kernel must be odd, found %d", kernel);
        if (sh->h % stride || sh->w % stride) {
            err(s, where(&b, "stride"), "stride %d does not divide the %dx%d image", stride, sh->h, sh->w);
            return;
        }
        mc_op *op = add_op(s, OP_CONV_STEM, st->loc, "stem");
        op->u.conv.kernel = kernel;
        op->u.conv.stride = stride;
        op->u.conv.layers = layers;
        int cin = sh->c;
        int h = sh->h / stride, w = sh->w / stride;
        for (int i = 0; i < layers; i++) {
            char wn[32], bn[32];
            snprintf(wn, sizeof wn, "conv%d.weight", i + 1);
            snprintf(bn, sizeof bn, "conv%d.bias", i + 1);
            /* He's normal init, sqrt(2 / fan_in): the stem has no norm, so
             * ViT's 0.02 would shrink the image ~10x a layer */
            TENSOR(op, wn, INIT_TRUNC_NORMAL, sqrt(2.0 / ((double)cin * kernel * kernel)), dim, cin, kernel, kernel);
            TENSOR(op, bn, INIT_ZEROS, 0, dim);
            op->flops += 2.0 * h * w * dim * cin * kernel * kernel;
            cin = dim;
        }
        sh->c = dim;
        sh->h = h;
        sh->w = w;
        op->out = *sh;
        return;
    }
    if (strcmp(name, "patch_embed") == 0) {
        int patch = (int)get_int(s, &b, "patch", 1);
        int dim = (int)get_int(s, &b, "dim", 64);
        if (s->shape_unknown)
            return;
        if (sh->kind != SHAPE_IMAGE) {
            err(s, st->loc, "patch_embed needs an image, but patches were already embedded");
            s->shape_unknown = true;
            return;
        }
        if (sh->h % patch || sh->w % patch) {
            err(s, where(&b, "patch"), "patch size %d does not divide the %dx%d image", patch, sh->h, sh->w);
            int p = patch;
            while (p > 1 && (sh->h % p || sh->w % p))
                p--;
            mc_hint(s->d, "the largest patch size up to %d that divides it is %d", patch, p);
            /* go on with the whole patches, to check the rest */
        }
        mc_op *op = add_op(s, OP_PATCH_EMBED, st->loc, "patch_embed");
        op->u.patch.patch = patch;
        TENSOR(op, "proj.weight", INIT_TRUNC_NORMAL, 0.02, dim, sh->c, patch, patch);
        TENSOR(op, "proj.bias", INIT_ZEROS, 0, dim);
        int gh = sh->h / patch, gw = sh->w / patch;
        op->flops = 2.0 * gh * gw * dim * sh->c * patch * patch;
        sh->kind = SHAPE_TOKENS;
        sh->gh = gh;
        sh->gw = gw;
        sh->tokens = gh * gw;
        sh->dim = dim;
        sh->cls = false;
        op->out = *sh;
        return;
    }
    if (strcmp(name, "cls_token") == 0) {
        if (!need_tokens(s, st->loc, name, false))
            return;
        if (sh->cls) {
            err(s, st->loc, "the tokens already have a class token");
            return;
        }
        if (s->block >= 0) {
            err(s, st->loc, "cls_token() inside a repeat would add a token in every block");
            return;
        }
        mc_op *op = add_op(s, OP_CLS_TOKEN, st->loc, NULL);
        TENSOR(op, "cls_token", INIT_TRUNC_NORMAL, 0.02, 1, 1, sh->dim);
        sh->cls = true;
        sh->tokens++;
        op->out = *sh;
        return;
    }
    if (strcmp(name, "pos_embed") == 0) {
        int kindw = get_word(s, &b, "kind", 0);
        if (!need_tokens(s, st->loc, name, false))
            return;
        mc_op *op = add_op(s, OP_POS_EMBED, st->loc, NULL);
        op->u.pos.learned = kindw == 0;
        if (op->u.pos.learned)
            TENSOR(op, "pos_embed", INIT_TRUNC_NORMAL, 0.02, 1, sh->tokens, sh->dim);
        return;
    }
    if (strcmp(name, "layernorm") == 0) {
        double eps = get_float(s, &b, "eps", 1e-5);
        if (s->shape_unknown)
            return;
        if (sh->kind != SHAPE_TOKENS && sh->kind != SHAPE_VECTOR) {
            need_tokens(s, st->loc, name, false);
            return;
        }
        char local[32];
        local_name(local, sizeof local, "norm", &s->n_norm, s->block >= 0);
        mc_op *op = add_op(s, OP_LAYERNORM, st->loc, local);
        op->u.ln.eps = eps;
        layernorm_tensors(op, "", sh->dim);
        return;
    }
    if (strcmp(name, "attention") == 0 || strcmp(name, "window_attention") == 0) {
        bool win = name[0] == 'w';
        int heads = (int)get_int(s, &b, "heads", 1);
        int window = win ? (int)get_int(s, &b, "window", 1) : 0;
        bool gq = win && get_bool(s, &b, "global_query", false);
        bool qkv_bias = get_bool(s, &b, "qkv_bias", true);
        double dropout = win ? 0 : get_float(s, &b, "dropout", 0);
        if (!need_tokens(s, st->loc, name, win))
            return;
        int dim = sh->dim;
        check_heads(s, &b, heads, dim);
        if (win && window > 0 && (sh->gh % window || sh->gw % window)) {
            err(s, where(&b, "window"), "window %d does not divide the %dx%d token grid", window, sh->gh, sh->gw);
            return;
        }
        char local[32];
        local_name(local, sizeof local, "attn", &s->n_attn, false);
        mc_op *op = add_op(s, win ? OP_WINDOW_ATTENTION : OP_ATTENTION, st->loc, local);
        int head_dim = heads > 0 && dim % heads == 0 ? dim / heads : 1;
        int64_t T = sh->tokens;
        if (win) {
            op->u.wattn.heads = heads;
            op->u.wattn.head_dim = head_dim;
            op->u.wattn.window = window;
            op->u.wattn.global_query = gq;
            op->u.wattn.qkv_bias = qkv_bias;
            /* global query: queries come from the global tokens, so only
             * keys and values are projected from the input */
            linear(op, gq ? "kv" : "qkv", dim, (gq ? 2 : 3) * (int64_t)dim, qkv_bias);
            if (gq)
                linear(op, "global_query", dim, dim, true);
            int64_t wt = (int64_t)window * window;
            /* the projections (global: keys and values of every token, the
             * queries of one window's global tokens), then q kᵀ and att v
             * within each window */
            op->flops = gq ? 2.0 * T * dim * 2 * dim + 2.0 * wt * dim * dim : 2.0 * T * dim * 3 * dim;
            op->flops += 2.0 * 2.0 * T * wt * dim;
        } else {
            op->u.attn.heads = heads;
            op->u.attn.head_dim = head_dim;
            op->u.attn.qkv_bias = qkv_bias;
            op->u.attn.dropout = dropout;
            linear(op, "qkv", dim, 3 * (int64_t)dim, qkv_bias);
            op->flops = 2.0 * T * dim * 3 * dim + 2.0 * 2.0 * T * T * dim;
        }
        linear(op, "proj", dim, dim, true);
        op->flops += 2.0 * T * dim * dim;
        return;
    }
    if (strcmp(name, "mlp") == 0) {
        int hidden = (int)get_int(s, &b, "hidden", 1);
        int act = get_word(s, &b, "act", 0);
        double dropout = get_float(s, &b, "dropout", 0);
        if (s->shape_unknown)
            return;
        if (sh->kind != SHAPE_TOKENS && sh->kind != SHAPE_VECTOR) {
            need_tokens(s, st->loc, name, false);
            return;
        }
        char local[32];
        local_name(local, sizeof local, "mlp", &s->n_mlp, false);
        mc_op *op = add_op(s, OP_MLP, st->loc, local);
        op->u.mlp.hidden = hidden;
        op->u.mlp.act = (mc_act)act;
        op->u.mlp.dropout = dropout;
        int64_t T = sh->kind == SHAPE_TOKENS ? sh->tokens : 1;
        linear(op, "fc1", sh->dim, hidden, true);
        linear(op, "fc2", hidden, sh->dim, true);
        op->flops = 2.0 * 2.0 * T * sh->dim * hidden + (double)act_flops(T * hidden);
        return;
    }
    if (strcmp(name, "moe") == 0) {
        do_moe(s, st, &b);
        return;
    }
    if (strcmp(name, "dropout") == 0) {
        double p = get_float(s, &b, "p", 0);
        mc_op *op = add_op(s, OP_DROPOUT, st->loc, NULL);
        op->u.drop.p = p;
        return;
    }
    if (strcmp(name, "drop_path") == 0) {
        double rate = get_float(s, &b, "rate", 0);
        int sched = get_word(s, &b, "schedule", 0);
        if (s->residual_depth == 0) {
            err(s, st->loc, "drop_path skips a residual branch, so it belongs inside residual { }");
            return;
        }
        mc_op *op = add_op(s, OP_DROP_PATH, st->loc, NULL);
        /* linear: 0 in the first block, rate in the last (timm's schedule) */
        if (sched == 0 && s->block >= 0 && s->total_blocks > 1)
            rate = rate * s->block / (s->total_blocks - 1);
        op->u.drop.p = rate;
        return;
    }
    if (strcmp(name, "residual") == 0) {
        if (s->residual_depth > 0) {
            err(s, st->loc, "residual { } cannot be nested");
            return;
        }
        mc_shape before = *sh;
        int begin = s->m->nops;
        add_op(s, OP_RESIDUAL_BEGIN, st->loc, NULL);
        s->residual_depth++;
        walk(s, st->body);
        s->residual_depth--;
        if (!s->shape_unknown && (sh->kind != before.kind || sh->tokens != before.tokens || sh->dim != before.dim ||
            (before.kind == SHAPE_IMAGE && (sh->c != before.c || sh->h != before.h)))) {
            char a[64], c[64];
            shape_text(&before, a, sizeof a);
            shape_text(sh, c, sizeof c);
            err(s, st->loc, "the body of residual changes the shape from %s to %s", a, c);
            mc_hint(s->d, "x + body(x) needs the body to keep the shape");
            *sh = before;
        }
        mc_op *end = add_op(s, OP_RESIDUAL_END, st->loc, NULL);
        end->u.res.begin = begin;
        return;
    }
    if (strcmp(name, "repeat") == 0) {
        int depth = (int)get_int(s, &b, "depth", 1);
        if (s->repeat_depth > 0 || s->residual_depth > 0) {
            err(s, st->loc, "repeat cannot be nested inside %s", s->repeat_depth ? "repeat" : "residual");
            return;
        }
        /* which blocks are MoE */
        bool *sel = mc_xcalloc((size_t)depth, sizeof *sel);
        const mc_expr *e = b.val[pidx(&b, "moe_blocks")];
        for (int i = 0; i < depth; i++)
            sel[i] = true;
        if (e && e->kind == EXPR_LIST) {
            memset(sel, 0, (size_t)depth * sizeof *sel);
            for (const mc_expr *x = e->u.list.items; x; x = x->next) {
                val v = eval(s, x);
                if (v.k == V_ERR)
                    continue;
                if (v.k != V_INT) {
                    err(s, x->loc, "'moe_blocks' lists block numbers, found %s", vkind_text(v.k));
                } else if (v.i < 0 || v.i >= depth) {
                    err(s, x->loc, "block %lld is out of range: this repeat has blocks 0 to %d", (long long)v.i,
                        depth - 1);
                } else if (sel[v.i]) {
                    err(s, x->loc, "block %lld is listed twice", (long long)v.i);
                } else {
                    sel[v.i] = true;
                }
            }
        } else if (e) {
            bind sub;
            const mc_kind_spec *k = bind_call(s, e, "moe_blocks", CTX_SELECT, &sub);
            if (k && strcmp(k->name, "none") == 0) {
                memset(sel, 0, (size_t)depth * sizeof *sel);
            } else if (k && strcmp(k->name, "every") == 0) {
                int n = (int)get_int(s, &sub, "n", 1);
                int start = (int)get_int(s, &sub, "start", 0);
                if (start >= depth)
                    err(s, where(&sub, "start"), "start %d is out of range: this repeat has blocks 0 to %d",
                        start, depth - 1);
                for (int i = 0; i < depth; i++)
                    sel[i] = i >= start && (i - start) % n == 0;
            }
        }
        s->repeat_depth++;
        /* blocks number their layers afresh; the model's own count goes on after */
        const int top_norm = s->n_norm, top_attn = s->n_attn, top_mlp = s->n_mlp, top_moe = s->n_moe;
        for (int i = 0; i < depth && s->m->nops <= MAX_OPS; i++) {
            s->block = s->m->blocks++;
            s->block_is_moe = sel[i];
            s->n_norm = s->n_attn = s->n_mlp = s->n_moe = 0;
            walk(s, st->body);
            if (s->m->nops > MAX_OPS) {
                err(s, st->loc, "the model unrolls to more than %d layers", MAX_OPS);
                s->shape_unknown = true; /* check no more */
                break;
            }
        }
        s->repeat_depth--;
        s->block = -1;
        s->n_norm = top_norm;
        s->n_attn = top_attn;
        s->n_mlp = top_mlp;
        s->n_moe = top_moe;
        free(sel);
        return;
    }
    if (strcmp(name, "downsample") == 0) {
        int dim = (int)get_int(s, &b, "dim", 1);
        if (!need_tokens(s, st->loc, name, true))
            return;
        if (s->residual_depth > 0) {
            err(s, st->loc, "downsample inside residual { } would change the shape of the branch");
            return;
        }
        if (sh->gh % 2 || sh->gw % 2) {
            err(s, st->loc, "downsample merges 2x2 tokens, but the token grid is %dx%d", sh->gh, sh->gw);
            return;
        }
        char local[32];
        snprintf(local, sizeof local, "downsample%d", ++s->downsamples);
        mc_op *op = add_op(s, OP_DOWNSAMPLE, st->loc, local);
        layernorm_tensors(op, "norm", 4 * (int64_t)sh->dim);
        linear(op, "reduction", 4 * (int64_t)sh->dim, dim, false);
        sh->gh /= 2;
        sh->gw /= 2;
        sh->tokens = sh->gh * sh->gw;
        op->flops = 2.0 * sh->tokens * 4 * sh->dim * dim;
        sh->dim = dim;
        op->out = *sh;
        return;
    }
    if (strcmp(name, "pool") == 0) {
        int kindw = get_word(s, &b, "kind", 1);
        if (!need_tokens(s, st->loc, name, false))
            return;
        if (s->block >= 0 || s->residual_depth > 0) {
            err(s, st->loc, "pool inside %s", s->block >= 0 ? "repeat" : "residual");
            return;
        }
        if (kindw == POOL_CLS && !sh->cls) {
            err(s, where(&b, "kind"), "pool(kind = cls) needs a class token");
            mc_hint(s->d, "add cls_token() after patch_embed, or use pool(kind = mean)");
        }
        mc_op *op = add_op(s, OP_POOL, st->loc, NULL);
        op->u.pool.kind = (mc_pool)kindw;
        sh->kind = SHAPE_VECTOR;
        op->out = *sh;
        return;
    }
    if (strcmp(name, "classifier") == 0) {
        int heads = get_word(s, &b, "heads", 0);
        int classes = (int)get_int(s, &b, "classes", 0);
        s->done = true;
        if (s->shape_unknown)
            return;
        if (sh->kind != SHAPE_VECTOR) {
            char buf[64];
            shape_text(sh, buf, sizeof buf);
            err(s, st->loc, "classifier needs a vector, but its input is %s", buf);
            if (sh->kind == SHAPE_TOKENS)
                mc_hint(s->d, "pool the tokens first: pool(kind = mean) or pool(kind = cls)");
            return;
        }
        if (s->block >= 0 || s->residual_depth > 0) {
            err(s, st->loc, "classifier inside %s", s->block >= 0 ? "repeat" : "residual");
            return;
        }
        mc_model *m = s->m;
        int maxc = 0;
        for (int i = 0; i < m->ndatasets; i++)
            if (m->datasets[i].classes > maxc)
                maxc = m->datasets[i].classes;
        mc_op *op = add_op(s, OP_CLASSIFIER, st->loc, NULL);
        op->u.cls.heads = (mc_heads)heads;
        m->heads = (mc_heads)heads;
        if (heads == HEADS_PER_DATASET) {
            if (given(&b, "classes"))
                err(s, where(&b, "classes"), "'classes' applies to a shared head; per-dataset heads "
                                             "take each dataset's classes");
            if (m->ndatasets == 1)
                warn(s, where(&b, "heads"), "per-dataset heads with a single dataset: one head");
            for (int i = 0; i < m->ndatasets; i++) {
                char wn[192], bn[192];
                snprintf(wn, sizeof wn, "heads.%s.weight", m->datasets[i].name);
                snprintf(bn, sizeof bn, "heads.%s.bias", m->datasets[i].name);
                int c = m->datasets[i].classes > 0 ? m->datasets[i].classes : 1;
                TENSOR(op, wn, INIT_TRUNC_NORMAL, 0.02, c, sh->dim);
                TENSOR(op, bn, INIT_ZEROS, 0, c);
                op->flops += 2.0 * sh->dim * c / m->ndatasets;
            }
            op->u.cls.classes = maxc;
        } else {
            if (!given(&b, "classes")) {
                classes = maxc > 0 ? maxc : 1;
            } else {
                for (int i = 0; i < m->ndatasets; i++) {
                    if (m->datasets[i].classes > classes) {
                        err(s, where(&b, "classes"), "the shared head has %d classes, but dataset '%s' has %d",
                            classes, m->datasets[i].name, m->datasets[i].classes);
                        break;
                    }
                }
            }
            op->u.cls.classes = classes;
            TENSOR(op, "head.weight", INIT_TRUNC_NORMAL, 0.02, classes, sh->dim);
            TENSOR(op, "head.bias", INIT_ZEROS, 0, classes);
            op->flops = 2.0 * sh->dim * classes;
        }
        m->classes = op->u.cls.classes;
        sh->kind = SHAPE_LOGITS;
        sh->dim = op->u.cls.classes;
        op->out = *sh;
        s->done = true;
        return;
    }
    fprintf(stderr, "moecc: internal error: layer %s not handled\n", name);
    abort();
}

static void do_router(sema *s, const bind *b, mc_moe *moe, const mc_loc *moe_loc)
{
    (void)moe_loc;
    moe->router = ROUTER_SOFTMAX_TOPK;
    moe->temperature = 1.0;
    const mc_expr *e = b->val[pidx(b, "router")];
    if (!e)
        return;
    bind sub;
    const mc_kind_spec *k = bind_call(s, e, "router", CTX_ROUTER, &sub);
    if (!k)
        return;
    static const struct { const char *name; mc_router_kind kind; } kinds[] = {
        { "softmax_topk", ROUTER_SOFTMAX_TOPK }, { "switch", ROUTER_SWITCH },
        { "soft", ROUTER_SOFT }, { "expert_choice", ROUTER_EXPERT_CHOICE },
        { "cosine", ROUTER_COSINE }, { "attention", ROUTER_ATTENTION },
        { "loss_based", ROUTER_LOSS_BASED }, { "dataset_aware", ROUTER_DATASET_AWARE },
    };
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(kinds[i].name, k->name) == 0)
            moe->router = kinds[i].kind;
    switch (moe->router) {
    case ROUTER_SOFT:
    case ROUTER_LOSS_BASED:
        moe->temperature = get_float(s, &sub, "temperature", 1.0);
        break;
    case ROUTER_COSINE:
        moe->router_dim = (int)get_int(s, &sub, "dim", 256);
        moe->temperature = get_float(s, &sub, "temperature", 0.07);
        break;
    case ROUTER_ATTENTION:
        moe->router_dim = (int)get_int(s, &sub, "dim", 64);
        break;
    case ROUTER_DATASET_AWARE: {
        const mc_expr *map = sub.val[pidx(&sub, "map")];
        mc_model *m = s->m;
        if (!map) {
            missing(s, &sub, "map");
            break;
        }
        if (map->kind != EXPR_MAP) {
            err(s, map->loc, "'map' must be a map {dataset: expert, ...}, found %s", expr_text(map));
            break;
        }
        moe->dataset_expert = mc_xcalloc((size_t)m->ndatasets + 1, sizeof *moe->dataset_expert);
        for (int i = 0; i < m->ndatasets; i++)
            moe->dataset_expert[i] = -1;
        bool key_errors = false;
        for (const mc_arg *a = map->u.map.entries; a; a = a->next) {
            int di = -1;
            for (int i = 0; i < m->ndatasets; i++)
                if (strcmp(m->datasets[i].name, a->name) == 0)
                    di = i;
            if (di < 0) {
                err(s, a->name_loc, "unknown dataset '%s' in the routing map", a->name);
                key_errors = true;
                const char *cands[64];
                int n = 0;
                for (int i = 0; i < m->ndatasets && n < 64; i++)
                    cands[n++] = m->datasets[i].name;
                const char *best = mc_suggest(a->name, cands, n);
                if (best)
                    mc_hint(s->d, "did you mean '%s'?", best);
                continue;
            }
            val v = eval(s, a->value);
            if (v.k == V_ERR)
                continue;
            if (v.k != V_INT) {
                err(s, a->value->loc, "an expert index must be an integer, found %s", vkind_text(v.k));
                key_errors = true;
                continue;
            }
            if (moe->dataset_expert[di] >= 0) {
                err(s, a->name_loc, "dataset '%s' is mapped twice", a->name);
                continue;
            }
            if (v.i < 0 || (moe->experts > 0 && v.i >= moe->experts)) {
                err(s, a->value->loc, "expert %lld is out of range: this layer has experts 0 to %d",
                    (long long)v.i, moe->experts - 1);
                key_errors = true;
                continue;
            }
            moe->dataset_expert[di] = (int)v.i;
        }
        if (key_errors)
            break; /* a bad entry: the checks below would only repeat it */
        bool unmapped = false;
        for (int i = 0; i < m->ndatasets; i++) {
            if (moe->dataset_expert[i] < 0) {
                err(s, map->loc, "dataset '%s' is not mapped to an expert", m->datasets[i].name);
                mc_hint(s->d, "add %s: EXPERT to the map; several datasets may share an expert",
                        m->datasets[i].name);
                unmapped = true;
            }
        }
        for (int x = 0; x < moe->experts && !unmapped; x++) {
            bool used = false;
            for (int i = 0; i < m->ndatasets; i++)
                used |= moe->dataset_expert[i] == x;
            if (!used) {
                warn(s, map->loc, "no dataset maps to expert %d", x);
                break;
            }
        }
        break;
    }
    default:
        break;
    }
}

static void do_moe(sema *s, const mc_stmt *st, const bind *b)
{
    mc_moe moe;
    memset(&moe, 0, sizeof moe);
    moe.experts = (int)get_int(s, b, "experts", 0);
    moe.hidden = (int)get_int(s, b, "hidden", 1);
    moe.act = (mc_act)get_word(s, b, "act", ACT_GELU);
    moe.top_k = (int)get_int(s, b, "top_k", 1);
    moe.capacity_factor = get_float(s, b, "capacity", 1.25);
    moe.dropless = get_bool(s, b, "dropless", false);
    moe.batch_priority = get_bool(s, b, "batch_priority", false);
    moe.normalize_gates = get_bool(s, b, "normalize_gates", true);
    moe.gate_noise = get_float(s, b, "gate_noise", 0);
    moe.fp32_gate = get_bool(s, b, "fp32_gate", true);
    moe.balance_loss = get_float(s, b, "balance_loss", 0.01);
    moe.importance_loss = get_float(s, b, "importance_loss", 0);
    moe.load_loss = get_float(s, b, "load_loss", 0);
    moe.z_loss = get_float(s, b, "z_loss", 0);
    moe.dataset_loss = get_float(s, b, "dataset_loss", 0);
    do_router(s, b, &moe, &st->loc);

    if (moe.router == ROUTER_DATASET_AWARE && !given(b, "dataset_loss"))
        moe.dataset_loss = 0.1;
    if (moe.router != ROUTER_DATASET_AWARE && moe.dataset_loss > 0)
        err(s, where(b, "dataset_loss"), "dataset_loss needs router = dataset_aware(map = {...})");
    if (moe.experts > 0 && moe.top_k > moe.experts) {
        err(s, where(b, "top_k"), "top_k = %d exceeds the %d experts", moe.top_k, moe.experts);
        moe.top_k = moe.experts;
    }
    if (moe.router == ROUTER_SWITCH && moe.top_k != 1)
        err(s, where(b, "top_k"), "the switch router sends each token to one expert: top_k must be 1");
    static const char *const not_soft[] = { "top_k", "capacity", "dropless", "batch_priority" };
    if (moe.router == ROUTER_SOFT) {
        for (size_t i = 0; i < sizeof not_soft / sizeof not_soft[0]; i++)
            if (given(b, not_soft[i]))
                err(s, where(b, not_soft[i]), "'%s' has no meaning with router = soft(): "
                                               "every token goes to every expert", not_soft[i]);
        moe.top_k = moe.experts;
        moe.dropless = true;
    }
    if (moe.router == ROUTER_EXPERT_CHOICE && given(b, "top_k"))
        err(s, where(b, "top_k"), "with router = expert_choice() experts choose tokens: "
                                  "set capacity, not top_k");
    if (moe.dropless && given(b, "capacity") && moe.router != ROUTER_SOFT)
        err(s, where(b, "capacity"), "'capacity' has no effect with dropless = true");
    if (moe.dropless && moe.batch_priority && moe.router != ROUTER_SOFT)
        warn(s, where(b, "batch_priority"), "batch_priority has no effect with dropless = true");
    if (moe.experts == 1)
        warn(s, where(b, "experts"), "a mixture of one expert is a dense MLP with a router");
    /* the load loss smooths each token's top-k choice by the gate noise's
     * distribution: it needs the noise, and a top-k choice to smooth */
    if (moe.load_loss > 0) {
        if (moe.router == ROUTER_SOFT || moe.router == ROUTER_EXPERT_CHOICE)
            err(s, where(b, "load_loss"), "load_loss needs a top-k router: with router = %s() %s",
                mc_router_name(moe.router),
                moe.router == ROUTER_SOFT ? "every token goes to every expert" : "the experts choose the tokens");
        else if (moe.gate_noise <= 0) {
            err(s, where(b, "load_loss"), "load_loss needs gate_noise > 0");
            mc_hint(s->d, "the load loss is the chance of each choice under the gate noise; "
                          "gate_noise = 1.0 is V-MoE's (a standard deviation of 1 / experts)");
        } else if (moe.experts > 0 && moe.top_k >= moe.experts)
            warn(s, where(b, "load_loss"), "load_loss has no effect with top_k = %d of %d experts: "
                                           "every token goes to every expert", moe.top_k, moe.experts);
    }

    mc_shape *sh = &s->shape;
    if (!need_tokens(s, st->loc, "moe", false)) {
        free(moe.dataset_expert);
        return;
    }
    int64_t T = sh->tokens, D = sh->dim, H = moe.hidden, E = moe.experts > 0 ? moe.experts : 1;
    if (s->block >= 0 && !s->block_is_moe) {
        /* a dense block of a repeat: the MLP this MoE replaces elsewhere */
        char local[32];
        local_name(local, sizeof local, "mlp", &s->n_mlp, false);
        mc_op *op = add_op(s, OP_MLP, st->loc, local);
        op->u.mlp.hidden = moe.hidden;
        op->u.mlp.act = moe.act;
        linear(op, "fc1", D, H, true);
        linear(op, "fc2", H, D, true);
        op->flops = 2.0 * 2.0 * T * D * H;
        free(moe.dataset_expert);
        return;
    }
    char local[32];
    local_name(local, sizeof local, "moe", &s->n_moe, false);
    mc_op *op = add_op(s, OP_MOE, st->loc, local);
    op->u.moe = moe;
    s->m->moe_layers++;
    int64_t R = moe.router_dim;
    switch (moe.router) {
    case ROUTER_COSINE:
        TENSOR(op, "gate.proj.weight", INIT_TRUNC_NORMAL, 0.02, R, D);
        TENSOR(op, "gate.expert_emb", INIT_TRUNC_NORMAL, 0.02, E, R);
        op->flops += 2.0 * T * D * R + 2.0 * T * R * E;
        break;
    case ROUTER_ATTENTION:
        TENSOR(op, "gate.query.weight", INIT_TRUNC_NORMAL, 0.02, R, D);
        TENSOR(op, "gate.expert_tokens", INIT_TRUNC_NORMAL, 0.02, E, R);
        op->flops += 2.0 * T * D * R + 2.0 * T * R * E;
        break;
    default:
        TENSOR(op, "gate.weight", INIT_TRUNC_NORMAL, 0.02, E, D);
        op->flops += 2.0 * T * D * E;
        break;
    }
    mc_tensor *t;
    t = TENSOR(op, "experts.fc1.weight", INIT_TRUNC_NORMAL, 0.02, E, H, D);
    t->expert = true;
    t = TENSOR(op, "experts.fc1.bias", INIT_ZEROS, 0, E, H);
    t->expert = true;
    t->no_decay = true;
    t = TENSOR(op, "experts.fc2.weight", INIT_TRUNC_NORMAL, 0.02, E, D, H);
    t->expert = true;
    t = TENSOR(op, "experts.fc2.bias", INIT_ZEROS, 0, E, D);
    t->expert = true;
    t->no_decay = true;
    double k_eff = moe.router == ROUTER_EXPERT_CHOICE ? moe.capacity_factor : moe.top_k;
    op->flops += k_eff * 2.0 * 2.0 * T * D * H;
}

static void walk(sema *s, const mc_stmt *body)
{
    for (const mc_stmt *st = body; st; st = st->next) {
        switch (st->kind) {
        case STMT_CONST:
            err(s, st->loc, "constants are defined at the top level, not inside a model");
            break;
        case STMT_SETTING:
            if (mc_kind_find(st->kw, CTX_LAYER))
                err(s, st->loc, "'%s = ...' is a setting; layers are written %s(...)", st->kw, st->kw);
            else
                err(s, st->loc, "'%s = ...' is a setting; the model holds only layers", st->kw);
            if (mc_kind_find("train", CTX_TOP) && mc_param_find(mc_kind_find("train", CTX_TOP), st->kw, NULL))
                mc_hint(s->d, "%s is a training setting: it belongs in train { }", st->kw);
            break;
        case STMT_NODE:
            do_layer(s, st);
            break;
        }
    }
}

/* Blocks of the model (repeat depths), for the stochastic-depth schedule. */
static int count_blocks(sema *s, const mc_stmt *body)
{
    int n = 0;
    for (const mc_stmt *st = body; st; st = st->next) {
        if (st->kind != STMT_NODE || strcmp(st->kw, "repeat") != 0 || !st->has_args)
            continue;
        const mc_arg *a = st->args;
        for (; a; a = a->next)
            if (!a->name || strcmp(a->name, "depth") == 0)
                break;
        if (!a)
            continue;
        s->d->quiet++; /* errors are reported when the repeat is walked */
        val v = eval(s, a->value);
        s->d->quiet--;
        if (v.k == V_INT && v.i > 0 && v.i <= 4096)
            n += (int)v.i;
    }
    return n;
}

/* ---- the whole program ---------------------------------------------------- */

static bool check_node_form(sema *s, const mc_stmt *st, const mc_kind_spec *k)
{
    if (k->named && !st->name) {
        err(s, st->loc, "%s needs a name: %s NAME%s", k->name, k->name,
            k->body == BODY_STMTS ? " { ... }" : "(...)");
        return false;
    }
    if (!k->named && st->name) {
        err(s, st->name_loc, "%s does not take a name", k->name);
        return false;
    }
    if (k->body == BODY_NONE && st->has_body) {
        err(s, st->loc, "%s takes no body { }", k->name);
        return false;
    }
    if (k->body != BODY_NONE && !st->has_body) {
        err(s, st->loc, "%s needs a body { ... }", k->name);
        return false;
    }
    if (!k->args && st->has_args) {
        err(s, st->args_loc, "%s takes no arguments", k->name);
        return false;
    }
    return true;
}

/* ---- sizes the trainers can index --------------------------------------------
 *
 * The generated trainers count rows (samples x tokens, the MoE's choices
 * and expert rows) and one sample's values in int, and everything past
 * that in 64 bits: a layer whose rows or per-sample values pass INT_MAX
 * is refused at its place, before code generation (which would overflow
 * the same ints). Only absurd models reach these: ViT-L at a batch of
 * 65,536 has 13 million rows a layer. */

/* a value of one sample: its rows (tokens; the pixels of an image, which
 * a convolution's products take as rows) and values */
static int64_t shape_rows(const mc_shape *sh)
{
    switch (sh->kind) {
    case SHAPE_IMAGE: return (int64_t)sh->h * sh->w;
    case SHAPE_TOKENS: return sh->tokens;
    default: return 1;
    }
}

static int64_t shape_values(const mc_shape *sh)
{
    switch (sh->kind) {
    case SHAPE_IMAGE: return (int64_t)sh->c * sh->h * sh->w;
    case SHAPE_TOKENS: return (int64_t)sh->tokens * sh->dim;
    default: return sh->dim;
    }
}

/* a * b, or INT64_MAX where it overflows (the operands are >= 0) */
static int64_t mul_sat(int64_t a, int64_t b)
{
    int64_t r;
    return __builtin_mul_overflow(a, b, &r) ? INT64_MAX : r;
}

/* model.h: K * floor(cf * ceil(N / E)) rows an expert, at least 1, at
 * most N; N when dropless */
int mc_moe_capacity(int N, int E, int K, double cf, bool dropless)
{
    if (dropless)
        return N;
    long per = ((long)N + E - 1) / E;
    long cap = (long)K * (long)floor(cf * (double)per);
    if (cap < 1)
        cap = 1;
    return cap > N ? N : (int)cap;
}

/* Refuses op's size n of `what` where it passes INT_MAX (per_batch: it
 * grows with the batch); returns whether it did. */
static bool size_over(sema *s, const mc_op *op, const char *what, int64_t n, bool per_batch)
{
    if (n <= INT32_MAX)
        return false;
    if (n == INT64_MAX)
        err(s, op->loc, "%s: %s %s more than 2^63, past the trainers' limit of %d", mc_op_name(op->kind),
            per_batch ? "a batch's" : "a sample's", what, INT32_MAX);
    else
        err(s, op->loc, "%s: %s %s %lld, past the trainers' limit of %d", mc_op_name(op->kind),
            per_batch ? "a batch's" : "a sample's", what, (long long)n, INT32_MAX);
    const char *also = op->kind == OP_MOE ? "fewer experts, a smaller capacity, " : "";
    if (per_batch && s->batch_loc.line > 0)
        mc_hint(s->d, "%sa smaller batch (line %d), fewer tokens or a smaller image", also, s->batch_loc.line);
    else if (per_batch)
        mc_hint(s->d, "%sa smaller batch (train { batch = ... }), fewer tokens or a smaller image", also);
    else
        mc_hint(s->d, "fewer tokens, or a narrower layer");
    return true;
}

/* The first op whose sizes pass the trainers' ints is refused (a repeat
 * would say the same of every copy). */
static void check_sizes(sema *s, const mc_model *m)
{
    const int64_t B = m->train.batch;
    for (int i = 0; i < m->nops; i++) {
        const mc_op *op = &m->ops[i];
        /* rows: of tokens in and out, and of the pixels a convolution makes */
        const int64_t T = shape_rows(&op->in);
        const bool rows_in = op->in.kind == SHAPE_TOKENS, rows_out = op->out.kind == SHAPE_TOKENS ||
                                                                   op->kind == OP_CONV_STEM;
        bool over = (rows_out && size_over(s, op, op->kind == OP_CONV_STEM ? "rows (samples x pixels) are"
                                                                          : "rows (samples x tokens) are",
                                           mul_sat(B, shape_rows(&op->out)), true)) ||
                    (rows_in && size_over(s, op, "rows (samples x tokens) going in are", mul_sat(B, T), true)) ||
                    size_over(s, op, "values are", shape_values(&op->out), false) ||
                    size_over(s, op, "values going in are", shape_values(&op->in), false);
        switch (op->kind) {
        case OP_CONV_STEM: { /* each layer's im2col columns: its input channels x kernel^2 a pixel out */
            const int64_t cin = op->u.conv.layers > 1 && op->out.c > op->in.c ? op->out.c : op->in.c;
            over = over || size_over(s, op, "convolution columns are",
                                     mul_sat(cin * op->u.conv.kernel * op->u.conv.kernel, shape_rows(&op->out)), false);
            break;
        }
        case OP_ATTENTION: /* the heads' scores, T x T each, and q, k and v */
            over = over || size_over(s, op, "attention scores are", mul_sat((int64_t)op->u.attn.heads * T, T), false) ||
                   size_over(s, op, "q, k and v values are", mul_sat(3 * T, op->in.dim), false) ||
                   size_over(s, op, "attention rows (samples x heads x tokens) are",
                             mul_sat(mul_sat(B, op->u.attn.heads), T), true);
            break;
        case OP_WINDOW_ATTENTION: { /* each window's scores, window^2 x window^2 a head */
            const int64_t ww = (int64_t)op->u.wattn.window * op->u.wattn.window;
            over = over || size_over(s, op, "window attention scores are", mul_sat((int64_t)op->u.wattn.heads * T, ww),
                                     false) ||
                   size_over(s, op, "q, k and v values are", mul_sat(3 * T, op->in.dim), false) ||
                   size_over(s, op, "attention rows (samples x heads x tokens) are",
                             mul_sat(mul_sat(B, op->u.wattn.heads), T), true);
            break;
        }
        case OP_MLP:
            over = over || size_over(s, op, "hidden values are", mul_sat(T, op->u.mlp.hidden), false);
            break;
        case OP_MOE: {
            const mc_moe *x = &op->u.moe;
            const bool ec = x->router == ROUTER_EXPERT_CHOICE;
            const int64_t N = mul_sat(B, T), K = ec ? x->experts : x->top_k;
            over = over || size_over(s, op, "routing choices (tokens x top_k) are", mul_sat(N, K), true);
            if (!over) {
                /* the expert rows [experts, capacity], as the emitters size them (N fits an int now);
                 * evaluation is dropless, in batches the arenas hold */
                const int cap = ec ? mc_moe_capacity((int)N, x->experts, 1, x->capacity_factor, false)
                                   : mc_moe_capacity((int)N, x->experts, (int)K, x->capacity_factor, x->dropless);
                over = size_over(s, op, "expert rows (experts x capacity) are", mul_sat(x->experts, cap), true);
            }
            break;
        }
        default:
            break;
        }
        if (over)
            return;
    }
}

int mc_sema(const mc_program *prog, mc_diag *d, mc_model *model)
{
    memset(model, 0, sizeof *model);
    sema S;
    memset(&S, 0, sizeof S);
    sema *s = &S;
    s->d = d;
    s->m = model;
    s->prog = prog;
    s->block = -1;
    model->source_path = mc_xstrdup(d->src ? d->src->path : "");
    model->parallel.data = model->parallel.expert = 1;
    model->parallel.bucket_mib = 16;
    int errors_before = d->errors;

    /* defaults of train { } when there is none */
    mc_stmt empty_train;
    memset(&empty_train, 0, sizeof empty_train);
    empty_train.kind = STMT_NODE;
    empty_train.kw = (char *)"train";

    const mc_stmt *model_st = NULL, *train_st = NULL, *parallel_st = NULL;
    for (const mc_stmt *st = prog->stmts; st; st = st->next) {
        if (st->kind == STMT_CONST) {
            do_const(s, st);
            continue;
        }
        if (st->kind == STMT_SETTING) {
            err(s, st->loc, "'%s = ...' at the top level: settings belong in train { }", st->kw);
            if (!mc_param_find(mc_kind_find("train", CTX_TOP), st->kw, NULL))
                mc_hint(s->d, "constants are written const %s = ...", st->kw);
            continue;
        }
        const mc_kind_spec *k = mc_kind_find(st->kw, CTX_TOP);
        if (!k) {
            if (mc_kind_find(st->kw, CTX_LAYER)) {
                err(s, st->loc, "layer '%s' outside a model", st->kw);
                mc_hint(s->d, "layers go inside model NAME { ... }");
                continue;
            }
            err(s, st->loc, "unknown statement '%s'", st->kw);
            const char *cands[] = { "dataset", "model", "train", "parallel", "const" };
            const char *best = mc_suggest(st->kw, cands, 5);
            if (best)
                mc_hint(s->d, "did you mean '%s'?", best);
            else
                mc_hint(s->d, "a file holds const, dataset, model, train and parallel statements");
            /* a misspelt model or dataset: "no model" would only repeat it */
            if (best && strcmp(best, "model") == 0)
                s->no_model_said = true;
            if (best && strcmp(best, "dataset") == 0)
                s->no_dataset_said = true;
            continue;
        }
        if (!check_node_form(s, st, k))
            continue;
        const mc_stmt **once = NULL;
        if (strcmp(k->name, "model") == 0)
            once = &model_st;
        else if (strcmp(k->name, "train") == 0)
            once = &train_st;
        else if (strcmp(k->name, "parallel") == 0)
            once = &parallel_st;
        if (once && *once) {
            err(s, st->loc, "a second %s%s", k->name, k->body ? " { }" : "(...)");
            mc_hint(s->d, "the first is at line %d; a file describes one model", (*once)->loc.line);
            continue;
        }
        if (once)
            *once = st;
        if (strcmp(k->name, "dataset") == 0)
            do_dataset(s, st);
        else if (strcmp(k->name, "train") == 0)
            do_train(s, st);
        else if (strcmp(k->name, "parallel") == 0)
            do_parallel(s, st);
    }
    if (!train_st)
        do_train(s, &empty_train);

    mc_loc nowhere = { 0, 0, 0, 0 };
    if (model->ndatasets == 0 && !s->no_dataset_said)
        err(s, nowhere, "no dataset in this file: dataset NAME(format = ..., path = ..., classes = ...)");
    if (!model_st) {
        if (!s->no_model_said)
            err(s, nowhere, "no model in this file: model NAME { input(...) ... classifier() }");
    } else {
        model->name = mc_xstrdup(model_st->name);
        s->total_blocks = count_blocks(s, model_st->body);
        walk(s, model_st->body);
        if (!s->have_input) {
            err(s, model_st->loc, "the model has no layers");
            mc_hint(s->d, "it starts with input(...) and ends with classifier()");
        } else if (!s->done) {
            err(s, model_st->loc, "the model must end with classifier()");
        }
    }

    /* cross-checks */
    mc_parallel *p = &model->parallel;
    if (p->data > 1 && model->train.batch % p->data != 0) {
        if (s->batch_loc.line > 0) {
            err(s, s->batch_loc, "batch %d does not split evenly over data = %d GPUs", model->train.batch, p->data);
        } else { /* no train { }: the default batch */
            err(s, s->data_loc, "the default batch of %d does not split evenly over data = %d GPUs",
                model->train.batch, p->data);
            mc_hint(s->d, "set train { batch = ... } to a multiple of %d", p->data);
        }
    }
    if (model->train.recompute != RECOMPUTE_NONE && p->expert > 1) {
        err(s, s->recompute_loc, "recompute = %s does not work with expert parallelism (expert = %d) yet",
            mc_recompute_name(model->train.recompute), p->expert);
        mc_hint(s->d, "leave recompute out, or set parallel(expert = 1): data parallelism alone works with it");
    } else if (model->train.recompute != RECOMPUTE_NONE && model_st) {
        const bool all = model->train.recompute == RECOMPUTE_ALL;
        bool any = false;
        for (int i = 0; i < model->nops; i++)
            any = any || model->ops[i].kind == OP_MOE ||
                  (all && (model->ops[i].kind == OP_ATTENTION || model->ops[i].kind == OP_WINDOW_ATTENTION ||
                           model->ops[i].kind == OP_MLP));
        if (!any)
            warn(s, s->recompute_loc, "recompute = %s: the model has no moe()%s layer, so nothing is recomputed",
                 mc_recompute_name(model->train.recompute),
                 all ? ", attention(), window_attention() or mlp()" : "");
    }
    bool too_many = false;
    for (int i = 0; i < model->nops; i++) {
        mc_op *op = &model->ops[i];
        if (!too_many && __builtin_add_overflow(model->params, op->params, &model->params)) {
            err(s, op->loc, "the model has more than %lld parameters", (long long)INT64_MAX);
            model->params = INT64_MAX;
            too_many = true;
        }
        model->flops += op->flops;
        if (op->kind == OP_MOE && op->u.moe.experts % p->expert != 0) {
            err(s, op->loc, "%d experts do not split over expert = %d GPUs", op->u.moe.experts, p->expert);
            mc_hint(s->d, "the expert-parallel degree set at line %d must divide every expert count",
                    s->parallel_loc.line);
        }
    }
    /* sizes, of a model whose every other part checked */
    if (model_st && s->have_input && s->done && d->errors == errors_before)
        check_sizes(s, model);
    for (int i = 0; i < model->ndatasets; i++) {
        mc_dataset *ds = &model->datasets[i];
        if (!ds->own_augment) {
            ds->crop_padding = model->train.crop_padding;
            ds->flip = model->train.flip;
        }
    }
    if (s->have_input && model->input_c > 0) {
        for (int i = 0; i < model->ndatasets; i++) {
            mc_dataset *ds = &model->datasets[i];
            if (ds->channels != model->input_c &&
                !((ds->channels == 1 || ds->channels == 3) && (model->input_c == 1 || model->input_c == 3)))
                err(s, ds->loc, "dataset '%s' has %d channels but the model input has %d", ds->name,
                    ds->channels, model->input_c);
            if ((ds->nmean == 3 || ds->nstd == 3) && model->input_c != 3)
                err(s, ds->loc, "dataset '%s' normalises 3 channels, but the model input has %d", ds->name,
                    model->input_c);
            if (ds->height > 0 && ds->resize == 0 &&
                (ds->height != model->input_h || ds->width != model->input_w)) {
                err(s, ds->loc, "dataset '%s' is %dx%d but the model input is %dx%d", ds->name, ds->height,
                    ds->width, model->input_h, model->input_w);
                mc_hint(s->d, "add resize = bilinear to the dataset");
            }
        }
    }
    for (int i = 0; i < s->nconsts; i++)
        if (!s->consts[i].used)
            warn(s, s->consts[i].loc, "constant '%s' is never used", s->consts[i].name);
    free(s->consts);
    return d->errors > errors_before ? 1 : 0;
}

void mc_model_free(mc_model *m)
{
    for (int i = 0; i < m->ndatasets; i++) {
        mc_dataset *ds = &m->datasets[i];
        free(ds->name);
        free(ds->path);
        free(ds->train_images);
        free(ds->train_labels);
        free(ds->test_images);
        free(ds->test_labels);
        free(ds->train_folder);
        free(ds->test_folder);
        if (ds->labels)
            for (char **l = ds->labels; *l; l++)
                free(*l);
        free(ds->labels);
    }
    free(m->datasets);
    for (int i = 0; i < m->nops; i++) {
        mc_op *op = &m->ops[i];
        for (int j = 0; j < op->ntensors; j++)
            free(op->tensors[j].name);
        free(op->tensors);
        free(op->prefix);
        if (op->kind == OP_MOE)
            free(op->u.moe.dataset_expert);
    }
    free(m->ops);
    free(m->name);
    free(m->source_path);
    memset(m, 0, sizeof *m);
}

const char *mc_op_name(mc_op_kind k)
{
    static const char *const names[] = {
        "input", "conv_stem", "patch_embed", "cls_token", "pos_embed", "layernorm", "attention",
        "window_attention", "mlp", "moe", "dropout", "drop_path", "residual", "residual_end",
        "downsample", "pool", "classifier",
    };
    return (unsigned)k < sizeof names / sizeof names[0] ? names[k] : "?";
}

const char *mc_router_name(mc_router_kind k)
{
    static const char *const names[] = {
        "softmax_topk", "switch", "soft", "expert_choice", "cosine", "attention", "loss_based", "dataset_aware",
    };
    return (unsigned)k < sizeof names / sizeof names[0] ? names[k] : "?";
}

const char *mc_format_name(mc_format f)
{
    static const char *const names[] = { "idx", "mnist_json", "csv", "cifar10", "image_folder", "gtsrb" };
    return (unsigned)f < sizeof names / sizeof names[0] ? names[f] : "?";
}

const char *mc_act_name(mc_act a)
{
    static const char *const names[] = { "gelu", "relu", "silu" };
    return (unsigned)a < sizeof names / sizeof names[0] ? names[a] : "?";
}

const char *mc_recompute_name(mc_recompute r)
{
    static const char *const names[] = { "none", "experts", "all" };
    return (unsigned)r < sizeof names / sizeof names[0] ? names[r] : "?";
}
