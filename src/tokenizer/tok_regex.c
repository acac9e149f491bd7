/*
 * HF regexes on PCRE2. tokenizers compiles its patterns with Oniguruma
 * (Ruby syntax); anvil translates them for PCRE2 and matches with its JIT.
 *
 * Syntax differences handled: ^ and $ are always line anchors in Ruby
 * ((?m:^)), Ruby's (?m) is PCRE2's (?s), \h is a hex digit, \v is U+000B,
 * \uHHHH, {,n}. Constructs with no faithful translation (\b, \G, \K, \X,
 * \R, nested classes, POSIX brackets, absence operators, ...) are
 * ANVIL_ERR_UNSUPPORTED.
 *
 * Unicode differences: PCRE2 10.42 knows Unicode 14, the Oniguruma inside
 * tokenizers a later version, so \p{L} and friends disagree on ~10k newer
 * code points. Each pattern is compiled twice: `fast` with PCRE2's own
 * properties, `exact` with every class spelled out as code point ranges
 * from tables probed out of Oniguruma (tok_unicode_data.c). `fast` is ~3x
 * faster; a subject goes to `exact` only if it holds a code point where the
 * two disagree for a construct the pattern uses (the `risk` set).
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "tokenizer/tok_internal.h"

typedef struct gc_entry {
    const char *name; /* normalized: lowercase, no '_', ' ', '-' */
    const char *pcre; /* PCRE2 short name */
    const tok_uset *set, *diff;
} gc_entry;

#define GC(n, alias) {#n, #n, &tok_uset_gc_##n, &tok_uset_fastdiff_gc_##n}, {alias, #n, &tok_uset_gc_##n, &tok_uset_fastdiff_gc_##n}

static const gc_entry gc_table[] = {
    GC(C, "other"),
    GC(Cc, "control"),
    GC(Cf, "format"),
    GC(Cn, "unassigned"),
    GC(Co, "privateuse"),
    GC(L, "letter"),
    GC(Ll, "lowercaseletter"),
    GC(Lm, "modifierletter"),
    GC(Lo, "otherletter"),
    GC(Lt, "titlecaseletter"),
    GC(Lu, "uppercaseletter"),
    GC(M, "mark"),
    GC(Mc, "spacingmark"),
    GC(Me, "enclosingmark"),
    GC(Mn, "nonspacingmark"),
    GC(N, "number"),
    GC(Nd, "decimalnumber"),
    GC(Nl, "letternumber"),
    GC(No, "othernumber"),
    GC(P, "punctuation"),
    GC(Pc, "connectorpunctuation"),
    GC(Pd, "dashpunctuation"),
    GC(Pe, "closepunctuation"),
    GC(Pf, "finalpunctuation"),
    GC(Pi, "initialpunctuation"),
    GC(Po, "otherpunctuation"),
    GC(Ps, "openpunctuation"),
    GC(S, "symbol"),
    GC(Sc, "currencysymbol"),
    GC(Sk, "modifiersymbol"),
    GC(Sm, "mathsymbol"),
    GC(So, "othersymbol"),
    GC(Z, "separator"),
    GC(Zl, "lineseparator"),
    GC(Zp, "paragraphseparator"),
    GC(Zs, "spaceseparator"),
    {"combiningmark", "M", &tok_uset_gc_M, &tok_uset_fastdiff_gc_M},
};

static const gc_entry *gc_find(const char *name, size_t len)
{
    char norm[64];
    size_t k = 0;
    for (size_t i = 0; i < len && k + 1 < sizeof norm; i++) {
        char c = name[i];
        if (c == '_' || c == ' ' || c == '-')
            continue;
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        norm[k++] = c;
    }
    norm[k] = 0;
    for (size_t i = 0; i < sizeof gc_table / sizeof gc_table[0]; i++) {
        char lower[8];
        size_t l = strlen(gc_table[i].name);
        if (l < sizeof lower) {
            for (size_t j = 0; j <= l; j++) {
                char c = gc_table[i].name[j];
                lower[j] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
            }
            if (strcmp(lower, norm) == 0)
                return &gc_table[i];
        }
        if (strcmp(gc_table[i].name, norm) == 0)
            return &gc_table[i];
    }
    return NULL;
}

