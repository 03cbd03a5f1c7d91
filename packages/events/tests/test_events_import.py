"""keel.events stays light: no torch/ray/mlflow/polars at import, and imports fast."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("torch", "ray", "mlflow", "polars")
BUDGET_US = 1_500_000


def test_import_is_light() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import keel.events"],
        capture_output=True,
        text=True,
        check=True,
    )
    modules = {}
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (p.strip() for p in line[len("import time:") :].split("|"))
            if cumulative.isdigit():
                modules[name.strip()] = int(cumulative)
    assert "keel.events" in modules
    loaded = {m.split(".")[0] for m in modules}
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)
    assert "nats" not in loaded  # the NATS client loads only when a nats:// bus is opened
    assert modules["keel.events"] < BUDGET_US
