"""Quiet, useful logs: a repeated warning is logged once, then once a minute with a count;
librdkafka's and pika's lines go through the same summary."""

from __future__ import annotations

import logging
import time

import pytest

from skor_bridge.logs import SummarisingFilter
from tests.helpers import execute, wait_delivered

TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text)"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(
    msg: str, *args: object, level: int = logging.WARNING, name: str = "skor_bridge.x"
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_repeated_warning_is_logged_once_then_once_a_minute_with_a_count():
    clock = Clock()
    summary = SummarisingFilter(window=60.0, clock=clock)
    passed = [r for i in range(1000) if summary.filter(r := record("unroutable key %r", i))]
    assert [r.getMessage() for r in passed] == ["unroutable key 0"]
    clock.now += 61
    later = record("unroutable key %r", 1000)
    assert summary.filter(later)
    assert later.getMessage() == "unroutable key 1000 (and 999 more like it in the last 61s)"
    # A different message, or a lower level, is not held back
    assert summary.filter(record("other %s", 1))
    assert all(summary.filter(record("info %s", i, level=logging.INFO)) for i in range(5))
    # Nothing held back: the next one after a quiet minute is plain
    clock.now += 120
    quiet = record("unroutable key %r", 1)
    assert summary.filter(quiet) and quiet.getMessage() == "unroutable key 1"


def test_preformatted_lines_that_differ_only_in_numbers_are_one_repeat():
    summary = SummarisingFilter(clock=Clock())
    lines = [
        f"[thrd:127.0.0.1:{9000 + i}/bootstrap]: Connect to ipv4#127.0.0.1:{9000 + i} "
        f"failed: Connection refused (after {i}ms in state CONNECT)"
        for i in range(50)
    ]
    passed = [
        line
        for line in lines
        if summary.filter(record(line, name="skor_bridge.sinks.kafka.librdkafka"))
    ]
    assert len(passed) == 1


@pytest.mark.slow
def test_a_flood_of_unroutable_messages_is_a_line_not_thousands(
    dsn, capture_table, bridge, amqp_url, make_amqp_queue
):
    # Given an exchange no queue is bound to (the first message declares it)
    capture_table(TABLE, "items")
    queue = make_amqp_queue()
    queue.unbind()
    process = bridge(
        "--dsn", dsn, "--amqp", f"rabbit={amqp_url}", "--amqp-exchange", queue.exchange
    ).wait_active()
    # When 3000 messages are unroutable
    execute(dsn, "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 3000) g")
    wait_delivered(dsn, "rabbit", 3000)
    assert process.stop() == 0
    # Then the log has one unroutable line, not 3000
    assert 1 <= process.log.count("unroutable") <= 2, process.log[-2000:]


@pytest.mark.slow
def test_an_unreachable_kafka_broker_logs_a_few_lines_not_hundreds(dsn, capture_table, bridge):
    capture_table(TABLE, "items")
    process = bridge("--dsn", dsn, "--kafka", "127.0.0.1:9")
    process.wait_active()
    execute(dsn, "INSERT INTO items VALUES (1, 'a')")
    time.sleep(20)
    process.stop()
    lines = [line for line in process.log.splitlines() if " WARNING " in line or " ERROR " in line]
    assert len(lines) <= 12, "\n".join(lines)
