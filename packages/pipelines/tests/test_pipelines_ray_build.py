"""The training-set build partitioned by entity hash across Ray Data tasks on a local
two-node Ray cluster gives the same Parquet bytes (and fingerprint) as keel.features'
single-process build.

The data exercises what could break the equality: two views keyed on different entities
(card: partitioned; merchant: sent whole to every partition), an event id repeated across
two cards (dropped once, globally, first wins), label rows in a shuffled order, several
labels per entity, and label times before any event of their entity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from testutil.ray_nodes import TwoNodeRay, two_node_session

from keel.features import Aggregation, Entity, EventSource, FeatureView, training_set
from keel.pipelines.ray_build import RayBuildError, build_training_set_on_ray, partition_ids

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="session")
def two_node_ray() -> Iterator[TwoNodeRay]:
    """The shared two-node cluster (testutil.ray_nodes), one per test process."""
    yield from two_node_session()


def _views() -> tuple[FeatureView, FeatureView]:
    card = FeatureView(
        name="card_txn",
        source=EventSource("txn.created"),
        entities=[Entity("card")],
        fields={"amount": "float", "merchant": "str"},
        features=[
            Aggregation("count", None, timedelta(hours=1)),
            Aggregation("sum", "amount", timedelta(hours=6)),
            Aggregation("std", "amount", timedelta(days=1)),
            Aggregation("distinct_count", "merchant", timedelta(days=1)),
            Aggregation("last", "amount", timedelta(days=1)),
        ],
        id_column="event_id",
    )
    merchant = FeatureView(
        name="merchant_txn",
        source=EventSource("txn.created"),
        entities=[Entity("merchant")],
        fields={"amount": "float"},
        features=[Aggregation("mean", "amount", timedelta(hours=12))],
        id_column="event_id",
    )
    return card, merchant


def _data(seed: int = 5) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    n = 3000
    cards = [f"c{i}" for i in rng.integers(0, 60, n)]
    merchants = [f"m{i}" for i in rng.integers(0, 9, n)]
    minutes = rng.integers(0, 3 * 24 * 60, n)
    ids = [f"e{i}" for i in range(n)]
    ids[10] = ids[2000]  # one id on two events (most likely two cards): first wins
    events = pl.DataFrame(
        {
            "card": cards,
            "merchant": merchants,
            "event_time": [T0 + timedelta(minutes=int(m)) for m in minutes],
            "event_id": ids,
            "amount": np.round(rng.gamma(2.0, 30.0, n), 2),
        },
        schema_overrides={"event_time": pl.Datetime("us", "UTC")},
    )
    m = 700
    labels = pl.DataFrame(
        {
            "card": [f"c{i}" for i in rng.integers(0, 64, m)],  # c60-c63 have no events
            "merchant": [f"m{i}" for i in rng.integers(0, 9, m)],
            "timestamp": [
                T0 + timedelta(minutes=int(x)) for x in rng.integers(-60, 3 * 24 * 60 + 60, m)
            ],
            "label": rng.integers(0, 2, m),
        },
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")},
    )
    return labels, events


def _parquet(frame: pl.DataFrame, path: Path) -> bytes:
    frame.write_parquet(path)
    return path.read_bytes()


def test_partition_ids_are_a_pure_function_of_the_keys() -> None:
    labels, _ = _data()
    a = partition_ids(labels, ["card"], 4)
    assert a.to_list() == partition_ids(labels.reverse(), ["card"], 4).reverse().to_list()
    assert set(a.to_list()) == {0, 1, 2, 3}
    per_card = labels.with_columns(a).group_by("card").agg(pl.col("__part").n_unique())
    assert per_card["__part"].max() == 1  # an entity never spans two partitions
    with pytest.raises(RayBuildError, match=r"partition keys \['account'\]"):
        partition_ids(labels, ["account"], 4)
    with pytest.raises(RayBuildError, match="partitions must be >= 1"):
        partition_ids(labels, ["card"], 0)


def test_reserved_column_and_empty_sources_are_refused() -> None:
    labels, events = _data()
    card, _ = _views()
    with pytest.raises(RayBuildError, match="reserved by the Ray build"):
        build_training_set_on_ray(
            labels.with_columns(pl.lit(1).alias("__keel_row")), [(card, events)]
        )
    with pytest.raises(RayBuildError, match="sources is empty"):
        build_training_set_on_ray(labels, [])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_node_ray_build_gives_the_single_process_bytes(
    two_node_ray: TwoNodeRay, tmp_path: Path
) -> None:
    assert len(two_node_ray.alive_nodes()) == 2
    labels, events = _data()
    card, merchant = _views()
    sources: list[tuple[FeatureView, pl.DataFrame | pl.LazyFrame]] = [
        (card, events),
        (merchant, events.lazy()),
    ]
    single = training_set(labels, sources)
    assert single.height == labels.height and single["card_txn__count_1h"].sum() > 0

    for parts in (4, 1):
        on_ray = build_training_set_on_ray(labels, sources, partitions=parts)
        assert on_ray.columns == single.columns and on_ray.dtypes == single.dtypes
        want = _parquet(single, tmp_path / "single.parquet")
        got = _parquet(on_ray, tmp_path / f"ray-{parts}.parquet")
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(want).hexdigest()
        assert got == want, parts
