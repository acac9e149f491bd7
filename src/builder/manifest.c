/* The builder's part of an engine's manifest (manifest.h). */
#include "builder/manifest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "builder/quantize.h"
#include "core/error.h"

static const char *const fuse_names[] = {"none",         "skip",     "add_rmsnorm",
                                         "matmul_multi", "silu_mul", "rope_attention"};
#define N_FUSE ((int)(sizeof fuse_names / sizeof fuse_names[0]))

const char *anvil_manifest_fuse_name(int kind)
{
    return kind >= 0 && kind < N_FUSE ? fuse_names[kind] : "?";
}

int anvil_manifest_fuse_parse(const char *name)
{
    for (int i = 0; name && i < N_FUSE; i++)
        if (strcmp(fuse_names[i], name) == 0)
            return i;
    return -1;
}

static const char *const recipe_names[] = {"tensor", "slice", "concat", "transpose"};
static void put(json_t *o, const char *k, json_t *v, int *ok);
static const char *const role_names[] = {"weight", "scales", "zeros", "perm"};
static const char *const act_names[] = {"none", "fp8_dynamic", "fp8_static"};

anvil_status anvil_manifest_set_quant(anvil_engine_writer *w, const anvil_build_plan *p, int32_t s)
{
    const anvil_stored_quant *q = &p->stored[s].q;
    TRY(anvil_engine_writer_set_scales(w, s, q->scales));
    json_t *info = json_pack("{s:i}", "group", (int)q->group);
    int ok = info != NULL;
    if (ok && q->zeros >= 0)
        put(info, "zeros", json_string(p->stored[q->zeros].name), &ok);
    if (ok && q->perm >= 0)
        put(info, "perm", json_string(p->stored[q->perm].name), &ok);
    if (ok && q->act != ANVIL_QUANT_ACT_NONE)
        put(info, "act", json_string(act_names[q->act]), &ok);
    if (ok && q->act == ANVIL_QUANT_ACT_FP8_STATIC)
        put(info, "input_scale", json_real(q->input_scale), &ok);
    anvil_status st = ok ? anvil_engine_writer_set_scales_info(w, s, info) : ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    json_decref(info);
    return st;
}

/* ------------------------------------------------------------ writing */

/* json_object_set_new that remembers a failure (out of memory) in *ok. */
static void put(json_t *o, const char *k, json_t *v, int *ok)
{
    if (v == NULL || json_object_set_new(o, k, v) != 0)
        *ok = 0;
}

static void add(json_t *a, json_t *v, int *ok)
{
    if (v == NULL || json_array_append_new(a, v) != 0)
        *ok = 0;
}

static json_t *rope_json(const anvil_rope_config *r, int *ok)
{
    json_t *o = json_object();
    if (o == NULL) {
        *ok = 0;
        return NULL;
    }
    put(o, "type", json_integer(r->type), ok);
    put(o, "theta", json_real(r->theta), ok);
    put(o, "factor", json_real(r->factor), ok);
    put(o, "low_freq_factor", json_real(r->low_freq_factor), ok);
    put(o, "high_freq_factor", json_real(r->high_freq_factor), ok);
    put(o, "original_max_position", json_integer(r->original_max_position), ok);
    if (r->n_ext_factors > 0) { /* LongRoPE */
        json_t *sf = json_array(), *lf = json_array();
        for (int32_t i = 0; sf && lf && i < r->n_ext_factors; i++) {
            add(sf, json_real(r->short_factor[i]), ok);
            add(lf, json_real(r->long_factor[i]), ok);
        }
        put(o, "attention_factor", json_real(r->attention_factor), ok);
        put(o, "short_factor", sf, ok);
        put(o, "long_factor", lf, ok);
    }
    if (r->type == ANVIL_ROPE_YARN) { /* only for yarn: older engines' manifests stay equal */
        put(o, "attention_factor", json_real(r->attention_factor), ok);
        put(o, "beta_fast", json_real(r->beta_fast), ok);
        put(o, "beta_slow", json_real(r->beta_slow), ok);
        put(o, "mscale", json_real(r->mscale), ok);
        put(o, "mscale_all_dim", json_real(r->mscale_all_dim), ok);
        put(o, "truncate", json_integer(r->truncate), ok);
    }
    return o;
}

