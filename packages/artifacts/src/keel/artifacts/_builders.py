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

Keel's own built-in, ``mlp`` (:func:`build_mlp`), is the last resort: a name registered in
any of the three ways above wins. The trainer writes ``mlp`` artifacts and serving and the
MLflow pyfunc loader rebuild them with this very function, so its arguments and parameter
names are a compatibility contract.

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

from keel.artifacts._errors import BuilderNotFoundError as NotFoundError
from keel.artifacts._errors import InvalidInputError

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
    if name in BUILTIN_BUILDERS:
        return BUILTIN_BUILDERS[name]
    with _lock:
        known = sorted(
            set(_registered) | set(targets) | _entry_point_names() | set(BUILTIN_BUILDERS)
        )
    raise NotFoundError(
        f"no model builder registered as {name!r} (known: {known or 'none'}); register it with "
        f"keel.artifacts.register_builder({name!r}, fn), the {BUILDERS_ENV} environment "
        f"variable ({name}=module:function) or an entry point in the group "
        f"{ENTRY_POINT_GROUP!r}"
    )


def _entry_point_names() -> set[str]:
    return {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}


def builders_for(names: list[str], environ: Mapping[str, str] | None = None) -> dict[str, Builder]:
    """`{name: builder}` for the given names (each resolved with `resolve_builder`)."""
    return {n: resolve_builder(n, environ) for n in names}


_ACTIVATIONS = ("relu", "gelu", "tanh", "silu", "sigmoid")
_OUT_ACTIVATIONS = (None, "sigmoid", "softmax")


def build_mlp(
    n_in: int,
    hidden: int | list[int] | tuple[int, ...] = (64,),
    n_out: int = 1,
    activation: str = "relu",
    dropout: float = 0.0,
    out_activation: str | None = None,
) -> Any:
    """Keel's built-in ``mlp``: ``torch.nn.Sequential`` of, per hidden layer, Linear ->
    activation (-> Dropout when ``dropout`` > 0), then a final Linear (-> Sigmoid/Softmax when
    ``out_activation`` says so).

    Parameter names follow the Sequential's indices (``0.weight``, ``0.bias``, ``2.weight``,
    ... without dropout): the same state-dict layout wherever it is built. Bad arguments raise
    ``InvalidInputError`` naming the argument."""
    import torch  # pants: no-infer-dep  (heavy: only when a model is built)

    layers = [hidden] if isinstance(hidden, int) else list(hidden)
    for what, v in (("n_in", n_in), ("n_out", n_out), *(("hidden", h) for h in layers)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidInputError(f"mlp: {what} must be a positive int, got {v!r}")
    if activation not in _ACTIVATIONS:
        raise InvalidInputError(f"mlp: activation {activation!r} not in {list(_ACTIVATIONS)}")
    if out_activation not in _OUT_ACTIVATIONS:
        raise InvalidInputError(
            f"mlp: out_activation {out_activation!r} not in {list(_OUT_ACTIVATIONS)}"
        )
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise InvalidInputError(f"mlp: dropout must be in [0, 1), got {dropout!r}")
    act: dict[str, Callable[[], Any]] = {
        "relu": torch.nn.ReLU,
        "gelu": torch.nn.GELU,
        "tanh": torch.nn.Tanh,
        "silu": torch.nn.SiLU,
        "sigmoid": torch.nn.Sigmoid,
    }
    mods: list[Any] = []
    width = n_in
    for h in layers:
        mods += [torch.nn.Linear(width, h), act[activation]()]
        if dropout:
            mods.append(torch.nn.Dropout(float(dropout)))
        width = h
    mods.append(torch.nn.Linear(width, n_out))
    if out_activation == "sigmoid":
        mods.append(torch.nn.Sigmoid())
    elif out_activation == "softmax":
        mods.append(torch.nn.Softmax(dim=-1))
    return torch.nn.Sequential(*mods)


#: Keel's built-in builders: the last resort of ``resolve_builder``.
BUILTIN_BUILDERS: Mapping[str, Builder] = {"mlp": build_mlp}
