/* parser.y: the grammar of the .moe language.
 *
 * A pure, location-tracking bison parser with no conflicts. The grammar
 * is uniform on purpose: it knows statements, nodes, settings and
 * expressions, and nothing of layers or parameters; sema checks those
 * against the schema table. Syntax errors say what was expected, and
 * parsing resumes so one run reports several. */
%require "3.5"
%define api.pure full
%define api.location.type {mc_loc}
%define parse.error custom
%define parse.lac full
%locations
%expect 0

%param {void *scanner}
%parse-param {struct mc_parse_ctx *ctx}

%code requires {
#include "ast.h"
struct mc_parse_ctx;

/* Merge locations: the span from the first to the last child. */
#define YYLLOC_DEFAULT(cur, rhs, n)                                   \
    do {                                                              \
        if (n) {                                                      \
            (cur).line = YYRHSLOC(rhs, 1).line;                       \
            (cur).col = YYRHSLOC(rhs, 1).col;                         \
            (cur).end_line = YYRHSLOC(rhs, n).end_line;               \
            (cur).end_col = YYRHSLOC(rhs, n).end_col;                 \
        } else {                                                      \
            (cur).line = (cur).end_line = YYRHSLOC(rhs, 0).end_line;  \
            (cur).col = (cur).end_col = YYRHSLOC(rhs, 0).end_col;     \
        }                                                             \
    } while (0)
}

%code provides {
int yylex(YYSTYPE *yylval, YYLTYPE *yylloc, void *scanner);
}

%code {
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lexstate.h"

struct mc_parse_ctx {
    struct mc_lexstate *ls;
    mc_diag *diag;
    mc_program *prog;
    bool depth_reported;
    int syntax_errors;     /* reported so far */
};

static void yyerror(YYLTYPE *loc, void *scanner, struct mc_parse_ctx *ctx, const char *msg);
static mc_stmt *stmts_reverse(mc_stmt *s);
static mc_arg *args_reverse(mc_arg *a);
static mc_expr *exprs_reverse(mc_expr *e);
static mc_expr *check_depth(struct mc_parse_ctx *ctx, mc_expr *e);
static mc_stmt *node(mc_loc loc, char *kw, mc_loc name_loc, char *name,
                     bool has_args, mc_loc args_loc, mc_arg *args,
                     bool has_body, mc_stmt *body);
}

%union {
    int64_t i;
    double f;
    char *s;
    mc_expr *e;
    mc_arg *a;
    mc_stmt *st;
}

%token T_END 0 "end of file"
%token T_CONST "const"
%token T_TRUE "true"
%token T_FALSE "false"
%token <s> T_IDENT "identifier"
%token <s> T_STRING "string"
%token <i> T_INT "integer"
%token <f> T_FLOAT "number"
%token '(' "'('" ')' "')'" '[' "'['" ']' "']'" '{' "'{'" '}' "'}'"
%token ',' "','" '=' "'='" ':' "':'" ';' "';'"
%token '+' "'+'" '-' "'-'" '*' "'*'" '/' "'/'" '%' "'%'"

%type <st> stmts stmt body
%type <a> args arglist arg entries entrylist entry
%type <e> expr primary items itemlist

%destructor { free($$); } <s>
%destructor { mc_expr_free($$); } <e>
%destructor { mc_args_free($$); } <a>
%destructor { mc_stmts_free($$); } <st>

%left '+' '-'
%left '*' '/' '%'
%precedence NEG

%%

/* program = stmt* */
program:
    stmts                   { ctx->prog->stmts = stmts_reverse($1); }
  ;

/* stmts are built in reverse, then turned round once complete */
stmts:
    %empty                  { $$ = NULL; }
  | stmts stmt              { $2->next = $1; $$ = $2; }
  | stmts ';'               { $$ = $1; }
  | stmts error             { $$ = $1; }
  ;

/* stmt = "const" NAME "=" expr
 *      | NAME "=" expr
 *      | KIND [NAME] "(" args ")" [body]
 *      | KIND [NAME] body */
