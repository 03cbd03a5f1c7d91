"""The drift-monitor service and the ``drift.detected`` contract.

`DriftMonitorService` consumes a prediction log (events of type ``prediction.made`` and
``label.observed``), feeds a `StreamingMonitor`, and hands one `DriftDetected` per drift
episode to an injected ``publish``. keel.drift does not import the event bus: the consumer,
its deliveries and events are Protocols here, satisfied by ``keel.events`` objects.

Input payloads:

* ``prediction.made``: ``{"features": {name: value, ...}, "score": p?}``, ``event_time`` =
  when the prediction was made.
* ``label.observed``: ``{"score": p, "label": 0|1}``, ``event_time`` = the prediction's time.

Crash-exact: each fetched batch is applied, then the monitor's snapshot, the consumer's
progress (highest stream sequence applied) and the windows it closed are committed in ONE
transaction of the `MonitorStore`, and only then are deliveries settled. A redelivery of a
committed event (sequence at or below the progress) is acked without being applied again; a
restart resumes from the snapshot, and a consumer attached with an ``instance`` gets its
in-flight events back first, so the windows equal those of an uninterrupted run. Run ONE
process per durable consumer (window state is per process).

Poison-proof: an event that cannot be read (not JSON, not an object, a non-numeric value for a
numeric feature, a score outside [0, 1], a time far in the future) or that arrives after its
windows closed is dead-lettered with the reason (via ``Delivery.term``); the rest of the
batch is applied and the service keeps running.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import polars as pl

from keel.drift._errors import DriftError, InvalidInputError
from keel.drift._metrics import DriftMetrics
from keel.drift._monitor import StreamingMonitor, WindowConfig
from keel.drift._policy import DriftPolicy
from keel.drift._profile import NumericSummary, ReferenceProfile
from keel.drift._report import ReportWindow

PREDICTION_TYPE = "prediction.made"
LABEL_TYPE = "label.observed"
DRIFT_DETECTED = "drift.detected"

_ID = "__id"
_MAX_DETAIL = 200
_TIME_FMT = "%Y-%m-%dT%H:%M:%SZ"


# -- the drift.detected contract ----------------------------------------------------------
def episode_event_id(model: str, window_start: datetime) -> str:
    """Stable event id of the ``drift.detected`` event of the episode starting at
    ``window_start``: re-evaluating the same window after a restart publishes the same id,
    which the bus deduplicates."""
    key = f"{model}|{window_start.astimezone(UTC).strftime(_TIME_FMT)}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _parse_time(text: object, what: str) -> datetime:
    if not isinstance(text, str):
        raise InvalidInputError(f"{what} must be an ISO-8601 UTC time string, got {text!r}")
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"{what} is not an ISO-8601 time: {text[:40]!r}") from None
    if t.tzinfo is None:
        raise InvalidInputError(f"{what} has no time zone: {text[:40]!r}")
    return t.astimezone(UTC)


@dataclass(frozen=True)
class DriftDetected:
    """The payload of a ``drift.detected`` event: one per drift episode, keyed by model."""

    TYPE: ClassVar[str] = DRIFT_DETECTED

    model: str
    window_start: datetime
    window_end: datetime
    rows: int
    drifted: tuple[str, ...]
    drift_share: float
    scores: Mapping[str, float]
    reason: str
    quality_issues: tuple[Mapping[str, Any], ...] = ()

    @property
    def event_id(self) -> str:
        return episode_event_id(self.model, self.window_start)

    def to_payload(self) -> dict[str, Any]:
        """The JSON object carried by the event (times as ISO-8601 UTC strings)."""
        return {
            "model": self.model,
            "window_start": self.window_start.astimezone(UTC).strftime(_TIME_FMT),
            "window_end": self.window_end.astimezone(UTC).strftime(_TIME_FMT),
            "rows": self.rows,
            "drifted": list(self.drifted),
            "drift_share": self.drift_share,
            "scores": dict(self.scores),
            "reason": self.reason,
            "quality_issues": [dict(q) for q in self.quality_issues],
        }

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> DriftDetected:
        """Parse an event payload; InvalidInputError naming the field if malformed."""
        if not isinstance(data, Mapping):
            raise InvalidInputError("drift.detected payload must be a JSON object")
        try:
            return cls(
                model=str(data["model"]),
                window_start=_parse_time(data["window_start"], "window_start"),
                window_end=_parse_time(data["window_end"], "window_end"),
                rows=int(data["rows"]),
                drifted=tuple(str(x) for x in data["drifted"]),
                drift_share=float(data["drift_share"]),
                scores={str(k): float(v) for k, v in dict(data["scores"]).items()},
                reason=str(data["reason"]),
                quality_issues=tuple(dict(q) for q in data.get("quality_issues", ())),
            )
        except KeyError as exc:
            raise InvalidInputError(f"drift.detected payload lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"drift.detected payload is malformed: {exc}") from None

    @classmethod
    def from_window(cls, model: str, window: ReportWindow) -> DriftDetected | None:
        """The episode event of ``window``, or None unless it starts a drift episode."""
        d, r = window.decision, window.result
        if d is None or not d.episode_start:
            return None
        if not r.window_start or not r.window_end:
            raise DriftError("a monitored window has no start/end time")
        top = sorted(d.scores.items(), key=lambda kv: -kv[1])[:20]
        return cls(
            model=model,
            window_start=_parse_time(r.window_start, "window_start"),
            window_end=_parse_time(r.window_end, "window_end"),
            rows=r.n_rows,
            drifted=tuple(d.drifted),
            drift_share=d.drift_share,
            scores=dict(top),
            reason=d.reason,
            quality_issues=tuple(q.to_dict() for q in r.quality)[:50],
        )


# -- the seams ----------------------------------------------------------------------------
class EventLike(Protocol):
    """What the service reads of an event (``keel.events.Event`` satisfies it)."""

    @property
    def id(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def event_time(self) -> datetime: ...

    def json(self) -> Any: ...


class DeliveryLike(Protocol):
    """One delivery (``keel.events.Delivery``): its event, stream sequence, and ``term``."""

    @property
    def event(self) -> EventLike: ...

    @property
    def seq(self) -> int: ...

    def term(self, reason: str) -> None: ...


D = TypeVar("D", bound=DeliveryLike)


class MonitorConsumer(Protocol[D]):
    """A durable consumer (``keel.events.Consumer``)."""

    def fetch(self, max_messages: int = 500, timeout_s: float = 1.0) -> list[D]: ...

    def ack_all(self, deliveries: Sequence[D]) -> None: ...


class MonitorStore(Protocol):
    """Where the service commits its state and closed windows, atomically."""

    def load(self, name: str) -> bytes | None: ...

    def commit(self, state: Mapping[str, bytes], windows: Sequence[ReportWindow]) -> None: ...

    def windows(self) -> list[dict[str, Any]]: ...


class MemoryMonitorStore:
    """Process-local store (tests; a monitor that may start over)."""

    def __init__(self) -> None:
        self._state: dict[str, bytes] = {}
        self._windows: dict[str, dict[str, Any]] = {}

    def load(self, name: str) -> bytes | None:
        return self._state.get(name)

    def commit(self, state: Mapping[str, bytes], windows: Sequence[ReportWindow]) -> None:
        self._state.update(state)
        for w in windows:
            self._windows[str(w.result.window_end)] = w.to_dict()

    def windows(self) -> list[dict[str, Any]]:
        return [self._windows[k] for k in sorted(self._windows)]


class SQLiteMonitorStore:
    """The embedded store: one SQLite file (WAL), state and window results in one commit."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, data BLOB NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS windows (window_end TEXT PRIMARY KEY, "
                "window_start TEXT, result TEXT NOT NULL)"
            )
        except (sqlite3.Error, OSError) as exc:
            raise DriftError(f"cannot open the monitor store {self.path}: {exc}") from exc

    def load(self, name: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM state WHERE name=?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def commit(self, state: Mapping[str, bytes], windows: Sequence[ReportWindow]) -> None:
        rows = [
            (str(w.result.window_end), w.result.window_start, json.dumps(w.to_dict()))
            for w in windows
        ]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO state VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                    "data=excluded.data",
                    list(state.items()),
                )
                self._db.executemany("INSERT OR REPLACE INTO windows VALUES (?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise DriftError(f"monitor store commit to {self.path} failed: {exc}") from exc

    def windows(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT result FROM windows ORDER BY window_end").fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- the service --------------------------------------------------------------------------
def _short(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class DriftMonitorService(Generic[D]):
    """Consumer loop: ``step()`` fetches a batch, observes it, publishes episode events,
    commits, settles. ``run(stop)`` loops until ``stop`` is set."""

    def __init__(
        self,
        profile: ReferenceProfile,
        window: WindowConfig,
        consumer: MonitorConsumer[D],
        publish: Callable[[DriftDetected], None],
        *,
        model: str = "default",
        policy: DriftPolicy | None = None,
        store: MonitorStore | None = None,
        metrics: DriftMetrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        batch_size: int = 1000,
        poll_timeout_s: float = 1.0,
        max_future: timedelta = timedelta(hours=1),
        transient: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.profile = profile
        self.policy = policy or DriftPolicy()
        self.window = replace(window, id_column=_ID, score_column=window.score_column or "score")
        self.consumer = consumer
        self.publish = publish
        self.model = model
        self.store: MonitorStore = store if store is not None else MemoryMonitorStore()
        self.metrics = metrics or DriftMetrics(policy=self.policy)
        self.clock = clock
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.max_future = max_future
        self.transient = transient  # bus errors that mean "retry later" (broker restarting)
        self.monitor = StreamingMonitor(profile, self.window, policy=self.policy)
        snap = self.store.load("monitor")
        if snap:
            self.monitor.restore(snap)
        raw = self.store.load("progress")
        progress = json.loads(raw) if raw else {}
        self._hwm = int(progress.get("seq", 0))
        self._carry: dict[str, str] = dict(progress.get("dead", {}))
        self.published: list[DriftDetected] = []
        self.dead_letters = 0
        self.redeliveries = 0
        self._numeric = {n for n, s in profile.columns.items() if isinstance(s, NumericSummary)}

    # -- one batch ----------------------------------------------------------------------
    def step(self) -> list[ReportWindow]:
        try:
            ds = self.consumer.fetch(max_messages=self.batch_size, timeout_s=self.poll_timeout_s)
        except self.transient:
            threading.Event().wait(self.poll_timeout_s)
            return []
        if not ds:
            return []
        return self.apply(ds)

    def apply(self, deliveries: Sequence[D]) -> list[ReportWindow]:
        """Observe ``deliveries``, publish, commit, then settle them."""
        preds: list[dict[str, Any]] = []
        labels: list[dict[str, Any]] = []
        dead: dict[str, str] = {}
        hwm = self._hwm
        for d in deliveries:
            ev = d.event
            if d.seq <= self._hwm:  # committed already: a redelivery
                self.redeliveries += 1
                if ev.id in self._carry:
                    dead[ev.id] = self._carry[ev.id]
                continue
            hwm = max(hwm, d.seq)
            try:
                kind, row = self._parse(ev)
            except (InvalidInputError, ValueError, TypeError) as exc:
                dead[ev.id] = _short(f"invalid: {exc}")
                continue
            if kind == "prediction":
                preds.append(row)
            elif kind == "label":
                labels.append(row)
        windows: list[ReportWindow] = []
        if preds:
            windows = self.monitor.observe(self._frame(preds))
            for i in self.monitor.last_late_ids:
                dead[i] = "late: its windows had closed (beyond the allowed lateness)"
            self.metrics.record_late(len(self.monitor.last_late_ids))
        if labels:
            self.monitor.observe_labels(
                pl.DataFrame(
                    labels,
                    schema={
                        "event_time": pl.Datetime("us", "UTC"),
                        "score": pl.Float64,
                        "label": pl.Float64,
                    },
                )
            )
        for w in windows:
            self.metrics.record(w)
            episode = DriftDetected.from_window(self.model, w)
            if episode is not None:
                self.publish(episode)  # before the commit: a crash re-publishes the same id
                self.published.append(episode)
        carry = {**self._carry, **dead}
        progress = json.dumps({"seq": hwm, "dead": carry}).encode()
        self.store.commit({"monitor": self.monitor.snapshot(), "progress": progress}, windows)
        self._hwm = hwm
        # Committed dead letters stay remembered until their term succeeds: if the bus fails
        # mid-settlement (broker restarting), the redelivery is dead-lettered, not just acked.
        self._carry = carry
        try:  # committed: a failed settlement only means redeliveries, absorbed by seq
            ok = [d for d in deliveries if d.event.id not in dead]
            if ok:
                self.consumer.ack_all(ok)
            for d in deliveries:
                reason = dead.get(d.event.id)
                if reason is not None:
                    d.term(reason)
                    self._carry.pop(d.event.id, None)
                    self.dead_letters += 1
        except self.transient:
            pass
        return windows

    def _parse(self, ev: EventLike) -> tuple[str, dict[str, Any]]:
        t = ev.event_time
        if t.tzinfo is None:
            raise InvalidInputError("event_time is timezone-naive")
        if t > self.clock() + self.max_future:
            raise InvalidInputError(f"future: event_time {t.isoformat()} is ahead of the clock")
        if ev.type not in (PREDICTION_TYPE, LABEL_TYPE):
            return "other", {}
        try:
            body = ev.json()
        except Exception as exc:  # the bus's own decode error, whatever its class
            raise InvalidInputError(f"payload is not JSON ({type(exc).__name__})") from None
        if not isinstance(body, dict):
            raise InvalidInputError(f"payload is a JSON {type(body).__name__}, not an object")
        score = body.get("score")
        if score is not None and not (_is_number(score) and 0.0 <= float(score) <= 1.0):
            raise InvalidInputError(f"score must be a probability in [0, 1], got {_repr(score)}")
        if ev.type == LABEL_TYPE:
            label = body.get("label")
            if score is None or label not in (0, 1) or isinstance(label, float):
                raise InvalidInputError("a label needs a score in [0, 1] and a label of 0 or 1")
            return "label", {"event_time": t, "score": float(score), "label": float(label)}
        feats = body.get("features")
        if not isinstance(feats, dict):
            raise InvalidInputError("prediction payload needs a 'features' object")
        row: dict[str, Any] = {"event_time": t, _ID: ev.id, "score": score}
        for name, v in feats.items():
            if name in ("event_time", _ID, "score"):
                raise InvalidInputError(f"feature name {name!r} is reserved")
            if name in self._numeric:
                if v is not None and not _is_number(v):
                    raise InvalidInputError(f"feature {name!r} must be a number, got {_repr(v)}")
                x = None if v is None else float(v)
                row[name] = x if x is not None and math.isfinite(x) else None
            elif v is None or isinstance(v, str | int | float | bool):
                row[name] = None if v is None else str(v)
            else:
                raise InvalidInputError(f"feature {name!r} must be a scalar, got {_repr(v)}")
        return "prediction", row

    def _frame(self, rows: list[dict[str, Any]]) -> pl.DataFrame:
        schema: dict[str, pl.DataType] = {
            "event_time": pl.Datetime("us", "UTC"),
            _ID: pl.String(),
            "score": pl.Float64(),
        }
        for r in rows:
            for k in r:
                if k not in schema:
                    schema[k] = pl.Float64() if k in self._numeric else pl.String()
        frame = pl.DataFrame(rows, schema=schema)
        if frame["score"].null_count() == frame.height:
            frame = frame.drop("score")
        return frame

    def flush(self) -> list[ReportWindow]:
        """Close all open windows (end of a replay), publish and commit them."""
        windows = self.monitor.flush()
        for w in windows:
            self.metrics.record(w)
            episode = DriftDetected.from_window(self.model, w)
            if episode is not None:
                self.publish(episode)
                self.published.append(episode)
        progress = json.dumps({"seq": self._hwm, "dead": self._carry}).encode()
        self.store.commit({"monitor": self.monitor.snapshot(), "progress": progress}, windows)
        return windows

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set (each step commits; nothing to flush on stop)."""
        while not stop.is_set():
            self.step()


def _repr(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."
