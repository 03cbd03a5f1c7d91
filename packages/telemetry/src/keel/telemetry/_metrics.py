"""A Prometheus registry per component, with naming rules and a label-cardinality guard.

Every Keel component (events, features, serving, ...) owns one `ComponentMetrics`.
It prefixes names with `keel_<component>_`, checks names against Prometheus
conventions (base units, `_total` for counters), and bounds the number of
distinct values each label may take: a metric with an unbounded label (a user
id in a label, say) would otherwise grow Prometheus' memory without limit.
Past the limit, new values collapse to `"__other__"` and
`keel_<component>_label_overflow_total{metric, label}` counts the collapses.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from keel.telemetry._errors import InvalidMetricError

__all__ = [
    "DEFAULT_MAX_LABEL_VALUES",
    "DURATION_BUCKETS_SECONDS",
    "LATENCY_BUCKETS_SECONDS",
    "OTHER_LABEL_VALUE",
    "ComponentMetrics",
    "GuardedCounter",
    "GuardedGauge",
    "GuardedHistogram",
]

# Request latency buckets for ms-scale online serving, in seconds (base unit).
# Dense between 1 ms and 100 ms where serving SLO thresholds sit (every latency
# SLO threshold must be one of these bounds, so `le` selects it exactly); a few
# coarse buckets above to keep slow tails visible. 16 buckets.
LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# Buckets for batch work (a feature materialisation, a training step, a pipeline
# stage): one second to four hours, in seconds.
DURATION_BUCKETS_SECONDS: tuple[float, ...] = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
)

OTHER_LABEL_VALUE = "__other__"
DEFAULT_MAX_LABEL_VALUES = 100

_COMPONENT_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*[a-z0-9]$")
_LABEL_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_RESERVED_LABELS = frozenset({"le", "quantile"})
# Suffixes that betray a non-base unit; Prometheus convention is seconds, bytes, ratios.
_NON_BASE_UNIT_SUFFIXES: dict[str, str] = {
    "_ms": "_seconds",
    "_millis": "_seconds",
    "_milliseconds": "_seconds",
    "_us": "_seconds",
    "_microseconds": "_seconds",
    "_nanoseconds": "_seconds",
    "_minutes": "_seconds",
    "_hours": "_seconds",
    "_days": "_seconds",
    "_kb": "_bytes",
    "_mb": "_bytes",
    "_gb": "_bytes",
    "_kilobytes": "_bytes",
    "_megabytes": "_bytes",
    "_gigabytes": "_bytes",
    "_percent": "_ratio",
}


class _LabelGuard:
    """Bounds the distinct values each label of one metric may take (thread-safe).

    The common case (every value already admitted) is a lock-free membership
    check; only new values take the lock.
    """

    def __init__(
        self,
        metric: str,
        labelnames: Sequence[str],
        limit: int,
        overflow: Counter,
    ) -> None:
        self._metric = metric
        self._labelnames = tuple(labelnames)
        self._limit = limit
        self._seen: tuple[set[str], ...] = tuple(set() for _ in self._labelnames)
        self._overflow = overflow
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        return self._limit

    def admit(self, values: tuple[str, ...]) -> tuple[str, ...]:
        """Return `values` (in label order) with any value past its label's limit
        replaced by `__other__`."""
        seen = self._seen
        if all(v in s for v, s in zip(values, seen, strict=True)):
            return values
        out = list(values)
        collapsed: list[str] = []
        with self._lock:
            for i, value in enumerate(values):
                known = seen[i]
                if value in known:
                    continue
                if len(known) < self._limit:
                    known.add(value)
                else:
                    out[i] = OTHER_LABEL_VALUE
                    collapsed.append(self._labelnames[i])
        for name in collapsed:
            self._overflow.labels(metric=self._metric, label=name).inc()
        return tuple(out)

    def reset(self) -> None:
        with self._lock:
            for known in self._seen:
                known.clear()

    def distinct(self, label: str) -> int:
        """How many distinct values of `label` have been admitted so far."""
        with self._lock:
            return len(self._seen[self._labelnames.index(label)])


def _labels(self: Any, base: Any, args: tuple[object, ...], kwargs: dict[str, object]) -> Any:
    """`.labels()` of a guarded metric: normalise to label order, guard, delegate."""
    guard: _LabelGuard | None = self._keel_guard
    if guard is None:  # a child, or a metric built outside ComponentMetrics
        return base.labels(self, *args, **kwargs)
    names: tuple[str, ...] = self._labelnames
    if kwargs:
        if args or len(kwargs) != len(names):
            raise InvalidMetricError(
                f"{self._name}: labels {sorted(kwargs)} (+{len(args)} positional) do not match "
                f"the declared labels {sorted(names)}"
            )
        try:
            values = tuple(str(kwargs[n]) for n in names)
        except KeyError:
            raise InvalidMetricError(
                f"{self._name}: labels {sorted(kwargs)} do not match the declared labels {sorted(names)}"
            ) from None
    else:
        if len(args) != len(names):
            raise InvalidMetricError(
                f"{self._name}: got {len(args)} label values for the declared labels {list(names)}"
            )
        values = tuple(str(v) for v in args)
    return base.labels(self, *guard.admit(values))


class GuardedCounter(Counter):
    """A prometheus_client Counter whose `.labels()` passes values through the guard."""

    _keel_guard: _LabelGuard | None = None

    def labels(self, *labelvalues: object, **labelkwargs: object) -> GuardedCounter:
        child: GuardedCounter = _labels(self, Counter, labelvalues, labelkwargs)
        return child

    def clear(self) -> None:
        super().clear()
        if self._keel_guard is not None:
            self._keel_guard.reset()


class GuardedGauge(Gauge):
    """A prometheus_client Gauge whose `.labels()` passes values through the guard."""

    _keel_guard: _LabelGuard | None = None

    def labels(self, *labelvalues: object, **labelkwargs: object) -> GuardedGauge:
        child: GuardedGauge = _labels(self, Gauge, labelvalues, labelkwargs)
        return child

    def clear(self) -> None:
        super().clear()
        if self._keel_guard is not None:
            self._keel_guard.reset()


class GuardedHistogram(Histogram):
    """A prometheus_client Histogram whose `.labels()` passes values through the guard."""

    _keel_guard: _LabelGuard | None = None

    def labels(self, *labelvalues: object, **labelkwargs: object) -> GuardedHistogram:
        child: GuardedHistogram = _labels(self, Histogram, labelvalues, labelkwargs)
        return child

    def clear(self) -> None:
        super().clear()
        if self._keel_guard is not None:
            self._keel_guard.reset()


def _check_name(kind: str, name: str) -> None:
    if not _NAME_RE.match(name):
        raise InvalidMetricError(
            f"metric name {name!r}: use lower_snake_case ([a-z][a-z0-9_]*), without the keel_<component>_ prefix"
        )
    if name.startswith("keel_"):
        raise InvalidMetricError(
            f"metric name {name!r}: drop the 'keel_' prefix; ComponentMetrics adds keel_<component>_"
        )
    for suffix, base in _NON_BASE_UNIT_SUFFIXES.items():
        stem = name.removesuffix("_total")
        if stem.endswith(suffix):
            raise InvalidMetricError(
                f"metric name {name!r}: use base units; replace {suffix!r} with {base!r} and convert the value"
            )
    if kind == "counter" and not name.endswith("_total"):
        raise InvalidMetricError(
            f"counter {name!r}: counter names end in '_total' (e.g. {name}_total)"
        )
    if kind != "counter" and name.endswith("_total"):
        raise InvalidMetricError(f"{kind} {name!r}: only counters end in '_total'")
    if kind == "histogram" and name.endswith(("_count", "_sum", "_bucket")):
        raise InvalidMetricError(
            f"histogram {name!r}: '_count', '_sum', '_bucket' are reserved suffixes"
        )


def _check_labels(name: str, labels: Iterable[str]) -> tuple[str, ...]:
    if isinstance(labels, str):
        raise InvalidMetricError(
            f"{name}: labels must be a tuple of names, not the string {labels!r}"
        )
    out = tuple(labels)
    for label in out:
        if not _LABEL_RE.match(label) or label in _RESERVED_LABELS:
            raise InvalidMetricError(
                f"{name}: invalid label name {label!r} (lower_snake_case, not 'le'/'quantile', no '__' prefix)"
            )
    if len(set(out)) != len(out):
        raise InvalidMetricError(f"{name}: duplicate label names in {out}")
    return out


def _check_buckets(name: str, buckets: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(b) for b in buckets)
    if not out:
        raise InvalidMetricError(f"{name}: a histogram needs at least one bucket")
    if any(not math.isfinite(b) or b <= 0 for b in out):
        raise InvalidMetricError(
            f"{name}: buckets must be finite and > 0 (+Inf is added), got {out}"
        )
    if any(b2 <= b1 for b1, b2 in itertools.pairwise(out)):
        raise InvalidMetricError(f"{name}: buckets must be strictly increasing, got {out}")
    return out


class ComponentMetrics:
    """The metrics of one Keel component, in its own `CollectorRegistry`.

    >>> m = ComponentMetrics("events")
    >>> c = m.counter("published_total", "Events published.", labels=("stream",))
    >>> c.labels(stream="orders").inc()
    >>> b"keel_events_published_total{stream=\\"orders\\"} 1.0" in m.exposition()
    True

    `registry`: share one registry between components (an app exposing several);
    by default each instance gets a fresh private one (never the process-global).
    `max_label_values`: the default per-label bound on distinct values.
    """

    def __init__(
        self,
        component: str,
        registry: CollectorRegistry | None = None,
        *,
        max_label_values: int = DEFAULT_MAX_LABEL_VALUES,
    ) -> None:
        if not isinstance(component, str) or not _COMPONENT_RE.match(component):
            raise InvalidMetricError(
                f"component {component!r}: use lower_snake_case ([a-z][a-z0-9_]*), e.g. 'feature_worker'"
            )
        if component == "keel" or component.startswith("keel_"):
            raise InvalidMetricError(
                f"component {component!r}: drop the 'keel' prefix; it is added for you"
            )
        _check_limit(component, max_label_values)
        self._component = component
        self._prefix = f"keel_{component}_"
        self._registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._max_label_values = max_label_values
        self._lock = threading.Lock()
        self._metrics: dict[str, tuple[tuple[Any, ...], Any]] = {}
        try:
            self._overflow = Counter(
                self._prefix + "label_overflow_total",
                "Label values collapsed to __other__ by the cardinality guard.",
                labelnames=("metric", "label"),
                registry=self._registry,
            )
        except ValueError as exc:
            raise InvalidMetricError(
                f"component {component!r} is already registered in this registry; "
                "reuse its ComponentMetrics instead of creating a second one"
            ) from exc

    @property
    def component(self) -> str:
        return self._component

    @property
    def prefix(self) -> str:
        """`keel_<component>_`: the prefix of every metric name of this component."""
        return self._prefix

    @property
    def registry(self) -> CollectorRegistry:
        return self._registry

    @property
    def max_label_values(self) -> int:
        return self._max_label_values

    def full_name(self, name: str) -> str:
        """The exposed name of metric `name` (`keel_<component>_<name>`)."""
        return self._prefix + name

    def counter(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        max_label_values: int | None = None,
    ) -> GuardedCounter:
        """A counter `keel_<component>_<name>`; `name` must end in `_total`."""
        _check_name("counter", name)
        labelnames = _check_labels(name, labels)
        spec = ("counter", labelnames, documentation)
        metric: GuardedCounter = self._make(
            name,
            spec,
            max_label_values,
            lambda full: GuardedCounter(full, documentation, labelnames, registry=self._registry),
        )
        return metric

    def gauge(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        max_label_values: int | None = None,
    ) -> GuardedGauge:
        """A gauge `keel_<component>_<name>` (a value that goes up and down; base units)."""
        _check_name("gauge", name)
        labelnames = _check_labels(name, labels)
        spec = ("gauge", labelnames, documentation)
        metric: GuardedGauge = self._make(
            name,
            spec,
            max_label_values,
            lambda full: GuardedGauge(full, documentation, labelnames, registry=self._registry),
        )
        return metric

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS_SECONDS,
        max_label_values: int | None = None,
    ) -> GuardedHistogram:
        """A histogram `keel_<component>_<name>`; default buckets are `LATENCY_BUCKETS_SECONDS`."""
        _check_name("histogram", name)
        labelnames = _check_labels(name, labels)
        bounds = _check_buckets(name, buckets)
        spec = ("histogram", labelnames, documentation, bounds)
        metric: GuardedHistogram = self._make(
            name,
            spec,
            max_label_values,
            lambda full: GuardedHistogram(
                full, documentation, labelnames, registry=self._registry, buckets=bounds
            ),
        )
        return metric

    def _make(self, name: str, spec: tuple[Any, ...], limit: int | None, build: Any) -> Any:
        if limit is not None:
            _check_limit(name, limit)
        limit = self._max_label_values if limit is None else limit
        full = self._prefix + name
        with self._lock:
            existing = self._metrics.get(name)
            if existing is not None:
                if existing[0] != spec:
                    raise InvalidMetricError(
                        f"{full} is already declared with a different type, labels, help or buckets"
                    )
                return existing[1]
            try:
                metric = build(full)
            except ValueError as exc:
                raise InvalidMetricError(f"{full}: {exc}") from exc
            if metric._labelnames:
                metric._keel_guard = _LabelGuard(full, metric._labelnames, limit, self._overflow)
            self._metrics[name] = (spec, metric)
            return metric

    def distinct_label_values(self, name: str, label: str) -> int:
        """How many distinct values of `label` metric `name` has admitted (for tests/diagnosis)."""
        entry = self._metrics.get(name)
        if entry is None:
            raise InvalidMetricError(
                f"{self._prefix + name} is not declared in this ComponentMetrics"
            )
        guard: _LabelGuard | None = entry[1]._keel_guard
        if guard is None or label not in entry[1]._labelnames:
            raise InvalidMetricError(f"{self._prefix + name} has no label {label!r}")
        return guard.distinct(label)

    def exposition(self, *, openmetrics: bool = False) -> bytes:
        """This registry's metrics in the Prometheus text format (or OpenMetrics)."""
        if openmetrics:
            return bytes(generate_openmetrics(self._registry))
        return bytes(generate_latest(self._registry))


def _check_limit(what: str, limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidMetricError(f"{what}: max_label_values must be an int >= 1, got {limit!r}")
