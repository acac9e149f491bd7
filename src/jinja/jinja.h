/*
 * A small interpreter of the Jinja subset that published chat templates use,
 * rendering as jinja2 does under transformers' apply_chat_template
 * (ImmutableSandboxedEnvironment, trim_blocks and lstrip_blocks on,
 * loopcontrols, {% generation %}, raise_exception, strftime_now and a tojson
 * that calls json.dumps). docs/chat-templates.md lists what is supported.
 *
 *     jinja_template *t;
 *     TRY(jinja_parse(src, strlen(src), &t));
 *     json_t *vars = json_pack("{s:[], s:b}", "messages", "add_generation_prompt", 1);
 *     char *text; size_t n;
 *     anvil_status st = jinja_render(t, vars, NULL, &text, &n);
 *
 * A parsed template is immutable: any number of threads may render it at once.
 */
#ifndef ANVIL_TOKENIZER_JINJA_H
#define ANVIL_TOKENIZER_JINJA_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "anvil/status.h"

typedef struct jinja_template jinja_template;

/* What one render may use; a template that goes past one fails with
 * ANVIL_ERR_CAPACITY instead of hanging or exhausting memory. */
typedef struct jinja_limits {
    size_t max_output; /* bytes of rendered text (also each captured block) */
    size_t max_memory; /* bytes allocated by one render, values included */
    int64_t max_steps; /* statements run + loop iterations + calls */
    int max_depth;     /* nesting of macro calls and loops */
} jinja_limits;

/* The defaults: 64 MiB of output, 512 MiB of memory, 20 million steps,
 * depth 128. */
void jinja_default_limits(jinja_limits *lim);

/* The largest template source accepted (bytes). */
#define JINJA_MAX_SOURCE ((size_t)4 << 20)

/*
 * Parses a template (len bytes of UTF-8; NULs allowed). *out is taken by the
 * caller (jinja_template_free). Syntax errors give ANVIL_ERR_FORMAT with a
 * message "TemplateSyntaxError: <what> (line N)"; an unknown filter or test
 * outside a conditional gives "TemplateAssertionError: No filter named 'x'.".
 */
anvil_status jinja_parse(const char *src, size_t len, jinja_template **out);

/* Frees a template; NULL is a no-op. */
void jinja_template_free(jinja_template *t);

/*
 * Renders t with the variables of the JSON object vars (borrowed). lim NULL:
 * the defaults. On success *out is a malloc'd NUL-terminated text of *out_len
 * bytes, taken by the caller. Errors: the template's own exceptions give
 * ANVIL_ERR_INVALID_ARG with "<Kind>: <message>" (raise_exception gives
 * "TemplateError: <its message>"), limits give ANVIL_ERR_CAPACITY.
 */
anvil_status jinja_render(const jinja_template *t, const json_t *vars, const jinja_limits *lim, char **out,
                          size_t *out_len);

#endif
