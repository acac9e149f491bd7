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
};

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
    if (unstable || d->full.len <= d->prefix.len)
        return set_out(d, "", 0, text, len);
    if (d->prefix.len && memcmp(d->full.p, d->prefix.p, d->prefix.len) != 0)
        return set_out(d, "", 0, text, len);
    TRY(set_out(d, d->full.p + d->prefix.len, d->full.len - d->prefix.len, text, len));
    d->po = d->ro;
    d->ro = d->n;
    d->prefix_valid = 0;
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
    return ANVIL_OK;
}
