"""The SLI vocabulary: metric sets, helper semantics, and agreement with the platform SLOs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from keel.telemetry import (
    PLANNED_SLOS,
    PLATFORM_ALERTS,
    PLATFORM_SLOS,
    AvailabilitySLO,
    ComponentMetrics,
    DriftMetrics,
    FeatureMetrics,
    InvalidMetricError,
    LatencySLO,
    ModelQualityMetrics,
    PipelinesMetrics,
    ServingMetrics,
)
from keel.telemetry._slo import _ThresholdSLO

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def values(m: ComponentMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


class FakeClock:
    def __init__(self, *ticks: float) -> None:
        self.ticks = list(ticks)

    def __call__(self) -> float:
        return self.ticks.pop(0)


def test_serving_time_request_classifies_outcomes() -> None:
    m = ComponentMetrics("serving")
    s = ServingMetrics(m, clock=FakeClock(0.0, 0.004, 1.0, 1.2, 2.0, 2.05))
    with s.time_request("fraud", "3", rows=8):
        pass
    with pytest.raises(ValueError), s.time_request("fraud", "3"):
        raise ValueError("bad input")
    with pytest.raises(RuntimeError), s.time_request("fraud", "3"):
        raise RuntimeError("model crashed")
    v = values(m)

    def req(outcome: str) -> float:
        key = frozenset({("model", "fraud"), ("version", "3"), ("outcome", outcome)})
        return v[("keel_serving_requests_total", key)]

    assert (req("ok"), req("invalid"), req("error")) == (1, 1, 1)
    mv = frozenset({("model", "fraud"), ("version", "3")})
    assert v[("keel_serving_predictions_total", mv)] == 8  # only successful rows count
    assert v[("keel_serving_request_latency_seconds_count", mv)] == 3
    assert v[("keel_serving_request_latency_seconds_sum", mv)] == pytest.approx(0.004 + 0.2 + 0.05)
    assert v[("keel_serving_request_latency_seconds_bucket", mv | {("le", "0.005")})] == 1


def test_serving_rejects_unknown_outcome() -> None:
    s = ServingMetrics(ComponentMetrics("serving"))
    with pytest.raises(InvalidMetricError, match="outcome"):
        s.observe_request("m", "1", 0.1, outcome="timeout")


def test_feature_freshness_and_staleness_in_seconds() -> None:
    m = ComponentMetrics("features")
    f = FeatureMetrics(m, clock=lambda: 0.0)
    assert f.set_freshness("card_1h", NOW - timedelta(minutes=2), NOW) == 120.0
    assert f.set_staleness("card_1h", "txn_count", NOW - timedelta(seconds=5), NOW) == 5.0
    # an event time in the future (clock skew) reads as fresh, never negative
    assert f.set_freshness("future", NOW + timedelta(seconds=30), NOW) == 0.0
    f.count_events("card_1h", 5)
    f.count_events("card_1h", 2, outcome="late")
    v = values(m)
    assert v[("keel_features_freshness_seconds", frozenset({("feature_view", "card_1h")}))] == 120
    key = frozenset({("feature_view", "card_1h"), ("feature", "txn_count")})
    assert v[("keel_features_feature_staleness_seconds", key)] == 5
    late = frozenset({("feature_view", "card_1h"), ("outcome", "late")})
    assert v[("keel_features_events_processed_total", late)] == 2
    with pytest.raises(InvalidMetricError, match="timezone"):
        f.set_freshness("x", datetime(2026, 1, 1), NOW)  # naive datetime


def test_freshness_keeps_growing_when_no_event_arrives() -> None:
    """The alert must fire when the stream stops: the gauge ages at scrape time."""
    elapsed = [100.0]
    f = FeatureMetrics(ComponentMetrics("features"), clock=lambda: elapsed[0])
    f.set_freshness("card_1h", NOW - timedelta(seconds=10), NOW)
    key = ("keel_features_freshness_seconds", frozenset({("feature_view", "card_1h")}))
    assert values(f.metrics)[key] == 10
    elapsed[0] += 600  # ten minutes without an event
    assert values(f.metrics)[key] == 610
    f.set_freshness("card_1h", NOW + timedelta(seconds=600), NOW + timedelta(seconds=601))
    assert values(f.metrics)[key] == 1


def test_drift_record_window_sets_scores_decision_and_flags() -> None:
    m = ComponentMetrics("drift")
    d = DriftMetrics(m)
    d.record_window(
        "fraud",
        {("amount", "psi"): 0.31, ("country", "psi"): 0.02},
        drifted=["amount"],
        episode_start=True,
        rows=900,
    )
    d.record_window("fraud", {("amount", "psi"): 0.05, ("country", "psi"): 0.01})
    d.record_window("fraud", {}, decision="not_judged", rows=3)
    v = values(m)

    def key(**labels: str) -> frozenset[tuple[str, str]]:
        return frozenset(labels.items())

    assert (
        v[("keel_drift_feature_score", key(model="fraud", feature="amount", method="psi"))] == 0.05
    )
    assert v[("keel_drift_feature_drifted", key(model="fraud", feature="amount"))] == 0
    for decision, n in (("drift", 1), ("none", 1), ("warn", 0), ("not_judged", 1)):
        assert v[("keel_drift_windows_total", key(model="fraud", decision=decision))] == n
        latest = 1 if decision == "not_judged" else 0
        assert v[("keel_drift_decision", key(model="fraud", decision=decision))] == latest
    assert v[("keel_drift_episodes_total", key(model="fraud"))] == 1
    assert v[("keel_drift_window_rows", key(model="fraud"))] == 3
    with pytest.raises(InvalidMetricError, match="not_judged"):
        d.record_window("fraud", {}, decision="insufficient")


def test_drift_start_creates_every_decision_series_at_zero() -> None:
    m = ComponentMetrics("drift")
    DriftMetrics(m).start("churn")
    v = values(m)
    for decision in DriftMetrics.DECISIONS:
        key = frozenset({("model", "churn"), ("decision", decision)})
        assert v[("keel_drift_decision", key)] == 0
        assert v[("keel_drift_windows_total", key)] == 0


def test_feature_events_create_every_outcome_series() -> None:
    f = FeatureMetrics(ComponentMetrics("features"))
    f.count_events("card_1h", 3)
    v = values(f.metrics)
    for outcome, n in (("ok", 3), ("late", 0), ("error", 0)):
        key = frozenset({("feature_view", "card_1h"), ("outcome", outcome)})
        assert v[("keel_features_events_processed_total", key)] == n


def test_quality_metrics() -> None:
    q = ModelQualityMetrics(ComponentMetrics("quality"))
    q.set_quality("fraud", "3", "auc", 0.91)
    q.labels_joined.labels(model="fraud").inc(4)
    v = values(q.metrics)
    assert (
        v[
            (
                "keel_quality_model_quality_score",
                frozenset({("model", "fraud"), ("version", "3"), ("metric", "auc")}),
            )
        ]
        == 0.91
    )
    assert v[("keel_quality_labels_joined_total", frozenset({("model", "fraud")}))] == 4


def test_vocabulary_sets_can_share_one_registry_and_be_rebuilt() -> None:
    reg = CollectorRegistry()
    m = ComponentMetrics("serving", registry=reg)
    a = ServingMetrics(m)
    b = ServingMetrics(m)  # same declarations: the same metric objects
    assert a.requests is b.requests


def test_platform_slos_refer_to_declared_vocabulary_metrics() -> None:
    """Every metric a platform SLO reads is one the vocabulary declares, with the
    labels the SLO groups and filters by."""
    reg = CollectorRegistry()
    sets = (
        ServingMetrics(ComponentMetrics("serving", registry=reg)),
        FeatureMetrics(ComponentMetrics("features", registry=reg)),
        DriftMetrics(ComponentMetrics("drift", registry=reg)),
        PipelinesMetrics(ComponentMetrics("pipelines", registry=reg)),
    )
    declared: dict[str, set[str]] = {}
    for vocab in sets:
        for metric in vars(vocab).values():
            if isinstance(metric, MetricWrapperBase):
                declared[metric._name] = set(metric._labelnames)
    for slo in (*PLATFORM_SLOS, *PLANNED_SLOS):
        if isinstance(slo, AvailabilitySLO):
            base = slo.metric.removesuffix("_total")
        elif isinstance(slo, LatencySLO):
            base = slo.histogram
        else:
            assert isinstance(slo, _ThresholdSLO)
            base = slo.gauge
        assert base in declared, (slo.name, base)
        assert set(slo.group_by) <= declared[base], (slo.name, slo.group_by, declared[base])

    for alert in PLATFORM_ALERTS:  # the non-SLO alerts read vocabulary series too
        base = alert.metric.removesuffix("_total")
        assert base in declared, (alert.name, base)
        labels = {m.split("=")[0].strip() for m in alert.matchers.split(",") if m}
        assert labels <= declared[base], (alert.name, labels)
        assert set(alert.group_by) - {"job", "instance"} <= declared[base], alert.name


def test_pipelines_metrics_start_and_record() -> None:
    t = [1000.0]
    m = ComponentMetrics("pipelines")
    p = PipelinesMetrics(m, clock=lambda: t[0])
    p.start("credit")
    v = values(m)
    key = (
        "keel_pipelines_runs_finished_total",
        frozenset({("model", "credit"), ("status", "gate_failed")}),
    )
    assert v[key] == 0  # series exist before anything happened
    assert (
        v[
            (
                "keel_pipelines_step_failures_total",
                frozenset({("model", "credit"), ("step", "train")}),
            )
        ]
        == 0
    )
    assert v[("keel_pipelines_active_run_age_seconds", frozenset({("model", "credit")}))] == 0
    assert v[("keel_pipelines_provenance_intact", frozenset())] == 1
    p.set_active("credit", 400.0)
    t[0] = 1600.0  # age is evaluated at scrape time
    assert (
        values(m)[("keel_pipelines_active_run_age_seconds", frozenset({("model", "credit")}))]
        == 1200
    )
    p.record_finished("credit", "gate_failed", ["quality", "fairness"])
    p.record_finished("credit", "rolled_back")
    p.record_provenance(False)
    v = values(m)
    assert v[key] == 1
    assert (
        v[
            (
                "keel_pipelines_gate_failures_total",
                frozenset({("model", "credit"), ("gate", "fairness")}),
            )
        ]
        == 1
    )
    assert v[("keel_pipelines_canary_rollbacks_total", frozenset({("model", "credit")}))] == 1
    assert v[("keel_pipelines_provenance_intact", frozenset())] == 0
    assert v[("keel_pipelines_provenance_verify_failures_total", frozenset())] == 1
    with pytest.raises(InvalidMetricError, match="expected one of"):
        p.record_finished("credit", "failed")
    assert p.models == ("credit",)
