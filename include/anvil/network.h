/*
 * anvil/network.h: the model-definition API.
 *
 * A network is a list of ops over named weights. Every value is a 2-D
 * activation [rows, width]: rows are the tokens of a forward step's packed
 * batch (or, after anvil_net_logit_rows, the rows that need logits), width is
 * fixed when the op is added. A model file describes its architecture with
 * these calls, naming each weight as its checkpoint does; the builder checks
 * every weight's shape against what the ops declare.
 *
 * Recipes: a weight is by default the checkpoint tensor of its name. A model
 * whose checkpoint stores it otherwise (Phi-3's fused qkv_proj, stacked
 * experts) declares where it comes from before an op names it:
 *
 *     // q, k and v are rows of one checkpoint tensor
 *     anvil_net_weight_slice(net, "layers.0.q", "model.layers.0.self_attn.qkv_proj.weight", 0, 0);
 *     anvil_net_weight_slice(net, "layers.0.k", "model.layers.0.self_attn.qkv_proj.weight", 0, q_width);
 *     anvil_value q = anvil_net_linear(net, n, "layers.0.q", NULL, q_width);
 *
 * The builder (src/builder/) turns recipes into prepared weights: it reads
 * the sources, slices and concatenates, converts, and (later) quantizes and
 * shards; the runtime only places what it prepared.
 *
 *     anvil_value x = anvil_net_embedding(net, "model.embed_tokens.weight", vocab, hidden);
 *     anvil_value h = anvil_net_rmsnorm(net, x, "model.layers.0.input_layernorm.weight", eps);
 *     ...
 *     anvil_net_set_output(net, logits);
 *     anvil_status st = anvil_network_status(net);
 *
 * Errors are sticky: an op added with bad arguments records the first error
 * and returns ANVIL_VALUE_NONE; later calls do nothing; anvil_network_status()
 * reports it. So model code stays a straight list of ops.
 */
#ifndef ANVIL_NETWORK_H
#define ANVIL_NETWORK_H

#include <stdint.h>

#include "anvil/model_config.h"
#include "anvil/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct anvil_network anvil_network;
typedef int32_t anvil_value; /* index of the op that produces it */

#define ANVIL_VALUE_NONE ((anvil_value)-1)

typedef enum anvil_op_kind {
    ANVIL_OP_EMBEDDING = 0, /* rows of a table picked by token id */
    ANVIL_OP_RMSNORM,       /* x / rms(x) * w */
    ANVIL_OP_HEAD_RMSNORM,  /* the same over each head of a row */
    ANVIL_OP_LINEAR,        /* x W^T + b */
    ANVIL_OP_ROPE,          /* rotary position embedding, in place semantics */
    ANVIL_OP_ATTENTION,     /* cache k/v, causal attention over the paged cache */
    ANVIL_OP_SILU_MUL,      /* silu(a) * b */
    ANVIL_OP_ADD,           /* a + b */
    ANVIL_OP_LOGIT_ROWS,    /* the rows that need logits */
    ANVIL_OP_GELU_TANH_MUL, /* gelu_tanh(a) * b (Gemma's gated MLP) */
    ANVIL_OP_SCALE,         /* x * c, c rounded to the activation dtype first */
    ANVIL_OP_SOFTCAP,       /* tanh(x / c) * c (Gemma 2's final logits) */
    ANVIL_OP_ALL_REDUCE,    /* the sum over the ranks (tensor parallelism), in place */
    ANVIL_OP_ALL_GATHER,    /* every rank's columns side by side, in rank order */
    ANVIL_OP_MOE,           /* mixture of experts: router, top-k, the experts' gated MLPs, weighted sum */
    ANVIL_OP_LAYERNORM,     /* (x - mean) / sqrt(var + eps) * w + b (GPT-2) */
    ANVIL_OP_GELU_TANH,     /* gelu_tanh(x) (GPT-2's non-gated MLP) */
    ANVIL_OP_POS_EMBEDDING, /* x + table[position] (GPT-2's learned absolute positions) */
    ANVIL_OP_MLA,           /* multi-head latent attention over a cache of latents (DeepSeek-V2) */
    ANVIL_OP_SEND,          /* x to another pipeline stage (in place: the value is x) */
    ANVIL_OP_RECV,          /* a value from another pipeline stage */
    ANVIL_OP_COUNT,
} anvil_op_kind;

