"""WAL capture (`triggers install --mode wal`): the replication slot the bridge reads, and
how far its changes are in skor.log.

`lsn` is the end of the last transaction whose events are all in skor.log; it is updated
in the same transaction that writes them, so after a crash the bridge skips exactly the
transactions the slot sends again. A transaction too big to write at once is written in
chunks: `partial_lsn` names it (its commit LSN) and `partial_messages` counts its change
messages already written. `system_identifier` and `timeline` are the server's when the
slot was created: a different server (restore, failover) cannot hold the same slot, and
the bridge refuses to carry on silently from there. `tables` is the triggers.json the
slot was installed with, so that `run` needs nothing else.
"""

SQL = """
CREATE TABLE IF NOT EXISTS skor.wal_state (
    singleton         boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    slot_name         text        NOT NULL,
    publication       text        NOT NULL,
    system_identifier text        NOT NULL,
    timeline          integer     NOT NULL,
    tables            jsonb       NOT NULL,
    lsn               pg_lsn      NOT NULL,
    partial_lsn       pg_lsn,
    partial_messages  bigint      NOT NULL DEFAULT 0,
    installed_at      timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
"""
