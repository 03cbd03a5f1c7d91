"""drift-monitor against a real NATS JetStream: windows, one drift.detected event per episode."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from keel_drift_monitor.main import DRIFT_TYPE, Settings, build_service
from testutil.isolation import nats_url, unique_name

from keel.drift import build_profile
from keel.events import Event, EventsError, open_bus

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.mark.integration
def test_drift_monitor_over_nats(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ref = pl.DataFrame(
        {"amount": rng.lognormal(3, 1, 5000), "merchant": rng.choice(["a", "b", "c"], 5000)}
    )
    profile = build_profile(ref).save(tmp_path / "profile.json")
    stream, out = unique_name("preds"), unique_name("drift")
    bus = open_bus(nats_url())
    try:
        events = []
        for h in range(6):
            shift = 1.0 if h >= 2 else 0.0
            for i in range(300):
                t = T0 + timedelta(hours=h, seconds=float(rng.uniform(0, 3600)))
                feats = {
                    "amount": float(rng.lognormal(3 + shift, 1)),
                    "merchant": str(rng.choice(["a", "b", "c"])),
                }
                events.append(
                    Event.create(
                        type="prediction.made",
                        key=f"c{i}",
                        event_time=t,
                        payload={"features": feats, "score": float(rng.beta(2, 5))},
                        # stable ids: the monitor samples rows by a hash of the id
                        id=f"pred-{h}-{i}",
                    )
                )
        bus.publish_batch(stream, events)
        cfg = Settings(
            profile=profile,
            stream=stream,
            output_stream=out,
            model="m",
            consecutive=2,
            min_samples=100,
            poll_timeout_s=0.5,
            batch_size=500,
        )
        svc = build_service(cfg, bus)
        windows = []
        for _ in range(10):
            windows += svc.step()
        windows += svc.flush()
        assert [w.decision.decision.value for w in windows if w.decision] == [
            "none",
            "none",
            "warn",
            "drift",
            "drift",
            "drift",
        ]
        got = bus.consumer(out, unique_name("reader")).fetch(max_messages=10, timeout_s=2.0)
        assert [d.event.type for d in got] == [DRIFT_TYPE]
        assert "amount" in got[0].event.json()["drifted"]
    finally:
        for s in (stream, out):
            with contextlib.suppress(EventsError):
                bus.delete_stream(s)
        bus.close()
