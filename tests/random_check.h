/*
 * Random weights without a file give the engine's logits: builds config
 * (a config.json of any name, or a folder holding one) into an engine with
 * anvil build --random-weights (seed, weight dtype dt, scheme q, int4
 * group; 0: 128), loads it and loads the config as random weights
 * (anvil_runtime_options.random_weights) on `device`, and fails the test
 * unless the logits of a 7-token prompt (every row) and of a decode step
 * after it are equal bit for bit; a load of seed + 1 must give other
 * logits. Shared by tests/runtime/test_random_source.c (CPU) and
 * tests/cuda/test_cuda_random_source.c.
 */
#ifndef ANVIL_TESTS_RANDOM_CHECK_H
#define ANVIL_TESTS_RANDOM_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/builder.h"
#include "anvil/dtype.h"

void random_check_config(const char *config, const char *device, uint64_t seed, anvil_dtype dt, anvil_quantize q,
                         int32_t group);
/* The same with the LM head quantized too (lm_head: the build's
 * quantize_lm_head and the runtime option of that name). */
void random_check_config_head(const char *config, const char *device, uint64_t seed, anvil_dtype dt,
                              anvil_quantize q, int32_t group, int lm_head);

/* The config of model m (anvil_test_model_dir) copied under the temporary
 * name <m>-shape.json, into out[cap]; NULL when the model is absent. */
const char *random_check_config_copy(const char *m, char *out, size_t cap);

/* A value of /proc/self/status in kB ("VmHWM:", "VmRSS:"); -1 if absent. */
long random_check_status_kb(const char *key);

/* Resets the peak resident size (VmHWM) to the current one
 * (/proc/self/clear_refs 5); 0 when it could not. */
int random_check_reset_peak(void);

#endif
