/*
 * Streaming detokenization. The text of a token depends on its neighbours
 * (SentencePiece's leading-space strip, byte tokens that only form a
 * character together, byte-level pieces of one UTF-8 character), so a token
 * cannot be decoded alone. As TGI and vLLM do, the detokenizer decodes a
 * small window of ids twice, with and without the new ones, and emits the
 * difference:
 *
 *     prefix = decode(ids[po:ro])   full = decode(ids[po:n])
 *     if full extends prefix and its end is final: emit full[len(prefix):],
 *         po = ro, ro = n
 *
 * "Final" is decided by the decoders themselves rather than by looking for
 * U+FFFD: a byte-level stream that ends inside a UTF-8 character, or a run
 * of <0xXX> byte tokens at the end (HF's ByteFallback turns a whole invalid
 * run into U+FFFDs, so a later byte can change earlier text), is held back.
 * The window starts where a previous emission ended, i.e. at a character
 * boundary, so the window decodes the same as it does inside the full
 * sequence, and the concatenation of everything emitted equals the full
 * decode. Cost per push: two decodes of a window of a few tokens.
 *
 * Context (anvil_detokenizer_prime): a generation's ids follow a prompt, and
 * their text is the text they add to it (Hugging Face's
 * decode(prompt + gen)[len(decode(prompt)):], vLLM's prefix_offset /
 * read_offset): the first generated word keeps the space a SentencePiece
 * decoder strips at the start of a text. The window then starts as the
 * prompt's last few ids, never emitted: po = 0, ro = their count. It does
 * not start inside a byte-fallback run, so what the new ids add is what
 * they add to the whole prompt. When the new ids change the context's own
 * text (a prompt that ends inside a character: its U+FFFDs become the
 * character; or a byte run made invalid), the first text does not extend
 * the context's; the context was never emitted, so the text from where the
 * two differ is emitted (the whole character).
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "tokenizer/tok_internal.h"

struct anvil_detokenizer {
    const anvil_tokenizer *tok;
    int skip;
    int32_t *ids;
    size_t n, cap;
    size_t po, ro;
    tok_buf prefix, full, out;
    int prefix_valid;
    int in_context;       /* the window still begins with primed ids, none emitted */
};

/* Primed context: the prompt's last DETOK_CONTEXT ids (vLLM keeps 5 too),
 * moved back to a clean start, at most DETOK_CONTEXT_MAX further. */
#define DETOK_CONTEXT 5
#define DETOK_CONTEXT_MAX 64

anvil_status anvil_detokenizer_create(const anvil_tokenizer *tok, int skip_special_tokens, anvil_detokenizer **out)
{
    CHECK(out != NULL, ANVIL_ERR_INVALID_ARG, "out must not be NULL");
    *out = NULL;
    CHECK(tok != NULL, ANVIL_ERR_INVALID_ARG, "tokenizer must not be NULL");
    anvil_detokenizer *d = calloc(1, sizeof *d);
    CHECK(d, ANVIL_ERR_OOM, "out of memory");
    d->tok = tok;
    d->skip = skip_special_tokens;
    *out = d;
    return ANVIL_OK;
}

void anvil_detokenizer_free(anvil_detokenizer *d)
{
    if (!d)
        return;
    free(d->ids);
    tok_buf_free(&d->prefix);
    tok_buf_free(&d->full);
    tok_buf_free(&d->out);
    free(d);
}

/* 1 when id reaches the decoder chain (it exists and is not a skipped special token). */
static int decoded(const anvil_detokenizer *d, int32_t id)
{
    const anvil_tokenizer *tok = d->tok;
    return id >= 0 && (uint32_t)id < tok->n_ids && tok->id_str[id] &&
           !(d->skip && (tok->id_flags[id] & TOK_ID_SPECIAL));
}

static int has_decoder(const anvil_tokenizer *tok, enum tok_dec_kind kind)
{
    for (int i = 0; tok->has_decoder && i < tok->n_decs; i++)
        if (tok->decs[i].kind == kind)
            return 1;
    return 0;
}

/* 1 for a byte-fallback token "<0xHH>". */
static int byte_piece(const anvil_tokenizer *tok, int32_t id)
{
    const char *s = tok->id_str[id];
    return tok->id_len[id] == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>';
}

/* 1 when ids[k..n) decodes as it does after ids[..k), whatever ids follow:
 * k is not inside a byte-fallback run (ByteFallback turns a whole invalid
 * run into U+FFFDs, so the run's start changes its text). Skipped ids
 * (special tokens with skip) do not separate what is around them. A
 * byte-level window may start on a continuation byte: it decodes to U+FFFD
 * with or without what follows, the same in both decodes of a push. */
