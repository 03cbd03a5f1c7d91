"""keel.pipelines stays light: no torch, ray, mlflow (nor polars: keel.drift is imported where used) at import."""

from __future__ import annotations

from testutil.imports import loaded_from, modules_loaded_by

import keel.pipelines

FORBIDDEN = ("torch", "ray", "mlflow", "pandas", "sklearn", "polars")


def test_import_loads_no_forbidden_module() -> None:
    loaded = modules_loaded_by("keel.pipelines")
    assert "keel.pipelines" in loaded and keel.pipelines.__all__
    assert not loaded_from(loaded, FORBIDDEN), "keel.pipelines imports forbidden modules"
