"""`keel doctor`: what this machine has, what is reachable, what to do if not.

Each probe is a small function returning a `Check`; none raises. Services are
optional on embedded defaults, so an unreachable one is a hint, not a failure.
No output carries a secret: every URL goes through `keel.telemetry.redact_url`,
and `run_checks` masks any configured password that still shows up in a message.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from keel_cli.config import KeelConfig

from keel.telemetry import redact_url

_URL_RE = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.I)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    required: bool = False

    @property
    def status(self) -> str:
        """`ok`, `FAIL` (a required check failed) or `unavailable` (an optional one)."""
        return "ok" if self.ok else ("FAIL" if self.required else "unavailable")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


def _tcp(host: str, port: int, timeout: float = 1.0) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def check_python() -> Check:
    v = sys.version_info
    ok = (v.major, v.minor) == (3, 11)
    return Check(
        "python",
        ok,
        f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "" if ok else "Keel runs on CPython 3.11: use `./pants run apps/keel -- ...` or python3.11",
        required=True,
    )


def _find_repo_root(start: Path) -> Path | None:
    for p in (start, *start.parents):
        if (p / "pants.toml").is_file():
            return p
    return None


def check_pants(cwd: Path) -> Check:
    root = _find_repo_root(cwd)
    if root is None:
        return Check("pants", True, "not in a Keel checkout (no pants.toml above the cwd)")
    m = re.search(r'^pants_version\s*=\s*"([^"]+)"', (root / "pants.toml").read_text(), re.M)
    want = m.group(1) if m else "?"
    venv = root / ".pants-bootstrap" / f"venv-{want}" / "bin" / "pants"
    if venv.exists():
        return Check("pants", True, f"{want} bootstrapped in {venv.parent.parent}")
    return Check(
        "pants", False, f"{want} configured, not bootstrapped", "run ./pants --version once (≈30 s)"
    )


def check_home(cfg: KeelConfig) -> Check:
    home = cfg.home.expanduser().resolve()
    if home.exists():
        writable = os.access(home, os.W_OK)
        return Check(
            "KEEL_HOME", writable, f"{home}", "" if writable else f"make {home} writable", True
        )
    parent = home.parent
    ok = parent.exists() and os.access(parent, os.W_OK)
    return Check(
        "KEEL_HOME", ok, f"{home} (created on first use)", "" if ok else f"create {parent}", True
    )


def check_postgres(cfg: KeelConfig) -> Check:
    u = urlparse(cfg.pg_dsn)
    try:
        import psycopg

        with psycopg.connect(cfg.pg_dsn, connect_timeout=2) as conn:
            ver = conn.execute("show server_version").fetchone()
        return Check(
            "postgresql", True, f"{u.hostname}:{u.port or 5432} server {ver[0] if ver else '?'}"
        )
    except Exception as e:  # any failure is a hint, never a crash
        return Check(
            "postgresql",
            False,
            f"{u.hostname}:{u.port or 5432}: {type(e).__name__}: {str(e).strip()[:120]}",
            "the registry's PostgreSQL-backed MLflow server uses it: start it (tools/ci/services.sh) or set KEEL_PG_DSN",
        )


def check_redis(cfg: KeelConfig) -> Check:
    try:
        import redis

        r = redis.Redis.from_url(cfg.redis_url, socket_connect_timeout=1, socket_timeout=1)
        info = r.info("server")
        r.close()
        return Check(
            "redis", True, f"{redact_url(cfg.redis_url)} redis {info.get('redis_version', '?')}"
        )
    except Exception as e:
        return Check(
            "redis",
            False,
            f"{redact_url(cfg.redis_url)}: {type(e).__name__}: {str(e)[:120]}",
            "online store on Redis: start redis-server (tools/ci/services.sh) or set KEEL_REDIS_URL; "
            "embedded SQLite works without it",
        )


def check_nats(cfg: KeelConfig) -> Check:
    u = urlparse(cfg.nats_url)
    host, port = u.hostname or "127.0.0.1", u.port or 4222
    try:
        with _tcp(host, port) as s:
            s.settimeout(1.0)
            line = s.recv(4096).decode("utf-8", "replace")
        if not line.startswith("INFO "):
            return Check(
                "nats", False, f"{host}:{port} answered but is not NATS", "check KEEL_NATS_URL"
            )
        info = line.replace(" ", "")
        js = '"jetstream":true' in info
        ver = re.search(r'"version":"([^"]+)"', info)
        detail = f"{host}:{port} nats-server {ver.group(1) if ver else '?'}, JetStream {'on' if js else 'OFF'}"
        if '"auth_required":true' in info:
            detail += ", auth required (credentials in KEEL_NATS_URL)"
        return Check("nats", js, detail, "" if js else "restart nats-server with -js")
    except OSError as e:
        return Check(
            "nats",
            False,
            f"{host}:{port}: {e}",
            "event bus on NATS: start nats-server -js (tools/ci/services.sh) or set KEEL_NATS_URL; "
            "the embedded SQLite log works without it",
        )


def check_mlflow(cfg: KeelConfig) -> Check:
    try:
        import httpx

        r = httpx.get(cfg.mlflow_url.rstrip("/") + "/health", timeout=1.5)
        ok = r.status_code == 200
        return Check(
            "mlflow server",
            ok,
            f"{redact_url(cfg.mlflow_url)} HTTP {r.status_code}",
            "" if ok else "check KEEL_MLFLOW_URL",
        )
    except Exception as e:
        return Check(
            "mlflow server",
            False,
            f"{redact_url(cfg.mlflow_url)}: {type(e).__name__}",
            "the registry uses it when configured: run `mlflow server` and set KEEL_MLFLOW_URL",
        )


def check_ray(cfg: KeelConfig) -> Check:
    if not cfg.ray_address or cfg.ray_address == "local":
        return Check("ray cluster", True, "RAY_ADDRESS unset (the trainer starts a local Ray)")
    addr = cfg.ray_address.removeprefix("ray://")
    host, _, port = addr.rpartition(":")
    try:
        with _tcp(host or "127.0.0.1", int(port or 6379)):
            pass
        return Check("ray cluster", True, f"{redact_url(cfg.ray_address)} reachable")
    except (OSError, ValueError) as e:
        return Check(
            "ray cluster",
            False,
            f"{redact_url(cfg.ray_address)}: {e}",
            "start the cluster (`ray start --head`) or unset RAY_ADDRESS",
        )


def check_gpu() -> Check:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return Check("gpu", True, "none visible (no nvidia-smi); nothing in Keel needs one yet")
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return Check("gpu", True, out.replace("\n", "; ") or "nvidia-smi found, no GPU listed")
    except (subprocess.SubprocessError, OSError) as e:
        return Check(
            "gpu",
            False,
            f"nvidia-smi failed: {e}",
            "check the NVIDIA driver; nothing in Keel needs a GPU yet",
        )


def _secrets(cfg: KeelConfig) -> list[str]:
    """Passwords in the configured service URLs (to mask wherever they still show up)."""
    out = []
    for url in (cfg.nats_url, cfg.redis_url, cfg.pg_dsn, cfg.mlflow_url, cfg.ray_address or ""):
        try:
            u = urlparse(url)
            secret = u.password or (u.username if u.scheme in ("nats", "tls") else None)
        except ValueError:
            continue
        if secret:
            out.append(secret)
    return out


def redact_text(text: str, secrets: list[str]) -> str:
    """`text` with every URL redacted and every known secret replaced by ***."""
    text = _URL_RE.sub(lambda m: redact_url(m.group(0)), text)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def run_checks(cfg: KeelConfig, cwd: Path) -> list[Check]:
    secrets = _secrets(cfg)
    probes: list[tuple[str, Callable[[], Check]]] = [
        ("python", check_python),
        ("pants", lambda: check_pants(cwd)),
        ("KEEL_HOME", lambda: check_home(cfg)),
        ("postgresql", lambda: check_postgres(cfg)),
        ("redis", lambda: check_redis(cfg)),
        ("nats", lambda: check_nats(cfg)),
        ("mlflow server", lambda: check_mlflow(cfg)),
        ("ray cluster", lambda: check_ray(cfg)),
        ("gpu", check_gpu),
    ]
    checks = []
    for name, probe in probes:
        try:
            checks.append(probe())
        except Exception as e:  # a probe bug or a malformed URL: report it, never crash
            checks.append(Check(name, False, f"{type(e).__name__}: {e}", "check its configuration"))
    return [
        replace(c, detail=redact_text(c.detail, secrets), hint=redact_text(c.hint, secrets))
        for c in checks
    ]
