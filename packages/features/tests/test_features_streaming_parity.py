"""Parity: the streaming engine's value at T equals the batch engine's value at T.

For arbitrary event sequences (out-of-order arrival, duplicates, late events within and
beyond the allowed lateness, ties on event time, nulls) and every aggregation type, at every
bucket boundary the streaming state still covers. Events beyond the lateness must be
dead-lettered exactly as a sequential watermark simulation says, and the batch engine is run
on the events the stream accepted.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from keel.features import Aggregation, Entity, EventSource, FeatureView, StreamingEngine, compute_at

BASE = datetime(2024, 3, 1, tzinfo=UTC)
BASE_US = int(BASE.timestamp()) * 1_000_000
MIN = 60_000_000
NOW = BASE + timedelta(days=1)

WINDOWS = [timedelta(minutes=10), timedelta(minutes=30), timedelta(hours=1)]


def make_view(ttl: bool) -> FeatureView:
    feats = [Aggregation("count", None, w) for w in WINDOWS]
    for w in WINDOWS:
        for fn in ("count", "sum", "mean", "std", "min", "max", "last"):
            feats.append(Aggregation(fn, "amount", w))
        feats.append(Aggregation("last", "merchant", w))
        feats.append(Aggregation("distinct_count", "merchant", w))
        feats.append(Aggregation("approx_distinct_count", "merchant", w))
        feats.append(Aggregation("approx_distinct_count", "qty", w))
        feats.append(Aggregation("last", "qty", w))
    return FeatureView(
        name="parity",
        source=EventSource("txn.created"),
        entities=[Entity("card")],
        fields={"amount": "float", "merchant": "str", "qty": "int"},
        features=feats,
        id_column="event_id",
        ttl=timedelta(minutes=45) if ttl else None,
        allowed_lateness=timedelta(minutes=20),
    )


event_st = st.tuples(
    st.sampled_from(["a", "b", "c"]),
    # minutes, with sub-minute offsets hitting exact bucket boundaries and just after them
    st.integers(0, 150),
    st.sampled_from([0, 0, 1, MIN // 2, MIN - 1]),
    st.one_of(st.none(), st.integers(-50, 50).map(float)),
    st.one_of(st.none(), st.sampled_from(["m1", "m2", "m3"])),
    st.one_of(st.none(), st.integers(-3, 3)),
    st.integers(0, 40),  # arrival jitter in minutes: drives out-of-order and late arrivals
)


def close(a: object, b: object) -> bool:
    """Equal, floats to 1e-9 relative (the engines sum in different orders); NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def diff(w: dict, g: dict) -> dict:
    return {k: (w[k], g[k]) for k in w if not close(w[k], g[k])}


def frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "card": pl.String,
            "event_time": pl.Datetime("us", "UTC"),
            "event_id": pl.String,
            "amount": pl.Float64,
            "merchant": pl.String,
            "qty": pl.Int64,
        },
    )


