"""`skor-bridge events`: list an output's events, retry dead letters, replay delivered events.

An event's status for one output:

    pending     in the log after the output's position (not confirmed yet), or parked
                (a row that kept failing, set aside so the position could move on), and not
                a dead letter; `status` counts every event after the position instead,
                since the position passes a dead letter only once the events before it do
    delivered   in the log at or before the position, neither a dead letter nor parked
    dead        given up on; kept in skor.dead_letters with a copy of the event
    retry       a dead letter an operator queued again; back to `delivered` once it is

Retry and replay copy events into skor.redeliveries with their original event ids, so a
receiver that deduplicates on `webhook-id` (or the message id) recognises them.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from skor_bridge.errors import ConfigError
from skor_bridge.ops import output_position

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from psycopg2.extensions import connection, cursor

STATUSES = ("dead", "retry", "pending", "delivered")

#: Events copied per transaction by a replay; each chunk briefly blocks the worker's
#: deletes of finished redeliveries, so chunks stay small.
REPLAY_CHUNK = 2000

_RELATIVE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

# Filters shared by every query; `e` is the event-shaped table (log or dead letters).
_EVENT_FILTER = """
    (%(schema)s::text IS NULL OR e.schema_name = %(schema)s)
    AND (%(table)s::text IS NULL OR e.table_name = %(table)s)
    AND (%(since)s::timestamptz IS NULL OR e.captured_at >= %(since)s)
    AND (%(until)s::timestamptz IS NULL OR e.captured_at < %(until)s)
"""

# A log event is delivered or pending (by position) unless it is a dead letter that is not
# (yet) delivered again, or parked (listed from its copy in skor.redeliveries). A backfill's
# READ limited to other outputs (`outputs`) is neither for this one: never listed or
# replayed to it, as the feeds never sent it there.
_SETTLED_BY_POSITION = """
    (e.outputs IS NULL OR o.name = ANY(e.outputs))
    AND NOT EXISTS (SELECT 1 FROM skor.dead_letters d WHERE d.output = o.name
                AND d.event_id = e.event_id AND d.status <> 'delivered')
    AND NOT EXISTS (SELECT 1 FROM skor.redeliveries r WHERE r.output = o.name
                    AND r.event_id = e.event_id AND r.reason = 'parked')
"""

_COLUMNS = "e.pos, e.event_id::text, e.schema_name, e.table_name, e.op, e.captured_at"

_LIST = {
    "pending": f"""
        SELECT o.name, 'pending', {_COLUMNS}, NULL::int, NULL::text
        FROM skor.outputs o JOIN skor.log e ON e.pos > o.position
        WHERE (%(output)s::text IS NULL OR o.name = %(output)s) AND {_EVENT_FILTER}
            AND {_SETTLED_BY_POSITION}
        ORDER BY e.pos DESC, o.name LIMIT %(limit)s""",
    "delivered": f"""
        SELECT o.name, 'delivered', {_COLUMNS}, NULL::int, NULL::text
        FROM skor.outputs o JOIN skor.log e ON e.pos <= o.position
        WHERE (%(output)s::text IS NULL OR o.name = %(output)s) AND {_EVENT_FILTER}
            AND {_SETTLED_BY_POSITION}
        ORDER BY e.pos DESC, o.name LIMIT %(limit)s""",
    "parked": f"""
        SELECT e.output, 'pending', {_COLUMNS}, NULL::int, NULL::text
        FROM skor.redeliveries e
        WHERE e.reason = 'parked' AND (%(output)s::text IS NULL OR e.output = %(output)s)
            AND {_EVENT_FILTER}
        ORDER BY e.id DESC LIMIT %(limit)s""",
    "letters": f"""
        SELECT e.output, e.status, {_COLUMNS}, e.attempts, e.last_error
        FROM skor.dead_letters e
        WHERE e.status = %(status)s AND (%(output)s::text IS NULL OR e.output = %(output)s)
            AND {_EVENT_FILTER}
        ORDER BY e.captured_at DESC, e.pos DESC LIMIT %(limit)s""",
}

# Marking the letters and queueing their copies happen in one statement, so a letter is
# never 'retry' without a redelivery (or queued twice: only 'dead' ones are picked).
# A dead letter is superseded when its row (same table and key) has a newer event the
# output delivered: one after it in the log, at or before the output's position, not itself
# dead or parked, and meant for that output; or a newer dead letter of the row that a retry
# delivered. Sending the old version after the new one would leave the receiver stale. A
# row without a key, or an event the log no longer holds, is never judged superseded.
_SUPERSEDED = """(d.row_key IS NOT NULL AND d.pos IS NOT NULL AND (
    EXISTS (
        SELECT FROM skor.outputs o JOIN skor.log e ON e.pos > d.pos AND e.pos <= o.position
        WHERE o.name = d.output AND e.schema_name = d.schema_name
          AND e.table_name = d.table_name AND e.row_key = d.row_key
          AND (e.outputs IS NULL OR d.output = ANY(e.outputs))
          AND NOT EXISTS (SELECT FROM skor.dead_letters x WHERE x.output = d.output
                          AND x.event_id = e.event_id AND x.status <> 'delivered')
          AND NOT EXISTS (SELECT FROM skor.redeliveries r WHERE r.output = d.output
                          AND r.event_id = e.event_id AND r.reason = 'parked'))
    OR EXISTS (
        SELECT FROM skor.dead_letters x WHERE x.output = d.output AND x.status = 'delivered'
          AND x.schema_name = d.schema_name AND x.table_name = d.table_name
          AND x.row_key = d.row_key AND x.pos > d.pos)))"""

_RETRY_CHOSEN = """d.status = 'dead' AND (%(output)s::text IS NULL OR d.output = %(output)s)
        AND (%(ids)s::uuid[] IS NULL OR d.event_id = ANY(%(ids)s::uuid[]))"""

_RETRY = f"""
WITH chosen AS (
    UPDATE skor.dead_letters d SET status = 'retry'
    WHERE {_RETRY_CHOSEN} AND (%(include_superseded)s OR NOT {_SUPERSEDED})
    RETURNING d.*
)
INSERT INTO skor.redeliveries (output, reason, pos, event_id, captured_at, schema_name,
                               table_name, op, row_key, data, old)
