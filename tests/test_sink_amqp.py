"""AmqpSink against the machine's RabbitMQ: confirms, returns, nacks and a real restart."""

from __future__ import annotations

import json
import logging
import ssl
import subprocess
import time
import uuid

import pika.exceptions
import pytest

from skor_bridge.config import AmqpConfig
from skor_bridge.errors import SinkError
from skor_bridge.event import ChangeEvent
from skor_bridge.sinks.amqp import AmqpSink
from skor_bridge.sinks.base import Outcome
from tests.fixtures_amqp import amqp_channel, start_rabbitmq, stop_rabbitmq

CLOSED_PORT_URL = "amqp://guest:s3cret@127.0.0.1:1/"


def make_events(count, table="orders", op="INSERT", start=0):
    run = uuid.uuid4().hex[:8]
    return [
        ChangeEvent(
            id=f"{run}-{n}",
            position=n,
            schema="public",
            table=table,
            op=op,
            data=json.dumps({"id": n, "note": "ünïcode"}, ensure_ascii=False),
            key=json.dumps({"id": n}),
            captured_at=1_700_000_000.75,
        )
        for n in range(start, start + count)
    ]


def outcomes(results):
    return {r.outcome for r in results}


def test_batches_of_events_arrive_in_order_with_exact_properties(amqp_url, amqp_queue):
    # Given a sink on the test exchange and 1000 events of three kinds
    events = make_events(400) + make_events(300, op="UPDATE") + make_events(300, "items", "DELETE")
    sink = AmqpSink("rabbit", AmqpConfig(url=amqp_url, exchange=amqp_queue.exchange))

    # When they are sent in batches of uneven size
    results = []
    with sink:
        for start, stop in [(0, 1), (1, 500), (500, 1500)]:
            results += sink.send(events[start:stop])

    # Then every event was confirmed and arrived once, in send order, exactly as specified
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 1000
    messages = amqp_queue.drain(1000)
    assert [p.message_id for _, p, _ in messages] == [e.id for e in events]
    for (method, properties, body), event in zip(messages, events, strict=True):
        assert body == event.body()
        assert method.exchange == amqp_queue.exchange
        assert method.routing_key == f"public.{event.table}.{event.op.lower()}"
        assert properties.content_type == "application/json"
        assert properties.delivery_mode == 2
        assert properties.headers == {
            "schema": "public",
            "table": event.table,
            "op": event.op,
            "position": event.position,
            "captured_at": "2023-11-14T22:13:20.750000Z",
        }
        assert properties.timestamp == 1_700_000_000
    assert amqp_queue.drain(timeout=0.3) == []
    assert sink.unroutable == 0


def test_unroutable_messages_are_counted_and_delivered_when_not_mandatory(
    amqp_url, make_amqp_queue, caplog
):
    # Given a queue bound only to inserts
    queue = make_amqp_queue(binding_key="*.*.insert")
    sink = AmqpSink("rabbit", AmqpConfig(url=amqp_url, exchange=queue.exchange))

    # When inserts and deletes are sent
    with sink, caplog.at_level(logging.WARNING, logger="skor_bridge.sinks.amqp"):
        results = sink.send(make_events(3) + make_events(2, op="DELETE"))

    # Then all count as delivered, the two deletes are counted and logged as unroutable
    # once (not a line per message: a deleted binding would flood the log)
    assert outcomes(results) == {Outcome.DELIVERED}
    assert sink.unroutable == 2
    assert len(queue.drain(3)) == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "'public.orders.delete'" in warnings[0] and queue.exchange in warnings[0]
    assert "guest" not in warnings[0] and "\n" not in warnings[0]


