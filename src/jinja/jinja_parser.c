/*
 * The parser, statements and the entry point: tokens -> AST, following
 * jinja2's parser.py (expressions are in jinja_parse_expr.c).
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
#include "jinja/jinja_parse.h"

#define ARENA_CAP ((size_t)1 << 30)

void jparse_fail(jparse *p, int line, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(p->err, sizeof p->err, "%s: %s (line %d)",
             p->assertion ? "TemplateAssertionError" : "TemplateSyntaxError", msg, line);
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
    jnode *t = jparse_tuple(p, 1, 1, extra_end, 0, with_namespace);
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
        jparse_fail(
            p, cur(p)->line,
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
            nvec_push(p, &defaults, jparse_expression(p, 1));
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
    n->b = jparse_tuple(p, 0, 0, "recursive", 0, 0);
    int soft = p->soft;
    p->soft = 0;
    if (skip_name(p, "if"))
        n->c = jparse_expression(p, 1);
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
        n->a = jparse_tuple(p, 0, 0, NULL, 0, 0);
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
        n->b = jparse_tuple(p, 0, 1, NULL, 0, 0);
        return n;
    }
    jnode *n = node(p, N_SET_BLOCK, line);
    n->a = target;
    int soft = p->soft;
    p->soft = 0;
    if (is_op(p, OP_PIPE))
        n->c = jparse_filter(p, NULL, 0);
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
    if (refers_to(n->a, name, depth + 1) || refers_to(n->b, name, depth + 1) ||
        refers_to(n->c, name, depth + 1))
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
    jnode *call = jparse_expression(p, 1);
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
    n->c = jparse_filter(p, NULL, 1);
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
        nvec_push(p, &values, jparse_expression(p, 1));
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

static void pop_tag(jparse *p)
{
    p->tag_stack_n--;
}

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
    static const char *const known[] = {"for",    "if",   "set",        "macro", "call",
                                        "filter", "with", "generation", "block", NULL};
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
            n->a = jparse_expression(p, 1);
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
            k += snprintf(msg + k, sizeof msg - (size_t)k, " Jinja was looking for the following tags: %s.",
                          looking);
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
                jparse_fail(p, cur(p)->line, "mismatching name of block: '%s' and '%s'", bname->s,
                            cur(p)->str->s);
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
            n->a = jparse_tuple(p, 0, 1, NULL, 0, 0);
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
    CHECK(len <= JINJA_MAX_SOURCE, ANVIL_ERR_CAPACITY, "template is %zu bytes, more than the %zu accepted",
          len, JINJA_MAX_SOURCE);
    CHECK(ju8_valid(src, len), ANVIL_ERR_FORMAT, "template is not valid UTF-8");
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
        anvil_status st =
            p->oom ? ANVIL_FAIL(ANVIL_ERR_OOM, "%s", p->err) : ANVIL_FAIL(ANVIL_ERR_FORMAT, "%s", p->err);
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
