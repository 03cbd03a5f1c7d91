"""Prometheus metrics of drift monitoring: evaluated windows -> keel.telemetry's DriftMetrics.

The names and labels are keel.telemetry's drift vocabulary (every series carries
``model``; see ``keel.telemetry.DriftMetrics``), the one the generated alert rules
read:

    keel_drift_decision{model, decision}                 1 for the latest decision (none/warn/drift/not_judged)
    keel_drift_windows_total{model, decision}            windows evaluated
    keel_drift_episodes_total{model}                     drift episodes started (drift.detected events)
    keel_drift_feature_score{model, feature, method}     drift score of the latest window
    keel_drift_feature_drifted{model, feature}           1 while the policy flags the feature
    keel_drift_share{model}                              importance-weighted share of drifted features
    keel_drift_window_rows{model}                        rows in the latest window
    keel_drift_late_rows_total{model}                    rows dropped as too late
    keel_drift_quality_violations_total{model, check}    data-quality findings
    keel_drift_model_performance{model, metric}          estimated / realised performance
    keel_drift_multivariate_auc{model}                   domain-classifier AUC

A window the policy could not judge (no decision, or a level/decision named
``insufficient`` / ``not_judged``) counts as ``decision="not_judged"``, never as
``none``. ``feature`` passes through the telemetry cardinality guard (over the
limit it collapses to ``__other__``); give ``max_features`` to raise the bound.
"""

from __future__ import annotations

import math
from collections import Counter

from prometheus_client import CollectorRegistry

from keel.drift._policy import DriftPolicy
from keel.drift._report import ReportWindow
from keel.telemetry import ComponentMetrics
from keel.telemetry import DriftMetrics as DriftVocabulary

# Level / decision values that mean "this window was not judged".
_NOT_JUDGED = frozenset({"insufficient", "not_judged", "unjudged", "not judged"})


def decision_label(window: ReportWindow) -> str:
    """The ``decision`` label value of one evaluated window (one of DriftVocabulary.DECISIONS)."""
    dec = window.decision
    if dec is None:
        return DriftVocabulary.NOT_JUDGED
    values = {str(getattr(dec.level, "value", dec.level)), str(dec.decision.value)}
    if values & _NOT_JUDGED:
        return DriftVocabulary.NOT_JUDGED
    value = str(dec.decision.value)
    return value if value in DriftVocabulary.DECISIONS else DriftVocabulary.NOT_JUDGED


class DriftMetrics:
    """Updates the drift metrics of one monitored ``model`` from evaluated windows.

    metrics = DriftMetrics(model="fraud")            # its own CollectorRegistry
    metrics.record(window)                           # each ReportWindow the monitor yields
    start_metrics_server(metrics.registry)
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        policy: DriftPolicy | None = None,
        max_features: int = 1000,
        model: str = "default",
    ) -> None:
        self.policy = policy or DriftPolicy()
        self.model = model
        self.metrics = ComponentMetrics("drift", registry=registry)
        self.vocabulary = DriftVocabulary(self.metrics, max_features=max_features)
        self.vocabulary.start(model)

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def record(self, window: ReportWindow) -> None:
        """Update every metric from one evaluated window."""
        res, dec = window.result, window.decision
        scores: dict[tuple[str, str], float] = {}
        if dec is not None:
            for name, score in dec.scores.items():
                fd = res.features.get(name)
                method = self.policy.threshold_for(name, fd.kind if fd else "numeric").method
                scores[(name, method)] = score
        performance = {
            k: float(v)
            for k, v in window.performance.items()
            if v is not None and k != "labels" and math.isfinite(v)
        }
        self.vocabulary.record_window(
            self.model,
            scores,
            drifted=dec.drifted if dec is not None else (),
            decision=decision_label(window),
            rows=res.n_rows,
            drift_share=dec.drift_share if dec is not None else None,
            episode_start=bool(dec is not None and dec.episode_start),
            quality=Counter(q.kind for q in res.quality),
            performance=performance,
            multivariate_auc=res.multivariate.auc if res.multivariate is not None else None,
        )

    def record_late(self, rows: int) -> None:
        self.vocabulary.record_late(self.model, rows)
