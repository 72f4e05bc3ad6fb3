"""The sequencer: moves committed outbox rows into skor.log, numbering them.

See `capture.schema` for why this never skips a late commit and keeps per-row order.
Runs on the active instance only, in its own thread with its own connection.

What it costs the user's database, and why it is shaped this way:
- One round is ONE prepared statement in autocommit (lock the counter, move, number,
  return the events), not BEGIN / SELECT FOR UPDATE / move / COMMIT: the per-round
  overhead is what a bridge at 1,000 changes/s pays hundreds of times a second.
- When the outbox is empty the statement locks nothing and writes nothing (no
  transaction id, no WAL flush), so an idle look costs a read of an empty table.
- The moved events come back from the same statement and are kept in memory
  (`recent`), so an output that keeps up reads them from there instead of querying the
  log again.
- Under load, rounds start at most every `BUSY_SPACING` poll intervals (6 ms by default)
  rather than one poll interval after the previous round ended: a round costs the
  database nearly the same whether it moves one event or ten (a transaction, a commit and
  its WAL flush, the statement's set-up), so at 1,000 changes/s this halves the rounds
  and takes about 40% off the sequencer's CPU per event, for at most
  `(BUSY_SPACING - 1) x poll_interval` (4 ms) more latency, about 1.5 ms on average and
  2 ms at p99 in the benchmark. A backlog (a full batch) is still moved round after round
  without pausing.
- An idle sequencer (nothing found for `QUIET` seconds) backs its poll off from
  `poll_interval` (2 ms) to `IDLE_POLL_MAX`, doubling per empty look, and polls fast again
  as soon as a round finds something: the first change after a quiet period waits at most
  `IDLE_POLL_MAX` longer than usual.
- Dead outbox rows that VACUUM cannot remove (a long transaction holds an old snapshot)
  slow every look; past `SourceConfig.compact_after` of them, and only when no backlog
  waits, one round is a compaction (`outbox_upkeep.compact_round`: the same move under the
  outbox's lock, then TRUNCATE), at most once a second. An attempt that does not get the
  lock at once is followed by an ordinary round at once, so capture never waits on it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from itertools import islice
from typing import TYPE_CHECKING, TypeVar

import psycopg2.errors

from skor_bridge.backfill.watermark import SUPERSEDED_READS
from skor_bridge.capture import outbox_upkeep
from skor_bridge.capture.log_rows import event_from_row
from skor_bridge.db import Reconnecting, Stopped

if TYPE_CHECKING:
    from collections.abc import Callable

    from psycopg2.extensions import connection, cursor

    from skor_bridge.config import Config
    from skor_bridge.event import ChangeEvent

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest pause between two looks at an idle outbox.
IDLE_POLL_MAX = 0.25

#: Seconds of finding nothing before the poll starts to back off, so that the gaps of a
#: steady trickle (a change every few milliseconds) never slow it down.
QUIET = 0.1

#: Under load, poll intervals from the start of one round to the start of the next (see
#: the module docstring).
BUSY_SPACING = 3

#: Seconds between two "compacted the outbox" lines (the count in between is said).
COMPACTION_LOG_EVERY = 60.0

#: Channel `skor-bridge backfill` notifies after appending READ events to the log itself
#: (holding the counter row, as a round does): the log grew without the sequencer.
LOG_GREW = "skor_log_grew"

#: Bytes of moved events (`data` and `old`) kept in memory for outputs that keep up; rows
#: past this in one round come back without their data and are read from the log by the
#: outputs instead.
RECENT_BYTES = 8 * 1024 * 1024

# $1 limit, $2 install id, $3 bytes of data to return. `seq` locks the counter only when
# the outbox has rows, so an idle look is read-only. Every CTE sees one snapshot; if two
# instances ever overlap during a failover, the second waits on the counter row, then
# finds the rows the first moved already deleted and skips them (READ COMMITTED), so each
# outbox row is numbered once.
# Backfill's READ rows carry their own event id and outputs, and a READ superseded by a
# newer change of its row is dropped here (the argument is in backfill.watermark).
# The outbox is found by its primary key only (the batch's ids, then `id = ANY` of them):
# a table written and emptied a thousand times a second has many dead or empty pages
# between two VACUUMs, and sequential scans of them (one to see whether it is empty, one
# to join the batch back) were a large part of every round's cost.
_MOVE = f"""
WITH batch AS (
    SELECT id FROM skor.outbox ORDER BY id LIMIT $1
), seq AS (
    SELECT next_pos FROM skor.sequencer WHERE EXISTS (SELECT FROM batch) FOR UPDATE
), moved AS (
    DELETE FROM skor.outbox
    WHERE id = ANY (ARRAY(SELECT id FROM batch WHERE EXISTS (SELECT FROM seq)))
    RETURNING *
), {SUPERSEDED_READS}, ins AS (
    INSERT INTO skor.log (pos, event_id, captured_at, schema_name, table_name, op, row_key, data,
                          old, outputs)
    SELECT (SELECT next_pos FROM seq) - 1 + row_number() OVER (ORDER BY id),
           coalesce(event_id, md5($2 || '.' || id)::uuid), captured_at, schema_name,
           table_name, op, row_key, data, old, outputs
    FROM moved WHERE id NOT IN (SELECT id FROM superseded)
    RETURNING pos, event_id, captured_at, schema_name, table_name, op, row_key, data, old,
              outputs
), bump AS (
    UPDATE skor.sequencer SET next_pos = (SELECT next_pos FROM seq) + (SELECT count(*) FROM ins)
    WHERE EXISTS (SELECT FROM ins)
)
SELECT pos, event_id::text, extract(epoch FROM captured_at)::float8, schema_name, table_name,
       op, row_key, CASE WHEN kept THEN data END, CASE WHEN kept THEN old END, outputs
