/* test_lexer.c: the tokens of the .moe language (dsl/lexer.l).
 *
 * Drives the scanner the way the parser does (yylex), and checks token
 * kinds, values, locations (line:col, 1-based, columns in bytes) and the
 * errors the lexer reports. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ast.h"
#include "lexstate.h"
#include "parser.h"

/* ---- helpers --------------------------------------------------------------- */

#define MAX_TOKENS 512

typedef struct lexed {
    int n;                    /* tokens, not counting the final T_END */
    int tok[MAX_TOKENS];
    YYSTYPE val[MAX_TOKENS];
    mc_loc loc[MAX_TOKENS];
    int errors;
    char *msgs;               /* what the diagnostics printed */
} lexed;

/* Scan len bytes of text to the end; the diagnostics text goes to msgs. */
static void lex_n(lexed *out, const char *text, size_t len)
{
    memset(out, 0, sizeof *out);
    mc_source *src = mc_source_from_string("t.moe", text, len);
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    assert_non_null(f);
    mc_diag d;
    mc_diag_init(&d, src, f);
    struct mc_lexstate ls;
    memset(&ls, 0, sizeof ls);
    ls.diag = &d;
    void *scanner = mc_lex_begin(&ls, src);
    assert_non_null(scanner);
    for (;;) {
        YYSTYPE v;
        YYLTYPE loc;
        memset(&v, 0, sizeof v);
        int tok = yylex(&v, &loc, scanner);
        if (tok == T_END)
            break;
        assert_true(out->n < MAX_TOKENS);
        out->tok[out->n] = tok;
        out->val[out->n] = v;
        out->loc[out->n] = loc;
        out->n++;
    }
    mc_lex_end(scanner);
    out->errors = d.errors;
    mc_diag_flush(&d);
    fclose(f);
    out->msgs = buf;
    mc_source_free(src);
}

static void lex(lexed *out, const char *text)
{
    lex_n(out, text, strlen(text));
}

static void lexed_free(lexed *l)
{
    for (int i = 0; i < l->n; i++)
        if (l->tok[i] == T_IDENT || l->tok[i] == T_STRING)
            free(l->val[i].s);
    free(l->msgs);
}

static void assert_loc(const mc_loc *loc, int line, int col, int end_line, int end_col)
{
    assert_int_equal(loc->line, line);
    assert_int_equal(loc->col, col);
    assert_int_equal(loc->end_line, end_line);
    assert_int_equal(loc->end_col, end_col);
}

static bool contains(const char *haystack, const char *needle)
{
    return haystack && strstr(haystack, needle) != NULL;
}

/* One token of the given kind from text, with no errors. */
static void one_token(const char *text, int tok, lexed *out)
{
    lex(out, text);
    assert_int_equal(out->errors, 0);
    assert_int_equal(out->n, 1);
    assert_int_equal(out->tok[0], tok);
}

/* ---- tokens and locations --------------------------------------------------------- */

static void test_const_statement(void **state)
{
    (void)state;
    lexed l;
    lex(&l, "const WIDTH = 128");
    assert_int_equal(l.errors, 0);
    assert_int_equal(l.n, 4);
    assert_int_equal(l.tok[0], T_CONST);
    assert_loc(&l.loc[0], 1, 1, 1, 6);
    assert_int_equal(l.tok[1], T_IDENT);
    assert_string_equal(l.val[1].s, "WIDTH");
    assert_loc(&l.loc[1], 1, 7, 1, 12);
    assert_int_equal(l.tok[2], '=');
    assert_loc(&l.loc[2], 1, 13, 1, 14);
    assert_int_equal(l.tok[3], T_INT);
    assert_int_equal(l.val[3].i, 128);
    assert_loc(&l.loc[3], 1, 15, 1, 18);
    assert_string_equal(l.msgs, "");
    lexed_free(&l);
}

