/*
 * cpu_matmul_tmpl.h: the matmul kernels, written once against the 16-lane
 * primitives of cpu_vec_*.h and instantiated per ISA by cpu_kernels_*.c.
 *
 * Before including, define:
 *   MM_GEMV_ROWS    weight rows per GEMV tile (streamed straight from w)
 *   MM_GEMV_ROWS_T2 the same when T <= 2 (more rows in flight: memory-level
 *                   parallelism is what a decode GEMV lives on)
 *   MM_GEMM_ROWS    weight rows per converted GEMM panel
 *   MM_GEMM_TOKENS  tokens per GEMM tile (<= 4)
 *   MM_ENTRY        the name of the entry point (an anvil_cpu_mm_fn)
 * and optionally:
 *   MM_GEMM_DRIVER  a function (m, t0, t1, n0, n1, scratch) for T > 8 in
 *                   place of the generic panel GEMM, with the same
 *                   arithmetic (AVX2's k-blocked one, cpu_gemm_avx2.h)
 *   MM_L2_BYTES     the L2 cache of one core (default 2 MiB): a token
 *                   block's x rows take half of it
 *
 * Every output element, on every path, is
 *     acc[16] = +0; for each 16-wide chunk c of k (the last one zero-padded):
 *         acc[l] = fma(x[c + l], w[c + l], acc[l]);
 *     out = v_reduce(acc) (+ bias)
 * so the tiling below only decides which elements are computed together,
 * never how one is computed (batch invariance).
 */

#define MM_TT_MAX 4
#define MM_MAX2(a, b) ((a) > (b) ? (a) : (b))
#define MM_NT_MAX MM_MAX2(MM_MAX2(MM_GEMV_ROWS, MM_GEMV_ROWS_T2), MM_GEMM_ROWS)

/* out[t, n] for t < TT, n < NT: x rows at stride ldx, w rows at stride ldw
 * elements, bias[n] (floats) or NULL. TT, NT and DT are constants after
 * inlining, so the accumulators live in registers. */
VEC_INLINE void mm_tile(const int TT, const int NT, const anvil_dtype DT, const float *x, int64_t ldx,
                        const void *w, int64_t ldw, int64_t K, float *out, int64_t ldo, const float *bias,
                        const void *pf)
{
    const int64_t esz = DT == ANVIL_DTYPE_F32 ? 4 : 2;
    vec16 acc[MM_TT_MAX][MM_NT_MAX];
VEC_UNROLL
    for (int t = 0; t < TT; t++)
VEC_UNROLL
        for (int n = 0; n < NT; n++)
            acc[t][n] = v_zero();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        vec16 wv[MM_NT_MAX];
        /* pf: the rows the caller streams next; asking for them one tile
         * ahead keeps more lines in flight than the hardware prefetcher,
         * which stops at every 4 KiB page (a 2048-wide bf16 row is one). */
        if (pf != NULL && (esz == 4 || (k & 31) == 0)) {
VEC_UNROLL
            for (int n = 0; n < NT; n++)
                __builtin_prefetch((const char *)pf + (n * ldw + k) * esz, 0, 3);
        }
VEC_UNROLL
        for (int n = 0; n < NT; n++)
            wv[n] = v_load_w(w, n * ldw + k, DT);
VEC_UNROLL
        for (int t = 0; t < TT; t++) {
            vec16 xv = v_load(x + t * ldx + k);
VEC_UNROLL
            for (int n = 0; n < NT; n++)
                acc[t][n] = v_fma(xv, wv[n], acc[t][n]);
        }
    }
    if (k < K) {
        int r = (int)(K - k);
        vec16 wv[MM_NT_MAX];
VEC_UNROLL
        for (int n = 0; n < NT; n++)
            wv[n] = v_load_w_n(w, n * ldw + k, r, DT);
VEC_UNROLL
        for (int t = 0; t < TT; t++) {
            vec16 xv = v_load_n(x + t * ldx + k, r);
VEC_UNROLL
            for (int n = 0; n < NT; n++)
                acc[t][n] = v_fma(xv, wv[n], acc[t][n]);
        }
    }
VEC_UNROLL
    for (int t = 0; t < TT; t++)
