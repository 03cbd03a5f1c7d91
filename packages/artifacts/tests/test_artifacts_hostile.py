"""The hostile corpus: every case is refused with a specific ArtifactError subclass, and
the deserialiser is never reached (no tensor allocated)."""

from __future__ import annotations

import io
import os
import shutil
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from artifacts_testdata import PICKLE_DICT, PICKLE_RCE, Keys, build, raw_safetensors, reseal

import keel.artifacts._verify as verify_mod
from keel.artifacts import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    WEIGHTS_FILE,
    ArchiveBombError,
    ArtifactError,
    ForbiddenPayloadError,
    IntegrityError,
    SigningKey,
    TrustPolicy,
    UnsafePathError,
    UnsignedArtifactError,
    UntrustedSignerError,
    WeightsFormatError,
    generate_keypair,
    load_artifact,
)

CFG = {"feature_url": "redis://x"}
F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.fixture()
def no_deserialise(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    calls: list[object] = []

    def spy(*args: object) -> dict[str, object]:
        calls.append(args[2])
        raise AssertionError("a hostile artifact reached the deserialiser")

    monkeypatch.setattr(verify_mod, "_deserialise", spy)
    return calls


def _refused(path: Path, policy: TrustPolicy, exc: type[ArtifactError]) -> ArtifactError:
    with pytest.raises(exc) as e:
        load_artifact(path, policy, runtime_config=CFG)
    assert type(e.value) is exc, f"{type(e.value).__name__}: {e.value}"
    return e.value


def _set_weights(root: Path, data: bytes, keys: Keys) -> None:
    (root / WEIGHTS_FILE).write_bytes(data)
    reseal(root, keys.key)


Mutation = Callable[[Path, Keys], None]

# (id, mutation, expected error) — the weights cases are re-sealed with the trusted key,
# so the refusal comes from Keel's own safetensors validator, not from the hashes.
WEIGHTS_CASES: list[tuple[str, bytes, type[ArtifactError]]] = [
    ("pickle-as-weights", PICKLE_RCE, ForbiddenPayloadError),
    ("truncated-length", b"\x10\x00\x00", WeightsFormatError),
    (
        "truncated-header",
        raw_safetensors(b'{"a":{"dtype":"F32"', b"", length=400),
        WeightsFormatError,
    ),
    ("header-length-2**63", struct.pack("<Q", 2**63) + b"{}", WeightsFormatError),
    (
        "overlapping-offsets",
        raw_safetensors({"a": F32, "b": {**F32, "data_offsets": [4, 12]}}, b"\0" * 12),
        WeightsFormatError,
    ),
    (
        "out-of-bounds-offsets",
        raw_safetensors(
            {"a": {**F32, "data_offsets": [0, 8]}, "b": {**F32, "data_offsets": [8, 16]}}, b"\0" * 8
        ),
        WeightsFormatError,
    ),
    (
        "dtype-shape-vs-bytes",
        raw_safetensors({"a": {**F32, "shape": [3]}}, b"\0" * 8),
        WeightsFormatError,
    ),
    ("dtype-unknown", raw_safetensors({"a": {**F32, "dtype": "O"}}, b"\0" * 8), WeightsFormatError),
    ("not-json", raw_safetensors(b"{\xff\xfe  ", b""), WeightsFormatError),
]


@pytest.mark.parametrize(
    ("data", "exc"), [c[1:] for c in WEIGHTS_CASES], ids=[c[0] for c in WEIGHTS_CASES]
)
def test_malicious_weights_signed_by_a_trusted_key(
    tmp_path: Path, data: bytes, exc: type[ArtifactError], no_deserialise: list[object]
) -> None:
    keys = Keys()
    d = build(tmp_path, keys)
    _set_weights(d, data, keys)
    _refused(d, keys.policy, exc)
    assert no_deserialise == []


@pytest.mark.parametrize(
    ("data", "exc"), [c[1:] for c in WEIGHTS_CASES], ids=[c[0] for c in WEIGHTS_CASES]
)
def test_malicious_weights_swapped_into_a_signed_artifact(
    tmp_path: Path, data: bytes, exc: type[ArtifactError], no_deserialise: list[object]
) -> None:
    keys = Keys()
    d = build(tmp_path, keys)
    (d / WEIGHTS_FILE).write_bytes(data)
    with pytest.raises(ArtifactError) as e:
        load_artifact(d, keys.policy, runtime_config=CFG)
    assert type(e.value) in (IntegrityError, ForbiddenPayloadError)
    assert no_deserialise == []


def _flip(root: Path, rel: str) -> None:
    p = root / rel
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x01
    p.write_bytes(bytes(b))


@pytest.mark.parametrize(
    ("rel", "exc"),
    [
        (WEIGHTS_FILE, IntegrityError),
        (MANIFEST_FILE, IntegrityError),
        ("profile.json", IntegrityError),
        ("reports/eval.json", IntegrityError),
        (SIGNATURE_FILE, UntrustedSignerError),
    ],
)
def test_one_flipped_byte_in_any_file(
    tmp_path: Path, rel: str, exc: type[ArtifactError], no_deserialise: list[object]
) -> None:
    keys = Keys()
    d = build(tmp_path, keys)
    _flip(d, rel)
    with pytest.raises(exc):
        load_artifact(d, keys.policy, runtime_config=CFG)
    # the unsigned path (manifest hashes only) catches the same flips
    if rel != SIGNATURE_FILE:
        (d / SIGNATURE_FILE).unlink()
        with pytest.raises(IntegrityError if rel != MANIFEST_FILE else ArtifactError):
            load_artifact(d, TrustPolicy.unsigned_ok(), runtime_config=CFG)
    assert no_deserialise == []


def _extra(d: Path) -> None:
    (d / "notes.txt").write_bytes(b"hello")


def _extra_pickle(d: Path) -> None:
    (d / "extra.bin").write_bytes(PICKLE_DICT)


def _missing(d: Path) -> None:
    (d / "profile.json").unlink()


def _renamed(d: Path) -> None:
    (d / "profile.json").rename(d / "profile2.json")


def _edited_manifest(d: Path) -> None:
    p = d / MANIFEST_FILE
    p.write_bytes(p.read_bytes().replace(b'"auc":0.91', b'"auc":0.99'))


@pytest.mark.parametrize("mutate", [_extra, _extra_pickle, _missing, _renamed, _edited_manifest])
def test_file_set_and_manifest_tampering(
    tmp_path: Path, mutate: Callable[[Path], None], no_deserialise: list[object]
) -> None:
    keys = Keys()
    d = build(tmp_path, keys)
    mutate(d)
    _refused(d, keys.policy, IntegrityError)
    assert no_deserialise == []


def test_pickle_listed_as_an_extra_file_and_signed(
    tmp_path: Path, no_deserialise: list[object]
) -> None:
    keys = Keys()
    d = build(tmp_path, keys)
    # an attacker with the key lists a pickle under an innocent name
    (d / "profile.json").write_bytes(PICKLE_RCE)
    reseal(d, keys.key)
    _refused(d, keys.policy, ForbiddenPayloadError)
    assert no_deserialise == []


def test_edited_manifest_resigned_by_an_untrusted_key(
    tmp_path: Path, no_deserialise: list[object]
) -> None:
    keys = Keys()
    d = build(tmp_path, keys)
    _edited_manifest(d)
    reseal(d, SigningKey.from_pem(generate_keypair()[0]))
    _refused(d, keys.policy, UntrustedSignerError)
    assert no_deserialise == []


def test_unsigned_artifact_is_refused_by_default(
    tmp_path: Path, no_deserialise: list[object]
) -> None:
    d = build(tmp_path, None)
    _refused(d, Keys().policy, UnsignedArtifactError)
    _refused(d, TrustPolicy(), UnsignedArtifactError)
    assert no_deserialise == []


def test_signature_by_an_untrusted_key(tmp_path: Path, no_deserialise: list[object]) -> None:
    signer, trusted = Keys(), Keys()
    d = build(tmp_path, signer)
    _refused(d, trusted.policy, UntrustedSignerError)
    assert no_deserialise == []


def test_symlink_in_the_directory(tmp_path: Path, no_deserialise: list[object]) -> None:
    keys = Keys()
    d = build(tmp_path, keys)
    (tmp_path / "outside.json").write_bytes(b"{}")
    (d / "profile.json").unlink()
    os.symlink(tmp_path / "outside.json", d / "profile.json")
    _refused(d, keys.policy, UnsafePathError)
    assert no_deserialise == []


def test_manifest_listing_a_path_outside_the_artifact(
    tmp_path: Path, no_deserialise: list[object]
) -> None:
    keys = Keys()
    d = build(tmp_path, keys)
    (tmp_path / "secret.json").write_bytes(b"{}")
    p = d / MANIFEST_FILE
    p.write_bytes(p.read_bytes().replace(b'"path":"profile.json"', b'"path":"../secret.json"'))
    (d / "profile.json").unlink()
    (d / SIGNATURE_FILE).unlink()
    _refused(d, TrustPolicy.unsigned_ok(), UnsafePathError)
    assert no_deserialise == []


def _tar_with(tmp_path: Path, d: Path, extra: tarfile.TarInfo, data: bytes = b"") -> Path:
    out = tmp_path / "evil.tar"
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tf:
        for p in sorted(d.rglob("*")):
            if p.is_file():
                tf.add(p, arcname=str(p.relative_to(d)))
        tf.addfile(extra, io.BytesIO(data) if data else None)
    return out


def test_archive_entry_escaping_with_dotdot(tmp_path: Path, no_deserialise: list[object]) -> None:
    keys = Keys()
    d = build(tmp_path, keys)
    ti = tarfile.TarInfo("../../escaped.txt")
    ti.size = 3
    _refused(_tar_with(tmp_path, d, ti, b"abc"), keys.policy, UnsafePathError)
    assert not (tmp_path / "escaped.txt").exists()
    assert no_deserialise == []


def test_archive_symlink_entry(tmp_path: Path, no_deserialise: list[object]) -> None:
    keys = Keys()
    d = build(tmp_path, keys)
    ti = tarfile.TarInfo("link")
    ti.type = tarfile.SYMTYPE
    ti.linkname = "/etc/passwd"
    _refused(_tar_with(tmp_path, d, ti), keys.policy, UnsafePathError)
    assert no_deserialise == []


def test_archive_bomb_declaring_a_huge_size(tmp_path: Path, no_deserialise: list[object]) -> None:
    keys = Keys()
    build(tmp_path, keys, archive=tmp_path / "a.tar")
    raw = bytearray((tmp_path / "a.tar").read_bytes())
    # rewrite the first entry's size field (offset 124, 12 bytes; GNU base-256) to 2**40
    # and fix the header checksum, as a hostile archive would
    raw[124:136] = b"\x80" + (2**40).to_bytes(11, "big")
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    bomb = tmp_path / "bomb.tar"
    bomb.write_bytes(bytes(raw))
    _refused(bomb, keys.policy, ArchiveBombError)
    with pytest.raises(ArchiveBombError):
        load_artifact(tmp_path / "a.tar", keys.policy, runtime_config=CFG, max_archive_bytes=1000)
    assert no_deserialise == []


def test_corpus_is_refused_before_any_extraction_outside(tmp_path: Path) -> None:
    # sanity: the clean artifact loads once the spy is gone
    keys = Keys()
    d = build(tmp_path, keys)
    shutil.copytree(d, tmp_path / "copy")
    assert load_artifact(
        tmp_path / "copy", keys.policy, framework="numpy", runtime_config=CFG
    ).tensors
