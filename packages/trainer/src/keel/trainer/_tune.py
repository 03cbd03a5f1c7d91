"""Ray Tune over a job's ``[tune]`` search space with ASHA; each trial is a Keel trainer run.

The trials are planned here, before Ray starts, by pure functions of the job:

- ``plan_trials(job)``: ``num_samples`` x every ``grid`` combination, in that order (trial
  ``i`` is ``trial-%03d``); the other distributions are drawn from a ``random.Random`` seeded
  by SHA-256 of ``("keel.tune", job.seed)``, so the same job file always gives the same
  trials with the same values.
- ``trial_seed(job_seed, params)``: SHA-256 of the canonical JSON of ``{"seed", "params"}``,
  first 8 hex digits, mod 2**31. A trial's training is therefore as reproducible as any
  Keel run (bitwise on CPU with the same worker count), and two trials with the same params
  train identically.
- ``choose_best(outcomes, metric, mode)``: among trials that trained to their end
  (``completed`` or ``early_stopped``: their last committed checkpoint holds the final
  weights, and the metric is their last epoch's), the best value by ``mode``; ties go to
  the lowest trial id. ASHA-stopped (``pruned``) and failed trials are never chosen: their
  newest committed checkpoint may predate their last reported metric.

``run_search`` runs them as Ray Tune class trials (0.01 CPU each: the trial only drives a
``TorchTrainer`` whose workers hold the CPUs; one Tune iteration per epoch). Each epoch's
validation metrics go to ASHA while the workers wait at that epoch's committed checkpoint
(``run_job(gate_epochs=True)``); when ASHA stops a trial, its ``cleanup`` stops the workers
right there and waits for the run to end (no worker group or placement group is left
holding CPUs for the next trial), and a trial's outcome is read from its newest committed
checkpoint (``trial_outcome``), never from a race with Tune. It tracks them as nested MLflow runs under one parent run, and exports the best trial's
final committed checkpoint as the signed artifact. Each trial is an ordinary job named
``<job>.trial-NNN``: its checkpoints, resume and MLflow run work as for any job, so
re-running the search resumes unfinished trials from their committed checkpoints.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keel.trainer._errors import InvalidJobError, TrainingFailedError
from keel.trainer._spec import Distribution, TrainJob, TuneSpec

FINISHED = ("completed", "early_stopped")
# A Tune trial only drives its TorchTrainer (whose workers hold the CPUs); Tune refuses a
# trial with no resources at all, so it asks for a sliver.
TRIAL_CPUS = 0.01


@dataclass(frozen=True)
class Trial:
    """One planned trial: its id, the searched values, its derived seed and its job."""

    trial_id: str
    params: dict[str, Any]
    seed: int
    job: TrainJob


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial ended with. ``status``: completed | early_stopped | pruned (stopped by
    ASHA) | failed. ``value``: its last reported value of the search metric (None if it
    reported none)."""

    trial_id: str
    status: str
    value: float | None
    epochs: int
    params: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    error: str | None = None


