"""Rows of the event log and the tables shaped like it (dead letters, redeliveries): the
column list they share and how one becomes a ChangeEvent."""

from __future__ import annotations

from typing import Any

from skor_bridge.event import ChangeEvent

#: Selected in this order and turned into a ChangeEvent by `event_from_row`. All three
#: tables have `old` (migration v070): a dead letter or parked UPDATE sent again carries
#: the same "old" as the first time.
EVENT_COLUMNS = (
    "coalesce(pos, 0), event_id::text, extract(epoch FROM captured_at)::float8,"
    " schema_name, table_name, op, row_key, data, old"
)


def event_from_row(row: tuple[Any, ...], outputs: list[str] | None = None) -> ChangeEvent:
    pos, event_id, captured_at, schema, table, op, key, data, old = row
    return ChangeEvent(
        id=event_id,
        position=pos,
        schema=schema,
        table=table,
        op=op,
        data=data,
        key=key,
        captured_at=captured_at,
        outputs=tuple(outputs) if outputs is not None else None,
        old=old,
    )
