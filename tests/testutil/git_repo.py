"""A throw-away git repository holding a lockfile: the code version (a commit) and the
dependency lock that keel.trainer and keel.pipelines record, and that `keel reproduce`
checks out and hashes again. Used by the reproduce tests, the demo's end-to-end test and
tools/bench:reproduce."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

LOCK = Path("3rdparty") / "python" / "default.lock"


def git(repo: Path, *args: str) -> str:
    """``git -C repo args`` with a fixed author; its stdout, stripped. A failure raises
    RuntimeError with git's own message."""
    who = ["-c", "user.name=keel-test", "-c", "user.email=keel-test@example.com"]
    run = subprocess.run(
        ["git", "-C", str(repo), *who, *args], capture_output=True, text=True, check=False
    )
    if run.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {repo}: {run.stderr.strip()}")
    return run.stdout.strip()


def lockfile_repo(repo: Path, tag: str) -> tuple[str, Path]:
    """Make ``repo`` (it may exist, empty) a git repository whose one commit holds a
    lockfile at 3rdparty/python/default.lock naming ``tag``: (commit, lockfile)."""
    lock = repo / LOCK
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"locked_resolves": [], "test": tag}) + "\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "lock")
    return git(repo, "rev-parse", "HEAD"), lock
