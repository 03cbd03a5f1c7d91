"""/metrics exposure: background server, ASGI app, WSGI app, content negotiation."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import pytest

from keel.telemetry import (
    ComponentMetrics,
    TelemetryUnavailableError,
    metrics_asgi_app,
    metrics_wsgi_app,
    redact_url,
    start_metrics_server,
)

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _metrics() -> ComponentMetrics:
    m = ComponentMetrics("serving")
    m.counter("requests_total", "Requests.", labels=("model",)).labels(model="fraud").inc(3)
    return m


def test_background_server_serves_metrics_and_healthz() -> None:
    m = _metrics()
    with start_metrics_server(m.registry, host="127.0.0.1", port=0) as srv:
        assert srv.port > 0 and srv.running
        r = httpx.get(f"{srv.url}/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'keel_serving_requests_total{model="fraud"} 3.0' in r.text
        # the registry is read at scrape time
        m.counter("requests_total", "Requests.", labels=("model",)).labels(model="fraud").inc()
        assert (
            'keel_serving_requests_total{model="fraud"} 4.0' in httpx.get(f"{srv.url}/metrics").text
        )
        om = httpx.get(f"{srv.url}/metrics", headers={"Accept": OPENMETRICS})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.endswith("# EOF\n")
        assert httpx.get(f"{srv.url}/healthz").text == "ok\n"
        assert httpx.get(f"{srv.url}/nope").status_code == 404
    assert not srv.running
    srv.stop()  # idempotent


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(TelemetryUnavailableError, match=str(port)):
            start_metrics_server(_metrics().registry, host="127.0.0.1", port=port)


def test_bad_port_is_rejected() -> None:
    with pytest.raises(ValueError):
        start_metrics_server(_metrics().registry, port=70000)


def test_wsgi_app_negotiates_format() -> None:
    app = metrics_wsgi_app(_metrics().registry)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
        text = client.get("/metrics")
        assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'keel_serving_requests_total{model="fraud"} 3.0' in text.text
        om = client.get("/metrics", headers={"Accept": OPENMETRICS})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.endswith("# EOF\n")


def test_asgi_app_negotiates_format() -> None:
    app = metrics_asgi_app(_metrics().registry)

    async def scrape() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/metrics"), await client.get(
                "/metrics", headers={"Accept": OPENMETRICS}
            )

    text, om = asyncio.run(scrape())
    assert text.status_code == 200
    assert 'keel_serving_requests_total{model="fraud"} 3.0' in text.text
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n")


def test_head_is_answered_without_a_body_and_no_version_banner() -> None:
    with start_metrics_server(_metrics().registry) as srv:
        r = httpx.head(f"{srv.url}/metrics")
        assert r.status_code == 200 and r.content == b""
        assert int(r.headers["content-length"]) > 0
        assert r.headers["server"] == "keel-metrics"
        assert httpx.head(f"{srv.url}/healthz").status_code == 200
        assert "Python" not in httpx.get(f"{srv.url}/metrics").headers["server"]


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_idle_half_open_sockets_neither_pile_up_threads_nor_block_scrapes(
    capfd: pytest.CaptureFixture[str],
) -> None:
    before = threading.active_count()
    with start_metrics_server(_metrics().registry, timeout_s=0.5, max_connections=8) as srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(300)]
        try:
            # the cap closes what it cannot serve; the rest time out: threads stay bounded
            assert threading.active_count() <= before + 1 + 8
            # while idle sockets hold every slot a scrape is shed (closed at once); once
            # they time out (0.5 s) the next scrape is served, as a scraper's retry would be
            for _ in range(50):
                try:
                    r = httpx.get(f"{srv.url}/metrics", timeout=5)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            assert r.status_code == 200 and "keel_serving_requests_total" in r.text
            # garbage and a client that vanishes mid-request get no traceback
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as bad:
                bad.sendall(b"\x16\x03\x01garbage\r\n\r\n")
                assert b"400" in _recv_all(bad)
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as gone:
                gone.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                gone.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
        finally:
            for s in idle:
                s.close()
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


def test_redact_url_masks_passwords_and_tokens() -> None:
    assert redact_url("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact_url("postgresql://keel:pw@db:5432/keel") == "postgresql://keel:***@db:5432/keel"
    assert redact_url("nats://tok3n@127.0.0.1:4222") == "nats://***@127.0.0.1:4222"
    assert redact_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    masked = redact_url("https://h/x?token=abc&mode=ro")
    assert "abc" not in masked and "mode=ro" in masked
    assert redact_url("host=db password='a b' user=k") == "host=db password=*** user=k"
    assert redact_url(None) == ""
    assert "pw" not in redact_url("redis://u:pw@[::1")  # unparsable: still masked
    # nothing secret: the text comes back unchanged (urlunsplit would drop sqlite:////'s slashes)
    assert redact_url("sqlite:////var/keel/events.db") == "sqlite:////var/keel/events.db"
    assert redact_url("sqlite:////k/e.db?x=1#f") == "sqlite:////k/e.db?x=1#f"
