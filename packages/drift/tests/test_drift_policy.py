"""DriftPolicy stepped one window at a time: effect + significance, multiple testing, the
multivariate rule, fail-closed states, min samples, streaks, weights, episodes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.drift import (
    DriftPolicy,
    DriftResult,
    FeatureDrift,
    FeatureThreshold,
    InvalidInputError,
    Level,
    MultivariateResult,
    PolicyDecision,
    QualityIssue,
    adjust_pvalues,
)


def feature(name: str, s: float, n: int = 1000, p: float | None = None) -> FeatureDrift:
    """A numeric feature with normalised Wasserstein ``s`` (the default effect) and KS p ``p``
    (default: clearly significant when the effect is not tiny)."""
    pv = p if p is not None else (1e-8 if s > 0.02 else 0.5)
    return FeatureDrift(
        name,
        "numeric",
        10_000,
        n,
        0.0,
        0.0,
        s,
        s / 2,
        ("+inf",),
        (1.0,),
        (1.0,),
        ks=s / 3,
        ks_pvalue=pv,
        wasserstein_norm=s,
    )


def window(
    scores: dict[str, float],
    n: int = 1000,
    *,
    p: dict[str, float] | None = None,
    quality: tuple[QualityIssue, ...] = (),
    multivariate: MultivariateResult | None = None,
) -> DriftResult:
    feats = {name: feature(name, s, n, (p or {}).get(name)) for name, s in scores.items()}
    return DriftResult(n, feats, quality, multivariate)


def run(policy: DriftPolicy, windows: list[DriftResult]) -> list[PolicyDecision]:
    history: list[PolicyDecision] = []
    for w in windows:
        history.append(policy.decide(w, history))
    return history


CALM = {"a": 0.01, "b": 0.02, "c": 0.0}
SHIFT = {"a": 0.5, "b": 0.4, "c": 0.0}


def test_single_window_levels() -> None:
    p = DriftPolicy()
    calm = p.decide(window(CALM), [])
    assert calm.decision is Level.NONE and calm.ok and calm.judged and not calm.fails("warn")
    warn = p.decide(window({"a": 0.07, "b": 0.0, "c": 0.0}))
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
        [window(x) for x in (SHIFT, {"a": 0.07, "b": 0.0, "c": 0}, SHIFT)],
    )
    assert [d.decision.value for d in ds] == ["drift", "warn", "drift"]
    assert [d.episode_start for d in ds] == [True, False, False]


def test_small_windows_are_not_judged_and_do_not_break_a_streak() -> None:
    p = DriftPolicy(consecutive=2, min_samples=500)
    ds = run(p, [window(SHIFT), window(SHIFT, n=10), window(SHIFT)])
    assert [d.level for d in ds] == [Level.DRIFT, Level.INSUFFICIENT, Level.DRIFT]
    assert [d.decision for d in ds] == [Level.WARN, Level.NOT_JUDGED, Level.DRIFT]
    assert "min_samples" in ds[1].reason and not ds[1].judged and ds[1].fails("drift")
    assert ds[1].to_dict()["decision"] == "not_judged" and ds[1].to_dict()["judged"] is False


def test_importance_weighting() -> None:
    scores = {"key": 0.6, "x1": 0.0, "x2": 0.0, "x3": 0.0}
    plain = DriftPolicy(use_multivariate=False).decide(window(scores))
    weighted = DriftPolicy(importance={"key": 5.0}).decide(window(scores))
    assert plain.drift_share == pytest.approx(0.25) and plain.decision is Level.WARN
    assert weighted.drift_share == pytest.approx(5 / 8) and weighted.decision is Level.DRIFT
    ignored = DriftPolicy(importance={"key": 0.0}).decide(window(scores))
    assert ignored.drift_share == 0.0 and ignored.decision is Level.NONE


def test_per_feature_thresholds_methods_and_critical() -> None:
    p = DriftPolicy(
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


def test_significance_gate_and_multiple_testing() -> None:
    # a big effect that is not significant (a small, noisy window) is not drift
    noisy = DriftPolicy().decide(window(SHIFT, p={"a": 0.3, "b": 0.2}))
    assert noisy.decision is Level.NONE and noisy.drifted == ()
    # three tests at once: Benjamini-Hochberg keeps 0.02 and 0.03 (FDR), Holm does not (FWER)
    d = DriftPolicy().decide(window(SHIFT, p={"a": 0.02, "b": 0.03}))
    assert d.p_values["a"] == pytest.approx(0.045) and d.p_values["b"] == pytest.approx(0.045)
    assert d.decision is Level.DRIFT
    strict = DriftPolicy(correction="holm").decide(window(SHIFT, p={"a": 0.02, "b": 0.03}))
    assert strict.p_values["a"] == pytest.approx(0.06) and strict.drifted == ()
    # ... and a feature may drop the gate
    free = DriftPolicy(per_feature={"a": FeatureThreshold(significance=False)}).decide(
        window(SHIFT, p={"a": 0.9, "b": 0.9})
    )
    assert free.drifted == ("a",)


def naive_adjust(p: list[float], method: str) -> list[float]:
    """Textbook definitions, one hypothesis at a time."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    rank = {i: r + 1 for r, i in enumerate(order)}
    out = []
    for i in range(m):
        if method == "bh":
            out.append(min([1.0, *(p[j] * m / rank[j] for j in range(m) if rank[j] >= rank[i])]))
        else:
            out.append(
                min(1.0, max(p[j] * (m - rank[j] + 1) for j in range(m) if rank[j] <= rank[i]))
            )
    return out


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30), st.sampled_from(["bh", "holm"]))
def test_adjusted_pvalues_equal_the_textbook(p: list[float], method: str) -> None:
    names = [f"f{i}" for i in range(len(p))]
    got = adjust_pvalues(dict(zip(names, p, strict=True)), method)  # type: ignore[arg-type]
    want = naive_adjust(p, method)
    assert np.allclose([got[n] for n in names], want, rtol=1e-12, atol=1e-15)


