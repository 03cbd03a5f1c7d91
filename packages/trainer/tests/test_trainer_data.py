"""The sharded reader against a naive oracle, and the fingerprint against hashlib."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trainer_testdata import N_FEATURES, write_regression

from keel.trainer import DataError, fingerprint
from keel.trainer._data import (
    epoch_order,
    inspect,
    read_shard,
    shard_bounds,
    train_rows_per_shard,
    validation_mask,
)

FEATURES = [f"f{i}" for i in range(N_FEATURES)]


def test_fingerprint_is_sha256_of_the_file(tmp_path: Path) -> None:
    p = write_regression(tmp_path / "d.parquet", n=500)
    assert fingerprint(p) == "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_partition_the_rows_exactly(tmp_path: Path, world: int) -> None:
    p = write_regression(tmp_path / "d.parquet", n=1001, row_group_size=97)
    full = pq.read_table(p)
    x_all = np.stack([full.column(c).to_numpy() for c in FEATURES], axis=1).astype(np.float32)
    mask = validation_mask(5, 0, 1001, 0.25)
    xs_train, xs_val = [], []
    for r in range(world):
        s = read_shard(
            p,
            FEATURES,
            "y",
            rank=r,
            world=world,
            seed=5,
            validation_fraction=0.25,
            classification=False,
        )
        lo, hi = shard_bounds(1001, r, world)
        # oracle: the naive slice of the whole table, split by the same pure mask
        np.testing.assert_array_equal(s.x_train, x_all[lo:hi][~mask[lo:hi]])
        np.testing.assert_array_equal(s.x_val, x_all[lo:hi][mask[lo:hi]])
        xs_train.append(s.x_train)
        xs_val.append(s.x_val)
    assert sum(len(a) for a in xs_train) + sum(len(a) for a in xs_val) == 1001
    assert [len(a) for a in xs_train] == train_rows_per_shard(1001, world, 5, 0.25)


@settings(max_examples=30, deadline=None)
@given(lo=st.integers(0, 10_000), n=st.integers(0, 2000), seed=st.integers(0, 2**31 - 1))
def test_validation_mask_is_a_pure_function_of_the_row(lo: int, n: int, seed: int) -> None:
    whole = validation_mask(seed, 0, lo + n, 0.3)
    part = validation_mask(seed, lo, lo + n, 0.3)
    np.testing.assert_array_equal(whole[lo:], part)


def test_validation_fraction_is_respected_statistically() -> None:
    m = validation_mask(1, 0, 100_000, 0.2)
    assert 0.19 < m.mean() < 0.21


def test_epoch_order_is_seeded_and_cut_to_the_common_length() -> None:
    a = epoch_order(3, 1, 0, 100, 90)
    np.testing.assert_array_equal(a, epoch_order(3, 1, 0, 100, 90))
    assert len(a) == 90 and len(set(a.tolist())) == 90
    assert not np.array_equal(a, epoch_order(3, 2, 0, 100, 90))
    assert not np.array_equal(a, epoch_order(3, 1, 1, 100, 90))


def test_bad_data_gets_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        inspect(tmp_path / "missing.parquet", ["a"], "y")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet"):
        inspect(junk, ["a"], "y")
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1.0, None, 3.0], "s": ["x", "y", "z"], "y": [1.0, 2.0, 3.0]}), p)
    with pytest.raises(DataError, match=r"no column\(s\) \['b'\]"):
        inspect(p, ["a", "b"], "y")
    with pytest.raises(DataError, match="numeric"):
        inspect(p, ["s"], "y")
    with pytest.raises(DataError, match="null values"):
        read_shard(
            p, ["a"], "y", rank=0, world=1, seed=0, validation_fraction=0.0, classification=False
        )
    n = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"a": [1.0, float("nan")], "y": [1.0, 2.0]}), n)
    with pytest.raises(DataError, match="NaN"):
        read_shard(
            n, ["a"], "y", rank=0, world=1, seed=0, validation_fraction=0.0, classification=False
        )
