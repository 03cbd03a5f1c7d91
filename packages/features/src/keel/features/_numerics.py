"""Numerically stable window sums and variances, vectorised (NumPy), shared by the batch fast path.

Window sums come from differences of prefix sums. Plain float64 prefix sums lose precision
in proportion to the *prefix's* magnitude (a small window late in a long, large-valued log),
and ``sumsq - sum**2 / n`` loses everything when the mean is large next to the spread
(values around 1e8 with a std of 1.4 give 0). Here:

- prefix sums are double-double (``hi + lo``): ``np.cumsum`` accumulates sequentially, so
  each step's rounding error is recovered exactly by TwoSum and accumulated separately;
- squares are exact products (Dekker's TwoProduct) of values shifted by a per-entity
  reference, and the sum of squared deviations ``S2 - S1**2 / n`` is evaluated in
  double-double too, so the cancellation costs ~2**-100 of the prefix, not 2**-52;
- non-finite values never enter a prefix sum (they are counted separately by the caller),
  and a column whose values could overflow a prefix sum is scaled by an exact power of two.
"""

from __future__ import annotations

import numpy as np

_SPLIT = 134_217_729.0  # 2**27 + 1 (Dekker)
# Largest magnitude a prefix of n values may reach before we scale: keeps every partial sum
# (and the 2**27 split of it) far from float64's 1.8e308.
_SAFE = 2.0**960


def two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a + b`` as ``s + err`` exactly (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    return s, err


def _split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = _SPLIT * a
    hi = c - (c - a)
    return hi, a - hi


def two_prod(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a * b`` as ``p + err`` exactly (Dekker's TwoProduct; no overflow for |a|,|b| < 1e150)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    err = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, err


def dd_prefix(x: np.ndarray, extra_lo: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exclusive double-double prefix sums of ``x`` (length ``n + 1``, ``[0] == 0``).

    ``extra_lo`` (same length as ``x``) is added to the low part (the error terms of
    ``x`` itself when ``x`` is a rounded product).
    """
    n = len(x)
    hi = np.zeros(n + 1, dtype=np.float64)
    np.cumsum(x, out=hi[1:])
    prev, cur = hi[:-1], hi[1:]
    bb = cur - prev
    err = (prev - (cur - bb)) + (x - bb)
    if extra_lo is not None:
        err += extra_lo
    lo = np.zeros(n + 1, dtype=np.float64)
    np.cumsum(err, out=lo[1:])
    return hi, lo


def dd_window(
    hi: np.ndarray, lo: np.ndarray, st: np.ndarray, en: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sum over rows ``[st, en)`` from exclusive double-double prefixes, as ``(hi, lo)``."""
    h, e = two_sum(hi[en], -hi[st])
    return h, e + (lo[en] - lo[st])


def m2_from_sums(
    s1h: np.ndarray, s1l: np.ndarray, s2h: np.ndarray, s2l: np.ndarray, n: np.ndarray
) -> np.ndarray:
    """Sum of squared deviations ``S2 - S1**2 / n`` in double-double (0 where ``n == 0``)."""
    nf = np.maximum(n, 1).astype(np.float64)
    p, pe = two_prod(s1h, s1h)
    sq_lo = pe + 2.0 * s1h * s1l
    qh = p / nf
    r, re = two_prod(qh, nf)
    ql = (((p - r) - re) + sq_lo) / nf
    h, hl = two_sum(s2h, -qh)
    out: np.ndarray = np.maximum(h + (hl + (s2l - ql)), 0.0)
    return np.where(n > 0, out, 0.0)


def overflow_scale(finite_abs_max: float, n: int, power: int = 1) -> float:
    """A power of two ``s`` so that ``n`` values of magnitude ``(max * s) ** power`` sum safely.

    1.0 in the usual case (no scaling, bit-identical results)."""
    if finite_abs_max == 0.0 or not np.isfinite(finite_abs_max):
        return 1.0
    limit = _SAFE ** (1.0 / power) / max(1, n)
    if finite_abs_max <= limit:
        return 1.0
    return float(2.0 ** -int(np.ceil(np.log2(finite_abs_max / limit))))
