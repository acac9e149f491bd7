/*
 * The evaluator: runs the AST of a template against variables.
 *
 * Scopes follow what jinja2's compiler produces: an if shares the scope it is
 * in; each iteration of a for loop starts a fresh scope over the enclosing
 * one (so a {% set %} in the body is gone at the next iteration and after the
 * loop); macros, call blocks, {% with %}, {% set %}...{% endset %} and
 * {% filter %} bodies have their own. Names resolve through the scope chain,
 * then the caller's variables, then the globals (range, namespace, ...).
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "jinja/jinja_internal.h"

enum { X_OK, X_BREAK, X_CONTINUE };

#define MAX_EVAL_DEPTH 1000

static jscope *scope_new(jctx *c, jscope *parent)
{
    jscope *s = jalloc(c, sizeof *s);
    s->parent = parent;
    return s;
}

static void scope_set(jctx *c, jscope *s, jstr *name, jv v)
{
    jdict_set(c, &s->vars, jv_strv(name), v);
}

static int scope_lookup(jctx *c, jscope *s, const jstr *name, jv *out)
{
    for (; s; s = s->parent)
        if (jdict_get_str(&s->vars, name->s, name->len, out))
            return 1;
    if (jdict_get_str(c->context, name->s, name->len, out))
        return 1;
    return jglobal_lookup(name->s, name->len, out);
}

/* ------------------------------------------------------------------ calls */

int jargs_take(jctx *c, jargs *a, int idx, const char *name, jv *out)
{
    int found = 0;
    if (idx >= 0 && idx < a->npos) {
        *out = a->pos[idx];
        found = 1;
    }
    if (name) {
        for (int i = 0; i < a->nkw; i++) {
            if (strcmp(a->kwn[i]->s, name) != 0)
                continue;
            if (found)
                jfail(c, JE_TYPE, "got multiple values for argument '%s'", name);
            *out = a->kwv[i];
            a->used[i] = 1;
            found = 1;
        }
    }
    return found;
}

void jargs_done(jctx *c, jargs *a, const char *fname, int max_pos)
{
    if (a->npos > max_pos)
        jfail(c, JE_TYPE, "%s() takes at most %d positional argument%s (%d given)", fname, max_pos,
              max_pos == 1 ? "" : "s", a->npos);
    for (int i = 0; i < a->nkw; i++)
        if (!a->used[i])
            jfail(c, JE_TYPE, "%s() got an unexpected keyword argument '%s'", fname, a->kwn[i]->s);
}

static void eval_args(jctx *c, jscope *s, const jnode *n, jargs *a)
{
    memset(a, 0, sizeof *a);
    a->npos = n->nv;
    a->nkw = n->nw;
    if (n->nv) {
        a->pos = jalloc(c, (size_t)n->nv * sizeof(jv));
        for (int i = 0; i < n->nv; i++)
            a->pos[i] = jeval(c, s, n->v[i]);
    }
    if (n->nw) {
        a->kwv = jalloc(c, (size_t)n->nw * sizeof(jv));
        a->kwn = n->names;
        a->used = jalloc(c, (size_t)n->nw);
        for (int i = 0; i < n->nw; i++)
            a->kwv[i] = jeval(c, s, n->w[i]);
    }
}

static int exec_body(jctx *c, jscope *s, jnode *const *body, int n);

/* Runs body with output going to a fresh buffer; returns what it wrote. */
static jstr *capture(jctx *c, jscope *s, jnode *const *body, int n, int *code)
{
    jbuf buf = {0};
    jbuf *saved = c->out;
    c->out = &buf;
    int r = exec_body(c, s, body, n);
    c->out = saved;
    if (code)
        *code = r;
    return jbuf_str(c, &buf);
}

