/*
 * Added tokens (HF's AddedVocabulary). Loading replays HF's add_tokens /
 * add_special_tokens call per JSON entry, so ids, duplicates and flags come
 * out as HF computes them (the "id" in the file is not used: HF gives a
 * token the id its content already has, else the next free one). Matching
 * is leftmost-longest over a byte trie, first on the raw text for tokens
 * with normalized=false, then on each normalized segment for the others
 * (their contents normalized too), with HF's lstrip / rstrip / single_word
 * rules.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "tokenizer/tok_internal.h"

/* ------------------------------------------------------------ trie */

typedef struct trie_build {
    /* per node: edges as a linked list during building */
    uint32_t *head, *nexte; /* node -> first edge; edge -> next edge */
    uint8_t *eb;
    uint32_t *en;
    int32_t *term;
    size_t n_nodes, cap_nodes, n_edges, cap_edges, cap_term, cap_head, cap_nexte, cap_eb, cap_en;
} trie_build;

static anvil_status tb_node(trie_build *b, uint32_t *out)
{
    TRY(tok_grow((void **)&b->head, &b->cap_head, b->n_nodes + 1, sizeof *b->head));
    TRY(tok_grow((void **)&b->term, &b->cap_term, b->n_nodes + 1, sizeof *b->term));
    b->head[b->n_nodes] = UINT32_MAX;
    b->term[b->n_nodes] = -1;
    *out = (uint32_t)b->n_nodes++;
    return ANVIL_OK;
}

static anvil_status tb_insert(trie_build *b, const char *s, size_t n, int32_t pattern)
{
    uint32_t u = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        uint32_t e = b->head[u], found = UINT32_MAX;
        for (; e != UINT32_MAX; e = b->nexte[e])
            if (b->eb[e] == c) {
                found = b->en[e];
                break;
            }
        if (found == UINT32_MAX) {
            TRY(tb_node(b, &found));
            TRY(tok_grow((void **)&b->nexte, &b->cap_nexte, b->n_edges + 1, sizeof *b->nexte));
            TRY(tok_grow((void **)&b->eb, &b->cap_eb, b->n_edges + 1, sizeof *b->eb));
            TRY(tok_grow((void **)&b->en, &b->cap_en, b->n_edges + 1, sizeof *b->en));
            b->eb[b->n_edges] = c;
            b->en[b->n_edges] = found;
            b->nexte[b->n_edges] = b->head[u];
            b->head[u] = (uint32_t)b->n_edges++;
        }
        u = found;
    }
    if (b->term[u] < 0) /* equal contents: the first pattern wins */
        b->term[u] = pattern;
    return ANVIL_OK;
}

static void tb_free(trie_build *b)
{
    free(b->head);
    free(b->nexte);
    free(b->eb);
    free(b->en);
    free(b->term);
}

static void trie_free(tok_trie *t)
{
    free(t->first);
    free(t->n_edges);
    free(t->term);
    free(t->edge_byte);
    free(t->edge_node);
    free(t->pattern_id);
    memset(t, 0, sizeof *t);
}

