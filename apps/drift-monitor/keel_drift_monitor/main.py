"""drift-monitor: consume the prediction log, evaluate windows, expose /metrics, publish
``drift.detected`` once per drift episode. Wiring only; the logic is keel.drift.

Input events (setting ``stream``, default ``predictions``):

* ``prediction.made``: payload ``{"features": {name: value, ...}, "score": p?, "model": str?}``
  with ``event_time`` = when the prediction was made.
* ``label.observed``: payload ``{"score": p, "label": 0|1}`` with ``event_time`` = the
  prediction's time (labels arrive late; they update realised performance).

Output: ``drift.detected`` on ``output_stream`` (default ``drift``), key = model,
payload = window, drifted features, scores, reason. Its id is derived from the model and
the episode's first window, so a restart that re-evaluates the same window publishes
the same id and the bus deduplicates it.

Settings follow the app convention (keel.telemetry.app, docs/apps.md): TOML table
``[drift-monitor]``, ``KEEL_DRIFT_MONITOR_<KEY>`` / shared ``KEEL_<KEY>`` variables; ``--help``
lists them. State (window panes, progress, closed windows) lives in ``state`` (default
``<home>/drift_monitor.db``): a restart, even after SIGKILL, resumes exactly where the
last commit left off. Unreadable, too-late and future events are dead-lettered with a reason.
Run one process per durable consumer.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keel.drift import (
    DRIFT_DETECTED,
    DriftDetected,
    DriftMetrics,
    DriftMonitorService,
    DriftPolicy,
    MonitorStore,
    ReferenceProfile,
    SQLiteMonitorStore,
    WindowConfig,
)
from keel.events import Bus, Delivery, Event, UnavailableError, default_url, open_bus
from keel.telemetry import get_logger, start_metrics_server
from keel.telemetry.app import App, AppContext

log = get_logger("keel.drift_monitor")

DRIFT_TYPE = DRIFT_DETECTED


class Settings(BaseModel):
    """drift-monitor settings (TOML ``[drift-monitor]``, ``KEEL_DRIFT_MONITOR_<KEY>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: Path = Field(description="reference profile JSON (from `keel drift profile`)")
    model: str = Field(default="default", description="the `model` label and event key")
    home: Path = Field(default=Path(".keel"), description="where state and the embedded bus live")
    bus_url: str | None = Field(
        default=None,
        description="event bus (nats://...); default $KEEL_NATS_URL, else the embedded log in home",
    )
    stream: str = Field(default="predictions", description="the prediction log")
    durable: str = Field(default="drift-monitor", description="durable consumer")
    output_stream: str = Field(default="drift", description="where drift.detected goes")
    window_s: float = Field(default=3600.0, gt=0, description="window size")
    slide_s: float | None = Field(default=None, gt=0, description="slide (sliding windows)")
    lateness_s: float = Field(default=0.0, ge=0, description="allowed lateness")
    min_samples: int = Field(default=200, ge=1, description="policy: rows to judge a window")
    consecutive: int = Field(default=2, ge=1, description="policy: drifted windows for DRIFT")
    drift_share: float = Field(default=0.3, gt=0, le=1, description="policy: drifted share")
    state: Path | None = Field(
        default=None, description="monitor state + window results (SQLite); default in home"
    )
    metrics_host: str = Field(default="127.0.0.1", description="/metrics and /healthz address")
    metrics_port: int = Field(default=9108, ge=0, le=65535, description="/metrics port (0: any)")
    batch_size: int = Field(default=1000, ge=1, description="events per fetch")
    poll_timeout_s: float = Field(default=1.0, gt=0, description="fetch wait")

    @field_validator("profile")
    @classmethod
    def _profile_exists(cls, value: Path) -> Path:
        if not value.exists():
            raise ValueError(
                f"profile file {value} does not exist: build one with `keel drift profile`"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.slide_s is not None and (self.window_s / self.slide_s) % 1:
            raise ValueError("window_s must be a whole multiple of slide_s")
        return self

    @property
    def state_path(self) -> Path:
        return self.state or self.home.absolute() / "drift_monitor.db"


RENAMED = {
    "KEEL_DRIFT_CONFIG": "KEEL_DRIFT_MONITOR_CONFIG",
    **{
        f"KEEL_DRIFT_{key.upper()}": f"KEEL_DRIFT_MONITOR_{key.upper()}"
        for key in Settings.model_fields
    },
}

APP = App(
    "drift-monitor",
    Settings,
    summary="Watch a model's prediction log for drift; publish drift.detected per episode.",
    description=(
        "Evaluates event-time windows against the reference profile with keel.drift, serves\n"
        "the drift metrics at /metrics and /healthz. SIGTERM/SIGINT: commit, exit 0."
    ),
    renamed=RENAMED,
)


def build_service(
    config: Settings, bus: Bus, store: MonitorStore | None = None, instance: str = ""
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


def run(settings: Settings, ctx: AppContext) -> None:
    """Run until ``ctx.stop`` is set: serve /metrics, consume, evaluate, publish."""
    home = settings.home.absolute()
    bus = open_bus(settings.bus_url or default_url({**os.environ, "KEEL_HOME": str(home)}))
    try:
        store = SQLiteMonitorStore(settings.state_path)
        try:
            service = build_service(settings, bus, store, instance=settings.durable)
            server = start_metrics_server(
                service.metrics.registry, host=settings.metrics_host, port=settings.metrics_port
            )
            ctx.ready(
                stream=settings.stream,
                metrics_port=server.port,
                reclaimed=getattr(service.consumer, "reclaimed", 0),
            )
            try:
                service.run(ctx.stop)
            finally:
                server.stop()
                ctx.report(dead_letters=service.dead_letters, episodes=len(service.published))
        finally:
            store.close()
    finally:
        bus.close()


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    return APP.main(run, argv, env)


if __name__ == "__main__":
    sys.exit(main())
