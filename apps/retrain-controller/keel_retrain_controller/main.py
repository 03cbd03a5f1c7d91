"""retrain-controller: react to retrain triggers, run keel.pipelines' closed loop, promote or
roll back. Wiring only; the decisions are keel.pipelines' policies and the work is the
injected executors.

Inputs (keel.events, durable consumers, one process per durable):

* ``drift.detected`` on ``drift_stream`` (default ``drift``; keel.drift's payload): one
  trigger per drift episode (`keel.pipelines.trigger_from_event`); a redelivery or a later
  window of the same episode is a ``duplicate`` decision, so the consumer is idempotent.
  A ``defer`` decision (max concurrency) naks the event so it comes back later.
* ``canary.failed`` and ``slo.reading`` on ``signals_stream`` (default ``models``, where
  the serve app publishes ``canary.failed``): recorded once per event id in
  ``<home>/pipelines/retrain_controller.db`` (`keel.events.IdempotentSink`) and handed to
  the canary policy through `Executors.canary_signals`, together with the executors' own.
* schedule: with ``schedule_every_s`` set, a ``schedule:<slot>`` trigger per model in
  ``models`` per slot (keyed by the slot: restarts repeat nothing);
* manual: ``keel retrain --model M`` records a run in the same database; the loop picks it up.

Other event types on those streams are acked and ignored; a malformed ``drift.detected``,
``canary.failed`` or ``slo.reading`` is dead-lettered with the reason.

The loop: at start-up it takes the controller's runner lock (one advancing process per
database; a second exits 1 naming the lock) and ``resume()``s every unfinished run; then
each tick it consumes, submits triggers, advances new runs at once, waiting runs (approvals,
canary window) every ``wait_poll_s`` and failed runs every ``retry_failed_s``, and verifies
the provenance chain every ``verify_every_s``. SIGTERM/SIGINT stop it between two steps
(a step in hand finishes and commits; the next start resumes at the following one).

Executors come from ``executors = "module:factory"``, called as
``factory(home=Path, bus=keel.events.Bus, options=Mapping)`` with ``executor_options``.
"""

from __future__ import annotations

import importlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from keel.events import (
    Bus,
    Consumer,
    Delivery,
    Event,
    IdempotentSink,
    UnavailableError,
    default_url,
    open_bus,
)
from keel.pipelines import (
    CANARY_FAILED,
    DRIFT_DETECTED,
    SLO_READING,
    Action,
    CanaryPolicy,
    CanarySignal,
    Controller,
    Executors,
    GateResult,
    InvalidInputError,
    RunInfo,
    RunStatus,
    SchedulePolicy,
    StepContext,
    StepFailedError,
    Trigger,
    TriggerPolicy,
    signal_from_event,
    trigger_from_event,
)
from keel.telemetry import ComponentMetrics, PipelinesMetrics, get_logger, start_metrics_server
from keel.telemetry.app import App, AppConfigError, AppContext, AppError

log = get_logger("keel.retrain_controller")

DEFAULT_EXECUTORS = "keel.pipelines.local:build_executors"
_SIGNAL_TYPES = (CANARY_FAILED, SLO_READING)
_UNFINISHED = (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.FAILED)


