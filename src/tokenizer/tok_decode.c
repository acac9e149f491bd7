/*
 * Decoding: ids -> token strings (added tokens first, special ones skipped
 * on request, unknown ids skipped as HF does) -> the decoder chain (HF
 * decoders/: each step maps a list of strings to a list of strings) ->
 * concatenation. Without a decoder HF joins the tokens with spaces.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "tokenizer/tok_internal.h"

/* ------------------------------------------------------------ loading */

static anvil_status add_dec(anvil_tokenizer *tok, tok_dec *d)
{
    tok_dec *s = realloc(tok->decs, (size_t)(tok->n_decs + 1) * sizeof *s);
    CHECK(s, ANVIL_ERR_OOM, "out of memory");
    tok->decs = s;
    tok->decs[tok->n_decs++] = *d;
    return ANVIL_OK;
}

static anvil_status dup_field(json_t *j, const char *key, const char *def, const char *what, char **out, size_t *len)
{
    const char *s;
    size_t n;
    TRY(tok_json_str(j, key, &s, &n, what));
    if (!s) {
        CHECK(def, ANVIL_ERR_FORMAT, "tokenizer.json: %s needs '%s'", what, key);
        s = def;
        n = strlen(def);
    }
    *out = malloc(n + 1);
    CHECK(*out, ANVIL_ERR_OOM, "out of memory");
    memcpy(*out, s, n);
    (*out)[n] = 0;
    *len = n;
    return ANVIL_OK;
}

static anvil_status int_field(json_t *j, const char *key, int *out, const char *what)
{
    json_t *v = json_object_get(j, key);
    CHECK(json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) < (1 << 30), ANVIL_ERR_FORMAT,
          "tokenizer.json: %s.%s must be a non-negative integer", what, key);
    *out = (int)json_integer_value(v);
    return ANVIL_OK;
}

static anvil_status load_one(anvil_tokenizer *tok, json_t *j, int depth)
{
    CHECK(depth < 16, ANVIL_ERR_FORMAT, "tokenizer.json: decoders nested too deep");
    CHECK(json_is_object(j), ANVIL_ERR_FORMAT, "tokenizer.json: a decoder must be an object");
    const char *type;
    TRY(tok_json_str(j, "type", &type, NULL, "decoder"));
    CHECK(type, ANVIL_ERR_FORMAT, "tokenizer.json: a decoder has no type");
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(j, "decoders");
        CHECK(json_is_array(list), ANVIL_ERR_FORMAT, "tokenizer.json: decoder Sequence needs 'decoders'");
        for (size_t i = 0; i < json_array_size(list); i++)
            TRY(load_one(tok, json_array_get(list, i), depth + 1));
        return ANVIL_OK;
    }
    tok_dec d;
    memset(&d, 0, sizeof d);
    anvil_status st = ANVIL_OK;
    if (strcmp(type, "ByteLevel") == 0) {
        d.kind = TOK_DEC_BYTELEVEL;
    } else if (strcmp(type, "ByteFallback") == 0) {
        d.kind = TOK_DEC_BYTEFALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        d.kind = TOK_DEC_FUSE;
    } else if (strcmp(type, "Replace") == 0) {
        d.kind = TOK_DEC_REPLACE;
        st = dup_field(j, "content", NULL, "Replace decoder", &d.str, &d.str_len);
        if (st == ANVIL_OK)
            st = tok_pattern_parse(&d.pat, json_object_get(j, "pattern"), "Replace decoder");
    } else if (strcmp(type, "Strip") == 0) {
        d.kind = TOK_DEC_STRIP;
        st = tok_json_char(j, "content", ' ', &d.ch, "Strip decoder");
        if (st == ANVIL_OK)
            st = int_field(j, "start", &d.start, "Strip decoder");
        if (st == ANVIL_OK)
            st = int_field(j, "stop", &d.stop, "Strip decoder");
    } else if (strcmp(type, "Metaspace") == 0) {
        d.kind = TOK_DEC_METASPACE;
        st = tok_json_char(j, "replacement", 0x2581, &d.ch, "Metaspace decoder");
        const char *scheme = NULL;
        if (st == ANVIL_OK)
            st = tok_json_str(j, "prepend_scheme", &scheme, NULL, "Metaspace decoder");
        d.drop_first = !(scheme && strcmp(scheme, "never") == 0);
        if (json_is_false(json_object_get(j, "add_prefix_space")))
            d.drop_first = 0;
    } else if (strcmp(type, "WordPiece") == 0) {
        d.kind = TOK_DEC_WORDPIECE;
        st = dup_field(j, "prefix", "##", "WordPiece decoder", &d.str, &d.str_len);
        if (st == ANVIL_OK)
            st = tok_json_bool(j, "cleanup", 1, &d.cleanup, "WordPiece decoder");
    } else if (strcmp(type, "BPEDecoder") == 0) {
        d.kind = TOK_DEC_BPE;
        st = dup_field(j, "suffix", "</w>", "BPEDecoder", &d.str, &d.str_len);
    } else {
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "tokenizer.json: decoder '%s' is not supported", type);
    }
    if (st == ANVIL_OK)
        st = add_dec(tok, &d);
    if (st != ANVIL_OK) {
        free(d.str);
        tok_pattern_free(&d.pat);
    }
    return st;
}

