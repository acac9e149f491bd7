/*
 * sample_rows: the sampler's pick (anvil_sampler_pick, src/sampler/sampler.c)
 * on the device, a block per logits row, so a sampling step downloads one
 * id per row. Each row comes as an anvil_sample_draw (sampler/sampler.h):
 * what can be computed once on the host is, and is used as given here (the
 * greedy decision, 1 / temperature, logf(min_p), the uniform u). The kernel
 * repeats the pick's steps, and tests/cuda/test_cuda_sample.c holds it to
 * anvil_sampler_pick row by row:
 *
 *   a row holding a NaN or +inf, or nothing above -inf, gives -1 and uses
 *   no draw (the runtime's guard against a damaged model).
 *   greedy (draw.greedy): the argmax of the raw row with the host scan's
 *   rules (`>`, the lowest column).
 *   Else l_i = x_i * inv_temperature over the finite x_i; min-p keeps
 *   l_i >= max + log_min_p; top-k keeps the k first in the order "logit
 *   descending, then id ascending"; when top-k cut or top_p < 1 the
 *   survivors are taken in that order, else in id order; p_i =
 *   expf(l_i - max); top-p keeps the shortest prefix whose mass reaches
 *   top_p * sum; the token is the first whose running sum exceeds u * sum.
 *
 * Same float math: every product and sum is an explicit _rn intrinsic (no
 * FMA contraction where the host has none), and expf is glibc's (the
 * ARM optimized-routines algorithm: 2^(k/32) table, cubic in double, with
 * the FMAs of glibc's x86-64 FMA build), checked equal to glibc 2.36's
 * expf on every float in [-104, 0]. What differs is the order of the double
 * sums (the host adds sequentially; the device in trees): the running sums
 * differ by a few ulps of a double, so the token can differ only where u *
 * sum or top_p * sum lies within ~1e-12 (relative) of a running sum.
 *
 * How, without sorting a vocabulary: an element's place in the order is
 * the 64-bit `ord` = (monotone key of l) << 32 | (0x7fffffff - id), larger
 * first. A radix descent over ord (2048-bin shared histograms, 11/11/10
 * bits of the key, then of the id for ties) finds a bound above which lie
 * between `want` and `cap` (4096) candidates, usually after one or two
 * passes; those are compacted into shared memory and bitonic-sorted, and
 * the prefix sums run there. Top-k up to 4096 is one such chunk. Larger
 * sets (top-p over the whole vocabulary, big top-k) first get their exact
 * boundary and total mass, then are streamed chunk by chunk in order until
 * the top-p and draw crossings are found (usually in the first chunk). The
 * unsorted case (temperature alone, min-p) is one pass of prefix sums in id
 * order over groups, then a rescan of the one group where u * sum falls.
 *
 * A row with a mask (a grammar's allowed tokens) first has its disallowed
 * logits set to -inf in place by the mask kernel at the end of the file.
 */
#include <math.h>

#include "backend/cuda/cuda_common.cuh"

#define SR_THREADS 1024
#define SR_WARPS (SR_THREADS / 32)
#define SR_CAP 4096 /* elements in a shared-memory chunk */
#define SR_PER (SR_CAP / SR_THREADS)
#define SR_BINS 2048
#define SR_MAX_GROUPS SR_CAP
#define SR_MAX_COLS (SR_MAX_GROUPS * 32 * 4) /* the f32 group is 128 elements */

typedef unsigned long long u64;

/* 2^(i/32) with i << 47 subtracted, so that adding k << 47 installs 2^(k/32) */
__device__ const u64 sr_exp2_tab[32] = {
    0x3ff0000000000000ull, 0x3fefd9b0d3158574ull, 0x3fefb5586cf9890full, 0x3fef9301d0125b51ull,
    0x3fef72b83c7d517bull, 0x3fef54873168b9aaull, 0x3fef387a6e756238ull, 0x3fef1e9df51fdee1ull,
    0x3fef06fe0a31b715ull, 0x3feef1a7373aa9cbull, 0x3feedea64c123422ull, 0x3feece086061892dull,
    0x3feebfdad5362a27ull, 0x3feeb42b569d4f82ull, 0x3feeab07dd485429ull, 0x3feea47eb03a5585ull,
    0x3feea09e667f3bcdull, 0x3fee9f75e8ec5f74ull, 0x3feea11473eb0187ull, 0x3feea589994cce13ull,
    0x3feeace5422aa0dbull, 0x3feeb737b0cdc5e5ull, 0x3feec49182a3f090ull, 0x3feed503b23e255dull,
    0x3feee89f995ad3adull, 0x3feeff76f2fb5e47ull, 0x3fef199bdd85529cull, 0x3fef3720dcef9069ull,
    0x3fef5818dcfba487ull, 0x3fef7c97337b9b5full, 0x3fefa4afa2a490daull, 0x3fefd0765b6e4540ull,
};

