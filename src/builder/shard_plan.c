/*
 * The network of one tensor-parallel rank (shard_plan.h): each op's role
 * found from the network's shape (which linears feed attention or the
 * gated MLP, which read what those made), then the ops copied in order
 * with cut weights (slice recipes of the checkpoint tensors), cut widths
 * and the collectives after the linears that read cut values.
 */
#include "builder/shard_plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "models/network_edit.h"

typedef enum role {
    ROLE_NONE = 0, /* replicated */
    ROLE_Q,        /* output rows cut along query heads */
    ROLE_KV,       /* output rows cut along KV heads */
    ROLE_COL,      /* output rows cut in equal parts (gate, up) */
    ROLE_ROW,      /* input columns cut, then all_reduce (o_proj, down_proj) */
    ROLE_VOCAB,    /* the LM head: output rows cut along the vocabulary, then all_gather */
    ROLE_EMBED,    /* the embedding: table rows cut along the vocabulary, zeros elsewhere, then all_reduce */
    ROLE_MOE,      /* every expert's intermediate cut (gate/up rows, down columns), then all_reduce */
    ROLE_MLA_Q,    /* multi-head latent attention's q: output rows cut along heads (nope + rope each) */
    ROLE_MLA,      /* the mla op: its heads (kv_b's rows per head), on the whole latent */
} role;

typedef struct shard_ctx {
    const anvil_network *src;
    anvil_network *dst;
    int32_t rank, size;
    int cut_embedding; /* the backend can look up a vocabulary slice */
    int embedding_cut; /* the network's embedding is cut by vocabulary */
    int32_t head;      /* the LM head's op when cut by vocabulary, else -1 */
    role *roles;       /* [src ops] */
    int32_t *attn_of;  /* [src ops] a Q/KV linear's attention op */
    unsigned char *cut; /* [src ops] the value is this rank's part only */
    anvil_value *map;  /* [src ops] the value in dst that stands for it */
} shard_ctx;

/* The linear behind an attention input: through RoPE and head norms, which
 * work head by head and so keep a cut by heads. -1 when there is none. */
static int32_t linear_behind(const anvil_network *net, anvil_value v)
{
    for (;;) {
        const anvil_net_op *op = anvil_network_op(net, v);
        if (op == NULL)
            return -1;
        if (op->kind == ANVIL_OP_LINEAR)
            return op->row_kind == 0 ? v : -1;
        if (op->kind != ANVIL_OP_ROPE && op->kind != ANVIL_OP_HEAD_RMSNORM)
            return -1;
        v = op->inputs[0];
    }
}

/* The gated MLP's product of two linears' outputs, element by element. */
static int is_gated_product(anvil_op_kind k) { return k == ANVIL_OP_SILU_MUL || k == ANVIL_OP_GELU_TANH_MUL; }

/* An activation of one linear's output, element by element (GPT-2's
 * non-gated MLP: c_fc, gelu, c_proj). */
static int is_activation(anvil_op_kind k) { return k == ANVIL_OP_GELU_TANH; }

static anvil_status set_role(shard_ctx *c, int32_t lin, role r, int32_t attn)
{
    CHECK(c->roles[lin] == ROLE_NONE || (c->roles[lin] == r && (attn < 0 || c->attn_of[lin] == attn)),
          ANVIL_ERR_UNSUPPORTED, "tensor parallelism: linear op %d feeds two ops that cut it differently", lin);
    c->roles[lin] = r;
    if (attn >= 0)
        c->attn_of[lin] = attn;
    return ANVIL_OK;
}

/* The cut's counts for attention op p: query heads and KV heads per rank,
 * and this rank's first of each. */
static anvil_status heads_of(const shard_ctx *c, const anvil_attention_params *p, int32_t *hq, int32_t *q0,
                             int32_t *hkv, int32_t *kv0)
{
    const int32_t n = c->size, r = c->rank;
    CHECK(p->n_heads % n == 0, ANVIL_ERR_UNSUPPORTED,
          "tensor parallelism: %d attention heads cannot be split over %d ranks (layer %d)", p->n_heads, n,
          p->layer);
    CHECK(p->n_kv_heads % n == 0 || n % p->n_kv_heads == 0, ANVIL_ERR_UNSUPPORTED,
          "tensor parallelism: %d KV heads can be neither split over nor replicated on %d ranks (layer %d)",
          p->n_kv_heads, n, p->layer);
    *hq = p->n_heads / n;
    *q0 = r * *hq;
    /* fewer KV heads than ranks: each rank keeps the one its query heads
     * share (rank r's heads all lie in group r * n_kv / n) */
    *hkv = p->n_kv_heads >= n ? p->n_kv_heads / n : 1;
    *kv0 = (int32_t)((int64_t)r * p->n_kv_heads / n);
    return ANVIL_OK;
}

