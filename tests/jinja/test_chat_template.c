/*
 * Chat templates against Hugging Face: every case of
 * golden/tokenizers/<name>/chat.jsonl (templates from tokenizers/<name>) and
 * golden/chat_templates/<template>.jsonl (templates from chat_templates/)
 * renders byte for byte as transformers' apply_chat_template did, or fails
 * with the same message where the golden has "error". Also: loading rules,
 * argument errors, and the anvil chat-template command.
 */
#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "anvil/chat_template.h"
#include "testutil.h"

/* Keys of a golden line that are not template variables. */
static int is_fixed_key(const char *key)
{
    static const char *const fixed[] = {
        "messages", "add_generation_prompt", "bos_token", "eos_token", "tools", "text", "error", NULL};
    for (int i = 0; fixed[i]; i++)
        if (strcmp(key, fixed[i]) == 0)
            return 1;
    return 0;
}

/* Renders every line of a golden file with t; returns the number of lines. */
static int check_golden_file(const anvil_chat_template *t, const char *path, int *failures)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        fail_msg("cannot open %s", path);
    char *line = NULL;
    size_t cap = 0;
    int n = 0;
    while (getline(&line, &cap, f) > 0) {
        json_error_t jerr;
        json_t *c = json_loads(line, 0, &jerr);
        assert_non_null(c);
        n++;
        anvil_chat_render_options opts = {0};
        opts.add_generation_prompt = json_is_true(json_object_get(c, "add_generation_prompt"));
        const json_t *bos = json_object_get(c, "bos_token"), *eos = json_object_get(c, "eos_token");
        opts.bos_token = json_is_string(bos) ? json_string_value(bos) : NULL;
        opts.eos_token = json_is_string(eos) ? json_string_value(eos) : NULL;
        /* a null token in the golden is a tokenizer without it: the folder's (none) */
        if (json_is_null(bos))
            assert_null(anvil_chat_template_bos_token(t));
        json_t *extra = json_object();
        const char *key;
        json_t *val;
        json_object_foreach(c, key, val)
        {
            if (!is_fixed_key(key))
                json_object_set(extra, key, val);
        }
        char *messages = json_dumps(json_object_get(c, "messages"), JSON_COMPACT);
        char *extra_text = json_dumps(extra, JSON_COMPACT);
        char *tools =
            json_object_get(c, "tools") ? json_dumps(json_object_get(c, "tools"), JSON_COMPACT) : NULL;
        opts.extra_vars_json = extra_text;
        opts.tools_json = tools;
        char *text = NULL;
        anvil_status st = anvil_chat_template_render(t, messages, &opts, &text);
        const json_t *want_text = json_object_get(c, "text"), *want_error = json_object_get(c, "error");
        if (want_text) {
            if (st != ANVIL_OK || strcmp(text, json_string_value(want_text)) != 0) {
                printf("%s line %d:\n  want %s\n  got  %s\n", path, n, json_string_value(want_text),
                       st == ANVIL_OK ? text : anvil_last_error());
                (*failures)++;
            }
        } else {
            /* golden "TemplateError: <message>": the same words, and no text */
            assert_non_null(want_error);
            const char *msg =
                st == ANVIL_OK ? NULL : strstr(anvil_last_error(), json_string_value(want_error));
            if (st != ANVIL_ERR_INVALID_ARG || msg == NULL ||
                strcmp(msg, json_string_value(want_error)) != 0) {
                printf("%s line %d:\n  want error %s\n  got  %s\n", path, n, json_string_value(want_error),
                       st == ANVIL_OK ? text : anvil_last_error());
                (*failures)++;
            }
            assert_null(text);
        }
        free(text);
        free(messages);
        free(extra_text);
        free(tools);
        json_decref(extra);
        json_decref(c);
    }
    free(line);
    fclose(f);
    return n;
}

