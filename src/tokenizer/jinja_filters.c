/*
 * jinja2's filters, each with jinja2's signature (positional or keyword
 * arguments) and Python semantics. Where jinja2 returns a generator (map,
 * select, reverse, unique, ...) a list is returned: the same when iterated or
 * piped through |list, which is what templates do.
 *
 * The filters that jinja2 has and anvil does not implement are still known
 * (so that a template using them parses as in jinja2) and fail when run.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/jinja_internal.h"

typedef jv (*filter_fn)(jctx *c, jv v, jargs *a, const char *name);

static int arg(jctx *c, jargs *a, int idx, const char *name, jv *out) { return jargs_take(c, a, idx, name, out); }

static jstr *soft_str(jctx *c, jv v) { return jv_to_jstr(c, v); }

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
        return jv_strv(py_case(c, v.u.s, 0));
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
        jv parts = py_split(c, attribute.u.s, jstr_new(c, ",", 1), -1, 0);
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

/* ------------------------------------------------------------------ filters */

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
    case JK_DICT: return jv_iter_list(c, v);
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


static jv f_abs(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    if (v.k == JK_FLOAT)
        return jv_float(fabs(v.u.f));
    if (v.k == JK_INT || v.k == JK_BOOL) {
        if (v.u.i == INT64_MIN)
            jfail(c, JE_OVERFLOW, "integer result does not fit in 64 bits");
        return jv_int(v.u.i < 0 ? -v.u.i : v.u.i);
    }
    jfail(c, JE_TYPE, "bad operand type for abs(): '%s'", jv_type_name(v));
}

static jv f_attr(jctx *c, jv v, jargs *a, const char *name)
{
    jv n;
    if (!arg(c, a, 0, "name", &n))
        jfail(c, JE_TYPE, "attr() missing required argument 'name'");
    jargs_done(c, a, name, 1);
    if (n.k != JK_STR)
        jfail(c, JE_TYPE, "attribute name must be a string");
    if (v.k == JK_DICT) {
        /* attributes of a dict are its methods only, never its items */
        jv m;
        if (jmethod_lookup(c, v, n.u.s, &m))
            return m;
        return jv_undef_attr(c, v, n.u.s);
    }
    return jop_getattr(c, v, n.u.s);
}

