/*
 * Batch invariance of the CPU backend (the executor's tests rely on it):
 * a row's result is bitwise the same computed alone or inside batches of
 * any size, at any place in the batch, next to any other rows, on any
 * number of threads. Checked for matmul (GEMV and GEMM paths, every
 * weight dtype, with bias), rmsnorm, and attention (every token of a mixed
 * prefill/decode step recomputed alone as a one-token step).
 */
#include "cpu_attn_fixture.h"

static const int thread_counts[] = {1, 2, 3};
#define N_THREAD_COUNTS 3

static void test_matmul_batch_invariance(void **state)
{
    (void)state;
    uint64_t rng = 21;
    static const int64_t batch_sizes[] = {1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 33, 64, 70};
    static const anvil_dtype dts[] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};
    static const int64_t shapes[][2] = {{333, 77}, {64, 131}, {1000, 13}};
    anvil_backend *be[N_THREAD_COUNTS];
    for (int i = 0; i < N_THREAD_COUNTS; i++)
        KIT_OK(anvil_backend_cpu_create(thread_counts[i], &be[i]));
    for (int d = 0; d < 3; d++)
        for (int s = 0; s < 3; s++) {
            int64_t K = shapes[s][0], N = shapes[s][1], Tmax = 70;
            anvil_dtype dt = dts[d];
            void *w = malloc((size_t)(N * K) * anvil_dtype_size(dt) + 2);
            void *wd = (char *)w + 2; /* 2-byte aligned, as in a safetensors mmap */
            float *bias = malloc((size_t)N * 4), *row = malloc((size_t)K * 4);
            float *x = malloc((size_t)(Tmax * K) * 4), *alone = malloc((size_t)N * 4);
            float *out = malloc((size_t)(Tmax * N) * 4);
            kit_fill_dtype(wd, dt, N * K, &rng);
            kit_fill_f32(bias, N, &rng);
            kit_fill_f32(row, K, &rng);
            anvil_tensor tw = anvil_tensor_2d(dt, N, K, wd), tb = anvil_tensor_1d(ANVIL_DTYPE_F32, N, bias);
            anvil_tensor tr = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, K, row), ta = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, N, alone);
            KIT_OK(be[0]->ops->matmul(be[0], &tr, &tw, &tb, &ta));
            for (size_t bi = 0; bi < sizeof batch_sizes / sizeof batch_sizes[0]; bi++) {
                int64_t T = batch_sizes[bi];
                int64_t places[3] = {0, T / 2, T - 1};
                for (int pi = 0; pi < 3; pi++) {
                    kit_fill_f32(x, T * K, &rng); /* different neighbours every time */
                    memcpy(x + places[pi] * K, row, (size_t)K * 4);
                    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, T, K, x);
                    anvil_tensor to = anvil_tensor_2d(ANVIL_DTYPE_F32, T, N, out);
                    for (int th = 0; th < N_THREAD_COUNTS; th++) {
                        KIT_OK(be[th]->ops->matmul(be[th], &tx, &tw, &tb, &to));
                        char name[160];
                        snprintf(name, sizeof name, "matmul %s K=%lld N=%lld: row %lld of %lld, %d threads",
                                 kit_dt(dt), (long long)K, (long long)N, (long long)places[pi], (long long)T,
                                 thread_counts[th]);
                        kit_expect_bitwise(name, out + places[pi] * N, alone, (size_t)N * 4);
                    }
                }
            }
            free(w);
            free(bias);
            free(row);
            free(x);
            free(alone);
            free(out);
        }
    for (int i = 0; i < N_THREAD_COUNTS; i++)
        anvil_backend_free(be[i]);
}

