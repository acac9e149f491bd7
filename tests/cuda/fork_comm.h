/*
 * A boot communicator over pipes between forked ranks, for the CUDA
 * communicator tests on a machine without mpirun (`--fork N`): rank 0
 * writes to down[r], rank r > 0 writes to up[r]. Broadcast from rank 0,
 * all_gather (through rank 0) and barrier; nothing else. Header-only: each
 * test is one source file (tests/CMakeLists.txt).
 *
 *     anvil_comm *boot = fork_ranks(2);   // before CUDA starts
 *     ... every process runs the test as rank anvil_comm_rank(boot) ...
 *     if (anvil_comm_rank(boot) == 0 && !fork_wait(2)) rc = 1;
 */
#ifndef ANVIL_TEST_FORK_COMM_H
#define ANVIL_TEST_FORK_COMM_H

#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "comm/comm_internal.h"
#include "core/error.h"

#define MAX_FORK 8
typedef struct pipe_comm {
    int down[MAX_FORK][2], up[MAX_FORK][2];
} pipe_comm;

static inline anvil_status full_io(int fd, void *buf, size_t n, int writing)
{
    for (size_t done = 0; done < n;) {
        const ssize_t k = writing ? write(fd, (char *)buf + done, n - done) : read(fd, (char *)buf + done, n - done);
        CHECK(k > 0, ANVIL_ERR_COMM, "pipe %s failed (a rank ended)", writing ? "write" : "read");
        done += (size_t)k;
    }
    return ANVIL_OK;
}

static inline anvil_status pipe_broadcast(anvil_comm *c, void *buf, size_t bytes, int32_t root)
{
    pipe_comm *p = c->impl;
    CHECK(root == 0, ANVIL_ERR_UNSUPPORTED, "the pipe communicator broadcasts from rank 0 only");
    if (c->rank != 0)
        return full_io(p->down[c->rank][0], buf, bytes, 0);
    for (int32_t r = 1; r < c->size; r++)
        TRY(full_io(p->down[r][1], buf, bytes, 1));
    return ANVIL_OK;
}

/* Every rank's bytes to rank 0 (in rank order), then all of them back. */
static inline anvil_status pipe_gather(anvil_comm *c, const void *send, void *recv, size_t bytes)
{
    pipe_comm *p = c->impl;
    if (c->rank != 0) {
        TRY(full_io(p->up[c->rank][1], (void *)send, bytes, 1));
        return full_io(p->down[c->rank][0], recv, bytes * (size_t)c->size, 0);
    }
    memmove(recv, send, bytes);
    for (int32_t r = 1; r < c->size; r++)
        TRY(full_io(p->up[r][0], (char *)recv + (size_t)r * bytes, bytes, 0));
    for (int32_t r = 1; r < c->size; r++)
        TRY(full_io(p->down[r][1], recv, bytes * (size_t)c->size, 1));
    return ANVIL_OK;
}

static inline anvil_status pipe_barrier(anvil_comm *c)
{
    unsigned char b = 1, all[MAX_FORK];
    return pipe_gather(c, &b, all, 1);
}

static inline anvil_status pipe_none(void)
{
    return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "the pipe communicator only broadcasts, gathers and meets");
}
static inline anvil_status pipe_reduce(anvil_comm *c, void *b, int64_t n, anvil_dtype d)
{
    (void)c, (void)b, (void)n, (void)d;
    return pipe_none();
}
static inline anvil_status pipe_send(anvil_comm *c, const void *b, size_t n, int32_t peer, int32_t tag)
{
    (void)c, (void)b, (void)n, (void)peer, (void)tag;
    return pipe_none();
}
static inline anvil_status pipe_recv(anvil_comm *c, void *b, size_t n, int32_t peer, int32_t tag)
{
    (void)c, (void)b, (void)n, (void)peer, (void)tag;
    return pipe_none();
}
static inline void pipe_destroy(anvil_comm *c) { (void)c; }

static const anvil_comm_ops pipe_ops = {
    .name = "pipe", .memory = ANVIL_COMM_HOST, .all_reduce_sum = pipe_reduce, .all_gather = pipe_gather,
    .broadcast = pipe_broadcast, .send = pipe_send, .recv = pipe_recv, .barrier = pipe_barrier,
    .destroy = pipe_destroy,
};

static pipe_comm pipes;
static int32_t fork_rank;
static pid_t children[MAX_FORK];

/* Forks n - 1 ranks (before CUDA starts: a forked CUDA context is not
 * usable); every process returns with its boot communicator. */
static inline anvil_comm *fork_ranks(int32_t n)
{
    for (int32_t r = 1; r < n; r++)
        if (pipe(pipes.down[r]) != 0 || pipe(pipes.up[r]) != 0)
            return NULL;
    fork_rank = 0;
    for (int32_t r = 1; r < n; r++) {
        const pid_t pid = fork();
        if (pid < 0)
            return NULL;
        if (pid == 0) {
            fork_rank = r;
            break;
        }
        children[r] = pid;
    }
    return anvil_comm_wrap(&pipe_ops, fork_rank, n, &pipes);
}

/* Rank 0: 1 when every forked rank exited with 0. */
static inline int fork_wait(int32_t n)
{
    int ok = 1;
    for (int32_t r = 1; r < n; r++) {
        int status = 0;
        if (waitpid(children[r], &status, 0) != children[r] || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "FAIL: forked rank %d ended with status %d\n", r, status);
            ok = 0;
        }
    }
    return ok;
}

#endif
