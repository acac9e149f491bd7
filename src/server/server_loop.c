/*
 * The server's event loop: one thread runs libmicrohttpd in external epoll
 * mode for every connection (docs/server.md, "Threads").
 *
 * A connection with nothing to send (a stream between tokens, a request
 * not finished, a repository load on its thread) is suspended. Whoever has
 * news for it (the executor's callback, the load's thread) calls srv_wake,
 * which puts it on the ready list and, when the loop sleeps, writes the
 * loop's eventfd (once: the first waker clears the loop's asleep flag), so
 * the streams of an executor step cost one system call, not one each. The
 * loop resumes every connection of the list, and MHD writes them in the
 * same pass.
 *
 * MHD does not watch a suspended connection's socket, so every 250 ms the
 * loop polls the sockets of the suspended ones at once for a hang-up
 * (one poll() for all of them): a client that goes away while its request
 * waits or prefills is cancelled within that time; one that goes away mid
 * stream is seen by the next write.
 *
 * The loop's thread does nothing but the server's own work, so its CPU
 * clock is the HTTP side of the cost counter whole (less the executor's
 * enqueue, srv_cost_exempt); the executor's callbacks add their brackets
 * (srv_cost_add_times: one event in 8 is timed).
 */
#include <errno.h>
#include <limits.h>
#include <microhttpd.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/error.h"
#include "server/server_internal.h"

#define SWEEP_S 0.25

uint64_t srv_cpu_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void srv_cost_add_times(struct anvil_server *s, uint64_t t0, unsigned times)
{
    uint64_t t = srv_cpu_ns();
    if (s && t > t0)
        atomic_fetch_add(&s->cost_ns, (t - t0) * times);
}

void srv_cost_exempt(struct anvil_server *s, uint64_t t0)
{
    uint64_t t = srv_cpu_ns();
    if (s && t > t0)
        atomic_fetch_add(&s->exempt_ns, t - t0);
}

uint64_t srv_cost_total(struct anvil_server *s)
{
    uint64_t loop = 0;
    struct timespec ts;
    if (s->loop_running && clock_gettime(s->loop_clock, &ts) == 0)
        loop = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    uint64_t ex = atomic_load(&s->exempt_ns);
    return atomic_load(&s->cost_ns) + (loop > ex ? loop - ex : 0);
}

/* ------------------------------------------------------------ waiters */

