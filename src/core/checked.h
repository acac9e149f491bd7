/*
 * Overflow-checked integer arithmetic for sizes derived from untrusted
 * numbers (config.json, options): each returns 1 and stores the result
 * when it is exact, 0 (and leaves *out unspecified) when it would wrap.
 *
 *     size_t bytes;
 *     if (!anvil_mul_size_ok(n_blocks, block_bytes, &bytes))
 *         return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "KV cache: size overflows");
 *
 * Signed overflow is undefined behaviour in C and unsigned overflow wraps
 * silently into a small allocation; both have bitten loaders before, so
 * every product of two such numbers goes through these.
 */
#ifndef ANVIL_CORE_CHECKED_H
#define ANVIL_CORE_CHECKED_H

#include <stddef.h>
#include <stdint.h>

static inline int anvil_mul_i64_ok(int64_t a, int64_t b, int64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}
static inline int anvil_add_i64_ok(int64_t a, int64_t b, int64_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}
static inline int anvil_mul_size_ok(size_t a, size_t b, size_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}
static inline int anvil_add_size_ok(size_t a, size_t b, size_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

#endif
