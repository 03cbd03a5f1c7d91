"""Numerically stable window sums and variances, vectorised (NumPy), shared by the batch fast path.

Window sums come from differences of prefix sums. Plain float64 prefix sums lose precision
in proportion to the *prefix's* magnitude (a small window late in a long, large-valued log),
and ``sumsq - sum**2 / n`` loses everything when the mean is large next to the spread
(values around 1e8 with a std of 1.4 give 0). Here:

- prefix sums are compensated (``hi + lo + lo2``): ``np.cumsum`` accumulates sequentially,
  so each step's rounding error is recovered exactly by TwoSum and accumulated separately
  (twice: the errors' own accumulation is compensated too);
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
# Values beyond this magnitude stay out of variance sums: n squared deviations of up to
# 2e145 sum safely for any n below 1e17. A window holding one has an unspecified std (inf).
STD_LIMIT = 1e145


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


def dd_prefix(
    x: np.ndarray, extra_lo: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exclusive compensated prefix sums of ``x`` (three arrays of length ``n + 1``).

    ``hi`` is the plain running sum; ``lo`` accumulates the exact rounding error of each of
    its steps (TwoSum), and ``lo2`` the rounding errors of ``lo``'s own accumulation, which
    matter when whole values were absorbed by a much larger prefix (a dynamic range beyond
    2**53). ``extra_lo`` (same length as ``x``) is added to the errors (the error terms of
    ``x`` itself when ``x`` is a rounded product).
    """
    n = len(x)

    def scan(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        acc = np.zeros(n + 1, dtype=np.float64)
        np.cumsum(v, out=acc[1:])
        prev, cur = acc[:-1], acc[1:]
        bb = cur - prev
        return acc, (prev - (cur - bb)) + (v - bb)

    with np.errstate(invalid="ignore", over="ignore"):
        hi, err = scan(x)
        if extra_lo is not None:
            err += extra_lo
        lo, err2 = scan(err)
    lo2 = np.zeros(n + 1, dtype=np.float64)
    np.cumsum(err2, out=lo2[1:])
    return hi, lo, lo2


def dd_window(
    hi: np.ndarray, lo: np.ndarray, lo2: np.ndarray, st: np.ndarray, en: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sum over rows ``[st, en)`` from :func:`dd_prefix` arrays, as ``(hi, lo)``."""
    h, e = two_sum(hi[en], -hi[st])
    return h, e + ((lo[en] - lo[st]) + (lo2[en] - lo2[st]))


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


def overflow_scale(finite_abs_max: float, n: int, power: int = 1, factor: float = 1.0) -> float:
    """A power of two ``s`` so that ``n`` values of magnitude ``(factor * max * s) ** power``
    sum safely. 1.0 in the usual case (no scaling, bit-identical results)."""
    if finite_abs_max == 0.0 or not np.isfinite(finite_abs_max):
        return 1.0
    limit = _SAFE ** (1.0 / power) / max(1, n) / factor
    if finite_abs_max <= limit:
        return 1.0
    return float(2.0 ** -int(np.ceil(np.log2(finite_abs_max / limit))))
