/*
 * Chat templates: where a model keeps its template and special tokens, and
 * the variables apply_chat_template gives it (messages, tools, documents,
 * add_generation_prompt, the special tokens, then the caller's keyword
 * arguments).
 */
#include "anvil/chat_template.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/fileutil.h"
#include "io/model_files.h"
#include "jinja/jinja.h"

enum { TOK_BOS, TOK_EOS, TOK_UNK, TOK_PAD, TOK_COUNT };

static const char *const token_keys[TOK_COUNT] = {"bos_token", "eos_token", "unk_token", "pad_token"};

struct anvil_chat_template {
    jinja_template *tpl;
    char *tokens[TOK_COUNT]; /* NULL when the tokenizer has none */
};

void anvil_chat_template_free(anvil_chat_template *t)
{
    if (t == NULL)
        return;
    jinja_template_free(t->tpl);
    for (int i = 0; i < TOK_COUNT; i++)
        free(t->tokens[i]);
    free(t);
}

static anvil_status parse_into(const char *src, size_t len, anvil_chat_template **out)
{
    *out = NULL;
    anvil_chat_template *t = calloc(1, sizeof *t);
    CHECK(t != NULL, ANVIL_ERR_OOM, "out of memory");
    anvil_status st = jinja_parse(src, len, &t->tpl);
    if (st != ANVIL_OK) {
        free(t);
        return st;
    }
    *out = t;
    return ANVIL_OK;
}

anvil_status anvil_chat_template_parse(const char *source, anvil_chat_template **out)
{
    *out = NULL;
    CHECK(source != NULL, ANVIL_ERR_INVALID_ARG, "template source is NULL");
    return parse_into(source, strlen(source), out);
}

/* A special token as tokenizer_config.json writes it: "text" or an
 * AddedToken object {"content": "text", ...}. NULL when absent. */
static const char *token_text(const json_t *v)
{
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_object(v)) {
        const json_t *content = json_object_get(v, "content");
        if (json_is_string(content))
            return json_string_value(content);
    }
    return NULL;
}

/* tokenizer_config.json's chat_template: a string, or a list of named
 * templates of which "default" is the one apply_chat_template uses. */
static anvil_status config_template(const json_t *cfg, const char *path, const json_t **src)
{
    *src = NULL;
    const json_t *ct = json_object_get(cfg, "chat_template");
    if (ct == NULL || json_is_null(ct))
        return ANVIL_OK;
    if (json_is_string(ct)) {
        *src = ct;
        return ANVIL_OK;
    }
    CHECK(json_is_array(ct), ANVIL_ERR_FORMAT, "%s: chat_template is neither a string nor a list", path);
    size_t i;
    const json_t *item;
    json_array_foreach(ct, i, item)
    {
        const json_t *name = json_object_get(item, "name");
        const json_t *tpl = json_object_get(item, "template");
        if (json_is_string(name) && json_is_string(tpl) && strcmp(json_string_value(name), "default") == 0) {
            *src = tpl;
            return ANVIL_OK;
        }
    }
    return ANVIL_FAIL(ANVIL_ERR_NOT_FOUND,
                      "%s: chat_template lists several templates and none is named 'default'", path);
}

anvil_status anvil_chat_template_load(const char *dir, anvil_chat_template **out)
{
    return anvil_chat_template_load_source(dir, NULL, out);
}

/* A model file parsed as JSON (as reals: tokenizer configs hold integers
 * past 64 bits, model_max_length = 1e30); it must be an object. */
static anvil_status load_json_file(anvil_model_files *mf, const char *name, json_t **out)
{
    *out = NULL;
    const char *text;
    size_t len;
    char where[4200];
    anvil_model_files_where(mf, name, where, sizeof where);
    TRY(anvil_model_files_get(mf, name, &text, &len));
    json_error_t jerr;
    json_t *j = json_loadb(text, len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &jerr);
    CHECK(j != NULL, ANVIL_ERR_FORMAT, "%s:%d: %s", where, jerr.line, jerr.text);
    if (!json_is_object(j)) {
        json_decref(j);
        return ANVIL_FAIL(ANVIL_ERR_FORMAT, "%s is not a JSON object", where);
    }
    *out = j;
    return ANVIL_OK;
}