struct sr_shared {
    union {
        u64 ord[SR_CAP];           /* a chunk of candidates, sorted by ord descending */
        double gsum[SR_MAX_GROUPS]; /* unsorted case: group sums, then their running sums */
        u64 mass[SR_BINS];         /* sr_locate: approximate mass per bin */
    } buf;
    unsigned hist[SR_BINS];
    u64 tab[32];
    double dscan[SR_WARPS + 1];
    unsigned uscan[SR_WARPS + 1];
    float fred[SR_WARPS];
    int ired[SR_WARPS];
    int ired2[SR_WARPS];
    double bcast_d;
    int bcast_i;
    unsigned cnt;
    int sel_bin;
    unsigned sel_before, sel_hist;
};

/* What the candidate test needs. */
struct sr_row {
    float inv_t;
    float mx;        /* the largest scaled logit */
    unsigned thr;    /* min-p: keys below are out (0: none) */
};

/* ---------------------------------------------------------------- elements */

/* A monotone unsigned key of a non-NaN float; -0 and +0 share one. */
__device__ __forceinline__ unsigned sr_key(float l)
{
    const unsigned u = __float_as_uint(l == 0.0f ? 0.0f : l);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float sr_val(unsigned k)
{
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__device__ __forceinline__ u64 sr_ord(unsigned key, int id) { return ((u64)key << 32) | (unsigned)(0x7fffffff - id); }
__device__ __forceinline__ int sr_id(u64 o) { return 0x7fffffff - (int)(unsigned)o; }

/* glibc's expf (see the top of the file); x <= 0 here */
__device__ __forceinline__ float sr_expf(float x, const u64 *tab)
{
    if (x < -0x1.9fe368p6f) /* below log(2^-150): glibc underflows to 0 */
        return 0.0f;
    const double inv_ln2_n = 0x1.71547652b82fep+0 * 32, shift = 0x1.8p+52;
    const double c0 = 0x1.c6af84b912394p-5 / 32 / 32 / 32, c1 = 0x1.ebfce50fac4f3p-3 / 32 / 32,
                 c2 = 0x1.62e42ff0c52d6p-1 / 32;
    const double xd = (double)x;
    double kd = __fma_rn(inv_ln2_n, xd, shift);
    const u64 ki = (u64)__double_as_longlong(kd);
    kd = __dsub_rn(kd, shift);
    const double r = __fma_rn(inv_ln2_n, xd, -kd);
    const double s = __longlong_as_double((long long)(tab[ki & 31] + (ki << 47)));
    const double z = __fma_rn(c0, r, c1);
    const double r2 = __dmul_rn(r, r);
    double y = __fma_rn(c2, r, 1.0);
    y = __fma_rn(z, r2, y);
    return __double2float_rn(__dmul_rn(y, s));
}

/* Candidate test: a finite logit whose scaled value passes min-p. */
__device__ __forceinline__ bool sr_cand(const sr_row &R, float x, float &l, unsigned &key)
{
    if (!(x > -INFINITY))
        return false;
    l = __fmul_rn(x, R.inv_t);
    if (l != l) /* 0 * inf: only with absurd temperatures */
        return false;
    key = sr_key(l);
    return key >= R.thr;
}

__device__ __forceinline__ float sr_prob(const sr_row &R, float l, const u64 *tab)
{
    return sr_expf(__fsub_rn(l, R.mx), tab);
}

template <typename T> struct sr_vec {
    static constexpr int E = 16 / (int)sizeof(T); /* elements per lane: one 16-byte load */
};

/* Elements base .. base + E - 1 of the row as floats; NaN past the end
 * (never a candidate, never an argmax). */
template <typename T>
__device__ __forceinline__ void sr_load(const T *row, int n, bool vec, int base, float (&v)[sr_vec<T>::E])
{
    constexpr int E = sr_vec<T>::E;
    if (vec && base + E <= n) {
        anvil_load_vec<T, E>(row + base, v);
    } else {
#pragma unroll
        for (int j = 0; j < E; j++)
            v[j] = base + j < n ? anvil_to_f32(row[base + j]) : __int_as_float(0x7fc00000);
    }
}

/* f(id, x) for every element: warp w takes groups w, w + 32, ... of 32 * E
 * elements, lane l the E consecutive ones at l * E. The loop is uniform
 * across a warp, so f may use warp collectives. */
template <typename T, typename F> __device__ __forceinline__ void sr_each(const T *row, int n, bool vec, F &&f)
{
    constexpr int E = sr_vec<T>::E;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int ng = (n + 32 * E - 1) / (32 * E);
    for (int g = warp; g < ng; g += SR_WARPS) {
        const int base = g * 32 * E + lane * E;
        float v[E];
        sr_load<T>(row, n, vec, base, v);
#pragma unroll
        for (int j = 0; j < E; j++)
            f(base + j, v[j]);
    }
}

/* ---------------------------------------------------------------- block collectives (all threads call) */

template <typename V> __device__ __forceinline__ V sr_warp_incl_scan(V v)
{
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const V t = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o)
            v = v + t;
    }
    return v;
}

/* Exclusive prefix of v over the threads in order; *total the sum. ws has
 * SR_WARPS + 1 entries. A fixed order of additions: deterministic. */
