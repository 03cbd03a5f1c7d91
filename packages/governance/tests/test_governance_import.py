"""keel.governance stays light: which modules it loads (no torch/ray/mlflow, and the test
oracles fairlearn, captum, scikit-learn and pandas never), not how many seconds it takes."""

from __future__ import annotations

from testutil.imports import loaded_from, modules_loaded_by

import keel.governance  # also tells Pants to ship keel.governance to this test's sandbox

FORBIDDEN = ("torch", "ray", "mlflow", "fairlearn", "captum", "sklearn", "pandas")


def test_import_loads_no_forbidden_module() -> None:
    loaded = modules_loaded_by("keel.governance")
    assert "keel.governance" in loaded and keel.governance.__all__
    assert not loaded_from(loaded, FORBIDDEN), "keel.governance imports forbidden modules"
