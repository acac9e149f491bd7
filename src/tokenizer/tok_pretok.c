/*
 * Pre-tokenizers (HF pre_tokenizers/): each step splits a piece into
 * sub-pieces (and may rewrite it), then hands every non-empty sub-piece to
 * the next step; after the last step the BPE model tokenizes it. Splitting
 * follows HF's SplitDelimiterBehavior rules exactly, including how runs of
 * matches fold for MergedWithPrevious / MergedWithNext / Contiguous.
 *
 * The byte-level mapping (each byte to a printable char, GPT-2's
 * bytes_to_unicode) is left to the model when ByteLevel is the last step:
 * the model then works on raw bytes with a 256-entry table, which saves
 * building a string twice the size of the input.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "tokenizer/tok_internal.h"

#define GPT2_PATTERN "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define WHITESPACE_PATTERN "\\w+|[^\\w\\s]+"

/* ------------------------------------------------------------ loading */

static anvil_status add_step(anvil_tokenizer *tok, tok_pre *p)
{
    CHECK(tok->n_pres < TOK_MAX_STAGES, ANVIL_ERR_UNSUPPORTED, "tokenizer.json: more than %d pre-tokenizer steps",
          TOK_MAX_STAGES);
    tok_pre *s = realloc(tok->pres, (size_t)(tok->n_pres + 1) * sizeof *s);
    CHECK(s, ANVIL_ERR_OOM, "out of memory");
    tok->pres = s;
    tok->pres[tok->n_pres++] = *p;
    return ANVIL_OK;
}

static anvil_status parse_behavior(json_t *j, enum tok_behavior def, enum tok_behavior *out, const char *what)
{
    const char *b;
    TRY(tok_json_str(j, "behavior", &b, NULL, what));
    if (!b) {
        *out = def;
        return ANVIL_OK;
    }
    static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    for (int i = 0; i < 5; i++)
        if (strcmp(b, names[i]) == 0) {
            *out = (enum tok_behavior)i;
            return ANVIL_OK;
        }
    return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "tokenizer.json: %s behavior '%s' is not supported", what, b);
}

