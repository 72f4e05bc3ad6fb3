"""Active/standby: two `skor-bridge run` processes on one database; the standby takes over
when the active one is killed, stopped, or stuck, and nothing committed is lost."""

from __future__ import annotations

import json
import signal
import threading
import time

import psycopg2
import pytest

from tests.fixtures_bridge import active_and_standby
from tests.helpers import execute, wait_until

TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text)"


def delivered_ids(receiver) -> set[int]:
    return {json.loads(r.body)["data"]["id"] for r in receiver.delivered()}


class PositionWatch:
    """Samples the output's saved position every 20 ms, to check it never moves back."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.seen: list[int] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> PositionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not self._done.is_set():
                cur.execute("SELECT position FROM skor.outputs WHERE name = 'webhook'")
                row = cur.fetchone()
                if row is not None:
                    self.seen.append(row[0])
                self._done.wait(0.02)
        conn.close()


@pytest.mark.slow
def test_the_standby_delivers_every_committed_row_within_10s_of_a_sigkill(
    dsn, capture_table, bridge, receiver
):
    # Given an active bridge and a standby, and a writer committing 3000 rows over ~3 s
    capture_table(TABLE, "items")
    active, standby = active_and_standby(
        bridge, "--dsn", dsn, "--webhook", f"webhook={receiver.url}"
    )
    committed = []

    def write() -> None:
        for start in range(1, 3001, 50):
            execute(
                dsn,
                f"INSERT INTO items SELECT g, 'k' FROM generate_series({start}, {start + 49}) g",
            )
            committed.extend(range(start, start + 50))
            time.sleep(0.05)

    writer = threading.Thread(target=write)
    writer.start()
    # When the active one is killed with SIGKILL mid-stream
    wait_until(lambda: receiver.count >= 500, message="500 deliveries")
    active.kill()
    killed = time.monotonic()
    writer.join()
    # Then the standby takes over and every committed row arrives within 10 s of the kill
    wait_until(
        lambda: delivered_ids(receiver) >= set(committed),
        timeout=max(0.0, killed + 10 - time.monotonic()),
        message="every committed row after the kill",
    )
    assert delivered_ids(receiver) == set(range(1, 3001))
    assert "is now active" in standby.log


@pytest.mark.slow
def test_sigterm_on_the_active_hands_over_to_the_standby_at_once(
    dsn, capture_table, bridge, receiver
):
    # Given an active bridge that delivered 100 rows, and a standby
    capture_table(TABLE, "items")
    active, standby = active_and_standby(
        bridge, "--dsn", dsn, "--webhook", f"webhook={receiver.url}"
    )
    execute(dsn, "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 100) g")
    assert receiver.wait_for(100)
    # When the active one gets SIGTERM
    started = time.monotonic()
    active.signal(signal.SIGTERM)
    # Then the standby is active in under 2 s, and the old one exits cleanly
    standby.wait_active(timeout=2)
    assert time.monotonic() - started < 2
    # (waited for, not signalled again: a second SIGTERM means "exit at once")
    assert active.proc.wait(30) == 0
    # And rows written afterwards are delivered by the new active instance, once each
    execute(dsn, "INSERT INTO items SELECT g, 'b' FROM generate_series(101, 200) g")
    wait_until(
        lambda: delivered_ids(receiver) == set(range(1, 201)), timeout=10, message="rows 101-200"
    )
    assert receiver.wait_for(200) and len(receiver.delivered()) == 200


@pytest.mark.slow
def test_a_stuck_active_is_cut_off_after_the_failover_timeout_and_progress_never_goes_back(
    dsn, capture_table, bridge, receiver
):
    # Given two bridges with a 2 s failover timeout; the first is active
    capture_table(TABLE, "items")
    args = ("--dsn", dsn, "--webhook", f"webhook={receiver.url}", "--failover-timeout", "2")
    stuck, standby = active_and_standby(bridge, *args)
    with PositionWatch(dsn) as positions:
        execute(dsn, "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 100) g")
        assert receiver.wait_for(100)

        # When the active one freezes (SIGSTOP) with its connections still open
        stuck.signal(signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            # Then after the timeout the standby terminates its session and takes over
            standby.wait_active(timeout=15)
            took = time.monotonic() - frozen
            assert 2 <= took < 8, took
            assert "missed heartbeats" in standby.log
            # And delivers what is written meanwhile
            execute(dsn, "INSERT INTO items SELECT g, 'b' FROM generate_series(101, 200) g")
            wait_until(
                lambda: delivered_ids(receiver) >= set(range(1, 201)),
                timeout=10,
                message="rows 101-200 via the new active instance",
            )
        finally:
            # When the frozen one resumes
            stuck.signal(signal.SIGCONT)

        # Then it notices it lost leadership and stands by instead of delivering
        stuck.wait_for_log("leadership lost", timeout=10)
        execute(dsn, "INSERT INTO items SELECT g, 'c' FROM generate_series(201, 300) g")
        wait_until(
            lambda: delivered_ids(receiver) == set(range(1, 301)),
            timeout=10,
            message="rows 201-300",
        )
        time.sleep(0.5)
    assert stuck.log.count("is now active") == 1
    # And the saved position only ever moved forward, ending at the last event
    assert positions.seen == sorted(positions.seen)
    assert positions.seen[-1] == 300


@pytest.mark.slow
def test_a_frozen_active_that_resumes_never_sends_an_old_version_after_the_new_one(
    dsn, capture_table, bridge, tmp_path
):
    from skor_bridge.tools.receiver import Receiver
    from tests.helpers import short_retry_config

    # Given a receiver that refuses version 1 of row 1 for now, and two bridges (2 s
    # failover timeout) of which the active one keeps retrying version 1
    capture_table("CREATE TABLE items (id int PRIMARY KEY, v int)", "items")
    accept_v1 = threading.Event()

    def respond(request):
        data = json.loads(request.body)["data"]
        return 200 if data["v"] != 1 or accept_v1.is_set() else 503

    with Receiver(respond=respond) as receiver:
        args = (
            "--dsn",
            dsn,
            "--webhook",
            f"webhook={receiver.url}",
            "--failover-timeout",
            "2",
            "--config",
            short_retry_config(tmp_path, max_backoff=0.3),
        )
        frozen, standby = active_and_standby(bridge, *args)
        execute(dsn, "INSERT INTO items VALUES (1, 1)")
        wait_until(lambda: receiver.count >= 3, message="version 1 tried")

        # When the active instance freezes (SIGSTOP) with version 1 queued for a retry,
        # the standby takes over and delivers versions 1 and 2
        frozen.signal(signal.SIGSTOP)
        try:
            accept_v1.set()
            execute(dsn, "UPDATE items SET v = 2 WHERE id = 1")
            standby.wait_active(timeout=20)
            wait_until(
                lambda: [json.loads(r.body)["data"]["v"] for r in receiver.delivered()][-1:] == [2],
                timeout=20,
                message="version 2 delivered",
            )
        finally:
            # And the frozen one resumes, its retry long due
            frozen.signal(signal.SIGCONT)
        frozen.wait_for_log("leadership lost", timeout=20)
        time.sleep(2)

    # Then the receiver never got version 1 after version 2
    versions = [json.loads(r.body)["data"]["v"] for r in receiver.delivered()]
    assert versions[versions.index(2) :] == [2], versions
    # And the new leader cut off every session of the old instance, not only its lock's
    assert "cut off" in standby.log
