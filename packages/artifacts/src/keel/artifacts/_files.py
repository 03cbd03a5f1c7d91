"""Safe paths, directory scans, streaming hashes and deterministic archives.

An artifact holds only regular files at relative POSIX paths without ``..``; symlinks,
devices and hard links are refused wherever they appear (directory or archive). The
archive is an uncompressed USTAR tar whose bytes depend only on the files: entries
sorted by path, mtime = ``SOURCE_DATE_EPOCH`` (0 when unset), uid/gid 0, no user or
group names, mode 0644 — whatever the checkout path, time zone, locale or umask.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from keel.artifacts._errors import (
    ArchiveBombError,
    ArchiveError,
    ArtifactNotFoundError,
    ForbiddenPayloadError,
    IntegrityError,
    UnsafePathError,
)

CHUNK = 4 * 1024 * 1024
MAX_PATH = 255
DEFAULT_MAX_MEMBERS = 10_000
DEFAULT_MAX_ARCHIVE_BYTES = 256 * 1024**3
# Extensions of pickle-based formats; a file named so is refused even if its bytes hide it.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib", ".npz", ".dill")


def check_relpath(p: str) -> str:
    """``p`` if it is a safe relative POSIX path inside the artifact, else UnsafePathError."""
    if (
        not isinstance(p, str)
        or not p
        or len(p.encode("utf-8", "surrogatepass")) > MAX_PATH
        or p.startswith("/")
        or "\\" in p
        or "\x00" in p
        or any(part in ("", ".", "..") for part in p.split("/"))
    ):
        raise UnsafePathError(
            f"unsafe path {p!r}: must be relative, without '..', '.', '\\\\' or '//'"
        )
    return p


def check_not_pickle(path: str, head: bytes) -> None:
    """Refuse pickle streams by their opcode prefix and pickle-based formats by name."""
    if path.lower().endswith(PICKLE_SUFFIXES):
        raise ForbiddenPayloadError(f"{path}: pickle-based file types are not allowed in artifacts")
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise ForbiddenPayloadError(
            f"{path}: holds a pickle stream; artifacts carry data, not code"
        )


def scan_dir(root: Path) -> dict[str, int]:
    """Every regular file under ``root`` -> size; anything else is refused."""
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise ArtifactNotFoundError(f"no artifact at {root}") from None
    except OSError as e:
        raise ArtifactNotFoundError(f"cannot read {root}: {e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ArtifactNotFoundError(f"{root} is not an artifact directory")
    out: dict[str, int] = {}
    _walk(root, "", out)
    return out


def _walk(d: Path, prefix: str, out: dict[str, int]) -> None:
    try:
        entries = list(os.scandir(d))
    except OSError as e:
        raise IntegrityError(f"cannot list {d}: {e}") from None
    for ent in entries:
        rel = prefix + ent.name
        if ent.is_symlink():
            raise UnsafePathError(f"{rel} is a symbolic link; artifacts hold regular files only")
        if ent.is_dir(follow_symlinks=False):
            _walk(Path(ent.path), rel + "/", out)
        elif ent.is_file(follow_symlinks=False):
            check_relpath(rel)
            st = ent.stat(follow_symlinks=False)
            if st.st_nlink > 1:
                raise UnsafePathError(f"{rel} is a hard link; artifacts hold regular files only")
            out[rel] = st.st_size
        else:
            raise UnsafePathError(f"{rel} is not a regular file")


def hash_stream(src: IO[bytes], name: str, dst: IO[bytes] | None = None) -> tuple[int, str]:
    """SHA-256 of ``src`` read in chunks (optionally copied to ``dst``); refuses pickle."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    total = 0
    first = True
    while True:
        n = src.readinto(mv)  # type: ignore[attr-defined]
        if not n:
            break
        if first:
            check_not_pickle(name, bytes(mv[:2]))
            first = False
        h.update(mv[:n])
        if dst is not None:
            dst.write(mv[:n])
        total += n
    if first:
        check_not_pickle(name, b"")
    return total, h.hexdigest()


def hash_file(path: Path, name: str) -> tuple[int, str]:
    try:
        with open(path, "rb", buffering=0) as f:
            return hash_stream(f, name)
    except OSError as e:
        raise IntegrityError(f"cannot read {name}: {e}") from None


