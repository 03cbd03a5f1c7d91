"""Prometheus metrics of training jobs, through keel.telemetry (the driver records them from
the workers' events, so they exist while the job runs and can be served or pushed).

keel_trainer_samples_per_second          training throughput (all workers), last window
keel_trainer_step_seconds                one optimiser step on rank 0
keel_trainer_checkpoint_seconds          writing + committing one checkpoint
keel_trainer_steps_total                 optimiser steps completed (re-done steps count again)
keel_trainer_restarts_total              worker-group restarts after a failure
keel_trainer_runs_total{status}          finished runs by status (completed, early_stopped,
                                         stopped, failed)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from keel.telemetry import DURATION_BUCKETS_SECONDS, ComponentMetrics

_STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.metrics = m = ComponentMetrics("trainer", registry=registry)
        self.samples_per_second = m.gauge("samples_per_second", "Training throughput, all workers.")
        self.step_seconds = m.histogram(
            "step_seconds", "One optimiser step (rank 0).", buckets=_STEP_BUCKETS
        )
        self.checkpoint_seconds = m.histogram(
            "checkpoint_seconds",
            "Writing and committing one checkpoint.",
            buckets=DURATION_BUCKETS_SECONDS,
        )
        self.steps = m.counter("steps_total", "Optimiser steps completed.")
        self.restarts = m.counter("restarts_total", "Worker-group restarts after a failure.")
        self.runs = m.counter(
            "runs_total", "Finished training runs, by status.", labels=("status",)
        )

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry
