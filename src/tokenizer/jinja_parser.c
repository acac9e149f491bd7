/*
 * The parser: tokens -> AST, a recursive descent that mirrors jinja2's
 * parser.py function by function, so that precedence and the odd corners
 * (filters bind tighter than arithmetic, "not a is b" is "not (a is b)",
 * a test takes one bare argument, "a if b" without else) come out the same.
 *
 * As jinja2 does, an unknown filter or test is an error when the template is
 * parsed, unless it sits inside an if statement or a conditional expression:
 * then it fails only when it runs.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "tokenizer/jinja_internal.h"

#define MAX_NESTING 100
#define ARENA_CAP ((size_t)1 << 30)

void jparse_fail(jparse *p, int line, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(p->err, sizeof p->err, "%s: %s (line %d)", p->assertion ? "TemplateAssertionError" : "TemplateSyntaxError",
             msg, line);
    longjmp(p->jb, 1);
}

void *jparse_alloc(jparse *p, size_t n)
{
    void *r = jarena_alloc(p->arena, n);
    if (r == NULL) {
        p->oom = 1;
        jparse_fail(p, 0, "out of memory");
    }
    return r;
}

jstr *jparse_str(jparse *p, const char *s, size_t len)
{
    jstr *r = jparse_alloc(p, sizeof *r + len + 1);
    r->len = len;
    if (len && s)
        memcpy(r->s, s, len);
    r->s[len] = '\0';
    /* counted now: a parsed template is shared read-only between threads */
    int64_t ncp = 0;
    for (size_t i = 0; i < len; i++)
        ncp += ((unsigned char)r->s[i] & 0xc0) != 0x80;
    r->ncp = ncp;
    return r;
}

/* ------------------------------------------------------------------ token helpers */

static jtok *cur(jparse *p) { return &p->toks[p->pos]; }

static jtok *look(jparse *p) { return p->pos + 1 < p->ntoks ? &p->toks[p->pos + 1] : &p->toks[p->pos]; }

static void advance(jparse *p)
{
    if (p->toks[p->pos].type != T_EOF)
        p->pos++;
}

static int tok_is_name(const jtok *t, const char *name)
{
    return t->type == T_NAME && strcmp(t->str->s, name) == 0;
}

static int is_name(jparse *p, const char *name) { return tok_is_name(cur(p), name); }

static int is_op(jparse *p, jop op) { return cur(p)->type == T_OP && cur(p)->op == op; }

static int skip_name(jparse *p, const char *name)
{
    if (is_name(p, name)) {
        advance(p);
        return 1;
    }
    return 0;
}

static int skip_op(jparse *p, jop op)
{
    if (is_op(p, op)) {
        advance(p);
        return 1;
    }
    return 0;
}

static const char *op_text(int op)
{
    static const char *const texts[] = {
        [OP_ADD] = "+",      [OP_SUB] = "-",      [OP_DIV] = "/",      [OP_FLOORDIV] = "//", [OP_MUL] = "*",
        [OP_MOD] = "%",      [OP_POW] = "**",     [OP_TILDE] = "~",    [OP_LBRACKET] = "[",  [OP_RBRACKET] = "]",
        [OP_LPAREN] = "(",   [OP_RPAREN] = ")",   [OP_LBRACE] = "{",   [OP_RBRACE] = "}",    [OP_EQ] = "==",
        [OP_NE] = "!=",      [OP_GT] = ">",       [OP_GTEQ] = ">=",    [OP_LT] = "<",        [OP_LTEQ] = "<=",
        [OP_ASSIGN] = "=",   [OP_DOT] = ".",      [OP_COLON] = ":",    [OP_PIPE] = "|",      [OP_COMMA] = ",",
        [OP_SEMICOLON] = ";",
    };
    return op > 0 && op < (int)(sizeof texts / sizeof texts[0]) && texts[op] ? texts[op] : "?";
}

/* jinja2's describe_token */
static const char *describe(const jtok *t, char *buf, size_t cap)
{
    switch ((jtok_type)t->type) {
    case T_NAME: snprintf(buf, cap, "%.100s", t->str->s); return buf;
    case T_OP: return op_text(t->op);
    case T_DATA: return "template data / text";
    case T_VAR_BEGIN: return "begin of print statement";
    case T_VAR_END: return "end of print statement";
    case T_BLOCK_BEGIN: return "begin of statement block";
    case T_BLOCK_END: return "end of statement block";
    case T_STRING: return "string";
    case T_INT: return "integer";
    case T_FLOAT: return "float";
    case T_EOF: return "end of template";
    }
    return "?";
}

static void fail_expected(jparse *p, const char *what)
{
    char b[128];
    jtok *t = cur(p);
    if (t->type == T_EOF)
        jparse_fail(p, t->line, "unexpected end of template, expected '%s'.", what);
    jparse_fail(p, t->line, "expected token '%s', got '%s'", what, describe(t, b, sizeof b));
}

static void expect_op(jparse *p, jop op)
{
    if (!skip_op(p, op))
        fail_expected(p, op_text(op));
}

static void expect_type(jparse *p, int type)
{
    if (cur(p)->type != type) {
        jtok t = {.type = (uint8_t)type};
        char b[64];
        fail_expected(p, describe(&t, b, sizeof b));
    }
    advance(p);
}

