"""Payload formats per output (skor, envelope, CloudEvents 1.0) and routing by table.

CloudEvents are checked attribute by attribute against the 1.0 specification (required
attributes, their types and constraints) and read back with the `cloudevents` SDK."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime

import pytest
from cloudevents.v1.http import from_http, from_json
from cloudevents.v1.kafka import KafkaMessage, from_binary

from skor_bridge import formats
from skor_bridge.capture import triggers
from skor_bridge.config import OutputConfig, WebhookConfig
from skor_bridge.event import ChangeEvent
from skor_bridge.routing import Routed, matcher, route
from skor_bridge.sinks.base import DELIVERED, Sink
from skor_bridge.tools.receiver import Receiver
from tests.fixtures_kafka import consume
from tests.helpers import execute, wait_delivered

ROW = '{"id":7,"price":12.50,"big":9007199254740993,"name":"caf\\u00e9"}'
EVENT = ChangeEvent(
    id="0b7f5a6e-9a56-4a43-9b0f-6d6b7d1f9c11",
    position=42,
    schema="public",
    table="orders",
    op="UPDATE",
    data=ROW,
    key='{"id":7}',
    captured_at=1_700_000_000.123456,
)
SOURCE = "postgresql://db.example.com:5432/shop"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def test_the_default_format_is_skors_body_and_leaves_the_sink_alone():
    output = OutputConfig("o", "webhook", WebhookConfig(url="http://h/"))
    sink = Sink("o")
    assert route(sink, output, "dbname=shop") is sink
    assert formats.render(EVENT, "skor", "webhook", SOURCE) is EVENT
    assert json.loads(EVENT.body()) == {
        "data": json.loads(ROW),
        "table": "orders",
        "schema": "public",
        "op": "UPDATE",
    }


def test_envelope_has_every_documented_field_and_keeps_the_row_text():
    body = formats.render(EVENT, "envelope", "webhook", SOURCE).body()
    document = json.loads(body)
    assert list(document) == ["id", "op", "schema", "table", "data", "committed_at", "position"]
    assert document["id"] == EVENT.id and document["op"] == "UPDATE"
    assert (document["schema"], document["table"], document["position"]) == ("public", "orders", 42)
    assert document["committed_at"] == "2023-11-14T22:13:20.123456Z"
    assert b'"data": ' + ROW.encode() in body  # spliced: 12.50 and 2^53+1 stay as written


def test_cloudevents_structured_mode_against_the_specification():
    shaped = formats.render(EVENT, "cloudevents", "webhook", SOURCE)
    assert dict(shaped.headers) == {"content-type": "application/cloudevents+json"}
    document = json.loads(shaped.body())
    # REQUIRED: id, source, specversion, type: non-empty strings; specversion is "1.0"
    assert document["specversion"] == "1.0"
    assert document["id"] == EVENT.id
    assert document["source"] == SOURCE and "://" in document["source"]
    assert document["type"] == "skor.update"
    # OPTIONAL ones we set: subject, time (RFC 3339), datacontenttype, data (JSON value)
    assert document["subject"] == "public.orders"
    assert RFC3339.fullmatch(document["time"])
    assert datetime.fromisoformat(document["time"]).timestamp() == pytest.approx(
        EVENT.captured_at, abs=1e-6
    )
    assert document["datacontenttype"] == "application/json"
    assert document["data"] == json.loads(ROW)
    # Attribute names: lower-case a-z and 0-9 only
    assert all(re.fullmatch(r"[a-z0-9]{1,20}", name) for name in document)
    # And the SDK reads it, as JSON and as an HTTP request in structured mode
    for event in (from_json(shaped.body()), from_http(dict(shaped.headers), shaped.body())):
        assert event["id"] == EVENT.id and event["type"] == "skor.update"
        assert event["source"] == SOURCE and event["subject"] == "public.orders"
        assert event["specversion"] == "1.0" and event.data == json.loads(ROW)


def test_cloudevents_binary_mode_for_kafka_against_the_specification():
    shaped = formats.render(EVENT, "cloudevents", "kafka", SOURCE)
    headers = dict(shaped.headers)
    assert shaped.body() == ROW.encode()
    assert headers == {
        "ce_specversion": "1.0",
        "ce_id": EVENT.id,
        "ce_source": SOURCE,
        "ce_type": "skor.update",
        "ce_subject": "public.orders",
        "ce_time": "2023-11-14T22:13:20.123456Z",
        "content-type": "application/json",
    }
    message = KafkaMessage(
        headers={k: v.encode() for k, v in headers.items()},
        key=EVENT.key.encode(),
        value=shaped.body(),
    )
    event = from_binary(message)
    assert event["id"] == EVENT.id and event["type"] == "skor.update"
    assert event["subject"] == "public.orders" and event["source"] == SOURCE


def test_each_op_has_its_type():
    for op in ("INSERT", "UPDATE", "DELETE", "READ"):
        event = ChangeEvent(id="x", position=1, schema="s", table="t", op=op, data="{}")
        assert json.loads(formats.cloudevent(event, SOURCE))["type"] == f"skor.{op.lower()}"


def test_the_source_names_the_database_without_credentials():
    assert (
        formats.source_of("host=db.example.com port=6432 dbname=shop user=app password=s3cret")
        == "postgresql://db.example.com:6432/shop"
    )
    assert formats.source_of("postgresql://app:s3cret@db/shop") == "postgresql://db:5432/shop"


@pytest.mark.parametrize(
    ("patterns", "table", "expected"),
    [
        ([], ("public", "orders"), True),
        (["orders"], ("public", "orders"), True),
        (["orders"], ("billing", "orders"), True),
        (["orders"], ("public", "order_lines"), False),
        (["billing.*"], ("billing", "invoices"), True),
        (["billing.*"], ("public", "x"), False),
        (["public.order_*"], ("public", "order_lines"), True),
        (["public.order_*", "audit"], ("other", "audit"), True),
    ],
)
def test_table_patterns(patterns, table, expected):
    assert matcher(patterns)(*table) is expected


class Recording(Sink):
    kind = "webhook"

    def __init__(self) -> None:
        super().__init__("r")
        self.sent: list[ChangeEvent] = []

    def send(self, batch):
        self.sent.extend(batch)
        return [DELIVERED] * len(batch)


def test_events_of_other_tables_complete_as_delivered_without_being_sent():
    output = OutputConfig(
        "o", "webhook", WebhookConfig(url="http://h/"), tables=("orders",), format="envelope"
    )
    inner = Recording()
    sink = route(inner, output, "dbname=shop")
    assert isinstance(sink, Routed)
    other = ChangeEvent(id="y", position=43, schema="public", table="users", op="INSERT", data="{}")
    assert sink.send([EVENT, other]) == [DELIVERED, DELIVERED]
    assert [e.id for e in inner.sent] == [EVENT.id]
    assert json.loads(inner.sent[0].body())["position"] == 42


# -- end to end -------------------------------------------------------------------------------

TABLES = (
    "CREATE TABLE orders (id int PRIMARY KEY, total numeric);"
    "CREATE TABLE users (id int PRIMARY KEY, name text)"
)


def capture_both(dsn: str) -> None:
    execute(dsn, TABLES)
    specs = triggers.parse_config([{"table": "orders"}, {"table": "users"}])
    triggers.install(dsn, specs, "durable")


@pytest.mark.slow
def test_a_webhook_gets_cloudevents_of_its_tables_only(dsn, bridge):
    capture_both(dsn)
    with Receiver() as receiver:
        bridge(
            "--dsn",
            dsn,
            "--webhook",
            f"ce={receiver.url}",
            "--tables",
            "public.ord*",
            "--format",
            "cloudevents",
        ).wait_active()
        execute(
            dsn,
            "INSERT INTO users VALUES (1, 'a')",
            "INSERT INTO orders VALUES (1, 9.90)",
            "UPDATE orders SET total = 10.00",
            "DELETE FROM orders",
            "INSERT INTO users VALUES (2, 'b')",
        )
        assert receiver.wait_for(3)
        # Users' events are not sent, but the output moves past them
        wait_delivered(dsn, "ce", 3)
        time.sleep(0.5)
        requests = receiver.delivered()
        assert len(requests) == 3
        # Structured mode over HTTP: the CloudEvents JSON content type
        assert {r.headers["content-type"] for r in requests} == {"application/cloudevents+json"}
        events = [from_http(dict(r.headers), r.body) for r in requests]
        assert [e["type"] for e in events] == ["skor.insert", "skor.update", "skor.delete"]
        assert {e["subject"] for e in events} == {"public.orders"}
        assert all(
            e["id"] == r.headers["webhook-id"] for e, r in zip(events, requests, strict=True)
        )
        assert events[1].data == {"id": 1, "total": 10.00}


@pytest.mark.slow
def test_rabbitmq_gets_envelopes_and_kafka_binary_cloudevents(
    dsn, bridge, amqp_queue, amqp_url, kafka_broker, kafka_topic, tmp_path
):
    capture_both(dsn)
    config = tmp_path / "skor.toml"
    config.write_text(
        f'[[outputs]]\ntype = "amqp"\nname = "rabbit"\nurl = "{amqp_url}"\n'
        f'exchange = "{amqp_queue.exchange}"\nformat = "envelope"\ntables = ["users"]\n'
        f'[[outputs]]\ntype = "kafka"\nname = "stream"\nbootstrap = "{kafka_broker.bootstrap}"\n'
        f'topic = "{kafka_topic}"\nformat = "cloudevents"\n'
    )
    bridge("--dsn", dsn, "--config", str(config)).wait_active()
    execute(dsn, "INSERT INTO users VALUES (1, 'a')", "INSERT INTO orders VALUES (1, 9.90)")
    messages = amqp_queue.drain(1, timeout=30)
    assert len(messages) == 1
    _, properties, body = messages[0]
    envelope = json.loads(body)
    assert (envelope["table"], envelope["op"], envelope["data"]) == (
        "users",
        "INSERT",
        {"id": 1, "name": "a"},
    )
    assert envelope["id"] == properties.message_id and envelope["position"] >= 1
    assert RFC3339.fullmatch(envelope["committed_at"])
    wait_delivered(dsn, "stream", 2)
    records = consume(kafka_broker.bootstrap, kafka_topic, 2, timeout=30)
    assert len(records) == 2
    events = [
        from_binary(KafkaMessage(headers=r.headers, key=r.key, value=r.value)) for r in records
    ]
    assert {e["subject"] for e in events} == {"public.users", "public.orders"}
    assert all(
        e["type"] == "skor.insert" and e["source"].startswith("postgresql://") for e in events
    )
