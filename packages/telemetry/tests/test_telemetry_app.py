"""keel.telemetry.app: the one app convention (config rule, --help, JSON logs, start/stop, errors)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from keel.telemetry.app import App, AppConfigError, AppContext, env_var


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str = Field(description="reference profile JSON")
    metrics_port: int = Field(default=9108, ge=0, le=65535, description="/metrics port")
    window_s: float = Field(default=3600.0, gt=0)
    bus_url: str | None = None
    tags: list[str] = Field(default_factory=list)


APP = App("drift-monitor", Settings, summary="Watch the prediction log for drift.")


def test_env_var_names_follow_one_rule() -> None:
    assert env_var("drift-monitor", "metrics_port") == "KEEL_DRIFT_MONITOR_METRICS_PORT"
    assert env_var("", "metrics_port") == "KEEL_METRICS_PORT"
    assert APP.variables("home") == ("KEEL_DRIFT_MONITOR_HOME", "KEEL_HOME")


def test_precedence_default_toml_shared_toml_app_env_shared_env_app(tmp_path: Path) -> None:
    toml = tmp_path / "keel.toml"
    toml.write_text(
        '[keel]\nmetrics_port = 9000\nwindow_s = 60\nunrelated = "for another app"\n'
        '[drift-monitor]\nprofile = "p.json"\nwindow_s = 120\n'
        '[feature-worker]\ndefinitions = "defs.py"\n'
    )
    s = APP.load({"KEEL_CONFIG": str(toml)})
    assert (s.profile, s.metrics_port, s.window_s) == ("p.json", 9000, 120.0)
    s = APP.load({"KEEL_CONFIG": str(toml), "KEEL_METRICS_PORT": "9201"})
    assert s.metrics_port == 9201  # the shared variable is not ignored
    s = APP.load(
        {
            "KEEL_CONFIG": str(toml),
            "KEEL_METRICS_PORT": "9201",
            "KEEL_DRIFT_MONITOR_METRICS_PORT": "9301",
            "KEEL_DRIFT_MONITOR_TAGS": '["a", "b"]',
        }
    )
    assert s.metrics_port == 9301 and s.tags == ["a", "b"]
    assert APP.load({}, config=toml).profile == "p.json"  # --config


def test_errors_are_one_line_naming_the_variable_or_key(tmp_path: Path) -> None:
    with pytest.raises(AppConfigError) as e:
        APP.load({"KEEL_DRIFT_MONITOR_PROFILE": "p", "KEEL_DRIFT_MONITOR_WINDOW_S": "-1"})
    assert "KEEL_DRIFT_MONITOR_WINDOW_S" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(AppConfigError, match="profile is required: set KEEL_DRIFT_MONITOR_PROFILE"):
        APP.load({})
    with pytest.raises(AppConfigError, match="unknown variable KEEL_DRIFT_MONITOR_WINDOWS_S"):
        APP.load({"KEEL_DRIFT_MONITOR_PROFILE": "p", "KEEL_DRIFT_MONITOR_WINDOWS_S": "5"})
    toml = tmp_path / "k.toml"
    toml.write_text('[drift-monitor]\nprofile = "p"\nwindwo_s = 10\n')
    with pytest.raises(AppConfigError, match="unknown setting 'windwo_s'"):
        APP.load({"KEEL_CONFIG": str(toml)})
    with pytest.raises(AppConfigError, match="does not exist"):
        APP.load({"KEEL_CONFIG": str(tmp_path / "missing.toml")})
    toml.write_text("[drift-monitor\n")
    with pytest.raises(AppConfigError, match="not valid TOML"):
        APP.load({"KEEL_CONFIG": str(toml)})


def test_help_lists_every_setting_and_starts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    started = []
    assert APP.main(lambda s, ctx: started.append(s), ["--help"], env={}) == 0
    out = capsys.readouterr().out
    assert not started
    for text in ("KEEL_DRIFT_MONITOR_PROFILE | KEEL_PROFILE", "required", "default 9108"):
        assert text in out


def test_run_logs_start_ready_stop_as_json_and_masks_secrets(
    capfd: pytest.CaptureFixture[str],
) -> None:
    def run(settings: Settings, ctx: AppContext) -> None:
        ctx.ready(metrics_port=1234)

    env = {"KEEL_PROFILE": "p", "KEEL_BUS_URL": "nats://tok@127.0.0.1:4222"}
    assert APP.main(run, [], env=env, handle_signals=False) == 0
    out, err = capfd.readouterr()
    lines = [json.loads(line) for line in err.splitlines()]
    assert [r["msg"] for r in lines] == [
        "drift-monitor started",
        "drift-monitor ready",
        "drift-monitor stopped",
    ]
    assert lines[0]["settings"]["bus_url"] == "nats://***@127.0.0.1:4222"
    assert APP.main(run, [], env={**env, "KEEL_BUS_URL": "sqlite:////tmp/e.db"}) == 0
    assert "sqlite:////tmp/e.db" in capfd.readouterr().err  # a URL without secrets: verbatim
    assert "tok@" not in err and out == ""


def test_failures_are_one_json_line_with_exit_codes(capfd: pytest.CaptureFixture[str]) -> None:
    def broken(settings: Settings, ctx: AppContext) -> None:
        raise OSError(28, "No space left on device")

    assert APP.main(broken, [], env={"KEEL_PROFILE": "p"}, handle_signals=False) == 1
    assert APP.main(broken, [], env={}, handle_signals=False) == 2  # missing profile
    assert APP.main(broken, ["--bogus"], env={}) == 2
    _, err = capfd.readouterr()
    records = [json.loads(line) for line in err.splitlines()]  # every line is JSON
    errors = [r for r in records if r["level"] == "ERROR"]
    assert len(errors) == 3 and "No space left" in errors[0]["msg"]
    assert "Traceback" not in err


def test_stop_event_ends_the_run() -> None:
    stop = threading.Event()

    def run(settings: Settings, ctx: AppContext) -> None:
        assert ctx.stop is stop
        stop.set()

    assert APP.main(run, [], env={"KEEL_PROFILE": "p"}, stop=stop, handle_signals=False) == 0


def test_a_real_process_stops_on_sigterm_with_json_lines_only(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from pydantic import BaseModel, ConfigDict
            from keel.telemetry.app import App

            class S(BaseModel):
                model_config = ConfigDict(extra="forbid")
                name: str = "x"

            def run(settings, ctx):
                ctx.ready(pid=1)
                ctx.stop.wait(60)

            sys.exit(App("toy-app", S, summary="A toy.").main(run))
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    lines = [proc.stderr.readline(), proc.stderr.readline()]
    assert json.loads(lines[1])["msg"] == "toy-app ready"
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=30) == 0
    records = [json.loads(line) for line in [*lines, *rest.splitlines()]]
    assert records[-1]["msg"] == "toy-app stopped" and records[-1]["reason"] == "stop requested"


def test_renamed_variables_and_tables_fail_naming_what_replaced_them(tmp_path: Path) -> None:
    app = App(
        "drift-monitor",
        Settings,
        summary="s",
        renamed={"KEEL_DRIFT_PROFILE": "KEEL_DRIFT_MONITOR_PROFILE"},
    )
    assert app.load({"KEEL_PROFILE": "p"}).profile == "p"
    with pytest.raises(
        AppConfigError,
        match="KEEL_DRIFT_PROFILE is no longer read: drift-monitor now reads KEEL_DRIFT_MONITOR_PROFILE",
    ):
        app.load({"KEEL_PROFILE": "p", "KEEL_DRIFT_PROFILE": "q"})
    toml = tmp_path / "k.toml"
    toml.write_text('[drift_monitor]\nprofile = "p"\n')
    with pytest.raises(AppConfigError, match=r"rename it \[drift-monitor\]"):
        app.load({"KEEL_CONFIG": str(toml)})


def test_errors_while_running_and_the_stopped_line_carry_the_outcome(
    capfd: pytest.CaptureFixture[str],
) -> None:
    from keel.telemetry.app import AppError

    def broken(settings: Settings, ctx: AppContext) -> None:
        ctx.report(applied=3)
        raise AppError("cannot create home /x: Read-only file system")

    assert APP.main(broken, [], env={"KEEL_PROFILE": "p"}, handle_signals=False) == 1
    _, err = capfd.readouterr()
    records = [json.loads(line) for line in err.splitlines()]
    assert records[-2]["msg"] == "drift-monitor: cannot create home /x: Read-only file system"
    assert records[-1]["msg"] == "drift-monitor stopped"
    assert (records[-1]["applied"], records[-1]["exit"], records[-1]["reason"]) == (3, 1, "failed")
