#!/usr/bin/env bash
# Builds the CUDA tests here for the GPU machine (which has CUDA 13 but not
# this machine's -dev libraries) and gathers what a run there needs:
#   build-device/   CMake build: -DANVIL_STATIC_DEPS=ON (jansson, PCRE2,
#                   utf8proc, xxHash linked from their .a files; CUDA runtime
#                   and cuBLASLt stay shared: the device has them), sm_80 + sm_90a
#   .device/bin.tar.xz the test executables, bench_cuda_latency, the anvil command (libanvil linked in) and
#                   next to it the CUDA backend module libanvil-cuda.so, which the command loads for
#                   --device cuda (copied out of build-device, so the run carries a few MB instead of
#                   the whole build tree)
#   .device/lib/    libcmocka.so.0 (Debian ships no static cmocka)
#   .device/shared/ the models and golden files the CUDA tests read
# Then, with the device tool:  run(command="scripts/device_test.sh", carry=[".device"])
# (.device is in .gitignore).
#   scripts/device_build.sh [--no-data]
# DEVICE_CUDA_ARCHS="90a-real": one architecture (half the nvcc time, for a run on an H100/H200 only).
set -euo pipefail
cd "$(dirname "$0")/.."

cmake -S . -B build-device -DCMAKE_BUILD_TYPE=RelWithDebInfo -DANVIL_CUDA=ON -DANVIL_STATIC_DEPS=ON -DANVIL_WERROR=ON \
  -DCMAKE_CUDA_ARCHITECTURES="${DEVICE_CUDA_ARCHS:-80-real;90a-real}" -DANVIL_SHARED_DIR="$PWD/.device/shared" >/dev/null
# every tests/cuda test, the latency benchmark, the anvil command and the CUDA module
cuda_tests=$(ls tests/cuda/test_*.c | xargs -n1 basename | sed 's/\.c$//' | tr '\n' ' ')
# DEVICE_EXTRA_TESTS: more test targets to carry (e.g. the CPU kernel tests,
# to run them on the GPU machine's AVX-512 host)
cuda_tests="$cuda_tests ${DEVICE_EXTRA_TESTS:-}"
cmake --build build-device -j2 --target $cuda_tests bench_cuda_latency bench_allreduce bench_gemv_quant bench_load anvil_cli anvil_cuda

rm -rf .device/bin
mkdir -p .device/bin .device/lib
cp build-device/bench_cuda_latency build-device/bench_allreduce build-device/bench_gemv_quant build-device/bench_load build-device/anvil build-device/libanvil-cuda.so .device/bin/
for t in $cuda_tests bench_cuda_latency bench_allreduce bench_gemv_quant bench_load anvil libanvil-cuda.so; do
  if [ -f build-device/tests/$t ]; then cp build-device/tests/$t .device/bin/; fi
  strip --strip-debug .device/bin/$t
  # nothing of this machine's -dev libraries may be needed at run time
  if ldd .device/bin/$t | grep -Eq 'jansson|pcre2|utf8proc|xxhash|microhttpd'; then
    echo "device_build: $t still links a shared dependency:" >&2
    ldd .device/bin/$t >&2
    exit 1
  fi
done
cp -L "$(ldconfig -p | awk '/libcmocka.so.0 /{print $NF; exit}')" .device/lib/libcmocka.so.0
# the binaries are mostly the same library (CUDA code): xz with a window
# larger than all of them together stores it once (session 30: 545 MB of
# binaries into 5.4 MB in ~3 minutes; -9 -T2, whose blocks each start
# afresh, made 11.6 MB); the tool carries 64 MiB at most, the repository's
# tracked files (~30 MB) included (device_test.sh unpacks them)
rm -f .device/bin.tgz
tar cf - -C .device bin | xz -T1 --lzma2=preset=6,dict=600MiB > .device/bin.tar.xz
rm -rf .device/bin

if [ "${1:-}" != "--no-data" ]; then
  shared=${ANVIL_SHARED_DIR:-$PWD/../shared}
  mkdir -p .device/shared/models .device/shared/golden/models
  for m in stories260K tinycode tiny-llama3 tiny-qwen2 tiny-mistral tiny-qwen3 tiny-phi3 tiny-gemma2 tiny-mixtral; do
    rm -rf .device/shared/models/$m .device/shared/golden/models/$m
    cp -r "$shared/models/$m" .device/shared/models/
    cp -r "$shared/golden/models/$m" .device/shared/golden/models/
  done
  # models kept in the repository (their goldens in the same folder)
  for m in tiny-gpt2 tiny-qwen2-moe tiny-qwen3-moe tiny-deepseek-v2-lite tiny-deepseek-v2; do
    rm -rf .device/shared/models/$m .device/shared/golden/models/$m
    mkdir -p .device/shared/models/$m .device/shared/golden/models/$m
    cp tests/data/models/$m/* .device/shared/models/$m/
    cp tests/data/models/$m/cases.json tests/data/models/$m/logits.safetensors .device/shared/golden/models/$m/
  done
  chmod -R u+w .device/shared
fi
du -sh .device
