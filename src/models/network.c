/*
 * The network under construction: a growable list of ops and of the weights
 * they name. Errors are sticky (see network.h), so model files read as a
 * straight list of ops.
 */
#include "anvil/network.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "models/network_edit.h"

struct anvil_network {
    anvil_net_op *ops;
    int32_t n_ops, cap_ops;
    anvil_net_weight *weights;
    int32_t n_weights, cap_weights;
    int32_t *wpool;               /* the ops' weight lists, back to back */
    int32_t n_wpool, cap_wpool;
    /* weight names -> index, open addressing with linear probing: slot
     * holds index + 1, 0 when empty; n_slots is a power of two at least
     * twice n_weights. Without it each add scanned every name before it,
     * and a config with many layers loaded in quadratic time. */
    int32_t *slots;
    uint32_t n_slots;
    anvil_value output;
    int32_t n_kv_layers;
    anvil_status error;           /* first error, sticky */
    char error_msg[1024];
};

static const char *const op_names[ANVIL_OP_COUNT] = {
    "embedding", "rmsnorm", "head_rmsnorm", "linear", "rope",
    "attention", "silu_mul", "add", "logit_rows",
    "gelu_tanh_mul", "scale", "softcap",
    "all_reduce", "all_gather", "moe",
    "layernorm", "gelu_tanh", "pos_embedding", "mla",
    "send", "recv",
};

const char *anvil_op_kind_name(anvil_op_kind kind)
{
    return (int)kind >= 0 && kind < ANVIL_OP_COUNT ? op_names[kind] : "?";
}

anvil_status anvil_network_create(anvil_network **out)
{
    *out = calloc(1, sizeof **out);
    CHECK(*out != NULL, ANVIL_ERR_OOM, "out of memory");
    (*out)->output = ANVIL_VALUE_NONE;
    return ANVIL_OK;
}

void anvil_network_free(anvil_network *net)
{
    if (net == NULL)
        return;
    for (int32_t i = 0; i < net->n_weights; i++) {
        anvil_net_weight *w = &net->weights[i];
        for (int32_t k = 0; k < w->n_sources; k++)
            free((char *)w->sources[k]);
        free((void *)w->sources);
        free((char *)w->name);
    }
    free(net->weights);
    free(net->wpool);
    free(net->slots);
    free(net->ops);
    free(net);
}

/* Records the first error (the current anvil_last_error) and returns NONE. */
static anvil_value record_error(anvil_network *net, anvil_status st)
{
    if (net->error == ANVIL_OK) {
        net->error = st;
        snprintf(net->error_msg, sizeof net->error_msg, "%s", anvil_last_error());
    }
    return ANVIL_VALUE_NONE;
}

#define NET_CHECK(cond, code, ...)                                  \
    do {                                                            \
        if (!(cond))                                                \
            return record_error(net, ANVIL_FAIL((code), __VA_ARGS__)); \
    } while (0)

anvil_status anvil_network_status(const anvil_network *net)
{
    if (net->error != ANVIL_OK) {
        anvil_error_set(net->error, "network", 0, "%s", net->error_msg);
        return net->error;
    }
    CHECK(net->output != ANVIL_VALUE_NONE, ANVIL_ERR_INVALID_ARG, "the network has no output");
    for (int32_t i = 0; i < net->n_weights; i++)
        CHECK(net->weights[i].n_dims > 0, ANVIL_ERR_INVALID_ARG, "weight %s has a recipe but no op uses it",
              net->weights[i].name);
    return ANVIL_OK;
}

/* FNV-1a: short names that differ in a digit or two hash apart. */
static uint32_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return (uint32_t)(h ^ (h >> 32));
}

/* The slot of name: where it is, or the empty slot where it would go. */
static uint32_t find_slot(const anvil_network *net, const char *name)
{
    const uint32_t mask = net->n_slots - 1;
    uint32_t i = name_hash(name) & mask;
    while (net->slots[i] != 0 && strcmp(net->weights[net->slots[i] - 1].name, name) != 0)
        i = (i + 1) & mask;
    return i;
}

/* Room in the name index for one more weight (rebuilt at twice the size). */
static anvil_status grow_slots(anvil_network *net)
{
    if ((uint64_t)net->n_weights + 1 <= net->n_slots / 2)
        return ANVIL_OK;
    CHECK(net->n_slots <= (1u << 30), ANVIL_ERR_UNSUPPORTED, "too many weights (%d)", net->n_weights);
    const uint32_t n = net->n_slots ? net->n_slots * 2 : 256;
    int32_t *slots = calloc(n, sizeof *slots);
    CHECK(slots != NULL, ANVIL_ERR_OOM, "out of memory for the index of %d weight names", net->n_weights);
    free(net->slots);
    net->slots = slots;
    net->n_slots = n;
    for (int32_t i = 0; i < net->n_weights; i++)
        net->slots[find_slot(net, net->weights[i].name)] = i + 1;
    return ANVIL_OK;
}

int32_t anvil_network_find_weight(const anvil_network *net, const char *name)
{
    if (name == NULL || net->n_slots == 0)
        return -1;
    const uint32_t slot = find_slot(net, name);
    return net->slots[slot] - 1;
}

