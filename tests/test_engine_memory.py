"""Memory stays bounded by configuration whatever the backlog (issue 9, item 12): a row that
keeps failing while it receives heavy updates, a restart with many parked events, replays.
Peak memory is the bridge process's VmHWM, checked with a generous margin."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from skor_bridge.tools.receiver import Receiver
from tests.helpers import execute, scalar, short_retry_config, wait_until

pytestmark = pytest.mark.slow

TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text, qty int NOT NULL DEFAULT 0)"

#: 5,000 updates of 9 kB to one row: 45 MB of events for one lane.
HEAVY = (
    "DO $$ BEGIN FOR i IN 1..5000 LOOP"
    " UPDATE items SET name = repeat('x', 9000), qty = i WHERE id = 1;"
    " END LOOP; END $$"
)
#: Peak memory growth allowed: processing heavy rows costs some (batches of them are read,
#: moved and parked: about 30 MiB measured, as for a row that does not fail), but holding
#: the lane would add its 45 MB on top.
MARGIN = 45


def peak_mib(process) -> float:
    status = Path(f"/proc/{process.proc.pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


class StuckRow:
    """503 for row 1 until `clear()`, 200 for every other row."""

    def __init__(self) -> None:
        self.stuck = threading.Event()
        self.stuck.set()

    def respond(self, request) -> int:
        row = json.loads(request.body)["data"]["id"]
        return 503 if self.stuck.is_set() and row == 1 else 200


def row1_versions(receiver) -> list[int]:
    return [
        json.loads(r.body)["data"]["qty"]
        for r in receiver.delivered()
        if json.loads(r.body)["data"]["id"] == 1
    ]


def test_a_failing_row_with_heavy_updates_is_paged_from_the_database_not_held_in_memory(
    dsn, capture_table, bridge, tmp_path
):
    # Given a receiver that refuses row 1, and a bridge whose other rows flow
    stuck = StuckRow()
    capture_table(TABLE, "items")
    with Receiver(respond=stuck.respond) as receiver:
        args = (
            "--dsn",
            dsn,
            "--webhook",
            f"hook={receiver.url}",
            "--max-in-flight",
            "1000",
            "--config",
            short_retry_config(tmp_path, max_backoff=0.5),
        )
        process = bridge(*args).wait_active()
        execute(dsn, "INSERT INTO items (id, name) SELECT g, 'a' FROM generate_series(1, 200) g")
        assert receiver.wait_for(199)
        baseline = peak_mib(process)
        # When row 1 gets 5,000 updates of 9 kB while it keeps failing
        execute(dsn, HEAVY)
        wait_until(
            lambda: scalar(dsn, "SELECT count(*) FROM skor.redeliveries") >= 5000,
            timeout=120,
            message="row 1's events parked",
        )
        # Then other rows keep flowing meanwhile
        execute(dsn, "INSERT INTO items (id, name) SELECT g, 'b' FROM generate_series(201, 300) g")
        assert receiver.wait_for(299, timeout=30)
        # And the bridge did not keep the lane's 45 MB in memory
        grown = peak_mib(process) - baseline
        assert grown < MARGIN, f"peak memory grew by {grown:.0f} MiB"
        # When the bridge restarts with those parked events, start-up does not load them all
        assert process.stop() == 0
        restarted = bridge(*args).wait_active()
        # And when row 1 recovers, all its 5,001 changes arrive, in order
        stuck.stuck.clear()
        wait_until(
            lambda: len(row1_versions(receiver)) >= 5001,
            timeout=180,
            message="row 1's changes delivered",
        )
        versions = row1_versions(receiver)
        assert versions == sorted(versions) and set(versions) == set(range(5001))
        assert peak_mib(restarted) < baseline + MARGIN, peak_mib(restarted)
        wait_until(
            lambda: scalar(dsn, "SELECT count(*) FROM skor.redeliveries") == 0,
            timeout=30,
            message="parked rows finished",
        )
