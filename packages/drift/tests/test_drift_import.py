"""keel.drift stays light: which modules it loads (no torch/ray/mlflow, no eager scipy.stats or
matplotlib), not how many seconds it takes."""

from __future__ import annotations

from testutil.imports import loaded_from, modules_loaded_by

import keel.drift  # also tells Pants to ship keel.drift to this test's sandbox

FORBIDDEN = ("torch", "ray", "mlflow")
LAZY = ("scipy.stats", "matplotlib")


def test_import_loads_no_forbidden_or_lazy_module() -> None:
    loaded = modules_loaded_by("keel.drift")
    assert "keel.drift" in loaded and keel.drift.__all__
    assert not loaded_from(loaded, FORBIDDEN), "keel.drift imports forbidden modules"
    assert not loaded_from(loaded, LAZY), "keel.drift imports heavy modules eagerly"