static void test_locations_across_lines(void **state)
{
    (void)state;
    lexed l;
    /* tabs count as one column; CR before LF is a blank */
    lex(&l, "model m {\n\tinput(channels = 1)\r\n\n  }\n");
    assert_int_equal(l.errors, 0);
    assert_int_equal(l.n, 10);
    assert_string_equal(l.val[0].s, "model");
    assert_loc(&l.loc[0], 1, 1, 1, 6);
    assert_loc(&l.loc[1], 1, 7, 1, 8);       /* m */
    assert_loc(&l.loc[2], 1, 9, 1, 10);      /* { */
    assert_string_equal(l.val[3].s, "input");
    assert_loc(&l.loc[3], 2, 2, 2, 7);
    assert_int_equal(l.tok[4], '(');
    assert_loc(&l.loc[4], 2, 7, 2, 8);
    assert_string_equal(l.val[5].s, "channels");
    assert_loc(&l.loc[5], 2, 8, 2, 16);
    assert_int_equal(l.tok[7], T_INT);
    assert_loc(&l.loc[7], 2, 19, 2, 20);
    assert_int_equal(l.tok[8], ')');
    assert_loc(&l.loc[8], 2, 20, 2, 21);
    assert_int_equal(l.tok[9], '}');
    assert_loc(&l.loc[9], 4, 3, 4, 4);
    lexed_free(&l);

    lex(&l, "a\n\n\n   b");
    assert_int_equal(l.n, 2);
    assert_loc(&l.loc[1], 4, 4, 4, 5);
    lexed_free(&l);
}

static void test_punctuation(void **state)
{
    (void)state;
    lexed l;
    lex(&l, "()[]{},=:;+-*/%");
    assert_int_equal(l.errors, 0);
    const char *want = "()[]{},=:;+-*/%";
    assert_int_equal(l.n, (int)strlen(want));
    for (int i = 0; want[i]; i++) {
        assert_int_equal(l.tok[i], want[i]);
        assert_loc(&l.loc[i], 1, i + 1, 1, i + 2);
    }
    lexed_free(&l);
}

static void test_keywords(void **state)
{
    (void)state;
    lexed l;
    lex(&l, "const true false constant True falsey _const c0nst");
    assert_int_equal(l.errors, 0);
    assert_int_equal(l.n, 8);
    assert_int_equal(l.tok[0], T_CONST);
    assert_int_equal(l.tok[1], T_TRUE);
    assert_int_equal(l.tok[2], T_FALSE);
    for (int i = 3; i < 8; i++)
        assert_int_equal(l.tok[i], T_IDENT);
    assert_string_equal(l.val[3].s, "constant");
    assert_string_equal(l.val[4].s, "True");
    assert_string_equal(l.val[6].s, "_const");
    lexed_free(&l);
}

static void test_identifiers(void **state)
{
    (void)state;
    lexed l;
    lex(&l, "patch_embed x _ a1_b2 Z9");
    assert_int_equal(l.errors, 0);
    assert_int_equal(l.n, 5);
    assert_string_equal(l.val[0].s, "patch_embed");
    assert_string_equal(l.val[2].s, "_");
    assert_string_equal(l.val[3].s, "a1_b2");
    lexed_free(&l);

    /* 128 characters are fine, 129 are not */
    char name[200];
    memset(name, 'n', 128);
    name[128] = '\0';
    one_token(name, T_IDENT, &l);
    assert_int_equal((int)strlen(l.val[0].s), 128);
    lexed_free(&l);
    memset(name, 'n', 129);
    name[129] = '\0';
    lex(&l, name);
    assert_int_equal(l.errors, 1);
    assert_int_equal(l.n, 1);
    assert_int_equal((int)strlen(l.val[0].s), 128); /* cut, and parsed on */
    assert_true(contains(l.msgs, "t.moe:1:1: error: identifier longer than 128 characters"));
    lexed_free(&l);
}

/* ---- numbers ------------------------------------------------------------------ */

static void test_integers(void **state)
{
    (void)state;
    static const struct { const char *text; int64_t value; } cases[] = {
        { "0", 0 }, { "42", 42 }, { "60_000", 60000 }, { "1_000_000", 1000000 },
        { "007", 7 }, { "9223372036854775807", INT64_MAX }, { "9_223_372_036_854_775_807", INT64_MAX },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lexed l;
        one_token(cases[i].text, T_INT, &l);
        assert_true(l.val[0].i == cases[i].value);
        assert_loc(&l.loc[0], 1, 1, 1, 1 + (int)strlen(cases[i].text));
        lexed_free(&l);
    }
}

