"""Drift benchmark: keel.drift checking data against a saved profile, and Evidently's
DataDriftPreset on the same data (the anchor), measured in the same run.

    ./pants package tools/bench/drift/evidently_anchor: && ./pants run tools/bench/drift:drift
    ./pants run tools/bench/drift:drift -- --quick

Figures:
* ``keel_check_s``: load the saved profile + ``check_drift`` of ROWS x COLS (numeric,
  10% of columns shifted) - every univariate statistic, data quality and the
  domain-classifier test. Goal: <= 3 s for 1M x 100 on the 2-core machine.
* ``keel_check_peak_traced_mb``: peak of NumPy/Python allocations during a check (tracemalloc).
* ``process_peak_rss_mb``: the process's peak RSS (includes generating the data).
* Evidently anchor at ``--evidently-rows`` (a size it finishes in minutes) and Keel at that
  same size: ``keel_vs_evidently_speedup`` = Evidently seconds / Keel seconds.

The last line printed is the JSON summary (docs/architecture.md, principle 5).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import polars as pl

from keel.drift import CheckOptions, ReferenceProfile, build_profile, check_drift

DEFAULT_PEX = "dist/tools.bench.drift.evidently_anchor/evidently_anchor.pex"


def make_data(rows: int, cols: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((rows, cols))
    cur = rng.standard_normal((rows, cols))
    shifted = np.arange(cols) % 10 == 0  # 10% of the columns drift
    cur[:, shifted] = cur[:, shifted] * 1.2 + 0.3
    return ref, cur


def frame(arr: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({f"c{i}": arr[:, i] for i in range(arr.shape[1])})


def keel_check(profile_path: Path, cur: pl.DataFrame, repeats: int) -> tuple[float, int]:
    """Best-of-``repeats`` seconds for load profile + check; number of drifted columns."""
    best = float("inf")
    drifted = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        prof = ReferenceProfile.load(profile_path)
        res = check_drift(prof, cur)
        best = min(best, time.perf_counter() - t0)
        drifted = sum(1 for f in res.features.values() if (f.wasserstein_norm or 0) > 0.1)
    return best, drifted


def run_evidently(
    pex: Path | None, ref: np.ndarray, cur: np.ndarray, tmp: Path, timeout_s: float
) -> dict:
    if pex is None:
        return {
            "error": f"no anchor PEX: build it with `./pants package tools/bench/drift/evidently_anchor:` ({DEFAULT_PEX})"
        }
    np.save(tmp / "ref.npy", ref)
    np.save(tmp / "cur.npy", cur)
    try:
        proc = subprocess.run(
            [
                sys.executable if pex.suffix == ".py" else str(pex),
                *([str(pex)] if pex.suffix == ".py" else []),
                str(tmp / "ref.npy"),
                str(tmp / "cur.npy"),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={k: v for k, v in os.environ.items() if not k.startswith(("PEX_", "PYTHONPATH"))},
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"evidently did not finish in {timeout_s:.0f} s"}
    if proc.returncode != 0:
        return {"error": f"anchor failed (rc {proc.returncode}): {proc.stderr.strip()[-800:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="small smoke size (100k x 20; Evidently at 5k rows)"
    )
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--cols", type=int, default=100)
    ap.add_argument(
        "--evidently-rows",
        type=int,
        default=100_000,
        help="rows per side for the Evidently comparison",
    )
    ap.add_argument(
        "--evidently-pex",
        type=Path,
        default=None,
        help=f"anchor PEX (default: {DEFAULT_PEX} if present)",
    )
    ap.add_argument("--evidently-timeout", type=float, default=900.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows, cols, ev_rows = args.rows, args.cols, args.evidently_rows
    if args.quick:
        rows, cols, ev_rows = 100_000, 20, 5_000
    pex = args.evidently_pex
    if pex is None:
        for base in (
            Path.cwd(),
            Path(os.environ.get("PANTS_BUILDROOT_OVERRIDE", "")),
            *Path.cwd().parents,
        ):
            if (base / DEFAULT_PEX).exists():
                pex = base / DEFAULT_PEX
                break
    print(
        f"drift bench: {rows:,} rows x {cols} numeric columns; Evidently at {ev_rows:,} rows",
        flush=True,
    )

    ref_arr, cur_arr = make_data(rows, cols, seed=0)
    ref_df, cur_df = frame(ref_arr), frame(cur_arr)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        t0 = time.perf_counter()
        profile = build_profile(ref_df)
        profile_s = time.perf_counter() - t0
        path = profile.save(tmp / "profile.json")
        profile_mb = path.stat().st_size / 1e6
        print(f"  profile built in {profile_s:.2f} s; saved {profile_mb:.1f} MB", flush=True)
        check_drift(ReferenceProfile.load(path), cur_df.head(1000))  # warm lazy imports (scipy)
        check_s, drifted = keel_check(path, cur_df, args.repeats)
        print(
            f"  keel check (load profile + all tests): {check_s:.3f} s, {drifted} columns drifted",
            flush=True,
        )
        t0 = time.perf_counter()
        check_drift(ReferenceProfile.load(path), cur_df, options=CheckOptions(multivariate=False))
        univariate_s = time.perf_counter() - t0
        tracemalloc.start()
        check_drift(ReferenceProfile.load(path), cur_df)
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"  keel check peak traced allocations: {traced_peak / 1e6:.0f} MB", flush=True)

        # same size for both sides of the comparison
        ev_ref, ev_cur = ref_arr[:ev_rows], cur_arr[:ev_rows]
        small_prof = build_profile(frame(ev_ref))
        small_path = small_prof.save(tmp / "small.json")
        keel_small_s, keel_small_drifted = keel_check(small_path, frame(ev_cur), args.repeats)
        print(
            f"  keel at {ev_rows:,} rows: {keel_small_s:.3f} s ({keel_small_drifted} drifted)",
            flush=True,
        )
        ev = run_evidently(pex, ev_ref, ev_cur, tmp, args.evidently_timeout)
        if "error" in ev:
            print(f"  evidently: {ev['error']}", flush=True)
        else:
            print(
                f"  evidently {ev.get('version')} DataDriftPreset at {ev_rows:,} rows: {ev['seconds']:.2f} s "
                f"({ev.get('drifted_columns')} drifted)",
                flush=True,
            )
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ev_s = ev.get("seconds")
    speedup = ev_s / keel_small_s if ev_s else None
    goal_rows = rows >= 1_000_000 and cols >= 100
    summary = {
        "bench": "drift",
        "figures": {
            "rows": rows,
            "cols": cols,
            "keel_profile_build_s": round(profile_s, 3),
            "keel_check_s": round(check_s, 3),
            "keel_check_univariate_only_s": round(univariate_s, 3),
            "keel_check_peak_traced_mb": round(traced_peak / 1e6, 1),
            "process_peak_rss_mb": round(peak_rss_mb, 1),
            "profile_file_mb": round(profile_mb, 2),
            "comparison_rows": ev_rows,
            "keel_check_at_comparison_s": round(keel_small_s, 4),
            "evidently_data_drift_preset_s": round(ev_s, 3) if ev_s else None,
            "evidently_version": ev.get("version"),
            "evidently_error": ev.get("error"),
        },
        "ratios": {"keel_vs_evidently_speedup": round(speedup, 1) if speedup else None},
        "goals_met": {
            "keel_check_1m_x_100_le_3s": (check_s <= 3.0) if goal_rows else None,
            "keel_vs_evidently_ge_100x": (speedup >= 100) if speedup else None,
        },
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
