"""feature-worker: consume an event stream, run the streaming feature engine, write online + offline.

Wiring only: the logic is keel.features' FeatureWorker, the app convention (settings, --help,
JSON logs, start/ready/stopped lines, one-line errors and exit codes) is keel.telemetry.app
(docs/apps.md). Crash-exact: a restart after SIGKILL ends in the same online store, offline
log and state as an uninterrupted run; the instance name (the durable) gets a crashed run's
in-flight events back at once, in order. Events the views refuse go to the bus's dead-letter
queue with the reason. Run one process per durable consumer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from keel.telemetry.app import App, AppConfigError, AppContext, AppError


class Settings(BaseModel):
    """feature-worker settings (TOML `[feature-worker]`, `KEEL_FEATURE_WORKER_<KEY>`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    definitions: str = Field(min_length=1, description="feature views: a .py file or a module")
    home: Path = Field(
        default=Path(".keel"),
        description="embedded state: event log, online store, offline Parquet, worker state",
    )
    stream: str | None = Field(
        default=None, description="stream to consume; default: the views' only stream"
    )
    durable: str = Field(default="feature-worker", min_length=1, description="durable consumer")
    bus_url: str | None = Field(
        default=None,
        description="event bus (nats://...); default $KEEL_NATS_URL, else the embedded log in home",
    )
    online_url: str | None = Field(
        default=None,
        description="online store (redis://...); default $KEEL_REDIS_URL, else SQLite in home",
    )
    metrics_host: str = Field(default="127.0.0.1", description="/metrics and /healthz address")
    metrics_port: int = Field(default=9102, ge=0, le=65535, description="/metrics port (0: any)")
    batch_size: int = Field(default=500, ge=1, le=100_000, description="events per fetch")
    flush_interval_s: float = Field(
        default=2.0, gt=0, le=600, description="how often state and the offline log are flushed"
    )


# The worker's own variables before the app convention. KEEL_FEATURES_DEFINITIONS and
# KEEL_FEATURES_ONLINE_URL are not here: the `keel features` CLI still reads them, so a host
# may set them for the CLI; the worker ignores them (its README says so).
RENAMED = {
    f"KEEL_FEATURES_{key.upper()}": f"KEEL_FEATURE_WORKER_{key.upper()}"
    for key in ("stream", "durable", "batch_size", "flush_interval_s")
}

APP = App(
    "feature-worker",
    Settings,
    summary="Consume an event stream, keep feature views fresh online and offline.",
    description=(
        "Runs keel.features' streaming engine over the views in `definitions`, writes each\n"
        "view's values to the online store and the events to the offline Parquet log, and\n"
        "serves /metrics and /healthz. SIGTERM/SIGINT: flush, ack, exit 0."
    ),
    renamed=RENAMED,
)


def run(settings: Settings, ctx: AppContext) -> None:
    from keel.events import open_bus
    from keel.features import (
        EventSource,
        FeaturesError,
        FeatureWorker,
        OfflineStore,
        SQLiteStateStore,
        load_registry,
        open_online_store,
    )
    from keel.telemetry import ComponentMetrics, start_metrics_server

    try:
        views = load_registry(settings.definitions).views()
    except FeaturesError as exc:  # the definitions do not load: a configuration error
        raise AppConfigError(f"definitions: {exc}") from exc
    streams = {v.source.stream for v in views if isinstance(v.source, EventSource)}
    stream = settings.stream or (streams.pop() if len(streams) == 1 else None)
    if stream is None:
        raise AppConfigError(
            f"set KEEL_FEATURE_WORKER_STREAM: the views read streams {sorted(streams)}"
        )
    views = [v for v in views if isinstance(v.source, EventSource) and v.source.stream == stream]
    home = settings.home.absolute()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AppError(f"cannot create home {home}: {exc.strerror}") from exc
    metrics = ComponentMetrics("features")
    server = start_metrics_server(
        metrics.registry, host=settings.metrics_host, port=settings.metrics_port
    )
    bus = online = state = None
    try:
        bus = open_bus(
            settings.bus_url or os.environ.get("KEEL_NATS_URL") or f"sqlite:///{home}/events.db"
        )
        online = open_online_store(
            settings.online_url or os.environ.get("KEEL_REDIS_URL") or None, home=home
        )
        state = SQLiteStateStore(home / "feature_state.db")
        worker = FeatureWorker(
            views,
            # the instance name gets a crashed run's in-flight events back at once, in order
            bus.consumer(stream, durable=settings.durable, instance=settings.durable),
            online,
            offline=OfflineStore(home / "offline"),
            state=state,
            metrics=metrics,
            batch_size=settings.batch_size,
            flush_interval_s=settings.flush_interval_s,
        )
        ctx.ready(
            stream=stream,
            views=[v.name for v in views],
            metrics_port=server.port,
            reclaimed=getattr(worker.consumer, "reclaimed", 0),
        )
        try:
            worker.run(ctx.stop)
        finally:
            ctx.report(
                applied=worker.stats.applied,
                dead_letters=worker.stats.dead_letters,
                duplicates=worker.stats.duplicates,
                index_redeliveries=worker.stats.index_redeliveries,
            )
    finally:
        server.stop()
        for closable in (state, online, bus):
            if closable is not None:
                closable.close()


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    return APP.main(run, argv, env)


if __name__ == "__main__":
    sys.exit(main())
