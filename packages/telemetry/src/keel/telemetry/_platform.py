"""Keel's own SLOs and alerts: the specs `python -m keel.telemetry.generate` renders into ops/.

PLATFORM_SLOS and PLATFORM_ALERTS hold only rules over series a running Keel app emits
today (feature-worker, drift-monitor, serve, retrain-controller; a test scrapes all four
and checks every series the rules reference). PLANNED_SLOS holds objectives specified for
an app that does not emit their series yet (none at present); they are not rendered.

The drift SLOs read the drift policy's own verdict (`keel_drift_decision`), not
a raw statistic against a threshold copied here: the policy in keel.drift is the
one place its thresholds live, so the alert and `keel drift check` cannot disagree.
"""

from __future__ import annotations

from keel.telemetry._alerts import AlertSpec, CounterAlert, GaugeAlert
from keel.telemetry._slo import AvailabilitySLO, DriftSLO, FreshnessSLO, LatencySLO, SLOSpec
from keel.telemetry._vocabulary import (
    DriftMetrics,
    FeatureMetrics,
    PipelinesMetrics,
    ServingMetrics,
    metric_name,
)

__all__ = ["PLANNED_SLOS", "PLATFORM_ALERTS", "PLATFORM_SLOS"]

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

PLANNED_SLOS: tuple[SLOSpec, ...] = ()


def _pipelines(name: str) -> str:
    return metric_name("pipelines", name)


_HISTORY = "`keel retrain history --model <model>` (status, step and detail of each run)"

