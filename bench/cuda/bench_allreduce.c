/*
 * bench_allreduce: the latency of a bf16 all-reduce per message size, for
 * NCCL, the one-shot and the two-shot sum over CUDA IPC peer buffers
 * (docs/parallel.md, "The small-message all-reduce"), through the NCCL
 * communicator as the runtime calls it (anvil_comm_all_reduce_sum: the
 * launch and the host's wait for it, as a tensor-parallel step pays).
 *
 *   mpirun -np 2 bench_allreduce [--min-bytes 1024] [--max-bytes 67108864] [--json FILE]
 *   mpirun -np 4 bench_allreduce ...
 *
 * One GPU a rank (cuda:<local rank>); without mpirun one rank (a smoke
 * run: every sum is a copy). Sizes double from --min-bytes to --max-bytes;
 * each point: 5 calls to warm up, then a count fixed by the size (the same
 * on every rank), timed on every rank; the slowest rank's mean is the
 * point's latency (a collective ends when its last rank does). Before the
 * timing each algorithm's first call is checked (small integers: the sum
 * is exact in any order). Prints a table on rank 0 (us a call, the bus
 * bandwidth 2 (N-1)/N x bytes / time, the fastest) and the crossovers the
 * measurements suggest for comm_plan.c's table (the largest size where
 * one-shot, then two-shot, beat NCCL, among the sizes after which they no
 * longer do); --json writes the same.
 */
#include <cuda_runtime_api.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "anvil/comm.h"
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"

/* A copy from pageable host memory to the device, finished: cudaMemcpy
 * may return before its DMA lands, and the sums run on a non-blocking
 * stream, which does not wait for the legacy stream's copy (session 31:
 * on an H100 shared with other processes, a call summed the previous
 * call's values). */
