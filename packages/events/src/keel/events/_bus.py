"""The backend-neutral bus API: `Bus`, `Consumer`, `Delivery` and the records they return.

Delivery semantics (both backends):

* At least once. An event is stored once per id (publish is idempotent on `Event.id` within
  the stream's duplicate window) and delivered to every durable consumer until acked.
* A delivery not acked within `ack_wait_s` is redelivered; `nak(delay_s)` redelivers after
  the delay (default: the consumer's backoff for that delivery count).
* An event is handed to the application at most `max_deliver` times; the next attempt moves
  it to the stream's dead-letter queue (reason "max_deliver"). Malformed envelopes, unknown
  schema versions and payloads failing the consumer's SchemaRegistry go to the dead-letter
  queue on their first delivery attempt, never to the application and never dropped.
* Ordering: a stream has one total order (its sequence). First deliveries of a consumer come
  in sequence order, hence per key in publish order (per producer; concurrent producers are
  ordered by commit). Redeliveries (ack timeout, nak) come later than events after them, and
  several processes sharing one durable consumer process events concurrently — so per-key
  order holds across deliveries only with one process per durable that handles each fetched
  batch before the next fetch and does not nak. Idempotent consumers with event-time logic
  do not depend on it.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat
from operator import attrgetter
from typing import TYPE_CHECKING

import msgspec

from keel.events._config import ConsumerConfig, StartPosition
from keel.events._envelope import Event, decode_event
from keel.events._errors import InvalidEventError

if TYPE_CHECKING:
    from keel.events._schemas import SchemaRegistry


class PublishAck(msgspec.Struct, frozen=True, gc=False):
    """The outcome of publishing one event: its stream sequence, and whether it was a
    duplicate of an already-stored id (then `seq` is the stored event's, where known, else 0).

    (A msgspec Struct, not a dataclass: a batch publish builds one per event, and a Struct is
    created in C — a frozen dataclass's __init__ cost about 1 us per event.)"""

    stream: str
    seq: int
    duplicate: bool


@dataclass(frozen=True)
class StoredEvent:
    """An event read back by `Bus.replay`: its stream sequence and wire bytes (decoded lazily
    by `.event`, which raises InvalidEventError if the stored bytes are malformed)."""

    seq: int
    data: bytes

    @property
    def event(self) -> Event:
        return decode_event(self.data)


@dataclass(frozen=True)
class StreamInfo:
    name: str
    first_seq: int
    last_seq: int
    count: int


@dataclass(frozen=True)
class ConsumerInfo:
    """A durable consumer's position. `lag` = events not yet delivered; `ack_pending` =
    delivered, not yet acked."""

    stream: str
    durable: str
    delivered_seq: int
    lag: int
    ack_pending: int


@dataclass(frozen=True)
class DeadLetter:
    """An event the consumer `durable` gave up on (or could not read), with why."""

    id: str
    stream: str
    durable: str
    seq: int
    event_id: str | None
    reason: str
    deliveries: int
    dead_time: datetime
    data: bytes

    @property
    def event(self) -> Event:
        return decode_event(self.data)


class Delivery(msgspec.Struct, eq=False, gc=False):
    """One delivery of an event to a consumer; settle it exactly once with ack/nak/term.

    Attributes: `event`, `seq` (stream sequence), `delivery_count` (1 on first delivery).
    (A msgspec Struct compared by identity: a fetch builds one per event, in C. It is not
    tracked by the cyclic GC — nothing it references can refer back to it — so a large fetch
    does not trigger extra garbage collections.)"""

    _consumer: Consumer
    event: Event
    seq: int
    delivery_count: int
    _token: object

    def ack(self) -> None:
        """Done: the event will not be delivered to this consumer again."""
        self._consumer._ack([self])

    def nak(self, delay_s: float | None = None) -> None:
        """Failed: redeliver after `delay_s` (default: the consumer's backoff)."""
        if delay_s is None:
            delay_s = self._consumer.config.backoff_for(self.delivery_count)
        self._consumer._nak(self, max(0.0, float(delay_s)))

    def term(self, reason: str) -> None:
        """Give up now: move the event to the dead-letter queue with `reason`."""
        self._consumer._term(self, reason)

    def __repr__(self) -> str:
        return (
            f"Delivery(seq={self.seq}, id={self.event.id!r}, delivery_count={self.delivery_count})"
        )


class Consumer(abc.ABC):
    """A durable named consumer of one stream. Several processes (or threads, each with its own
    Consumer object) using the same durable name share the work: each event goes to one of them."""

    def __init__(
        self, stream: str, durable: str, config: ConsumerConfig, instance: str = ""
    ) -> None:
        self.stream = stream
        self.durable = durable
        self.config = config
        self.instance = instance
        #: In-flight events of a crashed earlier run of `instance` handed back at attach.
        self.reclaimed = 0

    @abc.abstractmethod
    def fetch(self, max_messages: int = 500, timeout_s: float = 1.0) -> list[Delivery]:
        """Up to `max_messages` deliveries, waiting at most `timeout_s` for the first one."""

    def ack_all(self, deliveries: Sequence[Delivery]) -> None:
        """Ack many deliveries at once (one transaction / one flush)."""
        if deliveries:
            self._ack(deliveries)

    @abc.abstractmethod
    def info(self) -> ConsumerInfo:
        """This consumer's position, lag and in-flight count."""

    @abc.abstractmethod
    def _ack(self, deliveries: Sequence[Delivery]) -> None: ...

    @abc.abstractmethod
    def _nak(self, delivery: Delivery, delay_s: float) -> None: ...

    @abc.abstractmethod
    def _term(self, delivery: Delivery, reason: str) -> None: ...


class Bus(abc.ABC):
    """A durable event log with durable consumers. Use `open_bus(url)` to get one.

    Thread-safe; use one per process (or per thread) and `close()` it (or use `with`).
    """

    url: str

    @abc.abstractmethod
    def publish(self, stream: str, event: Event) -> PublishAck:
        """Store one event (idempotent on `event.id`); returns once it is durable."""

    @abc.abstractmethod
    def publish_batch(self, stream: str, events: Sequence[Event]) -> list[PublishAck]:
        """Store many events (each idempotent on its id); returns once all are durable."""

    @abc.abstractmethod
    def publish_raw(self, stream: str, data: bytes, msg_id: str) -> PublishAck:
        """Store pre-encoded bytes unvalidated (bridges, requeue, tests). Consumers validate
        them on delivery: malformed bytes go to the dead-letter queue."""

    @abc.abstractmethod
    def consumer(
        self,
        stream: str,
        durable: str,
        *,
        ack_wait_s: float = 30.0,
        max_deliver: int = 5,
        backoff_s: tuple[float, ...] = (1.0, 5.0, 30.0),
        start: StartPosition | None = None,
        schemas: SchemaRegistry | None = None,
        instance: str | None = None,
    ) -> Consumer:
        """Create (idempotently) or attach to the durable consumer `durable` of `stream`.

        `start` applies only when the consumer is created. `schemas` (a SchemaRegistry)
        routes unknown schema versions / mismatching payloads to the dead-letter queue.
        `instance` names this process among those sharing the durable (stable across its
        restarts, unique among live ones): attaching hands the instance's own in-flight
        deliveries — left unsettled by a crash — back to it at once, ahead of newer events,
        instead of after their ack wait (`Consumer.reclaimed` says how many). A restarted
        single consumer thus sees events in the order an uninterrupted one would.
        ConflictError if the durable exists with a different ack wait.
        """

    @abc.abstractmethod
    def replay(
        self, stream: str, start: StartPosition | None = None, max_messages: int | None = None
    ) -> Iterator[StoredEvent]:
        """Read stored events from a position or a time, without any consumer state."""

    @abc.abstractmethod
    def stream_info(self, stream: str) -> StreamInfo: ...

    @abc.abstractmethod
    def streams(self) -> list[str]:
        """Names of the event streams (dead-letter queues excluded)."""

    @abc.abstractmethod
    def consumers(self, stream: str) -> list[ConsumerInfo]: ...

    @abc.abstractmethod
    def delete_consumer(self, stream: str, durable: str) -> None: ...

    @abc.abstractmethod
    def delete_stream(self, stream: str) -> None:
        """Delete a stream, its consumers and its dead letters."""

    @abc.abstractmethod
    def dead_letters(self, stream: str, limit: int = 100) -> list[DeadLetter]:
        """The stream's dead letters, oldest first."""

    @abc.abstractmethod
    def requeue_dead_letters(self, stream: str, ids: Sequence[str] | None = None) -> int:
        """Publish dead letters (all, or those with `ids`) again to `stream` and remove them
        from the dead-letter queue; returns how many. The event keeps its id, so consumers
        that already applied it skip it through their idempotency store."""

    @abc.abstractmethod
    def compact(self, stream: str | None = None) -> int:
        """Apply retention limits now; returns events removed (NATS: the server does it, 0)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_publishable(events: Sequence[object], schemas: SchemaRegistry | None) -> None:
    """InvalidEventError unless every item is an Event; then `schemas.check` each (if given).
    (The type check runs in C: it is on the publish hot path.)"""
    if not all(map(isinstance, events, repeat(Event))):
        bad = next(e for e in events if not isinstance(e, Event))
        raise InvalidEventError(f"publish expects Event objects, got {type(bad).__name__}")
    if schemas is not None:
        check = schemas.check
        for ev in events:
            check(ev)  # type: ignore[arg-type]  # every item is an Event (checked above)


#: The largest encoded event either backend stores (NATS' default max_payload is 1 MiB; the
#: rest is headroom for headers). The same on both backends, so code tested on the embedded
#: bus does not fail on NATS.
DEFAULT_MAX_EVENT_BYTES = 1_000_000


def check_sizes(sizes: Sequence[int], ids: Sequence[str], limit: int) -> None:
    """InvalidEventError naming the event and the limit if an encoded event is too large."""
    if sizes and max(sizes) > limit:
        i = next(i for i, n in enumerate(sizes) if n > limit)
        raise InvalidEventError(
            f"event {ids[i][:64]!r} is {sizes[i]} bytes encoded, over the bus's payload limit "
            f"of {limit} bytes (max_event_bytes): store large data elsewhere and publish a "
            "reference to it"
        )


_DUPLICATE = attrgetter("duplicate")


def count_duplicates(acks: Sequence[PublishAck]) -> int:
    return sum(map(_DUPLICATE, acks))
