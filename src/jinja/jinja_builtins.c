/*
 * The global functions a template can call: jinja2's range, dict and
 * namespace, and the two transformers adds, raise_exception (fails the render
 * with the template's message) and strftime_now (the local time, formatted).
 * range is capped at 100000 items as in jinja2's sandbox.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "jinja/jinja_internal.h"

enum { F_RANGE, F_DICT, F_NAMESPACE, F_RAISE, F_STRFTIME, F_COUNT };

static const char *const names[F_COUNT] = {"range", "dict", "namespace", "raise_exception", "strftime_now"};

#define MAX_RANGE 100000

const char *jglobal_name(int fn)
{
    return fn >= 0 && fn < F_COUNT ? names[fn] : "?";
}

int jglobal_lookup(const char *name, size_t len, jv *out)
{
    for (int i = 0; i < F_COUNT; i++) {
        if (strlen(names[i]) == len && memcmp(names[i], name, len) == 0) {
            out->k = JK_FUNC;
            out->sub = 0;
            out->u.fn = i;
            return 1;
        }
    }
    return 0;
}

static int64_t int_arg(jctx *c, jv v)
{
    if (v.k == JK_INT || v.k == JK_BOOL)
        return v.u.i;
    jv_check_defined(c, v);
    jfail(c, JE_TYPE, "'%s' object cannot be interpreted as an integer", jv_type_name(v));
}

static jv do_range(jctx *c, jargs *a)
{
    jargs_done(c, a, "range", 3);
    if (a->npos == 0)
        jfail(c, JE_TYPE, "range expected at least 1 argument, got 0");
    int64_t start = 0, stop, step = 1;
    if (a->npos == 1) {
        stop = int_arg(c, a->pos[0]);
    } else {
        start = int_arg(c, a->pos[0]);
        stop = int_arg(c, a->pos[1]);
        if (a->npos == 3)
            step = int_arg(c, a->pos[2]);
    }
    if (step == 0)
        jfail(c, JE_VALUE, "range() arg 3 must not be zero");
    /* the count without overflow */
    int64_t n = 0;
    if (step > 0 && start < stop)
        n = (int64_t)(((unsigned long long)stop - (unsigned long long)start - 1ULL) /
                          (unsigned long long)step +
                      1ULL);
    else if (step < 0 && start > stop)
        n = (int64_t)(((unsigned long long)start - (unsigned long long)stop - 1ULL) /
                          (unsigned long long)(-(step + 1) + 1ULL) +
                      1ULL);
    if (n > MAX_RANGE || n < 0)
        jfail(c, JE_OVERFLOW, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (%d).",
              MAX_RANGE);
    jv r = jv_list(c, (size_t)n);
    for (int64_t k = 0; k < n; k++)
        r.u.l->v[k] = jv_int(start + k * step);
    r.u.l->n = (size_t)n;
    return r;
}

static jv do_dict(jctx *c, jargs *a, int ns)
{
    jv d = jv_dict(c);
    if (a->npos > 1)
        jfail(c, JE_TYPE, "%s expected at most 1 argument, got %d", ns ? "namespace" : "dict", a->npos);
    if (a->npos == 1) {
        jv src = a->pos[0];
        if (src.k == JK_DICT || src.k == JK_NS) {
            for (size_t i = 0; i < src.u.d->n; i++)
                jdict_set(c, d.u.d, src.u.d->k[i], src.u.d->v[i]);
        } else {
            jlist *pairs = jv_iter_list(c, src);
            for (size_t i = 0; i < pairs->n; i++) {
                jlist *kv = jv_iter_list(c, pairs->v[i]);
                if (kv->n != 2)
                    jfail(c, JE_VALUE,
                          "dictionary update sequence element #%zu has length %zu; 2 is required", i, kv->n);
                jdict_set(c, d.u.d, kv->v[0], kv->v[1]);
            }
        }
    }
    for (int i = 0; i < a->nkw; i++)
        jdict_set(c, d.u.d, jv_strv(a->kwn[i]), a->kwv[i]);
    if (ns)
        d.k = JK_NS;
    return d;
}

static jv do_strftime(jctx *c, jargs *a)
{
    jv fmt;
    if (!jargs_take(c, a, 0, "format", &fmt))
        jfail(c, JE_TYPE, "strftime_now() missing 1 required positional argument: 'format'");
    jargs_done(c, a, "strftime_now", 1);
    if (fmt.k != JK_STR)
        jfail(c, JE_TYPE, "strftime() argument 1 must be str, not %s", jv_type_name(fmt));
    if (fmt.u.s->len > 256)
        jfail(c, JE_LIMIT, "strftime format longer than 256 bytes");
    time_t now = time(NULL);
    struct tm tm;
    if (localtime_r(&now, &tm) == NULL)
        jfail(c, JE_VALUE, "cannot read the local time");
    char out[2048];
    /* strftime returns 0 both for an empty result and for overflow */
    size_t n = fmt.u.s->len ? strftime(out, sizeof out, fmt.u.s->s, &tm) : 0;
    return jv_str(c, out, n);
}

jv jglobal_call(jctx *c, int fn, jargs *a)
{
    switch (fn) {
    case F_RANGE:
        return do_range(c, a);
    case F_DICT:
        return do_dict(c, a, 0);
    case F_NAMESPACE:
        return do_dict(c, a, 1);
    case F_RAISE: {
        jv msg = a->npos > 0 ? a->pos[0] : jv_undef_plain();
        jbuf b = {0};
        jv_str_into(c, &b, msg);
        jfail(c, JE_TEMPLATE, "%s", b.p ? b.p : "");
    }
    case F_STRFTIME:
        return do_strftime(c, a);
    }
    jfail(c, JE_RUNTIME, "unknown function");
}
