/*
 * cuda_common.cuh: device helpers shared by the kernels: element loads and
 * stores in f32/bf16/f16 with f32 arithmetic, vector loads, warp reductions,
 * and the dtype dispatch used by the launchers.
 */
#ifndef ANVIL_BACKEND_CUDA_COMMON_CUH
#define ANVIL_BACKEND_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

#include <type_traits>

#include "backend/cuda/cuda_internal.h"

/* ---------------------------------------------------------------- rope */

/* The inverse frequencies token t rotates with (anvil_cuda_rope: LongRoPE's
 * long table when its sequence is longer than long_after after the step). */
__device__ __forceinline__ const float *anvil_rope_table(const anvil_cuda_rope &r, int64_t t)
{
    return r.inv_freq_long != nullptr && r.seq_lens[r.seq_of_token[t]] > r.long_after ? r.inv_freq_long : r.inv_freq;
}

/* ---------------------------------------------------------------- elements */

__device__ __forceinline__ float anvil_to_f32(float x) { return x; }
__device__ __forceinline__ float anvil_to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float anvil_to_f32(__half x) { return __half2float(x); }
/* fp8 e4m3 (the fp8 KV cache's elements), exactly */
__device__ __forceinline__ float anvil_to_f32(__nv_fp8_e4m3 x) { return (float)x; }

/* Round to nearest even, as the host conversions in core/dtype.c do. */
template <typename T> __device__ __forceinline__ T anvil_from_f32(float x);
template <> __device__ __forceinline__ float anvil_from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 anvil_from_f32<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half anvil_from_f32<__half>(float x) { return __float2half_rn(x); }
/* Round to nearest even, saturating at +-448 (NaN stays NaN), as
 * anvil_f32_to_fp8_e4m3 */
template <> __device__ __forceinline__ __nv_fp8_e4m3 anvil_from_f32<__nv_fp8_e4m3>(float x)
{
    __nv_fp8_e4m3 r;
    r.__x = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
    return r;
}

/* x as a KV cache of TC stores it: itself (TC == T), or fp8(x / scale)
 * (the fp8 cache: the division, then e4m3's rounding, as the CPU's) */
template <typename T, typename TC> __device__ __forceinline__ TC anvil_kv_put(T x, float scale)
{
    if constexpr (std::is_same<T, TC>::value) {
        (void)scale;
        return x;
    } else {
        return anvil_from_f32<TC>(__fdiv_rn(anvil_to_f32(x), scale));
    }
}

/* Two fp8 e4m3 values (the low byte first) as a packed pair of T (bf16 or
 * f16, low half first), exactly: e4m3 fits both. */
template <typename T> __device__ __forceinline__ uint32_t anvil_fp8x2_to(uint16_t two);
template <> __device__ __forceinline__ uint32_t anvil_fp8x2_to<__half>(uint16_t two)
{
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)two, __NV_E4M3);
    return (uint32_t)h.x | ((uint32_t)h.y << 16);
}
template <> __device__ __forceinline__ uint32_t anvil_fp8x2_to<__nv_bfloat16>(uint16_t two)
{
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)two, __NV_E4M3);
    const float2 f = __half22float2(__half2(h));
    const __nv_bfloat162 b = __floats2bfloat162_rn(f.x, f.y);
    return *reinterpret_cast<const uint32_t *>(&b);
}

/* 16 fp8 e4m3 values (a 16-byte piece of an fp8 cache row) into 16 T at
 * dst (16-byte aligned): how the tensor-core attention kernels turn a
 * staged fp8 tile into the bf16/f16 tile their fragments are read from. */
template <typename T> __device__ __forceinline__ void anvil_fp8x16_to(const uint4 &src, uint16_t *dst)
{
    const uint32_t w[4] = {src.x, src.y, src.z, src.w};
    uint32_t o[8];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        o[2 * i] = anvil_fp8x2_to<T>((uint16_t)(w[i] & 0xffffu));
        o[2 * i + 1] = anvil_fp8x2_to<T>((uint16_t)(w[i] >> 16));
    }
    *reinterpret_cast<uint4 *>(dst) = make_uint4(o[0], o[1], o[2], o[3]);
    *reinterpret_cast<uint4 *>(dst + 8) = make_uint4(o[4], o[5], o[6], o[7]);
}

