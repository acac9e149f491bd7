/* GPT-2's ops: layernorm (with a bias), gelu_tanh (its MLP is not gated)
 * and pos_embedding (learned absolute positions added to the token
 * embeddings). Threaded over rows (layernorm, pos_embedding) or flat over
 * the elements (gelu_tanh) once big enough; a row's result depends on that
 * row alone (fixed 16-lane sums), so it is independent of the batch. */
#include "backend/cpu/cpu_internal.h"
#include "core/error.h"

/* Below this many elements an op runs on the calling thread. */
#define LN_PAR_MIN 16384

typedef enum ln_kind { LN_LAYERNORM, LN_GELU_TANH, LN_POS_EMBEDDING } ln_kind;

typedef struct ln_job {
    ln_kind kind;
    const float *x;
    const void *w, *b;   /* layernorm weight and bias; pos_embedding's table in w */
    anvil_dtype wdt, bdt;
    const anvil_step *step;
    float *out;
    int64_t rows, width; /* gelu_tanh: rows is the element count, width 1 */
    float eps;
} ln_job;

/* The sum of x[0..n) in 16 lanes reduced by a fixed tree. */
static float sum16(const float *x, int64_t n, float shift, int square)
{
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) {
            const float d = x[i + l] - shift;
            acc[l] += square ? d * d : d;
        }
    for (int l = 0; i + l < n; l++) {
        const float d = x[i + l] - shift;
        acc[l] += square ? d * d : d;
    }
    float s8[8], s4[4];
    for (int l = 0; l < 8; l++)
        s8[l] = acc[l] + acc[l + 8];
    for (int l = 0; l < 4; l++)
        s4[l] = s8[l] + s8[l + 4];
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

static void ln_range(const ln_job *job, int64_t r0, int64_t r1)
{
    const int64_t width = job->width;
    switch (job->kind) {
    case LN_LAYERNORM:
        for (int64_t r = r0; r < r1; r++) {
            const float *x = job->x + r * width;
            float *o = job->out + r * width;
            /* two passes (mean, then the squares about it), as torch does in
             * f32: no cancellation from E[x^2] - E[x]^2 */
            const float mean = sum16(x, width, 0.0f, 0) / (float)width;
            const float var = sum16(x, width, mean, 1) / (float)width;
            const float inv = 1.0f / sqrtf(var + job->eps);
            for (int64_t i = 0; i < width; i++)
                o[i] = (x[i] - mean) * inv * anvil_cpu_load_elem(job->w, job->wdt, i) +
                       anvil_cpu_load_elem(job->b, job->bdt, i);
        }
        break;
    case LN_GELU_TANH:
        for (int64_t i = r0; i < r1; i++)
            job->out[i] = anvil_cpu_gelu_tanh(job->x[i]);
        break;
    case LN_POS_EMBEDDING:
        for (int64_t t = r0; t < r1; t++) {
            const int64_t p = job->step->positions[t];
            for (int64_t i = 0; i < width; i++)
                job->out[t * width + i] = job->x[t * width + i] + anvil_cpu_load_elem(job->w, job->wdt, p * width + i);
        }
        break;
    }
}

static void ln_task(void *ctx, int ith, int nth)
{
    const ln_job *job = ctx;
    int64_t r0, r1;
    anvil_cpu_split(job->rows, job->kind == LN_GELU_TANH ? 16 : 1, ith, nth, &r0, &r1);
    ln_range(job, r0, r1);
}

static anvil_status ln_run(anvil_backend *be, const ln_job *job)
{
    if (job->rows * job->width >= LN_PAR_MIN)
        anvil_threadpool_run(anvil_cpu_impl(be)->pool, ln_task, (void *)job);
    else
        ln_range(job, 0, job->rows);
    return ANVIL_OK;
}

anvil_status anvil_cpu_op_layernorm(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w,
                                    const anvil_tensor *b, float eps, anvil_tensor *out)
{
    TRY(anvil_cpu_check_layernorm(x, w, b, eps, out));
    if (x->shape[1] == 0)
        return ANVIL_OK;
    const ln_job job = {.kind = LN_LAYERNORM, .x = x->data, .w = w->data, .wdt = w->dtype, .b = b->data,
                        .bdt = b->dtype, .out = out->data, .rows = x->shape[0], .width = x->shape[1], .eps = eps};
    return ln_run(be, &job);
}

anvil_status anvil_cpu_op_gelu_tanh(anvil_backend *be, const anvil_tensor *x, anvil_tensor *out)
{
    TRY(anvil_cpu_check_unary(x, out, "gelu_tanh"));
    const ln_job job = {.kind = LN_GELU_TANH, .x = x->data, .out = out->data, .rows = anvil_tensor_numel(x),
                        .width = 1};
    return ln_run(be, &job);
}

anvil_status anvil_cpu_op_pos_embedding(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *table,
                                        const anvil_step *step, anvil_tensor *out)
{
    TRY(anvil_cpu_check_pos_embedding(x, table, step, out));
    const ln_job job = {.kind = LN_POS_EMBEDDING, .x = x->data, .w = table->data, .wdt = table->dtype,
                        .step = step, .out = out->data, .rows = x->shape[0], .width = x->shape[1]};
    return ln_run(be, &job);
}