template <typename V> __device__ V sr_block_excl_scan(V v, V *ws, V *total)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const V inc = sr_warp_incl_scan(v);
    V ex = __shfl_up_sync(0xffffffffu, inc, 1);
    if (lane == 0)
        ex = V(0);
    if (lane == 31)
        ws[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        const V w = ws[lane];
        const V wi = sr_warp_incl_scan(w);
        V we = __shfl_up_sync(0xffffffffu, wi, 1);
        if (lane == 0)
            we = V(0);
        __syncwarp();
        ws[lane] = we;
        if (lane == 31)
            ws[SR_WARPS] = wi;
    }
    __syncthreads();
    const V r = ws[warp] + ex;
    *total = ws[SR_WARPS];
    __syncthreads();
    return r;
}

__device__ double sr_block_sum_d(double v, double *ws)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = v + __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0)
        ws[threadIdx.x >> 5] = v;
    __syncthreads();
    double s = 0.0;
    for (int w = 0; w < SR_WARPS; w++)
        s = s + ws[w];
    __syncthreads();
    return s;
}

/* op 0: min, 1: max, 2: sum */
__device__ int sr_block_int(int v, int op, int *ws)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const int t = __shfl_xor_sync(0xffffffffu, v, o);
        v = op == 0 ? min(v, t) : op == 1 ? max(v, t) : v + t;
    }
    if ((threadIdx.x & 31) == 0)
        ws[threadIdx.x >> 5] = v;
    __syncthreads();
    int s = ws[0];
    for (int w = 1; w < SR_WARPS; w++)
        s = op == 0 ? min(s, ws[w]) : op == 1 ? max(s, ws[w]) : s + ws[w];
    __syncthreads();
    return s;
}

__device__ float sr_block_max_f(float v, float *ws)
{
    v = anvil_warp_max(v);
    if ((threadIdx.x & 31) == 0)
        ws[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = ws[0];
    for (int w = 1; w < SR_WARPS; w++)
        s = fmaxf(s, ws[w]);
    __syncthreads();
    return s;
}

/* ---------------------------------------------------------------- order statistics */

/*
 * Radix descent over ord among the candidates with ord in [lo, hi): returns
 * a bound b >= lo such that the candidates with ord in [b, hi) are the
 * first *cnt of that range in the order, want <= *cnt <= cap (or all of
 * them, when fewer than want exist). want >= 1, cap >= want. With cap ==
 * want the bound is exact (the want-th element's ord).
 */
template <typename T>
__device__ u64 sr_descend(sr_shared &sh, const T *row, int n, bool vec, const sr_row &R, u64 lo, u64 hi, unsigned want,
                          unsigned cap, unsigned *cnt)
{
    const int shifts[6] = {53, 42, 32, 21, 10, 0}, widths[6] = {11, 11, 10, 11, 11, 10};
    u64 prefix = 0;
    unsigned above = 0;
    for (int lev = 0; lev < 6; lev++) {
        const int sft = shifts[lev], hs = sft + widths[lev];
        const unsigned mask = (1u << widths[lev]) - 1;
        for (int i = threadIdx.x; i < SR_BINS; i += SR_THREADS)
            sh.hist[i] = 0;
        if (threadIdx.x == 0)
            sh.sel_bin = -1;
        __syncthreads();
        sr_each(row, n, vec, [&](int id, float x) {
            float l;
            unsigned key;
            if (!sr_cand(R, x, l, key))
                return;
            const u64 o = sr_ord(key, id);
            if (o < lo || o >= hi || (lev > 0 && (o >> hs) != (prefix >> hs)))
                return;
            atomicAdd(&sh.hist[(unsigned)(o >> sft) & mask], 1u);
        });
        __syncthreads();
        /* running counts from the top bin down: thread t holds bins
         * 2047 - 2t and 2046 - 2t */
        const int b0 = SR_BINS - 1 - 2 * (int)threadIdx.x, b1 = b0 - 1;
        const unsigned h0 = sh.hist[b0], h1 = sh.hist[b1];
        unsigned tot;
        const unsigned a = above + sr_block_excl_scan<unsigned>(h0 + h1, sh.uscan, &tot);
        if (a < want && a + h0 >= want) {
            sh.sel_bin = b0;
            sh.sel_before = a;
            sh.sel_hist = h0;
        } else if (a + h0 < want && a + h0 + h1 >= want) {
            sh.sel_bin = b1;
            sh.sel_before = a + h0;
            sh.sel_hist = h1;
        }
        __syncthreads();
        const int fb = sh.sel_bin;
        const unsigned before = sh.sel_before, fh = sh.sel_hist;
        __syncthreads();
        if (fb < 0) { /* fewer than want in the range: all of it */
            *cnt = above + tot;
            return lo;
        }
        const u64 nb = prefix | ((u64)fb << sft);
        if (before + fh <= cap) {
            *cnt = before + fh;
            return nb > lo ? nb : lo;
        }
        above = before;
        prefix = nb;
    }
    *cnt = above + 1; /* not reached: a full ord is one element */
    return prefix > lo ? prefix : lo;
}

/* The candidates with ord in [lo, hi) (at most SR_CAP) into sh.buf.ord,
 * sorted descending; returns how many. */
template <typename T>
__device__ int sr_gather_sorted(sr_shared &sh, const T *row, int n, bool vec, const sr_row &R, u64 lo, u64 hi)
{
    const int lane = threadIdx.x & 31;
    if (threadIdx.x == 0)
        sh.cnt = 0;
    __syncthreads();
    sr_each(row, n, vec, [&](int id, float x) {
        float l;
        unsigned key = 0;
        u64 o = 0;
        bool take = sr_cand(R, x, l, key);
        if (take) {
            o = sr_ord(key, id);
            take = o >= lo && o < hi;
        }
        const unsigned m = __ballot_sync(0xffffffffu, take);
        if (m == 0)
            return;
        const int leader = __ffs(m) - 1;
        unsigned base = 0;
        if (lane == leader)
            base = atomicAdd(&sh.cnt, (unsigned)__popc(m));
        base = __shfl_sync(0xffffffffu, base, leader);
        const unsigned at = base + __popc(m & ((1u << lane) - 1));
        if (take && at < SR_CAP)
            sh.buf.ord[at] = o;
    });
    __syncthreads();
    const int cnt = sh.cnt < SR_CAP ? (int)sh.cnt : SR_CAP;
    int n2 = 1;
    while (n2 < cnt)
        n2 <<= 1;
    for (int i = cnt + (int)threadIdx.x; i < n2; i += SR_THREADS)
        sh.buf.ord[i] = 0; /* below every candidate */
    __syncthreads();
    for (int k = 2; k <= n2; k <<= 1)
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = threadIdx.x; i < n2; i += SR_THREADS) {
                const int p = i ^ j;
                if (p > i) {
                    const u64 a = sh.buf.ord[i], b = sh.buf.ord[p];
                    if ((i & k) == 0 ? a < b : a > b) {
                        sh.buf.ord[i] = b;
                        sh.buf.ord[p] = a;
                    }
                }
            }
            __syncthreads();
        }
    return cnt;
}