VEC_UNROLL
        for (int n = 0; n < NT; n++) {
            float s = v_reduce(acc[t][n]);
            out[t * ldo + n] = bias != NULL ? s + bias[n] : s;
        }
}

typedef void (*mm_tile_fn)(const float *x, int64_t ldx, const void *w, int64_t ldw, int64_t K, float *out,
                           int64_t ldo, const float *bias, const void *pf);

#define MM_INST(TT, NT, DTN, DT)                                                                            \
    static VEC_FN void mm_tile_##TT##_##NT##_##DTN(const float *x, int64_t ldx, const void *w, int64_t ldw,   \
                                                    int64_t K, float *out, int64_t ldo, const float *bias,   \
                                                    const void *pf)                                          \
    {                                                                                                       \
        mm_tile(TT, NT, DT, x, ldx, w, ldw, K, out, ldo, bias, pf);                                         \
    }
#define MM_INST_T(NT, DTN, DT) MM_INST(1, NT, DTN, DT) MM_INST(2, NT, DTN, DT) MM_INST(3, NT, DTN, DT) \
    MM_INST(4, NT, DTN, DT)
#define MM_INST_D(NT) MM_INST_T(NT, f32, ANVIL_DTYPE_F32) MM_INST_T(NT, bf16, ANVIL_DTYPE_BF16) \
    MM_INST_T(NT, f16, ANVIL_DTYPE_F16)

/* streamed tiles: [dtype][tokens - 1], MM_GEMV_ROWS rows and 1 row */
MM_INST_D(MM_GEMV_ROWS)
#if MM_GEMV_ROWS != 1
MM_INST_D(1)
#endif
#define MM_INST_T2(NT, DTN, DT) MM_INST(1, NT, DTN, DT) MM_INST(2, NT, DTN, DT)
#if MM_GEMV_ROWS_T2 != MM_GEMV_ROWS
MM_INST_T2(MM_GEMV_ROWS_T2, f32, ANVIL_DTYPE_F32)
MM_INST_T2(MM_GEMV_ROWS_T2, bf16, ANVIL_DTYPE_BF16)
MM_INST_T2(MM_GEMV_ROWS_T2, f16, ANVIL_DTYPE_F16)
#endif
/* panel tiles (f32 panel) */
#if MM_GEMM_ROWS != MM_GEMV_ROWS && MM_GEMM_ROWS != 1 && !defined(MM_GEMM_DRIVER)
MM_INST_T(MM_GEMM_ROWS, f32, ANVIL_DTYPE_F32)
#endif

#define MM_CAT_(a, b, c, d) mm_tile_##a##_##b##_##c
#define MM_NAME(TT, NT, DTN) MM_CAT_(TT, NT, DTN, 0)
#define MM_ROW_T(NT, DTN) {MM_NAME(1, NT, DTN), MM_NAME(2, NT, DTN), MM_NAME(3, NT, DTN), MM_NAME(4, NT, DTN)}

static const mm_tile_fn mm_tiles_wide[3][4] = {MM_ROW_T(MM_GEMV_ROWS, f32), MM_ROW_T(MM_GEMV_ROWS, bf16),
                                               MM_ROW_T(MM_GEMV_ROWS, f16)};
static const mm_tile_fn mm_tiles_one[3][4] = {MM_ROW_T(1, f32), MM_ROW_T(1, bf16), MM_ROW_T(1, f16)};
#define MM_ROW_T2(NT, DTN) {MM_NAME(1, NT, DTN), MM_NAME(2, NT, DTN)}
static const mm_tile_fn mm_tiles_t2[3][2] = {MM_ROW_T2(MM_GEMV_ROWS_T2, f32), MM_ROW_T2(MM_GEMV_ROWS_T2, bf16),
                                             MM_ROW_T2(MM_GEMV_ROWS_T2, f16)};
#ifndef MM_GEMM_DRIVER
static const mm_tile_fn mm_tiles_panel[4] = MM_ROW_T(MM_GEMM_ROWS, f32);
#endif

static int mm_dt_index(anvil_dtype dt) { return dt == ANVIL_DTYPE_F32 ? 0 : dt == ANVIL_DTYPE_BF16 ? 1 : 2; }

