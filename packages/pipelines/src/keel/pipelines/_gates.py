"""Promotion gates: pure policies, state in, `GateResult` out.

Every gate returns a structured result naming the gate, its status (``passed``,
``failed``, or ``waiting`` — only the approvals gate waits) and the evidence it judged,
so a failed run says which gate failed and why. `combine` folds the results into one
verdict. Nothing here reads a clock, a file or a registry: the controller's gate executor
gathers the inputs.

Reused, not re-implemented: fairness metrics and the fairness thresholds come from
keel.governance (`fairness_report`, `FairnessGate`), calibration (ECE) from keel.governance's
`group_fairness`, approvals from keel.governance's `check_promotion`, compatibility from
keel.artifacts' `compatibility_mismatches`, training-data drift from keel.drift's
`PolicyDecision`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from keel.governance import (
    Approval,
    FairnessGate,
    RiskTier,
    check_promotion,
    controls_for,
    fairness_report,
    group_fairness,
)

if TYPE_CHECKING:  # imported where used: keel.drift loads polars, keel.artifacts msgspec/crypto
    from keel.artifacts import Manifest, Requirements
    from keel.drift import PolicyDecision

from keel.pipelines._errors import InvalidInputError


class GateStatus(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    WAITING = "waiting"


@dataclass(frozen=True)
class GateResult:
    gate: str
    status: GateStatus
    reasons: tuple[str, ...] = ()
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status is GateStatus.PASSED

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "status": self.status.value,
            "reasons": list(self.reasons),
            "evidence": dict(self.evidence),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateResult:
        return cls(d["gate"], GateStatus(d["status"]), tuple(d["reasons"]), dict(d["evidence"]))


def _result(gate: str, reasons: Sequence[str], evidence: Mapping[str, Any]) -> GateResult:
    return GateResult(
        gate, GateStatus.FAILED if reasons else GateStatus.PASSED, tuple(reasons), evidence
    )


def _finite(v: float | None, what: str) -> float:
    if v is None or not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        raise InvalidInputError(f"{what} must be a finite number; got {v!r}")
    return float(v)


@dataclass(frozen=True)
class Holdout:
    """A model's score on a holdout set, named by the holdout's content fingerprint."""

    fingerprint: str
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class QualityGate:
    """Challenger vs champion on the *same* holdout.

    ``threshold``: the challenger's metric must reach it (absolute floor). With a champion,
    the challenger must also beat it by ``min_abs_improvement`` and by
    ``min_rel_improvement`` (a fraction of the champion's value). ``higher_is_better``
    flips the direction for losses.
    """

    metric: str = "auc"
    threshold: float | None = None
    min_abs_improvement: float = 0.0
    min_rel_improvement: float = 0.0
    higher_is_better: bool = True

    name = "quality"

    def evaluate(self, challenger: Holdout, champion: Holdout | None) -> GateResult:
        sign = 1.0 if self.higher_is_better else -1.0
        new = _finite(challenger.metrics.get(self.metric), f"challenger {self.metric}")
        ev: dict[str, Any] = {
            "metric": self.metric,
            "challenger": new,
            "holdout": challenger.fingerprint,
            "threshold": self.threshold,
            "min_abs_improvement": self.min_abs_improvement,
            "min_rel_improvement": self.min_rel_improvement,
        }
        reasons: list[str] = []
        if self.threshold is not None and sign * (new - self.threshold) < 0:
            reasons.append(f"{self.metric} {new:.6g} does not reach the threshold {self.threshold}")
        if champion is not None:
            if champion.fingerprint != challenger.fingerprint:
                reasons.append(
                    f"champion was scored on holdout {champion.fingerprint}, the challenger on "
                    f"{challenger.fingerprint}: score both on the same holdout"
                )
            old = _finite(champion.metrics.get(self.metric), f"champion {self.metric}")
            gain = sign * (new - old)
            rel = gain / abs(old) if old != 0 else (math.inf if gain > 0 else 0.0)
            ev.update(
                champion=old,
                improvement=gain,
                relative_improvement=None if math.isinf(rel) else rel,
            )
            if gain < self.min_abs_improvement:
                reasons.append(
                    f"{self.metric} improves by {gain:.6g} over the champion; needs >= {self.min_abs_improvement}"
                )
            if rel < self.min_rel_improvement:
                reasons.append(
                    f"{self.metric} improves by {rel:.4%} relative to the champion; needs >= {self.min_rel_improvement:.4%}"
                )
        return _result(self.name, reasons, ev)


def expected_calibration_error(y_true: Any, y_score: Any, n_bins: int = 10) -> float:
    """ECE over ``n_bins`` equal-width bins (keel.governance's definition, one group)."""
    y = np.asarray(y_true)
    return (
        group_fairness(y, np.zeros(y.shape[0], dtype=np.int64), y_score=y_score, n_bins=n_bins)
        .groups[0]
        .ece
    )


@dataclass(frozen=True)
class CalibrationGate:
    """The challenger's ECE must be <= ``max_ece`` and, with a champion's ECE, no more than
    ``max_increase`` above it."""

    max_ece: float = 0.05
    max_increase: float | None = None
    n_bins: int = 10

    name = "calibration"

    def evaluate(self, y_true: Any, y_score: Any, champion_ece: float | None = None) -> GateResult:
        ece = expected_calibration_error(y_true, y_score, self.n_bins)
        reasons: list[str] = []
        if ece > self.max_ece:
            reasons.append(f"expected calibration error {ece:.4f} > {self.max_ece}")
        if (
            champion_ece is not None
            and self.max_increase is not None
            and ece - champion_ece > self.max_increase
        ):
            reasons.append(
                f"ECE rose by {ece - champion_ece:.4f} over the champion's {champion_ece:.4f} (max {self.max_increase})"
            )
        return _result(
            self.name,
            reasons,
            {
                "ece": ece,
                "max_ece": self.max_ece,
                "champion_ece": champion_ece,
                "n_bins": self.n_bins,
            },
        )


@dataclass(frozen=True)
class FairnessPolicy:
    """keel.governance's `FairnessGate` on the challenger's holdout scores."""

    gate: FairnessGate = field(default_factory=FairnessGate)
    threshold: float = 0.5

    name = "fairness"

    def evaluate(self, y_true: Any, y_score: Any, sensitive: Mapping[str, Any]) -> GateResult:
        report = fairness_report(y_true, y_score, sensitive, threshold=self.threshold)
        verdict = self.gate.evaluate(report)
        return _result(
            self.name,
            verdict.reasons,
            {
                "verdict": verdict.to_dict(),
                "thresholds": self.gate.to_dict(),
                "report": report.to_dict(),
            },
        )


@dataclass(frozen=True)
class CompatibilityGate:
    """The artifact's contract (input schema, feature views, Keel range) against what the
    serving side declares it offers (keel.artifacts `Requirements`)."""

    name = "compatibility"

    def evaluate(self, manifest: Manifest, serving: Requirements) -> GateResult:
        from keel.artifacts import compatibility_mismatches

        mismatches = compatibility_mismatches(manifest, serving)
        return _result(
            self.name,
            mismatches,
            {
                "artifact_inputs": {f.name: f.dtype for f in manifest.input_schema},
                "artifact_feature_views": {f.name: f.version for f in manifest.feature_views},
                "serving_inputs": dict(serving.input_columns)
                if serving.input_columns is not None
                else None,
                "serving_feature_views": dict(serving.feature_views)
                if serving.feature_views is not None
                else None,
            },
        )


@dataclass(frozen=True)
class TrainingDataGate:
    """The new training data itself, judged by keel.drift against a reference profile
    (the champion's training data or the recent serving window).

    Fails on a data-quality ERROR or an unjudgeable set (fail closed), and when more than
    ``max_drift_share`` of the features drifted: retraining is expected to move some
    features, but a set where nearly everything moved is more likely a broken pipeline.
    """

    max_drift_share: float = 0.5
    fail_closed: bool = True

    name = "training_data"

    def evaluate(self, decision: PolicyDecision) -> GateResult:
        from keel.drift import Level

        reasons: list[str] = []
        if decision.decision is Level.ERROR:
            reasons.append("training data has data-quality errors: " + "; ".join(decision.errors))
        elif decision.decision is Level.NOT_JUDGED and self.fail_closed:
            reasons.append(f"training data could not be judged: {decision.reason}")
        if decision.drift_share > self.max_drift_share:
            reasons.append(
                f"{decision.drift_share:.0%} of features drifted from the reference (max {self.max_drift_share:.0%}): "
                + ", ".join(decision.drifted)
            )
        return _result(
            self.name,
            reasons,
            {
                "decision": decision.decision.value,
                "drift_share": decision.drift_share,
                "drifted": list(decision.drifted),
                "reason": decision.reason,
            },
        )


@dataclass(frozen=True)
class ApprovalGate:
    """The risk tier's controls (keel.governance `check_promotion`): a tier-1 model waits
    until two people other than the trainer have approved this exact artifact digest.

    ``waiting`` when only approvals are missing; ``failed`` on a standing rejection or any
    other unmet control (they need a new artifact, not more time).
    """

    tier: RiskTier | int

    name = "approvals"

    def evaluate(
        self,
        *,
        model: str,
        artifact_digest: str,
        trainer: str,
        approvals: Iterable[Approval],
        now: datetime,
        validation_note: str | None = None,
        validator: str | None = None,
        fairness_passed: bool | None = None,
        has_model_card: bool = False,
    ) -> GateResult:
        d = check_promotion(
            controls_for(self.tier),
            model=model,
            artifact_digest=artifact_digest,
            trainer=trainer,
            approvals=approvals,
            now=now,
            validation_note=validation_note,
            validator=validator,
            fairness_passed=fairness_passed,
            has_model_card=has_model_card,
        )
        ev = {"decision": d.to_dict(), "artifact_digest": artifact_digest}
        if d.allowed:
            return GateResult(self.name, GateStatus.PASSED, (), ev)
        only_approvals = all("approval(s); tier" in r for r in d.reasons)
        status = GateStatus.WAITING if only_approvals else GateStatus.FAILED
        return GateResult(self.name, status, d.reasons, ev)


@dataclass(frozen=True)
class GateVerdict:
    status: GateStatus
    failed: tuple[GateResult, ...]
    waiting: tuple[GateResult, ...]
    results: tuple[GateResult, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "failed": [r.gate for r in self.failed],
            "waiting": [r.gate for r in self.waiting],
            "results": [r.to_dict() for r in self.results],
        }


def combine(results: Sequence[GateResult]) -> GateVerdict:
    """Failed if any gate failed; else waiting if any waits; else passed. No gates: failed
    (a promotion with nothing checked is refused)."""
    if not results:
        missing = GateResult("gates", GateStatus.FAILED, ("no gate was evaluated",), {})
        return GateVerdict(GateStatus.FAILED, (missing,), (), (missing,))
    names = [r.gate for r in results]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"gate names must be unique; got {names}")
    failed = tuple(r for r in results if r.status is GateStatus.FAILED)
    waiting = tuple(r for r in results if r.status is GateStatus.WAITING)
    status = GateStatus.FAILED if failed else GateStatus.WAITING if waiting else GateStatus.PASSED
    return GateVerdict(status, failed, waiting, tuple(results))
