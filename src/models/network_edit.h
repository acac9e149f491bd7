/*
 * Rewriting a network op by op (the builder's tensor-parallel cut,
 * builder/shard_plan.c): the ops of one network copied into another with
 * new inputs, weights and widths, whatever their kind, so that an op kind
 * added later travels without a change here. What the copy keeps from the
 * source op is every parameter (eps, rope, attention, ...); the caller
 * answers for the consistency of what it changes.
 */
#ifndef ANVIL_MODELS_NETWORK_EDIT_H
#define ANVIL_MODELS_NETWORK_EDIT_H

#include <stdint.h>

#include "anvil/network.h"

/* The index of weight `name` in net, added with the given shape (n_dims 1:
 * d1 unused) when new or when declared by a recipe and not used yet; a
 * weight used before with another shape is an error. -1 on error
 * (recorded in net, see anvil_network_status). */
int32_t anvil_network_use_weight(anvil_network *net, const char *name, int n_dims, int64_t d0, int64_t d1);

/* The index in net of weight w of another network, under `name` (w's own
 * or another), with w's recipe and shape; a weight of that name already
 * in net is used as it is. -1 on error (recorded). */
int32_t anvil_network_copy_weight(anvil_network *net, const anvil_net_weight *w, const char *name);

/* Gives weight `name` of net, declared by a CONCAT or TRANSPOSE recipe
 * and not used yet, a part of each source (anvil_net_weight's part_*).
 * Recorded errors: no such recipe weight, or a weight already in use. */
void anvil_network_weight_part(anvil_network *net, const char *name, int part_axis, int64_t part_start,
                               int64_t part_len);

/* Appends a copy of op src with inputs[0..3) (values of net or
 * ANVIL_VALUE_NONE), weights[0..n_weights) (indices into net's weights or
 * -1) and the result's width; NONE on error (recorded). An attention
 * op's layer joins net's KV layers. */
anvil_value anvil_network_append_copy(anvil_network *net, const anvil_net_op *src, const anvil_value inputs[3],
                                      const int32_t *weights, int32_t n_weights, int64_t width);

#endif
