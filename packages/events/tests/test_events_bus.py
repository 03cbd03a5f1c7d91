"""The behavioural suite: every test runs against the embedded log AND real NATS JetStream.

`make_bus` (conftest.py) opens buses of the parametrised backend; `make_bus.stream()` names a
fresh stream that is deleted afterwards.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from keel.events import (
    ConflictError,
    Delivery,
    Event,
    IdempotentSink,
    InvalidConfigError,
    InvalidEventError,
    SchemaRegistry,
    StartPosition,
    UnknownSchemaError,
)
from keel.telemetry import ComponentMetrics

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def ev(i: int, key: str | None = None, **kw: object) -> Event:
    return Event.create(
        type=str(kw.pop("type", "txn.created")),
        key=key if key is not None else f"card-{i % 3}",
        event_time=T0 + timedelta(seconds=i),
        payload=kw.pop("payload", {"i": i, "amount": i * 1.5}),
        id=f"evt-{i}",
        headers={"producer": "test"},
        **kw,  # type: ignore[arg-type]
    )


def drain(consumer, max_rounds: int = 20, timeout_s: float = 0.3) -> list[Delivery]:
    """Fetch until an empty fetch; ack everything."""
    out: list[Delivery] = []
    for _ in range(max_rounds):
        ds = consumer.fetch(max_messages=100, timeout_s=timeout_s)
        if not ds:
            break
        consumer.ack_all(ds)
        out.extend(ds)
    return out


def test_roundtrip_preserves_envelope_in_sequence_order(make_bus: Any) -> None:
    bus, s = make_bus(), make_bus.stream()
    sent = [ev(i) for i in range(25)]
    acks = bus.publish_batch(s, sent[:20]) + [bus.publish(s, e) for e in sent[20:]]
    assert [a.seq for a in acks] == list(range(1, 26))
    assert not any(a.duplicate for a in acks)
    got = drain(bus.consumer(s, "reader"))
    assert [d.seq for d in got] == list(range(1, 26))
    for d, e in zip(got, sent, strict=True):
        assert d.delivery_count == 1
        assert (d.event.id, d.event.type, d.event.key) == (e.id, e.type, e.key)
        assert d.event.event_time == e.event_time
        assert d.event.payload == e.payload and d.event.json() == e.json()
        assert d.event.headers == {"producer": "test"}
        assert d.event.publish_time is not None and d.event.publish_time.tzinfo is not None


def test_publish_is_idempotent_on_event_id(make_bus: Any) -> None:
    bus, s = make_bus(), make_bus.stream()
    first = bus.publish_batch(s, [ev(i) for i in range(5)])
    again = bus.publish(s, ev(2))
    assert again.duplicate and again.seq == first[2].seq
    mixed = bus.publish_batch(s, [ev(4), ev(5), ev(5), ev(6)])
    assert [a.duplicate for a in mixed] == [True, False, True, False]
    # A second bus (another producer process) is deduplicated too.
    other = make_bus()
    assert other.publish(s, ev(0)).duplicate
    assert bus.stream_info(s).count == 7
    ids = [d.event.id for d in drain(bus.consumer(s, "c"))]
    assert ids == [f"evt-{i}" for i in range(7)]


def test_acked_events_are_not_redelivered_unacked_are_after_ack_wait(make_bus: Any) -> None:
    bus, s = make_bus(), make_bus.stream()
    bus.publish_batch(s, [ev(i) for i in range(4)])
    c = bus.consumer(s, "w", ack_wait_s=1.0)
    ds = c.fetch(10, timeout_s=2.0)
    assert [d.seq for d in ds] == [1, 2, 3, 4]
    ds[0].ack()
    c.ack_all(ds[1:3])
    # seq 4 is neither acked nor nak'ed: it must come back after the ack wait, counted.
    again = c.fetch(10, timeout_s=5.0)
    assert [(d.seq, d.delivery_count) for d in again] == [(4, 2)]
    again[0].ack()
    assert c.fetch(10, timeout_s=1.5) == []


def test_mixed_settlement_within_one_fetched_batch(make_bus: Any) -> None:
    """Ack some of a batch (batched and single), nak one, term one, leave the rest: only the
    nak'ed and the unsettled come back (delivery_count 2), the termed one is dead-lettered."""
    bus, s = make_bus(), make_bus.stream()
    bus.publish_batch(s, [ev(i) for i in range(10)])
    c = bus.consumer(s, "w", ack_wait_s=1.0, max_deliver=5)
    ds = c.fetch(10, timeout_s=2.0)
    assert [d.seq for d in ds] == list(range(1, 11))
    c.ack_all(ds[0:3])
    ds[3].ack()
    ds[4].nak(delay_s=0)
    ds[5].term("bad")
    again: list[Delivery] = []
    deadline = time.monotonic() + 8
    while len(again) < 5 and time.monotonic() < deadline:
        got = c.fetch(10, timeout_s=2.0)
        c.ack_all(got)
        again += got
    assert sorted((d.seq, d.delivery_count) for d in again) == [(5, 2)] + [
        (seq, 2) for seq in range(7, 11)
    ]
    assert [d.seq for d in bus.dead_letters(s)] == [6]
    assert c.fetch(10, timeout_s=1.5) == []
    assert c.info().ack_pending == 0


