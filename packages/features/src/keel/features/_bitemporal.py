"""Record-time (bitemporal) partial aggregates in O((n + q) log(n + q)), vectorised.

With a record-time column an event is visible at ``T`` when ``record_time <= T`` and
``event_time <= T``; it is inside window ``w`` when ``event_time > T - w``. So each event
contributes to window ``w`` exactly for ``T`` in the interval ``[vis, event_time + w)`` with
``vis = max(event_time, record_time)`` (empty when recorded after its window had passed).
Every partial is then an interval query over the time axis, per entity, with entity and time
packed into one int64 key (``code * stride + time``):

- additive partials (counts, sums, the shifted sums behind ``m2``): at ``T``, (sum over events
  whose interval started by ``T``) minus (sum over those whose interval ended by ``T``); two
  sorted key arrays with prefix sums, two binary searches per query. An interval that ended
  has started, so the difference is exactly the set of intervals containing ``T``;
- min / max, ``last`` (the latest visible event: max of its (event time, value) rank, over
  ``[vis, end of entity)``) and TTL's latest visible event time: a segment tree over the sorted
  query keys; each interval is decomposed into O(log q) tree nodes (vectorised bottom-up
  loop), then values are pushed down to the leaves;
- ``distinct_count``: per (entity, value), the union of that value's intervals (merged
  runs), counted as an additive partial.

Sums are double-double and ``m2`` comes from shifted sums exactly as in the fast path
(``_numerics``), so values agree with the other engines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from keel.features import _numerics

_KEY_LIMIT = 2**62


def _stab(
    n_q: int, lo: np.ndarray, hi: np.ndarray, vals: np.ndarray, fn: np.ufunc, ident: Any
) -> np.ndarray:
    """For each of ``n_q`` sorted queries, ``fn`` over the values of intervals ``[lo, hi)``
    (in query positions) that contain it; ``ident`` where none does."""
    size = 1 << max(0, (n_q - 1).bit_length())
    tree = np.full(2 * size, ident, dtype=vals.dtype)
    keep = lo < hi
    left, right, v = lo[keep] + size, hi[keep] + size, vals[keep]
    while len(left):
        m = (left & 1).astype(bool)
        fn.at(tree, left[m], v[m])
        left = left + m
        m = (right & 1).astype(bool)
        right = right - m
        fn.at(tree, right[m], v[m])
        left >>= 1
        right >>= 1
        keep = left < right
        left, right, v = left[keep], right[keep], v[keep]
    level = 1
    while level < size:
        parent = tree[level : 2 * level]
        kids = tree[2 * level : 4 * level].reshape(-1, 2)
        fn(kids, parent[:, None], out=kids)
        level *= 2
    return tree[size : size + n_q]


class _Intervals:
    """Events as per-entity time intervals, sorted by start and by end, against sorted queries."""

    def __init__(
        self, start: np.ndarray, end: np.ndarray, base: np.ndarray, qk: np.ndarray
    ) -> None:
        self.m = len(start)
        self.s_order = np.argsort(start)
        self.e_order = np.argsort(end)
        s_sorted, e_sorted = start[self.s_order], end[self.e_order]
        self.i_s = np.searchsorted(s_sorted, qk, side="right")
        self.i_e = np.searchsorted(e_sorted, qk, side="right")
        self.b_s = np.searchsorted(s_sorted, base, side="left")
        self.b_e = np.searchsorted(e_sorted, base, side="left")

    def count(self, flag: np.ndarray | None = None) -> np.ndarray:
        if flag is None:
            out: np.ndarray = (self.i_s - self.b_s) - (self.i_e - self.b_e)
            return out
        ps = np.zeros(self.m + 1, dtype=np.int64)
        np.cumsum(flag[self.s_order], out=ps[1:])
        pe = np.zeros(self.m + 1, dtype=np.int64)
        np.cumsum(flag[self.e_order], out=pe[1:])
        out = (ps[self.i_s] - ps[self.b_s]) - (pe[self.i_e] - pe[self.b_e])
        return out

    def dd_sum(self, x: np.ndarray, err: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        sp = _numerics.dd_prefix(x[self.s_order], None if err is None else err[self.s_order])
        ep = _numerics.dd_prefix(x[self.e_order], None if err is None else err[self.e_order])
        # Difference level by level (hi, lo, lo2), so each level cancels before rounding.
        (shi, slo, slo2), (ehi, elo, elo2) = sp, ep
        t1, e1 = _numerics.two_sum(shi[self.i_s], -shi[self.b_s])
        t2, e2 = _numerics.two_sum(ehi[self.i_e], -ehi[self.b_e])
        h, e3 = _numerics.two_sum(t1, -t2)
        lo = (slo[self.i_s] - slo[self.b_s]) - (elo[self.i_e] - elo[self.b_e])
        lo2 = (slo2[self.i_s] - slo2[self.b_s]) - (elo2[self.i_e] - elo2[self.b_e])
        return h, ((e1 - e2) + e3) + (lo + lo2)


def partials(
    events: pl.DataFrame,
    queries: pl.DataFrame,
    keys: list[str],
    et_col: str,
    rt_col: str,
    t_col: str,
    parts: Sequence[tuple[str, str | None, int, str]],
    lasts: Sequence[tuple[str, str, str]],
    ttl_col: str | None,
) -> pl.DataFrame | None:
    """Partials at each query row (input order) from ``events`` visible by record time.

    ``parts``: ``(kind, column, window_us, output name)`` (kinds as in ``_batch._Partial``,
    except the HyperLogLog ones); ``lasts``: ``(column, value name, time name)``. None when the
    packed keys would overflow int64 (the caller falls back).
    """
    if events.height == 0:
        return None  # nothing visible anywhere: the caller's plain plan answers directly
    ents = events.select(keys).unique(maintain_order=True).with_row_index("__code")
    n_codes = ents.height
    ev_code = (
        (events.select(keys).join(ents, on=keys, how="left", maintain_order="left")["__code"])
        .to_numpy()
        .astype(np.int64)
    )
    q_code_s = queries.select(keys).join(ents, on=keys, how="left", maintain_order="left")["__code"]
    q_code = q_code_s.fill_null(n_codes).to_numpy().astype(np.int64)  # unknown: an empty entity
    et = events[et_col].to_numpy().astype(np.int64)
    rt = events[rt_col].fill_null(events[et_col]).to_numpy().astype(np.int64)
    vis = np.maximum(et, rt)
    t = queries[t_col].to_numpy().astype(np.int64)
    windows = sorted({w for _, _, w, _ in parts})
    w_max = max(windows, default=0)
    lo_t = int(min(et.min(), t.min() if len(t) else et.min()))
    hi_t = int(max(vis.max(), et.max() + w_max, t.max() if len(t) else vis.max()))
    stride = hi_t - lo_t + 2
    if (n_codes + 1) * stride >= _KEY_LIMIT:
        return None
    ebase = ev_code * stride - lo_t
    qk_in = q_code * stride + (t - lo_t)
    n_q = len(qk_in)
    # Work in sorted query order (binary searches with sorted needles stay in cache).
    q_order = np.argsort(qk_in, kind="stable")
    qk = qk_sorted = qk_in[q_order]
    qbase = q_code[q_order] * stride

    def q_pos(k: np.ndarray) -> np.ndarray:
        order = np.argsort(k)  # sorted needles: cache-friendly searches
        out = np.empty(len(k), dtype=np.int64)
        out[order] = np.searchsorted(qk_sorted, k[order], side="left")
        return out

    def unsort(sorted_vals: np.ndarray) -> np.ndarray:
        out = np.empty_like(sorted_vals)
        out[q_order] = sorted_vals
        return out  # input order

    entity_end = (ev_code + 1) * stride  # intervals open to the end of the entity
    cols: dict[str, pl.Series] = {}
    values: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def column(c: str) -> tuple[np.ndarray, np.ndarray]:
        if c not in values:
            s = events[c]
            x = s.cast(pl.Float64) if s.dtype.is_numeric() else pl.Series(np.zeros(len(s)))
            values[c] = (x.fill_null(0.0).to_numpy(), s.is_not_null().to_numpy())
        return values[c]

    for w in windows:
        active = vis < et + w
        idx = np.flatnonzero(active)
        iv = _Intervals(ebase[idx] + vis[idx], ebase[idx] + et[idx] + w, qbase, qk)
        for kind, c, pw, name in parts:
            if pw != w:
                continue
            if kind == "n":
                cols[name] = pl.Series(name, iv.count(), dtype=pl.Int64)
                continue
            assert c is not None
            a_all, ok_all = column(c)
            a, ok = a_all[idx], ok_all[idx]
            finite = np.isfinite(a)
            if kind == "nn":
                res: np.ndarray = iv.count(ok)
            elif kind in ("nan", "pinf", "ninf"):
                flag = (
                    np.isnan(a) if kind == "nan" else a == (np.inf if kind == "pinf" else -np.inf)
                )
                res = iv.count(ok & flag)
            elif kind == "sum":
                af = np.where(ok & finite, a, 0.0)
                sc = _numerics.overflow_scale(float(np.abs(af).max(initial=0.0)), len(af))
                h, lo = iv.dd_sum(af * sc)
                res = (h + lo) / sc
            elif kind == "m2":  # as in the fast path (``_fastwin._Sums``)
                good = ok & finite
                af = np.where(good, a, 0.0)
                huge = good & (np.abs(af) > _numerics.STD_LIMIT)
                good &= ~huge
                codes = ev_code[idx]
                first = np.full(n_codes + 1, np.nan)
                gi = np.flatnonzero(good)[::-1]  # reversed: the first finite value wins
                first[codes[gi]] = af[gi]
                d = np.where(good, af - np.nan_to_num(first[codes]), 0.0)
                s1h, s1l = iv.dd_sum(d)
                sq, err = _numerics.two_prod(d, d)
                s2h, s2l = iv.dd_sum(sq, err)
                res = _numerics.m2_from_sums(s1h, s1l, s2h, s2l, iv.count(good))
                if huge.any():
                    res = np.where(iv.count(huge) > 0, np.inf, res)
            elif kind in ("min", "max"):
                use = np.flatnonzero(ok & ~np.isnan(a))
                fn, ident = (np.minimum, np.inf) if kind == "min" else (np.maximum, -np.inf)
                lo = q_pos(ebase[idx][use] + vis[idx][use])
                hi = q_pos(ebase[idx][use] + et[idx][use] + w)
                res = _stab(n_q, lo, hi, a[use].astype(np.float64), fn, ident)
            elif kind == "dc":
                res = _distinct(
                    events[c][idx], ev_code[idx], vis[idx], et[idx] + w, ebase[idx], qbase, qk
                )
            else:  # pragma: no cover - hz / hn are refused with a record time at definition
                raise AssertionError(kind)
            dtype = pl.Float64 if kind in ("sum", "m2", "min", "max") else pl.Int64
            cols[name] = pl.Series(name, res, dtype=dtype)

    for c, v_name, t_name in lasts:
        s = events[c]
        nn = np.flatnonzero(s.is_not_null().to_numpy())
        if not len(nn):
            cols[v_name] = pl.Series(v_name, [None] * n_q, dtype=s.dtype)
            cols[t_name] = pl.Series(t_name, [None] * n_q, dtype=pl.Int64)
            continue
        ranked = pl.DataFrame({"code": ev_code[nn], "et": et[nn], "v": s.gather(nn), "i": nn}).sort(
            ["code", "et", "v"]
        )
        rank = np.empty(len(nn), dtype=np.int64)
        rank[np.searchsorted(nn, ranked["i"].to_numpy())] = np.arange(len(nn))
        lo = q_pos(ebase[nn] + vis[nn])
        hi = q_pos(entity_end[nn])
        best = _stab(n_q, lo, hi, rank, np.maximum, -1)
        found = best >= 0
        pick = pl.Series(np.where(found, best, 0))
        cols[v_name] = ranked["v"].gather(pick).set(pl.Series(~found), None).alias(v_name)
        cols[t_name] = ranked["et"].gather(pick).set(pl.Series(~found), None).alias(t_name)
    if ttl_col is not None:
        lo = q_pos(ebase + vis)
        hi = q_pos(entity_end)
        latest = _stab(n_q, lo, hi, et, np.maximum, np.iinfo(np.int64).min)
        seen = latest != np.iinfo(np.int64).min
        cols[ttl_col] = pl.Series(ttl_col, latest).set(pl.Series(~seen), None)
    back = pl.Series(unsort(np.arange(n_q)))  # sorted position of each input row
    return pl.DataFrame([c.gather(back) for c in cols.values()])


def _distinct(
    col: pl.Series,
    code: np.ndarray,
    start_t: np.ndarray,
    end_t: np.ndarray,
    ebase: np.ndarray,
    qbase: np.ndarray,
    qk: np.ndarray,
) -> np.ndarray:
    """Distinct non-null values whose (merged) intervals contain each query."""
    df = pl.DataFrame({"code": code, "v": col, "s": ebase + start_t, "e": ebase + end_t}).filter(
        pl.col("v").is_not_null()
    )
    runs = (
        df.sort(["code", "v", "s"])
        .with_columns(prev=pl.col("e").cum_max().shift(1).over(["code", "v"]))
        .with_columns(new=(pl.col("prev").is_null() | (pl.col("s") > pl.col("prev"))).cum_sum())
        .group_by("new")
        .agg(pl.col("s").min(), pl.col("e").max())
    )
    iv = _Intervals(runs["s"].to_numpy(), runs["e"].to_numpy(), qbase, qk)
    return iv.count()
