"""Gates, one decision at a time. Oracles: fairness and ECE from independent NumPy
computations here (keel.governance's own tests check them against fairlearn)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from keel.artifacts import (
    FORMAT_VERSION,
    Architecture,
    CodeVersion,
    FeatureViewRef,
    FieldSpec,
    Manifest,
    Requirements,
)
from keel.drift import DriftPolicy, build_profile, check_drift
from keel.governance import Approval, FairnessGate
from keel.pipelines import (
    ApprovalGate,
    CalibrationGate,
    CompatibilityGate,
    FairnessPolicy,
    GateResult,
    GateStatus,
    Holdout,
    InvalidInputError,
    QualityGate,
    TrainingDataGate,
    combine,
    expected_calibration_error,
)

NOW = datetime(2026, 3, 1, tzinfo=UTC)
D1 = "sha256:" + "a" * 64
EV = "b" * 64


# -- quality ---------------------------------------------------------------------------
def test_quality_passes_when_challenger_beats_champion_enough() -> None:
    g = QualityGate("auc", threshold=0.7, min_abs_improvement=0.01, min_rel_improvement=0.01)
    r = g.evaluate(Holdout("h1", {"auc": 0.82}), Holdout("h1", {"auc": 0.80}))
    assert r.status is GateStatus.PASSED
    assert r.evidence["improvement"] == pytest.approx(0.02)
    assert r.evidence["relative_improvement"] == pytest.approx(0.025)


def test_quality_fails_below_threshold() -> None:
    r = QualityGate("auc", threshold=0.7).evaluate(Holdout("h1", {"auc": 0.69}), None)
    assert r.status is GateStatus.FAILED and r.gate == "quality" and "threshold" in r.reasons[0]


def test_quality_fails_on_too_small_absolute_or_relative_gain() -> None:
    ch, champ = Holdout("h1", {"auc": 0.805}), Holdout("h1", {"auc": 0.80})
    r = QualityGate("auc", min_abs_improvement=0.01).evaluate(ch, champ)
    assert not r.passed and "needs >= 0.01" in r.reasons[0]
    r = QualityGate("auc", min_rel_improvement=0.01).evaluate(ch, champ)
    assert not r.passed and "relative" in r.reasons[0]


def test_quality_refuses_different_holdouts() -> None:
    r = QualityGate("auc").evaluate(Holdout("h2", {"auc": 0.9}), Holdout("h1", {"auc": 0.8}))
    assert not r.passed and "same holdout" in r.reasons[0]


def test_quality_lower_is_better_for_losses() -> None:
    g = QualityGate("logloss", higher_is_better=False, min_abs_improvement=0.01)
    assert g.evaluate(Holdout("h", {"logloss": 0.40}), Holdout("h", {"logloss": 0.45})).passed
    assert not g.evaluate(Holdout("h", {"logloss": 0.45}), Holdout("h", {"logloss": 0.40})).passed


def test_quality_missing_metric_is_an_input_error() -> None:
    with pytest.raises(InvalidInputError, match="challenger auc"):
        QualityGate("auc").evaluate(Holdout("h", {"f1": 0.5}), None)


# -- calibration -------------------------------------------------------------------------
def _naive_ece(y: np.ndarray, s: np.ndarray, bins: int = 10) -> float:
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = (s >= lo) & ((s < hi) if b < bins - 1 else (s <= hi))
        if m.any():
            total += m.sum() / len(s) * abs(s[m].mean() - y[m].mean())
    return total


def test_ece_matches_naive_oracle_and_gate_decides() -> None:
    rng = np.random.default_rng(3)
    s = rng.random(5000)
    y_cal = (rng.random(5000) < s).astype(int)  # calibrated
    y_bad = (rng.random(5000) < s**3).astype(int)  # over-confident
    assert expected_calibration_error(y_cal, s) == pytest.approx(_naive_ece(y_cal, s), abs=1e-9)
    assert expected_calibration_error(y_bad, s) == pytest.approx(_naive_ece(y_bad, s), abs=1e-9)
    g = CalibrationGate(max_ece=0.05)
    assert g.evaluate(y_cal, s).passed
    r = g.evaluate(y_bad, s)
    assert not r.passed and r.gate == "calibration" and r.evidence["ece"] > 0.05


def test_calibration_compares_with_champion() -> None:
    rng = np.random.default_rng(4)
    s = rng.random(4000)
    y = (rng.random(4000) < s).astype(int)
    ece = expected_calibration_error(y, s)
    g = CalibrationGate(max_ece=0.5, max_increase=0.001)
    assert g.evaluate(y, s, champion_ece=ece).passed
    assert not g.evaluate(y, s, champion_ece=ece - 0.01).passed


# -- fairness (keel.governance) ------------------------------------------------------------
def test_fairness_gate_uses_governance_thresholds() -> None:
    rng = np.random.default_rng(5)
    n = 2000
    group = np.where(rng.random(n) < 0.5, "a", "b")
    y = (rng.random(n) < 0.4).astype(int)
    fair = np.clip(0.4 + 0.3 * (y - 0.4) + rng.normal(0, 0.1, n), 0, 1)
    unfair = np.clip(fair + np.where(group == "a", 0.3, -0.3), 0, 1)
    pol = FairnessPolicy(FairnessGate(max_demographic_parity_difference=0.1))
    assert pol.evaluate(y, fair, {"sex": group}).passed
    r = pol.evaluate(y, unfair, {"sex": group})
    assert not r.passed and r.gate == "fairness" and "demographic parity" in " ".join(r.reasons)
    sel = {g: float((unfair[group == g] >= 0.5).mean()) for g in ("a", "b")}
    dpd = r.evidence["report"]["attributes"][0]["demographic_parity_difference"]
    assert dpd == pytest.approx(abs(sel["a"] - sel["b"]))  # oracle: selection rates by hand


# -- compatibility (keel.artifacts) ---------------------------------------------------------
def _manifest(inputs: dict[str, str], views: dict[str, str]) -> Manifest:
    return Manifest(
        format="keel.artifact",
        format_version=FORMAT_VERSION,
        name="credit",
        architecture=Architecture(builder="logreg"),
        weights="weights.safetensors",
        input_schema=[FieldSpec(name=k, dtype=v) for k, v in inputs.items()],  # type: ignore[arg-type]
        output_schema=[FieldSpec(name="p", dtype="float32")],
        feature_views=[FeatureViewRef(name=k, version=v) for k, v in views.items()],
        training_data_fingerprint="f",
        code=CodeVersion(commit="c", dirty=False),
        dependency_lock_hash="l",
        metrics={},
        keel_version=">=0.1,<1",
        runtime_config={},
        files=[],
    )


def test_compatibility_passes_when_serving_offers_the_contract() -> None:
    m = _manifest({"amount": "float64", "age": "int64"}, {"txn_stats": "v3"})
    r = CompatibilityGate().evaluate(
        m,
        Requirements(
            feature_views={"txn_stats": "v3"}, input_columns={"amount": "float64", "age": "int64"}
        ),
    )
    assert r.passed, r.reasons


def test_compatibility_names_every_mismatch() -> None:
    m = _manifest({"amount": "float64", "age": "int64"}, {"txn_stats": "v3"})
    r = CompatibilityGate().evaluate(
        m, Requirements(feature_views={"txn_stats": "v2"}, input_columns={"amount": "string"})
    )
    assert r.status is GateStatus.FAILED
    text = " | ".join(r.reasons)
    assert "txn_stats" in text and "'amount'" in text and "'age'" in text and len(r.reasons) == 3


# -- training data drift (keel.drift) -------------------------------------------------------
def test_training_data_gate_on_real_drift_check() -> None:
    rng = np.random.default_rng(6)
    ref = pl.DataFrame({"a": rng.normal(size=3000), "b": rng.normal(size=3000)})
    same = pl.DataFrame({"a": rng.normal(size=3000), "b": rng.normal(size=3000)})
    moved = pl.DataFrame({"a": rng.normal(3, 1, 3000), "b": rng.normal(3, 1, 3000)})
    profile = build_profile(ref)
    pol = DriftPolicy()
    gate = TrainingDataGate(max_drift_share=0.5)
    assert gate.evaluate(pol.decide(check_drift(profile, same))).passed
    r = gate.evaluate(pol.decide(check_drift(profile, moved)))
    assert (
        not r.passed
        and r.evidence["drift_share"] == 1.0
        and set(r.evidence["drifted"]) == {"a", "b"}
    )
    tiny = pol.decide(check_drift(profile, same.head(5)))
    assert gate.evaluate(tiny).status is GateStatus.FAILED  # fail closed: not judged


# -- approvals (keel.governance tiers) -----------------------------------------------------
def _approval(who: str, decision: str = "approve", digest: str = D1) -> Approval:
    return Approval("credit", digest, who, "validator", decision, EV, NOW - timedelta(hours=1))  # type: ignore[arg-type]


def _tier1(approvals: list[Approval]) -> GateResult:
    return ApprovalGate(1).evaluate(
        model="credit",
        artifact_digest=D1,
        trainer="tom",
        approvals=approvals,
        now=NOW,
        validation_note="validated holdout",
        validator="val",
        fairness_passed=True,
        has_model_card=True,
    )


def test_tier1_waits_for_two_approvals_then_passes() -> None:
    assert _tier1([]).status is GateStatus.WAITING
    assert _tier1([_approval("ana")]).status is GateStatus.WAITING
    r = _tier1([_approval("ana"), _approval("bo")])
    assert r.status is GateStatus.PASSED and set(r.evidence["decision"]["approvers"]) == {
        "ana",
        "bo",
    }


def test_tier1_trainer_and_other_digest_do_not_count_and_rejection_fails() -> None:
    assert _tier1([_approval("ana"), _approval("tom")]).status is GateStatus.WAITING
    assert (
        _tier1([_approval("ana"), _approval("bo", digest="sha256:" + "c" * 64)]).status
        is GateStatus.WAITING
    )
    r = _tier1([_approval("ana"), _approval("bo"), _approval("cy", "reject")])
    assert r.status is GateStatus.FAILED and "rejected by cy" in r.reasons[0]


def test_tier3_needs_one_approval() -> None:
    r = ApprovalGate(3).evaluate(
        model="credit",
        artifact_digest=D1,
        trainer="tom",
        approvals=[_approval("tom")],
        now=NOW,
        has_model_card=True,
    )
    assert r.status is GateStatus.PASSED


# -- combine ------------------------------------------------------------------------------
def test_combine_failed_beats_waiting_beats_passed() -> None:
    p = GateResult("quality", GateStatus.PASSED)
    w = GateResult("approvals", GateStatus.WAITING, ("0 valid approval(s)",))
    f = GateResult("fairness", GateStatus.FAILED, ("dp",))
    assert combine([p]).status is GateStatus.PASSED
    assert combine([p, w]).status is GateStatus.WAITING
    v = combine([p, w, f])
    assert v.status is GateStatus.FAILED and v.to_dict()["failed"] == ["fairness"]
    assert combine([]).status is GateStatus.FAILED
    with pytest.raises(InvalidInputError, match="unique"):
        combine([p, p])
    assert GateResult.from_dict(f.to_dict()) == f
