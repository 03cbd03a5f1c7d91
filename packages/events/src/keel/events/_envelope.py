"""The event envelope and its wire codec (msgspec MessagePack, strict).

The envelope is encoded as a tagged MessagePack array (`["k1", id, type, ...]`): compact,
fast, and versioned by its tag, so a future envelope format can be added as a new tagged
struct without breaking readers of the old one. Decoding is strict: wrong types, missing
fields, naive datetimes or an unknown envelope tag raise `InvalidEventError`.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any, TypeVar

import msgspec

from keel.events._errors import InvalidEventError

T = TypeVar("T")

_NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
_AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
_Version = Annotated[int, msgspec.Meta(ge=1)]


class Event(
    msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag="k1", tag_field="envelope"
):
    """One immutable event.

    Attributes:
        id: unique id; the bus dedupes publishes on it and idempotent consumers key effects on it.
        type: what happened, e.g. "txn.created".
        key: the entity / partition key (ordering is documented per key, see the README).
        event_time: when it happened (tz-aware), as opposed to when it was published.
        payload: the body as bytes (JSON when created from a dict or a msgspec Struct).
        schema_version: version of the payload schema for this `type` (>= 1).
        headers: free-form string metadata (trace ids, producer name, ...).
        publish_time: set by the bus when the event is stored; None before publishing.
    """

    id: _NonEmpty
    type: _NonEmpty
    key: Annotated[str, msgspec.Meta(max_length=1024)]
    event_time: _AwareDatetime
    payload: bytes
    schema_version: _Version = 1
    headers: dict[str, str] = {}
    publish_time: _AwareDatetime | None = None

    @classmethod
    def create(
        cls,
        *,
        type: str,
        key: str,
        event_time: datetime,
        payload: Any,
        schema_version: int = 1,
        id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Event:
        """Build a validated event.

        `payload` may be bytes (stored as is), or a dict / list / msgspec Struct (encoded as
        JSON). `id` defaults to a random UUID (hex); pass your own stable id (e.g. the source
        system's) so that re-publishing after a producer crash is deduplicated.
        """
        if not isinstance(type, str) or not type:
            raise InvalidEventError(f"event type must be a non-empty string, got {type!r}")
        if not isinstance(key, str):
            raise InvalidEventError(f"event key must be a string, got {key!r}")
        if not isinstance(event_time, datetime) or event_time.tzinfo is None:
            raise InvalidEventError(
                f"event_time must be a timezone-aware datetime, got {event_time!r}"
            )
        if (
            isinstance(schema_version, bool)
            or not isinstance(schema_version, int)
            or schema_version < 1
        ):
            raise InvalidEventError(f"schema_version must be an int >= 1, got {schema_version!r}")
        if id is None:
            id = uuid.uuid4().hex
        elif not isinstance(id, str) or not id or len(id) > 512:
            raise InvalidEventError(
                f"event id must be a non-empty string (<= 512 chars), got {id!r}"
            )
        hdrs: dict[str, str] = {}
        if headers:
            for k, v in headers.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise InvalidEventError(f"headers must map str to str, got {k!r}: {v!r}")
                hdrs[k] = v
        return cls(
            id=id,
            type=type,
            key=key,
            event_time=event_time,
            payload=_payload_bytes(payload),
            schema_version=schema_version,
            headers=hdrs,
        )

    def json(self) -> Any:
        """The payload decoded as JSON (usually a dict); InvalidEventError if it is not JSON."""
        try:
            return _JSON_DECODER.decode(self.payload)
        except msgspec.DecodeError as exc:
            raise InvalidEventError(f"event {self.id}: payload is not valid JSON: {exc}") from exc

    def decode(self, type_: builtins.type[T]) -> T:
        """The JSON payload decoded strictly into `type_` (a msgspec Struct, dataclass, ...)."""
        try:
            return msgspec.json.decode(self.payload, type=type_)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidEventError(
                f"event {self.id} ({self.type} v{self.schema_version}): payload does not match "
                f"{getattr(type_, '__name__', type_)}: {exc}"
            ) from exc


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    if isinstance(payload, dict | list | msgspec.Struct):
        try:
            return _JSON_ENCODER.encode(payload)
        except (TypeError, msgspec.EncodeError) as exc:
            raise InvalidEventError(f"payload cannot be encoded as JSON: {exc}") from exc
    raise InvalidEventError(
        f"payload must be bytes, a dict, a list or a msgspec Struct, got {type(payload).__name__}"
    )


_JSON_ENCODER = msgspec.json.Encoder()
_JSON_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Event)


def encode_event(event: Event) -> bytes:
    """The wire form of `event` (tagged MessagePack array)."""
    return _ENCODER.encode(event)


def decode_event(data: bytes) -> Event:
    """Strictly decode the wire form; InvalidEventError naming the problem if malformed."""
    try:
        return _DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidEventError(f"malformed event envelope: {exc}") from exc


def decode_events(datas: Iterable[bytes]) -> list[Event]:
    """`decode_event` over a batch in one call (the consume hot path); InvalidEventError if
    any of them is malformed (callers then fall back to one-by-one to find which)."""
    try:
        return list(map(_DECODER.decode, datas))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidEventError(f"malformed event envelope: {exc}") from exc
