"""Batch scoring on Ray Data (local Ray, small process-shared cluster): the same predictor
code as the Polars streaming path, the same output file; bad columns named; untrusted
artifacts refused before any cluster work."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from testutil.serving_artifacts import (
    Keys,
    bad_batch_frame,
    batch_frame,
    make_artifact,
    reference,
)

from keel.artifacts import TrustPolicy
from keel.serving import (
    InvalidInputError,
    ModelLoadError,
    load_predictor,
    score_parquet,
    score_parquet_ray,
)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One local Ray instance for the module: 2 CPUs (2 scoring actors), an 80 MiB object store, a short temp dir (Ray's socket paths must stay under 108 bytes)."""
    import ray

    from keel.serving import connect_ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tmp = f"/tmp/ks-ray-{os.getpid()}"
    connect_ray(num_cpus=2, object_store_bytes=80 << 20, tmp_dir=tmp)
    yield ray
    ray.shutdown()


def test_ray_output_is_the_polars_output(tmp_path: Path, keys: Keys, ray_cluster: Any) -> None:
    path, model = make_artifact(tmp_path, keys, views=False)
    df = batch_frame(1000)
    df.write_parquet(tmp_path / "in.parquet", row_group_size=100)
    p = load_predictor(path, keys.policy)
    score_parquet(p, tmp_path / "in.parquet", tmp_path / "polars.parquet", chunk_rows=256)
    rep = score_parquet_ray(
        path,
        keys.policy,
        tmp_path / "in.parquet",
        tmp_path / "ray.parquet",
        workers=2,
        block_rows=128,
        batch_rows=50,
    )
    assert rep.rows == 1000 and rep.digest == p.digest and rep.model == "credit"
    assert rep.chunks == 8  # partitioned: 1000 rows in blocks of 128 over 2 actors
    polars_out = pl.read_parquet(tmp_path / "polars.parquet")
    ray_out = pl.read_parquet(tmp_path / "ray.parquet")
    assert_frame_equal(ray_out, polars_out)  # same rows, order, columns, dtypes, values
    cat = {"web": 0.0, "pos": 1.0, "atm": 2.0}
    x = [
        [a, b, float(c), cat[d]]
        for a, b, c, d in df.select("f0", "f1", "f2", "channel").iter_rows()
    ]
    assert ray_out["p_default"].to_list() == pytest.approx(reference(model, x), abs=1e-6)
    assert not list(tmp_path.glob(".ray.parquet*"))


def test_ray_bad_columns_are_named_like_the_polars_path_and_no_output_is_left(
    tmp_path: Path, keys: Keys, ray_cluster: Any
) -> None:
    path, _ = make_artifact(tmp_path, keys, views=False)
    df = bad_batch_frame()
    df.write_parquet(tmp_path / "in.parquet", row_group_size=100)
    p = load_predictor(path, keys.policy)
    with pytest.raises(InvalidInputError) as polars_err:
        score_parquet(p, tmp_path / "in.parquet", tmp_path / "out.parquet", chunk_rows=100)
    with pytest.raises(InvalidInputError) as ray_err:
        score_parquet_ray(
            path,
            keys.policy,
            tmp_path / "in.parquet",
            tmp_path / "out.parquet",
            workers=1,
            block_rows=100,
        )
    errs = {e["field"]: e for e in ray_err.value.errors}
    assert errs["f0"]["first_row"] == 250 and errs["f0"]["rows"] == 1  # file rows, not block rows
    assert errs["channel"]["first_row"] == 200 and errs["channel"]["rows"] == 100
    assert ray_err.value.errors == polars_err.value.errors
    assert str(ray_err.value) == str(polars_err.value)
    assert not (tmp_path / "out.parquet").exists()
    assert not list(tmp_path.glob(".out.parquet*"))


def test_ray_empty_input_gives_an_empty_output_with_the_output_columns(
    tmp_path: Path, keys: Keys
) -> None:
    path, _ = make_artifact(tmp_path, keys, views=False)
    batch_frame(0).write_parquet(tmp_path / "in.parquet")
    rep = score_parquet_ray(path, keys.policy, tmp_path / "in.parquet", tmp_path / "out.parquet")
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert rep.rows == 0 and out.height == 0 and out.columns[-1] == "p_default"


def test_an_untrusted_artifact_is_refused_before_any_cluster_work(
    tmp_path: Path, keys: Keys
) -> None:
    path, _ = make_artifact(tmp_path, keys, views=False)
    batch_frame(10).write_parquet(tmp_path / "in.parquet")
    with pytest.raises(ModelLoadError, match="refused artifact"):
        score_parquet_ray(
            path, TrustPolicy((Keys().pub,)), tmp_path / "in.parquet", tmp_path / "out.parquet"
        )
    assert not (tmp_path / "out.parquet").exists()
