"""Micro-batching and admission: batches form under load, never mix predictors, shed with
OverloadedError + retry hint; the canary guard stops a breaching canary."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from keel.serving import (
    BatchingConfig,
    CanaryPolicy,
    CanaryWindow,
    ConfigError,
    MicroBatcher,
    OverloadedError,
)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, int]] = []

    def __call__(self, key: Any, x: np.ndarray) -> np.ndarray:
        self.calls.append((key, x.shape[0]))
        return x * 2 + (1 if key == "b" else 0)


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows() -> None:
    rec = Recorder()

    async def main() -> list[np.ndarray]:
        b = MicroBatcher(rec, BatchingConfig(max_batch_rows=16, max_wait_s=0.0, in_thread=False))
        xs = [np.full((1, 2), i, np.float32) for i in range(40)]
        out = await asyncio.gather(*(b.submit("a", x) for x in xs))
        await b.aclose()
        return out

    out = asyncio.run(main())
    assert [o.tolist() for o in out] == [[[2 * i, 2 * i]] for i in range(40)]
    sizes = [n for _, n in rec.calls]
    assert sum(sizes) == 40 and max(sizes) <= 16
    assert len(rec.calls) < 40  # rows queued while a pass ran went together


def test_batching_off_runs_one_request_per_pass() -> None:
    rec = Recorder()

    async def main() -> None:
        b = MicroBatcher(rec, BatchingConfig(max_batch_rows=1, max_queue_rows=64, in_thread=False))
        await asyncio.gather(*(b.submit("a", np.ones((1, 1), np.float32)) for _ in range(10)))
        await b.aclose()

    asyncio.run(main())
    assert [n for _, n in rec.calls] == [1] * 10


def test_rows_of_different_predictors_never_share_a_pass() -> None:
    rec = Recorder()

    async def main() -> list[np.ndarray]:
        b = MicroBatcher(rec, BatchingConfig(max_batch_rows=64, in_thread=True))
        keys = ["a", "b"] * 10
        out = await asyncio.gather(*(b.submit(k, np.zeros((1, 1), np.float32)) for k in keys))
        await b.aclose()
        return out

    out = asyncio.run(main())
    assert [float(o[0, 0]) for o in out] == [0.0, 1.0] * 10


class Key:
    def __init__(self, light: bool) -> None:
        self.light = light


def test_by_default_light_models_run_inline_and_others_on_the_forward_thread() -> None:
    """``in_thread=None`` (the default): a key whose ``light`` is true (a predictor on the
    NumPy fast path) runs on the event loop's thread, any other key on the worker thread;
    True/False force one or the other for every key."""
    import threading

    def threads(config: BatchingConfig, keys: list[Any]) -> list[str]:
        names: list[str] = []

        def run(key: Any, x: np.ndarray) -> np.ndarray:
            names.append(threading.current_thread().name)
            return x

        async def main() -> None:
            b = MicroBatcher(run, config)
            for k in keys:  # one at a time: one pass each
                await b.submit(k, np.zeros((1, 1), np.float32))
            await b.aclose()

        asyncio.run(main())
        return names

    main_thread = threading.current_thread().name
    light, heavy = Key(True), Key(False)
    got = threads(BatchingConfig(), [light, heavy, "plain", light])
    assert got[0] == main_thread and got[3] == main_thread
    assert got[1].startswith("keel-serving-forward") and got[2].startswith("keel-serving-forward")
    forced = threads(BatchingConfig(in_thread=True), [light])
    assert forced[0].startswith("keel-serving-forward")
    assert threads(BatchingConfig(in_thread=False), [heavy]) == [main_thread]


def test_full_queue_sheds_with_retry_after_and_admitted_requests_complete() -> None:
    async def main() -> tuple[int, int, list[int]]:
        class Slow:
            def __call__(self, key: Any, x: np.ndarray) -> np.ndarray:
                return x

        b = MicroBatcher(
            Slow(), BatchingConfig(max_batch_rows=4, max_queue_rows=8, in_thread=False)
        )
        admitted = [
            asyncio.ensure_future(b.submit("a", np.ones((1, 1), np.float32))) for _ in range(8)
        ]
        await asyncio.sleep(0)  # the 8 submits enqueue; the worker task runs after us
        assert b.queued_rows == 8
        shed = 0
        retry: list[int] = []
        for _ in range(5):
            try:
                await b.submit("a", np.ones((1, 1), np.float32))
            except OverloadedError as e:
                shed += 1
                retry.append(e.retry_after_s)
        done = await asyncio.gather(*admitted)
        await b.aclose()
        return shed, len(done), retry

    shed, done, retry = asyncio.run(main())
    assert shed == 5 and done == 8 and all(r >= 1 for r in retry)


def test_oversized_request_is_refused_not_queued() -> None:
    async def main() -> None:
        b = MicroBatcher(lambda k, x: x, BatchingConfig(max_batch_rows=4, max_queue_rows=8))
        with pytest.raises(OverloadedError, match="split it"):
            await b.submit("a", np.ones((9, 1), np.float32))
        await b.aclose()

    asyncio.run(main())


def test_a_failing_pass_fails_its_requests_and_the_worker_lives_on() -> None:
    calls = {"n": 0}

    def flaky(key: Any, x: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return x

    async def main() -> None:
        b = MicroBatcher(flaky, BatchingConfig(max_batch_rows=1, in_thread=False))
        with pytest.raises(RuntimeError, match="boom"):
            await b.submit("a", np.ones((1, 1), np.float32))
        assert (await b.submit("a", np.ones((1, 1), np.float32))).tolist() == [[1.0]]
        await b.aclose()

    asyncio.run(main())


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        BatchingConfig(max_batch_rows=0)
    with pytest.raises(ConfigError):
        BatchingConfig(max_batch_rows=8, max_queue_rows=4)
    with pytest.raises(ConfigError):
        BatchingConfig(max_wait_s=-1)


def test_canary_policy_stops_on_error_rate_and_latency_only_with_enough_requests() -> None:
    pol = CanaryPolicy(max_error_rate=0.1, max_p99_s=0.01, min_requests=10, window=100)
    w = CanaryWindow(pol.window)
    for _ in range(9):
        w.add(False, 0.001)
    assert pol.decide(w) is None  # 9 < min_requests
    w.add(False, 0.001)
    assert "error rate" in (pol.decide(w) or "")
    w2 = CanaryWindow(pol.window)
    for i in range(100):
        w2.add(True, 0.5 if i < 5 else 0.001)
    assert "p99" in (pol.decide(w2) or "")
    w3 = CanaryWindow(pol.window)
    for _ in range(100):
        w3.add(True, 0.001)
    assert pol.decide(w3) is None
