"""Running the app under uvicorn (uvloop + httptools when installed)."""

from __future__ import annotations

import importlib.util
from typing import Any


def uvicorn_config(app: Any, host: str = "127.0.0.1", port: int = 8080, **kw: Any) -> Any:
    import uvicorn

    fast = importlib.util.find_spec("uvloop") is not None
    http = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop" if fast else "asyncio",
        http=http,
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=30,
        **kw,
    )


def serve(app: Any, host: str = "127.0.0.1", port: int = 8080, **kw: Any) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's graceful shutdown: in-flight requests finish)."""
    import uvicorn

    uvicorn.Server(uvicorn_config(app, host, port, **kw)).run()
