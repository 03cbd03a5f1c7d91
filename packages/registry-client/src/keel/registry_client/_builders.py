"""Model builders: how a loader turns an artifact's `architecture` back into a model.

A keel.artifacts manifest names its architecture as a builder name plus JSON arguments
(`{"builder": "fraud-mlp", "args": {"n_in": 12}}`); loading runs `builder(**args)` and loads
the verified weights into the result. No code travels with the artifact, so the process that
loads it must know the builder. Product teams register theirs in one of three ways, looked
up in this order (the first that names the builder wins):

1. in process: `register_builder("fraud-mlp", make_fraud_mlp)`;
2. the environment: `KEEL_MODEL_BUILDERS="fraud-mlp=fraud.models:make_mlp,lin=pkg.m:make"`
   (comma-separated `name=module:attribute`), for processes Keel does not start itself, such
   as `mlflow models serve`;
3. installed distributions: the entry-point group `keel.model_builders`
   (`[project.entry-points."keel.model_builders"] fraud-mlp = "fraud.models:make_mlp"`).

Only the named builder's module is imported. The loading environment decides which code a
name runs: an artifact cannot bring its own.
"""

from __future__ import annotations

import importlib
import os
import re
import threading
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from keel.registry_client._errors import InvalidInputError, NotFoundError

ENTRY_POINT_GROUP = "keel.model_builders"
BUILDERS_ENV = "KEEL_MODEL_BUILDERS"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

Builder = Callable[..., Any]

_lock = threading.Lock()
_registered: dict[str, Builder] = {}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInputError(
            f"builder name {name!r}: use letters, digits, '_', '.', '-' (at most 128)"
        )
    return name


def register_builder(name: str, builder: Builder, *, replace: bool = False) -> None:
    """Make `builder` the model builder called `name` in this process.

    Registering a different callable under a taken name raises `InvalidInputError` unless
    `replace=True` (re-registering the same callable is a no-op)."""
    _check_name(name)
    if not callable(builder):
        raise InvalidInputError(f"builder {name!r}: {builder!r} is not callable")
    with _lock:
        old = _registered.get(name)
        if old is not None and old is not builder and not replace:
            raise InvalidInputError(
                f"builder {name!r} is already registered ({_describe(old)}); pass replace=True"
            )
        _registered[name] = builder


def unregister_builder(name: str) -> None:
    """Forget an in-process builder (no error if there is none)."""
    with _lock:
        _registered.pop(name, None)


def _describe(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def _env_targets(environ: Mapping[str, str]) -> dict[str, str]:
    raw = environ.get(BUILDERS_ENV, "").strip()
    out: dict[str, str] = {}
    if not raw:
        return out
    for part in raw.split(","):
        item = part.strip()
        if not item:
            continue
        name, sep, target = (s.strip() for s in item.partition("="))
        if not sep or not _NAME.match(name) or not _TARGET.match(target):
            raise InvalidInputError(
                f"{BUILDERS_ENV}: {item!r} is not `name=module:attribute` "
                "(e.g. fraud-mlp=fraud.models:make_mlp; separate several with commas)"
            )
        if name in out and out[name] != target:
            raise InvalidInputError(f"{BUILDERS_ENV} names builder {name!r} twice")
        out[name] = target
    return out


def _import_target(target: str, origin: str) -> Builder:
    module, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise NotFoundError(f"model builder {target} ({origin}) cannot be imported: {e}") from None
    if not callable(obj):
        raise InvalidInputError(f"model builder {target} ({origin}) is not callable")
    return obj  # type: ignore[no-any-return]


def _entry_point_target(name: str) -> tuple[Builder | None, list[str]]:
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    values = sorted({ep.value for ep in found})
    if len(values) > 1:
        raise InvalidInputError(
            f"model builder {name!r} is declared by several installed distributions "
            f"({', '.join(values)}): register the one to use with register_builder or "
            f"{BUILDERS_ENV}"
        )
    if not found:
        return None, []
    try:
        obj = found[0].load()
    except (ImportError, AttributeError) as e:
        raise NotFoundError(
            f"model builder {found[0].value} (entry point {ENTRY_POINT_GROUP}:{name}) "
            f"cannot be imported: {e}"
        ) from None
    if not callable(obj):
        raise InvalidInputError(
            f"model builder {found[0].value} ({ENTRY_POINT_GROUP}) is not callable"
        )
    return obj, values


def resolve_builder(name: str, environ: Mapping[str, str] | None = None) -> Builder:
    """The builder registered as `name` (in process, then `KEEL_MODEL_BUILDERS`, then the
    `keel.model_builders` entry points); `NotFoundError` naming the three ways if none."""
    _check_name(name)
    env = os.environ if environ is None else environ
    with _lock:
        hit = _registered.get(name)
    if hit is not None:
        return hit
    targets = _env_targets(env)
    if name in targets:
        return _import_target(targets[name], BUILDERS_ENV)
    builder, _ = _entry_point_target(name)
    if builder is not None:
        return builder
    with _lock:
        known = sorted(set(_registered) | set(targets) | _entry_point_names())
    raise NotFoundError(
        f"no model builder registered as {name!r} (known: {known or 'none'}); register it with "
        f"keel.registry_client.register_builder({name!r}, fn), the {BUILDERS_ENV} environment "
        f"variable ({name}=module:function) or an entry point in the group "
        f"{ENTRY_POINT_GROUP!r}"
    )


def _entry_point_names() -> set[str]:
    return {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}


def builders_for(names: list[str], environ: Mapping[str, str] | None = None) -> dict[str, Builder]:
    """`{name: builder}` for the given names (each resolved with `resolve_builder`)."""
    return {n: resolve_builder(n, environ) for n in names}