static cudaError_t h2d_sync(void *d, const void *h, size_t n)
{
    const cudaError_t e = cudaMemcpy(d, h, n, cudaMemcpyHostToDevice);
    return e != cudaSuccess ? e : cudaDeviceSynchronize();
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int iters_for(size_t bytes)
{
    return bytes <= ((size_t)64 << 10) ? 1000 : bytes <= ((size_t)1 << 20) ? 300 : bytes <= ((size_t)16 << 20) ? 50 : 20;
}

/* The first call of algo at n elements sums small integers exactly. */
static int check(anvil_comm *c, void *d, int64_t n, uint16_t *h)
{
    const int32_t rank = anvil_comm_rank(c), size = anvil_comm_size(c);
    for (int64_t i = 0; i < n; i++)
        h[i] = anvil_f32_to_bf16((float)((rank + 1) * (int)(i % 5)));
    if (h2d_sync(d, h, (size_t)n * 2) != cudaSuccess ||
        anvil_comm_all_reduce_sum(c, d, n, ANVIL_DTYPE_BF16) != ANVIL_OK ||
        cudaMemcpy(h, d, (size_t)n * 2, cudaMemcpyDeviceToHost) != cudaSuccess)
        return 0;
    for (int64_t i = 0; i < n; i++)
        if (anvil_bf16_to_f32(h[i]) != (float)(size * (size + 1) / 2 * (int)(i % 5)))
            return 0;
    return 1;
}

int main(int argc, char **argv)
{
    size_t min_bytes = 1024, max_bytes = (size_t)64 << 20;
    const char *json_path = NULL;
    static const struct option longopts[] = {{"min-bytes", required_argument, 0, 'a'},
                                             {"max-bytes", required_argument, 0, 'b'},
                                             {"json", required_argument, 0, 'j'},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'a': min_bytes = (size_t)strtoull(optarg, NULL, 10); break;
        case 'b': max_bytes = (size_t)strtoull(optarg, NULL, 10); break;
        case 'j': json_path = optarg; break;
        default:
            fprintf(stderr, "usage: mpirun -np N %s [--min-bytes B] [--max-bytes B] [--json FILE]\n", argv[0]);
            return opt == 'h' ? 0 : 2;
        }
    }
    if (min_bytes < 16 || max_bytes < min_bytes) {
        fprintf(stderr, "bench_allreduce: --min-bytes 16 or more, --max-bytes at least that\n");
        return 2;
    }
    const int under_mpirun = getenv("OMPI_COMM_WORLD_SIZE") != NULL || getenv("PMIX_RANK") != NULL;
    anvil_comm *boot = NULL, *c = NULL;
    if ((under_mpirun && anvil_comm_mpi_built() ? anvil_comm_create_mpi(&boot) : anvil_comm_create_self(&boot)) !=
        ANVIL_OK) {
        fprintf(stderr, "bench_allreduce: %s\n", anvil_last_error());
        return 1;
    }
    const int n_dev = anvil_cuda_device_count();
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    const int32_t rank = anvil_comm_rank(boot), size = anvil_comm_size(boot);
    if (n_dev == 0 || size > n_dev) {
        fprintf(stderr, "bench_allreduce: %d ranks and %d GPUs here: one GPU a rank\n", size, n_dev);
        return 1;
    }
    const int device = local ? atoi(local) : rank;
    if (anvil_comm_create_nccl(boot, device, &c) != ANVIL_OK) {
        fprintf(stderr, "bench_allreduce: rank %d: %s\n", rank, anvil_last_error());
        return 1;
    }
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, device);
    void *d = NULL;
    uint16_t *h = malloc(max_bytes);
    if (cudaMalloc(&d, max_bytes) != cudaSuccess || h == NULL || cudaMemset(d, 0, max_bytes) != cudaSuccess) {
        fprintf(stderr, "bench_allreduce: no room for %zu bytes\n", max_bytes);
        return 1;
    }
    enum { NCCL_I, ONE_I, TWO_I, N_ALGO, MAX_POINTS = 48 };
    static const anvil_all_reduce_algo algos[N_ALGO] = {ANVIL_ALL_REDUCE_NCCL, ANVIL_ALL_REDUCE_ONESHOT,
                                                        ANVIL_ALL_REDUCE_TWOSHOT};
    double us[N_ALGO][MAX_POINTS];
    int ran_as[N_ALGO][MAX_POINTS];
    size_t pts[MAX_POINTS];
    int n_pts = 0;
    for (size_t b = min_bytes; b <= max_bytes && n_pts < MAX_POINTS; b *= 2)
        pts[n_pts++] = b / 2 * 2;
    int rc = 0;
    for (int a = 0; a < N_ALGO && rc == 0; a++) {
        /* one set-up an algorithm: IPC buffers of max_bytes a rank */
        if (anvil_comm_set_all_reduce(c, algos[a], max_bytes) != ANVIL_OK) {
            fprintf(stderr, "bench_allreduce: rank %d: %s\n", rank, anvil_last_error());
            rc = 1;
            break;
        }
        for (int p = 0; p < n_pts && rc == 0; p++) {
            const int64_t n = (int64_t)(pts[p] / 2);
            ran_as[a][p] = (int)anvil_comm_all_reduce_algo(c, n, ANVIL_DTYPE_BF16);
            if (!check(c, d, n, h)) {
                fprintf(stderr, "bench_allreduce: rank %d: %s at %zu bytes gave a wrong sum (%s)\n", rank,
                        anvil_all_reduce_algo_name(algos[a]), pts[p], anvil_last_error());
                rc = 1;
                break;
            }
            for (int i = 0; i < 5; i++)
                if (anvil_comm_all_reduce_sum(c, d, n, ANVIL_DTYPE_BF16) != ANVIL_OK)
                    rc = 1;
            const int iters = iters_for(pts[p]);
            const double t0 = now_s();
            for (int i = 0; i < iters && rc == 0; i++)
                if (anvil_comm_all_reduce_sum(c, d, n, ANVIL_DTYPE_BF16) != ANVIL_OK)
                    rc = 1;
            double t = (now_s() - t0) / iters * 1e6;
            double all[64];
            /* the slowest rank's mean (every rank's through the boot communicator) */
            if (rc == 0 && size <= 64 && anvil_comm_all_gather(boot, &t, all, sizeof t) == ANVIL_OK)
                for (int32_t r = 0; r < size; r++)
                    t = all[r] > t ? all[r] : t;
            us[a][p] = t;
        }
    }
    if (rc != 0) {
        fprintf(stderr, "bench_allreduce: rank %d: %s\n", rank, anvil_last_error());
        anvil_comm_abort(boot, 1);
        return 1;
    }
    if (rank == 0) {
        printf("bf16 all-reduce on %d ranks (%s, one a rank), us a call (the host's wait included); bus GB/s = "
               "2 (N-1)/N x bytes / time\n",
               size, prop.name);
        printf("%12s %12s %12s %12s %10s %10s %10s  %s\n", "bytes", "nccl us", "oneshot us", "twoshot us", "nccl bus",
               "1shot bus", "2shot bus", "fastest");
        const double f = size > 1 ? 2.0 * (size - 1) / size : 1.0;
        for (int p = 0; p < n_pts; p++) {
            int best = 0;
            for (int a = 1; a < N_ALGO; a++)
                if (ran_as[a][p] == (int)algos[a] && us[a][p] < us[best][p])
                    best = a;
            printf("%12zu %12.1f %11.1f%s %11.1f%s %10.2f %10.2f %10.2f  %s\n", pts[p], us[NCCL_I][p], us[ONE_I][p],
                   ran_as[ONE_I][p] == (int)algos[ONE_I] ? " " : "*", us[TWO_I][p],
                   ran_as[TWO_I][p] == (int)algos[TWO_I] ? " " : "*", f * (double)pts[p] / us[NCCL_I][p] * 1e-3,
                   f * (double)pts[p] / us[ONE_I][p] * 1e-3, f * (double)pts[p] / us[TWO_I][p] * 1e-3,
                   anvil_all_reduce_algo_name(algos[best]));
        }
        /* the crossovers: one-shot up to the last size it wins before it
         * stops winning, then two-shot likewise */
        size_t one_max = 0, two_max = 0;
        int p = 0;
        for (; p < n_pts && ran_as[ONE_I][p] == (int)algos[ONE_I] && us[ONE_I][p] < us[NCCL_I][p] &&
               us[ONE_I][p] <= us[TWO_I][p];
             p++)
            one_max = pts[p];
        for (; p < n_pts && ran_as[TWO_I][p] == (int)algos[TWO_I] && us[TWO_I][p] < us[NCCL_I][p]; p++)
            two_max = pts[p];
        printf("(* IPC refused here: NCCL ran)\nsuggested crossovers for %d ranks (src/comm/comm_plan.c): {%d, %zu, "
               "%zu}\n",
               size, size, one_max, two_max > one_max ? two_max : one_max);
        if (json_path != NULL) {
            FILE *js = fopen(json_path, "w");
            if (js == NULL) {
                fprintf(stderr, "cannot write %s\n", json_path);
                rc = 1;
            } else {
                fprintf(js, "{\"bench\": \"allreduce\", \"device\": \"%s\", \"ranks\": %d, \"dtype\": \"bf16\", "
                            "\"points\": [",
                        prop.name, size);
                for (int q = 0; q < n_pts; q++)
                    fprintf(js, "%s\n  {\"bytes\": %zu, \"nccl_us\": %.2f, \"oneshot_us\": %.2f, \"oneshot_ran\": \"%s\", "
                                "\"twoshot_us\": %.2f, \"twoshot_ran\": \"%s\"}",
                            q ? "," : "", pts[q], us[NCCL_I][q], us[ONE_I][q],
                            anvil_all_reduce_algo_name((anvil_all_reduce_algo)ran_as[ONE_I][q]), us[TWO_I][q],
                            anvil_all_reduce_algo_name((anvil_all_reduce_algo)ran_as[TWO_I][q]));
                fprintf(js, "\n], \"crossover\": {\"oneshot_max\": %zu, \"twoshot_max\": %zu}}\n", one_max,
                        two_max > one_max ? two_max : one_max);
                fclose(js);
            }
        }
    }
    cudaFree(d);
    free(h);
    anvil_comm_free(c);
    anvil_comm_free(boot);
    return rc;
}
