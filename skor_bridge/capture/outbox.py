"""Durable capture: the sequencer moves committed outbox rows into the log, and each
output reads the log from its own position. See `capture.schema` for why this never
skips a late commit and keeps per-row order."""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING

from skor_bridge.capture import progress
from skor_bridge.capture.outbox_rows import EVENT_COLUMNS, event_from_row
from skor_bridge.db import Reconnecting, Stopped

if TYPE_CHECKING:
    from psycopg2.extensions import cursor

    from skor_bridge.config import Config
    from skor_bridge.event import ChangeEvent

log = logging.getLogger("skor_bridge.capture")

_MOVE = """
WITH moved AS (
    DELETE FROM skor.outbox
    WHERE id IN (SELECT id FROM skor.outbox ORDER BY id LIMIT %(limit)s)
    RETURNING *
), numbered AS (
    SELECT %(base)s - 1 + row_number() OVER (ORDER BY id) AS pos, * FROM moved
), ins AS (
    INSERT INTO skor.log (pos, event_id, captured_at, schema_name, table_name, op, row_key, data)
    SELECT pos, md5(%(install_id)s || '.' || id)::uuid, captured_at, schema_name, table_name,
           op, row_key, data
    FROM numbered
    RETURNING pos
)
UPDATE skor.sequencer SET next_pos = %(base)s + (SELECT count(*) FROM ins) RETURNING next_pos
"""

#: Bytes of row data one fetch returns at most (always at least one event), so a run of
#: huge rows cannot balloon the bridge's memory.
FETCH_BYTES = 8 * 1024 * 1024

# The running sum streams under the LIMIT, so the scan still stops after `limit` rows.
_SELECT_EVENTS = f"""
SELECT {EVENT_COLUMNS} FROM (
    SELECT *, sum(octet_length(data)) OVER (ORDER BY pos) AS running
    FROM skor.log WHERE pos > %s ORDER BY pos LIMIT %s
) fetched WHERE running - octet_length(data) < %s ORDER BY pos
"""

_BOUND = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")


class DurableSource:
    """Capture through the outbox the triggers write in the user's transaction.

    Guarantee: every committed change gets exactly one log position, in an order that keeps
    each row's changes in commit order; nothing is lost while the bridge is down, and
    rolled-back changes never appear (they never commit to the outbox).
    """

    def __init__(self, config: Config, stop: threading.Event) -> None:
        self.config = config
        self.stopping = stop
        self._capture_stopped = threading.Event()
        self._db = Reconnecting(config.source.dsn, "sequencer", stop)
        self._thread = threading.Thread(target=self._run, name="sequencer", daemon=True)
        self._head = 0
        self._install_id = ""
        self._moved = threading.Condition()
        self._covered_until = 0
        #: Events moved so far by this process; fed to metrics.
        self.captured = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        def read_state(cur: cursor) -> tuple[int, str]:
            cur.execute("SELECT next_pos - 1, (SELECT value FROM skor.meta"
                        " WHERE key = 'install_id') FROM skor.sequencer")
            row = cur.fetchone()
            assert row is not None
            return int(row[0]), str(row[1])

        self._head, self._install_id = self._db.run(read_state)
        self._thread.start()

    def stop_capture(self) -> None:
        """Stop moving new events; outputs keep draining what is already in the log."""
        self._capture_stopped.set()
        with self._moved:
            self._moved.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def close(self) -> None:
        self.stop_capture()
        self._db.close()

    def healthy(self) -> bool:
        return self._db.healthy

    @property
    def head(self) -> int:
        """The newest log position this instance has moved."""
        return self._head

    def feed(self, output: str, kind: str) -> LogFeed:
        return LogFeed(self, output, kind)

    # -- sequencer -------------------------------------------------------------------------

    def _run(self) -> None:
        limit = self.config.source.batch_size
        idle = False
        try:
            while not self.stopping.is_set() and not self._capture_stopped.is_set():
                # An idle outbox is watched with a read-only query: a move locks the counter
                # row, and so costs a transaction and a WAL flush, even when it finds nothing.
                if idle and not self._db.run(_outbox_has_rows):
                    self._capture_stopped.wait(self.config.source.poll_interval)
                    continue
                moved, head = self._db.run(lambda cur: self._move(cur, limit))
                idle = moved == 0
                if moved:
                    self.captured += moved
                    with self._moved:
                        self._head = head
                        self._moved.notify_all()
                if moved < limit:
                    self._capture_stopped.wait(self.config.source.poll_interval)
        except Stopped:
            pass
        except Exception:
            log.exception("sequencer failed")
            self.stopping.set()

    def _move(self, cur: cursor, limit: int) -> tuple[int, int]:
        try:
            # Holding the counter row serialises sequencers: if two instances ever overlap
            # during a failover, the second numbers only what the first did not move.
            # (Sent with BEGIN in one round trip; a failed BEGIN leaves nothing to roll back.)
            cur.execute("BEGIN; SELECT next_pos FROM skor.sequencer FOR UPDATE")
            base = _first(cur)
            if base + limit > self._covered_until:
                self._ensure_partitions(cur, base, base + limit)
            cur.execute(_MOVE, {"limit": limit, "base": base, "install_id": self._install_id})
            next_pos = _first(cur)
            cur.execute("COMMIT")
        except BaseException:
            if not cur.connection.closed:
                cur.execute("ROLLBACK")
            raise
        return next_pos - base, next_pos - 1

    def _ensure_partitions(self, cur: cursor, base: int, until: int) -> None:
        cur.execute(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'skor.log'::regclass"
        )
        upper = 1
        for (bound,) in cur.fetchall():
            match = _BOUND.search(bound or "")
            if match:
                upper = max(upper, int(match[2]))
        # Partitions below `base` are never needed again (retention may have dropped them
        # all), so new ones start no lower than the next position.
        upper = max(upper, base)
        size = self.config.partition_size
        while upper < until:
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS skor.log_{upper:019d} PARTITION OF skor.log"
                f" FOR VALUES FROM ({upper}) TO ({upper + size})"
            )
            upper += size
        self._covered_until = upper

    # -- waiting for new events -----------------------------------------------------------

    def wait_beyond(self, position: int, timeout: float) -> bool:
        with self._moved:
            return self._moved.wait_for(
                lambda: self._head > position or self.stopping.is_set(), timeout
            )