/* Running sums over the first m entries of the sorted chunk, starting from
 * base: thread t owns entries t * SR_PER + q. */
__device__ void sr_chunk_cums(sr_shared &sh, const sr_row &R, int m, double base, double (&cum)[SR_PER])
{
    double part[SR_PER], local = 0.0;
#pragma unroll
    for (int q = 0; q < SR_PER; q++) {
        const int i = (int)threadIdx.x * SR_PER + q;
        double p = 0.0;
        if (i < m)
            p = (double)sr_prob(R, sr_val((unsigned)(sh.buf.ord[i] >> 32)), sh.tab);
        local = __dadd_rn(local, p);
        part[q] = local;
    }
    double tot;
    const double ex = __dadd_rn(base, sr_block_excl_scan<double>(local, sh.dscan, &tot));
#pragma unroll
    for (int q = 0; q < SR_PER; q++)
        cum[q] = __dadd_rn(ex, part[q]);
}

/* The first index i < m of the chunk with cum_i >= t (ge) or t < cum_i
 * (!ge); m when none. */
__device__ int sr_chunk_first(sr_shared &sh, const double (&cum)[SR_PER], int m, double t, bool ge)
{
    int first = INT_MAX;
#pragma unroll
    for (int q = SR_PER - 1; q >= 0; q--) {
        const int i = (int)threadIdx.x * SR_PER + q;
        if (i < m && (ge ? cum[q] >= t : t < cum[q]))
            first = i;
    }
    first = sr_block_int(first, 0, sh.ired);
    return first == INT_MAX ? m : first;
}

/* cum_i of chunk entry i, to every thread */
__device__ double sr_chunk_cum_at(sr_shared &sh, const double (&cum)[SR_PER], int i)
{
#pragma unroll
    for (int q = 0; q < SR_PER; q++)
        if ((int)threadIdx.x * SR_PER + q == i)
            sh.bcast_d = cum[q];
    __syncthreads();
    const double v = sh.bcast_d;
    __syncthreads();
    return v;
}

/* ---------------------------------------------------------------- the cases */