static jv call_macro(jctx *c, const jmacro *m, jargs *a, jv caller)
{
    const jnode *n = m->node;
    const char *name = n->kind == N_MACRO ? n->str->s : "caller";
    jstep(c);
    if (++c->depth > c->lim.max_depth)
        jfail(c, JE_LIMIT, "macro calls nested more than %d deep", c->lim.max_depth);
    jscope *s = scope_new(c, m->closure);
    int nparams = n->nnames, first_default = n->nnames - n->nw;
    for (int i = 0; i < nparams; i++) {
        jv v;
        if (!jargs_take(c, a, i, n->names[i]->s, &v)) {
            if (i >= first_default)
                v = jeval(c, s, n->w[i - first_default]);
            else
                v = jv_undef(c, "parameter '%s' was not provided", n->names[i]->s);
        }
        scope_set(c, s, n->names[i], v);
    }
    int uses = n->op; /* 1 varargs, 2 kwargs, 4 caller */
    if (a->npos > nparams) {
        if (!(uses & 1))
            jfail(c, JE_TYPE, "macro '%s' takes not more than %d argument(s)", name, nparams);
    }
    if (uses & 1) {
        int extra = a->npos > nparams ? a->npos - nparams : 0;
        jv t = jv_tuple(c, (size_t)extra);
        for (int i = 0; i < extra; i++)
            t.u.l->v[i] = a->pos[nparams + i];
        t.u.l->n = (size_t)extra;
        scope_set(c, s, jstr_new(c, "varargs", 7), t);
    }
    jv kw = jv_dict(c);
    for (int i = 0; i < a->nkw; i++) {
        if (a->used[i])
            continue;
        if (!(uses & 2))
            jfail(c, JE_TYPE, "macro '%s' takes no keyword argument '%s'", name, a->kwn[i]->s);
        jdict_set(c, kw.u.d, jv_strv(a->kwn[i]), a->kwv[i]);
    }
    if (uses & 2)
        scope_set(c, s, jstr_new(c, "kwargs", 6), kw);
    if (caller.k != JK_UNDEF)
        scope_set(c, s, jstr_new(c, "caller", 6), caller);
    jstr *out = capture(c, s, n->v, n->nv, NULL);
    c->depth--;
    return jv_strv(out);
}

jv jcall_value(jctx *c, jscope *s, jv callee, jargs *args)
{
    (void)s;
    switch ((jkind)callee.k) {
    case JK_MACRO:
        return call_macro(c, callee.u.m, args, jv_undef_plain());
    case JK_FUNC:
        return jglobal_call(c, callee.u.fn, args);
    case JK_METHOD:
        return jmethod_call(c, callee.u.mt, args);
    case JK_UNDEF:
        jv_check_defined(c, callee);
        break;
    default:
        break;
    }
    jfail(c, JE_TYPE, "'%s' object is not callable", jv_type_name(callee));
}

/* ------------------------------------------------------------------ expressions */

/* Applies filter node f. In a chain from a filter block or set block the
 * innermost filter has no input expression: it filters `input`. */
static jv run_filter(jctx *c, jscope *s, const jnode *f, jv input, int chain)
{
    jv v;
    if (f->a == NULL) {
        v = input;
    } else if (chain) {
        /* a long filter chain on a block recurses here, not through jeval */
        if (++c->eval_depth > MAX_EVAL_DEPTH)
            jfail(c, JE_LIMIT, "expression nested more than %d deep", MAX_EVAL_DEPTH);
        v = run_filter(c, s, f->a, input, 1);
        c->eval_depth--;
    } else {
        v = jeval(c, s, f->a);
    }
    jargs a;
    eval_args(c, s, f, &a);
    if (f->fid < 0)
        jfail(c, JE_RUNTIME, "No filter named '%s' found.", f->str->s);
    jstep(c);
    return jfilter_apply(c, f->fid, v, &a);
}

static jv eval_compare(jctx *c, jscope *s, const jnode *n)
{
    jv left = jeval(c, s, n->a);
    for (int i = 0; i < n->nv; i++) {
        jv right = jeval(c, s, n->v[i]);
        if (!jv_cmp_op(c, n->ops[i], left, right))
            return jv_bool(0);
        left = right;
    }
    return jv_bool(1);
}

static void check_hashable(jctx *c, jv k)
{
    if (k.k == JK_LIST || k.k == JK_DICT || k.k == JK_NS)
        jfail(c, JE_TYPE, "unhashable type: '%s'", jv_type_name(k));
    if (k.k == JK_TUPLE) {
        if (++c->vdepth > 1000)
            jfail(c, JE_RECURSION, "maximum recursion depth exceeded while hashing");
        for (size_t i = 0; i < k.u.l->n; i++)
            check_hashable(c, k.u.l->v[i]);
        c->vdepth--;
    }
}

