"""Retention: keep the event log bounded by dropping whole partitions.

A partition of skor.log is dropped when
- every event in it is at or before every output's position (all delivered or dead), and
- its newest event was logged longer ago than the retention (kept that long for replay),
- and it lies wholly below the sequencer's head, so the partition the sequencer writes
  into (and those it created ahead) always stay.

Partitions go oldest first, and a pass stops at the first one that must stay, so the
retained log is always one unbroken range of positions. Dead letters and queued
redeliveries hold their own copy of an event, so dropping the log never loses them.

Dropping takes a short ACCESS EXCLUSIVE lock on skor.log (never on a user table), bounded
by `LOCK_TIMEOUT`: a pass that cannot get it gives up and the next pass tries again.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING

import psycopg2

from skor_bridge.db import Reconnecting, Stopped, describe

if TYPE_CHECKING:
    from psycopg2.extensions import cursor

    from skor_bridge.config import Config

log = logging.getLogger("skor_bridge.retention")

#: Longest a drop waits for readers of skor.log to finish; waiting longer would queue
#: every reader and the sequencer behind the drop.
LOCK_TIMEOUT = "2s"

#: Rows of skor.delivery_stats (per output and second) older than this are deleted.
STATS_KEPT = "1 hour"

_BOUND = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")

_PARTITIONS = """
SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid)
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.inhparent = 'skor.log'::regclass
"""


def partitions(cur: cursor) -> list[tuple[str, int, int]]:
    """(qualified name, first position, end position exclusive) of each log partition,
    oldest first."""
    cur.execute(_PARTITIONS)
    found = []
    for schema, name, bound in cur.fetchall():
        match = _BOUND.search(bound or "")
        if match:
            found.append((f'"{schema}"."{name}"', int(match[1]), int(match[2])))
    return sorted(found, key=lambda p: p[1])


def prune(cur: cursor, retention_seconds: float) -> list[str]:
    """Drop the log partitions retention allows and old delivery stats; returns the names
    of the dropped partitions. `cur` must be on an autocommit connection."""
    prune_stats(cur)
    cur.execute("SELECT min(position) FROM skor.outputs")
    row = cur.fetchone()
    if row is None or row[0] is None:
        return []  # no output yet: nobody has read anything, so nothing is expendable
    floor = int(row[0])
    cur.execute("SELECT next_pos - 1 FROM skor.sequencer")
    row = cur.fetchone()
    head = int(row[0]) if row is not None else 0
    dropped = []
    for name, _first, end in partitions(cur):
        last = end - 1
        # Output positions and the head only grow, so what is true here stays true.
        if last > floor or last >= head:
            break
        if not _old_enough(cur, name, retention_seconds):
            break
        _drop(cur, name)
        dropped.append(name)
    return dropped


def prune_stats(cur: cursor) -> int:
    cur.execute(f"DELETE FROM skor.delivery_stats WHERE second < now() - interval '{STATS_KEPT}'")
    return int(cur.rowcount)


def _old_enough(cur: cursor, name: str, retention_seconds: float) -> bool:
    cur.execute(
        f"SELECT coalesce(max(logged_at) < now() - make_interval(secs => %s), true) FROM {name}",
        (retention_seconds,),
    )
    row = cur.fetchone()
    return bool(row and row[0])


def _drop(cur: cursor, name: str) -> None:
    cur.execute("BEGIN")
    try:
        cur.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        cur.execute(f"DROP TABLE {name}")
        cur.execute("COMMIT")
    except BaseException:
        if not cur.connection.closed:
            cur.execute("ROLLBACK")
        raise


class Pruner:
    """Runs `prune` every `config.retention_interval` seconds on the active instance."""

    def __init__(self, config: Config) -> None:
        self.retention = config.retention_seconds
        self.interval = max(0.1, config.retention_interval)
        self._stop = threading.Event()
        self._db = Reconnecting(config.source.dsn, "retention", self._stop)
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    def start(self) -> Pruner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._db.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                dropped = self._db.run(lambda cur: prune(cur, self.retention))
            except Stopped:
                return
            except psycopg2.Error as exc:
                # A lock timeout or a deadlock with a reader: harmless, try next time.
                log.warning("retention: %s; retrying in %.0fs", describe(exc), self.interval)
            except Exception:
                log.exception("retention pass failed")
            else:
                if dropped:
                    log.info("retention: dropped %d log partition(s) up to %s", len(dropped),
                             dropped[-1])
            self._stop.wait(self.interval)
