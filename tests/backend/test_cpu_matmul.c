/*
 * CPU matmul: every code path (scalar, AVX2, AVX-512, whichever this CPU
 * runs) against the scalar reference on table-driven shapes, weight dtypes
 * and bias kinds, with weights 2-byte aligned as in an mmap'd safetensors
 * file and guard bytes after every output; and the code paths bitwise
 * equal to each other (they share one arithmetic, see cpu_vec_scalar.h).
 */
#include "cpu_testkit.h"

/* Tolerance: |got - want| <= ATOL + RTOL * sum_k |x_k w_k| (+ |bias|).
 * The reference sums in double; the kernels sum in fp32 over 16 lanes, so
 * the error is fp32 rounding of the accumulation, whatever the weight
 * dtype (bf16/f16 weights convert to f32 exactly on both sides). */
static const struct {
    anvil_dtype dt;
    float atol, rtol;
} tolerances[] = {
    {ANVIL_DTYPE_F32, 1e-6f, 2e-6f},
    {ANVIL_DTYPE_BF16, 1e-6f, 2e-6f},
    {ANVIL_DTYPE_F16, 1e-6f, 2e-6f},
};

/* T, K, N: odd sizes, K off every multiple of 8/16/32, T across the GEMV
 * (<= 8) and GEMM paths and off the tile sizes, N below one panel per thread. */
static const struct {
    int64_t T, K, N;
} shapes[] = {
    {1, 1, 1},     {1, 7, 5},     {1, 16, 16},   {1, 17, 33},   {2, 31, 9},    {3, 100, 37},  {4, 64, 64},
    {5, 129, 70},  {6, 8, 11},    {7, 255, 13},  {8, 33, 100},  {9, 48, 31},   {10, 15, 7},   {13, 200, 50},
    {16, 513, 23}, {17, 32, 2},   {33, 77, 65},  {64, 300, 130}, {70, 1000, 45}, {1, 2048, 300}, {37, 40, 7},
    {12, 1, 40},   {69, 96, 97},
    {40, 1029, 14}, {12, 1024, 9}, /* k blocks (AVX2's of 256): a tail after them, and none */
    {133, 776, 25}, {130, 256, 12}, /* AVX2's token blocks of 128 and weight-row blocks of 12: remainders, and none */
};

typedef enum bias_kind { BIAS_NONE, BIAS_SAME, BIAS_F32 } bias_kind;

typedef struct mm_case {
    int64_t T, K, N;
    anvil_dtype wdt;
    bias_kind bias;
    size_t w_offset;
} mm_case;

/* Runs one case on every code path; checks against the reference, the
 * guard bytes, and that all paths agree bit for bit. */
