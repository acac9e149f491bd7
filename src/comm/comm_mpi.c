/*
 * The MPI communicator: the processes of MPI_COMM_WORLD (mpirun), host
 * buffers, on a duplicate communicator whose errors are returned rather
 * than fatal (MPI's default aborts the job).
 *
 * The sum is anvil's, not MPI_Allreduce's: MPI has no bf16/f16 type, and an
 * MPI reduction may add in an order that differs between ranks or
 * algorithms. Here each rank owns a slice of the buffer (a reduce-scatter
 * through MPI_Alltoallv), adds the ranks' values for its slice in f32 in
 * rank order, rounds once to the element type, and the slices are gathered
 * back (MPI_Allgatherv): every rank ends with the same bits, moving the
 * bytes a ring all-reduce moves (2 (size - 1) / size of the buffer).
 *
 * Every call is MPI's non-blocking one, polled until it completes or the
 * communicator's timeout passes (wait_done): a blocking MPI call to a rank
 * that died or stopped would never return, and Open MPI 4 has no timeout
 * of its own. After a timeout the request stays pending: the communicator
 * is broken (comm.c), so nothing reuses its buffers' contents, and it is
 * neither freed nor finalized (either may wait on the missing rank).
 */
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_internal.h"
#include "core/error.h"

/* Elements summed per round, so that MPI's int counts and the scratch stay
 * small whatever the buffer. */
#define PIECE_ELEMS ((int64_t)1 << 22)
/* Bytes per call of a plain byte transfer (int counts). */
#define XFER_BYTES ((size_t)1 << 30)

typedef struct mpi_impl {
    MPI_Comm comm;
    int owns_init;      /* MPI_Init was ours: MPI_Finalize is too */
    unsigned char *recv; /* [PIECE_ELEMS x 2 bytes... grows] the slices the ranks send this rank */
    size_t recv_cap;
    float *acc;          /* [slice] the sum in f32 */
    size_t acc_cap;
    int *counts, *displs; /* [size] x 4: send counts/displs, recv counts/displs */
} mpi_impl;

