"""Stopping: a signal drains; a second Ctrl-C exits at once; a repeated SIGTERM does not."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from skor_bridge.tools.receiver import Receiver
from tests.helpers import execute

TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text)"


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once_and_a_repeated_sigterm_keeps_draining(
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
        assert arrived.wait(30), process.log
        # When it gets SIGTERM (it starts draining), SIGTERM again (as supervisors do)
        process.signal(signal.SIGTERM)
        process.wait_for_log("stopping")
        process.signal(signal.SIGTERM)
        process.wait_for_log("still stopping")
        assert process.proc.poll() is None
        # and then Ctrl-C
        started = time.monotonic()
        process.signal(signal.SIGINT)
        # Then it exits at once, with a failure code, saying why
        assert process.proc.wait(10) == 1
        assert time.monotonic() - started < 5
        assert "exiting at once" in process.log
        release.set()
