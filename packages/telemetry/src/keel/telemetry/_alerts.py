"""Alerts that are not error budgets: something happened, or a gauge crossed a line.

SLOs (`_slo`) page on a sustained burn of an error budget. Some conditions are events
that deserve a person's attention each time — a training job failed, a promotion gate
refused a model, a canary was rolled back — or states that are simply wrong — the
provenance chain does not verify, a retrain run has been unfinished for hours. Two specs
say those, over the same metric vocabulary, and render like the SLO alerts (labels
`severity`, `team`; annotations `summary`, `description`, `runbook_url`) with a runbook
each:

- `CounterAlert`: fires while `sum by (group) (increase(<counter>{matchers}[window])) > 0`,
  i.e. for `window` after each occurrence, then resolves by itself;
- `GaugeAlert`: fires while `max|min by (group) (<gauge>{matchers}) <op> <threshold>` has
  held for `for_`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Literal

from keel.telemetry._errors import InvalidSLOError
from keel.telemetry._slo import parse_duration

__all__ = ["AlertSpec", "CounterAlert", "GaugeAlert"]

_ALERT_RE = re.compile(r"^Keel[A-Z][A-Za-z0-9]*$")
_METRIC_RE = re.compile(r"^keel_[a-z0-9_]+$")
_LABEL_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
_MATCHER = r'[a-zA-Z_][a-zA-Z0-9_]*\s*(?:=|!=|=~|!~)\s*"[^"\\]*"'
_MATCHERS_RE = re.compile(rf"^(?:{_MATCHER})(?:\s*,\s*{_MATCHER})*$")

Severity = Literal["critical", "warning"]


@dataclass(frozen=True)
class AlertSpec:
    """What every non-SLO alert says: its name (`Keel...`), severity, team, one-line
    summary, what it means, and the runbook's diagnosis and mitigation steps."""

    name: str
    summary: str
    description: str
    metric: str
    severity: Severity = "warning"
    matchers: str = ""
    group_by: tuple[str, ...] = ()
    team: str = "ml-platform"
    diagnose: tuple[str, ...] = ()
    mitigate: tuple[str, ...] = ()

    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if not _ALERT_RE.match(self.name):
            raise InvalidSLOError(f"alert name {self.name!r}: CamelCase starting with 'Keel'")
        if not _METRIC_RE.match(self.metric):
            raise InvalidSLOError(f"alert {self.name}: metric {self.metric!r} is not keel_<...>")
        if self.matchers and not _MATCHERS_RE.match(self.matchers):
            raise InvalidSLOError(
                f'alert {self.name}: matchers {self.matchers!r}: write label="value", ...'
            )
        bad = [g for g in self.group_by if not _LABEL_RE.match(g)]
        if bad:
            raise InvalidSLOError(f"alert {self.name}: group_by labels {bad} are not label names")
        if self.severity not in ("critical", "warning"):
            raise InvalidSLOError(f"alert {self.name}: severity must be critical or warning")
        if not self.summary.strip() or not self.description.strip():
            raise InvalidSLOError(f"alert {self.name}: summary and description are required")
        if not self.diagnose or not self.mitigate:
            raise InvalidSLOError(f"alert {self.name}: a runbook needs diagnose and mitigate steps")

    @property
    def selector(self) -> str:
        return f"{self.metric}{{{self.matchers}}}" if self.matchers else self.metric

    def _by(self) -> str:
        return f" by ({', '.join(self.group_by)})" if self.group_by else ""

    def expr(self) -> str:
        raise NotImplementedError

    @property
    def for_duration(self) -> str | None:
        return None

    def condition_text(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class CounterAlert(AlertSpec):
    """Fires for `window` after `metric{matchers}` (a counter) increases."""

    window: str = "1h"
    kind: ClassVar[str] = "counter"

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_duration(self.window)
        if not self.metric.endswith("_total"):
            raise InvalidSLOError(f"alert {self.name}: {self.metric} is not a counter (_total)")

    def expr(self) -> str:
        return f"sum{self._by()} (increase({self.selector}[{self.window}])) > 0"

    def condition_text(self) -> str:
        return f"`{self.selector}` increased in the last {self.window}"


@dataclass(frozen=True)
class GaugeAlert(AlertSpec):
    """Fires once `metric{matchers}` (a gauge) has been `op` `threshold` for `for_`."""

    op: Literal[">", "<"] = ">"
    threshold: float = 0.0
    for_: str = "5m"
    kind: ClassVar[str] = "gauge"

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_duration(self.for_)
        if self.op not in (">", "<"):
            raise InvalidSLOError(f"alert {self.name}: op must be '>' or '<'")

    def expr(self) -> str:
        agg = "max" if self.op == ">" else "min"
        return f"{agg}{self._by()} ({self.selector}) {self.op} {self.threshold:g}"

    @property
    def for_duration(self) -> str | None:
        return self.for_

    def condition_text(self) -> str:
        word = "above" if self.op == ">" else "below"
        return f"`{self.selector}` has been {word} {self.threshold:g} for {self.for_}"
