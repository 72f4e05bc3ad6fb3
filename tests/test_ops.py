"""`skor-bridge status` and `skor-bridge events`: figures checked exactly against a running
bridge and a real receiver; retry and replay deliver again with the same event ids."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from skor_bridge.capture import triggers
from skor_bridge.cli import app
from skor_bridge.ops import events as ops_events
from skor_bridge.tools.receiver import Receiver
from tests.helpers import execute, scalar, short_retry_config, wait_until

TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text)"


def cli(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def row_id(request) -> int:
    return json.loads(request.body)["data"]["id"]


def listed(dsn, *args):
    result = cli("events", "list", "--dsn", dsn, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["events"]


@pytest.mark.slow
def test_status_and_events_list_report_pending_delivered_and_dead_events_exactly(
    dsn, capture_table, bridge, tmp_path
):
    # Given a receiver that rejects rows 3-5 (dead letters at once) and answers 503 from row 11
    capture_table(TABLE, "items")

    def respond(request):
        row = row_id(request)
        return 400 if row in (3, 4, 5) else 503 if row > 10 else 200

    with Receiver(respond=respond) as receiver:
        process = bridge(
            "--dsn",
            dsn,
            "--webhook",
            f"webhook={receiver.url}",
            "--config",
            short_retry_config(tmp_path),
        ).wait_active()
        # When rows 1-10 are delivered or dead-lettered
        execute(dsn, "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 10) g")
        wait_until(
            lambda: (
                scalar(dsn, "SELECT position FROM skor.outputs") == 10
                and scalar(dsn, "SELECT sum(delivered) FROM skor.delivery_stats") == 7
            ),
            timeout=15,
            message="rows 1-10 settled",
        )
        # And rows 11-16 are captured but keep failing
        execute(dsn, "INSERT INTO items SELECT g, 'b' FROM generate_series(11, 16) g")
        wait_until(
            lambda: (
                {row_id(r) for r in receiver.requests} >= set(range(11, 17))
                and scalar(dsn, "SELECT last_error FROM skor.outputs") is not None
                and "503" in scalar(dsn, "SELECT last_error FROM skor.outputs")
            ),
            timeout=15,
            message="rows 11-16 attempted",
        )

        # Then status counts 6 pending, 3 dead and 7 delivered in the last minute
        result = cli("status", "--dsn", dsn, "--json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        (output,) = doc["outputs"]
        assert {
            k: output[k]
            for k in (
                "name",
                "kind",
                "position",
                "pending",
                "dead_letters",
                "retrying",
                "delivered_last_minute",
                "delivered_total",
            )
        } == {
            "name": "webhook",
            "kind": "webhook",
            "position": 10,
            "pending": 6,
            "dead_letters": 3,
            "retrying": 0,
            "delivered_last_minute": 7,
            "delivered_total": 7,
        }
        assert output["last_error"].startswith("HTTP 503") and output["last_error_at"]
        assert 0 < output["lag_seconds"] < 30
        assert [i["role"] for i in doc["instances"]] == ["active"]
        assert doc["instances"][0]["heartbeat_age"] < 5
        assert {k: doc["log"][k] for k in ("head", "first", "rows", "outbox_rows")} == {
            "head": 16,
            "first": 1,
            "rows": 16,
            "outbox_rows": 0,
        }
        assert doc["log"]["partitions"] >= 1 and doc["log"]["total_bytes"] > 0

        # And the terminal table shows the same figures, aligned under their headers
        text = cli("status", "--dsn", dsn).stdout
        header, line = text.splitlines()[:2]
        assert header.split()[:7] == [
            "OUTPUT",
            "KIND",
            "POSITION",
            "PENDING",
            "LAG",
            "DELIVERED/1M",
            "DEAD",
        ]
        assert line.split()[:4] == ["webhook", "webhook", "10", "6"]
        assert line.split()[5:7] == ["7", "3"] and "HTTP 503" in line
        assert header.index("PENDING") + len("PENDING") == line.index(" 6 ") + 2
        assert "active" in text and "event log: head 16, 16 retained event(s)" in text

        # And events list splits the 16 events by status, oldest first
        dead = listed(dsn, "--status", "dead")
        assert [e["position"] for e in dead] == [3, 4, 5]
        assert all(e["attempts"] == 1 and e["last_error"].startswith("HTTP 400") for e in dead)
        assert {e["id"] for e in dead} == {
            r.headers["webhook-id"] for r in receiver.requests if row_id(r) in (3, 4, 5)
        }
        pending = listed(dsn, "--status", "pending", "--output", "webhook")
        assert [e["position"] for e in pending] == [11, 12, 13, 14, 15, 16]
        assert all(e["attempts"] is None and e["table"] == "items" for e in pending)
        delivered = listed(dsn, "--status", "delivered")
        assert [e["position"] for e in delivered] == [1, 2, 6, 7, 8, 9, 10]
        everything = listed(dsn)
        assert sorted(e["position"] for e in everything) == list(range(1, 17))
        assert {e["status"] for e in everything} == {"dead", "pending", "delivered"}
        assert [e["position"] for e in listed(dsn, "--status", "delivered", "--limit", "2")] == [
            9,
            10,
        ]
        assert len(listed(dsn, "--table", "public.items", "--since", "1h")) == 16
        execute(dsn, "CREATE TABLE other (id int)")  # (an unknown table is an error)
        assert listed(dsn, "--table", "other") == []
        future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        assert listed(dsn, "--since", future) == []
        table = cli("events", "list", "--dsn", dsn, "--status", "dead").stdout
        assert table.splitlines()[0].split()[:4] == ["ID", "OUTPUT", "STATUS", "POSITION"]
        assert len(table.splitlines()) == 4 and "HTTP 400" in table

    # When the bridge stops and two more rows are written (they wait in the outbox)
    assert process.stop() == 0
    execute(dsn, "INSERT INTO items SELECT g, 'c' FROM generate_series(17, 18) g")
    # Then they count as pending too, and the position did not move
    doc = json.loads(cli("status", "--dsn", dsn, "--json").stdout)
    assert doc["outputs"][0]["pending"] == 8 and doc["outputs"][0]["position"] == 10
    assert doc["log"]["outbox_rows"] == 2


@pytest.mark.slow
def test_parked_events_of_a_stuck_row_count_as_pending_until_delivered(
    dsn, capture_table, bridge, tmp_path
):
    # Given a window of 10 events and a receiver that answers 503 for row 1 until released
    capture_table(TABLE, "items")
    stuck = threading.Event()
    stuck.set()
    with Receiver(respond=lambda r: 503 if stuck.is_set() and row_id(r) == 1 else 200) as receiver:
        process = bridge(
            "--dsn",
            dsn,
            "--webhook",
            f"webhook={receiver.url}",
            "--max-in-flight",
            "10",
            "--config",
            short_retry_config(tmp_path, max_backoff=0.2),
        )
        process.wait_active()
        # When row 1 fails while 30 other rows fill the window, so row 1 is parked
        execute(dsn, "INSERT INTO items VALUES (1, 'stuck')")
        wait_until(lambda: receiver.count >= 2, message="row 1 tried")
        execute(dsn, "INSERT INTO items SELECT g, 'a' FROM generate_series(2, 31) g")
        assert receiver.wait_for(30)
        process.wait_for_log("parked")
        wait_until(
            lambda: scalar(dsn, "SELECT position FROM skor.outputs") == 31,
            timeout=10,
            message="position 31",
        )
        # And row 1 changes again (that event waits behind the parked one)
        execute(dsn, "UPDATE items SET name = 'again' WHERE id = 1")
        wait_until(
            lambda: scalar(dsn, "SELECT next_pos FROM skor.sequencer") == 33,
            timeout=10,
            message="update captured",
        )

        # Then status counts the parked event and the update as pending
        doc = json.loads(cli("status", "--dsn", dsn, "--json").stdout)
        output = doc["outputs"][0]
        assert (output["position"], output["pending"], output["parked"]) == (31, 2, 1)
        assert output["lag_seconds"] > 0
        assert "2 (1 parked)" in cli("status", "--dsn", dsn).stdout
        # And events list shows both as pending and neither as delivered
        assert [e["position"] for e in listed(dsn, "--status", "pending")] == [1, 32]
        assert [e["position"] for e in listed(dsn, "--status", "delivered")] == list(range(2, 32))

        # When the receiver recovers
        stuck.clear()
        assert receiver.wait_for(32, timeout=10)
        # Then nothing is pending any more
        wait_until(
            lambda: (
                json.loads(cli("status", "--dsn", dsn, "--json").stdout)["outputs"][0]["pending"]
                == 0
            ),
            timeout=10,
            message="nothing pending",
        )
        assert [e["position"] for e in listed(dsn, "--status", "delivered")] == list(range(1, 33))


@pytest.mark.slow
def test_retrying_dead_letters_delivers_them_again_with_their_original_event_ids(
    dsn, capture_table, bridge
):
    # Given rows 3 and 4 dead-lettered because the receiver answered 400
    capture_table(TABLE, "items")
    rejected = {3, 4}
    with Receiver(respond=lambda r: 400 if row_id(r) in rejected else 200) as receiver:
        bridge("--dsn", dsn, "--webhook", f"webhook={receiver.url}").wait_active()
        execute(dsn, "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 6) g")
        wait_until(
            lambda: (
                scalar(dsn, "SELECT count(*) FROM skor.dead_letters") == 2
                and receiver.wait_for(4, timeout=0)
            ),
            timeout=15,
            message="2 dead, 4 delivered",
        )
        dead_ids = {
            row_id(r): r.headers["webhook-id"] for r in receiver.requests if row_id(r) in rejected
        }

        # When the receiver is fixed and the operator retries row 3's event by its id
        rejected.clear()
        result = cli("events", "retry", "--dsn", dsn, "--id", dead_ids[3])
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == "1 dead letter(s) queued for retry"
        # Then it arrives within about a second, with the same webhook-id
        assert receiver.wait_for(5, timeout=5)
        assert receiver.delivered()[-1].headers["webhook-id"] == dead_ids[3]

        # When every remaining dead letter of the output is retried
        result = cli("events", "retry", "--dsn", dsn, "--output", "webhook", "--all-dead")
        assert result.stdout.strip() == "1 dead letter(s) queued for retry"
        assert receiver.wait_for(6, timeout=5)
        # Then row 4 arrived with its original id, and both letters are marked delivered
        assert receiver.delivered()[-1].headers["webhook-id"] == dead_ids[4]
        wait_until(
            lambda: scalar(dsn, "SELECT count(*) FROM skor.redeliveries") == 0,
            timeout=5,
            message="redeliveries finished",
        )
        assert (
            scalar(dsn, "SELECT string_agg(DISTINCT status, ',') FROM skor.dead_letters")
            == "delivered"
        )
        assert listed(dsn, "--status", "dead") == []
        assert [e["position"] for e in listed(dsn, "--status", "delivered")] == [1, 2, 3, 4, 5, 6]

    # And retrying again finds nothing; an id that is not dead is reported, not queued
    result = cli("events", "retry", "--dsn", dsn, "--id", dead_ids[4])
    assert result.exit_code == 0
    assert result.stdout.strip() == "0 dead letter(s) queued for retry"
    assert "1 id(s) skipped" in result.stderr


@pytest.mark.slow
def test_replay_delivers_one_tables_delivered_events_again_in_order_with_the_same_ids(
    dsn, capture_table, bridge, receiver, monkeypatch
):
    # Given 50 items and 10 notes delivered
    items = capture_table(TABLE, "items")
    notes = capture_table("CREATE TABLE notes (id int PRIMARY KEY)", "notes")
    triggers.install(dsn, [*items, *notes], "durable")  # one install covers both tables
    bridge("--dsn", dsn, "--webhook", f"webhook={receiver.url}").wait_active()
    started = datetime.now(UTC)
    execute(
        dsn,
        "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 50) g",
        "UPDATE items SET name = 'b' WHERE id <= 5",
        "INSERT INTO notes SELECT g FROM generate_series(1, 10) g",
    )
    assert receiver.wait_for(65)
    wait_until(
        lambda: scalar(dsn, "SELECT position FROM skor.outputs") == 65,
        timeout=10,
        message="position 65",
    )
    first = [(r.headers["webhook-id"], json.loads(r.body)) for r in receiver.delivered()]

    # When the operator replays the items captured since the test started, in chunks of 7
    monkeypatch.setattr(ops_events, "REPLAY_CHUNK", 7)
    result = cli(
        "events",
        "replay",
        "--dsn",
        dsn,
        "--output",
        "webhook",
        "--since",
        started.isoformat(),
        "--table",
        "items",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "55 event(s) queued for replay to webhook"

    # Then the 55 item events arrive again with the same ids, each row's changes in order
    assert receiver.wait_for(65 + 55, timeout=10)
    again = [(r.headers["webhook-id"], json.loads(r.body)) for r in receiver.delivered()[65:]]
    assert sorted(i for i, _ in again) == sorted(i for i, b in first if b["table"] == "items")
    for row in range(1, 6):
        assert [b["op"] for _, b in again if b["data"]["id"] == row] == ["INSERT", "UPDATE"]

    # And a range that ends before the inserts replays nothing; bad input exits with 2
    result = cli(
        "events",
        "replay",
        "--dsn",
        dsn,
        "--output",
        "webhook",
        "--since",
        "1h",
        "--until",
        (started - timedelta(minutes=1)).isoformat(),
    )
    assert result.stdout.strip() == "0 event(s) queued for replay to webhook"
    result = cli("events", "replay", "--dsn", dsn, "--output", "nope", "--since", "1h")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: output: no output named 'nope' (known: webhook)"
    result = cli("events", "replay", "--dsn", dsn, "--output", "webhook", "--since", "yesterday")
    assert result.exit_code == 2 and result.stderr.startswith("error: since: expected ISO-8601")


def test_ops_commands_fail_in_one_line_without_showing_the_password(dsn):
    # Given a server that refuses connections, and a database without the skor schema
    unreachable = "host=127.0.0.1 port=1 user=postgres password=s3cret-pw dbname=x"
    # When status or events run against them
    for args, code, message in [
        (["status", "--dsn", unreachable], 1, "error: cannot connect to PostgreSQL"),
        (["events", "list", "--dsn", unreachable], 1, "error: cannot connect to PostgreSQL"),
        (["status", "--dsn", dsn], 1, "error: no skor schema in this database"),
        (["status", "--dsn", "host='unterminated password=s3cret-pw"], 2, "error: dsn:"),
        (["status"], 2, "error: dsn: give --dsn or SKOR_DSN"),
        (["events", "retry", "--dsn", dsn], 2, "error: retry: give either --id"),
        (["events", "retry", "--dsn", dsn, "--id", "nope"], 2, "error: id: not an event id"),
        (["events", "list", "--dsn", dsn, "--table", "a."], 2, "error: table:"),
    ]:
        result = CliRunner(env={"SKOR_DSN": None}).invoke(app, args)
        # Then each prints one line on stderr and exits 1 (2 for bad input)
        assert result.exit_code == code, (args, result.output)
        assert result.stderr.startswith(message), (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
        assert "s3cret-pw" not in result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("10m", timedelta(minutes=10)),
        ("2h", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
        ("1w", timedelta(weeks=1)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_relative_times_count_back_from_now(text, expected):
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert ops_events.parse_time(text, now=now) == now - expected


def test_iso_times_keep_their_offset_and_naive_ones_are_local_time():
    assert ops_events.parse_time("2025-01-02T03:04:05Z") == datetime(
        2025, 1, 2, 3, 4, 5, tzinfo=UTC
    )
    naive = ops_events.parse_time("2025-01-02 03:04:05")
    assert naive == datetime(2025, 1, 2, 3, 4, 5).astimezone()


@pytest.mark.slow
def test_a_retried_or_replayed_update_envelope_keeps_its_old_row(dsn, capture_table, bridge):
    # Given a table captured with its old rows, and an envelope output whose receiver
    # refuses UPDATEs (400: a dead letter at once)
    capture_table(TABLE, "items")
    triggers.install(dsn, triggers.parse_config([{"table": "items", "old": True}]), "durable")
    refusing = threading.Event()
    refusing.set()

    def respond(request) -> int:
        return 400 if refusing.is_set() and json.loads(request.body)["op"] == "UPDATE" else 200

    with Receiver(respond=respond) as receiver:
        bridge("--dsn", dsn, "--webhook", f"env={receiver.url}", "--format", "envelope")
        started = datetime.now(UTC) - timedelta(seconds=1)
        execute(dsn, "INSERT INTO items VALUES (1, 'a')", "UPDATE items SET name = 'b'")
        wait_until(
            lambda: scalar(dsn, "SELECT count(*) FROM skor.dead_letters") == 1,
            timeout=20,
            message="the update dead-lettered",
        )
        # Then the dead letter keeps the old row
        assert scalar(dsn, "SELECT old FROM skor.dead_letters") == '{"id":1,"name":"a"}'

        # When the receiver is fixed and the dead letter retried
        refusing.clear()
        assert cli("events", "retry", "--dsn", dsn, "--all-dead").exit_code == 0
        assert receiver.wait_for(2, timeout=10)
        # Then it is sent with the same old row as the first time
        retried = json.loads(receiver.delivered()[-1].body)
        assert (retried["op"], retried["data"], retried["old"]) == (
            "UPDATE",
            {"id": 1, "name": "b"},
            {"id": 1, "name": "a"},
        )
        wait_until(
            lambda: scalar(dsn, "SELECT count(*) FROM skor.redeliveries") == 0,
            timeout=10,
            message="redeliveries finished",
        )

        # And a replay sends both events again, the UPDATE with its old row
        result = cli(
            "events", "replay", "--dsn", dsn, "--output", "env", "--since", started.isoformat()
        )
        assert result.stdout.strip() == "2 event(s) queued for replay to env", result.output
        assert receiver.wait_for(4, timeout=10)
        insert, update = (json.loads(r.body) for r in receiver.delivered()[-2:])
        assert "old" not in insert and update["old"] == {"id": 1, "name": "a"}
