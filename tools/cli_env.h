/*
 * The anvil command's environment: every ANVIL_* variable is read here and
 * only here. The library reads no environment; what a variable asks for
 * reaches it as an option.
 *
 *   ANVIL_LOG=error|warn|info|debug   the log level (anvil_log_set_level)
 *   ANVIL_DEBUG=1                     print where in anvil's source an error was raised
 *   ANVIL_API_KEY, ANVIL_ADMIN_KEY    anvil serve's keys (its --api-key-file etc. override)
 *   ANVIL_CPU_ISA=scalar|avx2|avx512  runtime option cpu_isa (comparisons)
 *   ANVIL_CUDA_GRAPHS=0               runtime option no_cuda_graphs
 *   ANVIL_CUDA_PDL=0                  runtime option no_pdl
 *   ANVIL_HOST_SAMPLING=1             runtime option host_sampling
 */
#ifndef ANVIL_TOOLS_CLI_ENV_H
#define ANVIL_TOOLS_CLI_ENV_H

#include "anvil/runtime.h"

/* Sets the log level from ANVIL_LOG (unset or unknown: warn). */
void cli_env_log(void);

/* ANVIL_DEBUG is set (and not "0"). */
int cli_env_debug(void);

/* The value of ANVIL_API_KEY or ANVIL_ADMIN_KEY (name), NULL when unset. */
const char *cli_env_key(const char *name);

/* Applies ANVIL_CPU_ISA, ANVIL_CUDA_GRAPHS, ANVIL_CUDA_PDL and
 * ANVIL_HOST_SAMPLING to runtime options (after their defaults). */
void cli_env_runtime_options(anvil_runtime_options *o);

#endif