typedef struct anvil_attention_params {
    int32_t layer;          /* which KV cache layer */
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t sliding_window; /* 0: full attention */
    float scale;            /* 0: 1 / sqrt(head_dim) */
    float softcap;          /* 0: none; else each scaled logit s becomes tanh(s / softcap) * softcap
                               before the mask and the softmax (Gemma 2's attn_logit_softcapping) */
} anvil_attention_params;

/* A mixture-of-experts op's shape (anvil_net_moe). */
typedef struct anvil_moe_params {
    int32_t n_experts;      /* E */
    int32_t top_k;          /* experts per token, 1..E */
    int64_t inter;          /* I: each expert's intermediate size */
    int64_t shared_inter;   /* Is: the shared expert's intermediate size; 0: none */
    int32_t norm_topk_prob; /* 1: the k routing weights divided by their sum (Mixtral always) */
    /* DeepSeek-V2's router (0 everywhere in the others'): the experts in
     * n_group equal groups, each token's top_k taken among the topk_group
     * groups whose best expert scores highest (the others' scores 0), the
     * weights then times routed_scale; n_group 0 or 1: plain top-k, 0 or 1:
     * no scaling */
    int32_t n_group;
    int32_t topk_group;
    float routed_scale;
    int32_t shared_ungated; /* 1: the shared expert is added as it is (DeepSeek's), no shared_gate */
} anvil_moe_params;

/*
 * Multi-head latent attention's shape (anvil_net_mla, DeepSeek-V2). Per
 * head h, q is nope_dim then rope_dim wide; keys and values come from a
 * latent c of kv_rank and one rope key shared by every head: k_h =
 * [W_UK_h c, rope(k_pe)], v_h = W_UV_h c, with kv_b [n_heads (nope_dim +
 * v_dim), kv_rank] holding W_UK_h (nope_dim rows) then W_UV_h (v_dim
 * rows) for each head in turn (transformers' kv_b_proj).
 */
typedef struct anvil_mla_params {
    int32_t layer;    /* which KV cache layer */
    int32_t n_heads;
    int32_t kv_rank;  /* kv_lora_rank */
    int32_t nope_dim; /* qk_nope_head_dim */
    int32_t rope_dim; /* qk_rope_head_dim (even) */
    int32_t v_dim;    /* v_head_dim */
    float scale;      /* softmax scale, > 0 */
} anvil_mla_params;

/* An empty network. *out is NULL on failure. */
anvil_status anvil_network_create(anvil_network **out);
void anvil_network_free(anvil_network *net); /* NULL is a no-op */

/* The first error recorded while adding ops (ANVIL_OK when none), with its
 * message restored into anvil_last_error(). Also fails if no output is set. */
anvil_status anvil_network_status(const anvil_network *net);

/* ---- recipes (see the top). Names are copied. Declared before the first
 * op that names the weight; its shape then comes from that op. */

/* `name` is the stretch of axis `axis` (0 or 1) of the checkpoint tensor
 * `source` that starts at `start` and is as long as the weight's own extent
 * along that axis. A source with one more dimension than the weight is a
 * stack: axis must be 0 and `start` picks one of its matrices. */
void anvil_net_weight_slice(anvil_network *net, const char *name, const char *source, int axis, int64_t start);
/* `name` is the checkpoint tensors sources[0..n) concatenated along axis 0
 * or 1. */
void anvil_net_weight_concat(anvil_network *net, const char *name, int axis, const char *const *sources,
                             int32_t n);

/* `name` [rows, cols] is columns [start, start + rows) of the 2-D
 * checkpoint tensor `source` [cols, n] transposed: name[r][c] =
 * source[c][start + r]. GPT-2's Conv1D stores its weights [in, out], the
 * transpose of nn.Linear's [out, in] that anvil's linear takes; its fused
 * c_attn [H, 3H] gives q, k and v with starts 0, H and 2H. */
