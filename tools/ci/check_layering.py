#!/usr/bin/env python3
"""Checks the project's layering rules over its `#include "..."` directives.

Reads every *.h, *.cc, *.cu and *.cuh file under the source folders below and
checks it against RULES. A quoted include is resolved relative to the repository
root (then, failing that, relative to the including file's folder); an include
starting with "moemesh/v1/" names a generated proto header, which never exists on
disk. Includes that resolve to no project file (absl/..., gtest/..., the protos)
are matched against the rules by name but not followed. A rule marked transitive
also follows the includes of every project header reached, so
core/a.h -> core/b.h -> "services/x.h" is reported on the line of core/a.h that
includes core/b.h.

Usage:
  python3 tools/ci/check_layering.py [REPO_ROOT]

Exit 0 with a one-line summary when every rule holds; exit 1 with one line per
violation otherwise:
  path:line: rule name: "included/file.h"                 (direct)
  path:line: rule name: "included/file.h" (via b.h -> c.h) (transitive; b.h is the
                                                            header included on line)
"""
import fnmatch
import os
import posixpath
import re
import sys

# Folders (relative to the repository root) whose sources are read.
SOURCE_DIRS = ("core", "services", "tools", "bench", "tests", "fuzz")
SOURCE_EXTS = (".h", ".cc", ".cu", ".cuh")
# Folder names never descended into.
SKIP_DIRS = {"third_party", "node_modules", "build"}
# Includes with this prefix are the generated proto headers (never on disk).
GENERATED_PREFIX = "moemesh/v1/"

# The rules. Each one:
#   name         printed with each violation.
#   applies_to   source files it checks: a path prefix ("core/" or an exact file),
#                or a glob when it holds *, ? or [ (fnmatch, "*" crosses "/").
#   forbidden    include paths it forbids: a prefix ending in "/", an exact path,
#                or a glob as above.
#   allowed      exceptions: include paths matching one of these are never
#                violations even when they match `forbidden` (same syntax).
#   transitive   True to follow project headers; False to check direct includes
#                only.
#   exempt_tests True to skip *_test.cc files and *_test_util.h test helpers (tests may link upward, e.g. to
#                compare a kernel against the engine).
RULES = [
    {
        "name": "core includes no protos or services",
        "applies_to": ["core/"],
        "forbidden": [GENERATED_PREFIX, "services/", "tools/"],
        "allowed": [],
        "transitive": True,
        "exempt_tests": True,
    },
    {
        "name": "the expert worker links no scheduler",
        "applies_to": ["services/expert/"],
        "forbidden": [
            "core/engine/",  # the scheduler, the forward passes, the engine
            "services/router/",
            "services/gateway/",
        ],
        "allowed": [],
        "transitive": True,
        "exempt_tests": False,
    },
    {
        "name": "the gateway runs no model math",
        "applies_to": ["services/gateway/"],
        "forbidden": [
            "core/engine/",
            "core/experts/",
            "core/kernels/",
            "core/model/weights.h",
            "core/model/safetensors.h",
            "services/router/",
        ],
        "allowed": ["core/engine/request.h"],
        "transitive": True,
        "exempt_tests": True,
    },
    {
        "name": "the CLI links no router",
        "applies_to": ["tools/moemesh/"],
        "forbidden": ["services/router/"],
        "allowed": [],
        "transitive": True,
        "exempt_tests": False,
    },
    {
        "name": "benchmarks use the expert client, not the router",
        "applies_to": ["bench/"],
        "forbidden": ["services/router/"],
        "allowed": [],
        "transitive": False,
        "exempt_tests": False,
    },
    {
        "name": "kernels are leaves",
        "applies_to": ["core/kernels/"],
        "forbidden": ["core/engine/", "core/experts/", "core/tokenizer/", "core/metrics/"],
        "allowed": [],
        "transitive": True,
        "exempt_tests": True,
    },
]

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"\n]+)"')


