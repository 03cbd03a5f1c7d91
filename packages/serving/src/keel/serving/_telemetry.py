"""Serving SLIs on keel.telemetry: the shared ServingMetrics vocabulary plus per-variant,
admission, feature-fetch, model-load and canary metrics (all ``keel_serving_*``)."""

from __future__ import annotations

from keel.telemetry import (
    BATCH_SIZE_BUCKETS_ROWS,
    DURATION_BUCKETS_SECONDS,
    LATENCY_BUCKETS_SECONDS,
    ComponentMetrics,
    ServingMetrics,
)


class ServingTelemetry:
    """Every metric the server exposes. One instance per server (its own registry)."""

    def __init__(self, metrics: ComponentMetrics | None = None) -> None:
        self.metrics = metrics or ComponentMetrics("serving")
        m = self.metrics
        self.sli = ServingMetrics(m)
        self.variant_latency = m.histogram(
            "variant_latency_seconds",
            "Inference latency per variant (primary, canary, shadow).",
            labels=("model", "variant"),
            buckets=LATENCY_BUCKETS_SECONDS,
        )
        self.variant_requests = m.counter(
            "variant_requests_total",
            "Inference requests per variant and outcome (ok, error, invalid).",
            labels=("model", "variant", "outcome"),
        )
        self.shed = m.counter(
            "shed_total",
            "Requests refused with 503 by the admission queue.",
            labels=("model", "variant"),
        )
        self.queue_rows = m.gauge(
            "queue_rows", "Rows waiting in the admission queue.", labels=("model", "variant")
        )
        self.feature_fetch = m.histogram(
            "feature_fetch_seconds",
            "Online feature fetch time per request.",
            labels=("model",),
            buckets=LATENCY_BUCKETS_SECONDS,
        )
        self.forward_rows = m.histogram(
            "forward_batch_rows",
            "Rows per forward pass, per variant.",
            labels=("model", "variant"),
            buckets=BATCH_SIZE_BUCKETS_ROWS,
        )
        self.model_loads = m.counter(
            "model_loads_total",
            "Model loads by outcome (ok, refused).",
            labels=("model", "outcome"),
        )
        self.model_load_seconds = m.histogram(
            "model_load_seconds",
            "Verify + deserialise + build + warm-up time of a model load.",
            labels=("model",),
            buckets=DURATION_BUCKETS_SECONDS,
        )
        self.swaps = m.counter(
            "model_swaps_total", "Hot swaps of a served model.", labels=("model", "variant")
        )
        self.model_info = m.gauge(
            "model_loaded_timestamp_seconds",
            "Unix time the serving version was loaded, per variant.",
            labels=("model", "variant"),
        )
        self.canary_stopped = m.counter(
            "canary_stopped_total", "Canaries stopped for breaching their SLO.", labels=("model",)
        )
        self.log_dropped = m.counter(
            "prediction_log_dropped_total",
            "Prediction-log records dropped (log queue full or bus publish failed).",
            labels=("model",),
        )
        self.log_published = m.counter(
            "prediction_log_published_total",
            "Prediction-log records published to the event bus.",
            labels=("model",),
        )