/* ------------------------------------------------------------ translation */

typedef struct xlat {
    const char *src, *p, *end;
    int exact;
    tok_buf *out;
    /* risk accumulation (fast mode) */
    const tok_uset *risks[64];
    int n_risks;
    int all_risky;
} xlat;

static anvil_status emit(xlat *x, const char *s)
{
    return tok_buf_append(x->out, s, strlen(s));
}

static anvil_status emitf_range(xlat *x, uint32_t lo, uint32_t hi)
{
    char b[40];
    int n = lo == hi ? snprintf(b, sizeof b, "\\x{%x}", lo) : snprintf(b, sizeof b, "\\x{%x}-\\x{%x}", lo, hi);
    return tok_buf_append(x->out, b, (size_t)n);
}

static void add_risk(xlat *x, const tok_uset *u)
{
    if (x->n_risks < 64)
        x->risks[x->n_risks++] = u;
    else
        x->all_risky = 1;
}

/* Emits the ranges of u (or of its complement) as class items. */
static anvil_status emit_set_items(xlat *x, const tok_uset *u, int negate)
{
    if (!negate) {
        for (uint32_t i = 0; i < u->n; i++)
            TRY(emitf_range(x, u->r[i][0], u->r[i][1]));
        return ANVIL_OK;
    }
    uint32_t next = 0;
    for (uint32_t i = 0; i <= u->n; i++) {
        uint32_t lo = next, hi = i < u->n ? u->r[i][0] : 0x110000;
        if (hi > lo) {
            uint32_t a = lo, b = hi - 1;
            /* PCRE2 in UTF mode refuses surrogate endpoints. */
            if (a < 0xD800 && b >= 0xD800) {
                TRY(emitf_range(x, a, 0xD7FF));
                a = 0xE000;
            } else if (a >= 0xD800 && a < 0xE000) {
                a = 0xE000;
            }
            if (b >= 0xD800 && b < 0xE000)
                b = 0xD7FF;
            if (a <= b)
                TRY(emitf_range(x, a, b));
        }
        if (i < u->n)
            next = u->r[i][1] + 1;
    }
    return ANVIL_OK;
}

/* One class-like escape (\p{..}, \s, \d, \w, \h and negations); in_class
 * says whether we are inside [...]. *p is just past the backslash. */
