"""Exposing a registry at /metrics: a background HTTP server, an ASGI app, a WSGI app.

All three negotiate the format the way prometheus_client does: the Prometheus
text format (0.0.4) by default, OpenMetrics when the scraper's `Accept` header
asks for `application/openmetrics-text`.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.asgi import make_asgi_app
from prometheus_client.exposition import choose_encoder, make_wsgi_app

from keel.telemetry._errors import TelemetryUnavailableError

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT_S",
    "MetricsServer",
    "metrics_asgi_app",
    "metrics_wsgi_app",
    "start_metrics_server",
]


def render_metrics(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """Encode `registry` for a scraper that sent `accept`; returns (body, content type)."""
    encoder, content_type = choose_encoder(accept or "")
    return bytes(encoder(registry)), content_type


def metrics_asgi_app(registry: CollectorRegistry) -> Callable[..., Any]:
    """An ASGI app serving `registry` (mount it at /metrics in FastAPI/Starlette)."""
    app: Callable[..., Any] = make_asgi_app(registry=registry)
    return app


def metrics_wsgi_app(registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    """A WSGI app serving `registry` (mount it at /metrics in any WSGI framework)."""
    app: Callable[..., Iterable[bytes]] = make_wsgi_app(registry=registry)
    return app


# A scraper that opens a connection and sends nothing is dropped after this long.
DEFAULT_TIMEOUT_S = 5.0
# At most this many connections are served at once; more are closed at accept
# (a scraper retries next interval), so idle sockets cannot pile up threads.
DEFAULT_MAX_CONNECTIONS = 32


class _BoundedServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with a cap on concurrent connections and quiet errors."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: a burst of connects is queued, not refused

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the cap: close it, keep serving others
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets, times out or sends garbage is its own problem: no traceback."""
        return


class MetricsServer:
    """A running background /metrics server; `stop()` shuts it down and joins its thread."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.host: str = str(host)
        self.port: int = int(port)

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:9100 (append /metrics or /healthz)."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler_for(registry: CollectorRegistry, timeout_s: float) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # headers and body go out as two writes; with Nagle on, a keep-alive
        # scraper's delayed ACK stalls the second one by ~40 ms
        disable_nagle_algorithm = True
        # socket timeout: a half-open or idle keep-alive connection is closed after it
        timeout = timeout_s
        server_version = "keel-metrics"

        def version_string(self) -> str:  # no Python version banner in `Server`
            return self.server_version

        def do_GET(self) -> None:
            self._respond(head=False)

        def do_HEAD(self) -> None:
            self._respond(head=True)

        def _respond(self, *, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, ctype = render_metrics(registry, self.headers.get("Accept"))
                self._send(200, body, ctype, head=head)
            elif path == "/healthz":
                self._send(200, b"ok\n", "text/plain; charset=utf-8", head=head)
            else:
                self._send(
                    404,
                    b"not found: try /metrics or /healthz\n",
                    "text/plain; charset=utf-8",
                    head=head,
                )

        def _send(self, status: int, body: bytes, ctype: str, *, head: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
            return

    return _Handler


def start_metrics_server(
    registry: CollectorRegistry,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> MetricsServer:
    """Serve `registry` at http://host:port/metrics (and /healthz; GET and HEAD) from a daemon thread.

    `port=0` picks a free port; read it back from `.port`. A connection idle for
    `timeout_s` is closed; beyond `max_connections` concurrent connections new
    ones are closed at once. Raises `TelemetryUnavailableError` when the address
    cannot be bound.
    """
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    if not timeout_s > 0 or max_connections < 1:
        raise ValueError("timeout_s must be > 0 and max_connections >= 1")
    try:
        server = _BoundedServer((host, port), _handler_for(registry, timeout_s), max_connections)
    except OSError as exc:
        hint = " (port in use: pick another or port=0)" if exc.errno == errno.EADDRINUSE else ""
        raise TelemetryUnavailableError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}{hint}"
        ) from exc
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.1},
        name=f"keel-metrics-{server.server_address[1]}",
        daemon=True,
    )
    thread.start()
    return MetricsServer(server, thread)
