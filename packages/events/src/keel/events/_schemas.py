"""Which (event type, schema version) pairs a producer or consumer accepts."""

from __future__ import annotations

from typing import Any

import msgspec

from keel.events._envelope import Event
from keel.events._errors import InvalidConfigError, InvalidEventError, UnknownSchemaError


class SchemaRegistry:
    """Known payload schemas, keyed by (event type, schema version).

    `register(type, version, payload_type)` declares a version; `payload_type` is anything
    msgspec can decode JSON into (a Struct, a dataclass, `dict[str, float]`...) or None to
    accept any well-formed JSON. `check(event)` raises `UnknownSchemaError` for a registered
    type with an unregistered version (and, when `allow_unregistered_types=False`, for any
    unregistered type) and `InvalidEventError` when the payload does not match.

    Give a registry to `open_bus(..., schemas=...)` (publish rejects bad events with the error)
    or to `bus.consumer(..., schemas=...)` (bad events go to the dead-letter queue, never to
    the handler and never dropped).
    """

    def __init__(self, *, allow_unregistered_types: bool = True) -> None:
        self._allow_unregistered = allow_unregistered_types
        self._versions: dict[str, dict[int, msgspec.json.Decoder[Any] | None]] = {}

    def register(self, type: str, version: int, payload_type: Any = None) -> SchemaRegistry:
        """Declare `version` of event `type`; returns self so calls can be chained."""
        if not isinstance(type, str) or not type:
            raise InvalidConfigError(f"event type must be a non-empty string, got {type!r}")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidConfigError(f"schema version must be an int >= 1, got {version!r}")
        decoder = None if payload_type is None else msgspec.json.Decoder(payload_type)
        self._versions.setdefault(type, {})[version] = decoder
        return self

    def versions(self, type: str) -> list[int]:
        """The registered versions of `type`, ascending (empty if unknown)."""
        return sorted(self._versions.get(type, {}))

    def check(self, event: Event) -> None:
        """Raise if `event` has an unknown schema or a payload not matching its schema."""
        known = self._versions.get(event.type)
        if known is None:
            if self._allow_unregistered:
                return
            raise UnknownSchemaError(
                f"event {event.id}: type {event.type!r} is not registered "
                f"(known types: {sorted(self._versions)})"
            )
        if event.schema_version not in known:
            raise UnknownSchemaError(
                f"event {event.id}: unknown schema version {event.schema_version} for type "
                f"{event.type!r} (known: {sorted(known)})"
            )
        decoder = known[event.schema_version]
        if decoder is None:
            return
        try:
            decoder.decode(event.payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidEventError(
                f"event {event.id}: payload does not match schema {event.type!r} "
                f"v{event.schema_version}: {exc}"
            ) from exc
