/*
 * The BPE model, as HF's models/bpe: a word becomes one symbol per char (or
 * per byte of a byte-level word), chars missing from the vocabulary fall
 * back to <0xXX> byte tokens or to the unk token, then merges apply lowest
 * rank first, leftmost first, through a binary heap of candidate pairs:
 * O(n log n) per word. The algorithm is HF's Word::merge_all step for step,
 * including how it discards stale heap entries, so results match in every
 * corner.
 *
 * Speed: merge ranks live in a hash table keyed by the id pair; a per-call
 * word cache (words repeat: "the", " of", ...) skips most merging; symbols
 * and the heap use per-call scratch arrays, so nothing is allocated per
 * token. SentencePiece-style models (Metaspace with split=false, or a
 * Replace normalizer) hand the model one "word" per segment of text; when
 * no merge can join a '▁' to the char before it (checked at load), the word
 * is cut before each such '▁' without changing the result, which makes the
 * pieces cacheable and keeps the heap small.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "tokenizer/tok_internal.h"

#define META "\xE2\x96\x81" /* U+2581 '▁' */
#define CACHE_MAX_SLOTS (1u << 16)

/* ------------------------------------------------------------ loading */

/* Merges are resolved in batches: three hash lookups each (a, b, a+b) would
 * otherwise wait on one cache miss after another; a batch issues the loads
 * for all its lookups first (prefetch), then uses them. */
#define MERGE_BATCH 64

typedef struct merge_ctx {
    tok_bpe *bpe;
    uint32_t rank;
    tok_buf keys; /* per merge: a, b, a+b (b without the subword prefix) */
    size_t off[MERGE_BATCH][3], len[MERGE_BATCH][3];
    int n;
} merge_ctx;

static anvil_status flush_merges(merge_ctx *c)
{
    tok_bpe *bpe = c->bpe;
    uint64_t h[MERGE_BATCH][3];
    int32_t id[MERGE_BATCH][3];
    for (int i = 0; i < c->n; i++)
        for (int k = 0; k < 3; k++) {
            h[i][k] = tok_hash(c->keys.p + c->off[i][k], c->len[i][k]);
            tok_strmap_prefetch_slot(&bpe->vocab, h[i][k]);
        }
    for (int i = 0; i < c->n; i++)
        for (int k = 0; k < 3; k++)
            tok_strmap_prefetch_rec(&bpe->vocab, h[i][k]);
    for (int i = 0; i < c->n; i++) {
        for (int k = 0; k < 3; k++)
            id[i][k] = tok_strmap_get_hashed(&bpe->vocab, c->keys.p + c->off[i][k], c->len[i][k], h[i][k]);
        if (id[i][0] >= 0 && id[i][1] >= 0)
            tok_pairmap_prefetch(&bpe->merges, id[i][0], id[i][1]);
    }
    for (int i = 0; i < c->n; i++) {
        uint32_t rank = c->rank - (uint32_t)c->n + (uint32_t)i;
        static const char *const what[3] = {"uses", "uses", "makes"};
        for (int k = 0; k < 3; k++)
            CHECK(id[i][k] >= 0, ANVIL_ERR_FORMAT, "tokenizer.json: merge %u %s '%.*s', which is not in the vocabulary",
                  rank + 1, what[k], (int)c->len[i][k], c->keys.p + c->off[i][k]);
        TRY(tok_pairmap_put(&bpe->merges, id[i][0], id[i][1], rank, id[i][2]));
    }
    c->n = 0;
    c->keys.len = 0;
    return ANVIL_OK;
}

