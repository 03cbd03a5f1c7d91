"""Recorded approvals: an append-only, hash-chained JSON-lines ledger.

Each line is one entry::

    {"seq": 7, "prev": "<hash of entry 6>", "record": {...approval...}, "hash": "<sha256>"}

where ``hash = sha256(canonical_json({"seq", "prev", "record"}))`` and the first entry's
``prev`` is 64 zeros. `ApprovalLedger.verify` recomputes every link, so an edited entry
(hash mismatch), a reordered or deleted one (sequence gap or ``prev`` mismatch) is reported.
Deleting the *newest* entries leaves a valid shorter chain; to catch that, keep the
`head` (seq + hash) somewhere the ledger's writer cannot rewrite (a registry tag, a
decision record) and pass it as ``expected_head``.

Appends take an exclusive ``flock`` on the file, so concurrent writers (processes) never
interleave or fork the chain. Reads used for decisions (`approvals_for`) verify the whole
chain first and fail closed with `LedgerTamperedError`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from keel.governance._clock import Clock, iso_utc, parse_iso_utc, system_clock
from keel.governance._errors import InvalidInputError, LedgerError, LedgerTamperedError

GENESIS = "0" * 64
LEDGER_FORMAT = "keel.approvals"
_HEX = frozenset("0123456789abcdef")


class Decision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


def _nonblank(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{what} must be a non-empty string; got {value!r}")
    return value.strip()


def _is_digest(value: str) -> bool:
    body = value.split(":", 1)[1] if ":" in value else value
    return len(body) >= 16 and set(body) <= _HEX


@dataclass(frozen=True)
class Approval:
    """One person's recorded decision about one artifact (by digest).

    ``approver`` is an identity string (binding it to SSO is future work); ``role`` what
    they approve as (``validator``, ``model_owner``, ``risk_officer``...);
    ``evidence_digest`` the digest of what they looked at (gate results, validation
    report, model card) so the decision can be tied to exact evidence later.
    """

    model: str
    artifact_digest: str
    approver: str
    role: str
    decision: Decision
    evidence_digest: str
    decided_at: datetime
    note: str = ""

    def __post_init__(self) -> None:
        for name in ("model", "artifact_digest", "approver", "role", "evidence_digest"):
            object.__setattr__(self, name, _nonblank(getattr(self, name), name))
        for name in ("artifact_digest", "evidence_digest"):
            if not _is_digest(getattr(self, name)):
                raise InvalidInputError(
                    f"{name} must be a hex digest (optionally 'sha256:'-prefixed); got {getattr(self, name)!r}"
                )
        try:
            object.__setattr__(self, "decision", Decision(self.decision))
        except ValueError:
            raise InvalidInputError(
                f"decision must be 'approve' or 'reject'; got {self.decision!r}"
            ) from None
        iso_utc(self.decided_at)  # rejects naive datetimes
        if not isinstance(self.note, str):
            raise InvalidInputError("note must be a string")

    def to_dict(self) -> dict[str, str]:
        return {
            "model": self.model,
            "artifact_digest": self.artifact_digest,
            "approver": self.approver,
            "role": self.role,
            "decision": self.decision.value,
            "evidence_digest": self.evidence_digest,
            "decided_at": iso_utc(self.decided_at),
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Approval:
        try:
            return cls(
                model=data["model"],
                artifact_digest=data["artifact_digest"],
                approver=data["approver"],
                role=data["role"],
                decision=data["decision"],
                evidence_digest=data["evidence_digest"],
                decided_at=parse_iso_utc(data["decided_at"]),
                note=data.get("note", ""),
            )
        except KeyError as exc:
            raise InvalidInputError(f"approval record lacks {exc.args[0]!r}") from None


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _entry_hash(seq: int, prev: str, record: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical({"seq": seq, "prev": prev, "record": record})).hexdigest()


@dataclass(frozen=True)
class LedgerHead:
    """The newest entry's position: store it out of band to detect truncation."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> LedgerHead:
        seq, _, digest = text.partition(":")
        if not seq.isdigit() or len(digest) != 64 or not set(digest) <= _HEX:
            raise InvalidInputError(
                f"ledger head must look like '<seq>:<sha256 hex>'; got {text!r}"
            )
        return cls(int(seq), digest)


@dataclass(frozen=True)
class VerifyReport:
    entries: int
    head: LedgerHead | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


