"""drift-monitor: consume the prediction log, evaluate windows, expose /metrics, publish
``drift.detected`` once per drift episode. Wiring only; the logic is keel.drift.

Input events (stream ``KEEL_DRIFT_STREAM``, default ``predictions``):

* ``prediction.made``: payload ``{"features": {name: value, ...}, "score": p?, "model": str?}``
  with ``event_time`` = when the prediction was made.
* ``label.observed``: payload ``{"score": p, "label": 0|1}`` with ``event_time`` = the
  prediction's time (labels arrive late; they update realised performance).

Output: ``drift.detected`` on ``KEEL_DRIFT_OUTPUT_STREAM`` (default ``drift``), key = model,
payload = window, drifted features, scores, reason. Its id is derived from the model and
the episode's first window, so a restart that re-evaluates the same window publishes
the same id and the bus deduplicates it.

Config: ``KEEL_DRIFT_*`` environment variables over an optional TOML file
(``KEEL_DRIFT_CONFIG``, table ``[drift_monitor]``), validated at start. State (window panes,
progress, closed windows) lives in ``KEEL_DRIFT_STATE`` (default
``$KEEL_HOME/drift_monitor.db``): a restart, even after SIGKILL, resumes exactly where the
last commit left off. Unreadable, too-late and future events are dead-lettered with a reason.
Run one process per durable consumer.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import tomllib
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from keel.drift import (
    DRIFT_DETECTED,
    DriftDetected,
    DriftError,
    DriftMetrics,
    DriftMonitorService,
    DriftPolicy,
    MonitorStore,
    ReferenceProfile,
    SQLiteMonitorStore,
    WindowConfig,
)
from keel.events import Bus, Delivery, Event, EventsError, UnavailableError, open_bus
from keel.telemetry import TelemetryError, get_logger, start_metrics_server

log = get_logger("keel.drift_monitor")

DRIFT_TYPE = DRIFT_DETECTED


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and what to do."""


class MonitorConfig(BaseModel):
    """drift-monitor settings (env ``KEEL_DRIFT_<NAME>`` or TOML ``[drift_monitor]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: Path = Field(description="reference profile JSON (from `keel drift profile`)")
    bus_url: str | None = Field(
        default=None, description="events bus URL; default: KEEL_NATS_URL or the embedded log"
    )
    stream: str = "predictions"
    durable: str = "drift-monitor"
    output_stream: str = "drift"
    model: str = "default"
    window_s: float = Field(default=3600.0, gt=0)
    slide_s: float | None = Field(default=None, gt=0)
    lateness_s: float = Field(default=0.0, ge=0)
    min_samples: int = Field(default=200, ge=1)
    consecutive: int = Field(default=2, ge=1)
    drift_share: float = Field(default=0.3, gt=0, le=1)
    state: Path | None = Field(
        default=None,
        description="monitor state + window results (SQLite); default KEEL_HOME/drift_monitor.db",
    )
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9108, ge=0, le=65535)
    batch_size: int = Field(default=1000, ge=1)
    poll_timeout_s: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> MonitorConfig:
        if not self.profile.exists():
            raise ValueError(
                f"profile file {self.profile} does not exist: build one with `keel drift profile`"
            )
        if self.slide_s is not None and (self.window_s / self.slide_s) % 1:
            raise ValueError("window_s must be a whole multiple of slide_s")
        return self


def load_config(env: Mapping[str, str] | None = None) -> MonitorConfig:
    """Defaults < TOML (``KEEL_DRIFT_CONFIG``, table ``[drift_monitor]``) < ``KEEL_DRIFT_*`` env."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if env.get("KEEL_DRIFT_CONFIG"):
        path = Path(env["KEEL_DRIFT_CONFIG"])
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist: fix KEEL_DRIFT_CONFIG") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        values.update(raw.get("drift_monitor", raw))
    for name in MonitorConfig.model_fields:
        var = f"KEEL_DRIFT_{name.upper()}"
        if env.get(var):
            values[name] = env[var]
    if "state" not in values:
        values["state"] = Path(env.get("KEEL_HOME") or ".keel").absolute() / "drift_monitor.db"
    try:
        return MonitorConfig(**values)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in e['loc']) or 'config'} (env KEEL_DRIFT_{'_'.join(str(p) for p in e['loc']).upper()}): {e['msg']}"
            for e in exc.errors()
        ]
        raise ConfigError("invalid drift-monitor configuration:\n" + "\n".join(lines)) from None


def build_service(
    config: MonitorConfig, bus: Bus, store: MonitorStore | None = None, instance: str = ""
) -> DriftMonitorService[Delivery]:
    """Wire the library service: the bus consumer, a publisher of drift.detected events,
    the window config and policy from ``config``."""
    profile = ReferenceProfile.load(config.profile)
    policy = DriftPolicy(
        min_samples=config.min_samples,
        consecutive=config.consecutive,
        drift_share=config.drift_share,
    )
    window = WindowConfig(
        size=timedelta(seconds=config.window_s),
        slide=timedelta(seconds=config.slide_s) if config.slide_s else None,
        allowed_lateness=timedelta(seconds=config.lateness_s),
        score_column="score",
    )

    def publish(episode: DriftDetected) -> None:
        bus.publish(
            config.output_stream,
            Event.create(
                type=DriftDetected.TYPE,
                key=episode.model,
                event_time=episode.window_end,
                id=episode.event_id,
                payload=episode.to_payload(),
            ),
        )
        log.info(
            "drift detected",
            extra={
                "model": episode.model,
                "window_end": episode.window_end.isoformat(),
                "drifted": list(episode.drifted)[:10],
            },
        )

    return DriftMonitorService(
        profile,
        window,
        bus.consumer(config.stream, config.durable, instance=instance or None),
        publish,
        model=config.model,
        policy=policy,
        store=store,
        metrics=DriftMetrics(policy=policy, model=config.model),
        batch_size=config.batch_size,
        poll_timeout_s=config.poll_timeout_s,
        transient=(UnavailableError,),
    )


def run(
    config: MonitorConfig, stop: threading.Event, on_start: Callable[[int], None] | None = None
) -> None:
    """Run until ``stop`` is set: serve /metrics, consume, evaluate, publish."""
    bus = open_bus(config.bus_url)
    store = SQLiteMonitorStore(config.state) if config.state else None
    try:
        service = build_service(config, bus, store, instance=config.durable)
        try:
            server = start_metrics_server(
                service.metrics.registry, host=config.metrics_host, port=config.metrics_port
            )
        except TelemetryError as exc:
            raise DriftError(f"{exc} (set KEEL_DRIFT_METRICS_PORT)") from exc
        log.info(
            "drift-monitor started",
            extra={
                "stream": config.stream,
                "metrics_port": server.port,
                "reclaimed": getattr(service.consumer, "reclaimed", 0),
            },
        )
        if on_start is not None:
            on_start(server.port)
        try:
            service.run(stop)
        finally:
            server.stop()
        log.info(
            "drift-monitor stopped",
            extra={"dead_letters": service.dead_letters, "episodes": len(service.published)},
        )
    finally:
        if store is not None:
            store.close()
        bus.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"drift-monitor: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        run(config, stop)
    except (DriftError, EventsError, OSError) as exc:
        print(f"drift-monitor: {one_line(exc)}", file=sys.stderr)
        return 1
    return 0


def one_line(exc: BaseException) -> str:
    """An error as one line (no traceback, no embedded newlines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


if __name__ == "__main__":
    sys.exit(main())
