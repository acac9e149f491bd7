/*
 * The communicator's public calls (anvil/comm.h): arguments checked once
 * here, then the implementation's function; a failure breaks the
 * communicator, so that a rank whose collective failed never enters the
 * next one out of step with the others.
 */
#include "comm/comm_internal.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

void anvil_comm_free(anvil_comm *comm)
{
    if (comm == NULL)
        return;
    /* split from a communicator that failed: its ranks may be gone, so the
     * implementation must not wait on them while freeing (comm_mpi.c) */
    if (comm->parent != NULL && atomic_load(&comm->parent->failed) && !atomic_load(&comm->failed)) {
        snprintf(comm->broken_msg, sizeof comm->broken_msg, "%s", comm->parent->broken_msg);
        comm->broken = comm->parent->broken;
        atomic_store(&comm->failed, 1);
    }
    if (comm->ops->destroy)
        comm->ops->destroy(comm);
    free(comm);
}

int32_t anvil_comm_rank(const anvil_comm *comm) { return comm ? comm->rank : 0; }
int32_t anvil_comm_size(const anvil_comm *comm) { return comm ? comm->size : 1; }
const char *anvil_comm_name(const anvil_comm *comm) { return comm ? comm->ops->name : "self"; }

anvil_comm_memory anvil_comm_memory_kind(const anvil_comm *comm)
{
    return comm ? comm->ops->memory : ANVIL_COMM_HOST;
}

anvil_status anvil_comm_set_timeout(anvil_comm *comm, double seconds)
{
    CHECK(comm != NULL, ANVIL_ERR_INVALID_ARG, "anvil_comm_set_timeout: no communicator");
    CHECK(seconds >= 0 && seconds <= 1e7, ANVIL_ERR_INVALID_ARG,
          "communicator timeout of %g s: 0 (none) to 10,000,000", seconds);
    comm->timeout_s = seconds;
    return ANVIL_OK;
}

double anvil_comm_timeout(const anvil_comm *comm) { return comm ? comm->timeout_s : 0.0; }

const char *anvil_comm_error(const anvil_comm *comm)
{
    return comm && atomic_load(&comm->failed) ? comm->broken_msg : NULL;
}

void anvil_comm_abort(anvil_comm *comm, int code)
{
    /* a communicator that cannot end processes itself (NCCL) asks the one
     * it was made from (MPI) */
    for (anvil_comm *p = comm; p != NULL; p = p->parent)
        if (p->size > 1 && p->ops->abort) {
            p->ops->abort(p, code);
            return;
        }
}

/* Refuses a call on a broken communicator (or one split from a broken
 * one), with the first failure's message. */
static anvil_status check_usable(const anvil_comm *c, const char *what)
{
    CHECK(c != NULL, ANVIL_ERR_INVALID_ARG, "%s: no communicator", what);
    for (const anvil_comm *p = c; p != NULL; p = p->parent)
        CHECK(p->broken == ANVIL_OK, ANVIL_ERR_COMM, "%s: the communicator failed earlier (%s)", what,
              p->broken_msg);
    return ANVIL_OK;
}

/* Marks c broken with the current message (the first failure only). */
static void mark_broken(anvil_comm *c, anvil_status st)
{
    if (c->broken != ANVIL_OK)
        return;
    c->broken = st;
    snprintf(c->broken_msg, sizeof c->broken_msg, "%s", anvil_last_error());
    atomic_store(&c->failed, 1);
}

/* A failed call breaks the communicator (see comm_internal.h), and the
 * ones it was split from: the program watches the job's. */
static anvil_status note(anvil_comm *c, anvil_status st, const char *what)
{
    if (st == ANVIL_OK)
        return st;
    st = anvil_error_wrap("%s (rank %d of %d, %s)", what, c->rank, c->size, c->ops->name);
    if (st == ANVIL_ERR_COMM)
        for (anvil_comm *p = c; p != NULL; p = p->parent)
            mark_broken(p, st);
    return st;
}

anvil_status anvil_comm_all_reduce_sum(anvil_comm *comm, void *buf, int64_t n, anvil_dtype dtype)
{
    TRY(check_usable(comm, "all_reduce"));
    CHECK(dtype == ANVIL_DTYPE_F32 || dtype == ANVIL_DTYPE_BF16 || dtype == ANVIL_DTYPE_F16, ANVIL_ERR_UNSUPPORTED,
          "all_reduce: cannot sum %s (f32, bf16 or f16)", anvil_dtype_name(dtype));
    CHECK(n >= 0 && (n == 0 || buf != NULL), ANVIL_ERR_INVALID_ARG, "all_reduce: %lld elements at %p",
          (long long)n, buf);
    if (n == 0 || comm->size == 1)
        return ANVIL_OK;
    return note(comm, comm->ops->all_reduce_sum(comm, buf, n, dtype), "all_reduce");
}

anvil_status anvil_comm_all_gather(anvil_comm *comm, const void *send, void *recv, size_t bytes)
{
    TRY(check_usable(comm, "all_gather"));
    CHECK(bytes == 0 || (send != NULL && recv != NULL), ANVIL_ERR_INVALID_ARG, "all_gather: NULL buffer");
    if (bytes == 0)
        return ANVIL_OK;
    return note(comm, comm->ops->all_gather(comm, send, recv, bytes), "all_gather");
}

