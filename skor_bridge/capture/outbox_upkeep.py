"""Keeping the outbox small when a long transaction holds an old snapshot.

The outbox is written and emptied all day, so its rows die as fast as they are born. A
session holding an old snapshot (a long report, an idle-in-transaction session) stops
VACUUM from removing them: the dead index entries pile up and every look at the outbox
steps over them (at 150,000 events the sequencer's idle check went from 0.03 ms to 4.6 ms).

So the retention pass reports the oldest snapshot's age and the outbox's dead rows (in
`status`, /metrics and the log, with a warning past `WARN_SNAPSHOT_AGE` /
`WARN_DEAD_TUPLES`), and the outbox is compacted once it holds `COMPACT_AFTER` dead rows:
TRUNCATE frees every dead row at once, whatever the snapshots.

Compaction runs as one of the sequencer's own rounds (`compact_round`), because under
steady writes the outbox is almost never empty (each row waits a few milliseconds for its
round): LOCK the outbox NOWAIT, which succeeds only at an instant when no writer has an
open transaction that inserted into it, so every row it holds is committed; move them all
into the log as any round does (only when one round's worth is waiting, so the lock is
held for one round at most); TRUNCATE; COMMIT. Nothing can be lost: no uncommitted row
exists while the lock is held, and no row can arrive before the commit. NOWAIT means the
sequencer never queues behind a writer; writers wait at most the milliseconds the round
takes. The id sequence is kept, so event ids stay unique. A writer that holds the outbox
locked for a long time (inserted and left its transaction open) prevents the compaction;
that session is also what the warning names.
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
#: Dead rows past which the retention pass tries to compact the outbox.
COMPACT_AFTER = 10_000

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


def compact_round(cur: cursor, move: Callable[[cursor], list[T]]) -> list[T] | None:
    """Move every outbox row with `move` and TRUNCATE the outbox, in one transaction under
    an exclusive lock taken NOWAIT (see the module docstring); the rows moved, or None when
    a writer held the outbox. `cur` must be on an autocommit connection."""
    cur.execute("BEGIN")
    try:
        cur.execute("LOCK TABLE skor.outbox IN ACCESS EXCLUSIVE MODE NOWAIT")
        moved = move(cur)
        cur.execute("SELECT EXISTS (SELECT FROM skor.outbox)")
        row = cur.fetchone()
        if row is None or row[0]:
            # More than one round's worth waits (a backlog): moving it all under the lock
            # would stall every writer for as long. Undo, and try again once caught up.
            cur.execute("ROLLBACK")
            return None
        cur.execute("TRUNCATE skor.outbox")
        cur.execute("COMMIT")
        return moved
    except (psycopg2.errors.LockNotAvailable, psycopg2.errors.InFailedSqlTransaction):
        # A writer holds the outbox (try again next round), or the move hit the failover
        # overlap it retries outside a transaction: the next ordinary round handles it.
        cur.execute("ROLLBACK")
        return None
    except BaseException:
        if not cur.connection.closed:
            cur.execute("ROLLBACK")
        raise


def upkeep(cur: cursor) -> OutboxHealth:
    """Report; the sequencer compacts (`compact_round`) when the dead rows call for it."""
    return check(cur)
