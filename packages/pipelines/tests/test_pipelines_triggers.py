"""Trigger policy, one decision at a time (clock passed in)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keel.drift import DriftDetected, episode_event_id
from keel.pipelines import (
    Action,
    ActiveRun,
    CountPolicy,
    InvalidInputError,
    SchedulePolicy,
    Trigger,
    TriggerKind,
    TriggerPolicy,
    TriggerState,
)

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def drift(window_start: datetime, model: str = "credit") -> DriftDetected:
    return DriftDetected(
        model,
        window_start,
        window_start + timedelta(minutes=5),
        500,
        ("amount",),
        0.5,
        {"amount": 0.4},
        "2 consecutive windows drifted",
    )


def test_drift_trigger_is_keyed_by_episode_with_keel_drift_id() -> None:
    ev = drift(T0)
    t = Trigger.from_drift(ev.to_payload(), at=T0)
    assert t.kind is TriggerKind.DRIFT
    assert t.key == "drift:" + episode_event_id("credit", T0)
    assert t.evidence["drift_detected"]["drifted"] == ["amount"]
    # the same episode redelivered (payload or object) is the same key
    assert Trigger.from_drift(ev, at=T0 + timedelta(hours=1)).key == t.key


def test_malformed_drift_payload_names_the_field() -> None:
    with pytest.raises(InvalidInputError, match="window_start"):
        Trigger.from_drift({"model": "credit"}, at=T0)


def test_duplicate_delivery_is_a_duplicate() -> None:
    t = Trigger.from_drift(drift(T0), at=T0)
    d = TriggerPolicy().decide(TriggerState(seen_keys=frozenset({t.key})), t, T0)
    assert d.action is Action.DUPLICATE


def test_trigger_for_model_with_active_run_coalesces() -> None:
    t = Trigger.from_drift(drift(T0 + timedelta(hours=1)), at=T0)
    st = TriggerState(active=(ActiveRun("run-1", "credit", T0),))
    d = TriggerPolicy().decide(st, t, T0 + timedelta(hours=1))
    assert (d.action, d.run_id) == (Action.COALESCE, "run-1")


def test_cooldown_suppresses_drift_but_not_manual() -> None:
    pol = TriggerPolicy(cooldown=timedelta(hours=6))
    st = TriggerState(last_started={"credit": T0})
    t = Trigger.from_drift(drift(T0 + timedelta(hours=2)), at=T0)
    assert pol.decide(st, t, T0 + timedelta(hours=2)).action is Action.COOLDOWN
    assert pol.decide(st, t, T0 + timedelta(hours=6)).action is Action.START
    m = Trigger.manual("credit", "r1", at=T0, who="ana")
    assert pol.decide(st, m, T0 + timedelta(hours=1)).action is Action.START
    strict = TriggerPolicy(cooldown=timedelta(hours=6), manual_bypasses_cooldown=False)
    assert strict.decide(st, m, T0 + timedelta(hours=1)).action is Action.COOLDOWN


def test_max_concurrency_defers_other_models() -> None:
    st = TriggerState(active=(ActiveRun("run-1", "fraud", T0),))
    t = Trigger.from_drift(drift(T0, model="credit"), at=T0)
    assert TriggerPolicy(max_concurrent_runs=1).decide(st, t, T0).action is Action.DEFER
    assert TriggerPolicy(max_concurrent_runs=2).decide(st, t, T0).action is Action.START


def test_schedule_fires_once_per_slot() -> None:
    pol = SchedulePolicy(every=timedelta(days=1), anchor=datetime(2026, 1, 1, tzinfo=UTC))
    t = pol.due("credit", None, T0)
    assert t is not None and t.key == "schedule:2026-03-01T00:00:00.000000Z"
    slot = datetime(2026, 3, 1, tzinfo=UTC)
    assert pol.due("credit", slot, T0 + timedelta(hours=5)) is None
    nxt = pol.due("credit", slot, T0 + timedelta(days=1))
    assert nxt is not None and nxt.key == "schedule:2026-03-02T00:00:00.000000Z"
    assert pol.due("credit", None, datetime(2025, 1, 1, tzinfo=UTC)) is None


@pytest.mark.parametrize("kind", [TriggerKind.DATA_VOLUME, TriggerKind.LABELS])
def test_count_triggers_fire_at_threshold_keyed_by_watermark(kind: TriggerKind) -> None:
    pol = CountPolicy(kind, min_new=1000)
    assert pol.fires("credit", 5000, 5999, T0) is None
    t = pol.fires("credit", 5000, 6000, T0)
    assert (
        t is not None
        and t.kind is kind
        and t.key == f"{kind.value}:5000"
        and t.evidence["new"] == 1000
    )
    with pytest.raises(InvalidInputError, match="below the watermark"):
        pol.fires("credit", 5000, 10, T0)


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="trigger kind"):
        Trigger("weather", "credit", "k", T0)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="time zone"):
        Trigger(TriggerKind.MANUAL, "credit", "k", datetime(2026, 1, 1))
    with pytest.raises(InvalidInputError, match="max_concurrent_runs"):
        TriggerPolicy(max_concurrent_runs=0)
    with pytest.raises(InvalidInputError, match="who"):
        Trigger.manual("credit", "r", at=T0, who=" ")
