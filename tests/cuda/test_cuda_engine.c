/*
 * An engine gives exactly what its folder gives on CUDA (issue 12): every
 * golden model built with --dtype bf16 (the fast mode) and as stored, its
 * logits from the engine (read and mapped) equal the folder's, bit for bit,
 * on the GPU. Skips without a device.
 */
#include <stdio.h>

#include "backend/cuda/cuda_backend.h"
#include "engine_check.h"
#include "testutil.h"

static const char *const models[] = {"stories260K", "tinycode", "tiny-llama3", "tiny-qwen2", "tiny-mistral",
                                     "tiny-qwen3", "tiny-phi3", "tiny-gemma2", "tiny-gpt2"};

static void test_cuda_engine_equal(void **st)
{
    (void)st;
    if (anvil_cuda_device_count() == 0)
        skip();
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        if (!engine_model_present(models[i]))
            continue;
        engine_check_model(models[i], "cuda", ANVIL_DTYPE_BF16);
        engine_check_model(models[i], "cuda", ANVIL_DTYPE_COUNT);
        printf("  %s: engine == folder on cuda (bf16 and as stored)\n", models[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_cuda_engine_equal)};
    return anvil_test_run_group(tests);
}
