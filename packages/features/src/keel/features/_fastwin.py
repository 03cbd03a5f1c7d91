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

Backfills (the queries are the sorted events themselves, so both bounds are non-decreasing
along the rows) are evaluated chunk by chunk (``_backfill``): a chunk's binary searches,
prefix-sum gathers and a local sparse table touch only that chunk and the rows its windows
reach back to, so the work stays in cache instead of a dozen full-frame passes per feature;
chunks run in a small thread pool (NumPy releases the GIL). The values are the same
expressions as above, bit for bit. A time-ordered log is put in (entity, time) order by one
stable sort on the top 32 bits of the entity hash: two 16-bit LSD radix passes (NumPy's
stable sort of 16-bit keys is a linear radix sort), then a repair of the rare runs where two
entities share those bits.

Window semantics are the engine's: ``T - w < event_time <= T`` (every row at exactly ``T``
included). Entity codes come from a 64-bit hash of the join keys, checked against a second
independent hash (a collision between two entities of one frame is detected, not trusted).
Views this path does not cover (``last``, ``distinct_count``, NaN values, a packed key that
would overflow) return ``None`` and the caller uses the general rolling plan.
"""

from __future__ import annotations

import os
import sys
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
    carry: list[str] | None,
    threads: ThreadPoolExecutor,
) -> _Index | None:
    """Sort ``events`` (prepared, non-empty) by packed key; None when the key would overflow.

    ``carry`` columns travel along in sorted order (constant within an entity run).
    """
    h1, h2 = _hashes(events, keys)
    et = events[et_col].to_numpy()
    t0 = int(et.min())
    span = int(et.max()) - t0
    stride = span + 2
    if bool((et[1:] >= et[:-1]).all()):
        # Time-ordered input (the usual event log): one stable sort by entity hash yields
        # (entity, time) order directly. The sort key is the hash's top 32 bits, sorted by two
        # 16-bit radix passes (NumPy's stable sort of 16-bit keys is a linear radix sort);
        # runs where two entities share those bits are re-sorted by the full hash afterwards
        # (few and short: ~n_entities^2 / 2^33 of them).
        perm = _radix_perm(h1, _SORT_BITS)
        raw = _value_arrays(events, value_cols)
        h1s, h2s, et_s, *vals_s = threads.map(lambda a: np.take(a, perm), [h1, h2, et, *raw])
        change = np.flatnonzero(h1s[1:] != h1s[:-1]) + 1
        shift = np.uint64(64 - _SORT_BITS)
        mixed = change[(h1s[change] >> shift) == (h1s[change - 1] >> shift)]
        if len(mixed):  # a new entity without a new prefix: its prefix run is interleaved
            pre_s = h1s >> shift
            run_starts = np.flatnonzero(np.r_[True, pre_s[1:] != pre_s[:-1]])
            run_ends = np.r_[run_starts[1:], len(pre_s)]
            for r in np.unique(np.searchsorted(run_starts, mixed, side="right") - 1):
                a, b = int(run_starts[r]), int(run_ends[r])
                local = np.argsort(h1s[a:b], kind="stable")
                for arr in (perm, h1s, h2s, et_s, *vals_s):
                    arr[a:b] = arr[a:b][local]
            change = np.flatnonzero(h1s[1:] != h1s[:-1]) + 1
        starts = np.concatenate([np.zeros(1, dtype=np.int64), change])
        codes_s = np.zeros(len(h1s), dtype=np.int64)
        codes_s[change] = 1
        np.cumsum(codes_s, out=codes_s)
        uniq = h1s[starts]
        change2 = np.flatnonzero(h2s[1:] != h2s[:-1]) + 1
        if len(np.setdiff1d(change2, change, assume_unique=True)):
            return None  # two different entities share a 64-bit hash: use the general plan
        if len(uniq) * stride >= _KEY_LIMIT:
            return None
        keys_s = codes_s * stride + (et_s - t0)
        values = _values_dict(value_cols, vals_s, len(perm))
        carried = _carried(events, carry, perm, starts, codes_s)
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
            values,
            carried,
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
    raw = _value_arrays(events, value_cols)
    values = _values_dict(value_cols, list(threads.map(lambda a: np.take(a, perm), raw)), len(perm))
    carried = _carried(events, carry, perm, starts, codes_s)
    return _Index(
        uniq, h2_of, t0, span, stride, perm, keys_s, codes_s, et[perm], starts, values, carried
    )


def _radix_perm(h: np.ndarray, bits: int) -> np.ndarray:
    """Stable argsort of the top ``bits`` (<= 32) bits of uint64 ``h`` by 16-bit LSD radix passes."""
    if bits == 32 and sys.byteorder == "little":
        halves = h.view(np.uint16).reshape(-1, 4)  # bits 32-47 and 48-63, copied contiguous
        lo, hi = halves[:, 2].copy(), halves[:, 3].copy()
    else:
        top = h >> np.uint64(64 - bits)
        lo = (top & np.uint64(0xFFFF)).astype(np.uint16)
        hi = (top >> np.uint64(16)).astype(np.uint16)
    perm = np.argsort(lo, kind="stable")
    if bits > 16:
        perm = np.take(perm, np.argsort(np.take(hi, perm), kind="stable"))
    return perm


def _value_arrays(events: pl.DataFrame, value_cols: list[str]) -> list[np.ndarray]:
    """Per value column its float64 values (nulls as 0), then a non-null mask if it has nulls."""
    out: list[np.ndarray] = []
    for c in value_cols:
        x = events[c].cast(pl.Float64)
        if x.null_count() == 0:
            out.append(x.to_numpy())
        else:
            out += [x.fill_null(0.0).to_numpy(), x.is_not_null().to_numpy()]
    return out


def _values_dict(
    value_cols: list[str], arrays: list[np.ndarray], n: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Column -> (values, non-null mask) from arrays laid out as by ``_value_arrays``."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    i = 0
    for c in value_cols:
        masked = i + 1 < len(arrays) and arrays[i + 1].dtype == np.bool_
        out[c] = (arrays[i], arrays[i + 1] if masked else np.ones(n, dtype=bool))
        i += 2 if masked else 1
    return out


def _carried(
    events: pl.DataFrame,
    carry: list[str] | None,
    perm: np.ndarray,
    starts: np.ndarray,
    codes_s: np.ndarray,
) -> pl.DataFrame:
    """``carry`` columns in sorted order: constant within an entity run, so one row per entity
    is gathered and then expanded by entity code (ascending: that gather walks memory in order)."""
    if not carry:
        return pl.DataFrame()
    return events.select(carry)[perm[starts]][codes_s]


def _local_cumsum(a: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum restarted at each entity run (magnitudes stay per-entity)."""
    a2 = a.copy()
    if len(starts) > 1:
        totals = np.add.reduceat(a, starts)
        a2[starts[1:]] -= totals[:-1]
    return np.cumsum(a2)


