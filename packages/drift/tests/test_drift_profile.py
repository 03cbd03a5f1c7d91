"""ReferenceProfile: building, merging (property-tested), files, clear errors."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from drift_testdata import CATEGORICAL, NUMERIC, german_credit
from hypothesis import given
from hypothesis import strategies as st

from keel.drift import (
    CategoricalSummary,
    IncompatibleProfilesError,
    InvalidInputError,
    NumericSummary,
    ProfileFormatError,
    ProfileOptions,
    ReferenceProfile,
    build_profile,
)

OPTS = ProfileOptions(sketch_size=32, max_categories=5, n_bins=4, joint_sample_size=50)


@st.composite
def frames(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(1, 120))
    num = draw(
        st.lists(
            st.one_of(st.none(), st.floats(-1e3, 1e3), st.just(math.nan)), min_size=n, max_size=n
        )
    )
    ints = draw(st.lists(st.integers(0, 40), min_size=n, max_size=n))
    cat = draw(st.lists(st.one_of(st.none(), st.sampled_from("abcdefgh")), min_size=n, max_size=n))
    return pl.DataFrame(
        {"x": num, "k": ints, "c": cat}, schema={"x": pl.Float64, "k": pl.Int64, "c": pl.String}
    )


def assert_profile_matches(
    merged: ReferenceProfile, whole: ReferenceProfile, union: pl.DataFrame
) -> None:
    assert merged.row_count == whole.row_count == union.height
    for name in ("x", "k"):
        a, b = merged[name], whole[name]
        assert isinstance(a, NumericSummary) and isinstance(b, NumericSummary)
        assert (a.count, a.null_count) == (b.count, b.null_count)
        if b.count:
            assert (a.min, a.max) == (b.min, b.max)
            assert a.mean == pytest.approx(b.mean, rel=1e-9, abs=1e-9)
            assert a.m2 == pytest.approx(b.m2, rel=1e-7, abs=1e-6)
            # the merged sketch's CDF is within its stated error of the union's exact CDF
            vals = union[name].cast(pl.Float64).to_numpy()
            vals = np.sort(vals[np.isfinite(vals)])
            grid = np.unique(np.r_[vals, a.sketch.values])
            exact = np.searchsorted(vals, grid, side="right") / len(vals)
            assert np.max(np.abs(a.sketch.cdf(grid) - exact)) <= a.sketch.rank_error + 1e-9
    ca, cb = merged["c"], whole["c"]
    assert isinstance(ca, CategoricalSummary) and isinstance(cb, CategoricalSummary)
    assert (ca.count, ca.null_count) == (cb.count, cb.null_count)
    if not ca.truncated and not cb.truncated:
        assert ca.as_dict() == cb.as_dict()
    else:  # capped: each kept count is under-counted by at most the folded mass
        true_counts = dict(union["c"].drop_nulls().value_counts().iter_rows())
        for cat, c in ca.as_dict().items():
            assert true_counts[cat] - ca.other_count <= c <= true_counts[cat]


@given(st.lists(frames(), min_size=2, max_size=4))
def test_merge_equals_profile_of_union(parts: list[pl.DataFrame]) -> None:
    union = pl.concat(parts)
    profiles = [build_profile(p, categorical=["c"], options=OPTS, workers=1) for p in parts]
    merged = profiles[0]
    for p in profiles[1:]:
        merged = merged.merge(p)
    whole = build_profile(union, categorical=["c"], options=OPTS, workers=1)
    assert_profile_matches(merged, whole, union)


@given(frames())
def test_json_roundtrip_is_lossless(frame: pl.DataFrame) -> None:
    p = build_profile(
        frame, options=OPTS, metadata={"model": "m1"}, created_at="2026-01-01T00:00:00Z", workers=1
    )
    back = ReferenceProfile.from_json(p.to_json())
    assert back.to_json() == p.to_json()
    assert back.metadata == {"model": "m1"} and back.options == OPTS


def test_german_credit_profile(tmp_path) -> None:
    df = german_credit()
    p = build_profile(df, columns=NUMERIC + CATEGORICAL)
    assert p.numeric_columns == NUMERIC and p.categorical_columns == CATEGORICAL
    amount = p["credit_amount"]
    assert isinstance(amount, NumericSummary)
    raw = df["credit_amount"].to_numpy()
    assert (amount.count, amount.min, amount.max) == (1000, raw.min(), raw.max())
    assert amount.mean == pytest.approx(raw.mean()) and amount.std == pytest.approx(raw.std())
    assert amount.sketch.is_exact  # 921 distinct amounts <= 1024
    housing = p["housing"]
    assert isinstance(housing, CategoricalSummary)
    assert housing.as_dict() == dict(df["housing"].value_counts().iter_rows())
    path = p.save(tmp_path / "profile.json")
    assert path.stat().st_size < 100_000
    assert ReferenceProfile.load(path).to_json() == p.to_json()
    doc = json.loads(path.read_bytes())
    assert doc["format"] == "keel.drift.profile" and doc["version"] == 1
    assert len(doc["columns"]["age_in_years"]["bin_edges"]) == 9


def test_column_kinds_and_nulls() -> None:
    df = pl.DataFrame(
        {
            "f": [1.0, None, float("nan"), float("inf"), 3.0],
            "b": [True, False, None, True, True],
            "i": [1, 2, 2, 3, 3],
        }
    )
    p = build_profile(df, categorical=["i"])
    f = p["f"]
    assert (
        isinstance(f, NumericSummary) and (f.count, f.null_count) == (2, 3) and f.null_rate == 0.6
    )
    assert p["b"].kind == "categorical" and p["i"].kind == "categorical"
    assert p["i"].as_dict() == {"1": 1, "2": 2, "3": 2}  # type: ignore[union-attr]


def test_category_cap_folds_into_other() -> None:
    df = pl.DataFrame({"c": list("aaaabbbccd")})
    p = build_profile(df, options=ProfileOptions(max_categories=2))
    c = p["c"]
    assert isinstance(c, CategoricalSummary)
    assert c.as_dict() == {"a": 4, "b": 3} and c.other_count == 3 and c.truncated


def test_bad_inputs_give_clear_errors(tmp_path) -> None:
    with pytest.raises(InvalidInputError, match="polars.DataFrame"):
        build_profile({"a": [1]})  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="not in the data"):
        build_profile(pl.DataFrame({"a": [1]}), columns=["b"])
    with pytest.raises(InvalidInputError, match="neither numeric nor categorical"):
        build_profile(pl.DataFrame({"d": [pl.date(2020, 1, 1)]}).select(pl.col("d")))
    with pytest.raises(InvalidInputError, match="sketch_size"):
        ProfileOptions(sketch_size=1)
    with pytest.raises(InvalidInputError, match="does not exist"):
        ReferenceProfile.load(tmp_path / "nope.json")
    with pytest.raises(InvalidInputError, match="not in the profile"):
        build_profile(pl.DataFrame({"a": [1.0]}))["b"]


def test_file_schema_is_checked(tmp_path) -> None:
    p = build_profile(pl.DataFrame({"a": [1.0, 2.0], "c": ["x", "y"]}))
    doc = json.loads(p.to_json())
    cases = {
        "version 99 is not supported": {**doc, "version": 99},
        "format is": {**doc, "format": "something.else"},
        "unknown field": {**doc, "surprise": 1},
        "missing required field": {k: v for k, v in doc.items() if k != "row_count"},
    }
    for match, bad in cases.items():
        with pytest.raises(ProfileFormatError, match=match):
            ReferenceProfile.from_json(json.dumps(bad))
    doc["columns"]["a"]["sketch"]["values"] = "AAAA"
    with pytest.raises(ProfileFormatError, match="float64"):
        ReferenceProfile.from_json(json.dumps(doc))
    with pytest.raises(ProfileFormatError, match="not valid JSON"):
        ReferenceProfile.from_json(b"{not json")
    path = tmp_path / "p.json"
    path.write_text("[]")
    with pytest.raises(ProfileFormatError, match=str(path)):
        ReferenceProfile.load(path)


def test_incompatible_merges_are_refused() -> None:
    a = build_profile(pl.DataFrame({"a": [1.0]}))
    with pytest.raises(IncompatibleProfilesError, match="columns differ"):
        a.merge(build_profile(pl.DataFrame({"b": [1.0]})))
    with pytest.raises(IncompatibleProfilesError, match="options differ"):
        a.merge(build_profile(pl.DataFrame({"a": [1.0]}), options=ProfileOptions(n_bins=5)))
    with pytest.raises(IncompatibleProfilesError, match="numeric in one"):
        a.merge(build_profile(pl.DataFrame({"a": ["x"]})))


def test_joint_sample_is_reproducible_and_bounded() -> None:
    rng = np.random.default_rng(3)
    df = pl.DataFrame({"a": rng.normal(size=5000), "b": rng.normal(size=5000), "c": ["x"] * 5000})
    p1 = build_profile(df, rng=np.random.default_rng(1))
    p2 = build_profile(df, rng=np.random.default_rng(1))
    assert p1.joint_sample is not None and p2.joint_sample is not None
    assert p1.joint_sample.columns == ("a", "b")
    assert p1.joint_sample.values.shape == (2000, 2)
    assert np.array_equal(p1.joint_sample.values, p2.joint_sample.values)
    merged = p1.merge(p2)
    assert merged.joint_sample is not None and merged.joint_sample.values.shape == (2000, 2)
    assert merged.joint_sample.population == 10000


def test_unusable_profiles_are_refused_at_write_time(tmp_path) -> None:
    from keel.drift import InvalidInputError, build_profile

    empty = build_profile(pl.DataFrame({"a": pl.Series([], dtype=pl.Float64)}))
    with pytest.raises(InvalidInputError, match="empty reference profile"):
        empty.save(tmp_path / "p.json")
    blank = build_profile(
        pl.DataFrame({"a": [1.0, 2.0], "b": pl.Series([None, None], dtype=pl.Float64)})
    )
    with pytest.raises(InvalidInputError, match="no values.*: b"):
        blank.save(tmp_path / "p.json")
    assert not (tmp_path / "p.json").exists()
