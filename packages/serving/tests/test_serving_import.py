"""keel.serving stays light at import: torch, ray and mlflow load only when a model is
loaded or a registry opened (the module list is checked, not a wall-clock budget)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import keel.serving

FORBIDDEN = ("torch", "ray", "mlflow")


def test_import_is_light() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import keel.serving"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        check=True,
    )
    modules = set()
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", line)
        if m:
            modules.add(m.group(1))
    assert "keel.serving" in modules, proc.stderr[-2000:]
    assert keel.serving.__all__
    bad = sorted(n for n in modules if n.split(".")[0] in FORBIDDEN)
    assert not bad, f"keel.serving imports heavy modules eagerly: {bad}"
