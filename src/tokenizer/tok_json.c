/*
 * Reading tokenizer.json. jansson parses the document, except model.vocab
 * and model.merges: they hold most of its bytes (Llama 3: 128k tokens, 280k
 * merges) and building a jansson tree for them alone takes ~300 ms. A small
 * scanner finds their spans, they are cut out of the text jansson sees, and
 * read directly into the hash maps by the functions below. The scanner
 * checks the whole document's JSON syntax on the way, so any layout (key
 * order, whitespace, escapes) works.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "tokenizer/tok_internal.h"

#define JSON_MAX_DEPTH 512

typedef struct jscan {
    const char *p, *end;
} jscan;

static void ws(jscan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static anvil_status read_hex4(jscan *s, uint32_t *v)
{
    CHECK(s->end - s->p >= 4, ANVIL_ERR_FORMAT, "tokenizer.json: truncated \\u escape");
    uint32_t x = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(s->p[i]);
        CHECK(h >= 0, ANVIL_ERR_FORMAT, "tokenizer.json: bad \\u escape");
        x = x * 16 + (uint32_t)h;
    }
    s->p += 4;
    *v = x;
    return ANVIL_OK;
}

/* Length of the valid UTF-8 sequence at p (lead byte >= 0x80), 0 if invalid. */
static size_t utf8_seq(const char *p, const char *end)
{
    const unsigned char *u = (const unsigned char *)p;
    size_t avail = (size_t)(end - p);
    unsigned char b = u[0];
    if (b >= 0xC2 && b <= 0xDF)
        return avail >= 2 && (u[1] & 0xC0) == 0x80 ? 2 : 0;
    if (b >= 0xE0 && b <= 0xEF) {
        unsigned char lo = b == 0xE0 ? 0xA0 : 0x80, hi = b == 0xED ? 0x9F : 0xBF;
        return avail >= 3 && u[1] >= lo && u[1] <= hi && (u[2] & 0xC0) == 0x80 ? 3 : 0;
    }
    if (b >= 0xF0 && b <= 0xF4) {
        unsigned char lo = b == 0xF0 ? 0x90 : 0x80, hi = b == 0xF4 ? 0x8F : 0xBF;
        return avail >= 4 && u[1] >= lo && u[1] <= hi && (u[2] & 0xC0) == 0x80 && (u[3] & 0xC0) == 0x80 ? 4 : 0;
    }
    return 0;
}

/*
 * Scans a string at s->p (which is at the opening quote). Without escapes
 * *str points into the document; with escapes the decoded bytes go to buf
 * and *str points there. The document is known to be valid UTF-8.
 */
