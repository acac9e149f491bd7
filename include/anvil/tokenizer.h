/*
 * anvil/tokenizer.h: text to token ids and back, byte-exact with Hugging Face
 * `tokenizers` (Tokenizer.from_file(tokenizer.json)).
 *
 *     anvil_tokenizer *tok;
 *     if (anvil_tokenizer_load("models/llama3", &tok) != ANVIL_OK)
 *         fprintf(stderr, "%s\n", anvil_last_error());
 *     int32_t *ids; int64_t n;
 *     anvil_tokenizer_encode(tok, "Hello world", 11, 1, &ids, &n);   // 128000 9906 1917
 *     char *text; size_t len;
 *     anvil_tokenizer_decode(tok, ids, n, 1, &text, &len);          // "Hello world"
 *     free(ids); free(text);
 *
 *     // streaming generation: text appears as soon as it is final
 *     anvil_detokenizer *d;
 *     anvil_detokenizer_create(tok, 1, &d);
 *     for (each generated id) { const char *t; size_t tl; anvil_detokenizer_push(d, id, &t, &tl); fwrite(t, 1, tl, stdout); }
 *     anvil_detokenizer_flush(d, &t, &tl); fwrite(t, 1, tl, stdout);
 *     anvil_detokenizer_free(d);
 *     anvil_tokenizer_free(tok);
 *
 * Supported: the BPE model (byte-level as in GPT-2 / Llama 3 / Qwen2, and
 * SentencePiece-style with byte fallback as in Llama 2 / Mistral / Phi-3),
 * added and special tokens, the usual normalizers, pre-tokenizers,
 * post-processors and decoders (docs/tokenizer.md lists them). A component
 * that anvil does not implement makes loading fail with ANVIL_ERR_UNSUPPORTED
 * and a message that names it.
 *
 * Thread safety: a loaded tokenizer is immutable. encode, decode and the
 * accessors may be called from many threads at once on the same tokenizer.
 * A detokenizer belongs to one thread at a time.
 */
#ifndef ANVIL_TOKENIZER_H
#define ANVIL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct anvil_tokenizer anvil_tokenizer;

/*
 * Loads dir/tokenizer.json. dir may be a tokenizer folder or a model folder.
 * tokenizer_config.json is not read: HF's Tokenizer.from_file(tokenizer.json)
 * defines encoding on its own (see docs/tokenizer.md). *out is taken by the
 * caller (anvil_tokenizer_free); NULL on failure.
 */
anvil_status anvil_tokenizer_load(const char *dir, anvil_tokenizer **out);

/* 1 when path (a model folder, or an engine file) has a tokenizer.json. */
int anvil_tokenizer_available(const char *path);

/* Loads the given tokenizer.json file; otherwise as anvil_tokenizer_load. */
anvil_status anvil_tokenizer_load_file(const char *tokenizer_json_path, anvil_tokenizer **out);

/* Loads from tokenizer.json contents in memory (len bytes, not NUL-terminated). */
anvil_status anvil_tokenizer_load_json(const char *json, size_t len, anvil_tokenizer **out);

/* Frees a tokenizer; NULL is a no-op. */
void anvil_tokenizer_free(anvil_tokenizer *tok);

/*
 * Encodes len bytes of UTF-8 text (need not be NUL-terminated) into token ids,
 * as HF's Tokenizer.encode(text, add_special_tokens).ids.
 * *ids is malloc'd and taken by the caller (free()); it is non-NULL even when
 * *n_ids is 0. Invalid UTF-8 is ANVIL_ERR_INVALID_ARG. Thread-safe.
 */
anvil_status anvil_tokenizer_encode(const anvil_tokenizer *tok, const char *text, size_t len,
                                    int add_special_tokens, int32_t **ids, int64_t *n_ids);

/*
 * Decodes n ids into text, as HF's Tokenizer.decode(ids, skip_special_tokens).
 * Ids outside the vocabulary are skipped, as HF does. *text is malloc'd,
 * NUL-terminated, taken by the caller (free()); *len excludes the NUL
 * (len may be NULL). Thread-safe.
 */
