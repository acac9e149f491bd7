/*
 * Python methods that templates call on values: str (strip, split, startswith,
 * replace, format, ...), dict (items, keys, values, get), list (index,
 * count) and the loop object (cycle, changed). Methods that mutate are not
 * here: the ImmutableSandbox refuses them (see jinja_ops.c).
 */
#include <string.h>
#include <utf8proc.h>

#include "jinja/jinja_internal.h"

typedef jv (*method_fn)(jctx *c, jv self, jargs *a, const char *name);

/* ------------------------------------------------------------------ argument helpers */

static jstr *opt_str(jctx *c, jargs *a, int idx, const char *name, const char *fname, int *given)
{
    jv v;
    *given = jargs_take(c, a, idx, name, &v);
    if (!*given || v.k == JK_NONE) {
        *given = 0;
        return NULL;
    }
    if (v.k != JK_STR) {
        jv_check_defined(c, v);
        jfail(c, JE_TYPE, "%s arg must be None or str", fname);
    }
    return v.u.s;
}

static jstr *req_str(jctx *c, jargs *a, int idx, const char *name, const char *fname)
{
    jv v;
    if (!jargs_take(c, a, idx, name, &v))
        jfail(c, JE_TYPE, "%s() missing required argument '%s' (pos %d)", fname, name ? name : "?", idx + 1);
    if (v.k != JK_STR) {
        jv_check_defined(c, v);
        jfail(c, JE_TYPE, "must be str, not %s", jv_type_name(v));
    }
    return v.u.s;
}

static int64_t opt_int(jctx *c, jargs *a, int idx, const char *name, int64_t dflt)
{
    jv v;
    if (!jargs_take(c, a, idx, name, &v) || v.k == JK_NONE)
        return dflt;
    if (v.k != JK_INT && v.k != JK_BOOL) {
        jv_check_defined(c, v);
        jfail(c, JE_TYPE, "'%s' object cannot be interpreted as an integer", jv_type_name(v));
    }
    return v.u.i;
}

static int64_t cp_index_of(const jstr *s, size_t byte_off)
{
    int64_t n = 0;
    for (size_t i = 0; i < byte_off; i++)
        n += ((unsigned char)s->s[i] & 0xc0) != 0x80;
    return n;
}

/* s[start:end] for the optional start / end arguments at idx, idx+1; *offset
 * gets the code point index where the piece starts. */
static jstr *window(jctx *c, jstr *s, jargs *a, int idx, int64_t *offset)
{
    jv vs = jv_none(), ve = jv_none();
    jargs_take(c, a, idx, NULL, &vs);
    jargs_take(c, a, idx + 1, NULL, &ve);
    *offset = 0;
    if (vs.k == JK_NONE && ve.k == JK_NONE)
        return s;
    int64_t n = jstr_ncp(s), st = 0;
    if (vs.k != JK_NONE) {
        if (vs.k != JK_INT && vs.k != JK_BOOL)
            jfail(c, JE_TYPE, "slice indices must be integers or None or have an __index__ method");
        st = vs.u.i < 0 ? (vs.u.i + n < 0 ? 0 : vs.u.i + n) : vs.u.i;
    }
    *offset = st;
    if (st > n)
        return NULL; /* Python: a start past the end never matches */
    return jop_slice(c, jv_strv(s), vs, ve, jv_none()).u.s;
}

/* ------------------------------------------------------------------ str */

static jv m_case(jctx *c, jv self, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    int mode = !strcmp(name, "upper")        ? 1
               : !strcmp(name, "title")      ? 2
               : !strcmp(name, "capitalize") ? 3
               : !strcmp(name, "swapcase")   ? 4
                                             : 0;
    return jv_strv(jpy_case(c, self.u.s, mode));
}

static jv m_strip(jctx *c, jv self, jargs *a, const char *name)
{
    int given;
    jstr *chars = opt_str(c, a, 0, NULL, name, &given);
    jargs_done(c, a, name, 1);
    int left = name[0] != 'r', right = name[0] != 'l';
    return jv_strv(jpy_strip(c, self.u.s, chars, left, right));
}

