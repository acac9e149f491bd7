/*
 * anvil/grammar.h: structured outputs. A JSON schema, a regular expression,
 * an EBNF grammar (GBNF) or a list of choices becomes a grammar over the
 * bytes of the output; a matcher follows one generation token by token and
 * says, at each step, which tokens of the vocabulary may come next (a
 * bitmask the sampler applies to the logits).
 *
 *     anvil_grammar_vocab *v;       // once per tokenizer
 *     anvil_grammar_vocab_from_tokenizer(tok, model_vocab_size, eos_ids, n_eos, &v);
 *     anvil_grammar *g;             // once per schema, shared by requests
 *     if (anvil_grammar_compile_json_schema(v, schema, strlen(schema), NULL, &g) != ANVIL_OK)
 *         reply_400(anvil_last_error());
 *     anvil_grammar_matcher *m;     // once per sequence
 *     anvil_grammar_matcher_create(g, &m);
 *     uint32_t *mask = malloc(anvil_grammar_vocab_mask_words(v) * 4);
 *     while (!anvil_grammar_matcher_is_done(m)) {
 *         anvil_grammar_matcher_fill_mask(m, mask, words);   // while the GPU runs the step
 *         id = sample(logits, mask);                          // bit id set: allowed
 *         anvil_grammar_matcher_accept_token(m, id);          // EOS ends it
 *     }
 *     anvil_grammar_matcher_free(m); anvil_grammar_free(g); anvil_grammar_vocab_free(v);
 *
 * docs/grammar.md describes the subsets of JSON Schema, regular expressions
 * and GBNF that compile, the whitespace JSON may hold, and the limits
 * against hostile input (each refusal is ANVIL_ERR_INVALID_ARG or
 * ANVIL_ERR_UNSUPPORTED with a message that names the keyword or limit).
 *
 * Thread safety: a vocabulary and a compiled grammar are immutable to their
 * users and may be shared by any number of threads and matchers (a grammar
 * fills its mask cache under its own lock). A matcher belongs to one thread
 * at a time.
 */
#ifndef ANVIL_GRAMMAR_H
#define ANVIL_GRAMMAR_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/status.h"
#include "anvil/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct anvil_grammar_vocab anvil_grammar_vocab;
typedef struct anvil_grammar anvil_grammar;
typedef struct anvil_grammar_matcher anvil_grammar_matcher;

/* Limits and choices of a compile. anvil_grammar_options_default fills the
 * defaults that docs/grammar.md lists; NULL options mean those defaults. */
typedef struct anvil_grammar_options {
    int max_whitespace;     /* JSON: most whitespace bytes between two tokens; -1: none
                               but the single space after ':' and ',' */
    int max_schema_depth;   /* JSON schema: nesting of subschemas ($ref expansions included) */
    int max_enum;           /* JSON schema enum values, choices, EBNF alternatives of one rule */
    int max_repeat;         /* the largest bound of a repetition ({m,n}, maxItems, maxLength) */
    int64_t max_elements;   /* elements of the compiled grammar (its size) */
    int64_t max_input;      /* bytes of the schema, expression or grammar text */
    int max_stack_depth;    /* nesting while matching: deeper output is not generated */
    int max_stacks;         /* parallel parses (ambiguity) before a step is refused */
    int cache_frames;       /* stack frames a mask cache entry keys on (0: no mask cache) */
    int64_t max_cache_bytes; /* the mask cache's memory; entries past it are not kept */
} anvil_grammar_options;

void anvil_grammar_options_default(anvil_grammar_options *o);

/* ------------------------------------------------------------ vocabulary */

/*
 * The vocabulary a grammar masks: the bytes of every token
 * (anvil_tokenizer_token_bytes), arranged as a byte trie. Special tokens
 * are never allowed by a grammar, except stop_ids (EOS, EOT, ...: n_stop of
 * them, copied), which are allowed exactly when the output may end.
 * n_vocab: the mask's size, the model's vocabulary (its logits, often padded
 * past the tokenizer's ids: those ids are never allowed); 0 means the
 * tokenizer's. tok is borrowed for the call only. *out is taken by the
 * caller; NULL on failure.
 */
anvil_status anvil_grammar_vocab_from_tokenizer(const anvil_tokenizer *tok, int32_t n_vocab, const int32_t *stop_ids,
                                                int n_stop, anvil_grammar_vocab **out);

/*
 * The same from token bytes: n_vocab tokens, token i is bytes[i] (lens[i]
 * bytes; bytes[i] NULL or lens[i] 0: never allowed, as a special token).
 * Everything is copied.
 */
anvil_status anvil_grammar_vocab_create(int32_t n_vocab, const char *const *bytes, const size_t *lens,
                                        const int32_t *stop_ids, int n_stop, anvil_grammar_vocab **out);

void anvil_grammar_vocab_free(anvil_grammar_vocab *v);

