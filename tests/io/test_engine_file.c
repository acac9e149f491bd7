/* The engine file container: write/read round trips (every kind, padding
 * and none, a tensor across chunk boundaries, several threads; read, mmap
 * and memory images), verify finding a damaged tensor, one case per kind of
 * bad file (status and message, through every way of opening it), and the
 * writer's promise that path never holds a partial engine.
 *
 * Two modes besides the tests:
 *   ANVIL_ENGINE_PERF_MB=1024 test_engine_file   write and verify a file of
 *     that many MB of random bytes in $TMPDIR and print the throughput;
 *   ANVIL_UPDATE_SEEDS=1 test_engine_file         (re)write the fuzzer's seed
 *     corpus, tests/fuzz/corpus/engine_file/ (test_fuzz_seeds checks it). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"
#include "io/engine_file.h"
#include "testutil.h"

/* ------------------------------------------------------------- helpers */

static const char *tmp_path(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", anvil_test_tmpdir(), name);
    return buf[k];
}

/* The reference bytes of tensor `index`: a pattern that differs per tensor
 * and per byte, so that a chunk written at the wrong offset shows. */
static uint8_t pattern(int64_t index, uint64_t pos)
{
    uint64_t x = pos * 0x9E3779B97F4A7C15ull + (uint64_t)index * 0xBF58476D1CE4E5B9ull;
    return (uint8_t)(x >> 56 ^ x >> 29);
}

typedef struct fill_ctx {
    int64_t fail_index; /* fail when asked for this tensor at fail_offset (-1: never) */
    size_t fail_offset;
    atomic_long calls;
    atomic_size_t max_len;
    int random; /* perf mode: xorshift bytes instead of the pattern */
} fill_ctx;

static anvil_status fill_pattern(void *user, int64_t index, size_t offset, void *dst, size_t len)
{
    fill_ctx *c = user;
    atomic_fetch_add(&c->calls, 1);
    size_t m = atomic_load(&c->max_len);
    while (len > m && !atomic_compare_exchange_weak(&c->max_len, &m, len))
        ;
    if (index == c->fail_index && offset == c->fail_offset)
        return ANVIL_FAIL(ANVIL_ERR_IO, "fill failed on purpose at tensor %lld", (long long)index);
    uint8_t *p = dst;
    if (c->random) {
        uint64_t s = (uint64_t)index * 0x9E3779B97F4A7C15ull + offset + 1, *q = dst;
        for (size_t i = 0; i < len / 8; i++)
            q[i] = anvil_test_rand(&s);
        for (size_t i = len / 8 * 8; i < len; i++)
            p[i] = (uint8_t)anvil_test_rand(&s);
        return ANVIL_OK;
    }
    for (size_t i = 0; i < len; i++)
        p[i] = pattern(index, offset + i);
    return ANVIL_OK;
}

typedef struct progress_log {
    pthread_t caller;
    int calls, wrong_thread, backwards, cancel_after; /* cancel_after: return 1 once done > 0 (0: never) */
    size_t last, total;
} progress_log;

static int on_progress(void *user, size_t done, size_t total)
{
    progress_log *p = user;
    p->calls++;
    p->wrong_thread += !pthread_equal(pthread_self(), p->caller);
    p->backwards += done < p->last && p->calls > 1;
    p->last = done;
    p->total = total;
    return p->cancel_after && done > 0;
}

/* Names in the test's folder that contain ".tmp-" (writer leftovers). */
static int count_temp_files(void)
{
    DIR *d = opendir(anvil_test_tmpdir());
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strstr(e->d_name, ".tmp-") != NULL;
    closedir(d);
    return n;
}

static int exists(const char *path)
{
    struct stat sb;
    return lstat(path, &sb) == 0;
}

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

/* ------------------------------------------------------- round trips */

typedef struct spec {
    const char *name;
    anvil_engine_kind kind;
    int n_dims;
    int64_t shape[4];
    size_t bytes;
} spec;

/* Every kind; byte sizes that need padding to the next 256 and some that
 * need none (512, 256); int4 with an odd count; a 40 MiB tensor that spans
 * three fill chunks. */
static const spec round_trip_specs[] = {
    {"model.embed.weight", ANVIL_ENGINE_KIND_F32, 2, {3, 5}, 60},
    {"bf16.exact", ANVIL_ENGINE_KIND_BF16, 1, {256}, 512},
    {"f16.4d", ANVIL_ENGINE_KIND_F16, 4, {2, 3, 4, 5}, 240},
    {"fp8", ANVIL_ENGINE_KIND_FP8_E4M3, 1, {7}, 7},
    {"int8", ANVIL_ENGINE_KIND_INT8, 2, {256, 1}, 256},
    {"int4.odd", ANVIL_ENGINE_KIND_INT4, 2, {3, 3}, 5},
    {"int4.even", ANVIL_ENGINE_KIND_INT4, 1, {4}, 2},
    {"big", ANVIL_ENGINE_KIND_BF16, 2, {5120, 4096}, 41943040},
    {"tail.f32", ANVIL_ENGINE_KIND_F32, 1, {1}, 4},
};
#define N_SPECS ((int64_t)(sizeof round_trip_specs / sizeof round_trip_specs[0]))

static void write_specs(const char *path, const spec *specs, int64_t n, json_t *manifest, int n_threads,
                        progress_log *plog)
{
    anvil_engine_writer *w = NULL;
    assert_int_equal(anvil_engine_writer_create(path, &w), ANVIL_OK);
    for (int64_t i = 0; i < n; i++) {
        int64_t idx = -1;
        assert_int_equal(anvil_engine_writer_add_tensor(w, specs[i].name, specs[i].kind, specs[i].n_dims,
                                                        specs[i].shape, &idx),
                         ANVIL_OK);
        assert_int_equal(idx, i);
    }
    if (n > 5)
        assert_int_equal(anvil_engine_writer_set_scales(w, 5, 2), ANVIL_OK); /* int4.odd's scales: f16.4d */
    fill_ctx fc = {.fail_index = -1};
    anvil_status st = anvil_engine_writer_finish(w, manifest, fill_pattern, &fc, n_threads,
                                                 plog ? on_progress : NULL, plog);
    if (st != ANVIL_OK)
        fail_msg("finish: %s", anvil_last_error());
    assert_true(atomic_load(&fc.max_len) <= ANVIL_ENGINE_CHUNK);
}

/* Checks every tensor of f against specs: metadata, alignment, bytes
 * (whole and a slice, through read and the data pointer), and verify.
 * mapped: 0 read with pread, 1 mapped, 2 a memory image. */