anvil_status anvil_comm_all_gather_cols(anvil_comm *comm, const void *send, void *recv, void *stage, int64_t rows,
                                        size_t row_bytes)
{
    TRY(check_usable(comm, "all_gather"));
    CHECK(rows >= 0 && (rows == 0 || row_bytes == 0 || (send != NULL && recv != NULL && stage != NULL)),
          ANVIL_ERR_INVALID_ARG, "all_gather: NULL buffer");
    if (rows == 0 || row_bytes == 0)
        return ANVIL_OK;
    if (comm->ops->all_gather_cols != NULL)
        return note(comm, comm->ops->all_gather_cols(comm, send, recv, stage, rows, row_bytes), "all_gather");
    CHECK(comm->ops->memory == ANVIL_COMM_HOST, ANVIL_ERR_INTERNAL, "all_gather: the %s communicator has no "
          "gather by columns", comm->ops->name);
    const size_t part = (size_t)rows * row_bytes, n = (size_t)comm->size;
    TRY(anvil_comm_all_gather(comm, send, stage, part));
    /* [rank][row][row_bytes] -> [row][rank x row_bytes] */
    for (int64_t r = 0; r < rows; r++)
        for (size_t k = 0; k < n; k++)
            memcpy((unsigned char *)recv + ((size_t)r * n + k) * row_bytes,
                   (const unsigned char *)stage + k * part + (size_t)r * row_bytes, row_bytes);
    return ANVIL_OK;
}

anvil_status anvil_comm_broadcast(anvil_comm *comm, void *buf, size_t bytes, int32_t root)
{
    TRY(check_usable(comm, "broadcast"));
    CHECK(root >= 0 && root < comm->size, ANVIL_ERR_INVALID_ARG, "broadcast: root %d of %d ranks", root,
          comm->size);
    CHECK(bytes == 0 || buf != NULL, ANVIL_ERR_INVALID_ARG, "broadcast: NULL buffer");
    if (bytes == 0 || comm->size == 1)
        return ANVIL_OK;
    return note(comm, comm->ops->broadcast(comm, buf, bytes, root), "broadcast");
}

/* A point-to-point call's arguments. */
static anvil_status check_p2p(const anvil_comm *c, const char *what, const void *buf, size_t bytes, int32_t peer,
                              int32_t tag)
{
    CHECK(peer >= 0 && peer < c->size && peer != c->rank, ANVIL_ERR_INVALID_ARG,
          "%s: peer %d is not another of the %d ranks (this is rank %d)", what, peer, c->size, c->rank);
    CHECK(tag >= 0 && tag <= 32767, ANVIL_ERR_INVALID_ARG, "%s: tag %d outside 0..32767", what, tag);
    CHECK(bytes == 0 || buf != NULL, ANVIL_ERR_INVALID_ARG, "%s: NULL buffer", what);
    return ANVIL_OK;
}

anvil_status anvil_comm_send(anvil_comm *comm, const void *buf, size_t bytes, int32_t peer, int32_t tag)
{
    TRY(check_usable(comm, "send"));
    TRY(check_p2p(comm, "send", buf, bytes, peer, tag));
    return note(comm, comm->ops->send(comm, buf, bytes, peer, tag), "send");
}

anvil_status anvil_comm_recv(anvil_comm *comm, void *buf, size_t bytes, int32_t peer, int32_t tag)
{
    TRY(check_usable(comm, "recv"));
    TRY(check_p2p(comm, "recv", buf, bytes, peer, tag));
    return note(comm, comm->ops->recv(comm, buf, bytes, peer, tag), "recv");
}

anvil_status anvil_comm_barrier(anvil_comm *comm)
{
    TRY(check_usable(comm, "barrier"));
    if (comm->size == 1)
        return ANVIL_OK;
    return note(comm, comm->ops->barrier(comm), "barrier");
}

anvil_status anvil_comm_split(anvil_comm *comm, int32_t color, int32_t key, anvil_comm **out)
{
    CHECK(out != NULL, ANVIL_ERR_INVALID_ARG, "split: NULL out");
    *out = NULL;
    TRY(check_usable(comm, "split"));
    CHECK(color >= 0, ANVIL_ERR_INVALID_ARG, "split: color %d (0 or more)", color);
    anvil_comm *c = NULL;
    if (comm->size == 1) {
        /* one rank: the part is this rank alone */
        TRY(anvil_comm_create_self(&c));
    } else {
        CHECK(comm->ops->split != NULL, ANVIL_ERR_UNSUPPORTED, "split: the %s communicator cannot split",
              comm->ops->name);
        TRY(note(comm, comm->ops->split(comm, color, key, &c), "split"));
    }
    c->timeout_s = comm->timeout_s;
    c->parent = comm;
    *out = c;
    return ANVIL_OK;
}

anvil_status anvil_comm_set_all_reduce(anvil_comm *comm, anvil_all_reduce_algo algo, size_t max_bytes)
{
    TRY(check_usable(comm, "set_all_reduce"));
    CHECK(algo >= ANVIL_ALL_REDUCE_AUTO && algo <= ANVIL_ALL_REDUCE_TWOSHOT, ANVIL_ERR_INVALID_ARG,
          "set_all_reduce: algorithm %d", (int)algo);
    if (comm->size == 1 || comm->ops->set_all_reduce == NULL)
        return ANVIL_OK; /* its sum is its own */
    return note(comm, comm->ops->set_all_reduce(comm, algo, max_bytes), "set_all_reduce");
}

anvil_all_reduce_algo anvil_comm_all_reduce_algo(const anvil_comm *comm, int64_t n, anvil_dtype dtype)
{
    if (comm == NULL || comm->size == 1 || comm->ops->all_reduce_algo == NULL || n <= 0)
        return ANVIL_ALL_REDUCE_NCCL;
    return comm->ops->all_reduce_algo(comm, (size_t)n * anvil_dtype_size(dtype));
}
