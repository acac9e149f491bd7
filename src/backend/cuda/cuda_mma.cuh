/*
 * cuda_mma.cuh: tensor-core and async-copy helpers shared by the attention
 * kernels on tensor cores (prefill and decode): mma.sync.m16n8k16 in
 * bf16/f16 with f32 accumulators, packing, cp.async 16-byte copies, and
 * transposed ldmatrix. sm_80 and newer.
 */
#ifndef ANVIL_BACKEND_CUDA_MMA_CUH
#define ANVIL_BACKEND_CUDA_MMA_CUH

#include "backend/cuda/cuda_common.cuh"

template <typename T> __device__ __forceinline__ void anvil_mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                                     uint32_t b1);
template <>
__device__ __forceinline__ void anvil_mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                              uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void anvil_mma16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two floats as a packed pair of T, the first in the low half. */
template <typename T> __device__ __forceinline__ uint32_t anvil_pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t anvil_pack2<__nv_bfloat16>(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}
template <> __device__ __forceinline__ uint32_t anvil_pack2<__half>(float lo, float hi)
{
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

__device__ __forceinline__ uint32_t anvil_smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* 16 bytes global -> shared without a register round trip; zeros when !valid
 * (src is then not read, but must still be a mapped address). */
__device__ __forceinline__ void anvil_cp_async16(void *dst, const void *src, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(anvil_smem_u32(dst)), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void anvil_cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void anvil_cp_async_wait(void)
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* Four 8x8 b16 matrices from shared memory, transposed: lanes 8i..8i+7 give
 * the row addresses of matrix i; register i receives matrix i's fragment
 * (rows 2 (lane % 4) and + 1 of column lane / 4, packed). */
__device__ __forceinline__ void anvil_ldmatrix_x4_trans(uint32_t (&r)[4], const void *row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(anvil_smem_u32(row)));
}

/* The same without the transpose: register i receives row lane / 4,
 * columns 2 (lane % 4) and + 1 of matrix i (an mma B fragment when the
 * matrix rows are the n index, as K's rows are for S = Q K^T). */
__device__ __forceinline__ void anvil_ldmatrix_x4(uint32_t (&r)[4], const void *row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(anvil_smem_u32(row)));
}

#endif
