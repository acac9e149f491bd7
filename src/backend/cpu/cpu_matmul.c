/* The matmul op: checks, then splits the output over the pool's threads and
 * runs the ISA's kernel (cpu_matmul_tmpl.h) on each part. The split only
 * decides who computes which block of out; an element's arithmetic is the
 * same whatever the split (batch and thread-count invariance). */
#include "backend/cpu/cpu_internal.h"
#include "backend/cpu/cpu_quant.h"
#include "core/error.h"

typedef struct mm_job {
    anvil_cpu_backend *cb;
    const anvil_cpu_kernels *kern;
    anvil_cpu_mm mm;
    int split_tokens; /* 1: split T across threads, else N */
} mm_job;

static void mm_task(void *ctx, int ith, int nth)
{
    mm_job *job = ctx;
    const anvil_cpu_mm *m = &job->mm;
    const anvil_cpu_mm_shape *sh = &job->kern->mm_shape;
    int64_t t0 = 0, t1 = m->T, n0 = 0, n1 = m->N;
    if (job->split_tokens)
        anvil_cpu_split(m->T, sh->gemm_tokens, ith, nth, &t0, &t1);
    else
        anvil_cpu_split(m->N, m->T <= sh->gemv_max_t ? sh->gemv_rows : sh->gemm_rows, ith, nth, &n0, &n1);
    if (t0 < t1 && n0 < n1)
        job->kern->matmul(m, t0, t1, n0, n1, anvil_cpu_scratch_at(job->cb, ith));
}

anvil_status anvil_cpu_op_matmul(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w,
                                 const anvil_tensor *bias, anvil_tensor *out)
{
    TRY(anvil_cpu_check_matmul(x, w, bias, out));
    anvil_cpu_backend *cb = anvil_cpu_impl(be);
    if (w->quant != NULL)
        return anvil_cpu_quant_matmul(cb, anvil_cpu_kernels_for(cb->isa), x, w, bias, out);
    mm_job job = {.cb = cb, .kern = anvil_cpu_kernels_for(cb->isa)};
    job.mm = (anvil_cpu_mm){
        .x = x->data,
        .w = w->data,
        .wdt = w->dtype,
        .bias = bias != NULL ? bias->data : NULL,
        .bias_dt = bias != NULL ? bias->dtype : ANVIL_DTYPE_F32,
        .out = out->data,
        .T = x->shape[0],
        .K = x->shape[1],
        .N = w->shape[0],
    };
    const anvil_cpu_mm_shape *sh = &job.kern->mm_shape;
    if (job.mm.T == 0 || job.mm.N == 0)
        return ANVIL_OK;
    if (job.mm.T > sh->gemv_max_t) {
        TRY(anvil_cpu_scratch_reserve(cb, anvil_cpu_mm_scratch_bytes(sh, job.mm.K)));
        /* Too few weight panels to keep every thread busy: split tokens. */
        int64_t panels = (job.mm.N + sh->gemm_rows - 1) / sh->gemm_rows;
        job.split_tokens = panels < 4 * (int64_t)cb->n_threads;
    }
    anvil_threadpool_run(cb->pool, mm_task, &job);
    return ANVIL_OK;
}
