"""`keel retrain`, `keel retrain history`, `keel provenance verify` on a temp database."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from keel_cli.main import app
from typer.testing import CliRunner

from keel.pipelines import (
    CanaryPolicy,
    CanarySignal,
    Controller,
    GateResult,
    Holdout,
    QualityGate,
    StepContext,
)

runner = CliRunner()


class TinyExecutors:
    """Deterministic stand-ins for keel.trainer/registry: enough for the CLI's wiring."""

    def source_fingerprints(self, ctx: StepContext) -> Mapping[str, str]:
        return {"data": "d" * 64}

    def build_training_set(self, ctx: StepContext) -> Mapping[str, Any]:
        return {"fingerprint": "f" * 64}

    def train(self, ctx: StepContext) -> Mapping[str, Any]:
        return {"trainer_run": "run-7"}

    def evaluate(self, ctx: StepContext) -> Mapping[str, Any]:
        return {"auc": 0.8}

    def gates(self, ctx: StepContext) -> Sequence[GateResult]:
        return [QualityGate("auc", threshold=0.7).evaluate(Holdout("h", {"auc": 0.8}), None)]

    def package_sign(self, ctx: StepContext) -> Mapping[str, Any]:
        return {"artifact_digest": "sha256:" + "a" * 64}

    def register_challenger(self, ctx: StepContext) -> Mapping[str, Any]:
        return {"version": "3"}

    def move_alias(self, ctx: StepContext, alias: str, version: str) -> Mapping[str, Any]:
        return {"to_version": version}

    def canary_signals(self, ctx: StepContext, version: str) -> tuple[Sequence[CanarySignal], int]:
        return [], 10

    def rollback(self, ctx: StepContext, version: str) -> Mapping[str, Any]:
        return {}


def test_retrain_history_and_provenance_verify(tmp_path: Path) -> None:
    db = tmp_path / "pipelines.db"
    r = runner.invoke(app, ["retrain", "history", "--db", str(db)])
    assert r.exit_code == 2 and "no retrain has been recorded" in r.output
    r = runner.invoke(
        app,
        [
            "retrain",
            "--model",
            "credit",
            "--request-id",
            "q1",
            "--who",
            "ana",
            "--param",
            "min_auc=0.7",
            "--db",
            str(db),
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["action"] == "start" and out["trigger"] == "manual:q1"
    again = runner.invoke(
        app, ["retrain", "--model", "credit", "--request-id", "q1", "--db", str(db)]
    )
    assert json.loads(again.output)["action"] == "duplicate"
    r = runner.invoke(app, ["provenance", "verify", "credit@champion", "--db", str(db)])
    assert r.exit_code == 1 and "no run of 'credit'" in r.output

    t = [datetime(2026, 1, 1, tzinfo=UTC)]

    def clock() -> datetime:
        t[0] += timedelta(seconds=1)
        return t[0]

    ctl = Controller(
        TinyExecutors(), clock=clock, db_path=db, canary_policy=CanaryPolicy(window=timedelta(0))
    )
    assert [i.status.value for i in ctl.resume()] == ["promoted"]
    ctl.close()

    r = runner.invoke(app, ["retrain", "history", "--json", "--db", str(db)])
    rows = json.loads(r.output)
    assert rows[0]["status"] == "promoted" and len(rows[0]["steps"]) == 9
    r = runner.invoke(app, ["provenance", "verify", "credit@champion", "--db", str(db)])
    assert r.exit_code == 0, r.output
    lin = json.loads(r.output)["lineage"]
    assert (
        lin["artifact_digest"] == "sha256:" + "a" * 64
        and lin["trigger"]["evidence"]["who"] == "ana"
    )
    assert lin["sources"] == {"data": "d" * 64}

    c = sqlite3.connect(db)
    with c:
        c.execute("UPDATE provenance SET record = replace(record, 'run-7', 'run-8')")
    c.close()
    r = runner.invoke(app, ["provenance", "verify", "credit@champion", "--db", str(db)])
    assert r.exit_code == 1 and "edited" in r.output
    r = runner.invoke(app, ["provenance", "verify", "credit", "--db", str(db)])
    assert r.exit_code == 2 and "MODEL@champion" in r.output
