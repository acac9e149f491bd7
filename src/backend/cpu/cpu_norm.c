/* rmsnorm and head_rmsnorm, threaded over rows. The sum of squares of a
 * row runs in 16 lanes reduced by the fixed dot16 tree, so a row's result
 * depends on that row alone. */
#include "backend/cpu/cpu_internal.h"
#include "core/error.h"

typedef struct norm_job {
    const float *x;
    const void *w;
    anvil_dtype wdt;
    float *out;
    int64_t n_pieces, width;
    float eps;
    float w_offset; /* y = x * inv * (w_offset + w): Gemma's (1 + w), summed in f32 as transformers does */
} norm_job;

static float sum_squares(const float *x, int64_t n)
{
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++)
            acc[l] += x[i + l] * x[i + l];
    for (int l = 0; i + l < n; l++)
        acc[l] += x[i + l] * x[i + l];
    float s8[8], s4[4];
    for (int l = 0; l < 8; l++)
        s8[l] = acc[l] + acc[l + 8];
    for (int l = 0; l < 4; l++)
        s4[l] = s8[l] + s8[l + 4];
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

static void norm_pieces(const norm_job *job, int64_t r0, int64_t r1)
{
    int64_t width = job->width;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = job->x + r * width;
        float *o = job->out + r * width;
        float var = sum_squares(x, width) / (float)width;
        float inv = 1.0f / sqrtf(var + job->eps);
        if (job->wdt == ANVIL_DTYPE_F32) {
            for (int64_t i = 0; i < width; i++) {
                float w;
                memcpy(&w, (const char *)job->w + i * 4, 4);
                o[i] = x[i] * inv * (job->w_offset + w);
            }
        } else {
            for (int64_t i = 0; i < width; i++)
                o[i] = x[i] * inv * (job->w_offset + anvil_cpu_load_elem(job->w, job->wdt, i));
        }
    }
}

static void norm_task(void *ctx, int ith, int nth)
{
    norm_job *job = ctx;
    int64_t r0, r1;
    anvil_cpu_split(job->n_pieces, 1, ith, nth, &r0, &r1);
    norm_pieces(job, r0, r1);
}

static anvil_status run_norm(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w, int64_t width,
                             float eps, float w_offset, anvil_tensor *out)
{
    if (anvil_tensor_numel(x) == 0)
        return ANVIL_OK;
    norm_job job = {.x = x->data, .w = w->data, .wdt = w->dtype, .out = out->data, .width = width, .eps = eps,
                    .w_offset = w_offset};
    job.n_pieces = x->shape[0] * (x->shape[1] / width);
    if (anvil_tensor_numel(x) >= 16384)
        anvil_threadpool_run(anvil_cpu_impl(be)->pool, norm_task, &job);
    else
        norm_pieces(&job, 0, job.n_pieces);
    return ANVIL_OK;
}

anvil_status anvil_cpu_op_rmsnorm(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w, float eps,
                                  float w_offset, anvil_tensor *out)
{
    TRY(anvil_cpu_check_rmsnorm(x, w, x != NULL ? x->shape[1] : 0, out));
    CHECK(isfinite(w_offset), ANVIL_ERR_INVALID_ARG, "rmsnorm: weight offset %g", (double)w_offset);
    return run_norm(be, x, w, x->shape[1], eps, w_offset, out);
}

anvil_status anvil_cpu_op_head_rmsnorm(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w,
                                       int32_t head_dim, float eps, anvil_tensor *out)
{
    TRY(anvil_cpu_check_rmsnorm(x, w, head_dim, out));
    return run_norm(be, x, w, head_dim, eps, 0.0f, out);
}
