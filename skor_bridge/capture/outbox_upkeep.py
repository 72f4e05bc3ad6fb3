"""Keeping the outbox small when a long transaction holds an old snapshot.

The outbox is written and emptied all day, so its rows die as fast as they are born. A
session holding an old snapshot (a long report, an idle-in-transaction session) stops
VACUUM from removing them: the dead index entries pile up and every look at the outbox
steps over them (at 150,000 events the sequencer's idle check went from 0.03 ms to 4.6 ms).

The retention pass reports the oldest snapshot's age and the outbox's dead rows (in
`status`, /metrics and the log, with a warning past `WARN_SNAPSHOT_AGE` /
`WARN_DEAD_TUPLES`). The sequencer compacts the outbox (TRUNCATE frees every dead row at
once, whatever the snapshots) once it holds `SourceConfig.compact_after` dead rows, in one
of its own rounds (`compact_round`), because under steady writes the outbox is never empty
and unlocked at once for long (each row waits a few milliseconds for its round):

    BEGIN; SET LOCAL lock_timeout = LOCK_TIMEOUT;
    LOCK skor.outbox IN ACCESS EXCLUSIVE MODE;   -- waits for writers' open transactions
    at most one round's worth in the outbox?     -- else ROLLBACK: an ordinary round instead
    the ordinary move (same statement, same numbering);
    TRUNCATE skor.outbox; COMMIT;

Nothing is missed or moved twice: once the lock is held no transaction has an uncommitted
outbox row (every writer that inserted has ended) and none can insert until COMMIT, so the
move's snapshot sees every row the outbox will ever hold up to the TRUNCATE, moves them all
(at most one round's worth, checked under the lock), numbered by id after the round before
and before the round after, as any round (so per-row order holds, `capture.schema`), and
the TRUNCATE removes only dead rows. It keeps the id sequence, so event ids stay unique.
The sequencer publishes the moved events to memory only after the COMMIT, as it does for
an ordinary round.

What it costs writers: while the LOCK waits, new writers queue behind it, so the wait is
bounded by `LOCK_TIMEOUT` (tens of milliseconds), and once held, the lock lasts one round
and a TRUNCATE. The short timeout also breaks a would-be deadlock (a writer holding the
outbox waits on a row lock of a writer queued behind us) long before deadlock_timeout.
When the lock is not had in time (a writer's transaction stays open), the sequencer does an
ordinary round at once and tries again later (`CompactionSchedule`), so capture never
starves. A session that keeps any lock on the outbox for long prevents compaction: a
writer that inserted and stays in its transaction (that session is also what the warning
names), or one that read the outbox in a long transaction, such as pg_dump of the whole
database; then each attempt costs writers up to LOCK_TIMEOUT every COMPACT_BACKOFF_MAX.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import psycopg2.errors

if TYPE_CHECKING:
    from collections.abc import Callable

    from psycopg2.extensions import cursor

T = TypeVar("T")

#: Warn when a snapshot in this database is older than this (seconds)...
WARN_SNAPSHOT_AGE = 300.0
#: ... or when the outbox holds this many dead rows.
WARN_DEAD_TUPLES = 100_000
#: Longest the compaction waits for the outbox's lock (module docstring).
LOCK_TIMEOUT = "30ms"
#: Seconds between two looks at the dead rows, and between two compactions.
COMPACT_EVERY = 1.0
#: Longest pause after failed attempts (it doubles from COMPACT_EVERY per failure).
COMPACT_BACKOFF_MAX = 8.0

#: The oldest snapshot held in this database by another session: age, pid, application.
OLDEST_SNAPSHOT = """
SELECT extract(epoch FROM now() - coalesce(xact_start, query_start))::float8, pid,
       application_name
