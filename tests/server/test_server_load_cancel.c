/*
 * A server's model loads can always be stopped (issue 11): an unload of a
 * model that is still loading cancels the load; anvil_server_stop_loads (a
 * SIGTERM during the start's loads) cancels it; a load past its deadline
 * fails. Each time the load fails with ANVIL_ERR_CANCELLED and a reason
 * the index shows, the model is UNAVAILABLE (never LOADING forever), and
 * nothing leaks (ASan).
 *
 * The load is held at its first progress report by a gate (the server's
 * runtime options' progress callback, which the server calls before its
 * own checks) until the test has seen the cancel requested, so the order is
 * fixed, not timed.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "anvil/server.h"
#include "server/server_internal.h"
#include "testutil.h"

typedef struct gate {
    atomic_int started, release;
} gate;

static int gate_progress(void *user, size_t done, size_t total)
{
    (void)done;
    (void)total;
    gate *g = user;
    atomic_store(&g->started, 1);
    while (!atomic_load(&g->release))
        usleep(1000);
    return 0;
}

typedef struct call {
    anvil_server *s;
    int unload;
    anvil_status st;
    char msg[512];
} call;

static void *call_main(void *arg)
{
    call *c = arg;
    c->st = c->unload ? anvil_server_unload_model(c->s, "tiny", 0) : anvil_server_load_model(c->s, "tiny");
    snprintf(c->msg, sizeof c->msg, "%s", anvil_last_error());
    return NULL;
}

static anvil_server *make_server(gate *g, double load_timeout_s)
{
    anvil_runtime_options ro;
    anvil_runtime_options_default(&ro);
    ro.n_threads = 1;
    ro.kv_cache_tokens = 1024;
    if (g) {
        ro.progress = gate_progress;
        ro.progress_user = g;
    }
    anvil_server_options o;
    anvil_server_options_default(&o);
    o.runtime = &ro;
    o.kv_cache_auto = 0;
    o.load_timeout_s = load_timeout_s;
    anvil_server *s = NULL;
    assert_int_equal(anvil_server_create(&o, &s), ANVIL_OK);
    assert_int_equal(anvil_server_add_model_dir(s, "tiny", anvil_test_shared_path("models/stories260K")), ANVIL_OK);
    return s;
}

static srv_entry *entry(anvil_server *s)
{
    assert_int_equal(s->n_entries, 1);
    return s->entries[0];
}

static void wait_started(gate *g)
{
    while (!atomic_load(&g->started))
        usleep(1000);
}

static void test_unload_cancels_load(void **st)
{
    (void)st;
    gate g = {0};
    anvil_server *s = make_server(&g, 0);
    call load = {.s = s}, unload = {.s = s, .unload = 1};
    pthread_t a, b;
    assert_int_equal(pthread_create(&a, NULL, call_main, &load), 0);
    wait_started(&g);
    pthread_mutex_lock(&s->repo_mu);
    assert_int_equal(entry(s)->state, SRV_LOADING);
    pthread_mutex_unlock(&s->repo_mu);
    assert_int_equal(pthread_create(&b, NULL, call_main, &unload), 0);
    /* the unload asks the load to stop, then waits for it */
    for (int asked = 0; !asked;) {
        pthread_mutex_lock(&s->repo_mu);
        srv_entry *e = entry(s);
        asked = e->loading != NULL && atomic_load(&e->loading->cancel);
        pthread_mutex_unlock(&s->repo_mu);
        if (!asked)
            usleep(1000);
    }
    atomic_store(&g.release, 1);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    assert_int_equal(load.st, ANVIL_ERR_CANCELLED);
    if (strstr(load.msg, "cancelled by an unload") == NULL)
        fail_msg("load: %s", load.msg);
    assert_int_equal(unload.st, ANVIL_OK);
    srv_entry *e = entry(s);
    assert_int_equal(e->state, SRV_UNAVAILABLE);
    assert_null(e->loading);
    assert_non_null(strstr(e->reason, "cancelled by an unload"));
    /* and it loads again */
    assert_int_equal(anvil_server_load_model(s, "tiny"), ANVIL_OK);
    assert_int_equal(e->state, SRV_READY);
    assert_int_equal(anvil_server_unload_model(s, "tiny", 0), ANVIL_OK);
    anvil_server_free(s);
}

static void test_stop_loads_cancels(void **st)
{
    (void)st;
    gate g = {0};
    anvil_server *s = make_server(&g, 0);
    call load = {.s = s};
    pthread_t a;
    assert_int_equal(pthread_create(&a, NULL, call_main, &load), 0);
    wait_started(&g);
    anvil_server_stop_loads(s); /* what the CLI's signal thread calls */
    atomic_store(&g.release, 1);
    pthread_join(a, NULL);
    assert_int_equal(load.st, ANVIL_ERR_CANCELLED);
    if (strstr(load.msg, "shutting down") == NULL)
        fail_msg("load: %s", load.msg);
    assert_int_equal(entry(s)->state, SRV_UNAVAILABLE);
    /* new loads are refused */
    assert_status_msg(anvil_server_load_model(s, "tiny"), ANVIL_ERR_INVALID_ARG, "shutting down");
    anvil_server_free(s);
}

static void test_load_deadline(void **st)
{
    (void)st;
    anvil_server *s = make_server(NULL, 1e-9); /* past at the first weight */
    assert_status_msg(anvil_server_load_model(s, "tiny"), ANVIL_ERR_CANCELLED, "load timeout");
    srv_entry *e = entry(s);
    assert_int_equal(e->state, SRV_UNAVAILABLE);
    assert_non_null(strstr(e->reason, "load timeout"));
    anvil_server_free(s);
    s = make_server(NULL, -1); /* none */
    assert_int_equal(anvil_server_load_model(s, "tiny"), ANVIL_OK);
    anvil_server_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unload_cancels_load),
        cmocka_unit_test(test_stop_loads_cancels),
        cmocka_unit_test(test_load_deadline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
