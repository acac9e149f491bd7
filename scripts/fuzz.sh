#!/usr/bin/env bash
# Builds every libFuzzer target (tests/fuzz/fuzz_<target>.c) with clang, ASan
# and UBSan in build-fuzz/, then runs each for SECONDS (default 20) starting
# from its seeds in tests/fuzz/corpus/<target>/ (and tests/fuzz/fuzz_<target>.dict
# when there is one). Prints one line per target; exits non-zero if any
# target crashed, leaked, hit UB or timed out. New interesting inputs are kept
# in build-fuzz/fuzz-corpus/<target>/ (so later runs start further along), and
# a crashing input is saved as build-fuzz/fuzz-artifacts/<target>-crash-*:
# reproduce with build-fuzz/fuzz/fuzz_<target> <that file>.
# The random seed is fixed (FUZZ_SEED, default 1) so that a run, CI's
# included, can be repeated exactly; FUZZ_SEED=0 lets libFuzzer pick one.
# A libFuzzer run uses one core, so JOBS targets (default: the cores) run at
# once, each still for SECONDS (on CI's 2 cores: 9 targets in 50 s, not 90).
#   scripts/fuzz.sh [SECONDS]
#   scripts/fuzz.sh --build-only   (configure and build; .ci/run builds while tests run)
set -euo pipefail
cd "$(dirname "$0")/.."

build_only=0
if [ "${1:-}" = --build-only ]; then
  build_only=1
  shift
fi
secs=${1:-20}
build=build-fuzz
shared=${ANVIL_SHARED_DIR:-$(cd .. && pwd)/shared}

if ! command -v clang >/dev/null; then
  echo "fuzz: clang is not installed (scripts/setup.sh --test installs it)" >&2
  exit 2
fi

targets=()
for src in tests/fuzz/fuzz_*.c; do
  [ -e "$src" ] && targets+=("$(basename "$src" .c)")
done
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz: no targets in tests/fuzz/"
  exit 0
fi

CC=clang cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DANVIL_FUZZ=ON -DANVIL_CUDA=OFF -DANVIL_WERROR=ON \
  -DANVIL_SHARED_DIR="$shared" >/dev/null
cmake --build "$build" --target "${targets[@]}" -j "$(nproc)" >"$build/fuzz-build.log" 2>&1 || {
  tail -50 "$build/fuzz-build.log"
  echo "fuzz: build failed (full log: $build/fuzz-build.log)" >&2
  exit 1
}
[ $build_only = 1 ] && exit 0

mkdir -p "$build/fuzz-artifacts" "$build/fuzz-logs"
# one target: its run's log in fuzz-logs/<name>.log, its exit status in
# fuzz-logs/<name>.rc (the report below reads both, in the targets' order)
fuzz_one() {
  local t=$1 name=${1#fuzz_}
  local work="$build/fuzz-corpus/$name"
  mkdir -p "$work"
  local dirs=("$work") # new inputs go to the first folder; the seeds stay untouched
  [ -d "tests/fuzz/corpus/$name" ] && dirs+=("tests/fuzz/corpus/$name")
  local args=(-max_total_time="$secs" -seed="${FUZZ_SEED:-1}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
              -artifact_prefix="$build/fuzz-artifacts/$name-")
  [ -f "tests/fuzz/$t.dict" ] && args+=(-dict="tests/fuzz/$t.dict")
  local rc=0
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$build/fuzz/$t" "${args[@]}" "${dirs[@]}" >"$build/fuzz-logs/$name.log" 2>&1 || rc=$?
  echo $rc >"$build/fuzz-logs/$name.rc"
}

jobs=${JOBS:-$(nproc)}
running=0
for t in "${targets[@]}"; do
  rm -f "$build/fuzz-logs/${t#fuzz_}.rc"
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  fuzz_one "$t" &
  running=$((running + 1))
done
wait

failed=0
for t in "${targets[@]}"; do
  name=${t#fuzz_}
  work="$build/fuzz-corpus/$name"
  log="$build/fuzz-logs/$name.log"
  if [ "$(cat "$build/fuzz-logs/$name.rc" 2>/dev/null)" = 0 ]; then
    runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
    cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' "$log" | tail -1)
    echo "fuzz $name: ok, ${runs:-?} runs in ${secs} s, coverage ${cov:-?} edges, corpus $(ls "$work" | wc -l) inputs"
  else
    failed=1
    tail -40 "$log"
    echo "fuzz $name: FAILED (log $log; crashing input in $build/fuzz-artifacts/$name-*)"
  fi
done
exit $failed
