/*
 * The GEMV kernels' pieces (cuda_gemv.cu, cuda_gemv_norm.cu): streaming
 * 16-byte loads of the weight and the dot of 8 packed elements, so that
 * both files' kernels do the same arithmetic in the same order.
 */
#ifndef ANVIL_CUDA_GEMV_CUH
#define ANVIL_CUDA_GEMV_CUH

#include "backend/cuda/cuda_common.cuh"

__device__ __forceinline__ uint4 anvil_ld_stream16(const void *p)
{
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

__device__ __forceinline__ float2 anvil_pair_f32(uint32_t u, __nv_bfloat16 *)
{
    __nv_bfloat162 h = *reinterpret_cast<__nv_bfloat162 *>(&u);
    return __bfloat1622float2(h);
}
__device__ __forceinline__ float2 anvil_pair_f32(uint32_t u, __half *)
{
    __half2 h = *reinterpret_cast<__half2 *>(&u);
    return __half22float2(h);
}

/* the dot of 8 packed elements of x and of w, added to acc */
template <typename T> __device__ __forceinline__ float anvil_dot8(uint4 xv, uint4 wv, float acc)
{
    const uint32_t xs[4] = {xv.x, xv.y, xv.z, xv.w}, ws[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 a = anvil_pair_f32(xs[i], (T *)nullptr), b = anvil_pair_f32(ws[i], (T *)nullptr);
        acc = fmaf(a.x, b.x, acc);
        acc = fmaf(a.y, b.y, acc);
    }
    return acc;
}

#endif
