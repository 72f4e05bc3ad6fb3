"""WAL capture while the stream runs: schema changes, TOAST, partitions, key changes,
triggers.json filters, restarts and re-reads, and the slot's safety."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2
import pytest
from typer.testing import CliRunner

from skor_bridge.capture import triggers
from skor_bridge.capture.wal import install as wal_install
from skor_bridge.cli import app
from skor_bridge.errors import TriggerError
from skor_bridge.tools.bench.logical_pg import free_port
from skor_bridge.tools.receiver import Receiver
from tests.helpers import bodies, execute, scalar, short_retry_config, wait_until

pytestmark = pytest.mark.slow


def _install(dsn, entries):
    return wal_install.install(dsn, triggers.parse_config(entries))


def _log(dsn, columns="op, data"):
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(f"SELECT {columns} FROM skor.log ORDER BY pos")
        rows = cur.fetchall()
    conn.close()
    return rows


def test_schema_changes_mid_stream_are_picked_up_without_a_restart(wal_dsn, bridge, receiver):
    dsn = wal_dsn
    execute(dsn, "CREATE TABLE items (id int PRIMARY KEY, a int)")
    _install(dsn, [{"table": "items"}])
    process = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    execute(
        dsn,
        "INSERT INTO items VALUES (1, 10)",
        "ALTER TABLE items ADD COLUMN b text DEFAULT 'x'",
        "INSERT INTO items VALUES (2, 20, 'y')",
        "ALTER TABLE items RENAME COLUMN a TO c",
        "UPDATE items SET c = 11 WHERE id = 1",
        "ALTER TABLE items DROP COLUMN b",
        "INSERT INTO items VALUES (3, 30)",
        "ALTER TABLE items ALTER COLUMN c TYPE text",
        "INSERT INTO items VALUES (4, 'forty')",
    )
    wait_until(lambda: len(_log(dsn)) == 5, timeout=60, message="5 events in the log")
    assert [(op, json.loads(data)) for op, data in _log(dsn)] == [
        ("INSERT", {"id": 1, "a": 10}),
        ("INSERT", {"id": 2, "a": 20, "b": "y"}),
        ("UPDATE", {"id": 1, "c": 11, "b": "x"}),
        ("INSERT", {"id": 3, "c": 30}),
        ("INSERT", {"id": 4, "c": "forty"}),
    ]
    assert receiver.wait_for(5, timeout=60)
    assert "error" not in process.log.lower()
    # TRUNCATE is not captured (as in trigger mode): said once in the log
    execute(dsn, "TRUNCATE items", "INSERT INTO items VALUES (5, 'five')", "TRUNCATE items")
    assert receiver.wait_for(6, timeout=60)
    process.wait_for_log("TRUNCATE of public.items is not captured")
    assert process.log.count("TRUNCATE of") == 1
    assert len(_log(dsn)) == 6


def test_a_table_renamed_mid_stream_is_still_captured_under_its_configured_name(
    wal_dsn, bridge, receiver
):
    dsn = wal_dsn
    execute(dsn, "CREATE TABLE items (id int PRIMARY KEY)")
    _install(dsn, [{"table": "items"}])
    process = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    execute(dsn, "INSERT INTO items VALUES (1)")
    assert receiver.wait_for(1, timeout=60)
    execute(dsn, "ALTER TABLE items RENAME TO things", "INSERT INTO things VALUES (2)")
    assert receiver.wait_for(2, timeout=60)
    # (as trigger mode names them: its triggers carry the configured name)
    assert sorted((e["table"], e["data"]["id"]) for e in bodies(receiver)) == [
        ("items", 1),
        ("items", 2),
    ]
    process.wait_for_log("table public.items was renamed to public.things")


def test_a_table_renamed_while_the_bridge_is_down_loses_nothing(wal_dsn, bridge, receiver):
    # Given a captured table, and a run that delivered a change of it
    dsn = wal_dsn
    execute(dsn, "CREATE TABLE items (id int PRIMARY KEY, n int)")
    _install(dsn, [{"table": "items"}])
    first = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    execute(dsn, "INSERT INTO items VALUES (1, 0)")
    assert receiver.wait_for(1, timeout=60)
    assert first.stop() == 0
    # When the table is renamed while the bridge is down, and changed under its new name
    execute(dsn, "ALTER TABLE items RENAME TO things")
    for n in range(1, 6):
        execute(
            dsn,
            f"UPDATE things SET n = {n} WHERE id = 1",
            f"INSERT INTO things VALUES ({n + 1}, {n})",
            f"UPDATE things SET n = n + 100 WHERE id = {n + 1}",
        )
    execute(dsn, "DELETE FROM things WHERE id = 1")
    second = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    # Then every change arrives, under the configured name, in each row's order
    assert receiver.wait_for(1 + 5 * 3 + 1, timeout=60), second.log
    got = [(e["table"], e["op"], e["data"]["id"], e["data"]["n"]) for e in bodies(receiver)]
    assert {table for table, *_ in got} == {"items"}
    per_row: dict[int, list[tuple[str, int]]] = {}
    for _, op, row, n in got:
        per_row.setdefault(row, []).append((op, n))
    assert per_row[1] == [("INSERT", 0), *[("UPDATE", n) for n in range(1, 6)], ("DELETE", 5)]
    for n in range(1, 6):
        assert per_row[n + 1] == [("INSERT", n), ("UPDATE", n + 100)]
    # And the rename is said once in the log, and `triggers list` reports it
    second.wait_for_log("was renamed to public.things")
    assert second.log.count("was renamed") == 1
    assert CliRunner().invoke(app, ["triggers", "list", "--dsn", dsn]).exit_code == 1
    listed = CliRunner().invoke(app, ["triggers", "list", "--dsn", dsn, "--json"])
    (entry,) = json.loads(listed.stdout)["tables"]
    assert (entry["schema"], entry["table"], entry["mode"]) == ("public", "items", "wal")
    assert entry["ops"] == ["insert", "update", "delete"]
    assert entry["problems"] == [
        "table was renamed to public.things: still captured, its events keep the name "
        "public.items; update triggers.json and install again"
    ]


def test_triggers_list_shows_the_columns_and_operations_wal_mode_captures(wal_dsn):
    dsn = wal_dsn
    execute(
        dsn,
        "CREATE TABLE orders (id int PRIMARY KEY, status text, note text)",
        "CREATE TABLE customers (id int PRIMARY KEY, name text)",
    )
    _install(
        dsn,
        [
            {"table": "orders", "columns": {"insert": ["id", "status"], "update": "*"}},
            {"table": "customers"},
        ],
    )
    text = CliRunner().invoke(app, ["triggers", "list", "--dsn", dsn])
    assert text.exit_code == 0, text.stdout
    rows = [" ".join(line.split()) for line in text.stdout.splitlines()[1:]]
    assert rows == [
        "public.customers wal insert,update,delete * -",
        "public.orders wal insert,update insert: id,status; update: * -",
    ]
    # A table taken out of the publication by hand is a problem
    execute(dsn, "ALTER PUBLICATION skor_capture DROP TABLE customers")
    listed = CliRunner().invoke(app, ["triggers", "list", "--dsn", dsn, "--json"])
    tables = {t["table"]: t for t in json.loads(listed.stdout)["tables"]}
    assert tables["customers"]["ops"] == []
    assert tables["customers"]["problems"] == [
        "not in publication skor_capture (removed by hand?): nothing is captured; install again"
    ]


def test_an_unchanged_200_kb_toasted_value_is_delivered_whole_on_update_and_delete(
    wal_dsn, bridge, receiver
):
    dsn = wal_dsn
    execute(dsn, "CREATE TABLE docs (id int PRIMARY KEY, body text, n int)")
    _install(dsn, [{"table": "docs"}])
    bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    # A value that does not compress, so it is stored out of line (TOASTed)
    big = os.urandom(100_000).hex()
    execute(dsn, "INSERT INTO docs VALUES (1, %s, 0)", params=(big,))
    assert scalar(dsn, "SELECT pg_column_size(body) > 100000 FROM docs")
    execute(dsn, "UPDATE docs SET n = 1 WHERE id = 1", "DELETE FROM docs WHERE id = 1")
    assert receiver.wait_for(3, timeout=60)
    events = {e["op"]: e["data"] for e in bodies(receiver)}
    assert events["UPDATE"] == {"id": 1, "body": big, "n": 1}
    assert events["DELETE"] == {"id": 1, "body": big, "n": 1}


def test_a_partitioned_table_is_named_by_its_root(wal_dsn, bridge, receiver):
    dsn = wal_dsn
    execute(
        dsn,
        "CREATE TABLE events (id int, region text, PRIMARY KEY (id, region))"
        " PARTITION BY LIST (region)",
        "CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu')",
        "CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us')",
    )
    _install(dsn, [{"table": "events"}])
    bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    execute(
        dsn, "INSERT INTO events VALUES (1, 'eu'), (2, 'us')", "DELETE FROM events WHERE id = 2"
    )
    assert receiver.wait_for(3, timeout=60)
    got = sorted(
        (e["table"], e["op"], e["data"]["id"], e["data"]["region"]) for e in bodies(receiver)
    )
    assert got == [
        ("events", "DELETE", 2, "us"),
        ("events", "INSERT", 1, "eu"),
        ("events", "INSERT", 2, "us"),
    ]


def test_a_key_change_is_a_delete_of_the_old_row_then_an_insert_of_the_new(
    wal_dsn, bridge, receiver
):
    dsn = wal_dsn
    execute(
        dsn,
        "CREATE TABLE items (id int PRIMARY KEY, name text)",
        "INSERT INTO items VALUES (1, 'a')",
    )
    _install(dsn, [{"table": "items"}])
    execute(dsn, "UPDATE items SET id = 2, name = 'b' WHERE id = 1")
    bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    assert receiver.wait_for(2, timeout=60)
    assert [(op, json.loads(data), key) for op, data, key in _log(dsn, "op, data, row_key")] == [
        ("DELETE", {"id": 1, "name": "a"}, '{"id":1}'),
        ("INSERT", {"id": 2, "name": "b"}, '{"id":2}'),
    ]


def test_columns_update_columns_and_when_apply_in_wal_mode(wal_dsn, bridge, receiver):
    dsn = wal_dsn
    execute(
        dsn,
        "CREATE TABLE orders (id int PRIMARY KEY, status text, total int, note text)",
        "CREATE TABLE refunds (id int PRIMARY KEY, total int)",
    )
    _install(
        dsn,
        [
            {
                "table": "orders",
                "columns": {"insert": ["status", "id"], "update": "*"},
                "update_columns": ["status"],
                "when": "NEW.total > 10",
            },
            {"table": "refunds", "columns": {"delete": ["id"]}, "when": "OLD.total > 10"},
        ],
    )
    execute(
        dsn,
        "INSERT INTO orders VALUES (1, 'new', 5, 'n'), (2, 'new', 50, 'n')",
        "UPDATE orders SET note = 'only the note'",  # not a watched column
        "UPDATE orders SET status = 'paid'",  # row 2 only (when)
        "DELETE FROM orders",  # deletes not captured
        "INSERT INTO refunds VALUES (1, 5), (2, 50)",  # inserts not captured
        "DELETE FROM refunds",
    )  # row 2 only (when)
    bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    assert receiver.wait_for(3, timeout=60)
    time.sleep(1)
    assert [(op, json.loads(data)) for op, data in _log(dsn)] == [
        ("INSERT", {"status": "new", "id": 2}),
        ("UPDATE", {"id": 2, "status": "paid", "total": 50, "note": "only the note"}),
        ("DELETE", {"id": 2}),
    ]


def test_a_when_that_cannot_be_evaluated_in_wal_mode_is_refused_at_install(wal_dsn):
    dsn = wal_dsn
    execute(dsn, "CREATE TABLE orders (id int PRIMARY KEY, total int)")
    with pytest.raises(TriggerError, match="when.*cannot be evaluated in WAL mode.*insert"):
        _install(dsn, [{"table": "orders", "when": "TG_OP = 'INSERT' AND NEW.total > 0"}])
    with pytest.raises(TriggerError, match="when.*insert"):
        _install(dsn, [{"table": "orders", "when": "OLD.total > 0"}])
    # nothing installed
    assert scalar(dsn, "SELECT count(*) FROM pg_replication_slots") == 0
    assert scalar(dsn, "SELECT count(*) FROM pg_publication") == 0


def test_a_slot_read_again_skips_what_the_log_has_and_keeps_event_ids(wal_dsn, bridge, receiver):
    # Given copies of the slot made before the bridge read anything
    dsn = wal_dsn
    execute(dsn, "CREATE TABLE items (id int PRIMARY KEY)")
    slot = _install(dsn, [{"table": "items"}])
    for copy in ("copy_a", "copy_b"):
        execute(dsn, "SELECT pg_copy_logical_replication_slot(%s, %s)", params=(slot, copy))
    execute(
        dsn,
        "INSERT INTO items SELECT generate_series(1, 100)",
        "UPDATE items SET id = id + 1000 WHERE id <= 10",
    )
    first = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM skor.log") == 120, timeout=60)
    ids = _log(dsn, "event_id::text, op, data")
    assert first.stop() == 0
    # When the bridge reads a copy, which sends every transaction again
    execute(dsn, "UPDATE skor.wal_state SET slot_name = 'copy_a'")
    second = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    execute(dsn, "INSERT INTO items VALUES (5000)")
    # Then transactions already in the log are skipped: each change is there once
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM skor.log") == 121, timeout=60)
    time.sleep(1)
    assert scalar(dsn, "SELECT count(*) FROM skor.log") == 121
    assert second.stop() == 0
    # And when the recorded progress is lost too, the events written again keep their ids
    execute(dsn, "UPDATE skor.wal_state SET slot_name = 'copy_b', lsn = '0/0'")
    bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM skor.log") == 242, timeout=60)
    again = _log(dsn, "event_id::text, op, data")[121:]
    assert again == ids + _log(dsn, "event_id::text, op, data")[120:121]
    assert len({row[0] for row in ids}) == 120


def test_sigkill_inside_a_transaction_written_in_chunks_loses_and_repeats_nothing(
    wal_dsn, bridge, receiver, tmp_path
):
    # Given one transaction of 100,000 rows, written to the log 500 at a time
    dsn = wal_dsn
    execute(dsn, "CREATE TABLE items (id int PRIMARY KEY)")
    _install(dsn, [{"table": "items"}])
    execute(dsn, "INSERT INTO items SELECT generate_series(1, 100000)")
    args = ("--dsn", dsn, "--webhook", receiver.url, "--batch-size", "500")
    first = bridge(*args)
    # When the bridge is killed while part of it is in the log
    wait_until(
        lambda: (
            (
                scalar(dsn, "SELECT count(*) FROM skor.log")
                if scalar(dsn, "SELECT to_regclass('skor.log') IS NOT NULL")
                else 0
            )
            >= 5000
        ),
        timeout=60,
        interval=0.01,
    )
    first.kill()
    written = scalar(dsn, "SELECT count(*) FROM skor.log")
    assert written < 100_000, "the test must kill the bridge mid-transaction"
    assert scalar(dsn, "SELECT partial_lsn IS NOT NULL FROM skor.wal_state")
    # And started again
    bridge(*args)
    # Then the log holds each row once, numbered without gaps, with distinct ids
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM skor.log") >= 100_000, timeout=120)
    time.sleep(1)
    assert scalar(dsn, "SELECT count(DISTINCT data) FROM skor.log") == 100_000
    assert scalar(dsn, "SELECT count(DISTINCT event_id) FROM skor.log") == 100_000
    assert scalar(dsn, "SELECT max(pos) - min(pos) + 1 FROM skor.log") == 100_000
    assert scalar(dsn, "SELECT partial_lsn IS NULL FROM skor.wal_state")


def test_the_slot_is_acknowledged_while_a_webhook_keeps_failing(wal_dsn, bridge, tmp_path):
    dsn = wal_dsn
    execute(dsn, "CREATE TABLE items (id int PRIMARY KEY, pad text)")
    slot = _install(dsn, [{"table": "items"}])
    with Receiver(respond=lambda r: 503) as failing:
        bridge(
            "--dsn", dsn, "--webhook", failing.url, "--config", short_retry_config(tmp_path)
        ).wait_active()
        execute(
            dsn, "INSERT INTO items SELECT g, repeat('x', 1000) FROM generate_series(1, 5000) g"
        )
        # (the insert position: with synchronous_commit off, as the test server runs, the
        # write position can still be short of the commit record)
        written = scalar(dsn, "SELECT pg_current_wal_insert_lsn()::text")
        # The changes are in the log and the slot moved past them, though nothing was delivered
        wait_until(
            lambda: scalar(
                dsn,
                "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM"
                " pg_replication_slots WHERE slot_name = %s",
                (written, slot),
            ),
            timeout=60,
            message="slot acknowledged",
        )
        assert scalar(dsn, "SELECT count(*) FROM skor.log") == 5000
        assert failing.count > 0 and not failing.delivered()


def test_an_idle_publication_on_a_busy_server_still_advances_the_slot(wal_dsn, bridge, receiver):
    dsn = wal_dsn
    execute(
        dsn, "CREATE TABLE captured (id int PRIMARY KEY)", "CREATE TABLE busy (id int, pad text)"
    )
    slot = _install(dsn, [{"table": "captured"}])
    bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    execute(dsn, "INSERT INTO captured VALUES (1)")
    assert receiver.wait_for(1, timeout=60)
    # When only an uncaptured table is written, megabytes of WAL
    for _ in range(5):
        execute(dsn, "INSERT INTO busy SELECT g, repeat('x', 500) FROM generate_series(1, 5000) g")
    written = scalar(dsn, "SELECT pg_current_wal_lsn()::text")
    # Then the slot's acknowledged position follows the server's
    wait_until(
        lambda: scalar(
            dsn,
            "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM"
            " pg_replication_slots WHERE slot_name = %s",
            (written, slot),
        ),
        timeout=60,
        message="slot advanced",
    )


def test_a_different_server_history_stops_the_bridge_naming_the_slot(wal_dsn, bridge, receiver):
    dsn = wal_dsn
    execute(dsn, "CREATE TABLE items (id int PRIMARY KEY)")
    slot = _install(dsn, [{"table": "items"}])
    execute(dsn, "UPDATE skor.wal_state SET timeline = timeline + 1")
    process = bridge("--dsn", dsn, "--webhook", receiver.url)
    assert process.proc.wait(60) == 1
    errors = [line for line in process.log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and slot in errors[0] and "timeline" in errors[0], process.log


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_readyz_metrics_and_status_show_the_slot_and_its_lag(wal_dsn, bridge, receiver):
    dsn = wal_dsn
    execute(dsn, "CREATE TABLE items (id int PRIMARY KEY)")
    slot = _install(dsn, [{"table": "items"}])
    port = free_port()
    # Given a bridge whose --max-slot-lag is below what any slot holds
    process = bridge(
        "--dsn", dsn, "--webhook", receiver.url, "--metrics-port", str(port), "--max-slot-lag", "1"
    ).wait_active()
    execute(dsn, "INSERT INTO items SELECT generate_series(1, 100)")
    assert receiver.wait_for(100, timeout=60)
    process.wait_for_log("over --max-slot-lag", timeout=30)
    # Then /readyz fails, saying why, and /metrics has the slot's figures
    status, body = _get(f"http://127.0.0.1:{port}/readyz")
    assert status == 503, body
    report = json.loads(body)["slot"]
    assert report["slot"] == slot and not report["ready"] and report["retained_bytes"] > 1
    # (gauges are refreshed with the heartbeat, every second)
    wait_until(
        lambda: (
            'skor_wal_slot_status{status="reserved"} 1.0'
            in _get(f"http://127.0.0.1:{port}/metrics")[1]
        ),
        timeout=30,
    )
    metrics = _get(f"http://127.0.0.1:{port}/metrics")[1]
    retained = [
        line for line in metrics.splitlines() if line.startswith("skor_wal_slot_retained_bytes ")
    ]
    assert retained and float(retained[0].split()[1]) > 1
    # And `status` shows the slot
    import subprocess
    import sys

    shown = subprocess.run(
        [sys.executable, "-m", "skor_bridge", "status", "--dsn", dsn],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"replication slot {slot}: holds" in shown.stdout, shown.stdout + shown.stderr


def test_logical_messages_reach_listeners_once_the_log_has_what_came_before(wal_dsn):
    from skor_bridge.capture.wal.changes import MessageEvent
    from skor_bridge.capture.wal.source import WalSource
    from skor_bridge.config import Config, OutputConfig, SourceConfig, WebhookConfig

    dsn = wal_dsn
    execute(dsn, "CREATE TABLE items (id int PRIMARY KEY)")
    _install(dsn, [{"table": "items"}])
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO items VALUES (1), (2)")
        cur.execute("SELECT pg_logical_emit_message(true, 'skor.backfill', 'low:7')")
        cur.execute("INSERT INTO items VALUES (3)")
    conn.commit()
    conn.close()
    config = Config(
        SourceConfig(dsn=dsn),
        (OutputConfig("hook", "webhook", WebhookConfig("http://127.0.0.1:9/")),),
    )
    stop = threading.Event()
    source = WalSource(config, stop)
    seen = []
    source.reader.listeners.append(
        lambda message, position: seen.append(
            (
                message.prefix,
                message.content,
                position,
                scalar(dsn, "SELECT count(*) FROM skor.log"),
            )
        )
    )
    # and a handler that makes an event of the message, as backfill does with READ rows
    source.reader.handlers["skor.backfill"] = lambda message: [
        MessageEvent("public", "items", "READ", json.dumps({"id": 99}), '{"id":99}')
    ]
    source.start()
    try:
        wait_until(lambda: seen, timeout=30)
    finally:
        stop.set()
        source.close()
    prefix, content, position, in_log = seen[0]
    assert (prefix, content) == ("skor.backfill", b"low:7")
    # The message came after rows 1 and 2: the log had them, and they are at or before it
    assert position == 2 and in_log == 4
    # and its event sits between them and row 3, with an id like every other event's
    assert [(op, json.loads(data)) for op, data in _log(dsn)] == [
        ("INSERT", {"id": 1}),
        ("INSERT", {"id": 2}),
        ("READ", {"id": 99}),
        ("INSERT", {"id": 3}),
    ]
    assert scalar(dsn, "SELECT count(DISTINCT event_id) FROM skor.log") == 4


#: Rows of the big-transaction test (2,000,000 by default; SKOR_WAL_BIG_ROWS to change).
BIG_ROWS = int(os.environ.get("SKOR_WAL_BIG_ROWS", "2000000"))


def test_a_2_000_000_row_transaction_is_captured_with_the_bridge_memory_bounded(
    wal_dsn, bridge, tmp_path
):
    # Given one transaction of BIG_ROWS rows, committed while the bridge is down
    dsn = wal_dsn
    execute(dsn, "CREATE TABLE items (id int PRIMARY KEY, name text)")
    _install(dsn, [{"table": "items"}])
    execute(dsn, f"INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, {BIG_ROWS}) g")
    # When the bridge captures it (its webhook refusing, so delivery holds little)
    with Receiver(respond=lambda r: 503) as failing:
        process = bridge(
            "--dsn",
            dsn,
            "--webhook",
            failing.url,
            "--max-in-flight",
            "1000",
            "--config",
            short_retry_config(tmp_path, max_backoff=30),
        )
        wait_until(
            lambda: (
                (
                    scalar(dsn, "SELECT next_pos - 1 FROM skor.sequencer")
                    if scalar(dsn, "SELECT to_regclass('skor.sequencer') IS NOT NULL")
                    else 0
                )
                >= BIG_ROWS
            ),
            timeout=900,
            interval=1,
            message=f"{BIG_ROWS} rows in the log",
        )
        status = Path(f"/proc/{process.proc.pid}/status").read_text()
    # Then every row is in the log once, and the bridge never held the transaction
    assert scalar(dsn, "SELECT count(*) FROM skor.log") == BIG_ROWS
    peak_kb = int(status.split("VmHWM:")[1].split()[0])
    print(f"{BIG_ROWS} rows captured; bridge peak memory {peak_kb // 1024} MiB")
    assert peak_kb < 150 * 1024, f"peak memory {peak_kb} kB"
