"""`skor-bridge backfill`: send a captured table's existing rows as READ events.

`table` finds and checks the table and writes its SQL, `run` sends it chunk by chunk,
`watermark` holds the sequencer's half and the argument for why it is consistent.
"""
