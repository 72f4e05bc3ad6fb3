"""The demo's own changes, and when each committed: what latency is measured from."""

from __future__ import annotations

import decimal
import json
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING

import psycopg2

from skor_bridge.db import connect, describe
from skor_bridge.errors import SkorError

if TYPE_CHECKING:
    from psycopg2.extensions import connection

    from skor_bridge.tools.demo.database import DemoTable

#: One cycle of the demo's changes; an UPDATE or DELETE with no live row becomes an INSERT.
_PATTERN = ("INSERT", "INSERT", "UPDATE", "INSERT", "UPDATE", "DELETE")
_CUSTOMERS = ("Ada", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret")
_STATUSES = ("new", "paid", "shipped")


class CommitClock:
    """When each of the demo's changes committed, by `change_key`.

    A key is announced before COMMIT is sent, so an arrival that overtakes the note of the
    commit time waits for it instead of passing for someone else's change. Each output
    claims each key once; a later arrival with the same key is someone else's change.
    """

    def __init__(self) -> None:
        self._times: dict[str, float | None] = {}
        self._claimed: defaultdict[str, set[str]] = defaultdict(set)
        self._changed = threading.Condition()

    def expect(self, key: str) -> None:
        with self._changed:
            self._times[key] = None

    def committed(self, key: str, at: float | None) -> None:
        """Record the commit time; None forgets the key (the transaction did not commit)."""
        with self._changed:
            if at is None:
                self._times.pop(key, None)
            else:
                self._times[key] = at
            self._changed.notify_all()

    def claim(self, output: str, key: str, wait: float = 2.0) -> float | None:
        """The commit time of the demo's change `key`, once per output; else None."""
        with self._changed:
            if key not in self._times or key in self._claimed[output]:
                return None
            self._changed.wait_for(lambda: self._times.get(key, 0.0) is not None, wait)
            at = self._times.get(key)
            if at is not None:
                self._claimed[output].add(key)
            return at


def change_key(table: str, op: str, data: object) -> str:
    """What identifies a change in its event: table, op and the row, canonically."""
    return f"{table} {op} {json.dumps(data, sort_keys=True, default=str)}"


def body_key(body: bytes) -> str | None:
    """The `change_key` of a Skor body; None when the body is not one."""
    try:
        event = json.loads(body, parse_float=decimal.Decimal)
        return change_key(f"{event['schema']}.{event['table']}", event["op"], event["data"])
    except (ValueError, TypeError, KeyError):
        return None


class Workload:
    """Makes the demo's changes, one transaction each, noting when each committed."""

    def __init__(
        self, dsn: str, table: DemoTable, count: int, pace: float, clock: CommitClock
    ) -> None:
        self.dsn = dsn
        self.table = table
        self.count = count
        self.pace = pace
        self.clock = clock
        #: (change key, op) of each committed change, in commit order.
        self.made: list[tuple[str, str]] = []
        self.live: list[list[int]] = []  # [id, status index] of rows still there
        self.done = threading.Event()
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def keys(self) -> list[str]:
        return [key for key, _ in list(self.made)]

    def _run(self) -> None:
        conn: connection | None = None
        try:
            conn = connect(self.dsn, "demo writer", autocommit=False)
            for number in range(self.count):
                if self._stop.wait(self.pace if number else 0):
                    break
                self._one_change(conn, number)
        except (psycopg2.Error, SkorError) as exc:
            self.error = describe(exc)
        finally:
            if conn is not None:
                conn.close()
            self.done.set()

    def _one_change(self, conn: connection, number: int) -> None:
        op = _PATTERN[number % len(_PATTERN)] if self.live else "INSERT"
        table = self.table.qualified
        # RETURNING row_to_json(t) renders the row as the trigger does, in this session.
        returning = "RETURNING t.id, row_to_json(t)::text"
        with conn.cursor() as cur:
            if op == "INSERT":
                customer = _CUSTOMERS[number % len(_CUSTOMERS)]
                amount = decimal.Decimal(f"{5 + number * 37 % 95}.{number * 13 % 100:02d}")
                cur.execute(
                    f"INSERT INTO {table} AS t (customer, amount) VALUES (%s, %s) " + returning,
                    (customer, amount),
                )
            elif op == "UPDATE":
                # The least advanced order moves on; the amount changes too, so that no two
                # of the demo's updates leave the same row.
                row = min(self.live, key=lambda r: r[1])
                row[1] = min(row[1] + 1, len(_STATUSES) - 1)
                cur.execute(
                    f"UPDATE {table} AS t SET status = %s, amount = amount + 1"
                    " WHERE id = %s " + returning,
                    (_STATUSES[row[1]], row[0]),
                )
            else:
                row = self.live.pop(0)
                cur.execute(f"DELETE FROM {table} AS t WHERE id = %s " + returning, (row[0],))
            result = cur.fetchone()
        assert result is not None
        if op == "INSERT":
            self.live.append([int(result[0]), 0])
        data = json.loads(result[1], parse_float=decimal.Decimal)
        key = change_key(str(self.table), op, data)
        self.clock.expect(key)
        try:
            conn.commit()
        except BaseException:
            self.clock.committed(key, None)
            raise
        self.clock.committed(key, time.time())
        self.made.append((key, op))