static jv m_split(jctx *c, jv self, jargs *a, const char *name)
{
    int given;
    jstr *sep = opt_str(c, a, 0, "sep", name, &given);
    int64_t maxsplit = opt_int(c, a, 1, "maxsplit", -1);
    jargs_done(c, a, name, 2);
    return jpy_split(c, self.u.s, sep, maxsplit, name[0] == 'r');
}

static jv m_splitlines(jctx *c, jv self, jargs *a, const char *name)
{
    jv keep = jv_bool(0);
    jargs_take(c, a, 0, "keepends", &keep);
    jargs_done(c, a, name, 1);
    return jpy_splitlines(c, self.u.s, jv_truthy(keep));
}

static int affix_match(const jstr *s, const jstr *x, int end)
{
    if (x->len > s->len)
        return 0;
    return memcmp(end ? s->s + s->len - x->len : s->s, x->s, x->len) == 0;
}

static jv m_startswith(jctx *c, jv self, jargs *a, const char *name)
{
    jv what;
    if (!jargs_take(c, a, 0, NULL, &what))
        jfail(c, JE_TYPE, "%s() takes at least 1 argument (0 given)", name);
    int64_t off;
    jstr *s = window(c, self.u.s, a, 1, &off);
    jargs_done(c, a, name, 3);
    int end = name[0] == 'e';
    if (what.k == JK_STR)
        return jv_bool(s && affix_match(s, what.u.s, end));
    if (what.k == JK_TUPLE) {
        for (size_t i = 0; i < what.u.l->n; i++) {
            jv x = what.u.l->v[i];
            if (x.k != JK_STR)
                jfail(c, JE_TYPE, "tuple for %s must only contain str, not %s", name, jv_type_name(x));
            if (s && affix_match(s, x.u.s, end))
                return jv_bool(1);
        }
        return jv_bool(0);
    }
    jv_check_defined(c, what);
    jfail(c, JE_TYPE, "%s first arg must be str or a tuple of str, not %s", name, jv_type_name(what));
}

static jv m_replace(jctx *c, jv self, jargs *a, const char *name)
{
    jstr *old = req_str(c, a, 0, NULL, name);
    jstr *new_ = req_str(c, a, 1, NULL, name);
    int64_t count = opt_int(c, a, 2, "count", -1);
    jargs_done(c, a, name, 3);
    return jv_strv(jpy_replace(c, self.u.s, old, new_, count));
}

/* find, rfind, index, rindex, count */
static jv m_find(jctx *c, jv self, jargs *a, const char *name)
{
    jstr *sub = req_str(c, a, 0, NULL, name);
    int64_t off;
    jstr *s = window(c, self.u.s, a, 1, &off);
    jargs_done(c, a, name, 3);
    int rev = name[0] == 'r';
    if (!strcmp(name, "count")) {
        if (s == NULL)
            return jv_int(0);
        if (sub->len == 0)
            return jv_int(jstr_ncp(s) + 1);
        int64_t n = 0;
        size_t i = 0;
        const char *hit;
        while ((hit = memmem(s->s + i, s->len - i, sub->s, sub->len)) != NULL) {
            n++;
            i = (size_t)(hit - s->s) + sub->len;
        }
        return jv_int(n);
    }
    int64_t pos = -1;
    if (s != NULL) {
        if (!rev) {
            const char *hit = memmem(s->s, s->len, sub->s, sub->len);
            if (hit)
                pos = cp_index_of(s, (size_t)(hit - s->s));
        } else if (sub->len <= s->len) {
            for (size_t k = s->len - sub->len + 1; k-- > 0;) {
                if (memcmp(s->s + k, sub->s, sub->len) == 0) {
                    pos = cp_index_of(s, k);
                    break;
                }
            }
        }
    }
    if (pos < 0) {
        if (strstr(name, "index"))
            jfail(c, JE_VALUE, "substring not found");
        return jv_int(-1);
    }
    return jv_int(pos + off);
}

static jv m_join(jctx *c, jv self, jargs *a, const char *name)
{
    jv it;
    if (!jargs_take(c, a, 0, NULL, &it))
        jfail(c, JE_TYPE, "join() takes exactly one argument (0 given)");
    jargs_done(c, a, name, 1);
    jlist *l = jv_iter_list(c, it);
    jbuf b = {0};
    for (size_t i = 0; i < l->n; i++) {
        if (l->v[i].k != JK_STR)
            jfail(c, JE_TYPE, "sequence item %zu: expected str instance, %s found", i, jv_type_name(l->v[i]));
        if (i)
            jbuf_put(c, &b, self.u.s->s, self.u.s->len);
        jbuf_put(c, &b, l->v[i].u.s->s, l->v[i].u.s->len);
    }
    return jv_strv(jbuf_str(c, &b));
}