static anvil_status scan_string(jscan *s, tok_buf *buf, const char **str, size_t *len)
{
    CHECK(s->p < s->end && *s->p == '"', ANVIL_ERR_FORMAT, "tokenizer.json: expected a string");
    s->p++;
    const char *start = s->p;
    const char *q = start;
    while (q < s->end && *q != '"' && *q != '\\') {
        unsigned char c = (unsigned char)*q;
        if (c >= 0x80) {
            size_t l = utf8_seq(q, s->end);
            CHECK(l, ANVIL_ERR_FORMAT, "tokenizer.json: invalid UTF-8 in a string");
            q += l;
            continue;
        }
        CHECK(c >= 0x20, ANVIL_ERR_FORMAT, "tokenizer.json: control character in a string");
        q++;
    }
    CHECK(q < s->end, ANVIL_ERR_FORMAT, "tokenizer.json: unterminated string");
    if (*q == '"') {
        *str = start;
        *len = (size_t)(q - start);
        s->p = q + 1;
        return ANVIL_OK;
    }
    buf->len = 0;
    TRY(tok_buf_append(buf, start, (size_t)(q - start)));
    s->p = q;
    while (s->p < s->end && *s->p != '"') {
        char c = *s->p;
        if (c != '\\') {
            CHECK((unsigned char)c >= 0x20, ANVIL_ERR_FORMAT, "tokenizer.json: control character in a string");
            const char *r = s->p;
            while (r < s->end && *r != '"' && *r != '\\' && (unsigned char)*r >= 0x20) {
                if ((unsigned char)*r >= 0x80) {
                    size_t l = utf8_seq(r, s->end);
                    CHECK(l, ANVIL_ERR_FORMAT, "tokenizer.json: invalid UTF-8 in a string");
                    r += l;
                } else {
                    r++;
                }
            }
            TRY(tok_buf_append(buf, s->p, (size_t)(r - s->p)));
            s->p = r;
            continue;
        }
        s->p++;
        CHECK(s->p < s->end, ANVIL_ERR_FORMAT, "tokenizer.json: unterminated string");
        char e = *s->p++;
        char one;
        switch (e) {
        case '"': one = '"'; break;
        case '\\': one = '\\'; break;
        case '/': one = '/'; break;
        case 'b': one = '\b'; break;
        case 'f': one = '\f'; break;
        case 'n': one = '\n'; break;
        case 'r': one = '\r'; break;
        case 't': one = '\t'; break;
        case 'u': {
            uint32_t cp;
            TRY(read_hex4(s, &cp));
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                CHECK(s->end - s->p >= 2 && s->p[0] == '\\' && s->p[1] == 'u', ANVIL_ERR_FORMAT,
                      "tokenizer.json: lone surrogate in a \\u escape");
                s->p += 2;
                TRY(read_hex4(s, &lo));
                CHECK(lo >= 0xDC00 && lo <= 0xDFFF, ANVIL_ERR_FORMAT, "tokenizer.json: lone surrogate in a \\u escape");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else {
                CHECK(!(cp >= 0xDC00 && cp <= 0xDFFF), ANVIL_ERR_FORMAT, "tokenizer.json: lone surrogate in a \\u escape");
            }
            char u[4];
            TRY(tok_buf_append(buf, u, tok_utf8_encode(cp, u)));
            continue;
        }
        default:
            return ANVIL_FAIL(ANVIL_ERR_FORMAT, "tokenizer.json: bad escape '\\%c'", e);
        }
        TRY(tok_buf_append(buf, &one, 1));
    }
    CHECK(s->p < s->end, ANVIL_ERR_FORMAT, "tokenizer.json: unterminated string");
    s->p++;
    *str = buf->p;
    *len = buf->len;
    return ANVIL_OK;
}

static anvil_status skip_number(jscan *s)
{
    const char *p = s->p;
    if (p < s->end && *p == '-')
        p++;
    CHECK(p < s->end && *p >= '0' && *p <= '9', ANVIL_ERR_FORMAT, "tokenizer.json: bad number");
    if (*p == '0')
        p++;
    else
        while (p < s->end && *p >= '0' && *p <= '9')
            p++;
    if (p < s->end && *p == '.') {
        p++;
        CHECK(p < s->end && *p >= '0' && *p <= '9', ANVIL_ERR_FORMAT, "tokenizer.json: bad number");
        while (p < s->end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < s->end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < s->end && (*p == '+' || *p == '-'))
            p++;
        CHECK(p < s->end && *p >= '0' && *p <= '9', ANVIL_ERR_FORMAT, "tokenizer.json: bad number");
        while (p < s->end && *p >= '0' && *p <= '9')
            p++;
    }
    s->p = p;
    return ANVIL_OK;
}