static jstr *expect_name(jparse *p)
{
    if (cur(p)->type != T_NAME)
        fail_expected(p, "name");
    jstr *s = cur(p)->str;
    advance(p);
    return s;
}

static void expect_name_is(jparse *p, const char *name)
{
    if (!skip_name(p, name))
        fail_expected(p, name);
}

/* ------------------------------------------------------------------ nodes */

static jnode *node(jparse *p, int kind, int line)
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

static void nvec_push(jparse *p, nvec *vec, jnode *n)
{
    if (vec->n == vec->cap) {
        int cap = vec->cap ? vec->cap * 2 : 4;
        jnode **nv = jarena_grow(p->arena, vec->v, (size_t)vec->cap * sizeof(jnode *), (size_t)cap * sizeof(jnode *));
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

static void svec_push(jparse *p, svec *vec, jstr *s)
{
    if (vec->n == vec->cap) {
        int cap = vec->cap ? vec->cap * 2 : 4;
        jstr **nv = jarena_grow(p->arena, vec->v, (size_t)vec->cap * sizeof(jstr *), (size_t)cap * sizeof(jstr *));
        if (nv == NULL) {
            p->oom = 1;
            jparse_fail(p, 0, "out of memory");
        }
        vec->v = nv;
        vec->cap = cap;
    }
    vec->v[vec->n++] = s;
}

static void enter(jparse *p)
{
    if (++p->depth > MAX_NESTING)
        jparse_fail(p, cur(p)->line, "the template nests more than %d levels", MAX_NESTING);
}

static void leave(jparse *p) { p->depth--; }

/* ------------------------------------------------------------------ expressions */

static jnode *parse_expression(jparse *p, int with_condexpr);
static jnode *parse_tuple(jparse *p, int simplified, int with_condexpr, const char *extra_end, int explicit_parens,
                          int with_namespace);
static jnode *parse_unary(jparse *p, int with_filter);
static jnode *parse_primary(jparse *p, int with_namespace);
static jnode *parse_postfix(jparse *p, jnode *n);
static jnode *parse_filter(jparse *p, jnode *n, int start_inline);

static void parse_call_args(jparse *p, jnode *n)
{
    int line = cur(p)->line;
    expect_op(p, OP_LPAREN);
    nvec args = {0}, kwv = {0};
    svec kwn = {0};
    int require_comma = 0;
    while (!is_op(p, OP_RPAREN)) {
        if (require_comma) {
            expect_op(p, OP_COMMA);
            if (is_op(p, OP_RPAREN))
                break;
        }
        if (is_op(p, OP_MUL) || is_op(p, OP_POW))
            jparse_fail(p, line, "*args and **kwargs in calls are not supported by anvil");
        if (cur(p)->type == T_NAME && look(p)->type == T_OP && look(p)->op == OP_ASSIGN) {
            jstr *key = cur(p)->str;
            advance(p);
            advance(p);
            svec_push(p, &kwn, key);
            nvec_push(p, &kwv, parse_expression(p, 1));
        } else {
            if (kwn.n)
                jparse_fail(p, line, "invalid syntax for function call expression");
            nvec_push(p, &args, parse_expression(p, 1));
        }
        require_comma = 1;
    }
    expect_op(p, OP_RPAREN);
    n->v = args.v;
    n->nv = args.n;
    n->w = kwv.v;
    n->nw = kwv.n;
    n->names = kwn.v;
    n->nnames = kwn.n;
}

static jnode *parse_call(jparse *p, jnode *callee)
{
    jnode *n = node(p, E_CALL, cur(p)->line);
    n->a = callee;
    parse_call_args(p, n);
    return n;
}

static jstr *dotted_name(jparse *p)
{
    jstr *name = expect_name(p);
    while (is_op(p, OP_DOT)) {
        advance(p);
        jstr *part = expect_name(p);
        char buf[256];
        int k = snprintf(buf, sizeof buf, "%s.%s", name->s, part->s);
        name = jparse_str(p, buf, k < 0 ? 0 : (size_t)k >= sizeof buf ? sizeof buf - 1 : (size_t)k);
    }
    return name;
}

static jnode *parse_filter(jparse *p, jnode *n, int start_inline)
{
    while (is_op(p, OP_PIPE) || start_inline) {
        if (!start_inline)
            advance(p);
        int line = cur(p)->line;
        jstr *name = dotted_name(p);
        jnode *f = node(p, E_FILTER, line);
        f->a = n;
        f->str = name;
        f->fid = jfilter_find(name->s, name->len);
        if (f->fid < 0 && !p->soft) {
            p->assertion = 1;
            jparse_fail(p, line, "No filter named '%.100s'.", name->s);
        }
        if (is_op(p, OP_LPAREN))
            parse_call_args(p, f);
        n = f;
        start_inline = 0;
    }
    return n;
}

static jnode *parse_test(jparse *p, jnode *n)
{
    int line = cur(p)->line;
    advance(p); /* is */
    int negated = skip_name(p, "not");
    jstr *name = dotted_name(p);
    jnode *t = node(p, E_TEST, line);
    t->a = n;
    t->str = name;
    t->fid = jtest_find(name->s, name->len);
    if (t->fid < 0 && !p->soft) {
        p->assertion = 1;
        jparse_fail(p, line, "No test named '%.100s'.", name->s);
    }
    jtok *c = cur(p);
    if (is_op(p, OP_LPAREN)) {
        parse_call_args(p, t);
    } else if ((c->type == T_NAME || c->type == T_STRING || c->type == T_INT || c->type == T_FLOAT ||
                (c->type == T_OP && (c->op == OP_LPAREN || c->op == OP_LBRACKET || c->op == OP_LBRACE))) &&
               !is_name(p, "else") && !is_name(p, "or") && !is_name(p, "and")) {
        if (is_name(p, "is"))
            jparse_fail(p, c->line, "You cannot chain multiple tests with is");
        jnode *arg = parse_postfix(p, parse_primary(p, 0));
        t->v = jparse_alloc(p, sizeof(jnode *));
        t->v[0] = arg;
        t->nv = 1;
    }
    if (negated) {
        jnode *nt = node(p, E_NOT, line);
        nt->a = t;
        return nt;
    }
    return t;
}

static jnode *parse_filter_expr(jparse *p, jnode *n)
{
    for (;;) {
        if (is_op(p, OP_PIPE))
            n = parse_filter(p, n, 0);
        else if (is_name(p, "is"))
            n = parse_test(p, n);
        else if (is_op(p, OP_LPAREN))
            n = parse_call(p, n);
        else
            return n;
    }
}

static jnode *parse_subscribed(jparse *p)
{
    int line = cur(p)->line;
    jnode *parts[3] = {NULL, NULL, NULL};
    if (is_op(p, OP_COLON)) {
        advance(p);
    } else {
        jnode *e = parse_expression(p, 1);
        if (!is_op(p, OP_COLON))
            return e;
        advance(p);
        parts[0] = e;
    }
    if (!is_op(p, OP_COLON) && !is_op(p, OP_RBRACKET) && !is_op(p, OP_COMMA))
        parts[1] = parse_expression(p, 1);
    if (is_op(p, OP_COLON)) {
        advance(p);
        if (!is_op(p, OP_RBRACKET) && !is_op(p, OP_COMMA))
            parts[2] = parse_expression(p, 1);
    }
    jnode *s = node(p, E_SLICE, line);
    s->a = parts[0];
    s->b = parts[1];
    s->c = parts[2];
    return s;
}

static jnode *parse_subscript(jparse *p, jnode *obj)
{
    jtok *t = cur(p);
    int line = t->line;
    if (t->op == OP_DOT) {
        advance(p);
        jtok *a = cur(p);
        if (a->type == T_NAME) {
            advance(p);
            jnode *g = node(p, E_GETATTR, line);
            g->a = obj;
            g->str = a->str;
            return g;
        }
        if (a->type != T_INT)
            jparse_fail(p, a->line, "expected name or number");
        advance(p);
        jnode *k = node(p, E_CONST, line);
        k->cst = jv_int(a->i);
        jnode *g = node(p, E_GETITEM, line);
        g->a = obj;
        g->b = k;
        return g;
    }
    advance(p); /* [ */
    nvec args = {0};
    while (!is_op(p, OP_RBRACKET)) {
        if (args.n)
            expect_op(p, OP_COMMA);
        nvec_push(p, &args, parse_subscribed(p));
    }
    expect_op(p, OP_RBRACKET);
    jnode *g = node(p, E_GETITEM, line);
    g->a = obj;
    if (args.n == 1) {
        g->b = args.v[0];
    } else {
        jnode *tup = node(p, E_TUPLE, line);
        tup->v = args.v;
        tup->nv = args.n;
        g->b = tup;
    }
    return g;
}

static jnode *parse_postfix(jparse *p, jnode *n)
{
    for (;;) {
        if (is_op(p, OP_DOT) || is_op(p, OP_LBRACKET))
            n = parse_subscript(p, n);
        else if (is_op(p, OP_LPAREN))
            n = parse_call(p, n);
        else
            return n;
    }
}

static jnode *parse_list(jparse *p)
{
    int line = cur(p)->line;
    expect_op(p, OP_LBRACKET);
    nvec items = {0};
    while (!is_op(p, OP_RBRACKET)) {
        if (items.n)
            expect_op(p, OP_COMMA);
        if (is_op(p, OP_RBRACKET))
            break;
        nvec_push(p, &items, parse_expression(p, 1));
    }
    expect_op(p, OP_RBRACKET);
    jnode *n = node(p, E_LIST, line);
    n->v = items.v;
    n->nv = items.n;
    return n;
}

static jnode *parse_dict(jparse *p)
{
    int line = cur(p)->line;
    expect_op(p, OP_LBRACE);
    nvec keys = {0}, vals = {0};
    while (!is_op(p, OP_RBRACE)) {
        if (keys.n)
            expect_op(p, OP_COMMA);
        if (is_op(p, OP_RBRACE))
            break;
        nvec_push(p, &keys, parse_expression(p, 1));
        expect_op(p, OP_COLON);
        nvec_push(p, &vals, parse_expression(p, 1));
    }
    expect_op(p, OP_RBRACE);
    jnode *n = node(p, E_DICT, line);
    n->v = keys.v;
    n->nv = keys.n;
    n->w = vals.v;
    n->nw = vals.n;
    return n;
}

static jnode *parse_primary(jparse *p, int with_namespace)
{
    jtok *t = cur(p);
    int line = t->line;
    jnode *n;
    if (t->type == T_NAME) {
        advance(p);
        const char *s = t->str->s;
        if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "false") || !strcmp(s, "False")) {
            n = node(p, E_CONST, line);
            n->cst = jv_bool(s[0] == 't' || s[0] == 'T');
        } else if (!strcmp(s, "none") || !strcmp(s, "None")) {
            n = node(p, E_CONST, line);
            n->cst = jv_none();
        } else if (with_namespace && is_op(p, OP_DOT)) {
            advance(p);
            n = node(p, E_NSREF, line);
            n->str = t->str;
            n->str2 = expect_name(p);
        } else {
            n = node(p, E_NAME, line);
            n->str = t->str;
        }
    } else if (t->type == T_STRING) {
        advance(p);
        jstr *s = t->str;
        while (cur(p)->type == T_STRING) {
            jstr *more = cur(p)->str;
            char *tmp = jparse_alloc(p, s->len + more->len + 1);
            memcpy(tmp, s->s, s->len);
            memcpy(tmp + s->len, more->s, more->len);
            s = jparse_str(p, tmp, s->len + more->len);
            advance(p);
        }
        n = node(p, E_CONST, line);
        n->cst = jv_strv(s);
    } else if (t->type == T_INT || t->type == T_FLOAT) {
        advance(p);
        n = node(p, E_CONST, line);
        n->cst = t->type == T_INT ? jv_int(t->i) : jv_float(t->f);
    } else if (t->type == T_OP && t->op == OP_LPAREN) {
        advance(p);
        enter(p);
        n = parse_tuple(p, 0, 1, NULL, 1, 0);
        leave(p);
        expect_op(p, OP_RPAREN);
    } else if (t->type == T_OP && t->op == OP_LBRACKET) {
        enter(p);
        n = parse_list(p);
        leave(p);
    } else if (t->type == T_OP && t->op == OP_LBRACE) {
        enter(p);
        n = parse_dict(p);
        leave(p);
    } else {
        char b[128];
        if (t->type == T_EOF)
            jparse_fail(p, line, "unexpected end of template");
        jparse_fail(p, line, "unexpected '%s'", describe(t, b, sizeof b));
    }
    return n;
}

