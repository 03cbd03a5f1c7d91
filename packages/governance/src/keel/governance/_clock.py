"""The clock seam: every time keel.governance records comes from a `Clock`.

Library code never calls ``datetime.now()`` directly; it takes a clock (a zero-argument
callable returning an aware UTC datetime) with `system_clock` as the default, so tests pass
a fixed or stepping clock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from keel.governance._errors import InvalidInputError

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The wall clock, in UTC. The only place keel.governance reads the system time."""
    return datetime.now(UTC)


def iso_utc(at: datetime) -> str:
    """``2026-11-28T21:52:00.123456Z``: one textual form for every recorded time."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInputError(f"time {at!r} has no time zone; pass an aware datetime (UTC)")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso_utc(text: str) -> datetime:
    """Inverse of `iso_utc` (also accepts any ISO-8601 string with an offset)."""
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"not an ISO-8601 time: {text!r}") from exc
    if at.tzinfo is None:
        raise InvalidInputError(f"time {text!r} has no time zone")
    return at.astimezone(UTC)
