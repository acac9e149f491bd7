/*
 * jinja2's filters over sequences and mappings: sort, unique, map, select,
 * reject, groupby, join, sum, min, max, dictsort, batch, reverse, first,
 * last, list, items. The lazy ones (map, select, unique, batch, items,
 * reverse) give one-shot generators as jinja2 does (see jv_gen).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja/jinja_internal.h"

static int arg(jctx *c, jargs *a, int idx, const char *name, jv *out)
{
    return jargs_take(c, a, idx, name, out);
}

static jstr *soft_str(jctx *c, jv v)
{
    return jv_to_jstr(c, v);
}

static int64_t int_arg(jctx *c, jv v, const char *what)
{
    if (v.k == JK_INT || v.k == JK_BOOL)
        return v.u.i;
    jv_check_defined(c, v);
    jfail(c, JE_TYPE, "%s must be an integer, not %s", what, jv_type_name(v));
}

/* ------------------------------------------------------------------ attribute paths */

typedef struct attrpath {
    jv parts[16];
    int n;
} attrpath;

/* "a.b.0" -> ["a", "b", 0]: digits become integers, as make_attrgetter does */
static void parse_path(jctx *c, jv attribute, attrpath *p)
{
    p->n = 0;
    if (attribute.k != JK_STR) {
        p->parts[p->n++] = attribute;
        return;
    }
    const jstr *s = attribute.u.s;
    size_t start = 0;
    for (size_t i = 0; i <= s->len; i++) {
        if (i < s->len && s->s[i] != '.')
            continue;
        if (p->n == 16)
            jfail(c, JE_UNSUPPORTED, "attribute path with more than 16 parts");
        int digits = i > start;
        int64_t v = 0;
        for (size_t k = start; k < i; k++) {
            if (s->s[k] < '0' || s->s[k] > '9' || v > 100000000000LL)
                digits = 0;
            else
                v = v * 10 + (s->s[k] - '0');
        }
        p->parts[p->n++] = digits ? jv_int(v) : jv_str(c, s->s + start, i - start);
        start = i + 1;
    }
}

static jv path_get(jctx *c, jv item, const attrpath *p, const jv *dflt)
{
    for (int i = 0; i < p->n; i++) {
        item = jop_getitem(c, item, p->parts[i]);
        if (dflt && item.k == JK_UNDEF)
            item = *dflt;
    }
    return item;
}

static jv lower_if_str(jctx *c, jv v)
{
    if (v.k == JK_STR)
        return jv_strv(jpy_case(c, v.u.s, 0));
    return v;
}

/* The sort key of one item: attribute(s) and case folding as jinja2's
 * make_multi_attrgetter / make_attrgetter give it. */
typedef struct keyspec {
    attrpath paths[8];
    int npaths; /* 0: the item itself */
    int multi;  /* comma separated attributes: the key is a list */
    int fold;
} keyspec;

static void keyspec_init(jctx *c, keyspec *k, jv attribute, int multi, int fold)
{
    memset(k, 0, sizeof *k);
    k->fold = fold;
    k->multi = multi;
    if (attribute.k == JK_NONE || attribute.k == JK_UNDEF)
        return;
    if (multi && attribute.k == JK_STR) {
        jv parts = jpy_split(c, attribute.u.s, jstr_new(c, ",", 1), -1, 0);
        for (size_t i = 0; i < parts.u.l->n; i++) {
            if (k->npaths == 8)
                jfail(c, JE_UNSUPPORTED, "more than 8 sort attributes");
            parse_path(c, parts.u.l->v[i], &k->paths[k->npaths++]);
        }
    } else {
        parse_path(c, attribute, &k->paths[0]);
        k->npaths = 1;
        k->multi = 0;
    }
}

static jv key_of(jctx *c, const keyspec *k, jv item)
{
    if (k->npaths == 0)
        return k->fold ? lower_if_str(c, item) : item;
    if (!k->multi) {
        jv v = path_get(c, item, &k->paths[0], NULL);
        return k->fold ? lower_if_str(c, v) : v;
    }
    jv l = jv_list(c, (size_t)k->npaths);
    for (int i = 0; i < k->npaths; i++) {
        jv v = path_get(c, item, &k->paths[i], NULL);
        l.u.l->v[i] = k->fold ? lower_if_str(c, v) : v;
    }
    l.u.l->n = (size_t)k->npaths;
    return l;
}

/* Stable merge sort by keys (Python's sorted: only < is used; reverse keeps
 * equal items in their order). */