anvil_status anvil_tokenizer_decode(const anvil_tokenizer *tok, const int32_t *ids, int64_t n,
                                    int skip_special_tokens, char **text, size_t *len);

/* Number of distinct tokens, added tokens included (HF get_vocab_size(True)). */
int64_t anvil_tokenizer_vocab_size(const anvil_tokenizer *tok);

/* The id of a token string (added tokens first, then the model vocabulary); -1 if none. */
int32_t anvil_tokenizer_token_id(const anvil_tokenizer *tok, const char *token);

/* The raw vocabulary string of an id (e.g. "Ġworld", "<0x0A>", "<|eot_id|>"),
 * borrowed from the tokenizer (valid until it is freed); NULL if no such id. */
const char *anvil_tokenizer_token_text(const anvil_tokenizer *tok, int32_t id);

/* 1 if id is a special added token (skipped by decode with skip_special_tokens), else 0. */
int anvil_tokenizer_is_special(const anvil_tokenizer *tok, int32_t id);

/*
 * The bytes one token adds in the middle of a text (what a grammar matches):
 * the decoder chain on that token alone, with its bytes kept raw (a
 * byte-fallback token such as <0xE2> or a byte-level token that holds part
 * of a UTF-8 character gives that byte, not U+FFFD) and without the steps
 * that act only at the start of a text (Strip, Metaspace's dropped leading
 * space), so "▁world" gives " world". Special tokens give their content.
 * *bytes is malloc'd, NUL-terminated, taken by the caller (free()); *len
 * excludes the NUL. An id with no token is ANVIL_ERR_INVALID_ARG. Thread-safe.
 */
anvil_status anvil_tokenizer_token_bytes(const anvil_tokenizer *tok, int32_t id, char **bytes, size_t *len);

typedef struct anvil_detokenizer anvil_detokenizer;

/*
 * A streaming detokenizer over tok (borrowed; it must outlive the
 * detokenizer). The concatenation of all text returned by push and flush
 * equals anvil_tokenizer_decode of all pushed ids (after
 * anvil_detokenizer_prime: the text they add to the primed ids), and no
 * returned piece ends inside a UTF-8 character. *out is taken by the
 * caller; NULL on failure.
 */
anvil_status anvil_detokenizer_create(const anvil_tokenizer *tok, int skip_special_tokens,
                                      anvil_detokenizer **out);

/*
 * Gives a new (or flushed) detokenizer the n ids that come before the ones
 * to be pushed, e.g. a prompt: their text is never returned, but the pushed
 * ids are decoded after them. The text returned then is the text the pushed
 * ids add: Hugging Face's decode(ids + pushed)[len(decode(ids)):] (vLLM's
 * incremental detokenization), so a completion's first word keeps the space
 * that a SentencePiece decoder strips at the start of a text, and a
 * byte-level space is not doubled. Only the last few ids are kept (from a
 * token that starts a character). When ids end inside a UTF-8 character,
 * the character completed by the pushed ids is returned whole. n 0: no
 * context.
 */
anvil_status anvil_detokenizer_prime(anvil_detokenizer *d, const int32_t *ids, size_t n);

/* Pushes one id; *text and *len is the newly final text (may be empty), borrowed
 * from the detokenizer and valid until its next call. */
anvil_status anvil_detokenizer_push(anvil_detokenizer *d, int32_t id, const char **text, size_t *len);

/* Returns the text still held back (at the end of a generation); the
 * detokenizer can then be reused for a new sequence. Borrowed as in push. */
anvil_status anvil_detokenizer_flush(anvil_detokenizer *d, const char **text, size_t *len);

/* Frees a detokenizer; NULL is a no-op. */
void anvil_detokenizer_free(anvil_detokenizer *d);

#ifdef __cplusplus
}
#endif
#endif
