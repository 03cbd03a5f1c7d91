"""SLOs as code: specs for availability, latency, freshness and drift objectives.

A spec says what fraction of events (requests) or of time (freshness, drift)
must be good over a budget period. `keel.telemetry._rules` renders every spec
into Prometheus recording rules for its error ratio over several windows and
into multi-window, multi-burn-rate alerts (Google SRE workbook, ch. 5
"Alerting on SLOs", recommendation 6):

| alert            | severity | long window | short window | burn rate | budget spent when it fires |
|------------------|----------|-------------|--------------|-----------|----------------------------|
| `...BudgetBurnFast` | critical (page)   | 1h | 5m  | 14.4x | 2% of a 30-day budget in 1 h  |
|                  |          | 6h          | 30m          | 6x        | 5% in 6 h                  |
| `...BudgetBurnSlow` | warning (ticket) | 3d | 6h  | 1x    | 10% in 3 days              |

The long window gives significance, the short one makes the alert reset soon
after the burn stops. Ratio SLOs (availability, latency) count events;
threshold SLOs (freshness, drift) count time: a 0/1 "bad now" indicator per
group is recorded and averaged over each window.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from prometheus_client.utils import floatToGoString

from keel.telemetry._errors import InvalidSLOError
from keel.telemetry._metrics import LATENCY_BUCKETS_SECONDS

__all__ = [
    "DEFAULT_BURN_RATE_ALERTS",
    "AvailabilitySLO",
    "BurnRateAlert",
    "BurnRateWindow",
    "DriftSLO",
    "FreshnessSLO",
    "LatencySLO",
    "SLOSpec",
    "parse_duration",
]

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_METRIC_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
# One label matcher: name, operator, double-quoted value (no embedded quotes).
_MATCHER = r'[a-zA-Z_][a-zA-Z0-9_]*\s*(?:=|!=|=~|!~)\s*"[^"\\]*"'
_MATCHERS_RE = re.compile(rf"^(?:{_MATCHER})(?:\s*,\s*{_MATCHER})*$")
_DURATION_RE = re.compile(r"^(\d+)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """A Prometheus duration with one unit ("5m", "6h", "3d") in seconds."""
    m = _DURATION_RE.match(text) if isinstance(text, str) else None
    if not m or int(m.group(1)) == 0:
        raise InvalidSLOError(
            f"duration {text!r}: expected a positive number and one unit of s, m, h, d, w (e.g. '5m')"
        )
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


@dataclass(frozen=True)
class BurnRateWindow:
    """One long/short window pair: fire when the error ratio over both exceeds
    `burn_rate` times the error budget ratio (1 - objective)."""

    long: str
    short: str
    burn_rate: float

    def __post_init__(self) -> None:
        long_s, short_s = parse_duration(self.long), parse_duration(self.short)
        if short_s >= long_s:
            raise InvalidSLOError(
                f"burn-rate window {self.long}/{self.short}: the short window must be shorter"
            )
        if not (
            isinstance(self.burn_rate, int | float)
            and math.isfinite(self.burn_rate)
            and self.burn_rate > 0
        ):
            raise InvalidSLOError(f"burn rate {self.burn_rate!r}: must be a finite number > 0")


@dataclass(frozen=True)
class BurnRateAlert:
    """An alert made of one or more window pairs (OR-ed); `suffix` names it
    (`Keel<SloName>BudgetBurn<suffix>`)."""

    suffix: str
    severity: Literal["critical", "warning", "info"]
    windows: tuple[BurnRateWindow, ...]

    def __post_init__(self) -> None:
        if not re.match(r"^[A-Z][A-Za-z0-9]*$", self.suffix):
            raise InvalidSLOError(f"alert suffix {self.suffix!r}: use CamelCase, e.g. 'Fast'")
        if self.severity not in ("critical", "warning", "info"):
            raise InvalidSLOError(f"severity {self.severity!r}: expected critical, warning or info")
        if not self.windows:
            raise InvalidSLOError(f"alert {self.suffix}: needs at least one burn-rate window")


# SRE workbook, "Alerting on SLOs", table 5-8 (for a 30-day budget period).
DEFAULT_BURN_RATE_ALERTS: tuple[BurnRateAlert, ...] = (
    BurnRateAlert(
        "Fast",
        "critical",
        (BurnRateWindow("1h", "5m", 14.4), BurnRateWindow("6h", "30m", 6.0)),
    ),
    BurnRateAlert("Slow", "warning", (BurnRateWindow("3d", "6h", 1.0),)),
)


def _check_matchers(what: str, matchers: str) -> None:
    if matchers and not _MATCHERS_RE.match(matchers):
        raise InvalidSLOError(
            f'{what} {matchers!r}: expected PromQL label matchers like \'outcome="error",model!="x"\''
        )


def _legend(labels: tuple[str, ...]) -> str:
    """A Grafana legend template showing each label's value."""
    return " ".join("{{" + label + "}}" for label in labels)


