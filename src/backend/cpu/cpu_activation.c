/* The elementwise ops Gemma brings: gelu_tanh_mul (its gated MLP), scale
 * (the embedding normalizer) and softcap (its final logits). Flat over the
 * elements, threaded in whole cache lines once big enough, each element
 * computed by the same expression as the reference (cpu_reference.c), so
 * the results are the reference's to the bit and independent of the batch. */
#include "backend/cpu/cpu_internal.h"
#include "core/error.h"

/* Below this many elements an op runs on the calling thread. */
#define ACT_PAR_MIN 16384

typedef enum act_kind { ACT_GELU_TANH_MUL, ACT_SCALE, ACT_SOFTCAP } act_kind;

typedef struct act_job {
    act_kind kind;
    const float *a;  /* gate, x */
    const float *b;  /* up */
    float *out;
    float c;         /* scale's factor, softcap's cap */
    int64_t n;
} act_job;

static void act_range(const act_job *job, int64_t i0, int64_t i1)
{
    const float *a = job->a;
    float *o = job->out;
    switch (job->kind) {
    case ACT_GELU_TANH_MUL:
        for (int64_t i = i0; i < i1; i++)
            o[i] = anvil_cpu_gelu_tanh(a[i]) * job->b[i];
        break;
    case ACT_SCALE:
        for (int64_t i = i0; i < i1; i++)
            o[i] = a[i] * job->c;
        break;
    case ACT_SOFTCAP:
        for (int64_t i = i0; i < i1; i++)
            o[i] = anvil_cpu_softcap_score(a[i], job->c);
        break;
    }
}

static void act_task(void *ctx, int ith, int nth)
{
    const act_job *job = ctx;
    int64_t i0, i1;
    anvil_cpu_split(job->n, 16, ith, nth, &i0, &i1);
    act_range(job, i0, i1);
}

static anvil_status act_run(anvil_backend *be, act_job *job)
{
    if (job->n >= ACT_PAR_MIN)
        anvil_threadpool_run(anvil_cpu_impl(be)->pool, act_task, job);
    else
        act_range(job, 0, job->n);
    return ANVIL_OK;
}

anvil_status anvil_cpu_op_gelu_tanh_mul(anvil_backend *be, const anvil_tensor *gate, const anvil_tensor *up,
                                        anvil_tensor *out)
{
    TRY(anvil_cpu_check_binary(gate, up, out));
    act_job job = {.kind = ACT_GELU_TANH_MUL, .a = gate->data, .b = up->data, .out = out->data,
                   .n = anvil_tensor_numel(gate)};
    return act_run(be, &job);
}

anvil_status anvil_cpu_op_scale(anvil_backend *be, const anvil_tensor *x, float c, anvil_tensor *out)
{
    TRY(anvil_cpu_check_unary(x, out, "scale"));
    act_job job = {.kind = ACT_SCALE, .a = x->data, .out = out->data, .c = c, .n = anvil_tensor_numel(x)};
    return act_run(be, &job);
}

anvil_status anvil_cpu_op_softcap(anvil_backend *be, const anvil_tensor *x, float cap, anvil_tensor *out)
{
    TRY(anvil_cpu_check_unary(x, out, "softcap"));
    CHECK(isfinite(cap) && cap > 0, ANVIL_ERR_INVALID_ARG, "softcap: the cap must be positive, got %g", (double)cap);
    act_job job = {.kind = ACT_SOFTCAP, .a = x->data, .out = out->data, .c = cap, .n = anvil_tensor_numel(x)};
    return act_run(be, &job);
}
