"""ReferenceProfile: the training data's statistics, computed once and saved with the model.

A profile holds, per numeric column, a mergeable quantile sketch (exact while the
column has at most ``sketch_size`` distinct values) from which quantile bins are
derived, plus count, nulls, range, mean and variance; per categorical column the
value counts of the ``max_categories`` most frequent values and an "other"
bucket; and a small uniform row sample of the numeric columns for the
multivariate (domain-classifier) test. NaN and infinite values count as nulls.

Profiles are mergeable: ``merge(profile(A), profile(B))`` equals
``profile(A + B)`` (all rows of both) exactly for counts, nulls, ranges, means/variances (to float
rounding) and uncapped categorical counts; sketches carry their own rank-error
bound (see ``_sketch``); capped categorical counts may be under-counted by at most
the inputs' "other" counts. So a profile can be built in chunks or in parallel.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
import polars as pl
from numpy.typing import NDArray

from keel.drift._errors import (
    IncompatibleProfilesError,
    InvalidInputError,
    ProfileFormatError,
)
from keel.drift._sketch import DEFAULT_SKETCH_SIZE, FloatArray, QuantileSketch, _decode, _encode
from keel.drift._stats import SortedSample

PROFILE_FORMAT = "keel.drift.profile"
PROFILE_VERSION = 1
OTHER_CATEGORY = "__other__"


@dataclass(frozen=True)
class ProfileOptions:
    """How detailed a profile is. Profiles merge only when their options agree."""

    sketch_size: int = DEFAULT_SKETCH_SIZE
    max_categories: int = 100
    n_bins: int = 10
    joint_sample_size: int = 2000

    def __post_init__(self) -> None:
        if not 16 <= self.sketch_size <= 1_000_000:
            raise InvalidInputError(f"sketch_size must be in [16, 1e6], got {self.sketch_size}")
        if not 1 <= self.max_categories <= 100_000:
            raise InvalidInputError(
                f"max_categories must be in [1, 1e5], got {self.max_categories}"
            )
        if not 2 <= self.n_bins <= 1000:
            raise InvalidInputError(f"n_bins must be in [2, 1000], got {self.n_bins}")
        if not 0 <= self.joint_sample_size <= 1_000_000:
            raise InvalidInputError(
                f"joint_sample_size must be in [0, 1e6], got {self.joint_sample_size}"
            )


# ---------------------------------------------------------------------------------------
# Column summaries
# ---------------------------------------------------------------------------------------
class _NullCounts:
    """`rows` and `null_rate` of a column summary, from its `count` and `null_count`."""

    count: int
    null_count: int

    @property
    def rows(self) -> int:
        return self.count + self.null_count

    @property
    def null_rate(self) -> float:
        return self.null_count / self.rows if self.rows else 0.0


@dataclass(frozen=True, eq=False)
class NumericSummary(_NullCounts):
    """Statistics of one numeric column (NaN/inf counted as nulls)."""

    dtype: str
    count: int
    null_count: int
    min: float
    max: float
    mean: float
    m2: float  # sum of squared deviations from the mean (Chan et al. merge)
    sketch: QuantileSketch
    kind: Literal["numeric"] = "numeric"
    # Current-window data compared exactly (sorted raw values); None for reference profiles.
    sample: SortedSample | None = None

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else math.nan

    def bin_edges(self, n_bins: int) -> FloatArray:
        """Inner edges of (up to) ``n_bins`` quantile bins ``(-inf, e1], (e1, e2], ..., (ek, inf)``."""
        if not self.count:
            return np.empty(0)
        qs = np.arange(1, n_bins, dtype=np.float64) / n_bins
        edges = np.unique(self.sketch.quantile(qs))
        return edges[edges < self.max] if len(edges) > 1 else edges

    def merge(self, other: NumericSummary) -> NumericSummary:
        n = self.count + other.count
        if not other.count or not self.count:
            base = self if self.count else other
            return NumericSummary(
                _merge_dtype(self.dtype, other.dtype),
                base.count,
                self.null_count + other.null_count,
                base.min,
                base.max,
                base.mean,
                base.m2,
                self.sketch.merge(other.sketch),
            )
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / n
        m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / n
        return NumericSummary(
            _merge_dtype(self.dtype, other.dtype),
            n,
            self.null_count + other.null_count,
            min(self.min, other.min),
            max(self.max, other.max),
            mean,
            m2,
            self.sketch.merge(other.sketch),
        )


@dataclass(frozen=True, eq=False)
class CategoricalSummary(_NullCounts):
    """Value counts of one categorical column: the most frequent values plus an "other" bucket."""

    dtype: str
    count: int
    null_count: int
    categories: tuple[str, ...]
    counts: NDArray[np.int64]
    other_count: int
    max_categories: int
    kind: Literal["categorical"] = "categorical"

    def __post_init__(self) -> None:
        if len(self.categories) != len(self.counts):
            raise InvalidInputError("categories and counts differ in length")
        if len(self.categories) > self.max_categories:
            raise InvalidInputError("more categories than max_categories")
        if int(self.counts.sum()) + self.other_count != self.count:
            raise InvalidInputError("category counts do not add up to count")

    @property
    def truncated(self) -> bool:
        """True when some values were folded into the "other" bucket (cap reached)."""
        return self.other_count > 0

    def as_dict(self) -> dict[str, int]:
        return dict(zip(self.categories, (int(c) for c in self.counts), strict=True))

    def merge(self, other: CategoricalSummary) -> CategoricalSummary:
        cap = min(self.max_categories, other.max_categories)
        merged = self.as_dict()
        for cat, c in other.as_dict().items():
            merged[cat] = merged.get(cat, 0) + c
        cats, counts, folded = _cap_counts(merged, cap)
        return CategoricalSummary(
            _merge_dtype(self.dtype, other.dtype),
            self.count + other.count,
            self.null_count + other.null_count,
            cats,
            counts,
            self.other_count + other.other_count + folded,
            cap,
        )


ColumnSummary = NumericSummary | CategoricalSummary


def merge_summaries(a: ColumnSummary, b: ColumnSummary) -> ColumnSummary | None:
    """Merge two summaries of the same kind; None when the kinds differ."""
    if isinstance(a, NumericSummary):
        return a.merge(b) if isinstance(b, NumericSummary) else None
    return a.merge(b) if isinstance(b, CategoricalSummary) else None


def _merge_dtype(a: str, b: str) -> str:
    parts = a.split("|")
    return a if b in parts else f"{a}|{b}"


def _cap_counts(
    counts: Mapping[str, int], cap: int
) -> tuple[tuple[str, ...], NDArray[np.int64], int]:
    """Keep the ``cap`` most frequent (ties broken by value), return (cats, counts, folded)."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept, rest = items[:cap], items[cap:]
    return (
        tuple(k for k, _ in kept),
        np.array([v for _, v in kept], dtype=np.int64),
        int(sum(v for _, v in rest)),
    )


