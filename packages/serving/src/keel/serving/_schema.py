"""Input validation against an artifact's input schema, and output decoding.

Every value is checked (type, finiteness, range, category, nullability) and *every* bad
field is reported, not only the first: the caller fixes a request in one round trip.
Valid rows become one float32 matrix in the schema's column order (categories as their
index in ``categories``, bools as 0/1, nulls of nullable fields as NaN) — the model's input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from keel.serving._errors import ConfigError, InvalidInputError

MAX_REPORTED_ERRORS = 100
_INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_V2_DATATYPES = {
    "bool": "BOOL",
    "int32": "INT32",
    "int64": "INT64",
    "float32": "FP32",
    "float64": "FP64",
    "category": "BYTES",
    "string": "BYTES",
}


@dataclass(frozen=True)
class Field:
    """One compiled schema field (a keel.artifacts FieldSpec, ready for checking)."""

    name: str
    dtype: str
    min: float | None
    max: float | None
    categories: tuple[str, ...] | None
    nullable: bool

    @property
    def v2_datatype(self) -> str:
        return _V2_DATATYPES[self.dtype]

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "nullable": self.nullable}
        if self.min is not None:
            d["min"] = self.min
        if self.max is not None:
            d["max"] = self.max
        if self.categories is not None:
            d["categories"] = list(self.categories)
        return d


def compile_fields(specs: Sequence[Any], *, role: str) -> tuple[Field, ...]:
    """FieldSpecs (anything with name/dtype/min/max/categories/nullable) -> Fields."""
    out = []
    for s in specs:
        cats = tuple(s.categories) if s.categories is not None else None
        if s.dtype == "category" and not cats:
            raise ConfigError(f"{role} field {s.name!r}: a category field needs its categories")
        if role == "input" and s.dtype == "string":
            raise ConfigError(
                f"input field {s.name!r} is a free string: a torch model cannot take it; "
                "declare it as a category with its categories"
            )
        out.append(Field(s.name, s.dtype, s.min, s.max, cats, bool(s.nullable)))
    names = [f.name for f in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{role} schema names a field twice: {names}")
    return tuple(out)


_FLOAT32_MAX = 3.4028234663852886e38


def _float_bounds(f: Field) -> tuple[float, float]:
    """The closed range a float field's values must lie in (its min/max; float32's range)."""
    lim = _FLOAT32_MAX if f.dtype == "float32" else math.inf
    lo = -lim if f.min is None else max(f.min, -lim)
    hi = lim if f.max is None else min(f.max, lim)
    return lo, hi


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


class InputSchema:
    """The model's input contract; ``encode_rows``/``encode_columns`` validate and encode."""

    def __init__(self, fields: Sequence[Field]) -> None:
        self.fields = tuple(fields)
        self.names = tuple(f.name for f in self.fields)
        self._index = {n: i for i, n in enumerate(self.names)}
        self._cat_index = {
            f.name: {c: float(i) for i, c in enumerate(f.categories)}
            for f in self.fields
            if f.categories is not None
        }
        # the vectorised path of encode_rows: every field a float with optional bounds
        self._all_float = bool(self.fields) and all(
            f.dtype in ("float32", "float64") for f in self.fields
        )
        bounds = [_float_bounds(f) for f in self.fields]
        self._lo = np.array([lo for lo, _ in bounds], dtype=np.float64)
        self._hi = np.array([hi for _, hi in bounds], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.fields)

    def check_value(self, f: Field, v: Any) -> tuple[float, str | None]:
        """(encoded value, None) or (nan, what is wrong)."""
        if v is None:
            return (math.nan, None) if f.nullable else (math.nan, "is required (not nullable)")
        dt = f.dtype
        if dt == "bool":
            if isinstance(v, bool):
                return float(v), None
            return math.nan, f"must be a boolean, got {_type_name(v)}"
        if dt == "category":
            if not isinstance(v, str):
                return math.nan, f"must be a string category, got {_type_name(v)}"
            idx = self._cat_index[f.name].get(v)
            if idx is None:
                return math.nan, f"{v[:64]!r} is not one of {list(f.categories or ())}"
            return idx, None
        if isinstance(v, bool) or not isinstance(v, int | float):
            return math.nan, f"must be a number ({dt}), got {_type_name(v)}"
        if isinstance(v, float) and not math.isfinite(v):
            return math.nan, f"must be finite, got {v}"
        if dt in _INT_BOUNDS:
            if isinstance(v, float):
                if not v.is_integer():
                    return math.nan, f"must be an integer ({dt}), got {v}"
                v = int(v)
            lo, hi = _INT_BOUNDS[dt]
            if not lo <= v <= hi:
                return math.nan, f"is out of the {dt} range"
        try:
            x = float(v)
        except OverflowError:
            return math.nan, f"is out of the {dt} range"
        if dt == "float32" and abs(x) > 3.4028234663852886e38:
            return math.nan, "is out of the float32 range"
        if f.min is not None and x < f.min:
            return math.nan, f"must be >= {f.min}, got {v}"
        if f.max is not None and x > f.max:
            return math.nan, f"must be <= {f.max}, got {v}"
        return x, None

    def _encode_floats(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
        """All-float schemas: the matrix in a few NumPy calls when every row holds exactly
        the schema's fields as finite in-range numbers; None otherwise (then the per-value
        path runs and names what is wrong)."""
        names, d = self.names, len(self.fields)
        vals: list[Any] = []
        try:
            for row in rows:
                if len(row) != d:
                    return None
                vals.extend([row[k] for k in names])
        except (KeyError, TypeError):
            return None
        types = set(map(type, vals))
        if not types <= {float, int}:  # bool, str, None, ...: the slow path says which
            return None
        try:
            x = np.array(vals, dtype=np.float64).reshape(len(rows), d)
        except OverflowError:
            return None
        if not ((x >= self._lo) & (x <= self._hi)).all():  # also false for NaN/inf
            return None
        return x.astype(np.float32)

    def encode_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Rows (field -> JSON value) -> float32 matrix; InvalidInputError naming every bad
        field (missing, extra, wrong type, NaN/inf, out of range, unknown category)."""
        if self._all_float:
            fast = self._encode_floats(rows)
            if fast is not None:
                return fast
        n, d = len(rows), len(self.fields)
        out = np.empty((n, d), dtype=np.float32)
        errors: list[dict[str, Any]] = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                errors.append({"instance": i, "field": None, "error": "must be an object"})
                continue
            for j, f in enumerate(self.fields):
                if f.name not in row:
                    if f.nullable:
                        out[i, j] = math.nan
                        continue
                    errors.append({"instance": i, "field": f.name, "error": "is missing"})
                    continue
                x, err = self.check_value(f, row[f.name])
                if err is not None:
                    errors.append({"instance": i, "field": f.name, "error": err})
                out[i, j] = x
            if len(row) > d or any(k not in self._index for k in row):
                for k in row:
                    if k not in self._index:
                        errors.append(
                            {
                                "instance": i,
                                "field": str(k)[:128],
                                "error": "is not an input of this model",
                            }
                        )
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
        if errors:
            raise _invalid(errors)
        return out

    def encode_columns(self, columns: Mapping[str, Sequence[Any]], n: int) -> np.ndarray:
        """Columns (field -> n values) -> float32 matrix; same checks as ``encode_rows``."""
        errors: list[dict[str, Any]] = []
        out = np.empty((n, len(self.fields)), dtype=np.float32)
        for k in columns:
            if k not in self._index:
                errors.append({"field": str(k)[:128], "error": "is not an input of this model"})
        for j, f in enumerate(self.fields):
            col = columns.get(f.name)
            if col is None:
                errors.append({"field": f.name, "error": "is missing"})
                continue
            if len(col) != n:
                errors.append({"field": f.name, "error": f"has {len(col)} values, expected {n}"})
                continue
            for i, v in enumerate(col):
                x, err = self.check_value(f, v)
                if err is not None:
                    errors.append({"instance": i, "field": f.name, "error": err})
                    if len(errors) >= MAX_REPORTED_ERRORS:
                        raise _invalid(errors)
                out[i, j] = x
        if errors:
            raise _invalid(errors)
        return out


def _invalid(errors: list[dict[str, Any]]) -> InvalidInputError:
    errors = errors[:MAX_REPORTED_ERRORS]
    names = sorted({str(e["field"]) for e in errors if e.get("field") is not None})
    what = ", ".join(names) if names else "instances"
    return InvalidInputError(
        f"{len(errors)} invalid input value(s): {what} — see `errors` for each field and instance",
        errors,
    )


class OutputSchema:
    """Turns the model's output matrix into named, typed columns."""

    def __init__(self, fields: Sequence[Field]) -> None:
        self.fields = tuple(fields)
        self.names = tuple(f.name for f in self.fields)

    def decode(self, y: np.ndarray) -> dict[str, list[Any]]:
        """(n, k) outputs -> {field: n values}. One category field with k == its number of
        categories decodes as the argmax category; otherwise column j is field j."""
        if y.ndim == 1:
            y = y[:, None]
        k = y.shape[1]
        if len(self.fields) == 1 and self.fields[0].dtype == "category":
            f = self.fields[0]
            cats = f.categories or ()
            if k != len(cats):
                raise ConfigError(
                    f"model gives {k} outputs for {len(cats)} categories of {f.name!r}"
                )
            return {f.name: [cats[i] for i in np.argmax(y, axis=1).tolist()]}
        if k != len(self.fields):
            raise ConfigError(f"model gives {k} outputs; the output schema has {len(self.fields)}")
        out: dict[str, list[Any]] = {}
        for j, f in enumerate(self.fields):
            col = y[:, j]
            if f.dtype in ("int32", "int64"):
                out[f.name] = np.rint(col).astype(np.int64).tolist()
            elif f.dtype == "bool":
                out[f.name] = (col > 0.5).tolist()
            elif f.dtype == "category":
                cats = f.categories or ()
                idx = np.clip(np.rint(col), 0, len(cats) - 1).astype(np.int64)
                out[f.name] = [cats[i] for i in idx.tolist()]
            else:
                out[f.name] = col.astype(np.float64).tolist()
        return out
