"""Drift benchmark: keel.drift against Evidently's DataDriftPreset (defaults), same run.

    ./pants package tools/bench/drift/evidently_anchor: && ./pants run tools/bench/drift:drift
    ./pants run tools/bench/drift:drift -- --quick

Two questions, each answered side by side with the anchor:

1. **Does it detect?** Windows of ``--power-rows`` rows x 50 standard-normal columns, with
   k of the 50 columns shifted by 0.1 / 0.2 / 0.3 sigma, plus no-shift windows, each
   judged by ``DriftPolicy().decide(check_drift(profile, window), [])`` and by Evidently's
   defaults. Per column: *power* = share of shifted columns flagged (Keel: drifted;
   Evidently: its per-column drift), *false-alarm rate* = share of unshifted columns
   flagged (``keel_power_counting_warn`` also counts Keel's warn-level columns). Per window: Keel's DRIFT decision vs Evidently's dataset drift (>= 50 % of
   columns); a window false alarm is a no-shift window flagged.
2. **How fast?** On the same ``--rows`` x ``--cols`` data (Parquet files for the process
   runs): in-process check only (profile already built and saved: load + check),
   in-process profile + check, and whole processes - ``keel drift profile`` then
   ``keel drift check`` vs the Evidently script reading the same Parquet files.

Every ratio names both sides; ``--quick`` runs a small size and marks full-size goals
``null``. The last line printed is the JSON summary (docs/architecture.md, principle 5).
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
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from keel.drift import DriftPolicy, Level, ReferenceProfile, build_profile, check_drift

DEFAULT_PEX = "dist/tools.bench.drift.evidently_anchor/evidently_anchor.pex"
SHIFTS = (0.1, 0.2, 0.3)
POWER_COLS = 50


def frame(arr: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(arr, schema=[f"c{i}" for i in range(arr.shape[1])])


def _child_env() -> dict[str, str]:
    """The anchor is its own PEX: don't leak this process's PEX/PYTHONPATH into it."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PEX_", "PYTHONPATH"))}


def _anchor_cmd(pex: Path) -> list[str]:
    return [sys.executable, str(pex)] if pex.suffix == ".py" else [str(pex)]