def test_nak_redelivers_after_delay_and_max_deliver_dead_letters(make_bus: Any) -> None:
    bus, s = make_bus(), make_bus.stream()
    bus.publish_batch(s, [ev(0), ev(1)])
    c = bus.consumer(s, "w", ack_wait_s=30.0, max_deliver=2)
    ds = c.fetch(10, timeout_s=2.0)
    assert len(ds) == 2
    ds[1].ack()
    ds[0].nak(delay_s=0.3)
    t = time.monotonic()
    second = c.fetch(10, timeout_s=5.0)
    assert time.monotonic() - t >= 0.2  # not before the delay
    assert [(d.event.id, d.delivery_count) for d in second] == [("evt-0", 2)]
    second[0].nak(delay_s=0)
    # Third attempt exceeds max_deliver=2: dead-lettered instead of delivered.
    assert c.fetch(10, timeout_s=1.5) == []
    dead = bus.dead_letters(s)
    assert len(dead) == 1
    assert dead[0].event_id == "evt-0" and dead[0].durable == "w" and dead[0].seq == 1
    assert dead[0].reason.startswith("max_deliver") and dead[0].deliveries == 2
    assert dead[0].event.json() == ev(0).json()
    # Requeue: delivered again (same event id), the queue is empty.
    assert bus.requeue_dead_letters(s) == 1
    assert bus.dead_letters(s) == []
    back = c.fetch(10, timeout_s=2.0)
    assert [(d.event.id, d.delivery_count) for d in back] == [("evt-0", 1)]


def test_term_dead_letters_with_reason(make_bus: Any) -> None:
    bus, s = make_bus(), make_bus.stream()
    bus.publish(s, ev(7))
    c = bus.consumer(s, "w")
    (d,) = c.fetch(10, timeout_s=2.0)
    d.term("amount negative")
    (dead,) = bus.dead_letters(s)
    assert dead.reason == "rejected: amount negative" and dead.event_id == "evt-7"
    assert c.fetch(10, timeout_s=0.5) == []


def test_malformed_envelope_goes_to_dead_letters_not_to_the_handler(make_bus: Any) -> None:
    bus, s = make_bus(), make_bus.stream()
    bus.publish(s, ev(0))
    bus.publish_raw(s, b"\x93not an envelope", "garbage-1")
    bus.publish_raw(s, msgspec.msgpack.encode(["k1", "x"]), "truncated-1")
    bus.publish(s, ev(1))
    got = drain(bus.consumer(s, "w"))
    assert [d.event.id for d in got] == ["evt-0", "evt-1"]
    dead = bus.dead_letters(s)
    assert [d.seq for d in dead] == [2, 3]
    assert all("malformed event envelope" in d.reason and d.event_id is None for d in dead)
    assert dead[0].data == b"\x93not an envelope"


