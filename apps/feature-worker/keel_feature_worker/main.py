"""feature-worker: consume an event stream, run the streaming feature engine, write online + offline.

Config (validated at start; a TOML file's ``[feature_worker]`` table, overridden by env):
  KEEL_CONFIG                      optional TOML file
  KEEL_HOME                        embedded state root (default ./.keel)
  KEEL_FEATURES_DEFINITIONS        .py file or module defining FeatureViews (required)
  KEEL_FEATURES_STREAM             bus stream to consume (default: the views' stream)
  KEEL_FEATURES_DURABLE            durable consumer name (default feature-worker)
  KEEL_BUS_URL / KEEL_NATS_URL     event bus (default: embedded SQLite in KEEL_HOME)
  KEEL_FEATURES_ONLINE_URL / KEEL_REDIS_URL  online store (default: SQLite in KEEL_HOME)
  KEEL_METRICS_HOST, KEEL_METRICS_PORT       /metrics and /healthz (default 127.0.0.1:9102)
  KEEL_FEATURES_BATCH_SIZE, KEEL_FEATURES_FLUSH_INTERVAL_S

Crash-exact: a restart after SIGKILL ends in the same online store, offline log and state as
an uninterrupted run (see keel.features' worker). Events the views refuse (invalid, too late,
from the future, failing) go to the bus's dead-letter queue with the reason. Errors (metrics
port in use, unwritable KEEL_HOME, bad bus URL, unreachable bus, full disk) print one line
and exit 1; configuration errors exit 2. Run one process per durable consumer.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import tomllib
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV = {
    "home": "KEEL_HOME",
    "definitions": "KEEL_FEATURES_DEFINITIONS",
    "stream": "KEEL_FEATURES_STREAM",
    "durable": "KEEL_FEATURES_DURABLE",
    "bus_url": "KEEL_BUS_URL",
    "online_url": "KEEL_FEATURES_ONLINE_URL",
    "metrics_host": "KEEL_METRICS_HOST",
    "metrics_port": "KEEL_METRICS_PORT",
    "batch_size": "KEEL_FEATURES_BATCH_SIZE",
    "flush_interval_s": "KEEL_FEATURES_FLUSH_INTERVAL_S",
}


class WorkerConfig(BaseModel):
    """The worker's validated configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path = Path(".keel")
    definitions: str = Field(min_length=1)
    stream: str | None = None
    durable: str = Field(default="feature-worker", min_length=1)
    bus_url: str | None = None
    online_url: str | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    batch_size: int = Field(default=500, ge=1, le=100_000)
    flush_interval_s: float = Field(default=2.0, gt=0, le=600)


def load_config(env: Mapping[str, str]) -> WorkerConfig:
    """TOML ``[feature_worker]`` (from KEEL_CONFIG) overridden by KEEL_* env vars."""
    raw: dict[str, object] = {}
    if env.get("KEEL_CONFIG"):
        with open(env["KEEL_CONFIG"], "rb") as fh:
            raw.update(tomllib.load(fh).get("feature_worker", {}))
    for field, var in ENV.items():
        if env.get(var):
            raw[field] = env[var]
    if "bus_url" not in raw and env.get("KEEL_NATS_URL"):
        raw["bus_url"] = env["KEEL_NATS_URL"]
    if "online_url" not in raw and env.get("KEEL_REDIS_URL"):
        raw["online_url"] = env["KEEL_REDIS_URL"]
    return WorkerConfig.model_validate(raw)


def one_line(exc: BaseException) -> str:
    """An error as one line (no traceback, no embedded newlines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def main(env: Mapping[str, str] | None = None, argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    env = dict(os.environ if env is None else env)
    try:
        cfg = load_config(env)
    except (ValidationError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"feature-worker: invalid configuration: {one_line(exc)}", file=sys.stderr)
        return 2

    from keel.events import EventsError
    from keel.features import FeaturesError
    from keel.telemetry import TelemetryError

    try:
        return _run(cfg)
    except (EventsError, FeaturesError, TelemetryError, OSError) as exc:
        print(f"feature-worker: {one_line(exc)}", file=sys.stderr)
        return 1


def _run(cfg: WorkerConfig) -> int:
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
    from keel.telemetry import ComponentMetrics, configure_logging, get_logger, start_metrics_server

    configure_logging()
    log = get_logger("keel.feature_worker")
    try:
        views = load_registry(cfg.definitions).views()
    except FeaturesError as exc:  # a configuration error: the definitions do not load
        print(f"feature-worker: {one_line(exc)}", file=sys.stderr)
        return 2
    streams = {v.source.stream for v in views if isinstance(v.source, EventSource)}
    stream = cfg.stream or (streams.pop() if len(streams) == 1 else None)
    if stream is None:
        print(
            f"feature-worker: set KEEL_FEATURES_STREAM; the views read streams {sorted(streams)}",
            file=sys.stderr,
        )
        return 2
    views = [v for v in views if isinstance(v.source, EventSource) and v.source.stream == stream]
    home = cfg.home.absolute()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"feature-worker: cannot create KEEL_HOME {home}: {exc.strerror}", file=sys.stderr)
        return 1
    metrics = ComponentMetrics("features")
    server = start_metrics_server(metrics.registry, host=cfg.metrics_host, port=cfg.metrics_port)
    bus = online = state = None
    try:
        bus = open_bus(cfg.bus_url or f"sqlite:///{home}/events.db")
        online = open_online_store(cfg.online_url, home=home)
        state = SQLiteStateStore(home / "feature_state.db")
        worker = FeatureWorker(
            views,
            # the instance name gets a crashed run's in-flight events back at once, in order
            bus.consumer(stream, durable=cfg.durable, instance=cfg.durable),
            online,
            offline=OfflineStore(home / "offline"),
            state=state,
            metrics=metrics,
            batch_size=cfg.batch_size,
            flush_interval_s=cfg.flush_interval_s,
        )
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        log.info(
            "feature-worker started",
            extra={
                "stream": stream,
                "views": [v.name for v in views],
                "metrics_port": server.port,
                "reclaimed": getattr(worker.consumer, "reclaimed", 0),
            },
        )
        worker.run(stop)
        log.info(
            "feature-worker stopped",
            extra={"applied": worker.stats.applied, "dead_letters": worker.stats.dead_letters},
        )
    finally:
        server.stop()
        for closable in (state, online, bus):
            if closable is not None:
                closable.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