/* Which linear does what, and which values are cut (see shard_plan.h). */
static anvil_status find_roles(shard_ctx *c)
{
    const anvil_network *net = c->src;
    const int32_t n = anvil_network_op_count(net);
    for (int32_t i = 0; i < n; i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        if (op->kind == ANVIL_OP_MLA) {
            /* heads split: q and kv_b by heads; the latent and the rope
             * key (kv_a, its norm) replicated, each rank caching them whole */
            CHECK(op->mla.n_heads % c->size == 0, ANVIL_ERR_UNSUPPORTED,
                  "tensor parallelism: %d attention heads cannot be split over %d ranks (layer %d)",
                  op->mla.n_heads, c->size, op->mla.layer);
            const anvil_net_op *q = anvil_network_op(net, op->inputs[0]);
            CHECK(q != NULL && q->kind == ANVIL_OP_LINEAR && q->row_kind == 0, ANVIL_ERR_UNSUPPORTED,
                  "tensor parallelism: the q of mla layer %d does not come from a linear", op->mla.layer);
            TRY(set_role(c, op->inputs[0], ROLE_MLA_Q, i));
            c->roles[i] = ROLE_MLA;
        } else if (op->kind == ANVIL_OP_MOE) {
            CHECK(op->moe.inter % c->size == 0 && op->moe.shared_inter % c->size == 0, ANVIL_ERR_UNSUPPORTED,
                  "tensor parallelism: experts of %lld (shared: %lld) intermediate columns cannot be split over %d "
                  "ranks (moe op %d)",
                  (long long)op->moe.inter, (long long)op->moe.shared_inter, c->size, i);
            c->roles[i] = ROLE_MOE;
        } else if (op->kind == ANVIL_OP_EMBEDDING && c->cut_embedding &&
                   anvil_network_weight(net, op->weights[0])->shape[0] % c->size == 0) {
            c->roles[i] = ROLE_EMBED; /* a vocabulary the ranks do not divide stays whole */
            c->embedding_cut = 1;
        }
        if (op->kind == ANVIL_OP_ATTENTION) {
            for (int k = 0; k < 3; k++) {
                int32_t lin = linear_behind(net, op->inputs[k]);
                CHECK(lin >= 0, ANVIL_ERR_UNSUPPORTED,
                      "tensor parallelism: the %c of attention layer %d does not come from a linear", "qkv"[k],
                      op->attn.layer);
                TRY(set_role(c, lin, k == 0 ? ROLE_Q : ROLE_KV, i));
            }
        } else if (is_gated_product(op->kind)) {
            for (int k = 0; k < 2; k++) {
                const anvil_net_op *in = anvil_network_op(net, op->inputs[k]);
                CHECK(in->kind == ANVIL_OP_LINEAR && in->row_kind == 0, ANVIL_ERR_UNSUPPORTED,
                      "tensor parallelism: op %d (%s) does not multiply two linears", i,
                      anvil_op_kind_name(op->kind));
                TRY(set_role(c, op->inputs[k], ROLE_COL, -1));
            }
        } else if (is_activation(op->kind)) {
            const anvil_net_op *in = anvil_network_op(net, op->inputs[0]);
            CHECK(in->kind == ANVIL_OP_LINEAR && in->row_kind == 0, ANVIL_ERR_UNSUPPORTED,
                  "tensor parallelism: op %d (%s) does not follow a linear", i, anvil_op_kind_name(op->kind));
            TRY(set_role(c, op->inputs[0], ROLE_COL, -1));
        }
    }
    /* cut values, forward: a value computed from cut values alone is cut;
     * a linear that reads one sums the ranks' parts (ROW) */
    for (int32_t i = 0; i < n; i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        int n_in = 0, n_cut = 0;
        for (int k = 0; k < 3; k++)
            if (op->inputs[k] != ANVIL_VALUE_NONE) {
                n_in++;
                n_cut += c->cut[op->inputs[k]];
            }
        if (op->kind == ANVIL_OP_LINEAR && n_cut > 0) {
            CHECK(c->roles[i] == ROLE_NONE, ANVIL_ERR_UNSUPPORTED,
                  "tensor parallelism: linear op %d reads a cut value and feeds attention or the MLP", i);
            c->roles[i] = ROLE_ROW;
            continue;
        }
        if (c->roles[i] == ROLE_Q || c->roles[i] == ROLE_KV || c->roles[i] == ROLE_COL || c->roles[i] == ROLE_MLA_Q ||
            c->roles[i] == ROLE_MLA) { /* (mla: its q cut, its latent and rope key whole) */
            c->cut[i] = 1;
            continue;
        }
        if (n_cut == 0)
            continue;
        const int headwise = op->kind == ANVIL_OP_ROPE || op->kind == ANVIL_OP_HEAD_RMSNORM ||
                             op->kind == ANVIL_OP_ATTENTION || is_gated_product(op->kind) ||
                             is_activation(op->kind);
        CHECK(headwise && n_cut == n_in, ANVIL_ERR_UNSUPPORTED,
              "tensor parallelism: op %d (%s) cannot run on values cut across ranks", i,
              anvil_op_kind_name(op->kind));
        c->cut[i] = 1;
    }
    /* the LM head: the linear that makes the output (a pipeline's last
     * stage sends it on to the first: the linear behind that send) */
    anvil_value head = anvil_network_output(net);
    const anvil_net_op *out = anvil_network_op(net, head);
    if (out != NULL && out->kind == ANVIL_OP_SEND) {
        head = out->inputs[0];
        out = anvil_network_op(net, head);
    }
    if (out != NULL && out->kind == ANVIL_OP_LINEAR && c->roles[head] == ROLE_NONE && out->width % c->size == 0)
        c->roles[head] = ROLE_VOCAB; /* a vocabulary the ranks do not divide stays whole on every rank */
    c->head = out != NULL && c->roles[head] == ROLE_VOCAB ? head : -1;
    return ANVIL_OK;
}