static jv eval_inner(jctx *c, jscope *s, const jnode *n)
{
    switch ((jnode_kind)n->kind) {
    case E_CONST:
        return n->cst;
    case E_NAME: {
        jv v;
        if (scope_lookup(c, s, n->str, &v))
            return v;
        return jv_undef(c, "'%s' is undefined", n->str->s);
    }
    case E_GETATTR: {
        jv obj = jeval(c, s, n->a);
        return jop_getattr(c, obj, n->str);
    }
    case E_GETITEM: {
        jv obj = jeval(c, s, n->a);
        if (n->b->kind == E_SLICE) {
            const jnode *sl = n->b;
            jv start = sl->a ? jeval(c, s, sl->a) : jv_none();
            jv stop = sl->b ? jeval(c, s, sl->b) : jv_none();
            jv step = sl->c ? jeval(c, s, sl->c) : jv_none();
            return jop_slice(c, obj, start, stop, step);
        }
        return jop_getitem(c, obj, jeval(c, s, n->b));
    }
    case E_CALL: {
        jv callee = jeval(c, s, n->a);
        jargs a;
        eval_args(c, s, n, &a);
        jstep(c);
        return jcall_value(c, s, callee, &a);
    }
    case E_FILTER:
        return run_filter(c, s, n, jv_undef_plain(), 0);
    case E_TEST: {
        jv v = jeval(c, s, n->a);
        jargs a;
        eval_args(c, s, n, &a);
        if (n->fid < 0)
            jfail(c, JE_RUNTIME, "No test named '%s' found.", n->str->s);
        return jv_bool(jtest_apply(c, n->fid, v, &a));
    }
    case E_BIN: {
        jv a = jeval(c, s, n->a);
        jv b = jeval(c, s, n->b);
        return jop_binary(c, n->op, a, b);
    }
    case E_NEG:
        return jop_neg(c, jeval(c, s, n->a));
    case E_POS:
        return jop_pos(c, jeval(c, s, n->a));
    case E_NOT:
        return jv_bool(!jv_truthy(jeval(c, s, n->a)));
    case E_AND: {
        jv a = jeval(c, s, n->a);
        return jv_truthy(a) ? jeval(c, s, n->b) : a;
    }
    case E_OR: {
        jv a = jeval(c, s, n->a);
        return jv_truthy(a) ? a : jeval(c, s, n->b);
    }
    case E_COMPARE:
        return eval_compare(c, s, n);
    case E_CONCAT: {
        jbuf b = {0};
        for (int i = 0; i < n->nv; i++)
            jv_str_into(c, &b, jeval(c, s, n->v[i]));
        return jv_strv(jbuf_str(c, &b));
    }
    case E_COND: {
        if (jv_truthy(jeval(c, s, n->a)))
            return jeval(c, s, n->b);
        if (n->c)
            return jeval(c, s, n->c);
        return jv_undef(
            c, "the inline if-expression on line %d evaluated to false and no else section was defined.",
            n->line);
    }
    case E_LIST:
    case E_TUPLE: {
        jv l = n->kind == E_LIST ? jv_list(c, (size_t)n->nv) : jv_tuple(c, (size_t)n->nv);
        for (int i = 0; i < n->nv; i++)
            l.u.l->v[i] = jeval(c, s, n->v[i]);
        l.u.l->n = (size_t)n->nv;
        return l;
    }
    case E_DICT: {
        jv d = jv_dict(c);
        for (int i = 0; i < n->nv; i++) {
            jv k = jeval(c, s, n->v[i]);
            check_hashable(c, k);
            jdict_set(c, d.u.d, k, jeval(c, s, n->w[i]));
        }
        return d;
    }
    case E_NSREF:
    case E_SLICE:
        break;
    default:
        break;
    }
    jfail(c, JE_RUNTIME, "internal error: node %d is not an expression", n->kind);
}

jv jeval(jctx *c, jscope *s, const jnode *n)
{
    if (++c->eval_depth > MAX_EVAL_DEPTH)
        jfail(c, JE_LIMIT, "expression nested more than %d deep", MAX_EVAL_DEPTH);
    jv v = eval_inner(c, s, n);
    c->eval_depth--;
    return v;
}

