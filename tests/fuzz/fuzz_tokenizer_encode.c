/*
 * libFuzzer target for encoding and decoding. Real tokenizers are loaded
 * once from ANVIL_SHARED_DIR (a byte-level one, a SentencePiece-style one
 * with byte fallback, one with NFC and Qwen's regex), else a small embedded
 * one. The first input byte picks the tokenizer and the flags, the rest is
 * the text. Checks: invalid UTF-8 is refused; otherwise encode succeeds with
 * ids inside the vocabulary; decode gives valid UTF-8; for the byte-level
 * tokenizers without a normalizer decode(encode(text)) == text; and the
 * streaming detokenizer, fed one id at a time, gives exactly decode's text,
 * in pieces that are each valid UTF-8.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/tokenizer.h"
#include "tokenizer/tok_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char embedded[] =
    "{\"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"unk_token\": \"<unk>\", \"fuse_unk\": true,"
    " \"vocab\": {\"<unk>\": 0, \"\\u2581\": 1, \"a\": 2, \"b\": 3, \"\\u2581a\": 4, \"ab\": 5, \"<0xC3>\": 6,"
    " \"<0xA9>\": 7, \"<s>\": 8}, \"merges\": [\"\\u2581 a\", \"a b\"]},"
    " \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"first\","
    " \"split\": true},"
    " \"added_tokens\": [{\"id\": 8, \"content\": \"<s>\", \"special\": true, \"normalized\": false,"
    " \"lstrip\": false, \"rstrip\": true, \"single_word\": false}],"
    " \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\":"
    " \"\\u2581\"}, \"content\": \" \"}, {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"},"
    " {\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]}}";

typedef struct loaded {
    anvil_tokenizer *tok;
    int round_trip; /* decode(encode(x)) == x */
} loaded;

static loaded toks[4];
static int n_toks = -1;

static void load_all(void)
{
    const char *shared = getenv("ANVIL_SHARED_DIR");
    static const struct {
        const char *dir;
        int round_trip;
    } want[] = {{"tokenizers/llama3", 1}, {"tokenizers/llama2", 0}, {"tokenizers/qwen2.5", 0}, {"tokenizers/gpt2", 1}};
    n_toks = 0;
    for (size_t i = 0; shared && i < sizeof want / sizeof want[0]; i++) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/%s", shared, want[i].dir);
        if (anvil_tokenizer_load(dir, &toks[n_toks].tok) == ANVIL_OK)
            toks[n_toks++].round_trip = want[i].round_trip;
    }
    if (n_toks == 0) {
        if (anvil_tokenizer_load_json(embedded, sizeof embedded - 1, &toks[0].tok) != ANVIL_OK)
            __builtin_trap();
        toks[0].round_trip = 0;
        n_toks = 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (n_toks < 0)
        load_all();
    if (size == 0)
        return 0;
    const loaded *l = &toks[data[0] % n_toks];
    int add = (data[0] >> 2) & 1, skip = (data[0] >> 3) & 1;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    int32_t *ids;
    int64_t n;
    anvil_status st = anvil_tokenizer_encode(l->tok, text, len, add, &ids, &n);
    if (!tok_utf8_valid(text, len)) {
        if (st != ANVIL_ERR_INVALID_ARG || ids != NULL)
            __builtin_trap();
        return 0;
    }
    if (st != ANVIL_OK)
        __builtin_trap();
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || anvil_tokenizer_token_text(l->tok, ids[i]) == NULL)
            __builtin_trap();
    char *out;
    size_t out_len;
    if (anvil_tokenizer_decode(l->tok, ids, n, skip, &out, &out_len) != ANVIL_OK || !tok_utf8_valid(out, out_len))
        __builtin_trap();
    if (l->round_trip && !add && !skip && (out_len != len || memcmp(out, text, len) != 0))
        __builtin_trap();

    anvil_detokenizer *d;
    if (anvil_detokenizer_create(l->tok, skip, &d) != ANVIL_OK)
        __builtin_trap();
    size_t at = 0;
    for (int64_t i = 0; i <= n; i++) {
        const char *t;
        size_t tl;
        st = i < n ? anvil_detokenizer_push(d, ids[i], &t, &tl) : anvil_detokenizer_flush(d, &t, &tl);
        if (st != ANVIL_OK || !tok_utf8_valid(t, tl) || at + tl > out_len || memcmp(out + at, t, tl) != 0)
            __builtin_trap();
        at += tl;
    }
    if (at != out_len)
        __builtin_trap();
    anvil_detokenizer_free(d);
    free(out);
    free(ids);
    return 0;
}