def _selector(metric: str, *matchers: str) -> str:
    inner = ",".join(m for m in matchers if m)
    return f"{metric}{{{inner}}}" if inner else metric


@dataclass(frozen=True, kw_only=True)
class SLOSpec:
    """Fields every SLO has. `name` is kebab-case and unique; `objective` the
    fraction that must be good (0.999); `group_by` the labels each SLO instance
    is evaluated per (e.g. one per model); `period` the error-budget period."""

    kind: ClassVar[str] = "slo"

    name: str
    objective: float
    description: str
    group_by: tuple[str, ...] = ()
    period: str = "30d"
    alerts: tuple[BurnRateAlert, ...] = DEFAULT_BURN_RATE_ALERTS
    diagnose: tuple[str, ...] = ()
    mitigate: tuple[str, ...] = ()
    team: str = "ml-platform"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise InvalidSLOError(
                f"SLO name {self.name!r}: use kebab-case, e.g. 'serving-availability'"
            )
        if not (isinstance(self.objective, float) and 0.0 < self.objective < 1.0):
            raise InvalidSLOError(
                f"SLO {self.name}: objective {self.objective!r} must be a float strictly between 0 and 1 (e.g. 0.999)"
            )
        if not self.description.strip():
            raise InvalidSLOError(
                f"SLO {self.name}: description is required (it goes into alerts and runbooks)"
            )
        if isinstance(self.group_by, str):
            raise InvalidSLOError(
                f"SLO {self.name}: group_by must be a tuple of label names, not a string"
            )
        for label in self.group_by:
            if not _LABEL_RE.match(label) or label in ("slo", "le", "severity"):
                raise InvalidSLOError(f"SLO {self.name}: invalid group_by label {label!r}")
        if len(set(self.group_by)) != len(self.group_by):
            raise InvalidSLOError(f"SLO {self.name}: duplicate group_by labels {self.group_by}")
        period_s = parse_duration(self.period)
        for alert in self.alerts:
            for w in alert.windows:
                if parse_duration(w.long) > period_s:
                    raise InvalidSLOError(
                        f"SLO {self.name}: window {w.long} is longer than the period {self.period}"
                    )
        if len({a.suffix for a in self.alerts}) != len(self.alerts):
            raise InvalidSLOError(f"SLO {self.name}: alert suffixes must be unique")
        if not re.match(r"^[a-z][a-z0-9-]*$", self.team):
            raise InvalidSLOError(f"SLO {self.name}: team {self.team!r} must be kebab-case")

    @property
    def error_budget(self) -> float:
        """1 - objective: the fraction allowed to be bad."""
        return 1.0 - self.objective

    @property
    def camel_name(self) -> str:
        return "".join(part.capitalize() for part in self.name.split("-"))

    def alert_name(self, alert: BurnRateAlert) -> str:
        return f"Keel{self.camel_name}BudgetBurn{alert.suffix}"

    def windows(self) -> tuple[str, ...]:
        """Every window the alerts use, shortest first."""
        ws = {w for a in self.alerts for pair in a.windows for w in (pair.long, pair.short)}
        return tuple(sorted(ws, key=parse_duration))

    def _by(self) -> str:
        return f"sum by ({', '.join(self.group_by)}) " if self.group_by else "sum "

    def _max_by(self) -> str:
        return f"max by ({', '.join(self.group_by)}) " if self.group_by else "max "

    # Ratio SLOs override `error_ratio_expr`; threshold SLOs `indicator_expr`.
    def error_ratio_expr(self, window: str) -> str | None:
        """PromQL for the error ratio over `window` from raw series (ratio SLOs)."""
        return None

    def indicator_expr(self) -> str | None:
        """PromQL for the 0/1 "bad now" indicator per group (threshold SLOs)."""
        return None

    def objective_text(self) -> str:
        return f"{self.objective * 100:g}% over {self.period}"

    def signal_exprs(self) -> tuple[tuple[str, str], ...]:
        """(legend, PromQL) pairs graphing the raw SLI signal on the dashboard."""
        return ()


