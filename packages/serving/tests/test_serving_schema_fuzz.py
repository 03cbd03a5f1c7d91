"""Property: whatever JSON a caller sends, validation answers with the encoded matrix or an
InvalidInputError naming fields — never another exception — and valid rows round-trip."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from keel.artifacts import FieldSpec
from keel.serving import InputSchema, InvalidInputError, compile_fields

SCHEMA = InputSchema(
    compile_fields(
        [
            FieldSpec(name="a", dtype="float32", min=-10.0, max=10.0),
            FieldSpec(name="b", dtype="int64"),
            FieldSpec(name="c", dtype="category", categories=["x", "y"]),
            FieldSpec(name="d", dtype="bool", nullable=True),
        ],
        role="input",
    )
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=5,
)
rows = st.lists(
    st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e"]), json_values, max_size=5)
    | json_values,
    min_size=1,
    max_size=4,
)


@given(rows)
def test_any_json_is_encoded_or_refused_by_field(batch: list[Any]) -> None:
    try:
        x = SCHEMA.encode_rows(batch)
    except InvalidInputError as e:
        assert e.errors and all("error" in err for err in e.errors)
        return
    assert x.shape == (len(batch), 4)
    assert all(math.isfinite(v) for v in x[:, :3].ravel())


@given(
    st.floats(-10, 10, width=32),
    st.integers(-(2**62), 2**62),
    st.sampled_from(["x", "y"]),
    st.none() | st.booleans(),
)
def test_valid_rows_round_trip(a: float, b: int, c: str, d: bool | None) -> None:
    x = SCHEMA.encode_rows([{"a": a, "b": b, "c": c, "d": d}])
    assert x[0, 0] == a and x[0, 2] == ["x", "y"].index(c)
    assert math.isnan(x[0, 3]) if d is None else x[0, 3] == float(d)
