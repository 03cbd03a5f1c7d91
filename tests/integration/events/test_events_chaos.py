"""Chaos: producers and consumers SIGKILLed at random points; nothing lost, nothing doubled.

N events with unique ids are published by producer processes (resuming from a checkpoint after
each kill, so the batch in flight is re-published — publish dedupe must absorb it) while
consumer processes apply them through `IdempotentSink` to a SQLite sink whose `effects` table
has a UNIQUE event id and whose `stats` row counts applications. Processes are SIGKILLed at
random and restarted; for NATS, a private nats-server is SIGKILLed and restarted too. At the
end: lost = 0, duplicate effects = 0; duplicate deliveries are reported (they are expected).

CI runs a short variant (KEEL_CHAOS_KILLS default 12 kills per backend); the soak mode is
`KEEL_CHAOS_KILLS=120 KEEL_CHAOS_EVENTS=20000 pytest tests/integration/events -k chaos -s`
(through the dev venv, see packages/events/README.md — Pants does not pass these variables);
`KEEL_CHAOS_SEED` varies the kill schedule between soak runs.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testutil.isolation import port_base, slot, unique_name
from testutil.nats_server import PrivateNatsServer

from keel.events import open_bus

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER = str(Path(__file__).with_name("events_chaos_worker.py"))
KILLS = int(os.environ.get("KEEL_CHAOS_KILLS", "12"))
N_EVENTS = int(os.environ.get("KEEL_CHAOS_EVENTS", "3000"))
PRODUCERS, CONSUMERS = 2, 2


@pytest.fixture(params=["sqlite", "nats"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, PrivateNatsServer | None]]:
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'events.db'}", None
        return
    server = PrivateNatsServer(tmp_path / "js", port_base(61))
    server.start()
    try:
        yield server.url, server
    finally:
        server.kill()


def test_chaos_no_loss_no_duplicate_effects(
    backend: tuple[str, PrivateNatsServer | None], tmp_path: Path
) -> None:
    url, server = backend
    stream = unique_name("chaos")
    sink_db = tmp_path / "sink.db"
    with sqlite3.connect(sink_db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE effects (event_id TEXT NOT NULL UNIQUE)")
        conn.execute("CREATE TABLE stats (applications INT, skipped INT, redelivered INT)")
        conn.execute("INSERT INTO stats VALUES (0, 0, 0)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = random.Random(int(os.environ.get("KEEL_CHAOS_SEED", "1234")) + slot())
    per = N_EVENTS // PRODUCERS

    def spawn(role: str, i: int) -> subprocess.Popen[bytes]:
        if role == "produce":
            args = [url, stream, str(i * per), str((i + 1) * per), str(tmp_path / f"ckpt{i}")]
        else:
            args = [url, stream, str(sink_db)]
        return subprocess.Popen([sys.executable, WORKER, role, *args], env=env)

    procs: dict[tuple[str, int], subprocess.Popen[bytes]] = {}
    for i in range(PRODUCERS):
        procs[("produce", i)] = spawn("produce", i)
    for i in range(CONSUMERS):
        procs[("consume", i)] = spawn("consume", i)

    def produced() -> int:
        return sum(
            int(p.read_text()) - i * per if (p := tmp_path / f"ckpt{i}").exists() else 0
            for i in range(PRODUCERS)
        )

    def applied() -> int:
        with sqlite3.connect(sink_db, timeout=30) as c:
            return int(c.execute("SELECT COUNT(*) FROM effects").fetchone()[0])

    kills = broker_restarts = 0
    deadline = time.monotonic() + 240
    try:
        while kills < KILLS and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.2, 0.7))
            if server is not None and kills in (KILLS // 3, (2 * KILLS) // 3):
                server.kill()  # SIGKILL the broker mid-flight, restart on the same store
                time.sleep(rng.uniform(0.1, 0.5))
                server.start()
                broker_restarts += 1
            live = [k for k, p in procs.items() if p.poll() is None]
            if not live:
                break
            # Prefer producers while they still have work, so kills land mid-publish too.
            key = rng.choice(live)
            procs[key].send_signal(signal.SIGKILL)
            procs[key].wait()
            kills += 1
            if key[0] == "consume" or produced() < N_EVENTS:
                procs[key] = spawn(*key)
        # Let the survivors finish: restart finished-by-kill producers until all is published.
        for i in range(PRODUCERS):
            p = procs[("produce", i)]
            if p.poll() is not None and p.returncode != 0:
                procs[("produce", i)] = spawn("produce", i)
        while time.monotonic() < deadline and (produced() < N_EVENTS or applied() < N_EVENTS):
            time.sleep(0.2)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()

    with sqlite3.connect(sink_db) as c:
        ids = {r[0] for r in c.execute("SELECT event_id FROM effects")}
        applications, skipped, redelivered = c.execute("SELECT * FROM stats").fetchone()
    expected = {f"ev-{i}" for i in range(N_EVENTS)}
    lost = len(expected - ids)
    duplicate_effects = applications - len(ids)
    print(
        f"\nchaos[{url.split(':')[0]}]: events={N_EVENTS} kills={kills} "
        f"broker_restarts={broker_restarts} lost={lost} duplicate_effects={duplicate_effects} "
        f"duplicate_deliveries_skipped={skipped} redeliveries={redelivered}"
    )
    assert kills >= min(KILLS, 10)
    assert server is None or broker_restarts >= 1
    assert ids <= expected
    assert lost == 0
    assert duplicate_effects == 0
    bus = open_bus(url)
    try:
        assert bus.stream_info(stream).count == N_EVENTS  # publish dedupe held across kills
    finally:
        bus.delete_stream(stream)
        bus.close()