static anvil_status load_one(anvil_tokenizer *tok, json_t *j, int depth)
{
    CHECK(depth < 16, ANVIL_ERR_FORMAT, "tokenizer.json: pre-tokenizers nested too deep");
    CHECK(json_is_object(j), ANVIL_ERR_FORMAT, "tokenizer.json: a pre-tokenizer must be an object");
    const char *type;
    TRY(tok_json_str(j, "type", &type, NULL, "pre_tokenizer"));
    CHECK(type, ANVIL_ERR_FORMAT, "tokenizer.json: a pre-tokenizer has no type");
    tok_pre p;
    memset(&p, 0, sizeof p);
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(j, "pretokenizers");
        CHECK(json_is_array(list), ANVIL_ERR_FORMAT, "tokenizer.json: pre-tokenizer Sequence needs 'pretokenizers'");
        for (size_t i = 0; i < json_array_size(list); i++)
            TRY(load_one(tok, json_array_get(list, i), depth + 1));
        return ANVIL_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        p.kind = TOK_PRE_BYTELEVEL;
        TRY(tok_json_bool(j, "add_prefix_space", 1, &p.add_prefix_space, "ByteLevel"));
        TRY(tok_json_bool(j, "use_regex", 1, &p.use_regex, "ByteLevel"));
        if (p.use_regex && !tok->have_bytelevel_re) {
            TRY(tok_regex_compile(&tok->bytelevel_re, GPT2_PATTERN, strlen(GPT2_PATTERN)));
            tok->have_bytelevel_re = 1;
        }
    } else if (strcmp(type, "Split") == 0) {
        p.kind = TOK_PRE_SPLIT;
        TRY(parse_behavior(j, TOK_SPLIT_ISOLATED, &p.behavior, "Split"));
        TRY(tok_json_bool(j, "invert", 0, &p.invert, "Split"));
        TRY(tok_pattern_parse(&p.pat, json_object_get(j, "pattern"), "Split"));
    } else if (strcmp(type, "Metaspace") == 0) {
        uint32_t rep;
        p.kind = TOK_PRE_METASPACE;
        TRY(tok_json_char(j, "replacement", 0x2581, &rep, "Metaspace"));
        p.rep_len = tok_utf8_encode(rep, p.rep);
        TRY(tok_json_bool(j, "split", 1, &p.split, "Metaspace"));
        const char *scheme;
        TRY(tok_json_str(j, "prepend_scheme", &scheme, NULL, "Metaspace"));
        json_t *aps = json_object_get(j, "add_prefix_space");
        p.prepend = TOK_PREPEND_ALWAYS;
        if (scheme) {
            if (strcmp(scheme, "first") == 0)
                p.prepend = TOK_PREPEND_FIRST;
            else if (strcmp(scheme, "never") == 0)
                p.prepend = TOK_PREPEND_NEVER;
            else
                CHECK(strcmp(scheme, "always") == 0, ANVIL_ERR_FORMAT,
                      "tokenizer.json: Metaspace prepend_scheme '%s' is unknown", scheme);
        }
        if (json_is_false(aps)) { /* legacy field */
            CHECK(!scheme || p.prepend == TOK_PREPEND_NEVER, ANVIL_ERR_FORMAT,
                  "tokenizer.json: Metaspace add_prefix_space does not match prepend_scheme");
            p.prepend = TOK_PREPEND_NEVER;
        }
    } else if (strcmp(type, "Digits") == 0) {
        p.kind = TOK_PRE_DIGITS;
        TRY(tok_json_bool(j, "individual_digits", 0, &p.individual_digits, "Digits"));
    } else if (strcmp(type, "Whitespace") == 0) {
        p.kind = TOK_PRE_WHITESPACE;
        if (!tok->have_whitespace_re) {
            TRY(tok_regex_compile(&tok->whitespace_re, WHITESPACE_PATTERN, strlen(WHITESPACE_PATTERN)));
            tok->have_whitespace_re = 1;
        }
    } else if (strcmp(type, "WhitespaceSplit") == 0) {
        p.kind = TOK_PRE_WHITESPACE_SPLIT;
    } else if (strcmp(type, "Punctuation") == 0) {
        p.kind = TOK_PRE_PUNCTUATION;
        TRY(parse_behavior(j, TOK_SPLIT_ISOLATED, &p.behavior, "Punctuation"));
    } else if (strcmp(type, "BertPreTokenizer") == 0) {
        p.kind = TOK_PRE_WHITESPACE_SPLIT;
        TRY(add_step(tok, &p));
        memset(&p, 0, sizeof p);
        p.kind = TOK_PRE_PUNCTUATION;
        p.behavior = TOK_SPLIT_ISOLATED;
    } else if (strcmp(type, "CharDelimiterSplit") == 0) {
        p.kind = TOK_PRE_CHAR_DELIMITER;
        TRY(tok_json_char(j, "delimiter", ' ', &p.delim, "CharDelimiterSplit"));
    } else {
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "tokenizer.json: pre-tokenizer '%s' is not supported", type);
    }
    anvil_status st = add_step(tok, &p);
    if (st != ANVIL_OK)
        tok_pattern_free(&p.pat);
    return st;
}

anvil_status tok_pre_load(anvil_tokenizer *tok, json_t *j)
{
    if (!j || json_is_null(j))
        return ANVIL_OK;
    TRY(load_one(tok, j, 0));
    for (int i = 0; i < tok->n_pres; i++) {
        tok_pre *p = &tok->pres[i];
        if (p->kind == TOK_PRE_SPLIT && p->pat.is_regex)
            p->re = &p->pat.re;
        else if (p->kind == TOK_PRE_BYTELEVEL && p->use_regex)
            p->re = &tok->bytelevel_re;
        else if (p->kind == TOK_PRE_WHITESPACE)
            p->re = &tok->whitespace_re;
    }
    return ANVIL_OK;
}

void tok_pre_free_all(anvil_tokenizer *tok)
{
    for (int i = 0; i < tok->n_pres; i++)
        tok_pattern_free(&tok->pres[i].pat);
    free(tok->pres);
    tok->pres = NULL;
    tok->n_pres = 0;
}

/* ------------------------------------------------------------ splitting */