static anvil_status add_merge(const char *a, size_t al, const char *b, size_t bl, void *vctx)
{
    merge_ctx *c = vctx;
    tok_bpe *bpe = c->bpe;
    size_t skip = bpe->prefix_len;
    CHECK(bl >= skip && (skip == 0 || memcmp(b, bpe->prefix, skip) == 0), ANVIL_ERR_FORMAT,
          "tokenizer.json: merge %u: '%.*s' does not start with the continuing_subword_prefix", c->rank + 1, (int)bl,
          b);
    /* Is '▁' ever joined to a different char on its left? (see the header) */
    if (bl >= 3 && memcmp(b, META, 3) == 0 && !(al >= 3 && memcmp(a + al - 3, META, 3) == 0))
        bpe->meta_merge_ok = 0;
    int i = c->n++;
    size_t at = c->keys.len;
    TRY(tok_buf_reserve(&c->keys, 2 * (al + bl)));
    char *k = c->keys.p + at;
    memcpy(k, a, al);
    memcpy(k + al, b, bl);
    memcpy(k + al + bl, a, al);
    memcpy(k + 2 * al + bl, b + skip, bl - skip);
    c->keys.len += 2 * al + 2 * bl - skip;
    c->off[i][0] = at;
    c->len[i][0] = al;
    c->off[i][1] = at + al;
    c->len[i][1] = bl;
    c->off[i][2] = at + al + bl;
    c->len[i][2] = al + bl - skip;
    c->rank++;
    if (c->n == MERGE_BATCH)
        return flush_merges(c);
    return ANVIL_OK;
}

static anvil_status opt_string(json_t *model, const char *key, char **out, size_t *len)
{
    const char *s;
    size_t n;
    TRY(tok_json_str(model, key, &s, &n, "model"));
    *out = NULL;
    *len = 0;
    if (s && n > 0) { /* "" behaves as no prefix / suffix */
        *out = malloc(n + 1);
        CHECK(*out, ANVIL_ERR_OOM, "out of memory");
        memcpy(*out, s, n + 1);
        *len = n;
    }
    return ANVIL_OK;
}

anvil_status tok_bpe_load(tok_bpe *bpe, json_t *model, const char *vocab, size_t vocab_len, const char *merges,
                          size_t merges_len)
{
    memset(bpe, 0, sizeof *bpe);
    bpe->unk_id = -1;
    bpe->meta_merge_ok = 1;
    CHECK(json_is_object(model), ANVIL_ERR_FORMAT, "tokenizer.json: 'model' must be an object");
    const char *type;
    TRY(tok_json_str(model, "type", &type, NULL, "model"));
    if (type && strcmp(type, "BPE") != 0)
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "tokenizer.json: model type '%s' is not supported (only BPE)", type);
    CHECK(vocab && merges, ANVIL_ERR_FORMAT, "tokenizer.json: the BPE model needs 'vocab' and 'merges'");
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout)) {
        CHECK(json_is_number(dropout), ANVIL_ERR_FORMAT, "tokenizer.json: model.dropout must be a number");
        CHECK(json_number_value(dropout) == 0.0, ANVIL_ERR_UNSUPPORTED,
              "tokenizer.json: BPE dropout (%g) is not supported: it makes encoding random",
              json_number_value(dropout));
    }
    anvil_status st;
    TRY_GOTO(opt_string(model, "continuing_subword_prefix", &bpe->prefix, &bpe->prefix_len), fail);
    TRY_GOTO(opt_string(model, "end_of_word_suffix", &bpe->suffix, &bpe->suffix_len), fail);
    size_t ul;
    TRY_GOTO(opt_string(model, "unk_token", &bpe->unk_token, &ul), fail);
    {
        const char *u;
        TRY_GOTO(tok_json_str(model, "unk_token", &u, &ul, "model"), fail);
        if (u && !bpe->unk_token) { /* "" is a (strange) unk token */
            bpe->unk_token = calloc(1, 1);
            CHECK_GOTO(bpe->unk_token, ANVIL_ERR_OOM, fail, "out of memory");
        }
        bpe->has_unk_token = u != NULL;
    }
    TRY_GOTO(tok_json_bool(model, "fuse_unk", 0, &bpe->fuse_unk, "model"), fail);
    TRY_GOTO(tok_json_bool(model, "byte_fallback", 0, &bpe->byte_fallback, "model"), fail);
    TRY_GOTO(tok_json_bool(model, "ignore_merges", 0, &bpe->ignore_merges, "model"), fail);

    TRY_GOTO(tok_strmap_init(&bpe->vocab, vocab_len / 12 + 16), fail);
    int32_t max_id;
    TRY_GOTO(tok_json_parse_vocab(vocab, vocab_len, &bpe->vocab, &max_id), fail);
    bpe->vocab_len = bpe->vocab.n;
    TRY_GOTO(tok_pairmap_init(&bpe->merges, merges_len / 16 + 16), fail);
    merge_ctx *ctx = calloc(1, sizeof *ctx);
    CHECK_GOTO(ctx, ANVIL_ERR_OOM, fail, "out of memory");
    ctx->bpe = bpe;
    st = tok_json_parse_merges(merges, merges_len, add_merge, ctx);
    if (st == ANVIL_OK)
        st = flush_merges(ctx);
    tok_buf_free(&ctx->keys);
    free(ctx);
    if (st != ANVIL_OK)
        goto fail;

    if (bpe->has_unk_token)
        bpe->unk_id = tok_strmap_get(&bpe->vocab, bpe->unk_token, strlen(bpe->unk_token));
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        bpe->byte_ids[b] = tok_strmap_get(&bpe->vocab, name, 6);
    }
    for (int c = 0; c < 128; c++) {
        char ch = (char)c;
        bpe->ascii_ids[c] = (bpe->prefix || bpe->suffix) ? -1 : tok_strmap_get(&bpe->vocab, &ch, 1);
    }
    return ANVIL_OK;