# The retrain loop's alerts (series of the retrain-controller app, keel.telemetry's
# PipelinesMetrics). The trainer app's own metrics are not alerted on: it is a batch job
# whose /metrics disappears when it exits, so a failed run's counter is never scraped; the
# loop's `train` step (which runs keel.trainer through the executors) is what is watched.
PLATFORM_ALERTS: tuple[AlertSpec, ...] = (
    CounterAlert(
        name="KeelTrainingJobFailing",
        summary="A retrain run's training job failed",
        description=(
            "The `train` step of a retrain run raised (keel.trainer gave up after its"
            " `max_failures`, the data could not be read, Ray was unreachable...). The run is"
            " held `failed` at that step and retried every `retry_failed_s`; the champion keeps"
            " serving, but the model is not being refreshed."
        ),
        metric=_pipelines(PipelinesMetrics.STEP_FAILURES),
        matchers='step="train"',
        window="1h",
        group_by=("model",),
        severity="warning",
        diagnose=(
            f"Find the run and its error: {_HISTORY}; the retrain-controller's JSON logs carry"
            " a `retrain step failed` line with the `cause`.",
            "Read the trainer's own log lines for the job (`trainer start`, `trainer checkpoint`,"
            " restarts) and the MLflow run named in them.",
            "Check the Ray cluster (`ray status` at `RAY_ADDRESS`): a lost node or too few CPUs"
            " for `num_workers` fails the job.",
        ),
        mitigate=(
            "Fix the cause (data, resources, job spec); the controller retries the step and the"
            " job resumes from its last committed checkpoint (no work lost).",
            "If the run cannot succeed, give it up with keel.pipelines' `Controller.abandon(run_id,"
            " who, why)` (no CLI command for it yet); it is recorded in provenance and the model"
            " takes new triggers again.",
        ),
    ),
    CounterAlert(
        name="KeelRetrainGateFailed",
        summary="A retrained model failed a promotion gate",
        description=(
            "A retrain run ended `gate_failed`: the challenger did not pass a gate (quality vs"
            " the champion, calibration, fairness, compatibility, training-data drift, or an"
            " approval was rejected). Nothing was registered and the champion is untouched; the"
            " drift that triggered the retrain is still there."
        ),
        metric=_pipelines(PipelinesMetrics.RUNS_FINISHED),
        matchers='status="gate_failed"',
        window="1h",
        group_by=("model",),
        severity="warning",
        diagnose=(
            "Which gate: `sum by (model, gate) (increase(keel_pipelines_gate_failures_total[1h]))`.",
            f"The evidence: {_HISTORY}; the run's `detail` and its `gates` step output name"
            " each failed gate with its reasons and numbers.",
            "A quality gate failing after drift often means the new data is itself broken: check"
            " the training-data gate's drift decision and the drift report of the triggering episode.",
        ),
        mitigate=(
            "If the data is broken, fix the upstream pipeline; the next drift episode or a"
            " manual `keel retrain --model <model>` retries.",
            "If the gate is too strict for a real change in the world, change the gate's"
            " threshold through review (it is recorded in provenance), then retrain.",
            "Never move the champion alias by hand to bypass a gate.",
        ),
    ),
    CounterAlert(
        name="KeelCanaryRolledBack",
        summary="A challenger's canary was rolled back",
        description=(
            "The retrain controller rolled a canary back: serving published `canary.failed`"
            " (the canary breached its error-rate or latency SLO and serving stopped it) or an"
            " `slo.reading` for the canary's version was above its objective. The challenger"
            " was taken off shadow and canary; the champion is untouched."
        ),
        metric=_pipelines(PipelinesMetrics.CANARY_ROLLBACKS),
        window="1h",
        group_by=("model",),
        severity="warning",
        diagnose=(
            f"The evidence: {_HISTORY}; the `canary` step's decision lists each signal"
            " (canary.failed reason, SLO name, value and objective).",
            'Compare the variants: `sum by (variant, outcome) (rate(keel_serving_variant_requests_total{model="<model>"}[15m]))`'
            " and `keel_serving_variant_latency_seconds` by variant.",
            "Check whether the challenger's artifact differs in feature views or input schema"
            " from what the online store serves (`keel artifact inspect`).",
        ),
        mitigate=(
            "Keep the champion (already the case); fix the challenger (a slow architecture, a"
            " feature-view mismatch, a bad training set) and retrain.",
            "If the canary's SLO was too tight for a healthy model, change `canary_max_error_rate`"
            " / `canary_max_p99_s` on the serve app through review.",
        ),
    ),
    GaugeAlert(
        name="KeelProvenanceChainBroken",
        summary="The retrain provenance chain does not verify",
        description=(
            "The retrain controller's periodic verification of the hash-chained provenance"
            " record found a broken link: an entry edited, deleted or reordered in the pipelines"
            " database. Lineage from the serving model back to its data can no longer be trusted."
        ),
        metric=_pipelines(PipelinesMetrics.PROVENANCE_INTACT),
        op="<",
        threshold=1.0,
        for_="1m",
        group_by=("job", "instance"),
        severity="critical",
        diagnose=(
            "Run `keel provenance verify <model>@champion`: it lists every broken link (sequence"
            " number and what is wrong).",
            "The retrain-controller's log has a `provenance chain broken` line with the problems.",
            "Find who or what wrote to `$KEEL_HOME/pipelines/pipelines.db` outside the controller"
            " (file modification times, host audit logs, a restored backup).",
        ),
        mitigate=(
            "Treat it as a security incident: freeze promotions (stop the retrain-controller) until"
            " the cause is known.",
            "Restore the database from the last backup whose chain verifies; compare the chain"
            " head with the registry's alias audit log (keel.registry_client) to find lost entries.",
        ),
    ),
    GaugeAlert(
        name="KeelRetrainLoopStuck",
        summary="A retrain run has been unfinished for over 6 hours",
        description=(
            "A model has had an unfinished retrain run (running, waiting or failed) for more"
            " than 6 hours: a step keeps failing, approvals are not coming, a canary gets no"
            " traffic, or the retrain-controller is not advancing runs. New triggers for the"
            " model coalesce into the stuck run, so the model is not refreshed."
        ),
        metric=_pipelines(PipelinesMetrics.ACTIVE_RUN_AGE),
        op=">",
        threshold=6 * 3600.0,
        for_="15m",
        group_by=("model",),
        severity="warning",
        diagnose=(
            f"Which run and where: {_HISTORY}. `failed` names the step and error; `waiting` says"
            " what it waits for (approvals, the canary window or its minimum requests).",
            "Is the controller alive and advancing? Its `/healthz`, its logs, and"
            " `rate(keel_pipelines_step_duration_seconds_count[30m])`.",
            'A failing step shows in `increase(keel_pipelines_step_failures_total{model="<model>"}[6h])`.',
        ),
        mitigate=(
            "Waiting for approvals: ask the approvers (`keel governance approve`).",
            "Failing step: fix the cause; the controller retries it every `retry_failed_s`.",
            "A run that cannot finish: abandon it (`Controller.abandon(run_id, who, why)`, recorded"
            " in provenance) so new triggers start a fresh run.",
        ),
    ),
)
