"""Serving benchmark: a 20-feature MLP behind keel.serving, loaded with `wrk` on loopback.

    ./pants run tools/bench:serving -- [--quick] [--seconds S] [--no-redis]

Figures (same run, same machine, load generator included in the CPU budget):
* p99 / achieved rate at a paced ~1,000 req/s on ``/v1/predict`` (20 features read from the
  embedded SQLite online store; and from Redis unless --no-redis), micro-batching on and off;
* saturation throughput (closed loop, 32 connections) with micro-batching on vs off;
* the same-run anchor: a bare ASGI app returning a constant answer on the same uvicorn
  stack (the framework floor) — ``keel_vs_bare_asgi_throughput``;
* the load generator's CPU share (wrk CPU seconds / all CPU seconds spent in the run).

Last line: one JSON object {"bench": "serving", "figures", "ratios", "goals_met"}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

N_FEATURES = 20
N_ENTITIES = 10_000

LUA = r"""
local n_entities = %(n)d
local delay_ms = %(delay)d
local path = "%(path)s"
math.randomseed(42)
request = function()
  local e = math.random(0, n_entities - 1)
  local body = '{"instances":[{"entity":"e' .. e .. '"}]}'
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end
if delay_ms > 0 then
  delay = function() return delay_ms end
end
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "errors": %%d, "non2xx": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d}\n',
    summary.requests, summary.duration, errors, summary.errors.status,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def build_world(tmp: Path, redis_url: str | None) -> dict[str, Any]:
    import numpy as np
    import torch

    from keel.artifacts import (
        Architecture,
        ArtifactSpec,
        CodeVersion,
        FeatureViewRef,
        FieldSpec,
        SigningKey,
        build_artifact,
        generate_keypair,
    )
    from keel.features import open_online_store
    from keel.serving import build_mlp

    priv, pub = generate_keypair()
    (tmp / "pub.pem").write_bytes(pub)
    args: dict[str, Any] = {
        "n_in": N_FEATURES,
        "hidden": [64, 32],
        "n_out": 1,
        "out_activation": "sigmoid",
    }
    spec = ArtifactSpec(
        name="credit",
        architecture=Architecture(builder="mlp", args=args),
        input_schema=[FieldSpec(name=f"x{i}", dtype="float32") for i in range(N_FEATURES)],
        output_schema=[FieldSpec(name="p", dtype="float64", min=0.0, max=1.0)],
        feature_views=[FeatureViewRef(name="stats", version="v1")],
        training_data_fingerprint="sha256:" + "ab" * 32,
        code=CodeVersion(commit="0" * 40, dirty=False),
        dependency_lock_hash="sha256:" + "cd" * 32,
    )
    torch.manual_seed(0)
    model = build_mlp(**args)
    build_artifact(
        tmp / "credit",
        spec,
        model.state_dict(),
        signing_key=SigningKey.from_pem(priv),
        archive=tmp / "credit.tar",
    )
    rng = np.random.default_rng(0)
    vals = rng.normal(size=(N_ENTITIES, N_FEATURES))
    t = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        (f"e{i}", {f"x{j}": float(vals[i, j]) for j in range(N_FEATURES)}, t)
        for i in range(N_ENTITIES)
    ]
    urls = {"sqlite": f"sqlite:///{tmp}/online.db"}
    if redis_url:
        urls["redis"] = redis_url
    for url in urls.values():
        s = (
            open_online_store(url, prefix="keelbench:features:")
            if url.startswith("redis")
            else open_online_store(url)
        )
        s.write("stats:v1", rows)
        s.close()
    return {"artifact": tmp / "credit.tar", "pub": tmp / "pub.pem", "online": urls}


class ServerProc:
    def __init__(self, args: list[str]) -> None:
        self.port = free_port()
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.serving.server", "--port", str(self.port), *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_wrk(
    port: int, tmp: Path, *, seconds: float, conns: int, delay_ms: int, path: str = "/v1/predict"
) -> dict[str, Any]:
    script = tmp / f"wrk-{conns}-{delay_ms}.lua"
    script.write_text(LUA % {"n": N_ENTITIES, "delay": delay_ms, "path": path})
    wrk = shutil.which("wrk")
    assert wrk
    # warm-up (not measured)
    subprocess.run(
        [wrk, "-t1", f"-c{conns}", "-d1s", "-s", str(script), f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        check=True,
    )
    before = os.times()
    p = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{conns}",
            f"-d{int(seconds)}s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    after = os.times()
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("WRKJSON "))
    r = json.loads(line[len("WRKJSON ") :])
    r["rate"] = r["requests"] / (r["duration_us"] / 1e6)
    r["wrk_cpu_s"] = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return r


