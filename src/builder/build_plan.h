/*
 * The build plan: how a network's weights are stored and prepared.
 *
 * A network weight (what an op names) is a view into a stored tensor (what
 * an engine file's weight table lists and the runtime allocates): one
 * stored tensor per weight, except where the fusion plan runs several
 * linears of one input as one fused op (q, k and v; gate and up). Their
 * matrices are then stored back to back, concatenated along axis 0, as one
 * tensor ("model.layers.0.self_attn.q_proj.weight+k_proj+v_proj"), so that
 * the backend sees one matrix.
 *
 * Each stored tensor has a storage kind (f32, bf16, f16 today; room for
 * fp8 e4m3, int8 and packed int4 with scales and zero points) and is
 * prepared from the checkpoint by anvil_build_fill: every member weight's
 * recipe (anvil/network.h) read from its sources (slices, stacks,
 * concatenations), converted to the kind. The plan is made from a network
 * and a checkpoint (anvil_build_plan_make: it checks every source's
 * presence, dtype and shape first, so nothing is allocated for a broken
 * checkpoint), or read back from an engine's manifest.
 *
 *     anvil_build_plan *p;
 *     TRY(anvil_build_plan_make(net, ck, &opts, &p));
 *     for (int32_t s = 0; s < p->n_stored; s++)
 *         ... anvil_build_fill(p, net, ck, s, off, buf, len, scratch) in chunks ...
 */
#ifndef ANVIL_BUILDER_BUILD_PLAN_H
#define ANVIL_BUILDER_BUILD_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/builder.h"
#include "anvil/network.h"
#include "core/tensor.h"
#include "backend/backend.h"
#include "builder/fuse_plan.h"
#include "io/quant_config.h"
#include "io/safetensors.h"

/* Which part of a logical tensor a stored tensor is: rank `rank` of
 * `count` equal parts along `axis`. Every stored tensor is whole today
 * (count 1); tensor parallelism (issue 16) cuts weights into shards through
 * the same recipes (a slice per rank) and records it here. */
typedef struct anvil_shard {
    int32_t rank, count;
    int axis; /* -1 when whole */
} anvil_shard;

/* What a stored tensor is: a weight (or fused weights), or a companion of
 * a quantized weight (docs/quantization.md): its scales (f32 [N] or
 * [N, K / group]), zero points (u8 [N, K / group], int4 only) or column
 * permutation (i32 [K]). A companion is stored right after its weight and
 * has no member weights of its own. */
typedef enum anvil_stored_role {
    ANVIL_STORED_WEIGHT = 0,
    ANVIL_STORED_SCALES,
    ANVIL_STORED_ZEROS,
    ANVIL_STORED_PERM,
} anvil_stored_role;

/* A quantized weight's description (the engine's "scales" object): which
 * stored tensors hold its companions and how its scales apply. The values
 * of anvil_quant (core/tensor.h) but for pointers, which the runtime makes
 * from these indices. */
typedef struct anvil_stored_quant {
    int32_t scales, zeros, perm; /* stored tensors, -1 where none; scales >= 0: quantized */
    int32_t group;               /* K columns per scale; 0: one scale per row */
    anvil_quant_act act;
    float input_scale;           /* ANVIL_QUANT_ACT_FP8_STATIC */
} anvil_stored_quant;

typedef struct anvil_build_plan anvil_build_plan;
typedef struct anvil_build_scratch anvil_build_scratch;

/*
 * How a stored tensor's bytes are made, where it is not its members'
 * recipes converted to its kind: quantization (builder/quantize.c: "rtn",
 * round to nearest), and later a pre-quantized checkpoint's packed tensors
 * repacked. fill has anvil_build_fill's contract (ck NULL: random weights
 * from the plan's seed), for the weight and for each of its companions;
 * chunks come in any order and on any thread, so it keeps no state.
 */
typedef struct anvil_stored_converter {
    const char *method; /* the manifest's build.quantization.method: "rtn", ... */
    anvil_status (*fill)(const anvil_build_plan *p, const anvil_network *net, const anvil_checkpoint *ck,
                         int32_t s, size_t offset, void *dst, size_t len, anvil_build_scratch *scratch);
} anvil_stored_converter;

