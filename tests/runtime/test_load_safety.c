/*
 * What a served model must survive (issue 11):
 *  - weights are read into memory by default: truncating the checkpoint
 *    after the load changes nothing (the same logits, no SIGBUS), and the
 *    mapped path (use_mmap) gives the same logits as the read one;
 *  - a NaN or infinity in a weight fails the load naming the tensor and
 *    the element (unless no_weight_check); an f32 weight that overflows
 *    f16 on conversion too;
 *  - the progress callback sees every byte, in order, and a nonzero return
 *    cancels the load with ANVIL_ERR_CANCELLED, leaking nothing (ASan);
 *  - finite weights that still give non-finite logits (a norm scaled to
 *    1e38) end the request with an error naming the step, on the
 *    executor's device-sampling path, its host path (logprobs) and beams,
 *    and in anvil_generate: never token 0 with logprob -9999.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "anvil/executor.h"
#include "anvil/generate.h"
#include "anvil/runtime.h"
#include "io/safetensors.h"
#include "testutil.h"

/* What to write instead of a tensor's data (f32 values). */
typedef struct poison {
    const char *tensor;
    int64_t element;  /* -1: every element */
    float value;
} poison;

/* A copy of stories260K (config, tokenizer, weights) in tmp/<name>, with
 * one tensor's elements set to p->value (p may be NULL). */
