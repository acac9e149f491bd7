/*
 * KV blocks with reference counts and a prefix cache (see kv_manager.h).
 *
 * Per block: refcount, registration (hash, parent hash, token ids), links
 * in the LRU list of cached blocks. The free list is a stack. The hash
 * table maps hash -> block with open addressing (linear probing, deletion
 * by backward shift), sized to at least twice the block count so probes
 * stay short.
 */
#include "executor/kv_manager.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "anvil/log.h"
#include "core/error.h"

#define NONE (-1)

struct anvil_kv_manager {
    anvil_runtime *rt;
    int prefix_cache;
    int32_t bs;
    int32_t n_ids;         /* block ids are 0..n_ids-1 (the runtime's) */
    int32_t n_owned;       /* blocks taken from the runtime */
    int32_t *owned_ids;    /* [n_owned] */
    unsigned char *owned;  /* [n_ids] */

    int32_t *refcount;     /* [n_ids] */
    unsigned char *registered;
    uint64_t *hash;        /* [n_ids] */
    uint64_t *parent;      /* [n_ids] */
    int32_t *tokens;       /* [n_ids * bs] the registered block's token ids */
    int32_t *lru_prev, *lru_next;
    int32_t lru_head, lru_tail; /* head: least recently released */
    int32_t n_cached;

    int32_t *free_stack;   /* [n_owned] */
    int32_t n_free;

    int32_t *table;        /* [table_cap] block ids or NONE */
    uint32_t table_mask;

    int64_t evictions;
};

int32_t anvil_kv_block_size(const anvil_kv_manager *m) { return m->bs; }
int32_t anvil_kv_total(const anvil_kv_manager *m) { return m->n_owned; }
int32_t anvil_kv_n_free(const anvil_kv_manager *m) { return m->n_free; }
int32_t anvil_kv_n_cached(const anvil_kv_manager *m) { return m->n_cached; }
int32_t anvil_kv_n_used(const anvil_kv_manager *m) { return m->n_owned - m->n_free - m->n_cached; }
int32_t anvil_kv_available(const anvil_kv_manager *m) { return m->n_free + m->n_cached; }
int64_t anvil_kv_evictions(const anvil_kv_manager *m) { return m->evictions; }
int32_t anvil_kv_refcount(const anvil_kv_manager *m, int32_t b) { return m->refcount[b]; }
int anvil_kv_is_registered(const anvil_kv_manager *m, int32_t b) { return m->registered[b]; }

uint64_t anvil_kv_hash(uint64_t parent, const int32_t *tokens, int32_t n)
{
    return XXH3_64bits_withSeed(tokens, (size_t)n * sizeof *tokens, parent);
}

void anvil_kv_manager_free(anvil_kv_manager *m)
{
    if (m == NULL)
        return;
    if (m->owned_ids)
        anvil_runtime_kv_release(m->rt, m->n_owned, m->owned_ids);
    free(m->owned_ids);
    free(m->owned);
    free(m->refcount);
    free(m->registered);
    free(m->hash);
    free(m->parent);
    free(m->tokens);
    free(m->lru_prev);
    free(m->lru_next);
    free(m->free_stack);
    free(m->table);
    free(m);
}

anvil_status anvil_kv_manager_create(anvil_runtime *rt, int prefix_cache, anvil_kv_manager **out)
{
    *out = NULL;
    CHECK(rt != NULL, ANVIL_ERR_INVALID_ARG, "kv manager: no runtime");
    anvil_kv_manager *m = calloc(1, sizeof *m);
    CHECK(m != NULL, ANVIL_ERR_OOM, "out of memory");
    anvil_status st = ANVIL_OK;
    m->rt = rt;
    m->prefix_cache = prefix_cache != 0;
    m->bs = anvil_runtime_kv_block_size(rt);
    m->n_ids = anvil_runtime_kv_blocks_total(rt);
    const int32_t n_take = anvil_runtime_kv_blocks_free(rt);
    CHECK_GOTO(n_take > 0, ANVIL_ERR_CAPACITY, fail, "kv manager: the runtime has no free KV block");
    const size_t n = (size_t)m->n_ids;
    m->owned_ids = malloc((size_t)n_take * sizeof *m->owned_ids);
    m->owned = calloc(n, 1);
    m->refcount = calloc(n, sizeof *m->refcount);
    m->registered = calloc(n, 1);
    m->hash = calloc(n, sizeof *m->hash);
    m->parent = calloc(n, sizeof *m->parent);
    m->tokens = calloc(n * (size_t)m->bs, sizeof *m->tokens);
    m->lru_prev = malloc(n * sizeof *m->lru_prev);
    m->lru_next = malloc(n * sizeof *m->lru_next);
    m->free_stack = malloc((size_t)n_take * sizeof *m->free_stack);
    uint32_t cap = 16;
    while (cap < 2u * (uint32_t)n_take)
        cap <<= 1;
    m->table = malloc((size_t)cap * sizeof *m->table);
    m->table_mask = cap - 1;
    CHECK_GOTO(m->owned_ids && m->owned && m->refcount && m->registered && m->hash && m->parent && m->tokens &&
                   m->lru_prev && m->lru_next && m->free_stack && m->table,
               ANVIL_ERR_OOM, fail, "out of memory for a KV manager of %d blocks", m->n_ids);
    for (uint32_t i = 0; i < cap; i++)
        m->table[i] = NONE;
    TRY_GOTO(anvil_runtime_kv_alloc(rt, n_take, m->owned_ids), fail);
    m->n_owned = n_take;
    /* the stack pops the lowest id first, as the runtime's pool does */
    for (int32_t i = 0; i < n_take; i++) {
        int32_t b = m->owned_ids[n_take - 1 - i];
        CHECK_GOTO(b >= 0 && b < m->n_ids, ANVIL_ERR_INTERNAL, fail, "runtime block id %d out of range", b);
        m->owned[b] = 1;
        m->free_stack[i] = b;
    }
    m->n_free = n_take;
    for (size_t i = 0; i < n; i++)
        m->lru_prev[i] = m->lru_next[i] = NONE;
    m->lru_head = m->lru_tail = NONE;
    *out = m;
    return ANVIL_OK;
fail:
    if (m->n_owned == 0) {
        free(m->owned_ids); /* nothing taken: nothing to give back */
        m->owned_ids = NULL;
    }
    anvil_kv_manager_free(m);
    return st;
}

