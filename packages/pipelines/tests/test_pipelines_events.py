"""Bus events (real keel.events envelopes) → triggers and canary signals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keel.drift import DriftDetected
from keel.events import Event
from keel.pipelines import (
    CANARY_FAILED,
    SLO,
    InvalidInputError,
    TriggerKind,
    signal_from_event,
    trigger_from_event,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_drift_event_becomes_episode_keyed_trigger() -> None:
    d = DriftDetected("credit", T0, T0 + timedelta(minutes=5), 100, ("a",), 0.5, {"a": 0.3}, "r")
    one = Event.create(type="drift.detected", key="credit", event_time=T0, payload=d.to_payload())
    two = Event.create(type="drift.detected", key="credit", event_time=T0, payload=d.to_payload())
    assert one.id != two.id  # re-published under a new id: still the same episode
    t1, t2 = trigger_from_event(one, at=T0), trigger_from_event(two, at=T0)
    assert t1.kind is TriggerKind.DRIFT and t1.key == t2.key == f"drift:{d.event_id}"


def test_canary_events_become_signals() -> None:
    f = Event.create(
        type="canary.failed", key="credit", event_time=T0, payload={"version": 7, "error_rate": 0.3}
    )
    s = signal_from_event(f)
    assert (s.kind, s.version, s.at, dict(s.detail)) == (
        CANARY_FAILED,
        "7",
        T0,
        {"error_rate": 0.3},
    )
    r = Event.create(
        type="slo.reading",
        key="credit",
        event_time=T0,
        payload={"version": "7", "name": "p99_ms", "value": 80, "objective": 50},
    )
    s = signal_from_event(r)
    assert (s.kind, s.name, s.value, s.objective) == (SLO, "p99_ms", 80.0, 50.0)


@pytest.mark.parametrize(
    ("etype", "payload", "match"),
    [
        ("txn.created", {}, "not a retrain trigger"),
        ("drift.detected", {"model": "credit"}, "window_start"),
        ("drift.detected", [1, 2], "JSON object"),
    ],
)
def test_bad_trigger_events_are_named(etype: str, payload: object, match: str) -> None:
    e = Event.create(type=etype, key="k", event_time=T0, payload=payload)
    with pytest.raises(InvalidInputError, match=match):
        trigger_from_event(e, at=T0)


@pytest.mark.parametrize(
    ("etype", "payload", "match"),
    [
        ("canary.failed", {"error_rate": 1}, "'version'"),
        ("slo.reading", {"version": "7", "name": "x", "value": 1}, "objective"),
        ("slo.reading", {"version": "7", "name": "x", "value": "high", "objective": 1}, "numbers"),
        ("model.loaded", {"version": "7"}, "not a canary signal"),
    ],
)
def test_bad_signal_events_are_named(etype: str, payload: object, match: str) -> None:
    e = Event.create(type=etype, key="k", event_time=T0, payload=payload)
    with pytest.raises(InvalidInputError, match=match):
        signal_from_event(e)
