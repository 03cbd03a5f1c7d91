"""The batch engine: feature values at arbitrary timestamps, backfills, point-in-time training sets.

Everything is a lazy, vectorised Polars plan; no per-row Python. See ``_definitions`` for the
exact window semantics: window ``w`` at time ``T`` covers ``T - w < event_time <= T``.

How values at arbitrary times are computed
------------------------------------------
Query rows ``(entity, T)`` are appended to the entity's events as value-less rows, the union
is sorted by ``(entity, time, is_query)`` and time-indexed rolling kernels
(``rolling_*_by(..., closed="right")``) evaluate each window at every row; time-indexed
windows include every row with the same timestamp, so events at exactly ``T`` count.
``last`` is a forward fill of the per-instant maximum. No cross join, no per-query scan.

When the view has a record-time column, an event is visible at ``T`` only when it was also
recorded by ``T``. Events recorded no later than their event time ("on time") take the path
above; the (typically few) late-recorded events are matched to queries of the same entity
with an equality join bounded by the largest window, aggregated to the same partial
aggregates, and merged (distinct counts merge exactly via an as-of join that checks whether
a late value is already present among the on-time values of the window).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from keel.features import _bitemporal, _fastwin, _hll
from keel.features._definitions import FIELD_TYPES, FeatureView, duration_us
from keel.features._errors import InvalidInputError
from keel.features._frames import (
    ET,
    ID,
    RT,
    check_nulls,
    collect,
    prepare,
    time_to_us_expr,
    to_us,
)

Q = "__q"
QID = "__qid"
T = "__T"
ONE = "__one"


@dataclass(frozen=True)
class _Partial:
    # n, nn: row / non-null counts; sum: sum of the finite values; m2: sum of squared
    # deviations of the finite values from their mean; nan / pinf / ninf: counts of NaN, +inf
    # and -inf; min, max: over the non-NaN values; dc: distinct values; hz / hn: HyperLogLog
    # z-sum / set registers.
    kind: str
    column: str | None
    window_us: int

    @property
    def name(self) -> str:
        return f"__p_{self.kind}_{self.column or ''}_{self.window_us}"


NONFINITE = ("nan", "pinf", "ninf")
COUNT_KINDS = frozenset({"n", "nn", "nan", "pinf", "ninf", "dc"})


def _partials(view: FeatureView) -> tuple[list[_Partial], list[str]]:
    """The partial aggregates the view's features need, and the columns needing ``last``."""
    parts: list[_Partial] = []
    lasts: list[str] = []
    types = view.column_types

    def add(kind: str, col: str | None, w: int) -> None:
        if kind in NONFINITE and (col is None or types[col] != "float"):
            return  # only float columns can hold NaN / inf
        p = _Partial(kind, col, w)
        if p not in parts:
            parts.append(p)

    for agg in view.features:
        w = duration_us(agg.window)
        c = agg.column
        fn = agg.function
        needs: tuple[str, ...]
        if fn == "count":
            needs = ("n",) if c is None else ("nn",)
        elif fn == "sum":
            needs = ("sum", *NONFINITE)
        elif fn == "mean":
            needs = ("sum", "nn", *NONFINITE)
        elif fn == "std":
            needs = ("sum", "m2", "nn", *NONFINITE)
        elif fn in ("min", "max"):
            needs = (fn, "nn", "nan")
        elif fn == "distinct_count":
            needs = ("dc",)
        elif fn == "approx_distinct_count":
            needs = ("hz", "hn")
        else:  # last
            assert c is not None
            if c not in lasts:
                lasts.append(c)
            needs = ()
        for kind in needs:
            add(kind, c, w)
    return parts, lasts


def _hll_col(c: str) -> str:
    return f"__hll_{c}"