static void msort(jctx *c, jv *keys, jv *items, jv *tk, jv *ti, size_t n, int reverse)
{
    if (n < 2)
        return;
    size_t h = n / 2;
    msort(c, keys, items, tk, ti, h, reverse);
    msort(c, keys + h, items + h, tk, ti, n - h, reverse);
    size_t i = 0, j = h, o = 0;
    while (i < h && j < n) {
        jstep(c);
        int take_right = reverse ? jv_lt(c, keys[i], keys[j]) : jv_lt(c, keys[j], keys[i]);
        if (take_right) {
            tk[o] = keys[j];
            ti[o++] = items[j++];
        } else {
            tk[o] = keys[i];
            ti[o++] = items[i++];
        }
    }
    while (i < h) {
        tk[o] = keys[i];
        ti[o++] = items[i++];
    }
    while (j < n) {
        tk[o] = keys[j];
        ti[o++] = items[j++];
    }
    memcpy(keys, tk, n * sizeof(jv));
    memcpy(items, ti, n * sizeof(jv));
}

static jv sorted_list(jctx *c, const jlist *l, const keyspec *k, int reverse)
{
    size_t n = l->n;
    jv r = jv_list(c, n);
    jv *keys = jalloc(c, (n + 1) * sizeof(jv)), *tk = jalloc(c, (n + 1) * sizeof(jv)),
       *ti = jalloc(c, (n + 1) * sizeof(jv));
    for (size_t i = 0; i < n; i++) {
        r.u.l->v[i] = l->v[i];
        keys[i] = key_of(c, k, l->v[i]);
    }
    r.u.l->n = n;
    msort(c, keys, r.u.l->v, tk, ti, n, reverse);
    return r;
}

/* The input of a lazy filter (map, select, unique, batch): its items, or NULL
 * when it cannot be iterated; then *failing is the generator jinja2 would
 * return, which fails only when consumed. */
static jlist *lazy_input(jctx *c, jv v, jv *failing)
{
    switch ((jkind)v.k) {
    case JK_UNDEF:
    case JK_STR:
    case JK_LIST:
    case JK_TUPLE:
    case JK_DICT:
        return jv_iter_list(c, v);
    case JK_GEN:
        if (v.u.l->err) {
            /* still lazy: fails when what we return is consumed */
            *failing = jv_gen_failing(c, v.u.l->err_kind, v.u.l->err->s);
            return NULL;
        }
        return jv_iter_list(c, v);
    default: {
        char msg[96];
        snprintf(msg, sizeof msg, "'%s' object is not iterable", jv_type_name(v));
        *failing = jv_gen_failing(c, JE_TYPE, msg);
        return NULL;
    }
    }
}

jv jf_dictsort(jctx *c, jv v, jargs *a, const char *name)
{
    jv cs = jv_bool(0), by = jv_none(), rev = jv_bool(0);
    arg(c, a, 0, "case_sensitive", &cs);
    arg(c, a, 1, "by", &by);
    arg(c, a, 2, "reverse", &rev);
    jargs_done(c, a, name, 3);
    if (v.k != JK_DICT) {
        jv_check_defined(c, v);
        jfail(c, JE_ATTRIBUTE, "'%s' object has no attribute 'items'", jv_type_name(v));
    }
    int pos = 0;
    if (by.k == JK_STR && !strcmp(by.u.s->s, "value"))
        pos = 1;
    else if (by.k != JK_NONE && !(by.k == JK_STR && !strcmp(by.u.s->s, "key")))
        jfail(c, JE_FILTER_ARG, "You can only sort by either \"key\" or \"value\"");
    const jdict *d = v.u.d;
    jv items = jv_list(c, d->n);
    for (size_t i = 0; i < d->n; i++) {
        jv t = jv_tuple(c, 2);
        t.u.l->v[0] = d->k[i];
        t.u.l->v[1] = d->v[i];
        t.u.l->n = 2;
        items.u.l->v[i] = t;
    }
    items.u.l->n = d->n;
    keyspec k;
    keyspec_init(c, &k, jv_int(pos), 0, !jv_truthy(cs));
    return sorted_list(c, items.u.l, &k, jv_truthy(rev));
}

jv jf_first_last(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    if (v.k == JK_GEN) {
        /* next(iter(gen)) takes one item; reversed(gen) is an error */
        jv_gen_check(c, v);
        if (name[0] == 'l')
            jfail(c, JE_TYPE, "'generator' object is not reversible");
        if (v.u.l->pos < v.u.l->n)
            return v.u.l->v[v.u.l->pos++];
        return jv_undef(c, "No first item, sequence was empty.");
    }
    jlist *l = jv_iter_list(c, v);
    if (l->n == 0)
        return jv_undef(c, "No %s item, sequence was empty.", name);
    return name[0] == 'f' ? l->v[0] : l->v[l->n - 1];
}

