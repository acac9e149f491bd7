/* dtype conversions: exact round-to-nearest-even against reference cases. */
#include <math.h>
#include <string.h>

#include "anvil/dtype.h"
#include "testutil.h"

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void test_bf16_round_trip_and_ties(void **state)
{
    (void)state;
    /* every bf16 value survives the round trip */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = anvil_bf16_to_f32((uint16_t)h);
        if (isnan(f))
            continue;
        assert_int_equal(anvil_f32_to_bf16(f), h);
    }
    /* ties to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> 1 (even) */
    assert_int_equal(anvil_f32_to_bf16(from_bits(0x3f808000u)), 0x3f80);
    /* 1 + 3*2^-8 is halfway between 1+2^-7 and 1+2^-6 -> rounds up to even 0x3f82 */
    assert_int_equal(anvil_f32_to_bf16(from_bits(0x3f818000u)), 0x3f82);
    /* just above the tie rounds up */
    assert_int_equal(anvil_f32_to_bf16(from_bits(0x3f808001u)), 0x3f81);
    assert_true(isnan(anvil_bf16_to_f32(anvil_f32_to_bf16(NAN))));
}

static void test_f16_round_trip_and_edges(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = anvil_f16_to_f32((uint16_t)h);
        if (isnan(f))
            continue;
        assert_int_equal(anvil_f32_to_f16(f), h);
    }
    assert_int_equal(anvil_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(anvil_f32_to_f16(65519.0f), 0x7bff);   /* below the midpoint */
    assert_int_equal(anvil_f32_to_f16(65520.0f), 0x7c00);   /* tie to even -> inf */
    assert_int_equal(anvil_f32_to_f16(1e-8f), 0x0000);      /* below half the smallest subnormal */
    assert_int_equal(anvil_f32_to_f16(from_bits(0x33000000u)), 0x0000); /* 2^-25: tie to even 0 */
    assert_int_equal(anvil_f32_to_f16(from_bits(0x33800000u)), 0x0001); /* 2^-24 */
    assert_int_equal(anvil_f32_to_f16(from_bits(0x33c00000u)), 0x0002); /* 1.5 * 2^-24 -> 2 (even) */
    assert_int_equal(anvil_f32_to_f16(-2.0f), 0xc000);
    /* 1 + 2^-11 is a tie between 1 and 1 + 2^-10 -> 1 */
    assert_int_equal(anvil_f32_to_f16(from_bits(0x3f801000u)), 0x3c00);
    assert_int_equal(bits(anvil_f16_to_f32(0x8000)), 0x80000000u); /* -0 */
    assert_true(isnan(anvil_f16_to_f32(anvil_f32_to_f16(NAN))));
}

static void test_dtype_names(void **state)
{
    (void)state;
    anvil_dtype dt;
    assert_int_equal(anvil_dtype_parse("BF16", &dt), 0);
    assert_int_equal(dt, ANVIL_DTYPE_BF16);
    assert_int_equal(anvil_dtype_parse("bfloat16", &dt), 0);
    assert_int_equal(anvil_dtype_parse("float32", &dt), 0);
    assert_int_equal(dt, ANVIL_DTYPE_F32);
    assert_int_equal(anvil_dtype_parse("F64x", &dt), -1);
    assert_int_equal(anvil_dtype_size(ANVIL_DTYPE_F16), 2);
    assert_string_equal(anvil_dtype_name(ANVIL_DTYPE_BF16), "bf16");
}

/* Every fp8 e4m3 code round-trips; the midpoint of two neighbours rounds
 * to the one with an even code; out of range saturates; NaN stays NaN. */
static void test_fp8_e4m3(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        const float v = anvil_fp8_e4m3_to_f32((uint8_t)c);
        if ((c & 0x7f) == 0x7f) {
            assert_true(isnan(v));
            assert_int_equal(anvil_f32_to_fp8_e4m3(v) & 0x7f, 0x7f);
            continue;
        }
        assert_int_equal(anvil_f32_to_fp8_e4m3(v), c);
        if ((c & 0x7f) < 0x7e) {
            const float next = anvil_fp8_e4m3_to_f32((uint8_t)(c + 1));
            const float mid = (v + next) / 2; /* exact in f32 */
            const int even = (c & 1) == 0 ? c : c + 1;
            assert_int_equal(anvil_f32_to_fp8_e4m3(mid), even);
            assert_int_equal(anvil_f32_to_fp8_e4m3(nextafterf(mid, 0.0f)), c);
        }
    }
    assert_float_equal(anvil_fp8_e4m3_to_f32(0x7e), 448.0f, 0.0f);
    assert_float_equal(anvil_fp8_e4m3_to_f32(0x01), 1.0f / 512.0f, 0.0f);
    assert_float_equal(anvil_fp8_e4m3_to_f32(0x08), 1.0f / 64.0f, 0.0f);
    assert_int_equal(anvil_f32_to_fp8_e4m3(1000.0f), 0x7e);
    assert_int_equal(anvil_f32_to_fp8_e4m3(-INFINITY), 0xfe);
    assert_int_equal(anvil_f32_to_fp8_e4m3(1e-9f), 0x00);
    assert_int_equal(anvil_f32_to_fp8_e4m3(3.0f / 1024.0f), 0x02); /* 1.5 steps: to even */
    assert_string_equal(anvil_dtype_name(ANVIL_DTYPE_U4), "u4");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16_round_trip_and_ties),
        cmocka_unit_test(test_f16_round_trip_and_edges),
        cmocka_unit_test(test_dtype_names),
        cmocka_unit_test(test_fp8_e4m3),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
