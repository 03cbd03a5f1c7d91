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
