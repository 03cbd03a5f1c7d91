"""Small real executors for the controller tests: they build a training set from a CSV
file, fit a logistic regression with NumPy, score it, and keep their side effects
(registrations, alias moves, rollbacks) in their own SQLite file so duplicates are
countable from outside the process — including after a SIGKILL."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from keel.pipelines import (
    CanarySignal,
    GateResult,
    Holdout,
    QualityGate,
    StepContext,
)

EFFECTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (id INTEGER PRIMARY KEY, step TEXT NOT NULL, key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS registrations (key TEXT PRIMARY KEY, version INTEGER NOT NULL, digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS aliases (alias TEXT PRIMARY KEY, version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS moves (key TEXT PRIMARY KEY, alias TEXT NOT NULL, from_version TEXT, to_version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rollbacks (key TEXT PRIMARY KEY, version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signals (kind TEXT, version TEXT, at TEXT, name TEXT, value REAL, objective REAL);
"""


def write_dataset(path: Path, seed: int, n: int = 400) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    logits = 1.5 * x[:, 0] - 1.0 * x[:, 1] + 0.2 * x[:, 2]
    y = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(int)
    rows = ["a,b,c,y"] + [
        f"{r[0]:.6f},{r[1]:.6f},{r[2]:.6f},{t}" for r, t in zip(x, y, strict=True)
    ]
    path.write_text("\n".join(rows) + "\n")


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    pos = y == 1
    n1, n0 = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