static void run_case(const mm_case *c, kit_backends *kb, uint64_t *rng)
{
    char name[160];
    snprintf(name, sizeof name, "matmul T=%lld K=%lld N=%lld w=%s bias=%d off=%zu", (long long)c->T,
             (long long)c->K, (long long)c->N, kit_dt(c->wdt), (int)c->bias, c->w_offset);
    size_t wsz = anvil_dtype_size(c->wdt);
    gbuf x = gbuf_new((size_t)(c->T * c->K) * 4, 0);
    gbuf w = gbuf_new((size_t)(c->N * c->K) * wsz, c->w_offset);
    anvil_dtype bdt = c->bias == BIAS_F32 ? ANVIL_DTYPE_F32 : c->wdt;
    gbuf b = gbuf_new((size_t)c->N * anvil_dtype_size(bdt), c->w_offset);
    kit_fill_f32(x.data, c->T * c->K, rng);
    kit_fill_dtype(w.data, c->wdt, c->N * c->K, rng);
    kit_fill_dtype(b.data, bdt, c->N, rng);
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, c->T, c->K, x.data);
    anvil_tensor tw = anvil_tensor_2d(c->wdt, c->N, c->K, w.data);
    anvil_tensor tb = anvil_tensor_1d(bdt, c->N, b.data);
    const anvil_tensor *pb = c->bias == BIAS_NONE ? NULL : &tb;

    gbuf want = gbuf_new((size_t)(c->T * c->N) * 4, 0);
    anvil_tensor twant = anvil_tensor_2d(ANVIL_DTYPE_F32, c->T, c->N, want.data);
    KIT_OK(anvil_cpu_ref_matmul(&tx, &tw, pb, &twant));
    gbuf_check(&want, name);

    /* scale[t, n] = sum_k |x w| + |b| */
    float *scale = malloc((size_t)(c->T * c->N) * 4 + 4);
    for (int64_t t = 0; t < c->T; t++)
        for (int64_t n = 0; n < c->N; n++) {
            double s = pb ? fabs(anvil_cpu_load_elem(b.data, bdt, n)) : 0.0;
            for (int64_t k = 0; k < c->K; k++)
                s += fabs((double)((float *)x.data)[t * c->K + k] * anvil_cpu_load_elem(w.data, c->wdt, n * c->K + k));
            scale[t * c->N + n] = (float)s;
        }
    float atol = 0, rtol = 0;
    for (size_t i = 0; i < sizeof tolerances / sizeof tolerances[0]; i++)
        if (tolerances[i].dt == c->wdt) {
            atol = tolerances[i].atol;
            rtol = tolerances[i].rtol;
        }

    gbuf first = {0};
    for (int i = 0; i < kb->n; i++) {
        char pname[200];
        snprintf(pname, sizeof pname, "%s [%s]", name, anvil_cpu_isa_name(kb->isa[i]));
        gbuf got = gbuf_new((size_t)(c->T * c->N) * 4, 0);
        anvil_tensor tgot = anvil_tensor_2d(ANVIL_DTYPE_F32, c->T, c->N, got.data);
        KIT_OK(kb->be[i]->ops->matmul(kb->be[i], &tx, &tw, pb, &tgot));
        gbuf_check(&got, pname);
        kit_expect_close(pname, got.data, want.data, scale, c->T * c->N, atol, rtol);
        if (i == 0)
            first = got;
        else {
            kit_expect_bitwise(pname, got.data, first.data, got.bytes);
            gbuf_free(&got);
        }
    }
    gbuf_free(&first);
    free(scale);
    gbuf_free(&want);
    gbuf_free(&x);
    gbuf_free(&w);
    gbuf_free(&b);
}

static void test_matmul_vs_reference(void **state)
{
    (void)state;
    uint64_t rng = 42;
    kit_backends kb = kit_backends_new(2);
    static const anvil_dtype dts[] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int d = 0; d < 3; d++) {
            mm_case c = {shapes[s].T, shapes[s].K, shapes[s].N, dts[d], (bias_kind)((s + (size_t)d) % 3),
                         (s % 2) ? 2 : 0};
            run_case(&c, &kb, &rng);
        }
    kit_backends_free(&kb);
}

/* Every bias kind with every weight dtype, on a GEMV and a GEMM shape. */
static void test_matmul_bias_kinds(void **state)
{
    (void)state;
    uint64_t rng = 7;
    kit_backends kb = kit_backends_new(3);
    static const anvil_dtype dts[] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};
    for (int d = 0; d < 3; d++)
        for (int bk = 0; bk < 3; bk++) {
            mm_case a = {3, 45, 29, dts[d], (bias_kind)bk, 2};
            mm_case g = {21, 45, 29, dts[d], (bias_kind)bk, 2};
            run_case(&a, &kb, &rng);
            run_case(&g, &kb, &rng);
        }
    kit_backends_free(&kb);
}

