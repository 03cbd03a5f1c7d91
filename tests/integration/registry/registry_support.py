"""Shared by the registry suite's fixtures, tests and worker processes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keel.registry_client import RegistrableArtifact, Registry, open_registry

ArtifactFactory = Callable[..., RegistrableArtifact]


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
