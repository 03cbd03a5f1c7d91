"""The embedded backend: one SQLite file in WAL mode, durable and multi-process safe.

Durability: `journal_mode=WAL` + `synchronous=FULL`, so every commit is fsynced before
`publish`/`ack` return — a process crash (or power loss) after a call returns loses nothing.
Concurrency: every write is one short `BEGIN IMMEDIATE` transaction (the database's single
writer lock is taken up front, so there are no lock upgrades and no deadlocks); waiting for
the lock uses SQLite's busy handler (`busy_timeout_s`). Readers never block writers (WAL).

Layout: `keel_streams` (name -> table id, last sequence, limits); one table per stream
`keel_ev_<id>(seq INTEGER PRIMARY KEY, msg_id UNIQUE, publish_us, data)` so publishing is
an append with per-stream contiguous sequences; `keel_consumers` (durable cursor);
`keel_leases` + `keel_pending` (in-flight deliveries, see below); `keel_dead_letters`.

In-flight tracking (the cost of at-least-once): a fetch hands out first deliveries as *leases*
— one `keel_leases` row per contiguous run of sequences `[lo, hi]` (one row per fetched batch
in the common case), visible again at `now + ack_wait`. Acking the whole run deletes that one
row; so a fetch + `ack_all` costs two rows, not two per event. Anything finer-grained — a
partial ack, a nak, a term, or the lease timing out — first *splits* the lease into per-event
`keel_pending` rows (delivery count, visible time), which carry redeliveries from then on.

Retention: limits per stream (max age, max events), applied by `compact()` and automatically
every `compact_every` events published by this process; deleted pages are returned to the
file system (`auto_vacuum=INCREMENTAL`) and the WAL is checkpointed, so the file does not
grow without bound.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import repeat
from operator import attrgetter, is_, itemgetter
from pathlib import Path
from typing import Any

import msgspec

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
    ConsumerConfig,
    StartPosition,
    StreamConfig,
    check_stream_name,
    consumer_config,
)
from keel.events._envelope import Event, decode_event, decode_events, encode_event
from keel.events._errors import (
    ConflictError,
    EventsError,
    InvalidConfigError,
    InvalidEventError,
    NotFoundError,
    UnavailableError,
)
from keel.events._metrics import EventsMetrics
from keel.events._schemas import SchemaRegistry

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keel_streams (
    name TEXT PRIMARY KEY,
    tid INTEGER NOT NULL UNIQUE,
    last_seq INTEGER NOT NULL,
    last_publish_us INTEGER NOT NULL,
    max_age_s REAL,
    max_events INTEGER,
    duplicate_window_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS keel_consumers (
    stream TEXT NOT NULL,
    durable TEXT NOT NULL,
    next_seq INTEGER NOT NULL,
    ack_wait_us INTEGER NOT NULL,
    PRIMARY KEY (stream, durable)
);
CREATE TABLE IF NOT EXISTS keel_pending (
    stream TEXT NOT NULL,
    durable TEXT NOT NULL,
    seq INTEGER NOT NULL,
    deliveries INTEGER NOT NULL,
    visible_us INTEGER NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (stream, durable, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS keel_pending_visible ON keel_pending (stream, durable, visible_us);
CREATE TABLE IF NOT EXISTS keel_leases (
    stream TEXT NOT NULL,
    durable TEXT NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    visible_us INTEGER NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (stream, durable, lo)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS keel_leases_visible ON keel_leases (stream, durable, visible_us);
CREATE TABLE IF NOT EXISTS keel_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    durable TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT,
    reason TEXT NOT NULL,
    deliveries INTEGER NOT NULL,
    dead_us INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS keel_dead_letters_stream ON keel_dead_letters (stream, id);
"""

_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MSGID_CHUNK = 500
_FALSES = repeat(False)
_ONES = repeat(1)
_TOKEN = attrgetter("_token")
_SEQ = attrgetter("seq")
_DATA = itemgetter(1)


