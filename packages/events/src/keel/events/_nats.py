"""The NATS JetStream backend, behind a synchronous facade.

nats-py is asyncio-only; `NatsBus` runs one event loop in a daemon thread and submits
coroutines to it, so callers use the same blocking API as the embedded backend. Batch
publishes are pipelined (`publish_async`: every message is written before any ack is awaited),
so a batch costs about one round trip plus the bytes.

Mapping: a Keel stream `s` is a JetStream stream named `s` with the one subject `<prefix>.s`
(file storage, limits retention, discard old, `duplicate_window` from StreamConfig); its
dead-letter queue is the stream `s__dlq` on `<prefix>.dlq.s`. A durable consumer is a durable
pull consumer with explicit acks. Publish dedupe uses the `Nats-Msg-Id` header (= event id)
within the duplicate window. `max_deliver` is enforced by Keel (the server's is unlimited)
so an event over the limit lands in the dead-letter stream instead of just stopping.

Durability: JetStream acks a publish once the message is written to the stream's file, but
fsyncs only every `sync_interval` (server config, default 2 minutes). A broker *process* crash
loses nothing acked (the OS has the data); a *host* crash or power loss can lose up to the
last interval of acked writes on a single replica. Stream options cannot change that; the
server must run with `jetstream { sync_interval: always }` (nats-server >= 2.10) or streams
need `num_replicas=3` in a cluster. Keel exposes `NatsOptions(require_sync_always=True,
monitor_url=...)`, which checks the server's /varz at open and refuses a server without it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.js import api

from keel.events._bus import (
    DEFAULT_MAX_EVENT_BYTES,
    Bus,
    Consumer,
    ConsumerInfo,
    DeadLetter,
    Delivery,
    PublishAck,
    StoredEvent,
    StreamInfo,
    check_publishable,
    check_sizes,
    count_duplicates,
)
from keel.events._config import (
    DLQ_SUFFIX,
    ConsumerConfig,
    StartPosition,
    StreamConfig,
    check_name,
    check_stream_name,
    consumer_config,
    redact_url,
)
from keel.events._envelope import Event, decode_event, encode_event
from keel.events._errors import (
    ConflictError,
    DurabilityError,
    EventsError,
    InvalidConfigError,
    InvalidEventError,
    NotFoundError,
    UnavailableError,
    UnknownSchemaError,
)
from keel.events._metrics import EventsMetrics
from keel.events._schemas import SchemaRegistry

T = TypeVar("T")

_MSG_ID = "Nats-Msg-Id"
_H_DURABLE = "Keel-Dlq-Consumer"
_H_SEQ = "Keel-Dlq-Seq"
_H_REASON = "Keel-Dlq-Reason"
_H_DELIVERIES = "Keel-Dlq-Deliveries"
_H_EVENT_ID = "Keel-Dlq-Event-Id"
_H_TIME = "Keel-Dlq-Time"
_HEADER_ROOM = 8192  # bytes of a message's max_payload left for headers
_MAX_RECLAIM_SPAN = 200_000  # stream sequences scanned by a reclaim


@dataclass(frozen=True)
class NatsOptions:
    """NATS-specific settings (pass as keyword arguments to `open_bus`).

    subject_prefix: subjects are `<prefix>.<stream>`.
    num_replicas: replicas of streams Keel creates (3 in a cluster for crash durability).
    require_sync_always / monitor_url: refuse to open unless the server (its /varz at
        monitor_url) runs with `sync_interval: always` (fsync before every ack).
    request_timeout_s: JetStream API and publish-ack timeout.
    connect_timeout_s: initial connection timeout; afterwards the client reconnects forever.
    max_pending_publishes: pipelined publishes in flight at once.
    """

    subject_prefix: str = "keel"
    num_replicas: int = 1
    require_sync_always: bool = False
    monitor_url: str | None = None
    request_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    max_pending_publishes: int = 4000
    name: str = "keel-events"
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES

    def __post_init__(self) -> None:
        check_name("subject prefix", self.subject_prefix)
        if not (1 <= self.num_replicas <= 5):
            raise InvalidConfigError(f"num_replicas must be in [1, 5], got {self.num_replicas}")
        if self.require_sync_always and not self.monitor_url:
            raise InvalidConfigError(
                "require_sync_always=True needs monitor_url (the server's HTTP monitoring "
                "endpoint, e.g. http://127.0.0.1:8222) to check the server's sync setting"
            )
        if self.request_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise InvalidConfigError("timeouts must be > 0")
        if self.max_pending_publishes < 1:
            raise InvalidConfigError("max_pending_publishes must be >= 1")


def check_sync_always(monitor_url: str, timeout_s: float = 5.0) -> None:
    """Raise DurabilityError unless the server at `monitor_url` fsyncs every write."""
    url = monitor_url.rstrip("/") + "/varz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # (config URL)
            varz = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise UnavailableError(f"cannot read NATS server config from {url}: {exc}") from exc
    js_config = (varz.get("jetstream") or {}).get("config") or {}
    if js_config.get("sync_always") is not True:
        raise DurabilityError(
            f"nats-server {varz.get('version', '?')} at {monitor_url} does not fsync every write "
            "(JetStream `sync_interval: always` is not set; it needs nats-server >= 2.10): "
            "acknowledged events can be lost if the host crashes. Set it in the server's "
            "`jetstream {}` block, or open the bus with require_sync_always=False to accept it."
        )


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _Loop:
    """An asyncio loop in a daemon thread; `run` submits a coroutine and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="keel-events-nats", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout_s)
        except concurrent.futures.TimeoutError as exc:
            fut.cancel()
            raise UnavailableError(f"NATS call timed out after {timeout_s:.1f}s") from exc

    def stop(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


def _translate(exc: BaseException, what: str) -> BaseException:
    if isinstance(exc, EventsError):
        return exc
    if isinstance(exc, nats.js.errors.NotFoundError):
        return NotFoundError(f"{what}: not found ({exc})")
    if isinstance(
        exc,
        nats.errors.TimeoutError
        | asyncio.TimeoutError
        | nats.errors.NoServersError
        | nats.errors.ConnectionClosedError
        | nats.errors.NoRespondersError
        | nats.errors.OutboundBufferLimitError
        | nats.js.errors.NoStreamResponseError
        | nats.js.errors.ServiceUnavailableError
        | nats.errors.StaleConnectionError
        | ConnectionError
        | OSError,
    ):
        return UnavailableError(f"NATS unavailable while {what}: {exc!r}; retry")
    if isinstance(exc, nats.js.errors.APIError | nats.errors.Error):
        return EventsError(f"NATS error while {what}: {exc!r}")
    return exc


class NatsBus(Bus):
    """The JetStream-backed bus. Prefer `open_bus("nats://host:4222")`."""

    def __init__(
        self,
        url: str,
        *,
        options: NatsOptions | None = None,
        stream_config: StreamConfig | None = None,
        schemas: SchemaRegistry | None = None,
        metrics: EventsMetrics,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.url = url
        self.options = options or NatsOptions()
        self._stream_config = stream_config or StreamConfig()
        self._schemas = schemas
        self._metrics = metrics
        self._clock = clock or _utc_now
        self._known_streams: set[str] = set()
        self._closed = False
        if self.options.require_sync_always:
            assert self.options.monitor_url is not None
            check_sync_always(self.options.monitor_url)
        self._loop = _Loop()
        self._last_error: BaseException | None = None
        self._auth_error: BaseException | None = None
        try:
            self._nc = self._run(self._connect(), "connecting", self.options.connect_timeout_s + 5)
        except BaseException as exc:
            self._loop.stop()
            raise self._connect_error(exc) from None
        self._js = self._nc.jetstream(timeout=self.options.request_timeout_s)
        self._js._publish_async_pending_semaphore = asyncio.Semaphore(  # bounded pipeline
            self.options.max_pending_publishes
        )

    async def _connect(self) -> Any:
        return await asyncio.wait_for(
            nats.connect(
                self.url,
                name=self.options.name,
                connect_timeout=self.options.connect_timeout_s,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                error_cb=self._on_error,
                disconnected_cb=_ignore,
                reconnected_cb=_ignore,
                closed_cb=_ignore,
            ),
            self.options.connect_timeout_s,
        )

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = exc
        # sticky: the server sends -ERR 'Authorization Violation' and closes; a retry's
        # "connection reset" must not hide it (CI saw only the reset as the last error)
        if _is_auth_error(exc):
            self._auth_error = exc

    def _connect_error(self, exc: BaseException) -> BaseException:
        """One clear error for a failed first connection: bad credentials or unreachable
        address, named as such, with the URL's password redacted."""
        if isinstance(exc, EventsError) and not isinstance(exc, UnavailableError):
            return exc
        where = redact_url(self.url)
        cause = self._last_error or exc.__cause__ or exc
        text = f"{type(cause).__name__}: {cause}".strip(": ")
        if self._auth_error is not None or _is_auth_error(cause):
            return UnavailableError(
                f"NATS at {where} refused the credentials (authorization violation): check "
                "the user and password in the bus URL"
            )
        return UnavailableError(
            f"cannot reach NATS at {where} within {self.options.connect_timeout_s:g}s "
            f"({text or 'no answer'}): is the server running and the address right?"
        )

    def _run(self, coro: Coroutine[Any, Any, T], what: str, timeout_s: float | None = None) -> T:
        if self._closed:
            coro.close()
            raise EventsError("the bus is closed")
        t = timeout_s if timeout_s is not None else self.options.request_timeout_s + 5

        async def guarded() -> T:
            try:
                return await coro
            except BaseException as exc:
                raise _translate(exc, what) from exc

        return self._loop.run(guarded(), t)

    # -- streams --------------------------------------------------------------------------
    def _subject(self, stream: str) -> str:
        return f"{self.options.subject_prefix}.{stream}"

    def _dlq_subject(self, stream: str) -> str:
        return f"{self.options.subject_prefix}.dlq.{stream}"

    async def _ensure_stream(self, stream: str, dlq: bool = False) -> None:
        name = stream + DLQ_SUFFIX if dlq else stream
        if name in self._known_streams:
            return
        sc = self._stream_config
        config = api.StreamConfig(
            name=name,
            subjects=[self._dlq_subject(stream) if dlq else self._subject(stream)],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            discard=api.DiscardPolicy.OLD,
            max_age=None if dlq or sc.max_age_s is None else sc.max_age_s,
            max_msgs=-1 if dlq or sc.max_events is None else sc.max_events,
            duplicate_window=sc.duplicate_window_s,
            num_replicas=self.options.num_replicas,
        )
        try:
            await self._js.stream_info(name)
        except nats.js.errors.NotFoundError:
            try:
                await self._js.add_stream(config)
            except nats.js.errors.BadRequestError:
                await self._js.stream_info(name)  # created concurrently with another config
        self._known_streams.add(name)

    # -- publish --------------------------------------------------------------------------
    def publish(self, stream: str, event: Event) -> PublishAck:
        return self.publish_batch(stream, [event])[0]

    def publish_batch(self, stream: str, events: Sequence[Event]) -> list[PublishAck]:
        check_stream_name(stream)
        if not events:
            return []
        check_publishable(events, self._schemas)
        replace = msgspec.structs.replace
        now = self._clock()
        msgs = [(ev.id, encode_event(replace(ev, publish_time=now))) for ev in events]
        return self._publish_many(stream, msgs)

    def publish_raw(self, stream: str, data: bytes, msg_id: str) -> PublishAck:
        check_stream_name(stream)
        if not isinstance(data, bytes) or not isinstance(msg_id, str) or not msg_id:
            raise InvalidEventError("publish_raw expects bytes and a non-empty msg_id")
        return self._publish_many(stream, [(msg_id, data)])[0]

    @property
    def max_event_bytes(self) -> int:
        """The payload limit: `max_event_bytes`, or less if the server's max_payload (minus
        headroom for headers) is smaller."""
        server = int(getattr(self._nc, "max_payload", 0) or 0)
        limit = self.options.max_event_bytes
        return min(limit, server - _HEADER_ROOM) if server > _HEADER_ROOM else limit

    def _publish_many(self, stream: str, msgs: list[tuple[str, bytes]]) -> list[PublishAck]:
        check_sizes([len(d) for _, d in msgs], [m for m, _ in msgs], self.max_event_bytes)
        t0 = time.perf_counter()
        acks = self._run(
            self._apublish(stream, self._subject(stream), msgs), f"publishing to {stream}"
        )
        dups = count_duplicates(acks)
        self._metrics.published(stream, len(acks) - dups, dups, time.perf_counter() - t0)
        return acks

    async def _apublish(
        self,
        stream: str,
        subject: str,
        msgs: list[tuple[str, bytes]],
        headers: Sequence[dict[str, str]] | None = None,
    ) -> list[PublishAck]:
        await self._ensure_stream(stream, dlq=subject != self._subject(stream))
        js = self._js
        if len(msgs) == 1:
            hdr = {_MSG_ID: msgs[0][0], **(headers[0] if headers else {})}
            r = await js.publish(subject, msgs[0][1], headers=hdr)
            return [PublishAck(stream, int(r.seq), bool(r.duplicate))]
        futures = []
        for i, (msg_id, data) in enumerate(msgs):
            hdr = {_MSG_ID: msg_id, **(headers[i] if headers else {})}
            futures.append(await js.publish_async(subject, data, headers=hdr))
        results = await asyncio.wait_for(
            asyncio.gather(*futures), timeout=self.options.request_timeout_s
        )
        return [PublishAck(stream, int(r.seq), bool(r.duplicate)) for r in results]

    # -- consume --------------------------------------------------------------------------
    def consumer(
        self,
        stream: str,
        durable: str,
        *,
        ack_wait_s: float = 30.0,
        max_deliver: int = 5,
        backoff_s: tuple[float, ...] = (1.0, 5.0, 30.0),
        start: StartPosition | None = None,
        schemas: SchemaRegistry | None = None,
        instance: str | None = None,
    ) -> NatsConsumer:
        config = consumer_config(
            stream,
            durable,
            ack_wait_s=ack_wait_s,
            max_deliver=max_deliver,
            backoff_s=backoff_s,
            start=start,
            schemas=schemas,
        )
        sub = self._run(self._aconsumer(stream, durable, config), f"creating consumer {durable}")
        consumer = NatsConsumer(
            self,
            stream,
            durable,
            config,
            sub,
            schemas if isinstance(schemas, SchemaRegistry) else None,
            instance or "",
        )
        if instance:
            consumer.reclaimed, consumer._reclaim_hi = self._run(
                self._areclaim(stream, durable), f"reclaiming in-flight work of {durable}"
            )
        return consumer

    async def _areclaim(self, stream: str, durable: str) -> tuple[int, int]:
        """Nak every pending delivery of `durable` so the server redelivers it now.

        JetStream does not say which client holds a delivery, so this hands back all of the
        durable's in-flight work (use `instance` with one live process per durable on NATS).
        The nak goes to the ack subject the server would have given each delivery
        (`$JS.ACK.<stream>.<durable>.<n>.<stream seq>.<consumer seq>.<ts>.<pending>`): the
        server checks the stream sequence is pending and the consumer sequence is in range,
        so the latest delivered consumer sequence stands for all of them. Returns (how many,
        the highest stream sequence among them)."""
        info = await self._js.consumer_info(stream, durable)
        if not info.num_ack_pending:
            return 0, 0
        lo = int(info.ack_floor.stream_seq if info.ack_floor else 0) + 1
        hi = int(info.delivered.stream_seq if info.delivered else 0)
        dseq = int(info.delivered.consumer_seq if info.delivered else 0)
        if hi - lo >= _MAX_RECLAIM_SPAN:
            return 0, 0  # a very old pending delivery: leave it to the ack wait
        for sseq in range(lo, hi + 1):
            await self._nc.publish(f"$JS.ACK.{stream}.{durable}.1.{sseq}.{dseq}.0.0", b"-NAK")
        await self._nc.flush(timeout=int(self.options.request_timeout_s))
        return int(info.num_ack_pending), hi

    async def _aconsumer(self, stream: str, durable: str, config: ConsumerConfig) -> Any:
        await self._ensure_stream(stream)
        try:
            info = await self._js.consumer_info(stream, durable)
            if abs(float(info.config.ack_wait or 0) - config.ack_wait_s) > 1e-3:
                raise ConflictError(
                    f"consumer {durable!r} of stream {stream!r} exists with ack_wait_s="
                    f"{info.config.ack_wait}, not {config.ack_wait_s}: delete it first to change it"
                )
        except nats.js.errors.NotFoundError:
            cc = api.ConsumerConfig(
                durable_name=durable,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=config.ack_wait_s,
                max_deliver=-1,
                filter_subject=self._subject(stream),
                max_ack_pending=-1,
                **_deliver_policy(config.start),
            )
            await self._js.add_consumer(stream, cc)
        return await self._js.pull_subscribe_bind(durable=durable, stream=stream)

    def replay(
        self, stream: str, start: StartPosition | None = None, max_messages: int | None = None
    ) -> Iterator[StoredEvent]:
        check_stream_name(stream)
        for msg in self._read_all(stream, start or StartPosition.all(), max_messages):
            yield StoredEvent(int(msg.metadata.sequence.stream), bytes(msg.data))

    def _read_all(self, name: str, start: StartPosition, max_messages: int | None) -> Iterator[Any]:
        """Read a stream through an ephemeral, ack-less consumer (no durable state)."""

        async def open_reader() -> Any:
            await self._js.stream_info(name)
            cc = api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE,
                inactive_threshold=60.0,
                mem_storage=True,
                **_deliver_policy(start),
            )
            info = await self._js.add_consumer(name, cc)
            return info.name, await self._js.pull_subscribe_bind(consumer=info.name, stream=name)

        cname, sub = self._run(open_reader(), f"reading {name}")
        try:
            left = max_messages if max_messages is not None else -1
            while left != 0:
                batch = 500 if left < 0 else min(500, left)
                msgs = self._run(_fetch(sub, batch, 0.5), f"reading {name}")
                if not msgs:
                    return
                yield from msgs
                if left > 0:
                    left -= len(msgs)
                if msgs[-1].metadata.num_pending == 0:
                    return
        finally:
            if not self._closed:
                # On failure the server expires the reader after inactive_threshold.
                with contextlib.suppress(EventsError):
                    self._run(
                        _delete_reader(self._js, name, cname, sub), f"closing reader on {name}"
                    )

    # -- admin ----------------------------------------------------------------------------
    def stream_info(self, stream: str) -> StreamInfo:
        info = self._run(self._js.stream_info(stream), f"reading stream {stream}")
        st = info.state
        return StreamInfo(stream, int(st.first_seq), int(st.last_seq), int(st.messages))

    def streams(self) -> list[str]:
        infos = self._run(self._js.streams_info(), "listing streams")
        prefix = self.options.subject_prefix + "."
        out = []
        for i in infos:
            name = i.config.name
            if (
                name
                and not name.endswith(DLQ_SUFFIX)
                and (i.config.subjects or []) == [prefix + name]
            ):
                out.append(name)
        return sorted(out)

    def consumers(self, stream: str) -> list[ConsumerInfo]:
        infos = self._run(self._js.consumers_info(stream), f"listing consumers of {stream}")
        return sorted(
            (_consumer_info(stream, i) for i in infos if i.config.durable_name),
            key=lambda c: c.durable,
        )

    def delete_consumer(self, stream: str, durable: str) -> None:
        self._run(self._js.delete_consumer(stream, durable), f"deleting consumer {durable}")

    def delete_stream(self, stream: str) -> None:
        async def delete() -> None:
            await self._js.delete_stream(stream)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self._js.delete_stream(stream + DLQ_SUFFIX)

        self._run(delete(), f"deleting stream {stream}")
        self._known_streams.discard(stream)
        self._known_streams.discard(stream + DLQ_SUFFIX)

    def dead_letters(self, stream: str, limit: int = 100) -> list[DeadLetter]:
        check_stream_name(stream)
        try:
            msgs = list(self._read_all(stream + DLQ_SUFFIX, StartPosition.all(), limit))
        except NotFoundError:
            return []
        return [_dead_letter(stream, m) for m in msgs]

    def requeue_dead_letters(self, stream: str, ids: Sequence[str] | None = None) -> int:
        letters = self.dead_letters(stream, limit=1_000_000)
        if ids is not None:
            wanted = set(ids)
            letters = [d for d in letters if d.id in wanted]
        letters = [d for d in letters if d.data]
        if not letters:
            return 0
        self._publish_many(
            stream, [(f"{d.event_id or 'raw'}~requeue~{d.id}", d.data) for d in letters]
        )

        async def remove() -> None:
            for d in letters:
                await self._js.delete_msg(stream + DLQ_SUFFIX, int(d.id))

        self._run(remove(), f"removing requeued dead letters of {stream}")
        return len(letters)

    def compact(self, stream: str | None = None) -> int:
        return 0  # JetStream enforces max_age / max_msgs itself

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self._nc.close(), "closing", timeout_s=10)
        except EventsError:
            pass
        finally:
            self._closed = True
            self._loop.stop()

    async def _adead_letter(
        self,
        stream: str,
        durable: str,
        seq: int,
        deliveries: int,
        data: bytes,
        reason: str,
        category: str,
    ) -> None:
        event_id = _event_id_or_none(data)
        headers = {
            _H_DURABLE: durable,
            _H_SEQ: str(seq),
            _H_REASON: reason.replace("\r", " ").replace("\n", " ")[:1000],
            _H_DELIVERIES: str(deliveries),
            _H_TIME: self._clock().isoformat(),
        }
        if event_id is not None:
            headers[_H_EVENT_ID] = event_id
        # Msg id makes a re-run (crash between this publish and the term) idempotent.
        await self._apublish(
            stream, self._dlq_subject(stream), [(f"dlq~{durable}~{seq}", data)], [headers]
        )
        self._metrics.dead_lettered(stream, durable, category)


