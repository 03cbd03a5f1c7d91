"""Definitions validate at declaration; versions are content-derived; bad input gets clear errors."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from keel.features import (
    Aggregation,
    ConflictError,
    Entity,
    EventSource,
    FeatureView,
    InvalidDefinitionError,
    InvalidInputError,
    NotFoundError,
    Registry,
    StreamingEngine,
    TableSource,
    Transform,
    compute_at,
    registry_from_objects,
)

H = timedelta(hours=1)


def view(**kw: object) -> FeatureView:
    args: dict[str, object] = {
        "name": "v",
        "source": TableSource("txns"),
        "entities": [Entity("card")],
        "fields": {"amount": "float", "merchant": "str"},
        "features": [Aggregation("sum", "amount", H)],
    }
    args.update(kw)
    return FeatureView(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"features": [Aggregation("sum", "nope", H)]}, "not a declared field"),
        ({"features": [Aggregation("mean", "merchant", H)]}, "needs a numeric column"),
        ({"features": []}, "at least one feature"),
        (
            {"features": [Aggregation("sum", "amount", H), Aggregation("sum", "amount", H)]},
            "duplicate feature",
        ),
        ({"fields": {"amount": "decimal"}}, "expected one of"),
        ({"fields": {"card": "str", "amount": "float"}}, "cannot also be fields"),
        ({"entities": []}, "at least one Entity"),
        ({"bucket": timedelta(minutes=7)}, "does not divide"),
        ({"ttl": timedelta(0)}, "must be positive"),
        ({"name": "bad name"}, "invalid"),
        ({"transforms": [Transform("x", pl.col("ghost") * 2)]}, "undeclared columns"),
    ],
)
def test_invalid_definitions_fail_at_declaration(kw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidDefinitionError, match=message):
        view(**kw)


def test_aggregation_validation() -> None:
    with pytest.raises(InvalidDefinitionError, match="unknown aggregation 'median'"):
        Aggregation("median", "x", H)
    with pytest.raises(InvalidDefinitionError, match="needs a column"):
        Aggregation("sum", None, H)
    with pytest.raises(InvalidDefinitionError, match="timedelta"):
        Aggregation("sum", "x", 3600)  # type: ignore[arg-type]
    assert Aggregation("count", None, timedelta(minutes=10)).name == "count_10m"
    assert Aggregation("distinct_count", "m", timedelta(days=7)).name == "distinct_count_m_7d"


def test_version_is_content_derived() -> None:
    a, b = view(), view()
    assert a.version == b.version and a == b
    assert view(ttl=timedelta(days=1)).version != a.version
    assert view(features=[Aggregation("sum", "amount", 2 * H)]).version != a.version
    t1 = view(transforms=[Transform("double", pl.col("amount") * 2)])
    t2 = view(transforms=[Transform("double", pl.col("amount") * 3)])
    assert t1.version != t2.version
    assert view().bucket == H and view(ttl=timedelta(minutes=90)).bucket == timedelta(minutes=30)


def test_registry() -> None:
    reg = Registry([view()])
    reg.register(view())  # same content: no-op
    with pytest.raises(ConflictError, match="already registered"):
        reg.register(view(ttl=H))
    with pytest.raises(NotFoundError, match="registered: v"):
        reg.get("w")
    other = view(name="w", entities=[Entity("user", join_keys=("user_id",))])
    reg2 = registry_from_objects({"a": view(), "b": other, "x": 3})
    assert [v.name for v in reg2] == ["v", "w"]
    assert [e.name for e in reg2.entities()] == ["card", "user"]


T0 = datetime(2024, 1, 1, tzinfo=UTC)


def test_bad_input_frames_get_clear_errors() -> None:
    v = view()
    good = pl.DataFrame({"card": ["a"], "event_time": [T0], "amount": [1.0], "merchant": ["m"]})
    q = pl.DataFrame({"card": ["a"], "timestamp": [T0]})
    assert compute_at(v, good, q)["sum_amount_1h"].to_list() == [1.0]
    with pytest.raises(InvalidInputError, match=r"missing columns \['amount'\]"):
        compute_at(v, good.drop("amount"), q)
    with pytest.raises(InvalidInputError, match="declared float but the input has dtype String"):
        compute_at(v, good.with_columns(pl.lit("x").alias("amount")), q)
    with pytest.raises(InvalidInputError, match="timezone-naive"):
        compute_at(v, good.with_columns(pl.col("event_time").dt.replace_time_zone(None)), q)
    with pytest.raises(InvalidInputError, match="timezone-naive"):
        compute_at(v, good, q.with_columns(pl.col("timestamp").dt.replace_time_zone(None)))
    with pytest.raises(InvalidInputError, match="null event time"):
        compute_at(
            v, good.with_columns(pl.lit(None, pl.Datetime("us", "UTC")).alias("event_time")), q
        )
    with pytest.raises(InvalidInputError, match="missing join keys"):
        compute_at(v, good, q.rename({"card": "user"}))
    # other time zones are normalised, not rejected
    berlin = good.with_columns(pl.col("event_time").dt.convert_time_zone("Europe/Berlin"))
    assert compute_at(v, berlin, q)["sum_amount_1h"].to_list() == [1.0]


def test_streaming_rejects_naive_input_and_far_future_events() -> None:
    v = view(source=EventSource("t"), id_column="event_id")
    eng = StreamingEngine(v, clock=lambda: T0)
    naive = pl.DataFrame(
        {
            "card": ["a"],
            "event_time": [datetime(2024, 1, 1)],
            "event_id": ["1"],
            "amount": [1.0],
            "merchant": ["m"],
        }
    )
    with pytest.raises(InvalidInputError, match="timezone-naive"):
        eng.ingest(naive)
    future = naive.with_columns(pl.lit(T0 + timedelta(days=2)).alias("event_time"))
    rep = eng.ingest(future)
    assert rep.applied == 0 and [d.reason for d in rep.dead_letters] == ["future"]
    with pytest.raises(InvalidInputError, match="multiples of the bucket"):
        eng.values_at("a", T0 + timedelta(minutes=1))


def test_streaming_state_is_bounded_by_entities_not_events() -> None:
    v = view(source=EventSource("t"), id_column="event_id")
    eng = StreamingEngine(v, clock=lambda: T0 + timedelta(days=30))
    n = 0
    for day in range(20):
        times = [T0 + timedelta(days=day, minutes=m) for m in range(0, 1440, 3)]
        df = pl.DataFrame(
            {
                "card": [f"c{i % 5}" for i in range(len(times))],
                "event_time": times,
                "event_id": [f"{day}-{i}" for i in range(len(times))],
                "amount": [1.0] * len(times),
                "merchant": ["m"] * len(times),
            }
        )
        n += eng.ingest(df).applied
        assert eng.state_cells() == 5 * eng.ring
        assert len(eng._seen) < 5_000  # ids outside the lateness horizon are forgotten
    assert n == 20 * 480


def test_import_does_not_pull_heavy_modules() -> None:
    """Which modules load, never how long it takes (a busy machine must not fail this)."""
    code = (
        "import sys, keel.features; "
        "print([m for m in ('torch', 'ray', 'mlflow', 'pandas', 'pyarrow', 'redis') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