/* Turns the match spans of stage k over piece p into HF's (range, is_match)
 * list, applies the behavior and runs the next stage on each result. */
static anvil_status split_and_continue(tok_work *w, int k, tok_piece p, int invert, enum tok_behavior beh)
{
    tok_vec_piece *ev = &w->stage[k];
    const tok_span *sp = w->spans[k];
    size_t ns = w->n_spans[k];
    ev->n = 0;
    TRY(tok_grow((void **)&ev->p, &ev->cap, 2 * ns + 2, sizeof *ev->p));
    /* events: off/len relative to the piece, zp = is_match */
    size_t prev = 0;
    for (size_t i = 0; i < ns; i++) {
        if (prev != sp[i].s)
            ev->p[ev->n++] = (tok_piece){prev, sp[i].s - prev, (size_t)invert, 0};
        ev->p[ev->n++] = (tok_piece){sp[i].s, sp[i].e - sp[i].s, (size_t)!invert, 0};
        prev = sp[i].e;
    }
    if (prev != p.len)
        ev->p[ev->n++] = (tok_piece){prev, p.len - prev, (size_t)invert, 0};

    /* fold (in place: the output never runs ahead of the input) */
    size_t out = 0;
    switch (beh) {
    case TOK_SPLIT_REMOVED:
        for (size_t i = 0; i < ev->n; i++)
            if (!ev->p[i].zp)
                ev->p[out++] = ev->p[i];
        break;
    case TOK_SPLIT_ISOLATED:
        out = ev->n;
        break;
    case TOK_SPLIT_MERGED_PREV: {
        int prev_match = 0;
        for (size_t i = 0; i < ev->n; i++) {
            tok_piece e = ev->p[i];
            int m = (int)e.zp;
            if (m && !prev_match && out > 0)
                ev->p[out - 1].len = e.off + e.len - ev->p[out - 1].off;
            else
                ev->p[out++] = e;
            prev_match = m;
        }
        break;
    }
    case TOK_SPLIT_MERGED_NEXT: {
        /* HF folds from the end: a match joins the piece after it */
        int prev_match = 0;
        size_t w_at = ev->n; /* write from the back */
        for (size_t i = ev->n; i-- > 0;) {
            tok_piece e = ev->p[i];
            int m = (int)e.zp;
            if (m && !prev_match && w_at < ev->n) {
                tok_piece *last = &ev->p[w_at];
                last->len = last->off + last->len - e.off;
                last->off = e.off;
            } else {
                ev->p[--w_at] = e;
            }
            prev_match = m;
        }
        memmove(ev->p, ev->p + w_at, (ev->n - w_at) * sizeof *ev->p);
        out = ev->n - w_at;
        break;
    }
    case TOK_SPLIT_CONTIGUOUS: {
        int prev_match = 0;
        for (size_t i = 0; i < ev->n; i++) {
            tok_piece e = ev->p[i];
            int m = (int)e.zp;
            if (m == prev_match && out > 0)
                ev->p[out - 1].len = e.off + e.len - ev->p[out - 1].off;
            else
                ev->p[out++] = e;
            prev_match = m;
        }
        break;
    }
    }
    for (size_t i = 0; i < out; i++) {
        tok_piece e = w->stage[k].p[i]; /* re-read: deeper stages never touch stage k */
        tok_piece sub = {p.off + e.off, e.len, p.zp > e.off ? p.zp - e.off : 0, p.raw};
        TRY(tok_pretokenize(w, k + 1, sub));
    }
    return ANVIL_OK;
}

typedef int (*char_pred)(uint32_t cp, const tok_pre *pre);

static int pred_numeric(uint32_t cp, const tok_pre *pre)
{
    (void)pre;
    if (cp < 0x80)
        return cp >= '0' && cp <= '9';
    return tok_uset_has(&tok_uset_rust_numeric, cp);
}

static int pred_whitespace(uint32_t cp, const tok_pre *pre)
{
    (void)pre;
    if (cp < 0x80)
        return cp == ' ' || (cp >= 0x9 && cp <= 0xD);
    return tok_uset_has(&tok_uset_rust_whitespace, cp);
}

