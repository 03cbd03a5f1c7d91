"""Evidently anchor for the drift benchmark: DataDriftPreset on two .npy matrices.

    evidently_anchor.pex REFERENCE.npy CURRENT.npy

Prints one JSON line: {"seconds": ..., "rows_ref": ..., "rows_cur": ..., "cols": ..., "version": ...}.
Only the report computation is timed (not reading the arrays or building the DataFrames).
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np
import pandas as pd


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    ref_arr, cur_arr = np.load(sys.argv[1]), np.load(sys.argv[2])
    cols = [f"c{i}" for i in range(ref_arr.shape[1])]
    ref = pd.DataFrame(ref_arr, columns=cols)
    cur = pd.DataFrame(cur_arr, columns=cols)
    warnings.filterwarnings("ignore")
    import evidently

    try:  # evidently >= 0.7: the new API
        from evidently import Report
        from evidently.presets import DataDriftPreset

        report = Report([DataDriftPreset()])
        t0 = time.perf_counter()
        snapshot = report.run(cur, ref)
        seconds = time.perf_counter() - t0
        drifted = None
        try:
            for m in snapshot.dict()["metrics"]:
                if "DriftedColumnsCount" in str(m.get("metric_name", "")):
                    drifted = int(m["value"]["count"])
        except Exception:  # the summary is informative only
            drifted = None
    except ImportError:  # evidently < 0.7: the legacy API
        from evidently.metric_preset import DataDriftPreset  # type: ignore[no-redef]
        from evidently.report import Report  # type: ignore[no-redef]

        report = Report(metrics=[DataDriftPreset()])
        t0 = time.perf_counter()
        report.run(reference_data=ref, current_data=cur)
        seconds = time.perf_counter() - t0
        drifted = None
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rows_ref": len(ref),
                "rows_cur": len(cur),
                "cols": len(cols),
                "version": getattr(evidently, "__version__", "unknown"),
                "drifted_columns": drifted,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
