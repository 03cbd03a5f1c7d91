"""The README's minimal example runs as written (docs that drift from the code fail here)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

# What the example imports, named here so the test's environment provides it.
import polars  # noqa: F401

import keel.features  # noqa: F401

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_minimal_example_runs() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## A complete minimal example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "the README lost its minimal example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.group(1), str(README), "exec"), {"__name__": "readme_example"})
    printed = out.getvalue()
    assert "count_10m" in printed and "std_amount_1h" in printed