/* ANVIL_ERR_COMM with MPI's own words for code. */
static anvil_status mpi_fail(int code, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "MPI error %d", code);
    return ANVIL_FAIL(ANVIL_ERR_COMM, "%s: %s", what, msg);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Polls req until it completes, fails or c->timeout_s passes. The first
 * polls spin (a decode step's collectives take microseconds); then the
 * rank naps 20 us between polls for its first second of waiting (a
 * follower waiting for rank 0's next step must not start it a millisecond
 * late), and 1 ms after that (an idle server's followers leave their
 * cores to the others). */
static anvil_status wait_done(anvil_comm *c, MPI_Request *req, MPI_Status *status, const char *what)
{
    const double t0 = now_s();
    for (int polls = 0;; polls++) {
        int done = 0;
        const int rc = MPI_Test(req, &done, status ? status : MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS)
            return mpi_fail(rc, what);
        if (done)
            return ANVIL_OK;
        /* the clock on every poll: with more ranks than cores MPI_Test
         * yields the core, and 2,000 polls can take seconds */
        const double waited = now_s() - t0;
        if (c->timeout_s > 0 && waited > c->timeout_s)
            return ANVIL_FAIL(ANVIL_ERR_COMM,
                              "%s: no answer within %g s (a rank died, was stopped, or is not running the same "
                              "steps)",
                              what, c->timeout_s);
        if (polls < 2000)
            continue;
        struct timespec nap = {0, waited < 1.0 ? 20000 : 1000000};
        nanosleep(&nap, NULL);
    }
}

/* Starts a non-blocking call (its request in `req`) and waits for it. */
#define MPI_WAIT(c, call, req, status, what)                    \
    do {                                                        \
        int mpi_rc_ = (call);                                   \
        if (mpi_rc_ != MPI_SUCCESS)                             \
            return mpi_fail(mpi_rc_, what);                     \
        TRY(wait_done((c), (req), (status), what));             \
    } while (0)

#define MPI_TRY(call, what)              \
    do {                                 \
        int mpi_rc_ = (call);            \
        if (mpi_rc_ != MPI_SUCCESS)      \
            return mpi_fail(mpi_rc_, what); \
    } while (0)

/* Room for `bytes` in *buf (kept between calls: steps repeat sizes). */
static anvil_status reserve(void **buf, size_t *cap, size_t bytes)
{
    if (*cap >= bytes)
        return ANVIL_OK;
    void *p = realloc(*buf, bytes);
    CHECK(p != NULL, ANVIL_ERR_OOM, "out of memory for %zu bytes of communication buffer", bytes);
    *buf = p;
    *cap = bytes;
    return ANVIL_OK;
}

/* [lo, hi) of rank r's slice of n elements over size ranks. */
static int64_t slice_lo(int64_t n, int32_t r, int32_t size) { return n * r / size; }

/* dst (f32 [cnt]) = the size ranks' slices in src (rank j's at j * cnt
 * elements of dtype), added in rank order. */
static void sum_slices(anvil_dtype dt, const unsigned char *src, int32_t size, int64_t cnt, float *dst)
{
    const size_t es = anvil_dtype_size(dt);
    for (int32_t j = 0; j < size; j++) {
        const unsigned char *s = src + (size_t)j * (size_t)cnt * es;
        for (int64_t i = 0; i < cnt; i++) {
            float v;
            if (dt == ANVIL_DTYPE_F32)
                memcpy(&v, s + (size_t)i * 4, 4);
            else {
                uint16_t h;
                memcpy(&h, s + (size_t)i * 2, 2);
                v = dt == ANVIL_DTYPE_BF16 ? anvil_bf16_to_f32(h) : anvil_f16_to_f32(h);
            }
            dst[i] = j == 0 ? v : dst[i] + v;
        }
    }
}

/* One piece of the all-reduce: n elements at buf (n <= PIECE_ELEMS). */
static anvil_status reduce_piece(anvil_comm *c, unsigned char *buf, int64_t n, anvil_dtype dt)
{
    mpi_impl *m = c->impl;
    const int32_t size = c->size, me = c->rank;
    const size_t es = anvil_dtype_size(dt);
    const int64_t my_lo = slice_lo(n, me, size), my_cnt = slice_lo(n, me + 1, size) - my_lo;
    int *scount = m->counts, *sdispl = m->counts + size, *rcount = m->counts + 2 * size,
        *rdispl = m->counts + 3 * size;
    for (int32_t j = 0; j < size; j++) {
        const int64_t lo = slice_lo(n, j, size), hi = slice_lo(n, j + 1, size);
        scount[j] = (int)((hi - lo) * (int64_t)es);
        sdispl[j] = (int)(lo * (int64_t)es);
        rcount[j] = (int)(my_cnt * (int64_t)es);
        rdispl[j] = (int)((int64_t)j * my_cnt * (int64_t)es);
    }
    TRY(reserve((void **)&m->recv, &m->recv_cap, (size_t)my_cnt * es * (size_t)size + 1));
    TRY(reserve((void **)&m->acc, &m->acc_cap, ((size_t)my_cnt + 1) * sizeof(float)));
    MPI_Request req;
    MPI_WAIT(c, MPI_Ialltoallv(buf, scount, sdispl, MPI_BYTE, m->recv, rcount, rdispl, MPI_BYTE, m->comm, &req), &req,
             NULL, "reduce-scatter (MPI_Ialltoallv)");
    sum_slices(dt, m->recv, size, my_cnt, m->acc);
    if (dt == ANVIL_DTYPE_F32)
        memcpy(buf + (size_t)my_lo * es, m->acc, (size_t)my_cnt * es);
    else
        anvil_convert_from_f32(dt, m->acc, buf + (size_t)my_lo * es, my_cnt);
    /* every rank's summed slice back to every rank, in place */
    MPI_WAIT(c, MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, scount, sdispl, MPI_BYTE, m->comm, &req),
             &req, NULL, "all-gather of the sums (MPI_Iallgatherv)");
    return ANVIL_OK;
}

static anvil_status mpi_all_reduce(anvil_comm *c, void *buf, int64_t n, anvil_dtype dt)
{
    const size_t es = anvil_dtype_size(dt);
    for (int64_t at = 0; at < n; at += PIECE_ELEMS) {
        const int64_t len = n - at < PIECE_ELEMS ? n - at : PIECE_ELEMS;
        TRY(reduce_piece(c, (unsigned char *)buf + (size_t)at * es, len, dt));
    }
    return ANVIL_OK;
}

