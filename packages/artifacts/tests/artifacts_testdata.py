"""Shared builders for keel.artifacts tests: a small valid artifact, keys, re-sealing."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from keel.artifacts import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    Architecture,
    ArtifactSpec,
    CodeVersion,
    ConfigField,
    FeatureViewRef,
    FieldSpec,
    SigningKey,
    TrustPolicy,
    build_artifact,
    canonical_dumps,
    generate_keypair,
    parse_manifest,
)
from keel.artifacts._manifest import FileEntry


def spec(name: str = "fraud-mlp", **over: Any) -> ArtifactSpec:
    base = dict(
        name=name,
        architecture=Architecture(builder="mlp", args={"n_in": 3, "hidden": 4, "n_out": 1}),
        input_schema=[
            FieldSpec(name="amount", dtype="float64", min=0.0, max=1e6),
            FieldSpec(name="country", dtype="category", categories=["DE", "FR", "US"]),
            FieldSpec(name="n_tx_1h", dtype="int64", min=0),
        ],
        output_schema=[FieldSpec(name="p_fraud", dtype="float64", min=0.0, max=1.0)],
        feature_views=[FeatureViewRef(name="card_stats", version="v3-7f2a")],
        training_data_fingerprint="sha256:" + "ab" * 32,
        code=CodeVersion(commit="0123456789abcdef0123456789abcdef01234567", dirty=False),
        dependency_lock_hash="sha256:" + "cd" * 32,
        metrics={"auc": 0.91, "brier": 0.071},
        keel_version=">=0.1,<1",
        runtime_config={
            "threads": ConfigField(type="int", default=1, min=1, max=64),
            "device": ConfigField(type="str", default="cpu", choices=["cpu", "cuda"]),
            "batch_size": ConfigField(type="int", default=256, min=1),
            "timeout_s": ConfigField(type="float", default=1.0, min=0.0),
            "feature_url": ConfigField(type="str", required=True),
        },
    )
    base.update(over)
    return ArtifactSpec(**base)  # type: ignore[arg-type]


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "0.weight": rng.standard_normal((4, 3)).astype(np.float32),
        "0.bias": rng.standard_normal(4).astype(np.float32),
        "2.weight": rng.standard_normal((1, 4)).astype(np.float32),
        "2.bias": np.zeros(1, dtype=np.float32),
        "steps": np.array([12], dtype=np.int64),
    }


class Keys:
    def __init__(self) -> None:
        self.priv, self.pub = generate_keypair()
        self.key = SigningKey.from_pem(self.priv)
        self.policy = TrustPolicy((self.pub,))


def build(tmp: Path, keys: Keys | None, name: str = "a", **kw: Any) -> Path:
    out = tmp / name
    build_artifact(
        out,
        kw.pop("spec", None) or spec(),
        kw.pop("weights", None) or tensors(),
        files=kw.pop("files", {"reports/eval.json": b'{"auc": 0.91}', "profile.json": b"{}"}),
        signing_key=keys.key if keys else None,
        **kw,
    )
    return out


def reseal(root: Path, key: SigningKey | None) -> None:
    """Re-hash every file into the manifest and re-sign: models an attacker who holds a
    trusted key (or an unsigned-allowed loader), so the weights parser itself is tested."""
    m = parse_manifest((root / MANIFEST_FILE).read_bytes())
    files = []
    for f in m.files:
        data = (root / f.path).read_bytes()
        files.append(
            FileEntry(path=f.path, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        )
    raw = msgspec.to_builtins(m)
    raw["files"] = msgspec.to_builtins(files)
    mbytes = canonical_dumps(raw)
    (root / MANIFEST_FILE).write_bytes(mbytes)
    sig = root / SIGNATURE_FILE
    sig.unlink(missing_ok=True)
    if key is not None:
        res = [(f.path, f.sha256) for f in files] + [
            (MANIFEST_FILE, hashlib.sha256(mbytes).hexdigest())
        ]
        sig.write_bytes(key.sign(m.name, res))


# Pickle streams written out as bytes (the tests never import pickle): a protocol-4 dict and
# the classic code-execution payload (os.system via REDUCE), protocol 2.
PICKLE_DICT = b"\x80\x04\x95\x14\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01w\x94]\x94G?\xf0\x00\x00\x00\x00\x00\x00as."
PICKLE_RCE = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."


def raw_safetensors(
    header: dict[str, Any] | bytes, data: bytes, *, length: int | None = None
) -> bytes:
    hb = header if isinstance(header, bytes) else canonical_dumps(header)
    return struct.pack("<Q", len(hb) if length is None else length) + hb + data