static anvil_status xlat_class_escape(xlat *x, int in_class, int *handled)
{
    char c = *x->p;
    *handled = 1;
    if (c == 'p' || c == 'P') {
        int neg = c == 'P';
        x->p++;
        const char *name;
        size_t nlen;
        if (x->p < x->end && *x->p == '{') {
            const char *close = memchr(x->p, '}', (size_t)(x->end - x->p));
            CHECK(close, ANVIL_ERR_FORMAT, "regex: unterminated \\p{");
            name = x->p + 1;
            nlen = (size_t)(close - name);
            x->p = close + 1;
        } else {
            CHECK(x->p < x->end, ANVIL_ERR_FORMAT, "regex: dangling \\p");
            name = x->p;
            nlen = 1;
            x->p++;
        }
        if (nlen > 0 && name[0] == '^') {
            neg = !neg;
            name++;
            nlen--;
        }
        const gc_entry *g = gc_find(name, nlen);
        CHECK(g, ANVIL_ERR_UNSUPPORTED, "regex property \\p{%.*s} is not supported (only general categories)",
              (int)nlen, name);
        if (x->exact) {
            if (!in_class)
                TRY(emit(x, "["));
            TRY(emit_set_items(x, g->set, neg));
            if (!in_class)
                TRY(emit(x, "]"));
        } else {
            char b[32];
            snprintf(b, sizeof b, "\\%c{%s}", neg ? 'P' : 'p', g->pcre);
            TRY(emit(x, b));
            add_risk(x, g->diff);
        }
        return ANVIL_OK;
    }
    const tok_uset *set = NULL, *diff = NULL;
    const char *fast_pos = NULL, *fast_neg_out = NULL, *fast_neg_in = NULL;
    int neg = 0;
    switch (c) {
    case 's': case 'S':
        set = &tok_uset_onig_space;
        diff = &tok_uset_fastdiff_onig_space;
        fast_pos = "\\s";
        fast_neg_out = fast_neg_in = "\\S";
        neg = c == 'S';
        break;
    case 'd': case 'D':
        set = &tok_uset_onig_digit;
        diff = &tok_uset_fastdiff_onig_digit;
        fast_pos = "\\p{Nd}";
        fast_neg_out = fast_neg_in = "\\P{Nd}";
        neg = c == 'D';
        break;
    case 'w': case 'W':
        set = &tok_uset_onig_word;
        diff = &tok_uset_fastdiff_onig_word;
        fast_pos = in_class ? "\\p{L}\\p{M}\\p{Nd}\\p{Pc}" : "[\\p{L}\\p{M}\\p{Nd}\\p{Pc}]";
        fast_neg_out = "[^\\p{L}\\p{M}\\p{Nd}\\p{Pc}]";
        fast_neg_in = NULL; /* a negated union cannot sit inside a PCRE2 class */
        neg = c == 'W';
        break;
    case 'h': case 'H': {
        /* Ruby's \h: an ASCII hex digit. */
        static const uint32_t hex_r[][2] = {{'0', '9'}, {'A', 'F'}, {'a', 'f'}};
        static const tok_uset hex = {hex_r, 3};
        x->p++;
        if (!in_class)
            TRY(emit(x, c == 'h' ? "[" : "[^"));
        if (in_class && c == 'H')
            TRY(emit_set_items(x, &hex, 1));
        else
            TRY(emit_set_items(x, &hex, 0));
        if (!in_class)
            TRY(emit(x, "]"));
        return ANVIL_OK;
    }
    default:
        *handled = 0;
        return ANVIL_OK;
    }
    x->p++;
    if (x->exact) {
        if (!in_class)
            TRY(emit(x, "["));
        TRY(emit_set_items(x, set, neg));
        if (!in_class)
            TRY(emit(x, "]"));
        return ANVIL_OK;
    }
    if (!neg) {
        TRY(emit(x, fast_pos));
    } else if (in_class) {
        if (fast_neg_in) {
            TRY(emit(x, fast_neg_in));
        } else {
            TRY(emit_set_items(x, set, 1)); /* correct, if slow: spelled out */
            return ANVIL_OK;
        }
    } else {
        TRY(emit(x, fast_neg_out));
    }
    add_risk(x, diff);
    return ANVIL_OK;
}

/* Escapes that mean the same in both engines, or simple rewrites. */
static anvil_status xlat_plain_escape(xlat *x, int in_class)
{
    char c = *x->p++;
    char b[16];
    switch (c) {
    case 'n': case 'r': case 't': case 'f': case 'e': case 'a':
        snprintf(b, sizeof b, "\\%c", c);
        return emit(x, b);
    case 'v':
        return emit(x, "\\x{b}");
    case 'x': {
        /* \xHH or \x{H...}: same in PCRE2 */
        TRY(emit(x, "\\x"));
        if (x->p < x->end && *x->p == '{') {
            const char *close = memchr(x->p, '}', (size_t)(x->end - x->p));
            CHECK(close, ANVIL_ERR_FORMAT, "regex: unterminated \\x{");
            TRY(tok_buf_append(x->out, x->p, (size_t)(close + 1 - x->p)));
            x->p = close + 1;
        } else {
            int k = 0;
            while (k < 2 && x->p < x->end && strchr("0123456789abcdefABCDEF", *x->p) && *x->p) {
                TRY(tok_buf_append(x->out, x->p, 1));
                x->p++;
                k++;
            }
            CHECK(k > 0, ANVIL_ERR_FORMAT, "regex: bad \\x escape");
        }
        return ANVIL_OK;
    }
    case 'u': {
        CHECK(x->end - x->p >= 4, ANVIL_ERR_FORMAT, "regex: bad \\u escape");
        for (int i = 0; i < 4; i++)
            CHECK(x->p[i] && strchr("0123456789abcdefABCDEF", x->p[i]), ANVIL_ERR_FORMAT, "regex: bad \\u escape");
        snprintf(b, sizeof b, "\\x{%.4s}", x->p);
        x->p += 4;
        return emit(x, b);
    }
    case 'A': case 'z': case 'Z':
        CHECK(!in_class, ANVIL_ERR_UNSUPPORTED, "regex: \\%c inside a class is not supported", c);
        snprintf(b, sizeof b, "\\%c", c);
        return emit(x, b);
    case '0':
        snprintf(b, sizeof b, "\\0");
        return emit(x, b);
    default:
        break;
    }
    if (c >= '1' && c <= '9') {
        CHECK(!in_class, ANVIL_ERR_UNSUPPORTED, "regex: octal escapes in classes are not supported");
        snprintf(b, sizeof b, "\\%c", c); /* back-reference */
        return emit(x, b);
    }
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "regex construct '\\%c' is not supported", c);
    /* an escaped punctuation or non-ASCII char: a literal in both */
    if ((unsigned char)c >= 0x80) {
        x->p--;
        size_t l = tok_utf8_len((unsigned char)c);
        TRY(tok_buf_append(x->out, x->p, l));
        x->p += l;
        return ANVIL_OK;
    }
    snprintf(b, sizeof b, "\\%c", c);
    return emit(x, b);
}

