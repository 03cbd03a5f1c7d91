"""keel.telemetry: the platform's metric vocabulary, SLOs as code, structured logging.

    from keel.telemetry import ComponentMetrics, LATENCY_BUCKETS_SECONDS, get_logger, start_metrics_server

    m = ComponentMetrics("events")
    c = m.counter("published_total", "Events published.", labels=("stream",))
    c.labels(stream="orders").inc()
    srv = start_metrics_server(m.registry, host="127.0.0.1", port=0)   # srv.port, srv.stop()

Never imports torch, ray, mlflow or polars (tested).
"""

from keel.telemetry._errors import (
    InvalidMetricError,
    InvalidSLOError,
    TelemetryError,
    TelemetryUnavailableError,
)
from keel.telemetry._logging import (
    CORRELATION_HEADER,
    JsonFormatter,
    configure_logging,
    correlation_scope,
    current_correlation_id,
    get_logger,
    with_correlation,
)
from keel.telemetry._metrics import (
    DEFAULT_MAX_LABEL_VALUES,
    DURATION_BUCKETS_SECONDS,
    LATENCY_BUCKETS_SECONDS,
    OTHER_LABEL_VALUE,
    ComponentMetrics,
    GuardedCounter,
    GuardedGauge,
    GuardedHistogram,
)
from keel.telemetry._server import (
    MetricsServer,
    metrics_asgi_app,
    metrics_wsgi_app,
    start_metrics_server,
)

__all__ = [
    "CORRELATION_HEADER",
    "DEFAULT_MAX_LABEL_VALUES",
    "DURATION_BUCKETS_SECONDS",
    "LATENCY_BUCKETS_SECONDS",
    "OTHER_LABEL_VALUE",
    "ComponentMetrics",
    "GuardedCounter",
    "GuardedGauge",
    "GuardedHistogram",
    "InvalidMetricError",
    "InvalidSLOError",
    "JsonFormatter",
    "MetricsServer",
    "TelemetryError",
    "TelemetryUnavailableError",
    "configure_logging",
    "correlation_scope",
    "current_correlation_id",
    "get_logger",
    "metrics_asgi_app",
    "metrics_wsgi_app",
    "start_metrics_server",
    "with_correlation",
]
