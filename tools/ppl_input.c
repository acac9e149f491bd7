/* anvil perplexity's inputs (see ppl_input.h). */
#include "ppl_input.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_error.h"

/* The whole file, NUL-terminated; NULL reported. */
static char *read_file(const char *tool, const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot read %s: %s\n", tool, path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0, got;
    char *buf = malloc(cap + 1);
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *b = realloc(buf, 2 * cap + 1);
            if (!b) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = b;
            cap *= 2;
        }
    }
    const int failed = ferror(f);
    fclose(f);
    if (!buf) {
        fprintf(stderr, "%s: out of memory reading %s\n", tool, path);
        return NULL;
    }
    if (failed) {
        fprintf(stderr, "%s: cannot read %s: %s\n", tool, path, strerror(errno ? errno : EIO));
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

int ppl_read_text(const char *tool, const char *path, const anvil_tokenizer *tok, int32_t **ids, int64_t *n)
{
    *ids = NULL;
    *n = 0;
    size_t len;
    char *text = read_file(tool, path, &len);
    if (!text)
        return -1;
    if (len == 0) {
        fprintf(stderr, "%s: %s is empty: there is nothing to score\n", tool, path);
        free(text);
        return -1;
    }
    const anvil_status st = anvil_tokenizer_encode(tok, text, len, 1, ids, n);
    free(text);
    if (st != ANVIL_OK) {
        anvil_cli_report("%s: tokenizing %s", tool, path);
        *ids = NULL;
        return -1;
    }
    return 0;
}

int ppl_read_ids(const char *tool, const char *path, int64_t vocab_size, int32_t **ids, int64_t *n)
{
    *ids = NULL;
    *n = 0;
    size_t len;
    char *text = read_file(tool, path, &len);
    if (!text)
        return -1;
    int64_t cap = 1024, count = 0;
    int32_t *out = malloc((size_t)cap * sizeof *out);
    const char *p = text;
    if (!out)
        goto oom;
    for (;;) {
        while (*p && (isspace((unsigned char)*p) || *p == ',' || *p == '[' || *p == ']'))
            p++;
        if (!*p)
            break;
        char *end;
        errno = 0;
        const long v = strtol(p, &end, 10);
        if (end == p) {
            int wl = 0; /* the word found, on the one line of the message */
            while (wl < 16 && p[wl] && !isspace((unsigned char)p[wl]))
                wl++;
            fprintf(
                stderr,
                "%s: %s: expected token ids (a JSON array, or integers separated by spaces or commas), found "
                "'%.*s' at byte %zu\n",
                tool, path, wl, p, (size_t)(p - text));
            goto fail;
        }
        if (errno || v < 0 || v >= vocab_size) {
            fprintf(stderr, "%s: %s: token id %.*s (id number %lld) is outside the vocabulary (0..%lld)\n",
                    tool, path, (int)(end - p), p, (long long)count + 1, (long long)vocab_size - 1);
            goto fail;
        }
        if (count == cap) {
            int32_t *o = realloc(out, (size_t)cap * 2 * sizeof *out);
            if (!o)
                goto oom;
            out = o;
            cap *= 2;
        }
        out[count++] = (int32_t)v;
        p = end;
    }
    if (count == 0) {
        fprintf(stderr, "%s: %s holds no token ids: there is nothing to score\n", tool, path);
        goto fail;
    }
    free(text);
    *ids = out;
    *n = count;
    return 0;
oom:
    fprintf(stderr, "%s: out of memory reading %s\n", tool, path);
fail:
    free(out);
    free(text);
    return -1;
}

int32_t ppl_bos(const anvil_tokenizer *tok)
{
    if (!tok)
        return -1;
    int32_t *ids = NULL;
    int64_t n = 0;
    /* what the post-processor adds around nothing: [BOS] (Llama, tinycode),
     * [] (Qwen2, GPT-2) */
    if (anvil_tokenizer_encode(tok, "", 0, 1, &ids, &n) != ANVIL_OK)
        return -1;
    const int32_t bos = n >= 1 ? ids[0] : -1;
    free(ids);
    return bos;
}

int ppl_check_vocab(const char *tool, const char *model, const anvil_model_config *mc,
                    const anvil_tokenizer *mt, const char *base, const anvil_model_config *bc,
                    const anvil_tokenizer *bt)
{
    if (mc->vocab_size != bc->vocab_size) {
        fprintf(stderr,
                "%s: the base %s has a vocabulary of %lld tokens and the model %s one of %lld: the "
                "comparison needs "
                "the same tokenizer and vocabulary\n",
                tool, base, (long long)bc->vocab_size, model, (long long)mc->vocab_size);
        return -1;
    }
    if (!mt || !bt)
        return 0; /* only the sizes to compare (a folder without tokenizer.json) */
    const int64_t nm = anvil_tokenizer_vocab_size(mt), nb = anvil_tokenizer_vocab_size(bt);
    if (nm != nb) {
        fprintf(
            stderr,
            "%s: the base %s's tokenizer has %lld tokens and the model %s's %lld: the comparison needs the "
            "same tokenizer\n",
            tool, base, (long long)nb, model, (long long)nm);
        return -1;
    }
    for (int64_t i = 0; i < nm; i++) {
        const char *a = anvil_tokenizer_token_text(mt, (int32_t)i),
                   *b = anvil_tokenizer_token_text(bt, (int32_t)i);
        if ((a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0)) {
            fprintf(stderr,
                    "%s: the base %s's tokenizer is not the model %s's: token %lld is '%s' there and '%s' "
                    "here; the "
                    "comparison needs the same tokenizer\n",
                    tool, base, model, (long long)i, b ? b : "(none)", a ? a : "(none)");
            return -1;
        }
    }
    return 0;
}
