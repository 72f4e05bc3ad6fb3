"""KafkaSink against a real Kafka-protocol broker (Tansu): delivery, keys, order, failures."""

from __future__ import annotations

import json
import logging
import time
import uuid

import pytest
from confluent_kafka import KafkaError

from skor_bridge.config import KafkaConfig
from skor_bridge.errors import SinkError
from skor_bridge.event import ChangeEvent
from skor_bridge.sinks.base import Outcome
from skor_bridge.sinks.kafka import KafkaSink, result_for
from tests.fixtures_kafka import consume


def event(
    row: int | None,
    version: int = 0,
    *,
    op: str = "UPDATE",
    table: str = "orders",
    schema: str = "public",
    data: str | None = None,
) -> ChangeEvent:
    return ChangeEvent(
        id=str(uuid.uuid4()),
        position=0,
        schema=schema,
        table=table,
        op=op,
        data=data if data is not None else json.dumps({"id": row, "v": version}),
        key=None if row is None else f'{{"id":{row}}}',
    )


def sink_for(bootstrap: str, topic: str, **kwargs) -> KafkaSink:
    return KafkaSink("kafka-test", KafkaConfig(bootstrap=bootstrap, topic=topic, **kwargs))


def outcomes(results) -> list[Outcome]:
    return [r.outcome for r in results]


def test_row_changes_arrive_once_keyed_by_primary_key_in_per_key_order(
    kafka_broker, kafka_consume, kafka_topic
):
    # Given 500 rows, each inserted and then updated three times, sent in batches of 250
    # that never hold two changes of one row
    rows = range(500)
    waves = [[event(r, 0, op="INSERT") for r in rows]]
    waves += [[event(r, v) for r in rows] for v in (1, 2, 3)]
    sent = [e for wave in waves for e in wave]

    # When the sink sends them batch after batch
    with sink_for(kafka_broker.bootstrap, kafka_topic) as sink:
        for wave in waves:
            for start in range(0, len(wave), 250):
                results = sink.send(wave[start : start + 250])
                # Then every event is delivered
                assert outcomes(results) == [Outcome.DELIVERED] * len(results)

    # And each change is one record: key = primary key, value = Skor's body, with headers
    messages = kafka_consume(kafka_topic, len(sent))
    assert len(messages) == len(sent)
    by_id = {e.id: e for e in sent}
    for msg in messages:
        source = by_id.pop(msg.headers["event-id"].decode())
        assert msg.key == source.key.encode()
        assert msg.value == source.body()
        assert msg.headers["schema"] == b"public"
        assert msg.headers["table"] == b"orders"
        assert msg.headers["op"] == source.op.encode()
    assert by_id == {}

    # And all changes of a row share one partition, in the order they were made
    per_key: dict[bytes, list] = {}
    for msg in sorted(messages, key=lambda m: (m.partition, m.offset)):
        per_key.setdefault(msg.key, []).append(msg)
    assert len(per_key) == 500
    for changes in per_key.values():
        assert len({m.partition for m in changes}) == 1
        assert [json.loads(m.value)["data"]["v"] for m in changes] == [0, 1, 2, 3]


def test_changes_of_a_table_without_primary_key_are_keyed_by_table_name(
    kafka_broker, kafka_consume, kafka_topic
):
    # Given changes of a key-less table, one per batch as the dispatcher sends them
    changes = [event(None, v, table="audit_log", schema="app") for v in range(5)]

    # When they are sent
    with sink_for(kafka_broker.bootstrap, kafka_topic) as sink:
        for change in changes:
            assert outcomes(sink.send([change])) == [Outcome.DELIVERED]

    # Then all carry the qualified table name as key, so they share a partition, in order
    messages = sorted(kafka_consume(kafka_topic, 5), key=lambda m: m.offset)
    assert {m.key for m in messages} == {b"app.audit_log"}
    assert len({m.partition for m in messages}) == 1
    assert [json.loads(m.value)["data"]["v"] for m in messages] == list(range(5))


@pytest.mark.slow
def test_the_topic_template_can_route_by_schema_table_and_op(kafka_broker, kafka_topic):
    # Given a template that names schema, table and op
    template = kafka_topic + ".{schema}.{table}.{op}"
    batch = [event(1, op="INSERT"), event(2, op="DELETE"), event(3, op="INSERT", table="items")]

    # When a batch touching two tables and two ops is sent
    with sink_for(kafka_broker.bootstrap, template) as sink:
        assert outcomes(sink.send(batch)) == [Outcome.DELIVERED] * 3

    # Then each event landed in the topic its fields name
    for topic, keys in [
        (f"{kafka_topic}.public.orders.INSERT", [b'{"id":1}']),
        (f"{kafka_topic}.public.orders.DELETE", [b'{"id":2}']),
        (f"{kafka_topic}.public.items.INSERT", [b'{"id":3}']),
    ]:
        assert [m.key for m in consume(kafka_broker.bootstrap, topic, 1)] == keys


def test_missing_topics_are_created_with_the_configured_partition_count(kafka_broker, kafka_topic):
    # Given create_topics with 5 partitions (neither the broker's creation default nor its
    # auto-creation default, so the count proves who created the topic)
    with sink_for(kafka_broker.bootstrap, kafka_topic, partitions=5) as sink:
        # When the first event for the topic is sent
        assert outcomes(sink.send([event(1)])) == [Outcome.DELIVERED]
        # And again: the known topic is not created twice
        assert outcomes(sink.send([event(2)])) == [Outcome.DELIVERED]

    # Then the topic has 5 partitions
    assert kafka_broker.partitions(kafka_topic) == 5


