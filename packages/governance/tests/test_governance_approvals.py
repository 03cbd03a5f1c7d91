"""The approvals ledger: append-only, hash-chained, tamper-evident, safe under concurrent writers."""

from __future__ import annotations

import json
import multiprocessing as mp
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keel.governance import (
    GENESIS,
    ApprovalLedger,
    InvalidInputError,
    LedgerHead,
    LedgerTamperedError,
)

DIGEST = "sha256:" + "ab" * 32
EVIDENCE = "cd" * 32


class StepClock:
    """A fake clock: each call is one minute after the previous one."""

    def __init__(self) -> None:
        self.t = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.t += timedelta(minutes=1)
        return self.t


def _fill(path: Path, n: int = 5) -> ApprovalLedger:
    ledger = ApprovalLedger(path, clock=StepClock())
    for i in range(n):
        ledger.record(
            model="credit",
            artifact_digest=DIGEST,
            approver=f"p{i}",
            role="validator",
            decision="approve" if i % 2 == 0 else "reject",
            evidence_digest=EVIDENCE,
            note=f"note {i}",
        )
    return ledger


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_records_round_trip_with_the_injected_clock(tmp_path: Path) -> None:
    ledger = _fill(tmp_path / "a.jsonl", 3)
    got = ledger.approvals_for("credit", DIGEST)
    assert [a.approver for a in got] == ["p0", "p1", "p2"]
    assert [a.decided_at.minute for a in got] == [1, 2, 3]
    assert got[1].decision.value == "reject" and got[2].note == "note 2"
    assert ledger.approvals_for("credit", "sha256:" + "00" * 32) == []
    first = json.loads(_lines(tmp_path / "a.jsonl")[0])
    assert first["seq"] == 0 and first["prev"] == GENESIS
    report = ledger.verify()
    assert report.ok and report.entries == 3 and report.head is not None and report.head.seq == 2


def test_an_empty_or_missing_ledger_verifies(tmp_path: Path) -> None:
    ledger = ApprovalLedger(tmp_path / "none.jsonl")
    assert ledger.verify().ok and ledger.entries() == []


def test_edited_entry_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    ledger = _fill(path)
    lines = _lines(path)
    lines[1] = lines[1].replace('"reject"', '"approve"')  # p1's rejection becomes an approval
    path.write_text("\n".join(lines) + "\n")
    report = ledger.verify()
    assert not report.ok
    assert any("entry 1 was edited" in p for p in report.problems)
    with pytest.raises(LedgerTamperedError) as err:
        ledger.approvals_for("credit", DIGEST)
    assert err.value.problems == report.problems


def test_edited_entry_with_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "a.jsonl"
    ledger = _fill(path)
    lines = _lines(path)
    entry = json.loads(lines[1])
    entry["record"]["decision"] = "approve"
    body = {k: entry[k] for k in ("seq", "prev", "record")}
    entry["hash"] = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    lines[1] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")
    problems = ledger.verify().problems
    assert problems == (
        "line 3: entry 2 does not link to the entry before it: entries were deleted, reordered or replaced",
    )


def test_reordered_and_deleted_entries_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    ledger = _fill(path)
    lines = _lines(path)
    path.write_text("\n".join([lines[0], lines[2], lines[1], lines[3], lines[4]]) + "\n")
    assert any("reordered" in p for p in ledger.verify().problems)
    path.write_text("\n".join([lines[0], lines[1], lines[3], lines[4]]) + "\n")
    assert any("entry 3 where 2 was expected" in p for p in ledger.verify().problems)
    path.write_text("\n".join(lines[1:]) + "\n")  # the first one deleted
    assert not ledger.verify().ok
    path.write_text("\n".join([*lines[:2], "not json", *lines[2:]]) + "\n")
    assert "line 3: not JSON" in ledger.verify().problems


def test_truncation_is_caught_by_the_expected_head(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    ledger = _fill(path)
    head = ledger.verify().head
    assert head is not None
    assert ledger.verify(expected_head=str(head)).ok
    lines = _lines(path)
    path.write_text("\n".join(lines[:3]) + "\n")  # newest two deleted: a valid shorter chain
    assert ledger.verify().ok
    problems = ledger.verify(expected_head=head).problems
    assert problems and "entries were deleted" in problems[0]
    assert LedgerHead.parse(str(head)) == head
    with pytest.raises(InvalidInputError):
        LedgerHead.parse("7:xyz")


def test_appending_after_a_broken_tail_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    ledger = _fill(path, 2)
    lines = _lines(path)
    path.write_text(lines[0] + "\n" + lines[1].replace("p1", "px") + "\n")
    with pytest.raises(LedgerTamperedError, match="refusing to append"):
        _fill(path, 1)
    assert len(_lines(path)) == 2
    assert not ledger.verify().ok


def _writer(path: str, who: int, n: int) -> None:
    ledger = ApprovalLedger(path)
    for i in range(n):
        ledger.record(
            model="credit",
            artifact_digest=DIGEST,
            approver=f"w{who}-{i}",
            role="validator",
            decision="approve",
            evidence_digest=EVIDENCE,
        )


def test_concurrent_writers_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    ctx = mp.get_context("fork")  # no threads here; fork keeps the test fast
    procs = [ctx.Process(target=_writer, args=(str(path), w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ledger = ApprovalLedger(path)
    report = ledger.verify()
    assert report.ok, report.problems[:3]
    assert report.entries == 100
    assert len({a.approver for a in ledger.entries()}) == 100