/* Candidates in id order (no top-k cut, top_p 1): running sums by group. */
template <typename T>
__device__ int sr_unsorted(sr_shared &sh, const T *row, int n, bool vec, const sr_row &R, double u)
{
    constexpr int E = sr_vec<T>::E;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int ng = (n + 32 * E - 1) / (32 * E);
    int last = -1;
    /* group sums: lane sums of E in order, then a warp scan across lanes */
    auto lane_sum = [&](int base, const float (&v)[E], double (&ps)[E], bool (&c)[E]) {
        double s = 0.0;
#pragma unroll
        for (int j = 0; j < E; j++) {
            float l;
            unsigned key;
            c[j] = sr_cand(R, v[j], l, key);
            ps[j] = c[j] ? (double)sr_prob(R, l, sh.tab) : 0.0;
            s = __dadd_rn(s, ps[j]);
            if (c[j])
                last = base + j;
        }
        return s;
    };
    for (int g = warp; g < ng; g += SR_WARPS) {
        const int base = g * 32 * E + lane * E;
        float v[E];
        double ps[E];
        bool c[E];
        sr_load<T>(row, n, vec, base, v);
        const double inc = sr_warp_incl_scan(lane_sum(base, v, ps, c));
        if (lane == 31)
            sh.buf.gsum[g] = inc;
    }
    last = sr_block_int(last, 1, sh.ired2);
    __syncthreads();
    /* running sums over the groups, in place: thread t owns groups t * SR_PER + q */
    double part[SR_PER], local = 0.0;
#pragma unroll
    for (int q = 0; q < SR_PER; q++) {
        const int g = (int)threadIdx.x * SR_PER + q;
        local = __dadd_rn(local, g < ng ? sh.buf.gsum[g] : 0.0);
        part[q] = local;
    }
    double sum;
    const double ex = sr_block_excl_scan<double>(local, sh.dscan, &sum);
    const double r = __dmul_rn(u, sum);
    int gstar = INT_MAX;
#pragma unroll
    for (int q = SR_PER - 1; q >= 0; q--) {
        const int g = (int)threadIdx.x * SR_PER + q;
        const double inc = __dadd_rn(ex, part[q]);
        if (g < ng) {
            sh.buf.gsum[g] = inc;
            if (r < inc)
                gstar = g;
        }
    }
    gstar = sr_block_int(gstar, 0, sh.ired); /* syncs: the running sums are visible */
    if (gstar == INT_MAX)
        return last; /* u * sum rounded up to sum: the host takes the last one */
    if (warp == 0) {
        const int base = gstar * 32 * E + lane * E;
        float v[E];
        double ps[E];
        bool c[E];
        sr_load<T>(row, n, vec, base, v);
        const double ls = lane_sum(base, v, ps, c);
        const double inc = sr_warp_incl_scan(ls);
        double exl = __shfl_up_sync(0xffffffffu, inc, 1);
        if (lane == 0)
            exl = 0.0;
        double acc = __dadd_rn(gstar > 0 ? sh.buf.gsum[gstar - 1] : 0.0, exl);
        int hit = INT_MAX, lastc = -1;
#pragma unroll
        for (int j = 0; j < E; j++) {
            acc = __dadd_rn(acc, ps[j]);
            if (c[j]) {
                lastc = base + j;
                if (hit == INT_MAX && r < acc)
                    hit = base + j;
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            hit = min(hit, __shfl_xor_sync(0xffffffffu, hit, o));
            lastc = max(lastc, __shfl_xor_sync(0xffffffffu, lastc, o));
        }
        if (lane == 0)
            sh.bcast_i = hit != INT_MAX ? hit : lastc;
    }
    __syncthreads();
    return sh.bcast_i;
}

/*
 * Where the running mass (in the order) reaches t, roughly: a radix
 * descent like sr_descend whose bins also sum an approximate mass (__expf,
 * fixed point with 2^-40 steps: integer atomics, so deterministic), among
 * the candidates with ord >= lo. Returns the ord range [*rlo, *rhi) of at
 * most cap candidates that holds the crossing unless rounding put it next
 * door (sr_query checks with exact sums and walks on).
 */
template <typename T>
__device__ void sr_locate(sr_shared &sh, const T *row, int n, bool vec, const sr_row &R, u64 lo, double t,
                          unsigned cap, u64 *rlo, u64 *rhi)
{
    const int shifts[6] = {53, 42, 32, 21, 10, 0}, widths[6] = {11, 11, 10, 11, 11, 10};
    const double scale = 1099511627776.0; /* 2^40 */
    const u64 tfx = __double2ull_rn(t * scale);
    u64 prefix = 0, above = 0;
    for (int lev = 0; lev < 6; lev++) {
        const int sft = shifts[lev], hs = sft + widths[lev];
        const unsigned mask = (1u << widths[lev]) - 1;
        for (int i = threadIdx.x; i < SR_BINS; i += SR_THREADS) {
            sh.hist[i] = 0;
            sh.buf.mass[i] = 0;
        }
        if (threadIdx.x == 0)
            sh.sel_bin = -1;
        __syncthreads();
        sr_each(row, n, vec, [&](int id, float x) {
            float l;
            unsigned key;
            if (!sr_cand(R, x, l, key))
                return;
            const u64 o = sr_ord(key, id);
            if (o < lo || (lev > 0 && (o >> hs) != (prefix >> hs)))
                return;
            const unsigned b = (unsigned)(o >> sft) & mask;
            atomicAdd(&sh.hist[b], 1u);
            const u64 fx = __double2ull_rn((double)__expf(__fsub_rn(l, R.mx)) * scale);
            if (fx)
                atomicAdd(&sh.buf.mass[b], fx);
        });
        __syncthreads();
        const int b0 = SR_BINS - 1 - 2 * (int)threadIdx.x, b1 = b0 - 1;
        const u64 m0 = sh.buf.mass[b0], m1 = sh.buf.mass[b1];
        const unsigned h0 = sh.hist[b0], h1 = sh.hist[b1];
        u64 tot;
        const u64 a = above + sr_block_excl_scan<u64>(m0 + m1, (u64 *)sh.dscan, &tot);
        if (a < tfx && a + m0 >= tfx) {
            sh.sel_bin = b0;
            sh.sel_hist = h0;
        } else if (a + m0 < tfx && a + m0 + m1 >= tfx) {
            sh.sel_bin = b1;
            sh.sel_hist = h1;
        }
        /* the mass never reaches t (by the rough sums): the lowest bin */
        const int lowest = sr_block_int(h1 ? b1 : h0 ? b0 : INT_MAX, 0, sh.ired2);
        int fb = sh.sel_bin;
        unsigned fh = sh.sel_hist;
        u64 fabove = 0;
        if (fb < 0 && lowest != INT_MAX) {
            fb = lowest;
            fh = sh.hist[fb];
        }
        /* the mass above the chosen bin, for the next level */
        u64 mine = 0;
        if (b0 > fb)
            mine += m0;
        if (b1 > fb)
            mine += m1;
        {
            u64 all;
            sr_block_excl_scan<u64>(mine, (u64 *)sh.dscan, &all);
            fabove = all;
        }
        if (fb < 0) { /* nothing in range */
            *rlo = lo;
            *rhi = lo;
            return;
        }
        const u64 nb = prefix | ((u64)fb << sft);
        if (fh <= cap) {
            const u64 up = prefix + ((u64)(fb + 1) << sft);
            *rlo = nb;
            *rhi = (lev == 0 && fb == SR_BINS - 1) || up < prefix ? ~0ull : up;
            return;
        }
        above += fabove;
        prefix = nb;
    }
    *rlo = prefix; /* not reached: a full ord is one element */
    *rhi = prefix + 1;
}

/*
 * The first candidate of the order among ord >= lo whose running mass
 * (exact double sums: the mass above a chunk in one reduction, then the
 * chunk's prefix sums) satisfies cum >= t (ge) or t < cum (!ge): its ord
 * and running mass. False when none does; then *cum_at is the total and
 * *last the last candidate. sr_locate finds the chunk; when rounding put
 * the crossing outside it, the chunks are walked in order from there.
 */
template <typename T>
__device__ bool sr_query(sr_shared &sh, const T *row, int n, bool vec, const sr_row &R, u64 lo, double t, bool ge,
                         unsigned cap, u64 *ord, double *cum_at, u64 *last)
{
    double cum[SR_PER];
    u64 rlo, rhi;
    sr_locate(sh, row, n, vec, R, lo, t, cap, &rlo, &rhi);
    if (rlo < lo)
        rlo = lo;
    double local = 0.0;
    sr_each(row, n, vec, [&](int id, float x) {
        float l;
        unsigned key;
        if (sr_cand(R, x, l, key)) {
            const u64 o = sr_ord(key, id);
            if (o >= lo && o >= rhi)
                local = __dadd_rn(local, (double)sr_prob(R, l, sh.tab));
        }
    });
    const double base = sr_block_sum_d(local, sh.dscan);
    u64 hi = ~0ull;
    double b = 0.0;
    if (!(ge ? base >= t : t < base)) { /* the crossing is not above the chunk */
        const int m = rhi > rlo ? sr_gather_sorted(sh, row, n, vec, R, rlo, rhi) : 0;
        if (m > 0) {
            sr_chunk_cums(sh, R, m, base, cum);
            const int i = sr_chunk_first(sh, cum, m, t, ge);
            if (i < m) {
                *ord = sh.buf.ord[i];
                *cum_at = sr_chunk_cum_at(sh, cum, i);
                return true;
            }
            b = sr_chunk_cum_at(sh, cum, m - 1);
            hi = sh.buf.ord[m - 1];
        } else {
            b = base;
            hi = rlo;
        }
    }
    /* walk the chunks in order from (hi, b) */
    *last = hi;
    for (;;) {
        unsigned c;
        const u64 bnd = sr_descend(sh, row, n, vec, R, lo, hi, cap, cap, &c);
        if (c == 0) {
            *cum_at = b;
            return false;
        }
        const int m = sr_gather_sorted(sh, row, n, vec, R, bnd, hi);
        sr_chunk_cums(sh, R, m, b, cum);
        const int i = sr_chunk_first(sh, cum, m, t, ge);
        if (i < m) {
            *ord = sh.buf.ord[i];
            *cum_at = sr_chunk_cum_at(sh, cum, i);
            return true;
        }
        b = sr_chunk_cum_at(sh, cum, m - 1);
        hi = sh.buf.ord[m - 1];
        *last = hi;
    }
}

/* Sorted survivors: the first K of the order (K <= total), then top-p,
 * then the draw, all in the order. */
template <typename T>
__device__ int sr_sorted(sr_shared &sh, const T *row, int n, bool vec, const sr_row &R, unsigned K, unsigned total,
                         float top_p, double u, unsigned cap)
{
    const u64 top = ~0ull; /* above every ord */
    unsigned c;
    if (K <= cap) {
        /* the survivors fit one chunk */
        double cum[SR_PER];
        const u64 b = sr_descend(sh, row, n, vec, R, 0, top, K, cap, &c);
        sr_gather_sorted(sh, row, n, vec, R, b, top);
        const int m = (int)K;
        sr_chunk_cums(sh, R, m, 0.0, cum);
        const double sum = sr_chunk_cum_at(sh, cum, m - 1);
        int keep = m;
        if (top_p < 1.0f) {
            const int i = sr_chunk_first(sh, cum, m, __dmul_rn((double)top_p, sum), true);
            keep = i < m ? i + 1 : m;
        }
        const double sum2 = sr_chunk_cum_at(sh, cum, keep - 1);
        int i = sr_chunk_first(sh, cum, keep, __dmul_rn(u, sum2), false);
        if (i >= keep)
            i = keep - 1;
        return sr_id(sh.buf.ord[i]);
    }
    /* many survivors: their exact boundary and mass, then the top-p and
     * draw crossings: in the first chunk, or where the mass says */
    const u64 lo = K < total ? sr_descend(sh, row, n, vec, R, 0, top, K, K, &c) : 0;
    double local = 0.0;
    sr_each(row, n, vec, [&](int id, float x) {
        float l;
        unsigned key;
        if (sr_cand(R, x, l, key) && sr_ord(key, id) >= lo)
            local = __dadd_rn(local, (double)sr_prob(R, l, sh.tab));
    });
    const double sum = sr_block_sum_d(local, sh.dscan);
    u64 lo_p = lo, o, last;
    double sum2 = sum, at;
    /* the first chunk of the order first: with the peaked distributions
     * of language models both crossings are usually in it */
    double cum[SR_PER];
    const u64 b = sr_descend(sh, row, n, vec, R, lo, top, cap, cap, &c);
    const int m = sr_gather_sorted(sh, row, n, vec, R, b, top);
    sr_chunk_cums(sh, R, m, 0.0, cum);
    int keep = -1; /* the top-p survivors in the first chunk: entries [0, keep) */
    if (top_p < 1.0f) {
        const double target = __dmul_rn((double)top_p, sum);
        const int i = sr_chunk_first(sh, cum, m, target, true);
        if (i < m) {
            keep = i + 1;
            lo_p = sh.buf.ord[i];
            sum2 = sr_chunk_cum_at(sh, cum, i);
        } else {
            /* not reached at all (rounding): all survive, with the walked total */
            if (sr_query(sh, row, n, vec, R, lo, target, true, cap, &o, &at, &last))
                lo_p = o;
            sum2 = at;
        }
    } else {
        keep = m;
    }
    const double r = __dmul_rn(u, sum2);
    if (keep > 0) { /* the chunk is still in shared memory */
        const int i = sr_chunk_first(sh, cum, keep, r, false);
        if (i < keep)
            return sr_id(sh.buf.ord[i]);
    }
    if (sr_query(sh, row, n, vec, R, lo_p, r, false, cap, &o, &at, &last))
        return sr_id(o);
    return sr_id(last); /* no crossing (rounding): the host takes the last survivor */
}

/* ---------------------------------------------------------------- the kernel */

template <typename T>
__global__ void __launch_bounds__(SR_THREADS, 1)
    anvil_sample_rows_kernel(const T *x, int n, const anvil_sample_draw *draws, int32_t *ids, unsigned cap)
{
    __shared__ sr_shared sh;
    const T *row = x + (size_t)blockIdx.x * (size_t)n;
    const bool vec = (((uintptr_t)row) & 15) == 0;
    if (threadIdx.x < 32)
        sh.tab[threadIdx.x] = sr_exp2_tab[threadIdx.x];
    const anvil_sample_draw P = draws[blockIdx.x];

    if (P.greedy) {
        /* greedy: the host scan's argmax; a row with nothing above -inf
         * (a grammar's mask that allows no token) keeps bi = INT_MAX: -1 */
        float best = -INFINITY;
        int bi = INT_MAX, bad = 0;
        sr_each(row, n, vec, [&](int id, float v) {
            bad |= id < n && !(v < INFINITY); /* the tail past n is NaN padding */
            if (v > -INFINITY && (v > best || (v == best && id < bi))) {
                best = v;
                bi = id;
            }
        });
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, best, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > best || (ov == best && oi < bi)) {
                best = ov;
                bi = oi;
            }
        }
        if ((threadIdx.x & 31) == 0) {
            sh.fred[threadIdx.x >> 5] = best;
            sh.ired[threadIdx.x >> 5] = bi;
        }
        const int any_bad = __syncthreads_or(bad);
        if (threadIdx.x == 0) {
            for (int w = 1; w < SR_WARPS; w++)
                if (sh.fred[w] > best || (sh.fred[w] == best && sh.ired[w] < bi)) {
                    best = sh.fred[w];
                    bi = sh.ired[w];
                }
            ids[blockIdx.x] = any_bad || bi == INT_MAX ? -1 : bi;
        }
        return;
    }

    sr_row R;
    R.inv_t = P.inv_temperature; /* the host's 1.0f / temperature */
    R.thr = 0;
    R.mx = -INFINITY;
    float mx = -INFINITY;
    int nfin = 0, bad = 0;
    sr_each(row, n, vec, [&](int id, float v) {
        (void)id;
        float l;
        unsigned key;
        bad |= id < n && !(v < INFINITY); /* the tail past n is NaN padding */
        if (sr_cand(R, v, l, key)) {
            mx = fmaxf(mx, l);
            nfin++;
        }
    });
    R.mx = sr_block_max_f(mx, sh.fred);
    nfin = sr_block_int(nfin, 2, sh.ired);
    if (__syncthreads_or(bad) || nfin == 0) {
        if (threadIdx.x == 0)
            ids[blockIdx.x] = -1; /* the draw is given back */
        return;
    }
    unsigned total = (unsigned)nfin;
    if (P.log_min_p > -INFINITY) {
        R.thr = sr_key(__fadd_rn(R.mx, P.log_min_p));
        int cnt = 0;
        sr_each(row, n, vec, [&](int id, float v) {
            (void)id;
            float l;
            unsigned key;
            cnt += sr_cand(R, v, l, key);
        });
        total = (unsigned)sr_block_int(cnt, 2, sh.ired);
    }
    const int32_t top_k = P.sampling.top_k;
    const float top_p = P.sampling.top_p;
    const unsigned K = top_k > 0 && (unsigned)top_k < total ? (unsigned)top_k : total;
    int id;
    if (top_p >= 1.0f && K == total)
        id = sr_unsorted(sh, row, n, vec, R, P.u);
    else
        id = sr_sorted(sh, row, n, vec, R, K, total, top_p, P.u, cap);
    if (threadIdx.x == 0)
        ids[blockIdx.x] = id;
}

