"""Output identity: a name that depends only on the output, never on its position or on the
other outputs; duplicates rejected; the first release's positional rows adopted once."""

from __future__ import annotations

import json
import time

import pytest

from skor_bridge.config import WebhookConfig
from skor_bridge.errors import ConfigError
from skor_bridge.identity import derived_name
from skor_bridge.settings import build_config
from skor_bridge.tools.receiver import Receiver
from tests.helpers import execute, scalar, wait_until

DSN = "dbname=shop"
A = "http://a.example.com/hooks/orders?token=SECRET-A"
B = "http://b.example.com:8080/in"
C = "https://c.example.com/services/T000/B000/XXXXSLACKTOKEN"
TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text)"


def names(*webhooks: str, file: str | None = None, tmp_path=None, **cli) -> list[str]:
    path = None
    if file is not None:
        path = tmp_path / "skor.toml"
        path.write_text(file)
    config = build_config({"dsn": DSN, "webhook": list(webhooks), **cli}, path, {})
    return [o.name for o in config.outputs]


# -- pure: names ------------------------------------------------------------------------------


def test_a_derived_name_is_readable_and_shows_no_token():
    name = derived_name("webhook", WebhookConfig(url=A))
    assert name.startswith("webhook-a.example.com-") and len(name.rsplit("-", 1)[1]) == 8
    assert "SECRET" not in name
    assert "XXXX" not in derived_name("webhook", WebhookConfig(url=C))


def test_a_name_does_not_depend_on_position_or_on_the_other_outputs():
    alone = {url: names(url)[0] for url in (A, B, C)}
    assert len(set(alone.values())) == 3
    for combination in ([A, B, C], [C, B, A], [B, C], [C, A]):
        assert names(*combination) == [alone[url] for url in combination]
    assert names(B, amqp="amqp://guest:guest@127.0.0.1/")[0] == alone[B]


def test_the_password_of_a_url_is_not_part_of_its_identity():
    assert names("http://u:one@h.example.com/x") == names("http://u:two@h.example.com/x")
    assert names("http://h.example.com/x") != names("http://h.example.com/y")


def test_explicit_names_on_the_command_line(tmp_path):
    assert names(f"orders={A}", B)[0] == "orders"
    assert names(amqp="events=amqp://guest:guest@127.0.0.1/")[0] == "events"
    assert names(kafka="stream=127.0.0.1:9092")[0] == "stream"
    # A URL's own '=' is not a name
    assert names("http://h.example.com/x?a=b")[0].startswith("webhook-h.example.com-")


def test_the_same_destination_in_the_file_and_on_the_command_line_is_one_output(tmp_path):
    file = f'[[outputs]]\ntype = "webhook"\nname = "orders"\nurl = "{A}"\n'
    # Unnamed on the command line, same URL: the file's output, with its name
    assert names(A, file=file, tmp_path=tmp_path) == ["orders"]
    # Same name, another URL: the command line's replaces it
    config = build_config({"dsn": DSN, "webhook": [f"orders={B}"]}, _write(tmp_path, file), {})
    assert [(o.name, o.settings.url) for o in config.outputs] == [("orders", B)]
    # Unnamed in both: the same derived name, one output
    file = f'[[outputs]]\ntype = "webhook"\nurl = "{A}"\n'
    assert names(A, file=file, tmp_path=tmp_path) == names(A)


def _write(tmp_path, text):
    path = tmp_path / "skor.toml"
    path.write_text(text)
    return path


def test_two_outputs_with_one_name_are_an_error_naming_both(tmp_path):
    file = (
        f'[[outputs]]\ntype = "webhook"\nname = "x"\nurl = "{A}"\n'
        f'[[outputs]]\ntype = "webhook"\nname = "x"\nurl = "{B}"\n'
    )
    with pytest.raises(ConfigError) as caught:
        build_config({"dsn": DSN}, _write(tmp_path, file), {})
    assert str(caught.value) == (
        f"{tmp_path}/skor.toml: outputs[0] and {tmp_path}/skor.toml: "
        "outputs[1] are both the output named 'x'; give each a "
        "distinct name"
    )
    with pytest.raises(ConfigError, match="--webhook and --webhook are both the output named"):
        build_config({"dsn": DSN, "webhook": [A, A]}, None, {})
    with pytest.raises(ConfigError, match="--webhook and --amqp are both the output named 'x'"):
        build_config({"dsn": DSN, "webhook": [f"x={A}"], "amqp": "x=amqp://h/"}, None, {})


