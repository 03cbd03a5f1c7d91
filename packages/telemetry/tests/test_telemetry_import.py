"""`import keel.telemetry` stays light: no torch/ray/mlflow/polars, and a time budget."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import keel.telemetry  # also makes Pants ship the package into the sandbox

FORBIDDEN = ("torch", "ray", "mlflow", "polars", "pandas", "numpy")
# Measured 50-140 ms cumulative on the shared dev machine (prometheus_client dominates);
# the budget leaves room for a loaded 2-core CI box.
BUDGET_US = 750_000


def test_import_is_light() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import keel.telemetry"],
        capture_output=True,
        text=True,
        # the child sees exactly this interpreter's path (Pants/pex set it up
        # without PYTHONPATH), so it imports the same keel.telemetry
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        check=True,
    )
    modules: dict[str, int] = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)", line)
        if m:
            modules[m.group(3)] = int(m.group(2))
    assert "keel.telemetry" in modules, proc.stderr[-2000:]
    loaded_top = {name.split(".")[0] for name in modules}
    assert not loaded_top & set(FORBIDDEN), sorted(loaded_top & set(FORBIDDEN))
    assert keel.telemetry.__name__ in modules
    assert modules["keel.telemetry"] < BUDGET_US, f"import took {modules['keel.telemetry']} us"
