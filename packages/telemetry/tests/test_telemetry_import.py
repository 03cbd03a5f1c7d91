"""`import keel.telemetry` stays light: which modules it loads, not how many seconds it takes."""

from __future__ import annotations

from testutil.imports import loaded_from, modules_loaded_by

import keel.telemetry  # also makes Pants ship the package into the sandbox
import keel.telemetry.app  # (not imported by keel.telemetry itself)

FORBIDDEN = ("torch", "ray", "mlflow", "polars", "pandas", "numpy", "pydantic")


def test_import_loads_no_heavy_module() -> None:
    loaded = modules_loaded_by("keel.telemetry")
    assert keel.telemetry.__name__ in loaded
    assert "prometheus_client" in loaded  # the one third-party project it needs
    assert not loaded_from(loaded, FORBIDDEN)


def test_the_app_convention_module_stays_light_too() -> None:
    loaded = modules_loaded_by("keel.telemetry.app")
    assert keel.telemetry.app.__name__ in loaded
    assert not loaded_from(loaded, FORBIDDEN)