@dataclass(frozen=True, kw_only=True)
class AvailabilitySLO(SLOSpec):
    """Good events / valid events from one counter: errors are the series matching
    `error_matchers`, valid ones `total_matchers` (e.g. exclude caller errors)."""

    kind: ClassVar[str] = "availability"

    metric: str
    error_matchers: str
    total_matchers: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _METRIC_RE.match(self.metric) or not self.metric.endswith("_total"):
            raise InvalidSLOError(
                f"SLO {self.name}: metric {self.metric!r} must be a counter name ending in _total"
            )
        if not self.error_matchers:
            raise InvalidSLOError(
                f"SLO {self.name}: error_matchers is required (e.g. 'outcome=\"error\"')"
            )
        _check_matchers(f"SLO {self.name}: error_matchers", self.error_matchers)
        _check_matchers(f"SLO {self.name}: total_matchers", self.total_matchers)

    def error_ratio_expr(self, window: str) -> str:
        errors = _selector(self.metric, self.total_matchers, self.error_matchers)
        total = _selector(self.metric, self.total_matchers)
        return f"{self._by()}(rate({errors}[{window}]))\n/\n{self._by()}(rate({total}[{window}]))"

    def signal_exprs(self) -> tuple[tuple[str, str], ...]:
        labels = ", ".join((*self.group_by, "outcome"))
        return (
            (
                "{{outcome}} " + _legend(self.group_by),
                f"sum by ({labels}) (rate({self.metric}[5m]))",
            ),
        )


@dataclass(frozen=True, kw_only=True)
class LatencySLO(SLOSpec):
    """Requests faster than `threshold_seconds` / all requests, from a histogram.
    The threshold must be one of the histogram's bucket bounds (`buckets`)."""

    kind: ClassVar[str] = "latency"

    histogram: str
    threshold_seconds: float
    matchers: str = ""
    buckets: tuple[float, ...] = field(default=LATENCY_BUCKETS_SECONDS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _METRIC_RE.match(self.histogram) or self.histogram.endswith(
            ("_bucket", "_count", "_sum")
        ):
            raise InvalidSLOError(
                f"SLO {self.name}: histogram {self.histogram!r}: give the base name, without _bucket"
            )
        if self.threshold_seconds not in self.buckets:
            raise InvalidSLOError(
                f"SLO {self.name}: threshold {self.threshold_seconds!r}s is not a bucket bound; "
                f'pick one of {list(self.buckets)} so the rule can select le="..." exactly'
            )
        _check_matchers(f"SLO {self.name}: matchers", self.matchers)

    @property
    def le(self) -> str:
        """The `le` label value prometheus_client writes for the threshold bucket."""
        return floatToGoString(self.threshold_seconds)

    def error_ratio_expr(self, window: str) -> str:
        fast = _selector(f"{self.histogram}_bucket", self.matchers, f'le="{self.le}"')
        total = _selector(f"{self.histogram}_count", self.matchers)
        return (
            f"1 - (\n  {self._by()}(rate({fast}[{window}]))\n  /\n"
            f"  {self._by()}(rate({total}[{window}]))\n)"
        )

    def signal_exprs(self) -> tuple[tuple[str, str], ...]:
        by = ", ".join(("le", *self.group_by))
        bucket = _selector(f"{self.histogram}_bucket", self.matchers)
        legend = _legend(self.group_by)
        return tuple(
            (
                f"p{q} {legend}".strip(),
                f"histogram_quantile({q / 100:g}, sum by ({by}) (rate({bucket}[5m])))",
            )
            for q in (50, 90, 99)
        )


@dataclass(frozen=True, kw_only=True)
class _ThresholdSLO(SLOSpec):
    """Time during which a gauge stays at or under a threshold / all time."""

    gauge: str
    matchers: str = ""

    @property
    def threshold(self) -> float:
        raise NotImplementedError

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _METRIC_RE.match(self.gauge):
            raise InvalidSLOError(f"SLO {self.name}: gauge {self.gauge!r} is not a metric name")
        _check_matchers(f"SLO {self.name}: matchers", self.matchers)
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise InvalidSLOError(
                f"SLO {self.name}: threshold {self.threshold!r} must be finite and >= 0"
            )

    def indicator_expr(self) -> str:
        return f"{self._max_by()}({_selector(self.gauge, self.matchers)}) > bool {self.threshold:g}"

    def signal_exprs(self) -> tuple[tuple[str, str], ...]:
        legend = _legend(self.group_by) or self.gauge
        return ((legend, f"{self._max_by()}({_selector(self.gauge, self.matchers)})"),)


@dataclass(frozen=True, kw_only=True)
class FreshnessSLO(_ThresholdSLO):
    """Fraction of time the data-freshness gauge (seconds) is <= `max_age_seconds`."""

    kind: ClassVar[str] = "freshness"

    max_age_seconds: float

    @property
    def threshold(self) -> float:
        return float(self.max_age_seconds)


@dataclass(frozen=True, kw_only=True)
class DriftSLO(_ThresholdSLO):
    """Fraction of time the drift score gauge is <= `max_score` (e.g. PSI <= 0.2)."""

    kind: ClassVar[str] = "drift"

    max_score: float

    @property
    def threshold(self) -> float:
        return float(self.max_score)
