/*
 * libFuzzer target for the engine file reader: any byte string must either
 * be refused with a status and a message (and *out == NULL), or give a
 * table whose tensors all lie inside the input, are found by name, agree
 * with their kind and shape, and can be read and verified. ASan catches any
 * read outside the input (the bytes are always in a buffer of exactly the
 * input's size); UBSan any overflow.
 *
 * Each input is tried twice: as it is, and "repaired": its file size,
 * manifest checksum and header checksum set to match its bytes. Random
 * mutations almost never keep three checksums right, so without the repair
 * the fuzzer would spend its time on the header and never reach the
 * manifest and the weight table behind it.
 *
 * A file the container accepts then goes through the builder's half of an
 * engine load: its config.json (from the manifest's files) parsed, the
 * network built, and the manifest's network and plan checked against it
 * (anvil_manifest_read_plan): either refused with a message, or a plan
 * whose every weight sits inside its stored tensor.
 *
 * Seeds: tests/fuzz/corpus/engine_file/, written by test_engine_file
 * (ANVIL_UPDATE_SEEDS=1 build/tests/test_engine_file, from the source root),
 * and tiny_llama.engine (anvil build --config tests/fuzz/tiny_llama_config.json
 * --random-weights --output ...: a real engine of a 1-layer model).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/model_config.h"
#include "anvil/network.h"
#include "builder/manifest.h"
#include "io/engine_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* The repair (offsets as in docs/engine-format.md). */
static void repair(uint8_t *b, size_t size)
{
    put_u64(b + 56, size);
    uint64_t moff = get_u64(b + 24), mlen = get_u64(b + 32);
    if (moff <= size && mlen <= size - moff)
        put_u64(b + 64, anvil_engine_xxh64(b + moff, (size_t)mlen));
    put_u64(b + 80, anvil_engine_xxh64(b, 80));
}

/* The builder's half of a load, for a file the container accepted. */
static void check_plan(const anvil_engine_file *f)
{
    const json_t *files = json_object_get(anvil_engine_file_manifest(f), "files");
    const char *cfg_text = json_string_value(json_object_get(files, "config.json"));
    anvil_model_config cfg;
    if (cfg_text == NULL || anvil_model_config_parse(cfg_text, &cfg) != ANVIL_OK)
        return;
    if (cfg.n_layers * cfg.hidden_size > (1 << 16) || cfg.vocab_size * cfg.hidden_size > (1 << 22))
        return; /* within anvil's bounds, but slow to build for a fuzzer */
    anvil_network *net = NULL;
    if (anvil_model_build_network(&cfg, &net) != ANVIL_OK)
        return;
    anvil_build_plan *p = (anvil_build_plan *)&p; /* must be reset to NULL on failure */
    if (anvil_manifest_read_plan(f, net, &p) != ANVIL_OK) {
        if (p != NULL || anvil_last_error()[0] == '\0')
            __builtin_trap();
    } else {
        for (int32_t w = 0; w < p->n_weights; w++) {
            const int32_t s = p->weight_stored[w];
            const anvil_net_weight *nw = anvil_network_weight(net, w);
            const int64_t numel = nw->shape[0] * (nw->n_dims > 1 ? nw->shape[1] : 1);
            if (s < 0 || s >= p->n_stored || p->weight_offset[w] < 0 ||
                (uint64_t)(p->weight_offset[w] + numel) * anvil_dtype_size(p->stored[s].kind) > p->stored[s].bytes)
                __builtin_trap();
        }
        anvil_build_plan_free(p);
    }
    anvil_network_free(net);
}

static void check(const uint8_t *data, size_t size)
{
    anvil_engine_file *f = (anvil_engine_file *)&f; /* must be reset to NULL on failure */
    if (anvil_engine_file_open_memory(data, size, &f) != ANVIL_OK) {
        if (f != NULL || anvil_last_error()[0] == '\0')
            __builtin_trap();
        return;
    }
    const anvil_engine_header *h = anvil_engine_file_header(f);
    if (h->file_size != size || h->data_offset % 4096 != 0)
        __builtin_trap();
    int64_t n = anvil_engine_file_count(f);
    for (int64_t i = 0; i < n; i++) {
        const anvil_engine_tensor *t = anvil_engine_file_tensor(f, i);
        if (t == NULL || t->index != i || anvil_engine_file_find(f, t->name) != t)
            __builtin_trap();
        const uint8_t *p = t->data;
        if (p < data || t->bytes == 0 || t->bytes > size || p > data + size - t->bytes ||
            t->offset != (uint64_t)(p - data) || (t->offset - h->data_offset) % 256 != 0)
            __builtin_trap();
        uint64_t numel = 1;
        for (int d = 0; d < t->n_dims; d++)
            numel *= (uint64_t)t->shape[d];
        if (anvil_engine_kind_bytes(t->kind, numel) != t->bytes)
            __builtin_trap();
        if (t->scales >= n || t->scales == i || t->scales < -1)
            __builtin_trap();
        uint8_t *buf = malloc(t->bytes);
        if (buf == NULL)
            continue;
        if (anvil_engine_file_read(f, i, 0, buf, t->bytes) != ANVIL_OK || memcmp(buf, p, t->bytes) != 0)
            __builtin_trap();
        free(buf);
    }
    if (anvil_engine_file_tensor(f, n) != NULL)
        __builtin_trap();
    anvil_status st = anvil_engine_file_verify(f, NULL, NULL);
    if (st != ANVIL_OK && st != ANVIL_ERR_FORMAT)
        __builtin_trap();
    check_plan(f);
    anvil_engine_file_close(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a copy of exactly size bytes: ASan guards both ends */
    uint8_t *b = malloc(size ? size : 1);
    if (b == NULL)
        return 0;
    memcpy(b, data, size);
    check(b, size);
    if (size >= ANVIL_ENGINE_HEADER_FIELDS && memcmp(b, ANVIL_ENGINE_MAGIC, 8) == 0) {
        repair(b, size);
        check(b, size);
    }
    free(b);
    return 0;
}
