"""`check_promotion`: may this artifact become ``champion``? A pure decision.

The pipeline gathers the state — the tier's controls, the verified approvals of the exact
artifact digest, the trainer's identity, the validation note, the fairness verdict, the
time — and the policy answers allowed/refused with every reason, not just the first.
Nothing here reads a clock, a file or a registry.

Approvals count per person: a person's latest decision about the digest is the one that
stands (a later ``reject`` withdraws an earlier ``approve``, and vice versa). Any standing
rejection refuses the promotion.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from keel.governance._approvals import Approval, Decision
from keel.governance._clock import iso_utc
from keel.governance._errors import InvalidInputError
from keel.governance._tier import Controls


@dataclass(frozen=True)
class PromotionDecision:
    allowed: bool
    tier: int
    reasons: tuple[str, ...]  # why it is refused (empty when allowed)
    satisfied: tuple[str, ...]  # the controls that hold
    approvers: tuple[str, ...]  # who the counted approvals are from

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "tier": self.tier,
            "reasons": list(self.reasons),
            "satisfied": list(self.satisfied),
            "approvers": list(self.approvers),
        }


def _norm(identity: str) -> str:
    return identity.strip().casefold()


def check_promotion(
    controls: Controls,
    *,
    model: str,
    artifact_digest: str,
    trainer: str,
    approvals: Iterable[Approval],
    now: datetime,
    validation_note: str | None = None,
    validator: str | None = None,
    fairness_passed: bool | None = None,
    fairness_reasons: Iterable[str] = (),
    has_model_card: bool = False,
) -> PromotionDecision:
    """Decide whether ``artifact_digest`` of ``model`` may be promoted to ``champion``.

    ``approvals`` may hold records of other artifacts/models (they are ignored).
    ``validation_note``/``validator``: the independent validation (required by tier 1):
    a non-empty note written by someone other than the trainer. ``fairness_passed``:
    the verdict of the fairness gate (`FairnessGate.evaluate`), ``None`` when it was not
    run. ``now`` comes from the caller's clock (approvals can expire).
    """
    if not trainer or not trainer.strip():
        raise InvalidInputError("trainer (who trained the model) is required")
    iso_utc(now)
    reasons: list[str] = []
    satisfied: list[str] = []
    trainer_id = _norm(trainer)

    standing: dict[str, Approval] = {}
    for a in approvals:
        if a.model != model or a.artifact_digest != artifact_digest:
            continue
        key = _norm(a.approver)
        prior = standing.get(key)
        if prior is None or a.decided_at >= prior.decided_at:
            standing[key] = a

    rejected = sorted(a.approver for a in standing.values() if a.decision is Decision.REJECT)
    if rejected:
        reasons.append(f"rejected by {', '.join(rejected)}")

    counted: list[Approval] = []
    ignored: list[str] = []  # approvals that do not count (reported when they are short)
    for key, a in sorted(standing.items()):
        if a.decision is not Decision.APPROVE:
            continue
        if not controls.trainer_may_approve and key == trainer_id:
            ignored.append(f"{a.approver} trained the model and may not approve it")
        elif a.decided_at > now:
            ignored.append(
                f"approval by {a.approver} is dated in the future ({iso_utc(a.decided_at)})"
            )
        elif controls.approval_max_age_days is not None and now - a.decided_at > timedelta(
            days=controls.approval_max_age_days
        ):
            ignored.append(
                f"approval by {a.approver} ({iso_utc(a.decided_at)}) is older than {controls.approval_max_age_days} days"
            )
        else:
            counted.append(a)
    need = controls.approvals_required
    if len(counted) < need:
        who = "distinct people" if need > 1 else "person"
        extra = "" if controls.trainer_may_approve else ", not the trainer"
        reasons.append(
            f"{len(counted)} valid approval(s); tier {int(controls.tier)} needs {need} ({who}{extra})"
            + (f"; not counted: {'; '.join(ignored)}" if ignored else "")
        )
    else:
        satisfied.append(f"{len(counted)} approval(s) from distinct people (need {need})")

    if controls.independent_validation:
        if not validation_note or not validation_note.strip():
            reasons.append("independent-validation note is missing")
        elif not validator or not validator.strip():
            reasons.append("independent-validation note has no author")
        elif _norm(validator) == trainer_id:
            reasons.append(f"validation by {validator} is not independent: they trained the model")
        else:
            satisfied.append(f"independent validation by {validator}")

    if controls.fairness_gate:
        if fairness_passed is None:
            reasons.append("fairness gate was not run")
        elif not fairness_passed:
            detail = "; ".join(fairness_reasons)
            reasons.append("fairness gate failed" + (f": {detail}" if detail else ""))
        else:
            satisfied.append("fairness gate passed")

    if controls.model_card:
        if has_model_card:
            satisfied.append("model card present")
        else:
            reasons.append("model card is missing")

    return PromotionDecision(
        allowed=not reasons,
        tier=int(controls.tier),
        reasons=tuple(reasons),
        satisfied=tuple(satisfied),
        approvers=tuple(a.approver for a in counted),
    )
