"""The outbox compaction round (`outbox_upkeep.compact_round`) against real PostgreSQL, and
its schedule: it moves and empties the outbox only when it can do so in a moment."""

from __future__ import annotations

import time

import psycopg2

from skor_bridge.capture.outbox_upkeep import (
    COMPACT_BACKOFF_MAX,
    COMPACT_EVERY,
    CompactionSchedule,
    compact_round,
)
from tests.helpers import execute, scalar


def move_all(cur) -> list[int]:
    """A stand-in for the sequencer's move: delete what is visible, return the ids."""
    cur.execute("DELETE FROM skor.outbox RETURNING id")
    return sorted(row[0] for row in cur.fetchall())


def outbox_rows(dsn) -> int:
    return scalar(dsn, "SELECT count(*) FROM skor.outbox")


def test_compaction_moves_every_row_and_truncates(dsn, db, capture_table):
    capture_table("CREATE TABLE t (id int PRIMARY KEY)", "t")
    execute(dsn, "INSERT INTO t SELECT g FROM generate_series(1, 5) g")
    before = scalar(dsn, "SELECT pg_relation_filenode('skor.outbox')")
    with db.cursor() as cur:
        moved = compact_round(cur, 10, move_all)
    assert moved is not None and len(moved) == 5
    assert outbox_rows(dsn) == 0
    assert scalar(dsn, "SELECT pg_relation_filenode('skor.outbox')") != before  # truncated
    # The id sequence goes on: a new row never reuses a moved row's id
    execute(dsn, "INSERT INTO t VALUES (6)")
    assert scalar(dsn, "SELECT min(id) FROM skor.outbox") > max(moved)


def test_compaction_gives_up_on_more_than_one_round(dsn, db, capture_table):
    capture_table("CREATE TABLE t (id int PRIMARY KEY)", "t")
    execute(dsn, "INSERT INTO t SELECT g FROM generate_series(1, 11) g")
    with db.cursor() as cur:
        assert compact_round(cur, 10, move_all) is None
        assert db.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    assert outbox_rows(dsn) == 11


def test_compaction_waits_for_a_writer_only_a_moment(dsn, db, capture_table):
    capture_table("CREATE TABLE t (id int PRIMARY KEY)", "t")
    writer = psycopg2.connect(dsn)
    try:
        # Given a writer whose transaction inserted into the outbox and stays open
        with writer.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (1)")
        # Then compaction gives up within its lock timeout, changing nothing
        began = time.monotonic()
        with db.cursor() as cur:
            assert compact_round(cur, 10, move_all) is None
        assert time.monotonic() - began < 1.0
        assert db.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        # And the writer's row is moved once it commits
        writer.commit()
        with db.cursor() as cur:
            moved = compact_round(cur, 10, move_all)
        assert moved is not None and len(moved) == 1
    finally:
        writer.close()


def test_schedule_looks_once_a_second_and_backs_off_after_failures():
    schedule = CompactionSchedule(compact_after=100, now=0.0)
    assert not schedule.due(0.5)
    assert schedule.due(COMPACT_EVERY)
    assert not schedule.worth_it(99) and schedule.worth_it(100)
    # Not worth it: look again a second later
    schedule.looked(1.0, None)
    assert not schedule.due(1.5) and schedule.due(2.0)
    # Failed attempts: 2, 4, 8 seconds, never more
    now = 2.0
    for pause in (2.0, 4.0, 8.0, COMPACT_BACKOFF_MAX):
        schedule.looked(now, False)
        assert not schedule.due(now + pause - 0.01) and schedule.due(now + pause)
        now += pause
    # A success: back to once a second
    schedule.looked(now, True)
    assert schedule.due(now + COMPACT_EVERY)
