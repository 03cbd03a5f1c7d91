"""keel.telemetry: the platform's metric vocabulary, SLOs as code, structured logging.

    from keel.telemetry import ComponentMetrics, LATENCY_BUCKETS_SECONDS, get_logger, start_metrics_server

    m = ComponentMetrics("events")
    c = m.counter("published_total", "Events published.", labels=("stream",))
    c.labels(stream="orders").inc()
    srv = start_metrics_server(m.registry, host="127.0.0.1", port=0)   # srv.port, srv.stop()

SLI vocabulary: ServingMetrics, FeatureMetrics, DriftMetrics,
ModelQualityMetrics, PipelinesMetrics. SLOs as code: AvailabilitySLO, LatencySLO, FreshnessSLO,
DriftSLO, and non-SLO alerts CounterAlert, GaugeAlert -> render_rules / render_dashboard /
render_runbooks; Keel's own are PLATFORM_SLOS and PLATFORM_ALERTS, rendered into ops/ by
`python -m keel.telemetry.generate ops/`.

`redact_url(url)` masks passwords and tokens in any URL Keel prints or logs. The one
convention every app binary follows (config rule, --help, JSON logs, start/stop lines,
one-line errors) is `keel.telemetry.app.App` (docs/apps.md).

Never imports torch, ray, mlflow, polars, numpy or pydantic (tested).
"""

from keel.telemetry._alerts import AlertSpec, CounterAlert, GaugeAlert
from keel.telemetry._dashboard import render_dashboard
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
from keel.telemetry._platform import PLANNED_SLOS, PLATFORM_ALERTS, PLATFORM_SLOS
from keel.telemetry._redact import redact_url
from keel.telemetry._rules import render_rules, rule_groups
from keel.telemetry._runbooks import render_runbooks
from keel.telemetry._server import (
    MetricsServer,
    metrics_asgi_app,
    metrics_wsgi_app,
    start_metrics_server,
)
from keel.telemetry._slo import (
    DEFAULT_BURN_RATE_ALERTS,
    AvailabilitySLO,
    BurnRateAlert,
    BurnRateWindow,
    DriftSLO,
    FreshnessSLO,
    LatencySLO,
    SLOSpec,
)
from keel.telemetry._vocabulary import (
    BATCH_SIZE_BUCKETS_ROWS,
    DriftMetrics,
    FeatureMetrics,
    ModelQualityMetrics,
    PipelinesMetrics,
    ServingMetrics,
    metric_name,
)

__all__ = [
    "BATCH_SIZE_BUCKETS_ROWS",
    "CORRELATION_HEADER",
    "DEFAULT_BURN_RATE_ALERTS",
    "DEFAULT_MAX_LABEL_VALUES",
    "DURATION_BUCKETS_SECONDS",
    "LATENCY_BUCKETS_SECONDS",
    "OTHER_LABEL_VALUE",
    "PLANNED_SLOS",
    "PLATFORM_ALERTS",
    "PLATFORM_SLOS",
    "AlertSpec",
    "AvailabilitySLO",
    "BurnRateAlert",
    "BurnRateWindow",
    "ComponentMetrics",
    "CounterAlert",
    "DriftMetrics",
    "DriftSLO",
    "FeatureMetrics",
    "FreshnessSLO",
    "GaugeAlert",
    "GuardedCounter",
    "GuardedGauge",
    "GuardedHistogram",
    "InvalidMetricError",
    "InvalidSLOError",
    "JsonFormatter",
    "LatencySLO",
    "MetricsServer",
    "ModelQualityMetrics",
    "PipelinesMetrics",
    "SLOSpec",
    "ServingMetrics",
    "TelemetryError",
    "TelemetryUnavailableError",
    "configure_logging",
    "correlation_scope",
    "current_correlation_id",
    "get_logger",
    "metric_name",
    "metrics_asgi_app",
    "metrics_wsgi_app",
    "redact_url",
    "render_dashboard",
    "render_rules",
    "render_runbooks",
    "rule_groups",
    "start_metrics_server",
    "with_correlation",
]
