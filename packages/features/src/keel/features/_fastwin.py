"""Fast path of the batch engine: every window of every aggregation in one pass over sorted events.

Instead of one rolling kernel per (aggregation, window) evaluated per entity group
(``rolling_*_by(...).over(entity)``), events are sorted once by a packed int64 key
``entity_code * S + (event_time - t0)`` (``S > time span``, so entities never overlap), and
each query ``(entity, T)`` becomes two binary searches per window into that one sorted
array: ``en`` = first row with key > ``(entity, T)`` and ``st`` = first row with key >
``(entity, T - w)``. The window is the row range ``[st, en)``, which gives, with no grouping:

- ``count`` = ``en - st`` (non-null count from a prefix count of non-null values);
- ``sum`` / ``sumsq`` = differences of per-entity prefix sums (restarted at each entity, so
  rounding error scales with the entity's own magnitude, not the whole frame's);
- ``min`` / ``max`` = a range-extremum query on a sparse table (``log2(longest window)``
  levels of pairwise extrema), two gathers per query;
- TTL's "latest visible event" = the event time of row ``en - 1`` when it is the same entity.

Window semantics are the engine's: ``T - w < event_time <= T`` (every row at exactly ``T``
included). Entity codes come from a 64-bit hash of the join keys, checked against a second
independent hash (a collision between two entities of one frame is detected, not trusted).
Views this path does not cover (``last``, ``distinct_count``, NaN values, a packed key that
would overflow) return ``None`` and the caller uses the general rolling plan.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

_SEED_A = 0x6B65656C
_SEED_B = 0x77696E64
_MAX_TABLE_LEVELS = 22
_KEY_LIMIT = 2**62
_SORT_BITS = 32  # bits of the entity hash the time-ordered index sorts on


@dataclass
class _Index:
    """Events sorted by packed (entity code, event time)."""

    uniq: np.ndarray  # sorted unique entity hashes (code = position)
    h2: np.ndarray  # second hash per code (collision check)
    t0: int
    span: int
    stride: int
    perm: np.ndarray  # sorted position -> event row
    keys: np.ndarray  # packed keys, sorted
    codes: np.ndarray  # entity code per sorted row
    et: np.ndarray  # event time per sorted row
    starts: np.ndarray  # first sorted row of each entity run
    values: dict[str, tuple[np.ndarray, np.ndarray]]  # column -> (values, non-null) sorted
    carried: pl.DataFrame  # columns asked to travel along, sorted


def _hashes(frame: pl.DataFrame, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    st = pl.struct(keys) if len(keys) > 1 else pl.col(keys[0])
    h = frame.select(st.hash(seed=_SEED_A).alias("a"), st.hash(seed=_SEED_B).alias("b"))
    return h["a"].to_numpy(), h["b"].to_numpy()


def build_index(
    events: pl.DataFrame,
    keys: list[str],
    et_col: str,
    value_cols: list[str],
    carry: list[str] | None = None,
) -> _Index | None:
    """Sort ``events`` (prepared, non-empty) by packed key; None when the key would overflow."""
    h1, h2 = _hashes(events, keys)
    et = events[et_col].to_numpy()
    t0 = int(et.min())
    span = int(et.max()) - t0
    stride = span + 2
    if bool((et[1:] >= et[:-1]).all()):
        # Time-ordered input (the usual event log): one stable sort by entity hash yields
        # (entity, time) order directly. The sort key is the hash's top 32 bits (a much
        # faster sort than 64); runs where two entities share those bits are re-sorted by the
        # full hash afterwards (few and short: ~n_entities^2 / 2^33 of them).
        prefix = (h1 >> np.uint64(64 - _SORT_BITS)).astype(np.uint32)
        srt = (
            pl.DataFrame({"s": prefix, "h": h1, "h2": h2, "et": et})
            .with_row_index("perm")
            .sort("s", maintain_order=True)
        )
        perm = srt["perm"].to_numpy().astype(np.int64)
        h1s, h2s, et_s = srt["h"].to_numpy(), srt["h2"].to_numpy(), srt["et"].to_numpy()
        pre_s = srt["s"].to_numpy()
        mixed = np.flatnonzero((pre_s[1:] == pre_s[:-1]) & (h1s[1:] != h1s[:-1]))
        if len(mixed):
            h1s, h2s, et_s = h1s.copy(), h2s.copy(), et_s.copy()
            run_starts = np.flatnonzero(np.r_[True, pre_s[1:] != pre_s[:-1]])
            run_ends = np.r_[run_starts[1:], len(pre_s)]
            for r in np.unique(np.searchsorted(run_starts, mixed, side="right") - 1):
                a, b = int(run_starts[r]), int(run_ends[r])
                local = np.argsort(h1s[a:b], kind="stable")
                for arr in (perm, h1s, h2s, et_s):
                    arr[a:b] = arr[a:b][local]
        change = np.flatnonzero(h1s[1:] != h1s[:-1]) + 1
        starts = np.concatenate([np.zeros(1, dtype=np.int64), change])
        codes_s = np.zeros(len(h1s), dtype=np.int64)
        codes_s[change] = 1
        np.cumsum(codes_s, out=codes_s)
        uniq = h1s[starts]
        if bool(((h2s[1:] != h2s[:-1]) & (h1s[1:] == h1s[:-1])).any()):
            return None  # two different entities share a 64-bit hash: use the general plan
        if len(uniq) * stride >= _KEY_LIMIT:
            return None
        keys_s = codes_s * stride + (et_s - t0)
        srt = events.select([*_value_exprs(value_cols), *(carry or [])])[perm]
        return _Index(
            uniq,
            h2s[starts],
            t0,
            span,
            stride,
            perm,
            keys_s,
            codes_s,
            et_s,
            starts,
            _sorted_values(srt, value_cols),
            srt.select(carry or []),
        )
    uniq, inv = np.unique(h1, return_inverse=True)
    inv = inv.astype(np.int64, copy=False)
    h2_of = np.zeros(len(uniq), dtype=np.uint64)
    h2_of[inv] = h2
    if not bool(np.array_equal(h2_of[inv], h2)):
        return None  # two different entities share a 64-bit hash: use the general plan
    if len(uniq) * stride >= _KEY_LIMIT:
        return None
    packed = inv * stride + (et - t0)
    perm = np.argsort(packed)
    keys_s = packed[perm]
    codes_s = inv[perm]
    change = np.flatnonzero(codes_s[1:] != codes_s[:-1]) + 1
    starts = np.concatenate([np.zeros(1, dtype=np.int64), change])
    srt = events.select([*_value_exprs(value_cols), *(carry or [])])[perm]
    return _Index(
        uniq,
        h2_of,
        t0,
        span,
        stride,
        perm,
        keys_s,
        codes_s,
        et[perm],
        starts,
        _sorted_values(srt, value_cols),
        srt.select(carry or []),
    )


def _value_exprs(value_cols: list[str]) -> list[pl.Expr]:
    out: list[pl.Expr] = []
    for i, c in enumerate(value_cols):
        x = pl.col(c).cast(pl.Float64)
        out += [x.fill_null(0.0).alias(f"__v{i}"), x.is_not_null().alias(f"__ok{i}")]
    return out


def _sorted_values(
    srt: pl.DataFrame, value_cols: list[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        c: (srt[f"__v{i}"].to_numpy(), srt[f"__ok{i}"].to_numpy()) for i, c in enumerate(value_cols)
    }


def _local_cumsum(a: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum restarted at each entity run (magnitudes stay per-entity)."""
    a2 = a.copy()
    if len(starts) > 1:
        totals = np.add.reduceat(a, starts)
        a2[starts[1:]] -= totals[:-1]
    return np.cumsum(a2)