class ApprovalLedger:
    """Append-only approvals at ``path`` (a JSON-lines file, created on first append)."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Clock = system_clock) -> None:
        self.path = Path(path)
        self._clock = clock

    # -- writing ---------------------------------------------------------------------
    def record(
        self,
        *,
        model: str,
        artifact_digest: str,
        approver: str,
        role: str,
        decision: Decision | str,
        evidence_digest: str,
        note: str = "",
    ) -> Approval:
        """Record a decision made now (by the ledger's clock) and return it."""
        approval = Approval(
            model=model,
            artifact_digest=artifact_digest,
            approver=approver,
            role=role,
            decision=decision,  # type: ignore[arg-type]  # a str is validated in __post_init__
            evidence_digest=evidence_digest,
            decided_at=self._clock(),
            note=note,
        )
        self.append(approval)
        return approval

    def append(self, approval: Approval) -> LedgerHead:
        """Append one approval under an exclusive file lock; returns the new head."""
        record = approval.to_dict()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    last = self._last_entry(f)
                    if last is None:
                        seq, prev = 0, GENESIS
                    else:
                        problem = _entry_problem(last, None, None)
                        if problem:
                            raise LedgerTamperedError(
                                f"{self.path}: refusing to append after a broken entry: {problem}",
                                (problem,),
                            )
                        seq, prev = int(last["seq"]) + 1, str(last["hash"])
                    digest = _entry_hash(seq, prev, record)
                    line = _canonical({"seq": seq, "prev": prev, "record": record, "hash": digest})
                    f.seek(0, os.SEEK_END)
                    f.write(line + b"\n")
                    f.flush()
                    os.fsync(f.fileno())
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
        except OSError as exc:
            raise LedgerError(f"cannot append to approvals ledger {self.path}: {exc}") from exc
        return LedgerHead(seq, digest)

    @staticmethod
    def _last_entry(f: Any) -> dict[str, Any] | None:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return None
        chunk = 4096
        while True:
            start = max(0, size - chunk)
            f.seek(start)
            data = f.read(size - start)
            lines = data.rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or start == 0:
                try:
                    entry = json.loads(lines[-1])
                except ValueError as exc:
                    raise LedgerTamperedError(
                        "last ledger line is not JSON", (f"last line: {exc}",)
                    ) from None
                if not isinstance(entry, dict):
                    raise LedgerTamperedError("last ledger line is not an object", ("last line",))
                return entry
            chunk *= 4

    # -- reading ---------------------------------------------------------------------
    def _lines(self) -> Iterator[tuple[int, bytes]]:
        try:
            with open(self.path, "rb") as f:
                for lineno, raw in enumerate(f, start=1):
                    yield lineno, raw.rstrip(b"\n")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise LedgerError(f"cannot read approvals ledger {self.path}: {exc}") from exc

    def verify(self, expected_head: LedgerHead | str | None = None) -> VerifyReport:
        """Check every link; list every problem (edited, reordered, deleted entries)."""
        if isinstance(expected_head, str):
            expected_head = LedgerHead.parse(expected_head)
        problems: list[str] = []
        prev, want_seq, count = GENESIS, 0, 0
        head: LedgerHead | None = None
        for lineno, raw in self._lines():
            count += 1
            try:
                entry = json.loads(raw)
            except ValueError:
                problems.append(f"line {lineno}: not JSON")
                continue
            problem = _entry_problem(entry, want_seq, prev)
            if problem:
                problems.append(f"line {lineno}: {problem}")
            if isinstance(entry, dict) and isinstance(entry.get("seq"), int):
                want_seq = entry["seq"] + 1
                prev = str(entry.get("hash", ""))
                head = LedgerHead(entry["seq"], prev)
            else:
                want_seq += 1
        if expected_head is not None:
            if head is None or head.seq < expected_head.seq:
                problems.append(
                    f"ledger ends at {head or 'nothing'}, before the expected head {expected_head}: entries were deleted"
                )
            elif head.seq == expected_head.seq and head.hash != expected_head.hash:
                problems.append(f"head {head} differs from the expected head {expected_head}")
        return VerifyReport(count, head, tuple(problems))

    def entries(self) -> list[Approval]:
        """Every approval, oldest first, after verifying the whole chain (fails closed)."""
        report = self.verify()
        if not report.ok:
            raise LedgerTamperedError(
                f"approvals ledger {self.path} fails verification: {report.problems[0]}"
                + (f" (+{len(report.problems) - 1} more)" if len(report.problems) > 1 else ""),
                report.problems,
            )
        out = []
        for _, raw in self._lines():
            out.append(Approval.from_dict(json.loads(raw)["record"]))
        return out

    def approvals_for(self, model: str, artifact_digest: str) -> list[Approval]:
        """The verified approvals of one artifact of one model, oldest first."""
        return [
            a for a in self.entries() if a.model == model and a.artifact_digest == artifact_digest
        ]


def _entry_problem(entry: object, want_seq: int | None, want_prev: str | None) -> str | None:
    if not isinstance(entry, dict) or set(entry) != {"seq", "prev", "record", "hash"}:
        return "malformed entry (want exactly seq, prev, record, hash)"
    seq, prev, record, digest = entry["seq"], entry["prev"], entry["record"], entry["hash"]
    if not isinstance(seq, int) or not isinstance(prev, str) or not isinstance(record, dict):
        return "malformed entry (field types)"
    if _entry_hash(seq, prev, record) != digest:
        return f"entry {seq} was edited (its hash does not match its content)"
    if want_seq is not None and seq != want_seq:
        return f"entry {seq} where {want_seq} was expected: entries were deleted or reordered"
    if want_prev is not None and prev != want_prev:
        return f"entry {seq} does not link to the entry before it: entries were deleted, reordered or replaced"
    return None
