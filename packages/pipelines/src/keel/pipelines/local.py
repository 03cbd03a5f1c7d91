"""The real executors: keel.features, keel.trainer (Ray), keel.governance, keel.drift,
keel.artifacts and keel.registry_client behind the controller's `Executors` protocol.

    from keel.pipelines import Controller
    from keel.pipelines.local import build_executors

    ex = build_executors(home=home, bus=bus, options={
        "model": "credit",
        "feature_definitions": "my_features",          # a module or a .py file (keel.features)
        "feature_views": ["card_activity"],
        "features": ["amount_log", "card_activity__count_1h", ...],
    })
    ctl = Controller(ex, clock=clock, db_path=home / "pipelines" / "pipelines.db")

What each step does (every output is plain JSON; files live under ``home/pipelines/work``,
named by content so a cache hit finds them again):

* ``source_fingerprints``: sha256 over every Parquet part file of the offline datasets the
  set is built from (the feature views' event logs, the labels dataset).
* ``build_training_set``: keel.features' point-in-time `training_set` (labels + every
  view's features as of each label's time), rows in a canonical order, written as Parquet
  with fixed options; ``fingerprint`` = sha256 of those bytes. The last
  ``holdout_fraction`` of the time range (or ``params["holdout_from"]``) is the holdout.
  ``as_of`` records what the set knew: the latest record time of the offline rows it read
  (the event logs' bus ``publish_time``; the labels' ``label_record_time`` column when
  set). Given ``params["as_of"]``, rows recorded after it are left out — `reproduce`
  rebuilds a run's set that way, so corrections appended to the log since do not leak in.
* ``train``: a keel.trainer `TrainJob` (the built-in ``mlp``, BCE with logits, seeded) on
  local Ray (or ``ray_address``), tracked in MLflow; no export (``package_sign`` builds the
  artifact). The job name is derived from the step's inputs, so a rerun resumes it.
* ``evaluate``: challenger and champion (``model@champion``, loaded from the registry and
  verified) scored on the same holdout: AUC, log loss, Brier, ECE, accuracy — overall and
  by ``group_column``.
* ``gates``: keel.pipelines' gate policies — quality vs the champion, calibration,
  fairness (when ``group_column`` is set), compatibility (the artifact's contract vs what the
  champion is served with), the training data's drift from the champion's reference profile,
  and the risk tier's approvals from keel.governance's ledger for the exact artifact digest.
* ``package_sign``: a signed keel.artifacts artifact holding the weights, the drift reference
  profile (``drift_profile.json``), the model card (``model_card.json``/``.html``) and the
  evaluation (``evaluation.json``). Builds are deterministic, so the digest the approvals
  gate judged is the digest that is registered.
* ``register_challenger``/``move_alias``/``rollback``: keel.registry_client (verified
  registration keyed by digest; audited alias moves that are no-ops when repeated), each move
  published as ``model.alias_moved`` on ``events_stream``. A rollback points ``shadow`` and
  ``canary`` back at the champion.
* ``canary_signals``: ``canary.failed`` and ``slo.reading`` events for the model on
  ``events_stream`` (serving publishes there), and the number of ``prediction.made`` events
  its canary variant logged on ``predictions_stream``.

Importing this module is light; polars, torch, Ray and MLflow load when a step runs.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.pipelines._canary import CANARY_FAILED, CanarySignal
from keel.pipelines._canonical import canonical, sha256_hex
from keel.pipelines._controller import Executors, StepContext
from keel.pipelines._errors import InvalidInputError, PipelinesError
from keel.pipelines._events import SLO_READING, signal_from_event
from keel.pipelines._gates import (
    ApprovalGate,
    CalibrationGate,
    CompatibilityGate,
    FairnessPolicy,
    GateResult,
    GateStatus,
    Holdout,
    QualityGate,
    TrainingDataGate,
)

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from keel.events import Bus
    from keel.features import FeatureView
    from keel.registry_client import Registry

__all__ = [
    "ENGINES",
    "SMALL_LOOP_TRAINER",
    "GateOptions",
    "LocalExecutors",
    "LocalOptions",
    "TimedExecutors",
    "TrainerOptions",
    "build_executors",
    "small_loop_options",
    "start_ray",
]

PROFILE_FILE = "drift_profile.json"
CARD_FILE = "model_card.json"
CARD_HTML = "model_card.html"
EVALUATION_FILE = "evaluation.json"
ENGINES = ("local", "ray")
_PARQUET = {
    "compression": "zstd",
    "compression_level": 3,
    "statistics": True,
    "row_group_size": 65_536,
}


# -- options ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainerOptions:
    """``options["trainer"]``: the keel.trainer job every run trains (small by default)."""

    hidden: tuple[int, ...] = (32, 16)
    epochs: int = 2
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    num_workers: int = 1
    checkpoint_every_steps: int = 200
    validation_fraction: float = 0.1
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    tracking: bool = True


@dataclass(frozen=True)
class GateOptions:
    """``options["gates"]``: thresholds of the gate policies."""

    metric: str = "auc"
    threshold: float | None = 0.6
    min_abs_improvement: float = 0.0
    min_rel_improvement: float = 0.0
    max_ece: float = 0.05
    max_ece_increase: float | None = None
    max_drift_share: float = 0.5
    risk_tier: int = 3
    # keel.governance FairnessGate thresholds (its defaults)
    max_demographic_parity_difference: float = 0.1
    min_disparate_impact_ratio: float = 0.8
    max_equal_opportunity_difference: float = 0.1
    min_group_size: int = 30


@dataclass(frozen=True)
class LocalOptions:
    """The settings `build_executors` takes (plain JSON). Required: ``model``,
    ``feature_definitions``, ``feature_views``, ``features``. Paths default under ``home``."""

    model: str
    feature_definitions: str
    feature_views: tuple[str, ...]
    features: tuple[str, ...]
    labels_dataset: str = ""  # default "labels.<model>"
    # the labels dataset's record-time column, when labels are corrected after the fact: the
    # training set's as-of instant (see build_training_set) then covers labels too
    label_record_time: str | None = None
    time_column: str = "timestamp"
    label_column: str = "label"
    group_column: str | None = None
    holdout_fraction: float = 0.2
    offline_root: str | None = None  # default <home>/offline
    registry_tracking_uri: str | None = None  # default: embedded sqlite in <home>/mlflow.db
    registry_db_url: str | None = None
    events_stream: str = "models"
    predictions_stream: str = "predictions"
    signing_key: str | None = None  # default <home>/keys/pipelines.pem (created if missing)
    trusted_keys: tuple[str, ...] = ()  # default: the signing key's public key
    approvals_ledger: str | None = None  # default <home>/governance/approvals.jsonl
    trainer_identity: str = "keel-pipelines"
    owner: str = "keel"
    intended_use: str = "scores card transactions for fraud review"
    # "local": keel.features' single-process build; "ray": keel.pipelines.ray_build on the
    # trainer's Ray (partitioned by entity hash). Same bytes, same fingerprint (tested).
    training_set_engine: str = "local"
    training_set_partitions: int | None = None  # "ray": default the cluster's CPU count
    trainer: TrainerOptions = field(default_factory=TrainerOptions)
    gates: GateOptions = field(default_factory=GateOptions)

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> LocalOptions:
        """Validate ``options``; an unknown or ill-typed key is an `InvalidInputError` that
        names it and lists the valid keys."""
        if not isinstance(options, Mapping):
            raise InvalidInputError(
                f"options must be a JSON object (mapping), got {type(options).__name__}"
            )
        try:
            canonical(dict(options))
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"options must be plain JSON values: {e}") from None
        top = _build(
            cls, options, "options", nested={"trainer": TrainerOptions, "gates": GateOptions}
        )
        for key in ("model", "feature_definitions", "trainer_identity", "owner", "intended_use"):
            if not str(getattr(top, key)).strip():
                raise InvalidInputError(f"options.{key} must be a non-empty string")
        if not top.feature_views:
            raise InvalidInputError("options.feature_views: name at least one feature view")
        if not top.features:
            raise InvalidInputError(
                "options.features: list the training-set columns the model reads "
                "(view features are named <view>__<feature>)"
            )
        if not 0.0 < top.holdout_fraction < 1.0:
            raise InvalidInputError(
                f"options.holdout_fraction must be in (0, 1), got {top.holdout_fraction}"
            )
        t = top.trainer
        if t.epochs < 1 or t.batch_size < 1 or t.num_workers < 1 or not t.hidden:
            raise InvalidInputError(
                "options.trainer: epochs, batch_size and num_workers must be >= 1 and hidden non-empty"
            )
        if top.training_set_engine not in ENGINES:
            raise InvalidInputError(
                f"options.training_set_engine must be one of {list(ENGINES)}, "
                f"got {top.training_set_engine!r}"
            )
        if top.training_set_partitions is not None and top.training_set_partitions < 1:
            raise InvalidInputError(
                f"options.training_set_partitions must be >= 1, got {top.training_set_partitions}"
            )
        if top.gates.risk_tier not in (1, 2, 3):
            raise InvalidInputError(
                f"options.gates.risk_tier must be 1, 2 or 3, got {top.gates.risk_tier}"
            )
        if (top.registry_tracking_uri is None) != (top.registry_db_url is None):
            raise InvalidInputError(
                "options.registry_tracking_uri and options.registry_db_url go together "
                "(an mlflow server and its PostgreSQL database); leave both unset for the embedded registry"
            )
        return top


def _build(
    cls: Any, values: Mapping[str, Any], where: str, nested: Mapping[str, Any] | None = None
) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InvalidInputError(
            f"{where}: unknown key(s) {unknown}; valid keys are {sorted(known)} "
            "(see keel.pipelines.local's LocalOptions)"
        )
    kw: dict[str, Any] = {}
    for name, v in values.items():
        f = known[name]
        if nested and name in nested:
            if not isinstance(v, Mapping):
                raise InvalidInputError(f"{where}.{name} must be an object")
            kw[name] = _build(nested[name], v, f"{where}.{name}")
            continue
        kw[name] = _coerce(v, str(f.type), f"{where}.{name}")
    try:
        return cls(**kw)
    except TypeError as e:
        raise InvalidInputError(f"{where}: {e}") from None


def _coerce(v: Any, typ: str, where: str) -> Any:
    optional = "None" in typ
    if v is None:
        if optional:
            return None
        raise InvalidInputError(f"{where} must not be null")
    if typ.startswith("tuple[int"):
        if not isinstance(v, list | tuple) or not all(
            isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v
        ):
            raise InvalidInputError(f"{where} must be a list of positive integers, got {v!r}")
        return tuple(v)
    if typ.startswith("tuple[str"):
        if not isinstance(v, list | tuple) or not all(isinstance(x, str) and x for x in v):
            raise InvalidInputError(f"{where} must be a list of non-empty strings, got {v!r}")
        if len(set(v)) != len(v):
            raise InvalidInputError(f"{where} lists a name twice: {v!r}")
        return tuple(v)
    if typ.startswith("bool"):
        if not isinstance(v, bool):
            raise InvalidInputError(f"{where} must be true or false, got {v!r}")
        return v
    if typ.startswith("int"):
        if not isinstance(v, int) or isinstance(v, bool):
            raise InvalidInputError(f"{where} must be an integer, got {v!r}")
        return v
    if typ.startswith("float"):
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            raise InvalidInputError(f"{where} must be a finite number, got {v!r}")
        return float(v)
    if not isinstance(v, str):
        raise InvalidInputError(f"{where} must be a string, got {v!r}")
    return v


# -- small helpers ----------------------------------------------------------------------------
def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    import numpy as np

    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    # average ranks over ties, so the AUC does not depend on row order
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inv, ranks)
    ranks = (sums / counts)[inv]
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _metrics(y: np.ndarray, s: np.ndarray) -> dict[str, float | None]:
    import numpy as np

    from keel.pipelines._gates import expected_calibration_error

    if len(y) == 0:
        return {"rows": 0}
    p = np.clip(s, 1e-7, 1 - 1e-7)
    return {
        "rows": int(len(y)),
        "positive_rate": float(y.mean()),
        "auc": _auc(y, s),
        "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        "brier": float(np.mean((s - y) ** 2)),
        "ece": float(expected_calibration_error(y, s)),
        "accuracy": float(np.mean((s >= 0.5) == (y == 1))),
    }


def _round(d: Any) -> Any:
    """Floats rounded to 12 significant digits: outputs stay stable across BLAS orderings."""
    if isinstance(d, float):
        return float(f"{d:.12g}")
    if isinstance(d, dict):
        return {k: _round(v) for k, v in d.items()}
    if isinstance(d, list | tuple):
        return [_round(v) for v in d]
    return d


# -- the executors ----------------------------------------------------------------------------
class LocalExecutors:
    """`Executors` over Keel's real packages (see the module docstring). One per controller
    process; not thread-safe."""

    def __init__(
        self,
        *,
        home: Path,
        bus: Bus,
        options: LocalOptions,
        views: Sequence[FeatureView] | None = None,
    ) -> None:
        self.home = Path(home).expanduser().resolve()
        self.bus = bus
        self.o = options
        self.work = self.home / "pipelines" / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.labels_dataset = options.labels_dataset or f"labels.{options.model}"
        self.offline_root = Path(options.offline_root or self.home / "offline")
        self._views = list(views) if views is not None else None
        self._registry: Registry | None = None
        self._keys: tuple[Any, Any] | None = None
        #: run id -> the artifact digest its approvals gate waits for (also in the run's detail)
        self.pending_approvals: dict[str, str] = {}

    # -- wiring ----------------------------------------------------------------------------
    @property
    def views(self) -> list[FeatureView]:
        if self._views is None:
            from keel.features import FeaturesError, load_registry

            try:
                reg = load_registry(self.o.feature_definitions)
                self._views = [reg.get(n) for n in self.o.feature_views]
            except FeaturesError as e:
                raise InvalidInputError(
                    f"options.feature_definitions {self.o.feature_definitions!r} / feature_views "
                    f"{list(self.o.feature_views)}: {e}"
                ) from None
        return self._views

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from datetime import datetime as _dt

            from keel.events import Event
            from keel.registry_client import ALIAS_MOVED, AliasMoved, open_registry

            stream = self.o.events_stream

            def publish(moved: AliasMoved) -> None:
                self.bus.publish(
                    stream,
                    Event.create(
                        type=ALIAS_MOVED,
                        key=moved.model,
                        event_time=_dt.fromisoformat(moved.time),
                        payload=moved.to_json(),
                        id=moved.event_id,
                    ),
                )

            if self.o.registry_tracking_uri:
                self._registry = open_registry(
                    tracking_uri=self.o.registry_tracking_uri,
                    db_url=self.o.registry_db_url,
                    publisher=publish,
                )
            else:
                self._registry = open_registry(self.home, publisher=publish)
        return self._registry

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    def signing(self) -> tuple[Any, Any]:
        """(SigningKey, TrustPolicy). The default key is made once under ``home/keys``."""
        if self._keys is None:
            from keel.artifacts import SigningKey, TrustPolicy, generate_keypair

            if self.o.signing_key:
                pem = Path(self.o.signing_key)
                if not pem.is_file():
                    raise InvalidInputError(f"options.signing_key {pem} does not exist")
                pub_files = [Path(p) for p in self.o.trusted_keys]
            else:
                keys = self.home / "keys"
                pem, pub = keys / "pipelines.pem", keys / "pipelines.pub"
                if not pem.is_file():
                    keys.mkdir(parents=True, exist_ok=True)
                    priv_b, pub_b = generate_keypair()
                    tmp = keys / f".pipelines-{uuid.uuid4().hex}.pem"
                    tmp.write_bytes(priv_b)
                    os.chmod(tmp, 0o600)
                    pub.write_bytes(pub_b)
                    os.replace(tmp, pem)
                pub_files = [Path(p) for p in self.o.trusted_keys] or [pub]
            if not pub_files:
                raise InvalidInputError(
                    "options.trusted_keys: list the public key(s) that verify options.signing_key"
                )
            self._keys = (
                SigningKey.from_pem(pem.read_bytes()),
                TrustPolicy.from_files([str(p) for p in pub_files]),
            )
        return self._keys

    @staticmethod
    def _event_type(view: FeatureView) -> str:
        etype = getattr(view.source, "event_type", None)
        if not etype:
            raise InvalidInputError(
                f"feature view {view.name!r} reads a table, not events: the pipelines build "
                "training sets from views over keel.events event logs"
            )
        return str(etype)

    def _offline(self) -> Any:
        from keel.features import OfflineStore

        return OfflineStore(self.offline_root)

    def _datasets(self) -> list[str]:
        from keel.features import event_log_dataset

        names = []
        for v in self.views:
            names.append(event_log_dataset(self._event_type(v)))
        return [*sorted(set(names)), self.labels_dataset]

    # -- what each cached step depends on besides its inputs (the controller keys on it) ------
    def step_settings(self, step: str) -> Mapping[str, Any] | None:
        """The options a cached step's result depends on — not where it runs (Ray address,
        CPUs, tracking, the training-set engine: same bytes either way). Changed settings
        are a cache miss from that step down, never a stale hit."""
        o = self.o
        if step == "build_training_set":
            return {
                "feature_definitions": o.feature_definitions,
                "feature_views": {v.name: v.version for v in self.views},
                "features": list(o.features),
                "labels_dataset": self.labels_dataset,
                "columns": [o.time_column, o.label_column, o.group_column],
                "holdout_fraction": o.holdout_fraction,
                # only when set: the cache keys of option sets without it stay as they were
                **({"label_record_time": o.label_record_time} if o.label_record_time else {}),
            }
        if step == "train":
            t = o.trainer
            return {
                "model": o.model,
                "trainer": {
                    k: getattr(t, k)
                    for k in (
                        "hidden",
                        "epochs",
                        "batch_size",
                        "lr",
                        "weight_decay",
                        "seed",
                        "num_workers",
                        "checkpoint_every_steps",
                        "validation_fraction",
                    )
                },
            }
        if step == "evaluate":
            return {"group_column": o.group_column, "features": list(o.features)}
        if step == "package_sign":
            return {
                "model": o.model,
                "owner": o.owner,
                "intended_use": o.intended_use,
                "risk_tier": o.gates.risk_tier,
                "seed": o.trainer.seed,
                "signing_key": o.signing_key,
                "trusted_keys": list(o.trusted_keys),
            }
        return None

    # -- pure steps --------------------------------------------------------------------------
    def source_fingerprints(self, ctx: StepContext) -> Mapping[str, str]:
        out: dict[str, str] = {}
        for ds in self._datasets():
            base = self.offline_root / ds
            files = sorted(base.glob("date=*/*.parquet")) if base.is_dir() else []
            if not files:
                raise InvalidInputError(
                    f"offline dataset {ds!r} has no Parquet files under {base}: write the event "
                    "log (feature-worker) and the labels before training"
                )
            h = hashlib.sha256()
            for f in files:
                h.update(f"{f.relative_to(base).as_posix()}\0{_file_sha(f)}\n".encode())
            out[ds] = "sha256:" + h.hexdigest()
        return out

    @staticmethod
    def _param_time(ctx: StepContext, key: str) -> datetime | None:
        v = ctx.params.get(key)
        if v is None:
            return None
        try:
            t = datetime.fromisoformat(str(v).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInputError(f"run parameter {key}={v!r} is not an ISO-8601 time") from None
        if t.tzinfo is None:
            raise InvalidInputError(f"run parameter {key}={v!r} needs a time zone")
        return t.astimezone(UTC)

    def _time_bounds(self, ctx: StepContext) -> tuple[datetime | None, datetime | None]:
        return self._param_time(ctx, "start"), self._param_time(ctx, "end")

    def build_training_set(self, ctx: StepContext) -> Mapping[str, Any]:
        import polars as pl

        from keel.features import event_log_dataset, event_log_to_frame, training_set

        o = self.o
        store = self._offline()
        labels = store.read(self.labels_dataset).collect()
        need = [o.time_column, o.label_column, *(v for v in [o.group_column] if v)]
        need += [o.label_record_time] if o.label_record_time else []
        entity_cols = sorted({k for v in self.views for k in v.join_keys})
        missing = [c for c in [*need, *entity_cols] if c not in labels.columns]
        if missing:
            raise InvalidInputError(
                f"labels dataset {self.labels_dataset!r} lacks column(s) {missing}; it has {labels.columns}"
            )
        # record time: what the offline store knew. With params["as_of"], rows recorded
        # later are left out; the recorded as_of is the latest record time of the rows read
        # (so a rebuild given it reads exactly those rows again)
        as_of = self._param_time(ctx, "as_of")
        logs = []
        for v in self.views:  # each log read once: its record times, then the view's frame
            log = store.read(event_log_dataset(self._event_type(v)))
            if as_of is not None:
                log = log.filter(pl.col("publish_time") <= as_of)
            logs.append((v, log.collect()))
        known = [log["publish_time"].max() for _, log in logs]
        if o.label_record_time:
            rt = labels.schema[o.label_record_time]
            if not isinstance(rt, pl.Datetime) or rt.time_zone is None:
                raise InvalidInputError(
                    f"options.label_record_time {o.label_record_time!r} must be a time-zone "
                    f"aware datetime column of {self.labels_dataset!r}; it is {rt}"
                )
            if as_of is not None:
                labels = labels.filter(pl.col(o.label_record_time) <= as_of)
            known.append(labels[o.label_record_time].max())
        known_at = max((t for t in known if isinstance(t, datetime)), default=None)
        start, end = self._time_bounds(ctx)
        tcol = pl.col(o.time_column)
        if start is not None:
            labels = labels.filter(tcol >= start)
        if end is not None:
            labels = labels.filter(tcol < end)
        if labels.height < 10:
            raise InvalidInputError(
                f"only {labels.height} labelled rows in [{start}, {end}): too few to train on"
            )
        sources = [(v, event_log_to_frame(v, log).collect()) for v, log in logs]
        if o.training_set_engine == "ray":
            from keel.pipelines.ray_build import build_training_set_on_ray

            start_ray(address=o.trainer.ray_address, num_cpus=o.trainer.ray_num_cpus)
            ts = build_training_set_on_ray(
                labels,
                sources,
                time_column=o.time_column,
                partitions=o.training_set_partitions,
                ray_address=o.trainer.ray_address,
            )
        else:
            ts = training_set(labels, sources, time_column=o.time_column)
        missing = [c for c in o.features if c not in ts.columns]
        if missing:
            raise InvalidInputError(
                f"options.features {missing} are not columns of the training set; it has {ts.columns}"
            )
        cols = list(
            dict.fromkeys(
                [
                    o.time_column,
                    *entity_cols,
                    *o.features,
                    o.label_column,
                    *(c for c in [o.group_column] if c),
                ]
            )
        )
        ts = ts.select(cols).with_columns(
            [pl.col(c).cast(pl.Float64).fill_null(0.0).fill_nan(0.0) for c in o.features]
            + [pl.col(o.label_column).cast(pl.Int8)]
        )
        ts = ts.sort(cols, maintain_order=True)  # canonical row order: every column
        t_min, t_max = ts[o.time_column].min(), ts[o.time_column].max()
        holdout_from = ctx.params.get("holdout_from")
        if holdout_from is not None:
            cut = datetime.fromisoformat(str(holdout_from).replace("Z", "+00:00")).astimezone(UTC)
        else:
            assert isinstance(t_min, datetime) and isinstance(t_max, datetime)
            cut = t_max - (t_max - t_min) * o.holdout_fraction
        train = ts.filter(pl.col(o.time_column) < cut)
        holdout = ts.filter(pl.col(o.time_column) >= cut)
        if train.height < 10 or holdout.height < 10:
            raise InvalidInputError(
                f"holdout split at {cut.isoformat()} leaves {train.height} training and "
                f"{holdout.height} holdout rows; widen the data or change holdout_fraction/holdout_from"
            )
        tmp = self.work / "sets" / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        for name, frame in (("set", ts), ("train", train), ("holdout", holdout)):
            frame.write_parquet(tmp / f"{name}.parquet", **_PARQUET)  # type: ignore[arg-type]
        fp = "sha256:" + _file_sha(tmp / "set.parquet")
        final = self.work / "sets" / fp.removeprefix("sha256:")[:24]
        if final.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
        return {
            "fingerprint": fp,
            "train_fingerprint": "sha256:" + _file_sha(final / "train.parquet"),
            "holdout_fingerprint": "sha256:" + _file_sha(final / "holdout.parquet"),
            "path": str(final),
            "rows": ts.height,
            "train_rows": train.height,
            "holdout_rows": holdout.height,
            "positive_rate": float(ts[o.label_column].mean() or 0.0),  # type: ignore[arg-type]
            "holdout_from": cut.isoformat(),
            "time_range": [t_min.isoformat(), t_max.isoformat()],  # type: ignore[union-attr]
            "as_of": known_at.astimezone(UTC).isoformat() if known_at is not None else None,
            "features": list(o.features),
            "feature_views": {v.name: v.version for v in self.views},
        }

    def _job(self, ctx: StepContext) -> Any:
        from keel.trainer import parse_job

        t, o = self.o.trainer, self.o
        bts = ctx.inputs["build_training_set"]
        spec = {
            "seed": t.seed,
            "model": {
                "builder": "mlp",
                "args": {"n_in": len(o.features), "hidden": list(t.hidden), "n_out": 1},
            },
            "data": {
                "path": str(Path(bts["path"]) / "train.parquet"),
                "features": list(o.features),
                "target": o.label_column,
                "validation_fraction": t.validation_fraction,
            },
            "train": {
                "loss": "bce_with_logits",
                "metrics": ["accuracy"],
                "epochs": t.epochs,
                "batch_size": t.batch_size,
                "checkpoint_every_steps": t.checkpoint_every_steps,
                "optimizer": {"name": "adamw", "lr": t.lr, "weight_decay": t.weight_decay},
            },
            "scaling": {"num_workers": t.num_workers, "cpus_per_worker": 1},
            "tracking": {
                "enabled": t.tracking,
                "experiment": f"keel-pipelines-{o.model}",
                **({"tracking_uri": o.registry_tracking_uri} if o.registry_tracking_uri else {}),
            },
        }
        # the job name names its inputs: a rerun of this step resumes the same job
        tag = sha256_hex({"spec": spec, "set": bts["fingerprint"]})[:12]
        return parse_job({"name": f"{o.model}-{tag}", **spec}, where="(keel.pipelines)")

    def train(self, ctx: StepContext) -> Mapping[str, Any]:
        from keel.trainer import run_job

        t = self.o.trainer
        job = self._job(ctx)
        start_ray(address=t.ray_address, num_cpus=t.ray_num_cpus)
        r = run_job(
            job,
            home=self.home,
            export=False,
            ray_address=t.ray_address,
            ray_num_cpus=t.ray_num_cpus,
            tracking=t.tracking,
            code=(ctx.code_version or "unknown", False),
        )
        final = r.history[-1] if r.history else {}
        return _round(
            {
                "trainer_run": r.mlflow_run_id or f"job:{job.name}",
                "job": job.name,
                "job_digest": job.digest(),
                "checkpoint": str(r.checkpoint),
                "weights_sha256": "sha256:" + _file_sha(r.checkpoint / "state.safetensors"),
                "status": r.status,
                "step": r.step,
                "data_fingerprint": r.data_fingerprint,
                "architecture": {"builder": "mlp", "args": dict(job.model.args)},
                "validation": {k: float(v) for k, v in final.items() if k != "epoch"},
            }
        )

    # -- models ------------------------------------------------------------------------------
    def _challenger_model(self, ctx: StepContext) -> Any:
        from keel.artifacts import build_mlp
        from keel.trainer import final_weights

        tr = ctx.inputs["train"]
        model = build_mlp(**tr["architecture"]["args"], out_activation="sigmoid")
        model.load_state_dict(final_weights(Path(tr["checkpoint"])), strict=True)
        model.eval()
        return model

    def _champion(self) -> tuple[Any, Any] | None:
        """(ModelVersionInfo, LoadedArtifact) of ``model@champion``, verified; None if unset."""
        from keel.artifacts import load_artifact, read_manifest
        from keel.registry_client import NotFoundError

        try:
            info = self.registry.get_by_alias(self.o.model, "champion")
        except NotFoundError:
            return None
        dst = (
            self.work / "champions" / f"v{info.version}-{info.digest.removeprefix('sha256:')[:16]}"
        )
        # the registry's download keeps its own layout (keel/<archive>.tar): search below dst
        archive = next(iter(sorted(dst.rglob("*.tar"))), None) if dst.is_dir() else None
        if archive is None:
            tmp = dst.with_name(dst.name + f".tmp-{uuid.uuid4().hex}")
            tmp.mkdir(parents=True)
            archive = self.registry.download_archive(self.o.model, info.version, tmp)
            if dst.exists():
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, dst)
            archive = next(iter(sorted(dst.rglob("*.tar"))))
        listed = {f.path for f in read_manifest(archive)[0].files}
        return info, load_artifact(
            archive,
            self.signing()[1],
            framework="torch",
            read_files=[PROFILE_FILE] if PROFILE_FILE in listed else [],  # verified bytes
        )

    @staticmethod
    def _score(model: Any, x: np.ndarray) -> np.ndarray:
        import numpy as np
        import torch

        with torch.inference_mode():
            y = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return np.asarray(y.detach().numpy(), dtype=np.float64).reshape(-1)

    def _holdout(self, ctx: StepContext) -> pl.DataFrame:
        import polars as pl

        return pl.read_parquet(Path(ctx.inputs["build_training_set"]["path"]) / "holdout.parquet")

    def evaluate(self, ctx: StepContext) -> Mapping[str, Any]:
        """The challenger on the holdout, overall and by group. The champion is scored in
        `gates` (never cached): it changes between runs while this step's inputs do not."""
        import numpy as np
        import polars as pl

        o = self.o
        hold = self._holdout(ctx)
        y = hold[o.label_column].to_numpy().astype(np.float64)
        s = self._score(self._challenger_model(ctx), hold.select(o.features).to_numpy())
        cols: dict[str, Any] = {"label": y, "challenger": s}
        by_group: dict[str, Any] = {}
        if o.group_column:
            groups = hold[o.group_column].cast(pl.String).fill_null("(null)").to_numpy()
            cols["group"] = groups
            for g in sorted(set(groups.tolist())):
                m = groups == g
                by_group[g] = _metrics(y[m], s[m])
        path, digest = self._write_scores(pl.DataFrame(cols))
        return _round(
            {
                "holdout": ctx.inputs["build_training_set"]["holdout_fingerprint"],
                "metrics": _metrics(y, s),
                "by_group": by_group,
                "scores": str(path),
                "scores_sha256": "sha256:" + digest,
            }
        )

    def _write_scores(self, frame: pl.DataFrame) -> tuple[Path, str]:
        tmp = self.work / "eval" / f".tmp-{uuid.uuid4().hex}.parquet"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(tmp, **_PARQUET)  # type: ignore[arg-type]
        digest = _file_sha(tmp)
        path = tmp.parent / f"{digest[:24]}.parquet"
        os.replace(tmp, path)
        return path, digest

    def champion_on_holdout(self, ctx: StepContext) -> dict[str, Any] | None:
        """The champion (``model@champion``, verified) scored on this run's holdout: version,
        digest, metrics overall and by group; None before the first promotion."""
        import numpy as np
        import polars as pl

        champ = self._champion()
        if champ is None:
            return None
        info, loaded = champ
        o = self.o
        hold = self._holdout(ctx)
        names = [f.name for f in loaded.manifest.input_schema]
        missing = [c for c in names if c not in hold.columns]
        out: dict[str, Any] = {"version": info.version, "digest": info.digest}
        if missing:
            raise InvalidInputError(
                f"the champion v{info.version} reads {missing}, which this run's holdout lacks: "
                "the quality gate needs both models scored on the same holdout"
            )
        model = loaded.build_model()
        model.eval()
        y = hold[o.label_column].to_numpy().astype(np.float64)
        cs = self._score(model, hold.select(names).to_numpy())
        out["metrics"] = _metrics(y, cs)
        if o.group_column:
            groups = hold[o.group_column].cast(pl.String).fill_null("(null)").to_numpy()
            out["by_group"] = {
                g: _metrics(y[groups == g], cs[groups == g]) for g in sorted(set(groups.tolist()))
            }
        return _round(out)  # type: ignore[no-any-return]

    # -- the artifact (built before the gates judge its digest; deterministic) -----------------
    def _artifact(self, ctx: StepContext) -> Any:
        """Build (or find) the signed archive of this run's model; returns (digest, archive,
        manifest). The same inputs always give the same bytes, so the approvals gate and
        package_sign see one digest."""
        import numpy as np
        import polars as pl

        from keel.artifacts import (
            Architecture,
            ArtifactSpec,
            CodeVersion,
            FeatureViewRef,
            FieldSpec,
            build_artifact,
            read_manifest,
        )
        from keel.drift import ProfileOptions, build_profile
        from keel.governance import (
            FairnessGate,
            Level,
            RiskFactors,
            Use,
            build_card,
            fairness_report,
            render_card_html,
        )
        from keel.trainer import final_weights

        o = self.o
        bts, tr, ev = ctx.inputs["build_training_set"], ctx.inputs["train"], ctx.inputs["evaluate"]
        key = sha256_hex(
            {"set": bts["fingerprint"], "train": tr, "eval": ev["metrics"], "model": o.model}
        )[:20]
        out = self.work / "artifacts"
        archive = out / f"{o.model}-{key}.tar"
        if archive.exists():
            manifest, digest = read_manifest(archive)
            return digest, archive, manifest
        train = pl.read_parquet(Path(bts["path"]) / "train.parquet")
        profile = build_profile(
            train.select(list(o.features)),
            options=ProfileOptions(),
            rng=np.random.default_rng(o.trainer.seed),
            metadata={"model": o.model, "training_set": bts["fingerprint"]},
            created_at=bts["time_range"][1],
        )
        weights = final_weights(Path(tr["checkpoint"]))
        metrics = {
            k: float(v)
            for k, v in ev["metrics"].items()
            if isinstance(v, int | float) and math.isfinite(v)
        }
        spec = ArtifactSpec(
            name=o.model,
            architecture=Architecture(
                builder="mlp", args={**tr["architecture"]["args"], "out_activation": "sigmoid"}
            ),
            input_schema=[FieldSpec(name=f, dtype="float64") for f in o.features],
            output_schema=[FieldSpec(name="score", dtype="float32", min=0.0, max=1.0)],
            feature_views=[
                FeatureViewRef(name=n, version=v) for n, v in sorted(bts["feature_views"].items())
            ],
            training_data_fingerprint=bts["fingerprint"],
            code=CodeVersion(commit=ctx.code_version or "unknown", dirty=False),
            dependency_lock_hash=ctx.lock_hash,
            metrics=metrics,
        )
        fairness = None
        if o.group_column:
            scores = pl.read_parquet(ev["scores"])
            fairness = fairness_report(
                scores["label"].to_numpy(),
                scores["challenger"].to_numpy(),
                {o.group_column: scores["group"].to_numpy()},
            )
        tier = o.gates.risk_tier
        risk = {
            1: ("high", "high", "automated_decision"),
            2: ("medium", "medium", "decision_support"),
            3: ("low", "low", "decision_support"),
        }[tier]
        card = build_card(
            {
                "name": o.model,
                # an artifact cannot name its own digest: the card names the weights it describes
                "digest": tr["weights_sha256"],
                "data_fingerprint": bts["fingerprint"],
                "feature_views": bts["feature_views"],
                "code_version": ctx.code_version or "unknown",
                "lock_hash": ctx.lock_hash,
                "metrics": metrics,
                "training_data": {"rows": bts["train_rows"], "time_range": bts["time_range"]},
            },
            owner=o.owner,
            intended_use=o.intended_use,
            risk=RiskFactors(Level(risk[0]), Level(risk[1]), Use(risk[2])),
            generated_at=datetime.fromisoformat(bts["time_range"][1]),
            lineage={
                # content only: the artifact must be byte-identical for the same inputs in
                # any home, so the MLflow run id and the job name (random / path-derived) live
                # in the provenance record, not here
                "training_set": bts["fingerprint"],
                "weights": tr["weights_sha256"],
                "pipelines_run": "see keel provenance verify",
                "holdout": ev["holdout"],
            },
            evaluation={f"holdout_{k}": v for k, v in metrics.items() if k != "rows"},
            fairness=fairness,
            fairness_gate=FairnessGate(),
            limitations=[
                f"trained on {bts['train_rows']} labelled rows from {bts['time_range'][0]} to {bts['holdout_from']}",
                "the holdout is the most recent slice of the labelled data",
            ],
        )
        evaluation = {
            "holdout": ev["holdout"],
            "metrics": ev["metrics"],
            "by_group": ev["by_group"],
        }
        files = {
            PROFILE_FILE: profile.to_json(),
            CARD_FILE: canonical(card),
            CARD_HTML: render_card_html(card).encode(),
            EVALUATION_FILE: canonical(evaluation),
        }
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".tmp-{uuid.uuid4().hex}"
        built = build_artifact(
            tmp / "dir",
            spec,
            weights,
            files=files,
            signing_key=self.signing()[0],
            archive=tmp / "a.tar",
        )
        if not archive.exists():
            os.replace(tmp / "a.tar", archive)
        shutil.rmtree(tmp, ignore_errors=True)
        return built.digest, archive, built.manifest

    def gates(self, ctx: StepContext) -> Sequence[GateResult]:
        import numpy as np
        import polars as pl

        from keel.artifacts import Requirements
        from keel.drift import DriftPolicy, ReferenceProfile, check_drift
        from keel.governance import ApprovalLedger

        o, g = self.o, self.o.gates
        ev = ctx.inputs["evaluate"]
        scores = pl.read_parquet(ev["scores"])
        y, s = scores["label"].to_numpy(), scores["challenger"].to_numpy()
        champ_ev = self.champion_on_holdout(ctx)
        champ_metrics = None if champ_ev is None else champ_ev["metrics"]
        results: list[GateResult] = []
        q = QualityGate(
            g.metric, g.threshold, g.min_abs_improvement, g.min_rel_improvement
        ).evaluate(
            Holdout(ev["holdout"], {k: v for k, v in ev["metrics"].items() if v is not None}),
            None
            if champ_metrics is None
            else Holdout(ev["holdout"], {k: v for k, v in champ_metrics.items() if v is not None}),
        )
        champion_ref = None if champ_ev is None else {k: champ_ev[k] for k in ("version", "digest")}
        results.append(
            GateResult(q.gate, q.status, q.reasons, {**q.evidence, "champion_model": champion_ref})
        )
        results.append(
            CalibrationGate(g.max_ece, g.max_ece_increase).evaluate(
                y, s, None if champ_metrics is None else champ_metrics.get("ece")
            )
        )
        fairness_passed: bool | None = None
        if o.group_column:
            from keel.governance import FairnessGate

            fr = FairnessPolicy(
                FairnessGate(
                    g.max_demographic_parity_difference,
                    g.min_disparate_impact_ratio,
                    g.max_equal_opportunity_difference,
                    g.min_group_size,
                )
            ).evaluate(y, s, {o.group_column: scores["group"].to_numpy()})
            fairness_passed = fr.passed
            results.append(fr)
        digest, _archive, manifest = self._artifact(ctx)
        champ = self._champion()
        if champ is not None:
            served = champ[1].manifest
            req = Requirements(
                feature_views={v.name: v.version for v in served.feature_views},
                input_columns={f.name: f.dtype for f in served.input_schema},
            )
        else:
            req = Requirements(
                feature_views=dict(ctx.inputs["build_training_set"]["feature_views"]),
                input_columns={f: "float64" for f in o.features},
            )
        results.append(CompatibilityGate().evaluate(manifest, req))
        if champ is not None and PROFILE_FILE in champ[1].files:
            profile = ReferenceProfile.from_json(champ[1].files[PROFILE_FILE])
            train = pl.read_parquet(
                Path(ctx.inputs["build_training_set"]["path"]) / "train.parquet"
            )
            cols = [c for c in o.features if c in profile.columns]
            result = check_drift(
                profile, train.select(cols), rng=np.random.default_rng(o.trainer.seed)
            )
            results.append(
                TrainingDataGate(g.max_drift_share).evaluate(DriftPolicy().decide(result, []))
            )
        else:
            results.append(
                GateResult(
                    TrainingDataGate.name,
                    GateStatus.PASSED,
                    (),
                    {
                        "reference": None,
                        "note": "no champion reference profile to compare with (first model)",
                    },
                )
            )
        ledger = ApprovalLedger(self._ledger_path())
        a = ApprovalGate(g.risk_tier).evaluate(
            model=o.model,
            artifact_digest=digest,
            trainer=o.trainer_identity,
            approvals=ledger.approvals_for(o.model, digest),
            now=ctx.now,
            fairness_passed=fairness_passed,
            has_model_card=True,
        )
        if a.status is GateStatus.WAITING:  # say what to approve and how
            self.pending_approvals[ctx.run_id] = digest
            a = GateResult(
                a.gate,
                a.status,
                (
                    *a.reasons,
                    f"approve artifact {digest}: keel governance approve --model {o.model} "
                    f"--digest {digest} ...",
                ),
                a.evidence,
            )
        else:
            self.pending_approvals.pop(ctx.run_id, None)
        results.append(a)
        return results

    def _ledger_path(self) -> Path:
        return Path(self.o.approvals_ledger or self.home / "governance" / "approvals.jsonl")

    def planned_artifact(self, ctx: StepContext) -> str:
        """The digest this run's artifact has (or will have): what approvers sign off."""
        return str(self._artifact(ctx)[0])

    def package_sign(self, ctx: StepContext) -> Mapping[str, Any]:
        from keel.artifacts import verify_artifact

        digest, archive, manifest = self._artifact(ctx)
        v = verify_artifact(archive, self.signing()[1])  # what is registered verifies
        return {
            "artifact_digest": digest,
            "archive": str(archive),
            "name": manifest.name,
            "signer": v.signer,
            "files": sorted(f.path for f in manifest.files),
        }

    # -- side effects --------------------------------------------------------------------------
    def _decision(self, ctx: StepContext, what: str) -> Any:
        from keel.registry_client import Decision

        digest = str(ctx.inputs.get("package_sign", {}).get("artifact_digest", "")) or "none"
        return Decision(
            self.o.trainer_identity,
            f"keel.pipelines run {ctx.run_id}: {what} (idempotency key {ctx.idempotency_key[:16]})",
            digest,
        )

    def register_challenger(self, ctx: StepContext) -> Mapping[str, Any]:
        from keel.registry_client import NotFoundError

        ps = ctx.inputs["package_sign"]
        try:
            champ = self.registry.aliases(self.o.model).get("champion")
        except NotFoundError:  # the model's first version
            champ = None
        v = self.registry.register(
            Path(ps["archive"]),
            trust=self.signing()[1],
            parent_version=None if champ is None else int(champ),
        )
        if v.digest != ps["artifact_digest"]:
            raise PipelinesError(
                f"registered version {v.version} has digest {v.digest}, not {ps['artifact_digest']}"
            )
        entry = self.registry.promote(
            self.o.model, "challenger", v.version, self._decision(ctx, "passed its gates")
        )
        return {
            "version": str(v.version),
            "artifact_digest": v.digest,
            "parent_version": champ,
            "alias": "challenger",
            "audit_seq": entry.seq,
        }

    def move_alias(self, ctx: StepContext, alias: str, version: str) -> Mapping[str, Any]:
        decision = self._decision(ctx, f"{ctx.step}: {alias} -> v{version}")
        pack: dict[str, Any] = {}
        if alias == "champion":  # every promotion to champion carries its evidence pack
            from keel.governance import ApprovalLedger
            from keel.pipelines.evidence import promote_with_pack

            p = promote_with_pack(
                self.registry,
                self.o.model,
                int(version),
                who=decision.who,
                why=f"{decision.why}; artifact {decision.evidence_digest}",
                out_root=self.home / "evidence",
                idempotency_key=ctx.idempotency_key or ctx.run_id,
                generated_at=ctx.now,
                ledger=ApprovalLedger(self._ledger_path()),
                provenance_db=self.home / "pipelines" / "pipelines.db",
                trust=self.signing()[1],
                work_dir=self.work,
            )
            e, pack = p.entry, p.to_dict()
        else:
            e = self.registry.promote(self.o.model, alias, int(version), decision)
        return {
            "from_version": None if e.from_version is None else str(e.from_version),
            "to_version": str(e.to_version),
            "audit_seq": e.seq,
            "audit_hash": e.hash,
            "event": f"model.alias_moved:{e.hash}",
            **pack,
        }

    def rollback(self, ctx: StepContext, version: str) -> Mapping[str, Any]:
        aliases = self.registry.aliases(self.o.model)
        champion = aliases.get("champion")
        restored: dict[str, Any] = {}
        for alias in ("canary", "shadow"):
            if aliases.get(alias) == int(version) and champion is not None:
                e = self.registry.promote(
                    self.o.model,
                    alias,
                    champion,
                    self._decision(ctx, f"rollback: {alias} back to the champion"),
                )
                restored[alias] = {"to_version": str(champion), "audit_seq": e.seq}
        return {"removed_from": sorted(restored), "restored": restored, "champion": champion}

    def canary_signals(self, ctx: StepContext, version: str) -> tuple[Sequence[CanarySignal], int]:
        signals: list[CanarySignal] = []
        streams = set(self.bus.streams())
        if self.o.events_stream in streams:
            for stored in self.bus.replay(self.o.events_stream):
                ev = stored.event
                if ev.type not in (CANARY_FAILED, SLO_READING):
                    continue
                try:
                    body = ev.json()
                    if (
                        isinstance(body, Mapping)
                        and body.get("model", self.o.model) != self.o.model
                    ):
                        continue
                    signals.append(signal_from_event(ev))
                except PipelinesError:
                    continue  # a malformed signal is serving's bug; it is not this canary's verdict
        requests = 0
        if self.o.predictions_stream in streams:
            for stored in self.bus.replay(self.o.predictions_stream):
                body = stored.event.json()
                if (
                    isinstance(body, Mapping)
                    and body.get("variant") == "canary"
                    and str(body.get("version")) == str(version)
                    and body.get("model", self.o.model) == self.o.model
                ):
                    requests += 1
        return signals, requests


