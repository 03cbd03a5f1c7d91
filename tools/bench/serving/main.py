"""Serving benchmark: a 20-feature MLP behind keel.serving, loaded with `wrk` on loopback.

    ./pants run tools/bench:serving -- [--quick] [--seconds S] [--no-redis]

Figures (same run, same machine, load generator included in the CPU budget):
* p99 / achieved rate at a fixed 1,000 req/s (wrk2-like pacing in the wrk script: the k-th
  request is due at t0 + k/rate on whichever of 16 connections is free) on ``/v1/predict``
  (20 features read from the embedded SQLite online store; and from Redis unless
  --no-redis), micro-batching on and off (``--only paced``: just these two);
* saturation throughput (closed loop, 32 connections) with micro-batching on vs off;
* the same-run anchor: a bare ASGI app returning a constant answer on the same uvicorn
  stack (the framework floor) — ``keel_vs_bare_asgi_throughput``;
* the load generator's CPU share (wrk CPU seconds / all CPU seconds spent in the run);
* overload at 2x capacity, on one server process (the door capped at 32 in flight, its limit
  adaptive unless --fixed-limit, its event-loop lag gate at --max-lag-ms): capacity = the
  rate of 200s with 16 connections in a closed loop (below the cap: the server at full
  speed, not a surge); then 2x that rate offered at a fixed pace over 256 connections; the
  p99 of the *admitted* (200) requests, timed per request by wrk (the request id carries the
  send time, the answer echoes it), vs the p99 at capacity timed the same way, and the shed
  (503) share;
* the hot-swap blip (``--only swap``): paced 1,000 req/s while the server reloads,
  verifies and installs the model every 2 s; the p99 of requests sent during a swap vs
  the rest, and that no request fails;
* against ``mlflow models serve`` (MLflow's scoring server, FastAPI + uvicorn, one worker)
  serving the same signed artifact through keel.registry_client's pyfunc wrapper from the
  embedded registry: throughput at saturation and p99 at a paced rate, the same wrk, same
  run (``--no-mlflow`` skips it).

Inside the timer (every scenario): wrk's time from writing a request on a kept-alive
loopback connection to reading its whole answer — HTTP parsing, JSON decoding, validation,
(for ``/v1/predict``) the online-feature read, the forward pass, JSON encoding.

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

PACING = r"""
-- fixed-rate pacing (wrk2-like, open loop while a connection is free): the k-th request of
-- this thread is due at t0 + k / rate; delay() holds a free connection until then
local pace_ffi = require("ffi")
pcall(pace_ffi.cdef, [[ typedef struct { long tv_sec; long tv_nsec; } keel_ts;
           int clock_gettime(int clk, keel_ts *tp); ]])
local pace_ts = pace_ffi.new("keel_ts")
local function pace_now_us()
  pace_ffi.C.clock_gettime(1, pace_ts)
  return tonumber(pace_ts.tv_sec) * 1000000 + math.floor(tonumber(pace_ts.tv_nsec) / 1000)
end
local rate = %(rate)f
local pace_t0, pace_k = nil, 0
if rate > 0 then
  delay = function()
    local now = pace_now_us()
    if pace_t0 == nil then pace_t0 = now end
    local due = pace_t0 + pace_k * 1000000 / rate
    pace_k = pace_k + 1
    if due <= now then return 0 end
    return math.floor((due - now) / 1000)
  end
end
"""

LUA_DONE = r"""
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

LUA = (
    (
        r"""
local n_entities = %(n)d
local delay_ms = %(delay)d
local path = "%(path)s"
math.randomseed(42)
request = function()
  local e = math.random(0, n_entities - 1)
  local body = '{"instances":[{"entity":"e' .. e .. '"}]}'
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end
"""
    )
    + PACING
    + LUA_DONE
)


