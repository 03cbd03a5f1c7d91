"""`keel drift profile|check|report` end to end on files (typer's CliRunner; no services).

The gate fails closed: every way the data can be unfit to judge exits non-zero with one
clear decision, and the CLI's decision is the library's `DriftPolicy().decide(result, [])`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from keel_cli.cmd_drift import app
from typer.testing import CliRunner

from keel.drift import DriftPolicy, ReferenceProfile, check_drift, json_safe

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


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    train, same, stream = write_data(tmp_path)
    prof = tmp_path / "profile.json"
    r = runner.invoke(app, ["profile", str(train), "--out", str(prof), "--chunk-rows", "5000"])
    assert r.exit_code == 0, r.output
    return prof, train, same, stream


def test_profile_check_report(files: tuple[Path, Path, Path, Path], tmp_path: Path) -> None:
    prof, _, same, stream = files
    assert json.loads(prof.read_text())["row_count"] == 20_000

    r = runner.invoke(app, ["check", str(prof), str(same), "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "r.json").read_text())["decision"]["decision"] == "none"

    r = runner.invoke(app, ["check", str(prof), str(stream)])
    assert r.exit_code == 1, r.output  # drift -> exit 1 (--fail-on drift)
    assert "new_categories" in r.output and "DRIFT" in r.output

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
    page = (tmp_path / "rep" / "drift-report.html").read_text()
    assert len(page) > 10_000 and "not judged" in page and "data error" in page  # the legend
    assert (tmp_path / "rep" / "drift-scores.png").exists()


def test_json_to_stdout_and_cli_equals_library(
    files: tuple[Path, Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prof, _, _, stream = files
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["check", str(prof), str(stream), "--json", "-"])
    assert r.exit_code == 1
    assert not (tmp_path / "-").exists()
    doc = json.loads(r.stdout)  # stdout is only the JSON; the table went to stderr
    lib = DriftPolicy().decide(
        check_drift(ReferenceProfile.load(prof), pl.read_parquet(stream)), []
    )
    assert doc["decision"] == json_safe(lib.to_dict())
    assert doc["decision"]["decision"] == "drift"


def bad_inputs(tmp: Path) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    n = 3000
    amount = rng.lognormal(3, 1, n)
    merchant = rng.choice(["a", "b", "c"], n)
    cases = {
        "missing column": pl.DataFrame({"amount": amount}),
        "all-null column": pl.DataFrame(
            {"amount": pl.Series([None] * n, dtype=pl.Float64), "merchant": merchant}
        ),
        "numbers stored as strings": pl.DataFrame(
            {"amount": [f"{a:.2f}" for a in amount], "merchant": merchant}
        ),
        "empty frame": pl.DataFrame(
            {"amount": pl.Series([], dtype=pl.Float64), "merchant": pl.Series([], dtype=pl.String)}
        ),
        "another schema": pl.DataFrame({"x": amount, "y": merchant}),
    }
    paths = {}
    for i, (name, frame) in enumerate(cases.items()):
        paths[name] = tmp / f"bad{i}.parquet"
        frame.write_parquet(paths[name])
    words = tmp / "words.csv"  # words in a numeric column: polars reads it as text
    words.write_text(
        "amount,merchant\n" + "".join(f"{'n/a' if i % 7 == 0 else i},a\n" for i in range(n))
    )
    paths["words in a numeric column"] = words
    return paths


@pytest.mark.parametrize("fail_on", ["drift", "warn"])
def test_the_gate_fails_closed(
    files: tuple[Path, Path, Path, Path], tmp_path: Path, fail_on: str
) -> None:
    prof = files[0]
    expected = {
        "missing column": "error",
        "all-null column": "error",
        "numbers stored as strings": "error",
        "words in a numeric column": "error",
        "empty frame": "not_judged",
        "another schema": "not_judged",
    }
    for case, path in bad_inputs(tmp_path).items():
        r = runner.invoke(app, ["check", str(prof), str(path), "--json", "-", "--fail-on", fail_on])
        assert r.exit_code == 1, (case, r.output)
        assert "Traceback" not in r.output, case
        doc = json.loads(r.stdout)
        assert doc["decision"]["decision"] == expected[case], (case, doc["decision"]["reason"])
        assert doc["decision"]["ok"] is False
        # the library says the same on the same data
        frame = pl.read_csv(path) if path.suffix == ".csv" else pl.read_parquet(path)
        lib = DriftPolicy().decide(check_drift(ReferenceProfile.load(prof), frame), [])
        assert lib.decision.value == expected[case], case
    never = runner.invoke(
        app, ["check", str(prof), str(bad_inputs(tmp_path)["empty frame"]), "--fail-on", "never"]
    )
    assert never.exit_code == 0 and "NOT_JUDGED" in never.output


def test_clear_errors(tmp_path: Path) -> None:
    r = runner.invoke(app, ["check", str(tmp_path / "missing.json"), str(tmp_path / "x.csv")])
    assert r.exit_code == 2 and "does not exist" in r.output
    (tmp_path / "data.txt").write_text("a,b")
    (tmp_path / "p.json").write_text("{}")
    r = runner.invoke(app, ["check", str(tmp_path / "p.json"), str(tmp_path / "data.txt")])
    assert r.exit_code == 2 and "profile" in r.output
    r = runner.invoke(app, ["check", str(tmp_path / "p.json"), "x.csv", "--fail-on", "maybe"])
    assert r.exit_code == 2 and "--fail-on" in r.output


def test_empty_reference_profile_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.parquet"
    pl.DataFrame({"amount": pl.Series([], dtype=pl.Float64)}).write_parquet(empty)
    r = runner.invoke(app, ["profile", str(empty), "--out", str(tmp_path / "p.json")])
    assert r.exit_code == 2 and "empty reference profile" in r.output
    assert not (tmp_path / "p.json").exists()
    nulls = tmp_path / "nulls.parquet"
    pl.DataFrame(
        {"amount": [1.0, 2.0, 3.0], "blank": pl.Series([None] * 3, dtype=pl.Float64)}
    ).write_parquet(nulls)
    r = runner.invoke(app, ["profile", str(nulls), "--out", str(tmp_path / "p.json")])
    assert r.exit_code == 2 and "blank" in r.output
    assert next(ln for ln in r.output.splitlines() if "error" in ln).endswith("fix the data")
    assert not (tmp_path / "p.json").exists()