_Arrays = dict[tuple[str, str], np.ndarray]


def _prefix_sums(
    parts: list[tuple[str, str | None, int, str]], idx: _Index, threads: ThreadPoolExecutor
) -> tuple[_Arrays, _Arrays]:
    """The summands every part needs and their per-entity prefix sums, computed once and
    shared by every window: ``("sum", c)`` and ``("sumsq", c)`` of the values, ``("nn", c)``
    of the non-null mask (only where column ``c`` has nulls)."""
    needs: dict[tuple[str, str], np.ndarray] = {}
    for kind, c, _, _ in parts:
        if c is None:
            continue
        a, ok = idx.values[c]
        if kind in ("sum", "sumsq") and (kind, c) not in needs:
            needs[(kind, c)] = a if kind == "sum" else a * a
        if kind not in ("sum", "sumsq") and not bool(ok.all()):
            needs[("nn", c)] = ok.astype(np.int64)
    keys = list(needs)
    sums = threads.map(lambda k: _local_cumsum(needs[k], idx.starts), keys)
    return needs, dict(zip(keys, sums, strict=True))


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
    threads = ThreadPoolExecutor(max_workers=_workers())
    try:
        return _partials(events, queries, keys, et_col, t_col, parts, ttl_col, threads)
    finally:
        threads.shutdown()