static anvil_status skip_value(jscan *s, tok_buf *buf, int depth)
{
    CHECK(depth < JSON_MAX_DEPTH, ANVIL_ERR_FORMAT, "tokenizer.json: nesting too deep");
    ws(s);
    CHECK(s->p < s->end, ANVIL_ERR_FORMAT, "tokenizer.json: unexpected end");
    char c = *s->p;
    if (c == '"') {
        /* only the end is needed here: the contents are checked later, by
         * jansson or by the vocab / merges readers */
        const char *q = s->p + 1;
        for (;;) {
            while (q < s->end && *q != '"' && *q != '\\')
                q++;
            CHECK(q < s->end, ANVIL_ERR_FORMAT, "tokenizer.json: unterminated string");
            if (*q == '"')
                break;
            q += 2;
        }
        s->p = q + 1;
        return ANVIL_OK;
    }
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        s->p++;
        ws(s);
        if (s->p < s->end && *s->p == close) {
            s->p++;
            return ANVIL_OK;
        }
        for (;;) {
            if (c == '{') {
                ws(s);
                CHECK(s->p < s->end && *s->p == '"', ANVIL_ERR_FORMAT, "tokenizer.json: expected a key");
                TRY(skip_value(s, buf, depth + 1));
                ws(s);
                CHECK(s->p < s->end && *s->p == ':', ANVIL_ERR_FORMAT, "tokenizer.json: expected ':'");
                s->p++;
            }
            TRY(skip_value(s, buf, depth + 1));
            ws(s);
            CHECK(s->p < s->end, ANVIL_ERR_FORMAT, "tokenizer.json: unexpected end");
            if (*s->p == ',') {
                s->p++;
                continue;
            }
            CHECK(*s->p == close, ANVIL_ERR_FORMAT, "tokenizer.json: expected ',' or '%c'", close);
            s->p++;
            return ANVIL_OK;
        }
    }
    if (c == '-' || (c >= '0' && c <= '9'))
        return skip_number(s);
    static const char *const lits[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t l = strlen(lits[i]);
        if ((size_t)(s->end - s->p) >= l && memcmp(s->p, lits[i], l) == 0) {
            s->p += l;
            return ANVIL_OK;
        }
    }
    return ANVIL_FAIL(ANVIL_ERR_FORMAT, "tokenizer.json: unexpected character '%c'", c);
}

/* Finds the end of the array or object at s->p by bracket matching alone:
 * used for model.vocab and model.merges, whose syntax the readers below
 * check in full. */
static anvil_status skip_container(jscan *s)
{
    const char *p = s->p, *end = s->end;
    size_t depth = 0;
    while (p < end) {
        char c = *p;
        if (c == '"') {
            const char *start = ++p;
            for (;;) {
                const char *q = memchr(p, '"', (size_t)(end - p));
                CHECK(q, ANVIL_ERR_FORMAT, "tokenizer.json: unterminated string");
                const char *b = q;
                while (b > start && b[-1] == '\\')
                    b--;
                p = q + 1;
                if (((q - b) & 1) == 0)
                    break;
            }
            continue;
        }
        if (c == '[' || c == '{') {
            depth++;
        } else if (c == ']' || c == '}') {
            CHECK(depth > 0, ANVIL_ERR_FORMAT, "tokenizer.json: unbalanced '%c'", c);
            if (--depth == 0) {
                s->p = p + 1;
                return ANVIL_OK;
            }
        }
        p++;
    }
    return ANVIL_FAIL(ANVIL_ERR_FORMAT, "tokenizer.json: unexpected end");
}

static int peek(const jscan *s)
{
    return s->p < s->end ? (unsigned char)*s->p : -1;
}

typedef struct span {
    const char *p;
    size_t n;
} span;

