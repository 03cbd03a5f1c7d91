"""Sum the JUnit XML reports Pants writes (`[test] report`) into one closing line:
`tests: N passed, N failed, N skipped`. Stdlib only: runs on any python3."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main(report_dir: str) -> int:
    files = sorted(Path(report_dir).rglob("*.xml"))
    if not files:
        print(f"junit_summary: no reports under {report_dir}", file=sys.stderr)
        return 1
    total = failed = skipped = 0
    for f in files:
        root = ET.parse(f).getroot()
        suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
        for s in suites:
            total += int(s.get("tests", 0))
            failed += int(s.get("failures", 0)) + int(s.get("errors", 0))
            skipped += int(s.get("skipped", 0))
    passed = total - failed - skipped
    print(f"{len(files)} test files")
    print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "dist/test/reports"))
