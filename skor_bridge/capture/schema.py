"""The bridge's own schema, `skor`, brought up to date by `triggers install` and `run`.

Its layout lives in numbered steps in `skor_bridge.migrations` (v001 is the first release).

    user's transaction                     bridge (active instance only)
    ------------------                     -----------------------------
    trigger -> INSERT skor.outbox   ==>    sequencer: DELETE outbox rows it can see,
                                           INSERT them into skor.log with a new `pos`
                                           outputs read skor.log WHERE pos > their position

Why this is correct with many concurrent writers (the outbox trap): an outbox `id` is
drawn before its transaction commits, so ids become visible out of order and a reader
that trusts `id > last_seen` skips late commits. Nothing here trusts outbox ids as a
cursor. The sequencer moves whatever committed rows it can see, in one transaction, and
numbers them from a counter row it holds locked; a row that commits late is simply moved
by a later round and gets a later `pos`. So `pos` is assigned in visibility order, each
sequencer round commits before the next begins, and `pos > position` never skips.

Per-row order: two changes to the same row come from transactions that serialise on the
row lock (or on the unique index for a re-inserted key), so the second trigger fires only
after the first transaction committed. The first change is therefore visible no later
than the second, and within one round rows are numbered by outbox id, which for one row
follows that order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skor_bridge.migrations import DDL_LOCK, migrate, script

if TYPE_CHECKING:
    from psycopg2.extensions import cursor

SCHEMA = "skor"

#: The psql form of every migration, for `triggers generate`.
DDL = script()

#: Serialises schema changes when several instances start at once.
_DDL_LOCK = DDL_LOCK


def ensure_schema(cur: cursor, create: bool = True) -> list[int]:
    """Bring the skor schema up to date in the caller's transaction (see `migrations`).

    Returns the migration versions it applied. With `create=False` a database that has no
    skor schema raises SchemaMissing rather than getting an empty one.
    """
    return migrate(cur, create=create)
