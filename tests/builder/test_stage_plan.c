/*
 * The pipeline cut of a network into stages (builder/stage_plan.c), without
 * MPI: the golden models' networks (Llama, Gemma 2's post-norms and soft
 * cap, Phi-3's fused tensors, GPT-2, the MoE models, DeepSeek-V2's mla
 * layers and its dense first layer) cut into 2 to 5 stages where their
 * layers allow, read back op by op:
 *   - each stage's attention (or mla) layers are its share, renumbered
 *     from 0;
 *   - only the hidden state crosses between stages: one recv (tag 0) at the
 *     start of each stage but the first, one send at the end of each but
 *     the last; the logits go from the last stage to stage 0 (tag 32767),
 *     stage 0's output their recv, the last stage's output their send;
 *   - the embedding on stage 0, the LM head on the last; every op of the
 *     model on exactly one stage, every weight on a stage that uses it and
 *     a layer's weights on that layer's stage;
 *   - a stage cut again for tensor parallelism: the LM head behind the
 *     send cut by vocabulary and gathered before it;
 *   - the refusals (fewer layers than stages, bad arguments, a stage cut
 *     again) with their messages.
 * tests/parallel/test_pp.c runs the stages under mpirun against the goldens.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/model_config.h"
#include "anvil/network.h"
#include "builder/shard_plan.h"
#include "builder/stage_plan.h"
#include "testutil.h"

static anvil_network *build(const char *model, anvil_model_config *cfg)
{
    const char *dir = anvil_test_model_dir(model); /* ../shared, or tests/data/models */
    if (anvil_model_config_load(dir, cfg) != ANVIL_OK)
        fail_msg("%s: %s", model, anvil_last_error());
    anvil_network *net = NULL;
    if (anvil_model_build_network(cfg, &net) != ANVIL_OK)
        fail_msg("%s: %s", model, anvil_last_error());
    return net;
}

static anvil_network *stage_of(const anvil_network *net, int32_t s, int32_t n, int32_t *layer0)
{
    anvil_network *out = NULL;
    if (anvil_network_stage(net, s, n, &out, layer0) != ANVIL_OK)
        fail_msg("stage %d of %d: %s", s, n, anvil_last_error());
    return out;
}

static int32_t count_kind(const anvil_network *net, anvil_op_kind kind)
{
    int32_t n = 0;
    for (int32_t i = 0; i < anvil_network_op_count(net); i++)
        n += anvil_network_op(net, i)->kind == kind;
    return n;
}

/* The layer number in a weight name "....layers.N....", or -1. */
static int layer_of_name(const char *name)
{
    const char *p = strstr(name, "layers.");
    return p ? atoi(p + 7) : -1;
}