/* Tokens in the vocabulary (the mask's bits). */
int32_t anvil_grammar_vocab_size(const anvil_grammar_vocab *v);

/* uint32 words of a mask: (size + 31) / 32. Token id is bit (id & 31) of word id >> 5. */
size_t anvil_grammar_vocab_mask_words(const anvil_grammar_vocab *v);

/* The bytes of token id (borrowed from v; NULL for a special or unknown id). */
const char *anvil_grammar_vocab_token(const anvil_grammar_vocab *v, int32_t id, size_t *len);

/* ------------------------------------------------------------ compile */

/*
 * Compiles against vocabulary v (borrowed: it must outlive the grammar).
 * opts may be NULL (defaults). *out is taken by the caller
 * (anvil_grammar_free); NULL on failure, with a message naming what was
 * refused. Inputs are len bytes, not NUL-terminated.
 *
 * json_schema: a JSON Schema (draft 2020-12 subset: docs/grammar.md).
 * json_object: any JSON object (response_format json_object).
 * regex: the whole output matches the expression (anchors implied).
 * ebnf: a GBNF grammar (llama.cpp's syntax); root_rule NULL means "root".
 * choice: the output is exactly one of n strings (vLLM's guided_choice).
 */
anvil_status anvil_grammar_compile_json_schema(const anvil_grammar_vocab *v, const char *schema, size_t len,
                                               const anvil_grammar_options *opts, anvil_grammar **out);
anvil_status anvil_grammar_compile_json_object(const anvil_grammar_vocab *v, const anvil_grammar_options *opts,
                                               anvil_grammar **out);
anvil_status anvil_grammar_compile_regex(const anvil_grammar_vocab *v, const char *regex, size_t len,
                                         const anvil_grammar_options *opts, anvil_grammar **out);
anvil_status anvil_grammar_compile_ebnf(const anvil_grammar_vocab *v, const char *grammar, size_t len,
                                        const char *root_rule, const anvil_grammar_options *opts,
                                        anvil_grammar **out);
anvil_status anvil_grammar_compile_choice(const anvil_grammar_vocab *v, const char *const *choices,
                                          const size_t *lens, int n, const anvil_grammar_options *opts,
                                          anvil_grammar **out);

/* Drops a reference to g: the last one frees it (no matcher may use it any
 * more then); NULL is a no-op. A compile returns a grammar with one. */
void anvil_grammar_free(anvil_grammar *g);

/* Takes another reference to g (any thread; returns g): a compiled-grammar
 * cache and the requests that use its grammar each hold one, and each
 * drops it with anvil_grammar_free. */
anvil_grammar *anvil_grammar_retain(anvil_grammar *g);

/* The vocabulary g was compiled against (borrowed; its mask's size). */
const anvil_grammar_vocab *anvil_grammar_get_vocab(const anvil_grammar *g);

/* ------------------------------------------------------------ matching */

/* A matcher at the start of the output of g (borrowed: it must outlive the
 * matcher). *out is taken by the caller; NULL on failure. */
anvil_status anvil_grammar_matcher_create(const anvil_grammar *g, anvil_grammar_matcher **out);

/* An independent copy of m in its current state (a fork: beams, n > 1). */
anvil_status anvil_grammar_matcher_copy(const anvil_grammar_matcher *m, anvil_grammar_matcher **out);

void anvil_grammar_matcher_free(anvil_grammar_matcher *m);

/*
 * Advances by one token. A stop id is accepted when the output may end and
 * then the matcher is done. A token the mask would not allow is
 * ANVIL_ERR_INVALID_ARG with a message, and the state is unchanged.
 */
anvil_status anvil_grammar_matcher_accept_token(anvil_grammar_matcher *m, int32_t id);

/* Advances by len bytes of output (e.g. text forced into the output); all or
 * nothing, as accept_token. */
anvil_status anvil_grammar_matcher_accept_bytes(anvil_grammar_matcher *m, const char *bytes, size_t len);

/*
 * Writes the tokens allowed next into words (n_words >= mask_words, as
 * above; bits past the vocabulary are 0): every token whose bytes extend
 * the output validly, and the stop ids when the output may end. Once done,
 * only the stop ids. The mask is empty only when no token of the
 * vocabulary can continue (a vocabulary without a byte the grammar needs):
 * the caller then ends the sequence. Fails only with ANVIL_ERR_UNSUPPORTED
 * (the grammar turned out more ambiguous than max_stacks at this step) or
 * ANVIL_ERR_OOM: the request fails.
 */
anvil_status anvil_grammar_matcher_fill_mask(anvil_grammar_matcher *m, uint32_t *words, size_t n_words);

/* 1 when the output so far is complete (the stop ids are allowed). */
int anvil_grammar_matcher_can_end(const anvil_grammar_matcher *m);

/* 1 when a stop id was accepted, or no byte can follow (only a stop id may come). */
int anvil_grammar_matcher_is_done(const anvil_grammar_matcher *m);

#ifdef __cplusplus
}
#endif
#endif