@given(
    evs=st.lists(event_st, min_size=1, max_size=150),
    dup_every=st.integers(2, 9),
    batch=st.integers(1, 50),
    ttl=st.booleans(),
)
def test_streaming_equals_batch_at_every_bucket_boundary(
    evs: list[tuple], dup_every: int, batch: int, ttl: bool
) -> None:
    view = make_view(ttl)
    rows = []
    for i, (key, minute, off, amount, merchant, qty, jitter) in enumerate(evs):
        et = BASE + timedelta(microseconds=minute * MIN + off)
        rows.append(
            (
                {
                    "card": key,
                    "event_time": et,
                    "event_id": f"id{i}",
                    "amount": amount,
                    "merchant": merchant,
                    "qty": qty,
                },
                minute + jitter,
            )
        )
    arrival = [r for r, _ in sorted(rows, key=lambda x: x[1])]  # stable: ties keep generation order
    # Redeliveries: every dup_every-th event is delivered again later.
    arrival = arrival + arrival[::dup_every]

    # Sequential reference for which events are applied (watermark = max seen - lateness).
    lateness = 20 * MIN
    max_seen = None
    seen: set[str] = set()
    accepted, late_ids = [], []
    for r in arrival:
        et_us = int(r["event_time"].timestamp() * 1_000_000)
        if r["event_id"] in seen:
            continue
        if max_seen is not None and et_us < max(max_seen, et_us) - lateness:
            late_ids.append(r["event_id"])
            seen.add(r["event_id"])  # dead-lettered once; a redelivery is a duplicate
            continue
        seen.add(r["event_id"])
        max_seen = et_us if max_seen is None else max(max_seen, et_us)
        accepted.append(r)

    eng = StreamingEngine(view, clock=lambda: NOW)
    got_late: list[str] = []
    dups = 0
    for i in range(0, len(arrival), batch):
        rep = eng.ingest(frame(arrival[i : i + batch]))
        got_late += [str(d.event_id) for d in rep.dead_letters if d.reason == "late"]
        dups += rep.duplicates
        assert all(d.reason == "late" for d in rep.dead_letters)
    assert sorted(got_late) == sorted(late_ids)
    assert eng.counters["applied"] == len(accepted)
    if not accepted:
        return

    b = view.bucket
    assert b is not None
    first = eng.earliest_query_time
    assert first is not None and max_seen is not None
    n_times = (max_seen - int(first.timestamp() * 1_000_000)) // (
        b // timedelta(microseconds=1)
    ) + 3
    times = [first + k * b for k in range(n_times)]
    keys = ["a", "b", "c", "zz"]
    queries = pl.DataFrame(
        {"card": [k for _ in times for k in keys], "timestamp": [t for t in times for _ in keys]},
        schema={"card": pl.String, "timestamp": pl.Datetime("us", "UTC")},
    )
    want = compute_at(view, frame(accepted), queries).drop("card", "timestamp").to_dicts()
    got = []
    for t in times:
        got += eng.values_at(keys, t).drop("entity").to_dicts()
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        assert not diff(w, g), (queries.row(i), diff(w, g))

    # Snapshot round trip gives the same state.
    again = StreamingEngine.restore(view, eng.snapshot(), clock=lambda: NOW)
    assert again.values_at(keys, times[-1]).to_dicts() == eng.values_at(keys, times[-1]).to_dicts()


def make_record_time_view(ttl: bool) -> FeatureView:
    v = make_view(ttl)
    feats = [a for a in v.features if a.function != "approx_distinct_count"]
    return FeatureView(
        name="parity_rt",
        source=v.source,
        entities=list(v.entities),
        fields=dict(v.fields),
        features=feats,
        id_column="event_id",
        record_time="recorded_at",
        ttl=v.ttl,
        allowed_lateness=v.allowed_lateness,
    )


