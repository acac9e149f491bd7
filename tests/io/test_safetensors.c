/* safetensors: the real model files, write/read round trips, sharded
 * checkpoints, and one test per kind of bad file (status + message). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/safetensors.h"
#include "testutil.h"

/* ------------------------------------------------------------- helpers */

/* "8-byte little-endian length + header text + data" into path. The header
 * is padded with spaces to a multiple of 8, as writers do, so that the data
 * section starts aligned. */
static void write_raw(const char *path, const char *header, const void *data, size_t data_len)
{
    size_t text_len = strlen(header);
    size_t hlen = (text_len + 7) / 8 * 8;
    size_t total = 8 + hlen + data_len;
    unsigned char *buf = malloc(total);
    assert_non_null(buf);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    memcpy(buf + 8, header, text_len);
    memset(buf + 8 + text_len, ' ', hlen - text_len);
    if (data_len)
        memcpy(buf + 8 + hlen, data, data_len);
    anvil_test_write_file(path, buf, total);
    free(buf);
}

static const char *tmp_path(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", anvil_test_tmpdir(), name);
    return buf[k];
}

/* Writes header + zeroed data of data_len bytes, opens it, returns status. */
static anvil_status open_raw(const char *name, const char *header, size_t data_len)
{
    void *data = calloc(1, data_len ? data_len : 1);
    const char *path = tmp_path(name);
    write_raw(path, header, data, data_len);
    free(data);
    anvil_safetensors *f = (anvil_safetensors *)0x1;
    anvil_status st = anvil_safetensors_open(path, &f);
    if (st != ANVIL_OK) {
        assert_null(f);
    }
    anvil_safetensors_close(f);
    return st;
}

static void check_tensor(const anvil_st_tensor *t, anvil_dtype dt, int n_dims, int64_t d0, int64_t d1)
{
    assert_non_null(t);
    assert_int_equal(t->dtype, dt);
    assert_int_equal(t->n_dims, n_dims);
    assert_int_equal(t->shape[0], d0);
    if (n_dims > 1)
        assert_int_equal(t->shape[1], d1);
    assert_int_equal(t->nbytes, (size_t)(d0 * (n_dims > 1 ? d1 : 1)) * anvil_dtype_size(dt));
}

/* ------------------------------------------------------- real files */

static void test_real_models(void **state)
{
    (void)state;
    static const char *models[] = {"stories260K", "tiny-llama3",  "tiny-qwen2",  "tiny-mistral", "tiny-qwen3",
                                   "tiny-phi3",   "tiny-mixtral", "tiny-gemma2", "tinycode"};
    for (size_t m = 0; m < sizeof models / sizeof models[0]; m++) {
        char path[1024];
        snprintf(path, sizeof path, "models/%s/model.safetensors", models[m]);
        anvil_safetensors *f = NULL;
        anvil_status st = anvil_safetensors_open(anvil_test_shared_path(path), &f);
        if (st != ANVIL_OK)
            fail_msg("%s: %s", models[m], anvil_last_error());
        assert_true(anvil_safetensors_count(f) > 10);
        assert_string_equal(anvil_safetensors_metadata(f, "format"), "pt");
        assert_null(anvil_safetensors_metadata(f, "nope"));
        /* every tensor is found by its name, aligned, and inside the file */
        for (int64_t i = 0; i < anvil_safetensors_count(f); i++) {
            const anvil_st_tensor *t = anvil_safetensors_at(f, i);
            assert_ptr_equal(anvil_safetensors_find(f, t->name), t);
            assert_int_equal((uintptr_t)t->data % anvil_dtype_size(t->dtype), 0);
        }
        assert_null(anvil_safetensors_at(f, -1));
        assert_null(anvil_safetensors_at(f, anvil_safetensors_count(f)));
        assert_null(anvil_safetensors_find(f, "no.such.tensor"));
        anvil_safetensors_close(f);
    }
}