# Per-request latency split by status (wrk's own histogram mixes fast 503s with admitted
# answers): the request id is the send time (CLOCK_MONOTONIC, via LuaJIT's ffi), echoed back
# in the 200 answer; 503s are counted, not timed.
LUA_SPLIT = (
    r"""
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } keel_ts;
           int clock_gettime(int clk, keel_ts *tp); ]]
local ts = ffi.new("keel_ts")
local function now_us()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end
local n_entities = %(n)d
local delay_ms = %(delay)d
local dump_path = "%(dump)s"
math.randomseed(42)
lat = {}
sent_at = {}
counts = {ok = 0, shed = 0, other = 0}
request = function()
  local e = math.random(0, n_entities - 1)
  local body = '{"request_id":"' .. now_us() .. '","instances":[{"entity":"e' .. e .. '"}]}'
  return wrk.format("POST", "/v1/predict", {["Content-Type"] = "application/json"}, body)
end
response = function(status, headers, body)
  if status == 200 then
    local sent = tonumber(string.match(body, '"request_id":"(%%d+)"'))
    lat[#lat + 1] = now_us() - sent
    sent_at[#sent_at + 1] = sent
    counts.ok = counts.ok + 1
  elseif status == 503 then
    counts.shed = counts.shed + 1
  else
    counts.other = counts.other + 1
  end
end
if delay_ms > 0 then
  delay = function() return delay_ms end
end
"""
    + PACING
    + r"""
threads = {}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
  local all, ok, shed, other = {}, 0, 0, 0
  local dump = nil
  if dump_path ~= "" then dump = io.open(dump_path, "w") end
  for _, t in ipairs(threads) do
    local l = t:get("lat")
    local s = t:get("sent_at")
    for i = 1, #l do
      all[#all + 1] = l[i]
      if dump then dump:write(s[i], " ", l[i], "\n") end
    end
    local c = t:get("counts")
    ok, shed, other = ok + c.ok, shed + c.shed, other + c.other
  end
  if dump then dump:close() end
  table.sort(all)
  local function pct(p)
    if #all == 0 then return 0 end
    return all[math.max(1, math.ceil(#all * p / 100))]
  end
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "errors": %%d, "non2xx": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d, "ok": %%d, "shed": %%d, "other": %%d, "admitted_p50_us": %%d, "admitted_p99_us": %%d}\n',
    summary.requests, summary.duration, errors + other, summary.errors.status,
    latency:percentile(50), latency:percentile(99), latency.max, ok, shed, other,
    pct(50), pct(99)))
end
"""
)

# Fixed bodies (features in the request) for servers that fetch nothing: keel's OIP v2
# infer and MLflow's /invocations; the same values for both.
LUA_BODIES = (
    (
        r"""
local bodies = { %(bodies)s }
local path = "%(path)s"
local delay_ms = %(delay)d
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, bodies[i])
end
"""
    )
    + PACING
    + LUA_DONE
)


def request_bodies(kind: str, k: int = 64) -> list[str]:
    """``k`` request bodies of one row of ``N_FEATURES`` values (seeded), as keel's OIP v2
    ``infer`` (kind ``v2``) or MLflow's ``dataframe_split`` (kind ``mlflow``)."""
    import numpy as np

    rng = np.random.default_rng(7)
    out = []
    for _ in range(k):
        row = [round(float(v), 6) for v in rng.normal(size=N_FEATURES)]
        if kind == "v2":
            body: dict[str, Any] = {
                "inputs": [
                    {"name": f"x{j}", "shape": [1], "datatype": "FP32", "data": [v]}
                    for j, v in enumerate(row)
                ]
            }
        else:
            body = {
                "dataframe_split": {"columns": [f"x{j}" for j in range(N_FEATURES)], "data": [row]}
            }
        out.append(json.dumps(body, separators=(",", ":")))
    return out


