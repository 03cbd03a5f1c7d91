"""Trainer test fixtures: one bounded local Ray cluster per test process (or the two-node
cluster of testutil.ray_nodes, for the node-loss test), and the `gpu` marker's skip hook (a test marked `gpu` is skipped where no CUDA device is visible)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testutil.profiles import register_profiles
from testutil.ray_nodes import two_node_ray  # noqa: F401  (the two-node cluster fixture)

register_profiles()


def _cuda_visible() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available() and torch.cuda.device_count() > 0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [i for i in items if i.get_closest_marker("gpu") is not None]
    if not gpu_items or _cuda_visible():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none visible): gpu-marked")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A local Ray with 2 CPUs and a small object store, started once per test process.
    Its temp dir is short (Ray's socket paths must stay under 108 bytes)."""
    import ray

    from keel.trainer import ensure_ray

    tmp = f"/tmp/kr-{os.getpid()}"
    info = ensure_ray(num_cpus=2, object_store_bytes=80 << 20, tmp_dir=tmp)
    yield info
    ray.shutdown()


@pytest.fixture(scope="session")
def signing_keys() -> tuple[bytes, bytes]:
    from keel.artifacts import generate_keypair

    return generate_keypair()


@pytest.fixture(scope="session")
def regression_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer_testdata import write_regression

    return write_regression(tmp_path_factory.mktemp("data") / "train.parquet")
