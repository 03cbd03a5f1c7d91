"""keel.trainer stays light to import: torch, Ray and MLflow load only when a job runs (the
CLI's `keel train --help` must not pay for them), and it never imports keel.features."""

from __future__ import annotations

from testutil.imports import loaded_from, modules_loaded_by


def test_import_loads_no_heavy_module() -> None:
    mods = modules_loaded_by("keel.trainer")
    assert "keel.trainer" in mods
    assert loaded_from(mods, ("torch", "ray", "mlflow", "pyarrow", "numpy", "safetensors")) == []


def test_trainer_never_imports_features() -> None:
    mods = modules_loaded_by("keel.trainer._run")
    assert loaded_from(mods, ("keel.features",)) == []
