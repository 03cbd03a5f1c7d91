"""The retrain controller: a durable run record, content-addressed step cache, and
intent/completion records that make side effects happen once across crashes.

Steps, in order::

    build_training_set → train → evaluate → gates → package_sign
        → register_challenger → shadow → canary → promote_or_rollback

The controller decides nothing about ML and does nothing itself: every step calls an
injected executor (`Executors`), every decision is a pure policy (`TriggerPolicy`,
gates' `combine`, `CanaryPolicy`). State lives in one SQLite database
(``$KEEL_HOME/pipelines/pipelines.db`` by default):

* ``runs`` — one row per run (status, current step);
* ``steps`` — a completed step's output, cache key and whether it was a cache hit; a step
  is complete exactly when its row exists, written in the same transaction as its
  provenance entry;
* ``cache`` — (step, cache key) → output for the pure steps. The key is the sha256 of the
  canonical JSON of everything the step reads: code version, lock hash, parameters (the
  run's and the executors' ``step_settings``), the fingerprints of the upstream outputs it
  reads (`READS`: not the gates' verdict) and (for the first step) of the source data, so
  changed data is never a stale hit and unchanged data is a hit;
* ``effects`` — for side-effecting steps an *intent* row (idempotency key) is committed
  before the executor is called and marked *done* with its result after; on restart an
  intent without completion calls the executor again with the SAME key, which the executor
  must treat idempotently (the registry dedupes registration by artifact digest; an alias
  move to the version it already points at is a no-op). A done effect is never repeated.

Kill the process anywhere: a restart (`resume`) continues at the first incomplete step.
Run one controller process per database at a time (triggers may be submitted from many).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from keel.pipelines import _provenance as prov
from keel.pipelines._canary import CanaryAction, CanaryPolicy, CanarySignal
from keel.pipelines._canonical import canonical, iso, loads, parse_iso, sha256_hex
from keel.pipelines._errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    StepFailedError,
    StoreError,
)
from keel.pipelines._gates import GateResult, GateStatus, combine
from keel.pipelines._triggers import (
    Action,
    ActiveRun,
    Trigger,
    TriggerDecision,
    TriggerPolicy,
    TriggerState,
)
from keel.telemetry import PipelinesMetrics

# The loop's steps in order: keel.telemetry's pipelines vocabulary owns the list (its
# metrics label them), so the two cannot drift apart.
STEPS: tuple[str, ...] = PipelinesMetrics.STEPS
CACHED = frozenset({"build_training_set", "train", "evaluate", "package_sign"})
# What each cached step reads of the run's earlier outputs. Its context holds only these and
# its cache key covers only these: the gates' verdict (which names the champion of the day)
# is not an input of package_sign, so a rerun on unchanged data after a promotion is a hit.
READS: Mapping[str, tuple[str, ...]] = {
    "build_training_set": (),
    "train": ("build_training_set",),
    "evaluate": ("build_training_set", "train"),
    "package_sign": ("build_training_set", "train", "evaluate"),
}
SIDE_EFFECTS = frozenset({"register_challenger", "shadow", "canary", "promote_or_rollback"})

Clock = Callable[[], datetime]
Hook = Callable[[str], None]


class RunStatus(StrEnum):
    RUNNING = "running"
    WAITING = "waiting"  # for approvals or the canary window
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    GATE_FAILED = "gate_failed"
    FAILED = "failed"  # an executor raised; `resume` retries the step
    ABANDONED = "abandoned"  # given up by a person (`abandon`): frees the model for new runs


# A failed run still holds its model (new triggers coalesce into it, `resume` retries it)
# until it succeeds or someone abandons it: two live runs of one model would race.
ACTIVE = (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.FAILED)
TERMINAL = (RunStatus.PROMOTED, RunStatus.ROLLED_BACK, RunStatus.GATE_FAILED, RunStatus.ABANDONED)


@dataclass(frozen=True)
class StepContext:
    """What an executor gets: the run, its parameters, every completed step's output
    (``inputs[step]``) and, for side-effecting steps, the idempotency key."""

    run_id: str
    model: str
    step: str
    params: Mapping[str, Any]
    code_version: str
    lock_hash: str
    inputs: Mapping[str, Mapping[str, Any]]
    now: datetime
    idempotency_key: str = ""


class Executors(Protocol):
    """The side of each step that does work. Outputs are JSON objects (plain data).

    Optional: ``step_settings(step) -> Mapping | None``, the executors' own settings a
    cached step's result depends on (hyper-parameters, columns, thresholds; not where it
    runs). The controller adds them to that step's cache key, so changed settings are a
    miss, never a stale hit."""

    def source_fingerprints(self, ctx: StepContext) -> Mapping[str, str]:
        """Content fingerprints of the raw data the training set is built from."""

    def build_training_set(self, ctx: StepContext) -> Mapping[str, Any]:
        """Must include ``fingerprint`` (content of the built set)."""

    def train(self, ctx: StepContext) -> Mapping[str, Any]: ...

    def evaluate(self, ctx: StepContext) -> Mapping[str, Any]: ...

    def gates(self, ctx: StepContext) -> Sequence[GateResult]: ...

    def package_sign(self, ctx: StepContext) -> Mapping[str, Any]:
        """Must include ``artifact_digest``."""

    def register_challenger(self, ctx: StepContext) -> Mapping[str, Any]:
        """Idempotent on ``ctx.idempotency_key``; must include ``version``."""

    def move_alias(self, ctx: StepContext, alias: str, version: str) -> Mapping[str, Any]:
        """Idempotent on ``ctx.idempotency_key``."""

    def canary_signals(self, ctx: StepContext, version: str) -> tuple[Sequence[CanarySignal], int]:
        """Serving's ``canary.failed``/SLO signals for ``version`` and its request count."""

    def rollback(self, ctx: StepContext, version: str) -> Mapping[str, Any]:
        """Take ``version`` off shadow/canary; the champion is untouched. Idempotent."""


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    model: str
    status: RunStatus
    step: str | None
    created_at: str
    trigger_key: str
    detail: str