/* ------------------------------------------------------------ LRU list */

static void lru_remove(anvil_kv_manager *m, int32_t b)
{
    int32_t p = m->lru_prev[b], n = m->lru_next[b];
    if (p != NONE)
        m->lru_next[p] = n;
    else
        m->lru_head = n;
    if (n != NONE)
        m->lru_prev[n] = p;
    else
        m->lru_tail = p;
    m->lru_prev[b] = m->lru_next[b] = NONE;
    m->n_cached--;
}

static void lru_push_tail(anvil_kv_manager *m, int32_t b)
{
    m->lru_prev[b] = m->lru_tail;
    m->lru_next[b] = NONE;
    if (m->lru_tail != NONE)
        m->lru_next[m->lru_tail] = b;
    else
        m->lru_head = b;
    m->lru_tail = b;
    m->n_cached++;
}

/* ------------------------------------------------------------ hash table */

static uint32_t slot_of(const anvil_kv_manager *m, uint64_t h) { return (uint32_t)(h ^ (h >> 32)) & m->table_mask; }

static void table_remove(anvil_kv_manager *m, int32_t b)
{
    uint32_t i = slot_of(m, m->hash[b]);
    while (m->table[i] != b) {
        if (m->table[i] == NONE)
            return; /* not there: nothing to do */
        i = (i + 1) & m->table_mask;
    }
    /* backward-shift deletion keeps every probe chain unbroken */
    uint32_t j = i;
    for (;;) {
        m->table[i] = NONE;
        for (;;) {
            j = (j + 1) & m->table_mask;
            if (m->table[j] == NONE)
                return;
            uint32_t home = slot_of(m, m->hash[m->table[j]]);
            /* the entry at j may move to i if its home is not in (i, j] */
            int in_range = i <= j ? (home > i && home <= j) : (home > i || home <= j);
            if (!in_range)
                break;
        }
        m->table[i] = m->table[j];
        i = j;
    }
}

static void unregister(anvil_kv_manager *m, int32_t b)
{
    if (!m->registered[b])
        return;
    table_remove(m, b);
    m->registered[b] = 0;
}

int32_t anvil_kv_lookup(const anvil_kv_manager *m, uint64_t h, uint64_t parent, const int32_t *tokens)
{
    if (!m->prefix_cache)
        return NONE;
    for (uint32_t i = slot_of(m, h);; i = (i + 1) & m->table_mask) {
        int32_t b = m->table[i];
        if (b == NONE)
            return NONE;
        if (m->hash[b] == h && m->parent[b] == parent &&
            memcmp(m->tokens + (size_t)b * (size_t)m->bs, tokens, (size_t)m->bs * sizeof *tokens) == 0)
            return b;
    }
}

void anvil_kv_register(anvil_kv_manager *m, int32_t b, uint64_t h, uint64_t parent, const int32_t *tokens)
{
    if (!m->prefix_cache || m->registered[b] || m->refcount[b] <= 0)
        return;
    if (anvil_kv_lookup(m, h, parent, tokens) != NONE)
        return; /* the same prefix computed twice (two requests at once): keep the first */
    m->registered[b] = 1;
    m->hash[b] = h;
    m->parent[b] = parent;
    memcpy(m->tokens + (size_t)b * (size_t)m->bs, tokens, (size_t)m->bs * sizeof *tokens);
    uint32_t i = slot_of(m, h);
    while (m->table[i] != NONE)
        i = (i + 1) & m->table_mask;
    m->table[i] = b;
}

/* ------------------------------------------------------------ references */

