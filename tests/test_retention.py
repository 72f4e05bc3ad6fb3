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
            cur.execute(
                f"CREATE TABLE skor.log_{lower:019d} PARTITION OF skor.log"
                f" FOR VALUES FROM ({lower}) TO ({lower + 100})"
            )
        cur.execute(
            "INSERT INTO skor.log (pos, event_id, captured_at, logged_at, schema_name,"
            " table_name, op, data) SELECT g, gen_random_uuid(), now(), CASE WHEN g <= 200"
            " THEN now() - interval '1 hour' ELSE now() END, 'public', 't', 'INSERT', '{}'"
            " FROM generate_series(1, 350) g"
        )
        cur.execute("UPDATE skor.sequencer SET next_pos = 351")


def remaining(db):
    with db.cursor() as cur:
        return [(p.first, p.end) for p in partitions(cur)]


@pytest.mark.slow
def test_prune_drops_only_partitions_every_output_passed_and_retention_released(db):
    # Given 4 partitions of 100 positions, the head at 350, and no output yet
    build_log(db)
    cur = db.cursor()
    # When retention runs, Then nothing goes: no output has read anything
    assert prune(cur, 0).dropped == []
    # Given a slow output at 180 and a fast one at 250
    cur.execute(
        "INSERT INTO skor.outputs (name, kind, position) VALUES"
        " ('slow', 'webhook', 180), ('fast', 'kafka', 250)"
    )
    # When retention (30 min) runs, Then only the partition both passed goes
    assert prune(cur, 1800).dropped == ['"skor"."log_0000000000000000001"']
    assert remaining(db) == [(101, 201), (201, 301), (301, 401)]
    # When the slow output reaches 300, Then 101-200 goes, but 201-300 is too recent
    cur.execute("UPDATE skor.outputs SET position = 300 WHERE name = 'slow'")
    cur.execute("UPDATE skor.outputs SET position = 350 WHERE name = 'fast'")
    assert prune(cur, 1800).dropped == ['"skor"."log_0000000000000000101"']
    assert prune(cur, 1800).dropped == []
    # When the retention is shorter than its age, Then it goes too
    assert prune(cur, 0).dropped == ['"skor"."log_0000000000000000201"']
    # And the partition holding the head stays, though every output is at the head
    cur.execute("UPDATE skor.outputs SET position = 350")
    assert prune(cur, 0).dropped == []
    assert remaining(db) == [(301, 401)]
    cur.execute("SELECT min(pos), max(pos), count(*) FROM skor.log")
    assert cur.fetchone() == (301, 350, 50)


@pytest.mark.slow
def test_prune_forgets_delivery_stats_older_than_an_hour(db):
    # Given per-second delivery counts from 2 hours and 10 minutes ago
    with db.cursor() as cur:
        ensure_schema(cur)
        cur.execute(
            "INSERT INTO skor.delivery_stats VALUES"
            " ('webhook', date_trunc('second', now() - interval '2 hours'), 5),"
            " ('webhook', date_trunc('second', now() - interval '10 minutes'), 7)"
        )
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
                cur.execute(
                    "SELECT (SELECT count(*) FROM skor.log), (SELECT count(*) FROM"
                    " pg_inherits WHERE inhparent = 'skor.log'::regclass)"
                )
                rows, parts = cur.fetchone()
                samples.append((time.monotonic(), rows, parts))
                done.wait(0.25)
        conn.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    total = 0
    while time.monotonic() - started < 14:
        execute(
            dsn, f"INSERT INTO items SELECT g FROM generate_series({total + 1}, {total + 20}) g"
        )
        total += 20
        time.sleep(0.1)
    done.set()
    sampler.join()

    # Then every row is delivered
    wait_until(
        lambda: len({json.loads(r.body)["data"]["id"] for r in receiver.delivered()}) == total,
        timeout=20,
        message=f"all {total} rows",
    )
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


@pytest.mark.slow
def test_prune_by_size_drops_recent_partitions_but_never_what_an_output_needs(db):
    # Given 4 partitions (1-200 an hour old, 201-350 recent), the head at 350
    build_log(db)
    cur = db.cursor()
    sizes = {p.first: p.bytes for p in partitions(cur)}
    cur.execute(
        "INSERT INTO skor.outputs (name, kind, position) VALUES"
        " ('slow', 'webhook', 150), ('fast', 'kafka', 350)"
    )
    # When the size limit is far above the log, Then only age counts (7 days: nothing goes)
    found = prune(cur, 7 * 86400, 10**9)
    assert found.dropped == [] and found.holding == []
    assert found.log_bytes == sum(sizes.values())
    # When the limit is smaller than the log, Then partitions go oldest first whatever
    # their age, but none the slow output has not passed, and it is marked as holding it
    found = prune(cur, 7 * 86400, 1)
    assert found.dropped == ['"skor"."log_0000000000000000001"']
    assert found.holding == ["slow"]
    assert scalar_cur(cur, "SELECT count(*) FROM skor.log WHERE pos > 150") == 200
    cur.execute("SELECT name FROM skor.outputs WHERE holding_log_since IS NOT NULL")
    assert cur.fetchall() == [("slow",)]
    # When the slow output catches up, Then the log shrinks to the head's partition and
    # nobody holds it any more
    cur.execute("UPDATE skor.outputs SET position = 350")
    found = prune(cur, 7 * 86400, 1)
    assert found.dropped == ['"skor"."log_0000000000000000101"', '"skor"."log_0000000000000000201"']
    assert found.holding == []
    assert remaining(db) == [(301, 401)]
    cur.execute("SELECT count(*) FROM skor.outputs WHERE holding_log_since IS NOT NULL")
    assert cur.fetchone() == (0,)