@dataclass(frozen=True)
class StepRecord:
    step: str
    cache_key: str
    cache_hit: bool
    output: Mapping[str, Any]
    at: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, model TEXT NOT NULL, status TEXT NOT NULL, step TEXT,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, params TEXT NOT NULL,
    code_version TEXT NOT NULL, lock_hash TEXT NOT NULL, trigger_key TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS triggers (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, kind TEXT NOT NULL, at TEXT NOT NULL,
    action TEXT NOT NULL, run_id TEXT, trigger TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL, step TEXT NOT NULL, cache_key TEXT NOT NULL, cache_hit INTEGER NOT NULL,
    output TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS cache (
    step TEXT NOT NULL, cache_key TEXT NOT NULL, output TEXT NOT NULL, PRIMARY KEY (step, cache_key)
);
CREATE TABLE IF NOT EXISTS effects (
    key TEXT PRIMARY KEY, run_id TEXT NOT NULL, step TEXT NOT NULL, state TEXT NOT NULL,
    intent_at TEXT NOT NULL, done_at TEXT, result TEXT
);
"""


def default_db_path(env: Mapping[str, str] | None = None) -> Path:
    """``$KEEL_HOME/pipelines/pipelines.db`` (``~/.keel`` when KEEL_HOME is unset)."""
    env = os.environ if env is None else env
    home = Path(env.get("KEEL_HOME") or Path.home() / ".keel")
    return home / "pipelines" / "pipelines.db"


def _noop_hook(point: str) -> None:
    return None


@dataclass(frozen=True)
class Lineage:
    """A promoted (or any) artifact traced back through the provenance chain: the run
    that produced it, its trigger and drift evidence, the training-set fingerprint, the
    code/lock hash, trainer run, gate results and alias moves — every entry verified."""

    run_id: str
    model: str
    artifact_digest: str
    trigger: Mapping[str, Any]
    training_set_fingerprint: str
    sources: Mapping[str, str]
    code_version: str
    lock_hash: str
    trainer_run: str
    gates: Mapping[str, Any]
    alias_moves: tuple[Mapping[str, Any], ...]
    entries: tuple[prov.ProvenanceEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model": self.model,
            "artifact_digest": self.artifact_digest,
            "trigger": dict(self.trigger),
            "training_set_fingerprint": self.training_set_fingerprint,
            "sources": dict(self.sources),
            "code_version": self.code_version,
            "lock_hash": self.lock_hash,
            "trainer_run": self.trainer_run,
            "gates": dict(self.gates),
            "alias_moves": [dict(m) for m in self.alias_moves],
            "entries": [e.seq for e in self.entries],
        }


@dataclass
class Controller:
    """``executors`` may be None for a controller that only submits triggers and reads
    history (the CLI); `advance`/`resume` then refuse."""

    executors: Executors | None
    clock: Clock
    db_path: Path = field(default_factory=default_db_path)
    trigger_policy: TriggerPolicy = field(default_factory=TriggerPolicy)
    canary_policy: CanaryPolicy = field(default_factory=CanaryPolicy)
    code_version: str = ""
    lock_hash: str = ""
    hook: Hook = _noop_hook  # called at "before:<step>", "mid:<step>", "after:<step>"

    def __post_init__(self) -> None:
        self.db_path = Path(self.db_path)
        self._lock: int | None = None
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA + prov.SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the pipelines database {self.db_path}: {exc}") from None

    @property
    def _ex(self) -> Executors:
        if self.executors is None:
            raise InvalidInputError(
                "this controller was opened without executors: it can submit and read only"
            )
        return self.executors

    def close(self) -> None:
        self._conn.close()
        if self._lock is not None:
            os.close(self._lock)  # releases the runner lock
            self._lock = None

    def hold_runner_lock(self) -> None:
        """One process advances runs per database: an exclusive ``flock`` on
        ``<db>.runner.lock``, held until `close` (the kernel drops it if we are killed)."""
        if self._lock is not None:
            return
        fd = os.open(f"{self.db_path}.runner.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConflictError(
                f"another controller is advancing runs in {self.db_path}; run one per database"
            ) from None
        self._lock = fd

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"pipelines database {self.db_path} is unavailable: {exc}") from None
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")

    # -- triggers ----------------------------------------------------------------------------
    def submit(self, trigger: Trigger, params: Mapping[str, Any] | None = None) -> TriggerDecision:
        """Decide a trigger (in one write transaction, so concurrent submits coalesce) and
        record it; ``start`` creates the run (`advance` runs it)."""
        params = dict(params or {})
        canonical(params)
        now = self.clock()
        with self._tx() as c:
            seen = frozenset(r[0] for r in c.execute("SELECT key FROM triggers"))
            active = tuple(
                ActiveRun(r[0], r[1], parse_iso(r[2]))
                for r in c.execute(
                    "SELECT run_id, model, created_at FROM runs WHERE status IN (?, ?, ?) ORDER BY created_at",
                    tuple(s.value for s in ACTIVE),
                )
            )
            last = {
                r[0]: parse_iso(r[1])
                for r in c.execute("SELECT model, MAX(created_at) FROM runs GROUP BY model")
            }
            decision = self.trigger_policy.decide(TriggerState(seen, active, last), trigger, now)
            if decision.action in (Action.DEFER, Action.DUPLICATE):
                return decision  # a deferred key stays unseen; a duplicate is already recorded
            run_id = decision.run_id
            if decision.action is Action.START:
                run_id = "run-" + sha256_hex({"trigger": trigger.key, "model": trigger.model})[:20]
                c.execute(
                    "INSERT INTO runs(run_id, model, status, step, created_at, updated_at, params, code_version, lock_hash, trigger_key)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        run_id,
                        trigger.model,
                        RunStatus.RUNNING.value,
                        STEPS[0],
                        iso(now),
                        iso(now),
                        canonical(params).decode(),
                        self.code_version,
                        self.lock_hash,
                        trigger.key,
                    ),
                )
                decision = TriggerDecision(decision.action, decision.reason, run_id)
            c.execute(
                "INSERT INTO triggers(key, model, kind, at, action, run_id, trigger) VALUES (?,?,?,?,?,?,?)",
                (
                    trigger.key,
                    trigger.model,
                    trigger.kind.value,
                    iso(trigger.at),
                    decision.action.value,
                    run_id,
                    canonical(trigger.to_dict()).decode(),
                ),
            )
            if decision.action in (Action.START, Action.COALESCE) and run_id is not None:
                prov.append(
                    c,
                    run_id=run_id,
                    model=trigger.model,
                    kind="trigger",
                    at=iso(now),
                    record={
                        "trigger": trigger.to_dict(),
                        "decision": decision.to_dict(),
                        "code_version": self.code_version,
                        "lock_hash": self.lock_hash,
                        "params": params,
                    },
                )
            return decision

    # -- reading -----------------------------------------------------------------------------
    def run(self, run_id: str) -> RunInfo:
        r = self._conn.execute(
            "SELECT run_id, model, status, step, created_at, trigger_key, detail FROM runs WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        if r is None:
            raise NotFoundError(f"no run {run_id!r}; `keel retrain history` lists them")
        return RunInfo(r[0], r[1], RunStatus(r[2]), r[3], r[4], r[5], r[6])

    def runs(self, model: str | None = None) -> list[RunInfo]:
        q = (
            "SELECT run_id FROM runs"
            + (" WHERE model = ?" if model else "")
            + " ORDER BY created_at, run_id"
        )
        return [self.run(r[0]) for r in self._conn.execute(q, (model,) if model else ())]

    def steps(self, run_id: str) -> list[StepRecord]:
        rows = self._conn.execute(
            "SELECT step, cache_key, cache_hit, output, at FROM steps WHERE run_id = ?", (run_id,)
        ).fetchall()
        order = {s: i for i, s in enumerate(STEPS)}
        recs = [StepRecord(s, k, bool(h), loads(o), a) for s, k, h, o, a in rows]
        return sorted(recs, key=lambda r: order[r.step])

    def provenance(self, run_id: str | None = None) -> list[prov.ProvenanceEntry]:
        return prov.read(self._conn, run_id)

    def verify_provenance(
        self, expected_head: tuple[int, str] | None = None
    ) -> prov.ProvenanceReport:
        return prov.verify(self._conn, expected_head)

    # -- running -----------------------------------------------------------------------------
    def resume(self) -> list[RunInfo]:
        """Advance every run that is running, waiting or failed (after a restart)."""
        ids = [
            r[0]
            for r in self._conn.execute(
                "SELECT run_id FROM runs WHERE status IN (?,?,?) ORDER BY created_at",
                (RunStatus.RUNNING.value, RunStatus.WAITING.value, RunStatus.FAILED.value),
            )
        ]
        return [self.advance(i) for i in ids]

    def abandon(self, run_id: str, who: str, why: str) -> RunInfo:
        """Give up a run that is not finished (e.g. failed for good): it ends ``abandoned``,
        recorded in provenance, and the model takes new triggers again."""
        if not who.strip() or not why.strip():
            raise InvalidInputError("abandoning a run needs who and why")
        info = self.run(run_id)
        if info.status in TERMINAL:
            raise InvalidInputError(f"run {run_id} already ended ({info.status.value})")
        at = iso(self.clock())
        with self._tx() as c:
            c.execute(
                "UPDATE runs SET status = ?, detail = ?, updated_at = ? WHERE run_id = ?",
                (RunStatus.ABANDONED.value, f"abandoned by {who}: {why}", at, run_id),
            )
            prov.append(
                c,
                run_id=run_id,
                model=info.model,
                kind="abandoned",
                at=at,
                record={
                    "who": who,
                    "why": why,
                    "step": info.step,
                    "previous_status": info.status.value,
                },
            )
        return self.run(run_id)

    def lineage(self, model: str, artifact_digest: str | None = None) -> Lineage:
        """Trace ``artifact_digest`` (default: the newest promoted run's) back to its
        trigger. Verifies the whole chain first: ProvenanceTamperedError on any broken
        link, NotFoundError when no run produced the digest, or a link is missing."""
        prov.require_intact(self._conn)
        runs = [
            r
            for r in self.runs(model)
            if artifact_digest is not None or r.status is RunStatus.PROMOTED
        ]
        for info in reversed(runs):
            entries = tuple(self.provenance(info.run_id))
            by_kind = {e.kind: e.record for e in entries}
            pkg = by_kind.get("step:package_sign")
            if pkg is None or (
                artifact_digest is not None
                and pkg["output"].get("artifact_digest") != artifact_digest
            ):
                continue
            missing = [
                k
                for k in ("trigger", "step:build_training_set", "step:train", "step:gates")
                if k not in by_kind
            ]
            if missing:
                raise NotFoundError(
                    f"run {info.run_id}: provenance lacks {missing}; the chain to the trigger is broken"
                )
            trig = by_kind["trigger"]
            bts = by_kind["step:build_training_set"]["output"]
            moves = tuple(
                by_kind[f"step:{s}"]["output"]
                for s in ("shadow", "canary", "promote_or_rollback")
                if f"step:{s}" in by_kind
            )
            return Lineage(
                info.run_id,
                info.model,
                str(pkg["output"]["artifact_digest"]),
                trig["trigger"],
                str(bts["fingerprint"]),
                dict(bts.get("sources", {})),
                str(trig["code_version"]),
                str(trig["lock_hash"]),
                str(by_kind["step:train"]["output"].get("trainer_run", "")),
                by_kind["step:gates"]["output"],
                moves,
                entries,
            )
        what = artifact_digest or "a promoted artifact"
        raise NotFoundError(
            f"no run of {model!r} produced {what}; `keel retrain history` lists runs"
        )

    def advance(self, run_id: str) -> RunInfo:
        """Run steps until the run waits or ends. Raises StepFailedError when an executor
        raises (the run is marked failed at that step; `advance` again retries it)."""
        if self.executors is None:
            raise InvalidInputError(
                "this controller was opened without executors: it can submit and read only"
            )
        self.hold_runner_lock()
        info = self.run(run_id)
        if info.status in TERMINAL:
            return info
        if info.status in (RunStatus.WAITING, RunStatus.FAILED):
            self._set_status(run_id, RunStatus.RUNNING, info.step, "")
        while True:
            info = self.run(run_id)
            if info.status is not RunStatus.RUNNING or info.step is None:
                return info
            self._do_step(info)

    def _set_status(self, run_id: str, status: RunStatus, step: str | None, detail: str) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE runs SET status = ?, step = ?, detail = ?, updated_at = ? WHERE run_id = ?",
                (status.value, step, detail, iso(self.clock()), run_id),
            )

    def _ctx(self, info: RunInfo, step: str, key: str = "") -> StepContext:
        r = self._conn.execute(
            "SELECT params, code_version, lock_hash FROM runs WHERE run_id = ?", (info.run_id,)
        ).fetchone()
        inputs = {s.step: s.output for s in self.steps(info.run_id)}
        return StepContext(
            info.run_id, info.model, step, loads(r[0]), r[1], r[2], inputs, self.clock(), key
        )

    def _cache_key(
        self,
        ctx: StepContext,
        sources: Mapping[str, str] | None,
        settings: Mapping[str, Any] | None = None,
    ) -> str:
        upstream = {s: sha256_hex(dict(o)) for s, o in ctx.inputs.items()}
        body: dict[str, Any] = {
            "step": ctx.step,
            "code_version": ctx.code_version,
            "lock_hash": ctx.lock_hash,
            "params": dict(ctx.params),
            "inputs": upstream,
            "sources": dict(sources) if sources is not None else None,
        }
        if settings is not None:  # the executors' own parameters this step depends on
            body["settings"] = dict(settings)
        return sha256_hex(body)

    def _step_settings(self, step: str) -> Mapping[str, Any] | None:
        own = getattr(self._ex, "step_settings", None)
        return own(step) if callable(own) else None

    def _complete(
        self,
        info: RunInfo,
        step: str,
        output: Mapping[str, Any],
        cache_key: str,
        hit: bool,
        *,
        status: RunStatus | None = None,
        effect_key: str | None = None,
        detail: str = "",
    ) -> None:
        out = dict(output)
        body = canonical(out).decode()
        idx = STEPS.index(step)
        nxt = STEPS[idx + 1] if idx + 1 < len(STEPS) else None
        new_status = status or (RunStatus.RUNNING if nxt else RunStatus.PROMOTED)
        at = iso(self.clock())
        with self._tx() as c:
            if effect_key is not None:
                c.execute(
                    "UPDATE effects SET state = 'done', done_at = ?, result = ? WHERE key = ?",
                    (at, body, effect_key),
                )
            if step in CACHED and not hit:
                c.execute(
                    "INSERT OR IGNORE INTO cache(step, cache_key, output) VALUES (?,?,?)",
                    (step, cache_key, body),
                )
            c.execute(
                "INSERT INTO steps(run_id, step, cache_key, cache_hit, output, at) VALUES (?,?,?,?,?,?)",
                (info.run_id, step, cache_key, int(hit), body, at),
            )
            c.execute(
                "UPDATE runs SET status = ?, step = ?, detail = ?, updated_at = ? WHERE run_id = ?",
                (
                    new_status.value,
                    nxt if new_status is RunStatus.RUNNING else step,
                    detail,
                    at,
                    info.run_id,
                ),
            )
            prov.append(
                c,
                run_id=info.run_id,
                model=info.model,
                kind=f"step:{step}",
                at=at,
                record={
                    "cache_key": cache_key,
                    "cache_hit": hit,
                    "idempotency_key": effect_key,
                    "output": out,
                    "status": new_status.value,
                },
            )

    def _call(self, info: RunInfo, step: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # an executor's failure of any kind marks the run failed
            cause = f"{type(exc).__name__}: {exc}"
            self._set_status(info.run_id, RunStatus.FAILED, step, cause)
            raise StepFailedError(info.run_id, step, cause) from exc

    def _do_step(self, info: RunInfo) -> None:
        step = info.step
        assert step is not None
        self.hook(f"before:{step}")
        if step in SIDE_EFFECTS:
            self._side_effect_step(info, step)
        else:
            ctx = self._ctx(info, step)
            if step in READS:  # a cached step sees (and is keyed on) only what it reads
                ctx = replace(ctx, inputs={s: ctx.inputs[s] for s in READS[step]})
            sources = None
            if step == "build_training_set":
                sources = dict(self._call(info, step, lambda: self._ex.source_fingerprints(ctx)))
            settings = self._call(info, step, lambda: self._step_settings(step))
            key = self._cache_key(ctx, sources, settings)
            if step == "gates":
                self._gates(info, ctx, key)
            else:
                row = self._conn.execute(
                    "SELECT output FROM cache WHERE step = ? AND cache_key = ?", (step, key)
                ).fetchone()
                if row is not None:
                    self._complete(info, step, loads(row[0]), key, True)
                else:
                    fn = getattr(self._ex, step)
                    need = {"build_training_set": "fingerprint", "package_sign": "artifact_digest"}
                    out = self._call(
                        info, step, lambda: _require(dict(fn(ctx)), need.get(step), step)
                    )
                    if sources is not None:
                        out.setdefault("sources", sources)
                    self.hook(f"mid:{step}")
                    self._complete(info, step, out, key, False)
        self.hook(f"after:{step}")

    def _gates(self, info: RunInfo, ctx: StepContext, key: str) -> None:
        verdict = self._call(info, "gates", lambda: combine(list(self._ex.gates(ctx))))
        if verdict.status is GateStatus.WAITING:
            self._set_status(
                info.run_id,
                RunStatus.WAITING,
                "gates",
                "waiting: " + "; ".join(r for g in verdict.waiting for r in g.reasons),
            )
            return
        failed = verdict.status is GateStatus.FAILED
        detail = "; ".join(f"{g.gate}: {', '.join(g.reasons)}" for g in verdict.failed)
        self.hook("mid:gates")
        self._complete(
            info,
            "gates",
            verdict.to_dict(),
            key,
            False,
            status=RunStatus.GATE_FAILED if failed else None,
            detail=detail,
        )

    def _side_effect_step(self, info: RunInfo, step: str) -> None:
        pre = self._ctx(info, step)
        digest = str(pre.inputs.get("package_sign", {}).get("artifact_digest", ""))
        ekey = sha256_hex({"run_id": info.run_id, "step": step, "artifact_digest": digest})
        row = self._conn.execute(
            "SELECT state, result, intent_at FROM effects WHERE key = ?", (ekey,)
        ).fetchone()
        if row is None:
            with self._tx() as c:
                c.execute(
                    "INSERT INTO effects(key, run_id, step, state, intent_at) VALUES (?,?,?,?,?)",
                    (ekey, info.run_id, step, "intent", iso(self.clock())),
                )
            row = ("intent", None, None)
        ctx = StepContext(
            pre.run_id,
            pre.model,
            step,
            pre.params,
            pre.code_version,
            pre.lock_hash,
            pre.inputs,
            pre.now,
            ekey,
        )
        version = str(ctx.inputs.get("register_challenger", {}).get("version", ""))
        if step == "canary":
            self._canary(info, ctx, ekey, row, version)
            return
        if step == "register_challenger":
            out = self._call(
                info,
                step,
                lambda: _require(dict(self._ex.register_challenger(ctx)), "version", step),
            )
        elif step == "shadow":
            out = {
                "alias": "shadow",
                "version": version,
                **self._call(info, step, lambda: dict(self._ex.move_alias(ctx, "shadow", version))),
            }
        else:  # promote_or_rollback
            decision = ctx.inputs["canary"]["decision"]
            if decision["action"] == CanaryAction.PROMOTE.value:
                out = {
                    "action": "promote",
                    "alias": "champion",
                    "version": version,
                    **self._call(
                        info,
                        step,
                        lambda: dict(self._ex.move_alias(ctx, "champion", version)),
                    ),
                }
            else:
                out = {
                    "action": "rollback",
                    "version": version,
                    **self._call(info, step, lambda: dict(self._ex.rollback(ctx, version))),
                }
        self.hook(f"mid:{step}")
        status = None
        if step == "promote_or_rollback":
            status = RunStatus.PROMOTED if out["action"] == "promote" else RunStatus.ROLLED_BACK
        self._complete(info, step, out, ekey, False, status=status, effect_key=ekey)

    def _canary(
        self, info: RunInfo, ctx: StepContext, ekey: str, row: tuple[Any, ...], version: str
    ) -> None:
        # phase 1: start the canary once (the effect); phase 2: watch until the policy decides
        if row[0] != "started":
            moved = self._call(
                info, "canary", lambda: dict(self._ex.move_alias(ctx, "canary", version))
            )
            self.hook("mid:canary")
            with self._tx() as c:
                c.execute(
                    "UPDATE effects SET state = 'started', result = ? WHERE key = ?",
                    (canonical({"move": moved, "started_at": iso(self.clock())}).decode(), ekey),
                )
            row = self._conn.execute(
                "SELECT state, result, intent_at FROM effects WHERE key = ?", (ekey,)
            ).fetchone()
        started = loads(row[1])
        signals, requests = self._call(
            info, "canary", lambda: self._ex.canary_signals(ctx, version)
        )
        decision = self.canary_policy.decide(
            version=version,
            started_at=parse_iso(started["started_at"]),
            now=self.clock(),
            signals=list(signals),
            requests=int(requests),
        )
        if decision.action is CanaryAction.WAIT:
            self._set_status(info.run_id, RunStatus.WAITING, "canary", decision.reason)
            return
        self._complete(
            info,
            "canary",
            {
                "alias": "canary",
                "version": version,
                "move": started["move"],
                "started_at": started["started_at"],
                "decision": decision.to_dict(),
            },
            ekey,
            False,
            effect_key=ekey,
        )


def _require(out: dict[str, Any], key: str | None, step: str) -> dict[str, Any]:
    if key is not None and not out.get(key):
        raise InvalidInputError(
            f"the {step} executor must return {key!r} in its output; got keys {sorted(out)}"
        )
    return out
