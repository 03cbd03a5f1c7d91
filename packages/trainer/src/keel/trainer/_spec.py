"""The training job spec: validated values with one TOML loader.

A ``TrainJob`` is everything a run needs and nothing more; unknown keys are refused
(``extra="forbid"``) and a removed key fails with what replaced it. Loading never imports
torch or Ray.

    name = "fraud-mlp"          # the job name: checkpoints and resume are keyed on it
    seed = 7

    [model]
    builder = "mlp"             # a registered builder (keel.trainer.ModelRegistry)
    args = { n_in = 3, hidden = [64, 64], n_out = 1 }

    [data]
    path = "train.parquet"
    features = ["amount", "age", "n_tx"]
    target = "label"
    validation_fraction = 0.1

    [train]
    loss = "bce_with_logits"
    metrics = ["accuracy"]
    epochs = 5
    batch_size = 256            # global; split evenly across workers
    checkpoint_every_steps = 100
    optimizer = { name = "adamw", lr = 1e-3 }
    schedule = { name = "cosine", warmup_steps = 50 }
    early_stopping = { metric = "val_loss", patience = 2 }

    [scaling]
    num_workers = 2             # or "auto"
    cpus_per_worker = 1

    [failure]
    max_failures = 2
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from keel.trainer._errors import InvalidJobError

# Keys that used to exist, with what replaced them (a removed option says what to write).
_REMOVED: dict[str, str] = {
    "train.checkpoint_interval": "train.checkpoint_every_steps",
    "scaling.gpus": "scaling.use_gpu and scaling.gpus_per_worker",
}

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Spec):
    """A registered builder name plus JSON arguments: the artifact rebuilds the model from
    these, so no training code is stored with it."""

    builder: str = Field(min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("args")
    @classmethod
    def _json_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"must be plain JSON values (numbers, strings, lists, tables): {e}"
            ) from None
        return v


class DataSpec(_Spec):
    """The Parquet training set and which columns feed the model."""

    path: Path
    features: list[str] = Field(min_length=1)
    target: str = Field(min_length=1)
    validation_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _columns(self) -> DataSpec:
        if len(set(self.features)) != len(self.features):
            dup = sorted({f for f in self.features if self.features.count(f) > 1})
            raise ValueError(f"features lists {dup} more than once")
        if self.target in self.features:
            raise ValueError(f"target {self.target!r} is also a feature; remove it from features")
        return self


class OptimizerSpec(_Spec):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleSpec(_Spec):
    """Learning-rate schedule, a pure function of the global step (so resuming is exact)."""

    name: Literal["constant", "cosine", "step", "linear"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    step_size: int = Field(default=1000, gt=0, description="steps between decays (step)")
    gamma: float = Field(default=0.1, gt=0.0, le=1.0, description="decay factor (step)")
    min_lr_ratio: float = Field(default=0.0, ge=0.0, le=1.0, description="floor (cosine, linear)")


class EarlyStoppingSpec(_Spec):
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(default=3, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(default=0.0, ge=0.0)


class TrainSpec(_Spec):
    loss: str = "mse"
    metrics: list[str] = Field(default_factory=list)
    epochs: int = Field(default=1, ge=1, le=100_000)
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many steps")
    batch_size: int = Field(default=256, ge=1)
    checkpoint_every_steps: int = Field(default=100, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    early_stopping: EarlyStoppingSpec | None = None
    grad_clip_norm: float | None = Field(default=None, gt=0.0)
    amp_bf16: bool = Field(default=False, description="bf16 autocast (GPU only)")


class ScalingSpec(_Spec):
    """How many Ray Train workers and what each gets. ``num_workers = "auto"`` takes the
    cluster's free GPUs (use_gpu) or CPUs // cpus_per_worker at start."""

    num_workers: int | Literal["auto"] = 1
    use_gpu: bool = False
    cpus_per_worker: int = Field(default=1, ge=1)
    gpus_per_worker: float = Field(default=0.0, ge=0.0)

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 4096:
            raise ValueError('must be between 1 and 4096, or "auto"')
        return v

    @model_validator(mode="after")
    def _gpu(self) -> ScalingSpec:
        if self.gpus_per_worker and not self.use_gpu:
            raise ValueError("gpus_per_worker > 0 needs use_gpu = true")
        return self


class FailureSpec(_Spec):
    max_failures: int = Field(default=0, ge=-1, description="worker-group restarts; -1: unlimited")


class ExportSpec(_Spec):
    """Where the signed artifact goes (defaults under KEEL_HOME) and how it is signed."""

    name: str | None = None
    out_dir: Path | None = None
    signing_key: Path | None = Field(
        default=None, description="PEM private key (or KEEL_SIGNING_KEY)"
    )


class TrackingSpec(_Spec):
    tracking_uri: str | None = Field(default=None, description="default: sqlite in KEEL_HOME")
    experiment: str = "keel-trainer"
    enabled: bool = True


