"""Producer / consumer processes for the chaos test (run as scripts, SIGKILLed at random).

produce URL STREAM FIRST LAST CHECKPOINT   publish ids FIRST..LAST-1 in batches, resuming
                                           from CHECKPOINT (written after each acked batch)
consume URL STREAM SINK_DB                 apply events to SINK_DB through IdempotentSink
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from keel.events import Event, EventsError, IdempotentSink, open_bus

BATCH = 50
PRODUCE_PACE_S = 0.1  # spread publishing over the kill period
CONSUME_WORK_S = 0.02  # "work" between fetch and commit, so kills land mid-batch
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _retrying(fn):  # type: ignore[no-untyped-def]
    while True:
        try:
            return fn()
        except EventsError:  # broker restarting, database busy: retry (idempotent)
            time.sleep(0.1)


def produce(url: str, stream: str, first: int, last: int, checkpoint: Path) -> None:
    bus = _retrying(
        lambda: open_bus(url, request_timeout_s=2.0) if url.startswith("nats") else open_bus(url)
    )
    start = int(checkpoint.read_text()) if checkpoint.exists() else first
    for lo in range(start, last, BATCH):
        hi = min(lo + BATCH, last)
        batch = [
            Event.create(
                type="chaos", key=f"k{i % 7}", event_time=T0, payload={"i": i}, id=f"ev-{i}"
            )
            for i in range(lo, hi)
        ]
        _retrying(lambda b=batch: bus.publish_batch(stream, b))
        tmp = checkpoint.with_suffix(".tmp")
        tmp.write_text(str(hi))
        os.replace(tmp, checkpoint)
        time.sleep(PRODUCE_PACE_S)


def effect(conn: sqlite3.Connection, event: Event) -> None:
    conn.execute(
        "INSERT INTO effects (event_id) VALUES (?)", (event.id,)
    )  # UNIQUE: a 2nd apply fails
    conn.execute("UPDATE stats SET applications = applications + 1")


def consume(url: str, stream: str, sink_db: str) -> None:
    bus = _retrying(
        lambda: open_bus(url, request_timeout_s=2.0) if url.startswith("nats") else open_bus(url)
    )
    consumer = _retrying(
        lambda: bus.consumer(stream, "chaos", ack_wait_s=1.0, max_deliver=1000, backoff_s=(0.1,))
    )
    sink = IdempotentSink(sink_db, "chaos", window_s=86_400)
    while True:
        try:
            deliveries = consumer.fetch(max_messages=25, timeout_s=0.5)
            time.sleep(CONSUME_WORK_S)
            result = sink.apply(consumer, deliveries, effect)
        except EventsError:
            time.sleep(0.1)
            continue
        redelivered = sum(1 for d in deliveries if d.delivery_count > 1)
        if result.skipped or redelivered:
            with sink.connection:
                sink.connection.execute(
                    "UPDATE stats SET skipped = skipped + ?, redelivered = redelivered + ?",
                    (result.skipped, redelivered),
                )


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "produce":
        produce(args[0], args[1], int(args[2]), int(args[3]), Path(args[4]))
    elif cmd == "consume":
        consume(args[0], args[1], args[2])
    else:
        raise SystemExit(f"unknown command {cmd!r}")
