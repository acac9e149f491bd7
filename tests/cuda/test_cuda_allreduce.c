/*
 * The one-shot and two-shot all-reduce over CUDA IPC peer buffers
 * (src/comm/comm_ipc.c, comm_ipc_kernel.cu; docs/parallel.md "The
 * small-message all-reduce"):
 *
 *   test_cuda_allreduce                  one rank (self): the kernels with one
 *                                        rank (the sum is the copy), graphs
 *   test_cuda_allreduce --fork 2         two processes, booted by pipes: on a
 *                                        1-GPU machine both on cuda:0 (IPC
 *                                        between processes on one GPU; NCCL
 *                                        refuses two ranks a GPU, so only the
 *                                        IPC object is tested), else one GPU a
 *                                        rank
 *   mpirun -np N test_cuda_allreduce     one GPU a rank (cuda:<local rank>)
 *
 * Checked on every rank, for one-shot and two-shot, f32 / bf16 / f16, 1 to
 * 2^20 + 3 elements (sizes off the 16-byte unit and the slices), a buffer
 * off 16-byte alignment: the bits of the rank-order f32 sum rounded once
 * (the values are not integers: the order shows), three calls in a row
 * (the barrier's generations), and ten replays of a CUDA graph holding a
 * one-shot and a two-shot sum. With a GPU a rank, the same through the
 * NCCL communicator (anvil_comm_set_all_reduce: oneshot, twoshot, nccl;
 * anvil_comm_all_reduce_algo says which ran) and, on two ranks, NCCL's
 * own sum equal bit for bit to the rank-order sum. Prints PASS/FAIL lines,
 * and TIME lines (rank 0; per call, the host's wait included; not
 * asserted). Skips (77) without a GPU or without NCCL's header at build.
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "anvil/comm.h"
#include "backend/cuda/cuda_backend.h"
#include "comm/comm_internal.h"
#include "core/error.h"
#include "fork_comm.h"
#include "testutil.h"
#if ANVIL_HAVE_NCCL
#include "comm/comm_ipc.h"
#endif

#define MAX_BYTES ((size_t)8 << 20)

static anvil_comm *boot; /* MPI under mpirun, pipes under --fork, else self */
static int device, shared_gpu;

#if ANVIL_HAVE_NCCL

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

static anvil_ipc_ar *ipc;
static cudaStream_t stream;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static anvil_status boot_gather(void *ctx, const void *mine, void *all, size_t bytes)
{
    return anvil_comm_all_gather(ctx, mine, all, bytes);
}

/* Rank r's value e at call `call`: not integers, so a sum in another order
 * or rounded twice shows. */
static float value(int32_t r, int64_t e, int call)
{
    return (float)((e * 37 + r * 11 + call * 5) % 101) * 0.173f - 7.31f + 0.0137f * (float)r;
}

/* Every rank's values rounded to dt, summed in rank order in f32 and
 * rounded once, into want (n x element size). */
static void rank_order_sum(anvil_dtype dt, int32_t size, int64_t n, int call, void *want, void *mine, int32_t rank)
{
    float *acc = malloc((size_t)n * sizeof *acc), *v = malloc((size_t)n * sizeof *v);
    unsigned char *h = malloc((size_t)n * anvil_dtype_size(dt));
    assert_true(acc && v && h);
    for (int32_t r = 0; r < size; r++) {
        for (int64_t e = 0; e < n; e++)
            v[e] = value(r, e, call);
        anvil_convert_from_f32(dt, v, h, n); /* the rank's input, rounded */
        if (r == rank)
            memcpy(mine, h, (size_t)n * anvil_dtype_size(dt));
        anvil_convert_to_f32(dt, h, v, n);
        for (int64_t e = 0; e < n; e++)
            acc[e] = r == 0 ? v[e] : acc[e] + v[e];
    }
    anvil_convert_from_f32(dt, acc, want, n);
    free(acc);
    free(v);
    free(h);
}

/* A sum of n elements of dt at offset `off` elements into a device buffer:
 * enqueued by `run` (the IPC object or a communicator), checked bit for
 * bit against the rank-order sum, three calls in a row. */
typedef anvil_status (*sum_fn)(void *buf, int64_t n, anvil_dtype dt, anvil_all_reduce_algo algo);