def scalar_cur(cur, sql):
    cur.execute(sql)
    return cur.fetchone()[0]


def log_bytes(dsn):
    return scalar(
        dsn,
        "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0)"
        " FROM pg_inherits WHERE inhparent = 'skor.log'::regclass",
    )


@pytest.mark.slow
def test_retention_size_bounds_the_log_and_a_lagging_output_is_reported_not_skipped(
    dsn, capture_table, bridge, receiver, tmp_path
):
    from skor_bridge.tools.receiver import Receiver
    from tests.test_metrics import free_port, get, scrape

    # Given a bridge keeping the log under 600 kB (partitions of 100 events, a week of
    # time retention), pruning every 0.3 s, with two webhooks of which one will fail
    capture_table("CREATE TABLE items (id int PRIMARY KEY, pad text)", "items")
    failing = threading.Event()
    with Receiver(respond=lambda r: 503 if failing.is_set() else 200) as flaky:
        config = tmp_path / "skor.toml"
        config.write_text(
            'partition_size = 100\nbatch_size = 100\nretention_size = "600kB"\n'
            "retention_interval = 0.3\n[retry]\ninitial_backoff = 0.05\n"
            "max_backoff = 0.2\n"
        )
        port = free_port()
        process = bridge(
            "--dsn",
            dsn,
            "--webhook",
            f"ok={receiver.url}",
            "--webhook",
            f"flaky={flaky.url}",
            "--config",
            str(config),
            "--metrics-port",
            str(port),
        )
        process.wait_active()
        limit = 600 * 1024

        def write(first, count, pause=0.05):
            for start in range(first, first + count, 20):
                execute(
                    dsn,
                    f"INSERT INTO items SELECT g, repeat('x', 200) FROM"
                    f" generate_series({start}, {start + 19}) g",
                )
                time.sleep(pause)

        # When both keep up while 3,000 events are written, Then the log stays under the
        # limit (sampled), far below what was written
        sizes = []
        sampling = threading.Event()

        def sample():
            while not sampling.is_set():
                sizes.append(log_bytes(dsn))
                sampling.wait(0.1)

        sampler = threading.Thread(target=sample)
        sampler.start()
        write(1, 3000)
        wait_until(
            lambda: receiver.count >= 3000 and flaky.count >= 3000,
            timeout=60,
            message="3000 events at both",
        )
        time.sleep(1)
        sampling.set()
        sampler.join()
        assert max(sizes) <= limit, sizes
        assert "retention: dropped" in process.log

        # When one webhook fails while 3,000 more are written
        failing.set()
        held_from = scalar(dsn, "SELECT position FROM skor.outputs WHERE name = 'flaky'")
        write(3001, 3000, pause=0.01)
        wait_until(lambda: receiver.count >= 6000, timeout=60, message="6000 at the healthy one")
        # Then nothing it still needs is dropped: the log grows past the limit for it
        wait_until(
            lambda: (
                scalar(dsn, "SELECT count(*) FROM skor.outputs WHERE holding_log_since IS NOT NULL")
                == 1
            ),
            timeout=30,
            message="the failing output marked as holding the log",
        )
        assert scalar(dsn, "SELECT min(pos) FROM skor.log") <= held_from + 1
        assert log_bytes(dsn) > limit
        # And status, /metrics and /readyz say which output holds it
        status = process_status(dsn)
        assert "warning: output flaky holds the event log over --retention-size" in status
        wait_until(
            lambda: scrape(port).get(("skor_output_holding_log", "flaky")) == 1,
            timeout=30,
            message="metric",
        )
        assert scrape(port)[("skor_output_holding_log", "ok")] == 0
        code, body = get(f"http://127.0.0.1:{port}/readyz")
        assert code == 503 and json.loads(body)["outputs"]["flaky"]["holding_log"]

        # When it recovers, Then it gets every event and the log shrinks back under the limit
        failing.clear()
        wait_until(
            lambda: len({json.loads(r.body)["data"]["id"] for r in flaky.delivered()}) == 6000,
            timeout=90,
            message="all 6000 at the recovered output",
        )
        wait_until(lambda: log_bytes(dsn) <= limit, timeout=30, message="log back under")
        wait_until(
            lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200,
            timeout=30,
            message="ready again",
        )


def process_status(dsn):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "skor_bridge", "status", "--dsn", dsn],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_retention_size_parses_units_and_refuses_garbage():
    from skor_bridge.options import size

    assert size("1GB") == 1024**3
    assert size("500 MB") == 500 * 1024**2
    assert size("64kB") == 64 * 1024
    assert size("1000") == 1000
    for bad in ("lots", "0", "-5MB", ""):
        with pytest.raises(ValueError, match="expected a size such as"):
            size(bad)
