"""Interop bar: the upstream OpenSSF `model_signing` verifier (public key) accepts a
Keel-signed artifact and rejects a tampered one."""

from __future__ import annotations

from pathlib import Path

import pytest
from artifacts_testdata import Keys, build
from model_signing import verifying

from keel.artifacts import SIGNATURE_FILE, WEIGHTS_FILE


def _upstream_verify(d: Path, pub: Path) -> None:
    verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(d, d / SIGNATURE_FILE)


def test_upstream_verifier_accepts_keel_signature_and_rejects_tampering(tmp_path: Path) -> None:
    keys = Keys()
    d = build(tmp_path, keys)
    pub = tmp_path / "keel.pub"
    pub.write_bytes(keys.pub)
    _upstream_verify(d, pub)

    w = d / WEIGHTS_FILE
    original = w.read_bytes()
    w.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ValueError, match="Signature mismatch"):
        _upstream_verify(d, pub)
    w.write_bytes(original)

    (d / "smuggled.txt").write_bytes(b"x")
    with pytest.raises(ValueError, match="Signature mismatch"):
        _upstream_verify(d, pub)
    (d / "smuggled.txt").unlink()

    other = tmp_path / "other.pub"
    other.write_bytes(Keys().pub)
    with pytest.raises(ValueError):
        _upstream_verify(d, other)
