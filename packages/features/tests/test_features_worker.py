"""The worker loop against the real embedded event bus (keel.events SQLite backend)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from keel.events import Event, open_bus
from keel.features import (
    Aggregation,
    Entity,
    EventSource,
    FeatureView,
    FeatureWorker,
    OfflineStore,
    SQLiteOnlineStore,
    SQLiteStateStore,
    compute_at,
    event_log_dataset,
    event_log_to_frame,
    namespace,
)
from keel.telemetry import ComponentMetrics

T0 = datetime(2024, 6, 1, 10, tzinfo=UTC)
NOW = T0 + timedelta(hours=2)

VIEW = FeatureView(
    name="card_txn",
    source=EventSource("txn.created", stream="transactions"),
    entities=[Entity("card")],
    fields={"amount": "float"},
    features=[
        Aggregation("count", None, timedelta(minutes=10)),
        Aggregation("sum", "amount", timedelta(hours=1)),
        Aggregation("max", "amount", timedelta(hours=1)),
    ],
    id_column="event_id",
    allowed_lateness=timedelta(minutes=5),
)


def ev(i: int, card: str, minutes: float, amount: object, *, typ: str = "txn.created") -> Event:
    return Event.create(
        type=typ,
        key=card,
        event_time=T0 + timedelta(minutes=minutes),
        payload={"amount": amount},
        id=f"ev-{i}",
    )


def test_worker_updates_online_offline_and_state(tmp_path: Path) -> None:
    bus = open_bus(f"sqlite:///{tmp_path}/events.db")
    bus.publish_batch(
        "transactions",
        [
            ev(1, "a", 1, 10.0),
            ev(2, "a", 3, 5.0),
            ev(3, "b", 2, 7.0),
            ev(4, "a", 4, "oops"),  # wrong type -> invalid dead letter
            ev(5, "a", 30, 1.0),
            ev(6, "a", 2, 100.0),  # 28 min behind the newest: beyond the 5 min lateness
            ev(7, "x", 5, 1.0, typ="other.type"),  # not ours: ignored, acked
        ],
    )
    bus.publish("transactions", ev(1, "a", 1, 10.0))  # duplicate id: the bus itself dedupes
    online = SQLiteOnlineStore(tmp_path / "online.db")
    state = SQLiteStateStore(tmp_path / "state.db", clock=lambda: NOW)
    metrics = ComponentMetrics("features")
    w = FeatureWorker(
        [VIEW],
        bus.consumer("transactions", durable="fw"),
        online,
        offline=OfflineStore(tmp_path / "offline"),
        state=state,
        metrics=metrics,
        clock=lambda: NOW,
        flush_interval_s=3600,
    )
    while w.step():
        pass
    assert w.stats.dead_letters == {"invalid": 1, "late": 1}
    assert w.stats.ignored == 1
    a = online.read(namespace(VIEW), "a")
    assert a is not None
    assert a.values == {"count_10m": 1, "sum_amount_1h": 16.0, "max_amount_1h": 10.0}
    assert a.event_time == T0 + timedelta(minutes=30)
    assert (
        bus.consumer("transactions", durable="fw").info().ack_pending == 7
    )  # not acked before flush
    w.flush()
    assert bus.consumer("transactions", durable="fw").info().ack_pending == 0
    expo = metrics.exposition().decode()
    assert 'keel_features_dead_letters_total{feature_view="card_txn",reason="late"} 1.0' in expo
    assert 'keel_features_events_processed_total{feature_view="card_txn",outcome="ok"} 4.0' in expo

    # The offline event log replays through the batch engine to the same values.
    log = OfflineStore(tmp_path / "offline").read(event_log_dataset("txn.created"))
    frame = event_log_to_frame(VIEW, log).collect()
    assert sorted(frame["event_id"]) == [
        "ev-1",
        "ev-2",
        "ev-3",
        "ev-5",
        "ev-6",
    ]  # invalid ev-4 is not logged
    good = frame.filter(pl.col("event_id") != "ev-6")  # the stream dead-lettered ev-6 as too late
    at = pl.DataFrame({"card": ["a"], "timestamp": [T0 + timedelta(minutes=30)]})
    batch = compute_at(VIEW, good, at).row(0, named=True)
    assert {k: batch[k] for k in VIEW.feature_names} == a.values

    # A new worker resumes from the snapshot: redelivered ids are no-ops.
    w2 = FeatureWorker(
        [VIEW], bus.consumer("transactions", durable="fw2"), online, state=state, clock=lambda: NOW
    )
    assert w2.engines["card_txn"].counters["applied"] == 4
    while w2.step():
        pass
    assert w2.stats.applied == 0
    w2.flush()
    bus.close()


def test_run_stops_cleanly_and_acks(tmp_path: Path) -> None:
    bus = open_bus(f"sqlite:///{tmp_path}/events.db")
    bus.publish_batch("transactions", [ev(i, "c", i, 1.0) for i in range(20)])
    online = SQLiteOnlineStore(tmp_path / "online.db")
    w = FeatureWorker(
        [VIEW],
        bus.consumer("transactions", durable="fw"),
        online,
        clock=lambda: NOW,
        fetch_timeout_s=0.05,
    )
    stop = threading.Event()
    th = threading.Thread(target=w.run, args=(stop,))
    th.start()
    deadline = datetime.now(UTC) + timedelta(seconds=20)
    while (
        online.read(namespace(VIEW), "c") is None
        # latest event at minute 19 -> values at the end of its 10-minute bucket: (10m, 20m] holds 11..19
        or online.read(namespace(VIEW), "c").values["count_10m"] != 9  # type: ignore[union-attr]
    ):  # type: ignore[union-attr]
        assert datetime.now(UTC) < deadline, "worker did not apply the events"
        threading.Event().wait(0.02)
    stop.set()
    th.join(timeout=20)
    assert not th.is_alive()
    assert bus.consumer("transactions", durable="fw").info().ack_pending == 0
    bus.close()


def _drain(w: FeatureWorker) -> None:
    while w.step():
        pass
    w.flush()


def _online_dump(online: SQLiteOnlineStore) -> list[tuple[object, ...]]:
    return online._db.execute(
        "SELECT namespace, entity, event_time, payload FROM online_features ORDER BY 1, 2"
    ).fetchall()


def test_refused_events_are_dead_lettered_with_reason_and_late_ones_still_logged(
    tmp_path: Path,
) -> None:
    bus = open_bus(f"sqlite:///{tmp_path}/events.db")
    bus.publish_batch(
        "transactions",
        [
            ev(1, "a", 1, 10.0),
            ev(2, "a", 30, 1.0),
            ev(3, "a", 2, 100.0),  # too late
            ev(4, "a", 3, "oops"),  # invalid
            ev(5, "b", 60 * 24 * 30, 1.0),  # a month ahead of the clock: future
        ],
    )
    w = FeatureWorker(
        [VIEW],
        bus.consumer("transactions", durable="fw"),
        SQLiteOnlineStore(tmp_path / "online.db"),
        offline=OfflineStore(tmp_path / "offline"),
        clock=lambda: NOW,
    )
    _drain(w)
    dead = {d.event_id: d.reason for d in bus.dead_letters("transactions")}
    assert set(dead) == {"ev-3", "ev-4", "ev-5"}
    assert "late for view card_txn" in dead["ev-3"]
    assert "invalid for view card_txn" in dead["ev-4"]
    assert "future for view card_txn" in dead["ev-5"]
    assert bus.consumer("transactions", durable="fw").info().ack_pending == 0
    log = OfflineStore(tmp_path / "offline").read(event_log_dataset("txn.created")).collect()
    assert sorted(log["event_id"]) == ["ev-1", "ev-2", "ev-3", "ev-5"]  # late one kept for backfill
    # Requeued, the late event is a known id: acked, not applied twice.
    assert bus.requeue_dead_letters("transactions", ids=None) == 3
    _drain(w)
    assert w.engines["card_txn"].counters["applied"] == 2
    bus.close()


def test_sli_series_exist_from_start(tmp_path: Path) -> None:
    bus = open_bus(f"sqlite:///{tmp_path}/events.db")
    metrics = ComponentMetrics("features")
    FeatureWorker(
        [VIEW],
        bus.consumer("transactions", durable="fw"),
        SQLiteOnlineStore(tmp_path / "online.db"),
        metrics=metrics,
        clock=lambda: NOW,
    )
    expo = metrics.exposition().decode()
    for outcome in ("ok", "error"):
        assert (
            f'keel_features_events_processed_total{{feature_view="card_txn",outcome="{outcome}"}} 0.0'
            in expo
        )
    for reason in ("invalid", "late", "future", "failed"):
        assert (
            f'keel_features_dead_letters_total{{feature_view="card_txn",reason="{reason}"}} 0.0'
            in expo
        )
    bus.close()


def _run_with_crashes(tmp_path: Path, events: list[Event], crash_after: list[int]) -> tuple:
    """Process ``events``; after each step count in ``crash_after`` drop the worker without
    flushing (a SIGKILL: uncommitted work lost), optionally after writing an offline part, and
    start a new one on the same stores."""
    bus = open_bus(f"sqlite:///{tmp_path}/events.db")
    bus.publish_batch("transactions", events)
    online = SQLiteOnlineStore(tmp_path / "online.db")
    state = SQLiteStateStore(tmp_path / "state.db", clock=lambda: NOW)

    def worker() -> FeatureWorker:
        return FeatureWorker(
            [VIEW],
            bus.consumer("transactions", durable="fw", instance="fw-0"),
            online,
            offline=OfflineStore(tmp_path / "offline"),
            state=state,
            clock=lambda: NOW,
            batch_size=7,
            flush_interval_s=0,
            fetch_timeout_s=0.01,
            monotonic=lambda: 0.0,
        )

    w, steps, crashes = worker(), 0, list(crash_after)
    while True:
        n = w.step() if not crashes or steps != crashes[0] else -1
        steps += 1
        if n == -1:
            crashes.pop(0)
            # crash mid-batch: the next batch is fetched and applied but never committed
            w._process(w.consumer.fetch(7, 0.01))
            w = worker()
            continue
        if n == 0:
            break
    w.flush()
    log = OfflineStore(tmp_path / "offline").read(event_log_dataset("txn.created"))
    dead = sorted((d.event_id, d.reason) for d in bus.dead_letters("transactions"))
    rows = log.drop("publish_time").sort("event_id").collect().to_dicts()  # runs publish apart
    out = (_online_dump(online), rows, dead)
    assert bus.consumer("transactions", durable="fw").info().ack_pending == 0
    bus.close()
    return out


def test_crashes_end_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    rng = __import__("random").Random(7)
    events = [ev(i, f"c{i % 5}", i * 0.5 + rng.uniform(-8, 0), float(i % 11)) for i in range(120)]
    events.append(ev(999, "c1", 1, "bad"))
    clean = _run_with_crashes(tmp_path / "clean", events, [])
    crashed = _run_with_crashes(tmp_path / "crashed", events, [2, 3, 9, 10])
    assert crashed == clean
    assert any("late" in r for _, r in clean[2]) and any("invalid" in r for _, r in clean[2])


class _PoisonOnline(SQLiteOnlineStore):
    """An online store that fails on one entity: an effect that raises for one event."""

    def write(self, namespace: str, rows):  # type: ignore[no-untyped-def]
        if any(e == "poison" for e, _, _ in rows):
            raise RuntimeError("cannot store entity 'poison'")
        return super().write(namespace, rows)


def test_poison_events_are_dead_lettered_and_the_good_ones_in_the_batch_applied(
    tmp_path: Path,
) -> None:
    bus = open_bus(f"sqlite:///{tmp_path}/events.db")
    good = [ev(i, "g", i, 1.0) for i in range(5)]
    raw = [
        ev(10, "a", 6, "high"),  # "score": "high" style: a string where a float is declared
        Event.create(type="txn.created", key="a", event_time=T0, payload=[1, 2], id="ev-list"),
        ev(11, "a", 6, float("nan")),
        ev(12, "a", 6, None),
        ev(13, "poison", 6, 1.0),  # raises inside the worker's effect
        ev(14, "a", 60 * 24 * 30, 1.0),  # future
    ]
    bus.publish_batch("transactions", good[:2] + raw + good[2:])
    bus.publish(  # invalid UTF-8 in the payload bytes
        "transactions",
        Event.create(
            type="txn.created",
            key="a",
            event_time=T0,
            payload=b'{"amount": "\xff\xfe"}',
            id="ev-utf8",
        ),
    )
    online = _PoisonOnline(tmp_path / "online.db")
    w = FeatureWorker(
        [VIEW],
        bus.consumer("transactions", durable="fw"),
        online,
        offline=OfflineStore(tmp_path / "offline"),
        clock=lambda: NOW,
    )
    _drain(w)
    g = online.read(namespace(VIEW), "g")
    assert g is not None and g.values["sum_amount_1h"] == 5.0  # all five good events
    dead = {d.event_id: d.reason for d in bus.dead_letters("transactions")}
    assert dead["ev-13"].startswith("rejected: failed: RuntimeError")
    for i in ("ev-10", "ev-list", "ev-14", "ev-utf8"):
        assert i in dead
    assert w.stats.dead_letters["failed"] == 1
    assert bus.consumer("transactions", durable="fw").info().ack_pending == 0
    bus.close()


class _LosingAcks:
    """A consumer whose acks (and dead-letterings) of some events are lost once, as in a broker
    restart: the bus redelivers them after its ack wait, long after the worker committed them."""

    def __init__(self, inner: object, lose: set[str]) -> None:
        self._inner = inner
        self._lose = set(lose)
        self.durable = inner.durable  # type: ignore[attr-defined]
        self.config = inner.config  # type: ignore[attr-defined]

    def fetch(self, max_messages: int = 500, timeout_s: float = 1.0) -> list:
        out = self._inner.fetch(max_messages, timeout_s)  # type: ignore[attr-defined]
        for d in out:
            d._consumer = self  # settle through this wrapper
        return out

    def ack_all(self, deliveries: list) -> None:
        kept = [d for d in deliveries if d.event.id not in self._lose]
        self._lose -= {d.event.id for d in deliveries}
        self._inner.ack_all(kept)  # type: ignore[attr-defined]

    def _ack(self, deliveries: list) -> None:
        self.ack_all(deliveries)

    def _term(self, delivery: object, reason: str) -> None:
        eid = delivery.event.id  # type: ignore[attr-defined]
        if eid in self._lose:
            self._lose.discard(eid)
            return
        self._inner._term(delivery, reason)  # type: ignore[attr-defined]

    def info(self) -> object:
        return self._inner.info()  # type: ignore[attr-defined]


def test_a_lost_ack_redelivered_many_commits_later_is_not_logged_twice(tmp_path: Path) -> None:
    """The bus redelivers an event whose ack was lost up to its redelivery horizon later; by
    then many commits have passed and the engines forgot the id (it is past allowed lateness):
    the worker's durable id index must still know it — across a restart too — so the offline
    log holds every event once."""
    import time

    # 3000 events over 90 min: the engine prunes its id memory (past allowed lateness)
    events = [ev(i, f"c{i % 3}", i * 0.03, float(i)) for i in range(3000)]
    events.insert(1000, ev(5000, "c0", 20.0, 1.0))  # 10 min behind: late, dead-lettered, logged
    lost = {"ev-1", "ev-2", "ev-10", "ev-5000"}
    bus = open_bus(f"sqlite:///{tmp_path}/events.db")
    bus.publish_batch("transactions", events)
    state = SQLiteStateStore(tmp_path / "state.db", clock=lambda: NOW)

    def worker(consumer: object) -> FeatureWorker:
        return FeatureWorker(
            [VIEW],
            consumer,  # type: ignore[arg-type]
            SQLiteOnlineStore(tmp_path / "online.db"),
            offline=OfflineStore(tmp_path / "offline"),
            state=state,
            clock=lambda: NOW,
            batch_size=100,
            flush_interval_s=0,
            fetch_timeout_s=0.01,
            monotonic=lambda: 0.0,
        )

    inner = bus.consumer("transactions", durable="fw", ack_wait_s=1.0, instance="fw-0")
    first = worker(_LosingAcks(inner, lost))
    while first.step():
        pass
    first.flush()
    assert first.stats.flushes > 10  # the lost ids are older than the last few commits
    # a restart (the index is reloaded from the state store); the redeliveries arrive in
    # either worker, depending on how long the first one ran (ack wait 1 s)
    w = worker(bus.consumer("transactions", durable="fw", ack_wait_s=1.0, instance="fw-0"))
    deadline = time.monotonic() + 30
    while (info := inner.info()).ack_pending or info.lag:
        assert time.monotonic() < deadline, "the lost acks were never redelivered"
        w.step()
        w.flush()
    assert first.stats.duplicates + w.stats.duplicates == 3  # the applied ones: skipped
    late = first.stats.dead_letters.get("late", 0) + w.stats.dead_letters.get("late", 0)
    assert late == 2  # the refused one, dead-lettered again on its redelivery
    log = OfflineStore(tmp_path / "offline").read(event_log_dataset("txn.created")).collect()
    assert log.height == len(events)
    assert log["event_id"].n_unique() == len(events)
    assert "ev-5000" in {d.event_id for d in bus.dead_letters("transactions")}
    bus.close()


def test_the_id_index_forgets_commits_past_the_redelivery_horizon(tmp_path: Path) -> None:
    """Bounded state: a commit's ids are deleted once they are past the consumer's redelivery
    horizon and older than the last few commits."""
    bus = open_bus(f"sqlite:///{tmp_path}/events.db")
    bus.publish_batch("transactions", [ev(i, "a", i * 0.1, 1.0) for i in range(60)])
    state = SQLiteStateStore(tmp_path / "state.db", clock=lambda: NOW)
    wall = [1_000_000.0]
    w = FeatureWorker(
        [VIEW],
        bus.consumer("transactions", durable="fw", ack_wait_s=20, max_deliver=2, backoff_s=(5.0,)),
        SQLiteOnlineStore(tmp_path / "online.db"),
        state=state,
        clock=lambda: NOW,
        batch_size=2,
        flush_interval_s=0,
        fetch_timeout_s=0.01,
        monotonic=lambda: 0.0,
        wall_clock=lambda: wall[0],
    )
    first = "keel.worker/fw/ids/000000000000"
    w.step()
    w.flush()
    assert state.load(first) is not None
    wall[0] += 49  # inside the redelivery horizon: 2 x (20 s + 5 s)
    for _ in range(12):
        w.step()
        w.flush()
    assert state.load(first) is not None and "ev-0" in w._committed
    wall[0] += 2  # past it
    while w.step():
        w.flush()
        wall[0] += 60  # each commit is past the horizon at the next one
    w.flush()
    assert w.stats.flushes > 10
    assert state.load(first) is None  # deleted in a later commit
    names = [r[0] for r in state._db.execute("SELECT name FROM snapshots").fetchall()]
    assert sum(n.startswith("keel.worker/fw/ids/") for n in names) <= 9
    assert len(w._committed) <= 9 * 2
    bus.close()


def test_a_damaged_id_index_is_a_clear_error_not_a_json_traceback(tmp_path: Path) -> None:
    import pytest

    from keel.features import UnavailableError

    bus = open_bus(f"sqlite:///{tmp_path}/events.db")
    bus.publish_batch("transactions", [ev(i, "a", i * 0.1, 1.0) for i in range(5)])
    state = SQLiteStateStore(tmp_path / "state.db", clock=lambda: NOW)

    def worker() -> FeatureWorker:
        return FeatureWorker(
            [VIEW],
            bus.consumer("transactions", durable="fw"),
            SQLiteOnlineStore(tmp_path / "online.db"),
            state=state,
            clock=lambda: NOW,
            flush_interval_s=0,
            fetch_timeout_s=0.01,
        )

    _drain(worker())
    state.save("keel.worker/fw/ids/000000000000", b"ev-0\nev-1")  # not the index's format
    with pytest.raises(UnavailableError, match="ids/000000000000.*not a Keel id index"):
        worker()
    bus.close()