FROM (
    SELECT *, sum(octet_length(data) + coalesce(octet_length(old), 0)) OVER (ORDER BY pos)
              <= $3 AS kept
    FROM ins
) sized ORDER BY pos
"""

#: Advisory lock key serialising the creation of log partitions ("skpt").
PARTITION_LOCK = 0x736B7074

_BOUND = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")


class Sequencer:
    """Numbers committed outbox rows into the log and tells waiting readers about it."""

    def __init__(self, config: Config, stopping: threading.Event) -> None:
        self.config = config
        self.stopping = stopping
        self._stopped = threading.Event()
        self._db = Reconnecting(config.source.dsn, config.source.session("sequencer"), stopping)
        self._thread = threading.Thread(target=self._run, name="sequencer", daemon=True)
        self._head = 0
        self._install_id = ""
        self._moved = threading.Condition()
        self._covered_until = 0
        self._prepared: connection | None = None
        #: The newest moved events, contiguous in position, at most RECENT_BYTES of data.
        self._recent: deque[ChangeEvent] = deque()
        self._recent_bytes = 0
        #: Events moved so far by this process; fed to metrics.
        self.captured = 0
        #: Outbox compactions done, and attempts that gave up (lock not had in time...).
        self.compactions = 0
        self.compactions_failed = 0
        self._compactions_said = 0
        self._compaction_said_at = -COMPACTION_LOG_EVERY
        #: Whether to read the head after the next round, and the head a round read
        #: (the log grew by a backfill's appends; see LOG_GREW).
        self._grew = False
        self._grown_to: int | None = None
        #: Whether an output asked for events past the head since the last write: WAL
        #: mode then keeps what it writes next in memory (see `WalReader._flush`).
        self.output_at_head = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._head, self._install_id = self._db.run(self._read_state)
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

    def caught_up(self, position: int) -> bool:
        """Whether an output that has read up to `position` has nothing more to read."""
        if position < self._head:
            return False
        self.output_at_head = True
        return True

    def wait_beyond(self, position: int, timeout: float) -> bool:
        """Wait until the head passes `position`; False on timeout."""
        with self._moved:
            return self._moved.wait_for(
                lambda: self._head > position or self.stopping.is_set(), timeout
            )

    def recent(self, after: int, limit: int) -> list[ChangeEvent] | None:
        """Events after `after` from memory, or None when memory does not hold the next one
        (the caller then reads the log)."""
        with self._moved:
            if not self._recent:
                return None
            first = self._recent[0].position
            if not first <= after + 1 <= self._recent[-1].position:
                return None
            return _window(self._recent, after + 1 - first, limit)

    # -- moving ----------------------------------------------------------------------------

    def _read_state(self, cur: cursor) -> tuple[int, str]:
        cur.execute(
            "SELECT next_pos - 1, (SELECT value FROM skor.meta"
            " WHERE key = 'install_id') FROM skor.sequencer"
        )
        row = cur.fetchone()
        assert row is not None
        return int(row[0]), str(row[1])

    def _run(self) -> None:
        limit = self.config.source.batch_size
        pace = Pace(self.config.source.poll_interval, time.monotonic())
        schedule = outbox_upkeep.CompactionSchedule(
            self.config.source.compact_after, time.monotonic()
        )
        backlog = False
        try:
            while not self.stopping.is_set() and not self._stopped.is_set():
                started = time.monotonic()
                moved = None
                if not backlog and schedule.due(started):
                    moved = self._db.run(lambda cur: self._compaction(cur, limit, schedule))
                if moved is None:  # not due, or gave up: an ordinary round at once
                    moved = self._db.run(lambda cur: self._round(cur, limit))
                backlog = len(moved) >= limit
                if moved:
                    self.captured += len(moved)
                    self._publish(moved)
                pause = pace.after(len(moved), started, time.monotonic())
                if self._grown_to is not None:
                    if self._advance(self._grown_to):
                        pause = pace.woken(time.monotonic())
                    self._grown_to = None
                if backlog:
                    continue  # a backlog: the next round at once
                self._stopped.wait(pause)
        except Stopped:
            pass
        except Exception:
            log.exception("sequencer failed")
            self.stopping.set()

    def _compaction(
        self, cur: cursor, limit: int, schedule: outbox_upkeep.CompactionSchedule
    ) -> list[ChangeEvent] | None:
        """A compaction round if the dead rows call for one: the events moved, or None when
        it was not due or gave up (the caller then runs an ordinary round)."""
        cur.execute(outbox_upkeep.DEAD_TUPLES)
        row = cur.fetchone()
        dead = int(row[0] or 0) if row else 0
        if not schedule.worth_it(dead):
            schedule.looked(time.monotonic(), None)
            return None
        self._prepare(cur, limit)  # outside the transaction: PREPARE, partitions
        moved = outbox_upkeep.compact_round(cur, limit, lambda c: self._move(c, limit))
        schedule.looked(time.monotonic(), moved is not None)
        if moved is None:
            self.compactions_failed += 1
            log.debug("outbox compaction gave up (a writer held the outbox, or a backlog)")
            return None
        self.compactions += 1
        now = time.monotonic()
        if now - self._compaction_said_at >= COMPACTION_LOG_EVERY:
            log.info(
                "compacted the outbox: %d dead rows VACUUM could not remove yet (a long "
                "transaction, or more than autovacuum keeps up with) are gone; %d "
                "compaction(s) since the last such line",
                dead,
                self.compactions - self._compactions_said,
            )
            self._compactions_said, self._compaction_said_at = self.compactions, now
        return moved

    def _prepare(self, cur: cursor, limit: int) -> None:
        if cur.connection is not self._prepared:
            cur.execute(f"PREPARE skor_move (int, text, bigint) AS {_MOVE}")
            cur.execute(f"LISTEN {LOG_GREW}")
            self._prepared = cur.connection
            self._grew = True  # a new session may have missed a notification: look once
        self._ensure_ahead(cur, limit)

    def _ensure_ahead(self, cur: cursor, count: int) -> None:
        """Partitions for the `count` positions after the head as this instance knows it."""
        if self._head + 1 + count > self._covered_until:
            self._ensure_partitions(cur, self._head + 1, self._head + 1 + count)

    def _into_log(self, cur: cursor, count: int, write: Callable[[], T]) -> T:
        """Run `write`, one autocommit statement appending up to `count` events after the
        log's head, with partitions made for them first."""
        self._ensure_ahead(cur, count)
        try:
            return write()
        except psycopg2.errors.CheckViolation:
            # No partition for a position: another writer took positions meanwhile (an
            # instance overlapping during a failover, a backfill's appends), so our head
            # was behind. The statement wrote nothing: catch up and retry.
            head, _ = self._read_state(cur)
            self._ensure_partitions(cur, head + 1, head + 1 + count)
            return write()

    def _move(self, cur: cursor, limit: int) -> list[ChangeEvent]:
        cur.execute("EXECUTE skor_move (%s, %s, %s)", (limit, self._install_id, RECENT_BYTES))
        return [event_from_row(row[:-1], row[-1]) for row in cur.fetchall()]

    def _round(self, cur: cursor, limit: int) -> list[ChangeEvent]:
        self._prepare(cur, limit)
        moved = self._into_log(cur, limit, lambda: self._move(cur, limit))
        if cur.connection.notifies or self._grew:
            cur.connection.notifies.clear()
            self._grew = False
            self._grown_to, _ = self._read_state(cur)
        return moved

    def _advance(self, head: int) -> bool:
        """The log grew to `head` without us (a backfill): outputs read it from the log."""
        with self._moved:
            if head <= self._head:
                return False
            self._recent.clear()
            self._recent_bytes = 0
            self._head = head
            self._moved.notify_all()
            return True

    def _publish(self, moved: list[ChangeEvent]) -> None:
        with self._moved:
            recent = self._recent
            if recent and recent[-1].position + 1 != moved[0].position:
                recent.clear()  # a gap (another instance moved some): keep it contiguous
                self._recent_bytes = 0
            for event in moved:
                if event.data is None:  # past RECENT_BYTES: outputs read the log
                    recent.clear()
                    self._recent_bytes = 0
                    break
                recent.append(event)
                self._recent_bytes += _size(event)
            while recent and self._recent_bytes > RECENT_BYTES:
                self._recent_bytes -= _size(recent.popleft())
            self._head = moved[-1].position
            self._moved.notify_all()

    def _ensure_partitions(self, cur: cursor, base: int, until: int) -> None:
        self._covered_until = ensure_partitions(cur, base, until, self.config.partition_size)