static jnode *parse_unary(jparse *p, int with_filter)
{
    int line = cur(p)->line;
    jnode *n;
    enter(p);
    if (is_op(p, OP_SUB) || is_op(p, OP_ADD)) {
        int neg = is_op(p, OP_SUB);
        advance(p);
        n = node(p, neg ? E_NEG : E_POS, line);
        n->a = parse_unary(p, 0);
    } else {
        n = parse_primary(p, 0);
    }
    n = parse_postfix(p, n);
    if (with_filter)
        n = parse_filter_expr(p, n);
    leave(p);
    return n;
}

static jnode *binary(jparse *p, int kind, int op, jnode *a, jnode *b, int line)
{
    jnode *n = node(p, kind, line);
    n->op = (uint8_t)op;
    n->a = a;
    n->b = b;
    return n;
}

static jnode *parse_pow(jparse *p)
{
    jnode *left = parse_unary(p, 1);
    while (is_op(p, OP_POW)) {
        int line = cur(p)->line;
        advance(p);
        left = binary(p, E_BIN, OP_POW, left, parse_unary(p, 1), line);
    }
    return left;
}

static jnode *parse_math2(jparse *p)
{
    jnode *left = parse_pow(p);
    while (is_op(p, OP_MUL) || is_op(p, OP_DIV) || is_op(p, OP_FLOORDIV) || is_op(p, OP_MOD)) {
        int op = cur(p)->op, line = cur(p)->line;
        advance(p);
        left = binary(p, E_BIN, op, left, parse_pow(p), line);
    }
    return left;
}

