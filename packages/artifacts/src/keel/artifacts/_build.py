"""Build an artifact directory (and optionally its archive) deterministically, streaming."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from keel.artifacts._errors import InvalidInputError
from keel.artifacts._files import (
    check_not_pickle,
    check_relpath,
    hash_stream,
    source_date_epoch,
    write_archive,
)
from keel.artifacts._manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    ArtifactSpec,
    FileEntry,
    Manifest,
)
from keel.artifacts._safetensors import read_header, write_safetensors
from keel.artifacts._signing import SIGNATURE_FILE, SigningKey

RESERVED = frozenset({MANIFEST_FILE, SIGNATURE_FILE, WEIGHTS_FILE})


@dataclass(frozen=True)
class BuiltArtifact:
    path: Path
    digest: str
    manifest: Manifest
    archive: Path | None
    signed: bool


def _write_weights(dst: Path, weights: Mapping[str, Any] | str | Path) -> tuple[int, str]:
    if isinstance(weights, str | Path):
        src = Path(weights)
        try:
            with open(src, "rb") as f:
                read_header(f, os.fstat(f.fileno()).st_size)
                f.seek(0)
                with open(dst, "xb") as out:
                    return hash_stream(f, WEIGHTS_FILE, out)
        except OSError as e:
            raise InvalidInputError(f"cannot read weights {src}: {e}") from None
    with open(dst, "xb") as out:
        return write_safetensors(out, weights)


def build_artifact(
    out: str | Path,
    spec: ArtifactSpec,
    weights: Mapping[str, Any] | str | Path,
    *,
    files: Mapping[str, str | Path | bytes] | None = None,
    signing_key: SigningKey | None = None,
    archive: str | Path | None = None,
    source_date_epoch_s: int | None = None,
) -> BuiltArtifact:
    """Write the artifact directory ``out`` (must not exist) and optionally its archive.

    ``weights``: a mapping name -> torch tensor / numpy array (streamed to safetensors,
    never copied whole), or the path of an existing safetensors file (validated, copied).
    ``files``: extra payloads (relative path -> source path or bytes), listed and hashed
    like every file; pickle-based files are refused. The same inputs give the same bytes.
    """
    if not isinstance(spec, ArtifactSpec):
        raise InvalidInputError("spec must be an ArtifactSpec")
    out = Path(out)
    if out.exists():
        raise InvalidInputError(
            f"{out} already exists; artifacts are immutable — choose a new path"
        )
    extras = dict(files or {})
    for rel in extras:
        check_relpath(rel)
        if rel in RESERVED:
            raise InvalidInputError(f"{rel!r} is reserved for the artifact's own files")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".keel-build-", dir=out.parent))
    try:
        size, digest = _write_weights(work / WEIGHTS_FILE, weights)
        entries = [FileEntry(path=WEIGHTS_FILE, size=size, sha256=digest)]
        for rel, src in sorted(extras.items()):
            dst = work / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, bytes):
                check_not_pickle(rel, src[:2])
                dst.write_bytes(src)
                entries.append(
                    FileEntry(path=rel, size=len(src), sha256=hashlib.sha256(src).hexdigest())
                )
                continue
            try:
                with open(src, "rb") as f, open(dst, "xb") as o:
                    n, h = hash_stream(f, rel, o)
            except OSError as e:
                raise InvalidInputError(f"cannot read {src}: {e}") from None
            entries.append(FileEntry(path=rel, size=n, sha256=h))
        entries.sort(key=lambda e: e.path)
        try:
            manifest = Manifest(
                format=FORMAT,
                format_version=FORMAT_VERSION,
                weights=WEIGHTS_FILE,
                files=entries,
                **msgspec.structs.asdict(spec),
            )
            manifest = msgspec.convert(msgspec.to_builtins(manifest), Manifest, strict=True)
        except msgspec.ValidationError as e:
            raise InvalidInputError(f"artifact spec fails the manifest schema: {e}") from None
        mbytes = manifest.to_bytes()
        (work / MANIFEST_FILE).write_bytes(mbytes)
        resources = [(e.path, e.sha256) for e in entries]
        resources.append((MANIFEST_FILE, hashlib.sha256(mbytes).hexdigest()))
        if signing_key is not None:
            (work / SIGNATURE_FILE).write_bytes(signing_key.sign(spec.name, resources))
        _normalise_modes(work)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    arch = None
    if archive is not None:
        arch = Path(archive)
        names = [p for p, _ in resources] + ([SIGNATURE_FILE] if signing_key else [])
        write_archive(out, names, arch, source_date_epoch(source_date_epoch_s))
    return BuiltArtifact(
        path=out,
        digest=manifest.digest,
        manifest=manifest,
        archive=arch,
        signed=signing_key is not None,
    )


def _normalise_modes(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)


def archive_artifact(
    directory: str | Path, archive: str | Path, *, source_date_epoch_s: int | None = None
) -> Path:
    """Write the deterministic archive of an existing artifact directory."""
    from keel.artifacts._files import scan_dir

    d = Path(directory)
    names = list(scan_dir(d))
    arch = Path(archive)
    write_archive(d, names, arch, source_date_epoch(source_date_epoch_s))
    return arch
