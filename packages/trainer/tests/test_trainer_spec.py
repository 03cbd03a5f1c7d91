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


def test_without_a_lockfile_the_installed_distributions_are_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside a checkout (a pex, a wheel install) the artifact still records its dependency
    set: the hash of the sorted installed ``name==version`` lines, stable within a process."""
    import hashlib
    from importlib import metadata

    from keel.trainer._run import environment_hash, lock_hash

    monkeypatch.delenv("KEEL_LOCK_FILE", raising=False)
    pins = sorted(
        {f"{(d.metadata['Name'] or '').lower()}=={d.version}" for d in metadata.distributions()}
    )
    assert any(p.startswith("torch==") for p in pins)
    want = "dists-sha256:" + hashlib.sha256("\n".join(pins).encode()).hexdigest()
    assert lock_hash(tmp_path) == environment_hash() == want
    assert lock_hash(tmp_path) != lock_hash(lock_file=_write(tmp_path / "l.lock", "\n".join(pins)))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_local_ray_start_is_retried_and_a_remote_one_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A local start that misses Ray's registration wait is tried again (``attempts``); the
    error names the attempts. ``ray.init`` is replaced so that it fails: no Ray starts here."""
    import ray

    from keel.trainer import ClusterUnavailableError, ensure_ray

    calls: list[dict[str, object]] = []

    def failing_init(**kw: object) -> None:
        calls.append(kw)
        raise Exception("The current node timed out during startup")  # what Ray raises

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", failing_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ClusterUnavailableError, match=r"a local Ray instance \(3 attempts\)"):
        ensure_ray(num_cpus=1, attempts=3)
    assert len(calls) == 3 and all(c["num_cpus"] == 1 for c in calls)
    calls.clear()
    with pytest.raises(ClusterUnavailableError, match="the Ray cluster at ray://h:10001: The"):
        ensure_ray(address="ray://h:10001", attempts=3)
    assert [c["address"] for c in calls] == ["ray://h:10001"]