static jv f_case(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    jstr *s = soft_str(c, v);
    if (!strcmp(name, "lower"))
        return jv_strv(py_case(c, s, 0));
    if (!strcmp(name, "upper"))
        return jv_strv(py_case(c, s, 1));
    if (!strcmp(name, "capitalize"))
        return jv_strv(py_case(c, s, 3));
    /* title: jinja2 splits at [-\s({\[<]+ and makes each piece
     * piece[0].upper() + piece[1:].lower() */
    jbuf b = {0};
    size_t i = 0;
    while (i < s->len) {
        size_t start = i, k = i;
        uint32_t cp = u8_next(s->s, s->len, &k);
        int delim = py_isspace(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
        if (delim) {
            jbuf_put(c, &b, s->s + start, k - start);
            i = k;
            continue;
        }
        size_t end = k;
        while (end < s->len) {
            size_t e2 = end;
            uint32_t c2 = u8_next(s->s, s->len, &e2);
            if (py_isspace(c2) || c2 == '-' || c2 == '(' || c2 == '{' || c2 == '[' || c2 == '<')
                break;
            end = e2;
        }
        jstr *head = py_case(c, jstr_new(c, s->s + start, k - start), 1);
        jstr *rest = py_case(c, jstr_new(c, s->s + k, end - k), 0);
        jbuf_put(c, &b, head->s, head->len);
        jbuf_put(c, &b, rest->s, rest->len);
        i = end;
    }
    return b.p ? jv_strv(jbuf_str(c, &b)) : jv_str(c, "", 0);
}

static jv f_center(jctx *c, jv v, jargs *a, const char *name)
{
    jv w = jv_int(80), m;
    arg(c, a, 0, "width", &w);
    jargs_done(c, a, name, 1);
    jv s = jv_strv(soft_str(c, v));
    jmethod_lookup(c, s, jstr_new(c, "center", 6), &m);
    jargs ca = {0};
    ca.pos = &w;
    ca.npos = 1;
    return jmethod_call(c, m.u.mt, &ca);
}

static jv f_length(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    return jv_int(jv_len(c, v));
}

static jv f_default(jctx *c, jv v, jargs *a, const char *name)
{
    jv dflt = jv_str(c, "", 0), boolean = jv_bool(0);
    arg(c, a, 0, "default_value", &dflt);
    arg(c, a, 1, "boolean", &boolean);
    jargs_done(c, a, name, 2);
    if (v.k == JK_UNDEF || (jv_truthy(boolean) && !jv_truthy(v)))
        return dflt;
    return v;
}

static jv f_dictsort(jctx *c, jv v, jargs *a, const char *name)
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

static jv f_escape(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    jstr *s = soft_str(c, v);
    jbuf b = {0};
    for (size_t i = 0; i < s->len; i++) {
        switch (s->s[i]) {
        case '&': jbuf_puts(c, &b, "&amp;"); break;
        case '<': jbuf_puts(c, &b, "&lt;"); break;
        case '>': jbuf_puts(c, &b, "&gt;"); break;
        case '"': jbuf_puts(c, &b, "&#34;"); break;
        case '\'': jbuf_puts(c, &b, "&#39;"); break;
        default: jbuf_putc(c, &b, s->s[i]); break;
        }
    }
    return b.p ? jv_strv(jbuf_str(c, &b)) : jv_str(c, "", 0);
}

static jv f_first_last(jctx *c, jv v, jargs *a, const char *name)
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

/* Python's float(str): optional whitespace, sign, digits with single _,
 * inf / nan; 0 when it does not parse. */
static int parse_py_float(const jstr *s, double *out)
{
    jstr *t = NULL;
    (void)t;
    size_t a = 0, b = s->len;
    while (a < b && py_isspace((unsigned char)s->s[a]))
        a++;
    while (b > a && py_isspace((unsigned char)s->s[b - 1]))
        b--;
    if (a == b || b - a > 400)
        return 0;
    char buf[420];
    size_t n = 0;
    for (size_t i = a; i < b; i++) {
        char ch = s->s[i];
        if (ch == '_') {
            if (i == a || i + 1 == b || !(s->s[i - 1] >= '0' && s->s[i - 1] <= '9') ||
                !(s->s[i + 1] >= '0' && s->s[i + 1] <= '9'))
                return 0;
            continue;
        }
        if (!((ch >= '0' && ch <= '9') || ch == '.' || ch == 'e' || ch == 'E' || ch == '+' || ch == '-' ||
              (ch | 0x20) == 'i' || (ch | 0x20) == 'n' || (ch | 0x20) == 'f' || (ch | 0x20) == 't' ||
              (ch | 0x20) == 'y' || (ch | 0x20) == 'a'))
            return 0;
        buf[n++] = ch;
    }
    buf[n] = '\0';
    /* strtod accepts hex and "infinity"/"nan(...)" forms; Python accepts inf, infinity, nan */
    const char *p = buf + ((buf[0] == '+' || buf[0] == '-') ? 1 : 0);
    if (strchr(p, 'x') || strchr(p, 'X') || strchr(p, '('))
        return 0;
    char *end;
    double f = strtod(buf, &end);
    if (*end != '\0' || end == buf)
        return 0;
    *out = f;
    return 1;
}

static jv f_float(jctx *c, jv v, jargs *a, const char *name)
{
    jv dflt = jv_float(0.0);
    arg(c, a, 0, "default", &dflt);
    jargs_done(c, a, name, 1);
    double f;
    jv_check_defined(c, v); /* float(Undefined) raises */
    if (v.k == JK_FLOAT)
        return v;
    if (v.k == JK_INT || v.k == JK_BOOL)
        return jv_float((double)v.u.i);
    if (v.k == JK_STR && parse_py_float(v.u.s, &f))
        return jv_float(f);
    return dflt;
}

static jv f_int(jctx *c, jv v, jargs *a, const char *name)
{
    jv dflt = jv_int(0), base = jv_int(10);
    arg(c, a, 0, "default", &dflt);
    arg(c, a, 1, "base", &base);
    jargs_done(c, a, name, 2);
    jv_check_defined(c, v); /* int(Undefined) raises */
    if (v.k == JK_INT)
        return v;
    if (v.k == JK_BOOL)
        return jv_int(v.u.i);
    if (v.k == JK_FLOAT) {
        if (!isfinite(v.u.f) || fabs(v.u.f) >= 9.2e18)
            return dflt;
        return jv_int((int64_t)v.u.f);
    }
    if (v.k == JK_STR) {
        int64_t b = int_arg(c, base, "base");
        /* int(s, base): whitespace, sign, optional 0x/0o/0b prefix for base 0 or the matching base, _ separators */
        const jstr *s = v.u.s;
        size_t i = 0, e = s->len;
        while (i < e && py_isspace((unsigned char)s->s[i]))
            i++;
        while (e > i && py_isspace((unsigned char)s->s[e - 1]))
            e--;
        int neg = 0;
        if (i < e && (s->s[i] == '+' || s->s[i] == '-'))
            neg = s->s[i++] == '-';
        if (e - i >= 2 && s->s[i] == '0') {
            char p = (char)(s->s[i + 1] | 0x20);
            int pb = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
            if (pb && (b == pb || b == 0)) {
                b = pb;
                i += 2;
                if (i < e && s->s[i] == '_')
                    i++;
            }
        }
        if (b == 0)
            b = 10;
        int ok = i < e && b >= 2 && b <= 36;
        uint64_t acc = 0;
        for (size_t k = i; ok && k < e; k++) {
            char ch = s->s[k];
            if (ch == '_' && k > i && k + 1 < e && s->s[k - 1] != '_')
                continue;
            int d = ch >= '0' && ch <= '9' ? ch - '0' : (ch | 0x20) >= 'a' && (ch | 0x20) <= 'z' ? (ch | 0x20) - 'a' + 10 : 99;
            if (d >= b || acc > (uint64_t)INT64_MAX / (uint64_t)b) {
                ok = 0;
                break;
            }
            acc = acc * (uint64_t)b + (uint64_t)d;
            if (acc > (uint64_t)INT64_MAX)
                ok = 0;
        }
        if (ok)
            return jv_int(neg ? -(int64_t)acc : (int64_t)acc);
        double f;
        if (parse_py_float(s, &f) && isfinite(f) && fabs(f) < 9.2e18)
            return jv_int((int64_t)f);
    }
    return dflt;
}

static jv f_format(jctx *c, jv v, jargs *a, const char *name)
{
    (void)name;
    if (a->npos && a->nkw)
        jfail(c, JE_FILTER_ARG, "can't handle positional and keyword arguments at the same time");
    jv args;
    if (a->nkw) {
        args = jv_dict(c);
        for (int i = 0; i < a->nkw; i++)
            jdict_set(c, args.u.d, jv_strv(a->kwn[i]), a->kwv[i]);
    } else {
        args = jv_tuple(c, (size_t)a->npos);
        for (int i = 0; i < a->npos; i++)
            args.u.l->v[i] = a->pos[i];
        args.u.l->n = (size_t)a->npos;
    }
    return jop_percent_format(c, soft_str(c, v), args);
}

static jv f_groupby(jctx *c, jv v, jargs *a, const char *name)
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
        while (j < l->n && jv_eq(keys.u.l->v[j], keys.u.l->v[i]))
            jlist_push(c, group.u.l, keyed.u.l->v[j++]);
        jv grouper = jv_truthy(cs) ? keys.u.l->v[i] : path_get(c, keyed.u.l->v[i], &p, has_default ? &dflt : NULL);
        jv t = jv_tuple(c, 2);
        t.u.l->v[0] = grouper;
        t.u.l->v[1] = group;
        t.u.l->n = 2;
        jlist_push(c, out.u.l, t);
        i = j;
    }
    return out;
}