static void check_specs(const anvil_engine_file *f, const spec *specs, int64_t n, int mapped)
{
    const anvil_engine_header *h = anvil_engine_file_header(f);
    assert_int_equal(h->version_major, 1);
    assert_int_equal(h->data_offset % 4096, 0);
    assert_int_equal(anvil_engine_file_count(f), n);
    assert_null(anvil_engine_file_tensor(f, n));
    assert_null(anvil_engine_file_tensor(f, -1));
    assert_null(anvil_engine_file_find(f, "no such tensor"));
    for (int64_t i = 0; i < n; i++) {
        const anvil_engine_tensor *t = anvil_engine_file_tensor(f, i);
        assert_non_null(t);
        assert_ptr_equal(anvil_engine_file_find(f, specs[i].name), t);
        assert_string_equal(t->name, specs[i].name);
        assert_int_equal(t->index, i);
        assert_int_equal(t->kind, specs[i].kind);
        assert_int_equal(t->n_dims, specs[i].n_dims);
        for (int d = 0; d < t->n_dims; d++)
            assert_int_equal(t->shape[d], specs[i].shape[d]);
        assert_int_equal(t->bytes, specs[i].bytes);
        assert_int_equal((t->offset - h->data_offset) % 256, 0);
        assert_int_equal(t->scales, n > 5 && i == 5 ? 2 : -1);
        assert_non_null(t->entry);
        uint8_t *buf = malloc(t->bytes);
        assert_non_null(buf);
        assert_int_equal(anvil_engine_file_read(f, i, 0, buf, t->bytes), ANVIL_OK);
        for (size_t k = 0; k < t->bytes; k++)
            if (buf[k] != pattern(i, k))
                fail_msg("tensor %s: byte %zu is %u, wanted %u", t->name, k, buf[k], pattern(i, k));
        assert_int_equal(anvil_engine_xxh64(buf, t->bytes), t->xxh64);
        if (mapped) {
            assert_non_null(t->data);
            if (mapped == 1) /* a mapping starts on a page; an image is where malloc put it */
                assert_int_equal((uintptr_t)t->data % 256, 0);
            assert_memory_equal(t->data, buf, t->bytes);
        } else {
            assert_null(t->data);
        }
        size_t off = t->bytes / 3, len = t->bytes - off - t->bytes / 4;
        assert_int_equal(anvil_engine_file_read(f, i, off, buf, len), ANVIL_OK);
        for (size_t k = 0; k < len; k++)
            assert_int_equal(buf[k], pattern(i, off + k));
        assert_status_msg(anvil_engine_file_read(f, i, t->bytes - 1, buf, 2), ANVIL_ERR_INVALID_ARG,
                          "outside tensor");
        free(buf);
    }
    progress_log plog = {.caller = pthread_self()};
    assert_int_equal(anvil_engine_file_verify(f, on_progress, &plog), ANVIL_OK);
    assert_int_equal(plog.wrong_thread, 0);
    assert_int_equal(plog.backwards, 0);
    assert_int_equal(plog.last, plog.total);
    assert_true(plog.calls >= 3); /* the 40 MiB tensor alone is three chunks */
}

static void test_round_trip(void **state)
{
    (void)state;
    const int threads[] = {1, 3};
    for (int r = 0; r < 2; r++) {
        const char *path = tmp_path("round.engine");
        json_t *m = json_pack("{s:{s:s, s:i}, s:s, s:[i, i]}", "config", "architectures", "LlamaForCausalLM",
                              "hidden_size", 4096, "chat_template", "{{ messages }}", "format_version", 9, 9);
        assert_non_null(m);
        progress_log plog = {.caller = pthread_self()};
        write_specs(path, round_trip_specs, N_SPECS, m, threads[r], &plog);
        assert_int_equal(plog.wrong_thread, 0);
        assert_int_equal(plog.backwards, 0);
        assert_int_equal(plog.last, plog.total);
        assert_true(plog.total >= 41943040);
        /* the writer's keys went into the caller's object, replacing its own */
        assert_string_equal(json_string_value(json_object_get(m, "format")), "anvil-engine");
        assert_int_equal(json_integer_value(json_array_get(json_object_get(m, "format_version"), 0)), 1);
        assert_int_equal(json_array_size(json_object_get(m, "tensors")), N_SPECS);
        json_decref(m);
        assert_int_equal(count_temp_files(), 0);
        assert_true(anvil_engine_file_is_engine(path));

        for (int mode = 0; mode < 3; mode++) {
            anvil_engine_file *f = NULL;
            size_t len = 0;
            uint8_t *image = NULL;
            if (mode < 2) {
                assert_int_equal(anvil_engine_file_open(path, mode ? ANVIL_ST_MMAP : ANVIL_ST_READ, &f),
                                 ANVIL_OK);
            } else {
                image = read_all(path, &len);
                assert_int_equal(anvil_engine_file_open_memory(image, len, &f), ANVIL_OK);
                assert_string_equal(anvil_engine_file_path(f), "<memory>");
            }
            struct stat sb;
            assert_int_equal(stat(path, &sb), 0);
            assert_int_equal(anvil_engine_file_header(f)->file_size, (uint64_t)sb.st_size);
            const json_t *mf = anvil_engine_file_manifest(f);
            assert_string_equal(
                json_string_value(json_object_get(json_object_get(mf, "config"), "architectures")),
                "LlamaForCausalLM");
            assert_string_equal(json_string_value(json_object_get(mf, "chat_template")), "{{ messages }}");
            const char *ver = json_string_value(json_object_get(mf, "anvil_version"));
            assert_non_null(ver);
            assert_true(strlen(ver) > 0);
            check_specs(f, round_trip_specs, N_SPECS, mode);
            assert_int_equal(anvil_engine_file_check_unchanged(f), ANVIL_OK);
            anvil_engine_file_close(f);
            free(image);
        }
    }
}

/* The same inputs give the same bytes (no timestamps, no thread-order
 * effects), however many threads wrote them. */
static void test_deterministic(void **state)
{
    (void)state;
    const spec small[] = {
        {"a", ANVIL_ENGINE_KIND_F32, 2, {3, 5}, 60},
        {"b", ANVIL_ENGINE_KIND_BF16, 1, {1000}, 2000},
        {"c", ANVIL_ENGINE_KIND_INT4, 1, {9}, 5},
    };
    const char *p1 = tmp_path("det1.engine"), *p2 = tmp_path("det2.engine");
    json_t *m1 = json_pack("{s:s}", "note", "same"), *m2 = json_pack("{s:s}", "note", "same");
    write_specs(p1, small, 3, m1, 1, NULL);
    write_specs(p2, small, 3, m2, 4, NULL);
    json_decref(m1);
    json_decref(m2);
    size_t l1, l2;
    uint8_t *b1 = read_all(p1, &l1), *b2 = read_all(p2, &l2);
    assert_int_equal(l1, l2);
    assert_memory_equal(b1, b2, l1);
    free(b1);
    free(b2);
}

/* No tensors at all, and no manifest of the caller's: still a valid file. */
static void test_empty_engine(void **state)
{
    (void)state;
    const char *path = tmp_path("empty.engine");
    anvil_engine_writer *w = NULL;
    assert_int_equal(anvil_engine_writer_create(path, &w), ANVIL_OK);
    assert_int_equal(anvil_engine_writer_finish(w, NULL, NULL, NULL, 4, NULL, NULL), ANVIL_OK);
    for (int mode = 0; mode < 2; mode++) {
        anvil_engine_file *f = NULL;
        assert_int_equal(anvil_engine_file_open(path, mode ? ANVIL_ST_MMAP : ANVIL_ST_READ, &f), ANVIL_OK);
        assert_int_equal(anvil_engine_file_count(f), 0);
        assert_int_equal(anvil_engine_file_header(f)->data_length, 0);
        assert_int_equal(anvil_engine_file_verify(f, NULL, NULL), ANVIL_OK);
        anvil_engine_file_close(f);
    }
}

/* One byte flipped in a tensor: the file still opens (tensor checksums are
 * checked by verify, which reads everything), and verify names the tensor. */
