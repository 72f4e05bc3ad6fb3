"""`skor-bridge backfill`: existing rows as READ events, consistent with the live stream."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time

import psycopg2
import pytest

from skor_bridge.backfill.table import parse_name
from skor_bridge.errors import ConfigError
from tests.helpers import bodies, execute, scalar, wait_until

TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text, qty int DEFAULT 0)"


def run_backfill(dsn, *args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "skor_bridge", "backfill", "--dsn", dsn, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_backfill(dsn, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "skor_bridge", "backfill", "--dsn", dsn, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def table_view(dsn, table="items"):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT id, row_to_json(t)::text FROM {table} t")
            return {row[0]: json.loads(row[1]) for row in cur.fetchall()}
    finally:
        conn.close()


def receiver_view(receiver):
    """The last event per row, as a receiver that applies events in arrival order has it."""
    view: dict[int, dict] = {}
    for event in bodies(receiver):
        if event["op"] == "DELETE":
            view.pop(event["data"]["id"], None)
        else:
            view[event["data"]["id"]] = event["data"]
    return view


def wait_log_drained(dsn, receiver, timeout=120.0):
    """Wait until the outbox is empty and the receiver holds every log event."""

    def done():
        if scalar(dsn, "SELECT count(*) FROM skor.outbox"):
            return False
        head = scalar(dsn, "SELECT next_pos - 1 FROM skor.sequencer")
        return scalar(dsn, "SELECT min(position) FROM skor.outputs") >= head

    wait_until(done, timeout=timeout, message="everything delivered")


def output_names(dsn):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM skor.outputs ORDER BY name")
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


# -- fast ----------------------------------------------------------------------------------


def test_table_names_default_to_schema_public_and_odd_ones_are_refused():
    assert parse_name("items") == ("public", "items")
    assert parse_name("sales.items") == ("sales", "items")
    for bad in ("", "sales.", ".items", "  "):
        with pytest.raises(ConfigError, match="expected TABLE or SCHEMA.TABLE"):
            parse_name(bad)


# -- end to end ----------------------------------------------------------------------------


@pytest.mark.slow
def test_existing_rows_arrive_as_read_and_the_receiver_equals_the_table(
    dsn, capture_table, bridge, receiver
):
    # Given 5,000 rows written before capture was installed, and a running bridge
    execute(
        dsn,
        TABLE,
        "INSERT INTO items (id, name, qty) SELECT g, 'n' || g, g % 7"
        " FROM generate_series(1, 5000) g",
    )
    capture_table("SELECT 1", "items")
    bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    # When the table is backfilled
    done = run_backfill(dsn, "--table", "items", "--chunk-size", "700")
    # Then it says so, and every row arrived once, as READ with Skor's body
    assert done.returncode == 0, done.stderr
    assert "5000 rows sent as READ events" in done.stdout
    assert receiver.wait_for(5000, timeout=120)
    events = bodies(receiver)
    assert len(events) == 5000
    assert {(e["op"], e["table"], e["schema"]) for e in events} == {("READ", "items", "public")}
    assert {
        "data": {"id": 9, "name": "n9", "qty": 2},
        "table": "items",
        "schema": "public",
        "op": "READ",
    } in events
    assert receiver_view(receiver) == table_view(dsn)
    # And status shows it finished with its progress
    status = subprocess.run(
        [sys.executable, "-m", "skor_bridge", "status", "--dsn", dsn, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    backfills = json.loads(status.stdout)["backfills"]
    assert [(b["table"], b["state"], b["rows_sent"], b["rows_total"]) for b in backfills] == [
        ("public.items", "finished", 5000, 5000)
    ]


@pytest.mark.slow
def test_configured_columns_and_composite_keys_match_the_live_events(
    dsn, capture_table, bridge, receiver
):
    # Given a table with a two-column key, captured with some columns only
    # (numeric: the row key is canonical, 1.50 and 1.5 are one key, as in the triggers)
    execute(
        dsn,
        'CREATE TABLE "odd ""name""" (a numeric, b text, secret text, note text,'
        " PRIMARY KEY (b, a))",
        'INSERT INTO "odd ""name""" SELECT (g % 3) + 0.50, \'k\' || g, \'s\','
        " 'ü\"' || g FROM generate_series(1, 50) g",
    )
    capture_table("SELECT 1", 'odd "name"', columns=["a", "b", "note"])
    bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    # When it is backfilled in small chunks, and one row is then updated live
    done = run_backfill(dsn, "--table", 'public.odd "name"', "--chunk-size", "7")
    assert done.returncode == 0, done.stderr
    assert receiver.wait_for(50)
    execute(dsn, 'UPDATE "odd ""name""" SET note = \'x\' WHERE b = \'k4\'')
    assert receiver.wait_for(51)
    # Then READ carries the configured columns only, and the same row key as live events
    events = bodies(receiver)
    assert {"a": 1.5, "b": "k4", "note": 'ü"4'} in [e["data"] for e in events if e["op"] == "READ"]
    assert events[-1]["data"] == {"a": 1.5, "b": "k4", "note": "x"}
    keys = scalar(
        dsn, "SELECT array_agg(DISTINCT row_key) FROM skor.log WHERE row_key LIKE '%%\"k4\",%%'"
    )
    assert keys == ['{"b":"k4","a":1.5}']


