"""Property: however drift deliveries are duplicated and interleaved, the controller starts
at most one run per episode, never two live runs of one model, and every episode key is
recorded exactly once (oracle: a direct simulation of the documented decision order)."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from pipelines_testkit import StepClock

from keel.drift import DriftDetected
from keel.pipelines import Action, Controller, Trigger, TriggerPolicy

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _payload(model: str, episode: int) -> dict[str, object]:
    start = T0 + timedelta(hours=episode)
    return DriftDetected(
        model, start, start + timedelta(minutes=5), 100, ("a",), 0.5, {"a": 0.3}, "r"
    ).to_payload()


deliveries = st.lists(
    st.tuples(st.sampled_from(["credit", "fraud"]), st.integers(0, 4)), min_size=1, max_size=25
)


@given(deliveries, st.integers(1, 2))
def test_duplicates_and_interleavings_never_double_start(
    seq: list[tuple[str, int]], limit: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ctl = Controller(
            None,
            clock=StepClock(T0, timedelta(minutes=1)),
            db_path=Path(tmp) / "p.db",
            trigger_policy=TriggerPolicy(cooldown=timedelta(0), max_concurrent_runs=limit),
        )
        seen: set[tuple[str, int]] = set()
        active: dict[str, str] = {}
        for model, ep in seq:
            d = ctl.submit(Trigger.from_drift(_payload(model, ep), at=T0))
            if (model, ep) in seen:
                expected = Action.DUPLICATE
            elif model in active:
                expected = Action.COALESCE
            elif len(active) >= limit:
                expected = Action.DEFER
            else:
                expected = Action.START
            assert d.action is expected, (model, ep, d)
            if expected is not Action.DEFER:
                seen.add((model, ep))
            if expected is Action.START:
                assert d.run_id is not None
                active[model] = d.run_id
            if expected is Action.COALESCE:
                assert d.run_id == active[model]
        runs = ctl.runs()
        assert len(runs) == len(active) <= limit
        assert len({r.model for r in runs}) == len(runs)
        assert ctl.verify_provenance().ok
        ctl.close()
