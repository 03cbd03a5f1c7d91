"""keel.serving's errors, grouped by what the caller does next (each maps to one HTTP status)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ServingError(Exception):
    """Base of every keel.serving error. ``status`` is the HTTP status the server answers."""

    status: int = 500
    code: str = "internal"

    def to_json(self) -> dict[str, Any]:
        return {"error": str(self), "code": self.code}


class InvalidInputError(ServingError, ValueError):
    """The request is malformed or fails the model's input schema (422). ``errors`` names
    every bad field: ``[{"field": ..., "error": ..., "instance": i}]``."""

    status = 422
    code = "invalid_input"

    def __init__(self, message: str, errors: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors)

    def __reduce__(self) -> tuple[Any, ...]:  # keep `errors` across processes (Ray workers)
        return (type(self), (str(self), self.errors))

    def to_json(self) -> dict[str, Any]:
        return {"error": str(self), "code": self.code, "errors": self.errors}


class UnknownEntityError(InvalidInputError):
    """An entity has no row in a feature view the model reads (422, code ``unknown_entity``)."""

    code = "unknown_entity"


class MalformedRequestError(ServingError, ValueError):
    """The body is not JSON, too large, or not the protocol's shape (400)."""

    status = 400
    code = "bad_request"


class NotFoundError(ServingError, LookupError):
    """Unknown model, version or route (404)."""

    status = 404
    code = "not_found"


class OverloadedError(ServingError):
    """The admission queue is full: retry after ``retry_after_s`` (503 + Retry-After)."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, int(retry_after_s))


class UnavailableError(ServingError):
    """The model is not loaded yet, or a dependency (online store, registry) is down (503)."""

    status = 503
    code = "unavailable"


class ModelLoadError(ServingError):
    """An artifact could not be loaded: unverified, tampered, incompatible or unbuildable.
    Raised at load; a running server keeps serving its current model."""

    status = 503
    code = "model_load_failed"


class ConfigError(ServingError, ValueError):
    """A serving configuration value is invalid (raised at construction)."""

    status = 500
    code = "config"