#: What an event held in memory costs beyond its data: the ChangeEvent, its id, key and
#: the strings' headers. Counted so that RECENT_BYTES bounds memory for small rows too
#: (8 MB of 40-byte rows would otherwise be 200,000 events and ~100 MB).
EVENT_OVERHEAD = 400


def _size(event: ChangeEvent) -> int:
    return EVENT_OVERHEAD + len(event.data) + (len(event.old) if event.old is not None else 0)


class Pace:
    """How long the sequencer pauses after a round (see the module docstring): after one
    that moved events, until `BUSY_SPACING` poll intervals from its start (at least one
    interval); after an empty look, one interval, doubling up to IDLE_POLL_MAX once nothing
    has come for QUIET seconds. A full batch is followed by the next round at once."""

    def __init__(self, poll_interval: float, now: float) -> None:
        self.fast = poll_interval
        self._pause = poll_interval
        self._quiet_since = now

    def after(self, moved: int, started: float, now: float) -> float:
        if moved:
            self._quiet_since = now
            self._pause = max(self.fast, started + BUSY_SPACING * self.fast - now)
        elif now - self._quiet_since > QUIET:
            self._pause = min(IDLE_POLL_MAX, self._pause * 2)
        else:
            self._pause = self.fast
        return self._pause

    def woken(self, now: float) -> float:
        """Something arrived other than by a round (a backfill appended to the log)."""
        self._quiet_since = now
        self._pause = self.fast
        return self._pause