/* Walks the top-level object; records the spans of model.vocab and model.merges. */
static anvil_status find_spans(jscan *s, tok_buf *buf, span *vocab, span *merges)
{
    ws(s);
    CHECK(s->p < s->end && *s->p == '{', ANVIL_ERR_FORMAT, "tokenizer.json: the document must be an object");
    s->p++;
    ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return ANVIL_OK;
    }
    for (;;) {
        ws(s);
        const char *key;
        size_t klen;
        TRY(scan_string(s, buf, &key, &klen));
        int is_model = klen == 5 && memcmp(key, "model", 5) == 0;
        ws(s);
        CHECK(s->p < s->end && *s->p == ':', ANVIL_ERR_FORMAT, "tokenizer.json: expected ':'");
        s->p++;
        ws(s);
        if (is_model && s->p < s->end && *s->p == '{') {
            s->p++;
            ws(s);
            if (s->p < s->end && *s->p == '}') {
                s->p++;
            } else {
                for (;;) {
                    ws(s);
                    TRY(scan_string(s, buf, &key, &klen));
                    int is_vocab = klen == 5 && memcmp(key, "vocab", 5) == 0;
                    int is_merges = klen == 6 && memcmp(key, "merges", 6) == 0;
                    ws(s);
                    CHECK(s->p < s->end && *s->p == ':', ANVIL_ERR_FORMAT, "tokenizer.json: expected ':'");
                    s->p++;
                    ws(s);
                    CHECK(s->p < s->end, ANVIL_ERR_FORMAT, "tokenizer.json: unexpected end");
                    const char *v0 = s->p;
                    if ((is_vocab && *v0 == '{') || (is_merges && *v0 == '['))
                        TRY(skip_container(s));
                    else
                        TRY(skip_value(s, buf, 2));
                    if (is_vocab && *v0 == '{')
                        *vocab = (span){v0, (size_t)(s->p - v0)};
                    if (is_merges && *v0 == '[')
                        *merges = (span){v0, (size_t)(s->p - v0)};
                    ws(s);
                    CHECK(s->p < s->end, ANVIL_ERR_FORMAT, "tokenizer.json: unexpected end");
                    if (*s->p == ',') {
                        s->p++;
                        continue;
                    }
                    CHECK(*s->p == '}', ANVIL_ERR_FORMAT, "tokenizer.json: expected ',' or '}'");
                    s->p++;
                    break;
                }
            }
        } else {
            TRY(skip_value(s, buf, 1));
        }
        ws(s);
        CHECK(s->p < s->end, ANVIL_ERR_FORMAT, "tokenizer.json: unexpected end");
        if (*s->p == ',') {
            s->p++;
            continue;
        }
        CHECK(*s->p == '}', ANVIL_ERR_FORMAT, "tokenizer.json: expected ',' or '}'");
        s->p++;
        break;
    }
    ws(s);
    CHECK(s->p == s->end, ANVIL_ERR_FORMAT, "tokenizer.json: trailing characters after the document");
    return ANVIL_OK;
}

anvil_status tok_json_load(const char *text, size_t len, json_t **root, const char **vocab, size_t *vocab_len,
                           const char **merges, size_t *merges_len)
{
    *root = NULL;
    *vocab = *merges = NULL;
    *vocab_len = *merges_len = 0;
    tok_buf buf = {0};
    jscan s = {text, text + len};
    span sv = {0}, sm = {0};
    anvil_status st = find_spans(&s, &buf, &sv, &sm);
    tok_buf_free(&buf);
    TRY(st);

    /* The document without the two big values, for jansson. */
    span cut[2] = {sv, sm};
    const char *rep[2] = {"{}", "[]"};
    if (cut[0].p && cut[1].p && cut[1].p < cut[0].p) {
        span t = cut[0];
        cut[0] = cut[1];
        cut[1] = t;
        rep[0] = "[]";
        rep[1] = "{}";
    }
    tok_buf doc = {0};
    const char *at = text;
    for (int i = 0; i < 2; i++) {
        if (!cut[i].p)
            continue;
        TRY_GOTO(tok_buf_append(&doc, at, (size_t)(cut[i].p - at)), fail);
        TRY_GOTO(tok_buf_append(&doc, rep[i], 2), fail);
        at = cut[i].p + cut[i].n;
    }
    TRY_GOTO(tok_buf_append(&doc, at, (size_t)(text + len - at)), fail);
    json_error_t err;
    json_t *j = json_loadb(doc.p, doc.len, JSON_ALLOW_NUL, &err);
    tok_buf_free(&doc);
    CHECK(j != NULL, ANVIL_ERR_FORMAT, "tokenizer.json: %s (line %d)", err.text, err.line);
    *root = j;
    *vocab = sv.p;
    *vocab_len = sv.n;
    *merges = sm.p;
    *merges_len = sm.n;
    return ANVIL_OK;
fail:
    tok_buf_free(&doc);
    return st;
}