/* A copy of the strings srcs[0..n) (NULL on failure, recorded). */
static const char **copy_sources(anvil_network *net, const char *const *srcs, int32_t n)
{
    const char **out = calloc((size_t)n, sizeof *out);
    int ok = out != NULL;
    for (int32_t k = 0; ok && k < n; k++)
        ok = (out[k] = strdup(srcs[k])) != NULL;
    if (!ok) {
        for (int32_t k = 0; out && k < n; k++)
            free((char *)out[k]);
        free(out);
        record_error(net, ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory"));
        return NULL;
    }
    return out;
}

/* A new weight entry named `name` (not there yet), shape unset (n_dims 0)
 * and no recipe; its index, or -1 (recorded). */
static int32_t new_weight(anvil_network *net, const char *name)
{
    if (net->n_weights == INT32_MAX) {
        record_error(net, ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "too many weights"));
        return -1;
    }
    anvil_status gs = grow_slots(net);
    if (gs != ANVIL_OK) {
        record_error(net, gs);
        return -1;
    }
    const uint32_t slot = find_slot(net, name);
    if (net->n_weights == net->cap_weights) {
        /* n_weights < INT32_MAX (checked above) */
        int32_t cap = net->cap_weights == 0 ? 64 : net->cap_weights > INT32_MAX / 2 ? INT32_MAX : net->cap_weights * 2;
        anvil_net_weight *p = realloc(net->weights, (size_t)cap * sizeof *p);
        if (p == NULL) {
            record_error(net, ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory"));
            return -1;
        }
        net->weights = p;
        net->cap_weights = cap;
    }
    char *copy = strdup(name);
    if (copy == NULL) {
        record_error(net, ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory"));
        return -1;
    }
    anvil_net_weight *w = &net->weights[net->n_weights];
    memset(w, 0, sizeof *w);
    w->name = copy;
    net->slots[slot] = net->n_weights + 1;
    return net->n_weights++;
}

/* Adds (or finds) a weight by name with the shape an op gives it; -1 on
 * error (recorded). The same name may be used twice (tied embeddings) only
 * with the same shape. A weight declared by a recipe gets its shape here;
 * any other is the checkpoint tensor of its name. */
static int32_t add_weight(anvil_network *net, const char *name, int n_dims, int64_t d0, int64_t d1)
{
    if (net->error != ANVIL_OK)
        return -1;
    if (name == NULL) {
        record_error(net, ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "weight name is NULL"));
        return -1;
    }
    int32_t i = anvil_network_find_weight(net, name);
    if (i < 0) {
        i = new_weight(net, name);
        if (i < 0)
            return -1;
        anvil_net_weight *w = &net->weights[i];
        const char *self = name;
        w->sources = copy_sources(net, &self, 1);
        if (w->sources == NULL)
            return -1;
        w->n_sources = 1;
        w->recipe = ANVIL_RECIPE_TENSOR;
    }
    anvil_net_weight *w = &net->weights[i];
    if (w->n_dims == 0) { /* new, or declared by a recipe */
        w->n_dims = n_dims;
        w->shape[0] = d0;
        w->shape[1] = n_dims > 1 ? d1 : 0;
        return i;
    }
    if (w->n_dims != n_dims || w->shape[0] != d0 || (n_dims > 1 && w->shape[1] != d1)) {
        record_error(net, ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "weight %s used with two shapes", name));
        return -1;
    }
    return i;
}

/* A recipe's weight: new, named, with its sources (recorded errors). */
static anvil_net_weight *declare(anvil_network *net, const char *name, const char *const *srcs, int32_t n,
                                 int axis)
{
    if (net->error != ANVIL_OK)
        return NULL;
    if (name == NULL || srcs == NULL || n < 1) {
        record_error(net, ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "a recipe needs a name and sources"));
        return NULL;
    }
    for (int32_t k = 0; k < n; k++)
        if (srcs[k] == NULL) {
            record_error(net, ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "recipe of %s: source %d is NULL", name, k));
            return NULL;
        }
    if (axis != 0 && axis != 1) {
        record_error(net, ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "recipe of %s: axis must be 0 or 1", name));
        return NULL;
    }
    if (anvil_network_find_weight(net, name) >= 0) {
        record_error(net, ANVIL_FAIL(ANVIL_ERR_INVALID_ARG,
                                     "recipe of %s: the weight is already declared or in use", name));
        return NULL;
    }
    int32_t i = new_weight(net, name);
    if (i < 0)
        return NULL;
    anvil_net_weight *w = &net->weights[i];
    w->sources = copy_sources(net, srcs, n);
    if (w->sources == NULL)
        return NULL;
    w->n_sources = n;
    w->axis = axis;
    return w;
}

void anvil_net_weight_slice(anvil_network *net, const char *name, const char *source, int axis, int64_t start)
{
    if (start < 0 && net->error == ANVIL_OK) {
        record_error(net, ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "recipe of %s: negative start", name ? name : "?"));
        return;
    }
    anvil_net_weight *w = declare(net, name, &source, 1, axis);
    if (w) {
        w->recipe = ANVIL_RECIPE_SLICE;
        w->start = start;
    }
}

void anvil_net_weight_transpose(anvil_network *net, const char *name, const char *source, int64_t start)
{
    if (start < 0 && net->error == ANVIL_OK) {
        record_error(net, ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "recipe of %s: negative start", name ? name : "?"));
        return;
    }
    anvil_net_weight *w = declare(net, name, &source, 1, 1);
    if (w) {
        w->recipe = ANVIL_RECIPE_TRANSPOSE;
        w->start = start;
    }
}

void anvil_net_weight_concat(anvil_network *net, const char *name, int axis, const char *const *sources,
                             int32_t n)
{
    anvil_net_weight *w = declare(net, name, sources, n, axis);
    if (w)
        w->recipe = ANVIL_RECIPE_CONCAT;
}

/* Room in the pool for an op's weight list of n entries, all -1; the ops'
 * pointers follow a move of the pool. */
