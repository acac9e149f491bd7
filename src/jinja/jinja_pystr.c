/*
 * Python str operations on UTF-8 strings, by code point as Python counts:
 * strip / lstrip / rstrip (whitespace as str.isspace), case changes (simple
 * Unicode case mappings from utf8proc), replace, split / rsplit, splitlines.
 */
#include <string.h>
#include <utf8proc.h>

#include "jinja/jinja_internal.h"

typedef struct cpset {
    uint32_t *cp;
    size_t n;
} cpset;

static cpset cpset_of(jctx *c, const jstr *chars)
{
    cpset set = {0};
    set.cp = jalloc(c, (chars->len + 1) * sizeof(uint32_t));
    size_t i = 0;
    while (i < chars->len)
        set.cp[set.n++] = ju8_next(chars->s, chars->len, &i);
    return set;
}

static int cpset_has(const cpset *set, uint32_t cp)
{
    for (size_t i = 0; i < set->n; i++)
        if (set->cp[i] == cp)
            return 1;
    return 0;
}

jstr *jpy_strip(jctx *c, const jstr *s, const jstr *chars, int left, int right)
{
    cpset set = {0};
    if (chars)
        set = cpset_of(c, chars);
    size_t a = 0, b = s->len;
    if (left) {
        while (a < b) {
            size_t k = a;
            uint32_t cp = ju8_next(s->s, s->len, &k);
            if (chars ? !cpset_has(&set, cp) : !jpy_isspace(cp))
                break;
            a = k;
        }
    }
    if (right) {
        /* back from the end, one code point at a time */
        while (b > a) {
            size_t st = b - 1;
            while (st > a && ((unsigned char)s->s[st] & 0xc0) == 0x80)
                st--;
            size_t k = st;
            uint32_t cp = ju8_next(s->s, s->len, &k);
            if (chars ? !cpset_has(&set, cp) : !jpy_isspace(cp))
                break;
            b = st;
        }
    }
    if (a == 0 && b == s->len)
        return (jstr *)s;
    return jstr_new(c, s->s + a, b - a);
}

static int is_cased(uint32_t cp)
{
    utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)cp);
    return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
}

static uint32_t to_lower(uint32_t cp)
{
    return (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp);
}
static uint32_t to_upper(uint32_t cp)
{
    return (uint32_t)utf8proc_toupper((utf8proc_int32_t)cp);
}
static uint32_t to_title(uint32_t cp)
{
    return (uint32_t)utf8proc_totitle((utf8proc_int32_t)cp);
}

/* Characters Unicode calls case-ignorable (for the final sigma rule). */
static int case_ignorable(uint32_t cp)
{
    if (cp == '\'' || cp == '.' || cp == ':' || cp == '^' || cp == '`' || cp == 0xb7 || cp == 0x2019)
        return 1;
    utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)cp);
    return cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_ME || cat == UTF8PROC_CATEGORY_CF ||
           cat == UTF8PROC_CATEGORY_LM || cat == UTF8PROC_CATEGORY_SK;
}

/* Capital sigma lowers to final sigma at the end of a word: a cased letter
 * before it and none after it (case-ignorable characters skipped). */
static int final_sigma(const jstr *s, size_t at, size_t after)
{
    int before = 0;
    size_t i = at;
    while (i > 0) {
        size_t st = i - 1;
        while (st > 0 && ((unsigned char)s->s[st] & 0xc0) == 0x80)
            st--;
        size_t k = st;
        uint32_t cp = ju8_next(s->s, s->len, &k);
        i = st;
        if (case_ignorable(cp))
            continue;
        before = is_cased(cp);
        break;
    }
    if (!before)
        return 0;
    i = after;
    while (i < s->len) {
        uint32_t cp = ju8_next(s->s, s->len, &i);
        if (case_ignorable(cp))
            continue;
        return !is_cased(cp);
    }
    return 1;
}

/* Appends the full mapping of cp (mode 0 lower, 1 upper, 2 title). */
static void put_mapped(jctx *c, jbuf *b, uint32_t cp, int mode)
{
    uint32_t m[3];
    int n = jpy_special_case(cp, mode, m);
    if (n > 0) {
        for (int k = 0; k < n; k++)
            jbuf_put_cp(c, b, m[k]);
        return;
    }
    jbuf_put_cp(c, b, mode == 0 ? to_lower(cp) : mode == 1 ? to_upper(cp) : to_title(cp));
}

