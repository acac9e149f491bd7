/*
 * Reading the Hugging Face golden outputs of ../shared/golden/models/<model>
 * (cases.json + logits.safetensors) and comparing logits with them: shared
 * by the CPU and CUDA golden tests.
 */
#ifndef ANVIL_TESTS_GOLDEN_H
#define ANVIL_TESTS_GOLDEN_H

#include <jansson.h>
#include <stdint.h>

#include "io/safetensors.h"

#define GOLDEN_MAX_CASES 8

typedef struct golden_case {
    char name[32];
    int32_t *ids;
    int32_t n_ids;
    int32_t *greedy;
    int32_t n_greedy;
    const float *logits; /* [n_ids, vocab] into the golden file */
} golden_case;

typedef struct golden {
    json_t *root;
    anvil_safetensors *logits_file;
    golden_case cases[GOLDEN_MAX_CASES];
    int n_cases;
} golden;

/* Loads the cases of a model; fails the test on any error. */
void golden_load(const char *model, golden *g);
void golden_free(golden *g);

/* Fails the test unless max |got - want| <= rel_tol * max |want| over rows
 * [row0, row0 + n_rows) of the case's logits (got holds those rows). */
void golden_check_logits(const char *model, const char *what, const golden_case *gc, int32_t row0, int32_t n_rows,
                         const float *got, int64_t vocab, double rel_tol);

#endif
