"""Training on a real local Ray cluster (2 CPUs): determinism, export, tracking, and no lost
work when a worker, a checkpoint write or the driver is SIGKILLed.

Every run trains the same small job (an 8 -> 16 -> 16 -> 1 MLP, 3000 rows, 2 DDP workers,
114 steps, a checkpoint every 10). The uninterrupted run is the oracle: each interrupted run
must end with bitwise-identical weights.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_testdata import job

from keel.trainer import (
    FaultPlan,
    ResumeConflictError,
    TrainerMetrics,
    TrainResult,
    default_registry,
    run_job,
)

# Each run pays Ray's worker-group start-up (30-90 s on a loaded 2-core machine).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
INTERVAL = 10


def _equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _starts(r: TrainResult) -> list[dict[str, Any]]:
    return [e for e in r.events if e["type"] == "start"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


CODE = ("0123456789abcdef0123456789abcdef01234567", False)


@pytest.fixture(scope="module")
def lock_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("lock") / "default.lock"
    p.write_text('{"locked_resolves": []}')
    return p


@pytest.fixture(scope="module")
def baseline(
    ray_cluster: Any,
    home: Path,
    regression_data: Path,
    signing_keys: tuple[bytes, bytes],
    lock_file: Path,
) -> TrainResult:
    from keel.artifacts import SigningKey

    metrics = TrainerMetrics()
    r = run_job(
        job("base", regression_data, tracking={"enabled": True}),
        home=home,
        signing_key=SigningKey.from_pem(signing_keys[0]),
        metrics=metrics,
        code=CODE,
        lock_file=lock_file,
    )
    assert r.status == "completed" and r.step == 114 and r.restarts == 0
    assert (
        metrics.registry.get_sample_value("keel_trainer_runs_total", {"status": "completed"}) == 1
    )
    assert (metrics.registry.get_sample_value("keel_trainer_checkpoint_seconds_count") or 0) >= 11
    assert r.mlflow_run_id is not None
    return r


def test_two_runs_give_bitwise_identical_weights(
    baseline: TrainResult, home: Path, regression_data: Path
) -> None:
    other = run_job(job("again", regression_data), home=home, export=False)
    assert other.step == baseline.step
    assert _equal(other.state_dict(), baseline.state_dict())
    assert other.history == baseline.history  # validation metrics too, bit for bit


def test_export_is_a_signed_artifact_that_rebuilds_the_model(
    baseline: TrainResult, regression_data: Path, signing_keys: tuple[bytes, bytes], lock_file: Path
) -> None:
    from keel.artifacts import TrustPolicy, load_artifact

    assert baseline.artifact_path is not None and baseline.artifact_digest
    loaded = load_artifact(baseline.artifact_path, TrustPolicy((signing_keys[1],)))
    m = loaded.manifest
    assert loaded.digest == baseline.artifact_digest
    assert (
        m.training_data_fingerprint
        == "sha256:" + hashlib.sha256(regression_data.read_bytes()).hexdigest()
    )
    assert m.architecture.builder == "mlp" and m.architecture.args["hidden"] == [16, 16]
    assert [f.name for f in m.input_schema] == [f"f{i}" for i in range(8)]
    assert [f.name for f in m.output_schema] == ["y"]
    assert m.metrics["val_loss"] == baseline.history[-1]["val_loss"]
    assert (m.code.commit, m.code.dirty) == CODE
    assert m.dependency_lock_hash == "sha256:" + hashlib.sha256(lock_file.read_bytes()).hexdigest()
    model = loaded.build_model(default_registry())
    assert _equal(dict(model.state_dict()), baseline.state_dict())


def test_mlflow_run_holds_params_metrics_and_lineage(
    baseline: TrainResult, home: Path, regression_data: Path, lock_file: Path
) -> None:
    import mlflow
    import ray

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    assert baseline.mlflow_run_id is not None
    run = client.get_run(baseline.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "3" and run.data.params["model.builder"] == "mlp"
    tags = run.data.tags
    assert tags["keel.data_fingerprint"] == baseline.data_fingerprint
    assert tags["keel.artifact_digest"] == baseline.artifact_digest
    assert (
        tags["keel.ray_version"] == ray.__version__
        and tags["keel.torch_version"] == torch.__version__
    )
    assert tags["keel.lock_hash"] == "sha256:" + hashlib.sha256(lock_file.read_bytes()).hexdigest()
    assert tags["keel.code_version"] == CODE[0] and tags["keel.code_dirty"] == "false"
    hist = client.get_metric_history(baseline.mlflow_run_id, "val_loss")
    assert [p.step for p in hist] == [0, 1, 2]
    assert [p.value for p in hist] == [h["val_loss"] for h in baseline.history]


def test_sigkilled_worker_restarts_and_finishes_bitwise_equal(
    baseline: TrainResult, home: Path, regression_data: Path, tmp_path: Path
) -> None:
    kill_step = random.Random(os.environ.get("KEEL_CHAOS_SEED", "12")).randint(11, 105)
    faults = FaultPlan(once_dir=tmp_path / "faults", kill_at_step=kill_step, rank=1)
    r = run_job(job("kill-worker", regression_data), home=home, export=False, faults=faults)
    assert faults.fired() == ["step"]
    starts = _starts(r)
    assert r.restarts == 1 and len(starts) == 2, starts
    resumed = starts[1]["resumed_from"]
    assert resumed is not None and 0 <= kill_step - resumed <= INTERVAL, (kill_step, resumed)
    assert r.status == "completed" and r.step == baseline.step
    assert _equal(r.state_dict(), baseline.state_dict())


def test_sigkill_during_checkpoint_write_never_restores_the_partial(
    baseline: TrainResult, home: Path, regression_data: Path, tmp_path: Path
) -> None:
    faults = FaultPlan(once_dir=tmp_path / "faults", kill_in_checkpoint_step=30)
    r = run_job(job("kill-ckpt", regression_data), home=home, export=False, faults=faults)
    assert faults.fired() == ["checkpoint"]
    starts = _starts(r)
    assert [s["resumed_from"] for s in starts] == [None, 20]  # not the half-written 30
    assert _equal(r.state_dict(), baseline.state_dict())


DRIVER = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from trainer_testdata import job
from keel.trainer import FaultPlan, run_job
run_job(job("driver-kill", Path({data!r})), home=Path({home!r}), export=False,
        ray_address={address!r}, faults=FaultPlan(once_dir=Path({once!r}), pause_at_step=35))
"""


