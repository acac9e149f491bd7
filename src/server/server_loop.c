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
 * The loop never sleeps longer than a second, and runs MHD again at once
 * after a pass that closed a connection: at its connection limit MHD takes
 * the listening socket out of its epoll set, and puts it back only at the
 * start of a later pass, while it frees closed connections at the end of a
 * pass; sleeping on the epoll fd then (nothing else in it) would stop
 * accepting for good. The wake-up each second also bounds any other path
 * of that kind (docs/server.md, "Connection handling").
 *
 * Connections that have not delivered a complete request head by their
 * deadline (opts.header_timeout_s after their opening or their previous
 * response) are cut with shutdown(): MHD sees the socket end and cleans
 * up as for a client that hung up. They wait on a list sorted by deadline
 * (every deadline is now + the same timeout, so appending keeps the
 * order), so the check costs nothing per connection. The hang-up sweep
 * also polls them: MHD (0.9.75, edge-triggered) takes a read shorter than
 * its buffer for "all read", so when a client's last bytes and its FIN
 * came together (a socket accepted late from a full backlog, a client
 * that sends half a head and hangs up) it never reads the FIN, and the
 * connection would hold its slot until the deadline. At the connection
 * limit the passes poll them too (every 10 ms at most), so that slots come
 * back at once.
 *
 * The loop's thread does nothing but the server's own work, so its CPU
 * clock is the HTTP side of the cost counter whole (less the executor's
 * enqueue, srv_cost_exempt); the executor's callbacks add their brackets
 * (srv_cost_add_times: one event in 8 is timed).
 */
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/error.h"
#include "server/server_internal.h"

#define SWEEP_S 0.25
#define MAX_SLEEP_MS 1000 /* the loop's longest sleep (see above) */
#define LIMIT_SWEEP_S 0.01 /* at the connection limit, the heads' hang-up check this often at most */

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

/* ------------------------------------------------------------ connection deadlines */

static void head_unlink(struct anvil_server *s, srv_conn *k)
{
    if (k->prev)
        k->prev->next = k->next;
    else
        s->head_first = k->next;
    if (k->next)
        k->next->prev = k->prev;
    else
        s->head_last = k->prev;
    k->next = k->prev = NULL;
    k->waiting_head = 0;
}

void srv_conn_await_head(struct anvil_server *s, srv_conn *k)
{
    if (k == NULL)
        return;
    if (k->waiting_head)
        head_unlink(s, k);
    /* without a deadline the list still serves the hang-up sweep */
    k->head_deadline = s->opts.header_timeout_s > 0 ? srv_now() + s->opts.header_timeout_s : HUGE_VAL;
    k->since_pass = s->n_passes;
    k->prev = s->head_last;
    if (s->head_last)
        s->head_last->next = k;
    else
        s->head_first = k;
    s->head_last = k;
    k->waiting_head = 1;
}

void srv_conn_head_done(struct anvil_server *s, srv_conn *k)
{
    if (k && k->waiting_head)
        head_unlink(s, k);
}

srv_conn *srv_conn_open(struct anvil_server *s, int fd)
{
    srv_conn *k = calloc(1, sizeof *k);
    if (k == NULL)
        return NULL; /* no deadline for it: MHD's inactivity timeout still ends it */
    k->fd = fd;
    srv_conn_await_head(s, k);
    return k;
}

void srv_conn_closed(struct anvil_server *s, srv_conn *k)
{
    s->n_closed++;
    if (k == NULL)
        return;
    srv_conn_head_done(s, k);
    free(k);
}

/* Cuts the connections whose request head is late. The socket stays MHD's
 * (it closes it when it cleans the connection up, after CLOSED), so the fd
 * is still this connection's here. */
static void cut_late_heads(struct anvil_server *s)
{
    double now = srv_now();
    srv_conn *k;
    while ((k = s->head_first) != NULL && k->head_deadline <= now) {
        head_unlink(s, k);
        if (k->fd >= 0)
            shutdown(k->fd, SHUT_RDWR);
    }
}

/* The hang-up check of connections waiting for a request head: those
 * whose client hung up (or half-closed: it cannot finish its head then)
 * are cut. Only after MHD has had a whole pass to read what came (a
 * client that sends its whole request and then half-closes is served). */
