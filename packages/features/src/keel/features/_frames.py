"""Input validation and normalisation shared by the batch and streaming engines.

Every engine works on a *prepared* frame: the view's join keys, ``__et`` (event time as
integer microseconds since the epoch, UTC), optional ``__rt`` (record time, same unit),
optional ``__id`` (event id, for de-duplication) and the value columns the view's
aggregations read (declared fields cast to their declared types, then transforms).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from keel.features._definitions import FIELD_TYPES, FeatureView
from keel.features._errors import InvalidInputError, short_repr, short_text

ET = "__et"
RT = "__rt"
ID = "__id"
SUB_US = "__sub_us"  # rows whose nanosecond event/record time is not a whole microsecond

_ACCEPTS: dict[str, tuple[type[pl.DataType], ...]] = {
    "float": (
        pl.Float32,
        pl.Float64,
        pl.Int8,
        pl.Int16,
        pl.Int32,
        pl.Int64,
        pl.UInt8,
        pl.UInt16,
        pl.UInt32,
        pl.UInt64,
        pl.Null,
    ),
    "int": (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.Null),
    "str": (pl.String, pl.Categorical, pl.Enum, pl.Null),
    "bool": (pl.Boolean, pl.Null),
}


def to_us(ts: datetime) -> int:
    """A timezone-aware datetime as integer microseconds since the epoch (naive is rejected)."""
    if not isinstance(ts, datetime):
        raise InvalidInputError(f"expected a datetime, got {short_repr(ts)}")
    if ts.tzinfo is None or ts.tzinfo.utcoffset(ts) is None:
        raise InvalidInputError(
            f"timestamp {ts.isoformat()} is timezone-naive; pass an aware datetime "
            "(e.g. datetime(..., tzinfo=timezone.utc)) so event times are unambiguous"
        )
    delta = ts.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    """Integer epoch microseconds back to an aware UTC datetime."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(us))


def time_to_us_expr(frame_schema: pl.Schema, column: str, what: str) -> pl.Expr:
    """Expression turning a timezone-aware datetime column into epoch microseconds (Int64)."""
    if column not in frame_schema:
        raise InvalidInputError(
            f"{what} column {column!r} is missing (columns: {list(frame_schema)})"
        )
    dtype = frame_schema[column]
    if not isinstance(dtype, pl.Datetime):
        raise InvalidInputError(
            f"{what} column {column!r} must be a timezone-aware Datetime, got {dtype}"
        )
    if dtype.time_zone is None:
        raise InvalidInputError(
            f"{what} column {column!r} is timezone-naive ({dtype}); convert it with "
            f".dt.replace_time_zone('UTC') (or the zone it was recorded in) first"
        )
    return pl.col(column).dt.epoch("us")


def _sub_us(frame_schema: pl.Schema, columns: list[str]) -> pl.Expr | None:
    """True where a nanosecond-unit time column holds a value that is not a whole microsecond."""
    flags = []
    for c in columns:
        dtype = frame_schema.get(c)
        if isinstance(dtype, pl.Datetime) and dtype.time_unit == "ns":
            flags.append((pl.col(c).dt.epoch("ns") % 1000) != 0)
    return pl.any_horizontal(flags) if flags else None


def collect(view: FeatureView, lf: pl.LazyFrame) -> pl.DataFrame:
    """Collect a prepared frame; a Polars error (a transform that cannot be evaluated or cast)
    becomes an InvalidInputError whose message never quotes a whole data value."""
    try:
        return lf.collect()
    except pl.exceptions.PolarsError as exc:
        raise InvalidInputError(
            f"view {view.name!r}: the input could not be prepared "
            f"({type(exc).__name__}: {short_text(str(exc))})"
        ) from None


def value_columns(view: FeatureView) -> list[str]:
    """Columns the view's aggregations read, in a stable order."""
    cols: list[str] = []
    for agg in view.features:
        if agg.column is not None and agg.column not in cols:
            cols.append(agg.column)
    return cols


def prepare(view: FeatureView, frame: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """Validate ``frame`` against ``view`` and return the prepared lazy frame.

    Raises :class:`InvalidInputError` naming the column for a missing column, a wrong
    dtype or a timezone-naive time column. Null keys / event times are checked by
    :func:`check_nulls` once the frame is collected.
    """
    lf = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
    if not isinstance(lf, pl.LazyFrame):
        raise InvalidInputError(
            f"expected a polars DataFrame or LazyFrame, got {type(frame).__name__}"
        )
    schema = lf.collect_schema()
    missing = [c for c in (*view.join_keys, *view.fields) if c not in schema]
    if missing:
        raise InvalidInputError(
            f"view {view.name!r}: input is missing columns {missing} (has {list(schema)})"
        )
    exprs: list[pl.Expr] = [pl.col(k) for k in view.join_keys]
    exprs.append(
        time_to_us_expr(schema, view.event_time, f"view {view.name!r} event-time").alias(ET)
    )
    sub_us = _sub_us(schema, [c for c in (view.event_time, view.record_time) if c])
    if sub_us is not None:
        exprs.append(sub_us.alias(SUB_US))
    if view.record_time is not None:
        exprs.append(
            time_to_us_expr(schema, view.record_time, f"view {view.name!r} record-time").alias(RT)
        )
    if view.id_column is not None:
        if view.id_column not in schema:
            raise InvalidInputError(f"view {view.name!r}: id column {view.id_column!r} is missing")
        exprs.append(pl.col(view.id_column).cast(pl.String).alias(ID))
    for col, typ in view.fields.items():
        dtype = schema[col]
        if not isinstance(dtype, _ACCEPTS[typ]):
            raise InvalidInputError(
                f"view {view.name!r}: column {col!r} is declared {typ} but the input has dtype {dtype}"
            )
        exprs.append(pl.col(col).cast(FIELD_TYPES[typ]))
    out = lf.select(exprs)
    for tr in view.transforms:
        out = out.with_columns(tr.expr.cast(FIELD_TYPES[tr.dtype]).alias(tr.name))
    needed = (
        [*view.join_keys, ET]
        + ([RT] if view.record_time else [])
        + ([ID] if view.id_column else [])
        + ([SUB_US] if sub_us is not None else [])
    )
    return out.select([*needed, *value_columns(view)])


def check_nulls(view: FeatureView, df: pl.DataFrame) -> pl.DataFrame:
    """Reject rows with a null join key or event time (they cannot be placed in any window)
    and nanosecond times that are not whole microseconds (the engines count in microseconds and
    would otherwise truncate them silently). Returns ``df`` without the check column."""
    for col in (*view.join_keys, ET):
        n = df[col].null_count()
        if n:
            what = "event time" if col == ET else f"join key {col!r}"
            raise InvalidInputError(f"view {view.name!r}: {n} input rows have a null {what}")
    if SUB_US in df.columns:
        bad = int(df[SUB_US].sum())
        if bad:
            raise InvalidInputError(
                f"view {view.name!r}: {bad} input rows have a nanosecond event/record time that "
                "is not a whole microsecond; keel.features counts time in microseconds. Round "
                "them explicitly first, e.g. pl.col(c).dt.truncate('1us') (or .dt.round('1us'))"
            )
        df = df.drop(SUB_US)
    return df


def dedupe(view: FeatureView, lf: pl.LazyFrame) -> pl.LazyFrame:
    """Drop repeated event ids (first occurrence wins), matching the streaming engine."""
    if view.id_column is None:
        return lf
    return lf.unique(subset=[ID], keep="first", maintain_order=True)