/* Flattens the build into sorted per-node edge arrays. */
static anvil_status trie_finish(tok_trie *t, trie_build *b)
{
    t->n_nodes = (uint32_t)b->n_nodes;
    t->first = malloc(b->n_nodes * sizeof *t->first);
    t->n_edges = malloc(b->n_nodes * sizeof *t->n_edges);
    t->term = malloc(b->n_nodes * sizeof *t->term);
    t->edge_byte = malloc((b->n_edges + 1) * sizeof *t->edge_byte);
    t->edge_node = malloc((b->n_edges + 1) * sizeof *t->edge_node);
    CHECK(t->first && t->n_edges && t->term && t->edge_byte && t->edge_node, ANVIL_ERR_OOM, "out of memory");
    uint32_t k = 0;
    for (size_t u = 0; u < b->n_nodes; u++) {
        t->first[u] = k;
        t->term[u] = b->term[u];
        uint32_t cnt = 0;
        for (uint32_t e = b->head[u]; e != UINT32_MAX; e = b->nexte[e]) {
            /* insertion sort by byte */
            uint32_t j = k + cnt;
            while (j > k && t->edge_byte[j - 1] > b->eb[e]) {
                t->edge_byte[j] = t->edge_byte[j - 1];
                t->edge_node[j] = t->edge_node[j - 1];
                j--;
            }
            t->edge_byte[j] = b->eb[e];
            t->edge_node[j] = b->en[e];
            cnt++;
        }
        CHECK(cnt <= 256, ANVIL_ERR_INTERNAL, "trie node with %u edges", cnt);
        t->n_edges[u] = (uint16_t)cnt;
        k += cnt;
    }
    memset(t->first_byte, 0, sizeof t->first_byte);
    for (uint32_t i = 0; i < t->n_edges[0]; i++) {
        uint8_t c = t->edge_byte[t->first[0] + i];
        t->first_byte[c >> 3] |= (uint8_t)(1u << (c & 7));
        t->only_first = c;
    }
    t->n_first = t->n_edges[0];
    return ANVIL_OK;
}

static uint32_t trie_step(const tok_trie *t, uint32_t u, uint8_t c)
{
    uint32_t lo = t->first[u], hi = lo + t->n_edges[u];
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (t->edge_byte[mid] < c)
            lo = mid + 1;
        else if (t->edge_byte[mid] > c)
            hi = mid;
        else
            return t->edge_node[mid];
    }
    return UINT32_MAX;
}

