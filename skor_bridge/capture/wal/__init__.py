"""WAL capture (`--mode wal`): changes read from a logical replication slot (pgoutput)
instead of written by triggers; no trigger, no cost to the writers, commit order.

    protocol   pgoutput messages, parsed
    render     a value's text form + type -> the JSON row_to_json would write
    changes    row messages -> changes, with triggers.json (columns, update_columns) applied
    batch      a chunk of changes: `when` and server-only renderings, one query each
    writer     a chunk -> skor.log + skor.wal_state, in one transaction
    source     the reader: slot -> chunks -> log, then the slot's acknowledgement
    slot       the slot's name, its figures, and the checks that it is still ours
    install    `triggers install/uninstall --mode wal`
"""