static int32_t *op_weights(anvil_network *net, anvil_net_op *op, int32_t n)
{
    if (net->n_wpool > INT32_MAX - n) {
        record_error(net, ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "too many weights in ops"));
        return NULL;
    }
    if (net->n_wpool + n > net->cap_wpool) {
        int64_t cap = net->cap_wpool ? (int64_t)net->cap_wpool * 2 : 256;
        while (cap < (int64_t)net->n_wpool + n)
            cap *= 2;
        if (cap > INT32_MAX)
            cap = INT32_MAX;
        int32_t *p = realloc(net->wpool, (size_t)cap * sizeof *p);
        if (p == NULL) {
            record_error(net, ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory"));
            return NULL;
        }
        net->wpool = p;
        net->cap_wpool = (int32_t)cap;
        for (int32_t i = 0; i < net->n_ops; i++)
            net->ops[i].weights = net->wpool + net->ops[i].weights_at;
    }
    op->weights_at = net->n_wpool;
    op->n_weights = n;
    op->weights = net->wpool + op->weights_at;
    for (int32_t k = 0; k < n; k++)
        net->wpool[op->weights_at + k] = -1;
    net->n_wpool += n;
    return net->wpool + op->weights_at;
}

/* Appends an op with no inputs or weights yet; NULL on error (recorded). */
static anvil_net_op *push_op(anvil_network *net, anvil_op_kind kind, int64_t width)
{
    if (net->error != ANVIL_OK)
        return NULL;
    if (width <= 0) {
        record_error(net, ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "%s: width must be > 0", op_names[kind]));
        return NULL;
    }
    if (net->n_ops == INT32_MAX) { /* values are int32 op indices */
        record_error(net, ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "too many ops"));
        return NULL;
    }
    if (net->n_ops == net->cap_ops) {
        int32_t cap = net->cap_ops == 0 ? 128 : net->cap_ops > INT32_MAX / 2 ? INT32_MAX : net->cap_ops * 2;
        anvil_net_op *p = realloc(net->ops, (size_t)cap * sizeof *p);
        if (p == NULL) {
            record_error(net, ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory"));
            return NULL;
        }
        net->ops = p;
        net->cap_ops = cap;
    }
    anvil_net_op *op = &net->ops[net->n_ops];
    memset(op, 0, sizeof *op);
    op->kind = kind;
    op->width = width;
    op->inputs[0] = op->inputs[1] = op->inputs[2] = ANVIL_VALUE_NONE;
    if (op_weights(net, op, 2) == NULL)
        return NULL;
    return op;
}

/* The op that produces v, or NULL if v is not a value of this network. */
static const anvil_net_op *value_op(const anvil_network *net, anvil_value v)
{
    return v >= 0 && v < net->n_ops ? &net->ops[v] : NULL;
}

static anvil_value commit_op(anvil_network *net) { return net->n_ops++; }

anvil_value anvil_net_embedding(anvil_network *net, const char *weight, int64_t vocab, int64_t width)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    NET_CHECK(vocab > 0, ANVIL_ERR_INVALID_ARG, "embedding: vocab must be > 0");
    int32_t w = add_weight(net, weight, 2, vocab, width);
    anvil_net_op *op = push_op(net, ANVIL_OP_EMBEDDING, width);
    if (op == NULL || w < 0)
        return ANVIL_VALUE_NONE;
    net->wpool[op->weights_at] = w;
    return commit_op(net);
}

anvil_value anvil_net_rmsnorm(anvil_network *net, anvil_value x, const char *weight, double eps)
{
    return anvil_net_rmsnorm_offset(net, x, weight, eps, 0.0f);
}

anvil_value anvil_net_rmsnorm_offset(anvil_network *net, anvil_value x, const char *weight, double eps,
                                     float weight_offset)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    NET_CHECK(isfinite(weight_offset), ANVIL_ERR_INVALID_ARG, "rmsnorm %s: weight_offset must be finite",
              weight ? weight : "");
    const anvil_net_op *in = value_op(net, x);
    NET_CHECK(in != NULL, ANVIL_ERR_INVALID_ARG, "rmsnorm %s: bad input value", weight ? weight : "");
    NET_CHECK(eps > 0, ANVIL_ERR_INVALID_ARG, "rmsnorm %s: eps must be > 0", weight ? weight : "");
    int64_t width = in->width;
    int row_kind = in->row_kind;
    int32_t w = add_weight(net, weight, 1, width, 0);
    anvil_net_op *op = push_op(net, ANVIL_OP_RMSNORM, width);
    if (op == NULL || w < 0)
        return ANVIL_VALUE_NONE;
    op->inputs[0] = x;
    net->wpool[op->weights_at] = w;
    op->eps = eps;
    op->weight_offset = weight_offset;
    op->row_kind = row_kind;
    return commit_op(net);
}

anvil_value anvil_net_head_rmsnorm(anvil_network *net, anvil_value x, const char *weight, int64_t head_dim,
                                   double eps)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    const anvil_net_op *in = value_op(net, x);
    NET_CHECK(in != NULL, ANVIL_ERR_INVALID_ARG, "head_rmsnorm: bad input value");
    NET_CHECK(head_dim > 0 && in->width % head_dim == 0, ANVIL_ERR_INVALID_ARG,
              "head_rmsnorm %s: width %lld is not a multiple of head_dim %lld", weight ? weight : "",
              (long long)in->width, (long long)head_dim);
    NET_CHECK(eps > 0, ANVIL_ERR_INVALID_ARG, "head_rmsnorm: eps must be > 0");
    int64_t width = in->width;
    int32_t w = add_weight(net, weight, 1, head_dim, 0);
    anvil_net_op *op = push_op(net, ANVIL_OP_HEAD_RMSNORM, width);
    if (op == NULL || w < 0)
        return ANVIL_VALUE_NONE;
    op->inputs[0] = x;
    net->wpool[op->weights_at] = w;
    op->eps = eps;
    op->head_dim = head_dim;
    return commit_op(net);
}