/* A tensor as stored (engine weight table, runtime allocation). */
typedef struct anvil_stored {
    char *name;
    anvil_dtype kind;  /* the storage kind */
    anvil_shard shard; /* {0, 1, -1}: whole */
    int n_dims;        /* 1 or 2 */
    int64_t shape[2];
    size_t bytes;
    int32_t first, n; /* its member weights: members[first .. first + n), stacked along axis 0; n 0 for companions */
    anvil_stored_role role;
    int32_t of;                         /* a companion's weight (stored index); -1 for weights */
    anvil_stored_quant q;               /* weights: scales -1 when not quantized */
    const anvil_stored_converter *conv; /* NULL: the members' recipes converted to kind */
} anvil_stored;

struct anvil_build_plan {
    int32_t n_weights; /* the network's */
    int32_t n_ops;
    int32_t n_stored;
    anvil_stored *stored;   /* [n_stored]: room for ANVIL_PLAN_STORED_PER_WEIGHT per weight */
    int32_t *members;       /* [n_weights] weight indices, grouped by stored tensor */
    int32_t *weight_stored; /* [n_weights] the stored tensor of each weight */
    int64_t *weight_offset; /* [n_weights] its first element in that stored tensor */
    anvil_fuse *fuse;       /* [n_ops] the fusion plan */
    size_t total_bytes;     /* of every stored tensor */
    uint64_t seed;          /* random weights' (fills with no checkpoint) */
    /* a pre-quantized checkpoint's config (format NONE: none), what
     * anvil_prequant_converter reads (its ignore list is not kept: the
     * plan already says which weights are quantized) */
    anvil_quant_config prequant;
    /* AWQ's scales (builder/awq.h), borrowed during a build with --calib:
     * what anvil_awq_converter's fills read; NULL otherwise */
    const struct anvil_awq *awq;
};

/* A weight and its scales, zero points and permutation at most. */
#define ANVIL_PLAN_STORED_PER_WEIGHT 4

/* Bytes of n elements of kind (U4: packed two a byte, ceil(n / 2)); 0 on
 * overflow. */
size_t anvil_stored_kind_bytes(anvil_dtype kind, int64_t n);

/* The kinds a stored weight may have, and those of quantized weights. */
int anvil_stored_kind_is_float(anvil_dtype kind);     /* f32, bf16, f16 */
int anvil_stored_kind_is_quantized(anvil_dtype kind); /* f8_e4m3, i8, u4 */

typedef struct anvil_plan_options {
    /* Every weight converted to this kind; ANVIL_DTYPE_COUNT: each as its
     * checkpoint stores it (a recipe's sources must then agree). */
    anvil_dtype weight_dtype;
    /* The fused ops the target has (the fusion plan uses only those);
     * NULL or no_fusion: none, and no weight stored fused. */
    const anvil_fuse_caps *caps;
    int no_fusion;
    /* Quantize the linear weights (those only linear ops over token rows
     * read: not the LM head): fp8 -> F8_E4M3, int8-wo -> I8, int4-wo -> U4
     * in groups of quant_group (0: 128), each with its companions and the
     * RTN converter (builder/quantize.c). */
    anvil_quantize quantize;
    int32_t quant_group;
    /* The checkpoint's quantization config (anvil_quant_config_load; NULL
     * or format NONE: a plain checkpoint): the linear weights it says are
     * quantized are stored as they convert to the canonical form
     * (builder/prequant.h), with their companions. Not with quantize. */
    const anvil_quant_config *prequant;
    /* With quantize: the LM head too (a linear over the logit rows; its
     * weight must be its own, builder/lm_head.h, not an embedding's). */
    int quantize_lm_head;
} anvil_plan_options;

