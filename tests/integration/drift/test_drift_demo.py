"""`keel demo` (run_demo) on embedded defaults: events, both feature engines, drift report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from keel_cli.demo import run_demo
from rich.console import Console


@pytest.mark.integration
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
    assert (tmp_path / "demo" / "events.db").exists()
    assert (tmp_path / "demo" / "reference-profile.json").exists()
    assert any((tmp_path / "demo" / "plots").glob("*.png"))
