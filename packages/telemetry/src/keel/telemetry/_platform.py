"""Keel's own SLOs: the specs `python -m keel.telemetry.generate` renders into ops/."""

from __future__ import annotations

from keel.telemetry._slo import AvailabilitySLO, DriftSLO, FreshnessSLO, LatencySLO, SLOSpec
from keel.telemetry._vocabulary import (
    DriftMetrics,
    FeatureMetrics,
    ServingMetrics,
    metric_name,
)

__all__ = ["PLATFORM_SLOS"]

PLATFORM_SLOS: tuple[SLOSpec, ...] = (
    AvailabilitySLO(
        name="serving-availability",
        objective=0.999,
        description="Online inference requests that succeed (requests rejected for invalid input do not count).",
        metric=metric_name("serving", ServingMetrics.REQUESTS),
        error_matchers='outcome="error"',
        total_matchers='outcome!="invalid"',
        group_by=("model",),
        diagnose=(
            'Break errors down by version: `sum by (model, version) (rate(keel_serving_requests_total{outcome="error"}[5m]))`.'
            " Errors confined to a new version point at a recent promotion or canary.",
            "Read the serve app's JSON logs for the failing requests (filter on `level=ERROR`, follow `correlation_id`).",
            "Check the online feature store the model reads (Redis or the embedded store): lookup errors surface as serving errors.",
        ),
        mitigate=(
            "If a promotion or canary started it, roll the `champion` alias back to the previous version"
            " (the registry audit log shows the last move); serving follows the alias.",
            "If the online store is down, restore it; serving recovers on its own once lookups succeed.",
        ),
    ),
    LatencySLO(
        name="serving-latency",
        objective=0.99,
        description="Online inference requests answered within 100 ms.",
        histogram=metric_name("serving", ServingMetrics.LATENCY),
        threshold_seconds=0.1,
        group_by=("model",),
        diagnose=(
            "Compare p99 by version: `histogram_quantile(0.99, sum by (le, model, version) (rate(keel_serving_request_latency_seconds_bucket[5m])))`.",
            "Check micro-batch sizes (`keel_serving_batch_size_rows`) and online-store lookup latency (`keel_features_online_lookup_latency_seconds`).",
            "Check CPU saturation and replica count of the serve app.",
        ),
        mitigate=(
            "Scale out the serve app, or lower the micro-batch size/wait if batches grew.",
            "If a new model version is slower, roll the `champion` alias back.",
        ),
    ),
    AvailabilitySLO(
        name="feature-pipeline-errors",
        objective=0.999,
        description="Events applied to feature views without error.",
        metric=metric_name("features", FeatureMetrics.EVENTS),
        error_matchers='outcome="error"',
        group_by=("feature_view",),
        diagnose=(
            'Find the failing view: `sum by (feature_view) (rate(keel_features_events_processed_total{outcome="error"}[5m]))`.',
            "Read the feature-worker logs for the error (schema version mismatch and bad payloads are the usual causes).",
            "Check the dead-letter stream of the feature-worker consumer.",
        ),
        mitigate=(
            "If a producer changed the event schema, deploy a feature view that accepts the new schema version or roll the producer back.",
            "Replay dead-lettered events once fixed; consumers are idempotent on event id.",
        ),
    ),
    FreshnessSLO(
        name="feature-freshness",
        objective=0.99,
        description="Online feature views whose newest applied event is at most 5 minutes old.",
        gauge=metric_name("features", FeatureMetrics.FRESHNESS),
        max_age_seconds=300.0,
        group_by=("feature_view",),
        diagnose=(
            "Is the feature-worker running and consuming? Check `keel_events_consumer_lag_events` for its durable consumer.",
            "Are events arriving at all? Check `rate(keel_events_published_total[5m])` for the source stream.",
            "Check the online store (Redis) is reachable from the worker.",
        ),
        mitigate=(
            "Restart or scale the feature-worker; it resumes from its durable consumer without losing events.",
            "If the upstream producer stopped, escalate to its owner: the features are correct but old.",
        ),
    ),
    DriftSLO(
        name="model-drift",
        objective=0.95,
        description=(
            "Time during which every monitored feature of a model has PSI at most 0.2 against its training"
            " reference (keel.drift's keel_drift_feature_score; per model where the series carry a model label)."
        ),
        gauge=metric_name("drift", DriftMetrics.SCORE),
        matchers='method="psi"',
        max_score=0.2,
        group_by=("model",),
        diagnose=(
            'Find the drifting features: `topk(5, keel_drift_feature_score{method="psi"})`.',
            "Open the drift report (JSON/HTML) of the latest window for the model and compare distributions with the reference profile.",
            "Rule out a data-quality incident upstream (a broken feature shows as sudden drift across many features).",
        ),
        mitigate=(
            "If the data is correct and the world changed, let the retrain controller build a challenger (or trigger a manual retrain).",
            "If a pipeline bug caused it, fix the feature pipeline; do not retrain on broken data.",
        ),
    ),
)