static jnode *parse_concat(jparse *p)
{
    int line = cur(p)->line;
    jnode *first = parse_math2(p);
    if (!is_op(p, OP_TILDE))
        return first;
    nvec parts = {0};
    nvec_push(p, &parts, first);
    while (skip_op(p, OP_TILDE))
        nvec_push(p, &parts, parse_math2(p));
    jnode *n = node(p, E_CONCAT, line);
    n->v = parts.v;
    n->nv = parts.n;
    return n;
}

static jnode *parse_math1(jparse *p)
{
    jnode *left = parse_concat(p);
    while (is_op(p, OP_ADD) || is_op(p, OP_SUB)) {
        int op = cur(p)->op, line = cur(p)->line;
        advance(p);
        left = binary(p, E_BIN, op, left, parse_concat(p), line);
    }
    return left;
}

static jnode *parse_compare(jparse *p)
{
    int line = cur(p)->line;
    jnode *first = parse_math1(p);
    nvec operands = {0};
    uint8_t ops[64];
    int nops = 0;
    for (;;) {
        int op;
        jtok *t = cur(p);
        if (t->type == T_OP && (t->op == OP_EQ || t->op == OP_NE || t->op == OP_LT || t->op == OP_LTEQ ||
                                t->op == OP_GT || t->op == OP_GTEQ)) {
            op = t->op;
            advance(p);
        } else if (is_name(p, "in")) {
            op = OP_IN;
            advance(p);
        } else if (is_name(p, "not") && tok_is_name(look(p), "in")) {
            op = OP_NOTIN;
            advance(p);
            advance(p);
        } else {
            break;
        }
        if (nops == (int)sizeof ops)
            jparse_fail(p, t->line, "too many chained comparisons");
        ops[nops++] = (uint8_t)op;
        nvec_push(p, &operands, parse_math1(p));
    }
    if (nops == 0)
        return first;
    jnode *n = node(p, E_COMPARE, line);
    n->a = first;
    n->v = operands.v;
    n->nv = operands.n;
    n->ops = jparse_alloc(p, (size_t)nops);
    memcpy(n->ops, ops, (size_t)nops);
    return n;
}