void anvil_net_weight_transpose(anvil_network *net, const char *name, const char *source, int64_t start);

/* ---- ops. Weight names are copied. A NULL bias means none. */
anvil_value anvil_net_embedding(anvil_network *net, const char *weight, int64_t vocab, int64_t width);
anvil_value anvil_net_rmsnorm(anvil_network *net, anvil_value x, const char *weight, double eps);
/* x / rms(x) * (weight_offset + w), the sum taken in f32 from the stored w
 * (Gemma's RMSNorm: weight_offset 1, as transformers' (1 + w.float())). */
anvil_value anvil_net_rmsnorm_offset(anvil_network *net, anvil_value x, const char *weight, double eps,
                                     float weight_offset);
anvil_value anvil_net_head_rmsnorm(anvil_network *net, anvil_value x, const char *weight, int64_t head_dim,
                                   double eps);
anvil_value anvil_net_linear(anvil_network *net, anvil_value x, const char *weight, const char *bias,
                             int64_t out_features);
anvil_value anvil_net_rope(anvil_network *net, anvil_value x, int64_t head_dim, const anvil_rope_config *rope);
anvil_value anvil_net_attention(anvil_network *net, anvil_value q, anvil_value k, anvil_value v,
                                const anvil_attention_params *p);
anvil_value anvil_net_silu_mul(anvil_network *net, anvil_value gate, anvil_value up);
anvil_value anvil_net_add(anvil_network *net, anvil_value a, anvil_value b);
/* gelu(gate) * up, GELU with the tanh approximation (PyTorch's
 * approximate="tanh", transformers' gelu_pytorch_tanh):
 * 0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3))). */
anvil_value anvil_net_gelu_tanh_mul(anvil_network *net, anvil_value gate, anvil_value up);
/* x * c, c first rounded to the activation dtype, as torch multiplies by
 * torch.tensor(c, dtype=x.dtype) (Gemma's embedding normalizer); c finite
 * and nonzero. */
anvil_value anvil_net_scale(anvil_network *net, anvil_value x, float c);
/* tanh(x / cap) * cap, cap > 0 (Gemma 2's final_logit_softcapping). */
anvil_value anvil_net_softcap(anvil_network *net, anvil_value x, float cap);
anvil_value anvil_net_logit_rows(anvil_network *net, anvil_value x);
/* LayerNorm over each row, as torch.nn.LayerNorm in f32: mean m and
 * (biased) variance v of the row, (x - m) / sqrt(v + eps) * w + b; w and
 * b [width] (GPT-2's ln_1, ln_2, ln_f). */
anvil_value anvil_net_layernorm(anvil_network *net, anvil_value x, const char *weight, const char *bias,
                                double eps);
/* gelu(x) with the tanh approximation, not gated: 0.5 x (1 + tanh(sqrt(2 /
 * pi) (x + 0.044715 x^3))) (transformers' gelu_new and gelu_pytorch_tanh). */
anvil_value anvil_net_gelu_tanh(anvil_network *net, anvil_value x);
/* x + table[p] for each row, p the row's position in its sequence: learned
 * absolute position embeddings (GPT-2's wpe), table [n_positions, width];
 * a position past the table is refused by the backend. */
