"""`keel features ...` end to end: real definitions file, real embedded stores under tmp_path.

Values are checked against hand-checkable event logs (a handful of events whose window sums
are obvious) and against the library call the command wraps.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from keel_cli.main import app
from typer.testing import CliRunner

from keel.features import OfflineStore, load_registry, open_online_store

runner = CliRunner()
BASE = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)

DEFS = """
from datetime import timedelta
from keel.features import Aggregation, Entity, EventSource, FeatureView

card_txn = FeatureView(
    name="card_txn",
    source=EventSource("txn.created"),
    entities=[Entity("card")],
    fields={"amount": "float"},
    features=[
        Aggregation("count", None, timedelta(hours=1)),
        Aggregation("sum", "amount", timedelta(hours=1)),
        Aggregation("max", "amount", timedelta(days=1)),
    ],
    id_column="event_id",
)
"""


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    defs = tmp_path / "defs.py"
    defs.write_text(DEFS)
    ts = pl.Series(
        [
            BASE,
            BASE + timedelta(minutes=10),
            BASE + timedelta(minutes=90),
            BASE + timedelta(minutes=5),
            BASE + timedelta(minutes=10),  # repeated id: dropped
        ]
    ).dt.convert_time_zone("UTC")
    events = pl.DataFrame(
        {
            "card": ["a", "a", "a", "b", "a"],
            "event_time": ts,
            "event_id": ["1", "2", "3", "4", "2"],
            "amount": [10.0, 5.0, 1.0, 7.0, 5.0],
        }
    )
    events.write_parquet(tmp_path / "events.parquet")
    return {
        "KEEL_HOME": str(tmp_path / "home"),
        "KEEL_FEATURES_DEFINITIONS": str(defs),
        "KEEL_FEATURES_ONLINE_URL": f"sqlite:///{tmp_path / 'online.db'}",
        "TMP": str(tmp_path),
    }


def invoke(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["features", *args], env=env)
    return result.exit_code, result.output


def test_list_shows_views_with_version_and_features(env: dict[str, str]) -> None:
    code, out = invoke(env, "list", "--json")
    assert code == 0, out
    rows = json.loads(out)
    view = load_registry(env["KEEL_FEATURES_DEFINITIONS"]).get("card_txn")
    assert [r["name"] for r in rows] == ["card_txn"]
    assert rows[0]["version"] == view.version
    assert rows[0]["features"] == ["count_1h", "sum_amount_1h", "max_amount_1d"]
    code, out = invoke(env, "list")
    assert code == 0 and f"card_txn  v{view.version}" in out and "sum_amount_1h" in out


def test_backfill_writes_values_as_of_every_event_to_the_offline_store(
    env: dict[str, str],
) -> None:
    code, out = invoke(env, "backfill", "card_txn", "--events", f"{env['TMP']}/events.parquet")
    assert code == 0, out
    assert "backfilled 4 rows of card_txn" in out
    view = load_registry(env["KEEL_FEATURES_DEFINITIONS"]).get("card_txn")
    got = (
        OfflineStore(Path(env["KEEL_HOME"]) / "offline")
        .read(f"features.card_txn.{view.version}")
        .collect()
        .sort("card", "event_time")
    )
    assert got["card"].to_list() == ["a", "a", "a", "b"]
    assert got["count_1h"].to_list() == [1, 2, 1, 1]
    assert got["sum_amount_1h"].to_list() == [10.0, 15.0, 1.0, 7.0]
    assert got["max_amount_1d"].to_list() == [10.0, 10.0, 10.0, 7.0]


def test_materialize_then_get_reads_online_values(env: dict[str, str]) -> None:
    at = (BASE + timedelta(minutes=30)).isoformat()
    code, out = invoke(
        env, "materialize", "card_txn", "--at", at, "--events", f"{env['TMP']}/events.parquet"
    )
    assert code == 0, out
    assert "materialized 2 of 2 entities" in out
    code, out = invoke(env, "get", "card_txn", "a")
    assert code == 0, out
    row = json.loads(out)
    # As of +30m: card a has events at 0m and 10m (the 90m one is in the future).
    assert row["values"] == {"count_1h": 2, "sum_amount_1h": 15.0, "max_amount_1d": 10.0}
    # Written under a's latest event time by +30m (10m), not under --at: a later streaming
    # write of an event at, say, +20m must still be accepted by the online store.
    assert datetime.fromisoformat(row["event_time"]) == BASE + timedelta(minutes=10)
    assert row["age_s"] > 0
    # The store holds exactly what the command reported.
    store = open_online_store(env["KEEL_FEATURES_ONLINE_URL"])
    view = load_registry(env["KEEL_FEATURES_DEFINITIONS"]).get("card_txn")
    b = store.read(f"card_txn:{view.version}", "b")
    store.close()
    assert b is not None and b.values["sum_amount_1h"] == 7.0
    store = open_online_store(env["KEEL_FEATURES_ONLINE_URL"])
    accepted = store.write(
        f"card_txn:{view.version}", [("a", {"count_1h": 3}, BASE + timedelta(minutes=20))]
    )
    store.close()
    assert accepted == 1


def test_get_unknown_entity_and_view_fail_clearly(env: dict[str, str]) -> None:
    code, out = invoke(env, "get", "card_txn", "nobody")
    assert code == 1 and "no online values for entity 'nobody'" in out
    code, out = invoke(env, "get", "no_such_view", "a")
    assert code == 2 and "no feature view named 'no_such_view'" in out


def test_materialize_rejects_naive_time(env: dict[str, str]) -> None:
    code, out = invoke(env, "materialize", "card_txn", "--at", "2024-03-01T12:30:00")
    assert code == 2 and "has no time zone" in out


def test_training_set_is_point_in_time(env: dict[str, str]) -> None:
    tmp = Path(env["TMP"])
    labels = pl.DataFrame(
        {
            "card": ["a", "a", "b", "zz"],
            "timestamp": pl.Series(
                [
                    BASE + timedelta(minutes=9),
                    BASE + timedelta(minutes=100),
                    BASE + timedelta(minutes=5),
                    BASE,
                ]
            ).dt.convert_time_zone("UTC"),
            "label": [0, 1, 0, 1],
        }
    )
    labels.write_parquet(tmp / "labels.parquet")
    code, out = invoke(
        env,
        "training-set",
        str(tmp / "labels.parquet"),
        str(tmp / "train.parquet"),
        "--view",
        "card_txn",
        "--events",
        str(tmp / "events.parquet"),
    )
    assert code == 0, out
    assert "wrote 4 rows x 6 columns" in out
    train = pl.read_parquet(tmp / "train.parquet")
    assert train["label"].to_list() == [0, 1, 0, 1]
    # +9m: only the 0m event; +100m: the 1h window holds 90m only; b at its own event time.
    assert train["card_txn__count_1h"].to_list() == [1, 1, 1, 0]
    assert train["card_txn__sum_amount_1h"].to_list() == [10.0, 1.0, 7.0, 0.0]
    assert train["card_txn__max_amount_1d"].to_list() == [10.0, 10.0, 7.0, None]


def test_missing_definitions_is_a_usage_error(env: dict[str, str]) -> None:
    code, out = invoke({**env, "KEEL_FEATURES_DEFINITIONS": ""}, "list")
    assert code == 2 and "no feature definitions given" in out