static anvil_status xlat_class(xlat *x)
{
    /* at '[' */
    x->p++;
    TRY(emit(x, "["));
    if (x->p < x->end && *x->p == '^') {
        TRY(emit(x, "^"));
        x->p++;
    }
    int first = 1;
    while (x->p < x->end) {
        char c = *x->p;
        if (c == ']' && !first) {
            x->p++;
            return emit(x, "]");
        }
        first = 0;
        if (c == '[')
            return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "regex: nested classes and POSIX brackets are not supported");
        if (c == '&' && x->p + 1 < x->end && x->p[1] == '&')
            return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "regex: class intersection (&&) is not supported");
        if (c == '\\') {
            x->p++;
            CHECK(x->p < x->end, ANVIL_ERR_FORMAT, "regex: dangling backslash");
            int handled;
            TRY(xlat_class_escape(x, 1, &handled));
            if (!handled)
                TRY(xlat_plain_escape(x, 1));
            continue;
        }
        size_t l = tok_utf8_len((unsigned char)c);
        if (c == ']') {
            TRY(emit(x, "\\]"));
        } else {
            TRY(tok_buf_append(x->out, x->p, l));
        }
        x->p += l;
    }
    return ANVIL_FAIL(ANVIL_ERR_FORMAT, "regex: unterminated character class");
}

/* After "(?": group kinds and inline flags. */
static anvil_status xlat_group_open(xlat *x)
{
    TRY(emit(x, "(?"));
    CHECK(x->p < x->end, ANVIL_ERR_FORMAT, "regex: unterminated group");
    char c = *x->p;
    if (c == ':' || c == '=' || c == '!' || c == '>') {
        x->p++;
        char b[2] = {c, 0};
        return emit(x, b);
    }
    if (c == '<' && x->p + 1 < x->end && (x->p[1] == '=' || x->p[1] == '!')) {
        char b[3] = {'<', x->p[1], 0};
        x->p += 2;
        return emit(x, b);
    }
    if (c == '<' || c == '\'') {
        char close = c == '<' ? '>' : '\'';
        const char *e = memchr(x->p + 1, close, (size_t)(x->end - x->p - 1));
        CHECK(e, ANVIL_ERR_FORMAT, "regex: unterminated group name");
        TRY(emit(x, "<"));
        TRY(tok_buf_append(x->out, x->p + 1, (size_t)(e - x->p - 1)));
        TRY(emit(x, ">"));
        x->p = e + 1;
        return ANVIL_OK;
    }
    if (c == '#') {
        /* comment: drop it */
        const char *e = memchr(x->p, ')', (size_t)(x->end - x->p));
        CHECK(e, ANVIL_ERR_FORMAT, "regex: unterminated comment");
        x->out->len -= 2;
        x->p = e + 1;
        return ANVIL_OK;
    }
    /* flags: [imx]*(-[imx]*)?[:)] ; Ruby's m is PCRE2's s */
    while (x->p < x->end) {
        c = *x->p;
        if (c == ':' || c == ')') {
            char b[2] = {c, 0};
            x->p++;
            if (c == ')')
                return emit(x, b);
            return emit(x, b);
        }
        if (c == 'i' || c == 'x' || c == '-') {
            char b[2] = {c, 0};
            TRY(emit(x, b));
        } else if (c == 'm') {
            TRY(emit(x, "s"));
        } else {
            return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "regex group '(?%c' is not supported", c);
        }
        x->p++;
    }
    return ANVIL_FAIL(ANVIL_ERR_FORMAT, "regex: unterminated group");
}

