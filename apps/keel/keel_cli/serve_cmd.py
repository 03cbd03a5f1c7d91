"""`keel serve batch`: score a Parquet file with a verified model, in bounded memory.

Wiring only: keel.serving's ``score_parquet`` does the work with the same predictor the
online server uses. ``--model`` is an artifact path or ``name@alias`` in the registry
(embedded in ``--home``, or an MLflow server with ``--tracking-uri`` + ``--db-url``).
"""

from __future__ import annotations

import json
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
) -> None:
    """Score INPUT into OUTPUT: input columns + one column per model output."""
    from keel.artifacts import ArtifactError, TrustPolicy
    from keel.serving import (
        ModelRef,
        ServingError,
        load_from_registry,
        load_predictor,
        score_parquet,
    )

    if not trust_key and not allow_unsigned:
        raise _fail("give --trust-key PUB.pem (repeatable) or --allow-unsigned")
    try:
        policy = TrustPolicy.from_files(trust_key or [], allow_unsigned=allow_unsigned)
    except ArtifactError as e:
        raise _fail(str(e)) from None
    try:
        if "@" in model and not Path(model).exists():
            from keel.registry_client import RegistryError, open_registry
            from keel_cli.config import load_config

            try:
                reg = (
                    open_registry(tracking_uri=tracking_uri, db_url=db_url)
                    if tracking_uri
                    else open_registry(home or load_config().home)
                )
            except RegistryError as e:
                raise _fail(f"registry: {e}", 1) from None
            with reg, tempfile.TemporaryDirectory(prefix="keel-batch-") as tmp:
                _, p = load_from_registry(
                    reg, ModelRef.parse(model), policy, workdir=Path(tmp), threads=threads
                )
        else:
            p = load_predictor(model, policy, threads=threads)
        report = score_parquet(p, input, output, chunk_rows=chunk_rows, batch_rows=batch_rows)
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
            }
        )
    )
