"""The trainer app follows the app convention: --help starts nothing, bad settings exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from keel_trainer_app.main import main


def test_help_lists_settings_and_starts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], env={}) == 0
    out = capsys.readouterr().out
    assert "KEEL_TRAINER_JOB" in out and "KEEL_TRAINER_METRICS_PORT" in out


def test_missing_job_file_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([], env={"KEEL_TRAINER_JOB": str(tmp_path / "nope.toml")})
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_invalid_job_toml_fails_with_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        'name = "x"\nbogus = 1\n[model]\nbuilder = "mlp"\n[data]\npath = "d.parquet"\n'
        'features = ["a"]\ntarget = "y"\n'
    )
    code = main(
        [],
        env={
            "KEEL_TRAINER_JOB": str(job),
            "KEEL_TRAINER_METRICS_PORT": "0",
            "KEEL_TRAINER_HOME": str(tmp_path / "home"),
        },
    )
    assert code == 1
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    assert any("bogus: unknown key" in line["msg"] for line in lines)


def test_print_config_shows_effective_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tmp_path / "job.toml"
    job.write_text("")
    assert (
        main(["--print-config"], env={"KEEL_TRAINER_JOB": str(job), "KEEL_TRAINER_FRESH": "true"})
        == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert shown["fresh"] is True and shown["metrics_port"] == 9110