static anvil_status mpi_all_gather(anvil_comm *c, const void *send, void *recv, size_t bytes)
{
    mpi_impl *m = c->impl;
    CHECK(bytes <= (size_t)INT_MAX / (size_t)c->size, ANVIL_ERR_UNSUPPORTED,
          "all_gather of %zu bytes a rank over %d ranks: more than MPI's int counts reach", bytes, c->size);
    MPI_Request req;
    MPI_WAIT(c, MPI_Iallgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, m->comm, &req), &req, NULL,
             "MPI_Iallgather");
    return ANVIL_OK;
}

static anvil_status mpi_broadcast(anvil_comm *c, void *buf, size_t bytes, int32_t root)
{
    mpi_impl *m = c->impl;
    for (size_t at = 0; at < bytes; at += XFER_BYTES) {
        const size_t len = bytes - at < XFER_BYTES ? bytes - at : XFER_BYTES;
        MPI_Request req;
        char what[64];
        snprintf(what, sizeof what, "broadcast from rank %d (MPI_Ibcast)", root);
        MPI_WAIT(c, MPI_Ibcast((unsigned char *)buf + at, (int)len, MPI_BYTE, root, m->comm, &req), &req, NULL, what);
    }
    return ANVIL_OK;
}

static anvil_status mpi_send(anvil_comm *c, const void *buf, size_t bytes, int32_t peer, int32_t tag)
{
    mpi_impl *m = c->impl;
    size_t at = 0;
    do { /* a zero-byte message is still one message */
        const size_t len = bytes - at < XFER_BYTES ? bytes - at : XFER_BYTES;
        MPI_Request req;
        char what[64];
        snprintf(what, sizeof what, "send to rank %d (MPI_Isend)", peer);
        MPI_WAIT(c, MPI_Isend((const unsigned char *)buf + at, (int)len, MPI_BYTE, peer, tag, m->comm, &req), &req,
                 NULL, what);
        at += len;
    } while (at < bytes);
    return ANVIL_OK;
}

static anvil_status mpi_recv(anvil_comm *c, void *buf, size_t bytes, int32_t peer, int32_t tag)
{
    mpi_impl *m = c->impl;
    size_t at = 0;
    do {
        const size_t len = bytes - at < XFER_BYTES ? bytes - at : XFER_BYTES;
        MPI_Status status;
        MPI_Request req;
        char what[64];
        snprintf(what, sizeof what, "receive from rank %d (MPI_Irecv)", peer);
        MPI_WAIT(c, MPI_Irecv((unsigned char *)buf + at, (int)len, MPI_BYTE, peer, tag, m->comm, &req), &req, &status,
                 what);
        int got = 0;
        MPI_TRY(MPI_Get_count(&status, MPI_BYTE, &got), "MPI_Get_count");
        CHECK((size_t)got == len, ANVIL_ERR_COMM, "recv: %d bytes from rank %d where %zu were expected", got, peer,
              len);
        at += len;
    } while (at < bytes);
    return ANVIL_OK;
}

static anvil_status mpi_barrier(anvil_comm *c)
{
    mpi_impl *m = c->impl;
    MPI_Request req;
    MPI_WAIT(c, MPI_Ibarrier(m->comm, &req), &req, NULL, "MPI_Ibarrier");
    return ANVIL_OK;
}

static anvil_status wrap_comm(MPI_Comm mc, int owns_init, anvil_comm **out);

/* MPI_Comm_split has no non-blocking form (MPI 3): the ranks' colors and
 * keys are gathered first under the deadline (a rank that does not come
 * fails here), and only then, with every rank known to be making the same
 * call, does MPI_Comm_split run. The gathered pairs also check that the
 * ranks agree on nothing stranger than colors and keys. */
