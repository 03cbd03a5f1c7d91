"""`keel registry register|list|show|promote|rollback|audit`: the model registry.

Embedded by default: MLflow's SQLite store in $KEEL_HOME/mlflow.db. For a real `mlflow
server` give --tracking-uri (env KEEL_REGISTRY_TRACKING_URI) and --db-url, the server's
PostgreSQL database (env KEEL_REGISTRY_DB_URL), where Keel keeps its claims and audit log.
mlflow is imported only inside the commands.

`promote` and `rollback` publish a `model.alias_moved` event (keel.events) when a bus is
configured: --bus-url (env KEEL_BUS_URL, e.g. sqlite:///…/events.db or nats://host:4222) and
--events-stream (env KEEL_REGISTRY_EVENTS_STREAM, default `models`). The event id is the
audit entry's hash, so re-running a promote that already happened appends nothing and re-sends
the same event, which the bus drops as a duplicate (a crash between the alias move and the
publish therefore loses nothing).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from keel.registry_client import AliasMoved, AuditEntry, Registry

app = typer.Typer(
    help="Model registry: versions, aliases (promote / rollback), audit log.", no_args_is_help=True
)
console = Console()

HomeOpt = typer.Option(
    None, "--home", help="KEEL_HOME of the embedded registry (default: $KEEL_HOME or ./.keel)"
)
TrackingOpt = typer.Option(
    None,
    "--tracking-uri",
    envvar="KEEL_REGISTRY_TRACKING_URI",
    help="an `mlflow server` URL (http://...)",
)
DbOpt = typer.Option(
    None,
    "--db-url",
    envvar="KEEL_REGISTRY_DB_URL",
    help="the server's PostgreSQL URL (with --tracking-uri)",
)
WhoOpt = typer.Option(..., "--who", help="who decided (identity string)")
WhyOpt = typer.Option(..., "--why", help="why the alias moves")
EvidenceOpt = typer.Option(
    ..., "--evidence", help="digest of the evidence: gate results, approvals"
)
BusOpt = typer.Option(
    None,
    "--bus-url",
    envvar="KEEL_BUS_URL",
    help="publish model.alias_moved to this keel.events bus (sqlite:///path or nats://...)",
)
StreamOpt = typer.Option(
    "models",
    "--events-stream",
    envvar="KEEL_REGISTRY_EVENTS_STREAM",
    help="the bus stream for model.alias_moved events",
)


@contextmanager
def _registry(
    home: Path | None,
    tracking_uri: str | None,
    db_url: str | None,
    publisher: Callable[[AliasMoved], None] | None = None,
) -> Iterator[Registry]:
    from keel.registry_client import open_registry

    if tracking_uri:
        reg = open_registry(tracking_uri=tracking_uri, db_url=db_url, publisher=publisher)
    else:
        from keel_cli.config import load_config

        reg = open_registry(home or load_config().home, publisher=publisher)
    try:
        yield reg
    finally:
        reg.close()


@contextmanager
def _publisher(bus_url: str | None, stream: str) -> Iterator[Callable[[AliasMoved], None] | None]:
    """A publisher of `model.alias_moved` onto the configured bus (None: no bus)."""
    if not bus_url:
        yield None
        return
    from keel.events import Event, open_bus
    from keel.registry_client import ALIAS_MOVED

    bus = open_bus(bus_url)

    def publish(moved: AliasMoved) -> None:
        bus.publish(
            stream,
            Event.create(
                type=ALIAS_MOVED,
                key=moved.model,
                event_time=datetime.fromisoformat(moved.time),
                payload=moved.to_json(),
                id=moved.event_id,
            ),
        )

    try:
        yield publish
    finally:
        bus.close()


def _entry_json(e: AuditEntry) -> str:
    return json.dumps(e.to_json(), sort_keys=True)


@app.command()
def register(
    artifact: Annotated[Path, typer.Argument(help="keel artifact archive (.tar) or directory")],
    trust: Annotated[
        list[Path] | None,
        typer.Option("--trust", "-t", help="trusted public key, PEM (repeatable)"),
    ] = None,
    allow_unsigned: bool = typer.Option(
        False, "--allow-unsigned", help="accept an unsigned artifact (logged)"
    ),
    parent_version: int | None = typer.Option(
        None, "--parent-version", help="the version this one was derived from (lineage)"
    ),
    home: Path | None = HomeOpt,
    tracking_uri: str | None = TrackingOpt,
    db_url: str | None = DbOpt,
) -> None:
    """Verify a signed keel artifact, then register it (once: keyed by its digest).

    Name, digest and lineage tags come from the verified manifest; an artifact that fails
    verification against the --trust keys is refused and nothing is written."""
    from keel.artifacts import TrustPolicy

    policy = TrustPolicy.from_files(trust or [], allow_unsigned=allow_unsigned)
    with _registry(home, tracking_uri, db_url) as reg:
        v = reg.register(artifact, trust=policy, parent_version=parent_version)
    typer.echo(f"{v.name} version {v.version} {v.digest}")


@app.command("list")
def list_models(
    home: Path | None = HomeOpt, tracking_uri: str | None = TrackingOpt, db_url: str | None = DbOpt
) -> None:
    """Registered models with their aliases and latest version."""
    with _registry(home, tracking_uri, db_url) as reg:
        table = Table(title="models")
        for col in ("model", "latest", "aliases"):
            table.add_column(col)
        for m in reg.models():
            aliases = ", ".join(f"{a}={v}" for a, v in sorted(m.aliases.items()))
            table.add_row(m.name, str(m.latest_version or "-"), aliases)
        console.print(table)


@app.command()
def show(
    name: str,
    version: int | None = typer.Option(None, "--version", "-v", help="one version, as JSON"),
    alias: str | None = typer.Option(
        None, "--alias", "-a", help="the version an alias points at, as JSON"
    ),
    home: Path | None = HomeOpt,
    tracking_uri: str | None = TrackingOpt,
    db_url: str | None = DbOpt,
) -> None:
    """A model's versions (digest, lineage, aliases), or one version as JSON."""
    with _registry(home, tracking_uri, db_url) as reg:
        if version is not None or alias is not None:
            mv = reg.get_by_alias(name, alias) if alias else reg.get_version(name, version or 0)
            out: dict[str, Any] = {
                "name": mv.name,
                "version": mv.version,
                "digest": mv.digest,
                "aliases": sorted(a for a, v in reg.aliases(name).items() if v == mv.version),
                "source": mv.source,
                "run_id": mv.run_id,
                "tags": dict(mv.tags),
            }
            typer.echo(json.dumps(out, indent=2, sort_keys=True))
            return
        table = Table(title=name)
        for col in ("version", "digest", "aliases", "parent", "data", "code"):
            table.add_column(col)
        for v in reg.versions(name):
            table.add_row(
                str(v.version),
                v.digest[:12],
                ", ".join(v.aliases),
                v.tags.get("keel.parent_version", ""),
                v.tags.get("keel.data_fingerprint", "")[:16],
                v.tags.get("keel.code_version", "")[:16],
            )
        console.print(table)


