"""`keel events`: tail a stream, consumer lag, replay, dead letters (list / requeue).

The bus URL comes from --url, else $KEEL_NATS_URL, else the embedded $KEEL_HOME/events.db.
Read-only commands (tail, stats, replay without --to, dlq list) never create an
embedded log: a missing file is an error, not an empty bus.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from keel.telemetry import redact_url

app = typer.Typer(help="Inspect and operate the Keel event bus.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead-letter queue: list and requeue.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")

UrlOpt = typer.Option(None, "--url", help="Bus URL (sqlite:///path or nats://host:port).")
IdsArg = typer.Argument(None, help="Dead-letter ids (default: all).")


class NoEventLogError(Exception):
    """A read-only command was pointed at an embedded log that does not exist."""


def _bus(url: str | None, *, read_only: bool = True) -> Any:
    """Open the bus; for a read-only command an embedded log must already exist."""
    from keel.events import default_url, open_bus

    url = url or default_url()
    if read_only and url.startswith("sqlite://"):
        path = Path("/" + url[len("sqlite://") :].lstrip("/"))
        if not path.is_file():
            raise NoEventLogError(
                f"no event log at {path}: nothing was published there "
                "(check --url / KEEL_HOME; read-only commands do not create it)"
            )
    try:
        return open_bus(url)
    except Exception as exc:
        if type(exc).__module__.startswith("keel."):
            raise
        raise NoEventLogError(f"cannot open the bus at {redact_url(url)}: {exc}") from exc


def _start(from_seq: int | None, from_time: str | None) -> Any:
    from keel.events import StartPosition

    if from_seq is not None and from_time is not None:
        raise typer.BadParameter("give --from-seq or --from-time, not both")
    if from_seq is not None:
        return StartPosition.at_seq(from_seq)
    if from_time is not None:
        t = datetime.fromisoformat(from_time)
        if t.tzinfo is None:
            raise typer.BadParameter("--from-time needs a timezone, e.g. 2024-05-01T12:00:00+00:00")
        return StartPosition.at_time(t)
    return StartPosition.all()


def _line(seq: int, data: bytes) -> str:
    from keel.events import InvalidEventError, decode_event

    try:
        e = decode_event(data)
    except InvalidEventError as exc:
        return json.dumps({"seq": seq, "error": str(exc)})
    try:
        payload: Any = e.json()
    except InvalidEventError:
        payload = f"<{len(e.payload)} bytes>"
    return json.dumps(
        {
            "seq": seq,
            "id": e.id,
            "type": e.type,
            "key": e.key,
            "event_time": e.event_time.isoformat(),
            "schema_version": e.schema_version,
            "publish_time": e.publish_time.isoformat() if e.publish_time else None,
            "headers": e.headers,
            "payload": payload,
        },
        default=str,
    )


@app.command()
def tail(
    stream: str,
    n: int = typer.Option(10, "-n", min=1, help="How many of the latest events (>= 1)."),
    url: str | None = UrlOpt,
) -> None:
    """Print the last N events of STREAM as JSON lines."""
    from keel.events import StartPosition

    with _bus(url) as bus:
        info = bus.stream_info(stream)
        start = StartPosition.at_seq(max(info.first_seq, info.last_seq - n + 1, 1))
        for r in bus.replay(stream, start, max_messages=n):
            typer.echo(_line(r.seq, r.data))


@app.command()
def stats(
    stream: str | None = typer.Argument(None),
    url: str | None = UrlOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Stream sizes and, per durable consumer, lag and in-flight deliveries."""
    with _bus(url) as bus:
        out = []
        for s in [stream] if stream else bus.streams():
            i = bus.stream_info(s)
            out.append(
                {
                    "stream": s,
                    "events": i.count,
                    "first_seq": i.first_seq,
                    "last_seq": i.last_seq,
                    "dead_letters": len(bus.dead_letters(s, limit=100000)),
                    "consumers": [
                        {
                            "durable": c.durable,
                            "delivered_seq": c.delivered_seq,
                            "lag": c.lag,
                            "ack_pending": c.ack_pending,
                        }
                        for c in bus.consumers(s)
                    ],
                }
            )
    if as_json:
        typer.echo(json.dumps({"streams": out}))
        return
    for st in out:
        typer.echo(
            f"{st['stream']}: events={st['events']} seq={st['first_seq']}..{st['last_seq']}"
            f" dead_letters={st['dead_letters']}"
        )
        for c in st["consumers"]:
            typer.echo(
                f"  {c['durable']}: delivered_seq={c['delivered_seq']} lag={c['lag']}"
                f" ack_pending={c['ack_pending']}"
            )


@app.command()
def replay(
    stream: str,
    from_seq: int | None = typer.Option(None, "--from-seq"),
    from_time: str | None = typer.Option(
        None,
        "--from-time",
        help="Publish time to start at (ISO, with timezone); events published at or after it.",
    ),
    limit: int | None = typer.Option(None, "--limit", min=1),
    to_stream: str | None = typer.Option(
        None,
        "--to",
        help="Re-publish into this stream (ids kept: deduplicated) instead of printing.",
    ),
    url: str | None = UrlOpt,
) -> None:
    """Read STREAM from a position or a time; print it, or copy it into another stream."""
    with _bus(url, read_only=to_stream is None) as bus:
        n = 0
        for r in bus.replay(stream, _start(from_seq, from_time), max_messages=limit):
            if to_stream:
                bus.publish_raw(to_stream, r.data, f"{stream}~{r.seq}")
            else:
                typer.echo(_line(r.seq, r.data))
            n += 1
        if to_stream:
            typer.echo(f"replayed {n} events from {stream} into {to_stream}")


@dlq_app.command("list")
def dlq_list(
    stream: str, limit: int = typer.Option(100, "--limit", min=1), url: str | None = UrlOpt
) -> None:
    """List STREAM's dead letters with their reasons."""
    with _bus(url) as bus:
        for d in bus.dead_letters(stream, limit=limit):
            typer.echo(
                json.dumps(
                    {
                        "id": d.id,
                        "consumer": d.durable,
                        "seq": d.seq,
                        "event_id": d.event_id,
                        "deliveries": d.deliveries,
                        "dead_time": d.dead_time.isoformat(),
                        "reason": d.reason,
                    }
                )
            )


@dlq_app.command("requeue")
def dlq_requeue(
    stream: str,
    ids: list[str] = IdsArg,
    url: str | None = UrlOpt,
) -> None:
    """Publish dead letters back to STREAM (same event ids) and remove them from the queue."""
    with _bus(url, read_only=False) as bus:
        n = bus.requeue_dead_letters(stream, ids or None)
        typer.echo(f"requeued {n} dead letters into {stream}")
