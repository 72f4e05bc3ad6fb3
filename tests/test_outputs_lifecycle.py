"""Output lifecycle: `outputs list`, `outputs forget`, and `status` marking outputs that
no running instance serves while they hold back the log's retention."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from skor_bridge.cli import app
from skor_bridge.tools.receiver import Receiver
from tests.helpers import execute, scalar, wait_until

TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text)"


def cli(*args: str, stdin: str | None = None):
    return CliRunner().invoke(app, list(args), input=stdin)


@pytest.mark.slow
def test_a_removed_output_is_listed_as_not_served_and_forgetting_it_unblocks_retention(
    dsn, capture_table, bridge, tmp_path
):
    capture_table(TABLE, "items")
    config = tmp_path / "skor.toml"
    config.write_text('partition_size = 10\nretention = "1s"\nretention_interval = 0.5\n')
    with Receiver() as keep, Receiver() as gone:
        origin = f"http://127.0.0.1:{gone.port}"
        gone_url = f"{origin}/hooks/T000/B000/SLACKTOKEN?token=SECRET"
        # Given two outputs that delivered rows 1-5, then a bridge with only one of them
        first = bridge(
            "--dsn",
            dsn,
            "--config",
            str(config),
            "--webhook",
            f"keep={keep.url}",
            "--webhook",
            f"gone={gone_url}",
        ).wait_active()
        execute(dsn, "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 5) g")
        assert keep.wait_for(5) and gone.wait_for(5)
        assert first.stop() == 0
        bridge("--dsn", dsn, "--config", str(config), "--webhook", f"keep={keep.url}").wait_active()
        execute(dsn, "INSERT INTO items SELECT g, 'b' FROM generate_series(6, 50) g")
        assert keep.wait_for(50)
        time.sleep(3)
        # Then the removed output holds back retention: the log still starts at 1
        assert scalar(dsn, "SELECT min(pos) FROM skor.log") == 1
        # And `outputs list` says nothing serves it, with its destination redacted
        listed = cli("outputs", "list", "--dsn", dsn, "--json")
        assert listed.exit_code == 0, listed.output
        rows = {row["name"]: row for row in json.loads(listed.stdout)["outputs"]}
        assert rows["gone"]["served"] is False and rows["gone"]["holds_retention"] is True
        assert rows["gone"]["position"] == 5 and rows["gone"]["pending"] == 45
        assert rows["gone"]["destination"] == f"{origin}/..."
        assert rows["keep"]["served"] is True and rows["keep"]["pending"] == 0
        assert "SECRET" not in listed.stdout and "SLACKTOKEN" not in listed.stdout
        text = cli("outputs", "list", "--dsn", dsn).stdout
        assert text.splitlines()[0].split() == [
            "OUTPUT",
            "TYPE",
            "DESTINATION",
            "POSITION",
            "PENDING",
            "SERVED",
            "LAST",
            "SEEN",
            "BY",
        ]
        # And status marks it and warns
        status = cli("status", "--dsn", dsn).stdout
        assert "gone (not served)" in status and "keep (not served)" not in status
        assert (
            "warning: output gone is not served by any running instance and holds back "
            "the log's retention at position 5; if it is gone for good: skor-bridge "
            "outputs forget gone"
        ) in status
        # When forgetting is not confirmed, nothing is forgotten
        refused = cli("outputs", "forget", "gone", "--dsn", dsn, stdin="n\n")
        assert refused.exit_code == 1
        assert scalar(dsn, "SELECT count(*) FROM skor.outputs WHERE name = 'gone'") == 1
        # When it is forgotten
        done = cli("outputs", "forget", "gone", "--dsn", dsn, "--yes")
        assert done.exit_code == 0, done.output
        assert done.stdout.startswith("forgot output gone")
        # Then retention drops the partitions it held back
        wait_until(
            lambda: (scalar(dsn, "SELECT min(pos) FROM skor.log") or 0) > 10,
            timeout=30,
            message="partitions dropped",
        )
        assert scalar(dsn, "SELECT count(*) FROM skor.output_instances WHERE output = 'gone'") == 0
        # And an output a running bridge serves cannot be forgotten
        served = cli("outputs", "forget", "keep", "--dsn", dsn, "--yes")
        assert served.exit_code == 2
        assert served.stderr.startswith("error: output 'keep' is served by running instance")
        unknown = cli("outputs", "forget", "nope", "--dsn", dsn, "--yes")
        assert unknown.exit_code == 2
        assert unknown.stderr == "error: output: no output named 'nope' (known: keep)\n"
