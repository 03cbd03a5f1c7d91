"""Retrain triggers and the policy that turns them into runs: pure, clock passed in.

A `Trigger` is one reason to retrain a model, with a *dedup key* that is stable across
redeliveries: a drift episode's key is keel.drift's `episode_event_id` (the same for every
window of the episode and every redelivery of its event), a schedule's is its slot, a
data-volume or label trigger's is the watermark it fired at, a manual one's the request id.

`TriggerPolicy.decide(state, trigger, now)` answers, in this order:

* ``duplicate`` — the key was seen before (whatever was decided then);
* ``coalesce`` — the model already has an active run: the trigger joins it;
* ``cooldown`` — the model's last run started less than ``cooldown`` ago (manual triggers
  bypass it unless ``manual_bypasses_cooldown`` is off);
* ``defer`` — ``max_concurrent_runs`` runs (all models) are active: try again later (the
  key is NOT remembered, so the same trigger is decided afresh);
* ``start`` — a new run.

The controller calls it inside one write transaction, so triggers arriving concurrently
are decided one after another and coalesce.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keel.drift import DriftDetected

from keel.pipelines._canonical import iso
from keel.pipelines._errors import InvalidInputError


class TriggerKind(StrEnum):
    DRIFT = "drift"
    SCHEDULE = "schedule"
    DATA_VOLUME = "data_volume"
    LABELS = "labels"
    MANUAL = "manual"


class Action(StrEnum):
    START = "start"
    COALESCE = "coalesce"
    DUPLICATE = "duplicate"
    COOLDOWN = "cooldown"
    DEFER = "defer"


@dataclass(frozen=True)
class Trigger:
    """One reason to retrain ``model``. ``key`` deduplicates; ``evidence`` is recorded in
    provenance (for drift: the whole ``drift.detected`` payload)."""

    kind: TriggerKind
    model: str
    key: str
    at: datetime
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", TriggerKind(self.kind))
        except ValueError:
            raise InvalidInputError(
                f"trigger kind {self.kind!r}: expected one of {[k.value for k in TriggerKind]}"
            ) from None
        for name in ("model", "key"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise InvalidInputError(f"trigger {name} must be a non-empty string; got {v!r}")
        iso(self.at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "model": self.model,
            "key": self.key,
            "at": iso(self.at),
            "evidence": dict(self.evidence),
        }

    # -- constructors: one per source ------------------------------------------------------
    @classmethod
    def from_drift(cls, event: DriftDetected | Mapping[str, Any], *, at: datetime) -> Trigger:
        """From a ``drift.detected`` payload (or keel.drift's `DriftDetected`): keyed by
        the episode, so every redelivery and every later window of it is a duplicate."""
        from keel.drift import (  # lazy: keel.drift loads polars
            DriftDetected,
            DriftError,
            episode_event_id,
        )

        try:
            d = event if isinstance(event, DriftDetected) else DriftDetected.from_payload(event)
        except DriftError as exc:  # translated at the boundary: callers catch ours
            raise InvalidInputError(str(exc)) from None
        return cls(
            TriggerKind.DRIFT,
            d.model,
            f"drift:{episode_event_id(d.model, d.window_start)}",
            at,
            {"drift_detected": d.to_payload(), "event_id": d.event_id},
        )

    @classmethod
    def manual(
        cls, model: str, request_id: str, *, at: datetime, who: str, why: str = ""
    ) -> Trigger:
        if not who.strip():
            raise InvalidInputError("a manual retrain needs who asked for it")
        return cls(TriggerKind.MANUAL, model, f"manual:{request_id}", at, {"who": who, "why": why})


@dataclass(frozen=True)
class SchedulePolicy:
    """Retrain every ``every``, aligned to ``anchor`` (slots are anchor + k*every)."""

    every: timedelta
    anchor: datetime = datetime(2000, 1, 1, tzinfo=UTC)

    def __post_init__(self) -> None:
        if self.every <= timedelta(0):
            raise InvalidInputError(f"schedule interval must be positive; got {self.every}")
        iso(self.anchor)

    def due(self, model: str, last_slot: datetime | None, now: datetime) -> Trigger | None:
        """The trigger for the newest slot at or before ``now``, unless it was ``last_slot``."""
        k = (now - self.anchor) // self.every
        if k < 0:
            return None
        slot = self.anchor + k * self.every
        if last_slot is not None and slot <= last_slot:
            return None
        return Trigger(
            TriggerKind.SCHEDULE, model, f"schedule:{iso(slot)}", now, {"slot": iso(slot)}
        )


@dataclass(frozen=True)
class CountPolicy:
    """Fire when ``count`` new rows (data volume) or labels arrived since ``watermark``.

    The trigger is keyed by the watermark it consumed, so re-deciding the same count after
    a restart is a duplicate; the next trigger needs ``min_new`` more past the new mark.
    """

    kind: TriggerKind
    min_new: int

    def __post_init__(self) -> None:
        if self.kind not in (TriggerKind.DATA_VOLUME, TriggerKind.LABELS):
            raise InvalidInputError("CountPolicy is for data_volume or labels triggers")
        if self.min_new < 1:
            raise InvalidInputError(f"min_new must be >= 1; got {self.min_new}")

    def fires(self, model: str, watermark: int, count: int, now: datetime) -> Trigger | None:
        if count < watermark:
            raise InvalidInputError(
                f"{self.kind.value} count {count} is below the watermark {watermark}: counts only grow"
            )
        if count - watermark < self.min_new:
            return None
        return Trigger(
            self.kind,
            model,
            f"{self.kind.value}:{watermark}",
            now,
            {"watermark": watermark, "count": count, "new": count - watermark},
        )


@dataclass(frozen=True)
class ActiveRun:
    run_id: str
    model: str
    started_at: datetime


@dataclass(frozen=True)
class TriggerState:
    """What the policy needs to know, read by the controller from its store."""

    seen_keys: frozenset[str] = frozenset()
    active: tuple[ActiveRun, ...] = ()
    last_started: Mapping[str, datetime] = field(default_factory=dict)  # model -> time


@dataclass(frozen=True)
class TriggerDecision:
    action: Action
    reason: str
    run_id: str | None = None  # the run joined (coalesce)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action.value, "reason": self.reason, "run_id": self.run_id}


@dataclass(frozen=True)
class TriggerPolicy:
    cooldown: timedelta = timedelta(hours=6)
    max_concurrent_runs: int = 1
    manual_bypasses_cooldown: bool = True

    def __post_init__(self) -> None:
        if self.cooldown < timedelta(0):
            raise InvalidInputError(f"cooldown must be >= 0; got {self.cooldown}")
        if self.max_concurrent_runs < 1:
            raise InvalidInputError(
                f"max_concurrent_runs must be >= 1; got {self.max_concurrent_runs}"
            )

    def decide(self, state: TriggerState, trigger: Trigger, now: datetime) -> TriggerDecision:
        iso(now)
        if trigger.key in state.seen_keys:
            return TriggerDecision(Action.DUPLICATE, f"trigger {trigger.key} was already handled")
        mine = [r for r in state.active if r.model == trigger.model]
        if mine:
            return TriggerDecision(
                Action.COALESCE,
                f"{trigger.model} already has active run {mine[0].run_id}; the trigger joins it",
                mine[0].run_id,
            )
        last = state.last_started.get(trigger.model)
        bypass = trigger.kind is TriggerKind.MANUAL and self.manual_bypasses_cooldown
        if last is not None and not bypass and now - last < self.cooldown:
            return TriggerDecision(
                Action.COOLDOWN,
                f"{trigger.model}'s last run started {iso(last)}, within the cooldown of {self.cooldown}",
            )
        if len(state.active) >= self.max_concurrent_runs:
            return TriggerDecision(
                Action.DEFER,
                f"{len(state.active)} run(s) active, the limit is {self.max_concurrent_runs}; retry later",
            )
        return TriggerDecision(Action.START, f"{trigger.kind.value} trigger starts a run")
