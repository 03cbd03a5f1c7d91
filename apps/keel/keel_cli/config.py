"""CLI configuration: `KEEL_*` environment variables over an optional TOML file.

Validated at start (pydantic, extra="forbid"): a typo in the TOML or a bad URL
fails with a message naming the key and what to do, never deep inside a command.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Options that used to exist, with what replaced them.
_REMOVED: dict[str, str] = {}


class ConfigError(ValueError):
    """The configuration is invalid; the message says which key and how to fix it."""


class KeelConfig(BaseModel):
    """Where Keel keeps state and which real services it talks to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path = Field(default=Path(".keel"), description="state dir (KEEL_HOME)")
    nats_url: str = Field(default="nats://127.0.0.1:4222")
    redis_url: str = Field(default="redis://127.0.0.1:6379/0")
    pg_dsn: str = Field(default="postgresql://postgres@127.0.0.1:5432/postgres")
    mlflow_url: str = Field(default="http://127.0.0.1:5000")
    ray_address: str | None = Field(default=None)

    @field_validator("nats_url")
    @classmethod
    def _nats(cls, v: str) -> str:
        if not v.startswith(("nats://", "tls://")):
            raise ValueError("must start with nats:// or tls://, e.g. nats://127.0.0.1:4222")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @field_validator("pg_dsn")
    @classmethod
    def _pg(cls, v: str) -> str:
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return v

    @field_validator("mlflow_url")
    @classmethod
    def _mlflow(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v


_ENV = {
    "KEEL_HOME": "home",
    "KEEL_NATS_URL": "nats_url",
    "KEEL_REDIS_URL": "redis_url",
    "KEEL_PG_DSN": "pg_dsn",
    "KEEL_MLFLOW_URL": "mlflow_url",
    "RAY_ADDRESS": "ray_address",
}


def load_config(env: Mapping[str, str] | None = None, toml_path: Path | None = None) -> KeelConfig:
    """Build the config: defaults < TOML file (KEEL_CONFIG or `toml_path`) < environment."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    path = toml_path or (Path(env["KEEL_CONFIG"]) if env.get("KEEL_CONFIG") else None)
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"config file {path} does not exist: fix KEEL_CONFIG/--config"
            ) from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        section = raw.get("keel", raw)
        for key, val in section.items():
            if key in _REMOVED:
                raise ConfigError(
                    f"{path}: option {key!r} was removed; use {_REMOVED[key]} instead"
                )
            values[key] = val
    for var, key in _ENV.items():
        if env.get(var):
            values[key] = env[var]
    try:
        return KeelConfig(**values)  # type: ignore[arg-type]
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            env_var = next((v for v, k in _ENV.items() if k == key), None)
            where = f" (env {env_var})" if env_var else ""
            lines.append(f"{key}{where}: {err['msg']}")
        raise ConfigError("invalid Keel configuration: " + "; ".join(lines)) from None
