"""Canonical JSON and content hashes: the one encoding every cache key and chain link uses."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from keel.pipelines._errors import InvalidInputError


def canonical(obj: object) -> bytes:
    """Sorted keys, no spaces, UTF-8; NaN/Infinity refused (they have no JSON form)."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"value is not canonical JSON (plain str/number/list/dict): {exc}"
        ) from None


def sha256_hex(obj: object) -> str:
    return hashlib.sha256(canonical(obj)).hexdigest()


def iso(at: datetime) -> str:
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInputError(f"time {at!r} has no time zone; pass an aware datetime (UTC)")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"not an ISO-8601 time: {text[:40]!r}") from None
    if t.tzinfo is None:
        raise InvalidInputError(f"time has no time zone: {text[:40]!r}")
    return t.astimezone(UTC)


def loads(raw: str) -> Any:
    return json.loads(raw)