static void test_rmsnorm_batch_invariance(void **state)
{
    (void)state;
    uint64_t rng = 22;
    const int64_t D = 2048, Tmax = 70;
    anvil_backend *be[N_THREAD_COUNTS];
    for (int i = 0; i < N_THREAD_COUNTS; i++)
        KIT_OK(anvil_backend_cpu_create(thread_counts[i], &be[i]));
    float *x = malloc((size_t)(Tmax * D) * 4), *out = malloc((size_t)(Tmax * D) * 4);
    float *row = malloc((size_t)D * 4), *alone = malloc((size_t)D * 4);
    uint16_t *w = malloc((size_t)D * 2);
    kit_fill_f32(row, D, &rng);
    kit_fill_dtype(w, ANVIL_DTYPE_BF16, D, &rng);
    anvil_tensor tw = anvil_tensor_1d(ANVIL_DTYPE_BF16, D, w);
    anvil_tensor tr = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, D, row), ta = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, D, alone);
    KIT_OK(be[0]->ops->rmsnorm(be[0], &tr, &tw, 1e-5f, 0.0f, &ta));
    for (int64_t T = 2; T <= Tmax; T += 17) {
        kit_fill_f32(x, T * D, &rng);
        memcpy(x + (T - 1) * D, row, (size_t)D * 4);
        anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, x), to = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, out);
        for (int th = 0; th < N_THREAD_COUNTS; th++) {
            KIT_OK(be[th]->ops->rmsnorm(be[th], &tx, &tw, 1e-5f, 0.0f, &to));
            kit_expect_bitwise("rmsnorm row in batch", out + (T - 1) * D, alone, (size_t)D * 4);
        }
    }
    free(x);
    free(out);
    free(row);
    free(alone);
    free(w);
    for (int i = 0; i < N_THREAD_COUNTS; i++)
        anvil_backend_free(be[i]);
}

/* Every token of a mixed step (prefill chunks, decode tokens, several
 * sequences) recomputed alone, as a one-token step over the caches the big
 * step left, on 1 and 3 threads: the same bits. This also covers "a token
 * computed inside its prefill chunk == the same token decoded later". */
static void test_attention_batch_invariance(void **state)
{
    (void)state;
    uint64_t rng = 23;
    static const attn_case cases[] = {
        {64, 8, 2, 16, 0, ANVIL_DTYPE_F32, 0, 4, {{40, 1}, {0, 19}, {17, 5}, {100, 1}}},
        {128, 8, 1, 8, 24, ANVIL_DTYPE_BF16, 0, 3, {{50, 12}, {3, 1}, {30, 1}}},
        {16, 6, 3, 5, 0, ANVIL_DTYPE_F16, 0, 2, {{0, 9}, {11, 1}}},
    };
    anvil_backend *be[N_THREAD_COUNTS];
    for (int i = 0; i < N_THREAD_COUNTS; i++)
        KIT_OK(anvil_backend_cpu_create(thread_counts[i], &be[i]));
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        attn_fixture f;
        attn_fixture_build(&f, &cases[ci], &rng);
        attn_result big = attn_fixture_run(&f, be[1]);
        int64_t qw = (int64_t)f.c.n_heads * f.c.head_dim;
        for (int32_t t = 0; t < f.T; t++) {
            attn_fixture one;
            attn_fixture_single(&f, t, big.kc.data, big.vc.data, &one);
            for (int th = 0; th < N_THREAD_COUNTS; th += 2) {
                attn_result r = attn_fixture_run(&one, be[th]);
                char name[128];
                snprintf(name, sizeof name, "attention case %zu token %d (position %d) alone on %d threads", ci, t,
                         f.positions[t], thread_counts[th]);
                kit_expect_bitwise(name, r.out.data, (float *)big.out.data + t * qw, (size_t)qw * 4);
                /* rewriting the token's own k/v leaves the caches as they were */
                kit_expect_bitwise(name, r.kc.data, big.kc.data, f.cache_bytes);
                attn_result_free(&r);
            }
            attn_fixture_free(&one);
        }
        attn_result_free(&big);
        attn_fixture_free(&f);
    }
    for (int i = 0; i < N_THREAD_COUNTS; i++)
        anvil_backend_free(be[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_batch_invariance),
        cmocka_unit_test(test_rmsnorm_batch_invariance),
        cmocka_unit_test(test_attention_batch_invariance),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
