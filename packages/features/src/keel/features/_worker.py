"""The feature worker loop: events in, streaming state, online values and offline event log out.

At-least-once with idempotent effects: a delivery is acked only after its effects are
durable — online values written (conditional on event time, so replays are harmless), the
raw event appended to the offline log, and the streaming state snapshotted (its seen-id set
makes a redelivered event a no-op). Stopping (``stop`` event set, e.g. on SIGTERM) finishes
the batch in hand, flushes, snapshots and acks before returning.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from keel.features._definitions import EventSource, FeatureView
from keel.features._errors import InvalidDefinitionError
from keel.features._stores import OfflineStore, OnlineStore, StateStore
from keel.features._streaming import StreamingEngine, events_to_frame

EVENT_LOG_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "type": pl.String(),
    "key": pl.String(),
    "event_time": pl.Datetime("us", "UTC"),
    "publish_time": pl.Datetime("us", "UTC"),
    "payload": pl.String(),
}


def event_log_dataset(event_type: str) -> str:
    """Offline dataset name of the raw event log of ``event_type``."""
    return f"events.{event_type}"


def namespace(view: FeatureView) -> str:
    """Online-store namespace of a view: name and content version (a new definition starts fresh)."""
    return f"{view.name}:{view.version}"


def event_log_to_frame(view: FeatureView, log: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    """Decode an offline event log into the view's input shape (for backfills / training sets)."""
    lf = log.lazy() if isinstance(log, pl.DataFrame) else log
    from keel.features._definitions import FIELD_TYPES

    payload_fields = {c: FIELD_TYPES[t] for c, t in view.fields.items()}
    for k in view.join_keys:
        payload_fields.setdefault(k, pl.String())
    struct = pl.Struct(payload_fields)
    lf = lf.with_columns(pl.col("payload").str.json_decode(struct).alias("__p")).with_columns(
        [pl.col("__p").struct.field(c).alias(c) for c in view.fields]
        + [
            pl.coalesce(pl.col("__p").struct.field(k), pl.col("key")).alias(k)
            for k in view.join_keys
        ]
    )
    cols = [*view.join_keys, pl.col("event_time").alias(view.event_time)]
    if view.record_time is not None:
        cols.append(pl.col("publish_time").alias(view.record_time))
    if view.id_column is not None:
        cols.append(pl.col("event_id").alias(view.id_column))
    return lf.select([*cols, *view.fields])


@dataclass
class WorkerStats:
    deliveries: int = 0
    ignored: int = 0
    applied: int = 0
    online_writes: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)