/* How weight w of op is cut: along axis `axis` from `start`, `len` long
 * (len 0: whole). */
typedef struct cut_spec {
    int axis;
    int64_t start, len;
} cut_spec;

/* Declares in dst the recipe of source weight w cut by s (or whole), named
 * `name`, and adds it with its shape: *out its index in dst. */
static anvil_status put_weight(shard_ctx *c, const anvil_net_weight *w, const char *name, const cut_spec *s,
                               int32_t *out)
{
    anvil_network *dst = c->dst;
    if (s->len == 0) {
        *out = anvil_network_copy_weight(dst, w, name);
        return *out < 0 ? anvil_network_status(dst) : ANVIL_OK;
    }
    int64_t shape[2] = {w->shape[0], w->shape[1]};
    if (anvil_network_find_weight(dst, name) < 0) {
        if (w->recipe == ANVIL_RECIPE_TENSOR) {
            anvil_net_weight_slice(dst, name, w->sources[0], s->axis, s->start);
        } else if (w->recipe == ANVIL_RECIPE_TRANSPOSE && w->part_len == 0) {
            /* rows of a transposed weight are columns of its source, its
             * columns the source's rows (GPT-2's Conv1D c_proj) */
            anvil_net_weight_transpose(dst, name, w->sources[0], w->start + (s->axis == 0 ? s->start : 0));
            if (s->axis == 1)
                anvil_network_weight_part(dst, name, 0, s->start, s->len);
        } else if (w->recipe == ANVIL_RECIPE_CONCAT && w->axis == 0 && w->part_len == 0) {
            /* a stack of experts: each source cut alike (the caller's
             * stretch is of one source: rows for axis 0, columns for 1) */
            anvil_net_weight_concat(dst, name, 0, w->sources, w->n_sources);
            anvil_network_weight_part(dst, name, s->axis, s->start, s->len);
        } else {
            /* a slice of a slice along the same axis is one slice of the
             * source (of a 2-D source: a stack's slice picks a matrix, and
             * stacks are not cut yet) */
            CHECK(w->recipe == ANVIL_RECIPE_SLICE && w->axis == s->axis, ANVIL_ERR_UNSUPPORTED,
                  "tensor parallelism: weight %s (a %s recipe) cannot be cut along axis %d", w->name,
                  w->recipe == ANVIL_RECIPE_CONCAT      ? "concatenation"
                  : w->recipe == ANVIL_RECIPE_TRANSPOSE ? "transpose"
                                                        : "slice",
                  s->axis);
            anvil_net_weight_slice(dst, name, w->sources[0], s->axis, w->start + s->start);
        }
    }
    /* a stack's rows: its n sources' parts */
    shape[s->axis] = w->recipe == ANVIL_RECIPE_CONCAT && s->axis == 0 ? s->len * w->n_sources : s->len;
    *out = anvil_network_use_weight(dst, name, w->n_dims, shape[0], shape[1]);
    return *out < 0 ? anvil_network_status(dst) : ANVIL_OK;
}