anvil_value anvil_net_pos_embedding(anvil_network *net, anvil_value x, const char *table, int64_t n_positions);
/* Mixture of experts over x [T, H] (Mixtral, Qwen2-MoE, Qwen3-MoE), as
 * transformers computes it: p = softmax(x router^T) in f32 ([E, H] router),
 * the top_k largest (the lower expert on ties, as torch.topk), divided by
 * their sum with norm_topk_prob; out = sum over the k experts e of
 * p_e * down_e(silu(gate_e x) * up_e x), plus, with a shared expert
 * (shared_inter > 0), sigmoid(x shared_gate^T) * shared_down(silu(sg x) *
 * su x). Weights: gate_up [E * 2I, H], expert e's gate rows then its up
 * rows ([e * 2I, e * 2I + I) and [e * 2I + I, (e + 1) * 2I)); down
 * [E * H, I], expert e's rows [e * H, (e + 1) * H); shared_gate_up [2 Is, H]
 * (gate rows then up rows), shared_down [H, Is], shared_gate [1, H]; the
 * shared names NULL without a shared expert; shared_gate NULL with
 * shared_ungated (DeepSeek-V2: the shared experts' output added as it is,
 * and the routing of n_group / topk_group / routed_scale, see
 * anvil_moe_params). A model stacks its checkpoint's per-expert tensors
 * into these with concat recipes. */
anvil_value anvil_net_moe(anvil_network *net, anvil_value x, const char *router, const char *gate_up,
                          const char *down, const char *shared_gate_up, const char *shared_down,
                          const char *shared_gate, const anvil_moe_params *p);
/* Tensor parallelism (docs/parallel.md): a network cut for one of several
 * ranks (anvil_network_shard in the builder) joins the ranks' partial
 * values with these; the runtime runs them through its communicator.
 * all_reduce: x summed over the ranks, the same width. all_gather: the
 * n_ranks ranks' x side by side in rank order, n_ranks times x's width. */
/* Multi-head latent attention (DeepSeek-V2; anvil_mla_params): q [T,
 * n_heads (nope_dim + rope_dim)], c [T, kv_rank] the normalized latent,
 * k_pe [T, rope_dim] the shared rope key, not rotated yet; kv_b the
 * checkpoint's kv_b_proj. The op rotates the rope parts of q and k_pe
 * with `rope` in interleaved pairs (x[2i], x[2i + 1]), as transformers'
 * apply_rotary_emb multiplies complex numbers, caches [c, rope(k_pe)] (one
 * row of kv_rank + rope_dim a token: the KV cache's only "head", no
 * values), and attends causally with keys and values expanded from the
 * cached latents. Result [T, n_heads v_dim]. */
anvil_value anvil_net_mla(anvil_network *net, anvil_value q, anvil_value c, anvil_value k_pe, const char *kv_b,
                          const anvil_rope_config *rope, const anvil_mla_params *p);
anvil_value anvil_net_all_reduce(anvil_network *net, anvil_value x);
anvil_value anvil_net_all_gather(anvil_network *net, anvil_value x, int32_t n_ranks);
/* Pipeline parallelism (docs/parallel.md): a network cut into stages
 * (anvil_network_stage in the builder) hands values from stage to stage
 * with these; the runtime runs them through its chain of stages. send: x
 * to stage `peer` as message `tag` (0 .. 32767), the value x itself (in
 * place). recv: a value of `width` columns over the token rows (row_kind
 * 0) or the logit rows (1) from stage `peer`, message `tag`. */
anvil_value anvil_net_send(anvil_network *net, anvil_value x, int32_t peer, int32_t tag);
anvil_value anvil_net_recv(anvil_network *net, int64_t width, int row_kind, int32_t peer, int32_t tag);
/* The network's output: the logits, a value over the logit rows; or, for
 * a pipeline stage between the first and the last, which makes none, the
 * send of its last value on. */
void anvil_net_set_output(anvil_network *net, anvil_value logits);

/* ---- reading a network back (the runtime, the builder passes, tests) */

/* Where a weight's values come from (see the recipes above). */
typedef enum anvil_recipe_kind {
    ANVIL_RECIPE_TENSOR = 0, /* the checkpoint tensor sources[0] as it is */
    ANVIL_RECIPE_SLICE,      /* a stretch of sources[0] (axis, start) */
    ANVIL_RECIPE_CONCAT,     /* sources[0..n_sources) concatenated along axis */
    ANVIL_RECIPE_TRANSPOSE,  /* columns [start, start + shape[0]) of sources[0], transposed */
} anvil_recipe_kind;

