"""Benchmark keel.trainer against a plain hand-written torch loop, in the same run.

    ./pants run tools/bench:trainer -- [--quick] [--rows N] [--epochs E]

An MLP 50 -> 256 -> 256 -> 1 (MSE, AdamW, global batch 1024) on N rows (default 1M) of
synthetic Parquet data, 90% of them trained on:
* plain: the whole table in one process, a seeded permutation per epoch, the usual
  zero_grad / forward / backward / step loop — 1 intra-op thread;
* keel_1: ``run_job`` with 1 worker x 1 CPU (Ray Train, the sharded reader, committed
  checkpoints every 500 steps, MLflow tracking off);
* keel_2: the same job with 2 workers x 1 CPU (DDP over gloo).
The overhead ratio compares the training loops (keel: the worker's first step to its last
committed checkpoint, from its own events; plain: first to last step). Ray's start-up
(``ray.init``) and the worker group's start-up (process spawn, imports, shard read) are
reported separately. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

N_FEATURES = 50
BATCH = 1024
LR = 1e-3


def make_data(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=N_FEATURES).astype(np.float32)
    cols: dict[str, Any] = {}
    x = np.empty((rows, N_FEATURES), dtype=np.float32)
    for i in range(N_FEATURES):
        x[:, i] = rng.normal(size=rows).astype(np.float32)
        cols[f"f{i}"] = x[:, i]
    cols["y"] = (x @ w + np.tanh(x[:, 0] * x[:, 1])).astype(np.float32)
    pq.write_table(pa.table(cols), path, row_group_size=65536)


def plain_loop(path: Path, epochs: int, threads: int = 1) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    t = pq.read_table(path)
    x = torch.from_numpy(
        np.stack([t.column(f"f{i}").to_numpy() for i in range(N_FEATURES)], axis=1)
    )
    y = torch.from_numpy(t.column("y").to_numpy()).reshape(-1, 1)
    n = int(len(x) * 0.9)
    x, y = x[:n], y[:n]
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(N_FEATURES, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 1),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    steps = 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(epoch)
        order = torch.randperm(n, generator=g)
        for i in range(0, n, BATCH):
            idx = order[i : i + BATCH]
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            steps += 1
    dt = time.perf_counter() - t0
    return {
        "seconds": dt,
        "steps": steps,
        "samples_per_s": n * epochs / dt,
        "final_loss": float(loss),
    }


def keel_run(path: Path, home: Path, epochs: int, workers: int, name: str) -> dict[str, float]:
    from keel.trainer import parse_job, run_job

    job = parse_job(
        {
            "name": name,
            "seed": 0,
            "model": {
                "builder": "mlp",
                "args": {"n_in": N_FEATURES, "hidden": [256, 256], "n_out": 1},
            },
            "data": {
                "path": str(path),
                "features": [f"f{i}" for i in range(N_FEATURES)],
                "target": "y",
                "validation_fraction": 0.1,
            },
            "train": {
                "loss": "mse",
                "epochs": epochs,
                "batch_size": BATCH,
                "checkpoint_every_steps": 500,
                "optimizer": {"name": "adamw", "lr": LR},
            },
            "scaling": {"num_workers": workers, "cpus_per_worker": 1},
            "tracking": {"enabled": False},
        }
    )
    t0 = time.perf_counter()
    r = run_job(job, home=home, fresh=True, export=False)
    wall = time.perf_counter() - t0
    start = next(e for e in r.events if e["type"] == "start")
    done = next(e for e in r.events if e["type"] == "done")
    loop = done["t"] - start["t"]
    from keel.trainer._loop import plan

    common, _, steps = plan(
        job.with_workers(workers), pq.ParquetFile(path).metadata.num_rows, workers
    )
    samples = common * workers * epochs
    return {
        "loop_seconds": loop,
        "wall_seconds": wall,
        "worker_group_start_seconds": wall - loop,
        "steps": r.step,
        "samples_per_s": samples / loop,
        "final_val_loss": r.history[-1]["val_loss"] if r.history else float("nan"),
    }


def kill_cost(
    path: Path, home: Path, epochs: int, kill_step: int, interval: int
) -> dict[str, float]:
    """SIGKILL the (single) worker right after ``kill_step``: steps redone and wall-clock from
    the kill to the first progress past the restored checkpoint (Ray noticing the death,
    a fresh worker group, the shard read, the restore)."""
    from keel.trainer import FaultPlan, parse_job, run_job

    job = parse_job(
        {
            "name": "bench-kill",
            "seed": 0,
            "model": {
                "builder": "mlp",
                "args": {"n_in": N_FEATURES, "hidden": [256, 256], "n_out": 1},
            },
            "data": {
                "path": str(path),
                "features": [f"f{i}" for i in range(N_FEATURES)],
                "target": "y",
                "validation_fraction": 0.1,
            },
            "train": {
                "loss": "mse",
                "epochs": epochs,
                "batch_size": BATCH,
                "checkpoint_every_steps": interval,
                "optimizer": {"name": "adamw", "lr": LR},
            },
            "scaling": {"num_workers": 1, "cpus_per_worker": 1},
            "failure": {"max_failures": 1},
            "tracking": {"enabled": False},
        }
    )
    faults = FaultPlan(once_dir=home / "faults", kill_at_step=kill_step)
    r = run_job(job, home=home, fresh=True, export=False, faults=faults)
    killed_at = faults.fired_at("step")
    starts = [e for e in r.events if e["type"] == "start"]
    resumed = starts[-1]["resumed_from"] or 0
    after = [
        e
        for e in r.events
        if e["t"] > starts[-1]["t"] and e["type"] in ("progress", "checkpoint", "epoch", "done")
    ]
    back = after[0]["t"] if after else float("nan")
    return {
        "redone_steps": kill_step - resumed,
        "kill_to_progress_seconds": back - (killed_at or float("nan")),
        "restarts": r.restarts,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k rows, 1 epoch")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--no-scaling", action="store_true", help="skip the 2-worker run")
    ap.add_argument("--no-kill", action="store_true", help="skip the worker-kill run")
    args = ap.parse_args(argv)
    rows, epochs = (100_000, 1) if args.quick else (args.rows, args.epochs)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="keel-bench-trainer-") as tmp:
        root = Path(tmp)
        data = root / "train.parquet"
        make_data(data, rows)
        print(
            f"data: {rows:,} rows x {N_FEATURES} features, {data.stat().st_size / 1e6:.0f} MB",
            flush=True,
        )
        from keel.trainer import ensure_ray

        t0 = time.perf_counter()
        ensure_ray(
            num_cpus=os.cpu_count() or 2,
            object_store_bytes=128 << 20,
            tmp_dir=f"/tmp/kb-{os.getpid()}",
        )
        ray_start = time.perf_counter() - t0
        print(f"ray.init: {ray_start:.1f} s", flush=True)
        plain = plain_loop(data, epochs)
        print(
            f"plain torch loop: {plain['seconds']:.2f} s, {plain['samples_per_s']:,.0f} samples/s",
            flush=True,
        )
        k1 = keel_run(data, root / "home", epochs, 1, "bench-1")
        print(
            f"keel 1 worker: loop {k1['loop_seconds']:.2f} s ({k1['samples_per_s']:,.0f} samples/s), "
            f"worker group start {k1['worker_group_start_seconds']:.1f} s",
            flush=True,
        )
        plain2 = plain_loop(data, epochs)  # again, after keel: load drift on a shared machine
        plain_s = min(plain["seconds"], plain2["seconds"])
        print(f"plain torch loop (again): {plain2['seconds']:.2f} s", flush=True)
        k2 = None
        if not args.no_scaling:
            k2 = keel_run(data, root / "home", epochs, 2, "bench-2")
            print(
                f"keel 2 workers: loop {k2['loop_seconds']:.2f} s ({k2['samples_per_s']:,.0f} samples/s)",
                flush=True,
            )
        kill = None
        if not args.no_kill:
            kill_step, interval = (60, 25) if args.quick else (1300, 500)
            kill = kill_cost(data, root / "home", epochs, kill_step, interval)
            print(
                f"worker SIGKILL at step {kill_step}: {kill['redone_steps']} steps redone, "
                f"{kill['kill_to_progress_seconds']:.1f} s from kill to progress",
                flush=True,
            )
    overhead = k1["loop_seconds"] / plain_s
    figures: dict[str, Any] = {
        "rows": rows,
        "epochs": epochs,
        "batch_size": BATCH,
        "ray_init_seconds": round(ray_start, 2),
        "plain_seconds": round(plain_s, 3),
        "plain_samples_per_s": round(plain["samples_per_s"] * plain["seconds"] / plain_s),
        "keel1_loop_seconds": round(k1["loop_seconds"], 3),
        "keel1_samples_per_s": round(k1["samples_per_s"]),
        "keel1_worker_group_start_seconds": round(k1["worker_group_start_seconds"], 2),
        "keel1_wall_seconds": round(k1["wall_seconds"], 2),
    }
    ratios: dict[str, Any] = {"keel1_vs_plain_torch_loop_time": round(overhead, 3)}
    if k2 is not None:
        figures["keel2_samples_per_s"] = round(k2["samples_per_s"])
        figures["keel2_loop_seconds"] = round(k2["loop_seconds"], 3)
        ratios["keel2_vs_keel1_throughput"] = round(k2["samples_per_s"] / k1["samples_per_s"], 3)
    goals = (
        {"keel1_overhead_le_1_10": overhead <= 1.10}
        if not args.quick
        else {"keel1_overhead_le_1_10": None}
    )
    print(
        json.dumps({"bench": "trainer", "figures": figures, "ratios": ratios, "goals_met": goals})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
