"""Odd operator input gets one line, never a traceback."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from skor_bridge.capture.schema import ensure_schema
from skor_bridge.ops.events import EARLIEST, parse_time
from tests.test_ops import cli


@pytest.mark.parametrize(
    "text", ["99999999999d", "99999999999999s", "0001-01-01", "0001-01-01T00:00:00+14:00"]
)
def test_times_before_anything_was_captured_mean_the_beginning(text):
    assert parse_time(text) == EARLIEST


def test_ordinary_times_are_kept():
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert parse_time("1d", now=now) == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_time("9999-12-31T00:00:00Z") == datetime(9999, 12, 31, tzinfo=UTC)


@pytest.mark.slow
@pytest.mark.parametrize("since", ["99999999999d", "99999999999999s", "0001-01-01"])
def test_replay_with_a_huge_or_ancient_since_answers_in_one_line(db, dsn, since):
    with db.cursor() as cur:
        ensure_schema(cur)
        cur.execute("INSERT INTO skor.outputs (name, kind, position) VALUES ('hook', 'webhook', 0)")
    result = cli("events", "replay", "--dsn", dsn, "--output", "hook", "--since", since)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert result.stdout.strip().splitlines()[-1] == "0 event(s) queued for replay to hook"


@pytest.mark.slow
def test_a_purge_under_a_running_bridge_stops_it_in_one_line_and_a_restart_recreates_nothing(
    dsn, capture_table, bridge, receiver
):
    from tests.helpers import execute, scalar

    # Given a running bridge that delivered a change
    capture_table("CREATE TABLE items (id int PRIMARY KEY)", "items")
    running = bridge("--dsn", dsn, "--webhook", f"hook={receiver.url}").wait_active()
    execute(dsn, "INSERT INTO items VALUES (1)")
    assert receiver.wait_for(1)

    # When the operator purges the bridge's schema under it
    result = cli("triggers", "uninstall", "--dsn", dsn, "--purge")
    assert result.exit_code == 0, result.output

    # Then the bridge stops (exit 1) with one clear line, and no traceback, and does not
    # claim to have saved progress into a schema that is gone
    assert running.proc.wait(30) == 1
    log = running.log
    assert "the skor schema was dropped while the bridge ran" in log
    assert "Traceback" not in log
    assert "progress saved" not in log.split("the skor schema was dropped")[1]

    # When a supervisor restarts it, Then it refuses in one line and recreates nothing
    again = bridge("--dsn", dsn, "--webhook", f"hook={receiver.url}")
    assert again.proc.wait(30) != 0
    assert "no skor schema in this database: install the triggers first" in again.log
    assert "Traceback" not in again.log
    assert scalar(dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = 'skor'") == 0
