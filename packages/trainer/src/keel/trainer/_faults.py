"""Fault injection for chaos tests: a real SIGKILL of a real training worker.

A ``FaultPlan`` travels to the workers with the job; a planned fault fires at most once per
run (an ``O_EXCL`` sentinel file in ``once_dir`` records it), so the restarted worker group
goes on past the same point. Never set in production code paths; ``None`` means no faults.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FaultPlan:
    """``kill_at_step``: SIGKILL worker ``rank`` right after this global step.
    ``kill_in_checkpoint_step``: SIGKILL rank 0 while writing this step's checkpoint (after
    the state files, before the commit marker). ``pause_at_step``: rank ``rank`` sleeps
    there (so a test can kill the driver at a known point)."""

    once_dir: Path
    kill_at_step: int | None = None
    kill_in_checkpoint_step: int | None = None
    pause_at_step: int | None = None
    rank: int = 0

    def _once(self, kind: str) -> bool:
        self.once_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.once_dir / f"fired-{kind}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.write(fd, f"{os.getpid()} {time.time()!r}".encode())
        os.fsync(fd)
        os.close(fd)
        return True

    def _fire(self, kind: str) -> None:
        if self._once(kind):
            os.kill(os.getpid(), signal.SIGKILL)

    def after_step(self, step: int, rank: int) -> None:
        if self.kill_at_step == step and rank == self.rank:
            self._fire("step")
        if self.pause_at_step == step and rank == self.rank and self._once("pause"):
            time.sleep(3600)

    def in_checkpoint(self, step: int, rank: int) -> None:
        if self.kill_in_checkpoint_step == step and rank == 0:
            self._fire("checkpoint")

    def fired_at(self, kind: str) -> float | None:
        """When the fault fired (``time.time()`` in the worker), if it did."""
        try:
            return float((self.once_dir / f"fired-{kind}").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return None

    def fired(self) -> list[str]:
        if not self.once_dir.is_dir():
            return []
        return sorted(p.name.removeprefix("fired-") for p in self.once_dir.glob("fired-*"))
