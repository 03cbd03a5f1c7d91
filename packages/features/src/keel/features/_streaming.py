"""The streaming engine: per-entity window state updated incrementally, in micro-batches.

State layout (bounded by entities x buckets, never by events)
--------------------------------------------------------------
Time is cut into buckets of ``view.bucket`` (``b``); bucket ``j`` holds events with
``j*b < event_time <= (j+1)*b`` (right-closed, like windows). Each entity owns a ring of
``R = ceil(span/b) + ceil(lateness/b) + 2`` slots (``span`` = largest window or ttl); slot
``j % R`` holds bucket ``j``'s partial aggregates: row count, and per column non-null count,
sum, sum of squares, min, max, the latest (event time, value) pair, the set of distinct
values (distinct-count columns only), a 256-register HyperLogLog sketch (approx-distinct
columns only: fixed size whatever the number of distinct values, see ``_hll``) and the latest
event time. All numeric state lives in NumPy arrays of shape ``(entities, R)`` (sketches:
``(entities, R, 256)`` bytes) updated with vectorised ``ufunc.at`` calls.

Exactness: a window ``w`` evaluated at a bucket boundary ``T = m*b`` is the union of buckets
``m - w/b .. m-1``, so values at bucket boundaries equal the batch engine's exactly (proven by
the parity property tests). Other times are rejected with a clear error.

Late, duplicate and bad events
------------------------------
The watermark is ``max event time seen - allowed_lateness``. Events older than the watermark
are not applied; they are returned as dead letters (reason ``late``) and counted. Events more
than ``max_future`` ahead of the injected clock are dead-lettered (``future``) so one bad
clock cannot advance the watermark. Repeated event ids are dropped (first wins). The
dedupe window is the allowed-lateness horizon: an id is remembered while its event time is
at or after the watermark; older ids are pruned (amortised: whenever the id map has doubled
since the last prune, plus 1024), because a redelivery of such an event would be rejected as
late anyway. So id memory is bounded by the events of one lateness horizon (at most twice
that plus 1024 between prunes), not by the stream's length.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import numpy as np
import polars as pl

from keel.features import _hll
from keel.features._batch import NONFINITE, _partials
from keel.features._definitions import FeatureView, duration_us
from keel.features._errors import InvalidInputError, short_repr, short_text
from keel.features._frames import ET, ID, check_nulls, collect, from_us, prepare, to_us
from keel.features._numerics import STD_LIMIT

_MIN = np.iinfo(np.int64).min
_SNAPSHOT_FORMAT = 2
_KEY_SEP = "|"


def entity_key(values: Sequence[Any]) -> str:
    """The string key of an entity from its join-key values (online store and state key)."""
    if len(values) == 1:
        return str(values[0])
    return _KEY_SEP.join(str(v) for v in values)


@dataclass(frozen=True)
class DeadLetter:
    """An event the engine did not apply, and why (``late``, ``future``, ``invalid``)."""

    reason: str
    detail: str
    event_id: str | None
    entity: str | None
    event_time: datetime | None


@dataclass
class IngestReport:
    """What one micro-batch did."""

    applied: int = 0
    duplicates: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)

    @property
    def late(self) -> int:
        return sum(1 for d in self.dead_letters if d.reason == "late")


def _default_clock() -> datetime:  # pragma: no cover - the real clock seam
    return datetime.now(UTC)


class StreamingEngine:
    """Incremental feature state for one view; same answers as the batch engine at bucket bounds.

    ``clock`` is the injected wall clock (used only to reject events from the far future).
    """

    def __init__(
        self,
        view: FeatureView,
        *,
        clock: Callable[[], datetime] = _default_clock,
        max_future: timedelta = timedelta(hours=1),
        initial_capacity: int = 1024,
    ) -> None:
        self.view = view
        self._clock = clock
        self._max_future_us = duration_us(max_future)
        self._b = view.bucket_us
        self._lateness = duration_us(view.allowed_lateness)
        span = max(duration_us(a.window) for a in view.features)
        if view.ttl is not None:
            span = max(span, duration_us(view.ttl))
        self._span_b = -(-span // self._b)
        self.ring = view.ring_slots
        self._parts, self._lasts = _partials(view)
        types = view.column_types
        self._num_cols = sorted(
            {
                p.column
                for p in self._parts
                if p.column is not None and p.kind not in ("n", "nn", "dc", "hz", "hn")
            }
        )
        # Columns only counted (count over any type, mean's count is covered above).
        self._nn_cols = sorted(
            {p.column for p in self._parts if p.kind == "nn" and p.column is not None}
            - set(self._num_cols)
        )
        self._dc_cols = sorted(
            {p.column for p in self._parts if p.kind == "dc" and p.column is not None}
        )
        self._hll_cols = sorted(
            {p.column for p in self._parts if p.kind == "hz" and p.column is not None}
        )
        self._last_obj = {c for c in self._lasts if types[c] == "str"}
        self._types = types
        self._keys: list[str] = []
        self._index: dict[str, int] = {}
        self._max_et = _MIN
        self._seen: dict[str, int] = {}
        self._seen_pruned_at = 0
        self.counters = {"applied": 0, "duplicates": 0, "late": 0, "future": 0, "invalid": 0}
        self._cap = 0
        self._ent_max = np.empty(0, np.int64)
        self._arrays: dict[str, np.ndarray] = {}
        # The first allocation stays small whatever the per-entity footprint (<= 64 MiB).
        per_entity = max(1, self.ring * view.state_bytes_per_slot)
        self._grow(max(1, min(initial_capacity, (64 << 20) // per_entity)))

    # -- state arrays -------------------------------------------------------------
    def _specs(self) -> dict[str, tuple[Any, Any]]:
        """name -> (dtype, identity value) for every state array."""
        s: dict[str, tuple[Any, Any]] = {
            "bucket": (np.int64, _MIN),
            "n": (np.int64, 0),
            "any_t": (np.int64, _MIN),
        }
        for c in self._num_cols:
            s[f"nn:{c}"] = (np.int64, 0)
            # Per entity, a reference value (its first finite value, fixed for good): slots
            # hold the sum of the finite values' differences from it, so bucket means stay
            # small and merges keep full precision whatever the offset (1e9 + N(0, 1)).
            s[f"ref:{c}"] = (np.float64, np.nan)
            s[f"sum:{c}"] = (np.float64, 0.0)  # finite values
            s[f"dsum:{c}"] = (np.float64, 0.0)  # finite values minus ref (for M2 merges)
            s[f"m2:{c}"] = (np.float64, 0.0)  # squared deviations of the finite values
            if self._types[c] == "float":
                for kind in NONFINITE:
                    s[f"{kind}:{c}"] = (np.int64, 0)
            s[f"min:{c}"] = (np.float64, np.inf)  # non-NaN values only
            s[f"max:{c}"] = (np.float64, -np.inf)
        for c in self._nn_cols:
            s[f"nn:{c}"] = (np.int64, 0)
        for c in self._lasts:
            s[f"last_t:{c}"] = (np.int64, _MIN)
            s[f"last_v:{c}"] = (object, None) if c in self._last_obj else (np.float64, np.nan)
        for c in self._dc_cols:
            s[f"dc:{c}"] = (object, None)
        for c in self._hll_cols:
            s[f"hll:{c}"] = (np.uint8, 0)
        return s

    def _shape(self, name: str, cap: int) -> tuple[int, ...]:
        if name.startswith("ref:"):
            return (cap,)
        return (cap, self.ring, _hll.M) if name.startswith("hll:") else (cap, self.ring)

    def _grow(self, need: int) -> None:
        if need <= self._cap:
            return
        cap = max(need, self._cap * 2)
        grown: dict[str, np.ndarray] = {}  # all or nothing: a failed allocation changes nothing
        for name, (dtype, ident) in self._specs().items():
            arr = np.full(self._shape(name, cap), ident, dtype=dtype)
            if name in self._arrays:
                arr[: self._cap] = self._arrays[name]
            grown[name] = arr
        ent_max = np.concatenate([self._ent_max, np.full(cap - self._cap, _MIN, np.int64)])
        self._arrays.update(grown)
        self._ent_max = ent_max
        self._cap = cap

    @property
    def entity_count(self) -> int:
        return len(self._keys)

    def state_cells(self) -> int:
        """Number of (entity, bucket slot) cells held: entities x ring size, independent of events."""
        return len(self._keys) * self.ring

    @property
    def earliest_query_time(self) -> datetime | None:
        """The earliest bucket boundary :meth:`values_at` can still answer exactly."""
        if self._max_et == _MIN:
            return None
        oldest_intact = (self._max_et - 1) // self._b - self.ring + 1
        return from_us((oldest_intact + self._span_b) * self._b)

    @property
    def watermark(self) -> datetime | None:
        return None if self._max_et == _MIN else from_us(self._max_et - self._lateness)

    # -- ingest --------------------------------------------------------------------
    def ingest(self, frame: pl.DataFrame) -> IngestReport:
        """Apply a micro-batch given in the view's input shape, rows in arrival order.

        Any width of event time is fine. All-or-nothing: everything that can fail (input
        validation, conversion, allocation) happens before the first change of state, so an
        error leaves the engine exactly as it was.
        """
        df = collect(self.view, prepare(self.view, frame))
        df = check_nulls(self.view, df)
        report = IngestReport()
        n = df.height
        if n == 0:
            return report
        keys = self._key_strings(df)
        et = df[ET].to_numpy().astype(np.int64, copy=False)
        now = to_us(self._clock())
        future = et > now + self._max_future_us
        valid = ~future
        if ID in df.columns:
            ids = df[ID].to_list()
            first = df[ID].is_first_distinct().to_numpy()
            seen = self._seen
            dup = ~first | np.fromiter((i in seen for i in ids), dtype=bool, count=n)
            dup &= valid
            valid &= ~dup
            report.duplicates = int(dup.sum())
        else:
            ids = None
        cm = np.maximum.accumulate(np.where(valid, et, _MIN))
        cm = np.maximum(cm, self._max_et)
        late = valid & (et < cm - self._lateness)
        ok = valid & ~late
        for mask, reason in ((future, "future"), (late, "late")):
            for i in np.flatnonzero(mask):
                report.dead_letters.append(
                    DeadLetter(
                        reason,
                        "event time is beyond allowed lateness behind the watermark"
                        if reason == "late"
                        else "event time is too far ahead of the clock",
                        ids[i] if ids is not None else None,
                        keys[i],
                        from_us(int(et[i])),
                    )
                )
        sel = np.flatnonzero(ok)
        sub_keys = [keys[i] for i in sel]
        # Room for new entities first: the only step that may fail (memory) changes nothing.
        new_keys = list(dict.fromkeys(k for k in sub_keys if k not in self._index))
        self._grow(len(self._keys) + len(new_keys))
        # -- commit: from here on only in-memory updates of validated data --------------
        for reason, mask in (("future", future), ("late", late)):
            self.counters[reason] += int(mask.sum())
        self.counters["duplicates"] += report.duplicates
        if ids is not None:  # late events count as handled too: a redelivery is a duplicate
            for i in np.flatnonzero(ok | late):
                self._seen[ids[i]] = int(et[i])
        if not len(sel):
            return report
        self._max_et = max(self._max_et, int(cm[-1]))
        if ids is not None:
            self._prune_seen()
        self._apply(df[sel], sub_keys, et[sel])
        report.applied = len(sel)
        self.counters["applied"] += len(sel)
        report.updated = list(dict.fromkeys(sub_keys))
        return report

    def _key_strings(self, df: pl.DataFrame) -> list[str]:
        ks = self.view.join_keys
        if len(ks) == 1:
            return df[ks[0]].cast(pl.String).to_list()
        return (
            df.select(pl.concat_str([pl.col(k).cast(pl.String) for k in ks], separator=_KEY_SEP))
            .to_series()
            .to_list()
        )

    def _prune_seen(self) -> None:
        if len(self._seen) < 2 * self._seen_pruned_at + 1024:
            return
        wm = self._max_et - self._lateness
        self._seen = {k: t for k, t in self._seen.items() if t >= wm}
        self._seen_pruned_at = len(self._seen)

    def _rows_for(self, keys: list[str]) -> np.ndarray:
        index = self._index
        rows = np.empty(len(keys), dtype=np.int64)
        for i, k in enumerate(keys):
            r = index.get(k)
            if r is None:
                r = len(self._keys)
                index[k] = r
                self._keys.append(k)
            rows[i] = r
        self._grow(len(self._keys))
        return rows

    def _apply(self, df: pl.DataFrame, keys: list[str], et: np.ndarray) -> None:
        A = self._arrays
        rows = self._rows_for(keys)
        j = (et - 1) // self._b
        slots = j % self.ring
        bucket = A["bucket"]
        old = bucket[rows, slots].copy()
        np.maximum.at(bucket, (rows, slots), j)
        new = bucket[rows, slots]
        reset = new != old
        if reset.any():
            rr, ss = rows[reset], slots[reset]
            for name, (_, ident) in self._specs().items():
                if name != "bucket" and not name.startswith("ref:"):
                    A[name][rr, ss] = ident
        keep = j == new
        if not keep.all():  # superseded by a newer bucket in the same slot: outside every window
            rows, slots, et, df = rows[keep], slots[keep], et[keep], df.filter(pl.Series(keep))
        np.add.at(A["n"], (rows, slots), 1)
        np.maximum.at(A["any_t"], (rows, slots), et)
        np.maximum.at(self._ent_max, rows, et)
        for c in self._num_cols:
            self._apply_numeric(c, df[c], rows, slots)
        for c in self._nn_cols:
            nn = df[c].is_not_null().to_numpy()
            np.add.at(A[f"nn:{c}"], (rows[nn], slots[nn]), 1)
        for c in self._lasts:
            self._apply_last(c, df[c], rows, slots, et)
        for c in self._hll_cols:
            codes = df.select(_hll.code_expr(c).alias("code"))["code"]
            nn = codes.is_not_null().to_numpy()
            if nn.any():
                code = codes.filter(pl.Series(nn)).to_numpy()
                rho = (code % 64).astype(np.uint8)
                np.maximum.at(A[f"hll:{c}"], (rows[nn], slots[nn], code // 64), rho)
        for c in self._dc_cols:
            sets = A[f"dc:{c}"]
            for r, s, x in zip(rows.tolist(), slots.tolist(), df[c].to_list(), strict=True):
                if x is None:
                    continue
                cur = sets[r, s]
                if cur is None:
                    sets[r, s] = {x}
                else:
                    cur.add(x)

    def _apply_numeric(self, c: str, col: pl.Series, rows: np.ndarray, slots: np.ndarray) -> None:
        """Add a column's values to their bucket slots: counts, finite sum, M2 (Chan et al.
        merge of the slot's (count, sum, M2) with the batch's per-slot two-pass moments).

        Sums are batch-invariant (added in arrival order). M2 is merged per batch, so a
        std may differ in its last ulp between two different cuts of the same events."""
        A = self._arrays
        v = col.cast(pl.Float64).to_numpy()
        nn = col.is_not_null().to_numpy()
        r, s, x = rows[nn], slots[nn], v[nn]
        np.add.at(A[f"nn:{c}"], (r, s), 1)
        fin = np.isfinite(x)
        if not fin.all():
            for kind, flag in (("nan", np.isnan(x)), ("pinf", x == np.inf), ("ninf", x == -np.inf)):
                if flag.any():
                    np.add.at(A[f"{kind}:{c}"], (r[flag], s[flag]), 1)
            keep = ~np.isnan(x)
            np.minimum.at(A[f"min:{c}"], (r[keep], s[keep]), x[keep])
            np.maximum.at(A[f"max:{c}"], (r[keep], s[keep]), x[keep])
            r, s, x = r[fin], s[fin], x[fin]
        else:
            np.minimum.at(A[f"min:{c}"], (r, s), x)
            np.maximum.at(A[f"max:{c}"], (r, s), x)
        if len(x) == 0:
            return
        ref_all = A[f"ref:{c}"]
        unset = np.isnan(ref_all[r])
        if unset.any():  # an entity's first finite value becomes its reference (0 if huge)
            ents, first = np.unique(r[unset], return_index=True)
            ref = x[unset][first]
            ref_all[ents] = np.where(np.abs(ref) <= STD_LIMIT, ref, 0.0)
        flat = r * self.ring + s
        cells, inv = np.unique(flat, return_inverse=True)
        # Sums are added event by event in arrival order (np.add.at is unbuffered and
        # sequential), never as per-batch partial sums: the bits must not depend on where a
        # micro-batch boundary fell, or a consumer restarted after a crash (different batch
        # cuts, same events) would write values one ulp away from an uninterrupted one.
        np.add.at(A[f"sum:{c}"], (r, s), x)
        x = x - ref_all[r]
        nb = np.bincount(inv).astype(np.float64)
        sb = np.bincount(inv, weights=x)
        dev = x - (sb / nb)[inv]
        m2b = np.bincount(inv, weights=dev * dev)
        cr, cs = cells // self.ring, cells % self.ring
        na = self._finite_count(c, cr, cs).astype(np.float64) - nb  # before this batch
        sa, m2a = A[f"dsum:{c}"][cr, cs], A[f"m2:{c}"][cr, cs]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            delta = sb / nb - sa / na
            cross = np.where(na > 0, delta * delta * na * nb / (na + nb), 0.0)
        np.add.at(A[f"dsum:{c}"], (r, s), x)
        A[f"m2:{c}"][cr, cs] = m2a + m2b + cross

    def _finite_count(self, c: str, r: Any, s: Any) -> np.ndarray:
        """Finite non-null values per cell (non-null minus NaN/inf counts)."""
        A = self._arrays
        out: np.ndarray = A[f"nn:{c}"][r, s]
        if self._types[c] == "float":
            out = out - sum(A[f"{k}:{c}"][r, s] for k in NONFINITE)
        return out

    def _apply_last(
        self, c: str, col: pl.Series, rows: np.ndarray, slots: np.ndarray, et: np.ndarray
    ) -> None:
        A = self._arrays
        nn = col.is_not_null().to_numpy()
        if not nn.any():
            return
        is_obj = c in self._last_obj
        vals = col.filter(pl.Series(nn))
        v = np.asarray(vals.to_list(), dtype=object) if is_obj else vals.cast(pl.Float64).to_numpy()
        r, s, t = rows[nn], slots[nn], et[nn]
        flat = r * self.ring + s
        sort_v = np.asarray(vals.cast(pl.String).to_list()) if is_obj else v
        order = np.lexsort((sort_v, t, flat))
        f_sorted = flat[order]
        last_of_group = np.ones(len(order), dtype=bool)
        last_of_group[:-1] = f_sorted[1:] != f_sorted[:-1]
        pick = order[last_of_group]
        r, s, t, v = r[pick], s[pick], t[pick], v[pick]
        lt, lv = A[f"last_t:{c}"], A[f"last_v:{c}"]
        cur_t = lt[r, s]
        better = t > cur_t
        tie = np.flatnonzero(t == cur_t)
        for i in tie:  # same instant already stored: the larger value wins (order-independent)
            if v[i] > lv[r[i], s[i]]:
                better[i] = True
        lt[r[better], s[better]] = t[better]
        lv[r[better], s[better]] = v[better]

    # -- read ----------------------------------------------------------------------
    def values_at(self, keys: Sequence[str] | str, at: datetime) -> pl.DataFrame:
        """Feature values for ``keys`` at ``at``, which must be a multiple of the view's bucket.

        Unknown keys get the values of an entity with no events. Raises InvalidInputError for
        an unaligned ``at`` or one older than the retained state covers.
        """
        if isinstance(keys, str):
            keys = [keys]
        t = to_us(at)
        if t % self._b:
            raise InvalidInputError(
                f"streaming values are exact at multiples of the bucket ({self.view.bucket}); "
                f"{at.isoformat()} is not one. Use the batch engine for arbitrary times."
            )
        m = np.full(len(keys), t // self._b, dtype=np.int64)
        return self._read(list(keys), m)

    def seen_ids(self, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` this engine has already handled (applied, or refused as
        late) and still remembers: its dedupe memory, bounded by the allowed lateness."""
        return {i for i in ids if i in self._seen}

    def current(self, keys: Sequence[str]) -> tuple[pl.DataFrame, list[datetime]]:
        """Values for ``keys`` at the end of the bucket holding each entity's latest event.

        Returns the values and each entity's latest event time (the online store's write
        condition and freshness reference). Works for any batch width: an entity's own ring
        always holds every bucket of the window ending at its latest event (slots are only
        ever overwritten by that entity's newer buckets), so no retention check applies.
        Raises InvalidInputError, before reading anything, for a key the engine never saw.
        """
        unknown = [k for k in keys if k not in self._index]
        if unknown:
            raise InvalidInputError(
                f"current(): {len(unknown)} entities were never ingested, e.g. {short_repr(unknown[0])}"
            )
        rows = np.asarray([self._index[k] for k in keys], dtype=np.int64)
        last = self._ent_max[rows]
        m = (last - 1) // self._b + 1
        return self._read(list(keys), m, check_retention=False), [from_us(int(x)) for x in last]

    def _read(self, keys: list[str], m: np.ndarray, check_retention: bool = True) -> pl.DataFrame:
        A = self._arrays
        known = np.asarray([k in self._index for k in keys], dtype=bool)
        rows = np.asarray([self._index.get(k, 0) for k in keys], dtype=np.int64)
        if check_retention and self._max_et != _MIN:
            oldest_intact = (self._max_et - 1) // self._b - self.ring + 1
            too_old = known & (m - self._span_b < oldest_intact)
            if too_old.any():
                raise InvalidInputError(
                    "requested time is older than the streaming state retains "
                    f"(ring of {self.ring} buckets behind the latest event); use the batch engine"
                )
        B = A["bucket"][rows]
        mm = m[:, None]
        cols: dict[str, Any] = {}
        in_w: dict[int, np.ndarray] = {}

        def window_mask(w_us: int) -> np.ndarray:
            if w_us not in in_w:
                wb = w_us // self._b
                in_w[w_us] = (mm - wb <= B) & (mm - 1 >= B) & known[:, None]
            return in_w[w_us]

        def masked_sum(name: str, mask: np.ndarray) -> np.ndarray:
            return np.where(mask, A[name][rows], 0).sum(axis=1)

        stale = None
        if self.view.ttl is not None:
            upto = (mm - 1 >= B) & known[:, None]
            any_t = np.where(upto, A["any_t"][rows], _MIN).max(axis=1)
            t_us = m * self._b
            stale = (any_t == _MIN) | (t_us - any_t > duration_us(self.view.ttl))
        for agg in self.view.features:
            w = duration_us(agg.window)
            mask = window_mask(w)
            c = agg.column
            fn = agg.function
            vals: list[Any]
            if fn == "count":
                arr = masked_sum("n" if c is None else f"nn:{c}", mask)
                vals = arr.astype(np.int64).tolist()
            elif fn in ("sum", "mean", "std"):
                assert c is not None
                vals = self._moments(fn, c, rows, mask, masked_sum)
            elif fn in ("min", "max"):
                assert c is not None
                ident = np.inf if fn == "min" else -np.inf
                red = np.where(mask, A[f"{fn}:{c}"][rows], ident)
                ext = red.min(axis=1) if fn == "min" else red.max(axis=1)
                nn = masked_sum(f"nn:{c}", mask)
                nan = masked_sum(f"nan:{c}", mask) if f"nan:{c}" in A else np.zeros_like(nn)
                vals = [
                    None if k == 0 else (math.nan if bad else float(x))
                    for x, k, bad in zip(ext.tolist(), nn.tolist(), nan.tolist(), strict=True)
                ]
            elif fn == "distinct_count":
                sets = A[f"dc:{c}"][rows]
                vals = []
                for i in range(len(keys)):
                    u: set[Any] = set()
                    for sset in sets[i][mask[i]]:
                        if sset:
                            u |= sset
                    vals.append(len(u))
            elif fn == "approx_distinct_count":
                regs = np.where(mask[:, :, None], A[f"hll:{c}"][rows], 0).max(axis=1)
                is_set = regs > 0
                z = np.where(is_set, np.ldexp(1.0, -regs.astype(np.int64)), 0.0).sum(axis=1)
                vals = (
                    pl.DataFrame({"z": z, "n": is_set.sum(axis=1).astype(np.int64)})
                    .select(_hll.estimate(pl.col("z"), pl.col("n")))
                    .to_series()
                    .to_list()
                )
            else:  # last
                assert c is not None
                lt = np.where(mask, A[f"last_t:{c}"][rows], _MIN)
                arg = lt.argmax(axis=1)
                best = lt[np.arange(len(keys)), arg]
                lv = A[f"last_v:{c}"][rows, arg]
                vals = [
                    None if b == _MIN else self._cast_last(c, x)
                    for b, x in zip(best.tolist(), lv.tolist(), strict=True)
                ]
            if stale is not None:
                vals = [None if st else x for x, st in zip(vals, stale.tolist(), strict=True)]
            cols[agg.name] = vals
        from keel.features._definitions import FIELD_TYPES

        schema: dict[str, pl.DataType] = {"entity": pl.String()}
        for agg in self.view.features:
            if agg.function in ("count", "distinct_count", "approx_distinct_count"):
                schema[agg.name] = pl.Int64()
            elif agg.function == "last":
                assert agg.column is not None
                schema[agg.name] = FIELD_TYPES[self._types[agg.column]]
            else:
                schema[agg.name] = pl.Float64()
        return pl.DataFrame({"entity": keys, **cols}, schema=schema)

    def _moments(
        self,
        fn: str,
        c: str,
        rows: np.ndarray,
        mask: np.ndarray,
        masked_sum: Callable[[str, np.ndarray], np.ndarray],
    ) -> list[Any]:
        """sum / mean / std over the window's slots, with the engines' NaN / inf rules."""
        A = self._arrays
        nn = masked_sum(f"nn:{c}", mask)
        zeros = np.zeros_like(nn)
        nan, pinf, ninf = (
            masked_sum(f"{k}:{c}", mask) if f"{k}:{c}" in A else zeros for k in NONFINITE
        )
        nf_slot = np.where(mask, self._finite_count(c, rows, slice(None)), 0)
        nf = nf_slot.sum(axis=1).astype(np.float64)
        total = masked_sum(f"sum:{c}", mask)
        if fn == "std":
            total_d = masked_sum(f"dsum:{c}", mask)
            s_slot = np.where(mask, A[f"dsum:{c}"][rows], 0.0)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                mean = total_d / nf
                dev = np.where(nf_slot > 0, s_slot / nf_slot - mean[:, None], 0.0)
                m2 = masked_sum(f"m2:{c}", mask) + (nf_slot * dev * dev).sum(axis=1)
                var = m2 / (nn - 1)
            return [
                None if k < 2 else (math.nan if a or b or d else math.sqrt(max(0.0, v)))
                for v, k, a, b, d in zip(
                    var.tolist(),
                    nn.tolist(),
                    nan.tolist(),
                    pinf.tolist(),
                    ninf.tolist(),
                    strict=True,
                )
            ]
        out: list[Any] = []
        for t, k, a, b, d in zip(
            total.tolist(), nn.tolist(), nan.tolist(), pinf.tolist(), ninf.tolist(), strict=True
        ):
            if fn == "mean" and k == 0:
                out.append(None)
                continue
            if a or (b and d):
                v = math.nan
            elif b or d:
                v = math.inf if b else -math.inf
            else:
                v = t / k if fn == "mean" else t
            out.append(v)
        return out

    def _cast_last(self, c: str, x: Any) -> Any:
        typ = self._types[c]
        if typ == "int":
            return int(x)
        if typ == "bool":
            return bool(x)
        return x

    # -- snapshots -----------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Serialise the whole state (no pickle): msgpack of metadata + raw array bytes."""
        n = len(self._keys)
        arrays: dict[str, Any] = {}
        objects: dict[str, Any] = {}
        for name, arr in self._arrays.items():
            part = arr[:n]
            if part.dtype == object:
                if name.startswith("dc:"):
                    objects[name] = [
                        [int(i), sorted(v, key=str)]
                        for i, v in enumerate(part.ravel().tolist())
                        if v
                    ]
                else:
                    objects[name] = [
                        [int(i), v] for i, v in enumerate(part.ravel().tolist()) if v is not None
                    ]
            else:
                buf = io.BytesIO()
                np.save(buf, np.ascontiguousarray(part), allow_pickle=False)
                arrays[name] = buf.getvalue()
        blob = {
            "format": _SNAPSHOT_FORMAT,
            "view": self.view.name,
            "version": self.view.version,
            "keys": self._keys,
            "max_et": self._max_et,
            "seen": self._seen,
            "ent_max": self._ent_max[:n].tolist(),
            "counters": self.counters,
            # HyperLogLog registers depend on Polars' hash: only comparable within a version.
            "hll_hash": f"polars-{pl.__version__}" if self._hll_cols else None,
            "arrays": arrays,
            "objects": objects,
        }
        return msgspec.msgpack.encode(blob)

    @classmethod
    def restore(cls, view: FeatureView, data: bytes, **kwargs: Any) -> StreamingEngine:
        """Rebuild an engine from :meth:`snapshot` bytes; the view version must match."""
        try:
            blob = msgspec.msgpack.decode(data)
        except msgspec.DecodeError as exc:
            raise InvalidInputError(f"state snapshot is not readable: {exc}") from exc
        if blob.get("format") != _SNAPSHOT_FORMAT:
            raise InvalidInputError(
                f"state snapshot has format {short_repr(blob.get('format'))}, this engine reads "
                f"format {_SNAPSHOT_FORMAT} (variance state changed to count/sum/M2); rebuild "
                "the state (backfill) instead"
            )
        if blob.get("version") != view.version:
            raise InvalidInputError(
                f"state snapshot was taken for view {blob.get('view')!r} version {blob.get('version')}, "
                f"not {view.name!r} version {view.version}; rebuild the state (backfill) instead"
            )
        if blob.get("hll_hash") not in (None, f"polars-{pl.__version__}"):
            raise InvalidInputError(
                f"state snapshot holds HyperLogLog sketches hashed by {blob['hll_hash']}, "
                f"not polars-{pl.__version__}; rebuild the state (backfill) instead"
            )
        keys = list(blob["keys"])
        eng = cls(view, initial_capacity=max(1, len(keys)), **kwargs)
        eng._keys = keys
        eng._index = {k: i for i, k in enumerate(keys)}
        eng._max_et = int(blob["max_et"])
        eng._seen = {str(k): int(v) for k, v in blob["seen"].items()}
        eng.counters.update(blob["counters"])
        n = len(keys)
        eng._ent_max[:n] = np.asarray(blob["ent_max"], dtype=np.int64)
        for name, raw in blob["arrays"].items():
            eng._arrays[name][:n] = np.load(io.BytesIO(raw), allow_pickle=False)
        for name, items in blob["objects"].items():
            flat = eng._arrays[name].reshape(-1)
            for i, v in items:
                flat[i] = set(v) if name.startswith("dc:") else v
        return eng


