"""`reproduce` end to end: a two-worker keel.trainer model, registered in an embedded
registry, rebuilt byte for byte; every other link of the chain shown to be detected.

One model is trained per module (2 DDP workers on a local 2-CPU Ray); the tests that need
a re-run pay one worker-group start-up each. The oracles are the registry's records (the
registered digest, the archive's tensors) and the trainer run's MLflow params.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reproduce_testkit import edit_one_value, git_repo, job_values, write_data

from keel.pipelines.reproduce import LINKS, VERDICT_TAG, reproduce, verdict_from_tag, weight_diffs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

MODEL = "rep-mlp"


@dataclass
class World:
    root: Path
    home: Path
    repo: Path
    commit: str
    lock: Path
    data: Path
    key: Any
    trust: Any
    registry: Any
    version: int
    digest: str
    run_id: str


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """One local Ray per test process (2 CPUs, small object store, short temp dir); a start
    that misses Ray's registration wait on a loaded machine is retried by ensure_ray."""
    import ray

    from keel.trainer import ensure_ray

    info = ensure_ray(num_cpus=2, object_store_bytes=80 << 20, tmp_dir=f"/tmp/kp-{os.getpid()}")
    yield info
    ray.shutdown()


@pytest.fixture(scope="module")
def world(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from keel.artifacts import SigningKey, TrustPolicy, generate_keypair
    from keel.registry_client import Decision, open_registry
    from keel.trainer import parse_job, run_job

    root = tmp_path_factory.mktemp("reproduce")
    repo, commit, lock = git_repo(root)
    data = write_data(root / "train.parquet")
    priv, pub = generate_keypair()
    key, trust = SigningKey.from_pem(priv), TrustPolicy((pub,))
    home = root / "home"
    result = run_job(
        parse_job(job_values(MODEL, data)),
        home=home,
        signing_key=key,
        code=(commit, False),
        lock_file=lock,
    )
    assert result.status == "completed" and result.artifact_path is not None
    registry = open_registry(home)
    v = registry.register(result.artifact_path, trust=trust)
    registry.promote(MODEL, "champion", v.version, Decision("ana", "first", "sha256:" + "0" * 64))
    assert v.digest == result.artifact_digest and result.mlflow_run_id
    yield World(
        root,
        home,
        repo,
        commit,
        lock,
        data,
        key,
        trust,
        registry,
        v.version,
        v.digest,
        result.mlflow_run_id,
    )
    registry.close()


def _run(w: World, ref: str = "champion", name: str = "r", **kw: Any) -> Any:
    return reproduce(
        w.registry,
        MODEL,
        ref,
        work_dir=w.root / "work" / name,
        signing_key=w.key,
        trust=w.trust,
        repo=kw.pop("repo", w.repo),
        ray_num_cpus=2,
        **kw,
    )


def test_the_registered_model_is_rebuilt_byte_for_byte(world: World) -> None:
    v = _run(world, name="identical")
    assert v.status == "identical", v.message
    assert v.ok and v.link is None and v.retrained
    assert (
        v.reproduced_digest == world.digest == world.registry.get_by_alias(MODEL, "champion").digest
    )
    assert v.training_run == world.run_id
    assert [c.link for c in v.checks] == list(LINKS) and all(c.same for c in v.checks)
    # recorded where the evidence pack reads it, and beside the work dir
    tag = verdict_from_tag(world.registry.get_version(MODEL, world.version).tags[VERDICT_TAG])
    assert tag is not None and tag["status"] == "identical"
    assert tag["reproduced_digest"] == world.digest
    assert (world.root / "work" / "identical" / "verdict.json").is_file()


def test_by_version_number_too(world: World) -> None:
    # a version number resolves like an alias; an input check stops before any re-run
    v = _run(world, str(world.version), name="by-version", code=("f" * 40, False))
    assert (v.version, v.digest) == (world.version, world.digest)
    assert v.status == "differs" and v.link == "code version" and not v.retrained


def test_one_edited_row_is_the_data_fingerprint_link(world: World) -> None:
    original = world.data.read_bytes()
    try:
        edit_one_value(world.data, row=123, column="f2", delta=0.5)
        v = _run(world, name="edited")
        now = "sha256:" + hashlib.sha256(world.data.read_bytes()).hexdigest()
    finally:
        world.data.write_bytes(original)
    assert v.status == "differs" and v.link == "data fingerprint", v.message
    assert not v.retrained and v.reproduced_digest is None  # no silent different model
    (check,) = v.checks
    assert check.recorded == "sha256:" + hashlib.sha256(original).hexdigest()
    assert check.found == now != check.recorded


def test_missing_data_is_a_refusal_naming_the_file(world: World) -> None:
    moved = world.data.with_suffix(".moved")
    shutil.move(world.data, moved)
    try:
        v = _run(world, name="missing")
    finally:
        shutil.move(moved, world.data)
    assert v.status == "refused" and v.link == "data fingerprint"
    assert str(world.data) in v.message and "does not exist" in v.message
    # the file at its new place is accepted (and checked) with data=
    v2 = _run(world, name="moved", data=world.data, lock_file=world.root / "nope.lock")
    assert v2.link == "lock hash" and v2.checks[0].same  # data matched; stopped at the lock


def test_changed_parameter_is_the_parameters_link(world: World) -> None:
    from keel.trainer import parse_job

    changed = parse_job(job_values(MODEL, world.data, optimizer={"name": "adamw", "lr": 0.02}))
    v = _run(world, name="param", job=changed)
    assert v.status == "differs" and v.link == "parameters", v.message
    assert "train.optimizer.lr: recorded 0.01, now 0.02" in v.message
    assert not v.retrained
    # the worker count is a parameter too (it decides the data shards)
    one = parse_job(job_values(MODEL, world.data, workers=1))
    v1 = _run(world, name="workers", job=one)
    assert v1.link == "parameters" and "num_workers: recorded 2, now 1" in v1.message


def test_code_and_lock_links(world: World, tmp_path: Path) -> None:
    other = _run(world, name="code", code=("e" * 40, False))
    assert other.link == "code version" and world.commit in other.message
    assert [c.same for c in other.checks] == [True, False]
    elsewhere, _, _ = git_repo(tmp_path)  # a repository without the recorded commit
    gone = _run(world, name="gone", repo=elsewhere)
    assert gone.status == "refused" and gone.link == "code version"
    assert f"{world.commit} is not in the git history" in gone.message
    lock = tmp_path / "other.lock"
    lock.write_text("{}")
    v = _run(world, name="lock", lock_file=lock)
    assert v.status == "differs" and v.link == "lock hash"
    assert v.checks[-1].found == "sha256:" + hashlib.sha256(b"{}").hexdigest()


def test_a_registered_version_with_altered_weights_is_the_weights_link(world: World) -> None:
    """A version whose archive carries weights other than the recorded inputs produce (its
    training-run record copied from the real one) is caught at the weights link, with the
    exact per-tensor difference."""
    from keel.artifacts import ArtifactSpec, build_artifact, load_artifact

    reg = world.registry
    src = reg.download_archive(MODEL, world.version, world.root / "orig")
    loaded = load_artifact(src, world.trust, framework="numpy")
    tensors = {k: np.array(v, copy=True) for k, v in loaded.tensors.items()}
    name = sorted(tensors)[0]
    tensors[name].flat[0] += 0.25
    m = loaded.manifest
    spec = ArtifactSpec(
        name=m.name,
        architecture=m.architecture,
        input_schema=m.input_schema,
        output_schema=m.output_schema,
        training_data_fingerprint=m.training_data_fingerprint,
        code=m.code,
        dependency_lock_hash=m.dependency_lock_hash,
        metrics=m.metrics,
    )
    built = build_artifact(
        world.root / "altered",
        spec,
        tensors,
        signing_key=world.key,
        archive=world.root / "altered.tar",
    )
    v2 = reg.register(world.root / "altered.tar", trust=world.trust)
    client = reg.mlflow_client
    run = client.get_run(world.run_id)
    copy = client.create_run(run.info.experiment_id, run_name="copied-record")
    for k, val in run.data.params.items():
        client.log_param(copy.info.run_id, k, val)
    for k, val in run.data.tags.items():
        if not k.startswith("mlflow."):
            client.set_tag(
                copy.info.run_id, k, built.digest if k == "keel.artifact_digest" else val
            )
    v = _run(world, str(v2.version), name="weights")
    assert v.status == "differs" and v.link == "weights", v.message
    assert v.retrained and v.reproduced_digest == world.digest  # the real model came back
    assert v.weight_diffs[name] == pytest.approx(0.25, abs=1e-6)
    assert all(d == 0.0 for k, d in v.weight_diffs.items() if k != name)


def test_weight_diffs_oracle() -> None:
    a = {"w": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32), "b": np.zeros(2)}
    b = {"w": np.array([[1.0, 2.5], [3.0, 3.0]], dtype=np.float32), "c": np.zeros(1)}
    assert weight_diffs(a, b) == {"b": float("inf"), "c": float("inf"), "w": 1.0}


def test_evidence_pack_of_the_trained_model(world: World) -> None:
    """The pack on a real keel.trainer run: params, metrics and lineage tags as MLflow has
    them, and the version's last reproduce verdict as its tag says."""
    from datetime import UTC, datetime

    from keel.pipelines.evidence import build_pack

    reg = world.registry
    pack = build_pack(reg, MODEL, "champion", generated_at=datetime(2026, 5, 1, tzinfo=UTC))
    run = reg.mlflow_client.get_run(world.run_id)
    t = pack["training"]
    assert t["run_id"] == world.run_id and t["params"] == dict(run.data.params)
    assert t["final_metrics"] == dict(run.data.metrics)
    assert (t["num_workers"], t["seed"]) == (2, 5)
    assert t["code_version"] == world.commit
    assert pack["data"]["rows"] == 600
    assert pack["data"]["fingerprint"] == run.data.tags["keel.data_fingerprint"]
    assert pack["code"]["lock_hash"] == run.data.tags["keel.lock_hash"]
    tag = reg.get_version(MODEL, world.version).tags.get(VERDICT_TAG)
    if tag is None:
        assert pack["reproduce"] is None
    else:
        assert {k: v for k, v in pack["reproduce"].items() if k != "source"} == json.loads(tag)
