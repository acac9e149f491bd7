# The README's two commands, and a few conveniences around CMake.
#   make demo     install what is missing, build the anvil command (only it, quietly),
#                 tell a story with stories260K on the CPU
#   make test     install what is missing, build everything, run every test (ctest)
#   make install PREFIX=/usr/local   headers, libanvil.{a,so}, libanvil-cuda.so, anvil.pc, bin/anvil
# The Makefile is the development entry point: warnings are errors here
# (WERROR=OFF to relax); a plain `cmake` configure leaves them warnings.
BUILD ?= build
JOBS ?= $(shell nproc)
SHARED ?= $(abspath ../shared)
PREFIX ?= /usr/local
WERROR ?= ON
CMAKE_FLAGS ?=
CONFIGURE = cmake -S . -B $(BUILD) -DANVIL_SHARED_DIR=$(SHARED) -DANVIL_WERROR=$(WERROR) $(CMAKE_FLAGS) >/dev/null

.PHONY: all build demo test test-asan test-tsan asan-tree tsan-tree install format bench clean

all: build

build:
	@scripts/setup.sh
	@$(CONFIGURE)
	@cmake --build $(BUILD) -j $(JOBS)

# Only the anvil command and libanvil (no tests, benchmarks or CUDA
# kernels: the story runs on the CPU); make's output goes to a log that is
# shown only if the build fails.
demo:
	@scripts/setup.sh
	@$(CONFIGURE)
	@t0=$$(date +%s); printf 'building anvil... '; \
	if ! cmake --build $(BUILD) -j $(JOBS) --target anvil_cli >$(BUILD)/demo-build.log 2>&1; then \
	  echo failed; cat $(BUILD)/demo-build.log; exit 1; fi; \
	echo "done ($$(( $$(date +%s) - t0 )) s)"
	@$(BUILD)/anvil run --model $(SHARED)/models/stories260K --prompt "Once upon a time" --max-tokens 200 --temperature 0.8 --seed 7

test:
	@scripts/setup.sh --test
	@$(CONFIGURE)
	@cmake --build $(BUILD) -j $(JOBS)
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The whole suite again under AddressSanitizer + UndefinedBehaviorSanitizer
# (the CUDA backend is left out: nvcc objects are not instrumented; the
# benchmarks too: no test runs them).
# asan-tree and tsan-tree configure and build a tier's tree without running
# it (.ci/run builds the next tier's tree at the lowest priority while a
# tier's tests run).
asan-tree:
	@scripts/setup.sh --test
	@cmake -S . -B build-asan -DANVIL_SANITIZE=ON -DANVIL_CUDA=OFF -DANVIL_BUILD_BENCH=OFF -DANVIL_WERROR=$(WERROR) -DANVIL_SHARED_DIR=$(SHARED) >/dev/null
	@cmake --build build-asan -j $(JOBS)

test-asan: asan-tree
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j $(JOBS)

# The executor and server tests under ThreadSanitizer (CPU only): every C
# test of tests/executor and tests/server (the long ones run smaller there:
# ANVIL_TEST_TSAN in tests/testutil.h) and the server's client tests that
# drive it from many connections at once, and the grammar engine's test of one
# grammar shared by four threads. test_server_refit.py (64 streams
# across a live refit: 10 min under TSan) is left to test_executor_refit,
# which runs the same refit under TSan in the executor.
# test_generate is left out: anvil_generate runs on the caller's thread
# with no executor thread, so TSan has nothing to see there (ASan runs it),
# and under TSan it took 130 s of the tier.
# Only what those tests run is built (their programs and the anvil command:
# TSAN_TARGETS, from ctest's list), not the other hundred test programs.
TSAN_SKIP = ^executor/test_generate$$
TSAN_TESTS = ^(executor|server)/|^grammar/test_grammar_threads$$|^python/test_server_(openai|hostile|reliability|load|faults|triton|responses|overlap)$$
TSAN_TARGETS = anvil_cli $$(cd build-tsan && ctest -N -R '$(TSAN_TESTS)' -E '$(TSAN_SKIP)' | \
  sed -n '/: python\//d; s|^ *Test *\#[0-9]*: [a-z_]*/\(test_[A-Za-z0-9_]*\)$$|\1|p')
tsan-tree:
	@scripts/setup.sh --test
	@cmake -S . -B build-tsan -DANVIL_SANITIZE_THREAD=ON -DANVIL_CUDA=OFF -DANVIL_BUILD_BENCH=OFF -DANVIL_WERROR=$(WERROR) -DANVIL_SHARED_DIR=$(SHARED) >/dev/null
	@cmake --build build-tsan -j $(JOBS) --target $(TSAN_TARGETS)

test-tsan: tsan-tree
	cd build-tsan && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" ctest --output-on-failure -j $(JOBS) -R '$(TSAN_TESTS)' -E '$(TSAN_SKIP)'

# Builds what is installed (not the tests) and installs it under PREFIX.
install:
	@scripts/setup.sh
	@$(CONFIGURE)
	@cmake --build $(BUILD) -j $(JOBS) --target anvil_install_deps
	cmake --install $(BUILD) --prefix $(PREFIX)

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cu')

bench: build
	$(BUILD)/bench_cpu_model --shared $(SHARED)

clean:
	rm -rf $(BUILD) build-asan build-tsan
