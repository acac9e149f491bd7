/*
 * generate: a text from a prompt, greedily, on the CPU.
 *
 *     cc generate.c -o generate $(pkg-config --cflags --libs anvil)
 *     ./generate MODEL_DIR ["prompt"] [max_tokens]
 *
 * Loads a model folder (or engine file) with a runtime, encodes the prompt
 * with the model's tokenizer, generates with anvil_generate, and prints the
 * prompt and what follows it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <anvil/anvil.h>

static int fail(const char *what)
{
    fprintf(stderr, "generate: %s: %s\n", what, anvil_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: generate MODEL_DIR [PROMPT] [MAX_TOKENS]\n");
        return 2;
    }
    const char *model = argv[1];
    const char *prompt = argc > 2 ? argv[2] : "Once upon a time";
    int32_t max_tokens = argc > 3 ? atoi(argv[3]) : 32;

    anvil_runtime_options ro;
    anvil_runtime_options_default(&ro); /* the CPU, one thread per core */
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(model, &ro, &rt) != ANVIL_OK)
        return fail("loading the model");
    anvil_tokenizer *tok = NULL;
    if (anvil_tokenizer_load(model, &tok) != ANVIL_OK) {
        anvil_runtime_free(rt);
        return fail("loading the tokenizer");
    }

    int rc = 1;
    int32_t *ids = NULL, *all = NULL;
    char *text = NULL, *head = NULL;
    int64_t n_ids = 0;
    if (anvil_tokenizer_encode(tok, prompt, strlen(prompt), 1, &ids, &n_ids) != ANVIL_OK) {
        fail("encoding the prompt");
        goto done;
    }

    anvil_generate_params gp;
    memset(&gp, 0, sizeof gp);
    anvil_sampling_params_default(&gp.sampling);
    gp.sampling.temperature = 0.0f; /* greedy: the same text every run */
    gp.max_tokens = max_tokens;
    all = malloc(((size_t)n_ids + (size_t)max_tokens) * sizeof *all);
    if (all == NULL)
        goto done;
    int32_t n_out = 0;
    anvil_finish_reason finish;
    if (anvil_generate(rt, ids, (int32_t)n_ids, &gp, NULL, NULL, all + n_ids, &n_out, &finish) != ANVIL_OK) {
        fail("generating");
        goto done;
    }

    /* the prompt, then the text the new ids add to it: decoded with the
     * prompt's ids, so that words join as they should (as `anvil run` does) */
    memcpy(all, ids, (size_t)n_ids * sizeof *all);
    size_t len = 0, head_len = 0;
    if (anvil_tokenizer_decode(tok, all, n_ids, 1, &head, &head_len) != ANVIL_OK ||
        anvil_tokenizer_decode(tok, all, n_ids + n_out, 1, &text, &len) != ANVIL_OK) {
        fail("decoding");
        goto done;
    }
    const char *added = len >= head_len && memcmp(text, head, head_len) == 0 ? text + head_len : text;
    printf("%s%s\n", prompt, added);
    rc = 0;
done:
    free(text);
    free(head);
    free(all);
    free(ids);
    anvil_tokenizer_free(tok);
    anvil_runtime_free(rt);
    return rc;
}