anvil_value anvil_net_linear(anvil_network *net, anvil_value x, const char *weight, const char *bias,
                             int64_t out_features)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    const anvil_net_op *in = value_op(net, x);
    NET_CHECK(in != NULL, ANVIL_ERR_INVALID_ARG, "linear %s: bad input value", weight ? weight : "");
    int64_t in_features = in->width;
    int row_kind = in->row_kind;
    int32_t w = add_weight(net, weight, 2, out_features, in_features);
    int32_t b = bias ? add_weight(net, bias, 1, out_features, 0) : -1;
    anvil_net_op *op = push_op(net, ANVIL_OP_LINEAR, out_features);
    if (op == NULL || w < 0 || (bias && b < 0))
        return ANVIL_VALUE_NONE;
    op->inputs[0] = x;
    net->wpool[op->weights_at] = w;
    net->wpool[op->weights_at + 1] = b;
    op->row_kind = row_kind;
    return commit_op(net);
}

anvil_value anvil_net_rope(anvil_network *net, anvil_value x, int64_t head_dim, const anvil_rope_config *rope)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    const anvil_net_op *in = value_op(net, x);
    NET_CHECK(in != NULL && rope != NULL, ANVIL_ERR_INVALID_ARG, "rope: bad arguments");
    NET_CHECK(head_dim > 0 && head_dim % 2 == 0 && in->width % head_dim == 0, ANVIL_ERR_INVALID_ARG,
              "rope: head_dim %lld must be even and divide the width %lld", (long long)head_dim,
              (long long)in->width);
    NET_CHECK(in->row_kind == 0, ANVIL_ERR_INVALID_ARG, "rope: needs one row per token");
    NET_CHECK(rope->theta > 0, ANVIL_ERR_INVALID_ARG, "rope: theta must be > 0");
    int64_t width = in->width;
    anvil_net_op *op = push_op(net, ANVIL_OP_ROPE, width);
    if (op == NULL)
        return ANVIL_VALUE_NONE;
    op->inputs[0] = x;
    op->head_dim = head_dim;
    op->rope = *rope;
    return commit_op(net);
}

anvil_value anvil_net_attention(anvil_network *net, anvil_value q, anvil_value k, anvil_value v,
                                const anvil_attention_params *p)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    const anvil_net_op *oq = value_op(net, q), *ok = value_op(net, k), *ov = value_op(net, v);
    NET_CHECK(oq && ok && ov && p, ANVIL_ERR_INVALID_ARG, "attention: bad arguments");
    NET_CHECK(p->n_heads > 0 && p->n_kv_heads > 0 && p->head_dim > 0 && p->n_heads % p->n_kv_heads == 0,
              ANVIL_ERR_INVALID_ARG, "attention layer %d: %d heads cannot share %d KV heads", p->layer,
              p->n_heads, p->n_kv_heads);
    NET_CHECK(oq->width == (int64_t)p->n_heads * p->head_dim, ANVIL_ERR_INVALID_ARG,
              "attention layer %d: q width %lld != heads %d x head_dim %d", p->layer, (long long)oq->width,
              p->n_heads, p->head_dim);
    NET_CHECK(ok->width == (int64_t)p->n_kv_heads * p->head_dim && ov->width == ok->width,
              ANVIL_ERR_INVALID_ARG, "attention layer %d: k/v width != kv heads x head_dim", p->layer);
    NET_CHECK(p->layer >= 0 && p->layer < INT32_MAX && p->sliding_window >= 0, ANVIL_ERR_INVALID_ARG,
              "attention: bad layer/window");
    NET_CHECK(isfinite(p->scale) && p->scale >= 0 && isfinite(p->softcap) && p->softcap >= 0,
              ANVIL_ERR_INVALID_ARG, "attention layer %d: scale %g and softcap %g must be finite, not negative",
              p->layer, (double)p->scale, (double)p->softcap);
    anvil_net_op *op = push_op(net, ANVIL_OP_ATTENTION, oq->width);
    if (op == NULL)
        return ANVIL_VALUE_NONE;
    op->inputs[0] = q;
    op->inputs[1] = k;
    op->inputs[2] = v;
    op->attn = *p;
    if (op->attn.scale == 0.0f)
        op->attn.scale = 1.0f / sqrtf((float)p->head_dim);
    if (p->layer + 1 > net->n_kv_layers)
        net->n_kv_layers = p->layer + 1;
    return commit_op(net);
}

/* The elementwise ops: two inputs of the same width and row kind. */
static anvil_value binary_op(anvil_network *net, anvil_op_kind kind, anvil_value a, anvil_value b)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    const anvil_net_op *oa = value_op(net, a), *ob = value_op(net, b);
    NET_CHECK(oa && ob, ANVIL_ERR_INVALID_ARG, "%s: bad input value", op_names[kind]);
    NET_CHECK(oa->width == ob->width && oa->row_kind == ob->row_kind, ANVIL_ERR_INVALID_ARG,
              "%s: inputs of widths %lld and %lld", op_names[kind], (long long)oa->width, (long long)ob->width);
    int64_t width = oa->width;
    int row_kind = oa->row_kind;
    anvil_net_op *op = push_op(net, kind, width);
    if (op == NULL)
        return ANVIL_VALUE_NONE;
    op->inputs[0] = a;
    op->inputs[1] = b;
    op->row_kind = row_kind;
    return commit_op(net);
}