def test_legacy_names_are_the_first_releases_positional_names(tmp_path):
    file = (
        f'[[outputs]]\ntype = "webhook"\nname = "orders-hook"\nurl = "{A}"\n'
        '[[outputs]]\ntype = "amqp"\nurl = "amqp://guest:guest@127.0.0.1/"\n'
        '[[outputs]]\ntype = "kafka"\nbootstrap = "127.0.0.1:9092"\n'
    )
    config = build_config({"dsn": DSN, "webhook": [B, C]}, _write(tmp_path, file), {})
    legacy = {
        o.name.split("-")[0] if o.name != "orders-hook" else o.name: o.legacy_name
        for o in config.outputs
    }
    assert [o.legacy_name for o in config.outputs] == [
        None,
        "amqp-2",
        "kafka-3",
        "webhook",
        "webhook-2",
    ]
    assert legacy["orders-hook"] is None
    # A legacy name that another output now wears explicitly is that output's, not adopted
    config = build_config({"dsn": DSN, "webhook": [f"webhook={A}", B]}, None, {})
    assert [o.legacy_name for o in config.outputs] == [None, "webhook-2"]


# -- end to end -------------------------------------------------------------------------------


def received_ids(receiver) -> list[int]:
    return [json.loads(r.body)["data"]["id"] for r in receiver.delivered()]


@pytest.mark.slow
def test_adding_and_removing_outputs_never_changes_another_outputs_progress(
    dsn, capture_table, bridge
):
    capture_table(TABLE, "items")
    with Receiver() as first, Receiver() as second:
        # Given two webhooks that delivered rows 1-10
        both = bridge("--dsn", dsn, "--webhook", first.url, "--webhook", second.url)
        both.wait_active()
        execute(dsn, "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 10) g")
        assert first.wait_for(10) and second.wait_for(10)
        assert both.stop() == 0
        # When the first is removed while rows 11-15 are written
        execute(dsn, "INSERT INTO items SELECT g, 'b' FROM generate_series(11, 15) g")
        only_second = bridge("--dsn", dsn, "--webhook", second.url).wait_active()
        # Then the second gets exactly rows 11-15: it kept its own progress
        assert second.wait_for(15)
        time.sleep(1)
        assert sorted(received_ids(second)) == list(range(1, 16))
        assert only_second.stop() == 0
        # And when the first comes back (now second on the command line), it resumes at 11
        execute(dsn, "INSERT INTO items SELECT g, 'c' FROM generate_series(16, 17) g")
        bridge("--dsn", dsn, "--webhook", second.url, "--webhook", first.url).wait_active()
        assert first.wait_for(17) and second.wait_for(17)
        time.sleep(1)
        assert sorted(received_ids(first)) == list(range(1, 18))
        assert sorted(received_ids(second)) == list(range(1, 18))


@pytest.mark.slow
def test_duplicate_output_names_stop_the_bridge_with_one_line(dsn, bridge, tmp_path):
    process = bridge(
        "--dsn", dsn, "--webhook", "x=http://127.0.0.1:9/a", "--webhook", "x=http://127.0.0.1:9/b"
    )
    assert process.proc.wait(30) == 2
    assert process.log == (
        "error: --webhook and --webhook are both the output named 'x'; give each a distinct name\n"
    )


@pytest.mark.slow
def test_an_upgraded_database_keeps_each_outputs_progress_by_adopting_its_positional_row(
    dsn, capture_table, bridge
):
    capture_table(TABLE, "items")
    with Receiver() as first, Receiver() as second:
        # Given progress rows under the first release's positional names
        old = bridge(
            "--dsn",
            dsn,
            "--webhook",
            f"webhook={first.url}",
            "--webhook",
            f"webhook-2={second.url}",
        ).wait_active()
        execute(dsn, "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 10) g")
        assert first.wait_for(10) and second.wait_for(10)
        assert old.stop() == 0
        execute(dsn, "INSERT INTO items SELECT g, 'b' FROM generate_series(11, 13) g")
        # When the new release runs the same command line (no names)
        new = bridge("--dsn", dsn, "--webhook", first.url, "--webhook", second.url)
        new.wait_active()
        # Then each output adopts its own row: nothing re-sent, nothing skipped
        assert first.wait_for(13) and second.wait_for(13)
        time.sleep(1)
        assert sorted(received_ids(first)) == list(range(1, 14))
        assert sorted(received_ids(second)) == list(range(1, 14))
        assert new.log.count("adopted the progress of") == 2
        assert "adopted the progress of 'webhook'" in new.log
        assert (
            scalar(
                dsn,
                "SELECT count(*) FROM skor.outputs WHERE name LIKE 'webhook%%'"
                " AND name NOT LIKE 'webhook-127%%'",
            )
            == 0
        )
        assert new.stop() == 0
        # And only once: a restart adopts nothing
        again = bridge("--dsn", dsn, "--webhook", first.url, "--webhook", second.url)
        again.wait_active()
        wait_until(lambda: "is now active" in again.log)
        assert "adopted" not in again.log