fail:
    tok_bpe_free(bpe);
    return st;
}

void tok_bpe_finish(tok_bpe *bpe, int model_sees_bytelevel, const char *meta_char, size_t meta_len)
{
    bpe->bytelevel_ok = 0;
    if (model_sees_bytelevel && !bpe->prefix && !bpe->suffix) {
        /* A byte whose char is not a token is dropped by HF when there is
         * neither an unk token nor byte fallback (SmolLM2 lacks 21 of them):
         * the raw path can do that too (id -1 = no symbol). */
        int can_drop = !bpe->has_unk_token && !bpe->byte_fallback;
        bpe->bytelevel_ok = 1;
        for (int b = 0; b < 256; b++) {
            char u[4];
            size_t l = tok_utf8_encode(tok_bytelevel_char((unsigned char)b), u);
            bpe->bytelevel_ids[b] = tok_strmap_get(&bpe->vocab, u, l);
            if (bpe->bytelevel_ids[b] < 0 && !can_drop)
                bpe->bytelevel_ok = 0;
        }
    }
    /* Cutting words before '▁' is only safe if '▁' is itself a token (so
     * unk fusion cannot run across the cut) and words have no prefix or
     * suffix decoration that depends on the word's extent. */
    bpe->split_words = !model_sees_bytelevel && bpe->meta_merge_ok && !bpe->prefix && !bpe->suffix &&
                       !bpe->ignore_merges && (meta_char == NULL || (meta_len == 3 && memcmp(meta_char, META, 3) == 0)) &&
                       tok_strmap_get(&bpe->vocab, META, 3) >= 0;
}

void tok_bpe_free(tok_bpe *bpe)
{
    tok_strmap_free(&bpe->vocab);
    tok_pairmap_free(&bpe->merges);
    free(bpe->unk_token);
    free(bpe->prefix);
    free(bpe->suffix);
    memset(bpe, 0, sizeof *bpe);
    bpe->unk_id = -1;
}

/* ------------------------------------------------------------ merging */