anvil_value anvil_net_silu_mul(anvil_network *net, anvil_value gate, anvil_value up)
{
    return binary_op(net, ANVIL_OP_SILU_MUL, gate, up);
}

anvil_value anvil_net_add(anvil_network *net, anvil_value a, anvil_value b)
{
    return binary_op(net, ANVIL_OP_ADD, a, b);
}

anvil_value anvil_net_gelu_tanh_mul(anvil_network *net, anvil_value gate, anvil_value up)
{
    return binary_op(net, ANVIL_OP_GELU_TANH_MUL, gate, up);
}

/* An elementwise op of one input and a constant (scale, softcap). */
static anvil_value scalar_op(anvil_network *net, anvil_op_kind kind, anvil_value x, float c)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    const anvil_net_op *in = value_op(net, x);
    NET_CHECK(in != NULL, ANVIL_ERR_INVALID_ARG, "%s: bad input value", op_names[kind]);
    NET_CHECK(isfinite(c) && (kind == ANVIL_OP_SOFTCAP ? c > 0 : c != 0), ANVIL_ERR_INVALID_ARG,
              "%s: the constant %g must be finite and %s", op_names[kind], (double)c,
              kind == ANVIL_OP_SOFTCAP ? "positive" : "nonzero");
    int64_t width = in->width;
    int row_kind = in->row_kind;
    anvil_net_op *op = push_op(net, kind, width);
    if (op == NULL)
        return ANVIL_VALUE_NONE;
    op->inputs[0] = x;
    op->row_kind = row_kind;
    op->scalar = c;
    return commit_op(net);
}

anvil_value anvil_net_scale(anvil_network *net, anvil_value x, float c)
{
    return scalar_op(net, ANVIL_OP_SCALE, x, c);
}

anvil_value anvil_net_softcap(anvil_network *net, anvil_value x, float cap)
{
    return scalar_op(net, ANVIL_OP_SOFTCAP, x, cap);
}

anvil_value anvil_net_layernorm(anvil_network *net, anvil_value x, const char *weight, const char *bias,
                                double eps)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    const anvil_net_op *in = value_op(net, x);
    NET_CHECK(in != NULL, ANVIL_ERR_INVALID_ARG, "layernorm %s: bad input value", weight ? weight : "");
    NET_CHECK(eps > 0, ANVIL_ERR_INVALID_ARG, "layernorm %s: eps must be > 0", weight ? weight : "");
    NET_CHECK(bias != NULL, ANVIL_ERR_INVALID_ARG, "layernorm %s: needs a bias", weight ? weight : "");
    int64_t width = in->width;
    int row_kind = in->row_kind;
    int32_t w = add_weight(net, weight, 1, width, 0);
    int32_t b = add_weight(net, bias, 1, width, 0);
    anvil_net_op *op = push_op(net, ANVIL_OP_LAYERNORM, width);
    if (op == NULL || w < 0 || b < 0)
        return ANVIL_VALUE_NONE;
    op->inputs[0] = x;
    net->wpool[op->weights_at] = w;
    net->wpool[op->weights_at + 1] = b;
    op->eps = eps;
    op->row_kind = row_kind;
    return commit_op(net);
}

anvil_value anvil_net_gelu_tanh(anvil_network *net, anvil_value x)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    const anvil_net_op *in = value_op(net, x);
    NET_CHECK(in != NULL, ANVIL_ERR_INVALID_ARG, "gelu_tanh: bad input value");
    int64_t width = in->width;
    int row_kind = in->row_kind;
    anvil_net_op *op = push_op(net, ANVIL_OP_GELU_TANH, width);
    if (op == NULL)
        return ANVIL_VALUE_NONE;
    op->inputs[0] = x;
    op->row_kind = row_kind;
    return commit_op(net);
}

anvil_value anvil_net_pos_embedding(anvil_network *net, anvil_value x, const char *table, int64_t n_positions)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    const anvil_net_op *in = value_op(net, x);
    NET_CHECK(in != NULL, ANVIL_ERR_INVALID_ARG, "pos_embedding %s: bad input value", table ? table : "");
    /* positions are those of the step's tokens: rows over logit rows have none */
    NET_CHECK(in->row_kind == 0, ANVIL_ERR_INVALID_ARG, "pos_embedding %s: needs one row per token",
              table ? table : "");
    NET_CHECK(n_positions > 0, ANVIL_ERR_INVALID_ARG, "pos_embedding %s: n_positions must be > 0",
              table ? table : "");
    int64_t width = in->width;
    int32_t w = add_weight(net, table, 2, n_positions, width);
    anvil_net_op *op = push_op(net, ANVIL_OP_POS_EMBEDDING, width);
    if (op == NULL || w < 0)
        return ANVIL_VALUE_NONE;
    op->inputs[0] = x;
    net->wpool[op->weights_at] = w;
    return commit_op(net);
}

anvil_value anvil_net_logit_rows(anvil_network *net, anvil_value x)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    const anvil_net_op *in = value_op(net, x);
    NET_CHECK(in != NULL && in->row_kind == 0, ANVIL_ERR_INVALID_ARG, "logit_rows: bad input value");
    int64_t width = in->width;
    anvil_net_op *op = push_op(net, ANVIL_OP_LOGIT_ROWS, width);
    if (op == NULL)
        return ANVIL_VALUE_NONE;
    op->inputs[0] = x;
    op->row_kind = 1;
    return commit_op(net);
}

