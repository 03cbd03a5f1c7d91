"""The driver: validate, start Ray, run the worker group, follow it, export and track.

``run_job`` blocks until the job completes, stops (``stop`` event set: the workers stop right
after their next committed checkpoint) or fails for good. Re-running the same job name
resumes from its newest committed checkpoint — after a crash, a Ctrl-C or a killed driver —
and a job that already finished resumes at its last step, so it only re-exports.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keel.trainer import _checkpoint as ck
from keel.trainer import _cluster, _data, _loop, _objectives
from keel.trainer._errors import (
    InvalidJobError,
    TrainerError,
    TrainingFailedError,
)
from keel.trainer._faults import FaultPlan
from keel.trainer._registry import ModelRegistry, default_registry
from keel.trainer._spec import TrainJob

Event = dict[str, Any]


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or stopped) run produced."""

    job_name: str
    status: str  # completed | early_stopped | stopped
    step: int
    epochs_done: int
    checkpoint: Path
    history: list[dict[str, float]]
    restarts: int
    resumed_from: int | None
    data_fingerprint: str
    artifact_digest: str | None = None
    artifact_path: Path | None = None
    mlflow_run_id: str | None = None
    ray_start_seconds: float = 0.0
    train_seconds: float = 0.0
    events: list[Event] = field(default_factory=list, repr=False)

    def state_dict(self) -> dict[str, Any]:
        """The trained model's tensors, read from the final committed checkpoint."""
        return final_weights(self.checkpoint)


def run_dir(home: Path, job_name: str) -> Path:
    return Path(home) / "trainer" / job_name


def final_weights(checkpoint: Path) -> dict[str, Any]:
    store = ck.CheckpointStore(checkpoint.parent)
    step = int(checkpoint.name.removeprefix("step-"))
    c = store.verify(step, checkpoint)
    if c is None:
        raise TrainerError(f"checkpoint {checkpoint} is not committed or fails verification")
    tensors = ck.tensors_from_bytes(c.read(ck.STATE_TENSORS))
    structure = json.loads(c.read(ck.STATE_JSON))
    return ck.unflatten(structure["model"], tensors)  # type: ignore[no-any-return]


def code_version(cwd: Path | None = None) -> tuple[str, bool]:
    """(commit, dirty): ``$KEEL_CODE_VERSION`` (``<commit>`` or ``<commit>+dirty``, for
    builds without a checkout), else the git checkout at ``cwd`` (default: the working
    directory), else ("unknown", True)."""
    import os

    given = os.environ.get("KEEL_CODE_VERSION", "").strip()
    if given:
        return given.removesuffix("+dirty"), given.endswith("+dirty")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=cwd,
            timeout=30,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=True,
                cwd=cwd,
                timeout=30,
            ).stdout.strip()
        )
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", True


def find_lock_file(start: Path | None = None) -> Path | None:
    """``$KEEL_LOCK_FILE``, else the first ``3rdparty/python/default.lock`` at or above
    ``start`` (default: the working directory), else None."""
    import os

    if os.environ.get("KEEL_LOCK_FILE"):
        return Path(os.environ["KEEL_LOCK_FILE"])
    here = (start or Path.cwd()).resolve()
    for d in [here, *here.parents]:
        lock = d / "3rdparty" / "python" / "default.lock"
        if lock.is_file():
            return lock
    return None


ENV_HASH_PREFIX = "dists-sha256:"


@functools.cache
def environment_hash() -> str:
    """``dists-sha256:`` of the running environment's installed distributions (sorted, unique
    ``name==version`` lines): what records the dependency set where there is no lockfile (a
    built pex, a Pants sandbox, a wheel install). Taken once per process: later imports (Ray,
    feature definitions) may extend ``sys.path`` and so the set a scan would see."""
    import hashlib
    from importlib import metadata

    pins = sorted(
        {f"{(d.metadata['Name'] or '').lower()}=={d.version}" for d in metadata.distributions()}
    )
    return ENV_HASH_PREFIX + hashlib.sha256("\n".join(pins).encode()).hexdigest()


def lock_hash(start: Path | None = None, lock_file: Path | None = None) -> str:
    """``sha256:`` of ``lock_file``, else of ``find_lock_file(start)``; where there is no
    lockfile, ``environment_hash()`` (``dists-sha256:`` of the installed distributions), so an
    artifact always records which dependency set built it."""
    import hashlib

    explicit = lock_file or find_lock_file(start)
    if explicit is None:
        return environment_hash()
    try:
        return "sha256:" + hashlib.sha256(Path(explicit).read_bytes()).hexdigest()
    except OSError as e:
        raise InvalidJobError(f"cannot read lock file {explicit}: {e.strerror or e}") from None


