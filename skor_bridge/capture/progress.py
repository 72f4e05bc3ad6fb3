"""What every feed records about an output: progress counters, dead letters, redeliveries.

Shared by the durable and the notify feeds; each function is one autocommit transaction,
so a crash between two of them loses no event, at worst it repeats one delivery.

Progress (position and counters) is written at most every `PROGRESS_INTERVAL` seconds
rather than after every batch: at 1,000 changes/s a write per batch was hundreds of
transactions (and WAL flushes) a second on the user's database. A crash repeats at most
that much delivery (at least once, as promised); a clean stop writes the last progress.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from skor_bridge.capture.log_rows import EVENT_COLUMNS, event_from_row
from skor_bridge.db import Stopped

if TYPE_CHECKING:
    from collections.abc import Callable

    from psycopg2.extensions import cursor

    from skor_bridge.db import Reconnecting
    from skor_bridge.event import ChangeEvent


#: Events parked per INSERT statement.
PARK_CHUNK = 100

#: Longest a busy output's progress stays unwritten.
PROGRESS_INTERVAL = 0.2


class OutputRecords:
    """The part of a feed both capture modes share: what it writes about its output.

    Subclasses set `output` and `_db` (a Reconnecting used from the worker thread only)."""

    output: str
    _db: Reconnecting
    # Progress not written yet (see the module docstring).
    _unsaved_delivered = 0
    _unsaved_error: str | None = None
    _unsaved_position: int | None = None
    _saved_at = 0.0

    def may_send(self) -> bool:
        """Replaced by the bridge with its leadership's lease check (see `leader`)."""
        return True

    def commit(self, position: int, delivered: int = 0, error: str | None = None) -> None:
        self._unsaved_position = max(position, self._unsaved_position or position)
        self.record(delivered, error)

    def record(self, delivered: int, error: str | None) -> None:
        self._unsaved_delivered += delivered
        self._unsaved_error = error or self._unsaved_error
        self.flush(due_only=True)

    def wait_saving(self, wait: Callable[[float], bool], timeout: float) -> bool:
        """Call `wait(seconds)` for up to `timeout` seconds in all, writing unsaved progress
        when it falls due meanwhile, so an output that goes idle saves within
        PROGRESS_INTERVAL rather than on its next event. Returns what `wait` returned."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            unsaved = (
                self._unsaved_delivered
                or self._unsaved_error is not None
                or self._unsaved_position is not None
            )
            due = self._saved_at + PROGRESS_INTERVAL - time.monotonic()
            if not unsaved or due >= left:
                return wait(max(0.0, left))
            if wait(max(0.0, due)):
                return True
            self.flush()

    def flush(self, due_only: bool = False) -> None:
        """Write the progress not written yet (only once PROGRESS_INTERVAL has passed since
        the last write, with `due_only`)."""
        delivered, error, position = (
            self._unsaved_delivered,
            self._unsaved_error,
            self._unsaved_position,
        )
        if not delivered and error is None and position is None:
            return
        now = time.monotonic()
        if due_only and now - self._saved_at < PROGRESS_INTERVAL:
            return
        self._db.run(lambda cur: record_delivered(cur, self.output, delivered, error, position))
        self._saved_at = now
        self._unsaved_delivered, self._unsaved_error, self._unsaved_position = 0, None, None

    def dead_letter(self, event: ChangeEvent, attempts: int, error: str) -> None:
        self._db.run(lambda cur: dead_letter(cur, self.output, event, attempts, error))

    def fetch_redeliveries(
        self, after_id: int, limit: int, include_parked: bool
    ) -> list[tuple[int, ChangeEvent, bool]]:
        self.flush(due_only=True)
        return self._db.run(
            lambda cur: fetch_redeliveries(cur, self.output, after_id, limit, include_parked)
        )

    def park(self, events: list[ChangeEvent]) -> list[int]:
        def insert(cur: cursor) -> list[int]:
            cur.execute("BEGIN")
            ids = park(cur, self.output, events)
            cur.execute("COMMIT")
            return ids

        return self._db.run(insert)

    def fetch_parked(
        self, schema: str, table: str, row_key: str | None, after_id: int, limit: int
    ) -> list[tuple[int, ChangeEvent]]:
        return self._db.run(
            lambda cur: fetch_parked(cur, self.output, schema, table, row_key, after_id, limit)
        )

    def finish_redelivery(self, redelivery_id: int, event: ChangeEvent, delivered: bool) -> None:
        self._db.run(
            lambda cur: finish_redelivery(cur, self.output, redelivery_id, event, delivered)
        )

    def close(self) -> None:
        try:
            self.flush()
        except Stopped:
            pass  # the database is gone and we are stopping: the next start repeats a little
        finally:
            self._db.close()


def record_delivered(
    cur: cursor, output: str, delivered: int, error: str | None, position: int | None = None
) -> None:
    """Add to an output's counters and, given `position`, move its progress there.

    One round trip and one transaction (and so one WAL flush): a worker calls this after
    every batch, and three separate autocommit writes made it wait for three disk syncs.
    """
    sql = (
        "UPDATE skor.outputs SET delivered_total = delivered_total + %(delivered)s,"
        " last_error = coalesce(%(error)s, last_error),"
        " last_error_at = CASE WHEN %(error)s IS NULL THEN last_error_at ELSE now() END,"
        " updated_at = now()"
    )
    if position is not None:
        # greatest(): an instance that lost leadership must never move progress back.
        sql += ", position = greatest(position, %(position)s)"
    sql += " WHERE name = %(output)s"
    if delivered:
        sql += (
            "; INSERT INTO skor.delivery_stats (output, second, delivered)"
            " VALUES (%(output)s, date_trunc('second', now()), %(delivered)s)"
            " ON CONFLICT (output, second) DO UPDATE"
            " SET delivered = skor.delivery_stats.delivered + excluded.delivered"
        )
    cur.execute(
        sql, {"output": output, "delivered": delivered, "error": error, "position": position}
    )


def dead_letter(cur: cursor, output: str, event: ChangeEvent, attempts: int, error: str) -> None:
    cur.execute(
        "INSERT INTO skor.dead_letters (output, pos, event_id, captured_at, schema_name,"
        " table_name, op, row_key, data, old, attempts, last_error)"
        " VALUES (%s, %s, %s, to_timestamp(%s), %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (output, event_id) DO UPDATE SET attempts = excluded.attempts,"
        " last_error = excluded.last_error, status = 'dead', dead_at = now()",
        (
            output,
            event.position or None,
            event.id,
            event.captured_at,
            event.schema,
            event.table,
            event.op,
            event.key,
            event.data,
            event.old,
            attempts,
            error,
        ),
    )


def fetch_redeliveries(
    cur: cursor, output: str, after_id: int, limit: int, include_parked: bool
) -> list[tuple[int, ChangeEvent, bool]]:
    """Redeliveries after `after_id`: (id, event, parked). A running worker already holds
    the events it parked itself, so only start-up asks for those."""
    cur.execute(
        f"SELECT id, reason = 'parked', {EVENT_COLUMNS} FROM skor.redeliveries"
        " WHERE output = %s AND id > %s AND (%s OR reason <> 'parked') ORDER BY id LIMIT %s",
        (output, after_id, include_parked, limit),
    )
    return [(row[0], event_from_row(row[2:]), row[1]) for row in cur.fetchall()]


def park(cur: cursor, output: str, events: list[ChangeEvent]) -> list[int]:
    """Copy a stuck row's events into skor.redeliveries, in order; returns their ids.

    A statement per PARK_CHUNK events: a row receiving heavy updates parks thousands, and
    one statement for all would build their data into one huge query string."""
    ids: list[int] = []
    for start in range(0, len(events), PARK_CHUNK):
        ids += _park_chunk(cur, output, events[start : start + PARK_CHUNK])
    return ids


def _park_chunk(cur: cursor, output: str, events: list[ChangeEvent]) -> list[int]:
    cur.execute(
        "INSERT INTO skor.redeliveries (output, reason, pos, event_id, captured_at,"
        " schema_name, table_name, op, row_key, data, old)"
        " SELECT %s, 'parked', e.pos, e.event_id::uuid, to_timestamp(e.captured_at),"
        " e.schema_name, e.table_name, e.op, e.row_key, e.data, e.old"
        " FROM unnest(%s::bigint[], %s::text[], %s::float8[], %s::text[], %s::text[],"
        " %s::text[], %s::text[], %s::text[], %s::text[]) WITH ORDINALITY"
        " AS e(pos, event_id, captured_at, schema_name, table_name, op, row_key, data, old, n)"
        " ORDER BY e.n RETURNING id, pos",
        (
            output,
            [e.position for e in events],
            [e.id for e in events],
            [e.captured_at for e in events],
            [e.schema for e in events],
            [e.table for e in events],
            [e.op for e in events],
            [e.key for e in events],
            [e.data for e in events],
            [e.old for e in events],
        ),
    )
    # Ids follow the insert's order; mapped by position all the same (a row's log events
    # have distinct positions), since RETURNING promises no order.
    by_position = {int(pos): int(row_id) for row_id, pos in cur.fetchall()}
    return [by_position[e.position] for e in events]


def fetch_parked(
    cur: cursor,
    output: str,
    schema: str,
    table: str,
    row_key: str | None,
    after_id: int,
    limit: int,
) -> list[tuple[int, ChangeEvent]]:
    """A parked row's next events after `after_id`, oldest first: (id, event)."""
    # Two spellings rather than IS NOT DISTINCT FROM, which the index cannot serve.
    key_test = "row_key IS NULL AND %s IS NULL" if row_key is None else "row_key = %s"
    cur.execute(
        f"SELECT id, {EVENT_COLUMNS} FROM skor.redeliveries"
        " WHERE output = %s AND reason = 'parked' AND schema_name = %s AND table_name = %s"
        f" AND {key_test} AND id > %s ORDER BY id LIMIT %s",
        (output, schema, table, row_key, after_id, limit),
    )
    return [(row[0], event_from_row(row[1:])) for row in cur.fetchall()]


def finish_redelivery(
    cur: cursor, output: str, redelivery_id: int, event: ChangeEvent, delivered: bool
) -> None:
    cur.execute("DELETE FROM skor.redeliveries WHERE id = %s", (redelivery_id,))
    if delivered:
        cur.execute(
            "UPDATE skor.dead_letters SET status = 'delivered'"
            " WHERE output = %s AND event_id = %s AND status = 'retry'",
            (output, event.id),
        )
