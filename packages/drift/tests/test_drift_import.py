"""keel.drift stays light: no torch/ray/mlflow, no eager scipy.stats/matplotlib.

It asserts which modules load, never seconds: wall-clock budgets fail on a busy machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import keel.drift  # also tells Pants to ship keel.drift to this test's sandbox

FORBIDDEN = ("torch", "ray", "mlflow")
LAZY = ("scipy.stats", "matplotlib")


def test_import_is_light() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import keel.drift"],
        capture_output=True,
        text=True,
        # the child sees exactly this interpreter's path (Pants/pex set it up without PYTHONPATH)
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        check=True,
    )
    modules = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            modules[m.group(3)] = int(m.group(1))
    assert "keel.drift" in modules, proc.stderr[-2000:]
    assert keel.drift.__all__
    bad = sorted(name for name in modules if name.split(".")[0] in FORBIDDEN)
    assert not bad, f"keel.drift imports forbidden modules: {bad}"
    eager = sorted(
        name for name in modules if any(name == lz or name.startswith(lz + ".") for lz in LAZY)
    )
    assert not eager, f"keel.drift imports heavy modules eagerly: {eager}"
