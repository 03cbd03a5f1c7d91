"""What the registry needs to know about an artifact: a narrow, documented input.

Any object with the attributes of `Registrable` can be registered; the registry checks that
`digest` is the SHA-256 of the manifest file's bytes before it registers anything. Digests
are keyed in keel.artifacts' form, `sha256:<hex>` (a bare hex digest is normalised to it).
keel.artifacts' own objects (an archive path, `BuiltArtifact`, `VerifiedArtifact`) are
registered directly, verified first: see `_keel_artifact`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from keel.registry_client._errors import InvalidInputError

_DIGEST = re.compile(r"^(sha256:)?[0-9a-f]{64}$")
# MLflow accepts more, but these names survive URIs (models:/<name>@alias), shells and paths.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# Tag keys written on every registered version (lineage; readable by plain MLflow clients).
TAG_DIGEST = "keel.digest"
TAG_DATA_FINGERPRINT = "keel.data_fingerprint"
TAG_CODE_VERSION = "keel.code_version"
TAG_LOCK_HASH = "keel.lock_hash"
TAG_FEATURE_VIEWS = "keel.feature_views"
TAG_PARENT_VERSION = "keel.parent_version"
TAG_SIGNER = "keel.signer"  # verified signer's key hint ("unsigned" if the policy allowed it)
TAG_FORMAT_VERSION = "keel.format_version"  # keel.artifacts format version of the manifest
TAG_ARCHIVE = "keel.archive"
TAG_MANIFEST = "keel.manifest"


@runtime_checkable
class Registrable(Protocol):
    """The attributes `Registry.register` reads from an artifact."""

    @property
    def name(self) -> str: ...  # registered model name
    @property
    def digest(self) -> str: ...  # 'sha256:<hex>' (or bare hex) of the manifest file's bytes
    @property
    def archive(self) -> Path: ...  # the signed archive file
    @property
    def manifest(self) -> Path: ...  # the manifest JSON file
    @property
    def data_fingerprint(self) -> str: ...
    @property
    def code_version(self) -> str: ...
    @property
    def lock_hash(self) -> str: ...
    @property
    def feature_views(self) -> Mapping[str, str]: ...  # feature view name -> version
    @property
    def parent_version(self) -> int | None: ...  # the version this one was derived from


@dataclass(frozen=True)
class RegistrableArtifact:
    """A signed artifact as the registry sees it (see `Registrable`); validated on construction."""

    name: str
    digest: str
    archive: Path
    manifest: Path
    data_fingerprint: str
    code_version: str
    lock_hash: str
    feature_views: Mapping[str, str] = field(default_factory=dict)
    parent_version: int | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "digest", canonical_digest(self.digest))


def canonical_digest(digest: str) -> str:
    """keel.artifacts' form of a manifest digest, `sha256:<hex>` (registrations are keyed by it)."""
    return digest if digest.startswith("sha256:") else "sha256:" + digest


def check_fields(a: Registrable) -> None:
    """Shape checks that need no file access."""
    if not isinstance(a.name, str) or not _MODEL_NAME.match(a.name):
        raise InvalidInputError(
            f"model name {a.name!r}: use 1-128 letters, digits, '_', '.', '-' (starting with a letter or digit)"
        )
    if not isinstance(a.digest, str) or not _DIGEST.match(a.digest):
        raise InvalidInputError(
            f"digest {a.digest!r}: expected 'sha256:' + 64 lowercase hex characters "
            "(keel.artifacts' digest; the bare hex is accepted too)"
        )
    for label in ("data_fingerprint", "code_version", "lock_hash"):
        v = getattr(a, label)
        if not isinstance(v, str) or not v or len(v) > 500:
            raise InvalidInputError(
                f"{label} {v!r}: expected a non-empty string of at most 500 characters"
            )
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in a.feature_views.items()):
        raise InvalidInputError("feature_views: expected a mapping of view name -> version strings")
    pv = a.parent_version
    if pv is not None and (isinstance(pv, bool) or not isinstance(pv, int) or pv < 1):
        raise InvalidInputError(f"parent_version {pv!r}: expected a version number >= 1 or None")


def check_files(a: Registrable) -> None:
    """The archive and manifest exist, and the digest is the manifest's SHA-256."""
    for label in ("archive", "manifest"):
        p = Path(getattr(a, label))
        if not p.is_file():
            raise InvalidInputError(f"{label} {p}: no such file")
    actual = "sha256:" + hashlib.sha256(Path(a.manifest).read_bytes()).hexdigest()
    if actual != canonical_digest(a.digest):
        raise InvalidInputError(
            f"digest {a.digest} does not match the manifest {a.manifest} (sha256 {actual}): "
            "the manifest changed after the artifact was built, or the wrong file was given"
        )


def version_tags(a: Registrable) -> dict[str, str]:
    """The lineage tags of a registered version."""
    tags = {
        TAG_DIGEST: canonical_digest(a.digest),
        TAG_DATA_FINGERPRINT: a.data_fingerprint,
        TAG_CODE_VERSION: a.code_version,
        TAG_LOCK_HASH: a.lock_hash,
        TAG_FEATURE_VIEWS: json.dumps(dict(a.feature_views), sort_keys=True),
        TAG_ARCHIVE: Path(a.archive).name,
        TAG_MANIFEST: Path(a.manifest).name,
    }
    if a.parent_version is not None:
        tags[TAG_PARENT_VERSION] = str(a.parent_version)
    tags.update(getattr(a, "extra_tags", None) or {})
    return tags