static void test_golden_tokenizers(void **state)
{
    (void)state;
    const char *golden = anvil_test_shared_path("golden/tokenizers");
    char golden_dir[1024];
    snprintf(golden_dir, sizeof golden_dir, "%s", golden);
    DIR *d = opendir(golden_dir);
    assert_non_null(d);
    int files = 0, lines = 0, failures = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[2048], tok_dir[2048];
        snprintf(path, sizeof path, "%s/%s/chat.jsonl", golden_dir, e->d_name);
        struct stat sb;
        if (stat(path, &sb) != 0)
            continue;
        snprintf(tok_dir, sizeof tok_dir, "%s", anvil_test_shared_path("tokenizers"));
        size_t k = strlen(tok_dir);
        snprintf(tok_dir + k, sizeof tok_dir - k, "/%s", e->d_name);
        anvil_chat_template *t = NULL;
        if (anvil_chat_template_load(tok_dir, &t) != ANVIL_OK)
            fail_msg("%s: %s", tok_dir, anvil_last_error());
        lines += check_golden_file(t, path, &failures);
        files++;
        anvil_chat_template_free(t);
    }
    closedir(d);
    printf("%d tokenizers, %d cases, %d differ\n", files, lines, failures);
    assert_true(files >= 5);
    assert_int_equal(failures, 0);
}

static void test_golden_chat_templates(void **state)
{
    (void)state;
    char golden_dir[1024], tpl_dir[1024];
    snprintf(golden_dir, sizeof golden_dir, "%s", anvil_test_shared_path("golden/chat_templates"));
    snprintf(tpl_dir, sizeof tpl_dir, "%s", anvil_test_shared_path("chat_templates"));
    DIR *d = opendir(golden_dir);
    assert_non_null(d);
    int files = 0, lines = 0, failures = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len < 7 || strcmp(e->d_name + len - 6, ".jsonl") != 0)
            continue;
        char path[2048], tpl_path[2048];
        snprintf(path, sizeof path, "%s/%s", golden_dir, e->d_name);
        snprintf(tpl_path, sizeof tpl_path, "%s/%.*s.jinja", tpl_dir, (int)(len - 6), e->d_name);
        FILE *f = fopen(tpl_path, "rb");
        assert_non_null(f);
        char *src = calloc(1, 1 << 20);
        assert_non_null(src);
        size_t got = fread(src, 1, (1 << 20) - 1, f);
        fclose(f);
        assert_true(got > 0);
        anvil_chat_template *t = NULL;
        if (anvil_chat_template_parse(src, &t) != ANVIL_OK)
            fail_msg("%s: %s", tpl_path, anvil_last_error());
        free(src);
        lines += check_golden_file(t, path, &failures);
        files++;
        anvil_chat_template_free(t);
    }
    closedir(d);
    printf("%d templates, %d cases, %d differ\n", files, lines, failures);
    assert_true(files >= 7);
    assert_int_equal(failures, 0);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/%s", dir, name);
    assert_true(n > 0 && (size_t)n < sizeof path);
    anvil_test_write_file(path, text, strlen(text));
}

static char *render_simple(const anvil_chat_template *t, const char *messages,
                           const anvil_chat_render_options *o)
{
    char *out = NULL;
    if (anvil_chat_template_render(t, messages, o, &out) != ANVIL_OK)
        fail_msg("render: %s", anvil_last_error());
    return out;
}

