/* lexstate.h: state shared by the flex scanner and the bison parser. */
#ifndef MOECC_LEXSTATE_H
#define MOECC_LEXSTATE_H

#include "ast.h"

struct mc_lexstate {
    mc_diag *diag;
    int line, col;         /* position of the next character */
    int depth;             /* open brackets */
    bool fatal;            /* stop parsing: nesting limit reached */
    mc_loc comment_start;  /* where the open block comment began */
    int stray_line, stray_end; /* the run of stray bytes last reported */
    /* for the parser's messages (kept by yylex, see lexer.l) */
    int ntok;              /* tokens returned so far */
    int err_tok;           /* the last token with a lexer error on the way, or 0 */
    int unmatched_tok;     /* the last closing bracket that closed nothing, or 0 */
    mc_loc prev, last;     /* the last two tokens returned */
    mc_loc open[MC_MAX_DEPTH]; /* where each open bracket is */
    char open_ch[MC_MAX_DEPTH];
};

/* Set loc to the token text starting at the current position, and advance. */
void mc_lex_advance(struct mc_lexstate *ls, mc_loc *loc, const char *text, size_t len);
/* Create a scanner over src, or NULL. */
void *mc_lex_begin(struct mc_lexstate *ls, const mc_source *src);
void mc_lex_end(void *scanner);

#endif /* MOECC_LEXSTATE_H */