def ensure_partitions(cur: cursor, base: int, until: int, size: int) -> int:
    """Create log partitions so that positions base..until-1 have one; returns the upper
    bound now covered. Also used by `backfill` in WAL mode, which appends to the log."""
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
    while upper < until:
        # IF NOT EXISTS alone races: a backfill chunk or the WAL writer creates partitions
        # inside its transaction while the sequencer creates the same one outside, and the
        # second fails with "already exists". The advisory lock (held to the end of the
        # creator's transaction) makes the second wait, then find the partition.
        cur.execute(
            f"DO $$ BEGIN PERFORM pg_advisory_xact_lock({PARTITION_LOCK});"
            f" CREATE TABLE IF NOT EXISTS skor.log_{upper:019d} PARTITION OF skor.log"
            f" FOR VALUES FROM ({upper}) TO ({upper + size}); END $$"
        )
        upper += size
    return upper


def _window(events: deque[ChangeEvent], start: int, limit: int) -> list[ChangeEvent]:
    """`events[start:start + limit]`, walked from the nearer end of the deque.

    A caught-up output asks for the newest few of tens of thousands held: from the left
    that walk cost a millisecond per fetch, hundreds of times a second."""
    size = len(events)
    end = min(size, start + limit)
    if start <= size - end:
        return list(islice(events, start, end))
    newest_first = list(islice(reversed(events), size - end, size - start))
    newest_first.reverse()
    return newest_first