jstr *jpy_case(jctx *c, const jstr *s, int mode)
{
    jbuf b = {0};
    int prev_cased = 0, first = 1;
    size_t i = 0;
    while (i < s->len) {
        size_t at = i;
        uint32_t cp = ju8_next(s->s, s->len, &i);
        int m; /* 0 lower, 1 upper, 2 title, -1 unchanged */
        switch (mode) {
        case 0:
            m = 0;
            break;
        case 1:
            m = 1;
            break;
        case 2:
            m = prev_cased ? 0 : 2;
            prev_cased = is_cased(cp);
            break;
        case 3:
            m = first ? 2 : 0;
            break;
        default: {
            utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)cp);
            m = cat == UTF8PROC_CATEGORY_LU ? 0 : cat == UTF8PROC_CATEGORY_LL ? 1 : -1;
            break;
        }
        }
        first = 0;
        if (m == 0 && cp == 0x3a3 && final_sigma(s, at, i))
            jbuf_put_cp(c, &b, 0x3c2);
        else if (m < 0)
            jbuf_put_cp(c, &b, cp);
        else
            put_mapped(c, &b, cp, m);
    }
    if (b.p == NULL)
        return jstr_new(c, "", 0);
    return jbuf_str(c, &b);
}

jstr *jpy_replace(jctx *c, const jstr *s, const jstr *old, const jstr *new_, int64_t count)
{
    if (count < 0)
        count = INT64_MAX;
    jbuf b = {0};
    if (old->len == 0) {
        /* inserts before every code point and at the end */
        size_t i = 0;
        int64_t done = 0;
        while (i <= s->len) {
            if (done < count) {
                jbuf_put(c, &b, new_->s, new_->len);
                done++;
            }
            if (i == s->len)
                break;
            size_t start = i;
            ju8_next(s->s, s->len, &i);
            jbuf_put(c, &b, s->s + start, i - start);
        }
        return jbuf_str(c, &b);
    }
    size_t i = 0;
    int64_t done = 0;
    while (i < s->len) {
        const char *hit = done < count ? memmem(s->s + i, s->len - i, old->s, old->len) : NULL;
        if (hit == NULL) {
            jbuf_put(c, &b, s->s + i, s->len - i);
            break;
        }
        size_t at = (size_t)(hit - s->s);
        jbuf_put(c, &b, s->s + i, at - i);
        jbuf_put(c, &b, new_->s, new_->len);
        i = at + old->len;
        done++;
        jstep(c);
    }
    if (b.p == NULL)
        return jstr_new(c, "", 0);
    return jbuf_str(c, &b);
}

static void push_piece(jctx *c, jlist *l, const char *s, size_t n)
{
    jstep(c);
    jlist_push(c, l, jv_str(c, s, n));
}

static size_t skip_ws_fwd(const jstr *s, size_t i)
{
    while (i < s->len) {
        size_t k = i;
        if (!jpy_isspace(ju8_next(s->s, s->len, &k)))
            break;
        i = k;
    }
    return i;
}

/* The start of the code point that ends at byte `end` (end > 0). */
static size_t prev_cp(const jstr *s, size_t end)
{
    size_t i = end - 1;
    while (i > 0 && ((unsigned char)s->s[i] & 0xc0) == 0x80)
        i--;
    return i;
}

static size_t skip_ws_back(const jstr *s, size_t end)
{
    while (end > 0) {
        size_t st = prev_cp(s, end), k = st;
        if (!jpy_isspace(ju8_next(s->s, s->len, &k)))
            break;
        end = st;
    }
    return end;
}