static int clean_start(const anvil_detokenizer *d, const int32_t *ids, size_t k, size_t n)
{
    const anvil_tokenizer *tok = d->tok;
    size_t a = k, b = k;
    while (a < n && !decoded(d, ids[a]))
        a++;
    while (b > 0 && !decoded(d, ids[b - 1]))
        b--;
    if (b == 0 || !has_decoder(tok, TOK_DEC_BYTEFALLBACK) || !byte_piece(tok, ids[b - 1]))
        return 1;
    return a < n && !byte_piece(tok, ids[a]); /* a == n: the pushed ids may continue the run */
}

anvil_status anvil_detokenizer_prime(anvil_detokenizer *d, const int32_t *ids, size_t n)
{
    CHECK(d && (ids || n == 0), ANVIL_ERR_INVALID_ARG, "bad arguments");
    CHECK(d->n == 0, ANVIL_ERR_INVALID_ARG, "prime a new or flushed detokenizer");
    size_t k = n > DETOK_CONTEXT ? n - DETOK_CONTEXT : 0;
    size_t lo = k > DETOK_CONTEXT_MAX ? k - DETOK_CONTEXT_MAX : 0;
    while (k > lo && !clean_start(d, ids, k, n))
        k--;
    TRY(tok_grow((void **)&d->ids, &d->cap, n - k, sizeof *d->ids));
    if (n > k)
        memcpy(d->ids, ids + k, (n - k) * sizeof *d->ids);
    d->n = d->ro = n - k;
    d->po = 0;
    d->prefix_valid = 0;
    d->in_context = d->n > 0;
    return ANVIL_OK;
}

static anvil_status set_out(anvil_detokenizer *d, const char *s, size_t n, const char **text, size_t *len)
{
    d->out.len = 0;
    TRY(tok_buf_append(&d->out, s, n));
    *text = d->out.p;
    *len = d->out.len;
    return ANVIL_OK;
}

anvil_status anvil_detokenizer_push(anvil_detokenizer *d, int32_t id, const char **text, size_t *len)
{
    CHECK(d && text && len, ANVIL_ERR_INVALID_ARG, "bad arguments");
    *text = "";
    *len = 0;
    TRY(tok_grow((void **)&d->ids, &d->cap, d->n + 1, sizeof *d->ids));
    d->ids[d->n++] = id;
    if (!d->prefix_valid) {
        d->prefix.len = 0;
        TRY(tok_decode_into(d->tok, d->ids + d->po, d->ro - d->po, d->skip, &d->prefix, NULL));
        d->prefix_valid = 1;
    }
    int unstable = 0;
    d->full.len = 0;
    TRY(tok_decode_into(d->tok, d->ids + d->po, d->n - d->po, d->skip, &d->full, &unstable));
    if (unstable)
        return set_out(d, "", 0, text, len);
    size_t keep = d->prefix.len;
    if (d->full.len < d->prefix.len || memcmp(d->full.p, d->prefix.p, d->prefix.len) != 0) {
        if (!d->in_context)
            return set_out(d, "", 0, text, len);
        /* the context ended inside a character that is now complete: its
         * text was never emitted, so emit from where the two differ */
        keep = 0;
        while (keep < d->prefix.len && keep < d->full.len && d->full.p[keep] == d->prefix.p[keep])
            keep++;
        while (keep > 0 && keep < d->full.len && ((unsigned char)d->full.p[keep] & 0xC0) == 0x80)
            keep--;
    }
    if (d->full.len <= keep)
        return set_out(d, "", 0, text, len);
    TRY(set_out(d, d->full.p + keep, d->full.len - keep, text, len));
    d->po = d->ro;
    d->ro = d->n;
    d->prefix_valid = 0;
    d->in_context = 0;
    return ANVIL_OK;
}

anvil_status anvil_detokenizer_flush(anvil_detokenizer *d, const char **text, size_t *len)
{
    CHECK(d && text && len, ANVIL_ERR_INVALID_ARG, "bad arguments");
    *text = "";
    *len = 0;
    if (d->n == 0)
        return ANVIL_OK;
    d->prefix.len = 0;
    d->full.len = 0;
    TRY(tok_decode_into(d->tok, d->ids + d->po, d->ro - d->po, d->skip, &d->prefix, NULL));
    TRY(tok_decode_into(d->tok, d->ids + d->po, d->n - d->po, d->skip, &d->full, NULL));
    size_t keep = 0;
    if (d->prefix.len == 0 || (d->full.len >= d->prefix.len && memcmp(d->full.p, d->prefix.p, d->prefix.len) == 0))
        keep = d->prefix.len;
    else
        while (keep < d->prefix.len && keep < d->full.len && d->full.p[keep] == d->prefix.p[keep])
            keep++;
    /* never cut inside a character */
    while (keep > 0 && keep < d->full.len && ((unsigned char)d->full.p[keep] & 0xC0) == 0x80)
        keep--;
    TRY(set_out(d, d->full.len ? d->full.p + keep : "", d->full.len - keep, text, len));
    d->n = d->po = d->ro = 0;
    d->prefix_valid = 0;
    d->in_context = 0;
    return ANVIL_OK;
}