static void signal_loop(struct anvil_server *s)
{
    uint64_t one = 1;
    while (write(s->wake_fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

void srv_suspend(struct anvil_server *s, srv_waiter *w)
{
    pthread_mutex_lock(&s->wake_mu);
    w->suspended = 1;
    pthread_mutex_unlock(&s->wake_mu);
    MHD_suspend_connection(w->conn);
    s->n_suspended++;
}

void srv_wake(struct anvil_server *s, srv_waiter *w)
{
    int queued = 0;
    pthread_mutex_lock(&s->wake_mu);
    if (w->suspended && !w->queued) {
        w->queued = 1;
        w->next = NULL;
        if (s->ready_head == NULL)
            s->ready_head = w;
        else
            s->ready_tail->next = w;
        s->ready_tail = w;
        queued = 1;
    }
    pthread_mutex_unlock(&s->wake_mu);
    /* only a sleeping loop needs the eventfd, and only once: the streams
     * of a step cost one write, not one each (the loop, awake, drains the
     * list before it sleeps again) */
    if (queued && atomic_exchange(&s->loop_asleep, 0))
        signal_loop(s);
}

/* Resumes the connections of the ready list. A waiter on the list is still
 * suspended, so its connection (and its owner) cannot be gone. */
static void resume_ready(struct anvil_server *s)
{
    pthread_mutex_lock(&s->wake_mu);
    srv_waiter *w = s->ready_head;
    s->ready_head = s->ready_tail = NULL;
    for (srv_waiter *x = w; x; x = x->next) {
        x->queued = 0;
        x->suspended = 0;
    }
    pthread_mutex_unlock(&s->wake_mu);
    while (w) {
        srv_waiter *next = w->next; /* w may go once resumed and run */
        MHD_resume_connection(w->conn);
        s->n_suspended--;
        w = next;
    }
}

/* The hang-up sweep: cancels the requests of suspended connections whose
 * client closed its end. Only the loop resumes or closes connections, so
 * the sockets polled here are the connections' own. */
static void sweep(struct anvil_server *s, struct pollfd **fds, srv_gen ***gens, int *cap)
{
    pthread_mutex_lock(&s->mu);
    int n = 0;
    for (srv_gen *g = s->gens; g; g = g->next) {
        pthread_mutex_lock(&s->wake_mu);
        int susp = g->w.suspended && g->w.conn != NULL;
        pthread_mutex_unlock(&s->wake_mu);
        if (!susp)
            continue;
        if (n == *cap) {
            int c = *cap ? *cap * 2 : 64;
            struct pollfd *f = realloc(*fds, (size_t)c * sizeof *f);
            if (f)
                *fds = f;
            srv_gen **x = f ? realloc(*gens, (size_t)c * sizeof *x) : NULL;
            if (x)
                *gens = x;
            if (f == NULL || x == NULL)
                break; /* out of memory: the next sweep tries again */
            *cap = c;
        }
        (*fds)[n] = (struct pollfd){.fd = g->w.fd, .events = POLLRDHUP};
        (*gens)[n++] = g;
    }
    /* tracked requests stay on the list until the loop itself untracks them */
    pthread_mutex_unlock(&s->mu);
    if (n == 0 || poll(*fds, (nfds_t)n, 0) <= 0)
        return;
    for (int i = 0; i < n; i++)
        if ((*fds)[i].revents & (POLLRDHUP | POLLHUP | POLLERR))
            srv_gen_cancel((*gens)[i]);
}

static void *loop_main(void *arg)
{
    struct anvil_server *s = arg;
    pthread_setname_np(pthread_self(), "anvil-http");
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    struct pollfd p[2] = {{.fd = di ? di->epoll_fd : -1, .events = POLLIN}, {.fd = s->wake_fd, .events = POLLIN}};
    struct pollfd *fds = NULL;
    srv_gen **gens = NULL;
    int cap = 0, quiesced = 0;
    double next_sweep = srv_now() + SWEEP_S;
    for (;;) {
        int stop = atomic_load(&s->loop_stop);
        int timeout = -1;
        MHD_UNSIGNED_LONG_LONG mt;
        if (MHD_get_timeout(s->daemon, &mt) == MHD_YES)
            timeout = mt > INT_MAX ? INT_MAX : (int)mt;
        if (s->n_suspended > 0) {
            double left = next_sweep - srv_now();
            int ms = left <= 0 ? 0 : (int)(left * 1000) + 1;
            if (timeout < 0 || ms < timeout)
                timeout = ms;
        }
        /* asleep from here: a waker that finds the flag set writes the
         * eventfd (once: it clears the flag); the list is checked after
         * setting it, so a wake-up between the two is not lost */
        atomic_store(&s->loop_asleep, 1);
        pthread_mutex_lock(&s->wake_mu);
        if (s->ready_head != NULL)
            timeout = 0;
        pthread_mutex_unlock(&s->wake_mu);
        if (!stop && poll(p, 2, timeout) > 0 && (p[1].revents & POLLIN)) {
            uint64_t v;
            while (read(s->wake_fd, &v, sizeof v) < 0 && errno == EINTR)
                ;
        }
        atomic_store(&s->loop_asleep, 0);
        resume_ready(s);
        if (!quiesced && atomic_load(&s->quiesce_req)) {
            MHD_socket ls = MHD_quiesce_daemon(s->daemon);
            if (ls != MHD_INVALID_SOCKET)
                close(ls);
            quiesced = 1;
        }
        if (s->n_suspended > 0 && srv_now() >= next_sweep) {
            sweep(s, &fds, &gens, &cap);
            next_sweep = srv_now() + SWEEP_S;
        } else if (s->n_suspended == 0) {
            next_sweep = srv_now() + SWEEP_S;
        }
        MHD_run(s->daemon);
        if (stop && s->n_suspended == 0)
            break;
        if (stop) {
            /* MHD must not stop with a suspended connection: those left
             * (a request whose end never came) are woken to close */
            atomic_store(&s->closing, 1);
            pthread_mutex_lock(&s->mu);
            for (srv_gen *g = s->gens; g; g = g->next)
                srv_wake(s, &g->w);
            pthread_mutex_unlock(&s->mu);
        }
    }
    free(fds);
    free(gens);
    return NULL;
}

anvil_status srv_loop_start(struct anvil_server *s)
{
    s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    CHECK(s->wake_fd >= 0, ANVIL_ERR_IO, "eventfd: %s", strerror(errno));
    int e = pthread_create(&s->loop, NULL, loop_main, s);
    if (e != 0) {
        close(s->wake_fd);
        s->wake_fd = -1;
        CHECK(0, ANVIL_ERR_IO, "cannot start the server's thread: %s", strerror(e));
    }
    if (pthread_getcpuclockid(s->loop, &s->loop_clock) != 0)
        s->loop_clock = CLOCK_PROCESS_CPUTIME_ID; /* never seen on Linux; then the counter overstates */
    s->loop_running = 1;
    return ANVIL_OK;
}

void srv_loop_quiesce(struct anvil_server *s)
{
    atomic_store(&s->quiesce_req, 1);
    signal_loop(s);
}

void srv_loop_stop(struct anvil_server *s)
{
    if (!s->loop_running)
        return;
    /* the loop's CPU time (less the exempt part) stays in the counter
     * after its clock is gone */
    uint64_t loop_part = srv_cost_total(s) - atomic_load(&s->cost_ns);
    atomic_store(&s->loop_stop, 1);
    signal_loop(s);
    pthread_join(s->loop, NULL);
    s->loop_running = 0;
    atomic_fetch_add(&s->cost_ns, loop_part);
    close(s->wake_fd);
    s->wake_fd = -1;
}
