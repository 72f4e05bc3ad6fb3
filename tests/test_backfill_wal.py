"""`skor-bridge backfill` in WAL mode: READ events consistent with the replication stream."""

from __future__ import annotations

import threading
import time

import pytest

from skor_bridge.capture import triggers
from skor_bridge.capture.wal import install as wal_install
from tests.helpers import execute, scalar
from tests.test_backfill import (
    TABLE,
    _writer,
    receiver_view,
    run_backfill,
    table_view,
    wait_log_drained,
)

pytestmark = pytest.mark.slow


def test_wal_mode_backfill_under_concurrent_writes_ends_equal_to_the_table(
    wal_dsn, bridge, receiver
):
    # Given 20,000 rows of a table captured in WAL mode, and a bridge delivering them
    execute(
        wal_dsn,
        TABLE,
        "INSERT INTO items (id, name) SELECT g, 'n' || g FROM generate_series(1, 20000) g",
    )
    wal_install.install(wal_dsn, triggers.parse_config([{"table": "items"}]))
    bridge("--dsn", wal_dsn, "--webhook", receiver.url).wait_active()
    # When it is backfilled while two writers update, delete and insert
    stop = threading.Event()
    writers = [
        threading.Thread(target=_writer, args=(wal_dsn, stop, 20000, 1, 20001)),
        threading.Thread(target=_writer, args=(wal_dsn, stop, 20000, 2, 1_000_000)),
    ]
    for writer in writers:
        writer.start()
    try:
        done = run_backfill(wal_dsn, "--table", "items", "--chunk-size", "500")
    finally:
        time.sleep(0.5)
        stop.set()
        for writer in writers:
            writer.join()
    assert done.returncode == 0, done.stderr
    # Then the last event of every row equals the row in the table
    wait_log_drained(wal_dsn, receiver)
    assert scalar(wal_dsn, "SELECT count(*) FROM skor.log WHERE op = 'READ'") > 10000
    assert receiver_view(receiver) == table_view(wal_dsn)


def test_wal_mode_backfill_of_a_quiet_table_is_delivered_whole(wal_dsn, bridge, receiver):
    # Given 3,000 rows of a table captured in WAL mode that nobody writes to
    execute(
        wal_dsn,
        TABLE,
        "INSERT INTO items (id, name) SELECT g, 'n' || g FROM generate_series(1, 3000) g",
    )
    wal_install.install(wal_dsn, triggers.parse_config([{"table": "items"}]))
    bridge("--dsn", wal_dsn, "--webhook", receiver.url).wait_active()
    # When it is backfilled, and no change follows
    done = run_backfill(wal_dsn, "--table", "items", "--chunk-size", "700")
    assert done.returncode == 0, done.stderr
    # Then every row arrives (the reader learns that the log grew from the backfill itself)
    assert receiver.wait_for(3000, timeout=30)
    assert receiver_view(receiver) == table_view(wal_dsn)