def lua_script(kind: str, *, delay_ms: int, path: str, rate: float = 0.0, dump: str = "") -> str:
    """The wrk script: ``delay_ms`` think time per request, or (``rate`` > 0) requests
    paced at ``rate`` per second over the free connections. ``dump`` (kind ``split``): a
    file that gets one "send_time_us latency_us" line per 200 answer."""
    if kind == "split":
        return LUA_SPLIT % {"n": N_ENTITIES, "delay": delay_ms, "rate": rate, "dump": dump}
    if kind in ("v2", "mlflow"):
        bodies = ", ".join(f"[=[{b}]=]" for b in request_bodies(kind))
        return LUA_BODIES % {"bodies": bodies, "path": path, "delay": delay_ms, "rate": rate}
    return LUA % {"n": N_ENTITIES, "delay": delay_ms, "path": path, "rate": rate}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pgid: int) -> float:
    """CPU seconds of every live process in process group ``pgid`` (a server and the
    processes it started, e.g. ``mlflow models serve`` -> uvicorn)."""
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            parts = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(parts[2]) == pgid:
            total += int(parts[11]) + int(parts[12])
    return total / os.sysconf("SC_CLK_TCK")


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
    """A server under test in its own process group (its CPU time is the group's)."""

    def __init__(
        self,
        args: list[str],
        *,
        cmd: list[str] | None = None,
        env: dict[str, str] | None = None,
        ready_path: str | None = None,
        timeout_s: float = 60,
    ) -> None:
        self.port = free_port()
        env = dict(env or os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        argv = cmd or [sys.executable, "-m", "bench.serving.server", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*argv, *args] if cmd is None else [*argv, "--port", str(self.port), *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            if self._up(ready_path):
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("server did not start")

    def _up(self, ready_path: str | None) -> bool:
        if ready_path is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{ready_path}", timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


def mlflow_server(world: dict[str, Any], tmp: Path) -> ServerProc:
    """``mlflow models serve`` (one uvicorn worker) on the registry's ``credit@champion``,
    loaded through keel.registry_client's pyfunc wrapper (verified with the bench's key)."""
    bin_dir = tmp / "bin"  # `mlflow models serve` execs `uvicorn` from PATH: this interpreter's
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "uvicorn"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m uvicorn "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_TRUSTED", "KEEL_ALLOW"))}
    env.update(
        MLFLOW_TRACKING_URI=world["tracking_uri"],
        MLFLOW_REGISTRY_URI=world["tracking_uri"],
        KEEL_TRUSTED_KEYS=str(world["pub"]),
        KEEL_MODEL_BUILDERS="mlp=keel.serving:build_mlp",
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
        PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env["PATH"]]),
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/credit@champion"]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--workers", "1"]
    return ServerProc([], cmd=cmd, env=env, ready_path="/ping", timeout_s=300)