static void test_loading_rules(void **state)
{
    (void)state;
    const char *msgs = "[{\"role\": \"user\", \"content\": \"hi\"}]";
    char dir[1024];
    /* a list of named templates: "default" is used; tokens as AddedToken objects */
    snprintf(dir, sizeof dir, "%s/list", anvil_test_tmpdir());
    mkdir(dir, 0755);
    write_text(dir, "tokenizer_config.json",
               "{\"bos_token\": {\"__type\": \"AddedToken\", \"content\": \"<B>\"}, \"eos_token\": \"<E>\","
               " \"model_max_length\": 1000000000000000019884624838656,"
               " \"chat_template\": [{\"name\": \"tool_use\", \"template\": \"tools\"},"
               " {\"name\": \"default\", \"template\": \"{{ bos_token }}{{ messages[0].content }}{{ "
               "eos_token }}\"}]}");
    anvil_chat_template *t = NULL;
    assert_int_equal(anvil_chat_template_load(dir, &t), ANVIL_OK);
    assert_string_equal(anvil_chat_template_bos_token(t), "<B>");
    assert_string_equal(anvil_chat_template_eos_token(t), "<E>");
    char *out = render_simple(t, msgs, NULL);
    assert_string_equal(out, "<B>hi<E>");
    free(out);
    /* given tokens win over the folder's, extra variables over both */
    anvil_chat_render_options o = {.bos_token = "[b]", .eos_token = "[e]"};
    out = render_simple(t, msgs, &o);
    assert_string_equal(out, "[b]hi[e]");
    free(out);
    o.extra_vars_json = "{\"eos_token\": \"[x]\"}";
    out = render_simple(t, msgs, &o);
    assert_string_equal(out, "[b]hi[x]");
    free(out);
    anvil_chat_template_free(t);

    /* chat_template.json (processors) over the config's, chat_template.jinja over both */
    write_text(dir, "chat_template.json", "{\"chat_template\": \"json file: {{ bos_token }}\"}");
    assert_int_equal(anvil_chat_template_load(dir, &t), ANVIL_OK);
    out = render_simple(t, msgs, NULL);
    assert_string_equal(out, "json file: <B>");
    free(out);
    anvil_chat_template_free(t);
    /* chat_template.jinja takes priority over the config's template */
    write_text(dir, "chat_template.jinja", "jinja file: {{ messages | length }}\n");
    assert_int_equal(anvil_chat_template_load(dir, &t), ANVIL_OK);
    out = render_simple(t, msgs, NULL);
    assert_string_equal(out, "jinja file: 1");
    free(out);
    anvil_chat_template_free(t);
    /* a template given as text, with the folder's tokens */
    assert_int_equal(anvil_chat_template_load_source(dir, "{{ bos_token }}!", &t), ANVIL_OK);
    out = render_simple(t, msgs, NULL);
    assert_string_equal(out, "<B>!");
    free(out);
    anvil_chat_template_free(t);

    /* no template at all */
    snprintf(dir, sizeof dir, "%s/none", anvil_test_tmpdir());
    mkdir(dir, 0755);
    write_text(dir, "tokenizer_config.json", "{\"bos_token\": \"<s>\"}");
    t = (anvil_chat_template *)dir; /* must be reset to NULL */
    assert_status_msg(anvil_chat_template_load(dir, &t), ANVIL_ERR_NOT_FOUND, "has no chat template");
    assert_null(t);
    /* a list without "default" */
    write_text(dir, "tokenizer_config.json",
               "{\"chat_template\": [{\"name\": \"rag\", \"template\": \"x\"}]}");
    assert_status_msg(anvil_chat_template_load(dir, &t), ANVIL_ERR_NOT_FOUND, "none is named 'default'");
    /* malformed config and template */
    write_text(dir, "tokenizer_config.json", "{\"chat_template\": ");
    assert_int_equal(anvil_chat_template_load(dir, &t), ANVIL_ERR_FORMAT);
    write_text(dir, "tokenizer_config.json", "{\"chat_template\": \"{% if %}\"}");
    assert_status_msg(anvil_chat_template_load(dir, &t), ANVIL_ERR_FORMAT, "tokenizer_config.json");
    assert_null(t);
    assert_int_equal(anvil_chat_template_load("/nonexistent/folder", &t), ANVIL_ERR_NOT_FOUND);
    anvil_chat_template_free(NULL);
}

