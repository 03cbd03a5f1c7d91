"""The platform's SLI vocabulary: typed metric sets every component shares.

One class per concern declares its metrics on a `ComponentMetrics`, so names,
base units and labels are the same everywhere and the SLO rules
(`keel.telemetry.slo`) can refer to them. Label conventions:

- `model`, `version`: the model name and its registry version;
- `feature_view`, `feature`: a feature view and one of its features;
- `stream`, `consumer`: an event stream and a durable consumer (keel.events
  declares the stream SLIs itself: `keel_events_published_total{stream}`,
  `keel_events_consumer_lag_events{stream, consumer}`, ...);
- `outcome`: one of a small closed set (see each class);
- `method`: a drift statistic (psi, ks, chi2, js, wasserstein, ...);
- `metric`: a model-quality metric (auc, log_loss, ...);
- `step`, `gate`, `trigger`, `status`: a retrain pipeline step, promotion gate, trigger
  kind and run status (keel.pipelines' closed sets).

Times are seconds, sizes bytes, ratios 0..1; counters end in `_total`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Final

from keel.telemetry._errors import InvalidMetricError
from keel.telemetry._metrics import (
    DURATION_BUCKETS_SECONDS,
    LATENCY_BUCKETS_SECONDS,
    ComponentMetrics,
)

__all__ = [
    "BATCH_SIZE_BUCKETS_ROWS",
    "DriftMetrics",
    "FeatureMetrics",
    "ModelQualityMetrics",
    "PipelinesMetrics",
    "ServingMetrics",
    "metric_name",
]

# Rows per micro-batch / request (powers of two up to 4096).
BATCH_SIZE_BUCKETS_ROWS: tuple[float, ...] = tuple(float(2**i) for i in range(13))


def metric_name(component: str, name: str) -> str:
    """The exposed name of vocabulary metric `name` in `component`: `keel_<component>_<name>`."""
    return f"keel_{component}_{name}"


def _check_outcome(outcome: str, allowed: Sequence[str]) -> str:
    if outcome not in allowed:
        raise InvalidMetricError(f"outcome {outcome!r}: expected one of {list(allowed)}")
    return outcome


def _age_seconds(newest: datetime, now: datetime) -> float:
    if newest.tzinfo is None or now.tzinfo is None:
        raise InvalidMetricError("freshness needs timezone-aware datetimes (use UTC)")
    return max(0.0, (now - newest).total_seconds())


class ServingMetrics:
    """Online inference SLIs (component `serving` by default).

    - `requests_total{model, version, outcome}`: outcome is `ok`, `error` (our
      fault: burns the availability budget) or `invalid` (the caller's input
      failed validation: does not);
    - `request_latency_seconds{model, version}`: end-to-end request latency;
    - `predictions_total{model, version}`: rows scored (a request may hold many);
    - `batch_size_rows{model}`: rows per micro-batch.
    """

    REQUESTS: Final = "requests_total"
    LATENCY: Final = "request_latency_seconds"
    PREDICTIONS: Final = "predictions_total"
    BATCH_SIZE: Final = "batch_size_rows"
    OUTCOMES: Final = ("ok", "error", "invalid")

    def __init__(
        self, metrics: ComponentMetrics, *, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.metrics = metrics
        self._clock = clock
        self.requests = metrics.counter(
            self.REQUESTS,
            "Inference requests by outcome (ok, error, invalid).",
            labels=("model", "version", "outcome"),
        )
        self.latency = metrics.histogram(
            self.LATENCY,
            "End-to-end inference request latency.",
            labels=("model", "version"),
            buckets=LATENCY_BUCKETS_SECONDS,
        )
        self.predictions = metrics.counter(
            self.PREDICTIONS, "Rows scored.", labels=("model", "version")
        )
        self.batch_size = metrics.histogram(
            self.BATCH_SIZE,
            "Rows per inference micro-batch.",
            labels=("model",),
            buckets=BATCH_SIZE_BUCKETS_ROWS,
        )

    def observe_request(
        self,
        model: str,
        version: str,
        latency_seconds: float,
        *,
        outcome: str = "ok",
        rows: int = 1,
    ) -> None:
        """Record one finished request."""
        _check_outcome(outcome, self.OUTCOMES)
        self.requests.labels(model=model, version=version, outcome=outcome).inc()
        self.latency.labels(model=model, version=version).observe(latency_seconds)
        if outcome == "ok" and rows:
            self.predictions.labels(model=model, version=version).inc(rows)

    def observe_batch(self, model: str, rows: int) -> None:
        self.batch_size.labels(model=model).observe(rows)

    @contextmanager
    def time_request(self, model: str, version: str, *, rows: int = 1) -> Iterator[None]:
        """Time the block as one request: `ok` if it returns; `invalid` if it raises
        ValueError (bad input); `error` for anything else (re-raised)."""
        start = self._clock()
        outcome = "ok"
        try:
            yield
        except ValueError:
            outcome = "invalid"
            raise
        except BaseException:
            outcome = "error"
            raise
        finally:
            self.observe_request(model, version, self._clock() - start, outcome=outcome, rows=rows)


class FeatureMetrics:
    """Feature pipeline SLIs (component `features` by default).

    - `freshness_seconds{feature_view}`: now minus the event time of the newest
      event applied to the online store (data freshness). It keeps growing between
      updates (evaluated at scrape time), so it rises when events stop arriving and the
      freshness alert can fire;
    - `feature_staleness_seconds{feature_view, feature}`: age of the feature
      value served at lookup time;
    - `events_processed_total{feature_view, outcome}`: outcome `ok`, `late`
      (outside the allowed lateness), `error`;
    - `materialization_duration_seconds{feature_view}`: batch materialisation runs;
    - `online_lookup_latency_seconds{store}`: online-store reads.
    """

    FRESHNESS: Final = "freshness_seconds"
    STALENESS: Final = "feature_staleness_seconds"
    EVENTS: Final = "events_processed_total"
    MATERIALIZATION: Final = "materialization_duration_seconds"
    LOOKUP_LATENCY: Final = "online_lookup_latency_seconds"
    OUTCOMES: Final = ("ok", "late", "error")

    def __init__(
        self, metrics: ComponentMetrics, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """`clock` (seconds, monotonic) measures the time elapsed since the last
        `set_freshness`, which the freshness gauge adds at scrape time."""
        self.metrics = metrics
        self._clock = clock
        self.freshness = metrics.gauge(
            self.FRESHNESS,
            "Seconds since the event time of the newest event applied.",
            labels=("feature_view",),
        )
        self.staleness = metrics.gauge(
            self.STALENESS,
            "Age in seconds of the feature value served.",
            labels=("feature_view", "feature"),
        )
        self.events = metrics.counter(
            self.EVENTS,
            "Events applied to feature views, by outcome (ok, late, error).",
            labels=("feature_view", "outcome"),
        )
        self.materialization = metrics.histogram(
            self.MATERIALIZATION,
            "Batch materialisation run duration.",
            labels=("feature_view",),
            buckets=DURATION_BUCKETS_SECONDS,
        )
        self.lookup_latency = metrics.histogram(
            self.LOOKUP_LATENCY,
            "Online store lookup latency.",
            labels=("store",),
            buckets=LATENCY_BUCKETS_SECONDS,
        )

    def set_freshness(self, feature_view: str, newest_event_time: datetime, now: datetime) -> float:
        """Set freshness from the newest applied event time; returns the age in seconds."""
        age = _age_seconds(newest_event_time, now)
        clock, since = self._clock, self._clock()
        self.freshness.labels(feature_view=feature_view).set_function(
            lambda: age + max(0.0, clock() - since)
        )
        return age

    def set_staleness(
        self, feature_view: str, feature: str, value_time: datetime, now: datetime
    ) -> float:
        age = _age_seconds(value_time, now)
        self.staleness.labels(feature_view=feature_view, feature=feature).set(age)
        return age

    def count_events(self, feature_view: str, n: int = 1, *, outcome: str = "ok") -> None:
        """Count `n` events; the view's series for every outcome exist from its first
        event on (at 0), so an error-ratio rule sees the first error as a rise."""
        _check_outcome(outcome, self.OUTCOMES)
        for other in self.OUTCOMES:
            self.events.labels(feature_view=feature_view, outcome=other)
        self.events.labels(feature_view=feature_view, outcome=outcome).inc(n)


class DriftMetrics:
    """Drift monitoring SLIs (component `drift` by default): the one vocabulary
    keel.drift's monitor emits and the model-drift SLO reads. Every series
    carries `model`.

    - `decision{model, decision}`: 1 for the latest window's decision, else 0;
      `decision` is `none`, `warn`, `drift`, `error` (a data-quality error) or
      `not_judged` (a window the policy
      could not judge: too few rows, schema mismatch, no feature compared);
    - `windows_total{model, decision}`: windows evaluated, by decision;
    - `episodes_total{model}`: drift episodes started (one `drift.detected` each);
    - `feature_score{model, feature, method}`: the latest drift statistic for a
      feature (unitless; `method` is psi, ks, chi2, js, wasserstein, ...);
    - `feature_drifted{model, feature}`: 1 while the policy flags the feature, else 0;
    - `share{model}`: importance-weighted share of drifted features;
    - `window_rows{model}`, `late_rows_total{model}`: rows in the latest window,
      rows dropped because their window had closed;
    - `quality_violations_total{model, check}`: data-quality findings;
    - `model_performance{model, metric}`, `multivariate_auc{model}`: latest values.

    `start(model)` creates every `decision` and `windows_total` series at 0, so
    the alert rules see the model before its first window closes.

        d = DriftMetrics(ComponentMetrics("drift"))
        d.start("fraud")
        d.record_window("fraud", {("amount", "psi"): 0.31}, drifted=["amount"], decision="drift")
    """

    DECISION: Final = "decision"
    WINDOWS: Final = "windows_total"
    EPISODES: Final = "episodes_total"
    SCORE: Final = "feature_score"
    FEATURE_DRIFTED: Final = "feature_drifted"
    SHARE: Final = "share"
    WINDOW_ROWS: Final = "window_rows"
    LATE_ROWS: Final = "late_rows_total"
    QUALITY: Final = "quality_violations_total"
    PERFORMANCE: Final = "model_performance"
    MULTIVARIATE_AUC: Final = "multivariate_auc"
    DECISIONS: Final = ("none", "warn", "drift", "error", "not_judged")
    ERROR: Final = "error"
    NOT_JUDGED: Final = "not_judged"

    def __init__(self, metrics: ComponentMetrics, *, max_features: int | None = None) -> None:
        self.metrics = metrics
        m = metrics
        self.decision = m.gauge(
            self.DECISION,
            "1 for the latest window's decision (none, warn, drift, error, not_judged), else 0.",
            labels=("model", "decision"),
        )
        self.windows = m.counter(
            self.WINDOWS,
            "Drift monitoring windows evaluated, by decision (none, warn, drift, error, not_judged).",
            labels=("model", "decision"),
        )
        self.episodes = m.counter(
            self.EPISODES,
            "Drift episodes started (one drift.detected event each).",
            labels=("model",),
        )
        self.score = m.gauge(
            self.SCORE,
            "Latest drift statistic per feature and method (unitless).",
            labels=("model", "feature", "method"),
            max_label_values=max_features,
        )
        self.feature_drifted = m.gauge(
            self.FEATURE_DRIFTED,
            "1 while the drift policy reports drift for the feature, else 0.",
            labels=("model", "feature"),
            max_label_values=max_features,
        )
        self.share = m.gauge(
            self.SHARE,
            "Importance-weighted share of drifted features in the latest window.",
            labels=("model",),
        )
        self.window_rows = m.gauge(
            self.WINDOW_ROWS, "Rows in the latest evaluated window.", labels=("model",)
        )
        self.late_rows = m.counter(
            self.LATE_ROWS, "Rows dropped because their windows had closed.", labels=("model",)
        )
        self.quality = m.counter(
            self.QUALITY, "Data-quality findings, by check.", labels=("model", "check")
        )
        self.performance = m.gauge(
            self.PERFORMANCE,
            "Model performance in the latest window, by metric.",
            labels=("model", "metric"),
        )
        self.multivariate_auc = m.gauge(
            self.MULTIVARIATE_AUC,
            "Domain-classifier AUC in the latest window (0.5 = no shift).",
            labels=("model",),
        )

    def start(self, model: str) -> None:
        """Create the model's decision, window and episode series at 0."""
        for d in self.DECISIONS:
            self.decision.labels(model=model, decision=d).set(0)
            self.windows.labels(model=model, decision=d)
        self.episodes.labels(model=model)
        self.late_rows.labels(model=model)

    def record_window(
        self,
        model: str,
        scores: Mapping[tuple[str, str], float],
        drifted: Sequence[str] = (),
        *,
        decision: str | None = None,
        rows: int | None = None,
        drift_share: float | None = None,
        episode_start: bool = False,
        quality: Mapping[str, int] | None = None,
        performance: Mapping[str, float] | None = None,
        multivariate_auc: float | None = None,
    ) -> None:
        """Record one evaluated window: `scores[(feature, method)] = value`; `drifted`
        lists the features the policy flagged; `decision` is one of `DECISIONS`
        (default: `drift` if anything drifted, else `none`)."""
        decision = decision or ("drift" if drifted else "none")
        _check_outcome(decision, self.DECISIONS)
        self.start(model)
        drifted_set = set(drifted)
        for (feature, method), value in scores.items():
            self.score.labels(model=model, feature=feature, method=method).set(value)
        for feature in {feature for feature, _ in scores} | drifted_set:
            self.feature_drifted.labels(model=model, feature=feature).set(
                1 if feature in drifted_set else 0
            )
        for d in self.DECISIONS:
            self.decision.labels(model=model, decision=d).set(1 if d == decision else 0)
        self.windows.labels(model=model, decision=decision).inc()
        if episode_start:
            self.episodes.labels(model=model).inc()
        if rows is not None:
            self.window_rows.labels(model=model).set(rows)
        if drift_share is not None:
            self.share.labels(model=model).set(drift_share)
        for check, n in (quality or {}).items():
            if n > 0:
                self.quality.labels(model=model, check=check).inc(n)
        for metric, value in (performance or {}).items():
            self.performance.labels(model=model, metric=metric).set(value)
        if multivariate_auc is not None:
            self.multivariate_auc.labels(model=model).set(multivariate_auc)

    def record_late(self, model: str, rows: int) -> None:
        """Count rows dropped because their window had already closed."""
        if rows > 0:
            self.late_rows.labels(model=model).inc(rows)


