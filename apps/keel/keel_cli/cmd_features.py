"""`keel features ...`: list definitions, backfill, materialize, get online values, training sets.

Feature definitions come from ``--definitions`` (a .py file or module) or
``$KEEL_FEATURES_DEFINITIONS``. Heavy imports stay inside the commands.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(
    help="Feature views: list, backfill, materialize, get, training-set.", no_args_is_help=True
)

DefsOpt = typer.Option(
    None, "--definitions", "-d", help="FeatureView definitions: .py file or module."
)
EventsOpt = typer.Option(None, "--events", help="Parquet input (default: the offline store).")
LabelsArg = typer.Argument(..., help="Parquet with join keys and a timestamp column.")
OutputArg = typer.Argument(..., help="Where to write the training Parquet.")
ViewsOpt = typer.Option(..., "--view", "-v", help="View name (repeatable).")


def _registry(definitions: str | None) -> Any:
    from keel.features import FeaturesError, load_registry

    spec = definitions or os.environ.get("KEEL_FEATURES_DEFINITIONS", "")
    try:
        return load_registry(spec)
    except FeaturesError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _view(definitions: str | None, name: str) -> Any:
    from keel.features import FeaturesError

    try:
        return _registry(definitions).get(name)
    except FeaturesError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _source_frame(view: Any, events: Path | None) -> Any:
    """The view's input: a Parquet file/dir given with --events, else the offline store."""
    import polars as pl

    from keel.features import (
        EventSource,
        OfflineStore,
        event_log_dataset,
        event_log_to_frame,
        keel_home,
    )

    if events is not None:
        return pl.scan_parquet(str(events / "**/*.parquet") if events.is_dir() else str(events))
    store = OfflineStore(keel_home() / "offline")
    if isinstance(view.source, EventSource):
        return event_log_to_frame(view, store.read(event_log_dataset(view.source.event_type)))
    return store.read(view.source.dataset)


def _parse_time(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    t = datetime.fromisoformat(value)
    if t.tzinfo is None:
        typer.echo(f"error: --at {value!r} has no time zone; add one, e.g. {value}+00:00", err=True)
        raise typer.Exit(2)
    return t


@app.command("list")
def list_views(
    definitions: str | None = DefsOpt, as_json: bool = typer.Option(False, "--json")
) -> None:
    """List feature views: name, version, entities, source and features."""
    reg = _registry(definitions)
    rows = [
        {
            "name": v.name,
            "version": v.version,
            "entities": [e.name for e in v.entities],
            "source": v.canonical()["source"],
            "features": list(v.feature_names),
            "bucket_s": v.bucket_us / 1e6,
        }
        for v in reg.views()
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        typer.echo(
            f"{r['name']}  v{r['version']}  entities={','.join(r['entities'])}  features={len(r['features'])}"
        )
        for f in r["features"]:
            typer.echo(f"    {f}")


@app.command()
def backfill(
    view_name: str = typer.Argument(..., metavar="VIEW"),
    definitions: str | None = DefsOpt,
    events: Path | None = EventsOpt,
) -> None:
    """Compute feature values as of every event and write them to the offline store."""
    from keel.features import FeaturesError, OfflineStore, backfill, keel_home

    view = _view(definitions, view_name)
    try:
        out = backfill(view, _source_frame(view, events))
        paths = OfflineStore(keel_home() / "offline").write(
            f"features.{view.name}.{view.version}", out, time_column=view.event_time
        )
    except FeaturesError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"backfilled {out.height} rows of {view.name} into {len(paths)} file(s)")


@app.command()
def materialize(
    view_name: str = typer.Argument(..., metavar="VIEW"),
    definitions: str | None = DefsOpt,
    at: str | None = typer.Option(None, help="ISO time with zone (default: now)."),
    events: Path | None = EventsOpt,
    online_url: str | None = typer.Option(None, envvar="KEEL_FEATURES_ONLINE_URL"),
) -> None:
    """Compute every entity's values as of --at with the batch engine and write them online.

    Each entity's row is written under its latest event time at --at (the freshness the
    online store compares), so later streaming updates still apply.
    """
    from keel.features import FeaturesError, latest, namespace, open_online_store

    view = _view(definitions, view_name)
    t = _parse_time(at)
    try:
        out = latest(view, _source_frame(view, events), t, with_event_time=True)
        store = open_online_store(online_url)
        keys = view.join_keys
        # Written under each entity's latest event time (not --at): the online store keeps a
        # row only against newer event times, so streaming can still update it afterwards.
        rows = [
            (
                "|".join(str(r[k]) for k in keys),
                {n: r[n] for n in view.feature_names},
                r[view.event_time],
            )
            for r in out.to_dicts()
        ]
        n = store.write(namespace(view), rows)
        store.close()
    except FeaturesError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"materialized {n} of {len(rows)} entities of {view.name} as of {t.isoformat()}")


@app.command()
def get(
    view_name: str = typer.Argument(..., metavar="VIEW"),
    entity: str = typer.Argument(
        ..., help="Entity key (multi-key entities: values joined by '|')."
    ),
    definitions: str | None = DefsOpt,
    online_url: str | None = typer.Option(None, envvar="KEEL_FEATURES_ONLINE_URL"),
) -> None:
    """Print an entity's online values and their event time (freshness)."""
    from keel.features import namespace, open_online_store

    view = _view(definitions, view_name)
    store = open_online_store(online_url)
    row = store.read(namespace(view), entity)
    store.close()
    if row is None:
        typer.echo(f"error: no online values for entity {entity!r} in view {view.name!r}", err=True)
        raise typer.Exit(1)
    age = (datetime.now(UTC) - row.event_time).total_seconds()
    typer.echo(
        json.dumps(
            {"values": row.values, "event_time": row.event_time.isoformat(), "age_s": age}, indent=2
        )
    )


@app.command("training-set")
def training_set_cmd(
    labels: Path = LabelsArg,
    output: Path = OutputArg,
    views: list[str] = ViewsOpt,
    definitions: str | None = DefsOpt,
    time_column: str = typer.Option("timestamp", help="Label timestamp column."),
    events: Path | None = EventsOpt,
) -> None:
    """Point-in-time-correct training frame: labels plus each view's features at each row's time."""
    import polars as pl

    from keel.features import FeaturesError, training_set

    reg = _registry(definitions)
    try:
        lab = pl.read_parquet(labels)
        sources = [(reg.get(n), _source_frame(reg.get(n), events)) for n in views]
        out = training_set(lab, sources, time_column=time_column)
        out.write_parquet(output)
    except FeaturesError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"wrote {out.height} rows x {out.width} columns to {output}")