class _Extremum:
    """Sparse table for range min/max queries over the sorted rows."""

    def __init__(self, a: np.ndarray, levels: int, fn: np.ufunc) -> None:
        n = len(a)
        self.n = n
        self.fn = fn
        table = np.empty((levels, n), dtype=np.float64)
        table[0] = a
        for k in range(1, levels):
            half = 1 << (k - 1)
            table[k] = table[k - 1]
            fn(table[k - 1][: n - half], table[k - 1][half:], out=table[k][: n - half])
        self.flat = table.reshape(-1)

    def query(self, st: np.ndarray, en: np.ndarray) -> np.ndarray:
        length = np.maximum(en - st, 1)
        k = np.frexp(length)[1].astype(np.int64) - 1  # floor(log2(length)), exact
        a = self.flat[k * self.n + np.minimum(st, self.n - 1)]
        b = self.flat[k * self.n + np.maximum(en - (1 << k), 0)]
        out: np.ndarray = self.fn(a, b)
        return out


def partials(
    events: pl.DataFrame,
    queries: pl.DataFrame | None,
    keys: list[str],
    et_col: str,
    t_col: str,
    parts: list[tuple[str, str | None, int, str]],
    ttl_col: str | None,
) -> pl.DataFrame | None:
    """Partial aggregates at each query row (input order), or None when not applicable.

    ``parts`` are ``(kind, column, window_us, output name)`` with kind in n, nn, sum, sumsq,
    min, max. ``queries`` None means "at every event's own time" (a backfill): then rows come
    grouped by entity and time-ordered within it, with the join keys and ``et_col`` added.
    """
    if events.height == 0:
        return None
    for _, c, _, _ in parts:
        if c is not None and events.schema[c].is_float() and bool(events[c].is_nan().any()):
            return None
    value_cols = sorted({c for _, c, _, _ in parts if c is not None})
    idx = build_index(events, keys, et_col, value_cols, keys if queries is None else None)
    if idx is None:
        return None
    n = events.height
    if queries is None:
        # Backfill: the queries are the sorted events themselves (sorted needles: the binary
        # searches walk memory in order); results stay in that order.
        order = None
        qcode = idx.codes
        rel = idx.et - idx.t0
        found = np.ones(n, dtype=bool)
    else:
        q1, q2 = _hashes(queries, keys)
        pos = np.searchsorted(idx.uniq, q1)
        pos_c = np.minimum(pos, len(idx.uniq) - 1)
        found_in = (pos < len(idx.uniq)) & (idx.uniq[pos_c] == q1) & (idx.h2[pos_c] == q2)
        code_in = np.where(found_in, pos_c, 0)
        rel_in = queries[t_col].to_numpy() - idx.t0
        order = np.argsort(
            np.where(found_in, code_in * idx.stride + np.clip(rel_in, -1, idx.span), -1)
        )
        qcode, rel, found = code_in[order], rel_in[order], found_in[order]
    if queries is None:
        # Each sorted event's window ends after the last event with the same packed key.
        run_end = np.flatnonzero(idx.keys[1:] != idx.keys[:-1]) + 1
        ends = np.append(run_end, n)
        en = np.repeat(ends, np.diff(np.concatenate([np.zeros(1, dtype=np.int64), ends])))
    else:
        end_key = qcode * idx.stride + np.clip(rel, -1, idx.span)
        en = np.where(found, np.searchsorted(idx.keys, end_key, side="right"), 0)
    threads = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    try:
        return _evaluate(idx, parts, ttl_col, events, et_col, order, qcode, rel, found, en, threads)
    finally:
        threads.shutdown()


