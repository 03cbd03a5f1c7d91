"""The point-in-time training-set build on a Ray cluster, partitioned by entity hash.

    from keel.pipelines.ray_build import build_training_set_on_ray

    frame = build_training_set_on_ray(labels, [(card_txn, events)])   # joins Ray / RAY_ADDRESS
    frame.write_parquet("train.parquet")   # the same bytes as keel.features.training_set's

Same inputs and output as ``keel.features.training_set(labels, sources, time_column=...,
full_feature_names=...)``. The label rows are split into ``partitions`` by a hash of the
partition keys (default: the first view's entity join keys); each view whose join keys
include those keys sends each partition only its entities' events (a view keyed otherwise
sends all its events to every partition: correct, but no saving). Each partition runs the
unchanged keel.features build as one Ray Data task; the driver concatenates the partitions
and restores the label order, so the frame — and the Parquet bytes written from it, and
therefore the data fingerprint — equal the single-process build's.

Why that holds: a feature value at a label row depends only on that row's entity's events
up to its time, and every entity's events are in its partition. Repeated event ids are
dropped across the whole event frame first (first wins), as the single-process build does,
so an id repeated across two partitions cannot survive twice. The hash (Polars' seeded
hash, stable within a Polars version) decides only which task builds a row, never a value.

Imports of Polars and Ray are lazy: ``import keel.pipelines`` stays light.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from keel.pipelines._errors import InvalidInputError

if TYPE_CHECKING:
    import polars as pl

    from keel.features import FeatureView

ROW = "__keel_row"
_SEED = 0x6B65656C  # fixed ("keel")

__all__ = ["RayBuildError", "build_training_set_on_ray", "partition_ids"]


class RayBuildError(InvalidInputError):
    """Bad input to the Ray build (a missing key column, a reserved name, no Ray)."""


def partition_ids(frame: pl.DataFrame, keys: Sequence[str], partitions: int) -> pl.Series:
    """Each row's partition: a seeded hash of its ``keys`` values mod ``partitions`` (pure)."""
    import polars as pl

    if partitions < 1:
        raise RayBuildError(f"partitions must be >= 1, got {partitions}")
    missing = [k for k in keys if k not in frame.columns]
    if missing:
        raise RayBuildError(
            f"partition keys {missing} are not columns of the frame ({frame.columns[:12]}...): "
            "labels must hold every view's entity join keys"
        )
    h = frame.select(pl.struct(list(keys)).hash(_SEED).alias("h"))["h"]
    return (h % partitions).cast(pl.Int64).alias("__part")


def _ipc(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_ipc(buf)
    return buf.getvalue()


def _read_ipc(blob: bytes) -> pl.DataFrame:
    import polars as pl

    return pl.read_ipc(io.BytesIO(blob))


def build_training_set_on_ray(
    labels: pl.DataFrame,
    sources: Sequence[tuple[FeatureView, pl.DataFrame | pl.LazyFrame]],
    *,
    time_column: str = "timestamp",
    full_feature_names: bool = True,
    partitions: int | None = None,
    partition_keys: Sequence[str] | None = None,
    ray_address: str | None = None,
) -> pl.DataFrame:
    """``keel.features.training_set`` built by ``partitions`` Ray Data tasks (see the module
    docstring). ``partitions`` defaults to the cluster's CPU count; ``ray_address`` (or
    ``RAY_ADDRESS``) joins a cluster when this process has not joined one yet."""
    import os

    import polars as pl

    from keel.features import training_set

    if not isinstance(labels, pl.DataFrame):
        raise RayBuildError(f"labels must be a polars DataFrame, got {type(labels).__name__}")
    if not sources:
        raise RayBuildError("sources is empty: give at least one (feature view, events) pair")
    if ROW in labels.columns:
        raise RayBuildError(
            f"labels has a column named {ROW!r}, reserved by the Ray build; rename it"
        )
    keys = list(partition_keys or sources[0][0].join_keys)
    events: list[tuple[Any, pl.DataFrame, bool]] = []
    for view, ev in sources:
        frame = ev.collect() if isinstance(ev, pl.LazyFrame) else ev
        if view.id_column is not None and view.id_column in frame.columns:
            frame = frame.unique(subset=[view.id_column], keep="first", maintain_order=True)
        events.append((view, frame, set(keys) <= set(view.join_keys)))

    import ray

    if not ray.is_initialized():
        addr = ray_address or os.environ.get("RAY_ADDRESS")
        try:
            if addr:
                ray.init(address=addr, log_to_driver=False)
            else:
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RayBuildError(f"cannot start or reach Ray ({addr or 'local'}): {e}") from None
    n = partitions or max(1, int(ray.cluster_resources().get("CPU", 1)))

    lab = labels.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(ROW))
    lab_part = partition_ids(lab, keys, n)
    ev_parts = [partition_ids(f, keys, n) if split else None for _, f, split in events]
    items = []
    for p in range(n):
        rows = lab.filter(lab_part == p)
        if rows.height == 0:
            continue
        blobs = [
            _ipc(f if part is None else f.filter(part == p))
            for (_, f, _), part in zip(events, ev_parts, strict=True)
        ]
        items.append({"part": p, "labels": _ipc(rows), "events": blobs})
    if not items:  # no label rows: the single-process build of the empty frame
        return training_set(
            labels, sources, time_column=time_column, full_feature_names=full_feature_names
        )
    views = [v for v, _, _ in events]

    def build(item: dict[str, Any]) -> dict[str, Any]:
        srcs = [(v, _read_ipc(b)) for v, b in zip(views, item["events"], strict=True)]
        out = training_set(
            _read_ipc(item["labels"]),
            srcs,
            time_column=time_column,
            full_feature_names=full_feature_names,
        )
        return {"part": item["part"], "frame": _ipc(out)}

    ds = ray.data.from_items(items, override_num_blocks=len(items))
    built = ds.map(build, num_cpus=1).take_all()
    if len(built) != len(items):  # pragma: no cover - Ray Data returns every row or raises
        raise RayBuildError(f"{len(items)} partitions sent, {len(built)} came back")
    parts = [_read_ipc(r["frame"]) for r in sorted(built, key=lambda r: r["part"])]
    return pl.concat(parts, how="vertical").sort(ROW).drop(ROW).rechunk()
