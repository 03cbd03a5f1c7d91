"""keel.registry_client stays light: mlflow, SQLAlchemy and psycopg load only when a
registry is opened, never at import. It asserts which modules load, never seconds."""

from __future__ import annotations

from testutil.imports import loaded_from, modules_loaded_by

import keel.registry_client  # also tells Pants to ship keel.registry_client to this test's sandbox

FORBIDDEN = ("torch", "ray", "mlflow", "sqlalchemy", "psycopg", "polars", "pandas")


def test_import_loads_no_forbidden_module() -> None:
    loaded = modules_loaded_by("keel.registry_client")
    assert "keel.registry_client" in loaded and keel.registry_client.__all__
    assert not loaded_from(loaded, FORBIDDEN), "keel.registry_client imports forbidden modules"
