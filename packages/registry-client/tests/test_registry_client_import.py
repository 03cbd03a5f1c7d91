"""keel.registry_client stays light: mlflow, SQLAlchemy and psycopg load only when a
registry is opened, never at import."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("torch", "ray", "mlflow", "sqlalchemy", "psycopg", "polars", "pandas")
BUDGET_US = 1_500_000


def test_import_is_light() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import keel.registry_client"],
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
    assert "keel.registry_client" in modules
    loaded = {m.split(".")[0] for m in modules}
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)
    assert modules["keel.registry_client"] < BUDGET_US
