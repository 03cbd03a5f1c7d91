"""Contracts checked at load: compatibility (every mismatch at once) and runtime config.

Both are pure functions of the manifest and what the caller supplies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from keel.artifacts._errors import IncompatibleArtifactError, RuntimeConfigError
from keel.artifacts._manifest import FORMAT_VERSION, ConfigField, Manifest, parse_version

_OPS = ("==", "!=", ">=", "<=", ">", "<")
# dtype the caller sends -> dtypes the artifact may declare for it
_WIDENS = {
    "int32": {"int32", "int64"},
    "float32": {"float32", "float64"},
    "string": {"string", "category"},
    "category": {"category", "string"},
}


@dataclass(frozen=True)
class Requirements:
    """What the loading runtime offers; ``None`` fields are not checked.

    keel_version: this runtime's Keel version, checked against the artifact's range.
    feature_views: feature-view name -> content version the runtime serves.
    input_columns: column name -> dtype the caller will send.
    """

    keel_version: str | None = None
    feature_views: Mapping[str, str] | None = None
    input_columns: Mapping[str, str] | None = None


def version_in_range(version: str, spec: str) -> bool:
    """``version`` satisfies a comma-separated range like ``>=0.1,<1`` (``*`` or empty: any)."""
    v = parse_version(version)
    for clause in (c.strip() for c in spec.split(",")):
        if clause in ("", "*"):
            continue
        op = next((o for o in _OPS if clause.startswith(o)), None)
        if op is None:
            raise ValueError(f"bad version clause {clause!r}")
        b = parse_version(clause[len(op) :].strip())
        width = max(len(v), len(b))
        lhs, rhs = v + (0,) * (width - len(v)), b + (0,) * (width - len(b))
        ok = {
            "==": lhs == rhs,
            "!=": lhs != rhs,
            ">=": lhs >= rhs,
            "<=": lhs <= rhs,
            ">": lhs > rhs,
            "<": lhs < rhs,
        }[op]
        if not ok:
            return False
    return True


def compatibility_mismatches(manifest: Manifest, req: Requirements) -> list[str]:
    """Every way ``manifest`` does not fit ``req`` (empty when compatible)."""
    out: list[str] = []
    ours, theirs = parse_version(FORMAT_VERSION), parse_version(manifest.format_version)
    if theirs[0] != ours[0] or theirs[:2] > ours[:2]:
        out.append(f"format version {manifest.format_version} is newer than {FORMAT_VERSION}")
    if req.keel_version is not None:
        try:
            if not version_in_range(req.keel_version, manifest.keel_version):
                out.append(
                    f"Keel {req.keel_version} is outside the artifact's range {manifest.keel_version!r}"
                )
        except ValueError as e:
            out.append(f"Keel version range {manifest.keel_version!r} or {req.keel_version!r}: {e}")
    if req.feature_views is not None:
        for fv in manifest.feature_views:
            have = req.feature_views.get(fv.name)
            if have is None:
                out.append(f"feature view {fv.name!r} (version {fv.version}) is not available")
            elif have != fv.version:
                out.append(
                    f"feature view {fv.name!r}: artifact needs version {fv.version}, runtime has {have}"
                )
    if req.input_columns is not None:
        declared = {f.name: f for f in manifest.input_schema}
        for name, f in declared.items():
            sent = req.input_columns.get(name)
            if sent is None:
                if not f.nullable:
                    out.append(f"input {name!r} ({f.dtype}) is required but not sent")
            elif f.dtype not in _WIDENS.get(sent, {sent}):
                out.append(f"input {name!r}: artifact expects {f.dtype}, caller sends {sent}")
        for name in sorted(set(req.input_columns) - set(declared)):
            out.append(f"input {name!r} is sent but not in the artifact's input schema")
    return out


def check_compatibility(manifest: Manifest, req: Requirements) -> None:
    """Raise IncompatibleArtifactError listing every mismatch, or return."""
    mismatches = compatibility_mismatches(manifest, req)
    if mismatches:
        raise IncompatibleArtifactError(mismatches)


def _typed(name: str, f: ConfigField, v: Any, errors: list[str]) -> Any:
    if f.type == "bool":
        ok = isinstance(v, bool)
    elif f.type == "int":
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif f.type == "float":
        ok = isinstance(v, int | float) and not isinstance(v, bool)
        v = float(v) if ok else v
    else:
        ok = isinstance(v, str)
    if not ok:
        errors.append(f"{name}: expected {f.type}, got {type(v).__name__} {v!r}")
        return v
    if f.choices is not None and v not in f.choices:
        errors.append(f"{name}: {v!r} is not one of {f.choices}")
    if f.min is not None and isinstance(v, int | float) and v < f.min:
        errors.append(f"{name}: {v} is below the minimum {f.min}")
    if f.max is not None and isinstance(v, int | float) and v > f.max:
        errors.append(f"{name}: {v} is above the maximum {f.max}")
    return v


def validate_runtime_config(
    schema: Mapping[str, ConfigField], values: Mapping[str, Any] | None
) -> Mapping[str, Any]:
    """Validate injected runtime config against the manifest's schema; fill defaults.

    Returns a read-only mapping. Unknown keys, wrong types, out-of-range values and missing
    required keys are all reported in one RuntimeConfigError.
    """
    values = dict(values or {})
    errors: list[str] = []
    out: dict[str, Any] = {}
    for name in sorted(set(values) - set(schema)):
        errors.append(f"{name}: not a runtime option of this artifact (has {sorted(schema)})")
    for name, f in sorted(schema.items()):
        if name in values:
            out[name] = _typed(name, f, values[name], errors)
        elif f.required:
            errors.append(f"{name}: required")
        else:
            out[name] = (
                float(f.default) if f.type == "float" and f.default is not None else f.default
            )
    if errors:
        raise RuntimeConfigError("invalid runtime config: " + "; ".join(errors))
    return MappingProxyType(out)