static jv m_format(jctx *c, jv self, jargs *a, const char *name)
{
    (void)name;
    return jformat_str_method(c, self.u.s, a);
}

static int cp_class(uint32_t cp, const char *what)
{
    utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)cp);
    int alpha = cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT ||
                cat == UTF8PROC_CATEGORY_LM || cat == UTF8PROC_CATEGORY_LO;
    int decimal = cat == UTF8PROC_CATEGORY_ND;
    int numeric = decimal || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
    if (!strcmp(what, "isalpha"))
        return alpha;
    if (!strcmp(what, "isdecimal") || !strcmp(what, "isdigit"))
        return decimal;
    if (!strcmp(what, "isnumeric"))
        return numeric;
    if (!strcmp(what, "isalnum"))
        return alpha || numeric;
    if (!strcmp(what, "isspace"))
        return jpy_isspace(cp);
    return 0;
}

static jv m_is(jctx *c, jv self, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    const jstr *s = self.u.s;
    if (s->len == 0)
        return jv_bool(0);
    size_t i = 0;
    if (!strcmp(name, "islower") || !strcmp(name, "isupper") || !strcmp(name, "istitle")) {
        int cased = 0, prev_cased = 0;
        while (i < s->len) {
            uint32_t cp = ju8_next(s->s, s->len, &i);
            utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)cp);
            int up = cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LT,
                lo = cat == UTF8PROC_CATEGORY_LL;
            if (name[2] == 'l' && up)
                return jv_bool(0);
            if (name[2] == 'u' && lo)
                return jv_bool(0);
            if (name[2] == 't') {
                if ((up && prev_cased) || (lo && !prev_cased))
                    return jv_bool(0);
                prev_cased = up || lo;
            }
            cased |= up || lo;
        }
        return jv_bool(cased);
    }
    while (i < s->len)
        if (!cp_class(ju8_next(s->s, s->len, &i), name))
            return jv_bool(0);
    return jv_bool(1);
}

static jv m_pad(jctx *c, jv self, jargs *a, const char *name)
{
    int64_t width = opt_int(c, a, 0, NULL, 0);
    uint32_t fill = ' ';
    if (strcmp(name, "zfill") != 0) {
        int given;
        jstr *f = opt_str(c, a, 1, NULL, name, &given);
        if (f) {
            if (jstr_ncp(f) != 1)
                jfail(c, JE_TYPE, "The fill character must be exactly one character long");
            size_t k = 0;
            fill = ju8_next(f->s, f->len, &k);
        }
    }
    jargs_done(c, a, name, strcmp(name, "zfill") ? 2 : 1);
    jstr *s = self.u.s;
    int64_t n = jstr_ncp(s);
    if (width <= n)
        return self;
    if (width - n > (int64_t)c->lim.max_output)
        jfail(c, JE_LIMIT, "the template output exceeds %zu bytes", c->lim.max_output);
    int64_t marg = width - n, left;
    if (!strcmp(name, "ljust"))
        left = 0;
    else if (!strcmp(name, "rjust") || !strcmp(name, "zfill"))
        left = marg;
    else
        left = marg / 2 + (marg & width & 1);
    jbuf b = {0};
    size_t body = 0;
    if (!strcmp(name, "zfill")) {
        fill = '0';
        if (s->len && (s->s[0] == '+' || s->s[0] == '-')) {
            jbuf_putc(c, &b, s->s[0]);
            body = 1;
        }
    }
    for (int64_t k = 0; k < left; k++)
        jbuf_put_cp(c, &b, fill);
    jbuf_put(c, &b, s->s + body, s->len - body);
    for (int64_t k = 0; k < marg - left; k++)
        jbuf_put_cp(c, &b, fill);
    return jv_strv(jbuf_str(c, &b));
}

