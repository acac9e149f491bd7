/* The CPU backend: memory (plain host memory), the thread pool, the choice
 * of code path, and the op table. The ops themselves live in cpu_*.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/cpu/cpu_internal.h"
#include "core/error.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

/* ---------------------------------------------------------------- ISA */

#if defined(__x86_64__)
/* clang 14's __builtin_cpu_supports does not know "f16c": ask cpuid. */
static int cpu_has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

int anvil_cpu_isa_supported(anvil_cpu_isa isa)
{
    switch (isa) {
    case ANVIL_CPU_ISA_SCALAR: return 1;
#if defined(__x86_64__)
    case ANVIL_CPU_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
    case ANVIL_CPU_ISA_AVX512:
        return anvil_cpu_isa_supported(ANVIL_CPU_ISA_AVX2) && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#endif
    default: return 0;
    }
}

anvil_cpu_isa anvil_cpu_isa_best(void)
{
    for (int i = ANVIL_CPU_ISA_COUNT - 1; i > 0; i--)
        if (anvil_cpu_isa_supported((anvil_cpu_isa)i))
            return (anvil_cpu_isa)i;
    return ANVIL_CPU_ISA_SCALAR;
}

const char *anvil_cpu_isa_name(anvil_cpu_isa isa)
{
    switch (isa) {
    case ANVIL_CPU_ISA_SCALAR: return "scalar";
    case ANVIL_CPU_ISA_AVX2: return "avx2";
    case ANVIL_CPU_ISA_AVX512: return "avx512";
    default: return "?";
    }
}

const anvil_cpu_kernels *anvil_cpu_kernels_for(anvil_cpu_isa isa)
{
#if defined(__x86_64__)
    if (isa == ANVIL_CPU_ISA_AVX512)
        return &anvil_cpu_kernels_avx512;
    if (isa == ANVIL_CPU_ISA_AVX2)
        return &anvil_cpu_kernels_avx2;
#endif
    (void)isa;
    return &anvil_cpu_kernels_scalar;
}

/* ---------------------------------------------------------------- scratch */

anvil_status anvil_cpu_scratch_reserve(anvil_cpu_backend *cb, size_t bytes_per_thread)
{
    size_t stride = (bytes_per_thread + 63) / 64 * 64;
    if (stride <= cb->scratch_stride)
        return ANVIL_OK;
    CHECK(stride <= SIZE_MAX / (size_t)cb->n_threads, ANVIL_ERR_OOM, "cpu scratch: %zu bytes per thread", stride);
    void *p = NULL;
    CHECK(posix_memalign(&p, 64, stride * (size_t)cb->n_threads) == 0, ANVIL_ERR_OOM,
          "cpu scratch: cannot allocate %zu bytes", stride * (size_t)cb->n_threads);
    free(cb->scratch);
    cb->scratch = p;
    cb->scratch_stride = stride;
    cb->scratch_bytes = stride * (size_t)cb->n_threads;
    return ANVIL_OK;
}

/* ---------------------------------------------------------------- memory */

static void cpu_destroy(anvil_backend *be)
{
    anvil_cpu_backend *cb = anvil_cpu_impl(be);
    if (cb != NULL) {
        anvil_threadpool_free(cb->pool);
        free(cb->scratch);
        free(cb);
    }
    free(be);
}

static anvil_status cpu_alloc(anvil_backend *be, size_t bytes, void **out)
{
    (void)be;
    *out = NULL;
    /* Rounded up to whole cache lines so kernels may touch the last line. */
    size_t n = bytes == 0 ? 64 : bytes;
    CHECK(n <= SIZE_MAX - 63, ANVIL_ERR_OOM, "cpu alloc: %zu bytes", bytes);
    n = (n + 63) / 64 * 64;
    void *p = NULL;
    CHECK(posix_memalign(&p, 64, n) == 0, ANVIL_ERR_OOM, "cpu alloc: cannot allocate %zu bytes", bytes);
    *out = p;
    return ANVIL_OK;
}

static void cpu_free(anvil_backend *be, void *ptr)
{
    (void)be;
    free(ptr);
}

static anvil_status cpu_copy(anvil_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    CHECK(bytes == 0 || (dst != NULL && src != NULL), ANVIL_ERR_INVALID_ARG, "cpu copy: NULL pointer");
    if (bytes > 0 && dst != src)
        memmove(dst, src, bytes);
    return ANVIL_OK;
}

static anvil_status cpu_synchronize(anvil_backend *be)
{
    (void)be; /* every op has finished when it returns */
    return ANVIL_OK;
}

