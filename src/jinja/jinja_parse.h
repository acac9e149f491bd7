/*
 * What the two halves of the parser share (jinja_parser.c: statements,
 * jinja_parse_expr.c: expressions): token and node helpers.
 */
#ifndef ANVIL_TOKENIZER_JINJA_PARSE_H
#define ANVIL_TOKENIZER_JINJA_PARSE_H

#include <stdio.h>
#include <string.h>

#include "jinja/jinja_internal.h"

#define JINJA_MAX_NESTING 100

/* ------------------------------------------------------------------ token helpers */

static inline jtok *cur(jparse *p)
{
    return &p->toks[p->pos];
}

static inline jtok *look(jparse *p)
{
    return p->pos + 1 < p->ntoks ? &p->toks[p->pos + 1] : &p->toks[p->pos];
}

static inline void advance(jparse *p)
{
    if (p->toks[p->pos].type != T_EOF)
        p->pos++;
}

static inline int tok_is_name(const jtok *t, const char *name)
{
    return t->type == T_NAME && strcmp(t->str->s, name) == 0;
}

static inline int is_name(jparse *p, const char *name)
{
    return tok_is_name(cur(p), name);
}

static inline int is_op(jparse *p, jop op)
{
    return cur(p)->type == T_OP && cur(p)->op == op;
}

static inline int skip_name(jparse *p, const char *name)
{
    if (is_name(p, name)) {
        advance(p);
        return 1;
    }
    return 0;
}

static inline int skip_op(jparse *p, jop op)
{
    if (is_op(p, op)) {
        advance(p);
        return 1;
    }
    return 0;
}

static inline const char *op_text(int op)
{
    static const char *const texts[] = {
        [OP_ADD] = "+",       [OP_SUB] = "-",    [OP_DIV] = "/",    [OP_FLOORDIV] = "//", [OP_MUL] = "*",
        [OP_MOD] = "%",       [OP_POW] = "**",   [OP_TILDE] = "~",  [OP_LBRACKET] = "[",  [OP_RBRACKET] = "]",
        [OP_LPAREN] = "(",    [OP_RPAREN] = ")", [OP_LBRACE] = "{", [OP_RBRACE] = "}",    [OP_EQ] = "==",
        [OP_NE] = "!=",       [OP_GT] = ">",     [OP_GTEQ] = ">=",  [OP_LT] = "<",        [OP_LTEQ] = "<=",
        [OP_ASSIGN] = "=",    [OP_DOT] = ".",    [OP_COLON] = ":",  [OP_PIPE] = "|",      [OP_COMMA] = ",",
        [OP_SEMICOLON] = ";",
    };
    return op > 0 && op < (int)(sizeof texts / sizeof texts[0]) && texts[op] ? texts[op] : "?";
}

/* jinja2's describe_token */
static inline const char *describe(const jtok *t, char *buf, size_t cap)
{
    switch ((jtok_type)t->type) {
    case T_NAME:
        snprintf(buf, cap, "%.60s", t->str->s);
        return buf;
    case T_OP:
        return op_text(t->op);
    case T_DATA:
        return "template data / text";
    case T_VAR_BEGIN:
        return "begin of print statement";
    case T_VAR_END:
        return "end of print statement";
    case T_BLOCK_BEGIN:
        return "begin of statement block";
    case T_BLOCK_END:
        return "end of statement block";
    case T_STRING:
        return "string";
    case T_INT:
        return "integer";
    case T_FLOAT:
        return "float";
    case T_EOF:
        return "end of template";
    }
    return "?";
}

static inline void fail_expected(jparse *p, const char *what)
{
    char b[128];
    jtok *t = cur(p);
    if (t->type == T_EOF)
        jparse_fail(p, t->line, "unexpected end of template, expected '%s'.", what);
    jparse_fail(p, t->line, "expected token '%s', got '%s'", what, describe(t, b, sizeof b));
}

static inline void expect_op(jparse *p, jop op)
{
    if (!skip_op(p, op))
        fail_expected(p, op_text(op));
}

static inline void expect_type(jparse *p, int type)
{
    if (cur(p)->type != type) {
        jtok t = {.type = (uint8_t)type};
        char b[64];
        fail_expected(p, describe(&t, b, sizeof b));
    }
    advance(p);
}

static inline jstr *expect_name(jparse *p)
{
    if (cur(p)->type != T_NAME)
        fail_expected(p, "name");
    jstr *s = cur(p)->str;
    advance(p);
    return s;
}

static inline void expect_name_is(jparse *p, const char *name)
{
    if (!skip_name(p, name))
        fail_expected(p, name);
}

/* ------------------------------------------------------------------ nodes */

static inline jnode *node(jparse *p, int kind, int line)
{
    jnode *n = jparse_alloc(p, sizeof *n);
    n->kind = (uint8_t)kind;
    n->line = line;
    n->fid = -1;
    return n;
}

typedef struct nvec {
    jnode **v;
    int n, cap;
} nvec;

static inline void nvec_push(jparse *p, nvec *vec, jnode *n)
{
    if (vec->n == vec->cap) {
        int cap = vec->cap ? vec->cap * 2 : 4;
        jnode **nv =
            jarena_grow(p->arena, vec->v, (size_t)vec->cap * sizeof(jnode *), (size_t)cap * sizeof(jnode *));
        if (nv == NULL) {
            p->oom = 1;
            jparse_fail(p, 0, "out of memory");
        }
        vec->v = nv;
        vec->cap = cap;
    }
    vec->v[vec->n++] = n;
}

typedef struct svec {
    jstr **v;
    int n, cap;
} svec;

static inline void svec_push(jparse *p, svec *vec, jstr *s)
{
    if (vec->n == vec->cap) {
        int cap = vec->cap ? vec->cap * 2 : 4;
        jstr **nv =
            jarena_grow(p->arena, vec->v, (size_t)vec->cap * sizeof(jstr *), (size_t)cap * sizeof(jstr *));
        if (nv == NULL) {
            p->oom = 1;
            jparse_fail(p, 0, "out of memory");
        }
        vec->v = nv;
        vec->cap = cap;
    }
    vec->v[vec->n++] = s;
}

static inline void enter(jparse *p)
{
    if (++p->depth > JINJA_MAX_NESTING)
        jparse_fail(p, cur(p)->line, "the template nests more than %d levels", JINJA_MAX_NESTING);
}

static inline void leave(jparse *p)
{
    p->depth--;
}

/* ------------------------------------------------------------------ expressions (jinja_parse_expr.c) */

/* jinja2's parse_expression: with_condexpr allows `a if b else c`. */
jnode *jparse_expression(jparse *p, int with_condexpr);
/* jinja2's parse_tuple: several expressions separated by commas make a tuple;
 * simplified parses names and literals only (assignment targets). */
jnode *jparse_tuple(jparse *p, int simplified, int with_condexpr, const char *extra_end, int explicit_parens,
                    int with_namespace);
/* A filter chain `|f(args)|g`; start_inline: the first name comes without "|". */
jnode *jparse_filter(jparse *p, jnode *n, int start_inline);

#endif
