"""Alias moves on both backends: decision records, rollback from the audit log, events."""

from __future__ import annotations

import pytest
from integration.registry.registry_support import ArtifactFactory, Backend

from keel.registry_client import (
    AliasMoved,
    ConflictError,
    Decision,
    InvalidInputError,
    NotFoundError,
    Registry,
    UnavailableError,
)

DECIDED = Decision(
    who="alice@bank", why="AUC +0.02 over champion", evidence_digest="sha256:" + "e" * 64
)


def _versions(registry: Registry, make_artifact: ArtifactFactory, n: int) -> str:
    for i in range(n):
        registry.register(make_artifact(i))
    return make_artifact(0).name


def test_promote_rollback_and_get_by_alias(
    backend: Backend, make_artifact: ArtifactFactory
) -> None:
    moved: list[AliasMoved] = []
    registry = backend.open(publisher=moved.append)
    name = _versions(registry, make_artifact, 3)
    for v in (1, 2, 3):
        registry.promote(name, "champion", v, DECIDED)
    registry.promote(name, "challenger", 1, DECIDED)
    registry.promote(name, "shadow", 2, DECIDED)
    registry.promote(name, "canary-eu", 3, DECIDED)  # user-defined
    assert registry.get_by_alias(name, "champion").version == 3
    assert registry.aliases(name) == {"champion": 3, "challenger": 1, "shadow": 2, "canary-eu": 3}

    back = registry.rollback(name, "champion", DECIDED)
    assert (back.action, back.from_version, back.to_version) == ("rollback", 3, 2)
    assert registry.get_by_alias(name, "champion").version == 2
    registry.rollback(name, "champion", DECIDED)
    assert registry.get_by_alias(name, "champion").version == 1
    with pytest.raises(NotFoundError, match="no previous holder"):
        registry.rollback(name, "champion", DECIDED)
    assert registry.get_by_alias(name, "challenger").version == 1  # other aliases untouched

    assert [(m.alias, m.from_version, m.to_version, m.action) for m in moved] == [
        ("champion", None, 1, "promote"),
        ("champion", 1, 2, "promote"),
        ("champion", 2, 3, "promote"),
        ("challenger", None, 1, "promote"),
        ("shadow", None, 2, "promote"),
        ("canary-eu", None, 3, "promote"),
        ("champion", 3, 2, "rollback"),
        ("champion", 2, 1, "rollback"),
    ]
    assert all(m.type == "model.alias_moved" and m.decision == DECIDED for m in moved)
    assert [m.audit_seq for m in moved] == list(range(1, 9))
    assert [e.hash for e in registry.audit(name)] == [m.audit_hash for m in moved]


def test_every_move_needs_a_decision_record(
    registry: Registry, make_artifact: ArtifactFactory
) -> None:
    name = _versions(registry, make_artifact, 1)
    with pytest.raises(InvalidInputError, match="who"):
        Decision(who=" ", why="x", evidence_digest="d")
    with pytest.raises(InvalidInputError, match="Decision"):
        registry.promote(name, "champion", 1, None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="alias"):
        registry.promote(name, "latest", 1, DECIDED)
    with pytest.raises(InvalidInputError, match="alias"):
        registry.promote(name, "v2", 1, DECIDED)
    with pytest.raises(NotFoundError):
        registry.promote(name, "champion", 7, DECIDED)
    with pytest.raises(NotFoundError):
        registry.get_by_alias(name, "champion")
    assert registry.audit(name) == []


def test_rollback_refuses_when_the_alias_was_moved_outside_keel(
    registry: Registry, make_artifact: ArtifactFactory
) -> None:
    name = _versions(registry, make_artifact, 3)
    registry.promote(name, "champion", 1, DECIDED)
    registry.promote(name, "champion", 2, DECIDED)
    registry.mlflow_client.set_registered_model_alias(name, "champion", "3")
    with pytest.raises(ConflictError, match="outside Keel"):
        registry.rollback(name, "champion", DECIDED)
    assert registry.get_by_alias(name, "champion").version == 3


def test_promote_is_idempotent_and_a_failed_publish_is_resent_with_the_same_event_id(
    backend: Backend, make_artifact: ArtifactFactory
) -> None:
    sent: list[AliasMoved] = []
    failures = [RuntimeError("bus down")]

    def publish(moved: AliasMoved) -> None:
        sent.append(moved)
        if failures:
            raise failures.pop()

    registry = backend.open(publisher=publish)
    name = _versions(registry, make_artifact, 2)
    with pytest.raises(UnavailableError, match="publishing model.alias_moved failed.*Re-run"):
        registry.promote(name, "champion", 1, DECIDED)
    assert registry.aliases(name) == {"champion": 1}  # the audited move itself happened
    entry = registry.promote(name, "champion", 1, DECIDED)  # the re-run re-sends, appends nothing
    assert registry.promote(name, "champion", 1, DECIDED) == entry
    assert [e.seq for e in registry.audit(name)] == [1]
    assert {m.event_id for m in sent} == {f"model.alias_moved:{entry.hash}"} and len(sent) == 3
    assert AliasMoved.from_json(sent[0].to_json()) == sent[0]

    # A rollback target that is promoted again explicitly is also already in place.
    registry.promote(name, "champion", 2, DECIDED)
    registry.rollback(name, "champion", DECIDED)
    assert registry.promote(name, "champion", 1, DECIDED).action == "rollback"
    assert [e.seq for e in registry.audit(name)] == [1, 2, 3]
    assert registry.verify_audit(name).ok


def test_a_promote_interrupted_after_its_audit_entry_is_completed_by_a_rerun(
    backend: Backend, make_artifact: ArtifactFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = backend.open()
    name = _versions(registry, make_artifact, 2)
    registry.promote(name, "champion", 1, DECIDED)
    client = registry.mlflow_client
    real = client.set_registered_model_alias

    def fail_once(*args: object) -> None:
        monkeypatch.setattr(client, "set_registered_model_alias", real)
        raise OSError("connection reset")  # the crash window: entry written, alias not moved

    monkeypatch.setattr(client, "set_registered_model_alias", fail_once)
    with pytest.raises(UnavailableError):
        registry.promote(name, "champion", 2, DECIDED)
    assert registry.aliases(name) == {"champion": 1}
    assert [e.to_version for e in registry.audit(name)] == [1, 2]
    assert not registry.verify_audit(name).ok  # the head tag lags the log until completed

    done = registry.promote(name, "champion", 2, DECIDED)
    assert (done.seq, done.from_version, done.to_version) == (2, 1, 2)
    assert registry.aliases(name) == {"champion": 2}
    assert [e.seq for e in registry.audit(name)] == [1, 2]
    assert registry.verify_audit(name).ok
    back = registry.rollback(name, "champion", DECIDED)
    assert (back.from_version, back.to_version) == (2, 1)