class Settings(BaseModel):
    """retrain-controller settings (TOML ``[retrain-controller]``, ``KEEL_RETRAIN_CONTROLLER_<KEY>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path = Field(
        default=Path(".keel"), description="pipelines database, signals, embedded bus"
    )
    db: Path | None = Field(
        default=None, description="pipelines database; default home/pipelines/pipelines.db"
    )
    bus_url: str | None = Field(
        default=None,
        description="event bus (nats://...); default $KEEL_NATS_URL, else the embedded log in home",
    )
    drift_stream: str = Field(default="drift", description="where drift.detected arrives")
    signals_stream: str = Field(
        default="models", description="where canary.failed / slo.reading arrive"
    )
    durable: str = Field(default="retrain-controller", description="durable consumer name")
    executors: str = Field(
        default=DEFAULT_EXECUTORS,
        description="module:factory building keel.pipelines.Executors(home=, bus=, options=)",
    )
    executor_options: dict[str, Any] = Field(
        default_factory=dict,
        description="options passed to the executors factory (JSON/TOML table)",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="run parameters of every triggered run (JSON/TOML table)"
    )
    code_version: str = Field(
        default="",
        description="code version in every step's cache key (empty, with the default "
        "executors: KEEL_CODE_VERSION or the git checkout)",
    )
    lock_hash: str = Field(
        default="",
        description="dependency lock hash in every cache key (empty, with the default "
        "executors: the lockfile's, else the installed distributions')",
    )
    models: list[str] = Field(default_factory=list, description="models to schedule and report")
    schedule_every_s: float | None = Field(
        default=None, gt=0, description="scheduled retrain interval per model (none: off)"
    )
    cooldown_s: float = Field(default=6 * 3600.0, ge=0, description="trigger policy: cooldown")
    max_concurrent_runs: int = Field(default=1, ge=1, description="trigger policy: concurrency")
    canary_window_s: float = Field(
        default=1800.0, ge=0, description="canary watch before promotion"
    )
    canary_min_requests: int = Field(
        default=0, ge=0, description="canary requests before promotion"
    )
    wait_poll_s: float = Field(default=10.0, gt=0, description="re-check waiting runs this often")
    retry_failed_s: float = Field(default=300.0, gt=0, description="retry failed runs this often")
    verify_every_s: float = Field(default=300.0, gt=0, description="verify provenance this often")
    batch_size: int = Field(default=100, ge=1, description="events per fetch")
    poll_timeout_s: float = Field(default=1.0, gt=0, description="fetch wait (the loop's tick)")
    metrics_host: str = Field(default="127.0.0.1", description="/metrics and /healthz address")
    metrics_port: int = Field(default=9112, ge=0, le=65535, description="/metrics port (0: any)")

    @field_validator("executors")
    @classmethod
    def _spec(cls, value: str) -> str:
        module, sep, attr = value.partition(":")
        if not sep or not module.strip() or not attr.strip():
            raise ValueError(f"{value!r} is not module:factory (e.g. {DEFAULT_EXECUTORS!r})")
        return value

    @property
    def db_path(self) -> Path:
        return self.db or self.home.absolute() / "pipelines" / "pipelines.db"

    @property
    def signals_path(self) -> Path:
        return self.db_path.parent / "retrain_controller.db"


APP = App(
    "retrain-controller",
    Settings,
    summary="Run the retrain loop: triggers → train → gates → challenger → canary → promote/roll back.",
    description=(
        "Consumes drift.detected, canary.failed and slo.reading, runs keel.pipelines' Controller\n"
        "with the configured executors, serves /metrics and /healthz. Resumes unfinished runs at\n"
        "start. SIGTERM/SIGINT: stop between two steps, exit 0."
    ),
)

ExecutorsFactory = Callable[..., Executors]


def load_factory(spec: str) -> ExecutorsFactory:
    """The factory named by ``module:factory``; AppConfigError saying what is wrong."""
    module_name, _, attr = spec.partition(":")
    hint = "set `executors` (KEEL_RETRAIN_CONTROLLER_EXECUTORS) to module:factory"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppConfigError(
                f"executors {spec!r}: module {module_name!r} not found ({exc}); {hint}"
            ) from None
        raise AppConfigError(
            f"executors {spec!r}: importing {module_name!r} failed: {exc}"
        ) from None
    except ImportError as exc:
        raise AppConfigError(
            f"executors {spec!r}: importing {module_name!r} failed: {exc}"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise AppConfigError(f"executors {spec!r}: {module_name} has no callable {attr!r}; {hint}")
    return factory  # type: ignore[no-any-return]


# -- canary signals: recorded once per event, read back by the canary step --------------------

_SIGNALS_SCHEMA = """
CREATE TABLE IF NOT EXISTS signals (
    event_id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, signal TEXT NOT NULL
)
"""


class SignalStore:
    """Serving's canary signals, applied exactly once per event id (IdempotentSink) so a
    redelivery never doubles one and a restart loses none."""

    def __init__(self, path: Path, consumer_name: str) -> None:
        self.sink = IdempotentSink(path, consumer_name)
        self.sink.connection.execute(_SIGNALS_SCHEMA)  # the app's table in the sink's file

    def apply(self, consumer: Consumer, items: Sequence[tuple[Delivery, CanarySignal]]) -> int:
        signals = {id(d.event): s for d, s in items}

        def effect(conn: sqlite3.Connection, event: Event) -> None:
            sig = signals[id(event)]
            body = event.json()
            model = str(body.get("model") or event.key or "")
            conn.execute(
                "INSERT OR IGNORE INTO signals(event_id, model, version, signal) VALUES (?,?,?,?)",
                (event.id, model, sig.version, _signal_json(sig)),
            )

        return self.sink.apply(consumer, [d for d, _ in items], effect).applied

    def signals(self, model: str, version: str) -> list[CanarySignal]:
        """Signals about ``model``'s ``version`` (or about ``version`` with no model named)."""
        rows = self.sink.connection.execute(
            "SELECT signal FROM signals WHERE version = ? AND model IN (?, '') ORDER BY rowid",
            (version, model),
        ).fetchall()
        out = []
        for (text,) in rows:
            d = json.loads(text)
            out.append(
                CanarySignal(
                    d["kind"],
                    d["version"],
                    datetime.fromisoformat(d["at"]),
                    name=d["name"],
                    value=d["value"],
                    objective=d["objective"],
                    detail=d["detail"],
                )
            )
        return out

    def close(self) -> None:
        self.sink.connection.close()