static jnode *parse_not(jparse *p)
{
    if (is_name(p, "not")) {
        int line = cur(p)->line;
        advance(p);
        enter(p);
        jnode *n = node(p, E_NOT, line);
        n->a = parse_not(p);
        leave(p);
        return n;
    }
    return parse_compare(p);
}

static jnode *parse_and(jparse *p)
{
    jnode *left = parse_not(p);
    while (is_name(p, "and")) {
        int line = cur(p)->line;
        advance(p);
        left = binary(p, E_AND, 0, left, parse_not(p), line);
    }
    return left;
}

static jnode *parse_or(jparse *p)
{
    jnode *left = parse_and(p);
    while (is_name(p, "or")) {
        int line = cur(p)->line;
        advance(p);
        left = binary(p, E_OR, 0, left, parse_and(p), line);
    }
    return left;
}

static jnode *parse_condexpr(jparse *p)
{
    int line = cur(p)->line;
    int soft = p->soft;
    jnode *expr1 = parse_or(p);
    while (is_name(p, "if")) {
        advance(p);
        /* the parts of a conditional expression are a soft frame */
        p->soft = 1;
        jnode *n = node(p, E_COND, line);
        n->a = parse_or(p);
        n->b = expr1;
        if (skip_name(p, "else")) {
            enter(p);
            n->c = parse_condexpr(p);
            leave(p);
        }
        expr1 = n;
        line = cur(p)->line;
    }
    p->soft = soft;
    return expr1;
}

static jnode *parse_expression(jparse *p, int with_condexpr)
{
    return with_condexpr ? parse_condexpr(p) : parse_or(p);
}

static int is_tuple_end(jparse *p, const char *extra_end)
{
    jtok *t = cur(p);
    if (t->type == T_VAR_END || t->type == T_BLOCK_END || (t->type == T_OP && t->op == OP_RPAREN))
        return 1;
    return extra_end != NULL && tok_is_name(t, extra_end);
}

static jnode *parse_tuple(jparse *p, int simplified, int with_condexpr, const char *extra_end, int explicit_parens,
                          int with_namespace)
{
    int line = cur(p)->line;
    nvec args = {0};
    int is_tuple = 0;
    for (;;) {
        if (args.n)
            expect_op(p, OP_COMMA);
        if (is_tuple_end(p, extra_end))
            break;
        nvec_push(p, &args, simplified ? parse_primary(p, with_namespace) : parse_expression(p, with_condexpr));
        if (is_op(p, OP_COMMA))
            is_tuple = 1;
        else
            break;
    }
    if (!is_tuple) {
        if (args.n)
            return args.v[0];
        if (!explicit_parens) {
            char b[128];
            jparse_fail(p, cur(p)->line, "Expected an expression, got '%s'", describe(cur(p), b, sizeof b));
        }
    }
    jnode *n = node(p, E_TUPLE, line);
    n->v = args.v;
    n->nv = args.n;
    return n;
}

/* ------------------------------------------------------------------ statements */

static jnode **subparse(jparse *p, const char *const *end_tokens, int *n_out);

static int can_assign(const jnode *n)
{
    if (n->kind == E_NAME || n->kind == E_NSREF)
        return 1;
    if (n->kind == E_TUPLE) {
        for (int i = 0; i < n->nv; i++)
            if (!can_assign(n->v[i]))
                return 0;
        return 1;
    }
    return 0;
}

static jnode *parse_assign_target(jparse *p, const char *extra_end, int with_namespace)
{
    jnode *t = parse_tuple(p, 1, 1, extra_end, 0, with_namespace);
    if (!can_assign(t))
        jparse_fail(p, t->line, "can't assign to '%s'", t->kind == E_CONST ? "const" : "expression");
    return t;
}

/* Skips an optional colon and the end of the opening tag, then parses the
 * body up to one of end_tokens; with drop_needle the end tag's name is
 * consumed too. */
static jnode **parse_statements(jparse *p, const char *const *end_tokens, int drop_needle, int *n_out)
{
    skip_op(p, OP_COLON);
    expect_type(p, T_BLOCK_END);
    jnode **body = subparse(p, end_tokens, n_out);
    if (cur(p)->type == T_EOF) {
        char want[200] = "";
        for (int i = 0; end_tokens[i]; i++) {
            size_t k = strlen(want);
            snprintf(want + k, sizeof want - k, "%s'%s'", i ? " or " : "", end_tokens[i]);
        }
        jparse_fail(p, cur(p)->line,
                    "Unexpected end of template. Jinja was looking for the following tags: %s. The innermost block "
                    "that needs to be closed is '%s'.",
                    want, p->tag_stack_n > 0 ? p->tag_stack[p->tag_stack_n - 1] : "?");
    }
    if (drop_needle)
        advance(p);
    return body;
}

