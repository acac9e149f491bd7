/* The server's models as reference-counted entries (srv_model_acquire /
 * srv_model_release), and the CPU-time accounting of the server's own work. */
#include <string.h>
#include <time.h>

#include "server/server_internal.h"

srv_model *srv_model_acquire(struct anvil_server *s, const char *name)
{
    srv_model *found = NULL;
    pthread_mutex_lock(&s->repo_mu);
    for (int i = 0; i < s->n_models && found == NULL; i++) {
        srv_model *m = &s->models[i];
        if (m->unloading)
            continue;
        /* no name: the default, the first model that is loaded */
        if (name == NULL || strcmp(m->name, name) == 0)
            found = m;
    }
    if (found)
        found->refs++;
    pthread_mutex_unlock(&s->repo_mu);
    return found;
}

void srv_model_release(srv_model *m)
{
    if (m == NULL)
        return;
    anvil_server *s = m->srv;
    pthread_mutex_lock(&s->repo_mu);
    m->refs--;
    pthread_cond_broadcast(&s->repo_cv);
    pthread_mutex_unlock(&s->repo_mu);
}

uint64_t srv_cpu_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void srv_cost_add(struct anvil_server *s, uint64_t t0)
{
    uint64_t t = srv_cpu_ns();
    if (s && t > t0)
        atomic_fetch_add(&s->cost_ns, t - t0);
}