/* ---------------------------------------------------------------- host side */

static unsigned sr_chunk_cap = SR_CAP;

/* Test knob: the chunk size (1..4096) for the paths that stream chunks. */
extern "C" void anvil_cuda_sample_set_chunk(int cap)
{
    sr_chunk_cap = cap >= 1 && cap <= SR_CAP ? (unsigned)cap : SR_CAP;
}

extern "C" anvil_status anvil_cuda_launch_sample_rows(cudaStream_t stream, const void *x, anvil_dtype act_dt,
                                                      int64_t rows, int64_t cols, const anvil_sample_draw *draws,
                                                      int32_t *ids)
{
    if (rows == 0)
        return ANVIL_OK;
    CHECK(rows <= INT32_MAX && cols > 0 && cols <= SR_MAX_COLS, ANVIL_ERR_UNSUPPORTED,
          "sample_rows: [%lld, %lld] (at most %d columns)", (long long)rows, (long long)cols, SR_MAX_COLS);
    const unsigned cap = sr_chunk_cap;
    ANVIL_CUDA_DISPATCH(act_dt, anvil_sample_rows_kernel<T><<<(unsigned)rows, SR_THREADS, 0, stream>>>(
                                    (const T *)x, (int)cols, draws, ids, cap));
    return ANVIL_CUDA_LAUNCHED("sample_rows kernel");
}

