"""keel.pipelines stays light: no torch, ray, mlflow (nor polars: keel.drift is imported where used) at import."""

from __future__ import annotations

from testutil.imports import loaded_from, modules_loaded_by

import keel.pipelines
import keel.pipelines.local  # a dependency for Pants; the check runs in a fresh interpreter

FORBIDDEN = ("torch", "ray", "mlflow", "pandas", "sklearn", "polars")


def test_import_loads_no_forbidden_module() -> None:
    loaded = modules_loaded_by("keel.pipelines")
    assert "keel.pipelines" in loaded and keel.pipelines.__all__
    assert not loaded_from(loaded, FORBIDDEN), "keel.pipelines imports forbidden modules"


def test_the_real_executors_module_imports_light_too() -> None:
    """keel.pipelines.local loads keel.trainer, polars, torch, Ray and MLflow only when a
    step runs."""
    loaded = modules_loaded_by("keel.pipelines.local")
    assert "keel.pipelines.local" in loaded
    assert not loaded_from(loaded, FORBIDDEN), "keel.pipelines.local imports forbidden modules"
