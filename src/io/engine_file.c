/*
 * What the engine file's reader and writer share: the storage kinds, the
 * header's encoding, the checksum (docs/engine-format.md).
 */
#include "io/engine_file.h"

#include <string.h>

#include <xxhash.h>

/* ------------------------------------------------------------------ kinds */

static const struct {
    const char *name;
    int dtype; /* anvil_dtype, or -1 */
    unsigned bits;
} kinds[ANVIL_ENGINE_KIND_COUNT] = {
    [ANVIL_ENGINE_KIND_F32] = {"f32", ANVIL_DTYPE_F32, 32},
    [ANVIL_ENGINE_KIND_BF16] = {"bf16", ANVIL_DTYPE_BF16, 16},
    [ANVIL_ENGINE_KIND_F16] = {"f16", ANVIL_DTYPE_F16, 16},
    [ANVIL_ENGINE_KIND_FP8_E4M3] = {"fp8_e4m3", ANVIL_DTYPE_F8_E4M3, 8},
    [ANVIL_ENGINE_KIND_INT8] = {"int8", ANVIL_DTYPE_I8, 8},
    [ANVIL_ENGINE_KIND_INT4] = {"int4", ANVIL_DTYPE_U4, 4},
    [ANVIL_ENGINE_KIND_U8] = {"u8", ANVIL_DTYPE_U8, 8},
    [ANVIL_ENGINE_KIND_I32] = {"i32", ANVIL_DTYPE_I32, 32},
};

static int kind_valid(anvil_engine_kind k)
{
    return (int)k >= 0 && k < ANVIL_ENGINE_KIND_COUNT;
}

const char *anvil_engine_kind_name(anvil_engine_kind k)
{
    return kind_valid(k) ? kinds[k].name : "?";
}

int anvil_engine_kind_parse(const char *name, anvil_engine_kind *out)
{
    for (int k = 0; k < ANVIL_ENGINE_KIND_COUNT; k++) {
        if (name != NULL && strcmp(kinds[k].name, name) == 0) {
            *out = (anvil_engine_kind)k;
            return 0;
        }
    }
    return -1;
}

uint64_t anvil_engine_kind_bytes(anvil_engine_kind k, uint64_t numel)
{
    if (!kind_valid(k))
        return 0;
    if (kinds[k].bits == 4)
        return numel / 2 + numel % 2;
    uint64_t bytes;
    if (__builtin_mul_overflow(numel, (uint64_t)(kinds[k].bits / 8), &bytes))
        return 0;
    return bytes;
}

int anvil_engine_kind_from_dtype(anvil_dtype dt, anvil_engine_kind *out)
{
    for (int k = 0; k < ANVIL_ENGINE_KIND_COUNT; k++) {
        if (kinds[k].dtype >= 0 && kinds[k].dtype == (int)dt) {
            *out = (anvil_engine_kind)k;
            return 0;
        }
    }
    return -1;
}

int anvil_engine_kind_to_dtype(anvil_engine_kind k, anvil_dtype *out)
{
    if (!kind_valid(k) || kinds[k].dtype < 0)
        return -1;
    *out = (anvil_dtype)kinds[k].dtype;
    return 0;
}

/* ----------------------------------------------------------------- header */

/* Field offsets in the header (docs/engine-format.md, "The header"). */
enum {
    H_MAGIC = 0,
    H_MAJOR = 8,
    H_MINOR = 12,
    H_HEADER_SIZE = 16,
    H_MANIFEST_OFFSET = 24,
    H_MANIFEST_LENGTH = 32,
    H_DATA_OFFSET = 40,
    H_DATA_LENGTH = 48,
    H_FILE_SIZE = 56,
    H_MANIFEST_XXH64 = 64,
    H_FLAGS = 72,
    H_HEADER_XXH64 = 80, /* of bytes [0, 80) */
};

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const uint8_t *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

uint64_t anvil_engine_xxh64(const void *data, size_t len)
{
    return XXH64(data, len, 0);
}

uint64_t anvil_engine_header_xxh64(const uint8_t in[ANVIL_ENGINE_HEADER_FIELDS])
{
    return anvil_engine_xxh64(in, H_HEADER_XXH64);
}

void anvil_engine_header_encode(const anvil_engine_header *h, uint8_t out[ANVIL_ENGINE_HEADER_SIZE])
{
    memset(out, 0, ANVIL_ENGINE_HEADER_SIZE);
    memcpy(out + H_MAGIC, ANVIL_ENGINE_MAGIC, 8);
    put_u32(out + H_MAJOR, h->version_major);
    put_u32(out + H_MINOR, h->version_minor);
    put_u32(out + H_HEADER_SIZE, h->header_size);
    put_u64(out + H_MANIFEST_OFFSET, h->manifest_offset);
    put_u64(out + H_MANIFEST_LENGTH, h->manifest_length);
    put_u64(out + H_DATA_OFFSET, h->data_offset);
    put_u64(out + H_DATA_LENGTH, h->data_length);
    put_u64(out + H_FILE_SIZE, h->file_size);
    put_u64(out + H_MANIFEST_XXH64, h->manifest_xxh64);
    put_u32(out + H_FLAGS, h->flags);
    put_u64(out + H_HEADER_XXH64, anvil_engine_header_xxh64(out));
}

void anvil_engine_header_decode(const uint8_t in[ANVIL_ENGINE_HEADER_FIELDS], anvil_engine_header *h,
                                uint64_t *header_xxh64)
{
    h->version_major = get_u32(in + H_MAJOR);
    h->version_minor = get_u32(in + H_MINOR);
    h->header_size = get_u32(in + H_HEADER_SIZE);
    h->manifest_offset = get_u64(in + H_MANIFEST_OFFSET);
    h->manifest_length = get_u64(in + H_MANIFEST_LENGTH);
    h->data_offset = get_u64(in + H_DATA_OFFSET);
    h->data_length = get_u64(in + H_DATA_LENGTH);
    h->file_size = get_u64(in + H_FILE_SIZE);
    h->manifest_xxh64 = get_u64(in + H_MANIFEST_XXH64);
    h->flags = get_u32(in + H_FLAGS);
    *header_xxh64 = get_u64(in + H_HEADER_XXH64);
}
