/*
 * The parser, expressions: a recursive descent that mirrors jinja2's
 * parser.py function by function, so that precedence and the odd corners
 * (filters bind tighter than arithmetic, "not a is b" is "not (a is b)", a
 * test takes one bare argument, "a if b" without else) come out the same.
 */
#include <stdio.h>
#include <string.h>

#include "jinja/jinja_parse.h"

/* ------------------------------------------------------------------ expressions */

static jnode *parse_unary(jparse *p, int with_filter);
static jnode *parse_primary(jparse *p, int with_namespace);
static jnode *parse_postfix(jparse *p, jnode *n);

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
            nvec_push(p, &kwv, jparse_expression(p, 1));
        } else {
            if (kwn.n)
                jparse_fail(p, line, "invalid syntax for function call expression");
            nvec_push(p, &args, jparse_expression(p, 1));
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

jnode *jparse_filter(jparse *p, jnode *n, int start_inline)
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
            n = jparse_filter(p, n, 0);
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
        jnode *e = jparse_expression(p, 1);
        if (!is_op(p, OP_COLON))
            return e;
        advance(p);
        parts[0] = e;
    }
    if (!is_op(p, OP_COLON) && !is_op(p, OP_RBRACKET) && !is_op(p, OP_COMMA))
        parts[1] = jparse_expression(p, 1);
    if (is_op(p, OP_COLON)) {
        advance(p);
        if (!is_op(p, OP_RBRACKET) && !is_op(p, OP_COMMA))
            parts[2] = jparse_expression(p, 1);
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
        nvec_push(p, &items, jparse_expression(p, 1));
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
        nvec_push(p, &keys, jparse_expression(p, 1));
        expect_op(p, OP_COLON);
        nvec_push(p, &vals, jparse_expression(p, 1));
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
        n = jparse_tuple(p, 0, 1, NULL, 1, 0);
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

jnode *jparse_expression(jparse *p, int with_condexpr)
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

jnode *jparse_tuple(jparse *p, int simplified, int with_condexpr, const char *extra_end, int explicit_parens,
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
        nvec_push(p, &args,
                  simplified ? parse_primary(p, with_namespace) : jparse_expression(p, with_condexpr));
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
