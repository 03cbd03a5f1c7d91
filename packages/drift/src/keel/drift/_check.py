"""Checking current data against a ReferenceProfile: drift statistics + data quality."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import polars as pl

from keel.drift._errors import InvalidInputError
from keel.drift._multivariate import MultivariateResult, domain_classifier_test
from keel.drift._profile import (
    OTHER_CATEGORY,
    CategoricalSummary,
    ColumnSummary,
    NumericSummary,
    ReferenceProfile,
    category_counts,
    is_categorical_dtype,
    is_numeric_dtype,
    numeric_values,
)
from keel.drift._sketch import QuantileSketch
from keel.drift._stats import (
    SortedSample,
    bin_proportions,
    chi2_homogeneity,
    js_distance,
    ks_and_wasserstein,
    ks_pvalue,
    psi,
)

Method = Literal["psi", "js", "ks", "wasserstein", "chi2"]
METHODS: tuple[str, ...] = ("psi", "js", "ks", "wasserstein", "chi2")
Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class CheckOptions:
    """Data-quality tolerances and the multivariate test switch.

    null_rate_increase: flag when current null rate exceeds the reference's by more (absolute).
    out_of_range_tolerance: flag when more than this share of values lies outside the reference [min, max].
    new_category_tolerance: flag when more than this share of values is a category never seen in the
        reference (only knowable when the reference's category list was not capped).
    multivariate: run the domain-classifier test (needs the profile's joint sample).
    """

    null_rate_increase: float = 0.05
    out_of_range_tolerance: float = 0.01
    new_category_tolerance: float = 0.0
    multivariate: bool = True
    multivariate_alpha: float = 0.01

    def __post_init__(self) -> None:
        for name in (
            "null_rate_increase",
            "out_of_range_tolerance",
            "new_category_tolerance",
            "multivariate_alpha",
        ):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InvalidInputError(f"CheckOptions.{name} must be in [0, 1], got {v}")


@dataclass(frozen=True)
class QualityIssue:
    """One data-quality finding. ``kind`` is one of: missing_column, unexpected_column,
    kind_changed, dtype_changed, no_values, null_rate_jump, out_of_range, new_categories.

    Severity ``error`` means the window cannot be trusted as it is (the policy decides
    ERROR): a profiled column missing, its kind changed (numbers stored as strings, words
    in a numeric column), no values where the reference had some, a null-rate jump.
    """

    kind: str
    column: str
    severity: Severity
    message: str
    value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "column": self.column,
            "severity": self.severity,
            "message": self.message,
            "value": self.value,
        }


@dataclass(frozen=True)
class FeatureDrift:
    """Every statistic for one column, plus the binned distributions (for plots).

    ``bin_labels``/``ref_props``/``cur_props`` are the reference bins (numeric:
    quantile-bin upper edges, last "+inf"; categorical: categories + "__other__").
    ``ks_error``/``wasserstein_error`` bound the sketch approximation (0 = exact).
    Statistics not defined for the column's kind are None.
    """

    name: str
    kind: Literal["numeric", "categorical"]
    n_ref: int
    n_cur: int
    ref_null_rate: float
    cur_null_rate: float
    psi: float
    js: float
    bin_labels: tuple[str, ...]
    ref_props: tuple[float, ...]
    cur_props: tuple[float, ...]
    ks: float | None = None
    ks_pvalue: float | None = None
    ks_error: float | None = None
    wasserstein: float | None = None
    wasserstein_norm: float | None = None
    wasserstein_error: float | None = None
    chi2: float | None = None
    chi2_dof: int | None = None
    chi2_pvalue: float | None = None

    def statistic(self, method: str) -> float | None:
        """The drift statistic for ``method`` (higher = more drift), or None if not defined.

        ``chi2`` maps to ``1 - p_value`` so that, like the others, larger means more drift.
        ``wasserstein`` is the normalised distance (divided by the reference std).
        """
        if method == "psi":
            return self.psi
        if method == "js":
            return self.js
        if method == "ks":
            return self.ks
        if method == "wasserstein":
            return self.wasserstein_norm
        if method == "chi2":
            return None if self.chi2_pvalue is None else 1.0 - self.chi2_pvalue
        raise InvalidInputError(f"unknown drift method {method!r}; expected one of {METHODS}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class DriftResult:
    """The outcome of checking one batch/window of data against a profile."""

    n_rows: int
    features: Mapping[str, FeatureDrift]
    quality: Sequence[QualityIssue] = ()
    multivariate: MultivariateResult | None = None
    window_start: str | None = None
    window_end: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_rows": self.n_rows,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "features": {k: v.to_dict() for k, v in self.features.items()},
            "quality": [q.to_dict() for q in self.quality],
            "multivariate": None if self.multivariate is None else self.multivariate.to_dict(),
            "extra": dict(self.extra),
        }


# ---------------------------------------------------------------------------------------
def _fmt_edge(x: float) -> str:
    return f"{x:.4g}"


# Statistics only a numeric column has (NaN when one side has no values).
_NUMERIC_ONLY = (
    "ks",
    "ks_pvalue",
    "ks_error",
    "wasserstein",
    "wasserstein_norm",
    "wasserstein_error",
)


def _no_values(
    name: str,
    kind: Literal["numeric", "categorical"],
    ref: NumericSummary | CategoricalSummary,
    cur: NumericSummary | CategoricalSummary,
    **undefined: Any,
) -> FeatureDrift:
    """One side has no non-null values: every statistic is NaN (undefined, never "no drift")."""
    nan = math.nan
    return FeatureDrift(
        name,
        kind,
        ref.count,
        cur.count,
        ref.null_rate,
        cur.null_rate,
        nan,
        nan,
        (),
        (),
        (),
        **undefined,
    )


def compare_numeric(
    name: str, ref: NumericSummary, cur: NumericSummary, n_bins: int
) -> FeatureDrift:
    """All numeric statistics of ``cur`` against ``ref``."""
    if not ref.count or not cur.count:
        return _no_values(name, "numeric", ref, cur, **dict.fromkeys(_NUMERIC_ONLY, math.nan))
    edges = ref.bin_edges(n_bins)
    cur_dist = cur.sample if cur.sample is not None else SortedSample.of_sketch(cur.sketch)
    rp = bin_proportions(ref.sketch, edges)
    cp = bin_proportions(cur_dist, edges)
    d, w = ks_and_wasserstein(ref.sketch, cur_dist)
    err = ref.sketch.rank_error + cur_dist.rank_error
    span = max(ref.max, cur.max) - min(ref.min, cur.min)
    std = ref.std
    return FeatureDrift(
        name,
        "numeric",
        ref.count,
        cur.count,
        ref.null_rate,
        cur.null_rate,
        psi(rp, cp),
        js_distance(rp, cp),
        (*(_fmt_edge(e) for e in edges), "+inf"),
        tuple(rp.tolist()),
        tuple(cp.tolist()),
        ks=d,
        ks_pvalue=ks_pvalue(d, ref.count, cur.count),
        ks_error=err,
        wasserstein=w,
        wasserstein_norm=w / std if std > 0 else (0.0 if w == 0 else math.inf),
        wasserstein_error=err * span,
    )


def compare_categorical(
    name: str, ref: CategoricalSummary, cur: CategoricalSummary
) -> FeatureDrift:
    """All categorical statistics of ``cur`` against ``ref`` (unseen values go to "other")."""
    if not ref.count or not cur.count:
        return _no_values(
            name, "categorical", ref, cur, chi2=math.nan, chi2_dof=0, chi2_pvalue=math.nan
        )
    cur_counts = cur.as_dict()
    rc = np.r_[ref.counts.astype(np.float64), float(ref.other_count)]
    cc_known = np.array([cur_counts.get(c, 0) for c in ref.categories], dtype=np.float64)
    cc = np.r_[cc_known, float(cur.count - cc_known.sum())]
    rp, cp = rc / rc.sum(), cc / cc.sum()
    stat, dof, p = chi2_homogeneity(rc, cc)
    return FeatureDrift(
        name,
        "categorical",
        ref.count,
        cur.count,
        ref.null_rate,
        cur.null_rate,
        psi(rp, cp),
        js_distance(rp, cp),
        (*ref.categories, OTHER_CATEGORY),
        tuple(rp.tolist()),
        tuple(cp.tolist()),
        chi2=stat,
        chi2_dof=dof,
        chi2_pvalue=p,
    )


def quality_issues(
    profile: ReferenceProfile,
    current: Mapping[str, ColumnSummary],
    out_of_range: Mapping[str, int],
    options: CheckOptions,
    missing: Sequence[str] = (),
    unexpected: Sequence[str] = (),
) -> list[QualityIssue]:
    """Data-quality findings of current summaries against the profile."""
    issues: list[QualityIssue] = []
    for col in missing:
        issues.append(
            QualityIssue(
                "missing_column",
                col,
                "error",
                f"column {col!r} is in the profile but not in the data",
            )
        )
    for col in unexpected:
        issues.append(
            QualityIssue(
                "unexpected_column", col, "warning", f"column {col!r} is not in the profile"
            )
        )
    for col, cur in current.items():
        ref = profile.columns[col]
        if ref.kind != cur.kind:
            issues.append(
                QualityIssue(
                    "kind_changed", col, "error", f"{col!r} was {ref.kind}, is now {cur.kind}"
                )
            )
            continue
        if ref.dtype != cur.dtype and cur.dtype not in ref.dtype.split("|"):
            issues.append(
                QualityIssue(
                    "dtype_changed", col, "warning", f"{col!r} dtype {ref.dtype} -> {cur.dtype}"
                )
            )
        if cur.rows and not cur.count and ref.count:
            issues.append(
                QualityIssue(
                    "no_values",
                    col,
                    "error",
                    f"{col!r} has no values in {cur.rows:,} rows (all null/NaN)",
                    1.0,
                )
            )
            continue
        jump = cur.null_rate - ref.null_rate
        if cur.rows and jump > options.null_rate_increase:
            issues.append(
                QualityIssue(
                    "null_rate_jump",
                    col,
                    "error",
                    f"{col!r} null rate {ref.null_rate:.1%} -> {cur.null_rate:.1%}",
                    cur.null_rate,
                )
            )
        if isinstance(ref, NumericSummary) and cur.count:
            share = out_of_range.get(col, 0) / cur.count
            if share > options.out_of_range_tolerance:
                issues.append(
                    QualityIssue(
                        "out_of_range",
                        col,
                        "warning",
                        f"{share:.1%} of {col!r} outside the reference range [{ref.min:.4g}, {ref.max:.4g}]",
                        share,
                    )
                )
        if (
            isinstance(ref, CategoricalSummary)
            and isinstance(cur, CategoricalSummary)
            and cur.count
            and not ref.truncated
        ):
            known = set(ref.categories)
            new = {k: v for k, v in cur.as_dict().items() if k not in known}
            share = sum(new.values()) / cur.count
            if new and share > options.new_category_tolerance:
                examples = ", ".join(repr(k) for k in sorted(new, key=lambda k: -new[k])[:5])
                issues.append(
                    QualityIssue(
                        "new_categories",
                        col,
                        "warning",
                        f"{len(new)} categories of {col!r} never seen in the reference ({share:.1%} of rows), e.g. {examples}",
                        share,
                    )
                )
    return issues


def _map(fn: Any, items: Sequence[str], workers: int) -> list[Any]:
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def summarise_current(
    profile: ReferenceProfile,
    frame: pl.DataFrame,
    columns: Sequence[str],
    workers: int,
    *,
    compare: bool = False,
) -> tuple[dict[str, ColumnSummary], dict[str, int], dict[str, FeatureDrift]]:
    """Exact summaries of the current data (kind as in the profile where the dtype allows).

    With ``compare=True`` each column is also compared with the profile right away and its
    sorted values are released, so memory stays at ``workers`` columns, not all of them.
    """
    features: dict[str, FeatureDrift] = {}

    def one(name: str) -> tuple[ColumnSummary, int]:
        summary, oor = summarise(name)
        ref = profile.columns[name]
        if compare:
            if isinstance(ref, NumericSummary) and isinstance(summary, NumericSummary):
                features[name] = compare_numeric(name, ref, summary, profile.options.n_bins)
                summary = replace(summary, sample=None)
            elif isinstance(ref, CategoricalSummary) and isinstance(summary, CategoricalSummary):
                features[name] = compare_categorical(name, ref, summary)
        return summary, oor

    def summarise(name: str) -> tuple[ColumnSummary, int]:
        series = frame[name]
        ref = profile.columns[name]
        dtype = series.dtype
        numeric_ok = is_numeric_dtype(dtype)
        if ref.kind == "numeric" and numeric_ok:
            vals, nulls = numeric_values(series)
            s = np.sort(vals)
            assert isinstance(ref, NumericSummary)
            oor = 0
            if len(s) and ref.count:
                oor = int(
                    np.searchsorted(s, ref.min, "left")
                    + len(s)
                    - np.searchsorted(s, ref.max, "right")
                )
            if not len(s):
                return NumericSummary(
                    str(dtype), 0, nulls, math.nan, math.nan, math.nan, 0.0, QuantileSketch.empty()
                ), 0
            # sum of squares about the median first, then shift to the mean (one pass, stable)
            c = float(s[len(s) // 2])
            dev = s - c
            dev *= dev
            sq = float(dev.sum())  # not np.dot: BLAS threads contend with our column threads
            del dev
            sample = SortedSample.from_sorted(s)
            mean = sample.mean
            m2 = max(0.0, sq - len(s) * (mean - c) ** 2)
            return NumericSummary(
                str(dtype),
                len(s),
                nulls,
                float(s[0]),
                float(s[-1]),
                mean,
                m2,
                QuantileSketch.empty(),
                sample=sample,
            ), oor
        if ref.kind == "categorical" and (is_categorical_dtype(dtype) or numeric_ok):
            counts, nulls = category_counts(series)
            cats = tuple(counts)
            arr = np.array([counts[c] for c in cats], dtype=np.int64)
            total = int(arr.sum())
            return CategoricalSummary(str(dtype), total, nulls, cats, arr, 0, max(1, len(cats))), 0
        # kind mismatch: summarise as what the data is, so the quality check can say so
        counts, nulls = category_counts(series)
        cats = tuple(counts)
        arr = np.array([counts[c] for c in cats], dtype=np.int64)
        return CategoricalSummary(
            str(dtype), int(arr.sum()), nulls, cats, arr, 0, max(1, len(cats))
        ), 0

    results = _map(one, columns, workers)
    return (
        {c: r[0] for c, r in zip(columns, results, strict=True)},
        {c: r[1] for c, r in zip(columns, results, strict=True)},
        {c: features[c] for c in columns if c in features},
    )


def compare_summaries(
    profile: ReferenceProfile, current: Mapping[str, ColumnSummary], workers: int = 1
) -> dict[str, FeatureDrift]:
    """Drift statistics for every current column whose kind matches the profile."""

    def one(name: str) -> FeatureDrift | None:
        ref, cur = profile.columns[name], current[name]
        if isinstance(ref, NumericSummary) and isinstance(cur, NumericSummary):
            return compare_numeric(name, ref, cur, profile.options.n_bins)
        if isinstance(ref, CategoricalSummary) and isinstance(cur, CategoricalSummary):
            return compare_categorical(name, ref, cur)
        return None

    names = list(current)
    out = _map(one, names, workers)
    return {n: r for n, r in zip(names, out, strict=True) if r is not None}


def check_drift(
    profile: ReferenceProfile,
    frame: pl.DataFrame,
    *,
    options: CheckOptions | None = None,
    rng: np.random.Generator | None = None,
    workers: int | None = None,
    window_start: str | None = None,
    window_end: str | None = None,
) -> DriftResult:
    """Check ``frame`` against ``profile``: every statistic per column, data-quality
    issues, and (when the profile has a joint sample) the domain-classifier test.

    ``rng`` draws the current sample and the train/test split of the multivariate test
    (default: a generator seeded with 0, so the same inputs give the same result).
    """
    if not isinstance(profile, ReferenceProfile):
        raise InvalidInputError(f"expected a ReferenceProfile, got {type(profile).__name__}")
    if not isinstance(frame, pl.DataFrame):
        raise InvalidInputError(f"expected a polars.DataFrame, got {type(frame).__name__}")
    opts = options or CheckOptions()
    n_workers = workers or min(4, os.cpu_count() or 1)
    have = set(frame.columns)
    present = [c for c in profile.columns if c in have]
    missing = [c for c in profile.columns if c not in have]
    unexpected = [c for c in frame.columns if c not in profile.columns]
    current, oor, features = summarise_current(profile, frame, present, n_workers, compare=True)
    issues = quality_issues(profile, current, oor, opts, missing, unexpected)
    multi = None
    js = profile.joint_sample
    schema = frame.schema
    if (
        opts.multivariate
        and js is not None
        and all(c in have and is_numeric_dtype(schema[c]) for c in js.columns)
        and frame.height
    ):  # a joint column gone or no longer numeric is a quality error; the test is skipped
        gen = rng if rng is not None else np.random.default_rng(0)
        take = min(frame.height, max(len(js.values), 1))
        rows = (
            np.sort(gen.choice(frame.height, take, replace=False))
            if take < frame.height
            else np.arange(frame.height)
        )
        sub = frame.select([pl.col(c).cast(pl.Float64) for c in js.columns])[rows].to_numpy()
        sub = np.where(np.isfinite(sub), sub, np.nan)
        multi = domain_classifier_test(
            js.values, sub, list(js.columns), gen, alpha=opts.multivariate_alpha
        )
    return DriftResult(frame.height, features, issues, multi, window_start, window_end)