def _to_us(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(microseconds=1)


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SQLiteBus(Bus):
    """The embedded event bus. Prefer `open_bus("sqlite:///path/events.db")`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        stream_config: StreamConfig | None = None,
        schemas: SchemaRegistry | None = None,
        metrics: EventsMetrics,
        clock: Callable[[], datetime] = _utc_now,
        busy_timeout_s: float = 30.0,
        compact_every: int = 100_000,
        poll_interval_s: float = 0.002,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.path = Path(path)
        self.max_event_bytes = int(max_event_bytes)
        self.url = f"sqlite://{self.path}"
        self._stream_config = stream_config or StreamConfig()
        self._schemas = schemas
        self._metrics = metrics
        self._clock = clock
        self._poll_s = poll_interval_s
        self._compact_every = compact_every
        self._since_compact: dict[str, int] = {}
        self._lock = threading.RLock()
        self._local_version = 0
        self._tables: dict[str, str] = {}
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                str(self.path),
                timeout=busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            self._conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise EventsError(f"{self.path}: could not enable WAL mode (got {mode!r})")
            self._conn.execute("PRAGMA synchronous=FULL")
            with self._tx() as c:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                for table in ("keel_leases", "keel_pending"):  # files from before owners
                    cols = [r[1] for r in c.execute(f"PRAGMA table_info({table})")]
                    if "owner" not in cols:
                        c.execute(f"ALTER TABLE {table} ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        except sqlite3.Error as exc:
            raise _translate(exc, f"opening {self.path}") from exc

    # -- plumbing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction (BEGIN IMMEDIATE), thread-safe, errors translated."""
        if self._closed:
            raise EventsError("the bus is closed")
        with self._lock:
            c = self._conn
            try:
                c.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _translate(exc, "starting a transaction") from exc
            try:
                yield c
                c.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    c.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _translate(exc, "in a transaction") from exc
                raise
            self._local_version += 1

    def _now_us(self) -> int:
        return _to_us(self._clock())

    def _table(self, c: sqlite3.Connection, stream: str, create: bool) -> str | None:
        t = self._tables.get(stream)
        if t is not None:
            return t
        row = c.execute("SELECT tid FROM keel_streams WHERE name=?", (stream,)).fetchone()
        if row is None:
            if not create:
                return None
            sc = self._stream_config
            tid = c.execute("SELECT COALESCE(MAX(tid), 0) + 1 FROM keel_streams").fetchone()[0]
            c.execute(
                "INSERT INTO keel_streams VALUES (?, ?, 0, 0, ?, ?, ?)",
                (stream, tid, sc.max_age_s, sc.max_events, sc.duplicate_window_s),
            )
            t = f"keel_ev_{tid}"
            c.execute(
                f"CREATE TABLE IF NOT EXISTS {t} (seq INTEGER PRIMARY KEY, msg_id TEXT NOT NULL "
                "UNIQUE, publish_us INTEGER NOT NULL, data BLOB NOT NULL)"
            )
            c.execute(f"CREATE INDEX IF NOT EXISTS {t}_time ON {t} (publish_us)")
        else:
            t = f"keel_ev_{row[0]}"
        self._tables[stream] = t
        return t

    def _require_table(self, c: sqlite3.Connection, stream: str) -> str:
        t = self._table(c, stream, create=False)
        if t is None:
            raise NotFoundError(f"stream {stream!r} does not exist in {self.path}")
        return t

    # -- publish --------------------------------------------------------------------------
    def publish(self, stream: str, event: Event) -> PublishAck:
        return self.publish_batch(stream, [event])[0]

    def publish_batch(self, stream: str, events: Sequence[Event]) -> list[PublishAck]:
        check_stream_name(stream)
        if not events:
            return []
        check_publishable(events, self._schemas)
        t0 = time.perf_counter()
        replace = msgspec.structs.replace
        now_us = self._now_us()
        publish_time = _from_us(now_us)
        # Rows are built (and encoded) before the write lock is taken, as they are inserted.
        rows = [
            (ev.id, now_us, encode_event(replace(ev, publish_time=publish_time))) for ev in events
        ]
        check_sizes([len(r[2]) for r in rows], [r[0] for r in rows], self.max_event_bytes)
        with self._lock:
            acks = self._append(stream, rows, now_us)
        self._after_publish(stream, acks, time.perf_counter() - t0)
        return acks

    def publish_raw(self, stream: str, data: bytes, msg_id: str) -> PublishAck:
        check_stream_name(stream)
        if not isinstance(data, bytes) or not isinstance(msg_id, str) or not msg_id:
            raise InvalidEventError("publish_raw expects bytes and a non-empty msg_id")
        check_sizes([len(data)], [msg_id], self.max_event_bytes)
        t0 = time.perf_counter()
        with self._lock:
            now_us = self._now_us()
            acks = self._append(stream, [(msg_id, now_us, data)], now_us)
        self._after_publish(stream, acks, time.perf_counter() - t0)
        return acks[0]

    def _after_publish(self, stream: str, acks: list[PublishAck], seconds: float) -> None:
        dups = count_duplicates(acks)
        self._metrics.published(stream, len(acks) - dups, dups, seconds)
        n = self._since_compact.get(stream, 0) + len(acks) - dups
        if n >= self._compact_every:
            n = 0
            self._compact_stream(stream, checkpoint="PASSIVE")
        self._since_compact[stream] = n

    def _append(
        self, stream: str, rows: list[tuple[str, int, bytes]], pub_us: int
    ) -> list[PublishAck]:
        """Store `rows` (msg id, publish time us = `pub_us`, data) with the next sequences,
        skipping stored ids; one transaction."""
        with self._tx() as c:
            t = (
                self._require_table(c, stream)
                if stream in self._tables
                else self._table(c, stream, create=True)
            )
            assert t is not None
            last_seq, last_us = c.execute(
                "SELECT last_seq, last_publish_us FROM keel_streams WHERE name=?", (stream,)
            ).fetchone()
            if last_us > pub_us:  # publish times never go backwards within a stream
                pub_us = last_us
                rows = [(m, pub_us, d) for m, _, d in rows]
            # Fast path, while the table's top sequence is `last_seq` (i.e. retention has not
            # emptied it): INSERT OR IGNORE with SQLite's own rowid allocation (max + 1), which
            # gives the inserted rows exactly the next sequences with no gaps even when stored
            # ids are skipped — so no savepoint (its sub-journal copies every page touched) and
            # no per-row probe of explicit keys. Duplicates are then looked up for their acks.
            (top,) = c.execute(f"SELECT MAX(seq) FROM {t}").fetchone()
            if (top or 0) == last_seq:
                n = c.executemany(
                    f"INSERT OR IGNORE INTO {t} (msg_id, publish_us, data) VALUES (?, ?, ?)", rows
                ).rowcount
                new_last = last_seq + n
                if n == len(rows):
                    acks = list(
                        map(PublishAck, repeat(stream), range(last_seq + 1, new_last + 1), _FALSES)
                    )
                else:
                    acks = self._acks_with_duplicates(c, t, stream, rows, last_seq)
            else:
                acks, new_last = self._append_dedupe(c, t, stream, rows, last_seq, pub_us)
            c.execute(
                "UPDATE keel_streams SET last_seq=?, last_publish_us=? WHERE name=?",
                (new_last, pub_us, stream),
            )
        return acks

    @staticmethod
    def _stored_seqs(c: sqlite3.Connection, t: str, ids: list[str]) -> dict[str, int]:
        known: dict[str, int] = {}
        for i in range(0, len(ids), _MSGID_CHUNK):
            chunk = ids[i : i + _MSGID_CHUNK]
            marks = ",".join("?" * len(chunk))
            known.update(c.execute(f"SELECT msg_id, seq FROM {t} WHERE msg_id IN ({marks})", chunk))
        return known

    @classmethod
    def _acks_with_duplicates(
        cls,
        c: sqlite3.Connection,
        t: str,
        stream: str,
        rows: list[tuple[str, int, bytes]],
        last_seq: int,
    ) -> list[PublishAck]:
        """Acks for a batch inserted with INSERT OR IGNORE where some ids were skipped: an id
        is new if its stored sequence is past `last_seq` and it is its first occurrence."""
        known = cls._stored_seqs(c, t, [m for m, _, _ in rows])
        seen: set[str] = set()
        acks = []
        for m, _, _ in rows:
            seq = known[m]
            acks.append(PublishAck(stream, seq, seq <= last_seq or m in seen))
            seen.add(m)
        return acks

    @classmethod
    def _append_dedupe(
        cls,
        c: sqlite3.Connection,
        t: str,
        stream: str,
        rows: list[tuple[str, int, bytes]],
        last_seq: int,
        pub_us: int,
    ) -> tuple[list[PublishAck], int]:
        known = cls._stored_seqs(c, t, [m for m, _, _ in rows])
        acks: list[PublishAck] = []
        inserts = []
        seq = last_seq
        for m, _, d in rows:
            if m in known:
                acks.append(PublishAck(stream, known[m], True))
                continue
            seq += 1
            known[m] = seq
            inserts.append((seq, m, pub_us, d))
            acks.append(PublishAck(stream, seq, False))
        c.executemany(
            f"INSERT INTO {t} (seq, msg_id, publish_us, data) VALUES (?, ?, ?, ?)", inserts
        )
        return acks, seq

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
    ) -> SQLiteConsumer:
        config = consumer_config(
            stream,
            durable,
            ack_wait_s=ack_wait_s,
            max_deliver=max_deliver,
            backoff_s=backoff_s,
            start=start,
            schemas=schemas,
        )
        ack_wait_us = int(config.ack_wait_s * _US)
        with self._tx() as c:
            t = self._table(c, stream, create=True)
            row = c.execute(
                "SELECT ack_wait_us FROM keel_consumers WHERE stream=? AND durable=?",
                (stream, durable),
            ).fetchone()
            if row is None:
                next_seq = self._start_seq(c, t, stream, config.start)
                c.execute(
                    "INSERT INTO keel_consumers VALUES (?, ?, ?, ?)",
                    (stream, durable, next_seq, ack_wait_us),
                )
            elif row[0] != ack_wait_us:
                raise ConflictError(
                    f"consumer {durable!r} of stream {stream!r} exists with ack_wait_s="
                    f"{row[0] / _US}, not {config.ack_wait_s}: delete it first to change it"
                )
            consumer = SQLiteConsumer(
                self,
                stream,
                durable,
                config,
                schemas if isinstance(schemas, SchemaRegistry) else None,
                instance or "",
            )
            if instance:
                consumer.reclaimed = consumer._reclaim(c)
        return consumer

    def _start_seq(
        self, c: sqlite3.Connection, t: str | None, stream: str, start: StartPosition
    ) -> int:
        last = c.execute("SELECT last_seq FROM keel_streams WHERE name=?", (stream,)).fetchone()[0]
        if start.kind == "all":
            return 1
        if start.kind == "new":
            return int(last) + 1
        if start.kind == "seq":
            assert start.seq is not None
            return start.seq
        assert start.time is not None
        row = c.execute(
            f"SELECT MIN(seq) FROM {t} WHERE publish_us >= ?", (_to_us(start.time),)
        ).fetchone()
        return int(row[0]) if row[0] is not None else int(last) + 1

    def replay(
        self, stream: str, start: StartPosition | None = None, max_messages: int | None = None
    ) -> Iterator[StoredEvent]:
        check_stream_name(stream)
        start = start or StartPosition.all()
        with self._tx() as c:
            t = self._require_table(c, stream)
            seq = self._start_seq(c, t, stream, start)
        remaining = max_messages if max_messages is not None else -1
        while remaining != 0:
            n = 1000 if remaining < 0 else min(1000, remaining)
            with self._lock:
                try:
                    rows = self._conn.execute(
                        f"SELECT seq, data FROM {t} WHERE seq >= ? ORDER BY seq LIMIT ?", (seq, n)
                    ).fetchall()
                except sqlite3.Error as exc:
                    raise _translate(exc, f"replaying {stream}") from exc
            if not rows:
                return
            for s, d in rows:
                yield StoredEvent(int(s), bytes(d))
            seq = int(rows[-1][0]) + 1
            if remaining > 0:
                remaining -= len(rows)

    # -- admin ----------------------------------------------------------------------------
    def stream_info(self, stream: str) -> StreamInfo:
        with self._tx() as c:
            t = self._require_table(c, stream)
            first, count = c.execute(f"SELECT MIN(seq), COUNT(*) FROM {t}").fetchone()
            last = c.execute(
                "SELECT last_seq FROM keel_streams WHERE name=?", (stream,)
            ).fetchone()[0]
        return StreamInfo(stream, int(first or last + 1), int(last), int(count))

    def streams(self) -> list[str]:
        with self._tx() as c:
            return [r[0] for r in c.execute("SELECT name FROM keel_streams ORDER BY name")]

    def consumers(self, stream: str) -> list[ConsumerInfo]:
        with self._tx() as c:
            self._require_table(c, stream)
            names = [
                r[0]
                for r in c.execute(
                    "SELECT durable FROM keel_consumers WHERE stream=? ORDER BY durable", (stream,)
                )
            ]
            return [self._consumer_info(c, stream, d) for d in names]

    def _consumer_info(self, c: sqlite3.Connection, stream: str, durable: str) -> ConsumerInfo:
        row = c.execute(
            "SELECT next_seq FROM keel_consumers WHERE stream=? AND durable=?", (stream, durable)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"consumer {durable!r} of stream {stream!r} does not exist")
        next_seq = int(row[0])
        last = int(
            c.execute("SELECT last_seq FROM keel_streams WHERE name=?", (stream,)).fetchone()[0]
        )
        pending = c.execute(
            "SELECT (SELECT COUNT(*) FROM keel_pending WHERE stream=?1 AND durable=?2) + "
            "(SELECT COALESCE(SUM(hi - lo + 1), 0) FROM keel_leases WHERE stream=?1 AND durable=?2)",
            (stream, durable),
        ).fetchone()[0]
        return ConsumerInfo(
            stream, durable, next_seq - 1, max(0, last - next_seq + 1), int(pending)
        )

    def delete_consumer(self, stream: str, durable: str) -> None:
        with self._tx() as c:
            n = c.execute(
                "DELETE FROM keel_consumers WHERE stream=? AND durable=?", (stream, durable)
            ).rowcount
            c.execute("DELETE FROM keel_pending WHERE stream=? AND durable=?", (stream, durable))
            c.execute("DELETE FROM keel_leases WHERE stream=? AND durable=?", (stream, durable))
        if n == 0:
            raise NotFoundError(f"consumer {durable!r} of stream {stream!r} does not exist")

    def delete_stream(self, stream: str) -> None:
        with self._tx() as c:
            t = self._require_table(c, stream)
            c.execute(f"DROP TABLE IF EXISTS {t}")
            for table in ("keel_consumers", "keel_pending", "keel_leases", "keel_dead_letters"):
                c.execute(f"DELETE FROM {table} WHERE stream=?", (stream,))
            c.execute("DELETE FROM keel_streams WHERE name=?", (stream,))
        self._tables.pop(stream, None)

    def dead_letters(self, stream: str, limit: int = 100) -> list[DeadLetter]:
        with self._tx() as c:
            rows = c.execute(
                "SELECT id, stream, durable, seq, event_id, reason, deliveries, dead_us, data "
                "FROM keel_dead_letters WHERE stream=? ORDER BY id LIMIT ?",
                (stream, int(limit)),
            ).fetchall()
        return [
            DeadLetter(
                str(r[0]), r[1], r[2], int(r[3]), r[4], r[5], int(r[6]), _from_us(r[7]), bytes(r[8])
            )
            for r in rows
        ]

    def requeue_dead_letters(self, stream: str, ids: Sequence[str] | None = None) -> int:
        check_stream_name(stream)
        with self._lock:
            letters = self.dead_letters(stream, limit=1_000_000)
            if ids is not None:
                wanted = set(ids)
                letters = [d for d in letters if d.id in wanted]
            letters = [d for d in letters if d.data]
            if not letters:
                return 0
            now_us = self._now_us()
            rows = [(f"{d.event_id or 'raw'}~requeue~{d.id}", now_us, d.data) for d in letters]
            self._append(stream, rows, now_us)
            with self._tx() as c:
                c.executemany(
                    "DELETE FROM keel_dead_letters WHERE id=?", [(int(d.id),) for d in letters]
                )
        return len(letters)

    def compact(self, stream: str | None = None) -> int:
        names = [stream] if stream is not None else self.streams()
        removed = sum(self._compact_stream(s, checkpoint="TRUNCATE") for s in names)
        return removed

    def _compact_stream(self, stream: str, checkpoint: str) -> int:
        with self._tx() as c:
            t = self._require_table(c, stream)
            max_age_s, max_events, last = c.execute(
                "SELECT max_age_s, max_events, last_seq FROM keel_streams WHERE name=?", (stream,)
            ).fetchone()
            removed = 0
            if max_age_s is not None:
                cutoff = self._now_us() - int(max_age_s * _US)
                removed += c.execute(f"DELETE FROM {t} WHERE publish_us < ?", (cutoff,)).rowcount
            if max_events is not None:
                removed += c.execute(
                    f"DELETE FROM {t} WHERE seq <= ?", (int(last) - int(max_events),)
                ).rowcount
        with self._lock:
            try:
                self._conn.execute("PRAGMA incremental_vacuum")
                self._conn.execute(f"PRAGMA wal_checkpoint({checkpoint})").fetchall()
            except sqlite3.Error as exc:
                raise _translate(exc, "compacting") from exc
        return int(removed)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    # -- consumer internals (called with the consumer's arguments) -----------------------------
    def _data_version(self) -> tuple[int, int]:
        with self._lock:
            v = self._conn.execute("PRAGMA data_version").fetchone()[0]
            return int(v), self._local_version

    def _dead_letter(
        self,
        c: sqlite3.Connection,
        stream: str,
        durable: str,
        seq: int,
        event_id: str | None,
        reason: str,
        deliveries: int,
        data: bytes,
        category: str,
    ) -> None:
        c.execute(
            "INSERT INTO keel_dead_letters (stream, durable, seq, event_id, reason, deliveries, "
            "dead_us, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (stream, durable, seq, event_id, reason, deliveries, self._now_us(), data),
        )
        self._metrics.dead_lettered(stream, durable, category)


