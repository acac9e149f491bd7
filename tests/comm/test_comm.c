/*
 * The communicator's seam without MPI (src/comm/comm.c, comm_self.c):
 *   - "self": rank 0 of 1; sums and broadcasts leave the buffer as it is, a
 *     gather copies, point to point has no peer;
 *   - the broken state: an implementation whose collective fails with
 *     ANVIL_ERR_COMM breaks the communicator, and every later call is refused
 *     at once with the first failure's message; argument errors break
 *     nothing;
 *   - anvil_comm_split: a self part for one rank, a part's failure breaking
 *     the communicator it was split from (and the other way).
 * tests/parallel/test_tp.c runs the MPI implementation under mpirun.
 */
#include <string.h>

#include "comm/comm_internal.h"
#include "core/error.h"
#include "testutil.h"

static void test_self(void **state)
{
    (void)state;
    anvil_comm *c = NULL;
    assert_int_equal(anvil_comm_create_self(&c), ANVIL_OK);
    assert_int_equal(anvil_comm_rank(c), 0);
    assert_int_equal(anvil_comm_size(c), 1);
    assert_string_equal(anvil_comm_name(c), "self");
    assert_int_equal(anvil_comm_memory_kind(c), ANVIL_COMM_HOST);
    float x[3] = {1.5f, -2.0f, 3.25f};
    assert_int_equal(anvil_comm_all_reduce_sum(c, x, 3, ANVIL_DTYPE_F32), ANVIL_OK);
    assert_true(x[0] == 1.5f && x[1] == -2.0f && x[2] == 3.25f);
    assert_int_equal(anvil_comm_broadcast(c, x, sizeof x, 0), ANVIL_OK);
    float y[3] = {0};
    assert_int_equal(anvil_comm_all_gather(c, x, y, sizeof x), ANVIL_OK);
    assert_memory_equal(x, y, sizeof x);
    /* by columns: one rank's rows as they are (through the stage) */
    float z[3] = {0}, stage[3] = {0};
    assert_int_equal(anvil_comm_all_gather_cols(c, x, z, stage, 3, sizeof(float)), ANVIL_OK);
    assert_memory_equal(x, z, sizeof x);
    assert_status_msg(anvil_comm_all_gather_cols(c, x, NULL, stage, 3, 4), ANVIL_ERR_INVALID_ARG, "NULL buffer");
    assert_int_equal(anvil_comm_barrier(c), ANVIL_OK);
    assert_status_msg(anvil_comm_send(c, x, 4, 0, 0), ANVIL_ERR_INVALID_ARG, "peer 0 is not another");
    assert_status_msg(anvil_comm_broadcast(c, x, 4, 1), ANVIL_ERR_INVALID_ARG, "root 1 of 1");
    assert_status_msg(anvil_comm_all_reduce_sum(c, x, 1, ANVIL_DTYPE_I8), ANVIL_ERR_UNSUPPORTED, "cannot sum i8");
    assert_null(anvil_comm_error(c)); /* argument errors break nothing */
    anvil_comm_abort(c, 1);           /* one rank: nothing to end, it returns */
    anvil_comm_free(c);
    anvil_comm_free(NULL);
    /* no communicator: one rank */
    assert_int_equal(anvil_comm_size(NULL), 1);
    assert_int_equal(anvil_comm_rank(NULL), 0);
}

/* A two-rank implementation whose collectives fail while `fail` is set. */
static int fail_next;
static int calls;

static anvil_status flaky_reduce(anvil_comm *c, void *buf, int64_t n, anvil_dtype dt)
{
    (void)c, (void)buf, (void)n, (void)dt;
    calls++;
    if (fail_next)
        return ANVIL_FAIL(ANVIL_ERR_COMM, "peer rank 1 is gone");
    return ANVIL_OK;
}

static anvil_status flaky_barrier(anvil_comm *c)
{
    (void)c;
    calls++;
    return ANVIL_OK;
}

static const anvil_comm_ops flaky_ops = {
    .name = "flaky",
    .memory = ANVIL_COMM_HOST,
    .all_reduce_sum = flaky_reduce,
    .barrier = flaky_barrier,
};

