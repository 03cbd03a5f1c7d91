"""`mlflow models serve --env-manager local` serves a Keel-registered champion (embedded
registry): POST /invocations equals a direct keel.artifacts load; with no trusted key
configured the server refuses to start. Each server is a fresh process importing MLflow and
torch, hence `slow`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from integration.registry.registry_support import (
    LINEAR_BUILDER,
    Backend,
    Signer,
    build_signed,
    make_linear,
)
from testutil.mlflow_server import free_port

from keel.artifacts import load_artifact
from keel.registry_client import Decision, Registry

pytestmark = pytest.mark.slow


def _uvicorn_shim(tmp: Path) -> Path:
    """`mlflow models serve` execs `uvicorn` from PATH. The exported venv's `bin/uvicorn` runs
    `python -sE`, which ignores PYTHONPATH, and Keel is on PYTHONPATH here (a source checkout;
    an installed deployment has keel-* wheels instead): run uvicorn as a module of this
    interpreter."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "uvicorn"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m uvicorn "$@"\n')
    shim.chmod(0o755)
    return bin_dir


def _env(backend: Backend, key: Path | None, bin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_TRUSTED", "KEEL_ALLOW"))}
    env.update(
        MLFLOW_TRACKING_URI=backend.tracking_uri,
        MLFLOW_REGISTRY_URI=backend.tracking_uri,
        KEEL_MODEL_BUILDERS=LINEAR_BUILDER,
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
        # `mlflow models serve` runs uvicorn from the environment's bin/ (FACTS)
        PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env["PATH"]]),
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    if key is not None:
        env["KEEL_TRUSTED_KEYS"] = str(key)
    return env


@contextlib.contextmanager
def _serve(
    uri: str, env: dict[str, str], log: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port(80)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        uri,
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()[-3000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r,
        ):
            if r.status == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"server not ready: {log.read_text()[-3000:]}")


def _post(port: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_mlflow_models_serve_serves_the_champion(
    backend: Backend, registry: Registry, model_name: str, tmp_path: Path
) -> None:
    import torch

    signer = Signer()
    key = tmp_path / "keel.pub"
    key.write_bytes(signer.public_pem)
    built = build_signed(tmp_path, model_name, 3, signer)
    assert built.archive is not None
    registry.register(built.archive, trust=signer.policy)
    registry.promote(model_name, "champion", 1, Decision("ops", "serve it", "sha256:" + "a" * 64))
    uri = f"models:/{model_name}@champion"

    x = np.random.default_rng(1).standard_normal((16, 2))
    with _serve(uri, _env(backend, key, _uvicorn_shim(tmp_path)), tmp_path / "serve.log") as (
        proc,
        port,
    ):
        _wait_ready(proc, port, tmp_path / "serve.log")
        status, out = _post(
            port, {"dataframe_split": {"columns": ["x0", "x1"], "data": x.tolist()}}
        )
        assert status == 200, out
        got = np.array([row["score"] for row in out["predictions"]])
        model = load_artifact(built.archive, signer.policy).build_model({"linear": make_linear})
        with torch.no_grad():
            want = model(torch.from_numpy(x).float()).numpy()[:, 0]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        status, out = _post(port, {"dataframe_split": {"columns": ["x1"], "data": [[1.0]]}})
        assert status == 400 and "x0" in json.dumps(out)

    # With no trusted key configured the server refuses to load the model at all.
    log = tmp_path / "refused.log"
    with _serve(uri, _env(backend, None, _uvicorn_shim(tmp_path)), log) as (proc, _):
        assert proc.wait(timeout=180) != 0
    assert "no trusted public keys are configured" in log.read_text()