static jv m_partition(jctx *c, jv self, jargs *a, const char *name)
{
    jstr *sep = req_str(c, a, 0, NULL, name);
    jargs_done(c, a, name, 1);
    if (sep->len == 0)
        jfail(c, JE_VALUE, "empty separator");
    jstr *s = self.u.s;
    const char *hit = NULL;
    if (name[0] == 'r') {
        for (size_t k = s->len >= sep->len ? s->len - sep->len + 1 : 0; k-- > 0;)
            if (memcmp(s->s + k, sep->s, sep->len) == 0) {
                hit = s->s + k;
                break;
            }
    } else {
        hit = memmem(s->s, s->len, sep->s, sep->len);
    }
    jv t = jv_tuple(c, 3);
    t.u.l->n = 3;
    jv empty = jv_str(c, "", 0);
    if (hit == NULL) {
        t.u.l->v[0] = name[0] == 'r' ? empty : self;
        t.u.l->v[1] = empty;
        t.u.l->v[2] = name[0] == 'r' ? self : empty;
        return t;
    }
    size_t at = (size_t)(hit - s->s);
    t.u.l->v[0] = jv_str(c, s->s, at);
    t.u.l->v[1] = jv_strv(sep);
    t.u.l->v[2] = jv_str(c, s->s + at + sep->len, s->len - at - sep->len);
    return t;
}

static jv m_remove_affix(jctx *c, jv self, jargs *a, const char *name)
{
    jstr *x = req_str(c, a, 0, NULL, name);
    jargs_done(c, a, name, 1);
    int suffix = !strcmp(name, "removesuffix");
    if (x->len == 0 || !affix_match(self.u.s, x, suffix))
        return self;
    const jstr *s = self.u.s;
    return jv_str(c, suffix ? s->s : s->s + x->len, s->len - x->len);
}

/* ------------------------------------------------------------------ dict, list, loop */

static jv m_items(jctx *c, jv self, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    const jdict *d = self.u.d;
    jv r = jv_list(c, d->n);
    for (size_t i = 0; i < d->n; i++) {
        jv v;
        if (!strcmp(name, "keys")) {
            v = d->k[i];
        } else if (!strcmp(name, "values")) {
            v = d->v[i];
        } else {
            v = jv_tuple(c, 2);
            v.u.l->v[0] = d->k[i];
            v.u.l->v[1] = d->v[i];
            v.u.l->n = 2;
        }
        r.u.l->v[i] = v;
    }
    r.u.l->n = d->n;
    return r;
}

static jv m_get(jctx *c, jv self, jargs *a, const char *name)
{
    jv key, dflt = jv_none(), v;
    if (!jargs_take(c, a, 0, NULL, &key))
        jfail(c, JE_TYPE, "get expected at least 1 argument, got 0");
    jargs_take(c, a, 1, NULL, &dflt);
    jargs_done(c, a, name, 2);
    return jdict_get(c, self.u.d, key, &v) ? v : dflt;
}

static jv m_copy(jctx *c, jv self, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    if (self.k == JK_DICT) {
        jv r = jv_dict(c);
        for (size_t i = 0; i < self.u.d->n; i++)
            jdict_set(c, r.u.d, self.u.d->k[i], self.u.d->v[i]);
        return r;
    }
    jv r = jv_list(c, self.u.l->n);
    if (self.u.l->n)
        memcpy(r.u.l->v, self.u.l->v, self.u.l->n * sizeof(jv));
    r.u.l->n = self.u.l->n;
    return r;
}

static jv m_seq_index(jctx *c, jv self, jargs *a, const char *name)
{
    jv x;
    if (!jargs_take(c, a, 0, NULL, &x))
        jfail(c, JE_TYPE, "%s() takes exactly one argument (0 given)", name);
    jargs_done(c, a, name, 1);
    const jlist *l = self.u.l;
    int64_t n = 0;
    for (size_t i = 0; i < l->n; i++) {
        if (jv_eq(c, l->v[i], x)) {
            if (name[0] == 'i')
                return jv_int((int64_t)i);
            n++;
        }
    }
    if (name[0] == 'i')
        jfail(c, JE_VALUE, "%s.index(x): x not in %s", jv_type_name(self), jv_type_name(self));
    return jv_int(n);
}

static jv m_cycle(jctx *c, jv self, jargs *a, const char *name)
{
    jargs_done(c, a, name, a->npos);
    if (a->npos == 0)
        jfail(c, JE_TYPE, "no items for cycling given");
    return a->pos[self.u.loop->index0 % a->npos];
}

