"""The deterministic sharded Parquet reader and the training set's fingerprint.

Nothing here reads the whole training set into one process: the driver reads only the
Parquet footer (row count, schema) and streams the file once through SHA-256; each worker
reads the row groups that overlap its contiguous shard ``[n*r/W, n*(r+1)/W)``.

Which rows are validation rows is a pure function of (seed, global row index) — a
splitmix64 hash compared with the fraction — so every worker knows every shard's training
row count without reading it, and the epoch order is a permutation seeded by
(seed, epoch, rank): restoring a data position is (epoch, step in epoch), nothing more.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.trainer._errors import DataError

if TYPE_CHECKING:
    import numpy as np

_CHUNK = 4 << 20
_NUMERIC = (
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float",
    "double",
    "halffloat",
    "bool",
)


def fingerprint(path: str | Path) -> str:
    """``sha256:<hex>`` of the Parquet file's bytes (streamed, constant memory)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"cannot read training set {path}: {e.strerror or e}") from None
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class DatasetInfo:
    num_rows: int
    row_group_rows: tuple[int, ...]
    dtypes: dict[str, str]


def inspect(path: str | Path, features: list[str], target: str) -> DatasetInfo:
    """Footer-only check: the file is Parquet, the columns exist and are numeric."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise DataError(f"training set {path} does not exist") from None
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"training set {path} is not a readable Parquet file: {e}") from None
    schema = pf.schema_arrow
    missing = [c for c in [*features, target] if c not in schema.names]
    if missing:
        raise DataError(
            f"training set {path} has no column(s) {missing} (it has {schema.names[:20]})"
        )
    dtypes = {c: str(schema.field(c).type) for c in [*features, target]}
    bad = {c: t for c, t in dtypes.items() if t not in _NUMERIC}
    if bad:
        raise DataError(f"columns must be numeric or bool (encode categories upstream); got {bad}")
    md = pf.metadata
    groups = tuple(md.row_group(i).num_rows for i in range(md.num_row_groups))
    return DatasetInfo(num_rows=md.num_rows, row_group_rows=groups, dtypes=dtypes)


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    return n * rank // world, n * (rank + 1) // world


def validation_mask(seed: int, lo: int, hi: int, fraction: float) -> np.ndarray:
    """True where global row ``i`` in ``[lo, hi)`` is a validation row (splitmix64 hash)."""
    import numpy as np

    if fraction <= 0.0:
        return np.zeros(hi - lo, dtype=bool)
    with np.errstate(over="ignore"):
        z = np.arange(lo, hi, dtype=np.uint64) + np.uint64(
            (seed * 0x9E3779B97F4A7C15) & (2**64 - 1)
        )
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(2**53)
    return u < fraction


def train_rows_per_shard(n: int, world: int, seed: int, fraction: float) -> list[int]:
    """Training rows of every shard, computed from the hash alone (no data read)."""
    out = []
    for r in range(world):
        lo, hi = shard_bounds(n, r, world)
        out.append(int((~validation_mask(seed, lo, hi, fraction)).sum()))
    return out


@dataclass
class Shard:
    """One worker's rows: training and validation features/targets as numpy arrays."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any


def read_shard(
    path: str | Path,
    features: list[str],
    target: str,
    *,
    rank: int,
    world: int,
    seed: int,
    validation_fraction: float,
    classification: bool,
) -> Shard:
    """Read rows ``[n*r/W, n*(r+1)/W)``: only the row groups that overlap them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    info = inspect(path, features, target)
    lo, hi = shard_bounds(info.num_rows, rank, world)
    groups, start = [], 0
    first_row = None
    for g, rows in enumerate(info.row_group_rows):
        if start < hi and start + rows > lo:
            groups.append(g)
            if first_row is None:
                first_row = start
        start += rows
    cols = [*features, target]
    try:
        table = pq.ParquetFile(path).read_row_groups(groups, columns=cols) if groups else None
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot read rows {lo}..{hi} of {path}: {e}") from None
    if table is None or hi == lo:
        empty = np.zeros((0, len(features)), dtype=np.float32)
        return Shard(empty, np.zeros((0,)), empty, np.zeros((0,)))
    table = table.slice(lo - (first_row or 0), hi - lo)
    if table.num_rows != hi - lo:
        raise DataError(f"{path}: expected {hi - lo} rows in shard {rank}, read {table.num_rows}")
    for c in cols:
        if table.column(c).null_count:
            raise DataError(
                f"column {c!r} of {path} has null values in rows {lo}..{hi}; fill or drop them upstream"
            )
    x = np.stack(
        [table.column(c).to_numpy().astype(np.float32, copy=False) for c in features], axis=1
    )
    if classification:
        y = table.column(target).to_numpy().astype(np.int64)
        if y.size and y.min() < 0:
            raise DataError(f"target {target!r} must hold class indices >= 0 for cross_entropy")
    else:
        y = table.column(target).to_numpy().astype(np.float32).reshape(-1, 1)
    if not np.isfinite(x).all() or (not classification and not np.isfinite(y).all()):
        raise DataError(f"{path} rows {lo}..{hi} hold NaN or infinite values; clean them upstream")
    val = validation_mask(seed, lo, hi, validation_fraction)
    return Shard(
        np.ascontiguousarray(x[~val]),
        np.ascontiguousarray(y[~val]),
        np.ascontiguousarray(x[val]),
        np.ascontiguousarray(y[val]),
    )


def epoch_order(seed: int, epoch: int, rank: int, n_local: int, n_common: int) -> np.ndarray:
    """This worker's row order for ``epoch``: a seeded permutation, cut to the length every
    worker shares (so all workers take the same number of steps)."""
    import numpy as np

    rng = np.random.Generator(np.random.PCG64([seed, epoch, rank]))
    return rng.permutation(n_local)[:n_common]