def _partials(
    events: pl.DataFrame,
    queries: pl.DataFrame | None,
    keys: list[str],
    et_col: str,
    t_col: str,
    parts: list[tuple[str, str | None, int, str]],
    ttl_col: str | None,
    threads: ThreadPoolExecutor,
) -> pl.DataFrame | None:
    value_cols = sorted({c for _, c, _, _ in parts if c is not None})
    carry = keys if queries is None else None
    idx = build_index(events, keys, et_col, value_cols, carry, threads)
    if idx is None:
        return None
    if queries is None:
        return _backfill(idx, parts, ttl_col, et_col, threads)
    q1, q2 = _hashes(queries, keys)
    pos = np.searchsorted(idx.uniq, q1)
    pos_c = np.minimum(pos, len(idx.uniq) - 1)
    found_in = (pos < len(idx.uniq)) & (idx.uniq[pos_c] == q1) & (idx.h2[pos_c] == q2)
    code_in = np.where(found_in, pos_c, 0)
    rel_in = queries[t_col].to_numpy() - idx.t0
    order = np.argsort(np.where(found_in, code_in * idx.stride + np.clip(rel_in, -1, idx.span), -1))
    qcode, rel, found = code_in[order], rel_in[order], found_in[order]
    end_key = qcode * idx.stride + np.clip(rel, -1, idx.span)
    en = np.where(found, np.searchsorted(idx.keys, end_key, side="right"), 0)
    return _evaluate(idx, parts, ttl_col, events, order, qcode, rel, found, en, threads)


