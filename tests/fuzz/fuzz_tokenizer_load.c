/*
 * libFuzzer target for tokenizer.json loading: any byte string must either
 * be refused with a status, a message and *out == NULL, or give a tokenizer
 * that encodes and decodes a few texts without fault, with every id inside
 * the vocabulary's id range and a decode that is valid UTF-8. ASan / UBSan
 * catch the rest (reads past the input, leaks, overflows).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/tokenizer.h"
#include "tokenizer/tok_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    anvil_tokenizer *tok = (anvil_tokenizer *)&tok; /* must be reset to NULL on failure */
    if (anvil_tokenizer_load_json((const char *)data, size, &tok) != ANVIL_OK) {
        if (tok != NULL || anvil_last_error()[0] == '\0')
            __builtin_trap();
        return 0;
    }
    static const char *const texts[] = {"", "Hello world", " <s>a  b\n\n\t12345 caf\xC3\xA9 \xF0\x9F\x98\x80",
                                        "\xE2\x96\x81x<|endoftext|>y", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        for (int add = 0; add < 2; add++) {
            int32_t *ids;
            int64_t n;
            if (anvil_tokenizer_encode(tok, texts[i], strlen(texts[i]), add, &ids, &n) != ANVIL_OK) {
                if (ids != NULL || anvil_last_error()[0] == '\0')
                    __builtin_trap();
                continue; /* e.g. an unk token that is not in the vocabulary */
            }
            for (int64_t k = 0; k < n; k++)
                if (ids[k] < 0 || ids[k] >= TOK_MAX_ID)
                    __builtin_trap();
            char *text;
            size_t len;
            if (anvil_tokenizer_decode(tok, ids, n, add, &text, &len) != ANVIL_OK || !tok_utf8_valid(text, len) ||
                text[len] != 0)
                __builtin_trap();
            free(text);
            free(ids);
        }
    }
    int32_t probe[] = {0, 1, 2, 3, -1, 5, 1 << 30};
    char *text;
    size_t len;
    if (anvil_tokenizer_decode(tok, probe, 7, 0, &text, &len) != ANVIL_OK || !tok_utf8_valid(text, len))
        __builtin_trap();
    free(text);
    (void)anvil_tokenizer_token_text(tok, 3);
    (void)anvil_tokenizer_token_id(tok, "a");
    (void)anvil_tokenizer_is_special(tok, 0);
    if (anvil_tokenizer_vocab_size(tok) < 0)
        __builtin_trap();
    anvil_tokenizer_free(tok);
    return 0;
}
