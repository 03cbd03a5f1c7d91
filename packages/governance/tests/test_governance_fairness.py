"""Fairness metrics by group, checked against fairlearn (the oracle) on the German credit data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from governance_testdata import german_credit
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import brier_score_loss, roc_auc_score

from keel.governance import FairnessGate, InvalidInputError, fairness_report, group_fairness

DATA = german_credit()
ATTRS = {"sex": DATA.sex, "age_band": DATA.age_band}
TOL = 1e-12


@pytest.mark.parametrize("attr", sorted(ATTRS))
@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_summary_metrics_equal_fairlearn(attr: str, threshold: float) -> None:
    pred = (DATA.score >= threshold).astype(int)
    ours = group_fairness(
        DATA.y, ATTRS[attr], y_score=DATA.score, threshold=threshold, attribute=attr
    )
    sf = ATTRS[attr]
    assert ours.demographic_parity_difference == pytest.approx(
        demographic_parity_difference(DATA.y, pred, sensitive_features=sf), abs=TOL
    )
    assert ours.disparate_impact_ratio == pytest.approx(
        demographic_parity_ratio(DATA.y, pred, sensitive_features=sf), abs=TOL
    )
    assert ours.equal_opportunity_difference == pytest.approx(
        equal_opportunity_difference(DATA.y, pred, sensitive_features=sf), abs=TOL
    )
    assert ours.equalized_odds_difference == pytest.approx(
        equalized_odds_difference(DATA.y, pred, sensitive_features=sf), abs=TOL
    )


@pytest.mark.parametrize("attr", sorted(ATTRS))
def test_per_group_metrics_equal_fairlearn_metricframe(attr: str) -> None:
    pred = (DATA.score >= 0.5).astype(int)
    frame = MetricFrame(
        metrics={"sel": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate},
        y_true=DATA.y,
        y_pred=pred,
        sensitive_features=ATTRS[attr],
    )
    scored = MetricFrame(
        metrics={"auc": roc_auc_score, "brier": brier_score_loss},
        y_true=DATA.y,
        y_pred=DATA.score,
        sensitive_features=ATTRS[attr],
    )
    ours = group_fairness(DATA.y, ATTRS[attr], y_score=DATA.score, attribute=attr)
    assert [g.group for g in ours.groups] == [str(i) for i in frame.by_group.index]
    for g in ours.groups:
        row, srow = frame.by_group.loc[g.group], scored.by_group.loc[g.group]
        assert g.selection_rate == pytest.approx(row["sel"], abs=TOL)
        assert g.true_positive_rate == pytest.approx(row["tpr"], abs=TOL)
        assert g.false_positive_rate == pytest.approx(row["fpr"], abs=TOL)
        assert g.auc == pytest.approx(srow["auc"], abs=1e-12)
        assert g.brier == pytest.approx(srow["brier"], abs=TOL)
        assert g.count == int((ATTRS[attr] == g.group).sum())


def test_ece_equals_a_naive_loop() -> None:
    ours = group_fairness(DATA.y, DATA.age_band, y_score=DATA.score, n_bins=10)
    for g in ours.groups:
        m = DATA.age_band == g.group
        s, y = DATA.score[m], DATA.y[m]
        bins = np.minimum((s * 10).astype(int), 9)
        ece = sum(abs(s[bins == b].sum() - y[bins == b].sum()) for b in range(10)) / m.sum()
        assert g.ece == pytest.approx(ece, abs=TOL)
        assert g.calibration_gap == pytest.approx(s.mean() - y.mean(), abs=TOL)


@given(
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=20, max_value=400),
    st.integers(min_value=1, max_value=5),
)
def test_grouped_auc_with_ties_equals_sklearn(seed: int, n: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, k, n)
    y = rng.integers(0, 2, n)
    score = np.round(rng.random(n), 1)  # many ties
    ours = group_fairness(y, groups, y_score=score)
    for g in ours.groups:
        m = groups == int(g.group)
        if len(set(y[m].tolist())) < 2:
            assert math.isnan(g.auc)
        else:
            assert g.auc == pytest.approx(roc_auc_score(y[m], score[m]), abs=1e-12)


def test_german_credit_fairness_and_gate() -> None:
    """The figures the README quotes: sex passes the default gate, the age band does not."""
    report = fairness_report(DATA.y, DATA.score, ATTRS)
    sex, age = report.attribute("sex"), report.attribute("age_band")
    assert {g.group for g in sex.groups} == {"female", "male"}
    assert {g.group for g in age.groups} == {"<25", "25-34", "35-49", "50+"}
    assert sex.demographic_parity_difference < 0.05
    assert age.demographic_parity_difference > 0.1
    verdict = FairnessGate().evaluate(report)
    assert not verdict.passed
    assert len(verdict.reasons) == 1 and verdict.reasons[0].startswith(
        "age_band: demographic parity"
    )
    only_sex = FairnessGate().evaluate(fairness_report(DATA.y, DATA.score, {"sex": DATA.sex}))
    assert only_sex.passed, only_sex.reasons
    assert report.to_dict()["attributes"][0]["attribute"] == "sex"


def test_gate_names_small_groups_and_refuses_when_nothing_is_assessable() -> None:
    y = np.array([0, 1] * 20)
    grp = np.array(["a"] * 36 + ["b"] * 4)
    verdict = FairnessGate(min_group_size=30).evaluate(fairness_report(y, y * 0.9, {"g": grp}))
    assert not verdict.passed and "cannot assess" in verdict.reasons[0]
    assert "['b']" in verdict.notes[0]


def test_undefined_rates_are_nan_and_left_out_of_spreads() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    grp = np.array(["a", "a", "b", "b", "c", "c"])  # group a has no positives
    pred = np.array([1, 0, 1, 0, 0, 1])
    res = group_fairness(y, grp, y_pred=pred)
    by = {g.group: g for g in res.groups}
    assert math.isnan(by["a"].true_positive_rate)
    assert res.equal_opportunity_difference == pytest.approx(0.5)
    assert res.to_dict()["groups"][0]["true_positive_rate"] is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y_true": [0, 2], "sensitive": ["a", "b"], "y_pred": [0, 1]}, "only 0 and 1"),
        ({"y_true": [0, 1], "sensitive": ["a"], "y_pred": [0, 1]}, "want 2 values"),
        ({"y_true": [0, 1], "sensitive": ["a", "b"], "y_score": [0.1, 1.5]}, r"\[0, 1\]"),
        ({"y_true": [0, 1], "sensitive": ["a", "b"]}, "y_pred or y_score"),
        ({"y_true": [], "sensitive": [], "y_pred": []}, "non-empty"),
        ({"y_true": [0, 1], "sensitive": [1.0, float("nan")], "y_pred": [0, 1]}, "missing"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        group_fairness(**kwargs)