class NatsConsumer(Consumer):
    """A durable pull consumer on JetStream."""

    def __init__(
        self,
        bus: NatsBus,
        stream: str,
        durable: str,
        config: ConsumerConfig,
        sub: Any,
        schemas: SchemaRegistry | None,
        instance: str = "",
    ) -> None:
        super().__init__(stream, durable, config, instance)
        self._bus = bus
        self._sub = sub
        self._schemas = schemas
        self._reclaim_hi = 0  # > 0: handed-back deliveries up to this sequence not yet fetched
        self._buffer: list[Delivery] = []

    def fetch(self, max_messages: int = 500, timeout_s: float = 1.0) -> list[Delivery]:
        if max_messages < 1:
            raise InvalidConfigError(f"max_messages must be >= 1, got {max_messages}")
        if self._reclaim_hi:
            self._collect_reclaimed()
        if self._buffer:
            out, self._buffer = self._buffer[:max_messages], self._buffer[max_messages:]
            return out
        return self._fetch(max_messages, timeout_s)

    def _collect_reclaimed(self) -> None:
        """Pull the handed-back deliveries and order them by sequence: the server redelivers
        naked messages in the order they were naked, which after two crashes in a row need
        not be the stream's order."""
        hi, self._reclaim_hi = self._reclaim_hi, 0
        deadline = time.monotonic() + max(5.0, self.config.ack_wait_s / 4)
        got: list[Delivery] = []
        # The naks are processed by the server asynchronously: a fetch can return newer
        # events first, or nothing yet. Collect until every handed-back delivery is in (or
        # the deadline passes — e.g. one went to the dead-letter queue on max_deliver).
        back = 0
        while time.monotonic() < deadline and back < self.reclaimed:
            batch = self._fetch(1000, 0.5)
            got.extend(batch)
            back += sum(1 for d in batch if d.seq <= hi)
        got.sort(key=lambda d: d.seq)
        self._buffer.extend(got)

    def _fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        bus = self._bus
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            left = max(0.01, deadline - time.monotonic())
            out, redelivered, lag = bus._run(
                self._afetch(max_messages, left),
                f"fetching from {self.stream}",
                left + bus.options.request_timeout_s + 5,
            )
            bus._metrics.consumed(self.stream, self.durable, len(out), redelivered)
            if lag is not None:
                bus._metrics.lag(self.stream, self.durable, lag)
            if out or time.monotonic() >= deadline:
                return out

    async def _afetch(
        self, max_messages: int, timeout_s: float
    ) -> tuple[list[Delivery], int, int | None]:
        msgs = await _fetch(self._sub, max_messages, timeout_s)
        out: list[Delivery] = []
        redelivered = 0
        lag = None
        bus = self._bus
        for m in msgs:
            seq, n, lag = _ack_metadata(m)
            if n > self.config.max_deliver:
                await bus._adead_letter(
                    self.stream,
                    self.durable,
                    seq,
                    n - 1,
                    m.data,
                    f"max_deliver: delivered {n - 1} times without an ack",
                    "max_deliver",
                )
                await m.term()
                continue
            try:
                ev = decode_event(m.data)
                if self._schemas is not None:
                    self._schemas.check(ev)
            except InvalidEventError as exc:
                category = "unknown_schema" if isinstance(exc, UnknownSchemaError) else "invalid"
                await bus._adead_letter(
                    self.stream, self.durable, seq, n, m.data, str(exc), category
                )
                await m.term()
                continue
            if n > 1:
                redelivered += 1
            out.append(Delivery(self, ev, seq, n, m))
        return out, redelivered, lag

    def info(self) -> ConsumerInfo:
        info = self._bus._run(
            self._bus._js.consumer_info(self.stream, self.durable),
            f"reading consumer {self.durable}",
        )
        return _consumer_info(self.stream, info)

    def _ack(self, deliveries: Sequence[Delivery]) -> None:
        async def ack() -> None:
            for d in deliveries:
                await d._token.ack()  # type: ignore[attr-defined]
            await self._bus._nc.flush(timeout=int(self._bus.options.request_timeout_s))

        self._bus._run(ack(), f"acking on {self.stream}")
        self._bus._metrics.acked(self.stream, self.durable, len(deliveries))

    def _nak(self, delivery: Delivery, delay_s: float) -> None:
        self._bus._run(
            delivery._token.nak(delay=delay_s if delay_s > 0 else None),  # type: ignore[attr-defined]
            f"nak on {self.stream}",
        )

    def _term(self, delivery: Delivery, reason: str) -> None:
        async def term() -> None:
            await self._bus._adead_letter(
                self.stream,
                self.durable,
                delivery.seq,
                delivery.delivery_count,
                delivery._token.data,  # type: ignore[attr-defined]
                f"rejected: {reason}",
                "rejected",
            )
            await delivery._token.term()  # type: ignore[attr-defined]

        self._bus._run(term(), f"dead-lettering on {self.stream}")


