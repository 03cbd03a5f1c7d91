"""The ASGI app: Open Inference Protocol v2 REST, ``/v1/predict``, health, metrics, OpenAPI.

Starlette routes (ADR 0007): a thin layer — bodies are read with a hard size cap and parsed
with msgspec (stdlib ``json`` as the fallback so NaN/Infinity literals reach the schema check
and get a 422 naming the field rather than a parse error); every keel.serving error becomes
its status with a JSON body ``{"error", "code", "errors"?}``; an unexpected exception is a
500 with no traceback in the body (it is logged).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keel.serving._door import Door, shed_counter
from keel.serving._errors import (
    MalformedRequestError,
    NotFoundError,
    OverloadedError,
    ServingError,
)
from keel.serving._limit import AdaptiveLimit, FixedLimit, LimitConfig
from keel.serving._openapi import openapi_spec
from keel.serving._service import ModelService
from keel.serving._telemetry import ServingTelemetry
from keel.telemetry import CORRELATION_HEADER, correlation_scope
from keel.telemetry._server import render_metrics

log = logging.getLogger("keel.serving")
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_IN_FLIGHT = 128  # inference requests admitted at once (see create_app)
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()
JSON = "application/json"


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(_enc.encode(body), status_code=status, media_type=JSON, headers=headers)


def error_response(e: ServingError) -> Response:
    headers = None
    if isinstance(e, OverloadedError):
        headers = {"Retry-After": str(e.retry_after_s)}
    return _json(e.to_json(), e.status, headers)


async def read_json(request: Request, max_bytes: int) -> Any:
    """The body as JSON, refusing more than ``max_bytes`` (413) before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise MalformedRequestError("bad Content-Length header") from None
        if size > max_bytes:
            raise _TooLarge(size, max_bytes)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise _TooLarge(total, max_bytes)
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise MalformedRequestError("empty body: send a JSON object")
    try:
        return _dec.decode(data)
    except msgspec.DecodeError:
        pass
    try:  # NaN / Infinity literals (Python's json.dumps writes them): let the schema name them
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise MalformedRequestError(f"body is not valid JSON: {str(e)[:200]}") from None


class _TooLarge(MalformedRequestError):
    status = 413
    code = "too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"body of {size}+ bytes exceeds the limit of {limit} bytes")


Handler = Callable[[Request], Awaitable[Response]]


