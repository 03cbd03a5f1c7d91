"""Benchmark keel.artifacts against the physical limits, measured in the same run.

    ./pants run tools/bench:artifacts -- [--quick] [--size-mb N] [--rounds R]

* verify throughput: `verify_artifact` (signature + manifest + SHA-256 of every file +
  weights header) vs a raw `hashlib.sha256` pass over the same files with the same chunk
  size — GB/s each; goal keel >= 80% of raw.
* load — the budget: `load_artifact(framework="torch")` vs the anchor, a bare
  `safetensors.torch.load_file` + a `hashlib` pass over the same weights file; goal
  <= 1.25x (wall). Inside each timer: the call(s), until the tensors are returned. Keel's
  side: scan, signature, manifest, SHA-256 of every file, the weights read once into
  private memory and hashed as they land, header validation, contract + runtime-config
  check, `torch.frombuffer` views. The anchor: `load_file` (which maps the file and
  copies nothing: its tensors are views of the page cache, so a writer to the file changes
  them) and a `hashlib` pass through one 4 MiB buffer. Outside both timers: dropping the
  tensors (`*_teardown_s`; Keel unmaps 500 MB of private pages, the anchor a file map).
  The goal ratio is the median over rounds of each round's keel/anchor pair
  (`..._time`); the ratio of the two medians is reported beside it.
  Also per side: CPU seconds (all threads, `time.process_time`) — where no core is idle,
  the wall ratio tends to the CPU ratio. For context, not goals: `fresh_copy_s`, the one
  thing Keel does that the anchor does not (read the weights into fresh private memory, no
  hash), and a like-for-like anchor that also ends with private tensors,
  `load_file(backend="pread")` + `hashlib`, run as a third side in the load rounds
  (safetensors versions without `backend` report null).
* build: `build_artifact` from in-memory tensors (streamed, signed): time, and the peak of
  extra Python-tracked memory (tracemalloc) — streaming means it stays far below the size.
Rounds alternate which side runs first; figures are medians; files are in the page cache
for both sides (a warm-up pass reads them first); the load average is printed at the start
and the end. `--quick` runs a small size, and the full-size goals are reported as null.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from keel.artifacts import (
    Architecture,
    ArtifactSpec,
    FieldSpec,
    SigningKey,
    TrustPolicy,
    build_artifact,
    generate_keypair,
    load_artifact,
    verify_artifact,
)

CHUNK = 4 * 1024 * 1024
FULL_MB = 500


def _tensors(size_mb: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    per = 16 * 1024 * 1024  # 16 MiB tensors, like the layers of a mid-size model
    n = max(1, size_mb * 1024 * 1024 // per)
    return {
        f"layer{i:03d}.weight": rng.standard_normal(per // 4, dtype=np.float32).reshape(-1, 1024)
        for i in range(n)
    }


def _raw_hash(paths: list[Path]) -> int:
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    total = 0
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(mv):
                h.update(mv[:n])
                total += n
        h.hexdigest()
    return total


def _fresh_copy(path: Path) -> None:
    size = path.stat().st_size
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mv = memoryview(m)
    fd = os.open(path, os.O_RDONLY)
    try:
        for a in range(0, size, CHUNK):
            os.preadv(fd, [mv[a : a + CHUNK]], a)
    finally:
        os.close(fd)
        mv.release()
        m.close()


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _timed_cpu(fn: Callable[[], object]) -> tuple[float, float, float]:
    """(wall, CPU) of ``fn()`` until it returns, then the wall time of dropping its result,
    which is kept alive until the timer has stopped."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    del out
    return wall, cpu, time.perf_counter() - t0


