"""`keel drift profile|check|report` end to end on files (typer's CliRunner)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from keel_cli.cmd_drift import app
from typer.testing import CliRunner

runner = CliRunner()


def write_data(tmp: Path) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(0)
    n = 20_000
    pl.DataFrame(
        {"amount": rng.lognormal(3, 1, n), "merchant": rng.choice(["a", "b", "c"], n)}
    ).write_parquet(tmp / "train.parquet")
    same = pl.DataFrame(
        {"amount": rng.lognormal(3, 1, 5000), "merchant": rng.choice(["a", "b", "c"], 5000)}
    )
    same.write_csv(tmp / "same.csv")
    times = [
        datetime(2026, 3, 1, tzinfo=UTC) + timedelta(minutes=int(m))
        for m in np.sort(rng.integers(0, 360, n))
    ]
    shift = np.arange(n) > n // 2
    pl.DataFrame(
        {
            "event_time": times,
            "amount": rng.lognormal(3 + shift, 1),
            "merchant": rng.choice(["a", "b", "d"], n),
        }
    ).write_parquet(tmp / "stream.parquet")
    return tmp / "train.parquet", tmp / "same.csv", tmp / "stream.parquet"


@pytest.mark.integration
def test_profile_check_report(tmp_path: Path) -> None:
    train, same, stream = write_data(tmp_path)
    prof = tmp_path / "profile.json"
    r = runner.invoke(app, ["profile", str(train), "--out", str(prof), "--chunk-rows", "5000"])
    assert r.exit_code == 0, r.output
    assert json.loads(prof.read_text())["row_count"] == 20_000

    r = runner.invoke(app, ["check", str(prof), str(same), "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "r.json").read_text())["decision"]["decision"] == "none"

    r = runner.invoke(app, ["check", str(prof), str(stream)])
    assert r.exit_code == 1, r.output  # drift -> exit 1 (--fail-on drift)
    assert "new_categories" in r.output

    r = runner.invoke(
        app,
        [
            "report",
            str(prof),
            str(stream),
            "--time-column",
            "event_time",
            "--window",
            "1h",
            "--out",
            str(tmp_path / "rep"),
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "rep" / "drift-report.json").read_text())
    assert doc["summary"]["windows"] == 6 and doc["summary"]["episodes"] == 1
    assert (tmp_path / "rep" / "drift-report.html").stat().st_size > 10_000
    assert (tmp_path / "rep" / "drift-scores.png").exists()


@pytest.mark.integration
def test_clear_errors(tmp_path: Path) -> None:
    r = runner.invoke(app, ["check", str(tmp_path / "missing.json"), str(tmp_path / "x.csv")])
    assert r.exit_code == 2 and "does not exist" in r.output
    (tmp_path / "data.txt").write_text("a,b")
    (tmp_path / "p.json").write_text("{}")
    r = runner.invoke(app, ["check", str(tmp_path / "p.json"), str(tmp_path / "data.txt")])
    assert r.exit_code == 2 and "profile" in r.output
