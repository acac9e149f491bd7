/*
 * cpu_gemm_avx2.h: the AVX2 GEMM tile over a converted f32 panel, in two
 * half passes. Include from cpu_kernels_avx2.c only, after cpu_vec_avx2.h.
 *
 * An output's dot16 keeps 16 lanes (docs/cpu-backend.md, "Batch
 * invariance"); on AVX2 they are two ymm, so the generic tile holds two
 * registers per output and, with 16 ymm, fits only 2 rows x 3 tokens,
 * loading x twice (10 loads per 12 FMAs). But lanes 0-7 and 8-15 never
 * meet before the final reduction: this tile runs lanes 0-7 of every
 * output over the whole k range, parks them, then lanes 8-15, so one ymm
 * per output holds 4 tokens x 3 rows (12 accumulators + 3 panel rows + 1
 * x), 7 loads per 12 FMAs. Each lane sees the same fma sequence as in the
 * generic tile and the parked halves are reduced by the same v_reduce, so
 * the bits are those of every other path.
 */
#ifndef ANVIL_BACKEND_CPU_GEMM_AVX2_H
#define ANVIL_BACKEND_CPU_GEMM_AVX2_H

#define GEMM_AVX2_TT 4
#define GEMM_AVX2_NT 3

/* out[t, n] for t < 4, n < 3: x rows at stride ldx; panel rows at stride kp
 * (a multiple of 16, zero-padded past K); bias[n] or NULL. */
/* k elements per block: both halves of a block run while its x and panel
 * chunks (4 + 3 rows of 2 KiB) are in L1, so each line comes from L2 once */
#define GEMM_AVX2_KB 512

#define GEMM_AVX2_FMA_ROW(A0, A1, A2, XP, LOAD)                                                               \
    do {                                                                                                      \
        const __m256 a_ = LOAD;                                                                               \
        (void)(XP);                                                                                           \
        A0 = _mm256_fmadd_ps(a_, b0, A0);                                                                     \
        A1 = _mm256_fmadd_ps(a_, b1, A1);                                                                     \
        A2 = _mm256_fmadd_ps(a_, b2, A2);                                                                     \
    } while (0)

/* out[t, n] for t < 4, n < 3: x rows at stride ldx; panel rows at stride kp
 * (a multiple of 16, zero-padded past K); bias[n] or NULL. */
static VEC_FN void mm_panel_tile_4x3_avx2(const float *x, int64_t ldx, const float *panel, int64_t kp, int64_t K,
                                          float *out, int64_t ldo, const float *bias)
{
    /* the lanes of every output between blocks: [t][n][16] */
    float part[GEMM_AVX2_TT][GEMM_AVX2_NT][16] __attribute__((aligned(32)));
    memset(part, 0, sizeof part);
    const int64_t k16 = K / 16 * 16;
    const int r = (int)(K - k16);
    for (int64_t kb = 0; kb < k16 || (kb == k16 && r > 0); kb += GEMM_AVX2_KB) {
        const int64_t ke = kb + GEMM_AVX2_KB < k16 ? kb + GEMM_AVX2_KB : k16;
        const int tail = ke == k16 && r > 0; /* this block ends with the zero-filled last chunk */
        for (int h = 0; h < 2; h++) {
            const float *w0 = panel + 8 * h, *w1 = w0 + kp, *w2 = w1 + kp;
            const float *x0 = x + 8 * h, *x1 = x0 + ldx, *x2 = x1 + ldx, *x3 = x2 + ldx;
            __m256 a00 = _mm256_load_ps(&part[0][0][8 * h]), a01 = _mm256_load_ps(&part[0][1][8 * h]);
            __m256 a02 = _mm256_load_ps(&part[0][2][8 * h]), a10 = _mm256_load_ps(&part[1][0][8 * h]);
            __m256 a11 = _mm256_load_ps(&part[1][1][8 * h]), a12 = _mm256_load_ps(&part[1][2][8 * h]);
            __m256 a20 = _mm256_load_ps(&part[2][0][8 * h]), a21 = _mm256_load_ps(&part[2][1][8 * h]);
            __m256 a22 = _mm256_load_ps(&part[2][2][8 * h]), a30 = _mm256_load_ps(&part[3][0][8 * h]);
            __m256 a31 = _mm256_load_ps(&part[3][1][8 * h]), a32 = _mm256_load_ps(&part[3][2][8 * h]);
            for (int64_t k = kb; k < ke; k += 16) {
                const __m256 b0 = _mm256_load_ps(w0 + k), b1 = _mm256_load_ps(w1 + k), b2 = _mm256_load_ps(w2 + k);
                GEMM_AVX2_FMA_ROW(a00, a01, a02, x0, _mm256_loadu_ps(x0 + k));
                GEMM_AVX2_FMA_ROW(a10, a11, a12, x1, _mm256_loadu_ps(x1 + k));
                GEMM_AVX2_FMA_ROW(a20, a21, a22, x2, _mm256_loadu_ps(x2 + k));
                GEMM_AVX2_FMA_ROW(a30, a31, a32, x3, _mm256_loadu_ps(x3 + k));
            }
            if (tail) {
                /* the last chunk, zero-filled past K on both sides as v_load_n
                 * and the padded panel give it in the generic tile */
                const int nh = r - 8 * h < 0 ? 0 : r - 8 * h > 8 ? 8 : r - 8 * h;
                const __m256i m = v_mask8(nh);
                const __m256 b0 = _mm256_load_ps(w0 + k16), b1 = _mm256_load_ps(w1 + k16),
                             b2 = _mm256_load_ps(w2 + k16);
                GEMM_AVX2_FMA_ROW(a00, a01, a02, x0, _mm256_maskload_ps(x0 + k16, m));
                GEMM_AVX2_FMA_ROW(a10, a11, a12, x1, _mm256_maskload_ps(x1 + k16, m));
                GEMM_AVX2_FMA_ROW(a20, a21, a22, x2, _mm256_maskload_ps(x2 + k16, m));
                GEMM_AVX2_FMA_ROW(a30, a31, a32, x3, _mm256_maskload_ps(x3 + k16, m));
            }
            _mm256_store_ps(&part[0][0][8 * h], a00);
            _mm256_store_ps(&part[0][1][8 * h], a01);
            _mm256_store_ps(&part[0][2][8 * h], a02);
            _mm256_store_ps(&part[1][0][8 * h], a10);
            _mm256_store_ps(&part[1][1][8 * h], a11);
            _mm256_store_ps(&part[1][2][8 * h], a12);
            _mm256_store_ps(&part[2][0][8 * h], a20);
            _mm256_store_ps(&part[2][1][8 * h], a21);
            _mm256_store_ps(&part[2][2][8 * h], a22);
            _mm256_store_ps(&part[3][0][8 * h], a30);
            _mm256_store_ps(&part[3][1][8 * h], a31);
            _mm256_store_ps(&part[3][2][8 * h], a32);
        }
        if (tail)
            break;
    }
    for (int t = 0; t < GEMM_AVX2_TT; t++)
        for (int n = 0; n < GEMM_AVX2_NT; n++) {
            const float s = v_reduce(v_load(part[t][n]));
            out[t * ldo + n] = bias != NULL ? s + bias[n] : s;
        }
}

#endif
