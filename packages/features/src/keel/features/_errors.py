"""Errors raised by keel.features, grouped by what the caller does next."""

from __future__ import annotations


class FeaturesError(Exception):
    """Base class of every error keel.features raises."""


class InvalidDefinitionError(FeaturesError, ValueError):
    """A feature view / entity / aggregation definition is invalid: fix the declaration."""


class InvalidInputError(FeaturesError, ValueError):
    """Input data (a frame, an event, a timestamp) is unusable: fix the data or the call."""


class NotFoundError(FeaturesError, LookupError):
    """A named feature view, entity or dataset does not exist."""


class ConflictError(FeaturesError):
    """Two definitions claim the same name with different content."""


class UnavailableError(FeaturesError):
    """A backing service (Redis, SQLite file, Parquet path) failed; retrying may help."""
