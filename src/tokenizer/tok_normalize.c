/*
 * Normalizers (HF normalizers/): each step rewrites a piece of text into
 * the work arena. Unicode normalization runs on utf8proc, with two guards
 * for exactness: a quick check skips text no form can change, and the few
 * code points whose normalization data is newer in utf8proc than in HF's
 * `unicode-normalization-alignments` tables (tok_uset_norm_inert) are cut
 * out and copied unchanged, which is what HF's older tables do with them.
 *
 * Each step also carries the piece's zp (leading bytes that map back to the
 * input's offset 0, see tok_internal.h), following how HF aligns inserted
 * and replaced characters.
 */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/error.h"
#include "tokenizer/tok_internal.h"

/* ------------------------------------------------------------ loading */

static anvil_status add_step(anvil_tokenizer *tok, tok_norm *n)
{
    tok_norm *s = realloc(tok->norms, (size_t)(tok->n_norms + 1) * sizeof *s);
    CHECK(s, ANVIL_ERR_OOM, "out of memory");
    tok->norms = s;
    tok->norms[tok->n_norms++] = *n;
    return ANVIL_OK;
}

static anvil_status dup_str(const char *s, size_t n, char **out)
{
    *out = malloc(n + 1);
    CHECK(*out, ANVIL_ERR_OOM, "out of memory");
    memcpy(*out, s, n);
    (*out)[n] = 0;
    return ANVIL_OK;
}

static anvil_status load_one(anvil_tokenizer *tok, json_t *j, int depth)
{
    CHECK(depth < 16, ANVIL_ERR_FORMAT, "tokenizer.json: normalizers nested too deep");
    CHECK(json_is_object(j), ANVIL_ERR_FORMAT, "tokenizer.json: a normalizer must be an object");
    const char *type;
    TRY(tok_json_str(j, "type", &type, NULL, "normalizer"));
    CHECK(type, ANVIL_ERR_FORMAT, "tokenizer.json: a normalizer has no type");
    tok_norm n;
    memset(&n, 0, sizeof n);
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(j, "normalizers");
        CHECK(json_is_array(list), ANVIL_ERR_FORMAT, "tokenizer.json: normalizer Sequence needs 'normalizers'");
        for (size_t i = 0; i < json_array_size(list); i++)
            TRY(load_one(tok, json_array_get(list, i), depth + 1));
        return ANVIL_OK;
    }
    if (strcmp(type, "NFC") == 0) {
        n.kind = TOK_NORM_NFC;
    } else if (strcmp(type, "NFD") == 0) {
        n.kind = TOK_NORM_NFD;
    } else if (strcmp(type, "NFKC") == 0) {
        n.kind = TOK_NORM_NFKC;
    } else if (strcmp(type, "NFKD") == 0) {
        n.kind = TOK_NORM_NFKD;
    } else if (strcmp(type, "Lowercase") == 0) {
        n.kind = TOK_NORM_LOWERCASE;
    } else if (strcmp(type, "StripAccents") == 0) {
        n.kind = TOK_NORM_STRIP_ACCENTS;
    } else if (strcmp(type, "Nmt") == 0) {
        n.kind = TOK_NORM_NMT;
    } else if (strcmp(type, "ByteLevel") == 0) {
        n.kind = TOK_NORM_BYTELEVEL;
    } else if (strcmp(type, "Strip") == 0) {
        n.kind = TOK_NORM_STRIP;
        TRY(tok_json_bool(j, "strip_left", 1, &n.strip_left, "Strip"));
        TRY(tok_json_bool(j, "strip_right", 1, &n.strip_right, "Strip"));
    } else if (strcmp(type, "Prepend") == 0) {
        const char *s;
        size_t l;
        n.kind = TOK_NORM_PREPEND;
        TRY(tok_json_str(j, "prepend", &s, &l, "Prepend"));
        CHECK(s, ANVIL_ERR_FORMAT, "tokenizer.json: Prepend needs 'prepend'");
        TRY(dup_str(s, l, &n.str));
        n.str_len = l;
    } else if (strcmp(type, "Replace") == 0) {
        const char *s;
        size_t l;
        n.kind = TOK_NORM_REPLACE;
        TRY(tok_json_str(j, "content", &s, &l, "Replace"));
        CHECK(s, ANVIL_ERR_FORMAT, "tokenizer.json: Replace needs 'content'");
        TRY(dup_str(s, l, &n.str));
        n.str_len = l;
        anvil_status st = tok_pattern_parse(&n.pat, json_object_get(j, "pattern"), "Replace");
        if (st != ANVIL_OK) {
            free(n.str);
            return st;
        }
    } else if (strcmp(type, "BertNormalizer") == 0) {
        n.kind = TOK_NORM_BERT;
        TRY(tok_json_bool(j, "clean_text", 1, &n.bert_clean, "BertNormalizer"));
        TRY(tok_json_bool(j, "handle_chinese_chars", 1, &n.bert_chinese, "BertNormalizer"));
        TRY(tok_json_bool(j, "lowercase", 1, &n.bert_lower, "BertNormalizer"));
        TRY(tok_json_bool(j, "strip_accents", n.bert_lower, &n.bert_strip_accents, "BertNormalizer"));
    } else {
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "tokenizer.json: normalizer '%s' is not supported", type);
    }
    anvil_status st = add_step(tok, &n);
    if (st != ANVIL_OK) {
        free(n.str);
        tok_pattern_free(&n.pat);
    }
    return st;
}

