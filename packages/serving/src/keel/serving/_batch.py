"""Batch scoring: Parquet in, Parquet out, in bounded memory, with the online predictor.

The input is read ``chunk_rows`` rows at a time (pyarrow record batches, handed to Polars
without a copy), validated column-wise against the same input schema the server uses
(vectorised: no per-row Python), scored in forward passes of ``batch_rows``, and appended
to the output file (input columns + output columns). Peak memory is O(chunk_rows), not
O(file). A chunk that fails validation stops the run with an InvalidInputError naming each
bad column, how many rows and the first bad row's index in the file; the partial output
is removed so a failed run never leaves a plausible-looking file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from keel.serving._errors import InvalidInputError
from keel.serving._predictor import Predictor
from keel.serving._schema import Field


@dataclass(frozen=True)
class BatchReport:
    rows: int
    chunks: int
    output: Path
    model: str
    digest: str


def _column(f: Field, s: pl.Series, offset: int, errors: list[dict[str, Any]]) -> np.ndarray:
    def bad(mask: pl.Series, what: str) -> None:
        n = int(mask.sum())
        if n:
            first = int(mask.arg_max() or 0) + offset
            errors.append({"field": f.name, "error": what, "rows": n, "first_row": first})

    dt = s.dtype
    nulls = s.is_null()
    if not f.nullable:
        bad(nulls, "is null (not nullable)")
    if f.dtype == "bool":
        if dt != pl.Boolean:
            errors.append({"field": f.name, "error": f"must be a boolean column, got {dt}"})
            return np.zeros(len(s), np.float32)
        return s.cast(pl.Float32).fill_null(float("nan")).to_numpy()
    if f.dtype == "category":
        if dt not in (pl.String, pl.Categorical, pl.Enum):
            errors.append({"field": f.name, "error": f"must be a string column, got {dt}"})
            return np.zeros(len(s), np.float32)
        cats = list(f.categories or ())
        idx = s.cast(pl.String).replace_strict(
            cats, list(range(len(cats))), default=-1, return_dtype=pl.Int64
        )
        bad((idx == -1) & ~nulls, f"has values outside {cats[:20]}")
        return idx.cast(pl.Float32).fill_null(float("nan")).to_numpy()
    if not dt.is_numeric() or dt == pl.Boolean:
        errors.append({"field": f.name, "error": f"must be a numeric column ({f.dtype}), got {dt}"})
        return np.zeros(len(s), np.float32)
    x = s.cast(pl.Float64)
    if dt.is_float():
        bad(x.is_nan() | x.is_infinite(), "has NaN or infinite values")
        if f.dtype in ("int32", "int64"):
            bad((x.round(0) != x) & x.is_finite(), f"has non-integer values ({f.dtype})")
    if f.min is not None:
        bad(x < f.min, f"has values < {f.min}")
    if f.max is not None:
        bad(x > f.max, f"has values > {f.max}")
    return x.cast(pl.Float32).fill_null(float("nan")).to_numpy()


def encode_frame(p: Predictor, df: pl.DataFrame, offset: int = 0) -> np.ndarray:
    """Validate ``df``'s schema columns and encode them (vectorised) as the model's matrix."""
    errors: list[dict[str, Any]] = []
    missing = [f.name for f in p.inputs.fields if f.name not in df.columns]
    for name in missing:
        errors.append({"field": name, "error": "column is missing"})
    cols = [
        _column(f, df.get_column(f.name), offset, errors)
        for f in p.inputs.fields
        if f.name in df.columns
    ]
    if errors:
        names = ", ".join(sorted({e["field"] for e in errors}))
        raise InvalidInputError(f"input fails the model's schema: {names}", errors)
    if not cols:
        return np.zeros((df.height, 0), np.float32)
    return np.ascontiguousarray(np.column_stack(cols), dtype=np.float32)


def score_frame(
    p: Predictor, df: pl.DataFrame, *, batch_rows: int = 4096, offset: int = 0
) -> pl.DataFrame:
    """``df`` plus one column per model output (names from the output schema)."""
    x = encode_frame(p, df, offset)
    ys = [p.predict(x[i : i + batch_rows]) for i in range(0, x.shape[0], batch_rows)]
    y = np.concatenate(ys) if ys else np.zeros((0, len(p.outputs.fields)), np.float32)
    clash = [n for n in p.outputs.names if n in df.columns]
    if clash:
        raise InvalidInputError(
            f"input already has output column(s) {clash}; rename them",
            [{"field": c, "error": "clashes with a model output"} for c in clash],
        )
    outs = p.outputs.decode(y) if y.shape[0] else {n: [] for n in p.outputs.names}
    return df.with_columns([pl.Series(k, v) for k, v in outs.items()])


def write_scored(
    p: Predictor,
    tables: Iterator[Any],
    schema: Any,
    output_path: str | Path,
    *,
    batch_rows: int = 4096,
) -> int:
    """Write scored Arrow ``tables`` to ``output_path`` as they come (one Parquet file;
    written as ``.<name>.partial`` and renamed at the end, removed if anything fails). No
    table at all: an empty file with the columns of ``schema`` (the input's) + the outputs.
    Returns the rows written."""
    import pyarrow.parquet as pq

    dst = Path(output_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial")
    writer = None
    rows = 0
    try:
        for out in tables:
            if writer is None:
                writer = pq.ParquetWriter(tmp, out.schema)
            writer.write_table(out)
            rows += out.num_rows
        if writer is None:  # empty input: an empty output with the output columns
            head = pl.from_arrow(schema.empty_table())
            assert isinstance(head, pl.DataFrame)
            pq.write_table(score_frame(p, head, batch_rows=batch_rows).to_arrow(), tmp)
        else:
            writer.close()
            writer = None
        os.replace(tmp, dst)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return rows


def score_parquet(
    p: Predictor,
    input_path: str | Path,
    output_path: str | Path,
    *,
    chunk_rows: int = 65_536,
    batch_rows: int = 4096,
) -> BatchReport:
    """Score ``input_path`` into ``output_path`` chunk by chunk (bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if chunk_rows < 1 or batch_rows < 1:
        raise InvalidInputError("chunk_rows and batch_rows must be >= 1")
    src, dst = Path(input_path), Path(output_path)
    if not src.is_file():
        raise InvalidInputError(f"input {src} does not exist or is not a file")
    try:
        reader = pq.ParquetFile(src)
    except (pa.ArrowInvalid, OSError) as e:
        raise InvalidInputError(f"input {src} is not a readable Parquet file: {e}") from None
    chunks = 0

    def scored() -> Iterator[Any]:
        nonlocal chunks
        offset = 0
        for rb in reader.iter_batches(batch_size=chunk_rows):
            df = pl.from_arrow(rb)
            assert isinstance(df, pl.DataFrame)
            yield score_frame(p, df, batch_rows=batch_rows, offset=offset).to_arrow()
            offset += df.height
            chunks += 1

    rows = write_scored(p, scored(), reader.schema_arrow, dst, batch_rows=batch_rows)
    return BatchReport(rows=rows, chunks=chunks, output=dst, model=p.name, digest=p.digest)