/* Whether weight widx is named by another op than `op` (a tied LM head). */
static int weight_shared(const anvil_network *net, int32_t widx, int32_t op)
{
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *o = anvil_network_op(net, i);
        for (int32_t k = 0; i != op && k < o->n_weights; k++)
            if (o->weights[k] == widx)
                return 1;
    }
    return 0;
}

/* Copies op i of the source into dst, cut as its role says. */
static anvil_status copy_op(shard_ctx *c, int32_t i)
{
    const anvil_network *src = c->src;
    const anvil_net_op *op = anvil_network_op(src, i);
    const role r = c->roles[i];
    anvil_value in[3];
    for (int k = 0; k < 3; k++)
        in[k] = op->inputs[k] == ANVIL_VALUE_NONE ? ANVIL_VALUE_NONE : c->map[op->inputs[k]];
    int64_t width = op->width;
    /* the cut of the op's matrix (weights[0]) and of its bias (weights[1]) */
    cut_spec wcut = {0, 0, 0}, bcut = {0, 0, 0};
    int drop_bias = 0;
    anvil_net_op copy = *op;
    if (r == ROLE_Q || r == ROLE_KV) {
        const anvil_net_op *attn = anvil_network_op(src, c->attn_of[i]);
        int32_t hq, q0, hkv, kv0;
        TRY(heads_of(c, &attn->attn, &hq, &q0, &hkv, &kv0));
        const int64_t hd = attn->attn.head_dim;
        const int64_t first = (r == ROLE_Q ? q0 : kv0) * hd;
        width = (r == ROLE_Q ? hq : hkv) * hd;
        wcut = (cut_spec){0, first, width};
        bcut = wcut;
    } else if (r == ROLE_COL || r == ROLE_VOCAB) {
        CHECK(op->width % c->size == 0, ANVIL_ERR_UNSUPPORTED,
              "tensor parallelism: linear op %d's %lld outputs cannot be split over %d ranks", i,
              (long long)op->width, c->size);
        width = op->width / c->size;
        wcut = (cut_spec){0, width * c->rank, width};
        bcut = wcut;
    } else if (r == ROLE_ROW) {
        const int64_t cols = anvil_network_op(c->dst, in[0])->width;
        wcut = (cut_spec){1, cols * c->rank, cols};
        drop_bias = c->rank != 0; /* added once, by rank 0, before the sum */
    } else if (r == ROLE_MLA_Q || r == ROLE_MLA) {
        const anvil_mla_params *p = &anvil_network_op(src, r == ROLE_MLA ? i : c->attn_of[i])->mla;
        const int64_t hq = p->n_heads / c->size;
        /* q: nope + rope a head; kv_b: W_UK (nope rows) then W_UV (v rows) a head */
        const int64_t per_head = r == ROLE_MLA_Q ? p->nope_dim + p->rope_dim : p->nope_dim + p->v_dim;
        wcut = (cut_spec){0, c->rank * hq * per_head, hq * per_head};
        bcut = wcut;
        if (r == ROLE_MLA_Q) {
            width = hq * per_head;
        } else {
            width = hq * p->v_dim;
            copy.mla.n_heads = (int32_t)hq;
        }
    } else if (r == ROLE_EMBED) {
        const int64_t rows = anvil_network_weight(src, op->weights[0])->shape[0] / c->size;
        wcut = (cut_spec){0, rows * c->rank, rows};
        copy.first_id = rows * c->rank;
    } else if (r == ROLE_MOE) {
        copy.moe.inter = op->moe.inter / c->size;
        copy.moe.shared_inter = op->moe.shared_inter / c->size;
    } else if (c->cut[i]) {
        /* a head-wise op or the gated product on cut values: the input's width */
        width = anvil_network_op(c->dst, in[0])->width;
        if (op->kind == ANVIL_OP_ATTENTION) {
            int32_t hq, q0, hkv, kv0;
            TRY(heads_of(c, &op->attn, &hq, &q0, &hkv, &kv0));
            copy.attn.n_heads = hq;
            copy.attn.n_kv_heads = hkv;
        }
    }
    int32_t w[16];
    CHECK(op->n_weights <= 16, ANVIL_ERR_UNSUPPORTED, "tensor parallelism: op %d has %d weights", i,
          op->n_weights);
    for (int32_t k = 0; k < op->n_weights; k++) {
        w[k] = -1;
        if (op->weights[k] < 0 || (k == 1 && drop_bias))
            continue;
        const anvil_net_weight *sw = anvil_network_weight(src, op->weights[k]);
        const cut_spec none = {0, 0, 0};
        const cut_spec *s = op->kind == ANVIL_OP_LINEAR ? (k == 0 ? &wcut : k == 1 ? &bcut : &none)
                            : (r == ROLE_EMBED || r == ROLE_MLA) && k == 0 ? &wcut
                                                                           : &none;
        cut_spec ecut;
        if (r == ROLE_MOE && k >= 1 && k <= 4) {
            /* gate_up, down (the experts'), shared_gate_up, shared_down: each
             * expert's intermediate [r I/N, (r+1) I/N) (router, shared_gate whole) */
            const int64_t inter = k <= 2 ? copy.moe.inter : copy.moe.shared_inter;
            ecut = (cut_spec){k == 1 || k == 3 ? 0 : 1, inter * c->rank, inter};
            s = &ecut;
        }
        /* a cut LM head tied to an embedding kept whole gets a name of its
         * own; tied to an embedding cut alike, it shares the slice */
        char name[512];
        const int shared = k == 0 && weight_shared(src, op->weights[k], i);
        const int head_shares = c->head >= 0 && anvil_network_op(src, c->head)->weights[0] == op->weights[0];
        const char *suffix = r == ROLE_VOCAB && shared && !c->embedding_cut ? "@lm_head"
                             : r == ROLE_EMBED && shared && !head_shares   ? "@embedding" /* a head kept whole */
                                                                           : "";
        snprintf(name, sizeof name, "%s%s", sw->name, suffix);
        TRY(put_weight(c, sw, name, s, &w[k]));
    }
    anvil_value v = anvil_network_append_copy(c->dst, &copy, in, w, op->n_weights, width);
    if (r == ROLE_ROW || r == ROLE_EMBED || r == ROLE_MOE)
        v = anvil_net_all_reduce(c->dst, v);
    else if (r == ROLE_VOCAB)
        v = anvil_net_all_gather(c->dst, v, c->size);
    c->map[i] = v;
    if (v == ANVIL_VALUE_NONE)
        return anvil_network_status(c->dst);
    return ANVIL_OK;
}

