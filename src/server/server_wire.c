/* What the wire formats other than OpenAI's completions and chat share
 * (Triton's generate, server_triton.c; the Responses API,
 * server_responses.c): a stream's text so far, SSE events, text as JSON, and
 * errors that name the client's fields rather than the OpenAI mapping's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_openai.h"

int srv_gen_text_add(srv_gen *g, const char *s, size_t n)
{
    if (g->text_len + n + 1 > g->text_cap) {
        size_t cap = g->text_cap ? g->text_cap : 256;
        while (cap < g->text_len + n + 1)
            cap *= 2;
        char *t = realloc(g->text, cap);
        if (t == NULL)
            return -1;
        g->text = t;
        g->text_cap = cap;
    }
    if (n)
        memcpy(g->text + g->text_len, s, n);
    g->text_len += n;
    g->text[g->text_len] = '\0';
    return 0;
}

void srv_gen_sse(srv_gen *g, const char *event, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s == NULL)
        return;
    if (event) {
        srv_gen_append(g, "event: ", 7);
        srv_gen_append(g, event, strlen(event));
        srv_gen_append(g, "\n", 1);
    }
    srv_gen_append(g, "data: ", 6);
    srv_gen_append(g, s, strlen(s));
    srv_gen_append(g, "\n\n", 2);
    free(s);
}

json_t *srv_json_text(const char *s, size_t n)
{
    json_t *j = json_stringn(s ? s : "", s ? n : 0);
    if (j)
        return j;
    /* not UTF-8 (a byte token cut from its character): each byte that is
     * no part of a whole character becomes U+FFFD, as a browser decodes */
    char *b = malloc(3 * n + 1);
    if (b == NULL)
        return json_string("");
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        unsigned c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = len > 0 && i + len <= n;
        for (size_t j2 = 1; ok && j2 < len; j2++)
            ok = ((unsigned char)s[i + j2] & 0xc0) == 0x80;
        if (ok) {
            memcpy(b + k, s + i, len);
            k += len;
            i += len;
        } else {
            memcpy(b + k, "\xef\xbf\xbd", 3);
            k += 3;
            i++;
        }
    }
    j = json_stringn(b, k);
    free(b);
    return j ? j : json_string("");
}

/* s with every from replaced by to (quoted: "'from'" by "'to'"), a new
 * string, or NULL. */
static char *replace(const char *s, const char *from, const char *to, int quoted)
{
    const size_t q = quoted ? 2 : 0, nf = strlen(from) + q, nt = strlen(to) + q, n = strlen(s);
    char *qf = malloc(nf + 1), *out = malloc(n / (nf ? nf : 1) * nt + n + 1);
    if (qf == NULL || out == NULL || nf == 0) {
        free(qf);
        free(out);
        return NULL;
    }
    snprintf(qf, nf + 1, quoted ? "'%s'" : "%s", from);
    size_t k = 0;
    for (const char *p = s; *p;) {
        if (strncmp(p, qf, nf) == 0) {
            k += (size_t)sprintf(out + k, quoted ? "'%s'" : "%s", to);
            p += nf;
        } else {
            out[k++] = *p++;
        }
    }
    out[k] = '\0';
    free(qf);
    return out;
}

void srv_error_rename(json_t *err, const char *const (*names)[2], size_t n, int quoted)
{
    json_t *e = json_object_get(err, "error");
    if (!json_is_object(e))
        return;
    const char *param = json_string_value(json_object_get(e, "param"));
    for (size_t i = 0; i < n; i++) {
        if (param && strcmp(param, names[i][0]) == 0) {
            json_object_set_new(e, "param", json_string(names[i][1]));
            param = names[i][1];
        }
        const char *msg = json_string_value(json_object_get(e, "message"));
        char *m = msg ? replace(msg, names[i][0], names[i][1], quoted) : NULL;
        if (m) {
            json_t *js = json_string(m);
            if (js)
                json_object_set_new(e, "message", js);
            free(m);
        }
    }
}