static json_t *op_json(const anvil_net_op *op, int *ok)
{
    json_t *o = json_object(), *in = json_array(), *w = json_array();
    if (o == NULL || in == NULL || w == NULL) {
        json_decref(o);
        json_decref(in);
        json_decref(w);
        *ok = 0;
        return NULL;
    }
    put(o, "kind", json_string(anvil_op_kind_name(op->kind)), ok);
    for (int k = 0; k < 3; k++)
        if (op->inputs[k] != ANVIL_VALUE_NONE)
            add(in, json_integer(op->inputs[k]), ok);
    put(o, "in", in, ok);
    for (int32_t k = 0; k < op->n_weights; k++)
        add(w, json_integer(op->weights[k]), ok);
    put(o, "w", w, ok);
    put(o, "width", json_integer(op->width), ok);
    put(o, "rows", json_string(op->row_kind ? "logits" : "tokens"), ok);
    switch (op->kind) {
    case ANVIL_OP_LAYERNORM:
        put(o, "eps", json_real(op->eps), ok);
        break;
    case ANVIL_OP_EMBEDDING:
        if (op->first_id != 0) /* a TP rank's vocabulary slice */
            put(o, "first_id", json_integer(op->first_id), ok);
        break;
    case ANVIL_OP_ALL_GATHER:
        put(o, "n_ranks", json_integer(op->head_dim), ok);
        break;
    case ANVIL_OP_RMSNORM:
        put(o, "eps", json_real(op->eps), ok);
        /* only where set: the manifests of engines built before it stay equal */
        if (op->weight_offset != 0.0f)
            put(o, "weight_offset", json_real(op->weight_offset), ok);
        break;
    case ANVIL_OP_SCALE:
    case ANVIL_OP_SOFTCAP:
        put(o, "value", json_real(op->scalar), ok);
        break;
    case ANVIL_OP_HEAD_RMSNORM:
        put(o, "eps", json_real(op->eps), ok);
        put(o, "head_dim", json_integer(op->head_dim), ok);
        break;
    case ANVIL_OP_ROPE:
        put(o, "head_dim", json_integer(op->head_dim), ok);
        put(o, "rope", rope_json(&op->rope, ok), ok);
        break;
    case ANVIL_OP_ATTENTION: {
        const anvil_attention_params *p = &op->attn;
        put(o, "layer", json_integer(p->layer), ok);
        put(o, "n_heads", json_integer(p->n_heads), ok);
        put(o, "n_kv_heads", json_integer(p->n_kv_heads), ok);
        put(o, "head_dim", json_integer(p->head_dim), ok);
        put(o, "sliding_window", json_integer(p->sliding_window), ok);
        put(o, "scale", json_real(p->scale), ok);
        if (p->softcap != 0.0f)
            put(o, "softcap", json_real(p->softcap), ok);
        break;
    }
    case ANVIL_OP_MOE: {
        const anvil_moe_params *p = &op->moe;
        put(o, "n_experts", json_integer(p->n_experts), ok);
        put(o, "top_k", json_integer(p->top_k), ok);
        put(o, "inter", json_integer(p->inter), ok);
        put(o, "shared_inter", json_integer(p->shared_inter), ok);
        put(o, "norm_topk_prob", json_integer(p->norm_topk_prob), ok);
        /* DeepSeek-V2's router, only where set (older manifests stay equal) */
        if (p->n_group > 1) {
            put(o, "n_group", json_integer(p->n_group), ok);
            put(o, "topk_group", json_integer(p->topk_group), ok);
        }
        if (p->routed_scale != 0.0f && p->routed_scale != 1.0f)
            put(o, "routed_scale", json_real(p->routed_scale), ok);
        if (p->shared_ungated)
            put(o, "shared_ungated", json_integer(1), ok);
        break;
    }
    case ANVIL_OP_MLA: {
        const anvil_mla_params *p = &op->mla;
        put(o, "layer", json_integer(p->layer), ok);
        put(o, "n_heads", json_integer(p->n_heads), ok);
        put(o, "kv_rank", json_integer(p->kv_rank), ok);
        put(o, "nope_dim", json_integer(p->nope_dim), ok);
        put(o, "rope_dim", json_integer(p->rope_dim), ok);
        put(o, "v_dim", json_integer(p->v_dim), ok);
        put(o, "scale", json_real(p->scale), ok);
        put(o, "rope", rope_json(&op->rope, ok), ok);
        break;
    }
    default:
        break;
    }
    return o;
}

