/* The LM head's own weight for --quantize-lm-head with tied embeddings (lm_head.h). */
#include "builder/lm_head.h"

#include <jansson.h>
#include <string.h>

#include "core/error.h"

anvil_value anvil_lm_head_op(const anvil_network *net)
{
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        if (op->kind == ANVIL_OP_LINEAR && op->row_kind == 1 && op->n_weights >= 1 && op->weights[0] >= 0)
            return i;
    }
    return -1;
}

int anvil_lm_head_is_tied(const anvil_network *net)
{
    const anvil_value h = anvil_lm_head_op(net);
    if (h < 0)
        return 0;
    const int32_t w = anvil_network_op(net, h)->weights[0];
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        for (int32_t k = 0; i != h && k < op->n_weights; k++)
            if (op->weights[k] == w)
                return 1;
    }
    return 0;
}

int anvil_lm_head_was_untied(const anvil_network *net)
{
    const anvil_value h = anvil_lm_head_op(net);
    if (h < 0)
        return 0;
    const anvil_net_weight *w = anvil_network_weight(net, anvil_network_op(net, h)->weights[0]);
    return w->recipe == ANVIL_RECIPE_SLICE && strcmp(w->name, ANVIL_UNTIED_LM_HEAD) == 0;
}

anvil_status anvil_lm_head_untie(anvil_network *net)
{
    const anvil_value h = anvil_lm_head_op(net);
    CHECK(h >= 0, ANVIL_ERR_UNSUPPORTED, "the network has no LM head (a linear over the logit rows)");
    return anvil_network_untie(net, h, ANVIL_UNTIED_LM_HEAD);
}

anvil_status anvil_lm_head_untie_as_engine(const anvil_engine_file *f, anvil_network *net)
{
    const json_t *u = json_object_get(json_object_get(anvil_engine_file_manifest(f), "build"), "untied_lm_head");
    if (u == NULL)
        return ANVIL_OK;
    CHECK(json_is_string(u) && strcmp(json_string_value(u), ANVIL_UNTIED_LM_HEAD) == 0, ANVIL_ERR_FORMAT,
          "%s: build.untied_lm_head is not \"%s\"", anvil_engine_file_path(f), ANVIL_UNTIED_LM_HEAD);
    CHECK(anvil_lm_head_is_tied(net), ANVIL_ERR_FORMAT, "%s: build.untied_lm_head, but the model's LM head is not tied",
          anvil_engine_file_path(f));
    return anvil_lm_head_untie(net);
}
