"""Model builders (in process, KEEL_MODEL_BUILDERS, entry points) and the load-time trust
policy from the environment: pure lookups, no MLflow store."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.artifacts import TrustPolicy, generate_keypair
from keel.registry_client import (
    BUILDERS_ENV,
    ENTRY_POINT_GROUP,
    InvalidInputError,
    NotFoundError,
    register_builder,
    resolve_builder,
    unregister_builder,
)


def make_a(n: int = 1) -> tuple[str, int]:
    return ("a", n)


def make_b(n: int = 1) -> tuple[str, int]:
    return ("b", n)


@pytest.fixture
def clean() -> Iterator[None]:
    yield
    for name in ("lin", "ep-model", "dup"):
        unregister_builder(name)


def test_in_process_registration_wins_and_conflicts_are_refused(clean: None) -> None:
    register_builder("lin", make_a)
    register_builder("lin", make_a)  # same callable again: a no-op
    assert resolve_builder("lin", environ={BUILDERS_ENV: f"lin={__name__}:make_b"}) is make_a
    with pytest.raises(InvalidInputError, match="already registered"):
        register_builder("lin", make_b)
    register_builder("lin", make_b, replace=True)
    assert resolve_builder("lin", environ={})(3) == ("b", 3)
    with pytest.raises(InvalidInputError, match="builder name"):
        register_builder("no spaces", make_a)
    with pytest.raises(InvalidInputError, match="not callable"):
        register_builder("lin", 42, replace=True)  # type: ignore[arg-type]


def test_environment_names_module_attributes(clean: None) -> None:
    env = {BUILDERS_ENV: f" lin = {__name__}:make_a , other={__name__}:make_b "}
    assert resolve_builder("lin", environ=env) is make_a
    assert resolve_builder("other", environ=env) is make_b
    with pytest.raises(InvalidInputError, match="name=module:attribute"):
        resolve_builder("lin", environ={BUILDERS_ENV: "lin"})
    with pytest.raises(InvalidInputError, match="twice"):
        resolve_builder("lin", environ={BUILDERS_ENV: f"lin={__name__}:make_a,lin=x:y"})
    with pytest.raises(NotFoundError, match="cannot be imported"):
        resolve_builder("lin", environ={BUILDERS_ENV: "lin=keel.nowhere:make"})
    with pytest.raises(NotFoundError, match="cannot be imported"):
        resolve_builder("lin", environ={BUILDERS_ENV: f"lin={__name__}:missing"})
    with pytest.raises(InvalidInputError, match="not callable"):
        resolve_builder("lin", environ={BUILDERS_ENV: f"lin={__name__}:ENTRY_POINT_GROUP"})
    with pytest.raises(NotFoundError, match="KEEL_MODEL_BUILDERS.*keel.model_builders"):
        resolve_builder("unknown", environ={})


def _dist(root: Path, name: str, lines: list[str]) -> None:
    d = root / f"{name}-1.0.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (d / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n" + "\n".join(lines) + "\n")


def test_entry_points_of_installed_distributions(
    clean: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dist(tmp_path, "team_models", [f"ep-model = {__name__}:make_b", f"dup = {__name__}:make_a"])
    _dist(tmp_path, "other_team", [f"dup = {__name__}:make_b"])
    monkeypatch.syspath_prepend(str(tmp_path))
    assert str(tmp_path) in sys.path
    assert resolve_builder("ep-model", environ={}) is make_b
    # the environment overrides an entry point; two distributions disagreeing is an error
    assert (
        resolve_builder("ep-model", environ={BUILDERS_ENV: f"ep-model={__name__}:make_a"}) is make_a
    )
    with pytest.raises(InvalidInputError, match="several installed distributions"):
        resolve_builder("dup", environ={})
    register_builder("dup", make_a)
    assert resolve_builder("dup", environ={}) is make_a


def test_trust_policy_from_the_environment(tmp_path: Path) -> None:
    from keel.registry_client.pyfunc import UntrustedLoadError, trust_policy_from_env

    _, pub = generate_keypair()
    key = tmp_path / "keys" / "a.pub"
    key.parent.mkdir()
    key.write_bytes(pub)
    with pytest.raises(UntrustedLoadError, match="KEEL_TRUSTED_KEYS"):
        trust_policy_from_env({})
    assert trust_policy_from_env({"KEEL_TRUSTED_KEYS": str(key)}).public_keys == (pub,)
    both = trust_policy_from_env({"KEEL_TRUSTED_KEYS": f"{key.parent}:{key}"})
    assert both.public_keys == (pub, pub) and not both.allow_unsigned
    assert trust_policy_from_env({"KEEL_ALLOW_UNSIGNED": "1"}) == TrustPolicy.unsigned_ok()
    with pytest.raises(InvalidInputError, match="KEEL_ALLOW_UNSIGNED"):
        trust_policy_from_env({"KEEL_ALLOW_UNSIGNED": "perhaps"})
    with pytest.raises(InvalidInputError, match="no key file"):
        trust_policy_from_env({"KEEL_TRUSTED_KEYS": str(tmp_path / "nope.pub")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="holds no"):
        trust_policy_from_env({"KEEL_TRUSTED_KEYS": str(tmp_path / "empty")})
    (tmp_path / "bad.pub").write_text("not a key")
    with pytest.raises(InvalidInputError, match="KEEL_TRUSTED_KEYS"):
        trust_policy_from_env({"KEEL_TRUSTED_KEYS": str(tmp_path / "bad.pub")})
