/*
 * The network of one pipeline stage (stage_plan.h): the cut points found
 * from the values live across each op boundary, then the stage's ops
 * copied in order between the recv of what crosses its first boundary and
 * the send of what crosses its last.
 */
#include "builder/stage_plan.h"

#include <stdlib.h>

#include "builder/shard_plan.h"
#include "core/error.h"
#include "models/network_edit.h"

void anvil_stage_layers(int32_t n_layers, int32_t stage, int32_t n_stages, int32_t *first, int32_t *count)
{
    const int64_t lo = (int64_t)n_layers * stage / n_stages, hi = (int64_t)n_layers * (stage + 1) / n_stages;
    *first = (int32_t)lo;
    *count = (int32_t)(hi - lo);
}

/* Whether op is a KV layer (attention, or DeepSeek's mla), and its layer. */
static int is_layer(const anvil_net_op *op) { return op->kind == ANVIL_OP_ATTENTION || op->kind == ANVIL_OP_MLA; }
static int32_t layer_of(const anvil_net_op *op) { return op->kind == ANVIL_OP_MLA ? op->mla.layer : op->attn.layer; }

typedef struct stage_ctx {
    const anvil_network *src;
    int32_t n;          /* the source's ops */
    int32_t *last_use;  /* [n] the last op that reads each value (n: the output, read after the last) */
    int32_t *cuts;      /* [n_stages + 1] stage s runs ops [cuts[s], cuts[s + 1]) */
} stage_ctx;

/* Columns of the values made before op c and read at or after it. */
static int64_t live_width(const stage_ctx *c, int32_t at)
{
    int64_t w = 0;
    for (int32_t v = 0; v < at; v++)
        if (c->last_use[v] >= at)
            w += anvil_network_op(c->src, v)->width;
    return w;
}

/* The cut points: before the first op of each stage, where the fewest
 * columns cross between the last attention of the stage before and the
 * stage's first attention; on a tie the last such place, next to the
 * stage's first layer: after a layer's attention the residual alone is
 * live too, and the layer's MLP stays with its attention. */
static anvil_status find_cuts(stage_ctx *c, int32_t n_stages)
{
    const anvil_network *net = c->src;
    int32_t n_layers = 0;
    for (int32_t i = 0; i < c->n; i++)
        n_layers += is_layer(anvil_network_op(net, i));
    CHECK(n_layers >= n_stages, ANVIL_ERR_UNSUPPORTED,
          "pipeline parallelism: %d layers cannot be split over %d pipeline stages (at least one layer a stage)",
          n_layers, n_stages);
    int32_t *attn = malloc((size_t)n_layers * sizeof *attn);
    CHECK(attn != NULL, ANVIL_ERR_OOM, "out of memory");
    for (int32_t i = 0, k = 0; i < c->n; i++)
        if (is_layer(anvil_network_op(net, i)))
            attn[k++] = i;
    c->cuts[0] = 0;
    c->cuts[n_stages] = c->n;
    for (int32_t s = 1; s < n_stages; s++) {
        int32_t first, count;
        anvil_stage_layers(n_layers, s, n_stages, &first, &count);
        int32_t best = attn[first];
        int64_t best_w = live_width(c, best);
        for (int32_t at = attn[first - 1] + 1; at < attn[first]; at++) {
            const int64_t w = live_width(c, at);
            if (w <= best_w) {
                best = at;
                best_w = w;
            }
        }
        c->cuts[s] = best;
    }
    free(attn);
    return ANVIL_OK;
}

/* Op i copied into dst with its inputs mapped and its weights whole;
 * attention's (or mla's) layer renumbered from the stage's first. */
static anvil_status copy_op(const stage_ctx *c, anvil_network *dst, int32_t i, int32_t layer0, anvil_value *map)
{
    const anvil_net_op *op = anvil_network_op(c->src, i);
    anvil_value in[3];
    for (int k = 0; k < 3; k++) {
        in[k] = op->inputs[k] == ANVIL_VALUE_NONE ? ANVIL_VALUE_NONE : map[op->inputs[k]];
        CHECK(op->inputs[k] == ANVIL_VALUE_NONE || in[k] != ANVIL_VALUE_NONE, ANVIL_ERR_INTERNAL,
              "pipeline parallelism: op %d reads value %d, which this stage neither makes nor receives", i,
              op->inputs[k]);
    }
    int32_t w[16];
    CHECK(op->n_weights <= 16, ANVIL_ERR_UNSUPPORTED, "pipeline parallelism: op %d has %d weights", i,
          op->n_weights);
    for (int32_t k = 0; k < op->n_weights; k++) {
        w[k] = -1;
        if (op->weights[k] < 0)
            continue;
        const anvil_net_weight *sw = anvil_network_weight(c->src, op->weights[k]);
        w[k] = anvil_network_copy_weight(dst, sw, sw->name);
        if (w[k] < 0)
            return anvil_network_status(dst);
    }
    anvil_net_op copy = *op;
    if (op->kind == ANVIL_OP_ATTENTION)
        copy.attn.layer -= layer0;
    else if (op->kind == ANVIL_OP_MLA)
        copy.mla.layer -= layer0;
    map[i] = anvil_network_append_copy(dst, &copy, in, w, op->n_weights, op->width);
    return map[i] == ANVIL_VALUE_NONE ? anvil_network_status(dst) : ANVIL_OK;
}

