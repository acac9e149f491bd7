/* The light ops: embedding, rope, silu_mul, add, gather_rows. Memory-bound
 * or nearly so; they are threaded over rows (or chunks) once they are big
 * enough to pay for waking the pool, and compute each element exactly as
 * the reference does. */
#include "backend/cpu/cpu_internal.h"
#include "core/error.h"

/* Below this many elements an op runs on the calling thread. */
#define PAR_MIN_ELEMS 16384

typedef enum ew_kind { EW_EMBEDDING, EW_ROPE, EW_SILU_MUL, EW_ADD, EW_GATHER } ew_kind;

typedef struct ew_job {
    ew_kind kind;
    anvil_cpu_backend *cb;
    const anvil_step *step;
    const void *a;      /* table, gate, a, x */
    anvil_dtype a_dt;
    const float *b;     /* up, b */
    float *out;         /* out, or x for rope */
    int64_t rows, width;
    int32_t head_dim;
    const anvil_rope_freqs *freqs;
    int64_t first_id, n_ids; /* embedding: the table's ids [first_id, first_id + n_ids) */
} ew_job;

static void rope_rows(const ew_job *job, int64_t r0, int64_t r1, float *cs)
{
    int64_t half = job->head_dim / 2, width = job->width;
    const float scale = anvil_cpu_rope_scale(job->freqs);
    for (int64_t t = r0; t < r1; t++) {
        const float *inv_freq = anvil_cpu_rope_table(job->freqs, job->step, (int32_t)t);
        /* one cos/sin per pair, shared by every head of the token */
        for (int64_t i = 0; i < half; i++) {
            float angle = (float)job->step->positions[t] * inv_freq[i];
            cs[i] = cosf(angle) * scale;
            cs[half + i] = sinf(angle) * scale;
        }
        for (int64_t h = 0; h < width; h += job->head_dim) {
            float *xh = job->out + t * width + h;
            for (int64_t i = 0; i < half; i++) {
                float c = cs[i], s = cs[half + i];
                float x1 = xh[i], x2 = xh[i + half];
                xh[i] = x1 * c - x2 * s;
                xh[i + half] = x2 * c + x1 * s;
            }
        }
    }
}

/* Rows [r0, r1) (for the flat ops, elements [r0, r1) of the whole tensor). */
static void ew_range(const ew_job *job, int64_t r0, int64_t r1, int ith)
{
    int64_t width = job->width;
    switch (job->kind) {
    case EW_EMBEDDING:
        for (int64_t t = r0; t < r1; t++) {
            int64_t id = job->step->token_ids[t] - job->first_id;
            if (id < 0 || id >= job->n_ids) /* another rank's row of a vocabulary slice */
                memset(job->out + t * width, 0, (size_t)width * 4);
            else if (job->a_dt == ANVIL_DTYPE_F32)
                memcpy(job->out + t * width, (const char *)job->a + id * width * 4, (size_t)width * 4);
            else
                for (int64_t i = 0; i < width; i++)
                    job->out[t * width + i] = anvil_cpu_load_elem(job->a, job->a_dt, id * width + i);
        }
        break;
    case EW_ROPE:
        rope_rows(job, r0, r1, anvil_cpu_scratch_at(job->cb, ith));
        break;
    case EW_SILU_MUL: {
        const float *g = job->a;
        for (int64_t i = r0; i < r1; i++)
            job->out[i] = g[i] / (1.0f + expf(-g[i])) * job->b[i];
        break;
    }
    case EW_ADD: {
        const float *x = job->a;
        for (int64_t i = r0; i < r1; i++)
            job->out[i] = x[i] + job->b[i];
        break;
    }
    case EW_GATHER: {
        const float *x = job->a;
        for (int64_t i = r0; i < r1; i++)
            memcpy(job->out + i * width, x + (int64_t)job->step->logit_rows[i] * width, (size_t)width * 4);
        break;
    }
    }
}

