"""Keel's own safetensors header parser/validator and a streaming writer.

The validator runs on every load *before* a byte is handed to the safetensors library:
it bounds the header length (a declared length of 2**63 is refused without allocating),
parses the header strictly, and checks that every tensor's dtype and shape agree with its
byte range and that the ranges tile the data section exactly (no overlap, no gap, nothing
out of bounds). The writer streams tensors to disk one at a time, hashing as it goes, so a
build never holds a second copy of the weights.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from keel.artifacts._canonical import canonical_dumps, strict_loads
from keel.artifacts._errors import ManifestError, WeightsFormatError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
ALIGNMENT = 8

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
_TENSOR_KEYS = frozenset({"dtype", "shape", "data_offsets"})


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry: dtype code, shape, and byte range within the data section."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: ``data_start`` is the file offset of the data section."""

    header_len: int
    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str]

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_header(prefix: bytes | memoryview, file_size: int) -> SafetensorsHeader:
    """Validate a safetensors header.

    ``prefix`` holds at least the first ``8 + header_len`` bytes of the file (or all of it
    when shorter); ``file_size`` is the whole file's size. Raises WeightsFormatError.
    """
    if file_size < 8 or len(prefix) < 8:
        raise WeightsFormatError(
            f"weights file is truncated: {file_size} bytes, shorter than the 8-byte header length"
        )
    (n,) = struct.unpack_from("<Q", prefix, 0)
    if n > MAX_HEADER_BYTES:
        raise WeightsFormatError(
            f"weights header declares {n} bytes (limit {MAX_HEADER_BYTES}): refused"
        )
    if 8 + n > file_size or 8 + n > len(prefix):
        raise WeightsFormatError(
            f"weights header is truncated: declares {n} bytes, file has {file_size - 8} after the length"
        )
    raw = bytes(prefix[8 : 8 + n])
    if not raw.startswith(b"{"):
        raise WeightsFormatError("weights header is not a JSON object")
    try:
        header = strict_loads(raw, what="weights header")
    except ManifestError as e:
        raise WeightsFormatError(str(e)) from None
    if not isinstance(header, dict):
        raise WeightsFormatError("weights header is not a JSON object")
    data_len = file_size - 8 - n
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise WeightsFormatError("weights __metadata__ must map strings to strings")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        tensors[name] = _tensor(name, entry)
    pos = 0
    for name, t in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end, kv[0])):
        if t.start != pos:
            what = "overlaps the previous tensor" if t.start < pos else "leaves a gap"
            raise WeightsFormatError(
                f"tensor {name!r} starts at byte {t.start}, expected {pos}: its range {what}"
            )
        pos = t.end
    if pos != data_len:
        raise WeightsFormatError(
            f"tensor data ends at byte {pos} but the data section holds {data_len} bytes "
            "(out-of-bounds offsets or trailing bytes)"
        )
    return SafetensorsHeader(header_len=n, tensors=tensors, metadata=metadata)


def read_header(f: IO[bytes], file_size: int) -> SafetensorsHeader:
    """Read and validate the header at the start of ``f`` (a file of ``file_size`` bytes)."""
    head = f.read(8)
    if len(head) == 8:
        (n,) = struct.unpack("<Q", head)
        if n <= MAX_HEADER_BYTES and 8 + n <= file_size:
            head += f.read(n)
    return validate_header(head, file_size)


def _tensor(name: str, entry: Any) -> TensorInfo:
    if not name:
        raise WeightsFormatError("a tensor has an empty name")
    if not isinstance(entry, dict) or set(entry) != _TENSOR_KEYS:
        raise WeightsFormatError(
            f"tensor {name!r}: entry must have exactly dtype, shape, data_offsets"
        )
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise WeightsFormatError(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise WeightsFormatError(f"tensor {name!r}: shape must be a list of non-negative ints")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise WeightsFormatError(
            f"tensor {name!r}: data_offsets must be [begin, end], begin <= end"
        )
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise WeightsFormatError(
            f"tensor {name!r}: dtype {dtype} shape {shape} needs {nbytes} bytes, "
            f"data_offsets span {offsets[1] - offsets[0]}"
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape), start=offsets[0], end=offsets[1])


