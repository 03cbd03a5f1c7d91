"""keel.features: feature views declared once, computed by two engines that agree.

- Definitions: :class:`Entity`, :class:`FeatureView`, :class:`Aggregation`, :class:`Transform`,
  sources :class:`EventSource` / :class:`TableSource`, a code-first :class:`Registry`.
- Streaming engine: :class:`StreamingEngine` (bucketed, bounded state; exact at bucket bounds).
- Stores: online :class:`SQLiteOnlineStore` / :class:`RedisOnlineStore` (conditional on event
  time), :class:`OfflineStore` (Parquet by date), state snapshots (SQLite, Redis, memory).
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
    load_registry,
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
from keel.features._stores import (
    MemoryStateStore,
    OfflineStore,
    OnlineRow,
    OnlineStore,
    RedisOnlineStore,
    RedisStateStore,
    SQLiteOnlineStore,
    SQLiteStateStore,
    StateStore,
    keel_home,
    open_online_store,
)
from keel.features._streaming import (
    DeadLetter,
    IngestReport,
    StreamingEngine,
    entity_key,
    events_to_frame,
)
from keel.features._worker import (
    EVENT_LOG_SCHEMA,
    FeatureWorker,
    event_log_dataset,
    event_log_to_frame,
    namespace,
)

__all__ = [
    "EVENT_LOG_SCHEMA",
    "namespace",
    "event_log_to_frame",
    "event_log_dataset",
    "FeatureWorker",
    "open_online_store",
    "keel_home",
    "StateStore",
    "SQLiteStateStore",
    "SQLiteOnlineStore",
    "RedisStateStore",
    "RedisOnlineStore",
    "OnlineStore",
    "OnlineRow",
    "OfflineStore",
    "MemoryStateStore",
    "AGG_FUNCTIONS",
    "Aggregation",
    "ConflictError",
    "DeadLetter",
    "Entity",
    "EventSource",
    "FeatureView",
    "FeaturesError",
    "IngestReport",
    "InvalidDefinitionError",
    "InvalidInputError",
    "NotFoundError",
    "Registry",
    "StreamingEngine",
    "TableSource",
    "Transform",
    "UnavailableError",
    "backfill",
    "compute_at",
    "entity_key",
    "events_to_frame",
    "latest",
    "load_registry",
    "registry_from_objects",
    "training_set",
]
