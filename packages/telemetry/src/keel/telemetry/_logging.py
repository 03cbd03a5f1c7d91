"""Structured JSON logging with correlation ids.

`get_logger(name)` returns a stdlib `logging.Logger` whose records always carry
`correlation_id` (from a contextvar, so it follows threads' and asyncio tasks'
own context). The first call installs one JSON-lines handler (stderr) on the
`keel` logger unless `configure_logging` was called; apps call
`configure_logging(...)` once to pick the level, stream or propagation.

    log = get_logger("keel.events")
    with correlation_scope("req-42"):
        log.info("published", extra={"stream": "orders", "count": 3})
    # {"ts": "...", "level": "INFO", "logger": "keel.events", "msg": "published",
    #  "correlation_id": "req-42", "stream": "orders", "count": 3}
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import logging
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any, ParamSpec, TypeVar, cast

__all__ = [
    "CORRELATION_HEADER",
    "JsonFormatter",
    "configure_logging",
    "correlation_scope",
    "current_correlation_id",
    "get_logger",
    "with_correlation",
]

# The HTTP header apps read/write to carry a correlation id across services.
CORRELATION_HEADER = "X-Correlation-ID"

_ROOT = "keel"
_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "keel_correlation_id", default=None
)
_install_lock = threading.Lock()
_HANDLER_ATTR = "_keel_json_handler"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "correlation_id", "taskName"}


def current_correlation_id() -> str | None:
    """The correlation id of the current context, or None outside any scope."""
    return _correlation_id.get()


def _new_id() -> str:
    return uuid.uuid4().hex


@contextmanager
def correlation_scope(
    correlation_id: str | None = None, *, id_factory: Callable[[], str] = _new_id
) -> Iterator[str]:
    """Set the correlation id for the enclosed block (a fresh one from `id_factory`
    when None); nested scopes restore the outer id on exit."""
    cid = correlation_id if correlation_id is not None else id_factory()
    if not isinstance(cid, str) or not cid:
        raise ValueError(f"correlation id must be a non-empty string, got {cid!r}")
    token = _correlation_id.set(cid)
    try:
        yield cid
    finally:
        _correlation_id.reset(token)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def with_correlation(
    func: Callable[_P, _R] | None = None, *, id_factory: Callable[[], str] = _new_id
) -> Any:
    """Decorator: run each call (sync or async) in its own correlation scope, keeping
    an id already set by the caller. Use bare (`@with_correlation`) or with arguments."""

    def decorate(f: Callable[_P, _R]) -> Callable[_P, _R]:
        if inspect.iscoroutinefunction(f):
            af = cast(Callable[_P, Awaitable[Any]], f)

            @functools.wraps(f)
            async def async_wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Any:
                with correlation_scope(current_correlation_id(), id_factory=id_factory):
                    return await af(*args, **kwargs)

            return cast(Callable[_P, _R], async_wrapper)

        @functools.wraps(f)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with correlation_scope(current_correlation_id(), id_factory=id_factory):
                return f(*args, **kwargs)

        return wrapper

    if func is not None:
        return decorate(func)
    return decorate


class _CorrelationFilter(logging.Filter):
    """Stamps `correlation_id` on each record when it is created (in the caller's context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "correlation_id"):
            record.correlation_id = _correlation_id.get()
        return True


_FILTER = _CorrelationFilter()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, msg, correlation_id,
    then every `extra=` field; `exc` holds a formatted traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "correlation_id": getattr(record, "correlation_id", None),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def _install(
    stream: IO[str] | None, level: int | str | None, propagate: bool | None, replace: bool
) -> logging.Handler:
    root = logging.getLogger(_ROOT)
    with _install_lock:
        existing: logging.Handler | None = getattr(root, _HANDLER_ATTR, None)
        if existing is not None and not replace:
            return existing
        if existing is not None:
            root.removeHandler(existing)
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler.addFilter(_FILTER)
        root.addHandler(handler)
        setattr(root, _HANDLER_ATTR, handler)
        if root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        if level is not None:
            root.setLevel(level)
        if propagate is not None:
            root.propagate = propagate
        root.addFilter(_FILTER)
        return handler


def configure_logging(
    *, level: int | str = "INFO", stream: IO[str] | None = None, propagate: bool = False
) -> logging.Handler:
    """(Re)install the JSON handler on the `keel` logger: `level`, output `stream`
    (stderr by default), and whether records also propagate to the root logger.
    Returns the handler. Call once at app start."""
    return _install(stream, level, propagate, replace=True)


def get_logger(name: str) -> logging.Logger:
    """A structured logger `name` (under `keel.`; e.g. "keel.events"); every record
    carries `correlation_id`."""
    if not name or not isinstance(name, str):
        raise ValueError(f"logger name must be a non-empty string, got {name!r}")
    if name != _ROOT and not name.startswith(_ROOT + "."):
        name = f"{_ROOT}.{name}"
    _install(None, None, None, replace=False)
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
