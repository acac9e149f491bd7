/*
 * backend_module.h: how libanvil and a backend built as a separate module
 * (libanvil-cuda.so) meet. Internal: both sides are built from one tree.
 *
 *     libanvil                                   libanvil-cuda.so
 *     anvil_backend_create("cuda:1", c, &be)
 *       -> anvil_backend_cuda_load               (backend_load.c)
 *          dlopen the module, dlsym(ANVIL_CUDA_MODULE_ENTRY)
 *          entry(&host, &module)  ----------->   keeps &host; errors and log
 *                                                lines go back through it
 *          module.create(1, c, &be) --------->   checks the driver and the GPU,
 *                                                then anvil_backend_cuda_create_config
 *
 * Why a table of host functions rather than the module linking libanvil:
 * libanvil has state a backend must share (the thread's last error that
 * anvil_last_error() reads, the log level). A module that linked libanvil.so
 * would carry a second copy of that state into a program that linked
 * libanvil.a, and its errors would vanish. So the module links no libanvil:
 * it compiles the stateless core files it needs (dtype.c, tensor.c) and
 * gets everything with state from the host table below (cuda/cuda_host.c
 * defines anvil_error_set & co. over it, visible inside the module only).
 * docs/install.md says the same for users.
 *
 * A program that links the CUDA objects itself (the CUDA tests and
 * benchmarks: the anvil_cuda_obj target) has anvil_cuda_module_describe
 * in it; backend_load.c then uses it directly and loads nothing.
 */
#ifndef ANVIL_BACKEND_BACKEND_MODULE_H
#define ANVIL_BACKEND_BACKEND_MODULE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "anvil/log.h"
#include "backend/backend.h"

struct anvil_comm_ops; /* comm/comm_internal.h */

/* Raised whenever anything in this file changes shape. */
#define ANVIL_BACKEND_MODULE_ABI 2

/* The file name of the CUDA module and the symbol it exports. */
#define ANVIL_CUDA_MODULE_FILE "libanvil-cuda.so"
#define ANVIL_CUDA_MODULE_ENTRY "anvil_cuda_module_init"

/* What libanvil lends a module: everything with process or thread state. */
typedef struct anvil_backend_host {
    anvil_status (*error_vset)(anvil_status code, const char *file, int line, const char *fmt, va_list ap);
    anvil_status (*error_vwrap)(const char *fmt, va_list ap);
    void (*clear_error)(void);
    void (*vlog)(anvil_log_level level, const char *fmt, va_list ap);
    anvil_log_level (*log_level)(void);
} anvil_backend_host;

/* What a module offers. The first three fields are filled even when the
 * module refuses the host (a different anvil), so that the refusal can say
 * which anvil the module is from. */
typedef struct anvil_backend_module {
    int abi;                 /* ANVIL_BACKEND_MODULE_ABI of the module */
    const char *version;     /* ANVIL_VERSION_STRING of the module's build */
    size_t layout;           /* ANVIL_BACKEND_MODULE_LAYOUT of the module's build */
    /* Makes a backend on `device` (checks the driver and the GPU first). */
    anvil_status (*create)(int device, const anvil_backend_config *c, anvil_backend **out);
    int (*device_count)(void);
    /* NCCL (src/comm/comm_nccl.h); NULL where the module was built
     * without it */
    anvil_status (*nccl_unique_id)(unsigned char *id);
    anvil_status (*nccl_open)(const unsigned char *id, int32_t rank, int32_t size, int device, double timeout_s,
                              const struct anvil_comm_ops **ops, void **impl);
} anvil_backend_module;

/* Sizes of the structs the two sides pass each other: a module built from
 * other headers is refused even under the same version string. */
#define ANVIL_BACKEND_MODULE_LAYOUT \
    (sizeof(anvil_backend_host) + 100 * sizeof(anvil_backend_module) + 10000 * sizeof(anvil_backend_config) + \
     1000000 * sizeof(anvil_backend_ops))

/* The module's entry (dlsym ANVIL_CUDA_MODULE_ENTRY): fills *out; returns
 * 0 when it accepts host (same abi, version and layout), else -1. host must
 * live as long as the process (the module keeps it). */
typedef int (*anvil_backend_module_init_fn)(const anvil_backend_host *host, const char *version, size_t layout,
                                            anvil_backend_module *out);

/* The CUDA module's table (the objects linked in, or libanvil-cuda.so
 * loaded from module_path, NULL: beside libanvil): for what is not a
 * backend (the NCCL communicator). */
anvil_status anvil_backend_cuda_module(const char *module_path, anvil_backend_module *out);

/* In the CUDA objects (cuda/cuda_module.c): fills *out (abi, version,
 * layout, create, device_count, the NCCL calls when built with NCCL). */
void anvil_cuda_module_describe(anvil_backend_module *out);

/*
 * The CUDA backend on `device`, from the CUDA objects when the program has
 * them, else from the module: c->cuda_module when set, else
 * libanvil-cuda.so in the folder of the file libanvil is in (the
 * executable's for a static link), else the dynamic loader's search path.
 * Errors say what is missing and where it was looked for.
 */
anvil_status anvil_backend_cuda_load(int device, const anvil_backend_config *c, anvil_backend **out);

#endif
