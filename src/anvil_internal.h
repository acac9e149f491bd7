/*
 * anvil_internal.h: INTERNAL. NOT PART OF anvil's API, not installed, no
 * stability promised: any of it may change in any commit.
 *
 * The one header through which the `anvil` command (tools/) and the
 * benchmarks (bench/) reach anvil's internals, where the public API
 * (include/anvil/) has nothing yet:
 *   - anvil inspect: the engine container (io/engine_file.h), the build
 *     manifest (builder/manifest.h) and the runtime's memory planner
 *     (runtime/runtime_plan.h), with core/error.h's CHECK/TRY;
 *   - the benchmarks: the backend op table (backend/backend.h), the CPU
 *     kernels' entry points (backend/cpu/cpu_internal.h, cpu_bench.h), the
 *     thread pool, file helpers and the safetensors reader.
 * Everything else in tools/ and bench/ uses include/anvil/ only; a new
 * need goes here (and, when it is of use to programs, into a public
 * header instead).
 */
#ifndef ANVIL_INTERNAL_H
#define ANVIL_INTERNAL_H

#include "backend/backend.h"
#include "backend/cpu/cpu_bench.h"
#include "backend/cpu/cpu_internal.h"
#include "builder/manifest.h"
#include "core/error.h"
#include "core/fileutil.h"
#include "core/threadpool.h"
#include "io/engine_file.h"
#include "io/model_files.h"
#include "io/safetensors.h"
#include "runtime/runtime_plan.h"

#endif
