"""Oracle test: the Polars batch engine against a naive row-by-row reference.

Each Hypothesis example generates a random event log (ties, nulls, duplicate ids,
late-recorded events, unknown entities) and a few hundred queries; across the fast profile
that is well over 10k (entity, T) cases, all of which must match exactly (floats to 1e-9),
plus a leakage probe: events placed just after T (by event or by record time) never change
the value at T.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
from features_oracle import Ev, assert_rows_match_naive, same
from hypothesis import given
from hypothesis import strategies as st

from keel.features import Aggregation, Entity, EventSource, FeatureView, compute_at, training_set

BASE = datetime(2024, 1, 1, tzinfo=UTC)
BASE_US = int(BASE.timestamp()) * 1_000_000
MIN = 60_000_000
CASES = {"n": 0}


def make_view(record_time: bool, ttl: bool) -> FeatureView:
    windows = [timedelta(minutes=10), timedelta(hours=1), timedelta(hours=3)]
    feats = [Aggregation("count", None, w) for w in windows]
    for w in windows[:2]:
        feats += [
            Aggregation("count", "amount", w),
            Aggregation("sum", "amount", w),
            Aggregation("mean", "amount", w),
            Aggregation("std", "amount", w),
            Aggregation("min", "amount", w),
            Aggregation("max", "amount", w),
            Aggregation("last", "amount", w),
            Aggregation("last", "merchant", w),
            Aggregation("distinct_count", "merchant", w),
        ]
        if not record_time:  # sketches are not merged point-in-time with late records
            feats.append(Aggregation("approx_distinct_count", "merchant", w))
    return FeatureView(
        name="txn",
        source=EventSource("txn.created"),
        entities=[Entity("card")],
        fields={"amount": "float", "merchant": "str"},
        features=feats,
        record_time="recorded_at" if record_time else None,
        id_column="event_id",
        ttl=timedelta(minutes=90) if ttl else None,
    )


def gen_events(rng: np.random.Generator, n: int, n_ent: int) -> list[Ev]:
    evs: list[Ev] = []
    for i in range(n):
        if evs and rng.random() < 0.08:  # redelivered duplicate: same id, same content
            evs.append(evs[int(rng.integers(len(evs)))])
            continue
        et = BASE_US + int(rng.integers(0, 300)) * MIN + int(rng.choice([0, 0, 0, 1, 59_999_999]))
        lag = 0 if rng.random() < 0.6 else int(rng.integers(-5, 200)) * MIN
        amount = None if rng.random() < 0.1 else float(rng.integers(-5, 20))
        merchant = None if rng.random() < 0.1 else str(rng.choice(["m1", "m2", "m3", "m4"]))
        evs.append(
            Ev(
                f"e{int(rng.integers(n_ent))}",
                et,
                et + lag,
                {"amount": amount, "merchant": merchant},
                f"id{i}",
            )
        )
    return evs


def to_frame(evs: list[Ev]) -> pl.DataFrame:
    def ts(us: list[int | None]) -> pl.Series:
        return pl.from_epoch(pl.Series(us, dtype=pl.Int64), time_unit="us").dt.replace_time_zone(
            "UTC"
        )

    return pl.DataFrame(
        {
            "card": pl.Series([e.key for e in evs], dtype=pl.String),
            "event_time": ts([e.et for e in evs]),
            "recorded_at": ts([e.rt for e in evs]),
            "event_id": pl.Series([e.id for e in evs], dtype=pl.String),
            "amount": pl.Series([e.values["amount"] for e in evs], dtype=pl.Float64),
            "merchant": pl.Series([e.values["merchant"] for e in evs], dtype=pl.String),
        }
    )


def queries(rng: np.random.Generator, n: int, n_ent: int) -> list[tuple[str, int]]:
    out = []
    for _ in range(n):
        key = "zz" if rng.random() < 0.05 else f"e{int(rng.integers(n_ent))}"
        t = BASE_US + int(rng.integers(-10, 320)) * MIN + int(rng.choice([0, 0, 1, -1]))
        out.append((key, t))
    return out


def q_frame(qs: list[tuple[str, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "card": [k for k, _ in qs],
            "timestamp": pl.from_epoch(
                pl.Series([t for _, t in qs], dtype=pl.Int64), time_unit="us"
            ).dt.replace_time_zone("UTC"),
        }
    )


@given(
    seed=st.integers(0, 2**32 - 1),
    n_events=st.integers(0, 250),
    n_ent=st.integers(1, 6),
    record_time=st.booleans(),
    ttl=st.booleans(),
)
def test_batch_engine_matches_naive_oracle_with_no_leakage(
    seed: int, n_events: int, n_ent: int, record_time: bool, ttl: bool
) -> None:
    rng = np.random.default_rng(seed)
    view = make_view(record_time, ttl)
    evs = gen_events(rng, n_events, n_ent)
    qs = queries(rng, 250, n_ent)
    got = compute_at(view, to_frame(evs), q_frame(qs)).to_dicts()
    assert_rows_match_naive(view, evs, qs, got)
    CASES["n"] += len(qs)

    # Leakage probe: events after T (by event time, or recorded after T) never change T's value.
    # One probe query per entity, so a probe event is "after T" for every probe query.
    probe_idx = list({k: i for i, (k, _) in enumerate(qs)}.values())
    probe_q = [qs[i] for i in probe_idx]
    extra: list[Ev] = []
    for j, (key, t) in enumerate(probe_q):
        extra.append(Ev(key, t + 1, t + 1, {"amount": 1000.0, "merchant": "future"}, f"fut{j}"))
        if record_time:
            extra.append(
                Ev(key, t - MIN, t + 1, {"amount": -1000.0, "merchant": "late"}, f"late{j}")
            )
    probed = compute_at(view, to_frame(evs + extra), q_frame(probe_q)).to_dicts()
    for before, after in zip([got[i] for i in probe_idx], probed, strict=True):
        for name in view.feature_names:
            assert same(before[name], after[name]), ("leak", name, before[name], after[name])


def test_oracle_case_count_reaches_10k() -> None:
    # Runs after the property test in file order: the fast profile's 50 examples x 250 queries.
    assert CASES["n"] >= 10_000, CASES


def test_training_set_joins_views_point_in_time() -> None:
    view = make_view(record_time=True, ttl=False)
    evs = [
        Ev("a", BASE_US, BASE_US, {"amount": 5.0, "merchant": "m1"}, "1"),
        Ev("a", BASE_US + MIN, BASE_US + 120 * MIN, {"amount": 7.0, "merchant": "m2"}, "2"),
    ]
    labels = pl.DataFrame({"card": ["a", "a"], "label": [0, 1]}).with_columns(
        q_frame([("a", BASE_US + 2 * MIN), ("a", BASE_US + 121 * MIN)])["timestamp"]
    )
    out = training_set(labels, [(view, to_frame(evs))])
    assert out.columns[:3] == ["card", "label", "timestamp"]
    # At +2min the second event exists (event time) but was not yet recorded: excluded.
    assert out["txn__sum_amount_1h"].to_list() == [5.0, 0.0]
    assert out["txn__count_3h"].to_list() == [1, 2]