static void test_verify_finds_damage(void **state)
{
    (void)state;
    const spec small[] = {
        {"a", ANVIL_ENGINE_KIND_F32, 2, {3, 5}, 60},
        {"layers.1.w", ANVIL_ENGINE_KIND_BF16, 1, {1000}, 2000},
        {"c", ANVIL_ENGINE_KIND_F16, 1, {9}, 18},
    };
    const char *path = tmp_path("damaged.engine");
    write_specs(path, small, 3, NULL, 2, NULL);
    anvil_engine_file *f = NULL;
    assert_int_equal(anvil_engine_file_open(path, ANVIL_ST_READ, &f), ANVIL_OK);
    uint64_t where = anvil_engine_file_find(f, "layers.1.w")->offset + 1234;
    anvil_engine_file_close(f);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    uint8_t b;
    assert_int_equal(pread(fd, &b, 1, (off_t)where), 1);
    b ^= 0x10;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)where), 1);
    close(fd);
    for (int mode = 0; mode < 2; mode++) {
        assert_int_equal(anvil_engine_file_open(path, mode ? ANVIL_ST_MMAP : ANVIL_ST_READ, &f), ANVIL_OK);
        assert_status_msg(anvil_engine_file_verify(f, NULL, NULL), ANVIL_ERR_FORMAT,
                          "tensor 'layers.1.w': checksum mismatch (the file is damaged)");
        assert_status_msg(anvil_engine_file_verify(f, NULL, NULL), ANVIL_ERR_FORMAT, "damaged.engine");
        /* a cancelled verify */
        progress_log plog = {.caller = pthread_self(), .cancel_after = 1};
        assert_status_msg(anvil_engine_file_verify(f, on_progress, &plog), ANVIL_ERR_CANCELLED, "cancelled");
        anvil_engine_file_close(f);
    }
}

/* ------------------------------------------------- the writer's promises */

static void write_expect_failure(const char *path, fill_ctx *fc, progress_log *plog, anvil_status want,
                                 const char *needle)
{
    anvil_engine_writer *w = NULL;
    assert_int_equal(anvil_engine_writer_create(path, &w), ANVIL_OK);
    assert_int_equal(count_temp_files(), 1);
    for (int64_t i = 0; i < N_SPECS; i++)
        assert_int_equal(anvil_engine_writer_add_tensor(w, round_trip_specs[i].name, round_trip_specs[i].kind,
                                                        round_trip_specs[i].n_dims, round_trip_specs[i].shape,
                                                        NULL),
                         ANVIL_OK);
    anvil_status st =
        anvil_engine_writer_finish(w, NULL, fill_pattern, fc, 3, plog ? on_progress : NULL, plog);
    assert_status_msg(st, want, needle);
    assert_int_equal(count_temp_files(), 0);
}

static void test_cancel_leaves_nothing(void **state)
{
    (void)state;
    const char *path = tmp_path("cancel.engine");
    fill_ctx fc = {.fail_index = -1};
    progress_log plog = {.caller = pthread_self(), .cancel_after = 1};
    write_expect_failure(path, &fc, &plog, ANVIL_ERR_CANCELLED, "cancelled");
    assert_false(exists(path));
    assert_int_equal(plog.wrong_thread, 0);
}

static void test_failing_fill_leaves_nothing(void **state)
{
    (void)state;
    const char *path = tmp_path("fillfail.engine");
    /* tensor 7 is the 40 MiB one: fail on its second chunk, while other
     * threads write the small ones; the message crosses threads intact */
    fill_ctx fc = {.fail_index = 7, .fail_offset = ANVIL_ENGINE_CHUNK};
    write_expect_failure(path, &fc, NULL, ANVIL_ERR_IO, "fill failed on purpose at tensor 7");
    assert_false(exists(path));
    fill_ctx first = {.fail_index = 0, .fail_offset = 0};
    write_expect_failure(path, &first, NULL, ANVIL_ERR_IO, "fill failed on purpose at tensor 0");
    assert_false(exists(path));
}

/* An engine already at path is untouched by a failed or cancelled write,
 * and replaced by a successful one. */
static void test_existing_file_survives(void **state)
{
    (void)state;
    const char *path = tmp_path("existing.engine");
    const char old[] = "the engine that serves today";
    anvil_test_write_file(path, old, sizeof old);
    fill_ctx fc = {.fail_index = 3, .fail_offset = 0};
    write_expect_failure(path, &fc, NULL, ANVIL_ERR_IO, "on purpose");
    progress_log plog = {.caller = pthread_self(), .cancel_after = 1};
    fill_ctx ok = {.fail_index = -1};
    write_expect_failure(path, &ok, &plog, ANVIL_ERR_CANCELLED, "cancelled");
    size_t len;
    uint8_t *b = read_all(path, &len);
    assert_int_equal(len, sizeof old);
    assert_memory_equal(b, old, sizeof old);
    free(b);
    /* aborted after declaring: nothing changes either */
    anvil_engine_writer *w = NULL;
    assert_int_equal(anvil_engine_writer_create(path, &w), ANVIL_OK);
    int64_t shape[1] = {4};
    assert_int_equal(anvil_engine_writer_add_tensor(w, "x", ANVIL_ENGINE_KIND_F32, 1, shape, NULL), ANVIL_OK);
    anvil_engine_writer_abort(w);
    anvil_engine_writer_abort(NULL);
    assert_int_equal(count_temp_files(), 0);
    b = read_all(path, &len);
    assert_memory_equal(b, old, sizeof old);
    free(b);
    const spec one[] = {{"x", ANVIL_ENGINE_KIND_F32, 1, {4}, 16}};
    write_specs(path, one, 1, NULL, 1, NULL);
    assert_true(anvil_engine_file_is_engine(path));
}

static void test_writer_bad_args(void **state)
{
    (void)state;
    anvil_engine_writer *w = (anvil_engine_writer *)0x1;
    assert_status_msg(anvil_engine_writer_create(tmp_path("no/such/dir/x.engine"), &w), ANVIL_ERR_IO,
                      "cannot create");
    assert_null(w);
    assert_int_equal(count_temp_files(), 0);
    const char *path = tmp_path("badargs.engine");
    assert_int_equal(anvil_engine_writer_create(path, &w), ANVIL_OK);
    int64_t ok[2] = {2, 2}, zero[2] = {2, 0}, neg[1] = {-1}, big[4] = {1ll << 40, 1ll << 40, 1ll << 40, 2};
    assert_int_equal(anvil_engine_writer_add_tensor(w, "a", ANVIL_ENGINE_KIND_F32, 2, ok, NULL), ANVIL_OK);
    assert_status_msg(anvil_engine_writer_add_tensor(w, "a", ANVIL_ENGINE_KIND_F32, 2, ok, NULL),
                      ANVIL_ERR_INVALID_ARG, "tensor name 'a' appears twice");
    assert_status_msg(anvil_engine_writer_add_tensor(w, "", ANVIL_ENGINE_KIND_F32, 2, ok, NULL),
                      ANVIL_ERR_INVALID_ARG, "needs a name");
    assert_status_msg(anvil_engine_writer_add_tensor(w, "z", ANVIL_ENGINE_KIND_F32, 2, zero, NULL),
                      ANVIL_ERR_INVALID_ARG, "dimension 1 is 0");
    assert_status_msg(anvil_engine_writer_add_tensor(w, "n", ANVIL_ENGINE_KIND_F32, 1, neg, NULL),
                      ANVIL_ERR_INVALID_ARG, "must be > 0");
    assert_status_msg(anvil_engine_writer_add_tensor(w, "d", ANVIL_ENGINE_KIND_F32, 5, ok, NULL),
                      ANVIL_ERR_INVALID_ARG, "5 dimensions");
    assert_status_msg(anvil_engine_writer_add_tensor(w, "d", ANVIL_ENGINE_KIND_F32, 0, ok, NULL),
                      ANVIL_ERR_INVALID_ARG, "0 dimensions");
    assert_status_msg(anvil_engine_writer_add_tensor(w, "k", (anvil_engine_kind)99, 2, ok, NULL),
                      ANVIL_ERR_INVALID_ARG, "invalid kind");
    assert_status_msg(anvil_engine_writer_add_tensor(w, "o", ANVIL_ENGINE_KIND_F32, 4, big, NULL),
                      ANVIL_ERR_INVALID_ARG, "overflows");
    assert_status_msg(anvil_engine_writer_add_tensor(w, "bad\xff", ANVIL_ENGINE_KIND_F32, 2, ok, NULL),
                      ANVIL_ERR_INVALID_ARG, "not valid UTF-8");
    assert_status_msg(anvil_engine_writer_set_scales(w, 0, 0), ANVIL_ERR_INVALID_ARG, "two different");
    assert_status_msg(anvil_engine_writer_set_scales(w, 0, 1), ANVIL_ERR_INVALID_ARG, "two different");
    int64_t idx = -1;
    assert_int_equal(anvil_engine_writer_add_tensor(w, "b", ANVIL_ENGINE_KIND_INT4, 2, ok, &idx), ANVIL_OK);
    assert_int_equal(idx, 1); /* the failures did not count */
    /* a manifest that is not an object: refused, the writer freed, nothing left */
    json_t *arr = json_array();
    fill_ctx fc = {.fail_index = -1};
    assert_status_msg(anvil_engine_writer_finish(w, arr, fill_pattern, &fc, 1, NULL, NULL),
                      ANVIL_ERR_INVALID_ARG, "must be a JSON object");
    json_decref(arr);
    assert_false(exists(path));
    assert_int_equal(count_temp_files(), 0);
    /* tensors but no fill */
    assert_int_equal(anvil_engine_writer_create(path, &w), ANVIL_OK);
    assert_int_equal(anvil_engine_writer_add_tensor(w, "a", ANVIL_ENGINE_KIND_F32, 2, ok, NULL), ANVIL_OK);
    assert_status_msg(anvil_engine_writer_finish(w, NULL, NULL, NULL, 1, NULL, NULL), ANVIL_ERR_INVALID_ARG,
                      "no fill");
    assert_int_equal(count_temp_files(), 0);
    /* a directory at path: the rename fails, nothing is left behind */
    const char *dir = tmp_path("a_directory.engine");
    assert_int_equal(mkdir(dir, 0700), 0);
    assert_int_equal(anvil_engine_writer_create(dir, &w), ANVIL_OK);
    assert_status_msg(anvil_engine_writer_finish(w, NULL, NULL, NULL, 1, NULL, NULL), ANVIL_ERR_IO,
                      "cannot rename");
    assert_int_equal(count_temp_files(), 0);
    rmdir(dir);
}

