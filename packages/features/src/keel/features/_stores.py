"""Stores: online (SQLite, Redis), offline (Parquet by date) and streaming-state snapshots.

Online writes are conditional on event time and atomic: an older value never overwrites a
newer one. SQLite does it in one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` statement;
Redis in one Lua script (no read-then-write race, no WATCH retry loop). Reads return the
values plus their event time so callers can compute freshness.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import msgspec
import polars as pl

from keel.features._errors import InvalidInputError, UnavailableError
from keel.features._frames import from_us, to_us


def keel_home(env: Mapping[str, str] | None = None) -> Path:
    """``$KEEL_HOME`` (default ``./.keel``), where embedded state lives."""
    env = os.environ if env is None else env
    return Path(env.get("KEEL_HOME", ".keel")).absolute()


@dataclass(frozen=True)
class OnlineRow:
    """An entity's online feature values and the event time they are as of."""

    values: dict[str, Any]
    event_time: datetime

    def freshness(self, now: datetime) -> timedelta:
        return now - self.event_time


WriteRow = tuple[str, Mapping[str, Any], datetime]


class OnlineStore(Protocol):
    """Backend-neutral online store: conditional writes, reads with event time."""

    def write(self, namespace: str, rows: Sequence[WriteRow]) -> int:
        """Write ``(entity, values, event_time)`` rows; returns how many were applied (newer or equal)."""
        ...

    def read(self, namespace: str, entity: str) -> OnlineRow | None: ...

    def read_many(self, namespace: str, entities: Sequence[str]) -> list[OnlineRow | None]: ...

    def delete_namespace(self, namespace: str) -> None: ...

    def close(self) -> None: ...


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(dict)


def _encode(values: Mapping[str, Any]) -> bytes:
    try:
        return _enc.encode(dict(values))
    except (TypeError, msgspec.EncodeError) as exc:
        raise InvalidInputError(f"online values must be plain scalars: {exc}") from exc


