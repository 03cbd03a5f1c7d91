"""A mergeable weighted quantile sketch with a proven rank-error bound.

A sketch is a sorted set of distinct values with positive weights; its CDF
``F̂(x) = weight(values <= x) / total`` approximates the data's empirical CDF
``F`` with ``sup_x |F̂(x) - F(x)| <= rank_error``.

* Built from data with at most ``max_size`` distinct values it keeps every
  distinct value with its count: ``rank_error == 0`` (exact).
* Otherwise it is *compacted* to at most ``max_size`` points: point ``j`` is the
  value of rank ``(j + 1/2) * total / max_size``, with weight
  ``total / max_size``. Then ``F̂(x) = round(F(x) * max_size) / max_size``, so
  compaction adds at most ``1 / (2 * max_size)`` to the rank error.
* Merging two sketches concatenates their points (the mixture's error is at most
  the larger of the two) and compacts again when needed, so
  ``merge(A, B).rank_error <= max(A.rank_error, B.rank_error) + 1/(2*max_size)``.

Every sketch value is a value that occurred in the data, so ``F̂`` equals ``F``
outside ``[min, max]``. Consequences used by the drift statistics
(see ``_stats``): the KS statistic against a sketch is within ``rank_error`` of
the exact one, and the Wasserstein-1 distance within
``rank_error * (max - min)``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from keel.drift._errors import InvalidInputError, ProfileFormatError

FloatArray = NDArray[np.float64]

#: Default number of points a sketch keeps (rank error 1/2048 ~ 0.0005 after one compaction).
DEFAULT_SKETCH_SIZE = 1024


def _encode(arr: FloatArray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype="<f8").tobytes()).decode("ascii")


def _decode(text: str, what: str) -> FloatArray:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ProfileFormatError(f"{what}: not valid base64 ({exc})") from exc
    if len(raw) % 8:
        raise ProfileFormatError(
            f"{what}: {len(raw)} bytes is not a whole number of float64 values"
        )
    return np.frombuffer(raw, dtype="<f8").astype(np.float64)


@dataclass(frozen=True, eq=False)
class QuantileSketch:
    """Sorted distinct ``values`` with positive ``weights``; see the module docstring."""

    values: FloatArray
    weights: FloatArray
    rank_error: float
    max_size: int

    def __post_init__(self) -> None:
        if self.max_size < 2:
            raise InvalidInputError(f"sketch max_size must be >= 2, got {self.max_size}")
        if self.values.shape != self.weights.shape or self.values.ndim != 1:
            raise InvalidInputError("sketch values and weights must be 1-D arrays of equal length")
        if len(self.values) > self.max_size:
            raise InvalidInputError(
                f"sketch holds {len(self.values)} points > max_size {self.max_size}"
            )
        if len(self.values) and (
            not np.all(np.isfinite(self.values))
            or np.any(np.diff(self.values) <= 0)
            or np.any(self.weights <= 0)
            or not np.all(np.isfinite(self.weights))
        ):
            raise InvalidInputError(
                "sketch values must be finite, strictly increasing, with positive finite weights"
            )
        if not 0.0 <= self.rank_error <= 1.0:
            raise InvalidInputError(f"sketch rank_error must be in [0, 1], got {self.rank_error}")

    # -- construction -----------------------------------------------------------------
    @classmethod
    def _trusted(
        cls, values: FloatArray, weights: FloatArray, rank_error: float, max_size: int
    ) -> QuantileSketch:
        """Construct without the O(n) validation (internal: inputs known to be valid)."""
        obj = object.__new__(cls)
        object.__setattr__(obj, "values", values)
        object.__setattr__(obj, "weights", weights)
        object.__setattr__(obj, "rank_error", rank_error)
        object.__setattr__(obj, "max_size", max_size)
        return obj

    @classmethod
    def exact(cls, sorted_values: FloatArray) -> QuantileSketch:
        """An exact (never compacted) sketch of sorted finite values: for current windows."""
        return cls.from_sorted(sorted_values, max(2, len(sorted_values)))

    @classmethod
    def empty(cls, max_size: int = DEFAULT_SKETCH_SIZE) -> QuantileSketch:
        return cls(np.empty(0), np.empty(0), 0.0, max_size)

    @classmethod
    def from_values(
        cls, values: NDArray[Any], max_size: int = DEFAULT_SKETCH_SIZE
    ) -> QuantileSketch:
        """Sketch of finite values (any order). Raises on NaN/inf: drop them first."""
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1:
            raise InvalidInputError("sketch input must be 1-D")
        if not np.all(np.isfinite(arr)):
            raise InvalidInputError("sketch input contains NaN or infinite values; drop them first")
        return cls.from_sorted(np.sort(arr), max_size)

    @classmethod
    def from_sorted(
        cls, sorted_values: FloatArray, max_size: int = DEFAULT_SKETCH_SIZE
    ) -> QuantileSketch:
        """Sketch of already sorted finite float64 values (not re-checked: internal fast path)."""
        if max_size < 2:
            raise InvalidInputError(f"sketch max_size must be >= 2, got {max_size}")
        n = len(sorted_values)
        if n == 0:
            return cls.empty(max_size)
        starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
        uniq = sorted_values[starts]
        counts = np.diff(np.r_[starts, n]).astype(np.float64)
        if len(uniq) <= max_size:
            return cls._trusted(uniq, counts, 0.0, max_size)
        return _compact(uniq, counts, 0.0, max_size)

    # -- queries ----------------------------------------------------------------------
    @property
    def total(self) -> float:
        return float(self.weights.sum())

    @property
    def is_exact(self) -> bool:
        return self.rank_error == 0.0

    def __len__(self) -> int:
        return len(self.values)

    def cumulative(self) -> FloatArray:
        """``r_[0, cumsum(weights)]``: cumulative weight of the first i points."""
        out = np.empty(len(self.weights) + 1)
        out[0] = 0.0
        np.cumsum(self.weights, out=out[1:])
        return out

    def cdf(self, x: NDArray[Any] | float) -> FloatArray:
        """Right-continuous ``F̂(x)``."""
        if not len(self.values):
            raise InvalidInputError("cdf of an empty sketch")
        cum = self.cumulative()
        return (
            cum[np.searchsorted(self.values, np.asarray(x, dtype=np.float64), side="right")]
            / cum[-1]
        )

    def quantile(self, q: NDArray[Any] | float) -> FloatArray:
        """Smallest sketch value v with ``F̂(v) >= q``."""
        if not len(self.values):
            raise InvalidInputError("quantile of an empty sketch")
        cum = np.cumsum(self.weights) / self.weights.sum()
        idx = np.searchsorted(cum, np.asarray(q, dtype=np.float64) - 1e-12, side="left")
        return self.values[np.clip(idx, 0, len(self.values) - 1)]

    # -- merging ----------------------------------------------------------------------
    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """Sketch of the union of both inputs (see the module docstring for the error)."""
        size = min(self.max_size, other.max_size)
        if not len(other.values):
            return (
                self
                if len(self.values) <= size
                else _compact(self.values, self.weights, self.rank_error, size)
            )
        if not len(self.values):
            return other.merge(self)
        values = np.concatenate([self.values, other.values])
        weights = np.concatenate([self.weights, other.weights])
        order = np.argsort(values, kind="stable")
        values, weights = values[order], weights[order]
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        uniq = values[starts]
        summed = np.add.reduceat(weights, starts)
        ta, tb = self.total, other.total
        err = (ta * self.rank_error + tb * other.rank_error) / (ta + tb)
        if len(uniq) <= size:
            return QuantileSketch._trusted(uniq, summed, min(1.0, err), size)
        return _compact(uniq, summed, err, size)

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "max_size": self.max_size,
            "rank_error": self.rank_error,
            "values": _encode(self.values),
            "weights": _encode(self.weights),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str = "sketch") -> QuantileSketch:
        try:
            values = _decode(data["values"], f"{what}.values")
            weights = _decode(data["weights"], f"{what}.weights")
            return cls(values, weights, float(data["rank_error"]), int(data["max_size"]))
        except KeyError as exc:
            raise ProfileFormatError(f"{what}: missing field {exc}") from exc
        except InvalidInputError as exc:
            if isinstance(exc, ProfileFormatError):
                raise
            raise ProfileFormatError(f"{what}: {exc}") from exc


def _compact(uniq: FloatArray, weights: FloatArray, err: float, size: int) -> QuantileSketch:
    """Keep the values at ranks (j + 1/2) * total / size; adds <= 1/(2*size) rank error."""
    cum = np.cumsum(weights)
    total = cum[-1]
    targets = (np.arange(size, dtype=np.float64) + 0.5) * (total / size)
    idx = np.minimum(np.searchsorted(cum, targets, side="left"), len(uniq) - 1)
    picked, counts = np.unique(idx, return_counts=True)
    return QuantileSketch._trusted(
        uniq[picked], counts.astype(np.float64) * (total / size), min(1.0, err + 0.5 / size), size
    )
