"""Every statistic against SciPy: Hypothesis property tests and the German credit table."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import scipy.stats as sst
from drift_testdata import CATEGORICAL, NUMERIC, german_credit
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

from keel.drift import (
    CheckOptions,
    ProfileOptions,
    QuantileSketch,
    build_profile,
    check_drift,
    chi2_homogeneity,
    js_distance,
    ks_pvalue,
    ks_statistic,
    psi,
    wasserstein,
)

values = st.one_of(
    st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False),
    st.integers(-5, 5).map(float),  # ties, shared between the samples
)
samples = hnp.arrays(np.float64, st.integers(1, 300), elements=values)
props = hnp.arrays(np.float64, st.integers(2, 12), elements=st.floats(0, 100)).filter(
    lambda a: a.sum() > 0
)


@given(samples, samples)
def test_ks_and_wasserstein_equal_scipy_with_exact_reference(x: np.ndarray, y: np.ndarray) -> None:
    ref, cur = QuantileSketch.from_values(x), QuantileSketch.from_values(y)
    with np.errstate(divide="ignore"):  # scipy divides by zero for n = m = 1
        expected = sst.ks_2samp(x, y)  # SciPy's default: method="auto" (exact at these sizes)
    d = ks_statistic(ref, cur)
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    expected_p = 1.0 if np.isnan(expected.pvalue) else expected.pvalue  # scipy: nan when n = m = 1
    assert ks_pvalue(d, len(x), len(y)) == pytest.approx(expected_p, abs=1e-9)
    w = wasserstein(ref, cur)
    assert w == pytest.approx(sst.wasserstein_distance(x, y), rel=1e-9, abs=1e-9)


@given(samples, samples, st.integers(4, 64))
def test_sketched_reference_stays_within_documented_error(
    x: np.ndarray, y: np.ndarray, size: int
) -> None:
    ref = QuantileSketch.from_values(x, max_size=size)
    cur = QuantileSketch.from_values(y)
    err = ref.rank_error
    with np.errstate(divide="ignore"):
        exact_d = sst.ks_2samp(x, y, method="asymp").statistic
    assert abs(ks_statistic(ref, cur) - exact_d) <= err + 1e-12
    span = x.max() - x.min()
    assert abs(wasserstein(ref, cur) - sst.wasserstein_distance(x, y)) <= err * span + 1e-7 * (
        1 + span
    )


@given(st.integers(1, 10_000), st.integers(1, 10_000), st.floats(0.0, 1.0))
def test_ks_pvalue_equals_scipy_auto_up_to_10k(n1: int, n2: int, d: float) -> None:
    """SciPy's default method is exact while both samples have at most 10 000 values:
    ks_2samp(method="auto") computes exactly this for any data whose statistic is D."""
    from scipy.stats._stats_py import _attempt_exact_2kssamp

    ok, _, expected = _attempt_exact_2kssamp(n1, n2, math.gcd(n1, n2), d, "two-sided")
    if not ok:  # SciPy falls back to the asymptotic value; so does keel
        m, n = max(n1, n2), min(n1, n2)
        expected = sst.kstwo.sf(d, round(m * n / (m + n)))
    assert ks_pvalue(d, n1, n2) == pytest.approx(float(expected), rel=1e-12, abs=1e-300)


def test_ks_pvalue_exact_on_real_samples() -> None:
    rng = np.random.default_rng(3)
    for n1, n2, shift in ((200, 150, 0.2), (1000, 999, 0.1), (10_000, 3_000, 0.05)):
        x, y = rng.normal(0, 1, n1), rng.normal(shift, 1, n2)
        ref = sst.ks_2samp(x, y)
        exact = QuantileSketch.from_values(x, max_size=n1)  # holds the whole sample
        d = ks_statistic(exact, QuantileSketch.from_values(y, max_size=n2))
        assert ks_pvalue(d, n1, n2) == pytest.approx(ref.pvalue, rel=1e-9)


def test_ks_pvalue_large_samples_uses_limiting_distribution() -> None:
    for d in (0.001, 0.004, 0.01):
        ours = ks_pvalue(d, 1_000_000, 60_000)
        theirs = sst.kstwo.sf(d, round(1_000_000 * 60_000 / 1_060_000))
        assert ours == pytest.approx(theirs, rel=1e-2)


@given(props, st.data())
def test_psi_and_js_equal_scipy(p: np.ndarray, data: st.DataObject) -> None:
    q = data.draw(
        hnp.arrays(np.float64, len(p), elements=st.floats(0, 100)).filter(lambda a: a.sum() > 0)
    )
    pn, qn = p / p.sum(), q / q.sum()
    rp, rq = np.maximum(pn, 1e-4), np.maximum(qn, 1e-4)
    assert psi(pn, qn) == pytest.approx(
        float(np.sum(rel_entr(rq, rp) + rel_entr(rp, rq))), rel=1e-9, abs=1e-12
    )
    assert js_distance(p, q) == pytest.approx(float(jensenshannon(p, q, base=2)), abs=1e-9)


@given(
    hnp.arrays(np.int64, st.integers(2, 10), elements=st.integers(0, 500)),
    st.data(),
)
def test_chi2_equals_scipy_contingency(r: np.ndarray, data: st.DataObject) -> None:
    c = data.draw(hnp.arrays(np.int64, len(r), elements=st.integers(0, 500)))
    table = np.vstack([r, c])
    table = table[:, table.sum(axis=0) > 0]
    stat, dof, p = chi2_homogeneity(r.astype(float), c.astype(float))
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        assert (stat, dof, p) == (0.0, 0, 1.0)
        return
    expected = sst.chi2_contingency(table, correction=False)
    assert stat == pytest.approx(expected.statistic, rel=1e-9, abs=1e-9)
    assert dof == expected.dof
    assert p == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-12)


def test_german_credit_statistics_equal_scipy() -> None:
    """Reference: the first 600 applicants; current: the rest (a real, mild shift)."""
    df = german_credit()
    ref_df, cur_df = df.head(600), df.tail(400)
    profile = build_profile(ref_df, columns=NUMERIC + CATEGORICAL, options=ProfileOptions(n_bins=5))
    result = check_drift(
        profile, cur_df.select(NUMERIC + CATEGORICAL), options=CheckOptions(multivariate=False)
    )
    for col in NUMERIC:
        x, y = ref_df[col].to_numpy().astype(float), cur_df[col].to_numpy().astype(float)
        fd = result.features[col]
        ks = sst.ks_2samp(x, y)  # method="auto": exact p at 600 vs 400
        assert fd.ks == pytest.approx(ks.statistic, abs=1e-12) and fd.ks_error == 0.0
        assert fd.ks_pvalue == pytest.approx(ks.pvalue, rel=1e-12, abs=1e-15)
        assert fd.wasserstein == pytest.approx(sst.wasserstein_distance(x, y), rel=1e-9)
        assert fd.wasserstein_norm == pytest.approx(
            sst.wasserstein_distance(x, y) / x.std(), rel=1e-9
        )
        # bins: reference quantile edges; proportions recomputed from the raw data
        edges = np.array([float(e) for e in fd.bin_labels[:-1]])
        edges = np.unique(np.quantile(x, np.arange(1, 5) / 5, method="inverted_cdf"))
        edges = edges[edges < x.max()]
        rp = np.diff(np.r_[0, np.searchsorted(np.sort(x), edges, side="right") / len(x), 1])
        cp = np.diff(np.r_[0, np.searchsorted(np.sort(y), edges, side="right") / len(y), 1])
        assert np.allclose(fd.ref_props, rp) and np.allclose(fd.cur_props, cp)
        assert fd.js == pytest.approx(float(jensenshannon(rp, cp, base=2)), abs=1e-9)
    for col in CATEGORICAL:
        fd = result.features[col]
        cats = sorted(set(ref_df[col].to_list()) | set(cur_df[col].to_list()))
        r = np.array([ref_df[col].to_list().count(c) for c in cats])
        c = np.array([cur_df[col].to_list().count(c) for c in cats])
        table = np.vstack([r, c])
        expected = sst.chi2_contingency(table, correction=False)
        assert fd.chi2 == pytest.approx(expected.statistic, rel=1e-9)
        assert fd.chi2_pvalue == pytest.approx(expected.pvalue, rel=1e-9)
        rp, cp = r / r.sum(), c / c.sum()
        assert fd.js == pytest.approx(float(jensenshannon(rp, cp, base=2)), abs=1e-9)
        assert fd.psi == pytest.approx(psi(rp, cp), rel=1e-9)


def test_german_credit_detects_a_real_shift() -> None:
    """Good vs bad credit risks differ: checking-account status is the classic separator."""
    df = german_credit()
    good = df.filter(pl.col("creditability") == "good")
    bad = df.filter(pl.col("creditability") == "bad")
    profile = build_profile(good, columns=NUMERIC + CATEGORICAL)
    same = check_drift(profile, good.sample(300, seed=1), options=CheckOptions(multivariate=False))
    shifted = check_drift(profile, bad, options=CheckOptions(multivariate=False))
    col = "status_of_existing_checking_account"
    p_shift, p_same = shifted.features[col].chi2_pvalue, same.features[col].chi2_pvalue
    assert p_shift is not None and p_same is not None and p_shift < 1e-10 < p_same
    assert shifted.features[col].psi > 0.25 > same.features[col].psi
    ks_p = shifted.features["duration_in_month"].ks_pvalue
    assert ks_p is not None and ks_p < 1e-3
