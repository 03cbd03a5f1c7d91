"""/metrics exposure: background server, ASGI app, WSGI app, content negotiation."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from keel.telemetry import (
    ComponentMetrics,
    TelemetryUnavailableError,
    metrics_asgi_app,
    metrics_wsgi_app,
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
