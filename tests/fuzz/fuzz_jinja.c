/*
 * libFuzzer target for the Jinja interpreter: any byte string is parsed as a
 * template and, when it parses, rendered against a fixed chat (system, user,
 * assistant with a tool call, tool result), tools and special tokens, under
 * small limits so that each input runs in milliseconds. Whatever the bytes,
 * the result must be a status with a message (and no output) or a
 * NUL-terminated text; rendering twice gives the same text. ASan and UBSan
 * catch memory errors, leaks and undefined behaviour; the limits catch hangs.
 */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jinja/jinja.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const VARS =
    "{\"messages\": ["
    "{\"role\": \"system\", \"content\": \"You are helpful.\"},"
    "{\"role\": \"user\", \"content\": \"Weather in Paris? caf\\u00e9 \\u65e5\\u672c\"},"
    "{\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"id\": \"call12345\", \"type\": "
    "\"function\","
    " \"function\": {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}}]},"
    "{\"role\": \"tool\", \"content\": \"{\\\"temp\\\": 21.5}\", \"tool_call_id\": \"call12345\"},"
    "{\"role\": \"assistant\", \"content\": \"<think>\\nhm\\n</think>\\n\\nIt is 21.5 C.\"}],"
    " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": "
    "\"Weather\","
    " \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}},"
    " \"required\": [\"city\"]}}}],"
    " \"documents\": null, \"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\","
    " \"date_string\": \"26 Jul 2024\", \"n\": 3, \"f\": 2.5, \"flag\": false}";

static json_t *vars;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (vars == NULL) {
        json_error_t jerr;
        vars = json_loads(VARS, 0, &jerr);
        if (vars == NULL)
            __builtin_trap();
    }
    jinja_template *t = (jinja_template *)&t; /* must be reset to NULL on failure */
    if (jinja_parse((const char *)data, size, &t) != ANVIL_OK) {
        if (t != NULL || anvil_last_error()[0] == '\0')
            __builtin_trap();
        return 0;
    }
    jinja_limits lim;
    jinja_default_limits(&lim);
    lim.max_steps = 20000;
    lim.max_output = 1 << 20;
    lim.max_memory = 64 << 20;
    lim.max_depth = 32;
    char *out = (char *)&out, *again = NULL;
    size_t len = 0, len2 = 0;
    anvil_status st = jinja_render(t, vars, &lim, &out, &len);
    if (st != ANVIL_OK) {
        if (out != NULL || anvil_last_error()[0] == '\0')
            __builtin_trap();
    } else {
        if (out == NULL || out[len] != '\0')
            __builtin_trap();
        /* deterministic, unless the template reads the clock */
        if (memmem(data, size, "strftime", 8) == NULL) {
            if (jinja_render(t, vars, &lim, &again, &len2) != ANVIL_OK || len2 != len ||
                memcmp(out, again, len) != 0)
                __builtin_trap();
        }
    }
    free(out);
    free(again);
    jinja_template_free(t);
    return 0;
}