def run_job(
    job: TrainJob,
    *,
    home: str | Path,
    registry: ModelRegistry | None = None,
    fresh: bool = False,
    on_event: Callable[[Event], None] | None = None,
    stop: threading.Event | None = None,
    ray_address: str | None = None,
    ray_num_cpus: int | None = None,
    metrics: Any = None,
    export: bool = True,
    signing_key: Any = None,
    tracking: bool | None = None,
    faults: FaultPlan | None = None,
    code: tuple[str, bool] | None = None,
    lock_file: Path | None = None,
    lock: str | None = None,
    parent_run_id: str | None = None,
    gate_epochs: bool = False,
    clock: Callable[[], float] = time.time,
    poll_seconds: float = 0.2,
) -> TrainResult:
    """Run ``job`` on Ray Train and return its result (see the module docstring).

    ``registry``: model builders (default: ``default_registry()``). ``metrics``: a
    ``TrainerMetrics`` to update. ``signing_key``: a ``keel.artifacts.SigningKey`` (else the
    job's ``export.signing_key`` / ``KEEL_SIGNING_KEY`` PEM). ``code``: (commit, dirty), else
    ``code_version()``; ``lock_file``: the dependency lockfile hashed into the artifact, else
    ``lock_hash()``'s search; ``lock``: the dependency hash itself (wins over ``lock_file``). ``parent_run_id``: the MLflow run this one nests under (a Tune
    trial's search run). ``gate_epochs``: the workers commit a checkpoint at each epoch's end
    and wait there until ``on_event`` has returned for that epoch's event (how a Tune trial
    lets ASHA stop it at an epoch boundary); weights are unchanged by it. ``faults``: chaos
    tests only.
    """
    if job.tune is not None:
        raise InvalidJobError(
            f"job {job.name!r} has a [tune] section: it is a search, run it with "
            "run_search(job, ...) or `keel train`; remove the section to train it once"
        )
    registry = registry if registry is not None else default_registry()
    home = Path(home).expanduser().resolve()
    _objectives.check_names(job.train.loss, job.train.metrics)
    info = _data.inspect(job.data.path, job.data.features, job.data.target)
    if info.num_rows < 2:
        raise _data.DataError(f"training set {job.data.path} has {info.num_rows} rows; need more")
    probe = registry.build(job.model.builder, job.model.args)  # fails fast on bad args
    n_out = _probe_outputs(probe, len(job.data.features))
    fp = _data.fingerprint(job.data.path)

    rdir = run_dir(home, job.name)
    store = ck.CheckpointStore(rdir / "checkpoints")
    if fresh and rdir.exists():
        shutil.rmtree(rdir)
    rdir.mkdir(parents=True, exist_ok=True)
    (rdir / "job.json").write_text(job.model_dump_json(indent=2))

    t0 = time.perf_counter()
    cinfo = _cluster.ensure_ray(address=ray_address, num_cpus=ray_num_cpus)
    ray_start = time.perf_counter() - t0
    world = _cluster.resolve_workers(
        job.scaling.num_workers,
        job.scaling.use_gpu,
        job.scaling.cpus_per_worker,
        job.scaling.gpus_per_worker,
        cinfo,
    )
    if job.train.batch_size % world:
        raise _data.DataError(
            f"train.batch_size {job.train.batch_size} must divide evenly across {world} workers"
        )
    job = job.with_workers(world)
    common, _, steps_per_epoch = _loop.plan(job, info.num_rows, world)
    if steps_per_epoch == 0:
        raise _data.DataError(
            f"no training rows left per worker after the validation split ({common})"
        )
    _check_resumable(store, job, world)

    tracker = None
    commit, dirty = code if code is not None else code_version()
    lhash = lock if lock is not None else lock_hash(lock_file=lock_file)
    if tracking if tracking is not None else job.tracking.enabled:
        from keel.trainer._tracking import Tracker, default_tracking_uri

        tracker = Tracker(
            job.tracking.tracking_uri or default_tracking_uri(home),
            job.tracking.experiment,
            home,
            rdir / "mlflow_run_id",
            clock,
            parent_run_id=parent_run_id,
        )
        tracker.params(_flat_params(job))
        import ray
        import torch

        tracker.tags(
            {
                "keel.job": job.name,
                "keel.job_digest": job.digest(),
                "keel.data_fingerprint": fp,
                "keel.code_version": commit,
                "keel.code_dirty": str(dirty).lower(),
                "keel.lock_hash": lhash,
                "keel.ray_version": ray.__version__,
                "keel.torch_version": torch.__version__,
                "keel.num_workers": str(world),
                # what `keel reproduce` re-runs: the whole job as run (workers resolved),
                # where its data was read from and how many rows it had
                "keel.job_spec": job_spec_json(job),
                "keel.data_path": str(Path(job.data.path).resolve()),
                "keel.data_rows": str(info.num_rows),
            }
        )

    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    sink = _cluster.make_sink()
    config = {
        "job": job.model_dump(mode="json"),
        "registry": registry,
        "run_dir": str(rdir),
        "sink": sink,
        "faults": faults,
        "num_rows": info.num_rows,
        "gate_epochs": gate_epochs,
    }
    resources: dict[str, float] = {"CPU": float(job.scaling.cpus_per_worker)}
    if job.scaling.use_gpu and job.scaling.gpus_per_worker:
        resources["GPU"] = job.scaling.gpus_per_worker
    trainer = TorchTrainer(
        _loop.train_worker,  # type: ignore[arg-type]  # Ray ignores the return value
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=world, use_gpu=job.scaling.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=f"{job.name}-{uuid.uuid4().hex[:8]}",
            storage_path=str(rdir / "ray"),
            failure_config=FailureConfig(max_failures=job.failure.max_failures),
        ),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # re-raised on the caller's thread below
            outcome["error"] = e

    t1 = time.perf_counter()
    th = threading.Thread(target=fit, name="keel-trainer-fit", daemon=True)
    th.start()
    events: list[Event] = []
    follower = _Follower(tracker, metrics, on_event)
    stop_sent = False
    while th.is_alive():
        th.join(poll_seconds)
        if stop is not None and stop.is_set() and not stop_sent:
            sink.request_stop.remote()
            stop_sent = True
        events += _fed(follower, sink, gate_epochs, stop)
    events += _fed(follower, sink, gate_epochs, stop)
    train_seconds = time.perf_counter() - t1
    error = outcome.get("error") or getattr(outcome.get("result"), "error", None)
    done = [e for e in events if e["type"] == "done"]
    if error is not None or not done:
        if metrics is not None:
            metrics.runs.labels(status="failed").inc()
        if tracker is not None:
            tracker.finish("FAILED")
        if isinstance(error, TrainerError):
            raise error
        cause = _root_cause(error)
        if isinstance(cause, TrainerError):
            raise cause
        raise TrainingFailedError(
            f"job {job.name!r} failed (max_failures={job.failure.max_failures}): {cause}. Its last "
            "committed checkpoint is kept: re-running the job resumes from it"
        ) from None
    status, step = done[-1]["status"], int(done[-1]["step"])
    latest = store.latest()
    if latest is None or latest.step != step:
        raise TrainingFailedError(
            f"job {job.name!r} ended at step {step} without a committed checkpoint"
        )
    starts = [e for e in events if e["type"] == "start"]
    history = json.loads(latest.read(ck.STATE_JSON))["loop"]["history"]
    result = TrainResult(
        job_name=job.name,
        status=status,
        step=step,
        epochs_done=int(done[-1]["epoch"]),
        checkpoint=latest.path,
        history=history,
        restarts=max(0, len(starts) - 1),
        resumed_from=starts[0].get("resumed_from") if starts else None,
        data_fingerprint=fp,
        mlflow_run_id=tracker.run_id if tracker else None,
        ray_start_seconds=ray_start,
        train_seconds=train_seconds,
        events=events,
    )
    if metrics is not None:
        metrics.runs.labels(status=status).inc()
    if status == "stopped" or not export:
        if tracker is not None:
            tracker.finish("KILLED" if status == "stopped" else "FINISHED")
        return result
    digest, path = export_committed(
        job,
        latest,
        history,
        home=home,
        registry=registry,
        info=info,
        commit=commit,
        dirty=dirty,
        lock_hash_=lhash,
        signing_key=signing_key,
        n_out=n_out,
        fp=fp,
    )
    if tracker is not None:
        tracker.tags({"keel.artifact_digest": digest, "keel.artifact_path": str(path)})
        tracker.finish("FINISHED")
    return TrainResult(**{**result.__dict__, "artifact_digest": digest, "artifact_path": path})