anvil_status anvil_kv_alloc(anvil_kv_manager *m, int32_t n, int32_t *ids)
{
    CHECK(n >= 0, ANVIL_ERR_INVALID_ARG, "cannot allocate %d blocks", n);
    if (n > anvil_kv_available(m))
        return ANVIL_FAIL(ANVIL_ERR_CAPACITY, "KV cache full: %d blocks wanted, %d available", n,
                          anvil_kv_available(m));
    for (int32_t i = 0; i < n; i++) {
        int32_t b;
        if (m->n_free > 0) {
            b = m->free_stack[--m->n_free];
        } else {
            b = m->lru_head; /* evict the least recently released prefix */
            lru_remove(m, b);
            unregister(m, b);
            m->evictions++;
        }
        m->refcount[b] = 1;
        ids[i] = b;
    }
    return ANVIL_OK;
}

void anvil_kv_incref(anvil_kv_manager *m, int32_t b)
{
    if (m->refcount[b] == 0) {
        if (!m->registered[b]) {
            anvil_log(ANVIL_LOG_ERROR, "kv manager: incref of free block %d", b);
            return;
        }
        lru_remove(m, b);
    }
    m->refcount[b]++;
}

void anvil_kv_decref(anvil_kv_manager *m, int32_t b)
{
    if (m->refcount[b] <= 0) {
        anvil_log(ANVIL_LOG_ERROR, "kv manager: decref of unreferenced block %d", b);
        return;
    }
    if (--m->refcount[b] > 0)
        return;
    if (m->registered[b])
        lru_push_tail(m, b);
    else
        m->free_stack[m->n_free++] = b;
}

int32_t anvil_kv_forget_all(anvil_kv_manager *m)
{
    int32_t freed = 0;
    while (m->lru_head != NONE) {
        const int32_t b = m->lru_head;
        lru_remove(m, b);
        unregister(m, b);
        m->free_stack[m->n_free++] = b;
        freed++;
    }
    for (int32_t i = 0; i < m->n_owned; i++)
        unregister(m, m->owned_ids[i]); /* used ones: their sequences keep them, unregistered */
    return freed;
}

anvil_status anvil_kv_copy(anvil_kv_manager *m, int32_t src, int32_t dst, int32_t n_tokens)
{
    return anvil_runtime_kv_copy(m->rt, 1, &src, &dst, n_tokens);
}

/* ------------------------------------------------------------ checks */

anvil_status anvil_kv_check(const anvil_kv_manager *m)
{
    int32_t n_zero_unreg = 0, n_zero_reg = 0, n_lru = 0, n_table = 0, n_reg = 0;
    for (int32_t b = 0; b < m->n_ids; b++) {
        if (!m->owned[b])
            continue;
        CHECK(m->refcount[b] >= 0, ANVIL_ERR_INTERNAL, "block %d has refcount %d", b, m->refcount[b]);
        if (m->refcount[b] == 0 && m->registered[b])
            n_zero_reg++;
        else if (m->refcount[b] == 0)
            n_zero_unreg++;
        n_reg += m->registered[b];
    }
    CHECK(n_zero_unreg == m->n_free, ANVIL_ERR_INTERNAL, "%d free blocks but the free list holds %d", n_zero_unreg,
          m->n_free);
    for (int32_t i = 0; i < m->n_free; i++) {
        int32_t b = m->free_stack[i];
        CHECK(m->refcount[b] == 0 && !m->registered[b], ANVIL_ERR_INTERNAL, "free list holds block %d in use", b);
    }
    for (int32_t b = m->lru_head, prev = NONE; b != NONE; prev = b, b = m->lru_next[b]) {
        CHECK(m->lru_prev[b] == prev, ANVIL_ERR_INTERNAL, "LRU list broken at block %d", b);
        CHECK(m->refcount[b] == 0 && m->registered[b], ANVIL_ERR_INTERNAL, "LRU holds block %d in use", b);
        CHECK(++n_lru <= m->n_owned, ANVIL_ERR_INTERNAL, "LRU list has a cycle");
    }
    CHECK(n_lru == m->n_cached && n_lru == n_zero_reg, ANVIL_ERR_INTERNAL, "LRU has %d blocks, %d cached, %d expected",
          n_lru, m->n_cached, n_zero_reg);
    for (uint32_t i = 0; i <= m->table_mask; i++) {
        int32_t b = m->table[i];
        if (b == NONE)
            continue;
        n_table++;
        CHECK(m->registered[b], ANVIL_ERR_INTERNAL, "hash table holds unregistered block %d", b);
        CHECK(anvil_kv_lookup(m, m->hash[b], m->parent[b], m->tokens + (size_t)b * (size_t)m->bs) == b,
              ANVIL_ERR_INTERNAL, "block %d is in the table but its lookup misses", b);
    }
    CHECK(n_table == n_reg, ANVIL_ERR_INTERNAL, "hash table holds %d blocks, %d registered", n_table, n_reg);
    return ANVIL_OK;
}
