/*
 * The one-shot and two-shot all-reduce over CUDA IPC peer buffers
 * (comm_ipc.h; the layout and addressing: comm_ipc_map.h).
 *
 * One launch a sum. Each block copies its units of this rank's values into
 * this rank's IPC buffer, meets the same block of every rank (the barrier,
 * release / acquire at system scope: the peers read over NVLink or, on one
 * GPU, the same memory), then:
 *   one-shot: adds every rank's unit in rank order, in f32, and rounds once
 *             into the caller's buffer;
 *   two-shot: adds its rank's slice so (into the caller's buffer and its
 *             IPC buffer), meets again, and copies the other ranks' sums of
 *             their slices from their IPC buffers.
 * A last barrier keeps every rank from refilling its IPC buffer (the next
 * sum) while a peer still reads it. Both give the bits of comm_mpi.c's
 * rank-order sum, on every rank. Peer data is read with ld.cg (L2, not
 * L1: a line read before the barrier must not be served stale after it).
 */
#include "backend/cuda/cuda_common.cuh"
#include "comm/comm_ipc.h"

__device__ __forceinline__ void ipc_st_release(uint32_t *p, uint32_t v)
{
    asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ uint32_t ipc_ld_acquire(const uint32_t *p)
{
    uint32_t v;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

/* The barrier of this block with the same block of every rank (see
 * comm_ipc_map.h). false: the host asked the waits to stop (a deadline
 * passed); the block then leaves. */
static __device__ bool ipc_barrier(const ipc_args &a)
{
    ipc_signal *self = a.sig[a.rank];
    const int32_t b = (int32_t)blockIdx.x;
    __syncthreads(); /* the block's writes come before its release */
    const uint32_t g = ipc_next_gen(self->gen[b]);
    int stop = 0;
    if ((int32_t)threadIdx.x < a.size) {
        ipc_st_release(ipc_slot(a.sig[threadIdx.x], g, b, a.rank), g);
        const uint32_t *mine = ipc_slot(self, g, b, (int32_t)threadIdx.x);
        for (uint32_t spins = 1; ipc_ld_acquire(mine) != g; spins++)
            if ((spins & 1023u) == 0 && *a.abort != 0) {
                stop = 1;
                break;
            }
    }
    stop = __syncthreads_or(stop);
    if (threadIdx.x == 0)
        self->gen[b] = g;
    return stop == 0;
}

/* Unit i (16 bytes) of the caller's buffer, at any alignment. */
template <typename T, bool ALIGNED> __device__ __forceinline__ uint4 ipc_buf_load(const void *buf, int64_t i)
{
    if constexpr (ALIGNED) {
        return reinterpret_cast<const uint4 *>(buf)[i];
    } else {
        constexpr int V = 16 / (int)sizeof(T);
        uint4 u;
        T *e = reinterpret_cast<T *>(&u);
        const T *p = reinterpret_cast<const T *>(buf) + i * V;
#pragma unroll
        for (int j = 0; j < V; j++)
            e[j] = p[j];
        return u;
    }
}

template <typename T, bool ALIGNED> __device__ __forceinline__ void ipc_buf_store(void *buf, int64_t i, uint4 u)
{
    if constexpr (ALIGNED) {
        reinterpret_cast<uint4 *>(buf)[i] = u;
    } else {
        constexpr int V = 16 / (int)sizeof(T);
        const T *e = reinterpret_cast<const T *>(&u);
        T *p = reinterpret_cast<T *>(buf) + i * V;
#pragma unroll
        for (int j = 0; j < V; j++)
            p[j] = e[j];
    }
}

/* Element e of an IPC buffer (the tail), through L2. */
template <typename T> __device__ __forceinline__ T ipc_elem_load(const void *base, int64_t e)
{
    T v;
    if constexpr (sizeof(T) == 4) {
        const unsigned int r = __ldcg(reinterpret_cast<const unsigned int *>(base) + e);
        memcpy(&v, &r, 4);
    } else {
        const unsigned short r = __ldcg(reinterpret_cast<const unsigned short *>(base) + e);
        memcpy(&v, &r, 2);
    }
    return v;
}

template <typename T> __device__ __forceinline__ void ipc_elem_store(void *base, int64_t e, T v)
{
    if constexpr (sizeof(T) == 4) {
        unsigned int r;
        memcpy(&r, &v, 4);
        __stcg(reinterpret_cast<unsigned int *>(base) + e, r);
    } else {
        unsigned short r;
        memcpy(&r, &v, 2);
        __stcg(reinterpret_cast<unsigned short *>(base) + e, r);
    }
}

/* Unit i summed over the ranks in rank order (f32, rounded once). */
template <typename T> __device__ __forceinline__ uint4 ipc_sum_unit(const ipc_args &a, int64_t i)
{
    constexpr int V = 16 / (int)sizeof(T);
    float acc[V];
    {
        const uint4 u = __ldcg(reinterpret_cast<const uint4 *>(a.data[0]) + i);
        const T *e = reinterpret_cast<const T *>(&u);
#pragma unroll
        for (int j = 0; j < V; j++)
            acc[j] = anvil_to_f32(e[j]);
    }
    for (int32_t r = 1; r < a.size; r++) {
        const uint4 u = __ldcg(reinterpret_cast<const uint4 *>(a.data[r]) + i);
        const T *e = reinterpret_cast<const T *>(&u);
#pragma unroll
        for (int j = 0; j < V; j++)
            acc[j] += anvil_to_f32(e[j]);
    }
    uint4 out;
    T *o = reinterpret_cast<T *>(&out);
#pragma unroll
    for (int j = 0; j < V; j++)
        o[j] = anvil_from_f32<T>(acc[j]);
    return out;
}

/* Element e (the tail) summed likewise. */
template <typename T> __device__ __forceinline__ T ipc_sum_elem(const ipc_args &a, int64_t e)
{
    float acc = anvil_to_f32(ipc_elem_load<T>(a.data[0], e));
    for (int32_t r = 1; r < a.size; r++)
        acc += anvil_to_f32(ipc_elem_load<T>(a.data[r], e));
    return anvil_from_f32<T>(acc);
}

template <typename T, bool ALIGNED, bool TWO> __global__ void __launch_bounds__(IPC_THREADS)
    ipc_all_reduce_kernel(ipc_args a)
{
    constexpr int V = 16 / (int)sizeof(T);
    const int64_t n_units = a.n / V, tail_at = n_units * V;
    const int32_t tail = (int32_t)(a.n - tail_at);
    const int64_t t0 = (int64_t)blockIdx.x * IPC_THREADS + threadIdx.x;
    const int64_t stride = (int64_t)gridDim.x * IPC_THREADS;
    const bool tail_thread = blockIdx.x == 0 && (int32_t)threadIdx.x < tail;
    void *mine = a.data[a.rank];
    uint4 *mine_u = reinterpret_cast<uint4 *>(mine);

    /* 1. this rank's values into its IPC buffer, unit k of each slice (or
     * unit i of the whole) by the thread that reads it on every rank */
    if constexpr (!TWO) {
        for (int64_t i = t0; i < n_units; i += stride)
            __stcg(mine_u + i, ipc_buf_load<T, ALIGNED>(a.buf, i));
    } else {
        for (int32_t p = 0; p < a.size; p++) {
            const int64_t lo = ipc_slice_lo(n_units, p, a.size), len = ipc_slice_lo(n_units, p + 1, a.size) - lo;
            for (int64_t k = t0; k < len; k += stride)
                __stcg(mine_u + lo + k, ipc_buf_load<T, ALIGNED>(a.buf, lo + k));
        }
    }
    if (tail_thread)
        ipc_elem_store<T>(mine, tail_at + threadIdx.x, reinterpret_cast<const T *>(a.buf)[tail_at + threadIdx.x]);
    if (!ipc_barrier(a))
        return;

    if constexpr (!TWO) {
        /* 2. every rank's unit, added in rank order */
        for (int64_t i = t0; i < n_units; i += stride)
            ipc_buf_store<T, ALIGNED>(a.buf, i, ipc_sum_unit<T>(a, i));
        if (tail_thread)
            reinterpret_cast<T *>(a.buf)[tail_at + threadIdx.x] = ipc_sum_elem<T>(a, tail_at + threadIdx.x);
    } else {
        /* 2. this rank's slice (the tail is the last rank's), added in rank
         * order, into the caller's buffer and this rank's IPC buffer */
        const int64_t lo = ipc_slice_lo(n_units, a.rank, a.size);
        const int64_t len = ipc_slice_lo(n_units, a.rank + 1, a.size) - lo;
        for (int64_t k = t0; k < len; k += stride) {
            const uint4 s = ipc_sum_unit<T>(a, lo + k);
            ipc_buf_store<T, ALIGNED>(a.buf, lo + k, s);
            __stcg(mine_u + lo + k, s);
        }
        if (tail_thread && a.rank == a.size - 1) {
            const T s = ipc_sum_elem<T>(a, tail_at + threadIdx.x);
            reinterpret_cast<T *>(a.buf)[tail_at + threadIdx.x] = s;
            ipc_elem_store<T>(mine, tail_at + threadIdx.x, s);
        }
        if (!ipc_barrier(a))
            return;
        /* 3. the other ranks' sums of their slices */
        for (int32_t p = 0; p < a.size; p++) {
            if (p == a.rank)
                continue;
            const int64_t plo = ipc_slice_lo(n_units, p, a.size), plen = ipc_slice_lo(n_units, p + 1, a.size) - plo;
            for (int64_t k = t0; k < plen; k += stride)
                ipc_buf_store<T, ALIGNED>(a.buf, plo + k,
                                          __ldcg(reinterpret_cast<const uint4 *>(a.data[p]) + plo + k));
        }
        if (tail_thread && a.rank != a.size - 1)
            reinterpret_cast<T *>(a.buf)[tail_at + threadIdx.x] =
                ipc_elem_load<T>(a.data[a.size - 1], tail_at + threadIdx.x);
    }
    /* 4. nobody refills its IPC buffer while a peer may still read it */
    (void)ipc_barrier(a);
}

template <typename T> static void ipc_launch_t(const ipc_args *a, int two_shot, cudaStream_t stream)
{
    constexpr int V = 16 / (int)sizeof(T);
    const int64_t n_units = a->n / V;
    /* every rank runs the same grid: a function of n (and size) only */
    const int32_t blocks = ipc_blocks(two_shot ? (n_units + a->size - 1) / a->size : n_units);
    const bool aligned = ((uintptr_t)a->buf & 15u) == 0;
    if (two_shot && aligned)
        ipc_all_reduce_kernel<T, true, true><<<blocks, IPC_THREADS, 0, stream>>>(*a);
    else if (two_shot)
        ipc_all_reduce_kernel<T, false, true><<<blocks, IPC_THREADS, 0, stream>>>(*a);
    else if (aligned)
        ipc_all_reduce_kernel<T, true, false><<<blocks, IPC_THREADS, 0, stream>>>(*a);
    else
        ipc_all_reduce_kernel<T, false, false><<<blocks, IPC_THREADS, 0, stream>>>(*a);
}

extern "C" anvil_status anvil_ipc_ar_launch(const ipc_args *a, anvil_dtype dt, int two_shot, void *stream)
{
    if (a->n == 0)
        return ANVIL_OK;
    ANVIL_CUDA_DISPATCH(dt, ipc_launch_t<T>(a, two_shot, (cudaStream_t)stream));
    return ANVIL_CUDA_LAUNCHED(two_shot ? "two-shot all-reduce kernel" : "one-shot all-reduce kernel");
}
