"""keel.events: Keel's durable event bus.

At-least-once delivery with durable consumers, ack/nak/redelivery, dead letters and replay,
over an embedded SQLite log (default, no server) or NATS JetStream. Consumers get
exactly-once *effects* through `IdempotentSink`.

    from keel.events import Event, open_bus
    bus = open_bus("sqlite:///tmp/events.db")
    bus.publish("transactions", Event.create(type="txn.created", key="card-1",
                                             event_time=t, payload={"amount": 12.5}))
    consumer = bus.consumer("transactions", durable="feature-worker")
    for d in consumer.fetch(max_messages=500, timeout_s=1.0):
        handle(d.event); d.ack()
"""

from keel.events._bus import (
    Bus,
    Consumer,
    ConsumerInfo,
    DeadLetter,
    Delivery,
    PublishAck,
    StoredEvent,
    StreamInfo,
)
from keel.events._config import ConsumerConfig, StartPosition, StreamConfig
from keel.events._envelope import Event, decode_event, encode_event
from keel.events._errors import (
    ConflictError,
    DurabilityError,
    EventsError,
    InvalidConfigError,
    InvalidEventError,
    NotFoundError,
    UnavailableError,
    UnknownSchemaError,
)
from keel.events._idempotent import ApplyResult, IdempotentSink
from keel.events._metrics import EventsMetrics
from keel.events._open import default_url, open_bus
from keel.events._schemas import SchemaRegistry

__all__ = [
    "ApplyResult",
    "Bus",
    "ConflictError",
    "Consumer",
    "ConsumerConfig",
    "ConsumerInfo",
    "DeadLetter",
    "Delivery",
    "DurabilityError",
    "Event",
    "EventsError",
    "EventsMetrics",
    "IdempotentSink",
    "InvalidConfigError",
    "InvalidEventError",
    "NotFoundError",
    "PublishAck",
    "SchemaRegistry",
    "StartPosition",
    "StoredEvent",
    "StreamConfig",
    "StreamInfo",
    "UnavailableError",
    "UnknownSchemaError",
    "decode_event",
    "default_url",
    "encode_event",
    "open_bus",
]
