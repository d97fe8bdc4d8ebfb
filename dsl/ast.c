/* ast.c: syntax tree constructors, destructors and the --dump-ast printer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ast.h"

mc_expr *mc_expr_new(mc_expr_kind kind, mc_loc loc)
{
    mc_expr *e = mc_xcalloc(1, sizeof *e);
    e->kind = kind;
    e->loc = loc;
    e->depth = 1;
    return e;
}

mc_expr *mc_expr_binary(int op, mc_expr *lhs, mc_expr *rhs, mc_loc loc)
{
    mc_expr *e = mc_expr_new(EXPR_BINARY, loc);
    e->u.bin.op = op;
    e->u.bin.lhs = lhs;
    e->u.bin.rhs = rhs;
    e->depth = 1 + (lhs->depth > rhs->depth ? lhs->depth : rhs->depth);
    return e;
}

mc_arg *mc_arg_new(char *name, mc_loc name_loc, mc_expr *value)
{
    mc_arg *a = mc_xcalloc(1, sizeof *a);
    a->name = name;
    a->name_loc = name_loc;
    a->value = value;
    return a;
}

mc_stmt *mc_stmt_new(mc_stmt_kind kind, mc_loc loc, char *kw)
{
    mc_stmt *s = mc_xcalloc(1, sizeof *s);
    s->kind = kind;
    s->loc = loc;
    s->kw = kw;
    return s;
}

/* Expressions are at most MC_MAX_DEPTH deep (the parser sees to it), so
 * recursion here is bounded; sibling lists are walked iteratively. */
void mc_expr_free(mc_expr *e)
{
    while (e) {
        mc_expr *next = e->next;
        switch (e->kind) {
        case EXPR_STRING:
        case EXPR_NAME: free(e->u.s); break;
        case EXPR_LIST: mc_expr_free(e->u.list.items); break;
        case EXPR_MAP: mc_args_free(e->u.map.entries); break;
        case EXPR_CALL:
            free(e->u.call.name);
            mc_args_free(e->u.call.args);
            break;
        case EXPR_BINARY:
            mc_expr_free(e->u.bin.lhs);
            mc_expr_free(e->u.bin.rhs);
            break;
        case EXPR_NEG: mc_expr_free(e->u.neg); break;
        default: break;
        }
        free(e);
        e = next;
    }
}

void mc_args_free(mc_arg *a)
{
    while (a) {
        mc_arg *next = a->next;
        free(a->name);
        mc_expr_free(a->value);
        free(a);
        a = next;
    }
}

void mc_stmts_free(mc_stmt *s)
{
    while (s) {
        mc_stmt *next = s->next;
        free(s->kw);
        free(s->name);
        mc_expr_free(s->value);
        mc_args_free(s->args);
        mc_stmts_free(s->body);
        free(s);
        s = next;
    }
}

void mc_program_free(mc_program *p)
{
    mc_stmts_free(p->stmts);
    p->stmts = NULL;
}

/* ---- printing ------------------------------------------------------------ */

const char *mc_expr_kind_name(mc_expr_kind k)
{
    switch (k) {
    case EXPR_INT: return "integer";
    case EXPR_FLOAT: return "number";
    case EXPR_STRING: return "string";
    case EXPR_BOOL: return "boolean";
    case EXPR_NAME: return "name";
    case EXPR_LIST: return "list";
    case EXPR_MAP: return "map";
    case EXPR_CALL: return "call";
    case EXPR_BINARY: return "expression";
    case EXPR_NEG: return "expression";
    }
    return "?";
}

static void print_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s; s++) {
        switch (*s) {
        case '"': fputs("\\\"", out); break;
        case '\\': fputs("\\\\", out); break;
        case '\n': fputs("\\n", out); break;
        case '\t': fputs("\\t", out); break;
        default: fputc(*s, out);
        }
    }
    fputc('"', out);
}

static void print_args(FILE *out, const mc_arg *a, bool map)
{
    for (; a; a = a->next) {
        if (a->name)
            fprintf(out, map ? "%s: " : "%s = ", a->name);
        mc_expr_print(a->value, out);
        if (a->next)
            fputs(", ", out);
    }
}

void mc_expr_print(const mc_expr *e, void *outp)
{
    FILE *out = outp;
    switch (e->kind) {
    case EXPR_INT: fprintf(out, "%lld", (long long)e->u.i); break;
    case EXPR_FLOAT: fprintf(out, "%.17g", e->u.f); break;
    case EXPR_STRING: print_string(out, e->u.s); break;
    case EXPR_BOOL: fputs(e->u.b ? "true" : "false", out); break;
    case EXPR_NAME: fputs(e->u.s, out); break;
    case EXPR_LIST:
        fputc('[', out);
        for (const mc_expr *x = e->u.list.items; x; x = x->next) {
            mc_expr_print(x, out);
            if (x->next)
                fputs(", ", out);
        }
        fputc(']', out);
        break;
    case EXPR_MAP:
        fputc('{', out);
        print_args(out, e->u.map.entries, true);
        fputc('}', out);
        break;
    case EXPR_CALL:
        fprintf(out, "%s(", e->u.call.name);
        print_args(out, e->u.call.args, false);
        fputc(')', out);
        break;
    case EXPR_BINARY:
        fputc('(', out);
        mc_expr_print(e->u.bin.lhs, out);
        fprintf(out, " %c ", e->u.bin.op);
        mc_expr_print(e->u.bin.rhs, out);
        fputc(')', out);
        break;
    case EXPR_NEG:
        fputs("(-", out);
        mc_expr_print(e->u.neg, out);
        fputc(')', out);
        break;
    }
}

static void dump_stmts(FILE *out, const mc_stmt *s, int indent)
{
    for (; s; s = s->next) {
        fprintf(out, "%*s", indent * 2, "");
        switch (s->kind) {
        case STMT_CONST:
            fprintf(out, "const %s = ", s->kw);
            mc_expr_print(s->value, out);
            fprintf(out, "    @%d:%d\n", s->loc.line, s->loc.col);
            break;
        case STMT_SETTING:
            fprintf(out, "setting %s = ", s->kw);
            mc_expr_print(s->value, out);
            fprintf(out, "    @%d:%d\n", s->loc.line, s->loc.col);
            break;
        case STMT_NODE:
            fprintf(out, "node %s", s->kw);
            if (s->name)
                fprintf(out, " %s", s->name);
            if (s->has_args) {
                fputc('(', out);
                print_args(out, s->args, false);
                fputc(')', out);
            }
            fprintf(out, "    @%d:%d\n", s->loc.line, s->loc.col);
            if (s->has_body)
                dump_stmts(out, s->body, indent + 1);
            break;
        }
    }
}

void mc_ast_dump(const mc_program *p, void *out)
{
    dump_stmts(out, p->stmts, 0);
}