anvil_value anvil_net_moe(anvil_network *net, anvil_value x, const char *router, const char *gate_up,
                          const char *down, const char *shared_gate_up, const char *shared_down,
                          const char *shared_gate, const anvil_moe_params *p)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    const anvil_net_op *in = value_op(net, x);
    NET_CHECK(in != NULL && p != NULL, ANVIL_ERR_INVALID_ARG, "moe: bad arguments");
    NET_CHECK(in->row_kind == 0, ANVIL_ERR_INVALID_ARG, "moe: needs one row per token");
    NET_CHECK(p->n_experts > 0 && p->top_k > 0 && p->top_k <= p->n_experts, ANVIL_ERR_INVALID_ARG,
              "moe: top_k %d of %d experts", p->top_k, p->n_experts);
    NET_CHECK(p->inter > 0 && p->shared_inter >= 0 && (p->norm_topk_prob == 0 || p->norm_topk_prob == 1),
              ANVIL_ERR_INVALID_ARG, "moe: intermediate sizes %lld and %lld", (long long)p->inter,
              (long long)p->shared_inter);
    const int shared = p->shared_inter > 0;
    NET_CHECK(!shared == (shared_gate_up == NULL && shared_down == NULL && shared_gate == NULL) &&
                  (!shared || (shared_gate_up && shared_down && (shared_gate != NULL) == !p->shared_ungated)),
              ANVIL_ERR_INVALID_ARG,
              "moe %s: a shared expert needs its weights, a gate unless ungated (and only with one)",
              router ? router : "");
    const int32_t groups = p->n_group > 1 ? p->n_group : 1;
    NET_CHECK((p->shared_ungated == 0 || p->shared_ungated == 1) && p->n_experts % groups == 0 &&
                  (groups == 1 || (p->topk_group >= 1 && p->topk_group <= groups &&
                                   (int64_t)p->topk_group * (p->n_experts / groups) >= p->top_k)) &&
                  isfinite(p->routed_scale) && p->routed_scale >= 0.0f,
              ANVIL_ERR_INVALID_ARG, "moe %s: router of %d groups keeping %d for top-%d, scale %g",
              router ? router : "", p->n_group, p->topk_group, p->top_k, (double)p->routed_scale);
    const int64_t H = in->width, E = p->n_experts, I = p->inter, Is = p->shared_inter;
    /* the stacked shapes stay far below overflow: config bounds keep H, I, E small */
    NET_CHECK(H <= INT32_MAX && I <= INT32_MAX && Is <= INT32_MAX && E <= 65536, ANVIL_ERR_UNSUPPORTED,
              "moe: sizes too large");
    int32_t w[6] = {-1, -1, -1, -1, -1, -1};
    w[0] = add_weight(net, router, 2, E, H);
    w[1] = add_weight(net, gate_up, 2, E * 2 * I, H);
    w[2] = add_weight(net, down, 2, E * H, I);
    if (shared) {
        w[3] = add_weight(net, shared_gate_up, 2, 2 * Is, H);
        w[4] = add_weight(net, shared_down, 2, H, Is);
        if (!p->shared_ungated)
            w[5] = add_weight(net, shared_gate, 2, 1, H);
    }
    for (int k = 0; k < (shared ? (p->shared_ungated ? 5 : 6) : 3); k++)
        if (w[k] < 0)
            return ANVIL_VALUE_NONE;
    anvil_net_op *op = push_op(net, ANVIL_OP_MOE, H);
    if (op == NULL || op_weights(net, op, 6) == NULL)
        return ANVIL_VALUE_NONE;
    for (int k = 0; k < 6; k++)
        net->wpool[op->weights_at + k] = w[k];
    op->inputs[0] = x;
    op->moe = *p;
    return commit_op(net);
}

anvil_value anvil_net_mla(anvil_network *net, anvil_value q, anvil_value c, anvil_value k_pe, const char *kv_b,
                          const anvil_rope_config *rope, const anvil_mla_params *p)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    const anvil_net_op *oq = value_op(net, q), *oc = value_op(net, c), *ok = value_op(net, k_pe);
    NET_CHECK(oq && oc && ok && kv_b && rope && p, ANVIL_ERR_INVALID_ARG, "mla: bad arguments");
    NET_CHECK(p->n_heads > 0 && p->kv_rank > 0 && p->nope_dim > 0 && p->rope_dim > 0 && p->rope_dim % 2 == 0 &&
                  p->v_dim > 0 && p->layer >= 0 && p->layer < INT32_MAX && isfinite(p->scale) && p->scale > 0.0f,
              ANVIL_ERR_INVALID_ARG, "mla layer %d: %d heads, rank %d, dims %d/%d/%d, scale %g", p->layer,
              p->n_heads, p->kv_rank, p->nope_dim, p->rope_dim, p->v_dim, (double)p->scale);
    const int64_t H = p->n_heads;
    NET_CHECK(oq->width == H * (p->nope_dim + p->rope_dim) && oc->width == p->kv_rank && ok->width == p->rope_dim &&
                  oq->row_kind == 0 && oc->row_kind == 0 && ok->row_kind == 0,
              ANVIL_ERR_INVALID_ARG, "mla layer %d: q, c, k_pe widths %lld, %lld, %lld for %d heads of %d + %d, rank %d",
              p->layer, (long long)oq->width, (long long)oc->width, (long long)ok->width, p->n_heads, p->nope_dim,
              p->rope_dim, p->kv_rank);
    NET_CHECK(rope->theta > 0, ANVIL_ERR_INVALID_ARG, "mla: rope theta must be > 0");
    int32_t w = add_weight(net, kv_b, 2, H * (p->nope_dim + p->v_dim), p->kv_rank);
    anvil_net_op *op = push_op(net, ANVIL_OP_MLA, H * p->v_dim);
    if (op == NULL || w < 0)
        return ANVIL_VALUE_NONE;
    op->inputs[0] = q;
    op->inputs[1] = c;
    op->inputs[2] = k_pe;
    net->wpool[op->weights_at] = w;
    op->mla = *p;
    op->rope = *rope;
    op->head_dim = p->rope_dim; /* what the runtime sizes the op's rope tables by */
    /* the KV cache holds one row of kv_rank + rope_dim a token and layer */
    op->attn.layer = p->layer;
    op->attn.n_heads = p->n_heads;
    op->attn.n_kv_heads = 1;
    op->attn.head_dim = p->kv_rank + p->rope_dim;
    op->attn.scale = p->scale;
    if (p->layer + 1 > net->n_kv_layers)
        net->n_kv_layers = p->layer + 1;
    return commit_op(net);
}

