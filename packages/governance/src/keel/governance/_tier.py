"""Model risk tiers and the controls each tier requires: a pure policy.

A model's tier follows from three facts its owner declares (SR 11-7 style):

* **materiality** — what a wrong output costs (money, customers, regulatory exposure);
* **complexity** — how hard the model is to understand and validate;
* **use** — how directly its output becomes a decision about a person or money.

Points: materiality low/medium/high = 0/2/4, complexity low/medium/high = 0/1/2, use
internal/decision_support/automated_decision = 0/1/2. Tier 1 (most scrutiny) at 5 points or
more, or whenever a highly material model decides automatically; tier 2 at 3-4; tier 3 below.
The thresholds are data (`TierRules`), so a bank with a different rulebook passes its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from keel.governance._errors import InvalidInputError


class Level(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class Use(StrEnum):
    INTERNAL = "internal"  # analytics, monitoring: no decision about a customer
    DECISION_SUPPORT = "decision_support"  # a person reviews every output before acting
    AUTOMATED_DECISION = "automated_decision"  # the output decides without human review


class RiskTier(IntEnum):
    """1 is the highest risk and the strictest controls."""

    TIER_1 = 1
    TIER_2 = 2
    TIER_3 = 3


def _enum(cls: type[StrEnum], value: object, what: str) -> Any:
    try:
        return cls(str(value))
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise InvalidInputError(f"{what} must be one of {allowed}; got {value!r}") from None


@dataclass(frozen=True)
class RiskFactors:
    """What the model owner declares about the model (validated at construction)."""

    materiality: Level
    complexity: Level
    use: Use

    def __post_init__(self) -> None:
        object.__setattr__(self, "materiality", _enum(Level, self.materiality, "materiality"))
        object.__setattr__(self, "complexity", _enum(Level, self.complexity, "complexity"))
        object.__setattr__(self, "use", _enum(Use, self.use, "use"))

    def to_dict(self) -> dict[str, str]:
        return {
            "materiality": self.materiality.value,
            "complexity": self.complexity.value,
            "use": self.use.value,
        }


@dataclass(frozen=True)
class TierRules:
    """Points per factor and the score thresholds of tiers 1 and 2."""

    materiality_points: dict[str, int] = field(
        default_factory=lambda: {"low": 0, "medium": 2, "high": 4}
    )
    complexity_points: dict[str, int] = field(
        default_factory=lambda: {"low": 0, "medium": 1, "high": 2}
    )
    use_points: dict[str, int] = field(
        default_factory=lambda: {"internal": 0, "decision_support": 1, "automated_decision": 2}
    )
    tier1_min_score: int = 5
    tier2_min_score: int = 3

    def __post_init__(self) -> None:
        for name, table, cls in (
            ("materiality_points", self.materiality_points, Level),
            ("complexity_points", self.complexity_points, Level),
            ("use_points", self.use_points, Use),
        ):
            missing = {m.value for m in cls} - set(table)
            if missing:
                raise InvalidInputError(f"TierRules.{name} lacks {sorted(missing)}")
        if not self.tier1_min_score > self.tier2_min_score:
            raise InvalidInputError("TierRules: tier1_min_score must exceed tier2_min_score")


@dataclass(frozen=True)
class TierAssessment:
    tier: RiskTier
    score: int
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"tier": int(self.tier), "score": self.score, "reasons": list(self.reasons)}


def assess_risk(factors: RiskFactors, rules: TierRules | None = None) -> TierAssessment:
    """The tier of a model and why (pure: same factors, same answer)."""
    rules = rules or TierRules()
    m = rules.materiality_points[factors.materiality.value]
    c = rules.complexity_points[factors.complexity.value]
    u = rules.use_points[factors.use.value]
    score = m + c + u
    reasons = [
        f"materiality {factors.materiality.value} (+{m})",
        f"complexity {factors.complexity.value} (+{c})",
        f"use {factors.use.value} (+{u})",
    ]
    if factors.materiality is Level.HIGH and factors.use is Use.AUTOMATED_DECISION:
        reasons.append("highly material model deciding automatically: tier 1 regardless of score")
        return TierAssessment(RiskTier.TIER_1, score, tuple(reasons))
    if score >= rules.tier1_min_score:
        tier = RiskTier.TIER_1
    elif score >= rules.tier2_min_score:
        tier = RiskTier.TIER_2
    else:
        tier = RiskTier.TIER_3
    reasons.append(f"score {score} -> tier {int(tier)}")
    return TierAssessment(tier, score, tuple(reasons))


@dataclass(frozen=True)
class Controls:
    """What must hold before a model of a tier may become ``champion``."""

    tier: RiskTier
    approvals_required: int
    trainer_may_approve: bool
    independent_validation: bool  # a written note by someone other than the trainer
    fairness_gate: bool
    model_card: bool
    approval_max_age_days: int | None  # approvals older than this are stale (None: never)
    revalidation_months: int  # informational: how often the model must be re-reviewed

    def __post_init__(self) -> None:
        if self.approvals_required < 0:
            raise InvalidInputError("approvals_required must be >= 0")
        if self.approval_max_age_days is not None and self.approval_max_age_days < 1:
            raise InvalidInputError("approval_max_age_days must be >= 1 or None")

    def to_dict(self) -> dict[str, Any]:
        return {
            "tier": int(self.tier),
            "approvals_required": self.approvals_required,
            "trainer_may_approve": self.trainer_may_approve,
            "independent_validation": self.independent_validation,
            "fairness_gate": self.fairness_gate,
            "model_card": self.model_card,
            "approval_max_age_days": self.approval_max_age_days,
            "revalidation_months": self.revalidation_months,
        }


_DEFAULT_CONTROLS = {
    RiskTier.TIER_1: Controls(RiskTier.TIER_1, 2, False, True, True, True, 30, 12),
    RiskTier.TIER_2: Controls(RiskTier.TIER_2, 1, False, False, True, True, 90, 24),
    RiskTier.TIER_3: Controls(RiskTier.TIER_3, 1, True, False, False, True, None, 36),
}


def controls_for(tier: RiskTier | int) -> Controls:
    """The default controls of a tier.

    Tier 1: two approvals by distinct people, neither the trainer, an independent-validation
    note and a passing fairness gate; approvals expire after 30 days. Tier 2: one approval
    by someone other than the trainer and the fairness gate. Tier 3: one approval (the
    trainer may self-certify). Every tier needs a model card.
    """
    try:
        return _DEFAULT_CONTROLS[RiskTier(int(tier))]
    except ValueError:
        raise InvalidInputError(f"risk tier must be 1, 2 or 3; got {tier!r}") from None
