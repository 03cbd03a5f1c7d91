"""The server under test, in its own process: ``python -m bench.serving.server ARGS``.

``--bare`` serves a constant JSON answer from a raw ASGI app on the same uvicorn stack
(the framework floor, the same-run anchor); otherwise a keel.serving ModelService.
"""

from __future__ import annotations

import argparse
import time
from typing import Any


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        msg = await receive()
        more = msg.get("more_body", False)
    body = b'{"predictions":[{"p":0.5}]}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bare", action="store_true")
    ap.add_argument("--artifact")
    ap.add_argument("--pub")
    ap.add_argument("--online", default=None)
    ap.add_argument("--redis-prefix", default="keelbench:features:")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-s", type=float, default=0.001)
    ap.add_argument("--max-queue", type=int, default=1024)
    ap.add_argument(
        "--forward",
        choices=["auto", "inline", "thread"],
        default="auto",
        help="where forward passes run (auto: the server's default)",
    )
    ap.add_argument("--bus", default=None)
    ap.add_argument("--max-in-flight", type=int, default=128)
    ap.add_argument(
        "--adaptive",
        action="store_true",
        help="adaptive in-flight limit (capped at --max-in-flight)",
    )
    ap.add_argument(
        "--max-lag-ms",
        type=float,
        default=None,
        help="the door's event-loop lag gate (default: off)",
    )
    ap.add_argument(
        "--swap-every",
        type=float,
        default=0.0,
        help="hot-swap the model every this many seconds (reload + verify the artifact on a "
        "thread, install it on the loop, as the serve app's alias follower does)",
    )
    ap.add_argument("--swap-log", default=None, help="one 'load_start installed' line per swap")
    a = ap.parse_args()
    from keel.serving._server import serve

    if a.bare:
        serve(bare_app, port=a.port)
        return
    from keel.artifacts import TrustPolicy
    from keel.features import open_online_store
    from keel.serving import (
        BatchingConfig,
        LimitConfig,
        ModelService,
        PredictionLog,
        create_app,
        load_predictor,
    )

    p = load_predictor(a.artifact, TrustPolicy.from_files([a.pub]), threads=1, device="cpu")
    store = open_online_store(a.online, prefix=a.redis_prefix)
    log = None
    if a.bus:
        from keel.events import open_bus

        log = PredictionLog(open_bus(a.bus))
    svc = ModelService(
        p.name,
        p,
        store=store,
        log=log,
        batching=BatchingConfig(
            max_batch_rows=a.max_batch,
            max_wait_s=a.max_wait_s,
            max_queue_rows=max(a.max_queue, a.max_batch),
            in_thread={"auto": None, "inline": False, "thread": True}[a.forward],
        ),
    )
    limit = LimitConfig(initial=min(32, a.max_in_flight)) if a.adaptive else None
    lag = None if a.max_lag_ms is None else a.max_lag_ms / 1000
    on_startup = None
    if a.swap_every > 0:
        on_startup = swapper(svc, a, TrustPolicy.from_files([a.pub]), load_predictor)
    app = create_app(
        svc,
        max_in_flight=a.max_in_flight,
        adaptive_limit=limit,
        max_loop_lag_s=lag,
        on_startup=on_startup,
    )
    serve(app, port=a.port)


def swapper(svc: Any, a: Any, trust: Any, load: Any) -> Any:
    """An on_startup hook that starts a thread hot-swapping the primary variant every
    ``a.swap_every`` s: the artifact is loaded and verified on the thread, then installed
    on the event loop (CLOCK_MONOTONIC times of both appended to ``a.swap_log``)."""
    import asyncio
    import threading

    async def start() -> None:
        loop = asyncio.get_running_loop()

        def run() -> None:
            while True:
                time.sleep(a.swap_every)
                t0 = time.monotonic()
                p = load(a.artifact, trust, threads=1, device="cpu")
                done = threading.Event()
                t1 = [0.0]

                def install(p: Any = p, t1: list[float] = t1, done: threading.Event = done) -> None:
                    svc.set_variant("primary", p)
                    t1[0] = time.monotonic()
                    done.set()

                loop.call_soon_threadsafe(install)
                done.wait()
                if a.swap_log:
                    with open(a.swap_log, "a") as f:
                        f.write(f"{t0:.6f} {t1[0]:.6f}\n")

        threading.Thread(target=run, name="bench-swapper", daemon=True).start()

    return start


if __name__ == "__main__":
    main()