anvil_status tok_dec_load(anvil_tokenizer *tok, json_t *j)
{
    if (!j || json_is_null(j))
        return ANVIL_OK;
    tok->has_decoder = 1;
    return load_one(tok, j, 0);
}

void tok_dec_free_all(anvil_tokenizer *tok)
{
    for (int i = 0; i < tok->n_decs; i++) {
        free(tok->decs[i].str);
        tok_pattern_free(&tok->decs[i].pat);
    }
    free(tok->decs);
    tok->decs = NULL;
    tok->n_decs = 0;
}

/* ------------------------------------------------------------ token lists */

typedef struct tlist {
    tok_buf buf;
    size_t *off, *len;
    size_t n, cap;
} tlist;

static anvil_status tl_begin(tlist *t)
{
    TRY(tok_buf_reserve(&t->buf, 0)); /* tl_str needs a buffer even for empty tokens */
    TRY(tok_grow((void **)&t->off, &t->cap, t->n + 1, sizeof *t->off));
    size_t c = t->cap;
    void *q = realloc(t->len, c * sizeof *t->len);
    CHECK(q, ANVIL_ERR_OOM, "out of memory");
    t->len = q;
    t->off[t->n] = t->buf.len;
    t->len[t->n] = 0;
    t->n++;
    return ANVIL_OK;
}

/* Appends bytes to the last token of t. */
static anvil_status tl_add(tlist *t, const void *s, size_t n)
{
    TRY(tok_buf_append(&t->buf, s, n));
    t->len[t->n - 1] += n;
    return ANVIL_OK;
}

static anvil_status tl_push(tlist *t, const void *s, size_t n)
{
    TRY(tl_begin(t));
    return tl_add(t, s, n);
}

static void tl_reset(tlist *t)
{
    t->buf.len = 0;
    t->n = 0;
}

static void tl_free(tlist *t)
{
    tok_buf_free(&t->buf);
    free(t->off);
    free(t->len);
}

static const char *tl_str(const tlist *t, size_t i)
{
    return t->buf.p + t->off[i];
}

/* ------------------------------------------------------------ steps */

static anvil_status dec_bytelevel(const anvil_tokenizer *tok, const tlist *in, tlist *out, int *unstable, int piece)
{
    tok_buf bytes = {0};
    anvil_status st = ANVIL_OK;
    for (size_t i = 0; i < in->n && st == ANVIL_OK; i++) {
        const char *s = tl_str(in, i);
        size_t n = in->len[i], mapped = 0;
        /* a token maps byte-wise only if every char is in the alphabet */
        int all = 1;
        for (size_t k = 0; k < n;) {
            size_t l;
            uint32_t cp = tok_utf8_decode(s + k, n - k, &l);
            if (cp >= 324 || tok->bl_byte[cp] < 0) {
                all = 0;
                break;
            }
            k += l;
            mapped++;
        }
        if (!all) {
            st = tok_buf_append(&bytes, s, n);
            continue;
        }
        st = tok_buf_reserve(&bytes, mapped);
        for (size_t k = 0; k < n && st == ANVIL_OK;) {
            size_t l;
            uint32_t cp = tok_utf8_decode(s + k, n - k, &l);
            bytes.p[bytes.len++] = (char)tok->bl_byte[cp];
            k += l;
        }
    }
    if (st == ANVIL_OK && unstable && tok_utf8_incomplete_tail((const unsigned char *)bytes.p, bytes.len))
        *unstable = 1;
    if (st == ANVIL_OK)
        st = tl_begin(out);
    if (st == ANVIL_OK) {
        size_t before = out->buf.len;
        /* a piece keeps its bytes: a token may hold part of a character */
        st = piece ? tok_buf_append(&out->buf, bytes.p, bytes.len)
                   : tok_append_lossy(&out->buf, (const unsigned char *)bytes.p, bytes.len);
        out->len[out->n - 1] = out->buf.len - before;
    }
    tok_buf_free(&bytes);
    return st;
}

