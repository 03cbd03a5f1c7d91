"""Shared by the registry suite's fixtures, tests and worker processes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keel.artifacts import (
    Architecture,
    ArtifactSpec,
    BuiltArtifact,
    CodeVersion,
    FeatureViewRef,
    FieldSpec,
    SigningKey,
    TrustPolicy,
    generate_keypair,
)
from keel.artifacts import build_artifact as build_keel
from keel.registry_client import RegistrableArtifact, Registry, open_registry

ArtifactFactory = Callable[..., RegistrableArtifact]


class Signer:
    """A key pair, its signing key and the trust policy that accepts it."""

    def __init__(self) -> None:
        self.private_pem, self.public_pem = generate_keypair()
        self.key = SigningKey.from_pem(self.private_pem)
        self.policy = TrustPolicy((self.public_pem,))


def build_signed(
    root: Path, name: str, i: int, signer: Signer | None, **spec_overrides: Any
) -> BuiltArtifact:
    """A real keel.artifacts artifact (directory + archive), signed unless `signer` is None."""
    rng = np.random.default_rng(i)
    fields: dict[str, Any] = {
        "name": name,
        "architecture": Architecture(builder="linear", args={"n_in": 2}),
        "input_schema": [
            FieldSpec(name="x0", dtype="float64"),
            FieldSpec(name="x1", dtype="float64"),
        ],
        "output_schema": [FieldSpec(name="score", dtype="float64")],
        "feature_views": [
            FeatureViewRef(name="txn_stats", version="2"),
            FeatureViewRef(name="merchant", version="1"),
        ],
        "training_data_fingerprint": f"sha256:{i:064x}",
        "code": CodeVersion(commit="0123456789abcdef0123456789abcdef01234567", dirty=i % 2 == 1),
        "dependency_lock_hash": "sha256:" + "cd" * 32,
        "metrics": {"auc": 0.9},
    }
    fields.update(spec_overrides)
    d = root / f"{name}-{i}"
    return build_keel(
        d,
        ArtifactSpec(**fields),
        {"weight": rng.standard_normal((1, 2)).astype(np.float32)},
        signing_key=signer.key if signer else None,
        archive=root / f"{name}-{i}.tar",
    )


def make_linear(n_in: int) -> Any:
    """The `linear` model builder the artifacts above name (registered by tests through
    KEEL_MODEL_BUILDERS=linear=integration.registry.registry_support:make_linear)."""
    import torch

    return torch.nn.Linear(n_in, 1, bias=False)


LINEAR_BUILDER = "linear=integration.registry.registry_support:make_linear"


def build_artifact(root: Path, name: str, i: int, **overrides: Any) -> RegistrableArtifact:
    """A small 'signed archive' + manifest pair whose digest is the manifest's sha256."""
    d = root / f"{name}-{i}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.keel").write_bytes(b"archive-" + str(i).encode() * 64)
    manifest = json.dumps({"name": name, "i": i}, sort_keys=True).encode()
    (d / "manifest.json").write_bytes(manifest)
    fields: dict[str, Any] = {
        "name": name,
        "digest": hashlib.sha256(manifest).hexdigest(),
        "archive": d / "model.keel",
        "manifest": d / "manifest.json",
        "data_fingerprint": f"data-{i}",
        "code_version": "git:abc123",
        "lock_hash": "sha256:lock",
        "feature_views": {"txn_stats": "2", "merchant": "1"},
        "parent_version": None,
    }
    fields.update(overrides)
    return RegistrableArtifact(**fields)


@dataclass
class Backend:
    """How to open registries on one backend; `spec` is the same, as JSON, for subprocesses."""

    kind: str
    spec: dict[str, Any]
    opened: list[Registry]

    def open(self, **kwargs: Any) -> Registry:
        if self.kind == "sqlite":
            reg = open_registry(self.spec["home"], **kwargs)
        else:
            reg = open_registry(
                tracking_uri=self.spec["tracking_uri"], db_url=self.spec["db_url"], **kwargs
            )
        self.opened.append(reg)
        return reg

    @property
    def artifacts_root(self) -> Path:
        """Where the backend's artifact store keeps files (for tamper tests)."""
        if self.kind == "sqlite":
            return Path(self.spec["home"]) / "mlartifacts"
        return Path(self.spec["artifacts"])

    @property
    def tracking_uri(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{Path(self.spec['home']).resolve() / 'mlflow.db'}"
        return str(self.spec["tracking_uri"])


def tamper(backend: Backend, sql: str, args: tuple[Any, ...] = ()) -> None:
    """Run SQL directly against Keel's tables, bypassing the registry (for tamper tests).

    Write it with `?` placeholders; they become `%s` for PostgreSQL.
    """
    if backend.kind == "sqlite":
        import sqlite3

        with sqlite3.connect(Path(backend.spec["home"]) / "mlflow.db") as conn:
            conn.execute(sql, args)
    else:
        import psycopg

        with psycopg.connect(backend.spec["db_url"], autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s"), args)