stmt:
    T_CONST T_IDENT '=' expr {
        $$ = mc_stmt_new(STMT_CONST, @2, $2);
        $$->value = $4;
    }
  | T_IDENT '=' expr {
        $$ = mc_stmt_new(STMT_SETTING, @1, $1);
        $$->value = $3;
    }
  | T_IDENT '(' args ')' {
        $$ = node(@1, $1, @1, NULL, true, @2, $3, false, NULL);
    }
  | T_IDENT '(' args ')' body {
        $$ = node(@1, $1, @1, NULL, true, @2, $3, true, $5);
    }
  | T_IDENT T_IDENT '(' args ')' {
        $$ = node(@1, $1, @2, $2, true, @3, $4, false, NULL);
    }
  | T_IDENT T_IDENT '(' args ')' body {
        $$ = node(@1, $1, @2, $2, true, @3, $4, true, $6);
    }
  | T_IDENT body {
        $$ = node(@1, $1, @1, NULL, false, @1, NULL, true, $2);
    }
  | T_IDENT '(' error ')' {
        /* a bad argument list: resume after its ')' */
        $$ = node(@1, $1, @1, NULL, true, @2, NULL, false, NULL);
    }
  | T_IDENT '(' error ')' body {
        $$ = node(@1, $1, @1, NULL, true, @2, NULL, true, $5);
    }
  | T_IDENT T_IDENT body {
        $$ = node(@1, $1, @2, $2, false, @1, NULL, true, $3);
    }
  | T_IDENT T_IDENT '(' error ')' {
        $$ = node(@1, $1, @2, $2, true, @3, NULL, false, NULL);
    }
  | T_IDENT T_IDENT '(' error ')' body {
        $$ = node(@1, $1, @2, $2, true, @3, NULL, true, $6);
    }
  ;

/* body = "{" stmt* "}" */
body:
    '{' stmts '}'           { $$ = stmts_reverse($2); }
  ;

/* args = [arg ("," arg)* [","]] */
args:
    %empty                  { $$ = NULL; }
  | arglist                 { $$ = args_reverse($1); }
  | arglist ','             { $$ = args_reverse($1); }
  ;

arglist:
    arg                     { $$ = $1; }
  | arglist ',' arg         { $3->next = $1; $$ = $3; }
  ;

/* arg = [NAME "="] expr */
arg:
    expr                    { $$ = mc_arg_new(NULL, @1, $1); }
  | T_IDENT '=' expr        { $$ = mc_arg_new($1, @1, $3); }
  ;

/* expr = expr ("+" | "-" | "*" | "/" | "%") expr | "-" expr | "(" expr ")" | primary */
expr:
    expr '+' expr           { $$ = check_depth(ctx, mc_expr_binary('+', $1, $3, @2)); }
  | expr '-' expr           { $$ = check_depth(ctx, mc_expr_binary('-', $1, $3, @2)); }
  | expr '*' expr           { $$ = check_depth(ctx, mc_expr_binary('*', $1, $3, @2)); }
  | expr '/' expr           { $$ = check_depth(ctx, mc_expr_binary('/', $1, $3, @2)); }
  | expr '%' expr           { $$ = check_depth(ctx, mc_expr_binary('%', $1, $3, @2)); }
  | '-' expr %prec NEG {
        $$ = mc_expr_new(EXPR_NEG, @$);
        $$->u.neg = $2;
        $$->depth = $2->depth + 1;
        $$ = check_depth(ctx, $$);
    }
  | '(' expr ')'            { $$ = $2; }
  | primary                 { $$ = $1; }
  ;

/* primary = INT | NUMBER | STRING | "true" | "false" | NAME | NAME "(" args ")"
 *         | "[" [expr ("," expr)* [","]] "]" | "{" [key ":" expr ("," ...)*] "}" */