static json_t *weight_json(const anvil_net_weight *w, int *ok)
{
    json_t *o = json_object(), *shape = json_array();
    if (o == NULL || shape == NULL) {
        json_decref(o);
        json_decref(shape);
        *ok = 0;
        return NULL;
    }
    put(o, "name", json_string(w->name), ok);
    for (int d = 0; d < w->n_dims; d++)
        add(shape, json_integer(w->shape[d]), ok);
    put(o, "shape", shape, ok);
    put(o, "recipe", json_string(recipe_names[w->recipe]), ok);
    if (w->recipe != ANVIL_RECIPE_TENSOR) {
        json_t *src = json_array();
        for (int32_t k = 0; src && k < w->n_sources; k++)
            add(src, json_string(w->sources[k]), ok);
        put(o, "sources", src, ok);
        put(o, "axis", json_integer(w->axis), ok);
        if (w->recipe == ANVIL_RECIPE_SLICE || w->recipe == ANVIL_RECIPE_TRANSPOSE)
            put(o, "start", json_integer(w->start), ok);
        if (w->part_len > 0) { /* a TP rank's part of each source (only where cut: older manifests stay equal) */
            put(o, "part_axis", json_integer(w->part_axis), ok);
            put(o, "part_start", json_integer(w->part_start), ok);
            put(o, "part_len", json_integer(w->part_len), ok);
        }
    }
    return o;
}