def _signal_json(sig: CanarySignal) -> str:
    return json.dumps(sig.to_dict(), sort_keys=True, default=str)


class SignalAwareExecutors:
    """The configured executors, with the signals this app consumed added to the ones the
    executors report themselves for the canary step."""

    def __init__(self, inner: Executors, store: SignalStore) -> None:
        self.inner, self.store = inner, store

    def step_settings(self, step: str) -> Mapping[str, Any] | None:
        """The inner executors' settings for ``step`` (part of its cache key), if they say."""
        own = getattr(self.inner, "step_settings", None)
        return own(step) if callable(own) else None

    def source_fingerprints(self, ctx: StepContext) -> Mapping[str, str]:
        return self.inner.source_fingerprints(ctx)

    def build_training_set(self, ctx: StepContext) -> Mapping[str, Any]:
        return self.inner.build_training_set(ctx)

    def train(self, ctx: StepContext) -> Mapping[str, Any]:
        return self.inner.train(ctx)

    def evaluate(self, ctx: StepContext) -> Mapping[str, Any]:
        return self.inner.evaluate(ctx)

    def gates(self, ctx: StepContext) -> Sequence[GateResult]:
        return self.inner.gates(ctx)

    def package_sign(self, ctx: StepContext) -> Mapping[str, Any]:
        return self.inner.package_sign(ctx)

    def register_challenger(self, ctx: StepContext) -> Mapping[str, Any]:
        return self.inner.register_challenger(ctx)

    def move_alias(self, ctx: StepContext, alias: str, version: str) -> Mapping[str, Any]:
        return self.inner.move_alias(ctx, alias, version)

    def canary_signals(self, ctx: StepContext, version: str) -> tuple[Sequence[CanarySignal], int]:
        own, requests = self.inner.canary_signals(ctx, version)
        return [*own, *self.store.signals(ctx.model, version)], requests

    def rollback(self, ctx: StepContext, version: str) -> Mapping[str, Any]:
        return self.inner.rollback(ctx, version)


