/*
 * The runtime's sizes, worked out before anything is allocated: which
 * activation buffer each value of the network uses and how large each is,
 * the KV cache's bytes per token, the step metadata. Every product is
 * checked (core/checked.h): a config or an option whose sizes would not fit
 * 64 bits is an error naming them, never a wrapped, small allocation.
 *
 * Pure functions over the network and the options, without a backend:
 * anvil_runtime_load allocates what they planned, and
 * anvil_runtime_plan_sizes (runtime.c) runs the same planning alone, for
 * the config fuzz target and for tests.
 */
#ifndef ANVIL_RUNTIME_PLAN_H
#define ANVIL_RUNTIME_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/network.h"
#include "anvil/runtime.h"
#include "builder/fuse_plan.h"

/*
 * Assigns each value of net a buffer. Walking the ops in order, a value's
 * buffer returns to the free list after its last use; a new value takes
 * the smallest free buffer that fits, else a new one. Rope rotates in
 * place, so its result shares its input's buffer.
 *
 * A value of an op over token rows holds token_rows rows, one over logit
 * rows logit_rows rows, each of op->width elements of act_size bytes.
 * value_buffer and buffer_bytes have room for every op (the op count);
 * *n_buffers and *total_bytes receive the buffers' count and their sum.
 * fuse ([n_ops], may be all ANVIL_FUSE_NONE) lengthens the lives of fused
 * groups' inputs. Linear in the ops (the free list stays as short as the
 * values alive at once). ANVIL_ERR_UNSUPPORTED when a size overflows.
 */
anvil_status anvil_plan_activations(const anvil_network *net, const anvil_fuse *fuse, int32_t token_rows,
                                    int32_t logit_rows, size_t act_size, int32_t *value_buffer,
                                    size_t *buffer_bytes, int32_t *n_buffers, size_t *total_bytes);

/* Bytes of KV cache one token takes: keys and values of n_layers layers,
 * n_kv_heads x head_dim elements of act_size bytes each. */
anvil_status anvil_plan_kv_bytes_per_token(int64_t n_layers, int64_t n_kv_heads, int64_t head_dim,
                                           size_t act_size, size_t *out);

/* The int32 count of one step's metadata (anvil_runtime.c prepare_step's
 * layout) for options o and a block table of max_blocks_per_seq a sequence. */
anvil_status anvil_plan_step_ints(const anvil_runtime_options *o, int32_t max_blocks_per_seq, size_t *out);

/* "1.5 GiB", "512 B": bytes for messages, into buf (returned). */
const char *anvil_plan_fmt_bytes(size_t bytes, char *buf, size_t cap);

/* What anvil_runtime_plan_sizes found. */
typedef struct anvil_runtime_sizes {
    int32_t max_seq_len;     /* the options' or the config's context */
    int64_t kv_cache_tokens; /* the pool in tokens; 0: sized from memory at load (kv_cache_fraction) */
    int32_t n_kv_layers;
    anvil_dtype kv_dtype;      /* the options' kv_cache_dtype resolved */
    size_t kv_bytes_per_token; /* keys and values of every layer */
    size_t kv_bytes;           /* the pool of kv_cache_tokens, in whole blocks (0 when sized from memory) */
    int32_t n_act_buffers;
    size_t act_bytes;  /* every activation buffer */
    size_t step_bytes; /* step metadata, and the logits staging when act is not f32 */
} anvil_runtime_sizes;

/*
 * Resolves opts (NULL: defaults) against cfg, builds the network and plans
 * every size a runtime of act_dtype activations would allocate, without a
 * backend, a checkpoint or any large allocation. ANVIL_OK with *out filled,
 * or the error anvil_runtime_load would give for the same config and
 * options before it allocates (a bound of the config, an option out of
 * range, a size that overflows). When mem_limit is nonzero, sizes that do
 * not fit in mem_limit bytes are refused as the load refuses what does not
 * fit the backend's free memory.
 */
anvil_status anvil_runtime_plan_sizes(const anvil_model_config *cfg, const anvil_runtime_options *opts,
                                      anvil_dtype act_dtype, size_t mem_limit, anvil_runtime_sizes *out);

#endif