@given(
    evs=st.lists(event_st, min_size=1, max_size=100),
    dup_every=st.integers(2, 9),
    ttl=st.booleans(),
)
def test_streaming_read_at_T_equals_batch_with_arrival_as_record_time(
    evs: list[tuple], dup_every: int, ttl: bool
) -> None:
    """The record-time mapping: streaming applies events on arrival, so a streaming read at
    ``T`` taken once the engine has ingested exactly the events that arrived by ``T`` equals
    the batch value at ``T`` for a view whose record time is the arrival time (late arrivals
    for windows ending at ``T`` are invisible to both until they arrive)."""
    view = make_record_time_view(ttl)
    arrivals = []
    for i, (key, minute, off, amount, merchant, qty, jitter) in enumerate(evs):
        et = BASE + timedelta(microseconds=minute * MIN + off)
        row = {
            "card": key,
            "event_time": et,
            "recorded_at": et + timedelta(minutes=jitter),
            "event_id": f"id{i}",
            "amount": amount,
            "merchant": merchant,
            "qty": qty,
        }
        arrivals.append(row)
        if i % dup_every == 0:  # a redelivery, arriving later with its own arrival time
            arrivals.append({**row, "recorded_at": row["recorded_at"] + timedelta(minutes=7)})
    arrivals.sort(key=lambda r: r["recorded_at"])  # stable

    def rt_frame(rows: list[dict]) -> pl.DataFrame:
        return pl.DataFrame(
            rows,
            schema={
                "card": pl.String,
                "event_time": pl.Datetime("us", "UTC"),
                "recorded_at": pl.Datetime("us", "UTC"),
                "event_id": pl.String,
                "amount": pl.Float64,
                "merchant": pl.String,
                "qty": pl.Int64,
            },
        )

    b = view.bucket
    assert b is not None
    t = BASE
    while t < arrivals[0]["recorded_at"]:
        t += b
    eng = StreamingEngine(view, clock=lambda: NOW)
    keys = ["a", "b", "c", "zz"]
    read_times: list[datetime] = []
    got: list[dict] = []
    dead: set[str] = set()
    i = 0
    while i < len(arrivals) or not read_times:
        j = i
        while j < len(arrivals) and arrivals[j]["recorded_at"] <= t:
            j += 1
        if j > i:
            rep = eng.ingest(rt_frame(arrivals[i:j]))
            dead |= {str(d.event_id) for d in rep.dead_letters}
            i = j
        if eng.watermark is not None:
            read_times.append(t)
            got += eng.values_at(keys, t).drop("entity").to_dicts()
        t += b
    accepted = [r for r in arrivals if r["event_id"] not in dead]
    queries = pl.DataFrame(
        {
            "card": [k for _ in read_times for k in keys],
            "timestamp": [x for x in read_times for _ in keys],
        },
        schema={"card": pl.String, "timestamp": pl.Datetime("us", "UTC")},
    )
    want = compute_at(view, rt_frame(accepted), queries).drop("card", "timestamp").to_dicts()
    for n, (w, g) in enumerate(zip(want, got, strict=True)):
        assert not diff(w, g), (queries.row(n), diff(w, g))


@given(
    evs=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.integers(0, 90),  # minute
            st.floats(-4.0, 4.0, allow_nan=False),  # around a large offset: rounding matters
        ),
        min_size=2,
        max_size=120,
    ),
    cuts=st.lists(st.integers(1, 119), max_size=12),
)
def test_streaming_bits_do_not_depend_on_batch_cuts(
    evs: list[tuple[str, int, float]], cuts: list[int]
) -> None:
    """A consumer restarted after a crash cuts the same events into other micro-batches:
    every value (sum, mean, min, last, counts, ...) must come out in the same bits, not one
    ulp away. Not std: its M2 is a Chan merge per micro-batch (two-pass within the batch,
    whose precision a per-event Welford update loses at large offsets), so a std may differ
    in its last ulp between two cuts."""
    view = make_view(ttl=False)
    rows = [
        {
            "card": key,
            "event_time": BASE + timedelta(minutes=minute, microseconds=i),
            "event_id": f"id{i}",
            "amount": 1e9 + 1e3 * minute + x,
            "merchant": "m1",
            "qty": 1,
        }
        for i, (key, minute, x) in enumerate(evs)
    ]
    whole = StreamingEngine(view, clock=lambda: NOW)
    whole.ingest(frame(rows))
    cut = StreamingEngine(view, clock=lambda: NOW)
    bounds = sorted({0, len(rows), *(c for c in cuts if c < len(rows))})
    for lo, hi in itertools.pairwise(bounds):
        cut.ingest(frame(rows[lo:hi]))
    assert whole.counters == cut.counters
    keys = ["a", "b", "c"]
    first = whole.earliest_query_time
    assert first is not None
    for k in range(11):
        t = first + k * timedelta(minutes=10)  # the bucket
        a = whole.values_at(keys, t).to_dicts()
        b = cut.values_at(keys, t).to_dicts()
        bits = [
            {n: v.hex() if isinstance(v, float) else v for n, v in r.items() if "std" not in n}
            for r in (*a, *b)
        ]
        assert bits[: len(a)] == bits[len(a) :], t
