"""`keel demo`: the platform's closed loop on one machine, on embedded defaults (no services).

1. Generate a seeded, realistic stream of card transactions (10 days, diurnal traffic,
   merchant mix, amounts by category, true fraud labels) with drift injected on day 6:
   online and a new "crypto" category grow, amounts rise, a new country appears, traffic
   shifts to the night - and fraud starts to look different.
2. Publish it through keel.events - the embedded log ``KEEL_HOME/events.db``, the one
   ``keel events stats`` reads with the same home, stream ``demo-transactions`` (replaced
   on every run) - and consume it back like the feature worker would.
3. Compute card features with both engines of keel.features - the batch (Polars)
   engine and the incremental streaming engine - and check they agree.
4. The first model (`keel_cli.demo_loop`): the offline event log and labels of days 1-5 →
   a keel.pipelines run with the real executors (point-in-time training set, keel.trainer
   on local Ray, gates, an approval, a signed artifact with its drift profile and model card,
   registry challenger → shadow → canary → champion).
5. Serve: the champion, loaded from the registry by keel.serving's loader, scores every
   transaction; days 6-10 are live traffic and go to the prediction log.
6. Build a keel.drift reference profile from days 2-5, run the streaming drift monitor over
   the rest in sliding 1-day windows (with a label-free and, once the late labels arrive, a
   realised performance estimate); write the HTML report (plus JSON and PNGs).
7. The episode's ``drift.detected`` event triggers the retrain run (labels of the drifted
   days), which passes its gates against the champion on the same holdout, is approved,
   canaried on a share of the traffic and promoted. ``KEEL_HOME/demo/index.html`` shows the
   loop: runs, gate results, artifact digests, alias moves, the verified provenance chain.

Deterministic: the same seed gives the same drift JSON report in any home (tested). Every
random draw comes from a generator seeded from ``seed``; rows are put in a fixed order
before anything order-sensitive (the monitor's row sample) sees them; training is seeded
and bitwise reproducible on CPU; the loop's clock is simulated.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    import polars as pl

    from keel.features import FeatureView

START = datetime(2026, 3, 2, tzinfo=UTC)
DAYS = 10
REFERENCE_DAYS = 5
DRIFT_DAY = 6
WARMUP_DAYS = 1
STREAM = "demo-transactions"
MAX_SEED = 2**32 - 1
CATEGORIES = ["grocery", "fuel", "restaurant", "online", "travel", "atm"]
BASE_MIX = [0.30, 0.14, 0.18, 0.24, 0.06, 0.08]
DRIFT_MIX = [0.20, 0.10, 0.12, 0.40, 0.06, 0.05, 0.07]  # + "crypto"
AMOUNT_LOG_MEAN = {
    "grocery": 3.3,
    "fuel": 3.8,
    "restaurant": 3.4,
    "online": 3.6,
    "travel": 5.5,
    "atm": 4.3,
    "crypto": 5.8,
}


@dataclass(frozen=True)
class DemoFigures:
    transactions: int
    features_compared: int
    features_mismatched: int
    windows: int
    drift_windows: int
    first_drift_window: str | None


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold blue]{task.description:<40}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def generate_transactions(seed: int, per_day: int = 3_000, cards: int = 3_000) -> pl.DataFrame:
    """The seeded transaction stream (vectorised). Drift starts at day ``DRIFT_DAY``."""
    import polars as pl

    rng = np.random.default_rng(seed)
    n = per_day * DAYS
    day = np.repeat(np.arange(DAYS), per_day)
    drifted = day >= DRIFT_DAY
    # diurnal traffic: a day peak around 13:00 and an evening peak; after the drift a night cluster
    hour = np.where(rng.random(n) < 0.6, rng.normal(13, 3, n), rng.normal(19.5, 2, n))
    night = drifted & (rng.random(n) < 0.18)
    hour = np.where(night, rng.uniform(0, 5, n), hour) % 24
    seconds = day * 86_400 + hour * 3600
    # popular cards transact more (a Zipf-like popularity)
    pop = 1.0 / np.arange(1, cards + 1) ** 0.6
    card = rng.choice(cards, n, p=pop / pop.sum())
    cats = np.array([*CATEGORIES, "crypto"])
    merchant = np.where(
        drifted,
        cats[rng.choice(7, n, p=DRIFT_MIX)],
        cats[rng.choice(6, n, p=BASE_MIX)],
    )
    uniq, inverse = np.unique(merchant, return_inverse=True)
    log_mean = np.array([AMOUNT_LOG_MEAN[u] for u in uniq])[inverse]
    log_mean = log_mean + np.where(drifted & (merchant == "online"), 0.45, 0.0)
    amount = np.round(rng.lognormal(log_mean.astype(float), 0.7), 2)
    countries = np.array(["NL", "DE", "BE", "FR", "GB", "BR"])
    country = np.where(
        drifted,
        countries[rng.choice(6, n, p=[0.62, 0.1, 0.06, 0.04, 0.04, 0.14])],
        countries[rng.choice(5, n, p=[0.80, 0.09, 0.06, 0.03, 0.02])],
    )
    channel = np.where(
        merchant == "online", "web", np.where(rng.random(n) < 0.55, "contactless", "chip")
    )
    order = np.argsort(seconds, kind="stable")
    return pl.DataFrame(
        {
            "event_time": pl.Series(
                [START + timedelta(seconds=float(s)) for s in seconds[order]],
                dtype=pl.Datetime("us", "UTC"),
            ),
            "card": [f"card-{c:05d}" for c in card[order]],
            "amount": amount[order],
            "merchant": merchant[order],
            "country": country[order],
            "channel": channel[order],
        }
    )


def feature_view() -> FeatureView:
    """The demo's card-activity view (defined in `keel_cli.demo_features`, where the
    pipelines' executors load it by module name)."""
    from keel_cli.demo_features import card_activity

    return card_activity


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def score_and_label(df: pl.DataFrame, seed: int) -> pl.DataFrame:
    """A fraud model's score (calibrated on the reference period) and the true, late labels.

    After the drift day fraud concentrates in crypto, the new country and the night:
    the model, trained before, does not know - its realised AUC and calibration drop.
    """
    import polars as pl

    rng = np.random.default_rng(seed + 1)
    amt = np.log1p(df["amount"].to_numpy())
    vel = df["count_1h"].to_numpy().astype(float)
    online = (df["merchant"].to_numpy() == "online").astype(float)
    foreign = (df["country"].to_numpy() != "NL").astype(float)
    hour = df["event_time"].dt.hour().to_numpy()
    night = ((hour >= 0) & (hour < 5)).astype(float)
    logit = -6.2 + 0.55 * amt + 0.55 * vel + 0.8 * online + 0.9 * foreign + 0.6 * night
    score = _sigmoid(logit)
    drifted = (df["event_time"] >= START + timedelta(days=DRIFT_DAY)).to_numpy()
    new_fraud = (df["merchant"].to_numpy() == "crypto") | (df["country"].to_numpy() == "BR")
    # after the drift, fraudsters test cards with small amounts in the new channels:
    # the amount signal the model relies on weakens, and new segments carry the risk
    true_logit = np.where(
        drifted, logit - 0.9 * amt + 0.9 * 3.6 + np.where(new_fraud, 3.0, -0.5), logit
    )
    label = (rng.random(df.height) < _sigmoid(true_logit)).astype(np.int8)
    return df.with_columns(pl.Series("score", score), pl.Series("label", label))


