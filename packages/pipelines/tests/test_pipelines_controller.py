"""The controller with small real executors (pipelines_testkit): whole runs, the content
cache, gate failure and approval waits, canary rollback, coalescing, provenance tamper."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pipelines_testkit import LocalExecutors, StepClock, effects, write_dataset

from keel.drift import DriftDetected
from keel.governance import ApprovalLedger
from keel.pipelines import (
    CACHED,
    STEPS,
    Action,
    ApprovalGate,
    CanaryPolicy,
    ConflictError,
    Controller,
    GateResult,
    InvalidInputError,
    NotFoundError,
    ProvenanceTamperedError,
    RunStatus,
    StepContext,
    StepFailedError,
    Trigger,
    TriggerPolicy,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def make(
    tmp: Path, ex: LocalExecutors | None = None, canary: CanaryPolicy | None = None
) -> tuple[Controller, LocalExecutors]:
    ex = ex or LocalExecutors(tmp / "effects.db", tmp / "work")
    ctl = Controller(
        ex,
        clock=StepClock(T0),
        db_path=tmp / "pipelines.db",
        canary_policy=canary or CanaryPolicy(window=timedelta(0)),
        trigger_policy=TriggerPolicy(cooldown=timedelta(0)),
        code_version="c1",
        lock_hash="l1",
    )
    return ctl, ex


def manual(req: str) -> Trigger:
    return Trigger.manual("credit", req, at=T0, who="ana")


def calls(tmp: Path, step: str) -> int:
    return int(effects(tmp / "effects.db", "SELECT COUNT(*) FROM calls WHERE step = ?", step)[0][0])


@pytest.fixture
def data(tmp_path: Path) -> Path:
    p = tmp_path / "data.csv"
    write_dataset(p, seed=1)
    return p


def test_full_run_promotes_and_records_provenance(tmp_path: Path, data: Path) -> None:
    ctl, _ = make(tmp_path)
    d = ctl.submit(manual("r1"), {"data_path": str(data)})
    assert d.action is Action.START and d.run_id
    info = ctl.advance(d.run_id)
    assert info.status is RunStatus.PROMOTED
    assert [s.step for s in ctl.steps(d.run_id)] == list(STEPS)
    assert effects(
        tmp_path / "effects.db", "SELECT alias, version FROM aliases ORDER BY alias"
    ) == [("canary", "1"), ("champion", "1"), ("shadow", "1")]
    kinds = [e.kind for e in ctl.provenance(d.run_id)]
    assert kinds == ["trigger"] + [f"step:{s}" for s in STEPS]
    assert ctl.verify_provenance().ok
    # the chain carries the evidence: fingerprint, trainer run, digest, gate results, alias moves
    rec = {e.kind: e.record for e in ctl.provenance(d.run_id)}
    assert rec["step:build_training_set"]["output"]["fingerprint"]
    assert rec["step:train"]["output"]["trainer_run"].startswith("local-")
    assert rec["step:package_sign"]["output"]["artifact_digest"].startswith("sha256:")
    assert rec["step:gates"]["output"]["status"] == "passed"
    assert rec["step:promote_or_rollback"]["output"]["alias"] == "champion"


def test_rerun_on_unchanged_inputs_hits_cache_changed_data_misses(
    tmp_path: Path, data: Path
) -> None:
    ctl, _ = make(tmp_path)
    r1 = ctl.submit(manual("r1"), {"data_path": str(data)}).run_id
    assert r1 and ctl.advance(r1).status is RunStatus.PROMOTED
    r2 = ctl.submit(manual("r2"), {"data_path": str(data)}).run_id
    assert r2 and ctl.advance(r2).status is RunStatus.PROMOTED
    hits = {s.step: s.cache_hit for s in ctl.steps(r2)}
    assert all(hits[s] for s in CACHED) and not hits["register_challenger"]
    assert all(calls(tmp_path, s) == 1 for s in CACHED)
    # the same artifact digest registers once (registry-side idempotency)
    assert len(effects(tmp_path / "effects.db", "SELECT * FROM registrations")) == 1
    write_dataset(data, seed=2)  # same path, new content
    r3 = ctl.submit(manual("r3"), {"data_path": str(data)}).run_id
    assert r3 and ctl.advance(r3).status is RunStatus.PROMOTED
    assert not any(s.cache_hit for s in ctl.steps(r3) if s.step in CACHED)
    assert all(calls(tmp_path, s) == 2 for s in CACHED)
    # parameters are part of the key too
    r4 = ctl.submit(manual("r4"), {"data_path": str(data), "min_auc": 0.55}).run_id
    assert r4 and ctl.advance(r4).status is RunStatus.PROMOTED
    assert not any(s.cache_hit for s in ctl.steps(r4) if s.step in CACHED)


def test_after_a_promotion_a_rerun_on_unchanged_data_hits_every_cached_step(
    tmp_path: Path, data: Path
) -> None:
    ctl, ex = make(tmp_path)
    r1 = ctl.submit(manual("r1"), {"data_path": str(data)}).run_id
    assert r1 and ctl.advance(r1).status is RunStatus.PROMOTED
    # now the gates judge against a champion: their verdict differs from the first run's
    ex.champion_auc = 0.5
    r2 = ctl.submit(manual("r2"), {"data_path": str(data)}).run_id
    assert r2 and ctl.advance(r2).status is RunStatus.PROMOTED
    g1, g2 = (next(s.output for s in ctl.steps(r) if s.step == "gates") for r in (r1, r2))
    assert g1 != g2
    hits = {s.step: s.cache_hit for s in ctl.steps(r2)}
    assert all(hits[s] for s in CACHED), hits  # package_sign does not read the verdict
    assert calls(tmp_path, "package_sign") == 1
    assert ex.seen_inputs["package_sign"] == ["build_training_set", "evaluate", "train"]


def test_changed_executor_settings_miss_from_their_step_down(tmp_path: Path, data: Path) -> None:
    ctl, ex = make(tmp_path)
    r1 = ctl.submit(manual("r1"), {"data_path": str(data)}).run_id
    assert r1 and ctl.advance(r1).status is RunStatus.PROMOTED
    ex.settings["evaluate"] = {"metric": "auc", "by_group": False}
    r2 = ctl.submit(manual("r2"), {"data_path": str(data)}).run_id
    assert r2 and ctl.advance(r2).status is RunStatus.PROMOTED
    hits = {s.step: s.cache_hit for s in ctl.steps(r2)}
    assert hits["build_training_set"] and hits["train"]
    assert not hits["evaluate"]
    # evaluate gave the same output, so package_sign's inputs are unchanged: a hit
    assert hits["package_sign"] and calls(tmp_path, "evaluate") == 2
    r3 = ctl.submit(manual("r3"), {"data_path": str(data)}).run_id
    assert r3 and ctl.advance(r3).status is RunStatus.PROMOTED
    assert all(s.cache_hit for s in ctl.steps(r3) if s.step in CACHED)


def test_settings_that_cannot_be_read_fail_the_run_at_their_step(
    tmp_path: Path, data: Path
) -> None:
    class BadSettings(LocalExecutors):
        def step_settings(self, step: str) -> dict[str, object] | None:
            if step == "train":
                raise RuntimeError("trainer settings unreadable")
            return None

    ctl, _ = make(tmp_path, BadSettings(tmp_path / "effects.db", tmp_path / "work"))
    r = ctl.submit(manual("r1"), {"data_path": str(data)}).run_id
    assert r
    with pytest.raises(StepFailedError):
        ctl.advance(r)
    info = ctl.run(r)
    assert info.status is RunStatus.FAILED and info.step == "train"
    assert "trainer settings unreadable" in info.detail
    assert calls(tmp_path, "train") == 0


def test_timed_executors_count_each_call_where_the_controller_makes_it(
    tmp_path: Path, data: Path
) -> None:
    from keel.pipelines.local import TimedExecutors

    ticks = iter(range(10_000))
    inner = LocalExecutors(tmp_path / "effects.db", tmp_path / "work")
    timed = TimedExecutors(inner, clock=lambda: float(next(ticks)))  # every call: 1 "second"
    ctl, _ = make(tmp_path, timed)  # type: ignore[arg-type]
    r1 = ctl.submit(manual("r1"), {"data_path": str(data)}).run_id
    assert r1 and ctl.advance(r1).status is RunStatus.PROMOTED
    first = timed.take()
    assert {k: first[k] for k in ("build_training_set", "train", "package_sign")} == {
        "build_training_set": 1.0,
        "train": 1.0,
        "package_sign": 1.0,
    }
    assert first["move_alias"] == 3.0  # shadow, canary, champion
    assert timed.champion_auc is None  # other attributes are the inner executors'
    r2 = ctl.submit(manual("r2"), {"data_path": str(data)}).run_id
    assert r2 and ctl.advance(r2).status is RunStatus.PROMOTED
    again = timed.take()
    assert not {"build_training_set", "train", "evaluate", "package_sign"} & set(again)
    assert again["gates"] == 1.0


def test_failed_gate_leaves_champion_untouched(tmp_path: Path, data: Path) -> None:
    ctl, _ = make(tmp_path)
    r1 = ctl.submit(manual("r1"), {"data_path": str(data)}).run_id
    assert r1 and ctl.advance(r1).status is RunStatus.PROMOTED
    write_dataset(data, seed=9)
    r2 = ctl.submit(manual("r2"), {"data_path": str(data), "min_auc": 0.999}).run_id
    assert r2
    info = ctl.advance(r2)
    assert info.status is RunStatus.GATE_FAILED and info.step == "gates"
    assert info.detail.startswith("quality:") and "threshold" in info.detail
    assert effects(
        tmp_path / "effects.db", "SELECT version FROM aliases WHERE alias='champion'"
    ) == [("1",)]
    assert len(effects(tmp_path / "effects.db", "SELECT * FROM registrations")) == 1
    gates = next(e for e in ctl.provenance(r2) if e.kind == "step:gates").record["output"]
    assert gates["failed"] == ["quality"] and gates["results"][0]["evidence"]["threshold"] == 0.999


class ApprovalExecutors(LocalExecutors):
    """Tier-1 gates: waits for two recorded approvals in a keel.governance ledger."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp / "effects.db", tmp / "work")
        self.ledger = ApprovalLedger(tmp / "approvals.jsonl", clock=lambda: T0)

    def gates(self, ctx: StepContext) -> Sequence[GateResult]:
        quality = list(super().gates(ctx))
        digest = "sha256:" + ctx.inputs["train"]["trainer_run"].split("-")[1] * 5
        ap = ApprovalGate(1).evaluate(
            model=ctx.model,
            artifact_digest=digest,
            trainer="tom",
            approvals=self.ledger.approvals_for(ctx.model, digest),
            now=ctx.now,
            validation_note="ok",
            validator="val",
            fairness_passed=True,
            has_model_card=True,
        )
        return [*quality, ap]