def run_wrk(
    port: int,
    tmp: Path,
    *,
    seconds: float,
    conns: int,
    delay_ms: int,
    path: str = "/v1/predict",
    kind: str = "entity",
    rate: float = 0.0,
    dump: str = "",
) -> dict[str, Any]:
    script = tmp / f"wrk-{kind}-{conns}-{delay_ms}-{rate:.0f}.lua"
    script.write_text(lua_script(kind, delay_ms=delay_ms, path=path, rate=rate))
    measured = tmp / f"wrk-{kind}-{conns}-{delay_ms}-{rate:.0f}-measured.lua"
    measured.write_text(lua_script(kind, delay_ms=delay_ms, path=path, rate=rate, dump=dump))
    wrk = shutil.which("wrk")
    assert wrk
    url = f"http://127.0.0.1:{port}{path}"
    # warm-up (not measured)
    subprocess.run(
        [wrk, "-t1", f"-c{conns}", "-d1s", "-s", str(script), url], capture_output=True, check=True
    )
    before = os.times()
    p = subprocess.run(
        # --timeout 30s: wrk leaves timed-out requests out of its latency figures
        [
            wrk,
            "-t1",
            f"-c{conns}",
            f"-d{int(seconds)}s",
            "--timeout",
            "30s",
            "-s",
            str(measured),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    after = os.times()
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("WRKJSON "))
    r: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
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
    path: str = "/v1/predict",
    kind: str = "entity",
    server: ServerProc | None = None,
    rate: float = 0.0,
    dump: str = "",
) -> dict[str, Any]:
    """One wrk run against a fresh server (``server_args``) or the running ``server``."""
    srv = server or ServerProc(server_args)
    try:
        c0 = cpu_seconds(srv.proc.pid)
        t0 = time.monotonic()
        r = run_wrk(
            srv.port,
            tmp,
            seconds=seconds,
            conns=conns,
            delay_ms=delay_ms,
            path=path,
            kind=kind,
            rate=rate,
            dump=dump,
        )
        wall = time.monotonic() - t0
        srv_cpu = cpu_seconds(srv.proc.pid) - c0
    finally:
        if server is None:
            srv.stop()
    r["server_cpu_s"] = srv_cpu
    r["server_cpu_us_per_response"] = srv_cpu / max(1, r["requests"]) * 1e6
    r["loadgen_cpu_share"] = r["wrk_cpu_s"] / max(1e-9, r["wrk_cpu_s"] + srv_cpu)
    r["loadgen_cores"] = r["wrk_cpu_s"] / wall
    extra = ""
    if "admitted_p99_us" in r:
        extra = (
            f"  admitted p99 {r['admitted_p99_us'] / 1e3:6.2f} ms  "
            f"shed {r['shed'] / max(1, r['requests']):.1%}"
        )
    print(
        f"{label:34s} rate {r['rate']:8.0f}/s  p50 {r['p50_us'] / 1e3:6.2f} ms  p99 {r['p99_us'] / 1e3:6.2f} ms  "
        f"errors {r['errors']}  wrk CPU share {r['loadgen_cpu_share']:.2f}  "
        f"server CPU/response {r['server_cpu_us_per_response']:.0f} us{extra}",
        flush=True,
    )
    return r


