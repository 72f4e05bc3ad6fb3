"""The sequencer's cost on the user's database: an idle bridge backs its poll off, and
comes back to fast polling as soon as something arrives."""

from __future__ import annotations

import json
import statistics
import time

import psycopg2
import pytest

from skor_bridge.capture.sequencer import _MOVE, ensure_partitions
from tests.helpers import execute

TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text)"


def prepare_move(cur, partition_size: int = 100_000, until: int = 1000) -> str:
    """Log partitions for positions 1..until-1 and the sequencer's statement prepared as
    `skor_move` in this session, as a round has them; returns the install id it takes."""
    ensure_partitions(cur, 1, until, partition_size)
    cur.execute("SELECT value FROM skor.meta WHERE key = 'install_id'")
    install_id = cur.fetchone()[0]
    cur.execute(f"PREPARE skor_move (int, text, bigint) AS {_MOVE}")
    return install_id


def transactions(dsn: str) -> int:
    """Transactions the test database has committed so far (every look at the outbox is one)."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        count = int(cur.fetchone()[0])
    conn.close()
    return count


@pytest.mark.slow
def test_an_idle_bridge_backs_its_poll_off_and_comes_back_when_changes_arrive(
    dsn, capture_table, bridge, receiver
):
    # Given a running bridge that delivered one change, then had nothing to do
    capture_table(TABLE, "items")
    bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    execute(dsn, "INSERT INTO items VALUES (0, 'warm-up')")
    assert receiver.wait_for(1, timeout=30)
    time.sleep(3)
    # Then, idle, it looks at the database a few times a second, not every 2 ms
    # (PostgreSQL publishes backends' counters about once a second: a long window)
    before = transactions(dsn)
    time.sleep(8)
    idle = transactions(dsn) - before
    assert idle < 400, f"{idle} transactions in 8 s of idling"

    # When a change arrives after the quiet period, it is delivered
    execute(dsn, "INSERT INTO items VALUES (1, 'after the quiet')")
    assert receiver.wait_for(2, timeout=30)
    # And once traffic resumes, changes arrive promptly again (fast polling, not one look
    # per backed-off interval)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    committed = {}
    with conn.cursor() as cur:
        for row in range(2, 42):
            cur.execute("INSERT INTO items VALUES (%s, 'x')", (row,))
            committed[row] = time.time()
            time.sleep(0.025)
    conn.close()
    assert receiver.wait_for(42, timeout=30)
    latency = [
        r.at - committed[json.loads(r.body)["data"]["id"]]
        for r in receiver.delivered()
        if json.loads(r.body)["data"]["id"] >= 2
    ]
    assert statistics.median(latency) < 0.12, sorted(latency)


@pytest.mark.parametrize("size", [0, 1, 7, 1000])
def test_the_events_held_in_memory_are_sliced_the_same_from_either_end(size):
    # (pure logic) the window an output fetches from the sequencer's memory is walked from
    # the nearer end; whichever end, it is exactly the slice asked for
    import random
    from collections import deque

    from skor_bridge.capture.sequencer import _window

    held = deque(range(size))
    draw = random.Random(size)
    asks = [(0, 5), (size, 3), (max(0, size - 1), 10)]
    asks += [(draw.randrange(size + 1), draw.randrange(1, size + 50)) for _ in range(500)]
    for start, limit in asks:
        assert _window(held, start, limit) == list(held)[start : start + limit], (start, limit)


def test_a_round_locks_only_the_log_partition_it_writes(dsn, capture_table):
    """A round's cost must not grow with the partitions retention keeps: its plan once held
    a scan of every log partition (for backfill's superseded-READ check), locked and set
    up by every round, backfill or not (issue 17)."""
    # Given a log of 20 partitions and one captured change waiting in the outbox
    capture_table(TABLE, "items")
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        install_id = prepare_move(cur, partition_size=10, until=20 * 10)
        execute(dsn, "INSERT INTO items VALUES (1, 'one')")
        # When a round moves it (in a transaction here, so its locks can be seen)
        cur.execute("BEGIN")
        cur.execute("EXECUTE skor_move (1000, %s, 1000000)", (install_id,))
        assert len(cur.fetchall()) == 1
        cur.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_inherits i ON i.inhrelid = l.relation"
            " WHERE l.pid = pg_backend_pid() AND i.inhparent = 'skor.log'::regclass"
        )
        locked = cur.fetchone()[0]
        cur.execute("ROLLBACK")
    conn.close()
    # Then it locked the one partition it wrote to, not all twenty
    assert locked == 1


def test_reads_an_older_backfill_left_in_the_outbox_are_still_dropped_when_superseded(
    dsn, capture_table
):
    """The superseded-READ check reads the log through skor.log_changes_after (migration
    72): a READ is still dropped when the log, or the same round, holds a newer change of
    its row, and kept otherwise."""
    capture_table(TABLE, "items")
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        install_id = prepare_move(cur)
        # Given a change of row 1 already in the log (after watermark 0)...
        execute(dsn, "INSERT INTO items VALUES (1, 'one')")
        cur.execute("EXECUTE skor_move (1000, %s, 1000000)", (install_id,))
        assert len(cur.fetchall()) == 1
        # ... and in the outbox: a change of row 3, then READs (watermark 0) of rows 1, 2, 3
        execute(dsn, "INSERT INTO items VALUES (3, 'three')")
        cur.execute(
            "INSERT INTO skor.outbox (schema_name, table_name, op, row_key, data, watermark)"
            " SELECT schema_name, table_name, 'READ', row_key, data, 0 FROM skor.log"
            " UNION ALL SELECT schema_name, table_name, 'READ', row_key, data, 0"
            " FROM skor.outbox"
            " UNION ALL SELECT 'public', 'items', 'READ', 'not-a-changed-row', '{}', 0"
        )
        # When a round moves them
        cur.execute("EXECUTE skor_move (1000, %s, 1000000)", (install_id,))
        moved = [(row[5], row[6]) for row in cur.fetchall()]
    conn.close()
    # Then the READs of rows 1 (newer change in the log) and 3 (in the same round) are
    # dropped; the READ of a row with no newer change is kept
    assert [op for op, _ in moved] == ["INSERT", "READ"]
    assert moved[1][1] == "not-a-changed-row"


def test_a_round_finds_the_outbox_by_its_index_never_by_a_sequential_scan(dsn, capture_table):
    """The outbox is written and emptied a thousand times a second: between two VACUUMs it
    has many dead or empty pages, and a sequential scan of them in every round (to see
    whether it is empty, and to join the batch back) was a large part of a round's cost
    (issue 17)."""
    capture_table(TABLE, "items")
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        install_id = prepare_move(cur)
        # Given an outbox through which 5,000 changes went (its pages now mostly dead rows,
        # as between two VACUUMs under steady writes)
        cur.execute("INSERT INTO items SELECT -g, 'bulk' FROM generate_series(1, 5000) g")
        for _ in range(5):
            cur.execute("EXECUTE skor_move (1000, %s, 1000000)", (install_id,))
            assert len(cur.fetchall()) == 1000
        # When rounds look at it, empty or holding rows (in one transaction, so that the
        # backend's table counters are not flushed meanwhile)
        scans = (
            "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables"
            " WHERE relid = 'skor.outbox'::regclass"
        )
        cur.execute("BEGIN")
        cur.execute(scans)
        seq_before, index_before = cur.fetchone()
        moved = 0
        for round_ in range(8):
            if round_ % 2:
                cur.execute("INSERT INTO items VALUES (%s, 'x')", (round_,))
            cur.execute("EXECUTE skor_move (1000, %s, 1000000)", (install_id,))
            moved += len(cur.fetchall())
        cur.execute(scans)
        seq_after, index_after = cur.fetchone()
        cur.execute("ROLLBACK")
    conn.close()
    # Then every round used the primary key, none read the table through
    assert moved == 4
    assert seq_after - seq_before == 0
    assert index_after - index_before >= 8


def test_two_sessions_creating_the_same_log_partition_both_succeed(dsn, capture_table):
    """A backfill chunk creates a log partition inside its transaction while the sequencer
    creates the same one outside: the second must wait and find it, not fail with
    "relation already exists" (seen in `make bench`: the backfill command died on it)."""
    import threading

    capture_table(TABLE, "items")
    first = psycopg2.connect(dsn)
    first.autocommit = True
    second = psycopg2.connect(dsn)
    second.autocommit = True
    failures: list[BaseException] = []
    covered: list[int] = []
    with first.cursor() as a:
        # Given a transaction that created partitions and has not committed yet
        a.execute("BEGIN")
        ensure_partitions(a, 10_000_001, 10_000_011, 5)

        def create_the_same() -> None:
            try:
                with second.cursor() as b:
                    covered.append(ensure_partitions(b, 10_000_001, 10_000_011, 5))
            except BaseException as error:  # noqa: BLE001 - the test reports it
                failures.append(error)

        # When another session needs the same partitions meanwhile
        other = threading.Thread(target=create_the_same)
        other.start()
        time.sleep(0.5)
        a.execute("COMMIT")
        other.join(30)
    first.close()
    second.close()
    # Then both succeed and the partitions exist once
    assert not failures, failures
    assert covered and covered[0] >= 10_000_011
