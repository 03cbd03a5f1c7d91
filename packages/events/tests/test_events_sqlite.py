"""Embedded-backend specifics: durability pragmas, multi-process writers, retention."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from keel.events import Event, StreamConfig, open_bus

T0 = datetime(2024, 1, 1, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def mk(i: int) -> Event:
    return Event.create(type="t", key="k", event_time=T0, payload=b"x" * 200, id=f"e{i}")


def test_file_is_wal_and_commits_are_fsynced(tmp_path: Path) -> None:
    bus = open_bus(f"sqlite://{tmp_path / 'e.db'}")
    bus.publish("s", mk(0))
    assert bus._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # type: ignore[attr-defined]  # FULL
    bus.close()
    conn = sqlite3.connect(tmp_path / "e.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


PRODUCER = """
import sys
from datetime import UTC, datetime
from keel.events import Event, open_bus
bus = open_bus(sys.argv[1])
p = sys.argv[2]
for b in range(20):
    bus.publish_batch("s", [Event.create(type="t", key=p, event_time=datetime(2024,1,1,tzinfo=UTC),
        payload=b"{}", id=f"{p}-{b}-{i}") for i in range(50)])
"""


def test_several_processes_publish_and_consume_one_file(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'e.db'}"
    open_bus(url).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PRODUCER, url, f"p{n}"], env={"PYTHONPATH": ":".join(sys.path)}
        )
        for n in range(3)
    ]
    bus = open_bus(url)
    c1, c2 = bus.consumer("s", "g"), open_bus(url).consumer("s", "g")
    seen: list[str] = []
    for p in procs:
        assert p.wait(timeout=60) == 0
    for _ in range(100):
        got = c1.fetch(97, timeout_s=0.2) + c2.fetch(113, timeout_s=0.2)
        if not got:
            break
        for d in got:
            d.ack()
        seen += [d.event.id for d in got]
    assert len(seen) == 3000 and len(set(seen)) == 3000
    info = bus.stream_info("s")
    assert (info.first_seq, info.last_seq, info.count) == (1, 3000, 3000)


def test_retention_by_count_and_age_keeps_the_file_bounded(tmp_path: Path) -> None:
    clock = FakeClock()
    cfg = StreamConfig(max_age_s=3600, max_events=500, duplicate_window_s=60)
    bus = open_bus(
        f"sqlite://{tmp_path / 'e.db'}", stream_config=cfg, clock=clock, compact_every=1000
    )
    bus.publish_batch("s", [mk(i) for i in range(800)])
    assert bus.compact("s") == 300
    info = bus.stream_info("s")
    assert (info.first_seq, info.last_seq, info.count) == (301, 800, 500)
    clock.now += timedelta(hours=2)
    bus.publish_batch("s", [mk(i) for i in range(800, 810)])
    assert bus.compact() == 500  # everything older than an hour
    assert bus.stream_info("s").count == 10
    sizes = []
    for round_ in range(6):  # steady state: publish + auto-compact, file stops growing
        clock.now += timedelta(hours=2)
        bus.publish_batch("s", [mk(10_000 * (round_ + 1) + i) for i in range(2000)])
        bus.compact()
        sizes.append((tmp_path / "e.db").stat().st_size)
    assert max(sizes[2:]) <= sizes[1] * 1.1, sizes


def test_a_fetched_batch_is_one_lease_and_stale_acks_after_expiry_still_settle(
    tmp_path: Path,
) -> None:
    bus = open_bus(f"sqlite://{tmp_path / 'e.db'}")
    bus.publish_batch("s", [mk(i) for i in range(6)])
    c = bus.consumer("s", "g", ack_wait_s=0.3)
    first = c.fetch(10, timeout_s=1.0)
    conn = bus._conn  # type: ignore[attr-defined]
    assert conn.execute("SELECT lo, hi FROM keel_leases").fetchall() == [(1, 6)]
    assert conn.execute("SELECT COUNT(*) FROM keel_pending").fetchone()[0] == 0
    assert c.info().ack_pending == 6
    again = c.fetch(10, timeout_s=3.0)  # the lease expired: split, all redelivered
    assert [(d.seq, d.delivery_count) for d in again] == [(s, 2) for s in range(1, 7)]
    assert conn.execute("SELECT COUNT(*) FROM keel_leases").fetchone()[0] == 0
    c.ack_all(first)  # the original deliveries' ack settles the split rows too
    assert c.info().ack_pending == 0
    assert c.fetch(10, timeout_s=0.8) == []


def test_sequences_continue_after_retention_empties_the_stream(tmp_path: Path) -> None:
    clock = FakeClock()
    cfg = StreamConfig(max_age_s=3600, duplicate_window_s=60)
    bus = open_bus(f"sqlite://{tmp_path / 'e.db'}", stream_config=cfg, clock=clock)
    assert [a.seq for a in bus.publish_batch("s", [mk(i) for i in range(5)])] == [1, 2, 3, 4, 5]
    clock.now += timedelta(hours=2)
    assert bus.compact("s") == 5 and bus.stream_info("s").count == 0
    acks = bus.publish_batch("s", [mk(i) for i in range(5, 8)] + [mk(6)])
    assert [(a.seq, a.duplicate) for a in acks] == [(6, False), (7, False), (8, False), (7, True)]
    acks = bus.publish_batch("s", [mk(8), mk(9)])  # back on the fast path: top seq == last
    assert [(a.seq, a.duplicate) for a in acks] == [(9, False), (10, False)]
    assert [s.seq for s in bus.replay("s")] == [6, 7, 8, 9, 10]


def test_a_sequence_gap_splits_the_lease_and_is_never_delivered(tmp_path: Path) -> None:
    bus = open_bus(f"sqlite://{tmp_path / 'e.db'}")
    bus.publish_batch("s", [mk(i) for i in range(6)])
    conn = bus._conn  # type: ignore[attr-defined]
    conn.execute("DELETE FROM keel_ev_1 WHERE seq = 3")  # white-box: a hole in the log
    c = bus.consumer("s", "g", ack_wait_s=0.3)
    ds = c.fetch(10, timeout_s=1.0)
    assert [d.seq for d in ds] == [1, 2, 4, 5, 6]
    assert conn.execute("SELECT lo, hi FROM keel_leases ORDER BY lo").fetchall() == [(1, 2), (4, 6)]
    again = c.fetch(10, timeout_s=3.0)  # both leases expire; seq 3 is not conjured up
    assert [(d.seq, d.delivery_count) for d in again] == [(s, 2) for s in (1, 2, 4, 5, 6)]
    c.ack_all(again)
    assert c.info().ack_pending == 0 and bus.dead_letters("s") == []


def test_an_idle_fetch_waits_without_spinning_and_wakes_on_a_commit(tmp_path: Path) -> None:
    """Regression: the fetch's own (empty) commit used to count as "the database changed",
    so an idle fetch re-ran its transaction in a busy loop until the timeout."""
    import threading

    url = f"sqlite://{tmp_path / 'e.db'}"
    bus = open_bus(url)
    c: Any = bus.consumer("s", "g")
    calls: list[int] = []
    fetch_once = c._fetch_once

    def counting(n: int) -> Any:
        calls.append(n)
        return fetch_once(n)

    c._fetch_once = counting
    assert c.fetch(10, timeout_s=0.5) == []
    assert len(calls) == 1  # one transaction, then polling PRAGMA data_version
    other = open_bus(url)  # a commit by another connection wakes it ...
    threading.Timer(0.2, lambda: other.publish("s", mk(1))).start()
    assert [d.event.id for d in c.fetch(10, timeout_s=30.0)] == ["e1"]
    threading.Timer(0.2, lambda: bus.publish("s", mk(2))).start()  # ... and one on this bus
    assert [d.event.id for d in c.fetch(10, timeout_s=30.0)] == ["e2"]
