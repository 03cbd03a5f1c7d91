"""keel.registry_client: Keel's model registry on MLflow.

* `register(artifact, trust=TrustPolicy(...))` registers a keel.artifacts archive (or
  `BuiltArtifact`) after verifying its signature and hashes, tags derived from its manifest;
  idempotent on the artifact digest, under retries and concurrency.
* Aliases (`champion`, `challenger`, `shadow`, user-defined) move only with a `Decision`
  (who, why, evidence digest) and each move appends a hash-chained `AuditEntry` stored beside
  MLflow's own tables; `verify_audit()` detects edited, reordered or deleted entries.
* `rollback` returns an alias to its previous holder, read from the audit log.
* Everything stays a normal MLflow model: plain `mlflow.MlflowClient()` reads it, and a
  registered keel.artifacts artifact loads with `mlflow.pyfunc.load_model("models:/m@champion")`
  (models from code; signature verified first; see `keel.registry_client.pyfunc`), its model
  rebuilt by a builder registered with `keel.artifacts.register_builder` /
  `KEEL_MODEL_BUILDERS` / the `keel.model_builders` entry points.

mlflow is imported only when a registry is opened (`open_registry`), and keel.artifacts only
when one of its artifacts is registered, never by this import.
"""

from keel.registry_client._artifact import (
    TAG_CODE_VERSION,
    TAG_DATA_FINGERPRINT,
    TAG_DIGEST,
    TAG_FEATURE_VIEWS,
    TAG_FORMAT_VERSION,
    TAG_LOCK_HASH,
    TAG_PARENT_VERSION,
    TAG_SIGNER,
    Registrable,
    RegistrableArtifact,
)
from keel.registry_client._audit import (
    STANDARD_ALIASES,
    AuditEntry,
    AuditProblem,
    Decision,
)
from keel.registry_client._errors import (
    AuditIntegrityError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
    UnavailableError,
    UnverifiedArtifactError,
)
from keel.registry_client._registry import (
    ALIAS_MOVED,
    AliasMoved,
    AuditReport,
    ModelInfo,
    ModelVersionInfo,
    Publisher,
    Registry,
    open_registry,
)

__all__ = [
    "ALIAS_MOVED",
    "STANDARD_ALIASES",
    "TAG_CODE_VERSION",
    "TAG_DATA_FINGERPRINT",
    "TAG_DIGEST",
    "TAG_FEATURE_VIEWS",
    "TAG_FORMAT_VERSION",
    "TAG_LOCK_HASH",
    "TAG_PARENT_VERSION",
    "TAG_SIGNER",
    "AliasMoved",
    "AuditEntry",
    "AuditIntegrityError",
    "AuditProblem",
    "AuditReport",
    "ConflictError",
    "Decision",
    "InvalidInputError",
    "ModelInfo",
    "ModelVersionInfo",
    "NotFoundError",
    "Publisher",
    "Registrable",
    "RegistrableArtifact",
    "Registry",
    "RegistryError",
    "UnavailableError",
    "UnverifiedArtifactError",
    "open_registry",
]
