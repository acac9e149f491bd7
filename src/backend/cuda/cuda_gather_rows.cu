/* out[i, :] = x[rows[i], :]. A row outside x writes zeros and sets
 * ANVIL_CUDA_BAD_ROW in the error word. */
#include "backend/cuda/cuda_common.cuh"

template <typename T>
__global__ void anvil_gather_rows_kernel(const T *x, int64_t n_rows, T *out, int64_t width,
                                         const int32_t *rows, int32_t n_out, int *err)
{
    anvil_pdl_wait();
    anvil_pdl_launch();
    for (int32_t i = blockIdx.x; i < n_out; i += gridDim.x) {
        const int32_t r = rows[i];
        const bool ok = r >= 0 && r < n_rows;
        if (!ok && threadIdx.x == 0)
            anvil_flag(err, ANVIL_CUDA_BAD_ROW);
        for (int64_t c = threadIdx.x; c < width; c += blockDim.x)
            out[(int64_t)i * width + c] = ok ? x[(int64_t)r * width + c] : anvil_from_f32<T>(0.0f);
    }
}

extern "C" anvil_status anvil_cuda_launch_gather_rows(cudaStream_t stream, int pdl, const void *x, int64_t n_rows,
                                                      void *out, anvil_dtype act_dt, int64_t width,
                                                      const int32_t *rows, int32_t n_out, int *err)
{
    if (n_out == 0 || width == 0)
        return ANVIL_OK;
    const unsigned grid = n_out < 65535 ? (unsigned)n_out : 65535u;
    ANVIL_CUDA_DISPATCH(act_dt, anvil_launch(anvil_gather_rows_kernel<T>, grid, 256, 0, stream, pdl, (const T *)x,
                                             n_rows, (T *)out, width, rows, n_out, err));
    return ANVIL_CUDA_LAUNCHED("gather_rows kernel");
}