/* Cuts `model` into n stages and checks every stage (see the top). */
static void check_stages(const char *model, int32_t n)
{
    anvil_model_config cfg;
    anvil_network *net = build(model, &cfg);
    const int32_t L = (int32_t)cfg.n_layers;
    int32_t total_ops = 0;
    unsigned char *seen = calloc((size_t)anvil_network_weight_count(net), 1);
    assert_non_null(seen);
    for (int32_t s = 0; s < n; s++) {
        int32_t layer0 = -1, first, count;
        anvil_network *st = stage_of(net, s, n, &layer0);
        anvil_stage_layers(L, s, n, &first, &count);
        assert_int_equal(layer0, first);
        assert_int_equal(anvil_network_kv_layers(st), count);
        assert_int_equal(count_kind(st, ANVIL_OP_ATTENTION) + count_kind(st, ANVIL_OP_MLA), count);
        int32_t k = 0;
        for (int32_t i = 0; i < anvil_network_op_count(st); i++) {
            const anvil_net_op *op = anvil_network_op(st, i);
            if (op->kind == ANVIL_OP_ATTENTION)
                assert_int_equal(op->attn.layer, k++);
            else if (op->kind == ANVIL_OP_MLA)
                assert_int_equal(op->mla.layer, k++);
        }
        assert_int_equal(count_kind(st, ANVIL_OP_EMBEDDING), s == 0);
        /* the hidden state alone crosses (stage 0 receives the logits, the
         * last stage sends them) */
        assert_int_equal(count_kind(st, ANVIL_OP_RECV), 1);
        assert_int_equal(count_kind(st, ANVIL_OP_SEND), 1);
        const anvil_net_op *out = anvil_network_op(st, anvil_network_output(st));
        if (s > 0) {
            const anvil_net_op *r = anvil_network_op(st, 0);
            assert_int_equal(r->kind, ANVIL_OP_RECV);
            assert_int_equal(r->peer, s - 1);
            assert_int_equal(r->tag, 0);
            assert_int_equal(r->row_kind, 0);
            assert_int_equal(r->width, cfg.hidden_size);
        }
        if (s == 0) {
            assert_int_equal(out->kind, ANVIL_OP_RECV);
            assert_int_equal(out->peer, n - 1);
            assert_int_equal(out->tag, ANVIL_STAGE_LOGITS_TAG);
            assert_int_equal(out->row_kind, 1);
            assert_int_equal(out->width, cfg.vocab_size);
        }
        if (s + 1 == n) {
            assert_int_equal(out->kind, ANVIL_OP_SEND);
            assert_int_equal(out->peer, 0);
            assert_int_equal(out->tag, ANVIL_STAGE_LOGITS_TAG);
            assert_int_equal(out->row_kind, 1);
            assert_int_equal(out->width, cfg.vocab_size);
        } else {
            const anvil_net_op *snd = NULL;
            for (int32_t i = 0; i < anvil_network_op_count(st); i++)
                if (anvil_network_op(st, i)->kind == ANVIL_OP_SEND)
                    snd = anvil_network_op(st, i);
            assert_int_equal(snd->peer, s + 1);
            assert_int_equal(snd->tag, 0);
            assert_int_equal(snd->row_kind, 0);
            assert_int_equal(snd->width, cfg.hidden_size);
            if (s > 0)
                assert_ptr_equal(out, snd); /* a stage between: its output is the send */
        }
        /* weights: a layer's on its stage, each known to the model */
        for (int32_t w = 0; w < anvil_network_weight_count(st); w++) {
            const anvil_net_weight *sw = anvil_network_weight(st, w);
            const int32_t src = anvil_network_find_weight(net, sw->name);
            if (src < 0)
                fail_msg("%s stage %d: weight %s is not the model's", model, s, sw->name);
            seen[src] = 1;
            const int l = layer_of_name(sw->name);
            if (l >= 0 && (l < first || l >= first + count))
                fail_msg("%s stage %d of %d (layers %d..%d): weight %s", model, s, n, first, first + count - 1,
                         sw->name);
        }
        total_ops += anvil_network_op_count(st) - count_kind(st, ANVIL_OP_SEND) - count_kind(st, ANVIL_OP_RECV);
        anvil_network_free(st);
    }
    assert_int_equal(total_ops, anvil_network_op_count(net));
    for (int32_t w = 0; w < anvil_network_weight_count(net); w++)
        if (!seen[w])
            fail_msg("%s over %d stages: weight %s on no stage", model, n, anvil_network_weight(net, w)->name);
    free(seen);
    anvil_network_free(net);
}

static void test_stages(void **state)
{
    (void)state;
    static const char *const three[] = {"tiny-llama3", "tiny-gemma2",    "tiny-phi3",
                                        "tiny-mixtral", "tiny-qwen3",     "tiny-gpt2",
                                        "tiny-qwen2-moe", "tiny-deepseek-v2", "tiny-deepseek-v2-lite"};
    for (int32_t n = 2; n <= 3; n++)
        for (size_t i = 0; i < sizeof three / sizeof three[0]; i++)
            check_stages(three[i], n);
    for (int32_t n = 2; n <= 5; n++)
        check_stages("stories260K", n);
    check_stages("tinycode", 4);
}

/* TP after PP: the last stage's head (tied to the embedding, which is on
 * stage 0) cut by vocabulary and gathered before the send; the layers'
 * linears cut as on one stage. */