class StopRequested(Exception):
    """Raised from the controller's step hook once a stop is asked: the run stays at the
    next step (nothing half-done), and `resume` continues it at the next start."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class RetrainLoop:
    """The app's loop, steppable one `tick` at a time (tests do)."""

    settings: Settings
    bus: Bus
    executors: Executors
    stop: Callable[[], bool] = lambda: False
    clock: Callable[[], datetime] = utc_now
    monotonic: Callable[[], float] = time.monotonic
    metrics: PipelinesMetrics = field(init=False)
    submitted: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    bus_errors: int = 0

    def __post_init__(self) -> None:
        s = self.settings
        clock = self.clock
        self.metrics = PipelinesMetrics(
            ComponentMetrics("pipelines"), clock=lambda: clock().timestamp()
        )
        self.store = SignalStore(s.signals_path, s.durable)
        self._step_t0: dict[str, float] = {}
        code, lock = _versions(s)
        self.controller = Controller(
            SignalAwareExecutors(self.executors, self.store),
            clock=self.clock,
            db_path=s.db_path,
            trigger_policy=TriggerPolicy(
                cooldown=timedelta(seconds=s.cooldown_s),
                max_concurrent_runs=s.max_concurrent_runs,
            ),
            canary_policy=CanaryPolicy(
                window=timedelta(seconds=s.canary_window_s), min_requests=s.canary_min_requests
            ),
            code_version=code,
            lock_hash=lock,
            hook=self._hook,
        )
        self.drift = self.bus.consumer(s.drift_stream, s.durable, instance=s.durable)
        self.signals = self.bus.consumer(s.signals_stream, s.durable, instance=s.durable)
        self._seen: dict[str, RunStatus] = {}
        self._last_wait = self._last_retry = self._last_verify = float("-inf")
        self._bus_retry_at = float("-inf")
        self._slots: dict[str, datetime] = {}
        self._schedule = (
            SchedulePolicy(timedelta(seconds=s.schedule_every_s)) if s.schedule_every_s else None
        )
        for model in s.models:
            self.metrics.start(model)

    # -- the controller's hook: step timing and stop points ----------------------------------
    def _hook(self, point: str) -> None:
        where, _, step = point.partition(":")
        if where == "before":
            if self.stop():
                raise StopRequested(f"stop requested before {step}")
            self._step_t0[step] = self.monotonic()
        elif where == "after" and step in self._step_t0:
            self.metrics.observe_step(step, self.monotonic() - self._step_t0.pop(step))

    # -- start-up --------------------------------------------------------------------------
    def start(self) -> None:
        """Take the runner lock, then resume every unfinished run."""
        # keel.pipelines takes the lock lazily on the first advance; the app takes it now so
        # a second controller on the same database is refused at start, not mid-run.
        self.controller.hold_runner_lock()
        for info in self.controller.runs():
            self._seen[info.run_id] = info.status
            self.metrics.start(info.model)
        self.verify()
        for info in self.controller.runs():
            if info.status in _UNFINISHED:
                self._advance(info.run_id)
        self._last_wait = self._last_retry = self.monotonic()
        self._observe_runs()

    # -- one tick --------------------------------------------------------------------------
    def tick(self) -> None:
        """Consume what arrived, submit triggers (acking each delivery once its decision is
        committed), then advance runs, then update metrics. Runs advance only after every
        fetched delivery is settled, so a long step never holds a delivery past its ack wait."""
        if self.monotonic() >= self._bus_retry_at:
            try:
                self._consume_signals()
                self._consume_drift()
            except UnavailableError as exc:  # the bus is down: keep advancing runs, retry it
                self.bus_errors += 1
                self._bus_retry_at = self.monotonic() + 5 * self.settings.poll_timeout_s
                log.warning("event bus unavailable; retrying", extra={"error": str(exc)})
        self._scheduled()
        now = self.monotonic()
        poll_waiting = now - self._last_wait >= self.settings.wait_poll_s
        retry_failed = now - self._last_retry >= self.settings.retry_failed_s
        if poll_waiting:
            self._last_wait = now
        if retry_failed:
            self._last_retry = now
        for info in self.controller.runs():
            if self.stop():
                break
            due = (
                info.status is RunStatus.RUNNING
                or (info.status is RunStatus.WAITING and poll_waiting)
                or (info.status is RunStatus.FAILED and retry_failed)
            )
            if due:
                self._advance(info.run_id)
        if now - self._last_verify >= self.settings.verify_every_s:
            self.verify()
        self._observe_runs()

    @property
    def bus_down(self) -> bool:
        """The last fetch failed and the bus is not retried yet (the tick did not wait)."""
        return self.monotonic() < self._bus_retry_at

    def verify(self) -> bool:
        self._last_verify = self.monotonic()
        report = self.controller.verify_provenance()
        self.metrics.record_provenance(report.ok)
        if not report.ok:
            log.error(
                "provenance chain broken",
                extra={"problems": list(report.problems)[:20], "db": str(self.settings.db_path)},
            )
        return report.ok

    def _advance(self, run_id: str) -> None:
        try:
            self.controller.advance(run_id)
        except StepFailedError as exc:
            info = self.controller.run(run_id)
            self.metrics.record_step_failure(info.model, exc.step)
            log.error(
                "retrain step failed",
                extra={"run_id": run_id, "model": info.model, "step": exc.step, "cause": exc.cause},
            )
        except StopRequested:
            pass

    def _observe_runs(self) -> None:
        """Metrics from the run table: new runs, ended runs, each model's unfinished run."""
        active: dict[str, float] = {}
        for info in self.controller.runs():
            self.metrics.start(info.model)
            before = self._seen.get(info.run_id)
            if before is None:
                self.metrics.record_started(info.model, info.trigger_key.split(":", 1)[0])
                log.info("retrain run started", extra=_run_fields(info))
            if info.status in _UNFINISHED:
                created = datetime.fromisoformat(info.created_at).timestamp()
                active[info.model] = min(created, active.get(info.model, created))
            elif before is None or before in _UNFINISHED:
                self.metrics.record_finished(
                    info.model, info.status.value, self._failed_gates(info)
                )
                log.info("retrain run ended", extra=_run_fields(info))
            self._seen[info.run_id] = info.status
        for model in {*self.metrics.models, *active}:
            self.metrics.set_active(model, active.get(model))

    def _failed_gates(self, info: RunInfo) -> list[str]:
        if info.status is not RunStatus.GATE_FAILED:
            return []
        for rec in self.controller.steps(info.run_id):
            if rec.step == "gates":
                return [str(g) for g in rec.output.get("failed", [])]
        return []

    # -- inputs ----------------------------------------------------------------------------
    def _consume_drift(self) -> None:
        deliveries = self.drift.fetch(self.settings.batch_size, timeout_s=self._wait())
        for d in deliveries:
            ev = d.event
            if ev.type != DRIFT_DETECTED:
                d.ack()
                continue
            try:
                trigger = trigger_from_event(ev, at=self.clock())
            except InvalidInputError as exc:
                self._dead_letter(d, f"malformed {ev.type}: {exc}")
                continue
            if not self._submit(trigger):
                d.nak(self.settings.poll_timeout_s * 10)  # deferred: decide again later
                continue
            d.ack()

    def _consume_signals(self) -> None:
        deliveries = self.signals.fetch(self.settings.batch_size, timeout_s=self._wait())
        good: list[tuple[Delivery, CanarySignal]] = []
        for d in deliveries:
            if d.event.type not in _SIGNAL_TYPES:
                d.ack()
                continue
            try:
                good.append((d, signal_from_event(d.event)))
            except InvalidInputError as exc:
                self._dead_letter(d, f"malformed {d.event.type}: {exc}")
        if good:
            applied = self.store.apply(self.signals, good)
            if applied:
                log.info("canary signals recorded", extra={"applied": applied})

    def _scheduled(self) -> None:
        if self._schedule is None:
            return
        now = self.clock()
        for model in self.settings.models:
            trigger = self._schedule.due(model, self._slots.get(model), now)
            if trigger is not None and self._submit(trigger):
                self._slots[model] = datetime.fromisoformat(str(trigger.evidence["slot"]))

    def _submit(self, trigger: Trigger) -> bool:
        """Submit (a started run is advanced later in the tick); False when deferred (the
        trigger must be offered again)."""
        decision = self.controller.submit(trigger, self.settings.params)
        self.metrics.record_trigger(trigger.model, trigger.kind.value, decision.action.value)
        self.submitted[decision.action.value] = self.submitted.get(decision.action.value, 0) + 1
        log.info(
            "retrain trigger",
            extra={"trigger": trigger.key, "model": trigger.model, **decision.to_dict()},
        )
        return decision.action is not Action.DEFER

    def _dead_letter(self, d: Delivery, reason: str) -> None:
        d.term(reason)
        self.dead_letters += 1
        log.warning(
            "event dead-lettered",
            extra={"event_id": d.event.id, "type": d.event.type, "reason": reason},
        )

    def _wait(self) -> float:
        # half the tick each, so one tick waits poll_timeout_s at most when both are idle
        return self.settings.poll_timeout_s / 2

    def close(self) -> None:
        self.controller.close()
        self.store.close()


