/*
 * Helpers shared by the executor tests: loading a model with small limits,
 * reading the golden cases, running requests to completion, collecting
 * streamed events.
 */
#ifndef ANVIL_TESTS_EXEC_TESTKIT_H
#define ANVIL_TESTS_EXEC_TESTKIT_H

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/executor.h"
#include "anvil/runtime.h"
#include "anvil/tokenizer.h"
#include "testutil.h"

#define KIT_OK(expr)                                                  \
    do {                                                              \
        anvil_status kit_st_ = (expr);                                \
        if (kit_st_ != ANVIL_OK)                                      \
            fail_msg("%s: %s", #expr, anvil_last_error());            \
    } while (0)

static inline void kit_rt_options(anvil_runtime_options *o)
{
    anvil_runtime_options_default(o);
    o->n_threads = 2;
    o->max_num_tokens = 64;
    o->max_batch_size = 32;
    o->kv_block_size = 16;
    o->kv_cache_tokens = 16 * 512;
}

static inline anvil_runtime *kit_load(const char *model, const anvil_runtime_options *o)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/%s", anvil_test_shared_dir(), model);
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(dir, o, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", model, anvil_last_error());
    return rt;
}

static inline anvil_tokenizer *kit_tokenizer(const char *model)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/%s", anvil_test_shared_dir(), model);
    anvil_tokenizer *tok = NULL;
    if (anvil_tokenizer_load(dir, &tok) != ANVIL_OK)
        fail_msg("tokenizer %s: %s", model, anvil_last_error());
    return tok;
}

static inline anvil_executor *kit_executor(anvil_runtime *rt, const anvil_tokenizer *tok, anvil_capacity_policy policy)
{
    anvil_executor_options eo;
    anvil_executor_options_default(&eo);
    eo.policy = policy;
    eo.seed = 1234;
    anvil_executor *ex = NULL;
    KIT_OK(anvil_executor_create(rt, tok, &eo, &ex));
    return ex;
}

/* ---- golden cases */

typedef struct kit_case {
    int32_t ids[512];
    int32_t n_ids;
    int32_t greedy[128];
    int32_t n_greedy;
    int32_t beams[4][64];
    int32_t n_beam_tokens[4];
    double beam_scores[4];
    int n_beams;
} kit_case;

static inline void kit_json_ids(json_t *arr, int32_t *out, int32_t *n, int32_t cap)
{
    *n = (int32_t)json_array_size(arr);
    if (*n > cap)
        fail_msg("golden array of %d ids exceeds %d", *n, cap);
    for (int32_t i = 0; i < *n; i++)
        out[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
}

/* Reads golden/models/<model>/cases.json; returns the number of cases. */
static inline int kit_cases(const char *model, kit_case *cases, int cap)
{
    char path[512];
    snprintf(path, sizeof path, "%s/golden/models/%s/cases.json", anvil_test_shared_dir(), model);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (root == NULL)
        fail_msg("%s: %s", path, jerr.text);
    json_t *arr = json_object_get(root, "cases");
    int n = 0;
    for (size_t i = 0; i < json_array_size(arr) && n < cap; i++, n++) {
        json_t *c = json_array_get(arr, i);
        kit_case *k = &cases[n];
        memset(k, 0, sizeof *k);
        kit_json_ids(json_object_get(c, "ids"), k->ids, &k->n_ids, 512);
        kit_json_ids(json_object_get(c, "greedy"), k->greedy, &k->n_greedy, 128);
        json_t *b = json_object_get(c, "beam4");
        if (b) {
            json_t *seqs = json_object_get(b, "sequences"), *scores = json_object_get(b, "scores");
            k->n_beams = (int)json_array_size(seqs);
            for (int j = 0; j < k->n_beams && j < 4; j++) {
                kit_json_ids(json_array_get(seqs, (size_t)j), k->beams[j], &k->n_beam_tokens[j], 64);
                k->beam_scores[j] = json_number_value(json_array_get(scores, (size_t)j));
            }
        }
    }
    json_decref(root);
    return n;
}

/* ---- running requests */

/* Runs req to its result (anvil_executor_generate). */
static inline anvil_result *kit_run(anvil_executor *ex, const anvil_request *req)
{
    anvil_result *res = NULL;
    KIT_OK(anvil_executor_generate(ex, req, &res));
    return res;
}

static inline void kit_expect_ids(const char *what, const int32_t *got, int32_t n_got, const int32_t *want,
                                  int32_t n_want)
{
    int32_t n = n_got < n_want ? n_got : n_want;
    for (int32_t i = 0; i < n; i++)
        if (got[i] != want[i])
            fail_msg("%s: token %d is %d, expected %d", what, i, got[i], want[i]);
    if (n_got != n_want)
        fail_msg("%s: %d tokens, expected %d", what, n_got, n_want);
}

/* Waits until the executor has nothing queued or running. */
static inline anvil_executor_metrics kit_idle(anvil_executor *ex)
{
    anvil_executor_metrics m;
    for (int i = 0; i < 20000; i++) {
        KIT_OK(anvil_executor_stats(ex, &m));
        if (m.queued == 0 && m.running == 0)
            return m;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    fail_msg("the executor did not go idle");
    return m;
}

/* ---- collecting events (callbacks run on the executor thread; the test
 * reads after anvil_executor_wait, which orders them) */

typedef struct kit_stream {
    int32_t tokens[8][1024];
    int32_t n_tokens[8];
    char text[8][4096];
    size_t text_len[8];
    int n_token_events;
    int n_final;
    int bad;                 /* an event after the final one, or a second final */
    anvil_request_finish finish[8];
    anvil_request_finish final_finish;
} kit_stream;

static inline void kit_on_event(void *user, const anvil_event *ev)
{
    kit_stream *s = user;
    if (s->n_final > 0)
        s->bad = 1;
    if (ev->kind == ANVIL_EVENT_FINAL) {
        s->n_final++;
        s->final_finish = ev->result->finish;
        return;
    }
    int i = ev->index;
    if (i < 0 || i >= 8) {
        s->bad = 1;
        return;
    }
    s->n_token_events++;
    for (int32_t k = 0; k < ev->n_tokens && s->n_tokens[i] < 1024; k++)
        s->tokens[i][s->n_tokens[i]++] = ev->token_ids[k];
    if (s->text_len[i] + ev->text_len < sizeof s->text[i]) {
        memcpy(s->text[i] + s->text_len[i], ev->text, ev->text_len);
        s->text_len[i] += ev->text_len;
        s->text[i][s->text_len[i]] = '\0';
    }
    s->finish[i] = ev->finish;
}

#endif
