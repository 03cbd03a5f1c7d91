"""Batch scoring on a Ray cluster: Ray Data partitions the input, the same predictor scores it.

``score_parquet_ray`` reads the Parquet input with Ray Data (``read_parquet``: one read task
per file fragment), re-blocks it into batches of ``block_rows`` and scores them on a fixed
pool of ``workers`` actors. Each actor verifies and loads the artifact itself
(``load_predictor`` with the caller's ``TrustPolicy``: the cluster runs only verified models,
never a pickled one) and scores with ``score_frame`` — the code the Polars path runs — so
the output is the same file: input columns + output columns, in input order (Ray Data's
``preserve_order``), written by the driver to one Parquet file as blocks arrive (bounded
memory on the driver; no partial file is left on failure).

On a multi-node cluster the artifact and the input must be on storage every node reads, and
the workers need keel installed (or a ``runtime_env``), as for any Ray job.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from keel.artifacts import TrustPolicy
from keel.serving._batch import BatchReport, score_frame
from keel.serving._errors import ConfigError, InvalidInputError, UnavailableError
from keel.serving._predictor import load_predictor

DEFAULT_OBJECT_STORE_BYTES = 128 << 20


class _Scorer:
    """One Ray Data actor: verifies and loads the model once, then scores Arrow batches."""

    def __init__(
        self,
        artifact: str,
        public_keys: tuple[bytes, ...],
        allow_unsigned: bool,
        version: str,
        batch_rows: int,
        threads: int,
        device: str,
    ) -> None:
        # the policy travels as its PEM keys (key objects do not pickle)
        policy = TrustPolicy(public_keys, allow_unsigned=allow_unsigned)
        self.p = load_predictor(artifact, policy, version=version, threads=threads, device=device)
        self.batch_rows = batch_rows

    def __call__(self, table: Any) -> Any:
        import polars as pl

        df = pl.from_arrow(table)
        assert isinstance(df, pl.DataFrame)
        return score_frame(self.p, df, batch_rows=self.batch_rows).to_arrow()


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
    except (ConnectionError, RuntimeError, ValueError, OSError) as e:
        where = f"the Ray cluster at {addr}" if addr else "a local Ray instance"
        raise UnavailableError(f"cannot start or reach {where}: {e}") from None


def _invalid_cause(e: BaseException) -> InvalidInputError | None:
    """The InvalidInputError a Ray Data actor raised, from the wrapper Ray hands back."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, InvalidInputError):
            return cur
        nxt = getattr(cur, "cause", None)
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

    ``workers``: scoring actors (1 CPU each); None: the cluster's CPUs minus one for the read
    tasks (at least 1). ``block_rows``: rows per scored batch (the Polars path's
    ``chunk_rows``). Connects to Ray first if this process is not connected
    (``connect_ray(address)``). The report's ``chunks`` counts the blocks scored.

    A block that fails validation stops the run with InvalidInputError naming each bad
    column and its bad-row count; ``first_row_in_block`` is the row's index within the
    failing block (Ray Data blocks carry no file offset)."""
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
        schema = pq.read_schema(src)
    except (pa.ArrowInvalid, OSError) as e:
        raise InvalidInputError(f"input {src} is not a readable Parquet file: {e}") from None
    # Verify and load here first: a refused artifact fails before any cluster work, and the
    # report (and an empty input's output) needs the model's name and digest.
    p = load_predictor(artifact, policy, version=version, threads=threads, device=device)
    connect_ray(address)
    import ray  # pants: no-infer-dep

    if workers is None:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = max(1, cpus - 1)
    ctx = ray.data.DataContext.get_current()
    keep_order = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # output rows in input order
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial")
    writer = None
    rows = blocks = 0
    try:
        ds = ray.data.read_parquet(str(src.resolve())).map_batches(
            _Scorer,
            fn_constructor_kwargs={
                "artifact": str(Path(artifact).resolve()),
                "public_keys": policy.public_keys,
                "allow_unsigned": policy.allow_unsigned,
                "version": p.version,
                "batch_rows": batch_rows,
                "threads": threads,
                "device": device,
            },
            batch_size=block_rows,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
        )
        try:
            for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                if table.num_rows == 0:
                    continue
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                rows += table.num_rows
                blocks += 1
        except Exception as e:
            bad = _invalid_cause(e)
            if bad is None:
                raise UnavailableError(
                    f"Ray Data batch scoring failed: {type(e).__name__}: {str(e)[:500]}"
                ) from None
            errors = [
                {("first_row_in_block" if k == "first_row" else k): v for k, v in err.items()}
                for err in bad.errors
            ]
            raise InvalidInputError(str(bad), errors) from None
        if writer is None:  # empty input: an empty output with the output columns
            import polars as pl

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
    finally:
        ctx.execution_options.preserve_order = keep_order
    return BatchReport(rows=rows, chunks=blocks, output=dst, model=p.name, digest=p.digest)