jv jf_groupby(jctx *c, jv v, jargs *a, const char *name)
{
    jv attribute, dflt = jv_none(), cs = jv_bool(0);
    if (!arg(c, a, 0, "attribute", &attribute))
        jfail(c, JE_TYPE, "groupby() missing required argument 'attribute'");
    int has_default = arg(c, a, 1, "default", &dflt);
    arg(c, a, 2, "case_sensitive", &cs);
    jargs_done(c, a, name, 3);
    attrpath p;
    parse_path(c, attribute, &p);
    jlist *l = jv_iter_list(c, v);
    /* sort by the (folded) key, then group runs of equal keys */
    jv keyed = jv_list(c, l->n), keys = jv_list(c, l->n);
    for (size_t i = 0; i < l->n; i++) {
        jv k = path_get(c, l->v[i], &p, has_default ? &dflt : NULL);
        keys.u.l->v[i] = jv_truthy(cs) ? k : lower_if_str(c, k);
        keyed.u.l->v[i] = l->v[i];
    }
    keys.u.l->n = keyed.u.l->n = l->n;
    jv *tk = jalloc(c, (l->n + 1) * sizeof(jv)), *ti = jalloc(c, (l->n + 1) * sizeof(jv));
    msort(c, keys.u.l->v, keyed.u.l->v, tk, ti, l->n, 0);
    jv out = jv_list(c, 0);
    size_t i = 0;
    while (i < l->n) {
        size_t j = i;
        jv group = jv_list(c, 0);
        while (j < l->n && jv_eq(c, keys.u.l->v[j], keys.u.l->v[i]))
            jlist_push(c, group.u.l, keyed.u.l->v[j++]);
        jv grouper =
            jv_truthy(cs) ? keys.u.l->v[i] : path_get(c, keyed.u.l->v[i], &p, has_default ? &dflt : NULL);
        jv t = jv_tuple(c, 2);
        t.u.l->v[0] = grouper;
        t.u.l->v[1] = group;
        t.u.l->n = 2;
        jlist_push(c, out.u.l, t);
        i = j;
    }
    return out;
}

jv jf_items(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    if (v.k == JK_UNDEF)
        return jv_gen(jv_list(c, 0).u.l);
    if (v.k != JK_DICT)
        return jv_gen_failing(c, JE_TYPE, "Can only get item pairs from a mapping.");
    jv m;
    jmethod_lookup(c, v, jstr_new(c, "items", 5), &m);
    jargs none = {0};
    return jv_gen(jmethod_call(c, m.u.mt, &none).u.l);
}

jv jf_join(jctx *c, jv v, jargs *a, const char *name)
{
    jv d = jv_str(c, "", 0), attribute = jv_none();
    arg(c, a, 0, "d", &d);
    arg(c, a, 1, "attribute", &attribute);
    jargs_done(c, a, name, 2);
    jlist *l = jv_iter_list(c, v);
    attrpath p;
    if (attribute.k != JK_NONE)
        parse_path(c, attribute, &p);
    jstr *sep = soft_str(c, d);
    jbuf b = {0};
    for (size_t i = 0; i < l->n; i++) {
        jstep(c);
        if (i)
            jbuf_put(c, &b, sep->s, sep->len);
        jv item = attribute.k != JK_NONE ? path_get(c, l->v[i], &p, NULL) : l->v[i];
        jv_str_into(c, &b, item);
    }
    return b.p ? jv_strv(jbuf_str(c, &b)) : jv_str(c, "", 0);
}

jv jf_list(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    jlist *l = jv_iter_list(c, v);
    jv r = jv_list(c, l->n);
    if (l->n)
        memcpy(r.u.l->v, l->v, l->n * sizeof(jv));
    r.u.l->n = l->n;
    return r;
}

static jv call_named_filter(jctx *c, jv fname, jv item, jargs *rest)
{
    if (fname.k != JK_STR)
        jfail(c, JE_FILTER_ARG, "map requires a filter argument");
    int fid = jfilter_find(fname.u.s->s, fname.u.s->len);
    if (fid < 0)
        jfail(c, JE_RUNTIME, "No filter named '%s'.", fname.u.s->s);
    jargs copy = *rest;
    if (copy.nkw) {
        copy.used = jalloc(c, (size_t)copy.nkw);
    }
    return jfilter_apply(c, fid, item, &copy);
}

