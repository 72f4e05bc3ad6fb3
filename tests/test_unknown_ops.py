"""An event whose op the bridge does not know (not INSERT, UPDATE, DELETE or READ) is never
sent: the delivery worker dead-letters it with a clear error, and the row's later changes
go on (board: "Ops the bridge knows")."""

from __future__ import annotations

import dataclasses
import json

import pytest

from skor_bridge.sinks.base import DELIVERED
from skor_bridge.tools.receiver import Receiver
from tests.engine_doubles import MemoryFeed, ScriptedSink, change, make_worker, run_until
from tests.helpers import execute, scalar, wait_until


def test_the_worker_dead_letters_an_unknown_op_instead_of_sending_it():
    # Given the log holds an 'EVIL' event of row 1 between two real changes of that row
    evil = dataclasses.replace(change(2, row=1), op="EVIL")
    feed = MemoryFeed([change(1, row=1), evil, change(3, row=1, version=1)])
    sink = ScriptedSink(lambda e: (DELIVERED, 0.001))
    worker = make_worker(sink, feed)
    # When the worker runs
    run_until(worker, lambda: feed.committed == 3)
    # Then the sink never saw it, it is a dead letter, and the row's other changes went out
    assert [e.position for e in sink.attempts] == [1, 3]
    assert feed.dead == [evil]


@pytest.mark.slow
def test_an_outbox_row_with_an_unknown_op_is_dead_lettered_and_never_delivered(
    dsn, capture_table, bridge
):
    capture_table("CREATE TABLE items (id int PRIMARY KEY, name text)", "items")
    with Receiver() as receiver:
        bridge("--dsn", dsn, "--webhook", f"webhook={receiver.url}")
        # Given the table's owner (here postgres) writes a forged op into the outbox
        execute(
            dsn,
            "INSERT INTO skor.outbox (schema_name, table_name, op, row_key, data)"
            " VALUES ('public', 'items', 'EVIL', '{\"id\":1}',"
            ' \'{"id":1,"name":"forged"}\')',
        )
        # When the next real change of the same row follows
        execute(dsn, "INSERT INTO items VALUES (1, 'real')")
        # Then the real change is delivered
        assert receiver.wait_for(1, timeout=60)
        # And the forged one is a dead letter with a clear error, never sent
        wait_until(
            lambda: scalar(dsn, "SELECT count(*) FROM skor.dead_letters") == 1,
            timeout=30,
            message="one dead letter",
        )
        dead = scalar(
            dsn,
            "SELECT json_build_object('op', op, 'attempts', attempts,"
            " 'error', last_error) FROM skor.dead_letters",
        )
        assert dead["op"] == "EVIL" and dead["attempts"] == 0
        assert "unknown op 'EVIL'" in dead["error"]
        bodies = [json.loads(r.body) for r in receiver.delivered()]
        assert [(b["op"], b["data"]["name"]) for b in bodies] == [("INSERT", "real")]