json_t *anvil_manifest_network(const anvil_network *net)
{
    int ok = 1;
    json_t *o = json_object(), *ops = json_array(), *ws = json_array();
    for (int32_t i = 0; ops && i < anvil_network_op_count(net); i++)
        add(ops, op_json(anvil_network_op(net, i), &ok), &ok);
    for (int32_t i = 0; ws && i < anvil_network_weight_count(net); i++)
        add(ws, weight_json(anvil_network_weight(net, i), &ok), &ok);
    if (o) {
        put(o, "ops", ops, &ok);
        put(o, "weights", ws, &ok);
        put(o, "output", json_integer(anvil_network_output(net)), &ok);
    } else {
        json_decref(ops);
        json_decref(ws);
    }
    if (!ok || o == NULL) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *anvil_manifest_plan(const anvil_build_plan *p, const anvil_network *net)
{
    int ok = 1;
    json_t *o = json_object(), *stored = json_array(), *fusion = json_array();
    for (int32_t s = 0; stored && s < p->n_stored; s++) {
        const anvil_stored *t = &p->stored[s];
        json_t *e = json_object(), *members = json_array();
        for (int32_t k = 0; members && k < t->n; k++)
            add(members, json_string(anvil_network_weight(net, p->members[t->first + k])->name), &ok);
        if (e) {
            put(e, "name", json_string(t->name), &ok);
            if (t->role != ANVIL_STORED_WEIGHT)
                put(e, "role", json_string(role_names[t->role]), &ok);
            put(e, "members", members, &ok);
            put(e, "shard",
                json_pack("{s:i, s:i, s:i}", "rank", t->shard.rank, "of", t->shard.count, "axis",
                          t->shard.axis),
                &ok);
        } else {
            json_decref(members);
        }
        add(stored, e, &ok);
    }
    for (int32_t i = 0; fusion && i < p->n_ops; i++) {
        const anvil_fuse *f = &p->fuse[i];
        if (f->kind == ANVIL_FUSE_NONE || f->kind == ANVIL_FUSE_SKIP)
            continue;
        json_t *e = json_object();
        if (e) {
            put(e, "op", json_integer(i), &ok);
            put(e, "kind", json_string(anvil_manifest_fuse_name(f->kind)), &ok);
            if (f->kind == ANVIL_FUSE_MATMUL_MULTI)
                put(e, "n", json_integer(f->n), &ok);
            if (f->kind == ANVIL_FUSE_ROPE_ATTENTION)
                put(e, "rope_op", json_integer(f->rope_op), &ok);
        }
        add(fusion, e, &ok);
    }
    if (o) {
        put(o, "stored", stored, &ok);
        put(o, "fusion", fusion, &ok);
    } else {
        json_decref(stored);
        json_decref(fusion);
    }
    if (!ok || o == NULL) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* ------------------------------------------------------------ reading */

void anvil_manifest_network_diff(const json_t *want, const json_t *have, char *buf, size_t cap)
{
    const char *parts[2] = {"ops", "weights"};
    for (int p = 0; p < 2; p++) {
        const json_t *a = json_object_get(want, parts[p]), *b = json_object_get(have, parts[p]);
        if (!json_is_array(b)) {
            snprintf(buf, cap, "no \"%s\" list", parts[p]);
            return;
        }
        if (json_array_size(a) != json_array_size(b)) {
            snprintf(buf, cap, "%zu %s instead of %zu", json_array_size(b), parts[p], json_array_size(a));
            return;
        }
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!json_equal(json_array_get(a, i), json_array_get(b, i))) {
                const json_t *k = json_object_get(json_array_get(a, i), p ? "name" : "kind");
                snprintf(buf, cap, "%s %zu (%s) differs", p ? "weight" : "op", i, json_string_value(k));
                return;
            }
    }
    snprintf(buf, cap, "the output differs");
}

static anvil_status read_fusion(const json_t *fusion, anvil_build_plan *p)
{
    CHECK(json_is_array(fusion), ANVIL_ERR_FORMAT, "the manifest's plan has no \"fusion\" list");
    size_t i;
    const json_t *e;
    json_array_foreach(fusion, i, e)
    {
        const json_t *jop = json_object_get(e, "op"), *jk = json_object_get(e, "kind");
        const int kind = anvil_manifest_fuse_parse(json_string_value(jk));
        CHECK(json_is_integer(jop) && kind > ANVIL_FUSE_SKIP, ANVIL_ERR_FORMAT,
              "fusion entry %zu is malformed", i);
        const json_int_t op = json_integer_value(jop);
        int64_t n = kind == ANVIL_FUSE_ADD_RMSNORM ? 2 : kind == ANVIL_FUSE_SILU_MUL ? 3 : 1;
        if (kind == ANVIL_FUSE_MATMUL_MULTI) {
            const json_t *jn = json_object_get(e, "n");
            n = json_is_integer(jn) ? json_integer_value(jn) : 0;
            CHECK(n >= 2 && n <= ANVIL_MATMUL_MULTI_MAX, ANVIL_ERR_FORMAT, "fusion entry %zu: bad n", i);
        }
        CHECK(op >= 0 && op < p->n_ops && n <= p->n_ops - op, ANVIL_ERR_FORMAT,
              "fusion entry %zu names ops out of range", i);
        for (int64_t j = 0; j < n; j++)
            CHECK(p->fuse[op + j].kind == ANVIL_FUSE_NONE, ANVIL_ERR_FORMAT,
                  "fusion entry %zu overlaps another", i);
        p->fuse[op].kind = (int8_t)kind;
        for (int64_t j = 1; j < n; j++)
            p->fuse[op + j].kind = ANVIL_FUSE_SKIP;
        if (kind == ANVIL_FUSE_MATMUL_MULTI)
            p->fuse[op].n = (int8_t)n;
        if (kind == ANVIL_FUSE_ROPE_ATTENTION) {
            const json_t *jr = json_object_get(e, "rope_op");
            const json_int_t r = json_is_integer(jr) ? json_integer_value(jr) : -1;
            CHECK(r >= 0 && r < op, ANVIL_ERR_FORMAT, "fusion entry %zu: bad rope_op", i);
            p->fuse[op].rope_op = (int32_t)r;
        }
    }
    return ANVIL_OK;
}

/* The fusion plan must be the planner's for this network with every fused
 * op (what the builder asks for), or no fusion at all: anything else was
 * not made by anvil. The ropes an attention group rotates are marked
 * SKIP here (the manifest lists groups, not the ops they absorb). */
static anvil_status check_fusion_matches(anvil_build_plan *p, const anvil_network *net)
{
    const anvil_fuse_caps all = anvil_fuse_caps_all();
    anvil_fuse *want = NULL;
    TRY(anvil_fuse_plan(net, &all, 0, &want));
    int any = 0;
    for (int32_t i = 0; i < p->n_ops; i++) {
        anvil_fuse *f = &p->fuse[i];
        if (f->kind != ANVIL_FUSE_ROPE_ATTENTION)
            continue;
        const anvil_net_op *op = anvil_network_op(net, i);
        for (int k = 0; k < 2; k++)
            if (op->inputs[k] >= 0 && op->inputs[k] < i && p->fuse[op->inputs[k]].kind == ANVIL_FUSE_NONE)
                p->fuse[op->inputs[k]].kind = ANVIL_FUSE_SKIP;
    }
    for (int32_t i = 0; i < p->n_ops; i++)
        any |= p->fuse[i].kind != ANVIL_FUSE_NONE;
    anvil_status st = ANVIL_OK;
    for (int32_t i = 0; any && i < p->n_ops && st == ANVIL_OK; i++) {
        const anvil_fuse *f = &p->fuse[i], *w = &want[i];
        if (f->kind != w->kind || (f->kind == ANVIL_FUSE_MATMUL_MULTI && f->n != w->n) ||
            (f->kind == ANVIL_FUSE_ROPE_ATTENTION && f->rope_op != w->rope_op))
            st = ANVIL_FAIL(ANVIL_ERR_FORMAT, "the fusion plan at op %d (%s) is not the one anvil makes (%s)",
                            i, anvil_manifest_fuse_name(f->kind), anvil_manifest_fuse_name(w->kind));
    }
    free(want);
    return st;
}

/* A companion named in a "scales" object (key `key`): its table index. */
static anvil_status companion_index(const anvil_engine_file *f, const anvil_engine_tensor *et, const json_t *sc,
                                    const char *key, int32_t *out)
{
    const json_t *j = json_object_get(sc, key);
    if (j == NULL)
        return ANVIL_OK;
    const anvil_engine_tensor *c = json_is_string(j) ? anvil_engine_file_find(f, json_string_value(j)) : NULL;
    CHECK(c != NULL && c != et, ANVIL_ERR_FORMAT, "tensor '%s': its %s tensor %s%s%s is not in the table", et->name,
          key, json_is_string(j) ? "'" : "", json_is_string(j) ? json_string_value(j) : "(not a name)",
          json_is_string(j) ? "'" : "");
    *out = (int32_t)c->index;
    return ANVIL_OK;
}

/* A quantized weight's "scales" object (docs/quantization.md): the scales
 * tensor (resolved by the reader), "group", "zeros", "perm", "act",
 * "input_scale". Their fit with the weight is anvil_build_plan_check's. */
static anvil_status read_quant(const anvil_engine_file *f, const anvil_engine_tensor *et, anvil_stored_quant *q)
{
    const json_t *sc = json_object_get(et->entry, "scales");
    q->scales = (int32_t)et->scales;
    const json_t *g = json_object_get(sc, "group");
    CHECK(g == NULL || (json_is_integer(g) && json_integer_value(g) >= 0 && json_integer_value(g) <= INT32_MAX),
          ANVIL_ERR_FORMAT, "tensor '%s': its scales' \"group\" is not a size", et->name);
    q->group = g ? (int32_t)json_integer_value(g) : 0;
    TRY(companion_index(f, et, sc, "zeros", &q->zeros));
    TRY(companion_index(f, et, sc, "perm", &q->perm));
    const json_t *act = json_object_get(sc, "act");
    q->act = ANVIL_QUANT_ACT_NONE;
    if (act != NULL) {
        int a = 2;
        while (a > 0 && !(json_is_string(act) && strcmp(json_string_value(act), act_names[a]) == 0))
            a--;
        CHECK(a > 0, ANVIL_ERR_FORMAT, "tensor '%s': its scales' \"act\" is not fp8_dynamic or fp8_static",
              et->name);
        q->act = (anvil_quant_act)a;
    }
    const json_t *is = json_object_get(sc, "input_scale");
    CHECK(is == NULL || json_is_number(is), ANVIL_ERR_FORMAT, "tensor '%s': its \"input_scale\" is not a number",
          et->name);
    q->input_scale = is ? (float)json_number_value(is) : 0.0f;
    return ANVIL_OK;
}

anvil_status anvil_manifest_read_plan(const anvil_engine_file *f, const anvil_network *net,
                                      anvil_build_plan **out)
{
    *out = NULL;
    const json_t *m = anvil_engine_file_manifest(f);
    json_t *have = json_object_get(m, "network"), *want = anvil_manifest_network(net);
    CHECK(want != NULL, ANVIL_ERR_OOM, "out of memory");
    if (!json_equal(want, have)) {
        char why[200];
        anvil_manifest_network_diff(want, have, why, sizeof why);
        json_decref(want);
        return ANVIL_FAIL(ANVIL_ERR_FORMAT,
                          "the engine's network is not the one anvil builds from its config (%s): it was "
                          "built by another version of anvil, or its manifest was altered; build it again",
                          why);
    }
    json_decref(want);
    const json_t *plan = json_object_get(m, "plan"), *stored = json_object_get(plan, "stored");
    const int64_t n_stored = anvil_engine_file_count(f);
    CHECK(json_is_array(stored) && (int64_t)json_array_size(stored) == n_stored, ANVIL_ERR_FORMAT,
          "the manifest's plan does not list the %lld stored tensors", (long long)n_stored);
    const int32_t nw = anvil_network_weight_count(net);
    CHECK(n_stored <= (int64_t)nw * ANVIL_PLAN_STORED_PER_WEIGHT, ANVIL_ERR_FORMAT,
          "%lld stored tensors for %d weights", (long long)n_stored, nw);
    anvil_build_plan *p = NULL;
    TRY(anvil_build_plan_alloc(nw, anvil_network_op_count(net), 0, &p));
    anvil_status st = ANVIL_OK;
    for (int32_t i = 0; i < nw; i++)
        p->weight_stored[i] = -1;
    int32_t n_members = 0;
    for (int64_t s = 0; s < n_stored; s++) {
        const anvil_engine_tensor *et = anvil_engine_file_tensor(f, s);
        const json_t *e = json_array_get(stored, (size_t)s), *members = json_object_get(e, "members");
        const json_t *jname = json_object_get(e, "name"), *jrole = json_object_get(e, "role");
        int role = ANVIL_STORED_WEIGHT;
        if (jrole != NULL)
            for (role = 3; role > 0 && !(json_is_string(jrole) && strcmp(json_string_value(jrole), role_names[role]) == 0);)
                role--;
        CHECK_GOTO(jrole == NULL || (json_is_string(jrole) && strcmp(json_string_value(jrole), role_names[role]) == 0),
                   ANVIL_ERR_FORMAT, fail, "the plan's stored tensor '%s' has an unknown role", et->name);
        CHECK_GOTO(json_is_string(jname) && strcmp(json_string_value(jname), et->name) == 0 &&
                       json_is_array(members) && (json_array_size(members) >= 1) == (role == ANVIL_STORED_WEIGHT),
                   ANVIL_ERR_FORMAT, fail, "the plan's stored tensor %lld is not tensor '%s'", (long long)s,
                   et->name);
        anvil_dtype kind;
        CHECK_GOTO(anvil_engine_kind_to_dtype(et->kind, &kind) == 0, ANVIL_ERR_UNSUPPORTED, fail,
                   "tensor '%s' is %s, which this anvil does not run", et->name,
                   anvil_engine_kind_name(et->kind));
        CHECK_GOTO(et->n_dims <= 2, ANVIL_ERR_FORMAT, fail, "tensor '%s' has %d dimensions", et->name,
                   et->n_dims);
        anvil_stored *t = &p->stored[p->n_stored];
        t->name = strdup(et->name);
        CHECK_GOTO(t->name != NULL, ANVIL_ERR_OOM, fail, "out of memory");
        p->n_stored++;
        t->kind = kind;
        const json_t *sh = json_object_get(e, "shard");
        t->shard = (anvil_shard){.rank = 0, .count = 1, .axis = -1};
        if (sh != NULL) {
            const json_t *r = json_object_get(sh, "rank"), *of = json_object_get(sh, "of"),
                         *ax = json_object_get(sh, "axis");
            CHECK_GOTO(json_is_integer(r) && json_is_integer(of) && json_is_integer(ax) &&
                           json_integer_value(of) >= 1 && json_integer_value(of) <= 4096 &&
                           json_integer_value(r) >= 0 && json_integer_value(r) < json_integer_value(of) &&
                           json_integer_value(ax) >= -1 && json_integer_value(ax) <= 1,
                       ANVIL_ERR_FORMAT, fail, "the plan's stored tensor '%s' has a malformed shard",
                       et->name);
            t->shard = (anvil_shard){.rank = (int32_t)json_integer_value(r),
                                     .count = (int32_t)json_integer_value(of),
                                     .axis = (int)json_integer_value(ax)};
        }
        t->n_dims = et->n_dims;
        t->shape[0] = et->shape[0];
        t->shape[1] = et->n_dims > 1 ? et->shape[1] : 0;
        t->bytes = et->bytes;
        t->first = n_members;
        t->n = (int32_t)json_array_size(members);
        t->role = (anvil_stored_role)role;
        t->of = -1; /* a companion's weight: set by the weight that names it */
        t->q = (anvil_stored_quant){.scales = -1, .zeros = -1, .perm = -1};
        if (et->scales >= 0)
            TRY_GOTO(read_quant(f, et, &t->q), fail);
        int64_t elems = 0;
        for (int32_t k = 0; k < t->n; k++) {
            const int32_t wi =
                anvil_network_find_weight(net, json_string_value(json_array_get(members, (size_t)k)));
            CHECK_GOTO(wi >= 0 && p->weight_stored[wi] < 0 && n_members < nw, ANVIL_ERR_FORMAT, fail,
                       "stored tensor '%s' names a weight that is not the network's or is stored twice",
                       et->name);
            const anvil_net_weight *w = anvil_network_weight(net, wi);
            p->members[n_members++] = wi;
            p->weight_stored[wi] = (int32_t)s;
            p->weight_offset[wi] = elems;
            elems += w->n_dims == 1 ? w->shape[0] : w->shape[0] * w->shape[1];
        }
        p->total_bytes += t->bytes;
    }
    /* weights quantized by round to nearest can be made again from a
     * checkpoint (a refit): they get the RTN converter, their companions too */
    const char *method = json_string_value(
        json_object_get(json_object_get(json_object_get(m, "build"), "quantization"), "method"));
    const anvil_stored_converter *conv = method && strcmp(method, anvil_rtn_converter.method) == 0
                                             ? &anvil_rtn_converter
                                             : NULL;
    for (int32_t s = 0; s < p->n_stored; s++) { /* each companion's weight: the one that names it */
        const anvil_stored_quant *q = &p->stored[s].q;
        const int32_t comp[3] = {q->scales, q->zeros, q->perm};
        if (q->scales >= 0)
            p->stored[s].conv = conv;
        for (int c = 0; c < 3; c++)
            if (comp[c] >= 0 && comp[c] < p->n_stored && p->stored[comp[c]].of < 0) {
                p->stored[comp[c]].of = s;
                p->stored[comp[c]].conv = conv;
            }
    }
    TRY_GOTO(read_fusion(json_object_get(plan, "fusion"), p), fail);
    TRY_GOTO(anvil_build_plan_check(p, net), fail);
    TRY_GOTO(check_fusion_matches(p, net), fail);
    *out = p;
    return ANVIL_OK;
fail:
    anvil_build_plan_free(p);
    return st;
}
