"""Declarative, typed feature definitions: entities, sources, aggregations, feature views.

A definition is plain data validated on construction; its ``version`` is a hash of its
canonical JSON form, so any change to what a view computes changes the version and an
unchanged definition keeps it across processes and machines.

Window semantics (shared by every engine): a feature with window ``w`` evaluated at time
``T`` aggregates the entity's events with ``T - w < event_time <= T`` (left-open,
right-closed), and, when the view has a record-time column, only events with
``record_time <= T``. Null input values are ignored (SQL semantics). Empty windows give
``0`` for count / sum / distinct_count / approx_distinct_count and null for mean / min / max / last / std (std is
the sample standard deviation, null below two values). ``last`` is the value of the
latest event; events tied on event time are ordered by value (largest wins), so the
result never depends on arrival order.

NaN and +-inf are values, handled alike by every engine: a window holding NaN gives NaN for
sum / mean / std / min / max; +-inf give the IEEE sum and mean (NaN when both signs) and a
NaN std; an exact sum beyond float64's range is +-inf; none of this outlives the value's
stay in the window. std is exact for values up to 1e145 in magnitude (stable methods, see
``_numerics`` and the streaming engine), unspecified beyond.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import polars as pl

from keel.features._errors import (
    ConflictError,
    InvalidDefinitionError,
    NotFoundError,
    short_repr,
)

AggFunction = Literal[
    "count", "sum", "mean", "min", "max", "last", "distinct_count", "approx_distinct_count", "std"
]
FieldType = Literal["float", "int", "str", "bool"]

AGG_FUNCTIONS: tuple[str, ...] = (
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "last",
    "distinct_count",
    "approx_distinct_count",
    "std",
)
FIELD_TYPES: dict[str, pl.DataType] = {
    "float": pl.Float64(),
    "int": pl.Int64(),
    "str": pl.String(),
    "bool": pl.Boolean(),
}
_NUMERIC_ONLY = {"sum", "mean", "min", "max", "std"}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VIEW_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_US = timedelta(microseconds=1)
DEFAULT_STATE_BUDGET = 1 << 20  # streaming state per entity, bytes (1 MiB)


def _check_name(kind: str, name: str, pattern: re.Pattern[str] = _NAME_RE) -> None:
    if not isinstance(name, str) or not pattern.match(name):
        raise InvalidDefinitionError(
            f"{kind} name {name!r} is invalid: use letters, digits and underscores, "
            "starting with a letter or underscore"
        )


def _check_duration(what: str, value: object) -> timedelta:
    if not isinstance(value, timedelta):
        raise InvalidDefinitionError(
            f"{what} must be a datetime.timedelta, got {short_repr(value)}"
        )
    if value <= timedelta(0):
        raise InvalidDefinitionError(f"{what} must be positive, got {value}")
    if value % _US != timedelta(0):
        raise InvalidDefinitionError(f"{what} must be a whole number of microseconds, got {value}")
    return value


def duration_us(value: timedelta) -> int:
    """A timedelta as integer microseconds (exact)."""
    return value // _US


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} B"


def window_label(window: timedelta) -> str:
    """A short human label for a window: 600s -> '10m', 86400s -> '1d'."""
    us = duration_us(window)
    for unit, size in (
        ("d", 86_400_000_000),
        ("h", 3_600_000_000),
        ("m", 60_000_000),
        ("s", 1_000_000),
    ):
        if us % size == 0:
            return f"{us // size}{unit}"
    return f"{us}us"


@dataclass(frozen=True)
class Entity:
    """A thing features describe (a card, a user), identified by one or more join keys."""

    name: str
    join_keys: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("entity", self.name)
        if isinstance(self.join_keys, str):
            keys: tuple[str, ...] = (self.join_keys,)
        else:
            keys = tuple(self.join_keys) if self.join_keys else (self.name,)
        for key in keys:
            _check_name(f"entity {self.name!r} join key", key)
        if len(set(keys)) != len(keys):
            raise InvalidDefinitionError(f"entity {self.name!r} repeats a join key: {keys}")
        object.__setattr__(self, "join_keys", keys)


@dataclass(frozen=True)
class EventSource:
    """Rows come from events of ``event_type`` on bus stream ``stream``.

    An event becomes one row: its JSON payload's fields, plus ``event_id``,
    ``event_time`` and ``publish_time`` (usable as the record time). A join key missing
    from the payload is taken from the event's ``key``.
    """

    event_type: str
    stream: str = "events"

    def __post_init__(self) -> None:
        if not self.event_type or not isinstance(self.event_type, str):
            raise InvalidDefinitionError("EventSource.event_type must be a non-empty string")
        if not self.stream or not isinstance(self.stream, str):
            raise InvalidDefinitionError("EventSource.stream must be a non-empty string")


@dataclass(frozen=True)
class TableSource:
    """Rows come from a table: an offline-store dataset name (or any frame given to the engine)."""

    dataset: str

    def __post_init__(self) -> None:
        _check_name("table source dataset", self.dataset, _VIEW_NAME_RE)


Source = EventSource | TableSource


@dataclass(frozen=True)
class Aggregation:
    """One windowed aggregate: ``function`` of ``column`` over the last ``window``.

    ``count`` with ``column=None`` counts events; with a column it counts non-null values.
    """

    function: str
    column: str | None
    window: timedelta
    name: str = ""

    def __post_init__(self) -> None:
        if self.function not in AGG_FUNCTIONS:
            raise InvalidDefinitionError(
                f"unknown aggregation {self.function!r}; expected one of {', '.join(AGG_FUNCTIONS)}"
            )
        if self.column is None and self.function != "count":
            raise InvalidDefinitionError(f"aggregation {self.function!r} needs a column")
        if self.column is not None:
            _check_name("aggregation column", self.column)
        _check_duration(f"window of {self.function}({self.column})", self.window)
        if not self.name:
            col = f"_{self.column}" if self.column else ""
            object.__setattr__(self, "name", f"{self.function}{col}_{window_label(self.window)}")
        _check_name("feature", self.name)


@dataclass(frozen=True)
class Transform:
    """A row-level derived column ``name = expr`` of declared ``dtype``, applied before aggregating."""

    name: str
    expr: pl.Expr = field(compare=False)
    dtype: str = "float"

    def __post_init__(self) -> None:
        _check_name("transform", self.name)
        if not isinstance(self.expr, pl.Expr):
            raise InvalidDefinitionError(
                f"transform {self.name!r}: expr must be a polars expression"
            )
        if self.dtype not in FIELD_TYPES:
            raise InvalidDefinitionError(
                f"transform {self.name!r}: dtype {self.dtype!r} is not one of {sorted(FIELD_TYPES)}"
            )

    def canonical(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "expr": json.loads(self.expr.meta.serialize(format="json")),
        }


@dataclass(frozen=True, eq=False)
class FeatureView:
    """A set of windowed aggregations over one source, keyed by entities.

    ``fields`` declares the source columns the view reads and their types
    (``float``, ``int``, ``str``, ``bool``). ``bucket`` is the streaming engine's time
    granularity (default: the greatest common divisor of the windows and ttl); streaming
    values are exact at multiples of it. ``allowed_lateness`` is how far behind the latest
    seen event time the streaming engine still applies an event.
    """

    name: str
    source: Source
    entities: Sequence[Entity]
    fields: Mapping[str, str]
    features: Sequence[Aggregation]
    event_time: str = "event_time"
    record_time: str | None = None
    id_column: str | None = None
    transforms: Sequence[Transform] = ()
    ttl: timedelta | None = None
    bucket: timedelta | None = None
    allowed_lateness: timedelta = timedelta(minutes=5)
    description: str = ""
    max_state_bytes_per_entity: int = DEFAULT_STATE_BUDGET

    def __post_init__(self) -> None:
        _check_name("feature view", self.name, _VIEW_NAME_RE)
        if not isinstance(self.source, EventSource | TableSource):
            raise InvalidDefinitionError(
                f"view {self.name!r}: source must be EventSource or TableSource, "
                f"got {short_repr(self.source)}"
            )
        ents = (self.entities,) if isinstance(self.entities, Entity) else tuple(self.entities)
        if not ents or not all(isinstance(e, Entity) for e in ents):
            raise InvalidDefinitionError(f"view {self.name!r}: needs at least one Entity")
        object.__setattr__(self, "entities", ents)
        keys = [k for e in ents for k in e.join_keys]
        if len(set(keys)) != len(keys):
            raise InvalidDefinitionError(f"view {self.name!r}: entities share a join key: {keys}")
        if not isinstance(self.fields, Mapping):
            raise InvalidDefinitionError(
                f"view {self.name!r}: fields must be a mapping column -> type"
            )
        flds = dict(self.fields)
        for col, typ in flds.items():
            _check_name(f"view {self.name!r} field", col)
            if typ not in FIELD_TYPES:
                raise InvalidDefinitionError(
                    f"view {self.name!r}: field {col!r} has type {typ!r}; expected one of {sorted(FIELD_TYPES)}"
                )
        object.__setattr__(self, "fields", flds)
        for special in (self.event_time, self.record_time, self.id_column):
            if special is not None:
                _check_name(f"view {self.name!r} column", special)
        reserved: set[str] = {
            c for c in (self.event_time, self.record_time, self.id_column, *keys) if c
        }
        clash = reserved & set(flds)
        if clash:
            raise InvalidDefinitionError(
                f"view {self.name!r}: {sorted(clash)} are key/time/id columns and cannot also be fields"
            )
        if self.record_time is not None and self.record_time == self.event_time:
            raise InvalidDefinitionError(
                f"view {self.name!r}: record_time must differ from event_time"
            )
        trs = tuple(self.transforms)
        object.__setattr__(self, "transforms", trs)
        types = dict(flds)
        for tr in trs:
            if not isinstance(tr, Transform):
                raise InvalidDefinitionError(
                    f"view {self.name!r}: transforms must be Transform objects"
                )
            if tr.name in types or tr.name in reserved:
                raise InvalidDefinitionError(
                    f"view {self.name!r}: transform {tr.name!r} shadows a column"
                )
            missing = set(tr.expr.meta.root_names()) - set(types)
            if missing:
                raise InvalidDefinitionError(
                    f"view {self.name!r}: transform {tr.name!r} reads undeclared columns {sorted(missing)}"
                )
            types[tr.name] = tr.dtype
        feats = tuple(self.features)
        if not feats:
            raise InvalidDefinitionError(f"view {self.name!r}: declare at least one feature")
        object.__setattr__(self, "features", feats)
        names: set[str] = set()
        for agg in feats:
            if not isinstance(agg, Aggregation):
                raise InvalidDefinitionError(
                    f"view {self.name!r}: features must be Aggregation objects"
                )
            if agg.name in names:
                raise InvalidDefinitionError(
                    f"view {self.name!r}: duplicate feature name {agg.name!r}"
                )
            names.add(agg.name)
            if agg.column is not None:
                if agg.column not in types:
                    raise InvalidDefinitionError(
                        f"view {self.name!r}: feature {agg.name!r} reads column {agg.column!r}, "
                        f"which is not a declared field or transform ({sorted(types)})"
                    )
                if agg.function in _NUMERIC_ONLY and types[agg.column] not in ("float", "int"):
                    raise InvalidDefinitionError(
                        f"view {self.name!r}: {agg.function} needs a numeric column, "
                        f"{agg.column!r} is {types[agg.column]}"
                    )
            if agg.function == "approx_distinct_count" and self.record_time is not None:
                raise InvalidDefinitionError(
                    f"view {self.name!r}: approx_distinct_count is not supported together with "
                    "a record-time column (late-recorded events cannot be merged into the "
                    "window sketches point-in-time); use distinct_count"
                )
        if self.ttl is not None:
            _check_duration(f"view {self.name!r} ttl", self.ttl)
        _check_duration(f"view {self.name!r} allowed_lateness", self.allowed_lateness)
        spans = [duration_us(a.window) for a in feats] + (
            [duration_us(self.ttl)] if self.ttl is not None else []
        )
        if self.bucket is None:
            object.__setattr__(self, "bucket", timedelta(microseconds=math.gcd(*spans)))
        else:
            b = duration_us(_check_duration(f"view {self.name!r} bucket", self.bucket))
            bad = [a.name for a in feats if duration_us(a.window) % b]
            if bad:
                raise InvalidDefinitionError(
                    f"view {self.name!r}: bucket {self.bucket} does not divide the windows of {bad}"
                )

        self._check_state_budget()

    def _check_state_budget(self) -> None:
        budget = self.max_state_bytes_per_entity
        if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
            raise InvalidDefinitionError(
                f"view {self.name!r}: max_state_bytes_per_entity must be a positive int, "
                f"got {short_repr(budget)}"
            )
        slots = self.ring_slots
        need = slots * self.state_bytes_per_slot
        if need > budget:
            wins = ", ".join(window_label(w) for w in self.windows)
            ttl = f", ttl {window_label(self.ttl)}" if self.ttl is not None else ""
            raise InvalidDefinitionError(
                f"view {self.name!r}: windows {wins}{ttl} with allowed lateness "
                f"{window_label(self.allowed_lateness)} and bucket {window_label(self.bucket or _US)} "
                f"need a streaming ring of {slots:,} buckets per entity, about {_bytes(need)} "
                f"of state per entity, above the budget of {_bytes(budget)} "
                "(max_state_bytes_per_entity). The bucket must divide every window: choose "
                "windows with a larger common divisor (e.g. whole minutes or hours), set a "
                "coarser bucket, or raise max_state_bytes_per_entity."
            )

    @property
    def ring_slots(self) -> int:
        """Bucket slots per entity in the streaming engine's ring."""
        b = self.bucket_us
        span = max(duration_us(a.window) for a in self.features)
        if self.ttl is not None:
            span = max(span, duration_us(self.ttl))
        return -(-span // b) + -(-duration_us(self.allowed_lateness) // b) + 2

    @property
    def state_bytes_per_slot(self) -> int:
        """Bytes of streaming state per (entity, bucket slot), excluding distinct-value sets."""
        types = self.column_types
        numeric, counted, lasts, sets, sketches = set(), set(), set(), set(), set()
        for a in self.features:
            c = a.column
            if c is None:
                continue
            if a.function in _NUMERIC_ONLY:
                numeric.add(c)
            elif a.function == "count":
                counted.add(c)
            elif a.function == "last":
                lasts.add(c)
            elif a.function == "distinct_count":
                sets.add(c)
            else:
                sketches.add(c)
        size = 24  # bucket index, row count, latest event time
        size += sum(80 if types[c] == "float" else 56 for c in numeric)
        size += 8 * len(counted - numeric) + 16 * len(lasts) + 8 * len(sets)
        return size + 256 * len(sketches)

    # -- derived properties ---------------------------------------------------------
    @property
    def join_keys(self) -> tuple[str, ...]:
        return tuple(k for e in self.entities for k in e.join_keys)

    @property
    def column_types(self) -> dict[str, str]:
        """Declared fields plus transform outputs, name -> type."""
        types = dict(self.fields)
        types.update({t.name: t.dtype for t in self.transforms})
        return types

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.features)

    @property
    def windows(self) -> tuple[timedelta, ...]:
        return tuple(sorted({a.window for a in self.features}))

    @property
    def bucket_us(self) -> int:
        assert self.bucket is not None
        return duration_us(self.bucket)

    def canonical(self) -> dict[str, Any]:
        """The definition as canonical JSON-able data (what ``version`` hashes)."""
        src: dict[str, Any]
        if isinstance(self.source, EventSource):
            src = {
                "kind": "event",
                "event_type": self.source.event_type,
                "stream": self.source.stream,
            }
        else:
            src = {"kind": "table", "dataset": self.source.dataset}
        return {
            "name": self.name,
            "source": src,
            "entities": [{"name": e.name, "join_keys": list(e.join_keys)} for e in self.entities],
            "fields": dict(sorted(self.fields.items())),
            "event_time": self.event_time,
            "record_time": self.record_time,
            "id_column": self.id_column,
            "transforms": [t.canonical() for t in self.transforms],
            "features": [
                {
                    "name": a.name,
                    "function": a.function,
                    "column": a.column,
                    "window_us": duration_us(a.window),
                }
                for a in self.features
            ],
            "ttl_us": duration_us(self.ttl) if self.ttl is not None else None,
            "bucket_us": self.bucket_us,
            "allowed_lateness_us": duration_us(self.allowed_lateness),
        }

    @property
    def version(self) -> str:
        """Content-derived version: first 16 hex digits of sha256 over the canonical JSON."""
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureView) and self.canonical() == other.canonical()

    def __hash__(self) -> int:
        return hash(self.version)


