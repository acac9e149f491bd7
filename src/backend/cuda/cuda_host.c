/* Built into libanvil-cuda.so only (not into the CUDA objects that tests
 * link with libanvil.a): the module's entry, and the few libanvil functions
 * with state, forwarded to the host table libanvil passes at load
 * (backend_module.h says why). The module's version script keeps all of
 * these inside it. */
#include <stdarg.h>
#include <string.h>

#include "anvil/log.h"
#include "backend/backend_module.h"
#include "core/error.h"

/* set by every load (the same table each time), read by every thread */
static const anvil_backend_host *host_table;

static const anvil_backend_host *host(void) { return __atomic_load_n(&host_table, __ATOMIC_ACQUIRE); }

__attribute__((visibility("default"))) int anvil_cuda_module_init(const anvil_backend_host *h, const char *version,
                                                                  size_t layout, anvil_backend_module *out);

int anvil_cuda_module_init(const anvil_backend_host *h, const char *version, size_t layout, anvil_backend_module *out)
{
    anvil_cuda_module_describe(out);
    if (h == NULL || version == NULL || strcmp(version, ANVIL_VERSION_STRING) != 0 ||
        layout != ANVIL_BACKEND_MODULE_LAYOUT) {
        out->create = NULL;
        out->device_count = NULL;
        return -1;
    }
    __atomic_store_n(&host_table, h, __ATOMIC_RELEASE);
    return 0;
}

anvil_status anvil_error_set(anvil_status code, const char *file, int line, const char *fmt, ...)
{
    const anvil_backend_host *h = host();
    if (h == NULL)
        return code;
    va_list ap;
    va_start(ap, fmt);
    anvil_status st = h->error_vset(code, file, line, fmt, ap);
    va_end(ap);
    return st;
}

anvil_status anvil_error_wrap(const char *fmt, ...)
{
    const anvil_backend_host *h = host();
    if (h == NULL)
        return ANVIL_ERR_INTERNAL;
    va_list ap;
    va_start(ap, fmt);
    anvil_status st = h->error_vwrap(fmt, ap);
    va_end(ap);
    return st;
}

void anvil_clear_error(void)
{
    const anvil_backend_host *h = host();
    if (h != NULL)
        h->clear_error();
}

anvil_log_level anvil_log_get_level(void)
{
    const anvil_backend_host *h = host();
    return h != NULL ? h->log_level() : ANVIL_LOG_WARN;
}

void anvil_log(anvil_log_level level, const char *fmt, ...)
{
    const anvil_backend_host *h = host();
    if (h == NULL)
        return;
    va_list ap;
    va_start(ap, fmt);
    h->vlog(level, fmt, ap);
    va_end(ap);
}
