"""trainer: run one keel.trainer job locally or on a Ray cluster (``RAY_ADDRESS``).

Wiring only; the logic is keel.trainer. Settings follow the app convention
(keel.telemetry.app, docs/apps.md): TOML table ``[trainer]``, ``KEEL_TRAINER_<KEY>`` /
shared ``KEEL_<KEY>`` variables; ``--help`` lists them. While the job runs, ``/metrics``
serves the trainer metrics (throughput, step time, checkpoint duration, restarts) for
Prometheus to scrape. SIGTERM/SIGINT: the workers stop right after their next committed
checkpoint and the app exits 0 with ``status: stopped``; starting it again resumes.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from keel.telemetry import get_logger, start_metrics_server
from keel.telemetry.app import App, AppContext
from keel.trainer import TrainerMetrics, ensure_ray, load_job, run_job

log = get_logger("keel.trainer_app")


class Settings(BaseModel):
    """trainer settings (TOML ``[trainer]``, ``KEEL_TRAINER_<KEY>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: Path = Field(description="the training job TOML")
    home: Path = Field(default=Path(".keel"), description="checkpoints, MLflow store, artifacts")
    fresh: bool = Field(default=False, description="discard the job name's checkpoints first")
    export: bool = Field(default=True, description="export a signed artifact at the end")
    signing_key: Path | None = Field(default=None, description="PEM private key (or the job's)")
    ray_address: str | None = Field(
        default=None, description="Ray cluster; default $RAY_ADDRESS, else local"
    )
    ray_num_cpus: int | None = Field(
        default=None, ge=1, description="CPUs of the local Ray (default: all)"
    )
    metrics_host: str = Field(default="127.0.0.1", description="/metrics address")
    metrics_port: int = Field(default=9110, ge=0, le=65535, description="/metrics port (0: any)")
    progress_every_s: float = Field(default=10.0, gt=0, description="progress log line interval")

    @field_validator("job")
    @classmethod
    def _job_exists(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"job file {value} does not exist")
        return value


APP = App(
    "trainer",
    Settings,
    summary="Run a keel.trainer job on Ray: resumable, tracked in MLflow, exported signed.",
    description=(
        "Trains with PyTorch DDP on Ray Train, checkpoints atomically, resumes by job name,\n"
        "serves /metrics while it runs. SIGTERM/SIGINT: stop after the next committed checkpoint."
    ),
)


def _stop_on_signals(ctx: AppContext) -> None:
    """Ray's driver start-up installs its own fatal SIGTERM handler (it would kill the app
    mid-step): put ours back so SIGTERM/SIGINT mean "stop after the next checkpoint"."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: ctx.stop.set())


def run(settings: Settings, ctx: AppContext) -> None:
    job = load_job(settings.job)
    ensure_ray(address=settings.ray_address, num_cpus=settings.ray_num_cpus)
    _stop_on_signals(ctx)
    key = None
    if settings.signing_key is not None:
        from keel.artifacts import SigningKey

        key = SigningKey.from_pem(settings.signing_key.read_bytes())
    metrics = TrainerMetrics()
    server = start_metrics_server(
        metrics.registry, host=settings.metrics_host, port=settings.metrics_port
    )
    last = [0.0]

    def on_event(e: dict[str, Any]) -> None:
        now = time.monotonic()
        if e["type"] == "progress" and now - last[0] < settings.progress_every_s:
            return
        last[0] = now
        log.info(f"trainer {e['type']}", extra={k: v for k, v in e.items() if k != "type"})

    try:
        ctx.ready(job=job.name, metrics_port=server.port)
        result = run_job(
            job,
            home=settings.home,
            fresh=settings.fresh,
            stop=ctx.stop,
            signing_key=key,
            export=settings.export,
            ray_address=settings.ray_address,
            ray_num_cpus=settings.ray_num_cpus,
            metrics=metrics,
            on_event=on_event,
        )
        ctx.report(
            status=result.status,
            step=result.step,
            restarts=result.restarts,
            artifact_digest=result.artifact_digest,
            mlflow_run_id=result.mlflow_run_id,
        )
    finally:
        server.stop()


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    return APP.main(run, argv, env)


if __name__ == "__main__":
    sys.exit(main())