anvil_status anvil_network_shard(const anvil_network *net, int32_t rank, int32_t size, anvil_network **out)
{
    return anvil_network_shard_ex(net, rank, size, 1, out);
}

anvil_status anvil_network_shard_ex(const anvil_network *net, int32_t rank, int32_t size, int cut_embedding,
                                    anvil_network **out)
{
    *out = NULL;
    CHECK(net != NULL && size >= 1 && rank >= 0 && rank < size, ANVIL_ERR_INVALID_ARG,
          "tensor parallelism: rank %d of %d", rank, size);
    TRY(anvil_network_status(net));
    const int32_t n = anvil_network_op_count(net);
    shard_ctx c = {.src = net, .rank = rank, .size = size, .cut_embedding = cut_embedding, .head = -1};
    anvil_status st = ANVIL_OK;
    c.roles = calloc((size_t)n, sizeof *c.roles);
    c.attn_of = calloc((size_t)n, sizeof *c.attn_of);
    c.cut = calloc((size_t)n, 1);
    c.map = calloc((size_t)n, sizeof *c.map);
    CHECK_GOTO(c.roles && c.attn_of && c.cut && c.map, ANVIL_ERR_OOM, done, "out of memory");
    TRY_GOTO(anvil_network_create(&c.dst), done);
    if (size > 1)
        TRY_GOTO(find_roles(&c), done);
    for (int32_t i = 0; i < n; i++)
        TRY_GOTO(copy_op(&c, i), done);
    anvil_net_set_output(c.dst, c.map[anvil_network_output(net)]);
    TRY_GOTO(anvil_network_status(c.dst), done);
    *out = c.dst;
    c.dst = NULL;
done:
    anvil_network_free(c.dst);
    free(c.roles);
    free(c.attn_of);
    free(c.cut);
    free(c.map);
    return st;
}
