"""Fixtures: one registry suite parametrised over both backends (as keel.events does).

* `sqlite`: the embedded default; every test gets its own KEEL_HOME holding a copy of one
  MLflow database migrated once per session (migrating costs ~10 s).
* `server`: one `mlflow server` per test session on a fresh PostgreSQL database
  (testutil.mlflow_server); tests isolate by unique model names.
"""

from __future__ import annotations

from testutil.profiles import register_profiles

register_profiles()

import sqlite3  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from integration.registry.registry_support import (  # noqa: E402
    ArtifactFactory,
    Backend,
    build_artifact,
)
from testutil.isolation import unique_name  # noqa: E402
from testutil.mlflow_server import MlflowServer  # noqa: E402

from keel.registry_client import RegistrableArtifact, Registry, open_registry  # noqa: E402

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("server", id="server", marks=pytest.mark.integration),
]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("template")
    open_registry(home).close()
    return home / "mlflow.db"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        home = tmp_path / "home"
        home.mkdir()
        # The backup API, not a file copy: the template's latest pages may still be in its WAL.
        with (
            sqlite3.connect(request.getfixturevalue("sqlite_template")) as src,
            sqlite3.connect(home / "mlflow.db") as dst,
        ):
            src.backup(dst)
        b = Backend("sqlite", {"home": str(home)}, [])
    else:
        server: MlflowServer = request.getfixturevalue("mlflow_server")
        b = Backend(
            "server",
            {
                "tracking_uri": server.url,
                "db_url": server.db_url,
                "artifacts": str(server.workdir / "artifacts"),
            },
            [],
        )
    yield b
    for reg in b.opened:
        reg.close()


@pytest.fixture
def registry(backend: Backend) -> Registry:
    return backend.open()


@pytest.fixture
def model_name() -> str:
    return unique_name("model").replace("_", "-")


@pytest.fixture
def make_artifact(tmp_path: Path, model_name: str) -> ArtifactFactory:
    def make(i: int, **overrides: Any) -> RegistrableArtifact:
        return build_artifact(
            tmp_path / "artifacts", overrides.pop("name", model_name), i, **overrides
        )

    return make
