"""`keel`: the engineer's CLI. Wiring only — every command calls into a library.

Heavy imports (polars, numpy) happen inside commands, so `keel --help` and
`keel doctor` start fast. Every error is one line on stderr and a non-zero exit
(2: usage or configuration, 1: anything else); `KEEL_DEBUG=1` adds the traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from keel_cli import (
    cmd_artifact,
    cmd_drift,
    cmd_events,
    cmd_features,
    cmd_governance,
    cmd_pipelines,
    cmd_registry,
    cmd_reproduce,
    cmd_train,
    serve_cmd,
)
from keel_cli.config import ConfigError, KeelConfig, load_config
from keel_cli.version import keel_version
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="keel",
    help=(
        "Keel: event bus, features (batch + streaming), drift monitoring, signed model"
        " artifacts, the model registry and model governance, on embedded defaults or real"
        " services, training on Ray, serving (`keel serve batch`; online: the serve app) and"
        " the retraining controller's core (`keel retrain`, `keel provenance`), `keel reproduce`"
        " and the evidence pack (`keel governance pack`). Planned, not built yet: the closed"
        " loop end to end."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
app.add_typer(cmd_events.app, name="events")
app.add_typer(cmd_features.app, name="features")
app.add_typer(cmd_drift.app, name="drift")
app.add_typer(cmd_governance.app, name="governance")
app.add_typer(cmd_artifact.app, name="artifact")
app.add_typer(cmd_registry.app, name="registry")
app.add_typer(serve_cmd.app, name="serve")
app.add_typer(cmd_pipelines.retrain_app, name="retrain")
app.add_typer(cmd_pipelines.provenance_app, name="provenance")
app.command(name="train")(cmd_train.train)
app.command(name="reproduce")(cmd_reproduce.reproduce)

console = Console()
err_console = Console(stderr=True)


def _config(config: Path | None) -> KeelConfig:
    try:
        return load_config(toml_path=config)
    except ConfigError as e:
        _error(str(e))
        raise typer.Exit(2) from None


def _error(message: str) -> None:
    """One line on stderr: `error: <message>` (newlines folded)."""
    line = " ".join(message.split())
    err_console.print(f"[bold red]error:[/] {line}", highlight=False, markup=True, soft_wrap=True)


ConfigOpt = typer.Option(None, "--config", "-c", help="TOML config file (default: $KEEL_CONFIG)")


@app.command()
def version() -> None:
    """Print Keel's version."""
    console.print(f"keel {keel_version()}")


@app.command()
def demo(
    config: Path | None = ConfigOpt,
    seed: int = typer.Option(7, help="seed for the synthetic transaction stream (0 .. 2**32-1)"),
    per_day: int = typer.Option(
        3_000, "--per-day", help="transactions per simulated day (>= 1000; 10 days)"
    ),
) -> None:
    """Run the whole Keel loop end to end on embedded defaults (no services needed).

    Card transactions -> event bus -> features (batch and streaming engines, checked equal)
    -> a model trained on Ray, signed, registered as champion -> served (prediction log) ->
    injected drift detected -> retrain run: gates, approval, challenger, canary -> promoted.
    Writes KEEL_HOME/demo/index.html (the loop at a glance) and the drift report beside it.
    """
    from keel_cli.demo import run_demo

    cfg = _config(config)
    report = run_demo(cfg.home.expanduser().resolve(), seed, console, per_day=per_day)
    console.print(f"\n[bold green]drift report:[/] {report}")
    if (report.parent / "index.html").exists():
        console.print(f"[bold green]the loop:[/] {report.parent / 'index.html'}")


@app.command()
def doctor(
    config: Path | None = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Check Python, Pants, KEEL_HOME, reachable services and GPUs (secrets masked)."""
    from keel_cli.doctor import run_checks

    cfg = _config(config)
    checks = run_checks(cfg, Path.cwd())
    failed_required = any(c.required and not c.ok for c in checks)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "keel_version": keel_version(),
                    "ok": not failed_required,
                    "checks": [c.to_dict() for c in checks],
                }
            )
        )
    else:
        table = Table(title=f"keel doctor — keel {keel_version()}")
        for column in ("check", "status", "detail", "what to do"):
            table.add_column(column)
        style = {"ok": "[green]ok[/]", "FAIL": "[bold red]FAIL[/]"}
        for c in checks:
            table.add_row(c.name, style.get(c.status, "[yellow]unavailable[/]"), c.detail, c.hint)
        console.print(table, highlight=False)
    if failed_required:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point: every error becomes one line on stderr and a non-zero exit.

    Library errors already say what was wrong and what to do; a traceback from
    deep inside would only hide that. `KEEL_DEBUG=1` re-raises for the traceback.
    """
    try:
        code = app(args=argv, prog_name="keel", standalone_mode=False)
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        _error("aborted")
        code = 130
    except typer.TyperException as e:  # usage errors: bad option, missing argument
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if message:  # empty for a group called without a command: its help was printed
            _error(message)
        code = int(getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        _error("interrupted")
        code = 130
    except Exception as e:
        if os.environ.get("KEEL_DEBUG"):
            raise
        known = type(e).__module__.startswith(("keel.", "keel_cli")) or isinstance(e, OSError)
        _error(str(e) if known else f"{type(e).__name__}: {e} (KEEL_DEBUG=1 shows the traceback)")
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
