/*
 * Step graphs and the device argmax on CUDA.
 *
 *  - argmax_rows against the host's greedy pick (`>`, the lowest column on
 *    ties; -1 for a row with a NaN or +inf) for f32/bf16/f16 rows of odd
 *    and aligned widths with planted ties and a poisoned row.
 *  - The runtime with graphs (the default) against the same runtime with
 *    no_cuda_graphs, on batches of decode steps (three sequences, then
 *    two, contexts crossing a graph's context bucket): the logits must be
 *    identical bit for bit (the graph launches the same kernels with the
 *    same arguments), and graphs must really have been recorded and
 *    replayed. Then anvil_runtime_forward_greedy (through graphs, with the
 *    argmax in them) must give the argmax of those logits.
 *
 * Skips when no CUDA device is present.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/runtime.h"
#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "testutil.h"

#define NEED_GPU()                              \
    do {                                        \
        if (anvil_cuda_device_count() == 0)     \
            skip();                             \
    } while (0)

static int32_t host_argmax(const float *row, int64_t n)
{
    return anvil_greedy_pick(row, (int32_t)n);
}

static void test_argmax_rows(void **state)
{
    (void)state;
    NEED_GPU();
    const anvil_dtype dts[3] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};
    const int64_t widths[5] = {1, 7, 1000, 4099, 128256};
    uint64_t rng = 99;
    for (int di = 0; di < 3; di++) {
        anvil_backend *be = NULL;
        assert_int_equal(anvil_backend_cuda_create(0, dts[di], &be), ANVIL_OK);
        for (int wi = 0; wi < 5; wi++) {
            const int64_t cols = widths[wi], rows = 5;
            const size_t es = anvil_dtype_size(dts[di]);
            float *f = malloc((size_t)(rows * cols) * sizeof *f);
            void *h = malloc((size_t)(rows * cols) * es);
            assert_true(f && h);
            for (int64_t i = 0; i < rows * cols; i++)
                f[i] = anvil_test_randf(&rng) * 8.0f;
            /* ties: row 1 has its max twice, row 2 is constant, row 3 has it at the end */
            if (cols > 3) {
                f[1 * cols + 2] = 100.0f;
                f[1 * cols + cols - 1] = 100.0f;
                f[3 * cols + cols - 1] = 100.0f;
            }
            for (int64_t c = 0; c < cols; c++)
                f[2 * cols + c] = -3.0f;
            f[4 * cols + cols / 2] = wi % 2 ? NAN : INFINITY; /* row 4: poisoned */
            anvil_convert_from_f32(dts[di], f, h, rows * cols);
            anvil_convert_to_f32(dts[di], h, f, rows * cols); /* the values the device sees */
            void *x = NULL, *ids = NULL;
            assert_int_equal(be->ops->alloc(be, (size_t)(rows * cols) * es, &x), ANVIL_OK);
            assert_int_equal(be->ops->alloc(be, (size_t)rows * 4, &ids), ANVIL_OK);
            assert_int_equal(be->ops->upload(be, x, h, (size_t)(rows * cols) * es), ANVIL_OK);
            anvil_tensor t = anvil_tensor_2d(dts[di], rows, cols, x);
            assert_int_equal(be->ops->argmax_rows(be, &t, ids), ANVIL_OK);
            int32_t got[5];
            assert_int_equal(be->ops->download(be, got, ids, sizeof got), ANVIL_OK);
            for (int64_t r = 0; r < rows; r++) {
                const int32_t want = host_argmax(f + r * cols, cols);
                if (r == 4)
                    assert_int_equal(want, -1);
                if (got[r] != want)
                    fail_msg("argmax %s width %lld row %lld: %d, host %d", anvil_dtype_name(dts[di]),
                             (long long)cols, (long long)r, got[r], want);
            }
            be->ops->free(be, x);
            be->ops->free(be, ids);
            free(f);
            free(h);
        }
        anvil_backend_free(be);
    }
}

static anvil_runtime *load(const char *model, anvil_dtype wdt, int graphs)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/%s", anvil_test_shared_dir(), model);
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.no_cuda_graphs = !graphs;
    o.device = "cuda";
    o.weight_dtype = wdt;
    o.max_num_tokens = 256;
    o.max_batch_size = 4;
    o.kv_block_size = 16;
    o.kv_cache_tokens = 1024;
    o.max_seq_len = 256;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(dir, &o, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", model, anvil_last_error());
    return rt;
}

#define NS 3
#define MB 16 /* blocks per sequence: 256 positions */
#define STEPS 40

/* One step of `n` sequences (those of `live`), each bringing tokens
 * [pos[s], pos[s] + len[s]) of its own; logits (or greedy ids) for each
 * sequence's last token. */
static void step(anvil_runtime *rt, int n, const int *live, int32_t (*toks)[256], const int32_t *pos,
                 const int32_t *len, int32_t (*tables)[MB], float *logits, int32_t *ids)
{
    int32_t tok[256], ps[256], starts[NS + 1], tab[NS * MB], rows[NS];
    int32_t T = 0;
    for (int i = 0; i < n; i++) {
        const int s = live[i];
        starts[i] = T;
        for (int32_t j = 0; j < len[s]; j++) {
            tok[T] = toks[s][pos[s] + j];
            ps[T] = pos[s] + j;
            T++;
        }
        rows[i] = T - 1;
        memcpy(tab + i * MB, tables[s], sizeof tables[s]);
    }
    starts[n] = T;
    anvil_batch b = {.n_tokens = T, .token_ids = tok, .positions = ps, .n_seqs = n, .seq_starts = starts,
                     .block_tables = tab, .max_blocks_per_seq = MB, .n_logits = n, .logit_rows = rows};
    anvil_status st = ids ? anvil_runtime_forward_greedy(rt, &b, ids) : anvil_runtime_forward(rt, &b, logits);
    if (st != ANVIL_OK)
        fail_msg("forward: %s", anvil_last_error());
}

