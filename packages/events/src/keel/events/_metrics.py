"""The bus's SLIs, registered on an injected keel.telemetry ComponentMetrics.

Without a ComponentMetrics the bus records nothing (`NULL_METRICS`): an unexposed private
registry would cost time and show nothing. Apps pass `ComponentMetrics("events", registry=...)`
that their /metrics endpoint serves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keel.telemetry import ComponentMetrics


class EventsMetrics:
    """published/consumed/acked/redelivered/dead-lettered counters, consumer lag gauge and
    publish latency histogram, all labelled by stream (and consumer where it applies)."""

    enabled = True

    def __init__(self, metrics: ComponentMetrics) -> None:
        from keel.telemetry import LATENCY_BUCKETS_SECONDS

        self.component = metrics
        s, sc = ("stream",), ("stream", "consumer")
        self._published = metrics.counter(
            "published_total", "Events stored (duplicates excluded).", labels=s
        )
        self._duplicates = metrics.counter(
            "duplicates_total", "Publishes ignored as duplicates of a stored event id.", labels=s
        )
        self._consumed = metrics.counter(
            "consumed_total", "Deliveries handed to consumers.", labels=sc
        )
        self._acked = metrics.counter("acked_total", "Deliveries acknowledged.", labels=sc)
        self._redelivered = metrics.counter(
            "redelivered_total", "Deliveries with delivery_count > 1.", labels=sc
        )
        self._dead = metrics.counter(
            "dead_lettered_total",
            "Events moved to the dead-letter queue.",
            labels=("stream", "consumer", "reason"),
        )
        self._lag = metrics.gauge(
            "consumer_lag_events", "Events not yet delivered to the consumer.", labels=sc
        )
        self._latency = metrics.histogram(
            "publish_latency_seconds",
            "Publish call latency (one call may carry a batch).",
            labels=s,
            buckets=LATENCY_BUCKETS_SECONDS,
        )

    def published(self, stream: str, stored: int, duplicates: int, seconds: float) -> None:
        if stored:
            self._published.labels(stream=stream).inc(stored)
        if duplicates:
            self._duplicates.labels(stream=stream).inc(duplicates)
        self._latency.labels(stream=stream).observe(seconds)

    def consumed(self, stream: str, consumer: str, n: int, redelivered: int) -> None:
        if n:
            self._consumed.labels(stream=stream, consumer=consumer).inc(n)
        if redelivered:
            self._redelivered.labels(stream=stream, consumer=consumer).inc(redelivered)

    def acked(self, stream: str, consumer: str, n: int) -> None:
        if n:
            self._acked.labels(stream=stream, consumer=consumer).inc(n)

    def dead_lettered(self, stream: str, consumer: str, reason: str) -> None:
        self._dead.labels(stream=stream, consumer=consumer, reason=reason).inc()

    def lag(self, stream: str, consumer: str, value: int) -> None:
        self._lag.labels(stream=stream, consumer=consumer).set(value)


class _NullMetrics(EventsMetrics):
    enabled = False

    def __init__(self) -> None:
        pass

    def published(self, *a: Any, **k: Any) -> None:
        pass

    def consumed(self, *a: Any, **k: Any) -> None:
        pass

    def acked(self, *a: Any, **k: Any) -> None:
        pass

    def dead_lettered(self, *a: Any, **k: Any) -> None:
        pass

    def lag(self, *a: Any, **k: Any) -> None:
        pass


NULL_METRICS: EventsMetrics = _NullMetrics()


def as_events_metrics(metrics: ComponentMetrics | EventsMetrics | None) -> EventsMetrics:
    if metrics is None:
        return NULL_METRICS
    if isinstance(metrics, EventsMetrics):
        return metrics
    return EventsMetrics(metrics)
