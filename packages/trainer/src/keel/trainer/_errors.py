"""Errors raised by keel.trainer, grouped by what the caller does next.

Ray's, torch's, pyarrow's and MLflow's exceptions are translated at the boundary and never
leak; every class pickles cleanly (plain message args), so an error raised inside a Ray
worker reaches the driver as itself.
"""

from __future__ import annotations


class TrainerError(Exception):
    """Base class of every error keel.trainer raises."""


class InvalidJobError(TrainerError, ValueError):
    """The job spec (TOML or values) is malformed: the message names the key; fix the spec."""


class DataError(TrainerError, ValueError):
    """The training set is unreadable or does not match the spec (missing column, wrong type,
    too few rows, NaN): fix the data or the spec's columns."""


class UnknownBuilderError(InvalidJobError, LookupError):
    """The job names a model builder, loss, metric, optimiser or schedule nobody registered."""


class CheckpointError(TrainerError):
    """A committed checkpoint fails verification or cannot be written."""


class ResumeConflictError(TrainerError):
    """The job name already has checkpoints from a different job spec or worker count:
    use a new job name, or `fresh=True` (`keel train --fresh`) to discard them."""


class ClusterUnavailableError(TrainerError):
    """Ray could not be started or reached (RAY_ADDRESS wrong, not enough CPUs/GPUs): retry
    or fix the cluster address/resources."""


class TrainingFailedError(TrainerError):
    """Training failed more times than the job's `max_failures` allows, or raised inside a
    worker. The last committed checkpoint is kept: re-running the job resumes from it."""


class TrainingStoppedError(TrainerError):
    """Training was stopped on request (Ctrl-C) after a committed checkpoint: re-run the same
    job name to resume from it."""

    def __init__(self, message: str, step: int = 0) -> None:
        super().__init__(message, step)
        self.step = step

    def __str__(self) -> str:
        return str(self.args[0])


class ExportError(TrainerError):
    """Exporting the trained model as a signed keel.artifacts artifact failed (no signing key,
    output exists, artifact refused): the message says which."""


class TrackingError(TrainerError):
    """MLflow tracking failed (store unreachable, bad URI)."""
