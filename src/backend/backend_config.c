/* The backend config's defaults: a file of its own because the CUDA
 * module (libanvil-cuda.so), which links no libanvil, compiles it too. */
#include <string.h>

#include "backend/backend.h"

void anvil_backend_config_default(anvil_backend_config *c)
{
    memset(c, 0, sizeof *c);
    c->act_dtype = ANVIL_DTYPE_F32;
}
