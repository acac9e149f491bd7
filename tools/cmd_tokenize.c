/* anvil tokenize: print the token ids of a text, or of many texts (--jsonl). */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "anvil/tokenizer.h"
#include "cli_error.h"
#include "cli_flags.h"
#include "commands.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: anvil tokenize --tokenizer DIR [--no-special] [TEXT]\n"
            "       anvil tokenize --tokenizer DIR --jsonl < cases.jsonl\n\n"
            "Prints the token ids of TEXT as a JSON array (TEXT absent: all of stdin),\n"
            "exactly as Hugging Face tokenizers' Tokenizer.encode(TEXT).ids.\n\n"
            "options:\n"
            "  -t, --tokenizer DIR  folder with tokenizer.json (a tokenizer or model folder),\n"
            "                       or the tokenizer.json file itself\n"
            "  -n, --no-special     do not add the special tokens of the post-processor (BOS, ...)\n"
            "  -j, --jsonl          batch mode: each stdin line {\"text\": ..., \"add_special_tokens\": bool}\n"
            "                       gives one line {\"ids\": [...]}, or {\"error\": \"...\"} for a bad line\n"
            "  -h, --help           this help\n");
}

static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *b = realloc(buf, cap * 2);
            if (!b) {
                free(buf);
                return NULL;
            }
            buf = b;
            cap *= 2;
        }
    }
    *len = n;
    return buf;
}

static void print_ids(FILE *out, const int32_t *ids, int64_t n)
{
    fputc('[', out);
    for (int64_t i = 0; i < n; i++)
        fprintf(out, i ? ", %d" : "%d", ids[i]);
    fputc(']', out);
}

static void print_error_line(const char *msg)
{
    json_t *o = json_pack("{s:s}", "error", msg);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    printf("%s\n", s ? s : "{\"error\": \"out of memory\"}");
    free(s);
    json_decref(o);
}

static int run_jsonl(const anvil_tokenizer *tok)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int failures = 0;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = 0;
        if (n == 0)
            continue;
        json_error_t err;
        json_t *o = json_loadb(line, (size_t)n, JSON_ALLOW_NUL, &err);
        json_t *text = o ? json_object_get(o, "text") : NULL;
        json_t *add = o ? json_object_get(o, "add_special_tokens") : NULL;
        if (!json_is_string(text) || (add && !json_is_boolean(add))) {
            print_error_line(o ? "expected {\"text\": string, \"add_special_tokens\": bool}" : err.text);
            failures++;
            json_decref(o);
            continue;
        }
        int32_t *ids;
        int64_t n_ids;
        anvil_status st = anvil_tokenizer_encode(tok, json_string_value(text), json_string_length(text),
                                                 add ? json_is_true(add) : 1, &ids, &n_ids);
        if (st != ANVIL_OK) {
            print_error_line(anvil_last_error());
            failures++;
        } else {
            fputs("{\"ids\": ", stdout);
            print_ids(stdout, ids, n_ids);
            fputs("}\n", stdout);
            free(ids);
        }
        json_decref(o);
    }
    free(line);
    return failures ? 1 : 0;
}

int anvil_cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"tokenizer", required_argument, NULL, 't'},
        {"no-special", no_argument, NULL, 'n'},
        {"jsonl", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *dir = NULL;
    int add_special = 1, jsonl = 0, c;
    optind = 1;
    while ((c = cli_getopt(argc, argv, "t:njh", opts)) != -1) {
        switch (c) {
        case 't': dir = optarg; break;
        case 'n': add_special = 0; break;
        case 'j': jsonl = 1; break;
        case 'h': usage(stdout); return 0;
        default: return cli_bad_flag("anvil tokenize", argv, "t:njh", opts);
        }
    }
    if (!dir) {
        fprintf(stderr, "anvil tokenize: --tokenizer is required\n\n");
        usage(stderr);
        return 2;
    }
    if (optind + 1 < argc || (jsonl && optind < argc)) {
        fprintf(stderr, "anvil tokenize: give one TEXT argument (quote it), or --jsonl with no TEXT\n");
        return 2;
    }
    anvil_tokenizer *tok;
    if (anvil_tokenizer_load(dir, &tok) != ANVIL_OK) {
        anvil_cli_report("anvil tokenize");
        return 1;
    }
    int rc = 0;
    if (jsonl) {
        rc = run_jsonl(tok);
    } else {
        char *owned = NULL;
        const char *text;
        size_t len;
        if (optind < argc) {
            text = argv[optind];
            len = strlen(text);
        } else {
            owned = read_all(stdin, &len);
            text = owned;
            if (!owned) {
                fprintf(stderr, "anvil tokenize: out of memory reading stdin\n");
                anvil_tokenizer_free(tok);
                return 1;
            }
        }
        int32_t *ids;
        int64_t n;
        if (anvil_tokenizer_encode(tok, text, len, add_special, &ids, &n) != ANVIL_OK) {
            anvil_cli_report("anvil tokenize");
            rc = 1;
        } else {
            print_ids(stdout, ids, n);
            fputc('\n', stdout);
            free(ids);
        }
        free(owned);
    }
    anvil_tokenizer_free(tok);
    if (fflush(stdout) != 0)
        rc = 1;
    return rc;
}
