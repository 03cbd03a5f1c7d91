"""The provenance chain: append-only, hash-chained records of every run transition.

One SQLite table (in the controller's database, written in the same transaction as the
step it records). Entry n stores ``prev`` = hash of entry n-1 (64 zeros for the first)
and ``hash = sha256(canonical_json({seq, prev, run_id, model, kind, at, record}))`` — the
construction keel.registry_client's alias audit log and keel.governance's approvals
ledger use (their hash helpers are private to them, so the dozen lines live here too).
`verify` recomputes every link: an edited row breaks its hash, a deleted or reordered one
breaks the sequence or the ``prev`` link; pass the ``head`` stored elsewhere (e.g. a
registry tag) to catch deletion of the newest rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keel.pipelines._canonical import canonical, loads, sha256_hex
from keel.pipelines._errors import ProvenanceTamperedError

GENESIS = "0" * 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS provenance (
    seq INTEGER PRIMARY KEY,
    prev TEXT NOT NULL,
    run_id TEXT NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    at TEXT NOT NULL,
    record TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS provenance_run ON provenance(run_id);
"""


@dataclass(frozen=True)
class ProvenanceEntry:
    seq: int
    prev: str
    run_id: str
    model: str
    kind: str
    at: str
    record: Mapping[str, Any]
    hash: str

    def body(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "prev": self.prev,
            "run_id": self.run_id,
            "model": self.model,
            "kind": self.kind,
            "at": self.at,
            "record": dict(self.record),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "hash": self.hash}


@dataclass(frozen=True)
class ProvenanceReport:
    entries: int
    head: tuple[int, str] | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def append(
    conn: sqlite3.Connection,
    *,
    run_id: str,
    model: str,
    kind: str,
    at: str,
    record: Mapping[str, Any],
) -> ProvenanceEntry:
    """Append one entry; call inside the caller's write transaction."""
    row = conn.execute("SELECT seq, hash FROM provenance ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (1, GENESIS) if row is None else (row[0] + 1, row[1])
    draft = ProvenanceEntry(seq, prev, run_id, model, kind, at, dict(record), "")
    h = sha256_hex(draft.body())
    conn.execute(
        "INSERT INTO provenance(seq, prev, run_id, model, kind, at, record, hash) VALUES (?,?,?,?,?,?,?,?)",
        (seq, prev, run_id, model, kind, at, canonical(dict(record)).decode(), h),
    )
    return ProvenanceEntry(seq, prev, run_id, model, kind, at, dict(record), h)


def read(conn: sqlite3.Connection, run_id: str | None = None) -> list[ProvenanceEntry]:
    q = "SELECT seq, prev, run_id, model, kind, at, record, hash FROM provenance"
    rows = conn.execute(
        q + (" WHERE run_id = ? ORDER BY seq" if run_id else " ORDER BY rowid"),
        (run_id,) if run_id else (),
    ).fetchall()
    out = []
    for seq, prev, rid, model, kind, at, record, h in rows:
        try:
            rec = loads(record)
        except ValueError:
            rec = {"__unreadable__": record}
        out.append(ProvenanceEntry(seq, prev, rid, model, kind, at, rec, h))
    return out


def verify(
    conn: sqlite3.Connection, expected_head: tuple[int, str] | None = None
) -> ProvenanceReport:
    """Every broken link, in storage order (rowid order, so a reorder of seq shows)."""
    entries = read(conn)
    problems: list[str] = []
    prev = GENESIS
    for i, e in enumerate(entries, start=1):
        if e.seq != i:
            problems.append(
                f"entry #{i}: expected seq {i}, found {e.seq} (an entry was deleted or reordered)"
            )
        if e.prev != prev:
            problems.append(f"seq {e.seq}: prev does not link to the previous entry")
        if sha256_hex(e.body()) != e.hash:
            problems.append(f"seq {e.seq}: hash does not match the entry (it was edited)")
        prev = e.hash
    head = (entries[-1].seq, entries[-1].hash) if entries else None
    if expected_head is not None and head != expected_head:
        problems.append(
            f"the chain ends at {head[0] if head else 0}, but head seq {expected_head[0]} was recorded: newest entries were deleted or replaced"
        )
    return ProvenanceReport(len(entries), head, tuple(problems))


def require_intact(
    conn: sqlite3.Connection, expected_head: tuple[int, str] | None = None
) -> ProvenanceReport:
    report = verify(conn, expected_head)
    if not report.ok:
        raise ProvenanceTamperedError(
            f"provenance chain is broken ({len(report.problems)} problem(s)): {report.problems[0]}",
            report.problems,
        )
    return report