FROM pg_stat_activity
WHERE datname = current_database() AND backend_xmin IS NOT NULL AND pid <> pg_backend_pid()
ORDER BY age(backend_xmin) DESC LIMIT 1
"""

DEAD_TUPLES = "SELECT pg_stat_get_dead_tuples('skor.outbox'::regclass)"


@dataclass(frozen=True)
class OutboxHealth:
    oldest_snapshot_seconds: float = 0.0
    oldest_snapshot_pid: int | None = None
    oldest_snapshot_application: str = ""
    dead_tuples: int = 0

    @property
    def warning(self) -> str | None:
        """One line for the log and `status`, or None when all is well."""
        if self.oldest_snapshot_seconds < WARN_SNAPSHOT_AGE and self.dead_tuples < WARN_DEAD_TUPLES:
            return None
        who = f"pid {self.oldest_snapshot_pid}" + (
            f" ({self.oldest_snapshot_application})" if self.oldest_snapshot_application else ""
        )
        return (
            f"a session ({who}) has held a snapshot for {self.oldest_snapshot_seconds:.0f}s "
            f"and the outbox has {self.dead_tuples} dead rows VACUUM cannot remove; "
            "long transactions slow capture (end them, or set "
            "idle_in_transaction_session_timeout)"
        )


def check(cur: cursor) -> OutboxHealth:
    cur.execute(OLDEST_SNAPSHOT)
    row = cur.fetchone()
    cur.execute(DEAD_TUPLES)
    dead = cur.fetchone()
    return OutboxHealth(
        oldest_snapshot_seconds=max(0.0, float(row[0] or 0)) if row else 0.0,
        oldest_snapshot_pid=int(row[1]) if row else None,
        oldest_snapshot_application=str(row[2] or "") if row else "",
        dead_tuples=int(dead[0]) if dead else 0,
    )


def compact_round(cur: cursor, limit: int, move: Callable[[cursor], list[T]]) -> list[T] | None:
    """Move the outbox's rows with `move` (the ordinary round, moving up to `limit`) and
    TRUNCATE it, in one transaction holding its exclusive lock (see the module docstring).
    The rows moved, or None when nothing was done: the lock was not had within LOCK_TIMEOUT,
    more than `limit` rows were waiting, or the move needs what an ordinary round does
    outside a transaction. `cur` must be on an autocommit connection."""
    cur.execute("BEGIN")
    try:
        cur.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        cur.execute("LOCK TABLE skor.outbox IN ACCESS EXCLUSIVE MODE")
        cur.execute("SELECT count(*) FROM (SELECT FROM skor.outbox LIMIT %s) o", (limit + 1,))
        row = cur.fetchone()
        if row is None or int(row[0]) > limit:
            # A backlog: moving it all under the lock would stall every writer for as long.
            cur.execute("ROLLBACK")
            return None
        moved = move(cur)
        cur.execute("TRUNCATE skor.outbox")
        cur.execute("COMMIT")
        return moved
    except _GAVE_UP:
        cur.execute("ROLLBACK")
        return None
    except BaseException:
        if not cur.connection.closed:
            cur.execute("ROLLBACK")
        raise


#: Errors after which compaction gives up for now: a lock not had in time (the outbox, or
#: the counter row held by an instance being replaced), a deadlock, or a position with no
#: log partition (that same overlap: the ordinary round catches up outside a transaction).
_GAVE_UP = (
    psycopg2.errors.LockNotAvailable,
    psycopg2.errors.DeadlockDetected,
    psycopg2.errors.CheckViolation,
)


class CompactionSchedule:
    """When the sequencer looks at the dead rows and tries to compact: at most every
    COMPACT_EVERY seconds, backing off (doubling up to COMPACT_BACKOFF_MAX) after attempts
    that failed, and never while a backlog waits (the caller checks the last round). Each
    failed attempt costs writers up to LOCK_TIMEOUT, so a long writer transaction that
    keeps failing them costs at most LOCK_TIMEOUT / COMPACT_BACKOFF_MAX of their time."""

    def __init__(self, compact_after: int, now: float) -> None:
        self.compact_after = compact_after
        self._next = now + COMPACT_EVERY
        self._pause = COMPACT_EVERY

    def due(self, now: float) -> bool:
        """Time to look at the dead rows."""
        return now >= self._next

    def worth_it(self, dead_tuples: int) -> bool:
        return dead_tuples >= self.compact_after

    def looked(self, now: float, compacted: bool | None) -> None:
        """After a look: None when not worth it, else whether the compaction succeeded."""
        if compacted is False:
            self._pause = min(COMPACT_BACKOFF_MAX, self._pause * 2)
        else:
            self._pause = COMPACT_EVERY
        self._next = now + self._pause
