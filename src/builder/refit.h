/*
 * Refit: new weights of the same shapes for a network already planned (an
 * engine's, or a live runtime's), without a rebuild (docs/engine.md,
 * "Refit"). One path serves both: anvil_refit_engine (on disk) and
 * anvil_runtime_refit_prepare (live).
 *
 * The new weights come from a Hugging Face folder or an engine file, and
 * must give exactly the plan's stored tensors:
 *  - the new source's config equals the plan's, value by value (the first
 *    that differs is named: "refit changes rope_theta 10000 -> 500000:
 *    build a new engine"), except the checkpoint's dtype (weights are
 *    converted to the plan's kinds) and the generation defaults
 *    (generation_config.json: the served model keeps its own);
 *  - the network built from it is the same (ops, parameters, weights and
 *    their recipes);
 *  - a folder: every recipe finds its sources with the shapes it needs, and
 *    the bytes are prepared through the plan (anvil_build_fill), converted
 *    to its kinds; an engine: its stored tensors are the plan's (names,
 *    kinds, shapes, members), and its bytes are copied as they are.
 * Anything that does not fit is ANVIL_ERR_INVALID_ARG with a message naming
 * the first difference; a damaged source keeps its own status (a NaN is
 * ANVIL_ERR_FORMAT, a file that cannot be read ANVIL_ERR_IO).
 *
 *     anvil_refit_source *src;
 *     TRY(anvil_refit_source_open(path, &cfg, net, plan, 1, &src));
 *     ... anvil_refit_source_fill(src, s, off, dst, len, scratch) in chunks ...
 *     TRY(anvil_refit_source_check_unchanged(src));
 *     anvil_refit_source_close(src);
 *
 * A source is read-only once open: fills may run on several threads, each
 * with its own scratch.
 */
#ifndef ANVIL_BUILDER_REFIT_H
#define ANVIL_BUILDER_REFIT_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/model_config.h"
#include "anvil/network.h"
#include "builder/build_plan.h"

typedef struct anvil_refit_source anvil_refit_source;

/*
 * ANVIL_OK when config `have` (the new weights') may replace `want` (the
 * plan's); else ANVIL_ERR_INVALID_ARG naming the first value that differs,
 * with its config.json key and both values.
 */
anvil_status anvil_refit_check_config(const anvil_model_config *want, const anvil_model_config *have);

/*
 * Opens the new weights at path (a Hugging Face folder or an engine file)
 * for the plan `plan` of network `net`, made from config `cfg` (all three
 * borrowed; they must outlive the source), and checks that they fit (see
 * the top). check_finite: fills scan what they give for NaN and infinity.
 * *out is NULL on failure.
 */
anvil_status anvil_refit_source_open(const char *path, const anvil_model_config *cfg,
                                     const anvil_network *net, const anvil_build_plan *plan, int check_finite,
                                     anvil_refit_source **out);

/* 1 when the source is an engine file (its bytes are copied as stored). */
int anvil_refit_source_is_engine(const anvil_refit_source *src);

/*
 * Bytes [offset, offset + len) of stored tensor s (len at most
 * ANVIL_BUILD_CHUNK; offset and len multiples of its kind's size) into dst,
 * and with check_finite the scan: a NaN or infinity is ANVIL_ERR_FORMAT
 * naming the network weight and element. scratch: one per thread (an
 * engine source does not use it; may then be NULL).
 */
anvil_status anvil_refit_source_fill(const anvil_refit_source *src, int32_t s, size_t offset, void *dst,
                                     size_t len, anvil_build_scratch *scratch);

/* ANVIL_ERR_IO when the source's files changed since open (then what was
 * read is not to be trusted). */
anvil_status anvil_refit_source_check_unchanged(const anvil_refit_source *src);

void anvil_refit_source_close(anvil_refit_source *src); /* NULL is a no-op */

#endif