static int heap_less(const tok_merge_ent *a, const tok_merge_ent *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(tok_merge_ent *h, size_t *n, tok_merge_ent e)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static tok_merge_ent heap_pop(tok_merge_ent *h, size_t *n)
{
    tok_merge_ent top = h[0];
    tok_merge_ent last = h[--(*n)];
    size_t i = 0, m = *n;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= m)
            break;
        size_t c = (l + 1 < m && heap_less(&h[l + 1], &h[l])) ? l + 1 : l;
        if (!heap_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (m)
        h[i] = last;
    return top;
}

static void merge_all(tok_work *w, size_t n_sym)
{
    const tok_pairmap *mm = &w->tok->bpe.merges;
    tok_sym *sy = w->syms;
    tok_merge_ent *h = w->heap;
    size_t hn = 0;
    uint32_t rank;
    int32_t nid;
    for (size_t i = 0; i + 1 < n_sym; i++)
        if (tok_pairmap_get(mm, sy[i].id, sy[i + 1].id, &rank, &nid))
            heap_push(h, &hn, (tok_merge_ent){rank, (uint32_t)i, nid});
    while (hn) {
        tok_merge_ent top = heap_pop(h, &hn);
        tok_sym *cur = &sy[top.pos];
        if (cur->len == 0 || cur->next == -1)
            continue;
        int32_t next_pos = cur->next;
        tok_sym right = sy[next_pos];
        /* a stale entry: the pair at pos is no longer the one it was made for */
        if (!tok_pairmap_get(mm, cur->id, right.id, &rank, &nid) || nid != top.new_id)
            continue;
        cur->id = top.new_id;
        cur->len += right.len;
        cur->next = right.next;
        sy[next_pos].len = 0;
        if (right.next > -1 && (size_t)right.next < n_sym)
            sy[right.next].prev = (int32_t)top.pos;
        if (cur->prev >= 0) {
            if (tok_pairmap_get(mm, sy[cur->prev].id, cur->id, &rank, &nid))
                heap_push(h, &hn, (tok_merge_ent){rank, (uint32_t)cur->prev, nid});
        }
        if (cur->next >= 0 && (size_t)cur->next < n_sym) {
            if (tok_pairmap_get(mm, cur->id, sy[cur->next].id, &rank, &nid))
                heap_push(h, &hn, (tok_merge_ent){rank, top.pos, nid});
        }
    }
}

static void sym_add(tok_work *w, size_t *n, int32_t id, uint32_t len)
{
    tok_sym *s = &w->syms[*n];
    s->id = id;
    s->len = len;
    s->next = -1;
    s->prev = *n ? (int32_t)(*n - 1) : -1;
    if (*n)
        w->syms[*n - 1].next = (int32_t)*n;
    (*n)++;
}

/* HF's BPE::merge_word + word_to_tokens: appends the word's ids to w->ids. */
static anvil_status merge_word(tok_work *w, const char *s, size_t n, int raw)
{
    const tok_bpe *b = &w->tok->bpe;
    size_t deco = b->prefix_len + b->suffix_len;
    size_t max_sym = n * (1 + deco) + 4;
    TRY(tok_grow((void **)&w->syms, &w->cap_syms, max_sym, sizeof *w->syms));
    /* every merge pushes at most two entries; one per initial pair */
    TRY(tok_grow((void **)&w->heap, &w->cap_heap, 3 * max_sym + 4, sizeof *w->heap));
    size_t ns = 0;
    if (raw) {
        for (size_t i = 0; i < n; i++) {
            int32_t id = b->bytelevel_ids[(unsigned char)s[i]];
            if (id >= 0)
                sym_add(w, &ns, id, 1);
        }
    } else {
        int32_t unk_id = -1;
        uint32_t unk_len = 0;
        int have_unk = 0;
        size_t i = 0;
        while (i < n) {
            size_t cl = tok_utf8_len((unsigned char)s[i]);
            if (cl > n - i)
                cl = n - i;
            int first = i == 0, last = i + cl == n;
            const char *cs = s + i;
            size_t csl = cl;
            int32_t id;
            if (cl == 1 && (unsigned char)s[i] < 128 && !b->prefix && !b->suffix) {
                id = b->ascii_ids[(unsigned char)s[i]];
            } else {
                if ((!first && b->prefix) || (last && b->suffix)) {
                    w->scratch.len = 0;
                    if (!first && b->prefix)
                        TRY(tok_buf_append(&w->scratch, b->prefix, b->prefix_len));
                    TRY(tok_buf_append(&w->scratch, s + i, cl));
                    if (last && b->suffix)
                        TRY(tok_buf_append(&w->scratch, b->suffix, b->suffix_len));
                    cs = w->scratch.p;
                    csl = w->scratch.len;
                }
                id = tok_strmap_get(&b->vocab, cs, csl);
            }
            if (id >= 0) {
                if (have_unk) {
                    sym_add(w, &ns, unk_id, unk_len);
                    have_unk = 0;
                }
                sym_add(w, &ns, id, (uint32_t)cl);
            } else {
                int done = 0;
                if (b->byte_fallback) {
                    int all = 1;
                    for (size_t k = 0; k < csl; k++)
                        if (b->byte_ids[(unsigned char)cs[k]] < 0)
                            all = 0;
                    if (all) {
                        for (size_t k = 0; k < csl; k++)
                            sym_add(w, &ns, b->byte_ids[(unsigned char)cs[k]], 1);
                        done = 1;
                    }
                }
                if (!done && b->has_unk_token) {
                    CHECK(b->unk_id >= 0, ANVIL_ERR_FORMAT,
                          "tokenizer.json: the unk token '%s' is not in the vocabulary", b->unk_token);
                    if (have_unk && b->fuse_unk) {
                        unk_len += (uint32_t)cl;
                    } else {
                        if (have_unk)
                            sym_add(w, &ns, unk_id, unk_len);
                        unk_id = b->unk_id;
                        unk_len = (uint32_t)cl;
                        have_unk = 1;
                    }
                }
            }
            i += cl;
        }
        if (have_unk)
            sym_add(w, &ns, unk_id, unk_len);
    }
    merge_all(w, ns);
    for (size_t i = 0; i < ns; i++)
        if (w->syms[i].len)
            TRY(tok_work_push_id(w, w->syms[i].id));
    return ANVIL_OK;
}

/* ------------------------------------------------------------ word cache */

static anvil_status cache_reset(tok_work *w, uint32_t slots)
{
    free(w->cache);
    w->cache = calloc(slots, sizeof *w->cache);
    CHECK(w->cache, ANVIL_ERR_OOM, "out of memory");
    w->cache_mask = slots - 1;
    w->cache_n = 0;
    w->cache_n_ids = 0;
    return ANVIL_OK;
}

static anvil_status cache_put(tok_work *w, uint64_t h, const char *s, size_t n, const int32_t *ids, size_t k)
{
    if ((w->cache_n + 1) * 2 > (size_t)w->cache_mask + 1) {
        uint32_t slots = (w->cache_mask + 1) * 2;
        if (slots > CACHE_MAX_SLOTS) {
            TRY(cache_reset(w, w->cache_mask + 1)); /* bounded: forget everything */
        } else {
            tok_cache_slot *old = w->cache;
            uint32_t old_n = w->cache_mask + 1;
            w->cache = calloc(slots, sizeof *w->cache);
            CHECK(w->cache, ANVIL_ERR_OOM, "out of memory");
            w->cache_mask = slots - 1;
            for (uint32_t i = 0; i < old_n; i++) {
                if (!old[i].hash)
                    continue;
                uint32_t j = (uint32_t)old[i].hash & w->cache_mask;
                while (w->cache[j].hash)
                    j = (j + 1) & w->cache_mask;
                w->cache[j] = old[i];
            }
            free(old);
        }
    }
    uint32_t j = (uint32_t)h & w->cache_mask;
    while (w->cache[j].hash)
        j = (j + 1) & w->cache_mask;
    tok_cache_slot *c = &w->cache[j];
    c->hash = h;
    c->key_len = (uint16_t)n;
    c->n_ids = (uint16_t)k;
    memcpy(c->key, s, n);
    if (k <= 3) {
        memcpy(c->ids, ids, k * sizeof *ids);
    } else {
        TRY(tok_grow((void **)&w->cache_ids, &w->cache_cap_ids, w->cache_n_ids + k, sizeof *w->cache_ids));
        memcpy(w->cache_ids + w->cache_n_ids, ids, k * sizeof *ids);
        c->ids_off = (uint32_t)w->cache_n_ids;
        w->cache_n_ids += k;
    }
    w->cache_n++;
    return ANVIL_OK;
}

/* One word through the cache; ignore_merges applies when im is set. */
static anvil_status word(tok_work *w, const char *s, size_t n, int raw, int im)
{
    const tok_bpe *b = &w->tok->bpe;
    int cacheable = n <= TOK_CACHE_KEY;
    uint64_t h = 0;
    if (cacheable) {
        if (!w->cache) {
            /* about one word per 4 bytes, at most half full: no regrowth for
             * a prompt, no big zeroing for a short one */
            uint32_t slots = 32;
            while (slots < CACHE_MAX_SLOTS / 4 && slots < w->cache_hint / 2)
                slots *= 2;
            TRY(cache_reset(w, slots));
        }
        h = tok_hash(s, n) | 1; /* 0 marks an empty slot */
        uint32_t j = (uint32_t)h & w->cache_mask;
        for (;;) {
            const tok_cache_slot *c = &w->cache[j];
            if (!c->hash)
                break;
            if (c->hash == h && c->key_len == n && memcmp(c->key, s, n) == 0) {
                size_t k = c->n_ids;
                if (w->n_ids + k > w->cap_ids)
                    TRY(tok_grow((void **)&w->ids, &w->cap_ids, w->n_ids + k, sizeof *w->ids));
                memcpy(w->ids + w->n_ids, k <= 3 ? c->ids : w->cache_ids + c->ids_off, k * sizeof *w->ids);
                w->n_ids += k;
                return ANVIL_OK;
            }
            j = (j + 1) & w->cache_mask;
        }
    }
    size_t start = w->n_ids;
    int done = 0;
    if (im) {
        const char *key = s;
        size_t kl = n;
        if (raw) {
            w->scratch.len = 0;
            TRY(tok_buf_reserve(&w->scratch, n * 2));
            for (size_t i = 0; i < n; i++)
                w->scratch.len +=
                    tok_utf8_encode(w->tok->bl_char[(unsigned char)s[i]], w->scratch.p + w->scratch.len);
            key = w->scratch.p;
            kl = w->scratch.len;
        }
        int32_t id = tok_strmap_get(&b->vocab, key, kl);
        if (id >= 0) {
            TRY(tok_work_push_id(w, id));
            done = 1;
        }
    }
    if (!done)
        TRY(merge_word(w, s, n, raw));
    if (cacheable)
        TRY(cache_put(w, h, s, n, w->ids + start, w->n_ids - start));
    return ANVIL_OK;
}

anvil_status tok_bpe_tokenize(tok_work *w, const char *s, size_t n, int raw)
{
    const tok_bpe *b = &w->tok->bpe;
    if (n == 0)
        return ANVIL_OK;
    if (raw || !b->split_words)
        return word(w, s, n, raw, b->ignore_merges);
    /* cut before each '▁' that follows a different char ('▁' is a whole
     * UTF-8 char, so a byte match is always at a char boundary) */
    size_t start = 0, i = 1;
    while (i < n) {
        const char *f = memchr(s + i, META[0], n - i); /* memchr beats memmem on a 3-byte needle */
        if (!f)
            break;
        if ((size_t)(f - s) + 3 > n || memcmp(f, META, 3) != 0) {
            i = (size_t)(f - s) + 1;
            continue;
        }
        size_t at = (size_t)(f - s);
        if (!(at >= 3 && memcmp(s + at - 3, META, 3) == 0)) {
            TRY(word(w, s + start, at - start, 0, 0));
            start = at;
        }
        i = at + 3;
    }
    return word(w, s + start, n - start, 0, 0);
}
