/*
 * The scheduler: which sequences run in this step, with how many tokens,
 * and who gets KV blocks.
 *
 * Every step builds a plan in three passes, within max_num_tokens tokens
 * and max_batch_size sequences:
 *   A. decode: every running sequence with one token left to compute;
 *      a beam-search request's beams go together or not at all;
 *   B. prefill: running sequences with more, in chunks that fill what is
 *      left of the token budget (beams stop one token short, so that all
 *      beams of a request reach their logits in the same step);
 *   C. admission: waiting requests in FIFO order (preempted ones first),
 *      each after a prefix-cache lookup, under the capacity policy.
 *
 * Capacity. Guaranteed-no-evict admits a request only if the blocks it may
 * still need in the worst case (prompt + max_tokens for each sequence),
 * added to what running requests may still need, fit in the free and
 * evictable blocks; then no allocation of an admitted request can fail.
 * Max-utilization allocates on demand; when an allocation fails it
 * preempts the newest running request (frees its blocks and puts it back at
 * the front of the queue to be recomputed), and admits nothing in a step
 * that preempted.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/log.h"
#include "core/error.h"
#include "executor/exec_internal.h"

typedef struct sched {
    int32_t budget;      /* tokens left in this step */
    int preempted;       /* a preemption happened in this step */
} sched;

static int32_t remaining(const xseq *s) { return s->n_tokens - s->n_computed; }
static int live(const xseq *s) { return s->finish == ANVIL_REQUEST_RUNNING; }

/* ------------------------------------------------------------ queues */

static int grow_ptrs(xreq ***arr, int32_t *cap, int32_t need)
{
    if (need <= *cap)
        return 1;
    int32_t nc = *cap ? *cap * 2 : 16;
    while (nc < need)
        nc *= 2;
    xreq **p = realloc(*arr, (size_t)nc * sizeof *p);
    if (p == NULL)
        return 0;
    *arr = p;
    *cap = nc;
    return 1;
}

static void remove_at(xreq **arr, int32_t *n, xreq *r)
{
    for (int32_t i = 0; i < *n; i++) {
        if (arr[i] == r) {
            memmove(arr + i, arr + i + 1, (size_t)(*n - i - 1) * sizeof *arr);
            (*n)--;
            return;
        }
    }
}

void anvil_exec_running_remove(anvil_executor *ex, xreq *r) { remove_at(ex->running, &ex->n_running, r); }
void anvil_exec_waiting_remove(anvil_executor *ex, xreq *r) { remove_at(ex->waiting, &ex->n_waiting, r); }

anvil_status anvil_exec_waiting_push_back(anvil_executor *ex, xreq *r)
{
    CHECK(grow_ptrs(&ex->waiting, &ex->cap_waiting, ex->n_waiting + 1), ANVIL_ERR_OOM, "out of memory");
    ex->waiting[ex->n_waiting++] = r;
    r->state = XREQ_WAITING;
    return ANVIL_OK;
}

/* The front of the queue: a preempted request goes before the new ones.
 * Its slot in the running list is given back first, so growth cannot fail
 * for lack of room (the two lists together never exceed what they held). */
static anvil_status waiting_push_front(anvil_executor *ex, xreq *r)
{
    CHECK(grow_ptrs(&ex->waiting, &ex->cap_waiting, ex->n_waiting + 1), ANVIL_ERR_OOM, "out of memory");
    memmove(ex->waiting + 1, ex->waiting, (size_t)ex->n_waiting * sizeof *ex->waiting);
    ex->waiting[0] = r;
    ex->n_waiting++;
    r->state = XREQ_WAITING;
    return ANVIL_OK;
}

/* ------------------------------------------------------------ blocks */

/* The number of distinct blocks r's sequences reference. */
static int32_t distinct_blocks(anvil_executor *ex, const xreq *r)
{
    if (r->n_seqs == 1)
        return r->seqs[0]->n_blocks;
    if (++ex->mark_stamp == 0) { /* wrapped: start the stamps over */
        memset(ex->mark, 0, (size_t)anvil_runtime_kv_blocks_total(ex->rt) * sizeof *ex->mark);
        ex->mark_stamp = 1;
    }
    int32_t n = 0;
    for (int32_t i = 0; i < r->n_seqs; i++) {
        const xseq *s = r->seqs[i];
        for (int32_t j = 0; j < s->n_blocks; j++) {
            if (ex->mark[s->blocks[j]] != ex->mark_stamp) {
                ex->mark[s->blocks[j]] = ex->mark_stamp;
                n++;
            }
        }
    }
    return n;
}

/* Blocks the running requests may still allocate (guaranteed-no-evict). */
static int64_t reserved_blocks(anvil_executor *ex)
{
    int64_t total = 0;
    for (int32_t i = 0; i < ex->n_running; i++) {
        int32_t left = ex->running[i]->worst_blocks - distinct_blocks(ex, ex->running[i]);
        if (left > 0)
            total += left;
    }
    return total;
}