def mv(auc: float, p: float) -> MultivariateResult:
    return MultivariateResult("domain_classifier", auc, p, p < 0.01, 2000, 2000, ())


def test_multivariate_result_counts() -> None:
    joint = DriftPolicy().decide(window(CALM, multivariate=mv(0.75, 1e-30)))
    assert joint.decision is Level.DRIFT and joint.multivariate_drift
    assert "domain classifier" in joint.reason
    # significant but a negligible effect, or a big AUC by chance on a tiny sample: no
    assert DriftPolicy().decide(window(CALM, multivariate=mv(0.53, 0.005))).decision is Level.NONE
    assert DriftPolicy().decide(window(CALM, multivariate=mv(0.7, 0.2))).decision is Level.NONE
    off = DriftPolicy(use_multivariate=False).decide(window(CALM, multivariate=mv(0.75, 1e-30)))
    assert off.decision is Level.NONE


def test_quality_errors_and_nothing_comparable_fail_closed() -> None:
    missing = QualityIssue("missing_column", "z", "error", "column 'z' is missing")
    d = DriftPolicy().decide(window(CALM, quality=(missing,)), [])
    assert d.decision is Level.ERROR and d.level is Level.NONE and not d.ok
    assert d.errors == ("missing_column: column 'z' is missing",)
    assert d.fails("drift") and d.fails("warn") and not d.fails("never")
    warning = QualityIssue("out_of_range", "a", "warning", "2% out of range")
    assert DriftPolicy().decide(window(CALM, quality=(warning,))).decision is Level.NONE
    nothing = DriftPolicy().decide(DriftResult(5000, {}, (missing,)))
    assert nothing.decision is Level.NOT_JUDGED and nothing.fails("drift")
    assert "no feature" in nothing.reason
    with pytest.raises(InvalidInputError, match="fail-on"):
        d.fails("sometimes")


@pytest.mark.parametrize("state", ["error", "not_judged"])
def test_fail_closed_windows_keep_the_streak(state: str) -> None:
    p = DriftPolicy(consecutive=2)
    bad = (
        window(SHIFT, quality=(QualityIssue("kind_changed", "a", "error", "was numeric"),))
        if state == "error"
        else DriftResult(1000, {})
    )
    ds = run(p, [window(SHIFT), bad, window(SHIFT)])
    assert [d.decision.value for d in ds] == ["warn", state, "drift"]
    assert [d.streak for d in ds] == [1, 1, 2]


def test_scores_and_lists_do_not_depend_on_feature_order() -> None:
    scores = {"a": 0.5, "b": 0.5, "c": 0.07, "d": 0.0}
    decisions = set()
    for perm in itertools.permutations(scores):
        d = DriftPolicy().decide(window({k: scores[k] for k in perm}))
        decisions.add((d.drifted, d.warned, tuple(d.scores), tuple(sorted(d.p_values.items()))))
    assert len(decisions) == 1