def test_killed_driver_rerun_resumes_from_last_committed_checkpoint(
    baseline: TrainResult, home: Path, regression_data: Path, tmp_path: Path
) -> None:
    import ray

    once = tmp_path / "faults"
    code = DRIVER.format(
        tests=str(Path(__file__).parent),
        data=str(regression_data),
        home=str(home),
        address=ray.get_runtime_context().gcs_address,
        once=str(once),
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    )
    try:
        for _ in range(3000):  # the driver's rank 0 pauses at step 35, after checkpoint 30
            if (once / "fired-pause").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert (once / "fired-pause").exists(), f"driver exited early ({proc.poll()})"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    r = run_job(job("driver-kill", regression_data), home=home, export=False)
    assert _starts(r)[0]["resumed_from"] == 30
    assert _equal(r.state_dict(), baseline.state_dict())


def test_stop_request_stops_after_a_committed_checkpoint_and_resumes(
    baseline: TrainResult, home: Path, regression_data: Path
) -> None:
    stop = threading.Event()
    stop.set()  # Ctrl-C before the first step: stop at the first checkpoint
    r = run_job(job("stopped", regression_data), home=home, export=False, stop=stop)
    assert r.status == "stopped" and r.step == INTERVAL
    again = run_job(job("stopped", regression_data), home=home, export=False)
    assert _starts(again)[0]["resumed_from"] == INTERVAL and again.status == "completed"
    assert _equal(again.state_dict(), baseline.state_dict())


def test_same_name_with_a_different_spec_is_refused(
    baseline: TrainResult, home: Path, regression_data: Path
) -> None:
    with pytest.raises(ResumeConflictError, match="different job spec"):
        run_job(job("base", regression_data, seed=99), home=home, export=False)