class TimedExecutors:
    """Any `Executors`, with the wall time of every call the controller makes on them, per
    method: what the steps themselves cost, so a run's wall time less their sum is the
    controller's own (tools/bench:pipelines) and a demo can say where its time went. Every
    other attribute is the inner executors' (``pending_approvals``, ``registry``...)."""

    CALLS = frozenset(
        {
            "source_fingerprints",
            "step_settings",
            "build_training_set",
            "train",
            "evaluate",
            "gates",
            "package_sign",
            "register_challenger",
            "move_alias",
            "canary_signals",
            "rollback",
        }
    )

    def __init__(self, inner: Any, clock: Callable[[], float] = time.perf_counter) -> None:
        self.inner = inner
        self.clock = clock
        self.spent: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in self.CALLS or not callable(attr):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = self.clock()
            try:
                return attr(*args, **kwargs)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + self.clock() - t0

        return timed

    def take(self) -> dict[str, float]:
        """Seconds per method since the last `take`; then counts afresh."""
        out = dict(self.spent)
        self.spent.clear()
        return out


def start_ray(
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    object_store_bytes: int | None = None,
    tmp_dir: str | None = None,
    attempts: int = 4,
) -> Any:
    """keel.trainer's `ensure_ray` (which retries a local start that misses Ray's own
    registration wait on a loaded machine), its failure as a `PipelinesError`."""
    from keel.trainer import ClusterUnavailableError, ensure_ray

    try:
        return ensure_ray(
            address=address,
            num_cpus=num_cpus,
            object_store_bytes=object_store_bytes,
            tmp_dir=tmp_dir,
            attempts=attempts,
        )
    except ClusterUnavailableError as e:
        raise PipelinesError(str(e)) from None


