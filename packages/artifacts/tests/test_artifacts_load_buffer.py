"""The load path's private buffer: read in chunks by parallel readers, hashed as it lands,
viewed (not copied) by the tensors, and never re-read from the file."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch
from artifacts_testdata import Keys, build

import keel.artifacts._verify as verify_mod
from keel.artifacts import IntegrityError, load_artifact, verify_artifact

CFG = {"feature_url": "redis://127.0.0.1:6379/0"}


def big_tensors() -> dict[str, np.ndarray]:
    """> 1 MiB of weights (the mapped-buffer path) with several dtypes and an odd length."""
    rng = np.random.default_rng(7)
    return {
        "0.weight": rng.standard_normal((4, 3)).astype(np.float32),
        "0.bias": rng.standard_normal(4).astype(np.float32),
        "2.weight": rng.standard_normal((1, 4)).astype(np.float32),
        "2.bias": np.zeros(1, dtype=np.float32),
        "steps": np.array([12], dtype=np.int64),
        "emb": rng.standard_normal((300, 1024)).astype(np.float32),
        "half": rng.standard_normal(100_001).astype(np.float16),
        "mask": rng.integers(0, 2, 77_777).astype(np.bool_),
    }


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    """64 KiB chunks: the 1.9 MB weights become ~30 chunks shared by the readers."""
    monkeypatch.setattr(verify_mod, "CHUNK", 64 * 1024)
    return 64 * 1024


def test_large_weights_are_zero_copy_views_of_one_private_mapping(
    tmp_path: Path, small_chunks: int
) -> None:
    keys = Keys()
    d = build(tmp_path, keys, weights=big_tensors())
    weights = d / "weights.safetensors"
    assert weights.stat().st_size > verify_mod._MAPPED_MIN
    loaded = load_artifact(d, keys.policy, runtime_config=CFG)
    for name, arr in big_tensors().items():
        assert torch.equal(loaded.tensors[name], torch.from_numpy(arr)), name
    # every tensor views the same storage: the one buffer that was hashed
    ptrs = {t.untyped_storage().data_ptr() for t in loaded.tensors.values() if t.numel()}
    assert len(ptrs) == 1
    base = ptrs.pop()
    header = verify_artifact(d, keys.policy).weights
    for name, t in loaded.tensors.items():  # each at its file offset: a view, not a copy
        assert t.data_ptr() - base == header.data_start + header.tensors[name].start, name
    storage = next(iter(loaded.tensors.values())).untyped_storage()
    assert storage.nbytes() == weights.stat().st_size
    # private memory, not the file: rewriting the file changes no tensor
    before = {k: v.clone() for k, v in loaded.tensors.items()}
    weights.write_bytes(b"\x00" * weights.stat().st_size)
    assert all(torch.equal(loaded.tensors[k], v) for k, v in before.items())
    # the tensors keep the buffer alive on their own and are writable
    emb = loaded.tensors["emb"]
    del loaded
    emb.add_(1)
    assert torch.equal(emb, torch.from_numpy(big_tensors()["emb"]) + 1)


def test_numpy_views_of_the_mapped_buffer(tmp_path: Path, small_chunks: int) -> None:
    keys = Keys()
    d = build(tmp_path, keys, weights=big_tensors())
    loaded = load_artifact(d, keys.policy, framework="numpy", runtime_config=CFG)
    header = verify_artifact(d, keys.policy).weights
    bases = set()
    for name, arr in big_tensors().items():
        got = loaded.tensors[name]
        assert np.array_equal(got, arr), name
        # each array sits at its file offset within one buffer: views, no copies
        addr = got.__array_interface__["data"][0]
        bases.add(addr - header.data_start - header.tensors[name].start)
    assert len(bases) == 1


@pytest.mark.parametrize("readers", [1, 2, 5])
def test_read_exact_hashes_exactly_the_bytes_it_keeps(
    tmp_path: Path, small_chunks: int, monkeypatch: pytest.MonkeyPatch, readers: int
) -> None:
    monkeypatch.setattr(verify_mod, "_READERS", readers)
    data = os.urandom(small_chunks * 7 + 12_345) * 3  # > 1 MiB, not a multiple of the chunk
    p = tmp_path / "blob"
    p.write_bytes(data)
    buf, digest = verify_mod._read_exact(p, "blob", len(data))
    assert isinstance(buf, mmap.mmap)
    assert bytes(buf) == data and digest == hashlib.sha256(data).hexdigest()
    small = tmp_path / "small"
    small.write_bytes(b"abc")
    sbuf, sdigest = verify_mod._read_exact(small, "small", 3)
    assert isinstance(sbuf, bytearray) and bytes(sbuf) == b"abc"
    assert sdigest == hashlib.sha256(b"abc").hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert verify_mod._read_exact(empty, "empty", 0) == (bytearray(), hashlib.sha256().hexdigest())


def test_read_exact_refuses_a_file_that_changed_size(tmp_path: Path, small_chunks: int) -> None:
    p = tmp_path / "blob"
    p.write_bytes(os.urandom(small_chunks * 20))
    n = p.stat().st_size
    with pytest.raises(IntegrityError, match="blob changed size while being read"):
        verify_mod._read_exact(p, "blob", n - 1)  # grew: a byte past the expected end
    with pytest.raises(IntegrityError, match="blob changed size while being read"):
        verify_mod._read_exact(p, "blob", n + 5)  # shrank: a chunk comes back short


def test_a_read_error_mid_file_is_an_integrity_error_and_loads_nothing(
    tmp_path: Path, small_chunks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys()
    d = build(tmp_path, keys, weights=big_tensors())
    real = os.preadv
    seen: list[int] = []

    def failing(fd: int, buffers: list[memoryview], offset: int) -> int:
        seen.append(offset)
        if offset >= 10 * small_chunks:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", failing)
    calls: list[object] = []
    monkeypatch.setattr(verify_mod, "_deserialise", lambda *a, **k: calls.append(a))
    with pytest.raises(IntegrityError, match="cannot read weights.safetensors: .*Input/output"):
        load_artifact(d, keys.policy, runtime_config=CFG)
    assert calls == [] and seen


def test_big_endian_hosts_get_byte_swapped_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a big-endian host the little-endian stored elements must be swapped; simulated
    here by flipping the flag on this little-endian host, where the swap must then give
    exactly numpy's byteswap of the stored values."""
    keys = Keys()
    arrays = big_tensors()
    d = build(tmp_path, keys, weights=arrays)
    monkeypatch.setattr(verify_mod, "_LITTLE_ENDIAN", False)
    loaded = load_artifact(d, keys.policy, runtime_config=CFG)
    for name, arr in arrays.items():
        t = loaded.tensors[name]
        if arr.dtype.itemsize == 1:
            assert torch.equal(t, torch.from_numpy(arr)), name
        else:
            swapped = torch.from_numpy(arr.byteswap())
            assert torch.equal(t.view(torch.uint8), swapped.view(torch.uint8)), name


