"""`verify_audit` on both backends detects edited, reordered and deleted entries."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
from integration.registry.registry_support import ArtifactFactory, Backend, tamper

from keel.registry_client import Decision, Registry

DECIDED = Decision(who="bob@bank", why="passed gates", evidence_digest="sha256:" + "a" * 64)


@pytest.fixture
def audited(registry: Registry, make_artifact: ArtifactFactory) -> str:
    for i in range(3):
        registry.register(make_artifact(i))
    name = make_artifact(0).name
    for v in (1, 2, 3, 2):
        registry.promote(name, "champion", v, DECIDED)
    registry.rollback(name, "champion", DECIDED)
    return name


def test_an_untouched_log_verifies(registry: Registry, audited: str) -> None:
    report = registry.verify_audit()
    assert report.ok, report.problems
    assert report.entries >= 5
    assert registry.verify_audit(audited).entries == 5
    entries = registry.audit(audited)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].decision == DECIDED
    assert all(b.prev_hash == a.hash for a, b in pairwise(entries))


def _entry(backend: Backend, name: str, seq: int) -> dict:
    reg = backend.open()
    return next(e.to_json() for e in reg.audit(name) if e.seq == seq)


def test_an_edited_entry_is_detected(backend: Backend, registry: Registry, audited: str) -> None:
    e = _entry(backend, audited, 2)
    e["decision"]["who"] = "mallory"
    tamper(
        backend,
        "UPDATE keel_registry_audit SET entry = ? WHERE model = ? AND seq = 2",
        (json.dumps(e), audited),
    )
    problems = registry.verify_audit(audited).problems
    assert [(p.seq, "edited" in p.problem) for p in problems] == [(2, True)]


def test_reordered_entries_are_detected(backend: Backend, registry: Registry, audited: str) -> None:
    tamper(
        backend,
        "UPDATE keel_registry_audit SET seq = -seq WHERE model = ? AND seq IN (2, 3)",
        (audited,),
    )
    tamper(
        backend, "UPDATE keel_registry_audit SET seq = 3 WHERE model = ? AND seq = -2", (audited,)
    )
    tamper(
        backend, "UPDATE keel_registry_audit SET seq = 2 WHERE model = ? AND seq = -3", (audited,)
    )
    report = registry.verify_audit(audited)
    assert not report.ok
    assert any("reordered" in p.problem for p in report.problems)


def test_a_deleted_entry_is_detected(backend: Backend, registry: Registry, audited: str) -> None:
    tamper(backend, "DELETE FROM keel_registry_audit WHERE model = ? AND seq = 3", (audited,))
    report = registry.verify_audit(audited)
    assert any(p.seq == 4 and "deleted" in p.problem for p in report.problems)


def test_deleting_the_newest_entries_is_detected(
    backend: Backend, registry: Registry, audited: str
) -> None:
    tamper(backend, "DELETE FROM keel_registry_audit WHERE model = ? AND seq >= 4", (audited,))
    report = registry.verify_audit(audited)
    assert [p.seq for p in report.problems] == [5]
    assert "newest entries were deleted" in report.problems[0].problem
    tamper(backend, "DELETE FROM keel_registry_audit WHERE model = ?", (audited,))
    assert not registry.verify_audit().ok  # a wholly deleted log is found from MLflow's head tag
