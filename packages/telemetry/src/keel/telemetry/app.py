"""The one convention every Keel app binary follows: configuration, logs, start/stop, errors.

An app declares its settings once (a pydantic model with ``extra="forbid"``,
or any class with pydantic's ``model_fields`` / ``model_validate``) and hands
its run function to `App.main`:

    from pydantic import BaseModel, ConfigDict, Field
    from keel.telemetry.app import App, AppContext

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        definitions: str = Field(description="feature views: a .py file or module")
        metrics_port: int = Field(default=9102, ge=0, le=65535, description="/metrics port")

    APP = App("feature-worker", Settings, summary="Consume events, keep features fresh.")

    def run(settings: Settings, ctx: AppContext) -> None:
        server = start_metrics_server(registry, port=settings.metrics_port)
        ctx.ready(metrics_port=server.port)      # one JSON "ready" line
        while not ctx.stop.is_set():             # SIGTERM / SIGINT set it
            ...

    if __name__ == "__main__":
        raise SystemExit(APP.main(run))

The rule (documented for users in docs/apps.md), for a setting ``key`` of app
``name`` (``APP`` = name upper-cased, ``-`` -> ``_``), later wins:

1. the model's default;
2. ``key`` in the ``[keel]`` table of the TOML file;
3. ``key`` in the ``[<name>]`` table of the TOML file;
4. the environment variable ``KEEL_<KEY>`` (shared by every app);
5. the environment variable ``KEEL_<APP>_<KEY>`` (this app only).

The TOML file is ``--config PATH``, else ``$KEEL_<APP>_CONFIG``, else
``$KEEL_CONFIG``. An unknown key in ``[<name>]`` or an unknown
``KEEL_<APP>_...`` variable is an error; ``[keel]`` and ``KEEL_<KEY>`` may hold
keys other apps use. Environment values are strings validated by the model
(``"9102"`` -> 9102); values starting with ``[`` or ``{`` are read as JSON.

Behaviour every app gets: ``--help`` prints the settings table (with each
variable name and default) and starts nothing; ``--print-config`` prints the
effective settings as JSON (secrets masked) and exits; logs are JSON lines on
stderr only (third-party loggers and warnings included); one ``<name> started``
line with the settings (secrets masked) and one ``<name> stopped`` line; every
error is one line and a non-zero exit: 2 for configuration, 1 for a failure
while running (``KEEL_DEBUG=1`` adds the traceback to the log line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from keel.telemetry._logging import JsonFormatter, configure_logging, get_logger
from keel.telemetry._redact import MASK, redact_url

__all__ = ["App", "AppConfigError", "AppContext", "AppError", "env_var"]

S = TypeVar("S")

_SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key")


class AppConfigError(ValueError):
    """The app's configuration is invalid; the message names the key and where it came from.
    A run function may raise it too (exit 2, like a validation error at start)."""


class AppError(RuntimeError):
    """A failure while running whose message is already clear for the operator (a port in
    use, an unwritable directory): logged as is on one line, exit 1."""


def env_var(app: str, key: str = "") -> str:
    """`KEEL_<APP>_<KEY>` (or the shared `KEEL_<KEY>` when `app` is empty)."""
    parts = ["KEEL", app.upper().replace("-", "_"), key.upper()]
    return "_".join(p for p in parts if p)


@dataclass
class AppContext:
    """What a run function gets besides its settings: the app's logger and the stop event."""

    name: str
    log: logging.Logger
    stop: threading.Event = field(default_factory=threading.Event)
    outcome: dict[str, Any] = field(default_factory=dict)

    def ready(self, **fields: Any) -> None:
        """Log the one `<name> ready` line (e.g. the bound metrics port)."""
        self.log.info(f"{self.name} ready", extra=fields)

    def report(self, **fields: Any) -> None:
        """Add `fields` (e.g. counts of what was processed) to the `<name> stopped` line."""
        self.outcome.update(fields)


