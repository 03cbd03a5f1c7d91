"""The feature worker loop: events in, streaming state, online values and offline event log out.

Crash-exact (a SIGKILL at any point ends in the same online store, offline log and state as an
uninterrupted run):

* **One commit.** A flush writes the offline log part(s) under a name fixed in advance
  (``part-<durable>-<flush number>``), then saves every view's snapshot and the worker's own
  record (the next flush number, the dead letters not yet settled) in ONE state-store
  transaction, and only then settles the deliveries. A restart discards parts carrying the
  uncommitted flush number. Redeliveries of committed events are no-ops: each commit also
  stores its event ids (applied, and refused-but-logged) in the same transaction, kept for the
  bus's redelivery horizon (``max_deliver x (ack_wait + largest backoff)``) — an ack or a
  dead-lettering lost in a broker restart comes back that late, after the engines' own id
  memory has moved on — so nothing is applied or logged twice; online writes are conditional
  on event time, so re-applying is harmless.
* **Nothing acked that was not applied or dead-lettered.** Events refused by a view (invalid
  payload, too late, from the future) are dead-lettered on the bus with the reason
  (requeueable), after the commit; too-late and future events still reach the offline log, so
  a backfill can correct what streaming refused.
* **Ordering across restarts.** The worker attaches with a consumer `instance`, so the bus
  hands its own in-flight deliveries back at once, ahead of newer events (see
  ``keel.events.Bus.consumer``); the engine's lateness rule is sequential (it does not depend
  on how events are cut into batches).
* **Poison-proof.** A batch whose processing raises (anything but ``UnavailableError``) is
  rolled back to the last commit and retried one event at a time; the event that still fails
  is dead-lettered (reason ``failed``) and the worker keeps running. ``UnavailableError``
  (store or disk trouble) propagates without committing: the process exits, and a restart
  resumes from the last commit.

Stopping (``stop`` event set, e.g. on SIGTERM) finishes the batch in hand, flushes and settles.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import polars as pl

from keel.events import ConsumerInfo, Delivery, Event
from keel.events import UnavailableError as EventsUnavailableError
from keel.features._definitions import EventSource, FeatureView
from keel.features._errors import InvalidDefinitionError, UnavailableError
from keel.features._stores import MemoryStateStore, OfflineStore, OnlineStore, StateStore
from keel.features._streaming import StreamingEngine, events_to_frame
from keel.telemetry import ComponentMetrics

_log = logging.getLogger("keel.features.worker")

#: Dead-letter reasons the worker reports (metric label values, all initialised to 0).
DEAD_REASONS = ("invalid", "late", "future", "failed")
_MAX_DETAIL = 200  # characters of an error message kept in a dead-letter reason
_REMEMBERED_FLUSHES = 8  # the ids of this many recent commits are remembered

#: Columns of the offline raw event log (``event_log_dataset(type)``), as the worker writes
#: them; a backfill or a test that writes such a log by hand uses the same schema.
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


class WorkerConsumer(Protocol):
    """The bus seam the worker needs (a ``keel.events.Consumer``)."""

    durable: str

    def fetch(self, max_messages: int = 500, timeout_s: float = 1.0) -> list[Delivery]: ...

    def ack_all(self, deliveries: Sequence[Delivery]) -> None: ...

    def info(self) -> ConsumerInfo: ...


@dataclass
class WorkerStats:
    deliveries: int = 0
    ignored: int = 0
    applied: int = 0
    duplicates: int = 0
    #: Redeliveries only the durable id index recognised: committed more than
    #: ``_REMEMBERED_FLUSHES`` commits earlier and forgotten by the engines (past allowed
    #: lateness) — e.g. an ack lost in a broker restart, back after ``ack_wait``. Without the
    #: index each would have been taken for a fresh late event and logged a second time.
    index_redeliveries: int = 0
    online_writes: int = 0
    flushes: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)


def _redelivery_horizon_s(consumer: object) -> float:
    """How long after its first delivery an event can still come back: ``max_deliver x
    (ack_wait_s + largest backoff)`` of the consumer's config (0 for a consumer without one)."""
    cfg = getattr(consumer, "config", None)
    try:
        backoff = max((float(b) for b in getattr(cfg, "backoff_s", ()) or ()), default=0.0)
        return float(cfg.max_deliver) * (float(cfg.ack_wait_s) + backoff)  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        return 0.0