static void test_floats(void **state)
{
    (void)state;
    static const struct { const char *text; double value; } cases[] = {
        { "1e-3", 1e-3 }, { ".5", 0.5 }, { "0.5", 0.5 }, { "5.", 5.0 }, { "1E+3", 1000.0 },
        { "2.5e2", 250.0 }, { "1_000.5", 1000.5 }, { "1e308", 1e308 }, { ".25e-1", 0.025 },
        { "1e-999", 0.0 }, /* too small for a double: 0, not an error */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lexed l;
        one_token(cases[i].text, T_FLOAT, &l);
        assert_float_equal(l.val[0].f, cases[i].value, cases[i].value * 1e-15);
        lexed_free(&l);
    }
}

static void test_minus_is_an_operator(void **state)
{
    (void)state;
    lexed l;
    /* numbers have no sign; an exponent's sign is part of the number */
    lex(&l, "-1 1-2 1e-3-4");
    assert_int_equal(l.errors, 0);
    assert_int_equal(l.n, 8);
    static const int want[] = { '-', T_INT, T_INT, '-', T_INT, T_FLOAT, '-', T_INT };
    for (int i = 0; i < 8; i++)
        assert_int_equal(l.tok[i], want[i]);
    assert_float_equal(l.val[5].f, 1e-3, 1e-18);
    lexed_free(&l);
    /* 1.2.3 is two numbers (the parser objects to that) */
    lex(&l, "1.2.3");
    assert_int_equal(l.errors, 0);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.tok[0], T_FLOAT);
    assert_int_equal(l.tok[1], T_FLOAT);
    assert_float_equal(l.val[1].f, 0.3, 1e-15);
    lexed_free(&l);
}

/* A bad number is one error, and one T_INT 0 token so the parser goes on. */
static void bad_number(const char *text, const char *message)
{
    lexed l;
    lex(&l, text);
    assert_int_equal(l.errors, 1);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.tok[0], T_INT);
    assert_int_equal(l.val[0].i, 0);
    if (!contains(l.msgs, message))
        fail_msg("'%s': expected '%s' in:\n%s", text, message, l.msgs);
    lexed_free(&l);
}

static void test_bad_numbers(void **state)
{
    (void)state;
    bad_number("12abc", "1:1: error: invalid number '12abc'");
    bad_number("1__0", "error: invalid number '1__0'");
    bad_number("1_", "error: invalid number '1_'");
    bad_number("1e", "error: invalid number '1e'");
    bad_number("1e+", "error: invalid number '1e+'");
    bad_number("0x10", "error: invalid number '0x10'");
    bad_number("9223372036854775808", "error: integer literal is too large");
    bad_number("99999999999999999999999", "hint: integers are 64-bit");
    lexed l;
    lex(&l, "1e999");
    assert_int_equal(l.errors, 1);
    assert_int_equal(l.tok[0], T_FLOAT);
    assert_true(contains(l.msgs, "error: number is out of range"));
    lexed_free(&l);
    /* a long bad number is cut in the message */
    char digits[200];
    memset(digits, '1', 100);
    strcpy(digits + 100, "x");
    lex(&l, digits);
    assert_int_equal(l.errors, 1);
    assert_true(contains(l.msgs, "invalid number '1111111111111111111111111111111111111111...'"));
    lexed_free(&l);
}

/* ---- strings ------------------------------------------------------------------ */

static void test_strings(void **state)
{
    (void)state;
    lexed l;
    lex(&l, "\"fashion-mnist\" \"\" \"tab\\there\\nnl \\\"q\\\" \\\\\"");
    assert_int_equal(l.errors, 0);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.val[0].s, "fashion-mnist");
    assert_loc(&l.loc[0], 1, 1, 1, 16);
    assert_string_equal(l.val[1].s, "");
    assert_string_equal(l.val[2].s, "tab\there\nnl \"q\" \\");
    lexed_free(&l);

    /* UTF-8 is fine inside strings; columns count bytes */
    lex(&l, "\"\xc3\xa9t\xc3\xa9\" x");
    assert_int_equal(l.errors, 0);
    assert_string_equal(l.val[0].s, "\xc3\xa9t\xc3\xa9");
    assert_loc(&l.loc[1], 1, 9, 1, 10);
    lexed_free(&l);
}