def test_unknown_schema_version_is_rejected_on_publish_and_dead_lettered_on_consume(
    make_bus: Any,
) -> None:
    class TxnV1(msgspec.Struct):
        i: int
        amount: float

    schemas = SchemaRegistry().register("txn.created", 1, TxnV1)
    strict_bus = make_bus(schemas=schemas)
    s = make_bus.stream()
    with pytest.raises(UnknownSchemaError, match="unknown schema version 2"):
        strict_bus.publish(s, ev(0, schema_version=2))
    with pytest.raises(Exception, match="payload does not match"):
        strict_bus.publish(s, ev(0, payload={"i": "x"}))
    # A lenient producer publishes v2 and a bad payload; the strict consumer dead-letters them.
    lenient = make_bus()
    lenient.publish_batch(
        s, [ev(0), ev(1, schema_version=2), ev(2, payload={"i": "x"}), ev(3, type="other")]
    )
    got = drain(lenient.consumer(s, "strict", schemas=schemas))
    assert [d.event.id for d in got] == ["evt-0", "evt-3"]
    reasons = {d.event_id: d.reason for d in lenient.dead_letters(s)}
    assert set(reasons) == {"evt-1", "evt-2"}
    assert "unknown schema version 2" in reasons["evt-1"]
    assert "does not match schema" in reasons["evt-2"]


def test_durables_are_independent_and_a_shared_durable_splits_work(make_bus: Any) -> None:
    bus, s = make_bus(), make_bus.stream()
    bus.publish_batch(s, [ev(i) for i in range(30)])
    a1 = bus.consumer(s, "group-a")
    a2 = make_bus().consumer(s, "group-a")  # another process in the same group
    b = bus.consumer(s, "group-b")
    first = a1.fetch(10, timeout_s=2.0)
    second = a2.fetch(100, timeout_s=2.0)
    a1.ack_all(first)
    a2.ack_all(second)
    rest = drain(a1) + drain(a2)
    ids_a = [d.event.id for d in first + second + rest]
    assert sorted(ids_a) == sorted(f"evt-{i}" for i in range(30))  # each once
    assert len(first) == 10
    assert [d.event.id for d in drain(b)] == [f"evt-{i}" for i in range(30)]


def test_per_key_first_deliveries_follow_publish_order(make_bus: Any) -> None:
    bus, s = make_bus(), make_bus.stream()
    for batch in range(4):
        bus.publish_batch(s, [ev(batch * 10 + i, key=f"k{i % 3}") for i in range(10)])
    got = drain(bus.consumer(s, "w"))
    by_key: dict[str, list[int]] = {}
    for d in got:
        by_key.setdefault(d.event.key, []).append(int(d.event.id.split("-")[1]))
    assert set(by_key) == {"k0", "k1", "k2"}
    assert all(v == sorted(v) for v in by_key.values())


def test_replay_and_start_positions(make_bus: Any) -> None:
    bus, s = make_bus(), make_bus.stream()
    bus.publish_batch(s, [ev(i) for i in range(10)])
    time.sleep(0.05)
    cut = datetime.now(UTC)
    time.sleep(0.05)
    bus.publish_batch(s, [ev(i) for i in range(10, 15)])
    assert [r.seq for r in bus.replay(s)] == list(range(1, 16))
    assert [r.event.id for r in bus.replay(s, StartPosition.at_seq(12))] == [
        "evt-11",
        "evt-12",
        "evt-13",
        "evt-14",
    ]
    assert [r.seq for r in bus.replay(s, StartPosition.at_seq(3), max_messages=2)] == [3, 4]
    assert [r.seq for r in bus.replay(s, StartPosition.at_time(cut))] == list(range(11, 16))
    late = bus.consumer(s, "late", start=StartPosition.at_time(cut))
    assert [d.seq for d in drain(late)] == list(range(11, 16))
    new_only = bus.consumer(s, "new", start=StartPosition.new())
    bus.publish(s, ev(99))
    assert [d.event.id for d in drain(new_only)] == ["evt-99"]


