"""keel.artifacts stays light: no torch/ray/mlflow, numpy or safetensors at import (no
wall-clock budget: the machine is shared; the module list is what matters)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import keel.artifacts

FORBIDDEN = ("torch", "ray", "mlflow", "safetensors", "numpy")


def test_import_is_light() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import keel.artifacts"],
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
    assert "keel.artifacts" in modules, proc.stderr[-2000:]
    assert keel.artifacts.__all__
    bad = sorted(name for name in modules if name.split(".")[0] in FORBIDDEN)
    assert not bad, f"keel.artifacts imports heavy modules eagerly: {bad}"
