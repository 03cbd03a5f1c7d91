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
(``KEEL_DRIFT_CONFIG``, table ``[drift_monitor]``), validated at start.
Delivery is at-least-once: events are acked after their batch was observed.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
import tomllib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from keel.drift import (
    DriftError,
    DriftMetrics,
    DriftPolicy,
    ReferenceProfile,
    ReportWindow,
    StreamingMonitor,
    WindowConfig,
)
from keel.events import Bus, Delivery, Event, EventsError, open_bus
from keel.telemetry import get_logger, start_metrics_server

log = get_logger("keel.drift_monitor")

PREDICTION_TYPE = "prediction.made"
LABEL_TYPE = "label.observed"
DRIFT_TYPE = "drift.detected"


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
    try:
        return MonitorConfig(**values)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in e['loc']) or 'config'} (env KEEL_DRIFT_{'_'.join(str(p) for p in e['loc']).upper()}): {e['msg']}"
            for e in exc.errors()
        ]
        raise ConfigError("invalid drift-monitor configuration:\n" + "\n".join(lines)) from None


def episode_event_id(model: str, window_start: str | None) -> str:
    """Stable id of the drift.detected event of the episode starting at ``window_start``."""
    return hashlib.sha256(f"{model}|{window_start}".encode()).hexdigest()[:32]


class DriftMonitorService:
    """Consumer loop: one ``step()`` fetches a batch, observes it, publishes episode events."""

    def __init__(
        self, config: MonitorConfig, bus: Bus, metrics: DriftMetrics | None = None
    ) -> None:
        self.config = config
        self.bus = bus
        profile = ReferenceProfile.load(config.profile)
        policy = DriftPolicy(
            min_samples=config.min_samples,
            consecutive=config.consecutive,
            drift_share=config.drift_share,
        )
        self.metrics = metrics or DriftMetrics(policy=policy)
        self.monitor = StreamingMonitor(
            profile,
            WindowConfig(
                size=timedelta(seconds=config.window_s),
                slide=timedelta(seconds=config.slide_s) if config.slide_s else None,
                allowed_lateness=timedelta(seconds=config.lateness_s),
                score_column="score",
            ),
            policy=policy,
        )
        self.consumer = bus.consumer(config.stream, config.durable)
        self.published: list[Event] = []
        self._late_seen = 0

    def step(self) -> list[ReportWindow]:
        deliveries = self.consumer.fetch(
            max_messages=self.config.batch_size, timeout_s=self.config.poll_timeout_s
        )
        if not deliveries:
            return []
        windows = self._observe(deliveries)
        self.consumer.ack_all(deliveries)
        return windows

    def flush(self) -> list[ReportWindow]:
        """Close all open windows (shutdown / end of a replay)."""
        windows = self.monitor.flush()
        self._handle(windows)
        return windows

    def _observe(self, deliveries: list[Delivery]) -> list[ReportWindow]:
        preds: list[dict[str, Any]] = []
        labels: list[dict[str, Any]] = []
        for d in deliveries:
            ev = d.event
            try:
                body = ev.json()
            except Exception as exc:  # undecodable payload: dead-letter it, keep going
                d.term(f"payload is not JSON: {exc}")
                continue
            if ev.type == PREDICTION_TYPE and isinstance(body.get("features"), dict):
                preds.append(
                    {"event_time": ev.event_time, "score": body.get("score"), **body["features"]}
                )
            elif ev.type == LABEL_TYPE and "label" in body and "score" in body:
                labels.append(
                    {"event_time": ev.event_time, "score": body["score"], "label": body["label"]}
                )
        windows: list[ReportWindow] = []
        if preds:
            frame = pl.DataFrame(preds, infer_schema_length=None).with_columns(
                pl.col("event_time").dt.cast_time_unit("us")
            )
            if frame["score"].null_count() == frame.height:
                frame = frame.drop("score")
            windows = self.monitor.observe(frame)
        if labels:
            self.monitor.observe_labels(
                pl.DataFrame(labels).with_columns(pl.col("event_time").dt.cast_time_unit("us"))
            )
        late = self.monitor.stats.late_rows
        self.metrics.record_late(late - self._late_seen)
        self._late_seen = late
        self._handle(windows)
        return windows

    def _handle(self, windows: list[ReportWindow]) -> None:
        for w in windows:
            self.metrics.record(w)
            d = w.decision
            if d is None or not d.episode_start:
                continue
            top = sorted(d.scores.items(), key=lambda kv: -kv[1])[:20]
            ev = Event.create(
                type=DRIFT_TYPE,
                key=self.config.model,
                event_time=_parse(w.result.window_end),
                id=episode_event_id(self.config.model, w.result.window_start),
                payload={
                    "model": self.config.model,
                    "window_start": w.result.window_start,
                    "window_end": w.result.window_end,
                    "rows": w.result.n_rows,
                    "drifted": list(d.drifted),
                    "drift_share": d.drift_share,
                    "scores": dict(top),
                    "reason": d.reason,
                    "quality_issues": [q.to_dict() for q in w.result.quality][:50],
                },
            )
            self.bus.publish(self.config.output_stream, ev)
            self.published.append(ev)
            log.info(
                "drift detected",
                extra={
                    "model": self.config.model,
                    "window_end": w.result.window_end,
                    "drifted": list(d.drifted)[:10],
                },
            )


def _parse(ts: str | None) -> datetime:
    if not ts:
        raise DriftError("window without an end time")
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def run(
    config: MonitorConfig, stop: threading.Event, on_start: Callable[[int], None] | None = None
) -> None:
    """Run until ``stop`` is set: serve /metrics, consume, evaluate, publish."""
    bus = open_bus(config.bus_url)
    try:
        service = DriftMonitorService(config, bus)
        server = start_metrics_server(
            service.metrics.registry, host=config.metrics_host, port=config.metrics_port
        )
        log.info(
            "drift-monitor started", extra={"stream": config.stream, "metrics_port": server.port}
        )
        if on_start is not None:
            on_start(server.port)
        try:
            while not stop.is_set():
                service.step()
        finally:
            server.stop()
    finally:
        bus.close()


def main() -> int:
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
    except (DriftError, EventsError) as exc:
        print(f"drift-monitor: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
