/*
 * anvil chat-template: renders chat messages with a model's chat template,
 * as transformers' apply_chat_template(..., tokenize=False) does.
 *
 *   anvil chat-template --tokenizer DIR --messages '[{"role":"user","content":"Hi"}]' --add-generation-prompt
 *   anvil chat-template --tokenizer DIR --jsonl < cases.jsonl
 *
 * With --jsonl each input line is an object {"messages", "add_generation_prompt",
 * "bos_token"?, "eos_token"?, "tools"?, ...more variables} and each output line
 * {"text": ...} or {"error": ...}.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/chat_template.h"
#include "cli_error.h"
#include "cli_flags.h"
#include "commands.h"

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: anvil chat-template --tokenizer DIR [--template FILE] (--jsonl | --messages JSON [options])\n"
        "\n"
        "Renders chat messages with a model's chat template, byte for byte as Hugging Face\n"
        "transformers' apply_chat_template(..., tokenize=False) does.\n"
        "\n"
        "  --tokenizer DIR          folder with tokenizer_config.json and/or chat_template.jinja\n"
        "  --template FILE          use this template instead of the folder's\n"
        "  --messages JSON          a JSON array of {\"role\", \"content\", ...}; prints the text\n"
        "  --add-generation-prompt  end with the prompt of the assistant's turn\n"
        "  --tools JSON             a JSON array of tool schemas\n"
        "  --documents JSON         a JSON array of documents (retrieval-augmented templates)\n"
        "  --vars JSON              a JSON object of more template variables (e.g. date_string)\n"
        "  --bos TEXT, --eos TEXT   override the folder's BOS / EOS tokens\n"
        "  --jsonl                  read one JSON object a line from stdin: {\"messages\",\n"
        "                           \"add_generation_prompt\", \"bos_token\"?, \"eos_token\"?, \"tools\"?,\n"
        "                           any other key is a template variable}; write {\"text\"} or\n"
        "                           {\"error\"} a line\n"
        "  -h, --help               this help\n");
}

static char *dump_or_null(const json_t *v)
{
    if (v == NULL || json_is_null(v))
        return NULL;
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

/* Renders one JSONL case; returns the JSON line to print (malloc'd). */
static char *render_line(const anvil_chat_template *t, const char *line)
{
    json_error_t jerr;
    json_t *in = json_loads(line, JSON_ALLOW_NUL, &jerr), *reply = json_object();
    char *text = NULL, *messages = NULL, *tools = NULL, *documents = NULL, *extra_text = NULL;
    json_t *extra = json_object();
    if (in == NULL || !json_is_object(in)) {
        char msg[300];
        snprintf(msg, sizeof msg, "input line is not a JSON object: %s", in ? "not an object" : jerr.text);
        json_object_set_new(reply, "error", json_string(msg));
        goto out;
    }
    anvil_chat_render_options opts = {0};
    opts.add_generation_prompt = json_is_true(json_object_get(in, "add_generation_prompt"));
    const json_t *bos = json_object_get(in, "bos_token"), *eos = json_object_get(in, "eos_token");
    opts.bos_token = json_is_string(bos) ? json_string_value(bos) : NULL;
    opts.eos_token = json_is_string(eos) ? json_string_value(eos) : NULL;
    const char *key;
    json_t *val;
    json_object_foreach(in, key, val)
    {
        static const char *const fixed[] = {"messages",  "add_generation_prompt",
                                            "bos_token", "eos_token",
                                            "tools",     "documents",
                                            "text",      "error",
                                            NULL};
        int is_fixed = 0;
        for (int i = 0; fixed[i]; i++)
            is_fixed |= strcmp(key, fixed[i]) == 0;
        if (!is_fixed)
            json_object_set(extra, key, val);
    }
    messages = dump_or_null(json_object_get(in, "messages"));
    tools = dump_or_null(json_object_get(in, "tools"));
    documents = dump_or_null(json_object_get(in, "documents"));
    extra_text = json_dumps(extra, JSON_COMPACT);
    opts.tools_json = tools;
    opts.documents_json = documents;
    opts.extra_vars_json = extra_text;
    if (anvil_chat_template_render(t, messages ? messages : "[]", &opts, &text) == ANVIL_OK)
        json_object_set_new(reply, "text", json_string(text));
    else
        json_object_set_new(reply, "error", json_string(anvil_last_error()));
out:
    free(text);
    free(messages);
    free(tools);
    free(documents);
    free(extra_text);
    json_decref(extra);
    json_decref(in);
    char *s = json_dumps(reply, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(reply);
    return s;
}

static int run_jsonl(const anvil_chat_template *t)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        if (n == 1 && line[0] == '\n')
            continue;
        char *reply = render_line(t, line);
        if (reply == NULL) {
            fprintf(stderr, "anvil chat-template: out of memory\n");
            rc = 1;
            break;
        }
        puts(reply);
        fflush(stdout);
        free(reply);
    }
    free(line);
    return rc;
}

