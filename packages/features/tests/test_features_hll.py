"""approx_distinct_count (HyperLogLog) against exact distinct_count, and bounded id memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.features import (
    Aggregation,
    Entity,
    EventSource,
    FeatureView,
    InvalidDefinitionError,
    StreamingEngine,
    _hll,
    compute_at,
)

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def view(typ: str = "str", **kw: object) -> FeatureView:
    return FeatureView(
        name="hll",
        source=EventSource("t"),
        entities=[Entity("card")],
        fields={"v": typ},
        features=[
            Aggregation("approx_distinct_count", "v", timedelta(hours=1), name="approx"),
            Aggregation("distinct_count", "v", timedelta(hours=1), name="exact"),
        ],
        **kw,  # type: ignore[arg-type]
    )


@given(
    sizes=st.lists(st.integers(1, 30_000), min_size=1, max_size=8),
    repeats=st.integers(1, 3),
    typ=st.sampled_from(["str", "int"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_estimate_is_within_the_stated_error_of_the_exact_count(
    sizes: list[int], repeats: int, typ: str, seed: int
) -> None:
    # The sketch the engines keep per window, built here per group: estimate vs exact.
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    vals = rng.integers(0, 2**40, len(groups))
    idx = np.repeat(np.arange(len(groups)), repeats)
    frame = pl.DataFrame({"g": groups[idx], "v": vals[idx]})
    if typ == "str":
        frame = frame.with_columns(pl.col("v").cast(pl.String))
    code = _hll.code_expr("v")
    got = (
        frame.group_by("g")
        .agg(
            _hll.z_set(code).alias("z"),
            _hll.n_set(code).alias("n"),
            pl.col("v").n_unique().alias("exact"),
        )
        .select("exact", _hll.estimate(pl.col("z"), pl.col("n")).alias("approx"))
    )
    for exact, approx in got.iter_rows():
        # 4 standard errors (6.5% each at 256 registers) + 2 for collisions at tiny counts.
        bound = 4 * _hll.RELATIVE_STD_ERROR * exact + 2
        assert abs(approx - exact) <= bound, (approx, exact, bound)


def test_batch_windows_use_the_same_sketch() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    vals = rng.integers(0, 1500, n).astype(str)
    secs = np.sort(rng.integers(0, 7200, n))
    events = pl.DataFrame(
        {
            "card": ["a"] * n,
            "event_time": [T0 + timedelta(seconds=int(s)) for s in secs],
            "v": vals,
        }
    )
    at = [T0 + timedelta(minutes=m) for m in (30, 60, 90, 120)]
    q = pl.DataFrame({"card": ["a"] * 4 + ["zz"], "timestamp": [*at, at[0]]})
    out = compute_at(view(), events, q)
    for t, (approx, exact) in zip(at, out.select("approx", "exact").iter_rows(), strict=False):
        in_window = {
            v
            for v, s in zip(vals, secs, strict=True)
            if t - timedelta(hours=1) < T0 + timedelta(seconds=int(s)) <= t
        }
        assert exact == len(in_window)
        assert abs(approx - exact) <= 4 * _hll.RELATIVE_STD_ERROR * exact + 2
    assert out.row(4, named=True)["approx"] == 0  # unknown entity: empty sketch


def test_streaming_sketch_memory_does_not_grow_with_distinct_values() -> None:
    eng = StreamingEngine(view(allowed_lateness=timedelta(minutes=1)), clock=lambda: T0)
    sizes = []
    for k in range(4):
        n = 10_000 * (k + 1)
        eng.ingest(
            pl.DataFrame(
                {
                    "card": ["a"] * n,
                    "event_time": [T0 - timedelta(seconds=30)] * n,
                    "v": [f"{k}-{i}" for i in range(n)],
                }
            )
        )
        sizes.append(eng._arrays["hll:v"].nbytes)
    assert sizes == [sizes[0]] * 4 == [eng._cap * eng.ring * _hll.M] * 4
    got = eng.values_at("a", T0).row(0, named=True)
    assert got["exact"] == 100_000
    assert abs(got["approx"] - 100_000) <= 4 * _hll.RELATIVE_STD_ERROR * 100_000


def test_approx_distinct_with_record_time_is_rejected_at_declaration() -> None:
    with pytest.raises(InvalidDefinitionError, match="approx_distinct_count is not supported"):
        FeatureView(
            name="bad",
            source=EventSource("t"),
            entities=[Entity("card")],
            fields={"v": "str"},
            features=[Aggregation("approx_distinct_count", "v", timedelta(hours=1))],
            record_time="recorded_at",
        )


def test_duplicate_id_memory_is_pruned_to_the_lateness_horizon() -> None:
    lateness = timedelta(minutes=10)
    v = FeatureView(
        name="ids",
        source=EventSource("t"),
        entities=[Entity("card")],
        fields={"v": "str"},
        features=[Aggregation("count", None, timedelta(minutes=10))],
        id_column="event_id",
        allowed_lateness=lateness,
    )
    eng = StreamingEngine(v, clock=lambda: T0 + timedelta(days=30))
    per_min = 100
    peak = 0
    for minute in range(300):
        t = T0 + timedelta(minutes=minute)
        eng.ingest(
            pl.DataFrame(
                {
                    "card": ["a"] * per_min,
                    "event_time": [t] * per_min,
                    "event_id": [f"{minute}-{i}" for i in range(per_min)],
                    "v": ["x"] * per_min,
                }
            )
        )
        peak = max(peak, len(eng._seen))
        wm = eng.watermark
        assert wm is not None
    # Ids within the horizon: 11 minutes x 100; the amortised prune keeps at most ~2x + 1024.
    horizon_ids = (lateness // timedelta(minutes=1) + 1) * per_min
    assert peak <= 2 * horizon_ids + 1024 + per_min
    # Right after a prune every remembered id is at or after the watermark (a redelivery of
    # an older one would be rejected as late anyway).
    eng._seen_pruned_at = 0
    eng._prune_seen()
    wm_us = int(eng.watermark.timestamp() * 1_000_000)  # type: ignore[union-attr]
    assert eng._seen and min(eng._seen.values()) >= wm_us
    assert len(eng._seen) == horizon_ids
    # ... and a redelivered id from before the watermark is a late dead letter, not applied.
    old = pl.DataFrame(
        {
            "card": ["a"],
            "event_time": [T0],
            "event_id": ["0-0"],
            "v": ["x"],
        }
    )
    rep = eng.ingest(old)
    assert rep.applied == 0 and [d.reason for d in rep.dead_letters] == ["late"]
