#include "golden.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static int32_t *json_ids(json_t *arr, int32_t *n)
{
    *n = (int32_t)json_array_size(arr);
    int32_t *ids = malloc((size_t)(*n ? *n : 1) * sizeof *ids);
    assert_non_null(ids);
    for (int32_t i = 0; i < *n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    return ids;
}

void golden_load(const char *model, golden *g)
{
    memset(g, 0, sizeof *g);
    char path[512];
    snprintf(path, sizeof path, "%s/cases.json", anvil_test_golden_dir(model));
    json_error_t jerr;
    g->root = json_load_file(path, 0, &jerr);
    if (g->root == NULL)
        fail_msg("%s: %s", path, jerr.text);
    snprintf(path, sizeof path, "%s/logits.safetensors", anvil_test_golden_dir(model));
    if (anvil_safetensors_open(path, &g->logits_file) != ANVIL_OK)
        fail_msg("%s", anvil_last_error());
    json_t *cases = json_object_get(g->root, "cases");
    assert_true(json_is_array(cases));
    for (size_t i = 0; i < json_array_size(cases) && i < GOLDEN_MAX_CASES; i++) {
        json_t *c = json_array_get(cases, i);
        golden_case *gc = &g->cases[g->n_cases++];
        snprintf(gc->name, sizeof gc->name, "%s", json_string_value(json_object_get(c, "name")));
        gc->ids = json_ids(json_object_get(c, "ids"), &gc->n_ids);
        gc->greedy = json_ids(json_object_get(c, "greedy"), &gc->n_greedy);
        char tname[64];
        snprintf(tname, sizeof tname, "%s.logits", gc->name);
        const anvil_st_tensor *t = anvil_safetensors_find(g->logits_file, tname);
        assert_non_null(t);
        assert_int_equal(t->shape[0], gc->n_ids);
        gc->logits = t->data;
    }
}

void golden_free(golden *g)
{
    for (int i = 0; i < g->n_cases; i++) {
        free(g->cases[i].ids);
        free(g->cases[i].greedy);
    }
    anvil_safetensors_close(g->logits_file);
    json_decref(g->root);
}

void golden_check_logits(const char *model, const char *what, const golden_case *gc, int32_t row0, int32_t n_rows,
                         const float *got, int64_t vocab, double rel_tol)
{
    const float *want = gc->logits + (int64_t)row0 * vocab;
    const int64_t n = (int64_t)n_rows * vocab;
    double max_ref = 0, max_err = 0;
    int64_t worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double ref = want[i], err = fabs((double)got[i] - ref);
        if (fabs(ref) > max_ref)
            max_ref = fabs(ref);
        if (err > max_err || isnan(got[i])) {
            max_err = isnan(got[i]) ? INFINITY : err;
            worst = i;
        }
    }
    if (!(max_err <= rel_tol * max_ref))
        fail_msg("%s %s %s: max error %.3g at position %lld token %lld (tolerance %.3g)", model, gc->name, what,
                 max_err, (long long)(row0 + worst / vocab), (long long)(worst % vocab), rel_tol * max_ref);
}
