"""A private, restartable nats-server with JetStream on disk, for tests that kill the broker.

Never the shared server at 4222: each instance has its own port and store directory, so a
test may SIGKILL and restart it (same store) without touching anyone else's streams.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

NATS_BIN = shutil.which("nats-server") or "/usr/sbin/nats-server"


def os_free_port() -> int:
    """A port the OS reports free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateNatsServer:
    """``start()`` launches (or relaunches on the same store) and waits until it listens;
    ``kill()`` SIGKILLs it, ``stop()`` stops it gracefully. Construct with the port to use (``os_free_port()`` or a port
    from the slot's range)."""

    def __init__(self, store: Path, port: int) -> None:
        self.store = store
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [NATS_BIN, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("private nats-server did not start")

    def stop(self) -> None:
        """A graceful stop (SIGTERM): the server flushes its stores before exiting."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None
