"""A two-node Ray cluster on this machine, one per test process.

``ray.cluster_utils.Cluster`` starts a head node and a second node, each its own raylet
process with its own resources (1 CPU, a small object store), under one short temp dir
(Ray's socket paths must stay under 108 bytes). The driver (the test process) is connected
to the head. ``kill_raylet`` SIGKILLs a node's raylet — what a machine loss looks like to
the cluster — and ``add_node`` brings a replacement, as an autoscaler or an operator would.

Use it from a conftest (``from testutil.ray_nodes import two_node_ray  # noqa: F401``) or
wrap ``two_node_session()`` in a fixture of your own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

NODE_CPUS = 1
OBJECT_STORE_BYTES = 80 << 20
# Node death is noticed by Ray's default GCS health check (about 15 s). A tighter one (1 s
# x 3 misses) marked the *head* dead too on this loaded 2-core machine, killing the driver.


@dataclass
class TwoNodeRay:
    """The cluster, its head, and the worker nodes added so far (the first is "node 2")."""

    cluster: Any
    temp_dir: str
    workers: list[Any] = field(default_factory=list)

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add_node(self, **resources: Any) -> Any:
        node = self.cluster.add_node(
            num_cpus=NODE_CPUS,
            object_store_memory=OBJECT_STORE_BYTES,
            temp_dir=self.temp_dir,
            **resources,
        )
        self.cluster.wait_for_nodes()
        self.workers.append(node)
        return node

    def kill_raylet(self, node: Any, timeout_s: float = 120.0) -> None:
        """SIGKILL ``node``'s raylet, reap it, then wait until the cluster marks the node dead
        and clean up what the node left (its agents)."""
        import ray
        from ray._private import ray_constants

        node_id = node.node_id
        proc = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            alive = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
            if not alive.get(node_id, False):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"node {node_id} still alive {timeout_s} s after its raylet died")
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def alive_nodes(self) -> list[str]:
        import ray

        return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])


def start_two_node_ray() -> TwoNodeRay:
    """Start (or restart: a Ray this process already joined is shut down) the cluster."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        ray.shutdown()
    tmp = f"/tmp/kr2-{os.getpid()}"
    # The cluster records its address in $RAY_TMPDIR/ray/ray_current_cluster; this process's
    # own RAY_TMPDIR (inherited by the nodes and their workers) keeps that file, and every
    # "which cluster?" lookup by Ray's helper actors, away from other Ray instances here.
    os.environ["RAY_TMPDIR"] = tmp
    os.makedirs(os.path.join(tmp, "ray"), exist_ok=True)
    cluster = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={
            "num_cpus": NODE_CPUS,
            "object_store_memory": OBJECT_STORE_BYTES,
            "temp_dir": tmp,
            "include_dashboard": False,
        },
    )
    two = TwoNodeRay(cluster, tmp)
    two.add_node()
    return two


def two_node_session() -> Iterator[TwoNodeRay]:
    """Start the cluster, yield it, shut it down (the body of a fixture)."""
    import ray

    two = start_two_node_ray()
    try:
        yield two
    finally:
        ray.shutdown()
        two.cluster.shutdown()


@pytest.fixture(scope="session")
def two_node_ray() -> Iterator[TwoNodeRay]:
    """One two-node cluster per test process (2 CPUs in all, one on each node)."""
    yield from two_node_session()
