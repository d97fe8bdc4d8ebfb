/* test_parser.c: the syntax tree the parser (dsl/parser.y) builds, its
 * precedence, its error messages and recovery, and its depth limits. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ast.h"

/* ---- helpers --------------------------------------------------------------- */

typedef struct parsed {
    mc_source *src;
    mc_program prog;
    int rc, errors;
    char *msgs;        /* the diagnostics, as printed */
} parsed;

static void parse_n(parsed *p, const char *text, size_t len)
{
    memset(p, 0, sizeof *p);
    p->src = mc_source_from_string("p.moe", text, len);
    size_t size = 0;
    FILE *f = open_memstream(&p->msgs, &size);
    assert_non_null(f);
    mc_diag d;
    mc_diag_init(&d, p->src, f);
    d.max_errors = 0;
    p->rc = mc_parse(p->src, &d, &p->prog);
    p->errors = d.errors;
    mc_diag_flush(&d);
    fclose(f);
}

static void parse(parsed *p, const char *text)
{
    parse_n(p, text, strlen(text));
}

static void parsed_free(parsed *p)
{
    mc_program_free(&p->prog);
    mc_source_free(p->src);
    free(p->msgs);
}

/* Parse text that must be good, with no messages. */
static void parse_ok(parsed *p, const char *text)
{
    parse(p, text);
    if (p->errors != 0 || p->rc != 0)
        fail_msg("unexpected errors for:\n%s\n%s", text, p->msgs);
    assert_string_equal(p->msgs, "");
}

static char *expr_text(const mc_expr *e)
{
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    mc_expr_print(e, f);
    fclose(f);
    return buf;
}

static void assert_expr(const mc_expr *e, const char *want)
{
    char *got = expr_text(e);
    if (strcmp(got, want) != 0)
        fail_msg("expression: got '%s', expected '%s'", got, want);
    free(got);
}

/* The value of `const X = <text>`, printed. */
static void assert_const_expr(const char *text, const char *want)
{
    char prog[512];
    snprintf(prog, sizeof prog, "const X = %s", text);
    parsed p;
    parse_ok(&p, prog);
    assert_non_null(p.prog.stmts);
    assert_int_equal(p.prog.stmts->kind, STMT_CONST);
    assert_expr(p.prog.stmts->value, want);
    parsed_free(&p);
}

static int count_stmts(const mc_stmt *s)
{
    int n = 0;
    for (; s; s = s->next)
        n++;
    return n;
}

static bool contains(const char *haystack, const char *needle)
{
    return haystack && strstr(haystack, needle) != NULL;
}

/* ---- statements ---------------------------------------------------------------- */

static void test_const(void **state)
{
    (void)state;
    parsed p;
    parse_ok(&p, "const WIDTH = 128\nconst LR = 1e-3; const NAME = \"vit\"\nconst ON = true");
    mc_stmt *s = p.prog.stmts;
    assert_int_equal(count_stmts(s), 4);
    assert_int_equal(s->kind, STMT_CONST);
    assert_string_equal(s->kw, "WIDTH");
    assert_int_equal(s->loc.line, 1);
    assert_int_equal(s->loc.col, 7); /* the name */
    assert_int_equal(s->value->kind, EXPR_INT);
    assert_int_equal(s->value->u.i, 128);
    s = s->next;
    assert_string_equal(s->kw, "LR");
    assert_int_equal(s->value->kind, EXPR_FLOAT);
    assert_float_equal(s->value->u.f, 1e-3, 1e-18);
    s = s->next;
    assert_int_equal(s->value->kind, EXPR_STRING);
    assert_string_equal(s->value->u.s, "vit");
    assert_int_equal(s->loc.line, 2);
    s = s->next;
    assert_int_equal(s->value->kind, EXPR_BOOL);
    assert_true(s->value->u.b);
    parsed_free(&p);
}

