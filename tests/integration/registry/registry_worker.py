"""A registering process for the concurrency test (run as a script).

registry_worker.py SPEC_JSON ARTIFACTS_ROOT GO_FILE OUT_FILE JOBS_JSON
  opens the registry described by SPEC_JSON, writes OUT_FILE.ready, waits for GO_FILE (a start
  barrier), then for each [model, first, last] in JOBS_JSON registers artifacts first..last-1
  of that model (built by registry_support.build_artifact under ARTIFACTS_ROOT), and writes
  {model: {index: version}} to OUT_FILE.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from integration.registry.registry_support import build_artifact

from keel.registry_client import open_registry


def main(spec_json: str, root: str, go: str, out: str, jobs_json: str) -> None:
    spec = json.loads(spec_json)
    if "home" in spec:
        reg = open_registry(spec["home"])
    else:
        reg = open_registry(tracking_uri=spec["tracking_uri"], db_url=spec["db_url"])
    jobs = [
        (m, [build_artifact(Path(root), m, i) for i in range(lo, hi)])
        for m, lo, hi in json.loads(jobs_json)
    ]
    Path(out + ".ready").write_text("1")
    while not Path(go).exists():
        time.sleep(0.01)
    versions: dict[str, dict[int, int]] = {}
    for model, arts in jobs:
        for a in arts:
            i = int(json.loads(a.manifest.read_text())["i"])
            versions.setdefault(model, {})[i] = reg.register(a).version
    Path(out).write_text(json.dumps(versions))
    reg.close()


if __name__ == "__main__":
    main(*sys.argv[1:6])