def _evaluate(
    idx: _Index,
    parts: list[tuple[str, str | None, int, str]],
    ttl_col: str | None,
    events: pl.DataFrame,
    et_col: str,
    order: np.ndarray | None,
    qcode: np.ndarray,
    rel: np.ndarray,
    found: np.ndarray,
    en: np.ndarray,
    threads: ThreadPoolExecutor,
) -> pl.DataFrame | None:
    """Every part at every (sorted) query; NumPy releases the GIL, so windows run in threads."""
    n = events.height
    base = qcode * idx.stride
    all_found = bool(found.all())

    backfill = order is None
    if backfill:  # needles are the sorted keys themselves, floored at the entity's start
        floor = base - 1

    def start(w: int) -> np.ndarray:
        if backfill:
            return np.searchsorted(idx.keys, np.maximum(idx.keys - w, floor), side="right")
        st = np.searchsorted(idx.keys, base + np.clip(rel - w, -1, idx.span), side="right")
        return st if all_found else np.where(found, st, 0)

    windows = sorted({w for _, _, w, _ in parts})
    bounds = dict(zip(windows, threads.map(start, windows), strict=True))
    vals = idx.values
    # Prefix sums each part needs (computed once, shared by every window).
    needs: dict[tuple[str, str], np.ndarray] = {}
    for kind, c, _, _ in parts:
        if c is None:
            continue
        a, ok = vals[c]
        if kind in ("sum", "sumsq") and (kind, c) not in needs:
            needs[(kind, c)] = a if kind == "sum" else a * a
        if kind != "sum" and kind != "sumsq" and not bool(ok.all()):
            needs[("nn", c)] = ok.astype(np.int64)
    keys = list(needs)
    prefix = dict(
        zip(keys, threads.map(lambda k: _local_cumsum(needs[k], idx.starts), keys), strict=True)
    )
    last = np.maximum(en - 1, 0)

    def window_sum(key: tuple[str, str], w: int) -> np.ndarray:
        st = bounds[w]
        a, cs = needs[key], prefix[key]
        if backfill:  # every window holds its own event: st <= row < en
            out: np.ndarray = cs[last] - cs[st] + a[st]
            return out
        first = np.minimum(st, n - 1)
        out = np.where(en > st, cs[last] - (cs[first] - a[first]), 0)
        return out

    def nonnull(c: str, w: int) -> np.ndarray:
        if ("nn", c) in needs:
            return window_sum(("nn", c), w)
        return en - bounds[w]  # no nulls: the non-null count is the row count

    specs: dict[tuple[str, str], int] = {}
    for kind, c, w, _ in parts:
        if kind in ("min", "max"):
            assert c is not None
            longest = int((en - bounds[w]).max(initial=1))
            specs[(kind, c)] = max(specs.get((kind, c), 1), longest)
    if any(max(1, m.bit_length()) > _MAX_TABLE_LEVELS for m in specs.values()):
        return None

    def table(spec: tuple[str, str]) -> _Extremum:
        kind, c = spec
        a, ok = vals[c]
        fill = -np.inf if kind == "max" else np.inf
        fn = np.maximum if kind == "max" else np.minimum
        return _Extremum(np.where(ok, a, fill), max(1, specs[spec].bit_length()), fn)

    tables = dict(zip(specs, threads.map(table, list(specs)), strict=True))

    def part(p: tuple[str, str | None, int, str]) -> tuple[np.ndarray, np.ndarray | None]:
        kind, c, w, _ = p
        if kind == "n":
            return en - bounds[w], None
        assert c is not None
        if kind == "nn":
            return nonnull(c, w), None
        if kind in ("sum", "sumsq"):
            return window_sum((kind, c), w), None
        return tables[(kind, c)].query(bounds[w], en), nonnull(c, w) == 0

    results: list[tuple[str, np.ndarray, np.ndarray | None, pl.DataType]] = []
    for p, (v, null) in zip(parts, threads.map(part, parts), strict=True):
        results.append((p[3], v, null, pl.Int64() if p[0] in ("n", "nn") else pl.Float64()))
    if ttl_col is not None:
        has = (en > 0) & found & (idx.codes[last] == qcode)
        results.append((ttl_col, idx.et[last], ~has, pl.Int64()))

    if order is None:  # backfill: rows stay grouped by entity, time-ordered
        cols = [pl.Series(r[0], r[1], dtype=r[3]) for r in results]
        cols = [
            c if r[2] is None or not r[2].any() else c.set(pl.Series(r[2]), None)
            for c, r in zip(cols, results, strict=True)
        ]
        return pl.concat(
            [idx.carried, pl.DataFrame([pl.Series(et_col, idx.et), *cols])], how="horizontal"
        )

    # Back from sorted-query order to the caller's row order.
    def unsort(r: tuple[str, np.ndarray, np.ndarray | None, pl.DataType]) -> pl.Series:
        name, v, null, dtype = r
        out = np.empty_like(v)
        out[order] = v
        series = pl.Series(name, out, dtype=dtype)
        if null is not None and null.any():
            mask = np.empty_like(null)
            mask[order] = null
            series = series.set(pl.Series(mask), None)
        return series

    return pl.DataFrame(list(threads.map(unsort, results)))
