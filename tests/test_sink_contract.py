"""The sink contract (sinks/base.py), the same for the three sinks: an unreachable
receiver or broker makes every event RETRY within the sink's bound, said in one line with
no secret; submit/poll hand back every ticket exactly once; close is harmless twice."""

from __future__ import annotations

import socket
import time

import pytest

from skor_bridge.config import AmqpConfig, KafkaConfig, WebhookConfig
from skor_bridge.event import ChangeEvent
from skor_bridge.sinks import load_sink
from skor_bridge.sinks.base import Outcome

SECRET = "hunter2secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: nothing listens there


def unreachable(kind: str):
    port = free_port()
    if kind == "webhook":
        return WebhookConfig(
            url=f"http://user:{SECRET}@127.0.0.1:{port}/hook?token={SECRET}", timeout=2.0
        )
    if kind == "amqp":
        return AmqpConfig(url=f"amqp://guest:{SECRET}@127.0.0.1:{port}/%2F")
    return KafkaConfig(
        bootstrap=f"127.0.0.1:{port}",
        options=(("message.timeout.ms", "1500"), ("sasl.password", SECRET)),
    )


def events(count: int) -> list[ChangeEvent]:
    return [
        ChangeEvent(
            id=f"c-{i}",
            position=i + 1,
            schema="public",
            table="t",
            op="INSERT",
            data=f'{{"id":{i}}}',
            key=f'{{"id":{i}}}',
        )
        for i in range(count)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["webhook", "amqp", "kafka"])
def test_an_unreachable_output_makes_every_event_retry_in_one_line_without_secrets(kind, caplog):
    sink = load_sink(kind, "contract", unreachable(kind))
    sink.open()
    try:
        started = time.monotonic()
        # When five events are submitted, and polled until each came back
        for ticket, event in enumerate(events(5)):
            sink.submit(ticket, event)
        back: list = []
        while len(back) < 5 and time.monotonic() - started < sink.completion_bound + 5:
            back += sink.poll(0.2)
    finally:
        sink.close()
        sink.close()  # a second close is harmless
    # Then every ticket came back exactly once, RETRY, in one line without the secret
    assert sorted(ticket for ticket, _ in back) == [0, 1, 2, 3, 4]
    for _, result in back:
        assert result.outcome is Outcome.RETRY
        assert result.error and "\n" not in result.error and SECRET not in result.error
    assert all(SECRET not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ["webhook", "amqp", "kafka"])
def test_close_is_harmless_unopened_and_twice(kind):
    sink = load_sink(kind, "contract", unreachable(kind))
    sink.close()
    sink.close()
    assert sink.poll(0) == []
