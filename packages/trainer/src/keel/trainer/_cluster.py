"""Ray: start a bounded local cluster once per process, or join ``RAY_ADDRESS``.

Local default: ``num_cpus`` = the machine's CPUs (or the caller's bound), an object store of
``object_store_bytes`` (256 MiB unless told; the trainer passes no data through it), no
dashboard, and a short temp dir (``$RAY_TMPDIR`` or ``/tmp/keel-ray-<uid>``: Ray's Unix
socket paths must stay under 108 bytes). ``RAY_ADDRESS`` (or ``address=``) points the same
job at a running cluster instead; multi-node runs need ``KEEL_HOME`` on storage every node
sees, since checkpoints are written there.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from keel.trainer._errors import ClusterUnavailableError, InvalidJobError

DEFAULT_OBJECT_STORE_BYTES = 256 << 20


@dataclass(frozen=True)
class ClusterInfo:
    started_here: bool
    address: str | None
    cpus: float
    gpus: float


def ensure_ray(
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    object_store_bytes: int | None = None,
    tmp_dir: str | None = None,
    log_to_driver: bool = False,
    attempts: int = 3,
) -> ClusterInfo:
    """Connect to Ray if this process is not connected yet (idempotent).

    A local instance is started up to ``attempts`` times: on a loaded machine its first start
    can miss Ray's own 30-second node registration wait (its agents start slowly; a second
    start finds warm caches), and Ray's agents get 180 s to register unless
    ``RAY_agent_register_timeout_ms`` says otherwise. A remote ``address`` is tried once."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")
    try:
        import ray
    except ImportError as e:  # pragma: no cover - a dependency
        raise ClusterUnavailableError(f"ray is not installed: {e}") from None
    started = False
    addr = address or os.environ.get("RAY_ADDRESS") or None
    tries = 1 if addr else max(1, attempts)
    for attempt in range(1, tries + 1):
        if ray.is_initialized():
            break
        try:
            if addr:
                ray.init(address=addr, log_to_driver=log_to_driver, logging_level=logging.WARNING)
            else:
                tmp = tmp_dir or os.environ.get("RAY_TMPDIR") or f"/tmp/keel-ray-{os.getuid()}"
                ray.init(
                    num_cpus=num_cpus or os.cpu_count() or 1,
                    object_store_memory=object_store_bytes or DEFAULT_OBJECT_STORE_BYTES,
                    include_dashboard=False,
                    _temp_dir=tmp,
                    log_to_driver=log_to_driver,
                    logging_level=logging.WARNING,
                )
                started = True
        except Exception as e:  # Ray raises a bare Exception when its node times out
            if ray.is_initialized():
                ray.shutdown()
            if attempt < tries:
                continue
            where = f"the Ray cluster at {addr}" if addr else "a local Ray instance"
            times = f" ({tries} attempts)" if tries > 1 else ""
            raise ClusterUnavailableError(f"cannot start or reach {where}{times}: {e}") from None
    res = ray.cluster_resources()
    return ClusterInfo(started, addr, float(res.get("CPU", 0)), float(res.get("GPU", 0)))


def resolve_workers(
    num_workers: int | str,
    use_gpu: bool,
    cpus_per_worker: int,
    gpus_per_worker: float,
    info: ClusterInfo,
) -> int:
    """``"auto"``: as many workers as the cluster's GPUs (use_gpu) or CPUs allow."""
    if isinstance(num_workers, int):
        need_cpu = num_workers * cpus_per_worker
        if need_cpu > info.cpus:
            raise ClusterUnavailableError(
                f"scaling asks for {num_workers} workers x {cpus_per_worker} CPU = {need_cpu} CPUs; "
                f'the cluster has {info.cpus:g}. Lower num_workers/cpus_per_worker or use "auto"'
            )
        if use_gpu and num_workers * (gpus_per_worker or 1) > info.gpus:
            raise ClusterUnavailableError(
                f"use_gpu: {num_workers} workers need {num_workers * (gpus_per_worker or 1):g} GPUs; "
                f"the cluster has {info.gpus:g}"
            )
        return num_workers
    if use_gpu:
        n = int(info.gpus // (gpus_per_worker or 1))
        if n < 1:
            raise ClusterUnavailableError(
                'scaling.num_workers = "auto" with use_gpu: the cluster has no GPU'
            )
        return n
    n = int(info.cpus // cpus_per_worker)
    if n < 1:
        raise InvalidJobError(
            f"cpus_per_worker {cpus_per_worker} exceeds the cluster's {info.cpus:g} CPUs"
        )
    return n


def make_sink() -> Any:
    """A zero-CPU actor: rank 0 puts events, the driver drains them, can request a stop and
    opens the epoch gate. It is pinned (softly) to the driver's node: a worker node that dies
    does not take the driver's event channel with it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)

    @ray.remote(num_cpus=0, max_restarts=-1, scheduling_strategy=here)  # type: ignore[call-overload]  # Ray's stub omits node affinity
    class ProgressSink:
        def __init__(self) -> None:
            self.events: list[dict[str, Any]] = []
            self.stop = False
            self.allowed = -1  # the epoch gate: the newest epoch the driver has handled

        def put(self, event: dict[str, Any]) -> None:
            self.events.append(event)

        def drain(self) -> list[dict[str, Any]]:
            out, self.events = self.events, []
            return out

        def request_stop(self) -> None:
            self.stop = True

        def should_stop(self) -> bool:
            return self.stop

        def allow(self, epoch: int) -> None:
            self.allowed = max(self.allowed, epoch)

        def may_continue(self, epoch: int) -> bool:
            return self.stop or self.allowed >= epoch

    return ProgressSink.remote()  # type: ignore[attr-defined]
