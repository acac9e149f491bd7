/*
 * anvil/dtype.h: element types and exact conversions between them.
 *
 * bf16 and fp16 conversions from fp32 round to nearest, ties to even, as
 * PyTorch does; NaN stays NaN, overflow goes to infinity.
 */
#ifndef ANVIL_DTYPE_H
#define ANVIL_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum anvil_dtype {
    ANVIL_DTYPE_F32 = 0,
    ANVIL_DTYPE_F16,
    ANVIL_DTYPE_BF16,
    ANVIL_DTYPE_I32,
    ANVIL_DTYPE_I64,
    ANVIL_DTYPE_I8,
    ANVIL_DTYPE_U8,
    ANVIL_DTYPE_F8_E4M3,
    /* Packed 4-bit: two elements a byte along the flattened row-major
     * order, low nibble first, values 0..15 (a quantized weight's zero
     * point is subtracted: docs/quantization.md). No element has a whole
     * byte: anvil_dtype_size() is 0, anvil_tensor_nbytes() is ceil(n / 2). */
    ANVIL_DTYPE_U4,
    ANVIL_DTYPE_COUNT,
} anvil_dtype;

/* Bytes per element (0 for U4: see there). */
size_t anvil_dtype_size(anvil_dtype dt);

/* Lower-case name ("f32", "bf16", ...); "?" for an invalid value. */
const char *anvil_dtype_name(anvil_dtype dt);

/* Parses a name as anvil_dtype_name() writes it, or the safetensors /
 * PyTorch spellings ("F32", "BF16", "float32", "bfloat16", "float16",
 * "half", "float"). Returns 0 on success, -1 if unknown. */
int anvil_dtype_parse(const char *name, anvil_dtype *out);

float anvil_bf16_to_f32(uint16_t h);
uint16_t anvil_f32_to_bf16(float f);
float anvil_f16_to_f32(uint16_t h);
uint16_t anvil_f32_to_f16(float f);

/* FP8 E4M3 ("fn": no infinities, NaN 0x7f/0xff, largest 448), as
 * PyTorch's float8_e4m3fn. From f32: round to nearest, ties to even;
 * magnitudes of 448 and more (infinity too) saturate to +-448, as the
 * quantizers clamp before they convert; NaN stays NaN. */
float anvil_fp8_e4m3_to_f32(uint8_t q);
uint8_t anvil_f32_to_fp8_e4m3(float f);

/* Converts n elements of src (F32, F16 or BF16) into dst as float. */
void anvil_convert_to_f32(anvil_dtype src_dt, const void *src, float *dst, int64_t n);

/* Converts n floats into dst of dt (F32, F16 or BF16). */
void anvil_convert_from_f32(anvil_dtype dst_dt, const float *src, void *dst, int64_t n);

/* The index of the first NaN or infinity among n elements of data (F32,
 * F16 or BF16), or -1 when all are finite (and for other dtypes). */
int64_t anvil_find_nonfinite(anvil_dtype dt, const void *data, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