static void parse_signature(jparse *p, jnode *n)
{
    svec params = {0};
    nvec defaults = {0};
    expect_op(p, OP_LPAREN);
    while (!is_op(p, OP_RPAREN)) {
        if (params.n)
            expect_op(p, OP_COMMA);
        jstr *name = expect_name(p);
        if (skip_op(p, OP_ASSIGN))
            nvec_push(p, &defaults, parse_expression(p, 1));
        else if (defaults.n)
            jparse_fail(p, cur(p)->line, "non-default argument follows default argument");
        svec_push(p, &params, name);
    }
    expect_op(p, OP_RPAREN);
    n->names = params.v;
    n->nnames = params.n;
    n->w = defaults.v;
    n->nw = defaults.n;
}

static const char *const END_FOR[] = {"endfor", "else", NULL};
static const char *const END_FOR_ELSE[] = {"endfor", NULL};
static const char *const END_IF[] = {"elif", "else", "endif", NULL};
static const char *const END_IF_ELSE[] = {"endif", NULL};
static const char *const END_SET[] = {"endset", NULL};
static const char *const END_MACRO[] = {"endmacro", NULL};
static const char *const END_CALL[] = {"endcall", NULL};
static const char *const END_FILTER[] = {"endfilter", NULL};
static const char *const END_WITH[] = {"endwith", NULL};
static const char *const END_GENERATION[] = {"endgeneration", NULL};
static const char *const END_BLOCK[] = {"endblock", NULL};

static jnode *parse_for(jparse *p, int line)
{
    jnode *n = node(p, N_FOR, line);
    n->a = parse_assign_target(p, "in", 0);
    expect_name_is(p, "in");
    n->b = parse_tuple(p, 0, 0, "recursive", 0, 0);
    int soft = p->soft;
    p->soft = 0;
    if (skip_name(p, "if"))
        n->c = parse_expression(p, 1);
    if (is_name(p, "recursive"))
        jparse_fail(p, cur(p)->line, "recursive for loops are not supported by anvil");
    p->loops++;
    n->v = parse_statements(p, END_FOR, 0, &n->nv);
    p->loops--;
    jstr *end = expect_name(p);
    if (strcmp(end->s, "else") == 0)
        n->w = parse_statements(p, END_FOR_ELSE, 1, &n->nw);
    p->soft = soft;
    return n;
}

static jnode *parse_if(jparse *p, int line)
{
    int soft = p->soft;
    p->soft = 1;
    jnode *result = node(p, N_IF, line), *n = result;
    for (;;) {
        n->a = parse_tuple(p, 0, 0, NULL, 0, 0);
        n->v = parse_statements(p, END_IF, 0, &n->nv);
        jtok *t = cur(p);
        advance(p);
        if (tok_is_name(t, "elif")) {
            jnode *e = node(p, N_IF, t->line);
            n->w = jparse_alloc(p, sizeof(jnode *));
            n->w[0] = e;
            n->nw = 1;
            n = e;
            continue;
        }
        if (tok_is_name(t, "else"))
            n->w = parse_statements(p, END_IF_ELSE, 1, &n->nw);
        break;
    }
    p->soft = soft;
    return result;
}

static jnode *parse_set(jparse *p, int line)
{
    jnode *target = parse_assign_target(p, NULL, 1);
    if (skip_op(p, OP_ASSIGN)) {
        jnode *n = node(p, N_SET, line);
        n->a = target;
        n->b = parse_tuple(p, 0, 1, NULL, 0, 0);
        return n;
    }
    jnode *n = node(p, N_SET_BLOCK, line);
    n->a = target;
    int soft = p->soft;
    p->soft = 0;
    if (is_op(p, OP_PIPE))
        n->c = parse_filter(p, NULL, 0);
    n->v = parse_statements(p, END_SET, 1, &n->nv);
    p->soft = soft;
    return n;
}

/* Whether the body refers to name (a macro takes extra arguments only when
 * its body reads varargs / kwargs, as in jinja2). */
static int refers_to(const jnode *n, const char *name, int depth)
{
    if (n == NULL || depth > 200)
        return 0;
    if (n->kind == E_NAME && strcmp(n->str->s, name) == 0)
        return 1;
    if (refers_to(n->a, name, depth + 1) || refers_to(n->b, name, depth + 1) || refers_to(n->c, name, depth + 1))
        return 1;
    for (int i = 0; i < n->nv; i++)
        if (refers_to(n->v[i], name, depth + 1))
            return 1;
    for (int i = 0; i < n->nw; i++)
        if (refers_to(n->w[i], name, depth + 1))
            return 1;
    return 0;
}

