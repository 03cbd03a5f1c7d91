"""The door: a raw ASGI layer in front of the router that refuses inference requests
beyond the in-flight limit before anything else runs.

A refused request costs a path check, a counter compare and two ``send`` calls of bytes
built once: its body is never read (``receive`` is not called), nothing is parsed, routed,
validated or logged, and its answer is a constant 503 with ``Retry-After``. Under overload
the event loop's time goes to the admitted requests, not to refusing the others. Admitted
requests are timed from the door to the end of the inner app; the limit policy
(``FixedLimit`` or ``AdaptiveLimit``) gets those samples.

That time does not see the wait *before* the door: a request that sits in a socket buffer
while the event loop is busy with other work (the refusals included) is late before the
app ever runs. ``max_loop_lag_s`` closes that gap during a surge (the in-flight limit was
reached within the last ``SURGE_HOLD_S``): a probe task sleeps ``interval`` at a time and
records how late the loop woke it; while the probe's last lateness, or how overdue it is
right now, exceeds ``max_loop_lag_s``, the door refuses new inference requests too. The
loop then spends its time on the requests already admitted and on cheap refusals, its
backlog drains, and admitted requests keep their latency. Outside a surge the lag is not
consulted (a hot swap's model load or a busy host stalls the loop now and then; that is
no reason to refuse a caller), and the probe stops.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import msgspec

from keel.serving._limit import AdaptiveLimit, FixedLimit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SHED_BODY = msgspec.json.encode(
    {
        "error": "server busy: too many inference requests in flight; retry shortly",
        "code": "overloaded",
    }
)


def inference_model(path: str) -> str | None:
    """The model named by an inference path (``""`` for ``/v1/predict``: the default), or
    None when ``path`` is not an inference route."""
    if path == "/v1/predict":
        return ""
    if path.endswith("/infer") and path.startswith("/v2/models/"):
        return path[11:-6]
    if path.endswith("/predict") and path.startswith("/v1/models/"):
        return path[11:-8]
    return None


SURGE_HOLD_S = 1.0  # a surge lasts this long after the in-flight limit was last reached


class LoopLag:
    """The door's lag gate: how late the running event loop is, consulted during a surge.

    ``surge(now)``: the in-flight limit was reached; the surge lasts until ``now`` +
    ``SURGE_HOLD_S`` (``keep_until``) and the probe task runs (started if it is not).
    ``refuses(now)``: within a surge, the loop is later than ``max_lag_s`` — the larger of
    the probe's last measured lateness and how overdue its next wake-up is at ``now``
    (``late(now)``). The probe wakes every ``interval_s`` (``max_lag_s`` or 2 ms, the
    smaller) and ends once its clock passes ``keep_until``."""

    def __init__(self, max_lag_s: float, *, clock: Callable[[], float] = time.perf_counter) -> None:
        if not max_lag_s > 0:
            raise ValueError(f"Door: max_loop_lag_s must be > 0 s, got {max_lag_s}")
        self.max_lag_s = max_lag_s
        self.interval_s = min(0.002, max_lag_s)
        self._clock = clock
        self.last = 0.0
        self.ticks = 0  # probe wake-ups so far
        self.keep_until = -math.inf
        self._due = math.inf
        self._task: asyncio.Task[None] | None = None

    def surge(self, now: float) -> None:
        self.keep_until = now + SURGE_HOLD_S
        task = self._task
        if task is None or task.done():
            self.last, self._due = 0.0, math.inf
            self._task = asyncio.get_running_loop().create_task(
                self._probe(), name="keel-serving-loop-lag"
            )

    def refuses(self, now: float) -> bool:
        return now < self.keep_until and self.late(now) > self.max_lag_s

    def late(self, now: float) -> float:
        return max(self.last, now - self._due)

    async def _probe(self) -> None:
        clock, interval = self._clock, self.interval_s
        while True:
            self._due = clock() + interval
            await asyncio.sleep(interval)
            now = clock()
            self.last = max(0.0, now - self._due)
            self.ticks += 1
            if now > self.keep_until:
                self._due = math.inf
                return

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


class Door:
    """``Door(app, limit, on_shed)``: ``on_shed(model)`` is called per refusal with the
    path's model name (``""`` for the default model; the caller maps it to a served name —
    never a label minted from the URL). ``max_loop_lag_s``: during a surge, refuse too
    while the event loop is later than this (see the module doc; None: no lag gate)."""

    def __init__(
        self,
        app: ASGIApp,
        limit: FixedLimit | AdaptiveLimit,
        on_shed: Callable[[str], None],
        *,
        retry_after_s: int = 1,
        max_loop_lag_s: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.app = app
        self.lag = None if max_loop_lag_s is None else LoopLag(max_loop_lag_s, clock=clock)
        self.lag_shed = 0
        self.policy = limit
        self.on_shed = on_shed
        self.in_flight = 0
        self.shed = 0
        self._clock = clock
        self._start = {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(SHED_BODY)).encode()),
                (b"retry-after", str(retry_after_s).encode()),
            ],
        }
        self._body = {"type": "http.response.body", "body": SHED_BODY, "more_body": False}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        model = inference_model(scope["path"])
        if model is None:
            await self.app(scope, receive, send)
            return
        policy, lag = self.policy, self.lag
        full = self.in_flight >= policy.limit
        lagging = False
        if lag is not None:
            if full:
                lag.surge(self._clock())
            else:
                lagging = lag.refuses(self._clock())
        if full or lagging:
            if full:
                policy.on_refused()
            else:
                self.lag_shed += 1
            self.shed += 1
            self.on_shed(model)
            await send(self._start)
            await send(self._body)
            return
        self.in_flight += 1
        t0 = self._clock()
        if self.in_flight >= policy.limit:
            policy.on_binding()
            if lag is not None:
                lag.surge(t0)
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            policy.on_sample(self._clock() - t0)


def shed_counter(counters: Mapping[str, Any], default: str) -> Callable[[str], None]:
    """``on_shed`` for a Door: increments the served model's counter child (resolved once),
    the default model's for ``/v1/predict`` or a name this server does not serve."""
    fallback = counters[default]

    def on_shed(model: str) -> None:
        counters.get(model, fallback).inc()

    return on_shed
