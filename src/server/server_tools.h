/* server_tools.h: tool calls of chat requests (server_tools.c;
 * docs/server.md, "Tool calls"). The parsers that turn a model's output
 * into OpenAI tool_calls, whole or streamed, for the families anvil serves;
 * the parser a model gets; and, for tool_choice "required" or a named
 * function, the grammar and the prompt's tail that force a valid call. */
#ifndef ANVIL_SERVER_TOOLS_H
#define ANVIL_SERVER_TOOLS_H

#include <jansson.h>
#include <stddef.h>

#include "anvil/chat_template.h"
#include "anvil/grammar.h"
#include "anvil/tokenizer.h"

/* The call syntaxes (vLLM's --tool-call-parser names). */
typedef enum srv_tool_parser {
    SRV_TOOLS_NONE = 0,  /* no parsing ("none"); a forced call is a JSON array of {name, parameters} */
    SRV_TOOLS_LLAMA3,    /* "llama3_json": {"name": .., "parameters": {..}} [; ...], after an optional <|python_tag|> */
    SRV_TOOLS_HERMES,    /* "hermes": <tool_call>{"name": .., "arguments": {..}}</tool_call>, several (Qwen2.5/3) */
    SRV_TOOLS_MISTRAL,   /* "mistral": [TOOL_CALLS][{"name": .., "arguments": {..}}, ...] */
    SRV_TOOLS_AUTO = -1  /* the option's default: from the model's template and tokenizer */
} srv_tool_parser;

/* The parser of a --tool-call-parser name ("auto" included); -2: unknown. */
int srv_tools_parser_from_name(const char *name);
const char *srv_tools_parser_name(int parser);

/* The parser for a model: markers its chat template prints for tools and
 * tool calls (<tool_call>, [TOOL_CALLS], <|python_tag|>, Llama 3's
 * "parameters" JSON), then tokens of its vocabulary; NONE when neither
 * tells. Either may be NULL. */
int srv_tools_detect(const anvil_chat_template *t, const anvil_tokenizer *tok);

/* A parsed output: the text before the calls (content, content_len bytes;
 * the whole text when there is no call) and the calls, a JSON array of
 * {"name": string, "arguments": string (JSON text)}; NULL when none. */
typedef struct srv_tools_result {
    char *content;
    size_t content_len;
    json_t *calls;
} srv_tools_result;

void srv_tools_result_free(srv_tools_result *r);

/*
 * Parses a whole output. forced: the output is what the forcing grammar of
 * srv_tools_force made (the JSON after the prompt's tail). A call that does
 * not parse (malformed JSON, no name) leaves the whole text as content, no
 * calls. 0, or -1 out of memory.
 */
int srv_tools_parse(int parser, int forced, const char *text, size_t len, srv_tools_result *out);

/* The same, streamed: pieces pushed as they come, the content that can no
 * longer be part of a call handed out at once, the rest held until finish.
 * The content handed out, put together, is what srv_tools_parse of the
 * whole text gives. */
typedef struct srv_tools_stream {
    int parser, forced;
    int state;            /* 0 searching, 1 in calls (held), 2 content only */
    char *buf;            /* every byte pushed */
    size_t len, cap;
    size_t emitted;       /* bytes of buf handed out as content */
    int finished;         /* finish ran: nothing more comes out */
} srv_tools_stream;

void srv_tools_stream_init(srv_tools_stream *s, int parser, int forced);
void srv_tools_stream_free(srv_tools_stream *s);
/* Appends text; *out / *out_len: content to send now (inside s->buf, valid
 * until the next call; length 0: nothing). 0, or -1 out of memory. */
int srv_tools_stream_push(srv_tools_stream *s, const char *text, size_t len, const char **out, size_t *out_len);
/* The end: out->content is the content not handed out yet, out->calls the
 * calls. 0, or -1 out of memory. */
int srv_tools_stream_finish(srv_tools_stream *s, srv_tools_result *out);

/* A tool call's id: "call_" and 24 letters and digits; Mistral's templates
 * take only 9 letters and digits, so its parser's are that. buf >= 32. */
void srv_tools_call_id(int parser, char *buf, size_t cap);

/*
 * A forced call (tool_choice "required", or name non-NULL for a named
 * function; tools checked by the caller: an array of {"type": "function",
 * "function": {"name", "parameters"?}}): the JSON schema of the parser's
 * call object(s) whose arguments follow each tool's parameters (only the
 * named tool's), compiled against v with opts into *out, and the text that
 * ends the prompt (*tail, a constant: "<tool_call>\n", "[TOOL_CALLS]" or
 * ""), after which the model writes the JSON. parallel 0 or a name: one
 * call. 0, or
 * -1 with the engine's message in msg (the status in *status: 400 a schema
 * it refuses, 500 memory).
 */
int srv_tools_force(const anvil_grammar_vocab *v, const anvil_grammar_options *opts, int parser, json_t *tools,
                    const char *name, int parallel, anvil_grammar **out, const char **tail, int *status,
                    char *msg, size_t cap);

/* The same through the model's compiled-grammar cache (cache: server_guided.h's
 * srv_guided_cache; JSON compiled with srv_guided_json_options, not opts'). */
struct srv_gcache;
int srv_tools_force_cached(struct srv_gcache *cache, const anvil_grammar_vocab *v, int parser, json_t *tools,
                           const char *name, int parallel, anvil_grammar **out, const char **tail, int *status,
                           char *msg, size_t cap);

/* The forcing schema itself (the text srv_tools_force compiles; malloc'd),
 * for tests. NULL out of memory. */
char *srv_tools_force_schema(int parser, json_t *tools, const char *name, int parallel);

#endif
