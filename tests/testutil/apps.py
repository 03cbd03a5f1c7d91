"""Keel's app binaries as subprocesses in tests: the environment the app convention reads
(docs/apps.md: ``KEEL_<APP>_<KEY>``), a process handle with its log, a stop that asks
politely first, and a poll that fails naming what it waited for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx


def app_env(apps: Mapping[str, Mapping[str, str]], *, pythonpath: bool = False) -> dict[str, str]:
    """The process env without any inherited ``KEEL_*`` setting, plus each app's settings
    as ``KEEL_<APP>_<KEY>``; ``pythonpath``: also this process's ``sys.path`` (to run an
    app module with ``python -m`` from the test's sources)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    for app, settings in apps.items():
        env.update({f"KEEL_{app}_{k}".upper(): v for k, v in settings.items()})
    return env


def stop(p: subprocess.Popen[Any], timeout_s: float = 30) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; waits for the exit either way."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Proc:
    """One app binary as a subprocess, its output in a log file (read on failure)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log = logdir / f"{name}.log"
        self._fh = self.log.open("wb")
        self.p = subprocess.Popen(argv, env=env, stdout=self._fh, stderr=subprocess.STDOUT)

    def alive(self) -> None:
        if self.p.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.p.returncode}:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        stop(self.p)
        self._fh.close()


def poll(
    what: str,
    check: Callable[[], Any],
    timeout_s: float,
    procs: list[Proc],
    every: float = 0.5,
) -> Any:
    """Call ``check()`` until it returns a truthy value; fail naming ``what`` after the
    deadline (or as soon as an app died, with its log)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        for p in procs:
            p.alive()
        try:
            last = check()
        except (httpx.HTTPError, OSError, ValueError, KeyError) as e:  # not up yet: 503 text
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    logs = "\n".join(f"--- {p.name}\n{p.tail(1500)}" for p in procs)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{logs}")
