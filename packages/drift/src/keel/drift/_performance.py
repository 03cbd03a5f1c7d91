"""Classifier performance per window, in bounded memory.

* **Estimated, without labels (CBPE-style)**: if the model's probabilities are
  calibrated, a row with score p is a positive with probability p. The expected
  confusion counts at threshold t are E[TP] = Σ p·[p ≥ t], E[FP] = Σ (1-p)·[p ≥ t],
  etc.; the expected ROC curve sorts rows by score and accumulates p (positives)
  and 1-p (negatives). Scores are kept as a fixed histogram (``bins`` cells on
  [0, 1]), so windows merge by addition; rows within one cell count as ties.
* **Realised, once labels arrive**: ROC AUC from per-cell positive/negative
  counts (ties within a cell count one half, like the Mann-Whitney U), the Brier
  score, and the expected calibration error over 10 equal-width score bins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from keel.drift._errors import InvalidInputError

FloatArray = NDArray[np.float64]


def _auc_from_cells(pos: FloatArray, neg: FloatArray) -> float | None:
    """AUC of positives over negatives binned by increasing score (ties within a cell = 1/2)."""
    tp, tn = float(pos.sum()), float(neg.sum())
    if tp <= 0 or tn <= 0:
        return None
    neg_below = np.cumsum(neg) - neg
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / (tp * tn))


@dataclass
class ScoreHistogram:
    """Mergeable per-window statistics of predicted probabilities (and labels, when known)."""

    bins: int = 1000
    count: FloatArray = field(default_factory=lambda: np.zeros(0))  # rows per cell
    psum: FloatArray = field(default_factory=lambda: np.zeros(0))  # sum of p per cell
    pos: FloatArray = field(default_factory=lambda: np.zeros(0))  # labelled positives per cell
    neg: FloatArray = field(default_factory=lambda: np.zeros(0))  # labelled negatives per cell
    brier_sum: float = 0.0
    labelled_p: FloatArray = field(default_factory=lambda: np.zeros(0))  # sum of p, labelled rows

    def __post_init__(self) -> None:
        if not 10 <= self.bins <= 100_000:
            raise InvalidInputError(f"score bins must be in [10, 1e5], got {self.bins}")
        for name in ("count", "psum", "pos", "neg", "labelled_p"):
            if not len(getattr(self, name)):
                setattr(self, name, np.zeros(self.bins))
            elif len(getattr(self, name)) != self.bins:
                raise InvalidInputError(f"{name} must have {self.bins} cells")

    def _cells(self, p: FloatArray) -> NDArray[np.intp]:
        return np.minimum((p * self.bins).astype(np.intp), self.bins - 1)

    @staticmethod
    def _check(p: FloatArray) -> FloatArray:
        p = np.asarray(p, dtype=np.float64)
        if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
            raise InvalidInputError("scores must be probabilities in [0, 1] (no NaN)")
        return p

    def add_scores(self, p: FloatArray) -> None:
        p = self._check(p)
        cells = self._cells(p)
        self.count += np.bincount(cells, minlength=self.bins)
        self.psum += np.bincount(cells, weights=p, minlength=self.bins)

    def add_labels(self, p: FloatArray, y: FloatArray) -> None:
        p = self._check(p)
        y = np.asarray(y, dtype=np.float64)
        if y.shape != p.shape or (y.size and not np.all((y == 0) | (y == 1))):
            raise InvalidInputError("labels must be 0/1, one per score")
        cells = self._cells(p)
        self.pos += np.bincount(cells, weights=y, minlength=self.bins)
        self.neg += np.bincount(cells, weights=1 - y, minlength=self.bins)
        self.labelled_p += np.bincount(cells, weights=p, minlength=self.bins)
        self.brier_sum += float(np.sum((p - y) ** 2))

    def merge(self, other: ScoreHistogram) -> ScoreHistogram:
        if other.bins != self.bins:
            raise InvalidInputError("score histograms with different bins cannot merge")
        return ScoreHistogram(
            self.bins,
            self.count + other.count,
            self.psum + other.psum,
            self.pos + other.pos,
            self.neg + other.neg,
            self.brier_sum + other.brier_sum,
            self.labelled_p + other.labelled_p,
        )

    # -- estimates ---------------------------------------------------------------------
    def estimated(self, threshold: float = 0.5) -> dict[str, float | None]:
        """CBPE-style expected AUC and accuracy from scores alone."""
        n = float(self.count.sum())
        if n == 0:
            return {"estimated_auc": None, "estimated_accuracy": None}
        exp_pos = self.psum
        exp_neg = self.count - self.psum
        cut = int(np.ceil(threshold * self.bins))
        acc = (float(exp_pos[cut:].sum()) + float(exp_neg[:cut].sum())) / n
        return {"estimated_auc": _auc_from_cells(exp_pos, exp_neg), "estimated_accuracy": acc}

    def realised(self) -> dict[str, float | None]:
        """AUC, Brier score, expected calibration error and label count of labelled rows."""
        n = float(self.pos.sum() + self.neg.sum())
        if n == 0:
            return {"realised_auc": None, "brier": None, "ece": None, "labels": 0.0}
        coarse = self.bins // 10
        pos10 = self.pos[: coarse * 10].reshape(10, coarse).sum(axis=1)
        cnt10 = (self.pos + self.neg)[: coarse * 10].reshape(10, coarse).sum(axis=1)
        p10 = self.labelled_p[: coarse * 10].reshape(10, coarse).sum(axis=1)
        nz = cnt10 > 0
        ece = float(np.sum(np.abs(pos10[nz] - p10[nz])) / n)
        return {
            "realised_auc": _auc_from_cells(self.pos, self.neg),
            "brier": self.brier_sum / n,
            "ece": ece,
            "labels": n,
        }