static const char *make_model(const char *name, const poison *p)
{
    static char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", anvil_test_tmpdir(), name);
    mkdir(dir, 0755);
    static const char *const files[] = {"config.json", "tokenizer.json", "tokenizer_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char src[512], dst[600];
        snprintf(src, sizeof src, "%s/models/stories260K/%s", anvil_test_shared_dir(), files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        FILE *f = fopen(src, "rb");
        assert_non_null(f);
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        char *buf = malloc((size_t)n + 1);
        assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
        fclose(f);
        anvil_test_write_file(dst, buf, (size_t)n);
        free(buf);
    }
    char src[512], dst[600];
    snprintf(src, sizeof src, "%s/models/stories260K/model.safetensors", anvil_test_shared_dir());
    anvil_safetensors *f = NULL;
    assert_int_equal(anvil_safetensors_open(src, &f), ANVIL_OK);
    const int64_t n = anvil_safetensors_count(f);
    anvil_st_tensor *ts = calloc((size_t)n, sizeof *ts);
    float *copy = NULL;
    for (int64_t i = 0; i < n; i++) {
        ts[i] = *anvil_safetensors_at(f, i);
        if (p && strcmp(ts[i].name, p->tensor) == 0) {
            assert_int_equal(ts[i].dtype, ANVIL_DTYPE_F32);
            copy = malloc(ts[i].nbytes);
            memcpy(copy, ts[i].data, ts[i].nbytes);
            const int64_t m = (int64_t)(ts[i].nbytes / 4);
            for (int64_t k = 0; k < m; k++)
                if (p->element < 0 || k == p->element)
                    copy[k] = p->value;
            ts[i].data = copy;
        }
    }
    assert_true(p == NULL || copy != NULL);
    snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
    assert_int_equal(anvil_safetensors_write(dst, ts, n), ANVIL_OK);
    free(copy);
    free(ts);
    anvil_safetensors_close(f);
    return dir;
}

static void small_options(anvil_runtime_options *o)
{
    anvil_runtime_options_default(o);
    o->n_threads = 2;
    o->max_num_tokens = 64;
    o->max_batch_size = 8;
    o->kv_block_size = 16;
    o->kv_cache_tokens = 16 * 64;
}

/* Logits of one prefill of a fixed prompt. */
static void prompt_logits(anvil_runtime *rt, float *out)
{
    const int32_t ids[6] = {1, 403, 407, 261, 32, 77};
    int32_t pos[6], blocks[1], starts[2] = {0, 6}, row = 5;
    for (int i = 0; i < 6; i++)
        pos[i] = i;
    assert_int_equal(anvil_runtime_kv_alloc(rt, 1, blocks), ANVIL_OK);
    anvil_batch b = {.n_tokens = 6, .token_ids = ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                     .block_tables = blocks, .max_blocks_per_seq = 1, .n_logits = 1, .logit_rows = &row};
    assert_int_equal(anvil_runtime_forward(rt, &b, out), ANVIL_OK);
    anvil_runtime_kv_release(rt, 1, blocks);
}

static void test_truncated_after_load(void **st)
{
    (void)st;
    const char *dir = make_model("trunc", NULL);
    anvil_runtime_options o;
    small_options(&o);
    anvil_runtime *rt = NULL, *mapped = NULL;
    assert_int_equal(anvil_runtime_load(dir, &o, &rt), ANVIL_OK);
    o.use_mmap = 1;
    assert_int_equal(anvil_runtime_load(dir, &o, &mapped), ANVIL_OK);
    const int64_t V = anvil_runtime_config(rt)->vocab_size;
    float *before = malloc((size_t)V * 4), *after = malloc((size_t)V * 4), *via_map = malloc((size_t)V * 4);
    prompt_logits(rt, before);
    prompt_logits(mapped, via_map);
    assert_memory_equal(before, via_map, (size_t)V * 4); /* read and mapped weights are the same */
    anvil_runtime_free(mapped); /* a mapped runtime must not outlive the truncation (SIGBUS) */
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(truncate(path, 100), 0);
    prompt_logits(rt, after);
    assert_memory_equal(before, after, (size_t)V * 4);
    anvil_runtime_free(rt);
    /* loading it again is an error naming the file */
    rt = (anvil_runtime *)0x1;
    o.use_mmap = 0;
    assert_status_msg(anvil_runtime_load(dir, &o, &rt), ANVIL_ERR_FORMAT, "model.safetensors");
    assert_null(rt);
    free(before);
    free(after);
    free(via_map);
}

static void test_nonfinite_weights(void **st)
{
    (void)st;
    static const struct {
        poison p;
        const char *want;
    } cases[] = {
        {{"model.layers.2.mlp.up_proj.weight", 77, NAN}, "tensor 'model.layers.2.mlp.up_proj.weight' holds NaN at element 77"},
        {{"model.embed_tokens.weight", 0, INFINITY}, "tensor 'model.embed_tokens.weight' holds +inf at element 0"},
        {{"model.norm.weight", 5, -INFINITY}, "holds -inf at element 5"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "poison%zu", i);
        const char *dir = make_model(name, &cases[i].p);
        anvil_runtime_options o;
        small_options(&o);
        for (int mmap = 0; mmap < 2; mmap++) {
            o.use_mmap = mmap;
            anvil_runtime *rt = (anvil_runtime *)0x1;
            assert_status_msg(anvil_runtime_load(dir, &o, &rt), ANVIL_ERR_FORMAT, cases[i].want);
            assert_null(rt);
        }
        /* the check can be turned off */
        o.no_weight_check = 1;
        anvil_runtime *rt = NULL;
        assert_int_equal(anvil_runtime_load(dir, &o, &rt), ANVIL_OK);
        anvil_runtime_free(rt);
    }
    /* finite in f32, infinite in f16: caught after the conversion */
    const poison big = {"model.layers.0.self_attn.q_proj.weight", 3, 1e6f};
    const char *dir = make_model("overflow", &big);
    anvil_runtime_options o;
    small_options(&o);
    o.weight_dtype = ANVIL_DTYPE_F16;
    anvil_runtime *rt = (anvil_runtime *)0x1;
    assert_status_msg(anvil_runtime_load(dir, &o, &rt), ANVIL_ERR_FORMAT, "holds +inf at element 3");
    o.weight_dtype = ANVIL_DTYPE_BF16; /* bf16 holds it */
    assert_int_equal(anvil_runtime_load(dir, &o, &rt), ANVIL_OK);
    anvil_runtime_free(rt);
}

typedef struct progress_log {
    size_t last, total;
    int calls, stop_at, monotone;
} progress_log;

static int on_progress(void *user, size_t done, size_t total)
{
    progress_log *p = user;
    p->monotone &= done >= p->last && done <= total && (p->total == 0 || p->total == total);
    p->last = done;
    p->total = total;
    p->calls++;
    return p->stop_at > 0 && p->calls >= p->stop_at;
}

static void test_progress_and_cancel(void **st)
{
    (void)st;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/stories260K", anvil_test_shared_dir());
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    for (int mmap = 0; mmap < 2; mmap++) {
        anvil_runtime_options o;
        small_options(&o);
        o.use_mmap = mmap;
        progress_log p = {.monotone = 1};
        o.progress = on_progress;
        o.progress_user = &p;
        anvil_runtime *rt = NULL;
        assert_int_equal(anvil_runtime_load(dir, &o, &rt), ANVIL_OK);
        assert_true(p.monotone);
        assert_true(p.calls >= 1); /* the load's threads report; the callback runs every few ms and at the end */
        assert_int_equal(p.last, p.total); /* every byte, once */
        assert_true(p.total > 0 && p.total <= (size_t)sb.st_size);
        anvil_runtime_free(rt);
        /* cancelled at the first report (mid-load for tinycode's 24 MB:
         * the threads stop, everything made so far is freed) */
        for (int m = 0; m < 2; m++) {
            char d2[512];
            snprintf(d2, sizeof d2, "%s/models/%s", anvil_test_shared_dir(), m ? "tinycode" : "stories260K");
            progress_log q = {.monotone = 1, .stop_at = 1};
            o.progress_user = &q;
            rt = (anvil_runtime *)0x1;
            assert_status_msg(anvil_runtime_load(d2, &o, &rt), ANVIL_ERR_CANCELLED, "cancelled");
            assert_null(rt);
            assert_int_equal(q.calls, 1); /* stopped at once: no report after the nonzero return */
        }
    }
}

/* ---------------------------------------------------------------- non-finite logits */

static anvil_result *run_one(anvil_executor *ex, float temperature, int32_t logprobs, int32_t beams)
{
    anvil_request r;
    anvil_request_init(&r);
    r.prompt = "Once upon a time";
    r.max_tokens = 8;
    r.sampling.temperature = temperature;
    r.logprobs = logprobs;
    r.beam_width = beams;
    r.has_seed = 1;
    r.sampling.seed = 3;
    anvil_result *res = NULL;
    assert_int_equal(anvil_executor_generate(ex, &r, &res), ANVIL_OK);
    return res;
}

static void test_nonfinite_logits(void **st)
{
    (void)st;
    /* finite weights, infinite activations: the final norm's scale at 1e38 */
    const poison p = {"model.norm.weight", -1, 1e38f};
    const char *dir = make_model("hugenorm", &p);
    anvil_runtime_options o;
    small_options(&o);
    anvil_runtime *rt = NULL;
    anvil_tokenizer *tok = NULL;
    assert_int_equal(anvil_runtime_load(dir, &o, &rt), ANVIL_OK);
    assert_int_equal(anvil_tokenizer_load(dir, &tok), ANVIL_OK);
    /* the plain loop, and the overlap scheduler (a launched step's poisoned
     * row feeds token 0 to the next launched step; the request fails when
     * the row is taken, the next step's slot is dropped) */
    for (int overlap = 0; overlap < 2; overlap++) {
        anvil_executor_options eo;
        anvil_executor_options_default(&eo);
        eo.enable_overlap = overlap ? ANVIL_OVERLAP_ALWAYS : ANVIL_OVERLAP_OFF;
        anvil_executor *ex = NULL;
        assert_int_equal(anvil_executor_create(rt, tok, &eo, &ex), ANVIL_OK);
        /* greedy and sampled on the backend's sampler, logprobs on the host's, beams */
        const struct {
            float t;
            int32_t lp, beams;
        } how[] = {{0.0f, -1, 1}, {0.8f, -1, 1}, {0.0f, 2, 1}, {0.0f, -1, 3}};
        for (size_t i = 0; i < sizeof how / sizeof how[0]; i++) {
            anvil_result *res = run_one(ex, how[i].t, how[i].lp, how[i].beams);
            assert_int_equal(res->finish, ANVIL_REQUEST_ERROR);
            assert_int_equal(res->status, ANVIL_ERR_FORMAT);
            if (strstr(res->error, "non-finite logits") == NULL || strstr(res->error, "at step") == NULL)
                fail_msg("overlap %d, case %zu: %s", overlap, i, res->error);
            for (int32_t s = 0; s < res->n_sequences; s++)
                assert_int_equal(res->sequences[s].n_tokens, 0); /* nothing sampled from garbage */
            anvil_result_free(res);
        }
        anvil_executor_metrics m; /* every block back (the snapshot follows the step that ended it) */
        for (int k = 0; k < 10000; k++) {
            assert_int_equal(anvil_executor_stats(ex, &m), ANVIL_OK);
            if (m.running == 0 && m.queued == 0)
                break;
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        assert_int_equal(m.kv_blocks_used, 0);
        anvil_executor_free(ex);
    }
    /* anvil_generate */
    const int32_t prompt[3] = {1, 403, 407};
    anvil_generate_params gp = {.max_tokens = 4};
    anvil_sampling_params_default(&gp.sampling);
    int32_t out[4], n_out = -1;
    assert_status_msg(anvil_generate(rt, prompt, 3, &gp, NULL, NULL, out, &n_out, NULL), ANVIL_ERR_FORMAT,
                      "non-finite logits");
    assert_int_equal(n_out, 0);
    anvil_tokenizer_free(tok);
    anvil_runtime_free(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_truncated_after_load), cmocka_unit_test(test_nonfinite_weights),
        cmocka_unit_test(test_progress_and_cancel),  cmocka_unit_test(test_nonfinite_logits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