def test_unroutable_messages_are_retried_when_mandatory(amqp_url, make_amqp_queue):
    # Given a queue bound only to inserts and a sink that demands a route
    queue = make_amqp_queue(binding_key="*.*.insert")
    config = AmqpConfig(url=amqp_url, exchange=queue.exchange, mandatory=True)

    # When an insert and an update are sent
    with AmqpSink("rabbit", config) as sink:
        inserted, updated = sink.send(make_events(1) + make_events(1, op="UPDATE"))

    # Then the insert is delivered and the update retried with the reason
    assert inserted.outcome is Outcome.DELIVERED
    assert updated.outcome is Outcome.RETRY
    assert updated.error.startswith(
        "unroutable: no queue bound for routing key 'public.orders.update' on exchange"
    )
    assert sink.unroutable == 0


def test_a_custom_routing_key_template_is_used(amqp_url, make_amqp_queue):
    # Given a template that drops the schema and a queue bound to it
    queue = make_amqp_queue(binding_key="skor.orders.*")
    config = AmqpConfig(
        url=amqp_url, exchange=queue.exchange, routing_key="skor.{table}.{op}", mandatory=True
    )

    # When events are sent
    with AmqpSink("rabbit", config) as sink:
        results = sink.send(make_events(2, op="UPDATE"))

    # Then they are routed by the template
    assert outcomes(results) == {Outcome.DELIVERED}
    assert [m.routing_key for m, _, _ in queue.drain(2)] == ["skor.orders.update"] * 2


def test_broker_nacks_are_retried(amqp_url, make_amqp_queue):
    # Given a queue that refuses publishes beyond two messages
    queue = make_amqp_queue(arguments={"x-max-length": 2, "x-overflow": "reject-publish"})

    # When five events are sent
    with AmqpSink("rabbit", AmqpConfig(url=amqp_url, exchange=queue.exchange)) as sink:
        results = sink.send(make_events(5))

    # Then the two accepted are delivered, the rest nacked and retried
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 2 + [Outcome.RETRY] * 3
    assert "basic.nack" in results[-1].error


def test_an_unreachable_broker_makes_every_event_retry_without_leaking_the_password(
    amqp_url, amqp_queue
):
    # Given a sink pointed at a closed port with a password in the URL
    sink = AmqpSink("rabbit", AmqpConfig(url=CLOSED_PORT_URL, exchange=amqp_queue.exchange))
    events = make_events(3)

    # When it opens and sends
    started = time.monotonic()
    with sink:
        results = sink.send(events)

    # Then nothing raised, it gave up quickly and every event is retried without the secret
    assert time.monotonic() - started < 5
    assert outcomes(results) == {Outcome.RETRY}
    assert "Connection refused" in results[0].error
    assert all("s3cret" not in r.error and "\n" not in r.error for r in results)

    # And the same events go through once pointed at the real broker
    with AmqpSink("rabbit", AmqpConfig(url=amqp_url, exchange=amqp_queue.exchange)) as sink:
        assert outcomes(sink.send(events)) == {Outcome.DELIVERED}
    assert len(amqp_queue.drain(3)) == 3


def test_a_deleted_exchange_is_an_output_failure_until_restored_never_recreated_empty(
    amqp_url, amqp_queue
):
    # Given an open sink whose exchange (and queue) are then deleted behind its back
    sink = AmqpSink("rabbit", AmqpConfig(url=amqp_url, exchange=amqp_queue.exchange))
    with sink:
        assert outcomes(sink.send(make_events(1))) == {Outcome.DELIVERED}
        assert len(amqp_queue.drain(1)) == 1
        amqp_queue.delete()

        # When events are sent, and sent again after a reconnect
        failed = sink.send(make_events(2))
        still = sink.send(make_events(2))
        # Then both are retried and the exchange was not re-created without its bindings
        assert outcomes(failed) == {Outcome.RETRY} and outcomes(still) == {Outcome.RETRY}
        assert "does not exist" in (still[0].error or "")
        with (
            pytest.raises(pika.exceptions.ChannelClosedByBroker),
            amqp_channel(amqp_url) as channel,
        ):
            channel.exchange_declare(amqp_queue.exchange, "topic", passive=True)

        # When an operator restores the exchange with its binding
        amqp_queue.declare()
        # Then the next events are delivered and reach the queue: none were unroutable
        assert outcomes(sink.send(make_events(2))) == {Outcome.DELIVERED}
    assert len(amqp_queue.drain(2)) == 2
    assert sink.unroutable == 0