static anvil_status mpi_split(anvil_comm *c, int32_t color, int32_t key, anvil_comm **out)
{
    mpi_impl *m = c->impl;
    int32_t mine[2] = {color, key};
    int32_t *all = malloc((size_t)c->size * sizeof mine);
    CHECK(all != NULL, ANVIL_ERR_OOM, "out of memory");
    MPI_Request req;
    int rc = MPI_Iallgather(mine, 2, MPI_INT32_T, all, 2, MPI_INT32_T, m->comm, &req);
    anvil_status st = rc == MPI_SUCCESS ? wait_done(c, &req, NULL, "the ranks' colors (MPI_Iallgather)")
                                        : mpi_fail(rc, "the ranks' colors (MPI_Iallgather)");
    for (int32_t r = 0; st == ANVIL_OK && r < c->size; r++)
        if (all[2 * r] < 0)
            st = ANVIL_FAIL(ANVIL_ERR_COMM, "rank %d split with color %d", r, all[2 * r]);
    free(all);
    TRY(st);
    MPI_Comm part = MPI_COMM_NULL;
    rc = MPI_Comm_split(m->comm, color, key, &part);
    if (rc != MPI_SUCCESS)
        return mpi_fail(rc, "MPI_Comm_split");
    st = wrap_comm(part, 0, out);
    if (st != ANVIL_OK && part != MPI_COMM_NULL)
        MPI_Comm_free(&part);
    return st;
}

static void mpi_abort(anvil_comm *c, int code)
{
    (void)c;
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
}

static void mpi_destroy(anvil_comm *c)
{
    mpi_impl *m = c->impl;
    if (m == NULL)
        return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    /* a broken communicator may have a request pending with a rank that is
     * gone: freeing it or finalizing would wait for that rank (the process
     * exits without finalizing; mpirun then ends the job, as it should) */
    const int broken = atomic_load(&c->failed);
    if (!finalized && !broken && m->comm != MPI_COMM_NULL)
        MPI_Comm_free(&m->comm);
    if (!finalized && !broken && m->owns_init)
        MPI_Finalize();
    free(m->recv);
    free(m->acc);
    free(m->counts);
    free(m);
}

static const anvil_comm_ops mpi_ops = {
    .name = "mpi",
    .memory = ANVIL_COMM_HOST,
    .all_reduce_sum = mpi_all_reduce,
    .all_gather = mpi_all_gather,
    .broadcast = mpi_broadcast,
    .send = mpi_send,
    .recv = mpi_recv,
    .barrier = mpi_barrier,
    .split = mpi_split,
    .abort = mpi_abort,
    .destroy = mpi_destroy,
};

int anvil_comm_mpi_built(void) { return 1; }

/* A communicator around mc (taken: freed on failure by the caller),
 * errors returned, not fatal. */
static anvil_status wrap_comm(MPI_Comm mc, int owns_init, anvil_comm **out)
{
    *out = NULL;
    int rank = 0, size = 1;
    int rc = MPI_Comm_set_errhandler(mc, MPI_ERRORS_RETURN);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_rank(mc, &rank);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_size(mc, &size);
    if (rc != MPI_SUCCESS)
        return mpi_fail(rc, "setting up the MPI communicator");
    mpi_impl *m = calloc(1, sizeof *m);
    CHECK(m != NULL, ANVIL_ERR_OOM, "out of memory");
    m->comm = mc;
    m->owns_init = owns_init;
    m->counts = malloc((size_t)size * 4 * sizeof *m->counts);
    anvil_comm *c = m->counts ? anvil_comm_wrap(&mpi_ops, rank, size, m) : NULL;
    if (c == NULL) {
        free(m->counts);
        free(m);
        return ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    }
    *out = c;
    return ANVIL_OK;
}

anvil_status anvil_comm_create_mpi(anvil_comm **out)
{
    CHECK(out != NULL, ANVIL_ERR_INVALID_ARG, "anvil_comm_create_mpi: NULL out");
    *out = NULL;
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    CHECK(!finalized, ANVIL_ERR_COMM, "MPI was already finalized in this process");
    int rc;
    if (!inited) {
        /* serialized: the runtime's steps may come from any one thread at a time */
        int provided = 0;
        rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
        if (rc != MPI_SUCCESS)
            return mpi_fail(rc, "MPI_Init_thread");
    }
    MPI_Comm mc = MPI_COMM_NULL;
    rc = MPI_Comm_dup(MPI_COMM_WORLD, &mc);
    anvil_status st = rc == MPI_SUCCESS ? wrap_comm(mc, !inited, out) : mpi_fail(rc, "MPI_Comm_dup");
    if (st != ANVIL_OK) {
        if (mc != MPI_COMM_NULL)
            MPI_Comm_free(&mc);
        if (!inited)
            MPI_Finalize();
    }
    return st;
}
