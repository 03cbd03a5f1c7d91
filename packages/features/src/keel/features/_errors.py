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


def short_repr(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages never carry a whole data value."""
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({type(value).__name__}, {len(text):,} chars)"


def short_text(text: str, limit: int = 160) -> str:
    """A third-party error message made safe to show: first line only, every run of more than
    40 characters without a space cut, the whole cut to ``limit`` characters (such messages
    often quote the offending data value in full)."""
    import re

    line = text.strip().splitlines()[0] if text.strip() else ""
    line = re.sub(r"\S{41,}", lambda m: m.group(0)[:24] + "…", line)
    return line if len(line) <= limit else line[: limit - 1] + "…"
