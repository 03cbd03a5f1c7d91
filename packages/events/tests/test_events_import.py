"""keel.events stays light: which modules it loads (no torch/ray/mlflow/polars, no NATS client
until a nats:// bus is opened), not how many seconds it takes."""

from __future__ import annotations

from testutil.imports import loaded_from, modules_loaded_by

import keel.events  # also tells Pants to ship keel.events to this test's sandbox

FORBIDDEN = ("torch", "ray", "mlflow", "polars")


def test_import_loads_no_heavy_module_and_no_nats_client() -> None:
    loaded = modules_loaded_by("keel.events")
    assert keel.events.__name__ in loaded
    assert not loaded_from(loaded, FORBIDDEN)
    assert not loaded_from(loaded, ("nats",))  # loads only when a nats:// bus is opened