class Distribution(_Spec):
    """One search-space entry: exactly one of ``choice``, ``grid`` (every value, crossed with
    the other grids), ``uniform``, ``loguniform`` (``[low, high]``) or ``randint``
    (``[low, high)``)."""

    choice: list[Any] | None = Field(default=None, min_length=1)
    grid: list[Any] | None = Field(default=None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one(self) -> Distribution:
        given = [
            k
            for k in ("choice", "grid", "uniform", "loguniform", "randint")
            if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of choice, grid, uniform, loguniform, randint"
                + (f" (got {given})" if given else "")
            )
        for k in ("uniform", "loguniform", "randint"):
            lo_hi = getattr(self, k)
            if lo_hi is not None:
                lo, hi = lo_hi
                if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                    raise ValueError(
                        f"{k} = [low, high] needs finite low < high, got {list(lo_hi)}"
                    )
                if k == "loguniform" and lo <= 0:
                    raise ValueError(f"loguniform needs low > 0, got {lo}")
        for k in ("choice", "grid"):
            values = getattr(self, k)
            if values is not None:
                try:
                    json.dumps(values, allow_nan=False)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{k} values must be plain JSON values: {e}") from None
        return self


class AshaSpec(_Spec):
    """ASHA (asynchronous successive halving): a trial is stopped at a rung (grace_period,
    grace_period * reduction_factor, ... epochs) when its metric is worse than the
    (1 - 1/reduction_factor) quantile of the trials that reached that rung before it."""

    grace_period: int = Field(default=1, ge=1, description="epochs before a trial can be stopped")
    reduction_factor: float = Field(default=2.0, gt=1.0)


# Search-space paths a trial may change: the model's args and training settings. The seed is
# derived (not searched) and epochs are ASHA's budget.
_TUNABLE_PREFIXES = ("model.args.", "train.")
_UNTUNABLE = {"train.epochs": "it is ASHA's time budget (max_t); set train.epochs"}


class TuneSpec(_Spec):
    """A Ray Tune search over ``space`` with ASHA; see keel.trainer's README ("Tuning")."""

    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    num_samples: int = Field(
        default=1, ge=1, le=1000, description="samples (x every grid combination)"
    )
    max_concurrent_trials: int = Field(
        default=1, ge=1, description="above 1, which trials ASHA stops may vary run to run"
    )
    space: dict[str, Distribution] = Field(min_length=1)
    asha: AshaSpec = Field(default_factory=AshaSpec)

    @field_validator("space")
    @classmethod
    def _paths(cls, v: dict[str, Distribution]) -> dict[str, Distribution]:
        for path in v:
            if path in _UNTUNABLE:
                raise ValueError(f"{path!r} cannot be searched: {_UNTUNABLE[path]}")
            if not path.startswith(_TUNABLE_PREFIXES) or path.endswith(".") or ".." in path:
                raise ValueError(
                    f"{path!r} is not a tunable path: use 'model.args.<name>' or 'train.<key>' "
                    "(e.g. 'train.optimizer.lr'); the trial seed is derived, not searched"
                )
        return v


class TrainJob(_Spec):
    """A whole training job. ``digest`` names the training-relevant part: a checkpoint from a
    job with another digest is never resumed."""

    name: str = Field(min_length=1, max_length=128)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    model: ModelSpec
    data: DataSpec
    train: TrainSpec = Field(default_factory=TrainSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    failure: FailureSpec = Field(default_factory=FailureSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    tune: TuneSpec | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        bad = sorted(set(v) - _NAME_CHARS)
        if bad or v.startswith("."):
            raise ValueError(
                f"job names use letters, digits, '-', '_' and '.' (not first); got {bad or v!r}"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainJob:
        if (
            isinstance(self.scaling.num_workers, int)
            and self.train.batch_size % self.scaling.num_workers
        ):
            raise ValueError(
                f"train.batch_size {self.train.batch_size} is the global batch: it must divide "
                f"evenly across scaling.num_workers {self.scaling.num_workers}"
            )
        return self

    def digest(self) -> str:
        """SHA-256 of what decides the trained weights (model, data, train, seed): export,
        tracking and failure settings may change between a run and its resume."""
        relevant = self.model_dump(mode="json", include={"seed", "model", "data", "train"})
        blob = json.dumps(relevant, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()

    def with_workers(self, n: int) -> TrainJob:
        return self.model_copy(
            update={"scaling": self.scaling.model_copy(update={"num_workers": n})}
        )


def _format_errors(e: ValidationError, where: str) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + (f" (replaced by {_REMOVED[loc]})" if loc in _REMOVED else "")
        parts.append(f"{loc}: {msg}")
    return f"invalid training job {where}: " + "; ".join(parts)


def parse_job(
    values: Mapping[str, Any], *, base_dir: Path | None = None, where: str = ""
) -> TrainJob:
    """Validate a mapping (e.g. parsed TOML) into a ``TrainJob``; a relative ``data.path``
    (and export paths) resolve against ``base_dir``."""
    try:
        job = TrainJob.model_validate(dict(values))
    except ValidationError as e:
        raise InvalidJobError(_format_errors(e, where or "(values)")) from None
    if base_dir is not None:
        job = _resolve_paths(job, base_dir)
    if not math.isfinite(job.train.optimizer.lr):
        raise InvalidJobError("train.optimizer.lr must be finite")
    if job.tune is not None:
        from keel.trainer._tune import plan_trials

        plan_trials(job)  # every trial must be a valid job: fail now, naming the trial
    return job


def _resolve_paths(job: TrainJob, base: Path) -> TrainJob:
    def r(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else (base / p)

    data = job.data.model_copy(update={"path": r(job.data.path) or job.data.path})
    export = job.export.model_copy(
        update={
            "out_dir": r(job.export.out_dir) or job.export.out_dir,
            "signing_key": r(job.export.signing_key) or job.export.signing_key,
        }
    )
    return job.model_copy(update={"data": data, "export": export})


def load_job(path: str | Path) -> TrainJob:
    """Read and validate a job TOML file; relative paths in it are relative to the file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise InvalidJobError(f"cannot read job file {p}: {e.strerror or e}") from None
    try:
        values = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InvalidJobError(f"job file {p} is not valid TOML: {e}") from None
    return parse_job(values, base_dir=p.resolve().parent, where=str(p))
