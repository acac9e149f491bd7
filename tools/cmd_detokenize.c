/* anvil detokenize: print the text of token ids, or of many id lists (--jsonl). */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/tokenizer.h"
#include "cli_error.h"
#include "cli_flags.h"
#include "commands.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: anvil detokenize --tokenizer DIR [--skip-special] ID...\n"
            "       anvil detokenize --tokenizer DIR --jsonl < cases.jsonl\n\n"
            "Prints the text of the token ids followed by a newline, exactly as Hugging Face\n"
            "tokenizers' Tokenizer.decode(ids, skip_special_tokens). Ids outside the\n"
            "vocabulary are skipped, as HF does.\n\n"
            "options:\n"
            "  -t, --tokenizer DIR  folder with tokenizer.json (a tokenizer or model folder),\n"
            "                       or the tokenizer.json file itself\n"
            "  -s, --skip-special   leave out special tokens (BOS, EOS, chat markers)\n"
            "  -j, --jsonl          batch mode: each stdin line {\"ids\": [...], \"skip_special_tokens\": bool}\n"
            "                       gives one line {\"text\": \"...\"}, or {\"error\": \"...\"} for a bad line\n"
            "  -h, --help           this help\n");
}

static void print_json_line(const char *key, const char *val, size_t len)
{
    json_t *o = json_object();
    json_t *s = o ? json_stringn(val, len) : NULL;
    char *d = NULL;
    if (s && json_object_set_new(o, key, s) == 0)
        d = json_dumps(o, JSON_COMPACT);
    printf("%s\n", d ? d : "{\"error\": \"out of memory\"}");
    free(d);
    json_decref(o);
}

static int run_jsonl(const anvil_tokenizer *tok)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int failures = 0;
    int32_t *ids = NULL;
    size_t ids_cap = 0;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = 0;
        if (n == 0)
            continue;
        json_error_t err;
        json_t *o = json_loadb(line, (size_t)n, 0, &err);
        json_t *arr = o ? json_object_get(o, "ids") : NULL;
        json_t *skip = o ? json_object_get(o, "skip_special_tokens") : NULL;
        const char *bad = NULL;
        if (!json_is_array(arr) || (skip && !json_is_boolean(skip)))
            bad = o ? "expected {\"ids\": [int...], \"skip_special_tokens\": bool}" : err.text;
        size_t k = json_is_array(arr) ? json_array_size(arr) : 0;
        if (!bad && k > ids_cap) {
            int32_t *q = realloc(ids, k * sizeof *q);
            if (!q)
                bad = "out of memory";
            else {
                ids = q;
                ids_cap = k;
            }
        }
        for (size_t i = 0; !bad && i < k; i++) {
            json_t *v = json_array_get(arr, i);
            if (!json_is_integer(v) || json_integer_value(v) < INT32_MIN || json_integer_value(v) > INT32_MAX)
                bad = "ids must be 32-bit integers";
            else
                ids[i] = (int32_t)json_integer_value(v);
        }
        if (bad) {
            print_json_line("error", bad, strlen(bad));
            failures++;
            json_decref(o);
            continue;
        }
        char *text;
        size_t len;
        if (anvil_tokenizer_decode(tok, ids, (int64_t)k, skip && json_is_true(skip), &text, &len) != ANVIL_OK) {
            const char *e = anvil_last_error();
            print_json_line("error", e, strlen(e));
            failures++;
        } else {
            print_json_line("text", text, len);
            free(text);
        }
        json_decref(o);
    }
    free(line);
    free(ids);
    return failures ? 1 : 0;
}

int anvil_cmd_detokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"tokenizer", required_argument, NULL, 't'},
        {"skip-special", no_argument, NULL, 's'},
        {"jsonl", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *dir = NULL;
    int skip = 0, jsonl = 0, c;
    optind = 1;
    while ((c = cli_getopt(argc, argv, "t:sjh", opts)) != -1) {
        switch (c) {
        case 't': dir = optarg; break;
        case 's': skip = 1; break;
        case 'j': jsonl = 1; break;
        case 'h': usage(stdout); return 0;
        default: return cli_bad_flag("anvil detokenize", argv, "t:sjh", opts);
        }
    }
    if (!dir) {
        fprintf(stderr, "anvil detokenize: --tokenizer is required\n\n");
        usage(stderr);
        return 2;
    }
    if (jsonl && optind < argc) {
        fprintf(stderr, "anvil detokenize: --jsonl reads ids from stdin, not from arguments\n");
        return 2;
    }
    int n = argc - optind;
    int32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
    if (!ids) {
        fprintf(stderr, "anvil detokenize: out of memory\n");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        char *end;
        errno = 0;
        long v = strtol(argv[optind + i], &end, 10);
        if (errno || *end || end == argv[optind + i] || v < INT32_MIN || v > INT32_MAX) {
            fprintf(stderr, "anvil detokenize: '%s' is not a token id\n", argv[optind + i]);
            free(ids);
            return 2;
        }
        ids[i] = (int32_t)v;
    }
    anvil_tokenizer *tok;
    if (anvil_tokenizer_load(dir, &tok) != ANVIL_OK) {
        anvil_cli_report("anvil detokenize");
        free(ids);
        return 1;
    }
    int rc = 0;
    if (jsonl) {
        rc = run_jsonl(tok);
    } else {
        char *text;
        size_t len;
        if (anvil_tokenizer_decode(tok, ids, n, skip, &text, &len) != ANVIL_OK) {
            anvil_cli_report("anvil detokenize");
            rc = 1;
        } else {
            fwrite(text, 1, len, stdout);
            fputc('\n', stdout);
            free(text);
        }
    }
    free(ids);
    anvil_tokenizer_free(tok);
    if (fflush(stdout) != 0)
        rc = 1;
    return rc;
}