static char *read_text_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (cap - len - 1 == 0) {
            char *nb = realloc(buf, cap * 2);
            if (nb == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf)
        buf[len] = '\0';
    return buf;
}

int anvil_cmd_chat_template(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"tokenizer", required_argument, NULL, 'k'},
        {"template", required_argument, NULL, 'T'},
        {"messages", required_argument, NULL, 'm'},
        {"add-generation-prompt", no_argument, NULL, 'g'},
        {"tools", required_argument, NULL, 't'},
        {"documents", required_argument, NULL, 'd'},
        {"vars", required_argument, NULL, 'v'},
        {"bos", required_argument, NULL, 'b'},
        {"eos", required_argument, NULL, 'e'},
        {"jsonl", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *dir = NULL, *template_file = NULL, *messages = NULL;
    anvil_chat_render_options opts = {0};
    int jsonl = 0, opt;
    optind = 1;
    while ((opt = cli_getopt(argc, argv, "h", longopts)) != -1) {
        switch (opt) {
        case 'k':
            dir = optarg;
            break;
        case 'T':
            template_file = optarg;
            break;
        case 'm':
            messages = optarg;
            break;
        case 'g':
            opts.add_generation_prompt = 1;
            break;
        case 't':
            opts.tools_json = optarg;
            break;
        case 'd':
            opts.documents_json = optarg;
            break;
        case 'v':
            opts.extra_vars_json = optarg;
            break;
        case 'b':
            opts.bos_token = optarg;
            break;
        case 'e':
            opts.eos_token = optarg;
            break;
        case 'j':
            jsonl = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default: return cli_bad_flag("anvil chat-template", argv, "h", longopts);
        }
    }
    if (optind < argc || (dir == NULL && template_file == NULL) || (!jsonl && messages == NULL) ||
        (jsonl && messages != NULL)) {
        usage(stderr);
        return 2;
    }
    char *source = NULL;
    if (template_file) {
        source = read_text_file(template_file);
        if (source == NULL) {
            fprintf(stderr, "anvil chat-template: cannot read %s: %s\n", template_file, strerror(errno));
            return 1;
        }
    }
    anvil_chat_template *t = NULL;
    anvil_status st =
        dir ? anvil_chat_template_load_source(dir, source, &t) : anvil_chat_template_parse(source, &t);
    free(source);
    if (st != ANVIL_OK) {
        anvil_cli_report("anvil chat-template");
        return 1;
    }
    int rc = 0;
    if (jsonl) {
        rc = run_jsonl(t);
    } else {
        char *text = NULL;
        if (anvil_chat_template_render(t, messages, &opts, &text) == ANVIL_OK) {
            fputs(text, stdout);
            free(text);
        } else {
            anvil_cli_report("anvil chat-template");
            rc = 1;
        }
    }
    anvil_chat_template_free(t);
    return rc;
}
