"""Trigger mode and WAL mode pass the same delivery tests: the tests of test_delivery.py
that capture with `capture_table`, run again with WAL capture on a wal_level=logical
server. Only the capture differs; everything from skor.log on is shared."""

from __future__ import annotations

import inspect
import json

import psycopg2
import pytest

from skor_bridge.capture import triggers
from skor_bridge.capture.wal import install as wal_install
from tests import test_delivery

pytestmark = pytest.mark.slow

#: Every test_delivery test that captures through `capture_table` in durable mode.
SHARED = [
    "test_rows_written_while_the_bridge_is_down_are_delivered_when_it_starts",
    "test_headers_carry_a_stable_event_id_signature_and_custom_headers",
    "test_a_webhook_answering_503_then_refusing_connections_loses_nothing",
    "test_sigkill_mid_stream_then_restart_delivers_every_committed_row",
    "test_concurrent_writers_with_open_transactions_and_rollbacks",
    "test_changes_to_one_row_arrive_in_commit_order_under_concurrent_updates",
    "test_a_300_kb_row_is_delivered_whole",
    "test_many_huge_rows_arrive_while_the_bridge_memory_stays_bounded",
    "test_max_attempts_dead_letters_and_later_changes_of_the_row_still_flow",
    "test_sigterm_stops_cleanly_with_exit_0_and_saves_progress",
    "test_two_bridges_deliver_once_and_the_standby_takes_over_after_sigkill",
    "test_a_row_that_keeps_failing_is_parked_so_other_rows_keep_flowing",
    "test_parked_events_survive_a_restart_and_keep_their_order",
]


@pytest.fixture
def wal_capture_table(wal_dsn):
    """`capture_table`, installing WAL capture instead of triggers."""

    def make(ddl: str, table: str, schema: str = "public", columns="*", mode="wal"):
        assert mode == "wal"
        with psycopg2.connect(wal_dsn) as conn, conn.cursor() as cur:
            cur.execute(ddl)
        conn.close()
        specs = triggers.parse_config([{"table": table, "schema": schema, "columns": columns}])
        wal_install.install(wal_dsn, specs)
        return specs

    return make


@pytest.fixture
def wal_db(wal_dsn):
    conn = psycopg2.connect(wal_dsn)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.mark.parametrize("name", SHARED)
def test_delivery_test_passes_in_wal_mode(name, request, wal_dsn, wal_capture_table, wal_db):
    test = getattr(test_delivery, name)
    given = {"dsn": wal_dsn, "capture_table": wal_capture_table, "db": wal_db}
    kwargs = {
        param: given[param] if param in given else request.getfixturevalue(param)
        for param in inspect.signature(test).parameters
    }
    test(**kwargs)


def test_events_served_from_memory_equal_the_log(wal_dsn, wal_capture_table, bridge):
    """While an output waits at the head, WAL mode hands the events it writes to it from
    memory (as the trigger-mode sequencer does): what a receiver gets must equal what the
    log holds, position by position, as if it had been read back (id, position, capture
    time, body)."""
    from skor_bridge.event import ChangeEvent
    from skor_bridge.sinks.base import captured_at_text
    from skor_bridge.tools.receiver import Receiver
    from tests.helpers import execute

    wal_capture_table("CREATE TABLE items (id int PRIMARY KEY, name text)", "items")
    with Receiver() as receiver:
        bridge("--dsn", wal_dsn, "--webhook", receiver.url).wait_active()
        # Given changes in separate transactions, one with several rows, while it runs
        for row in range(10):
            execute(wal_dsn, f"INSERT INTO items VALUES ({row}, 'n{row}')")
        execute(wal_dsn, "UPDATE items SET name = name || '!' WHERE id < 5")
        assert receiver.wait_for(15)
        got = {
            int(r.headers["webhook-position"]): (
                r.headers["webhook-id"],
                r.headers["webhook-captured-at"],
                json.loads(r.body)["data"],
            )
            for r in receiver.requests
        }
    with psycopg2.connect(wal_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pos, event_id::text, extract(epoch FROM captured_at)::float8, data"
            " FROM skor.log ORDER BY pos"
        )
        logged = cur.fetchall()
    conn.close()
    # Then every event delivered is the log's event at that position
    assert len(logged) == 15 and sorted(got) == [row[0] for row in logged]
    for pos, event_id, captured_at, data in logged:
        event = ChangeEvent(event_id, pos, "public", "items", "X", data, captured_at=captured_at)
        assert got[pos] == (event_id, captured_at_text(event), json.loads(data))
