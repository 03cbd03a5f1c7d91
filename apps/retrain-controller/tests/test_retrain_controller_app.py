"""retrain-controller wiring on the embedded (SQLite) bus with the fake executors of
tests/testutil/retrain_fakes.py: drift → one run → promotion; canary.failed → rollback; gate failures,
step failures, schedule and manual triggers; dead letters; metrics; configuration errors;
the runner lock; a real process stopped by SIGTERM and restarted."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from keel_retrain_controller.main import APP, RetrainLoop, Settings, build_executors, main
from prometheus_client.parser import text_string_to_metric_families
from testutil import retrain_fakes
from testutil.isolation import port_base

from keel.events import Bus, Event, open_bus
from keel.pipelines import ConflictError, Controller, RunStatus, Trigger

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
FAKES = "testutil.retrain_fakes:build_executors"


def new_clock() -> retrain_fakes.ManualClock:
    return retrain_fakes.ManualClock(T0)


def drift_event(model: str = "credit", *, id: str | None = None) -> Event:
    return retrain_fakes.drift_event(model, T0 - timedelta(hours=2), id=id)


def signal_event(type_: str, payload: dict[str, Any], id: str) -> Event:
    return Event.create(type=type_, key="credit", event_time=T0, payload=payload, id=id)


@pytest.fixture()
def bus(tmp_path: Path) -> Iterator[Bus]:
    with open_bus(f"sqlite:///{tmp_path}/events.db") as b:
        yield b


def make_loop(
    tmp_path: Path,
    bus: Bus,
    clock: retrain_fakes.ManualClock,
    options: dict[str, Any] | None = None,
    **kw: Any,
) -> RetrainLoop:
    settings = Settings(
        home=tmp_path / "home",
        executors=FAKES,
        executor_options=options or {},
        poll_timeout_s=0.02,
        canary_window_s=kw.pop("canary_window_s", 0),
        wait_poll_s=kw.pop("wait_poll_s", 1),
        retry_failed_s=kw.pop("retry_failed_s", 60),
        params={"as_of": "2026-03-02"},
        code_version="abc",
        lock_hash="lock",
        **kw,
    )
    return RetrainLoop(
        settings,
        bus,
        build_executors(settings, bus),
        clock=clock,
        monotonic=clock.monotonic,
    )


def value(loop: RetrainLoop, name: str, **labels: str) -> float:
    got = loop.metrics.metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def calls(home: Path, step: str) -> int:
    return int(retrain_fakes.effects(home, "SELECT COUNT(*) FROM calls WHERE step = ?", step)[0][0])


def test_one_drift_episode_is_one_run_promoted_once(tmp_path: Path, bus: Bus) -> None:
    clock = new_clock()
    # the episode's event, a re-publication of it under another id, a malformed drift
    # event, and an event of another type: one run; one dead letter; one ignored
    bad = Event.create(type="drift.detected", key="credit", event_time=T0, payload={"model": 1})
    other = Event.create(type="drift.window", key="credit", event_time=T0, payload={})
    bus.publish_batch("drift", [drift_event(), drift_event(id="republished-1"), bad, other])
    loop = make_loop(tmp_path, bus, clock)
    try:
        loop.start()
        for _ in range(3):
            loop.tick()
            clock.advance(1)
        runs = loop.controller.runs()
        assert [(r.model, r.status) for r in runs] == [("credit", RunStatus.PROMOTED)]
        assert runs[0].trigger_key.startswith("drift:")
        home = tmp_path / "home"
        assert retrain_fakes.effects(home, "SELECT COUNT(*) FROM registrations") == [(1,)]
        assert retrain_fakes.effects(
            home, "SELECT alias, COUNT(*) FROM moves GROUP BY alias ORDER BY alias"
        ) == [("canary", 1), ("champion", 1), ("shadow", 1)]
        assert loop.submitted == {"start": 1, "duplicate": 1}
        dead = bus.dead_letters("drift")
        assert len(dead) == 1 and dead[0].event_id == bad.id
        assert "malformed drift.detected" in dead[0].reason and "payload" in dead[0].reason
        assert loop.dead_letters == 1
        # metrics
        m = "keel_pipelines_"
        assert value(loop, m + "runs_started_total", model="credit", trigger="drift") == 1
        assert value(loop, m + "runs_finished_total", model="credit", status="promoted") == 1
        assert value(loop, m + "runs_finished_total", model="credit", status="rolled_back") == 0
        assert (
            value(loop, m + "triggers_total", model="credit", trigger="drift", action="start") == 1
        )
        assert (
            value(loop, m + "triggers_total", model="credit", trigger="drift", action="duplicate")
            == 1
        )
        for step in ("build_training_set", "train", "gates", "canary", "promote_or_rollback"):
            assert value(loop, m + "step_duration_seconds_count", step=step) == 1, step
        assert value(loop, m + "active_run_age_seconds", model="credit") == 0
        assert value(loop, m + "provenance_intact") == 1
        assert loop.controller.lineage("credit").trigger["kind"] == "drift"
    finally:
        loop.close()
    # a redelivered or replayed episode after a restart is still a duplicate
    bus.publish("drift", drift_event(id="republished-2"))
    again = make_loop(tmp_path, bus, clock)
    try:
        again.start()
        again.tick()
        assert len(again.controller.runs()) == 1
        assert again.submitted == {"duplicate": 1}
        assert (
            value(again, "keel_pipelines_runs_started_total", model="credit", trigger="drift") == 0
        )
    finally:
        again.close()


def test_canary_failed_rolls_back_and_signals_apply_once(tmp_path: Path, bus: Bus) -> None:
    clock = new_clock()
    bus.publish("drift", drift_event())
    loop = make_loop(tmp_path, bus, clock, canary_window_s=3600, wait_poll_s=5)
    try:
        loop.start()
        loop.tick()
        (run,) = loop.controller.runs()
        assert (run.status, run.step) == (RunStatus.WAITING, "canary")
        version = loop.controller.steps(run.run_id)[-1].output["version"]
        failed = signal_event(
            "canary.failed",
            {"model": "credit", "version": version, "reason": "error rate 0.2"},
            "cf-1",
        )
        bus.publish_batch(
            "models",
            [
                signal_event("model.alias_moved", {"alias": "canary"}, "moved-1"),  # ignored
                signal_event("canary.failed", {"model": "credit"}, "cf-bad"),  # no version
                failed,
                signal_event("slo.reading", {"version": version, "name": "x"}, "slo-bad"),
            ],
        )
        loop.tick()  # consumes the signal; the waiting run is not due yet (wait_poll_s)
        assert loop.controller.run(run.run_id).status is RunStatus.WAITING
        clock.advance(5)
        loop.tick()
        info = loop.controller.run(run.run_id)
        assert info.status is RunStatus.ROLLED_BACK, info
        home = tmp_path / "home"
        assert retrain_fakes.effects(home, "SELECT version FROM rollbacks") == [(version,)]
        assert retrain_fakes.effects(home, "SELECT COUNT(*) FROM moves WHERE alias='champion'") == [
            (0,)
        ]
        decision = loop.controller.steps(run.run_id)[-2].output["decision"]
        assert decision["action"] == "rollback" and "canary.failed" in decision["reason"]
        assert value(loop, "keel_pipelines_canary_rollbacks_total", model="credit") == 1
        assert (
            value(loop, "keel_pipelines_runs_finished_total", model="credit", status="rolled_back")
            == 1
        )
        reasons = {d.event_id: d.reason for d in bus.dead_letters("models")}
        assert set(reasons) == {"cf-bad", "slo-bad"}
        assert "version" in reasons["cf-bad"] and "slo.reading" in reasons["slo-bad"]
        # a redelivered signal (same id) is recorded once
        bus.publish("models", signal_event("canary.failed", failed.json(), "cf-1-again"))
        loop.tick()
        assert len(loop.store.signals("credit", version)) == 2  # two distinct event ids
    finally:
        loop.close()
    sink = sqlite3.connect(tmp_path / "home" / "pipelines" / "retrain_controller.db")
    try:
        ids = [r[0] for r in sink.execute("SELECT event_id FROM signals ORDER BY event_id")]
    finally:
        sink.close()
    assert ids == ["cf-1", "cf-1-again"]


def test_gate_failure_leaves_champion_and_counts_the_gate(tmp_path: Path, bus: Bus) -> None:
    clock = new_clock()
    bus.publish("drift", drift_event())
    loop = make_loop(tmp_path, bus, clock, {"gate": "fail"})
    try:
        loop.start()
        loop.tick()
        (run,) = loop.controller.runs()
        assert run.status is RunStatus.GATE_FAILED and "quality" in run.detail
        assert retrain_fakes.effects(tmp_path / "home", "SELECT COUNT(*) FROM registrations") == [
            (0,)
        ]
        assert (
            value(loop, "keel_pipelines_gate_failures_total", model="credit", gate="quality") == 1
        )
        assert (
            value(loop, "keel_pipelines_runs_finished_total", model="credit", status="gate_failed")
            == 1
        )
    finally:
        loop.close()


def test_failed_step_is_counted_held_and_retried(tmp_path: Path, bus: Bus) -> None:
    clock = new_clock()
    bus.publish("drift", drift_event())
    loop = make_loop(tmp_path, bus, clock, {"fail_step": "train"}, retry_failed_s=60)
    try:
        loop.start()
        loop.tick()
        (run,) = loop.controller.runs()
        assert (run.status, run.step) == (RunStatus.FAILED, "train")
        assert value(loop, "keel_pipelines_step_failures_total", model="credit", step="train") == 1
        assert calls(tmp_path / "home", "train") == 1
        clock.advance(30)
        loop.tick()  # not yet due for a retry
        assert calls(tmp_path / "home", "train") == 1
        # the loop is stuck: the unfinished run's age grows with the clock
        assert value(loop, "keel_pipelines_active_run_age_seconds", model="credit") == 30
        clock.advance(30)
        loop.tick()
        assert calls(tmp_path / "home", "train") == 2
        assert value(loop, "keel_pipelines_step_failures_total", model="credit", step="train") == 2
        assert value(loop, "keel_pipelines_active_run_age_seconds", model="credit") == 60
    finally:
        loop.close()


def test_schedule_fires_once_per_slot_and_manual_runs_are_picked_up(
    tmp_path: Path, bus: Bus
) -> None:
    clock = new_clock()
    loop = make_loop(tmp_path, bus, clock, models=["credit"], schedule_every_s=3600, cooldown_s=0)
    try:
        loop.start()
        loop.tick()
        loop.tick()
        runs = loop.controller.runs()
        assert [r.trigger_key for r in runs] == ["schedule:2026-03-02T12:00:00.000000Z"]
        assert runs[0].status is RunStatus.PROMOTED
        # a manual request recorded by `keel retrain` (a controller without executors)
        clock.advance(1)
        cli = Controller(None, clock=clock, db_path=loop.settings.db_path)
        try:
            d = cli.submit(Trigger.manual("fraud", "req-1", at=clock(), who="ana"), {})
        finally:
            cli.close()
        assert d.run_id is not None
        loop.tick()
        assert loop.controller.run(d.run_id).status is RunStatus.PROMOTED
        assert (
            value(loop, "keel_pipelines_runs_started_total", model="fraud", trigger="manual") == 1
        )
        clock.advance(3600)  # the next slot
        loop.tick()
        assert [r.trigger_key.split(":")[0] for r in loop.controller.runs()] == [
            "schedule",
            "manual",
            "schedule",
        ]
    finally:
        loop.close()


def test_deferred_trigger_is_redelivered_not_lost(tmp_path: Path, bus: Bus) -> None:
    clock = new_clock()
    bus.publish_batch("drift", [drift_event("credit"), drift_event("fraud")])
    loop = make_loop(tmp_path, bus, clock, {"gate": "wait"}, max_concurrent_runs=1)
    try:
        loop.start()
        loop.tick()
        assert [r.model for r in loop.controller.runs()] == ["credit"]  # fraud deferred
        assert loop.submitted.get("defer", 0) >= 1
        # free the slot: give the waiting credit run up; the nak'ed fraud event comes back
        loop.controller.abandon(loop.controller.runs()[0].run_id, "ana", "test")
        deadline = time.monotonic() + 10
        while len(loop.controller.runs()) < 2:
            assert time.monotonic() < deadline, "the deferred trigger never came back"
            loop.tick()
        assert sorted(r.model for r in loop.controller.runs()) == ["credit", "fraud"]
        assert (
            value(loop, "keel_pipelines_runs_finished_total", model="credit", status="abandoned")
            == 1
        )
    finally:
        loop.close()


def test_a_busy_bus_is_retried_not_fatal(tmp_path: Path) -> None:
    """The bus refuses (here: another process holds the embedded log's write lock past the
    busy timeout): the tick logs it, keeps going, and consumes once the bus is back."""
    clock = new_clock()
    with open_bus(f"sqlite:///{tmp_path}/events.db", busy_timeout_s=0.05) as bus:
        loop = make_loop(tmp_path, bus, clock)
        try:
            loop.start()
            bus.publish("drift", drift_event())
            lock = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
            try:
                lock.execute("BEGIN EXCLUSIVE")
                loop.tick()
                assert loop.bus_errors == 1 and loop.bus_down
                assert loop.controller.runs() == []
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            loop.tick()  # still backing off: nothing fetched
            assert loop.controller.runs() == []
            clock.advance(1)
            loop.tick()
            assert [r.status for r in loop.controller.runs()] == [RunStatus.PROMOTED]
            assert not loop.bus_down
        finally:
            loop.close()


def test_provenance_tampering_is_reported(tmp_path: Path, bus: Bus) -> None:
    clock = new_clock()
    bus.publish("drift", drift_event())
    loop = make_loop(tmp_path, bus, clock, verify_every_s=10)
    try:
        loop.start()
        loop.tick()
        db = sqlite3.connect(loop.settings.db_path)
        try:
            db.execute("UPDATE provenance SET record = replace(record, 'abc', 'xyz') WHERE seq = 1")
            db.commit()
        finally:
            db.close()
        loop.tick()  # not due yet
        assert value(loop, "keel_pipelines_provenance_intact") == 1
        clock.advance(10)
        loop.tick()
        assert value(loop, "keel_pipelines_provenance_intact") == 0
        assert value(loop, "keel_pipelines_provenance_verify_failures_total") == 1
    finally:
        loop.close()


def test_one_controller_per_database(tmp_path: Path, bus: Bus) -> None:
    clock = new_clock()
    first = make_loop(tmp_path, bus, clock)
    second = make_loop(tmp_path, bus, clock)
    try:
        first.start()
        with pytest.raises(ConflictError, match="another controller"):
            second.start()
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:build", "module 'no_such_module_xyz' not found"),
        ("testutil.retrain_fakes:nothing", "has no callable 'nothing'"),
        ("testutil.retrain_fakes:not_a_factory", "has no callable 'not_a_factory'"),
        ("testutil.retrain_fakes", "is not module:factory"),
    ],
)
def test_executors_setting_errors_are_configuration_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, message: str
) -> None:
    env = {
        "KEEL_RETRAIN_CONTROLLER_HOME": str(tmp_path / "home"),
        "KEEL_RETRAIN_CONTROLLER_EXECUTORS": spec,
        "KEEL_RETRAIN_CONTROLLER_BUS_URL": f"sqlite:///{tmp_path}/events.db",
    }
    assert main([], env) == 2
    err = capsys.readouterr().err
    assert message in err and "retrain-controller:" in err
    assert not (tmp_path / "home").exists()  # nothing was opened


def test_default_executors_and_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = APP.load({})
    assert settings.executors == "keel.pipelines.local:build_executors"
    env = {
        "KEEL_RETRAIN_CONTROLLER_HOME": str(tmp_path / "home"),
        "KEEL_RETRAIN_CONTROLLER_EXECUTORS": FAKES,
        "KEEL_RETRAIN_CONTROLLER_EXECUTOR_OPTIONS": '{"gate": "maybe"}',
        "KEEL_RETRAIN_CONTROLLER_BUS_URL": f"sqlite:///{tmp_path}/events.db",
    }
    assert main([], env) == 2
    assert "refused its options" in capsys.readouterr().err
    # TOML: executor_options is a table
    cfg = tmp_path / "keel.toml"
    cfg.write_text(
        '[retrain-controller]\nexecutors = "testutil.retrain_fakes:build_executors"\n'
        '[retrain-controller.executor_options]\ngate = "fail"\nrequests = 5\n'
    )
    loaded = APP.load({}, cfg)
    assert loaded.executor_options == {"gate": "fail", "requests": 5}


# -- the real binary: SIGTERM, restart, resume --------------------------------------------


def _env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    settings = {
        "home": str(tmp_path / "home"),
        "bus_url": f"sqlite:///{tmp_path}/events.db",
        "executors": FAKES,
        "metrics_port": str(port),
        "poll_timeout_s": "0.1",
        "canary_window_s": "0",
        **extra,
    }
    env.update({f"KEEL_RETRAIN_CONTROLLER_{k.upper()}": v for k, v in settings.items()})
    return env


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def _wait_for(proc: subprocess.Popen[str], port: int, key: tuple[str, dict[str, str]]) -> None:
    want = (key[0], tuple(sorted(key[1].items())))
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if _metrics(port).get(want, 0) >= 1:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"no {key} in time"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[str]) -> tuple[int, list[dict[str, Any]]]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_binary_runs_stops_on_sigterm_and_resumes(tmp_path: Path) -> None:
    import keel_retrain_controller.main as app_main

    port = port_base(81)
    with open_bus(f"sqlite:///{tmp_path}/events.db") as bus:
        bus.publish("drift", drift_event())
    cmd = [sys.executable, str(app_main.__file__)]
    # first run: the gate waits for approvals, so the run is unfinished at SIGTERM
    env = _env(tmp_path, port, executor_options='{"gate": "wait"}', wait_poll_s="0.2")
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    _wait_for(
        proc, port, ("keel_pipelines_runs_started_total", {"model": "credit", "trigger": "drift"})
    )
    code, lines = _stop(proc)
    assert code == 0, lines
    msgs = [rec["msg"] for rec in lines]
    assert "retrain-controller ready" in msgs
    stopped = next(rec for rec in lines if rec["msg"] == "retrain-controller stopped")
    assert stopped["reason"] == "stop requested" and stopped["exit"] == 0
    assert all(rec["level"] != "ERROR" for rec in lines), lines
    # second run: the gate passes; the unfinished run resumes at start-up and is promoted
    env = _env(tmp_path, port, executor_options='{"gate": "pass"}')
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    _wait_for(
        proc,
        port,
        ("keel_pipelines_runs_finished_total", {"model": "credit", "status": "promoted"}),
    )
    code, lines = _stop(proc)
    assert code == 0, lines
    home = tmp_path / "home"
    assert calls(home, "train") == 1  # resumed, not redone
    assert retrain_fakes.effects(home, "SELECT COUNT(*) FROM registrations") == [(1,)]
    ready = next(rec for rec in lines if rec["msg"] == "retrain-controller ready")
    assert ready["runs"] == 1


def test_metric_vocabulary_matches_the_pipelines_core() -> None:
    """keel.telemetry cannot import keel.pipelines: its copies of the step names, trigger
    kinds and final statuses must match the core's."""
    from keel.pipelines import STEPS, TriggerKind
    from keel.pipelines._controller import TERMINAL
    from keel.telemetry import PipelinesMetrics

    assert PipelinesMetrics.STEPS == STEPS
    assert set(PipelinesMetrics.TRIGGER_KINDS) == {k.value for k in TriggerKind}
    assert set(PipelinesMetrics.FINISHED) == {s.value for s in TERMINAL}


