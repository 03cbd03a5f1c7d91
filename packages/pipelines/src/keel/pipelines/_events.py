"""Bus events → pipeline inputs, for the retrain-controller's consumer.

The controller reads two contracts: keel.drift's ``drift.detected`` (its `DriftDetected`
payload; the trigger is keyed by the episode, not the event id, so a re-published episode
with a new event id is still one run) and serving's canary signals, read as:

* ``canary.failed``: ``{"version": "<model version>", ...detail}``;
* ``slo.reading`` (any SLO sample): ``{"version", "name", "value", "objective"}``.

``event`` is anything with ``type``, ``event_time`` and ``json()`` (``keel.events.Event``
satisfies it).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from keel.pipelines._canary import CANARY_FAILED, SLO, CanarySignal
from keel.pipelines._errors import InvalidInputError
from keel.pipelines._triggers import Trigger

DRIFT_DETECTED = "drift.detected"
SLO_READING = "slo.reading"


class EventLike(Protocol):
    @property
    def type(self) -> str: ...

    @property
    def event_time(self) -> datetime: ...

    def json(self) -> Any: ...


def _payload(event: EventLike) -> Mapping[str, Any]:
    try:
        body = event.json()
    except ValueError:
        raise InvalidInputError(f"{event.type} event payload is not JSON") from None
    if not isinstance(body, Mapping):
        raise InvalidInputError(f"{event.type} event payload must be a JSON object")
    return body


def trigger_from_event(event: EventLike, *, at: datetime) -> Trigger:
    """The trigger of a ``drift.detected`` event; InvalidInputError for other types or a
    malformed payload (dead-letter it)."""
    if event.type != DRIFT_DETECTED:
        raise InvalidInputError(
            f"event type {event.type!r} is not a retrain trigger (want {DRIFT_DETECTED!r})"
        )
    return Trigger.from_drift(_payload(event), at=at)


def signal_from_event(event: EventLike) -> CanarySignal:
    """A `CanarySignal` from a ``canary.failed`` or ``slo.reading`` event."""
    body = _payload(event)
    version = body.get("version")
    if not isinstance(version, str | int) or isinstance(version, bool) or str(version) == "":
        raise InvalidInputError(f"{event.type} payload needs 'version' (the model version)")
    if event.type == CANARY_FAILED:
        detail = {k: v for k, v in body.items() if k != "version"}
        return CanarySignal(CANARY_FAILED, str(version), event.event_time, detail=detail)
    if event.type == SLO_READING:
        try:
            return CanarySignal(
                SLO,
                str(version),
                event.event_time,
                name=str(body["name"]),
                value=float(body["value"]),
                objective=float(body["objective"]),
            )
        except KeyError as exc:
            raise InvalidInputError(f"slo.reading payload lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError):
            raise InvalidInputError("slo.reading value and objective must be numbers") from None
    raise InvalidInputError(
        f"event type {event.type!r} is not a canary signal ({CANARY_FAILED!r} or {SLO_READING!r})"
    )