static void test_nodes(void **state)
{
    (void)state;
    parsed p;
    parse_ok(&p, "dataset fmnist(format = idx, path = \"f\", 10)\n"
                 "model vit {\n"
                 "    input(channels = 1, height = 28, width = 28)\n"
                 "    cls_token()\n"
                 "    repeat(2) {\n"
                 "        residual { layernorm() }\n"
                 "    }\n"
                 "}\n"
                 "train { batch = 64 steps = 10 }\n"
                 "parallel(data = 2,)\n");
    mc_stmt *ds = p.prog.stmts;
    assert_int_equal(count_stmts(ds), 4);

    /* dataset fmnist(...): kind, name, three arguments */
    assert_int_equal(ds->kind, STMT_NODE);
    assert_string_equal(ds->kw, "dataset");
    assert_string_equal(ds->name, "fmnist");
    assert_int_equal(ds->name_loc.col, 9);
    assert_true(ds->has_args);
    assert_false(ds->has_body);
    assert_int_equal(ds->args_loc.col, 15);
    mc_arg *a = ds->args;
    assert_string_equal(a->name, "format");
    assert_int_equal(a->name_loc.col, 16);
    assert_int_equal(a->value->kind, EXPR_NAME);
    assert_string_equal(a->value->u.s, "idx");
    a = a->next;
    assert_string_equal(a->name, "path");
    assert_int_equal(a->value->kind, EXPR_STRING);
    a = a->next;
    assert_null(a->name); /* positional */
    assert_int_equal(a->value->u.i, 10);
    assert_null(a->next);

    /* model vit { ... }: a body, no arguments */
    mc_stmt *m = ds->next;
    assert_string_equal(m->kw, "model");
    assert_string_equal(m->name, "vit");
    assert_false(m->has_args);
    assert_true(m->has_body);
    assert_int_equal(count_stmts(m->body), 3);
    mc_stmt *in = m->body;
    assert_string_equal(in->kw, "input");
    assert_null(in->name);
    assert_int_equal(in->loc.line, 3);
    assert_int_equal(in->loc.col, 5);
    mc_stmt *cls = in->next;
    assert_string_equal(cls->kw, "cls_token");
    assert_true(cls->has_args);
    assert_null(cls->args);
    mc_stmt *rep = cls->next;
    assert_string_equal(rep->kw, "repeat");
    assert_true(rep->has_args && rep->has_body);
    assert_null(rep->args->name);
    mc_stmt *res = rep->body;
    assert_string_equal(res->kw, "residual");
    assert_false(res->has_args);
    assert_true(res->has_body);
    assert_string_equal(res->body->kw, "layernorm");

    /* train { settings } */
    mc_stmt *t = m->next;
    assert_string_equal(t->kw, "train");
    assert_int_equal(count_stmts(t->body), 2);
    assert_int_equal(t->body->kind, STMT_SETTING);
    assert_string_equal(t->body->kw, "batch");
    assert_int_equal(t->body->value->u.i, 64);
    assert_string_equal(t->body->next->kw, "steps");

    /* a trailing ',' is fine */
    mc_stmt *par = t->next;
    assert_string_equal(par->kw, "parallel");
    assert_string_equal(par->args->name, "data");
    assert_null(par->args->next);
    parsed_free(&p);
}

static void test_calls_lists_maps(void **state)
{
    (void)state;
    parsed p;
    parse_ok(&p, "train {\n"
                 "    optimizer = adamw(lr = 1e-3, betas = [0.9, 0.95])\n"
                 "    augment = [random_crop(padding = 4), flip(), ]\n"
                 "    labels = []\n"
                 "    map = {fmnist: 0, \"mnist\": 1, 7: 2,}\n"
                 "    empty = {}\n"
                 "}\n");
    mc_stmt *s = p.prog.stmts->body;
    mc_expr *call = s->value;
    assert_int_equal(call->kind, EXPR_CALL);
    assert_string_equal(call->u.call.name, "adamw");
    assert_int_equal(call->loc.line, 2);
    assert_int_equal(call->loc.col, 17);
    assert_string_equal(call->u.call.args->name, "lr");
    mc_expr *betas = call->u.call.args->next->value;
    assert_int_equal(betas->kind, EXPR_LIST);
    assert_int_equal(betas->u.list.n, 2);
    assert_expr(call, "adamw(lr = 0.001, betas = [0.90000000000000002, 0.94999999999999996])");

    s = s->next;
    assert_int_equal(s->value->kind, EXPR_LIST);
    assert_int_equal(s->value->u.list.n, 2);
    assert_expr(s->value, "[random_crop(padding = 4), flip()]");
    assert_int_equal(s->value->u.list.items->next->kind, EXPR_CALL);

    s = s->next;
    assert_int_equal(s->value->kind, EXPR_LIST);
    assert_int_equal(s->value->u.list.n, 0);
    assert_null(s->value->u.list.items);

    s = s->next;
    mc_expr *map = s->value;
    assert_int_equal(map->kind, EXPR_MAP);
    assert_int_equal(map->u.map.n, 3);
    mc_arg *e = map->u.map.entries;
    assert_string_equal(e->name, "fmnist");
    assert_int_equal(e->name_loc.line, 5);
    assert_int_equal(e->name_loc.col, 12);
    assert_int_equal(e->value->u.i, 0);
    assert_string_equal(e->next->name, "mnist"); /* a string key */
    assert_string_equal(e->next->next->name, "7"); /* an integer key */
    assert_expr(map, "{fmnist: 0, mnist: 1, 7: 2}");

    s = s->next;
    assert_int_equal(s->value->kind, EXPR_MAP);
    assert_int_equal(s->value->u.map.n, 0);
    parsed_free(&p);
}

