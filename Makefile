# The README's two commands, and a few conveniences around CMake.
#   make demo     install what is missing, build, tell a story with stories260K on the CPU
#   make test     install what is missing, build, run every test (ctest)
BUILD ?= build
JOBS ?= $(shell nproc)
SHARED ?= $(abspath ../shared)
CMAKE_FLAGS ?=

.PHONY: all build demo test test-asan format bench clean

all: build

build:
	@scripts/setup.sh
	@cmake -S . -B $(BUILD) -DANVIL_SHARED_DIR=$(SHARED) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

demo: build
	$(BUILD)/anvil run --model $(SHARED)/models/stories260K --prompt "Once upon a time" --max-tokens 200 --temperature 0.8 --seed 7

test:
	@scripts/setup.sh --test
	@cmake -S . -B $(BUILD) -DANVIL_SHARED_DIR=$(SHARED) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The whole suite again under AddressSanitizer + UndefinedBehaviorSanitizer
# (the CUDA backend is left out: nvcc objects are not instrumented).
test-asan:
	@scripts/setup.sh --test
	@cmake -S . -B build-asan -DANVIL_SANITIZE=ON -DANVIL_CUDA=OFF -DANVIL_SHARED_DIR=$(SHARED) >/dev/null
	@cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j $(JOBS)

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cu')

bench: build
	$(BUILD)/bench_cpu_model --shared $(SHARED)

clean:
	rm -rf $(BUILD) build-asan
