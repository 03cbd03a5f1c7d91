"""The door: a raw ASGI layer in front of the router that refuses inference requests
beyond the in-flight limit before anything else runs.

A refused request costs a path check, a counter compare and two ``send`` calls of bytes
built once: its body is never read (``receive`` is not called), nothing is parsed, routed,
validated or logged, and its answer is a constant 503 with ``Retry-After``. Under overload
the event loop's time goes to the admitted requests, not to refusing the others. Admitted
requests are timed from the door to the end of the inner app; the limit policy
(``FixedLimit`` or ``AdaptiveLimit``) gets those samples.
"""

from __future__ import annotations

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


class Door:
    """``Door(app, limit, on_shed)``: ``on_shed(model)`` is called per refusal with the
    path's model name (``""`` for the default model; the caller maps it to a served name —
    never a label minted from the URL)."""

    def __init__(
        self,
        app: ASGIApp,
        limit: FixedLimit | AdaptiveLimit,
        on_shed: Callable[[str], None],
        *,
        retry_after_s: int = 1,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.app = app
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
        policy = self.policy
        if self.in_flight >= policy.limit:
            policy.on_refused()
            self.shed += 1
            self.on_shed(model)
            await send(self._start)
            await send(self._body)
            return
        self.in_flight += 1
        if self.in_flight >= policy.limit:
            policy.on_binding()
        t0 = self._clock()
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
