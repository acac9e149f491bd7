/* The int path's portable kernel (cpu_quant.h): the definition, lane by
 * lane, with fmaf and the dot16 reduction of cpu_vec_scalar.h, so the SIMD
 * kernels give the same bits. */
#include "backend/cpu/cpu_quant.h"
#include "backend/cpu/cpu_vec_scalar.h"

/* out[t + j, n + r] for r < R, j < TT */
static void q_tile(const int R, const int TT, const anvil_dtype DT, const anvil_cpu_qmm *m, int64_t n, int64_t t)
{
    const anvil_cpu_qw *qw = &m->qw;
    const int64_t K = qw->K, nb = K / ANVIL_CPU_QB, N = qw->N;
    for (int r = 0; r < R; r++)
        for (int j = 0; j < TT; j++) {
            const anvil_cpu_q8 a = anvil_cpu_q8_at(m->xq, m->T, K, t + j);
            vec16 acc = v_zero();
            for (int64_t b = 0; b < nb; b++) {
                const int64_t g = (n + r) * qw->G + b * ANVIL_CPU_QB / qw->gs;
                const int z = DT == ANVIL_DTYPE_U4 ? (qw->q->zeros != NULL ? qw->q->zeros[g] : 8) : 0;
                const float ds = a.dl[b * 8] * qw->q->scales[g];
                for (int l = 0; l < 8; l++) {
                    int32_t sum = 0;
                    for (int i = 0; i < 4; i++) {
                        const int p = 4 * l + i;
                        const int64_t k = b * ANVIL_CPU_QB + anvil_cpu_quant_kmap(DT, p);
                        sum += (int32_t)a.q[b * ANVIL_CPU_QB + p] * ((int32_t)anvil_cpu_quant_raw(qw, n + r, k) - z);
                    }
                    float *lane = &acc.f[(b % 2) * 8 + l];
                    *lane = fmaf(ds, (float)sum, *lane);
                }
            }
            m->out[(t + j) * N + n + r] = anvil_cpu_qmm_out(m, n + r, v_reduce(acc));
        }
}

#define QFN
#define QI_ENTRY anvil_cpu_qmm_scalar
#include "backend/cpu/cpu_quant_tmpl.h"
