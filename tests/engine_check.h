/*
 * An engine gives exactly what its folder gives: builds model m (a golden
 * model of ../shared) into an engine with weight dtype dt, loads the folder
 * (with dt) and the engine (read and mapped) on `device`, and fails the test
 * unless the logits of every position of every golden prompt are equal bit
 * for bit. Shared by tests/builder/test_engine_equal.c (CPU) and
 * tests/cuda/test_cuda_engine.c.
 */
#ifndef ANVIL_TESTS_ENGINE_CHECK_H
#define ANVIL_TESTS_ENGINE_CHECK_H

#include "anvil/dtype.h"

void engine_check_model(const char *m, const char *device, anvil_dtype dt);

/* 1 when ../shared has the model. */
int engine_model_present(const char *m);

#endif
