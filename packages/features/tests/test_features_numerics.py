"""Numerics and bounds every engine shares: stable std, one NaN/inf semantics, overflow, wrong
types, bounded state, any micro-batch width, short error messages.

Engines compared: the batch fast path (``_fastwin``), the general rolling plan (fast path
switched off), the record-time (bitemporal) plan (a record-time column equal to the event
time: same values), and the streaming engine at bucket boundaries; all against the exact
naive oracle (``features_oracle.numeric``: fractions, rounded once).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from features_oracle import Ev, assert_rows_match_naive, same
from hypothesis import given
from hypothesis import strategies as st

from keel.features import (
    Aggregation,
    Entity,
    EventSource,
    FeatureView,
    InvalidDefinitionError,
    InvalidInputError,
    StreamingEngine,
    _batch,
    backfill,
    compute_at,
)

BASE = datetime(2024, 1, 1, tzinfo=UTC)
BASE_US = int(BASE.timestamp()) * 1_000_000
MIN = 60_000_000
NOW = BASE + timedelta(days=30)
FNS = ("count", "sum", "mean", "std", "min", "max")


def make_view(
    record_time: bool = False, windows: tuple[int, ...] = (10, 30), mixed: bool = False
) -> FeatureView:
    feats = [Aggregation(fn, "amount", timedelta(minutes=w)) for w in windows for fn in FNS]
    if mixed:  # a feature the fast path does not cover: numerics must not change
        feats.append(Aggregation("last", "amount", timedelta(minutes=windows[0])))
    return FeatureView(
        name="num",
        source=EventSource("txn"),
        entities=[Entity("card")],
        fields={"amount": "float"},
        features=feats,
        record_time="recorded_at" if record_time else None,
        allowed_lateness=timedelta(days=1),
    )


def frame(evs: list[Ev]) -> pl.DataFrame:
    def ts(us: list[int]) -> pl.Series:
        return pl.from_epoch(pl.Series(us, dtype=pl.Int64), time_unit="us").dt.replace_time_zone(
            "UTC"
        )

    return pl.DataFrame(
        {
            "card": pl.Series([e.key for e in evs], dtype=pl.String),
            "event_time": ts([e.et for e in evs]),
            "recorded_at": ts([e.rt if e.rt is not None else e.et for e in evs]),
            "amount": pl.Series([e.values["amount"] for e in evs], dtype=pl.Float64),
        }
    )


@contextmanager
def general_plan() -> Iterator[None]:
    saved = _batch._fast_partials
    _batch._fast_partials = lambda *a, **k: None  # type: ignore[assignment]
    try:
        yield
    finally:
        _batch._fast_partials = saved  # type: ignore[assignment]


def batch_rows(evs: list[Ev], qs: list[tuple[str, int]], plan: str) -> list[dict]:
    q = pl.DataFrame(
        {
            "card": [k for k, _ in qs],
            "timestamp": pl.from_epoch(
                pl.Series([t for _, t in qs], dtype=pl.Int64), time_unit="us"
            ).dt.replace_time_zone("UTC"),
        }
    )
    if plan == "general":
        with general_plan():
            return compute_at(make_view(), frame(evs), q).to_dicts()
    if plan == "mixed":
        return compute_at(make_view(mixed=True), frame(evs), q).to_dicts()
    return compute_at(make_view(plan == "bitemporal"), frame(evs), q).to_dicts()


def stream_rows(evs: list[Ev], qs: list[tuple[str, int]]) -> list[dict]:
    eng = StreamingEngine(make_view(), clock=lambda: NOW)
    for i in range(0, len(evs), 7):
        eng.ingest(frame(evs[i : i + 7]).drop("recorded_at"))
    out = []
    for key, t in qs:
        out += eng.values_at([key], datetime.fromtimestamp(t / 1e6, UTC)).to_dicts()
    return out


PLANS = ("fast", "mixed", "bitemporal", "stream")

special = st.sampled_from([math.nan, math.inf, -math.inf])
value = st.one_of(
    st.none(),
    st.floats(-3, 3).map(lambda x: 1e9 + x),  # large offset, unit spread
    st.floats(-1e3, 1e3),
    special,
    st.sampled_from([1e308, 1.5e308]),  # same-sign overflow of sums
)


def check_engines(rows: list[tuple], plans: tuple[str, ...]) -> None:
    rows = sorted(rows, key=lambda r: r[1])  # time order: nothing is late for streaming
    evs = [Ev(k, BASE_US + m * MIN, None, {"amount": v}) for k, m, v in rows]
    qs = [(k, BASE_US + m * 10 * MIN) for m in range(0, 11) for k in ("a", "b")]
    for plan in plans:
        got = stream_rows(evs, qs) if plan == "stream" else batch_rows(evs, qs, plan)
        assert_rows_match_naive(make_view(), evs, qs, got)


@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 90), value), min_size=1, max_size=60
    )
)
def test_every_engine_follows_the_documented_numeric_semantics(rows: list[tuple]) -> None:
    check_engines(rows, PLANS)


moderate = st.one_of(
    st.none(), st.floats(-3, 3).map(lambda x: 1e6 + x), st.floats(-1e3, 1e3), special
)


@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 90), moderate),
        min_size=1,
        max_size=40,
    )
)
def test_rolling_fallback_follows_the_same_semantics(rows: list[tuple]) -> None:
    """The Polars rolling plan (used only when the fast path declines: a 64-bit entity-hash
    collision, packed keys beyond int64, windows longer than its sparse tables) follows the
    same NaN/inf rules; its sliding sums are float64-accurate relative to the magnitudes that
    passed through the window, so it is checked on moderate magnitudes."""
    check_engines(rows, ("general",))


@pytest.mark.parametrize("offset", [1e8, 1e9, 1e12])
def test_std_is_exact_for_large_offsets(offset: float) -> None:
    """Issue repro: values around 1e8 with std 1.42 gave 0.000 (fast path, streaming)."""
    rng = np.random.default_rng(1)
    x = offset + rng.normal(0.0, 1.42, 600)
    evs = [Ev("a", BASE_US + i * 1_000_000, None, {"amount": float(v)}) for i, v in enumerate(x)]
    t = BASE_US + 10 * MIN
    want = float(np.std(x[1:], ddof=1))  # (T - 10m, T] holds events 1..599
    for plan in PLANS:
        rows = (
            stream_rows(evs, [("a", t)]) if plan == "stream" else batch_rows(evs, [("a", t)], plan)
        )
        assert math.isclose(rows[0]["std_amount_10m"], want, rel_tol=1e-7), (plan, rows[0])
        assert math.isclose(rows[0]["mean_amount_10m"], float(np.mean(x[1:])), rel_tol=1e-14), plan


def test_std_of_a_drifting_series_stays_exact_in_the_fast_path() -> None:
    """Late windows of a series drifting to 1e12: the prefix magnitude must not leak in."""
    n = 20_000
    x = np.linspace(0, 1e12, n) + np.random.default_rng(2).normal(0, 1, n)
    df = frame(
        [Ev("a", BASE_US + i * 1_000_000, None, {"amount": float(v)}) for i, v in enumerate(x)]
    )
    got = backfill(make_view(windows=(10,)), df)["std_amount_10m"].to_numpy()
    for i in (700, 12_345, n - 1):
        want = float(np.std(x[i - 599 : i + 1], ddof=1))
        assert math.isclose(got[i], want, rel_tol=1e-6), (i, got[i], want)


def test_inf_and_overflow_leave_no_trace_after_leaving_the_window() -> None:
    """Issue repro: after an inf left the window the fast path kept answering NaN."""
    vals = [1.0, math.inf, 2.0, 1e308, 1e308, 3.0, 5.0]
    evs = [Ev("a", BASE_US + i * 10 * MIN, None, {"amount": v}) for i, v in enumerate(vals)]
    qs = [("a", BASE_US + i * 10 * MIN) for i in range(len(vals))]
    for plan in PLANS:
        rows = stream_rows(evs, qs) if plan == "stream" else batch_rows(evs, qs, plan)
        sums = [r["sum_amount_10m"] for r in rows]
        sums30 = [r["sum_amount_30m"] for r in rows]
        assert sums[1] == math.inf and sums30[4] == math.inf, (plan, sums, sums30)
        assert sums[-2:] == [3.0, 5.0] and sums30[-1] == 1e308, (plan, sums, sums30)
        assert (
            math.isnan(rows[2]["mean_amount_30m"]) is False
            and rows[2]["mean_amount_30m"] == math.inf
        )
        assert rows[-1]["mean_amount_10m"] == 5.0 and rows[-1]["std_amount_10m"] is None, plan


def test_count_over_a_string_column_works_and_sum_is_refused() -> None:
    fields = {"merchant": "str"}
    view = FeatureView(
        name="s",
        source=EventSource("x"),
        entities=[Entity("card")],
        fields=fields,
        features=[Aggregation("count", "merchant", timedelta(minutes=10))],
    )
    big = "x" * 1_000_000
    df = pl.DataFrame(
        {"card": ["a", "a"], "event_time": [BASE, BASE], "merchant": [big, None]},
        schema={"card": pl.String, "event_time": pl.Datetime("us", "UTC"), "merchant": pl.String},
    )
    assert backfill(view, df)["count_merchant_10m"].to_list() == [1, 1]
    eng = StreamingEngine(view, clock=lambda: NOW)
    rep = eng.ingest(df)
    assert eng.current(rep.updated)[0]["count_merchant_10m"].to_list() == [1]
    with pytest.raises(InvalidDefinitionError, match="sum needs a numeric column"):
        FeatureView(
            name="s2",
            source=EventSource("x"),
            entities=[Entity("card")],
            fields=fields,
            features=[Aggregation("sum", "merchant", timedelta(minutes=10))],
        )
    # A frame whose column has the wrong type is refused on sight, without quoting values.
    num = FeatureView(
        name="s3",
        source=EventSource("x"),
        entities=[Entity("card")],
        fields={"merchant": "float"},
        features=[Aggregation("sum", "merchant", timedelta(minutes=10))],
    )
    for run in (lambda: backfill(num, df), lambda: StreamingEngine(num).ingest(df)):
        with pytest.raises(InvalidInputError) as err:
            run()
        assert "declared float" in str(err.value) and len(str(err.value)) < 300


def test_transform_errors_never_quote_a_whole_value() -> None:
    from keel.features import Transform

    view = FeatureView(
        name="t",
        source=EventSource("x"),
        entities=[Entity("card")],
        fields={"raw": "str"},
        transforms=[Transform("amount", pl.col("raw"), "float")],
        features=[Aggregation("sum", "amount", timedelta(minutes=10))],
    )
    df = pl.DataFrame(
        {"card": ["a"], "event_time": [BASE], "raw": ["not a number " * 100_000]},
        schema={"card": pl.String, "event_time": pl.Datetime("us", "UTC"), "raw": pl.String},
    )
    with pytest.raises(InvalidInputError) as err:
        backfill(view, df)
    assert len(str(err.value)) < 300, str(err.value)[:500]


def test_ring_size_is_checked_against_the_state_budget_at_definition() -> None:
    """Issue repro: 1 h and 1 h + 1 us made a 1 us bucket and a 29 GiB ring per entity."""
    for windows in (
        [timedelta(hours=1), timedelta(hours=1, microseconds=1)],
        [timedelta(minutes=7), timedelta(days=30)],
    ):
        with pytest.raises(InvalidDefinitionError, match="windows .* per entity.*budget") as err:
            FeatureView(
                name="ring",
                source=EventSource("x"),
                entities=[Entity("card")],
                fields={"amount": "float"},
                features=[Aggregation("sum", "amount", w) for w in windows],
            )
        assert "max_state_bytes_per_entity" in str(err.value)
    # The same view fits once the budget allows it (and the first allocation stays small).
    view = FeatureView(
        name="ring",
        source=EventSource("x"),
        entities=[Entity("card")],
        fields={"amount": "float"},
        features=[
            Aggregation("sum", "amount", w) for w in (timedelta(minutes=7), timedelta(days=30))
        ],
        max_state_bytes_per_entity=8 << 20,
    )
    eng = StreamingEngine(view, clock=lambda: NOW)
    assert eng.ring == view.ring_slots == 43_207
    assert eng._cap * eng.ring * view.state_bytes_per_slot <= 64 << 20


def test_current_handles_any_batch_width_and_errors_change_nothing() -> None:
    """Issue repro: a micro-batch wider than lateness + 2 buckets made current() raise after
    ingest() had already changed state."""
    view = make_view()
    eng = StreamingEngine(view, clock=lambda: NOW)
    wide = frame(
        [
            Ev("a", BASE_US, None, {"amount": 1.0}),
            Ev("b", BASE_US + 3 * 86_400_000_000, None, {"amount": 2.0}),
        ]
    ).drop("recorded_at")
    rep = eng.ingest(wide)
    values, times = eng.current(rep.updated)
    assert values["sum_amount_10m"].to_list() == [1.0, 2.0]
    assert times == [BASE, BASE + timedelta(days=3)]
    before = eng.snapshot()
    bad = wide.with_columns(pl.lit(None, pl.String).alias("card"))
    with pytest.raises(InvalidInputError):
        eng.ingest(bad)
    with pytest.raises(InvalidInputError, match="never ingested"):
        eng.current(["nobody"])
    assert eng.snapshot() == before


def test_nanosecond_times_must_be_whole_microseconds() -> None:
    view = make_view()
    ns = pl.Series([BASE_US * 1000, BASE_US * 1000 + 1500]).cast(pl.Datetime("ns", "UTC"))
    df = pl.DataFrame({"card": ["a", "a"], "event_time": ns, "amount": [1.0, 2.0]})
    with pytest.raises(InvalidInputError, match="not a whole microsecond"):
        backfill(view, df)
    with pytest.raises(InvalidInputError, match="not a whole microsecond"):
        StreamingEngine(view, clock=lambda: NOW).ingest(df)
    ok = df.with_columns(pl.col("event_time").dt.truncate("1us"))
    assert backfill(view, ok)["count_amount_10m"].to_list() == [1, 2]


def test_snapshots_of_the_old_variance_state_are_refused() -> None:
    import msgspec

    eng = StreamingEngine(make_view(), clock=lambda: NOW)
    blob = msgspec.msgpack.decode(eng.snapshot())
    blob["format"] = 1
    with pytest.raises(InvalidInputError, match="rebuild"):
        StreamingEngine.restore(make_view(), msgspec.msgpack.encode(blob))


def test_same_treats_nan_and_inf_as_values() -> None:
    assert same(math.nan, math.nan) and same(math.inf, math.inf)
    assert not same(math.inf, -math.inf) and not same(1.0, math.nan)
