"""The closed loop of `keel demo`: train → sign → register → serve → drift → retrain → promote.

Everything the loop keeps lives under ``KEEL_HOME/demo/loop`` (its own KEEL_HOME: the
pipelines database and options, the embedded MLflow registry, the offline store, the
trainer's checkpoints, the approvals ledger, the signing key), emptied with
``KEEL_HOME/demo`` on every run (`keel reproduce fraud-demo@champion` finds it there); its
events go to the demo's bus (``KEEL_HOME/events.db``) on ``demo-*`` streams.
Time is simulated (`SimClock`): the controller, the approvals ledger and the registry read it,
so the loop's decisions do not depend on the wall clock.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import polars as pl

    from keel.events import Bus
    from keel.features import FeatureView
    from keel.pipelines import Controller, RunInfo
    from keel.pipelines.local import LocalExecutors

MODEL = "fraud-demo"
MODELS_STREAM = "demo-models"
PREDICTIONS_STREAM = "demo-predictions"
DRIFT_STREAM = "demo-drift"
REQUEST_FEATURES = ("amount_log", "is_online", "is_foreign", "is_night", "is_crypto")
CANARY_FRACTION = 0.2
CANARY_WINDOW = timedelta(hours=2)
AGE_BANDS = np.array(["18-29", "30-44", "45-64", "65+"])


class SimClock:
    """The demo's clock: it moves only when the demo says so."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def set(self, t: datetime) -> None:
        self.now = max(self.now, t)