static void test_string_errors(void **state)
{
    (void)state;
    lexed l;
    lex(&l, "\"a\\qb\" x");
    assert_int_equal(l.errors, 1);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.val[0].s, ""); /* a bad string parses on as "" */
    assert_true(contains(l.msgs, "t.moe:1:3: error: unknown escape sequence '\\q'"));
    assert_true(contains(l.msgs, "hint: the escapes are"));
    lexed_free(&l);

    lex(&l, "path = \"open\nnext");
    assert_int_equal(l.errors, 1);
    assert_int_equal(l.n, 4);
    assert_int_equal(l.tok[2], T_STRING);
    assert_int_equal(l.tok[3], T_IDENT); /* the next line scans normally */
    assert_loc(&l.loc[3], 2, 1, 2, 5);
    assert_true(contains(l.msgs, "t.moe:1:8: error: unterminated string"));
    lexed_free(&l);

    lex_n(&l, "\"a\0b\"", 5);
    assert_int_equal(l.errors, 1);
    assert_true(contains(l.msgs, "t.moe:1:3: error: NUL byte in string literal"));
    lexed_free(&l);

    lex(&l, "'single' x");
    assert_int_equal(l.errors, 1);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.tok[0], T_STRING); /* parsed on as the string it meant */
    assert_string_equal(l.val[0].s, "single");
    assert_true(contains(l.msgs, "t.moe:1:1: error: string in single quotes"));
    assert_true(contains(l.msgs, "hint: strings are written in double quotes: \"single\""));
    lexed_free(&l);

    char big[MC_MAX_STRING + 16];
    big[0] = '"';
    memset(big + 1, 's', MC_MAX_STRING + 1);
    strcpy(big + MC_MAX_STRING + 2, "\"");
    lex(&l, big);
    assert_int_equal(l.errors, 1);
    assert_true(contains(l.msgs, "error: string literal longer than 4096 bytes"));
    lexed_free(&l);
}

/* ---- comments, blanks and stray bytes ---------------------------------------------- */

static void test_comments(void **state)
{
    (void)state;
    lexed l;
    lex(&l, "# a comment: \"not a string\" (\na /* block\n comment * / */ b # end");
    assert_int_equal(l.errors, 0);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.val[0].s, "a");
    assert_loc(&l.loc[0], 2, 1, 2, 2);
    assert_string_equal(l.val[1].s, "b");
    assert_loc(&l.loc[1], 3, 17, 3, 18);
    lexed_free(&l);

    lex(&l, "a\n  /* never\n closed");
    assert_int_equal(l.errors, 1);
    assert_int_equal(l.n, 1);
    assert_true(contains(l.msgs, "t.moe:2:3: error: unterminated comment"));
    lexed_free(&l);

    lex(&l, "");
    assert_int_equal(l.n, 0);
    assert_int_equal(l.errors, 0);
    lexed_free(&l);
}

static void test_stray_bytes(void **state)
{
    (void)state;
    lexed l;
    /* a run of stray bytes is one error; another run is another */
    lex(&l, "a @@@ b $ c");
    assert_int_equal(l.n, 3);
    assert_int_equal(l.errors, 2);
    assert_true(contains(l.msgs, "t.moe:1:3: error: unexpected character '@'"));
    assert_true(contains(l.msgs, "t.moe:1:9: error: unexpected character '$'"));
    lexed_free(&l);

    lex(&l, "x \xc3\xa9 y");
    assert_int_equal(l.errors, 1);
    assert_int_equal(l.n, 2);
    assert_true(contains(l.msgs, "error: unexpected byte 0xC3"));
    assert_true(contains(l.msgs, "hint: non-ASCII text is allowed only in strings and comments"));
    lexed_free(&l);

    lex_n(&l, "x\0y", 3);
    assert_int_equal(l.errors, 1);
    assert_int_equal(l.n, 2);
    assert_true(contains(l.msgs, "t.moe:1:2: error: unexpected control byte 0x00"));
    lexed_free(&l);
}

