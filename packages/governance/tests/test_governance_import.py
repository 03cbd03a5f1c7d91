"""keel.governance stays light: no torch/ray/mlflow at import time, bounded import time."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import keel.governance  # also tells Pants to ship keel.governance to this test's sandbox

FORBIDDEN = ("torch", "ray", "mlflow", "fairlearn", "captum", "sklearn", "pandas")
BUDGET_S = 2.0  # cumulative import time of keel.governance (numpy dominates)


def test_import_is_light() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import keel.governance"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        check=True,
    )
    modules = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            modules[m.group(3)] = int(m.group(1))
    assert "keel.governance" in modules, proc.stderr[-2000:]
    assert keel.governance.__all__
    bad = sorted(name for name in modules if name.split(".")[0] in FORBIDDEN)
    assert not bad, f"keel.governance imports forbidden modules: {bad}"
    assert modules["keel.governance"] / 1e6 < BUDGET_S
