/*
 * cpu_testkit.h: helpers shared by the CPU backend tests (header-only,
 * static inline, so that every test_*.c stays one executable).
 *
 *  - guarded buffers: every output gets GUARD_BYTES of a known pattern
 *    after it, checked untouched after the op;
 *  - random inputs in [-1, 1) that are never (close to) zero;
 *  - one backend per code path this CPU runs, at a given thread count;
 *  - element comparison with a tolerance that names the failing element.
 */
#ifndef ANVIL_TESTS_CPU_TESTKIT_H
#define ANVIL_TESTS_CPU_TESTKIT_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu_internal.h"
#include "backend/cpu/cpu_reference.h"
#include "testutil.h"

#define GUARD_BYTES 256
#define GUARD_BYTE 0xA7

/* A heap buffer of `bytes` at data, `offset` bytes into a 64-byte aligned
 * block (offset 2 mimics a weight inside an mmap'd safetensors file),
 * followed by GUARD_BYTES of GUARD_BYTE. */
typedef struct gbuf {
    unsigned char *block;
    void *data;
    size_t bytes;
} gbuf;

static inline gbuf gbuf_new(size_t bytes, size_t offset)
{
    gbuf g = {0};
    if (posix_memalign((void **)&g.block, 64, offset + bytes + GUARD_BYTES) != 0)
        fail_msg("out of memory (%zu bytes)", bytes);
    memset(g.block, GUARD_BYTE, offset + bytes + GUARD_BYTES);
    g.data = g.block + offset;
    g.bytes = bytes;
    return g;
}

static inline void gbuf_check(const gbuf *g, const char *what)
{
    const unsigned char *p = (const unsigned char *)g->data + g->bytes;
    for (size_t i = 0; i < GUARD_BYTES; i++)
        if (p[i] != GUARD_BYTE)
            fail_msg("%s: guard byte %zu after the buffer was overwritten", what, i);
}

static inline void gbuf_free(gbuf *g)
{
    free(g->block);
    g->block = NULL;
    g->data = NULL;
}

/* Uniform in [-1, 1) but never within 0.01 of zero. */
static inline float kit_randf(uint64_t *rng)
{
    float f = anvil_test_randf(rng);
    if (fabsf(f) < 0.01f)
        f += f < 0 ? -0.5f : 0.5f;
    return f;
}

static inline void kit_fill_f32(float *p, int64_t n, uint64_t *rng)
{
    for (int64_t i = 0; i < n; i++)
        p[i] = kit_randf(rng);
}

/* n random values stored as dt (rounded), in a buffer at data. */
static inline void kit_fill_dtype(void *data, anvil_dtype dt, int64_t n, uint64_t *rng)
{
    for (int64_t i = 0; i < n; i++)
        anvil_cpu_store_elem(data, dt, i, kit_randf(rng));
}

static inline const char *kit_dt(anvil_dtype dt) { return anvil_dtype_name(dt); }

/* The code paths this CPU runs, with one backend each at n_threads. */
typedef struct kit_backends {
    int n;
    anvil_cpu_isa isa[ANVIL_CPU_ISA_COUNT];
    anvil_backend *be[ANVIL_CPU_ISA_COUNT];
} kit_backends;

static inline kit_backends kit_backends_new(int n_threads)
{
    kit_backends k = {0};
    for (int i = 0; i < ANVIL_CPU_ISA_COUNT; i++) {
        if (!anvil_cpu_isa_supported((anvil_cpu_isa)i))
            continue;
        k.isa[k.n] = (anvil_cpu_isa)i;
        if (anvil_backend_cpu_create_isa(n_threads, (anvil_cpu_isa)i, &k.be[k.n]) != ANVIL_OK)
            fail_msg("cannot create the %s backend: %s", anvil_cpu_isa_name((anvil_cpu_isa)i), anvil_last_error());
        k.n++;
    }
    return k;
}

static inline void kit_backends_free(kit_backends *k)
{
    for (int i = 0; i < k->n; i++)
        anvil_backend_free(k->be[i]);
    k->n = 0;
}

/* Fails with the case name and the element if |got - want| > atol + rtol * scale[i]
 * (scale NULL: |want|). */
static inline void kit_expect_close(const char *name, const float *got, const float *want, const float *scale,
                                    int64_t n, float atol, float rtol)
{
    for (int64_t i = 0; i < n; i++) {
        float s = scale != NULL ? scale[i] : fabsf(want[i]);
        float tol = atol + rtol * s;
        if (!(fabsf(got[i] - want[i]) <= tol))
            fail_msg("%s: element %lld: got %.9g, want %.9g (|diff| %.3g > tol %.3g)", name, (long long)i, got[i],
                     want[i], fabsf(got[i] - want[i]), tol);
    }
}

static inline void kit_expect_bitwise(const char *name, const void *got, const void *want, size_t bytes)
{
    if (memcmp(got, want, bytes) != 0) {
        const unsigned char *a = got, *b = want;
        size_t i = 0;
        while (a[i] == b[i])
            i++;
        fail_msg("%s: differs at byte %zu of %zu", name, i, bytes);
    }
}

#define KIT_OK(expr)                                                                                   \
    do {                                                                                               \
        anvil_status kit_st_ = (expr);                                                                 \
        if (kit_st_ != ANVIL_OK)                                                                       \
            fail_msg("%s failed: %s (%s)", #expr, anvil_status_name(kit_st_), anvil_last_error()); \
    } while (0)

#endif