def _mask(key: str, value: Any) -> Any:
    if isinstance(value, str):
        if any(w in key.lower() for w in _SECRET_WORDS):
            return MASK
        if "://" in value or "password=" in value:
            shown = redact_url(value)
            return shown if MASK in shown else value  # unchanged when there is no secret
        return value
    if isinstance(value, Mapping):
        return {k: _mask(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(key, v) for v in value]
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, not usage + message
        raise AppConfigError(f"{message} (see --help)")


@dataclass(frozen=True)
class App(Generic[S]):
    """An app binary: its `name` (kebab-case, e.g. "drift-monitor"), its settings
    model, and a one-line `summary` (plus an optional longer `description`) for --help.

    `renamed` maps environment variables an earlier version read to what replaced them
    (e.g. ``{"KEEL_DRIFT_PROFILE": "KEEL_DRIFT_MONITOR_PROFILE"}``): setting one is a
    configuration error saying so, never a silently ignored value."""

    name: str
    settings: type[S]
    summary: str
    description: str = ""
    renamed: Mapping[str, str] = field(default_factory=dict)

    # -- configuration ------------------------------------------------------------
    @property
    def fields(self) -> Mapping[str, Any]:
        return getattr(self.settings, "model_fields", {})

    def variables(self, key: str) -> tuple[str, str]:
        """The two environment variables of setting `key`: (this app's, shared)."""
        return env_var(self.name, key), env_var("", key)

    def config_path(self, env: Mapping[str, str], given: str | Path | None = None) -> Path | None:
        value = given or env.get(env_var(self.name, "config")) or env.get("KEEL_CONFIG")
        return Path(value) if value else None

    def load(self, env: Mapping[str, str] | None = None, config: str | Path | None = None) -> S:
        """Validated settings from defaults < TOML `[keel]` < TOML `[<name>]` <
        `KEEL_<KEY>` < `KEEL_<APP>_<KEY>`. Raises AppConfigError (one line)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        source: dict[str, str] = {}
        for old, new in self.renamed.items():
            if env.get(old):
                raise AppConfigError(
                    f"{old} is no longer read: {self.name} now reads {new} (see docs/apps.md)"
                )
        path = self.config_path(env, config)
        if path is not None:
            tables = self._read_toml(path)
            legacy = self.name.replace("-", "_")
            if legacy != self.name and legacy in tables:
                raise AppConfigError(
                    f"{path}: table [{legacy}] is no longer read: rename it [{self.name}]"
                )
            shared = tables.get("keel", {})
            own = tables.get(self.name, {})
            for table, where in ((shared, "keel"), (own, self.name)):
                if not isinstance(table, dict):
                    raise AppConfigError(f"{path}: [{where}] must be a table")
            for key, value in shared.items():
                if key in self.fields:
                    values[key], source[key] = value, f"[keel] in {path}"
            for key, value in own.items():
                values[key], source[key] = value, f"[{self.name}] in {path}"
        prefix = env_var(self.name) + "_"
        for var in sorted(env):
            if var.startswith(prefix) and var != env_var(self.name, "config"):
                key = var[len(prefix) :].lower()
                if key not in self.fields:
                    raise AppConfigError(
                        f"unknown variable {var}: {self.name} has no setting {key!r}"
                        f" (settings: {', '.join(self.fields)})"
                    )
        for key in self.fields:
            own_var, shared_var = self.variables(key)
            for var in (shared_var, own_var):  # the app's own variable wins
                if env.get(var):
                    values[key], source[key] = _env_value(env[var]), var
        try:
            return self.settings.model_validate(values)  # type: ignore[attr-defined,no-any-return]
        except Exception as exc:  # pydantic's ValidationError, without importing pydantic
            errors = getattr(exc, "errors", None)
            if not callable(errors):
                raise AppConfigError(f"invalid {self.name} configuration: {exc}") from None
            raise AppConfigError(
                f"invalid {self.name} configuration: " + "; ".join(self._explain(errors(), source))
            ) from None

    def _explain(self, errors: Sequence[Mapping[str, Any]], source: Mapping[str, str]) -> list[str]:
        out = []
        for err in errors:
            loc = [str(p) for p in err.get("loc", ())]
            key = loc[0] if loc else ""
            if err.get("type") == "missing":
                own_var, _ = self.variables(key)
                out.append(f"{key} is required: set {own_var} or `{key}` in [{self.name}]")
            elif err.get("type") == "extra_forbidden":
                out.append(
                    f"unknown setting {key!r} ({source.get(key, 'config')});"
                    f" settings: {', '.join(self.fields)}"
                )
            elif not key:  # a check across settings (a model validator)
                out.append(str(err.get("msg", "invalid")).removeprefix("Value error, "))
            else:
                where = source.get(key, "default")
                out.append(f"{'.'.join(loc)} ({where}): {err.get('msg', 'invalid')}")
        return out

    def _read_toml(self, path: Path) -> dict[str, Any]:
        try:
            return tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AppConfigError(
                f"config file {path} does not exist (from --config, {env_var(self.name, 'config')}"
                " or KEEL_CONFIG)"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise AppConfigError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise AppConfigError(f"config file {path} is not valid TOML: {exc}") from None

    # -- --help ---------------------------------------------------------------------
    def help_text(self) -> str:
        """The settings table --help prints."""
        lines = [
            "settings (later wins: default < TOML [keel] < TOML "
            f"[{self.name}] < KEEL_<KEY> < {env_var(self.name)}_<KEY>):"
        ]
        for key, info in self.fields.items():
            own_var, shared_var = self.variables(key)
            required = getattr(info, "is_required", lambda: False)()
            default = "required" if required else f"default {_show(getattr(info, 'default', None))}"
            lines.append(f"  {key:<20} {own_var} | {shared_var}  ({default})")
            doc = getattr(info, "description", None)
            if doc:
                lines.append(f"  {'':<20} {doc}")
        return "\n".join(lines)

    def _parser(self) -> argparse.ArgumentParser:
        parser = _Parser(
            prog=self.name,
            description="\n\n".join(p for p in (self.summary, self.description) if p),
            epilog=self.help_text(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument(
            "--config",
            metavar="PATH",
            help=f"TOML file (default: ${env_var(self.name, 'config')}, else $KEEL_CONFIG)",
        )
        parser.add_argument(
            "--print-config",
            action="store_true",
            help="print the effective settings as JSON (secrets masked) and exit",
        )
        return parser

    # -- running --------------------------------------------------------------------
    def main(
        self,
        run: Callable[[S, AppContext], None],
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        stop: threading.Event | None = None,
        handle_signals: bool = True,
    ) -> int:
        """Parse arguments, load settings, log start, call `run(settings, ctx)` until it
        returns, log stop. Returns the exit code (0 ok, 1 failed, 2 configuration).

        Tests pass `argv`, `env` and their own `stop` event (and `handle_signals=False`
        off the main thread)."""
        env = os.environ if env is None else env
        parser = self._parser()
        try:
            args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        except SystemExit as exc:  # --help: printed, nothing started
            return int(exc.code or 0)
        except AppConfigError as exc:
            return self._fail(exc, 2)
        log = _install_json_logging(self.name, debug=bool(env.get("KEEL_DEBUG")))
        try:
            settings = self.load(env, args.config)
        except AppConfigError as exc:
            return self._fail(exc, 2)
        shown = _settings_dict(settings)
        if args.print_config:
            print(json.dumps(shown, default=str, sort_keys=True))
            return 0
        ctx = AppContext(self.name, log, stop or threading.Event())
        restore = _stop_on_signals(ctx.stop) if handle_signals else (lambda: None)
        log.info(f"{self.name} started", extra={"app": self.name, "settings": shown})
        code, reason = 0, "stop requested" if ctx.stop.is_set() else "finished"
        try:
            run(settings, ctx)
            if ctx.stop.is_set():
                reason = "stop requested"
        except AppConfigError as exc:
            code, reason = self._fail(exc, 2), "configuration error"
        except KeyboardInterrupt:
            reason = "interrupted"
        except Exception as exc:
            code, reason = self._fail(exc, 1), "failed"
        finally:
            restore()
        log.info(
            f"{self.name} stopped",
            extra={**ctx.outcome, "app": self.name, "reason": reason, "exit": code},
        )
        return code

    def _fail(self, exc: BaseException, code: int) -> int:
        log = _install_json_logging(self.name, debug=bool(os.environ.get("KEEL_DEBUG")))
        message = " ".join(str(exc).split()) or type(exc).__name__
        if code == 1 and not type(exc).__module__.startswith("keel"):
            message = f"{type(exc).__name__}: {message}"
        debug = bool(os.environ.get("KEEL_DEBUG"))
        log.error(
            f"{self.name}: {message}",
            extra={"app": self.name, "error": type(exc).__name__, "exit": code},
            exc_info=exc if debug else None,
        )
        return code


def _env_value(text: str) -> Any:
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def _show(value: Any) -> str:
    if value is None:
        return "none"
    return str(_mask("", value))


def _settings_dict(settings: Any) -> dict[str, Any]:
    dump = getattr(settings, "model_dump", None)
    raw = dump(mode="json") if callable(dump) else dict(vars(settings))
    return {k: _mask(k, v) for k, v in raw.items()}


def _install_json_logging(name: str, *, debug: bool) -> logging.Logger:
    """JSON lines on stderr for Keel's loggers, third-party loggers and warnings alike."""
    configure_logging(level="DEBUG" if debug else "INFO", stream=sys.stderr)
    root = logging.getLogger()
    if not root.handlers:  # an app process: nobody else configured the root logger
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    return get_logger(f"keel.app.{name}")


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM and SIGINT set `stop`; returns a function restoring the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in old:
        signal.signal(sig, lambda *_: stop.set())

    def restore() -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    return restore
