#!/usr/bin/env bash
# Runs on the GPU machine (see scripts/device_build.sh), from the repo root:
# the CUDA op tests, the CUDA golden tests, the step-graph tests,
# compute-sanitizer memcheck and racecheck over the op tests (quick mode),
# the --perf table, `anvil run --device cuda` end to end (e2e: greedy ids
# equal to the CPU's for stories260K in f32), and the latency benchmark
# (bench: BENCH_ARGS are passed to bench_cuda_latency; models are written
# to /dev/shm when it has room, else /tmp).
# Logs go to $OUT when it is set (the device tool brings them back).
#   scripts/device_test.sh [ops|golden|graph|memcheck|racecheck|memcheck_fused|racecheck_fused|initcheck_fused|
#                           perf|e2e|bench|
#                           kv_fp8|test_cuda_<name>|perf_gemm_quant|memcheck_gemm_quant|racecheck_gemm_quant|
#                           perf_mla|memcheck_mla|racecheck_mla|perf_stream|memcheck_stream|racecheck_stream|
#                           perf_moe_quant|bench_stream|perf_fp8_norm|bench_fp8_norm ...]
#   (*_gemm_quant: the quantized GEMM's --perf table, and its test under compute-sanitizer, quick mode)
#   (*_mla: the same for test_cuda_mla, DeepSeek-V2's attention)
#   (*_stream: the streaming quantized GEMV (matmul_quant = 7): its --perf rows beside the mma16 GEMV's,
#    test_cuda_stream_quant under compute-sanitizer; perf_moe_quant: one Mixtral layer's experts;
#    bench_stream: bench_cuda_latency with ANVIL_CUDA_MATMUL_QUANT=7 and BENCH_ARGS)
#   (kv_fp8: the fp8 KV cache's op and golden tests alone)
#   (perf_fp8_norm: test_cuda_fp8_norm --perf, a 2048-token fp8 prefill's q/k/v and gate/up groups with the
#    norm's shared codes and without, beside cuBLASLt's FP8 GEMMs alone; bench_fp8_norm: bench_cuda_latency
#    on the fp8 8B engine at 1:2048:1 (its FP8 GEMM rate and the prefill's fraction of it), shared then
#    ANVIL_CUDA_FP8_UNSHARED=1)
#   (fused_contention: test_cuda_fused 3 times beside test_cuda_ops on the same GPU, then 3 times with
#    ANVIL_TEST_NO_PDL=1: session 30 saw it fail only under contention; initcheck_fused: its
#    test_norm_matmul under compute-sanitizer's initcheck, reads of memory nothing wrote)
#   (default: ops golden graph memcheck racecheck perf e2e)
set -uo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH="$PWD/.device/lib:${LD_LIBRARY_PATH:-}"
export ANVIL_SHARED_DIR="$PWD/.device/shared"
out=${OUT:-/tmp}
bin=.device/bin
if [ -f .device/bin.tar.xz ]; then tar xJf .device/bin.tar.xz -C .device; fi
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(ops golden graph memcheck racecheck perf e2e)
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
status=0
for s in "${steps[@]}"; do
  echo "=== $s"
  t0=$(date +%s)
  case $s in
    ops) timeout 240 $bin/test_cuda_ops >"$out/ops.log" 2>&1 ;;
    graph) timeout 120 $bin/test_cuda_graph >"$out/graph.log" 2>&1 ;;
    e2e) timeout 120 scripts/device_e2e.sh "$bin/anvil" .device/shared/models >"$out/e2e.log" 2>&1 ;;
    bench)
      ws=/dev/shm/anvil-bench
      [ "$(df --output=avail -k /dev/shm 2>/dev/null | tail -1)" -gt 40000000 ] 2>/dev/null || ws=/tmp/anvil-bench
      timeout 500 $bin/bench_cuda_latency --workdir $ws --json "$out/bench.json" ${BENCH_ARGS:-} >"$out/bench.log" 2>&1 ;;
    golden) timeout 120 $bin/test_cuda_golden >"$out/golden.log" 2>&1 ;;
    kv_fp8) { timeout 200 $bin/test_cuda_ops --only 'test_attention_fp8' &&
              timeout 60 $bin/test_cuda_golden --only 'test_fp8_kv'; } >"$out/kv_fp8.log" 2>&1 ;;
    load) # build and load times of an engine vs its folder (LOAD_ARGS: bench_load's options)
      timeout 560 $bin/bench_load --workdir /tmp/anvil-load --device cuda --json "$out/load.json" ${LOAD_ARGS:-} >"$out/load.log" 2>&1 ;;
    memcheck) ANVIL_TEST_QUICK=1 timeout 170 "$sanitizer" --tool memcheck --leak-check full --error-exitcode 9 \
                $bin/test_cuda_ops >"$out/memcheck.log" 2>&1 ;;
    racecheck) ANVIL_TEST_QUICK=1 timeout 170 "$sanitizer" --tool racecheck --racecheck-report all --error-exitcode 9 \
                 $bin/test_cuda_ops >"$out/racecheck.log" 2>&1 ;;
    perf) timeout 60 $bin/test_cuda_ops --perf >"$out/perf.log" 2>&1 ;;
    test_cuda_*) timeout 240 $bin/$s >"$out/$s.log" 2>&1 ;;
    perf_gemm_quant) timeout 300 $bin/test_cuda_gemm_quant --perf >"$out/perf_gemm_quant.log" 2>&1 ;;
    memcheck_gemm_quant) ANVIL_TEST_QUICK=1 timeout 300 "$sanitizer" --tool memcheck --error-exitcode 9 \
                           $bin/test_cuda_gemm_quant >"$out/memcheck_gemm_quant.log" 2>&1 ;;
    racecheck_gemm_quant) ANVIL_TEST_QUICK=1 timeout 400 "$sanitizer" --tool racecheck --racecheck-report all \
                            --error-exitcode 9 $bin/test_cuda_gemm_quant >"$out/racecheck_gemm_quant.log" 2>&1 ;;
    perf_mla) timeout 300 $bin/test_cuda_mla --perf >"$out/perf_mla.log" 2>&1 ;;
    perf_stream) { ANVIL_PERF_FILTER=stream timeout 200 $bin/test_cuda_ops --perf &&
                   ANVIL_PERF_FILTER=mma16 timeout 200 $bin/test_cuda_ops --perf; } >"$out/perf_stream.log" 2>&1 ;;
    memcheck_stream) ANVIL_TEST_QUICK=1 timeout 400 "$sanitizer" --tool memcheck --error-exitcode 9 \
                       $bin/test_cuda_stream_quant >"$out/memcheck_stream.log" 2>&1 ;;
    racecheck_stream) ANVIL_TEST_QUICK=1 timeout 500 "$sanitizer" --tool racecheck --racecheck-report all \
                        --error-exitcode 9 $bin/test_cuda_stream_quant >"$out/racecheck_stream.log" 2>&1 ;;
    perf_moe_quant) timeout 300 $bin/test_cuda_moe_quant --perf >"$out/perf_moe_quant.log" 2>&1 ;;
    perf_fp8_norm) timeout 200 $bin/test_cuda_fp8_norm --perf >"$out/perf_fp8_norm.log" 2>&1 ;;
    bench_fp8_norm)
      ws=/dev/shm/anvil-bench
      [ "$(df --output=avail -k /dev/shm 2>/dev/null | tail -1)" -gt 40000000 ] 2>/dev/null || ws=/tmp/anvil-bench
      { timeout 500 $bin/bench_cuda_latency --workdir $ws --models llama-8b --quantize fp8 --cases 1:2048:1 &&
        ANVIL_CUDA_FP8_UNSHARED=1 timeout 300 $bin/bench_cuda_latency --workdir $ws --models llama-8b \
          --quantize fp8 --cases 1:2048:1; } >"$out/bench_fp8_norm.log" 2>&1 ;;
    bench_stream)
      ws=/dev/shm/anvil-bench
      [ "$(df --output=avail -k /dev/shm 2>/dev/null | tail -1)" -gt 40000000 ] 2>/dev/null || ws=/tmp/anvil-bench
      ANVIL_CUDA_MATMUL_QUANT=7 timeout 500 $bin/bench_cuda_latency --workdir $ws --json "$out/bench_stream.json" \
        ${BENCH_ARGS:-} >"$out/bench_stream.log" 2>&1 ;;
    memcheck_mla) ANVIL_TEST_QUICK=1 timeout 400 "$sanitizer" --tool memcheck --error-exitcode 9 \
                    $bin/test_cuda_mla >"$out/memcheck_mla.log" 2>&1 ;;
    racecheck_mla) ANVIL_TEST_QUICK=1 timeout 500 "$sanitizer" --tool racecheck --racecheck-report all \
                     --error-exitcode 9 $bin/test_cuda_mla >"$out/racecheck_mla.log" 2>&1 ;;
    fused_contention) # test_cuda_fused beside a GPU load (test_cuda_ops), with dependent launches and without
      { for pdl in on off; do for i in 1 2 3; do
          $bin/test_cuda_ops >/dev/null 2>&1 & load=$!
          if [ $pdl = off ]; then ANVIL_TEST_NO_PDL=1 timeout 100 $bin/test_cuda_fused; else timeout 100 $bin/test_cuda_fused; fi \
            > /tmp/fused_c.log 2>&1; rc=$?; kill $load 2>/dev/null; wait $load 2>/dev/null
          echo "pdl $pdl run $i: rc=$rc $(grep -E 'differ|^\[  (PASSED|FAILED)' /tmp/fused_c.log | tr '\n' ' ' | cut -c1-300)"
        done; done; } >"$out/fused_contention.log" 2>&1; cat "$out/fused_contention.log"; true ;;
    memcheck_fused) ANVIL_TEST_QUICK=1 timeout 170 "$sanitizer" --tool memcheck --leak-check full --error-exitcode 9 \
                      $bin/test_cuda_fused >"$out/memcheck_fused.log" 2>&1 ;;
    racecheck_fused) ANVIL_TEST_QUICK=1 timeout 170 "$sanitizer" --tool racecheck --racecheck-report all --error-exitcode 9 \
                       $bin/test_cuda_fused >"$out/racecheck_fused.log" 2>&1 ;;
    initcheck_fused) # reads of device memory nothing wrote (a kernel ahead of an upload would show here)
      ANVIL_TEST_QUICK=1 timeout 170 "$sanitizer" --tool initcheck --error-exitcode 9 \
        $bin/test_cuda_fused --only test_norm_matmul >"$out/initcheck_fused.log" 2>&1 ;;
    *) echo "unknown step $s"; false ;;
  esac
  rc=$?
  [ $rc -ne 0 ] && status=1
  echo "--- $s: exit $rc in $(( $(date +%s) - t0 )) s"
  grep -E "PASSED|FAILED|ERROR SUMMARY|RACECHECK SUMMARY|agreement|\[  FAILED|error:|Error|e2e:|graphs recorded" "$out/$s.log" | head -30
  [ $rc -ne 0 ] && tail -25 "$out/$s.log"
done
[ -f "$out/perf.log" ] && cat "$out/perf.log"
[ -f "$out/perf_gemm_quant.log" ] && cat "$out/perf_gemm_quant.log"
[ -f "$out/perf_mla.log" ] && cat "$out/perf_mla.log"
[ -f "$out/perf_stream.log" ] && cat "$out/perf_stream.log"
[ -f "$out/perf_moe_quant.log" ] && cat "$out/perf_moe_quant.log"
[ -f "$out/perf_fp8_norm.log" ] && cat "$out/perf_fp8_norm.log"
[ -f "$out/bench_fp8_norm.log" ] && cat "$out/bench_fp8_norm.log"
[ -f "$out/bench_stream.log" ] && cat "$out/bench_stream.log"
[ -f "$out/bench.log" ] && cat "$out/bench.log"
[ -f "$out/load.log" ] && cat "$out/load.log"
exit $status
