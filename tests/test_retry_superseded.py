"""`events retry` never leaves a receiver with an older version of a row: dead letters whose
row has a newer delivered event are skipped by default (and counted), and the receiver's
final state after the retry equals the table."""

from __future__ import annotations

import json

import pytest

from skor_bridge.tools.receiver import Receiver
from tests.helpers import execute, scalar, wait_until
from tests.test_ops import cli

TABLE = "CREATE TABLE accounts (id int PRIMARY KEY, balance int)"


def final_state(receiver) -> dict[int, int | None]:
    """The receiver's view: each row's last delivered version (None once deleted)."""
    state: dict[int, int | None] = {}
    for request in receiver.delivered():
        body = json.loads(request.body)
        state[body["data"]["id"]] = None if body["op"] == "DELETE" else body["data"]["balance"]
    return {k: v for k, v in state.items() if v is not None}


@pytest.mark.slow
def test_retry_skips_dead_letters_of_rows_that_have_a_newer_delivered_version(
    dsn, capture_table, bridge
):
    # Given balance 100 of account 1 dead-lettered (the receiver refused it), then newer
    # versions 200 and 300 delivered; and account 2's only version dead-lettered
    capture_table(TABLE, "accounts")
    refuse = {100, 7}

    def respond(request):
        return 400 if json.loads(request.body)["data"]["balance"] in refuse else 200

    with Receiver(respond=respond) as receiver:
        bridge("--dsn", dsn, "--webhook", f"hook={receiver.url}").wait_active()
        execute(dsn, "INSERT INTO accounts VALUES (1, 100)", "INSERT INTO accounts VALUES (2, 7)")
        wait_until(
            lambda: scalar(dsn, "SELECT count(*) FROM skor.dead_letters") == 2,
            message="two dead letters",
        )
        execute(
            dsn,
            "UPDATE accounts SET balance = 200 WHERE id = 1",
            "UPDATE accounts SET balance = 300 WHERE id = 1",
        )
        wait_until(lambda: final_state(receiver).get(1) == 300, message="300 delivered")
        wait_until(
            lambda: scalar(dsn, "SELECT position FROM skor.outputs") == 4, message="progress saved"
        )

        # When the receiver is fixed and every dead letter is retried
        refuse.clear()
        result = cli("events", "retry", "--dsn", dsn, "--all-dead")
        # Then only account 2's is queued; account 1's stale 100 is skipped, and said so
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == "1 dead letter(s) queued for retry"
        assert "1 dead letter(s) skipped: their row has a newer delivered event" in result.stderr
        wait_until(lambda: final_state(receiver).get(2) == 7, message="account 2 retried")
        wait_until(
            lambda: scalar(dsn, "SELECT count(*) FROM skor.redeliveries") == 0,
            message="redeliveries done",
        )
        # And the receiver's final state equals the table
        table = dict(scalar(dsn, "SELECT array_agg(ARRAY[id, balance]) FROM accounts"))
        assert final_state(receiver) == table == {1: 300, 2: 7}

        # When the operator insists, Then the stale one is sent too (with a flag)
        result = cli("events", "retry", "--dsn", dsn, "--all-dead", "--include-superseded")
        assert result.stdout.strip() == "1 dead letter(s) queued for retry"
        wait_until(lambda: final_state(receiver).get(1) == 100, message="stale version sent")