static void sweep_heads(struct anvil_server *s, struct pollfd **fds, srv_conn ***conns, int *cap)
{
    int n = 0;
    for (srv_conn *k = s->head_first; k; k = k->next) {
        if (k->fd < 0 || s->n_passes - k->since_pass < 2)
            continue;
        if (n == *cap) {
            int c = *cap ? *cap * 2 : 64;
            struct pollfd *f = realloc(*fds, (size_t)c * sizeof *f);
            if (f)
                *fds = f;
            srv_conn **x = f ? realloc(*conns, (size_t)c * sizeof *x) : NULL;
            if (x)
                *conns = x;
            if (f == NULL || x == NULL)
                break; /* out of memory: the next sweep tries again */
            *cap = c;
        }
        (*fds)[n] = (struct pollfd){.fd = k->fd, .events = POLLRDHUP};
        (*conns)[n++] = k;
    }
    if (n == 0 || poll(*fds, (nfds_t)n, 0) <= 0)
        return;
    for (int i = 0; i < n; i++) {
        if ((*fds)[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
            head_unlink(s, (*conns)[i]);
            shutdown((*conns)[i]->fd, SHUT_RDWR); /* a new event: MHD reads the end now */
        }
    }
}

/* How long the loop may sleep: MHD's own timeout, the next hang-up sweep,
 * the next header deadline, and never more than MAX_SLEEP_MS. */
static int loop_timeout(struct anvil_server *s, double next_sweep)
{
    int timeout = MAX_SLEEP_MS;
    MHD_UNSIGNED_LONG_LONG mt;
    if (MHD_get_timeout(s->daemon, &mt) == MHD_YES && mt < (MHD_UNSIGNED_LONG_LONG)timeout)
        timeout = (int)mt;
    double now = srv_now(), at[2] = {s->n_suspended > 0 || s->head_first ? next_sweep : -1,
                                     s->head_first ? s->head_first->head_deadline : -1};
    for (int i = 0; i < 2; i++) {
        if (at[i] < 0 || at[i] == HUGE_VAL)
            continue;
        double left = at[i] - now;
        int ms = left <= 0 ? 0 : (int)(left * 1000) + 1;
        if (ms < timeout)
            timeout = ms;
    }
    return timeout;
}

static void *loop_main(void *arg)
{
    struct anvil_server *s = arg;
    pthread_setname_np(pthread_self(), "anvil-http");
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    struct pollfd p[2] = {{.fd = di ? di->epoll_fd : -1, .events = POLLIN}, {.fd = s->wake_fd, .events = POLLIN}};
    struct pollfd *fds = NULL, *hfds = NULL;
    srv_gen **gens = NULL;
    srv_conn **hconns = NULL;
    int cap = 0, hcap = 0, quiesced = 0;
    double next_sweep = srv_now() + SWEEP_S;
    unsigned closed_seen = s->n_closed;
    double next_limit_sweep = 0;
    for (;;) {
        int stop = atomic_load(&s->loop_stop);
        int timeout = loop_timeout(s, next_sweep);
        /* a connection closed during the last pass: MHD puts its listening
         * socket back (if it took it out at the limit) only in a new pass */
        if (s->n_closed != closed_seen)
            timeout = 0;
        closed_seen = s->n_closed;
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
        if ((s->n_suspended > 0 || s->head_first) && srv_now() >= next_sweep) {
            if (s->n_suspended > 0)
                sweep(s, &fds, &gens, &cap);
            sweep_heads(s, &hfds, &hconns, &hcap);
            next_sweep = srv_now() + SWEEP_S;
        } else if (s->n_suspended == 0 && s->head_first == NULL) {
            next_sweep = srv_now() + SWEEP_S;
        }
        cut_late_heads(s);
        MHD_run(s->daemon);
        s->n_passes++;
        /* at the limit, the slots of clients that are gone are wanted now
         * (every 10 ms at most: a pass per token write must not poll
         * every idle socket) */
        if ((unsigned)atomic_load(&s->n_conns) >= s->opts.max_connections && srv_now() >= next_limit_sweep) {
            sweep_heads(s, &hfds, &hconns, &hcap);
            next_limit_sweep = srv_now() + LIMIT_SWEEP_S;
        }
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
            srv_http_wake_jobs(s); /* answered 503 if not done */
        }
    }
    free(fds);
    free(gens);
    free(hfds);
    free(hconns);
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