static jv f_indent(jctx *c, jv v, jargs *a, const char *name)
{
    jv width = jv_int(4), first = jv_bool(0), blank = jv_bool(0);
    arg(c, a, 0, "width", &width);
    arg(c, a, 1, "first", &first);
    arg(c, a, 2, "blank", &blank);
    jargs_done(c, a, name, 3);
    jstr *ind;
    if (width.k == JK_STR) {
        ind = width.u.s;
    } else {
        int64_t w = int_arg(c, width, "width");
        if (w < 0)
            w = 0;
        if (w > 4096)
            jfail(c, JE_LIMIT, "indent wider than 4096");
        ind = jstr_new(c, NULL, (size_t)w);
        memset(ind->s, ' ', (size_t)w);
    }
    /* jinja2 appends "\n" to the value itself: only strings work */
    if (v.k != JK_STR) {
        jv_check_defined(c, v);
        jfail(c, JE_TYPE, "unsupported operand type(s) for +=: '%s' and 'str'", jv_type_name(v));
    }
    jstr *s = jstr_cat(c, v.u.s, jstr_new(c, "\n", 1));
    jlist *lines = py_splitlines(c, s, 0).u.l;
    jbuf b = {0};
    if (jv_truthy(first))
        jbuf_put(c, &b, ind->s, ind->len);
    for (size_t i = 0; i < lines->n; i++) {
        const jstr *line = lines->v[i].u.s;
        if (i > 0) {
            jbuf_putc(c, &b, '\n');
            if (jv_truthy(blank) || line->len)
                jbuf_put(c, &b, ind->s, ind->len);
        }
        jbuf_put(c, &b, line->s, line->len);
    }
    return b.p ? jv_strv(jbuf_str(c, &b)) : jv_str(c, "", 0);
}

