/*
 * The quantized grouped moe GEMV's addressing (src/backend/cuda/
 * cuda_moe_quant_map.h, which cuda_moe_quant.cu runs), emulated on the CPU
 * (CI, no GPU): stacks quantized by anvil_rtn_row as the build stores them
 * (fp8, int8 per channel; int4 in groups of 8, 16, 32, 128, with zero
 * points), every expert's gate, up and down rows walked as the kernel's
 * 32 lanes walk them (8 codes a lane from column 8 l, then + 256; the
 * words read little-endian from the row's bytes), each value rebuilt as
 * the kernel does (code - z, times the scale at mqm_scale_at) must equal
 * the canonical form's value of that element computed here from the
 * format's definition (docs/quantization.md), and every column of every
 * row must be read exactly once.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/dtype.h"
#include "backend/cuda/cuda_moe_quant_map.h"
#include "builder/quantize.h"
#include "testutil.h"

typedef struct mcase {
    int kind; /* MQM_* */
    int32_t group;
    int32_t E;
    int64_t N, K;
    int silu;
} mcase;

static anvil_dtype dtype_of(int kind)
{
    return kind == MQM_U4 ? ANVIL_DTYPE_U4 : kind == MQM_I8 ? ANVIL_DTYPE_I8 : ANVIL_DTYPE_F8_E4M3;
}

/* The canonical value of element (r, c) of a stack: the format's definition. */
static float canonical(int kind, const uint8_t *w, const float *s, const uint8_t *z, int64_t r, int64_t c, int64_t K,
                       int32_t group)
{
    const int64_t g = kind == MQM_U4 ? r * (K / group) + c / group : r;
    if (kind == MQM_U4) {
        const int64_t at = r * K + c; /* two a byte along K, low nibble first */
        const int v = (w[at / 2] >> (at % 2 ? 4 : 0)) & 15;
        return (float)(v - z[g]) * s[g];
    }
    const uint8_t b = w[r * K + c];
    return kind == MQM_I8 ? (float)(int8_t)b * s[g] : anvil_fp8_e4m3_to_f32(b) * s[g];
}

static uint32_t word_at(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4); /* little-endian, as the GPU reads it */
    return v;
}

static void run_case(const mcase *m, uint64_t *rng)
{
    const anvil_dtype dt = dtype_of(m->kind);
    const int64_t rows = (int64_t)m->E * (m->silu ? 2 : 1) * m->N, K = m->K;
    const int32_t group = m->kind == MQM_U4 ? m->group : 0;
    const int64_t G = group > 0 ? K / group : 1;
    const int64_t rb = m->kind == MQM_U4 ? K / 2 : K;
    uint8_t *w = malloc((size_t)(rows * rb)), *z = malloc((size_t)(rows * G)), *seen = calloc((size_t)(rows * K), 1);
    float *s = malloc((size_t)(rows * G) * sizeof *s), *x = malloc((size_t)K * sizeof *x);
    assert_true(w && z && s && x && seen);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < K; c++)
            x[c] = anvil_test_randf(rng) * (float)(1 + r % 5);
        anvil_rtn_row(dt, group, x, K, w + r * rb, s + r * G, m->kind == MQM_U4 ? z + r * G : NULL);
    }
    for (int32_t e = 0; e < m->E; e++)
        for (int64_t n = 0; n < m->N; n++)
            for (int half = 0; half < (m->silu ? 2 : 1); half++) {
                const int64_t r = mqm_row(m->silu, e, m->N, n) + (half ? m->N : 0);
                /* the row the kernel reads is expert e's: gate e 2N + n, up + N, down e N + n */
                const int64_t want_r = m->silu ? (int64_t)e * 2 * m->N + (half ? m->N : 0) + n : (int64_t)e * m->N + n;
                assert_int_equal(r, want_r);
                const uint8_t *wrow = w + r * rb;
                for (int lane = 0; lane < 32; lane++)
                    for (int64_t c = (int64_t)lane * MQM_CODES; c < K; c += MQM_STEP) {
                        const int64_t b = mqm_byte(m->kind, c);
                        const uint32_t lo = word_at(wrow + b), hi = m->kind == MQM_U4 ? 0u : word_at(wrow + b + 4);
                        /* the 8 codes share one scale (groups are multiples of 8) */
                        const int64_t si = mqm_scale_at(r, c, K, group);
                        assert_int_equal(si, mqm_scale_at(r, c + MQM_CODES - 1, K, group));
                        for (int i = 0; i < MQM_CODES; i++) {
                            const uint32_t code = mqm_code(m->kind, lo, hi, i);
                            float v;
                            if (m->kind == MQM_U4)
                                v = ((float)code - (float)z[si]) * s[si];
                            else if (m->kind == MQM_I8)
                                v = (float)(int8_t)(uint8_t)code * s[si];
                            else
                                v = anvil_fp8_e4m3_to_f32((uint8_t)code) * s[si];
                            const float want = canonical(m->kind, w, s, z, r, c + i, K, group);
                            if (memcmp(&v, &want, sizeof v) != 0)
                                fail_msg("kind %d group %d K %lld: row %lld column %lld: %g, the canonical form %g",
                                         m->kind, group, (long long)K, (long long)r, (long long)(c + i), (double)v,
                                         (double)want);
                            seen[r * K + c + i]++;
                        }
                    }
            }
    for (int64_t i = 0; i < rows * K; i++)
        if (seen[i] != 1)
            fail_msg("kind %d K %lld: element %lld read %d times", m->kind, (long long)K, (long long)i, seen[i]);
    free(w);
    free(z);
    free(s);
    free(x);
    free(seen);
}

static void test_map(void **state)
{
    (void)state;
    static const mcase cases[] = {
        {MQM_FP8, 0, 3, 5, 256, 1},  {MQM_FP8, 0, 4, 7, 40, 0},   {MQM_I8, 0, 3, 6, 96, 1},
        {MQM_I8, 0, 2, 9, 520, 0},   {MQM_U4, 128, 3, 4, 256, 1}, {MQM_U4, 32, 4, 5, 160, 0},
        {MQM_U4, 16, 2, 3, 48, 1},   {MQM_U4, 8, 3, 2, 24, 0},    {MQM_U4, 128, 2, 3, 640, 0},
    };
    uint64_t rng = 0x6d71;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_case(&cases[i], &rng);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
