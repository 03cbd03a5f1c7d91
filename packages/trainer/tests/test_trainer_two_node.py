"""Fault test (3): a two-node Ray cluster on this machine (head + a second raylet, 1 CPU
each), a 2-worker job with one worker on each node, and the second node's raylet SIGKILLed
mid-training.

Keel's failure policy for a lost node: a checkpoint holds one data shard per worker, so a
job resumes only with the worker count it was checkpointed with (``ResumeConflictError``
otherwise). Ray Train counts the dead worker as one worker-group failure (``max_failures``),
then waits for the cluster to fit the group again (retrying worker-group start-up); when a
node comes back (here: a replacement ``add_node``, as an autoscaler would), every worker
restores the newest committed checkpoint. What is exactly true, and asserted: the run
restarts once, from step 30 (the newest checkpoint committed before the kill at step 35),
finishes, and its weights are bitwise equal to an uninterrupted run of the same job on the
same cluster.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_testdata import job

from keel.trainer import FaultPlan, run_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_raylet_of_the_second_node_waits_for_a_node_and_resumes_bitwise_equal(
    two_node_ray: Any, regression_data: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    assert len(two_node_ray.alive_nodes()) == 2
    base = run_job(job("two-node", regression_data), home=home, export=False)
    assert base.status == "completed" and base.restarts == 0

    once = tmp_path / "faults"
    # rank 0 pauses at step 35 (after checkpoint 30): the group is mid-training, both
    # workers alive, when the raylet dies
    faults = FaultPlan(once_dir=once, pause_at_step=35, rank=0)
    node2 = two_node_ray.workers[0]
    seen: dict[str, Any] = {}

    def train() -> None:
        try:
            seen["result"] = run_job(
                job("two-node-kill", regression_data), home=home, export=False, faults=faults
            )
        except BaseException as e:
            seen["train_error"] = e

    # The job runs in a thread; the node loss and its replacement happen on the main thread
    # (Ray's Cluster.add_node installs signal handlers, which only the main thread may do).
    runner = threading.Thread(target=train, daemon=True)
    runner.start()
    deadline = time.monotonic() + 900
    while not (once / "fired-pause").exists():
        assert runner.is_alive(), f"the job ended before step 35: {seen}"
        assert time.monotonic() < deadline, "the job never reached step 35"
        time.sleep(0.1)
    two_node_ray.kill_raylet(node2)
    seen["alive_after_kill"] = len(two_node_ray.alive_nodes())
    two_node_ray.add_node()  # the replacement node: the group fits again
    runner.join(timeout=900)
    assert not runner.is_alive(), "the job did not finish after the replacement node joined"
    assert "error" not in seen and "train_error" not in seen, seen
    r = seen["result"]
    assert seen["alive_after_kill"] == 1 and len(two_node_ray.alive_nodes()) == 2
    assert faults.fired() == ["pause"]
    starts = [e for e in r.events if e["type"] == "start"]
    assert [s["resumed_from"] for s in starts] == [None, 30], starts
    assert r.restarts == 1 and r.status == "completed" and r.step == base.step
    assert _equal(r.state_dict(), base.state_dict())
    assert r.history == base.history