@app.command()
def promote(
    name: str,
    alias: str,
    version: int,
    who: str = WhoOpt,
    why: str = WhyOpt,
    evidence: str = EvidenceOpt,
    home: Path | None = HomeOpt,
    tracking_uri: str | None = TrackingOpt,
    db_url: str | None = DbOpt,
    bus_url: str | None = BusOpt,
    events_stream: str = StreamOpt,
) -> None:
    """Point NAME@ALIAS at VERSION, with a decision record in the audit log.

    Idempotent: if the log's last move of ALIAS already put it at VERSION, nothing is
    appended and the same audit entry (and event id) is reported again."""
    from keel.registry_client import Decision

    decision = Decision(who=who, why=why, evidence_digest=evidence)
    with (
        _publisher(bus_url, events_stream) as publish,
        _registry(home, tracking_uri, db_url, publish) as reg,
    ):
        e = reg.promote(name, alias, version, decision)
    typer.echo(f"{name}@{alias}: {e.from_version or '-'} -> {e.to_version} (audit seq {e.seq})")


@app.command()
def rollback(
    name: str,
    alias: str,
    who: str = WhoOpt,
    why: str = WhyOpt,
    evidence: str = EvidenceOpt,
    home: Path | None = HomeOpt,
    tracking_uri: str | None = TrackingOpt,
    db_url: str | None = DbOpt,
    bus_url: str | None = BusOpt,
    events_stream: str = StreamOpt,
) -> None:
    """Point NAME@ALIAS back at its previous holder (from the audit log).

    Not idempotent by nature: each rollback steps one holder further back."""
    from keel.registry_client import Decision

    decision = Decision(who=who, why=why, evidence_digest=evidence)
    with (
        _publisher(bus_url, events_stream) as publish,
        _registry(home, tracking_uri, db_url, publish) as reg,
    ):
        e = reg.rollback(name, alias, decision)
    typer.echo(f"{name}@{alias}: {e.from_version} -> {e.to_version} (rollback, audit seq {e.seq})")


@app.command()
def audit(
    name: str | None = typer.Argument(None, help="one model (default: all)"),
    verify: bool = typer.Option(
        False, "--verify", help="check the hash chains; exit 1 on any problem"
    ),
    home: Path | None = HomeOpt,
    tracking_uri: str | None = TrackingOpt,
    db_url: str | None = DbOpt,
) -> None:
    """Print the alias audit log as JSON lines, or verify it (--verify)."""
    with _registry(home, tracking_uri, db_url) as reg:
        if verify:
            report = reg.verify_audit(name)
            for p in report.problems:
                typer.echo(f"{p.model} seq {p.seq}: {p.problem}")
            if not report.ok:
                typer.echo(f"audit log FAILED verification: {len(report.problems)} problem(s)")
                raise typer.Exit(1)
            typer.echo(f"audit log ok: {report.entries} entries, {report.models} model(s)")
            return
        for n in [name] if name else reg.audited_models():
            for e in reg.audit(n):
                typer.echo(_entry_json(e))
