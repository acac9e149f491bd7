#!/usr/bin/env bash
# CI: anvil as a user builds, installs and embeds it. A Release build
# (CPU only, no tests or benchmarks, warnings as errors) in BUILD_DIR
# (reused when it is there), `make install PREFIX=<tmp>`, then each of
# examples/ compiled against the installed tree with pkg-config alone, run
# with nothing but <tmp>/lib on the library path, and its output checked;
# generate is also linked statically (pkg-config --static). Asserts that
# libanvil.so, the anvil command and the examples need no CUDA library, and
# that a cuda device names the missing module.
#   scripts/ci_install.sh [BUILD_DIR]        (default build-ci-gcc; CC=clang: build-ci-clang)
#   scripts/ci_install.sh --build-only [BUILD_DIR]   (configure and build what is
#       installed, nothing else: .ci/run builds while tests run, and the
#       install then finds the build done)
set -euo pipefail
cd "$(dirname "$0")/.."
build_only=0
if [ "${1:-}" = --build-only ]; then
  build_only=1
  shift
fi
cc=${CC:-gcc}
build=${1:-build-ci-$(basename "$cc" | sed 's/-[0-9.]*$//')}
shared=${ANVIL_SHARED_DIR:-$(cd .. && pwd)/shared}
model=$shared/models/stories260K
t0=$(date +%s)

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER="$cc" -DANVIL_CUDA=OFF \
  -DANVIL_BUILD_TESTS=OFF -DANVIL_BUILD_BENCH=OFF -DANVIL_BUILD_EXAMPLES=OFF -DANVIL_WERROR=ON >/dev/null
if [ $build_only = 1 ]; then
  # the Makefile's configure (make install's, below) with the same values, then its build
  cmake -S . -B "$build" -DANVIL_SHARED_DIR="$shared" -DANVIL_WERROR=ON >/dev/null
  cmake --build "$build" --target anvil_install_deps -j "${JOBS:-$(nproc)}" >"$build/ci-build.log" 2>&1 ||
    { cat "$build/ci-build.log"; exit 1; }
  echo "ci_install: $cc Release build in $(( $(date +%s) - t0 )) s"
  exit 0
fi
prefix=$(mktemp -d /tmp/anvil-install.XXXXXX)
trap 'rm -rf "$prefix"' EXIT
make --no-print-directory install BUILD="$build" PREFIX="$prefix" SHARED="$shared" JOBS="${JOBS:-$(nproc)}" \
  >"$build/ci-install.log" 2>&1 || { cat "$build/ci-install.log"; exit 1; }
echo "ci_install: $cc Release build and install into $prefix in $(( $(date +%s) - t0 )) s"

fail() { echo "ci_install: $*" >&2; exit 1; }
lib=$prefix/lib
for f in include/anvil/anvil.h lib/libanvil.a lib/libanvil.so lib/pkgconfig/anvil.pc bin/anvil; do
  [ -e "$prefix/$f" ] || fail "$f was not installed"
done
[ "$(readlink "$lib/libanvil.so")" = libanvil.so.0 ] || fail "libanvil.so should point to libanvil.so.0"
[ "$(readlink "$lib/libanvil.so.0")" = libanvil.so.0.1.0 ] || fail "libanvil.so.0 should point to libanvil.so.0.1.0"
readelf -d "$lib/libanvil.so.0.1.0" | grep -q 'SONAME.*\[libanvil\.so\.0\]' || fail "SONAME is not libanvil.so.0"
readelf -d "$prefix/bin/anvil" | grep -q 'R.*PATH.*\$ORIGIN/../lib' || fail "bin/anvil has no RPATH \$ORIGIN/../lib"

export PKG_CONFIG_PATH=$lib/pkgconfig
mkdir -p "$prefix/examples"
for ex in generate stream server; do
  # shellcheck disable=SC2046
  "$cc" -std=c11 -Wall -Wextra -Werror -o "$prefix/examples/$ex" examples/$ex.c $(pkg-config --cflags --libs anvil)
done
# libanvil.a with pkg-config's static list (Libs.private, Requires.private);
# libraries of that list this machine has no file for to link (gnutls's own
# private ones, e.g. -lunistring without libunistring-dev) are left out:
# the shared libmicrohttpd brings them
static_libs=()
for f in $(pkg-config --static --libs anvil); do
  case $f in
    -lanvil) ;;
    -l*) n=${f#-l}
         if [ "$("$cc" -print-file-name=lib$n.so)" != "lib$n.so" ] ||
            [ "$("$cc" -print-file-name=lib$n.a)" != "lib$n.a" ]; then static_libs+=("$f"); fi ;;
    *) static_libs+=("$f") ;;
  esac
done
"$cc" -std=c11 -o "$prefix/examples/generate_static" examples/generate.c $(pkg-config --cflags anvil) \
  "$lib/libanvil.a" "${static_libs[@]}"

for f in "$lib/libanvil.so.0.1.0" "$prefix/bin/anvil" "$prefix"/examples/*; do
  if readelf -d "$f" | grep NEEDED | grep -Eiq 'libcuda|libcudart|libcublas|libnv'; then
    fail "$f needs a CUDA library: $(readelf -d "$f" | grep NEEDED | tr -s ' ')"
  fi
done
readelf -d "$prefix/examples/generate_static" | grep NEEDED | grep -q libanvil && fail "generate_static needs libanvil.so"

for ex in generate stream server; do
  env -u LD_PRELOAD LD_LIBRARY_PATH="$lib" scripts/run_example.sh "$prefix/examples/$ex" "$model" "$prefix/bin/anvil" >"$prefix/$ex.out" 2>&1 ||
    { cat "$prefix/$ex.out"; fail "examples/$ex failed"; }
  tail -1 "$prefix/$ex.out"
done
env LD_LIBRARY_PATH="$lib" "$prefix/examples/generate_static" "$model" | grep -q "^Once upon a time" ||
  fail "generate_static failed"

# the installed command finds libanvil.so through its RPATH alone, and says
# what is missing for a cuda device (this build has no CUDA module)
env -u LD_LIBRARY_PATH "$prefix/bin/anvil" --version >/dev/null || fail "bin/anvil --version"
set +e
msg=$(env -u LD_LIBRARY_PATH "$prefix/bin/anvil" run --model "$model" --device cuda --prompt hi 2>&1)
rc=$?
set -e
[ $rc -ne 0 ] && [[ $msg == *"libanvil-cuda.so"*"not installed"* ]] ||
  fail "anvil run --device cuda without the module: exit $rc, '$msg'"
echo "ci_install: $cc: installed tree, pkg-config, examples and messages ok in $(( $(date +%s) - t0 )) s"