/* The same matmul on 1, 2 and 5 threads is bitwise the same. */
static void test_matmul_thread_counts(void **state)
{
    (void)state;
    uint64_t rng = 9;
    const int64_t T = 19, K = 301, N = 203;
    float *x = malloc(T * K * 4), *o1 = malloc(T * N * 4), *o2 = malloc(T * N * 4);
    uint16_t *w = malloc(N * K * 2);
    kit_fill_f32(x, T * K, &rng);
    kit_fill_dtype(w, ANVIL_DTYPE_BF16, N * K, &rng);
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, T, K, x);
    anvil_tensor tw = anvil_tensor_2d(ANVIL_DTYPE_BF16, N, K, w);
    anvil_backend *be1 = NULL;
    KIT_OK(anvil_backend_cpu_create(1, &be1));
    anvil_tensor t1 = anvil_tensor_2d(ANVIL_DTYPE_F32, T, N, o1);
    KIT_OK(be1->ops->matmul(be1, &tx, &tw, NULL, &t1));
    static const int threads[] = {2, 5};
    for (int i = 0; i < 2; i++) {
        anvil_backend *be = NULL;
        KIT_OK(anvil_backend_cpu_create(threads[i], &be));
        for (int64_t rows = 1; rows <= T; rows += 6) { /* GEMV and GEMM splits */
            anvil_tensor xr = anvil_tensor_2d(ANVIL_DTYPE_F32, rows, K, x);
            anvil_tensor o = anvil_tensor_2d(ANVIL_DTYPE_F32, rows, N, o2);
            KIT_OK(be->ops->matmul(be, &xr, &tw, NULL, &o));
            kit_expect_bitwise("matmul threads", o2, o1, (size_t)(rows * N) * 4);
        }
        anvil_backend_free(be);
    }
    anvil_backend_free(be1);
    free(x);
    free(w);
    free(o1);
    free(o2);
}

static void test_matmul_errors(void **state)
{
    (void)state;
    anvil_backend *be = NULL;
    KIT_OK(anvil_backend_cpu_create(2, &be));
    float x[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, w[12] = {0}, out[16], b[4] = {0};
    int32_t wi[12] = {0};
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, 3, 4, x);
    anvil_tensor tw = anvil_tensor_2d(ANVIL_DTYPE_F32, 3, 4, w);
    anvil_tensor to = anvil_tensor_2d(ANVIL_DTYPE_F32, 3, 3, out);
    anvil_tensor bad_o = anvil_tensor_2d(ANVIL_DTYPE_F32, 3, 4, out);
    assert_status_msg(be->ops->matmul(be, &tx, &tw, NULL, &bad_o), ANVIL_ERR_INVALID_ARG, "matmul");
    anvil_tensor bad_w = anvil_tensor_2d(ANVIL_DTYPE_F32, 3, 5, w);
    assert_status_msg(be->ops->matmul(be, &tx, &bad_w, NULL, &to), ANVIL_ERR_INVALID_ARG, "matmul");
    anvil_tensor int_w = anvil_tensor_2d(ANVIL_DTYPE_I32, 3, 4, wi);
    assert_status_msg(be->ops->matmul(be, &tx, &int_w, NULL, &to), ANVIL_ERR_UNSUPPORTED, "i32");
    anvil_tensor bad_b = anvil_tensor_1d(ANVIL_DTYPE_F32, 4, b);
    assert_status_msg(be->ops->matmul(be, &tx, &tw, &bad_b, &to), ANVIL_ERR_INVALID_ARG, "bias");
    anvil_tensor f16_b = anvil_tensor_1d(ANVIL_DTYPE_F16, 3, b);
    assert_status_msg(be->ops->matmul(be, &tx, &tw, &f16_b, &to), ANVIL_ERR_UNSUPPORTED, "bias");
    anvil_tensor alias = anvil_tensor_2d(ANVIL_DTYPE_F32, 3, 4, x);
    anvil_tensor sq_w = anvil_tensor_2d(ANVIL_DTYPE_F32, 4, 4, w);
    assert_status_msg(be->ops->matmul(be, &tx, &sq_w, NULL, &alias), ANVIL_ERR_INVALID_ARG, "alias");
    anvil_tensor bf_x = anvil_tensor_2d(ANVIL_DTYPE_BF16, 3, 4, x);
    assert_status_msg(be->ops->matmul(be, &bf_x, &tw, NULL, &to), ANVIL_ERR_UNSUPPORTED, "f32");
    /* T = 0 is a valid no-op */
    anvil_tensor x0 = anvil_tensor_2d(ANVIL_DTYPE_F32, 0, 4, x), o0 = anvil_tensor_2d(ANVIL_DTYPE_F32, 0, 3, out);
    KIT_OK(be->ops->matmul(be, &x0, &tw, NULL, &o0));
    anvil_backend_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_vs_reference),
        cmocka_unit_test(test_matmul_bias_kinds),
        cmocka_unit_test(test_matmul_thread_counts),
        cmocka_unit_test(test_matmul_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
