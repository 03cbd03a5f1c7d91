"""Evidently anchor for the drift benchmark: DataDriftPreset with its default settings.

    evidently_anchor.pex time REFERENCE.parquet CURRENT.parquet
    evidently_anchor.pex power MANIFEST.json

``time``: read both Parquet files and run the preset, as a user's script would; prints one
JSON line {"seconds": <report only>, "total_seconds": <read + report>, ...}. The bench
also measures the whole process from outside.

``power``: the manifest names one reference .npy and a list of current .npy windows (same
columns c0..cN); prints one JSON line with, per window, the columns Evidently's defaults
call drifted and its dataset-level verdict (share of drifted columns >= 0.5).

Evidently's defaults (0.7): numeric columns with more than 1000 rows - normalised
Wasserstein distance >= 0.1; up to 1000 rows - two-sample KS p-value < 0.05 (no
multiple-testing correction).
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np
import pandas as pd


def _report(ref: pd.DataFrame, cur: pd.DataFrame) -> tuple[list[str], bool, float]:
    """(drifted columns, dataset drift, seconds of the report run)."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    report = Report([DataDriftPreset()])
    t0 = time.perf_counter()
    snapshot = report.run(cur, ref)
    seconds = time.perf_counter() - t0
    drifted: list[str] = []
    share = 0.0
    for m in snapshot.dict()["metrics"]:
        name = str(m.get("metric_name", ""))
        cfg = m.get("config", {}) or {}
        if name.startswith("ValueDrift"):
            col = cfg.get("column")
            threshold = cfg.get("threshold")
            value = m["value"]
            method = str(cfg.get("method", ""))
            # distance methods drift at value >= threshold; p-value tests at value < threshold
            is_p = "p_value" in method or "K-S" in method or "chi" in method.lower()
            hit = value < threshold if is_p else value >= threshold
            if col is not None and hit:
                drifted.append(str(col))
        elif name.startswith("DriftedColumnsCount"):
            share = float(m["value"]["share"])
    return sorted(drifted), share >= 0.5, seconds


def _version() -> str:
    import evidently

    return getattr(evidently, "__version__", "unknown")


def main() -> int:
    warnings.filterwarnings("ignore")
    if len(sys.argv) == 4 and sys.argv[1] == "time":
        t0 = time.perf_counter()
        ref = pd.read_parquet(sys.argv[2])
        cur = pd.read_parquet(sys.argv[3])
        drifted, dataset, seconds = _report(ref, cur)
        out = {
            "seconds": seconds,
            "total_seconds": time.perf_counter() - t0,
            "rows_ref": len(ref),
            "rows_cur": len(cur),
            "cols": ref.shape[1],
            "drifted_columns": len(drifted),
            "dataset_drift": dataset,
            "version": _version(),
        }
    elif len(sys.argv) == 3 and sys.argv[1] == "power":
        with open(sys.argv[2]) as fh:
            manifest = json.load(fh)
        ref_arr = np.load(manifest["reference"])
        cols = [f"c{i}" for i in range(ref_arr.shape[1])]
        ref = pd.DataFrame(ref_arr, columns=cols)
        windows = []
        for path in manifest["windows"]:
            cur = pd.DataFrame(np.load(path), columns=cols)
            drifted, dataset, seconds = _report(ref, cur)
            windows.append({"drifted": drifted, "dataset_drift": dataset, "seconds": seconds})
        out = {"windows": windows, "version": _version()}
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
