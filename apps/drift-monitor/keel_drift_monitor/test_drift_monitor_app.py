"""drift-monitor wiring on the embedded bus: windows, one drift.detected per episode, /metrics, config."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
from keel_drift_monitor.main import APP, DRIFT_TYPE, Settings, build_service, main, run

from keel.drift import build_profile, episode_event_id
from keel.events import Event, open_bus
from keel.telemetry import get_logger
from keel.telemetry.app import AppConfigError, AppContext

APP_LOG = get_logger("keel.app.drift-monitor")

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def predictions(
    rng: np.random.Generator, hours: int, drift_from: int, per_hour: int = 400
) -> list[Event]:
    out = []
    for h in range(hours):
        shift = 1.0 if h >= drift_from else 0.0
        for i in range(per_hour):
            t = T0 + timedelta(hours=h, seconds=float(rng.uniform(0, 3600)))
            feats = {
                "amount": float(rng.lognormal(3 + shift, 1)),
                "merchant": str(rng.choice(["a", "b", "c"])),
            }
            out.append(
                Event.create(
                    type="prediction.made",
                    key=f"card-{i}",
                    event_time=t,
                    payload={"features": feats, "score": float(rng.beta(2, 5))},
                    # stable ids: the monitor samples rows by a hash of the id
                    id=f"pred-{h}-{i}",
                )
            )
    return out


@pytest.fixture()
def profile_path(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    ref = pl.DataFrame(
        {"amount": rng.lognormal(3, 1, 5000), "merchant": rng.choice(["a", "b", "c"], 5000)}
    )
    return build_profile(ref).save(tmp_path / "profile.json")


def test_one_drift_event_per_episode(tmp_path: Path, profile_path: Path) -> None:
    bus = open_bus(f"sqlite://{tmp_path / 'events.db'}")
    rng = np.random.default_rng(1)
    bus.publish_batch("predictions", predictions(rng, hours=8, drift_from=3))
    cfg = Settings(
        profile=profile_path,
        model="fraud",
        window_s=3600,
        consecutive=2,
        min_samples=100,
        poll_timeout_s=0.05,
        batch_size=500,
    )
    svc = build_service(cfg, bus)
    windows = []
    for _ in range(20):
        windows += svc.step()
    windows += svc.flush()
    assert len(windows) == 8
    assert [w.decision.decision.value for w in windows if w.decision] == [
        "none",
        "none",
        "none",
        "warn",
        "drift",
        "drift",
        "drift",
        "drift",
    ]
    drift_events = [
        d.event for d in bus.consumer("drift", "test").fetch(max_messages=100, timeout_s=0.2)
    ]
    assert [e.type for e in drift_events] == [DRIFT_TYPE]
    body = drift_events[0].json()
    assert body["model"] == "fraud" and "amount" in body["drifted"]
    assert drift_events[0].id == episode_event_id("fraud", datetime(2026, 3, 1, 4, tzinfo=UTC))
    text = svc.metrics.metrics.exposition().decode()
    assert 'keel_drift_episodes_total{model="fraud"} 1.0' in text
    assert 'keel_drift_decision{decision="drift",model="fraud"} 1.0' in text
    # a restart that re-evaluates the same episode publishes the same id: the bus dedupes it
    bus.publish("drift", drift_events[0])
    assert bus.stream_info("drift").count == 1
    bus.close()


def test_run_serves_metrics(tmp_path: Path, profile_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'events.db'}"
    cfg = Settings(
        profile=profile_path, bus_url=url, home=tmp_path, metrics_port=0, poll_timeout_s=0.05
    )
    ports: list[int] = []
    started = threading.Event()

    class Ctx(AppContext):
        def ready(self, **fields: object) -> None:
            ports.append(int(fields["metrics_port"]))  # type: ignore[call-overload]
            started.set()

    ctx = Ctx("drift-monitor", APP_LOG)
    th = threading.Thread(target=run, args=(cfg, ctx), daemon=True)
    th.start()
    try:
        assert started.wait(20)
        r = httpx.get(f"http://127.0.0.1:{ports[0]}/metrics", timeout=5)
        assert r.status_code == 200 and "keel_drift_windows_total" in r.text
    finally:
        ctx.stop.set()
        th.join(20)
    assert not th.is_alive()
    assert ctx.outcome == {"dead_letters": 0, "episodes": 0}
    assert (tmp_path / "drift_monitor.db").exists()  # state defaults into home


def test_config_follows_the_app_convention(tmp_path: Path, profile_path: Path) -> None:
    cfg = APP.load(
        {"KEEL_DRIFT_MONITOR_PROFILE": str(profile_path), "KEEL_DRIFT_MONITOR_WINDOW_S": "600"}
    )
    assert cfg.window_s == 600 and cfg.stream == "predictions"
    # the shared variable is read too (it was silently ignored before)
    assert (
        APP.load({"KEEL_PROFILE": str(profile_path), "KEEL_METRICS_PORT": "9201"}).metrics_port
        == 9201
    )
    with pytest.raises(AppConfigError, match="does not exist: build one"):
        APP.load({"KEEL_DRIFT_MONITOR_PROFILE": str(tmp_path / "missing.json")})
    with pytest.raises(AppConfigError, match="KEEL_DRIFT_MONITOR_WINDOW_S"):
        APP.load(
            {"KEEL_DRIFT_MONITOR_PROFILE": str(profile_path), "KEEL_DRIFT_MONITOR_WINDOW_S": "-1"}
        )
    with pytest.raises(
        AppConfigError, match="configuration: window_s must be a whole multiple of slide_s$"
    ):
        APP.load({"KEEL_PROFILE": str(profile_path), "KEEL_DRIFT_MONITOR_SLIDE_S": "700"})
    toml = tmp_path / "m.toml"
    toml.write_text(f'[drift-monitor]\nprofile = "{profile_path}"\nwindwo_s = 10\n')
    with pytest.raises(AppConfigError, match="windwo_s"):
        APP.load({"KEEL_DRIFT_MONITOR_CONFIG": str(toml)})
    with pytest.raises(AppConfigError, match="profile is required: set KEEL_DRIFT_MONITOR_PROFILE"):
        APP.load({})


def test_old_variable_names_fail_naming_their_replacement(
    tmp_path: Path, profile_path: Path
) -> None:
    for old, new in (
        ("KEEL_DRIFT_PROFILE", "KEEL_DRIFT_MONITOR_PROFILE"),
        ("KEEL_DRIFT_METRICS_PORT", "KEEL_DRIFT_MONITOR_METRICS_PORT"),
        ("KEEL_DRIFT_CONFIG", "KEEL_DRIFT_MONITOR_CONFIG"),
    ):
        with pytest.raises(
            AppConfigError, match=f"{old} is no longer read: drift-monitor now reads {new}"
        ):
            APP.load({"KEEL_PROFILE": str(profile_path), old: "1"})
    toml = tmp_path / "old.toml"
    toml.write_text(f'[drift_monitor]\nprofile = "{profile_path}"\n')
    with pytest.raises(
        AppConfigError, match=r"\[drift_monitor\] is no longer read: rename it \[drift-monitor\]"
    ):
        APP.load({"KEEL_CONFIG": str(toml)})


def test_help_starts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], env={}) == 0
    out = capsys.readouterr().out
    assert "KEEL_DRIFT_MONITOR_PROFILE | KEEL_PROFILE" in out and "default 9108" in out


def test_poison_events_are_dead_lettered_and_the_good_ones_applied(
    tmp_path: Path, profile_path: Path
) -> None:
    bus = open_bus(f"sqlite://{tmp_path / 'events.db'}")
    rng = np.random.default_rng(4)
    good = predictions(rng, hours=1, drift_from=9, per_hour=50)

    def pred(i: str, payload: object, t: datetime = T0) -> Event:
        raw = payload if isinstance(payload, bytes) else None
        return Event.create(
            type="prediction.made",
            key="k",
            event_time=t,
            id=i,
            payload=raw if raw is not None else payload,
        )

    poison = [
        pred("p-score", {"features": {"amount": 1.0}, "score": "high"}),
        pred("p-list", [1, 2, 3]),
        pred("p-utf8", b'{"features": {"merchant": "\xff\xfe"}}'),
        pred("p-type", {"features": {"amount": "12.5"}}),
        pred("p-nested", {"features": {"amount": {"x": 1}}}),
        pred("p-future", {"features": {"amount": 1.0}}, datetime(2999, 1, 1, tzinfo=UTC)),
        pred("p-notjson", b"{nope"),
    ]
    bus.publish_batch("predictions", good[:25] + poison + good[25:])
    cfg = Settings(profile=profile_path, min_samples=10, poll_timeout_s=0.05)
    svc = build_service(cfg, bus)
    _drain(svc)
    windows = svc.flush()
    assert sum(w.result.n_rows for w in windows) == 50  # every good event applied
    dead = {d.event_id: d.reason for d in bus.dead_letters("predictions")}
    assert set(dead) == {e.id for e in poison}
    assert "score must be a probability" in dead["p-score"]
    assert "future" in dead["p-future"]
    assert svc.consumer.info().ack_pending == 0  # type: ignore[attr-defined]
    bus.close()


def test_a_restart_resumes_exactly_from_the_committed_state(
    tmp_path: Path, profile_path: Path
) -> None:
    from keel.drift import SQLiteMonitorStore

    rng = np.random.default_rng(8)
    events = predictions(rng, hours=6, drift_from=3, per_hour=300)

    def run_once(home: Path, crash_every: int | None) -> list[dict]:
        bus = open_bus(f"sqlite://{home / 'events.db'}")
        bus.publish_batch("predictions", events)
        cfg = Settings(profile=profile_path, min_samples=50, poll_timeout_s=0.05, batch_size=170)
        store = SQLiteMonitorStore(home / "state.db")
        svc, steps = build_service(cfg, bus, store, instance="m-0"), 0
        while True:
            steps += 1
            if crash_every and steps % crash_every == 0:  # fetched, never committed: SIGKILL
                svc.consumer.fetch(170, 0.05)
                svc = build_service(cfg, bus, store, instance="m-0")
                continue
            svc.step()
            if _done(svc):
                break
        svc.flush()
        out = store.windows()
        bus.close()
        return out

    clean = run_once(tmp_path / "a", None)
    assert len(clean) == 6
    assert run_once(tmp_path / "b", 3) == clean


def _done(svc) -> bool:  # type: ignore[no-untyped-def]
    info = svc.consumer.info()
    return info.lag == 0 and info.ack_pending == 0


def _drain(svc) -> None:  # type: ignore[no-untyped-def]
    svc.step()
    while not _done(svc):
        svc.step()


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"KEEL_BUS_URL": "bogus://u:hunter2@h/x"}, "unsupported event bus URL"),
        ({"KEEL_HOME": "/sys/kernel"}, "monitor store"),
    ],
)
def test_failures_are_one_line_and_exit_1(
    tmp_path: Path, profile_path: Path, env: dict[str, str], needle: str
) -> None:
    import os
    import subprocess
    import sys

    import keel_drift_monitor.main as monitor_main

    full = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    full |= {
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "KEEL_HOME": str(tmp_path / "home"),
        "KEEL_DRIFT_MONITOR_PROFILE": str(profile_path),
        "KEEL_BUS_URL": f"sqlite://{tmp_path / 'events.db'}",
        "KEEL_DRIFT_MONITOR_METRICS_PORT": "0",
        **env,
    }
    proc = subprocess.run(
        [sys.executable, monitor_main.__file__],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    records = [json.loads(ln) for ln in proc.stderr.splitlines() if ln.strip()]  # JSON only
    errors = [r for r in records if r["level"] == "ERROR"]
    assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr
    assert errors[0]["msg"].startswith("drift-monitor: ") and needle in errors[0]["msg"]
    assert "hunter2" not in proc.stderr
    assert records[-1]["msg"] == "drift-monitor stopped" and records[-1]["exit"] == 1


def test_a_dead_letter_whose_settlement_failed_is_dead_lettered_on_redelivery(
    tmp_path: Path, profile_path: Path
) -> None:
    """The broker goes away between the commit and the dead-lettering (a broker restart): the
    uninterrupted service must dead-letter the redelivered event, not just ack it as a
    committed one."""
    import time

    from keel.events import UnavailableError

    bus = open_bus(f"sqlite://{tmp_path / 'events.db'}")
    rng = np.random.default_rng(5)
    good = predictions(rng, hours=1, drift_from=9, per_hour=20)
    bad = Event.create(
        type="prediction.made", key="k", event_time=T0, id="p-bad", payload={"score": "high"}
    )
    bus.publish_batch("predictions", [*good[:10], bad, *good[10:]])
    cfg = Settings(profile=profile_path, min_samples=10, poll_timeout_s=0.05)
    svc = build_service(cfg, bus)
    consumer = bus.consumer("predictions", "dm-short-wait", ack_wait_s=0.3)
    real_term = consumer._term
    failed: list[str] = []

    def term_once_unavailable(delivery, reason: str) -> None:  # type: ignore[no-untyped-def]
        if not failed:
            failed.append(delivery.event.id)
            raise UnavailableError("broker restarting")
        real_term(delivery, reason)

    consumer._term = term_once_unavailable  # type: ignore[method-assign]
    svc.consumer = consumer
    deadline = time.monotonic() + 30
    while not bus.dead_letters("predictions"):
        assert time.monotonic() < deadline, "the redelivered dead letter was never settled"
        svc.step()
    assert failed == ["p-bad"]
    assert [d.event_id for d in bus.dead_letters("predictions")] == ["p-bad"]
    bus.close()