def _with_hll_codes(lf: pl.LazyFrame, parts: list[_Partial]) -> pl.LazyFrame:
    """Add each approx-distinct column's HyperLogLog codes (register * 64 + rho)."""
    cols = sorted({p.column for p in parts if p.kind == "hz" and p.column is not None})
    if not cols:
        return lf
    return lf.with_columns([_hll.code_expr(c).alias(_hll_col(c)) for c in cols])


def _lv(c: str) -> str:
    return f"__last_v_{c}"


def _lt(c: str) -> str:
    return f"__last_t_{c}"


LAST_ANY = "__last_any"


def _rolling_exprs(view: FeatureView, parts: list[_Partial], lasts: list[str]) -> list[pl.Expr]:
    """Rolling partial aggregates evaluated at every row of a frame sorted by keys and time."""
    keys = list(view.join_keys)
    out: list[pl.Expr] = []
    for p in parts:
        win = f"{p.window_us}i"
        col = pl.col(p.column) if p.column is not None else None
        if p.kind == "n":
            e = pl.col(ONE).rolling_sum_by(ET, win, closed="right")
        elif p.kind == "nn":
            assert col is not None
            e = col.is_not_null().cast(pl.Int64).rolling_sum_by(ET, win, closed="right")
        elif p.kind in ("sum", "m2", "nan", "pinf", "ninf", "min", "max"):
            assert col is not None
            e = _numeric_rolling(p.kind, col.cast(pl.Float64), win)
        elif p.kind in ("hz", "hn"):
            assert p.column is not None
            codes = pl.col(_hll_col(p.column))
            sketch = _hll.z_set(codes) if p.kind == "hz" else _hll.n_set(codes)
            e = sketch.rolling(index_column=ET, period=win, closed="right")
        else:  # dc
            assert col is not None
            e = (
                col.drop_nulls()
                .n_unique()
                .rolling(index_column=ET, period=win, closed="right")
                .cast(pl.Int64)
            )
        out.append(e.over(keys).alias(p.name))
    for c in lasts:
        tie = pl.col(c).max().over([*keys, ET])  # largest value wins a tie on event time
        out.append(tie.forward_fill().over(keys).alias(_lv(c)))
        out.append(
            pl.when(tie.is_not_null()).then(pl.col(ET)).forward_fill().over(keys).alias(_lt(c))
        )
    return out


def _numeric_rolling(kind: str, x: pl.Expr, win: str) -> pl.Expr:
    """One numeric partial (see :class:`_Partial`) of float column ``x`` at every row."""
    finite = pl.when(x.is_finite()).then(x)  # null for null, NaN and +-inf
    if kind == "sum":
        return finite.rolling_sum_by(ET, win, closed="right").fill_null(0.0)
    if kind == "m2":
        nf = x.is_finite().cast(pl.Int64).rolling_sum_by(ET, win, closed="right")
        var = finite.rolling_var_by(ET, win, closed="right", ddof=0)
        return (var * nf).fill_null(0.0).fill_nan(0.0)
    if kind in ("min", "max"):
        not_nan = pl.when(~x.is_nan()).then(x)
        if kind == "min":
            return not_nan.rolling_min_by(ET, win, closed="right")
        return not_nan.rolling_max_by(ET, win, closed="right")
    flag = x.is_nan() if kind == "nan" else x == (np.inf if kind == "pinf" else -np.inf)
    return flag.cast(pl.Int64).rolling_sum_by(ET, win, closed="right").fill_null(0)


def _ieee_sum(total: pl.Expr, nan: pl.Expr, pinf: pl.Expr, ninf: pl.Expr) -> pl.Expr:
    """The sum a float64 summation of the window's values gives for non-finite inputs."""
    return (
        pl.when((nan > 0) | ((pinf > 0) & (ninf > 0)))
        .then(pl.lit(float("nan")))
        .when(pinf > 0)
        .then(pl.lit(float("inf")))
        .when(ninf > 0)
        .then(pl.lit(float("-inf")))
        .otherwise(total)
    )


