"""Model builders: in process, KEEL_MODEL_BUILDERS, entry points — and build_model using them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.artifacts import (
    BUILDERS_ENV,
    ENTRY_POINT_GROUP,
    BuilderNotFoundError,
    InvalidInputError,
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
    for name in ("lin", "ep-model", "dup", "mlp"):
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
    with pytest.raises(BuilderNotFoundError, match="cannot be imported"):
        resolve_builder("lin", environ={BUILDERS_ENV: "lin=keel.nowhere:make"})
    with pytest.raises(BuilderNotFoundError, match="cannot be imported"):
        resolve_builder("lin", environ={BUILDERS_ENV: f"lin={__name__}:missing"})
    with pytest.raises(InvalidInputError, match="not callable"):
        resolve_builder("lin", environ={BUILDERS_ENV: f"lin={__name__}:ENTRY_POINT_GROUP"})
    with pytest.raises(BuilderNotFoundError, match="KEEL_MODEL_BUILDERS.*keel.model_builders"):
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


def test_build_model_uses_the_registered_builders_when_no_mapping_is_given(
    clean: None, tmp_path: Path
) -> None:
    import torch
    from artifacts_testdata import Keys, build, spec

    from keel.artifacts import Architecture, load_artifact

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    keys = Keys()
    cfg = {"feature_url": "redis://h:1/0"}
    d = build(tmp_path, keys, weights=model.state_dict())  # builder "mlp", hidden 4
    x = torch.randn(5, 3)
    built = load_artifact(d, keys.policy, runtime_config=cfg).build_model()  # the built-in
    assert torch.equal(built(x), model(x))

    def scaled(n_in: int, hidden: int, n_out: int) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(n_in, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, n_out)
        )

    register_builder("mlp", scaled)  # a registered name wins over the built-in
    custom = load_artifact(d, keys.policy, runtime_config=cfg).build_model()
    assert isinstance(custom[1], torch.nn.Tanh)

    other = spec(architecture=Architecture(builder="nope", args={}))
    d2 = build(tmp_path, keys, name="b", spec=other, weights=model.state_dict())
    with pytest.raises(BuilderNotFoundError, match="'nope'.*register_builder"):
        load_artifact(d2, keys.policy, runtime_config=cfg).build_model()


def test_the_builtin_mlp_refuses_bad_arguments_by_name() -> None:
    from keel.artifacts import build_mlp

    m = build_mlp(n_in=3, hidden=[8, 4], n_out=2, activation="silu", dropout=0.1)
    assert [type(x).__name__ for x in m] == [
        "Linear",
        "SiLU",
        "Dropout",
        "Linear",
        "SiLU",
        "Dropout",
        "Linear",
    ]
    assert build_mlp(2, 3, out_activation="sigmoid")[-1].__class__.__name__ == "Sigmoid"
    for kw, needle in (
        ({"n_in": 0}, "n_in"),
        ({"n_in": 2, "hidden": [4, True]}, "hidden"),
        ({"n_in": 2, "activation": "swish"}, "activation"),
        ({"n_in": 2, "dropout": 1.0}, "dropout"),
        ({"n_in": 2, "out_activation": "relu"}, "out_activation"),
    ):
        with pytest.raises(InvalidInputError, match=needle):
            build_mlp(**kw)  # type: ignore[arg-type]
