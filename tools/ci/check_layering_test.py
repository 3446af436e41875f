#!/usr/bin/env python3
"""Tests for check_layering.py over small synthetic trees. Run:
  python3 tools/ci/check_layering_test.py
"""
import io
import os
import shutil
import sys
import tempfile
import threading
import unittest
from contextlib import redirect_stderr, redirect_stdout

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_layering  # noqa: E402

CORE = "core includes no protos or services"


class TreeTest(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="check_layering_test_")
        self.addCleanup(shutil.rmtree, self.root)

    def write(self, rel, *lines):
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def check(self, rules=None):
        return check_layering.check(self.root, rules)

    def test_clean_tree_passes(self):
        self.write("core/common/status.h", "#pragma once", '#include "absl/status/status.h"')
        self.write("core/engine/engine.h", '#include "core/common/status.h"',
                   "#include <vector>")
        self.write("core/kernels/cpu/gating.h", '#include "core/common/status.h"')
        self.write("services/expert/expert_worker.h", '#include "core/common/status.h"',
                   '#include "moemesh/v1/expert.pb.h"')
        self.write("services/router/router.h", '#include "core/engine/engine.h"')
        self.write("tools/moemesh/cli.cc", '#include "services/expert/expert_worker.h"')
        self.write("bench/dispatch_bench.cc", '#include "services/expert/expert_worker.h"')
        self.write("third_party/x/core_bad.h", '#include "services/router/router.h"')
        self.assertEqual(self.check(), [])
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(check_layering.main(["check_layering.py", self.root]), 0)
        self.assertEqual(len(out.getvalue().splitlines()), 1)

    def test_direct_violation_reports_file_and_line(self):
        self.write("core/engine/engine.h", "#pragma once", "",
                   '#include "core/common/status.h"',
                   '  #  include "moemesh/v1/expert.pb.h"')
        self.write("core/common/status.h", "#pragma once")
        self.write("bench/b.cc", "// x", '#include "services/router/remote.h"')
        self.write("services/router/remote.h", "#pragma once")
        self.assertEqual(self.check(), [
            'bench/b.cc:2: benchmarks use the expert client, not the router: '
            '"services/router/remote.h"',
            'core/engine/engine.h:4: %s: "moemesh/v1/expert.pb.h"' % CORE,
        ])
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            self.assertEqual(check_layering.main(["check_layering.py", self.root]), 1)
        self.assertIn('core/engine/engine.h:4: ', out.getvalue())

    def test_comments_and_angle_includes_are_ignored(self):
        self.write("core/a.h", '// #include "services/x.h"', '#include <services/x.h>')
        self.write("services/x.h", "#pragma once")
        self.assertEqual(self.check(), [])

    def test_transitive_violation_reports_chain(self):
        self.write("core/a.h", "#pragma once", '#include "core/b.h"')
        self.write("core/b.h", "#pragma once", '#include "core/c.h"')
        self.write("core/c.h", '#include "services/x.h"')
        self.write("services/x.h", "#pragma once")
        self.assertEqual(self.check(), [
            'core/a.h:2: %s: "services/x.h" (via core/b.h -> core/c.h)' % CORE,
            'core/b.h:2: %s: "services/x.h" (via core/c.h)' % CORE,
            'core/c.h:1: %s: "services/x.h"' % CORE,
        ])

    def test_non_transitive_rule_ignores_chain(self):
        self.write("bench/b.cc", '#include "core/a.h"')
        self.write("core/a.h", '#include "services/router/r.h"')
        self.write("services/router/r.h", "#pragma once")
        rules = [r for r in check_layering.RULES if r["name"].startswith("benchmarks")]
        self.assertEqual(self.check(rules), [])
        transitive = [dict(rules[0], transitive=True)]
        self.assertEqual(len(self.check(transitive)), 1)

    def test_expert_worker_rule_and_exact_paths(self):
        self.write("services/expert/worker.h", '#include "core/experts/device.h"',
                   '#include "core/model/config.h"')
        self.write("core/experts/device.h", '#include "core/engine/scheduler.h"')
        self.write("core/model/config.h", "#pragma once")
        self.write("core/engine/scheduler.h", "#pragma once")
        self.assertEqual(self.check(), [
            'services/expert/worker.h:1: the expert worker links no scheduler: '
            '"core/engine/scheduler.h" (via core/experts/device.h)',
        ])

    def test_test_file_exemption(self):
        self.write("core/kernels/gating.h", "#pragma once")
        self.write("core/kernels/gating_test.cc", '#include "core/engine/engine.h"',
                   '#include "services/x.h"')
        self.write("core/kernels/gating.cc", '#include "core/engine/engine.h"')
        self.write("core/engine/engine.h", "#pragma once")
        self.write("services/x.h", "#pragma once")
        self.assertEqual(self.check(), [
            'core/kernels/gating.cc:1: kernels are leaves: "core/engine/engine.h"',
        ])
        # The flag is per rule: without it the test file is checked.
        rules = [dict(r, exempt_tests=False) for r in check_layering.RULES]
        got = self.check(rules)
        self.assertIn('core/kernels/gating_test.cc:1: kernels are leaves: '
                      '"core/engine/engine.h"', got)
        self.assertIn('core/kernels/gating_test.cc:2: %s: "services/x.h"' % CORE, got)

    def test_allowed_exception(self):
        self.write("core/a.h", '#include "services/common/ok.h"', '#include "services/bad.h"')
        self.write("services/common/ok.h", "#pragma once")
        self.write("services/bad.h", "#pragma once")
        rules = [dict(check_layering.RULES[0], allowed=["services/common/ok.h"])]
        self.assertEqual(self.check(rules), ['core/a.h:2: %s: "services/bad.h"' % CORE])

    def test_glob_patterns(self):
        self.write("core/a.cu", '#include "services/x.h"')
        self.write("core/a.cc", '#include "services/x.h"')
        rules = [{"name": "cuda", "applies_to": ["core/*.cu"], "forbidden": ["services/*.h"],
                  "transitive": False}]
        self.assertEqual(self.check(rules), ['core/a.cu:1: cuda: "services/x.h"'])

    def test_include_cycles_terminate(self):
        self.write("core/a.h", '#include "core/b.h"')
        self.write("core/b.h", '#include "core/c.h"')
        self.write("core/c.h", '#include "core/a.h"', '#include "core/c.h"',
                   '#include "tools/t.h"')
        self.write("tools/t.h", "#pragma once")
        result = []
        worker = threading.Thread(target=lambda: result.append(self.check()), daemon=True)
        worker.start()
        worker.join(timeout=10)
        self.assertFalse(worker.is_alive(), "check() hangs on an include cycle")
        self.assertEqual(result[0], [
            'core/a.h:1: %s: "tools/t.h" (via core/b.h -> core/c.h)' % CORE,
            'core/b.h:1: %s: "tools/t.h" (via core/c.h)' % CORE,
            'core/c.h:3: %s: "tools/t.h"' % CORE,
        ])


class RealRepoTest(unittest.TestCase):
    def test_runs_on_repository(self):
        # The repository may have violations mid-refactor; only check it runs.
        root = check_layering.default_root()
        self.assertTrue(os.path.isdir(os.path.join(root, "core")), root)
        self.assertIsInstance(check_layering.check(root), list)


if __name__ == "__main__":
    unittest.main()