static int pred_punct(uint32_t cp, const tok_pre *pre)
{
    (void)pre;
    return tok_uset_has(&tok_uset_punct, cp);
}

static int pred_delim(uint32_t cp, const tok_pre *pre)
{
    return cp == pre->delim;
}

/* Every char matching pred is one match (HF's Pattern for Fn(char) -> bool). */
static anvil_status char_spans(tok_work *w, int k, tok_piece p, char_pred pred, const tok_pre *pre)
{
    const char *s = tok_piece_ptr(w, &p);
    w->n_spans[k] = 0;
    for (size_t i = 0; i < p.len;) {
        size_t l;
        uint32_t cp = tok_utf8_decode(s + i, p.len - i, &l);
        if (pred(cp, pre)) {
            TRY(tok_grow((void **)&w->spans[k], &w->cap_spans[k], w->n_spans[k] + 1, sizeof *w->spans[k]));
            w->spans[k][w->n_spans[k]++] = (tok_span){i, i + l};
        }
        i += l;
    }
    return ANVIL_OK;
}

/* Rewrites piece p: every occurrence of byte ' ' becomes rep (Metaspace). */
static anvil_status replace_spaces(tok_work *w, tok_piece *p, const char *rep, size_t rep_len)
{
    const char *s = tok_piece_ptr(w, p);
    if (!memchr(s, ' ', p->len))
        return ANVIL_OK;
    TRY(tok_buf_reserve(&w->text, p->len * rep_len));
    s = tok_piece_ptr(w, p);
    char *o = w->text.p + w->text.len;
    size_t k = 0, zp = 0;
    for (size_t i = 0; i < p->len; i++) {
        size_t before = k;
        if (s[i] == ' ') {
            memcpy(o + k, rep, rep_len);
            k += rep_len;
        } else {
            o[k++] = s[i];
        }
        if (i < p->zp)
            zp += k - before;
    }
    p->off = w->text.len;
    p->len = k;
    p->zp = zp;
    w->text.len += k;
    return ANVIL_OK;
}

static anvil_status prepend(tok_work *w, tok_piece *p, const char *s, size_t n)
{
    TRY(tok_buf_reserve(&w->text, p->len + n));
    size_t off = w->text.len;
    memcpy(w->text.p + off, s, n);
    memcpy(w->text.p + off + n, w->text.p + p->off, p->len);
    w->text.len += n + p->len;
    p->off = off;
    p->len += n;
    p->zp = p->zp ? p->zp + n : 0;
    return ANVIL_OK;
}

/* Byte-level mapping written out as UTF-8 (when the model cannot take raw bytes). */
static anvil_status map_bytes(tok_work *w, tok_piece *p)
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
    p->off = w->text.len;
    p->len = k;
    p->zp = zp;
    w->text.len += k;
    return ANVIL_OK;
}

