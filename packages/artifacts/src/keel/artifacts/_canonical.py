"""Canonical JSON: one byte string per value, so a manifest's digest is its identity.

Rules (format spec, packages/artifacts/README.md): UTF-8; object keys sorted by code
point; no whitespace; strings escaped as ``json.dumps(ensure_ascii=False)`` does; integers
in decimal; floats finite only — an integral float below 2**53 is written as an integer,
any other float as Python's shortest round-trip ``repr`` with the exponent normalised
(``1e-07`` -> ``1e-7``, ``1e+20`` -> ``1e20``); ``-0.0`` is ``0``. Reading is strict:
duplicate keys, ``NaN``/``Infinity``, trailing data and non-canonical bytes are refused.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from keel.artifacts._errors import ManifestError

_EXP = re.compile(r"e([+-])0*(\d+)")
_SAFE_INT = 2**53


def _num(x: float) -> str:
    if not math.isfinite(x):
        raise ManifestError(f"non-finite number {x!r} cannot be written as canonical JSON")
    if x == 0:
        return "0"
    if x.is_integer() and abs(x) < _SAFE_INT:
        return str(int(x))
    return _EXP.sub(lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), repr(x))


def _enc(v: Any, out: list[str]) -> None:
    if v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, int):
        out.append(str(int(v)))
    elif isinstance(v, float):
        out.append(_num(v))
    elif isinstance(v, str):
        out.append(json.dumps(v, ensure_ascii=False))
    elif isinstance(v, dict):
        out.append("{")
        for i, k in enumerate(sorted(v)):
            if not isinstance(k, str):
                raise ManifestError(f"object key {k!r} is not a string")
            if i:
                out.append(",")
            out.append(json.dumps(k, ensure_ascii=False))
            out.append(":")
            _enc(v[k], out)
        out.append("}")
    elif isinstance(v, list | tuple):
        out.append("[")
        for i, item in enumerate(v):
            if i:
                out.append(",")
            _enc(item, out)
        out.append("]")
    else:
        raise ManifestError(f"{type(v).__name__} cannot be written as canonical JSON")


def canonical_dumps(value: Any) -> bytes:
    """The canonical JSON bytes of ``value`` (dicts, lists, str, int, float, bool, None)."""
    out: list[str] = []
    _enc(value, out)
    return "".join(out).encode("utf-8")


def _no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise ManifestError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _no_constant(name: str) -> Any:
    raise ManifestError(f"{name} is not allowed in canonical JSON")


def strict_loads(data: bytes, *, what: str = "JSON") -> Any:
    """Parse JSON strictly (no duplicate keys, no NaN/Infinity); errors are ManifestError."""
    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_dupes, parse_constant=_no_constant)
    except ManifestError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ManifestError(f"{what} is not valid JSON: {e}") from None


def canonical_loads(data: bytes, *, what: str = "manifest") -> Any:
    """Parse ``data`` and insist it is already in canonical form."""
    value = strict_loads(data, what=what)
    if canonical_dumps(value) != data:
        raise ManifestError(f"{what} is not canonical JSON (re-encode it with keel.artifacts)")
    return value
