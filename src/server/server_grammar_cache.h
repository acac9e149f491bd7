/* server_grammar_cache.h: compiled grammars reused across requests
 * (server_grammar_cache.c; docs/server.md, "Structured output"). */
#ifndef ANVIL_SERVER_GRAMMAR_CACHE_H
#define ANVIL_SERVER_GRAMMAR_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/grammar.h"

/* The entries a model's cache keeps by default (docs/server.md). */
#define SRV_GCACHE_DEFAULT 64

typedef struct srv_gcache srv_gcache;

typedef struct srv_gcache_stats {
    uint64_t hits, misses, evictions;
    int32_t entries;
} srv_gcache_stats;

/* A cache of at most capacity grammars (0: keeps none, every lookup a
 * miss). NULL on out of memory. */
srv_gcache *srv_gcache_create(int32_t capacity);

/* Drops the cache's references (grammars still used by a request live on
 * until their last anvil_grammar_free). NULL is a no-op. */
void srv_gcache_free(srv_gcache *c);

/* The grammar compiled from key (len bytes: what was compiled and how,
 * compared exactly), with a new reference the caller drops with
 * anvil_grammar_free; NULL on a miss (counted). c NULL: NULL, uncounted. */
anvil_grammar *srv_gcache_get(srv_gcache *c, const char *key, size_t len);

/* Keeps g (a reference of its own) under key, evicting the least recently
 * used entry past the capacity. A key already there (a concurrent compile
 * of the same text) keeps the first. Out of memory only skips caching. */
void srv_gcache_put(srv_gcache *c, const char *key, size_t len, anvil_grammar *g);

void srv_gcache_get_stats(srv_gcache *c, srv_gcache_stats *out);

#endif
