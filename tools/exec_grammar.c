/*
 * Structured output for `anvil run --input` (exec_cli.h): the fields the
 * server takes (docs/server.md, "Structured output"): response_format
 * {type: text | json_object | json_schema {schema}}, guided_json (an
 * object or a string), guided_regex, guided_choice, guided_grammar; at
 * most one. JSON with json.dumps' whitespace, as the server.
 */
#include <stdlib.h>
#include <string.h>

#include "exec_cli.h"

static const char *const kinds[] = {"guided_json", "guided_regex", "guided_choice", "guided_grammar"};

int exec_cli_structured_field(const char *key)
{
    if (strcmp(key, "response_format") == 0)
        return 1;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(key, kinds[i]) == 0)
            return 1;
    return 0;
}

static int compile_failed(const char *field, char *err, size_t n)
{
    snprintf(err, n, "'%s': %s", field, anvil_last_error());
    return -1;
}

static int compile_field(const char *field, json_t *val, const anvil_grammar_vocab *v, anvil_grammar **out,
                         char *err, size_t n)
{
    anvil_grammar_options jo;
    anvil_grammar_options_default(&jo);
    jo.max_whitespace = -1;
    anvil_status st;
    if (strcmp(field, "response_format") == 0) {
        const char *ty = json_string_value(json_object_get(val, "type"));
        json_t *js = json_object_get(val, "json_schema");
        json_t *schema = json_is_object(js) ? json_object_get(js, "schema") : NULL;
        if (ty == NULL || (strcmp(ty, "json_object") != 0 && strcmp(ty, "json_schema") != 0)) {
            snprintf(err, n, "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"");
            return -1;
        }
        if (strcmp(ty, "json_schema") == 0 && !json_is_object(js)) {
            snprintf(err, n, "'response_format' of type 'json_schema' needs a 'json_schema' object");
            return -1;
        }
        if (schema == NULL)
            st = anvil_grammar_compile_json_object(v, &jo, out);
        else {
            char *text = json_dumps(schema, JSON_COMPACT | JSON_ENCODE_ANY);
            if (text == NULL)
                return snprintf(err, n, "out of memory"), -1;
            st = anvil_grammar_compile_json_schema(v, text, strlen(text), &jo, out);
            free(text);
        }
    } else if (strcmp(field, "guided_json") == 0) {
        char *text = json_is_string(val) ? strdup(json_string_value(val))
                                         : json_dumps(val, JSON_COMPACT | JSON_ENCODE_ANY);
        if (text == NULL)
            return snprintf(err, n, "out of memory"), -1;
        st = anvil_grammar_compile_json_schema(v, text, strlen(text), &jo, out);
        free(text);
    } else if (strcmp(field, "guided_choice") == 0) {
        size_t m = json_is_array(val) ? json_array_size(val) : 0;
        const char **ch = calloc(m ? m : 1, sizeof *ch);
        size_t *lens = calloc(m ? m : 1, sizeof *lens);
        int ok = ch && lens && m > 0 && m <= 65536;
        for (size_t i = 0; ok && i < m; i++) {
            json_t *c = json_array_get(val, i);
            ok = json_is_string(c);
            if (ok) {
                ch[i] = json_string_value(c);
                lens[i] = json_string_length(c);
            }
        }
        st = ok ? anvil_grammar_compile_choice(v, ch, lens, (int)m, NULL, out) : ANVIL_ERR_INVALID_ARG;
        free(ch);
        free(lens);
        if (!ok) {
            snprintf(err, n, "'guided_choice' must be a non-empty array of strings");
            return -1;
        }
    } else {
        if (!json_is_string(val)) {
            snprintf(err, n, "'%s' must be a string", field);
            return -1;
        }
        const char *s = json_string_value(val);
        const size_t len = json_string_length(val);
        st = strcmp(field, "guided_regex") == 0 ? anvil_grammar_compile_regex(v, s, len, NULL, out)
                                                : anvil_grammar_compile_ebnf(v, s, len, NULL, NULL, out);
    }
    return st == ANVIL_OK ? 0 : compile_failed(field, err, n);
}

int exec_cli_request_grammar(json_t *obj, const anvil_tokenizer *tok, const anvil_model_config *cfg,
                             anvil_grammar_vocab **vocab, anvil_grammar **out, char *err, size_t n)
{
    *out = NULL;
    const char *field = NULL;
    json_t *val = NULL;
    json_t *rf = json_object_get(obj, "response_format");
    if (rf != NULL && !json_is_null(rf)) {
        const char *ty = json_string_value(json_object_get(rf, "type"));
        if (!json_is_object(rf) || ty == NULL) {
            snprintf(err, n, "'response_format' must be an object with a 'type'");
            return -1;
        }
        if (strcmp(ty, "text") != 0) {
            field = "response_format";
            val = rf;
        }
    }
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        json_t *f = json_object_get(obj, kinds[i]);
        if (f == NULL || json_is_null(f))
            continue;
        if (field != NULL) {
            snprintf(err, n, "only one kind of structured output per request ('%s' comes with '%s')", kinds[i],
                     field);
            return -1;
        }
        field = kinds[i];
        val = f;
    }
    if (field == NULL)
        return 0;
    if (tok == NULL) {
        snprintf(err, n, "structured output needs the model's tokenizer");
        return -1;
    }
    if (exec_cli_grammar_vocab(tok, cfg, vocab, err, n) != 0)
        return -1;
    return compile_field(field, val, *vocab, out, err, n);
}

int exec_cli_grammar_vocab(const anvil_tokenizer *tok, const anvil_model_config *cfg, anvil_grammar_vocab **vocab,
                           char *err, size_t n)
{
    if (tok == NULL) {
        snprintf(err, n, "structured output needs the model's tokenizer");
        return -1;
    }
    if (*vocab == NULL && anvil_grammar_vocab_from_tokenizer(tok, (int32_t)cfg->vocab_size, cfg->eos_token_ids,
                                                             cfg->n_eos_token_ids, vocab) != ANVIL_OK) {
        snprintf(err, n, "the vocabulary for structured output: %s", anvil_last_error());
        return -1;
    }
    return 0;
}

int exec_cli_grammar_key(json_t *obj, char **key)
{
    *key = NULL;
    json_t *sel = json_object();
    if (sel == NULL)
        return -1;
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        if (!exec_cli_structured_field(k) || json_is_null(v))
            continue;
        const char *ty = json_string_value(json_object_get(v, "type"));
        if (strcmp(k, "response_format") == 0 && ty && strcmp(ty, "text") == 0)
            continue;
        json_object_set(sel, k, v);
    }
    int rc = 0;
    if (json_object_size(sel) > 0) {
        *key = json_dumps(sel, JSON_COMPACT | JSON_SORT_KEYS);
        rc = *key ? 0 : -1;
    }
    json_decref(sel);
    return rc;
}
