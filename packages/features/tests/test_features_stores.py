"""One behavioural suite over both online backends (embedded SQLite and real Redis)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import redis
from testutil.isolation import redis_url, unique_name

from keel.features import (
    InvalidInputError,
    MemoryStateStore,
    NotFoundError,
    OfflineStore,
    OnlineStore,
    RedisOnlineStore,
    RedisStateStore,
    SQLiteOnlineStore,
    SQLiteStateStore,
    StateStore,
    open_online_store,
)

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    if request.param == "sqlite":
        s: OnlineStore = SQLiteOnlineStore(tmp_path / "online.db")
        yield s
        s.close()
    else:
        prefix = unique_name("keeltest") + ":"
        s = RedisOnlineStore(redis_url(), prefix=prefix)
        yield s
        r = redis.Redis.from_url(redis_url())
        keys = list(r.scan_iter(match=prefix + "*"))
        if keys:
            r.delete(*keys)
        assert not list(r.scan_iter(match=prefix + "*"))
        s.close()


def test_read_returns_values_and_event_time(store: OnlineStore) -> None:
    assert (
        store.write(
            "v1", [("card-1", {"sum_1h": 12.5, "count_1h": 3, "last": "m1", "x": None}, T0)]
        )
        == 1
    )
    row = store.read("v1", "card-1")
    assert row is not None
    assert row.values == {"sum_1h": 12.5, "count_1h": 3, "last": "m1", "x": None}
    assert row.event_time == T0
    assert row.freshness(T0 + timedelta(seconds=5)) == timedelta(seconds=5)
    assert store.read("v1", "unknown") is None
    assert store.read("other-namespace", "card-1") is None


def test_older_write_never_overwrites_newer(store: OnlineStore) -> None:
    store.write("v1", [("e", {"a": 2}, T0)])
    assert store.write("v1", [("e", {"a": 1}, T0 - timedelta(microseconds=1))]) == 0
    assert store.read("v1", "e").values == {"a": 2}  # type: ignore[union-attr]
    assert (
        store.write("v1", [("e", {"a": 3}, T0)]) == 1
    )  # same time: later write of the same instant wins
    assert store.write("v1", [("e", {"a": 4}, T0 + timedelta(seconds=1))]) == 1
    row = store.read("v1", "e")
    assert (
        row is not None and row.values == {"a": 4} and row.event_time == T0 + timedelta(seconds=1)
    )


def test_concurrent_writers_leave_the_newest_value(store: OnlineStore) -> None:
    times = [T0 + timedelta(seconds=i) for i in range(200)]

    def writer(chunk: list[datetime]) -> None:
        for t in chunk:
            store.write("v1", [("hot", {"t": t.isoformat()}, t)])

    threads = [threading.Thread(target=writer, args=(times[i::4][::-1],)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    row = store.read("v1", "hot")
    assert (
        row is not None
        and row.event_time == times[-1]
        and row.values == {"t": times[-1].isoformat()}
    )


def test_read_many_and_batch_write(store: OnlineStore) -> None:
    rows = [(f"e{i}", {"i": i}, T0 + timedelta(seconds=i)) for i in range(50)]
    assert store.write("v2", rows) == 50
    got = store.read_many("v2", ["e3", "nope", "e49"])
    assert got[0] is not None and got[0].values == {"i": 3}
    assert got[1] is None
    assert got[2] is not None and got[2].event_time == T0 + timedelta(seconds=49)
    store.delete_namespace("v2")
    assert store.read("v2", "e3") is None


def test_naive_event_time_and_bad_values_are_rejected(store: OnlineStore) -> None:
    with pytest.raises(InvalidInputError, match="timezone-naive"):
        store.write("v1", [("e", {"a": 1}, datetime(2024, 1, 1))])
    with pytest.raises(InvalidInputError, match="plain scalars"):
        store.write("v1", [("e", {"a": object()}, T0)])


def test_open_online_store_by_url(tmp_path: Path) -> None:
    s = open_online_store(f"sqlite://{tmp_path}/x.db")
    assert isinstance(s, SQLiteOnlineStore)
    s.close()
    s2 = open_online_store(None, home=tmp_path)
    assert isinstance(s2, SQLiteOnlineStore) and s2.path == tmp_path / "online.db"
    s2.close()
    with pytest.raises(InvalidInputError, match="expected redis"):
        open_online_store("postgres://x")


def test_offline_store_partitions_by_date(tmp_path: Path) -> None:
    off = OfflineStore(tmp_path)
    df = pl.DataFrame(
        {"k": ["a", "b", "c"], "t": [T0, T0 + timedelta(days=1), T0 + timedelta(days=1, hours=1)]},
        schema={"k": pl.String, "t": pl.Datetime("us", "UTC")},
    )
    paths = off.write("events", df, time_column="t")
    assert sorted(p.parent.name for p in paths) == ["date=2024-05-01", "date=2024-05-02"]
    assert off.read("events").collect().sort("k").equals(df)
    only = off.read("events", start=date(2024, 5, 2)).collect()
    assert sorted(only["k"].to_list()) == ["b", "c"]
    assert off.datasets() == ["events"]
    with pytest.raises(NotFoundError):
        off.read("missing")
    with pytest.raises(InvalidInputError, match="timezone-aware"):
        off.write(
            "events", df.with_columns(pl.col("t").dt.replace_time_zone(None)), time_column="t"
        )


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_state_stores_round_trip(kind: str, tmp_path: Path) -> None:
    name = unique_name("state")
    st: StateStore
    if kind == "memory":
        st = MemoryStateStore()
    elif kind == "sqlite":
        st = SQLiteStateStore(tmp_path / "state.db", clock=lambda: T0)
    else:
        st = RedisStateStore(redis_url(), prefix="keeltest:")
    assert st.load(name) is None
    st.save(name, b"\x00snap1")
    st.save(name, b"\x00snap2")
    assert st.load(name) == b"\x00snap2"
    # save_many is all-or-none and an empty value deletes its name in the same write
    other = name + "/other"
    st.save_many({other: b"x", name: b""})
    assert st.load(name) is None and st.load(other) == b"x"
    st.save_many({other: b""})
    assert st.load(other) is None
    if kind == "redis":
        redis.Redis.from_url(redis_url()).delete("keeltest:" + name)