static anvil_status translate(xlat *x)
{
    while (x->p < x->end) {
        char c = *x->p;
        if (c == '\\') {
            x->p++;
            CHECK(x->p < x->end, ANVIL_ERR_FORMAT, "regex: dangling backslash");
            int handled;
            TRY(xlat_class_escape(x, 0, &handled));
            if (!handled)
                TRY(xlat_plain_escape(x, 0));
        } else if (c == '[') {
            TRY(xlat_class(x));
        } else if (c == '(' && x->p + 1 < x->end && x->p[1] == '?') {
            x->p += 2;
            TRY(xlat_group_open(x));
        } else if (c == '^') {
            x->p++;
            TRY(emit(x, "(?m:^)"));
        } else if (c == '$') {
            x->p++;
            TRY(emit(x, "(?m:$)"));
        } else if (c == '{' && x->p + 1 < x->end && x->p[1] == ',') {
            /* Ruby's {,n} is {0,n} */
            const char *q = x->p + 2;
            while (q < x->end && *q >= '0' && *q <= '9')
                q++;
            if (q > x->p + 2 && q < x->end && *q == '}') {
                TRY(emit(x, "{0,"));
                TRY(tok_buf_append(x->out, x->p + 2, (size_t)(q + 1 - (x->p + 2))));
                x->p = q + 1;
            } else {
                TRY(emit(x, "\\{"));
                x->p++;
            }
        } else {
            size_t l = tok_utf8_len((unsigned char)c);
            if (l > (size_t)(x->end - x->p))
                l = 1;
            TRY(tok_buf_append(x->out, x->p, l));
            x->p += l;
        }
    }
    return ANVIL_OK;
}

static anvil_status compile_one(const char *pat, size_t len, pcre2_code **out, const char *src, size_t src_len)
{
    int err;
    PCRE2_SIZE off;
    pcre2_code *c = pcre2_compile((PCRE2_SPTR)pat, len, PCRE2_UTF | PCRE2_UCP, &err, &off, NULL);
    if (!c) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return ANVIL_FAIL(ANVIL_ERR_FORMAT, "regex '%.*s' does not compile: %s", (int)(src_len > 200 ? 200 : src_len),
                          src, (const char *)msg);
    }
    pcre2_jit_compile(c, PCRE2_JIT_COMPLETE); /* without JIT, pcre2_match interprets */
    *out = c;
    return ANVIL_OK;
}