def _short(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


class FeatureWorker:
    """Runs views of one event stream: ``step()`` processes one fetched batch; ``run()`` loops.

    Every view needs an ``id_column`` (the event id is how redeliveries are recognised)."""

    def __init__(
        self,
        views: Sequence[FeatureView],
        consumer: WorkerConsumer,
        online: OnlineStore,
        *,
        offline: OfflineStore | None = None,
        state: StateStore | None = None,
        metrics: ComponentMetrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        batch_size: int = 500,
        fetch_timeout_s: float = 0.5,
        flush_interval_s: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not views:
            raise InvalidDefinitionError("the feature worker needs at least one feature view")
        for v in views:
            if not isinstance(v.source, EventSource):
                raise InvalidDefinitionError(
                    f"view {v.name!r} is not event-sourced; the worker cannot run it"
                )
            if v.id_column is None:
                raise InvalidDefinitionError(
                    f"view {v.name!r} has no id_column: the worker needs one to apply each "
                    "event once across redeliveries (e.g. id_column='event_id')"
                )
        self.views = list(views)
        self.consumer = consumer
        self.online = online
        self.offline = offline
        self.state: StateStore = state if state is not None else MemoryStateStore()
        self.clock = clock
        self.batch_size = batch_size
        self.fetch_timeout_s = fetch_timeout_s
        self.flush_interval_s = flush_interval_s
        self._mono = monotonic
        self._wall = wall_clock  # commit times of the id index (unix s; survive restarts)
        self._types = {v.source.event_type for v in self.views if isinstance(v.source, EventSource)}
        self._record_key = f"keel.worker/{consumer.durable}"
        self.engines: dict[str, StreamingEngine] = {}
        self._restore_committed()
        raw = self.state.load(self._record_key)
        record = json.loads(raw) if raw else {}
        self._flush_no = int(record.get("flushes", 0))
        #: Dead letters committed but perhaps not settled before a crash: event id -> reason.
        self._carry: dict[str, str] = dict(record.get("dead", {}))
        #: Ids applied by recent commits (id -> flush number): a redelivery of one is skipped
        #: whatever the engines' id memory has pruned since. Kept durably, one state entry per
        #: commit, for the bus's redelivery horizon (an ack lost in a broker restart comes
        #: back ``ack_wait`` later) and at least the last few commits.
        self._horizon_s = _redelivery_horizon_s(consumer)
        self._committed: dict[str, int] = dict(record.get("done", {}))  # pre-index records
        self._legacy = bool(self._committed)
        #: Ids refused by a view (late, future) but written to the offline log by recent
        #: commits: a redelivery is dead-lettered again, never logged twice.
        self._logged_dead: dict[str, int] = {}
        self._id_flushes: dict[int, float] = {}  # flush number -> commit time (unix s)
        self._ids_by_flush: dict[int, tuple[list[str], list[str]]] = {}
        for n, t in record.get("id_flushes", []):
            raw_ids = self.state.load(self._ids_key(int(n)))
            try:
                applied, logged_dead = json.loads(raw_ids) if raw_ids else ([], [])
            except ValueError:
                raise UnavailableError(
                    f"state entry {self._ids_key(int(n))!r} is not a Keel id index (written by "
                    "another version, or damaged): restore the state store, or delete the "
                    f"worker's entries ({self._record_key}*) to rebuild from the bus"
                ) from None
            self._id_flushes[int(n)] = float(t)
            self._ids_by_flush[int(n)] = (applied, logged_dead)
            self._committed.update((i, int(n)) for i in applied)
            self._logged_dead.update((i, int(n)) for i in logged_dead)
        if self.offline is not None:  # parts a crash left between write and commit
            for t in sorted(self._types):
                self.offline.discard(event_log_dataset(t), self._part_name())
        self.stats = WorkerStats()
        self._pending: list[Delivery] = []
        self._unsettled: list[tuple[Delivery, str | None]] = []  # committed, settle failed
        self._dead: dict[str, str] = {}  # event id -> reason, settled at the next flush
        self._log_rows: list[dict[str, Any]] = []
        self._log_ids: set[str] = set()  # event ids of _log_rows
        self._first_pending: float | None = None
        self._newest: dict[str, datetime] = {}
        self._m = _WorkerMetrics(metrics, [v.name for v in self.views]) if metrics else None

    def _ids_key(self, flush_no: int) -> str:
        return f"{self._record_key}/ids/{flush_no:012d}"

    def _part_name(self) -> str:
        return f"{self.consumer.durable}-{self._flush_no:012d}"

    def _restore_committed(self) -> None:
        for v in self.views:
            snap = self.state.load(namespace(v))
            self.engines[v.name] = (
                StreamingEngine.restore(v, snap, clock=self.clock)
                if snap
                else StreamingEngine(v, clock=self.clock)
            )

    # -- one batch ------------------------------------------------------------------
    def step(self) -> int:
        """Fetch and process one batch; flush (offline log + snapshot + settle) when due."""
        try:
            deliveries = self.consumer.fetch(
                max_messages=self.batch_size, timeout_s=self.fetch_timeout_s
            )
        except EventsUnavailableError as exc:  # broker restarting: nothing is lost, wait
            _log.warning("event bus unavailable, retrying", extra={"error": _short(str(exc))})
            time.sleep(self.fetch_timeout_s)
            deliveries = []
        if deliveries:
            self._process(deliveries)
        if self._pending and (
            self._first_pending is not None
            and self._mono() - self._first_pending >= self.flush_interval_s
        ):
            self.flush()
        elif self._unsettled and not self._pending:
            self._settle(self._unsettled)
        self._observe()
        return len(deliveries)

    def _process(self, deliveries: Sequence[Delivery]) -> None:
        try:
            self._apply(deliveries)
        except UnavailableError:
            raise
        except Exception as exc:  # a poison event somewhere in the batch: isolate it
            _log.warning(
                "batch failed, retrying its events one by one",
                extra={"error": _short(f"{type(exc).__name__}: {exc}")},
            )
            self._isolate(deliveries)
        if self._first_pending is None and self._pending:
            self._first_pending = self._mono()

    def _apply(self, deliveries: Sequence[Delivery]) -> None:
        """Apply one batch to every view; record its log rows and dead letters. Raises before
        recording anything if a view fails (the engines may then hold part of the batch)."""
        events = [d.event for d in deliveries]
        redelivered = {e.id for e in events if e.id in self._committed or e.id in self._carry}
        self._count_index_redeliveries(events)
        dead: dict[str, str] = {}
        fresh: dict[str, Event] = {}  # first sight of an event id: it goes to the offline log
        counts: list[tuple[str, int, int, list[str]]] = []
        writes = 0
        newest: dict[str, datetime] = {}
        for view in self.views:
            assert isinstance(view.source, EventSource)
            mine = [
                e for e in events if e.type == view.source.event_type and e.id not in redelivered
            ]
            if not mine:
                continue
            eng = self.engines[view.name]
            known = eng.seen_ids([e.id for e in mine])
            frame, invalid = events_to_frame(view, mine)
            bad = {d.event_id for d in invalid}
            for d in invalid:
                dead.setdefault(
                    str(d.event_id), _short(f"invalid for view {view.name}: {d.detail}")
                )
            report = eng.ingest(frame)
            for d in report.dead_letters:
                dead.setdefault(str(d.event_id), f"{d.reason} for view {view.name}: {d.detail}")
            for e in mine:
                if e.id not in known and e.id not in bad:
                    fresh.setdefault(e.id, e)
            if report.updated:
                values, times = eng.current(report.updated)
                rows = [
                    (k, {n: r[n] for n in view.feature_names}, t)
                    for k, r, t in zip(report.updated, values.to_dicts(), times, strict=True)
                ]
                writes += self.online.write(namespace(view), rows)
                newest[view.name] = max(times)
            reasons = [d.reason for d in invalid] + [d.reason for d in report.dead_letters]
            counts.append((view.name, report.applied, report.duplicates, reasons))
        # -- the batch is applied: record its outcome -------------------------------------
        for e in events:  # committed dead letters a crash kept from being settled
            reason = self._carry.get(e.id)
            if reason is not None:
                dead.setdefault(e.id, reason)
        self._dead.update(dead)
        self.stats.deliveries += len(events)
        self.stats.duplicates += len(redelivered)
        self.stats.ignored += sum(1 for e in events if e.type not in self._types)
        self.stats.online_writes += writes
        for name, t in newest.items():
            if name not in self._newest or t > self._newest[name]:
                self._newest[name] = t
        for name, applied, dups, reasons in counts:
            self.stats.applied += applied
            self.stats.duplicates += dups
            for r in reasons:
                self.stats.dead_letters[r] = self.stats.dead_letters.get(r, 0) + 1
            if self._m is not None:
                self._m.record(name, applied, dups, reasons)
        for e in fresh.values():
            if e.id in dead and dead[e.id].startswith(("invalid", "failed")):
                continue
            if e.id in self._logged_dead or e.id in self._log_ids:
                continue  # a refused event redelivered (its dead-lettering was lost): logged
            self._log_ids.add(e.id)
            self._log_rows.append(
                {
                    "event_id": e.id,
                    "type": e.type,
                    "key": e.key,
                    "event_time": e.event_time,
                    "publish_time": e.publish_time,
                    "payload": e.payload.decode("utf-8"),
                }
            )
        self._pending.extend(deliveries)

    def _count_index_redeliveries(self, events: Sequence[Event]) -> None:
        """Count the events of a batch that only the durable id index recognises (see
        ``WorkerStats.index_redeliveries``)."""
        oldest = self._flush_no - _REMEMBERED_FLUSHES
        aged = [
            e.id
            for e in events
            if self._committed.get(e.id, self._logged_dead.get(e.id, oldest)) < oldest
        ]
        if aged:
            known: set[str] = set()
            for eng in self.engines.values():
                known |= eng.seen_ids(aged)
            self.stats.index_redeliveries += sum(1 for i in aged if i not in known)

    def _isolate(self, deliveries: Sequence[Delivery]) -> None:
        """Roll back to the last commit, re-apply what was pending (it applied before), then
        apply the failed batch one event at a time, dead-lettering the events that fail."""
        pending = self._pending
        self._pending, self._dead, self._log_rows, self._log_ids = [], {}, [], set()
        self._restore_committed()
        if pending:
            self._apply(pending)
        for d in deliveries:
            snaps = {v.name: self.engines[v.name].snapshot() for v in self.views}
            try:
                self._apply([d])
            except UnavailableError:
                raise
            except Exception as exc:
                for v in self.views:
                    self.engines[v.name] = StreamingEngine.restore(
                        v, snaps[v.name], clock=self.clock
                    )
                reason = _short(f"failed: {type(exc).__name__}: {exc}")
                self._dead[d.event.id] = reason
                self._pending.append(d)
                self.stats.dead_letters["failed"] = self.stats.dead_letters.get("failed", 0) + 1
                if self._m is not None:
                    for v in self.views:
                        if d.event.type == getattr(v.source, "event_type", None):
                            self._m.record(v.name, 0, 0, ["failed"])

    def flush(self) -> None:
        """Commit pending work, then settle it: offline log part(s), then the views' snapshots
        and the worker record in one state transaction, then acks and dead letters."""
        if not self._pending:
            if self._unsettled:
                self._settle(self._unsettled)
            return
        if self.offline is not None and self._log_rows:
            log = pl.DataFrame(self._log_rows, schema=EVENT_LOG_SCHEMA).filter(
                pl.col("event_time").is_not_null()
            )
            for (etype,), part in log.group_by("type", maintain_order=True):
                self.offline.write(
                    event_log_dataset(str(etype)),
                    part,
                    time_column="event_time",
                    name=self._part_name(),
                )
        carry = {**self._carry, **self._dead}
        items = {namespace(v): self.engines[v.name].snapshot() for v in self.views}
        # -- the id index: this commit's ids in, commits past the redelivery horizon out ---
        now = self._wall()
        keep_from = self._flush_no - _REMEMBERED_FLUSHES
        expired = {
            n for n, t in self._id_flushes.items() if n <= keep_from and now - t > self._horizon_s
        }
        for n in expired:
            items[self._ids_key(n)] = b""  # deleted in the same transaction
        new_ids = list(dict.fromkeys(d.event.id for d in self._pending if d.event.id not in carry))
        new_dead = sorted(i for i in self._log_ids if i in carry)  # logged, refused by a view
        id_flushes = {n: t for n, t in self._id_flushes.items() if n not in expired}
        if new_ids or new_dead:
            items[self._ids_key(self._flush_no)] = json.dumps([new_ids, new_dead]).encode()
            id_flushes[self._flush_no] = now
        # ids of a record written before the index existed: kept for the last few commits
        legacy = (
            {
                i: n
                for i, n in self._committed.items()
                if n not in self._ids_by_flush and n > keep_from
            }
            if self._legacy
            else {}
        )
        items[self._record_key] = json.dumps(
            {
                "flushes": self._flush_no + 1,
                "dead": carry,
                "done": legacy,
                "id_flushes": sorted(id_flushes.items()),
            }
        ).encode()
        self.state.save_many(items)
        self._carry = carry  # committed dead letters, until their dead-lettering succeeds
        for n in expired:
            applied, logged_dead = self._ids_by_flush.pop(n, ([], []))
            for i in applied:
                if self._committed.get(i) == n:
                    del self._committed[i]
            for i in logged_dead:
                if self._logged_dead.get(i) == n:
                    del self._logged_dead[i]
        if self._legacy:
            for i, n in list(self._committed.items()):
                if n not in self._ids_by_flush and i not in legacy:
                    del self._committed[i]
            self._legacy = bool(legacy)
        if new_ids or new_dead:
            self._ids_by_flush[self._flush_no] = (new_ids, new_dead)
            self._committed.update((i, self._flush_no) for i in new_ids)
            self._logged_dead.update((i, self._flush_no) for i in new_dead)
        self._id_flushes = id_flushes
        self._flush_no += 1
        self.stats.flushes += 1
        # -- committed: settle (if the bus is away, retried at the next flush) ------------
        settle = self._unsettled + [(d, carry.get(d.event.id)) for d in self._pending]
        self._pending, self._dead, self._log_rows, self._log_ids = [], {}, [], set()
        self._settle(settle)

    def _settle(self, items: list[tuple[Delivery, str | None]]) -> None:
        """Ack the committed deliveries, dead-letter the refused ones (both idempotent); if
        the bus is unavailable keep them to retry (before their ack wait runs out)."""
        try:
            ok = [d for d, reason in items if reason is None]
            if ok:
                self.consumer.ack_all(ok)
            for d, reason in items:
                if reason is not None:
                    d.term(reason)
                    self._carry.pop(d.event.id, None)
            self._unsettled = []
        except EventsUnavailableError as exc:
            self._unsettled = items
            _log.warning("settling failed; will retry", extra={"error": _short(str(exc))})
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
        """Loop until ``stop`` is set; then flush and return (clean shutdown). An error
        propagates without committing: a restart resumes from the last commit."""
        while not stop.is_set():
            self.step()
        self.flush()


class _WorkerMetrics:
    def __init__(self, metrics: ComponentMetrics, views: Sequence[str]) -> None:
        from keel.telemetry import FeatureMetrics

        self.fm = FeatureMetrics(metrics)
        self._dead = metrics.counter(
            "dead_letters_total",
            "Events not applied and dead-lettered, by reason (invalid, late, future, failed).",
            labels=("feature_view", "reason"),
        )
        self._dups = metrics.counter(
            "duplicates_total", "Redelivered events dropped by id.", labels=("feature_view",)
        )
        self._lag = metrics.gauge(
            "worker_consumer_lag_events", "Events in the stream not yet delivered to the worker."
        )
        self._lag.set(0)
        for v in views:  # every series exists from start, at 0
            self.fm.count_events(v, 0, outcome="ok")
            self.fm.count_events(v, 0, outcome="error")
            self._dups.labels(feature_view=v).inc(0)
            for r in DEAD_REASONS:
                self._dead.labels(feature_view=v, reason=r).inc(0)

    def record(self, view: str, applied: int, dups: int, reasons: Sequence[str]) -> None:
        if applied:
            self.fm.count_events(view, applied, outcome="ok")
        if dups:
            self._dups.labels(feature_view=view).inc(dups)
        for r in reasons:
            self._dead.labels(feature_view=view, reason=r).inc()
        if reasons:  # every drop (late, invalid, future, failed) counts against the error SLI
            self.fm.count_events(view, len(reasons), outcome="error")

    def freshness(self, view: str, t: datetime, now: datetime) -> None:
        self.fm.set_freshness(view, t, now)

    def lag(self, n: int) -> None:
        self._lag.set(n)
