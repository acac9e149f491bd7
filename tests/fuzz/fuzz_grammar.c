/*
 * libFuzzer target for the grammar engine's front ends and matcher: the
 * first byte picks the front end (JSON schema, regex, GBNF, choice), the
 * rest is its input, compiled against a vocabulary of single bytes and a few
 * multi-byte tokens under small limits. When it compiles, a short walk takes
 * the lowest allowed token at each step and checks that the mask and
 * accept_token agree. Whatever the bytes, the result must be a status with a
 * message or a working grammar; ASan and UBSan catch memory errors, leaks
 * and undefined behaviour; the limits catch hangs.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/grammar.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static anvil_grammar_vocab *vocab;

static void make_vocab(void)
{
    static const char *const multi[] = {"\"", "\":", "\", \"", "{\"", "}", "true", "null", "12", "\xc3\xa9", "\xe2\x9c"};
    enum { N_MULTI = sizeof multi / sizeof multi[0] };
    char bytes[256];
    const char *p[256 + N_MULTI + 1];
    size_t l[256 + N_MULTI + 1];
    for (int i = 0; i < 256; i++) {
        bytes[i] = (char)i;
        p[i] = bytes + i;
        l[i] = 1;
    }
    for (int i = 0; i < N_MULTI; i++) {
        p[256 + i] = multi[i];
        l[256 + i] = strlen(multi[i]);
    }
    p[256 + N_MULTI] = NULL;
    l[256 + N_MULTI] = 0;
    int32_t stop = 256 + N_MULTI;
    if (anvil_grammar_vocab_create(stop + 1, p, l, &stop, 1, &vocab) != ANVIL_OK)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!vocab)
        make_vocab();
    if (size < 1)
        return 0;
    anvil_grammar_options o;
    anvil_grammar_options_default(&o);
    o.max_input = 4096;
    o.max_repeat = 64;
    o.max_elements = 20000;
    o.max_enum = 64;
    o.max_stacks = 256;
    o.max_cache_bytes = 1 << 20;
    o.cache_frames = data[0] & 0x10 ? 2 : 4;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    anvil_grammar *g = NULL;
    anvil_status st;
    switch (data[0] & 3) {
    case 0: st = anvil_grammar_compile_json_schema(vocab, text, len, &o, &g); break;
    case 1: st = anvil_grammar_compile_regex(vocab, text, len, &o, &g); break;
    case 2: st = anvil_grammar_compile_ebnf(vocab, text, len, NULL, &o, &g); break;
    default: {
        /* choices separated by '\n' */
        const char *c[64];
        size_t cl[64];
        int n = 0;
        size_t a = 0;
        for (size_t i = 0; i <= len && n < 64; i++)
            if (i == len || text[i] == '\n') {
                c[n] = text + a;
                cl[n++] = i - a;
                a = i + 1;
            }
        st = anvil_grammar_compile_choice(vocab, c, cl, n, &o, &g);
        break;
    }
    }
    if (st != ANVIL_OK) {
        if (g || !anvil_last_error()[0])
            abort();
        return 0;
    }
    anvil_grammar_matcher *m;
    if (anvil_grammar_matcher_create(g, &m) != ANVIL_OK)
        abort();
    size_t nw = anvil_grammar_vocab_mask_words(vocab);
    uint32_t w[16];
    for (int step = 0; step < 24 && !anvil_grammar_matcher_is_done(m); step++) {
        if (anvil_grammar_matcher_fill_mask(m, w, nw) != ANVIL_OK)
            break; /* too ambiguous at run time: a status, not a crash */
        int32_t id = -1;
        for (size_t i = 0; i < nw && id < 0; i++)
            if (w[i])
                id = (int32_t)(i * 32 + (size_t)__builtin_ctz(w[i]));
        if (id < 0)
            break;
        if (anvil_grammar_matcher_accept_token(m, id) != ANVIL_OK)
            abort(); /* the mask allowed it */
    }
    anvil_grammar_matcher_free(m);
    anvil_grammar_free(g);
    return 0;
}
