"""`keel serve batch`: score a Parquet file with a verified model, in bounded memory.

Wiring only: keel.serving's ``score_parquet`` (Polars, streaming) or, on a Ray cluster,
``score_parquet_ray`` (Ray Data partitions the input) does the work with the same predictor
code the online server uses; both write the same file. ``--model`` is an artifact path or
``name@alias`` in the registry (embedded in ``--home``, or an MLflow server with
``--tracking-uri`` + ``--db-url``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(help="Serve models: batch scoring (the online server is the `serve` app).")
err_console = Console(stderr=True)


def _fail(msg: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {msg}")
    return typer.Exit(code)


@app.command()
def batch(
    model: Annotated[str, typer.Option("--model", "-m", help="artifact path or name@alias")],
    input: Annotated[Path, typer.Option("--input", "-i", help="input Parquet file")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output Parquet file")],
    trust_key: Annotated[
        list[Path] | None,
        typer.Option("--trust-key", help="trusted signer public key (PEM); repeatable"),
    ] = None,
    allow_unsigned: Annotated[bool, typer.Option(help="accept unsigned artifacts")] = False,
    chunk_rows: Annotated[int, typer.Option(min=1, help="rows read per chunk")] = 65_536,
    batch_rows: Annotated[int, typer.Option(min=1, help="rows per forward pass")] = 4096,
    threads: Annotated[int, typer.Option(min=1, help="torch threads")] = 1,
    home: Annotated[Path | None, typer.Option(help="KEEL_HOME of the embedded registry")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow server URL")] = None,
    db_url: Annotated[str | None, typer.Option(help="the MLflow server's PostgreSQL URL")] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="polars (streaming, this process), ray (Ray Data on --ray-address /"
            " $RAY_ADDRESS, or a local Ray), auto: ray when a Ray address is given"
        ),
    ] = "auto",
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: $RAY_ADDRESS)")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="ray: scoring actors (default: cluster CPUs - 1)")
    ] = None,
) -> None:
    """Score INPUT into OUTPUT: input columns + one column per model output."""
    if engine not in ("auto", "polars", "ray"):
        raise _fail(f"--engine must be auto, polars or ray (got {engine!r})")
    address = ray_address or os.environ.get("RAY_ADDRESS") or None
    use_ray = engine == "ray" or (engine == "auto" and address is not None)
    from keel.artifacts import ArtifactError, TrustPolicy
    from keel.serving import (
        ModelRef,
        ServingError,
        download_from_registry,
        load_predictor,
        score_parquet,
        score_parquet_ray,
    )

    def run(path: Path, version: str = "") -> Any:
        if use_ray:
            return score_parquet_ray(
                path,
                policy,
                input,
                output,
                workers=workers,
                block_rows=chunk_rows,
                batch_rows=batch_rows,
                threads=threads,
                version=version,
                address=address,
            )
        p = load_predictor(path, policy, version=version, threads=threads)
        return score_parquet(p, input, output, chunk_rows=chunk_rows, batch_rows=batch_rows)

    if not trust_key and not allow_unsigned:
        raise _fail("give --trust-key PUB.pem (repeatable) or --allow-unsigned")
    try:
        policy = TrustPolicy.from_files(trust_key or [], allow_unsigned=allow_unsigned)
    except ArtifactError as e:
        raise _fail(str(e)) from None
    try:
        if "@" in model and not Path(model).exists():
            from keel_cli.config import load_config

            from keel.registry_client import RegistryError, open_registry

            try:
                reg = (
                    open_registry(tracking_uri=tracking_uri, db_url=db_url)
                    if tracking_uri
                    else open_registry(home or load_config().home)
                )
            except RegistryError as e:
                raise _fail(f"registry: {e}", 1) from None
            with reg, tempfile.TemporaryDirectory(prefix="keel-batch-") as tmp:
                version, archive = download_from_registry(
                    reg, ModelRef.parse(model), workdir=Path(tmp)
                )
                report = run(archive, str(version))
        else:
            report = run(Path(model))
    except ServingError as e:
        errors: Any = getattr(e, "errors", None)
        detail = f" {json.dumps(errors[:5])}" if errors else ""
        raise _fail(f"{e}{detail}", 1) from None
    typer.echo(
        json.dumps(
            {
                "rows": report.rows,
                "chunks": report.chunks,
                "output": str(report.output),
                "model": report.model,
                "digest": report.digest,
                "engine": "ray" if use_ray else "polars",
            }
        )
    )
