"""check_drift: data-quality findings, the multivariate test, result shape, bad input."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.stats as sst

from keel.drift import (
    CheckOptions,
    InvalidInputError,
    ReferenceProfile,
    build_profile,
    check_drift,
    domain_classifier_test,
)
from keel.drift._multivariate import mann_whitney_auc


@pytest.fixture(scope="module")
def reference() -> tuple[pl.DataFrame, ReferenceProfile]:
    rng = np.random.default_rng(7)
    n = 4000
    df = (
        pl.DataFrame(
            {
                "amount": rng.lognormal(3, 1, n),
                "age": rng.integers(18, 80, n),
                "country": rng.choice(["DE", "FR", "NL"], n, p=[0.5, 0.3, 0.2]),
                "score": rng.normal(size=n),
                "missing": rng.random(n) < 0.02,
            }
        )
        .with_columns(
            pl.when(pl.col("missing")).then(None).otherwise(pl.col("score")).alias("score")
        )
        .drop("missing")
    )
    return df, build_profile(df)


def kinds(result) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for q in result.quality:
        out.setdefault(q.kind, set()).add(q.column)
    return out


def test_clean_sample_has_no_issues_and_low_scores(reference) -> None:
    df, profile = reference
    result = check_drift(profile, df.sample(1000, seed=3))
    assert result.quality == []
    assert all(fd.psi < 0.1 for fd in result.features.values())
    assert result.multivariate is not None and not result.multivariate.drift


def test_schema_mismatch(reference) -> None:
    df, profile = reference
    cur = df.drop("age").with_columns(pl.col("amount").cast(pl.String), pl.lit(1).alias("extra"))
    found = kinds(check_drift(profile, cur, options=CheckOptions(multivariate=False)))
    assert found["missing_column"] == {"age"}
    assert found["unexpected_column"] == {"extra"}
    assert found["kind_changed"] == {"amount"}


def test_dtype_change_within_kind_is_a_warning(reference) -> None:
    df, profile = reference
    result = check_drift(
        profile,
        df.with_columns(pl.col("age").cast(pl.Float64)),
        options=CheckOptions(multivariate=False),
    )
    (issue,) = (q for q in result.quality if q.kind == "dtype_changed")
    assert (
        issue.column == "age"
        and issue.severity == "warning"
        and "Int64 -> Float64" in issue.message
    )
    assert "age" in result.features  # still compared


def test_new_categories_null_jump_out_of_range(reference) -> None:
    df, profile = reference
    cur = df.head(1000).with_columns(
        pl.when(pl.int_range(pl.len()) < 100)
        .then(pl.lit("XX"))
        .otherwise(pl.col("country"))
        .alias("country"),
        pl.when(pl.int_range(pl.len()) < 300).then(None).otherwise(pl.col("score")).alias("score"),
        (pl.col("amount") * 100).alias("amount"),
    )
    result = check_drift(profile, cur, options=CheckOptions(multivariate=False))
    found = {q.kind: q for q in result.quality}
    assert found["new_categories"].column == "country" and found[
        "new_categories"
    ].value == pytest.approx(0.1)
    assert "'XX'" in found["new_categories"].message
    assert found["null_rate_jump"].column == "score" and (found["null_rate_jump"].value or 0) > 0.3
    assert found["out_of_range"].column == "amount" and (found["out_of_range"].value or 0) > 0.5
    assert result.features["country"].bin_labels[-1] == "__other__"
    assert result.features["country"].cur_props[-1] == pytest.approx(0.1)


def test_multivariate_detects_joint_shift_marginals_miss() -> None:
    """x and y are strongly correlated in the reference; the current keeps each marginal
    but breaks the correlation's sign - a shift of x - y no single column shows."""
    rng = np.random.default_rng(0)
    n = 6000
    z = rng.normal(size=(n, 2))
    ref = pl.DataFrame({"x": z[:, 0], "y": 0.95 * z[:, 0] + 0.31 * z[:, 1]})
    w = rng.normal(size=(n, 2))
    cur = pl.DataFrame({"x": w[:, 0] + 0.8, "y": 0.95 * w[:, 0] + 0.31 * w[:, 1]})
    profile = build_profile(ref)
    result = check_drift(profile, cur)
    assert result.multivariate is not None
    assert result.multivariate.drift and result.multivariate.auc > 0.7
    same = check_drift(profile, pl.DataFrame({"x": z[:3000, 0], "y": ref["y"][:3000]}))
    assert same.multivariate is not None and not same.multivariate.drift