static int hexd(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* "<0xHH>" -> HH, as HF: u8::from_str_radix(&token[3..5], 16), which also takes "+H". */
static int byte_token(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    int a = hexd(s[3]), b = hexd(s[4]);
    if (s[3] == '+' && b >= 0)
        return b;
    if (a < 0 || b < 0)
        return -1;
    return a * 16 + b;
}

static anvil_status flush_bytes(tok_buf *pending, tlist *out, int piece)
{
    if (pending->len == 0)
        return ANVIL_OK;
    if (piece || tok_utf8_valid(pending->p, pending->len)) {
        TRY(tl_push(out, pending->p, pending->len));
    } else {
        for (size_t i = 0; i < pending->len; i++)
            TRY(tl_push(out, "\xEF\xBF\xBD", 3));
    }
    pending->len = 0;
    return ANVIL_OK;
}

static anvil_status dec_bytefallback(const tlist *in, tlist *out, int *unstable, int piece)
{
    tok_buf pending = {0};
    anvil_status st = ANVIL_OK;
    for (size_t i = 0; i < in->n && st == ANVIL_OK; i++) {
        int b = byte_token(tl_str(in, i), in->len[i]);
        if (b >= 0) {
            char c = (char)b;
            st = tok_buf_append(&pending, &c, 1);
            continue;
        }
        st = flush_bytes(&pending, out, piece);
        if (st == ANVIL_OK)
            st = tl_push(out, tl_str(in, i), in->len[i]);
    }
    if (st == ANVIL_OK && pending.len > 0 && unstable)
        *unstable = 1; /* more byte tokens could still complete (or break) the run */
    if (st == ANVIL_OK)
        st = flush_bytes(&pending, out, piece);
    tok_buf_free(&pending);
    return st;
}

static anvil_status dec_fuse(const tlist *in, tlist *out)
{
    TRY(tl_begin(out));
    for (size_t i = 0; i < in->n; i++)
        TRY(tl_add(out, tl_str(in, i), in->len[i]));
    return ANVIL_OK;
}

static anvil_status dec_replace(tok_work *w, const tok_dec *d, const tlist *in, tlist *out)
{
    for (size_t i = 0; i < in->n; i++) {
        const char *s = tl_str(in, i);
        size_t n = in->len[i];
        w->n_spans[0] = 0;
        TRY(tok_pattern_find_all(&d->pat, s, n, w->md, &w->spans[0], &w->n_spans[0], &w->cap_spans[0]));
        TRY(tl_begin(out));
        size_t at = 0;
        for (size_t k = 0; k < w->n_spans[0]; k++) {
            const tok_span *sp = &w->spans[0][k];
            s = tl_str(in, i);
            TRY(tl_add(out, s + at, sp->s - at));
            TRY(tl_add(out, d->str, d->str_len));
            at = sp->e;
        }
        TRY(tl_add(out, tl_str(in, i) + at, n - at));
    }
    return ANVIL_OK;
}

static anvil_status dec_strip(const tok_dec *d, const tlist *in, tlist *out)
{
    for (size_t i = 0; i < in->n; i++) {
        const char *s = tl_str(in, i);
        size_t n = in->len[i];
        /* char boundaries of the token */
        size_t a = 0, b = n, l;
        for (int k = 0; k < d->start && a < n; k++) {
            if (tok_utf8_decode(s + a, n - a, &l) != d->ch)
                break;
            a += l;
        }
        for (int k = 0; k < d->stop && b > a; k++) {
            size_t c = b - 1;
            while (c > 0 && ((unsigned char)s[c] & 0xC0) == 0x80)
                c--;
            if (c < a || tok_utf8_decode(s + c, b - c, &l) != d->ch)
                break;
            b = c;
        }
        TRY(tl_push(out, s + a, b - a));
    }
    return ANVIL_OK;
}

static anvil_status dec_metaspace(const tok_dec *d, const tlist *in, tlist *out, int piece)
{
    for (size_t i = 0; i < in->n; i++) {
        const char *s = tl_str(in, i);
        size_t n = in->len[i];
        TRY(tl_begin(out));
        for (size_t k = 0; k < n;) {
            size_t l;
            uint32_t cp = tok_utf8_decode(s + k, n - k, &l);
            if (cp == d->ch) {
                if (!(i == 0 && d->drop_first && !piece))
                    TRY(tl_add(out, " ", 1));
            } else {
                TRY(tl_add(out, s + k, l));
            }
            s = tl_str(in, i);
            k += l;
        }
    }
    return ANVIL_OK;
}

/* Replaces every `from` by `to` in buf (in place through a copy). */
static anvil_status replace_all(tok_buf *buf, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to);
    if (!buf->len || !memmem(buf->p, buf->len, from, fl))
        return ANVIL_OK;
    tok_buf o = {0};
    size_t at = 0;
    for (;;) {
        const char *f = memmem(buf->p + at, buf->len - at, from, fl);
        if (!f)
            break;
        size_t k = (size_t)(f - buf->p);
        anvil_status st = tok_buf_append(&o, buf->p + at, k - at);
        if (st == ANVIL_OK)
            st = tok_buf_append(&o, to, tl);
        if (st != ANVIL_OK) {
            tok_buf_free(&o);
            return st;
        }
        at = k + fl;
    }
    anvil_status st = tok_buf_append(&o, buf->p + at, buf->len - at);
    if (st != ANVIL_OK) {
        tok_buf_free(&o);
        return st;
    }
    tok_buf_free(buf);
    *buf = o;
    return ANVIL_OK;
}

