"""Validated configuration values for streams and consumers (frozen dataclasses)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from keel.events._errors import InvalidConfigError

if TYPE_CHECKING:
    from keel.events._schemas import SchemaRegistry

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DLQ_SUFFIX = "__dlq"


def check_name(what: str, name: str) -> str:
    """Stream and consumer names: 1-64 of [A-Za-z0-9_-] (valid for SQLite and JetStream)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidConfigError(
            f"{what} name {name!r} is invalid: use 1-64 characters from [A-Za-z0-9_-]"
        )
    return name


def check_stream_name(name: str) -> str:
    check_name("stream", name)
    if name.endswith(DLQ_SUFFIX):
        raise InvalidConfigError(
            f"stream name {name!r} is reserved: names ending in {DLQ_SUFFIX!r} hold dead letters"
        )
    return name


@dataclass(frozen=True)
class StartPosition:
    """Where a new durable consumer (or a replay) starts.

    Use the constructors: `StartPosition.all()` (first retained event, the default),
    `StartPosition.new()` (only events published after creation), `StartPosition.at_seq(n)`
    (stream sequence n, inclusive), `StartPosition.at_time(t)` (first event published at or
    after the tz-aware time t).
    """

    kind: Literal["all", "new", "seq", "time"] = "all"
    seq: int | None = None
    time: datetime | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("all", "new", "seq", "time"):
            raise InvalidConfigError(f"start position kind {self.kind!r} is invalid")
        if self.kind == "seq" and (
            isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 1
        ):
            raise InvalidConfigError(f"start sequence must be an int >= 1, got {self.seq!r}")
        if self.kind == "time" and (
            not isinstance(self.time, datetime) or self.time.tzinfo is None
        ):
            raise InvalidConfigError(f"start time must be a tz-aware datetime, got {self.time!r}")

    @classmethod
    def all(cls) -> StartPosition:
        return cls("all")

    @classmethod
    def new(cls) -> StartPosition:
        return cls("new")

    @classmethod
    def at_seq(cls, seq: int) -> StartPosition:
        return cls("seq", seq=seq)

    @classmethod
    def at_time(cls, time: datetime) -> StartPosition:
        return cls("time", time=time)


@dataclass(frozen=True)
class ConsumerConfig:
    """How a durable consumer delivers.

    ack_wait_s: a delivery not acked (or nak'ed) within this time is redelivered.
    max_deliver: an event is handed to the application at most this many times; the next
        delivery attempt moves it to the dead-letter queue instead.
    backoff_s: delay used by `Delivery.nak()` without an explicit delay, indexed by
        delivery_count - 1 (the last value repeats).
    start: where the consumer starts when it is first created (ignored afterwards).
    """

    ack_wait_s: float = 30.0
    max_deliver: int = 5
    backoff_s: tuple[float, ...] = (1.0, 5.0, 30.0)
    start: StartPosition = field(default_factory=StartPosition.all)

    def __post_init__(self) -> None:
        if not (0.05 <= float(self.ack_wait_s) <= 86_400):
            raise InvalidConfigError(f"ack_wait_s must be in [0.05, 86400], got {self.ack_wait_s}")
        if isinstance(self.max_deliver, bool) or not (1 <= self.max_deliver <= 1000):
            raise InvalidConfigError(f"max_deliver must be in [1, 1000], got {self.max_deliver}")
        if not self.backoff_s or any(not (0 <= b <= 86_400) for b in self.backoff_s):
            raise InvalidConfigError(
                f"backoff_s must be a non-empty tuple of delays in [0, 86400], got {self.backoff_s}"
            )

    def backoff_for(self, delivery_count: int) -> float:
        """The nak delay after the `delivery_count`-th delivery (pure)."""
        i = max(0, min(delivery_count - 1, len(self.backoff_s) - 1))
        return float(self.backoff_s[i])


@dataclass(frozen=True)
class StreamConfig:
    """Stream limits (applied when a stream is first created by a publish or a consumer).

    max_age_s: events older than this are removed (None: keep by age forever).
    max_events: at most this many events are kept, oldest removed first (None: no limit).
    duplicate_window_s: publishes of an already-seen id within this window are ignored.
        NATS: the stream's duplicate window. Embedded: ids are remembered as long as the event
        is retained, and at least this long.
    """

    max_age_s: float | None = 7 * 86_400.0
    max_events: int | None = None
    duplicate_window_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_age_s is not None and self.max_age_s <= 0:
            raise InvalidConfigError(f"max_age_s must be > 0 or None, got {self.max_age_s}")
        if self.max_events is not None and self.max_events < 1:
            raise InvalidConfigError(f"max_events must be >= 1 or None, got {self.max_events}")
        if not (0 < self.duplicate_window_s <= 30 * 86_400):
            raise InvalidConfigError(
                f"duplicate_window_s must be in (0, 30 days], got {self.duplicate_window_s}"
            )
        if self.max_age_s is not None and self.duplicate_window_s > self.max_age_s:
            raise InvalidConfigError(
                f"duplicate_window_s ({self.duplicate_window_s}) must not exceed max_age_s "
                f"({self.max_age_s})"
            )


def consumer_config(
    stream: str,
    durable: str,
    *,
    ack_wait_s: float,
    max_deliver: int,
    backoff_s: tuple[float, ...],
    start: StartPosition | None,
    schemas: SchemaRegistry | None,
) -> ConsumerConfig:
    """The argument checks every backend's `Bus.consumer` shares: names, schema registry
    type, and the validated `ConsumerConfig`."""
    from keel.events._schemas import SchemaRegistry

    check_stream_name(stream)
    check_name("consumer", durable)
    if schemas is not None and not isinstance(schemas, SchemaRegistry):
        raise InvalidConfigError("schemas must be a keel.events.SchemaRegistry")
    return ConsumerConfig(
        ack_wait_s=ack_wait_s,
        max_deliver=max_deliver,
        backoff_s=tuple(backoff_s),
        start=start or StartPosition.all(),
    )


def redact_url(url: str) -> str:
    """`url` with any password in it replaced by `***` (for messages and logs)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None and "@" not in parts.netloc:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if user else f"***@{host}"))