static void check_sums(sum_fn run, anvil_all_reduce_algo algo, anvil_dtype dt, int64_t n, int64_t off,
                       int32_t rank, int32_t size, const char *via)
{
    const size_t es = anvil_dtype_size(dt), bytes = (size_t)n * es;
    unsigned char *want = malloc(bytes), *mine = malloc(bytes), *got = malloc(bytes);
    unsigned char *d = NULL;
    assert_true(want && mine && got);
    assert_int_equal(cudaMalloc((void **)&d, bytes + (size_t)off * es + 16), cudaSuccess);
    for (int call = 0; call < 3; call++) {
        rank_order_sum(dt, size, n, call, want, mine, rank);
        assert_int_equal(h2d_sync(d + off * (int64_t)es, mine, bytes), cudaSuccess);
        if (run(d + off * (int64_t)es, n, dt, algo) != ANVIL_OK)
            fail_msg("FAIL %s %s %s x %lld: %s", via, anvil_all_reduce_algo_name(algo), anvil_dtype_name(dt),
                     (long long)n, anvil_last_error());
        assert_int_equal(cudaMemcpy(got, d + off * (int64_t)es, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
        for (int64_t e = 0; e < n; e++)
            if (memcmp(got + e * (int64_t)es, want + e * (int64_t)es, es) != 0) {
                float g, w;
                anvil_convert_to_f32(dt, got + e * (int64_t)es, &g, 1);
                anvil_convert_to_f32(dt, want + e * (int64_t)es, &w, 1);
                fail_msg("FAIL %s %s %s x %lld (offset %lld, call %d): [%lld] = %.9g, the rank-order sum %.9g "
                         "(rank %d of %d)",
                         via, anvil_all_reduce_algo_name(algo), anvil_dtype_name(dt), (long long)n, (long long)off,
                         call, (long long)e, (double)g, (double)w, rank, size);
            }
    }
    cudaFree(d);
    free(want);
    free(mine);
    free(got);
}

static anvil_status ipc_sum(void *buf, int64_t n, anvil_dtype dt, anvil_all_reduce_algo algo)
{
    TRY(anvil_ipc_ar_enqueue(ipc, buf, n, dt, algo, stream));
    return anvil_ipc_ar_wait(ipc, stream, 30, "IPC all-reduce");
}

static const int64_t sizes[] = {1, 7, 8, 9, 1000, 4097, 65537, ((int64_t)1 << 20) + 3};
static const anvil_dtype dts[] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};

static void test_ipc_sums(void **state)
{
    (void)state;
    if (ipc == NULL)
        skip();
    const int32_t rank = anvil_comm_rank(boot), size = anvil_comm_size(boot);
    for (int a = 0; a < 2; a++) {
        const anvil_all_reduce_algo algo = a ? ANVIL_ALL_REDUCE_TWOSHOT : ANVIL_ALL_REDUCE_ONESHOT;
        for (size_t d = 0; d < 3; d++)
            for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
                check_sums(ipc_sum, algo, dts[d], sizes[k], 0, rank, size, "ipc");
        /* the caller's buffer off 16-byte alignment (the IPC buffers are not) */
        check_sums(ipc_sum, algo, ANVIL_DTYPE_BF16, 4097, 1, rank, size, "ipc (unaligned)");
        check_sums(ipc_sum, algo, ANVIL_DTYPE_F32, 1001, 3, rank, size, "ipc (unaligned)");
        printf("PASS %s: f32/bf16/f16 x 1 .. 2^20+3, unaligned, 3 calls each: the rank-order sum's bits "
               "(rank %d of %d%s)\n",
               anvil_all_reduce_algo_name(algo), rank, size, shared_gpu ? ", one GPU shared" : "");
    }
    /* past the buffer: refused, nothing launched */
    assert_int_equal(anvil_ipc_ar_enqueue(ipc, (void *)16, (int64_t)(MAX_BYTES / 2 + 1), ANVIL_DTYPE_F32,
                                          ANVIL_ALL_REDUCE_ONESHOT, stream),
                     ANVIL_ERR_INVALID_ARG);
}

/* A one-shot (bf16) and a two-shot (f32) sum captured in one graph,
 * replayed ten times with new values: the generations live in device
 * memory, so every replay meets the peers' same replay. */
static void test_ipc_graph(void **state)
{
    (void)state;
    if (ipc == NULL)
        skip();
    const int32_t rank = anvil_comm_rank(boot), size = anvil_comm_size(boot);
    const int64_t na = 5000, nb = 70001;
    void *da = NULL, *db = NULL;
    assert_int_equal(cudaMalloc(&da, (size_t)na * 2), cudaSuccess);
    assert_int_equal(cudaMalloc(&db, (size_t)nb * 4), cudaSuccess);
    cudaGraph_t g;
    cudaGraphExec_t exec;
    assert_int_equal(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    const anvil_status s1 = anvil_ipc_ar_enqueue(ipc, da, na, ANVIL_DTYPE_BF16, ANVIL_ALL_REDUCE_ONESHOT, stream);
    const anvil_status s2 = anvil_ipc_ar_enqueue(ipc, db, nb, ANVIL_DTYPE_F32, ANVIL_ALL_REDUCE_TWOSHOT, stream);
    assert_int_equal(cudaStreamEndCapture(stream, &g), cudaSuccess);
    assert_int_equal(s1, ANVIL_OK);
    assert_int_equal(s2, ANVIL_OK);
    assert_int_equal(cudaGraphInstantiate(&exec, g, 0), cudaSuccess);
    unsigned char *wa = malloc((size_t)na * 2), *ma = malloc((size_t)na * 2), *ga = malloc((size_t)na * 2);
    unsigned char *wb = malloc((size_t)nb * 4), *mb = malloc((size_t)nb * 4), *gb = malloc((size_t)nb * 4);
    assert_true(wa && ma && ga && wb && mb && gb);
    for (int replay = 0; replay < 10; replay++) {
        rank_order_sum(ANVIL_DTYPE_BF16, size, na, 10 + replay, wa, ma, rank);
        rank_order_sum(ANVIL_DTYPE_F32, size, nb, 20 + replay, wb, mb, rank);
        assert_int_equal(h2d_sync(da, ma, (size_t)na * 2), cudaSuccess);
        assert_int_equal(h2d_sync(db, mb, (size_t)nb * 4), cudaSuccess);
        assert_int_equal(cudaGraphLaunch(exec, stream), cudaSuccess);
        if (anvil_ipc_ar_wait(ipc, stream, 30, "graph replay") != ANVIL_OK)
            fail_msg("FAIL graph replay %d: %s", replay, anvil_last_error());
        assert_int_equal(cudaMemcpy(ga, da, (size_t)na * 2, cudaMemcpyDeviceToHost), cudaSuccess);
        assert_int_equal(cudaMemcpy(gb, db, (size_t)nb * 4, cudaMemcpyDeviceToHost), cudaSuccess);
        if (memcmp(ga, wa, (size_t)na * 2) != 0 || memcmp(gb, wb, (size_t)nb * 4) != 0)
            fail_msg("FAIL graph replay %d: not the rank-order sum (rank %d of %d)", replay, rank, size);
    }
    printf("PASS a CUDA graph of a one-shot (bf16 x %lld) and a two-shot (f32 x %lld) sum, 10 replays (rank %d of "
           "%d)\n",
           (long long)na, (long long)nb, rank, size);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(g);
    cudaFree(da);
    cudaFree(db);
    free(wa), free(ma), free(ga), free(wb), free(mb), free(gb);
}

/* Time a call of `run` at bytes of bf16 (the host's wait included). */
static double time_call(sum_fn run, anvil_all_reduce_algo algo, void *d, size_t bytes)
{
    const int64_t n = (int64_t)(bytes / 2);
    for (int i = 0; i < 5; i++)
        assert_int_equal(run(d, n, ANVIL_DTYPE_BF16, algo), ANVIL_OK);
    const int iters = bytes <= ((size_t)1 << 20) ? 100 : 20;
    const double t0 = now_s();
    for (int i = 0; i < iters; i++)
        assert_int_equal(run(d, n, ANVIL_DTYPE_BF16, algo), ANVIL_OK);
    return (now_s() - t0) / iters * 1e6;
}

static void test_ipc_timing(void **state)
{
    (void)state;
    if (ipc == NULL)
        skip();
    void *d = NULL;
    assert_int_equal(cudaMalloc(&d, MAX_BYTES), cudaSuccess);
    assert_int_equal(cudaMemset(d, 0, MAX_BYTES), cudaSuccess);
    for (size_t bytes = 1024; bytes <= MAX_BYTES; bytes *= 8) {
        const double one = time_call(ipc_sum, ANVIL_ALL_REDUCE_ONESHOT, d, bytes);
        const double two = time_call(ipc_sum, ANVIL_ALL_REDUCE_TWOSHOT, d, bytes);
        if (anvil_comm_rank(boot) == 0)
            printf("TIME ipc all-reduce bf16 %zu KiB on %d ranks%s: one-shot %.1f us, two-shot %.1f us a call (the "
                   "host's wait included)\n",
                   bytes / 1024, anvil_comm_size(boot), shared_gpu ? " (one GPU shared: time-sliced, not a measure)" : "",
                   one, two);
    }
    cudaFree(d);
}

/* ------------------------------------------------------------ through the NCCL communicator */

static anvil_comm *nccl;

static anvil_status comm_sum(void *buf, int64_t n, anvil_dtype dt, anvil_all_reduce_algo algo)
{
    (void)algo; /* chosen by anvil_comm_set_all_reduce */
    return anvil_comm_all_reduce_sum(nccl, buf, n, dt);
}

static void test_nccl_comm(void **state)
{
    (void)state;
    if (nccl == NULL)
        skip();
    const int32_t rank = anvil_comm_rank(nccl), size = anvil_comm_size(nccl);
    static const anvil_all_reduce_algo algos[] = {ANVIL_ALL_REDUCE_ONESHOT, ANVIL_ALL_REDUCE_TWOSHOT,
                                                  ANVIL_ALL_REDUCE_NCCL};
    for (int a = 0; a < 3; a++) {
        if (anvil_comm_set_all_reduce(nccl, algos[a], MAX_BYTES) != ANVIL_OK)
            fail_msg("FAIL set_all_reduce %s: %s", anvil_all_reduce_algo_name(algos[a]), anvil_last_error());
        const anvil_all_reduce_algo ran = anvil_comm_all_reduce_algo(nccl, 4096, ANVIL_DTYPE_BF16);
        if (ran != algos[a]) {
            /* IPC refused here (the warning said why): NCCL sums */
            printf("NOTE %s asked, %s runs (rank %d of %d)\n", anvil_all_reduce_algo_name(algos[a]),
                   anvil_all_reduce_algo_name(ran), rank, size);
            assert_int_equal(ran, ANVIL_ALL_REDUCE_NCCL);
        }
        /* past the IPC buffer: NCCL */
        assert_int_equal(anvil_comm_all_reduce_algo(nccl, (int64_t)(MAX_BYTES / 2) + 1, ANVIL_DTYPE_BF16),
                         ANVIL_ALL_REDUCE_NCCL);
        /* NCCL's sum is the rank-order one bit for bit on two ranks (a + b
         * once, in f32 then rounded: double rounding is exact here); with
         * more its order and rounding are its own */
        if (ran != ANVIL_ALL_REDUCE_NCCL || size == 2) {
            for (size_t d = 0; d < 3; d++)
                for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
                    check_sums(comm_sum, ran, dts[d], sizes[k], 0, rank, size, "nccl communicator");
            printf("PASS the NCCL communicator set to %s (ran %s): the rank-order sum's bits (rank %d of %d)\n",
                   anvil_all_reduce_algo_name(algos[a]), anvil_all_reduce_algo_name(ran), rank, size);
        }
    }
    void *d = NULL;
    assert_int_equal(cudaMalloc(&d, MAX_BYTES), cudaSuccess);
    assert_int_equal(cudaMemset(d, 0, MAX_BYTES), cudaSuccess);
    for (size_t bytes = 1024; bytes <= MAX_BYTES; bytes *= 8) {
        double us[3];
        for (int a = 0; a < 3; a++) {
            assert_int_equal(anvil_comm_set_all_reduce(nccl, algos[a], MAX_BYTES), ANVIL_OK);
            us[a] = time_call(comm_sum, algos[a], d, bytes);
        }
        if (rank == 0)
            printf("TIME all_reduce_sum bf16 %zu KiB on %d ranks: one-shot %.1f us, two-shot %.1f us, nccl %.1f us "
                   "a call\n",
                   bytes / 1024, size, us[0], us[1], us[2]);
    }
    assert_int_equal(anvil_comm_set_all_reduce(nccl, ANVIL_ALL_REDUCE_AUTO, MAX_BYTES), ANVIL_OK);
    cudaFree(d);
}

static int setup(void **state)
{
    (void)state;
    return anvil_cuda_device_count() == 0 ? -1 : 0;
}
#endif

int main(int argc, char **argv)
{
    setenv("CMOCKA_TEST_ABORT", "1", 1); /* a failed rank ends; mpirun (or the pipes) end the others */
    const int under_mpirun = getenv("OMPI_COMM_WORLD_SIZE") != NULL || getenv("PMIX_RANK") != NULL;
    const int32_t n_fork = argc == 3 && strcmp(argv[1], "--fork") == 0 ? (int32_t)atoi(argv[2]) : 0;
    if (n_fork > MAX_FORK || (argc > 1 && n_fork < 1)) {
        fprintf(stderr, "usage: test_cuda_allreduce [--fork N (1..%d)]\n", MAX_FORK);
        return 2;
    }
    if (n_fork > 1) {
        boot = fork_ranks(n_fork);
        if (boot == NULL) {
            fprintf(stderr, "test_cuda_allreduce: cannot fork %d ranks\n", n_fork);
            return 1;
        }
    } else if (under_mpirun && anvil_comm_mpi_built() ? anvil_comm_create_mpi(&boot) != ANVIL_OK
                                                      : anvil_comm_create_self(&boot) != ANVIL_OK) {
        fprintf(stderr, "test_cuda_allreduce: %s\n", anvil_last_error());
        return 1;
    }
    const int n_dev = anvil_cuda_device_count();
    if (n_dev == 0) {
        printf("SKIP: no CUDA GPU\n");
        anvil_comm_free(boot);
        return 77;
    }
#if !ANVIL_HAVE_NCCL
    (void)device, (void)shared_gpu;
    printf("SKIP: built without NCCL's header (the IPC all-reduce is built with the NCCL communicator)\n");
    anvil_comm_free(boot);
    return 77;
#else
    const int32_t rank = anvil_comm_rank(boot), size = anvil_comm_size(boot);
    const char *local = n_fork > 1 ? NULL : getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    device = (local ? atoi(local) : rank) % n_dev;
    shared_gpu = size > n_dev;
    if (cudaSetDevice(device) != cudaSuccess || cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
        fprintf(stderr, "FAIL: cuda:%d\n", device);
        return 1;
    }
    char why[256];
    const anvil_status st = anvil_ipc_ar_create(rank, size, device, MAX_BYTES, boot_gather, boot, &ipc, why, sizeof why);
    if (st == ANVIL_ERR_UNSUPPORTED)
        printf("NOTE: no IPC all-reduce here (%s): its tests skip (rank %d of %d)\n", why, rank, size);
    else if (st != ANVIL_OK) {
        fprintf(stderr, "FAIL: anvil_ipc_ar_create: %s\n", anvil_last_error());
        return 1;
    }
    else
        printf("ipc all-reduce: rank %d of %d on cuda:%d%s\n", rank, size, device,
               shared_gpu ? " (GPUs shared by several ranks)" : "");
    /* NCCL needs a GPU a rank */
    if (size > 1 && !shared_gpu) {
        const anvil_status ns = anvil_comm_create_nccl(boot, device, &nccl);
        if (ns != ANVIL_OK) {
            fprintf(stderr, "%s: anvil_comm_create_nccl: %s\n", ns == ANVIL_ERR_UNSUPPORTED ? "NOTE" : "FAIL",
                    anvil_last_error());
            if (ns != ANVIL_ERR_UNSUPPORTED)
                return 1;
        }
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ipc_sums),
        cmocka_unit_test(test_ipc_graph),
        cmocka_unit_test(test_ipc_timing),
        cmocka_unit_test(test_nccl_comm),
    };
    int rc = cmocka_run_group_tests(tests, setup, NULL);
    anvil_comm_free(nccl);
    anvil_ipc_ar_free(ipc);
    cudaStreamDestroy(stream);
    anvil_comm_free(boot);
    if (n_fork > 1 && fork_rank == 0 && !fork_wait(n_fork))
        rc = 1;
    if (n_fork > 1 && fork_rank == 0)
        printf("%s: %d forked ranks\n", rc == 0 ? "PASS" : "FAIL", n_fork);
    return rc;
#endif
}
