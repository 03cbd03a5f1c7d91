"""Keel's own tables, stored next to MLflow's: the digest -> version claims and the audit log.

Embedded: the same SQLite file as MLflow's store, with registry writes serialised by an
exclusive `flock` on a sibling lock file (released by the kernel if the process dies).
PostgreSQL: the same database as the MLflow server's store, with writes for one model
serialised by a session-level advisory lock (released by the server if the session dies).
The claims table's primary key (model, digest) is the uniqueness the registry relies on;
the lock additionally keeps MLflow's own version numbering conflict-free and gap-free.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from keel.registry_client._audit import AuditEntry
from keel.registry_client._errors import ConflictError, UnavailableError

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS keel_registry_versions (
        model TEXT NOT NULL,
        digest TEXT NOT NULL,
        version INTEGER,
        run_id TEXT NOT NULL,
        PRIMARY KEY (model, digest)
    )""",
    """CREATE TABLE IF NOT EXISTS keel_registry_audit (
        model TEXT NOT NULL,
        seq INTEGER NOT NULL,
        entry TEXT NOT NULL,
        PRIMARY KEY (model, seq)
    )""",
]


# An intent row without a version: a registration started and may have crashed after
# MLflow created the version (the registry then looks the version up by its digest tag).
PENDING = 0


class Tables(Protocol):
    #: True when every write (not only version creation) must happen under `lock`.
    serialize_all: bool

    def lock(self, model: str) -> contextlib.AbstractContextManager[None]: ...
    def claimed(self, model: str, digest: str) -> int | None:
        """The version registered for the digest; PENDING if only intended; None if neither."""
        ...

    def intend(self, model: str, digest: str, run_id: str) -> None:
        """Record, before MLflow creates it, that a version for the digest is being created."""
        ...

    def claim(self, model: str, digest: str, version: int) -> None: ...
    def entries(self, model: str) -> list[AuditEntry]: ...
    def audited_models(self) -> list[str]: ...
    def append(self, entry: AuditEntry) -> None: ...
    def close(self) -> None: ...


def _decode(rows: list[Any]) -> list[AuditEntry]:
    return [AuditEntry.from_json(json.loads(r[0])) for r in rows]


def _encode(entry: AuditEntry) -> str:
    return json.dumps(entry.to_json(), sort_keys=True, separators=(",", ":"))


class _SqlTables:
    """The queries both databases share, written with `?` placeholders (see `_q`)."""

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        raise NotImplementedError

    def claimed(self, model: str, digest: str) -> int | None:
        rows = self._q(
            "SELECT version FROM keel_registry_versions WHERE model = ? AND digest = ?",
            (model, digest),
        )
        return (int(rows[0][0]) if rows[0][0] is not None else PENDING) if rows else None

    def intend(self, model: str, digest: str, run_id: str) -> None:
        self._q(
            "INSERT INTO keel_registry_versions (model, digest, version, run_id) VALUES (?, ?, NULL, ?)",
            (model, digest, run_id),
        )

    def claim(self, model: str, digest: str, version: int) -> None:
        self._q(
            "UPDATE keel_registry_versions SET version = ? WHERE model = ? AND digest = ?",
            (version, model, digest),
        )

    def entries(self, model: str) -> list[AuditEntry]:
        # Ordered by the seq column; verification compares it with the seq inside each entry.
        return _decode(
            self._q("SELECT entry FROM keel_registry_audit WHERE model = ? ORDER BY seq", (model,))
        )

    def audited_models(self) -> list[str]:
        return [
            r[0] for r in self._q("SELECT DISTINCT model FROM keel_registry_audit ORDER BY model")
        ]

    def append(self, entry: AuditEntry) -> None:
        self._q(
            "INSERT INTO keel_registry_audit (model, seq, entry) VALUES (?, ?, ?)",
            (entry.model, entry.seq, _encode(entry)),
        )


class SqliteTables(_SqlTables):
    """Keel's tables in MLflow's SQLite file (embedded default)."""

    serialize_all = True

    def __init__(self, db: Path) -> None:
        self.db = db
        self._lockfile = db.with_name(db.name + ".keel-lock")
        self._held = 0
        self._fd: int | None = None
        try:
            self._conn = sqlite3.connect(db, timeout=60, isolation_level=None)
            with self.lock(""):
                # WAL: readers (MLflow's and ours) never wait for the one writer.
                self._conn.execute("PRAGMA journal_mode=WAL")
                for stmt in _SCHEMA:
                    self._conn.execute(stmt)
        except sqlite3.Error as e:
            raise UnavailableError(f"registry database {db}: {e}") from None

    @contextlib.contextmanager
    def lock(self, model: str) -> Iterator[None]:
        # One lock per file: the embedded registry has one writer at a time (re-entrant).
        if self._held == 0:
            self._fd = _open_lock(self._lockfile)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            if self._held == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                _close(self._fd)
                self._fd = None

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.IntegrityError as e:
            raise ConflictError(f"registry database: {e}") from None
        except sqlite3.Error as e:
            raise UnavailableError(f"registry database {self.db}: {e}") from None

    def close(self) -> None:
        self._conn.close()


class PostgresTables(_SqlTables):
    """Keel's tables in the MLflow server's PostgreSQL database."""

    serialize_all = False

    def __init__(self, dsn: str) -> None:
        import psycopg

        self._psycopg = psycopg
        self.dsn = _plain_dsn(dsn)
        try:
            self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
            with self._conn.transaction():
                self._conn.execute(
                    "SELECT pg_advisory_xact_lock(%s)", (_key("keel.registry.schema"),)
                )
                for stmt in _SCHEMA:
                    self._conn.execute(stmt.replace("INTEGER", "BIGINT"))
        except psycopg.Error as e:
            raise UnavailableError(f"registry database {_redact(self.dsn)}: {e}") from None

    @contextlib.contextmanager
    def lock(self, model: str) -> Iterator[None]:
        key = _key("keel.registry:" + model)
        self._q("SELECT pg_advisory_lock(?)", (key,))
        try:
            yield
        finally:
            self._q("SELECT pg_advisory_unlock(?)", (key,))

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            cur = self._conn.execute(sql.replace("?", "%s"), args)
            return cur.fetchall() if cur.description else []
        except self._psycopg.errors.UniqueViolation as e:
            raise ConflictError(f"registry database: {e}") from None
        except self._psycopg.Error as e:
            raise UnavailableError(f"registry database {_redact(self.dsn)}: {e}") from None

    def close(self) -> None:
        self._conn.close()


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _plain_dsn(url: str) -> str:
    """psycopg wants postgresql://; SQLAlchemy-style URLs name the driver (+psycopg)."""
    scheme, sep, rest = url.partition("://")
    return "postgresql://" + rest if sep and scheme.startswith("postgres") else url


def _redact(dsn: str) -> str:
    scheme, sep, rest = dsn.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.split(':')[0]}:***@{host}" if at and ":" in creds else dsn


def _open_lock(path: Path) -> int:
    import os

    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _close(fd: int) -> None:
    import os

    os.close(fd)
