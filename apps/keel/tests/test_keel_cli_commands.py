import json
import re
import socket
from pathlib import Path

import pytest
from keel_cli.config import load_config
from keel_cli.doctor import check_nats, check_postgres, check_redis, run_checks
from keel_cli.main import app
from typer.testing import CliRunner

runner = CliRunner()


def _repo_version() -> str:
    for base in Path(__file__).resolve().parents:
        if (base / "VERSION").is_file():
            return (base / "VERSION").read_text().strip()
    raise AssertionError("VERSION resource not found")


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for cmd in ("version", "doctor"):
        assert cmd in result.output


def test_version_prints_the_version_file() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"keel {_repo_version()}"
    assert re.fullmatch(r"keel \d+\.\d+\.\d+.*", result.output.strip())


def test_bad_config_exits_2_with_clear_message() -> None:
    result = runner.invoke(app, ["doctor"], env={"KEEL_REDIS_URL": "http://nope"})
    assert result.exit_code == 2
    assert "redis_url" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_services_are_hints_not_failures(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens here
    cfg = load_config(
        env={
            "KEEL_HOME": str(tmp_path),
            "KEEL_NATS_URL": f"nats://127.0.0.1:{port}",
            "KEEL_REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "KEEL_PG_DSN": f"postgresql://postgres@127.0.0.1:{port}/postgres",
        }
    )
    for check in (check_nats(cfg), check_redis(cfg), check_postgres(cfg)):
        assert not check.ok
        assert not check.required
        assert check.hint, f"{check.name} gives no advice"
    by_name = {c.name: c for c in run_checks(cfg, tmp_path)}
    assert by_name["KEEL_HOME"].ok
    assert by_name["python"].ok


@pytest.mark.integration
def test_doctor_sees_the_real_services(tmp_path: Path) -> None:
    from testutil.isolation import nats_url, pg_dsn, redis_url

    cfg = load_config(
        env={
            "KEEL_HOME": str(tmp_path),
            "KEEL_NATS_URL": nats_url(),
            "KEEL_REDIS_URL": redis_url(),
            "KEEL_PG_DSN": pg_dsn(),
        }
    )
    nats, redis_, pg = check_nats(cfg), check_redis(cfg), check_postgres(cfg)
    assert nats.ok and "JetStream on" in nats.detail, nats
    assert redis_.ok and "redis" in redis_.detail, redis_
    assert pg.ok and "server" in pg.detail, pg


def test_doctor_never_prints_a_password(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        "KEEL_HOME": str(tmp_path),
        "KEEL_REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0",
        "KEEL_PG_DSN": f"postgresql://keel:hunter2@127.0.0.1:{port}/keel",
        "KEEL_NATS_URL": f"nats://hunter2@127.0.0.1:{port}",
        "KEEL_MLFLOW_URL": f"http://u:hunter2@127.0.0.1:{port}",
    }
    table = runner.invoke(app, ["doctor"], env=env)
    as_json = runner.invoke(app, ["doctor", "--json"], env=env)
    for result in (table, as_json):
        assert "hunter2" not in result.output
    doc = json.loads(as_json.output)
    by_name = {c["name"]: c for c in doc["checks"]}
    assert by_name["redis"]["status"] == "unavailable" and "***" in by_name["redis"]["detail"]
    assert doc["ok"] is True and doc["keel_version"]


def test_help_offers_shell_completion_and_marks_planned_parts() -> None:
    result = runner.invoke(app, ["--help"])
    assert "--install-completion" in result.output
    assert "Planned" in result.output


def test_unexpected_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from keel_cli import main as cli_main

    def boom() -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(cli_main, "keel_version", boom)
    with pytest.raises(SystemExit) as exc:
        cli_main.main(["version"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.count("\n") == 1
    assert "disk full" in err and "Traceback" not in err


def test_negative_demo_seed_is_a_one_line_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from keel_cli import main as cli_main

    with pytest.raises(SystemExit) as exc:
        cli_main.main(["demo", "--seed", "-1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "--seed" in err