/* Element i of an f32/bf16/f16 array whose dtype is only known at run time
 * (weights may be in another dtype than the activations). */
__device__ __forceinline__ float anvil_load_any(const void *p, int dt, int64_t i)
{
    if (dt == ANVIL_DTYPE_F32)
        return ((const float *)p)[i];
    if (dt == ANVIL_DTYPE_BF16)
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    return __half2float(((const __half *)p)[i]);
}

/*
 * N consecutive elements of T starting at p, as floats, in as few loads as
 * the alignment allows: p must be aligned to N * sizeof(T) bytes (up to 16;
 * wider groups are loaded 16 bytes at a time).
 */
template <typename T, int N> __device__ __forceinline__ void anvil_load_vec(const T *p, float (&out)[N])
{
    constexpr int BYTES = N * (int)sizeof(T);
    if constexpr (BYTES >= 16) {
        constexpr int PER = 16 / (int)sizeof(T);
#pragma unroll
        for (int c = 0; c < N / PER; c++) {
            uint4 u = *reinterpret_cast<const uint4 *>(p + c * PER);
            const T *e = reinterpret_cast<const T *>(&u);
#pragma unroll
            for (int i = 0; i < PER; i++)
                out[c * PER + i] = anvil_to_f32(e[i]);
        }
    } else if constexpr (BYTES == 8) {
        uint2 u = *reinterpret_cast<const uint2 *>(p);
        const T *e = reinterpret_cast<const T *>(&u);
#pragma unroll
        for (int i = 0; i < N; i++)
            out[i] = anvil_to_f32(e[i]);
    } else if constexpr (BYTES == 4) {
        uint32_t u = *reinterpret_cast<const uint32_t *>(p);
        const T *e = reinterpret_cast<const T *>(&u);
#pragma unroll
        for (int i = 0; i < N; i++)
            out[i] = anvil_to_f32(e[i]);
    } else {
#pragma unroll
        for (int i = 0; i < N; i++)
            out[i] = anvil_to_f32(p[i]);
    }
}

/* Stores N floats as T at p (same alignment rule as anvil_load_vec). */
template <typename T, int N> __device__ __forceinline__ void anvil_store_vec(T *p, const float (&in)[N])
{
    constexpr int BYTES = N * (int)sizeof(T);
    if constexpr (BYTES >= 16) {
        constexpr int PER = 16 / (int)sizeof(T);
#pragma unroll
        for (int c = 0; c < N / PER; c++) {
            uint4 u;
            T *e = reinterpret_cast<T *>(&u);
#pragma unroll
            for (int i = 0; i < PER; i++)
                e[i] = anvil_from_f32<T>(in[c * PER + i]);
            *reinterpret_cast<uint4 *>(p + c * PER) = u;
        }
    } else {
#pragma unroll
        for (int i = 0; i < N; i++)
            p[i] = anvil_from_f32<T>(in[i]);
    }
}

/* ---------------------------------------------------------------- warps */

__device__ __forceinline__ float anvil_warp_sum(float x)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

__device__ __forceinline__ float anvil_warp_max(float x)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

__device__ __forceinline__ void anvil_flag(int *err, int bit) { atomicOr(err, bit); }

/* The first cached position a query at position p attends to. */
__device__ __forceinline__ int32_t anvil_window_lo(int32_t p, int32_t window)
{
    return window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
}

/* ---------------------------------------------------------------- dependent launches */