anvil_value anvil_net_all_reduce(anvil_network *net, anvil_value x)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    const anvil_net_op *in = value_op(net, x);
    NET_CHECK(in != NULL, ANVIL_ERR_INVALID_ARG, "all_reduce: bad input value");
    int64_t width = in->width;
    int row_kind = in->row_kind;
    anvil_net_op *op = push_op(net, ANVIL_OP_ALL_REDUCE, width);
    if (op == NULL)
        return ANVIL_VALUE_NONE;
    op->inputs[0] = x;
    op->row_kind = row_kind;
    return commit_op(net);
}

anvil_value anvil_net_all_gather(anvil_network *net, anvil_value x, int32_t n_ranks)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    const anvil_net_op *in = value_op(net, x);
    NET_CHECK(in != NULL, ANVIL_ERR_INVALID_ARG, "all_gather: bad input value");
    NET_CHECK(n_ranks > 0 && in->width <= INT64_MAX / n_ranks, ANVIL_ERR_INVALID_ARG,
              "all_gather: %d ranks of width %lld", n_ranks, (long long)in->width);
    int64_t width = in->width * n_ranks;
    int row_kind = in->row_kind;
    anvil_net_op *op = push_op(net, ANVIL_OP_ALL_GATHER, width);
    if (op == NULL)
        return ANVIL_VALUE_NONE;
    op->inputs[0] = x;
    op->row_kind = row_kind;
    op->head_dim = n_ranks;
    return commit_op(net);
}

anvil_value anvil_net_send(anvil_network *net, anvil_value x, int32_t peer, int32_t tag)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    const anvil_net_op *in = value_op(net, x);
    NET_CHECK(in != NULL, ANVIL_ERR_INVALID_ARG, "send: bad input value");
    NET_CHECK(peer >= 0 && tag >= 0 && tag <= 32767, ANVIL_ERR_INVALID_ARG, "send: stage %d, tag %d", peer, tag);
    int64_t width = in->width;
    int row_kind = in->row_kind;
    anvil_net_op *op = push_op(net, ANVIL_OP_SEND, width);
    if (op == NULL)
        return ANVIL_VALUE_NONE;
    op->inputs[0] = x;
    op->row_kind = row_kind;
    op->peer = peer;
    op->tag = tag;
    return commit_op(net);
}

anvil_value anvil_net_recv(anvil_network *net, int64_t width, int row_kind, int32_t peer, int32_t tag)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    NET_CHECK(peer >= 0 && tag >= 0 && tag <= 32767 && (row_kind == 0 || row_kind == 1), ANVIL_ERR_INVALID_ARG,
              "recv: stage %d, tag %d, rows %d", peer, tag, row_kind);
    anvil_net_op *op = push_op(net, ANVIL_OP_RECV, width);
    if (op == NULL)
        return ANVIL_VALUE_NONE;
    op->row_kind = row_kind;
    op->peer = peer;
    op->tag = tag;
    return commit_op(net);
}

void anvil_net_set_output(anvil_network *net, anvil_value logits)
{
    if (net->error != ANVIL_OK)
        return;
    const anvil_net_op *op = value_op(net, logits);
    if (op == NULL || (op->row_kind != 1 && op->kind != ANVIL_OP_SEND)) {
        record_error(net, ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "the output must be a value over the logit rows"));
        return;
    }
    net->output = logits;
}

int32_t anvil_network_use_weight(anvil_network *net, const char *name, int n_dims, int64_t d0, int64_t d1)
{
    return add_weight(net, name, n_dims, d0, d1);
}

int32_t anvil_network_copy_weight(anvil_network *net, const anvil_net_weight *w, const char *name)
{
    if (net->error != ANVIL_OK)
        return -1;
    if (anvil_network_find_weight(net, name) < 0) {
        if (w->recipe == ANVIL_RECIPE_SLICE)
            anvil_net_weight_slice(net, name, w->sources[0], w->axis, w->start);
        else if (w->recipe == ANVIL_RECIPE_CONCAT)
            anvil_net_weight_concat(net, name, w->axis, w->sources, w->n_sources);
        else if (w->recipe == ANVIL_RECIPE_TRANSPOSE)
            anvil_net_weight_transpose(net, name, w->sources[0], w->start);
        else if (strcmp(name, w->sources[0]) != 0) /* a tensor under another name */
            anvil_net_weight_slice(net, name, w->sources[0], 0, 0);
        if (w->part_len > 0)
            anvil_network_weight_part(net, name, w->part_axis, w->part_start, w->part_len);
    }
    return add_weight(net, name, w->n_dims, w->shape[0], w->shape[1]);
}

