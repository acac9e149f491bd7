/*
 * Fused against separate ops, whole model: the same steps through two
 * runtimes of one model (no_fusion 0 and 1), comparing every logit.
 */
#ifndef ANVIL_TEST_FUSION_CHECK_H
#define ANVIL_TEST_FUSION_CHECK_H

#include "anvil/runtime.h"

typedef struct fusion_diff {
    double max_abs;      /* largest |fused - separate| over every logit compared */
    double max_logit;    /* largest |separate logit| */
    int greedy_differ;   /* logit rows whose argmax differs */
    int rows;            /* logit rows compared */
} fusion_diff;

/*
 * Loads model_dir twice with *opts (no_fusion 0, then 1) and runs on both a
 * prefill of three prompts of different lengths (one step, scattered
 * blocks), then `decode_steps` decode steps of the three (each feeding the
 * separate runtime's greedy token to both), filling *d. Returns ANVIL_OK or
 * the first error.
 */
anvil_status fusion_compare(const char *model_dir, const anvil_runtime_options *opts, int decode_steps,
                            fusion_diff *d);

#endif