class SQLiteOnlineStore:
    """Embedded online store: one SQLite file (WAL), usable from several threads."""

    _UPSERT = (
        "INSERT INTO online_features(namespace, entity, event_time, payload) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(namespace, entity) DO UPDATE SET event_time = excluded.event_time, "
        "payload = excluded.payload WHERE excluded.event_time >= online_features.event_time"
    )

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS online_features (namespace TEXT NOT NULL, entity TEXT NOT NULL, "
                "event_time INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (namespace, entity)) WITHOUT ROWID"
            )
        except (sqlite3.Error, OSError) as exc:
            raise UnavailableError(f"cannot open online store at {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    def write(self, namespace: str, rows: Sequence[WriteRow]) -> int:
        params = [(namespace, str(e), to_us(t), _encode(v)) for e, v, t in rows]
        with self._lock:
            try:
                before = self._db.total_changes
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(self._UPSERT, params)
                self._db.execute("COMMIT")
                return self._db.total_changes - before
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise UnavailableError(f"online store write failed: {exc}") from exc

    def read(self, namespace: str, entity: str) -> OnlineRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT event_time, payload FROM online_features WHERE namespace = ? AND entity = ?",
                (namespace, entity),
            ).fetchone()
        if row is None:
            return None
        return OnlineRow(_dec.decode(row[1]), from_us(row[0]))

    def read_many(self, namespace: str, entities: Sequence[str]) -> list[OnlineRow | None]:
        return [self.read(namespace, e) for e in entities]

    def delete_namespace(self, namespace: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM online_features WHERE namespace = ?", (namespace,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _connect_redis(url: str) -> tuple[Any, Any]:
    """The `redis` module (imported lazily) and a client for `url`, pinged once so an
    unreachable server fails here, as `UnavailableError`, not on the first write."""
    import redis

    try:
        client = redis.Redis.from_url(url)
        client.ping()
    except redis.RedisError as exc:
        raise UnavailableError(f"cannot reach Redis at {url}: {exc}") from exc
    return redis, client


_LUA_CONDITIONAL_SET = """
local cur = redis.call('HGET', KEYS[1], 't')
if cur == false or tonumber(ARGV[1]) >= tonumber(cur) then
  redis.call('HSET', KEYS[1], 't', ARGV[1], 'v', ARGV[2])
  return 1
end
return 0
"""


class RedisOnlineStore:
    """Online store on Redis: one hash per entity (``t`` event time, ``v`` msgpack values).

    The conditional write is a server-side Lua script, atomic with respect to every other
    client. Keys are ``<prefix><namespace>:<entity>``.
    """

    def __init__(self, url: str, *, prefix: str = "keel:features:") -> None:
        self._redis_mod, self._r = _connect_redis(url)
        self.prefix = prefix
        self._set = self._r.register_script(_LUA_CONDITIONAL_SET)

    def _key(self, namespace: str, entity: str) -> str:
        return f"{self.prefix}{namespace}:{entity}"

    def write(self, namespace: str, rows: Sequence[WriteRow]) -> int:
        try:
            pipe = self._r.pipeline(transaction=False)
            for e, v, t in rows:
                self._set(
                    keys=[self._key(namespace, str(e))], args=[to_us(t), _encode(v)], client=pipe
                )
            return int(sum(pipe.execute()))
        except self._redis_mod.RedisError as exc:
            raise UnavailableError(f"Redis online write failed: {exc}") from exc

    def read(self, namespace: str, entity: str) -> OnlineRow | None:
        try:
            t, v = self._r.hmget(self._key(namespace, entity), ["t", "v"])
        except self._redis_mod.RedisError as exc:
            raise UnavailableError(f"Redis online read failed: {exc}") from exc
        if t is None or v is None:
            return None
        return OnlineRow(_dec.decode(bytes(v)), from_us(int(t)))  # type: ignore[arg-type]

    def read_many(self, namespace: str, entities: Sequence[str]) -> list[OnlineRow | None]:
        try:
            pipe = self._r.pipeline(transaction=False)
            for e in entities:
                pipe.hmget(self._key(namespace, e), ["t", "v"])
            res = pipe.execute()
        except self._redis_mod.RedisError as exc:
            raise UnavailableError(f"Redis online read failed: {exc}") from exc
        return [
            None if t is None or v is None else OnlineRow(_dec.decode(v), from_us(int(t)))
            for t, v in res
        ]

    def delete_namespace(self, namespace: str) -> None:
        keys = list(self._r.scan_iter(match=f"{self.prefix}{namespace}:*", count=1000))
        if keys:
            self._r.delete(*keys)

    def close(self) -> None:
        self._r.close()


def open_online_store(
    url: str | None = None, *, home: Path | None = None, prefix: str = "keel:features:"
) -> OnlineStore:
    """``redis://...`` -> Redis; ``sqlite:///abs/path.db`` or None (``$KEEL_HOME/online.db``) -> SQLite."""
    if url is None:
        return SQLiteOnlineStore((home or keel_home()) / "online.db")
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisOnlineStore(url, prefix=prefix)
    if url.startswith("sqlite:///"):
        return SQLiteOnlineStore(url[len("sqlite://") :])
    raise InvalidInputError(
        f"online store URL {url!r}: expected redis://..., sqlite:///path or nothing"
    )


# -- offline store -------------------------------------------------------------------


class OfflineStore:
    """Parquet datasets under ``root/<dataset>/date=YYYY-MM-DD/part-*.parquet``.

    Written by the batch engine (backfills) and by the feature worker (its event log).
    """

    def __init__(self, root: str | Path, *, name_fn: Callable[[], str] | None = None) -> None:
        self.root = Path(root)
        self._name = name_fn or (lambda: uuid.uuid4().hex)

    def write(
        self, dataset: str, frame: pl.DataFrame, *, time_column: str, name: str | None = None
    ) -> list[Path]:
        """Append ``frame`` to ``dataset``, one file per UTC date of ``time_column``.

        ``name`` names the part files (``part-<name>.parquet`` in each date directory; default
        a random one): a writer that records the name it will use next can remove what a
        crash left half-committed (see `discard`). A failed write leaves no file behind."""
        if time_column not in frame.columns:
            raise InvalidInputError(
                f"offline write: time column {time_column!r} missing from {frame.columns}"
            )
        dtype = frame.schema[time_column]
        if not isinstance(dtype, pl.Datetime) or dtype.time_zone is None:
            raise InvalidInputError(
                f"offline write: {time_column!r} must be a timezone-aware Datetime, got {dtype}"
            )
        if frame.height == 0:
            return []
        part = frame.with_columns(
            pl.col(time_column).dt.convert_time_zone("UTC").dt.date().alias("__date")
        )
        paths: list[Path] = []
        tmp: Path | None = None
        try:
            for (day,), chunk in part.group_by("__date", maintain_order=True):
                d = self.root / dataset / f"date={day}"
                d.mkdir(parents=True, exist_ok=True)
                path = d / f"part-{name or self._name()}.parquet"
                tmp = path.with_suffix(".tmp")
                chunk.drop("__date").write_parquet(tmp)
                tmp.replace(path)  # readers never see a half-written file
                tmp = None
                paths.append(path)
        except (OSError, pl.exceptions.ComputeError) as exc:
            # Polars reports I/O failures (disk full, file size limit) as ComputeError.
            if isinstance(exc, pl.exceptions.ComputeError) and "IO error" not in str(exc):
                raise
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
            reason = getattr(exc, "strerror", None) or str(exc).rsplit("IO error: ", 1)[-1]
            raise UnavailableError(
                f"offline write to {self.root / dataset} failed: {reason}"
            ) from exc
        return paths

    def discard(self, dataset: str, name: str) -> int:
        """Remove the part files named ``name`` (see `write`) and any leftover ``*.tmp`` from
        ``dataset``; returns how many files."""
        base = self.root / dataset
        if not base.is_dir():
            return 0
        doomed = [*base.glob(f"date=*/part-{name}.parquet"), *base.glob("date=*/*.tmp")]
        for p in doomed:
            p.unlink(missing_ok=True)
        return len(doomed)

    def read(
        self, dataset: str, *, start: date | None = None, end: date | None = None
    ) -> pl.LazyFrame:
        """Lazily scan ``dataset``, optionally only the date partitions in ``[start, end]``."""
        base = self.root / dataset
        if not base.is_dir():
            from keel.features._errors import NotFoundError

            raise NotFoundError(f"offline dataset {dataset!r} does not exist under {self.root}")
        files = []
        for d in sorted(base.glob("date=*")):
            day = date.fromisoformat(d.name[len("date=") :])
            if (start is None or day >= start) and (end is None or day <= end):
                files.extend(sorted(d.glob("*.parquet")))
        if not files:
            from keel.features._errors import NotFoundError

            raise NotFoundError(f"offline dataset {dataset!r} has no files in the requested dates")
        return pl.scan_parquet(files)

    def datasets(self) -> list[str]:
        return (
            sorted(p.name for p in self.root.glob("*") if p.is_dir()) if self.root.is_dir() else []
        )


# -- streaming state snapshots -----------------------------------------------------------


class StateStore(Protocol):
    """Where streaming-engine snapshots live. ``save_many`` is atomic: all or none; an empty
    value deletes its name (``load`` then returns None)."""

    def save(self, name: str, data: bytes) -> None: ...

    def save_many(self, items: Mapping[str, bytes]) -> None: ...

    def load(self, name: str) -> bytes | None: ...


class MemoryStateStore:
    """Process-local snapshots (tests, throwaway workers)."""

    def __init__(self) -> None:
        self._d: dict[str, bytes] = {}

    def save(self, name: str, data: bytes) -> None:
        self._d[name] = bytes(data)

    def save_many(self, items: Mapping[str, bytes]) -> None:
        for k, v in items.items():
            if v:
                self._d[k] = bytes(v)
            else:
                self._d.pop(k, None)

    def load(self, name: str) -> bytes | None:
        return self._d.get(name)


class SQLiteStateStore:
    """Snapshots in a SQLite file (embedded default: ``$KEEL_HOME/feature_state.db``)."""

    def __init__(
        self, path: str | Path, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS snapshots (name TEXT PRIMARY KEY, data BLOB NOT NULL, saved_us INTEGER NOT NULL)"
            )
        except (sqlite3.Error, OSError) as exc:
            raise UnavailableError(f"cannot open state store at {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    def save(self, name: str, data: bytes) -> None:
        self.save_many({name: data})

    def save_many(self, items: Mapping[str, bytes]) -> None:
        now = to_us(self._clock())
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO snapshots(name, data, saved_us) VALUES (?, ?, ?) ON CONFLICT(name) "
                    "DO UPDATE SET data = excluded.data, saved_us = excluded.saved_us",
                    [(k, v, now) for k, v in items.items() if v],
                )
                self._db.executemany(
                    "DELETE FROM snapshots WHERE name = ?",
                    [(k,) for k, v in items.items() if not v],
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise UnavailableError(f"state store write to {self.path} failed: {exc}") from exc

    def load(self, name: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM snapshots WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        self._db.close()


class RedisStateStore:
    """Snapshots in Redis under ``<prefix><name>``."""

    def __init__(self, url: str, *, prefix: str = "keel:features:state:") -> None:
        self._redis_mod, self._r = _connect_redis(url)
        self.prefix = prefix

    def save(self, name: str, data: bytes) -> None:
        self.save_many({name: data})

    def save_many(self, items: Mapping[str, bytes]) -> None:
        try:
            pipe = self._r.pipeline(transaction=True)  # MULTI/EXEC: all or none
            keep = {self.prefix + k: v for k, v in items.items() if v}
            if keep:
                pipe.mset(keep)
            gone = [self.prefix + k for k, v in items.items() if not v]
            if gone:
                pipe.delete(*gone)
            pipe.execute()
        except self._redis_mod.RedisError as exc:
            raise UnavailableError(f"Redis state save failed: {exc}") from exc

    def load(self, name: str) -> bytes | None:
        try:
            v = self._r.get(self.prefix + name)
        except self._redis_mod.RedisError as exc:
            raise UnavailableError(f"Redis state load failed: {exc}") from exc
        return None if v is None else bytes(v)  # type: ignore[arg-type]

    def close(self) -> None:
        self._r.close()