static void test_kinds(void **state)
{
    (void)state;
    static const char *names[] = {"f32", "bf16", "f16", "fp8_e4m3", "int8", "int4", "u8", "i32"};
    static const uint64_t bytes7[] = {28, 14, 14, 7, 7, 4, 7, 28};
    for (int k = 0; k < ANVIL_ENGINE_KIND_COUNT; k++) {
        anvil_engine_kind kk;
        assert_string_equal(anvil_engine_kind_name((anvil_engine_kind)k), names[k]);
        assert_int_equal(anvil_engine_kind_parse(names[k], &kk), 0);
        assert_int_equal(kk, k);
        assert_int_equal(anvil_engine_kind_bytes((anvil_engine_kind)k, 7), bytes7[k]);
        anvil_dtype dt;
        if (anvil_engine_kind_to_dtype(kk, &dt) == 0) {
            anvil_engine_kind back;
            assert_int_equal(anvil_engine_kind_from_dtype(dt, &back), 0);
            assert_int_equal(back, kk);
        } else {
            assert_int_equal(kk, ANVIL_ENGINE_KIND_INT4);
        }
    }
    anvil_engine_kind kk;
    assert_int_equal(anvil_engine_kind_parse("BF16", &kk), -1);
    assert_int_equal(anvil_engine_kind_from_dtype(ANVIL_DTYPE_I64, &kk), -1);
    assert_string_equal(anvil_engine_kind_name(ANVIL_ENGINE_KIND_COUNT), "?");
    assert_int_equal(anvil_engine_kind_bytes(ANVIL_ENGINE_KIND_F32, UINT64_MAX / 2), 0);
    assert_int_equal(anvil_engine_kind_bytes(ANVIL_ENGINE_KIND_INT4, UINT64_MAX), UINT64_MAX / 2 + 1);
}

/* --------------------------------------------------------- bad files */

/* A hand-made engine: header fields, manifest and data, put together with
 * a consistent layout and checksums unless a case asks otherwise. */
typedef struct img {
    json_t *m;
    char *text;         /* the manifest as printed (a case may replace it) */
    uint8_t data[1024]; /* "a" f32 [4, 4] at 0, "b" bf16 [8] at 256 */
    size_t data_len;
    anvil_engine_header h;
    void (*patch)(anvil_engine_header *h); /* after the layout, before encoding */
    int64_t cut;                           /* keep this many bytes (< 0: drop -cut from the end; 0: all) */
    int64_t flip;                          /* xor byte [flip] with 1 after encoding (0: none) */
    size_t append;                         /* zero bytes added at the end */
    int empty;                             /* no bytes at all */
} img;

static json_t *tensor_entry(const char *name, const char *kind, json_t *shape, int64_t offset, int64_t bytes,
                            const void *data)
{
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)anvil_engine_xxh64(data, (size_t)bytes));
    return json_pack("{s:s, s:s, s:o, s:I, s:I, s:s}", "name", name, "kind", kind, "shape", shape, "offset",
                     (json_int_t)offset, "bytes", (json_int_t)bytes, "xxh64", hex);
}

static void img_init(img *g)
{
    memset(g, 0, sizeof *g);
    for (size_t i = 0; i < sizeof g->data; i++)
        g->data[i] = (uint8_t)(i * 7 + 1);
    memset(g->data + 64, 0, 192); /* the padding after "a" */
    g->data_len = 256 + 16;
    g->m = json_pack("{s:s, s:[i, i], s:s, s:[o, o], s:{s:s}}", "format", "anvil-engine", "format_version", 1,
                     0, "anvil_version", "test", "tensors",
                     tensor_entry("a", "f32", json_pack("[i, i]", 4, 4), 0, 64, g->data),
                     tensor_entry("b", "bf16", json_pack("[i]", 8), 256, 16, g->data + 256), "config",
                     "model_type", "llama");
    assert_non_null(g->m);
}

static json_t *entry(img *g, size_t i)
{
    return json_array_get(json_object_get(g->m, "tensors"), i);
}

/* The file's bytes (malloc'd) and their count. */
static uint8_t *img_bytes(img *g, size_t *len)
{
    if (g->text == NULL)
        g->text = json_dumps(g->m, JSON_COMPACT);
    assert_non_null(g->text);
    anvil_engine_header *h = &g->h;
    h->version_major = 1;
    h->version_minor = 0;
    h->header_size = 4096;
    h->manifest_offset = 4096;
    size_t text_len = strlen(g->text);
    h->manifest_length = text_len;
    h->manifest_xxh64 = anvil_engine_xxh64(g->text, h->manifest_length);
    h->data_offset = (4096 + h->manifest_length + 4095) / 4096 * 4096;
    h->data_length = g->data_len;
    h->file_size = h->data_offset + h->data_length; /* append: bytes the header does not know */
    if (g->patch)
        g->patch(h);
    size_t total =
        4096 + (text_len + 4095) / 4096 * 4096 + g->data_len + g->append; /* as laid out before the patch */
    uint8_t *b = calloc(1, total);
    assert_non_null(b);
    anvil_engine_header_encode(h, b);
    memcpy(b + 4096, g->text, text_len);
    memcpy(b + total - g->append - g->data_len, g->data, g->data_len);
    if (g->flip)
        b[g->flip] ^= 1;
    if (g->cut > 0 && (size_t)g->cut < total)
        total = (size_t)g->cut;
    else if (g->cut < 0)
        total -= (size_t)-g->cut;
    if (g->empty)
        total = 0;
    *len = total;
    return b;
}

static void img_free(img *g)
{
    json_decref(g->m);
    free(g->text);
}

