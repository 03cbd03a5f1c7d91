"""Two manifests side by side: what changed in data, code, dependencies, metrics, contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from keel.artifacts._manifest import Manifest

# manifest field -> the section a reader cares about
_SECTIONS: dict[str, str] = {
    "name": "identity",
    "format_version": "identity",
    "training_data_fingerprint": "data",
    "feature_views": "data",
    "code": "code",
    "architecture": "code",
    "dependency_lock_hash": "dependencies",
    "keel_version": "dependencies",
    "metrics": "metrics",
    "input_schema": "contract",
    "output_schema": "contract",
    "runtime_config": "contract",
    "files": "files",
}


@dataclass(frozen=True)
class Change:
    section: str
    key: str
    before: Any
    after: Any


def _flatten(prefix: str, v: Any, out: dict[str, Any]) -> None:
    if isinstance(v, dict) and v:
        for k in sorted(v):
            _flatten(f"{prefix}.{k}", v[k], out)
    else:
        out[prefix] = v


def diff_manifests(a: Manifest, b: Manifest) -> list[Change]:
    """Every changed leaf, grouped by section (data, code, dependencies, metrics, ...)."""
    da, db = msgspec.to_builtins(a), msgspec.to_builtins(b)
    # list-valued fields keyed by name/path so a reorder is not a change
    for d in (da, db):
        d["feature_views"] = {f["name"]: f["version"] for f in d["feature_views"]}
        d["files"] = {f["path"]: f"{f['sha256'][:12]} ({f['size']} B)" for f in d["files"]}
        for k in ("input_schema", "output_schema"):
            d[k] = {f["name"]: {x: y for x, y in f.items() if x != "name"} for f in d[k]}
    changes: list[Change] = []
    for field_name, section in _SECTIONS.items():
        fa: dict[str, Any] = {}
        fb: dict[str, Any] = {}
        _flatten(field_name, da.get(field_name), fa)
        _flatten(field_name, db.get(field_name), fb)
        for key in sorted(set(fa) | set(fb)):
            va, vb = fa.get(key), fb.get(key)
            if va != vb:
                changes.append(Change(section=section, key=key, before=va, after=vb))
    return changes