anvil_status tok_norm_load(anvil_tokenizer *tok, json_t *j)
{
    if (!j || json_is_null(j))
        return ANVIL_OK;
    return load_one(tok, j, 0);
}

void tok_norm_free_all(anvil_tokenizer *tok)
{
    for (int i = 0; i < tok->n_norms; i++) {
        free(tok->norms[i].str);
        tok_pattern_free(&tok->norms[i].pat);
    }
    free(tok->norms);
    tok->norms = NULL;
    tok->n_norms = 0;
}

/* ------------------------------------------------------------ per-char maps */

/* Maps cp to out[0..return): up to 3 code points (0: removed). */
typedef int (*char_fn)(uint32_t cp, uint32_t out[3], const void *arg);

/* Rewrites p through fn; zp follows the chars that came from [0, zp). */
static anvil_status map_chars(tok_work *w, tok_piece *p, char_fn fn, const void *arg)
{
    TRY(tok_buf_reserve(&w->text, p->len * 3 + 16));
    const char *s = tok_piece_ptr(w, p);
    char *o = w->text.p + w->text.len;
    size_t k = 0, zp = 0;
    for (size_t i = 0; i < p->len;) {
        size_t l;
        uint32_t cp = tok_utf8_decode(s + i, p->len - i, &l);
        uint32_t out[3];
        int m = fn(cp, out, arg);
        size_t before = k;
        if (w->text.len + k + 13 > w->text.cap) {
            TRY(tok_buf_reserve(&w->text, k + 12));
            s = tok_piece_ptr(w, p);
            o = w->text.p + w->text.len;
        }
        for (int j = 0; j < m; j++)
            k += tok_utf8_encode(out[j], o + k);
        if (i < p->zp)
            zp += k - before;
        i += l;
    }
    tok_piece_rewritten(w, p, k, zp);
    return ANVIL_OK;
}

static int fn_lower(uint32_t cp, uint32_t out[3], const void *arg)
{
    (void)arg;
    return tok_lowercase(cp, out);
}

static int fn_strip_accents(uint32_t cp, uint32_t out[3], const void *arg)
{
    (void)arg;
    if (cp >= 0x300 && tok_uset_has(&tok_uset_comb_mark, cp))
        return 0;
    out[0] = cp;
    return 1;
}

static int fn_bert_mn(uint32_t cp, uint32_t out[3], const void *arg)
{
    (void)arg;
    if (cp >= 0x300 && tok_uset_has(&tok_uset_bert_mn, cp))
        return 0;
    out[0] = cp;
    return 1;
}

static int fn_bert_clean(uint32_t cp, uint32_t out[3], const void *arg)
{
    (void)arg;
    if (tok_uset_has(&tok_uset_bert_remove, cp))
        return 0;
    out[0] = tok_uset_has(&tok_uset_bert_space, cp) ? ' ' : cp;
    return 1;
}

