"""serve: the Keel model server — verified artifacts, online features, OIP v2 + /v1/predict.

Wiring only: the logic is keel.serving; the app convention (settings, --help, JSON logs,
start/ready/stopped lines, one-line errors and exit codes) is keel.telemetry.app
(docs/apps.md). ``model`` is an artifact path (loaded once) or ``name@alias`` in the
registry (followed: an alias move hot-swaps the model with no failed request). ``shadow``
and ``canary`` name other aliases of the same model. SIGTERM/SIGINT: stop accepting,
finish in-flight requests, flush the prediction log, exit 0.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from keel.telemetry.app import App, AppConfigError, AppContext, AppError


class Settings(BaseModel):
    """serve settings (TOML `[serve]`, `KEEL_SERVE_<KEY>`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, description="artifact path, or name@alias in the registry")
    name: str | None = Field(default=None, description="served model name (default: from model)")
    trust_keys: list[Path] = Field(
        default_factory=list, description="PEM public keys of trusted signers (JSON list)"
    )
    allow_unsigned: bool = Field(
        default=False, description="accept unsigned artifacts (hashes still checked); local only"
    )
    home: Path = Field(default=Path(".keel"), description="embedded registry, bus, online store")
    registry_tracking_uri: str | None = Field(
        default=None, description="MLflow server URL (default: the embedded registry in home)"
    )
    registry_db_url: str | None = Field(
        default=None, description="the MLflow server's PostgreSQL URL (with registry_tracking_uri)"
    )
    poll_s: float = Field(default=5.0, gt=0, le=3600, description="registry alias poll interval")
    control_stream: str = Field(
        default="models",
        description="stream carrying model.alias_moved (consumed) and canary.failed (published)",
    )
    shadow: str | None = Field(default=None, description="alias of the shadow variant")
    canary: str | None = Field(default=None, description="alias of the canary variant")
    canary_fraction: float = Field(default=0.1, ge=0, le=1, description="canary traffic share")
    canary_max_error_rate: float = Field(default=0.01, ge=0, le=1, description="canary SLO")
    canary_max_p99_s: float = Field(default=0.05, gt=0, description="canary latency SLO")
    canary_min_requests: int = Field(default=50, ge=1, description="requests before judging")
    online_url: str | None = Field(
        default=None,
        description="online store (redis://...); default $KEEL_REDIS_URL, else SQLite in home",
    )
    bus_url: str | None = Field(
        default=None, description="event bus; default $KEEL_NATS_URL, else the embedded log in home"
    )
    log_predictions: bool = Field(default=True, description="log every prediction to the bus")
    predictions_stream: str = Field(default="predictions", description="prediction log stream")
    instance: str | None = Field(
        default=None,
        description="replica name for the alias-event consumer (default: the host name)",
    )
    host: str = Field(default="127.0.0.1", description="listen address")
    port: int = Field(default=8080, ge=0, le=65535, description="listen port (0: any)")
    max_batch_rows: int = Field(
        default=64, ge=1, le=65536, description="rows per forward pass (1: off)"
    )
    max_wait_s: float = Field(default=0.001, ge=0, le=1, description="max wait to fill a batch")
    max_queue_rows: int = Field(default=1024, ge=1, description="admission queue; beyond: 503")
    forward_in_thread: bool | Literal["auto"] = Field(
        default="auto",
        description="run forward passes off the event loop (auto: inline for models on the "
        "NumPy fast path, on a thread otherwise)",
    )
    threads: int = Field(default=1, ge=1, le=256, description="torch intra-op threads")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="torch device")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="request body limit")
    max_in_flight: int = Field(
        default=128,
        ge=1,
        description="inference requests admitted at once; more get 503 + Retry-After at the door",
    )
    adaptive_in_flight: bool = Field(
        default=True,
        description=(
            "under overload (refusals at the door) lower the in-flight limit while the admitted "
            "latency exceeds 2x its usual value, so admitted requests keep their latency; "
            "max_in_flight stays the ceiling"
        ),
    )
    max_loop_lag_s: float = Field(
        default=0.001,
        ge=0,
        le=1,
        description=(
            "during a surge (the in-flight limit reached within the last second), refuse "
            "inference requests at the door (503 + Retry-After) while the event loop runs "
            "later than this: requests waiting in socket buffers for a busy loop are what "
            "the in-flight limit cannot see (0: off)"
        ),
    )