/* ---- expressions ------------------------------------------------------------------ */

static void test_precedence(void **state)
{
    (void)state;
    assert_const_expr("1 + 2 * 3", "(1 + (2 * 3))");
    assert_const_expr("1 * 2 + 3", "((1 * 2) + 3)");
    assert_const_expr("1 - 2 - 3", "((1 - 2) - 3)");
    assert_const_expr("8 / 4 / 2", "((8 / 4) / 2)");
    assert_const_expr("7 % 4 * 2", "((7 % 4) * 2)");
    assert_const_expr("1 + 2 * 3 - 4 / 2 % 3", "((1 + (2 * 3)) - ((4 / 2) % 3))");
    assert_const_expr("-2 * 3", "((-2) * 3)");
    assert_const_expr("-(2 * 3)", "(-(2 * 3))");
    assert_const_expr("- -2", "(-(-2))");
    assert_const_expr("2 * -3", "(2 * (-3))");
    assert_const_expr("(1 + 2) * 3", "((1 + 2) * 3)");
    assert_const_expr("((((4))))", "4");
    assert_const_expr("W * 2 + H", "((W * 2) + H)");
    assert_const_expr("[1 + 1, f(x = -1)]", "[(1 + 1), f(x = (-1))]");
}

static void test_expression_locations(void **state)
{
    (void)state;
    parsed p;
    parse_ok(&p, "const X = 10 + 20 * 3\nconst Y = -X\nconst L = [1, 2]");
    mc_expr *e = p.prog.stmts->value;
    /* a binary expression is located at its operator */
    assert_int_equal(e->kind, EXPR_BINARY);
    assert_int_equal(e->u.bin.op, '+');
    assert_int_equal(e->loc.col, 14);
    assert_int_equal(e->u.bin.rhs->loc.col, 19);
    assert_int_equal(e->u.bin.lhs->loc.col, 11);
    assert_int_equal(e->depth, 3);
    /* a negation spans from '-' to its operand */
    e = p.prog.stmts->next->value;
    assert_int_equal(e->kind, EXPR_NEG);
    assert_int_equal(e->loc.line, 2);
    assert_int_equal(e->loc.col, 11);
    assert_int_equal(e->loc.end_col, 13);
    /* a list spans its brackets */
    e = p.prog.stmts->next->next->value;
    assert_int_equal(e->loc.col, 11);
    assert_int_equal(e->loc.end_col, 17);
    parsed_free(&p);
}

/* ---- syntax errors ------------------------------------------------------------------ */