static int cmp_range(const void *a, const void *b)
{
    const uint32_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* 1 if the PCRE2 in use has the Unicode version the risk tables were made for. */
static int pcre2_tables_match(void)
{
    char v[32] = "";
    pcre2_config(PCRE2_CONFIG_UNICODE_VERSION, v);
    return strcmp(v, tok_unicode_pcre2_version) == 0;
}

anvil_status tok_regex_compile(tok_regex *re, const char *pattern, size_t len)
{
    memset(re, 0, sizeof *re);
    anvil_status st = ANVIL_OK;
    tok_buf fast = {0}, exact = {0};
    xlat xf = {pattern, pattern, pattern + len, 0, &fast, {0}, 0, 0};
    xlat xe = {pattern, pattern, pattern + len, 1, &exact, {0}, 0, 0};
    TRY_GOTO(tok_buf_reserve(&fast, len), fail);
    TRY_GOTO(tok_buf_reserve(&exact, len), fail);
    st = translate(&xf);
    if (st != ANVIL_OK) {
        anvil_error_wrap("regex '%.*s'", (int)(len > 200 ? 200 : len), pattern);
        goto fail;
    }
    TRY_GOTO(translate(&xe), fail);
    size_t n_risk = 0;
    for (int i = 0; i < xf.n_risks; i++)
        n_risk += xf.risks[i]->n;
    /* another PCRE2 Unicode version: the risk sets do not describe it, so
     * every subject takes the exact pattern (slower, still exact) */
    re->all_risky = xf.all_risky || !pcre2_tables_match();
    if (!re->all_risky)
        TRY_GOTO(compile_one(fast.p ? fast.p : "", fast.len, &re->fast, pattern, len), fail);
    if (n_risk > 0 || re->all_risky) {
        TRY_GOTO(compile_one(exact.p ? exact.p : "", exact.len, &re->exact, pattern, len), fail);
        if (n_risk > 0) {
            re->risk = malloc(n_risk * sizeof *re->risk);
            CHECK_GOTO(re->risk, ANVIL_ERR_OOM, fail, "out of memory");
            size_t k = 0;
            for (int i = 0; i < xf.n_risks; i++)
                for (uint32_t j = 0; j < xf.risks[i]->n; j++) {
                    re->risk[k][0] = xf.risks[i]->r[j][0];
                    re->risk[k][1] = xf.risks[i]->r[j][1];
                    k++;
                }
            qsort(re->risk, k, sizeof *re->risk, cmp_range);
            size_t m = 0; /* merge overlaps */
            for (size_t i = 0; i < k; i++) {
                if (m && re->risk[i][0] <= re->risk[m - 1][1] + 1) {
                    if (re->risk[i][1] > re->risk[m - 1][1])
                        re->risk[m - 1][1] = re->risk[i][1];
                } else {
                    re->risk[m][0] = re->risk[i][0];
                    re->risk[m][1] = re->risk[i][1];
                    m++;
                }
            }
            re->n_risk = (uint32_t)m;
        }
    }
    tok_buf_free(&fast);
    tok_buf_free(&exact);
    return ANVIL_OK;
fail:
    tok_buf_free(&fast);
    tok_buf_free(&exact);
    tok_regex_free(re);
    return st;
}

anvil_status tok_regex_compile_literal(tok_regex *re, const char *lit, size_t len)
{
    memset(re, 0, sizeof *re);
    tok_buf p = {0};
    anvil_status st = tok_buf_reserve(&p, len * 2);
    for (size_t i = 0; i < len && st == ANVIL_OK; i++) {
        char c = lit[i];
        if ((unsigned char)c < 0x80 && !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
            st = tok_buf_append(&p, "\\", 1);
        if (st == ANVIL_OK)
            st = c == 0 ? tok_buf_append(&p, "x{0}", 4) : tok_buf_append(&p, &c, 1);
    }
    if (st == ANVIL_OK)
        st = compile_one(p.p ? p.p : "", p.len, &re->fast, lit, len);
    tok_buf_free(&p);
    return st;
}

void tok_regex_free(tok_regex *re)
{
    pcre2_code_free(re->fast);
    pcre2_code_free(re->exact);
    free(re->risk);
    memset(re, 0, sizeof *re);
}

static int subject_risky(const tok_regex *re, const char *s, size_t n)
{
    if (re->all_risky)
        return 1;
    if (!re->exact || re->n_risk == 0)
        return 0;
    tok_uset u = {(const uint32_t(*)[2])re->risk, re->n_risk};
    return tok_utf8_any_in(s, n, &u);
}

void tok_regex_iter_init(tok_regex_iter *it, const tok_regex *re, const char *subject, size_t n)
{
    it->code = subject_risky(re, subject, n) ? re->exact : re->fast;
    size_t jit_size = 0;
    it->jit = pcre2_pattern_info(it->code, PCRE2_INFO_JITSIZE, &jit_size) == 0 && jit_size > 0;
    it->last_end = it->last_match_end = 0;
    it->have_last = 0;
}

int tok_regex_iter_next(tok_regex_iter *it, const char *subject, size_t n, pcre2_match_data *md, size_t *s, size_t *e,
                        anvil_status *st)
{
    while (it->last_end <= n) {
        /* the subject is valid UTF-8 (checked once by encode): skip PCRE2's checks */
        int rc = it->jit ? pcre2_jit_match(it->code, (PCRE2_SPTR)subject, n, it->last_end, 0, md, NULL)
                         : pcre2_match(it->code, (PCRE2_SPTR)subject, n, it->last_end, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            *st = ANVIL_FAIL(ANVIL_ERR_INTERNAL, "regex match failed (PCRE2 error %d)", rc);
            return 0;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms && it->have_last && it->last_match_end == me) {
            /* Oniguruma's find_iter: no empty match right after the previous one */
            it->last_end += it->last_end < n ? tok_utf8_len((unsigned char)subject[it->last_end]) : 1;
            continue;
        }
        it->last_end = me;
        it->last_match_end = me;
        it->have_last = 1;
        *s = ms;
        *e = me;
        return 1;
    }
    it->last_end = n + 1;
    return 0;
}

anvil_status tok_regex_find_all(const tok_regex *re, const char *subject, size_t n, pcre2_match_data *md,
                                tok_span **out, size_t *n_out, size_t *cap)
{
    tok_regex_iter it;
    tok_regex_iter_init(&it, re, subject, n);
    anvil_status st = ANVIL_OK;
    size_t s, e;
    while (tok_regex_iter_next(&it, subject, n, md, &s, &e, &st)) {
        TRY(tok_grow((void **)out, cap, *n_out + 1, sizeof **out));
        (*out)[(*n_out)++] = (tok_span){s, e};
    }
    return st;
}

/* ------------------------------------------------------------ patterns */

anvil_status tok_pattern_parse(tok_pattern *p, json_t *j, const char *what)
{
    memset(p, 0, sizeof *p);
    CHECK(json_is_object(j), ANVIL_ERR_FORMAT, "tokenizer.json: %s.pattern must be an object", what);
    json_t *s = json_object_get(j, "String");
    json_t *r = json_object_get(j, "Regex");
    if (s && json_is_string(s)) {
        size_t n = json_string_length(s);
        if (n == 0) {
            p->is_regex = 1;
            return tok_regex_compile_literal(&p->re, "", 0);
        }
        p->lit = malloc(n + 1);
        CHECK(p->lit, ANVIL_ERR_OOM, "out of memory");
        memcpy(p->lit, json_string_value(s), n + 1);
        p->lit_len = n;
        return ANVIL_OK;
    }
    if (r && json_is_string(r)) {
        p->is_regex = 1;
        return tok_regex_compile(&p->re, json_string_value(r), json_string_length(r));
    }
    return ANVIL_FAIL(ANVIL_ERR_FORMAT, "tokenizer.json: %s.pattern must be {\"String\": ...} or {\"Regex\": ...}",
                      what);
}

void tok_pattern_free(tok_pattern *p)
{
    free(p->lit);
    tok_regex_free(&p->re);
    memset(p, 0, sizeof *p);
}

anvil_status tok_pattern_find_all(const tok_pattern *p, const char *s, size_t n, pcre2_match_data *md,
                                  tok_span **out, size_t *n_out, size_t *cap)
{
    if (p->is_regex)
        return tok_regex_find_all(&p->re, s, n, md, out, n_out, cap);
    size_t i = 0;
    while (i + p->lit_len <= n) {
        const char *f = p->lit_len == 1 ? memchr(s + i, p->lit[0], n - i)
                                        : memmem(s + i, n - i, p->lit, p->lit_len);
        if (!f)
            break;
        size_t at = (size_t)(f - s);
        TRY(tok_grow((void **)out, cap, *n_out + 1, sizeof **out));
        (*out)[(*n_out)++] = (tok_span){at, at + p->lit_len};
        i = at + p->lit_len;
    }
    return ANVIL_OK;
}

void tok_pattern_iter_init(tok_pattern_iter *it, const tok_pattern *p, const char *subject, size_t n)
{
    it->at = 0;
    if (p->is_regex)
        tok_regex_iter_init(&it->re, &p->re, subject, n);
}

int tok_pattern_iter_next(tok_pattern_iter *it, const tok_pattern *p, const char *subject, size_t n,
                          pcre2_match_data *md, size_t *s, size_t *e, anvil_status *st)
{
    if (p->is_regex)
        return tok_regex_iter_next(&it->re, subject, n, md, s, e, st);
    if (it->at + p->lit_len > n)
        return 0;
    const char *f = p->lit_len == 1 ? memchr(subject + it->at, p->lit[0], n - it->at)
                                    : memmem(subject + it->at, n - it->at, p->lit, p->lit_len);
    if (!f) {
        it->at = n + 1;
        return 0;
    }
    *s = (size_t)(f - subject);
    *e = *s + p->lit_len;
    it->at = *e;
    return 1;
}