class SQLiteConsumer(Consumer):
    """A durable consumer on the embedded backend."""

    def __init__(
        self,
        bus: SQLiteBus,
        stream: str,
        durable: str,
        config: ConsumerConfig,
        schemas: SchemaRegistry | None,
        instance: str = "",
    ) -> None:
        super().__init__(stream, durable, config, instance)
        self._bus = bus
        self._schemas = schemas
        self._ack_wait_us = int(config.ack_wait_s * _US)

    def fetch(self, max_messages: int = 500, timeout_s: float = 1.0) -> list[Delivery]:
        if max_messages < 1:
            raise InvalidConfigError(f"max_messages must be >= 1, got {max_messages}")
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            out, next_visible_us, version = self._fetch_once(max_messages)
            if out:
                return out
            # Wait until another writer commits, a pending delivery times out, or the deadline.
            # (`version` was read inside the fetch's transaction, so neither a commit that
            # raced it is missed nor does the fetch's own commit count as a change.)
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return []
                if self._bus._data_version() != version:
                    break
                if next_visible_us is not None and self._bus._now_us() >= next_visible_us:
                    break
                time.sleep(min(self._bus._poll_s, deadline - now))

    def _fetch_once(
        self, max_messages: int
    ) -> tuple[list[Delivery], int | None, tuple[int, int] | None]:
        bus, stream, durable = self._bus, self.stream, self.durable
        out: list[Delivery] = []
        redelivered = 0
        with bus._tx() as c:
            t = bus._require_table(c, stream)
            now = bus._now_us()
            row = c.execute(
                "SELECT next_seq FROM keel_consumers WHERE stream=? AND durable=?",
                (stream, durable),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"consumer {durable!r} of stream {stream!r} was deleted")
            next_seq = int(row[0])
            visible = now + self._ack_wait_us
            # 0. Leases whose ack wait has passed: split into per-event pending rows (below).
            expired = c.execute(
                "SELECT lo, hi FROM keel_leases WHERE stream=? AND durable=? AND visible_us <= ?",
                (stream, durable, now),
            ).fetchall()
            for lo, hi in expired:
                self._split_lease(c, (int(lo), int(hi)))
            # 1. Redeliveries: in-flight deliveries whose ack wait (or nak delay) has passed.
            due = c.execute(
                f"SELECT p.seq, p.deliveries, e.data FROM keel_pending p LEFT JOIN {t} e "
                "ON e.seq = p.seq WHERE p.stream=? AND p.durable=? AND p.visible_us <= ? "
                "ORDER BY p.visible_us, p.seq LIMIT ?",
                (stream, durable, now, max_messages),
            ).fetchall()
            updates, deletes = [], []
            for seq, deliveries, data in due:
                if data is None:
                    deletes.append((stream, durable, seq))
                    bus._dead_letter(
                        c,
                        stream,
                        durable,
                        seq,
                        None,
                        "expired: removed by stream retention before it was acked",
                        deliveries,
                        b"",
                        "expired",
                    )
                    continue
                if deliveries >= self.config.max_deliver:
                    deletes.append((stream, durable, seq))
                    ev_id = _event_id_or_none(data)
                    bus._dead_letter(
                        c,
                        stream,
                        durable,
                        seq,
                        ev_id,
                        f"max_deliver: delivered {deliveries} times without an ack",
                        deliveries,
                        bytes(data),
                        "max_deliver",
                    )
                    continue
                ev = self._validate(c, seq, deliveries + 1, data)
                if ev is None:
                    deletes.append((stream, durable, seq))
                    continue
                updates.append((deliveries + 1, visible, self.instance, stream, durable, seq))
                out.append(Delivery(self, ev, seq, deliveries + 1, None))
                redelivered += 1
            if updates:
                c.executemany(
                    "UPDATE keel_pending SET deliveries=?, visible_us=?, owner=? "
                    "WHERE stream=? AND durable=? AND seq=?",
                    updates,
                )
            if deletes:
                c.executemany(
                    "DELETE FROM keel_pending WHERE stream=? AND durable=? AND seq=?", deletes
                )
            # 2. First deliveries, in sequence order, leased as runs of contiguous valid events.
            room = max_messages - len(out)
            if room > 0:
                rows = c.execute(
                    f"SELECT seq, data FROM {t} WHERE seq >= ? ORDER BY seq LIMIT ?",
                    (next_seq, room),
                ).fetchall()
                if rows:
                    out.extend(self._lease(c, rows, visible))
                if rows:
                    next_seq = int(rows[-1][0]) + 1
                    c.execute(
                        "UPDATE keel_consumers SET next_seq=? WHERE stream=? AND durable=?",
                        (next_seq, stream, durable),
                    )
            next_visible = version = None
            if not out:
                # The database version as of this transaction: other connections' commits
                # change PRAGMA data_version; this bus's own commits (other threads) bump
                # _local_version — once more for this transaction's own commit.
                version = (
                    int(c.execute("PRAGMA data_version").fetchone()[0]),
                    bus._local_version + 1,
                )
                next_visible = c.execute(
                    "SELECT MIN(v) FROM (SELECT MIN(visible_us) AS v FROM keel_pending "
                    "WHERE stream=?1 AND durable=?2 UNION ALL SELECT MIN(visible_us) "
                    "FROM keel_leases WHERE stream=?1 AND durable=?2)",
                    (stream, durable),
                ).fetchone()[0]
            if bus._metrics.enabled:
                last = c.execute(
                    "SELECT last_seq FROM keel_streams WHERE name=?", (stream,)
                ).fetchone()[0]
                bus._metrics.lag(stream, durable, max(0, int(last) - next_seq + 1))
        bus._metrics.consumed(stream, durable, len(out), redelivered)
        return out, next_visible, version

    def _lease(
        self, c: sqlite3.Connection, rows: list[tuple[int, bytes]], visible: int
    ) -> list[Delivery]:
        """First deliveries of `rows` (in sequence order): decode them in one call and lease
        each run of consecutive valid events with one `keel_leases` row; invalid ones are
        dead-lettered (and, like a sequence gap, end a run)."""
        stream, durable = self.stream, self.durable
        lo, hi = rows[0][0], rows[-1][0]
        events: list[Event | None] | None = None
        if self._schemas is None:
            try:
                events = decode_events(map(_DATA, rows))  # type: ignore[assignment]
            except InvalidEventError:
                events = None  # some row is malformed: validate one by one below
        if events is not None and hi - lo + 1 == len(rows):
            # The common case: all valid, no gap — one lease, deliveries built in C.
            lease = (lo, hi)
            c.execute(
                "INSERT OR REPLACE INTO keel_leases VALUES (?, ?, ?, ?, ?, ?)",
                (stream, durable, lo, hi, visible, self.instance),
            )
            return list(
                map(Delivery, repeat(self), events, range(lo, hi + 1), _ONES, repeat(lease))  # type: ignore[arg-type]
            )
        seqs = [seq for seq, _ in rows]
        if events is None:
            events = [self._validate(c, seq, 1, data) for seq, data in rows]
        out: list[Delivery] = []
        leases: list[tuple[str, str, int, int, int, str]] = []
        run: list[tuple[int, Event]] = []

        def close_run() -> None:
            if run:
                lease = (run[0][0], run[-1][0])
                leases.append((stream, durable, lease[0], lease[1], visible, self.instance))
                out.extend(Delivery(self, ev, seq, 1, lease) for seq, ev in run)
                run.clear()

        for seq, ev in zip(seqs, events, strict=True):
            if ev is None or (run and seq != run[-1][0] + 1):
                close_run()
            if ev is not None:
                run.append((seq, ev))
        close_run()
        if leases:
            c.executemany("INSERT OR REPLACE INTO keel_leases VALUES (?, ?, ?, ?, ?, ?)", leases)
        return out

    def _split_lease(
        self,
        c: sqlite3.Connection,
        lease: tuple[int, int],
        *,
        visible_us: int | None = None,
        deliveries: int = 1,
    ) -> bool:
        """Turn lease `(lo, hi)` into per-event pending rows (same visibility and owner unless
        `visible_us` is given; `deliveries` deliveries so far); False if it no longer exists
        (acked, split or deleted already)."""
        stream, durable = self.stream, self.durable
        key = (stream, durable, lease[0], lease[1])
        where = "WHERE stream=? AND durable=? AND lo=? AND hi=?"
        row = c.execute(f"SELECT visible_us, owner FROM keel_leases {where}", key).fetchone()
        if row is None:
            return False
        c.execute(f"DELETE FROM keel_leases {where}", key)
        visible = int(row[0]) if visible_us is None else visible_us
        c.executemany(
            "INSERT OR REPLACE INTO keel_pending VALUES (?, ?, ?, ?, ?, ?)",
            [
                (stream, durable, s, deliveries, visible, row[1])
                for s in range(lease[0], lease[1] + 1)
            ],
        )
        return True

    def _reclaim(self, c: sqlite3.Connection) -> int:
        """Hand this instance's in-flight deliveries (left by a crashed run of the same
        instance) back to it now, ahead of newer events, instead of after their ack wait.
        A first delivery cut short this way does not count as a delivery (the application
        never settled it); a redelivery keeps its count. Returns how many events."""
        stream, durable, now = self.stream, self.durable, self._bus._now_us()
        # All of them (due already or not) get the same visibility, so they come back in
        # sequence order — a crashed run may have left some due (reclaimed, never fetched)
        # and some not (fetched again): ordering those by visibility would reorder events.
        n = c.execute(
            "UPDATE keel_pending SET visible_us=? WHERE stream=? AND durable=? AND owner=?",
            (now, stream, durable, self.instance),
        ).rowcount
        leases = c.execute(
            "SELECT lo, hi FROM keel_leases WHERE stream=? AND durable=? AND owner=?",
            (stream, durable, self.instance),
        ).fetchall()
        for lo, hi in leases:
            self._split_lease(c, (int(lo), int(hi)), visible_us=now, deliveries=0)
            n += int(hi) - int(lo) + 1
        return n

    def _validate(
        self, c: sqlite3.Connection, seq: int, deliveries: int, data: bytes
    ) -> Event | None:
        """Decode and schema-check; on failure dead-letter it (same transaction) and return None."""
        try:
            ev = decode_event(data)
            if self._schemas is not None:
                self._schemas.check(ev)
            return ev
        except InvalidEventError as exc:
            category = "unknown_schema" if type(exc).__name__ == "UnknownSchemaError" else "invalid"
            self._bus._dead_letter(
                c,
                self.stream,
                self.durable,
                seq,
                _event_id_or_none(data),
                str(exc),
                deliveries,
                bytes(data),
                category,
            )
            return None

    def info(self) -> ConsumerInfo:
        with self._bus._tx() as c:
            return self._bus._consumer_info(c, self.stream, self.durable)

    def _ack(self, deliveries: Sequence[Delivery]) -> None:
        stream, durable = self.stream, self.durable
        first = deliveries[0]._token
        if first is not None and all(map(is_, map(_TOKEN, deliveries), repeat(first))):
            groups: dict[Any, Sequence[Delivery]] = {first: deliveries}  # the common case
        else:
            groups = {}
            for d in deliveries:
                groups.setdefault(d._token, []).append(d)  # type: ignore[attr-defined]
        singles = list(groups.pop(None, []))
        with self._bus._tx() as c:
            for lease, ds in groups.items():
                lo, hi = lease
                if len(set(map(_SEQ, ds))) == hi - lo + 1:  # the whole run: drop the lease
                    n = c.execute(
                        "DELETE FROM keel_leases WHERE stream=? AND durable=? AND lo=? AND hi=?",
                        (stream, durable, lo, hi),
                    ).rowcount
                    if n:
                        continue
                else:
                    self._split_lease(c, lease)
                singles.extend(ds)  # split (now or earlier): per-event rows
            if singles:
                c.executemany(
                    "DELETE FROM keel_pending WHERE stream=? AND durable=? AND seq=?",
                    [(stream, durable, d.seq) for d in singles],
                )
        self._bus._metrics.acked(stream, durable, len(deliveries))

    def _nak(self, delivery: Delivery, delay_s: float) -> None:
        with self._bus._tx() as c:
            if delivery._token is not None:
                self._split_lease(c, delivery._token)  # type: ignore[arg-type]
            c.execute(
                "UPDATE keel_pending SET visible_us=? WHERE stream=? AND durable=? AND seq=?",
                (self._bus._now_us() + int(delay_s * _US), self.stream, self.durable, delivery.seq),
            )

    def _term(self, delivery: Delivery, reason: str) -> None:
        bus = self._bus
        with bus._tx() as c:
            if delivery._token is not None:
                self._split_lease(c, delivery._token)  # type: ignore[arg-type]
            n = c.execute(
                "DELETE FROM keel_pending WHERE stream=? AND durable=? AND seq=?",
                (self.stream, self.durable, delivery.seq),
            ).rowcount
            if n:
                bus._dead_letter(
                    c,
                    self.stream,
                    self.durable,
                    delivery.seq,
                    delivery.event.id,
                    f"rejected: {reason}",
                    delivery.delivery_count,
                    encode_event(delivery.event),
                    "rejected",
                )


def _event_id_or_none(data: Any) -> str | None:
    try:
        return decode_event(bytes(data)).id
    except InvalidEventError:
        return None


def _translate(exc: sqlite3.Error, what: str) -> EventsError:
    msg = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg):
        return UnavailableError(f"events database busy while {what}: {msg}; retry")
    if isinstance(exc, sqlite3.OperationalError) and "no such table" in msg:
        return NotFoundError(f"stream storage missing while {what} (deleted concurrently?): {msg}")
    return EventsError(f"events database error while {what}: {msg}")