class ModelQualityMetrics:
    """Model quality SLIs from labelled outcomes (component `quality` by default).

    - `model_quality_score{model, version, metric}`: e.g. metric=auc, log_loss,
      brier, calibration_error (value in the metric's own scale);
    - `labels_joined_total{model}`: ground-truth labels joined to predictions;
    - `label_delay_seconds{model}`: time from prediction to its label arriving.
    """

    SCORE: Final = "model_quality_score"
    LABELS: Final = "labels_joined_total"
    LABEL_DELAY: Final = "label_delay_seconds"

    def __init__(self, metrics: ComponentMetrics) -> None:
        self.metrics = metrics
        self.score = metrics.gauge(
            self.SCORE,
            "Latest model quality metric computed from joined labels.",
            labels=("model", "version", "metric"),
        )
        self.labels_joined = metrics.counter(
            self.LABELS, "Ground-truth labels joined to logged predictions.", labels=("model",)
        )
        self.label_delay = metrics.histogram(
            self.LABEL_DELAY,
            "Delay between a prediction and its ground-truth label.",
            labels=("model",),
            buckets=DURATION_BUCKETS_SECONDS,
        )

    def set_quality(self, model: str, version: str, metric: str, value: float) -> None:
        self.score.labels(model=model, version=version, metric=metric).set(value)