def _ack_metadata(m: Any) -> tuple[int, int, int]:
    """(stream sequence, delivery count, pending) of a JetStream message, parsed from its
    reply subject `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`
    directly (nats-py's `Msg.metadata` builds nested dataclasses and a datetime per message,
    several microseconds on the consume hot path); other forms go through nats-py."""
    tokens: list[str] = m.reply.split(".") if m.reply else []
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5]), int(tokens[4]), int(tokens[8])
    md = m.metadata
    return int(md.sequence.stream), int(md.num_delivered), int(md.num_pending)


async def _fetch(sub: Any, batch: int, timeout_s: float) -> list[Any]:
    try:
        return list(await sub.fetch(batch=batch, timeout=timeout_s))
    except (TimeoutError, nats.errors.TimeoutError):
        return []


async def _delete_reader(js: Any, stream: str, consumer: str, sub: Any) -> None:
    try:
        await sub.unsubscribe()
    finally:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_consumer(stream, consumer)


def _deliver_policy(start: StartPosition) -> dict[str, Any]:
    if start.kind == "all":
        return {"deliver_policy": api.DeliverPolicy.ALL}
    if start.kind == "new":
        return {"deliver_policy": api.DeliverPolicy.NEW}
    if start.kind == "seq":
        return {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": start.seq}
    assert start.time is not None
    return {
        "deliver_policy": api.DeliverPolicy.BY_START_TIME,
        "opt_start_time": start.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }


def _consumer_info(stream: str, info: Any) -> ConsumerInfo:
    return ConsumerInfo(
        stream=stream,
        durable=info.config.durable_name or info.name,
        delivered_seq=int(info.delivered.stream_seq if info.delivered else 0),
        lag=int(info.num_pending or 0),
        ack_pending=int(info.num_ack_pending or 0),
    )


def _dead_letter(stream: str, m: Any) -> DeadLetter:
    h = m.headers or {}
    try:
        dead_time = datetime.fromisoformat(h.get(_H_TIME, ""))
    except ValueError:
        dead_time = datetime.fromtimestamp(0, UTC)
    return DeadLetter(
        id=str(m.metadata.sequence.stream),
        stream=stream,
        durable=h.get(_H_DURABLE, ""),
        seq=int(h.get(_H_SEQ, "0")),
        event_id=h.get(_H_EVENT_ID),
        reason=h.get(_H_REASON, ""),
        deliveries=int(h.get(_H_DELIVERIES, "0")),
        dead_time=dead_time,
        data=bytes(m.data),
    )


def _event_id_or_none(data: bytes) -> str | None:
    try:
        return decode_event(bytes(data)).id
    except InvalidEventError:
        return None


async def _ignore(*_: Any) -> None:
    return None


async def _ignore_error(_: Exception) -> None:
    return None


def _is_auth_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return "authorization" in text or "authentication" in text