def read_bounded(path: Path, name: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise IntegrityError(f"cannot read {name}: {e}") from None
    if len(data) > limit:
        raise IntegrityError(f"{name} is larger than {limit} bytes")
    return data


def source_date_epoch(explicit: int | None = None, env: Mapping[str, str] | None = None) -> int:
    """The archive mtime: ``explicit``, else ``$SOURCE_DATE_EPOCH``, else 0."""
    if explicit is not None:
        return int(explicit)
    raw = (os.environ if env is None else env).get("SOURCE_DATE_EPOCH", "")
    try:
        return max(0, int(raw)) if raw.strip() else 0
    except ValueError:
        from keel.artifacts._errors import InvalidInputError

        raise InvalidInputError(f"SOURCE_DATE_EPOCH={raw!r} is not an integer") from None


def write_archive(root: Path, files: list[str], out: Path, mtime: int) -> None:
    """Write the deterministic USTAR archive of ``files`` (relative paths) under ``root``."""
    tmp = out.with_name(out.name + ".partial")
    try:
        with (
            open(tmp, "wb") as raw,
            tarfile.open(
                fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT, encoding="utf-8"
            ) as tf,
        ):
            for rel in sorted(files):
                src = root / rel
                ti = tarfile.TarInfo(rel)
                ti.size = src.stat().st_size
                ti.mtime = mtime
                ti.mode = 0o644
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = ""
                ti.type = tarfile.REGTYPE
                with open(src, "rb") as f:
                    tf.addfile(ti, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except (OSError, ValueError, tarfile.TarError) as e:
        tmp.unlink(missing_ok=True)
        raise ArchiveError(f"cannot write archive {out}: {e}") from None


def _members(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while True:
        ti = tf.next()
        if ti is None:
            return
        yield ti


def extract_archive(
    archive: Path,
    dest: Path,
    *,
    max_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> None:
    """Safely unpack ``archive`` into the empty directory ``dest``.

    Declared sizes are checked before a byte is written: more than ``max_bytes`` in all,
    more than the archive itself holds, or more than ``max_members`` entries is an archive
    bomb. Only regular files (and directories) at safe paths; no duplicates.
    """
    try:
        size = archive.stat().st_size
    except FileNotFoundError:
        raise ArtifactNotFoundError(f"no artifact at {archive}") from None
    except OSError as e:
        raise ArtifactNotFoundError(f"cannot read {archive}: {e}") from None
    try:
        with tarfile.open(archive, mode="r:", encoding="utf-8", errors="strict") as tf:
            seen: set[str] = set()
            total = 0
            for i, ti in enumerate(_members(tf)):
                if i >= max_members:
                    raise ArchiveBombError(f"archive holds more than {max_members} entries")
                if ti.isdir():
                    check_relpath(ti.name.rstrip("/"))
                    continue
                if not ti.isreg():
                    raise UnsafePathError(
                        f"archive entry {ti.name!r} is not a regular file (link, device or fifo)"
                    )
                name = check_relpath(ti.name)
                if name in seen:
                    raise ArchiveError(f"archive lists {name!r} twice")
                seen.add(name)
                total += ti.size
                if total > max_bytes:
                    raise ArchiveBombError(
                        f"archive declares {total} bytes, more than the limit of {max_bytes}"
                    )
                if ti.offset_data + ti.size > size:
                    raise ArchiveBombError(
                        f"archive entry {name!r} declares {ti.size} bytes, more than the "
                        f"{size}-byte archive holds"
                    )
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(ti)
                if src is None:  # pragma: no cover - regular files always have data
                    raise ArchiveError(f"archive entry {name!r} has no data")
                with open(target, "xb") as out:
                    remaining = ti.size
                    while remaining:
                        chunk = src.read(min(CHUNK, remaining))
                        if not chunk:
                            raise ArchiveError(f"archive entry {name!r} is truncated")
                        out.write(chunk)
                        remaining -= len(chunk)
    except (ArchiveError, UnsafePathError, ForbiddenPayloadError):
        raise
    except (tarfile.TarError, EOFError, UnicodeError, ValueError) as e:
        raise ArchiveError(f"{archive} is not a valid Keel archive: {e}") from None
    except OSError as e:
        raise ArchiveError(f"cannot unpack {archive}: {e}") from None
