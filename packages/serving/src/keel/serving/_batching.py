"""Adaptive micro-batching with a bounded admission queue.

Requests queue their encoded rows; one worker task takes up to ``max_batch_rows`` rows per
forward pass. It waits for more rows (at most ``max_wait_s`` after the oldest arrived) only
while the measured arrival gap says another request is likely within that window — so a
lone request at low load runs at once, and under load batches form by themselves while the
previous forward pass runs. The queue holds at most ``max_queue_rows`` rows: beyond that a
request is refused at once (``OverloadedError`` -> 503 + ``Retry-After`` from the measured
drain rate) instead of growing a backlog whose latency no caller would accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from keel.serving._errors import ConfigError, OverloadedError


@dataclass(frozen=True)
class BatchingConfig:
    """``max_batch_rows=1`` turns batching off (every request is its own forward pass).
    ``in_thread``: run forward passes on one worker thread so the event loop keeps parsing
    requests meanwhile (True), inline on the loop (False: lowest overhead, tiny models), or
    decide per model (None, the default): inline when the key says its forward pass is light
    (a ``light`` attribute that is true: a predictor on the NumPy fast path runs a batch in
    tens of microseconds, less than the hop to a thread and back), on the thread otherwise."""

    max_batch_rows: int = 64
    max_wait_s: float = 0.001
    max_queue_rows: int = 1024
    in_thread: bool | None = None

    def __post_init__(self) -> None:
        if self.max_batch_rows < 1:
            raise ConfigError(f"max_batch_rows must be >= 1, got {self.max_batch_rows}")
        if not 0 <= self.max_wait_s <= 1:
            raise ConfigError(f"max_wait_s must be in [0, 1] seconds, got {self.max_wait_s}")
        if self.max_queue_rows < self.max_batch_rows:
            raise ConfigError(
                f"max_queue_rows ({self.max_queue_rows}) must be >= max_batch_rows "
                f"({self.max_batch_rows})"
            )


@dataclass
class _Item:
    key: Any  # rows batch together only with rows of the same key (the same predictor)
    x: np.ndarray
    fut: asyncio.Future[np.ndarray]
    t: float


RunFn = Callable[[Any, np.ndarray], np.ndarray]


class MicroBatcher:
    """``await submit(key, x)`` -> the rows of ``run(key, X)`` that belong to ``x``.

    ``run(key, X)`` is the forward pass for a stacked batch ``X`` (same key); ``on_batch``
    is told each batch's row count. Create and use it on one event loop.
    """

    def __init__(
        self,
        run: RunFn,
        config: BatchingConfig | None = None,
        *,
        on_batch: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.run = run
        self.config = config or BatchingConfig()
        self._on_batch = on_batch
        self._clock = clock
        self._queue: deque[_Item] = deque()
        self.queued_rows = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None  # made on first off-loop pass
        self._gap_s = math.inf  # EWMA of the gap between arrivals
        self._last_arrival = -math.inf
        self._rows_per_s = 0.0  # EWMA of the forward-pass drain rate
        self.batches = 0
        self.closed = False

    # -- admission -----------------------------------------------------------------------
    def retry_after_s(self) -> int:
        """Seconds until the current backlog is likely drained (>= 1)."""
        if self._rows_per_s <= 0:
            return 1
        return max(1, math.ceil(self.queued_rows / self._rows_per_s))

    async def submit(self, key: Any, x: np.ndarray) -> np.ndarray:
        n = int(x.shape[0])
        if self.closed:
            raise OverloadedError("the model is shutting down", 1)
        if n > self.config.max_queue_rows:
            raise OverloadedError(
                f"a request of {n} rows exceeds the queue ({self.config.max_queue_rows} rows): "
                "split it",
                1,
            )
        if self.queued_rows + n > self.config.max_queue_rows:
            raise OverloadedError(
                f"admission queue full ({self.queued_rows}/{self.config.max_queue_rows} rows)",
                self.retry_after_s(),
            )
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            # first use, or a new event loop (a worker never outlives its loop)
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._worker(), name="keel-serving-batcher")
        now = self._clock()
        gap = now - self._last_arrival
        self._last_arrival = now
        self._gap_s = gap if math.isinf(self._gap_s) else 0.8 * self._gap_s + 0.2 * gap
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.append(_Item(key, x, fut, now))
        self.queued_rows += n
        assert self._wake is not None
        self._wake.set()
        return await fut

    def _inline(self, key: Any) -> bool:
        if self.config.in_thread is None:
            return bool(getattr(key, "light", False))
        return not self.config.in_thread

    # -- the worker ------------------------------------------------------------------------
    def _take(self) -> tuple[Any, list[_Item]]:
        cfg = self.config
        first = self._queue.popleft()
        items, rows = [first], int(first.x.shape[0])
        while self._queue and self._queue[0].key is first.key:
            nxt = int(self._queue[0].x.shape[0])
            if rows + nxt > cfg.max_batch_rows:
                break
            items.append(self._queue.popleft())
            rows += nxt
        self.queued_rows -= rows
        return first.key, items

    async def _gather_more(self) -> None:
        cfg = self.config
        assert self._wake is not None
        if cfg.max_wait_s <= 0 or cfg.max_batch_rows <= 1 or self._gap_s >= cfg.max_wait_s:
            return
        deadline = self._queue[0].t + cfg.max_wait_s
        while self.queued_rows < cfg.max_batch_rows:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    async def _worker(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather_more()
            key, items = self._take()
            live = [it for it in items if not it.fut.done()]
            if not live:
                continue
            x = live[0].x if len(live) == 1 else np.concatenate([it.x for it in live])
            t0 = self._clock()
            try:
                if self._inline(key):
                    y = self.run(key, x)
                else:
                    if self._executor is None:
                        self._executor = ThreadPoolExecutor(
                            1, thread_name_prefix="keel-serving-forward"
                        )
                    y = await loop.run_in_executor(self._executor, self.run, key, x)
            except BaseException as e:  # every waiter gets the failure; the worker lives on
                for it in live:
                    if not it.fut.done():
                        it.fut.set_exception(
                            e if isinstance(e, Exception) else RuntimeError(str(e))
                        )
                if isinstance(e, asyncio.CancelledError):
                    raise
                continue
            dt = max(self._clock() - t0, 1e-6)
            rate = x.shape[0] / dt
            self._rows_per_s = (
                rate if self._rows_per_s == 0 else 0.9 * self._rows_per_s + 0.1 * rate
            )
            self.batches += 1
            if self._on_batch is not None:
                self._on_batch(int(x.shape[0]))
            start = 0
            for it in live:
                n = int(it.x.shape[0])
                if not it.fut.done():
                    it.fut.set_result(y[start : start + n])
                start += n

    async def aclose(self) -> None:
        """Stop taking requests, fail queued ones, stop the worker."""
        self.closed = True
        while self._queue:
            it = self._queue.popleft()
            if not it.fut.done():
                it.fut.set_exception(OverloadedError("the model is shutting down", 1))
        self.queued_rows = 0
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
