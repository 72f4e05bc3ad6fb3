"""Stopping: one signal drains, a second exits at once."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from skor_bridge.receiver import Receiver
from tests.helpers import execute

TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text)"


@pytest.mark.slow
def test_a_second_signal_exits_at_once_instead_of_waiting_for_the_drain(
    dsn, capture_table, bridge
):
    # Given a bridge whose receiver holds every request open, so a drain would wait
    release = threading.Event()
    arrived = threading.Event()

    def hang(request):
        arrived.set()
        release.wait(60)
        return 200

    with Receiver(respond=hang) as receiver:
        capture_table(TABLE, "items")
        process = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
        execute(dsn, "INSERT INTO items VALUES (1, 'a')")
        assert arrived.wait(30), "the request never reached the receiver"
        # When it gets SIGTERM (it starts draining) and then SIGINT
        process.signal(signal.SIGTERM)
        process.wait_for_log("stopping")
        started = time.monotonic()
        process.signal(signal.SIGINT)
        # Then it exits at once, with a failure code, saying why
        assert process.proc.wait(10) == 1
        assert time.monotonic() - started < 5
        assert "exiting at once" in process.log
        release.set()