anvil_status tok_json_parse_vocab(const char *text, size_t n, tok_strmap *vocab, int32_t *max_id)
{
    anvil_status st = ANVIL_OK;
    tok_buf buf = {0};
    jscan s = {text, text + n};
    *max_id = -1;
    CHECK(n >= 2 && peek(&s) == '{', ANVIL_ERR_FORMAT, "tokenizer.json: model.vocab must be an object");
    s.p++;
    ws(&s);
    if (s.p < s.end && peek(&s) == '}')
        return s.p + 1 == s.end ? ANVIL_OK : ANVIL_FAIL(ANVIL_ERR_FORMAT, "tokenizer.json: bad model.vocab");
    for (;;) {
        ws(&s);
        const char *key;
        size_t klen;
        TRY_GOTO(scan_string(&s, &buf, &key, &klen), done);
        ws(&s);
        CHECK_GOTO(s.p < s.end && peek(&s) == ':', ANVIL_ERR_FORMAT, done, "tokenizer.json: expected ':' in model.vocab");
        s.p++;
        ws(&s);
        const char *p = s.p;
        int64_t v = 0;
        CHECK_GOTO(p < s.end && *p >= '0' && *p <= '9', ANVIL_ERR_FORMAT, done,
                   "tokenizer.json: the id of vocab token '%.*s' is not a non-negative integer", (int)klen, key);
        CHECK_GOTO(!(*p == '0' && p + 1 < s.end && p[1] >= '0' && p[1] <= '9'), ANVIL_ERR_FORMAT, done,
                   "tokenizer.json: bad number in model.vocab");
        while (p < s.end && *p >= '0' && *p <= '9') {
            v = v * 10 + (*p - '0');
            CHECK_GOTO(v <= TOK_MAX_ID, ANVIL_ERR_UNSUPPORTED, done, "tokenizer.json: token id too large (max %d)",
                       TOK_MAX_ID);
            p++;
        }
        CHECK_GOTO(p >= s.end || (*p != '.' && *p != 'e' && *p != 'E'), ANVIL_ERR_FORMAT, done,
                   "tokenizer.json: the id of vocab token '%.*s' is not an integer", (int)klen, key);
        s.p = p;
        TRY_GOTO(tok_strmap_put(vocab, key, klen, (int32_t)v), done);
        if (v > *max_id)
            *max_id = (int32_t)v;
        ws(&s);
        CHECK_GOTO(s.p < s.end, ANVIL_ERR_FORMAT, done, "tokenizer.json: unexpected end of model.vocab");
        if (peek(&s) == ',') {
            s.p++;
            continue;
        }
        CHECK_GOTO(peek(&s) == '}' && s.p + 1 == s.end, ANVIL_ERR_FORMAT, done,
                   "tokenizer.json: expected ',' or '}' in model.vocab");
        break;
    }
done:
    tok_buf_free(&buf);
    return st;
}

