"""Run one retrain to completion in a subprocess; SIGKILL itself at the hook point named by
KEEL_TEST_KILL_AT (e.g. ``after:train``). Used by test_pipelines_crash.py."""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipelines_testkit import LocalExecutors

from keel.pipelines import CanaryPolicy, Controller, Trigger


def main() -> None:
    root = Path(sys.argv[1])
    kill_at = os.environ.get("KEEL_TEST_KILL_AT", "")

    def hook(point: str) -> None:
        if point == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def clock() -> datetime:  # a test driver, not library code: the real clock is fine here
        return datetime.now(UTC)

    ctl = Controller(
        LocalExecutors(root / "effects.db", root / "work"),
        clock=clock,
        db_path=root / "pipelines.db",
        canary_policy=CanaryPolicy(window=timedelta(0)),
        code_version="abc123",
        lock_hash="lock1",
        hook=hook,
    )
    trig = Trigger.manual("credit", "req-1", at=datetime(2026, 1, 1, tzinfo=UTC), who="ana")
    ctl.submit(trig, {"data_path": str(root / "data.csv")})
    ctl.resume()
    infos = ctl.runs()
    print(
        json.dumps([{"run_id": i.run_id, "status": i.status.value, "step": i.step} for i in infos])
    )


if __name__ == "__main__":
    main()
