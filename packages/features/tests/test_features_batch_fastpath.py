"""Oracle test for the batch engine's one-pass sorted-index path (``_fastwin``).

Views made only of count / sum / mean / std / min / max (with or without TTL, no record
time) take that path; this checks it against the naive row-by-row reference for
``compute_at`` and ``backfill`` (ties, nulls, duplicate ids, unknown entities, queries
before the first and after the last event), and that the general rolling plan agrees.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from features_oracle import Ev, assert_rows_match_naive, by_entity, dedupe, naive_values, same
from hypothesis import given
from hypothesis import strategies as st
from test_features_batch_oracle import gen_events, q_frame, queries, to_frame

from keel.features import (
    Aggregation,
    Entity,
    EventSource,
    FeatureView,
    _batch,
    _fastwin,
    backfill,
    compute_at,
)


def fast_view(ttl: bool) -> FeatureView:
    feats = []
    for w in (timedelta(minutes=10), timedelta(hours=1), timedelta(hours=3)):
        feats += [
            Aggregation("count", None, w),
            Aggregation("count", "amount", w),
            Aggregation("sum", "amount", w),
            Aggregation("mean", "amount", w),
            Aggregation("std", "amount", w),
            Aggregation("min", "amount", w),
            Aggregation("max", "amount", w),
        ]
    return FeatureView(
        name="txn_fast",
        source=EventSource("txn.created"),
        entities=[Entity("card")],
        fields={"amount": "float", "merchant": "str"},
        features=feats,
        id_column="event_id",
        ttl=timedelta(minutes=90) if ttl else None,
    )


def _uses_fast_path(view: FeatureView, events: pl.DataFrame) -> bool:
    prepared = _batch._prepared(view, events)
    parts, lasts = _batch._partials(view)
    return _batch._fast_partials(view, prepared, None, parts, lasts) is not None


@given(
    seed=st.integers(0, 2**32 - 1),
    n_events=st.integers(1, 250),
    n_ent=st.integers(1, 6),
    ttl=st.booleans(),
    time_ordered=st.booleans(),
)
def test_fast_path_matches_naive_oracle(
    seed: int, n_events: int, n_ent: int, ttl: bool, time_ordered: bool
) -> None:
    rng = np.random.default_rng(seed)
    view = fast_view(ttl)
    evs = gen_events(rng, n_events, n_ent)
    if time_ordered:  # an event log in time order takes the one-sort index build
        evs.sort(key=lambda e: e.et)
    frame = to_frame(evs)
    assert _uses_fast_path(view, frame)
    qs = queries(rng, 200, n_ent)
    got = compute_at(view, frame, q_frame(qs)).to_dicts()
    assert_rows_match_naive(view, evs, qs, got)

    # Backfill: one row per de-duplicated event, grouped by entity, time-ordered within it,
    # valued at its own time.
    kept = dedupe(evs)
    by_key = by_entity(evs)
    bf = backfill(view, frame)
    assert bf.height == len(kept)
    cards = bf["card"].to_list()
    assert len({c for i, c in enumerate(cards) if i == 0 or cards[i - 1] != c}) == len(set(cards))
    times = bf["event_time"].dt.epoch("us").to_list()
    assert all(times[i - 1] <= times[i] for i in range(1, len(times)) if cards[i - 1] == cards[i])
    want_rows = sorted(
        (((e.key, e.et), naive_values(view, by_key[e.key], e.key, e.et)) for e in kept),
        key=lambda kv: kv[0],
    )
    got_rows = sorted(
        (((r["card"], t), r) for r, t in zip(bf.to_dicts(), times, strict=True)),
        key=lambda kv: kv[0],
    )
    for (wk, want), (gk, row) in zip(want_rows, got_rows, strict=True):
        assert wk == gk
        for name, value in want.items():
            assert same(row[name], value), ("backfill", name, wk, row[name], value)


def test_fast_and_general_plans_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    view = fast_view(ttl=True)
    evs = gen_events(rng, 3000, 40)
    frame = to_frame(evs)
    q = q_frame(queries(rng, 2000, 40))
    fast_bf, fast_q = backfill(view, frame), compute_at(view, frame, q)
    monkeypatch.setattr(_batch, "_fast_partials", lambda *a, **k: None)
    slow_bf, slow_q = backfill(view, frame), compute_at(view, frame, q)
    fast_bf, slow_bf = fast_bf.sort("card", "event_time"), slow_bf.sort("card", "event_time")
    for a, b in ((fast_bf, slow_bf), (fast_q, slow_q)):
        assert a.columns == b.columns and a.height == b.height
        for name in view.feature_names:
            x, y = a[name].cast(pl.Float64).to_numpy(), b[name].cast(pl.Float64).to_numpy()
            assert np.allclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True), name
        assert a.select("card").equals(b.select("card"))


def test_fast_path_covers_nan_and_declines_views_it_does_not_cover() -> None:
    evs = [Ev("a", 0, 0, {"amount": 1.0, "merchant": "m"}, "1")]
    frame = to_frame(evs)
    assert _uses_fast_path(fast_view(False), frame)
    with_nan = frame.with_columns(pl.lit(float("nan")).alias("amount"))
    assert _uses_fast_path(fast_view(False), with_nan)  # NaN/inf are counted, not declined
    last_view = FeatureView(
        name="txn_last",
        source=EventSource("txn.created"),
        entities=[Entity("card")],
        fields={"amount": "float"},
        features=[Aggregation("last", "amount", timedelta(minutes=10))],
    )
    assert not _uses_fast_path(last_view, frame)
    # Declined views still compute through the general plan.
    assert backfill(last_view, frame)["last_amount_10m"].to_list() == [1.0]


def test_time_ordered_index_repairs_shared_hash_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    # With a 2-bit sort prefix nearly every entity shares its prefix with others, so the
    # index must re-sort those runs by the full hash; values must not change.
    rng = np.random.default_rng(11)
    view = fast_view(ttl=True)
    evs = sorted(gen_events(rng, 2000, 30), key=lambda e: e.et)
    frame = to_frame(evs)
    q = q_frame(queries(rng, 500, 30))
    want_bf = backfill(view, frame).sort("card", "event_time")
    want_q = compute_at(view, frame, q)
    monkeypatch.setattr(_fastwin, "_SORT_BITS", 2)
    got_bf = backfill(view, frame)
    cards = got_bf["card"].to_list()
    runs = [c for i, c in enumerate(cards) if i == 0 or cards[i - 1] != c]
    assert len(runs) == len(set(cards))  # each entity's rows are contiguous
    assert got_bf.sort("card", "event_time").equals(want_bf)
    assert compute_at(view, frame, q).equals(want_q)


@given(seed=st.integers(0, 2**32 - 1), chunk=st.sampled_from([1, 2, 3, 7, 64]))
def test_backfill_chunks_give_the_same_values(seed: int, chunk: int) -> None:
    # Backfills are evaluated in row chunks across threads: windows reaching back over chunk
    # boundaries, ties on time split by a boundary and entity changes inside a chunk must
    # not change any value (bit for bit) against one chunk holding every row.
    rng = np.random.default_rng(seed)
    view = fast_view(ttl=True)
    evs = gen_events(rng, 400, 8)
    if seed % 2:
        evs.sort(key=lambda e: e.et)
    frame = to_frame(evs)
    one = backfill(view, frame)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_fastwin, "_CHUNK", chunk)
        assert _uses_fast_path(view, frame)
        assert backfill(view, frame).equals(one)


def test_entity_hash_collisions_fall_back_to_the_general_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(5)
    view = fast_view(ttl=True)
    real = _fastwin._hashes

    def colliding(frame: pl.DataFrame, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        h1, h2 = real(frame, keys)
        return h1 & np.uint64(3 << 62), h2  # 4 distinct first hashes for 20 entities

    for time_ordered in (True, False):
        evs = gen_events(rng, 1500, 20)
        if time_ordered:
            evs.sort(key=lambda e: e.et)
        frame = to_frame(evs)
        q = q_frame(queries(rng, 500, 20))
        want_bf = backfill(view, frame).sort("card", "event_time")
        want_q = compute_at(view, frame, q)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_fastwin, "_hashes", colliding)
            assert not _uses_fast_path(view, frame)
            got_bf = backfill(view, frame).sort("card", "event_time")
            got_q = compute_at(view, frame, q)
        for a, b in ((got_bf, want_bf), (got_q, want_q)):
            assert a.columns == b.columns and a.height == b.height
            for name in view.feature_names:
                x, y = a[name].cast(pl.Float64).to_numpy(), b[name].cast(pl.Float64).to_numpy()
                assert np.allclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True), name


def test_windows_longer_than_the_sparse_tables_allow_fall_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(9)
    view = fast_view(ttl=False)
    frame = to_frame(sorted(gen_events(rng, 800, 3), key=lambda e: e.et))
    want = backfill(view, frame).sort("card", "event_time")
    monkeypatch.setattr(_fastwin, "_MAX_TABLE_LEVELS", 1)  # only 1-row windows fit
    assert not _uses_fast_path(view, frame)
    got = backfill(view, frame).sort("card", "event_time")
    for name in view.feature_names:
        x, y = got[name].cast(pl.Float64).to_numpy(), want[name].cast(pl.Float64).to_numpy()
        assert np.allclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True), name
