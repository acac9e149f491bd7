/* ids[r] = the column of the largest value of row r (the lowest column on
 * ties, as a host scan with `>` finds it), or -1 when the row holds a NaN
 * or +inf or nothing above -inf (a damaged model: the runtime's guard, see
 * anvil_runtime_forward_greedy): greedy decoding on the device, so
 * a step downloads one id per row instead of a row of logits. A block per
 * row; each thread scans a strided slice with 16-byte loads where the row
 * is aligned, then the block reduces (value, column) pairs. */
#include <math.h>

#include "backend/cuda/cuda_common.cuh"

#define AM_THREADS 512

/* a beats b: larger, or equal and further left */
__device__ __forceinline__ bool anvil_am_better(float va, int ia, float vb, int ib)
{
    return va > vb || (va == vb && ia < ib);
}

template <typename T>
__global__ void __launch_bounds__(AM_THREADS) anvil_argmax_rows_kernel(const T *x, int64_t cols, int32_t *ids)
{
    anvil_pdl_wait();
    anvil_pdl_launch();
    const T *row = x + (int64_t)blockIdx.x * cols;
    float best = -INFINITY;
    int bi = INT_MAX;
    int bad = 0; /* a NaN or +inf seen */
    constexpr int PER = 16 / (int)sizeof(T);
    const bool vec = (((uintptr_t)row) & 15) == 0;
    int64_t c0 = 0;
    if (vec) {
        const int64_t nv = cols / PER;
        for (int64_t v = threadIdx.x; v < nv; v += AM_THREADS) {
            float f[PER];
            anvil_load_vec<T, PER>(row + v * PER, f);
#pragma unroll
            for (int i = 0; i < PER; i++) {
                const int c = (int)(v * PER + i);
                bad |= !(f[i] < INFINITY);
                if (anvil_am_better(f[i], c, best, bi)) {
                    best = f[i];
                    bi = c;
                }
            }
        }
        c0 = nv * PER;
    }
    for (int64_t c = c0 + threadIdx.x; c < cols; c += AM_THREADS) {
        const float f = anvil_to_f32(row[c]);
        bad |= !(f < INFINITY);
        if (anvil_am_better(f, (int)c, best, bi)) {
            best = f;
            bi = (int)c;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (anvil_am_better(ov, oi, best, bi)) {
            best = ov;
            bi = oi;
        }
    }
    __shared__ float sv[AM_THREADS / 32];
    __shared__ int si[AM_THREADS / 32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = bi;
    }
    const int any_bad = __syncthreads_or(bad);
    if (threadIdx.x == 0) {
        for (int w = 1; w < AM_THREADS / 32; w++)
            if (anvil_am_better(sv[w], si[w], best, bi)) {
                best = sv[w];
                bi = si[w];
            }
        ids[blockIdx.x] = any_bad || bi == INT_MAX ? -1 : bi;
    }
}

extern "C" anvil_status anvil_cuda_launch_argmax_rows(cudaStream_t stream, int pdl, const void *x, anvil_dtype act_dt,
                                                      int64_t rows, int64_t cols, int32_t *ids)
{
    if (rows == 0)
        return ANVIL_OK;
    CHECK(rows <= INT32_MAX && cols > 0 && cols <= INT32_MAX, ANVIL_ERR_UNSUPPORTED,
          "argmax_rows: [%lld, %lld]", (long long)rows, (long long)cols);
    ANVIL_CUDA_DISPATCH(act_dt, anvil_launch(anvil_argmax_rows_kernel<T>, (unsigned)rows, AM_THREADS, 0,
                                             stream, pdl, (const T *)x, cols, ids));
    return ANVIL_CUDA_LAUNCHED("argmax_rows kernel");
}
