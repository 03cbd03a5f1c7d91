"""NATS-specific behaviour against real nats-server processes."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
from testutil.isolation import nats_url, port_base, unique_name

from keel.events import (
    DurabilityError,
    Event,
    InvalidConfigError,
    StreamConfig,
    UnavailableError,
    open_bus,
)

pytestmark = pytest.mark.integration

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nats-server did not listen on {port}")


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A private nats-server (default JetStream config, monitoring on) for this test."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    port, mport = port_base(41), port_base(42)
    proc = subprocess.Popen(
        [
            binary,
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            str(mport),
            "-js",
            "-sd",
            str(tmp_path / "js"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port)
        _wait_port(mport)
        yield f"nats://127.0.0.1:{port}", f"http://127.0.0.1:{mport}"
    finally:
        proc.kill()
        proc.wait()


def test_require_sync_always_refuses_a_server_without_it(own_server: tuple[str, str]) -> None:
    url, monitor = own_server
    with pytest.raises(InvalidConfigError, match="monitor_url"):
        open_bus(url, require_sync_always=True)
    # This server runs JetStream's default config (fsync every 2 minutes): refused, clearly.
    with pytest.raises(DurabilityError, match="sync_interval: always"):
        open_bus(url, require_sync_always=True, monitor_url=monitor)
    bus = open_bus(url, require_sync_always=False, monitor_url=monitor)  # explicit opt-out
    bus.publish("dur", Event.create(type="t", key="k", event_time=T0, payload=b"{}"))
    bus.close()


def test_stream_created_idempotently_with_keel_config_and_msg_id_dedupe() -> None:
    s = unique_name("natscfg")
    cfg = StreamConfig(max_age_s=3600, max_events=1000, duplicate_window_s=30)
    a, b = open_bus(nats_url(), stream_config=cfg), open_bus(nats_url(), stream_config=cfg)

    async def inspect_and_raw_publish() -> tuple[Any, bool | None]:
        nc = await nats.connect(nats_url())
        js = nc.jetstream()
        info = await js.stream_info(s)
        # A non-Keel producer publishing with the same Nats-Msg-Id is deduplicated.
        ack = await js.publish(f"keel.{s}", b"raw", headers={"Nats-Msg-Id": "same-id"})
        await nc.close()
        return info.config, ack.duplicate

    try:
        a.publish(s, Event.create(type="t", key="k", event_time=T0, payload=b"{}", id="same-id"))
        b.publish(s, Event.create(type="t", key="k", event_time=T0, payload=b"{}", id="other"))
        config, dup = asyncio.run(inspect_and_raw_publish())
        assert dup is True
        assert config.subjects == [f"keel.{s}"]  # type: ignore[attr-defined]
        assert str(getattr(config.storage, "value", config.storage)) == "file"  # type: ignore[attr-defined]
        assert config.duplicate_window == 30  # type: ignore[attr-defined]
        assert config.max_age == 3600 and config.max_msgs == 1000  # type: ignore[attr-defined]
        assert a.stream_info(s).count == 2
        assert s in a.streams()
    finally:
        a.delete_stream(s)
        a.close()
        b.close()


def test_ack_metadata_fast_parse_agrees_with_nats_py() -> None:
    """Keel parses the JetStream reply subject itself on the consume hot path; nats-py's own
    `Msg.metadata` is the oracle, for the classic form and the domain/account form."""
    from nats.aio.msg import Msg

    from keel.events._nats import _ack_metadata

    replies = [
        "$JS.ACK.orders.worker.3.1042.17.1700000000000000000.25",
        "$JS.ACK.hub.ACCHASH.orders.worker.1.7.7.1700000000000000000.0.rand",
        "$JS.ACK._.ACCHASH.s.c.12.99999999999.5.1700000000000000000.123456.x",
    ]
    for reply in replies:
        m = Msg(_client=None, reply=reply)  # type: ignore[arg-type]
        md = m.metadata
        assert _ack_metadata(m) == (md.sequence.stream, md.num_delivered, md.num_pending)


def test_wrong_password_and_unreachable_address_are_named_without_the_password(
    tmp_path: Path,
) -> None:
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    port = port_base(43)
    proc = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port), "--user", "keel", "--pass", "s3cret-pw"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port)
        with pytest.raises(UnavailableError) as auth:
            open_bus(f"nats://keel:wrong-pw@127.0.0.1:{port}", connect_timeout_s=2.0)
        assert "refused the credentials" in str(auth.value)
        assert "wrong-pw" not in str(auth.value) and f"127.0.0.1:{port}" in str(auth.value)
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(UnavailableError) as down:
        open_bus(f"nats://keel:s3cret-pw@127.0.0.1:{port}", connect_timeout_s=1.0)
    assert "cannot reach NATS at nats://keel:***@127.0.0.1" in str(down.value)
    assert "s3cret-pw" not in str(down.value)