def _evaluate(
    idx: _Index,
    parts: list[tuple[str, str | None, int, str]],
    ttl_col: str | None,
    events: pl.DataFrame,
    order: np.ndarray,
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

    def start(w: int) -> np.ndarray:
        st = np.searchsorted(idx.keys, base + np.clip(rel - w, -1, idx.span), side="right")
        return st if all_found else np.where(found, st, 0)

    windows = sorted({w for _, _, w, _ in parts})
    bounds = dict(zip(windows, threads.map(start, windows), strict=True))
    vals = idx.values
    needs, prefix = _prefix_sums(parts, idx, threads)
    last = np.maximum(en - 1, 0)

    def window_sum(key: tuple[str, str], w: int) -> np.ndarray:
        st = bounds[w]
        a, cs = needs[key], prefix[key]
        first = np.minimum(st, n - 1)
        out: np.ndarray = np.where(en > st, cs[last] - (cs[first] - a[first]), 0)
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


_CHUNK = 1 << 15  # backfill rows evaluated together (their working set stays in L2)
_LOG2 = np.frexp(np.arange(1 << 16))[1].astype(np.int64) - 1  # floor(log2(i)) for i >= 1


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class _TooLong(Exception):
    """A window spans more rows than the sparse tables allow: use the general plan."""


def _backfill(
    idx: _Index,
    parts: list[tuple[str, str | None, int, str]],
    ttl_col: str | None,
    et_col: str,
    threads: ThreadPoolExecutor,
) -> pl.DataFrame | None:
    """Every part at every sorted event's own time (a backfill), rows grouped by entity.

    The queries are the sorted events themselves, so each window is ``[st, en)`` with
    ``st <= row < en`` and both bounds non-decreasing along the rows. Rows are evaluated in
    chunks of ``_CHUNK``: a chunk's binary searches, prefix-sum gathers and range-extremum
    tables only touch the chunk and the rows its windows reach back to, all cache-resident,
    instead of a dozen full passes over the whole frame per feature. Chunks run in threads
    (NumPy releases the GIL). Values are the same expressions as for ``compute_at``.
    """
    keys, codes, n = idx.keys, idx.codes, len(idx.keys)
    # Window ends: the row after the last event with the same packed key (ties on time all
    # count); with no ties that is simply row + 1.
    en_all: np.ndarray | None = None
    if n > 1 and not bool((keys[1:] != keys[:-1]).all()):
        ends = np.append(np.flatnonzero(keys[1:] != keys[:-1]) + 1, n)
        en_all = np.repeat(ends, np.diff(np.concatenate([np.zeros(1, dtype=np.int64), ends])))
    windows = sorted({w for _, _, w, _ in parts})
    vals = idx.values
    needs, prefix = _prefix_sums(parts, idx, threads)
    specs: dict[tuple[str, str], tuple[np.ndarray, np.ufunc]] = {}
    for kind, c, _, _ in parts:
        if kind in ("min", "max") and c is not None and (kind, c) not in specs:
            a, ok = vals[c]
            fill = -np.inf if kind == "max" else np.inf
            fn = np.maximum if kind == "max" else np.minimum
            specs[(kind, c)] = (a if bool(ok.all()) else np.where(ok, a, fill), fn)

    out = {p[3]: np.empty(n, dtype=np.int64 if p[0] in ("n", "nn") else np.float64) for p in parts}
    nulls = {p[3]: np.zeros(n, dtype=bool) for p in parts if p[0] in ("min", "max")}

    def chunk(a: int, b: int) -> None:
        k = keys[a:b]
        floor = codes[a:b] * idx.stride - 1  # needles never leave the entity
        en = np.arange(a + 1, b + 1) if en_all is None else en_all[a:b]
        last = en - 1
        st: dict[int, np.ndarray] = {}
        for w in windows:
            nd = np.maximum(k - w, floor)  # non-decreasing: both terms are
            lo = int(np.searchsorted(keys[:b], nd[0], side="right"))
            s = np.searchsorted(keys[lo:b], nd, side="right")
            s += lo
            st[w] = s
        cnt = {w: en - st[w] for w in windows}
        sums: dict[tuple[tuple[str, str], int], np.ndarray] = {}

        def window_sum(key: tuple[str, str], w: int) -> np.ndarray:
            if (key, w) not in sums:
                cs, v, s = prefix[key], needs[key], st[w]
                cl = cs[a:b] if en_all is None else cs[last]
                sums[(key, w)] = cl - cs[s] + v[s]
            return sums[(key, w)]

        def nonnull(c: str, w: int) -> np.ndarray:
            return window_sum(("nn", c), w) if ("nn", c) in needs else cnt[w]

        tables: dict[tuple[str, str], tuple[np.ndarray, int]] = {}
        if specs:
            longest = max(int(cnt[w].max()) for w in windows)
            levels = max(1, longest.bit_length())
            if levels > _MAX_TABLE_LEVELS:
                raise _TooLong
            lo_min = min(int(st[w][0]) for w in windows)
            hi = int(en[-1])
            for spec, (arr, fn) in specs.items():
                tables[spec] = (_table(arr[lo_min:hi], levels, fn), lo_min)
        for kind, c, w, name in parts:
            dst = out[name][a:b]
            if kind == "n":
                dst[:] = cnt[w]
            elif kind == "nn":
                assert c is not None
                dst[:] = nonnull(c, w)
            elif kind in ("sum", "sumsq"):
                assert c is not None
                dst[:] = window_sum((kind, c), w)
            else:
                assert c is not None
                flat, base = tables[(kind, c)]
                _query(flat, hi - base, st[w] - base, en - base, specs[(kind, c)][1], dst)
                np.equal(nonnull(c, w), 0, out=nulls[name][a:b])

    bounds = list(range(0, n, _CHUNK))
    workers = min(len(bounds), _workers())
    groups = [g for g in np.array_split(np.array(bounds, dtype=np.int64), workers) if len(g)]

    def run(group: np.ndarray) -> None:
        for a in group.tolist():
            chunk(a, min(a + _CHUNK, n))

    try:
        list(threads.map(run, groups))
    except _TooLong:
        return None

    cols = [idx.carried, pl.DataFrame([pl.Series(et_col, idx.et)])]
    series = []
    for kind, _, _, name in parts:
        sr = pl.Series(name, out[name], dtype=pl.Int64 if kind in ("n", "nn") else pl.Float64)
        if name in nulls and nulls[name].any():
            sr = sr.set(pl.Series(nulls[name]), None)
        series.append(sr)
    if ttl_col is not None:  # the latest visible event at an event's own time is itself
        series.append(pl.Series(ttl_col, idx.et, dtype=pl.Int64))
    cols.append(pl.DataFrame(series))
    return pl.concat(cols, how="horizontal")


def _table(a: np.ndarray, levels: int, fn: np.ufunc) -> np.ndarray:
    """Sparse table over ``a``, flattened: level ``k`` holds fn over ``[i, i + 2**k)``."""
    m = len(a)
    table = np.empty((levels, m), dtype=np.float64)
    table[0] = a
    for k in range(1, levels):
        half = 1 << (k - 1)
        fn(table[k - 1][: m - half], table[k - 1][half:], out=table[k][: m - half])
        table[k][m - half :] = table[k - 1][m - half :]
    return table.reshape(-1)


def _query(
    flat: np.ndarray, m: int, st: np.ndarray, en: np.ndarray, fn: np.ufunc, out: np.ndarray
) -> None:
    """fn over rows ``[st, en)`` (non-empty) from a flattened sparse table of ``m`` rows."""
    length = en - st
    k = (
        _LOG2[length]
        if int(length.max()) < len(_LOG2)
        else np.frexp(length)[1].astype(np.int64) - 1
    )
    fn(flat[k * m + st], flat[k * m + en - np.left_shift(1, k)], out=out)