def register_champion(world: dict[str, Any], tmp: Path) -> None:
    """Register the bench artifact in an embedded registry and make it ``credit@champion``."""
    from keel.artifacts import TrustPolicy
    from keel.registry_client import Decision, open_registry

    home = tmp / "registry"
    with open_registry(home) as reg:
        reg.register(world["artifact"], trust=TrustPolicy.from_files([world["pub"]]))
        reg.promote("credit", "champion", 1, Decision("bench", "serve it", "sha256:" + "a" * 64))
    world["tracking_uri"] = f"sqlite:///{home.resolve()}/mlflow.db"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="short runs (smoke)")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--no-mlflow", action="store_true", help="skip `mlflow models serve`")
    ap.add_argument(
        "--only",
        choices=["all", "paced", "overload", "mlflow", "swap"],
        default="all",
        help="run only the overload pair or the MLflow comparison (plus what they need)",
    )
    ap.add_argument(
        "--forward",
        choices=["auto", "inline", "thread"],
        default="auto",
        help="where every keel server runs forward passes (auto: the serve app's default, "
        "inline for a model on the NumPy fast path)",
    )
    ap.add_argument(
        "--fixed-limit",
        action="store_true",
        help="overload pair with a fixed in-flight limit (default: adaptive)",
    )
    ap.add_argument(
        "--overload-of",
        type=float,
        default=None,
        help="offer 2x this rate (req/s) in the overload run instead of 2x the measured capacity",
    )
    ap.add_argument(
        "--max-lag-ms",
        type=float,
        default=1.0,
        help="the overload pair's event-loop lag gate, in force during a surge (the serve "
        "app's default, 1 ms; 0: off)",
    )
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
        base += ["--forward", a.forward]
        sqlite = [*base, "--online", world["online"]["sqlite"]]
        on, off = ["--max-batch", "64"], ["--max-batch", "1"]
        # 1,000 req/s paced (fixed rate over 16 connections, open loop while one is free)
        paced: dict[str, Any] = {"conns": 16, "delay_ms": 0, "rate": 1000.0, "seconds": seconds}
        res: dict[str, dict[str, Any]] = {}
        sat: dict[str, Any] = {"conns": 32, "delay_ms": 0, "seconds": seconds}
        if a.only == "all":
            res.update(measure_main(world, tmp, sqlite, base, paced, sat, on, off))
        if a.only == "paced":
            res["paced_batching_on"] = measure(
                world, tmp, "paced 1k/s, batching on (sqlite)", sqlite + on, **paced
            )
            res["paced_batching_off"] = measure(
                world, tmp, "paced 1k/s, batching off (sqlite)", sqlite + off, **paced
            )
        if a.only in ("all", "overload"):
            res.update(
                measure_overload(
                    world,
                    tmp,
                    [*sqlite, *on, *(["--max-lag-ms", str(a.max_lag_ms)] if a.max_lag_ms else [])],
                    seconds,
                    adaptive=not a.fixed_limit,
                    offered_of=a.overload_of,
                )
            )
        if a.only in ("all", "mlflow") and not a.no_mlflow:
            res.update(measure_mlflow(world, tmp, [*sqlite, *on], paced, sat))
        if a.only in ("all", "swap"):
            res.update(measure_swap(world, tmp, [*sqlite, *on], max(seconds, 6.0)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if "redis" in world.get("online", {}):
            import redis

            r = redis.Redis.from_url(world["online"]["redis"])
            for k in r.scan_iter(match="keelbench:features:*", count=1000):
                r.delete(k)
    print(json.dumps({"bench": "serving", **summarise(res, seconds)}))


def measure_main(
    world: dict[str, Any],
    tmp: Path,
    sqlite: list[str],
    base: list[str],
    paced: dict[str, Any],
    sat: dict[str, Any],
    on: list[str],
    off: list[str],
) -> dict[str, dict[str, Any]]:
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
    res["sat_batching_on"] = measure(world, tmp, "saturation, batching on", sqlite + on, **sat)
    res["sat_batching_off"] = measure(world, tmp, "saturation, batching off", sqlite + off, **sat)
    res["sat_bare_asgi"] = measure(world, tmp, "saturation, bare ASGI (anchor)", ["--bare"], **sat)
    return res


DOOR_CAP = 32  # the door's in-flight cap (ceiling of the adaptive limit)
# closed-loop connections of the capacity run: below the door's cap, so the capacity run is
# the server at full speed, not a surge (no refusal, no lag gate); the loop is saturated
CAPACITY_CONNS = 16


def measure_swap(
    world: dict[str, Any], tmp: Path, args: list[str], seconds: float, every_s: float = 2.0
) -> dict[str, dict[str, Any]]:
    """The hot-swap blip: paced 1,000 req/s while the server reloads, verifies and installs
    the model every ``every_s`` s (the alias follower's path). Every 200 answer's send time
    and latency come back from wrk; requests sent between a swap's load start and 100 ms
    after its install are "during a swap", the rest "steady"."""
    log, dump = tmp / "swaps.log", tmp / "swap-latencies.txt"
    log.unlink(missing_ok=True)
    srv = ServerProc([*args, "--swap-every", str(every_s), "--swap-log", str(log)])
    try:
        r = measure(
            world,
            tmp,
            f"paced 1k/s, hot swap every {every_s:g} s",
            [],
            server=srv,
            conns=16,
            delay_ms=0,
            rate=1000.0,
            seconds=seconds,
            kind="split",
            dump=str(dump),
        )
    finally:
        srv.stop()
    swaps = [tuple(float(x) for x in ln.split()) for ln in log.read_text().splitlines()]
    pairs = [tuple(int(x) for x in ln.split()) for ln in dump.read_text().splitlines()]
    t_lo, t_hi = pairs[0][0] / 1e6, max(a for a, _ in pairs) / 1e6
    windows = [(a, b + 0.1) for a, b in swaps if t_lo <= a and b <= t_hi]
    during = [lat for sent, lat in pairs if any(a <= sent / 1e6 <= b for a, b in windows)]
    steady = [lat for sent, lat in pairs if not any(a <= sent / 1e6 <= b for a, b in windows)]

    import numpy as np

    def pct(xs: list[int], q: float) -> float:
        return float(np.percentile(xs, q)) / 1000 if xs else float("nan")

    r.update(
        swaps=len(windows),
        swap_load_ms=[round((b - 0.1 - a) * 1000, 1) for a, b in windows],
        during_n=len(during),
        steady_n=len(steady),
        during_p50_ms=pct(during, 50),
        during_p99_ms=pct(during, 99),
        during_max_ms=max(during) / 1000 if during else float("nan"),
        steady_p99_ms=pct(steady, 99),
    )
    print(
        f"  hot swap: {len(windows)} swaps in the window (load + verify + install "
        f"{r['swap_load_ms']} ms); requests sent during a swap: {len(during)}, p50 "
        f"{r['during_p50_ms']:.2f} ms, p99 {r['during_p99_ms']:.2f} ms, max "
        f"{r['during_max_ms']:.2f} ms; steady p99 {r['steady_p99_ms']:.2f} ms; non-200 "
        f"{r['shed'] + r['other']}",
        flush=True,
    )
    return {"swap": r}


OVERLOAD_FACTOR = 2.0  # offered rate of the overload run, times the measured capacity
OVERLOAD_CONNS = 256  # enough free connections for wrk to keep the paced rate


def measure_overload(
    world: dict[str, Any],
    tmp: Path,
    args: list[str],
    seconds: float,
    *,
    adaptive: bool = True,
    offered_of: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Capacity, then ``OVERLOAD_FACTOR`` x capacity offered at a fixed rate (open loop while
    a connection is free), on the same server settings (the door capped at
    ``DOOR_CAP`` in flight; ``adaptive``: its limit follows the admitted latency);
    admitted requests timed one by one by wrk. ``offered_of``: the capacity (req/s) the
    overload rate is 2x of, instead of this server's measured one (to offer the same
    absolute surge to servers whose gates give different capacities)."""
    guard = [*args, "--max-in-flight", str(DOOR_CAP), *(["--adaptive"] if adaptive else [])]
    srv = ServerProc(guard)  # one server for both: the surge hits a server that was serving
    try:
        return _capacity_then_overload(world, tmp, srv, seconds, offered_of)
    finally:
        srv.stop()


def _capacity_then_overload(
    world: dict[str, Any], tmp: Path, srv: ServerProc, seconds: float, offered_of: float | None
) -> dict[str, dict[str, Any]]:
    cap = measure(
        world,
        tmp,
        f"capacity ({CAPACITY_CONNS} conns, closed loop)",
        [],
        server=srv,
        conns=CAPACITY_CONNS,
        delay_ms=0,
        seconds=seconds,
        kind="split",
    )
    cap_rate = cap["ok"] / (cap["duration_us"] / 1e6)
    target = OVERLOAD_FACTOR * (offered_of or cap_rate)
    over = measure(
        world,
        tmp,
        f"overload ({target:.0f}/s paced, {OVERLOAD_CONNS} conns)",
        [],
        server=srv,
        conns=OVERLOAD_CONNS,
        delay_ms=0,
        rate=target,
        seconds=seconds,
        kind="split",
    )
    over["conns"] = OVERLOAD_CONNS
    over["target_rps"] = target
    over["offered_vs_capacity"] = (over["requests"] / (over["duration_us"] / 1e6)) / cap_rate
    return {"capacity": cap, "overload_2x": over}


def measure_mlflow(
    world: dict[str, Any],
    tmp: Path,
    keel_args: list[str],
    paced: dict[str, Any],
    sat: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """The same artifact behind `mlflow models serve` and behind keel's OIP v2 infer (both
    given the 20 feature values in the request: no feature fetch on either side)."""
    register_champion(world, tmp)
    res: dict[str, dict[str, Any]] = {}
    ml = mlflow_server(world, tmp)
    try:
        check_same_answers(world, ml.port)
        mk: dict[str, Any] = {"path": "/invocations", "kind": "mlflow", "server": ml}
        res["mlflow_sat"] = measure(world, tmp, "mlflow models serve, saturation", [], **sat, **mk)
        res["mlflow_paced"] = measure(world, tmp, "mlflow models serve, paced", [], **paced, **mk)
    finally:
        ml.stop()
    kv: dict[str, Any] = {"path": "/v2/models/credit/infer", "kind": "v2"}
    res["keel_v2_sat"] = measure(world, tmp, "keel v2 infer, saturation", keel_args, **sat, **kv)
    res["keel_v2_paced"] = measure(world, tmp, "keel v2 infer, paced", keel_args, **paced, **kv)
    return res


def check_same_answers(world: dict[str, Any], mlflow_port: int) -> None:
    """Both servers serve the same model: MLflow's answer to the bench's first body equals
    keel's predictor on the same row (else the comparison would be meaningless)."""
    import urllib.request

    import numpy as np

    from keel.artifacts import TrustPolicy
    from keel.serving import load_predictor

    body = request_bodies("mlflow")[0]
    req = urllib.request.Request(
        f"http://127.0.0.1:{mlflow_port}/invocations",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        got = json.loads(r.read())["predictions"][0]["p"]
    p = load_predictor(world["artifact"], TrustPolicy.from_files([world["pub"]]), device="cpu")
    row = np.array([json.loads(body)["dataframe_split"]["data"][0]], dtype=np.float32)
    want = float(p.predict(row)[0, 0])
    if abs(got - want) > 1e-5:
        raise RuntimeError(f"mlflow answers {got}, keel's predictor {want}: not the same model")


def summarise(res: dict[str, dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The last line's figures, ratios and goals from whichever scenarios ran."""
    figures: dict[str, Any] = {"n_features": N_FEATURES, "seconds": seconds}
    ratios: dict[str, Any] = {}
    goals: dict[str, Any] = {}
    if "paced_batching_on" in res:
        p = res["paced_batching_on"]
        figures.update(
            {
                "paced_rate_rps": round(p["rate"]),
                "paced_p50_ms": p["p50_us"] / 1e3,
                "paced_p99_ms": p["p99_us"] / 1e3,
                "paced_p99_batching_off_ms": res["paced_batching_off"]["p99_us"] / 1e3,
                "paced_rate_batching_off_rps": round(res["paced_batching_off"]["rate"]),
                "paced_loadgen_cpu_share": round(p["loadgen_cpu_share"], 3),
                "paced_loadgen_cores": round(p["loadgen_cores"], 3),
                "paced_errors": p["errors"],
            }
        )
        best = min(p["p99_us"], res["paced_batching_off"]["p99_us"]) / 1e3
        goals["p99_le_3ms_at_1k_rps"] = best <= 3.0 and p["rate"] >= 950
    if "sat_batching_on" in res:
        p = res["paced_batching_on"]
        figures.update(
            {
                "sat_rps_batching_on": round(res["sat_batching_on"]["rate"]),
                "sat_rps_batching_off": round(res["sat_batching_off"]["rate"]),
                "sat_p99_ms_batching_on": res["sat_batching_on"]["p99_us"] / 1e3,
                "sat_p99_ms_batching_off": res["sat_batching_off"]["p99_us"] / 1e3,
                "sat_rps_bare_asgi": round(res["sat_bare_asgi"]["rate"]),
            }
        )
        ratios["batching_on_vs_off_saturation_throughput"] = round(
            res["sat_batching_on"]["rate"] / res["sat_batching_off"]["rate"], 3
        )
        ratios["keel_vs_bare_asgi_throughput"] = round(
            res["sat_batching_on"]["rate"] / res["sat_bare_asgi"]["rate"], 3
        )
        if "paced_redis" in res:
            figures["paced_p99_redis_ms"] = res["paced_redis"]["p99_us"] / 1e3
            ratios["redis_vs_sqlite_paced_p99"] = round(
                res["paced_redis"]["p99_us"] / p["p99_us"], 3
            )
        goals["batching_gain"] = ratios["batching_on_vs_off_saturation_throughput"] > 1.0
    if "overload_2x" in res:
        cap, over = res["capacity"], res["overload_2x"]
        figures.update(
            {
                "capacity_rps": round(cap["ok"] / (cap["duration_us"] / 1e6)),
                "capacity_p99_ms": cap["admitted_p99_us"] / 1e3,
                "overload_offered_vs_capacity": round(over["offered_vs_capacity"], 2),
                "overload_conns": over["conns"],
                "overload_target_rps": round(over["target_rps"]),
                "overload_admitted_rps": round(over["ok"] / (over["duration_us"] / 1e6)),
                "overload_admitted_p50_ms": over["admitted_p50_us"] / 1e3,
                "overload_admitted_p99_ms": over["admitted_p99_us"] / 1e3,
                "overload_shed_share": round(over["shed"] / max(1, over["requests"]), 3),
                "overload_loadgen_cpu_share": round(over["loadgen_cpu_share"], 3),
            }
        )
        ratios["overload_admitted_p99_vs_capacity_p99"] = round(
            over["admitted_p99_us"] / max(1, cap["admitted_p99_us"]), 3
        )
        # "keep their p99": within 1.5x of the p99 at capacity
        goals["admitted_p99_kept_under_2x"] = ratios["overload_admitted_p99_vs_capacity_p99"] <= 1.5
    if "mlflow_sat" in res:
        ms, mp = res["mlflow_sat"], res["mlflow_paced"]
        ks, kp = res["keel_v2_sat"], res["keel_v2_paced"]
        figures.update(
            {
                "mlflow_sat_rps": round(ms["rate"]),
                "mlflow_sat_p99_ms": ms["p99_us"] / 1e3,
                "mlflow_paced_rps": round(mp["rate"]),
                "mlflow_paced_p99_ms": mp["p99_us"] / 1e3,
                "keel_v2_sat_rps": round(ks["rate"]),
                "keel_v2_sat_p99_ms": ks["p99_us"] / 1e3,
                "keel_v2_paced_rps": round(kp["rate"]),
                "keel_v2_paced_p99_ms": kp["p99_us"] / 1e3,
                "mlflow_non2xx": ms["non2xx"] + mp["non2xx"],
            }
        )
        ratios["keel_v2_vs_mlflow_sat_throughput"] = round(ks["rate"] / ms["rate"], 3)
        ratios["keel_v2_vs_mlflow_sat_p99"] = round(ks["p99_us"] / max(1, ms["p99_us"]), 3)
        ratios["keel_v2_vs_mlflow_paced_p99"] = round(kp["p99_us"] / max(1, mp["p99_us"]), 3)
        if "sat_batching_on" in res:
            ratios["keel_v1_with_features_vs_mlflow_sat_throughput"] = round(
                res["sat_batching_on"]["rate"] / ms["rate"], 3
            )
        goals["keel_ge_2x_mlflow_throughput_at_le_p99"] = (
            ratios["keel_v2_vs_mlflow_sat_throughput"] >= 2.0
            and ratios["keel_v2_vs_mlflow_sat_p99"] <= 1.0
        )
    if "swap" in res:
        sw = res["swap"]
        figures.update(
            {
                "swap_count": sw["swaps"],
                "swap_load_ms": sw["swap_load_ms"],
                "swap_during_n": sw["during_n"],
                "swap_during_p99_ms": round(sw["during_p99_ms"], 3),
                "swap_during_max_ms": round(sw["during_max_ms"], 3),
                "swap_steady_p99_ms": round(sw["steady_p99_ms"], 3),
                "swap_non200": sw["shed"] + sw["other"],
            }
        )
        ratios["swap_during_vs_steady_p99"] = round(
            sw["during_p99_ms"] / max(1e-3, sw["steady_p99_ms"]), 3
        )
        goals["swap_zero_failed"] = sw["shed"] + sw["other"] == 0 and sw["swaps"] > 0
    # sheds (503 from the door or the queue) are the overload pair's design, not errors
    goals["no_errors"] = all(
        r["errors"] == 0
        and (r.get("other", 0) == 0 if k in ("capacity", "overload_2x") else r["non2xx"] == 0)
        for k, r in res.items()
    )
    return {"figures": figures, "ratios": ratios, "goals_met": goals}


if __name__ == "__main__":
    main()
