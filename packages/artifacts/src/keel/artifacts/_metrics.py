"""Prometheus metrics of verification and loading, through keel.telemetry (ADR 0003).

keel_artifacts_verify_seconds                 time to verify an artifact (signature + hashes)
keel_artifacts_load_seconds                   time to verify and deserialise an artifact
keel_artifacts_verified_bytes_total           bytes hashed by verification
keel_artifacts_verified_total{signed}         artifacts accepted (signed="true"/"false")
keel_artifacts_refusals_total{reason}         artifacts refused, by ArtifactError.reason
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from keel.artifacts._errors import ArtifactError
from keel.telemetry import ComponentMetrics

_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class ArtifactMetrics:
    """Counters and histograms that ``verify_artifact``/``load_artifact`` update when given."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.metrics = m = ComponentMetrics("artifacts", registry=registry)
        self.verify_seconds = m.histogram(
            "verify_seconds",
            "Time to verify an artifact (signature, manifest, hashes).",
            buckets=_BUCKETS,
        )
        self.load_seconds = m.histogram(
            "load_seconds", "Time to verify and deserialise an artifact.", buckets=_BUCKETS
        )
        self.verified_bytes = m.counter("verified_bytes_total", "Bytes hashed by verification.")
        self.verified = m.counter(
            "verified_total", "Artifacts accepted, by whether they were signed.", labels=("signed",)
        )
        self.refusals = m.counter(
            "refusals_total",
            "Artifacts refused, by reason (ArtifactError.reason).",
            labels=("reason",),
        )

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def accepted(self, verify_seconds: float, nbytes: int, *, signed: bool) -> None:
        self.verify_seconds.observe(verify_seconds)
        self.verified_bytes.inc(nbytes)
        self.verified.labels(signed=str(signed).lower()).inc()

    def refused(self, err: ArtifactError) -> None:
        self.refusals.labels(reason=err.reason).inc()
