"""The row before an UPDATE (`old`), for the envelope format's "old" field (issue 13).

A nullable text column on the outbox, the log, and the two tables that keep copies of log
events (dead letters, redeliveries), so a retried, replayed or parked UPDATE is sent with
the same "old" as the first time. NULL means not known: INSERT and DELETE events, events
captured by an earlier release's triggers, notify mode and backfill's READ rows.

Adding a nullable column without a default rewrites nothing: each ALTER holds its table's
lock only for the catalog change.
"""

SQL = """
ALTER TABLE skor.outbox ADD COLUMN IF NOT EXISTS old text;
ALTER TABLE skor.log ADD COLUMN IF NOT EXISTS old text;
ALTER TABLE skor.dead_letters ADD COLUMN IF NOT EXISTS old text;
ALTER TABLE skor.redeliveries ADD COLUMN IF NOT EXISTS old text;
"""