/*
 * Makes s's blocks cover positions [n_computed, upto). A partly filled
 * block that others share (a fork) or that the prefix cache holds is
 * copied first: a block is written only by its one owner. ANVIL_ERR_CAPACITY
 * when blocks run out (s stays consistent: a retry continues).
 */
static anvil_status ensure_blocks(anvil_executor *ex, xseq *s, int32_t upto)
{
    const int32_t bs = ex->bs;
    if (s->n_computed % bs != 0) {
        const int32_t j = s->n_computed / bs;
        const int32_t b = s->blocks[j];
        if (anvil_kv_refcount(ex->kv, b) > 1 || anvil_kv_is_registered(ex->kv, b)) {
            int32_t nb;
            TRY(anvil_kv_alloc(ex->kv, 1, &nb));
            anvil_status st = anvil_kv_copy(ex->kv, b, nb, s->n_computed % bs);
            if (st != ANVIL_OK) {
                anvil_kv_decref(ex->kv, nb);
                return st;
            }
            anvil_kv_decref(ex->kv, b);
            s->blocks[j] = nb;
        }
    }
    const int32_t need = (upto + bs - 1) / bs;
    if (need > s->n_blocks) {
        TRY(anvil_kv_alloc(ex->kv, need - s->n_blocks, s->blocks + s->n_blocks));
        s->n_blocks = need;
    }
    return ANVIL_OK;
}

/* ------------------------------------------------------------ plan */

static void unplan_request(anvil_executor *ex, sched *sc, const xreq *r)
{
    int32_t k = 0;
    for (int32_t i = 0; i < ex->n_plan; i++) {
        plan_entry *e = &ex->plan[i];
        if (e->r == r) {
            sc->budget += e->count;
            e->s->sched_count = 0;
        } else {
            ex->plan[k++] = *e;
        }
    }
    ex->n_plan = k;
}

static void preempt(anvil_executor *ex, sched *sc, xreq *v)
{
    unplan_request(ex, sc, v);
    for (int32_t i = 0; i < v->n_seqs; i++)
        anvil_exec_seq_release(ex, v->seqs[i]);
    anvil_exec_running_remove(ex, v);
    if (waiting_push_front(ex, v) != ANVIL_OK) {
        v->state = XREQ_FINISHED;
        anvil_exec_fail_request(ex, v, ANVIL_ERR_OOM, "out of memory requeueing a preempted request");
        return;
    }
    v->n_preemptions++;
    ex->c_preempt++;
    sc->preempted = 1;
    anvil_log(ANVIL_LOG_DEBUG, "executor: preempted request %llu (%d free blocks)", (unsigned long long)v->id,
              anvil_kv_available(ex->kv));
}

/* Fails r (not in the middle of the plan). */
static void fail_planned(anvil_executor *ex, sched *sc, xreq *r, anvil_status st, const char *msg)
{
    unplan_request(ex, sc, r);
    anvil_exec_fail_request(ex, r, st, msg);
}

/*
 * Puts count tokens of s into the plan. 1: planned; 0: no room in this
 * step; -1: r itself was preempted or failed (stop looking at it).
 */
static int plan_seq(anvil_executor *ex, sched *sc, xreq *r, xseq *s, int32_t count)
{
    if (count <= 0 || count > sc->budget || ex->n_plan >= ex->max_batch)
        return 0;
    for (;;) {
        anvil_status st = ensure_blocks(ex, s, s->n_computed + count);
        if (st == ANVIL_OK)
            break;
        if (st != ANVIL_ERR_CAPACITY) {
            fail_planned(ex, sc, r, st, anvil_last_error());
            return -1;
        }
        if (ex->sched_speculative) {
            /* beside a launched step: what its tokens end may free enough;
             * the caller takes that step and plans again (preempting then) */
            ex->sched_aborted = 1;
            return 0;
        }
        if (ex->opts.policy == ANVIL_CAPACITY_GUARANTEED_NO_EVICT || ex->n_running == 0) {
            /* the reservation should have made this impossible */
            fail_planned(ex, sc, r, ANVIL_ERR_INTERNAL, "KV cache exhausted despite the reservation");
            return -1;
        }
        xreq *victim = ex->running[ex->n_running - 1];
        preempt(ex, sc, victim);
        if (victim == r)
            return -1;
    }
    plan_entry *e = &ex->plan[ex->n_plan++];
    e->r = r;
    e->s = s;
    e->start = s->n_computed;
    e->count = count;
    s->sched_count = count;
    sc->budget -= count;
    return 1;
}