def _fail(msg: str) -> typer.Exit:
    """One clear line on stderr and exit status 2 (bad input or an unusable home)."""
    Console(stderr=True).print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _prepare_home(home: Path) -> Path:
    """``home/demo`` emptied and writable, or one clear line naming the path and the cause."""
    out = Path(home) / "demo"
    try:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _fail(
            f"KEEL_HOME {home} is not usable for the demo ({reason}: {exc.filename or out}); "
            "point KEEL_HOME (or --config's home) at a writable directory"
        ) from None
    return out


def run_demo(home: Path, seed: int, console: Console, *, per_day: int = 3_000) -> Path:
    """Run the demo under ``home`` (KEEL_HOME); returns the drift report's path (the loop's
    page, ``index.html``, is beside it).

    ``per_day``: transactions per simulated day (tests run a smaller stream)."""
    if not 0 <= seed <= MAX_SEED:
        raise _fail(f"--seed must be between 0 and {MAX_SEED}, got {seed}")
    if per_day < 1000:
        raise _fail(
            f"--per-day must be at least 1000 (the drift windows need the rows), got {per_day}"
        )
    try:
        return _run(home, seed, console, per_day)
    except OSError as exc:  # e.g. the disk filled up or the home became read-only mid-run
        raise _fail(f"the demo could not write under {home}: {exc}") from None


