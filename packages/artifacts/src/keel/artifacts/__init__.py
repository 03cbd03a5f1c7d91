"""keel.artifacts: signed, byte-reproducible model artifacts, verified before deserialisation.

    from keel.artifacts import ArtifactSpec, Architecture, FieldSpec, SigningKey, TrustPolicy
    from keel.artifacts import build_artifact, load_artifact, generate_keypair

    priv, pub = generate_keypair()
    built = build_artifact("out/model", spec, model.state_dict(),
                           signing_key=SigningKey.from_pem(priv), archive="out/model.tar")
    loaded = load_artifact("out/model.tar", TrustPolicy((pub,)),
                           runtime_config={"threads": 4})      # verified, then deserialised
    model = loaded.build_model({"mlp": make_mlp})               # registered builders only

Weights are safetensors (no pickle anywhere); the manifest is canonical JSON and its
SHA-256 is the artifact's identity; signatures are OpenSSF model-signing bundles
(verifiable by the upstream ``model_signing`` CLI). Format spec: the package README.
torch is imported lazily, only by ``load_artifact(framework="torch")`` and when
building from torch tensors.
"""

from keel.artifacts._build import BuiltArtifact, archive_artifact, build_artifact
from keel.artifacts._builders import (
    BUILDERS_ENV,
    BUILTIN_BUILDERS,
    ENTRY_POINT_GROUP,
    Builder,
    build_mlp,
    builders_for,
    register_builder,
    resolve_builder,
    unregister_builder,
)
from keel.artifacts._canonical import canonical_dumps, canonical_loads
from keel.artifacts._compat import (
    Requirements,
    check_compatibility,
    compatibility_mismatches,
    validate_runtime_config,
    version_in_range,
)
from keel.artifacts._diff import Change, diff_manifests
from keel.artifacts._errors import (
    ArchiveBombError,
    ArchiveError,
    ArtifactError,
    ArtifactNotFoundError,
    BuilderNotFoundError,
    ForbiddenPayloadError,
    IncompatibleArtifactError,
    IntegrityError,
    InvalidInputError,
    ManifestError,
    RuntimeConfigError,
    SignatureError,
    UnsafePathError,
    UnsignedArtifactError,
    UnsupportedFormatError,
    UntrustedSignerError,
    WeightsFormatError,
)
from keel.artifacts._files import extract_archive
from keel.artifacts._manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Architecture,
    ArtifactSpec,
    CodeVersion,
    ConfigField,
    FeatureViewRef,
    FieldSpec,
    FileEntry,
    Manifest,
    parse_manifest,
)
from keel.artifacts._metrics import ArtifactMetrics
from keel.artifacts._safetensors import (
    SafetensorsHeader,
    TensorInfo,
    save_safetensors,
    validate_header,
)
from keel.artifacts._signing import SIGNATURE_FILE, SigningKey, TrustPolicy, generate_keypair
from keel.artifacts._verify import (
    LoadedArtifact,
    VerifiedArtifact,
    load_artifact,
    read_manifest,
    verify_artifact,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "SIGNATURE_FILE",
    "WEIGHTS_FILE",
    "BUILDERS_ENV",
    "BUILTIN_BUILDERS",
    "ENTRY_POINT_GROUP",
    "ArchiveBombError",
    "ArchiveError",
    "Architecture",
    "ArtifactError",
    "ArtifactMetrics",
    "ArtifactNotFoundError",
    "ArtifactSpec",
    "Builder",
    "BuilderNotFoundError",
    "BuiltArtifact",
    "Change",
    "CodeVersion",
    "ConfigField",
    "FeatureViewRef",
    "FieldSpec",
    "FileEntry",
    "ForbiddenPayloadError",
    "IncompatibleArtifactError",
    "IntegrityError",
    "InvalidInputError",
    "LoadedArtifact",
    "Manifest",
    "ManifestError",
    "Requirements",
    "RuntimeConfigError",
    "SafetensorsHeader",
    "SignatureError",
    "SigningKey",
    "TensorInfo",
    "TrustPolicy",
    "UnsafePathError",
    "UnsignedArtifactError",
    "UnsupportedFormatError",
    "UntrustedSignerError",
    "VerifiedArtifact",
    "WeightsFormatError",
    "archive_artifact",
    "build_artifact",
    "build_mlp",
    "builders_for",
    "canonical_dumps",
    "canonical_loads",
    "check_compatibility",
    "compatibility_mismatches",
    "diff_manifests",
    "extract_archive",
    "generate_keypair",
    "load_artifact",
    "register_builder",
    "resolve_builder",
    "unregister_builder",
    "parse_manifest",
    "read_manifest",
    "save_safetensors",
    "validate_header",
    "validate_runtime_config",
    "verify_artifact",
    "version_in_range",
]
