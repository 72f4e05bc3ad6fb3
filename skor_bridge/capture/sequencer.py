"""The sequencer: moves committed outbox rows into skor.log, numbering them.

See `capture.schema` for why this never skips a late commit and keeps per-row order.
Runs on the active instance only, in its own thread with its own connection.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING

from skor_bridge.backfill.watermark import SUPERSEDED_READS
from skor_bridge.db import Reconnecting, Stopped

if TYPE_CHECKING:
    from psycopg2.extensions import cursor

    from skor_bridge.config import Config

log = logging.getLogger(__name__)

# Backfill's READ rows carry their own event id and outputs, and a READ superseded by a
# newer change of its row is dropped here (the argument is in backfill.watermark).
_MOVE = f"""
WITH moved AS (
    DELETE FROM skor.outbox
    WHERE id IN (SELECT id FROM skor.outbox ORDER BY id LIMIT %(limit)s)
    RETURNING *
), {SUPERSEDED_READS}, numbered AS (
    SELECT %(base)s - 1 + row_number() OVER (ORDER BY id) AS pos, * FROM moved
    WHERE id NOT IN (SELECT id FROM superseded)
), ins AS (
    INSERT INTO skor.log (pos, event_id, captured_at, schema_name, table_name, op, row_key, data,
                          outputs)
    SELECT pos, coalesce(event_id, md5(%(install_id)s || '.' || id)::uuid), captured_at,
           schema_name, table_name, op, row_key, data, outputs
    FROM numbered
    RETURNING pos
)
UPDATE skor.sequencer SET next_pos = %(base)s + (SELECT count(*) FROM ins) RETURNING next_pos
"""

_BOUND = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")


class Sequencer:
    """Numbers committed outbox rows into the log and tells waiting readers about it."""

    def __init__(self, config: Config, stopping: threading.Event) -> None:
        self.config = config
        self.stopping = stopping
        self._stopped = threading.Event()
        self._db = Reconnecting(config.source.dsn, "sequencer", stopping)
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

    def stop(self) -> None:
        """Stop moving new events; outputs keep draining what is already in the log."""
        self._stopped.set()
        with self._moved:
            self._moved.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def close(self) -> None:
        self.stop()
        self._db.close()

    def healthy(self) -> bool:
        return self._db.healthy

    @property
    def head(self) -> int:
        """The newest log position this instance has moved."""
        return self._head

    def wait_beyond(self, position: int, timeout: float) -> bool:
        """Wait until the head passes `position`; False on timeout."""
        with self._moved:
            return self._moved.wait_for(
                lambda: self._head > position or self.stopping.is_set(), timeout
            )

    # -- moving ----------------------------------------------------------------------------

    def _run(self) -> None:
        limit = self.config.source.batch_size
        idle = False
        try:
            while not self.stopping.is_set() and not self._stopped.is_set():
                # An idle outbox is watched with a read-only query: a move locks the counter
                # row, and so costs a transaction and a WAL flush, even when it finds nothing.
                if idle and not self._db.run(_outbox_has_rows):
                    self._stopped.wait(self.config.source.poll_interval)
                    continue
                moved, head = self._db.run(lambda cur: self._move(cur, limit))
                idle = moved == 0
                if moved:
                    self.captured += moved
                    with self._moved:
                        self._head = head
                        self._moved.notify_all()
                if moved < limit:
                    self._stopped.wait(self.config.source.poll_interval)
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


def _outbox_has_rows(cur: cursor) -> bool:
    cur.execute("SELECT EXISTS (SELECT FROM skor.outbox)")
    row = cur.fetchone()
    return bool(row and row[0])


def _first(cur: cursor) -> int:
    row = cur.fetchone()
    assert row is not None
    return int(row[0])
