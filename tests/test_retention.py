"""Retention keeps the event log bounded: whole partitions go once every output is past
them and they are older than the retention; nothing undelivered is ever dropped."""

from __future__ import annotations

import json
import threading
import time

import psycopg2
import pytest

from skor_bridge.capture.retention import partitions, prune
from skor_bridge.capture.schema import ensure_schema
from tests.helpers import execute, scalar, wait_until


def build_log(db):
    """Positions 1-350 in partitions of 100; 1-200 logged an hour ago, 201-350 just now."""
    with db.cursor() as cur:
        ensure_schema(cur)
        for lower in (1, 101, 201, 301):
            cur.execute(f"CREATE TABLE skor.log_{lower:019d} PARTITION OF skor.log"
                        f" FOR VALUES FROM ({lower}) TO ({lower + 100})")
        cur.execute(
            "INSERT INTO skor.log (pos, event_id, captured_at, logged_at, schema_name,"
            " table_name, op, data) SELECT g, gen_random_uuid(), now(), CASE WHEN g <= 200"
            " THEN now() - interval '1 hour' ELSE now() END, 'public', 't', 'INSERT', '{}'"
            " FROM generate_series(1, 350) g")
        cur.execute("UPDATE skor.sequencer SET next_pos = 351")


def remaining(db):
    with db.cursor() as cur:
        return [(first, end) for _, first, end in partitions(cur)]


def test_prune_drops_only_partitions_every_output_passed_and_retention_released(db):
    # Given 4 partitions of 100 positions, the head at 350, and no output yet
    build_log(db)
    cur = db.cursor()
    # When retention runs, Then nothing goes: no output has read anything
    assert prune(cur, 0) == []
    # Given a slow output at 180 and a fast one at 250
    cur.execute("INSERT INTO skor.outputs (name, kind, position) VALUES"
                " ('slow', 'webhook', 180), ('fast', 'kafka', 250)")
    # When retention (30 min) runs, Then only the partition both passed goes
    assert prune(cur, 1800) == ['"skor"."log_0000000000000000001"']
    assert remaining(db) == [(101, 201), (201, 301), (301, 401)]
    # When the slow output reaches 300, Then 101-200 goes, but 201-300 is too recent
    cur.execute("UPDATE skor.outputs SET position = 300 WHERE name = 'slow'")
    cur.execute("UPDATE skor.outputs SET position = 350 WHERE name = 'fast'")
    assert prune(cur, 1800) == ['"skor"."log_0000000000000000101"']
    assert prune(cur, 1800) == []
    # When the retention is shorter than its age, Then it goes too
    assert prune(cur, 0) == ['"skor"."log_0000000000000000201"']
    # And the partition holding the head stays, though every output is at the head
    cur.execute("UPDATE skor.outputs SET position = 350")
    assert prune(cur, 0) == []
    assert remaining(db) == [(301, 401)]
    cur.execute("SELECT min(pos), max(pos), count(*) FROM skor.log")
    assert cur.fetchone() == (301, 350, 50)


def test_prune_forgets_delivery_stats_older_than_an_hour(db):
    # Given per-second delivery counts from 2 hours and 10 minutes ago
    with db.cursor() as cur:
        ensure_schema(cur)
        cur.execute("INSERT INTO skor.delivery_stats VALUES"
                    " ('webhook', date_trunc('second', now() - interval '2 hours'), 5),"
                    " ('webhook', date_trunc('second', now() - interval '10 minutes'), 7)")
        # When retention runs
        prune(cur, 3600)
        # Then only the recent one is kept
        cur.execute("SELECT delivered FROM skor.delivery_stats")
        assert cur.fetchall() == [(7,)]


@pytest.mark.slow
def test_the_log_stops_growing_under_steady_load_once_retention_is_reached(
    dsn, capture_table, bridge, receiver, tmp_path
):
    # Given a bridge keeping 2 s of events in partitions of 200, pruning every 0.5 s
    capture_table("CREATE TABLE items (id int PRIMARY KEY)", "items")
    config = tmp_path / "skor.toml"
    config.write_text('partition_size = 200\nretention = "2s"\nretention_interval = 0.5\n')
    process = bridge("--dsn", dsn, "--webhook", receiver.url, "--config", str(config))
    process.wait_active()

    # When a writer inserts 200 rows a second for 14 s, while the log is sampled
    samples = []
    done = threading.Event()

    def sample() -> None:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not done.is_set():
                cur.execute("SELECT (SELECT count(*) FROM skor.log), (SELECT count(*) FROM"
                            " pg_inherits WHERE inhparent = 'skor.log'::regclass)")
                rows, parts = cur.fetchone()
                samples.append((time.monotonic(), rows, parts))
                done.wait(0.25)
        conn.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    total = 0
    while time.monotonic() - started < 14:
        execute(dsn, f"INSERT INTO items SELECT g FROM generate_series({total + 1},"
                     f" {total + 20}) g")
        total += 20
        time.sleep(0.1)
    done.set()
    sampler.join()

    # Then every row is delivered
    wait_until(lambda: len({json.loads(r.body)["data"]["id"] for r in receiver.delivered()})
               == total, timeout=20, message=f"all {total} rows")
    # And the log plateaued: the second half never holds more than the first half plus one
    # partition, far below what was written
    half = started + (samples[-1][0] - started) / 2
    first = [s for s in samples if s[0] <= half]
    second = [s for s in samples if s[0] > half]
    assert first and second
    assert max(s[1] for s in second) <= max(s[1] for s in first) + 200, samples
    assert max(s[2] for s in second) <= max(s[2] for s in first) + 1, samples
    assert max(s[1] for s in samples) < total / 2
    assert "retention: dropped" in process.log
    # And what is left starts after what was dropped, without gaps
    low, high, count = scalar(dsn, "SELECT ARRAY[min(pos), max(pos), count(*)] FROM skor.log")
    assert low > 1 and count == high - low + 1
