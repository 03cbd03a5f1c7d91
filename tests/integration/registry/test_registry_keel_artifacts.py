"""`register` with real keel.artifacts artifacts: verified first, tags from the manifest."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from integration.registry.registry_support import Signer, build_signed

from keel.artifacts import (
    MANIFEST_FILE,
    IntegrityError,
    TrustPolicy,
    UnsignedArtifactError,
    UntrustedSignerError,
    load_artifact,
    verify_artifact,
)
from keel.registry_client import (
    TAG_SIGNER,
    InvalidInputError,
    NotFoundError,
    RegistrableArtifact,
    Registry,
    UnverifiedArtifactError,
)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


def test_a_signed_archive_registers_with_every_tag_from_its_manifest(
    registry: Registry, model_name: str, signer: Signer, tmp_path: Path
) -> None:
    built = build_signed(tmp_path, model_name, 1, signer)
    assert built.archive is not None
    v = registry.register(built.archive, trust=signer.policy)
    assert (v.name, v.version, v.digest) == (model_name, 1, built.digest)
    assert v.digest.startswith("sha256:")
    m = built.manifest
    assert v.tags["keel.data_fingerprint"] == m.training_data_fingerprint
    assert v.tags["keel.code_version"] == f"git:{m.code.commit}-dirty"  # i=1 builds dirty
    assert v.tags["keel.lock_hash"] == m.dependency_lock_hash
    assert json.loads(v.tags["keel.feature_views"]) == {"merchant": "1", "txn_stats": "2"}
    assert v.tags["keel.format_version"] == m.format_version
    assert len(v.tags[TAG_SIGNER]) == 64  # keel.artifacts' key hint of the verified signer
    assert "keel.parent_version" not in v.tags

    got = registry.download(model_name, 1, tmp_path / "dl")
    assert (got / built.archive.name).read_bytes() == built.archive.read_bytes()
    assert (got / MANIFEST_FILE).read_bytes() == (built.path / MANIFEST_FILE).read_bytes()
    # What the registry hands back is still a verifiable artifact with the same identity.
    assert verify_artifact(got / built.archive.name, signer.policy).digest == built.digest


def test_every_form_of_one_artifact_is_one_version(
    registry: Registry, model_name: str, signer: Signer, tmp_path: Path
) -> None:
    built = build_signed(tmp_path, model_name, 2, signer)
    verified = verify_artifact(built.path, signer.policy)
    first = registry.register(built, trust=signer.policy)
    assert registry.register(built.archive or built.path, trust=signer.policy).version == 1
    assert registry.register(built.path, trust=signer.policy).version == first.version
    assert registry.register(verified, trust=signer.policy).version == first.version
    # The hand-built input with the bare hex digest is keyed the same way.
    hand = RegistrableArtifact(
        name=model_name,
        digest=built.digest.removeprefix("sha256:"),
        archive=built.archive or built.path,
        manifest=built.path / MANIFEST_FILE,
        data_fingerprint="x",
        code_version="y",
        lock_hash="z",
    )
    assert hand.digest == built.digest
    assert registry.register(hand).version == first.version
    assert [x.version for x in registry.versions(model_name)] == [1]


def test_lineage_parent_version_is_the_callers(
    registry: Registry, model_name: str, signer: Signer, tmp_path: Path
) -> None:
    parent = registry.register(build_signed(tmp_path, model_name, 1, signer), trust=signer.policy)
    child = registry.register(
        build_signed(tmp_path, model_name, 2, signer),
        trust=signer.policy,
        parent_version=parent.version,
    )
    assert child.version == 2
    assert child.tags["keel.parent_version"] == "1"


def _flip_a_weights_byte(built_dir: Path, tmp: Path) -> Path:
    d = tmp / "tampered"
    shutil.copytree(built_dir, d)
    w = d / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0x01
    w.write_bytes(bytes(data))
    return d


def test_unverifiable_artifacts_are_refused_and_nothing_is_registered(
    registry: Registry, model_name: str, signer: Signer, tmp_path: Path
) -> None:
    unsigned = build_signed(tmp_path / "u", model_name, 1, None)
    other = build_signed(tmp_path / "o", model_name, 2, Signer())
    good = build_signed(tmp_path / "g", model_name, 3, signer)
    cases: list[tuple[Path, type[Exception]]] = [
        (unsigned.path, UnsignedArtifactError),
        (Path(f"{other.path}.tar"), UntrustedSignerError),  # the archive
        (_flip_a_weights_byte(good.path, tmp_path), IntegrityError),
    ]
    for path, reason in cases:
        with pytest.raises(UnverifiedArtifactError) as info:
            registry.register(path, trust=signer.policy)
        assert isinstance(info.value.reason, reason), (path, info.value.reason)
    # A BuiltArtifact that claims another digest than its files verify as.
    with pytest.raises(UnverifiedArtifactError, match="claims digest"):
        registry.register(replace(good, digest="sha256:" + "0" * 64), trust=signer.policy)
    # A BuiltArtifact whose directory changed after the build no longer verifies.
    w = good.path / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + bytes([w.read_bytes()[-1] ^ 1]))
    with pytest.raises(UnverifiedArtifactError):
        registry.register(replace(good, archive=None), trust=signer.policy)
    with pytest.raises(NotFoundError):
        registry.versions(model_name)


def test_a_trust_policy_is_required_and_unsigned_needs_an_explicit_allowance(
    registry: Registry, model_name: str, signer: Signer, tmp_path: Path
) -> None:
    unsigned = build_signed(tmp_path, model_name, 1, None)
    with pytest.raises(InvalidInputError, match="TrustPolicy"):
        registry.register(unsigned.path)
    v = registry.register(unsigned.path, trust=TrustPolicy.unsigned_ok())
    assert v.tags[TAG_SIGNER] == "unsigned"


def test_objects_without_files_or_lineage_are_rejected(
    registry: Registry, model_name: str, signer: Signer, tmp_path: Path
) -> None:
    built = build_signed(tmp_path, model_name, 1, signer)
    loaded = load_artifact(built.path, signer.policy, framework="numpy")
    with pytest.raises(InvalidInputError, match="LoadedArtifact"):
        registry.register(loaded, trust=signer.policy)  # type: ignore[arg-type]
    bare = build_signed(tmp_path / "bare", model_name, 2, signer, training_data_fingerprint="")
    with pytest.raises(InvalidInputError, match="training_data_fingerprint"):
        registry.register(bare, trust=signer.policy)
    with pytest.raises(InvalidInputError, match="cannot register"):
        registry.register(42, trust=None)  # type: ignore[arg-type]
