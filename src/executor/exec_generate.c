/*
 * anvil_generate: one sequence as one request on an executor.
 *
 * The executor is the only generation path: its scheduler prefills and
 * decodes, its sampler path picks, and it decides when a sequence ends
 * (end-of-sequence tokens, max_tokens, the context). anvil_generate only
 * maps its arguments onto a request and the result back. The executor it
 * makes has no thread of its own (anvil_exec_create_inline): the loop runs
 * on the caller's thread, so on_token is called there, between two steps,
 * as the runtime's own thread (a callback may use the runtime, e.g. refit
 * it). One sequence at a time and no prefix cache: the executor's state is
 * a few buffers of a row of logits, made and freed per call.
 */
#include <stdio.h>
#include <string.h>

#include "anvil/generate.h"
#include "core/error.h"
#include "executor/exec_internal.h"

typedef struct gen_state {
    anvil_executor *ex;
    anvil_token_fn on_token;
    void *user;
    int32_t *out_ids;              /* [cap] */
    int32_t cap;
    int32_t n_out;
    int stopped;                   /* on_token asked to stop: the request is cancelled */
    anvil_request_finish finish;
    anvil_status status;
    char error[sizeof ((anvil_result *)0)->error];
} gen_state;

static void on_event(void *user, const anvil_event *ev)
{
    gen_state *g = user;
    if (ev->kind == ANVIL_EVENT_FINAL) {
        g->finish = ev->result->finish;
        g->status = ev->result->status;
        snprintf(g->error, sizeof g->error, "%s", ev->result->error);
        return;
    }
    for (int32_t i = 0; i < ev->n_tokens && !g->stopped; i++) {
        const int32_t tok = ev->token_ids[i];
        if (g->n_out < g->cap)
            g->out_ids[g->n_out++] = tok;
        if (g->on_token != NULL && g->on_token(g->user, tok) != 0) {
            /* applied before the next step: no token follows this one */
            g->stopped = 1;
            (void)anvil_executor_cancel(g->ex, ev->request_id);
        }
    }
}

anvil_status anvil_generate(anvil_runtime *rt, const int32_t *prompt, int32_t n_prompt,
                            const anvil_generate_params *params, anvil_token_fn on_token, void *user,
                            int32_t *out_ids, int32_t *n_out, anvil_finish_reason *finish)
{
    *n_out = 0;
    if (finish)
        *finish = ANVIL_FINISH_NONE;
    CHECK(rt != NULL && params != NULL, ANVIL_ERR_INVALID_ARG, "generate: NULL runtime or params");
    CHECK(params->max_tokens >= 0, ANVIL_ERR_INVALID_ARG, "max_tokens must be >= 0, got %d", params->max_tokens);
    CHECK(params->max_tokens == 0 || out_ids != NULL, ANVIL_ERR_INVALID_ARG, "generate: out_ids is NULL");

    anvil_request req;
    anvil_request_init(&req);
    req.prompt_ids = prompt;
    req.n_prompt_ids = prompt != NULL ? n_prompt : 0;
    req.prompt = NULL;
    req.sampling = params->sampling;
    req.has_seed = 1;
    req.max_tokens = params->max_tokens;
    req.ignore_eos = params->ignore_eos;
    if (params->max_tokens == 0) {
        /* the executor reads max_tokens 0 as "up to the context": check
         * the request as it would, and generate nothing */
        CHECK(req.n_prompt_ids > 0, ANVIL_ERR_INVALID_ARG, "the prompt is empty");
        TRY(anvil_sampling_params_check(&params->sampling));
        const int32_t ctx = anvil_runtime_options_get(rt)->max_seq_len;
        CHECK(n_prompt < ctx, ANVIL_ERR_CAPACITY,
              "the prompt has %d tokens; the context holds %d, with room for at least one new token", n_prompt, ctx);
        if (finish)
            *finish = ANVIL_FINISH_LENGTH;
        return ANVIL_OK;
    }

    anvil_executor_options eo;
    anvil_executor_options_default(&eo);
    eo.max_batch_size = 1;
    eo.enable_prefix_caching = 0;
    eo.seed = 1; /* unused: the request brings its seed */
    anvil_executor *ex = NULL;
    TRY(anvil_exec_create_inline(rt, &eo, &ex));
    gen_state g = {.ex = ex, .on_token = on_token, .user = user, .out_ids = out_ids, .cap = params->max_tokens,
                   .finish = ANVIL_REQUEST_RUNNING, .status = ANVIL_OK};
    req.on_event = on_event;
    req.user = &g;
    anvil_status st = anvil_executor_enqueue(ex, &req, NULL);
    if (st == ANVIL_OK)
        anvil_exec_run_inline(ex);
    anvil_executor_free(ex);
    *n_out = g.n_out;
    if (st != ANVIL_OK)
        return st;
    switch (g.finish) {
    case ANVIL_REQUEST_ERROR:
        return ANVIL_FAIL(g.status != ANVIL_OK ? g.status : ANVIL_ERR_INTERNAL, "%s", g.error);
    case ANVIL_REQUEST_STOP:
    case ANVIL_REQUEST_LENGTH:
    case ANVIL_REQUEST_CANCELLED: /* only ever by on_token */
        if (finish)
            *finish = g.stopped || g.finish == ANVIL_REQUEST_STOP ? ANVIL_FINISH_STOP : ANVIL_FINISH_LENGTH;
        return ANVIL_OK;
    case ANVIL_REQUEST_RUNNING:
        break;
    }
    return ANVIL_FAIL(ANVIL_ERR_INTERNAL, "generate: the request did not finish");
}