primary:
    T_INT                   { $$ = mc_expr_new(EXPR_INT, @1); $$->u.i = $1; }
  | T_FLOAT                 { $$ = mc_expr_new(EXPR_FLOAT, @1); $$->u.f = $1; }
  | T_STRING                { $$ = mc_expr_new(EXPR_STRING, @1); $$->u.s = $1; }
  | T_TRUE                  { $$ = mc_expr_new(EXPR_BOOL, @1); $$->u.b = true; }
  | T_FALSE                 { $$ = mc_expr_new(EXPR_BOOL, @1); $$->u.b = false; }
  | T_IDENT                 { $$ = mc_expr_new(EXPR_NAME, @1); $$->u.s = $1; }
  | T_IDENT '(' args ')' {
        $$ = mc_expr_new(EXPR_CALL, @1);
        $$->u.call.name = $1;
        $$->u.call.args = $3;
        for (mc_arg *a = $3; a; a = a->next)
            if (a->value->depth + 1 > $$->depth)
                $$->depth = a->value->depth + 1;
    }
  | '[' items ']' {
        $$ = mc_expr_new(EXPR_LIST, @$);
        $$->u.list.items = $2;
        for (mc_expr *x = $2; x; x = x->next) {
            $$->u.list.n++;
            if (x->depth + 1 > $$->depth)
                $$->depth = x->depth + 1;
        }
    }
  | '{' entries '}' {
        $$ = mc_expr_new(EXPR_MAP, @$);
        $$->u.map.entries = $2;
        for (mc_arg *a = $2; a; a = a->next) {
            $$->u.map.n++;
            if (a->value->depth + 1 > $$->depth)
                $$->depth = a->value->depth + 1;
        }
    }
  ;

items:
    %empty                  { $$ = NULL; }
  | itemlist                { $$ = exprs_reverse($1); }
  | itemlist ','            { $$ = exprs_reverse($1); }
  ;

itemlist:
    expr                    { $$ = $1; }
  | itemlist ',' expr       { $3->next = $1; $$ = $3; }
  ;

entries:
    %empty                  { $$ = NULL; }
  | entrylist               { $$ = args_reverse($1); }
  | entrylist ','           { $$ = args_reverse($1); }
  ;

entrylist:
    entry                   { $$ = $1; }
  | entrylist ',' entry     { $3->next = $1; $$ = $3; }
  ;

/* entry = (NAME | STRING | INT) ":" expr */
entry:
    T_IDENT ':' expr        { $$ = mc_arg_new($1, @1, $3); }
  | T_STRING ':' expr       { $$ = mc_arg_new($1, @1, $3); }
  | T_INT ':' expr {
        char buf[32];
        snprintf(buf, sizeof buf, "%lld", (long long)$1);
        $$ = mc_arg_new(mc_xstrdup(buf), @1, $3);
    }
  ;

%%

static mc_stmt *node(mc_loc loc, char *kw, mc_loc name_loc, char *name,
                     bool has_args, mc_loc args_loc, mc_arg *args,
                     bool has_body, mc_stmt *body)
{
    mc_stmt *s = mc_stmt_new(STMT_NODE, loc, kw);
    s->name = name;
    s->name_loc = name_loc;
    s->has_args = has_args;
    s->args_loc = args_loc;
    s->args = args;
    s->has_body = has_body;
    s->body = body;
    return s;
}

/* Keep expression trees at most MC_MAX_DEPTH deep, so that no later phase
 * recurses deeply: a deeper one is reported and replaced by a leaf. */
static mc_expr *check_depth(struct mc_parse_ctx *ctx, mc_expr *e)
{
    if (e->depth <= MC_MAX_DEPTH)
        return e;
    if (!ctx->depth_reported) {
        mc_report(ctx->diag, MC_ERROR, e->loc, "expression nested more than %d deep", MC_MAX_DEPTH);
        ctx->depth_reported = true;
    }
    mc_loc loc = e->loc;
    mc_expr_free(e);
    mc_expr *leaf = mc_expr_new(EXPR_INT, loc);
    leaf->u.i = 0;
    return leaf;
}

static mc_stmt *stmts_reverse(mc_stmt *s)
{
    mc_stmt *prev = NULL;
    while (s) {
        mc_stmt *next = s->next;
        s->next = prev;
        prev = s;
        s = next;
    }
    return prev;
}

