"""Batch scoring: chunked Parquet in/out equals the reference model; bad columns named."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from testutil.serving_artifacts import (
    Keys,
    bad_batch_frame,
    batch_frame,
    make_artifact,
    reference,
)

from keel.serving import InvalidInputError, load_predictor, score_parquet


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def test_chunked_scoring_equals_the_reference_model(tmp_path: Path, keys: Keys) -> None:
    path, model = make_artifact(tmp_path, keys, views=False)
    p = load_predictor(path, keys.policy)
    df = batch_frame(1000)
    df.write_parquet(tmp_path / "in.parquet", row_group_size=128)
    rep = score_parquet(
        p, tmp_path / "in.parquet", tmp_path / "out.parquet", chunk_rows=128, batch_rows=50
    )
    assert rep.rows == 1000 and rep.chunks == 8
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out.columns == [*df.columns, "p_default"]
    assert out.drop("p_default").equals(df)
    cat = {"web": 0.0, "pos": 1.0, "atm": 2.0}
    x = [
        [a, b, float(c), cat[d]]
        for a, b, c, d in df.select("f0", "f1", "f2", "channel").iter_rows()
    ]
    assert out["p_default"].to_list() == pytest.approx(reference(model, x), abs=1e-6)


def test_bad_columns_are_named_with_row_counts_and_no_output_is_left(
    tmp_path: Path, keys: Keys
) -> None:
    path, _ = make_artifact(tmp_path, keys, views=False)
    p = load_predictor(path, keys.policy)
    df = bad_batch_frame()
    df.write_parquet(tmp_path / "in.parquet", row_group_size=100)
    with pytest.raises(InvalidInputError) as ei:
        score_parquet(p, tmp_path / "in.parquet", tmp_path / "out.parquet", chunk_rows=100)
    errs = {e["field"]: e for e in ei.value.errors}
    assert set(errs) == {"f0", "channel"}  # both in the third chunk, reported together
    assert errs["f0"]["first_row"] == 250 and errs["f0"]["rows"] == 1
    assert errs["channel"]["first_row"] == 200 and errs["channel"]["rows"] == 100
    assert not (tmp_path / "out.parquet").exists()
    assert not list(tmp_path.glob(".out.parquet*"))
    batch_frame(10).drop("f1").write_parquet(tmp_path / "in2.parquet")
    with pytest.raises(InvalidInputError, match="f1") as ei:
        score_parquet(p, tmp_path / "in2.parquet", tmp_path / "out.parquet")
    assert ei.value.errors == [{"field": "f1", "error": "column is missing"}]


def test_missing_or_non_parquet_input_is_refused(tmp_path: Path, keys: Keys) -> None:
    path, _ = make_artifact(tmp_path, keys, views=False)
    p = load_predictor(path, keys.policy)
    with pytest.raises(InvalidInputError, match="does not exist"):
        score_parquet(p, tmp_path / "nope.parquet", tmp_path / "o.parquet")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(InvalidInputError, match="not a readable Parquet"):
        score_parquet(p, tmp_path / "bad.parquet", tmp_path / "o.parquet")
