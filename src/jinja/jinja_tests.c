/*
 * jinja2's tests (`x is defined`, `x is string`, `x is equalto y`, ...) with
 * the Python type rules behind them: a bool is a number, a string is
 * iterable and a sequence, an undefined value is iterable (and empty).
 */
#include <string.h>

#include "jinja/jinja_internal.h"

typedef int (*test_fn)(jctx *c, jv v, jargs *a, const char *name);

static jv one_arg(jctx *c, jargs *a, const char *name)
{
    jv x;
    if (!jargs_take(c, a, 0, NULL, &x))
        jfail(c, JE_TYPE, "test_%s() missing 1 required positional argument", name);
    jargs_done(c, a, name, 1);
    return x;
}

static int t_parity(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    jv r = jop_binary(c, OP_MOD, v, jv_int(2));
    return jv_eq(c, r, jv_int(name[0] == 'o' ? 1 : 0));
}

static int t_divisibleby(jctx *c, jv v, jargs *a, const char *name)
{
    jv n = one_arg(c, a, name);
    return jv_eq(c, jop_binary(c, OP_MOD, v, n), jv_int(0));
}

static int t_kind(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    jkind k = (jkind)v.k;
    if (!strcmp(name, "defined"))
        return k != JK_UNDEF;
    if (!strcmp(name, "undefined"))
        return k == JK_UNDEF;
    if (!strcmp(name, "none"))
        return k == JK_NONE;
    if (!strcmp(name, "boolean"))
        return k == JK_BOOL;
    if (!strcmp(name, "false"))
        return k == JK_BOOL && v.u.i == 0;
    if (!strcmp(name, "true"))
        return k == JK_BOOL && v.u.i == 1;
    if (!strcmp(name, "integer"))
        return k == JK_INT;
    if (!strcmp(name, "float"))
        return k == JK_FLOAT;
    if (!strcmp(name, "number"))
        return k == JK_INT || k == JK_FLOAT || k == JK_BOOL;
    if (!strcmp(name, "string"))
        return k == JK_STR;
    if (!strcmp(name, "mapping"))
        return k == JK_DICT;
    if (!strcmp(name, "sequence"))
        return k == JK_STR || k == JK_LIST || k == JK_TUPLE || k == JK_DICT || k == JK_UNDEF;
    if (!strcmp(name, "iterable"))
        return k == JK_STR || k == JK_LIST || k == JK_TUPLE || k == JK_DICT || k == JK_UNDEF ||
               k == JK_LOOP || k == JK_GEN;
    if (!strcmp(name, "callable"))
        return k == JK_MACRO || k == JK_FUNC || k == JK_METHOD || k == JK_UNDEF;
    return 0; /* escaped: nothing is markup here */
}

static int t_case(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    /* str(value).islower() / .isupper() */
    jv s = jv_strv(jv_to_jstr(c, v)), m;
    jstr *mname = jstr_new(c, name[0] == 'l' ? "islower" : "isupper", 7);
    if (!jmethod_lookup(c, s, mname, &m))
        return 0;
    jargs none = {0};
    return jv_truthy(jmethod_call(c, m.u.mt, &none));
}

static int t_sameas(jctx *c, jv v, jargs *a, const char *name)
{
    jv o = one_arg(c, a, name);
    if (v.k != o.k)
        return 0;
    switch ((jkind)v.k) {
    case JK_NONE:
    case JK_UNDEF:
        return v.k == JK_NONE;
    case JK_BOOL:
        return v.u.i == o.u.i;
    case JK_INT:
        return v.u.i == o.u.i && v.u.i >= -5 && v.u.i <= 256; /* CPython's cached ints */
    case JK_STR:
        return v.u.s == o.u.s;
    case JK_LIST:
    case JK_TUPLE:
        return v.u.l == o.u.l;
    case JK_DICT:
    case JK_NS:
        return v.u.d == o.u.d;
    default:
        return jv_eq(c, v, o);
    }
}

static int t_in(jctx *c, jv v, jargs *a, const char *name)
{
    jv seq = one_arg(c, a, name);
    return jop_contains(c, seq, v);
}

static int t_compare(jctx *c, jv v, jargs *a, const char *name)
{
    jv o = one_arg(c, a, name);
    int op = OP_EQ;
    if (!strcmp(name, "!=") || !strcmp(name, "ne"))
        op = OP_NE;
    else if (!strcmp(name, ">") || !strcmp(name, "gt") || !strcmp(name, "greaterthan"))
        op = OP_GT;
    else if (!strcmp(name, ">=") || !strcmp(name, "ge"))
        op = OP_GTEQ;
    else if (!strcmp(name, "<") || !strcmp(name, "lt") || !strcmp(name, "lessthan"))
        op = OP_LT;
    else if (!strcmp(name, "<=") || !strcmp(name, "le"))
        op = OP_LTEQ;
    return jv_cmp_op(c, op, v, o);
}

static int t_named(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    if (v.k != JK_STR)
        return 0;
    if (!strcmp(name, "filter"))
        return jfilter_find(v.u.s->s, v.u.s->len) >= 0;
    return jtest_find(v.u.s->s, v.u.s->len) >= 0;
}

static const struct {
    const char *name;
    test_fn fn;
} tests[] = {
    {"odd", t_parity},      {"even", t_parity},      {"divisibleby", t_divisibleby},
    {"defined", t_kind},    {"undefined", t_kind},   {"none", t_kind},
    {"boolean", t_kind},    {"false", t_kind},       {"true", t_kind},
    {"integer", t_kind},    {"float", t_kind},       {"number", t_kind},
    {"string", t_kind},     {"mapping", t_kind},     {"sequence", t_kind},
    {"iterable", t_kind},   {"callable", t_kind},    {"escaped", t_kind},
    {"lower", t_case},      {"upper", t_case},       {"sameas", t_sameas},
    {"in", t_in},           {"==", t_compare},       {"eq", t_compare},
    {"equalto", t_compare}, {"!=", t_compare},       {"ne", t_compare},
    {">", t_compare},       {"gt", t_compare},       {"greaterthan", t_compare},
    {">=", t_compare},      {"ge", t_compare},       {"<", t_compare},
    {"lt", t_compare},      {"lessthan", t_compare}, {"<=", t_compare},
    {"le", t_compare},      {"filter", t_named},     {"test", t_named},
};

int jtest_find(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
        if (strlen(tests[i].name) == len && memcmp(tests[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

int jtest_apply(jctx *c, int tid, jv v, jargs *a)
{
    jstep(c);
    return tests[tid].fn(c, v, a, tests[tid].name);
}