class Registry:
    """A code-first registry of feature views (and their entities), listable and looked up by name.

    Registering the same definition twice is a no-op; a different definition under an
    existing name raises :class:`ConflictError`.
    """

    def __init__(self, views: Iterable[FeatureView] = ()) -> None:
        self._views: dict[str, FeatureView] = {}
        for v in views:
            self.register(v)

    def register(self, view: FeatureView) -> FeatureView:
        if not isinstance(view, FeatureView):
            raise InvalidDefinitionError(
                f"only FeatureView objects can be registered, got {short_repr(view)}"
            )
        existing = self._views.get(view.name)
        if existing is not None and existing.version != view.version:
            raise ConflictError(
                f"feature view {view.name!r} is already registered with version {existing.version}; "
                f"the new definition has version {view.version}. Rename one of them."
            )
        self._views[view.name] = view
        return view

    def get(self, name: str) -> FeatureView:
        try:
            return self._views[name]
        except KeyError:
            known = ", ".join(sorted(self._views)) or "none"
            raise NotFoundError(f"no feature view named {name!r} (registered: {known})") from None

    def views(self) -> list[FeatureView]:
        return [self._views[k] for k in sorted(self._views)]

    def entities(self) -> list[Entity]:
        seen: dict[str, Entity] = {}
        for v in self.views():
            for e in v.entities:
                seen.setdefault(e.name, e)
        return [seen[k] for k in sorted(seen)]

    def __iter__(self) -> Iterator[FeatureView]:
        return iter(self.views())

    def __len__(self) -> int:
        return len(self._views)

    def __contains__(self, name: object) -> bool:
        return name in self._views