/* ---- nesting and error counts ------------------------------------------------------- */

static void test_nesting_limit(void **state)
{
    (void)state;
    char text[256];
    lexed l;
    /* MC_MAX_DEPTH open brackets are fine */
    memset(text, '(', MC_MAX_DEPTH);
    memset(text + MC_MAX_DEPTH, ')', MC_MAX_DEPTH);
    text[2 * MC_MAX_DEPTH] = '\0';
    lex(&l, text);
    assert_int_equal(l.errors, 0);
    assert_int_equal(l.n, 2 * MC_MAX_DEPTH);
    lexed_free(&l);
    /* one more ends the input there, with one error */
    memset(text, '[', MC_MAX_DEPTH + 1);
    strcpy(text + MC_MAX_DEPTH + 1, "]] x y z");
    lex(&l, text);
    assert_int_equal(l.errors, 1);
    assert_int_equal(l.n, MC_MAX_DEPTH);
    assert_true(contains(l.msgs, "t.moe:1:65: error: brackets nested more than 64 deep"));
    lexed_free(&l);
    /* closing brackets make room again */
    memset(text, 0, sizeof text);
    for (int i = 0; i < 100; i++)
        strcat(text, "{}");
    lex(&l, text);
    assert_int_equal(l.errors, 0);
    lexed_free(&l);
}

static void test_error_count_and_order(void **state)
{
    (void)state;
    lexed l;
    /* reports are printed in source order, whatever order they came in */
    lex(&l, "1x @\n\"\\z\" 99999999999999999999\n'q");
    assert_int_equal(l.errors, 5);
    const char *a = strstr(l.msgs, "t.moe:1:1:");
    const char *b = strstr(l.msgs, "t.moe:1:4:");
    const char *c = strstr(l.msgs, "t.moe:2:2:");
    const char *d = strstr(l.msgs, "t.moe:2:6:");
    const char *e = strstr(l.msgs, "t.moe:3:1:");
    assert_true(a && b && c && d && e);
    assert_true(a < b && b < c && c < d && d < e);
    lexed_free(&l);
}

/* ---- --dump-tokens -------------------------------------------------------------- */

static void test_dump_tokens(void **state)
{
    (void)state;
    mc_source *src = mc_source_from_string("t.moe", "const X = 1e-3\nf(\"s\", true)\n", 28);
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    mc_diag d;
    mc_diag_init(&d, src, stderr);
    assert_int_equal(mc_dump_tokens(src, &d, f), 0);
    fclose(f);
    assert_string_equal(buf, "1:1\tkeyword\tconst\n"
                             "1:7\tidentifier\tX\n"
                             "1:9\tpunct\t=\n"
                             "1:11\tnumber\t0.001\n"
                             "2:1\tidentifier\tf\n"
                             "2:2\tpunct\t(\n"
                             "2:3\tstring\t\"s\"\n"
                             "2:6\tpunct\t,\n"
                             "2:8\tkeyword\ttrue\n"
                             "2:12\tpunct\t)\n");
    free(buf);
    mc_diag_flush(&d);
    mc_source_free(src);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_const_statement),
        cmocka_unit_test(test_locations_across_lines),
        cmocka_unit_test(test_punctuation),
        cmocka_unit_test(test_keywords),
        cmocka_unit_test(test_identifiers),
        cmocka_unit_test(test_integers),
        cmocka_unit_test(test_floats),
        cmocka_unit_test(test_minus_is_an_operator),
        cmocka_unit_test(test_bad_numbers),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_string_errors),
        cmocka_unit_test(test_comments),
        cmocka_unit_test(test_stray_bytes),
        cmocka_unit_test(test_nesting_limit),
        cmocka_unit_test(test_error_count_and_order),
        cmocka_unit_test(test_dump_tokens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