class FeatureWorker:
    """Runs views of one event stream: ``step()`` processes one fetched batch; ``run()`` loops."""

    def __init__(
        self,
        views: Sequence[FeatureView],
        consumer: Any,
        online: OnlineStore,
        *,
        offline: OfflineStore | None = None,
        state: StateStore | None = None,
        metrics: Any = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        batch_size: int = 500,
        fetch_timeout_s: float = 0.5,
        flush_interval_s: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not views:
            raise InvalidDefinitionError("the feature worker needs at least one feature view")
        for v in views:
            if not isinstance(v.source, EventSource):
                raise InvalidDefinitionError(
                    f"view {v.name!r} is not event-sourced; the worker cannot run it"
                )
        self.views = list(views)
        self.consumer = consumer
        self.online = online
        self.offline = offline
        self.state = state
        self.clock = clock
        self.batch_size = batch_size
        self.fetch_timeout_s = fetch_timeout_s
        self.flush_interval_s = flush_interval_s
        self._mono = monotonic
        self.engines: dict[str, StreamingEngine] = {}
        for v in self.views:
            snap = state.load(namespace(v)) if state is not None else None
            self.engines[v.name] = (
                StreamingEngine.restore(v, snap, clock=clock)
                if snap
                else StreamingEngine(v, clock=clock)
            )
        self.stats = WorkerStats()
        self._pending: list[Any] = []
        self._log_rows: list[dict[str, Any]] = []
        self._first_pending: float | None = None
        self._newest: dict[str, datetime] = {}
        self._m = _WorkerMetrics(metrics) if metrics is not None else None

    # -- one batch ------------------------------------------------------------------
    def step(self) -> int:
        """Fetch and process one batch; flush (offline log + snapshot + ack) when due."""
        deliveries = self.consumer.fetch(
            max_messages=self.batch_size, timeout_s=self.fetch_timeout_s
        )
        if deliveries:
            self._process(deliveries)
        if self._pending and (
            self._first_pending is not None
            and self._mono() - self._first_pending >= self.flush_interval_s
        ):
            self.flush()
        self._observe()
        return len(deliveries)

    def _process(self, deliveries: Sequence[Any]) -> None:
        events = [d.event for d in deliveries]
        self.stats.deliveries += len(events)
        types = {v.source.event_type for v in self.views if isinstance(v.source, EventSource)}
        self.stats.ignored += sum(1 for e in events if e.type not in types)
        invalid_ids: set[str] = set()
        for view in self.views:
            assert isinstance(view.source, EventSource)
            mine = [e for e in events if e.type == view.source.event_type]
            if not mine:
                continue
            frame, invalid = events_to_frame(view, mine)
            invalid_ids.update(d.event_id for d in invalid if d.event_id is not None)
            eng = self.engines[view.name]
            report = eng.ingest(frame)
            dead = invalid + report.dead_letters
            for d in dead:
                self.stats.dead_letters[d.reason] = self.stats.dead_letters.get(d.reason, 0) + 1
            self.stats.applied += report.applied
            if report.updated:
                values, times = eng.current(report.updated)
                rows = [
                    (k, {n: r[n] for n in view.feature_names}, t)
                    for k, r, t in zip(report.updated, values.to_dicts(), times, strict=True)
                ]
                self.stats.online_writes += self.online.write(namespace(view), rows)
                newest = max(times)
                if view.name not in self._newest or newest > self._newest[view.name]:
                    self._newest[view.name] = newest
            if self._m is not None:
                self._m.record(view.name, report.applied, report.duplicates, dead)
        # The offline log keeps the raw events every view could read (invalid ones are dead letters).
        for ev in events:
            if ev.type in types and ev.id not in invalid_ids:
                self._log_rows.append(
                    {
                        "event_id": ev.id,
                        "type": ev.type,
                        "key": ev.key,
                        "event_time": ev.event_time,
                        "publish_time": ev.publish_time,
                        "payload": ev.payload.decode("utf-8"),
                    }
                )
        self._pending.extend(deliveries)
        if self._first_pending is None:
            self._first_pending = self._mono()

    def flush(self) -> None:
        """Make pending work durable, then ack it: offline log, state snapshots, acks."""
        if self.offline is not None and self._log_rows:
            log = pl.DataFrame(self._log_rows, schema=EVENT_LOG_SCHEMA).filter(
                pl.col("event_time").is_not_null()
            )
            for (etype,), part in log.group_by("type", maintain_order=True):
                self.offline.write(event_log_dataset(str(etype)), part, time_column="event_time")
        self._log_rows = []
        if self.state is not None:
            for v in self.views:
                self.state.save(namespace(v), self.engines[v.name].snapshot())
        if self._pending:
            self.consumer.ack_all(self._pending)
        self._pending = []
        self._first_pending = None

    def _observe(self) -> None:
        if self._m is None:
            return
        now = self.clock()
        for name, t in self._newest.items():
            self._m.freshness(name, t, now)
        try:
            info = self.consumer.info()
            self._m.lag(info.lag)
        except Exception:  # lag is best-effort observability, never a reason to stop
            pass

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set; then flush and return (clean shutdown)."""
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.flush()


class _WorkerMetrics:
    def __init__(self, metrics: Any) -> None:
        from keel.telemetry import FeatureMetrics

        self.fm = FeatureMetrics(metrics)
        self._dead = metrics.counter(
            "dead_letters_total",
            "Events not applied, by reason (late, future, invalid).",
            labels=("feature_view", "reason"),
        )
        self._dups = metrics.counter(
            "duplicates_total", "Redelivered events dropped by id.", labels=("feature_view",)
        )
        self._lag = metrics.gauge(
            "worker_consumer_lag_events", "Events in the stream not yet delivered to the worker."
        )

    def record(self, view: str, applied: int, dups: int, dead: Sequence[Any]) -> None:
        if applied:
            self.fm.count_events(view, applied, outcome="ok")
        if dups:
            self._dups.labels(feature_view=view).inc(dups)
        for d in dead:
            self._dead.labels(feature_view=view, reason=d.reason).inc()
            self.fm.count_events(view, 1, outcome="late" if d.reason == "late" else "error")

    def freshness(self, view: str, t: datetime, now: datetime) -> None:
        self.fm.set_freshness(view, t, now)

    def lag(self, n: int) -> None:
        self._lag.set(n)
