/*
 * Which ops of a network run fused on a given backend (the fused ops of
 * backend.h), decided once when the runtime loads.
 */
#ifndef ANVIL_BUILDER_FUSE_PLAN_H
#define ANVIL_BUILDER_FUSE_PLAN_H

#include <stdint.h>

#include "anvil/network.h"
#include "backend/backend.h"

typedef enum anvil_fuse_kind {
    ANVIL_FUSE_NONE = 0,      /* the op runs by itself */
    ANVIL_FUSE_SKIP,          /* done by the fused op of another index */
    ANVIL_FUSE_ADD_RMSNORM,   /* this add and the rmsnorm at i + 1 */
    ANVIL_FUSE_MATMUL_MULTI,  /* this linear and the n - 1 after it (one input) */
    ANVIL_FUSE_SILU_MUL,      /* linears gate (i), up (i + 1), silu_mul (i + 2) */
    ANVIL_FUSE_ROPE_ATTENTION, /* this attention and the two ropes of its q and k */
    /* made by anvil_fuse_merge_norm (the runtime's, never in an engine's plan): */
    ANVIL_FUSE_NORM_MULTI,    /* this add, the rmsnorm at i + 1 and the n linears after it (of the norm) */
    ANVIL_FUSE_NORM_SILU,     /* this add, the rmsnorm at i + 1, gate, up and silu_mul at i + 2..i + 4 */
    ANVIL_FUSE_KINDS
} anvil_fuse_kind;

typedef struct anvil_fuse {
    int8_t kind;              /* anvil_fuse_kind */
    int8_t n;                 /* ANVIL_FUSE_MATMUL_MULTI, ANVIL_FUSE_NORM_MULTI: linears in the group */
    int32_t rope_op;          /* ANVIL_FUSE_ROPE_ATTENTION: the rope of q (its table) */
} anvil_fuse;

/* Which fused ops a target has (backend.h's optional fused ops). */
typedef struct anvil_fuse_caps {
    int add_rmsnorm, matmul_multi, matmul_silu_mul, attention_rope;
    int add_rmsnorm_matmul_multi, add_rmsnorm_matmul_silu_mul;
} anvil_fuse_caps;

/* The fused ops of a backend's table; ops NULL: none. */
anvil_fuse_caps anvil_fuse_caps_of(const anvil_backend_ops *ops);

/* Every fused op (what the CPU and CUDA backends both have). */
anvil_fuse_caps anvil_fuse_caps_all(void);

/*
 * The fusion of each op ([n_ops], malloc'd into *out) for a target with
 * `caps`: all ANVIL_FUSE_NONE when disabled or when it has no fused op.
 * Only ops over token rows take part.
 */
anvil_status anvil_fuse_plan(const anvil_network *net, const anvil_fuse_caps *caps, int disabled, anvil_fuse **out);

/*
 * Merges, in a plan of anvil_fuse_plan, each add + rmsnorm group with the
 * matmul group that reads the norm alone after it (a matmul_multi group, a
 * single linear, or a gate/up + silu group) into one ANVIL_FUSE_NORM_MULTI
 * or ANVIL_FUSE_NORM_SILU group, where caps has the fused op. The runtime
 * does this after the plan is made or read from an engine, so engines
 * never hold these kinds (their plans stay what older anvils read).
 */
void anvil_fuse_merge_norm(const anvil_network *net, const anvil_fuse_caps *caps, anvil_fuse *f);

/* The same for the groups whose linears all have linear_ok[op] nonzero
 * ([n_ops], indexed by op; NULL: every group, anvil_fuse_merge_norm): the
 * runtime merges the groups of fp8 W8A8 weights alone by default, so that
 * the norm can make their fp8 activations (docs/cuda-backend.md). */
void anvil_fuse_merge_norm_where(const anvil_network *net, const anvil_fuse_caps *caps, anvil_fuse *f,
                                 const uint8_t *linear_ok);

/* The ops a group spans, [i, i + span): 1 for NONE, SKIP and attention
 * (whose ropes come before it). */
int32_t anvil_fuse_span(const anvil_fuse *g);

/*
 * Extends last_use[v] (the index of the last op reading value v) to the
 * last op of each fused group that reads v: a fused op reads its inputs
 * while it writes the outputs of later ops of the group, so those outputs
 * must not take the inputs' buffers.
 */
void anvil_fuse_extend_lives(const anvil_network *net, const anvil_fuse *f, int32_t *last_use);

/* How many groups of each kind (for the log line and tests). */
void anvil_fuse_counts(const anvil_fuse *f, int32_t n_ops, int32_t counts[ANVIL_FUSE_KINDS]);

#endif