def create_app(
    services: ModelService | Mapping[str, ModelService],
    *,
    telemetry: ServingTelemetry | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_in_flight: int | None = DEFAULT_MAX_IN_FLIGHT,
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    server_version: str = "0",
    adaptive_limit: LimitConfig | None = None,
    max_loop_lag_s: float | None = None,
) -> Starlette | Door:
    """The server for ``services`` (one or several models by name; the first is the
    default of ``/v1/predict``). ``telemetry`` defaults to the first service's.

    ``max_in_flight``: inference requests admitted at once (None: no limit). One more is
    refused at the door (``Door``, a raw ASGI layer in front of the router) — 503 +
    Retry-After, counted in ``shed_total{variant="entry"}`` — before its body is read,
    parsed, routed or validated, so an overload costs little per refused request and the
    admitted ones keep their latency (the admission queue behind it bounds rows, this
    bounds the work in front of it). ``adaptive_limit``: the limit follows the admitted
    latency (``AdaptiveLimit``, gradient/AIMD) instead, capped at ``max_in_flight`` when
    set. Sheds (here or at the admission queue) are counted only in ``shed_total``: never in
    ``requests_total`` nor the latency histograms, so an overload burns no availability
    budget and does not flatter the latency SLI. ``max_loop_lag_s``: the door also refuses
    while the event loop runs later than this (a probe's lateness: the wait in socket
    buffers that the in-flight limit cannot see; None: off)."""
    if max_in_flight is not None and (isinstance(max_in_flight, bool) or max_in_flight < 1):
        raise ValueError(f"create_app: max_in_flight must be >= 1 or None, got {max_in_flight}")
    by_name = {services.name: services} if isinstance(services, ModelService) else dict(services)
    if not by_name:
        raise ValueError("create_app: at least one ModelService")
    default = next(iter(by_name.values()))
    tel = telemetry or default.telemetry
    spec_bytes = _enc.encode(openapi_spec(list(by_name), server_version))

    def service(name: str) -> ModelService:
        s = by_name.get(name)
        if s is None:
            raise NotFoundError(
                f"unknown model {name[:128]!r}; this server serves {sorted(by_name)}"
            )
        return s

    def guarded(fn: Handler) -> Handler:
        async def run(request: Request) -> Response:
            cid = request.headers.get(CORRELATION_HEADER)
            with correlation_scope(cid[:128] if cid else None):
                try:
                    return await fn(request)
                except ServingError as e:
                    return error_response(e)
                except Exception:
                    log.exception("unexpected error serving %s", request.url.path)
                    return _json({"error": "internal error (logged)", "code": "internal"}, 500)

        return run

    async def live(request: Request) -> Response:
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        ok = all(s.ready for s in by_name.values())
        return _json({"ready": ok}, 200 if ok else 503)

    async def server_meta(request: Request) -> Response:
        return _json({"name": "keel-serving", "version": server_version, "extensions": []})

    async def model_meta(request: Request) -> Response:
        s = service(request.path_params["name"])
        p = s.primary
        return _json(
            {
                "name": s.name,
                "versions": sorted({v.predictor.version for v in s.variants.values()}),
                "platform": "keel_torch",
                "inputs": [
                    {"name": f.name, "datatype": f.v2_datatype, "shape": [-1]}
                    for f in p.inputs.fields
                ],
                "outputs": [
                    {"name": f.name, "datatype": f.v2_datatype, "shape": [-1]}
                    for f in p.outputs.fields
                ],
                "parameters": {
                    "digest": p.digest,
                    "feature_views": [{"name": n, "version": v} for n, v in p.feature_views],
                    "variants": {r: v.predictor.version for r, v in s.variants.items()},
                },
            }
        )

    async def model_ready(request: Request) -> Response:
        s = service(request.path_params["name"])
        return _json({"name": s.name, "ready": s.ready}, 200 if s.ready else 503)

    async def infer(request: Request) -> Response:
        s = service(request.path_params["name"])
        body = await read_json(request, max_body_bytes)
        return _json(await s.infer_v2(body))

    async def predict(request: Request) -> Response:
        body = await read_json(request, max_body_bytes)
        return _json(await default.predict(body))

    async def predict_named(request: Request) -> Response:
        s = service(request.path_params["name"])
        body = await read_json(request, max_body_bytes)
        return _json(await s.predict(body))

    async def metrics(request: Request) -> Response:
        body, ctype = render_metrics(tel.metrics.registry, request.headers.get("accept"))
        return Response(body, media_type=ctype)

    async def openapi(request: Request) -> Response:
        return Response(spec_bytes, media_type=JSON)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json({"error": f"no route {request.url.path[:200]!r}", "code": "not_found"}, 404)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _json(
            {"error": f"method {request.method} not allowed here", "code": "method_not_allowed"},
            405,
        )

    g = guarded
    routes = [
        Route("/v2/health/live", g(live), methods=["GET"]),
        Route("/v2/health/ready", g(ready), methods=["GET"]),
        Route("/v2", g(server_meta), methods=["GET"]),
        Route("/v2/models/{name}", g(model_meta), methods=["GET"]),
        Route("/v2/models/{name}/ready", g(model_ready), methods=["GET"]),
        Route("/v2/models/{name}/infer", g(infer), methods=["POST"]),
        Route("/v1/predict", g(predict), methods=["POST"]),
        Route("/v1/models/{name}/predict", g(predict_named), methods=["POST"]),
        Route("/healthz", g(live), methods=["GET"]),
        Route("/readyz", g(ready), methods=["GET"]),
        Route("/metrics", g(metrics), methods=["GET"]),
        Route("/openapi.json", g(openapi), methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if on_startup is not None:
            await on_startup()
        try:
            yield
        finally:
            if on_shutdown is not None:
                await on_shutdown()
            for s in by_name.values():
                await s.aclose()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_allowed},
    )
    if max_in_flight is None and adaptive_limit is None and max_loop_lag_s is None:
        return app
    policy: FixedLimit | AdaptiveLimit
    if adaptive_limit is not None:
        if max_in_flight is not None and adaptive_limit.max_limit > max_in_flight:
            adaptive_limit = dataclasses.replace(
                adaptive_limit,
                max_limit=max_in_flight,
                initial=min(adaptive_limit.initial, max_in_flight),
                min_limit=min(adaptive_limit.min_limit, max_in_flight),
            )
        policy = AdaptiveLimit(adaptive_limit)
    else:
        policy = FixedLimit(max_in_flight if max_in_flight is not None else 1 << 30)
    # the shed counter's children, resolved once: a refusal must cost (almost) nothing
    counters = {n: tel.shed.labels(model=n, variant="entry") for n in by_name}
    counters[""] = counters[default.name]
    return Door(app, policy, shed_counter(counters, default.name), max_loop_lag_s=max_loop_lag_s)
