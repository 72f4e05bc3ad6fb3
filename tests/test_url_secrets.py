"""Tokens in webhook URLs (?token=, sig=, Slack-style path tokens) never reach logs,
last_error, dead letters, status or `outputs list`, unless --show-full-urls asks for it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from skor_bridge.cli import app
from skor_bridge.config import redact, redact_url
from skor_bridge.tools.receiver import Receiver
from tests.helpers import execute, scalar, short_retry_config, wait_until

SECRETS = ("SLACKTOKEN123", "QUERYSECRET", "SIGSECRET", "hunter2")
PATH = "/services/T000/B000/SLACKTOKEN123?token=QUERYSECRET&sig=SIGSECRET"
TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text)"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "HTTP 500 from https://hooks.slack.com/services/T0/B0/XXXX",
            "HTTP 500 from https://hooks.slack.com/...",
        ),
        (
            "POST http://u:hunter2@h.example.com:8080/in?token=abc failed",
            "POST http://u:***@h.example.com:8080/... failed",
        ),
        ("http://h.example.com/", "http://h.example.com/"),
        ("http://h.example.com?sig=abc", "http://h.example.com/..."),
        ("'https://h.example.com/a#frag'", "'https://h.example.com/...'"),
        ("dbname=shop password=hunter2", "dbname=shop password=***"),
    ],
)
def test_redact_cuts_http_urls_to_their_origin(text, shown):
    assert redact(text) == shown


def test_redact_keeps_the_path_when_asked_but_never_the_password():
    assert redact("http://u:hunter2@h/x?token=1", urls=False) == "http://u:***@h/x?token=1"
    assert redact_url("https://h.example.com:8443/x?y=1") == "https://h.example.com:8443/..."


def everything_shown(dsn: str, log: str) -> str:
    runner = CliRunner()
    parts = [log]
    for args in (
        ["status", "--dsn", dsn],
        ["status", "--dsn", dsn, "--json"],
        ["outputs", "list", "--dsn", dsn, "--json"],
        ["events", "list", "--dsn", dsn, "--json"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        parts.append(result.output)
    parts.append(json.dumps(scalar(dsn, "SELECT json_agg(o) FROM skor.outputs o")))
    parts.append(json.dumps(scalar(dsn, "SELECT json_agg(last_error) FROM skor.dead_letters")))
    return "\n".join(parts)


@pytest.mark.slow
def test_tokens_in_webhook_urls_never_reach_logs_errors_or_status(
    dsn, capture_table, bridge, tmp_path
):
    capture_table(TABLE, "items")
    with Receiver(respond=lambda _request: 500) as failing:
        origin = f"http://u:hunter2@127.0.0.1:{failing.port}"
        # Given one webhook answering 500 and one where nothing listens, both with tokens
        process = bridge(
            "--dsn",
            dsn,
            "--webhook",
            f"answers={origin}{PATH}",
            "--webhook",
            f"refused=http://127.0.0.1:9{PATH}",
            "--max-attempts",
            "2",
            "--log-level",
            "debug",
            "--config",
            short_retry_config(tmp_path, max_backoff=0.1),
        )
        process.wait_active()
        execute(dsn, "INSERT INTO items VALUES (1, 'a')")
        # When both dead-letter the event
        wait_until(
            lambda: scalar(dsn, "SELECT count(*) FROM skor.dead_letters") == 2,
            timeout=60,
            message="two dead letters",
        )
        assert failing.count >= 2
        errors = scalar(dsn, "SELECT string_agg(last_error, ' | ') FROM skor.dead_letters")
        assert f"127.0.0.1:{failing.port}/..." in errors, errors
        assert process.stop() == 0
        # Then no token appears in the log, the database, status, events or outputs list
        shown = everything_shown(dsn, process.log)
        for secret in SECRETS:
            assert secret not in shown, secret


@pytest.mark.slow
def test_show_full_urls_shows_them_when_the_user_asks(dsn, capture_table, bridge, tmp_path):
    capture_table(TABLE, "items")
    with Receiver(respond=lambda _request: 500) as failing:
        process = bridge(
            "--dsn",
            dsn,
            "--webhook",
            f"http://127.0.0.1:{failing.port}{PATH}",
            "--show-full-urls",
            "--max-attempts",
            "1",
            "--log-level",
            "debug",
        )
        process.wait_active()
        execute(dsn, "INSERT INTO items VALUES (1, 'a')")
        wait_until(
            lambda: scalar(dsn, "SELECT count(*) FROM skor.dead_letters") == 1,
            timeout=60,
            message="a dead letter",
        )
        assert "SLACKTOKEN123" in scalar(dsn, "SELECT last_error FROM skor.dead_letters")
        assert process.stop() == 0
