"""Feature benchmarks: batch (Keel vs three Polars anchors vs pandas), record-time scaling,
streaming, online reads.

    ./pants run tools/bench/features:features -- [--quick]

Prints figures and, as the last line, one JSON object
{"bench": "features", "figures": {...}, "ratios": {...}, "goals_met": {...}}. Goals that
depend on size are ``null`` (not evaluated) under ``--quick``, never ``false``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import polars as pl

from keel.features import (
    Aggregation,
    Entity,
    EventSource,
    FeatureView,
    SQLiteOnlineStore,
    StreamingEngine,
    backfill,
)

BASE = datetime(2024, 1, 1, tzinfo=UTC)
WINDOWS = {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "1d": timedelta(days=1)}


def make_view(record_time: bool = False) -> FeatureView:
    feats = []
    for label, w in WINDOWS.items():
        feats += [
            Aggregation("count", None, w, name=f"count_{label}"),
            Aggregation("sum", "amount", w, name=f"sum_{label}"),
            Aggregation("max", "amount", w, name=f"max_{label}"),
        ]
    return FeatureView(
        name="bench_txn",
        source=EventSource("txn.created"),
        entities=[Entity("card")],
        fields={"amount": "float"},
        features=feats,
        id_column="event_id",
        record_time="recorded_at" if record_time else None,
        allowed_lateness=timedelta(minutes=10),
    )


def make_events(n: int, n_ent: int, seed: int = 7, record_lag: bool = False) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    t_us = np.sort(rng.integers(0, 7 * 86_400_000_000, n)) + int(BASE.timestamp()) * 1_000_000
    if record_lag:  # recorded ~2 s (exponential) after the event: nearly every event is "late"
        lag = rng.exponential(2e6, n).astype(np.int64)
        rec = pl.from_epoch(pl.Series(t_us + lag), time_unit="us").dt.replace_time_zone("UTC")
        return make_events(n, n_ent, seed).with_columns(rec.alias("recorded_at"))
    return pl.DataFrame(
        {
            "card": pl.Series(rng.integers(0, n_ent, n)).cast(pl.String),
            "event_time": pl.from_epoch(pl.Series(t_us), time_unit="us").dt.replace_time_zone(
                "UTC"
            ),
            "event_id": pl.int_range(0, n, eager=True).cast(pl.String),
            "amount": np.round(rng.gamma(2.0, 20.0, n), 2),
        }
    )


def hand_polars(df: pl.DataFrame, dedupe: bool = True) -> pl.DataFrame:
    """What a Polars user would write by hand for the same nine features.

    Same semantics as the view: repeated event ids dropped (first wins), window
    ``(t - w, t]`` per card evaluated at every event, all events at the same instant included.
    ``dedupe=False`` (reported separately) skips the id de-duplication: the same result only
    on inputs without repeated ids, like the bench's.
    """
    if dedupe:
        df = df.unique(subset=["event_id"], keep="first", maintain_order=True)
    out = df.sort("card", "event_time").with_columns(pl.lit(1, pl.Int64).alias("one"))
    cols = []
    for label, w in WINDOWS.items():
        cols += [
            pl.col("one")
            .rolling_sum_by("event_time", w, closed="right")
            .over("card")
            .alias(f"count_{label}"),
            pl.col("amount")
            .rolling_sum_by("event_time", w, closed="right")
            .over("card")
            .alias(f"sum_{label}"),
            pl.col("amount")
            .rolling_max_by("event_time", w, closed="right")
            .over("card")
            .alias(f"max_{label}"),
        ]
    return out.select("card", "event_time", *cols)


def polars_rolling_group_by(df: pl.DataFrame) -> pl.DataFrame:
    """The same nine features with ``DataFrame.rolling(index_column, period, group_by=...)``:
    one grouped rolling pass per window computing count, sum and max together."""
    df = df.unique(subset=["event_id"], keep="first", maintain_order=True).sort(
        "card", "event_time"
    )
    parts: list[pl.DataFrame] = []
    for label, w in WINDOWS.items():
        r = df.rolling(index_column="event_time", period=w, group_by="card", closed="right").agg(
            pl.len().cast(pl.Int64).alias(f"count_{label}"),
            pl.col("amount").sum().alias(f"sum_{label}"),
            pl.col("amount").max().alias(f"max_{label}"),
        )
        parts.append(r if not parts else r.drop("card", "event_time"))
    return pl.concat(parts, how="horizontal")


def polars_packed_key(df: pl.DataFrame) -> pl.DataFrame:
    """The strongest hand-written Polars we know: one sort on a packed int64 key
    ``entity_code * 2**k + (t - t0)`` (``2**k`` > time span + longest window, so no window
    crosses an entity), then ``rolling_*_by`` on that key with no ``.over`` and no grouping."""
    df = df.unique(subset=["event_id"], keep="first", maintain_order=True)
    t = pl.col("event_time").dt.epoch("us")
    span = df.select(t.max() - t.min()).item() + max(
        w // timedelta(microseconds=1) for w in WINDOWS.values()
    )
    shift = int(span).bit_length()
    code = pl.col("card").cast(pl.Categorical).to_physical().cast(pl.Int64)
    keyed = df.with_columns((code * (1 << shift) + (t - t.min())).alias("key")).sort("key")
    keyed = keyed.with_columns(pl.lit(1, pl.Int64).alias("one"))
    one = pl.col("one")
    cols = []
    for label, w in WINDOWS.items():
        win = f"{w // timedelta(microseconds=1)}i"
        cols += [
            one.rolling_sum_by("key", win, closed="right").alias(f"count_{label}"),
            pl.col("amount").rolling_sum_by("key", win, closed="right").alias(f"sum_{label}"),
            pl.col("amount").rolling_max_by("key", win, closed="right").alias(f"max_{label}"),
        ]
    return keyed.select("card", "event_time", *cols)


def bitemporal_scaling(sizes: list[int]) -> dict[str, float]:
    """Record-time backfill (almost every event recorded after its event time, ~2 s lag) at
    each size; returns the times and the fitted exponent of t ~ n**k."""
    view = make_view(record_time=True)
    times = []
    for n in sizes:
        df = make_events(n, max(100, n // 100), record_lag=True)
        t, out = timed(backfill, view, df)
        assert out.height == n
        times.append(t)
        print(f"  bitemporal backfill {n:,} events: {t:.2f}s")
    k = float(np.polyfit(np.log(sizes), np.log(times), 1)[0]) if len(sizes) > 1 else float("nan")
    out_figs: dict[str, float] = {
        f"bitemporal_backfill_{n}_s": round(t, 3) for n, t in zip(sizes, times, strict=True)
    }
    out_figs["bitemporal_scaling_exponent"] = round(k, 2)
    return out_figs


def to_pandas_input(df: pl.DataFrame):  # type: ignore[no-untyped-def]
    """The events as a pandas user would hold them (conversion is not timed)."""
    return df.select("card", "event_time", "event_id", "amount").to_pandas()


def pandas_impl(p):  # type: ignore[no-untyped-def]
    """Idiomatic pandas for the same result, written the way a pandas user would.

    Drop repeated ids (first wins), sort by event time (rolling needs monotonic times per
    group; an already time-ordered log sorts almost for free), then for each window one
    ``groupby("card").rolling(w, closed="right")`` with ``count`` / ``sum`` / ``max``: pandas'
    Cython grouped time-rolling kernels, no per-group Python and no hand-written NumPy. All
    nine results share the groupby's (card, event_time) row order, so they are stacked as
    columns next to that index.
    """
    import pandas as pd

    p = p.drop_duplicates(subset="event_id", keep="first").sort_values("event_time", kind="stable")
    g = p.set_index("event_time").groupby("card", sort=False)["amount"]
    cols = {}
    for label, w in WINDOWS.items():
        r = g.rolling(w, closed="right")
        cols[f"count_{label}"] = r.count()
        cols[f"sum_{label}"] = r.sum()
        cols[f"max_{label}"] = r.max()
    first = next(iter(cols.values()))
    out = pd.DataFrame(
        {
            "card": first.index.get_level_values("card"),
            "event_time": first.index.get_level_values("event_time"),
        }
        | {k: v.to_numpy() for k, v in cols.items()}
    )
    out = out.astype({f"count_{label}": "int64" for label in WINDOWS})
    return pl.from_pandas(out)


def timed(fn, *args, repeat: int = 1):  # type: ignore[no-untyped-def]
    """Median wall time of ``repeat`` runs (the machine is shared and noisy), and a result."""
    times, res = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fn(*args)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), res


def agree(a: pl.DataFrame, b: pl.DataFrame, names: list[str]) -> bool:
    a = a.sort("card", "event_time", *names)
    b = b.sort("card", "event_time", *names)
    if a.height != b.height:
        return False
    for n in names:
        x, y = a[n].cast(pl.Float64).to_numpy(), b[n].cast(pl.Float64).to_numpy()
        if not np.allclose(x, y, rtol=1e-9, atol=1e-6, equal_nan=True):
            return False
    return True


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--events", type=int)
    ap.add_argument("--entities", type=int)
    ap.add_argument("--repeat", type=int, help="batch timings: best of N (default 3, quick 2)")
    ap.add_argument(
        "--pandas-fraction",
        type=float,
        default=1.0,
        help="run the pandas anchor on this fraction of the entities (default: all)",
    )
    ap.add_argument("--pandas-repeat", type=int, default=1)
    ap.add_argument("--skip-streaming", action="store_true", help="batch figures only")
    ap.add_argument("--skip-bitemporal", action="store_true", help="no record-time scaling run")
    ap.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="also time Keel and the best Polars anchor alternately N times; the goal ratio "
        "then uses the medians of these interleaved runs",
    )
    args = ap.parse_args()
    if args.repeat is None:
        args.repeat = 2 if args.quick else 3
    n = args.events or (200_000 if args.quick else 10_000_000)
    n_ent = args.entities or (5_000 if args.quick else 100_000)
    view = make_view()
    names = list(view.feature_names)
    figs: dict[str, Any] = {
        "events": n,
        "entities": n_ent,
        "features": len(names),
        "quick": bool(args.quick),
    }

    df = make_events(n, n_ent)
    print(f"batch: {n:,} events, {n_ent:,} entities, {len(names)} features (3 aggs x 3 windows)")
    reps = args.repeat
    t_keel, keel_out = timed(backfill, view, df, repeat=reps)
    t_pl, pl_out = timed(hand_polars, df, repeat=reps)
    figs["batch_keel_s"] = round(t_keel, 3)
    figs["batch_polars_s"] = round(t_pl, 3)
    figs["batch_keel_polars_agree"] = agree(keel_out, pl_out, names)
    del pl_out
    t_pl_nd, pl_nd = timed(hand_polars, df, False, repeat=reps)
    figs["batch_polars_no_dedupe_s"] = round(t_pl_nd, 3)
    figs["batch_keel_polars_no_dedupe_agree"] = agree(keel_out, pl_nd, names)
    del pl_nd
    # The strongest idiomatic Polars anchors (same result, de-duplication included).
    anchors = {"over": t_pl}
    for name, fn in (
        ("rolling_group_by", polars_rolling_group_by),
        ("packed_key", polars_packed_key),
    ):
        t_a, out_a = timed(fn, df, repeat=reps)
        figs[f"batch_polars_{name}_s"] = round(t_a, 3)
        figs[f"batch_keel_polars_{name}_agree"] = agree(keel_out, out_a, names)
        anchors[name] = t_a
        del out_a
    best_name = min(anchors, key=lambda k: anchors[k])
    t_best = anchors[best_name]
    figs["batch_best_polars"] = best_name
    figs["batch_best_polars_s"] = round(t_best, 3)
    if args.pairs:
        # Keel and the best anchor alternately, N times: on a shared machine whose load
        # drifts, the ratio of the medians of interleaved runs is the fair comparison.
        best_fn = {"over": hand_polars, "rolling_group_by": polars_rolling_group_by}.get(
            best_name, polars_packed_key
        )
        ks, ps = [], []
        for _ in range(args.pairs):
            ks.append(timed(backfill, view, df)[0])
            ps.append(timed(best_fn, df)[0])
        figs["batch_interleaved_keel_s"] = [round(x, 3) for x in ks]
        figs["batch_interleaved_best_polars_s"] = [round(x, 3) for x in ps]
        t_keel, t_best = float(np.median(ks)), float(np.median(ps))
    # pandas anchor: on the full frame by default (--pandas-fraction < 1: an entity subset,
    # with Keel re-measured on the same subset). The pandas conversion is not timed.
    if args.pandas_fraction < 1.0:
        keep = max(1, round(1 / args.pandas_fraction))
        sub = df.filter(pl.col("card").cast(pl.Int64) % keep == 0)
        t_keel_sub, keel_sub = timed(backfill, view, sub, repeat=max(reps, 2))
    else:
        sub, t_keel_sub, keel_sub = df, t_keel, keel_out
    pd_in = to_pandas_input(sub)
    t_pd, pd_out = timed(pandas_impl, pd_in, repeat=args.pandas_repeat)
    figs["pandas_events"] = sub.height
    figs["batch_pandas_s"] = round(t_pd, 3)
    figs["batch_keel_on_pandas_input_s"] = round(t_keel_sub, 3)
    figs["batch_keel_pandas_agree"] = agree(keel_sub, pd_out, names)
    figs["batch_peak_rss_mib"] = round(rss_mib(), 1)
    del keel_out, pd_out, keel_sub, sub, pd_in
    print(
        f"  keel {t_keel:.2f}s  hand-written polars {t_pl:.2f}s  "
        f"pandas ({figs['pandas_events']:,} events) {t_pd:.2f}s vs keel {t_keel_sub:.2f}s"
    )

    ratios = {
        "keel_vs_best_polars_time_ratio": round(t_keel / t_best, 3),
        "keel_vs_hand_polars_time_ratio": round(t_keel / t_pl, 3),
        "keel_vs_pandas_speedup": round(t_pd / t_keel_sub, 1),
        "keel_vs_hand_polars_no_dedupe_time_ratio": round(t_keel / t_pl_nd, 3),
    }
    # Size-dependent goals are judged at full size only: --quick reports them as null (not
    # evaluated), never as failed. Agreement is judged at any size.
    full = not args.quick

    def judged(ok: bool) -> bool | None:
        return ok if full else None

    goals: dict[str, bool | None] = {
        "keel_within_1_15x_of_best_polars": judged(
            ratios["keel_vs_best_polars_time_ratio"] <= 1.15
        ),
        "keel_20x_faster_than_pandas": judged(ratios["keel_vs_pandas_speedup"] >= 20),
        "all_anchors_agree": bool(
            figs["batch_keel_polars_agree"]
            and figs["batch_keel_pandas_agree"]
            and figs["batch_keel_polars_rolling_group_by_agree"]
            and figs["batch_keel_polars_packed_key_agree"]
        ),
    }
    if not args.skip_bitemporal:
        sizes = [2_000, 20_000, 200_000] if args.quick else [20_000, 200_000, 2_000_000]
        print("bitemporal (record-time) backfill scaling:")
        figs |= bitemporal_scaling(sizes)
        goals["bitemporal_n_log_n"] = judged(figs["bitemporal_scaling_exponent"] <= 1.25)
    if args.skip_streaming:
        return report(figs, ratios, goals)

    # Streaming: events/s through the incremental engine (time-ordered micro-batches of 10k).
    n_stream = min(n, 100_000 if args.quick else 2_000_000)
    stream_df = df.head(n_stream)
    eng = StreamingEngine(view, clock=lambda: BASE + timedelta(days=30))
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, n_stream, 10_000):
        eng.ingest(stream_df.slice(i, 10_000))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    figs["stream_events_per_s"] = round(n_stream / wall)
    figs["stream_events_per_cpu_s"] = round(n_stream / cpu)
    figs["stream_state_cells"] = eng.state_cells()
    print(f"streaming: {n_stream / wall:,.0f} events/s wall, {n_stream / cpu:,.0f} per CPU-second")

    with TemporaryDirectory() as tmp:
        online = SQLiteOnlineStore(Path(tmp) / "online.db")
        # p99 event -> online-visible: one event per micro-batch, ingest + values + conditional write.
        lat = []
        tail = df.slice(n_stream, 2_000) if n > n_stream + 2_000 else df.tail(2_000)
        for row in tail.iter_slices(1):
            t0 = time.perf_counter()
            rep = eng.ingest(row)
            if rep.updated:
                vals, times = eng.current(rep.updated)
                online.write(
                    "bench",
                    [
                        (k, r, t)
                        for k, r, t in zip(
                            rep.updated, vals.drop("entity").to_dicts(), times, strict=True
                        )
                    ],
                )
            lat.append(time.perf_counter() - t0)
        figs["stream_event_to_online_p99_ms"] = round(float(np.percentile(lat, 99)) * 1e3, 3)
        figs["stream_event_to_online_p50_ms"] = round(float(np.percentile(lat, 50)) * 1e3, 3)

        # Online read: 1 entity x 50 features.
        values = {f"f{i}": float(i) * 1.5 for i in range(50)}
        online.write("read", [(f"e{i}", values, BASE) for i in range(10_000)])
        reads = []
        rng = np.random.default_rng(1)
        for k in rng.integers(0, 10_000, 20_000):
            t0 = time.perf_counter()
            got = online.read("read", f"e{k}")
            reads.append(time.perf_counter() - t0)
            assert got is not None and len(got.values) == 50
        figs["online_read_sqlite_p99_ms"] = round(float(np.percentile(reads, 99)) * 1e3, 4)
        online.close()
    try:
        from keel.features import RedisOnlineStore

        url = os.environ.get("KEEL_REDIS_URL", "redis://127.0.0.1:6379/0")
        prefix = f"keelbench:{os.getpid()}:"
        r = RedisOnlineStore(url, prefix=prefix)
        r.write("read", [(f"e{i}", values, BASE) for i in range(2_000)])
        reads = []
        for k in np.random.default_rng(2).integers(0, 2_000, 5_000):
            t0 = time.perf_counter()
            got = r.read("read", f"e{k}")
            reads.append(time.perf_counter() - t0)
        figs["online_read_redis_p99_ms"] = round(float(np.percentile(reads, 99)) * 1e3, 4)
        r.delete_namespace("read")
        r.close()
    except Exception as exc:  # Redis absent: report, do not fail the other figures
        print(f"redis: skipped ({exc})", file=sys.stderr)
    figs["peak_rss_mib"] = round(rss_mib(), 1)

    goals |= {
        "stream_250k_events_per_s": judged(figs["stream_events_per_s"] >= 250_000),
        "stream_p99_event_to_online_5ms": judged(figs["stream_event_to_online_p99_ms"] <= 5.0),
        "online_read_sqlite_p99_0_3ms": judged(figs["online_read_sqlite_p99_ms"] <= 0.3),
    }
    if "online_read_redis_p99_ms" in figs:
        goals["online_read_redis_p99_1ms"] = judged(figs["online_read_redis_p99_ms"] <= 1.0)
    return report(figs, ratios, goals)


def report(figs: dict, ratios: dict, goals: dict) -> int:  # type: ignore[type-arg]
    for k, v in figs.items():
        print(f"  {k}: {v}")
    print(json.dumps({"bench": "features", "figures": figs, "ratios": ratios, "goals_met": goals}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