def matches(path, pattern):
    """True if `path` (root-relative, "/"-separated) matches a rule pattern."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(path, pattern)
    if pattern.endswith("/"):
        return path.startswith(pattern)
    return path == pattern or path.startswith(pattern + "/")


def _matches_any(path, patterns):
    return any(matches(path, p) for p in patterns)


def is_test_file(path):
    return path.endswith("_test.cc") or path.endswith("_test_util.h")


class Tree:
    """The project's sources under `root`, with cached include parsing."""

    def __init__(self, root, source_dirs=SOURCE_DIRS):
        self.root = os.path.abspath(root)
        self.source_dirs = source_dirs
        self._includes = {}  # rel path -> [(line, include text, resolved rel or None)]

    def sources(self):
        """Root-relative paths of every source file checked, sorted."""
        out = []
        for top in self.source_dirs:
            base = os.path.join(self.root, top)
            if not os.path.isdir(base):
                continue
            for d, dirs, files in os.walk(base):
                dirs[:] = sorted(x for x in dirs
                                 if x not in SKIP_DIRS and not x.startswith((".", "bazel-")))
                for f in files:
                    if f.endswith(SOURCE_EXTS):
                        rel = os.path.relpath(os.path.join(d, f), self.root)
                        out.append(rel.replace(os.sep, "/"))
        return sorted(out)

    def is_project_file(self, rel):
        if rel.startswith(("../", "/")) or rel == "..":
            return False
        if rel.split("/", 1)[0] in SKIP_DIRS or "/node_modules/" in rel:
            return False
        return os.path.isfile(os.path.join(self.root, rel))

    def resolve(self, includer, text):
        """Root-relative path of a project file named by `#include "text"`, or None."""
        if text.startswith(GENERATED_PREFIX):
            return None
        rel = posixpath.normpath(text)
        if self.is_project_file(rel):
            return rel
        local = posixpath.normpath(posixpath.join(posixpath.dirname(includer), text))
        if self.is_project_file(local):
            return local
        return None

    def includes(self, rel):
        """[(line number, include text, resolved project path or None)] of a file."""
        if rel not in self._includes:
            found = []
            try:
                with open(os.path.join(self.root, rel), encoding="utf-8",
                          errors="replace") as f:
                    for n, line in enumerate(f, 1):
                        m = INCLUDE_RE.match(line)
                        if m:
                            text = m.group(1).strip()
                            found.append((n, text, self.resolve(rel, text)))
            except OSError:
                pass
            self._includes[rel] = found
        return self._includes[rel]


def _name(text, resolved):
    return resolved if resolved is not None else posixpath.normpath(text)


def check_file(tree, rel, rule):
    """Violations of one rule by one source file, as (line, target, via-chain)."""
    forbidden, allowed = rule["forbidden"], rule.get("allowed", [])

    def bad(name):
        return _matches_any(name, forbidden) and not _matches_any(name, allowed)

    out = []
    reported = set()
    # Direct includes: every offending line.
    for line, text, resolved in tree.includes(rel):
        name = _name(text, resolved)
        if bad(name):
            out.append((line, name, ()))
            reported.add(name)
    if not rule.get("transitive"):
        return out
    # Breadth-first over project headers, so each forbidden target is reported
    # once per file with its shortest chain. A header that is itself forbidden is
    # reported and not followed further; `seen` makes include cycles harmless.
    seen = {rel}
    queue = []
    for line, text, resolved in tree.includes(rel):
        if resolved is not None and resolved not in seen and not bad(resolved):
            seen.add(resolved)
            queue.append((resolved, line, (resolved,)))
    i = 0
    while i < len(queue):
        header, line, chain = queue[i]
        i += 1
        for _, text, resolved in tree.includes(header):
            name = _name(text, resolved)
            if bad(name):
                if name not in reported:
                    reported.add(name)
                    out.append((line, name, chain))
            elif resolved is not None and resolved not in seen:
                seen.add(resolved)
                queue.append((resolved, line, chain + (resolved,)))
    return out


def format_violation(rel, line, rule_name, target, chain):
    s = '%s:%d: %s: "%s"' % (rel, line, rule_name, target)
    if chain:
        s += " (via %s)" % " -> ".join(chain)
    return s


def check(root, rules=None, tree=None):
    """Every violation of `rules` (default RULES) under `root`, as printable lines."""
    rules = RULES if rules is None else rules
    tree = tree or Tree(root)
    found = []
    for rel in tree.sources():
        for rule in rules:
            if not _matches_any(rel, rule["applies_to"]):
                continue
            if rule.get("exempt_tests") and is_test_file(rel):
                continue
            for line, target, chain in check_file(tree, rel, rule):
                found.append((rel, line, rule["name"], target, chain))
    found.sort(key=lambda v: (v[0], v[1], v[2], v[3]))
    return [format_violation(*v) for v in found]


def dangling(tree):
    """(path, line, text) of includes naming a source folder but no file on disk.

    They are matched against the rules by name but cannot be followed, so a
    transitive rule is blind past them (typically stale paths mid-refactor)."""
    out = []
    for rel in tree.sources():
        for line, text, resolved in tree.includes(rel):
            if resolved is None and text.split("/", 1)[0] in tree.source_dirs:
                out.append((rel, line, text))
    return out


def default_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv):
    if len(argv) > 2 or (len(argv) == 2 and argv[1] in ("-h", "--help")):
        print(__doc__.strip())
        return 0 if len(argv) == 2 else 2
    root = argv[1] if len(argv) == 2 else default_root()
    if not os.path.isdir(root):
        print("check_layering: no such folder: %s" % root, file=sys.stderr)
        return 2
    tree = Tree(root)
    violations = check(root, RULES, tree)
    for v in violations:
        print(v)
    n_files = len(tree.sources())
    missing = dangling(tree)
    note = ("; %d project include(s) not found on disk, not followed" % len(missing)
            if missing else "")
    if violations:
        print("check_layering: %d violation(s) of %d rule(s) over %d files%s"
              % (len(violations), len(RULES), n_files, note), file=sys.stderr)
        return 1
    print("check_layering: %d rules hold over %d files%s" % (len(RULES), n_files, note))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