/* The cases. Each changes a valid image in one way. */
static void cut_in_header(img *g)
{
    g->cut = 40;
}
static void cut_in_header_reserve(img *g)
{
    g->cut = 2000;
}
static void cut_to_magic(img *g)
{
    g->cut = 5;
}
static void cut_to_nothing(img *g)
{
    g->empty = 1;
}
static void cut_in_manifest(img *g)
{
    g->cut = 4096 + 30;
}
static void cut_in_data(img *g)
{
    g->cut = -10;
}
static void appended(img *g)
{
    g->append = 4096;
}
static void wrong_magic(img *g)
{
    g->flip = 3; /* "ANVJLENG": and the checksum, but the magic is read first */
}
static void p_major2(anvil_engine_header *h)
{
    h->version_major = 2, h->version_minor = 3;
}
static void major2(img *g)
{
    g->patch = p_major2;
}
static void p_major0(anvil_engine_header *h)
{
    h->version_major = 0;
}
static void major0(img *g)
{
    g->patch = p_major0;
}
static void header_damaged(img *g)
{
    g->flip = 50; /* data_length, after the checksum was taken */
}
static void manifest_damaged(img *g)
{
    g->flip = 4096 + 20;
}
static void p_flags(anvil_engine_header *h)
{
    h->flags = 4;
}
static void flags(img *g)
{
    g->patch = p_flags;
}
static void p_m_outside(anvil_engine_header *h)
{
    h->manifest_length = h->file_size;
}
static void manifest_outside(img *g)
{
    g->patch = p_m_outside;
}
static void p_m_wrap(anvil_engine_header *h)
{
    h->manifest_offset = UINT64_MAX - 10;
}
static void manifest_wraps(img *g)
{
    g->patch = p_m_wrap;
}
static void p_m_in_header(anvil_engine_header *h)
{
    h->manifest_offset = 100;
}
static void manifest_in_header(img *g)
{
    g->patch = p_m_in_header;
}
static void p_hsize(anvil_engine_header *h)
{
    h->header_size = 20;
}
static void header_size_small(img *g)
{
    g->patch = p_hsize;
}
static void p_d_wrap(anvil_engine_header *h)
{
    h->data_length = UINT64_MAX - 100;
}
static void data_wraps(img *g)
{
    g->patch = p_d_wrap;
}
static void p_d_overlap(anvil_engine_header *h)
{
    h->data_offset = 4096, h->data_length += 4096;
}
static void data_overlaps_manifest(img *g)
{
    g->patch = p_d_overlap;
}
static void p_d_misaligned(anvil_engine_header *h)
{
    h->data_offset += 256, h->data_length -= 256;
}
static void data_misaligned(img *g)
{
    g->patch = p_d_misaligned;
}
static void p_d_before(anvil_engine_header *h)
{
    h->manifest_offset = 4096 + 256, h->manifest_length = 100, h->data_offset = 4096, h->data_length = 0;
}
static void data_before_manifest(img *g)
{
    g->patch = p_d_before;
}
static void p_m_empty(anvil_engine_header *h)
{
    h->manifest_length = 0;
}
static void manifest_empty(img *g)
{
    g->patch = p_m_empty;
}
static void not_json(img *g)
{
    g->text = strdup("{\"format\": \"anvil-engine\", \"tensors\": [}");
}
static void dup_key(img *g)
{
    g->text = strdup("{\"format\": \"anvil-engine\", \"format\": \"x\"}");
}
static void not_object(img *g)
{
    g->text = strdup("[1, 2, 3]");
}
static void no_tensors(img *g)
{
    json_object_del(g->m, "tensors");
}
static void tensors_object(img *g)
{
    json_object_set_new(g->m, "tensors", json_object());
}
static void wrong_format(img *g)
{
    json_object_set_new(g->m, "format", json_string("gguf"));
}
static void no_version(img *g)
{
    json_object_del(g->m, "format_version");
}
static void version_disagrees(img *g)
{
    json_object_set_new(g->m, "format_version", json_pack("[i, i]", 1, 1));
}
static void anvil_version_int(img *g)
{
    json_object_set_new(g->m, "anvil_version", json_integer(3));
}
static void entry_not_object(img *g)
{
    json_array_append_new(json_object_get(g->m, "tensors"), json_string("c"));
}
static void name_int(img *g)
{
    json_object_set_new(entry(g, 1), "name", json_integer(1));
}
static void name_empty(img *g)
{
    json_object_set_new(entry(g, 1), "name", json_string(""));
}
static void kind_unknown(img *g)
{
    json_object_set_new(entry(g, 1), "kind", json_string("q3_k"));
}
static void kind_missing(img *g)
{
    json_object_del(entry(g, 1), "kind");
}
static void shape_string(img *g)
{
    json_object_set_new(entry(g, 1), "shape", json_string("[8]"));
}
static void shape_empty(img *g)
{
    json_object_set_new(entry(g, 1), "shape", json_array());
}
static void shape_5d(img *g)
{
    json_object_set_new(entry(g, 1), "shape", json_pack("[i,i,i,i,i]", 1, 1, 1, 1, 8));
}
static void shape_zero(img *g)
{
    json_object_set_new(entry(g, 1), "shape", json_pack("[i, i]", 0, 8));
}
static void shape_negative(img *g)
{
    json_object_set_new(entry(g, 1), "shape", json_pack("[i, i]", -2, -4));
}
static void shape_real(img *g)
{
    json_object_set_new(entry(g, 1), "shape", json_pack("[f]", 8.0));
}
static void shape_overflow(img *g)
{
    json_object_set_new(entry(g, 1), "shape",
                        json_pack("[I, I, i]", (json_int_t)1 << 32, (json_int_t)1 << 32, 4));
}
static void shape_bytes_overflow(img *g)
{
    json_object_set_new(entry(g, 0), "shape",
                        json_pack("[I, i]", (json_int_t)1 << 61, 2)); /* f32: 2^64 bytes */
}
static void bytes_mismatch(img *g)
{
    json_object_set_new(entry(g, 1), "bytes", json_integer(32));
}
static void bytes_missing(img *g)
{
    json_object_del(entry(g, 1), "bytes");
}
static void offset_outside(img *g)
{
    json_object_set_new(entry(g, 1), "offset", json_integer(512));
}
static void offset_wraps(img *g)
{
    json_object_set_new(entry(g, 1), "offset", json_integer((json_int_t)(INT64_MAX / 256 * 256)));
}
static void offset_negative(img *g)
{
    json_object_set_new(entry(g, 1), "offset", json_integer(-256));
}
static void offset_misaligned(img *g)
{
    json_object_set_new(entry(g, 1), "offset", json_integer(128));
}
static void overlapping(img *g)
{
    json_object_set_new(entry(g, 0), "shape", json_pack("[i, i]", 8, 10)); /* 320 bytes: into "b" at 256 */
    json_object_set_new(entry(g, 0), "bytes", json_integer(320));
    g->data_len = 512; /* so that both lie inside the data section */
}
static void same_offset(img *g)
{
    json_object_set_new(entry(g, 1), "offset", json_integer(0));
}
static void duplicate_names(img *g)
{
    json_object_set_new(entry(g, 1), "name", json_string("a"));
}
static void xxh64_short(img *g)
{
    json_object_set_new(entry(g, 1), "xxh64", json_string("0123456789abcde"));
}
static void xxh64_not_hex(img *g)
{
    json_object_set_new(entry(g, 1), "xxh64", json_string("0123456789abcdeg"));
}
static void xxh64_int(img *g)
{
    json_object_set_new(entry(g, 1), "xxh64", json_integer(5));
}
static void scales_missing(img *g)
{
    json_object_set_new(entry(g, 1), "scales", json_pack("{s:s}", "tensor", "b.scales"));
}
static void scales_self(img *g)
{
    json_object_set_new(entry(g, 1), "scales", json_pack("{s:s}", "tensor", "b"));
}
static void scales_string(img *g)
{
    json_object_set_new(entry(g, 1), "scales", json_string("a"));
}
static void scales_no_tensor(img *g)
{
    json_object_set_new(entry(g, 1), "scales", json_object());
}