def _run_fields(info: RunInfo) -> dict[str, Any]:
    return {
        "run_id": info.run_id,
        "model": info.model,
        "status": info.status.value,
        "step": info.step,
        "trigger": info.trigger_key,
        "detail": info.detail,
    }


def _versions(s: Settings) -> tuple[str, str]:
    """The run's code version and lock hash: as configured; where left empty and the
    executors are the default (real) ones, detected as keel.pipelines.local does."""
    code, lock = s.code_version, s.lock_hash
    if (not code or not lock) and s.executors == DEFAULT_EXECUTORS:
        from keel.pipelines.local import detect_versions

        found_code, found_lock = detect_versions()
        code, lock = code or found_code, lock or found_lock
    return code, lock


def build_executors(settings: Settings, bus: Bus) -> Executors:
    """Resolve ``settings.executors`` and call it with home, bus and executor_options. The
    default (keel.pipelines.local) executors' options are recorded in the home
    (``pipelines/options.json``), so ``keel reproduce`` needs no ``--pipelines-options``."""
    factory = load_factory(settings.executors)
    home = settings.home.absolute()
    try:
        executors = factory(home=home, bus=bus, options=dict(settings.executor_options))
    except (TypeError, ValueError) as exc:
        raise AppConfigError(
            f"executors {settings.executors!r} refused its options: {type(exc).__name__}: {exc}"
        ) from None
    if settings.executors == DEFAULT_EXECUTORS:
        # where `keel reproduce MODEL@REF` with this home finds how the sets were built
        from keel.pipelines.reproduce import record_options

        record_options(home, settings.executor_options)
    return executors