static void mark_macro_uses(jnode *n)
{
    int uses = 0;
    for (int i = 0; i < n->nv; i++) {
        uses |= refers_to(n->v[i], "varargs", 0) ? 1 : 0;
        uses |= refers_to(n->v[i], "kwargs", 0) ? 2 : 0;
    }
    n->op = (uint8_t)uses;
}

static jnode *parse_macro(jparse *p, int line)
{
    jnode *n = node(p, N_MACRO, line);
    n->str = expect_name(p);
    parse_signature(p, n);
    int soft = p->soft, loops = p->loops;
    p->soft = 0;
    p->loops = 0;
    n->v = parse_statements(p, END_MACRO, 1, &n->nv);
    p->soft = soft;
    p->loops = loops;
    mark_macro_uses(n);
    return n;
}

static jnode *parse_call_block(jparse *p, int line)
{
    jnode *n = node(p, N_CALL_BLOCK, line);
    if (is_op(p, OP_LPAREN))
        parse_signature(p, n);
    jnode *call = parse_expression(p, 1);
    if (call->kind != E_CALL)
        jparse_fail(p, line, "expected call");
    n->a = call;
    int soft = p->soft, loops = p->loops;
    p->soft = 0;
    p->loops = 0;
    n->v = parse_statements(p, END_CALL, 1, &n->nv);
    p->soft = soft;
    p->loops = loops;
    mark_macro_uses(n);
    return n;
}

static jnode *parse_filter_block(jparse *p, int line)
{
    jnode *n = node(p, N_FILTER_BLOCK, line);
    int soft = p->soft;
    p->soft = 0;
    n->c = parse_filter(p, NULL, 1);
    n->v = parse_statements(p, END_FILTER, 1, &n->nv);
    p->soft = soft;
    return n;
}

static jnode *parse_with(jparse *p, int line)
{
    jnode *n = node(p, N_WITH, line);
    svec targets = {0};
    nvec values = {0};
    while (cur(p)->type != T_BLOCK_END) {
        if (targets.n)
            expect_op(p, OP_COMMA);
        svec_push(p, &targets, expect_name(p));
        expect_op(p, OP_ASSIGN);
        nvec_push(p, &values, parse_expression(p, 1));
    }
    n->names = targets.v;
    n->nnames = targets.n;
    n->w = values.v;
    n->nw = values.n;
    int soft = p->soft;
    p->soft = 0;
    n->v = parse_statements(p, END_WITH, 1, &n->nv);
    p->soft = soft;
    return n;
}

static void push_tag(jparse *p, const char *name)
{
    if (p->tag_stack_n < (int)(sizeof p->tag_stack / sizeof p->tag_stack[0]))
        p->tag_stack[p->tag_stack_n] = name;
    p->tag_stack_n++;
}

static void pop_tag(jparse *p) { p->tag_stack_n--; }

/* Parses one statement after "{%"; the statements that produce output
 * ({% print %}) may give several nodes, appended to out. */
static void parse_statement(jparse *p, nvec *out)
{
    jtok *t = cur(p);
    if (t->type != T_NAME)
        jparse_fail(p, t->line, "tag name expected");
    const char *name = t->str->s;
    int line = t->line;
    static const char *const unsupported[] = {"extends", "include", "import", "from", "autoescape", NULL};
    for (int i = 0; unsupported[i]; i++)
        if (strcmp(name, unsupported[i]) == 0)
            jparse_fail(p, line, "the '%s' tag is not supported by anvil", name);
    static const char *const known[] = {"for", "if", "set", "macro", "call", "filter", "with", "generation", "block", NULL};
    const char *tag = NULL;
    for (int i = 0; known[i]; i++)
        if (strcmp(name, known[i]) == 0)
            tag = known[i];
    enter(p);
    if (tag)
        push_tag(p, tag);
    advance(p);
    jnode *n = NULL;
    if (tag == NULL && strcmp(name, "print") == 0) {
        while (cur(p)->type != T_BLOCK_END) {
            if (n)
                expect_op(p, OP_COMMA);
            n = node(p, N_OUTPUT, line);
            n->a = parse_expression(p, 1);
            nvec_push(p, out, n);
        }
        leave(p);
        return;
    } else if (tag == NULL && (strcmp(name, "break") == 0 || strcmp(name, "continue") == 0)) {
        if (p->loops == 0)
            jparse_fail(p, line, "'%s' outside of a loop", name);
        n = node(p, name[0] == 'b' ? N_BREAK : N_CONTINUE, line);
    } else if (tag == NULL) {
        const char *looking = p->end_stack_n > 0 ? p->end_stack[p->end_stack_n - 1] : NULL;
        char msg[300];
        int k = snprintf(msg, sizeof msg, "Encountered unknown tag '%.60s'.", name);
        if (looking && k > 0 && (size_t)k < sizeof msg)
            k += snprintf(msg + k, sizeof msg - (size_t)k, " Jinja was looking for the following tags: %s.", looking);
        if (p->tag_stack_n > 0 && k > 0 && (size_t)k < sizeof msg)
            snprintf(msg + k, sizeof msg - (size_t)k, " The innermost block that needs to be closed is '%s'.",
                     p->tag_stack[p->tag_stack_n - 1]);
        jparse_fail(p, line, "%s", msg);
    } else if (tag == known[0]) {
        n = parse_for(p, line);
    } else if (tag == known[1]) {
        n = parse_if(p, line);
    } else if (tag == known[2]) {
        n = parse_set(p, line);
    } else if (tag == known[3]) {
        n = parse_macro(p, line);
    } else if (tag == known[4]) {
        n = parse_call_block(p, line);
    } else if (tag == known[5]) {
        n = parse_filter_block(p, line);
    } else if (tag == known[6]) {
        n = parse_with(p, line);
    } else if (tag == known[7]) {
        n = node(p, N_GENERATION, line);
        int soft = p->soft;
        p->soft = 0;
        n->v = parse_statements(p, END_GENERATION, 1, &n->nv);
        p->soft = soft;
    } else {
        /* without template inheritance a block renders where it stands */
        jstr *bname = expect_name(p);
        int scoped = skip_name(p, "scoped");
        skip_name(p, "required");
        n = node(p, N_GENERATION, line);
        n->op = scoped ? 2 : 1; /* a block; 0 is {% generation %} */
        int soft = p->soft, loops = p->loops;
        p->soft = 0;
        p->loops = 0;
        n->v = parse_statements(p, END_BLOCK, 1, &n->nv);
        p->soft = soft;
        p->loops = loops;
        if (cur(p)->type == T_NAME) {
            if (strcmp(cur(p)->str->s, bname->s) != 0)
                jparse_fail(p, cur(p)->line, "mismatching name of block: '%s' and '%s'", bname->s, cur(p)->str->s);
            advance(p);
        }
    }
    if (tag)
        pop_tag(p);
    leave(p);
    nvec_push(p, out, n);
}

