"""The feature-worker binary end to end: embedded bus in, online store out, /metrics, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import keel_feature_worker.main as worker_main
import pytest
from testutil.isolation import port_base

from keel.events import Event, open_bus
from keel.features import SQLiteOnlineStore, load_registry, namespace
from keel.telemetry.app import AppConfigError

DEFS = textwrap.dedent(
    """
    from datetime import timedelta
    from keel.features import Aggregation, Entity, EventSource, FeatureView

    card_txn = FeatureView(
        name="card_txn",
        source=EventSource("txn.created", stream="transactions"),
        entities=[Entity("card")],
        fields={"amount": "float"},
        features=[
            Aggregation("count", None, timedelta(hours=1)),
            Aggregation("sum", "amount", timedelta(hours=1)),
        ],
        id_column="event_id",
    )
    """
)


@pytest.mark.integration
@pytest.mark.slow
def test_worker_binary_consumes_serves_metrics_and_stops_on_sigterm(tmp_path: Path) -> None:
    defs = tmp_path / "defs.py"
    defs.write_text(DEFS)
    home = tmp_path / "home"
    port = port_base(37)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "KEEL_HOME": str(home),
        "KEEL_FEATURE_WORKER_DEFINITIONS": str(defs),
        "KEEL_FEATURE_WORKER_METRICS_PORT": str(port),
        "KEEL_FEATURE_WORKER_FLUSH_INTERVAL_S": "0.2",
    }
    env.pop("KEEL_NATS_URL", None)
    env.pop("KEEL_REDIS_URL", None)
    # all five events inside one streaming bucket (1 h here): online values are exact at the
    # end of the bucket holding an entity's latest event, so the test must not straddle an hour
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(minutes=30)
    home.mkdir()
    bus = open_bus(f"sqlite:///{home}/events.db")
    bus.publish_batch(
        "transactions",
        [
            Event.create(
                type="txn.created",
                key="card-1",
                event_time=now - timedelta(minutes=i),
                payload={"amount": 2.0},
            )
            for i in range(5)
        ],
    )
    proc = subprocess.Popen(
        [sys.executable, worker_main.__file__],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ns = namespace(load_registry(str(defs)).get("card_txn"))
        online = SQLiteOnlineStore(home / "online.db")
        deadline = time.monotonic() + 60
        row = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            row = online.read(ns, "card-1")
            if row is not None and row.values["count_1h"] == 5:
                break
            time.sleep(0.1)
        assert row is not None and row.values == {"count_1h": 5, "sum_amount_1h": 10.0}
        assert row.event_time == now
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert (
            'keel_features_events_processed_total{feature_view="card_txn",outcome="ok"} 5.0'
            in metrics
        )
        assert 'keel_features_freshness_seconds{feature_view="card_txn"}' in metrics
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        # A later event while running, then SIGTERM: everything applied is acked before exit.
        bus.publish(
            "transactions",
            Event.create(type="txn.created", key="card-2", event_time=now, payload={"amount": 1.0}),
        )
        while online.read(ns, "card-2") is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
        assert proc.stderr is not None
        records = [json.loads(line) for line in proc.stderr.read().splitlines()]  # JSON only
        assert [r["msg"] for r in records if r["logger"] == "keel.app.feature-worker"] == [
            "feature-worker started",
            "feature-worker ready",
            "feature-worker stopped",
        ]
        assert records[-1]["reason"] == "stop requested" and records[-1]["applied"] == 6
        info = bus.consumer("transactions", durable="feature-worker").info()
        assert info.ack_pending == 0 and info.lag == 0
        assert (home / "offline" / "events.txn.created").is_dir()
        online.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        bus.close()


def test_invalid_config_is_reported_at_start(tmp_path: Path) -> None:
    main = worker_main.main
    assert main([], {"KEEL_HOME": str(tmp_path)}) == 2  # no definitions
    assert main([], {"KEEL_FEATURE_WORKER_DEFINITIONS": "x.py", "KEEL_METRICS_PORT": "99999"}) == 2
    assert main([], {"KEEL_FEATURE_WORKER_DEFINITIONS": str(tmp_path / "missing.py")}) == 2


def test_help_starts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert worker_main.main(["--help"], {}) == 0
    out = capsys.readouterr().out
    assert "KEEL_FEATURE_WORKER_DEFINITIONS | KEEL_DEFINITIONS  (required)" in out


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("KEEL_FEATURES_DURABLE", "KEEL_FEATURE_WORKER_DURABLE"),
        ("KEEL_FEATURES_FLUSH_INTERVAL_S", "KEEL_FEATURE_WORKER_FLUSH_INTERVAL_S"),
    ],
)
def test_old_variable_names_fail_naming_their_replacement(old: str, new: str) -> None:
    with pytest.raises(
        AppConfigError, match=f"{old} is no longer read: feature-worker now reads {new}"
    ):
        worker_main.APP.load({"KEEL_FEATURE_WORKER_DEFINITIONS": "d.py", old: "1"})


def test_the_cli_variables_do_not_stop_the_worker() -> None:
    """`keel features` reads KEEL_FEATURES_DEFINITIONS: a host may set it for the CLI."""
    env = {"KEEL_FEATURES_DEFINITIONS": "cli.py", "KEEL_FEATURE_WORKER_DEFINITIONS": "d.py"}
    assert worker_main.APP.load(env).definitions == "d.py"
