/*
 * cpu_bench.h: the machine's own ceilings, measured, for benchmarks to
 * report kernels and whole models against (bench/bench_cpu_ops.c, the model
 * benchmark). Not for the inference path: each call allocates, spins up
 * its own threads and takes a fraction of a second to seconds.
 *
 *     double gbps = anvil_cpu_stream_read_gbps(weight_bytes, n_threads);
 *     printf("GEMV at %.0f%% of a streaming read\n", 100 * my_gbps / gbps);
 */
#ifndef ANVIL_BACKEND_CPU_BENCH_H
#define ANVIL_BACKEND_CPU_BENCH_H

#include <stddef.h>

/*
 * The read bandwidth, in GB/s (1e9 bytes per second), of a plain streaming
 * read of `bytes` bytes split evenly over n_threads threads (<= 0: one per
 * CPU) with the widest SIMD loads the CPU has. Like a decode step, every
 * call reads a buffer that is not in cache: buffers of `bytes` are rotated
 * through a pool of at least four times the last-level cache. Returns the
 * median over repeated calls, or a negative value if memory or threads
 * could not be had.
 */
double anvil_cpu_stream_read_gbps(size_t bytes, int n_threads);

/*
 * The peak fp32 FMA rate in GFLOP/s (2 flops per lane per FMA) of
 * n_threads threads (<= 0: one per CPU) running independent FMA chains in
 * registers, with the widest vectors the CPU has (AVX-512, AVX2, else
 * scalar fmaf). Negative if threads could not be had.
 */
double anvil_cpu_fma_peak_gflops(int n_threads);

/* Seconds on a monotonic clock. */
double anvil_cpu_now_s(void);

#endif