static jv split_ws(jctx *c, const jstr *s, int64_t maxsplit)
{
    jv r = jv_list(c, 0);
    size_t i = skip_ws_fwd(s, 0);
    int64_t splits = 0;
    while (i < s->len) {
        if (splits == maxsplit) {
            push_piece(c, r.u.l, s->s + i, s->len - i);
            break;
        }
        size_t start = i;
        while (i < s->len) {
            size_t k = i;
            if (jpy_isspace(ju8_next(s->s, s->len, &k)))
                break;
            i = k;
        }
        push_piece(c, r.u.l, s->s + start, i - start);
        splits++;
        i = skip_ws_fwd(s, i);
    }
    return r;
}

static jv rsplit_ws(jctx *c, const jstr *s, int64_t maxsplit)
{
    jv r = jv_list(c, 0);
    size_t end = skip_ws_back(s, s->len);
    int64_t splits = 0;
    while (end > 0) {
        if (splits == maxsplit) {
            push_piece(c, r.u.l, s->s, end);
            break;
        }
        size_t start = end;
        while (start > 0) {
            size_t st = prev_cp(s, start), k = st;
            if (jpy_isspace(ju8_next(s->s, s->len, &k)))
                break;
            start = st;
        }
        push_piece(c, r.u.l, s->s + start, end - start);
        splits++;
        end = skip_ws_back(s, start);
    }
    /* built back to front */
    jlist *l = r.u.l;
    for (size_t a = 0, b = l->n ? l->n - 1 : 0; a < b; a++, b--) {
        jv t = l->v[a];
        l->v[a] = l->v[b];
        l->v[b] = t;
    }
    return r;
}

jv jpy_split(jctx *c, const jstr *s, const jstr *sep, int64_t maxsplit, int from_right)
{
    if (maxsplit < 0)
        maxsplit = INT64_MAX;
    if (sep == NULL)
        return from_right ? rsplit_ws(c, s, maxsplit) : split_ws(c, s, maxsplit);
    if (sep->len == 0)
        jfail(c, JE_VALUE, "empty separator");
    jv r = jv_list(c, 0);
    if (!from_right) {
        size_t i = 0;
        int64_t splits = 0;
        for (;;) {
            const char *hit = splits < maxsplit ? memmem(s->s + i, s->len - i, sep->s, sep->len) : NULL;
            if (hit == NULL) {
                push_piece(c, r.u.l, s->s + i, s->len - i);
                break;
            }
            size_t at = (size_t)(hit - s->s);
            push_piece(c, r.u.l, s->s + i, at - i);
            i = at + sep->len;
            splits++;
        }
        return r;
    }
    /* rsplit: find matches from the right */
    size_t end = s->len;
    int64_t splits = 0;
    jv rev = jv_list(c, 0);
    for (;;) {
        size_t found = SIZE_MAX;
        if (splits < maxsplit && end >= sep->len) {
            for (size_t k = end - sep->len + 1; k-- > 0;) {
                if (memcmp(s->s + k, sep->s, sep->len) == 0) {
                    found = k;
                    break;
                }
            }
        }
        if (found == SIZE_MAX) {
            push_piece(c, rev.u.l, s->s, end);
            break;
        }
        push_piece(c, rev.u.l, s->s + found + sep->len, end - found - sep->len);
        end = found;
        splits++;
    }
    for (size_t k = rev.u.l->n; k-- > 0;)
        jlist_push(c, r.u.l, rev.u.l->v[k]);
    return r;
}

/* str.splitlines: \n \r \r\n \v \f \x1c \x1d \x1e \x85 \u2028 \u2029 */
jv jpy_splitlines(jctx *c, const jstr *s, int keepends)
{
    jv r = jv_list(c, 0);
    size_t i = 0, start = 0;
    while (i < s->len) {
        size_t at = i;
        uint32_t cp = ju8_next(s->s, s->len, &i);
        int brk = cp == '\n' || cp == '\r' || cp == 0x0b || cp == 0x0c || cp == 0x1c || cp == 0x1d ||
                  cp == 0x1e || cp == 0x85 || cp == 0x2028 || cp == 0x2029;
        if (!brk)
            continue;
        if (cp == '\r' && i < s->len && s->s[i] == '\n')
            i++;
        push_piece(c, r.u.l, s->s + start, (keepends ? i : at) - start);
        start = i;
    }
    if (start < s->len)
        push_piece(c, r.u.l, s->s + start, s->len - start);
    return r;
}