def _run(home: Path, seed: int, console: Console, per_day: int) -> Path:
    import polars as pl
    from keel_cli.demo_loop import phase

    from keel.drift import (
        DriftPolicy,
        DriftReport,
        ProfileOptions,
        ReportWindow,
        StreamingMonitor,
        WindowConfig,
        build_profile,
    )
    from keel.events import Event, open_bus
    from keel.features import StreamingEngine, backfill, compute_at, events_to_frame

    out = _prepare_home(home)
    # where the time goes: shown on the page and in loop-summary.json
    phase_times: dict[str, float] = {}
    console.rule("[bold]Keel demo: card transactions, features, a model, drift, retrain, promotion")

    with _progress(console) as progress:
        # 1. the stream ----------------------------------------------------------------
        t = progress.add_task("generating transactions", total=1)
        with phase(phase_times, "stream: generate transactions"):
            txns = generate_transactions(seed, per_day=per_day)
        progress.update(t, completed=1)
        t_phase = time.perf_counter()

        # 2. publish through keel.events, consume back ----------------------------------
        bus_path = (Path(home) / "events.db").absolute()
        bus = open_bus(f"sqlite://{bus_path}")
        try:
            if STREAM in bus.streams():  # a previous run's events: start afresh
                bus.delete_stream(STREAM)
            rows = txns.to_dicts()
            t = progress.add_task("publishing to keel.events", total=len(rows))
            for i in range(0, len(rows), 5000):
                batch = [
                    Event.create(
                        type="txn.created",
                        key=r["card"],
                        event_time=r["event_time"],
                        id=f"txn-{seed}-{i + j}",
                        payload={k: r[k] for k in ("amount", "merchant", "country", "channel")},
                    )
                    for j, r in enumerate(rows[i : i + 5000])
                ]
                bus.publish_batch(STREAM, batch)
                progress.advance(t, len(batch))
            consumer = bus.consumer(STREAM, "demo-features")
            t = progress.add_task("consuming (feature worker)", total=len(rows))
            events: list[Any] = []
            while True:
                ds = consumer.fetch(max_messages=5000, timeout_s=0.2)
                if not ds:
                    break
                events.extend(d.event for d in ds)
                consumer.ack_all(ds)
                progress.advance(t, len(ds))
        finally:
            bus.close()
        phase_times["events: publish + consume (embedded log)"] = round(
            time.perf_counter() - t_phase, 2
        )
        t_phase = time.perf_counter()
        view = feature_view()
        frame, dead = events_to_frame(view, events)
        del rows

        # 3. features with both engines --------------------------------------------------
        t = progress.add_task("features: batch engine (Polars)", total=1)
        feats = backfill(view, frame)
        progress.update(t, completed=1)
        engine = StreamingEngine(view, clock=lambda: START + timedelta(days=DAYS + 1))
        rng = np.random.default_rng(seed + 2)
        sample_cards = sorted(
            set(rng.choice(sorted(frame["card"].unique().to_list()), 300, replace=False).tolist())
        )
        checks: list[tuple[datetime, pl.DataFrame]] = []
        t = progress.add_task("features: streaming engine", total=frame.height)
        times = frame["event_time"].dt.epoch("us").to_numpy()
        if not np.all(np.diff(times) >= 0):  # ingest in event-time order, bound by bound
            frame = frame.sort("event_time", maintain_order=True)
            times = frame["event_time"].dt.epoch("us").to_numpy()
        lo = 0
        for k in range(1, DAYS * 4 + 1):
            bound = START + timedelta(hours=6 * k)
            hi = int(np.searchsorted(times, int(bound.timestamp() * 1_000_000), side="right"))
            for i in range(lo, hi, 5000):
                engine.ingest(frame.slice(i, min(5000, hi - i)))
            checks.append((bound, engine.values_at(sample_cards, bound)))
            progress.advance(t, hi - lo)
            lo = hi
        queries = pl.DataFrame(
            {
                "card": [c for b, _ in checks for c in sample_cards],
                "timestamp": [b for b, _ in checks for _ in sample_cards],
            },
            schema={"card": pl.String, "timestamp": pl.Datetime("us", "UTC")},
        )
        names = list(view.feature_names)
        want = compute_at(view, frame, queries).select(names)
        got = pl.concat([v.select(names) for _, v in checks])
        compared = want.height * len(names)
        mismatched = int(sum(_mismatches(want[c], got[c]) for c in names))
        phase_times["features: batch + streaming engines, compared"] = round(
            time.perf_counter() - t_phase, 2
        )
        t_phase = time.perf_counter()

        # 4. model scores, reference profile, drift monitor ------------------------------
        # one feature row per (card, time), then the stream's own row order: joins and
        # unique() do not promise an order, and the monitor's row sample depends on it
        data = (
            txns.with_row_index("_row")
            .join(
                feats.sort(["card", "event_time"], maintain_order=True).unique(
                    ["card", "event_time"], keep="last", maintain_order=True
                ),
                on=["card", "event_time"],
                how="left",
            )
            .sort("_row")
            .drop("_row")
        )
        data = score_and_label(
            data.with_columns(pl.col("event_time").dt.hour().alias("hour")), seed
        )
        # the first model: trained, gated, signed, registered, served - its scores are what
        # the monitor sees from here on
        from keel_cli.demo_loop import Loop, request_features

        data = request_features(data, seed, view)
        phase_times["scores, labels, request features"] = round(time.perf_counter() - t_phase, 2)
        t_phase = time.perf_counter()
        loop = Loop(
            out,
            open_bus(f"sqlite://{bus_path}"),
            view,
            seed,
            START + timedelta(days=REFERENCE_DAYS),
        )
        phase_times["loop: executors + controller opened"] = round(time.perf_counter() - t_phase, 2)
        loop.record.timings.update(phase_times)
        loop.bootstrap(progress, events, data, START + timedelta(days=REFERENCE_DAYS), START)
        t = progress.add_task("serving the champion (prediction log)", total=1)
        with phase(loop.record.timings, "serving the champion (prediction log)"):
            data = loop.serve_champion(data, START + timedelta(days=REFERENCE_DAYS))
        progress.update(t, completed=1)
        t_phase = time.perf_counter()
        model_cols = ["amount", "merchant", "country", "channel", "hour", *names]
        split = START + timedelta(days=REFERENCE_DAYS)
        # day 1 only warms up the 1-day windows (their values are low while they fill up):
        # the reference is the model's training period after it
        reference = data.filter(
            (pl.col("event_time") >= START + timedelta(days=WARMUP_DAYS))
            & (pl.col("event_time") < split)
        )
        current = data.filter(pl.col("event_time") >= split)
        t = progress.add_task(
            f"reference profile (days {WARMUP_DAYS + 1}-{REFERENCE_DAYS})", total=1
        )
        profile = build_profile(
            reference.select(model_cols),
            categorical=["hour"],
            options=ProfileOptions(),
            rng=np.random.default_rng(seed),
            metadata={"model": "fraud-demo", "data": f"days {WARMUP_DAYS + 1}-{REFERENCE_DAYS}"},
        )
        profile_path = profile.save(out / "reference-profile.json")
        progress.update(t, completed=1)
        policy = DriftPolicy(consecutive=2, min_samples=500, drift_share=0.25)
        monitor = StreamingMonitor(
            profile,
            WindowConfig(
                size=timedelta(days=1),
                slide=timedelta(hours=6),
                score_column="score",
                label_retention_panes=64,
            ),
            policy=policy,
            rng=np.random.default_rng(seed),
        )
        t = progress.add_task("drift monitor (1-day windows, 6 h slide)", total=current.height)
        windows: list[ReportWindow] = []
        stream = current.select(["event_time", *model_cols, "score"])
        for i in range(0, stream.height, 4000):
            windows += monitor.observe(stream.slice(i, 4000))
            progress.advance(t, min(4000, stream.height - i))
        windows += monitor.flush(partial=False)
        # the labels arrive late: realised performance per window, after the fact
        monitor.observe_labels(current.select(["event_time", "score", "label"]))
        final: list[ReportWindow] = []
        for w in windows:
            s, e = _parse(w.result.window_start), _parse(w.result.window_end)
            real = monitor.realised_performance(s, e)
            perf = {
                "estimated_auc": w.performance.get("estimated_auc"),
                "realised_auc": real["realised_auc"],
            }
            final.append(ReportWindow(w.result, w.decision, perf))
        loop.record.timings["reference profile + drift monitor"] = round(
            time.perf_counter() - t_phase, 2
        )
        # drift.detected -> the retrain run, once the drifted days' labels have arrived
        loop.retrain(
            progress,
            events,
            data,
            final,
            START + timedelta(days=REFERENCE_DAYS),
            START + timedelta(days=DAYS),
            START + timedelta(days=DAYS - 2),
        )
        del events

    # 5. the report -----------------------------------------------------------------------
    t_phase = time.perf_counter()
    drift_windows = [w for w in final if w.decision and w.decision.decision.value == "drift"]
    notes = [
        f"{txns.height:,} card transactions over {DAYS} days, published to and consumed from keel.events "
        f"(embedded log KEEL_HOME/events.db, stream {STREAM}); drift injected from day {DRIFT_DAY + 1}.",
        f"Features computed by both keel.features engines; {compared:,} values compared at 6-hour bounds: "
        f"{compared - mismatched:,} equal, {mismatched} differ."
        + (f" {len(dead)} events dead-lettered." if dead else ""),
        f"Reference profile: days {WARMUP_DAYS + 1}-{REFERENCE_DAYS} ({reference.height:,} rows; day 1 warms up the 1-day windows) -> {profile_path.name}. "
        f"Policy: a feature drifts when its effect (numeric: {policy.numeric.method}, categorical: "
        f"{policy.categorical.method}; warn {policy.numeric.warn} / drift {policy.numeric.drift}) is "
        f"significant ({policy.correction.upper()}-adjusted p <= {policy.alpha}); a window drifts when "
        f"{policy.drift_share:.0%} of features drift or the domain classifier separates it "
        f"(AUC >= {policy.multivariate_auc}); {policy.consecutive} drift windows in a row decide DRIFT.",
        "Performance: 'estimated_auc' comes from the model's scores alone (CBPE); 'realised_auc' from labels that "
        "arrived after the windows closed.",
    ]
    report = DriftReport(
        "Keel demo - card transactions: drift report",
        profile,
        final,
        (START + timedelta(days=DAYS)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        policy,
        notes,
    )
    _, html_path = report.save(out)
    report.save_pngs(out / "plots")
    figures = DemoFigures(
        txns.height,
        compared,
        mismatched,
        len(final),
        len(drift_windows),
        drift_windows[0].result.window_end if drift_windows else None,
    )
    _summary(console, figures, final)
    try:
        loop.record.timings["drift report (JSON, HTML, plots)"] = round(
            time.perf_counter() - t_phase, 2
        )
        loop.finish()
        from keel_cli.demo_loop import write_page

        write_page(out, loop.record, html_path.name, seed)
        _loop_summary(console, loop.record, out)
    finally:
        loop.close()
    return html_path


def _mismatches(a: pl.Series, b: pl.Series) -> int:
    x, y = a.to_list(), b.to_list()
    bad = 0
    for u, v in zip(x, y, strict=True):
        if u is None or v is None:
            bad += (u is None) != (v is None)
        elif isinstance(u, float) or isinstance(v, float):
            bad += not math.isclose(float(u), float(v), rel_tol=1e-9, abs_tol=1e-9)
        else:
            bad += u != v
    return bad


def _parse(ts: str | None) -> datetime:
    assert ts is not None
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _summary(console: Console, f: DemoFigures, windows: list[Any]) -> None:
    from rich.table import Table

    table = Table(title="drift monitor: 1-day windows every 6 hours, after the reference period")
    for col in ("window end", "rows", "decision", "drifted features", "est. AUC", "realised AUC"):
        table.add_column(col)
    colors = {
        "drift": "red",
        "warn": "yellow",
        "none": "green",
        "error": "magenta",
        "not_judged": "bright_black",
    }
    for w in windows:
        d = w.decision
        dec = d.decision.value if d else "-"
        est, real = w.performance.get("estimated_auc"), w.performance.get("realised_auc")
        table.add_row(
            (w.result.window_end or "")[5:16].replace("T", " "),
            f"{w.result.n_rows:,}",
            f"[{colors.get(dec, 'white')}]{dec}[/]",
            ", ".join(d.drifted[:4]) + (" ..." if d and len(d.drifted) > 4 else "") if d else "",
            "-" if est is None else f"{est:.3f}",
            "-" if real is None else f"{real:.3f}",
        )
    console.print(table)
    agree = "agree" if f.features_mismatched == 0 else f"differ on {f.features_mismatched:,} values"
    console.print(
        f"{f.transactions:,} transactions; batch and streaming features {agree} ({f.features_compared:,} compared); "
        f"{f.drift_windows} of {f.windows} windows in drift"
        + (f", the first ending {f.first_drift_window}" if f.first_drift_window else "")
    )


def _loop_summary(console: Console, rec: Any, out: Path) -> None:
    """Every artifact digest and alias move, the provenance verdict, where the page is."""
    from rich.table import Table

    runs = Table(title="the loop: pipeline runs")
    for col in ("run", "status", "version", "artifact digest", "training set", "cached steps"):
        runs.add_column(col, overflow="fold")
    for r in rec.runs:
        cached = [s["step"] for s in r["steps"] if s["cache_hit"]]
        runs.add_row(
            r["title"],
            r["status"],
            f"v{r['version']}" if r["version"] else "-",
            r["artifact_digest"] or "-",
            (r["training_set"] or "-")[:23],
            ", ".join(cached) or "none",
        )
    console.print(runs)
    moves = Table(title="alias moves (registry audit log; each published as model.alias_moved)")
    for col in ("#", "alias", "move", "why"):
        moves.add_column(col, overflow="fold")
    for m in rec.alias_moves:
        moves.add_row(
            str(m["seq"]),
            m["alias"],
            f"{m['from_version'] or '-'} -> {m['to_version']}",
            m["why"][:70],
        )
    console.print(moves)
    p = rec.provenance
    lin = p.get("lineage", {})
    console.print(
        f"provenance: {p.get('count', 0)} hash-chained entries, "
        + ("[green]verified[/]" if p.get("ok") else "[red]BROKEN[/]")
        + f"; champion {lin.get('artifact_digest', '-')} <- training set "
        f"{lin.get('training_set_fingerprint', '-')} <- trigger {(lin.get('trigger') or {}).get('key', '-')}"
    )
    if rec.drift_to_promoted_s is not None:
        console.print(f"drift.detected -> champion moved: {rec.drift_to_promoted_s:.1f} s")
    console.print(f"[bold]the loop at a glance:[/] {out / 'index.html'}")
