"""What an output sends for one event: its body and the headers that describe it.

    skor         Skor's body {"data", "table", "schema", "op"}, unchanged (the default)
    envelope     {"id", "op", "schema", "table", "data", "old", "committed_at", "position"}
    cloudevents  CloudEvents 1.0: structured mode (one JSON document, content type
                 application/cloudevents+json) for webhooks and RabbitMQ; binary mode for
                 Kafka (the row as the value, the attributes as ce_* headers), as the
                 CloudEvents HTTP, AMQP and Kafka bindings describe.

CloudEvents attributes: `id` = the event id (also webhook-id and the AMQP message id),
`source` = the database (postgresql://host:port/dbname, no user or password), `type` =
`skor.<op>` (skor.insert, skor.update, skor.delete, skor.read), `subject` = schema.table,
`time` = when the change was captured, `datacontenttype` = application/json.

The row (`data`) is spliced in as PostgreSQL's `row_to_json` rendered it, never re-encoded,
so numbers and key order reach the receiver unchanged.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from skor_bridge.event import ChangeEvent

Headers = tuple[tuple[str, str], ...]

JSON = "application/json"
CLOUDEVENTS_JSON = "application/cloudevents+json"


def timestamp(event: ChangeEvent) -> str | None:
    """RFC 3339 in UTC with microseconds, or None when the capture time is unknown."""
    if not event.captured_at:
        return None
    moment = datetime.fromtimestamp(event.captured_at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _string(value: str | None) -> str:
    return json.dumps(value, ensure_ascii=False)


def envelope(event: ChangeEvent) -> bytes:
    old = event.old
    parts = [
        f'"id": {_string(event.id)}',
        f'"op": {_string(event.op)}',
        f'"schema": {_string(event.schema)}',
        f'"table": {_string(event.table)}',
        f'"data": {event.data}',
    ]
    if old is not None:
        parts.append(f'"old": {old}')
    parts += [f'"committed_at": {_string(timestamp(event))}', f'"position": {event.position}']
    return ("{" + ", ".join(parts) + "}").encode("utf-8")


def _attributes(event: ChangeEvent, source: str) -> list[tuple[str, str]]:
    attributes = [
        ("specversion", "1.0"),
        ("id", event.id),
        ("source", source),
        ("type", f"skor.{event.op.lower()}"),
        ("subject", event.qualified_table),
    ]
    moment = timestamp(event)
    if moment is not None:
        attributes.append(("time", moment))
    return attributes


def cloudevent(event: ChangeEvent, source: str) -> bytes:
    """Structured mode: the whole event as one JSON document."""
    parts = [f'"{name}": {_string(value)}' for name, value in _attributes(event, source)]
    parts += [f'"datacontenttype": "{JSON}"', f'"data": {event.data}']
    return ("{" + ", ".join(parts) + "}").encode("utf-8")


def cloudevent_headers(event: ChangeEvent, source: str) -> Headers:
    """Binary mode (Kafka): the attributes as ce_* headers; the value is the row."""
    return (
        *((f"ce_{name}", value) for name, value in _attributes(event, source)),
        ("content-type", JSON),
    )


def render(event: ChangeEvent, fmt: str, kind: str, source: str) -> ChangeEvent:
    """The event as `fmt` for an output of `kind`: its body in `raw_body`, and the headers
    the sink adds (content type, ce_* attributes) in `headers`."""
    if fmt == "envelope":
        return replace(event, raw_body=envelope(event), headers=(("content-type", JSON),))
    if fmt == "cloudevents":
        if kind == "kafka":
            return replace(
                event,
                raw_body=event.data.encode("utf-8"),
                headers=cloudevent_headers(event, source),
            )
        return replace(
            event, raw_body=cloudevent(event, source), headers=(("content-type", CLOUDEVENTS_JSON),)
        )
    return event


def source_of(dsn: str) -> str:
    """The database as a CloudEvents source: postgresql://host:port/dbname, no secrets."""
    from psycopg2.extensions import parse_dsn

    params = parse_dsn(dsn)
    host = params.get("host") or "localhost"
    if host.startswith("/"):
        host = "localhost"
    port = params.get("port") or "5432"
    return f"postgresql://{host}:{port}/{params.get('dbname') or params.get('user') or ''}"
