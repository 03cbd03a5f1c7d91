"""A deliberately naive, row-by-row reference implementation of feature semantics.

Used as the oracle for the Polars batch engine and the streaming engine. It scans every
event for every query; clarity over speed. Times are integer microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

from keel.features import FeatureView
from keel.features._definitions import duration_us


@dataclass(frozen=True)
class Ev:
    key: str
    et: int
    rt: int | None
    values: dict[str, Any]
    id: str | None = None


def dedupe(events: Sequence[Ev]) -> list[Ev]:
    seen: set[str] = set()
    out = []
    for e in events:
        if e.id is not None:
            if e.id in seen:
                continue
            seen.add(e.id)
        out.append(e)
    return out


def naive_values(view: FeatureView, events: Sequence[Ev], key: str, t: int) -> dict[str, Any]:
    """Feature values for entity ``key`` at time ``t`` by scanning every (de-duplicated) event."""
    visible = []
    for e in events:
        if e.key != key or e.et > t:
            continue
        rt = e.rt if e.rt is not None else e.et
        if view.record_time is not None and max(rt, e.et) > t:
            continue
        visible.append(e)
    out: dict[str, Any] = {}
    stale = False
    if view.ttl is not None:
        last_any = max((e.et for e in visible), default=None)
        stale = last_any is None or t - last_any > duration_us(view.ttl)
    windows: dict[int, list[Ev]] = {}
    for agg in view.features:
        w = duration_us(agg.window)
        if w not in windows:
            windows[w] = [e for e in visible if e.et > t - w]
        win = windows[w]
        if agg.column is None:
            vals: list[Any] = [1 for _ in win]
        else:
            vals = [e.values[agg.column] for e in win if e.values.get(agg.column) is not None]
        fn = agg.function
        v: Any
        if fn == "count":
            v = len(vals)
        elif fn in ("sum", "mean", "std", "min", "max"):
            v = numeric(fn, [float(x) for x in vals])
        elif fn == "distinct_count":
            v = len(set(vals))
        elif fn == "approx_distinct_count":
            assert agg.column is not None
            v = naive_hll(set(vals), view.column_types[agg.column])
        elif fn == "last":
            cands = [
                (e.et, e.values[agg.column]) for e in win if e.values.get(agg.column) is not None
            ]
            v = max(cands)[1] if cands else None
        else:  # pragma: no cover
            raise AssertionError(fn)
        out[agg.name] = None if stale else v
    return out


class _Unspecified:
    """An oracle value the semantics leave open: any engine value is accepted."""

    def __repr__(self) -> str:
        return "UNSPECIFIED"


UNSPECIFIED: Any = _Unspecified()
STD_LIMIT = 1e145  # keel.features._numerics.STD_LIMIT: beyond, std is unspecified


def numeric(fn: str, vals: list[float]) -> Any:
    """The documented numeric semantics, computed exactly (fractions) then rounded once.

    A window holding NaN gives NaN for sum / mean / std / min / max; +inf and -inf give the
    IEEE sum (+inf, -inf, or NaN when both), std NaN; min / max order infinities normally. An
    exact sum beyond float64's range is +-inf (and so is the mean: sum over count). Empty windows: sum 0, the others null; std
    needs two values. std of finite values beyond ``STD_LIMIT`` in magnitude is unspecified
    (the engines' sum of squared deviations cannot be represented).
    """
    n = len(vals)
    if fn in ("mean", "min", "max") and n == 0:
        return None
    if fn == "std" and n < 2:
        return None
    nan = any(math.isnan(x) for x in vals)
    pinf, ninf = math.inf in vals, -math.inf in vals
    if fn in ("min", "max"):
        return math.nan if nan else float(min(vals) if fn == "min" else max(vals))
    if nan or (pinf and ninf):
        return math.nan
    if fn == "std":
        if pinf or ninf:
            return math.nan
        if max(abs(x) for x in vals) > STD_LIMIT:
            return UNSPECIFIED
        exact = [Fraction(x) for x in vals]
        mean = sum(exact, Fraction(0)) / n
        var = sum(((x - mean) ** 2 for x in exact), Fraction(0)) / (n - 1)
        with localcontext() as ctx:
            ctx.prec = 60
            return float((Decimal(var.numerator) / Decimal(var.denominator)).sqrt())
    if pinf or ninf:
        return math.inf if pinf else -math.inf
    total = _to_float(sum((Fraction(x) for x in vals), Fraction(0)))
    # mean is the float64 sum over the count: a sum beyond float64's range makes it +-inf too
    return total / n if fn == "mean" and math.isfinite(total) else total


def _to_float(x: Fraction) -> float:
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def naive_hll(values: set[Any], typ: str) -> int:
    """HyperLogLog estimate of ``values``, registers built one value at a time in Python.

    The hash (Polars' seeded 64-bit hash of the value in its declared type) and the final
    estimator formula are shared with the engines; the register logic is re-derived here.
    """
    import polars as pl

    from keel.features import _hll
    from keel.features._definitions import FIELD_TYPES

    regs = [0] * _hll.M
    for x in values:
        h = int(pl.Series([x], dtype=FIELD_TYPES[typ]).hash(seed=_hll.SEED)[0])
        reg, rest = h >> (64 - _hll.P), h & ((1 << (64 - _hll.P)) - 1)
        rho = (64 - _hll.P) - rest.bit_length() + 1
        regs[reg] = max(regs[reg], rho)
    z = sum(2.0**-r for r in regs if r)
    nset = sum(1 for r in regs if r)
    est = pl.select(_hll.estimate(pl.lit(z), pl.lit(nset, pl.Int64))).item()
    return int(est)


def same(a: Any, b: Any, *, rel: float = 1e-9) -> bool:
    """Equal; floats to ``rel`` (absolute 1e-9 near zero); NaN equals NaN, inf equals inf."""
    if a is UNSPECIFIED or b is UNSPECIFIED:
        return True
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        x, y = float(a), float(b)
        if math.isnan(x) or math.isnan(y):
            return math.isnan(x) and math.isnan(y)
        if math.isinf(x) or math.isinf(y):
            return x == y
        return math.isclose(x, y, rel_tol=rel, abs_tol=1e-9)
    return bool(a == b)


def by_entity(events: Sequence[Ev]) -> dict[str, list[Ev]]:
    """The de-duplicated events grouped by entity key, in input order."""
    out: dict[str, list[Ev]] = {}
    for e in dedupe(events):
        out.setdefault(e.key, []).append(e)
    return out


def assert_rows_match_naive(
    view: FeatureView,
    events: Sequence[Ev],
    queries: Sequence[tuple[str, int]],
    rows: Sequence[dict[str, Any]],
) -> None:
    """Each engine row (one per ``(entity, t)`` query, same order) equals the naive values."""
    grouped = by_entity(events)
    for (key, t), row in zip(queries, rows, strict=True):
        want = naive_values(view, grouped.get(key, []), key, t)
        for name, value in want.items():
            assert same(row[name], value), (name, key, t, row[name], value)
