/*
 * The compute dtype "auto" (anvil_runtime_options.weight_dtype left as
 * ANVIL_DTYPE_COUNT): on cuda a bf16 or f16 checkpoint (config.json's
 * torch_dtype) computes in its dtype, an f32 one in f32; --dtype f32 forces
 * f32; the CPU always computes in f32. A bf16 model run in f32 on the GPU
 * was the default of `anvil serve` and `anvil bench` before, six times
 * slower (docs/performance.md "Server").
 *
 * The CPU case runs everywhere; the cuda cases skip without a device.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/runtime.h"
#include "backend/cuda/cuda_backend.h"
#include "testutil.h"

static anvil_dtype compute_dtype(const char *model, const char *device, anvil_dtype weights)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.device = device;
    o.n_threads = 1;
    o.max_seq_len = 64;
    o.max_num_tokens = 64;
    o.max_batch_size = 4;
    o.kv_cache_tokens = 256;
    o.weight_dtype = weights;
    anvil_runtime *rt = NULL;
    char path[1024];
    snprintf(path, sizeof path, "models/%s", model);
    assert_int_equal(anvil_runtime_load(anvil_test_shared_path(path), &o, &rt), ANVIL_OK);
    anvil_dtype dt = anvil_runtime_compute_dtype(rt);
    anvil_runtime_free(rt);
    return dt;
}

static void test_cpu_computes_in_f32(void **state)
{
    (void)state;
    assert_int_equal(compute_dtype("tinycode", "cpu", ANVIL_DTYPE_COUNT), ANVIL_DTYPE_F32);   /* bf16 */
    assert_int_equal(compute_dtype("tiny-qwen2", "cpu", ANVIL_DTYPE_COUNT), ANVIL_DTYPE_F32); /* f16 */
}

static void test_cuda_auto(void **state)
{
    (void)state;
    if (anvil_cuda_device_count() == 0)
        skip();
    assert_int_equal(compute_dtype("tinycode", "cuda", ANVIL_DTYPE_COUNT), ANVIL_DTYPE_BF16);
    assert_int_equal(compute_dtype("tiny-qwen2", "cuda", ANVIL_DTYPE_COUNT), ANVIL_DTYPE_F16);
    assert_int_equal(compute_dtype("stories260K", "cuda", ANVIL_DTYPE_COUNT), ANVIL_DTYPE_F32);
    /* an explicit dtype wins */
    assert_int_equal(compute_dtype("tinycode", "cuda", ANVIL_DTYPE_F32), ANVIL_DTYPE_F32);
    assert_int_equal(compute_dtype("stories260K", "cuda", ANVIL_DTYPE_BF16), ANVIL_DTYPE_BF16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu_computes_in_f32),
        cmocka_unit_test(test_cuda_auto),
    };
    return anvil_test_run_group(tests);
}