def test_tier1_run_waits_for_two_approvals(tmp_path: Path, data: Path) -> None:
    ex = ApprovalExecutors(tmp_path)
    ctl, _ = make(tmp_path, ex)
    run = ctl.submit(manual("r1"), {"data_path": str(data)}).run_id
    assert run
    info = ctl.advance(run)
    assert (info.status, info.step) == (
        RunStatus.WAITING,
        "gates",
    ) and "tier 1 needs 2" in info.detail
    digest = "sha256:" + ctl.steps(run)[1].output["trainer_run"].split("-")[1] * 5
    ex.ledger.record(
        model="credit",
        artifact_digest=digest,
        approver="ana",
        role="validator",
        decision="approve",
        evidence_digest="e" * 64,
    )
    assert ctl.advance(run).status is RunStatus.WAITING
    ex.ledger.record(
        model="credit",
        artifact_digest=digest,
        approver="bo",
        role="risk",
        decision="approve",
        evidence_digest="e" * 64,
    )
    assert ctl.advance(run).status is RunStatus.PROMOTED
    gates = next(e for e in ctl.provenance(run) if e.kind == "step:gates").record["output"]
    assert sorted(gates["results"][1]["evidence"]["decision"]["approvers"]) == ["ana", "bo"]


def test_canary_failure_rolls_back_and_keeps_champion(tmp_path: Path, data: Path) -> None:
    ctl, _ = make(tmp_path)
    r1 = ctl.submit(manual("r1"), {"data_path": str(data)}).run_id
    assert r1 and ctl.advance(r1).status is RunStatus.PROMOTED
    write_dataset(data, seed=3)
    sig = sqlite3.connect(tmp_path / "effects.db")
    with sig:
        sig.execute(
            "INSERT INTO signals VALUES ('canary.failed', '2', ?, '', NULL, NULL)",
            ((T0 + timedelta(days=1)).isoformat(),),
        )
    sig.close()
    r2 = ctl.submit(manual("r2"), {"data_path": str(data)}).run_id
    assert r2
    assert ctl.advance(r2).status is RunStatus.ROLLED_BACK
    aliases = dict(effects(tmp_path / "effects.db", "SELECT alias, version FROM aliases"))
    assert aliases["champion"] == "1" and "canary" not in aliases and "shadow" not in aliases
    last = ctl.steps(r2)[-1].output
    assert last["action"] == "rollback"


