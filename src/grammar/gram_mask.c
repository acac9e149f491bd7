/*
 * Token masks, and their cache.
 *
 * Which tokens may come next depends on the whole parse stack, but for
 * almost every token only on its top few frames: a token inside a JSON
 * string is valid or not whatever object the string is in. So the cache key
 * is the matcher's stack set with every stack cut to its top cache_frames
 * frames (GRAM_BOTTOM under the cut). One walk of the vocabulary trie from
 * the cut set sorts the tokens into
 *   accepted:  some parse consumes all of the token without leaving the cut frames,
 *   rejected:  every parse dies inside the cut frames,
 *   uncertain: some parse returned below the cut before the token's end,
 * and is kept in the grammar (shared by its matchers and threads). A mask is
 * then the accepted set plus the uncertain tokens checked against the full
 * stacks, walked in trie order so that shared prefixes are stepped once.
 * The same set recurs at every depth of a nested structure, so the cache
 * stays small; with cache_frames 0 every mask is a full trie walk.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "grammar/gram_internal.h"

/* ------------------------------------------------------------ the trie walk */

/* Frames a cut walk's stacks may reach: the kept frames, the bottom mark,
 * and room for what one token pushes (past it, tokens become uncertain). */
static int32_t gram_cut_depth(const anvil_grammar_options *o)
{
    return o->cache_frames + 1 + 48;
}

typedef struct ivec {
    int32_t *p;
    size_t n, cap;
} ivec;

static anvil_status ivec_push(ivec *v, int32_t x)
{
    if (v->n == v->cap) {
        size_t c = v->cap ? v->cap * 2 : 256;
        int32_t *q = realloc(v->p, c * sizeof *q);
        CHECK(q, ANVIL_ERR_OOM, "out of memory");
        v->p = q;
        v->cap = c;
    }
    v->p[v->n++] = x;
    return ANVIL_OK;
}

typedef struct walk_frame {
    int32_t node, child, state;
    int unc;
} walk_frame;

/*
 * Walks the trie from DFA state s0. Accepted tokens go to acc (ids) or, when
 * words is not NULL, straight into the mask; uncertain ones to unc (sorted
 * indices). frames: scratch of vocab.max_len + 2.
 */
static anvil_status walk(gram_dfa *d, const anvil_grammar_vocab *v, int32_t s0, ivec *acc, uint32_t *words,
                         ivec *unc, walk_frame *fr, int cut)
{
    int sp = 0;
    fr[0].node = 0;
    fr[0].child = 1;
    fr[0].state = s0;
    fr[0].unc = 0;
    sp = 1;
    while (sp > 0) {
        walk_frame *f = &fr[sp - 1];
        if (f->child >= v->trie[f->node].end) {
            sp--;
            continue;
        }
        int32_t c = f->child;
        const gram_tnode *t = &v->trie[c];
        f->child = t->end;
        int32_t ns = d->trans[(size_t)f->state * 256 + t->byte]; /* the common case: known */
        if (ns < 0)
            TRY(gram_dfa_step(d, f->state, t->byte, &ns));
        const gram_dstate *ds = &d->st[ns];
        int ok = ds->n > 0 || ds->accept || ds->popped;
        /* a cut walk's depth limit is tighter than the real one: what it dropped is uncertain */
        int deep = cut && ds->deep;
        int u = f->unc || ds->popped || deep;
        for (int32_t k = t->lo; k < t->lo + t->n_here; k++) {
            if (ok) {
                int32_t id = v->sorted[k];
                if (words)
                    words[id >> 5] |= 1u << (id & 31);
                else
                    TRY(ivec_push(acc, id));
            } else if (f->unc || deep) {
                TRY(ivec_push(unc, k));
            }
        }
        if (ds->n == 0) {
            if (u)
                for (int32_t k = t->lo + t->n_here; k < t->hi; k++)
                    TRY(ivec_push(unc, k));
            continue;
        }
        if (t->end > c + 1) {
            walk_frame *nf = &fr[sp++];
            nf->node = c;
            nf->child = c + 1;
            nf->state = ns;
            nf->unc = u;
        }
    }
    return ANVIL_OK;
}

/* ------------------------------------------------------------ cache */

