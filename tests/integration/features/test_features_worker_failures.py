"""The feature-worker binary fails with ONE clear line and a non-zero exit, never a traceback:
metrics port in use, unwritable KEEL_HOME, a bogus bus URL, NATS down or refusing the
password, a file-size limit hit while writing (the disk-full path: no part-*.tmp left)."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keel_feature_worker.main as worker_main
import polars as pl
import pytest

from keel.features import OfflineStore, UnavailableError

DEFS = textwrap.dedent(
    """
    from datetime import timedelta
    from keel.features import Aggregation, Entity, EventSource, FeatureView

    card_txn = FeatureView(
        name="card_txn",
        source=EventSource("txn.created", stream="transactions"),
        entities=[Entity("card")],
        fields={"amount": "float"},
        features=[Aggregation("count", None, timedelta(hours=1))],
        id_column="event_id",
    )
    """
)


def _run(tmp_path: Path, **env_over: str) -> subprocess.CompletedProcess[str]:
    defs = tmp_path / "defs.py"
    defs.write_text(DEFS)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "KEEL_HOME": str(tmp_path / "home"),
        "KEEL_FEATURE_WORKER_DEFINITIONS": str(defs),
        "KEEL_METRICS_PORT": "0",
    }
    for k in ("KEEL_NATS_URL", "KEEL_REDIS_URL", "KEEL_BUS_URL"):
        env.pop(k, None)
    env.update(env_over)
    return subprocess.run(
        [sys.executable, worker_main.__file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one ERROR record's message (every stderr line is a JSON record)."""
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    errors = [r for r in records if r["level"] == "ERROR"]
    assert proc.returncode == 1, proc.stderr
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0]["msg"].startswith("feature-worker: ")
    assert records[-1]["msg"] == "feature-worker stopped" and records[-1]["exit"] == 1
    assert "hunter2" not in proc.stderr
    return str(errors[0]["msg"])


def test_metrics_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # a port this test holds: no clash with a parallel run
        s.listen()
        line = _one_line(_run(tmp_path, KEEL_METRICS_PORT=str(s.getsockname()[1])))
    assert "cannot serve metrics" in line and "port in use" in line


def test_unwritable_home(tmp_path: Path) -> None:
    line = _one_line(_run(tmp_path, KEEL_HOME="/sys/kernel"))  # exists, read-only even for root
    assert "/sys/kernel" in line


def test_bogus_bus_url_names_the_scheme_without_a_password(tmp_path: Path) -> None:
    line = _one_line(_run(tmp_path, KEEL_BUS_URL="bogus://user:hunter2@host/x"))
    assert "unsupported event bus URL" in line and "hunter2" not in line


def test_nats_down(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = _one_line(_run(tmp_path, KEEL_BUS_URL=f"nats://127.0.0.1:{port}"))
    assert f"cannot reach NATS at nats://127.0.0.1:{port}" in line


def _limit_file_size() -> None:  # runs in the child: the disk "fills" after 64 KiB per file
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_offline_write_that_runs_out_of_space_leaves_no_tmp_file(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import datetime as dt, sys
        import polars as pl
        from keel.features import OfflineStore, UnavailableError
        t = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
        frame = pl.DataFrame({{"event_time": [t] * 200_000, "x": [str(i) for i in range(200_000)]}})
        try:
            OfflineStore({str(tmp_path / "off")!r}).write("d", frame, time_column="event_time")
        except UnavailableError as exc:
            print(exc)
            sys.exit(3)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_file_size,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert "offline write" in proc.stdout and "File too large" in proc.stdout
    assert not list((tmp_path / "off").rglob("*.tmp"))
    assert not list((tmp_path / "off").rglob("*.parquet"))


def test_discard_removes_named_parts_and_leftovers(tmp_path: Path) -> None:
    import datetime as dt

    store = OfflineStore(tmp_path)
    t = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    frame = pl.DataFrame({"event_time": [t, t + dt.timedelta(days=1)], "x": [1, 2]})
    store.write("d", frame, time_column="event_time", name="w-000000000001")
    store.write("d", frame, time_column="event_time", name="w-000000000002")
    (tmp_path / "d" / "date=2024-01-01" / "part-zzz.tmp").write_bytes(b"half")
    assert store.discard("d", "w-000000000002") == 3
    assert store.read("d").collect().height == 2
    with pytest.raises(UnavailableError):
        OfflineStore("/sys/kernel/x").write("d", frame, time_column="event_time")
