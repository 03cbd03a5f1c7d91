"""Batch scoring on a Ray cluster: Ray Data partitions the input, the same predictor scores it.

``score_parquet_ray`` splits the Parquet input into partitions of ``block_rows`` rows (slices
of its row groups, from the file's metadata: nothing is read up front), makes them a Ray Dataset
(one block per partition) and scores the blocks on a fixed pool of ``workers`` actors. Each
actor verifies and loads the artifact itself (``load_predictor`` with the caller's trust
keys: the cluster runs only verified models, never a pickled one), reads its partition and
scores it with ``score_frame`` — the code the Polars path runs, with the partition's row
offset — so the output is the same file (input columns + output columns, in input order:
Ray Data's ``preserve_order``) and a bad input fails naming the same columns, counts and
first bad rows. The driver writes the blocks to one Parquet file as they arrive (bounded
memory; no partial file is left on failure).

On a multi-node cluster the artifact and the input must be on storage every node reads, and
the workers need keel installed (or a ``runtime_env``), as for any Ray job.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from keel.artifacts import TrustPolicy
from keel.serving._batch import BatchReport, score_frame, write_scored
from keel.serving._errors import ConfigError, InvalidInputError, UnavailableError
from keel.serving._predictor import load_predictor

DEFAULT_OBJECT_STORE_BYTES = 128 << 20


class _Scorer:
    """One Ray Data actor: verifies and loads the model once, then scores partitions."""

    def __init__(
        self,
        artifact: str,
        public_keys: tuple[bytes, ...],
        allow_unsigned: bool,
        version: str,
        input_path: str,
        batch_rows: int,
        threads: int,
        device: str,
    ) -> None:
        # the policy travels as its PEM keys (key objects do not pickle)
        policy = TrustPolicy(public_keys, allow_unsigned=allow_unsigned)
        self.p = load_predictor(artifact, policy, version=version, threads=threads, device=device)
        self.input_path = input_path
        self.batch_rows = batch_rows

    def __call__(self, batch: Any) -> Any:
        """``batch``: one row, column ``part`` = a partition as JSON (see ``partitions``)."""
        import polars as pl
        import pyarrow as pa
        import pyarrow.parquet as pq

        (part,) = (json.loads(v) for v in batch.column("part").to_pylist())
        f = pq.ParquetFile(self.input_path)
        tables = [f.read_row_group(rg).slice(skip, take) for rg, skip, take, _ in part]
        df = pl.from_arrow(pa.concat_tables(tables))
        assert isinstance(df, pl.DataFrame)
        offset = part[0][3]
        return score_frame(self.p, df, batch_rows=self.batch_rows, offset=offset).to_arrow()


def partitions(row_groups: list[int], block_rows: int) -> list[list[tuple[int, int, int, int]]]:
    """Partitions of ``block_rows`` rows (the last one fewer) as lists of (row group, skip,
    take, offset in the file); a row group that straddles two partitions is read by both."""
    parts: list[list[tuple[int, int, int, int]]] = []
    cur: list[tuple[int, int, int, int]] = []
    cur_rows = offset = 0
    for rg, n in enumerate(row_groups):
        skip = 0
        while skip < n:
            take = min(n - skip, block_rows - cur_rows)
            cur.append((rg, skip, take, offset))
            cur_rows += take
            skip += take
            offset += take
            if cur_rows >= block_rows:
                parts.append(cur)
                cur, cur_rows = [], 0
    if cur:
        parts.append(cur)
    return parts


def connect_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_bytes: int | None = None,
    tmp_dir: str | None = None,
) -> None:
    """Join ``address`` (or ``$RAY_ADDRESS``), or start a bounded local Ray instance: no
    dashboard, ``object_store_bytes`` (128 MiB unless told), a short temp dir (Ray's socket
    paths must stay under 108 bytes). A process already connected is left as it is."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        # no-infer-dep: serve.pex stays without Ray; keel.pex has it (through keel.trainer)
        import ray  # pants: no-infer-dep
    except ImportError as e:  # pragma: no cover - a dependency
        raise UnavailableError(f"ray is not installed: {e}") from None
    if ray.is_initialized():
        return
    addr = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if addr:
            ray.init(address=addr, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(
                num_cpus=num_cpus or os.cpu_count() or 1,
                object_store_memory=object_store_bytes or DEFAULT_OBJECT_STORE_BYTES,
                include_dashboard=False,
                _temp_dir=tmp_dir or os.environ.get("RAY_TMPDIR") or f"/tmp/keel-ray-{os.getuid()}",
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
    except Exception as e:  # ray.init raises bare Exception too (e.g. a start-up timeout)
        where = f"the Ray cluster at {addr}" if addr else "a local Ray instance"
        raise UnavailableError(f"cannot start or reach {where}: {e}") from None


def _invalid_cause(e: BaseException) -> InvalidInputError | None:
    """The InvalidInputError a Ray Data actor raised, from the wrapper Ray hands back."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        nxt = getattr(cur, "cause", None)  # RayTaskError: the worker's own exception
        if isinstance(nxt, InvalidInputError):
            return nxt
        if isinstance(cur, InvalidInputError) and type(cur).__module__.startswith("keel."):
            return cur
        cur = nxt if isinstance(nxt, BaseException) else (cur.__cause__ or cur.__context__)
    return None


def score_parquet_ray(
    artifact: str | Path,
    policy: TrustPolicy,
    input_path: str | Path,
    output_path: str | Path,
    *,
    workers: int | None = None,
    block_rows: int = 65_536,
    batch_rows: int = 4096,
    threads: int = 1,
    version: str = "",
    device: str = "cpu",
    address: str | None = None,
) -> BatchReport:
    """Score ``input_path`` into ``output_path`` on Ray (see the module docstring).

    ``workers``: scoring actors (1 CPU each); None: the cluster's CPUs, at most one per
    partition. ``block_rows``: rows per partition (the Polars path's ``chunk_rows``).
    Connects to Ray first if this process is not connected (``connect_ray(address)``). The
    report's ``chunks`` counts the partitions scored."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if block_rows < 1 or batch_rows < 1:
        raise InvalidInputError("block_rows and batch_rows must be >= 1")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    src, dst = Path(input_path), Path(output_path)
    if not src.is_file():
        raise InvalidInputError(f"input {src} does not exist or is not a file")
    try:
        meta = pq.ParquetFile(src).metadata
    except (pa.ArrowInvalid, OSError) as e:
        raise InvalidInputError(f"input {src} is not a readable Parquet file: {e}") from None
    parts = partitions([meta.row_group(i).num_rows for i in range(meta.num_row_groups)], block_rows)
    # Verify and load here first: a refused artifact fails before any cluster work, and the
    # report (and an empty input's output) needs the model's name and digest.
    p = load_predictor(artifact, policy, version=version, threads=threads, device=device)
    scored = (
        _score_on_ray(
            p.version, artifact, policy, src, parts, workers, batch_rows, threads, device, address
        )
        if parts
        else iter(())
    )
    schema = meta.schema.to_arrow_schema()
    rows = write_scored(p, scored, schema, dst, batch_rows=batch_rows)
    return BatchReport(rows=rows, chunks=len(parts), output=dst, model=p.name, digest=p.digest)


def _score_on_ray(
    version: str,
    artifact: str | Path,
    policy: TrustPolicy,
    src: Path,
    parts: list[list[tuple[int, int, int, int]]],
    workers: int | None,
    batch_rows: int,
    threads: int,
    device: str,
    address: str | None,
) -> Any:
    """The scored partitions as Arrow tables, in input order."""
    import pyarrow as pa

    connect_ray(address)
    import ray  # pants: no-infer-dep

    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    workers = min(workers, len(parts))
    ctx = ray.data.DataContext.get_current()
    keep = ctx.execution_options.preserve_order, ctx.raise_original_map_exception
    ctx.execution_options.preserve_order = True  # output rows in input order
    ctx.raise_original_map_exception = True  # a bad input's InvalidInputError, unwrapped
    items = [{"part": json.dumps(part)} for part in parts]
    try:
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _Scorer,
            fn_constructor_kwargs={
                "artifact": str(Path(artifact).resolve()),
                "public_keys": policy.public_keys,
                "allow_unsigned": policy.allow_unsigned,
                "version": version,
                "input_path": str(src.resolve()),
                "batch_rows": batch_rows,
                "threads": threads,
                "device": device,
            },
            batch_size=1,  # one partition per call
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
        )
        try:
            for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                assert isinstance(table, pa.Table)
                if table.num_rows:
                    yield table
        except Exception as e:
            bad = _invalid_cause(e)
            if bad is None:
                raise UnavailableError(
                    f"Ray Data batch scoring failed: {type(e).__name__}: {str(e)[:500]}"
                ) from None
            # Ray appends retry advice to the message: keep keel's own (first) line
            raise InvalidInputError(str(bad).split("\n", 1)[0], bad.errors) from None
    finally:
        ctx.execution_options.preserve_order, ctx.raise_original_map_exception = keep