def _numeric_agg(kind: str, x: pl.Expr, cond: pl.Expr) -> pl.Expr:
    """One numeric partial (see :class:`_Partial`) over the rows where ``cond`` holds."""
    finite = x.filter(cond & x.is_finite())
    if kind == "sum":
        return finite.sum()
    if kind == "m2":
        return (finite.var(ddof=0) * finite.len()).fill_null(0.0)
    if kind in ("min", "max"):
        v = x.filter(cond & ~x.is_nan())
        return v.min() if kind == "min" else v.max()
    flag = x.is_nan() if kind == "nan" else x == (np.inf if kind == "pinf" else -np.inf)
    return (cond & flag).sum().cast(pl.Int64)


def _finalize(
    view: FeatureView, lasts: Sequence[str], available: Sequence[str] | None = None
) -> list[pl.Expr]:
    """Feature expressions from partial columns, evaluated at time column ``T``.

    ``available``: the partial columns present; a missing NaN / inf count is zero (the fast
    path omits them for columns that hold only finite values).
    """
    types = view.column_types
    have = set(available) if available is not None else None
    out: list[pl.Expr] = []
    for agg in view.features:
        w = duration_us(agg.window)
        c = agg.column

        def p(kind: str, _c: str | None = c, _w: int = w) -> pl.Expr:
            name = _Partial(kind, _c, _w).name
            if kind in NONFINITE and (
                (have is not None and name not in have) or (_c is None or types[_c] != "float")
            ):
                return pl.lit(0, pl.Int64)
            return pl.col(name)

        fn = agg.function
        if fn == "count":
            e = p("n" if c is None else "nn").fill_null(0).cast(pl.Int64)
        elif fn == "sum":
            e = _ieee_sum(p("sum").fill_null(0.0), p("nan"), p("pinf"), p("ninf"))
        elif fn == "mean":
            n = p("nn")
            e = pl.when(n > 0).then(_ieee_sum(p("sum") / n, p("nan"), p("pinf"), p("ninf")))
        elif fn == "std":
            n = p("nn")
            bad = p("nan") + p("pinf") + p("ninf")
            var = p("m2") / (n - 1)
            e = (
                pl.when(n < 2)
                .then(pl.lit(None, pl.Float64))
                .when(bad > 0)
                .then(pl.lit(float("nan")))
                .otherwise(var.clip(lower_bound=0.0).sqrt())
            )
        elif fn in ("min", "max"):
            e = (
                pl.when(p("nn").fill_null(0) == 0)
                .then(pl.lit(None, pl.Float64))
                .when(p("nan") > 0)
                .then(pl.lit(float("nan")))
                .otherwise(p(fn))
            )
        elif fn == "distinct_count":
            e = p("dc").fill_null(0).cast(pl.Int64)
        elif fn == "approx_distinct_count":
            e = _hll.estimate(p("hz"), p("hn"))
        else:  # last
            assert c is not None
            e = (
                pl.when(pl.col(_lt(c)) > pl.col(T) - w)
                .then(pl.col(_lv(c)))
                .cast(FIELD_TYPES[types[c]])
            )
        if view.ttl is not None:
            stale = pl.col(LAST_ANY).is_null() | (
                pl.col(T) - pl.col(LAST_ANY) > duration_us(view.ttl)
            )
            e = pl.when(~stale).then(e)
        out.append(e.alias(agg.name))
    return out