def _canonical(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"), allow_nan=False)


def trial_seed(job_seed: int, params: dict[str, Any]) -> int:
    """The seed a trial trains with: a pure function of the job seed and the trial's values."""
    blob = _canonical({"seed": job_seed, "params": params}).encode()
    return int(hashlib.sha256(blob).hexdigest()[:8], 16) % (2**31)


def _sampler(job_seed: int) -> random.Random:
    digest = hashlib.sha256(_canonical(["keel.tune", job_seed]).encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


def _draw(d: Distribution, rng: random.Random) -> Any:
    if d.choice is not None:
        return d.choice[rng.randrange(len(d.choice))]
    if d.uniform is not None:
        return rng.uniform(*d.uniform)
    if d.loguniform is not None:
        lo, hi = d.loguniform
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if d.randint is not None:
        return rng.randrange(d.randint[0], d.randint[1])
    raise AssertionError("a grid is not drawn")  # pragma: no cover - validated


def sample_params(spec: TuneSpec, job_seed: int) -> list[dict[str, Any]]:
    """Every trial's values, in trial order (pure: see the module docstring)."""
    rng = _sampler(job_seed)
    keys = sorted(spec.space)
    grid_keys = [k for k in keys if spec.space[k].grid is not None]
    combos = list(itertools.product(*(spec.space[k].grid or [] for k in grid_keys)))
    out = []
    for _ in range(spec.num_samples):
        for combo in combos:
            params = dict(zip(grid_keys, combo, strict=True))
            for k in keys:
                if k not in params:
                    params[k] = _draw(spec.space[k], rng)
            out.append(params)
    return out


def _apply(values: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = values
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise InvalidJobError(f"tune.space path {path!r}: {p!r} is not a table")
        node = nxt
    node[parts[-1]] = value


def plan_trials(job: TrainJob) -> list[Trial]:
    """The trials of ``job``'s search, each a validated ``TrainJob`` (an invalid trial fails
    here, naming the trial, its values and the problem)."""
    from keel.trainer._spec import parse_job

    spec = job.tune
    if spec is None:
        raise InvalidJobError(f"job {job.name!r} has no [tune] section")
    trials = []
    base = job.model_dump(mode="json", exclude={"tune"})
    for i, params in enumerate(sample_params(spec, job.seed)):
        tid = f"trial-{i:03d}"
        values = json.loads(json.dumps(base))
        for path, value in params.items():
            _apply(values, path, value)
        seed = trial_seed(job.seed, params)
        values["seed"] = seed
        values["name"] = f"{job.name}.{tid}"
        try:
            tjob = parse_job(
                values, where=f"(tune {tid} of {job.name!r}, values {_canonical(params)})"
            )
        except InvalidJobError as e:
            raise InvalidJobError(f"{e}. Narrow tune.space so every trial is a valid job") from None
        trials.append(Trial(tid, params, seed, tjob))
    _check_metric(job, spec)
    return trials


def _check_metric(job: TrainJob, spec: TuneSpec) -> None:
    known = {"val_loss", "train_loss", *(f"val_{m}" for m in job.train.metrics)}
    if spec.metric not in known:
        raise InvalidJobError(
            f"tune.metric {spec.metric!r} is not reported by this job; pick one of {sorted(known)} "
            "(validation metrics come from train.metrics)"
        )
    if spec.asha.grace_period > job.train.epochs:
        raise InvalidJobError(
            f"tune.asha.grace_period {spec.asha.grace_period} exceeds train.epochs "
            f"{job.train.epochs}: ASHA could never stop a trial"
        )


def choose_best(outcomes: Sequence[TrialOutcome], metric: str, mode: str) -> TrialOutcome:
    """The best finished trial (pure; the rule is in the module docstring)."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    eligible = [
        o
        for o in outcomes
        if o.status in FINISHED and o.value is not None and not math.isnan(o.value)
    ]
    if not eligible:
        seen = ", ".join(f"{o.trial_id}: {o.status}" for o in outcomes) or "no trials"
        raise TrainingFailedError(
            f"no trial finished with a value of {metric!r} ({seen}); nothing to export"
        )
    sign = 1.0 if mode == "min" else -1.0
    return min(eligible, key=lambda o: (sign * float(o.value or 0.0), o.trial_id))


@dataclass(frozen=True)
class SearchResult:
    """A finished search: every trial's outcome, the chosen one and its export."""

    job_name: str
    metric: str
    mode: str
    trials: list[TrialOutcome]
    best: TrialOutcome
    best_checkpoint: Path
    mlflow_run_id: str | None = None
    artifact_digest: str | None = None
    artifact_path: Path | None = None


def _trial_class(
    trials: dict[str, Trial],
    home: str,
    registry: Any,
    tracking: bool,
    parent_run_id: str | None,
    code: tuple[str, bool],
    lock_file: str | None,
) -> type:
    """The Tune trial class: one ``run_job`` with the epoch gate, in a thread.

    ``step()`` returns the next epoch's metrics (one Tune iteration per epoch). Meanwhile the
    workers wait at that epoch's committed checkpoint: the gate opens only when Tune calls
    ``step()`` again (go on) or ``cleanup()`` (ASHA stopped the trial, or it is over), which
    asks the workers to stop right there and waits for ``run_job`` to return — so a stopped
    trial ends exactly at a committed epoch boundary and leaves no worker group behind."""
    import queue
    import threading

    from ray import tune

    class KeelTrial(tune.Trainable):  # type: ignore[misc]  # Ray ships no type stubs
        def setup(self, config: dict[str, Any]) -> None:
            from keel.trainer._run import run_job

            self.trial = trials[config["trial"]]
            self.inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
            self.ack = threading.Event()
            self.stop_flag = threading.Event()
            self.waiting = False

            def on_event(e: dict[str, Any]) -> None:
                if e["type"] != "epoch" or self.stop_flag.is_set():
                    return
                self.ack.clear()
                if self.stop_flag.is_set():  # cleanup() ran between the check and clear()
                    return
                self.inbox.put(("epoch", {**e["metrics"], "epoch": int(e["epoch"]) + 1}))
                self.ack.wait()  # until Tune's next step() (go on) or cleanup() (stop)

            def run() -> None:
                try:
                    r = run_job(
                        self.trial.job,
                        home=home,
                        registry=registry,
                        export=False,
                        tracking=tracking,
                        parent_run_id=parent_run_id,
                        on_event=on_event,
                        stop=self.stop_flag,
                        gate_epochs=True,
                        code=code,
                        lock_file=Path(lock_file) if lock_file else None,
                    )
                    self.inbox.put(("done", r.status))
                except BaseException as e:  # re-raised by step() on Tune's thread
                    self.inbox.put(("error", e))

            self.thread = threading.Thread(
                target=run, name=f"keel-{self.trial.trial_id}", daemon=True
            )
            self.thread.start()

        def step(self) -> dict[str, Any]:
            self.ack.set()  # the previous epoch may go on
            kind, value = self.inbox.get()
            if kind == "error":
                raise value
            if kind == "done":
                return {"done": True}
            return dict(value)

        def save_checkpoint(self, checkpoint_dir: str) -> None:
            """Nothing for Tune to keep: the trial's state is its Keel checkpoints (a re-run of
            the search resumes each unfinished trial from them)."""
            return None

        def load_checkpoint(self, checkpoint: Any) -> None:
            return None

        def cleanup(self) -> None:
            self.stop_flag.set()
            self.ack.set()
            self.thread.join(timeout=600)

    return KeelTrial


def trial_outcome(
    trial: Trial,
    loop: dict[str, Any] | None,
    metric: str,
    error: str | None,
    mlflow_run_id: str | None,
) -> TrialOutcome:
    """A trial's outcome from its newest committed checkpoint's loop state (``None``: it
    committed none) and Tune's error, if any (pure). Finished = trained to the end of its
    epochs or ``max_steps``, or stopped early; otherwise ``failed`` with an error, else
    ``pruned`` (ASHA stopped it at an epoch's committed checkpoint)."""
    job = trial.job
    history = list((loop or {}).get("history") or [])
    value = history[-1].get(metric) if history else None
    finished = loop is not None and (
        bool(loop.get("stopped_early"))
        or int(loop.get("epoch", 0)) >= job.train.epochs
        or (
            job.train.max_steps is not None
            and int(loop.get("global_step", 0)) >= job.train.max_steps
        )
    )
    if finished:
        status = "early_stopped" if loop and loop.get("stopped_early") else "completed"
        error = None
    else:
        status = "failed" if error is not None else "pruned"
    return TrialOutcome(
        trial.trial_id,
        status,
        float(value) if value is not None else None,
        len(history),
        trial.params,
        mlflow_run_id,
        error,
    )


def run_search(
    job: TrainJob,
    *,
    home: str | Path,
    registry: Any = None,
    fresh: bool = False,
    export: bool = True,
    signing_key: Any = None,
    tracking: bool | None = None,
    ray_address: str | None = None,
    on_trial: Callable[[TrialOutcome], None] | None = None,
    code: tuple[str, bool] | None = None,
    lock_file: Path | None = None,
    clock: Callable[[], float] = time.time,
) -> SearchResult:
    """Run ``job``'s ``[tune]`` search (see the module docstring) and export the best trial.

    ``on_trial`` is called once per trial, in trial order, after the search. Arguments as
    ``run_job``'s.
    """
    import shutil

    from keel.trainer import _checkpoint as ck
    from keel.trainer import _cluster, _data
    from keel.trainer._registry import default_registry
    from keel.trainer._run import code_version, export_committed, find_lock_file, run_dir

    spec = job.tune
    if spec is None:
        raise InvalidJobError(f"job {job.name!r} has no [tune] section: use run_job")
    registry = registry if registry is not None else default_registry()
    home = Path(home).expanduser().resolve()
    trials = plan_trials(job)
    info = _data.inspect(job.data.path, job.data.features, job.data.target)
    if info.num_rows < 2:
        raise _data.DataError(f"training set {job.data.path} has {info.num_rows} rows; need more")
    for t in trials:  # every trial's model arguments, before any Ray work
        registry.build(t.job.model.builder, t.job.model.args)
    rdir = run_dir(home, job.name)
    if fresh:
        for d in [rdir, *(run_dir(home, t.job.name) for t in trials)]:
            if d.exists():
                shutil.rmtree(d)
    rdir.mkdir(parents=True, exist_ok=True)
    (rdir / "search.json").write_text(job.model_dump_json(indent=2))

    _cluster.ensure_ray(address=ray_address)
    commit, dirty = code if code is not None else code_version()
    lock = lock_file or find_lock_file()
    track = tracking if tracking is not None else job.tracking.enabled
    parent = None
    if track:
        from keel.trainer._tracking import Tracker, default_tracking_uri

        parent = Tracker(
            job.tracking.tracking_uri or default_tracking_uri(home),
            job.tracking.experiment,
            home,
            rdir / "mlflow_run_id",
            clock,
        )
        parent.params(
            {
                "tune.metric": spec.metric,
                "tune.mode": spec.mode,
                "tune.num_samples": spec.num_samples,
                "tune.trials": len(trials),
                "tune.max_concurrent_trials": spec.max_concurrent_trials,
                "tune.asha.grace_period": spec.asha.grace_period,
                "tune.asha.reduction_factor": spec.asha.reduction_factor,
                "tune.max_t": job.train.epochs,
                "seed": job.seed,
                **{
                    f"tune.space.{k}": _canonical(v.model_dump(exclude_none=True))
                    for k, v in spec.space.items()
                },
            }
        )
        parent.tags({"keel.job": job.name, "keel.tune": "search", "keel.code_version": commit})

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    by_id = {t.trial_id: t for t in trials}
    trainable = _trial_class(
        by_id,
        str(home),
        registry,
        track,
        parent.run_id if parent else None,
        (commit, dirty),
        str(lock) if lock else None,
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"CPU": TRIAL_CPUS}),
        param_space={"trial": tune.grid_search([t.trial_id for t in trials])},
        tune_config=tune.TuneConfig(
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                metric=spec.metric,
                mode=spec.mode,
                max_t=job.train.epochs,
                grace_period=spec.asha.grace_period,
                reduction_factor=spec.asha.reduction_factor,
            ),
            num_samples=1,
            max_concurrent_trials=spec.max_concurrent_trials,
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=f"{job.name}-{uuid.uuid4().hex[:8]}",
            storage_path=str(rdir / "tune"),
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=0, checkpoint_at_end=False
            ),
        ),
    )
    grid = tuner.fit()
    errors = {(grid[i].config or {}).get("trial"): grid[i].error for i in range(len(grid))}
    outcomes = []
    for t in trials:
        tdir = run_dir(home, t.job.name)
        latest = ck.CheckpointStore(tdir / "checkpoints").latest()
        loop = json.loads(latest.read(ck.STATE_JSON))["loop"] if latest is not None else None
        err = errors.get(t.trial_id)
        run_id_file = tdir / "mlflow_run_id"
        outcomes.append(
            trial_outcome(
                t,
                loop,
                spec.metric,
                f"{type(err).__name__}: {err}" if err is not None else None,
                run_id_file.read_text().strip() if track and run_id_file.exists() else None,
            )
        )
    outcomes.sort(key=lambda o: o.trial_id)
    for o in outcomes:
        if track and o.mlflow_run_id:
            _tag_trial(parent, o)
        if on_trial is not None:
            on_trial(o)
    try:
        best = choose_best(outcomes, spec.metric, spec.mode)
    except TrainingFailedError:
        if parent is not None:
            parent.finish("FAILED")
        raise
    best_job = by_id[best.trial_id].job
    latest = ck.CheckpointStore(run_dir(home, best_job.name) / "checkpoints").latest()
    if latest is None:  # pragma: no cover - a finished trial always committed its end
        raise TrainingFailedError(f"best trial {best.trial_id} has no committed checkpoint")
    result = SearchResult(
        job.name,
        spec.metric,
        spec.mode,
        outcomes,
        best,
        latest.path,
        parent.run_id if parent else None,
    )
    if parent is not None:
        parent.tags(
            {
                "keel.tune.best_trial": best.trial_id,
                "keel.tune.best_run_id": best.mlflow_run_id or "",
                "keel.tune.best_params": _canonical(best.params),
            }
        )
        parent.metrics({f"best_{spec.metric}": float(best.value or 0.0)}, step=0)
    if not export:
        if parent is not None:
            parent.finish("FINISHED")
        return result
    history = json.loads(latest.read(ck.STATE_JSON))["loop"]["history"]
    digest, path = export_committed(
        best_job,
        latest,
        history,
        home=home,
        registry=registry,
        info=info,
        commit=commit,
        dirty=dirty,
        lock_file=lock,
        signing_key=signing_key,
    )
    if parent is not None:
        tags = {"keel.artifact_digest": digest, "keel.artifact_path": str(path)}
        parent.tags(tags)
        if best.mlflow_run_id:
            parent.client.set_tag(best.mlflow_run_id, "keel.artifact_digest", digest)
        parent.finish("FINISHED")
    return SearchResult(**{**result.__dict__, "artifact_digest": digest, "artifact_path": path})


def _tag_trial(parent: Any, o: TrialOutcome) -> None:
    """Trial metadata on its nested run; a pruned trial's run (its process was stopped by
    Tune mid-epoch) is closed as KILLED."""
    rid = o.mlflow_run_id
    assert rid is not None
    for k, v in {
        "keel.tune.trial_id": o.trial_id,
        "keel.tune.status": o.status,
        "keel.tune.params": _canonical(o.params),
    }.items():
        parent._call(parent.client.set_tag, rid, k, v)
    # Tune stops a trial's process at its last report (ASHA's max_t included), before
    # run_job can close its run: the outcome closes it.
    status = {"pruned": "KILLED", "failed": "FAILED"}.get(o.status, "FINISHED")
    parent._call(parent.client.set_terminated, rid, status=status)


__all__ = [
    "SearchResult",
    "Trial",
    "TrialOutcome",
    "choose_best",
    "plan_trials",
    "run_search",
    "sample_params",
    "trial_outcome",
    "trial_seed",
]
