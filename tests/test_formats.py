"""Payload formats per output (skor, envelope, CloudEvents 1.0) and routing by table.

CloudEvents are checked attribute by attribute against the 1.0 specification (required
attributes, their types and constraints) and read back with the `cloudevents` SDK."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import replace
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
from tests.helpers import bodies, execute, scalar, wait_delivered

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


def test_an_envelope_splices_old_after_data_only_when_known():
    old_row = '{"id":7,"price":12.00,"name":"caf\\u00e9"}'
    body = formats.render(replace(EVENT, old=old_row), "envelope", "webhook", SOURCE).body()
    document = json.loads(body)
    assert list(document) == [
        "id", "op", "schema", "table", "data", "old", "committed_at", "position"
    ]  # fmt: skip
    assert f'"data": {ROW}, "old": {old_row}, '.encode() in body  # 12.00 stays as written
    # Neither Skor's body nor CloudEvents carry it
    skor = json.loads(replace(EVENT, old=old_row).body())
    assert list(skor) == ["data", "table", "schema", "op"] and skor["data"] == json.loads(ROW)
    cloud = json.loads(
        formats.render(replace(EVENT, old=old_row), "cloudevents", "webhook", SOURCE).body()
    )
    assert "old" not in cloud and cloud["data"] == json.loads(ROW)


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


# -- the envelope's "old": the row before an UPDATE ---------------------------------------------

OLD_DDL = (
    "CREATE TYPE pair AS (a int, b text);"
    "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric, p pair, big text,"
    " secret text);"
    "ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;"  # TOASTed, uncompressed
    "CREATE TABLE notes (body text);"  # no primary key
    "CREATE TABLE plain (id int PRIMARY KEY, v int)"
)
#: Restricted columns: `secret` must never reach an envelope, in `data` or in `old`.
OLD_TRIGGERS = [
    {"table": "items", "columns": ["id", "name", "price", "p", "big"], "old": True},
    {"table": "notes", "old": True},
    {"table": "plain"},  # without "old": its UPDATEs have none
]
ITEM_COLUMNS = "id, name, price, p, big"


def _row_json(dsn: str, sql: str) -> str:
    """row_to_json of one row, as text: what `data` and `old` must splice in unchanged."""
    return scalar(dsn, f"SELECT row_to_json(r)::text FROM ({sql}) r")


def _position(body: bytes) -> int:
    return int(json.loads(body)["position"])


def _old_scenario(dsn: str, bridge, tmp_path, mode: str) -> None:
    execute(dsn, OLD_DDL)
    big = "".join(f"{n:08x}" for n in range(2500))  # 20 kB, stored out of line
    execute(
        dsn,
        "INSERT INTO items VALUES (1, 'a', 9.90, ROW(1, 'x'), %(big)s, 's1')",
        "INSERT INTO notes VALUES ('first')",
        "INSERT INTO plain VALUES (1, 1)",
        params={"big": big},
    )
    triggers_file = tmp_path / "triggers.json"
    triggers_file.write_text(json.dumps(OLD_TRIGGERS))
    installed = subprocess.run(
        [sys.executable, "-m", "skor_bridge", "triggers", "install", str(triggers_file)]
        + ["--dsn", dsn, "--mode", mode],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert installed.returncode == 0, installed.stderr
    assert "public.items: insert, update, delete; old row on update" in installed.stdout
    config = tmp_path / "skor.toml"
    with Receiver() as envelopes, Receiver() as skor:
        config.write_text(
            f'[[outputs]]\ntype = "webhook"\nname = "env"\nurl = "{envelopes.url}"\n'
            'format = "envelope"\n'
            f'[[outputs]]\ntype = "webhook"\nname = "skor"\nurl = "{skor.url}"\n'
        )
        process = bridge("--dsn", dsn, "--config", str(config), "--start-from", "earliest")
        process.wait_active()
        before = _row_json(dsn, f"SELECT {ITEM_COLUMNS} FROM items WHERE id = 1")
        # (the composite's old value first appears here, in the old row: WAL mode asks the
        # server to render it)
        execute(
            dsn,
            "UPDATE items SET name = 'b', price = 10.00, p = ROW(3, 'z'), secret = 's2'"
            " WHERE id = 1",
        )
        middle = _row_json(dsn, f"SELECT {ITEM_COLUMNS} FROM items WHERE id = 1")
        execute(dsn, "UPDATE items SET p = ROW(2, 'y') WHERE id = 1")  # only the composite
        after = _row_json(dsn, f"SELECT {ITEM_COLUMNS} FROM items WHERE id = 1")
        note = _row_json(dsn, "SELECT body FROM notes")
        execute(
            dsn,
            "UPDATE notes SET body = 'second'",
            "INSERT INTO items VALUES (2, 'n', 1, NULL, NULL, 's')",
            "UPDATE items SET id = 3 WHERE id = 2",  # a key change: DELETE then INSERT
            "DELETE FROM items WHERE id = 3",
            "UPDATE plain SET v = 2",
        )
        assert envelopes.wait_for(8, timeout=60), process.log
        assert skor.wait_for(8, timeout=60), process.log
        time.sleep(0.3)
        # Rows are delivered in parallel lanes: put them in log order
        sent = sorted((r.body for r in envelopes.delivered()), key=lambda b: _position(b))
        documents = [json.loads(body) for body in sent]
        ops = [(d["table"], d["op"]) for d in documents]
        assert ops == [
            ("items", "UPDATE"),
            ("items", "UPDATE"),
            ("notes", "UPDATE"),
            ("items", "INSERT"),
            ("items", "DELETE"),
            ("items", "INSERT"),
            ("items", "DELETE"),
            ("plain", "UPDATE"),
        ]
        # An UPDATE's "old" is row_to_json of the row before it, with the configured
        # columns only, spliced in byte for byte (9.90 stays 9.90, the TOASTed value whole)
        assert f'"data": {middle}, "old": {before}, '.encode() in sent[0]
        assert f'"data": {after}, "old": {middle}, '.encode() in sent[1]
        assert documents[0]["old"]["big"] == big and "secret" not in documents[0]["old"]
        assert documents[0]["old"]["p"] == {"a": 1, "b": "x"}
        assert documents[1]["old"]["p"] == {"a": 3, "b": "z"}
        assert documents[2]["old"] == json.loads(note) == {"body": "first"}
        assert documents[2]["data"] == {"body": "second"}
        # INSERT and DELETE carry no "old" (a DELETE's `data` is the old row), nor do the
        # two halves of a key change, nor an UPDATE of a table without "old" in its config
        assert all("old" not in d for d in documents[3:])
        assert list(documents[0]) == [
            "id", "op", "schema", "table", "data", "old", "committed_at", "position"
        ]  # fmt: skip
        # Skor's body is unchanged: no "old" there
        for body in bodies(skor):
            assert list(body) == ["data", "table", "schema", "op"]
        updates = [b["data"] for b in bodies(skor) if b["table"] == "items" and b["op"] == "UPDATE"]
        assert updates == [json.loads(middle), json.loads(after)]
        assert process.stop() == 0


@pytest.mark.slow
def test_an_update_envelope_carries_the_old_row_in_trigger_mode(dsn, bridge, tmp_path):
    _old_scenario(dsn, bridge, tmp_path, "durable")


@pytest.mark.slow
def test_an_update_envelope_carries_the_old_row_in_wal_mode(wal_dsn, bridge, tmp_path):
    _old_scenario(wal_dsn, bridge, tmp_path, "wal")
