/*
 * A model's files other than its weights (config.json,
 * generation_config.json, tokenizer.json, tokenizer_config.json,
 * chat_template.jinja / .json), from a Hugging Face folder or from an
 * engine file, which carries them verbatim in its manifest. The loaders of
 * the config, the tokenizer and the chat template read through this, so
 * that an engine file works wherever a folder does.
 *
 *     anvil_model_files *mf;
 *     TRY(anvil_model_files_open(path, &mf));   // a folder or an engine file
 *     const char *text; size_t len;
 *     if (anvil_model_files_get(mf, "config.json", &text, &len) == ANVIL_OK) ...
 *     anvil_model_files_close(mf);
 */
#ifndef ANVIL_IO_MODEL_FILES_H
#define ANVIL_IO_MODEL_FILES_H

#include <stddef.h>

#include "anvil/status.h"

typedef struct anvil_model_files anvil_model_files;

/* The names of the files a model carries besides its weights (NULL-ended). */
extern const char *const anvil_model_file_names[];

/* Opens a model folder or an engine file (its manifest only). A path that
 * is neither is ANVIL_ERR_NOT_FOUND ("no model at PATH"). */
anvil_status anvil_model_files_open(const char *path, anvil_model_files **out);
void anvil_model_files_close(anvil_model_files *m); /* NULL is a no-op */

/* 1 when the model has the file. */
int anvil_model_files_has(const anvil_model_files *m, const char *name);

/* The file's text (NUL-terminated, borrowed until close; len without the
 * NUL). ANVIL_ERR_NOT_FOUND when the model has no such file; a folder's
 * file that cannot be read is ANVIL_ERR_IO. */
anvil_status anvil_model_files_get(anvil_model_files *m, const char *name, const char **text, size_t *len);

/* Where the file is, for messages: "DIR/config.json", or "ENGINE: config.json". */
const char *anvil_model_files_where(const anvil_model_files *m, const char *name, char *buf, size_t cap);

/* 1 when the model is an engine file. */
int anvil_model_files_is_engine(const anvil_model_files *m);

/* The path given to open. */
const char *anvil_model_files_path(const anvil_model_files *m);

#endif
