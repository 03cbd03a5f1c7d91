"""Concurrent registration from many processes, on both backends.

16 processes x 50 distinct artifacts -> exactly 800 versions numbered 1..800; 16 processes
registering the same artifact at once -> exactly one version. Processes open their registry,
then wait on a start barrier so the registrations really overlap.
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


def _run(
    backend: Backend, model: str, root: Path, ranges: list[tuple[int, int]], tmp: Path
) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    go = tmp / "go"
    outs = [tmp / f"out{k}.json" for k in range(len(ranges))]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                WORKER,
                json.dumps(backend.spec),
                model,
                str(root),
                str(lo),
                str(hi),
                str(go),
                str(out),
            ],
            env=env,
        )
        for (lo, hi), out in zip(ranges, outs, strict=True)
    ]
    try:
        deadline = time.monotonic() + 300
        while not all(Path(str(o) + ".ready").exists() for o in outs):
            assert all(p.poll() is None for p in procs), "a worker died while starting"
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.1)
        go.write_text("1")
        for p in procs:
            assert p.wait(timeout=900) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [json.loads(o.read_text())["versions"] for o in outs]


def test_distinct_artifacts_get_distinct_gap_free_versions(
    backend: Backend, registry: Registry, model_name: str, tmp_path: Path
) -> None:
    ranges = [(k * PER_PROCESS, (k + 1) * PER_PROCESS) for k in range(PROCESSES)]
    started = time.monotonic()
    results = _run(backend, model_name, tmp_path / "a", ranges, tmp_path)
    elapsed = time.monotonic() - started
    total = PROCESSES * PER_PROCESS
    versions = [v for r in results for v in r.values()]
    print(
        f"\nregistry[{backend.kind}]: {total} registrations by {PROCESSES} processes in {elapsed:.1f}s"
    )
    assert sorted(versions) == list(range(1, total + 1))
    mlflow_versions = registry.versions(model_name)
    assert [v.version for v in mlflow_versions] == list(range(1, total + 1))
    digests = {v.digest for v in mlflow_versions}
    assert digests == {build_artifact(tmp_path / "a", model_name, i).digest for i in range(total)}


def test_the_same_artifact_from_many_processes_is_one_version(
    backend: Backend, registry: Registry, model_name: str, tmp_path: Path
) -> None:
    results = _run(backend, model_name, tmp_path / "a", [(0, 1)] * PROCESSES, tmp_path)
    assert {r["0"] for r in results} == {1}
    assert [v.version for v in registry.versions(model_name)] == [1]
