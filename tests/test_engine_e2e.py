"""The delivery engine end to end (issue 10): real bridge processes, real HTTP receivers that
are slow, hang one row, fail at random or go down, counting events end to end."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict

import pytest

from skor_bridge.tools.receiver import Receiver
from tests.helpers import execute, short_retry_config, wait_until

pytestmark = pytest.mark.slow

TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text, qty int NOT NULL DEFAULT 0)"


def row_of(request) -> int:
    return json.loads(request.body)["data"]["id"]


def test_one_hanging_row_does_not_hold_up_a_thousand_others(dsn, capture_table, bridge):
    # Given a receiver that holds row 1's request for 20 s and answers every other at once
    release = threading.Event()

    def respond(request) -> int:
        if row_of(request) == 1:
            release.wait(20)
        return 200

    capture_table(TABLE, "items")
    with Receiver(respond=respond) as receiver:
        process = bridge("--dsn", dsn, "--webhook", receiver.url, "--webhook-timeout", "30")
        process.wait_active()
        # When row 1 changes, and then 1,000 other rows
        execute(dsn, "INSERT INTO items (id, name) VALUES (1, 'hangs')")
        time.sleep(0.3)
        written = time.monotonic()
        execute(dsn, "INSERT INTO items (id, name) SELECT g, 'x' FROM generate_series(2, 1001) g")
        # Then all 1,000 arrive while row 1's request is still hanging (a batch-synchronous
        # engine would hold each batch for it)
        assert receiver.wait_for(1000, timeout=15), (receiver.count, process.log[-3000:])
        assert time.monotonic() - written < 15 and not release.is_set()
        assert 1 not in {row_of(r) for r in receiver.delivered()}
        release.set()
        assert receiver.wait_for(1001, timeout=30)


def test_per_row_order_holds_under_random_delays_and_failures(dsn, capture_table, bridge, tmp_path):
    # Given a receiver answering after 0-30 ms, and 503 for one request in ten
    rng = random.Random(11)
    lock = threading.Lock()

    def respond(request) -> int:
        with lock:
            delay, fail = rng.uniform(0, 0.03), rng.random() < 0.1
        time.sleep(delay)
        return 503 if fail else 200

    capture_table(TABLE, "items")
    with Receiver(respond=respond) as receiver:
        bridge(
            "--dsn",
            dsn,
            "--webhook",
            receiver.url,
            "--config",
            short_retry_config(tmp_path, max_backoff=0.2),
        ).wait_active()
        # When 100 rows are inserted and each is updated 9 times, in separate transactions
        execute(
            dsn,
            "INSERT INTO items (id, name) SELECT g, 'x' FROM generate_series(1, 100) g",
            *["UPDATE items SET qty = qty + 1" for _ in range(9)],
        )
        assert receiver.wait_for(1000, timeout=90)
        # Then each row's versions arrived in commit order
        versions = defaultdict(list)
        for request in receiver.delivered():
            event = json.loads(request.body)
            versions[event["data"]["id"]].append(event["data"]["qty"])
        assert len(versions) == 100
        for row, seen in versions.items():
            assert seen == sorted(seen) and set(seen) == set(range(10)), (row, seen)


def test_after_an_outage_every_waiting_row_is_delivered_within_seconds(dsn, capture_table, bridge):
    # Given a running bridge and a receiver that goes down
    capture_table(TABLE, "items")
    receiver = Receiver().start()
    port = receiver.port
    process = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    execute(dsn, "INSERT INTO items (id, name) VALUES (0, 'before')")
    assert receiver.wait_for(1)
    receiver.stop()
    # When 500 rows change while it is down (for 8 s)
    for start in range(1, 501, 50):
        execute(
            dsn,
            f"INSERT INTO items (id, name) SELECT g, 'x'"
            f" FROM generate_series({start}, {start + 49}) g",
        )
        time.sleep(0.5)
    process.wait_for_log("is failing")
    time.sleep(3)
    # And it comes back on the same port
    with Receiver(port=port) as back:
        up = time.monotonic()
        # Then everything that waited arrives within seconds (the probe, then all at once),
        # not after each row's exponential backoff
        assert back.wait_for(500, timeout=30)
        assert time.monotonic() - up < 10
        wait_until(lambda: "recovered after" in process.log, timeout=10)
    # And the outage is one line each way, not a line per event
    assert process.log.count("is failing") == 1
    assert process.log.count("recovered after") == 1
    assert process.log.count("attempt") <= 2


def test_a_crash_with_hundreds_of_requests_in_flight_loses_nothing(dsn, capture_table, bridge):
    # Given a receiver that takes 300 ms per request, and 3,000 rows written
    capture_table(TABLE, "items")
    with Receiver(respond=lambda r: (time.sleep(0.3), 200)[1]) as slow:
        # (named, so that the restarted bridge's new URL is the same output)
        process = bridge("--dsn", dsn, "--webhook", f"hook={slow.url}").wait_active()
        execute(dsn, "INSERT INTO items (id, name) SELECT g, 'x' FROM generate_series(1, 3000) g")
        # When the bridge is killed (-9) while hundreds of requests are in flight
        wait_until(lambda: slow.count >= 300, timeout=30)
        process.kill()
        before = {row_of(r) for r in slow.delivered()}
    assert len(before) < 3000
    # Then a restarted bridge delivers every row that was not confirmed: nothing is lost
    with Receiver() as fast:
        bridge("--dsn", dsn, "--webhook", f"hook={fast.url}").wait_active()
        wait_until(
            lambda: before | {row_of(r) for r in fast.delivered()} == set(range(1, 3001)),
            timeout=60,
            message="every row delivered",
        )
