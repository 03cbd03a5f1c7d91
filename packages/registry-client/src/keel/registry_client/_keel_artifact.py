"""Registering a keel.artifacts artifact: verify it first, then derive every tag from it.

`Registry.register` accepts, besides a `Registrable`, a keel.artifacts artifact: the path of
an archive or artifact directory, a `BuiltArtifact` or a `VerifiedArtifact`. The artifact is
copied into a private folder (a directory is archived there), and that copy is verified by
keel.artifacts against the caller's `TrustPolicy` (signature, manifest, every file hash and
the weights header) — the bytes uploaded are exactly the bytes verified, so a file swapped
after the check cannot be registered. The digest is keel.artifacts' digest of the verified
manifest; name, lineage and feature views come from that manifest, never from the caller.
An artifact that fails verification is refused with `UnverifiedArtifactError`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from keel.artifacts import (
    MANIFEST_FILE,
    ArtifactError,
    BuiltArtifact,
    LoadedArtifact,
    Manifest,
    TrustPolicy,
    VerifiedArtifact,
    archive_artifact,
    verify_artifact,
)
from keel.registry_client._artifact import TAG_FORMAT_VERSION, TAG_SIGNER, RegistrableArtifact
from keel.registry_client._errors import InvalidInputError, UnverifiedArtifactError
from keel.registry_client._mlflow_model import RESERVED_NAMES, write_mlflow_model

KEEL_ARTIFACT_TYPES = (str, Path, BuiltArtifact, VerifiedArtifact, LoadedArtifact)


@dataclass(frozen=True)
class VerifiedRegistrable(RegistrableArtifact):
    """A `RegistrableArtifact` derived from a verified keel.artifacts artifact."""

    extra_tags: Mapping[str, str] = field(default_factory=dict)
    # A folder holding the MLflow model files (MLmodel, code file, requirements) uploaded
    # beside the archive so that `models:/<name>@<alias>` loads through `pyfunc`.
    mlflow_model: Path | None = None


def is_keel_artifact(obj: object) -> bool:
    return isinstance(obj, KEEL_ARTIFACT_TYPES)


def code_version(m: Manifest) -> str:
    """The manifest's code version as one tag value: `git:<commit>` (+`-dirty`)."""
    return f"git:{m.code.commit}" + ("-dirty" if m.code.dirty else "") if m.code.commit else ""


def _source(obj: Any) -> tuple[Path, str | None]:
    """The artifact's files and, where the object states one, the digest it claims."""
    if isinstance(obj, LoadedArtifact):
        raise InvalidInputError(
            "a LoadedArtifact holds no files to register: register its archive path "
            "or the BuiltArtifact"
        )
    if isinstance(obj, BuiltArtifact):
        return Path(obj.archive if obj.archive is not None else obj.path), obj.digest
    if isinstance(obj, VerifiedArtifact):
        return Path(obj.path), obj.digest
    return Path(obj), None


@contextmanager
def verified_registrable(
    artifact: Any, trust: TrustPolicy | None, *, parent_version: int | None = None
) -> Iterator[VerifiedRegistrable]:
    """Copy, verify and describe a keel.artifacts artifact; the copy lives for the block."""
    if not isinstance(trust, TrustPolicy):
        raise InvalidInputError(
            "registering a keel.artifacts artifact needs trust=TrustPolicy(...): the registry "
            "verifies its signature and file hashes first"
        )
    src, claimed = _source(artifact)
    if not src.exists():
        raise InvalidInputError(f"no artifact at {src}")
    with tempfile.TemporaryDirectory(prefix="keel-register-") as tmp:
        work = Path(tmp)
        try:
            name = f"{src.name}.tar" if src.is_dir() else src.name
            if name in RESERVED_NAMES:  # the version's folder also holds these files
                name = "artifact.tar"
            archive = work / name
            if src.is_dir():
                archive_artifact(src, archive)
            else:
                shutil.copyfile(src, archive)
            verified = verify_artifact(archive, trust)
        except ArtifactError as e:
            raise UnverifiedArtifactError(
                f"{src} failed verification and is not registered: {type(e).__name__}: {e}",
                reason=e,
            ) from None
        except OSError as e:
            raise InvalidInputError(f"cannot read {src}: {e}") from None
        m = verified.manifest
        if claimed is not None and claimed != verified.digest:
            raise UnverifiedArtifactError(
                f"{src}: the object claims digest {claimed} but the files verify as "
                f"{verified.digest} (changed after it was built)"
            )
        if m.digest != verified.digest:  # canonical JSON: re-serialising gives the same bytes
            raise UnverifiedArtifactError(f"{src}: its manifest is not in canonical form")
        manifest = work / MANIFEST_FILE
        manifest.write_bytes(m.to_bytes())
        registrable = VerifiedRegistrable(
            name=m.name,
            digest=verified.digest,
            archive=archive,
            manifest=manifest,
            data_fingerprint=_required(m.training_data_fingerprint, "training_data_fingerprint"),
            code_version=_required(code_version(m), "code.commit"),
            lock_hash=_required(m.dependency_lock_hash, "dependency_lock_hash"),
            feature_views={fv.name: fv.version for fv in m.feature_views},
            parent_version=parent_version,
            extra_tags={
                TAG_SIGNER: verified.signer or "unsigned",
                TAG_FORMAT_VERSION: m.format_version,
            },
        )
        model_dir = work / "mlflow-model"
        write_mlflow_model(model_dir, manifest=m, digest=verified.digest, archive_name=name)
        yield replace(registrable, mlflow_model=model_dir)


def _required(value: str, what: str) -> str:
    if not value:
        raise InvalidInputError(
            f"the artifact's manifest has no {what}: the registry records lineage for every "
            "version (build the artifact with it set)"
        )
    return value
