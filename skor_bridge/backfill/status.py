"""Backfills as `skor-bridge status` shows them: running, interrupted or finished."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from skor_bridge.backfill.run import LOCK_CLASS

if TYPE_CHECKING:
    from psycopg2.extensions import cursor

#: Finished backfills older than this are left out of `status` (they stay in skor.backfills).
FINISHED_SHOWN = "7 days"

# A backfill is running while its command holds the table's advisory lock (see run.py);
# an unfinished one without it was interrupted and continues when run again. pg_locks
# shows the lock's second key as an oid, hence the unsigned conversion.
_BACKFILLS = f"""
SELECT format('%I.%I', b.schema_name, b.table_name), b.outputs, b.rows_sent, b.rows_total,
    CASE WHEN b.status = 'finished' THEN 'finished'
         WHEN EXISTS (SELECT FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
                      AND l.database = (SELECT oid FROM pg_database
                                        WHERE datname = current_database())
                      AND l.classid = {LOCK_CLASS} AND l.objsubid = 2
                      AND l.objid = ((hashtext(format('%I.%I', b.schema_name, b.table_name))
                                      ::bigint + 4294967296) % 4294967296)::text::oid)
         THEN 'running' ELSE 'interrupted' END,
    b.started_at, b.updated_at, b.finished_at
FROM skor.backfills b
WHERE b.status = 'running' OR b.finished_at > now() - interval '{FINISHED_SHOWN}'
ORDER BY b.started_at, b.id
"""


@dataclass(frozen=True)
class BackfillStatus:
    table: str
    #: Outputs it is limited to; empty for every output.
    outputs: list[str]
    rows_sent: int
    #: Rows the table had when the backfill started.
    rows_total: int
    #: running, interrupted (run `backfill` again to continue) or finished.
    state: str
    started: datetime
    updated: datetime
    finished: datetime | None


def backfills(cur: cursor) -> list[BackfillStatus]:
    cur.execute("SELECT to_regclass('skor.backfills') IS NOT NULL")
    row = cur.fetchone()
    if not row or not row[0]:
        return []  # a schema from before backfills existed
    cur.execute(_BACKFILLS)
    return [
        BackfillStatus(
            table, list(outputs), int(sent), int(total), state, started, updated, finished
        )
        for table, outputs, sent, total, state, started, updated, finished in cur.fetchall()
    ]
