/*
 * The executor's KV-cache manager: the runtime's blocks with reference
 * counts and a prefix cache.
 *
 * A block is in one of three states:
 *  - free: empty, on the free list;
 *  - used: referenced by one or more sequences (refcount > 0);
 *  - cached: unreferenced, but full and registered under the hash of every
 *    token up to its end, so a later sequence with the same prefix can take
 *    it back (anvil_kv_lookup + anvil_kv_incref) instead of recomputing it.
 *    Cached blocks are evicted least-recently-released first when fresh
 *    blocks run out, so "available" is free + cached.
 *
 * The hash of block j of a sequence chains the hash of block j - 1
 * (XXH3-64 of the block's token ids, seeded with the parent hash), so equal
 * hashes mean equal whole prefixes. A lookup also compares the stored token
 * ids and parent hash, so a 64-bit collision cannot hand out wrong KV.
 *
 * Block ids are the runtime's. Not thread-safe: the executor thread owns it.
 */
#ifndef ANVIL_EXECUTOR_KV_MANAGER_H
#define ANVIL_EXECUTOR_KV_MANAGER_H

#include <stdint.h>

#include "anvil/runtime.h"
#include "anvil/status.h"

typedef struct anvil_kv_manager anvil_kv_manager;

/* The parent hash of a sequence's first block. */
#define ANVIL_KV_ROOT_HASH 0x616e76696c6b7631ull

/*
 * Takes every free block of rt's pool (rt borrowed; it must outlive the
 * manager). prefix_cache 0: blocks are never registered, lookups miss.
 * *out is NULL on failure.
 */
anvil_status anvil_kv_manager_create(anvil_runtime *rt, int prefix_cache, anvil_kv_manager **out);

/* Returns the blocks to the runtime and frees the manager. NULL is a no-op. */
void anvil_kv_manager_free(anvil_kv_manager *m);

int32_t anvil_kv_block_size(const anvil_kv_manager *m);
int32_t anvil_kv_total(const anvil_kv_manager *m);
int32_t anvil_kv_n_free(const anvil_kv_manager *m);   /* empty blocks */
int32_t anvil_kv_n_cached(const anvil_kv_manager *m); /* unreferenced, holding a prefix */
int32_t anvil_kv_n_used(const anvil_kv_manager *m);   /* referenced */
/* Blocks an allocation can get: free + cached. */
int32_t anvil_kv_available(const anvil_kv_manager *m);

/*
 * Takes n blocks (refcount 1 each) into ids: free ones first, then cached
 * ones, least recently released first (their hashes are forgotten).
 * ANVIL_ERR_CAPACITY, taking none, when fewer than n are available; the
 * executor treats that as a scheduling result, not a failure.
 */
anvil_status anvil_kv_alloc(anvil_kv_manager *m, int32_t n, int32_t *ids);

/* Adds a reference. A cached block becomes used again. */
void anvil_kv_incref(anvil_kv_manager *m, int32_t block);

/* Drops a reference. At zero a registered block becomes cached (the most
 * recently released), any other becomes free. */
void anvil_kv_decref(anvil_kv_manager *m, int32_t block);

int32_t anvil_kv_refcount(const anvil_kv_manager *m, int32_t block);

/* 1 if the block is registered in the prefix cache (then it is full and
 * must not be written). */
int anvil_kv_is_registered(const anvil_kv_manager *m, int32_t block);

/* The chained hash of one full block: XXH3-64 of tokens[0..n) seeded with parent. */
uint64_t anvil_kv_hash(uint64_t parent, const int32_t *tokens, int32_t n);

/*
 * The block registered for (parent, tokens[0..block_size)) with hash h, or
 * -1. Takes no reference (call anvil_kv_incref to keep it). A miss when the
 * prefix cache is off.
 */
int32_t anvil_kv_lookup(const anvil_kv_manager *m, uint64_t h, uint64_t parent, const int32_t *tokens);

/*
 * Registers a used, full block under h (its tokens and parent hash are
 * copied for the lookup check). Nothing happens when the cache is off, the
 * block is already registered, or another block holds the same prefix.
 */
void anvil_kv_register(anvil_kv_manager *m, int32_t block, uint64_t h, uint64_t parent, const int32_t *tokens);

/*
 * Forgets every registered prefix (a refit: KV computed with the old
 * weights must not serve new requests): cached blocks become free, used
 * ones stay with their sequences but are no longer found by a lookup nor
 * cached when released. Returns the number of cached blocks freed.
 */
int32_t anvil_kv_forget_all(anvil_kv_manager *m);

/* Copies the first n_tokens slots of src into dst (anvil_runtime_kv_copy). */
anvil_status anvil_kv_copy(anvil_kv_manager *m, int32_t src, int32_t dst, int32_t n_tokens);

/* Counters of lookups since creation. */
int64_t anvil_kv_evictions(const anvil_kv_manager *m);

/* Checks the manager's invariants (lists, counts, hash table); for tests.
 * ANVIL_ERR_INTERNAL naming the first broken one. */
anvil_status anvil_kv_check(const anvil_kv_manager *m);

#endif