def registry_from_objects(objects: Sequence[object] | Mapping[str, object]) -> Registry:
    """Collect every FeatureView (and Registry contents) among ``objects`` (e.g. a module's vars)."""
    values = objects.values() if isinstance(objects, Mapping) else objects
    reg = Registry()
    for obj in values:
        if isinstance(obj, FeatureView):
            reg.register(obj)
        elif isinstance(obj, Registry):
            for v in obj:
                reg.register(v)
    return reg


def load_registry(spec: str) -> Registry:
    """Load a code-first registry from ``spec``: a ``.py`` file path or an importable module name.

    Every FeatureView (and Registry) defined at the module's top level is collected.
    """
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    if not spec:
        raise InvalidDefinitionError(
            "no feature definitions given: pass a .py file or a module name"
        )
    try:
        if spec.endswith(".py"):
            path = Path(spec).absolute()
            if not path.is_file():
                raise NotFoundError(f"feature definitions file {path} does not exist")
            name = f"keel_feature_defs_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
            loader_spec = importlib.util.spec_from_file_location(name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise InvalidDefinitionError(f"cannot load feature definitions from {path}")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        raise NotFoundError(f"feature definitions module {spec!r} not found: {exc}") from exc
    reg = registry_from_objects(vars(module))
    if not len(reg):
        raise NotFoundError(f"{spec!r} defines no FeatureView")
    return reg
