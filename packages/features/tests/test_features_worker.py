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