/* The bias values of rows [n, n + nr) as floats, or NULL. */
static const float *mm_bias(const anvil_cpu_mm *m, int64_t n, int64_t nr, float *buf)
{
    if (m->bias == NULL)
        return NULL;
    for (int64_t i = 0; i < nr; i++)
        buf[i] = anvil_cpu_load_elem(m->bias, m->bias_dt, n + i);
    return buf;
}

/* Few tokens: memory-bound. Each weight row is read from memory once: the
 * tile of rows stays in L1/L2 while the token blocks pass. */
static VEC_FN void mm_gemv(const anvil_cpu_mm *m, int64_t t0, int64_t t1, int64_t n0, int64_t n1)
{
    int di = mm_dt_index(m->wdt);
    size_t esz = anvil_dtype_size(m->wdt);
    int64_t K = m->K, N = m->N;
    float bbuf[MM_NT_MAX];
    int64_t n = n0;
    if (t1 - t0 <= 2) {
        for (; n + MM_GEMV_ROWS_T2 <= n1; n += MM_GEMV_ROWS_T2) {
            const float *b = mm_bias(m, n, MM_GEMV_ROWS_T2, bbuf);
            const void *w = (const char *)m->w + (size_t)n * (size_t)K * esz;
            const void *pf = n + 2 * MM_GEMV_ROWS_T2 <= n1 ? (const char *)w + (size_t)MM_GEMV_ROWS_T2 * K * esz : NULL;
            mm_tiles_t2[di][t1 - t0 - 1](m->x + t0 * K, K, w, K, K, m->out + t0 * N + n, N, b, pf);
        }
    }
    for (; n + MM_GEMV_ROWS <= n1; n += MM_GEMV_ROWS) {
        const float *b = mm_bias(m, n, MM_GEMV_ROWS, bbuf);
        const void *w = (const char *)m->w + (size_t)n * (size_t)K * esz;
        const void *pf = n + 2 * MM_GEMV_ROWS <= n1 ? (const char *)w + (size_t)MM_GEMV_ROWS * K * esz : NULL;
        for (int64_t t = t0; t < t1; t += MM_TT_MAX) {
            int tt = t1 - t < MM_TT_MAX ? (int)(t1 - t) : MM_TT_MAX;
            mm_tiles_wide[di][tt - 1](m->x + t * K, K, w, K, K, m->out + t * N + n, N, b, t == t0 ? pf : NULL);
        }
    }
    for (; n < n1; n++) {
        const float *b = mm_bias(m, n, 1, bbuf);
        const void *w = (const char *)m->w + (size_t)n * (size_t)K * esz;
        for (int64_t t = t0; t < t1; t += MM_TT_MAX) {
            int tt = t1 - t < MM_TT_MAX ? (int)(t1 - t) : MM_TT_MAX;
            mm_tiles_one[di][tt - 1](m->x + t * K, K, w, K, K, m->out + t * N + n, N, b, NULL);
        }
    }
}

#ifndef MM_GEMM_DRIVER
/* The panel's row stride: K rounded up to 16, plus one cache line when
 * that is a multiple of 4 KiB, so the panel rows do not all fall into the
 * same L1 sets. */
static int64_t mm_panel_ld(int64_t K)
{
    int64_t kp = (K + 15) / 16 * 16;
    return (kp * 4) % 4096 == 0 ? kp + 16 : kp;
}

/* Converts weight rows [n, n + nr) into an f32 panel with row stride kp
 * (a multiple of 16), zero-padded: loads from it then never need masks on
 * the weight side and give the same zero lanes as a masked load would. */
