"""Per-test-process isolation.

Pants runs test files in parallel processes and sets KEEL_TEST_SLOT (the
`[pytest] execution_slot_var`) to a number unique among concurrently running
processes. Use it to derive ports, directory, stream and database names so
parallel tests never share state.
"""

from __future__ import annotations

import os
import uuid


def slot() -> int:
    """This process's execution slot (0 when run outside Pants)."""
    raw = os.environ.get("KEEL_TEST_SLOT", "0")
    try:
        return int(raw)
    except ValueError:
        return 0


def unique_name(prefix: str) -> str:
    """A name unique to this slot, process and call: for streams, DBs, keys."""
    return f"{prefix}_s{slot()}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def port_base(offset: int = 0) -> int:
    """A port range of 100 ports reserved for this slot: 20000 + 100*slot + offset."""
    return 20000 + 100 * slot() + offset


def nats_url() -> str:
    return os.environ.get("KEEL_NATS_URL", "nats://127.0.0.1:4222")


def redis_url() -> str:
    return os.environ.get("KEEL_REDIS_URL", "redis://127.0.0.1:6379/0")


def pg_dsn() -> str:
    return os.environ.get("KEEL_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