static void test_known_tensors(void **state)
{
    (void)state;
    anvil_safetensors *f = NULL;
    assert_int_equal(
        anvil_safetensors_open(anvil_test_shared_path("models/stories260K/model.safetensors"), &f), ANVIL_OK);
    assert_int_equal(anvil_safetensors_count(f), 47); /* 5 layers x 9 + embedding + final norm */
    check_tensor(anvil_safetensors_find(f, "model.embed_tokens.weight"), ANVIL_DTYPE_F32, 2, 512, 64);
    check_tensor(anvil_safetensors_find(f, "model.layers.0.self_attn.k_proj.weight"), ANVIL_DTYPE_F32, 2, 32,
                 64);
    check_tensor(anvil_safetensors_find(f, "model.layers.4.mlp.gate_proj.weight"), ANVIL_DTYPE_F32, 2, 172,
                 64);
    check_tensor(anvil_safetensors_find(f, "model.norm.weight"), ANVIL_DTYPE_F32, 1, 64, 0);
    assert_null(anvil_safetensors_find(f, "lm_head.weight")); /* tied */
    anvil_safetensors_close(f);

    anvil_checkpoint *c = NULL;
    assert_int_equal(anvil_checkpoint_open(anvil_test_shared_path("models/tiny-llama3"), &c), ANVIL_OK);
    check_tensor(anvil_checkpoint_find(c, "lm_head.weight"), ANVIL_DTYPE_BF16, 2, 512, 64);
    check_tensor(anvil_checkpoint_find(c, "model.layers.2.self_attn.q_proj.weight"), ANVIL_DTYPE_BF16, 2, 128,
                 64);
    assert_int_equal(anvil_checkpoint_count(c), 30);
    anvil_checkpoint_close(c);

    assert_int_equal(anvil_checkpoint_open(anvil_test_shared_path("models/tiny-qwen2"), &c), ANVIL_OK);
    check_tensor(anvil_checkpoint_find(c, "model.layers.0.self_attn.q_proj.bias"), ANVIL_DTYPE_F16, 1, 64, 0);
    anvil_checkpoint_close(c);
}

/* ------------------------------------------------------ write / read */

static void test_write_read_round_trip(void **state)
{
    (void)state;
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t b[3] = {0x3f80, 0x4000, 0xc040};
    int8_t c[5] = {-1, 2, -3, 4, -5};
    int64_t d[2] = {-7, 1LL << 40};
    anvil_st_tensor ts[] = {
        {.name = "c.int8", .dtype = ANVIL_DTYPE_I8, .n_dims = 1, .shape = {5}, .data = c, .nbytes = 5},
        {.name = "a.weight", .dtype = ANVIL_DTYPE_F32, .n_dims = 2, .shape = {2, 3}, .data = a, .nbytes = 24},
        {.name = "b \"quoted\" \\ name",
         .dtype = ANVIL_DTYPE_BF16,
         .n_dims = 1,
         .shape = {3},
         .data = b,
         .nbytes = 6},
        {.name = "d.i64", .dtype = ANVIL_DTYPE_I64, .n_dims = 1, .shape = {2}, .data = d, .nbytes = 16},
        {.name = "e.empty",
         .dtype = ANVIL_DTYPE_F16,
         .n_dims = 2,
         .shape = {0, 4},
         .data = NULL,
         .nbytes = 0},
        {.name = "f.scalar", .dtype = ANVIL_DTYPE_F32, .n_dims = 0, .data = a, .nbytes = 4},
    };
    const int64_t n = sizeof ts / sizeof ts[0];
    const char *path = tmp_path("round.safetensors");
    assert_int_equal(anvil_safetensors_write(path, ts, n), ANVIL_OK);

    /* the header is padded to 8 bytes with spaces */
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    unsigned char len8[8];
    assert_int_equal(fread(len8, 1, 8, fp), 8);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | len8[i];
    assert_int_equal(hlen % 8, 0);
    char *hdr = malloc(hlen + 1);
    assert_int_equal(fread(hdr, 1, hlen, fp), hlen);
    hdr[hlen] = '\0';
    fclose(fp);
    assert_int_equal(hdr[0], '{');
    size_t end = strlen(hdr);
    while (end > 0 && hdr[end - 1] == ' ')
        end--;
    assert_int_equal(hdr[end - 1], '}');
    free(hdr);

    anvil_safetensors *f = NULL;
    assert_int_equal(anvil_safetensors_open(path, &f), ANVIL_OK);
    assert_int_equal(anvil_safetensors_count(f), n);
    for (int64_t i = 0; i < n; i++) {
        const anvil_st_tensor *t = anvil_safetensors_find(f, ts[i].name);
        assert_non_null(t);
        assert_int_equal(t->dtype, ts[i].dtype);
        assert_int_equal(t->n_dims, ts[i].n_dims);
        for (int k = 0; k < ts[i].n_dims; k++)
            assert_int_equal(t->shape[k], ts[i].shape[k]);
        assert_int_equal(t->nbytes, ts[i].nbytes);
        if (t->nbytes)
            assert_memory_equal(t->data, ts[i].data, t->nbytes);
        assert_int_equal((uintptr_t)t->data % anvil_dtype_size(t->dtype), 0);
    }
    assert_string_equal(anvil_safetensors_metadata(f, "format"), "pt");
    anvil_safetensors_close(f);

    /* the same image through open_memory */
    char *img = NULL;
    size_t img_len = 0;
    {
        FILE *g = fopen(path, "rb");
        fseek(g, 0, SEEK_END);
        img_len = (size_t)ftell(g);
        fseek(g, 0, SEEK_SET);
        img = aligned_alloc(64, (img_len + 63) / 64 * 64);
        assert_int_equal(fread(img, 1, img_len, g), img_len);
        fclose(g);
    }
    assert_int_equal(anvil_safetensors_open_memory(img, img_len, &f), ANVIL_OK);
    assert_memory_equal(anvil_safetensors_find(f, "a.weight")->data, a, sizeof a);
    assert_string_equal(anvil_safetensors_path(f), "<memory>");
    anvil_safetensors_close(f);
    free(img);
}