static void test_stage_then_shard(void **state)
{
    (void)state;
    anvil_model_config cfg;
    anvil_network *net = build("stories260K", &cfg);
    int32_t layer0;
    anvil_network *last = stage_of(net, 1, 2, &layer0), *cut = NULL;
    assert_int_equal(anvil_network_shard(last, 1, 2, &cut), ANVIL_OK);
    const anvil_net_op *out = anvil_network_op(cut, anvil_network_output(cut));
    assert_int_equal(out->kind, ANVIL_OP_SEND);
    assert_int_equal(out->width, cfg.vocab_size);
    const anvil_net_op *g = anvil_network_op(cut, out->inputs[0]);
    assert_int_equal(g->kind, ANVIL_OP_ALL_GATHER);
    const anvil_net_op *head = anvil_network_op(cut, g->inputs[0]);
    assert_int_equal(head->kind, ANVIL_OP_LINEAR);
    assert_int_equal(head->width, cfg.vocab_size / 2);
    const anvil_net_weight *hw = anvil_network_weight(cut, head->weights[0]);
    assert_int_equal(hw->recipe, ANVIL_RECIPE_SLICE);
    assert_int_equal(hw->start, cfg.vocab_size / 2);
    assert_int_equal(anvil_network_op(cut, 0)->kind, ANVIL_OP_RECV); /* received whole, not cut */
    assert_int_equal(anvil_network_op(cut, 0)->width, cfg.hidden_size);
    assert_int_equal(count_kind(cut, ANVIL_OP_ALL_REDUCE), 2 * count_kind(cut, ANVIL_OP_ATTENTION));
    anvil_network_free(cut);
    /* stage 0: its output is the received logits, not a head to cut */
    anvil_network *first = stage_of(net, 0, 2, &layer0);
    assert_int_equal(anvil_network_shard(first, 0, 2, &cut), ANVIL_OK);
    assert_int_equal(count_kind(cut, ANVIL_OP_ALL_GATHER), 0);
    assert_int_equal(anvil_network_op(cut, anvil_network_output(cut))->width, cfg.vocab_size);
    anvil_network_free(cut);
    anvil_network_free(first);
    anvil_network_free(last);
    anvil_network_free(net);
}

static void test_refusals(void **state)
{
    (void)state;
    anvil_model_config cfg;
    anvil_network *net = build("tiny-llama3", &cfg), *out = NULL;
    int32_t layer0;
    assert_status_msg(anvil_network_stage(net, 0, 4, &out, &layer0), ANVIL_ERR_UNSUPPORTED,
                      "3 layers cannot be split over 4 pipeline stages");
    assert_null(out);
    assert_status_msg(anvil_network_stage(net, 2, 2, &out, &layer0), ANVIL_ERR_INVALID_ARG, "stage 2 of 2");
    assert_status_msg(anvil_network_stage(net, 0, 0, &out, &layer0), ANVIL_ERR_INVALID_ARG, "stage 0 of 0");
    anvil_network *last = stage_of(net, 1, 2, &layer0);
    assert_status_msg(anvil_network_stage(last, 0, 2, &out, &layer0), ANVIL_ERR_INVALID_ARG, "a stage already");
    anvil_network_free(last);
    /* one stage: a copy */
    assert_int_equal(anvil_network_stage(net, 0, 1, &out, &layer0), ANVIL_OK);
    assert_int_equal(anvil_network_op_count(out), anvil_network_op_count(net));
    assert_int_equal(count_kind(out, ANVIL_OP_SEND) + count_kind(out, ANVIL_OP_RECV), 0);
    anvil_network_free(out);
    /* the ops' own arguments */
    anvil_network *n2 = NULL;
    assert_int_equal(anvil_network_create(&n2), ANVIL_OK);
    assert_int_equal(anvil_net_recv(n2, 8, 2, 0, 0), ANVIL_VALUE_NONE);
    assert_status_msg(anvil_network_status(n2), ANVIL_ERR_INVALID_ARG, "recv: stage 0, tag 0, rows 2");
    anvil_network_free(n2);
    assert_int_equal(anvil_network_create(&n2), ANVIL_OK);
    anvil_value r = anvil_net_recv(n2, 8, 0, 0, 0);
    assert_int_equal(anvil_net_send(n2, r, 1, 40000), ANVIL_VALUE_NONE);
    assert_status_msg(anvil_network_status(n2), ANVIL_ERR_INVALID_ARG, "send: stage 1, tag 40000");
    anvil_network_free(n2);
    anvil_network_free(net);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stages),
        cmocka_unit_test(test_stage_then_shard),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
