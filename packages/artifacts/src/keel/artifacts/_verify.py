"""Verify before deserialise: signature, manifest, every file hash, the weights header.

``load_artifact`` reads the weights file once into memory, hashes those very bytes,
validates the safetensors header with Keel's own parser, checks the compatibility
contract and the runtime config — and only then hands the bytes to safetensors. A file
swapped on disk after verification therefore cannot reach the deserialiser.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import mmap
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from keel.artifacts._compat import Requirements, check_compatibility, validate_runtime_config
from keel.artifacts._errors import (
    ArtifactError,
    ArtifactNotFoundError,
    IntegrityError,
    InvalidInputError,
    UnsignedArtifactError,
    WeightsFormatError,
)
from keel.artifacts._files import (
    CHUNK,
    DEFAULT_MAX_ARCHIVE_BYTES,
    check_not_pickle,
    extract_archive,
    hash_file,
    read_bounded,
    scan_dir,
)
from keel.artifacts._manifest import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    WEIGHTS_FILE,
    Manifest,
    digest_of,
    parse_manifest,
)
from keel.artifacts._metrics import ArtifactMetrics
from keel.artifacts._safetensors import SafetensorsHeader, read_header, validate_header
from keel.artifacts._signing import MAX_SIGNATURE_BYTES, SIGNATURE_FILE, TrustPolicy

log = logging.getLogger("keel.artifacts")
Clock = Callable[[], float]
Buffer = bytearray | mmap.mmap  # private memory holding verified bytes


@dataclass(frozen=True)
class VerifiedArtifact:
    """An artifact whose signature, manifest and file hashes all checked out."""

    path: Path
    manifest: Manifest
    digest: str
    signer: str | None  # key hint (SHA-256 of the PEM public key); None when unsigned
    weights: SafetensorsHeader
    verified_bytes: int


@dataclass(frozen=True)
class LoadedArtifact:
    """A verified artifact with its tensors deserialised and runtime config validated."""

    manifest: Manifest
    digest: str
    signer: str | None
    tensors: Mapping[str, Any]
    runtime_config: Mapping[str, Any]
    files: Mapping[str, bytes] = field(default_factory=dict)

    def build_model(self, builders: Mapping[str, Callable[..., Any]] | None = None) -> Any:
        """Build the model with the builder the manifest names, then load the tensors into
        it (``load_state_dict``, strict). No stored code ever runs. ``builders`` (name ->
        callable), when given, is the whole set the caller allows; otherwise the process's
        registered builders are used (``register_builder``, ``KEEL_MODEL_BUILDERS``, the
        ``keel.model_builders`` entry points; ``BuilderNotFoundError`` naming all three)."""
        from keel.artifacts._builders import resolve_builder

        arch = self.manifest.architecture
        if builders is None:
            builder = resolve_builder(arch.builder)
        else:
            found = builders.get(arch.builder)
            if found is None:
                raise InvalidInputError(
                    f"no model builder registered as {arch.builder!r} (have {sorted(builders)})"
                )
            builder = found
        model = builder(**arch.args)
        if hasattr(model, "load_state_dict"):
            try:
                model.load_state_dict(dict(self.tensors), strict=True)
            except (RuntimeError, ValueError, TypeError, KeyError) as e:
                raise InvalidInputError(
                    f"weights do not fit builder {arch.builder!r}: {e}"
                ) from None
        return model


def _verify_dir(
    root: Path, policy: TrustPolicy, keep: Iterable[str] = ()
) -> tuple[VerifiedArtifact, dict[str, Buffer]]:
    sizes = scan_dir(root)
    signed: dict[str, str] | None = None
    signer = None
    if SIGNATURE_FILE in sizes:
        sizes.pop(SIGNATURE_FILE)
        bundle = read_bounded(root / SIGNATURE_FILE, SIGNATURE_FILE, MAX_SIGNATURE_BYTES)
        _, signed, signer = policy.verify(bundle)
    elif not policy.allow_unsigned:
        raise UnsignedArtifactError(
            f"{root} is not signed; the trust policy requires a signature (allow_unsigned=False)"
        )
    else:
        log.warning(
            "loading UNSIGNED artifact %s: the trust policy allows unsigned artifacts", root
        )
    if MANIFEST_FILE not in sizes:
        raise IntegrityError(f"{root} has no {MANIFEST_FILE}")
    if signed is not None:
        _same_set("signature", set(signed), set(sizes))
    mbytes = read_bounded(root / MANIFEST_FILE, MANIFEST_FILE, MAX_MANIFEST_BYTES)
    mhash = hashlib.sha256(mbytes).hexdigest()
    if signed is not None and signed[MANIFEST_FILE] != mhash:
        raise IntegrityError(f"{MANIFEST_FILE} was changed after signing")
    manifest = parse_manifest(mbytes)
    listed = {f.path: f for f in manifest.files}
    _same_set("manifest", set(listed) | {MANIFEST_FILE}, set(sizes))
    for p, f in listed.items():
        if signed is not None and signed[p] != f.sha256:
            raise IntegrityError(f"{p}: the manifest and the signature disagree on its hash")
        if sizes[p] != f.size:
            raise IntegrityError(f"{p}: {sizes[p]} bytes on disk, the manifest says {f.size}")
    kept: dict[str, Buffer] = {}
    keep = set(keep)
    total = len(mbytes)
    header: SafetensorsHeader | None = None
    for p in sorted(listed):
        if p in keep:
            data, digest = _read_exact(root / p, p, listed[p].size)
            check_not_pickle(p, bytes(data[:2]))
            kept[p] = data
        else:
            _, digest = hash_file(root / p, p)
        if digest != listed[p].sha256:
            raise IntegrityError(f"{p}: SHA-256 does not match the manifest (changed or corrupted)")
        if p in kept and p == manifest.weights:
            header = validate_header(memoryview(kept[p]), len(kept[p]))
        total += listed[p].size
    if header is None:
        try:
            with open(root / manifest.weights, "rb") as fh:
                header = read_header(fh, listed[manifest.weights].size)
        except OSError as e:
            raise IntegrityError(f"cannot read {manifest.weights}: {e}") from None
    return (
        VerifiedArtifact(
            path=root,
            manifest=manifest,
            digest=digest_of(mbytes),
            signer=signer,
            weights=header,
            verified_bytes=total,
        ),
        kept,
    )


def _same_set(what: str, expected: set[str], actual: set[str]) -> None:
    extra, missing = sorted(actual - expected), sorted(expected - actual)
    if extra or missing:
        raise IntegrityError(
            f"files differ from the {what}: "
            + (f"unlisted {extra}" if extra else "")
            + ("; " if extra and missing else "")
            + (f"missing {missing}" if missing else "")
        )


_MAPPED_MIN = 1 << 20  # below this a bytearray's zero-fill costs nothing worth avoiding
# reader threads beside the hashing one: one per spare core, at most two. On 2 cores the
# hash (the critical path) and one reader each own a core: 1.01-1.16x the anchor idle
# against 1.27-1.28x with two readers contending with the hash (package README)
_READERS = max(1, min(2, (os.cpu_count() or 2) - 1))


def _private_buffer(size: int) -> Buffer:
    """Fresh memory of ``size`` bytes that only this process can write.

    A large buffer is a private anonymous mapping: unlike ``bytearray(size)`` it is not
    zero-filled by a serial pass before the read — the kernel hands out zeroed pages as
    the readers first write them, in parallel with hashing. No ``MADV_HUGEPAGE``: on a VM
    whose balloon reports free memory to the host, 2 MiB pages come from exactly the
    memory the host has discarded and took ~2x the CPU of 4 KiB pages (measured, see the
    package README); the system's own policy still applies. The memory is released when
    the last tensor viewing it is.
    """
    private, anon = getattr(mmap, "MAP_PRIVATE", None), getattr(mmap, "MAP_ANONYMOUS", None)
    if size < _MAPPED_MIN or private is None or anon is None:
        return bytearray(size)
    return mmap.mmap(-1, size, flags=private | anon)


def _read_exact(path: Path, name: str, size: int) -> tuple[Buffer, str]:
    """Read ``name`` into private memory and hash those very bytes, as they land.

    Reader threads read 4 MiB chunks of the file, in order, straight into their final
    place in the buffer (no intermediate copy); this thread hashes each chunk, in order,
    once it has landed (file reads and hashlib both release the GIL). The bytes hashed
    are the bytes the tensors will view: the file is never read again.
    """
    buf = _private_buffer(size)
    try:
        with open(path, "rb", buffering=0) as f:
            return buf, _fill_and_hash(f, memoryview(buf), name, size)
    except OSError as e:
        raise IntegrityError(f"cannot read {name}: {e}") from None


def _fill_and_hash(f: Any, mv: memoryview, name: str, size: int) -> str:
    n_chunks = -(-size // CHUNK)
    landed = [threading.Event() for _ in range(n_chunks)]
    failed: list[BaseException | None] = [None] * n_chunks
    claim = itertools.count()  # next() is atomic under the GIL: chunks are claimed in order
    stop = threading.Event()
    seek_lock = threading.Lock()
    fd = f.fileno()

    def read_at(view: memoryview, offset: int) -> None:
        while view:
            if hasattr(os, "preadv"):
                n = os.preadv(fd, [view], offset)
            else:  # no positional reads on this platform: one reader at a time
                with seek_lock:
                    f.seek(offset)
                    n = f.readinto(view)
            if not n:
                raise IntegrityError(f"{name} changed size while being read")
            view, offset = view[n:], offset + n

    def reader() -> None:
        while not stop.is_set() and (i := next(claim)) < n_chunks:
            try:
                read_at(mv[i * CHUNK : (i + 1) * CHUNK], i * CHUNK)
            except BaseException as e:  # handed to the hashing thread, re-raised there
                failed[i] = e
                stop.set()
            landed[i].set()

    threads = [
        threading.Thread(target=reader, name="keel-artifacts-read", daemon=True)
        for _ in range(min(_READERS, n_chunks))
    ]
    for t in threads:
        t.start()
    h = hashlib.sha256()
    try:
        for i in range(n_chunks):
            landed[i].wait()
            if (err := failed[i]) is not None:
                raise err
            h.update(mv[i * CHUNK : (i + 1) * CHUNK])
        f.seek(size)
        if f.read(1):
            raise IntegrityError(f"{name} changed size while being read")
    finally:
        stop.set()
        for t in threads:
            t.join()
    return h.hexdigest()


@contextmanager
def _opened(path: str | Path, max_archive_bytes: int) -> Any:
    p = Path(path)
    if p.is_dir():
        yield p
        return
    if not p.exists():
        raise ArtifactNotFoundError(f"no artifact at {p}")
    with tempfile.TemporaryDirectory(prefix="keel-artifact-") as tmp:
        dest = Path(tmp) / "a"
        dest.mkdir()
        extract_archive(p, dest, max_bytes=max_archive_bytes)
        yield dest


def read_manifest(
    path: str | Path, *, max_archive_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES
) -> tuple[Manifest, str]:
    """The manifest and digest of an artifact, parsed strictly but NOT verified (no
    signature or file-hash check): for inspecting and diffing, never for loading."""
    with _opened(path, max_archive_bytes) as root:
        if not (root / MANIFEST_FILE).is_file() or (root / MANIFEST_FILE).is_symlink():
            raise IntegrityError(f"{path} has no {MANIFEST_FILE}")
        data = read_bounded(root / MANIFEST_FILE, MANIFEST_FILE, MAX_MANIFEST_BYTES)
    return parse_manifest(data), digest_of(data)


def verify_artifact(
    path: str | Path,
    policy: TrustPolicy,
    *,
    metrics: ArtifactMetrics | None = None,
    max_archive_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES,
    clock: Clock = time.perf_counter,
) -> VerifiedArtifact:
    """Verify an artifact directory or archive against ``policy``; deserialise nothing."""
    t0 = clock()
    try:
        with _opened(path, max_archive_bytes) as root:
            v, _ = _verify_dir(root, policy)
        if root != Path(path):
            v = VerifiedArtifact(**{**v.__dict__, "path": Path(path)})
    except ArtifactError as e:
        if metrics is not None:
            metrics.refused(e)
        raise
    if metrics is not None:
        metrics.accepted(clock() - t0, v.verified_bytes, signed=v.signer is not None)
    return v


def load_artifact(
    path: str | Path,
    policy: TrustPolicy,
    *,
    framework: Literal["torch", "numpy"] = "torch",
    engine: Literal["keel", "safetensors"] = "keel",
    requirements: Requirements | None = None,
    runtime_config: Mapping[str, Any] | None = None,
    read_files: Iterable[str] = (),
    metrics: ArtifactMetrics | None = None,
    max_archive_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES,
    clock: Clock = time.perf_counter,
) -> LoadedArtifact:
    """Verify, check the contract, validate runtime config — then deserialise the weights.

    ``read_files``: extra files to return (verified bytes, read once).
    ``engine``: "keel" (default) builds tensors as zero-copy views of the verified buffer;
    "safetensors" hands the same verified bytes to the safetensors library (one more copy).
    ``runtime_config`` is validated against the manifest's schema; it is never stored,
    so it never changes the digest.
    """
    if framework not in ("torch", "numpy") or engine not in ("keel", "safetensors"):
        raise InvalidInputError(
            f"framework must be 'torch' or 'numpy' and engine 'keel' or 'safetensors' "
            f"(got {framework!r}, {engine!r})"
        )
    t0 = clock()
    try:
        with _opened(path, max_archive_bytes) as root:
            v, kept = _verify_dir(root, policy, keep={WEIGHTS_FILE, *read_files})
        t_verified = clock()
        missing = set(read_files) - set(kept)
        if missing:
            raise InvalidInputError(f"read_files not in the artifact: {sorted(missing)}")
        if requirements is not None:
            check_compatibility(v.manifest, requirements)
        cfg = validate_runtime_config(v.manifest.runtime_config, runtime_config)
        tensors = _deserialise(kept[v.manifest.weights], v.weights, framework, engine)
    except ArtifactError as e:
        if metrics is not None:
            metrics.refused(e)
        raise
    if metrics is not None:
        metrics.load_seconds.observe(clock() - t0)
        metrics.accepted(t_verified - t0, v.verified_bytes, signed=v.signer is not None)
    extras = {k: bytes(b) for k, b in kept.items() if k != v.manifest.weights}
    kept.clear()
    return LoadedArtifact(
        manifest=v.manifest,
        digest=v.digest,
        signer=v.signer,
        tensors=tensors,
        runtime_config=cfg,
        files=extras,
    )


def _deserialise(
    data: Buffer, header: SafetensorsHeader, framework: str, engine: str
) -> dict[str, Any]:
    """Tensors from verified, header-validated bytes.

    engine "keel": zero-copy views of the verified buffer, laid out by Keel's validated
    header (torch.frombuffer / numpy.frombuffer; nothing else is interpreted).
    engine "safetensors": the bytes are handed to the safetensors library (one more copy).
    Third-party errors are translated; they never leak.
    """
    try:
        if engine == "safetensors":
            if framework == "torch":
                # torch comes with the caller's environment (trainer, serving): not a
                # dependency of keel.artifacts, so CLIs that only verify do not ship it.
                from safetensors.torch import load as st_load
            else:
                from safetensors.numpy import load as st_load  # type: ignore[assignment]
            return dict(st_load(bytes(data)))
        if framework == "torch":
            return _torch_views(data, header)
        return _numpy_views(data, header)
    except ArtifactError:
        raise
    except ImportError as e:
        raise InvalidInputError(
            f"framework={framework!r} needs {e.name or 'its library'} installed in this environment"
        ) from None
    except Exception as e:  # SafetensorError, TypeError from torch/numpy, ...
        raise WeightsFormatError(
            f"cannot deserialise the weights: {type(e).__name__}: {e}"
        ) from None


_LITTLE_ENDIAN = sys.byteorder == "little"
_TORCH_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
    "F16": "float16", "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32",
    "I64": "int64", "U64": "uint64", "F64": "float64", "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
}  # fmt: skip
_NUMPY_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "<i2", "U16": "<u2", "F16": "<f2",
    "I32": "<i4", "U32": "<u4", "F32": "<f4", "I64": "<i8", "U64": "<u8", "F64": "<f8",
}  # fmt: skip


def _torch_views(data: Buffer, header: SafetensorsHeader) -> dict[str, Any]:
    """Zero-copy tensors over the verified buffer (little-endian host, aligned offsets).

    A tensor whose offset is not a multiple of its element size (not laid out by Keel) is
    copied to aligned memory; on a big-endian host multi-byte elements are copied with
    their bytes swapped (safetensors stores little-endian).
    """
    import torch  # pants: no-infer-dep (the caller's dependency, see ADR 0003)

    u8 = torch.frombuffer(data, dtype=torch.uint8)
    out: dict[str, Any] = {}
    for name, t in header.tensors.items():
        dtype = getattr(torch, _TORCH_DTYPES[t.dtype])
        a, b = header.data_start + t.start, header.data_start + t.end
        if a == b:
            out[name] = torch.empty(t.shape, dtype=dtype)
            continue
        seg = u8[a:b]
        size = dtype.itemsize
        if size > 1 and not _LITTLE_ENDIAN:
            seg = seg.reshape(-1, size).flip(1).reshape(-1)  # a byte-swapped copy
        elif a % size:
            seg = seg.clone()
        out[name] = seg.view(dtype).reshape(t.shape)
    return out


def _numpy_views(data: Buffer, header: SafetensorsHeader) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {}
    for name, t in header.tensors.items():
        code = _NUMPY_DTYPES.get(t.dtype)
        if code is None:
            raise InvalidInputError(
                f"tensor {name!r}: {t.dtype} has no numpy dtype; load with framework='torch'"
            )
        dt = np.dtype(code)
        out[name] = np.frombuffer(
            data,
            dtype=dt,
            count=(t.end - t.start) // dt.itemsize,
            offset=header.data_start + t.start,
        ).reshape(t.shape)
    return out
