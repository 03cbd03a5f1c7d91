"""Generate (or check) Keel's ops files from the SLO specs.

    python -m keel.telemetry.generate ops/            # write
    python -m keel.telemetry.generate ops/ --check    # exit 1 if any file is stale

Writes, under the given directory:
  prometheus/keel-rules.yml         recording + burn-rate alert rules, the other alerts
  grafana/keel-slo-dashboard.json   the SLO dashboard
  runbooks/<Alert>.md               one runbook per alert
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from keel.telemetry._alerts import AlertSpec
from keel.telemetry._dashboard import render_dashboard
from keel.telemetry._platform import PLATFORM_ALERTS, PLATFORM_SLOS
from keel.telemetry._rules import DEFAULT_RUNBOOK_BASE, render_rules
from keel.telemetry._runbooks import render_runbooks
from keel.telemetry._slo import SLOSpec

__all__ = [
    "DASHBOARD_PATH",
    "RULES_PATH",
    "main",
    "ops_files",
    "orphan_runbooks",
    "stale_files",
    "write_ops_files",
]

RULES_PATH = "prometheus/keel-rules.yml"
DASHBOARD_PATH = "grafana/keel-slo-dashboard.json"


def ops_files(
    slos: Sequence[SLOSpec] = PLATFORM_SLOS,
    *,
    alerts: Sequence[AlertSpec] = PLATFORM_ALERTS,
    runbook_base: str = DEFAULT_RUNBOOK_BASE,
) -> dict[str, str]:
    """Every generated file: path relative to the ops dir -> content."""
    files = {
        RULES_PATH: render_rules(slos, alerts=alerts, runbook_base=runbook_base),
        DASHBOARD_PATH: render_dashboard(slos),
    }
    books = render_runbooks(slos, alerts)
    files.update({f"runbooks/{name}": text for name, text in books.items()})
    return files


def stale_files(root: Path, files: dict[str, str]) -> list[str]:
    """The generated paths whose file under `root` is missing or differs."""
    stale = []
    for rel, text in files.items():
        path = root / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(rel)
    return stale


def orphan_runbooks(root: Path, files: dict[str, str]) -> list[str]:
    """Runbooks under `root` whose alert no longer exists."""
    present = {f"runbooks/{p.name}" for p in (root / "runbooks").glob("*.md")}
    return sorted(present - set(files))


def write_ops_files(root: Path, files: dict[str, str]) -> list[str]:
    """Write the files that changed and remove orphaned runbooks; returns their relative paths."""
    changed = stale_files(root, files)
    for rel in changed:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[rel], encoding="utf-8")
    orphans = orphan_runbooks(root, files)
    for rel in orphans:
        (root / rel).unlink()
    return changed + orphans


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keel.telemetry.generate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "ops_dir", nargs="?", default="ops", help="the ops directory (default: ops)"
    )
    parser.add_argument(
        "--check", action="store_true", help="only check; exit 1 when a file is stale"
    )
    parser.add_argument(
        "--runbook-base",
        default=DEFAULT_RUNBOOK_BASE,
        help=f"prefix of runbook_url annotations (default: {DEFAULT_RUNBOOK_BASE}; e.g. a repo URL)",
    )
    args = parser.parse_args(argv)
    root = Path(args.ops_dir)
    files = ops_files(runbook_base=args.runbook_base)
    if args.check:
        stale = stale_files(root, files) + orphan_runbooks(root, files)
        for rel in stale:
            print(f"stale: {root / rel}", file=sys.stderr)
        if stale:
            print(
                "regenerate with: python -m keel.telemetry.generate " + str(root), file=sys.stderr
            )
        return 1 if stale else 0
    changed = write_ops_files(root, files)
    print(
        f"{len(files)} files under {root}: {len(changed)} written, {len(files) - len(changed)} unchanged"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
