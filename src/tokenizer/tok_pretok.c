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

/*
 * A split runs as a stream: matches come one at a time, each becomes HF's
 * (range, is_match) events (the gap before it, then the match), and the
 * behavior folds them with at most one event held back, so no per-match
 * array is built for a long text. Each resulting non-empty range goes
 * straight to the next step.
 */
typedef struct splitter {
    tok_work *w;
    int k;       /* this step; results go to step k + 1 */
    tok_piece p; /* the piece being split */
    enum tok_behavior beh;
    int invert;
    int have;      /* a held range [ha, hb) */
    size_t ha, hb;
    int held_match; /* MergedWithNext: the held range is a match */
    int prev_match;
    size_t at;     /* end of the last event */
    int bytelevel; /* results still need the byte-level mapping of step k */
} splitter;

static anvil_status bytelevel_tail(tok_work *w, int k, tok_piece p);

static anvil_status emit(splitter *sp, size_t a, size_t b)
{
    if (b <= a)
        return ANVIL_OK; /* HF drops empty splits */
    tok_piece sub = tok_piece_sub(sp->p, a, b);
    if (sp->bytelevel)
        return bytelevel_tail(sp->w, sp->k, sub);
    return tok_pretokenize(sp->w, sp->k + 1, sub);
}

static anvil_status flush_held(splitter *sp)
{
    if (!sp->have)
        return ANVIL_OK;
    sp->have = 0;
    return emit(sp, sp->ha, sp->hb);
}

static anvil_status event(splitter *sp, size_t a, size_t b, int m)
{
    if (sp->invert)
        m = !m;
    switch (sp->beh) {
    case TOK_SPLIT_REMOVED:
        return m ? ANVIL_OK : emit(sp, a, b);
    case TOK_SPLIT_ISOLATED:
        return emit(sp, a, b);
    case TOK_SPLIT_MERGED_PREV:
        /* a match joins the piece before it (unless that was a match too) */
        if (m && !sp->prev_match && sp->have) {
            sp->hb = b;
        } else {
            TRY(flush_held(sp));
            sp->have = 1;
            sp->ha = a;
            sp->hb = b;
        }
        sp->prev_match = m;
        return ANVIL_OK;
    case TOK_SPLIT_CONTIGUOUS:
        if (m == sp->prev_match && sp->have) {
            sp->hb = b;
        } else {
            TRY(flush_held(sp));
            sp->have = 1;
            sp->ha = a;
            sp->hb = b;
        }
        sp->prev_match = m;
        return ANVIL_OK;
    case TOK_SPLIT_MERGED_NEXT:
        /* HF folds from the end: a match joins the piece after it, unless that is a match */
        if (sp->have) {
            if (!m) {
                sp->have = 0;
                return emit(sp, sp->ha, b);
            }
            TRY(flush_held(sp));
        }
        if (m) {
            sp->have = 1;
            sp->ha = a;
            sp->hb = b;
            return ANVIL_OK;
        }
        return emit(sp, a, b);
    }
    return ANVIL_OK;
}

/* One match [s, e): the gap before it, then the match itself. */
static anvil_status match(splitter *sp, size_t s, size_t e)
{
    if (sp->at != s)
        TRY(event(sp, sp->at, s, 0));
    TRY(event(sp, s, e, 1));
    sp->at = e;
    return ANVIL_OK;
}

static anvil_status finish(splitter *sp)
{
    if (sp->at != sp->p.len)
        TRY(event(sp, sp->at, sp->p.len, 0));
    return flush_held(sp);
}

static void splitter_init(splitter *sp, tok_work *w, int k, tok_piece p, enum tok_behavior beh, int invert)
{
    memset(sp, 0, sizeof *sp);
    sp->w = w;
    sp->k = k;
    sp->p = p;
    sp->beh = beh;
    sp->invert = invert;
}

static anvil_status split_regex(tok_work *w, int k, tok_piece p, const tok_regex *re, enum tok_behavior beh, int invert,
                                int bytelevel)
{
    splitter sp;
    splitter_init(&sp, w, k, p, beh, invert);
    sp.bytelevel = bytelevel;
    tok_regex_iter it;
    tok_regex_iter_init(&it, re, tok_piece_ptr(w, &p), p.len);
    anvil_status st = ANVIL_OK;
    size_t s, e;
    /* the arena may move while later steps run: take the pointer afresh */
    while (tok_regex_iter_next(&it, tok_piece_ptr(w, &p), p.len, w->md, &s, &e, &st))
        TRY(match(&sp, s, e));
    TRY(st);
    return finish(&sp);
}

