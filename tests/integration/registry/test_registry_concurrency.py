"""Concurrent registration from many processes, on both backends.

16 processes start together (a start barrier after they open their registry). Each first
registers the *same* artifact of one model -> exactly one version; then its own 50 distinct
artifacts of another model -> exactly 800 versions numbered 1..800, each digest once. One set
of processes serves both checks: starting 16 Python processes that import MLflow is most of
the cost on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from integration.registry.registry_support import Backend, build_artifact

from keel.registry_client import Registry

pytestmark = pytest.mark.slow

WORKER = str(Path(__file__).with_name("registry_worker.py"))
PROCESSES = 16
PER_PROCESS = int(os.environ.get("KEEL_REGISTRY_PER_PROCESS", "50"))


def test_concurrent_registration_is_idempotent_and_gap_free(
    backend: Backend, registry: Registry, model_name: str, tmp_path: Path
) -> None:
    same, distinct = model_name + "-same", model_name + "-distinct"
    root, go = tmp_path / "a", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    outs = [tmp_path / f"out{k}.json" for k in range(PROCESSES)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                WORKER,
                json.dumps(backend.spec),
                str(root),
                str(go),
                str(out),
                json.dumps([[same, 0, 1], [distinct, k * PER_PROCESS, (k + 1) * PER_PROCESS]]),
            ],
            env=env,
        )
        for k, out in enumerate(outs)
    ]
    try:
        deadline = time.monotonic() + 600
        while not all(Path(str(o) + ".ready").exists() for o in outs):
            assert all(p.poll() is None for p in procs), "a worker died while starting"
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.1)
        go.write_text("1")
        went = time.monotonic()
        for p in procs:
            assert p.wait(timeout=900) == 0
        elapsed = time.monotonic() - went
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = [json.loads(o.read_text()) for o in outs]
    total = PROCESSES * PER_PROCESS
    print(
        f"\nregistry[{backend.kind}]: {PROCESSES} processes x (1 shared + {PER_PROCESS} distinct) "
        f"registrations in {elapsed:.1f}s after the start barrier"
    )
    assert {r[same]["0"] for r in results} == {1}
    assert [v.version for v in registry.versions(same)] == [1]

    versions = [v for r in results for v in r[distinct].values()]
    assert sorted(versions) == list(range(1, total + 1))
    in_mlflow = registry.versions(distinct)
    assert [v.version for v in in_mlflow] == list(range(1, total + 1))
    assert {v.digest for v in in_mlflow} == {
        build_artifact(root, distinct, i).digest for i in range(total)
    }
