"""Risk tiers, per-tier controls and the promotion policy: pure functions, stepped with a fake clock."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from keel.governance import (
    Approval,
    Decision,
    InvalidInputError,
    Level,
    RiskFactors,
    RiskTier,
    TierRules,
    Use,
    assess_risk,
    check_promotion,
    controls_for,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32
EVIDENCE = "cd" * 32


def _approval(
    who: str,
    *,
    decision: str = "approve",
    age: timedelta = timedelta(hours=1),
    digest: str = DIGEST,
    role: str = "validator",
) -> Approval:
    return Approval(
        model="credit",
        artifact_digest=digest,
        approver=who,
        role=role,
        decision=cast(Decision, decision),  # a str: validated by Approval
        evidence_digest=EVIDENCE,
        decided_at=NOW - age,
    )  # type: ignore[arg-type]


def _check(tier: int, approvals: list[Approval], **kw: object):
    args: dict = {
        "validation_note": "backtest and challenger review ok",
        "validator": "vera",
        "fairness_passed": True,
        "has_model_card": True,
    }
    args.update(kw)
    return check_promotion(
        controls_for(tier),
        model="credit",
        artifact_digest=DIGEST,
        trainer="tom",
        approvals=approvals,
        now=NOW,
        **args,
    )


@pytest.mark.parametrize(
    ("materiality", "complexity", "use", "tier"),
    [
        ("high", "low", "automated_decision", 1),  # the override: material + automatic
        ("high", "high", "internal", 1),  # 4 + 2 + 0 = 6
        ("high", "low", "internal", 2),  # 4
        ("medium", "medium", "decision_support", 2),  # 2 + 1 + 1 = 4
        ("medium", "low", "internal", 3),  # 2
        ("low", "high", "automated_decision", 2),  # 0 + 2 + 2 = 4
        ("low", "low", "decision_support", 3),  # 1
    ],
)
def test_tier_table(materiality: str, complexity: str, use: str, tier: int) -> None:
    got = assess_risk(RiskFactors(materiality, complexity, use))  # type: ignore[arg-type]
    assert got.tier == tier, got.reasons
    assert got.to_dict()["tier"] == tier


def test_tier_is_monotone_in_every_factor() -> None:
    levels, uses = list(Level), list(Use)
    for m, c, u in itertools.product(range(3), range(3), range(3)):
        base = assess_risk(RiskFactors(levels[m], levels[c], uses[u])).tier
        for dm, dc, du in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
            if m + dm < 3 and c + dc < 3 and u + du < 3:
                riskier = assess_risk(
                    RiskFactors(levels[m + dm], levels[c + dc], uses[u + du])
                ).tier
                assert riskier <= base  # never a laxer tier for a riskier model


def test_bad_factors_and_rules_are_clear_errors() -> None:
    with pytest.raises(InvalidInputError, match="materiality must be one of low, medium, high"):
        RiskFactors("huge", "low", "internal")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="use must be one of"):
        RiskFactors("low", "low", "batch")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="tier1_min_score"):
        TierRules(tier1_min_score=2, tier2_min_score=3)
    with pytest.raises(InvalidInputError, match="risk tier must be 1, 2 or 3"):
        controls_for(4)


def test_controls_per_tier() -> None:
    t1, t2, t3 = controls_for(1), controls_for(RiskTier.TIER_2), controls_for(3)
    assert (
        t1.approvals_required,
        t1.trainer_may_approve,
        t1.independent_validation,
        t1.fairness_gate,
    ) == (2, False, True, True)
    assert (
        t2.approvals_required,
        t2.trainer_may_approve,
        t2.independent_validation,
        t2.fairness_gate,
    ) == (1, False, False, True)
    assert (t3.approvals_required, t3.trainer_may_approve, t3.fairness_gate) == (1, True, False)
    assert all(c.model_card for c in (t1, t2, t3))


def test_tier1_two_distinct_approvers_not_the_trainer() -> None:
    ok = _check(1, [_approval("ana"), _approval("bob")])
    assert ok.allowed, ok.reasons
    assert ok.approvers == ("ana", "bob")

    one = _check(1, [_approval("ana")])
    assert not one.allowed and "1 valid approval(s); tier 1 needs 2" in one.reasons[0]

    same_person_twice = _check(1, [_approval("ana"), _approval(" ANA ", age=timedelta(minutes=5))])
    assert not same_person_twice.allowed

    with_trainer = _check(1, [_approval("ana"), _approval("Tom")])
    assert not with_trainer.allowed
    assert "Tom trained the model and may not approve it" in with_trainer.reasons[0]

    extra_trainer = _check(1, [_approval("ana"), _approval("bob"), _approval("tom")])
    assert extra_trainer.allowed  # the trainer's approval is ignored, not a veto


def test_tier1_needs_independent_validation_and_fairness_gate() -> None:
    two = [_approval("ana"), _approval("bob")]
    assert "independent-validation note is missing" in _check(1, two, validation_note=None).reasons
    assert any("not independent" in r for r in _check(1, two, validator="tom").reasons)
    assert "fairness gate was not run" in _check(1, two, fairness_passed=None).reasons
    failed = _check(1, two, fairness_passed=False, fairness_reasons=["age_band: dp 0.13 > 0.1"])
    assert failed.reasons == ("fairness gate failed: age_band: dp 0.13 > 0.1",)
    assert "model card is missing" in _check(1, two, has_model_card=False).reasons


def test_latest_decision_per_person_stands_and_rejection_vetoes() -> None:
    withdrawn = [
        _approval("ana", age=timedelta(hours=2)),
        _approval("bob"),
        _approval("ana", decision="reject", age=timedelta(hours=1)),
    ]
    d = _check(1, withdrawn)
    assert not d.allowed and "rejected by ana" in d.reasons
    reconsidered = [
        _approval("ana", decision="reject", age=timedelta(hours=2)),
        _approval("bob"),
        _approval("ana", age=timedelta(hours=1)),
    ]
    assert _check(1, reconsidered).allowed


def test_approvals_of_other_artifacts_and_stale_or_future_ones_do_not_count() -> None:
    other = "sha256:" + "ef" * 32
    assert not _check(1, [_approval("ana"), _approval("bob", digest=other)]).allowed
    stale = _check(1, [_approval("ana"), _approval("bob", age=timedelta(days=31))])
    assert not stale.allowed and "older than 30 days" in stale.reasons[0]
    future = _check(1, [_approval("ana"), _approval("bob", age=-timedelta(minutes=1))])
    assert not future.allowed and "dated in the future" in future.reasons[0]
    assert _check(3, [_approval("tom", age=timedelta(days=400))], fairness_passed=None).allowed


def test_tier3_trainer_may_self_certify_but_needs_someone() -> None:
    assert _check(3, [_approval("tom")], fairness_passed=None, validation_note=None).allowed
    none = _check(3, [], fairness_passed=None)
    assert not none.allowed and none.to_dict()["tier"] == 3


def test_policy_inputs_are_validated() -> None:
    with pytest.raises(InvalidInputError, match="trainer"):
        check_promotion(
            controls_for(1), model="m", artifact_digest=DIGEST, trainer=" ", approvals=[], now=NOW
        )
    with pytest.raises(InvalidInputError, match="time zone"):
        check_promotion(
            controls_for(1),
            model="m",
            artifact_digest=DIGEST,
            trainer="t",
            approvals=[],
            now=NOW.replace(tzinfo=None),
        )
    with pytest.raises(InvalidInputError, match="hex digest"):
        _approval("ana", digest="not-a-digest")
    with pytest.raises(InvalidInputError, match="'approve' or 'reject'"):
        _approval("ana", decision="maybe")