/* ------------------------------------------------------------------ statements */

static void assign(jctx *c, jscope *s, const jnode *target, jv v)
{
    if (target->kind == E_NAME) {
        scope_set(c, s, target->str, v);
    } else if (target->kind == E_NSREF) {
        jv ns;
        if (!scope_lookup(c, s, target->str, &ns) || ns.k != JK_NS)
            jfail(c, JE_RUNTIME, "cannot assign attribute on non-namespace object");
        jdict_set(c, ns.u.d, jv_strv(target->str2), v);
    } else {
        jlist *items = jv_iter_list(c, v);
        if ((int64_t)items->n < target->nv)
            jfail(c, JE_VALUE, "not enough values to unpack (expected %d, got %zu)", target->nv, items->n);
        if ((int64_t)items->n > target->nv)
            jfail(c, JE_VALUE, "too many values to unpack (expected %d)", target->nv);
        for (int i = 0; i < target->nv; i++)
            assign(c, s, target->v[i], items->v[i]);
    }
}

static jstr *loop_name(jctx *c)
{
    static const char name[] = "loop";
    return jstr_new(c, name, 4);
}

static int exec_for(jctx *c, jscope *s, const jnode *n)
{
    jv seq = jeval(c, s, n->b);
    jlist *items = jv_iter_list(c, seq);
    if (n->c) {
        jv kept = jv_list(c, 0);
        for (size_t i = 0; i < items->n; i++) {
            jstep(c);
            jscope *ts = scope_new(c, s);
            assign(c, ts, n->a, items->v[i]);
            if (jv_truthy(jeval(c, ts, n->c)))
                jlist_push(c, kept.u.l, items->v[i]);
        }
        items = kept.u.l;
    }
    if (++c->depth > c->lim.max_depth)
        jfail(c, JE_LIMIT, "loops and macro calls nested more than %d deep", c->lim.max_depth);
    jloop *lp = jalloc(c, sizeof *lp);
    lp->length = (int64_t)items->n;
    lp->items = items;
    lp->depth0 = 0; /* depth counts recursive loops only, which anvil does not support */
    jv loopv = {.k = JK_LOOP};
    loopv.u.loop = lp;
    jstr *lname = loop_name(c);
    int indicator = 1;
    for (size_t i = 0; i < items->n; i++) {
        jstep(c);
        lp->index0 = (int64_t)i;
        jscope *it = scope_new(c, s);
        assign(c, it, n->a, items->v[i]);
        scope_set(c, it, lname, loopv);
        int r = exec_body(c, it, n->v, n->nv);
        if (r == X_BREAK)
            break;
        if (r == X_CONTINUE)
            continue;
        indicator = 0;
    }
    c->depth--;
    /* jinja2 runs the else block unless an iteration ran to its end */
    if (n->nw && indicator)
        return exec_body(c, scope_new(c, s), n->w, n->nw);
    return X_OK;
}

