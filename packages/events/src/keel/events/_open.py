"""`open_bus(url)`: pick a backend from a URL."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from keel.events._bus import Bus
from keel.events._config import StreamConfig, redact_url
from keel.events._errors import InvalidConfigError
from keel.events._metrics import EventsMetrics, as_events_metrics
from keel.events._schemas import SchemaRegistry

if TYPE_CHECKING:
    from keel.telemetry import ComponentMetrics


def default_url(environ: Mapping[str, str] | None = None) -> str:
    """`$KEEL_NATS_URL` if set, else the embedded log `sqlite:///$KEEL_HOME/events.db`
    (KEEL_HOME defaults to ./.keel)."""
    env = os.environ if environ is None else environ
    if env.get("KEEL_NATS_URL"):
        return env["KEEL_NATS_URL"]
    home = Path(env.get("KEEL_HOME") or ".keel").absolute()
    return f"sqlite://{home / 'events.db'}"


def open_bus(
    url: str | None = None,
    *,
    stream_config: StreamConfig | None = None,
    schemas: SchemaRegistry | None = None,
    metrics: ComponentMetrics | EventsMetrics | None = None,
    clock: Callable[[], datetime] | None = None,
    environ: Mapping[str, str] | None = None,
    **backend_options: object,
) -> Bus:
    """Open the event bus at `url`.

    * `sqlite:///abs/path/events.db` — the embedded log (one SQLite file, WAL, fsync on commit).
    * `nats://host:port` — NATS JetStream (`backend_options` go to `NatsOptions`, e.g.
      `require_sync_always=True, monitor_url="http://127.0.0.1:8222"`).
    * None — `default_url(environ)`.

    `stream_config` sets the limits of streams this bus creates; `schemas` makes publish reject
    events with unknown schema versions / bad payloads; `metrics` (a keel.telemetry
    ComponentMetrics) receives the bus's counters, lag gauge and latency histogram.
    """
    if url is None:
        url = default_url(environ)
    m = as_events_metrics(metrics)
    if url.startswith("sqlite://"):
        from keel.events._sqlite import SQLiteBus

        path = url[len("sqlite://") :]
        if not path:
            raise InvalidConfigError(f"{url!r}: expected sqlite:///path/to/events.db")
        kwargs: dict[str, object] = dict(backend_options)
        if clock is not None:
            kwargs["clock"] = clock
        return SQLiteBus(path, stream_config=stream_config, schemas=schemas, metrics=m, **kwargs)  # type: ignore[arg-type]
    if url.startswith(("nats://", "tls://")):
        from keel.events._nats import NatsBus, NatsOptions

        try:
            options = NatsOptions(**backend_options)  # type: ignore[arg-type]
        except TypeError as exc:
            raise InvalidConfigError(f"bad NATS option: {exc}") from exc
        return NatsBus(
            url,
            options=options,
            stream_config=stream_config,
            schemas=schemas,
            metrics=m,
            clock=clock,
        )
    raise InvalidConfigError(
        f"unsupported event bus URL {redact_url(url)!r}: use sqlite:///path/events.db or "
        "nats://host:port"
    )