/* HF's wordpiece::cleanup */
static anvil_status cleanup(tok_buf *b)
{
    static const char *const pairs[][2] = {{" .", "."},   {" ?", "?"},     {" !", "!"},           {" ,", ","},
                                           {" ' ", "'"},  {" n't", "n't"}, {" 'm", "'m"},         {" do not", " don't"},
                                           {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++)
        TRY(replace_all(b, pairs[i][0], pairs[i][1]));
    return ANVIL_OK;
}

static anvil_status dec_wordpiece(const tok_dec *d, const tlist *in, tlist *out)
{
    tok_buf t = {0};
    anvil_status st = ANVIL_OK;
    for (size_t i = 0; i < in->n && st == ANVIL_OK; i++) {
        const char *s = tl_str(in, i);
        size_t n = in->len[i];
        t.len = 0;
        if (i != 0) {
            if (n >= d->str_len && memcmp(s, d->str, d->str_len) == 0) {
                st = tok_buf_append(&t, s + d->str_len, n - d->str_len);
            } else {
                st = tok_buf_append(&t, " ", 1);
                if (st == ANVIL_OK)
                    st = tok_buf_append(&t, s, n);
            }
        } else {
            st = tok_buf_append(&t, s, n);
        }
        if (st == ANVIL_OK && d->cleanup)
            st = cleanup(&t);
        if (st == ANVIL_OK)
            st = tl_push(out, t.p ? t.p : "", t.len);
    }
    tok_buf_free(&t);
    return st;
}

static anvil_status dec_bpe(const tok_dec *d, const tlist *in, tlist *out)
{
    tok_buf t = {0};
    anvil_status st = ANVIL_OK;
    for (size_t i = 0; i < in->n && st == ANVIL_OK; i++) {
        t.len = 0;
        st = tok_buf_append(&t, tl_str(in, i), in->len[i]);
        if (st == ANVIL_OK && d->str_len)
            st = replace_all(&t, d->str, i + 1 == in->n ? "" : " ");
        if (st == ANVIL_OK)
            st = tl_push(out, t.p ? t.p : "", t.len);
    }
    tok_buf_free(&t);
    return st;
}

/* ------------------------------------------------------------ decode */

/* piece: the ids are a piece from the middle of a text (tok_token_bytes):
 * bytes stay raw (no U+FFFD for a partial character) and the steps that
 * only act at the start of a text (Strip, Metaspace's dropped first space)
 * do not apply. */
static anvil_status decode_chain(const anvil_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                                 tok_buf *out, int *unstable, int piece)
{
    anvil_status st = ANVIL_OK;
    tlist a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    tok_work w;
    memset(&w, 0, sizeof w);
    if (unstable)
        *unstable = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || (uint32_t)id >= tok->n_ids || !tok->id_str[id])
            continue;
        if (skip_special && (tok->id_flags[id] & TOK_ID_SPECIAL))
            continue;
        TRY_GOTO(tl_push(&a, tok->id_str[id], tok->id_len[id]), done);
    }
    if (!tok->has_decoder) {
        for (size_t i = 0; i < a.n; i++) {
            if (i)
                TRY_GOTO(tok_buf_append(out, " ", 1), done);
            TRY_GOTO(tok_buf_append(out, tl_str(&a, i), a.len[i]), done);
        }
        goto done;
    }
    tlist *in = &a, *o = &b;
    for (int k = 0; k < tok->n_decs; k++) {
        const tok_dec *d = &tok->decs[k];
        tl_reset(o);
        switch (d->kind) {
        case TOK_DEC_BYTELEVEL: st = dec_bytelevel(tok, in, o, unstable, piece); break;
        case TOK_DEC_BYTEFALLBACK: st = dec_bytefallback(in, o, unstable, piece); break;
        case TOK_DEC_FUSE: st = dec_fuse(in, o); break;
        case TOK_DEC_STRIP: st = piece ? dec_fuse(in, o) : dec_strip(d, in, o); break;
        case TOK_DEC_METASPACE: st = dec_metaspace(d, in, o, piece); break;
        case TOK_DEC_WORDPIECE: st = dec_wordpiece(d, in, o); break;
        case TOK_DEC_BPE: st = dec_bpe(d, in, o); break;
        case TOK_DEC_REPLACE:
            if (!w.md) {
                w.md = pcre2_match_data_create(1, NULL);
                CHECK_GOTO(w.md, ANVIL_ERR_OOM, done, "out of memory");
            }
            st = dec_replace(&w, d, in, o);
            break;
        }
        if (st != ANVIL_OK)
            goto done;
        tlist *t = in;
        in = o;
        o = t;
    }
    for (size_t i = 0; i < in->n; i++)
        TRY_GOTO(tok_buf_append(out, tl_str(in, i), in->len[i]), done);