def _writer(dsn, stop, ids, seed, first_new):
    """Random updates, deletes and inserts, a few rows per transaction, until stopped."""
    rng = random.Random(seed)
    conn = psycopg2.connect(dsn)
    conn.autocommit = False
    next_id = first_new
    with conn.cursor() as cur:
        while not stop.is_set():
            for _ in range(rng.randint(1, 4)):
                what = rng.random()
                row = rng.randint(1, ids)
                if what < 0.5:
                    cur.execute(
                        "UPDATE items SET qty = qty + 1, name = %s WHERE id = %s",
                        (f"w{rng.random()}", row),
                    )
                elif what < 0.7:
                    cur.execute("DELETE FROM items WHERE id = %s", (row,))
                elif what < 0.85:
                    cur.execute(
                        "INSERT INTO items (id, name) VALUES (%s, 'back') ON CONFLICT DO NOTHING",
                        (row,),
                    )
                else:
                    cur.execute("INSERT INTO items (id, name) VALUES (%s, 'new')", (next_id,))
                    next_id += 1
            conn.commit()
    conn.close()


@pytest.mark.slow
def test_backfill_under_concurrent_writes_ends_equal_to_the_table(
    dsn, capture_table, bridge, receiver
):
    # Given 20,000 rows and a bridge delivering to a receiver
    execute(
        dsn,
        TABLE,
        "INSERT INTO items (id, name) SELECT g, 'n' || g FROM generate_series(1, 20000) g",
    )
    capture_table("SELECT 1", "items")
    bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    # When the table is backfilled while two writers update, delete and insert
    stop = threading.Event()
    # The second writer inserts far above the first's new ids, so they never collide.
    writers = [
        threading.Thread(target=_writer, args=(dsn, stop, 20000, 1, 20001)),
        threading.Thread(target=_writer, args=(dsn, stop, 20000, 2, 1_000_000)),
    ]
    for writer in writers:
        writer.start()
    try:
        done = run_backfill(dsn, "--table", "items", "--chunk-size", "500")
    finally:
        time.sleep(0.5)  # writes after the backfill too
        stop.set()
        for writer in writers:
            writer.join()
    assert done.returncode == 0, done.stderr
    # Then, once delivered, the last event of every row equals the row in the table
    wait_log_drained(dsn, receiver)
    assert scalar(dsn, "SELECT count(*) FROM skor.log WHERE op = 'READ'") > 10000
    assert receiver_view(receiver) == table_view(dsn)


@pytest.mark.slow
def test_a_row_with_changes_not_yet_in_the_log_gets_no_read(dsn, capture_table, bridge, receiver):
    # Given 50 rows, an output registered by a bridge that then stopped, and two updates
    # of row 7 committed but still in the outbox (no sequencer numbers them)
    execute(
        dsn, TABLE, "INSERT INTO items (id, name) SELECT g, 'n' || g FROM generate_series(1, 50) g"
    )
    capture_table("SELECT 1", "items")
    first = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    wait_until(lambda: len(output_names(dsn)) == 1, message="output started")
    assert first.stop() == 0
    execute(dsn, "UPDATE items SET qty = 1 WHERE id = 7", "UPDATE items SET qty = 2 WHERE id = 7")
    assert scalar(dsn, "SELECT count(*) FROM skor.outbox") == 2
    # When the table is backfilled
    done = run_backfill(dsn, "--table", "items")
    assert done.returncode == 0, done.stderr
    # Then row 7 has no READ (its updates, numbered after the READs, carry it), and once a
    # bridge delivers, the receiver never sees row 7 go back to an older version
    reads = scalar(dsn, "SELECT count(*) FROM skor.log WHERE op = 'READ'")
    assert reads == 49
    bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    assert receiver.wait_for(49 + 2, timeout=60)
    seven = [(e["op"], e["data"]["qty"]) for e in bodies(receiver) if e["data"]["id"] == 7]
    assert seven == [("UPDATE", 1), ("UPDATE", 2)]
    assert receiver_view(receiver) == table_view(dsn)


