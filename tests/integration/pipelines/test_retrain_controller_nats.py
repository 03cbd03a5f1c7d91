"""retrain-controller over a real NATS JetStream: one drift episode (published twice) is one
run, promoted once; a canary.failed for the next run's canary rolls it back; a malformed
event is dead-lettered with its reason. Streams are unique to the test."""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from keel_retrain_controller.main import RetrainLoop, Settings, build_executors
from testutil import retrain_fakes
from testutil.isolation import nats_url, unique_name
from testutil.nats_server import PrivateNatsServer, os_free_port

from keel.events import Event, EventsError, open_bus
from keel.pipelines import CanaryPolicy, RunStatus

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def drift(model: str, hour: int, id: str | None = None) -> Event:
    return retrain_fakes.drift_event(model, T0 - timedelta(hours=hour), id=id)


@pytest.mark.integration
def test_retrain_controller_over_nats(tmp_path: Path) -> None:
    drift_stream, signals_stream = unique_name("drift"), unique_name("models")
    bus = open_bus(nats_url())
    clock = retrain_fakes.ManualClock(T0)
    try:
        bad = Event.create(type="drift.detected", key="m", event_time=T0, payload=[1, 2])
        bus.publish_batch(drift_stream, [drift("credit", 3), drift("credit", 3, "again"), bad])
        settings = Settings(
            home=tmp_path / "home",
            executors="testutil.retrain_fakes:build_executors",
            drift_stream=drift_stream,
            signals_stream=signals_stream,
            durable=unique_name("ctl"),
            poll_timeout_s=0.5,
            canary_window_s=0,
            cooldown_s=0,
        )
        loop = RetrainLoop(
            settings, bus, build_executors(settings, bus), clock=clock, monotonic=clock.monotonic
        )
        try:
            loop.start()
            for _ in range(3):
                loop.tick()
            runs = loop.controller.runs()
            assert [r.status for r in runs] == [RunStatus.PROMOTED]
            assert loop.submitted == {"start": 1, "duplicate": 1}
            (dead,) = bus.dead_letters(drift_stream)
            assert dead.event_id == bad.id and "must be a JSON object" in dead.reason

            # a second episode: its canary fails on serving's side
            loop.controller.canary_policy = CanaryPolicy(window=timedelta(hours=1))
            clock.now += timedelta(seconds=5)
            bus.publish(drift_stream, drift("credit", 1))
            loop.tick()
            second = loop.controller.runs()[-1]
            assert (second.status, second.step) == (RunStatus.WAITING, "canary")
            version = loop.controller.steps(second.run_id)[-1].output["version"]
            bus.publish(
                signals_stream,
                Event.create(
                    type="canary.failed",
                    key="credit",
                    event_time=clock.now,  # signals from before the canary started are ignored
                    payload={"model": "credit", "version": version, "reason": "p99"},
                ),
            )
            for _ in range(3):
                clock.now += timedelta(seconds=20)
                loop.tick()
            assert loop.controller.run(second.run_id).status is RunStatus.ROLLED_BACK
            home = tmp_path / "home"
            assert retrain_fakes.effects(home, "SELECT version FROM rollbacks") == [(version,)]
            assert retrain_fakes.effects(
                home, "SELECT COUNT(*) FROM moves WHERE alias = 'champion'"
            ) == [(1,)]
            registry = loop.metrics.metrics.registry
            assert (
                registry.get_sample_value(
                    "keel_pipelines_canary_rollbacks_total", {"model": "credit"}
                )
                == 1
            )
        finally:
            loop.close()
    finally:
        for s in (drift_stream, signals_stream):
            with contextlib.suppress(EventsError):
                bus.delete_stream(s)
        bus.close()


@pytest.mark.integration
def test_controller_rides_out_a_broker_outage(tmp_path: Path) -> None:
    """A private nats-server is stopped under the loop: ticks keep going (fetches come back
    empty while the client reconnects), and once it is back the trigger is consumed."""
    server = PrivateNatsServer(tmp_path / "js", os_free_port())
    server.start()
    clock = retrain_fakes.ManualClock(T0)
    bus = open_bus(server.url)
    try:
        settings = Settings(
            home=tmp_path / "home",
            executors="testutil.retrain_fakes:build_executors",
            poll_timeout_s=0.2,
            canary_window_s=0,
        )
        loop = RetrainLoop(
            settings, bus, build_executors(settings, bus), clock=clock, monotonic=clock.monotonic
        )
        try:
            loop.start()
            server.stop()
            for _ in range(3):
                loop.tick()  # no exception
                clock.advance(1)
            server.start()
            deadline = time.monotonic() + 60
            while True:  # the client reconnects; publish once it does
                try:
                    bus.publish("drift", drift("credit", 2))
                    break
                except EventsError:
                    assert time.monotonic() < deadline, "bus never came back"
                    time.sleep(0.5)
            while not loop.controller.runs():
                assert time.monotonic() < deadline, "the trigger was never consumed"
                clock.advance(1)
                loop.tick()
            loop.tick()
            assert [r.status for r in loop.controller.runs()] == [RunStatus.PROMOTED]
        finally:
            loop.close()
    finally:
        bus.close()
        server.stop()