SELECT output, 'retry', pos, event_id, captured_at, schema_name, table_name, op, row_key, data,
       old
FROM chosen ORDER BY output, pos NULLS LAST, captured_at
"""

_SKIPPED = f"SELECT count(*) FROM skor.dead_letters d WHERE {_RETRY_CHOSEN} AND {_SUPERSEDED}"

_REPLAY_COUNT = f"""
SELECT count(*) FROM skor.outputs o JOIN skor.log e ON e.pos <= %(upto)s
WHERE o.name = %(output)s AND {_EVENT_FILTER} AND {_SETTLED_BY_POSITION}
"""

_REPLAY_CHUNK = f"""
WITH chunk AS (
    SELECT e.* FROM skor.outputs o JOIN skor.log e ON e.pos > %(after)s AND e.pos <= %(upto)s
    WHERE o.name = %(output)s AND {_EVENT_FILTER} AND {_SETTLED_BY_POSITION}
    ORDER BY e.pos LIMIT %(chunk)s
), queued AS (
    INSERT INTO skor.redeliveries (output, reason, pos, event_id, captured_at, schema_name,
                                   table_name, op, row_key, data, old)
    SELECT %(output)s, 'replay', pos, event_id, captured_at, schema_name, table_name, op,
           row_key, data, old
    FROM chunk ORDER BY pos
    RETURNING pos
)
SELECT count(*), max(pos) FROM queued
"""

# The worker reads redeliveries by increasing id. Ids are drawn before commit, so two
# transactions inserting at once could commit out of id order and the worker would skip
# the late one; serialising the inserters keeps id order equal to commit order. The mode
# lets the worker keep reading, and only waits its deletes for one short transaction.
_SERIALISE = "LOCK TABLE skor.redeliveries IN SHARE ROW EXCLUSIVE MODE"


@dataclass(frozen=True)
class EventRow:
    output: str
    status: str
    position: int | None
    event_id: str
    schema: str
    table: str
    op: str
    captured_at: datetime
    #: Known for dead letters only.
    attempts: int | None
    last_error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "status": self.status,
            "id": self.event_id,
            "position": self.position,
            "schema": self.schema,
            "table": self.table,
            "op": self.op,
            "captured_at": self.captured_at.isoformat(),
            "attempts": self.attempts,
            "last_error": self.last_error,
        }


@dataclass(frozen=True)
class EventFilter:
    output: str | None = None
    #: One of STATUSES, or None for all of them.
    status: str | None = None
    #: (schema or None, table)
    table: tuple[str | None, str] | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100

    def params(self) -> dict[str, Any]:
        schema, table = self.table if self.table else (None, None)
        return {
            "output": self.output,
            "schema": schema,
            "table": table,
            "since": self.since,
            "until": self.until,
            "limit": self.limit,
        }


# -- parsing operator input ------------------------------------------------------------------


#: The earliest time a --since or --until means: nothing was captured before it, and
#: larger ranges ("99999999999d ago", year 1) overflow Python's and PostgreSQL's dates.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(text: str, option: str = "since", now: datetime | None = None) -> datetime:
    """ISO-8601 ('2024-05-01T12:00:00Z'; without an offset, local time) or a time ago
    ('90s', '10m', '2h', '7d', '1w'). Anything before EARLIEST means EARLIEST."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.fullmatch(text)
    if match:
        try:
            return max(
                EARLIEST, now - timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2].lower()])
            )
        except OverflowError:
            return EARLIEST
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"{option}: expected ISO-8601 (2024-05-01T12:00:00Z) or a time ago "
            f"(10m, 2h, 7d), got {text!r}"
        ) from None
    if moment.tzinfo is None:
        try:
            moment = moment.astimezone()
        except (OverflowError, ValueError):  # at the ends of the calendar
            moment = moment.replace(tzinfo=UTC)
    return max(EARLIEST, moment)