# -- writing -------------------------------------------------------------------------------

_NUMPY_CODES = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "float16": "F16",
    "int32": "I32",
    "uint32": "U32",
    "float32": "F32",
    "int64": "I64",
    "uint64": "U64",
    "float64": "F64",
}
_TORCH_CODES = {
    "torch.bool": "BOOL",
    "torch.uint8": "U8",
    "torch.int8": "I8",
    "torch.int16": "I16",
    "torch.uint16": "U16",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.int32": "I32",
    "torch.uint32": "U32",
    "torch.float32": "F32",
    "torch.int64": "I64",
    "torch.uint64": "U64",
    "torch.float64": "F64",
    "torch.float8_e5m2": "F8_E5M2",
    "torch.float8_e4m3fn": "F8_E4M3",
}


def _as_bytes(name: str, value: Any) -> tuple[str, tuple[int, ...], memoryview]:
    """dtype code, shape and a zero-copy little-endian byte view of a tensor/array."""
    mod = type(value).__module__
    if mod.startswith("torch"):
        t = value.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        code = _TORCH_CODES.get(str(t.dtype))
        if code is None:
            raise WeightsFormatError(f"tensor {name!r}: dtype {t.dtype} has no safetensors code")
        shape = tuple(int(d) for d in t.shape)
        flat = t.contiguous().reshape(-1)
        import torch  # pants: no-infer-dep (lazy: only when the caller hands us torch tensors)

        if not flat.numel():
            return code, shape, memoryview(b"")
        return code, shape, flat.view(torch.uint8).numpy().data
    import numpy as np

    a = np.asarray(value)
    code = _NUMPY_CODES.get(a.dtype.name) if a.dtype.byteorder in ("=", "<", "|") else None
    if code is None:
        raise WeightsFormatError(f"tensor {name!r}: dtype {a.dtype} has no safetensors code")
    a = np.ascontiguousarray(a)
    return code, tuple(int(d) for d in a.shape), a.reshape(-1).view(np.uint8).data


def write_safetensors(
    out: IO[bytes], tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """Stream ``tensors`` (torch tensors or numpy arrays) to ``out`` as safetensors.

    Deterministic: tensors ordered by descending element size then name, header as
    canonical JSON padded with spaces to 8 bytes. Returns (bytes written, sha256 hex).
    """
    if not tensors:
        raise WeightsFormatError("no tensors to write")
    views: dict[str, tuple[str, tuple[int, ...], memoryview]] = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise WeightsFormatError(f"invalid tensor name {name!r}")
        views[name] = _as_bytes(name, value)
    order = sorted(views, key=lambda k: (-DTYPE_SIZES[views[k][0]], k))
    header: dict[str, Any] = {}
    pos = 0
    for name in order:
        code, shape, mv = views[name]
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [pos, pos + mv.nbytes]}
        pos += mv.nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    hb = canonical_dumps(header)
    hb += b" " * (-(8 + len(hb)) % ALIGNMENT)
    h = hashlib.sha256()
    head = struct.pack("<Q", len(hb)) + hb
    out.write(head)
    h.update(head)
    total = len(head)
    for name in order:
        mv = views[name][2]
        out.write(mv)
        h.update(mv)
        total += mv.nbytes
    return total, h.hexdigest()


def save_safetensors(
    path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """Write ``tensors`` to a new safetensors file, streaming; returns (size, sha256 hex)."""
    try:
        with open(path, "xb") as out:
            return write_safetensors(out, tensors, metadata)
    except OSError as e:
        raise WeightsFormatError(f"cannot write {path}: {e}") from None
