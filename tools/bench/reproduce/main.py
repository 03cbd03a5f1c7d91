"""Benchmark `keel reproduce` against the original training run it reproduces, in one run.

    ./pants run tools/bench:reproduce -- [--quick] [--rows N] [--epochs E] [--workers W]
                                         [--no-demo] [--demo-per-day N]

Two models, each reproduced after it was trained, in a throw-away git repository with a
lockfile (the code version and lock both record):

* a keel.trainer model — an MLP 20 -> 64 -> 64 -> 1 (MSE, AdamW, batch 256) on N rows
  (default 200k) of synthetic Parquet data. Anchor: the original run, keel.trainer's
  ``run_job`` (Ray Train, checkpoints, MLflow tracking, export + signing), then
  registration in the embedded registry. Keel: ``reproduce(model@champion)`` — the
  provenance walk (registry, MLflow run, data fingerprint, code version, lock hash,
  parameters), the CPU re-run in a scratch home, packaging + signing, the digest
  comparison; then the evidence pack of the version (``build_pack`` + ``write_pack``).
* the demo's model, trained by the pipelines — ``keel demo --per-day N`` in process (3000 a
  day, as its tests; skipped by ``--no-demo`` and ``--quick``), in a scratch KEEL_HOME.
  Anchor: its champion's pipeline run (the retrain after drift: build training set, train
  on Ray, evaluate, gates, approval, package + sign, register, shadow, canary), as the demo
  times it. Keel: ``reproduce(fraud-demo@champion)`` from the options the demo recorded —
  the training set re-materialised from the offline log as of the run's record time, the
  code and lock links, the parameters, the pipelines' own train, evaluate and package_sign
  re-run in a scratch home, the digest comparison.

Ray is started once before all (its start-up is reported separately). Goal: reproduction
costs at most 1.2x the original run. Every verdict must be ``identical``. The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from testutil.git_repo import lockfile_repo

N_FEATURES = 20
MODEL = "bench-reproduce"


def make_data(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, N_FEATURES)).astype(np.float32)
    y = (x @ rng.normal(size=N_FEATURES).astype(np.float32) + np.tanh(x[:, 0] * x[:, 1])).astype(
        np.float32
    )
    cols: dict[str, Any] = {f"f{i}": x[:, i] for i in range(N_FEATURES)}
    cols["y"] = y
    pq.write_table(pa.table(cols), path, row_group_size=65536)


def job_values(data: Path, epochs: int, workers: int) -> dict[str, Any]:
    return {
        "name": MODEL,
        "seed": 11,
        "model": {"builder": "mlp", "args": {"n_in": N_FEATURES, "hidden": [64, 64], "n_out": 1}},
        "data": {
            "path": str(data),
            "features": [f"f{i}" for i in range(N_FEATURES)],
            "target": "y",
            "validation_fraction": 0.1,
        },
        "train": {
            "loss": "mse",
            "epochs": epochs,
            "batch_size": 256,
            "checkpoint_every_steps": 500,
            "optimizer": {"name": "adamw", "lr": 1e-3},
        },
        "scaling": {"num_workers": workers, "cpus_per_worker": 1},
        "tracking": {"enabled": True},
    }


def demo_case(root: Path, repo: Path, commit: str, lock: Path, per_day: int) -> dict[str, Any]:
    """`keel demo` in process, then ``reproduce(fraud-demo@champion)`` the way `keel
    reproduce` finds it (the options the demo recorded under KEEL_HOME/demo/loop, that
    home's registry, offline log, pipelines database and keys); figures and the verdict."""
    from keel_cli.demo import run_demo
    from keel_cli.demo_loop import MODEL as DEMO_MODEL
    from rich.console import Console

    from keel.artifacts import SigningKey, TrustPolicy
    from keel.pipelines.reproduce import PipelinesSource, read_options, reproduce
    from keel.registry_client import open_registry

    # the code version and lock the demo records: the throw-away repository's
    os.environ["KEEL_CODE_VERSION"], os.environ["KEEL_LOCK_FILE"] = commit, str(lock)
    home = root / "demo-home"
    t0 = time.perf_counter()
    run_demo(home, 7, Console(quiet=True), per_day=per_day)
    demo_wall = time.perf_counter() - t0
    summary = json.loads((home / "demo" / "loop-summary.json").read_text())
    loop = home / "demo" / "loop"
    with open_registry(loop) as registry:
        champion = registry.get_by_alias(DEMO_MODEL, "champion").digest
    # the champion's run (the retrain after drift, unless it was not promoted), as timed
    run = next(r for r in summary["runs"] if r["artifact_digest"] == champion)
    phase = "first model: pipeline" if run["key"] == "bootstrap" else "retrain: pipeline"
    original = next(v for k, v in summary["timings_s"].items() if k.startswith(phase))
    rerun_steps = ("source_fingerprints", "build_training_set", "train", "evaluate")
    steps = sum(run["step_seconds"].get(k, 0.0) for k in (*rerun_steps, "package_sign"))
    print(
        f"demo ({per_day:,} a day): {demo_wall:.1f} s; its champion's pipeline run ({run['key']}) "
        f"{original:.1f} s (the steps reproduce re-runs: {steps:.1f} s)",
        flush=True,
    )
    options = read_options(loop)
    assert options is not None and options["model"] == DEMO_MODEL
    key = SigningKey.from_pem((loop / "keys" / "pipelines.pem").read_bytes())
    trust = TrustPolicy.from_files([loop / "keys" / "pipelines.pub"])
    with open_registry(loop) as registry:
        t0 = time.perf_counter()
        verdict = reproduce(
            registry,
            DEMO_MODEL,
            "champion",
            work_dir=root / "demo-reproduce",
            signing_key=key,
            trust=trust,
            repo=repo,
            pipelines=PipelinesSource(loop, options),
        )
        repro = time.perf_counter() - t0
    same = verdict.ok and verdict.reproduced_digest == champion
    print(
        f"reproduce {DEMO_MODEL}@champion: {repro:.1f} s, verdict {verdict.status}",
        flush=True,
    )
    if not verdict.ok:
        print(f"  {verdict.link}: {verdict.message}", flush=True)
    return {
        "demo_per_day": per_day,
        "demo_champion_run": run["key"],
        "demo_wall_seconds": round(demo_wall, 2),
        "demo_champion_run_seconds": round(original, 2),
        "demo_champion_run_rebuilt_steps_seconds": round(steps, 2),
        "demo_reproduce_seconds": round(repro, 2),
        "demo_verdict": verdict.status,
        "demo_identical": same,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20k rows, 1 epoch")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-demo", action="store_true", help="skip the demo model's figure")
    ap.add_argument("--demo-per-day", type=int, default=3000, help="`keel demo --per-day`")
    args = ap.parse_args(argv)
    rows, epochs = (20_000, 1) if args.quick else (args.rows, args.epochs)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import keel.trainer
    from keel.artifacts import SigningKey, TrustPolicy, generate_keypair
    from keel.pipelines.evidence import build_pack, write_pack
    from keel.pipelines.local import start_ray
    from keel.pipelines.reproduce import reproduce
    from keel.registry_client import Decision, open_registry
    from keel.trainer import parse_job

    # every run_job (the original's and reproduce's re-run, which imports it when it runs)
    # is timed, so the figures split training from the walk around it
    train_seconds: list[float] = []
    real_run_job = keel.trainer.run_job

    def run_job(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return real_run_job(*a, **kw)
        finally:
            train_seconds.append(time.perf_counter() - t)

    keel.trainer.run_job = run_job  # type: ignore[assignment]

    with tempfile.TemporaryDirectory(prefix="keel-bench-reproduce-") as tmp:
        root = Path(tmp)
        repo = root / "repo"
        commit, lock = lockfile_repo(repo, "bench-reproduce")
        data = root / "train.parquet"
        make_data(data, rows)
        print(f"data: {rows:,} rows x {N_FEATURES} features, {epochs} epoch(s)", flush=True)
        priv, pub = generate_keypair()
        key, trust = SigningKey.from_pem(priv), TrustPolicy((pub,))
        t0 = time.perf_counter()
        start_ray(  # ensure_ray, retried: a loaded machine can miss Ray's start-up wait
            num_cpus=max(2, args.workers),
            object_store_bytes=128 << 20,
            tmp_dir=f"/tmp/kb-{os.getpid()}",
        )
        ray_start = time.perf_counter() - t0
        print(f"ray.init: {ray_start:.1f} s", flush=True)

        home = root / "home"
        t0 = time.perf_counter()
        result = run_job(
            parse_job(job_values(data, epochs, args.workers)),
            home=home,
            signing_key=key,
            code=(commit, False),
            lock_file=lock,
        )
        assert result.status == "completed" and result.artifact_path is not None
        registry = open_registry(home)
        v = registry.register(result.artifact_path, trust=trust)
        registry.promote(MODEL, "champion", v.version, Decision("bench", "first", v.digest))
        original = time.perf_counter() - t0
        print(
            f"original run (train + export + register): {original:.1f} s "
            f"(run_job {train_seconds[0]:.1f} s)",
            flush=True,
        )

        t0 = time.perf_counter()
        verdict = reproduce(
            registry,
            MODEL,
            "champion",
            work_dir=root / "reproduce",
            signing_key=key,
            trust=trust,
            repo=repo,
            lock_file=lock,
        )
        repro = time.perf_counter() - t0
        print(
            f"reproduce: {repro:.1f} s (re-run {train_seconds[-1]:.1f} s), verdict {verdict.status}",
            flush=True,
        )
        if not verdict.ok:
            print(f"  {verdict.link}: {verdict.message}", flush=True)

        t0 = time.perf_counter()
        pack = build_pack(registry, MODEL, "champion", generated_at=datetime.now(UTC), trust=trust)
        write_pack(pack, root / "evidence")
        pack_s = time.perf_counter() - t0
        print(f"evidence pack: {pack_s:.2f} s", flush=True)
        registry.close()
        demo = (
            {}
            if args.quick or args.no_demo
            else demo_case(root, repo, commit, lock, args.demo_per_day)
        )

    ratio = repro / original
    figures = {
        "rows": rows,
        "epochs": epochs,
        "workers": args.workers,
        "ray_init_seconds": round(ray_start, 2),
        "original_run_seconds": round(original, 2),
        "original_train_seconds": round(train_seconds[0], 2),
        "reproduce_seconds": round(repro, 2),
        "reproduce_retrain_seconds": round(train_seconds[1], 2) if len(train_seconds) > 1 else None,
        "pack_seconds": round(pack_s, 3),
        "verdict": verdict.status,
    }
    ratios = {"reproduce_vs_original_run_time": round(ratio, 3)}
    if len(train_seconds) > 1:
        ratios["reproduce_retrain_vs_original_train_time"] = round(
            train_seconds[1] / train_seconds[0], 3
        )
    goals = {
        "identical": verdict.ok,
        "reproduce_at_most_1_2x_original_run": ratio <= 1.2,
    }
    if demo:
        figures.update(demo)
        demo_ratio = demo["demo_reproduce_seconds"] / demo["demo_champion_run_seconds"]
        ratios["demo_reproduce_vs_champion_pipeline_run_time"] = round(demo_ratio, 3)
        ratios["demo_reproduce_vs_rebuilt_steps_time"] = round(
            demo["demo_reproduce_seconds"] / demo["demo_champion_run_rebuilt_steps_seconds"], 3
        )
        goals["demo_identical"] = demo["demo_identical"]
        goals["demo_reproduce_at_most_1_2x_pipeline_run"] = demo_ratio <= 1.2
        print(f"demo model: reproduce / its pipeline run = {demo_ratio:.2f}x", flush=True)
    print(
        json.dumps({"bench": "reproduce", "figures": figures, "ratios": ratios, "goals_met": goals})
    )
    return 0 if verdict.ok and (not demo or demo["demo_identical"]) else 1


if __name__ == "__main__":
    sys.exit(main())