/*
 * Makes the plan for net's weights from checkpoint ck (NULL: a plan for
 * random weights, of opts->weight_dtype, which must be set). Every recipe is
 * checked against ck first: a missing source is ANVIL_ERR_NOT_FOUND
 * ("missing tensor 'X' in the checkpoint"), a source whose dtype is not
 * f32/bf16/f16 ANVIL_ERR_UNSUPPORTED, a shape that does not give the
 * weight's shape ANVIL_ERR_FORMAT ("tensor 'X' has shape [..] but the config
 * implies [..]"). *out is NULL on failure.
 */
anvil_status anvil_build_plan_make(const anvil_network *net, const anvil_checkpoint *ck,
                                   const anvil_plan_options *opts, anvil_build_plan **out);

/* A plan without stored tensors yet, for readers that fill it (an engine's
 * manifest): n_weights / n_ops set, arrays allocated, fuse all NONE. */
anvil_status anvil_build_plan_alloc(int32_t n_weights, int32_t n_ops, int32_t n_stored,
                                    anvil_build_plan **out);

/* Checks a plan against net: every weight in exactly one stored tensor,
 * offsets and shapes consistent, members of a stored tensor of one width,
 * bytes = elements x kind size, the fusion plan's groups well formed.
 * ANVIL_ERR_FORMAT naming what does not fit. */
anvil_status anvil_build_plan_check(const anvil_build_plan *p, const anvil_network *net);

void anvil_build_plan_free(anvil_build_plan *p); /* NULL is a no-op */

/* Scratch for anvil_build_fill: room for ANVIL_BUILD_CHUNK bytes of
 * sources and of their f32 values, and for a converter's rows (made on
 * first use), one per thread. */
#define ANVIL_BUILD_CHUNK ((size_t)16 << 20)
anvil_status anvil_build_scratch_create(anvil_build_scratch **out);
void anvil_build_scratch_free(anvil_build_scratch *s);

/*
 * Writes bytes [offset, offset + len) of stored tensor s, in its kind, into
 * dst: what its members' recipes give from ck (NULL: random weights from
 * p->seed), through its converter where it has one. offset and len must be
 * multiples of the kind's element size (U4: any bytes), len at most
 * ANVIL_BUILD_CHUNK.
 * Reads through anvil_st_read (pread or the mapping): a checkpoint that
 * changed since the plan was made is ANVIL_ERR_IO. Safe from several
 * threads with a scratch each.
 */
anvil_status anvil_build_fill(const anvil_build_plan *p, const anvil_network *net, const anvil_checkpoint *ck,
                              int32_t s, size_t offset, void *dst, size_t len, anvil_build_scratch *scratch);

/*
 * The f32 values of elements [a, b) of stored weight tensor s as its
 * members' recipes give them (before any conversion to its kind), into
 * dst: what a converter quantizes. ck NULL: the random weights of p->seed.
 * b - a at most ANVIL_BUILD_CHUNK / 4.
 */
anvil_status anvil_build_values(const anvil_build_plan *p, const anvil_network *net, const anvil_checkpoint *ck,
                                int32_t s, int64_t a, int64_t b, float *dst, anvil_build_scratch *scratch);

/* A converter's row buffer in scratch: at least `bytes` (up to
 * ANVIL_BUILD_CHUNK), made on first use; NULL when out of memory. */
void *anvil_build_scratch_rows(anvil_build_scratch *scratch, size_t bytes);

/* Checks every recipe of net against checkpoint ck, as
 * anvil_build_plan_make does (sources present, f32/bf16/f16, shapes that
 * give each weight's): for a plan made from another checkpoint, before it
 * fills from ck (a refit). The errors are anvil_build_plan_make's. */
anvil_status anvil_build_check_checkpoint(const anvil_network *net, const anvil_checkpoint *ck);

/* The member weight of stored tensor s that holds its element `elem`
 * (*at: the element's index in that weight), for messages. */
int32_t anvil_build_member_at(const anvil_build_plan *p, int32_t s, int64_t elem, int64_t *at);

/* When stored tensor s is exactly one checkpoint tensor in its own dtype,
 * that tensor (its bytes can be used or copied as they are); else NULL. */
const anvil_st_tensor *anvil_build_plain_source(const anvil_build_plan *p, const anvil_network *net,
                                                const anvil_checkpoint *ck, int32_t s);

#endif