def test_canary_waits_for_its_window(tmp_path: Path, data: Path) -> None:
    ctl, _ = make(tmp_path, canary=CanaryPolicy(window=timedelta(hours=1)))
    run = ctl.submit(manual("r1"), {"data_path": str(data)}).run_id
    assert run
    info = ctl.advance(run)
    assert (info.status, info.step) == (RunStatus.WAITING, "canary")
    ctl.clock.now += timedelta(hours=1)  # type: ignore[attr-defined]
    assert ctl.advance(run).status is RunStatus.PROMOTED
    assert effects(tmp_path / "effects.db", "SELECT COUNT(*) FROM moves WHERE alias='canary'") == [
        (1,)
    ]


def _drift(start: datetime) -> dict[str, object]:
    return DriftDetected(
        "credit", start, start + timedelta(minutes=5), 100, ("a",), 0.5, {"a": 0.3}, "r"
    ).to_payload()


def test_one_episode_one_run_and_concurrent_triggers_coalesce(tmp_path: Path, data: Path) -> None:
    ctl, _ = make(tmp_path)
    first = ctl.submit(Trigger.from_drift(_drift(T0), at=T0), {"data_path": str(data)})
    assert first.action is Action.START
    again = ctl.submit(Trigger.from_drift(_drift(T0), at=T0), {"data_path": str(data)})
    assert again.action is Action.DUPLICATE
    other = ctl.submit(
        Trigger.from_drift(_drift(T0 + timedelta(hours=1)), at=T0), {"data_path": str(data)}
    )
    assert (other.action, other.run_id) == (Action.COALESCE, first.run_id)
    # many submitters at once (own connections, threads): one run
    results: list[Action] = []

    def submit(i: int) -> None:
        c, _ = make(tmp_path)
        results.append(
            c.submit(Trigger.from_drift(_drift(T0 + timedelta(hours=2 + i % 3)), at=T0)).action
        )
        c.close()

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results).count(Action.COALESCE) == 3 and results.count(Action.DUPLICATE) == 6
    assert len(ctl.runs()) == 1
    assert first.run_id and ctl.advance(first.run_id).status is RunStatus.PROMOTED
    assert ctl.verify_provenance().ok


