"""A small deterministic YAML emitter for rule files (no PyYAML dependency).

Emits block mappings/sequences; strings are JSON-escaped double-quoted
scalars (a subset of YAML) or, when multi-line, `|-` literal blocks so PromQL
stays readable. Key order is preserved, so output is byte-stable.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Value = str | int | float | bool | None | Mapping[str, "Value"] | Sequence["Value"]


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot emit non-finite float {value!r}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot emit {type(value).__name__} as YAML")


def _literal_ok(text: str) -> bool:
    lines = text.split("\n")
    return (
        "\n" in text
        and not text.endswith("\n")
        and "\t" not in text
        and "\r" not in text
        and all(lines)  # no empty lines: keeps indentation detection trivial
        and not lines[0].startswith(" ")
        and all(line == line.rstrip() for line in lines)
    )


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"YAML mapping keys must be strings, got {key!r}")
    return key if _PLAIN_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _emit(value: object, indent: int, out: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, Mapping):
        if not value:
            raise ValueError("empty mappings are not emitted; drop the key instead")
        for k, v in value.items():
            _emit_entry(f"{pad}{_key(k)}:", v, indent, out)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            raise ValueError("empty sequences are not emitted; drop the key instead")
        for item in value:
            if isinstance(item, Mapping):
                sub: list[str] = []
                _emit(item, indent + 2, sub)
                sub[0] = f"{pad}- " + sub[0][indent + 2 :]
                out.extend(sub)
            else:
                _emit_entry(f"{pad}-", item, indent, out)
    else:
        out.append(pad + _scalar(value))


def _emit_entry(head: str, value: object, indent: int, out: list[str]) -> None:
    if isinstance(value, Mapping) or (isinstance(value, Sequence) and not isinstance(value, str)):
        out.append(head)
        _emit(value, indent + 2, out)
    elif isinstance(value, str) and _literal_ok(value):
        out.append(f"{head} |-")
        out.extend(" " * (indent + 2) + line for line in value.split("\n"))
    else:
        out.append(f"{head} {_scalar(value)}")


def dump_yaml(value: Mapping[str, object]) -> str:
    """YAML text for `value` (a mapping at the top), ending in a newline."""
    out: list[str] = []
    _emit(value, 0, out)
    return "\n".join(out) + "\n"
