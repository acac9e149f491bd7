/*
 * The builder's part of an engine's manifest (docs/engine-format.md): the
 * network (ops and weights with their recipes), the plan (which weights
 * each stored tensor holds, the fusion groups), written at build time and
 * read back at load. The container's part (format, tensors, checksums) is
 * io/engine_file.h's.
 *
 * At load the network is built again from the engine's config by the same
 * model code, and must serialize to exactly the manifest's "network": an
 * engine whose network this anvil would not build (another architecture,
 * another anvil, an altered manifest) is refused, never run.
 */
#ifndef ANVIL_BUILDER_MANIFEST_H
#define ANVIL_BUILDER_MANIFEST_H

#include <jansson.h>

#include "anvil/network.h"
#include "builder/build_plan.h"
#include "io/engine_file.h"

/* {"ops": [...], "weights": [...]}: every op (kind, inputs, weights, width,
 * rows, and its parameters) and every weight (name, shape, recipe). NULL
 * when out of memory. */
json_t *anvil_manifest_network(const anvil_network *net);

/* {"stored": [{"name", "members": [weight names]}], "fusion": [{"op", "kind", "n"}]}. */
json_t *anvil_manifest_plan(const anvil_build_plan *p, const anvil_network *net);

/* Declares stored tensor s's quantization in the writer (its table entry's
 * "scales" object: tensor, group, zeros, perm, act, input_scale), its
 * companions already declared. */
anvil_status anvil_manifest_set_quant(anvil_engine_writer *w, const anvil_build_plan *p, int32_t s);

/* The first difference between two networks' JSON (anvil_manifest_network),
 * for a message: "op 3 (rmsnorm) differs", "12 weights instead of 14". */
void anvil_manifest_network_diff(const json_t *want, const json_t *have, char *buf, size_t cap);

/* The fusion kind's name in the manifest ("add_rmsnorm", ...), and back (-1: unknown). */
const char *anvil_manifest_fuse_name(int kind);
int anvil_manifest_fuse_parse(const char *name);

/*
 * Checks the manifest's "network" against net (built from the engine's
 * config) and reads its "plan" into *out, the stored tensors' names, kinds,
 * shapes and bytes taken from the engine's weight table (tensor i is stored
 * tensor i). ANVIL_ERR_FORMAT naming what does not fit.
 */
anvil_status anvil_manifest_read_plan(const anvil_engine_file *f, const anvil_network *net, anvil_build_plan **out);

#endif