def export_committed(
    job: TrainJob,
    checkpoint: ck.Committed,
    history: list[dict[str, float]],
    *,
    home: Path,
    registry: ModelRegistry,
    info: Any,
    commit: str,
    dirty: bool,
    lock_file: Path | None = None,
    lock_hash_: str | None = None,
    signing_key: Any = None,
    n_out: int | None = None,
    fp: str | None = None,
) -> tuple[str, Path]:
    """Export a committed checkpoint of ``job`` as the signed artifact (no Ray needed): the
    end of ``run_job``, and what a search does with its best trial."""
    from keel.trainer._export import export_artifact

    if n_out is None:
        n_out = _probe_outputs(
            registry.build(job.model.builder, job.model.args), len(job.data.features)
        )
    final = history[-1] if history else {}
    return export_artifact(
        job,
        final_weights(checkpoint.path),
        home=home,
        info=info,
        n_out=n_out,
        fingerprint=fp or _data.fingerprint(job.data.path),
        commit=commit,
        dirty=dirty,
        lock_hash=lock_hash_ if lock_hash_ is not None else lock_hash(lock_file=lock_file),
        metrics={k: v for k, v in final.items() if k != "epoch"},
        step=checkpoint.step,
        signing_key=signing_key,
    )


class _Follower:
    """Turns worker events into metrics, tracking and the caller's callback."""

    def __init__(
        self, tracker: Any, metrics: Any, on_event: Callable[[Event], None] | None
    ) -> None:
        self.tracker, self.metrics, self.on_event = tracker, metrics, on_event
        self.starts = 0
        self.last_step = 0

    def feed(self, events: list[Event]) -> list[Event]:
        for e in events:
            kind = e["type"]
            m = self.metrics
            if kind == "start":
                self.starts += 1
                if self.starts > 1 and m is not None:
                    m.restarts.inc()
            elif kind == "progress" and m is not None:
                m.samples_per_second.set(e["samples_per_s"])
                m.step_seconds.observe(e["step_s"])
                m.steps.inc(max(0, e["step"] - self.last_step))
                self.last_step = e["step"]
            elif kind == "checkpoint" and m is not None:
                m.checkpoint_seconds.observe(e["seconds"])
            elif kind == "epoch" and self.tracker is not None:
                self.tracker.metrics(e["metrics"], step=int(e["epoch"]))
            if kind == "start":
                self.last_step = e.get("resumed_from") or 0
            if self.on_event is not None:
                self.on_event(e)
        return events