class LocalExecutors:
    def __init__(self, effects_db: Path, work: Path, champion_auc: float | None = None) -> None:
        self.effects_db = Path(effects_db)
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.champion_auc = champion_auc
        #: step -> the executors' own settings that step depends on (its `step_settings`)
        self.settings: dict[str, dict[str, Any]] = {}
        #: step -> the upstream outputs its last call saw (``ctx.inputs``' keys)
        self.seen_inputs: dict[str, list[str]] = {}
        with self._db() as c:
            c.executescript(EFFECTS_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.effects_db, timeout=30.0)
        c.execute("PRAGMA journal_mode=WAL")
        return c

    def _count(self, step: str, key: str = "") -> None:
        with self._db() as c:
            c.execute("INSERT INTO calls(step, key) VALUES (?, ?)", (step, key))

    def step_settings(self, step: str) -> Mapping[str, Any] | None:
        return self.settings.get(step)

    # -- pure steps --------------------------------------------------------------------
    def source_fingerprints(self, ctx: StepContext) -> Mapping[str, str]:
        data = Path(ctx.params["data_path"]).read_bytes()
        return {"transactions": hashlib.sha256(data).hexdigest()}

    def build_training_set(self, ctx: StepContext) -> Mapping[str, Any]:
        self._count("build_training_set")
        raw = np.loadtxt(ctx.params["data_path"], delimiter=",", skiprows=1)
        blob = raw.astype("<f8").tobytes()
        fp = hashlib.sha256(blob).hexdigest()
        out = self.work / f"train-{fp[:16]}.npy"
        np.save(out, raw)
        return {"fingerprint": fp, "path": str(out), "rows": int(raw.shape[0])}

    def train(self, ctx: StepContext) -> Mapping[str, Any]:
        self._count("train")
        raw = np.load(ctx.inputs["build_training_set"]["path"])
        x, y = raw[:, :3], raw[:, 3]
        w = np.zeros(4)
        xb = np.hstack([x, np.ones((len(x), 1))])
        for _ in range(200):  # plain gradient descent: deterministic
            p = 1 / (1 + np.exp(-xb @ w))
            w -= 0.5 * xb.T @ (p - y) / len(y)
        return {
            "trainer_run": "local-" + hashlib.sha256(w.tobytes()).hexdigest()[:12],
            "weights": [round(float(v), 10) for v in w],
        }

    def evaluate(self, ctx: StepContext) -> Mapping[str, Any]:
        self._count("evaluate")
        raw = np.load(ctx.inputs["build_training_set"]["path"])
        w = np.array(ctx.inputs["train"]["weights"])
        s = 1 / (1 + np.exp(-(np.hstack([raw[:, :3], np.ones((len(raw), 1))]) @ w)))
        return {
            "holdout": ctx.inputs["build_training_set"]["fingerprint"],
            "metrics": {"auc": _auc(raw[:, 3], s)},
        }

    def gates(self, ctx: StepContext) -> Sequence[GateResult]:
        self._count("gates")
        ev = ctx.inputs["evaluate"]
        challenger = Holdout(ev["holdout"], ev["metrics"])
        champion = (
            None
            if self.champion_auc is None
            else Holdout(ev["holdout"], {"auc": self.champion_auc})
        )
        gate = QualityGate(
            "auc", threshold=float(ctx.params.get("min_auc", 0.6)), min_abs_improvement=0.0
        )
        return [gate.evaluate(challenger, champion)]

    def package_sign(self, ctx: StepContext) -> Mapping[str, Any]:
        self._count("package_sign")
        self.seen_inputs["package_sign"] = sorted(ctx.inputs)
        body = json.dumps({"weights": ctx.inputs["train"]["weights"]}, sort_keys=True).encode()
        return {"artifact_digest": "sha256:" + hashlib.sha256(body).hexdigest()}

    # -- side effects: idempotent on ctx.idempotency_key ---------------------------------
    def register_challenger(self, ctx: StepContext) -> Mapping[str, Any]:
        self._count("register_challenger", ctx.idempotency_key)
        digest = ctx.inputs["package_sign"]["artifact_digest"]
        with self._db() as c:
            c.execute("BEGIN IMMEDIATE")
            row = c.execute(
                "SELECT version FROM registrations WHERE digest = ?", (digest,)
            ).fetchone()
            if row is None:
                n = c.execute("SELECT COUNT(*) FROM registrations").fetchone()[0]
                c.execute(
                    "INSERT INTO registrations(key, version, digest) VALUES (?,?,?)",
                    (ctx.idempotency_key, n + 1, digest),
                )
                row = (n + 1,)
        return {"version": str(row[0]), "artifact_digest": digest}

    def move_alias(self, ctx: StepContext, alias: str, version: str) -> Mapping[str, Any]:
        self._count(f"move_alias:{alias}", ctx.idempotency_key)
        with self._db() as c:
            c.execute("BEGIN IMMEDIATE")
            done = c.execute(
                "SELECT from_version FROM moves WHERE key = ?", (ctx.idempotency_key,)
            ).fetchone()
            if done is not None:
                return {"from_version": done[0], "to_version": version}
            cur = c.execute("SELECT version FROM aliases WHERE alias = ?", (alias,)).fetchone()
            prev = cur[0] if cur else None
            c.execute(
                "INSERT OR REPLACE INTO aliases(alias, version) VALUES (?, ?)", (alias, version)
            )
            c.execute(
                "INSERT INTO moves(key, alias, from_version, to_version) VALUES (?,?,?,?)",
                (ctx.idempotency_key, alias, prev, version),
            )
        return {"from_version": prev, "to_version": version}

    def canary_signals(self, ctx: StepContext, version: str) -> tuple[Sequence[CanarySignal], int]:
        with self._db() as c:
            rows = c.execute(
                "SELECT kind, version, at, name, value, objective FROM signals"
            ).fetchall()
        sig = [
            CanarySignal(k, v, datetime.fromisoformat(a), n or "", val, obj)
            for k, v, a, n, val, obj in rows
        ]
        return sig, 1000

    def rollback(self, ctx: StepContext, version: str) -> Mapping[str, Any]:
        self._count("rollback", ctx.idempotency_key)
        with self._db() as c:
            c.execute("BEGIN IMMEDIATE")
            c.execute(
                "INSERT OR IGNORE INTO rollbacks(key, version) VALUES (?, ?)",
                (ctx.idempotency_key, version),
            )
            for alias in ("shadow", "canary"):
                c.execute("DELETE FROM aliases WHERE alias = ? AND version = ?", (alias, version))
        return {"removed_from": ["shadow", "canary"]}


def effects(effects_db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    c = sqlite3.connect(effects_db)
    try:
        return c.execute(sql, args).fetchall()
    finally:
        c.close()


class StepClock:
    """A clock that moves forward ``step`` on every read (deterministic time)."""

    def __init__(
        self,
        start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
        step: timedelta = timedelta(seconds=1),
    ) -> None:
        self.now, self.step = start, step

    def __call__(self) -> datetime:
        t = self.now
        self.now += self.step
        return t
