"""The manifest: the artifact's contract and file list, as canonical JSON.

Its SHA-256 is the artifact's identity (``digest``): it lists every other file with size
and SHA-256, so one digest names every byte of the artifact. Runtime configuration is
*not* stored here (only the schema it must satisfy), so it never changes the digest.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec

from keel.artifacts._canonical import canonical_dumps, canonical_loads
from keel.artifacts._errors import ManifestError, UnsupportedFormatError
from keel.artifacts._files import check_relpath

FORMAT: Literal["keel.artifact"] = "keel.artifact"
FORMAT_VERSION = "1.0.0"
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.safetensors"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

Dtype = Literal["bool", "int32", "int64", "float32", "float64", "string", "category"]
ConfigType = Literal["int", "float", "str", "bool"]


class _S(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class Architecture(_S, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A registered model-builder name plus JSON arguments: loading never runs stored code."""

    builder: str
    args: dict[str, Any] = {}


class FieldSpec(_S, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One input or output column: dtype, and optional allowed range or categories."""

    name: str
    dtype: Dtype
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    nullable: bool = False


class FeatureViewRef(_S, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    version: str


class CodeVersion(_S, frozen=True, kw_only=True, forbid_unknown_fields=True):
    commit: str
    dirty: bool


class ConfigField(_S, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One runtime option the artifact accepts (threads, device, batch size, URLs, ...)."""

    type: ConfigType
    default: int | float | str | bool | None = None
    required: bool = False
    min: float | None = None
    max: float | None = None
    choices: list[int | float | str | bool] | None = None
    description: str = ""


class FileEntry(_S, frozen=True, kw_only=True, forbid_unknown_fields=True):
    path: str
    size: int
    sha256: str


class ArtifactSpec(_S, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the producer (trainer, CLI) declares; ``build_artifact`` adds the rest."""

    name: str
    architecture: Architecture
    input_schema: list[FieldSpec]
    output_schema: list[FieldSpec]
    feature_views: list[FeatureViewRef] = []
    training_data_fingerprint: str = ""
    code: CodeVersion = CodeVersion(commit="", dirty=False)
    dependency_lock_hash: str = ""
    metrics: dict[str, float] = {}
    keel_version: str = ">=0.1,<1"
    runtime_config: dict[str, ConfigField] = {}


class Manifest(_S, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The full manifest as stored in ``manifest.json`` (format spec in the README)."""

    format: Literal["keel.artifact"]
    format_version: str
    name: str
    architecture: Architecture
    weights: str
    input_schema: list[FieldSpec]
    output_schema: list[FieldSpec]
    feature_views: list[FeatureViewRef]
    training_data_fingerprint: str
    code: CodeVersion
    dependency_lock_hash: str
    metrics: dict[str, float]
    keel_version: str
    runtime_config: dict[str, ConfigField]
    files: list[FileEntry]

    def to_bytes(self) -> bytes:
        return canonical_dumps(msgspec.to_builtins(self))

    @property
    def digest(self) -> str:
        return digest_of(self.to_bytes())

    def spec(self) -> ArtifactSpec:
        d = msgspec.structs.asdict(self)
        for k in ("format", "format_version", "weights", "files"):
            d.pop(k)
        return ArtifactSpec(**d)


def digest_of(manifest_bytes: bytes) -> str:
    return "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()


def parse_version(v: str) -> tuple[int, ...]:
    parts = v.split("+", 1)[0].split("-", 1)[0].split(".")
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a version: {v!r}")
    return tuple(int(p) for p in parts)


def parse_manifest(data: bytes) -> Manifest:
    """Strictly parse canonical manifest bytes (schema, unknown fields, file list)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest is {len(data)} bytes (limit {MAX_MANIFEST_BYTES})")
    raw = canonical_loads(data)
    if not isinstance(raw, dict):
        raise ManifestError("manifest is not a JSON object")
    if raw.get("format") != FORMAT:
        raise UnsupportedFormatError(f"not a Keel artifact manifest (format={raw.get('format')!r})")
    fv = raw.get("format_version")
    try:
        major = parse_version(fv)[0] if isinstance(fv, str) else -1
    except ValueError:
        major = -1
    if major != parse_version(FORMAT_VERSION)[0]:
        raise UnsupportedFormatError(
            f"artifact format version {fv!r} is not readable by this Keel (reads {FORMAT_VERSION})"
        )
    try:
        m = msgspec.convert(raw, Manifest, strict=True)
    except msgspec.ValidationError as e:
        raise ManifestError(f"manifest fails its schema: {e}") from None
    paths = [f.path for f in m.files]
    if len(set(paths)) != len(paths):
        raise ManifestError("manifest lists a file twice")
    if m.weights != WEIGHTS_FILE or m.weights not in paths:
        raise ManifestError(
            f"manifest's weights file must be {WEIGHTS_FILE!r}, listed in its files"
        )
    for f in m.files:
        check_relpath(f.path)
        if f.size < 0 or len(f.sha256) != 64 or any(c not in "0123456789abcdef" for c in f.sha256):
            raise ManifestError(f"manifest entry {f.path!r}: bad size or sha256")
    return m