static anvil_status cpu_mem_available(anvil_backend *be, size_t *out)
{
    (void)be;
    *out = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f != NULL) {
        char line[256];
        unsigned long long kb = 0;
        int found = 0;
        while (!found && fgets(line, sizeof line, f) != NULL)
            found = sscanf(line, "MemAvailable: %llu kB", &kb) == 1;
        fclose(f);
        if (found) {
            *out = (size_t)kb * 1024;
            return ANVIL_OK;
        }
    }
    /* no /proc (not Linux, or a sandbox): free pages as the OS counts them */
    long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    CHECK(pages > 0 && page > 0, ANVIL_ERR_IO, "cpu mem_available: cannot read /proc/meminfo or sysconf");
    *out = (size_t)pages * (size_t)page;
    return ANVIL_OK;
}

/* ---------------------------------------------------------------- table */

static const anvil_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .synchronize = cpu_synchronize,
    .mem_available = cpu_mem_available,
    .act_dtype = ANVIL_DTYPE_F32,
    .weights_in_host_memory = 1,
    .quantized_weights = 1,
    .embedding = anvil_cpu_op_embedding,
    .rmsnorm = anvil_cpu_op_rmsnorm,
    .head_rmsnorm = anvil_cpu_op_head_rmsnorm,
    .matmul = anvil_cpu_op_matmul,
    .rope = anvil_cpu_op_rope,
    .attention = anvil_cpu_op_attention,
    .silu_mul = anvil_cpu_op_silu_mul,
    .add = anvil_cpu_op_add,
    .gelu_tanh_mul = anvil_cpu_op_gelu_tanh_mul,
    .scale = anvil_cpu_op_scale,
    .softcap = anvil_cpu_op_softcap,
    .gather_rows = anvil_cpu_op_gather_rows,
    .layernorm = anvil_cpu_op_layernorm,
    .gelu_tanh = anvil_cpu_op_gelu_tanh,
    .pos_embedding = anvil_cpu_op_pos_embedding,
    .sample_rows = anvil_cpu_op_sample_rows,
    .resolve_tokens = anvil_cpu_op_resolve_tokens,
    .add_rmsnorm = anvil_cpu_op_add_rmsnorm,
    .matmul_multi = anvil_cpu_op_matmul_multi,
    .matmul_silu_mul = anvil_cpu_op_matmul_silu_mul,
    .add_rmsnorm_matmul_multi = anvil_cpu_op_add_rmsnorm_matmul_multi,
    .add_rmsnorm_matmul_silu_mul = anvil_cpu_op_add_rmsnorm_matmul_silu_mul,
    .attention_rope = 1,
    .moe = anvil_cpu_op_moe,
    .mla = anvil_cpu_op_mla,
    .embedding_part = anvil_cpu_op_embedding_part,
};

anvil_status anvil_backend_cpu_create_isa(int n_threads, anvil_cpu_isa isa, anvil_backend **out)
{
    *out = NULL;
    CHECK((int)isa >= 0 && isa < ANVIL_CPU_ISA_COUNT && anvil_cpu_isa_supported(isa), ANVIL_ERR_UNSUPPORTED,
          "cpu backend: this CPU cannot run the %s code path", anvil_cpu_isa_name(isa));
    anvil_status st = ANVIL_OK;
    anvil_backend *be = calloc(1, sizeof *be);
    anvil_cpu_backend *cb = calloc(1, sizeof *cb);
    CHECK_GOTO(be != NULL && cb != NULL, ANVIL_ERR_OOM, fail, "cpu backend: out of memory");
    be->ops = &cpu_ops;
    be->impl = cb;
    cb->isa = isa;
    TRY_GOTO(anvil_threadpool_create(n_threads, &cb->pool), fail);
    cb->n_threads = anvil_threadpool_size(cb->pool);
    *out = be;
    return ANVIL_OK;
fail:
    if (be != NULL && be->impl != NULL)
        cpu_destroy(be);
    else {
        free(cb);
        free(be);
    }
    return st;
}

/*
 * The CPU backend with the best code path this CPU runs, or the lower one
 * c->cpu_isa names (scalar, avx2, avx512), for comparisons; a path the CPU
 * lacks falls back to the best it has.
 */
anvil_status anvil_backend_cpu_create_config(const anvil_backend_config *c, anvil_backend **out)
{
    anvil_cpu_isa isa = anvil_cpu_isa_best();
    const char *want = c->cpu_isa;
    for (int i = 0; want != NULL && i < ANVIL_CPU_ISA_COUNT; i++)
        if (strcmp(want, anvil_cpu_isa_name((anvil_cpu_isa)i)) == 0 && anvil_cpu_isa_supported((anvil_cpu_isa)i))
            isa = (anvil_cpu_isa)i;
    return anvil_backend_cpu_create_isa(c->n_threads, isa, out);
}

anvil_status anvil_backend_cpu_create(int n_threads, anvil_backend **out)
{
    return anvil_backend_cpu_create_isa(n_threads, anvil_cpu_isa_best(), out);
}