/* The stage's network (see stage_plan.h). */
static anvil_status build_stage(const stage_ctx *c, int32_t stage, int32_t n_stages, anvil_network *dst,
                                anvil_value *map, int32_t *kv_layer0)
{
    const anvil_network *net = c->src;
    const int32_t lo = c->cuts[stage], hi = c->cuts[stage + 1];
    /* the first attention layer of the stage: attention ops before lo */
    int32_t layer0 = 0;
    for (int32_t i = 0; i < lo; i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        if (is_layer(op) && layer_of(op) + 1 > layer0)
            layer0 = layer_of(op) + 1;
    }
    *kv_layer0 = layer0;
    for (int32_t v = 0; v < c->n; v++)
        map[v] = ANVIL_VALUE_NONE;
    /* what crosses the first boundary, received in value order */
    int32_t tag = 0;
    for (int32_t v = 0; stage > 0 && v < lo; v++)
        if (c->last_use[v] >= lo) {
            const anvil_net_op *op = anvil_network_op(net, v);
            map[v] = anvil_net_recv(dst, op->width, op->row_kind, stage - 1, tag++);
        }
    for (int32_t i = lo; i < hi; i++)
        TRY(copy_op(c, dst, i, layer0, map));
    const anvil_value out = anvil_network_output(net);
    if (stage + 1 == n_stages) { /* the last: the logits back to the first */
        anvil_net_set_output(dst, anvil_net_send(dst, map[out], 0, ANVIL_STAGE_LOGITS_TAG));
        return anvil_network_status(dst);
    }
    /* what crosses the last boundary, sent in value order */
    anvil_value last = ANVIL_VALUE_NONE;
    tag = 0;
    for (int32_t v = 0; v < hi; v++)
        if (c->last_use[v] >= hi) {
            CHECK(map[v] != ANVIL_VALUE_NONE, ANVIL_ERR_INTERNAL,
                  "pipeline parallelism: value %d crosses stage %d without reaching it", v, stage);
            last = anvil_net_send(dst, map[v], stage + 1, tag++);
        }
    CHECK(last != ANVIL_VALUE_NONE, ANVIL_ERR_INTERNAL, "pipeline parallelism: nothing crosses from stage %d",
          stage);
    if (stage == 0) {
        const anvil_net_op *lg = anvil_network_op(net, out);
        anvil_net_set_output(dst, anvil_net_recv(dst, lg->width, 1, n_stages - 1, ANVIL_STAGE_LOGITS_TAG));
    } else {
        anvil_net_set_output(dst, last);
    }
    return anvil_network_status(dst);
}

anvil_status anvil_network_stage(const anvil_network *net, int32_t stage, int32_t n_stages, anvil_network **out,
                                 int32_t *kv_layer0)
{
    *out = NULL;
    *kv_layer0 = 0;
    CHECK(net != NULL && n_stages >= 1 && stage >= 0 && stage < n_stages && n_stages <= 32767,
          ANVIL_ERR_INVALID_ARG, "pipeline parallelism: stage %d of %d", stage, n_stages);
    TRY(anvil_network_status(net));
    if (n_stages == 1)
        return anvil_network_shard(net, 0, 1, out); /* a copy */
    const anvil_value output = anvil_network_output(net);
    CHECK(anvil_network_op(net, output)->kind != ANVIL_OP_SEND, ANVIL_ERR_INVALID_ARG,
          "pipeline parallelism: the network is a stage already");
    stage_ctx c = {.src = net, .n = anvil_network_op_count(net)};
    anvil_status st = ANVIL_OK;
    anvil_network *dst = NULL;
    anvil_value *map = malloc((size_t)c.n * sizeof *map);
    c.last_use = malloc((size_t)c.n * sizeof *c.last_use);
    c.cuts = malloc(((size_t)n_stages + 1) * sizeof *c.cuts);
    CHECK_GOTO(map && c.last_use && c.cuts, ANVIL_ERR_OOM, done, "out of memory");
    for (int32_t i = 0; i < c.n; i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        c.last_use[i] = -1;
        for (int k = 0; k < 3; k++)
            if (op->inputs[k] != ANVIL_VALUE_NONE)
                c.last_use[op->inputs[k]] = i;
    }
    c.last_use[output] = c.n;
    TRY_GOTO(find_cuts(&c, n_stages), done);
    TRY_GOTO(anvil_network_create(&dst), done);
    TRY_GOTO(build_stage(&c, stage, n_stages, dst, map, kv_layer0), done);
    *out = dst;
    dst = NULL;
done:
    anvil_network_free(dst);
    free(map);
    free(c.last_use);
    free(c.cuts);
    return st;
}