static mc_arg *args_reverse(mc_arg *a)
{
    mc_arg *prev = NULL;
    while (a) {
        mc_arg *next = a->next;
        a->next = prev;
        prev = a;
        a = next;
    }
    return prev;
}

static mc_expr *exprs_reverse(mc_expr *e)
{
    mc_expr *prev = NULL;
    while (e) {
        mc_expr *next = e->next;
        e->next = prev;
        prev = e;
        e = next;
    }
    return prev;
}

/* Only "memory exhausted" (the parser stack) reaches here: syntax errors
 * go through yyreport_syntax_error. */
static void yyerror(YYLTYPE *loc, void *scanner, struct mc_parse_ctx *ctx, const char *msg)
{
    (void)scanner;
    if (strcmp(msg, "memory exhausted") == 0)
        mc_report(ctx->diag, MC_ERROR, *loc, "program nested too deeply");
    else
        mc_report(ctx->diag, MC_ERROR, *loc, "%s", msg);
}

static const char *token_text(yysymbol_kind_t k)
{
    switch (k) {
    case YYSYMBOL_T_IDENT: return "an identifier";
    case YYSYMBOL_T_STRING: return "a string";
    case YYSYMBOL_T_INT: return "an integer";
    case YYSYMBOL_T_FLOAT: return "a number";
    case YYSYMBOL_T_CONST: return "'const'";
    case YYSYMBOL_T_TRUE: return "'true'";
    case YYSYMBOL_T_FALSE: return "'false'";
    case YYSYMBOL_YYEOF: return "end of file";
    default: return yysymbol_name(k);
    }
}

static bool is_sym(yysymbol_kind_t k, const char *name)
{
    return strcmp(yysymbol_name(k), name) == 0;
}

static bool expects(const yysymbol_kind_t *exp, int n, yysymbol_kind_t k)
{
    for (int i = 0; i < n; i++)
        if (exp[i] == k)
            return true;
    return false;
}

static bool expects_sym(const yysymbol_kind_t *exp, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (is_sym(exp[i], name))
            return true;
    return false;
}

static int yyreport_syntax_error(const yypcontext_t *pctx, void *scanner, struct mc_parse_ctx *ctx)
{
    (void)scanner;
    struct mc_lexstate *ls = ctx->ls;
    if (ls->fatal)
        return 0; /* the lexer already said why it stopped */
    if (ls->err_tok > 0 && ls->ntok - ls->err_tok <= 1)
        return 0; /* at or just after a malformed token the lexer reported: its echo */
    bool unmatched = ls->unmatched_tok == ls->ntok; /* a closing bracket that closes nothing */
    if (unmatched && ctx->syntax_errors > 0)
        return 0; /* left over by an earlier error */
    ctx->syntax_errors++;
    enum { MAX_EXP = 12 };
    yysymbol_kind_t exp[MAX_EXP];
    yysymbol_kind_t all[MAX_EXP];
    int nall = yypcontext_expected_tokens(pctx, all, MAX_EXP);
    /* an operator is rarely what was meant: leave them out of the list */
    int n = 0;
    for (int i = 0; i < nall; i++)
        if (!is_sym(all[i], "'+'") && !is_sym(all[i], "'-'") && !is_sym(all[i], "'*'") &&
            !is_sym(all[i], "'/'") && !is_sym(all[i], "'%'"))
            exp[n++] = all[i];
    yysymbol_kind_t got = yypcontext_token(pctx);
    const YYLTYPE *loc = yypcontext_location(pctx);

    char want[256] = "";
    if (expects(exp, n, YYSYMBOL_T_INT) && expects(exp, n, YYSYMBOL_T_STRING)) {
        snprintf(want, sizeof want, "an expression");
    } else if (n > 0 && n <= 5) {
        size_t used = 0;
        for (int i = 0; i < n; i++) {
            const char *sep = i == 0 ? "" : (i == n - 1 ? " or " : ", ");
            int w = snprintf(want + used, sizeof want - used, "%s%s", sep, token_text(exp[i]));
            if (w < 0 || (size_t)w >= sizeof want - used)
                break;
            used += (size_t)w;
        }
    }
    if (want[0])
        mc_report(ctx->diag, MC_ERROR, *loc, "expected %s, found %s", want, token_text(got));
    else
        mc_report(ctx->diag, MC_ERROR, *loc, "unexpected %s", token_text(got));

    /* hints for the usual mistakes */
    char closer[4] = "";   /* "')'": what closes the innermost open bracket */
    if (ls->depth > 0 && ls->depth <= MC_MAX_DEPTH) {
        char open = ls->open_ch[ls->depth - 1];
        snprintf(closer, sizeof closer, "'%c'", open == '(' ? ')' : open == '[' ? ']' : '}');
    }
    bool new_line = loc->line > ls->prev.end_line; /* the token starts a later line */
    if (unmatched)
        mc_hint(ctx->diag, "no bracket is open here: one %s too many?", token_text(got));
    else if (closer[0] && (got == YYSYMBOL_YYEOF || (new_line && expects_sym(exp, n, closer))))
        mc_hint(ctx->diag, "the '%c' at line %d is never closed", ls->open_ch[ls->depth - 1],
                ls->open[ls->depth - 1].line);
    else if ((got == YYSYMBOL_T_IDENT || got == YYSYMBOL_T_INT || got == YYSYMBOL_T_STRING) &&
        expects_sym(exp, n, "','"))
        mc_hint(ctx->diag, "separate items with ','");
    else if (got == YYSYMBOL_T_IDENT && expects_sym(exp, n, "'('") && expects_sym(exp, n, "'{'"))
        mc_hint(ctx->diag, "did you forget '{' after the name, or '()' after a layer?");
    else if (is_sym(got, "':'") && expects_sym(exp, n, "'='"))
        mc_hint(ctx->diag, "arguments and settings are written name = value");
    else if (is_sym(got, "','") && expects_sym(exp, n, "';'"))
        mc_hint(ctx->diag, "statements are written one after another, without ','");
    return 0;
}

