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
from typing import Any

import numpy as np
import polars as pl

from keel.features import _numerics

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
        col = events[c]
        if not col.dtype.is_numeric():  # only counted (count over a str / bool column)
            x = pl.Series(c, np.zeros(len(col))).set(col.is_null(), None)
        else:
            x = col.cast(pl.Float64)
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


_Parts = list[tuple[str, str | None, int, str]]
_COUNT_KINDS = ("nn", "nan", "pinf", "ninf", "nf", "huge")


class _Sums:
    """Exclusive prefix sums (length ``n + 1``) every part needs, computed once, shared by
    every window; a window ``[st, en)`` is then ``P[en] - P[st]``.

    Counts (``nn`` non-null, ``nan`` / ``pinf`` / ``ninf``, ``nf`` finite non-null) are exact
    int64 prefixes, built only where they differ from the row count (``nn``, ``nf``) or from
    zero (the non-finite counts: a column without NaN/inf has no such partial at all).
    ``sum`` is a double-double prefix of the finite values; ``m2`` (sum of squared deviations)
    comes from double-double prefixes of the finite values shifted by their entity's first
    finite value (``d1``) and of their exact squares (``d2``), see ``_numerics``. A column
    whose values could overflow a prefix is scaled by an exact power of two.
    """

    def __init__(self, parts: _Parts, idx: _Index, threads: ThreadPoolExecutor) -> None:
        n = len(idx.keys)
        self.n = n
        self.counts: dict[tuple[str, str], np.ndarray] = {}
        self.dd: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.scale: dict[tuple[str, str], float] = {}
        jobs: list[tuple[tuple[str, str], Any]] = []
        kinds: dict[str, set[str]] = {}
        for kind, c, _, _ in parts:
            if c is not None:
                kinds.setdefault(c, set()).add(kind)
        for c, ks in kinds.items():
            a, ok = idx.values[c]
            finite = np.isfinite(a)
            all_finite = bool(finite.all())
            all_ok = bool(ok.all())
            if not all_ok and "nn" in ks:
                jobs.append((("nn", c), ok))
            if not all_finite:
                for kind, flag in (
                    ("nan", np.isnan(a)),
                    ("pinf", a == np.inf),
                    ("ninf", a == -np.inf),
                ):
                    if kind in ks and bool(flag.any()):
                        jobs.append(((kind, c), flag))
            good = ok if all_finite else ok & finite
            af = a if all_finite else np.where(finite, a, 0.0)
            if "sum" in ks:
                sc = _numerics.overflow_scale(float(np.abs(af).max(initial=0.0)), n)
                self.scale[("sum", c)] = sc
                jobs.append((("sum", c), af * sc if sc != 1.0 else af))
            if "m2" in ks:
                # Values beyond STD_LIMIT stay out of the shifted sums (their squares would
                # overflow a prefix and poison later windows); windows holding one give inf.
                huge = np.abs(af) > _numerics.STD_LIMIT
                moderate = good
                if bool(huge.any()):
                    jobs.append((("huge", c), huge & good))
                    moderate = good & ~huge
                if not bool(moderate.all()):
                    jobs.append((("nf", c), moderate))
                pos = np.where(moderate, np.arange(n), n)
                first = np.minimum.reduceat(pos, idx.starts)
                ref = np.where(first < n, af[np.minimum(first, n - 1)], 0.0)
                d = af - ref[idx.codes]
                if not bool(moderate.all()):
                    d = np.where(moderate, d, 0.0)
                jobs.append((("d1", c), d))
                jobs.append((("d2", c), d))

        def build(job: tuple[tuple[str, str], Any]) -> Any:
            (kind, _), arr = job
            if kind in _COUNT_KINDS:
                out = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(arr, out=out[1:])
                return out
            if kind == "d2":
                sq, err = _numerics.two_prod(arr, arr)
                return _numerics.dd_prefix(sq, err)
            return _numerics.dd_prefix(arr)

        for (key, _), res in zip(jobs, threads.map(build, jobs), strict=True):
            if key[0] in _COUNT_KINDS:
                self.counts[key] = res
            else:
                self.dd[key] = res

    def has(self, kind: str, c: str) -> bool:
        return (kind, c) in self.counts

    def count(self, kind: str, c: str, st: np.ndarray, en: np.ndarray) -> np.ndarray:
        """A count partial over ``[st, en)``; ``nn``/``nf`` default to the row count."""
        p = self.counts.get((kind, c))
        if p is None:
            if kind == "nf" and ("nn", c) in self.counts:
                p = self.counts[("nn", c)]
            elif kind in ("nn", "nf"):
                return en - st
            else:
                return np.zeros(len(st), dtype=np.int64)
        out: np.ndarray = p[en] - p[st]
        return out

    def total(self, c: str, st: np.ndarray, en: np.ndarray) -> np.ndarray:
        """Sum of the finite values over ``[st, en)``."""
        h, e = _numerics.dd_window(*self.dd[("sum", c)], st, en)
        out: np.ndarray = h + e
        sc = self.scale[("sum", c)]
        return out / sc if sc != 1.0 else out

    def m2(self, c: str, st: np.ndarray, en: np.ndarray) -> np.ndarray:
        """Sum of squared deviations of the finite values over ``[st, en)`` from their mean."""
        s1h, s1l = _numerics.dd_window(*self.dd[("d1", c)], st, en)
        s2h, s2l = _numerics.dd_window(*self.dd[("d2", c)], st, en)
        nf = self.count("nf", c, st, en) if ("nf", c) in self.counts else en - st
        out = _numerics.m2_from_sums(s1h, s1l, s2h, s2l, nf)
        if ("huge", c) in self.counts:
            out = np.where(self.count("huge", c, st, en) > 0, np.inf, out)
        return out

    def part(self, kind: str, c: str, st: np.ndarray, en: np.ndarray) -> np.ndarray | None:
        """A count / sum / m2 partial over ``[st, en)``; None for an all-zero NaN/inf count."""
        if kind in ("nan", "pinf", "ninf") and (kind, c) not in self.counts:
            return None
        if kind in _COUNT_KINDS:
            return self.count(kind, c, st, en)
        if kind == "sum":
            return self.total(c, st, en)
        return self.m2(c, st, en)


