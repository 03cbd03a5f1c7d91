"""Prometheus metrics of drift monitoring, through keel.telemetry (component ``drift``).

    keel_drift_feature_score{feature, method}          drift score of the latest window
    keel_drift_share                                   importance-weighted share of drifted features
    keel_drift_decision{decision}                      1 for the latest window's decision, else 0
    keel_drift_quality_violations_total{check}         data-quality findings
    keel_drift_windows_total{decision}                 windows evaluated
    keel_drift_episodes_total                          drift episodes started (drift.detected events)
    keel_drift_window_rows                             rows in the latest window
    keel_drift_late_rows_total                         rows dropped as too late
    keel_drift_model_performance{metric}               estimated / realised performance (latest window)
    keel_drift_multivariate_auc                        domain-classifier AUC (latest window)

``feature`` passes through the telemetry cardinality guard (over the limit it
collapses to ``__other__``); give ``max_features`` to raise the bound.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry

from keel.drift._policy import DriftPolicy, Level
from keel.drift._report import ReportWindow
from keel.telemetry import ComponentMetrics


class DriftMetrics:
    """Updates the drift metrics from evaluated windows."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        policy: DriftPolicy | None = None,
        max_features: int = 1000,
    ) -> None:
        self.policy = policy or DriftPolicy()
        self.metrics = ComponentMetrics("drift", registry=registry)
        m = self.metrics
        self.feature_score = m.gauge(
            "feature_score",
            "Drift score of each feature in the latest window.",
            labels=("feature", "method"),
            max_label_values=max_features,
        )
        self.share = m.gauge(
            "share", "Importance-weighted share of drifted features in the latest window."
        )
        self.decision = m.gauge(
            "decision",
            "1 for the latest window's decision (none/warn/drift), else 0.",
            labels=("decision",),
        )
        self.violations = m.counter(
            "quality_violations_total", "Data-quality findings.", labels=("check",)
        )
        self.windows = m.counter(
            "windows_total", "Windows evaluated, by decision.", labels=("decision",)
        )
        self.episodes = m.counter(
            "episodes_total", "Drift episodes started (one drift.detected event each)."
        )
        self.rows = m.gauge("window_rows", "Rows in the latest evaluated window.")
        self.late = m.counter("late_rows_total", "Rows dropped because their windows had closed.")
        self.performance = m.gauge(
            "model_performance", "Model performance in the latest window.", labels=("metric",)
        )
        self.mv_auc = m.gauge(
            "multivariate_auc", "Domain-classifier AUC in the latest window (0.5 = no shift)."
        )
        for d in ("none", "warn", "drift"):
            self.decision.labels(decision=d).set(0)
            self.windows.labels(decision=d)

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def record(self, window: ReportWindow) -> None:
        """Update every metric from one evaluated window."""
        res, dec = window.result, window.decision
        self.rows.set(res.n_rows)
        if dec is not None:
            for name, score in dec.scores.items():
                fd = res.features.get(name)
                method = self.policy.threshold_for(name, fd.kind if fd else "numeric").method
                self.feature_score.labels(feature=name, method=method).set(score)
            self.share.set(dec.drift_share)
            for d in ("none", "warn", "drift"):
                self.decision.labels(decision=d).set(1 if dec.decision.value == d else 0)
            label = dec.decision.value if dec.level is not Level.INSUFFICIENT else "none"
            self.windows.labels(decision=label).inc()
            if dec.episode_start:
                self.episodes.inc()
        for q in res.quality:
            self.violations.labels(check=q.kind).inc()
        for k, v in window.performance.items():
            if v is not None and k != "labels" and math.isfinite(v):
                self.performance.labels(metric=k).set(v)
        if res.multivariate is not None:
            self.mv_auc.set(res.multivariate.auc)

    def record_late(self, rows: int) -> None:
        if rows > 0:
            self.late.inc(rows)
