"""Keel's own SLOs: the specs `python -m keel.telemetry.generate` renders into ops/.

PLATFORM_SLOS hold only objectives over series a running Keel app emits today
(feature-worker, drift-monitor; a test scrapes both and checks every series the
rules reference). PLANNED_SLOS are specified for the serving app, which does not
exist yet; they are not rendered into ops/.

The drift SLOs read the drift policy's own verdict (`keel_drift_decision`), not
a raw statistic against a threshold copied here: the policy in keel.drift is the
one place its thresholds live, so the alert and `keel drift check` cannot disagree.
"""

from __future__ import annotations

from keel.telemetry._slo import AvailabilitySLO, DriftSLO, FreshnessSLO, LatencySLO, SLOSpec
from keel.telemetry._vocabulary import (
    DriftMetrics,
    FeatureMetrics,
    ServingMetrics,
    metric_name,
)

__all__ = ["PLANNED_SLOS", "PLATFORM_SLOS"]

PLATFORM_SLOS: tuple[SLOSpec, ...] = (
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
            "Time during which the drift policy's decision for a model's latest window is not DRIFT"
            " (keel_drift_decision, emitted by the drift-monitor; thresholds are the policy's)."
        ),
        gauge=metric_name("drift", DriftMetrics.DECISION),
        matchers='decision="drift"',
        max_score=0.0,
        group_by=("model",),
        diagnose=(
            'Find the drifting features: `topk(5, keel_drift_feature_score{model="<model>"})` and'
            ' `keel_drift_feature_drifted{model="<model>"} == 1`.',
            "Open the drift report (JSON/HTML) of the latest window for the model and compare distributions with the reference profile.",
            "Rule out a data-quality incident upstream (`keel_drift_quality_violations_total`; a broken feature shows as sudden drift across many features).",
        ),
        mitigate=(
            "If the data is correct and the world changed, retrain the model on recent data.",
            "If a pipeline bug caused it, fix the feature pipeline; do not retrain on broken data.",
        ),
    ),
    DriftSLO(
        name="model-drift-judged",
        objective=0.95,
        description=(
            "Time during which the drift-monitor could judge a model's latest window (decision not"
            " `not_judged`: enough rows, the profile's schema, at least one feature compared)."
        ),
        gauge=metric_name("drift", DriftMetrics.DECISION),
        matchers=f'decision="{DriftMetrics.NOT_JUDGED}"',
        max_score=0.0,
        group_by=("model",),
        diagnose=(
            "Check `keel_drift_window_rows` against the policy's minimum sample: traffic may have dropped.",
            "Read the drift-monitor's JSON logs and the latest report's reason: a schema change upstream"
            " (renamed or missing columns) leaves no feature to compare.",
            "Check `keel_drift_quality_violations_total` by `check`.",
        ),
        mitigate=(
            "If the schema changed on purpose, build a new reference profile (`keel drift profile`) and restart the monitor.",
            "If traffic is low by nature, lengthen the monitor's window so each holds enough rows.",
        ),
    ),
    DriftSLO(
        name="model-drift-quality",
        objective=0.95,
        description=(
            "Time during which a model's latest drift window had no data-quality error (decision not"
            " `error`: no missing profiled column, no changed column kind, no column without values,"
            " no null-rate jump)."
        ),
        gauge=metric_name("drift", DriftMetrics.DECISION),
        matchers=f'decision="{DriftMetrics.ERROR}"',
        max_score=0.0,
        group_by=("model",),
        diagnose=(
            "Read `keel_drift_quality_violations_total` by `check` and the latest report's errors:"
            " which column is missing, changed kind or lost its values.",
            "Compare the upstream schema with the reference profile's columns (`keel drift check --json -`).",
        ),
        mitigate=(
            "Fix the upstream pipeline that broke the column; the gate stays closed until it does.",
            "If the schema changed on purpose, build a new reference profile and restart the monitor.",
        ),
    ),
)

# The serving app is planned; its SLOs are specified here and rendered once it emits them.
PLANNED_SLOS: tuple[SLOSpec, ...] = (
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
            "Check micro-batch sizes (`keel_serving_batch_size_rows`) and the serve app's online-feature fetch time (`keel_serving_feature_fetch_seconds`).",
            "Check CPU saturation and replica count of the serve app.",
        ),
        mitigate=(
            "Scale out the serve app, or lower the micro-batch size/wait if batches grew.",
            "If a new model version is slower, roll the `champion` alias back.",
        ),
    ),
)