static void run_graph_case(const char *model, anvil_dtype wdt)
{
    anvil_runtime *eager = load(model, wdt, 0), *graph = load(model, wdt, 1);
    const int64_t vocab = anvil_runtime_config(eager)->vocab_size;
    const int32_t plen[NS] = {50, 61, 37}; /* contexts cross the 64-position bucket while decoding */
    int32_t toks[NS][256];
    uint64_t rng = 5;
    for (int s = 0; s < NS; s++)
        for (int j = 0; j < plen[s]; j++)
            toks[s][j] = (int32_t)(anvil_test_rand(&rng) % (uint64_t)vocab);
    int32_t tab_e[NS][MB], tab_g[NS][MB];
    for (int s = 0; s < NS; s++) {
        assert_int_equal(anvil_runtime_kv_alloc(eager, MB, tab_e[s]), ANVIL_OK);
        assert_int_equal(anvil_runtime_kv_alloc(graph, MB, tab_g[s]), ANVIL_OK);
    }
    float *le = malloc((size_t)(NS * vocab) * sizeof *le), *lg = malloc((size_t)(NS * vocab) * sizeof *lg);
    int32_t (*want)[NS] = calloc(STEPS, sizeof *want);
    assert_true(le && lg && want);
    unsigned long long rec0, rep0, rec1, rep1;
    anvil_cuda_graph_counts(&rec0, &rep0);

    /* prefill (no graph: not a decode step), then decode steps */
    int live[NS] = {0, 1, 2}, n = NS;
    int32_t pos[NS] = {0, 0, 0}, len[NS];
    memcpy(len, plen, sizeof len);
    for (int it = 0; it <= STEPS; it++) {
        if (it == STEPS / 2) { /* sequence 1 leaves: a batch of two from here */
            live[1] = 2;
            n = 2;
        }
        step(eager, n, live, toks, pos, len, tab_e, le, NULL);
        step(graph, n, live, toks, pos, len, tab_g, lg, NULL);
        for (int i = 0; i < n; i++) {
            const int s = live[i];
            for (int64_t c = 0; c < vocab; c++) {
                if (memcmp(&le[i * vocab + c], &lg[i * vocab + c], sizeof(float)) != 0)
                    fail_msg("%s %s step %d seq %d logit %lld: eager %.9g, graph %.9g", model,
                             anvil_dtype_name(wdt), it, s, (long long)c, le[i * vocab + c], lg[i * vocab + c]);
            }
            const int32_t next = host_argmax(le + i * vocab, vocab);
            if (it < STEPS)
                want[it][s] = next;
            pos[s] += len[s];
            len[s] = 1;
            toks[s][pos[s]] = next;
        }
    }
    anvil_cuda_graph_counts(&rec1, &rep1);
    printf("  %s %s: %llu graphs recorded, %llu replayed\n", model, anvil_dtype_name(wdt), rec1 - rec0,
           rep1 - rep0);
    /* keys: 3 and 2 sequences, contexts <= 64 and <= 128 (some of them) */
    assert_true(rec1 - rec0 >= 2);
    assert_true(rep1 - rep0 >= STEPS / 2);

    /* greedy through graphs on the same trajectory: a fresh cache, the same tokens */
    for (int s = 0; s < NS; s++)
        anvil_runtime_kv_release(graph, MB, tab_g[s]);
    for (int s = 0; s < NS; s++)
        assert_int_equal(anvil_runtime_kv_alloc(graph, MB, tab_g[s]), ANVIL_OK);
    live[1] = 1;
    n = NS;
    memset(pos, 0, sizeof pos);
    memcpy(len, plen, sizeof len);
    for (int it = 0; it < STEPS; it++) {
        if (it == STEPS / 2) {
            live[1] = 2;
            n = 2;
        }
        int32_t ids[NS];
        step(graph, n, live, toks, pos, len, tab_g, NULL, ids);
        for (int i = 0; i < n; i++) {
            const int s = live[i];
            if (ids[i] != want[it][s])
                fail_msg("%s greedy step %d seq %d: %d, argmax of the logits %d", model, it, s, ids[i], want[it][s]);
            pos[s] += len[s];
            len[s] = 1;
        }
    }
    anvil_cuda_graph_counts(&rec0, &rep0);
    printf("  %s %s greedy: %llu graphs recorded, %llu replayed\n", model, anvil_dtype_name(wdt), rec0 - rec1,
           rep0 - rep1);
    assert_true(rep0 - rep1 >= STEPS / 2);
    free(le);
    free(lg);
    free(want);
    anvil_runtime_free(eager);
    anvil_runtime_free(graph);
}

static void test_graph_stories_f32(void **state)
{
    (void)state;
    NEED_GPU();
    run_graph_case("stories260K", ANVIL_DTYPE_F32);
}

/* head_dim 32: the tensor-core decode kernel inside the graphs */
static void test_graph_qwen3_bf16(void **state)
{
    (void)state;
    NEED_GPU();
    run_graph_case("tiny-qwen3", ANVIL_DTYPE_BF16);
}

/* head_dim 64, GQA 3 */
static void test_graph_tinycode_f16(void **state)
{
    (void)state;
    NEED_GPU();
    run_graph_case("tinycode", ANVIL_DTYPE_F16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_argmax_rows),
        cmocka_unit_test(test_graph_stories_f32),
        cmocka_unit_test(test_graph_qwen3_bf16),
        cmocka_unit_test(test_graph_tinycode_f16),
    };
    return anvil_test_run_group(tests);
}