static VEC_FN void mm_convert_panel(const anvil_cpu_mm *m, int64_t n, int64_t nr, int64_t kp, float *panel)
{
    int64_t K = m->K;
    for (int64_t r = 0; r < nr; r++) {
        int64_t base = (n + r) * K, k = 0;
        float *dst = panel + r * kp;
        switch (m->wdt) {
        case ANVIL_DTYPE_BF16:
            for (; k + 16 <= K; k += 16)
                v_store(dst + k, v_load_w(m->w, base + k, ANVIL_DTYPE_BF16));
            if (k < K)
                v_store(dst + k, v_load_w_n(m->w, base + k, (int)(K - k), ANVIL_DTYPE_BF16));
            break;
        case ANVIL_DTYPE_F16:
            for (; k + 16 <= K; k += 16)
                v_store(dst + k, v_load_w(m->w, base + k, ANVIL_DTYPE_F16));
            if (k < K)
                v_store(dst + k, v_load_w_n(m->w, base + k, (int)(K - k), ANVIL_DTYPE_F16));
            break;
        default:
            for (; k + 16 <= K; k += 16)
                v_store(dst + k, v_load_w(m->w, base + k, ANVIL_DTYPE_F32));
            if (k < K)
                v_store(dst + k, v_load_w_n(m->w, base + k, (int)(K - k), ANVIL_DTYPE_F32));
            break;
        }
    }
}

/* Tokens per block that share one converted panel: enough x rows to fill
 * about half of L2 (x is re-read from there for every panel). A K-blocked
 * variant (accumulators parked between k chunks so the panel chunk stays
 * in L1) measured no faster on Sapphire Rapids, so the tile runs over the
 * whole k range. */
#ifndef MM_L2_BYTES
#define MM_L2_BYTES (2 << 20)
#endif
static int64_t mm_token_block(int64_t K)
{
    int64_t tb = (int64_t)(MM_L2_BYTES / 2) / (K * 4);
    tb = tb / MM_GEMM_TOKENS * MM_GEMM_TOKENS;
    return tb < MM_GEMM_TOKENS * 4 ? MM_GEMM_TOKENS * 4 : tb;
}

/* Many tokens: compute-bound. A panel of MM_GEMM_ROWS weight rows is
 * converted to f32 once per token block and reused from cache by every
 * MM_GEMM_TOKENS-token tile of the block. */
static VEC_FN void mm_gemm(const anvil_cpu_mm *m, int64_t t0, int64_t t1, int64_t n0, int64_t n1, float *panel)
{
    int64_t K = m->K, N = m->N, kp = mm_panel_ld(K);
    int64_t tb = mm_token_block(K);
    float bbuf[MM_NT_MAX];
    for (int64_t tb0 = t0; tb0 < t1; tb0 += tb) {
        int64_t tb1 = tb0 + tb < t1 ? tb0 + tb : t1;
        for (int64_t n = n0; n < n1; n += MM_GEMM_ROWS) {
            int64_t nr = n1 - n < MM_GEMM_ROWS ? n1 - n : MM_GEMM_ROWS;
            mm_convert_panel(m, n, nr, kp, panel);
            const float *b = mm_bias(m, n, nr, bbuf);
            int64_t t = tb0;
            if (nr == MM_GEMM_ROWS) {
                for (; t + MM_GEMM_TOKENS <= tb1; t += MM_GEMM_TOKENS)
                    mm_tiles_panel[MM_GEMM_TOKENS - 1](m->x + t * K, K, panel, kp, K, m->out + t * N + n, N, b, NULL);
                for (; t < tb1; t++)
                    mm_tiles_panel[0](m->x + t * K, K, panel, kp, K, m->out + t * N + n, N, b, NULL);
            } else {
                for (int64_t r = 0; r < nr; r++) {
                    const float *br = b != NULL ? b + r : NULL;
                    for (t = tb0; t < tb1; t += MM_TT_MAX) {
                        int tt = tb1 - t < MM_TT_MAX ? (int)(tb1 - t) : MM_TT_MAX;
                        mm_tiles_one[0][tt - 1](m->x + t * K, K, panel + r * kp, kp, K, m->out + t * N + n + r,
                                                N, br, NULL);
                    }
                }
            }
        }
    }
}

#endif /* MM_GEMM_DRIVER */

static VEC_FN void MM_ENTRY(const anvil_cpu_mm *m, int64_t t0, int64_t t1, int64_t n0, int64_t n1, float *scratch)
{
    if (t1 - t0 <= MM_GEMV_MAX_T)
        mm_gemv(m, t0, t1, n0, n1);
    else
#ifdef MM_GEMM_DRIVER
        MM_GEMM_DRIVER(m, t0, t1, n0, n1, scratch);
#else
        mm_gemm(m, t0, t1, n0, n1, scratch);
#endif
}
