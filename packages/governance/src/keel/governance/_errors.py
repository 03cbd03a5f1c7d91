"""keel.governance errors, grouped by what the caller does next."""

from __future__ import annotations


class GovernanceError(Exception):
    """Base class of every error keel.governance raises."""


class InvalidInputError(GovernanceError, ValueError):
    """The data, manifest, record or configuration given is not acceptable: fix the input."""


class ManifestFieldError(InvalidInputError):
    """The artifact manifest lacks a field governance needs, or it has the wrong type."""


class LedgerError(GovernanceError):
    """The approvals ledger cannot be read or written (I/O, permissions): check the path."""


class LedgerTamperedError(LedgerError):
    """The approvals ledger fails verification: an entry was edited, reordered or deleted.

    Nothing recorded in a tampered ledger can be trusted; restore it from a backup and
    investigate. ``problems`` lists every broken link found, not only the first.
    """

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems

    def __reduce__(self) -> tuple[type, tuple[str, tuple[str, ...]]]:
        return (type(self), (str(self), self.problems))
