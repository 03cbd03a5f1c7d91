"""Canary watch: a pure policy over serving's signals.

Signals are ``canary.failed`` events (serving's own verdict) and SLO readings (burn rate
of an error budget, latency objective...). Any ``canary.failed`` or any SLO breach of the
canary → ``rollback``; otherwise ``promote`` once the canary has run ``window`` and seen
``min_requests``; before that, ``wait``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from keel.pipelines._canonical import iso
from keel.pipelines._errors import InvalidInputError

CANARY_FAILED = "canary.failed"
SLO = "slo"


class CanaryAction(StrEnum):
    WAIT = "wait"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class CanarySignal:
    """``kind``: ``canary.failed`` or ``slo``. For ``slo``: ``name``, ``value`` and
    ``objective`` (breached when value > objective). ``version``: the model version it is
    about (signals about other versions are ignored)."""

    kind: str
    version: str
    at: datetime
    name: str = ""
    value: float | None = None
    objective: float | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in (CANARY_FAILED, SLO):
            raise InvalidInputError(
                f"canary signal kind {self.kind!r}: expected {CANARY_FAILED!r} or {SLO!r}"
            )
        if self.kind == SLO and (self.value is None or self.objective is None or not self.name):
            raise InvalidInputError("an slo signal needs name, value and objective")
        iso(self.at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": self.version,
            "at": iso(self.at),
            "name": self.name,
            "value": self.value,
            "objective": self.objective,
            "detail": dict(self.detail),
        }


@dataclass(frozen=True)
class CanaryDecision:
    action: CanaryAction
    reason: str
    evidence: tuple[Mapping[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "reason": self.reason,
            "evidence": [dict(e) for e in self.evidence],
        }


@dataclass(frozen=True)
class CanaryPolicy:
    window: timedelta = timedelta(minutes=30)
    min_requests: int = 0

    def __post_init__(self) -> None:
        if self.window < timedelta(0) or self.min_requests < 0:
            raise InvalidInputError("canary window and min_requests must be >= 0")

    def decide(
        self,
        *,
        version: str,
        started_at: datetime,
        now: datetime,
        signals: Sequence[CanarySignal],
        requests: int = 0,
    ) -> CanaryDecision:
        mine = [s for s in signals if s.version == version and s.at >= started_at]
        failed = [s for s in mine if s.kind == CANARY_FAILED]
        breaches = [
            s
            for s in mine
            if s.kind == SLO
            and s.value is not None
            and s.objective is not None
            and s.value > s.objective
        ]
        if failed or breaches:
            what = [f"canary.failed at {iso(s.at)}" for s in failed] + [
                f"SLO {s.name} = {s.value} > {s.objective}" for s in breaches
            ]
            return CanaryDecision(
                CanaryAction.ROLLBACK,
                "; ".join(what),
                tuple(s.to_dict() for s in failed + breaches),
            )
        elapsed = now - started_at
        if elapsed < self.window:
            return CanaryDecision(CanaryAction.WAIT, f"canary has run {elapsed} of {self.window}")
        if requests < self.min_requests:
            return CanaryDecision(
                CanaryAction.WAIT,
                f"canary served {requests} requests; needs {self.min_requests} before promotion",
            )
        return CanaryDecision(
            CanaryAction.PROMOTE,
            f"canary ran {elapsed} (window {self.window}) with no failure or SLO breach",
        )