static void test_write_rejects_bad_input(void **state)
{
    (void)state;
    float a[2] = {0};
    anvil_st_tensor dup[] = {
        {.name = "x", .dtype = ANVIL_DTYPE_F32, .n_dims = 1, .shape = {2}, .data = a, .nbytes = 8},
        {.name = "x", .dtype = ANVIL_DTYPE_F32, .n_dims = 1, .shape = {2}, .data = a, .nbytes = 8},
    };
    const char *path = tmp_path("bad-write.safetensors");
    assert_status_msg(anvil_safetensors_write(path, dup, 2), ANVIL_ERR_INVALID_ARG, "appears twice");
    struct stat sb;
    assert_int_not_equal(stat(path, &sb), 0); /* nothing left behind */
    anvil_st_tensor wrong = {
        .name = "y", .dtype = ANVIL_DTYPE_F32, .n_dims = 1, .shape = {3}, .data = a, .nbytes = 8};
    assert_status_msg(anvil_safetensors_write(path, &wrong, 1), ANVIL_ERR_INVALID_ARG, "\"y\": nbytes 8");
    anvil_st_tensor meta = {
        .name = "__metadata__", .dtype = ANVIL_DTYPE_F32, .n_dims = 1, .shape = {2}, .data = a, .nbytes = 8};
    assert_status_msg(anvil_safetensors_write(path, &meta, 1), ANVIL_ERR_INVALID_ARG, "reserved");
    anvil_st_tensor bad_utf8 = {
        .name = "w\xff", .dtype = ANVIL_DTYPE_F32, .n_dims = 1, .shape = {2}, .data = a, .nbytes = 8};
    assert_status_msg(anvil_safetensors_write(path, &bad_utf8, 1), ANVIL_ERR_INVALID_ARG, "not valid UTF-8");
    anvil_st_tensor no_data = {.name = "z", .dtype = ANVIL_DTYPE_F32, .n_dims = 1, .shape = {2}, .nbytes = 8};
    assert_status_msg(anvil_safetensors_write(path, &no_data, 1), ANVIL_ERR_INVALID_ARG, "data is NULL");
    assert_int_not_equal(stat(path, &sb), 0);
}

