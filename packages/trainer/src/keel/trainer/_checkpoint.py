"""Keel's checkpoints: atomic directories with a commit marker written last.

Layout under ``<run>/checkpoints/``::

    step-0000000120/            a committed checkpoint (the only kind ever restored)
        state.safetensors       model + optimiser tensors
        state.json              optimiser/scheduler structure, loop position, early stopping
        rng-rank0.safetensors   each worker's RNG state (one file per rank)
        COMMIT                  written last: format, step, job digest, world size, SHA-256
                                of every file above
    .partial-step-0000000180/   being written (or left by a crash): never read

Writing: rank 0 creates the partial directory; every rank writes its RNG file; rank 0 writes
the state, fsyncs each file, writes ``COMMIT`` (tmp + fsync + rename), then renames the
directory to its final name and fsyncs the parent. A crash at any point leaves either a
partial directory (ignored, removed by the next writer) or a complete committed one.
Reading: a directory counts only if its name is final, its ``COMMIT`` parses, and every
listed file's SHA-256 matches — the bytes hashed are the bytes deserialised. No pickle:
tensors are safetensors, everything else is JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keel.trainer._errors import CheckpointError

log = logging.getLogger("keel.trainer")

FORMAT = "keel.trainer.checkpoint/1"
COMMIT_FILE = "COMMIT"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
_FINAL = re.compile(r"^step-(\d{10})$")


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.safetensors"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes) -> None:
    """Write and fsync (the commit marker is only written after every file is durable)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# --- state <-> (JSON, tensors) without pickle ---------------------------------------------


def flatten(obj: Any, prefix: str, tensors: dict[str, Any]) -> Any:
    """Replace tensors by ``{"$t": key}`` (stored in ``tensors``); tuples and int-keyed dicts
    are tagged so ``unflatten`` rebuilds the exact structure ``load_state_dict`` expects."""
    import torch

    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"$t": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: flatten(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        if all(isinstance(k, int) and not isinstance(k, bool) for k in obj):
            return {
                "$intkeys": {str(k): flatten(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
            }
        raise CheckpointError(f"cannot checkpoint a dict with keys {list(obj)[:5]} at {prefix}")
    if isinstance(obj, tuple):
        return {"$tuple": [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise CheckpointError(f"cannot checkpoint a {type(obj).__name__} at {prefix}")


def unflatten(obj: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"$t"}:
            try:
                return tensors[obj["$t"]]
            except KeyError:
                raise CheckpointError(
                    f"checkpoint names tensor {obj['$t']!r} it does not hold"
                ) from None
        if set(obj) == {"$tuple"}:
            return tuple(unflatten(v, tensors) for v in obj["$tuple"])
        if set(obj) == {"$intkeys"}:
            return {int(k): unflatten(v, tensors) for k, v in obj["$intkeys"].items()}
        return {k: unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def tensors_to_bytes(tensors: dict[str, Any]) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def tensors_from_bytes(data: bytes) -> dict[str, Any]:
    from safetensors.torch import load

    return load(data)


# --- the store ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Committed:
    """A verified committed checkpoint: its step, directory and commit record."""

    step: int
    path: Path
    commit: dict[str, Any]

    def read(self, name: str) -> bytes:
        """The bytes of ``name``, checked against the commit's SHA-256 (what is hashed is
        what the caller deserialises)."""
        want = self.commit["files"].get(name)
        if want is None:
            raise CheckpointError(f"{self.path}: {name} is not part of this checkpoint")
        data = (self.path / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != want:
            raise CheckpointError(f"{self.path}/{name} changed after it was committed")
        return data


class CheckpointStore:
    """The checkpoints of one job (``root`` = ``<run>/checkpoints``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def partial_dir(self, step: int) -> Path:
        return self.root / f".partial-step-{step:010d}"

    def final_dir(self, step: int) -> Path:
        return self.root / f"step-{step:010d}"

    def begin(self, step: int) -> Path:
        """(rank 0) A fresh partial directory for ``step``; a leftover one is removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        p = self.partial_dir(step)
        if p.exists():
            shutil.rmtree(p)
        final = self.final_dir(step)
        if final.exists():  # an earlier attempt committed this very step: replace it
            shutil.rmtree(final)
        p.mkdir()
        return p

    def commit(self, partial: Path, step: int, meta: dict[str, Any]) -> Path:
        """(rank 0) Hash every file, write COMMIT last, rename into place."""
        files = {}
        for f in sorted(partial.iterdir()):
            if f.name == COMMIT_FILE or not f.is_file():
                continue
            files[f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
        record = {"format": FORMAT, "step": step, "files": files, **meta}
        tmp = partial / (COMMIT_FILE + ".tmp")
        write_file(tmp, json.dumps(record, sort_keys=True, allow_nan=True).encode())
        os.replace(tmp, partial / COMMIT_FILE)
        _fsync_dir(partial)
        final = self.final_dir(step)
        os.replace(partial, final)
        _fsync_dir(self.root)
        return final

    def _candidates(self) -> Iterator[tuple[int, Path]]:
        if not self.root.is_dir():
            return
        found = []
        for p in self.root.iterdir():
            m = _FINAL.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
        yield from sorted(found, reverse=True)

    def verify(self, step: int, path: Path) -> Committed | None:
        """The checkpoint if it is committed and intact, else None (logged)."""
        try:
            commit = json.loads((path / COMMIT_FILE).read_bytes())
        except FileNotFoundError:
            log.warning("checkpoint %s has no COMMIT marker: ignored", path)
            return None
        except (OSError, ValueError) as e:
            log.warning("checkpoint %s: unreadable COMMIT (%s): ignored", path, e)
            return None
        if (
            not isinstance(commit, dict)
            or commit.get("format") != FORMAT
            or commit.get("step") != step
        ):
            log.warning(
                "checkpoint %s: COMMIT is not a %s record for step %d: ignored", path, FORMAT, step
            )
            return None
        files = commit.get("files")
        if not isinstance(files, dict) or STATE_TENSORS not in files or STATE_JSON not in files:
            log.warning("checkpoint %s: COMMIT lists no state files: ignored", path)
            return None
        for name, digest in files.items():
            try:
                actual = hashlib.sha256((path / name).read_bytes()).hexdigest()
            except OSError:
                actual = None
            if actual != digest:
                log.warning(
                    "checkpoint %s: %s does not match its committed hash: ignored", path, name
                )
                return None
        return Committed(step=step, path=path, commit=commit)

    def latest(self) -> Committed | None:
        """The newest committed, intact checkpoint (older ones are tried if it is damaged)."""
        for step, path in self._candidates():
            c = self.verify(step, path)
            if c is not None:
                return c
        return None

    def committed_steps(self) -> list[int]:
        return sorted(s for s, p in self._candidates() if self.verify(s, p) is not None)

    def prune(self, keep: int) -> None:
        """(rank 0) Keep the newest ``keep`` committed checkpoints; drop stale partials."""
        for i, (_, p) in enumerate(self._candidates()):
            if i >= keep:
                shutil.rmtree(p, ignore_errors=True)
        for p in self.root.glob(".partial-step-*"):
            shutil.rmtree(p, ignore_errors=True)
