"""keel.registry_client stays light: mlflow, SQLAlchemy and psycopg load only when a
registry is opened, never at import."""

from __future__ import annotations

from testutil.imports import import_times

FORBIDDEN = ("torch", "ray", "mlflow", "sqlalchemy", "psycopg", "polars", "pandas")
BUDGET_US = 1_500_000


def test_import_is_light() -> None:
    modules = import_times("keel.registry_client")
    assert "keel.registry_client" in modules
    loaded = {m.split(".")[0] for m in modules}
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)
    assert modules["keel.registry_client"] < BUDGET_US