/* Streams a "large" file through the fill callback, in several chunks. */
typedef struct fill_state {
    int calls;
} fill_state;

static anvil_status fill_pattern(void *user, int64_t index, void *buf, size_t offset, size_t len)
{
    fill_state *s = user;
    s->calls++;
    uint8_t *p = buf;
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)((offset + i) * 31 + (size_t)index);
    return ANVIL_OK;
}

static void test_write_stream(void **state)
{
    (void)state;
    anvil_st_tensor ts[] = {
        {.name = "big", .dtype = ANVIL_DTYPE_U8, .n_dims = 2, .shape = {5, 4 << 20}, .nbytes = 20u << 20},
        {.name = "small", .dtype = ANVIL_DTYPE_BF16, .n_dims = 1, .shape = {100}, .nbytes = 200},
    };
    fill_state fs = {0};
    const char *path = tmp_path("stream.safetensors");
    assert_int_equal(anvil_safetensors_write_stream(path, ts, 2, fill_pattern, &fs), ANVIL_OK);
    assert_true(fs.calls >= 4); /* 20 MiB in chunks of a few MiB, plus the small one */
    anvil_safetensors *f = NULL;
    assert_int_equal(anvil_safetensors_open(path, &f), ANVIL_OK);
    for (int k = 0; k < 2; k++) {
        const anvil_st_tensor *t = anvil_safetensors_find(f, ts[k].name);
        assert_non_null(t);
        assert_int_equal(t->nbytes, ts[k].nbytes);
        const uint8_t *p = t->data;
        for (size_t i = 0; i < t->nbytes; i += 4093)
            assert_int_equal(p[i], (uint8_t)(i * 31 + (size_t)k));
        assert_int_equal(p[t->nbytes - 1], (uint8_t)((t->nbytes - 1) * 31 + (size_t)k));
    }
    anvil_safetensors_close(f);
}

/* ------------------------------------------------------------ checkpoints */

static void make_dir(const char *path)
{
    assert_true(mkdir(path, 0755) == 0);
}

/* Two shards in dir: shard 1 holds "a" and "b", shard 2 holds "c". */
static void write_two_shards(const char *dir)
{
    static float va[4] = {1, 2, 3, 4}, vb[2] = {5, 6}, vc[3] = {7, 8, 9};
    anvil_st_tensor s1[] = {
        {.name = "a", .dtype = ANVIL_DTYPE_F32, .n_dims = 2, .shape = {2, 2}, .data = va, .nbytes = 16},
        {.name = "b", .dtype = ANVIL_DTYPE_F32, .n_dims = 1, .shape = {2}, .data = vb, .nbytes = 8},
    };
    anvil_st_tensor s2[] = {
        {.name = "c", .dtype = ANVIL_DTYPE_F32, .n_dims = 1, .shape = {3}, .data = vc, .nbytes = 12},
    };
    char path[1024];
    snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", dir);
    assert_int_equal(anvil_safetensors_write(path, s1, 2), ANVIL_OK);
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
    assert_int_equal(anvil_safetensors_write(path, s2, 1), ANVIL_OK);
}

static void write_index(const char *dir, const char *weight_map)
{
    char path[1024], text[2048];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    snprintf(text, sizeof text, "{\"metadata\": {\"total_size\": 36}, \"weight_map\": %s}", weight_map);
    anvil_test_write_file(path, text, strlen(text));
}