def _load_file_pread(path: Path) -> object:
    try:
        return load_file(str(path), backend="pread")
    except TypeError:  # safetensors < 0.7: no backend argument
        return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size-mb", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()
    size_mb = args.size_mb or (32 if args.quick else FULL_MB)
    rounds = args.rounds or (3 if args.quick else 5)
    full = size_mb >= FULL_MB
    load_start = os.getloadavg()
    torch.set_num_threads(1)

    priv, pub = generate_keypair()
    policy = TrustPolicy((pub,))
    spec = ArtifactSpec(
        name="bench",
        architecture=Architecture(builder="mlp", args={}),
        input_schema=[FieldSpec(name="x", dtype="float32")],
        output_schema=[FieldSpec(name="y", dtype="float32")],
    )
    tensors = _tensors(size_mb)
    nbytes = sum(a.nbytes for a in tensors.values())
    with tempfile.TemporaryDirectory(prefix="keel-bench-artifacts-") as tmp:
        base = Path(tmp)
        # build: time + peak extra memory beyond the input tensors
        tracemalloc.start()
        t0 = time.perf_counter()
        built = build_artifact(base / "a", spec, tensors, signing_key=SigningKey.from_pem(priv))
        build_s = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        t0 = time.perf_counter()
        from keel.artifacts import archive_artifact

        archive_artifact(built.path, base / "a.tar")
        archive_s = time.perf_counter() - t0
        del tensors

        files = sorted(p for p in built.path.rglob("*") if p.is_file() and p.name != "model.sig")
        weights = built.path / "weights.safetensors"
        total = sum(p.stat().st_size for p in files)
        _raw_hash(files)  # warm the page cache for both sides, and the lazy imports
        load_artifact(built.path, policy, framework="torch")
        load_file(str(weights))

        verify_k: list[float] = []
        verify_r: list[float] = []
        load_k: list[tuple[float, float, float]] = []
        load_r: list[tuple[float, float, float]] = []
        load_p: list[tuple[float, float, float]] = []
        has_pread = _load_file_pread(weights) is not None
        for r in range(rounds):
            pair = [
                ("k", lambda: verify_artifact(built.path, policy)),
                ("r", lambda: _raw_hash(files)),
            ]
            for side, fn in pair if r % 2 == 0 else pair[::-1]:
                (verify_k if side == "k" else verify_r).append(_timed(fn))
            sides: list[tuple[list[tuple[float, float, float]], Callable[[], object]]] = [
                (load_k, lambda: load_artifact(built.path, policy, framework="torch")),
                (load_r, lambda: (load_file(str(weights)), _raw_hash([weights]))),
            ]
            if has_pread:
                sides.append((load_p, lambda: (_load_file_pread(weights), _raw_hash([weights]))))
            for out, fn in sides[r % len(sides) :] + sides[: r % len(sides)]:
                out.append(_timed_cpu(fn))
        # after the rounds, so that their freed pages cannot warm memory for a load round;
        # spaced like the load rounds (the host reclaims memory freed a few seconds ago)
        fresh: list[tuple[float, float, float]] = []
        for _ in range(rounds):
            verify_artifact(built.path, policy)
            _raw_hash(files)
            _raw_hash([weights])
            fresh.append(_timed_cpu(lambda: _fresh_copy(weights)))
    load_end = os.getloadavg()

    vk, vr = statistics.median(verify_k), statistics.median(verify_r)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def med(xs: list[tuple[float, float, float]], i: int) -> float:
        return statistics.median(x[i] for x in xs)

    lk, lr, ck, cr = med(load_k, 0), med(load_r, 0), med(load_k, 1), med(load_r, 1)
    lp, cp = (med(load_p, 0), med(load_p, 1)) if load_p else (None, None)
    paired = statistics.median(k[0] / r[0] for k, r in zip(load_k, load_r, strict=True))
    paired_cpu = statistics.median(k[1] / r[1] for k, r in zip(load_k, load_r, strict=True))

    def r4(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    figs = {
        "size_mb": round(nbytes / 1e6, 1),
        "verify_keel_gb_s": round(total / vk / 1e9, 3),
        "verify_raw_hashlib_gb_s": round(total / vr / 1e9, 3),
        "load_keel_s": r4(lk),
        "load_bare_safetensors_plus_hashlib_s": r4(lr),
        "load_keel_cpu_s": r4(ck),
        "load_bare_safetensors_plus_hashlib_cpu_s": r4(cr),
        "load_keel_teardown_s": r4(med(load_k, 2)),
        "load_bare_safetensors_plus_hashlib_teardown_s": r4(med(load_r, 2)),
        "fresh_copy_s": r4(med(fresh, 0)),
        "fresh_copy_cpu_s": r4(med(fresh, 1)),
        "load_safetensors_pread_plus_hashlib_s": r4(lp),
        "load_safetensors_pread_plus_hashlib_cpu_s": r4(cp),
        "build_s": round(build_s, 3),
        "build_gb_s": round(nbytes / build_s / 1e9, 3),
        "build_peak_extra_mb": round(peak / 1e6, 2),
        "archive_s": round(archive_s, 3),
        "rounds": rounds,
        "cpus": cpus,
        "loadavg_1m_start": round(load_start[0], 2),
        "loadavg_1m_end": round(load_end[0], 2),
    }
    ratios: dict[str, float | None] = {
        "keel_vs_raw_hashlib_verify_throughput": round(vr / vk, 3),
        "keel_load_vs_bare_safetensors_plus_hashlib_time": round(paired, 3),
        "keel_load_vs_bare_safetensors_plus_hashlib_time_of_medians": round(lk / lr, 3),
        "keel_load_vs_bare_safetensors_plus_hashlib_cpu": round(paired_cpu, 3),
        "fresh_copy_vs_bare_safetensors_plus_hashlib_time": round(med(fresh, 0) / lr, 3),
        "keel_load_vs_safetensors_pread_plus_hashlib_time": (
            round(statistics.median(k[0] / p[0] for k, p in zip(load_k, load_p, strict=True)), 3)
            if load_p
            else None
        ),
        "build_peak_extra_vs_weights_size": round(peak / nbytes, 4),
    }
    goals = {
        "verify_throughput_ge_80pct_of_hashlib": round(vr / vk, 3) >= 0.8 if full else None,
        "load_le_1_25x_bare": round(paired, 3) <= 1.25 if full else None,
        "build_streams_no_second_copy": round(peak / nbytes, 4) < 0.1,
    }
    for k, v in figs.items():
        print(f"{k:40s} {v}")
    for k, v in ratios.items():
        print(f"{k:40s} {v}")
    print(json.dumps({"bench": "artifacts", "figures": figs, "ratios": ratios, "goals_met": goals}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