static jv f_items(jctx *c, jv v, jargs *a, const char *name)
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

static jv f_join(jctx *c, jv v, jargs *a, const char *name)
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

static jv f_list(jctx *c, jv v, jargs *a, const char *name)
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

static jv f_map(jctx *c, jv v, jargs *a, const char *name)
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
static jv f_select(jctx *c, jv v, jargs *a, const char *name)
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

static jv f_minmax(jctx *c, jv v, jargs *a, const char *name)
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

static jv f_batch(jctx *c, jv v, jargs *a, const char *name)
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

static jv f_replace(jctx *c, jv v, jargs *a, const char *name)
{
    jv old, new_, count = jv_none();
    if (!arg(c, a, 0, "old", &old) || !arg(c, a, 1, "new", &new_))
        jfail(c, JE_TYPE, "replace() missing required arguments 'old' and 'new'");
    arg(c, a, 2, "count", &count);
    jargs_done(c, a, name, 3);
    int64_t n = count.k == JK_NONE ? -1 : int_arg(c, count, "count");
    return jv_strv(py_replace(c, soft_str(c, v), soft_str(c, old), soft_str(c, new_), n));
}

static jv f_reverse(jctx *c, jv v, jargs *a, const char *name)
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
    r.u.l->gen_type = v.k == JK_DICT ? "dict_reversekeyiterator" : v.k == JK_TUPLE ? "reversed" : "list_reverseiterator";
    return jv_gen(r.u.l);
}

static jv f_round(jctx *c, jv v, jargs *a, const char *name)
{
    jv prec = jv_int(0), method = jv_none();
    arg(c, a, 0, "precision", &prec);
    arg(c, a, 1, "method", &method);
    jargs_done(c, a, name, 2);
    int64_t p = int_arg(c, prec, "precision");
    const char *m = method.k == JK_STR ? method.u.s->s : "common";
    if (strcmp(m, "common") && strcmp(m, "ceil") && strcmp(m, "floor"))
        jfail(c, JE_FILTER_ARG, "method must be common, ceil or floor");
    if (v.k != JK_FLOAT && v.k != JK_INT && v.k != JK_BOOL)
        jfail(c, JE_TYPE, "type %s doesn't define __round__ method", jv_type_name(v));
    if (p < -308 || p > 308)
        jfail(c, JE_UNSUPPORTED, "round() precision out of range");
    if (!strcmp(m, "common")) {
        if (v.k != JK_FLOAT)
            return p >= 0 ? jv_int(v.u.i) : jv_float(round((double)v.u.i));
        if (!isfinite(v.u.f) || p < 0)
            return jv_float(p < 0 ? round(v.u.f / pow(10.0, (double)-p)) * pow(10.0, (double)-p) : v.u.f);
        /* Python rounds the exact binary value half to even: printf does the same */
        char buf[400];
        snprintf(buf, sizeof buf, "%.*f", (int)p, v.u.f);
        return jv_float(strtod(buf, NULL));
    }
    double x = v.k == JK_FLOAT ? v.u.f : (double)v.u.i, scale = pow(10.0, (double)p);
    double r = !strcmp(m, "ceil") ? ceil(x * scale) : floor(x * scale);
    return jv_float(r / scale);
}

