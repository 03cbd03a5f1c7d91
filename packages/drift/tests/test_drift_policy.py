"""DriftPolicy stepped one window at a time: thresholds, min samples, streaks, weights, episodes."""

from __future__ import annotations

import pytest

from keel.drift import (
    DriftPolicy,
    DriftResult,
    FeatureDrift,
    FeatureThreshold,
    InvalidInputError,
    Level,
    PolicyDecision,
)


def window(scores: dict[str, float], n: int = 1000) -> DriftResult:
    feats = {
        name: FeatureDrift(
            name, "numeric", 10_000, n, 0.0, 0.0, s, s / 2, ("+inf",), (1.0,), (1.0,), ks=s / 3
        )
        for name, s in scores.items()
    }
    return DriftResult(n, feats)


def run(policy: DriftPolicy, windows: list[DriftResult]) -> list[PolicyDecision]:
    history: list[PolicyDecision] = []
    for w in windows:
        history.append(policy.decide(w, history))
    return history


CALM = {"a": 0.01, "b": 0.02, "c": 0.0}
SHIFT = {"a": 0.5, "b": 0.4, "c": 0.0}


def test_single_window_levels() -> None:
    p = DriftPolicy(consecutive=1)
    assert p.decide(window(CALM)).decision is Level.NONE
    warn = p.decide(window({"a": 0.15, "b": 0.0, "c": 0.0}))
    assert warn.decision is Level.WARN and warn.warned == ("a",)
    drift = p.decide(window(SHIFT))
    assert drift.decision is Level.DRIFT and drift.drifted == ("a", "b")
    assert drift.drift_share == pytest.approx(2 / 3)


def test_consecutive_windows_required_and_one_event_per_episode() -> None:
    p = DriftPolicy(consecutive=2)
    ds = run(p, [window(x) for x in (CALM, SHIFT, CALM, SHIFT, SHIFT, SHIFT, CALM, SHIFT, SHIFT)])
    assert [d.decision.value for d in ds] == [
        "none",
        "warn",
        "none",
        "warn",
        "drift",
        "drift",
        "none",
        "warn",
        "drift",
    ]
    assert [d.streak for d in ds] == [0, 1, 0, 1, 2, 3, 0, 1, 2]
    assert [i for i, d in enumerate(ds) if d.episode_start] == [4, 8]
    assert [d.in_episode for d in ds] == [
        False,
        False,
        False,
        False,
        True,
        True,
        False,
        False,
        True,
    ]


def test_episode_survives_warn_windows() -> None:
    ds = run(
        DriftPolicy(consecutive=1),
        [window(x) for x in (SHIFT, {"a": 0.15, "b": 0.0, "c": 0}, SHIFT)],
    )
    assert [d.decision.value for d in ds] == ["drift", "warn", "drift"]
    assert [d.episode_start for d in ds] == [True, False, False]


def test_small_windows_are_not_judged_and_do_not_break_a_streak() -> None:
    p = DriftPolicy(consecutive=2, min_samples=500)
    ds = run(p, [window(SHIFT), window(SHIFT, n=10), window(SHIFT)])
    assert [d.level for d in ds] == [Level.DRIFT, Level.INSUFFICIENT, Level.DRIFT]
    assert [d.decision for d in ds] == [Level.WARN, Level.NONE, Level.DRIFT]
    assert "min_samples" in ds[1].reason


def test_importance_weighting() -> None:
    scores = {"key": 0.6, "x1": 0.0, "x2": 0.0, "x3": 0.0}
    plain = DriftPolicy(consecutive=1).decide(window(scores))
    weighted = DriftPolicy(consecutive=1, importance={"key": 5.0}).decide(window(scores))
    assert plain.drift_share == pytest.approx(0.25) and plain.decision is Level.WARN
    assert weighted.drift_share == pytest.approx(5 / 8) and weighted.decision is Level.DRIFT
    ignored = DriftPolicy(consecutive=1, importance={"key": 0.0}).decide(window(scores))
    assert ignored.drift_share == 0.0 and ignored.decision is Level.NONE


def test_per_feature_thresholds_methods_and_critical() -> None:
    p = DriftPolicy(
        consecutive=1,
        per_feature={"a": FeatureThreshold(method="ks", warn=0.05, drift=0.1, critical=True)},
    )
    d = p.decide(window({"a": 0.33, "b": 0.0, "c": 0.0, "d": 0.0}))  # ks = 0.11 >= 0.1
    assert d.scores["a"] == pytest.approx(0.11)
    assert d.decision is Level.DRIFT and "critical" in d.reason


def test_invalid_policies_are_rejected() -> None:
    with pytest.raises(InvalidInputError, match="unknown method"):
        FeatureThreshold(method="magic")
    with pytest.raises(InvalidInputError, match="warn <= drift"):
        FeatureThreshold(warn=0.5, drift=0.1)
    with pytest.raises(InvalidInputError, match="consecutive"):
        DriftPolicy(consecutive=0)
    with pytest.raises(InvalidInputError, match="importance"):
        DriftPolicy(importance={"a": -1.0})


def test_decision_is_pure() -> None:
    p = DriftPolicy()
    w = window(SHIFT)
    hist = run(p, [window(SHIFT)])
    assert p.decide(w, hist) == p.decide(w, hist)
    assert len(hist) == 1