static void test_error_messages(void **state)
{
    (void)state;
    static const struct { const char *text; const char *want; } cases[] = {
        { "dataset d(format = idx path = \"d\")",
          "p.moe:1:24: error: expected '(', ')' or ',', found an identifier\n"
          " 1 | dataset d(format = idx path = \"d\")\n"
          "   |                        ^~~~\n"
          "   = hint: separate items with ','\n" },
        { "dataset d(format: idx)", "hint: arguments and settings are written name = value" },
        { "const A = 1, const B = 2", "hint: statements are written one after another, without ','" },
        { "const X = )", "p.moe:1:11: error: expected an expression, found ')'" },
        { "model m {\n  input()\n", "p.moe:2:10: error: expected 'const', an identifier, '{', '}' or ';', "
                                    "found end of file\n" },
        { "model m {\n  input()\n", "hint: the '{' at line 1 is never closed" },
        { "dataset d(a = 1\n\nmodel m { }", "p.moe:3:1: error: expected ')' or ',', found an identifier" },
        { "dataset d(a = 1\n\nmodel m { }", "hint: the '(' at line 1 is never closed" },
        { "model m\n  input()\n}", "hint: did you forget '{' after the name, or '()' after a layer?" },
        { "const = 3", "error: expected an identifier, found '='" },
        { "train { batch = }", "error: expected an expression, found '}'" },
        { "model m { }\n}", "p.moe:2:1: error: expected end of file, 'const', an identifier or ';', found '}'\n" },
        { "model m { }\n}", "hint: no bracket is open here: one '}' too many?" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        parsed p;
        parse(&p, cases[i].text);
        assert_int_equal(p.rc, 1);
        assert_true(p.errors >= 1);
        if (!contains(p.msgs, cases[i].want))
            fail_msg("for:\n%s\nexpected:\n%s\nin:\n%s", cases[i].text, cases[i].want, p.msgs);
        parsed_free(&p);
    }
    /* an open list at the end of the file: the list's bracket is named */
    parsed p;
    parse(&p, "x = [1, 2");
    assert_true(contains(p.msgs, "p.moe:1:10: error: expected ']' or ',', found end of file"));
    assert_true(contains(p.msgs, "hint: the '[' at line 1 is never closed"));
    parsed_free(&p);
}

static void test_error_recovery(void **state)
{
    (void)state;
    parsed p;
    /* one error per bad statement; the good statements around them parse */
    parse(&p, "dataset a(format = idx path = \"a\")\n"  /* 1: missing ',' */
              "const GOOD = 1\n"
              "dataset b(format = , path = \"b\")\n"    /* 3: missing value */
              "model m {\n"
              "    input(channels = 1 height = 2)\n"    /* 5: missing ',' */
              "    layernorm()\n"
              "    pool(kind = = mean)\n"              /* 7: '=' twice */
              "}\n"
              "const ALSO_GOOD = 2\n"
              "const BAD = * 2\n");                    /* 10: missing operand */
    assert_int_equal(p.rc, 1);
    assert_int_equal(p.errors, 5);
    const char *lines[] = { "p.moe:1:", "p.moe:3:", "p.moe:5:", "p.moe:7:", "p.moe:10:" };
    const char *prev = p.msgs;
    for (int i = 0; i < 5; i++) {
        const char *at = strstr(prev, lines[i]);
        if (!at)
            fail_msg("no error at %s in:\n%s", lines[i], p.msgs);
        prev = at + 1;
    }
    /* what parsed is kept: GOOD, the model with its good layers, ALSO_GOOD */
    int consts = 0;
    const mc_stmt *model = NULL;
    for (const mc_stmt *s = p.prog.stmts; s; s = s->next) {
        if (s->kind == STMT_CONST && (strcmp(s->kw, "GOOD") == 0 || strcmp(s->kw, "ALSO_GOOD") == 0))
            consts++;
        if (s->kind == STMT_NODE && strcmp(s->kw, "model") == 0)
            model = s;
    }
    assert_int_equal(consts, 2);
    assert_non_null(model);
    bool has_layernorm = false;
    for (const mc_stmt *s = model->body; s; s = s->next)
        has_layernorm |= strcmp(s->kw, "layernorm") == 0;
    assert_true(has_layernorm);
    parsed_free(&p);
}

/* A syntax error right after a malformed token is the token's echo: only
 * the lexer's error is reported. So is a closing bracket left over by an
 * earlier syntax error. */
static void test_no_cascade_after_lexer_errors(void **state)
{
    (void)state;
    static const char *const texts[] = {
        "const X = 64 @ 2",
        "dataset d(path = \"open, classes = 10)\nmodel m { }",
        "const X = 64 \xc3\x97 2",
        "const S = 'single'",
        "/* never closed\nmodel m {",
        /* a '}' that an earlier error left without its '{' */
        "model m\n    input()\n}",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        parsed p;
        parse(&p, texts[i]);
        if (p.errors != 1)
            fail_msg("%d errors for:\n%s\n%s", p.errors, texts[i], p.msgs);
        parsed_free(&p);
    }
}

/* ---- limits ------------------------------------------------------------------------ */

static char *repeated(const char *prefix, const char *unit, int times, const char *suffix)
{
    size_t n = strlen(prefix) + strlen(unit) * (size_t)times + strlen(suffix) + 1;
    char *s = malloc(n);
    assert_non_null(s);
    strcpy(s, prefix);
    char *end = s + strlen(s);
    for (int i = 0; i < times; i++) {
        memcpy(end, unit, strlen(unit));
        end += strlen(unit);
    }
    strcpy(end, suffix);
    return s;
}

static void test_depth_limit(void **state)
{
    (void)state;
    parsed p;
    /* MC_MAX_DEPTH deep is fine */
    char *text = repeated("const X = ", "-", MC_MAX_DEPTH - 1, "1");
    parse_ok(&p, text);
    assert_int_equal(p.prog.stmts->value->depth, MC_MAX_DEPTH);
    parsed_free(&p);
    free(text);

    /* one deeper is one error, and the statement is kept with a stand-in */
    text = repeated("const X = ", "-", MC_MAX_DEPTH, "1\nconst Y = 2");
    parse(&p, text);
    assert_int_equal(p.errors, 1);
    assert_true(contains(p.msgs, "p.moe:1:"));
    assert_true(contains(p.msgs, "error: expression nested more than 64 deep"));
    assert_int_equal(count_stmts(p.prog.stmts), 2);
    parsed_free(&p);
    free(text);

    /* a 100k-term sum: left-deep, cut down to size, reported once */
    text = repeated("const X = 1", " + 1", 100000, "\n");
    parse(&p, text);
    assert_int_equal(p.errors, 1);
    assert_true(p.prog.stmts->value->depth <= MC_MAX_DEPTH);
    parsed_free(&p);
    free(text);

    /* 100k unary minus: the parser's stack limit, one error, no crash */
    text = repeated("const X = ", "-", 100000, "1\n");
    parse(&p, text);
    assert_int_equal(p.rc, 1);
    assert_true(p.errors >= 1);
    parsed_free(&p);
    free(text);

    /* 100k open brackets: the lexer stops at MC_MAX_DEPTH with one error */
    static const char *const opens[] = { "(", "[", "{" };
    for (int k = 0; k < 3; k++) {
        text = repeated("model m { x = ", opens[k], 100000, "");
        parse(&p, text);
        assert_int_equal(p.errors, k == 2 ? 2 : 1); /* "{{" is also a syntax error */
        assert_true(contains(p.msgs, "error: brackets nested more than 64 deep"));
        parsed_free(&p);
        free(text);
    }
}

static void test_empty_and_comments(void **state)
{
    (void)state;
    parsed p;
    parse_ok(&p, "");
    assert_null(p.prog.stmts);
    parsed_free(&p);
    parse_ok(&p, "# nothing\n/* at\nall */;;;\n");
    assert_null(p.prog.stmts);
    parsed_free(&p);
}

static void test_dump_ast(void **state)
{
    (void)state;
    parsed p;
    parse_ok(&p, "const W = 2 * 8\nmodel m {\n  moe(experts = W, router = dataset_aware(map = {a: 0}))\n}\n");
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    mc_ast_dump(&p.prog, f);
    fclose(f);
    assert_string_equal(buf, "const W = (2 * 8)    @1:7\n"
                             "node model m    @2:1\n"
                             "  node moe(experts = W, router = dataset_aware(map = {a: 0}))    @3:3\n");
    free(buf);
    parsed_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_const),
        cmocka_unit_test(test_nodes),
        cmocka_unit_test(test_calls_lists_maps),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_expression_locations),
        cmocka_unit_test(test_error_messages),
        cmocka_unit_test(test_error_recovery),
        cmocka_unit_test(test_no_cascade_after_lexer_errors),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_empty_and_comments),
        cmocka_unit_test(test_dump_ast),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