static void ew_task(void *ctx, int ith, int nth)
{
    ew_job *job = ctx;
    int64_t r0, r1;
    /* flat ops split in whole cache lines */
    anvil_cpu_split(job->rows, job->kind == EW_SILU_MUL || job->kind == EW_ADD ? 16 : 1, ith, nth, &r0, &r1);
    ew_range(job, r0, r1, ith);
}

static anvil_status ew_run(anvil_backend *be, ew_job *job)
{
    job->cb = anvil_cpu_impl(be);
    int flat = job->kind == EW_SILU_MUL || job->kind == EW_ADD;
    int64_t elems = flat ? job->rows : job->rows * job->width;
    if (job->kind == EW_ROPE)
        TRY(anvil_cpu_scratch_reserve(job->cb, (size_t)job->head_dim * sizeof(float)));
    if (elems >= PAR_MIN_ELEMS)
        anvil_threadpool_run(job->cb->pool, ew_task, job);
    else
        ew_range(job, 0, job->rows, 0);
    return ANVIL_OK;
}

anvil_status anvil_cpu_op_embedding(anvil_backend *be, const anvil_tensor *table, const anvil_step *step,
                                    anvil_tensor *out)
{
    TRY(anvil_cpu_check_embedding(table, step, out));
    ew_job job = {.kind = EW_EMBEDDING, .step = step, .a = table->data, .a_dt = table->dtype, .out = out->data,
                  .rows = out->shape[0], .width = out->shape[1], .n_ids = table->shape[0]};
    return ew_run(be, &job);
}

anvil_status anvil_cpu_op_embedding_part(anvil_backend *be, const anvil_tensor *table, int64_t first_id,
                                         const anvil_step *step, anvil_tensor *out)
{
    TRY(anvil_cpu_check_embedding_part(table, first_id, step, out));
    ew_job job = {.kind = EW_EMBEDDING, .step = step, .a = table->data, .a_dt = table->dtype, .out = out->data,
                  .rows = out->shape[0], .width = out->shape[1], .first_id = first_id, .n_ids = table->shape[0]};
    return ew_run(be, &job);
}

anvil_status anvil_cpu_op_rope(anvil_backend *be, anvil_tensor *x, const anvil_step *step, int32_t head_dim,
                               const anvil_rope_freqs *f)
{
    TRY(anvil_cpu_check_rope(x, step, head_dim, f));
    ew_job job = {.kind = EW_ROPE, .step = step, .out = x->data, .rows = x->shape[0], .width = x->shape[1],
                  .head_dim = head_dim, .freqs = f};
    return ew_run(be, &job);
}

anvil_status anvil_cpu_op_silu_mul(anvil_backend *be, const anvil_tensor *gate, const anvil_tensor *up,
                                   anvil_tensor *out)
{
    TRY(anvil_cpu_check_binary(gate, up, out));
    ew_job job = {.kind = EW_SILU_MUL, .a = gate->data, .b = up->data, .out = out->data,
                  .rows = anvil_tensor_numel(gate), .width = 1};
    return ew_run(be, &job);
}

anvil_status anvil_cpu_op_add(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b, anvil_tensor *out)
{
    TRY(anvil_cpu_check_binary(a, b, out));
    ew_job job = {.kind = EW_ADD, .a = a->data, .b = b->data, .out = out->data, .rows = anvil_tensor_numel(a),
                  .width = 1};
    return ew_run(be, &job);
}

anvil_status anvil_cpu_op_gather_rows(anvil_backend *be, const anvil_tensor *x, const anvil_step *step,
                                      anvil_tensor *out)
{
    TRY(anvil_cpu_check_gather_rows(x, step, out));
    ew_job job = {.kind = EW_GATHER, .step = step, .a = x->data, .out = out->data, .rows = step->n_logits,
                  .width = x->shape[1]};
    return ew_run(be, &job);
}