static jv f_string(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    return jv_strv(soft_str(c, v));
}

static jv f_sort(jctx *c, jv v, jargs *a, const char *name)
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

static jv f_sum(jctx *c, jv v, jargs *a, const char *name)
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

static jv f_trim(jctx *c, jv v, jargs *a, const char *name)
{
    jv chars = jv_none();
    arg(c, a, 0, "chars", &chars);
    jargs_done(c, a, name, 1);
    if (chars.k != JK_NONE && chars.k != JK_STR)
        jfail(c, JE_TYPE, "strip arg must be None or str");
    return jv_strv(py_strip(c, soft_str(c, v), chars.k == JK_STR ? chars.u.s : NULL, 1, 1));
}

static jv f_truncate(jctx *c, jv v, jargs *a, const char *name)
{
    jv length = jv_int(255), killwords = jv_bool(0), end = jv_none(), leeway = jv_int(5);
    arg(c, a, 0, "length", &length);
    arg(c, a, 1, "killwords", &killwords);
    arg(c, a, 2, "end", &end);
    arg(c, a, 3, "leeway", &leeway);
    jargs_done(c, a, name, 4);
    jstr *e = end.k == JK_NONE ? jstr_new(c, "...", 3) : soft_str(c, end);
    int64_t len = int_arg(c, length, "length"), lw = leeway.k == JK_NONE ? 5 : int_arg(c, leeway, "leeway");
    if (len < jstr_ncp(e))
        jfail(c, JE_RUNTIME, "expected length >= %lld, got %lld", (long long)jstr_ncp(e), (long long)len);
    if (lw < 0)
        jfail(c, JE_RUNTIME, "expected leeway >= 0, got %lld", (long long)lw);
    jstr *s = soft_str(c, v);
    if (jstr_ncp(s) <= len + lw)
        return jv_strv(s);
    jv head = jop_slice(c, jv_strv(s), jv_none(), jv_int(len - jstr_ncp(e)), jv_none());
    if (!jv_truthy(killwords))
        head = py_split(c, head.u.s, jstr_new(c, " ", 1), 1, 1).u.l->v[0];
    return jv_strv(jstr_cat(c, head.u.s, e));
}

static jv f_unique(jctx *c, jv v, jargs *a, const char *name)
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
            dup = jv_eq(seen.u.l->v[j], key);
        }
        if (!dup) {
            jlist_push(c, seen.u.l, key);
            jlist_push(c, out.u.l, l->v[i]);
        }
    }
    return jv_gen(out.u.l);
}

static jv f_wordcount(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    jstr *s = soft_str(c, v);
    /* \w+ runs: letters, digits, underscore */
    jv m;
    int64_t n = 0, in_word = 0;
    size_t i = 0;
    (void)m;
    while (i < s->len) {
        size_t st = i;
        uint32_t cp = u8_next(s->s, s->len, &i);
        jstr *ch = jstr_new(c, s->s + st, i - st);
        jv chv = jv_strv(ch), meth;
        int word = cp == '_';
        if (!word && jmethod_lookup(c, chv, jstr_new(c, "isalnum", 7), &meth)) {
            jargs none = {0};
            word = jv_truthy(jmethod_call(c, meth.u.mt, &none));
        }
        if (word && !in_word)
            n++;
        in_word = word;
    }
    return jv_int(n);
}