def test_empty_sends_and_repeated_closes_are_harmless(amqp_url, amqp_queue):
    # Given a sink that was never opened
    sink = AmqpSink("rabbit", AmqpConfig(url=amqp_url, exchange=amqp_queue.exchange))

    # When it is closed, sent nothing, opened, sent nothing, and closed twice
    sink.close()
    assert sink.send([]) == []
    sink.open()
    assert sink.send([]) == []
    assert outcomes(sink.send(make_events(1))) == {Outcome.DELIVERED}
    sink.close()
    sink.close()

    # Then the one event arrived
    assert len(amqp_queue.drain(1)) == 1


def test_an_oversized_routing_key_is_rejected_without_failing_the_batch(amqp_url, amqp_queue):
    # Given one event whose routing key exceeds AMQP's 255 bytes
    events = make_events(1, table="t" * 300) + make_events(1)

    # When the batch is sent
    with AmqpSink("rabbit", AmqpConfig(url=amqp_url, exchange=amqp_queue.exchange)) as sink:
        oversized, fine = sink.send(events)

    # Then only that event is rejected
    assert oversized.outcome is Outcome.REJECTED
    assert fine.outcome is Outcome.DELIVERED


def test_an_unparsable_url_is_a_sink_error_without_the_password():
    # Given a URL with a non-numeric port
    sink = AmqpSink("rabbit", AmqpConfig(url="amqp://guest:s3cret@127.0.0.1:notaport/"))

    # When it is opened, then it fails for good and says so without the secret
    with pytest.raises(SinkError) as raised:
        sink.open()
    assert "s3cret" not in str(raised.value)


def test_amqps_urls_use_tls_that_verifies_the_broker():
    # Given an amqps URL with credentials
    sink = AmqpSink("rabbit", AmqpConfig(url="amqps://user:s3cret@broker.example/vhost"))

    # When its connection parameters are built
    params = sink.connection_parameters()

    # Then TLS is on, verifying certificate and host name, on the TLS port
    assert params.ssl_options is not None
    assert params.ssl_options.context.verify_mode is ssl.CERT_REQUIRED
    assert params.ssl_options.context.check_hostname
    assert (params.host, params.port, params.virtual_host) == ("broker.example", 5671, "vhost")
    assert (params.credentials.username, params.credentials.password) == ("user", "s3cret")
    assert params.connection_attempts == 1


def test_heartbeat_and_blocked_timeout_have_defaults_that_the_url_can_override():
    # Given one URL without options and one with both
    plain = AmqpSink("a", AmqpConfig(url="amqp://h/")).connection_parameters()
    tuned = AmqpSink(
        "b", AmqpConfig(url="amqp://h/?heartbeat=5&blocked_connection_timeout=7")
    ).connection_parameters()

    # Then a dead or blocking broker is detected either way
    assert plain.heartbeat == 30 and plain.blocked_connection_timeout == 20
    assert tuned.heartbeat == 5 and tuned.blocked_connection_timeout == 7


@pytest.mark.slow
@pytest.mark.serial
def test_events_sent_across_a_broker_restart_all_arrive_at_least_once(amqp_url, make_amqp_queue):
    # Given a durable queue, which survives the restart, and a sink that delivered a batch
    queue = make_amqp_queue(durable=True)
    first, second = make_events(100), make_events(100)
    sink = AmqpSink("rabbit", AmqpConfig(url=amqp_url, exchange=queue.exchange))
    with sink:
        assert outcomes(sink.send(first)) == {Outcome.DELIVERED}
        try:
            # When RabbitMQ stops, the next batch is retried, without raising
            stop_rabbitmq()
            retried = sink.send(second)
            assert outcomes(retried) == {Outcome.RETRY}
            assert all(":guest@" not in r.error for r in retried)  # the password is "guest"
        finally:
            start_rabbitmq(amqp_url)

        # And once it is back, the same batch is sent again
        again = sink.send(second)

    # Then it is delivered and every event arrived at least once
    assert outcomes(again) == {Outcome.DELIVERED}
    arrived = {p.message_id for _, p, _ in queue.drain(timeout=10)}
    assert arrived == {e.id for e in first + second}


