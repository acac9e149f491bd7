/*
 * anvil perplexity's inputs (tools/cmd_perplexity.c): the tokens to score,
 * from a text file (the model's tokenizer) or a file of token ids, and the
 * check that a base model shares the model's vocabulary. Each function
 * reports its own error on stderr, prefixed with the tool's name, and
 * returns -1 then (0 on success).
 */
#ifndef ANVIL_TOOLS_PPL_INPUT_H
#define ANVIL_TOOLS_PPL_INPUT_H

#include <stdint.h>

#include "anvil/model_config.h"
#include "anvil/tokenizer.h"

/* The token ids of the text in path, encoded with tok with its special
 * tokens (BOS first where the tokenizer's post-processor adds one, as
 * Hugging Face's encode does). *ids malloc'd (taken). A missing, unreadable
 * or empty file, invalid UTF-8 are reported. */
int ppl_read_text(const char *tool, const char *path, const anvil_tokenizer *tok, int32_t **ids, int64_t *n);

/* The token ids in path: a JSON array ([0, 12, 7]) or integers separated by
 * white space or commas (anvil tokenize's output works), each checked
 * against vocab_size. Used as they are: nothing is added. */
int ppl_read_ids(const char *tool, const char *path, int64_t vocab_size, int32_t **ids, int64_t *n);

/* The token the tokenizer puts first in every encoding (its BOS), or -1
 * when it adds none (tok NULL: -1). */
int32_t ppl_bos(const anvil_tokenizer *tok);

/*
 * Refuses a base whose vocabulary is not the model's: a different
 * vocab_size in the configs, or (both having a tokenizer) a different
 * tokenizer size or any token id with another string. The message names
 * the first difference.
 */
int ppl_check_vocab(const char *tool, const char *model, const anvil_model_config *mc,
                    const anvil_tokenizer *mt, const char *base, const anvil_model_config *bc,
                    const anvil_tokenizer *bt);

#endif