def _extremum_input(idx: _Index, kind: str, c: str) -> np.ndarray:
    """Values for a min/max table: nulls and NaN replaced by the identity (they never win)."""
    a, ok = idx.values[c]
    fill = -np.inf if kind == "max" else np.inf
    bad = ~ok | np.isnan(a)
    return np.where(bad, fill, a) if bool(bad.any()) else a


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

    ``parts`` are ``(kind, column, window_us, output name)`` with kind in n, nn, sum, m2,
    nan, pinf, ninf, min, max (see ``_batch._Partial``); a NaN/inf count of a column holding
    none is left out of the result (it is zero). ``queries`` None means "at every event's own time" (a backfill): then rows come
    grouped by entity and time-ordered within it, with the join keys and ``et_col`` added.
    """
    if events.height == 0:
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
    base = qcode * idx.stride
    all_found = bool(found.all())

    def start(w: int) -> np.ndarray:
        st = np.searchsorted(idx.keys, base + np.clip(rel - w, -1, idx.span), side="right")
        return st if all_found else np.where(found, st, 0)

    windows = sorted({w for _, _, w, _ in parts})
    bounds = dict(zip(windows, threads.map(start, windows), strict=True))
    sums = _Sums(parts, idx, threads)
    last = np.maximum(en - 1, 0)

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
        fn = np.maximum if kind == "max" else np.minimum
        return _Extremum(_extremum_input(idx, kind, c), max(1, specs[spec].bit_length()), fn)

    tables = dict(zip(specs, threads.map(table, list(specs)), strict=True))

    def part(p: tuple[str, str | None, int, str]) -> tuple[np.ndarray | None, np.ndarray | None]:
        kind, c, w, _ = p
        if kind == "n":
            return en - bounds[w], None
        assert c is not None
        if kind in ("min", "max"):
            return tables[(kind, c)].query(bounds[w], en), sums.count("nn", c, bounds[w], en) == 0
        return sums.part(kind, c, bounds[w], en), None

    results: list[tuple[str, np.ndarray, np.ndarray | None, pl.DataType]] = []
    for p, (v, null) in zip(parts, threads.map(part, parts), strict=True):
        if v is not None:
            results.append((p[3], v, null, _dtype(p[0])))
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


def _dtype(kind: str) -> pl.DataType:
    return pl.Int64() if kind in ("n", *_COUNT_KINDS) else pl.Float64()


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
    sums = _Sums(parts, idx, threads)
    specs: dict[tuple[str, str], tuple[np.ndarray, np.ufunc]] = {}
    for kind, c, _, _ in parts:
        if kind in ("min", "max") and c is not None and (kind, c) not in specs:
            fn = np.maximum if kind == "max" else np.minimum
            specs[(kind, c)] = (_extremum_input(idx, kind, c), fn)
    live = [p for p in parts if p[0] not in ("nan", "pinf", "ninf") or sums.has(p[0], str(p[1]))]
    out = {
        p[3]: np.empty(n, dtype=np.int64 if p[0] in ("n", *_COUNT_KINDS) else np.float64)
        for p in live
    }
    nulls = {p[3]: np.zeros(n, dtype=bool) for p in parts if p[0] in ("min", "max")}

    def chunk(a: int, b: int) -> None:
        k = keys[a:b]
        floor = codes[a:b] * idx.stride - 1  # needles never leave the entity
        en = np.arange(a + 1, b + 1) if en_all is None else en_all[a:b]
        st: dict[int, np.ndarray] = {}
        for w in windows:
            nd = np.maximum(k - w, floor)  # non-decreasing: both terms are
            lo = int(np.searchsorted(keys[:b], nd[0], side="right"))
            s = np.searchsorted(keys[lo:b], nd, side="right")
            s += lo
            st[w] = s
        cnt = {w: en - st[w] for w in windows}

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
        for kind, c, w, name in live:
            dst = out[name][a:b]
            if kind == "n":
                dst[:] = cnt[w]
            elif kind in ("min", "max"):
                assert c is not None
                flat, base = tables[(kind, c)]
                _query(flat, hi - base, st[w] - base, en - base, specs[(kind, c)][1], dst)
                np.equal(sums.count("nn", c, st[w], en), 0, out=nulls[name][a:b])
            else:
                assert c is not None
                value = sums.part(kind, c, st[w], en)
                assert value is not None  # absent NaN/inf counts are not in ``live``
                dst[:] = value

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
    for kind, _, _, name in live:
        sr = pl.Series(name, out[name], dtype=_dtype(kind))
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
