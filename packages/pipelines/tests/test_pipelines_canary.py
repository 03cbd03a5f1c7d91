"""Canary watch policy, one decision at a time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keel.pipelines import (
    CANARY_FAILED,
    SLO,
    CanaryAction,
    CanaryPolicy,
    CanarySignal,
    InvalidInputError,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
POL = CanaryPolicy(window=timedelta(minutes=30), min_requests=100)


def test_waits_during_window_then_promotes() -> None:
    d = POL.decide(
        version="7", started_at=T0, now=T0 + timedelta(minutes=10), signals=[], requests=500
    )
    assert d.action is CanaryAction.WAIT
    d = POL.decide(
        version="7", started_at=T0, now=T0 + timedelta(minutes=30), signals=[], requests=500
    )
    assert d.action is CanaryAction.PROMOTE


def test_too_few_requests_keeps_waiting() -> None:
    d = POL.decide(version="7", started_at=T0, now=T0 + timedelta(hours=1), signals=[], requests=99)
    assert d.action is CanaryAction.WAIT and "99" in d.reason


def test_canary_failed_rolls_back_immediately_with_evidence() -> None:
    s = CanarySignal(CANARY_FAILED, "7", T0 + timedelta(minutes=1), detail={"error_rate": 0.2})
    d = POL.decide(
        version="7", started_at=T0, now=T0 + timedelta(minutes=2), signals=[s], requests=5
    )
    assert d.action is CanaryAction.ROLLBACK and d.evidence[0]["detail"] == {"error_rate": 0.2}


def test_slo_breach_rolls_back_but_meeting_slo_does_not() -> None:
    ok = CanarySignal(SLO, "7", T0 + timedelta(minutes=1), name="p99_ms", value=40, objective=50)
    bad = CanarySignal(SLO, "7", T0 + timedelta(minutes=1), name="p99_ms", value=80, objective=50)
    later = T0 + timedelta(hours=1)
    assert (
        POL.decide(version="7", started_at=T0, now=later, signals=[ok], requests=500).action
        is CanaryAction.PROMOTE
    )
    d = POL.decide(version="7", started_at=T0, now=later, signals=[ok, bad], requests=500)
    assert d.action is CanaryAction.ROLLBACK and "p99_ms" in d.reason


def test_signals_of_other_versions_or_before_the_canary_are_ignored() -> None:
    other = CanarySignal(CANARY_FAILED, "6", T0 + timedelta(minutes=1))
    old = CanarySignal(CANARY_FAILED, "7", T0 - timedelta(minutes=1))
    d = POL.decide(
        version="7", started_at=T0, now=T0 + timedelta(hours=1), signals=[other, old], requests=500
    )
    assert d.action is CanaryAction.PROMOTE


def test_bad_signal_refused() -> None:
    with pytest.raises(InvalidInputError, match="kind"):
        CanarySignal("canary.meh", "7", T0)
    with pytest.raises(InvalidInputError, match="objective"):
        CanarySignal(SLO, "7", T0, name="x", value=1.0)
