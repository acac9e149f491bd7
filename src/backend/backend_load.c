/* Finding and loading the CUDA backend module (libanvil-cuda.so); see
 * backend_module.h for the contract and why the module links no libanvil. */
#include <dlfcn.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend_module.h"
#include "core/error.h"

/* Defined when the program links the CUDA objects itself (tests, benches). */
extern void anvil_cuda_module_describe(anvil_backend_module *out) __attribute__((weak));

/* ---------------------------------------------------------------- the host table */

static anvil_status host_error_vset(anvil_status code, const char *file, int line, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    return anvil_error_set(code, file, line, "%s", msg);
}

static anvil_status host_error_vwrap(const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    return anvil_error_wrap("%s", msg);
}

static void host_vlog(anvil_log_level level, const char *fmt, va_list ap)
{
    if ((int)level > (int)anvil_log_get_level())
        return;
    char msg[2000];
    vsnprintf(msg, sizeof msg, fmt, ap);
    anvil_log(level, "%s", msg);
}

static const anvil_backend_host host = {
    .error_vset = host_error_vset,
    .error_vwrap = host_error_vwrap,
    .clear_error = anvil_clear_error,
    .vlog = host_vlog,
    .log_level = anvil_log_get_level,
};

/* ---------------------------------------------------------------- finding the module */

/* The folder of the file this code is in: libanvil.so, or the executable
 * when libanvil.a was linked into it. "" when it cannot be told. */
static void own_folder(char *dir, size_t cap)
{
    dir[0] = '\0';
    Dl_info info;
    struct link_map *lm = NULL;
    const char *file = NULL;
    char exe[4096];
    if (dladdr1((void *)own_folder, &info, (void **)&lm, RTLD_DL_LINKMAP) != 0 && lm != NULL && lm->l_name != NULL &&
        lm->l_name[0] != '\0')
        file = lm->l_name;
    else { /* the main program: its link map has no name */
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0)
            return;
        exe[n] = '\0';
        file = exe;
    }
    char *real = realpath(file, NULL);
    const char *p = real != NULL ? real : file;
    const char *slash = strrchr(p, '/');
    if (slash != NULL) {
        size_t len = (size_t)(slash - p);
        if (len == 0)
            len = 1; /* "/" */
        if (len < cap) {
            memcpy(dir, p, len);
            dir[len] = '\0';
        }
    }
    free(real);
}

#ifdef ANVIL_CUDA_MODULE_BUILT
#define BUILT_HINT ""
#else
#define BUILT_HINT "; this anvil was built without CUDA (configure with -DANVIL_CUDA=ON, nvcc needed)"
#endif

/* dlopens the module: c->cuda_module, else next to libanvil, else by name. */
static anvil_status open_module(const char *explicit_path, void **handle, char *path, size_t cap)
{
    *handle = NULL;
    if (explicit_path != NULL && explicit_path[0] != '\0') {
        snprintf(path, cap, "%s", explicit_path);
        *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        CHECK(*handle != NULL, ANVIL_ERR_NOT_FOUND, "cannot load the CUDA backend %s: %s", path, dlerror());
        return ANVIL_OK;
    }
    char dir[4096];
    own_folder(dir, sizeof dir);
    if (dir[0] != '\0') {
        snprintf(path, cap, "%s/%s", dir, ANVIL_CUDA_MODULE_FILE);
        if (access(path, F_OK) == 0) {
            *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
            /* there, but not loadable: most often a CUDA library it needs is missing */
            CHECK(*handle != NULL, ANVIL_ERR_NOT_FOUND, "cannot load the CUDA backend %s: %s", path, dlerror());
            return ANVIL_OK;
        }
    }
    snprintf(path, cap, "%s", ANVIL_CUDA_MODULE_FILE);
    *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (*handle != NULL) {
        struct link_map *lm = NULL;
        if (dlinfo(*handle, RTLD_DI_LINKMAP, &lm) == 0 && lm != NULL && lm->l_name != NULL && lm->l_name[0])
            snprintf(path, cap, "%s", lm->l_name);
        return ANVIL_OK;
    }
    const char *why = dlerror();
    if (why != NULL && strstr(why, "cannot open shared object file") == NULL) /* found, but not loadable */
        return ANVIL_FAIL(ANVIL_ERR_NOT_FOUND, "cannot load the CUDA backend %s: %s", path, why);
    return ANVIL_FAIL(ANVIL_ERR_NOT_FOUND,
                      "a cuda device needs the CUDA backend, %s, which is not installed: not in %s (libanvil's "
                      "folder) nor on the dynamic loader's search path%s",
                      ANVIL_CUDA_MODULE_FILE, dir[0] ? dir : "the folder of libanvil", BUILT_HINT);
}

static anvil_status load_module(const char *explicit_path, anvil_backend_module *m)
{
    void *h = NULL;
    char path[4200];
    TRY(open_module(explicit_path, &h, path, sizeof path));
    /* never dlclosed: the CUDA runtime does not like being unloaded, and
     * dlopen of a loaded file only counts a reference */
    anvil_backend_module_init_fn init = (anvil_backend_module_init_fn)(uintptr_t)dlsym(h, ANVIL_CUDA_MODULE_ENTRY);
    CHECK(init != NULL, ANVIL_ERR_FORMAT, "%s is not an anvil CUDA backend (no %s)", path, ANVIL_CUDA_MODULE_ENTRY);
    memset(m, 0, sizeof *m);
    if (init(&host, ANVIL_VERSION_STRING, ANVIL_BACKEND_MODULE_LAYOUT, m) != 0)
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED,
                          "the CUDA backend %s is from anvil %s (module interface %d), this libanvil is %s "
                          "(interface %d): install the two from one build",
                          path, m->version ? m->version : "?", m->abi, ANVIL_VERSION_STRING, ANVIL_BACKEND_MODULE_ABI);
    CHECK(m->create != NULL, ANVIL_ERR_FORMAT, "%s: the module offers no create", path);
    return ANVIL_OK;
}

anvil_status anvil_backend_cuda_module(const char *module_path, anvil_backend_module *m)
{
    memset(m, 0, sizeof *m);
    if (anvil_cuda_module_describe != NULL)
        anvil_cuda_module_describe(m);
    else
        TRY(load_module(module_path, m));
    return ANVIL_OK;
}

anvil_status anvil_backend_cuda_load(int device, const anvil_backend_config *c, anvil_backend **out)
{
    *out = NULL;
    anvil_backend_module m;
    TRY(anvil_backend_cuda_module(c->cuda_module, &m));
    return m.create(device, c, out);
}
