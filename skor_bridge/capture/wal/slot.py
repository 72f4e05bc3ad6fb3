"""The replication slot: its name, what it holds back on the server, and the checks that
stop the bridge rather than let it read a slot that is not the one it was installed with.

A slot that disappeared (dropped, or a failover to a server without it), or a server
whose system identifier or timeline changed (restore from backup, promotion of a standby),
means changes may have been lost in between. The bridge never recreates the slot itself:
it stops and says what to do.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from skor_bridge.errors import DatabaseError

if TYPE_CHECKING:
    from psycopg2.extensions import cursor

#: The publication `install --mode wal` creates in the captured database.
PUBLICATION = "skor_capture"

#: Default `--max-slot-lag`: WAL the slot may hold back before /readyz fails.
MAX_SLOT_LAG = 1024**3


class SlotError(DatabaseError):
    """The slot is gone or belongs to another server history; the bridge must stop."""


def slot_name(database: str) -> str:
    """`skor_<database>_<hash>`: slots are per server, so each database gets its own."""
    slug = re.sub(r"[^a-z0-9_]", "_", database.lower())[:40]
    digest = hashlib.sha256(database.encode("utf-8")).hexdigest()[:8]
    return f"skor_{slug}_{digest}"


@dataclass(frozen=True)
class SlotStatus:
    slot: str
    #: False when the slot is gone: the bridge refuses to start.
    exists: bool
    active: bool
    #: reserved, extended, unreserved or lost (pg_replication_slots.wal_status).
    wal_status: str | None
    #: Bytes of WAL the server keeps for the slot: pg_current_wal_lsn() - restart_lsn.
    retained_bytes: int
    #: Bytes between the newest WAL and what the bridge acknowledged.
    behind_bytes: int


_STATUS = """
SELECT w.slot_name, s.slot_name IS NOT NULL, coalesce(s.active, false), s.wal_status::text,
       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn), 0)::bigint,
       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn), 0)::bigint
FROM skor.wal_state w LEFT JOIN pg_replication_slots s ON s.slot_name = w.slot_name
"""


def wal_installed(cur: cursor) -> bool:
    """Whether `triggers install --mode wal` ran here (and nothing uninstalled it since)."""
    cur.execute("SELECT to_regclass('skor.wal_state') IS NOT NULL")
    row = cur.fetchone()
    if not row or not row[0]:
        return False
    cur.execute("SELECT EXISTS (SELECT FROM skor.wal_state)")
    row = cur.fetchone()
    return bool(row and row[0])


def slot_status(cur: cursor) -> SlotStatus | None:
    """The installed slot's figures; None when WAL capture is not installed."""
    cur.execute("SELECT to_regclass('skor.wal_state') IS NOT NULL")
    row = cur.fetchone()
    if not row or not row[0]:
        return None
    cur.execute(_STATUS)
    row = cur.fetchone()
    if row is None:
        return None
    name, exists, active, wal_status, retained, behind = row
    return SlotStatus(
        slot=name,
        exists=bool(exists),
        active=bool(active),
        wal_status=wal_status,
        retained_bytes=int(retained),
        behind_bytes=int(behind),
    )


def slot_lost(slot: str, reason: str) -> SlotError:
    return SlotError(
        f"replication slot {slot}: {reason}; changes made since may be lost, so the bridge "
        "will not carry on by itself. Check what happened, then run `skor-bridge triggers "
        "install CONFIG --mode wal` to capture from now on (and a backfill to catch up)"
    )
