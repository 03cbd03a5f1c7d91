"""Univariate drift statistics, vectorised, with their semantics.

All functions compare a *reference* with a *current* distribution. Numeric
distributions are :class:`QuantileSketch` es (exact ones for raw current data),
so every statistic is computed on whole arrays in O((n + k) log) time, without
per-row Python.

Semantics (what a number means and what to threshold):

* **PSI** (population stability index) over bins: ``sum((c - r) * ln(c / r))``
  with proportions floored at ``eps = 1e-4`` (so empty bins stay finite). A
  distance, no p-value. Common bands: < 0.1 stable, 0.1-0.25 moderate, > 0.25 shift.
  Numeric columns use the reference's quantile bins (``n_bins``, default 10);
  categorical columns the reference categories plus one "other" bucket.
* **Jensen-Shannon distance** over the same bins, base 2: in [0, 1]; equals
  ``scipy.spatial.distance.jensenshannon(r, c, base=2)``.
* **Kolmogorov-Smirnov** two-sample statistic ``D = sup |F_ref - F_cur|`` and its
  two-sided p-value from the asymptotic Kolmogorov distribution with
  ``n = round(n_ref * n_cur / (n_ref + n_cur))`` - exactly SciPy's
  ``ks_2samp(..., method="asymp")``. Small p-value = evidence of a difference;
  with large windows even negligible shifts are "significant", so prefer
  thresholds on ``D`` (or PSI) for alerting.
* **Wasserstein-1** distance ``∫|F_ref - F_cur| dx`` in the column's units
  (= ``scipy.stats.wasserstein_distance``); the report also gives it divided by
  the reference standard deviation so one threshold fits all columns.
* **Chi-squared** test of homogeneity on the 2 x k table (reference counts,
  current counts) over the categories, columns with zero total dropped, no Yates
  correction: ``scipy.stats.chi2_contingency(table, correction=False)``.
  Small p-value = the category frequencies differ.

Accuracy: when the reference sketch is exact (<= ``sketch_size`` distinct values)
KS and Wasserstein equal SciPy's on the raw data to float rounding. Otherwise
``|D - D_exact| <= rank_error`` and ``|W - W_exact| <= rank_error * (max - min)``
of the reference (both reported as error bounds); bin proportions of the
reference are within ``2 * rank_error`` of the exact ones.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from keel.drift._errors import InvalidInputError
from keel.drift._sketch import FloatArray, QuantileSketch

PSI_EPS = 1e-4


def paired_cdfs(ref: QuantileSketch, cur: QuantileSketch) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(z, F_ref(z), F_cur(z))`` at every distinct value ``z`` of either input (sorted)."""
    a, b = ref.values, cur.values
    if not len(a) or not len(b):
        raise InvalidInputError("cannot compare an empty distribution")
    merged = np.sort(np.concatenate([a, b]), kind="stable")  # two sorted runs: a linear merge
    ends = np.flatnonzero(np.r_[merged[1:] != merged[:-1], True])
    z = merged[ends]
    # Both inputs have distinct values, so #points <= z in the merge is ends + 1 = na + nb.
    na = np.searchsorted(a, z, side="right")
    nb = ends + 1 - na
    ca, cb = ref.cumulative(), cur.cumulative()
    return z, ca[na] / ca[-1], cb[nb] / cb[-1]


def ks_statistic(ref: QuantileSketch, cur: QuantileSketch) -> float:
    """Two-sample KS statistic ``sup_x |F_ref(x) - F_cur(x)|``."""
    _, fa, fb = paired_cdfs(ref, cur)
    return float(np.max(np.abs(fa - fb)))


def ks_pvalue(d: float, n_ref: int, n_cur: int) -> float:
    """Two-sided asymptotic p-value of a two-sample KS statistic (SciPy's ``method="asymp"``)."""
    if n_ref <= 0 or n_cur <= 0:
        raise InvalidInputError("KS p-value needs two non-empty samples")
    from scipy.stats import kstwo  # lazy: scipy.stats costs ~0.5 s to import

    m, n = sorted([float(n_ref), float(n_cur)], reverse=True)
    en = m * n / (m + n)
    return float(np.clip(kstwo.sf(d, np.round(en)), 0.0, 1.0))


def wasserstein(ref: QuantileSketch, cur: QuantileSketch) -> float:
    """Wasserstein-1 distance ``∫|F_ref - F_cur| dx``."""
    z, fa, fb = paired_cdfs(ref, cur)
    return float(np.sum(np.abs(fa[:-1] - fb[:-1]) * np.diff(z)))


def ks_and_wasserstein(ref: QuantileSketch, cur: QuantileSketch) -> tuple[float, float]:
    """Both statistics from one merge of the two CDFs (the hot path)."""
    z, fa, fb = paired_cdfs(ref, cur)
    diff = np.abs(fa - fb)
    return float(diff.max()), float(np.sum(diff[:-1] * np.diff(z)))


def psi(ref_props: NDArray[np.float64], cur_props: NDArray[np.float64], eps: float = PSI_EPS) -> float:
    """Population stability index of two proportion vectors over the same bins."""
    r = np.maximum(np.asarray(ref_props, dtype=np.float64), eps)
    c = np.maximum(np.asarray(cur_props, dtype=np.float64), eps)
    return float(np.sum((c - r) * np.log(c / r)))


def js_distance(ref_props: NDArray[np.float64], cur_props: NDArray[np.float64]) -> float:
    """Jensen-Shannon distance, base 2, in [0, 1] (inputs normalised first)."""
    p = np.asarray(ref_props, dtype=np.float64)
    q = np.asarray(cur_props, dtype=np.float64)
    p = p / p.sum()
    q = q / q.sum()
    m = (p + q) / 2.0

    def kl(x: NDArray[np.float64]) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2.0))


def chi2_homogeneity(
    ref_counts: NDArray[np.float64], cur_counts: NDArray[np.float64]
) -> tuple[float, int, float]:
    """Chi-squared test of homogeneity of two count vectors: ``(statistic, dof, p_value)``."""
    from scipy.special import chdtrc

    table = np.vstack([np.asarray(ref_counts, dtype=np.float64), np.asarray(cur_counts, dtype=np.float64)])
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1)
    if table.shape[1] < 2 or np.any(rows == 0):
        return 0.0, 0, 1.0
    expected = np.outer(rows, table.sum(axis=0)) / table.sum()
    stat = float(np.sum((table - expected) ** 2 / expected))
    dof = table.shape[1] - 1
    return stat, dof, float(chdtrc(dof, stat))


def bin_proportions(sketch: QuantileSketch, edges: FloatArray) -> FloatArray:
    """Proportions of ``sketch`` in the bins ``(-inf, e1], (e1, e2], ..., (ek, inf)``."""
    if not len(sketch):
        return np.zeros(len(edges) + 1)
    cdf = sketch.cdf(edges)
    return np.diff(np.r_[0.0, cdf, 1.0])