class Flaky(LocalExecutors):
    fail = True

    def train(self, ctx: StepContext):  # type: ignore[no-untyped-def]
        if self.fail:
            raise RuntimeError("ray cluster unreachable")
        return super().train(ctx)


def test_step_failure_marks_run_and_retry_resumes_there(tmp_path: Path, data: Path) -> None:
    ex = Flaky(tmp_path / "effects.db", tmp_path / "work")
    ctl, _ = make(tmp_path, ex)
    run = ctl.submit(manual("r1"), {"data_path": str(data)}).run_id
    assert run
    with pytest.raises(StepFailedError, match="ray cluster unreachable") as e:
        ctl.advance(run)
    assert e.value.step == "train"
    info = ctl.run(run)
    assert (info.status, info.step) == (RunStatus.FAILED, "train")
    ex.fail = False
    assert ctl.resume()[0].status is RunStatus.PROMOTED
    assert calls(tmp_path, "build_training_set") == 1
    with pytest.raises(NotFoundError):
        ctl.run("run-nope")


def _promoted(tmp: Path, data: Path) -> Controller:
    ctl, _ = make(tmp)
    run = ctl.submit(manual("r1"), {"data_path": str(data)}).run_id
    assert run and ctl.advance(run).status is RunStatus.PROMOTED
    assert ctl.verify_provenance().ok
    return ctl


