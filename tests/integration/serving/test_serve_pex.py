"""`dist/serve.pex` on a machine with only Python 3.11: run from another directory with a
clean environment (`env -i` with only PATH and HOME; the bare CPython 3.11, not this test's
virtualenv) against a signed artifact, and check a real prediction and the refusal of an
artifact signed by an untrusted key.

The pex comes from Pants (`runtime_package_dependencies` puts it at ./serve.pex) or from
`./pants package apps/serve:serve` (<repo>/dist/serve.pex)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from testutil.isolation import port_base
from testutil.serving_artifacts import Keys, make_artifact, reference

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PEX_NAME = "serve.pex"


def serve_pex() -> Path:
    here = Path.cwd() / PEX_NAME
    repo_dist = Path(__file__).resolve().parents[3] / "dist" / PEX_NAME
    for pex in (here, repo_dist):
        if pex.is_file():
            return pex.resolve()
    raise AssertionError(
        f"no {PEX_NAME}: run `./pants package apps/serve:serve` (or run this test with "
        "`./pants test`, which builds it)"
    )


def bare_python311() -> Path:
    """The base CPython 3.11 (outside any virtualenv: no site-packages of ours)."""
    exe = shutil.which("python3.11")
    assert exe, "python3.11 is not on PATH"
    out = subprocess.run(
        [exe, "-c", "import sys; print(sys.base_prefix); print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    base = Path(out[0]) / "bin" / "python3.11"
    assert base.is_file() and out[1] == "(3, 11)", out
    return base


def free_port() -> int:
    import socket

    for port in range(port_base(60), port_base(60) + 20):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port in this slot's range")


@contextlib.contextmanager
def running(workdir: Path, config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir / "home")}
    cmd = ["env", "-i", *(f"{k}={v}" for k, v in env.items())]
    cmd += [str(bare_python311()), str(serve_pex()), "--config", str(config)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


def write_config(path: Path, artifact: Path, pub: Path, home: Path, port: int) -> Path:
    path.write_text(
        "[serve]\n"
        f'model = "{artifact}"\n'
        f'trust_keys = ["{pub}"]\n'
        f'home = "{home}"\n'
        f"port = {port}\n"
        'device = "cpu"\n'
        "log_predictions = false\n"
    )
    return path


def test_serve_pex_runs_from_a_clean_environment(tmp_path: Path) -> None:
    keys, untrusted = Keys(), Keys()
    artifact, model = make_artifact(tmp_path, keys, views=False, seed=3)
    pub = tmp_path / "keel.pub"
    pub.write_bytes(keys.pub)
    elsewhere = tmp_path / "elsewhere"  # not the repo, not the pex's directory
    (elsewhere / "home").mkdir(parents=True)
    port = free_port()
    cfg = write_config(tmp_path / "serve.toml", artifact, pub, tmp_path / "keel-home", port)
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with running(elsewhere, cfg, log) as proc:
        deadline = time.monotonic() + 600  # first start unpacks the pex (torch) into HOME
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"serve.pex exited {proc.returncode}: {log.read_text()[-3000:]}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(url + "/readyz", timeout=2) as r,
            ):
                if r.status == 200:
                    break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        rows: list[tuple[float, float, float, str]] = [
            (0.5, -1.25, 3.0, "pos"),
            (-2.0, 0.75, -4.0, "atm"),
        ]
        body = {
            "instances": [
                {
                    "entity": f"c{i}",
                    "features": dict(zip(["f0", "f1", "f2", "channel"], r, strict=True)),
                }
                for i, r in enumerate(rows)
            ]
        }
        req = urllib.request.Request(
            url + "/v1/predict",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            out = json.loads(r.read())
        cat = {"web": 0.0, "pos": 1.0, "atm": 2.0}
        want = reference(model, [[a, b, c, cat[d]] for a, b, c, d in rows])
        assert [p["p_default"] for p in out["predictions"]] == pytest.approx(want, abs=1e-6)
        assert out["model"] == "credit" and out["digest"].startswith("sha256:")
        proc.terminate()
        assert proc.wait(60) == 0, log.read_text()[-3000:]  # SIGTERM: a clean stop

    # an artifact signed by a key the server does not trust: exit 1, one-line error, no port
    bad, _ = make_artifact(tmp_path, untrusted, views=False, seed=4, dirname="bad")
    cfg = write_config(tmp_path / "bad.toml", bad, pub, tmp_path / "keel-home", port)
    with running(elsewhere, cfg, tmp_path / "bad.log") as proc:
        assert proc.wait(600) == 1
    assert "refused artifact" in (tmp_path / "bad.log").read_text()
