#include "backend/backend.h"

#include <stdlib.h>
#include <string.h>

#include "backend/backend_module.h"
#include "core/error.h"

anvil_status anvil_backend_create(const char *name, const anvil_backend_config *c, anvil_backend **out)
{
    *out = NULL;
    anvil_backend_config dflt;
    if (c == NULL) {
        anvil_backend_config_default(&dflt);
        c = &dflt;
    }
    if (name == NULL || strcmp(name, "cpu") == 0)
        return anvil_backend_cpu_create_config(c, out);
    if (strncmp(name, "cuda", 4) == 0 && (name[4] == '\0' || name[4] == ':')) {
        int device = 0;
        if (name[4] == ':') {
            char *end = NULL;
            long d = strtol(name + 5, &end, 10);
            CHECK(end != name + 5 && *end == '\0' && d >= 0 && d < 1024, ANVIL_ERR_INVALID_ARG,
                  "bad device '%s': expected cuda or cuda:N", name);
            device = (int)d;
        }
        /* the CUDA backend is a module, libanvil-cuda.so (backend_load.c) */
        return anvil_backend_cuda_load(device, c, out);
    }
    return ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "unknown device '%s' (expected cpu, cuda or cuda:N)", name);
}

void anvil_backend_free(anvil_backend *be)
{
    if (be != NULL && be->ops != NULL && be->ops->destroy != NULL)
        be->ops->destroy(be);
}
