"""Which modules `import <module>` loads, measured in a fresh interpreter.

Import-time tests assert on this set (forbidden and lazily-loaded modules), never on
seconds: a wall-clock budget fails on a busy machine and proves nothing about the code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def modules_loaded_by(module: str) -> set[str]:
    """Every module in `sys.modules` after `import <module>` in a fresh interpreter that
    sees exactly this interpreter's path (Pants/pex set it up without PYTHONPATH)."""
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.splitlines()[-1]))


def loaded_from(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    """The modules in `modules` that are one of `packages` or inside one."""
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))
