"""A registering process for the concurrency test (run as a script).

registry_worker.py SPEC_JSON MODEL ARTIFACTS_ROOT FIRST LAST GO_FILE OUT_FILE
  opens the registry described by SPEC_JSON, waits for GO_FILE (a start barrier), registers
  artifacts FIRST..LAST-1 of MODEL (built by conftest.build_artifact under ARTIFACTS_ROOT),
  and writes {"versions": {index: version}} to OUT_FILE.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from integration.registry.registry_support import build_artifact

from keel.registry_client import open_registry


def main(spec_json: str, model: str, root: str, first: int, last: int, go: str, out: str) -> None:
    spec = json.loads(spec_json)
    if "home" in spec:
        reg = open_registry(spec["home"])
    else:
        reg = open_registry(tracking_uri=spec["tracking_uri"], db_url=spec["db_url"])
    arts = [build_artifact(Path(root), model, i) for i in range(first, last)]
    Path(out + ".ready").write_text("1")
    while not Path(go).exists():
        time.sleep(0.01)
    versions = {i: reg.register(a).version for i, a in zip(range(first, last), arts, strict=True)}
    Path(out).write_text(json.dumps({"versions": versions}))
    reg.close()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), int(a[4]), a[5], a[6])