static void test_sharded_checkpoint(void **state)
{
    (void)state;
    const char *dir = tmp_path("sharded");
    make_dir(dir);
    write_two_shards(dir);
    write_index(dir,
                "{\"a\": \"model-00001-of-00002.safetensors\", \"c\": \"model-00002-of-00002.safetensors\","
                " \"b\": \"model-00001-of-00002.safetensors\"}");
    anvil_checkpoint *c = NULL;
    assert_int_equal(anvil_checkpoint_open(dir, &c), ANVIL_OK);
    assert_int_equal(anvil_checkpoint_count(c), 3);
    const anvil_st_tensor *t = anvil_checkpoint_find(c, "c");
    assert_non_null(t);
    assert_true(((const float *)t->data)[2] == 9.0f);
    t = anvil_checkpoint_find(c, "a");
    assert_non_null(t);
    assert_true(((const float *)t->data)[3] == 4.0f);
    assert_non_null(anvil_checkpoint_find(c, "b"));
    assert_null(anvil_checkpoint_find(c, "d"));
    for (int64_t i = 0; i < 3; i++)
        assert_ptr_equal(anvil_checkpoint_find(c, anvil_checkpoint_at(c, i)->name),
                         anvil_checkpoint_at(c, i));
    assert_null(anvil_checkpoint_at(c, 3));
    anvil_checkpoint_close(c);
    anvil_checkpoint_close(NULL);
    anvil_safetensors_close(NULL);
}

static void test_index_missing_shard(void **state)
{
    (void)state;
    const char *dir = tmp_path("missing-shard");
    make_dir(dir);
    write_two_shards(dir);
    write_index(dir,
                "{\"a\": \"model-00001-of-00002.safetensors\", \"c\": \"model-00003-of-00003.safetensors\"}");
    anvil_checkpoint *c = (anvil_checkpoint *)0x1;
    assert_status_msg(anvil_checkpoint_open(dir, &c), ANVIL_ERR_NOT_FOUND,
                      "model-00003-of-00003.safetensors");
    assert_null(c);
}

static void test_index_tensor_not_in_shard(void **state)
{
    (void)state;
    const char *dir = tmp_path("wrong-shard");
    make_dir(dir);
    write_two_shards(dir);
    /* "c" is in shard 2, but the index says shard 1 */
    write_index(dir,
                "{\"a\": \"model-00001-of-00002.safetensors\", \"c\": \"model-00001-of-00002.safetensors\"}");
    anvil_checkpoint *c = NULL;
    assert_status_msg(anvil_checkpoint_open(dir, &c), ANVIL_ERR_FORMAT,
                      "tensor \"c\" is listed in shard model-00001-of-00002.safetensors");
    assert_null(c);
}

static void test_index_bad_forms(void **state)
{
    (void)state;
    const char *dir = tmp_path("bad-index");
    make_dir(dir);
    write_two_shards(dir);
    anvil_checkpoint *c = NULL;
    write_index(dir, "{\"a\": \"../model-00001-of-00002.safetensors\"}");
    assert_status_msg(anvil_checkpoint_open(dir, &c), ANVIL_ERR_FORMAT, "not a file inside the folder");
    write_index(dir, "{\"a\": 3}");
    assert_status_msg(anvil_checkpoint_open(dir, &c), ANVIL_ERR_FORMAT, "must name a file");
    write_index(dir, "[1]");
    assert_status_msg(anvil_checkpoint_open(dir, &c), ANVIL_ERR_FORMAT, "weight_map");
    const char *empty = tmp_path("empty-dir");
    make_dir(empty);
    assert_status_msg(anvil_checkpoint_open(empty, &c), ANVIL_ERR_NOT_FOUND, "model.safetensors.index.json");
}

/* ------------------------------------------------------------ bad files */

static void test_truncated(void **state)
{
    (void)state;
    const char *path = tmp_path("short.safetensors");
    anvil_test_write_file(path, "\x10\x00\x00", 3);
    anvil_safetensors *f = NULL;
    assert_status_msg(anvil_safetensors_open(path, &f), ANVIL_ERR_FORMAT, "truncated");
    assert_null(f);
    assert_non_null(strstr(anvil_last_error(), "short.safetensors"));
    anvil_test_write_file(path, "", 0);
    assert_status_msg(anvil_safetensors_open(path, &f), ANVIL_ERR_FORMAT, "truncated");
    assert_status_msg(anvil_safetensors_open_memory("abc", 3, &f), ANVIL_ERR_FORMAT, "<memory>: truncated");
}

