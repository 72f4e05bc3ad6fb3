"""Retention: keep the event log bounded, in time and in size, by dropping whole partitions.

A partition of skor.log is dropped when
- every event in it is at or before every output's position (all delivered or dead), and
- its newest event was logged longer ago than `--retention`, OR the log is over
  `--retention-size` (leaving room for the partition being filled): whichever comes first,
- and it lies wholly below the sequencer's head, so the partition the sequencer writes
  into (and those it created ahead) always stay.

An output that has not passed a partition the size limit would drop holds the log over
the limit: nothing it still needs is dropped, and it is marked (`skor.outputs.
holding_log_since`) so that `status`, /metrics and /readyz report it.

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
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import psycopg2

from skor_bridge.capture.outbox_upkeep import OutboxHealth, check
from skor_bridge.db import Reconnecting, Stopped, describe

if TYPE_CHECKING:
    from psycopg2.extensions import cursor

    from skor_bridge.config import Config

log = logging.getLogger(__name__)

#: Longest a drop waits for readers of skor.log to finish; waiting longer would queue
#: every reader and the sequencer behind the drop.
LOCK_TIMEOUT = "2s"

#: Rows of skor.delivery_stats (per output and second) older than this are deleted.
STATS_KEPT = "1 hour"

_BOUND = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")

_PARTITIONS = """
SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid), pg_total_relation_size(c.oid)
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.inhparent = 'skor.log'::regclass
"""

#: 1 GiB: about 3.5 million events of a typical small row.
DEFAULT_SIZE = 1024**3


@dataclass(frozen=True)
class Partition:
    name: str
    first: int
    #: One past the last position.
    end: int
    bytes: int


@dataclass(frozen=True)
class Pass:
    """What a retention pass did and found."""

    dropped: list[str] = field(default_factory=list)
    #: The log's size on disk after the pass.
    log_bytes: int = 0
    #: Outputs holding the log over the size limit (they have not passed what it would drop).
    holding: list[str] = field(default_factory=list)
    #: The oldest snapshot and the outbox's dead rows (see `outbox_upkeep`).
    outbox: OutboxHealth = field(default_factory=OutboxHealth)


def partitions(cur: cursor) -> list[Partition]:
    """Every log partition with its size on disk, oldest first."""
    cur.execute(_PARTITIONS)
    found = []
    for schema, name, bound, size in cur.fetchall():
        match = _BOUND.search(bound or "")
        if match:
            found.append(Partition(f'"{schema}"."{name}"', int(match[1]), int(match[2]), int(size)))
    return sorted(found, key=lambda p: p.first)


def prune(cur: cursor, retention_seconds: float, retention_bytes: int = DEFAULT_SIZE) -> Pass:
    """Drop the log partitions retention allows and old delivery stats, and mark the
    outputs holding the log over its size limit. `cur` must be on an autocommit connection."""
    prune_stats(cur)
    cur.execute("SELECT min(position) FROM skor.outputs")
    row = cur.fetchone()
    parts = partitions(cur)
    total = sum(p.bytes for p in parts)
    if row is None or row[0] is None:
        # No output yet: nobody has read anything, so nothing is expendable.
        return Pass(log_bytes=total)
    floor = int(row[0])
    cur.execute("SELECT next_pos - 1 FROM skor.sequencer")
    row = cur.fetchone()
    head = int(row[0]) if row is not None else 0
    # Room for the partition being filled, so the log stays under the limit until the
    # next pass rather than only just after this one.
    room = max((p.bytes for p in parts), default=0)
    dropped: list[str] = []
    blocked_at = None
    for part in parts:
        last = part.end - 1
        over = total + room > retention_bytes
        # Output positions and the head only grow, so what is true here stays true.
        if last >= head:
            break
        if last > floor:
            if over:
                blocked_at = last
            break
        if not over and not _old_enough(cur, part.name, retention_seconds):
            break
        _drop(cur, part.name)
        dropped.append(part.name)
        total -= part.bytes
    holding = _mark_holding(cur, blocked_at)
    return Pass(dropped, total, holding)


def _mark_holding(cur: cursor, blocked_at: int | None) -> list[str]:
    """Mark the outputs whose position is below `blocked_at` (None: no output holds the log)
    and clear the others; returns the marked names."""
    if blocked_at is None:
        cur.execute(
            "UPDATE skor.outputs SET holding_log_since = NULL WHERE holding_log_since IS NOT NULL"
        )
        return []
    cur.execute(
        "UPDATE skor.outputs SET holding_log_since = CASE WHEN position < %(at)s"
        " THEN coalesce(holding_log_since, now()) END"
        " WHERE (position < %(at)s) <> (holding_log_since IS NOT NULL)",
        {"at": blocked_at},
    )
    cur.execute("SELECT name FROM skor.outputs WHERE position < %s ORDER BY name", (blocked_at,))
    return [str(r[0]) for r in cur.fetchall()]


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
        self.retention_bytes = config.retention_bytes
        #: Trigger capture writes the outbox; WAL and notify capture do not.
        self.durable = config.source.mode == "durable"
        #: The latest pass's findings, read by the bridge for metrics and /readyz.
        self.last = Pass()
        self.interval = max(0.1, config.retention_interval)
        self._stop = threading.Event()
        self._db = Reconnecting(config.source.dsn, config.source.session("retention"), self._stop)
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
                found = self._db.run(lambda cur: prune(cur, self.retention, self.retention_bytes))
                if self.durable:
                    found = replace(found, outbox=self._db.run(check))
            except Stopped:
                return
            except psycopg2.Error as exc:
                # A lock timeout or a deadlock with a reader: harmless, try next time.
                log.warning("retention: %s; retrying in %.0fs", describe(exc), self.interval)
            except Exception:
                log.exception("retention pass failed")
            else:
                if found.dropped:
                    log.info(
                        "retention: dropped %d log partition(s) up to %s",
                        len(found.dropped),
                        found.dropped[-1],
                    )
                if found.holding and found.holding != self.last.holding:
                    log.warning(
                        "retention: the log (%d MB) is over --retention-size and kept "
                        "for output(s) %s, which have not delivered its oldest events",
                        found.log_bytes // 10**6,
                        ", ".join(found.holding),
                    )
                warning = found.outbox.warning
                if warning and self.last.outbox.warning is None:
                    log.warning("%s", warning)
                self.last = found
            self._stop.wait(self.interval)
