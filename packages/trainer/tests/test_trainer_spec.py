"""The TrainJob spec and its TOML loader: valid jobs load, bad ones fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_testdata import N_FEATURES, job

from keel.trainer import (
    InvalidJobError,
    ModelRegistry,
    TrainJob,
    UnknownBuilderError,
    default_registry,
    load_job,
    parse_job,
)
from keel.trainer._objectives import check_names, lr_factor
from keel.trainer._spec import ScheduleSpec

TOML = """
name = "fraud-mlp"
seed = 7

[model]
builder = "mlp"
args = { n_in = 3, hidden = [8], n_out = 1 }

[data]
path = "train.parquet"
features = ["a", "b", "c"]
target = "y"

[train]
loss = "bce_with_logits"
metrics = ["accuracy"]
epochs = 2
batch_size = 32
checkpoint_every_steps = 5
optimizer = { name = "adam", lr = 0.01 }
early_stopping = { metric = "val_loss", patience = 2 }

[scaling]
num_workers = 2

[failure]
max_failures = 1
"""


def test_toml_loads_and_resolves_paths_against_the_file(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "job.toml"
    p.parent.mkdir()
    p.write_text(TOML)
    j = load_job(p)
    assert isinstance(j, TrainJob)
    assert j.data.path == tmp_path / "sub" / "train.parquet"
    assert j.train.optimizer.name == "adam" and j.train.early_stopping is not None
    assert j.scaling.num_workers == 2 and j.failure.max_failures == 1


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda t: t.replace("seed = 7", 'seed = 7\ncolour = "red"'), "colour: unknown key"),
        (
            lambda t: t.replace("checkpoint_every_steps", "checkpoint_interval"),
            "replaced by train.checkpoint_every_steps",
        ),
        (lambda t: t.replace("batch_size = 32", "batch_size = 33"), "divide evenly"),
        (lambda t: t.replace('name = "fraud-mlp"', 'name = "../etc"'), "name"),
        (
            lambda t: t.replace('features = ["a", "b", "c"]', 'features = ["a", "y"]'),
            "also a feature",
        ),
        (lambda t: t.replace("lr = 0.01", "lr = -1"), "train.optimizer.lr"),
        (lambda t: t.replace("num_workers = 2", 'num_workers = "many"'), "scaling.num_workers"),
        (lambda t: t + "\n[model.bad\n", "not valid TOML"),
    ],
)
def test_bad_jobs_name_the_key(tmp_path: Path, edit, needle: str) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "job.toml"
    p.write_text(edit(TOML))
    with pytest.raises(InvalidJobError, match=None) as ei:
        load_job(p)
    assert needle in str(ei.value), str(ei.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidJobError, match="cannot read job file"):
        load_job(tmp_path / "nope.toml")


def test_digest_covers_training_inputs_only(tmp_path: Path) -> None:
    a = job("a", tmp_path / "d.parquet")
    assert a.digest() == job("a", tmp_path / "d.parquet").digest()
    assert a.digest() != job("a", tmp_path / "d.parquet", seed=12).digest()
    assert a.digest() != job("a", tmp_path / "d.parquet", train={"epochs": 4}).digest()
    # failure policy, tracking, export and scaling may change between a run and its resume
    assert (
        a.digest()
        == job(
            "a", tmp_path / "d.parquet", failure={"max_failures": 5}, tracking={"enabled": True}
        ).digest()
    )


def test_registry_refuses_duplicates_and_unknown_builders() -> None:
    reg = default_registry()
    with pytest.raises(InvalidJobError, match="already registered"):
        reg.add("mlp", lambda: None)
    with pytest.raises(UnknownBuilderError, match="not registered"):
        reg.build("tower", {})
    with pytest.raises(InvalidJobError, match="do not fit builder 'mlp'"):
        reg.build("mlp", {"n_in": N_FEATURES, "bogus": 1})
    mine = ModelRegistry()

    @mine.register("tiny")
    def tiny(n: int) -> int:
        return n

    assert mine.build("tiny", {"n": 3}) == 3 and dict(mine) == {"tiny": tiny}


def test_unknown_loss_and_metrics_are_refused() -> None:
    with pytest.raises(UnknownBuilderError, match="train.loss"):
        check_names("hinge", [])
    with pytest.raises(UnknownBuilderError, match="train.metrics"):
        check_names("mse", ["f1"])


def test_schedules_are_pure_functions_of_the_step() -> None:
    cos = ScheduleSpec(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(cos, 0, 110) == pytest.approx(0.1)
    assert lr_factor(cos, 9, 110) == pytest.approx(1.0)
    assert lr_factor(cos, 10, 110) == pytest.approx(1.0)
    assert lr_factor(cos, 60, 110) == pytest.approx(0.55)
    assert lr_factor(cos, 110, 110) == pytest.approx(0.1)
    step = ScheduleSpec(name="step", step_size=5, gamma=0.5)
    assert [lr_factor(step, s, 20) for s in (0, 4, 5, 10)] == [1.0, 1.0, 0.5, 0.25]


def test_parse_job_values_without_file() -> None:
    j = parse_job(
        {
            "name": "x",
            "model": {"builder": "mlp"},
            "data": {"path": "d.parquet", "features": ["a"], "target": "y"},
        }
    )
    assert j.train.epochs == 1 and j.scaling.num_workers == 1
    with pytest.raises(InvalidJobError, match="data.features"):
        parse_job(
            {
                "name": "x",
                "model": {"builder": "mlp"},
                "data": {"path": "d.parquet", "features": [], "target": "y"},
            }
        )


def test_code_version_and_lock_hash_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    from keel.trainer._run import code_version, lock_hash

    monkeypatch.setenv("KEEL_CODE_VERSION", "abc123+dirty")
    assert code_version() == ("abc123", True)
    monkeypatch.setenv("KEEL_CODE_VERSION", "abc123")
    assert code_version() == ("abc123", False)
    monkeypatch.delenv("KEEL_CODE_VERSION")
    assert code_version(tmp_path) == ("unknown", True)  # not a checkout
    lock = tmp_path / "x.lock"
    lock.write_text("pins")
    assert lock_hash(lock_file=lock) == "sha256:" + hashlib.sha256(b"pins").hexdigest()
    monkeypatch.setenv("KEEL_LOCK_FILE", str(lock))
    assert lock_hash(tmp_path) == "sha256:" + hashlib.sha256(b"pins").hexdigest()
    monkeypatch.delenv("KEEL_LOCK_FILE")
    (tmp_path / "3rdparty" / "python").mkdir(parents=True)
    (tmp_path / "3rdparty" / "python" / "default.lock").write_text("L")
    (tmp_path / "sub").mkdir()
    assert lock_hash(tmp_path / "sub") == "sha256:" + hashlib.sha256(b"L").hexdigest()
    with pytest.raises(InvalidJobError, match="cannot read lock file"):
        lock_hash(lock_file=tmp_path / "missing.lock")
