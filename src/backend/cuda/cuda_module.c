/* The CUDA backend as a module: what libanvil asks of it (backend_module.h),
 * and the checks that turn "no driver" and "no GPU" into messages a user can
 * act on before the CUDA runtime says something about versions. Linked into
 * libanvil-cuda.so, and into the CUDA tests and benchmarks directly. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "backend/backend_module.h"
#include "backend/cuda/cuda_internal.h"
#if ANVIL_HAVE_NCCL
#include "comm/comm_nccl.h"
#endif

/* libcuda.so.1 is the driver's library: without it there is no NVIDIA
 * driver, whatever the CUDA runtime's message says. */
static anvil_status check_driver(int device)
{
    void *drv = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (drv == NULL) {
        const char *why = dlerror();
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED,
                          "no NVIDIA driver found (%s): --device cuda needs an NVIDIA GPU and its driver",
                          why != NULL ? why : "libcuda.so.1 cannot be loaded");
    }
    dlclose(drv);
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaErrorInsufficientDriver) {
        (void)cudaGetLastError();
        int dv = 0, rv = 0;
        (void)cudaDriverGetVersion(&dv);
        (void)cudaRuntimeGetVersion(&rv);
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED,
                          "the NVIDIA driver is too old: it runs CUDA %d.%d, this anvil's CUDA runtime is %d.%d "
                          "(update the driver)",
                          dv / 1000, dv % 1000 / 10, rv / 1000, rv % 1000 / 10);
    }
    if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0)) {
        (void)cudaGetLastError();
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "no CUDA GPU found (the NVIDIA driver is there but sees no device)");
    }
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return ANVIL_FAIL(ANVIL_ERR_CUDA, "the NVIDIA driver cannot be used: %s (%s)", cudaGetErrorString(e),
                          cudaGetErrorName(e));
    }
    CHECK(device >= 0 && device < n, ANVIL_ERR_INVALID_ARG, "device cuda:%d, but this machine has %d CUDA GPU%s",
          device, n, n == 1 ? "" : "s");
    return ANVIL_OK;
}

static anvil_status module_create(int device, const anvil_backend_config *c, anvil_backend **out)
{
    *out = NULL;
    TRY(check_driver(device));
    return anvil_backend_cuda_create_config(device, c, out);
}

void anvil_cuda_module_describe(anvil_backend_module *out)
{
    memset(out, 0, sizeof *out);
    out->abi = ANVIL_BACKEND_MODULE_ABI;
    out->version = ANVIL_VERSION_STRING;
    out->layout = ANVIL_BACKEND_MODULE_LAYOUT;
    out->create = module_create;
    out->device_count = anvil_cuda_device_count;
#if ANVIL_HAVE_NCCL
    out->nccl_unique_id = anvil_nccl_unique_id;
    out->nccl_open = anvil_nccl_open;
#endif
}
