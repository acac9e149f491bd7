/*
 * Encoding, as HF's Tokenizer::encode for one sequence:
 *   1. added tokens with normalized=false are cut out of the raw text;
 *   2. every other segment is normalized, and added tokens with
 *      normalized=true are cut out of the result;
 *   3. the remaining segments go through the pre-tokenizer steps and the
 *      BPE model (tok_pretok.c, tok_model_bpe.c);
 *   4. truncation, post-processor, padding (tok_post.c).
 * All state lives in a tok_work local to the call, so a tokenizer can be
 * shared by any number of threads.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "tokenizer/tok_internal.h"

void tok_work_init(tok_work *w, const anvil_tokenizer *tok)
{
    memset(w, 0, sizeof *w);
    w->tok = tok;
    w->md = pcre2_match_data_create(1, NULL);
}

void tok_work_free(tok_work *w)
{
    tok_buf_free(&w->text);
    free(w->ids);
    pcre2_match_data_free(w->md);
    for (int i = 0; i <= TOK_MAX_STAGES; i++) {
        free(w->stage[i].p);
        free(w->spans[i]);
    }
    free(w->syms);
    free(w->heap);
    tok_buf_free(&w->scratch);
    free(w->u32);
    free(w->cache);
    free(w->cache_ids);
    memset(w, 0, sizeof *w);
}

anvil_status tok_work_push_id(tok_work *w, int32_t id)
{
    if (w->n_ids == w->cap_ids)
        TRY(tok_grow((void **)&w->ids, &w->cap_ids, w->n_ids + 1, sizeof *w->ids));
    w->ids[w->n_ids++] = id;
    return ANVIL_OK;
}

static anvil_status on_id(tok_work *w, int32_t id)
{
    return tok_work_push_id(w, id);
}

static anvil_status pre_segment(tok_work *w, tok_piece p)
{
    return tok_pretokenize(w, 0, p);
}

/* A segment between raw added tokens: normalize, then cut normalized added tokens. */
static anvil_status norm_segment(tok_work *w, tok_piece p)
{
    TRY(tok_normalize(w, &p));
    return tok_added_split(w, &w->tok->trie_norm, p, pre_segment, on_id);
}

anvil_status anvil_tokenizer_encode(const anvil_tokenizer *tok, const char *text, size_t len,
                                    int add_special_tokens, int32_t **ids, int64_t *n_ids)
{
    CHECK(ids != NULL && n_ids != NULL, ANVIL_ERR_INVALID_ARG, "ids and n_ids must not be NULL");
    *ids = NULL;
    *n_ids = 0;
    CHECK(tok != NULL, ANVIL_ERR_INVALID_ARG, "tokenizer must not be NULL");
    CHECK(text != NULL || len == 0, ANVIL_ERR_INVALID_ARG, "text must not be NULL");
    CHECK(len < ((size_t)1 << 31), ANVIL_ERR_INVALID_ARG, "text too long (%zu bytes)", len);
    CHECK(tok_utf8_valid(text, len), ANVIL_ERR_INVALID_ARG, "text is not valid UTF-8");
    anvil_status st = ANVIL_OK;
    tok_work w;
    tok_work_init(&w, tok);
    CHECK_GOTO(w.md != NULL, ANVIL_ERR_OOM, done, "out of memory");
    w.input = text ? text : "";
    w.cache_hint = len;
    TRY_GOTO(tok_buf_reserve(&w.text, 0), done);
    TRY_GOTO(tok_grow((void **)&w.ids, &w.cap_ids, len / 4 + 16, sizeof *w.ids), done);
    tok_piece all = {0, len, len ? tok_utf8_len((unsigned char)text[0]) : 0, 0, 1};
    TRY_GOTO(tok_added_split(&w, &tok->trie_raw, all, norm_segment, on_id), done);
    TRY_GOTO(tok_post_process(tok, &w, add_special_tokens), done);
    TRY_GOTO(tok_grow((void **)&w.ids, &w.cap_ids, w.n_ids + 1, sizeof *w.ids), done);
    *ids = w.ids;
    *n_ids = (int64_t)w.n_ids;
    w.ids = NULL;
done:
    tok_work_free(&w);
    return st;
}
