"""Keel's version: the repo's VERSION file, shipped as a resource next to the code."""

from __future__ import annotations

import sys
from pathlib import Path


def keel_version() -> str:
    here = Path(__file__).resolve().parent
    for base in (here.parent, *map(Path, sys.path)):
        f = base / "VERSION"
        if f.is_file():
            return f.read_text().strip()
    return "unknown"