/*
 * Masks (a grammar's allowed tokens, backend.h's anvil_sample_masks): a
 * disallowed token's logit becomes -inf in place, before the sampler
 * kernel runs, which is exactly the row the host path samples (it writes
 * -inf into its copy). A thread per token, a block row per mask: the 32
 * lanes of a warp read one mask word (one transaction) and write
 * consecutive logits. Kept out of the sampler kernel so that an
 * unconstrained step runs the same kernel as ever; a masked step pays one
 * pass over its masked rows.
 */
#define SM_THREADS 256

template <typename T>
__global__ void __launch_bounds__(SM_THREADS)
    anvil_sample_mask_kernel(T *x, int64_t cols, const int32_t *rows, const uint32_t *words, int n_words)
{
    const int64_t i = (int64_t)blockIdx.x * SM_THREADS + threadIdx.x;
    if (i >= cols)
        return;
    const uint32_t w = words[(size_t)blockIdx.y * (size_t)n_words + (size_t)(i >> 5)];
    if (!((w >> (i & 31)) & 1u))
        x[(int64_t)rows[blockIdx.y] * cols + i] = anvil_from_f32<T>(-INFINITY);
}

extern "C" anvil_status anvil_cuda_launch_sample_mask(cudaStream_t stream, void *x, anvil_dtype act_dt, int64_t cols,
                                                      const anvil_sample_masks *m)
{
    if (m == NULL || m->n == 0)
        return ANVIL_OK;
    CHECK(m->n > 0 && m->n <= 65535 && m->rows != NULL && m->words != NULL && (int64_t)m->n_words * 32 >= cols,
          ANVIL_ERR_INVALID_ARG, "sample_rows: %d masks of %d words for rows of %lld columns", m->n, m->n_words,
          (long long)cols);
    const dim3 grid((unsigned)((cols + SM_THREADS - 1) / SM_THREADS), (unsigned)m->n);
    ANVIL_CUDA_DISPATCH(act_dt, anvil_sample_mask_kernel<T><<<grid, SM_THREADS, 0, stream>>>((T *)x, cols, m->rows,
                                                                                             m->words, m->n_words));
    return ANVIL_CUDA_LAUNCHED("sample_rows mask kernel");
}

extern "C" anvil_status anvil_cuda_op_sample_rows(anvil_backend *be, const anvil_tensor *x,
                                                  const anvil_sample_draw *draws, const anvil_sample_masks *masks,
                                                  int32_t *ids)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(anvil_cuda_check_act(cb, x, "sample_rows x"));
    CHECK((draws != NULL && ids != NULL) || x->shape[0] == 0, ANVIL_ERR_INVALID_ARG,
          "sample_rows: draws or ids is NULL");
    TRY(anvil_cuda_use(cb));
    if (x->shape[0] == 0)
        return ANVIL_OK;
    TRY(anvil_cuda_launch_sample_mask(cb->stream, x->data, x->dtype, x->shape[1], masks));
    return anvil_cuda_launch_sample_rows(cb->stream, x->data, x->dtype, x->shape[0], x->shape[1], draws, ids);
}
