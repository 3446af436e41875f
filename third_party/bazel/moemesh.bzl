"""Bazel twin of the CMake helper moemesh_test() in //:CMakeLists.txt."""

load("@rules_cc//cc:defs.bzl", "cc_test")

def moemesh_test(name, srcs, deps = [], data = [], **kwargs):
    """A GoogleTest test, as CMake's moemesh_test(NAME SOURCES ... DEPS ...).

    Like the CMake helper, a test whose sources do not exist (yet) is skipped, so a
    test can be declared before its file lands. Tests run from the runfiles root of
    this workspace, which mirrors the source tree, as CMake runs them from the source
    root; every test can read tests/fixtures/... there.
    """
    if len(native.glob(srcs)) != len(srcs):
        return
    cc_test(
        name = name,
        srcs = srcs,
        deps = deps + [
            "//third_party/gtest:gtest",
            "//third_party/gtest:gtest_main",
            "//third_party/gtest:gmock",
        ],
        data = data + ["//tests:fixtures", "//models:fortune_moe", "//core/tokenizer:moemesh_spm"],
        **kwargs
    )
