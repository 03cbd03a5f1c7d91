"""StreamingMonitor: windows by event time, bounded memory, late rows, performance, metrics."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
import scipy.stats as sst
from prometheus_client import CollectorRegistry

from keel.drift import (
    DriftMetrics,
    DriftPolicy,
    InvalidInputError,
    Level,
    ScoreHistogram,
    StreamingMonitor,
    WindowConfig,
    build_profile,
    check_drift,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def records(
    rng: np.random.Generator, n: int, start: datetime, span: timedelta, shift: float = 0.0
) -> pl.DataFrame:
    offsets = rng.uniform(0, span.total_seconds(), n)
    times = [start + timedelta(seconds=float(s)) for s in offsets]
    p = rng.beta(2 + 4 * shift, 5, n)
    return pl.DataFrame(
        {
            "event_time": pl.Series(times, dtype=pl.Datetime("us", "UTC")),
            "amount": rng.lognormal(3 + shift, 1, n),
            "merchant": rng.choice(
                ["a", "b", "c"], n, p=[0.6 - 0.4 * shift, 0.3, 0.1 + 0.4 * shift]
            ),
            "score": p,
        }
    )


@pytest.fixture(scope="module")
def profile():
    rng = np.random.default_rng(0)
    return build_profile(records(rng, 20_000, T0, timedelta(days=1)).drop("event_time", "score"))


def test_tumbling_windows_match_a_batch_check(profile) -> None:
    rng = np.random.default_rng(1)
    data = records(rng, 6000, T0, timedelta(hours=3)).sample(fraction=1.0, shuffle=True, seed=2)
    mon = StreamingMonitor(
        profile, WindowConfig(size=timedelta(hours=1), allowed_lateness=timedelta(hours=2))
    )
    windows = []
    for i in range(0, data.height, 500):
        windows += mon.observe(data[i : i + 500])
    windows += mon.flush()
    assert len(windows) == 3 and mon.stats.late_rows == 0
    for k, w in enumerate(windows):
        lo, hi = T0 + timedelta(hours=k), T0 + timedelta(hours=k + 1)
        exact = data.filter((pl.col("event_time") >= lo) & (pl.col("event_time") < hi))
        assert w.result.n_rows == exact.height
        assert w.result.window_start == lo.strftime("%Y-%m-%dT%H:%M:%SZ")
        batch = check_drift(profile, exact.drop("event_time", "score"))
        a, b = w.result.features["amount"], batch.features["amount"]
        assert a.n_cur == b.n_cur
        assert a.ks_error is not None and abs(a.ks - b.ks) <= a.ks_error + 1e-12  # type: ignore[operator]
        m, n = w.result.features["merchant"], batch.features["merchant"]
        assert m.chi2 == pytest.approx(n.chi2) and m.psi == pytest.approx(n.psi)


def test_sliding_windows_overlap(profile) -> None:
    rng = np.random.default_rng(3)
    data = records(rng, 4000, T0, timedelta(hours=4))
    mon = StreamingMonitor(profile, WindowConfig(size=timedelta(hours=2), slide=timedelta(hours=1)))
    windows = mon.observe(data.sort("event_time")) + mon.flush()
    hours = data["event_time"].dt.hour().to_numpy()
    counts = np.bincount(hours, minlength=4)
    got = [w.result.n_rows for w in windows]
    # windows [0,2), [1,3), [2,4), then the tail [3,5) at flush
    assert got == [counts[0] + counts[1], counts[1] + counts[2], counts[2] + counts[3], counts[3]]


def test_late_rows_are_dropped_and_memory_stays_bounded(profile) -> None:
    rng = np.random.default_rng(4)
    mon = StreamingMonitor(
        profile, WindowConfig(size=timedelta(minutes=10), allowed_lateness=timedelta(minutes=5))
    )
    emitted = 0
    for step in range(48):  # 8 hours, 10 minutes per batch
        start = T0 + timedelta(minutes=10 * step)
        emitted += len(mon.observe(records(rng, 300, start, timedelta(minutes=10))))
        assert mon.stats.open_panes <= 3
    late = records(rng, 50, T0, timedelta(minutes=10))
    assert mon.observe(late) == []
    assert mon.stats.late_rows == 50
    assert emitted == 47 and mon.stats.windows_emitted == 47


def test_policy_history_and_episode_through_the_monitor(profile) -> None:
    rng = np.random.default_rng(5)
    mon = StreamingMonitor(
        profile,
        WindowConfig(size=timedelta(hours=1)),
        policy=DriftPolicy(consecutive=2, min_samples=100),
    )
    out = []
    for h in range(8):
        out += mon.observe(
            records(
                rng, 1500, T0 + timedelta(hours=h), timedelta(hours=1), shift=0.0 if h < 4 else 1.0
            )
        )
    out += mon.flush()
    decisions = [w.decision.decision for w in out if w.decision]
    assert decisions[:4] == [Level.NONE] * 4
    assert decisions[4] == Level.WARN and decisions[5] == Level.DRIFT
    assert sum(1 for w in out if w.decision and w.decision.episode_start) == 1
    assert "amount" in out[-1].decision.drifted  # type: ignore[union-attr]


def test_performance_estimate_and_realised(profile) -> None:
    rng = np.random.default_rng(6)
    data = records(rng, 20_000, T0, timedelta(hours=1))
    mon = StreamingMonitor(
        profile,
        WindowConfig(size=timedelta(hours=1), score_column="score", label_retention_panes=4),
    )
    assert mon.observe(data) == []
    (w,) = mon.flush()
    assert w.performance["realised_auc"] is None  # no labels yet
    # labels arrive late, drawn from the (calibrated) scores
    labels = data.with_columns(
        pl.Series("label", (rng.random(data.height) < data["score"].to_numpy()).astype(int))
    )
    assert mon.observe_labels(labels) == data.height
    perf = mon.realised_performance(T0, T0 + timedelta(hours=1))
    y = labels["label"].to_numpy()
    s = labels["score"].to_numpy()
    exact = sst.mannwhitneyu(s[y == 1], s[y == 0]).statistic / ((y == 1).sum() * (y == 0).sum())
    assert perf["realised_auc"] == pytest.approx(exact, abs=2e-3)  # score cells of width 1/200
    assert w.performance["estimated_auc"] == pytest.approx(perf["realised_auc"], abs=0.02)
    ece = perf["ece"]
    assert ece is not None and ece < 0.03 and perf["labels"] == data.height


def test_score_histogram_exact_on_cell_centres() -> None:
    rng = np.random.default_rng(7)
    p = (rng.integers(0, 100, 3000) + 0.5) / 100
    y = (rng.random(3000) < p).astype(float)
    h = ScoreHistogram(100)
    h.add_scores(p)
    h.add_labels(p, y)
    auc = sst.mannwhitneyu(p[y == 1], p[y == 0]).statistic / ((y == 1).sum() * (y == 0).sum())
    assert h.realised()["realised_auc"] == pytest.approx(auc, abs=1e-12)
    assert h.realised()["brier"] == pytest.approx(float(np.mean((p - y) ** 2)))
    # CBPE expected accuracy at 0.5: E[correct] = sum(max(p, 1 - p)) / n
    assert h.estimated()["estimated_accuracy"] == pytest.approx(
        float(np.mean(np.maximum(p, 1 - p)))
    )
    with pytest.raises(InvalidInputError, match="probabilities"):
        h.add_scores(np.array([1.5]))


def test_metrics_exposition(profile) -> None:
    rng = np.random.default_rng(8)
    reg = CollectorRegistry()
    metrics = DriftMetrics(reg, model="fraud")
    mon = StreamingMonitor(
        profile,
        WindowConfig(size=timedelta(hours=1), score_column="score"),
        policy=DriftPolicy(consecutive=1, min_samples=100),
        on_window=metrics.record,
    )
    mon.observe(records(rng, 2000, T0, timedelta(hours=1), shift=1.0))
    mon.flush()
    text = metrics.metrics.exposition().decode()
    assert 'keel_drift_feature_score{feature="amount",method="wasserstein",model="fraud"}' in text
    assert 'keel_drift_decision{decision="drift",model="fraud"} 1.0' in text
    assert 'keel_drift_windows_total{decision="drift",model="fraud"} 1.0' in text
    assert 'keel_drift_episodes_total{model="fraud"} 1.0' in text
    assert 'keel_drift_model_performance{metric="estimated_auc",model="fraud"}' in text
    assert 'keel_drift_window_rows{model="fraud"} 2000.0' in text


def test_bad_config_and_input(profile) -> None:
    with pytest.raises(InvalidInputError, match="multiple of slide"):
        WindowConfig(size=timedelta(minutes=10), slide=timedelta(minutes=3))
    with pytest.raises(InvalidInputError, match="positive"):
        WindowConfig(size=timedelta(0))
    mon = StreamingMonitor(profile, WindowConfig(size=timedelta(hours=1)))
    with pytest.raises(InvalidInputError, match="event-time column"):
        mon.observe(pl.DataFrame({"amount": [1.0]}))
    with pytest.raises(InvalidInputError, match="must be a Datetime"):
        mon.observe(pl.DataFrame({"event_time": ["2026-01-01"], "amount": [1.0]}))
    with pytest.raises(InvalidInputError, match="score_column"):
        mon.observe_labels(pl.DataFrame({"event_time": [T0]}))


def test_flush_without_partial_windows_drops_the_tail(profile) -> None:
    rng = np.random.default_rng(9)
    data = records(rng, 3000, T0, timedelta(hours=3))
    cfg = WindowConfig(size=timedelta(hours=2), slide=timedelta(hours=1))
    full = StreamingMonitor(profile, cfg)
    everything = full.observe(data) + full.flush()
    trimmed = StreamingMonitor(profile, cfg)
    complete = trimmed.observe(data) + trimmed.flush(partial=False)
    assert [w.result.window_end for w in everything][-1] == "2026-03-01T04:00:00Z"
    assert [w.result.window_end for w in complete][-1] == "2026-03-01T03:00:00Z"
    assert len(everything) == len(complete) + 1


def _window_key(w) -> str:  # type: ignore[no-untyped-def]
    import json

    return json.dumps([w.result.to_dict(), w.decision.to_dict(), w.performance], sort_keys=True)


def test_windows_do_not_depend_on_batch_cuts_and_survive_a_snapshot(profile) -> None:
    rng = np.random.default_rng(5)
    parts = [
        records(rng, 900, T0 + timedelta(minutes=50 * h), timedelta(minutes=70)) for h in range(6)
    ]
    data = pl.concat(parts).with_columns(pl.Series("id", [f"r{i}" for i in range(5400)]))
    cfg = WindowConfig(
        size=timedelta(hours=1),
        slide=timedelta(minutes=30),
        allowed_lateness=timedelta(minutes=10),
        score_column="score",
        id_column="id",
    )

    def run(cuts: list[int], snapshot_at: int | None = None) -> tuple[list, int, list[str]]:
        mon = StreamingMonitor(profile, cfg, rng=np.random.default_rng(0))
        out, late, bounds = [], [], [0, *cuts, data.height]
        for i, (a, b) in enumerate(itertools.pairwise(bounds)):
            if snapshot_at == i:  # a restart: a fresh monitor from the snapshot
                snap = mon.snapshot()
                mon = StreamingMonitor(profile, cfg, rng=np.random.default_rng(99))
                mon.restore(snap)
            out += mon.observe(data[a:b])
            late += mon.last_late_ids
        out += mon.flush()
        return [_window_key(w) for w in out], mon.stats.late_rows, late

    one = run([])
    assert one[1] > 0 and len(one[0]) >= 8  # some rows were late, windows closed
    assert run([1, 2, 3, 700, 701, 2500, 4000]) == one
    assert run(list(range(250, 5400, 250)), snapshot_at=7) == one


def test_drift_detected_contract_round_trips_with_datetimes() -> None:
    from keel.drift import DriftDetected, episode_event_id

    start = datetime(2026, 3, 1, 4, tzinfo=UTC)
    ev = DriftDetected(
        model="fraud",
        window_start=start,
        window_end=start + timedelta(hours=1),
        rows=400,
        drifted=("amount",),
        drift_share=0.5,
        scores={"amount": 0.31},
        reason="psi over threshold",
    )
    payload = ev.to_payload()
    assert payload["window_start"] == "2026-03-01T04:00:00Z"
    back = DriftDetected.from_payload(payload)
    assert back == ev and back.window_end.tzinfo is not None
    assert ev.event_id == episode_event_id("fraud", start) == back.event_id
    with pytest.raises(InvalidInputError, match="lacks 'rows'"):
        DriftDetected.from_payload({k: v for k, v in payload.items() if k != "rows"})
    with pytest.raises(InvalidInputError, match="window_end"):
        DriftDetected.from_payload({**payload, "window_end": "yesterday"})
