/*
 * Pipeline parallelism: the network one stage of `n_stages` runs
 * (docs/parallel.md).
 *
 * The model file describes the whole model; anvil_network_stage keeps the
 * ops of stage s's layers, [s L / P, (s + 1) L / P) of the L attention
 * layers in op order (attention ops, or DeepSeek's mla), the embedding on
 * stage 0, the final norm and the LM head on the last, before the
 * tensor-parallel cut and the build plan:
 *
 *   - between two stages the network is cut where the fewest values cross
 *     (by columns), between the last attention of one stage and the first
 *     of the next, the latest such place: in the models anvil describes,
 *     right after a layer's last residual add, so that only the hidden
 *     state crosses and each layer stays whole on its stage;
 *   - each value that crosses is a `recv` op at the start of the stage
 *     that reads it (message tag: its place in the boundary's list) and a
 *     `send` op at the end of the stage before (a value that skips a stage
 *     is received and sent on);
 *   - the last stage sends the logits to stage 0 (tag
 *     ANVIL_STAGE_LOGITS_TAG), whose network's output is their `recv`: so
 *     stage 0 (rank 0) samples as a network of one stage would, and a
 *     stage between has no logits (its output is its last send);
 *   - attention layers are renumbered from 0 on each stage, so each
 *     stage's KV cache holds its own layers only.
 *
 * Stage numbers are ranks of the chain of stages (the communicator the
 * runtime's send and recv go through).
 */
#ifndef ANVIL_BUILDER_STAGE_PLAN_H
#define ANVIL_BUILDER_STAGE_PLAN_H

#include <stdint.h>

#include "anvil/network.h"

/* The tag of the logits' message from the last stage to the first. */
#define ANVIL_STAGE_LOGITS_TAG 32767

/*
 * The network stage `stage` of n_stages runs, in *out (NULL on failure),
 * and in *kv_layer0 the source's attention layer that is the stage's KV
 * layer 0 (its KV scales' layer). n_stages 1 gives a copy. ANVIL_ERR_UNSUPPORTED when the network has
 * fewer attention layers than stages ("3 layers cannot be split over 4
 * pipeline stages").
 */
anvil_status anvil_network_stage(const anvil_network *net, int32_t stage, int32_t n_stages, anvil_network **out,
                                 int32_t *kv_layer0);

/* The attention layers of stage `stage`: [*first, *first + *count) of
 * n_layers (n_layers >= n_stages >= 1). */
void anvil_stage_layers(int32_t n_layers, int32_t stage, int32_t n_stages, int32_t *first, int32_t *count);

#endif
