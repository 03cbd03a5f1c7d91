"""Errors raised by keel.events, grouped by what the caller does next."""

from __future__ import annotations


class EventsError(Exception):
    """Base class of every error keel.events raises."""


class InvalidEventError(EventsError, ValueError):
    """An event, its envelope or its payload is malformed: fix the producer or the data.

    On the consume side such events are never handed to the application: they are
    moved to the stream's dead-letter queue with this error's message as the reason.
    """


class UnknownSchemaError(InvalidEventError):
    """The event's (type, schema_version) is not registered with the SchemaRegistry in use:
    register the version (deploy a consumer that knows it), then requeue the dead letters."""


class InvalidConfigError(EventsError, ValueError):
    """A bus, stream or consumer option is invalid (bad URL, name, limit): fix the config."""


class NotFoundError(EventsError, LookupError):
    """A stream, consumer or dead letter does not exist."""


class ConflictError(EventsError):
    """The request conflicts with existing state (e.g. a durable consumer already exists with a
    different ack wait): delete and recreate it, or use the existing settings."""


class UnavailableError(EventsError):
    """The backend is unreachable or busy (broker down, database locked): retry later.
    Publishing the same event ids again is safe (publish is idempotent on id)."""


class DurabilityError(EventsError):
    """The broker's configuration cannot give the durability asked for (e.g. JetStream without
    `sync_interval: always` while `require_sync_always=True`): fix the server config."""
