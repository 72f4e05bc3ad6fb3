"""End to end through RabbitMQ and Kafka, alone and together (fan-out)."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict

import pika.exceptions
import pytest

from skor_bridge.tools.receiver import Receiver
from tests.fixtures_amqp import amqp_channel, start_rabbitmq, stop_rabbitmq, wait_for_rabbitmq
from tests.fixtures_kafka import consume
from tests.helpers import execute, short_retry_config, wait_delivered

TABLE = "CREATE TABLE items (id int PRIMARY KEY, name text, qty int DEFAULT 0)"


@pytest.mark.slow
def test_inserts_updates_and_deletes_reach_rabbitmq_with_routing_keys_and_properties(
    dsn, capture_table, bridge, amqp_queue, amqp_url
):
    # Given a bridge publishing to a fresh exchange
    capture_table(TABLE, "items")
    bridge("--dsn", dsn, "--amqp", amqp_url, "--amqp-exchange", amqp_queue.exchange)
    # When 1000 rows are inserted, 100 updated and 50 deleted
    execute(
        dsn,
        "INSERT INTO items (id, name) SELECT g, 'n' || g FROM generate_series(1, 1000) g",
        "UPDATE items SET qty = 1 WHERE id <= 100",
        "DELETE FROM items WHERE id > 950",
    )
    messages = amqp_queue.drain(1150, timeout=60)
    # Then every change arrived once, with the documented routing key and properties
    assert len(messages) == 1150
    keys = defaultdict(int)
    for method, props, body in messages:
        event = json.loads(body)
        keys[method.routing_key] += 1
        assert method.routing_key == f"public.items.{event['op'].lower()}"
        assert props.content_type == "application/json" and props.delivery_mode == 2
        assert {k: props.headers[k] for k in ("schema", "table", "op")} == {
            "schema": "public",
            "table": "items",
            "op": event["op"],
        }
        assert len(props.message_id) == 36
    assert dict(keys) == {
        "public.items.insert": 1000,
        "public.items.update": 100,
        "public.items.delete": 50,
    }
    assert len({p.message_id for _, p, _ in messages}) == 1150
    # And per row, the order is insert then update or delete
    ops = defaultdict(list)
    for _, _, body in messages:
        event = json.loads(body)
        ops[event["data"]["id"]].append(event["op"])
    assert ops[1] == ["INSERT", "UPDATE"] and ops[1000] == ["INSERT", "DELETE"]


@pytest.mark.slow
def test_inserts_and_repeated_updates_reach_kafka_one_partition_per_row_in_order(
    dsn, capture_table, bridge, kafka_broker, kafka_topic
):
    # Given a bridge producing to one topic for the table
    capture_table(TABLE, "items")
    process = bridge(
        "--dsn", dsn, "--kafka", f"kafka={kafka_broker.bootstrap}", "--kafka-topic", kafka_topic
    )
    # When 500 rows are inserted and each is updated 3 times
    execute(
        dsn,
        "INSERT INTO items (id, name) SELECT g, 'n' FROM generate_series(1, 500) g",
        *["UPDATE items SET qty = qty + 1" for _ in range(3)],
    )
    wait_delivered(dsn, "kafka", 2000)
    messages = consume(kafka_broker.bootstrap, kafka_topic, 2000, timeout=60)
    # Then there is one key per row, each key in one partition, updates in order
    assert len(messages) == 2000, process.log
    by_key: dict[bytes, list] = defaultdict(list)
    for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
        by_key[m.key].append(m)
    assert len(by_key) == 500
    for key, msgs in by_key.items():
        assert len({m.partition for m in msgs}) == 1
        events = [json.loads(m.value) for m in msgs]
        assert json.loads(key) == {"id": events[0]["data"]["id"]}
        assert [e["data"]["qty"] for e in events] == [0, 1, 2, 3]
        assert msgs[0].headers["op"] == b"INSERT" and msgs[1].headers["op"] == b"UPDATE"
    assert b'{"id":1}' in by_key


@pytest.mark.slow
def test_fan_out_sends_each_event_to_every_output_with_the_same_id_position_and_time(
    dsn, capture_table, bridge, amqp_queue, amqp_url, kafka_broker, kafka_topic, receiver
):
    # Given one bridge with a webhook, RabbitMQ and Kafka
    capture_table(TABLE, "items")
    bridge(
        "--dsn",
        dsn,
        "--webhook",
        receiver.url,
        "--amqp",
        amqp_url,
        "--amqp-exchange",
        amqp_queue.exchange,
        "--kafka",
        f"kafka={kafka_broker.bootstrap}",
        "--kafka-topic",
        kafka_topic,
    )
    # When 200 rows are inserted
    execute(dsn, "INSERT INTO items (id, name) SELECT g, 'n' FROM generate_series(1, 200) g")
    # Then each output got all 200, and an event has the same id everywhere
    assert receiver.wait_for(200)
    wait_delivered(dsn, "kafka", 200)
    webhook = {
        r.headers["webhook-id"]: (
            r.body,
            (r.headers["webhook-position"], r.headers["webhook-captured-at"]),
        )
        for r in receiver.delivered()
    }
    amqp = {
        p.message_id: (body, (str(p.headers["position"]), p.headers["captured_at"]))
        for _, p, body in amqp_queue.drain(200, timeout=30)
    }
    kafka = {
        m.headers["event-id"].decode(): (
            m.value,
            (m.headers["position"].decode(), m.headers["captured-at"].decode()),
        )
        for m in consume(kafka_broker.bootstrap, kafka_topic, 200, timeout=30)
    }
    assert len(webhook) == 200
    assert (
        {i: body for i, (body, _) in webhook.items()}
        == {i: body for i, (body, _) in amqp.items()}
        == {i: body for i, (body, _) in kafka.items()}
    )
    # And every output carries the event's log position and capture time, the same
    # everywhere, so a receiver can keep the newest version of a row
    assert (
        {i: meta for i, (_, meta) in webhook.items()}
        == {i: meta for i, (_, meta) in amqp.items()}
        == {i: meta for i, (_, meta) in kafka.items()}
    )
    positions = sorted(int(position) for position, _ in (m for _, m in webhook.values()))
    assert positions == list(range(positions[0], positions[0] + 200))
    assert all(
        at.endswith("Z") and at.startswith("20") for _, at in (m for _, m in webhook.values())
    )


@pytest.mark.slow
def test_a_failing_webhook_does_not_hold_up_rabbitmq_and_catches_up_in_order(
    dsn, capture_table, bridge, amqp_queue, amqp_url, tmp_path
):
    # Given a webhook that answers 503 until told otherwise, and RabbitMQ
    failing = threading.Event()
    failing.set()
    capture_table(TABLE, "items")
    with Receiver(respond=lambda r: 503 if failing.is_set() else 200) as receiver:
        bridge(
            "--dsn",
            dsn,
            "--webhook",
            receiver.url,
            "--amqp",
            amqp_url,
            "--amqp-exchange",
            amqp_queue.exchange,
            "--config",
            short_retry_config(tmp_path, max_backoff=0.5),
        )
        # When rows are written and updated while the webhook fails
        execute(
            dsn,
            "INSERT INTO items (id, name) SELECT g, 'a' FROM generate_series(1, 300) g",
            "UPDATE items SET qty = 1 WHERE id <= 50",
        )
        # Then RabbitMQ receives everything meanwhile
        assert len(amqp_queue.drain(350, timeout=30)) == 350
        assert receiver.wait_for(1, timeout=0.5) is False
        # And when the webhook recovers, it catches up, in order per row
        failing.clear()
        assert receiver.wait_for(350, timeout=30)
        per_row = defaultdict(list)
        for r in receiver.delivered():
            event = json.loads(r.body)
            per_row[event["data"]["id"]].append(event["op"])
        assert all(ops == ["INSERT", "UPDATE"] for i, ops in per_row.items() if i <= 50)
        assert len(per_row) == 300


@pytest.mark.slow
@pytest.mark.serial
def test_rabbitmq_stopped_and_started_mid_stream_loses_nothing(
    dsn, capture_table, bridge, make_amqp_queue, amqp_url, tmp_path
):
    # Given a durable queue (it must survive the broker restart) and a running bridge
    queue = make_amqp_queue(durable=True)
    capture_table(TABLE, "items")
    bridge(
        "--dsn",
        dsn,
        "--amqp",
        amqp_url,
        "--amqp-exchange",
        queue.exchange,
        "--config",
        short_retry_config(tmp_path, max_backoff=1),
    )
    execute(dsn, "INSERT INTO items (id, name) SELECT g, 'a' FROM generate_series(1, 300) g")
    time.sleep(0.5)
    # When RabbitMQ stops while 300 more rows are written, then starts again
    stop_rabbitmq()
    try:
        execute(dsn, "INSERT INTO items (id, name) SELECT g, 'b' FROM generate_series(301, 600) g")
        time.sleep(2)
    finally:
        start_rabbitmq()
        wait_for_rabbitmq()
    # Then every row arrives (duplicates allowed: at least once)
    deadline = time.monotonic() + 60
    seen: set[int] = set()
    while time.monotonic() < deadline and len(seen) < 600:
        for _, _, body in queue.drain(timeout=2):
            seen.add(json.loads(body)["data"]["id"])
    assert seen == set(range(1, 601))


@pytest.mark.slow
def test_events_written_while_the_exchange_was_deleted_arrive_once_it_is_restored(
    dsn, capture_table, bridge, make_amqp_queue, amqp_url, tmp_path
):
    # Given a bridge publishing to an exchange with one bound queue
    queue = make_amqp_queue(durable=True)
    capture_table(TABLE, "items")
    process = bridge(
        "--dsn",
        dsn,
        "--amqp",
        amqp_url,
        "--amqp-exchange",
        queue.exchange,
        "--config",
        short_retry_config(tmp_path, 0.5),
    )
    execute(dsn, "INSERT INTO items (id, name) SELECT g, 'a' FROM generate_series(1, 10) g")
    assert len(queue.drain(10, timeout=30)) == 10
    # When someone deletes the exchange (and its queue) and rows are written meanwhile
    queue.delete()
    execute(dsn, "INSERT INTO items (id, name) SELECT g, 'b' FROM generate_series(11, 60) g")
    # Then the output fails (it does not re-create an empty exchange and count the events
    # as delivered while nobody receives them)
    process.wait_for_log("does not exist")
    time.sleep(2)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker), amqp_channel(amqp_url) as channel:
        channel.exchange_declare(queue.exchange, "topic", passive=True)
    assert "unroutable" not in process.log
    # When the exchange is restored with its binding
    queue.declare()
    # Then every event written while it was missing arrives
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(seen) < 50:
        seen |= {json.loads(body)["data"]["id"] for _, _, body in queue.drain(timeout=2)}
    assert seen == set(range(11, 61)), process.log


@pytest.mark.slow
def test_kafka_broker_not_running_at_start_is_retried_until_it_comes_up(
    dsn, capture_table, bridge, kafka_broker_factory, kafka_topic, tmp_path
):
    # Given a broker address where nothing listens yet
    broker = kafka_broker_factory()
    capture_table(TABLE, "items")
    process = bridge(
        "--dsn",
        dsn,
        "--kafka",
        f"kafka={broker.bootstrap}",
        "--kafka-topic",
        kafka_topic,
        "--kafka-option",
        "message.timeout.ms=2000",
        "--config",
        short_retry_config(tmp_path, max_backoff=1),
    )
    execute(dsn, "INSERT INTO items (id, name) SELECT g, 'a' FROM generate_series(1, 100) g")
    time.sleep(3)
    # When the broker starts
    broker.start()
    # Then every row arrives
    wait_delivered(dsn, "kafka", 100)
    messages = consume(broker.bootstrap, kafka_topic, 100, timeout=60)
    assert {json.loads(m.value)["data"]["id"] for m in messages} == set(range(1, 101)), process.log


@pytest.mark.slow
def test_notify_mode_feeds_rabbitmq_the_same_way(dsn, capture_table, bridge, amqp_queue, amqp_url):
    capture_table(TABLE, "items", mode="notify")
    bridge(
        "--dsn", dsn, "--mode", "notify", "--amqp", amqp_url, "--amqp-exchange", amqp_queue.exchange
    ).wait_for_log("listening on channel")
    execute(dsn, "INSERT INTO items (id, name) VALUES (1, 'a')")
    [(method, props, body)] = amqp_queue.drain(1, timeout=20)
    assert method.routing_key == "public.items.insert"
    assert json.loads(body) == {
        "table": "items",
        "schema": "public",
        "op": "INSERT",
        "data": {"id": 1, "name": "a", "qty": 0},
    }


@pytest.mark.slow
def test_a_toml_config_file_describes_several_outputs(
    dsn, capture_table, bridge, amqp_queue, amqp_url, tmp_path
):
    # Given two webhooks and RabbitMQ described in a TOML file, the DSN from SKOR_DSN
    capture_table(TABLE, "items")
    with Receiver() as first, Receiver() as second:
        config = tmp_path / "skor.toml"
        config.write_text(f"""
[[outputs]]
type = "webhook"
name = "first"
url = "{first.url}"
headers = {{ X-Which = "first" }}

[[outputs]]
type = "webhook"
name = "second"
url = "{second.url}"

[[outputs]]
type = "amqp"
url = "{amqp_url}"
exchange = "{amqp_queue.exchange}"
routing_key = "cdc.{{table}}"
""")
        bridge("--config", str(config), env={"SKOR_DSN": dsn})
        execute(dsn, "INSERT INTO items (id, name) SELECT g, 'a' FROM generate_series(1, 20) g")
        # Then every output receives the 20 events
        assert first.wait_for(20) and second.wait_for(20)
        assert first.requests[0].headers["x-which"] == "first"
        messages = amqp_queue.drain(20, timeout=20)
        assert {m.routing_key for m, _, _ in messages} == {"cdc.items"}
