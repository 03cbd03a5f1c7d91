"""SIGKILL the controller at every step boundary and in the middle of every step (a real
subprocess, killed by its own hook), restart it, and check that the run completes with no
duplicate registration and no double alias move."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pipelines_testkit import effects, write_dataset

from keel.pipelines import CACHED, SIDE_EFFECTS, STEPS

DRIVER = Path(__file__).with_name("pipelines_driver.py")
POINTS = [f"{when}:{step}" for step in STEPS for when in ("before", "mid", "after")]


def _run(root: Path, kill_at: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KEEL_TEST_KILL_AT": kill_at,
        "PYTHONPATH": os.pathsep.join([str(DRIVER.parent), *sys.path]),
    }
    return subprocess.run(
        [sys.executable, str(DRIVER), str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_sigkill_then_restart_resumes_without_duplicates(tmp_path: Path, point: str) -> None:
    write_dataset(tmp_path / "data.csv", seed=1)
    killed = _run(tmp_path, point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = _run(tmp_path, "")
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["status"] for r in runs] == ["promoted"]

    db = tmp_path / "effects.db"
    assert effects(db, "SELECT COUNT(*) FROM registrations") == [(1,)]
    moves = effects(db, "SELECT alias, COUNT(*) FROM moves GROUP BY alias ORDER BY alias")
    assert moves == [("canary", 1), ("champion", 1), ("shadow", 1)]
    assert effects(db, "SELECT alias, version FROM aliases ORDER BY alias") == [
        ("canary", "1"),
        ("champion", "1"),
        ("shadow", "1"),
    ]
    when, step = point.split(":")
    # a step completed before the kill is never run again; one killed inside may rerun once
    for s in CACHED:
        n = effects(db, "SELECT COUNT(*) FROM calls WHERE step = ?", s)[0][0]
        assert n == (2 if (s == step and when == "mid") else 1), (s, n)
    for s, call in (
        ("register_challenger", "register_challenger"),
        ("shadow", "move_alias:shadow"),
        ("promote_or_rollback", "move_alias:champion"),
    ):
        n = effects(db, "SELECT COUNT(*) FROM calls WHERE step = ?", call)[0][0]
        # a side effect killed after the executor ran is retried with the same key (idempotent)
        assert n == (2 if (s == step and when == "mid") else 1), (s, n)
        keys = effects(db, "SELECT COUNT(DISTINCT key) FROM calls WHERE step = ?", call)[0][0]
        assert keys == 1
    assert step in STEPS and set(STEPS) >= SIDE_EFFECTS

    # the chain is intact and records each step once
    import sqlite3

    c = sqlite3.connect(tmp_path / "pipelines.db")
    kinds = [r[0] for r in c.execute("SELECT kind FROM provenance ORDER BY seq")]
    c.close()
    assert kinds == ["trigger"] + [f"step:{s}" for s in STEPS]