/* Whether s's pending token (sampled by a launched step, not yet known)
 * will end it whatever it is: its max_tokens-th, or the context's last.
 * Such a sequence is not planned beside that step: its slot would be
 * wasted, and its KV past the end is outside the request's reservation. */
static int known_done(const anvil_executor *ex, const xreq *r, const xseq *s)
{
    return s->n_pending > 0 && (s->n_tokens - r->n_prompt >= r->max_tokens || s->n_tokens >= ex->max_seq_len);
}

/* Pass A for one request: its decode tokens. */
static void plan_decodes(anvil_executor *ex, sched *sc, xreq *r)
{
    if (r->beam) {
        int32_t n = 0;
        for (int32_t i = 0; i < r->n_seqs; i++)
            n += remaining(r->seqs[i]) == 1;
        if (n != r->n_seqs || n > sc->budget || ex->n_plan + n > ex->max_batch)
            return;
    }
    for (int32_t i = 0; i < r->n_seqs; i++) {
        xseq *s = r->seqs[i];
        if (live(s) && s->sched_count == 0 && remaining(s) == 1 && !known_done(ex, r, s) &&
            plan_seq(ex, sc, r, s, 1) < 0)
            return;
    }
}

/* Pass B for one request: prefill chunks. 0: stop (budget or batch full). */
static int plan_prefills(anvil_executor *ex, sched *sc, xreq *r)
{
    for (int32_t i = 0; i < r->n_seqs; i++) {
        xseq *s = r->seqs[i];
        const int32_t left = remaining(s) - (r->beam ? 1 : 0);
        if (!live(s) || s->sched_count != 0 || remaining(s) <= 1 || left <= 0)
            continue;
        if (sc->budget <= 0 || ex->n_plan >= ex->max_batch)
            return 0;
        int32_t count = left < sc->budget ? left : sc->budget;
        if (plan_seq(ex, sc, r, s, count) < 0)
            return 1;
    }
    return 1;
}

/* ------------------------------------------------------------ admission */

/* Prefix-cache hits of s: the leading full blocks, stopping one token
 * short of the end (the last token is always computed, for its logits).
 * Fills s->block_hash; returns the count, takes no reference. */
static int32_t lookup_prefix(anvil_executor *ex, xseq *s)
{
    if (!ex->opts.enable_prefix_caching)
        return 0;
    const int32_t bs = ex->bs, max_hits = (s->n_tokens - 1) / bs;
    uint64_t parent = ex->kv_root;
    int32_t j = 0;
    for (; j < max_hits; j++) {
        const int32_t *t = s->tokens + (size_t)j * (size_t)bs;
        uint64_t h = anvil_kv_hash(parent, t, bs);
        int32_t b = anvil_kv_lookup(ex->kv, h, parent, t);
        if (b < 0)
            break;
        s->block_hash[j] = h;
        s->blocks[j] = b; /* tentative: referenced only on admission */
        parent = h;
    }
    return j;
}

static int32_t running_width(const anvil_executor *ex)
{
    int32_t w = 0;
    for (int32_t i = 0; i < ex->n_running; i++)
        w += ex->running[i]->width;
    return w;
}

