#include "core/arena.h"

#include <stdint.h>
#include <stdlib.h>

#include "core/error.h"

anvil_status anvil_arena_init(anvil_arena *a, size_t cap)
{
    a->base = NULL;
    a->cap = a->used = a->peak = 0;
    if (cap == 0)
        return ANVIL_OK;
    size_t rounded = (cap + 63) & ~(size_t)63;
    CHECK(rounded >= cap, ANVIL_ERR_OOM, "arena of %zu bytes is too large", cap);
    a->base = aligned_alloc(64, rounded);
    CHECK(a->base != NULL, ANVIL_ERR_OOM, "cannot reserve an arena of %zu bytes", cap);
    a->cap = rounded;
    return ANVIL_OK;
}

void *anvil_arena_alloc(anvil_arena *a, size_t size, size_t align)
{
    if (align == 0)
        align = 1;
    uintptr_t start = ((uintptr_t)a->base + a->used + (align - 1)) & ~(uintptr_t)(align - 1);
    size_t offset = (size_t)(start - (uintptr_t)a->base);
    if (a->base == NULL || offset > a->cap || size > a->cap - offset)
        return NULL;
    a->used = offset + size;
    if (a->used > a->peak)
        a->peak = a->used;
    return (void *)start;
}

void anvil_arena_reset(anvil_arena *a) { a->used = 0; }

void anvil_arena_free(anvil_arena *a)
{
    free(a->base);
    a->base = NULL;
    a->cap = a->used = a->peak = 0;
}
