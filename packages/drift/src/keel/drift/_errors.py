"""keel.drift errors, grouped by what the caller does next."""

from __future__ import annotations


class DriftError(Exception):
    """Base class of every error keel.drift raises."""


class InvalidInputError(DriftError, ValueError):
    """The data, profile or configuration given is not acceptable: fix the input."""


class ProfileFormatError(InvalidInputError):
    """A saved profile is malformed, of an unknown format version, or fails its schema."""


class IncompatibleProfilesError(InvalidInputError):
    """Two profiles cannot be merged (different columns, kinds or parameters)."""
