"""`keel demo` on embedded defaults (no services): events, both feature engines, drift report;
reproducible from its seed in any home; bad input answered with one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from keel_cli.demo import run_demo
from keel_cli.main import app
from rich.console import Console
from typer.testing import CliRunner

runner = CliRunner()


@pytest.mark.slow
def test_demo_writes_a_report(tmp_path: Path) -> None:
    console = Console(record=True, width=160)
    html = run_demo(tmp_path, 7, console)
    assert html == tmp_path / "demo" / "drift-report.html" and html.exists()
    out = console.export_text()
    assert "batch and streaming features agree" in out
    doc = json.loads((tmp_path / "demo" / "drift-report.json").read_text())
    decisions = [w["decision"]["decision"] for w in doc["windows"]]
    assert decisions[0] == "none" and decisions[-1] == "drift"
    assert doc["summary"]["episodes"] == 1
    assert (tmp_path / "events.db").exists()  # where `keel events` looks with this home
    assert (tmp_path / "demo" / "reference-profile.json").exists()
    assert any((tmp_path / "demo" / "plots").glob("*.png"))


def test_same_seed_same_json_in_fresh_homes(tmp_path: Path) -> None:
    docs = []
    for name in ("home-a", "elsewhere/home-b"):
        home = tmp_path / name
        run_demo(home, 11, Console(quiet=True), per_day=2500)
        docs.append((home / "demo" / "drift-report.json").read_bytes())
    assert docs[0] == docs[1]
    doc = json.loads(docs[0])
    assert any(w["result"]["multivariate"] for w in doc["windows"])  # the seeded part is there
    assert str(tmp_path) not in docs[0].decode()  # nothing of the home leaks into results
    # the demo's bus is where `keel events stats` looks with the same home
    r = runner.invoke(
        app,
        ["events", "stats"],
        env={"KEEL_HOME": str(tmp_path / "home-a"), "KEEL_NATS_URL": ""},
    )
    assert r.exit_code == 0, r.output
    assert "demo-transactions: events=25000" in r.output


def one_error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_bad_seed_is_one_line(tmp_path: Path, seed: str) -> None:
    r = runner.invoke(app, ["demo", "--seed", seed], env={"KEEL_HOME": str(tmp_path)})
    assert r.exit_code == 2
    assert "--seed" in one_error_line(r.output)
    assert not (tmp_path / "demo").exists()


def test_unusable_home_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = runner.invoke(app, ["demo"], env={"KEEL_HOME": str(blocker / "home")})
    assert r.exit_code == 2
    assert "KEEL_HOME" in one_error_line(r.output)
    if os.geteuid() != 0:  # root writes through permission bits; a read-only dir then
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        r = runner.invoke(app, ["demo"], env={"KEEL_HOME": str(ro)})
        assert r.exit_code == 2 and "KEEL_HOME" in one_error_line(r.output)