static uint64_t key_hash(const int32_t *k, int32_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (int32_t i = 0; i < n; i++) {
        h ^= (uint32_t)k[i];
        h *= 0x100000001b3ull;
        h ^= h >> 31;
    }
    return h;
}

static void entry_free(gram_mask_entry *e)
{
    if (!e)
        return;
    free(e->key);
    free(e->acc);
    free(e->bits);
    free(e->unc);
    free(e);
}

void gram_mask_cache_free(anvil_grammar *g)
{
    for (size_t i = 0; i < g->ht_cap; i++)
        entry_free(g->ht[i]);
    free(g->ht);
    g->ht = NULL;
    g->ht_cap = g->n_entries = 0;
}

static gram_mask_entry *cache_find(const anvil_grammar *g, const int32_t *key, int32_t n, uint64_t h)
{
    if (!g->ht_cap)
        return NULL;
    for (size_t j = h & (g->ht_cap - 1); g->ht[j]; j = (j + 1) & (g->ht_cap - 1)) {
        gram_mask_entry *e = g->ht[j];
        if (e->hash == h && e->n_key == n && memcmp(e->key, key, (size_t)n * sizeof *key) == 0)
            return e;
    }
    return NULL;
}

/* The pending computation of a key (under the lock): its index, or -1. */
static int pending_find(const anvil_grammar *g, const int32_t *key, int32_t n, uint64_t h)
{
    for (int i = 0; i < g->n_pending; i++) {
        const struct gram_pending *p = &g->pending[i];
        if (p->hash == h && p->n_key == n && memcmp(p->key, key, (size_t)n * sizeof *key) == 0)
            return i;
    }
    return -1;
}

/* Drops the pending computation whose key is this buffer (under the lock). */
static void pending_remove(anvil_grammar *g, const int32_t *key)
{
    for (int i = 0; i < g->n_pending; i++)
        if (g->pending[i].key == key) {
            g->pending[i] = g->pending[--g->n_pending];
            return;
        }
}

/* Inserts e (under the lock); 0 when the cache is full (the caller keeps e). */
static int cache_insert(anvil_grammar *g, gram_mask_entry *e, int64_t bytes)
{
    if (g->cache_bytes + bytes > g->o.max_cache_bytes)
        return 0;
    if ((g->n_entries + 1) * 2 > g->ht_cap) {
        size_t nc = g->ht_cap ? g->ht_cap * 2 : 64;
        gram_mask_entry **t = calloc(nc, sizeof *t);
        if (!t)
            return 0;
        for (size_t i = 0; i < g->ht_cap; i++) {
            if (!g->ht[i])
                continue;
            size_t j = g->ht[i]->hash & (nc - 1);
            while (t[j])
                j = (j + 1) & (nc - 1);
            t[j] = g->ht[i];
        }
        free(g->ht);
        g->ht = t;
        g->ht_cap = nc;
    }
    size_t j = e->hash & (g->ht_cap - 1);
    while (g->ht[j])
        j = (j + 1) & (g->ht_cap - 1);
    g->ht[j] = e;
    g->n_entries++;
    g->cache_bytes += bytes;
    return 1;
}