static int exec_inner(jctx *c, jscope *s, const jnode *n)
{
    jstep(c);
    switch ((jnode_kind)n->kind) {
    case N_TEXT:
        jbuf_put(c, c->out, n->str->s, n->str->len);
        return X_OK;
    case N_OUTPUT:
        jv_str_into(c, c->out, jeval(c, s, n->a));
        return X_OK;
    case N_IF:
        if (jv_truthy(jeval(c, s, n->a)))
            return exec_body(c, s, n->v, n->nv);
        return exec_body(c, s, n->w, n->nw);
    case N_FOR:
        return exec_for(c, s, n);
    case N_SET:
        assign(c, s, n->a, jeval(c, s, n->b));
        return X_OK;
    case N_SET_BLOCK: {
        int code;
        jstr *text = capture(c, scope_new(c, s), n->v, n->nv, &code);
        jv v = jv_strv(text);
        if (n->c)
            v = run_filter(c, s, n->c, v, 1);
        assign(c, s, n->a, v);
        return code;
    }
    case N_MACRO: {
        jmacro *m = jalloc(c, sizeof *m);
        m->node = n;
        m->closure = s;
        jv v = {.k = JK_MACRO};
        v.u.m = m;
        scope_set(c, s, n->str, v);
        return X_OK;
    }
    case N_CALL_BLOCK: {
        jmacro *m = jalloc(c, sizeof *m);
        m->node = n;
        m->closure = s;
        jv caller = {.k = JK_MACRO};
        caller.u.m = m;
        jv callee = jeval(c, s, n->a->a);
        jargs a;
        eval_args(c, s, n->a, &a);
        jv r;
        if (callee.k == JK_MACRO)
            r = call_macro(c, callee.u.m, &a, caller);
        else
            r = jcall_value(c, s, callee, &a);
        jv_str_into(c, c->out, r);
        return X_OK;
    }
    case N_FILTER_BLOCK: {
        int code;
        jstr *text = capture(c, scope_new(c, s), n->v, n->nv, &code);
        jv_str_into(c, c->out, run_filter(c, s, n->c, jv_strv(text), 1));
        return code;
    }
    case N_WITH: {
        jscope *ws = scope_new(c, s);
        for (int i = 0; i < n->nw; i++)
            scope_set(c, ws, n->names[i], jeval(c, s, n->w[i]));
        return exec_body(c, ws, n->v, n->nv);
    }
    case N_GENERATION:
        /* a block that is not scoped sees the top level, not the loop around it */
        return exec_body(c, scope_new(c, n->op == 1 ? c->root : s), n->v, n->nv);
    case N_BREAK:
        return X_BREAK;
    case N_CONTINUE:
        return X_CONTINUE;
    default:
        break;
    }
    jfail(c, JE_RUNTIME, "internal error: node %d is not a statement", n->kind);
}

/* Statements nest (and macros recurse through them): the same depth budget
 * as expressions keeps the C stack bounded. */
static int exec(jctx *c, jscope *s, const jnode *n)
{
    if (++c->eval_depth > MAX_EVAL_DEPTH)
        jfail(c, JE_LIMIT, "statements nested more than %d deep", MAX_EVAL_DEPTH);
    int r = exec_inner(c, s, n);
    c->eval_depth--;
    return r;
}

static int exec_body(jctx *c, jscope *s, jnode *const *body, int n)
{
    for (int i = 0; i < n; i++) {
        int r = exec(c, s, body[i]);
        if (r != X_OK)
            return r;
    }
    return X_OK;
}

/* ------------------------------------------------------------------ entry */

static anvil_status status_of(int kind)
{
    switch (kind) {
    case JE_LIMIT:
    case JE_RECURSION:
        return ANVIL_ERR_CAPACITY;
    case JE_UNSUPPORTED:
        return ANVIL_ERR_UNSUPPORTED;
    default:
        return ANVIL_ERR_INVALID_ARG;
    }
}

static anvil_status render(jctx *c, const jinja_template *t, const json_t *vars, char **out, size_t *out_len)
{
    if (setjmp(c->jb) != 0)
        return ANVIL_FAIL(status_of(c->err_kind), "%s", c->err);
    jv ctxv = jjson_to_value(c, vars);
    if (ctxv.k != JK_DICT)
        jfail(c, JE_TYPE, "template variables must be a JSON object");
    c->context = ctxv.u.d;
    jbuf buf = {0};
    c->out = &buf;
    c->root = scope_new(c, NULL);
    exec_body(c, c->root, t->body, t->nbody);
    char *text = malloc(buf.n + 1);
    if (text == NULL)
        return ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    if (buf.n)
        memcpy(text, buf.p, buf.n);
    text[buf.n] = '\0';
    *out = text;
    if (out_len)
        *out_len = buf.n;
    return ANVIL_OK;
}

anvil_status jinja_render(const jinja_template *t, const json_t *vars, const jinja_limits *lim, char **out,
                          size_t *out_len)
{
    *out = NULL;
    if (out_len)
        *out_len = 0;
    CHECK(t != NULL && vars != NULL, ANVIL_ERR_INVALID_ARG, "template and variables are required");
    jctx *c = calloc(1, sizeof *c);
    CHECK(c != NULL, ANVIL_ERR_OOM, "out of memory");
    if (lim)
        c->lim = *lim;
    else
        jinja_default_limits(&c->lim);
    jarena_init(&c->arena, c->lim.max_memory);
    anvil_status st = render(c, t, vars, out, out_len);
    jarena_free(&c->arena);
    free(c);
    return st;
}