void anvil_network_weight_part(anvil_network *net, const char *name, int part_axis, int64_t part_start,
                               int64_t part_len)
{
    if (net->error != ANVIL_OK)
        return;
    const int32_t i = name ? anvil_network_find_weight(net, name) : -1;
    anvil_net_weight *w = i >= 0 ? &net->weights[i] : NULL;
    if (w == NULL || (w->recipe != ANVIL_RECIPE_CONCAT && w->recipe != ANVIL_RECIPE_TRANSPOSE) || w->n_dims != 0 ||
        (part_axis != 0 && part_axis != 1) || part_start < 0 || part_len < 1) {
        record_error(net, ANVIL_FAIL(ANVIL_ERR_INVALID_ARG,
                                     "part of %s: not a concatenation or transpose declared and unused, or a bad "
                                     "stretch (axis %d, start %lld, length %lld)",
                                     name ? name : "?", part_axis, (long long)part_start, (long long)part_len));
        return;
    }
    w->part_axis = part_axis;
    w->part_start = part_start;
    w->part_len = part_len;
}

anvil_value anvil_network_append_copy(anvil_network *net, const anvil_net_op *src, const anvil_value inputs[3],
                                      const int32_t *weights, int32_t n_weights, int64_t width)
{
    if (net->error != ANVIL_OK)
        return ANVIL_VALUE_NONE;
    NET_CHECK(src != NULL && (int)src->kind >= 0 && src->kind < ANVIL_OP_COUNT && n_weights >= 0,
              ANVIL_ERR_INVALID_ARG, "append_copy: bad op");
    for (int k = 0; k < 3; k++)
        NET_CHECK(inputs[k] == ANVIL_VALUE_NONE || value_op(net, inputs[k]) != NULL, ANVIL_ERR_INVALID_ARG,
                  "append_copy %s: bad input value", op_names[src->kind]);
    for (int32_t k = 0; k < n_weights; k++)
        NET_CHECK(weights[k] >= -1 && weights[k] < net->n_weights, ANVIL_ERR_INVALID_ARG,
                  "append_copy %s: bad weight", op_names[src->kind]);
    anvil_net_op *op = push_op(net, src->kind, width);
    if (op == NULL)
        return ANVIL_VALUE_NONE;
    /* every parameter of src; then this network's own lists */
    const int32_t at = op->weights_at;
    const int32_t *w = op->weights;
    const int32_t nw = op->n_weights;
    *op = *src;
    op->weights_at = at;
    op->weights = w;
    op->n_weights = nw;
    op->width = width;
    if (n_weights > nw && op_weights(net, op, n_weights) == NULL)
        return ANVIL_VALUE_NONE;
    op = &net->ops[net->n_ops]; /* (the pool may have moved; the op did not) */
    for (int32_t k = 0; k < n_weights; k++)
        net->wpool[op->weights_at + k] = weights[k];
    for (int k = 0; k < 3; k++)
        op->inputs[k] = inputs[k];
    /* an attention or mla op's layer joins the KV layers (each kind keeps
     * it in its own parameters) */
    const int32_t layer = op->kind == ANVIL_OP_MLA ? op->mla.layer : op->attn.layer;
    if ((op->kind == ANVIL_OP_ATTENTION || op->kind == ANVIL_OP_MLA) && layer + 1 > net->n_kv_layers)
        net->n_kv_layers = layer + 1;
    return commit_op(net);
}

int32_t anvil_network_op_count(const anvil_network *net) { return net->n_ops; }
const anvil_net_op *anvil_network_op(const anvil_network *net, int32_t i) { return value_op(net, i); }
int32_t anvil_network_weight_count(const anvil_network *net) { return net->n_weights; }

const anvil_net_weight *anvil_network_weight(const anvil_network *net, int32_t i)
{
    return i >= 0 && i < net->n_weights ? &net->weights[i] : NULL;
}

anvil_status anvil_network_untie(anvil_network *net, anvil_value v, const char *name)
{
    CHECK(net != NULL && name != NULL, ANVIL_ERR_INVALID_ARG, "untie: NULL argument");
    CHECK(net->error == ANVIL_OK, net->error, "%s", net->error_msg);
    CHECK(v >= 0 && v < net->n_ops && net->ops[v].n_weights >= 1 && net->ops[v].weights[0] >= 0,
          ANVIL_ERR_INVALID_ARG, "untie: op %d has no weight", v);
    const anvil_net_weight *old = &net->weights[net->ops[v].weights[0]];
    CHECK(old->recipe == ANVIL_RECIPE_TENSOR && old->n_dims == 2, ANVIL_ERR_UNSUPPORTED,
          "untie: '%s' is not a checkpoint matrix", old->name);
    char *src = strdup(old->sources[0]); /* new_weight may move the weights */
    CHECK(src != NULL, ANVIL_ERR_OOM, "out of memory");
    const int64_t d0 = old->shape[0], d1 = old->shape[1];
    anvil_net_weight_slice(net, name, src, 0, 0); /* the whole matrix, a weight of its own */
    free(src);
    const int32_t i = anvil_network_find_weight(net, name);
    if (net->error != ANVIL_OK || i < 0)
        return ANVIL_FAIL(net->error != ANVIL_OK ? net->error : ANVIL_ERR_INTERNAL, "untie: %s", net->error_msg);
    net->weights[i].n_dims = 2;
    net->weights[i].shape[0] = d0;
    net->weights[i].shape[1] = d1;
    net->wpool[net->ops[v].weights_at] = i;
    return ANVIL_OK;
}

anvil_value anvil_network_output(const anvil_network *net) { return net->output; }
int32_t anvil_network_kv_layers(const anvil_network *net) { return net->n_kv_layers; }
