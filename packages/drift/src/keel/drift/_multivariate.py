"""Multivariate drift: a domain-classifier test for joint shift.

A logistic regression (L2-regularised, fitted with SciPy's L-BFGS) learns to tell
reference rows (label 0) from current rows (label 1) on one half of both
samples; its scores on the other half give an AUC. Under "no drift" the held-out
scores are independent of the labels, so AUC = U / (n0 * n1) follows the
Mann-Whitney null distribution; the p-value is the one-sided asymptotic
Mann-Whitney p-value (tie-corrected, with continuity correction - SciPy's
``mannwhitneyu(cur, ref, alternative="greater", method="asymptotic")``).
AUC 0.5 = indistinguishable; ``drift`` is ``p_value < alpha``. Because the
classifier is linear on standardised features it sees shifts in means,
scales of linear combinations and correlations that move the joint mean;
the per-feature coefficients say which columns separate the samples.
Missing values are imputed with the reference mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from keel.drift._errors import InvalidInputError

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class MultivariateResult:
    """Outcome of the domain-classifier test."""

    method: str
    auc: float
    p_value: float
    drift: bool
    n_ref: int
    n_cur: int
    top_features: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "auc": self.auc,
            "p_value": self.p_value,
            "drift": self.drift,
            "n_ref": self.n_ref,
            "n_cur": self.n_cur,
            "top_features": [{"feature": f, "weight": w} for f, w in self.top_features],
        }


def fit_logistic(x: FloatArray, y: FloatArray, l2: float = 1.0) -> FloatArray:
    """L2-regularised logistic regression (L-BFGS on the exact loss); returns [bias, weights...].

    O(rows x features) per iteration, so 1k features cost milliseconds, not a d^3 solve.
    """
    from scipy.optimize import minimize  # lazy: only the multivariate test needs it

    xb = np.hstack([np.ones((len(x), 1)), x])
    reg = np.full(xb.shape[1], l2)
    reg[0] = 0.0

    def loss(w: FloatArray) -> tuple[float, FloatArray]:
        z = xb @ w
        # log(1 + e^z) - y z, computed stably
        val = float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.dot(reg * w, w))
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        return val, xb.T @ (p - y) + reg * w

    res = minimize(
        loss, np.zeros(xb.shape[1]), jac=True, method="L-BFGS-B", options={"maxiter": 200}
    )
    return np.asarray(res.x, dtype=np.float64)


def mann_whitney_auc(scores_pos: FloatArray, scores_neg: FloatArray) -> tuple[float, float]:
    """``(AUC, one-sided p-value)`` that positives score higher (asymptotic, tie-corrected)."""
    n1, n0 = len(scores_pos), len(scores_neg)
    if not n1 or not n0:
        raise InvalidInputError("AUC needs both classes")
    allv = np.concatenate([scores_pos, scores_neg])
    order = np.argsort(allv, kind="mergesort")
    sv = allv[order]
    starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])
    ends = np.r_[starts[1:], len(sv)]
    avg_rank = (starts + ends + 1) / 2.0  # 1-based average rank of each tie group
    ranks = np.empty(len(sv))
    ranks[order] = np.repeat(avg_rank, ends - starts)
    u = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    n = n1 + n0
    t = (ends - starts).astype(np.float64)
    tie = float(np.sum(t**3 - t))
    sigma = math.sqrt(n1 * n0 / 12.0 * ((n + 1) - tie / (n * (n - 1)))) if n > 1 else 0.0
    mu = n1 * n0 / 2.0
    if sigma == 0:
        return u / (n1 * n0), 1.0
    z = (u - mu - 0.5) / sigma
    p = 0.5 * math.erfc(z / math.sqrt(2.0))
    return u / (n1 * n0), float(min(1.0, max(0.0, p)))


def domain_classifier_test(
    ref: FloatArray,
    cur: FloatArray,
    columns: Sequence[str],
    rng: np.random.Generator,
    alpha: float = 0.01,
) -> MultivariateResult:
    """Domain-classifier test of ``cur`` rows against ``ref`` rows (same columns)."""
    if (
        ref.ndim != 2
        or cur.ndim != 2
        or ref.shape[1] != cur.shape[1]
        or ref.shape[1] != len(columns)
    ):
        raise InvalidInputError("reference and current samples must be 2-D with the same columns")
    if len(ref) < 4 or len(cur) < 4:
        return MultivariateResult("domain_classifier", 0.5, 1.0, False, len(ref), len(cur), ())
    with np.errstate(all="ignore"):
        mean = np.nanmean(ref, axis=0)
        std = np.nanstd(ref, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)

    def prep(m: FloatArray) -> FloatArray:
        z = (m - mean) / std
        return np.clip(np.where(np.isnan(z), 0.0, z), -50, 50)

    zr, zc = prep(ref), prep(cur)
    ir, ic = rng.permutation(len(zr)), rng.permutation(len(zc))
    hr, hc = len(zr) // 2, len(zc) // 2
    x_train = np.vstack([zr[ir[:hr]], zc[ic[:hc]]])
    y_train = np.r_[np.zeros(hr), np.ones(hc)]
    w = fit_logistic(x_train, y_train)
    s_ref = zr[ir[hr:]] @ w[1:]
    s_cur = zc[ic[hc:]] @ w[1:]
    auc, p = mann_whitney_auc(s_cur, s_ref)
    order = np.argsort(-np.abs(w[1:]))[:5]
    top = tuple((str(columns[i]), float(abs(w[1 + i]))) for i in order)
    return MultivariateResult("domain_classifier", auc, p, p < alpha, len(ref), len(cur), top)