static void test_header_past_end(void **state)
{
    (void)state;
    /* claims 1000 header bytes, has 10 */
    unsigned char buf[18] = {0xe8, 0x03, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
    const char *path = tmp_path("past.safetensors");
    anvil_test_write_file(path, buf, sizeof buf);
    anvil_safetensors *f = NULL;
    assert_status_msg(anvil_safetensors_open(path, &f), ANVIL_ERR_FORMAT,
                      "header length 1000 is past the end");
    /* a length near 2^64 must not wrap around */
    unsigned char huge[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'};
    assert_status_msg(anvil_safetensors_open_memory(huge, sizeof huge, &f), ANVIL_ERR_FORMAT, "past the end");
}

static void test_malformed_json(void **state)
{
    (void)state;
    assert_status_msg(open_raw("json.safetensors", "{\"a\": {\"dtype\": \"F32\",\n \"shape\": [1]", 0),
                      ANVIL_ERR_FORMAT, "malformed JSON at line 2");
    assert_non_null(strstr(anvil_last_error(), "json.safetensors"));
    assert_status_msg(open_raw("json2.safetensors", "[1, 2]", 0), ANVIL_ERR_FORMAT, "must be a JSON object");
    assert_status_msg(open_raw("dup.safetensors",
                               "{\"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]},"
                               " \"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [1, 2]}}",
                               2),
                      ANVIL_ERR_FORMAT, "duplicate");
}

static void test_bad_entries(void **state)
{
    (void)state;
    assert_status_msg(open_raw("e1.safetensors", "{\"w\": 5}", 0), ANVIL_ERR_FORMAT,
                      "tensor \"w\": entry must be an object");
    assert_status_msg(open_raw("e2.safetensors", "{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4),
                      ANVIL_ERR_FORMAT, "tensor \"w\": missing \"dtype\"");
    assert_status_msg(
        open_raw("e3.safetensors", "{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4),
        ANVIL_ERR_FORMAT, "tensor \"w\": missing \"shape\"");
    assert_status_msg(open_raw("e4.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4),
                      ANVIL_ERR_FORMAT, "tensor \"w\": missing \"data_offsets\"");
    assert_status_msg(open_raw("e5.safetensors",
                               "{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4),
                      ANVIL_ERR_FORMAT, "negative");
    assert_status_msg(open_raw("e6.safetensors",
                               "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, -4]}}", 4),
                      ANVIL_ERR_FORMAT, "negative");
    assert_status_msg(open_raw("e7.safetensors",
                               "{\"w\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}",
                               4),
                      ANVIL_ERR_FORMAT, "shape must hold integers");
    assert_status_msg(open_raw("e8.safetensors",
                               "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 0]}}", 4),
                      ANVIL_ERR_FORMAT, "end before they begin");
    assert_status_msg(
        open_raw("e9.safetensors",
                 "{\"w\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1], \"data_offsets\": [0, 1]}}", 4),
        ANVIL_ERR_UNSUPPORTED, "5 dimensions");
    assert_status_msg(open_raw("e10.safetensors", "{\"__metadata__\": {\"format\": 1}}", 0), ANVIL_ERR_FORMAT,
                      "__metadata__");
    /* a tensor that starts at an odd byte cannot be read as floats in place */
    assert_status_msg(
        open_raw("e11.safetensors",
                 "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [1, 5]}}      ", 8),
        ANVIL_ERR_UNSUPPORTED, "not aligned");
}

static void test_offsets_out_of_bounds(void **state)
{
    (void)state;
    /* header of 64 bytes (aligned data), 16 bytes of data, tensor ends at 20 */
    assert_status_msg(open_raw("oob.safetensors",
                               "{\"w\": {\"dtype\": \"F32\", \"shape\": [5], \"data_offsets\": [0, 20]}}   ",
                               16),
                      ANVIL_ERR_FORMAT, "tensor \"w\": data_offsets [0, 20] are out of bounds");
    /* offsets near 2^63 must not wrap around */
    assert_status_msg(open_raw("oob2.safetensors",
                               "{\"w\": {\"dtype\": \"U8\", \"shape\": [4],"
                               " \"data_offsets\": [9223372036854775805, 9223372036854775807]}}",
                               16),
                      ANVIL_ERR_FORMAT, "out of bounds");
}

static void test_overlapping_tensors(void **state)
{
    (void)state;
    assert_status_msg(
        open_raw("overlap.safetensors",
                 "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
                 " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]},"
                 " \"c\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [4, 4]}}      ",
                 16),
        ANVIL_ERR_FORMAT, "tensors \"a\" and \"b\" overlap");
    /* one tensor inside a larger one, listed first */
    assert_status_msg(open_raw("overlap2.safetensors",
                               "{\"in\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [4, 6]},"
                               " \"out\": {\"dtype\": \"U8\", \"shape\": [16], \"data_offsets\": [0, 16]}}",
                               16),
                      ANVIL_ERR_FORMAT, "tensors \"out\" and \"in\" overlap");
    /* touching is fine, and so are empty tensors anywhere */
    assert_int_equal(open_raw("touch.safetensors",
                              "{\"a\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [0, 4]},"
                              " \"z\": {\"dtype\": \"U8\", \"shape\": [0], \"data_offsets\": [2, 2]},"
                              " \"b\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [4, 8]}}",
                              8),
                     ANVIL_OK);
}

static void test_unknown_dtype(void **state)
{
    (void)state;
    assert_status_msg(open_raw("dtype.safetensors",
                               "{\"w\": {\"dtype\": \"F64\", \"shape\": [1], \"data_offsets\": [0, 8]}}", 8),
                      ANVIL_ERR_UNSUPPORTED, "tensor \"w\": dtype \"F64\" is not supported");
    assert_status_msg(open_raw("dtype2.safetensors",
                               "{\"w\": {\"dtype\": 4, \"shape\": [1], \"data_offsets\": [0, 8]}}", 8),
                      ANVIL_ERR_FORMAT, "dtype must be a string");
}

static void test_shape_bytes_mismatch(void **state)
{
    (void)state;
    assert_status_msg(
        open_raw("mismatch.safetensors",
                 "{\"w\": {\"dtype\": \"BF16\", \"shape\": [2, 3], \"data_offsets\": [0, 8]}}", 16),
        ANVIL_ERR_FORMAT, "tensor \"w\": shape [2, 3] of BF16 needs 12 bytes but data_offsets [0, 8]");
    /* a shape whose product overflows 64 bits */
    assert_status_msg(open_raw("overflow.safetensors",
                               "{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296],"
                               " \"data_offsets\": [0, 0]}}",
                               16),
                      ANVIL_ERR_FORMAT, "overflows");
    assert_status_msg(open_raw("overflow2.safetensors",
                               "{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 0],"
                               " \"data_offsets\": [0, 0]}}",
                               16),
                      ANVIL_ERR_FORMAT, "overflows");
}

static void test_missing_file(void **state)
{
    (void)state;
    anvil_safetensors *f = NULL;
    assert_status_msg(anvil_safetensors_open(tmp_path("nope.safetensors"), &f), ANVIL_ERR_NOT_FOUND,
                      "nope.safetensors");
    assert_status_msg(anvil_safetensors_open(anvil_test_tmpdir(), &f), ANVIL_ERR_IO, "not a regular file");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_models),           cmocka_unit_test(test_known_tensors),
        cmocka_unit_test(test_write_read_round_trip), cmocka_unit_test(test_write_rejects_bad_input),
        cmocka_unit_test(test_write_stream),          cmocka_unit_test(test_sharded_checkpoint),
        cmocka_unit_test(test_index_missing_shard),   cmocka_unit_test(test_index_tensor_not_in_shard),
        cmocka_unit_test(test_index_bad_forms),       cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_header_past_end),       cmocka_unit_test(test_malformed_json),
        cmocka_unit_test(test_bad_entries),           cmocka_unit_test(test_offsets_out_of_bounds),
        cmocka_unit_test(test_overlapping_tensors),   cmocka_unit_test(test_unknown_dtype),
        cmocka_unit_test(test_shape_bytes_mismatch),  cmocka_unit_test(test_missing_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
