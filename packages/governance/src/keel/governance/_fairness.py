"""Fairness metrics by group, vectorised NumPy (one sort + a few ``bincount`` per attribute).

For one protected attribute with groups g:

* selection rate ``P(ŷ=1 | g)``, true-positive rate ``P(ŷ=1 | y=1, g)``, false-positive rate;
* **demographic parity difference**: max - min selection rate across groups;
* **disparate impact ratio**: min / max selection rate (the "four-fifths rule" reads it
  against 0.8); fairlearn calls it ``demographic_parity_ratio``;
* **equal-opportunity difference**: max - min true-positive rate;
* **equalized-odds difference**: the larger of the TPR and FPR spreads;
* per group **AUC** (Mann-Whitney with average ranks for ties) and **calibration**: Brier
  score, calibration-in-the-large (mean score - observed rate) and expected calibration
  error over ``n_bins`` equal-width score bins.

The definitions are fairlearn's (``fairlearn.metrics``); the tests check equality with
fairlearn on the German credit data. A rate that is undefined for a group (e.g. TPR of a
group with no positives, AUC of a one-class group) is NaN and left out of the spreads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from keel.governance._errors import InvalidInputError

FloatArray = npt.NDArray[np.float64]


def _num(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


@dataclass(frozen=True)
class GroupStats:
    group: str
    count: int
    base_rate: float  # observed P(y=1)
    selection_rate: float
    true_positive_rate: float
    false_positive_rate: float
    auc: float  # NaN without scores or with one class
    mean_score: float
    brier: float
    calibration_gap: float  # mean score - base rate
    ece: float  # expected calibration error

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "count": self.count,
            **{
                k: _num(getattr(self, k))
                for k in (
                    "base_rate",
                    "selection_rate",
                    "true_positive_rate",
                    "false_positive_rate",
                    "auc",
                    "mean_score",
                    "brier",
                    "calibration_gap",
                    "ece",
                )
            },
        }


@dataclass(frozen=True)
class AttributeFairness:
    attribute: str
    groups: tuple[GroupStats, ...]
    demographic_parity_difference: float
    disparate_impact_ratio: float
    equal_opportunity_difference: float
    equalized_odds_difference: float
    auc_difference: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "attribute": self.attribute,
            "demographic_parity_difference": _num(self.demographic_parity_difference),
            "disparate_impact_ratio": _num(self.disparate_impact_ratio),
            "equal_opportunity_difference": _num(self.equal_opportunity_difference),
            "equalized_odds_difference": _num(self.equalized_odds_difference),
            "auc_difference": _num(self.auc_difference),
            "groups": [g.to_dict() for g in self.groups],
        }


@dataclass(frozen=True)
class FairnessReport:
    threshold: float
    attributes: tuple[AttributeFairness, ...]

    def attribute(self, name: str) -> AttributeFairness:
        for a in self.attributes:
            if a.attribute == name:
                return a
        raise InvalidInputError(f"no fairness results for attribute {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "attributes": [a.to_dict() for a in self.attributes]}


def _as_labels(values: Any, n: int, what: str) -> tuple[npt.NDArray[np.intp], list[str]]:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InvalidInputError(f"{what}: want {n} values in one dimension; got shape {arr.shape}")
    if arr.dtype.kind in "OUSb":
        arr = arr.astype(str)
    elif arr.dtype.kind == "f" and np.isnan(arr).any():
        raise InvalidInputError(f"{what} has missing values; give them an explicit group label")
    uniq, codes = np.unique(arr, return_inverse=True)
    return codes.astype(np.intp), [str(u) for u in uniq.tolist()]


def _spread(values: FloatArray) -> float:
    ok = values[~np.isnan(values)]
    return float(ok.max() - ok.min()) if ok.size else math.nan


def _ratio(values: FloatArray) -> float:
    ok = values[~np.isnan(values)]
    if not ok.size:
        return math.nan
    hi = float(ok.max())
    return 1.0 if hi == 0 else float(ok.min()) / hi


def _div(num: FloatArray, den: FloatArray) -> FloatArray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def grouped_auc(
    y: FloatArray, score: FloatArray, codes: npt.NDArray[np.intp], k: int
) -> FloatArray:
    """ROC AUC of every group at once: rank-sum (ties share their average rank)."""
    n = y.shape[0]
    order = np.lexsort((score, codes))
    c, s, yy = codes[order], score[order], y[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    new[1:] = (c[1:] != c[:-1]) | (s[1:] != s[:-1])
    run = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n)
    avg_pos = (starts + ends - 1) / 2.0
    group_start = np.searchsorted(c, np.arange(k))
    rank = avg_pos[run] - group_start[c] + 1.0
    counts = np.bincount(c, minlength=k).astype(np.float64)
    n_pos = np.bincount(c, weights=yy, minlength=k)
    n_neg = counts - n_pos
    pos_rank = np.bincount(c, weights=rank * yy, minlength=k)
    return _div(pos_rank - n_pos * (n_pos + 1) / 2.0, n_pos * n_neg)


def group_fairness(
    y_true: Any,
    sensitive: Any,
    *,
    y_score: Any = None,
    y_pred: Any = None,
    threshold: float = 0.5,
    attribute: str = "group",
    n_bins: int = 10,
) -> AttributeFairness:
    """Metrics by group for one protected attribute.

    ``y_true``: 0/1 labels. ``y_score``: predicted probabilities in [0, 1] (enables AUC and
    calibration). ``y_pred``: 0/1 decisions; defaults to ``y_score >= threshold``.
    """
    y = np.asarray(y_true)
    if y.ndim != 1 or y.shape[0] == 0:
        raise InvalidInputError(f"y_true must be a non-empty 1-D array; got shape {y.shape}")
    n = y.shape[0]
    if not np.isin(y, (0, 1)).all():
        raise InvalidInputError("y_true must hold only 0 and 1")
    yf = y.astype(np.float64)
    score: FloatArray | None = None
    if y_score is not None:
        score = np.asarray(y_score, dtype=np.float64)
        if score.shape != (n,):
            raise InvalidInputError(f"y_score: want shape ({n},); got {score.shape}")
        if not np.isfinite(score).all() or score.min() < 0 or score.max() > 1:
            raise InvalidInputError("y_score must be finite probabilities in [0, 1]")
    if y_pred is None:
        if score is None:
            raise InvalidInputError("give y_pred or y_score")
        pred = (score >= threshold).astype(np.float64)
    else:
        p = np.asarray(y_pred)
        if p.shape != (n,) or not np.isin(p, (0, 1)).all():
            raise InvalidInputError(f"y_pred must be {n} values of 0 and 1")
        pred = p.astype(np.float64)
    if n_bins < 1:
        raise InvalidInputError("n_bins must be >= 1")
    codes, labels = _as_labels(sensitive, n, f"sensitive attribute {attribute!r}")
    k = len(labels)

    counts = np.bincount(codes, minlength=k).astype(np.float64)
    pos = np.bincount(codes, weights=yf, minlength=k).astype(np.float64, copy=False)
    selected = np.bincount(codes, weights=pred, minlength=k)
    tp = np.bincount(codes, weights=pred * yf, minlength=k).astype(np.float64, copy=False)
    fp: FloatArray = selected - tp
    base = pos / counts
    sel = selected / counts
    tpr = _div(tp, pos)
    fpr = _div(fp, counts - pos)

    nan = np.full(k, np.nan)
    auc, mean_score, brier, gap, ece = nan, nan, nan, nan, nan
    if score is not None:
        auc = grouped_auc(yf, score, codes, k)
        mean_score = np.bincount(codes, weights=score, minlength=k) / counts
        brier = np.bincount(codes, weights=(score - yf) ** 2, minlength=k) / counts
        gap = mean_score - base
        bins = np.minimum((score * n_bins).astype(np.intp), n_bins - 1)
        cell = codes * n_bins + bins
        sum_s = np.bincount(cell, weights=score, minlength=k * n_bins)
        sum_y = np.bincount(cell, weights=yf, minlength=k * n_bins)
        ece = np.abs(sum_s - sum_y).reshape(k, n_bins).sum(axis=1) / counts

    groups = tuple(
        GroupStats(
            group=labels[i],
            count=int(counts[i]),
            base_rate=float(base[i]),
            selection_rate=float(sel[i]),
            true_positive_rate=float(tpr[i]),
            false_positive_rate=float(fpr[i]),
            auc=float(auc[i]),
            mean_score=float(mean_score[i]),
            brier=float(brier[i]),
            calibration_gap=float(gap[i]),
            ece=float(ece[i]),
        )
        for i in range(k)
    )
    return AttributeFairness(
        attribute=attribute,
        groups=groups,
        demographic_parity_difference=_spread(sel),
        disparate_impact_ratio=_ratio(sel),
        equal_opportunity_difference=_spread(tpr),
        equalized_odds_difference=max(_spread(tpr), _spread(fpr)),
        auc_difference=_spread(auc),
    )


def fairness_report(
    y_true: Any,
    y_score: Any,
    sensitive: Mapping[str, Any],
    *,
    threshold: float = 0.5,
    n_bins: int = 10,
) -> FairnessReport:
    """`group_fairness` for every protected attribute (name -> group label per row)."""
    if not sensitive:
        raise InvalidInputError("give at least one protected attribute")
    if not 0.0 <= threshold <= 1.0:
        raise InvalidInputError(f"threshold must be in [0, 1]; got {threshold}")
    return FairnessReport(
        threshold=threshold,
        attributes=tuple(
            group_fairness(
                y_true, values, y_score=y_score, threshold=threshold, attribute=name, n_bins=n_bins
            )
            for name, values in sensitive.items()
        ),
    )


@dataclass(frozen=True)
class FairnessVerdict:
    passed: bool
    reasons: tuple[str, ...]  # why it failed
    notes: tuple[str, ...] = ()  # what was not assessed

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "notes": list(self.notes)}


@dataclass(frozen=True)
class FairnessGate:
    """Thresholds a model must meet on every protected attribute (a pure policy).

    Groups smaller than ``min_group_size`` are not held to the thresholds (their rates
    are noise) but are named in the reasons so a reviewer sees them.
    """

    max_demographic_parity_difference: float = 0.1
    min_disparate_impact_ratio: float = 0.8
    max_equal_opportunity_difference: float = 0.1
    min_group_size: int = 30

    def evaluate(self, report: FairnessReport) -> FairnessVerdict:
        failures: list[str] = []
        notes: list[str] = []
        for attr in report.attributes:
            big = [g for g in attr.groups if g.count >= self.min_group_size]
            small = [g.group for g in attr.groups if g.count < self.min_group_size]
            if small:
                notes.append(
                    f"{attr.attribute}: groups {small} have < {self.min_group_size} rows; not assessed"
                )
            if len(big) < 2:
                failures.append(
                    f"{attr.attribute}: fewer than two groups with >= {self.min_group_size} rows; cannot assess"
                )
                continue
            sel = np.array([g.selection_rate for g in big])
            tpr = np.array([g.true_positive_rate for g in big])
            dp, di, eo = _spread(sel), _ratio(sel), _spread(tpr)
            if dp > self.max_demographic_parity_difference:
                failures.append(
                    f"{attr.attribute}: demographic parity difference {dp:.3f} > {self.max_demographic_parity_difference}"
                )
            if di < self.min_disparate_impact_ratio:
                failures.append(
                    f"{attr.attribute}: disparate impact ratio {di:.3f} < {self.min_disparate_impact_ratio}"
                )
            if not math.isnan(eo) and eo > self.max_equal_opportunity_difference:
                failures.append(
                    f"{attr.attribute}: equal-opportunity difference {eo:.3f} > {self.max_equal_opportunity_difference}"
                )
        return FairnessVerdict(passed=not failures, reasons=tuple(failures), notes=tuple(notes))

    def to_dict(self) -> dict[str, float | int]:
        return {
            "max_demographic_parity_difference": self.max_demographic_parity_difference,
            "min_disparate_impact_ratio": self.min_disparate_impact_ratio,
            "max_equal_opportunity_difference": self.max_equal_opportunity_difference,
            "min_group_size": self.min_group_size,
        }
