"""Import-weight checks (STYLE.md #6): what `import <module>` loads, and how long it takes."""

from __future__ import annotations

import subprocess
import sys


def import_times(module: str) -> dict[str, int]:
    """Cumulative import time (microseconds) of every module `import <module>` loads, measured
    in a fresh interpreter with `-X importtime`."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    )
    times: dict[str, int] = {}
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (p.strip() for p in line[len("import time:") :].split("|"))
            if cumulative.isdigit():
                times[name.strip()] = int(cumulative)
    return times