def _prepared(view: FeatureView, events: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    # One chunk per column: later gathers (sorting by entity) are ~10x slower on chunked data.
    df = collect(view, prepare(view, events)).rechunk()
    # Drop repeated event ids (first occurrence wins, as in the streaming engine). Distinct
    # 64-bit hashes prove distinct ids, and sorting hashes is a much cheaper pass than
    # ``unique`` on strings; only frames with a repeated hash pay for the exact ``unique``.
    if view.id_column is not None and _may_have_repeats(df[ID]):
        df = df.unique(subset=[ID], keep="first", maintain_order=True)
    df = check_nulls(view, df)
    return df


def _may_have_repeats(ids: pl.Series) -> bool:
    """False only when every id is distinct (their hashes are); True means "maybe": check exactly."""
    if ids.len() < 2:
        return False
    h = np.sort(ids.hash().to_numpy())
    return bool((h[1:] == h[:-1]).any()) or ids.null_count() > 1


_FAST_KINDS = frozenset({"n", "nn", "sum", "m2", "nan", "pinf", "ninf", "min", "max"})


def _fast_partials(
    view: FeatureView,
    events: pl.DataFrame,
    queries: pl.DataFrame | None,
    parts: list[_Partial],
    lasts: list[str],
) -> pl.DataFrame | None:
    """Partials via the one-pass sorted-index path (``_fastwin``); None when not applicable."""
    if lasts or any(p.kind not in _FAST_KINDS for p in parts):
        return None
    return _fastwin.partials(
        events,
        queries,
        list(view.join_keys),
        ET,
        T,
        [(p.kind, p.column, p.window_us, p.name) for p in parts],
        LAST_ANY if view.ttl is not None else None,
    )


def _numeric_fast(
    view: FeatureView, events: pl.DataFrame, queries: pl.DataFrame, parts: list[_Partial]
) -> pl.DataFrame | None:
    """The fast path's numeric partials alone (no TTL column), in query order; None if declined."""
    return _fastwin.partials(
        events,
        queries,
        list(view.join_keys),
        ET,
        T,
        [(p.kind, p.column, p.window_us, p.name) for p in parts],
        None,
    )


def _union_partials(
    view: FeatureView,
    events: pl.DataFrame,
    queries: pl.DataFrame,
    parts: list[_Partial],
    lasts: list[str],
) -> pl.DataFrame:
    """Partials at each query row from ``events`` (all visible at their own event time)."""
    keys = list(view.join_keys)
    ev = (
        events.lazy()
        .select([*keys, ET, *[c for c in _value_cols(parts, lasts)]])
        .with_columns(
            pl.lit(False).alias(Q),
            pl.lit(None, pl.UInt32).alias(QID),
            pl.lit(1, pl.Int64).alias(ONE),
        )
    )
    ev = _with_hll_codes(ev, parts)
    q = (
        queries.lazy()
        .select([*keys, pl.col(T).alias(ET), QID])
        .with_columns(pl.lit(True).alias(Q), pl.lit(0, pl.Int64).alias(ONE))
    )
    union = pl.concat([ev, q], how="diagonal_relaxed").sort([*keys, ET, Q])
    cols = _rolling_exprs(view, parts, lasts)
    if view.ttl is not None:
        cols.append(pl.when(~pl.col(Q)).then(pl.col(ET)).forward_fill().over(keys).alias(LAST_ANY))
    return (
        union.with_columns(cols)
        .filter(pl.col(Q))
        .select(
            [QID, *[p.name for p in parts], *[f(c) for c in lasts for f in (_lv, _lt)]]
            + ([LAST_ANY] if view.ttl is not None else [])
        )
        .collect()
    )


def _value_cols(parts: list[_Partial], lasts: list[str]) -> list[str]:
    cols: list[str] = []
    for c in [p.column for p in parts] + list(lasts):
        if c is not None and c not in cols:
            cols.append(c)
    return cols


def _late_partials(
    view: FeatureView,
    late: pl.DataFrame,
    ontime: pl.DataFrame,
    queries: pl.DataFrame,
    parts: list[_Partial],
    lasts: list[str],
) -> pl.DataFrame:
    """Partials from late-recorded events (record time > event time), joined per entity."""
    keys = list(view.join_keys)
    span = max([p.window_us for p in parts] + [duration_us(a.window) for a in view.features])
    if view.ttl is not None:
        span = max(span, duration_us(view.ttl))
    joined = (
        queries.lazy()
        .select([*keys, T, QID])
        .join(late.lazy(), on=keys, how="inner")
        .filter(
            (pl.col(ET) <= pl.col(T)) & (pl.col(RT) <= pl.col(T)) & (pl.col(ET) > pl.col(T) - span)
        )
        .sort([QID, ET])
    )
    aggs: list[pl.Expr] = []
    dc_parts = [p for p in parts if p.kind == "dc"]
    for p in parts:
        cond = pl.col(ET) > pl.col(T) - p.window_us
        col = pl.col(p.column) if p.column is not None else None
        if p.kind == "n":
            e = cond.sum().cast(pl.Int64)
        elif p.kind == "nn":
            assert col is not None
            e = (cond & col.is_not_null()).sum().cast(pl.Int64)
        elif p.kind in ("sum", "m2", "nan", "pinf", "ninf", "min", "max"):
            assert col is not None
            e = _numeric_agg(p.kind, col.cast(pl.Float64), cond)
        else:
            assert col is not None
            e = col.filter(cond).drop_nulls().unique()
        aggs.append(e.alias(p.name))
    for c in lasts:
        # Rows are sorted by event time; among ties take the largest value.
        nn = pl.col(c).is_not_null()
        last_t = pl.col(ET).filter(nn).max()
        aggs.append(pl.col(c).filter(nn & (pl.col(ET) == last_t)).max().alias(_lv(c)))
        aggs.append(last_t.alias(_lt(c)))
    if view.ttl is not None:
        aggs.append(pl.col(ET).max().alias(LAST_ANY))
    agg = joined.group_by([QID, *keys, T]).agg(aggs).collect()
    if dc_parts and agg.height:
        for p in dc_parts:
            assert p.column is not None
            c = p.column
            pairs = (
                agg.select([QID, *keys, T, pl.col(p.name).alias(c)])
                .explode(c)
                .drop_nulls(c)
                .sort(T)
            )
            seen = ontime.select([*keys, c, ET]).drop_nulls(c).sort(ET)
            matched = pairs.join_asof(
                seen,
                left_on=T,
                right_on=ET,
                by=[*keys, c],
                strategy="backward",
                check_sortedness=False,
            )
            new = (
                matched.filter(pl.col(ET).is_null() | (pl.col(ET) <= pl.col(T) - p.window_us))
                .group_by(QID)
                .agg(pl.len().cast(pl.Int64).alias(p.name))
            )
            agg = (
                agg.drop(p.name)
                .join(new, on=QID, how="left")
                .with_columns(pl.col(p.name).fill_null(0))
            )
    return agg.drop([*keys, T])


def _merge(
    base: pl.DataFrame,
    late: pl.DataFrame,
    view: FeatureView,
    parts: list[_Partial],
    lasts: list[str],
) -> pl.DataFrame:
    if late.height == 0:
        return base
    late = late.rename({c: f"{c}__late" for c in late.columns if c != QID})
    late_cols = set(late.columns)
    merged = base.join(late, on=QID, how="left")
    exprs: list[pl.Expr] = []

    def both(kind: str, p: _Partial) -> tuple[pl.Expr, pl.Expr]:
        name = _Partial(kind, p.column, p.window_us).name
        if name not in base.columns:
            return pl.lit(0, pl.Int64), pl.lit(0, pl.Int64)
        b = pl.col(f"{name}__late") if f"{name}__late" in late_cols else pl.lit(0)
        return pl.col(name).fill_null(0), b.fill_null(0)

    for p in parts:
        a = pl.col(p.name)
        b = pl.col(f"{p.name}__late")
        if p.kind in ("min", "max"):
            fn = pl.min_horizontal if p.kind == "min" else pl.max_horizontal
            exprs.append(fn(a, b).alias(p.name))
        elif p.kind == "m2":  # Chan et al.: merge (count, sum, M2) of the finite values
            na, nb = both("nn", p)
            for kind in NONFINITE:
                xa, xb = both(kind, p)
                na, nb = na - xa, nb - xb
            sa, sb = both("sum", p)
            na_f, nb_f = na.cast(pl.Float64), nb.cast(pl.Float64)
            delta = sb / nb_f - sa / na_f
            cross = delta * delta * na_f * nb_f / (na_f + nb_f)
            exprs.append(
                (
                    a.fill_null(0.0)
                    + b.fill_null(0.0)
                    + pl.when((na > 0) & (nb > 0)).then(cross).otherwise(0.0)
                ).alias(p.name)
            )
        else:  # counts and sums add
            exprs.append((a.fill_null(0) + b.fill_null(0)).alias(p.name))
    for c in lasts:
        ov, ot = pl.col(_lv(c)), pl.col(_lt(c))
        lv, lt = pl.col(f"{_lv(c)}__late"), pl.col(f"{_lt(c)}__late")
        take_late = lt.is_not_null() & (ot.is_null() | (lt > ot) | ((lt == ot) & (lv > ov)))
        exprs.append(pl.when(take_late).then(lv).otherwise(ov).alias(_lv(c)))
        exprs.append(pl.when(take_late).then(lt).otherwise(ot).alias(_lt(c)))
    if view.ttl is not None:
        exprs.append(
            pl.max_horizontal(pl.col(LAST_ANY), pl.col(f"{LAST_ANY}__late")).alias(LAST_ANY)
        )
    return merged.with_columns(exprs).select(base.columns)


def _normalise_queries(view: FeatureView, queries: pl.DataFrame, time_column: str) -> pl.DataFrame:
    if not isinstance(queries, pl.DataFrame):
        raise InvalidInputError(f"queries must be a polars DataFrame, got {type(queries).__name__}")
    missing = [k for k in view.join_keys if k not in queries.columns]
    if missing:
        raise InvalidInputError(
            f"view {view.name!r}: query frame is missing join keys {missing} (has {queries.columns})"
        )
    t = time_to_us_expr(queries.schema, time_column, "query timestamp")
    q = queries.select([*view.join_keys, t.alias(T)]).with_row_index(QID)
    nulls = q.select(pl.any_horizontal(pl.all().is_null()).sum()).item()
    if nulls:
        raise InvalidInputError(f"query frame has {nulls} rows with a null join key or timestamp")
    return q


def _partials_at(view: FeatureView, prepared: pl.DataFrame, q: pl.DataFrame) -> pl.DataFrame:
    """Partial aggregates at each query row (``QID`` order), merged across visibility paths."""
    parts, lasts = _partials(view)
    keys = list(view.join_keys)
    for k in keys:
        if prepared.schema[k] == pl.Null:
            prepared = prepared.with_columns(pl.col(k).cast(q.schema[k]))
        elif q.schema[k] != prepared.schema[k]:
            try:
                q = q.with_columns(pl.col(k).cast(prepared.schema[k], strict=True))
            except pl.exceptions.PolarsError as exc:
                raise InvalidInputError(
                    f"join key {k!r} is {q.schema[k]} in the queries but {prepared.schema[k]} in the events"
                ) from exc
    if view.record_time is None:
        fast = _fast_partials(view, prepared, q, parts, lasts)
        if fast is not None:  # already in QID order
            return fast.with_columns(q[QID], q[T])
        # Mixed views: the numeric partials still come from the fast path (one numerics for
        # every view), only last / distinct / sketches from the rolling plan.
        numeric = [p for p in parts if p.kind in _FAST_KINDS]
        rest = [p for p in parts if p.kind not in _FAST_KINDS]
        fast = _numeric_fast(view, prepared, q, numeric) if numeric else None
        if fast is not None:
            base = _union_partials(view, prepared, q, rest, lasts).sort(QID)
            base = pl.concat([base, fast], how="horizontal")
        else:
            base = _union_partials(view, prepared, q, parts, lasts)
    else:
        bt = _bitemporal.partials(
            prepared,
            q,
            keys,
            ET,
            RT,
            T,
            [(p.kind, p.column, p.window_us, p.name) for p in parts],
            [(c, _lv(c), _lt(c)) for c in lasts],
            LAST_ANY if view.ttl is not None else None,
        )
        if bt is not None:  # already in QID order
            return bt.with_columns(q[QID], q[T])
        # Fallback (packed keys would overflow int64): on-time rolling plan + late-event join.
        rt = pl.col(RT).fill_null(pl.col(ET))
        ontime = prepared.filter(rt <= pl.col(ET))
        late = prepared.filter(rt > pl.col(ET)).with_columns(rt.alias(RT))
        base = _union_partials(view, ontime, q, parts, lasts)
        if late.height:
            base = _merge(
                base, _late_partials(view, late, ontime, q, parts, lasts), view, parts, lasts
            )
    return base.sort(QID).join(q.select([QID, T]), on=QID, how="left", maintain_order="left")


def _values(view: FeatureView, prepared: pl.DataFrame, q: pl.DataFrame) -> pl.DataFrame:
    _, lasts = _partials(view)
    parts = _partials_at(view, prepared, q)
    return parts.select(_finalize(view, lasts, parts.columns))


def compute_at(
    view: FeatureView,
    events: pl.DataFrame | pl.LazyFrame,
    queries: pl.DataFrame,
    *,
    time_column: str = "timestamp",
) -> pl.DataFrame:
    """Feature values of ``view`` for each ``(join keys, time_column)`` row of ``queries``.

    Uses only events with ``event_time <= T`` (and ``record_time <= T`` when the view has a
    record-time column). Returns ``queries`` with one column per feature, rows in input order.
    Raises InvalidInputError for missing columns, wrong dtypes or naive timestamps.
    """
    prepared = _prepared(view, events)
    q = _normalise_queries(view, queries, time_column)
    values = _values(view, prepared, q)
    clash = [c for c in values.columns if c in queries.columns]
    if clash:
        raise InvalidInputError(f"query frame already has columns named like features: {clash}")
    return pl.concat([queries, values], how="horizontal")


def backfill(view: FeatureView, events: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Feature values as of every event's own time (one output row per de-duplicated event).

    Rows are grouped by entity and time-ordered within each entity (the order of entities is
    unspecified). Output columns: the join keys, ``event_time`` (UTC) and one column per
    feature. Values at an event's time include every event of the entity at that instant.
    """
    prepared = _prepared(view, events)
    keys = list(view.join_keys)
    parts, lasts = _partials(view)
    out_time = (
        pl.from_epoch(pl.col(T), time_unit="us").dt.replace_time_zone("UTC").alias(view.event_time)
    )
    if view.record_time is None:
        fast = _fast_partials(view, prepared, None, parts, lasts)
        if fast is not None:  # grouped by entity, time-ordered within each entity
            return fast.with_columns(pl.col(ET).alias(T)).select(
                [*keys, out_time, *_finalize(view, lasts, fast.columns)]
            )
        if any(p.kind in _FAST_KINDS and p.kind != "n" for p in parts):
            return _backfill_by_queries(view, prepared)  # mixed view: see _partials_at
        lf = _with_hll_codes(
            prepared.lazy().sort([*keys, ET]).with_columns(pl.lit(1, pl.Int64).alias(ONE)), parts
        )
        cols = _rolling_exprs(view, parts, lasts)
        if view.ttl is not None:
            cols.append(pl.col(ET).alias(LAST_ANY))
        return (
            lf.with_columns(cols)
            .with_columns(pl.col(ET).alias(T))
            .select([*keys, out_time, *_finalize(view, lasts)])
            .collect()
        )
    return _backfill_by_queries(view, prepared)


def _backfill_by_queries(view: FeatureView, prepared: pl.DataFrame) -> pl.DataFrame:
    """Backfill as ``compute_at`` at every event's own time (record-time and mixed views)."""
    keys = list(view.join_keys)
    out_time = (
        pl.from_epoch(pl.col(T), time_unit="us").dt.replace_time_zone("UTC").alias(view.event_time)
    )
    q = prepared.select([*keys, pl.col(ET).alias(T)]).with_row_index(QID)
    values = _values(view, prepared, q)
    out = pl.concat([q.select([*keys, out_time]), values], how="horizontal")
    return out.sort([*keys, view.event_time], maintain_order=True)


def latest(
    view: FeatureView,
    events: pl.DataFrame | pl.LazyFrame,
    at: datetime,
    *,
    with_event_time: bool = False,
) -> pl.DataFrame:
    """Feature values of every entity seen in ``events`` (up to ``at``) as of ``at``: for materialising.

    ``with_event_time=True`` adds the column ``view.event_time``: each entity's latest event
    time visible at ``at`` — the time to write online values under (not ``at`` itself, or a
    later streaming write of an older event would be refused by the online store's
    event-time condition).
    """
    prepared = _prepared(view, events)
    at_us = to_us(at)
    keys = list(view.join_keys)
    visible = pl.col(ET) <= at_us
    if view.record_time is not None:
        visible &= pl.col(RT).fill_null(pl.col(ET)) <= at_us
    seen = (
        prepared.filter(visible)
        .group_by(keys, maintain_order=True)
        .agg(pl.col(ET).max().alias("__latest"))
    )
    ents = seen.select(keys)
    q = ents.with_columns(pl.lit(at_us, pl.Int64).alias(T)).with_row_index(QID)
    values = _values(view, prepared, q)
    out = pl.concat([ents, values], how="horizontal")
    if with_event_time:
        et = pl.from_epoch(seen["__latest"], time_unit="us").dt.replace_time_zone("UTC")
        out = out.with_columns(et.alias(view.event_time))
    return out


def prepared_to_events(view: FeatureView, prepared: pl.DataFrame) -> pl.DataFrame:
    """Turn a prepared frame back into the view's input shape (used to re-enter the engine)."""
    cols: list[pl.Expr] = [pl.col(k) for k in view.join_keys]
    cols.append(
        pl.from_epoch(pl.col(ET), time_unit="us").dt.replace_time_zone("UTC").alias(view.event_time)
    )
    if view.record_time is not None:
        cols.append(
            pl.from_epoch(pl.col(RT), time_unit="us")
            .dt.replace_time_zone("UTC")
            .alias(view.record_time)
        )
    if view.id_column is not None:
        cols.append(pl.col("__id").alias(view.id_column))
    cols.extend(pl.col(c) for c in view.fields)
    return prepared.select(cols)


def training_set(
    labels: pl.DataFrame,
    sources: Sequence[tuple[FeatureView, pl.DataFrame | pl.LazyFrame]],
    *,
    time_column: str = "timestamp",
    full_feature_names: bool = True,
) -> pl.DataFrame:
    """Point-in-time-correct training frame: ``labels`` plus every view's features at each row's time.

    Each feature value uses only events with ``event_time <= T`` (and ``record_time <= T``
    when the view has a record-time column); TTL is respected. Feature columns are named
    ``<view>__<feature>`` (or just ``<feature>`` with ``full_feature_names=False``).
    """
    if not isinstance(labels, pl.DataFrame):
        raise InvalidInputError(f"labels must be a polars DataFrame, got {type(labels).__name__}")
    out = labels
    for view, events in sources:
        part = compute_at(view, events, labels, time_column=time_column).select(view.feature_names)
        if full_feature_names:
            part = part.rename({n: f"{view.name}__{n}" for n in view.feature_names})
        clash = [c for c in part.columns if c in out.columns]
        if clash:
            raise InvalidInputError(
                f"feature columns {clash} clash with existing columns; use full_feature_names=True"
            )
        out = pl.concat([out, part], how="horizontal")
    return out