# Pipeline steps take milliseconds (an alias move) to hours (training).
STEP_BUCKETS_SECONDS: tuple[float, ...] = (0.01, 0.1, *DURATION_BUCKETS_SECONDS)


class PipelinesMetrics:
    """Retrain loop SLIs (component `pipelines` by default), emitted by the
    retrain-controller app around keel.pipelines' `Controller`. Every series but the
    provenance ones carries `model`.

    - `runs_started_total{model, trigger}`: runs started, by trigger kind (drift,
      schedule, data_volume, labels, manual);
    - `runs_finished_total{model, status}`: runs ended: `promoted`, `rolled_back`,
      `gate_failed`, `abandoned`;
    - `step_duration_seconds{step}`: one step's wall time (cache hits included);
    - `step_failures_total{model, step}`: an executor raised (the run is held `failed`
      and retried; `step="train"` is a failed training job);
    - `gate_failures_total{model, gate}`: a promotion gate failed (the champion stays);
    - `canary_rollbacks_total{model}`: a canary was rolled back (canary.failed or an
      SLO breach);
    - `active_run_age_seconds{model}`: how long the model's unfinished run (running,
      waiting or failed) has existed, 0 when it has none; evaluated at scrape time, so it
      grows while the loop is stuck;
    - `triggers_total{model, trigger, action}`: trigger decisions (start, coalesce,
      duplicate, cooldown, defer);
    - `provenance_intact`: 1 while the provenance hash chain verifies, 0 once it does not;
      `provenance_verify_failures_total`: verifications that found a broken link.

    `start(model)` creates the model's series at 0, so the alert rules see it before
    anything happens.
    """

    RUNS_STARTED: Final = "runs_started_total"
    RUNS_FINISHED: Final = "runs_finished_total"
    STEP_DURATION: Final = "step_duration_seconds"
    STEP_FAILURES: Final = "step_failures_total"
    GATE_FAILURES: Final = "gate_failures_total"
    CANARY_ROLLBACKS: Final = "canary_rollbacks_total"
    ACTIVE_RUN_AGE: Final = "active_run_age_seconds"
    TRIGGERS: Final = "triggers_total"
    PROVENANCE_INTACT: Final = "provenance_intact"
    PROVENANCE_FAILURES: Final = "provenance_verify_failures_total"
    FINISHED: Final = ("promoted", "rolled_back", "gate_failed", "abandoned")
    TRIGGER_KINDS: Final = ("drift", "schedule", "data_volume", "labels", "manual")
    STEPS: Final = (
        "build_training_set",
        "train",
        "evaluate",
        "gates",
        "package_sign",
        "register_challenger",
        "shadow",
        "canary",
        "promote_or_rollback",
    )

    def __init__(
        self, metrics: ComponentMetrics, *, clock: Callable[[], float] = time.time
    ) -> None:
        """`clock` (Unix seconds) is what the active-run age is measured against at scrape
        time; pass the controller's clock in tests."""
        self.metrics = m = metrics
        self._clock = clock
        self._active_since: dict[str, float | None] = {}
        self.runs_started = m.counter(
            self.RUNS_STARTED, "Retrain runs started, by trigger kind.", labels=("model", "trigger")
        )
        self.runs_finished = m.counter(
            self.RUNS_FINISHED,
            "Retrain runs ended, by status (promoted, rolled_back, gate_failed, abandoned).",
            labels=("model", "status"),
        )
        self.step_duration = m.histogram(
            self.STEP_DURATION,
            "Wall time of one pipeline step.",
            labels=("step",),
            buckets=STEP_BUCKETS_SECONDS,
        )
        self.step_failures = m.counter(
            self.STEP_FAILURES,
            "Pipeline steps whose executor raised (the run is held failed and retried).",
            labels=("model", "step"),
        )
        self.gate_failures = m.counter(
            self.GATE_FAILURES, "Promotion gates that failed, by gate.", labels=("model", "gate")
        )
        self.canary_rollbacks = m.counter(
            self.CANARY_ROLLBACKS, "Canaries rolled back.", labels=("model",)
        )
        self.active_run_age = m.gauge(
            self.ACTIVE_RUN_AGE,
            "Seconds since the model's unfinished retrain run was created (0: none).",
            labels=("model",),
        )
        self.triggers = m.counter(
            self.TRIGGERS,
            "Retrain trigger decisions (start, coalesce, duplicate, cooldown, defer).",
            labels=("model", "trigger", "action"),
        )
        self.provenance_intact = m.gauge(
            self.PROVENANCE_INTACT, "1 while the provenance hash chain verifies, else 0."
        )
        self.provenance_failures = m.counter(
            self.PROVENANCE_FAILURES, "Provenance verifications that found a broken link."
        )
        self.provenance_intact.set(1)

    def start(self, model: str) -> None:
        """Create the model's run, step, rollback and age series at 0 (idempotent)."""
        if model in self._active_since:
            return
        self._active_since[model] = None
        for status in self.FINISHED:
            self.runs_finished.labels(model=model, status=status)
        for kind in self.TRIGGER_KINDS:
            self.runs_started.labels(model=model, trigger=kind)
        for step in self.STEPS:
            self.step_failures.labels(model=model, step=step)
        self.canary_rollbacks.labels(model=model)
        since, clock = self._active_since, self._clock

        def age() -> float:
            t = since.get(model)
            return 0.0 if t is None else max(0.0, clock() - t)

        self.active_run_age.labels(model=model).set_function(age)

    @property
    def models(self) -> tuple[str, ...]:
        """The models whose series exist (started), in order of first appearance."""
        return tuple(self._active_since)

    def set_active(self, model: str, created_at: float | None) -> None:
        """The model's unfinished run was created at `created_at` (Unix seconds); None: none."""
        self.start(model)
        self._active_since[model] = created_at

    def observe_step(self, step: str, seconds: float) -> None:
        self.step_duration.labels(step=step).observe(max(0.0, seconds))

    def record_trigger(self, model: str, kind: str, action: str) -> None:
        self.start(model)
        self.triggers.labels(model=model, trigger=kind, action=action).inc()

    def record_started(self, model: str, kind: str) -> None:
        self.start(model)
        self.runs_started.labels(model=model, trigger=kind).inc()

    def record_finished(self, model: str, status: str, failed_gates: Sequence[str] = ()) -> None:
        """A run ended with `status`; `failed_gates` names the gates that failed it."""
        _check_outcome(status, self.FINISHED)
        self.start(model)
        self.runs_finished.labels(model=model, status=status).inc()
        for gate in failed_gates:
            self.gate_failures.labels(model=model, gate=gate).inc()
        if status == "rolled_back":
            self.canary_rollbacks.labels(model=model).inc()

    def record_step_failure(self, model: str, step: str) -> None:
        self.start(model)
        self.step_failures.labels(model=model, step=step).inc()

    def record_provenance(self, intact: bool) -> None:
        self.provenance_intact.set(1 if intact else 0)
        if not intact:
            self.provenance_failures.inc()
