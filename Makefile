# moemesh: `make demo` and `make test` are the two commands a user needs.
BUILD_DIR ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS ?= $(shell nproc)

FUZZ_DIR ?= build-fuzz
FUZZ_RUNS ?= 20000

.PHONY: all deps configure build test test-cmake test-bazel fuzz demo bench clean

all: build

deps:
	@bash tools/ci/install_deps.sh

configure: deps
	@cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) > /dev/null

build: configure
	@ninja -C $(BUILD_DIR) -j $(JOBS)

test-cmake: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) -LE gpu

test-bazel: deps
	@bash tools/ci/bazel_test.sh

# libFuzzer targets built with clang and sanitizers, run for FUZZ_RUNS inputs.
fuzz: deps
	@CC=clang-14 CXX=clang++-14 cmake -S . -B $(FUZZ_DIR) -G Ninja -DMOEMESH_FUZZ=ON \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
	@ninja -C $(FUZZ_DIR) -j $(JOBS) tokenizer_fuzzer chat_template_fuzzer model_files_fuzzer request_fuzzer frame_fuzzer
	@bash tools/ci/run_fuzzers.sh $(FUZZ_DIR) $(FUZZ_RUNS)

# Every test through ctest, the same targets through Bazel, and the fuzzers.
test: test-cmake test-bazel fuzz

demo: build
	@bash tools/demo.sh $(BUILD_DIR)

bench: build
	@$(BUILD_DIR)/bench/engine_bench
	@$(BUILD_DIR)/bench/tokenizer_bench
	@$(BUILD_DIR)/bench/dispatch_bench
	@$(BUILD_DIR)/bench/mesh_bench

clean:
	rm -rf $(BUILD_DIR) $(FUZZ_DIR)
