"""`keel`: the engineer's CLI. Wiring only — every command calls into a library.

Heavy imports (polars, torch, ray, mlflow) happen inside commands, so
`keel --help` and `keel doctor` start fast.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from keel_cli import cmd_drift, cmd_events, cmd_features, cmd_registry
from keel_cli.config import ConfigError, KeelConfig, load_config
from keel_cli.version import keel_version

app = typer.Typer(
    name="keel",
    help="Keel: the ML platform loop — events, features, training, registry, serving, drift.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(cmd_events.app, name="events")
app.add_typer(cmd_features.app, name="features")
app.add_typer(cmd_drift.app, name="drift")
app.add_typer(cmd_registry.app, name="registry")

console = Console()
err_console = Console(stderr=True)


def _config(config: Path | None) -> KeelConfig:
    try:
        return load_config(toml_path=config)
    except ConfigError as e:
        err_console.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2) from None


ConfigOpt = typer.Option(None, "--config", "-c", help="TOML config file (default: $KEEL_CONFIG)")


@app.command()
def version() -> None:
    """Print Keel's version."""
    console.print(f"keel {keel_version()}")


@app.command()
def demo(
    config: Path | None = ConfigOpt,
    seed: int = typer.Option(7, help="seed for the synthetic transaction stream"),
) -> None:
    """Run the Keel loop end to end on embedded defaults (no services needed).

    Card transactions with drift injected partway -> event bus -> features (batch and
    streaming engines, checked equal) -> reference profile -> drift monitor -> HTML report.
    """
    from keel_cli.demo import run_demo

    cfg = _config(config)
    report = run_demo(cfg.home.expanduser().resolve(), seed, console)
    console.print(f"\n[bold green]report:[/] {report}")


@app.command()
def doctor(config: Path | None = ConfigOpt) -> None:
    """Check Python, Pants, KEEL_HOME, services (PostgreSQL, Redis, NATS, MLflow, Ray) and GPU."""
    from keel_cli.doctor import run_checks

    cfg = _config(config)
    table = Table(title=f"keel doctor — keel {keel_version()}")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail")
    table.add_column("what to do")
    failed_required = False
    for c in run_checks(cfg, Path.cwd()):
        if c.ok:
            status = "[green]ok[/]"
        elif c.required:
            status = "[bold red]FAIL[/]"
            failed_required = True
        else:
            status = "[yellow]unavailable[/]"
        table.add_row(c.name, status, c.detail, c.hint)
    console.print(table)
    if failed_required:
        raise typer.Exit(1)


def main() -> None:
    """Entry point: a Keel library error becomes one clear line and exit code 1.

    Library errors already say what was wrong and what to do (STYLE.md #8); a
    traceback from deep inside would only hide that. Anything else is a bug and
    keeps its traceback.
    """
    try:
        app(prog_name="keel")  # usage errors: click prints them and exits 2
    except Exception as e:
        if not type(e).__module__.startswith("keel."):
            raise
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
