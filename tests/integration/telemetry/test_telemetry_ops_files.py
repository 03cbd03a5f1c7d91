"""The committed ops/ files are exactly what the SLO specs generate (else: stale)."""

from __future__ import annotations

from pathlib import Path

from keel.telemetry.generate import ops_files, stale_files

OPS = Path(__file__).resolve().parents[3] / "ops"


def test_committed_ops_files_are_not_stale() -> None:
    files = ops_files()
    stale = stale_files(OPS, files)
    assert not stale, (
        f"stale generated files under {OPS}: {stale}; "
        "regenerate with `python -m keel.telemetry.generate ops/` and commit them"
    )


def test_no_orphan_runbooks() -> None:
    """Every runbook under ops/runbooks belongs to an alert that exists."""
    generated = {rel for rel in ops_files() if rel.startswith("runbooks/")}
    present = {f"runbooks/{p.name}" for p in (OPS / "runbooks").glob("*.md")}
    assert present == generated, present ^ generated
