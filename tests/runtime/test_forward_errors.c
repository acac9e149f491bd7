/*
 * Bad batches are refused with a clear status and change nothing: a valid
 * step after them gives the same logits as before them. The KV pool
 * refuses what it does not have.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/runtime.h"
#include "testutil.h"

static anvil_runtime *rt;
static int32_t vocab;

static int setup(void **s)
{
    (void)s;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/stories260K", anvil_test_shared_dir());
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.max_num_tokens = 16;
    o.max_batch_size = 2;
    o.max_logit_rows = 4;
    o.max_seq_len = 64;
    o.kv_block_size = 8;
    o.kv_cache_tokens = 64;
    if (anvil_runtime_load(dir, &o, &rt) != ANVIL_OK) {
        print_error("%s\n", anvil_last_error());
        return -1;
    }
    vocab = (int32_t)anvil_runtime_config(rt)->vocab_size;
    return 0;
}

static int teardown(void **s)
{
    (void)s;
    anvil_runtime_free(rt);
    return 0;
}

typedef struct batch_buf {
    int32_t ids[8], pos[8], starts[3], tables[16], rows[4];
    anvil_batch b;
} batch_buf;

/* Two sequences of 3 tokens, blocks {0,1} and {2,3}, logits on both last rows. */
static void valid_batch(batch_buf *bb)
{
    const int32_t ids[6] = {1, 403, 407, 1, 261, 378};
    memcpy(bb->ids, ids, sizeof ids);
    for (int i = 0; i < 6; i++)
        bb->pos[i] = i % 3;
    bb->starts[0] = 0;
    bb->starts[1] = 3;
    bb->starts[2] = 6;
    for (int i = 0; i < 4; i++)
        bb->tables[i] = i;
    bb->rows[0] = 2;
    bb->rows[1] = 5;
    anvil_batch b = {.n_tokens = 6, .token_ids = bb->ids, .positions = bb->pos, .n_seqs = 2,
                     .seq_starts = bb->starts, .block_tables = bb->tables, .max_blocks_per_seq = 2,
                     .n_logits = 2, .logit_rows = bb->rows};
    bb->b = b;
}

static void test_bad_batches_change_nothing(void **s)
{
    (void)s;
    float *before = malloc((size_t)vocab * 2 * 4), *after = malloc((size_t)vocab * 2 * 4);
    float *scratch = malloc((size_t)vocab * 4 * 4);
    assert_true(before && after && scratch);
    batch_buf bb;
    valid_batch(&bb);
    assert_int_equal(anvil_runtime_forward(rt, &bb.b, before), ANVIL_OK);

    valid_batch(&bb);
    bb.ids[1] = vocab;
    assert_status_msg(anvil_runtime_forward(rt, &bb.b, scratch), ANVIL_ERR_INVALID_ARG, "token id 512 out of range");
    valid_batch(&bb);
    bb.ids[4] = -3;
    assert_status_msg(anvil_runtime_forward(rt, &bb.b, scratch), ANVIL_ERR_INVALID_ARG, "token id -3");
    valid_batch(&bb);
    bb.pos[2] = 5;
    assert_status_msg(anvil_runtime_forward(rt, &bb.b, scratch), ANVIL_ERR_INVALID_ARG, "not consecutive");
    valid_batch(&bb);
    bb.tables[1] = 99;
    bb.pos[0] = 8; bb.pos[1] = 9; bb.pos[2] = 10; /* positions in the second block */
    assert_status_msg(anvil_runtime_forward(rt, &bb.b, scratch), ANVIL_ERR_INVALID_ARG, "block id 99");
    valid_batch(&bb);
    bb.pos[3] = 64; bb.pos[4] = 65; bb.pos[5] = 66;
    assert_status_msg(anvil_runtime_forward(rt, &bb.b, scratch), ANVIL_ERR_CAPACITY, "outside the context");
    valid_batch(&bb);
    bb.b.n_tokens = 17;
    assert_status_msg(anvil_runtime_forward(rt, &bb.b, scratch), ANVIL_ERR_CAPACITY, "max_num_tokens");
    valid_batch(&bb);
    bb.b.n_seqs = 3;
    assert_status_msg(anvil_runtime_forward(rt, &bb.b, scratch), ANVIL_ERR_CAPACITY, "max_batch_size");
    valid_batch(&bb);
    bb.rows[1] = 6;
    assert_status_msg(anvil_runtime_forward(rt, &bb.b, scratch), ANVIL_ERR_INVALID_ARG, "logit row 6");
    valid_batch(&bb);
    bb.b.n_logits = 5;
    assert_status_msg(anvil_runtime_forward(rt, &bb.b, scratch), ANVIL_ERR_CAPACITY, "max_logit_rows");
    valid_batch(&bb);
    bb.starts[1] = 0;
    assert_status_msg(anvil_runtime_forward(rt, &bb.b, scratch), ANVIL_ERR_INVALID_ARG, "has no tokens");
    valid_batch(&bb);
    bb.starts[2] = 5;
    assert_status_msg(anvil_runtime_forward(rt, &bb.b, scratch), ANVIL_ERR_INVALID_ARG, "seq_starts");
    valid_batch(&bb);
    bb.b.max_blocks_per_seq = 9;
    assert_status_msg(anvil_runtime_forward(rt, &bb.b, scratch), ANVIL_ERR_INVALID_ARG, "max_blocks_per_seq");

    valid_batch(&bb);
    assert_int_equal(anvil_runtime_forward(rt, &bb.b, after), ANVIL_OK);
    assert_memory_equal(before, after, (size_t)vocab * 2 * 4);
    free(before);
    free(after);
    free(scratch);
}

static void test_kv_pool_capacity(void **s)
{
    (void)s;
    int32_t total = anvil_runtime_kv_blocks_total(rt);
    assert_int_equal(total, 8);
    int32_t ids[9];
    assert_status_msg(anvil_runtime_kv_alloc(rt, 9, ids), ANVIL_ERR_CAPACITY, "KV cache full");
    assert_int_equal(anvil_runtime_kv_blocks_free(rt), 8); /* took none */
    assert_int_equal(anvil_runtime_kv_alloc(rt, 8, ids), ANVIL_OK);
    assert_int_equal(anvil_runtime_kv_blocks_free(rt), 0);
    for (int i = 0; i < 8; i++)
        for (int j = i + 1; j < 8; j++)
            assert_int_not_equal(ids[i], ids[j]);
    anvil_runtime_kv_release(rt, 8, ids);
    assert_int_equal(anvil_runtime_kv_blocks_free(rt), 8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_batches_change_nothing),
        cmocka_unit_test(test_kv_pool_capacity),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