/* Waits until the kernels before this one in the stream have finished and
 * their writes are visible (a no-op when the kernel was launched without
 * the PDL attribute, or before sm_90). A kernel launched by anvil_launch
 * calls it before it reads anything an earlier kernel wrote or writes
 * anything at all; before it, only weights may be read (anvil_pdl_load16,
 * below, or ptxas may move the loads after the wait). What an earlier
 * kernel wrote is read with coherent loads, never through a `const
 * __restrict__` pointer or __ldg: those become ld.global.nc, which the PTX
 * ISA allows only for data read-only for the kernel's whole lifetime, and
 * a dependent kernel's lifetime overlaps its predecessor's (session 31:
 * the GEMVs read x that way and gave wrong results on an H100 shared with
 * another process, passing alone). */
__device__ __forceinline__ void anvil_pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* 16 bytes of weights loaded before anvil_pdl_wait, past L1: a plain (weak)
 * ld.global where anvil_ld_stream16 (cuda_gemv.cuh) uses ld.global.nc.
 * Why: ptxas (CUDA 13.0, sm_90a) keeps griddepcontrol.wait (ACQBULK in
 * SASS) after the plain global loads before it, but not after .nc loads:
 * it had moved the ACQBULK above all of the first weight loads of the
 * bf16/f16 and fp8 row GEMVs (LDG.E.NA.128.CONSTANT only after it), so
 * nothing streamed while the kernel before drained. With this load the
 * LDG.E.NA.128s are issued before the ACQBULK, which does not wait for
 * their data (no scoreboard wait on it). Tried and worse: the loaded
 * registers as "+r" operands of the wait's asm (ptxas sees no use: the
 * loads still sink), a predicate on the wait computed from the data (the
 * loads stay before it but the wait waits for them). Weights only:
 * nothing writes them, so a weak load reads what .nc would. */
__device__ __forceinline__ uint4 anvil_pdl_load16(const void *p)
{
    uint4 r;
    asm volatile("ld.global.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

/* Lets the next kernel start launching (once every block of this one has
 * called it or exited). Called right after anvil_pdl_wait: the next
 * kernel's own wait then implies this one's predecessor is done. */
__device__ __forceinline__ void anvil_pdl_launch()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* kernel<<<grid, block, smem, stream>>>(args...), with the programmatic
 * stream serialization attribute when pdl (the backend's anvil_cuda_backend.pdl,
 * handed down by each launcher) is nonzero. Only for
 * kernels that call anvil_pdl_wait as described above. Errors surface
 * through cudaGetLastError (ANVIL_CUDA_LAUNCHED). */
template <typename... KArgs, typename... Args>
static inline void anvil_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                                int pdl, Args... args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    (void)cudaLaunchKernelEx(&cfg, kernel, ((KArgs)args)...);
}

/* ---------------------------------------------------------------- launch helpers */

static inline bool anvil_aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* Blocks for n items at `per_block` items each, capped for grid-stride loops. */
static inline unsigned anvil_grid_for(int64_t n, int per_block)
{
    int64_t b = (n + per_block - 1) / per_block;
    if (b < 1)
        b = 1;
    if (b > 65535 * 8)
        b = 65535 * 8;
    return (unsigned)b;
}

/* Runs the statement(s) after dt with `T` the C++ type of activation dtype
 * dt (f32/bf16/f16); returns ANVIL_ERR_UNSUPPORTED for any other dtype.
 * Variadic because kernel launches hold commas. */
#define ANVIL_CUDA_DISPATCH(dt, ...)                                                                   \
    do {                                                                                               \
        if ((dt) == ANVIL_DTYPE_F32) {                                                                 \
            typedef float T;                                                                           \
            __VA_ARGS__;                                                                               \
        } else if ((dt) == ANVIL_DTYPE_BF16) {                                                         \
            typedef __nv_bfloat16 T;                                                                   \
            __VA_ARGS__;                                                                               \
        } else if ((dt) == ANVIL_DTYPE_F16) {                                                          \
            typedef __half T;                                                                          \
            __VA_ARGS__;                                                                               \
        } else {                                                                                       \
            return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "cuda: dtype %s", anvil_dtype_name(dt));          \
        }                                                                                              \
    } while (0)

#endif
