"""Errors raised by keel.telemetry, grouped by what the caller does next."""

from __future__ import annotations


class TelemetryError(Exception):
    """Base class of every error keel.telemetry raises."""


class InvalidMetricError(TelemetryError, ValueError):
    """A metric or label was declared wrongly (bad name, unit, labels, buckets): fix the code."""


class InvalidSLOError(TelemetryError, ValueError):
    """An SLO spec is invalid (bad objective, window, name): fix the spec."""


class TelemetryUnavailableError(TelemetryError):
    """A telemetry resource could not be acquired (e.g. the metrics port is in use): retry
    with another port or free the resource."""
