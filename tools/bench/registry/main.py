"""Benchmark keel.registry_client against plain MLflow on the same store, in the same run.

    ./pants run tools/bench:registry -- [--quick] [--n N] [--no-server]

Per backend (embedded SQLite; a private `mlflow server` on a fresh PostgreSQL database when
the server PEX is built, see ADR 0004), interleaved artifact by artifact so load from other
jobs on a shared machine hits all sides alike:
* keel:   `Registry.register(artifact)` — run + archive + manifest upload, lock, claim,
          create_model_version with lineage tags (idempotence and lineage included);
* plain_upload: what a plain MLflow user does to register a version with files:
          create_run, log_artifact x2, create_model_version;
* plain_cmv: MLflow's bare `create_model_version` (no files, no run).
Ratios are Keel / plain (wall clock per registration; goal: keel_vs_plain_upload <= 1.5x).
Alias lookup: `get_by_alias` p50/p99. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from keel.registry_client import Decision, RegistrableArtifact, Registry, open_registry


def _artifact(root: Path, name: str, i: int) -> RegistrableArtifact:
    d = root / f"{name}-{i}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.keel").write_bytes(bytes(i % 256 for _ in range(4096)))
    manifest = json.dumps({"name": name, "i": i}).encode()
    (d / "manifest.json").write_bytes(manifest)
    return RegistrableArtifact(
        name=name,
        digest=hashlib.sha256(manifest).hexdigest(),
        archive=d / "model.keel",
        manifest=d / "manifest.json",
        data_fingerprint=f"fp{i}",
        code_version="git:bench",
        lock_hash="lock",
        feature_views={"txn": "1"},
    )


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def bench_backend(reg: Registry, n: int, lookups: int, tmp: Path, local: bool) -> dict[str, float]:
    client = reg.mlflow_client
    arts = [_artifact(tmp / "a", "bench-keel", i) for i in range(n)]
    plain = [_artifact(tmp / "p", "bench-plain", i) for i in range(n)]
    client.create_registered_model("bench-plain")
    client.create_registered_model("bench-cmv")
    # A local store needs an explicit location (MLflow's default is ./mlruns in the cwd).
    exp = client.create_experiment(
        "bench-plain", artifact_location=(tmp / "plain").as_uri() if local else None
    )
    reg.register(_artifact(tmp / "w", "bench-warm", 0))  # warm: experiment, model, sessions
    t_keel: list[float] = []
    t_upload: list[float] = []
    t_cmv: list[float] = []
    for i in range(n):
        sides = ["keel", "upload", "cmv"]
        for side in sides[i % 3 :] + sides[: i % 3]:
            t0 = time.perf_counter()
            if side == "keel":
                reg.register(arts[i])
                t_keel.append(time.perf_counter() - t0)
            elif side == "upload":
                run = client.create_run(exp)
                client.log_artifact(run.info.run_id, str(plain[i].archive), "keel")
                client.log_artifact(run.info.run_id, str(plain[i].manifest), "keel")
                client.set_terminated(run.info.run_id)
                client.create_model_version(
                    "bench-plain",
                    run.info.artifact_uri + "/keel",
                    run_id=run.info.run_id,
                    tags={"d": plain[i].digest},
                )
                t_upload.append(time.perf_counter() - t0)
            else:
                client.create_model_version("bench-cmv", "s3://bench/none", tags={"i": str(i)})
                t_cmv.append(time.perf_counter() - t0)
    t_retry = []
    for i in range(min(n, 50)):
        t0 = time.perf_counter()
        reg.register(arts[i])
        t_retry.append(time.perf_counter() - t0)
    reg.promote("bench-keel", "champion", 1, Decision("bench", "bench", "sha256:bench"))
    t_alias = []
    for _ in range(lookups):
        t0 = time.perf_counter()
        reg.get_by_alias("bench-keel", "champion")
        t_alias.append(time.perf_counter() - t0)
    return {
        "keel_register_per_s": n / sum(t_keel),
        "keel_register_p50_ms": 1000 * statistics.median(t_keel),
        "keel_register_p99_ms": 1000 * _pct(t_keel, 0.99),
        "keel_retry_p50_ms": 1000 * statistics.median(t_retry),
        "plain_upload_per_s": n / sum(t_upload),
        "plain_upload_p99_ms": 1000 * _pct(t_upload, 0.99),
        "plain_cmv_per_s": n / sum(t_cmv),
        "plain_cmv_p99_ms": 1000 * _pct(t_cmv, 0.99),
        "alias_lookup_p50_ms": 1000 * statistics.median(t_alias),
        "alias_lookup_p99_ms": 1000 * _pct(t_alias, 0.99),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smoke size (20 registrations)")
    ap.add_argument("--n", type=int, default=None, help="registrations per side (default 200)")
    ap.add_argument("--no-server", action="store_true", help="embedded SQLite only")
    args = ap.parse_args(argv)
    n = args.n or (20 if args.quick else 200)
    lookups = 100 if args.quick else 1000
    figures: dict[str, Any] = {"n": n}
    ratios: dict[str, float] = {}
    goals: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="keel-bench-registry-") as tmp_s:
        tmp = Path(tmp_s)
        backends: list[tuple[str, Any]] = [("sqlite", None)]
        if not args.no_server:
            backends.append(("server", None))
        for kind, _ in backends:
            server = None
            try:
                if kind == "sqlite":
                    reg = open_registry(tmp / "home")
                else:
                    from testutil.mlflow_server import MlflowServer

                    server = MlflowServer(tmp / "server", port_offset=80)
                    try:
                        server.start()
                    except RuntimeError as e:
                        figures["server_error"] = str(e)[:300]
                        print(f"server backend skipped: {str(e)[:300]}", file=sys.stderr)
                        continue
                    reg = open_registry(tracking_uri=server.url, db_url=server.db_url)
                f = bench_backend(reg, n, lookups, tmp / kind, local=kind == "sqlite")
                reg.close()
            finally:
                if server is not None:
                    server.stop()
            print(kind, json.dumps({k: round(v, 3) for k, v in f.items()}), file=sys.stderr)
            figures.update({f"{kind}_{k}": round(v, 3) for k, v in f.items()})
            r_up = f["plain_upload_per_s"] / f["keel_register_per_s"]
            r_cmv = f["plain_cmv_per_s"] / f["keel_register_per_s"]
            ratios[f"{kind}_keel_vs_plain_upload_time"] = round(r_up, 3)
            ratios[f"{kind}_keel_vs_plain_create_model_version_time"] = round(r_cmv, 3)
            goals[f"{kind}_keel_vs_plain_upload_le_1_5x"] = r_up <= 1.5
    print(
        json.dumps({"bench": "registry", "figures": figures, "ratios": ratios, "goals_met": goals})
    )


if __name__ == "__main__":
    main()
