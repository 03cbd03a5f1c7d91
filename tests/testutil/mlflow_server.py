"""A private `mlflow server` on PostgreSQL for tests of the real registry backend.

`MlflowServer.start()` creates a fresh database on the machine's PostgreSQL
(`$KEEL_PG_DSN`, default postgres@127.0.0.1:5432), starts `mlflow server` on it on a free
port of this slot's range with a local artifact store, and waits until it answers;
`stop()` kills it and drops the database. The server is the full MLflow distribution from
the `mlflow-server` resolve (ADR 0003), found as, in order:
  $KEEL_MLFLOW_SERVER            a command (e.g. a venv's `bin/mlflow`, or the PEX)
  ./mlflow-server.pex            where Pants puts `runtime_package_dependencies`
  <repo>/dist/mlflow-server.pex  after `./pants package 3rdparty/python:mlflow-server`
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from testutil.isolation import pg_dsn, port_base, unique_name

PEX_NAME = "mlflow-server.pex"


def server_command() -> list[str]:
    """The argv prefix that runs MLflow's CLI from the server resolve."""
    explicit = os.environ.get("KEEL_MLFLOW_SERVER")
    if explicit:
        return [explicit]
    here = Path.cwd() / PEX_NAME
    repo_dist = Path(__file__).resolve().parents[2] / "dist" / PEX_NAME
    for pex in (here, repo_dist):
        if pex.exists():
            return [sys.executable, str(pex)]
    raise RuntimeError(
        "no MLflow server found: set KEEL_MLFLOW_SERVER to an `mlflow` command from the "
        "mlflow-server resolve, or run `./pants package 3rdparty/python:mlflow-server`"
    )


def free_port(offset: int) -> int:
    """The first free port from this slot's range at `offset`."""
    for port in range(port_base(offset), port_base(offset) + 20):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port in this slot's range")


def _admin_dsn() -> str:
    return pg_dsn()


def _with_db(dsn: str, db: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{db}"


class MlflowServer:
    """One `mlflow server` process on one fresh PostgreSQL database."""

    def __init__(self, workdir: Path, port_offset: int = 70) -> None:
        self.workdir = workdir
        self.port = free_port(port_offset)
        self.db = unique_name("keel_mlflow").lower()
        self.db_url = _with_db(_admin_dsn(), self.db)  # postgresql:// (psycopg, Keel's tables)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mlflow-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 240.0) -> None:
        import psycopg

        with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db}"')
        store = "postgresql+psycopg://" + self.db_url.partition("://")[2]
        artifacts = self.workdir / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
            "PEX_ROOT": os.environ.get("PEX_ROOT", str(Path.home() / ".pex")),
        }
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    *server_command(),
                    "server",
                    "--backend-store-uri",
                    store,
                    "--artifacts-destination",
                    artifacts.as_uri(),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}): {self.tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + "/health", timeout=2) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout_s}s: {self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        import psycopg

        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(_admin_dsn(), autocommit=True) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        shutil.rmtree(self.workdir / "artifacts", ignore_errors=True)
