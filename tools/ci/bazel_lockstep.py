#!/usr/bin/env python3
"""Checks that Bazel and CMake name the same targets over the same sources.

DESIGN.md, Conventions 7. Reads every CMakeLists.txt (add_library, add_executable,
moemesh_test) and the Bazel rules (`bazel query --output=xml` on stdin) and reports
each CMake target that has no cc_* twin of the same name in the same folder, or whose
.cc/.cu sources differ. Like the CMake helper, a moemesh_test whose sources do not
exist yet is not expected. Usage:
  bazel query 'kind("(cc_.*|genrule) rule", //...)' --output=xml | tools/ci/bazel_lockstep.py
"""
import os
import re
import sys
import xml.etree.ElementTree as ET

KEYWORDS = {"STATIC", "SHARED", "OBJECT", "MODULE", "INTERFACE", "EXCLUDE_FROM_ALL",
            "SOURCES"}
STOP = {"DEPS", "LABELS", "PUBLIC", "PRIVATE"}


def cmake_targets(root):
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if not x.startswith((".", "bazel-")) and x != "build"]
        if "CMakeLists.txt" not in files:
            continue
        pkg = os.path.relpath(d, root).replace(os.sep, "/")
        pkg = "" if pkg == "." else pkg
        text = re.sub(r"#[^\n]*", "", open(os.path.join(d, "CMakeLists.txt")).read())
        for kind, args in re.findall(r"\b(add_library|add_executable|moemesh_test)\s*\(([^)]*)\)",
                                     text):
            words = args.split()
            if not words or "${" in words[0]:
                continue
            name, srcs = words[0], []
            for w in words[1:]:
                if w in STOP:
                    break
                if w not in KEYWORDS:
                    srcs.append(w)
            if kind == "moemesh_test" and not all(
                    os.path.exists(os.path.join(d, s)) for s in srcs):
                continue
            out["//%s:%s" % (pkg, name)] = sorted(s for s in srcs if s.endswith((".cc", ".cu")))
    return out


def bazel_targets(xml_text):
    out, cuda = {}, {}
    for rule in ET.fromstring(xml_text).iter("rule"):
        srcs = []
        for lst in rule.iter("list"):
            if lst.get("name") == "srcs":
                srcs = [l.get("value").split(":", 1)[1] for l in lst.iter("label")]
        name = rule.get("name")
        if rule.get("class") == "genrule":
            # moemesh_cuda_library: <target>_nvcc compiles the target's .cu files.
            if name.endswith("_nvcc"):
                cuda[name[:-len("_nvcc")]] = [s for s in srcs if s.endswith(".cu")]
            continue
        out[name] = [s for s in srcs if s.endswith((".cc", ".cu"))]
    for name, cu in cuda.items():
        if name in out:
            out[name] += cu
    return {name: sorted(srcs) for name, srcs in out.items()}


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    cmake = cmake_targets(os.path.normpath(root))
    bazel = bazel_targets(sys.stdin.read())
    problems = []
    for label, srcs in sorted(cmake.items()):
        if label not in bazel:
            problems.append("%s: in CMake, missing from BUILD.bazel" % label)
        elif bazel[label] != srcs:
            problems.append("%s: sources differ: CMake %s, Bazel %s" % (label, srcs, bazel[label]))
    for p in problems:
        print("bazel_lockstep: " + p, file=sys.stderr)
    if problems:
        print("bazel_lockstep: keep BUILD.bazel in step with CMakeLists.txt "
              "(DESIGN.md, Conventions 7)", file=sys.stderr)
        return 1
    print("bazel_lockstep: %d CMake targets, all in Bazel" % len(cmake))
    return 0


if __name__ == "__main__":
    sys.exit(main())