/* Computes the entry of a cut stack set (key: n_stacks, then len and positions of each). */
static anvil_status entry_compute(const anvil_grammar *g, const int32_t *key, int32_t n_key, uint64_t h,
                                  gram_mask_entry **out, int64_t *bytes)
{
    const anvil_grammar_vocab *v = g->v;
    anvil_status st = ANVIL_OK;
    gram_dfa d;
    gram_dfa_init(&d, &g->g, gram_cut_depth(&g->o), g->o.max_stacks);
    ivec acc = {0}, unc = {0};
    const int32_t **stacks = NULL;
    int32_t *lens = NULL;
    walk_frame *fr = malloc(((size_t)v->max_len + 2) * sizeof *fr);
    gram_mask_entry *e = calloc(1, sizeof *e);
    int32_t n_st = key[0];
    stacks = malloc(((size_t)n_st + 1) * sizeof *stacks);
    lens = malloc(((size_t)n_st + 1) * sizeof *lens);
    CHECK_GOTO(fr && e && stacks && lens, ANVIL_ERR_OOM, fail, "out of memory");
    for (int32_t i = 0, at = 1; i < n_st; i++) {
        lens[i] = key[at];
        stacks[i] = key + at + 1;
        at += 1 + key[at];
    }
    int32_t s0;
    TRY_GOTO(gram_dfa_start(&d, stacks, lens, n_st, 0, &s0), fail);
    TRY_GOTO(walk(&d, v, s0, &acc, NULL, &unc, fr, 1), fail);
    e->hash = h;
    e->n_key = n_key;
    e->key = malloc((size_t)n_key * sizeof *e->key);
    CHECK_GOTO(e->key, ANVIL_ERR_OOM, fail, "out of memory");
    memcpy(e->key, key, (size_t)n_key * sizeof *key);
    size_t words = ((size_t)v->n + 31) / 32;
    e->n_acc = (int32_t)acc.n;
    if (acc.n < words) {
        e->acc = acc.p; /* fewer ids than mask words: set them one by one */
        acc.p = NULL;
        *bytes = (int64_t)(e->n_acc * 4);
    } else {
        e->bits = calloc(words, sizeof *e->bits);
        CHECK_GOTO(e->bits, ANVIL_ERR_OOM, fail, "out of memory");
        for (size_t i = 0; i < acc.n; i++)
            e->bits[acc.p[i] >> 5] |= 1u << (acc.p[i] & 31);
        *bytes = (int64_t)(words * 4);
    }
    e->n_unc = (int32_t)unc.n;
    e->unc = unc.p;
    unc.p = NULL;
    *bytes += (int64_t)(unc.n * 4 + (size_t)n_key * 4 + sizeof *e);
    *out = e;
    e = NULL;
fail:
    entry_free(e);
    free(acc.p);
    free(unc.p);
    free(fr);
    free((void *)stacks);
    free(lens);
    gram_dfa_free(&d);
    return st;
}

/* ------------------------------------------------------------ fill */

/* The cut key of the matcher's state into m->cut; *n its length, 0 when a
 * stack is too deep for a cut walk (gram_cut_depth) and the mask must be a
 * full walk. */
static anvil_status cut_key(anvil_grammar_matcher *m, int32_t *n)
{
    const gram_dfa *d = &m->dfa;
    const gram_dstate *s = &d->st[m->state];
    int32_t frames = m->g->o.cache_frames;
    /* a cut walk allows gram_cut_depth frames; the real stack must allow at least as many */
    int32_t limit = gram_cut_depth(&m->g->o);
    for (int32_t k = 0; k < s->n; k++) {
        int32_t len = d->stk[s->first + (size_t)k].len;
        int32_t cutoff = len > frames ? len - frames : 0;
        if (m->g->o.max_stack_depth - cutoff + 1 < limit) {
            *n = 0;
            return ANVIL_OK;
        }
    }
    size_t need = 1;
    for (int32_t k = 0; k < s->n; k++)
        need += 2 + (size_t)(d->stk[s->first + (size_t)k].len < frames ? d->stk[s->first + (size_t)k].len : frames);
    if (need > m->cap_cut) {
        int32_t *q = realloc(m->cut, need * sizeof *q);
        CHECK(q, ANVIL_ERR_OOM, "out of memory");
        m->cut = q;
        m->cap_cut = need;
    }
    /* cut stacks can coincide: keep each once (sets are small, so a scan) */
    int32_t at = 1, count = 0;
    for (int32_t k = 0; k < s->n; k++) {
        const gram_stk *a = &d->stk[s->first + (size_t)k];
        const int32_t *p = d->data + a->off;
        int32_t keep = a->len <= frames ? a->len : frames;
        int cut = a->len > frames;
        int32_t len = keep + cut;
        int32_t *dst = m->cut + at;
        dst[0] = len;
        if (cut)
            dst[1] = GRAM_BOTTOM;
        memcpy(dst + 1 + cut, p + a->len - keep, (size_t)keep * sizeof *p);
        int dup = 0;
        for (int32_t q = 1, i = 0; i < count && !dup; i++) {
            dup = m->cut[q] == len && memcmp(m->cut + q + 1, dst + 1, (size_t)len * sizeof *dst) == 0;
            q += 1 + m->cut[q];
        }
        if (!dup) {
            at += 1 + len;
            count++;
        }
    }
    m->cut[0] = count;
    *n = at;
    return ANVIL_OK;
}

