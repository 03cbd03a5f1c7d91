"""`import keel.telemetry` stays light: no torch/ray/mlflow/polars, and a time budget."""

from __future__ import annotations

import os
import re
import subprocess
import sys

FORBIDDEN = ("torch", "ray", "mlflow", "polars", "pandas", "numpy")
# Measured 50-140 ms cumulative on the shared dev machine (prometheus_client dominates);
# the budget leaves room for a loaded 2-core CI box.
BUDGET_US = 750_000


def test_import_is_light() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import keel.telemetry"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
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
    assert modules["keel.telemetry"] < BUDGET_US, f"import took {modules['keel.telemetry']} us"
