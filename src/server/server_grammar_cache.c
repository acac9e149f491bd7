/*
 * A model's compiled grammars, by what they were compiled from: agents send
 * the same tools and schemas on every request, and a compile costs
 * milliseconds to seconds (a 128k vocabulary, a large schema) where a
 * lookup costs a hash. The key is the kind of compile and its exact text
 * (the server compiles each kind with fixed options, so the kind names
 * them); a least-recently-used list bounds the entries.
 *
 * Lifetime: a grammar is reference counted (anvil_grammar_retain). The
 * cache holds one reference per entry and every request that uses it one
 * more, dropped after its last event (anvil_grammar_free, as for a grammar
 * of its own). An entry evicted while requests use it lives until the last
 * of them ends. A grammar's mask cache is shared and locked by the grammar
 * itself, so requests of the same schema also share its masks.
 *
 * One mutex guards the list and counters: the event loop and handler
 * threads look up; the executor never sees the cache, only grammars.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_grammar_cache.h"

typedef struct gc_entry {
    struct gc_entry *prev, *next; /* most recent first */
    uint64_t hash;
    char *key;
    size_t len;
    anvil_grammar *g;
} gc_entry;

struct srv_gcache {
    pthread_mutex_t mu;
    gc_entry *head, *tail;
    int32_t n, cap;
    uint64_t hits, misses, evictions;
};

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h;
}

srv_gcache *srv_gcache_create(int32_t capacity)
{
    srv_gcache *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    if (pthread_mutex_init(&c->mu, NULL) != 0) {
        free(c);
        return NULL;
    }
    c->cap = capacity > 0 ? capacity : 0;
    return c;
}

static void entry_free(gc_entry *e)
{
    anvil_grammar_free(e->g); /* the cache's reference */
    free(e->key);
    free(e);
}

void srv_gcache_free(srv_gcache *c)
{
    if (c == NULL)
        return;
    for (gc_entry *e = c->head, *nx; e; e = nx) {
        nx = e->next;
        entry_free(e);
    }
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static void unlink_entry(srv_gcache *c, gc_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void push_front(srv_gcache *c, gc_entry *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (c->tail == NULL)
        c->tail = e;
}

/* A linear scan: the list holds tens of entries and a hash compare each. */
static gc_entry *find(srv_gcache *c, uint64_t h, const char *key, size_t len)
{
    for (gc_entry *e = c->head; e; e = e->next)
        if (e->hash == h && e->len == len && memcmp(e->key, key, len) == 0)
            return e;
    return NULL;
}

anvil_grammar *srv_gcache_get(srv_gcache *c, const char *key, size_t len)
{
    if (c == NULL)
        return NULL;
    const uint64_t h = fnv1a(key, len);
    pthread_mutex_lock(&c->mu);
    gc_entry *e = find(c, h, key, len);
    anvil_grammar *g = NULL;
    if (e) {
        unlink_entry(c, e);
        push_front(c, e);
        g = anvil_grammar_retain(e->g);
        c->hits++;
    } else {
        c->misses++;
    }
    pthread_mutex_unlock(&c->mu);
    return g;
}

void srv_gcache_put(srv_gcache *c, const char *key, size_t len, anvil_grammar *g)
{
    if (c == NULL || g == NULL || c->cap == 0)
        return;
    gc_entry *e = calloc(1, sizeof *e);
    char *k = malloc(len ? len : 1);
    if (e == NULL || k == NULL) {
        free(e);
        free(k);
        return;
    }
    memcpy(k, key, len);
    e->key = k;
    e->len = len;
    e->hash = fnv1a(key, len);
    gc_entry *old = NULL;
    pthread_mutex_lock(&c->mu);
    if (find(c, e->hash, key, len) != NULL) {
        pthread_mutex_unlock(&c->mu);
        free(k);
        free(e);
        return;
    }
    e->g = anvil_grammar_retain(g);
    push_front(c, e);
    if (++c->n > c->cap) {
        old = c->tail;
        unlink_entry(c, old);
        c->n--;
        c->evictions++;
    }
    pthread_mutex_unlock(&c->mu);
    if (old)
        entry_free(old); /* outside the lock: the last reference frees a grammar */
}

void srv_gcache_get_stats(srv_gcache *c, srv_gcache_stats *out)
{
    memset(out, 0, sizeof *out);
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->mu);
    out->hits = c->hits;
    out->misses = c->misses;
    out->evictions = c->evictions;
    out->entries = c->n;
    pthread_mutex_unlock(&c->mu);
}
