/*
 * cpu_quant_tmpl.h: the int path's driver (cpu_quant.h) over one ISA's
 * tile, included by cpu_quant_{scalar,avx2,avx512}.c.
 *
 * Before including, define:
 *   QFN        the function attribute of the ISA (target), or nothing
 *   QI_ENTRY   the name of the entry point (an anvil_cpu_qmm_fn)
 * and an always-inline
 *   q_tile(const int R, const int TT, const anvil_dtype DT,
 *          const anvil_cpu_qmm *m, int64_t n, int64_t t)
 * computing out[t + j, n + r] for r < R, j < TT by the definition of
 * cpu_quant.h. The tiling only decides which outputs are computed
 * together, never how one is (batch and thread-count invariance).
 *
 * Order: per block of QI_TB tokens (their int8 activations stay in L2),
 * per 4 weight rows (they stay in L1), every 4-token tile of the block.
 * Decode (T <= 2) runs 4 and 2 rows at once: memory-level parallelism.
 */

#define QI_TB 64

#define QI_INST(R, TT, DTN, DT)                                                                          \
    static QFN void q_tile_##R##_##TT##_##DTN(const anvil_cpu_qmm *m, int64_t n, int64_t t)             \
    {                                                                                                    \
        q_tile(R, TT, DT, m, n, t);                                                                      \
    }
#define QI_INST_D(R, TT) QI_INST(R, TT, u4, ANVIL_DTYPE_U4) QI_INST(R, TT, i8, ANVIL_DTYPE_I8)
QI_INST_D(4, 1)
QI_INST_D(2, 2)
QI_INST_D(1, 1)
QI_INST_D(1, 2)
QI_INST_D(1, 3)
QI_INST_D(1, 4)

typedef void (*q_tile_fn)(const anvil_cpu_qmm *m, int64_t n, int64_t t);
/* [u4, i8][tokens - 1]: the tile of many rows, and of one */
static const q_tile_fn q_wide[2][4] = {{q_tile_4_1_u4, q_tile_2_2_u4, q_tile_1_3_u4, q_tile_1_4_u4},
                                       {q_tile_4_1_i8, q_tile_2_2_i8, q_tile_1_3_i8, q_tile_1_4_i8}};
static const q_tile_fn q_one[2][4] = {{q_tile_1_1_u4, q_tile_1_2_u4, q_tile_1_3_u4, q_tile_1_4_u4},
                                      {q_tile_1_1_i8, q_tile_1_2_i8, q_tile_1_3_i8, q_tile_1_4_i8}};
static const int q_rows[4] = {4, 2, 1, 1};

QFN void QI_ENTRY(const anvil_cpu_qmm *m, int64_t t0, int64_t t1, int64_t n0, int64_t n1)
{
    const int di = m->qw.dt == ANVIL_DTYPE_U4 ? 0 : 1;
    for (int64_t tb = t0; tb < t1; tb += QI_TB) {
        const int64_t te = t1 - tb < QI_TB ? t1 : tb + QI_TB;
        for (int64_t n = n0; n < n1; n += 4) {
            const int64_t nr = n1 - n < 4 ? n1 - n : 4;
            for (int64_t t = tb; t < te; t += 4) {
                const int tt = te - t < 4 ? (int)(te - t) : 4, R = q_rows[tt - 1];
                int64_t r = 0;
                for (; r + R <= nr; r += R)
                    q_wide[di][tt - 1](m, n + r, t);
                for (; r < nr; r++)
                    q_one[di][tt - 1](m, n + r, t);
            }
        }
    }
}
