"""Keeping the outbox small when a long transaction holds an old snapshot.

The outbox is written and emptied all day, so its rows die as fast as they are born. A
session holding an old snapshot (a long report, an idle-in-transaction session) stops
VACUUM from removing them: the dead index entries pile up and every look at the outbox
steps over them (at 150,000 events the sequencer's idle check went from 0.03 ms to 4.6 ms).

So the retention pass reports the oldest snapshot's age and the outbox's dead rows (in
`status`, /metrics and the log, with a warning past `WARN_SNAPSHOT_AGE` /
`WARN_DEAD_TUPLES`), and compacts the outbox once it holds `COMPACT_AFTER` dead rows:
TRUNCATE frees every dead row at once, whatever the snapshots, and is safe here because
it runs only when the outbox is empty and nobody else holds a lock on it (NOWAIT: a
writer never queues behind it; it holds the lock for the milliseconds TRUNCATE takes).
It keeps the id sequence, so event ids stay unique. A writer that holds the outbox locked
for a long time (inserted and left its transaction open) prevents the compaction; that
session is also what the warning names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg2.errors

if TYPE_CHECKING:
    from psycopg2.extensions import cursor

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
    compacted: bool = False

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


def compact(cur: cursor) -> bool:
    """TRUNCATE the outbox if it is empty and unlocked (see the module docstring); True when
    it did. `cur` must be on an autocommit connection."""
    cur.execute("BEGIN")
    try:
        cur.execute("SET LOCAL lock_timeout = '50ms'")
        cur.execute("LOCK TABLE skor.outbox IN ACCESS EXCLUSIVE MODE NOWAIT")
        cur.execute("SELECT EXISTS (SELECT FROM skor.outbox)")
        row = cur.fetchone()
        if row is None or row[0]:
            cur.execute("ROLLBACK")
            return False
        cur.execute("TRUNCATE skor.outbox")
        cur.execute("COMMIT")
        return True
    except (psycopg2.errors.LockNotAvailable, psycopg2.errors.QueryCanceled):
        cur.execute("ROLLBACK")
        return False
    except BaseException:
        if not cur.connection.closed:
            cur.execute("ROLLBACK")
        raise


def upkeep(cur: cursor) -> OutboxHealth:
    """Report, and compact when worth it."""
    found = check(cur)
    if found.dead_tuples >= COMPACT_AFTER and compact(cur):
        return OutboxHealth(
            found.oldest_snapshot_seconds,
            found.oldest_snapshot_pid,
            found.oldest_snapshot_application,
            0,
            compacted=True,
        )
    return found