typedef struct bad_case {
    const char *name;
    void (*make)(img *g);
    anvil_status want;
    const char *needle;
} bad_case;

static const bad_case bad_cases[] = {
    {"cut_in_header", cut_in_header, ANVIL_ERR_FORMAT, "truncated: 40 bytes"},
    {"cut_in_header_reserve", cut_in_header_reserve, ANVIL_ERR_FORMAT,
     "truncated: 2000 bytes, but its header says"},
    {"cut_to_magic", cut_to_magic, ANVIL_ERR_FORMAT, "truncated: 5 bytes"},
    {"cut_to_nothing", cut_to_nothing, ANVIL_ERR_FORMAT, "truncated: 0 bytes"},
    {"cut_in_manifest", cut_in_manifest, ANVIL_ERR_FORMAT, "truncated: 4126 bytes"},
    {"cut_in_data", cut_in_data, ANVIL_ERR_FORMAT, "truncated"},
    {"appended", appended, ANVIL_ERR_FORMAT, "bytes were added after its end"},
    {"wrong_magic", wrong_magic, ANVIL_ERR_FORMAT, "not an anvil engine file"},
    {"major2", major2, ANVIL_ERR_UNSUPPORTED,
     "engine format 2.3; this anvil reads 1.x: rebuild it with `anvil build`"},
    {"major0", major0, ANVIL_ERR_UNSUPPORTED, "engine format 0.0; this anvil reads 1.x"},
    {"header_damaged", header_damaged, ANVIL_ERR_FORMAT, "header checksum mismatch"},
    {"manifest_damaged", manifest_damaged, ANVIL_ERR_FORMAT, "manifest checksum mismatch"},
    {"flags", flags, ANVIL_ERR_UNSUPPORTED, "header flags 0x00000004"},
    {"manifest_outside", manifest_outside, ANVIL_ERR_FORMAT, "the manifest (offset 4096"},
    {"manifest_wraps", manifest_wraps, ANVIL_ERR_FORMAT, "lies outside the file"},
    {"manifest_in_header", manifest_in_header, ANVIL_ERR_FORMAT,
     "the manifest (offset 100) overlaps the 4096-byte header"},
    {"header_size_small", header_size_small, ANVIL_ERR_FORMAT, "header size 20"},
    {"manifest_empty", manifest_empty, ANVIL_ERR_FORMAT, "the manifest is empty"},
    {"data_wraps", data_wraps, ANVIL_ERR_FORMAT, "the data section (offset 8192"},
    {"data_overlaps_manifest", data_overlaps_manifest, ANVIL_ERR_FORMAT, "overlap"},
    {"data_misaligned", data_misaligned, ANVIL_ERR_FORMAT, "not a multiple of 4096"},
    {"data_before_manifest", data_before_manifest, ANVIL_ERR_FORMAT, "comes before the manifest"},
    {"not_json", not_json, ANVIL_ERR_FORMAT, "manifest: malformed JSON"},
    {"dup_key", dup_key, ANVIL_ERR_FORMAT, "malformed JSON"},
    {"not_object", not_object, ANVIL_ERR_FORMAT, "the manifest must be a JSON object, got array"},
    {"no_tensors", no_tensors, ANVIL_ERR_FORMAT, "\"tensors\" must be an array, got absent"},
    {"tensors_object", tensors_object, ANVIL_ERR_FORMAT, "\"tensors\" must be an array, got object"},
    {"wrong_format", wrong_format, ANVIL_ERR_FORMAT, "\"format\" must be \"anvil-engine\""},
    {"no_version", no_version, ANVIL_ERR_FORMAT, "\"format_version\" must be [major, minor]"},
    {"version_disagrees", version_disagrees, ANVIL_ERR_FORMAT, "says format 1.1 but the header 1.0"},
    {"anvil_version_int", anvil_version_int, ANVIL_ERR_FORMAT,
     "\"anvil_version\" must be a string, got integer"},
    {"entry_not_object", entry_not_object, ANVIL_ERR_FORMAT, "tensors[2] must be an object, got string"},
    {"name_int", name_int, ANVIL_ERR_FORMAT, "tensors[1]: \"name\" must be a non-empty string"},
    {"name_empty", name_empty, ANVIL_ERR_FORMAT, "tensors[1]: \"name\" must be a non-empty string"},
    {"kind_unknown", kind_unknown, ANVIL_ERR_UNSUPPORTED,
     "tensor 'b': kind \"q3_k\" is not one this anvil knows"},
    {"kind_missing", kind_missing, ANVIL_ERR_FORMAT, "tensor 'b': \"kind\" must be a string, got absent"},
    {"shape_string", shape_string, ANVIL_ERR_FORMAT, "tensor 'b': \"shape\" must be an array"},
    {"shape_empty", shape_empty, ANVIL_ERR_FORMAT, "tensor 'b': 0 dimensions"},
    {"shape_5d", shape_5d, ANVIL_ERR_FORMAT, "tensor 'b': 5 dimensions"},
    {"shape_zero", shape_zero, ANVIL_ERR_FORMAT, "tensor 'b': \"shape\" holds 0, below 1"},
    {"shape_negative", shape_negative, ANVIL_ERR_FORMAT, "\"shape\" holds -2, below 1"},
    {"shape_real", shape_real, ANVIL_ERR_FORMAT, "\"shape\" must hold integers, got real"},
    {"shape_overflow", shape_overflow, ANVIL_ERR_FORMAT, "tensor 'b': shape is too large"},
    {"shape_bytes_overflow", shape_bytes_overflow, ANVIL_ERR_FORMAT, "tensor 'a': shape is too large"},
    {"bytes_mismatch", bytes_mismatch, ANVIL_ERR_FORMAT,
     "tensor 'b': shape [8] of bf16 needs 16 bytes but \"bytes\" is 32"},
    {"bytes_missing", bytes_missing, ANVIL_ERR_FORMAT, "tensor 'b': missing \"bytes\""},
    {"offset_outside", offset_outside, ANVIL_ERR_FORMAT,
     "tensor 'b': bytes [512, +16) lie outside the data section (272 bytes)"},
    {"offset_wraps", offset_wraps, ANVIL_ERR_FORMAT, "lie outside the data section"},
    {"offset_negative", offset_negative, ANVIL_ERR_FORMAT, "\"offset\" holds -256"},
    {"offset_misaligned", offset_misaligned, ANVIL_ERR_FORMAT,
     "tensor 'b': offset 128 is not a multiple of 256"},
    {"overlapping", overlapping, ANVIL_ERR_FORMAT, "tensors 'a' and 'b' overlap"},
    {"same_offset", same_offset, ANVIL_ERR_FORMAT, "tensors 'a' and 'b' overlap"},
    {"duplicate_names", duplicate_names, ANVIL_ERR_FORMAT, "tensor name 'a' appears twice"},
    {"xxh64_short", xxh64_short, ANVIL_ERR_FORMAT, "tensor 'b': \"xxh64\" must be a string of 16 hex digits"},
    {"xxh64_not_hex", xxh64_not_hex, ANVIL_ERR_FORMAT, "16 hex digits"},
    {"xxh64_int", xxh64_int, ANVIL_ERR_FORMAT, "16 hex digits"},
    {"scales_missing", scales_missing, ANVIL_ERR_FORMAT,
     "tensor 'b': its scales tensor 'b.scales' is not in the table"},
    {"scales_self", scales_self, ANVIL_ERR_FORMAT, "tensor 'b': names itself as its scales"},
    {"scales_string", scales_string, ANVIL_ERR_FORMAT, "\"scales\" must be an object, got string"},
    {"scales_no_tensor", scales_no_tensor, ANVIL_ERR_FORMAT,
     "\"scales\".\"tensor\" must be a string, got absent"},
};