def events_frame_schema(view: FeatureView) -> dict[str, pl.DataType]:
    """The input schema a view's events turn into (used by the events adapter)."""
    from keel.features._definitions import FIELD_TYPES

    schema: dict[str, pl.DataType] = {k: pl.String() for k in view.join_keys}
    schema[view.event_time] = pl.Datetime("us", "UTC")
    if view.record_time is not None:
        schema[view.record_time] = pl.Datetime("us", "UTC")
    if view.id_column is not None:
        schema[view.id_column] = pl.String()
    for c, t in view.fields.items():
        schema[c] = FIELD_TYPES[t]
    return schema


def _type_ok(typ: str, value: Any) -> bool:
    if value is None:
        return True
    if typ == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if typ == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if typ == "str":
        return isinstance(value, str)
    return isinstance(value, bool)


def events_to_frame(
    view: FeatureView, events: Iterable[Any]
) -> tuple[pl.DataFrame, list[DeadLetter]]:
    """Turn keel.events ``Event`` objects into the view's input frame.

    Each event becomes a row of its JSON payload's declared fields; ``event_time``,
    ``publish_time`` (as the record time, when the view has one) and ``id`` (as the id
    column) come from the envelope; a join key absent from the payload comes from
    ``event.key``. Events with a naive time, undecodable payload, missing field or wrong
    type are returned as ``invalid`` dead letters instead of rows.
    """
    schema = events_frame_schema(view)
    cols: dict[str, list[Any]] = {c: [] for c in schema}
    dead: list[DeadLetter] = []
    fields = list(view.fields.items())
    keys = view.join_keys
    for ev in events:
        et = ev.event_time
        try:
            payload = ev.json()
            if not isinstance(payload, dict):
                raise ValueError("payload is not a JSON object")
            if et.tzinfo is None:
                raise ValueError("event_time is timezone-naive")
            problems = [f"missing field {c!r}" for c, _ in fields if c not in payload]
            problems += [
                f"field {c!r} should be {t}, got {type(payload[c]).__name__}"
                for c, t in fields
                if c in payload and not _type_ok(t, payload[c])
            ]
            if problems:
                raise ValueError("; ".join(problems))
        except Exception as exc:  # translate anything the payload throws into a dead letter
            dead.append(
                DeadLetter(
                    "invalid",
                    short_text(str(exc)),
                    ev.id,
                    ev.key,
                    et if getattr(et, "tzinfo", None) else None,
                )
            )
            continue
        for k in keys:
            v = payload.get(k, ev.key)
            cols[k].append(None if v is None else str(v))
        cols[view.event_time].append(et)
        if view.record_time is not None:
            cols[view.record_time].append(ev.publish_time)
        if view.id_column is not None:
            cols[view.id_column].append(ev.id)
        for c, _ in fields:
            cols[c].append(payload[c])
    return pl.DataFrame(cols, schema=schema), dead