anvil_status tok_pretokenize(tok_work *w, int k, tok_piece p)
{
    const anvil_tokenizer *tok = w->tok;
    if (p.len == 0)
        return ANVIL_OK; /* HF drops empty splits */
    if (k == tok->n_pres)
        return tok_bpe_tokenize(w, tok_piece_ptr(w, &p), p.len, p.raw);
    const tok_pre *pre = &tok->pres[k];
    switch (pre->kind) {
    case TOK_PRE_BYTELEVEL:
        if (pre->add_prefix_space && tok_piece_ptr(w, &p)[0] != ' ')
            TRY(prepend(w, &p, " ", 1));
        if (pre->use_regex) {
            w->n_spans[k] = 0;
            TRY(tok_regex_find_all(pre->re, tok_piece_ptr(w, &p), p.len, w->md, &w->spans[k], &w->n_spans[k],
                                   &w->cap_spans[k]));
            /* map after splitting: each sub-piece maps on its own */
            tok_vec_piece *ev = &w->stage[k];
            ev->n = 0;
            size_t ns = w->n_spans[k], prev = 0;
            TRY(tok_grow((void **)&ev->p, &ev->cap, 2 * ns + 2, sizeof *ev->p));
            for (size_t i = 0; i < ns; i++) {
                const tok_span *sp = &w->spans[k][i];
                if (prev != sp->s)
                    ev->p[ev->n++] = (tok_piece){prev, sp->s - prev, 0, 0};
                ev->p[ev->n++] = (tok_piece){sp->s, sp->e - sp->s, 0, 0};
                prev = sp->e;
            }
            if (prev != p.len)
                ev->p[ev->n++] = (tok_piece){prev, p.len - prev, 0, 0};
            for (size_t i = 0; i < w->stage[k].n; i++) {
                tok_piece e = w->stage[k].p[i];
                tok_piece sub = {p.off + e.off, e.len, p.zp > e.off ? p.zp - e.off : 0, 0};
                if (sub.len == 0)
                    continue;
                if (pre->raw_out)
                    sub.raw = 1;
                else
                    TRY(map_bytes(w, &sub));
                TRY(tok_pretokenize(w, k + 1, sub));
            }
            return ANVIL_OK;
        }
        if (pre->raw_out)
            p.raw = 1;
        else
            TRY(map_bytes(w, &p));
        return tok_pretokenize(w, k + 1, p);
    case TOK_PRE_METASPACE: {
        TRY(replace_spaces(w, &p, pre->rep, pre->rep_len));
        int starts = p.len >= pre->rep_len && memcmp(tok_piece_ptr(w, &p), pre->rep, pre->rep_len) == 0;
        if (!starts && (pre->prepend == TOK_PREPEND_ALWAYS || (pre->prepend == TOK_PREPEND_FIRST && p.zp > 0)))
            TRY(prepend(w, &p, pre->rep, pre->rep_len));
        if (!pre->split)
            return tok_pretokenize(w, k + 1, p);
        /* split on the replacement char, MergedWithNext */
        const char *s = tok_piece_ptr(w, &p);
        w->n_spans[k] = 0;
        for (size_t i = 0; i + pre->rep_len <= p.len;) {
            const char *f = memmem(s + i, p.len - i, pre->rep, pre->rep_len);
            if (!f)
                break;
            size_t at = (size_t)(f - s);
            TRY(tok_grow((void **)&w->spans[k], &w->cap_spans[k], w->n_spans[k] + 1, sizeof *w->spans[k]));
            w->spans[k][w->n_spans[k]++] = (tok_span){at, at + pre->rep_len};
            i = at + pre->rep_len;
        }
        return split_and_continue(w, k, p, 0, TOK_SPLIT_MERGED_NEXT);
    }
    case TOK_PRE_SPLIT:
        w->n_spans[k] = 0;
        TRY(tok_pattern_find_all(&pre->pat, tok_piece_ptr(w, &p), p.len, w->md, &w->spans[k], &w->n_spans[k],
                                 &w->cap_spans[k]));
        return split_and_continue(w, k, p, pre->invert, pre->behavior);
    case TOK_PRE_WHITESPACE:
        w->n_spans[k] = 0;
        TRY(tok_regex_find_all(pre->re, tok_piece_ptr(w, &p), p.len, w->md, &w->spans[k], &w->n_spans[k],
                               &w->cap_spans[k]));
        return split_and_continue(w, k, p, 1, TOK_SPLIT_REMOVED);
    case TOK_PRE_DIGITS:
        TRY(char_spans(w, k, p, pred_numeric, pre));
        return split_and_continue(w, k, p, 0, pre->individual_digits ? TOK_SPLIT_ISOLATED : TOK_SPLIT_CONTIGUOUS);
    case TOK_PRE_WHITESPACE_SPLIT:
        TRY(char_spans(w, k, p, pred_whitespace, pre));
        return split_and_continue(w, k, p, 0, TOK_SPLIT_REMOVED);
    case TOK_PRE_PUNCTUATION:
        TRY(char_spans(w, k, p, pred_punct, pre));
        return split_and_continue(w, k, p, 0, pre->behavior);
    case TOK_PRE_CHAR_DELIMITER:
        TRY(char_spans(w, k, p, pred_delim, pre));
        return split_and_continue(w, k, p, 0, TOK_SPLIT_REMOVED);
    }
    return ANVIL_FAIL(ANVIL_ERR_INTERNAL, "unknown pre-tokenizer %d", (int)pre->kind);
}
