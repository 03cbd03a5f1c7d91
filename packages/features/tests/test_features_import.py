"""keel.features stays light: which modules it loads (no torch/ray/mlflow, no Redis or NATS
client until such a store or bus is opened), not how many seconds it takes."""

from __future__ import annotations

from testutil.imports import loaded_from, modules_loaded_by

import keel.features  # also tells Pants to ship keel.features to this test's sandbox

FORBIDDEN = ("torch", "ray", "mlflow")
LAZY = ("redis", "nats")


def test_import_loads_no_forbidden_or_lazy_module() -> None:
    loaded = modules_loaded_by("keel.features")
    assert keel.features.__name__ in loaded
    assert not loaded_from(loaded, FORBIDDEN)
    assert not loaded_from(loaded, LAZY)