anvil_status tok_json_parse_merges(const char *text, size_t n,
                                   anvil_status (*fn)(const char *a, size_t al, const char *b, size_t bl, void *ctx),
                                   void *ctx)
{
    anvil_status st = ANVIL_OK;
    tok_buf b1 = {0}, b2 = {0};
    jscan s = {text, text + n};
    CHECK(n >= 2 && peek(&s) == '[', ANVIL_ERR_FORMAT, "tokenizer.json: model.merges must be an array");
    s.p++;
    ws(&s);
    if (s.p < s.end && peek(&s) == ']')
        return s.p + 1 == s.end ? ANVIL_OK : ANVIL_FAIL(ANVIL_ERR_FORMAT, "tokenizer.json: bad model.merges");
    size_t index = 0;
    for (;;) {
        ws(&s);
        const char *a, *b;
        size_t al, bl;
        if (peek(&s) == '"') {
            /* "a b": exactly one space, as HF's convert_merges_to_hashmap. */
            const char *m;
            size_t ml;
            TRY_GOTO(scan_string(&s, &b1, &m, &ml), done);
            if (!(ml >= 8 && memcmp(m, "#version", 8) == 0)) {
                const char *sp = memchr(m, ' ', ml);
                CHECK_GOTO(sp && !memchr(sp + 1, ' ', ml - (size_t)(sp + 1 - m)), ANVIL_ERR_FORMAT, done,
                           "tokenizer.json: merge %zu '%.*s' is not two tokens separated by one space", index + 1,
                           (int)ml, m);
                TRY_GOTO(fn(m, (size_t)(sp - m), sp + 1, ml - (size_t)(sp + 1 - m), ctx), done);
                index++;
            }
        } else {
            CHECK_GOTO(peek(&s) == '[', ANVIL_ERR_FORMAT, done, "tokenizer.json: merge %zu is not a string or a pair",
                       index + 1);
            s.p++;
            ws(&s);
            CHECK_GOTO(peek(&s) == '"', ANVIL_ERR_FORMAT, done, "tokenizer.json: merge %zu is not a pair of strings",
                       index + 1);
            TRY_GOTO(scan_string(&s, &b1, &a, &al), done);
            ws(&s);
            CHECK_GOTO(peek(&s) == ',', ANVIL_ERR_FORMAT, done, "tokenizer.json: merge %zu is not a pair", index + 1);
            s.p++;
            ws(&s);
            CHECK_GOTO(peek(&s) == '"', ANVIL_ERR_FORMAT, done, "tokenizer.json: merge %zu is not a pair of strings",
                       index + 1);
            TRY_GOTO(scan_string(&s, &b2, &b, &bl), done);
            ws(&s);
            CHECK_GOTO(peek(&s) == ']', ANVIL_ERR_FORMAT, done, "tokenizer.json: merge %zu is not a pair", index + 1);
            s.p++;
            TRY_GOTO(fn(a, al, b, bl, ctx), done);
            index++;
        }
        ws(&s);
        CHECK_GOTO(s.p < s.end, ANVIL_ERR_FORMAT, done, "tokenizer.json: unexpected end of model.merges");
        if (peek(&s) == ',') {
            s.p++;
            continue;
        }
        CHECK_GOTO(peek(&s) == ']' && s.p + 1 == s.end, ANVIL_ERR_FORMAT, done,
                   "tokenizer.json: expected ',' or ']' in model.merges");
        break;
    }
done:
    tok_buf_free(&b1);
    tok_buf_free(&b2);
    return st;
}

anvil_status tok_json_bool(json_t *obj, const char *key, int def, int *out, const char *what)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return ANVIL_OK;
    }
    CHECK(json_is_boolean(v), ANVIL_ERR_FORMAT, "tokenizer.json: %s.%s must be a boolean", what, key);
    *out = json_is_true(v);
    return ANVIL_OK;
}

anvil_status tok_json_str(json_t *obj, const char *key, const char **out, size_t *len, const char *what)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (len)
        *len = 0;
    if (!v || json_is_null(v))
        return ANVIL_OK;
    CHECK(json_is_string(v), ANVIL_ERR_FORMAT, "tokenizer.json: %s.%s must be a string", what, key);
    *out = json_string_value(v);
    if (len)
        *len = json_string_length(v);
    return ANVIL_OK;
}

anvil_status tok_json_char(json_t *obj, const char *key, uint32_t def, uint32_t *out, const char *what)
{
    const char *s;
    size_t n;
    TRY(tok_json_str(obj, key, &s, &n, what));
    if (!s) {
        *out = def;
        return ANVIL_OK;
    }
    size_t l = 0;
    CHECK(n > 0, ANVIL_ERR_FORMAT, "tokenizer.json: %s.%s must be one character", what, key);
    *out = tok_utf8_decode(s, n, &l);
    CHECK(l == n, ANVIL_ERR_FORMAT, "tokenizer.json: %s.%s must be one character", what, key);
    return ANVIL_OK;
}
