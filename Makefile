# moemesh: `make demo` and `make test` are the two commands a user needs.
BUILD_DIR ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS ?= $(shell nproc)

.PHONY: all deps configure build test test-cmake test-bazel demo bench clean

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

# Every test through ctest, then the same targets through Bazel.
test: test-cmake test-bazel

demo: build
	@bash tools/demo.sh $(BUILD_DIR)

bench: build
	@$(BUILD_DIR)/bench/engine_bench

clean:
	rm -rf $(BUILD_DIR)