@pytest.mark.slow
def test_killed_backfill_continues_where_it_stopped(dsn, capture_table, bridge, receiver):
    # Given a backfill killed with SIGKILL part of the way through 20,000 rows
    execute(
        dsn,
        TABLE,
        "INSERT INTO items (id, name) SELECT g, 'n' || g FROM generate_series(1, 20000) g",
    )
    capture_table("SELECT 1", "items")
    bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    first = start_backfill(dsn, "--table", "items", "--chunk-size", "200")
    wait_until(
        lambda: (scalar(dsn, "SELECT max(rows_sent) FROM skor.backfills") or 0) >= 4000,
        timeout=120,
        message="part of the backfill sent",
    )
    first.kill()
    first.wait(10)
    # The server may still finish (and commit) the chunk statement the client had sent.
    sent = -1
    while sent != (sent := scalar(dsn, "SELECT rows_sent FROM skor.backfills")):
        time.sleep(1)
    assert 4000 <= sent < 20000
    status = subprocess.run(
        [sys.executable, "-m", "skor_bridge", "status", "--dsn", dsn, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(status.stdout)["backfills"][0]["state"] == "interrupted"
    execute(
        dsn,
        "UPDATE items SET qty = 5 WHERE id IN (1, 19999)",
        "DELETE FROM items WHERE id IN (2, 19998)",
    )
    # When it is run again
    again = run_backfill(dsn, "--table", "items", "--chunk-size", "200")
    # Then it continues after the last chunk sent, and the receiver ends equal to the table
    assert again.returncode == 0, again.stderr
    assert f"after {sent} rows" in again.stderr
    wait_log_drained(dsn, receiver)
    assert receiver_view(receiver) == table_view(dsn)
    reads = scalar(dsn, "SELECT count(*) FROM skor.log WHERE op = 'READ'")
    assert reads == 20000 - 1  # row 19998 was deleted before the rerun read it
    assert scalar(dsn, "SELECT count(DISTINCT event_id) FROM skor.log WHERE op = 'READ'") == reads


@pytest.mark.slow
def test_named_outputs_only_receive_the_backfill(dsn, capture_table, bridge, receiver):
    from skor_bridge.tools.receiver import Receiver

    # Given two webhook outputs and 300 existing rows
    execute(
        dsn, TABLE, "INSERT INTO items (id, name) SELECT g, 'n' || g FROM generate_series(1, 300) g"
    )
    capture_table("SELECT 1", "items")
    with Receiver() as other:
        bridge("--dsn", dsn, "--webhook", receiver.url, "--webhook", other.url).wait_active()
        wait_until(lambda: len(output_names(dsn)) == 2, message="both outputs started")
        first = [
            name
            for name in output_names(dsn)
            if scalar(dsn, "SELECT kind FROM skor.outputs WHERE name = %s", (name,))
        ][0]
        # When the backfill names one of them, and a live change follows
        done = run_backfill(dsn, "--table", "items", "--output", first)
        assert done.returncode == 0, done.stderr
        execute(dsn, "UPDATE items SET qty = 1 WHERE id = 1")
        # Then only that one receives the READ events; both receive the live change.
        both = [receiver, other]

        def ops_of(r):
            return [e["op"] for e in bodies(r)]

        wait_until(
            lambda: (
                all("UPDATE" in ops_of(r) for r in both)
                and max(ops_of(r).count("READ") for r in both) >= 300
            ),
            timeout=90,
            message="backfill and update delivered",
        )
        ops = sorted(({e["op"] for e in bodies(r)} for r in both), key=len)
        assert ops == [{"UPDATE"}, {"READ", "UPDATE"}]
        reads = {e["data"]["id"] for r in both for e in bodies(r) if e["op"] == "READ"}
        assert set(range(1, 301)) == reads
    wait_until(
        lambda: (
            scalar(dsn, "SELECT min(position) FROM skor.outputs")
            == scalar(dsn, "SELECT next_pos - 1 FROM skor.sequencer")
        ),
        timeout=30,
        message="both outputs' positions past the backfill",
    )


@pytest.mark.slow
def test_replay_never_sends_a_read_to_an_output_it_was_not_addressed_to(
    dsn, capture_table, bridge, receiver
):
    from skor_bridge.tools.receiver import Receiver

    # Given 200 rows backfilled to one of two outputs, then a live change both delivered
    execute(
        dsn, TABLE, "INSERT INTO items (id, name) SELECT g, 'n' || g FROM generate_series(1, 200) g"
    )
    capture_table("SELECT 1", "items")
    with Receiver() as other:
        bridge(
            "--dsn", dsn, "--webhook", f"chosen={receiver.url}", "--webhook", f"other={other.url}"
        ).wait_active()
        wait_until(lambda: len(output_names(dsn)) == 2, message="both outputs started")
        done = run_backfill(dsn, "--table", "items", "--output", "chosen")
        assert done.returncode == 0, done.stderr
        execute(dsn, "UPDATE items SET qty = 1 WHERE id = 1")
        wait_until(
            lambda: (
                scalar(dsn, "SELECT count(*) FROM skor.outbox") == 0
                and scalar(dsn, "SELECT min(position) FROM skor.outputs")
                == scalar(dsn, "SELECT next_pos - 1 FROM skor.sequencer")
            ),
            timeout=90,
            message="backfill and update delivered to both",
        )
        reads = scalar(dsn, "SELECT count(*) FROM skor.log WHERE op = 'READ'")
        assert reads == 200
        assert [e["op"] for e in bodies(other)] == ["UPDATE"]

        def replay(output):
            return subprocess.run(
                [sys.executable, "-m", "skor_bridge", "events", "replay", "--dsn", dsn,
                 "--output", output, "--since", "1h", "--table", "items"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip

        # When the other output's events are replayed
        result = replay("other")
        # Then only the live change is queued and arrives: no READ meant for `chosen`
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "1 event(s) queued for replay to other"
        wait_until(lambda: len(bodies(other)) >= 2, timeout=30, message="replay delivered")
        time.sleep(0.5)
        assert [e["op"] for e in bodies(other)] == ["UPDATE", "UPDATE"]
        # And replaying the chosen output queues its READs as well as the change
        result = replay("chosen")
        assert result.stdout.strip() == f"{reads + 1} event(s) queued for replay to chosen"
        # And `events list` does not show the READs as delivered to the other output
        listed = subprocess.run(
            [sys.executable, "-m", "skor_bridge", "events", "list", "--dsn", dsn,
             "--output", "other", "--json", "--limit", "1000"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert [e["op"] for e in json.loads(listed.stdout)["events"]] == ["UPDATE"]


@pytest.mark.slow
def test_tables_that_cannot_be_backfilled_get_one_line(dsn, capture_table):
    capture_table(TABLE, "items")
    execute(
        dsn,
        "CREATE TABLE nokey (a int)",
        "CREATE TABLE plain (id int PRIMARY KEY)",
        "CREATE VIEW v AS SELECT 1 AS id",
    )
    from skor_bridge.capture import triggers

    triggers.install(dsn, triggers.parse_config([{"table": "items"}, {"table": "nokey"}]))
    cases = {
        "nosuch": "table: public.nosuch does not exist",
        "other.items": "table: other.items does not exist",
        "v": "table: public.v is not a table",
        "plain": "table: public.plain is not captured",
        "nokey": "table: public.nokey has no primary key",
        "sales.": "expected TABLE or SCHEMA.TABLE",
    }
    for name, message in cases.items():
        result = run_backfill(dsn, "--table", name)
        assert result.returncode == 2, (name, result.stderr)
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    bad_output = run_backfill(dsn, "--table", "items", "--output", "nosuch")
    assert bad_output.returncode == 2
    assert "no output named 'nosuch'" in bad_output.stderr
    triggers.install(dsn, triggers.parse_config([{"table": "items"}]), "notify")
    notify = run_backfill(dsn, "--table", "items")
    assert notify.returncode == 2 and "notify mode" in notify.stderr


@pytest.mark.slow
def test_a_second_backfill_of_the_same_table_is_refused(dsn, capture_table):
    # Given a backfill of items that waits (no bridge has started an output to deliver it)
    execute(dsn, TABLE, "INSERT INTO items (id) SELECT generate_series(1, 100)")
    capture_table("SELECT 1", "items")
    first = start_backfill(dsn, "--table", "items", "--chunk-size", "10")
    try:
        wait_until(
            lambda: (
                scalar(dsn, "SELECT to_regclass('skor.backfills') IS NOT NULL")
                and scalar(dsn, "SELECT count(*) FROM skor.backfills") == 1
            ),
            message="backfill started",
        )
        # When a second one starts
        second = run_backfill(dsn, "--table", "items")
        # Then it is refused in one line
        assert second.returncode == 2
        assert second.stderr.strip() == (
            "error: table: a backfill of public.items is already running"
        )
        status = subprocess.run(
            [sys.executable, "-m", "skor_bridge", "status", "--dsn", dsn, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert json.loads(status.stdout)["backfills"][0]["state"] == "running"
    finally:
        first.kill()
        first.wait(10)
