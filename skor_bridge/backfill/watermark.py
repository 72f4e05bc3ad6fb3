"""Why a READ never lands after a newer change of its row, without locking the table.

Both capture modes number the log from one counter row, `skor.sequencer.next_pos`, and
whoever appends to the log holds that row (FOR UPDATE) until it commits: the sequencer's
round in trigger mode, the WAL reader in WAL mode, and `backfill` for each chunk. A chunk
is one transaction that first takes the row, then reads the chunk in a snapshot S taken
after it, and appends a READ per row at the next positions. While it holds the row, no
one else appends, so:

Claim: for every row, the last event a receiver sees carries the row as it is in the
table, and (trigger mode) no event after a READ carries an older version of its row.

Take a READ of row r, read in snapshot S, and a captured change C of r.

- C committed after S: whoever appends C takes the counter row after the chunk commits,
  so C's position is after the READ's, and per-row delivery order sends C after it.
- C committed before S and already in the log: its position is before the READ's, and the
  READ carries C's version or a later one.
- Trigger mode, C committed before S but still in the outbox (not numbered yet): the
  chunk sees C's outbox row in S and sends no READ for r. C will be numbered after the
  chunk. The sequencer numbers a row's changes in commit order (a row's outbox ids follow
  its commits, the row lock sees to that, and a round takes the smallest ids first), so
  the last change of r before S is also still in the outbox and carries r as S saw it.
- WAL mode, C committed before S but not yet written by the reader: C lands after the
  READ. C is no newer than the READ, and the row's last change in commit order, which
  carries the row as it is, comes after it. (The reader cannot be asked what it holds;
  the receiver may see an older version between the READ and that change.)

Rows inserted after S are not read; their INSERT events deliver them. Rows deleted before
S are not read; their DELETE went before. A key change is a DELETE plus an INSERT (see
BOARD), both changes of their own keys. Hence the claim, with no table lock, no buffering
of chunks in the bridge and no work per READ in the sequencer: the database's snapshot is
the buffer. The price: while a chunk is read and appended (milliseconds for the default
1,000 rows), live changes wait to be numbered.

Earlier releases sent READ rows through the outbox, each with a watermark (the log head
when its chunk was read; the DBLog approach). The sequencer still drops such a READ when
the log holds a newer change of its row after the watermark, or the same round brings one,
so READ rows an older `backfill` left in the outbox keep that guarantee after an upgrade.
"""

from __future__ import annotations

#: CTE for the sequencer's move, placed after `moved` (the DELETE ... RETURNING of the
#: outbox rows): the ids of READ rows (from an older `backfill`, see above) superseded by a
#: newer change of the same row. Rows without a watermark (every captured change) are
#: never in it. The log is read through `skor.log_changes_after` (migration 72), so that
#: a round's plan holds no scan of every log partition: the function returns at once when
#: the round moves no READ row, as it almost always does.
SUPERSEDED_READS = """superseded AS (
    SELECT r.id FROM moved r JOIN (
        SELECT * FROM skor.log_changes_after((SELECT min(watermark) FROM moved))
        UNION ALL
        SELECT schema_name, table_name, row_key, NULL FROM moved WHERE watermark IS NULL
    ) c ON c.row_key = r.row_key AND c.table_name = r.table_name
       AND c.schema_name = r.schema_name AND (c.pos IS NULL OR c.pos > r.watermark)
    WHERE r.watermark IS NOT NULL
)"""
