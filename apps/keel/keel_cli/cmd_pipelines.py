"""`keel retrain [--model M]`, `keel retrain history`, `keel provenance verify M@champion`.

Wiring only: keel.pipelines decides. The CLI opens the controller's database
(``$KEEL_HOME/pipelines/pipelines.db``) without executors: `keel retrain` records a manual
trigger (the running retrain controller picks the run up), `history` lists runs and their
steps, `provenance verify` checks the whole hash chain and walks from the promoted
artifact back to its trigger, drift evidence and exact data. Exit 1 when the chain is
broken or the artifact has no recorded lineage.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from keel.pipelines import Controller

retrain_app = typer.Typer(help="Retraining: request a run (manual trigger) and read run history.")
provenance_app = typer.Typer(help="Provenance: verify the hash-chained record of every retrain.")
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

DbOpt = Annotated[
    Path | None,
    typer.Option("--db", help="pipelines database (default: $KEEL_HOME/pipelines/pipelines.db)"),
]


def _fail(msg: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {' '.join(msg.split())}", highlight=False)
    return typer.Exit(code)


def _clock() -> datetime:
    return datetime.now(UTC)


def _open(db: Path | None, *, must_exist: bool) -> Controller:
    from keel.pipelines import Controller, PipelinesError

    if db is None:
        from keel_cli.config import ConfigError, load_config

        try:
            db = load_config().home.expanduser() / "pipelines" / "pipelines.db"
        except ConfigError as e:
            raise _fail(str(e)) from None
    if must_exist and not db.exists():
        raise _fail(
            f"{db} does not exist: no retrain has been recorded yet (`keel retrain --model M`)"
        )
    try:
        return Controller(None, clock=_clock, db_path=db)
    except PipelinesError as e:
        raise _fail(str(e)) from None


def _params(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key.strip():
            raise _fail(
                f"--param {p!r}: write KEY=VALUE (VALUE is JSON if it parses, else a string)"
            )
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


@retrain_app.callback(invoke_without_command=True)
def retrain(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="model to retrain")] = None,
    who: Annotated[str, typer.Option(help="who asks (recorded in provenance)")] = "cli",
    why: Annotated[str, typer.Option(help="why (recorded in provenance)")] = "",
    request_id: Annotated[str | None, typer.Option(help="dedup key; a repeat is a no-op")] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="run parameter KEY=VALUE (repeatable)")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Request a retrain of MODEL now (a manual trigger; cooldown does not apply)."""
    if ctx.invoked_subcommand is not None:
        return
    if model is None:
        raise _fail("give --model (or a subcommand: `keel retrain history`)")
    from keel.pipelines import PipelinesError, Trigger

    ctl = _open(db, must_exist=False)
    try:
        trig = Trigger.manual(model, request_id or uuid.uuid4().hex, at=_clock(), who=who, why=why)
        decision = ctl.submit(trig, _params(param or []))
    except PipelinesError as e:
        raise _fail(str(e)) from None
    finally:
        ctl.close()
    console.print_json(json.dumps({"trigger": trig.key, **decision.to_dict()}))


@retrain_app.command()
def history(
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    db: DbOpt = None,
) -> None:
    """Runs, newest last: status, current step, and each completed step (cache hit or not)."""
    ctl = _open(db, must_exist=True)
    try:
        rows: list[dict[str, Any]] = [
            {
                "run_id": r.run_id,
                "model": r.model,
                "status": r.status.value,
                "step": r.step,
                "created_at": r.created_at,
                "trigger": r.trigger_key,
                "detail": r.detail,
                "steps": [
                    {"step": s.step, "cache_hit": s.cache_hit, "at": s.at}
                    for s in ctl.steps(r.run_id)
                ],
            }
            for r in ctl.runs(model)
        ]
    finally:
        ctl.close()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    if not rows:
        console.print("no runs")
    for r in rows:
        done = ", ".join(s["step"] + (" (cached)" if s["cache_hit"] else "") for s in r["steps"])
        console.print(
            f"{r['run_id']}  {r['model']}  {r['status']}  at {r['step']}  trigger {r['trigger']}"
        )
        console.print(f"    steps: {done or '-'}" + (f"\n    {r['detail']}" if r["detail"] else ""))


@provenance_app.command()
def verify(
    target: Annotated[
        str, typer.Argument(help="MODEL@champion (newest promoted) or MODEL@sha256:<digest>")
    ],
    db: DbOpt = None,
) -> None:
    """Verify the whole chain, then walk TARGET back to its trigger and exact data."""
    from keel.pipelines import NotFoundError, ProvenanceTamperedError

    model, sep, ref = target.partition("@")
    if not sep or not model or not ref:
        raise _fail(f"{target!r}: write MODEL@champion or MODEL@sha256:<digest>")
    digest = None if ref == "champion" else ref
    if digest is not None and not digest.startswith("sha256:"):
        raise _fail(f"{ref!r}: expected 'champion' or an artifact digest 'sha256:<hex>'")
    ctl = _open(db, must_exist=True)
    try:
        lineage = ctl.lineage(model, digest)
        report = ctl.verify_provenance()
    except ProvenanceTamperedError as e:
        for p in e.problems:
            err_console.print(f"  {p}", highlight=False)
        raise _fail(str(e), code=1) from None
    except NotFoundError as e:
        raise _fail(str(e), code=1) from None
    finally:
        ctl.close()
    console.print_json(
        json.dumps(
            {
                "ok": True,
                "entries": report.entries,
                "head": list(report.head or ()),
                "lineage": lineage.to_dict(),
            }
        )
    )