static void test_broken_stays_broken(void **state)
{
    (void)state;
    anvil_comm *c = anvil_comm_wrap(&flaky_ops, 0, 2, NULL);
    assert_non_null(c);
    float x = 1.0f;
    fail_next = 0;
    calls = 0;
    assert_int_equal(anvil_comm_all_reduce_sum(c, &x, 1, ANVIL_DTYPE_F32), ANVIL_OK);
    assert_null(anvil_comm_error(c));
    /* the timeout: 30 s unless set; 0 is none; out of range refused */
    assert_true(anvil_comm_timeout(c) == ANVIL_COMM_TIMEOUT_DEFAULT_S);
    assert_int_equal(anvil_comm_set_timeout(c, 0), ANVIL_OK);
    assert_true(anvil_comm_timeout(c) == 0.0);
    assert_status_msg(anvil_comm_set_timeout(c, -1), ANVIL_ERR_INVALID_ARG, "0 (none)");
    assert_true(anvil_comm_timeout(c) == 0.0);
    assert_int_equal(anvil_comm_set_timeout(c, 2.5), ANVIL_OK);
    assert_true(anvil_comm_timeout(c) == 2.5);
    /* argument errors are refused before the implementation and break nothing */
    assert_status_msg(anvil_comm_broadcast(c, &x, 4, 2), ANVIL_ERR_INVALID_ARG, "root 2 of 2");
    assert_int_equal(anvil_comm_barrier(c), ANVIL_OK);
    assert_int_equal(calls, 2);
    /* a failed collective: its message, with the rank and the implementation */
    fail_next = 1;
    anvil_status st = anvil_comm_all_reduce_sum(c, &x, 1, ANVIL_DTYPE_F32);
    assert_int_equal(st, ANVIL_ERR_COMM);
    assert_non_null(strstr(anvil_last_error(), "peer rank 1 is gone"));
    assert_non_null(strstr(anvil_last_error(), "rank 0 of 2, flaky"));
    /* what /health reports (any thread may ask) */
    assert_non_null(anvil_comm_error(c));
    assert_non_null(strstr(anvil_comm_error(c), "peer rank 1 is gone"));
    assert_non_null(strstr(anvil_comm_error(c), "rank 0 of 2, flaky"));
    /* then every call is refused at once, naming the first failure */
    fail_next = 0;
    calls = 0;
    assert_status_msg(anvil_comm_barrier(c), ANVIL_ERR_COMM, "failed earlier");
    assert_status_msg(anvil_comm_all_reduce_sum(c, &x, 1, ANVIL_DTYPE_F32), ANVIL_ERR_COMM, "peer rank 1 is gone");
    assert_int_equal(calls, 0);
    anvil_comm_free(c);
}

static anvil_status flaky_split(anvil_comm *c, int32_t color, int32_t key, anvil_comm **out);

static const anvil_comm_ops flaky_split_ops = {
    .name = "flaky",
    .memory = ANVIL_COMM_HOST,
    .all_reduce_sum = flaky_reduce,
    .barrier = flaky_barrier,
    .split = flaky_split,
};

/* Rank 0 of a part of 2 (what MPI would make for two ranks of one color). */
static anvil_status flaky_split(anvil_comm *c, int32_t color, int32_t key, anvil_comm **out)
{
    (void)c, (void)color, (void)key;
    *out = anvil_comm_wrap(&flaky_split_ops, 0, 2, NULL);
    return *out ? ANVIL_OK : ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
}

/* anvil_comm_split: one rank gives a self communicator; a part inherits
 * the timeout, and a part's failure breaks the communicator it came from
 * (the program watches that one), which then refuses new parts. */
static void test_split(void **state)
{
    (void)state;
    anvil_comm *self = NULL, *part = NULL;
    assert_int_equal(anvil_comm_create_self(&self), ANVIL_OK);
    assert_int_equal(anvil_comm_set_timeout(self, 4), ANVIL_OK);
    assert_int_equal(anvil_comm_split(self, 3, 0, &part), ANVIL_OK);
    assert_int_equal(anvil_comm_size(part), 1);
    assert_string_equal(anvil_comm_name(part), "self");
    assert_true(anvil_comm_timeout(part) == 4.0);
    anvil_comm_free(part);
    assert_status_msg(anvil_comm_split(self, -2, 0, &part), ANVIL_ERR_INVALID_ARG, "color -2");
    assert_null(part);
    anvil_comm_free(self);
    /* an implementation of several ranks that cannot split */
    anvil_comm *c = anvil_comm_wrap(&flaky_ops, 0, 2, NULL);
    assert_non_null(c);
    assert_status_msg(anvil_comm_split(c, 0, 0, &part), ANVIL_ERR_UNSUPPORTED, "cannot split");
    assert_null(anvil_comm_error(c));
    anvil_comm_free(c);
    /* a part that fails */
    c = anvil_comm_wrap(&flaky_split_ops, 0, 2, NULL);
    assert_non_null(c);
    assert_int_equal(anvil_comm_split(c, 0, 0, &part), ANVIL_OK);
    assert_int_equal(anvil_comm_size(part), 2);
    fail_next = 1;
    float x = 1.0f;
    assert_status_msg(anvil_comm_all_reduce_sum(part, &x, 1, ANVIL_DTYPE_F32), ANVIL_ERR_COMM, "peer rank 1");
    fail_next = 0;
    assert_non_null(anvil_comm_error(part));
    assert_non_null(anvil_comm_error(c));
    assert_non_null(strstr(anvil_comm_error(c), "peer rank 1 is gone"));
    assert_status_msg(anvil_comm_barrier(c), ANVIL_ERR_COMM, "failed earlier");
    anvil_comm *again = NULL;
    assert_status_msg(anvil_comm_split(c, 0, 0, &again), ANVIL_ERR_COMM, "failed earlier");
    assert_null(again);
    anvil_comm_free(part);
    anvil_comm_free(c);
    /* the parent fails: the part refuses too */
    c = anvil_comm_wrap(&flaky_split_ops, 0, 2, NULL);
    assert_int_equal(anvil_comm_split(c, 0, 0, &part), ANVIL_OK);
    fail_next = 1;
    assert_status_msg(anvil_comm_all_reduce_sum(c, &x, 1, ANVIL_DTYPE_F32), ANVIL_ERR_COMM, "peer rank 1");
    fail_next = 0;
    assert_status_msg(anvil_comm_barrier(part), ANVIL_ERR_COMM, "failed earlier");
    anvil_comm_free(part);
    anvil_comm_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_self),
        cmocka_unit_test(test_broken_stays_broken),
        cmocka_unit_test(test_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