def test_mann_whitney_auc_equals_scipy() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = np.round(rng.normal(0.2, size=rng.integers(2, 60)), 1)
        b = np.round(rng.normal(size=rng.integers(2, 60)), 1)
        auc, p = mann_whitney_auc(a, b)
        ref = sst.mannwhitneyu(a, b, alternative="greater", method="asymptotic")
        assert auc == pytest.approx(ref.statistic / (len(a) * len(b)), abs=1e-12)
        assert p == pytest.approx(ref.pvalue, abs=1e-12)


def test_domain_classifier_rejects_mismatched_shapes() -> None:
    with pytest.raises(InvalidInputError, match="same columns"):
        domain_classifier_test(
            np.zeros((5, 2)), np.zeros((5, 3)), ["a", "b"], np.random.default_rng(0)
        )


def test_bad_input(reference) -> None:
    df, profile = reference
    with pytest.raises(InvalidInputError, match="polars.DataFrame"):
        check_drift(profile, df.to_dicts())  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="ReferenceProfile"):
        check_drift("profile.json", df)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="null_rate_increase"):
        CheckOptions(null_rate_increase=2)


def test_result_serialises_to_plain_json(reference) -> None:
    import json

    df, profile = reference
    doc = check_drift(profile, df.head(500)).to_dict()
    text = json.dumps(doc, allow_nan=False)
    assert json.loads(text)["features"]["amount"]["kind"] == "numeric"


def test_unfit_data_never_crashes_and_never_passes(reference) -> None:
    """Words in a numeric column, an all-null column, an empty frame, another schema."""
    from keel.drift import DriftPolicy, Level

    df, profile = reference
    words = df.with_columns(
        pl.when(pl.int_range(pl.len()) % 5 == 0)
        .then(pl.lit("n/a"))
        .otherwise(pl.col("amount").cast(pl.String))
        .alias("amount")
    )
    nulls = df.with_columns(pl.lit(None, dtype=pl.Float64).alias("amount"))
    empty = df.head(0)
    other = pl.DataFrame({"x": np.arange(1000.0)})
    expect = {
        "words": (words, Level.ERROR, "kind_changed"),
        "nulls": (nulls, Level.ERROR, "no_values"),
        "empty": (empty, Level.NOT_JUDGED, None),
        "other": (other, Level.NOT_JUDGED, "missing_column"),
    }
    for name, (frame, level, issue) in expect.items():
        result = check_drift(profile, frame)
        decision = DriftPolicy().decide(result, [])
        assert decision.decision is level, (name, decision.reason)
        assert not decision.ok and decision.fails("drift")
        if issue:
            assert issue in kinds(result), name
    assert check_drift(profile, words).multivariate is None  # skipped, not crashed


def test_default_policy_flags_a_small_shift_in_a_fifth_of_the_columns() -> None:
    """The issue's case: 200k x 50, 10 columns shifted by 0.3 sigma - and no false alarm."""
    from keel.drift import DriftPolicy, Level

    rng = np.random.default_rng(11)
    n, cols = 200_000, 50
    names = [f"c{i}" for i in range(cols)]
    profile = build_profile(pl.DataFrame(rng.standard_normal((n, cols)), schema=names))
    shifted = rng.standard_normal((n, cols))
    shifted[:, :10] += 0.3
    d = DriftPolicy().decide(check_drift(profile, pl.DataFrame(shifted, schema=names)), [])
    assert d.decision is Level.DRIFT, d.reason
    assert set(d.drifted) == set(names[:10]) and d.multivariate_drift
    del shifted
    same = pl.DataFrame(rng.standard_normal((n, cols)), schema=names)
    calm = DriftPolicy().decide(check_drift(profile, same), [])
    assert calm.decision is Level.NONE and calm.drifted == calm.warned == (), calm.reason


def test_the_multivariate_result_is_seeded(reference) -> None:
    df, profile = reference
    cur = df.sample(1500, seed=4)
    a = check_drift(profile, cur, rng=np.random.default_rng(3)).multivariate
    b = check_drift(profile, cur, rng=np.random.default_rng(3)).multivariate
    assert (
        a == b and check_drift(profile, cur).multivariate == check_drift(profile, cur).multivariate
    )