static jv m_changed(jctx *c, jv self, jargs *a, const char *name)
{
    jargs_done(c, a, name, a->npos);
    jloop *lp = self.u.loop;
    jv t = jv_tuple(c, (size_t)a->npos);
    for (int i = 0; i < a->npos; i++)
        t.u.l->v[i] = a->pos[i];
    t.u.l->n = (size_t)a->npos;
    if (lp->has_changed && jv_eq(c, lp->last_changed, t))
        return jv_bool(0);
    lp->last_changed = t;
    lp->has_changed = 1;
    return jv_bool(1);
}

/* ------------------------------------------------------------------ tables */

enum { ON_STR = 1, ON_DICT = 2, ON_SEQ = 4, ON_LOOP = 8 };

static const struct {
    uint8_t on;
    const char *name;
    method_fn fn;
} methods[] = {
    {ON_STR, "upper", m_case},
    {ON_STR, "lower", m_case},
    {ON_STR, "title", m_case},
    {ON_STR, "capitalize", m_case},
    {ON_STR, "swapcase", m_case},
    {ON_STR, "casefold", m_case},
    {ON_STR, "strip", m_strip},
    {ON_STR, "lstrip", m_strip},
    {ON_STR, "rstrip", m_strip},
    {ON_STR, "split", m_split},
    {ON_STR, "rsplit", m_split},
    {ON_STR, "splitlines", m_splitlines},
    {ON_STR, "startswith", m_startswith},
    {ON_STR, "endswith", m_startswith},
    {ON_STR, "replace", m_replace},
    {ON_STR, "find", m_find},
    {ON_STR, "rfind", m_find},
    {ON_STR, "index", m_find},
    {ON_STR, "rindex", m_find},
    {ON_STR, "count", m_find},
    {ON_STR, "join", m_join},
    {ON_STR, "format", m_format},
    {ON_STR, "isalpha", m_is},
    {ON_STR, "isdigit", m_is},
    {ON_STR, "isdecimal", m_is},
    {ON_STR, "isnumeric", m_is},
    {ON_STR, "isalnum", m_is},
    {ON_STR, "isspace", m_is},
    {ON_STR, "islower", m_is},
    {ON_STR, "isupper", m_is},
    {ON_STR, "istitle", m_is},
    {ON_STR, "center", m_pad},
    {ON_STR, "ljust", m_pad},
    {ON_STR, "rjust", m_pad},
    {ON_STR, "zfill", m_pad},
    {ON_STR, "partition", m_partition},
    {ON_STR, "rpartition", m_partition},
    {ON_STR, "removeprefix", m_remove_affix},
    {ON_STR, "removesuffix", m_remove_affix},
    {ON_DICT, "items", m_items},
    {ON_DICT, "keys", m_items},
    {ON_DICT, "values", m_items},
    {ON_DICT, "get", m_get},
    {ON_DICT | ON_SEQ, "copy", m_copy},
    {ON_SEQ, "index", m_seq_index},
    {ON_SEQ, "count", m_seq_index},
    {ON_LOOP, "cycle", m_cycle},
    {ON_LOOP, "changed", m_changed},
};

int jmethod_lookup(jctx *c, jv obj, const jstr *name, jv *out)
{
    int on = obj.k == JK_STR                           ? ON_STR
             : obj.k == JK_DICT                        ? ON_DICT
             : (obj.k == JK_LIST || obj.k == JK_TUPLE) ? ON_SEQ
             : obj.k == JK_LOOP                        ? ON_LOOP
                                                       : 0;
    if (on == 0)
        return 0;
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        if (!(methods[i].on & on) || strcmp(methods[i].name, name->s) != 0)
            continue;
        if (on == ON_SEQ && obj.k == JK_TUPLE && !strcmp(name->s, "copy"))
            continue; /* tuples have no copy() */
        jmethod *m = jalloc(c, sizeof *m);
        m->self = obj;
        m->id = (int)i;
        out->k = JK_METHOD;
        out->u.mt = m;
        return 1;
    }
    return 0;
}

jv jmethod_call(jctx *c, const jmethod *m, jargs *args)
{
    return methods[m->id].fn(c, m->self, args, methods[m->id].name);
}