def test_provenance_detects_an_edited_row(tmp_path: Path, data: Path) -> None:
    ctl = _promoted(tmp_path, data)
    c = sqlite3.connect(tmp_path / "pipelines.db")
    with c:
        c.execute(
            "UPDATE provenance SET record = replace(record, 'sha256:', 'sha256:0') WHERE kind = 'step:package_sign'"
        )
    rep = ctl.verify_provenance()
    assert not rep.ok and any("edited" in p for p in rep.problems)


def test_provenance_detects_deleted_and_reordered_rows(tmp_path: Path, data: Path) -> None:
    ctl = _promoted(tmp_path, data)
    head = ctl.verify_provenance().head
    c = sqlite3.connect(tmp_path / "pipelines.db")
    with c:
        c.execute("DELETE FROM provenance WHERE seq = 3")
    rep = ctl.verify_provenance()
    assert not rep.ok and any("deleted or reordered" in p for p in rep.problems)

    ctl2 = _promoted(tmp_path / "b", data)
    c2 = sqlite3.connect(tmp_path / "b" / "pipelines.db")
    rows = c2.execute(
        "SELECT seq, prev, run_id, model, kind, at, record, hash FROM provenance WHERE seq IN (4, 5) ORDER BY seq"
    ).fetchall()
    with c2:  # swap the contents of rows 4 and 5 (a reorder)
        c2.execute("DELETE FROM provenance WHERE seq IN (4, 5)")
        c2.execute("INSERT INTO provenance VALUES (?,?,?,?,?,?,?,?)", (4, *rows[1][1:]))
        c2.execute("INSERT INTO provenance VALUES (?,?,?,?,?,?,?,?)", (5, *rows[0][1:]))
    rep2 = ctl2.verify_provenance()
    assert not rep2.ok and any("prev does not link" in p for p in rep2.problems)

    ctl3 = _promoted(tmp_path / "c", data)
    head3 = ctl3.verify_provenance().head
    c3 = sqlite3.connect(tmp_path / "c" / "pipelines.db")
    with c3:  # truncate the newest entry: only the out-of-band head catches it
        c3.execute("DELETE FROM provenance WHERE seq = (SELECT MAX(seq) FROM provenance)")
    assert ctl3.verify_provenance().ok
    assert not ctl3.verify_provenance(head3).ok
    assert head is not None