APP = App(
    "serve",
    Settings,
    summary="Serve a verified model over HTTP (Open Inference Protocol v2 + /v1/predict).",
    description=(
        "Loads `model` (an artifact, or name@alias followed in the registry), verified with\n"
        "`trust_keys` before deserialisation; fetches online features per entity; micro-batches;\n"
        "sheds load with 503 + Retry-After; logs predictions to the bus; /metrics, /healthz,\n"
        "/readyz, /openapi.json. Alias moves hot-swap the model."
    ),
)


def run(settings: Settings, ctx: AppContext) -> None:
    from keel.artifacts import ArtifactError, TrustPolicy
    from keel.events import Event, EventsError, open_bus
    from keel.features import FeaturesError, open_online_store
    from keel.serving import (
        AliasFollower,
        BatchingConfig,
        CanaryConfig,
        CanaryPolicy,
        LimitConfig,
        ModelRef,
        ModelService,
        PredictionLog,
        ServingError,
        ServingTelemetry,
        configure_torch_threads,
        create_app,
        load_predictor,
    )
    from keel.serving._server import uvicorn_config

    if not settings.trust_keys and not settings.allow_unsigned:
        raise AppConfigError(
            "set trust_keys (KEEL_SERVE_TRUST_KEYS='[\"keys/pub.pem\"]') or allow_unsigned=true"
        )
    try:
        policy = TrustPolicy.from_files(settings.trust_keys, allow_unsigned=settings.allow_unsigned)
    except ArtifactError as exc:
        raise AppConfigError(f"trust_keys: {exc}") from exc
    is_ref = "@" in settings.model and not Path(settings.model).exists()
    ref = ModelRef.parse(settings.model) if is_ref else None
    if (settings.shadow or settings.canary) and ref is None:
        raise AppConfigError("shadow/canary name aliases: serve the model by name@alias")
    home = settings.home.absolute()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AppError(f"cannot create home {home}: {exc.strerror}") from exc
    configure_torch_threads(settings.threads)
    load_kw: dict[str, Any] = {"device": settings.device}
    telemetry = ServingTelemetry()
    bus = store = log = None
    followers: list[AliasFollower] = []
    workdir = Path(tempfile.mkdtemp(prefix="keel-serve-", dir=home))
    try:
        try:
            store = open_online_store(
                settings.online_url or os.environ.get("KEEL_REDIS_URL") or None, home=home
            )
            bus = open_bus(
                settings.bus_url or os.environ.get("KEEL_NATS_URL") or f"sqlite:///{home}/events.db"
            )
        except (FeaturesError, EventsError) as exc:
            raise AppError(str(exc)) from exc
        if settings.log_predictions:
            log = PredictionLog(bus, stream=settings.predictions_stream, telemetry=telemetry)

        def publish(type_: str, payload: Any) -> None:
            from datetime import UTC, datetime

            bus.publish(  # type: ignore[union-attr]
                settings.control_stream,
                Event.create(
                    type=type_,
                    key=str(payload.get("model", "")),
                    event_time=datetime.now(UTC),
                    payload=dict(payload),
                ),
            )

        first = None
        if ref is None:
            try:
                first = load_predictor(settings.model, policy, **load_kw)
            except ServingError as exc:
                raise AppError(str(exc)) from exc
        name = settings.name or (ref.name if ref is not None else first.name)  # type: ignore[union-attr]
        svc_holder: dict[str, ModelService] = {}
        loop_holder: dict[str, asyncio.AbstractEventLoop] = {}

        def installer(role: str) -> Any:
            def on_load(p: Any) -> None:
                svc = svc_holder["svc"]
                loop = loop_holder.get("loop")
                if loop is None:
                    svc.set_variant(role, p)
                else:
                    loop.call_soon_threadsafe(svc.set_variant, role, p)

            return on_load

        svc = ModelService(
            name,
            store=store,
            log=log,
            telemetry=telemetry,
            batching=BatchingConfig(
                max_batch_rows=settings.max_batch_rows,
                max_wait_s=settings.max_wait_s,
                max_queue_rows=max(settings.max_queue_rows, settings.max_batch_rows),
                in_thread=(
                    None if settings.forward_in_thread == "auto" else settings.forward_in_thread
                ),
            ),
            canary=CanaryConfig(
                settings.canary_fraction,
                CanaryPolicy(
                    max_error_rate=settings.canary_max_error_rate,
                    max_p99_s=settings.canary_max_p99_s,
                    min_requests=settings.canary_min_requests,
                    window=max(500, settings.canary_min_requests),
                ),
            ),
            publish=publish,
        )
        svc_holder["svc"] = svc
        if first is not None:
            svc.set_variant("primary", first)
        else:
            assert ref is not None
            from keel.registry_client import open_registry

            def opener() -> Any:
                if settings.registry_tracking_uri:
                    return open_registry(
                        tracking_uri=settings.registry_tracking_uri, db_url=settings.registry_db_url
                    )
                return open_registry(home)

            roles = [
                ("primary", ref.alias),
                ("shadow", settings.shadow),
                ("canary", settings.canary),
            ]
            for role, alias in roles:
                if not alias:
                    continue
                events = None
                if role == "primary":
                    # one durable per replica (every replica must see every move), stable
                    # across restarts (no leaked consumers): the instance name
                    events = bus.consumer(
                        settings.control_stream,
                        durable=f"serve-{ref.name}-{settings.instance or socket.gethostname()}",
                    )
                f = AliasFollower(
                    opener,
                    ModelRef(ref.name, alias),
                    policy,
                    installer(role),
                    workdir=workdir,
                    poll_s=settings.poll_s,
                    events=events,
                    telemetry=telemetry,
                    load_kw=load_kw,
                )
                f.tick()  # the first load happens before the port opens
                if role == "primary" and f.version is None:
                    raise AppError(f"cannot load {ref}: {f.last_error}")
                followers.append(f)

        async def on_startup() -> None:
            loop_holder["loop"] = asyncio.get_running_loop()
            for f in followers:
                f.start()

        app = create_app(
            svc,
            max_body_bytes=settings.max_body_bytes,
            max_in_flight=settings.max_in_flight,
            adaptive_limit=(
                LimitConfig(
                    initial=settings.max_in_flight,
                    min_limit=min(2, settings.max_in_flight),
                    max_limit=settings.max_in_flight,
                )
                if settings.adaptive_in_flight
                else None
            ),
            max_loop_lag_s=settings.max_loop_lag_s or None,
            on_startup=on_startup,
        )
        import uvicorn

        server = uvicorn.Server(uvicorn_config(app, settings.host, settings.port))

        def watch() -> None:
            while not server.started and not ctx.stop.wait(0.05):
                pass
            if server.started:
                ports = [s.getsockname()[1] for srv in server.servers for s in srv.sockets]
                ctx.ready(
                    model=svc.name,
                    version=svc.primary.version,
                    digest=svc.primary.digest,
                    port=ports[0] if ports else settings.port,
                    variants=sorted(svc.variants),
                )
            ctx.stop.wait()
            server.should_exit = True

        threading.Thread(target=watch, name="keel-serve-watch", daemon=True).start()
        server.run()
        ctx.stop.set()
        ctx.report(version=svc.variants["primary"].predictor.version if svc.ready else None)
    finally:
        for f in followers:
            f.close()
        if log is not None:
            log.close()
            ctx.report(predictions_logged=log.published, predictions_dropped=log.dropped)
        for closable in (store, bus):
            if closable is not None:
                closable.close()


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    return APP.main(run, argv, env)


if __name__ == "__main__":
    sys.exit(main())
