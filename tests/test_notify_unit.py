"""Notify mode's payload handling, without a database: exact row text, keys, a byte bound."""

from __future__ import annotations

import threading

import pytest

from skor_bridge.capture import notify
from skor_bridge.capture.notify_payload import row_key, top_level_texts
from skor_bridge.event import ChangeEvent

PAYLOAD = (
    '{"data" : {"id":7,"price":19.990000000000000000001,"big":12345678901234567890,'
    '"tags":["a","b"]}, "table" : "items", "schema" : "public", "op" : "UPDATE"}'
)


def test_the_row_text_is_kept_byte_for_byte():
    texts = top_level_texts(PAYLOAD)
    assert texts["data"] == (
        '{"id":7,"price":19.990000000000000000001,"big":12345678901234567890,"tags":["a","b"]}'
    )
    assert texts["op"] == '"UPDATE"'


@pytest.mark.parametrize("bad", ["[1]", "{", '{"a" 1}', '{"a":1,}', "", "null"])
def test_a_payload_that_is_not_a_json_object_is_refused(bad):
    with pytest.raises(ValueError):
        top_level_texts(bad)


def test_the_key_comes_from_the_primary_key_columns_exactly():
    data = top_level_texts(PAYLOAD)["data"]
    assert row_key(data, ("id",)) == '{"id":7}'
    assert row_key(data, ("price", "id")) == '{"price":"19.990000000000000000001","id":7}'
    assert row_key(data, ()) is None
    assert row_key(data, ("missing",)) is None


def test_the_queue_is_bounded_in_bytes_dropping_the_oldest(monkeypatch):
    monkeypatch.setattr(notify, "MAX_QUEUED_BYTES", 10_000)
    feed = notify.MemoryFeed.__new__(notify.MemoryFeed)
    feed.output, feed._queue, feed._queued_bytes, feed.dropped = "hook", notify.deque(), 0, 0
    feed._arrived = threading.Condition()
    for n in range(100):
        feed.push(
            ChangeEvent(id=str(n), position=n, schema="s", table="t", op="INSERT", data="x" * 1000)
        )
    assert feed._queued_bytes <= 10_000
    assert [e.position for e in feed._queue] == list(range(90, 100))
    assert feed.dropped == 90


@pytest.mark.slow
def test_a_notify_mode_dead_letter_retried_keeps_its_numerics_byte_exact(
    dsn, capture_table, bridge
):
    import json

    from skor_bridge.tools.receiver import Receiver
    from tests.helpers import execute, scalar, wait_until
    from tests.test_ops import cli

    # Given notify-mode capture of a table with an exact numeric, and a receiver that
    # refuses the first delivery (a dead letter at once)
    capture_table("CREATE TABLE items (id int PRIMARY KEY, price numeric)", "items", mode="notify")
    refuse = threading.Event()
    refuse.set()
    with Receiver(respond=lambda r: 400 if refuse.is_set() else 200) as receiver:
        bridge("--dsn", dsn, "--webhook", f"hook={receiver.url}", "--mode", "notify").wait_for_log(
            "listening on channel"
        )
        execute(dsn, "INSERT INTO items VALUES (1, 19.990000000000000000001)")
        wait_until(
            lambda: scalar(dsn, "SELECT count(*) FROM skor.dead_letters") == 1,
            message="a dead letter",
        )
        # Then the dead letter holds the row as PostgreSQL sent it, keyed by primary key
        assert (
            scalar(dsn, "SELECT data FROM skor.dead_letters")
            == '{"id":1,"price":19.990000000000000000001}'
        )
        assert scalar(dsn, "SELECT row_key FROM skor.dead_letters") == '{"id":1}'
        # When it is retried, Then the receiver gets the numeric byte for byte
        refuse.clear()
        assert cli("events", "retry", "--dsn", dsn, "--all-dead").exit_code == 0
        assert receiver.wait_for(1, timeout=30)
        body = receiver.delivered()[-1].body.decode()
        assert '"price":19.990000000000000000001' in body
        assert json.loads(body)["data"]["id"] == 1
