"""Benchmark keel.events against raw clients, measured in the same run.

    ./pants run tools/bench/events:events -- [--quick] [--nats-url nats://127.0.0.1:4222]

Embedded: Keel `publish_batch` (1000/batch) vs raw sqlite3 `executemany` of the same rows into
an equivalent table (WAL, synchronous=FULL, one transaction per batch); consume = Keel
`fetch(1000)` + `ack_all` vs raw SELECT of the next 1000 rows + cursor UPDATE per batch.
NATS: Keel vs raw nats-py (`publish_async` with the same Nats-Msg-Id and bytes, acks awaited
per 1000; `fetch(1000)` + per-message ack + flush). Latency: publish one event then fetch it,
sequentially, p50/p99. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats

from keel.events import Event, encode_event, open_bus

BATCH = 1000
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def make_events(n: int) -> list[Event]:
    return [
        Event.create(
            type="txn.created",
            key=f"card-{i % 1000}",
            event_time=T0,
            payload={"card": f"card-{i % 1000}", "amount": i * 0.25, "merchant": "m-42", "i": i},
            id=f"{uuid.uuid4().hex}",
        )
        for i in range(n)
    ]


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] if len(xs) > 1 else xs[0]


def bench_sqlite(events: list[Event], tmp: Path, lat_n: int) -> dict[str, float]:
    n = len(events)
    bus = open_bus(f"sqlite://{tmp / 'keel.db'}")
    t = time.perf_counter()
    for i in range(0, n, BATCH):
        bus.publish_batch("bench", events[i : i + BATCH])
    keel_pub = n / (time.perf_counter() - t)
    c = bus.consumer("bench", "bench")
    t = time.perf_counter()
    got = 0
    while got < n:
        ds = c.fetch(BATCH, timeout_s=1.0)
        c.ack_all(ds)
        got += len(ds)
    keel_con = n / (time.perf_counter() - t)
    lat = []
    c2 = bus.consumer("lat", "lat")
    for ev in make_events(lat_n):
        t = time.perf_counter()
        bus.publish("lat", ev)
        (d,) = c2.fetch(1, timeout_s=1.0)
        lat.append(time.perf_counter() - t)
        d.ack()
    bus.close()

    # Raw anchor: same encoded rows, equivalent table, same durability settings.
    conn = sqlite3.connect(tmp / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE ev (seq INTEGER PRIMARY KEY, msg_id TEXT NOT NULL UNIQUE, "
        "publish_us INTEGER NOT NULL, data BLOB NOT NULL)"
    )
    conn.execute("CREATE INDEX ev_time ON ev (publish_us)")
    conn.execute("CREATE TABLE cur (next INTEGER)")
    conn.execute("INSERT INTO cur VALUES (1)")
    rows = [(i + 1, e.id, 0, encode_event(e)) for i, e in enumerate(events)]
    t = time.perf_counter()
    for i in range(0, n, BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO ev VALUES (?, ?, ?, ?)", rows[i : i + BATCH])
        conn.execute("COMMIT")
    raw_pub = n / (time.perf_counter() - t)
    t = time.perf_counter()
    got = 0
    while got < n:
        conn.execute("BEGIN IMMEDIATE")
        (nxt,) = conn.execute("SELECT next FROM cur").fetchone()
        batch = conn.execute(
            "SELECT seq, data FROM ev WHERE seq >= ? ORDER BY seq LIMIT ?", (nxt, BATCH)
        ).fetchall()
        decoded = [msgspec.msgpack.decode(d) for _, d in batch]
        conn.execute("UPDATE cur SET next = ?", (batch[-1][0] + 1,))
        conn.execute("COMMIT")
        got += len(decoded)
    raw_con = n / (time.perf_counter() - t)
    conn.close()
    return {
        "sqlite_keel_publish_eps": keel_pub,
        "sqlite_raw_publish_eps": raw_pub,
        "sqlite_keel_consume_eps": keel_con,
        "sqlite_raw_consume_eps": raw_con,
        "sqlite_latency_p50_ms": pct(lat, 50) * 1e3,
        "sqlite_latency_p99_ms": pct(lat, 99) * 1e3,
    }


async def raw_nats(url: str, stream: str, payloads: list[tuple[str, bytes]]) -> tuple[float, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"raw.{stream}"])
    n = len(payloads)
    t = time.perf_counter()
    for i in range(0, n, BATCH):
        futs = [
            await js.publish_async(f"raw.{stream}", d, headers={"Nats-Msg-Id": m})
            for m, d in payloads[i : i + BATCH]
        ]
        await asyncio.gather(*futs)
    pub = n / (time.perf_counter() - t)
    sub = await js.pull_subscribe(f"raw.{stream}", durable="raw", stream=stream)
    t = time.perf_counter()
    got = 0
    while got < n:
        msgs = await sub.fetch(BATCH, timeout=2.0)
        for m in msgs:
            msgspec.msgpack.decode(m.data)
            await m.ack()
        await nc.flush()
        got += len(msgs)
    con = n / (time.perf_counter() - t)
    await js.delete_stream(stream)
    await nc.close()
    return pub, con


def bench_nats(events: list[Event], url: str, lat_n: int) -> dict[str, float]:
    n = len(events)
    stream = f"bench_{uuid.uuid4().hex[:8]}"
    bus = open_bus(url)
    try:
        t = time.perf_counter()
        for i in range(0, n, BATCH):
            bus.publish_batch(stream, events[i : i + BATCH])
        keel_pub = n / (time.perf_counter() - t)
        c = bus.consumer(stream, "bench")
        t = time.perf_counter()
        got = 0
        while got < n:
            ds = c.fetch(BATCH, timeout_s=2.0)
            c.ack_all(ds)
            got += len(ds)
        keel_con = n / (time.perf_counter() - t)
        lat = []
        c2 = bus.consumer(stream, "lat", start=__import__("keel.events").events.StartPosition.new())
        for ev in make_events(lat_n):
            t = time.perf_counter()
            bus.publish(stream, ev)
            (d,) = c2.fetch(1, timeout_s=2.0)
            lat.append(time.perf_counter() - t)
            d.ack()
    finally:
        bus.delete_stream(stream)
        bus.close()
    payloads = [(e.id, encode_event(e)) for e in events]
    raw_pub, raw_con = asyncio.run(raw_nats(url, f"raw_{stream}", payloads))
    return {
        "nats_keel_publish_eps": keel_pub,
        "nats_raw_publish_eps": raw_pub,
        "nats_keel_consume_eps": keel_con,
        "nats_raw_consume_eps": raw_con,
        "nats_latency_p50_ms": pct(lat, 50) * 1e3,
        "nats_latency_p99_ms": pct(lat, 99) * 1e3,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small smoke size")
    ap.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    ap.add_argument("--no-nats", action="store_true")
    args = ap.parse_args(argv)
    n = 20_000 if args.quick else 100_000
    lat_n = 200 if args.quick else 1000
    events = make_events(n)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        figures.update(bench_sqlite(events, Path(d), lat_n))
    if not args.no_nats:
        figures.update(bench_nats(events, args.nats_url, lat_n))
    ratios: dict[str, float] = {}
    goals: dict[str, bool] = {}
    for b in ("sqlite", "nats"):
        if f"{b}_keel_publish_eps" not in figures:
            continue
        for op in ("publish", "consume"):
            r = figures[f"{b}_raw_{op}_eps"] / figures[f"{b}_keel_{op}_eps"]
            ratios[f"raw_{b}_vs_keel_{op}_time_overhead"] = r
            goals[f"{b}_{op}_overhead_le_1.3x"] = r <= 1.3
    goals["sqlite_batched_publish_ge_50k_eps"] = figures["sqlite_keel_publish_eps"] >= 50_000
    for k, v in figures.items():
        print(f"{k:32s} {v:12.1f}")
    for k, v in ratios.items():
        print(f"{k:40s} {v:6.2f}x")
    print(
        json.dumps(
            {
                "bench": "events",
                "figures": {k: round(v, 2) for k, v in figures.items()},
                "ratios": {k: round(v, 3) for k, v in ratios.items()},
                "goals_met": goals,
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
