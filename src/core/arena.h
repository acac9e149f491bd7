/*
 * A bump allocator over one block reserved up front: per-step temporaries
 * come from here so that the hot path never calls malloc.
 */
#ifndef ANVIL_CORE_ARENA_H
#define ANVIL_CORE_ARENA_H

#include <stddef.h>

#include "anvil/status.h"

typedef struct anvil_arena {
    unsigned char *base; /* 64-byte aligned block of cap bytes */
    size_t cap;
    size_t used;
    size_t peak;         /* the most ever used, to size the next reservation */
} anvil_arena;

/* Reserves cap bytes. On failure the arena is left empty (base NULL). */
anvil_status anvil_arena_init(anvil_arena *a, size_t cap);

/* Returns size bytes aligned to align (a power of two, at most 4096), or
 * NULL when the arena is full: callers turn that into ANVIL_ERR_CAPACITY. */
void *anvil_arena_alloc(anvil_arena *a, size_t size, size_t align);

/* Forgets every allocation (the memory stays reserved). */
void anvil_arena_reset(anvil_arena *a);

/* Releases the block. Safe on a zeroed or already freed arena. */
void anvil_arena_free(anvil_arena *a);

#endif