def parse_table(text: str) -> tuple[str | None, str]:
    """'orders' (any schema) or 'sales.orders'."""
    schema, dot, table = text.strip().rpartition(".")
    if not table or (dot and not schema):
        raise ConfigError(f"table: expected TABLE or SCHEMA.TABLE, got {text!r}")
    return (schema or None), table


def parse_ids(ids: Sequence[str]) -> list[str]:
    result = []
    for text in ids:
        try:
            result.append(str(uuid.UUID(text.strip())))
        except ValueError:
            raise ConfigError(f"id: not an event id (a UUID): {text!r}") from None
    return result


# -- queries ----------------------------------------------------------------------------------


def list_events(conn: connection, flt: EventFilter) -> list[EventRow]:
    """The newest `limit` events matching the filter, oldest first (like `tail`)."""
    statuses = [flt.status] if flt.status else list(STATUSES)
    rows: list[EventRow] = []
    try:
        with conn.cursor() as cur:
            if flt.output is not None:
                output_position(cur, flt.output)
            for status in statuses:
                params = {**flt.params(), "status": status}
                queries = {
                    "dead": ["letters"],
                    "retry": ["letters"],
                    "delivered": ["delivered"],
                    "pending": ["pending", "parked"],
                }[status]
                for query in queries:
                    cur.execute(_LIST[query], params)
                    rows.extend(EventRow(*row) for row in cur.fetchall())
    finally:
        conn.rollback()
    rows.sort(key=lambda r: (r.captured_at, r.position or 0, r.output), reverse=True)
    return rows[: flt.limit][::-1]


def retry_dead(
    conn: connection,
    output: str | None,
    ids: Sequence[str] | None,
    include_superseded: bool = False,
) -> tuple[int, int]:
    """Queue dead letters (all of them, or those with `ids`) for delivery; returns (queued,
    skipped). Skipped, unless `include_superseded`: dead letters whose row has a newer
    delivered event (see _SUPERSEDED), which stay dead.

    A running bridge delivers them within about a second and marks them delivered; a dead
    letter that fails again goes back to 'dead'.
    """
    params = {
        "output": output,
        "ids": list(ids) if ids is not None else None,
        "include_superseded": include_superseded,
    }
    with conn, conn.cursor() as cur:
        if output is not None:
            output_position(cur, output)
        cur.execute(_SERIALISE)
        cur.execute(_RETRY, params)
        queued = int(cur.rowcount)
        skipped = 0
        if not include_superseded:
            cur.execute(_SKIPPED, params)
            skipped = _scalar(cur)
        return queued, skipped


def replay(
    conn: connection,
    output: str,
    flt: EventFilter,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Queue the output's delivered events matching `flt` (time range, table) for delivery
    again, in position order; returns how many.

    Copies in chunks, one transaction each, so a large replay never holds a lock for long;
    `progress(done, total)` is called after each chunk. Events delivered after the replay
    started are not included.
    """
    params = {**flt.params(), "output": output, "chunk": REPLAY_CHUNK}
    try:
        with conn.cursor() as cur:
            params["upto"] = output_position(cur, output)
            cur.execute(_REPLAY_COUNT, params)
            total = _scalar(cur)
    finally:
        conn.rollback()
    done, after = 0, 0
    if progress is not None:
        progress(done, total)
    while True:
        with conn, conn.cursor() as cur:
            cur.execute(_SERIALISE)
            cur.execute(_REPLAY_CHUNK, {**params, "after": after})
            row = cur.fetchone()
        assert row is not None
        count, last = int(row[0]), row[1]
        if count == 0:
            return done
        done, after = done + count, int(last)
        if progress is not None:
            progress(done, max(total, done))


def _scalar(cur: cursor) -> int:
    row = cur.fetchone()
    assert row is not None
    return int(row[0])