/* Each bad file through the three ways in: read, mmap, memory image. */
static void test_bad_files(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof bad_cases / sizeof bad_cases[0]; c++) {
        const bad_case *bc = &bad_cases[c];
        img g;
        img_init(&g);
        bc->make(&g);
        size_t len;
        uint8_t *b = img_bytes(&g, &len);
        char name[128];
        snprintf(name, sizeof name, "%s.engine", bc->name);
        const char *path = tmp_path(name);
        anvil_test_write_file(path, b, len);
        for (int mode = 0; mode < 3; mode++) {
            anvil_engine_file *f = (anvil_engine_file *)0x1;
            anvil_status st = mode == 2
                                  ? anvil_engine_file_open_memory(b, len, &f)
                                  : anvil_engine_file_open(path, mode ? ANVIL_ST_MMAP : ANVIL_ST_READ, &f);
            if (st != bc->want || strstr(anvil_last_error(), bc->needle) == NULL)
                print_error("case %s, mode %d:\n", bc->name, mode);
            assert_status_msg(st, bc->want, bc->needle);
            assert_status_msg(st, bc->want, mode == 2 ? "<memory>" : name); /* the message names the file */
            assert_null(f);
        }
        free(b);
        img_free(&g);
    }
}

/* The unchanged image opens: the cases above fail for their one change. */
static void test_hand_made_valid(void **state)
{
    (void)state;
    img g;
    img_init(&g);
    json_object_set_new(entry(&g, 0), "scales", json_pack("{s:s, s:i}", "tensor", "b", "group_size", 128));
    json_object_set_new(entry(&g, 1), "zero_points", json_string("the builder's own key"));
    size_t len;
    uint8_t *b = img_bytes(&g, &len);
    anvil_engine_file *f = NULL;
    assert_int_equal(anvil_engine_file_open_memory(b, len, &f), ANVIL_OK);
    assert_int_equal(anvil_engine_file_count(f), 2);
    assert_int_equal(anvil_engine_file_tensor(f, 0)->scales, 1);
    assert_string_equal(
        json_string_value(json_object_get(anvil_engine_file_tensor(f, 1)->entry, "zero_points")),
        "the builder's own key");
    assert_int_equal(anvil_engine_file_verify(f, NULL, NULL), ANVIL_OK);
    anvil_engine_file_close(f);
    free(b);
    img_free(&g);
}

/* Not regular files: refused at once, never waited on. */
static void test_not_regular(void **state)
{
    (void)state;
    const char *fifo = tmp_path("fifo.engine");
    unlink(fifo);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    for (int mode = 0; mode < 2; mode++) {
        anvil_engine_file *f = (anvil_engine_file *)0x1;
        assert_status_msg(anvil_engine_file_open(fifo, mode ? ANVIL_ST_MMAP : ANVIL_ST_READ, &f),
                          ANVIL_ERR_IO, "fifo.engine is not a regular file");
        assert_null(f);
    }
    assert_false(anvil_engine_file_is_engine(fifo));
    unlink(fifo);
    anvil_engine_file *f = (anvil_engine_file *)0x1;
    assert_status_msg(anvil_engine_file_open(anvil_test_tmpdir(), ANVIL_ST_READ, &f), ANVIL_ERR_IO,
                      "is not a regular file");
    assert_null(f);
    assert_false(anvil_engine_file_is_engine(anvil_test_tmpdir()));
    assert_status_msg(anvil_engine_file_open(tmp_path("missing.engine"), ANVIL_ST_READ, &f),
                      ANVIL_ERR_NOT_FOUND, "missing.engine");
    assert_false(anvil_engine_file_is_engine(tmp_path("missing.engine")));
    assert_false(anvil_engine_file_is_engine(NULL));
    const char *st_path = tmp_path("model.safetensors");
    anvil_test_write_file(st_path, "\x02\0\0\0\0\0\0\0{}", 10);
    assert_false(anvil_engine_file_is_engine(st_path));
    assert_status_msg(anvil_engine_file_open(st_path, ANVIL_ST_READ, &f), ANVIL_ERR_FORMAT,
                      "not an anvil engine file");
    anvil_engine_file_close(NULL);
}

/* Read with pread: a file truncated after the open is an error at the next
 * read, and check_unchanged sees a file rewritten in place. */
static void test_changed_after_open(void **state)
{
    (void)state;
    const spec small[] = {
        {"a", ANVIL_ENGINE_KIND_F32, 2, {3, 5}, 60},
        {"b", ANVIL_ENGINE_KIND_BF16, 1, {1000}, 2000},
    };
    const char *path = tmp_path("changing.engine");
    write_specs(path, small, 2, NULL, 1, NULL);
    anvil_engine_file *f = NULL;
    assert_int_equal(anvil_engine_file_open(path, ANVIL_ST_READ, &f), ANVIL_OK);
    const anvil_engine_tensor *b = anvil_engine_file_find(f, "b");
    assert_int_equal(truncate(path, (off_t)b->offset + 100), 0);
    uint8_t buf[2000];
    assert_int_equal(anvil_engine_file_read(f, b->index, 0, buf, 100), ANVIL_OK);
    assert_status_msg(anvil_engine_file_read(f, b->index, 0, buf, 2000), ANVIL_ERR_IO,
                      "changed while in use");
    assert_status_msg(anvil_engine_file_verify(f, NULL, NULL), ANVIL_ERR_IO,
                      "changing.engine changed while in use");
    assert_status_msg(anvil_engine_file_check_unchanged(f), ANVIL_ERR_IO, "changed while it was read");
    assert_status_msg(anvil_engine_file_read(f, 7, 0, buf, 1), ANVIL_ERR_INVALID_ARG, "no tensor 7");
    anvil_engine_file_close(f);
    f = (anvil_engine_file *)0x1;
    assert_status_msg(anvil_engine_file_open(path, ANVIL_ST_READ, &f), ANVIL_ERR_FORMAT, "truncated");
    assert_null(f);
}

/* ----------------------------------------------------- fuzzer seeds */

/* The seeds of tests/fuzz/corpus/engine_file/: small valid engines (they
 * must open and verify) and a few damaged ones (they must not). Written by
 * this function when ANVIL_UPDATE_SEEDS is set (run from the source root:
 * ANVIL_UPDATE_SEEDS=1 build-eng/tests/test_engine_file), else checked. */
static void write_seed(const char *dir, const char *name, const spec *specs, int64_t n, int scales, json_t *m)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    anvil_engine_writer *w = NULL;
    assert_int_equal(anvil_engine_writer_create(path, &w), ANVIL_OK);
    for (int64_t i = 0; i < n; i++)
        assert_int_equal(anvil_engine_writer_add_tensor(w, specs[i].name, specs[i].kind, specs[i].n_dims,
                                                        specs[i].shape, NULL),
                         ANVIL_OK);
    if (scales)
        assert_int_equal(anvil_engine_writer_set_scales(w, 0, n - 1), ANVIL_OK);
    fill_ctx fc = {.fail_index = -1};
    assert_int_equal(anvil_engine_writer_finish(w, m, fill_pattern, &fc, 1, NULL, NULL), ANVIL_OK);
    json_decref(m);
}

