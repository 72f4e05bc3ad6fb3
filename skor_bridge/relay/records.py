"""Kafka records <-> change events.

The bridge's Kafka output writes one record per event: key = the row's primary key (or
"schema.table"), value = the body `run` would POST, headers event-id, schema, table, op.
The relay POSTs that value unchanged, so a webhook behind a relay receives byte for byte
what it would receive from `run`. A bridge output in the `cloudevents` format writes Kafka's
binary mode (the row as the value, the attributes as `ce_*` headers); the relay turns that
into HTTP's binary mode (`ce-*` headers and the record's content type), so CloudEvents
receivers read the same event either way. `webhook-id` is the event id the bridge gave the
event: a record delivered again (after a crash or a rebalance) keeps its id, so receivers
deduplicate it as they would a retry.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING

from skor_bridge.event import ChangeEvent
from skor_bridge.relay.partitions import Work

if TYPE_CHECKING:
    from confluent_kafka import Message

#: Headers the relay adds to a record it writes to the dead-letter topic.
DEAD_LETTER_HEADERS = (
    "dlq-error",
    "dlq-attempts",
    "dlq-output",
    "dlq-original-topic",
    "dlq-original-partition",
    "dlq-original-offset",
)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def headers_of(message: Message) -> list[tuple[str, bytes]]:
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [
        (name, value.encode() if isinstance(value, str) else (value or b""))
        for name, value in pairs
    ]


def work_from(message: Message) -> Work:
    """The Work for one consumed record (not an error message)."""
    topic = message.topic() or ""
    partition = message.partition() or 0
    offset = message.offset() or 0
    headers = headers_of(message)
    named = {name: value for name, value in headers}
    raw_key, raw_value = message.key(), message.value()
    key = raw_key.encode() if isinstance(raw_key, str) else raw_key
    value = raw_value.encode() if isinstance(raw_value, str) else raw_value
    # A record not written by the bridge has no event id: its coordinates are as stable
    # across redeliveries, which is all webhook-id needs.
    event_id = _text(named.get("event-id") or named.get("ce_id")) or f"{topic}-{partition}-{offset}"
    _, stamp = message.timestamp()
    event = ChangeEvent(
        id=event_id,
        position=_position(named.get("position"), offset),
        schema=_text(named.get("schema")),
        table=_text(named.get("table")) or topic,
        op=_text(named.get("op")),
        data=_data(value),
        key=_text(key) if key is not None else None,
        captured_at=_captured_at(named.get("captured-at"), stamp),
        raw_body=value if value is not None else b"null",
        headers=http_headers(headers),
    )
    return Work(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        event=event,
        value=value,
        headers=headers,
    )


def http_headers(headers: list[tuple[str, bytes]]) -> tuple[tuple[str, str], ...]:
    """A record's CloudEvents binary-mode headers as HTTP binary mode has them: `ce_id` is
    `ce-id` (CloudEvents' Kafka and HTTP bindings), `content-type` stays the content type."""
    mapped: list[tuple[str, str]] = []
    for name, value in headers:
        if name.startswith("ce_"):
            mapped.append(("ce-" + name[3:], _text(value)))
        elif name.lower() == "content-type":
            mapped.append(("Content-Type", _text(value)))
    return tuple(mapped)


def _position(header: bytes | None, offset: int) -> int:
    """The bridge's log position (sent on as webhook-position, as `run` does); the offset
    for a record that does not carry one."""
    try:
        return int(_text(header)) if header else offset
    except ValueError:
        return offset


def _captured_at(header: bytes | None, stamp: int | None) -> float:
    """When the bridge captured the change (latency metrics, webhook-captured-at); else the
    record's own timestamp."""
    text = _text(header)
    if text:
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return stamp / 1000 if stamp and stamp > 0 else 0.0


def _data(value: bytes | None) -> str:
    """The row as JSON text, for payload formats that rebuild the body; the Skor body's
    `data` member when the value is one, else the whole value."""
    if not value:
        return "null"
    try:
        body = json.loads(value)
    except ValueError:
        return json.dumps(value.decode("utf-8", "replace"))
    if isinstance(body, dict) and "data" in body:
        return json.dumps(body["data"], ensure_ascii=False, separators=(",", ":"))
    return value.decode("utf-8", "replace")


def dead_letter_headers(
    work: Work, output: str, error: str, attempts: int
) -> list[tuple[str, bytes]]:
    """The original headers, then why and where from (see DEAD_LETTER_HEADERS)."""
    added = (error, str(attempts), output, work.topic, str(work.partition), str(work.offset))
    return [
        *work.headers,
        *((name, value.encode()) for name, value in zip(DEAD_LETTER_HEADERS, added, strict=True)),
    ]