def test_lineage_walks_from_champion_back_to_drift_evidence(tmp_path: Path, data: Path) -> None:
    ctl, _ = make(tmp_path)
    run = ctl.submit(Trigger.from_drift(_drift(T0), at=T0), {"data_path": str(data)}).run_id
    assert run and ctl.advance(run).status is RunStatus.PROMOTED
    lin = ctl.lineage("credit")
    assert lin.run_id == run and lin.code_version == "c1" and lin.lock_hash == "l1"
    assert lin.trigger["evidence"]["drift_detected"]["drifted"] == ["a"]
    raw = data.read_bytes()
    assert lin.sources == {"transactions": hashlib.sha256(raw).hexdigest()}  # the exact data
    assert lin.alias_moves[-1]["alias"] == "champion"
    assert ctl.lineage("credit", lin.artifact_digest).run_id == run
    with pytest.raises(NotFoundError):
        ctl.lineage("credit", "sha256:" + "0" * 64)
    c = sqlite3.connect(tmp_path / "pipelines.db")
    with c:
        c.execute(
            "UPDATE provenance SET record = replace(record, '\"a\"', '\"z\"') WHERE kind = 'trigger'"
        )
    with pytest.raises(ProvenanceTamperedError, match="edited"):
        ctl.lineage("credit")


def test_read_only_controller_submits_but_does_not_run(tmp_path: Path, data: Path) -> None:
    ro = Controller(None, clock=StepClock(T0), db_path=tmp_path / "pipelines.db")
    d = ro.submit(manual("r1"), {"data_path": str(data)})
    assert d.action is Action.START and d.run_id
    with pytest.raises(InvalidInputError, match="without executors"):
        ro.advance(d.run_id)
    ctl, _ = make(tmp_path)
    assert ctl.resume()[0].status is RunStatus.PROMOTED


class NoFingerprint(LocalExecutors):
    def build_training_set(self, ctx: StepContext) -> dict[str, object]:
        return {"rows": 3}


def test_executor_breaking_its_contract_fails_the_run_by_name(tmp_path: Path, data: Path) -> None:
    ctl, _ = make(tmp_path, NoFingerprint(tmp_path / "effects.db", tmp_path / "work"))
    run = ctl.submit(manual("r1"), {"data_path": str(data)}).run_id
    assert run
    with pytest.raises(StepFailedError, match="must return 'fingerprint'"):
        ctl.advance(run)
    assert ctl.run(run).status is RunStatus.FAILED


def test_failed_run_holds_the_model_until_abandoned(tmp_path: Path, data: Path) -> None:
    ex = Flaky(tmp_path / "effects.db", tmp_path / "work")
    ctl, _ = make(tmp_path, ex)
    run = ctl.submit(manual("r1"), {"data_path": str(data)}).run_id
    assert run
    with pytest.raises(StepFailedError):
        ctl.advance(run)
    d = ctl.submit(manual("r2"), {"data_path": str(data)})
    assert (d.action, d.run_id) == (Action.COALESCE, run)
    with pytest.raises(InvalidInputError, match="who and why"):
        ctl.abandon(run, "", "")
    assert ctl.abandon(run, "ana", "data source retired").status is RunStatus.ABANDONED
    assert ctl.resume() == []
    assert ctl.submit(manual("r3"), {"data_path": str(data)}).action is Action.START
    assert ctl.provenance(run)[-1].kind == "abandoned" and ctl.verify_provenance().ok
    with pytest.raises(InvalidInputError, match="already ended"):
        ctl.abandon(run, "ana", "again")


def test_only_one_controller_advances_runs_per_database(tmp_path: Path, data: Path) -> None:
    a, _ = make(tmp_path)
    b, _ = make(tmp_path)
    r1 = a.submit(manual("r1"), {"data_path": str(data)}).run_id
    assert r1 and a.advance(r1).status is RunStatus.PROMOTED
    r2 = b.submit(manual("r2"), {"data_path": str(data)}).run_id  # submitting is fine
    assert r2
    with pytest.raises(ConflictError, match="another controller"):
        b.advance(r2)
    a.close()
    assert b.advance(r2).status is RunStatus.PROMOTED