static int is_chinese(uint32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

static int fn_bert_chinese(uint32_t cp, uint32_t out[3], const void *arg)
{
    (void)arg;
    if (is_chinese(cp)) {
        out[0] = ' ';
        out[1] = cp;
        out[2] = ' ';
        return 3;
    }
    out[0] = cp;
    return 1;
}

/* HF's Nmt normalizer: drops some controls, turns odd spaces into ' '. */
static int fn_nmt(uint32_t c, uint32_t out[3], const void *arg)
{
    (void)arg;
    if ((c >= 0x1 && c <= 0x8) || c == 0xB || (c >= 0xE && c <= 0x1F) || c == 0x7F || c == 0x8F || c == 0x9F)
        return 0;
    if (c == 0x9 || c == 0xA || c == 0xC || c == 0xD || c == 0x1680 || (c >= 0x200B && c <= 0x200F) ||
        c == 0x2028 || c == 0x2029 || c == 0x2581 || c == 0xFEFF || c == 0xFFFD)
        c = ' ';
    out[0] = c;
    return 1;
}

/* ------------------------------------------------------------ unicode forms */

static anvil_status nf_run(tok_work *w, const char *s, size_t n, utf8proc_option_t opt, tok_buf *out)
{
    if (n == 0)
        return ANVIL_OK;
    utf8proc_ssize_t need = utf8proc_decompose((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, NULL, 0, opt);
    CHECK(need >= 0, ANVIL_ERR_INTERNAL, "utf8proc: %s", utf8proc_errmsg(need));
    TRY(tok_grow((void **)&w->u32, &w->cap_u32, (size_t)need + 1, sizeof *w->u32));
    utf8proc_int32_t *buf = (utf8proc_int32_t *)w->u32;
    utf8proc_ssize_t got = utf8proc_decompose((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, buf, need, opt);
    CHECK(got >= 0 && got <= need, ANVIL_ERR_INTERNAL, "utf8proc decompose failed");
    utf8proc_ssize_t bytes = utf8proc_reencode(buf, got, opt);
    CHECK(bytes >= 0, ANVIL_ERR_INTERNAL, "utf8proc: %s", utf8proc_errmsg(bytes));
    return tok_buf_append(out, buf, (size_t)bytes);
}

/* Normalizes s[0..n) into out, leaving the inert code points as they are. */
static anvil_status nf_region(tok_work *w, const char *s, size_t n, utf8proc_option_t opt, tok_buf *out)
{
    size_t run = 0, i = 0;
    while (i < n) {
        size_t l = 1;
        if ((unsigned char)s[i] >= 0x80) {
            uint32_t cp = tok_utf8_decode(s + i, n - i, &l);
            if (tok_uset_has(&tok_uset_norm_inert, cp)) {
                TRY(nf_run(w, s + run, i - run, opt, out));
                TRY(tok_buf_append(out, s + i, l));
                run = i + l;
            }
        }
        i += l;
    }
    return nf_run(w, s + run, n - run, opt, out);
}

/*
 * Normalizes s[0..n) into out. Only the stretches that can change go
 * through utf8proc: each maximal run of "unsafe" chars (with a mapping, a
 * non-zero combining class, or able to compose onto the char before),
 * together with the char just before it, which it may compose with. A safe
 * char neither changes nor interacts across itself, so the text in between
 * is copied as is.
 */
static anvil_status nf_text(tok_work *w, const char *s, size_t n, utf8proc_option_t opt, const tok_uset *unsafe,
                            tok_buf *out)
{
    size_t copied = 0, i = 0, prev = 0;
    while (i < n) {
        size_t l = 1;
        uint32_t cp = (unsigned char)s[i];
        if (cp >= 0x80)
            cp = tok_utf8_decode(s + i, n - i, &l);
        if (cp < 0x80 || !tok_uset_has(unsafe, cp)) {
            prev = i;
            i += l;
            continue;
        }
        size_t start = i > copied ? prev : i, j = i + l;
        while (j < n) {
            size_t l2 = 1;
            uint32_t c2 = (unsigned char)s[j];
            if (c2 >= 0x80)
                c2 = tok_utf8_decode(s + j, n - j, &l2);
            if (c2 < 0x80 || !tok_uset_has(unsafe, c2))
                break;
            j += l2;
        }
        TRY(tok_buf_append(out, s + copied, start - copied));
        TRY(nf_region(w, s + start, j - start, opt, out));
        copied = i = j;
    }
    return tok_buf_append(out, s + copied, n - copied);
}

static anvil_status norm_form(tok_work *w, tok_piece *p, enum tok_norm_kind kind)
{
    const tok_uset *unsafe;
    utf8proc_option_t opt = UTF8PROC_STABLE;
    switch (kind) {
    case TOK_NORM_NFC: unsafe = &tok_uset_unsafe_nfc; opt |= UTF8PROC_COMPOSE; break;
    case TOK_NORM_NFD: unsafe = &tok_uset_unsafe_nfd; opt |= UTF8PROC_DECOMPOSE; break;
    case TOK_NORM_NFKC: unsafe = &tok_uset_unsafe_nfkc; opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    default: unsafe = &tok_uset_unsafe_nfkd; opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    }
    if (!tok_utf8_any_in(tok_piece_ptr(w, p), p->len, unsafe))
        return ANVIL_OK;
    /* the input is copied first: w->text grows while we append */
    tok_buf in = {0}, out = {0};
    anvil_status st = tok_buf_append(&in, tok_piece_ptr(w, p), p->len);
    if (st == ANVIL_OK)
        st = nf_text(w, in.p, in.len, opt, unsafe, &out);
    size_t zp = 0;
    if (st == ANVIL_OK && p->zp > 0) {
        /* the chars from offset 0 map to the normalized form of that prefix */
        tok_buf z = {0};
        st = nf_text(w, in.p, p->zp < in.len ? p->zp : in.len, opt, unsafe, &z);
        zp = z.len < out.len ? z.len : out.len;
        tok_buf_free(&z);
    }
    if (st == ANVIL_OK)
        st = tok_buf_reserve(&w->text, out.len);
    if (st == ANVIL_OK) {
        if (out.len)
            memcpy(w->text.p + w->text.len, out.p, out.len);
        tok_piece_rewritten(w, p, out.len, zp);
    }
    tok_buf_free(&in);
    tok_buf_free(&out);
    return st;
}

/* ------------------------------------------------------------ other steps */

static anvil_status norm_strip(tok_work *w, tok_piece *p, int left, int right)
{
    const char *s = tok_piece_ptr(w, p);
    size_t a = 0, b = p->len, l;
    if (left)
        while (a < b && tok_uset_has(&tok_uset_rust_whitespace, tok_utf8_decode(s + a, b - a, &l)))
            a += l;
    if (right)
        while (b > a) {
            size_t k = b - 1;
            while (k > a && ((unsigned char)s[k] & 0xC0) == 0x80)
                k--;
            if (!tok_uset_has(&tok_uset_rust_whitespace, tok_utf8_decode(s + k, b - k, &l)))
                break;
            b = k;
        }
    p->zp = a > 0 ? 0 : (p->zp < b ? p->zp : b);
    p->off += a;
    p->len = b - a;
    return ANVIL_OK;
}

static anvil_status norm_prepend(tok_work *w, tok_piece *p, const char *s, size_t n)
{
    if (p->len == 0)
        return ANVIL_OK;
    TRY(tok_buf_reserve(&w->text, n + p->len));
    char *o = w->text.p + w->text.len;
    memcpy(o, s, n);
    memcpy(o + n, tok_piece_ptr(w, p), p->len);
    tok_piece_rewritten(w, p, n + p->len, p->zp ? p->zp + n : 0);
    return ANVIL_OK;
}

/* Start of the char that ends at byte e of s. */
static size_t char_start_before(const char *s, size_t e)
{
    size_t k = e - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
        k--;
    return k;
}

static anvil_status norm_replace(tok_work *w, tok_piece *p, const tok_pattern *pat, const char *rep, size_t rep_len)
{
    size_t ns = 0;
    int stage = TOK_MAX_STAGES; /* this stage's span buffer is free during normalization */
    w->n_spans[stage] = 0;
    TRY(tok_pattern_find_all(pat, tok_piece_ptr(w, p), p->len, w->md, &w->spans[stage], &w->n_spans[stage],
                             &w->cap_spans[stage]));
    ns = w->n_spans[stage];
    if (ns == 0)
        return ANVIL_OK;
    size_t out_max = p->len + ns * rep_len;
    TRY(tok_buf_reserve(&w->text, out_max));
    const char *s = tok_piece_ptr(w, p);
    char *o = w->text.p + w->text.len;
    const tok_span *sp = w->spans[stage];
    size_t k = 0, at = 0, zp = 0;
    int in_zp = p->zp > 0;
    for (size_t i = 0; i <= ns; i++) {
        size_t a = i < ns ? sp[i].s : p->len;
        /* unmatched text [at, a) */
        if (a > at) {
            memcpy(o + k, s + at, a - at);
            if (in_zp) {
                size_t z = p->zp > at ? (p->zp < a ? p->zp : a) - at : 0;
                zp += z;
                if (at + z < a)
                    in_zp = 0;
            }
            k += a - at;
        }
        if (i == ns)
            break;
        /* the replacement takes the alignment of the match's last char
         * (of the char before an empty match; (0, 0) at the very start) */
        size_t e = sp[i].e;
        int rep_zp = e > a ? char_start_before(s, e) < p->zp : (a == 0 || char_start_before(s, a) < p->zp);
        memcpy(o + k, rep, rep_len);
        if (in_zp) {
            if (rep_zp && p->zp > 0)
                zp += rep_len;
            else if (rep_len > 0)
                in_zp = 0;
        }
        k += rep_len;
        at = e;
    }
    tok_piece_rewritten(w, p, k, zp);
    return ANVIL_OK;
}

static anvil_status norm_bytelevel(tok_work *w, tok_piece *p)
{
    TRY(tok_buf_reserve(&w->text, p->len * 2));
    const unsigned char *s = (const unsigned char *)tok_piece_ptr(w, p);
    char *o = w->text.p + w->text.len;
    size_t k = 0, zp = 0;
    for (size_t i = 0; i < p->len; i++) {
        size_t m = tok_utf8_encode(w->tok->bl_char[s[i]], o + k);
        if (i < p->zp)
            zp += m;
        k += m;
    }
    tok_piece_rewritten(w, p, k, zp);
    return ANVIL_OK;
}

static anvil_status norm_lower(tok_work *w, tok_piece *p)
{
    const char *s = tok_piece_ptr(w, p);
    for (size_t i = 0; i < p->len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80)
            return map_chars(w, p, fn_lower, NULL);
        if (c >= 'A' && c <= 'Z')
            goto ascii;
    }
    return ANVIL_OK; /* nothing to lower */
ascii:
    for (size_t i = 0; i < p->len; i++)
        if ((unsigned char)s[i] >= 0x80)
            return map_chars(w, p, fn_lower, NULL);
    TRY(tok_buf_reserve(&w->text, p->len));
    s = tok_piece_ptr(w, p);
    char *o = w->text.p + w->text.len;
    for (size_t i = 0; i < p->len; i++)
        o[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] + 32) : s[i];
    tok_piece_rewritten(w, p, p->len, p->zp);
    return ANVIL_OK;
}

static anvil_status run_step(tok_work *w, const tok_norm *n, tok_piece *p)
{
    switch (n->kind) {
    case TOK_NORM_NFC:
    case TOK_NORM_NFD:
    case TOK_NORM_NFKC:
    case TOK_NORM_NFKD:
        return norm_form(w, p, n->kind);
    case TOK_NORM_LOWERCASE:
        return norm_lower(w, p);
    case TOK_NORM_STRIP:
        return norm_strip(w, p, n->strip_left, n->strip_right);
    case TOK_NORM_STRIP_ACCENTS:
        return map_chars(w, p, fn_strip_accents, NULL);
    case TOK_NORM_REPLACE:
        return norm_replace(w, p, &n->pat, n->str, n->str_len);
    case TOK_NORM_PREPEND:
        return norm_prepend(w, p, n->str, n->str_len);
    case TOK_NORM_NMT:
        return map_chars(w, p, fn_nmt, NULL);
    case TOK_NORM_BYTELEVEL:
        return norm_bytelevel(w, p);
    case TOK_NORM_BERT:
        if (n->bert_clean)
            TRY(map_chars(w, p, fn_bert_clean, NULL));
        if (n->bert_chinese)
            TRY(map_chars(w, p, fn_bert_chinese, NULL));
        if (n->bert_strip_accents) {
            TRY(norm_form(w, p, TOK_NORM_NFD));
            TRY(map_chars(w, p, fn_bert_mn, NULL));
        }
        if (n->bert_lower)
            TRY(norm_lower(w, p));
        return ANVIL_OK;
    }
    return ANVIL_FAIL(ANVIL_ERR_INTERNAL, "unknown normalizer %d", (int)n->kind);
}

anvil_status tok_normalize(tok_work *w, tok_piece *p)
{
    for (int i = 0; i < w->tok->n_norms; i++)
        TRY(run_step(w, &w->tok->norms[i], p));
    return ANVIL_OK;
}

anvil_status tok_normalize_string(const anvil_tokenizer *tok, const char *s, size_t n, tok_buf *out)
{
    tok_work w;
    tok_work_init(&w, tok);
    anvil_status st = w.md ? tok_buf_append(&w.text, s, n) : ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    tok_piece p = {0, n, n ? tok_utf8_len((unsigned char)s[0]) : 0, 0, 0};
    if (st == ANVIL_OK)
        st = tok_normalize(&w, &p);
    if (st == ANVIL_OK)
        st = tok_buf_append(out, tok_piece_ptr(&w, &p), p.len);
    tok_work_free(&w);
    return st;
}