def test_the_default_executors_options_are_recorded_for_reproduce(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the default executors the controller records their options where `keel
    reproduce` looks (`read_options(home)`); other factories' options are not recorded."""
    import keel_retrain_controller.main as rc
    from keel_retrain_controller.main import DEFAULT_EXECUTORS

    from keel.pipelines.reproduce import read_options

    made: list[dict[str, Any]] = []

    def factory(*, home: Path, bus: Any, options: dict[str, Any]) -> str:
        made.append(options)
        return "executors"

    monkeypatch.setattr(rc, "load_factory", lambda spec: factory)
    opts = {"model": "credit", "features": ["a", "b"], "trainer": {"seed": 3}}
    s = Settings(home=tmp_path / "home", executors=DEFAULT_EXECUTORS, executor_options=opts)
    assert build_executors(s, None) == "executors"  # type: ignore[arg-type]
    assert made == [opts] and read_options(tmp_path / "home") == opts
    other = Settings(home=tmp_path / "other", executors=FAKES, executor_options=opts)
    build_executors(other, None)  # type: ignore[arg-type]
    assert read_options(tmp_path / "other") is None


def test_empty_versions_are_detected_for_the_default_executors(tmp_path: Path) -> None:
    """The real executors put the lock hash into the artifact, and the registry refuses one
    without it: a controller left with empty settings detects both, as keel.trainer does."""
    from keel_retrain_controller.main import DEFAULT_EXECUTORS, _versions

    from keel.pipelines.local import detect_versions

    s = Settings(home=tmp_path / "home", executors=DEFAULT_EXECUTORS)
    code, lock = _versions(s)
    assert (code, lock) == detect_versions()
    assert code and lock.startswith(("sha256:", "dists-sha256:")) and len(lock) > 64
    given = Settings(
        home=tmp_path / "h", executors=DEFAULT_EXECUTORS, code_version="c", lock_hash="l"
    )
    assert _versions(given) == ("c", "l")
    fakes = Settings(home=tmp_path / "f", executors=FAKES)
    assert _versions(fakes) == ("", "")
