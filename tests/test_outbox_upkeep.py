"""A long transaction holding an old snapshot: the outbox's dead rows are reported (status,
/metrics, with a warning) and the outbox is compacted anyway, while delivery goes on."""

from __future__ import annotations

import json

import psycopg2
import pytest

from skor_bridge.capture import outbox_upkeep
from tests.helpers import execute, scalar, wait_until
from tests.test_metrics import free_port, scrape
from tests.test_ops import cli


def delivered(receiver) -> set[int]:
    return {json.loads(r.body)["data"]["id"] for r in receiver.delivered()}


@pytest.mark.slow
def test_dead_outbox_rows_behind_an_old_snapshot_are_reported_and_compacted_away(
    dsn, capture_table, bridge, receiver, tmp_path, monkeypatch
):
    capture_table("CREATE TABLE items (id int PRIMARY KEY)", "items")
    config = tmp_path / "skor.toml"
    config.write_text("retention_interval = 0.3\n")
    port = free_port()
    process = bridge(
        "--dsn",
        dsn,
        "--webhook",
        f"hook={receiver.url}",
        "--config",
        str(config),
        "--metrics-port",
        str(port),
    ).wait_active()
    # Given a session that holds a snapshot (a long report, say)
    report = psycopg2.connect(dsn)
    report.set_session(isolation_level="REPEATABLE READ")
    try:
        with report.cursor() as cur:
            cur.execute("SELECT count(*) FROM items")
        # When 5,000 changes pass through the outbox
        execute(dsn, "INSERT INTO items SELECT g FROM generate_series(1, 5000) g")
        wait_until(lambda: len(delivered(receiver)) == 5000, timeout=60, message="5000 rows")
        # Then their dead rows stay (VACUUM cannot remove them), and status and /metrics
        # report them and the snapshot's age, with a warning
        wait_until(
            lambda: scalar(dsn, outbox_upkeep.DEAD_TUPLES) >= 5000,
            timeout=30,
            message="dead rows counted",
        )
        monkeypatch.setattr(outbox_upkeep, "WARN_DEAD_TUPLES", 1000)
        result = cli("status", "--dsn", dsn)
        assert result.exit_code == 0, result.output
        assert "dead; oldest snapshot held by another session" in result.stdout
        pid = report.get_backend_pid()
        assert f"warning: a session (pid {pid}) has held a snapshot" in result.stdout
        wait_until(
            lambda: scrape(port).get(("skor_outbox_dead_tuples", ""), 0) >= 5000,
            timeout=30,
            message="dead rows in /metrics",
        )
        assert scrape(port)[("skor_oldest_snapshot_seconds", "")] > 0

        # When 10,000 more pass (past the compaction threshold), the snapshot still held
        execute(dsn, "INSERT INTO items SELECT g FROM generate_series(5001, 15000) g")
        wait_until(lambda: len(delivered(receiver)) == 15000, timeout=90, message="15000 rows")
        # Then the outbox is compacted: its dead rows are gone although the snapshot stays
        wait_until(
            lambda: scalar(dsn, outbox_upkeep.DEAD_TUPLES) < 1000,
            timeout=60,
            message="outbox compacted",
        )
        assert "compacted the outbox" in process.log
        with report.cursor() as cur:
            cur.execute("SELECT 1")  # the report's transaction is still open
        # And capture goes on after the compaction, ids unique
        execute(dsn, "INSERT INTO items SELECT g FROM generate_series(15001, 15010) g")
        wait_until(lambda: len(delivered(receiver)) == 15010, timeout=30, message="after")
        ids = [r.headers["webhook-id"] for r in receiver.delivered()]
        assert len(ids) == len(set(ids))
    finally:
        report.close()