jv jf_map(jctx *c, jv v, jargs *a, const char *name)
{
    (void)name;
    jv failing;
    if (!jv_truthy(v) && v.k != JK_GEN)
        return jv_gen(jv_list(c, 0).u.l); /* jinja2: `if value:` before iterating */
    jlist *l = lazy_input(c, v, &failing);
    if (l == NULL)
        return failing;
    jv out = jv_list(c, l->n);
    jv attribute, dflt;
    if (a->npos == 0 && jargs_take(c, a, -1, "attribute", &attribute)) {
        int has_default = jargs_take(c, a, -1, "default", &dflt);
        for (int i = 0; i < a->nkw; i++)
            if (!a->used[i])
                jfail(c, JE_RUNTIME, "Unexpected keyword argument '%s'", a->kwn[i]->s);
        attrpath p;
        parse_path(c, attribute, &p);
        for (size_t i = 0; i < l->n; i++) {
            jstep(c);
            out.u.l->v[i] = path_get(c, l->v[i], &p, has_default && dflt.k != JK_NONE ? &dflt : NULL);
        }
        out.u.l->n = l->n;
        return jv_gen(out.u.l);
    }
    if (a->npos == 0)
        jfail(c, JE_FILTER_ARG, "map requires a filter argument");
    jargs rest = *a;
    rest.pos++;
    rest.npos--;
    for (size_t i = 0; i < l->n; i++) {
        jstep(c);
        out.u.l->v[i] = call_named_filter(c, a->pos[0], l->v[i], &rest);
    }
    out.u.l->n = l->n;
    return jv_gen(out.u.l);
}

/* select, reject, selectattr, rejectattr */
jv jf_select(jctx *c, jv v, jargs *a, const char *name)
{
    int reject = name[0] == 'r';
    int by_attr = strstr(name, "attr") != NULL;
    jv failing;
    if (!jv_truthy(v) && v.k != JK_GEN)
        return jv_gen(jv_list(c, 0).u.l); /* jinja2: `if value:` before iterating */
    jlist *l = lazy_input(c, v, &failing);
    if (l == NULL)
        return failing;
    jv out = jv_list(c, 0);
    int off = 0;
    attrpath p;
    if (by_attr) {
        if (a->npos < 1)
            jfail(c, JE_FILTER_ARG, "Missing parameter for attribute name");
        parse_path(c, a->pos[0], &p);
        off = 1;
    }
    int tid = -1;
    if (a->npos > off) {
        jv tname = a->pos[off];
        if (tname.k != JK_STR || (tid = jtest_find(tname.u.s->s, tname.u.s->len)) < 0)
            jfail(c, JE_RUNTIME, "No test named '%s'.", tname.k == JK_STR ? tname.u.s->s : "?");
    }
    jargs rest = *a;
    rest.npos = a->npos > off + 1 ? a->npos - off - 1 : 0;
    rest.pos = rest.npos ? a->pos + off + 1 : NULL;
    for (size_t i = 0; i < l->n; i++) {
        jv item = by_attr ? path_get(c, l->v[i], &p, NULL) : l->v[i];
        int ok;
        if (tid >= 0) {
            jargs copy = rest;
            if (copy.nkw)
                copy.used = jalloc(c, (size_t)copy.nkw);
            ok = jtest_apply(c, tid, item, &copy);
        } else {
            jstep(c);
            ok = jv_truthy(item);
        }
        if (ok != reject)
            jlist_push(c, out.u.l, l->v[i]);
    }
    return jv_gen(out.u.l);
}

jv jf_minmax(jctx *c, jv v, jargs *a, const char *name)
{
    jv cs = jv_bool(0), attribute = jv_none();
    arg(c, a, 0, "case_sensitive", &cs);
    arg(c, a, 1, "attribute", &attribute);
    jargs_done(c, a, name, 2);
    jlist *l = jv_iter_list(c, v);
    if (l->n == 0)
        return jv_undef(c, "No aggregated item, sequence was empty.");
    keyspec k;
    keyspec_init(c, &k, attribute, 0, !jv_truthy(cs));
    int is_max = name[1] == 'a';
    size_t best = 0;
    jv bk = key_of(c, &k, l->v[0]);
    for (size_t i = 1; i < l->n; i++) {
        jstep(c);
        jv ki = key_of(c, &k, l->v[i]);
        if (is_max ? jv_lt(c, bk, ki) : jv_lt(c, ki, bk)) {
            best = i;
            bk = ki;
        }
    }
    return l->v[best];
}

