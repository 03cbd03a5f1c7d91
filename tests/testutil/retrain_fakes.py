"""Fake executors for the retrain-controller tests: plain objects, named by the app's
``executors`` setting as ``testutil.retrain_fakes:build_executors``.

Every step returns deterministic plain data. Side effects (registrations, alias moves,
rollbacks) and every executor call are written to ``<home>/fake_effects.db``, so a test
counts them from outside the app's process — including across a restart.

``options``: ``gate`` = ``pass`` (default) | ``fail`` | ``wait``; ``fail_step`` = a step
whose executor raises; ``requests`` = the canary's request count (default 100).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from keel.drift import DriftDetected
from keel.events import Bus, Event
from keel.pipelines import CanarySignal, GateResult, GateStatus, StepContext

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (id INTEGER PRIMARY KEY, step TEXT NOT NULL, key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS registrations (digest TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS moves (key TEXT PRIMARY KEY, alias TEXT NOT NULL, version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rollbacks (key TEXT PRIMARY KEY, version TEXT NOT NULL);
"""

GATES = ("pass", "fail", "wait")


class FakeError(RuntimeError):
    pass


class FakeExecutors:
    def __init__(self, home: Path, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"gate", "fail_step", "requests"}
        if unknown:
            raise ValueError(f"unknown fake executor options {sorted(unknown)}")
        self.gate = str(options.get("gate", "pass"))
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}; got {self.gate!r}")
        self.fail_step = str(options.get("fail_step", ""))
        self.requests = int(options.get("requests", 100))
        self.db = home / "fake_effects.db"
        home.mkdir(parents=True, exist_ok=True)
        with self._conn() as c:
            c.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.db, timeout=30.0)
        c.execute("PRAGMA journal_mode=WAL")
        return c

    def _call(self, step: str, key: str = "") -> None:
        with self._conn() as c:
            c.execute("INSERT INTO calls(step, key) VALUES (?, ?)", (step, key))
        if step == self.fail_step:
            raise FakeError(f"{step} failed on purpose")

    def source_fingerprints(self, ctx: StepContext) -> Mapping[str, str]:
        return {"transactions": hashlib.sha256(json.dumps(dict(ctx.params)).encode()).hexdigest()}

    def build_training_set(self, ctx: StepContext) -> Mapping[str, Any]:
        self._call("build_training_set")
        return {"fingerprint": "sha256:" + "1" * 64, "rows": 10}

    def train(self, ctx: StepContext) -> Mapping[str, Any]:
        self._call("train")
        return {"trainer_run": "fake-run", "weights": [0.5, -0.25]}

    def evaluate(self, ctx: StepContext) -> Mapping[str, Any]:
        self._call("evaluate")
        return {"holdout": "sha256:" + "2" * 64, "metrics": {"auc": 0.8}}

    def gates(self, ctx: StepContext) -> Sequence[GateResult]:
        self._call("gates")
        status = {"pass": GateStatus.PASSED, "fail": GateStatus.FAILED, "wait": GateStatus.WAITING}
        return [GateResult("quality", status[self.gate], (f"fake gate: {self.gate}",), {})]

    def package_sign(self, ctx: StepContext) -> Mapping[str, Any]:
        self._call("package_sign")
        return {"artifact_digest": "sha256:" + hashlib.sha256(ctx.run_id.encode()).hexdigest()}

    def register_challenger(self, ctx: StepContext) -> Mapping[str, Any]:
        self._call("register_challenger", ctx.idempotency_key)
        digest = ctx.inputs["package_sign"]["artifact_digest"]
        with self._conn() as c:
            row = c.execute(
                "SELECT version FROM registrations WHERE digest = ?", (digest,)
            ).fetchone()
            if row is None:
                n = c.execute("SELECT COUNT(*) FROM registrations").fetchone()[0] + 1
                c.execute("INSERT INTO registrations(digest, version) VALUES (?, ?)", (digest, n))
                row = (n,)
        return {"version": str(row[0])}

    def move_alias(self, ctx: StepContext, alias: str, version: str) -> Mapping[str, Any]:
        self._call(f"move_alias:{alias}", ctx.idempotency_key)
        with self._conn() as c:
            c.execute(
                "INSERT OR IGNORE INTO moves(key, alias, version) VALUES (?, ?, ?)",
                (ctx.idempotency_key, alias, version),
            )
        return {"to_version": version}

    def canary_signals(self, ctx: StepContext, version: str) -> tuple[Sequence[CanarySignal], int]:
        return [], self.requests

    def rollback(self, ctx: StepContext, version: str) -> Mapping[str, Any]:
        self._call("rollback", ctx.idempotency_key)
        with self._conn() as c:
            c.execute(
                "INSERT OR IGNORE INTO rollbacks(key, version) VALUES (?, ?)",
                (ctx.idempotency_key, version),
            )
        return {"removed_from": ["shadow", "canary"]}


def build_executors(*, home: Path, bus: Bus, options: Mapping[str, Any]) -> FakeExecutors:
    """The factory signature the app calls (the same as keel.pipelines.local's)."""
    assert isinstance(bus, Bus)
    return FakeExecutors(Path(home), options)


def effects(home: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    c = sqlite3.connect(home / "fake_effects.db")
    try:
        return c.execute(sql, args).fetchall()
    finally:
        c.close()


class ManualClock:
    """A wall clock that moves only when told (``advance``), and a monotonic view of it:
    the retrain loop's `clock` and `monotonic` seams in tests."""

    def __init__(self, start: datetime) -> None:
        self.start = self.now = start

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return (self.now - self.start).total_seconds()

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def drift_event(model: str, window_start: datetime, *, id: str | None = None) -> Event:
    """A ``drift.detected`` event as the drift-monitor publishes it (keel.drift's payload,
    the episode's event id unless ``id`` is given)."""
    d = DriftDetected(
        model=model,
        window_start=window_start,
        window_end=window_start + timedelta(hours=1),
        rows=500,
        drifted=("amount",),
        drift_share=0.5,
        scores={"amount": 0.4},
        reason="psi above the policy's limit",
    )
    return Event.create(
        type=DriftDetected.TYPE,
        key=model,
        event_time=d.window_end,
        payload=d.to_payload(),
        id=id or d.event_id,
    )


not_a_factory = 42
