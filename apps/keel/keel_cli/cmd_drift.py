"""`keel drift profile|check|report`: reference profiles, checks and reports from files.

Data files are Parquet, CSV or NDJSON (by suffix). Heavy imports (polars,
keel.drift, matplotlib) happen inside the commands. `check` decides with the library's
own `DriftPolicy().decide(result, [])` and fails closed: a data-quality error (ERROR) or
a window that cannot be judged (NOT_JUDGED) exits 1 under any `--fail-on` but `never`.
Bad input is one line on stderr and exit 2.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    import polars as pl

    from keel.drift import DriftResult, PolicyDecision

app = typer.Typer(help="Drift: build reference profiles, check data against them, write reports.")
console = Console()
err_console = Console(stderr=True)

_READERS = {
    ".parquet": "read_parquet",
    ".pq": "read_parquet",
    ".csv": "read_csv",
    ".ndjson": "read_ndjson",
    ".jsonl": "read_ndjson",
}


def _fail(msg: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {msg}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def _read(path: Path) -> pl.DataFrame:
    import polars as pl

    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise _fail(
            f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(sorted(_READERS))}"
        )
    if not path.exists():
        raise _fail(f"{path} does not exist")
    try:
        frame: pl.DataFrame = getattr(pl, reader)(path)
    except Exception as exc:  # polars raises many types; report them all the same way
        raise _fail(f"cannot read {path}: {exc}") from exc
    return frame


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@app.command()
def profile(
    data: Annotated[Path, typer.Argument(help="training data (Parquet, CSV or NDJSON)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write the profile (.json)")],
    columns: Annotated[
        str | None, typer.Option(help="comma-separated columns (default: all)")
    ] = None,
    categorical: Annotated[
        str | None, typer.Option(help="comma-separated numeric columns to treat as categorical")
    ] = None,
    sketch_size: Annotated[
        int, typer.Option(help="quantile-sketch points per numeric column")
    ] = 1024,
    max_categories: Annotated[
        int, typer.Option(help="categories kept per column (the rest: __other__)")
    ] = 100,
    chunk_rows: Annotated[
        int, typer.Option(help="rows per chunk (profiles are built per chunk and merged)")
    ] = 250_000,
    seed: Annotated[int, typer.Option(help="seed of the joint row sample")] = 0,
) -> None:
    """Build a reference profile from training data (chunked, merged, with progress)."""
    import numpy as np

    from keel.drift import DriftError, ProfileOptions, build_profile

    frame = _read(data)
    try:
        opts = ProfileOptions(sketch_size=sketch_size, max_categories=max_categories)
        if chunk_rows < 1:
            raise _fail("--chunk-rows must be >= 1")
        rng = np.random.default_rng(seed)
        n_chunks = max(1, -(-frame.height // chunk_rows))
        result = None
        with _progress() as progress:
            task = progress.add_task(f"profiling {data.name}", total=n_chunks)
            for i in range(n_chunks):
                part = frame.slice(i * chunk_rows, chunk_rows)
                p = build_profile(
                    part,
                    columns=_split(columns),
                    categorical=_split(categorical) or (),
                    options=opts,
                    rng=rng,
                    metadata={"source": str(data)},
                    created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                )
                result = p if result is None else result.merge(p, rng=rng)
                progress.advance(task)
        assert result is not None
        path = result.save(out)
    except DriftError as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc.strerror or exc}") from exc
    console.print(
        f"[green]profile written[/] {path} ({path.stat().st_size / 1024:.0f} KiB): {result.row_count:,} rows, "
        f"{len(result.numeric_columns)} numeric, {len(result.categorical_columns)} categorical columns"
    )


def _summary_table(result: DriftResult, decision: PolicyDecision, top: int) -> Table:
    table = Table(title=f"drift check: {decision.decision.value.upper()} - {decision.reason}")
    for col in ("feature", "kind", "score", "adj. p", "PSI", "KS D", "W/std", "chi2 p", "status"):
        table.add_column(col)
    scores = decision.scores
    names = sorted(result.features, key=lambda n: (-scores.get(n, 0.0), n))[:top]
    for n in names:
        fd = result.features[n]
        status = (
            "[red]drift[/]"
            if n in decision.drifted
            else "[yellow]warn[/]"
            if n in decision.warned
            else "[dim]not judged[/]"
            if n in decision.not_judged
            else "[green]ok[/]"
        )

        def f(v: float | None) -> str:
            return "-" if v is None or math.isnan(v) else f"{v:.3g}"

        table.add_row(
            n,
            fd.kind,
            f(scores.get(n)),
            f(decision.p_values.get(n)),
            f(fd.psi),
            f(fd.ks),
            f(fd.wasserstein_norm),
            f(fd.chi2_pvalue),
            status,
        )
    return table


@app.command()
def check(
    profile_path: Annotated[
        Path, typer.Argument(metavar="PROFILE", help="a profile written by `keel drift profile`")
    ],
    data: Annotated[Path, typer.Argument(help="current data (Parquet, CSV or NDJSON)")],
    json_out: Annotated[
        str | None,
        typer.Option(
            "--json", help="also write the full result as JSON to this file ('-': stdout)"
        ),
    ] = None,
    top: Annotated[int, typer.Option(help="features to show")] = 20,
    fail_on: Annotated[
        str,
        typer.Option(
            help="exit 1 when the decision is at least this: drift, warn or never "
            "(error and not_judged fail under drift and warn)"
        ),
    ] = "drift",
) -> None:
    """Check data against a profile: statistics, data quality, policy decision."""
    import json

    import polars as pl

    from keel.drift import (
        FAIL_ON,
        DriftError,
        DriftPolicy,
        ReferenceProfile,
        check_drift,
        json_safe,
    )

    if fail_on not in FAIL_ON:
        raise _fail(f"--fail-on must be one of {', '.join(FAIL_ON)}, got {fail_on!r}")
    if top < 0:
        raise _fail(f"--top must be >= 0, got {top}")
    # with JSON on stdout, the human summary goes to stderr so the JSON stays parseable
    out = err_console if json_out == "-" else console
    try:
        prof = ReferenceProfile.load(profile_path)
        frame = _read(data)
        with out.status(f"checking {frame.height:,} rows x {frame.width} columns"):
            result = check_drift(prof, frame)
        decision = DriftPolicy().decide(result, [])
    except DriftError as exc:
        raise _fail(str(exc)) from exc
    except pl.exceptions.PolarsError as exc:  # data polars cannot read as the profile says
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _fail(f"cannot check {data}: {first}") from exc
    out.print(_summary_table(result, decision, top))
    for q in result.quality:
        color = "red" if q.severity == "error" else "yellow"
        out.print(f"[{color}]{q.severity}[/] {q.kind}: {q.message}", highlight=False)
    if result.multivariate is not None:
        mv = result.multivariate
        out.print(
            f"domain classifier: AUC {mv.auc:.3f}, p={mv.p_value:.2g} "
            f"({'drift' if decision.multivariate_drift else 'no drift'})"
        )
    color = {"none": "green", "warn": "yellow"}.get(decision.decision.value, "red")
    out.print(
        f"decision: [bold {color}]{decision.decision.value.upper()}[/] - {decision.reason}",
        highlight=False,
    )
    if json_out is not None:
        doc = json.dumps(
            json_safe({"result": result.to_dict(), "decision": decision.to_dict()}),
            default=str,
            allow_nan=False,
        )
        if json_out == "-":
            typer.echo(doc)
        else:
            try:
                Path(json_out).write_text(doc)
            except OSError as exc:
                raise _fail(f"cannot write {json_out}: {exc.strerror or exc}") from exc
            out.print(f"result written to {json_out}")
    if decision.fails(fail_on):
        raise typer.Exit(1)


@app.command()
def report(
    profile_path: Annotated[
        Path, typer.Argument(metavar="PROFILE", help="a profile written by `keel drift profile`")
    ],
    data: Annotated[
        list[Path],
        typer.Argument(
            help="current data files: one window each, or one file windowed by --time-column"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path(
        "drift-report"
    ),
    time_column: Annotated[
        str | None,
        typer.Option(help="event-time column: window the data by time instead of by file"),
    ] = None,
    window: Annotated[
        str, typer.Option(help="window size with --time-column, e.g. 30m, 1h, 1d")
    ] = "1h",
    png: Annotated[bool, typer.Option(help="also write PNG plots")] = True,
    title: Annotated[str, typer.Option(help="report title")] = "Keel drift report",
) -> None:
    """Write an HTML + JSON drift report (and PNG plots) over one or more windows."""
    from keel.drift import (
        DriftError,
        DriftPolicy,
        DriftReport,
        ReferenceProfile,
        ReportWindow,
        StreamingMonitor,
        WindowConfig,
        check_drift,
    )

    policy = DriftPolicy()
    try:
        prof = ReferenceProfile.load(profile_path)
        windows: list[ReportWindow] = []
        history: list[PolicyDecision] = []
        with _progress() as progress:
            if time_column is None:
                task = progress.add_task("checking windows", total=len(data))
                for path in data:
                    res = check_drift(prof, _read(path), window_end=path.stem)
                    d = policy.decide(res, history)
                    history.append(d)
                    windows.append(ReportWindow(res, d))
                    progress.advance(task)
            else:
                mon = StreamingMonitor(
                    prof,
                    WindowConfig(size=_duration(window), time_column=time_column),
                    policy=policy,
                )
                task = progress.add_task("windowing", total=len(data))
                for path in data:
                    frame = _read(path)
                    for start in range(0, frame.height, 100_000):
                        windows += mon.observe(frame.slice(start, 100_000))
                    progress.advance(task)
                windows += mon.flush()
        if not windows:
            raise _fail("no windows: the data is empty")
        rep = DriftReport(
            title, prof, windows, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), policy
        )
        jp, hp = rep.save(out)
        pngs = rep.save_pngs(out) if png else []
    except DriftError as exc:
        raise _fail(str(exc)) from exc
    console.print(
        f"[green]report written[/] {hp}\n  json: {jp}"
        + (f"\n  {len(pngs)} PNG plots in {out}" if pngs else "")
    )


def _duration(text: str) -> timedelta:
    units: dict[str, Any] = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    try:
        value, unit = float(text[:-1]), units[text[-1]]
    except (ValueError, KeyError, IndexError):
        raise _fail(f"--window {text!r}: use a number and a unit s, m, h or d (e.g. 30m)") from None
    return timedelta(**{unit: value})
