"""Errors raised by keel.registry_client, grouped by what the caller does next.

MLflow's and the database drivers' exceptions are translated here and never leak.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of every error keel.registry_client raises."""


class InvalidInputError(RegistryError, ValueError):
    """An artifact, alias, version or decision record is malformed: fix the input."""


class NotFoundError(RegistryError, LookupError):
    """A model, version or alias does not exist (or there is nothing to roll back to)."""


class ConflictError(RegistryError):
    """The request conflicts with the registry's state (e.g. a digest registered under a
    different version than MLflow reports): inspect with `keel registry show`."""


class UnavailableError(RegistryError):
    """MLflow or its database is unreachable or busy: retry. `register` is idempotent on the
    artifact digest and alias moves re-check the current holder, so retrying is safe."""


class AuditIntegrityError(RegistryError):
    """The audit log fails verification (an entry edited, reordered or deleted)."""


class UnverifiedArtifactError(RegistryError):
    """A keel.artifacts artifact failed verification against the caller's trust policy
    (unsigned, untrusted signer, a changed file or manifest, a malformed archive): it was not
    registered. `reason` holds keel.artifacts' specific `ArtifactError`, when there is one."""

    def __init__(self, message: str, *, reason: Exception | None = None) -> None:
        super().__init__(message)
        self.reason = reason