@dataclass
class LoopRecord:
    """What the loop did, for the summary and the HTML page."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    served: dict[str, int] = field(default_factory=dict)
    drift_event: dict[str, Any] | None = None
    drift_to_promoted_s: float | None = None
    alias_moves: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    cards: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def model_features(view: FeatureView) -> list[str]:
    """The model's inputs: request-time flags and the view's counts (as the training set names them)."""
    counts = [n for n in view.feature_names if n.startswith(("count", "distinct"))]
    return [*REQUEST_FEATURES, *(f"{view.name}__{n}" for n in counts)]


def request_features(df: pl.DataFrame, seed: int, view: FeatureView) -> pl.DataFrame:
    """Request-time inputs computed from the transaction itself, the view's features under
    their training-set names (``<view>__<feature>``), and a synthetic customer age band per
    card (the demo's protected attribute for the fairness gate)."""
    import polars as pl

    cards = df["card"].to_numpy()
    idx = np.array([int(c.rsplit("-", 1)[1]) for c in cards], dtype=np.int64)
    bands = AGE_BANDS[np.random.default_rng(seed + 3).integers(0, 4, size=int(idx.max()) + 1)]
    hour = df["event_time"].dt.hour()
    return df.with_columns(
        (pl.col("amount").log1p()).alias("amount_log"),
        (pl.col("merchant") == "online").cast(pl.Float64).alias("is_online"),
        (pl.col("country") != "NL").cast(pl.Float64).alias("is_foreign"),
        (hour < 5).cast(pl.Float64).alias("is_night"),
        (pl.col("merchant") == "crypto").cast(pl.Float64).alias("is_crypto"),
        pl.Series("age_band", bands[idx]),
        *(pl.col(n).cast(pl.Float64).alias(f"{view.name}__{n}") for n in view.feature_names),
    )


def options(view: FeatureView, seed: int) -> dict[str, Any]:
    """The executors' options (plain JSON, as the retrain-controller app would read them):
    keel.pipelines.local's small-loop defaults, the demo's streams and gate thresholds."""
    from keel.pipelines.local import small_loop_options

    return small_loop_options(
        model=MODEL,
        feature_definitions="keel_cli.demo_features",
        feature_views=[view.name],
        features=model_features(view),
        group_column="age_band",
        events_stream=MODELS_STREAM,
        predictions_stream=PREDICTIONS_STREAM,
        trainer_identity="keel-pipelines",
        owner="fraud-analytics",
        intended_use="rank card transactions for fraud review (demo data)",
        trainer={"seed": seed % (2**31 - 1)},
        gates={
            "metric": "auc",
            # the demo's labels are noisy by design: a model that knows the true fraud
            # logit scores AUC ~0.68 on them
            "threshold": 0.55,
            "min_abs_improvement": 0.0,
            "max_ece": 0.05,
            "max_drift_share": 0.9,
            # the demo's protected attribute is random, and its groups hold a few hundred
            # holdout rows with a handful of alerts each: the ratio of alert rates moves by
            # +-0.3 from noise alone, so the demo asks for 0.5 (keel.governance's default: 0.8)
            "min_disparate_impact_ratio": 0.5,
            "risk_tier": 3,
        },
    )


class Loop:
    """The demo's loop on embedded parts; see the module docstring."""

    def __init__(self, out: Path, bus: Bus, view: FeatureView, seed: int, start: datetime) -> None:
        import logging
        import os

        from keel.pipelines import CanaryPolicy, Controller, TriggerPolicy
        from keel.pipelines.local import TimedExecutors, build_executors
        from keel.pipelines.reproduce import record_options

        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # the live progress is the log
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.root = out / "loop"
        self.root.mkdir(parents=True, exist_ok=True)
        self.out, self.bus, self.view, self.seed = out, bus, view, seed
        for s in (MODELS_STREAM, PREDICTIONS_STREAM, DRIFT_STREAM):
            if s in bus.streams():
                bus.delete_stream(s)
        self.clock = SimClock(start)
        opts = options(view, seed)
        record_options(self.root, opts)  # `keel reproduce fraud-demo@champion` reads them
        self.ex: LocalExecutors = build_executors(home=self.root, bus=bus, options=opts)  # type: ignore[assignment]
        self.step_times = TimedExecutors(self.ex)
        self.ctl: Controller = Controller(
            self.step_times,  # type: ignore[arg-type]
            clock=self.clock,
            db_path=self.root / "pipelines" / "pipelines.db",
            trigger_policy=TriggerPolicy(cooldown=timedelta(hours=1), max_concurrent_runs=1),
            canary_policy=CanaryPolicy(window=CANARY_WINDOW, min_requests=50),
            code_version=_code_version(),
            lock_hash=_lock_hash(),
        )
        self.record = LoopRecord()
        self.predictors: dict[str, Any] = {}

    def close(self) -> None:
        self.ctl.close()
        self.ex.close()
        self.bus.close()

    # -- data ------------------------------------------------------------------------------
    def write_offline(
        self, events: list[Any], data: pl.DataFrame, start: datetime, end: datetime
    ) -> None:
        """What the feature worker and the label feed would have written for [start, end):
        the raw event log and the labelled transactions (as ``labels.<model>``)."""
        import polars as pl

        from keel.features import EVENT_LOG_SCHEMA, OfflineStore, event_log_dataset

        store = OfflineStore(self.root / "offline")
        rows = [e for e in events if start <= e.event_time < end]
        log = pl.DataFrame(
            {
                "event_id": [e.id for e in rows],
                "type": [e.type for e in rows],
                "key": [e.key for e in rows],
                "event_time": [e.event_time for e in rows],
                "publish_time": [e.event_time for e in rows],
                "payload": [e.payload.decode() for e in rows],
            },
            schema=EVENT_LOG_SCHEMA,
        )
        tag = start.strftime("%Y%m%d")
        store.write(event_log_dataset("txn.created"), log, time_column="event_time", name=tag)
        labels = data.filter((pl.col("event_time") >= start) & (pl.col("event_time") < end)).select(
            "card",
            pl.col("event_time").alias("timestamp"),
            "label",
            *REQUEST_FEATURES,
            "age_band",
        )
        store.write(f"labels.{MODEL}", labels, time_column="timestamp", name=tag)

    # -- serving ---------------------------------------------------------------------------
    def predictor(self, alias: str) -> Any:
        """``fraud-demo@alias`` through keel.serving's loader: downloaded from the registry,
        verified against the trusted key, built (no HTTP server)."""
        from keel.serving import ModelRef, load_from_registry

        (self.root / "serving").mkdir(parents=True, exist_ok=True)
        version, p = load_from_registry(
            self.ex.registry,
            ModelRef(MODEL, alias),
            self.ex.signing()[1],
            workdir=self.root / "serving",
            threads=1,
            device="cpu",
        )
        self.predictors[str(version)] = p
        return p

    def serve(
        self, p: Any, frame: pl.DataFrame, variant: str, log: Any, *, request: str
    ) -> np.ndarray:
        """Score ``frame`` with predictor ``p`` (serving's input validation and forward pass)
        and log each prediction as serving does (``prediction.made``, variant named)."""
        names = [f.name for f in p.inputs.fields]
        x = p.inputs.encode_columns({n: frame[n].to_numpy() for n in names}, frame.height)
        y = p.predict(x)[:, 0].astype(np.float64)
        if log is not None:
            feats = frame.select(names).to_dicts()
            cards, times = frame["card"].to_list(), frame["event_time"].to_list()
            for i in range(frame.height):
                log.log(
                    {
                        "request_id": f"{request}-{i}",
                        "instance": 0,
                        "model": MODEL,
                        "model_digest": p.digest,
                        "version": p.version,
                        "variant": variant,
                        "entity": cards[i],
                        "features": feats[i],
                        "output": {"score": float(y[i])},
                        "score": float(y[i]),
                        "latency_s": 0.0,
                        "time": times[i],
                    }
                )
        self.record.served[variant] = self.record.served.get(variant, 0) + frame.height
        return y

    # -- the controller --------------------------------------------------------------------
    def drive(
        self, run_id: str, *, on_step: Callable[[str], None], on_canary: Callable[[str], None]
    ) -> RunInfo:
        """Advance the run to its end, doing a person's part when it waits: approve the
        artifact the approvals gate names; at the canary, send traffic and let the window pass."""
        from keel.governance import ApprovalLedger
        from keel.pipelines import RunStatus

        done: set[str] = set()
        approved: set[str] = set()
        canaried = False
        for _ in range(20):
            info = self.ctl.advance(run_id)
            for s in self.ctl.steps(run_id):
                if s.step not in done:
                    done.add(s.step)
                    on_step(s.step + (" (cached)" if s.cache_hit else ""))
            if info.status is not RunStatus.WAITING:
                return info
            if info.step == "gates":
                digest = self.ex.pending_approvals.get(run_id)
                if digest is None or digest in approved:
                    return info
                ApprovalLedger(self.ex._ledger_path(), clock=self.clock).record(
                    model=MODEL,
                    artifact_digest=digest,
                    approver="risk-officer@demo",
                    role="validator",
                    decision="approve",
                    evidence_digest=digest,
                    note="reviewed the model card and gate results on the demo page",
                )
                approved.add(digest)
                on_step("approvals: recorded risk-officer@demo's approval")
            elif info.step == "canary":
                if not canaried:
                    reg = {s.step: s.output for s in self.ctl.steps(run_id)}
                    version = str(reg["register_challenger"]["version"])
                    on_canary(version)
                    canaried = True
                self.clock.set(self.clock() + CANARY_WINDOW + timedelta(minutes=1))
            else:
                return info
        return self.ctl.run(run_id)

    # -- the phases ------------------------------------------------------------------------
    def _run_record(self, title: str, key: str, info: RunInfo) -> dict[str, Any]:
        steps = self.ctl.steps(info.run_id)
        out = {s.step: s.output for s in steps}
        gates = [
            e.record["output"] for e in self.ctl.provenance(info.run_id) if e.kind == "step:gates"
        ]
        results = gates[-1]["results"] if gates else []
        rec: dict[str, Any] = {
            "title": title,
            "key": key,
            "run_id": info.run_id,
            "status": info.status.value,
            "detail": info.detail,
            "trigger": info.trigger_key,
            "steps": [{"step": s.step, "cache_hit": s.cache_hit} for s in steps],
            "gates": results,
            "version": out.get("register_challenger", {}).get("version"),
            "artifact_digest": out.get("package_sign", {}).get("artifact_digest"),
            "training_set": out.get("build_training_set", {}).get("fingerprint"),
            "holdout": out.get("evaluate", {}).get("holdout"),
            "trainer_run": out.get("train", {}).get("trainer_run"),
            "step_seconds": {k: round(v, 2) for k, v in self.step_times.take().items()},
        }
        dump_json(self.out / f"gates-{key}.json", {"run_id": info.run_id, "gates": results})
        self.record.runs.append(rec)
        return rec

    def bootstrap(
        self,
        progress: Any,
        events: list[Any],
        data: pl.DataFrame,
        start: datetime,
        first_day: datetime,
    ) -> None:
        """The first model: a manual trigger runs the whole pipeline on days 2-5."""
        import polars as pl

        from keel.pipelines import Trigger
        from keel.pipelines.local import start_ray

        t = progress.add_task("loop: offline event log + labels (days 1-5)", total=1)
        with timed(self.record, "offline store (days 1-5)"):
            self.write_offline(events, data, first_day, start)
        progress.update(t, completed=1)
        t = progress.add_task("loop: starting Ray (local, 2 CPUs)", total=1)
        with timed(self.record, "Ray start"):
            start_ray(num_cpus=2, object_store_bytes=96 << 20)
        progress.update(t, completed=1)
        trig = Trigger.manual(
            MODEL, f"demo-bootstrap-{self.seed}", at=self.clock(), who="demo", why="the first model"
        )
        d = self.ctl.submit(
            trig,
            {"start": (first_day + timedelta(days=1)).isoformat(), "end": start.isoformat()},
        )
        assert d.run_id is not None
        t = progress.add_task("loop: first model (pipeline run)", total=_STEPS)

        def on_step(name: str) -> None:
            progress.update(t, description=f"loop: first model: {name[:28]}")
            if not name.startswith("approvals"):
                progress.advance(t)

        def on_canary(version: str) -> None:
            # no champion yet: the canary takes its share of the last hours of day 5
            p = self.predictor("canary")
            day = data.filter(
                (pl.col("event_time") >= start - timedelta(hours=6))
                & (pl.col("event_time") < start)
            )
            self._canary_traffic(day, p, None, "bootstrap")

        with timed(
            self.record, "first model: pipeline (train on Ray, gates, sign, register, canary)"
        ):
            info = self.drive(d.run_id, on_step=on_step, on_canary=on_canary)
        self._run_record("first model", "bootstrap", info)
        if info.status.value != "promoted":
            raise RuntimeError(
                f"the demo's first model was not promoted ({info.status.value}: {info.detail}); "
                f"see {self.out / 'gates-bootstrap.json'}"
            )

    def _canary_traffic(self, frame: pl.DataFrame, canary: Any, primary: Any, tag: str) -> None:
        import polars as pl

        from keel.serving import PredictionLog, entity_bucket

        bucket = np.array([entity_bucket(c) for c in frame["card"].to_list()])
        mask = bucket < CANARY_FRACTION
        log = PredictionLog(self.bus, stream=PREDICTIONS_STREAM)
        try:
            self.serve(
                canary, frame.filter(pl.Series(mask)), "canary", log, request=f"{tag}-canary"
            )
            if primary is not None:
                self.serve(
                    primary,
                    frame.filter(pl.Series(~mask)),
                    "primary",
                    log,
                    request=f"{tag}-primary",
                )
        finally:
            log.close()

    def serve_champion(self, data: pl.DataFrame, live_from: datetime) -> pl.DataFrame:
        """``score`` := the champion's prediction for every transaction; those from
        ``live_from`` on are the live traffic and go to the prediction log."""
        import polars as pl

        from keel.serving import PredictionLog

        p = self.predictor("champion")
        # ``data`` is in stream (event-time) order, so past rows then live rows is its order
        past = data.filter(pl.col("event_time") < live_from)
        live = data.filter(pl.col("event_time") >= live_from)
        log = PredictionLog(self.bus, stream=PREDICTIONS_STREAM, max_queue=live.height + 10)
        try:
            s_past = self.serve(p, past, "replay", None, request="replay")
            s_live = self.serve(p, live, "primary", log, request="live")
        finally:
            log.close(timeout_s=120.0)
        self.record.served.pop("replay", None)
        return data.with_columns(pl.Series("score", np.concatenate([s_past, s_live])))

    def retrain(
        self,
        progress: Any,
        events: list[Any],
        data: pl.DataFrame,
        windows: list[Any],
        start: datetime,
        end: datetime,
        holdout_from: datetime,
    ) -> None:
        """drift.detected → trigger → the pipeline, on the data of the drifted days."""
        import polars as pl

        from keel.drift import DriftDetected
        from keel.events import Event
        from keel.pipelines import trigger_from_event

        episode = next(
            (d for d in (DriftDetected.from_window(MODEL, w) for w in windows) if d), None
        )
        if episode is None:
            return
        t0 = time.perf_counter()
        self.bus.publish(
            DRIFT_STREAM,
            Event.create(
                type=DriftDetected.TYPE,
                key=MODEL,
                event_time=episode.window_end,
                payload=episode.to_payload(),
                id=episode.event_id,
            ),
        )
        self.record.drift_event = {
            "id": episode.event_id,
            "window_start": episode.window_start.isoformat(),
            "window_end": episode.window_end.isoformat(),
            "drifted": list(episode.drifted),
            "drift_share": episode.drift_share,
        }
        t = progress.add_task("loop: labels of the drifted days arrive", total=1)
        self.write_offline(events, data, start, end)
        progress.update(t, completed=1)
        self.clock.set(end)
        ev = next(iter(self.bus.replay(DRIFT_STREAM))).event  # what a controller consumes
        d = self.ctl.submit(
            trigger_from_event(ev, at=self.clock()),
            {
                "start": (start - timedelta(days=2)).isoformat(),
                "end": end.isoformat(),
                "holdout_from": holdout_from.isoformat(),
            },
        )
        assert d.run_id is not None
        t = progress.add_task("loop: retrain (pipeline run)", total=_STEPS)

        def on_step(name: str) -> None:
            progress.update(t, description=f"loop: retrain: {name[:34]}")
            if not name.startswith("approvals"):
                progress.advance(t)

        def on_canary(version: str) -> None:
            canary, champion = self.predictor("canary"), self.predictor("champion")
            last = data.filter(pl.col("event_time") >= end - timedelta(hours=8))
            self._canary_traffic(last, canary, champion, "retrain")

        with timed(self.record, "retrain: pipeline (train on Ray, gates, sign, register, canary)"):
            info = self.drive(d.run_id, on_step=on_step, on_canary=on_canary)
        self.record.drift_to_promoted_s = round(time.perf_counter() - t0, 1)
        rec = self._run_record("retrain after drift", "retrain", info)
        quality = next((g for g in rec["gates"] if g["gate"] == "quality"), None)
        calib = next((g for g in rec["gates"] if g["gate"] == "calibration"), None)
        if quality is not None:
            ev_q = quality["evidence"]
            rec["comparison"] = {
                ev_q["metric"]: {
                    "champion": ev_q.get("champion"),
                    "challenger": ev_q.get("challenger"),
                },
            }
            if calib is not None:
                rec["comparison"]["ECE (calibration)"] = {
                    "champion": calib["evidence"].get("champion_ece"),
                    "challenger": calib["evidence"].get("ece"),
                }

    def finish(self) -> None:
        """Alias moves, the provenance chain (verified, walked from the champion), the model cards."""
        import tarfile

        from keel.pipelines import PipelinesError

        for e in self.ex.registry.audit(MODEL):
            self.record.alias_moves.append(
                {
                    "seq": e.seq,
                    "alias": e.alias,
                    "from_version": e.from_version,
                    "to_version": e.to_version,
                    "action": e.action,
                    "why": e.decision.why,
                    "hash": e.hash,
                }
            )
        report = self.ctl.verify_provenance()
        entries = self.ctl.provenance()
        try:
            lineage = self.ctl.lineage(MODEL).to_dict()
        except PipelinesError as e:
            lineage = {"error": str(e)}
        self.record.provenance = {
            "ok": report.ok,
            "count": report.entries,
            "problems": list(report.problems),
            "lineage": lineage,
            "home": str(self.root),
            "entries": [
                {"seq": e.seq, "kind": e.kind, "run_id": e.run_id, "prev": e.prev, "hash": e.hash}
                for e in entries
            ],
        }
        dump_json(
            self.out / "provenance.json",
            {
                "ok": report.ok,
                "problems": list(report.problems),
                "lineage": lineage,
                "entries": [{**e.body(), "hash": e.hash} for e in entries],
            },
        )
        cards = self.out / "cards"
        cards.mkdir(exist_ok=True)
        for run in self.record.runs:
            archive = next(
                (
                    s.output.get("archive")
                    for s in self.ctl.steps(run["run_id"])
                    if s.step == "package_sign"
                ),
                None,
            )
            if not archive:
                continue
            with tarfile.open(archive) as tf:
                member = tf.extractfile("model_card.html")
                if member is None:
                    continue
                name = f"cards/{run['key']}-v{run['version'] or 'x'}.html"
                (self.out / name).write_bytes(member.read())
                self.record.cards[run["key"]] = name
        dump_json(
            self.out / "loop-summary.json",
            {
                "runs": self.record.runs,
                "served": self.record.served,
                "drift_event": self.record.drift_event,
                "alias_moves": self.record.alias_moves,
                "provenance_ok": report.ok,
                "drift_to_promoted_s": self.record.drift_to_promoted_s,
                "timings_s": self.record.timings,
            },
        )


_STEPS = 9


def _code_version() -> str:
    try:
        from keel.trainer import code_version

        commit, dirty = code_version()
        return commit + ("+dirty" if dirty else "")
    except Exception:  # no git checkout (a built pex): the version file names the build
        return "unknown"


def _lock_hash() -> str:
    """The lockfile's hash in a checkout; outside one (a built pex, a Pants sandbox)
    keel.trainer's hash of the installed distributions (the registry requires one)."""
    from keel.trainer import lock_hash

    return lock_hash()


@contextmanager
def timed(record: LoopRecord, name: str) -> Iterator[None]:
    with phase(record.timings, name):
        yield


@contextmanager
def phase(times: dict[str, float], name: str) -> Iterator[None]:
    """``times[name]`` := the block's wall time in seconds (where the demo's time goes)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        times[name] = round(time.perf_counter() - t0, 2)


# -- the page ---------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#14213d;color:#fff;padding:28px 40px}
header h1{margin:0 0 6px;font-size:26px} header p{margin:0;opacity:.85}
main{max-width:1180px;margin:0 auto;padding:24px 40px 60px}
section{background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:20px 24px;margin:18px 0}
h2{font-size:18px;margin:0 0 12px}
.flow{display:flex;flex-wrap:wrap;gap:8px;align-items:center}
.step{padding:8px 12px;border-radius:8px;background:#e8f1ff;border:1px solid #bcd4ff;font-size:13px}
.step.ok{background:#e7f7ec;border-color:#9fd8b0} .step.hit{background:#f1f1f1;border-color:#ccc;color:#555}
.step.wait{background:#fff6e0;border-color:#f0d08a} .step.bad{background:#fde8e8;border-color:#f3a5a5}
.arrow{color:#8a94a6}
table{border-collapse:collapse;width:100%;font-size:13px} th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #eceef2;vertical-align:top}
th{color:#5b6475;font-weight:600} code{font-size:12px;background:#f2f4f7;padding:1px 4px;border-radius:4px;word-break:break-all}
.pass{color:#137333;font-weight:600} .fail{color:#b3261e;font-weight:600} .waiting{color:#a86b00;font-weight:600}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(240px,1fr));gap:14px}
.kpi{background:#f8fafc;border-radius:8px;padding:12px 14px} .kpi b{display:block;font-size:22px;margin-top:4px}
a{color:#1a56db}
.muted{color:#6b7280;font-size:12px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else _e(v if v is not None else "—")


def write_page(out: Path, rec: LoopRecord, drift_html: str, seed: int) -> Path:
    """``out/index.html``: the loop at a glance, linking the drift report, the model cards,
    the gate results and the provenance chain."""
    retrain = rec.runs[-1] if rec.runs else {}
    parts: list[str] = []
    moved = [m for m in rec.alias_moves if m["alias"] == "champion"]
    head = (
        f"Drift detected in the window ending {_e((rec.drift_event or {}).get('window_end', '—'))}; "
        f"retrained, gated, canaried and promoted: champion v{_e(moved[-1]['from_version'])} → v{_e(moved[-1]['to_version'])}."
        if len(moved) > 1
        else "The loop did not promote a retrained model; see the gate results below."
    )
    kpis = [
        ("transactions served", f"{sum(rec.served.values()):,}"),
        (
            "drift.detected → champion moved",
            "—" if rec.drift_to_promoted_s is None else f"{rec.drift_to_promoted_s:.0f} s",
        ),
        ("provenance chain", "verified ✓" if rec.provenance.get("ok") else "BROKEN ✗"),
        ("champion now", f"v{moved[-1]['to_version']}" if moved else "—"),
    ]
    parts.append(
        "<section><div class='cards'>"
        + "".join(f"<div class='kpi'>{_e(k)}<b>{_e(v)}</b></div>" for k, v in kpis)
        + "</div></section>"
    )
    for run in rec.runs:
        css = {"promoted": "ok", "gate_failed": "bad", "rolled_back": "bad"}.get(
            run["status"], "wait"
        )
        flow = "<span class='arrow'>→</span>".join(
            f"<span class='step {'hit' if s['cache_hit'] else 'ok'}'>{_e(s['step'])}{' (cached)' if s['cache_hit'] else ''}</span>"
            for s in run["steps"]
        )
        parts.append(
            f"<section><h2>{_e(run['title'])} — <span class='{'pass' if css == 'ok' else 'fail'}'>{_e(run['status'])}</span></h2>"
            f"<p class='muted'>run <code>{_e(run['run_id'])}</code> · trigger <code>{_e(run['trigger'])}</code></p>"
            f"<div class='flow'>{flow}</div></section>"
        )
    if retrain.get("comparison"):
        rows = "".join(
            f"<tr><td>{_e(k)}</td><td>{_fmt(v.get('champion'))}</td><td>{_fmt(v.get('challenger'))}</td></tr>"
            for k, v in retrain["comparison"].items()
        )
        parts.append(
            "<section><h2>Champion vs challenger on the same holdout</h2>"
            f"<p class='muted'>holdout <code>{_e(retrain.get('holdout', ''))}</code> — the most recent labelled days</p>"
            f"<table><tr><th>metric</th><th>champion</th><th>challenger</th></tr>{rows}</table></section>"
        )
    for run in rec.runs:
        rows = ""
        for g in run.get("gates", []):
            cls = {"passed": "pass", "failed": "fail", "waiting": "waiting"}.get(g["status"], "")
            reasons = "; ".join(g["reasons"]) or "—"
            rows += f"<tr><td>{_e(g['gate'])}</td><td class='{cls}'>{_e(g['status'])}</td><td>{_e(reasons)}</td></tr>"
        if rows:
            parts.append(
                f"<section><h2>Gate results — {_e(run['title'])}</h2>"
                f"<table><tr><th>gate</th><th>status</th><th>reasons</th></tr>{rows}</table>"
                f"<p class='muted'>Full evidence: <a href='gates-{_e(run['key'])}.json'>gates-{_e(run['key'])}.json</a></p></section>"
            )
    arts = "".join(
        f"<tr><td>{_e(r['title'])}</td><td>v{_e(r.get('version', '—'))}</td><td><code>{_e(r.get('artifact_digest', '—'))}</code></td>"
        f"<td><code>{_e(r.get('training_set', '—'))}</code></td>"
        f"<td>{'<a href=' + chr(39) + _e(rec.cards[r['key']]) + chr(39) + '>model card</a>' if r['key'] in rec.cards else '—'}</td></tr>"
        for r in rec.runs
    )
    parts.append(
        "<section><h2>Signed artifacts</h2><table><tr><th>run</th><th>version</th><th>artifact digest</th>"
        f"<th>training set</th><th>card</th></tr>{arts}</table></section>"
    )
    moves = "".join(
        f"<tr><td>{m['seq']}</td><td>{_e(m['alias'])}</td><td>{_e(m['from_version'] or '—')} → {_e(m['to_version'])}</td>"
        f"<td>{_e(m['action'])}</td><td>{_e(m['why'])}</td><td><code>{_e(m['hash'][:16])}…</code></td></tr>"
        for m in rec.alias_moves
    )
    parts.append(
        "<section><h2>Alias moves (registry audit log, each published as <code>model.alias_moved</code>)</h2>"
        f"<table><tr><th>#</th><th>alias</th><th>version</th><th>action</th><th>why</th><th>entry hash</th></tr>{moves}</table></section>"
    )
    prov = rec.provenance
    chain = "".join(
        f"<tr><td>{e['seq']}</td><td>{_e(e['kind'])}</td><td><code>{_e(e['run_id'][:8])}</code></td>"
        f"<td><code>{_e(e['prev'][:12])}…</code></td><td><code>{_e(e['hash'][:12])}…</code></td></tr>"
        for e in prov.get("entries", [])
    )
    lin = prov.get("lineage") or {}
    parts.append(
        "<section><h2>Provenance chain</h2>"
        f"<p>{'<span class=pass>verified</span>' if prov.get('ok') else '<span class=fail>broken</span>'}: "
        f"{prov.get('count', 0)} hash-chained entries. The champion <code>{_e(lin.get('artifact_digest', '—'))}</code> "
        f"traces back to training set <code>{_e(lin.get('training_set_fingerprint', '—'))}</code> and trigger "
        f"<code>{_e((lin.get('trigger') or {}).get('key', '—'))}</code>. "
        f"Check it yourself: <code>KEEL_HOME={_e(prov.get('home', ''))} keel provenance verify {MODEL}@champion</code>. "
        "Full chain: <a href='provenance.json'>provenance.json</a></p>"
        f"<table><tr><th>seq</th><th>entry</th><th>run</th><th>prev</th><th>hash</th></tr>{chain}</table></section>"
    )
    timings = "".join(
        f"<tr><td>{_e(k)}</td><td>{v:.1f} s</td></tr>" for k, v in rec.timings.items()
    ) + "".join(
        f"<tr><td class='muted'>&nbsp;&nbsp;{_e(run['title'])}: {_e(step)}</td><td class='muted'>{v:.1f} s</td></tr>"
        for run in rec.runs
        for step, v in (run.get("step_seconds") or {}).items()
    )
    parts.append(f"<section><h2>Where the time went</h2><table>{timings}</table></section>")
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Keel demo — the closed loop</title><style>{_CSS}</style></head><body>"
        f"<header><h1>Keel demo — drift to promotion, closed</h1><p>{head}</p>"
        f"<p style='margin-top:10px'><a style='color:#cfe0ff' href='{_e(drift_html)}'>drift report</a> · "
        f"<a style='color:#cfe0ff' href='gates-retrain.json'>gate results</a> · "
        f"<a style='color:#cfe0ff' href='provenance.json'>provenance chain</a>"
        + "".join(
            f" · <a style='color:#cfe0ff' href='{_e(v)}'>model card ({_e(k)})</a>"
            for k, v in rec.cards.items()
        )
        + f" · seed {seed}</p></header><main>"
        + "".join(parts)
        + "</main></body></html>"
    )
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def dump_json(path: Path, obj: Mapping[str, Any] | list[Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


__all__ = [
    "CANARY_FRACTION",
    "DRIFT_STREAM",
    "MODEL",
    "Loop",
    "LoopRecord",
    "SimClock",
    "dump_json",
    "model_features",
    "phase",
    "request_features",
    "timed",
    "write_page",
]