jv jf_batch(jctx *c, jv v, jargs *a, const char *name)
{
    jv count, fill = jv_none();
    if (!arg(c, a, 0, "linecount", &count))
        jfail(c, JE_TYPE, "do_batch() missing 1 required positional argument: 'linecount'");
    arg(c, a, 1, "fill_with", &fill);
    jargs_done(c, a, name, 2);
    int64_t n = int_arg(c, count, "linecount");
    jv failing;
    jlist *l = lazy_input(c, v, &failing);
    if (l == NULL)
        return failing;
    jv out = jv_list(c, 0), cur = jv_list(c, 0);
    for (size_t i = 0; i < l->n; i++) {
        jstep(c);
        if ((int64_t)cur.u.l->n == n) {
            jlist_push(c, out.u.l, cur);
            cur = jv_list(c, 0);
        }
        jlist_push(c, cur.u.l, l->v[i]);
    }
    if (cur.u.l->n) {
        while (fill.k != JK_NONE && (int64_t)cur.u.l->n < n)
            jlist_push(c, cur.u.l, fill);
        jlist_push(c, out.u.l, cur);
    }
    return jv_gen(out.u.l);
}

jv jf_reverse(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    if (v.k == JK_STR)
        return jop_slice(c, v, jv_none(), jv_none(), jv_int(-1));
    /* reversed(seq) is an iterator; a generator cannot be reversed, so jinja2
     * falls back to a reversed list of it */
    int was_gen = v.k == JK_GEN;
    if (v.k != JK_LIST && v.k != JK_TUPLE && v.k != JK_DICT && v.k != JK_UNDEF && !was_gen)
        jfail(c, JE_FILTER_ARG, "argument must be iterable");
    jlist *l = jv_iter_list(c, v);
    jv r = jv_list(c, l->n);
    for (size_t i = 0; i < l->n; i++)
        r.u.l->v[i] = l->v[l->n - 1 - i];
    r.u.l->n = l->n;
    if (was_gen)
        return r;
    r.u.l->gen_type = v.k == JK_DICT    ? "dict_reversekeyiterator"
                      : v.k == JK_TUPLE ? "reversed"
                                        : "list_reverseiterator";
    return jv_gen(r.u.l);
}

jv jf_sort(jctx *c, jv v, jargs *a, const char *name)
{
    jv rev = jv_bool(0), cs = jv_bool(0), attribute = jv_none();
    arg(c, a, 0, "reverse", &rev);
    arg(c, a, 1, "case_sensitive", &cs);
    arg(c, a, 2, "attribute", &attribute);
    jargs_done(c, a, name, 3);
    keyspec k;
    keyspec_init(c, &k, attribute, 1, !jv_truthy(cs));
    return sorted_list(c, jv_iter_list(c, v), &k, jv_truthy(rev));
}

jv jf_sum(jctx *c, jv v, jargs *a, const char *name)
{
    jv attribute = jv_none(), start = jv_int(0);
    arg(c, a, 0, "attribute", &attribute);
    arg(c, a, 1, "start", &start);
    jargs_done(c, a, name, 2);
    jlist *l = jv_iter_list(c, v);
    attrpath p;
    if (attribute.k != JK_NONE)
        parse_path(c, attribute, &p);
    if (start.k == JK_STR)
        jfail(c, JE_TYPE, "sum() can't sum strings [use ''.join(seq) instead]");
    jv acc = start;
    for (size_t i = 0; i < l->n; i++) {
        jstep(c);
        acc = jop_binary(c, OP_ADD, acc, attribute.k != JK_NONE ? path_get(c, l->v[i], &p, NULL) : l->v[i]);
    }
    return acc;
}

jv jf_unique(jctx *c, jv v, jargs *a, const char *name)
{
    jv cs = jv_bool(0), attribute = jv_none();
    arg(c, a, 0, "case_sensitive", &cs);
    arg(c, a, 1, "attribute", &attribute);
    jargs_done(c, a, name, 2);
    jv failing;
    jlist *l = lazy_input(c, v, &failing);
    if (l == NULL)
        return failing;
    keyspec k;
    keyspec_init(c, &k, attribute, 0, !jv_truthy(cs));
    jv out = jv_list(c, 0), seen = jv_list(c, 0);
    for (size_t i = 0; i < l->n; i++) {
        jv key = key_of(c, &k, l->v[i]);
        if (key.k == JK_LIST || key.k == JK_DICT || key.k == JK_NS)
            jfail(c, JE_TYPE, "unhashable type: '%s'", jv_type_name(key));
        int dup = 0;
        for (size_t j = 0; j < seen.u.l->n && !dup; j++) {
            jstep(c);
            dup = jv_eq(c, seen.u.l->v[j], key);
        }
        if (!dup) {
            jlist_push(c, seen.u.l, key);
            jlist_push(c, out.u.l, l->v[i]);
        }
    }
    return jv_gen(out.u.l);
}
