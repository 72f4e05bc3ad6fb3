"""`status` and the instances: a killed instance shows as gone once a standby would have
taken over, and instances silent for a day are not listed; a stop with a broker
unreachable ends within 10 s."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from skor_bridge.cli import app
from tests.helpers import execute, wait_until

TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text)"


def instances(dsn: str) -> dict[str, str]:
    result = CliRunner().invoke(app, ["status", "--dsn", dsn, "--json"])
    assert result.exit_code == 0, result.output
    import json

    return {i["instance"]: i["role"] for i in json.loads(result.stdout)["instances"]}


@pytest.mark.slow
def test_a_killed_instance_is_gone_after_the_failover_timeout_and_old_ones_are_dropped(
    dsn, capture_table, bridge, receiver
):
    capture_table(TABLE, "items")
    process = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    execute(
        dsn,
        "INSERT INTO skor.instances (instance, role, started, heartbeat) VALUES"
        " ('ancient', 'active', now() - interval '3 days', now() - interval '2 days')",
    )
    roles = instances(dsn)
    assert list(roles.values()) == ["active"] and "ancient" not in roles
    process.kill()
    killed = time.monotonic()
    wait_until(
        lambda: list(instances(dsn).values()) == ["gone"],
        timeout=30,
        message="the killed instance shown as gone",
    )
    assert time.monotonic() - killed < 15


@pytest.mark.slow
@pytest.mark.parametrize(
    "output",
    [["--kafka", "127.0.0.1:9"], ["--amqp", "amqp://guest:guest@127.0.0.1:9/"]],
    ids=["kafka", "amqp"],
)
def test_stopping_with_an_unreachable_broker_takes_under_10_seconds(
    dsn, capture_table, bridge, output
):
    capture_table(TABLE, "items")
    process = bridge("--dsn", dsn, *output).wait_active()
    execute(dsn, "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 10) g")
    time.sleep(3)
    started = time.monotonic()
    code = process.stop(timeout=60)
    took = time.monotonic() - started
    assert code == 0 and took < 10, f"{took:.1f}s\n{process.log[-1500:]}"