static void write_seeds(const char *dir)
{
    const spec one[] = {{"w", ANVIL_ENGINE_KIND_F32, 2, {2, 3}, 24}};
    const spec kinds[] = {
        {"q", ANVIL_ENGINE_KIND_INT4, 2, {3, 5}, 8},        {"e", ANVIL_ENGINE_KIND_BF16, 1, {5}, 10},
        {"h", ANVIL_ENGINE_KIND_F16, 3, {1, 2, 2}, 8},      {"f8", ANVIL_ENGINE_KIND_FP8_E4M3, 1, {3}, 3},
        {"i8", ANVIL_ENGINE_KIND_INT8, 4, {1, 1, 1, 2}, 2}, {"q.scales", ANVIL_ENGINE_KIND_F32, 1, {3}, 12},
    };
    write_seed(dir, "valid_one_f32", one, 1, 0, NULL);
    write_seed(dir, "valid_all_kinds", kinds, 6, 1,
               json_pack("{s:{s:s, s:i}, s:[s], s:s}", "config", "architectures", "LlamaForCausalLM",
                         "hidden_size", 8, "ops", "linear", "chat_template", "{{ x }}"));
    write_seed(dir, "valid_empty", NULL, 0, 0, NULL);
    /* a damaged tensor: opens, fails verify */
    char src[1024], dst[1024];
    snprintf(src, sizeof src, "%s/valid_one_f32", dir);
    snprintf(dst, sizeof dst, "%s/damaged_tensor", dir);
    size_t len;
    uint8_t *b = read_all(src, &len);
    b[len - 1] ^= 0x40;
    anvil_test_write_file(dst, b, len);
    free(b);
    /* hand-made: overlapping tensors behind consistent checksums */
    img g;
    img_init(&g);
    overlapping(&g);
    b = img_bytes(&g, &len);
    snprintf(dst, sizeof dst, "%s/overlap", dir);
    anvil_test_write_file(dst, b, len);
    free(b);
    img_free(&g);
}

static void test_fuzz_seeds(void **state)
{
    (void)state;
    const char *src = getenv("ANVIL_SOURCE_DIR");
    char dir[900];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/engine_file", src && *src ? src : ".");
    if (getenv("ANVIL_UPDATE_SEEDS") != NULL) {
        mkdir(dir, 0755);
        write_seeds(dir);
    }
    static const struct {
        const char *name;
        int opens, verifies;
    } seeds[] = {
        {"valid_one_f32", 1, 1},  {"valid_all_kinds", 1, 1}, {"valid_empty", 1, 1},
        {"damaged_tensor", 1, 0}, {"overlap", 0, 0},
    };
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        char path[1100];
        snprintf(path, sizeof path, "%s/%s", dir, seeds[i].name);
        if (!exists(path))
            fail_msg("%s is missing: run ANVIL_UPDATE_SEEDS=1 test_engine_file from the source root", path);
        anvil_engine_file *f = NULL;
        anvil_status st = anvil_engine_file_open(path, ANVIL_ST_MMAP, &f);
        assert_int_equal(st == ANVIL_OK, seeds[i].opens);
        if (f != NULL)
            assert_int_equal(anvil_engine_file_verify(f, NULL, NULL) == ANVIL_OK, seeds[i].verifies);
        anvil_engine_file_close(f);
    }
}

/* ---------------------------------------------------------- perf mode */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Writes an engine of mb MB of random bf16 tensors (Llama-like sizes, 4 to
 * 64 MiB) with 1, 2, 1 and 2 threads (alternating, since each write competes
 * with the writeback of the one before; nothing is synced: the time to the
 * rename, as a build sees it), then verifies it: cold from the disk with
 * pread, warm with pread, warm mapped. */
static int perf(long mb)
{
    const char *path = tmp_path("perf.engine");
    const size_t total = (size_t)mb << 20;
    for (int run = 0; run < 4; run++) {
        int threads = 1 + run % 2;
        unlink(path);
        anvil_engine_writer *w = NULL;
        if (anvil_engine_writer_create(path, &w) != ANVIL_OK)
            return fprintf(stderr, "%s\n", anvil_last_error()), 1;
        size_t sum = 0;
        for (int i = 0; sum < total; i++) {
            int64_t rows = (i % 4 == 0) ? 8192 : (i % 4 == 1) ? 1024 : 512, shape[2] = {rows, 4096};
            char name[64];
            snprintf(name, sizeof name, "layers.%d.w", i);
            anvil_engine_writer_add_tensor(w, name, ANVIL_ENGINE_KIND_BF16, 2, shape, NULL);
            sum += (size_t)rows * 4096 * 2;
        }
        fill_ctx fc = {.fail_index = -1, .random = 1};
        double t0 = now_s();
        anvil_status st = anvil_engine_writer_finish(w, NULL, fill_pattern, &fc, threads, NULL, NULL);
        double dt = now_s() - t0;
        if (st != ANVIL_OK)
            return fprintf(stderr, "%s\n", anvil_last_error()), 1;
        printf("write %zu MB, %d thread(s): %.2f s, %.0f MB/s (random fill included)\n", sum >> 20, threads,
               dt, (double)sum / 1048576.0 / dt);
    }
    { /* the fill callback alone, one thread: what the writer cannot beat */
        fill_ctx fc = {.fail_index = -1, .random = 1};
        uint8_t *buf = malloc(ANVIL_ENGINE_CHUNK);
        double t0 = now_s();
        for (size_t off = 0; buf != NULL && off < total; off += ANVIL_ENGINE_CHUNK)
            fill_pattern(&fc, 0, off, buf, ANVIL_ENGINE_CHUNK);
        printf("random fill alone, 1 thread: %.0f MB/s\n", (double)total / 1048576.0 / (now_s() - t0));
        free(buf);
    }
    /* mode 0: cold (the file's pages written back and dropped from the page
     * cache, for this file only), 1: pread warm, 2: mmap warm */
    for (int mode = 0; mode < 3; mode++) {
        if (mode == 0) {
            int fd = open(path, O_RDONLY);
            if (fd < 0 || fdatasync(fd) != 0 || posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0)
                return fprintf(stderr, "cannot drop %s from the page cache\n", path), 1;
            close(fd);
        }
        anvil_engine_file *f = NULL;
        if (anvil_engine_file_open(path, mode == 2 ? ANVIL_ST_MMAP : ANVIL_ST_READ, &f) != ANVIL_OK)
            return fprintf(stderr, "%s\n", anvil_last_error()), 1;
        double t0 = now_s();
        anvil_status st = anvil_engine_file_verify(f, NULL, NULL);
        double dt = now_s() - t0;
        size_t bytes = (size_t)anvil_engine_file_header(f)->data_length;
        anvil_engine_file_close(f);
        if (st != ANVIL_OK)
            return fprintf(stderr, "%s\n", anvil_last_error()), 1;
        static const char *how[] = {"pread, cold cache", "pread, warm cache", "mmap, warm cache"};
        printf("verify %s: %.2f s, %.0f MB/s\n", how[mode], dt, (double)bytes / 1048576.0 / dt);
    }
    unlink(path);
    return 0;
}

int main(void)
{
    const char *perf_mb = getenv("ANVIL_ENGINE_PERF_MB");
    if (perf_mb != NULL && atol(perf_mb) > 0)
        return perf(atol(perf_mb));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_empty_engine),
        cmocka_unit_test(test_verify_finds_damage),
        cmocka_unit_test(test_cancel_leaves_nothing),
        cmocka_unit_test(test_failing_fill_leaves_nothing),
        cmocka_unit_test(test_existing_file_survives),
        cmocka_unit_test(test_writer_bad_args),
        cmocka_unit_test(test_kinds),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_hand_made_valid),
        cmocka_unit_test(test_not_regular),
        cmocka_unit_test(test_changed_after_open),
        cmocka_unit_test(test_fuzz_seeds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
