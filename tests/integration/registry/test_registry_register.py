"""`register` on both backends: one version per digest, lineage tags, artifacts attached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from integration.registry.registry_support import ArtifactFactory, Backend, tamper

from keel.registry_client import (
    TAG_DIGEST,
    InvalidInputError,
    NotFoundError,
    RegistrableArtifact,
    Registry,
)


def test_register_attaches_archive_manifest_and_lineage_tags(
    registry: Registry, make_artifact: ArtifactFactory, tmp_path: Path
) -> None:
    a = make_artifact(1, parent_version=None)
    v = registry.register(a)
    assert v.version == 1
    assert v.digest == a.digest
    assert v.tags["keel.data_fingerprint"] == "data-1"
    assert v.tags["keel.code_version"] == "git:abc123"
    assert v.tags["keel.lock_hash"] == "sha256:lock"
    assert json.loads(v.tags["keel.feature_views"]) == {"merchant": "1", "txn_stats": "2"}
    assert "keel.parent_version" not in v.tags
    child = registry.register(make_artifact(2, parent_version=1))
    assert child.version == 2
    assert child.tags["keel.parent_version"] == "1"

    got = registry.download(a.name, 1, tmp_path / "dl")
    assert (got / "model.keel").read_bytes() == a.archive.read_bytes()
    assert (got / "manifest.json").read_bytes() == a.manifest.read_bytes()


def test_retry_returns_the_existing_version(
    registry: Registry, make_artifact: ArtifactFactory
) -> None:
    first = [registry.register(make_artifact(i)).version for i in range(3)]
    again = [registry.register(make_artifact(i)).version for i in (2, 0, 1)]
    assert first == [1, 2, 3]
    assert again == [3, 1, 2]
    assert [v.version for v in registry.versions(make_artifact(0).name)] == [1, 2, 3]


def test_a_registration_that_crashed_after_mlflow_created_the_version_is_recovered(
    backend: Backend, registry: Registry, make_artifact: ArtifactFactory
) -> None:
    # A crash between MLflow's create_model_version and Keel's claim leaves an intent row
    # without a version, and a version carrying the digest tag.
    a = make_artifact(1)
    registry.register(make_artifact(0))
    tamper(
        backend,
        "INSERT INTO keel_registry_versions (model, digest, version, run_id) VALUES (?, ?, NULL, ?)",
        (a.name, a.digest, "crashed-run"),
    )
    registry.mlflow_client.create_model_version(
        a.name, "s3://keel-test/crashed-upload", tags={TAG_DIGEST: a.digest}
    )
    assert registry.register(a).version == 2
    assert registry.register(a).version == 2
    assert len(registry.versions(a.name)) == 2


def test_a_registration_that_crashed_before_mlflow_created_the_version_completes(
    backend: Backend, registry: Registry, make_artifact: ArtifactFactory
) -> None:
    a = make_artifact(1)
    tamper(
        backend,
        "INSERT INTO keel_registry_versions (model, digest, version, run_id) VALUES (?, ?, NULL, ?)",
        (a.name, a.digest, "crashed-run"),
    )
    assert registry.register(a).version == 1
    assert registry.register(a).version == 1
    assert [v.digest for v in registry.versions(a.name)] == [a.digest]


def test_digest_must_be_the_manifest_sha256(
    registry: Registry, make_artifact: ArtifactFactory
) -> None:
    a = make_artifact(1)
    bad = RegistrableArtifact(**{**a.__dict__, "digest": "0" * 64})
    with pytest.raises(InvalidInputError, match="does not match the manifest"):
        registry.register(bad)
    with pytest.raises(NotFoundError):
        registry.versions(a.name)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("name", "no spaces", "model name"),
        ("digest", "ABC", "digest"),
        ("code_version", "", "code_version"),
        ("parent_version", 0, "parent_version"),
        ("feature_views", {"v": 1}, "feature_views"),
    ],
)
def test_malformed_artifacts_are_rejected(
    make_artifact: ArtifactFactory, field: str, value: object, match: str
) -> None:
    a = make_artifact(1)
    with pytest.raises(InvalidInputError, match=match):
        RegistrableArtifact(**{**a.__dict__, field: value})