def _fed(
    follower: _Follower, sink: Any, gate_epochs: bool, stop: threading.Event | None
) -> list[Event]:
    """Drain the sink into the follower; with the epoch gate, open it for each epoch whose
    event the follower (and the caller's ``on_event``) has handled — after a stop request
    if one came meanwhile (actor calls run in order), so the workers stop at the gate."""
    new = follower.feed(_drain(sink))
    if gate_epochs:
        for e in new:
            if e["type"] == "epoch":
                if stop is not None and stop.is_set():
                    sink.request_stop.remote()
                sink.allow.remote(int(e["epoch"]))
    return new


def _drain(sink: Any) -> list[Event]:
    import ray

    try:
        return list(ray.get(sink.drain.remote(), timeout=30))
    except Exception:  # the sink is restarting: the next poll drains what is there
        return []


def _root_cause(error: BaseException | None) -> BaseException | None:
    seen = error
    for _ in range(10):
        nxt = getattr(seen, "cause", None) or getattr(seen, "__cause__", None)
        if nxt is None:
            # Ray wraps worker exceptions; the user-level one is in `.worker_failures`
            failures = getattr(seen, "worker_failures", None)
            if isinstance(failures, Mapping) and failures:
                nxt = next(iter(failures.values()))
            else:
                break
        seen = nxt
    return seen


def _check_resumable(store: ck.CheckpointStore, job: TrainJob, world: int) -> None:
    """Refuse before any worker starts if the job name holds another job's checkpoints."""
    from keel.trainer._errors import ResumeConflictError

    latest = store.latest()
    if latest is None:
        return
    if latest.commit.get("job_digest") != job.digest():
        raise ResumeConflictError(
            f"job name {job.name!r} already has checkpoints from a different job spec "
            f"({latest.path}): use a new job name, or fresh=True (keel train --fresh) to discard them"
        )
    if latest.commit.get("world_size") != world:
        raise ResumeConflictError(
            f"job {job.name!r} was checkpointed with {latest.commit.get('world_size')} workers and "
            f"would now run with {world}: the data shards differ. Use the same num_workers, or fresh=True"
        )


def _probe_outputs(model: Any, n_in: int) -> int:
    import torch

    try:
        with torch.no_grad():
            out = model(torch.zeros(2, n_in))
    except (RuntimeError, ValueError, TypeError) as e:
        raise InvalidJobError(
            f"model {type(model).__name__} does not accept {n_in} input features "
            f"(data.features): {e}"
        ) from None
    return int(out.shape[-1]) if out.dim() > 1 else 1


def job_spec_json(job: TrainJob) -> str:
    """The job as canonical JSON (sorted keys): the ``keel.job_spec`` tag of its MLflow run,
    which ``parse_job(json.loads(...))`` turns back into the same job."""
    return json.dumps(job.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def job_params(job: TrainJob) -> dict[str, str]:
    """The MLflow params a run of ``job`` logs, as the strings MLflow stores."""
    return {k: str(v)[:6000] for k, v in _flat_params(job).items()}


def _flat_params(job: TrainJob) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict) and v:
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else k, x)
        else:
            out[prefix] = json.dumps(v) if isinstance(v, list | dict) else v

    walk("", job.model_dump(mode="json", exclude={"export", "tracking", "tune"}))
    return out