/* Leftmost-longest match at or after *from; 1 and [*s, *e) / *pat if found. */
static int trie_find(const tok_trie *t, const char *text, size_t n, size_t from, size_t *s, size_t *e, int32_t *pat)
{
    for (size_t i = from; i < n; i++) {
        if (t->n_first == 1) { /* one possible first byte (often '<'): let memchr run */
            const char *f = memchr(text + i, t->only_first, n - i);
            if (!f)
                return 0;
            i = (size_t)(f - text);
        }
        uint8_t c = (uint8_t)text[i];
        if (!(t->first_byte[c >> 3] & (1u << (c & 7))))
            continue;
        uint32_t u = 0;
        int32_t best = -1;
        size_t best_end = 0;
        for (size_t j = i; j < n; j++) {
            u = trie_step(t, u, (uint8_t)text[j]);
            if (u == UINT32_MAX)
                break;
            if (t->term[u] >= 0) {
                best = t->term[u];
                best_end = j + 1;
            }
        }
        if (best >= 0) {
            *s = i;
            *e = best_end;
            *pat = best;
            return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ loading */

typedef struct added_state {
    tok_strmap mapr;     /* 4-byte id -> index into map_r */
    tok_added *map_r;    /* id -> latest AddedToken */
    size_t n_mapr, cap_mapr;
    tok_strmap values;   /* flags byte + content -> how many map_r values are equal */
    tok_added *specials, *plains;
    size_t n_spec, cap_spec, n_plain, cap_plain;
    int32_t max_added;
    int have_added;
    tok_buf key;
} added_state;

static const char *content(const anvil_tokenizer *tok, const tok_added *a)
{
    return tok->added_pool.p + a->off;
}

static anvil_status value_key(const anvil_tokenizer *tok, added_state *s, const tok_added *a)
{
    uint8_t f = (uint8_t)(a->special | a->lstrip << 1 | a->rstrip << 2 | a->normalized << 3 | a->single_word << 4);
    s->key.len = 0;
    TRY(tok_buf_append(&s->key, &f, 1));
    return tok_buf_append(&s->key, content(tok, a), a->len);
}

static anvil_status value_count(const anvil_tokenizer *tok, added_state *s, const tok_added *a, int delta, int *now)
{
    TRY(value_key(tok, s, a));
    int32_t c = tok_strmap_get(&s->values, s->key.p, s->key.len);
    if (c < 0)
        c = 0;
    c += delta;
    if (now)
        *now = c;
    if (delta)
        TRY(tok_strmap_put(&s->values, s->key.p, s->key.len, c));
    return ANVIL_OK;
}

static int32_t token_to_id(const anvil_tokenizer *tok, const char *s, size_t n)
{
    int32_t id = tok_strmap_get(&tok->added_map, s, n);
    return id >= 0 ? id : tok_strmap_get(&tok->bpe.vocab, s, n);
}

/* HF AddedVocabulary::add_tokens(&[a]). */
static anvil_status add_one(anvil_tokenizer *tok, added_state *s, tok_added a)
{
    const char *c = content(tok, &a);
    if (a.special && a.len > 0 && tok_strmap_get(&tok->special_set, c, a.len) < 0) {
        TRY(tok_grow((void **)&s->specials, &s->cap_spec, s->n_spec + 1, sizeof *s->specials));
        s->specials[s->n_spec++] = a;
        TRY(tok_strmap_put(&tok->special_set, c, a.len, 1));
    }
    int same;
    TRY(value_count(tok, s, &a, 0, &same));
    if (a.len == 0 || same > 0)
        return ANVIL_OK;
    int32_t id = token_to_id(tok, c, a.len);
    if (id < 0) {
        int64_t vs = (int64_t)tok->bpe.vocab_len;
        if (!s->have_added)
            id = (int32_t)vs;
        else
            id = ((int64_t)s->max_added >= vs || vs == 0) ? s->max_added + 1 : (int32_t)vs;
        CHECK(id < TOK_MAX_ID, ANVIL_ERR_UNSUPPORTED, "tokenizer.json: too many added tokens");
    }
    TRY(tok_strmap_put(&tok->added_map, c, a.len, id));
    if (!s->have_added || id > s->max_added)
        s->max_added = id;
    s->have_added = 1;
    a.id = id;
    int32_t idx = tok_strmap_get(&s->mapr, (const char *)&id, sizeof id);
    if (idx >= 0) {
        TRY(value_count(tok, s, &s->map_r[idx], -1, NULL));
        s->map_r[idx] = a;
    } else {
        TRY(tok_grow((void **)&s->map_r, &s->cap_mapr, s->n_mapr + 1, sizeof *s->map_r));
        s->map_r[s->n_mapr] = a;
        TRY(tok_strmap_put(&s->mapr, (const char *)&id, sizeof id, (int32_t)s->n_mapr));
        s->n_mapr++;
    }
    TRY(value_count(tok, s, &a, +1, NULL));
    if (tok_strmap_get(&tok->special_set, c, a.len) < 0) {
        TRY(tok_grow((void **)&s->plains, &s->cap_plain, s->n_plain + 1, sizeof *s->plains));
        s->plains[s->n_plain++] = a;
    }
    return ANVIL_OK;
}

static anvil_status parse_entry(anvil_tokenizer *tok, json_t *e, size_t i, tok_added *a)
{
    char what[48];
    snprintf(what, sizeof what, "added_tokens[%zu]", i);
    CHECK(json_is_object(e), ANVIL_ERR_FORMAT, "tokenizer.json: %s must be an object", what);
    json_t *id = json_object_get(e, "id");
    CHECK(json_is_integer(id) && json_integer_value(id) >= 0, ANVIL_ERR_FORMAT,
          "tokenizer.json: %s.id must be a non-negative integer", what);
    const char *c;
    size_t n;
    TRY(tok_json_str(e, "content", &c, &n, what));
    CHECK(c, ANVIL_ERR_FORMAT, "tokenizer.json: %s has no content", what);
    memset(a, 0, sizeof *a);
    TRY(tok_json_bool(e, "special", 0, &a->special, what));
    TRY(tok_json_bool(e, "lstrip", 0, &a->lstrip, what));
    TRY(tok_json_bool(e, "rstrip", 0, &a->rstrip, what));
    TRY(tok_json_bool(e, "single_word", 0, &a->single_word, what));
    TRY(tok_json_bool(e, "normalized", !a->special, &a->normalized, what));
    CHECK(tok->added_pool.len + n + 1 < UINT32_MAX, ANVIL_ERR_UNSUPPORTED, "added tokens too large");
    a->off = (uint32_t)tok->added_pool.len;
    a->len = (uint32_t)n;
    TRY(tok_buf_append(&tok->added_pool, c, n));
    tok->added_pool.len++; /* keep the NUL */
    return ANVIL_OK;
}

anvil_status tok_added_load(anvil_tokenizer *tok, json_t *list)
{
    anvil_status st = ANVIL_OK;
    added_state s;
    memset(&s, 0, sizeof s);
    size_t n = json_is_array(list) ? json_array_size(list) : 0;
    CHECK(list == NULL || json_is_null(list) || json_is_array(list), ANVIL_ERR_FORMAT,
          "tokenizer.json: added_tokens must be an array");
    TRY_GOTO(tok_strmap_init(&tok->added_map, n + 1), done);
    TRY_GOTO(tok_strmap_init(&tok->special_set, n + 1), done);
    TRY_GOTO(tok_strmap_init(&s.mapr, n + 1), done);
    TRY_GOTO(tok_strmap_init(&s.values, n + 1), done);
    for (size_t i = 0; i < n; i++) {
        tok_added a;
        TRY_GOTO(parse_entry(tok, json_array_get(list, i), i, &a), done);
        TRY_GOTO(add_one(tok, &s, a), done);
    }
    /* The trie pattern order: special tokens, then the others (HF's
     * refresh_added_tokens); flags at match time come from map_r. */
    tok->n_added = s.n_spec + s.n_plain;
    tok->added = malloc((tok->n_added + 1) * sizeof *tok->added);
    CHECK_GOTO(tok->added, ANVIL_ERR_OOM, done, "out of memory");
    for (size_t i = 0; i < s.n_spec; i++)
        tok->added[i] = s.specials[i];
    for (size_t i = 0; i < s.n_plain; i++)
        tok->added[s.n_spec + i] = s.plains[i];
    for (size_t i = 0; i < tok->n_added; i++)
        tok->added[i].id = token_to_id(tok, content(tok, &tok->added[i]), tok->added[i].len);

    /* id -> string table: the model vocabulary, then the added tokens over it. */
    int64_t max_id = -1;
    for (size_t e = 0; e < tok->bpe.vocab.n; e++)
        if (tok_strmap_rec(&tok->bpe.vocab, e)->val > max_id)
            max_id = tok_strmap_rec(&tok->bpe.vocab, e)->val;
    for (size_t i = 0; i < s.n_mapr; i++)
        if (s.map_r[i].id > max_id)
            max_id = s.map_r[i].id;
    tok->n_ids = (uint32_t)(max_id + 1);
    tok->id_str = calloc(tok->n_ids + 1, sizeof *tok->id_str);
    tok->id_len = calloc(tok->n_ids + 1, sizeof *tok->id_len);
    tok->id_flags = calloc(tok->n_ids + 1, sizeof *tok->id_flags);
    CHECK_GOTO(tok->id_str && tok->id_len && tok->id_flags, ANVIL_ERR_OOM, done, "out of memory");
    for (size_t e = 0; e < tok->bpe.vocab.n; e++) {
        const tok_strrec *r = tok_strmap_rec(&tok->bpe.vocab, e);
        tok->id_str[r->val] = r->key;
        tok->id_len[r->val] = r->len;
    }
    /* HF's id_to_token gives the normalized content of a normalized added
     * token (Llama-2 style "<s>" becomes "▁<s>"), and decode uses it. */
    size_t *norm_off = calloc(2 * s.n_mapr + 2, sizeof *norm_off), *norm_len = norm_off + s.n_mapr + 1;
    CHECK_GOTO(norm_off, ANVIL_ERR_OOM, done, "out of memory");
    for (size_t i = 0; i < s.n_mapr && st == ANVIL_OK; i++) {
        norm_off[i] = tok->norm_pool.len;
        if (s.map_r[i].normalized && tok->n_norms > 0) {
            st = tok_normalize_string(tok, content(tok, &s.map_r[i]), s.map_r[i].len, &tok->norm_pool);
            norm_len[i] = tok->norm_pool.len - norm_off[i];
            if (st == ANVIL_OK)
                st = tok_buf_append(&tok->norm_pool, "", 1);
        }
    }
    if (st != ANVIL_OK) {
        free(norm_off);
        goto done;
    }
    for (size_t i = 0; i < s.n_mapr; i++) {
        const tok_added *a = &s.map_r[i];
        if (a->normalized && tok->n_norms > 0) {
            tok->id_str[a->id] = tok->norm_pool.p + norm_off[i];
            tok->id_len[a->id] = (uint32_t)norm_len[i];
        } else {
            tok->id_str[a->id] = content(tok, a);
            tok->id_len[a->id] = a->len;
        }
        tok->id_flags[a->id] |= (uint8_t)((a->lstrip ? TOK_ID_LSTRIP : 0) | (a->rstrip ? TOK_ID_RSTRIP : 0) |
                                          (a->single_word ? TOK_ID_SINGLE_WORD : 0));
    }
    free(norm_off);
    for (uint32_t id = 0; id < tok->n_ids; id++)
        if (tok->id_str[id] && tok_strmap_get(&tok->special_set, tok->id_str[id], tok->id_len[id]) >= 0)
            tok->id_flags[id] |= TOK_ID_SPECIAL;
    /* HF get_vocab_size(true): distinct strings of the vocabulary and the added tokens. */
    tok->vocab_size = (int64_t)tok->bpe.vocab.n;
    for (size_t e = 0; e < tok->added_map.n; e++)
        if (tok_strmap_get(&tok->bpe.vocab, tok_strmap_rec(&tok->added_map, e)->key,
                           tok_strmap_rec(&tok->added_map, e)->len) < 0)
            tok->vocab_size++;
done:
    tok_strmap_free(&s.mapr);
    tok_strmap_free(&s.values);
    free(s.map_r);
    free(s.specials);
    free(s.plains);
    tok_buf_free(&s.key);
    return st;
}

anvil_status tok_added_build_tries(anvil_tokenizer *tok)
{
    anvil_status st = ANVIL_OK;
    trie_build braw, bnorm;
    memset(&braw, 0, sizeof braw);
    memset(&bnorm, 0, sizeof bnorm);
    uint32_t root;
    TRY_GOTO(tb_node(&braw, &root), done);
    TRY_GOTO(tb_node(&bnorm, &root), done);
    tok_buf norm = {0};
    for (size_t i = 0; i < tok->n_added; i++) {
        const tok_added *a = &tok->added[i];
        if (a->normalized) {
            norm.len = 0;
            st = tok_normalize_string(tok, content(tok, a), a->len, &norm);
            if (st == ANVIL_OK && norm.len > 0) /* an empty pattern would match everywhere: skipped */
                st = tb_insert(&bnorm, norm.p, norm.len, (int32_t)i);
        } else {
            st = tb_insert(&braw, content(tok, a), a->len, (int32_t)i);
        }
        if (st != ANVIL_OK)
            break;
    }
    tok_buf_free(&norm);
    if (st != ANVIL_OK)
        goto done;
    TRY_GOTO(trie_finish(&tok->trie_raw, &braw), done);
    TRY_GOTO(trie_finish(&tok->trie_norm, &bnorm), done);
    for (int k = 0; k < 2; k++) {
        tok_trie *t = k ? &tok->trie_norm : &tok->trie_raw;
        t->pattern_id = malloc((tok->n_added + 1) * sizeof *t->pattern_id);
        CHECK_GOTO(t->pattern_id, ANVIL_ERR_OOM, done, "out of memory");
        for (size_t i = 0; i < tok->n_added; i++)
            t->pattern_id[i] = tok->added[i].id;
        t->n_patterns = (uint32_t)tok->n_added;
    }
done:
    tb_free(&braw);
    tb_free(&bnorm);
    return st;
}

void tok_added_free(anvil_tokenizer *tok)
{
    trie_free(&tok->trie_raw);
    trie_free(&tok->trie_norm);
    free(tok->added);
    tok->added = NULL;
    tok_buf_free(&tok->added_pool);
    tok_buf_free(&tok->norm_pool);
    tok_strmap_free(&tok->added_map);
    tok_strmap_free(&tok->special_set);
    free(tok->id_str);
    free(tok->id_len);
    free(tok->id_flags);
    tok->id_str = NULL;
    tok->id_len = NULL;
    tok->id_flags = NULL;
}

/* ------------------------------------------------------------ matching */

static uint32_t last_char(const char *s, size_t n)
{
    size_t i = n;
    while (i > 0 && ((unsigned char)s[i - 1] & 0xC0) == 0x80)
        i--;
    size_t l;
    return i > 0 ? tok_utf8_decode(s + i - 1, n - i + 1, &l) : 0;
}

static int is_word(uint32_t cp)
{
    if (cp < 0x80)
        return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
    return tok_uset_has(&tok_uset_rx_word, cp);
}

static int is_space(uint32_t cp)
{
    return tok_uset_has(&tok_uset_rx_space, cp);
}

anvil_status tok_added_split(tok_work *w, const tok_trie *trie, tok_piece p,
                             anvil_status (*fn)(tok_work *w, tok_piece p), anvil_status (*on_id)(tok_work *w, int32_t id))
{
    const anvil_tokenizer *tok = w->tok;
    if (p.len == 0)
        return ANVIL_OK;
    if (trie->n_nodes <= 1 || tok->n_added == 0)
        return fn(w, p);
    size_t start_offset = 0, from = 0;
    size_t ms, me;
    int32_t pat;
    for (;;) {
        /* the arena may grow in fn(): take the pointer afresh */
        const char *text = tok_piece_ptr(w, &p);
        if (!trie_find(trie, text, p.len, from, &ms, &me, &pat))
            break;
        from = me;
        int32_t id = trie->pattern_id[pat];
        uint8_t fl = tok->id_flags[id];
        size_t start = ms, stop = me;
        if (fl & TOK_ID_SINGLE_WORD) {
            size_t l;
            int start_space = start == 0 || !is_word(last_char(text, start));
            int stop_space = stop == p.len || !is_word(tok_utf8_decode(text + stop, p.len - stop, &l));
            if (!start_space || !stop_space)
                continue;
        }
        if (fl & TOK_ID_LSTRIP) {
            size_t ns = start;
            while (ns > 0) {
                size_t b = ns - 1;
                while (b > 0 && ((unsigned char)text[b] & 0xC0) == 0x80)
                    b--;
                size_t l;
                if (!is_space(tok_utf8_decode(text + b, p.len - b, &l)))
                    break;
                ns = b;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (fl & TOK_ID_RSTRIP) {
            while (stop < p.len) {
                size_t l;
                uint32_t cp = tok_utf8_decode(text + stop, p.len - stop, &l);
                if (!is_space(cp))
                    break;
                stop += l;
            }
        }
        if (start_offset < start) {
            TRY(fn(w, tok_piece_sub(p, start_offset, start)));
        }
        TRY(on_id(w, id));
        start_offset = stop;
    }
    if (start_offset < p.len) {
        TRY(fn(w, tok_piece_sub(p, start_offset, p.len)));
    }
    return ANVIL_OK;
}
