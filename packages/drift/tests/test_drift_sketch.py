"""QuantileSketch: exactness, the rank-error bound, merging, serialisation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keel.drift import InvalidInputError, ProfileFormatError, QuantileSketch

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
samples = hnp.arrays(np.float64, st.integers(1, 400), elements=finite)
# data with many ties (what real columns look like: rounded amounts, ages, counts)
tied = hnp.arrays(np.float64, st.integers(1, 400), elements=st.integers(-20, 20).map(float))


def ecdf(data: np.ndarray, x: np.ndarray) -> np.ndarray:
    s = np.sort(data)
    return np.searchsorted(s, x, side="right") / len(s)


def max_cdf_error(sk: QuantileSketch, data: np.ndarray) -> float:
    grid = np.unique(np.r_[data, sk.values])
    # right-continuous step functions: comparing at every jump point gives the sup
    return float(np.max(np.abs(sk.cdf(grid) - ecdf(data, grid))))


@given(st.one_of(samples, tied))
def test_small_inputs_are_exact(data: np.ndarray) -> None:
    sk = QuantileSketch.from_values(data, max_size=512)
    assert sk.is_exact
    assert sk.total == len(data)
    assert max_cdf_error(sk, data) <= 1e-12


@given(st.one_of(samples, tied), st.integers(2, 64))
def test_compaction_respects_rank_error(data: np.ndarray, size: int) -> None:
    sk = QuantileSketch.from_values(data, max_size=size)
    assert len(sk) <= size
    assert sk.total == pytest.approx(len(data))
    assert sk.rank_error <= 0.5 / size
    assert max_cdf_error(sk, data) <= sk.rank_error + 1e-12
    assert set(sk.values.tolist()) <= set(data.tolist())  # values are real data points


@given(st.lists(st.one_of(samples, tied), min_size=2, max_size=6), st.integers(2, 64))
def test_merge_of_parts_respects_its_bound(parts: list[np.ndarray], size: int) -> None:
    sketches = [QuantileSketch.from_values(p, max_size=size) for p in parts]
    merged = sketches[0]
    for s in sketches[1:]:
        merged = merged.merge(s)
    union = np.concatenate(parts)
    assert len(merged) <= size
    assert merged.total == pytest.approx(len(union))
    assert merged.rank_error <= len(parts) * 0.5 / size + 1e-12
    assert max_cdf_error(merged, union) <= merged.rank_error + 1e-9


def test_merge_of_exact_sketches_is_exact() -> None:
    a = QuantileSketch.from_values(np.array([1.0, 2.0, 2.0, 5.0]))
    b = QuantileSketch.from_values(np.array([2.0, 3.0]))
    m = a.merge(b)
    assert m.is_exact
    assert m.values.tolist() == [1.0, 2.0, 3.0, 5.0]
    assert m.weights.tolist() == [1.0, 3.0, 1.0, 1.0]


def test_quantile_is_smallest_value_reaching_q() -> None:
    sk = QuantileSketch.from_values(np.arange(1.0, 11.0))
    assert sk.quantile(np.array([0.1, 0.15, 0.5, 1.0])).tolist() == [1.0, 2.0, 5.0, 10.0]


@given(st.one_of(samples, tied), st.integers(2, 64))
def test_roundtrip(data: np.ndarray, size: int) -> None:
    sk = QuantileSketch.from_values(data, max_size=size)
    back = QuantileSketch.from_dict(sk.to_dict())
    assert np.array_equal(back.values, sk.values)
    assert np.array_equal(back.weights, sk.weights)
    assert back.rank_error == sk.rank_error and back.max_size == sk.max_size


def test_bad_input_is_rejected_clearly() -> None:
    with pytest.raises(InvalidInputError, match="NaN"):
        QuantileSketch.from_values(np.array([1.0, np.nan]))
    with pytest.raises(InvalidInputError, match="increasing"):
        QuantileSketch(np.array([2.0, 1.0]), np.array([1.0, 1.0]), 0.0, 16)
    with pytest.raises(InvalidInputError, match="max_size"):
        QuantileSketch.from_values(np.array([1.0]), max_size=1)
    with pytest.raises(ProfileFormatError, match="base64"):
        QuantileSketch.from_dict({"values": "!!", "weights": "", "rank_error": 0, "max_size": 16})
    with pytest.raises(ProfileFormatError, match="missing field"):
        QuantileSketch.from_dict({"values": ""})