static anvil_status split_pattern(tok_work *w, int k, tok_piece p, const tok_pattern *pat, enum tok_behavior beh,
                                  int invert)
{
    if (pat->is_regex)
        return split_regex(w, k, p, &pat->re, beh, invert, 0);
    splitter sp;
    splitter_init(&sp, w, k, p, beh, invert);
    tok_pattern_iter it;
    tok_pattern_iter_init(&it, pat, tok_piece_ptr(w, &p), p.len);
    anvil_status st = ANVIL_OK;
    size_t s, e;
    while (tok_pattern_iter_next(&it, pat, tok_piece_ptr(w, &p), p.len, w->md, &s, &e, &st))
        TRY(match(&sp, s, e));
    TRY(st);
    return finish(&sp);
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
static anvil_status split_chars(tok_work *w, int k, tok_piece p, char_pred pred, const tok_pre *pre,
                                enum tok_behavior beh)
{
    splitter sp;
    splitter_init(&sp, w, k, p, beh, 0);
    for (size_t i = 0; i < p.len;) {
        size_t l;
        uint32_t cp = tok_utf8_decode(tok_piece_ptr(w, &p) + i, p.len - i, &l);
        if (pred(cp, pre))
            TRY(match(&sp, i, i + l));
        i += l;
    }
    return finish(&sp);
}

/* Rewrites piece p: every byte ' ' becomes rep (Metaspace). */
static anvil_status replace_spaces(tok_work *w, tok_piece *p, const char *rep, size_t rep_len)
{
    const char *s = tok_piece_ptr(w, p);
    const char *sp = memchr(s, ' ', p->len);
    if (!sp)
        return ANVIL_OK;
    size_t n_sp = 0;
    for (const char *q = sp; q; q = memchr(q + 1, ' ', p->len - (size_t)(q + 1 - s)))
        n_sp++;
    TRY(tok_buf_reserve(&w->text, p->len + n_sp * rep_len));
    s = tok_piece_ptr(w, p);
    char *o = w->text.p + w->text.len;
    size_t k = 0, at = 0, zp = 0;
    while (at < p->len) {
        const char *f = memchr(s + at, ' ', p->len - at);
        size_t e = f ? (size_t)(f - s) : p->len;
        memcpy(o + k, s + at, e - at);
        k += e - at;
        if (at < p->zp)
            zp = k - (e > p->zp ? e - p->zp : 0);
        if (!f)
            break;
        memcpy(o + k, rep, rep_len);
        k += rep_len;
        if (e < p->zp)
            zp = k;
        at = e + 1;
    }
    tok_piece_rewritten(w, p, k, zp);
    return ANVIL_OK;
}

static anvil_status prepend(tok_work *w, tok_piece *p, const char *s, size_t n)
{
    TRY(tok_buf_reserve(&w->text, p->len + n));
    char *o = w->text.p + w->text.len;
    memcpy(o, s, n);
    memcpy(o + n, tok_piece_ptr(w, p), p->len);
    tok_piece_rewritten(w, p, p->len + n, p->zp ? p->zp + n : 0);
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
    tok_piece_rewritten(w, p, k, zp);
    return ANVIL_OK;
}

/* The byte-level step after its split: map (or mark raw), then go on. */
static anvil_status bytelevel_tail(tok_work *w, int k, tok_piece p)
{
    if (w->tok->pres[k].raw_out)
        p.raw = 1;
    else
        TRY(map_bytes(w, &p));
    return tok_pretokenize(w, k + 1, p);
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
        if (!pre->use_regex)
            return bytelevel_tail(w, k, p);
        /* GPT-2's split (Isolated), then each sub-piece maps on its own */
        return split_regex(w, k, p, pre->re, TOK_SPLIT_ISOLATED, 0, 1);
    case TOK_PRE_METASPACE: {
        TRY(replace_spaces(w, &p, pre->rep, pre->rep_len));
        int starts = p.len >= pre->rep_len && memcmp(tok_piece_ptr(w, &p), pre->rep, pre->rep_len) == 0;
        if (!starts && (pre->prepend == TOK_PREPEND_ALWAYS || (pre->prepend == TOK_PREPEND_FIRST && p.zp > 0)))
            TRY(prepend(w, &p, pre->rep, pre->rep_len));
        if (!pre->split)
            return tok_pretokenize(w, k + 1, p);
        tok_pattern lit = {0, (char *)pre->rep, pre->rep_len, {0}};
        return split_pattern(w, k, p, &lit, TOK_SPLIT_MERGED_NEXT, 0);
    }
    case TOK_PRE_SPLIT:
        return split_pattern(w, k, p, &pre->pat, pre->behavior, pre->invert);
    case TOK_PRE_WHITESPACE:
        return split_regex(w, k, p, pre->re, TOK_SPLIT_REMOVED, 1, 0);
    case TOK_PRE_DIGITS:
        return split_chars(w, k, p, pred_numeric, pre,
                           pre->individual_digits ? TOK_SPLIT_ISOLATED : TOK_SPLIT_CONTIGUOUS);
    case TOK_PRE_WHITESPACE_SPLIT:
        return split_chars(w, k, p, pred_whitespace, pre, TOK_SPLIT_REMOVED);
    case TOK_PRE_PUNCTUATION:
        return split_chars(w, k, p, pred_punct, pre, pre->behavior);
    case TOK_PRE_CHAR_DELIMITER:
        return split_chars(w, k, p, pred_delim, pre, TOK_SPLIT_REMOVED);
    }
    return ANVIL_FAIL(ANVIL_ERR_INTERNAL, "unknown pre-tokenizer %d", (int)pre->kind);
}