done:
    tl_free(&a);
    tl_free(&b);
    pcre2_match_data_free(w.md);
    free(w.spans[0]);
    return st;
}

anvil_status tok_decode_into(const anvil_tokenizer *tok, const int32_t *ids, size_t n, int skip_special, tok_buf *out,
                             int *unstable)
{
    return decode_chain(tok, ids, n, skip_special, out, unstable, 0);
}

anvil_status anvil_tokenizer_token_bytes(const anvil_tokenizer *tok, int32_t id, char **bytes, size_t *len)
{
    CHECK(bytes != NULL && len != NULL, ANVIL_ERR_INVALID_ARG, "bytes and len must not be NULL");
    *bytes = NULL;
    *len = 0;
    CHECK(tok != NULL, ANVIL_ERR_INVALID_ARG, "tokenizer must not be NULL");
    CHECK(id >= 0 && (uint32_t)id < tok->n_ids && tok->id_str[id], ANVIL_ERR_INVALID_ARG, "no token with id %d",
          (int)id);
    tok_buf out = {0};
    anvil_status st = decode_chain(tok, &id, 1, 0, &out, NULL, 1);
    if (st == ANVIL_OK)
        st = tok_buf_reserve(&out, 0);
    if (st != ANVIL_OK) {
        tok_buf_free(&out);
        return st;
    }
    out.p[out.len] = 0;
    *bytes = out.p;
    *len = out.len;
    return ANVIL_OK;
}

anvil_status anvil_tokenizer_decode(const anvil_tokenizer *tok, const int32_t *ids, int64_t n,
                                    int skip_special_tokens, char **text, size_t *len)
{
    CHECK(text != NULL, ANVIL_ERR_INVALID_ARG, "text must not be NULL");
    *text = NULL;
    if (len)
        *len = 0;
    CHECK(tok != NULL, ANVIL_ERR_INVALID_ARG, "tokenizer must not be NULL");
    CHECK(n >= 0 && (n == 0 || ids != NULL), ANVIL_ERR_INVALID_ARG, "bad ids");
    tok_buf out = {0};
    anvil_status st = tok_decode_into(tok, ids, (size_t)n, skip_special_tokens, &out, NULL);
    if (st == ANVIL_OK)
        st = tok_buf_reserve(&out, 0);
    if (st != ANVIL_OK) {
        tok_buf_free(&out);
        return st;
    }
    out.p[out.len] = 0;
    *text = out.p;
    if (len)
        *len = out.len;
    return ANVIL_OK;
}