typedef struct anvil_net_weight {
    const char *name;
    int n_dims;
    int64_t shape[2];
    anvil_recipe_kind recipe;
    int axis;                    /* SLICE, CONCAT */
    int64_t start;               /* SLICE, TRANSPOSE */
    int32_t n_sources;
    const char *const *sources;  /* checkpoint tensor names; TENSOR: { name } */
    /* A part of each source (the tensor-parallel cut, builder/shard_plan.c;
     * part_len 0: whole sources, as a model file declares them). CONCAT:
     * each source gives its stretch [part_start, part_start + part_len)
     * along part_axis (a stack of experts, each cut alike). TRANSPOSE: the
     * source's rows [part_start, part_start + part_len) are the weight's
     * columns (part_len = shape[1]). */
    int part_axis;
    int64_t part_start, part_len;
} anvil_net_weight;

typedef struct anvil_net_op {
    anvil_op_kind kind;
    anvil_value inputs[3];   /* ANVIL_VALUE_NONE where unused */
    /* [n_weights] indices into the weight list, at least 2 (so weights[0]
     * and weights[1] are always there); -1 where unused (e.g. no bias) */
    const int32_t *weights;
    int32_t n_weights;
    int32_t weights_at;      /* (where weights start in the network's pool) */
    int64_t width;           /* columns of the result */
    int row_kind;            /* 0: one row per token, 1: one row per logit row */
    double eps;              /* norms */
    float weight_offset;     /* rmsnorm: y = x / rms(x) * (weight_offset + w); 0 but for Gemma */
    float scalar;            /* scale: the factor c; softcap: the cap */
    int64_t head_dim;        /* head norms, rope; all_gather: the number of ranks */
    int64_t first_id;        /* embedding: the token id of the table's row 0 (a vocabulary slice under
                                tensor parallelism: ids outside the table give zeros); 0 otherwise */
    anvil_rope_config rope;  /* rope */
    anvil_attention_params attn; /* attention */
    anvil_moe_params moe;    /* moe: weights router, gate_up, down, shared_gate_up, shared_down, shared_gate */
    anvil_mla_params mla;    /* mla: weight kv_b; its rope in `rope`, rope_dim in head_dim */
    int32_t peer, tag;       /* send, recv: the other stage and the message's tag */
} anvil_net_op;

int32_t anvil_network_op_count(const anvil_network *net);
const anvil_net_op *anvil_network_op(const anvil_network *net, int32_t i);
int32_t anvil_network_weight_count(const anvil_network *net);
const anvil_net_weight *anvil_network_weight(const anvil_network *net, int32_t i);
/* The index of the weight named `name`, or -1. */
int32_t anvil_network_find_weight(const anvil_network *net, const char *name);
anvil_value anvil_network_output(const anvil_network *net);
/* Gives op v (a linear) a weight of its own named `name`: the whole
 * checkpoint matrix its weight read (a slice recipe of it), where it
 * shared that weight with another op (tied embeddings whose LM head is
 * quantized; docs/quantization.md). ANVIL_ERR_INVALID_ARG for an op
 * without a weight or a name in use, ANVIL_ERR_UNSUPPORTED for a weight
 * that is not one checkpoint matrix. */
anvil_status anvil_network_untie(anvil_network *net, anvil_value v, const char *name);
/* The number of attention layers (KV cache layers) the network uses. */
int32_t anvil_network_kv_layers(const anvil_network *net);
const char *anvil_op_kind_name(anvil_op_kind kind);

/* ---- the model registry */

typedef anvil_status (*anvil_model_build_fn)(const anvil_model_config *cfg, anvil_network *net);

/* The builder for an HF architecture name ("LlamaForCausalLM", ...), or
 * ANVIL_ERR_UNSUPPORTED with a message that names it and lists the
 * supported ones. */
anvil_status anvil_model_lookup(const char *architecture, anvil_model_build_fn *out);

/* Describes the model of cfg into a new network (*out NULL on failure). */
anvil_status anvil_model_build_network(const anvil_model_config *cfg, anvil_network **out);

#ifdef __cplusplus
}
#endif
#endif
