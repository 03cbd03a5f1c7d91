"""`keel events ...` against a real embedded bus in a temp KEEL_HOME."""

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from keel_cli import main as cli_main
from keel_cli.main import app
from typer.testing import CliRunner

from keel.events import Event, open_bus

runner = CliRunner()
T0 = datetime(2026, 3, 1, tzinfo=UTC)


PUBLISHED_AT = [T0 + timedelta(days=1), T0 + timedelta(days=2)]  # two publish batches


@pytest.fixture()
def bus_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    for half, published in enumerate(PUBLISHED_AT):

        def clock(at: datetime = published) -> datetime:
            return at

        with open_bus(url, clock=clock) as bus:
            bus.publish_batch(
                "txns",
                [
                    Event.create(
                        type="txn.created",
                        key=f"card-{i % 3}",
                        event_time=T0 + timedelta(minutes=i),
                        payload={"amount": float(i)},
                        id=f"e{i}",
                    )
                    for i in range(10 * half, 10 * half + 10)
                ],
            )
    return url


def _json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_tail_prints_the_last_n_events_in_order(bus_url: str) -> None:
    result = runner.invoke(app, ["events", "tail", "txns", "-n", "3", "--url", bus_url])
    assert result.exit_code == 0, result.output
    rows = _json_lines(result.output)
    assert [r["id"] for r in rows] == ["e17", "e18", "e19"]
    assert rows[-1]["payload"] == {"amount": 19.0}
    assert rows[-1]["event_time"] == (T0 + timedelta(minutes=19)).isoformat()


def test_replay_from_time_and_into_another_stream(bus_url: str) -> None:
    # --from-time is publish time (the log's own clock), not event time
    since = (PUBLISHED_AT[1] - timedelta(seconds=1)).isoformat()
    result = runner.invoke(
        app, ["events", "replay", "txns", "--from-time", since, "--url", bus_url]
    )
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in _json_lines(result.output)] == [f"e{i}" for i in range(10, 20)]

    result = runner.invoke(app, ["events", "replay", "txns", "--to", "txns-copy", "--url", bus_url])
    assert result.exit_code == 0, result.output
    assert "replayed 20 events" in result.output
    again = runner.invoke(app, ["events", "replay", "txns", "--to", "txns-copy", "--url", bus_url])
    assert again.exit_code == 0
    with open_bus(bus_url) as bus:
        assert bus.stream_info("txns-copy").count == 20  # replaying twice deduplicates


def test_stats_shows_consumer_lag(bus_url: str) -> None:
    with open_bus(bus_url) as bus:
        consumer = bus.consumer("txns", durable="worker", ack_wait_s=30.0, max_deliver=3)
        for d in consumer.fetch(max_messages=5, timeout_s=1.0):
            d.ack()
    result = runner.invoke(app, ["events", "stats", "txns", "--url", bus_url])
    assert result.exit_code == 0, result.output
    assert "txns: events=20" in result.output
    assert "worker:" in result.output and "lag=15" in result.output


def test_dead_letters_list_and_requeue(bus_url: str) -> None:
    with open_bus(bus_url) as bus:
        consumer = bus.consumer("txns", durable="worker", ack_wait_s=30.0, max_deliver=3)
        deliveries = consumer.fetch(max_messages=2, timeout_s=1.0)
        deliveries[0].term("amount failed validation")
        deliveries[1].ack()
    listed = runner.invoke(app, ["events", "dlq", "list", "txns", "--url", bus_url])
    assert listed.exit_code == 0, listed.output
    (dead,) = _json_lines(listed.output)
    assert dead["event_id"] == "e0"
    assert "amount failed validation" in dead["reason"]

    requeued = runner.invoke(app, ["events", "dlq", "requeue", "txns", "--url", bus_url])
    assert requeued.exit_code == 0, requeued.output
    assert "requeued 1" in requeued.output
    after = runner.invoke(app, ["events", "dlq", "list", "txns", "--url", bus_url])
    assert _json_lines(after.output) == []


def test_library_errors_are_one_clear_line(
    bus_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["keel", "events", "tail", "no-such-stream", "--url", bus_url])
    with pytest.raises(SystemExit) as exc:
        cli_main.main()
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "error:" in err and "no-such-stream" in err
    assert "Traceback" not in err


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli_main.main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_read_only_commands_do_not_create_a_missing_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no" / "dir" / "events.db"
    for argv in (
        ["events", "stats", "--url", f"sqlite:///{missing}"],
        ["events", "tail", "x", "--url", f"sqlite:///{missing}"],
        ["events", "dlq", "list", "x", "--url", f"sqlite:///{missing}"],
        ["events", "replay", "x", "--url", f"sqlite:///{missing}"],
    ):
        code, _, err = _main(argv, capsys)
        assert code == 1, argv
        assert err.count("\n") == 1 and "no event log" in err and str(missing) in err
    assert not (tmp_path / "no").exists()


def test_negative_counts_are_usage_errors(bus_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(["events", "tail", "txns", "-n", "-5", "--url", bus_url], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "-n" in err and "Traceback" not in err


def test_stats_json(bus_url: str) -> None:
    result = runner.invoke(app, ["events", "stats", "--json", "--url", bus_url])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["streams"][0]["stream"] == "txns" and doc["streams"][0]["events"] == 20
