/*
 * anvil/chat_template.h: chat templates as Hugging Face transformers renders
 * them (apply_chat_template(..., tokenize=False)), byte for byte.
 *
 * A chat template is a Jinja program shipped with a model; anvil runs it with
 * its own interpreter of the Jinja subset that published templates use (see
 * docs/chat-templates.md). JSON passes in and out as text.
 *
 *     anvil_chat_template *t;
 *     if (anvil_chat_template_load("models/qwen2.5", &t) != ANVIL_OK) { ... }
 *     anvil_chat_render_options opts = {.add_generation_prompt = 1};
 *     char *text;
 *     anvil_status st = anvil_chat_template_render(
 *         t, "[{\"role\": \"user\", \"content\": \"Hi\"}]", &opts, &text);
 *     if (st == ANVIL_OK) { puts(text); free(text); }
 *     else fprintf(stderr, "%s\n", anvil_last_error());  // e.g. "...: TemplateError: ..."
 *     anvil_chat_template_free(t);
 */
#ifndef ANVIL_CHAT_TEMPLATE_H
#define ANVIL_CHAT_TEMPLATE_H

#include "anvil/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct anvil_chat_template anvil_chat_template;

/*
 * Loads the chat template of a model or tokenizer folder: chat_template.jinja
 * when the folder has one (transformers gives it priority), else the
 * "chat_template" of chat_template.json, else tokenizer_config.json's (a
 * string, or a list of {"name", "template"} of which the one named "default"
 * is used). The special tokens bos_token, eos_token, unk_token and pad_token
 * are read from tokenizer_config.json (a string or {"content": ...}) when
 * present.
 * On success *out is taken by the caller (anvil_chat_template_free); on
 * failure *out is NULL: ANVIL_ERR_NOT_FOUND when the folder has no template,
 * ANVIL_ERR_IO / ANVIL_ERR_FORMAT for unreadable or malformed files and
 * templates.
 */
anvil_status anvil_chat_template_load(const char *dir, anvil_chat_template **out);

/*
 * As anvil_chat_template_load, with the template text given (source, UTF-8)
 * instead of the folder's: the folder only provides the special tokens (and
 * may lack tokenizer_config.json). source NULL: the same as
 * anvil_chat_template_load.
 */
anvil_status anvil_chat_template_load_source(const char *dir, const char *source, anvil_chat_template **out);

/*
 * Parses a template from its text (no special tokens known). *out as for
 * anvil_chat_template_load. A syntax error gives ANVIL_ERR_FORMAT with
 * "TemplateSyntaxError: <what> (line N)" in the message.
 */
anvil_status anvil_chat_template_parse(const char *source, anvil_chat_template **out);

/* Frees a template; NULL is a no-op. */
void anvil_chat_template_free(anvil_chat_template *t);

typedef struct anvil_chat_render_options {
    int add_generation_prompt;   /* the template's add_generation_prompt variable */
    const char *bos_token;       /* NULL: the folder's; undefined in the template when it has none */
    const char *eos_token;       /* likewise */
    const char *tools_json;      /* a JSON array of tool schemas, or NULL (then `tools` is none) */
    const char *documents_json;  /* a JSON array of documents for retrieval (RAG), or NULL (none) */
    const char *extra_vars_json; /* a JSON object of more variables ({"date_string": ...}), or NULL */
} anvil_chat_render_options;

/*
 * Renders a conversation. messages_json is a JSON array of messages
 * ({"role", "content", ...}, any JSON), opts may be NULL (no generation
 * prompt, the folder's tokens). The template sees messages, tools and
 * documents (none unless given), add_generation_prompt, the special tokens,
 * then the extra variables (which may override the special tokens, as
 * apply_chat_template's keyword arguments do). On success *out is a malloc'd
 * NUL-terminated text taken by the caller; on failure *out is NULL and:
 * ANVIL_ERR_INVALID_ARG for malformed JSON and for a template that fails,
 * with the template's own message ("TemplateError: <raise_exception's
 * argument>", "UndefinedError: ...", "TypeError: ..."); ANVIL_ERR_CAPACITY
 * when the render passes a resource limit (output size, memory, steps,
 * nesting). Any number of threads may render one template at once.
 */
anvil_status anvil_chat_template_render(const anvil_chat_template *t, const char *messages_json,
                                        const anvil_chat_render_options *opts, char **out);

/* The BOS / EOS token loaded with the template, or NULL when none. The
 * pointer is valid as long as t. */
const char *anvil_chat_template_bos_token(const anvil_chat_template *t);
const char *anvil_chat_template_eos_token(const anvil_chat_template *t);

#ifdef __cplusplus
}
#endif
#endif
