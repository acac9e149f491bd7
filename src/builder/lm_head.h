/*
 * --quantize-lm-head with tied embeddings (docs/quantization.md, "The LM
 * head"): the embedding stays in the build's dtype and the LM head gets a
 * matrix of its own, "lm_head.weight", made from the same checkpoint
 * tensor and quantized. The engine records it (build.untied_lm_head), and
 * every reader that builds an engine's network from its config unties it
 * again before it reads the plan.
 */
#ifndef ANVIL_BUILDER_LM_HEAD_H
#define ANVIL_BUILDER_LM_HEAD_H

#include "anvil/network.h"
#include "io/engine_file.h"

#define ANVIL_UNTIED_LM_HEAD "lm_head.weight"

/* The linear over the logit rows (the LM head), or -1. */
anvil_value anvil_lm_head_op(const anvil_network *net);

/* Whether the LM head's weight is read by another op too (tied). */
int anvil_lm_head_is_tied(const anvil_network *net);

/* Whether the LM head reads a weight of its own made by anvil_lm_head_untie. */
int anvil_lm_head_was_untied(const anvil_network *net);

/* Gives the LM head its own weight ANVIL_UNTIED_LM_HEAD (anvil_network_untie). */
anvil_status anvil_lm_head_untie(anvil_network *net);

/* What an engine's manifest says: unties net's LM head where the build did
 * (build.untied_lm_head), so that net is the network the engine was built
 * from; else nothing. */
anvil_status anvil_lm_head_untie_as_engine(const anvil_engine_file *f, anvil_network *net);

#endif
