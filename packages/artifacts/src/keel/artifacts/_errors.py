"""keel.artifacts errors, grouped by what the caller does next.

Every refusal is an ``ArtifactError``; third-party exceptions (safetensors, cryptography,
tarfile, json, OSError) are translated at the boundary and never leak. The class says
*why* the artifact was refused; ``reason`` is a short stable label used as the metrics label.
"""

from __future__ import annotations


class ArtifactError(Exception):
    """Base class of every error keel.artifacts raises."""

    reason = "error"


class InvalidInputError(ArtifactError, ValueError):
    """What the caller passed (arguments, spec, runtime config) is not acceptable."""

    reason = "invalid_input"


class ArtifactNotFoundError(ArtifactError, FileNotFoundError):
    """No artifact (directory or archive) at the given path."""

    reason = "not_found"


class BuilderNotFoundError(ArtifactError, LookupError):
    """No model builder is registered under the name an artifact's architecture gives
    (``keel.artifacts.register_builder``, ``KEEL_MODEL_BUILDERS`` or an entry point)."""


class ManifestError(ArtifactError):
    """The manifest is missing, not canonical JSON, or fails its schema."""

    reason = "manifest"


class UnsupportedFormatError(ManifestError):
    """The artifact declares a format version this Keel cannot read."""

    reason = "format_version"


class WeightsFormatError(ArtifactError):
    """The weights file is not a well-formed safetensors file (truncated or oversized
    header, overlapping or out-of-bounds offsets, dtype/shape disagreeing with the bytes)."""

    reason = "weights_format"


class ForbiddenPayloadError(ArtifactError):
    """A file holds code rather than data (a pickle stream, a pickle-based extension)."""

    reason = "forbidden_payload"


class IntegrityError(ArtifactError):
    """The files on disk disagree with the manifest or signature: a changed byte, a size,
    an extra, missing or renamed file."""

    reason = "integrity"


class UnsafePathError(ArtifactError):
    """An entry escapes the artifact (``..``, an absolute path) or is not a regular file
    (a symlink, a device, a hard link)."""

    reason = "unsafe_path"


class ArchiveError(ArtifactError):
    """The archive is malformed, truncated, or holds duplicate entries."""

    reason = "archive"


class ArchiveBombError(ArchiveError):
    """The archive declares more bytes or entries than the configured limits."""

    reason = "archive_bomb"


class SignatureError(ArtifactError):
    """The signature is malformed or does not verify."""

    reason = "signature"


class UnsignedArtifactError(SignatureError):
    """The artifact carries no signature and the trust policy does not allow unsigned ones."""

    reason = "unsigned"


class UntrustedSignerError(SignatureError):
    """The signature verifies with none of the trust policy's keys."""

    reason = "untrusted_signer"


class IncompatibleArtifactError(ArtifactError):
    """The artifact's contract does not fit this runtime; ``mismatches`` lists every one."""

    reason = "incompatible"

    def __init__(self, mismatches: list[str]) -> None:
        self.mismatches = list(mismatches)
        super().__init__(
            f"{len(self.mismatches)} compatibility mismatch(es): " + "; ".join(self.mismatches)
        )

    def __reduce__(self) -> tuple[type, tuple[list[str]]]:
        return (type(self), (self.mismatches,))


class RuntimeConfigError(InvalidInputError):
    """Runtime configuration does not satisfy the schema the manifest declares."""

    reason = "runtime_config"