# ---------------------------------------------------------------------------------------
# Joint sample (for the multivariate test)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class JointSample:
    """A uniform sample of rows of the numeric columns (NaN = missing), ``rows`` x ``columns``."""

    columns: tuple[str, ...]
    values: FloatArray
    population: int  # rows the sample was drawn from

    def merge(self, other: JointSample, size: int, rng: np.random.Generator) -> JointSample:
        if self.columns != other.columns:
            raise IncompatibleProfilesError("joint samples cover different columns")
        pop = self.population + other.population
        if not pop:
            return self
        take_a = min(len(self.values), round(size * self.population / pop))
        take_b = min(len(other.values), size - take_a)
        a = (
            self.values[rng.choice(len(self.values), take_a, replace=False)]
            if take_a
            else self.values[:0]
        )
        b = (
            other.values[rng.choice(len(other.values), take_b, replace=False)]
            if take_b
            else other.values[:0]
        )
        return JointSample(self.columns, np.vstack([a, b]), pop)


# ---------------------------------------------------------------------------------------
# The profile
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ReferenceProfile:
    """Reference statistics of a data set. Build with :func:`build_profile`."""

    columns: Mapping[str, ColumnSummary]
    row_count: int
    options: ProfileOptions = field(default_factory=ProfileOptions)
    joint_sample: JointSample | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    created_at: str | None = None

    def __getitem__(self, name: str) -> ColumnSummary:
        try:
            return self.columns[name]
        except KeyError:
            raise InvalidInputError(
                f"column {name!r} is not in the profile (it has: {', '.join(self.columns)})"
            ) from None

    @property
    def numeric_columns(self) -> list[str]:
        return [c for c, s in self.columns.items() if s.kind == "numeric"]

    @property
    def categorical_columns(self) -> list[str]:
        return [c for c, s in self.columns.items() if s.kind == "categorical"]

    def merge(
        self, other: ReferenceProfile, rng: np.random.Generator | None = None
    ) -> ReferenceProfile:
        """The profile of both inputs' rows together (see the module docstring for the error)."""
        if self.options != other.options:
            raise IncompatibleProfilesError(f"options differ: {self.options} vs {other.options}")
        if list(self.columns) != list(other.columns):
            raise IncompatibleProfilesError(
                f"columns differ: {list(self.columns)} vs {list(other.columns)}"
            )
        merged: dict[str, ColumnSummary] = {}
        for name, a in self.columns.items():
            b = other.columns[name]
            both = merge_summaries(a, b)
            if both is not None:
                merged[name] = both
            else:
                raise IncompatibleProfilesError(
                    f"column {name!r} is {a.kind} in one profile, {b.kind} in the other"
                )
        joint = None
        if self.joint_sample is not None and other.joint_sample is not None:
            joint = self.joint_sample.merge(
                other.joint_sample,
                self.options.joint_sample_size,
                rng if rng is not None else np.random.default_rng(self.row_count + other.row_count),
            )
        return ReferenceProfile(
            merged,
            self.row_count + other.row_count,
            self.options,
            joint,
            {**self.metadata, **other.metadata},
            self.created_at or other.created_at,
        )

    # -- files -------------------------------------------------------------------------
    def to_json(self) -> bytes:
        return msgspec.json.encode(_to_file(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> ReferenceProfile:
        try:
            raw = msgspec.json.decode(data, type=_ProfileFile)
        except msgspec.ValidationError as exc:
            raise ProfileFormatError(f"not a valid {PROFILE_FORMAT} file: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise ProfileFormatError(f"profile is not valid JSON: {exc}") from exc
        return _from_file(raw)

    def check_usable(self) -> None:
        """Raise if this profile could never judge anything: no rows, or a column with no
        values (every check against it would be "not judged")."""
        if not self.row_count or not self.columns:
            raise InvalidInputError(
                "refusing an empty reference profile (0 rows): profile the training data, "
                "not an empty file or an empty filter result"
            )
        empty = [name for name, s in self.columns.items() if not s.count]
        if empty:
            raise InvalidInputError(
                f"refusing a reference profile with columns that have no values "
                f"(all null/NaN in {self.row_count:,} rows): {', '.join(empty)}; "
                "leave them out (columns=[...] / --columns) or fix the data"
            )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile as JSON (atomically: temp file + rename). An unusable profile
        (no rows, or a column with no values) is refused: see :meth:`check_usable`."""
        self.check_usable()
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(self.to_json())
        tmp.replace(target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReferenceProfile:
        p = Path(path)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise InvalidInputError(f"profile file {p} does not exist") from None
        try:
            return cls.from_json(data)
        except ProfileFormatError as exc:
            raise ProfileFormatError(f"{p}: {exc}") from exc


# ---------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------
def is_numeric_dtype(dtype: pl.DataType) -> bool:
    return bool(dtype.is_numeric()) and dtype != pl.Boolean


def is_categorical_dtype(dtype: pl.DataType) -> bool:
    return dtype in (pl.String, pl.Boolean, pl.Categorical) or isinstance(
        dtype, pl.Enum | pl.Categorical
    )


def resolve_columns(
    frame: pl.DataFrame, columns: Sequence[str] | None, categorical: Iterable[str]
) -> dict[str, Literal["numeric", "categorical"]]:
    """Decide each column's kind; raise a clear error for missing or unsupported columns."""
    if not isinstance(frame, pl.DataFrame):
        raise InvalidInputError(f"expected a polars.DataFrame, got {type(frame).__name__}")
    cats = set(categorical)
    names = list(columns) if columns is not None else list(frame.columns)
    schema = frame.schema
    missing = [c for c in [*names, *cats] if c not in schema]
    if missing:
        raise InvalidInputError(f"columns not in the data: {missing}; the data has {frame.columns}")
    kinds: dict[str, Literal["numeric", "categorical"]] = {}
    for name in names:
        dtype = schema[name]
        if name in cats or is_categorical_dtype(dtype):
            kinds[name] = "categorical"
        elif is_numeric_dtype(dtype):
            kinds[name] = "numeric"
        else:
            raise InvalidInputError(
                f"column {name!r} has dtype {dtype}, which is neither numeric nor categorical; "
                "leave it out with columns=[...] or cast it"
            )
    if not kinds:
        raise InvalidInputError("no columns to profile")
    return kinds


def numeric_values(series: pl.Series) -> tuple[FloatArray, int]:
    """Finite float64 values of a column and its null count (nulls + NaN + inf)."""
    arr = series.cast(pl.Float64).to_numpy()
    finite = np.isfinite(arr)
    if finite.all():
        return arr, 0
    return arr[finite], int(len(arr) - finite.sum())


def _numeric_summary(series: pl.Series, sketch_size: int) -> NumericSummary:
    vals, nulls = numeric_values(series)
    if not len(vals):
        return NumericSummary(
            str(series.dtype),
            0,
            nulls,
            math.nan,
            math.nan,
            math.nan,
            0.0,
            QuantileSketch.empty(sketch_size),
        )
    s = np.sort(vals)
    mean = float(s.mean())
    m2 = float(np.square(s - mean).sum())
    return NumericSummary(
        str(series.dtype),
        len(s),
        nulls,
        float(s[0]),
        float(s[-1]),
        mean,
        m2,
        QuantileSketch.from_sorted(s, sketch_size),
    )


def category_counts(series: pl.Series) -> tuple[dict[str, int], int]:
    """Value counts of a column as strings, and its null count."""
    s = series.cast(pl.String)
    nulls = s.null_count()
    vc = s.drop_nulls().value_counts()
    return dict(zip(vc[vc.columns[0]].to_list(), vc["count"].to_list(), strict=True)), nulls


def _categorical_summary(series: pl.Series, cap: int) -> CategoricalSummary:
    counts, nulls = category_counts(series)
    cats, kept, folded = _cap_counts(counts, cap)
    return CategoricalSummary(
        str(series.dtype), int(sum(counts.values())), nulls, cats, kept, folded, cap
    )


def build_profile(
    frame: pl.DataFrame,
    *,
    columns: Sequence[str] | None = None,
    categorical: Iterable[str] = (),
    options: ProfileOptions | None = None,
    rng: np.random.Generator | None = None,
    metadata: Mapping[str, str] | None = None,
    created_at: str | None = None,
    workers: int | None = None,
) -> ReferenceProfile:
    """Profile ``frame`` (all columns, or ``columns``).

    Numeric dtypes are numeric unless listed in ``categorical``; strings, booleans,
    categoricals and enums are categorical; other dtypes are an error. ``rng``
    draws the joint sample (default: a generator seeded with 0, so profiles are
    reproducible). Columns are processed by ``workers`` threads (NumPy releases the GIL).
    """
    opts = options or ProfileOptions()
    kinds = resolve_columns(frame, columns, categorical)

    def one(name: str) -> ColumnSummary:
        if kinds[name] == "numeric":
            return _numeric_summary(frame[name], opts.sketch_size)
        return _categorical_summary(frame[name], opts.max_categories)

    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        summaries = dict(zip(kinds, pool.map(one, kinds), strict=True))
    numeric = [c for c, k in kinds.items() if k == "numeric"]
    joint = None
    if numeric and opts.joint_sample_size:
        gen = rng if rng is not None else np.random.default_rng(0)
        n = frame.height
        take = min(n, opts.joint_sample_size)
        rows = np.sort(gen.choice(n, take, replace=False)) if take < n else np.arange(n)
        mat = frame.select([pl.col(c).cast(pl.Float64) for c in numeric])[rows].to_numpy()
        mat = np.where(np.isfinite(mat), mat, np.nan).astype(np.float64)
        joint = JointSample(tuple(numeric), mat, n)
    return ReferenceProfile(summaries, frame.height, opts, joint, dict(metadata or {}), created_at)


# ---------------------------------------------------------------------------------------
# The file format (msgspec structs: decoding validates the schema)
# ---------------------------------------------------------------------------------------
class _SketchFile(msgspec.Struct, forbid_unknown_fields=True):
    max_size: int
    rank_error: float
    values: str
    weights: str


class _NumericFile(msgspec.Struct, tag="numeric", forbid_unknown_fields=True):
    dtype: str
    count: int
    null_count: int
    min: float | None
    max: float | None
    mean: float | None
    m2: float
    sketch: _SketchFile
    bin_edges: list[float]  # derived (for readers); recomputed on load


class _CategoricalFile(msgspec.Struct, tag="categorical", forbid_unknown_fields=True):
    dtype: str
    count: int
    null_count: int
    categories: list[str]
    counts: list[int]
    other_count: int
    max_categories: int


class _OptionsFile(msgspec.Struct, forbid_unknown_fields=True):
    sketch_size: int
    max_categories: int
    n_bins: int
    joint_sample_size: int


class _JointFile(msgspec.Struct, forbid_unknown_fields=True):
    columns: list[str]
    rows: int
    population: int
    values: str  # base64 float64 row-major, NaN = missing


class _ProfileFile(msgspec.Struct, forbid_unknown_fields=True):
    format: str
    version: int
    row_count: int
    options: _OptionsFile
    columns: dict[str, _NumericFile | _CategoricalFile]
    joint_sample: _JointFile | None = None
    metadata: dict[str, str] = {}
    created_at: str | None = None


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else x


def _to_file(p: ReferenceProfile) -> _ProfileFile:
    cols: dict[str, _NumericFile | _CategoricalFile] = {}
    for name, s in p.columns.items():
        if isinstance(s, NumericSummary):
            cols[name] = _NumericFile(
                s.dtype,
                s.count,
                s.null_count,
                _nan_to_none(s.min),
                _nan_to_none(s.max),
                _nan_to_none(s.mean),
                s.m2,
                _SketchFile(**s.sketch.to_dict()),
                [float(e) for e in s.bin_edges(p.options.n_bins)],
            )
        else:
            cols[name] = _CategoricalFile(
                s.dtype,
                s.count,
                s.null_count,
                list(s.categories),
                [int(c) for c in s.counts],
                s.other_count,
                s.max_categories,
            )
    joint = None
    if p.joint_sample is not None:
        js = p.joint_sample
        joint = _JointFile(
            list(js.columns), int(js.values.shape[0]), js.population, _encode(js.values.ravel())
        )
    o = p.options
    return _ProfileFile(
        PROFILE_FORMAT,
        PROFILE_VERSION,
        p.row_count,
        _OptionsFile(o.sketch_size, o.max_categories, o.n_bins, o.joint_sample_size),
        cols,
        joint,
        dict(p.metadata),
        p.created_at,
    )


def _from_file(f: _ProfileFile) -> ReferenceProfile:
    if f.format != PROFILE_FORMAT:
        raise ProfileFormatError(f"format is {f.format!r}, expected {PROFILE_FORMAT!r}")
    if f.version != PROFILE_VERSION:
        raise ProfileFormatError(
            f"profile format version {f.version} is not supported (this keel.drift reads version "
            f"{PROFILE_VERSION}); rebuild the profile with this version"
        )
    try:
        opts = ProfileOptions(**msgspec.structs.asdict(f.options))
        cols: dict[str, ColumnSummary] = {}
        for name, c in f.columns.items():
            if isinstance(c, _NumericFile):
                sk = QuantileSketch.from_dict(
                    msgspec.structs.asdict(c.sketch), f"columns.{name}.sketch"
                )
                if abs(sk.total - c.count) > 1e-6 * max(1, c.count):
                    raise ProfileFormatError(
                        f"columns.{name}: sketch weight {sk.total} != count {c.count}"
                    )
                nan = math.nan
                cols[name] = NumericSummary(
                    c.dtype,
                    c.count,
                    c.null_count,
                    nan if c.min is None else c.min,
                    nan if c.max is None else c.max,
                    nan if c.mean is None else c.mean,
                    c.m2,
                    sk,
                )
            else:
                cols[name] = CategoricalSummary(
                    c.dtype,
                    c.count,
                    c.null_count,
                    tuple(c.categories),
                    np.array(c.counts, dtype=np.int64),
                    c.other_count,
                    c.max_categories,
                )
        joint = None
        if f.joint_sample is not None:
            j = f.joint_sample
            flat = _decode(j.values, "joint_sample.values")
            if len(flat) != j.rows * len(j.columns):
                raise ProfileFormatError("joint_sample.values has the wrong number of values")
            joint = JointSample(
                tuple(j.columns), flat.reshape(j.rows, len(j.columns)), j.population
            )
    except ProfileFormatError:
        raise
    except InvalidInputError as exc:
        raise ProfileFormatError(str(exc)) from exc
    return ReferenceProfile(cols, f.row_count, opts, joint, dict(f.metadata), f.created_at)


def summarise_column(
    series: pl.Series,
    kind: str,
    options: ProfileOptions,
    *,
    sketch_size: int | None = None,
    max_categories: int | None = None,
) -> ColumnSummary:
    """Summary of one column (used for current windows in the streaming monitor)."""
    if kind == "numeric":
        return _numeric_summary(series, sketch_size or options.sketch_size)
    return _categorical_summary(series, max_categories or options.max_categories)


__all__ = [
    "OTHER_CATEGORY",
    "PROFILE_FORMAT",
    "PROFILE_VERSION",
    "CategoricalSummary",
    "ColumnSummary",
    "JointSample",
    "NumericSummary",
    "ProfileOptions",
    "ReferenceProfile",
    "build_profile",
]