static jnode **subparse(jparse *p, const char *const *end_tokens, int *n_out)
{
    nvec body = {0};
    char looking[200] = "";
    if (end_tokens) {
        for (int i = 0; end_tokens[i]; i++) {
            size_t k = strlen(looking);
            snprintf(looking + k, sizeof looking - k, "%s'%s'", i ? " or " : "", end_tokens[i]);
        }
        if (p->end_stack_n < (int)(sizeof p->end_stack / sizeof p->end_stack[0]))
            p->end_stack[p->end_stack_n] = jparse_str(p, looking, strlen(looking))->s;
        p->end_stack_n++;
    }
    for (;;) {
        jtok *t = cur(p);
        if (t->type == T_EOF)
            break;
        if (t->type == T_DATA) {
            jnode *n = node(p, N_TEXT, t->line);
            n->str = t->str;
            nvec_push(p, &body, n);
            advance(p);
        } else if (t->type == T_VAR_BEGIN) {
            advance(p);
            jnode *n = node(p, N_OUTPUT, t->line);
            n->a = parse_tuple(p, 0, 1, NULL, 0, 0);
            nvec_push(p, &body, n);
            expect_type(p, T_VAR_END);
        } else if (t->type == T_BLOCK_BEGIN) {
            advance(p);
            if (end_tokens) {
                int hit = 0;
                for (int i = 0; end_tokens[i]; i++)
                    hit |= is_name(p, end_tokens[i]);
                if (hit)
                    break;
            }
            parse_statement(p, &body);
            expect_type(p, T_BLOCK_END);
        } else {
            char b[64];
            jparse_fail(p, t->line, "unexpected '%s'", describe(t, b, sizeof b));
        }
    }
    if (end_tokens)
        p->end_stack_n--;
    *n_out = body.n;
    return body.v;
}

/* ------------------------------------------------------------------ entry */

void jinja_default_limits(jinja_limits *lim)
{
    lim->max_output = (size_t)64 << 20;
    lim->max_memory = (size_t)512 << 20;
    lim->max_steps = 20 * 1000 * 1000;
    lim->max_depth = 128;
}

anvil_status jinja_parse(const char *src, size_t len, jinja_template **out)
{
    *out = NULL;
    CHECK(src != NULL || len == 0, ANVIL_ERR_INVALID_ARG, "template source is NULL");
    CHECK(len <= JINJA_MAX_SOURCE, ANVIL_ERR_CAPACITY, "template is %zu bytes, more than the %zu accepted", len,
          JINJA_MAX_SOURCE);
    CHECK(u8_valid(src, len), ANVIL_ERR_FORMAT, "template is not valid UTF-8");
    jinja_template *t = calloc(1, sizeof *t);
    CHECK(t != NULL, ANVIL_ERR_OOM, "out of memory");
    jarena_init(&t->arena, ARENA_CAP);
    jparse *p = calloc(1, sizeof *p);
    if (p == NULL) {
        free(t);
        return ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    }
    p->arena = &t->arena;
    if (setjmp(p->jb) != 0) {
        anvil_status st = p->oom ? ANVIL_FAIL(ANVIL_ERR_OOM, "%s", p->err) : ANVIL_FAIL(ANVIL_ERR_FORMAT, "%s", p->err);
        jarena_free(&t->arena);
        free(t);
        free(p);
        return st;
    }
    jlex(p, src, len);
    int n = 0;
    jnode **body = subparse(p, NULL, &n);
    t->body = body;
    t->nbody = n;
    free(p);
    *out = t;
    return ANVIL_OK;
}

void jinja_template_free(jinja_template *t)
{
    if (t == NULL)
        return;
    jarena_free(&t->arena);
    free(t);
}