/* Tries to admit the head of the queue. 1: admitted; 0: not now. */
static int admit_head(anvil_executor *ex, sched *sc)
{
    xreq *q = ex->waiting[0];
    if (running_width(ex) + q->width > ex->max_batch)
        return 0;
    const int32_t bs = ex->bs;
    /* lookups for every sequence; count the hit blocks (distinct) and those
     * that leave the evictable pool when referenced */
    int32_t *hits = ex->hits, hits_distinct = 0, hits_idle = 0;
    const int32_t n_look = q->n_seqs; /* <= width <= max_batch: ex->hits holds them */
    if (++ex->mark_stamp == 0) {
        memset(ex->mark, 0, (size_t)anvil_runtime_kv_blocks_total(ex->rt) * sizeof *ex->mark);
        ex->mark_stamp = 1;
    }
    for (int32_t i = 0; i < q->n_seqs; i++) {
        xseq *s = q->seqs[i];
        int32_t h = live(s) ? lookup_prefix(ex, s) : 0;
        hits[i] = h;
        for (int32_t j = 0; j < h; j++) {
            int32_t b = s->blocks[j];
            if (ex->mark[b] == ex->mark_stamp)
                continue;
            ex->mark[b] = ex->mark_stamp;
            hits_distinct++;
            hits_idle += anvil_kv_refcount(ex->kv, b) == 0;
        }
    }
    const int64_t avail = (int64_t)anvil_kv_available(ex->kv) - hits_idle;
    if (ex->opts.policy == ANVIL_CAPACITY_GUARANTEED_NO_EVICT) {
        const int64_t need = (int64_t)q->worst_blocks - hits_distinct;
        if (avail < reserved_blocks(ex) + need)
            return 0;
    } else {
        /* the first sequence's first chunk must fit without preempting */
        const xseq *s = q->seqs[0];
        const int32_t done = hits[0] * bs;
        int32_t left = s->n_tokens - done - (q->beam && s->n_tokens - done > 1 ? 1 : 0);
        int32_t count = left < sc->budget ? left : sc->budget;
        const int64_t need = (int64_t)(done + count + bs - 1) / bs - hits[0];
        if (avail < need)
            return 0;
    }
    /* admit: reference the hits */
    for (int32_t i = 0; i < n_look; i++) {
        xseq *s = q->seqs[i];
        for (int32_t j = 0; j < hits[i]; j++)
            anvil_kv_incref(ex->kv, s->blocks[j]);
        s->n_blocks = s->n_hashed = hits[i];
        s->root = ex->kv_root; /* the hashes it registers chain from the current weights' root */
        s->n_computed = hits[i] * bs;
    }
    if (!grow_ptrs(&ex->running, &ex->cap_running, ex->n_running + 1)) {
        for (int32_t i = 0; i < q->n_seqs; i++)
            anvil_exec_seq_release(ex, q->seqs[i]);
        anvil_exec_waiting_remove(ex, q);
        q->state = XREQ_FINISHED;
        anvil_exec_fail_request(ex, q, ANVIL_ERR_OOM, "out of memory admitting the request");
        return 1;
    }
    anvil_exec_waiting_remove(ex, q);
    ex->running[ex->n_running++] = q;
    q->state = XREQ_RUNNING;
    if (!q->admitted_once) {
        q->admitted_once = 1;
        q->t_first_sched = anvil_exec_now();
        q->n_cached_prompt = hits[0] * bs;
        ex->c_prompt += q->n_prompt;
        ex->c_cached += q->n_cached_prompt;
    }
    /* plan what fits now; the rest waits for pass B of later steps */
    for (int32_t i = 0; i < q->n_seqs; i++) {
        xseq *s = q->seqs[i];
        if (!live(s))
            continue;
        int32_t left = remaining(s) == 1 ? 1 : remaining(s) - (q->beam ? 1 : 0);
        int32_t count = left < sc->budget ? left : sc->budget;
        if (plan_seq(ex, sc, q, s, count) < 0)
            break;
    }
    return 1;
}

/* ------------------------------------------------------------ the step's plan */

void anvil_exec_unplan(anvil_executor *ex)
{
    for (int32_t i = 0; i < ex->n_plan; i++)
        ex->plan[i].s->sched_count = 0;
    ex->n_plan = 0;
}

void anvil_exec_schedule(anvil_executor *ex)
{
    sched sc = {.budget = ex->max_tokens_step};
    ex->n_plan = 0;
    ex->sched_aborted = 0;
    for (int32_t i = 0; i < ex->n_running; i++)
        for (int32_t j = 0; j < ex->running[i]->n_seqs; j++)
            ex->running[i]->seqs[j]->sched_count = 0;

    /* A: decodes, oldest request first. A preemption removes requests from
     * the end of the list, so the index stays valid for the older ones. */
    for (int32_t i = 0; i < ex->n_running;) {
        xreq *r = ex->running[i];
        plan_decodes(ex, &sc, r);
        if (i < ex->n_running && ex->running[i] == r)
            i++; /* else r failed and left the list: the next one is at i now */
    }
    /* B: prefill chunks */
    for (int32_t i = 0; i < ex->n_running;) {
        xreq *r = ex->running[i];
        if (!plan_prefills(ex, &sc, r))
            break;
        if (i < ex->n_running && ex->running[i] == r)
            i++;
    }
    /* C: admission */
    while (!sc.preempted && !ex->sched_aborted && ex->n_waiting > 0 && sc.budget > 0 && ex->n_plan < ex->max_batch)
        if (!admit_head(ex, &sc))
            break;

    if (ex->sched_speculative) {
        /* an empty plan beside a launched step is no sign of trouble: its
         * sequences may all be ending, or waiting for its blocks to return */
    } else if (ex->n_plan == 0 && ex->n_waiting > 0 && ex->n_running == 0) {
        /* nothing runs and the head cannot start: it never will */
        xreq *q = ex->waiting[0];
        char msg[160];
        snprintf(msg, sizeof msg, "the request cannot be scheduled (needs %d KV blocks, %d available)",
                 q->worst_blocks, anvil_kv_available(ex->kv));
        anvil_exec_fail_request(ex, q, ANVIL_ERR_CAPACITY, msg);
    } else if (ex->n_plan == 0 && ex->n_running > 0) {
        /* should not happen; never spin without progress */
        xreq *r = ex->running[ex->n_running - 1];
        anvil_exec_fail_request(ex, r, ANVIL_ERR_INTERNAL, "the scheduler found nothing to run for this request");
    }
}
