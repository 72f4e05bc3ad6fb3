"""Why a READ never lands after a newer change of its row, without locking the table.

A chunk is read and sent in ONE statement (so one snapshot S): it reads the log head L
(`skor.sequencer.next_pos - 1`), reads the chunk by primary key, and inserts a READ row per
table row into `skor.outbox` with `watermark = L`. The sequencer, when it moves a READ row
into the log, drops it if the log already holds a change (not a READ) of the same row with a
position after L, or if the same move brings a change of that row.

Claim: for every row, the last event a receiver sees carries the row as it is in the table.

Take a READ of row r, read in snapshot S, and any captured change C of r.

1. C committed before S. Then the READ's version is C's or a later one: fine either way.
   If the READ is dropped because of C, C's own event carries that version (a change
   between C and S would be captured too, and would itself come after C).
2. C committed after S. Its outbox row becomes visible only then, so the sequencer round
   that moves C starts after S. Rounds are serialised on the counter row; a round that had
   not committed when S was taken numbers from a `next_pos` at least L + 1. So C's position
   is > L. Then either
   - C is in the log when the READ is moved: the READ is dropped (C is newer), or
   - C comes in the same round: the READ is dropped, or
   - C comes in a later round: the READ got a smaller position, and per-row delivery order
     delivers it before C, so C (newer) is still what the receiver sees last.
   In no case does the READ follow C.

Rows inserted after S are not read; their INSERT events deliver them. Rows deleted before
S are not read; their DELETE went before. A key change is a DELETE plus an INSERT (see
BOARD), both changes of their own keys. Hence the claim, with no table lock and no buffering
of chunks in the bridge: the database's snapshot is the buffer.

WAL mode has no sequencer: the WAL reader appends each committed transaction to the log, in
commit order, holding the same counter row. There a chunk is sent in one transaction that
first takes that row (FOR UPDATE), then reads the chunk in a snapshot S taken after it, and
appends the READ events to the log itself. The log cannot grow while the row is held, so
every change committed after S reaches the log after the READ; a change committed before S
that the reader has not written yet lands after the READ too, but it is no newer than the
READ, and the row's last change in commit order, which carries the row as it is, comes
last. So no watermark is needed there; the reader waits at most one chunk's read.

The check reads the log only after the smallest watermark of the round. The backfill sends
its next chunk only once the previous one has left the outbox, so that range stays short
(one chunk's worth of log plus the writers' events meanwhile), found by the log's primary
key and hashed once per round.
"""

from __future__ import annotations

#: CTE for the sequencer's move, placed after `moved` (the DELETE ... RETURNING of the
#: outbox rows): the ids of READ rows superseded by a newer change of the same row. Rows
#: without a watermark (every captured change) are never in it.
SUPERSEDED_READS = """superseded AS (
    SELECT r.id FROM moved r JOIN (
        SELECT schema_name, table_name, row_key, pos FROM skor.log
        WHERE pos > (SELECT min(watermark) FROM moved) AND op <> 'READ'
        UNION ALL
        SELECT schema_name, table_name, row_key, NULL FROM moved WHERE watermark IS NULL
    ) c ON c.row_key = r.row_key AND c.table_name = r.table_name
       AND c.schema_name = r.schema_name AND (c.pos IS NULL OR c.pos > r.watermark)
    WHERE r.watermark IS NOT NULL
)"""