static jv f_tojson(jctx *c, jv v, jargs *a, const char *name)
{
    jv ensure_ascii = jv_bool(0), indent = jv_none(), seps = jv_none(), sort_keys = jv_bool(0);
    arg(c, a, 0, "ensure_ascii", &ensure_ascii);
    arg(c, a, 1, "indent", &indent);
    arg(c, a, 2, "separators", &seps);
    arg(c, a, 3, "sort_keys", &sort_keys);
    jargs_done(c, a, name, 4);
    jjson_opts o = {0};
    o.ensure_ascii = jv_truthy(ensure_ascii);
    o.sort_keys = jv_truthy(sort_keys);
    if (indent.k == JK_STR) {
        o.indent = indent.u.s->s;
        o.indent_len = indent.u.s->len;
    } else if (indent.k == JK_INT || indent.k == JK_BOOL) {
        int64_t w = indent.u.i < 0 ? 0 : indent.u.i;
        if (w > 4096)
            jfail(c, JE_LIMIT, "tojson indent wider than 4096");
        char *sp = jalloc(c, (size_t)w + 1);
        memset(sp, ' ', (size_t)w);
        o.indent = sp;
        o.indent_len = (size_t)w;
    } else if (indent.k != JK_NONE) {
        jfail(c, JE_TYPE, "can't multiply sequence by non-int of type '%s'", jv_type_name(indent));
    }
    o.item_sep = o.indent ? "," : ", ";
    o.key_sep = ": ";
    if (seps.k != JK_NONE) {
        jlist *l = jv_iter_list(c, seps);
        if (l->n != 2 || l->v[0].k != JK_STR || l->v[1].k != JK_STR)
            jfail(c, JE_VALUE, "separators must be a pair of strings");
        o.item_sep = l->v[0].u.s->s;
        o.key_sep = l->v[1].u.s->s;
    }
    jbuf b = {0};
    jjson_dump(c, &b, v, &o);
    return jv_strv(jbuf_str(c, &b));
}

static jv f_safe(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    return jv_strv(soft_str(c, v));
}

/* ------------------------------------------------------------------ table */

static const struct {
    const char *name;
    filter_fn fn; /* NULL: a jinja2 filter anvil does not implement */
} filters[] = {
    {"abs", f_abs},
    {"attr", f_attr},
    {"batch", f_batch},
    {"capitalize", f_case},
    {"center", f_center},
    {"count", f_length},
    {"d", f_default},
    {"default", f_default},
    {"dictsort", f_dictsort},
    {"e", f_escape},
    {"escape", f_escape},
    {"filesizeformat", NULL},
    {"first", f_first_last},
    {"float", f_float},
    {"forceescape", f_escape},
    {"format", f_format},
    {"groupby", f_groupby},
    {"indent", f_indent},
    {"int", f_int},
    {"items", f_items},
    {"join", f_join},
    {"last", f_first_last},
    {"length", f_length},
    {"list", f_list},
    {"lower", f_case},
    {"map", f_map},
    {"max", f_minmax},
    {"min", f_minmax},
    {"pprint", NULL}, /* pformat sorts and wraps: not implemented */
    {"random", NULL},
    {"reject", f_select},
    {"rejectattr", f_select},
    {"replace", f_replace},
    {"reverse", f_reverse},
    {"round", f_round},
    {"safe", f_safe},
    {"select", f_select},
    {"selectattr", f_select},
    {"slice", NULL},
    {"sort", f_sort},
    {"string", f_string},
    {"striptags", NULL},
    {"sum", f_sum},
    {"title", f_case},
    {"tojson", f_tojson},
    {"trim", f_trim},
    {"truncate", f_truncate},
    {"unique", f_unique},
    {"upper", f_case},
    {"urlencode", NULL},
    {"urlize", NULL},
    {"wordcount", f_wordcount},
    {"wordwrap", NULL},
    {"xmlattr", NULL},
};

int jfilter_find(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof filters / sizeof filters[0]; i++)
        if (strlen(filters[i].name) == len && memcmp(filters[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

jv jfilter_apply(jctx *c, int fid, jv v, jargs *a)
{
    if (filters[fid].fn == NULL)
        jfail(c, JE_UNSUPPORTED, "the '%s' filter is not supported by anvil", filters[fid].name);
    return filters[fid].fn(c, v, a, filters[fid].name);
}