static anvil_status check_uncertain(anvil_grammar_matcher *m, const gram_mask_entry *e, uint32_t *words)
{
    const anvil_grammar_vocab *v = m->g->v;
    int32_t *ds = m->depth_st;
    ds[0] = m->state;
    const char *prev = NULL;
    uint32_t prev_len = 0, valid = 0; /* ds[0..valid] hold the states after prev's first bytes */
    for (int32_t i = 0; i < e->n_unc; i++) {
        int32_t id = v->sorted[e->unc[i]];
        if (words[id >> 5] >> (id & 31) & 1)
            continue;
        const char *p = v->pool + v->off[id];
        uint32_t len = v->len[id], l = 0;
        while (l < len && l < prev_len && l < valid && p[l] == prev[l])
            l++;
        int32_t s = ds[l];
        uint32_t k = l;
        for (; k < len && s != 0; k++) {
            int32_t t = m->dfa.trans[(size_t)s * 256 + (uint8_t)p[k]];
            if (t < 0)
                TRY(gram_dfa_step(&m->dfa, s, (uint8_t)p[k], &t));
            s = t;
            ds[k + 1] = s;
        }
        valid = k;
        prev = p;
        prev_len = len;
        if (k == len && (m->dfa.st[s].n > 0 || m->dfa.st[s].accept))
            words[id >> 5] |= 1u << (id & 31);
    }
    return ANVIL_OK;
}

anvil_status gram_mask_fill(anvil_grammar_matcher *m, uint32_t *words)
{
    anvil_grammar *g = (anvil_grammar *)m->g;
    const anvil_grammar_vocab *v = g->v;
    int32_t n_key = 0;
    if (g->o.cache_frames > 0)
        TRY(cut_key(m, &n_key));
    if (n_key == 0) {
        /* no cache (or a stack near max_stack_depth): one walk of the trie from the full state */
        walk_frame *fr = malloc(((size_t)v->max_len + 2) * sizeof *fr);
        CHECK(fr, ANVIL_ERR_OOM, "out of memory");
        ivec unc = {0};
        anvil_status st = walk(&m->dfa, v, m->state, NULL, words, &unc, fr, 0);
        free(fr);
        free(unc.p);
        return st;
    }
    uint64_t h = key_hash(m->cut, n_key);
    pthread_mutex_lock(&g->lock);
    gram_mask_entry *e = cache_find(g, m->cut, n_key, h);
    /* another thread computing this key: wait for its entry (one trie walk, not one a thread) */
    while (!e && pending_find(g, m->cut, n_key, h) >= 0) {
        pthread_cond_wait(&g->done, &g->lock);
        e = cache_find(g, m->cut, n_key, h);
    }
    const int mine = !e && g->n_pending < GRAM_MAX_PENDING;
    if (mine)
        g->pending[g->n_pending++] = (struct gram_pending){.key = m->cut, .n_key = n_key, .hash = h};
    pthread_mutex_unlock(&g->lock);
    gram_mask_entry *own = NULL;
    if (!e) {
        int64_t bytes = 0;
        anvil_status st = entry_compute(g, m->cut, n_key, h, &own, &bytes);
        pthread_mutex_lock(&g->lock);
        if (mine) {
            pending_remove(g, m->cut);
            pthread_cond_broadcast(&g->done); /* in the cache now, or not (full, failed): waiters look again */
        }
        e = st == ANVIL_OK ? cache_find(g, m->cut, n_key, h) : NULL; /* another thread may have been first */
        if (st == ANVIL_OK && !e && cache_insert(g, own, bytes)) {
            e = own;
            own = NULL;
        }
        pthread_mutex_unlock(&g->lock);
        TRY(st);
        if (!e)
            e = own;
    }
    if (e->bits) {
        size_t n = ((size_t)v->n + 31) / 32;
        for (size_t i = 0; i < n; i++)
            words[i] |= e->bits[i];
    } else {
        for (int32_t i = 0; i < e->n_acc; i++)
            words[e->acc[i] >> 5] |= 1u << (e->acc[i] & 31);
    }
    anvil_status st = check_uncertain(m, e, words);
    entry_free(own);
    return st;
}