static void test_render_arguments(void **state)
{
    (void)state;
    anvil_chat_template *t = NULL;
    assert_int_equal(
        anvil_chat_template_parse("{{ tools is none }}{{ documents is none }}{{ add_generation_prompt }}"
                                  "{{ bos_token is defined }}{% for t in tools or [] %}{{ t | tojson }}"
                                  "{% endfor %}{{ date_string | default('') }}",
                                  &t),
        ANVIL_OK);
    char *out = render_simple(t, "[]", NULL);
    assert_string_equal(out, "TrueTrueFalseFalse");
    free(out);
    anvil_chat_render_options o = {.add_generation_prompt = 1,
                                   .tools_json = "[{\"name\": \"f\", \"é\": [1, 2.5]}]",
                                   .extra_vars_json = "{\"date_string\": \"26 Jul 2024\"}"};
    out = render_simple(t, "[]", &o);
    assert_string_equal(out, "FalseTrueTrueFalse{\"name\": \"f\", \"é\": [1, 2.5]}26 Jul 2024");
    free(out);
    out = (char *)t;
    assert_status_msg(anvil_chat_template_render(t, "{\"role\": \"user\"}", NULL, &out),
                      ANVIL_ERR_INVALID_ARG, "messages must be a JSON array");
    assert_null(out);
    assert_status_msg(anvil_chat_template_render(t, "[{", NULL, &out), ANVIL_ERR_INVALID_ARG,
                      "not valid JSON");
    o.extra_vars_json = "{\"messages\": []}";
    assert_status_msg(anvil_chat_template_render(t, "[]", &o, &out), ANVIL_ERR_INVALID_ARG,
                      "'messages' is given as its own argument");
    o.extra_vars_json = "[1]";
    assert_status_msg(anvil_chat_template_render(t, "[]", &o, &out), ANVIL_ERR_INVALID_ARG, "JSON object");
    anvil_chat_template_free(t);

    assert_status_msg(anvil_chat_template_parse("{{ x | nosuchfilter }}", &t), ANVIL_ERR_FORMAT,
                      "No filter named 'nosuchfilter'");
    assert_null(t);
}

/* The command: --jsonl on a golden file gives the golden's text and errors. */
static void test_command_jsonl(void **state)
{
    (void)state;
    const char *bin = getenv("ANVIL_BIN");
    if (bin == NULL)
        skip();
    char golden[1024], cmd[4096];
    snprintf(golden, sizeof golden, "%s",
             anvil_test_shared_path("golden/chat_templates/google-gemma-2-2b-it.jsonl"));
    snprintf(cmd, sizeof cmd, "'%s' chat-template --template '%s' --jsonl < '%s'", bin,
             anvil_test_shared_path("chat_templates/google-gemma-2-2b-it.jinja"), golden);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    FILE *g = fopen(golden, "r");
    assert_non_null(g);
    char *got = NULL, *want = NULL;
    size_t gcap = 0, wcap = 0;
    int n = 0, errors = 0;
    while (getline(&want, &wcap, g) > 0) {
        assert_true(getline(&got, &gcap, p) > 0);
        json_error_t jerr;
        json_t *w = json_loads(want, 0, &jerr), *r = json_loads(got, 0, &jerr);
        assert_non_null(w);
        assert_non_null(r);
        if (json_object_get(w, "text")) {
            assert_string_equal(json_string_value(json_object_get(r, "text")),
                                json_string_value(json_object_get(w, "text")));
        } else {
            /* exactly transformers' message, "TemplateError: System role not supported" */
            assert_string_equal(json_string_value(json_object_get(r, "error")),
                                json_string_value(json_object_get(w, "error")));
            errors++;
        }
        json_decref(w);
        json_decref(r);
        n++;
    }
    assert_int_equal(getline(&got, &gcap, p), -1);
    free(got);
    free(want);
    fclose(g);
    assert_int_equal(pclose(p), 0);
    assert_int_equal(n, 10);
    assert_true(errors > 0);

    /* one conversation from the command line */
    snprintf(cmd, sizeof cmd,
             "'%s' chat-template --tokenizer '%s' --messages '[{\"role\":\"user\",\"content\":\"Hi\"}]' "
             "--add-generation-prompt",
             bin, anvil_test_shared_path("tokenizers/qwen2.5"));
    p = popen(cmd, "r");
    assert_non_null(p);
    char buf[4096];
    size_t len = fread(buf, 1, sizeof buf - 1, p);
    buf[len] = '\0';
    assert_int_equal(pclose(p), 0);
    assert_string_equal(buf, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                             "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    snprintf(cmd, sizeof cmd, "'%s' chat-template --help > /dev/null", bin);
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "'%s' chat-template --jsonl 2> /dev/null", bin);
    assert_int_not_equal(system(cmd), 0); /* no folder, no template */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_tokenizers), cmocka_unit_test(test_golden_chat_templates),
        cmocka_unit_test(test_loading_rules),     cmocka_unit_test(test_render_arguments),
        cmocka_unit_test(test_command_jsonl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
