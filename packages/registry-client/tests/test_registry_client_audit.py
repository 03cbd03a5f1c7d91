"""The audit chain and the rollback stack, as pure functions (no MLflow, no database)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.registry_client import (
    AuditEntry,
    Decision,
    InvalidInputError,
    NotFoundError,
    RegistryError,
    UnavailableError,
)
from keel.registry_client._audit import (
    GENESIS,
    check_alias,
    entry_hash,
    holder_history,
    next_entry,
    rollback_target,
    verify_chain,
)

D = Decision(who="alice", why="gates passed", evidence_digest="sha256:00")


def chain(moves: list[tuple[str, str, int]], model: str = "m") -> list[AuditEntry]:
    out: list[AuditEntry] = []
    for i, (action, alias, to) in enumerate(moves):
        out.append(
            next_entry(
                out[-1] if out else None,
                model=model,
                time=f"2026-01-01T00:00:{i:02d}+00:00",
                action=action,
                alias=alias,
                from_version=None,
                to_version=to,
                decision=D,
            )
        )
    return out


def head(entries: list[AuditEntry]) -> tuple[int, str]:
    return entries[-1].seq, entries[-1].hash


def test_a_chain_links_each_entry_to_the_previous_hash() -> None:
    es = chain([("promote", "champion", 1), ("promote", "champion", 2)])
    assert es[0].prev_hash == GENESIS and es[1].prev_hash == es[0].hash
    assert es[0].hash == entry_hash(es[0].body())
    assert verify_chain("m", es, head(es)) == []


def test_the_hash_is_stable_across_json_round_trips() -> None:
    es = chain([("promote", "champion", 1)])
    again = AuditEntry.from_json(es[0].to_json())
    assert again == es[0]
    assert entry_hash(again.body()) == es[0].hash


@given(st.lists(st.integers(1, 9), min_size=3, max_size=12), st.data())
def test_any_single_edit_delete_or_swap_is_detected(
    versions: list[int], data: st.DataObject
) -> None:
    es = chain([("promote", "champion", v) for v in versions])
    h = head(es)
    i = data.draw(st.integers(0, len(es) - 1))
    edited = [*es]
    edited[i] = dataclasses.replace(es[i], to_version=es[i].to_version + 100)
    assert verify_chain("m", edited, h)
    assert verify_chain("m", es[:i] + es[i + 1 :], h)
    j = data.draw(st.integers(0, len(es) - 1).filter(lambda j: j != i))
    swapped = [*es]
    swapped[i], swapped[j] = es[j], es[i]
    assert verify_chain("m", swapped, h)


def test_truncation_is_caught_only_with_the_head() -> None:
    es = chain([("promote", "champion", v) for v in (1, 2, 3)])
    assert verify_chain("m", es[:2], None) == []  # a chain alone cannot see its missing tail
    problems = verify_chain("m", es[:2], head(es))
    assert [p.seq for p in problems] == [3]


def test_rollback_pops_the_holder_stack_per_alias() -> None:
    es = chain(
        [
            ("promote", "champion", 1),
            ("promote", "shadow", 5),
            ("promote", "champion", 2),
            ("promote", "champion", 3),
            ("rollback", "champion", 2),
        ]
    )
    assert holder_history(es, "champion") == [1, 2]
    assert holder_history(es, "shadow") == [5]
    assert rollback_target(es, "m", "champion") == (2, 1)
    with pytest.raises(NotFoundError, match="only version 5"):
        rollback_target(es, "m", "shadow")
    with pytest.raises(NotFoundError, match="never promoted"):
        rollback_target(es, "m", "challenger")


@pytest.mark.parametrize("alias", ["champion", "challenger", "shadow", "canary-eu", "ab_test2"])
def test_valid_aliases(alias: str) -> None:
    assert check_alias(alias) == alias


@pytest.mark.parametrize("alias", ["", "Champion", "latest", "v3", "has space", "x" * 64])
def test_invalid_aliases(alias: str) -> None:
    with pytest.raises(InvalidInputError):
        check_alias(alias)


def test_decisions_need_who_why_and_evidence() -> None:
    for kw in ({"who": ""}, {"why": "  "}, {"evidence_digest": ""}):
        with pytest.raises(InvalidInputError):
            Decision(**{"who": "a", "why": "b", "evidence_digest": "c", **kw})


def test_errors_group_by_what_to_do() -> None:
    e = UnavailableError("db busy")
    assert isinstance(e, RegistryError) and str(e) == "db busy"
    assert issubclass(InvalidInputError, ValueError) and issubclass(NotFoundError, LookupError)
