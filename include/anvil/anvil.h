/*
 * anvil/anvil.h: the whole public API in one include.
 *
 *     #include <anvil/anvil.h>
 *
 *     cc app.c $(pkg-config --cflags --libs anvil)
 *
 * A model folder or engine file is loaded onto a device by a runtime
 * (runtime.h); one sequence is generated with anvil_generate (generate.h),
 * many at once by an executor (executor.h), and served over HTTP by a
 * server (server.h). Text becomes token ids through tokenizer.h. Every
 * fallible call returns an anvil_status and leaves a message for
 * anvil_last_error() (status.h). examples/ has one small program for each
 * of these; docs/install.md says how to build against an installed anvil.
 * Several processes share one model (tensor parallelism under mpirun)
 * through a communicator (comm.h, runtime options comm).
 *
 * The CUDA backend (--device cuda, anvil_runtime_options.device "cuda") is
 * a separate library, libanvil-cuda.so, loaded when a CUDA device is asked
 * for: a program that only uses the CPU needs no CUDA library.
 */
#ifndef ANVIL_ANVIL_H
#define ANVIL_ANVIL_H

#include "anvil/status.h"
#include "anvil/log.h"
#include "anvil/dtype.h"
#include "anvil/model_config.h"
#include "anvil/tokenizer.h"
#include "anvil/chat_template.h"
#include "anvil/network.h"
#include "anvil/builder.h"
#include "anvil/comm.h"
#include "anvil/sampling.h"
#include "anvil/grammar.h"
#include "anvil/runtime.h"
#include "anvil/generate.h"
#include "anvil/executor.h"
#include "anvil/server.h"

#endif