def run(settings: Settings, ctx: AppContext) -> None:
    """Run until ``ctx.stop`` is set."""
    load_factory(settings.executors)  # a wrong setting fails before anything is opened
    home = settings.home.absolute()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AppError(f"cannot create home {home}: {exc.strerror}") from None
    bus = open_bus(settings.bus_url or default_url({**os.environ, "KEEL_HOME": str(home)}))
    try:
        loop = RetrainLoop(settings, bus, build_executors(settings, bus), stop=ctx.stop.is_set)
        try:
            server = start_metrics_server(
                loop.metrics.metrics.registry,
                host=settings.metrics_host,
                port=settings.metrics_port,
            )
            try:
                loop.start()
                ctx.ready(
                    db=str(settings.db_path),
                    metrics_port=server.port,
                    runs=len(loop._seen),
                    reclaimed=getattr(loop.drift, "reclaimed", 0),
                )
                while not ctx.stop.is_set():
                    loop.tick()
                    if loop.bus_down:  # no fetch waited this tick
                        ctx.stop.wait(settings.poll_timeout_s)
            finally:
                server.stop()
                ctx.report(
                    dead_letters=loop.dead_letters,
                    triggers=dict(loop.submitted),
                    bus_errors=loop.bus_errors,
                )
        finally:
            loop.close()
    finally:
        bus.close()


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    return APP.main(run, argv, env)


if __name__ == "__main__":
    sys.exit(main())