def _overwrite_in_place(path: Path) -> None:
    """Same inode, same size, every byte changed: what a writer holding the file open (or
    an mmap of it) would see."""
    data = path.read_bytes()
    with open(path, "r+b") as f:
        f.write(bytes(b ^ 0xFF for b in data[:8]) + bytes(len(data) - 8))


@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_a_write_after_verification_cannot_reach_the_tensors(
    tmp_path: Path,
    small_chunks: int,
    monkeypatch: pytest.MonkeyPatch,
    framework: Literal["torch", "numpy"],
) -> None:
    """The weights are rewritten in place after their hash matched and before tensors are
    built (inside the runtime-config check): the tensors are still exactly the verified
    bytes."""
    keys = Keys()
    d = build(tmp_path, keys, weights=big_tensors())
    weights = d / "weights.safetensors"
    real = verify_mod.validate_runtime_config
    rewritten: list[bool] = []

    def check_then_rewrite(*a: Any) -> Any:
        out = real(*a)
        _overwrite_in_place(weights)
        rewritten.append(True)
        return out

    monkeypatch.setattr(verify_mod, "validate_runtime_config", check_then_rewrite)
    loaded = load_artifact(d, keys.policy, framework=framework, runtime_config=CFG)
    assert rewritten == [True]
    assert weights.read_bytes()[8:16] == bytes(8)  # the file really changed
    for name, arr in big_tensors().items():
        got = loaded.tensors[name]
        got = got.numpy() if framework == "torch" else got
        assert np.array_equal(got, arr), name


def test_a_write_during_the_read_is_caught_by_the_hash(
    tmp_path: Path, small_chunks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that changes chunks not yet read: the bytes read no longer hash to the
    manifest's digest, so the load is refused before anything is deserialised."""
    keys = Keys()
    d = build(tmp_path, keys, weights=big_tensors())
    weights = d / "weights.safetensors"
    real = os.preadv
    done: list[int] = []

    def read_then_write(fd: int, buffers: list[memoryview], offset: int) -> int:
        n = real(fd, buffers, offset)
        if offset == 0 and not done:
            with open(weights, "r+b") as f:  # flip one byte near the end, same inode
                f.seek(-3, os.SEEK_END)
                b = f.read(1)
                f.seek(-3, os.SEEK_END)
                f.write(bytes([b[0] ^ 1]))
            done.append(offset)
        return n

    monkeypatch.setattr(os, "preadv", read_then_write)
    calls: list[object] = []
    monkeypatch.setattr(verify_mod, "_deserialise", lambda *a, **k: calls.append(a))
    with pytest.raises(IntegrityError, match="weights.safetensors: SHA-256 does not match"):
        load_artifact(d, keys.policy, runtime_config=CFG)
    assert done == [0] and calls == []