def run_anchor(pex: Path | None, args: list[str], timeout_s: float) -> dict[str, Any]:
    if pex is None:
        return {
            "error": "no anchor PEX: build it with "
            f"`./pants package tools/bench/drift/evidently_anchor:` ({DEFAULT_PEX})"
        }
    if not pex.exists():
        return {"error": f"anchor {pex} does not exist"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [*_anchor_cmd(pex), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=_child_env(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"evidently did not finish in {timeout_s:.0f} s"}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": f"anchor failed (rc {proc.returncode}): {proc.stderr.strip()[-800:]}"}
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = wall
    return out


# --------------------------------------------------------------------------------------
# 1. detection power and false alarms
# --------------------------------------------------------------------------------------
def power_windows(
    rows: int, ks: list[int], nulls: int, trials: int, seed: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The reference and the windows: (shift, k, shifted columns, data) each."""
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((rows, POWER_COLS))
    windows: list[dict[str, Any]] = []
    for shift in SHIFTS:
        for k in ks:
            for _ in range(trials):
                cur = rng.standard_normal((rows, POWER_COLS))
                cols = sorted(rng.choice(POWER_COLS, k, replace=False).tolist())
                cur[:, cols] += shift
                windows.append({"shift": shift, "k": k, "shifted": cols, "data": cur})
    for _ in range(nulls):
        windows.append(
            {"shift": 0.0, "k": 0, "shifted": [], "data": rng.standard_normal((rows, POWER_COLS))}
        )
    return ref, windows


def keel_flags(ref: np.ndarray, windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    profile = build_profile(frame(ref))
    policy = DriftPolicy()
    out = []
    for w in windows:
        d = policy.decide(check_drift(profile, frame(w["data"])), [])
        out.append(
            {
                "flagged": sorted(int(n[1:]) for n in d.drifted),
                "flagged_or_warned": sorted(int(n[1:]) for n in (*d.drifted, *d.warned)),
                "window_drift": d.decision is Level.DRIFT,
                "window_flag": d.decision is not Level.NONE,
            }
        )
    return out


def evidently_flags(
    pex: Path | None, ref: np.ndarray, windows: list[dict[str, Any]], tmp: Path, timeout_s: float
) -> list[dict[str, Any]] | str:
    np.save(tmp / "power-ref.npy", ref)
    paths = []
    for i, w in enumerate(windows):
        p = tmp / f"power-{i}.npy"
        np.save(p, w["data"])
        paths.append(str(p))
    manifest = tmp / "power.json"
    manifest.write_text(json.dumps({"reference": str(tmp / "power-ref.npy"), "windows": paths}))
    ev = run_anchor(pex, ["power", str(manifest)], timeout_s)
    if "error" in ev:
        return str(ev["error"])
    return [
        {
            "flagged": sorted(int(c[1:]) for c in w["drifted"]),
            "window_drift": bool(w["dataset_drift"]),
            "window_flag": bool(w["drifted"]),
        }
        for w in ev["windows"]
    ]


def score(
    windows: list[dict[str, Any]], flags: list[dict[str, Any]], key: str = "flagged"
) -> dict[str, Any]:
    """Column power per shift, column false-alarm rate, window power / false alarms.
    ``key``: which per-column flags count (Keel: drift, or warn-or-drift)."""
    out: dict[str, Any] = {}
    for shift in SHIFTS:
        hit = tot = win = nwin = 0
        for w, f in zip(windows, flags, strict=True):
            if w["shift"] != shift:
                continue
            hit += len(set(w["shifted"]) & set(f[key]))
            tot += len(w["shifted"])
            win += f["window_drift"]
            nwin += 1
        out[f"column_power_{shift}sd"] = round(hit / tot, 4) if tot else None
        out[f"window_drift_rate_{shift}sd"] = round(win / nwin, 4) if nwin else None
    fa = n_unshifted = 0
    for w, f in zip(windows, flags, strict=True):
        unshifted = set(range(POWER_COLS)) - set(w["shifted"])
        fa += len(unshifted & set(f[key]))
        n_unshifted += len(unshifted)
    nulls = [f for w, f in zip(windows, flags, strict=True) if w["shift"] == 0.0]
    out["column_false_alarm_rate"] = round(fa / n_unshifted, 5)
    out["window_false_alarm_rate"] = (
        round(sum(f["window_flag"] for f in nulls) / len(nulls), 4) if nulls else None
    )
    return out


# --------------------------------------------------------------------------------------
# 2. speed
# --------------------------------------------------------------------------------------
def keel_processes(
    keel_cmd: list[str], ref_path: Path, cur_path: Path, tmp: Path, timeout_s: float
) -> dict[str, Any]:
    """`keel drift profile` + `keel drift check` as two processes: wall and CPU seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    prof = tmp / "cli-profile.json"
    steps = [
        [*keel_cmd, "drift", "profile", str(ref_path), "--out", str(prof)],
        [*keel_cmd, "drift", "check", str(prof), str(cur_path), "--fail-on", "never"],
    ]
    wall = 0.0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for cmd in steps:
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout_s, check=False
        )
        wall += time.perf_counter() - t0
        if proc.returncode != 0:
            return {"error": f"{' '.join(cmd[-5:])}: rc {proc.returncode}: {proc.stderr[-600:]}"}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def evidently_process(
    pex: Path | None, ref_path: Path, cur_path: Path, timeout_s: float
) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    ev = run_anchor(pex, ["time", str(ref_path), str(cur_path)], timeout_s)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ev["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return ev


def _ratio(num: float | None, den: float | None) -> float | None:
    return round(num / den, 2) if num and den else None


def _find_pex(arg: Path | None) -> Path | None:
    if arg is not None:
        return arg
    for base in (
        Path.cwd(),
        Path(os.environ.get("PANTS_BUILDROOT_OVERRIDE", "")),
        *Path.cwd().parents,
    ):
        if (base / DEFAULT_PEX).exists():
            return base / DEFAULT_PEX
    return None


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small smoke size; goals null")
    ap.add_argument("--rows", type=int, default=200_000, help="rows per side (speed)")
    ap.add_argument("--cols", type=int, default=50, help="numeric columns (speed)")
    ap.add_argument("--power-rows", type=int, default=5000, help="rows per window (power)")
    ap.add_argument("--trials", type=int, default=2, help="windows per shift and k")
    ap.add_argument("--null-windows", type=int, default=10, help="windows with no shift")
    ap.add_argument("--evidently-pex", type=Path, default=None, help=f"default: {DEFAULT_PEX}")
    ap.add_argument(
        "--keel",
        default=None,
        help="the keel CLI as a command (default: this interpreter, -m keel_cli.main)",
    )
    ap.add_argument("--timeout", type=float, default=1800.0)
    args = ap.parse_args()
    rows, cols, power_rows, trials, nulls = (
        args.rows,
        args.cols,
        args.power_rows,
        args.trials,
        args.null_windows,
    )
    ks = [10, 25]
    if args.quick:
        rows, cols, power_rows, trials, nulls, ks = 20_000, 20, 2000, 1, 3, [10]
    pex = _find_pex(args.evidently_pex)
    keel_cmd = args.keel.split() if args.keel else [sys.executable, "-m", "keel_cli.main"]
    print(
        f"drift bench: power on {power_rows:,}-row windows x {POWER_COLS} columns; "
        f"speed on {rows:,} x {cols}; anchor {pex or 'missing'}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        # 1. power -----------------------------------------------------------------------
        ref, windows = power_windows(power_rows, ks, nulls, trials, seed=0)
        kf = keel_flags(ref, windows)
        keel = score(windows, kf)
        keel_warn = score(windows, kf, "flagged_or_warned")
        ev_flags = evidently_flags(pex, ref, windows, tmp, args.timeout)
        ev: dict[str, Any] = (
            score(windows, ev_flags) if isinstance(ev_flags, list) else {"error": ev_flags}
        )
        print(f"  keel power:      {keel}", flush=True)
        print(f"  evidently power: {ev}", flush=True)
        del windows

        # 2. speed -----------------------------------------------------------------------
        rng = np.random.default_rng(1)
        ref_arr = rng.standard_normal((rows, cols))
        cur_arr = rng.standard_normal((rows, cols))
        cur_arr[:, : max(1, cols // 5)] += 0.3
        ref_df, cur_df = frame(ref_arr), frame(cur_arr)
        del ref_arr, cur_arr
        ref_path, cur_path = tmp / "reference.parquet", tmp / "current.parquet"
        ref_df.write_parquet(ref_path)
        cur_df.write_parquet(cur_path)
        check_drift(build_profile(ref_df.head(2000)), cur_df.head(2000))  # warm lazy imports
        t0 = time.perf_counter()
        profile = build_profile(ref_df)
        build_s = time.perf_counter() - t0
        saved = profile.save(tmp / "profile.json")
        t0 = time.perf_counter()
        result = check_drift(ReferenceProfile.load(saved), cur_df)
        check_s = time.perf_counter() - t0
        decision = DriftPolicy().decide(result, [])
        print(
            f"  keel in-process: profile {build_s:.2f} s, load + check {check_s:.2f} s "
            f"-> {decision.decision.value}",
            flush=True,
        )
        del ref_df, cur_df
        cli = keel_processes(keel_cmd, ref_path, cur_path, tmp, args.timeout)
        print(f"  keel CLI processes: {cli}", flush=True)
        evp = evidently_process(pex, ref_path, cur_path, args.timeout)
        print(f"  evidently process: {evp}", flush=True)

    ev_report_s = evp.get("seconds")
    ev_wall = evp.get("process_wall_s") if "error" not in evp else None
    ev_cpu = evp.get("cpu_s") if "error" not in evp else None
    full = not args.quick
    have_ev = "error" not in ev
    ratios = {
        "evidently_report_vs_keel_check_only_in_process_speedup": _ratio(ev_report_s, check_s),
        "evidently_report_vs_keel_profile_plus_check_in_process_speedup": _ratio(
            ev_report_s, build_s + check_s
        ),
        "evidently_process_vs_keel_cli_processes_wall_speedup": _ratio(ev_wall, cli.get("wall_s")),
        "evidently_process_vs_keel_cli_processes_cpu_speedup": _ratio(ev_cpu, cli.get("cpu_s")),
    }
    power_ok = have_ev and all(
        (keel[f"column_power_{s}sd"] or 0) >= (ev[f"column_power_{s}sd"] or 0) for s in SHIFTS
    )
    goals: dict[str, bool | None] = {
        "keel_column_power_ge_evidently_every_shift": power_ok if have_ev and full else None,
        "keel_column_false_alarm_le_evidently": (
            keel["column_false_alarm_rate"] <= ev["column_false_alarm_rate"]
            if have_ev and full
            else None
        ),
        "keel_window_drift_rate_ge_evidently_dataset_drift_every_shift": (
            all(
                (keel[f"window_drift_rate_{s}sd"] or 0) >= (ev[f"window_drift_rate_{s}sd"] or 0)
                for s in SHIFTS
            )
            if have_ev and full
            else None
        ),
        "keel_window_false_alarm_le_evidently": (
            keel["window_false_alarm_rate"] <= ev["window_false_alarm_rate"]
            if have_ev and full
            else None
        ),
        "keel_flags_the_200k_x_50_0.3sd_case": (
            decision.decision is Level.DRIFT if full and rows == 200_000 and cols == 50 else None
        ),
        "keel_cli_processes_faster_than_evidently_process_wall": (
            ratios["evidently_process_vs_keel_cli_processes_wall_speedup"] > 1
            if full and ratios["evidently_process_vs_keel_cli_processes_wall_speedup"]
            else None
        ),
    }
    summary = {
        "bench": "drift",
        "figures": {
            "quick": args.quick,
            "power_rows_per_window": power_rows,
            "power_columns": POWER_COLS,
            "power_shifted_columns_k": ks,
            "power_windows_per_shift_and_k": trials,
            "power_no_shift_windows": nulls,
            "keel_power": keel,
            "keel_power_counting_warn": keel_warn,
            "evidently_power": ev,
            "speed_rows": rows,
            "speed_cols": cols,
            "keel_profile_build_in_process_s": round(build_s, 3),
            "keel_load_and_check_in_process_s": round(check_s, 3),
            "keel_decision_on_speed_data": decision.decision.value,
            "keel_cli_profile_plus_check_processes_wall_s": _round(cli.get("wall_s")),
            "keel_cli_profile_plus_check_processes_cpu_s": _round(cli.get("cpu_s")),
            "keel_cli_error": cli.get("error"),
            "evidently_report_in_process_s": _round(ev_report_s),
            "evidently_process_wall_s": _round(ev_wall),
            "evidently_process_cpu_s": _round(ev_cpu),
            "evidently_version": evp.get("version"),
            "evidently_error": evp.get("error") or ev.get("error"),
            "process_peak_rss_mb": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
            ),
        },
        "ratios": ratios,
        "goals_met": goals,
    }
    print(json.dumps(summary))
    return 0


def _round(x: float | None) -> float | None:
    return round(x, 3) if x is not None else None


if __name__ == "__main__":
    sys.exit(main())