class LogFeed(progress.OutputRecords):
    """One output's cursor over the log. Used from that output's worker thread only."""

    def __init__(self, source: DurableSource, output: str, kind: str) -> None:
        self.source = source
        self.output = output
        self.kind = kind
        self._db = Reconnecting(source.config.source.dsn, f"output {output}", source.stopping)

    def start_position(self) -> int:
        return self._db.run(self._start_position)

    def _start_position(self, cur: cursor) -> int:
        cur.execute("SELECT position FROM skor.outputs WHERE name = %s", (self.output,))
        row = cur.fetchone()
        if row is not None:
            return int(row[0])
        if self.source.config.start_from == "latest":
            cur.execute("SELECT next_pos - 1 FROM skor.sequencer")
        else:
            cur.execute(
                "SELECT coalesce((SELECT min(pos) - 1 FROM skor.log),"
                " (SELECT next_pos - 1 FROM skor.sequencer))"
            )
        position = _first(cur)
        cur.execute(
            "INSERT INTO skor.outputs (name, kind, position) VALUES (%s, %s, %s)"
            " ON CONFLICT (name) DO NOTHING",
            (self.output, self.kind, position),
        )
        log.info("output %s is new; starting after position %d", self.output, position)
        return position

    def fetch(self, after: int, limit: int, wait: float) -> list[ChangeEvent]:
        events = self._db.run(lambda cur: self._select(cur, after, limit))
        if not events and wait > 0 and self.source.wait_beyond(after, wait):
            events = self._db.run(lambda cur: self._select(cur, after, limit))
        return events

    @staticmethod
    def _select(cur: cursor, after: int, limit: int) -> list[ChangeEvent]:
        cur.execute(_SELECT_EVENTS, (after, limit, FETCH_BYTES))
        return [event_from_row(row) for row in cur.fetchall()]

    def commit(self, position: int, delivered: int = 0, error: str | None = None) -> None:
        self._db.run(lambda cur: progress.record_delivered(
            cur, self.output, delivered, error, position))



def _outbox_has_rows(cur: cursor) -> bool:
    cur.execute("SELECT EXISTS (SELECT FROM skor.outbox)")
    row = cur.fetchone()
    return bool(row and row[0])


def _first(cur: cursor) -> int:
    row = cur.fetchone()
    assert row is not None
    return int(row[0])