@pytest.mark.slow
@pytest.mark.serial
def test_a_broker_that_stops_confirming_makes_send_retry_within_the_confirm_timeout(
    amqp_url, amqp_queue
):
    # Given an open sink with a short confirm timeout
    sink = AmqpSink("rabbit", AmqpConfig(url=amqp_url, exchange=amqp_queue.exchange))
    sink.confirm_timeout = 1.5
    events = make_events(10)
    with sink:
        try:
            # When a memory alarm makes RabbitMQ stop reading from publishers
            _set_memory_watermark("0")
            started = time.monotonic()
            results = sink.send(events)
            elapsed = time.monotonic() - started
        finally:
            _set_memory_watermark("0.4")

        # Then the batch is retried after the timeout, not hung on the broker
        assert outcomes(results) == {Outcome.RETRY}
        assert "no confirm" in results[0].error
        assert elapsed < 1.5 + 2 * 2 + 1  # timeout plus at most two bounded close waits

        # And the next send, with the alarm cleared, goes through
        assert outcomes(sink.send(events)) == {Outcome.DELIVERED}


def _set_memory_watermark(fraction):
    subprocess.run(
        ["rabbitmqctl", "set_vm_memory_high_watermark", fraction],
        check=True,
        capture_output=True,
        timeout=30,
    )


@pytest.fixture
def small_max_message_size():
    """RabbitMQ's max_message_size set to 1 MiB for channels opened meanwhile (runtime only,
    restored after the test)."""

    def set_size(size: int) -> None:
        subprocess.run(
            ["rabbitmqctl", "eval", f"application:set_env(rabbit, max_message_size, {size})."],
            check=True,
            capture_output=True,
            timeout=60,
        )

    set_size(1024 * 1024)
    try:
        yield 1024 * 1024
    finally:
        set_size(128 * 1024 * 1024)


@pytest.mark.slow
@pytest.mark.serial
def test_a_message_over_max_message_size_is_rejected_at_once_and_the_rest_go_on(
    amqp_url, amqp_queue, small_max_message_size
):
    # Given a broker taking at most 1 MiB per message, and a 2 MB event between small ones
    events = make_events(3)
    events[1] = ChangeEvent(
        id=events[1].id,
        position=1,
        schema="public",
        table="orders",
        op="INSERT",
        data=json.dumps({"id": 1, "blob": "x" * 2_000_000}),
        key='{"id":1}',
    )
    sink = AmqpSink("rabbit", AmqpConfig(url=amqp_url, exchange=amqp_queue.exchange))
    with sink:
        # When they are sent (the broker closes the channel with 406 PRECONDITION_FAILED)
        first = sink.send(events)
        # Then the big one is a dead letter at once (REJECTED), naming the limit
        assert first[1].outcome is Outcome.REJECTED
        assert "max_message_size" in (first[1].error or "") and "\n" not in first[1].error
        # And the others are delivered, at once or on their retry
        retried = [e for e, r in zip(events, first, strict=True) if r.outcome is Outcome.RETRY]
        assert all(r.outcome is Outcome.DELIVERED for r in sink.send(retried))
        # And a later oversized event is rejected without costing the channel
        again = sink.send([events[1], *make_events(1)])
    assert [r.outcome for r in again] == [Outcome.REJECTED, Outcome.DELIVERED]
    bodies = [json.loads(body)["data"]["id"] for _, _, body in amqp_queue.drain(3)]
    assert sorted(bodies) == [0, 0, 2]