def test_with_create_topics_off_the_sink_leaves_topic_creation_to_the_broker(
    kafka_broker, kafka_topic
):
    # Given create_topics off (and a partition count that would otherwise be used)
    config = {"create_topics": False, "partitions": 5}

    # When an event is sent to a new topic
    with sink_for(kafka_broker.bootstrap, kafka_topic, **config) as sink:
        assert outcomes(sink.send([event(1)])) == [Outcome.DELIVERED]

    # Then the broker auto-created it with its own default
    assert kafka_broker.partitions(kafka_topic) not in (0, 5)


@pytest.mark.slow
def test_a_broker_that_is_down_yields_retry_in_bounded_time_and_delivery_once_it_is_up(
    kafka_broker_factory, kafka_topic, caplog
):
    # Given a broker that is not running yet and a short message timeout
    broker = kafka_broker_factory()
    options = (("message.timeout.ms", "1000"), ("reconnect.backoff.max.ms", "200"))
    batch = [event(r) for r in range(20)]
    sink = sink_for(broker.bootstrap, kafka_topic, options=options)
    caplog.set_level(logging.WARNING, logger="skor_bridge.sinks.kafka")

    # When the sink opens and sends twice, then the broker starts
    sink.open()
    for _ in range(2):
        started = time.monotonic()
        results = sink.send(batch)
        # Then each send returns RETRY for every event within the bound, without raising
        assert time.monotonic() - started < 1 + 1 + 5
        assert outcomes(results) == [Outcome.RETRY] * len(batch)
        assert all(r.error and "\n" not in r.error for r in results)
    # And the failed topic creation was logged once
    assert sum("could not create topic" in r.message for r in caplog.records) == 1
    broker.start()

    # Then re-sending what came back RETRY, as the dispatcher does, delivers everything
    pending, deadline = batch, time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        results = sink.send(pending)
        pending = [e for e, r in zip(pending, results, strict=True) if r.outcome is Outcome.RETRY]
    sink.close()
    assert pending == []
    delivered = consume(broker.bootstrap, kafka_topic, len(batch))
    assert {m.headers["event-id"].decode() for m in delivered} == {e.id for e in batch}


def test_an_event_larger_than_the_maximum_message_size_is_rejected(kafka_broker, kafka_topic):
    # Given a batch holding one 2 MB event between two ordinary ones
    huge = event(2, data=json.dumps({"id": 2, "blob": "x" * 2_000_000}))
    batch = [event(1), huge, event(3)]

    # When it is sent
    with sink_for(kafka_broker.bootstrap, kafka_topic) as sink:
        results = sink.send(batch)

    # Then the big one is REJECTED with a one-line reason, and the others are delivered
    assert outcomes(results) == [Outcome.DELIVERED, Outcome.REJECTED, Outcome.DELIVERED]
    assert "MSG_SIZE_TOO_LARGE" in results[1].error


def test_an_event_for_an_invalid_topic_name_is_rejected(kafka_broker, kafka_topic):
    # Given a template that renders a name Kafka does not allow (create_topics off: Tansu's
    # CreateTopics accepts such names, unlike Apache Kafka's, while its auto-creation refuses)
    template = kafka_topic + " {table}!"
    with sink_for(kafka_broker.bootstrap, template, create_topics=False) as sink:
        # When an event is sent to it
        results = sink.send([event(1)])

    # Then it is REJECTED: resending cannot help
    assert outcomes(results) == [Outcome.REJECTED]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ((("no.such.option", "hunter2"),), "'no.such.option'"),
        ((("sasl.password", "hunter2"), ("security.protocol", "hunter2")), "'security.protocol'"),
    ],
)
def test_an_option_librdkafka_rejects_raises_sink_error_without_its_value(options, named):
    # Given options librdkafka refuses, one with a secret-looking value
    sink = sink_for("127.0.0.1:1", "t", options=options)

    # When the sink opens, then it raises SinkError naming the option but not the value
    with pytest.raises(SinkError) as info:
        sink.open()
    assert named in str(info.value)
    assert "hunter2" not in str(info.value)
    sink.close()


@pytest.mark.slow
def test_close_never_raises_even_unopened_or_twice(kafka_broker_factory):
    # Given a sink on a broker that never runs, with a record stuck in its queue
    sink = sink_for(
        kafka_broker_factory().bootstrap,
        "t",
        create_topics=False,
        options=(("message.timeout.ms", "300"),),
    )
    sink.close()
    sink.open()
    assert outcomes(sink.send([event(1)])) == [Outcome.RETRY]

    # When it is closed twice, then nothing is raised
    sink.close()
    sink.close()


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (KafkaError.MSG_SIZE_TOO_LARGE, Outcome.REJECTED),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, Outcome.REJECTED),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, Outcome.REJECTED),
        (KafkaError.INVALID_RECORD, Outcome.REJECTED),
        (KafkaError._MSG_TIMED_OUT, Outcome.RETRY),
        (KafkaError._TRANSPORT, Outcome.RETRY),
        (KafkaError.NOT_LEADER_FOR_PARTITION, Outcome.RETRY),
    ],
)
def test_librdkafka_errors_map_to_permanent_or_transient_outcomes(code, outcome):
    # Given a librdkafka error, when it is classified, then it gets the expected outcome
    result = result_for(KafkaError(code))
    assert result.outcome is outcome
    assert result.error.startswith("kafka ") and "\n" not in result.error
