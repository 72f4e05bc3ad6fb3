"""Where a new output starts: earliest on a database no output has run on, latest (with a
log line saying what it skipped and how to replay it) when it joins a database with
outputs, or what `--start-from` says."""

from __future__ import annotations

import time

import pytest

from skor_bridge.tools.receiver import Receiver
from tests.helpers import execute, scalar

TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text)"


def ids(receiver) -> set[int]:
    import json

    return {json.loads(r.body)["data"]["id"] for r in receiver.delivered()}


@pytest.mark.slow
def test_first_outputs_start_at_the_oldest_event_and_later_ones_at_the_newest(
    dsn, capture_table, bridge
):
    capture_table(TABLE, "items")
    # Given rows captured before the bridge ever ran
    execute(dsn, "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 5) g")
    with Receiver() as first, Receiver() as added:
        # When the first output runs, it gets them
        process = bridge("--dsn", dsn, "--webhook", f"first={first.url}").wait_active()
        assert first.wait_for(5)
        assert "output first is new; starting after position 0 (earliest" in process.log
        assert process.stop() == 0
        # (rows written while no bridge runs are not in the log yet: they are new to all)
        execute(dsn, "INSERT INTO items SELECT g, 'b' FROM generate_series(6, 8) g")
        # When an output is added to this database with history
        process = bridge(
            "--dsn", dsn, "--webhook", f"first={first.url}", "--webhook", f"added={added.url}"
        ).wait_active()
        assert first.wait_for(8)
        execute(dsn, "INSERT INTO items VALUES (9, 'c')")
        assert first.wait_for(9) and added.wait_for(1)
        time.sleep(1)
        # Then it starts at the newest event and says what it skipped and how to replay it
        assert ids(added) == {6, 7, 8, 9}
        assert (
            "output added is new; starting after position 5 (latest: the database "
            "already has outputs); 5 older event(s) still in the log are not sent: to "
            "deliver them, skor-bridge events replay --output added --since "
        ) in process.log


@pytest.mark.slow
@pytest.mark.parametrize(
    ("start_from", "expected"),
    [
        ("earliest", set(range(1, 10))),
        ("latest", {9}),
        ("4", set(range(4, 10))),
        ("1h", set(range(1, 10))),
        ("2999-01-01T00:00:00Z", {9}),
    ],
)
def test_start_from_chooses_where_a_new_output_starts(
    dsn, capture_table, bridge, start_from, expected
):
    capture_table(TABLE, "items")
    with Receiver() as first, Receiver() as chosen:
        process = bridge("--dsn", dsn, "--webhook", f"first={first.url}").wait_active()
        execute(dsn, "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 8) g")
        assert first.wait_for(8)
        assert process.stop() == 0
        toml = process.log_path.parent / "start.toml"
        toml.write_text(
            f'[[outputs]]\ntype = "webhook"\nname = "chosen"\nurl = "{chosen.url}"\n'
            f'start_from = "{start_from}"\n'
        )
        bridge("--dsn", dsn, "--webhook", f"first={first.url}", "--config", str(toml)).wait_active()
        execute(dsn, "INSERT INTO items VALUES (9, 'b')")
        assert chosen.wait_for(len(expected))
        time.sleep(1)
        assert ids(chosen) == expected
        assert scalar(dsn, "SELECT count(*) FROM skor.outputs") == 2