anvil_status anvil_chat_template_load_source(const char *dir, const char *source, anvil_chat_template **out)
{
    *out = NULL;
    CHECK(dir != NULL, ANVIL_ERR_INVALID_ARG, "folder is NULL");
    anvil_model_files *mf = NULL;
    TRY(anvil_model_files_open(dir, &mf));
    char cfg_path[4200], jinja_path[4200], json_path[4200];
    anvil_model_files_where(mf, "tokenizer_config.json", cfg_path, sizeof cfg_path);
    anvil_model_files_where(mf, "chat_template.jinja", jinja_path, sizeof jinja_path);
    anvil_model_files_where(mf, "chat_template.json", json_path, sizeof json_path);

    anvil_status st = ANVIL_OK;
    json_t *cfg = NULL, *tpl_json = NULL;
    const char *src_path = cfg_path;
    anvil_chat_template *t = NULL;
    if (anvil_model_files_has(mf, "tokenizer_config.json"))
        TRY_GOTO(load_json_file(mf, "tokenizer_config.json", &cfg), done);
    const char *src = NULL;
    size_t src_len = 0;
    if (source != NULL) {
        src = source;
        src_len = strlen(source);
    } else if (anvil_model_files_has(mf, "chat_template.jinja")) {
        TRY_GOTO(anvil_model_files_get(mf, "chat_template.jinja", &src, &src_len), done);
        src_path = jinja_path;
    } else if (anvil_model_files_has(mf, "chat_template.json")) {
        /* processors save {"chat_template": ...} in chat_template.json */
        TRY_GOTO(load_json_file(mf, "chat_template.json", &tpl_json), done);
        const json_t *js;
        TRY_GOTO(config_template(tpl_json, json_path, &js), done);
        if (js) {
            src = json_string_value(js);
            src_len = json_string_length(js);
            src_path = json_path;
        }
    }
    if (src == NULL && source == NULL && cfg != NULL) {
        const json_t *js;
        TRY_GOTO(config_template(cfg, cfg_path, &js), done);
        if (js) {
            src = json_string_value(js);
            src_len = json_string_length(js);
        }
    }
    CHECK_GOTO(src != NULL, ANVIL_ERR_NOT_FOUND, done,
               "%s has no chat template (no chat_template.jinja, chat_template.json or "
               "chat_template in tokenizer_config.json)",
               dir);
    st = parse_into(src, src_len, &t);
    if (st != ANVIL_OK) {
        anvil_error_wrap("%s", source ? "template" : src_path);
        goto done;
    }
    for (int i = 0; cfg != NULL && i < TOK_COUNT; i++) {
        const char *text = token_text(json_object_get(cfg, token_keys[i]));
        if (text == NULL)
            continue;
        t->tokens[i] = strdup(text);
        CHECK_GOTO(t->tokens[i] != NULL, ANVIL_ERR_OOM, done, "out of memory");
    }
    *out = t;
    t = NULL;
done:
    anvil_chat_template_free(t);
    json_decref(cfg);
    json_decref(tpl_json);
    anvil_model_files_close(mf);
    return st;
}

const char *anvil_chat_template_bos_token(const anvil_chat_template *t)
{
    return t ? t->tokens[TOK_BOS] : NULL;
}

const char *anvil_chat_template_eos_token(const anvil_chat_template *t)
{
    return t ? t->tokens[TOK_EOS] : NULL;
}

static anvil_status parse_json(const char *text, const char *what, json_t **out)
{
    json_error_t jerr;
    *out = json_loads(text, JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);
    CHECK(*out != NULL, ANVIL_ERR_INVALID_ARG, "%s is not valid JSON: line %d column %d: %s", what, jerr.line,
          jerr.column, jerr.text);
    return ANVIL_OK;
}

static int set_str(json_t *vars, const char *key, const char *value)
{
    return json_object_set_new(vars, key, json_string(value)) == 0;
}

anvil_status anvil_chat_template_render(const anvil_chat_template *t, const char *messages_json,
                                        const anvil_chat_render_options *opts, char **out)
{
    *out = NULL;
    CHECK(t != NULL && messages_json != NULL, ANVIL_ERR_INVALID_ARG, "template and messages are required");
    anvil_chat_render_options none = {0};
    if (opts == NULL)
        opts = &none;
    anvil_status st = ANVIL_OK;
    json_t *vars = json_object(), *messages = NULL, *tools = NULL, *documents = NULL, *extra = NULL;
    CHECK_GOTO(vars != NULL, ANVIL_ERR_OOM, done, "out of memory");
    TRY_GOTO(parse_json(messages_json, "messages", &messages), done);
    CHECK_GOTO(json_is_array(messages), ANVIL_ERR_INVALID_ARG, done, "messages must be a JSON array");
    if (opts->tools_json) {
        TRY_GOTO(parse_json(opts->tools_json, "tools", &tools), done);
        CHECK_GOTO(json_is_array(tools) || json_is_null(tools), ANVIL_ERR_INVALID_ARG, done,
                   "tools must be a JSON array");
    }
    if (opts->documents_json) {
        TRY_GOTO(parse_json(opts->documents_json, "documents", &documents), done);
        CHECK_GOTO(json_is_array(documents) || json_is_null(documents), ANVIL_ERR_INVALID_ARG, done,
                   "documents must be a JSON array");
    }
    if (opts->extra_vars_json) {
        TRY_GOTO(parse_json(opts->extra_vars_json, "extra variables", &extra), done);
        CHECK_GOTO(json_is_object(extra), ANVIL_ERR_INVALID_ARG, done,
                   "extra variables must be a JSON object");
    }

    int ok = json_object_set(vars, "messages", messages) == 0;
    ok &= json_object_set(vars, "tools", tools ? tools : json_null()) == 0;
    ok &= json_object_set(vars, "documents", documents ? documents : json_null()) == 0;
    ok &= json_object_set_new(vars, "add_generation_prompt", json_boolean(opts->add_generation_prompt)) == 0;
    const char *given[TOK_COUNT] = {opts->bos_token, opts->eos_token, NULL, NULL};
    for (int i = 0; i < TOK_COUNT; i++) {
        const char *v = given[i] ? given[i] : t->tokens[i];
        if (v)
            ok &= set_str(vars, token_keys[i], v);
    }
    if (extra) {
        const char *key;
        json_t *val;
        json_object_foreach(extra, key, val)
        {
            CHECK_GOTO(strcmp(key, "messages") && strcmp(key, "tools") && strcmp(key, "documents") &&
                           strcmp(key, "add_generation_prompt"),
                       ANVIL_ERR_INVALID_ARG, done, "extra variable '%s' is given as its own argument", key);
            ok &= json_object_set(vars, key, val) == 0;
        }
    }
    CHECK_GOTO(ok, ANVIL_ERR_OOM, done, "out of memory");
    st = jinja_render(t->tpl, vars, NULL, out, NULL);
done:
    json_decref(vars);
    json_decref(messages);
    json_decref(tools);
    json_decref(documents);
    json_decref(extra);
    return st;
}