def test_consumer_state_survives_reopen_and_reports_lag(make_bus: Any) -> None:
    bus, s = make_bus(), make_bus.stream()
    bus.publish_batch(s, [ev(i) for i in range(10)])
    c = bus.consumer(s, "w", ack_wait_s=30.0)
    ds = c.fetch(4, timeout_s=2.0)
    c.ack_all(ds[:2])
    info = c.info()
    assert (info.delivered_seq, info.lag, info.ack_pending) == (4, 6, 2)
    assert [i.durable for i in bus.consumers(s)] == ["w"]
    bus.close()
    reopened = make_bus().consumer(s, "w", ack_wait_s=30.0)  # same durable, fresh process
    assert [d.seq for d in reopened.fetch(100, timeout_s=2.0)] == list(range(5, 11))
    with pytest.raises(ConflictError, match="ack_wait_s"):
        make_bus().consumer(s, "w", ack_wait_s=5.0)


def test_metrics_count_what_happened(make_bus: Any) -> None:
    reg = CollectorRegistry()
    bus, s = make_bus(metrics=ComponentMetrics("events", registry=reg)), make_bus.stream()
    bus.publish_batch(s, [ev(i) for i in range(6)])
    bus.publish(s, ev(0))
    bus.publish_raw(s, b"junk", "junk-1")
    c = bus.consumer(s, "w", ack_wait_s=30.0)
    ds = c.fetch(3, timeout_s=2.0)
    c.ack_all(ds)

    def val(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(f"keel_events_{name}", labels)

    assert val("published_total", stream=s) == 7
    assert val("duplicates_total", stream=s) == 1
    assert val("consumed_total", stream=s, consumer="w") == 3
    assert val("acked_total", stream=s, consumer="w") == 3
    assert val("consumer_lag_events", stream=s, consumer="w") == 4
    assert val("publish_latency_seconds_count", stream=s) == 3
    drain(c)
    assert val("dead_lettered_total", stream=s, consumer="w", reason="invalid") == 1
    assert val("consumed_total", stream=s, consumer="w") == 6


class _AckLost:
    """Fault injection: a consumer whose acks never reach the broker (a crash after commit)."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.config, self.durable = inner, inner.config, inner.durable

    def ack_all(self, deliveries) -> None:  # type: ignore[no-untyped-def]
        pass


def test_idempotent_sink_applies_each_event_once_across_redelivery(make_bus: Any, tmp_path) -> None:
    bus, s = make_bus(), make_bus.stream()
    bus.publish_batch(s, [ev(i) for i in range(20)])
    c = bus.consumer(s, "sinker", ack_wait_s=1.0, max_deliver=5, backoff_s=(0.1,))
    sink = IdempotentSink(tmp_path / "sink.db", "sinker", window_s=3600)
    sink.connection.execute("CREATE TABLE totals (event_id TEXT PRIMARY KEY, amount REAL)")

    def effect(conn: sqlite3.Connection, e: Event) -> None:
        if e.id == "evt-13" and not getattr(effect, "failed", False):
            effect.failed = True  # type: ignore[attr-defined]
            raise RuntimeError("transient")
        conn.execute("INSERT INTO totals VALUES (?, ?)", (e.id, e.json()["amount"]))

    first = c.fetch(10, timeout_s=2.0)
    r = sink.apply(_AckLost(c), first, effect)  # type: ignore[arg-type]
    assert (r.applied, r.skipped, r.failed) == (10, 0, 0)
    total = 0
    for _ in range(40):
        ds = c.fetch(50, timeout_s=2.0)
        if not ds:
            break
        r = sink.apply(c, ds, effect)
        total += r.applied
    rows = sink.connection.execute("SELECT event_id FROM totals ORDER BY event_id").fetchall()
    assert sorted(r[0] for r in rows) == sorted(f"evt-{i}" for i in range(20))
    assert total == 10 and sink.seen("evt-0") and not sink.seen("evt-99")
    assert c.info().ack_pending == 0
    with pytest.raises(InvalidConfigError, match="redelivery horizon"):
        IdempotentSink(tmp_path / "s2.db", "sinker", window_s=5).apply(c, first, effect)


def test_restarted_instance_gets_its_in_flight_work_back_first(make_bus: Any) -> None:
    """A crash leaves a fetched batch unsettled; the same instance, attaching again, gets it
    back at once and before newer events (no ack-wait delay, so no reordering)."""
    bus, s = make_bus(), make_bus.stream()
    bus.publish_batch(s, [ev(i) for i in range(6)])
    crashed = bus.consumer(s, "w", ack_wait_s=30.0, instance="w-0")
    assert crashed.reclaimed == 0
    lost = crashed.fetch(3, timeout_s=2.0)
    assert [d.seq for d in lost] == [1, 2, 3]  # the process "dies" here, nothing settled
    bus.publish_batch(s, [ev(i) for i in range(6, 8)])
    restarted = bus.consumer(s, "w", ack_wait_s=30.0, instance="w-0")
    assert restarted.reclaimed == 3
    got: list[Delivery] = []
    t0 = time.monotonic()
    while len(got) < 8 and time.monotonic() - t0 < 10:
        ds = restarted.fetch(10, timeout_s=0.5)
        restarted.ack_all(ds)
        got.extend(ds)
    assert [d.seq for d in got] == list(range(1, 9))
    assert restarted.info().ack_pending == 0


def test_payload_limit_is_the_same_on_both_backends_and_named(make_bus: Any) -> None:
    bus, s = make_bus(), make_bus.stream()
    big = Event.create(type="t", key="k", event_time=T0, payload=b"x" * 10_000_000, id="big-1")
    with pytest.raises(
        InvalidEventError, match="'big-1' is .* over the bus's payload limit of 1000000"
    ):
        bus.publish(s, big)
    with pytest.raises(InvalidEventError, match="payload limit"):
        bus.publish_raw(s, b"x" * 1_000_001, "raw-1")
    ok = Event.create(type="t", key="k", event_time=T0, payload=b"x" * 900_000, id="ok-1")
    assert not bus.publish(s, ok).duplicate


def test_idempotent_sink_dead_letters_a_poison_event_after_bounded_retries(
    make_bus: Any, tmp_path
) -> None:
    bus, s = make_bus(), make_bus.stream()
    bus.publish_batch(s, [ev(i) for i in range(5)])
    c = bus.consumer(s, "sinker", ack_wait_s=1.0, max_deliver=3, backoff_s=(0.05,))
    sink = IdempotentSink(tmp_path / "sink.db", "sinker", window_s=3600)
    sink.connection.execute("CREATE TABLE seen (event_id TEXT PRIMARY KEY)")

    def effect(conn: sqlite3.Connection, e: Event) -> None:
        if e.json()["i"] == 2:
            raise ValueError("score 'high' is not a number")
        conn.execute("INSERT INTO seen VALUES (?)", (e.id,))

    for _ in range(30):
        sink.run_once(c, effect, timeout_s=0.3)
        if bus.dead_letters(s):
            break
    (dead,) = bus.dead_letters(s)
    assert dead.event_id == "evt-2" and dead.deliveries == 3
    assert "failed 3 times: ValueError: score 'high' is not a number" in dead.reason
    rows = sink.connection.execute("SELECT event_id FROM seen ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == ["evt-0", "evt-1", "evt-3", "evt-4"]
    assert c.info().ack_pending == 0


def test_a_second_crash_before_the_handed_back_work_was_fetched_keeps_the_order(
    make_bus: Any,
) -> None:
    """Crash, restart (work handed back), fetch only part of it, crash again: the next run
    must still see the events in sequence order."""
    bus, s = make_bus(), make_bus.stream()
    bus.publish_batch(s, [ev(i) for i in range(9)])
    first = bus.consumer(s, "w", ack_wait_s=30.0, instance="w-0")
    assert [d.seq for d in first.fetch(3, 2.0) + first.fetch(3, 2.0)] == [1, 2, 3, 4, 5, 6]
    second = bus.consumer(s, "w", ack_wait_s=30.0, instance="w-0")
    assert [d.seq for d in second.fetch(2, 2.0)] == [1, 2]  # then it dies too
    third = bus.consumer(s, "w", ack_wait_s=30.0, instance="w-0")
    got: list[int] = []
    deadline = time.monotonic() + 10
    while len(got) < 9 and time.monotonic() < deadline:
        ds = third.fetch(4, 0.5)
        third.ack_all(ds)
        got += [d.seq for d in ds]
    assert got == list(range(1, 10))