int mc_parse(const mc_source *src, mc_diag *d, mc_program *out)
{
    struct mc_lexstate ls;
    memset(&ls, 0, sizeof ls);
    ls.diag = d;
    out->stmts = NULL;
    void *scanner = mc_lex_begin(&ls, src);
    if (!scanner) {
        fputs("moecc: cannot create the scanner\n", stderr);
        exit(2);
    }
    struct mc_parse_ctx ctx = { .ls = &ls, .diag = d, .prog = out, .depth_reported = false, .syntax_errors = 0 };
    int errors_before = d->errors;
    int rc = yyparse(scanner, &ctx);
    mc_lex_end(scanner);
    return (rc != 0 || d->errors > errors_before) ? 1 : 0;
}

int mc_dump_tokens(const mc_source *src, mc_diag *d, void *outp)
{
    FILE *out = outp;
    struct mc_lexstate ls;
    memset(&ls, 0, sizeof ls);
    ls.diag = d;
    void *scanner = mc_lex_begin(&ls, src);
    if (!scanner)
        return 1;
    int errors_before = d->errors;
    for (;;) {
        YYSTYPE v;
        YYLTYPE loc;
        memset(&v, 0, sizeof v);
        int tok = yylex(&v, &loc, scanner);
        if (tok == T_END)
            break;
        fprintf(out, "%d:%d\t", loc.line, loc.col);
        switch (tok) {
        case T_IDENT: fprintf(out, "identifier\t%s\n", v.s); free(v.s); break;
        case T_STRING: fprintf(out, "string\t\"%s\"\n", v.s); free(v.s); break;
        case T_INT: fprintf(out, "integer\t%lld\n", (long long)v.i); break;
        case T_FLOAT: fprintf(out, "number\t%.17g\n", v.f); break;
        case T_CONST: fputs("keyword\tconst\n", out); break;
        case T_TRUE: fputs("keyword\ttrue\n", out); break;
        case T_FALSE: fputs("keyword\tfalse\n", out); break;
        default: fprintf(out, "punct\t%c\n", tok); break;
        }
    }
    mc_lex_end(scanner);
    return d->errors > errors_before ? 1 : 0;
}
