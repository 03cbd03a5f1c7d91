"""keel.features: feature views declared once, computed by two engines that agree.

- Definitions: :class:`Entity`, :class:`FeatureView`, :class:`Aggregation`, :class:`Transform`,
  sources :class:`EventSource` / :class:`TableSource`, a code-first :class:`Registry`.
- Batch engine (Polars, lazy, vectorised): :func:`compute_at`, :func:`backfill`, :func:`latest`,
  and point-in-time-correct :func:`training_set`.

Window ``w`` at time ``T`` covers events with ``T - w < event_time <= T`` (and
``record_time <= T`` when the view has a record-time column).
"""

from keel.features._batch import backfill, compute_at, latest, training_set
from keel.features._definitions import (
    AGG_FUNCTIONS,
    Aggregation,
    Entity,
    EventSource,
    FeatureView,
    Registry,
    TableSource,
    Transform,
    registry_from_objects,
)
from keel.features._errors import (
    ConflictError,
    FeaturesError,
    InvalidDefinitionError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
)

__all__ = [
    "AGG_FUNCTIONS",
    "Aggregation",
    "ConflictError",
    "Entity",
    "EventSource",
    "FeatureView",
    "FeaturesError",
    "InvalidDefinitionError",
    "InvalidInputError",
    "NotFoundError",
    "Registry",
    "TableSource",
    "Transform",
    "UnavailableError",
    "backfill",
    "compute_at",
    "latest",
    "registry_from_objects",
    "training_set",
]
