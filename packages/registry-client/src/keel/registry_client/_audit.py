"""The alias audit log: decision records and hash-chained entries (pure; no I/O).

Each registered model has its own chain. Entry n carries the hash of entry n-1 (the first
carries `GENESIS`) and its own hash over a canonical JSON of all its fields, so editing an
entry breaks its hash, deleting or reordering entries breaks the sequence or the links, and
deleting the newest entries is caught against the chain head that every alias move also
writes to the registered model's `keel.audit_head` tag in MLflow (a second store).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from keel.registry_client._errors import InvalidInputError, NotFoundError

GENESIS = "0" * 64
Action = Literal["promote", "rollback"]
ACTIONS: tuple[str, ...] = ("promote", "rollback")
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_VERSION_LIKE = re.compile(r"^v\d+$")
STANDARD_ALIASES = ("champion", "challenger", "shadow")


def check_alias(alias: str) -> str:
    """`champion`, `challenger`, `shadow` or a user-defined lowercase name."""
    if (
        not isinstance(alias, str)
        or not _ALIAS.match(alias)
        or alias == "latest"
        or _VERSION_LIKE.match(alias)
    ):
        raise InvalidInputError(
            f"alias {alias!r}: use a lowercase name (letters, digits, '_', '-'; not 'latest' or 'v<N>'), "
            f"e.g. one of {', '.join(STANDARD_ALIASES)}"
        )
    return alias


@dataclass(frozen=True)
class Decision:
    """Why an alias moved: who decided, why, and the digest of the evidence (gate results,
    approvals) the decision rests on. Required for every alias move."""

    who: str
    why: str
    evidence_digest: str

    def __post_init__(self) -> None:
        for label in ("who", "why", "evidence_digest"):
            v = getattr(self, label)
            if not isinstance(v, str) or not v.strip():
                raise InvalidInputError(f"decision.{label}: required (a non-empty string)")
        if len(self.who) > 200 or len(self.why) > 4000 or len(self.evidence_digest) > 200:
            raise InvalidInputError(
                "decision: who <= 200, why <= 4000, evidence_digest <= 200 characters"
            )


@dataclass(frozen=True)
class AuditEntry:
    """One alias move, as stored (append-only) next to MLflow's own tables."""

    model: str
    seq: int
    time: str  # ISO 8601, UTC
    action: str
    alias: str
    from_version: int | None
    to_version: int
    decision: Decision
    prev_hash: str
    hash: str

    def body(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("hash")
        return d

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AuditEntry:
        return cls(**{**d, "decision": Decision(**d["decision"])})


def entry_hash(body: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON (sorted keys, no spaces) of an entry without its hash."""
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def next_entry(
    prev: AuditEntry | None,
    *,
    model: str,
    time: str,
    action: str,
    alias: str,
    from_version: int | None,
    to_version: int,
    decision: Decision,
) -> AuditEntry:
    """The entry that follows `prev` (None: the model's first) in the model's chain."""
    if action not in ACTIONS:
        raise InvalidInputError(f"action {action!r}: expected one of {ACTIONS}")
    seq = 1 if prev is None else prev.seq + 1
    prev_hash = GENESIS if prev is None else prev.hash
    draft = AuditEntry(
        model, seq, time, action, alias, from_version, to_version, decision, prev_hash, ""
    )
    return AuditEntry(**{**draft.__dict__, "hash": entry_hash(draft.body())})


@dataclass(frozen=True)
class AuditProblem:
    model: str
    seq: int | None
    problem: str


def verify_chain(
    model: str, entries: Sequence[AuditEntry], head: tuple[int, str] | None
) -> list[AuditProblem]:
    """Problems in one model's chain, in storage order; empty means intact.

    `head` is the (seq, hash) of the newest entry as recorded in MLflow (None if never set).
    """
    problems: list[AuditProblem] = []
    prev_hash = GENESIS
    for i, e in enumerate(entries, start=1):
        if e.model != model:
            problems.append(AuditProblem(model, e.seq, f"entry belongs to model {e.model!r}"))
        if e.seq != i:
            problems.append(
                AuditProblem(model, e.seq, f"expected seq {i}: an entry was deleted or reordered")
            )
        if e.prev_hash != prev_hash:
            problems.append(
                AuditProblem(model, e.seq, "prev_hash does not link to the previous entry")
            )
        if entry_hash(e.body()) != e.hash:
            problems.append(
                AuditProblem(model, e.seq, "hash does not match the entry: it was edited")
            )
        prev_hash = e.hash
    if head is not None:
        last = entries[-1] if entries else None
        if last is None or (last.seq, last.hash) != head:
            problems.append(
                AuditProblem(
                    model,
                    head[0],
                    f"chain head recorded in MLflow is seq {head[0]}, the log ends at "
                    f"{last.seq if last else 0}: newest entries were deleted or replaced",
                )
            )
    return problems


def holder_history(entries: Iterable[AuditEntry], alias: str) -> list[int]:
    """The alias's holders as a stack: a promotion pushes, a rollback pops.

    The last element is the current holder; rolling back returns to the element before it.
    """
    stack: list[int] = []
    for e in entries:
        if e.alias != alias:
            continue
        if e.action == "promote":
            stack.append(e.to_version)
        elif stack:
            stack.pop()
    return stack


def rollback_target(entries: Iterable[AuditEntry], model: str, alias: str) -> tuple[int, int]:
    """(current holder, previous holder) for a rollback; NotFoundError if there is none."""
    stack = holder_history(entries, alias)
    if len(stack) < 2:
        raise NotFoundError(
            f"{model}@{alias}: no previous holder in the audit log to roll back to "
            f"({'never promoted' if not stack else f'only version {stack[0]} ever held it'})"
        )
    return stack[-1], stack[-2]


def format_head(entry: AuditEntry) -> str:
    return f"{entry.seq}:{entry.hash}"


def parse_head(raw: str | None) -> tuple[int, str] | None:
    if not raw:
        return None
    seq, _, h = raw.partition(":")
    try:
        return int(seq), h
    except ValueError:
        return (-1, raw)
