/*
 * stream: one request through an executor, its text printed as it comes.
 *
 *     cc stream.c -o stream $(pkg-config --cflags --libs anvil)
 *     ./stream MODEL_DIR ["prompt"] [max_tokens]
 *
 * The executor batches requests on its own thread; on_event runs there,
 * once per step with the new text of the request, and once at the end
 * (ANVIL_EVENT_FINAL) with the whole result.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <anvil/anvil.h>

static void on_event(void *user, const anvil_event *ev)
{
    int *n_events = user;
    if (ev->kind == ANVIL_EVENT_TOKENS) {
        (*n_events)++;
        fwrite(ev->text, 1, ev->text_len, stdout);
        fflush(stdout);
    } else { /* ANVIL_EVENT_FINAL: the last event of every request */
        const anvil_result *r = ev->result;
        printf("\n[%s: %d tokens in %d events]\n", anvil_request_finish_name(r->finish),
               r->n_sequences > 0 ? r->sequences[0].n_tokens : 0, *n_events);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: stream MODEL_DIR [PROMPT] [MAX_TOKENS]\n");
        return 2;
    }
    const char *model = argv[1];
    const char *prompt = argc > 2 ? argv[2] : "Once upon a time";

    anvil_runtime *rt = NULL;
    anvil_tokenizer *tok = NULL;
    anvil_executor *ex = NULL;
    if (anvil_runtime_load(model, NULL, &rt) != ANVIL_OK || anvil_tokenizer_load(model, &tok) != ANVIL_OK ||
        anvil_executor_create(rt, tok, NULL, &ex) != ANVIL_OK) {
        fprintf(stderr, "stream: %s\n", anvil_last_error());
        anvil_tokenizer_free(tok);
        anvil_runtime_free(rt);
        return 1;
    }

    int n_events = 0;
    anvil_request req;
    anvil_request_init(&req);
    req.prompt = prompt;
    req.max_tokens = argc > 3 ? atoi(argv[3]) : 32;
    req.sampling.temperature = 0.8f;
    req.sampling.seed = 7;
    req.has_seed = 1; /* the same text every run */
    req.on_event = on_event;
    req.user = &n_events;
    req.retain_result = 1; /* to wait for it below */

    printf("%s", prompt);
    uint64_t id = 0;
    anvil_result *res = NULL;
    int rc = 0;
    if (anvil_executor_enqueue(ex, &req, &id) != ANVIL_OK || anvil_executor_wait(ex, id, &res) != ANVIL_OK) {
        fprintf(stderr, "stream: %s\n", anvil_last_error());
        rc = 1;
    } else if (res->status != ANVIL_OK) {
        fprintf(stderr, "stream: %s\n", res->error);
        rc = 1;
    }
    anvil_result_free(res);
    anvil_executor_free(ex); /* before the runtime and tokenizer it borrows */
    anvil_tokenizer_free(tok);
    anvil_runtime_free(rt);
    return rc;
}
