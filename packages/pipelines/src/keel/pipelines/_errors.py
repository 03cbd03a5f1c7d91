"""keel.pipelines errors, grouped by what the caller does next."""

from __future__ import annotations


class PipelinesError(Exception):
    """Base class of every error keel.pipelines raises."""


class InvalidInputError(PipelinesError, ValueError):
    """A trigger, gate input, parameter or record is not acceptable: fix the input."""


class NotFoundError(PipelinesError, LookupError):
    """The run, step or record named does not exist: check the id."""


class ConflictError(PipelinesError):
    """Another controller process is already advancing runs in this database: run one."""


class StepFailedError(PipelinesError):
    """A step executor raised; the run is marked failed at that step (rerun resumes there)."""

    def __init__(self, run_id: str, step: str, cause: str) -> None:
        super().__init__(f"run {run_id}: step {step!r} failed: {cause}")
        self.run_id, self.step, self.cause = run_id, step, cause

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (type(self), (self.run_id, self.step, self.cause))


class StoreError(PipelinesError):
    """The run store or provenance database cannot be read or written: check KEEL_HOME."""


class ProvenanceTamperedError(PipelinesError):
    """The provenance chain fails verification (an entry edited, reordered or deleted).

    ``problems`` lists every broken link found. Nothing after the first problem can be
    trusted; restore the database from a backup and investigate.
    """

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems

    def __reduce__(self) -> tuple[type, tuple[str, tuple[str, ...]]]:
        return (type(self), (str(self), self.problems))