def measure(
    world: dict[str, Any],
    tmp: Path,
    label: str,
    server_args: list[str],
    *,
    seconds: float,
    conns: int,
    delay_ms: int,
) -> dict[str, Any]:
    srv = ServerProc(server_args)
    try:
        c0 = cpu_seconds(srv.proc.pid)
        t0 = time.monotonic()
        r = run_wrk(srv.port, tmp, seconds=seconds, conns=conns, delay_ms=delay_ms)
        wall = time.monotonic() - t0
        srv_cpu = cpu_seconds(srv.proc.pid) - c0
    finally:
        srv.stop()
    r["server_cpu_s"] = srv_cpu
    r["loadgen_cpu_share"] = r["wrk_cpu_s"] / max(1e-9, r["wrk_cpu_s"] + srv_cpu)
    r["loadgen_cores"] = r["wrk_cpu_s"] / wall
    print(
        f"{label:34s} rate {r['rate']:8.0f}/s  p50 {r['p50_us'] / 1e3:6.2f} ms  p99 {r['p99_us'] / 1e3:6.2f} ms  "
        f"errors {r['errors']}  wrk CPU share {r['loadgen_cpu_share']:.2f}",
        flush=True,
    )
    return r


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="short runs (smoke)")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument(
        "--redis-url", default=os.environ.get("KEEL_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    a = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not on PATH: apt-get install -y wrk")
    seconds = a.seconds or (3.0 if a.quick else 10.0)
    tmp = Path(tempfile.mkdtemp(prefix="keel-bench-serving-"))
    world: dict[str, Any] = {}
    try:
        world = build_world(tmp, None if a.no_redis else a.redis_url)
        base = ["--artifact", str(world["artifact"]), "--pub", str(world["pub"])]
        sqlite = [*base, "--online", world["online"]["sqlite"]]
        on, off = ["--max-batch", "64"], ["--max-batch", "1"]
        # ~1,000 req/s paced: 10 connections, each waiting 9 ms after its previous answer
        paced: dict[str, Any] = {"conns": 10, "delay_ms": 9, "seconds": seconds}
        res: dict[str, dict[str, Any]] = {}
        res["paced_batching_on"] = measure(
            world, tmp, "paced 1k/s, batching on (sqlite)", sqlite + on, **paced
        )
        res["paced_batching_off"] = measure(
            world, tmp, "paced 1k/s, batching off (sqlite)", sqlite + off, **paced
        )
        if "redis" in world["online"]:
            res["paced_redis"] = measure(
                world,
                tmp,
                "paced 1k/s, batching on (redis)",
                [*base, "--online", world["online"]["redis"], *on],
                **paced,
            )
        sat: dict[str, Any] = {"conns": 32, "delay_ms": 0, "seconds": seconds}
        res["sat_batching_on"] = measure(world, tmp, "saturation, batching on", sqlite + on, **sat)
        res["sat_batching_off"] = measure(
            world, tmp, "saturation, batching off", sqlite + off, **sat
        )
        # overload: 256 connections against a 64-row admission queue -> 503 + Retry-After
        res["overload_small_queue"] = measure(
            world,
            tmp,
            "overload, 256 conns, queue 64",
            [*sqlite, *on, "--max-queue", "64"],
            conns=256,
            delay_ms=0,
            seconds=seconds,
        )
        res["sat_bare_asgi"] = measure(
            world, tmp, "saturation, bare ASGI (anchor)", ["--bare"], **sat
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if "redis" in world.get("online", {}):
            import redis

            r = redis.Redis.from_url(world["online"]["redis"])
            for k in r.scan_iter(match="keelbench:features:*", count=1000):
                r.delete(k)
    p = res["paced_batching_on"]
    figures: dict[str, Any] = {
        "paced_rate_rps": round(p["rate"]),
        "paced_p50_ms": p["p50_us"] / 1e3,
        "paced_p99_ms": p["p99_us"] / 1e3,
        "paced_p99_batching_off_ms": res["paced_batching_off"]["p99_us"] / 1e3,
        "paced_loadgen_cpu_share": round(p["loadgen_cpu_share"], 3),
        "paced_loadgen_cores": round(p["loadgen_cores"], 3),
        "paced_errors": p["errors"],
        "sat_rps_batching_on": round(res["sat_batching_on"]["rate"]),
        "sat_rps_batching_off": round(res["sat_batching_off"]["rate"]),
        "sat_p99_ms_batching_on": res["sat_batching_on"]["p99_us"] / 1e3,
        "sat_p99_ms_batching_off": res["sat_batching_off"]["p99_us"] / 1e3,
        "sat_rps_bare_asgi": round(res["sat_bare_asgi"]["rate"]),
        "overload_shed_share": round(
            res["overload_small_queue"]["non2xx"] / max(1, res["overload_small_queue"]["requests"]),
            3,
        ),
        "overload_p99_ms": res["overload_small_queue"]["p99_us"] / 1e3,
        "n_features": N_FEATURES,
        "seconds": seconds,
    }
    if "paced_redis" in res:
        figures["paced_p99_redis_ms"] = res["paced_redis"]["p99_us"] / 1e3
    ratios = {
        "batching_on_vs_off_saturation_throughput": round(
            res["sat_batching_on"]["rate"] / res["sat_batching_off"]["rate"], 3
        ),
        "keel_vs_bare_asgi_throughput": round(
            res["sat_batching_on"]["rate"] / res["sat_bare_asgi"]["rate"], 3
        ),
    }
    if "paced_redis" in res:
        ratios["redis_vs_sqlite_paced_p99"] = round(res["paced_redis"]["p99_us"] / p["p99_us"], 3)
    goals = {
        "p99_le_3ms_at_1k_rps": figures["paced_p99_ms"] <= 3.0 and p["rate"] >= 900,
        "no_errors": all(r["errors"] == 0 for k, r in res.items() if k != "overload_small_queue"),
        "batching_gain": ratios["batching_on_vs_off_saturation_throughput"] > 1.0,
    }
    print(
        json.dumps({"bench": "serving", "figures": figures, "ratios": ratios, "goals_met": goals})
    )


if __name__ == "__main__":
    main()