#: The trainer of a small loop on one machine (`keel demo`, the tests): a one-hidden-layer
#: MLP (16 units), 4 epochs of batches of 128, AdamW at lr 0.01, one Ray Train worker on a
#: 2-CPU local Ray, a checkpoint every 500 steps. Seconds of training on a laptop: most of a
#: run is Ray's worker-group start-up.
SMALL_LOOP_TRAINER: Mapping[str, Any] = {
    "hidden": [16],
    "epochs": 4,
    "batch_size": 128,
    "lr": 0.01,
    "num_workers": 1,
    "checkpoint_every_steps": 500,
    "ray_num_cpus": 2,
}


def small_loop_options(
    *,
    model: str,
    feature_definitions: str,
    feature_views: Sequence[str],
    features: Sequence[str],
    trainer: Mapping[str, Any] | None = None,
    gates: Mapping[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Plain-JSON options for a small loop on one machine: the four required keys, the
    `SMALL_LOOP_TRAINER` defaults with ``trainer`` laid over them, ``gates`` over
    `GateOptions`' defaults, and any other `LocalOptions` key as given (``group_column``,
    streams, ``training_set_engine``...). `build_executors` validates the result."""
    out: dict[str, Any] = {
        "model": model,
        "feature_definitions": feature_definitions,
        "feature_views": list(feature_views),
        "features": list(features),
        **settings,
        "trainer": {**SMALL_LOOP_TRAINER, **(trainer or {})},
    }
    if gates:
        out["gates"] = dict(gates)
    return out


def build_executors(*, home: Path, bus: Bus, options: Mapping[str, Any]) -> Executors:
    """The real executors for one model, from plain JSON ``options`` (see `LocalOptions`:
    ``model``, ``feature_definitions``, ``feature_views``, ``features`` are required; an
    unknown key is an `InvalidInputError` naming it). ``bus``: where alias moves are
    published and canary signals / the prediction log are read."""
    return LocalExecutors(home=home, bus=bus, options=LocalOptions.parse(options))


def detect_versions() -> tuple[str, str]:
    """(code version, dependency lock hash) of the running process, for a controller whose
    settings leave them empty: ``KEEL_CODE_VERSION`` or the git checkout (``+dirty`` when
    it has uncommitted changes), and the lockfile's hash or, outside a checkout, the installed
    distributions' (keel.trainer's rules). Both go into every step's cache key and into the
    artifact, and the registry refuses an artifact without a lock hash."""
    from keel.trainer import code_version, lock_hash

    commit, dirty = code_version()
    return commit + ("+dirty" if dirty else ""), lock_hash()
